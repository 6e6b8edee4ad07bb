"""Datagram endpoints: ``loop.create_datagram_endpoint`` and the datagram transport it makes,
over UDP (IPv4 and, where ::1 is usable, IPv6) and Unix datagram sockets.

Covered: local_addr and the sender's address given to datagram_received (its exact shape per
family); remote_addr (a connected endpoint: sendto without an address, with the same one, with
another one); family, proto and flags; reuse_port; allow_broadcast; sock= (adopted, or refused);
argument errors with asyncio's exception types and messages; Unix datagram endpoints (by path,
abstract name, stale socket files); sendto of bytes-like objects (copied when buffered), empty
datagrams, large datagrams, bursts; the write buffer, its limits and pause_writing /
resume_writing; error_received (ICMP port unreachable, a refused sendto); read flow control
(pause_reading/resume_reading/is_reading); close (flushes the buffer first), abort (does not),
connection_lost exactly once, sendto after close; get_extra_info.

The other end of most tests is a plain socket, so that what is sent and read is under the
test's control. The write buffer fills only with Unix datagram sockets: a connected Unix datagram
socket whose peer does not read makes send() fail with EAGAIN (UDP on loopback drops instead).

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
Where asyncio itself changed between versions, the test says which behaviour goes with which
version: asyncio's datagram transport is an ``asyncio.DatagramTransport`` only from 3.12 on
(oxloop's always is); ``sendto(b"")`` sends nothing before 3.13 and an empty datagram from 3.13
on, which also counts an 8-byte header per buffered datagram in get_write_buffer_size().
"""

import asyncio
import contextlib
import errno
import os
import socket
import sys
import uuid
from collections import namedtuple
from unittest import mock

import pytest

from helpers import net
from helpers.net import assert_datagram_buffer_empty, poll_rounds, record_errors, settle

# asyncio sends empty datagrams (and counts a datagram header in its write buffer) from 3.13.
SENDS_EMPTY_DATAGRAMS = sys.version_info >= (3, 13)
HEADER_SIZE = net.DATAGRAM_HEADER_SIZE
# How create_datagram_endpoint names the socket it wanted (reworded in 3.13).
NOT_A_DATAGRAM_SOCKET = "A datagram socket" if sys.version_info >= (3, 13) else "A UDP Socket"
MAX_UDP_PAYLOAD = 65507  # the largest IPv4 UDP datagram

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

Inet = namedtuple("Inet", "family host")
INETS = {"ipv4": Inet(socket.AF_INET, "127.0.0.1"), "ipv6": Inet(socket.AF_INET6, "::1")}


def ipv6_usable():
    """Whether a UDP socket can be bound to ::1 here."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(params=sorted(INETS))
def inet(request):
    """The IP family a test runs over: "ipv4" (127.0.0.1) or "ipv6" (::1, skipped if unusable)."""
    if request.param == "ipv6" and not ipv6_usable():
        pytest.skip("IPv6 loopback (::1) is not usable here")
    return INETS[request.param]


class DatagramRecorder(asyncio.DatagramProtocol):
    """A datagram protocol that records every call its transport makes."""

    def __init__(self, loop):
        self.loop = loop
        self.transport = None
        self.events = []
        self.datagrams = []  # (data, address) pairs, in order
        self.errors = []
        self.lost_calls = []
        self.pause_calls = 0
        self.size_at_pause = None
        self.size_at_resume = None
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.error = loop.create_future()
        self.resumed = loop.create_future()
        self._waiters = []

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def datagram_received(self, data, addr):
        self.events.append("datagram")
        self.datagrams.append((data, addr))
        self._wake()

    def error_received(self, exc):
        self.events.append("error")
        self.errors.append(exc)
        if not self.error.done():
            self.error.set_result(exc)

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost_calls.append(exc)
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()

    def pause_writing(self):
        self.events.append("pause")
        self.pause_calls += 1
        self.size_at_pause = self.transport.get_write_buffer_size()

    def resume_writing(self):
        self.events.append("resume")
        self.size_at_resume = self.transport.get_write_buffer_size()
        if not self.resumed.done():
            self.resumed.set_result(None)

    def _wake(self):
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_datagrams(self, count):
        """Wait until ``count`` datagrams were received; return their (data, address) pairs."""
        while len(self.datagrams) < count:
            if self.lost.done():
                raise AssertionError(
                    f"connection lost after {len(self.datagrams)} of {count} datagrams"
                )
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            await waiter
        return self.datagrams[:count]


class Echo(DatagramRecorder):
    """Sends every datagram back to its sender."""

    def datagram_received(self, data, addr):
        super().datagram_received(data, addr)
        self.transport.sendto(data, addr)


@contextlib.asynccontextmanager
async def endpoint(loop, factory=None, **kwargs):
    """``create_datagram_endpoint(**kwargs)`` (with a ``DatagramRecorder`` unless ``factory`` is
    given): yields (transport, protocol); at exit, aborts it unless connection_lost already ran,
    and waits for connection_lost."""
    factory = factory or (lambda: DatagramRecorder(loop))
    transport, protocol = await loop.create_datagram_endpoint(factory, **kwargs)
    try:
        yield transport, protocol
    finally:
        # Not after connection_lost: asyncio's abort() then fails (AttributeError) when a
        # close() had flushed the buffer first.
        if not protocol.lost.done():
            transport.abort()
        await settle(protocol.lost)


def plain_socket(family, address=None):
    """A non-blocking datagram socket of ``family``, bound to ``address`` if given."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if address is not None:
        sock.bind(address)
    return sock


