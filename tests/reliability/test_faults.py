"""Reliability under faults: peers that reset connections, broken and silent TLS handshakes,
accept() out of file descriptors, signals interrupting the loop's system calls, and full
kernel buffers.

Every test runs the same scenario on stock asyncio and on oxloop (the ``loop`` fixture of
conftest.py) and asserts the same expectations on both: the fault is reported as asyncio
reports it (the exception given to connection_lost or raised, or the exception handler's
context), the loop keeps running afterwards, and a healthy echo connection that carries data
through the fault (``healthy_connection`` in fault_helpers.py) loses none of its bytes.
"""

import asyncio
import errno
import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import threading

import pytest

import fault_helpers
from fault_helpers import (
    KiB,
    MiB,
    client_hello,
    healthy_connection,
    reference_tls_error,
    reset_on_close,
)
from helpers import net
from helpers.processes import PYTHON, child_env

SEND_LOST_WARNING = (
    "socket.send() raised exception."  # asyncio's log of writes to a lost connection
)


class Writer(net.Recorder):
    """Writes ``payload`` as soon as it is connected."""

    def __init__(self, loop, payload):
        super().__init__(loop)
        self.payload = payload

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.write(self.payload)


async def connect_plain(loop, address, rcvbuf=None):
    """A non-blocking TCP socket connected to ``address`` (with a small receive buffer if
    ``rcvbuf`` is given), through the loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------------------------
# Peers that reset the connection
# --------------------------------------------------------------------------------------------


def test_peer_reset_while_the_server_writes(loop, caplog):
    """A client that resets the connection while the server's transport still has most of
    16 MiB to send: connection_lost gets ConnectionResetError (as asyncio gives it), later
    writes are dropped without an error (asyncio logs a warning), other connections go on."""
    payload = os.urandom(16 * MiB)
    writers = []

    def writer():
        writers.append(Writer(loop, payload))
        return writers[-1]

    async def main():
        async with healthy_connection(loop):
            server = await loop.create_server(writer, "127.0.0.1", 0)
            try:
                client = await connect_plain(loop, server.sockets[0].getsockname(), rcvbuf=64 * KiB)
                with client:
                    received = await net.recv_exactly(loop, client, MiB)
                    assert received == payload[:MiB]
                    reset_on_close(client)
                (protocol,) = writers
                exc = await asyncio.wait_for(protocol.lost, 5)
                assert type(exc) is ConnectionResetError
                transport = protocol.transport
                assert transport.is_closing()
                assert transport.get_write_buffer_size() == 0
                for _ in range(8):
                    transport.write(b"after the reset")
                assert transport.get_write_buffer_size() == 0
                await net.poll_rounds(loop)
                assert protocol.lost_calls == [exc]
                assert protocol.pause_calls == 1 and protocol.resume_calls == 0
            finally:
                await net.close_server(server)

    loop.run_until_complete(main())
    assert SEND_LOST_WARNING in caplog.messages


@pytest.mark.parametrize("reading", [True, False], ids=["reading", "reading-paused"])
def test_peer_reset_while_the_server_reads(loop, reading):
    """A client that resets the connection in the middle of a 16 MiB upload (the server's
    transport reading, or with reading paused and resumed after the reset): the server got a
    prefix of the data, no EOF, and connection_lost with ConnectionResetError."""
    payload = os.urandom(16 * MiB)
    readers = []

    def reader():
        readers.append(net.Recorder(loop))
        return readers[-1]

    async def main():
        async with healthy_connection(loop):
            server = await loop.create_server(reader, "127.0.0.1", 0)
            try:
                client = await connect_plain(loop, server.sockets[0].getsockname())
                with client:
                    upload = asyncio.ensure_future(loop.sock_sendall(client, payload))
                    await net.poll_rounds(loop)
                    (protocol,) = readers
                    await protocol.wait_data(MiB)
                    if not reading:
                        protocol.transport.pause_reading()
                    upload.cancel()
                    await asyncio.gather(upload, return_exceptions=True)
                    reset_on_close(client)
                if not reading:
                    await net.poll_rounds(loop)
                    protocol.transport.resume_reading()
                exc = await asyncio.wait_for(protocol.lost, 5)
                assert type(exc) is ConnectionResetError
                assert "eof" not in protocol.events
                assert protocol.data == payload[: len(protocol.data)]
            finally:
                await net.close_server(server)

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Full kernel buffers
# --------------------------------------------------------------------------------------------


def test_transport_writes_to_a_peer_that_does_not_read(loop, kind, sock_dir):
    """A transport writing to a peer that does not read (small receive buffer): its buffer
    grows, pause_writing is called once; once the peer reads, resume_writing is called once
    and every byte arrives, in order."""

    async def main():
        async with healthy_connection(loop):
            async with net.raw_peer(loop, kind, sock_dir, rcvbuf=16 * KiB) as conn:
                transport, protocol = conn.transport, conn.protocol
                sent = await net.fill_write_buffer(transport)
                assert protocol.pause_calls == 1
                size = transport.get_write_buffer_size()
                more = os.urandom(256 * KiB)
                transport.write(more)
                sent += more
                assert transport.get_write_buffer_size() == size + len(more)
                await net.poll_rounds(loop)
                assert protocol.resume_calls == 0
                conn.peer.setblocking(False)
                assert await net.recv_exactly(loop, conn.peer, len(sent)) == sent
                await asyncio.wait_for(protocol.resumed, 5)
                assert (protocol.pause_calls, protocol.resume_calls) == (1, 1)
                assert transport.get_write_buffer_size() == 0
                assert not protocol.lost.done()

    loop.run_until_complete(main())


def test_sock_sendall_to_a_peer_that_does_not_read(loop):
    """sock_sendall of 4 MiB to a peer that does not read waits (small send and receive
    buffers); once the peer reads, it completes and every byte arrives, in order."""
    payload = os.urandom(4 * MiB)

    async def main():
        async with healthy_connection(loop):
            with net.make_listener("tcp", None, rcvbuf=16 * KiB) as listener:
                sender = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                with sender:
                    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * KiB)
                    sender.setblocking(False)
                    await loop.sock_connect(sender, listener.getsockname())
                    peer, _ = await loop.sock_accept(listener)
                    with peer:
                        sending = asyncio.ensure_future(loop.sock_sendall(sender, payload))
                        await net.poll_rounds(loop, 4)
                        assert not sending.done()
                        assert await net.recv_exactly(loop, peer, len(payload)) == payload
                        assert await asyncio.wait_for(sending, 5) is None

    loop.run_until_complete(main())


class DatagramRecorder(asyncio.DatagramProtocol):
    """Records a datagram transport's flow control and errors."""

    def __init__(self, loop):
        self.transport = None
        self.errors = []
        self.events = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def error_received(self, exc):
        self.errors.append(exc)

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_datagram_sendto_with_a_full_socket_buffer(loop, loop_kind, sock_dir):
    """sendto on a datagram socket whose peer's queue is full: the datagrams are buffered
    (get_write_buffer_size grows, pause_writing past the high-water mark), no error is raised
    or reported; once the peer reads, every datagram arrives in order and the buffer empties.

    Over loopback UDP the kernel drops datagrams instead of blocking the sender, so the full
    buffer is a Unix datagram socket connected to a bound one (the kernel queues a few
    datagrams for the peer, then refuses with EAGAIN)."""
    datagram_size = KiB

    async def main():
        async with healthy_connection(loop):
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            with peer:
                peer.bind(os.path.join(sock_dir, "peer.sock"))
                peer.setblocking(False)
                ours = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    ours.connect(peer.getsockname())
                    transport, protocol = await loop.create_datagram_endpoint(
                        lambda: DatagramRecorder(loop), sock=ours
                    )
                except BaseException:
                    ours.close()
                    raise
                try:
                    sent = []
                    while transport.get_write_buffer_size() == 0:
                        assert len(sent) < 10_000, "the socket never refused a datagram"
                        sent.append(len(sent).to_bytes(4, "big") * (datagram_size // 4))
                        transport.sendto(sent[-1])
                    queued = len(sent) - 1  # the datagrams the kernel took before refusing one
                    for _ in range(128):  # past asyncio's 64 KiB high-water mark
                        sent.append(len(sent).to_bytes(4, "big") * (datagram_size // 4))
                        transport.sendto(sent[-1])
                    buffered = len(sent) - queued
                    buffered_size = buffered * (datagram_size + net.DATAGRAM_HEADER_SIZE)
                    assert transport.get_write_buffer_size() == buffered_size
                    assert protocol.events == ["pause"]
                    received = []
                    while len(received) < len(sent):
                        received.append(await loop.sock_recv(peer, 2 * datagram_size))
                    assert received == sent
                    await net.poll_rounds(loop)
                    net.assert_datagram_buffer_empty(transport, loop_kind)
                    assert protocol.events == ["pause", "resume"]
                    assert protocol.errors == []
                    assert not protocol.lost.done()
                finally:
                    transport.close()
                    await asyncio.wait_for(protocol.lost, 5)

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# TLS handshakes that fail
# --------------------------------------------------------------------------------------------

HANDSHAKE_TIMEOUT = 0.3
TIMEOUT_MESSAGE = (
    f"SSL handshake is taking longer than {HANDSHAKE_TIMEOUT} seconds: aborting the connection"
)
NOT_TLS = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"  # what a confused plain-HTTP client sends
HELLO = client_hello()

# What a faulty client does to a TLS server: (bytes it sends, then "close", "reset" or "wait"
# for the server to close the connection).
CLIENT_FAULTS = {
    "close-at-once": (b"", "close"),
    "close-mid-hello": (HELLO[: len(HELLO) // 2], "close"),
    "reset-mid-hello": (HELLO[: len(HELLO) // 2], "reset"),
    "not-tls": (NOT_TLS, "wait"),
    "silent": (b"", "wait"),
}


def expected_server_error(fault, context):
    """What asyncio's server reports of the failed handshake: (exception type, its text or
    SSL reason)."""
    if fault == "not-tls":
        return ssl.SSLError, reference_tls_error(context, True, NOT_TLS)
    if fault == "silent":
        return ConnectionAbortedError, TIMEOUT_MESSAGE
    return ConnectionResetError, None


async def tls_echo_round_trip(loop, address, client_context):
    """Connect a TLS client to the echo server at ``address`` and check a round trip."""
    async with net.connected(
        loop.create_connection(
            lambda: net.Recorder(loop),
            *address,
            ssl=client_context,
            server_hostname="localhost",
        )
    ) as (transport, protocol):
        transport.write(b"still serving")
        assert await asyncio.wait_for(protocol.wait_data(13), 5) == b"still serving"


@pytest.mark.parametrize("fault", sorted(CLIENT_FAULTS))
def test_tls_server_with_a_faulty_client(loop, fault, server_context, client_context):
    """A TLS server whose client closes or resets during the handshake, sends something that
    is not TLS, or stays silent (ssl_handshake_timeout 0.3 s): the application protocol is
    never made, the loop (in debug mode, where asyncio reports these) reports the error
    once as asyncio does, and the server goes on serving good clients."""
    loop.set_debug(True)
    errors = net.record_errors(loop)
    echoes = []

    def echo():
        echoes.append(net.Echo(loop))
        return echoes[-1]

    sent, then = CLIENT_FAULTS[fault]
    timeout = HANDSHAKE_TIMEOUT if fault == "silent" else None

    async def main():
        async with healthy_connection(loop):
            server = await loop.create_server(
                echo, "127.0.0.1", 0, ssl=server_context, ssl_handshake_timeout=timeout
            )
            try:
                address = server.sockets[0].getsockname()
                client = await connect_plain(loop, address)
                with client:
                    await loop.sock_sendall(client, sent)
                    if then == "reset":
                        reset_on_close(client)
                    elif then == "wait":
                        await asyncio.wait_for(net.recv_to_eof(loop, client), 5)
                async with asyncio.timeout(5):
                    while not errors:
                        await asyncio.sleep(0.01)
                await tls_echo_round_trip(loop, address, client_context)
            finally:
                await net.close_server(server)

    loop.run_until_complete(main())
    assert [echo.made.done() for echo in echoes] == [False, True]  # made: the good client's only
    (context,) = errors
    assert context["message"] == "Error on transport creation for incoming connection"
    exc_type, detail = expected_server_error(fault, server_context)
    exc = context["exception"]
    assert type(exc) is exc_type
    if exc_type is ssl.SSLError:
        assert exc.reason == detail
    elif detail is not None:
        assert str(exc) == detail


# What a faulty server does to a TLS client, after reading its ClientHello.
SERVER_FAULTS = ["not-tls", "close", "reset", "silent"]
NOT_TLS_REPLY = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("fault", SERVER_FAULTS)
def test_tls_client_with_a_faulty_server(loop, fault, client_context):
    """create_connection(ssl=...) to a server that answers the ClientHello with something
    that is not TLS, closes, resets, or stays silent (ssl_handshake_timeout 0.3 s): it raises
    what asyncio raises (the ssl module's SSLError, ConnectionResetError, or
    ConnectionAbortedError), and nothing is reported to the exception handler."""

    async def serve_badly(listener):
        peer, _ = await loop.sock_accept(listener)
        with peer:
            assert await loop.sock_recv(peer, 64 * KiB)  # the ClientHello
            if fault == "not-tls":
                await loop.sock_sendall(peer, NOT_TLS_REPLY)
            elif fault == "reset":
                reset_on_close(peer)
            if fault in ("not-tls", "silent"):
                await net.recv_to_eof(loop, peer)  # until the client gives up

    async def main():
        async with healthy_connection(loop):
            with net.make_listener("tcp", None) as listener:
                server = asyncio.ensure_future(serve_badly(listener))
                try:
                    with pytest.raises(OSError) as info:
                        await loop.create_connection(
                            asyncio.Protocol,
                            *listener.getsockname(),
                            ssl=client_context,
                            server_hostname="localhost",
                            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                        )
                    await asyncio.wait_for(server, 5)
                finally:
                    server.cancel()
                    await asyncio.gather(server, return_exceptions=True)
        return info.value

    exc = loop.run_until_complete(main())
    if fault == "not-tls":
        assert type(exc) is ssl.SSLError
        assert exc.reason == reference_tls_error(client_context, False, NOT_TLS_REPLY)
    elif fault == "silent":
        assert type(exc) is ConnectionAbortedError
        assert str(exc) == TIMEOUT_MESSAGE
    else:
        assert type(exc) is ConnectionResetError


# --------------------------------------------------------------------------------------------
# accept() out of file descriptors
# --------------------------------------------------------------------------------------------

HELPERS = pathlib.Path(fault_helpers.__file__)


@pytest.mark.timeout(60)
def test_accept_out_of_file_descriptors(leak_check, loop_kind):
    """A server whose accept() fails with EMFILE (in a child process with a lowered
    RLIMIT_NOFILE; see ``fault_helpers.emfile_scenario``): the loop reports it to the exception
    handler as asyncio does ('socket.accept() out of system resource', the OSError, the
    listening socket), stops accepting for a while instead of spinning, and once descriptors
    are freed it accepts and serves every waiting client; a healthy connection goes on."""
    env = dict(
        child_env(), PYTHONPATH=str(HELPERS.parent.parent)
    )  # tests/, for the helpers package
    result = subprocess.run(
        [PYTHON, str(HELPERS), "emfile", loop_kind],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["accepted before EMFILE"] == fault_helpers.EMFILE_FREE_FDS
    # asyncio reports once per accept() it tries in that round (oxloop once): then none.
    assert outcome["reports at first"] >= 1
    assert outcome["reports after a pause"] == outcome["reports at first"]
    for report in outcome["reports"]:
        assert report == {
            "keys": ["exception", "message", "socket"],
            "message": "socket.accept() out of system resource",
            "exception": "OSError",
            "errno": errno.EMFILE,
            "socket is the listener": True,
        }
    assert outcome["replies"] == ["ping"] * fault_helpers.EMFILE_CLIENTS
    assert outcome["accepted in all"] == fault_helpers.EMFILE_CLIENTS


# --------------------------------------------------------------------------------------------
# Signals interrupting the loop's system calls (EINTR)
# --------------------------------------------------------------------------------------------

SIGNALS_WHILE_IDLE = 20  # signal handler runs the loop must see while it has nothing else to do


def send_signals(thread_id, stop, sent):
    """Send SIGUSR1 to the thread ``thread_id`` (the loop's) every half millisecond until
    ``stop`` is set; count them in ``sent[0]``."""
    while not stop.is_set():
        signal.pthread_kill(thread_id, signal.SIGUSR1)
        sent[0] += 1
        stop.wait(0.0005)


@pytest.mark.parametrize("install", ["signal.signal", "add_signal_handler"])
def test_signals_interrupting_io_and_sleeps(loop, install):
    """SIGUSR1 delivered to the loop's thread every half millisecond (a Python handler set
    with signal.signal, or loop.add_signal_handler), while the loop sleeps in its poll and
    then while it moves megabytes through a transport and the sock_* methods and runs timers:
    the handler keeps running, all data arrives intact, every timer fires, nothing fails."""
    handled = 0
    idle_done = loop.create_future()

    def on_signal(*args):
        nonlocal handled
        handled += 1
        if handled == SIGNALS_WHILE_IDLE:  # wakes the loop from a signal.signal handler too
            loop.call_soon_threadsafe(lambda: idle_done.done() or idle_done.set_result(None))

    stop = threading.Event()
    sent = [0]
    sender = threading.Thread(target=send_signals, args=(threading.get_ident(), stop, sent))

    async def transfer():
        """4 MiB each way through a socket pair with sock_sendall and sock_recv."""
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            one, other = os.urandom(4 * MiB), os.urandom(4 * MiB)
            results = await asyncio.gather(
                loop.sock_sendall(a, one),
                loop.sock_sendall(b, other),
                net.recv_exactly(loop, b, len(one)),
                net.recv_exactly(loop, a, len(other)),
            )
            assert results == [None, None, one, other]

    async def timers():
        """Sleeps of a few milliseconds, then a call_later callback: each one fires."""
        for delay in (0.001, 0.005, 0.01, 0.02, 0.05):
            await asyncio.sleep(delay)
        fired = loop.create_future()
        loop.call_later(0.02, fired.set_result, "fired")
        return await fired

    async def main():
        await asyncio.wait_for(idle_done, 10)  # nothing else to do: the loop sleeps in its poll
        handled_when_idle = handled
        async with healthy_connection(loop, min_rounds=64):
            _, fired = await asyncio.gather(transfer(), timers())
        assert fired == "fired"
        assert handled > handled_when_idle  # handled during the transfers too

    if install == "signal.signal":
        previous = signal.signal(signal.SIGUSR1, on_signal)
    else:
        loop.add_signal_handler(signal.SIGUSR1, on_signal)
    try:
        sender.start()
        try:
            loop.run_until_complete(main())
        finally:
            stop.set()
            sender.join()
    finally:
        if install == "signal.signal":
            signal.signal(signal.SIGUSR1, previous)
        else:
            loop.remove_signal_handler(signal.SIGUSR1)
    assert 0 < handled <= sent[0]
