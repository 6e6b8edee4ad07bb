"""Servers: create_server and create_unix_server, and the Server object they return.

Covered: binding (host None or "" binds every address family, a list of hosts, port 0,
family, reuse_address, reuse_port, backlog, sock=), serving (start_serving=False then
start_serving() or serve_forever(), is_serving, sockets as TransportSocket, get_loop), closing
(close, wait_closed, ``async with``, what closing does to listening sockets and to accepted
connections), many concurrent clients, Unix servers (path, path-like, sock=, abstract names,
stale socket files, a path taken by another file), and the errors asyncio raises, with its
messages (address in use, argument errors).

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
A test taking ``kind`` runs over TCP and over Unix sockets (helpers: helpers/net.py).
"""

import asyncio
import contextlib
import errno
import os
import pathlib
import socket
import stat
import struct
import sys
import uuid

import pytest

from helpers import net
from helpers.net import (
    CLEANUP_TIMEOUT,
    Echo,
    Recorder,
    close_server,
    connect,
    connected,
    poll_rounds,
    run_raises,
    settle,
)

# Server.close_clients()/abort_clients() and create_unix_server(cleanup_socket=) are new in 3.13.
needs_3_13 = pytest.mark.skipif(sys.version_info < (3, 13), reason="an API new in Python 3.13")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class Conns:
    """The server side of a test: a protocol factory that keeps every protocol it made."""

    def __init__(self, loop, protocol=None):
        self.loop = loop
        self.protocol = protocol or Echo
        self.protocols = []
        self._arrivals = []

    def __call__(self):
        protocol = self.protocol(self.loop)
        self.protocols.append(protocol)
        waiters, self._arrivals = self._arrivals, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return protocol

    async def wait_count(self, n):
        while len(self.protocols) < n:
            waiter = self.loop.create_future()
            self._arrivals.append(waiter)
            await waiter
        await asyncio.gather(*(p.made for p in self.protocols))

    def abort_all(self):
        for protocol in self.protocols:
            if protocol.transport is not None and not protocol.lost.done():
                protocol.transport.abort()

    @contextlib.asynccontextmanager
    async def serving(self, create_server, *args, **kwargs):
        """``create_server(self, *args, **kwargs)`` (create_server or create_unix_server
        serving these protocols) as a context: yields the server; at exit, the connections it
        accepted are aborted and the server is closed."""
        server = await create_server(self, *args, **kwargs)
        try:
            yield server
        finally:
            self.abort_all()
            await settle(*(p.lost for p in self.protocols))
            await close_server(server)


async def client_round_trip(loop, address, message=b"ping", family=None):
    """Connect a plain socket to ``address``, send ``message`` and return the echo."""
    if family is None:
        family = socket.AF_UNIX if isinstance(address, (str, bytes)) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address)
        await loop.sock_sendall(sock, message)
        received = bytearray()
        while len(received) < len(message):
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, "end of stream before the echo"
            received += chunk
        return bytes(received)
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def one_connection(loop, conns):
    """A server (127.0.0.1) serving ``conns`` and one Recorder client connection to it, once the
    server made its protocol: yields (server, its address, client transport, client protocol).
    At exit, the client transport is closed, then the server (see ``Conns.serving``)."""
    async with conns.serving(loop.create_server, "127.0.0.1", 0) as server:
        address = server.sockets[0].getsockname()
        async with connected(loop.create_connection(lambda: Recorder(loop), *address)) as (
            transport,
            client,
        ):
            await conns.wait_count(1)
            yield server, address, transport, client


def refuses(address, family=socket.AF_INET):
    """Whether a (blocking) connection attempt to ``address`` is refused right away."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.connect(address)
    except ConnectionRefusedError:
        return True
    else:
        return False
    finally:
        sock.close()


def listen_backlog(sock):
    """The backlog of a listening TCP socket (Linux TCP_INFO: tcpi_sacked of a listener)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 28)[0]


def ipv6_loopback_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Binding
# --------------------------------------------------------------------------------------------