def unused_port(inet):
    """A UDP port of ``inet``'s loopback address that nothing is bound to (right now)."""
    with plain_socket(inet.family, (inet.host, 0)) as sock:
        return sock.getsockname()[1]


def unix_path(sock_dir, name=None):
    return os.path.join(sock_dir, name or f"{uuid.uuid4().hex[:8]}.sock")


def drain_now(sock):
    """The datagrams ``sock`` (non-blocking) can read right now."""
    received = []
    while True:
        try:
            received.append(sock.recv(256 * 1024))
        except BlockingIOError:
            return received


async def recv_datagram(loop, sock):
    """The next datagram on ``sock`` and its sender, read through the loop."""
    return await loop.sock_recvfrom(sock, 256 * 1024)


async def recv_until(loop, sock, future):
    """Read datagrams from ``sock`` (non-blocking) until ``future`` is done, then those still
    queued. (It waits for readability rather than cancelling a pending read, which could lose
    a datagram.)"""
    received = []
    while True:
        received += drain_now(sock)
        if future.done():
            return received + drain_now(sock)
        readable = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait([readable, future], return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(sock.fileno())


def numbered(i, size=1000):
    """A datagram of ``size`` bytes saying ``i``."""
    return i.to_bytes(4, "big") * (size // 4)


@contextlib.asynccontextmanager
async def unix_to_plain_peer(loop, sock_dir, factory=None):
    """An endpoint connected (remote_addr) to a plain, bound Unix datagram socket that reads
    only when the test does: yields (transport, protocol, peer socket)."""
    path = unix_path(sock_dir, "peer.sock")
    with plain_socket(socket.AF_UNIX, path) as peer:
        async with endpoint(loop, factory, family=socket.AF_UNIX, remote_addr=path) as (
            transport,
            protocol,
        ):
            yield transport, protocol, peer


async def fill_send_buffer(loop, transport, size=1000):
    """Send numbered datagrams until the kernel takes no more (the peer does not read) and the
    transport keeps some buffered, even after the loop polled; return the datagrams sent."""
    sent = []
    while True:
        assert len(sent) < 100_000, "the transport never buffered anything"
        data = numbered(len(sent), size)
        transport.sendto(data)
        sent.append(data)
        if transport.get_write_buffer_size():
            await poll_rounds(loop)
            if transport.get_write_buffer_size():
                return sent


# --------------------------------------------------------------------------------------------
# Creation and addresses
# --------------------------------------------------------------------------------------------


def test_connection_made_has_run_when_the_endpoint_is_returned(loop, loop_kind):
    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, protocol):
            assert protocol.made.done()
            assert protocol.made.result() is transport
            assert protocol.events == ["made"]
            assert transport.get_protocol() is protocol
            assert not transport.is_closing()
            assert transport.is_reading()
            assert isinstance(transport, asyncio.BaseTransport)
            # asyncio's selector transport subclasses DatagramTransport from 3.12 (gh-90352);
            # oxloop's is one on every version.
            if loop_kind == "oxloop" or sys.version_info >= (3, 12):
                assert isinstance(transport, asyncio.DatagramTransport)

    loop.run_until_complete(main())


def test_local_addr_binds_and_receives_with_the_sender_address(loop, inet):
    async def main():
        async with endpoint(loop, local_addr=(inet.host, 0)) as (transport, protocol):
            sockname = transport.get_extra_info("sockname")
            assert sockname[0] == inet.host and sockname[1] > 0
            # IPv4 addresses are (host, port); IPv6 ones (host, port, flowinfo, scope_id).
            assert len(sockname) == (2 if inet.family == socket.AF_INET else 4)
            with plain_socket(inet.family, (inet.host, 0)) as peer:
                peer.sendto(b"hello", sockname)
                [(data, addr)] = await protocol.wait_datagrams(1)
                assert type(data) is bytes and data == b"hello"
                assert addr == peer.getsockname()
                if inet.family == socket.AF_INET:
                    assert addr == (inet.host, addr[1])
                else:
                    assert addr == (inet.host, addr[1], 0, 0)
                transport.sendto(b"reply", addr)
                assert await recv_datagram(loop, peer) == (b"reply", sockname)

    loop.run_until_complete(main())


def test_remote_addr_connects_the_endpoint(loop, inet):
    async def main():
        peer = plain_socket(inet.family, (inet.host, 0))
        stranger = plain_socket(inet.family, (inet.host, 0))
        with peer, stranger:
            async with endpoint(loop, remote_addr=peer.getsockname()[:2]) as (transport, protocol):
                assert transport.get_extra_info("peername") == peer.getsockname()
                sockname = transport.get_extra_info("sockname")
                assert sockname[0] == inet.host and sockname[1] > 0  # bound by connect()
                transport.sendto(b"no address")
                transport.sendto(b"same address", peer.getsockname())
                assert await recv_datagram(loop, peer) == (b"no address", sockname)
                assert await recv_datagram(loop, peer) == (b"same address", sockname)
                # A connected socket only receives from its peer.
                stranger.sendto(b"from a stranger", sockname)
                peer.sendto(b"from the peer", sockname)
                await protocol.wait_datagrams(1)
                await poll_rounds(loop)
                assert protocol.datagrams == [(b"from the peer", peer.getsockname())]

    loop.run_until_complete(main())


def test_sendto_another_address_on_a_connected_endpoint_raises(loop, inet):
    async def main():
        with plain_socket(inet.family, (inet.host, 0)) as peer:
            async with endpoint(loop, remote_addr=peer.getsockname()[:2]) as (transport, _):
                remote = transport.get_extra_info("peername")
                other = (inet.host, unused_port(inet), *remote[2:])
                with pytest.raises(ValueError) as info:
                    transport.sendto(b"x", other)
                assert str(info.value) == f"Invalid address: must be None or {remote}"
                if inet.family == socket.AF_INET6:
                    # The address must be the resolved one exactly: the 2-tuple form of an
                    # IPv6 remote address is "another address".
                    with pytest.raises(ValueError, match=r"^Invalid address: must be None or "):
                        transport.sendto(b"x", remote[:2])
                transport.sendto(b"still open")
                sockname = transport.get_extra_info("sockname")
                assert await recv_datagram(loop, peer) == (b"still open", sockname)
                assert not transport.is_closing()

    loop.run_until_complete(main())


def test_sendto_without_an_address_on_an_unconnected_endpoint_is_a_fatal_error(loop):
    errors = record_errors(loop)

    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, protocol):
            transport.sendto(b"where to?")  # does not raise: the transport fails
            assert transport.is_closing()
            exc = await protocol.lost
            assert isinstance(exc, TypeError)
            assert protocol.lost_calls == [exc]
            assert protocol.events == ["made", "lost"]

    loop.run_until_complete(main())
    assert len(errors) == 1
    assert errors[0]["message"] == "Fatal write error on datagram transport"
    assert isinstance(errors[0]["exception"], TypeError)
    assert errors[0]["protocol"] is not None and errors[0]["transport"] is not None


def test_family_alone_makes_an_unbound_endpoint(loop):
    async def main():
        async with endpoint(loop, family=socket.AF_INET) as (transport, protocol):
            assert transport.get_extra_info("sockname") == ("0.0.0.0", 0)
            assert transport.get_extra_info("peername") is None
            with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as peer:
                transport.sendto(b"first", peer.getsockname())  # binds an ephemeral port
                data, addr = await recv_datagram(loop, peer)
                assert data == b"first" and addr[1] > 0
                peer.sendto(b"answer", addr)
                assert await protocol.wait_datagrams(1) == [(b"answer", peer.getsockname())]

    loop.run_until_complete(main())


def test_family_selects_the_resolved_address(loop):
    async def main():
        async with endpoint(loop, local_addr=("localhost", 0), family=socket.AF_INET) as (
            transport,
            _,
        ):
            assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
            assert transport.get_extra_info("socket").family == socket.AF_INET
        with pytest.raises(socket.gaierror):  # an IPv4 address is no IPv6 one
            await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), family=socket.AF_INET6
            )

    loop.run_until_complete(main())


def test_proto_is_that_of_the_socket(loop):
    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0), proto=socket.IPPROTO_UDP) as (
            transport,
            _,
        ):
            sock = transport.get_extra_info("socket")
            assert sock.proto == socket.IPPROTO_UDP
            assert sock.type == socket.SOCK_DGRAM
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, _):
            assert transport.get_extra_info("socket").proto == socket.IPPROTO_UDP

    loop.run_until_complete(main())


def test_flags_are_passed_to_getaddrinfo(loop):
    async def main():
        with pytest.raises(socket.gaierror):  # "localhost" is no numeric host
            await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("localhost", 0), flags=socket.AI_NUMERICHOST
            )
        async with endpoint(loop, local_addr=("127.0.0.1", 0), flags=socket.AI_NUMERICHOST) as (
            transport,
            _,
        ):
            assert transport.get_extra_info("sockname")[0] == "127.0.0.1"

    loop.run_until_complete(main())


def test_reuse_port_lets_two_endpoints_share_a_port(loop):
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT here")

    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0), reuse_port=True) as (first, _):
            address = first.get_extra_info("sockname")
            async with endpoint(loop, local_addr=address, reuse_port=True) as (second, _):
                assert second.get_extra_info("sockname") == address
                for transport in (first, second):
                    sock = transport.get_extra_info("socket")
                    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            with pytest.raises(OSError) as info:  # not without reuse_port
                await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=address)
            assert info.value.errno == errno.EADDRINUSE

    loop.run_until_complete(main())