def test_create_server_on_port_0(loop):
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_server, "127.0.0.1", 0) as server:
            assert server.get_loop() is loop
            assert server.is_serving()
            sockets = server.sockets
            assert isinstance(sockets, tuple) and len(sockets) == 1
            assert isinstance(sockets[0], asyncio.trsock.TransportSocket)
            host, port = sockets[0].getsockname()
            assert host == "127.0.0.1" and port != 0
            assert sockets[0].family == socket.AF_INET
            assert sockets[0].type == socket.SOCK_STREAM
            assert await client_round_trip(loop, (host, port)) == b"ping"
            await conns.wait_count(1)
            assert bytes(conns.protocols[0].data) == b"ping"

    loop.run_until_complete(main())


@pytest.mark.parametrize("host", [None, ""])
def test_create_server_without_a_host_binds_every_address_family(loop, host):
    expected = {
        (family, address[0])
        for family, _, _, _, address in socket.getaddrinfo(
            None, 0, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    }
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_server, host, 0) as server:
            sockets = server.sockets
            assert {(s.family, s.getsockname()[0]) for s in sockets} == expected
            for sock in sockets:
                assert sock.getsockname()[1] != 0
                if sock.family == socket.AF_INET6:
                    # asyncio turns dual-stack off: one socket per family.
                    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
                if sock.family == socket.AF_INET:
                    port = sock.getsockname()[1]
                    assert await client_round_trip(loop, ("127.0.0.1", port)) == b"ping"

    loop.run_until_complete(main())


def test_create_server_with_a_family(loop):
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_server, None, 0, family=socket.AF_INET) as server:
            assert [(s.family, s.getsockname()[0]) for s in server.sockets] == [
                (socket.AF_INET, "0.0.0.0")
            ]

    loop.run_until_complete(main())


def test_create_server_on_ipv6_loopback(loop):
    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback")
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_server, "::1", 0) as server:
            (sock,) = server.sockets
            assert sock.family == socket.AF_INET6
            address = sock.getsockname()
            assert address[0] == "::1"
            assert await client_round_trip(loop, address[:2], family=socket.AF_INET6) == b"ping"

    loop.run_until_complete(main())


def test_create_server_with_a_list_of_hosts(loop):
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_server, ["127.0.0.1", "127.0.0.2"], 0) as server:
            addresses = sorted(s.getsockname() for s in server.sockets)
            assert [host for host, _ in addresses] == ["127.0.0.1", "127.0.0.2"]
            for address in addresses:
                message = b"via " + address[0].encode()
                assert await client_round_trip(loop, address, message) == message

    loop.run_until_complete(main())


def test_create_server_binds_a_repeated_host_once(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, ["127.0.0.1", "127.0.0.1"], 0)
        try:
            assert len(server.sockets) == 1
        finally:
            await close_server(server)

    loop.run_until_complete(main())


def test_create_server_sets_so_reuseaddr_by_default(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        other = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_address=False)
        try:
            assert server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
            assert other.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
            assert server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        finally:
            await close_server(server)
            await close_server(other)

    loop.run_until_complete(main())


def test_create_server_reuse_port(loop):
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_server, "127.0.0.1", 0, reuse_port=True) as first:
            port = first.sockets[0].getsockname()[1]
            assert first.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            second = await loop.create_server(conns, "127.0.0.1", port, reuse_port=True)
            try:
                assert second.sockets[0].getsockname() == ("127.0.0.1", port)
                assert await client_round_trip(loop, ("127.0.0.1", port)) == b"ping"
            finally:
                await close_server(second)
            with pytest.raises(OSError) as info:
                await loop.create_server(conns, "127.0.0.1", port)
            assert info.value.errno == errno.EADDRINUSE

    loop.run_until_complete(main())


@pytest.mark.parametrize("backlog", [None, 37])
def test_create_server_backlog(loop, backlog):
    async def main():
        kwargs = {} if backlog is None else {"backlog": backlog}
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, **kwargs)
        try:
            assert listen_backlog(server.sockets[0]) == (100 if backlog is None else backlog)
        finally:
            await close_server(server)

    loop.run_until_complete(main())