def test_allow_broadcast_sets_so_broadcast(loop):
    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0), allow_broadcast=True) as (
            transport,
            _,
        ):
            assert (
                transport.get_extra_info("socket").getsockopt(
                    socket.SOL_SOCKET, socket.SO_BROADCAST
                )
                != 0
            )
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, _):
            assert (
                transport.get_extra_info("socket").getsockopt(
                    socket.SOL_SOCKET, socket.SO_BROADCAST
                )
                == 0
            )

    loop.run_until_complete(main())


def test_allow_broadcast_with_remote_addr_does_not_connect(loop):
    # asyncio does not connect() a broadcasting endpoint: sendto() sends to remote_addr.
    async def main():
        with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as peer:
            remote = peer.getsockname()
            async with endpoint(loop, remote_addr=remote, allow_broadcast=True) as (transport, _):
                assert transport.get_extra_info("peername") is None
                transport.sendto(b"to the remote")
                data, _ = await recv_datagram(loop, peer)
                assert data == b"to the remote"
                with pytest.raises(ValueError) as info:
                    transport.sendto(b"x", ("127.0.0.1", unused_port(INETS["ipv4"])))
                assert str(info.value) == f"Invalid address: must be None or {remote}"

    loop.run_until_complete(main())


def test_a_refused_sendto_calls_error_received(loop):
    # Without SO_BROADCAST the kernel refuses to send to the broadcast address (EACCES): an
    # OSError of sendto goes to error_received, and the transport stays open.
    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, protocol):
            transport.sendto(b"x", ("255.255.255.255", 9))
            exc = await protocol.error
            assert isinstance(exc, OSError)  # PermissionError (EACCES) on Linux
            assert not transport.is_closing()
            with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as peer:
                transport.sendto(b"still works", peer.getsockname())
                assert (await recv_datagram(loop, peer))[0] == b"still works"
            assert protocol.events == ["made", "error"]

    loop.run_until_complete(main())


def test_sock_is_adopted(loop):
    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        address = sock.getsockname()
        async with endpoint(loop, sock=sock) as (transport, protocol):
            assert not sock.getblocking()
            assert transport.get_extra_info("sockname") == address
            assert transport.get_extra_info("peername") is None
            assert transport.get_extra_info("socket").fileno() == sock.fileno()
            with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as peer:
                peer.sendto(b"to the adopted socket", address)
                assert await protocol.wait_datagrams(1) == [
                    (b"to the adopted socket", peer.getsockname())
                ]
            transport.close()
            await protocol.lost
        assert sock.fileno() == -1  # the transport closed it

    loop.run_until_complete(main())


def test_sock_of_an_unnamed_unix_socketpair_receives_with_no_address(loop):
    """``socket.socketpair(AF_UNIX, SOCK_DGRAM)``: neither end has a name, so each datagram
    arrives with the address None (Linux), in order, none lost."""

    async def main():
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with theirs:
            theirs.send(b"before the endpoint")
            async with endpoint(loop, sock=mine) as (transport, protocol):
                theirs.send(b"hello")
                for i in range(50):
                    theirs.send(numbered(i, 100))
                datagrams = await protocol.wait_datagrams(52)
                assert datagrams == [(b"before the endpoint", None), (b"hello", None)] + [
                    (numbered(i, 100), None) for i in range(50)
                ]
                assert transport.get_extra_info("peername") in (None, "")

    loop.run_until_complete(main())


def test_a_datagram_transport_method_can_be_patched_on_the_instance(loop):
    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, _protocol):
            with mock.patch.object(transport, "sendto") as patched:
                transport.sendto(b"x", ("127.0.0.1", 9))
                patched.assert_called_once_with(b"x", ("127.0.0.1", 9))
            with mock.patch.object(transport, "get_write_buffer_size", return_value=7):
                assert transport.get_write_buffer_size() == 7
            assert transport.get_write_buffer_size() == 0
            transport.tag = "mine"
            assert transport.tag == "mine"

    loop.run_until_complete(main())


def test_sock_must_be_a_datagram_socket(loop):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            with pytest.raises(ValueError) as info:
                await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock)
            assert str(info.value) == f"{NOT_A_DATAGRAM_SOCKET} was expected, got {sock!r}"
            assert sock.fileno() >= 0  # left to its owner

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        ({"local_addr": ("127.0.0.1", 0)}, "local_addr=('127.0.0.1', 0)"),
        ({"remote_addr": ("127.0.0.1", 9)}, "remote_addr=('127.0.0.1', 9)"),
        ({"family": socket.AF_INET}, f"family={int(socket.AF_INET)}"),
        ({"proto": socket.IPPROTO_UDP}, f"proto={socket.IPPROTO_UDP}"),
        ({"flags": socket.AI_PASSIVE}, f"flags={int(socket.AI_PASSIVE)}"),
        ({"reuse_port": True}, "reuse_port=True"),
        ({"allow_broadcast": True}, "allow_broadcast=True"),
        (
            {"local_addr": ("127.0.0.1", 0), "reuse_port": True, "allow_broadcast": True},
            "local_addr=('127.0.0.1', 0), reuse_port=True, allow_broadcast=True",
        ),
    ],
)
def test_sock_with_socket_modifiers_is_a_value_error(loop, kwargs, shown):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            with pytest.raises(ValueError) as info:
                await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock, **kwargs)
            assert str(info.value) == (
                "socket modifier keyword arguments can not be used when sock is specified. "
                f"({shown})"
            )

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    "kwargs, exc_type, message",
    [
        ({}, ValueError, "unexpected address family"),
        ({"local_addr": "127.0.0.1"}, TypeError, "2-tuple is expected"),
        ({"remote_addr": ("127.0.0.1", 9, 0)}, TypeError, "2-tuple is expected"),
        ({"local_addr": ("::1", 0, 0, 0)}, TypeError, "2-tuple is expected"),
        (
            {"local_addr": ("127.0.0.1", 0), "remote_addr": ("::1", 9)},  # no common family
            ValueError,
            "can not get address information",
        ),
        ({"family": socket.AF_UNIX, "local_addr": b"/tmp/x.sock"}, TypeError, "string is expected"),
        (
            {"family": socket.AF_UNIX, "remote_addr": ("127.0.0.1", 9)},
            TypeError,
            "string is expected",
        ),
    ],
)
def test_argument_errors_are_asyncio_s(loop, kwargs, exc_type, message):
    async def main():
        with pytest.raises(exc_type) as info:
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, **kwargs)
        assert str(info.value) == message

    loop.run_until_complete(main())


def test_reuse_address_is_not_accepted(loop):
    # Removed in 3.11 (it was a ValueError from 3.8.1 on): now an unknown keyword argument.
    async def main():
        with pytest.raises(TypeError, match="unexpected keyword argument 'reuse_address'"):
            await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), reuse_address=True
            )

    loop.run_until_complete(main())


def test_a_failed_bind_raises_the_os_error(loop):
    async def main():
        with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as taken:
            with pytest.raises(OSError) as info:
                await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, local_addr=taken.getsockname()
                )
            assert info.value.errno == errno.EADDRINUSE

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Unix datagram sockets
# --------------------------------------------------------------------------------------------


def test_unix_local_addr_receives_with_the_sender_path(loop, sock_dir):
    async def main():
        path = unix_path(sock_dir)
        async with endpoint(loop, family=socket.AF_UNIX, local_addr=path) as (transport, protocol):
            assert transport.get_extra_info("sockname") == path
            assert transport.get_extra_info("peername") is None
            assert transport.get_extra_info("socket").family == socket.AF_UNIX
            sender_path = unix_path(sock_dir)
            with (
                plain_socket(socket.AF_UNIX, sender_path) as named,
                plain_socket(socket.AF_UNIX) as unnamed,
            ):
                named.sendto(b"from a path", path)
                unnamed.sendto(b"from nowhere", path)
                received = await protocol.wait_datagrams(2)
                assert received == [(b"from a path", sender_path), (b"from nowhere", None)]
                transport.sendto(b"back", sender_path)
                assert await recv_datagram(loop, named) == (b"back", path)

    loop.run_until_complete(main())


def test_unix_remote_addr_connects_the_endpoint(loop, sock_dir):
    async def main():
        path = unix_path(sock_dir)
        with plain_socket(socket.AF_UNIX, path) as peer:
            async with endpoint(loop, family=socket.AF_UNIX, remote_addr=path) as (transport, _):
                assert transport.get_extra_info("peername") == path
                assert transport.get_extra_info("sockname") == ""  # unbound
                transport.sendto(b"one")
                transport.sendto(b"two", path)
                with pytest.raises(ValueError) as info:
                    transport.sendto(b"three", unix_path(sock_dir))
                assert str(info.value) == f"Invalid address: must be None or {path}"
                assert (await recv_datagram(loop, peer))[0] == b"one"
                assert (await recv_datagram(loop, peer))[0] == b"two"

    loop.run_until_complete(main())


def test_unix_abstract_name(loop):
    async def main():
        name = f"\0oxloop-test-{uuid.uuid4().hex}"
        async with endpoint(loop, family=socket.AF_UNIX, local_addr=name) as (transport, protocol):
            assert transport.get_extra_info("sockname") == name.encode()
            with plain_socket(socket.AF_UNIX) as sender:
                sender.sendto(b"abstract", name)
                assert (await protocol.wait_datagrams(1))[0][0] == b"abstract"

    loop.run_until_complete(main())


def test_unix_local_addr_replaces_a_stale_socket_file(loop, sock_dir):
    async def main():
        path = unix_path(sock_dir)
        plain_socket(socket.AF_UNIX, path).close()  # leaves its socket file behind
        assert os.path.exists(path)
        async with endpoint(loop, family=socket.AF_UNIX, local_addr=path) as (transport, protocol):
            with plain_socket(socket.AF_UNIX) as sender:
                sender.sendto(b"new socket", path)
                assert (await protocol.wait_datagrams(1))[0][0] == b"new socket"
            transport.close()
            await protocol.lost
        assert os.path.exists(path)  # closing the endpoint does not remove its path

    loop.run_until_complete(main())