@pytest.mark.parametrize("listening", [False, True])
def test_create_server_with_sock(loop, listening):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # blocking, proto 0
    sock.bind(("127.0.0.1", 0))
    if listening:
        sock.listen(5)
    address = sock.getsockname()
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_server, sock=sock, backlog=23) as server:
            assert sock.gettimeout() == 0
            (served,) = server.sockets
            assert served.fileno() == sock.fileno()
            assert served.getsockname() == address
            assert listen_backlog(sock) == 23  # listen() is called again with the backlog
            assert await client_round_trip(loop, address) == b"ping"
        assert sock.fileno() == -1  # closing the server closed the socket
        assert refuses(address)

    with sock:
        loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


def test_start_serving_false_then_start_serving(loop):
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_server, "127.0.0.1", 0, start_serving=False) as server:
            address = server.sockets[0].getsockname()
            assert not server.is_serving()
            assert refuses(address)  # bound, not listening yet
            await server.start_serving()
            assert server.is_serving()
            await server.start_serving()  # a second call does nothing
            assert server.is_serving()
            assert await client_round_trip(loop, address) == b"ping"
            assert len(conns.protocols) == 1

    loop.run_until_complete(main())


def test_serve_forever_serves_until_cancelled(loop):
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_server, "127.0.0.1", 0, start_serving=False) as server:
            address = server.sockets[0].getsockname()
            task = asyncio.ensure_future(server.serve_forever())
            for _ in range(10):  # let the task start: serve_forever() starts serving at once
                if server.is_serving():
                    break
                await asyncio.sleep(0)
            assert server.is_serving()
            assert await client_round_trip(loop, address) == b"ping"
            assert server.is_serving()
            assert not task.done()
            with pytest.raises(RuntimeError) as info:
                await server.serve_forever()
            assert (
                str(info.value) == f"server {server!r} is already being awaited on serve_forever()"
            )
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Cancelling serve_forever() closes the server.
            assert not server.is_serving()
            assert server.sockets == ()
            assert refuses(address)
            with pytest.raises(RuntimeError) as info:
                await server.serve_forever()
            assert str(info.value) == f"server {server!r} is closed"

    loop.run_until_complete(main())


def test_serve_forever_ends_when_the_server_is_closed(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        task = asyncio.ensure_future(server.serve_forever())
        await poll_rounds(loop)
        assert not task.done()
        server.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.wait_closed()

    loop.run_until_complete(main())


def test_server_sockets_are_transport_sockets_until_closed(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, ["127.0.0.1", "127.0.0.2"], 0)
        first = server.sockets
        assert len(first) == 2
        assert all(isinstance(s, asyncio.trsock.TransportSocket) for s in first)
        assert {s.fileno() for s in server.sockets} == {s.fileno() for s in first}
        server.close()
        assert server.sockets == ()
        assert not server.is_serving()
        server.close()  # a second close does nothing
        await server.wait_closed()
        assert server.get_loop() is loop

    loop.run_until_complete(main())


def test_accepted_transports_see_the_client_address(loop):
    conns = Conns(loop)

    async def main():
        async with one_connection(loop, conns) as (_, address, transport, _):
            accepted = conns.protocols[0].transport
            assert isinstance(accepted, asyncio.Transport)
            assert accepted.get_extra_info("peername") == transport.get_extra_info("sockname")
            assert accepted.get_extra_info("sockname") == address
            assert isinstance(accepted.get_extra_info("socket"), asyncio.trsock.TransportSocket)

    loop.run_until_complete(main())


def test_each_connection_gets_a_new_protocol(loop):
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_server, "127.0.0.1", 0) as server:
            address = server.sockets[0].getsockname()
            for i in range(5):
                message = f"client {i}".encode()
                assert await client_round_trip(loop, address, message) == message
            await conns.wait_count(5)
            assert len({id(p) for p in conns.protocols}) == 5
            assert [bytes(p.data) for p in conns.protocols] == [
                f"client {i}".encode() for i in range(5)
            ]

    loop.run_until_complete(main())