def test_unix_burst_is_buffered_and_arrives_in_order(loop, loop_kind, sock_dir):
    datagrams = [numbered(i, 512) for i in range(1000)]

    async def main():
        path = unix_path(sock_dir)
        async with endpoint(loop, family=socket.AF_UNIX, local_addr=path) as (_, receiver):
            async with endpoint(loop, family=socket.AF_UNIX, remote_addr=path) as (sender, _):
                for data in datagrams:  # more than the receiving socket's queue takes
                    sender.sendto(data)
                assert sender.get_write_buffer_size() > 0  # the rest waits in the transport
                received = await receiver.wait_datagrams(len(datagrams))
                assert [data for data, _ in received] == datagrams
                await poll_rounds(loop)
                assert_datagram_buffer_empty(sender, loop_kind)

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Sending and receiving data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", [bytes, bytearray, memoryview])
def test_sendto_accepts_bytes_like_objects(loop, type_):
    async def main():
        with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as peer:
            async with endpoint(loop, remote_addr=peer.getsockname()) as (transport, _):
                transport.sendto(type_(b"whole"))
                transport.sendto(memoryview(type_(b"0123456789"))[2:5])
                assert (await recv_datagram(loop, peer))[0] == b"whole"
                assert (await recv_datagram(loop, peer))[0] == b"234"

    loop.run_until_complete(main())


def test_sendto_rejects_str(loop):
    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, _):
            with pytest.raises(TypeError) as info:
                transport.sendto("text", ("127.0.0.1", 9))
            assert str(info.value) == "data argument must be a bytes-like object, not 'str'"
            assert not transport.is_closing()

    loop.run_until_complete(main())


def test_datagram_boundaries_are_kept(loop):
    sizes = [1, 100, 1500, 9000, 1]

    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, protocol):
            with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as peer:
                for i, size in enumerate(sizes):
                    peer.sendto(bytes([i]) * size, transport.get_extra_info("sockname"))
                received = await protocol.wait_datagrams(len(sizes))
                assert [data for data, _ in received] == [
                    bytes([i]) * size for i, size in enumerate(sizes)
                ]

    loop.run_until_complete(main())


def test_largest_udp_datagram_arrives_whole(loop):
    big = os.urandom(MAX_UDP_PAYLOAD)

    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, protocol):
            with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as peer:
                peer.sendto(big, transport.get_extra_info("sockname"))
                assert await protocol.wait_datagrams(1) == [(big, peer.getsockname())]
                transport.sendto(big, peer.getsockname())
                assert (await recv_datagram(loop, peer))[0] == big

    loop.run_until_complete(main())


def test_an_empty_datagram_is_received(loop, inet):
    async def main():
        async with endpoint(loop, local_addr=(inet.host, 0)) as (transport, protocol):
            with plain_socket(inet.family, (inet.host, 0)) as peer:
                peer.sendto(b"", transport.get_extra_info("sockname"))
                peer.sendto(b"after", transport.get_extra_info("sockname"))
                received = await protocol.wait_datagrams(2)
                assert received == [(b"", peer.getsockname()), (b"after", peer.getsockname())]

    loop.run_until_complete(main())


def test_sendto_of_an_empty_datagram(loop):
    # Before 3.13 asyncio's sendto(b"") returns without sending anything; from 3.13 on
    # it sends an empty datagram (gh-113812).
    async def main():
        with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as peer:
            async with endpoint(loop, remote_addr=peer.getsockname()) as (transport, _):
                transport.sendto(b"")
                transport.sendto(bytearray())
                transport.sendto(b"marker")
                expected = [b"", b"", b"marker"] if SENDS_EMPTY_DATAGRAMS else [b"marker"]
                received = [(await recv_datagram(loop, peer))[0] for _ in expected]
                assert received == expected
                await poll_rounds(loop)
                assert drain_now(peer) == []
                assert transport.get_write_buffer_size() == 0

    loop.run_until_complete(main())