def test_many_concurrent_clients_are_all_served(loop, kind, sock_dir):
    n = 200
    conns = Conns(loop)

    async def one_client(i, address):
        message = f"client {i:03d} ".encode() * 10
        async with connected(connect(loop, kind, lambda: Recorder(loop), address)) as (
            transport,
            client,
        ):
            transport.write(message)
            return await client.wait_data(len(message)) == message

    async def main():
        if kind == "unix":
            serving = conns.serving(
                loop.create_unix_server, os.path.join(sock_dir, "many.sock"), backlog=n
            )
        else:
            serving = conns.serving(loop.create_server, "127.0.0.1", 0, backlog=n)
        async with serving as server:
            address = server.sockets[0].getsockname()
            results = await asyncio.gather(*(one_client(i, address) for i in range(n)))
            assert results == [True] * n
            assert len(conns.protocols) == n
            await asyncio.gather(*(p.lost for p in conns.protocols))

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Closing
# --------------------------------------------------------------------------------------------


def test_close_stops_accepting_but_keeps_accepted_connections(loop):
    conns = Conns(loop)

    async def main():
        async with one_connection(loop, conns) as (server, address, transport, client):
            server.close()
            assert not server.is_serving()
            assert refuses(address)
            # The accepted connection still works.
            transport.write(b"after close")
            assert await client.wait_data(11) == b"after close"
            assert not conns.protocols[0].lost.done()

    loop.run_until_complete(main())


def test_wait_closed_waits_for_close_and_for_the_connections(loop):
    conns = Conns(loop)

    async def main():
        async with one_connection(loop, conns) as (server, _, transport, client):
            waiter = asyncio.ensure_future(server.wait_closed())
            try:
                await poll_rounds(loop)
                assert not waiter.done()
                server.close()
                await poll_rounds(loop)
                assert not waiter.done()  # a connection is still open
                transport.close()
                await client.lost
                await conns.protocols[0].lost
                await waiter
            finally:
                waiter.cancel()

    loop.run_until_complete(main())


def test_wait_closed_without_connections(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        waiter = asyncio.ensure_future(server.wait_closed())
        await poll_rounds(loop)
        assert not waiter.done()
        server.close()
        await waiter
        await server.wait_closed()  # at once, once closed

    loop.run_until_complete(main())


def test_wait_closed_after_close_returns_at_once(loop):
    # Python 3.11: wait_closed() called after close() returns at once, even while accepted
    # connections are open (3.12.1 changed this to wait for them).
    conns = Conns(loop)

    async def main():
        async with one_connection(loop, conns) as (server, _, _, _):
            server.close()
            if sys.version_info < (3, 12):
                await asyncio.wait_for(server.wait_closed(), CLEANUP_TIMEOUT)
                assert not conns.protocols[0].lost.done()

    loop.run_until_complete(main())


@needs_3_13
def test_close_clients_closes_the_accepted_connections_after_their_writes(loop):
    conns = Conns(loop)

    async def main():
        async with one_connection(loop, conns) as (server, _, _, client):
            server.close()
            waiter = asyncio.ensure_future(server.wait_closed())
            try:
                accepted = conns.protocols[0].transport
                accepted.write(b"last words")
                server.close_clients()
                assert accepted.is_closing()
                assert await client.wait_data(10) == b"last words"
                assert await conns.protocols[0].lost is None
                await client.lost
                await asyncio.wait_for(waiter, CLEANUP_TIMEOUT)
            finally:
                waiter.cancel()

    loop.run_until_complete(main())


@needs_3_13
def test_abort_clients_drops_what_the_accepted_connections_buffered(loop):
    conns = Conns(loop)

    async def main():
        async with one_connection(loop, conns) as (server, _, _, client):
            accepted = conns.protocols[0].transport
            written = await net.fill_write_buffer(accepted)
            server.abort_clients()
            assert accepted.get_write_buffer_size() == 0
            assert await conns.protocols[0].lost is None
            await client.lost
            assert len(client.data) < len(written)
            assert server.is_serving()  # only the connections went

    loop.run_until_complete(main())


def test_async_with_server_closes_it(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        async with server as entered:
            assert entered is server
            assert server.is_serving()
        assert not server.is_serving()
        assert server.sockets == ()
        assert refuses(address)

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def listening_socket(host):
    """A plain TCP socket listening on ``host`` (any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(1)
    return sock


def test_address_in_use(loop):
    with listening_socket("127.0.0.1") as taken:
        address = taken.getsockname()
        error = run_raises(
            loop,
            loop.create_server(asyncio.Protocol, *address),
            OSError,
            net.address_in_use_message(address),
        )
        assert type(error) is OSError
        assert error.errno == errno.EADDRINUSE


def test_address_in_use_for_one_host_of_a_list_closes_the_others(loop):
    with listening_socket("127.0.0.2") as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as info:
            loop.run_until_complete(
                loop.create_server(asyncio.Protocol, ["127.0.0.1", "127.0.0.2"], port)
            )
        assert info.value.errno == errno.EADDRINUSE
        # The socket already bound to 127.0.0.1 (when asyncio bound it first) was closed: the
        # leak check fails the test otherwise.


def check_argument_errors(loop, create_server, cases):
    """Each (kwargs, exception type, message) of ``cases``: ``create_server(asyncio.Protocol,
    **kwargs)`` raises that exception with that message."""
    for kwargs, exc_type, message in cases:
        run_raises(loop, create_server(asyncio.Protocol, **kwargs), exc_type, message)


def test_create_server_argument_errors(loop):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    here = {"host": "127.0.0.1", "port": 0}
    with sock, dgram:
        check_argument_errors(
            loop,
            loop.create_server,
            [
                ({**here, "ssl": True}, TypeError, "ssl argument must be an SSLContext or None"),
                (
                    {**here, "sock": sock},
                    ValueError,
                    "host/port and sock can not be specified at the same time",
                ),
                ({}, ValueError, "Neither host/port nor sock were specified"),
                ({"sock": dgram}, ValueError, f"A Stream Socket was expected, got {dgram!r}"),
                (
                    {**here, "ssl_handshake_timeout": 1},
                    ValueError,
                    "ssl_handshake_timeout is only meaningful with ssl",
                ),
                (
                    {**here, "ssl_shutdown_timeout": 1},
                    ValueError,
                    "ssl_shutdown_timeout is only meaningful with ssl",
                ),
            ],
        )
        assert sock.fileno() >= 0 and dgram.fileno() >= 0  # not closed by the failed calls


# --------------------------------------------------------------------------------------------
# Unix servers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path_type", [str, pathlib.Path])
def test_create_unix_server_on_a_path(loop, sock_dir, path_type):
    path = os.path.join(sock_dir, "server.sock")
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_unix_server, path_type(path)) as server:
            assert server.is_serving()
            (sock,) = server.sockets
            assert isinstance(sock, asyncio.trsock.TransportSocket)
            assert sock.family == socket.AF_UNIX
            assert sock.getsockname() == path
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            assert await client_round_trip(loop, path) == b"ping"
            async with connected(loop.create_unix_connection(lambda: Recorder(loop), path)) as (
                transport,
                client,
            ):
                transport.write(b"proto")
                assert await client.wait_data(5) == b"proto"
        # Python 3.11 leaves the socket file behind (3.13 removes it on close).
        assert os.path.exists(path) == (sys.version_info < (3, 13))

    loop.run_until_complete(main())


def test_create_unix_server_with_sock(loop, sock_dir):
    path = os.path.join(sock_dir, "sock.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_unix_server, sock=sock, backlog=7) as server:
            assert sock.gettimeout() == 0
            assert server.sockets[0].fileno() == sock.fileno()
            assert await client_round_trip(loop, path) == b"ping"
        assert sock.fileno() == -1
        # From 3.13 the file of a given socket is removed too.
        assert os.path.exists(path) == (sys.version_info < (3, 13))

    with sock:
        loop.run_until_complete(main())


@needs_3_13
def test_create_unix_server_cleanup_socket_false_leaves_the_file(loop, sock_dir):
    path = os.path.join(sock_dir, "kept.sock")

    async def main():
        server = await loop.create_unix_server(asyncio.Protocol, path, cleanup_socket=False)
        await close_server(server)
        assert stat.S_ISSOCK(os.stat(path).st_mode)

    loop.run_until_complete(main())


@needs_3_13
def test_closing_a_unix_server_leaves_a_file_that_replaced_its_own(loop, sock_dir):
    path = os.path.join(sock_dir, "replaced.sock")

    async def main():
        server = await loop.create_unix_server(asyncio.Protocol, path)
        os.unlink(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            other.bind(path)  # a new file at the path: not the server's any more
            await close_server(server)
            assert stat.S_ISSOCK(os.stat(path).st_mode)

    loop.run_until_complete(main())


@needs_3_13
def test_closing_a_unix_server_whose_file_is_gone(loop, sock_dir, caplog):
    path = os.path.join(sock_dir, "gone.sock")

    async def main():
        server = await loop.create_unix_server(asyncio.Protocol, path)
        os.unlink(path)
        await close_server(server)
        assert not os.path.exists(path)

    loop.run_until_complete(main())
    assert [record for record in caplog.records if record.name == "asyncio"] == []


def test_create_unix_server_start_serving_false(loop, sock_dir):
    path = os.path.join(sock_dir, "later.sock")
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_unix_server, path, start_serving=False) as server:
            assert not server.is_serving()
            assert refuses(path, socket.AF_UNIX)
            await server.start_serving()
            assert await client_round_trip(loop, path) == b"ping"

    loop.run_until_complete(main())


def test_create_unix_server_on_an_abstract_name(loop):
    name = f"\0oxloop-test-{uuid.uuid4().hex}"
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_unix_server, name) as server:
            assert server.sockets[0].getsockname() == name.encode()
            assert await client_round_trip(loop, name) == b"ping"

    loop.run_until_complete(main())


def test_create_unix_server_removes_a_stale_socket_file(loop, sock_dir):
    path = os.path.join(sock_dir, "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    conns = Conns(loop)

    async def main():
        async with conns.serving(loop.create_unix_server, path):
            assert await client_round_trip(loop, path) == b"ping"

    loop.run_until_complete(main())


def test_create_unix_server_replaces_a_live_server_socket_file(loop, sock_dir):
    # asyncio removes any socket file at the path, even one a server still listens on.
    path = os.path.join(sock_dir, "live.sock")
    conns = Conns(loop)

    async def main():
        first = await loop.create_unix_server(asyncio.Protocol, path)
        try:
            async with conns.serving(loop.create_unix_server, path):
                assert await client_round_trip(loop, path) == b"ping"
                assert len(conns.protocols) == 1
        finally:
            await close_server(first)

    loop.run_until_complete(main())


def test_create_unix_server_on_a_path_taken_by_another_file(loop, sock_dir):
    path = os.path.join(sock_dir, "regular")
    with open(path, "w") as f:
        f.write("not a socket")
    error = run_raises(
        loop,
        loop.create_unix_server(asyncio.Protocol, path),
        OSError,
        f"[Errno {errno.EADDRINUSE}] Address {path!r} is already in use",
    )
    assert type(error) is OSError
    assert error.errno == errno.EADDRINUSE
    with open(path) as f:
        assert f.read() == "not a socket"  # left alone


def test_create_unix_server_in_a_missing_directory(loop, sock_dir):
    path = os.path.join(sock_dir, "missing", "server.sock")
    with pytest.raises(FileNotFoundError):
        loop.run_until_complete(loop.create_unix_server(asyncio.Protocol, path))


def test_create_unix_server_argument_errors(loop, sock_dir):
    path = os.path.join(sock_dir, "args.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with unix, inet:
        check_argument_errors(
            loop,
            loop.create_unix_server,
            [
                (
                    {"path": path, "ssl": True},
                    TypeError,
                    "ssl argument must be an SSLContext or None",
                ),
                (
                    {"path": path, "sock": unix},
                    ValueError,
                    "path and sock can not be specified at the same time",
                ),
                ({}, ValueError, "path was not specified, and no sock specified"),
                (
                    {"sock": inet},
                    ValueError,
                    f"A UNIX Domain Stream Socket was expected, got {inet!r}",
                ),
                (
                    {"path": path, "ssl_handshake_timeout": 1},
                    ValueError,
                    "ssl_handshake_timeout is only meaningful with ssl",
                ),
            ],
        )
        assert not os.path.exists(path)