def test_sendto_from_connection_made(loop):
    class Greeter(DatagramRecorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.sendto(b"hello from connection_made")

    async def main():
        with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as peer:
            async with endpoint(loop, lambda: Greeter(loop), remote_addr=peer.getsockname()):
                assert (await recv_datagram(loop, peer))[0] == b"hello from connection_made"

    loop.run_until_complete(main())


def test_burst_of_echo_round_trips_all_arrive(loop):
    # 1000 round trips of 512-byte datagrams between two endpoints, at most ``window`` in
    # flight (more could overflow a UDP receive buffer: UDP may drop, but not with room).
    datagrams = [numbered(i, 512) for i in range(1000)]
    window = 32

    class Pinger(DatagramRecorder):
        sent = 0

        def send_next(self):
            if self.sent < len(datagrams):
                self.transport.sendto(datagrams[self.sent])
                self.sent += 1

        def connection_made(self, transport):
            super().connection_made(transport)
            for _ in range(window):
                self.send_next()

        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            self.send_next()

    async def main():
        async with endpoint(loop, lambda: Echo(loop), local_addr=("127.0.0.1", 0)) as (
            server,
            echo,
        ):
            address = server.get_extra_info("sockname")
            async with endpoint(loop, lambda: Pinger(loop), remote_addr=address) as (
                client,
                pinger,
            ):
                received = await pinger.wait_datagrams(len(datagrams))
                assert sorted(data for data, _ in received) == datagrams
                assert {addr for _, addr in received} == {address}
                assert len(echo.datagrams) == len(datagrams)
                assert {addr for _, addr in echo.datagrams} == {client.get_extra_info("sockname")}

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# The write buffer and write flow control
# --------------------------------------------------------------------------------------------


def test_write_buffer_size_is_zero_until_the_kernel_buffer_is_full(loop, loop_kind, sock_dir):
    async def main():
        async with unix_to_plain_peer(loop, sock_dir) as (transport, _, peer):
            assert transport.get_write_buffer_size() == 0
            transport.sendto(b"taken at once")
            assert await loop.sock_recv(peer, 100) == b"taken at once"
            assert transport.get_write_buffer_size() == 0
            sent = await fill_send_buffer(loop, transport)
            before = transport.get_write_buffer_size()
            assert before > 0
            transport.sendto(numbered(len(sent)))
            assert transport.get_write_buffer_size() == before + 1000 + HEADER_SIZE
            sent.append(numbered(len(sent)))
            transport.close()
            received = await recv_until(loop, peer, transport.get_protocol().lost)
            assert received == sent
            assert_datagram_buffer_empty(transport, loop_kind)

    loop.run_until_complete(main())


def test_default_write_buffer_limits(loop):
    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, _):
            assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            transport.set_write_buffer_limits(high=1000)
            assert transport.get_write_buffer_limits() == (250, 1000)
            transport.set_write_buffer_limits(high=1000, low=10)
            assert transport.get_write_buffer_limits() == (10, 1000)
            with pytest.raises(ValueError) as info:
                transport.set_write_buffer_limits(high=10, low=20)
            assert str(info.value) == "high (10) must be >= low (20) must be >= 0"

    loop.run_until_complete(main())


def test_pause_and_resume_writing_at_the_buffer_limits(loop, sock_dir):
    high, low, size = 8000, 2000, 1000

    async def main():
        async with unix_to_plain_peer(loop, sock_dir) as (transport, protocol, peer):
            transport.set_write_buffer_limits(high=high, low=low)
            sent = await fill_send_buffer(loop, transport, size)
            assert protocol.pause_calls == 0  # one datagram buffered: under the high-water mark
            while protocol.pause_calls == 0:  # pause_writing is called from inside sendto
                assert len(sent) < 1000, "pause_writing was never called"
                sent.append(numbered(len(sent), size))
                transport.sendto(sent[-1])
            # Called as soon as the buffered bytes exceed the high-water mark.
            assert high < protocol.size_at_pause <= high + size + HEADER_SIZE
            assert transport.get_write_buffer_size() == protocol.size_at_pause
            for _ in range(5):  # sending on while paused is allowed (and buffered)
                sent.append(numbered(len(sent), size))
                transport.sendto(sent[-1])
            assert protocol.pause_calls == 1
            received = await recv_until(loop, peer, protocol.resumed)
            assert protocol.size_at_resume <= low
            assert protocol.events[-2:] == ["pause", "resume"]
            transport.close()
            received += await recv_until(loop, peer, protocol.lost)
            assert received == sent
            assert protocol.events == ["made", "pause", "resume", "lost"]

    loop.run_until_complete(main())


def test_mutating_data_after_sendto_does_not_change_what_is_sent(loop, sock_dir):
    async def main():
        async with unix_to_plain_peer(loop, sock_dir) as (transport, protocol, peer):
            head = await fill_send_buffer(loop, transport)  # what follows is buffered
            first = bytearray(b"A" * 1000)
            second = bytearray(b"B" * 1000)
            transport.sendto(first)
            transport.sendto(memoryview(second))
            first[:] = b"a" * 1000
            second[:] = b"b" * 1000
            first.extend(b"more")  # resizing is allowed: the transport kept no export
            second.extend(b"more")
            transport.close()
            received = await recv_until(loop, peer, protocol.lost)
            assert received == [*head, b"A" * 1000, b"B" * 1000]

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_port_unreachable_calls_error_received(loop, inet):
    # A connected UDP socket learns of the peer's ICMP port unreachable: the next receive
    # fails with ECONNREFUSED, which goes to error_received; the transport stays open.
    async def main():
        async with endpoint(loop, remote_addr=(inet.host, unused_port(inet))) as (
            transport,
            protocol,
        ):
            transport.sendto(b"anyone?")
            exc = await protocol.error
            assert isinstance(exc, ConnectionRefusedError)
            assert not transport.is_closing()
            assert not protocol.lost.done()
            assert set(protocol.events) == {"made", "error"}
            transport.close()
            assert await protocol.lost is None

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Read flow control
# --------------------------------------------------------------------------------------------


def test_pause_reading_holds_datagrams_until_resume_reading(loop):
    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, protocol):
            address = transport.get_extra_info("sockname")
            with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as peer:
                peer.sendto(b"before", address)
                await protocol.wait_datagrams(1)
                transport.pause_reading()
                transport.pause_reading()  # a second call does nothing
                assert not transport.is_reading()
                peer.sendto(b"while paused 1", address)
                peer.sendto(b"while paused 2", address)
                await poll_rounds(loop, 3)
                assert len(protocol.datagrams) == 1
                transport.resume_reading()
                transport.resume_reading()
                assert transport.is_reading()
                received = await protocol.wait_datagrams(3)
                assert [data for data, _ in received] == [
                    b"before",
                    b"while paused 1",
                    b"while paused 2",
                ]
                transport.close()
                assert not transport.is_reading()
                transport.resume_reading()  # does nothing on a closing transport
                assert not transport.is_reading()

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# close, abort and connection_lost
# --------------------------------------------------------------------------------------------


def test_close_calls_connection_lost_once_and_soon(loop):
    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, protocol):
            transport.close()
            assert transport.is_closing()
            assert not transport.is_reading()
            assert protocol.events == ["made"]  # connection_lost comes later, not from close()
            transport.close()
            assert await protocol.lost is None
            await poll_rounds(loop)
            transport.close()
            transport.abort()
            await poll_rounds(loop)
            assert protocol.lost_calls == [None]
            assert protocol.events == ["made", "lost"]

    loop.run_until_complete(main())


def test_abort_calls_connection_lost_once_and_soon(loop):
    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, protocol):
            transport.abort()
            assert transport.is_closing()
            assert protocol.events == ["made"]
            transport.abort()
            transport.close()
            assert await protocol.lost is None
            await poll_rounds(loop)
            assert protocol.lost_calls == [None]

    loop.run_until_complete(main())


def test_close_does_not_deliver_datagrams_any_more(loop):
    async def main():
        async with endpoint(loop, local_addr=("127.0.0.1", 0)) as (transport, protocol):
            with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as peer:
                transport.close()
                peer.sendto(b"too late", transport.get_extra_info("sockname"))
                assert await protocol.lost is None
                await poll_rounds(loop)
                assert protocol.events == ["made", "lost"]

    loop.run_until_complete(main())


def test_close_flushes_the_buffer_before_connection_lost(loop, sock_dir):
    async def main():
        async with unix_to_plain_peer(loop, sock_dir) as (transport, protocol, peer):
            sent = await fill_send_buffer(loop, transport)
            transport.close()
            assert transport.is_closing()
            await poll_rounds(loop)
            assert not protocol.lost.done()  # waits for the buffered datagram
            received = await recv_until(loop, peer, protocol.lost)
            assert received == sent
            assert await protocol.lost is None
            assert protocol.lost_calls == [None]

    loop.run_until_complete(main())


def test_abort_drops_the_buffer(loop, sock_dir):
    async def main():
        async with unix_to_plain_peer(loop, sock_dir) as (transport, protocol, peer):
            sent = await fill_send_buffer(loop, transport)
            for _ in range(3):
                sent.append(numbered(len(sent)))
                transport.sendto(sent[-1])
            transport.abort()
            assert await protocol.lost is None
            received = drain_now(peer)
            assert received == sent[: len(received)]  # what the kernel had taken
            assert len(received) < len(sent)
            assert protocol.lost_calls == [None]

    loop.run_until_complete(main())


def test_sendto_after_close_on_a_connected_endpoint_is_dropped(loop):
    # asyncio drops it silently (no exception, no error_received).
    async def main():
        with plain_socket(socket.AF_INET, ("127.0.0.1", 0)) as peer:
            async with endpoint(loop, remote_addr=peer.getsockname()) as (transport, protocol):
                transport.close()
                transport.sendto(b"after close")
                assert await protocol.lost is None
                transport.sendto(b"after connection_lost")
                await poll_rounds(loop)
                assert drain_now(peer) == []
                assert protocol.events == ["made", "lost"]

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# get_extra_info
# --------------------------------------------------------------------------------------------


def test_get_extra_info(loop, inet):
    async def main():
        with plain_socket(inet.family, (inet.host, 0)) as peer:
            addresses = {"local_addr": (inet.host, 0), "remote_addr": peer.getsockname()[:2]}
            async with endpoint(loop, **addresses) as (transport, protocol):
                sock = transport.get_extra_info("socket")
                assert isinstance(sock, asyncio.trsock.TransportSocket)
                assert sock.family == inet.family
                assert sock.type == socket.SOCK_DGRAM
                assert transport.get_extra_info("sockname") == sock.getsockname()
                assert (
                    transport.get_extra_info("peername") == peer.getsockname() == sock.getpeername()
                )
                assert transport.get_extra_info("no such key") is None
                assert transport.get_extra_info("no such key", "default") == "default"
                sockname = transport.get_extra_info("sockname")
                transport.close()
                await protocol.lost
                assert transport.get_extra_info("sockname") == sockname  # kept after close

    loop.run_until_complete(main())
