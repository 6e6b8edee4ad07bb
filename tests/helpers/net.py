"""Helpers shared by the network behaviour tests (stream transports, servers, streams,
sendfile, datagrams, pipes, and the reliability tests).

The fixtures ``kind`` (the stream socket a test runs over: "tcp" and "unix") and ``sock_dir``
(a short directory for Unix socket paths) are in conftest.py; ``KINDS`` is the list of kinds.

``Recorder``, ``Echo``  protocols that record what their transport does (``Echo`` also sends
                        every byte back).
``raw_peer``            a transport (create_connection/create_unix_connection) connected to a
                        plain socket whose reads, EOFs and resets the test controls;
                        ``peer_of`` does the same for a connection the test makes itself.
``connected``           a (transport, protocol) pair closed at exit.
``recv_exactly``, ``recv_to_eof``, ``wait_readable``, ``poll_rounds``, ``fill_write_buffer``,
``close_server``, ``record_errors``, ``run_raises``, ``address_in_use_message``: small steps of
many tests.
``DATAGRAM_HEADER_SIZE``, ``assert_datagram_buffer_empty``: datagram write-buffer accounting
                        of the running Python's asyncio.
"""

import asyncio
import contextlib
import errno
import os
import socket
import sys
import uuid

import pytest

KINDS = ["tcp", "unix"]  # the stream sockets the transport tests run over
# asyncio's datagram write-buffer size counts 8 header bytes per buffered datagram from 3.13.
DATAGRAM_HEADER_SIZE = 8 if sys.version_info >= (3, 13) else 0
# asyncio 3.13.0 to 3.13.5 counts the header when it buffers a datagram but not when it sends
# it (gh-135444, fixed in 3.13.6): its write-buffer size stays above 0 once the buffer is empty.
DATAGRAM_BUFFER_KEEPS_HEADERS = (3, 13) <= sys.version_info < (3, 13, 6)
MiB = 1024 * 1024
CLEANUP_TIMEOUT = 5


# --------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------


class Recorder(asyncio.Protocol):
    """A protocol that records every call the transport makes."""

    def __init__(self, loop, eof_result=None):
        self.loop = loop
        self.eof_result = eof_result
        self.transport = None
        self.events = []
        self.data = bytearray()
        self.data_types = set()
        self.lost_calls = []
        self.pause_calls = 0
        self.resume_calls = 0
        self.size_at_pause = None
        self.size_at_resume = None
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.resumed = loop.create_future()
        self._waiters = []

    def connection_made(self, transport):
        self.events.append("made")
        self.is_transport = isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        self.events.append("data")
        self.data_types.add(type(data))
        self.data += data
        self._wake()

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        return self.eof_result

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
        self.resume_calls += 1
        self.size_at_resume = self.transport.get_write_buffer_size()
        if not self.resumed.done():
            self.resumed.set_result(None)

    def _wake(self):
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_data(self, size):
        """Wait until ``size`` bytes were received; fails if the connection is lost first."""
        while len(self.data) < size:
            if self.lost.done():
                raise AssertionError(f"connection lost after {len(self.data)} of {size} bytes")
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            await waiter
        return bytes(self.data)


class Echo(Recorder):
    """A Recorder that sends back every byte it receives."""

    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


# --------------------------------------------------------------------------------------------
# Plain sockets
# --------------------------------------------------------------------------------------------


async def recv_exactly(loop, sock, size):
    """Read ``size`` bytes from ``sock``; fails if the stream ends first."""
    out = bytearray()
    while len(out) < size:
        chunk = await loop.sock_recv(sock, min(size - len(out), 256 * 1024))
        if not chunk:
            raise AssertionError(f"end of stream after {len(out)} of {size} bytes")
        out += chunk
    return bytes(out)


async def recv_to_eof(loop, sock):
    """Read from ``sock`` until the end of the stream."""
    out = bytearray()
    while True:
        chunk = await loop.sock_recv(sock, 256 * 1024)
        if not chunk:
            return bytes(out)
        out += chunk


async def wait_readable(loop, sock):
    """Wait until ``sock`` is readable (through the loop's poller)."""
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def poll_rounds(loop, n=2):
    """Let the loop poll for I/O ``n`` times: I/O that was ready before has been handled after."""
    a, b = socket.socketpair()
    try:
        for _ in range(n):
            a.send(b"x")
            await wait_readable(loop, b)
            b.recv(1)
    finally:
        a.close()
        b.close()


def make_listener(kind, sock_dir, rcvbuf=None):
    """A listening, non-blocking TCP (127.0.0.1) or Unix socket (a new path in ``sock_dir``)."""
    if kind == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("127.0.0.1", 0)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = os.path.join(sock_dir, f"{uuid.uuid4().hex[:8]}.sock")
    if rcvbuf is not None:
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf
        )  # inherited by accepted sockets
    sock.bind(address)
    sock.listen(16)
    sock.setblocking(False)
    return sock


# --------------------------------------------------------------------------------------------
# Transports
# --------------------------------------------------------------------------------------------


async def connect(loop, kind, factory, address, **kwargs):
    """create_connection (kind "tcp") or create_unix_connection (kind "unix") to ``address``."""
    if kind == "tcp":
        return await loop.create_connection(factory, *address, **kwargs)
    return await loop.create_unix_connection(factory, address, **kwargs)


@contextlib.asynccontextmanager
async def connected(connecting):
    """Await ``connecting`` (create_connection or the like) and yield its (transport,
    protocol); at exit, close the transport and wait for connection_lost."""
    transport, protocol = await connecting
    try:
        yield transport, protocol
    finally:
        transport.close()
        await protocol.lost


class Conn:
    """A transport under test, its protocol and the plain socket at the other end."""

    def __init__(self, transport, protocol):
        self.transport = transport
        self.protocol = protocol  # awaited (``.lost``) at clean-up: keep it current
        self.peer = None
        self.client_address = None  # the transport's address, as accept() returned it


async def settle(*futures):
    """Wait (a bounded time) for the futures that are not None."""
    futures = [f for f in futures if f is not None]
    if futures:
        await asyncio.wait(futures, timeout=CLEANUP_TIMEOUT)


@contextlib.asynccontextmanager
async def accepting(loop, listener):
    """A task accepting one connection on ``listener``; the accepted socket (if any) is
    closed at exit, and the task cancelled if it is still waiting."""
    task = asyncio.ensure_future(loop.sock_accept(listener))
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        result = (await asyncio.gather(task, return_exceptions=True))[0]
        if isinstance(result, tuple):
            result[0].close()


@contextlib.asynccontextmanager
async def peer_of(loop, listener, connecting):
    """Run ``connecting`` (a create_connection call or the like, to ``listener``) and accept the
    connection on ``listener``: yields a ``Conn``. At exit, abort the transport, wait for
    connection_lost and close the accepted socket."""
    async with accepting(loop, listener) as accept:
        transport, protocol = await connecting
        conn = Conn(transport, protocol)
        try:
            conn.peer, conn.client_address = await accept
            yield conn
        finally:
            lost = conn.protocol.lost
            # Not after connection_lost: asyncio's abort() then fails (AttributeError)
            # when a close() had flushed the buffer first.
            if not lost.done():
                transport.abort()
            await settle(lost)


@contextlib.asynccontextmanager
async def raw_peer(loop, kind, sock_dir, factory=None, rcvbuf=None):
    """Connect a transport (create_connection or create_unix_connection, with a ``Recorder``
    unless ``factory`` is given) to a plain socket: yields a ``Conn``. ``rcvbuf`` sets the
    peer's receive buffer. Everything is closed at exit (see ``peer_of``)."""
    with make_listener(kind, sock_dir, rcvbuf) as listener:
        connecting = connect(
            loop, kind, factory or (lambda: Recorder(loop)), listener.getsockname()
        )
        async with peer_of(loop, listener, connecting) as conn:
            yield conn


async def fill_write_buffer(transport, chunk=MiB, limit=256 * MiB):
    """Write until the transport buffers data (the peer does not read); return what was written."""
    written = bytearray()
    while transport.get_write_buffer_size() == 0:
        assert len(written) < limit, "the transport never buffered anything"
        data = os.urandom(16) * (chunk // 16)
        transport.write(data)
        written += data
    return bytes(written)


def record_errors(loop):
    """Make ``loop``'s exception handler record its calls; returns the list of their contexts."""
    errors = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    return errors


def address_in_use_message(address):
    """asyncio's message for a bind of ``address`` refused with EADDRINUSE (from 3.13 it quotes
    the whole OSError text, lower-cased)."""
    reason = os.strerror(errno.EADDRINUSE).lower()
    if sys.version_info >= (3, 13):
        reason = f"[errno {errno.EADDRINUSE}] {reason}"
    return (
        f"[Errno {errno.EADDRINUSE}] error while attempting to bind on address {address!r}: "
        f"{reason}"
    )


def run_raises(loop, coro, exc_type, message):
    """Run ``coro`` on ``loop``: it must raise ``exc_type`` whose text is exactly ``message``."""
    with pytest.raises(exc_type) as info:
        loop.run_until_complete(coro)
    assert str(info.value) == message
    return info.value


async def close_server(server):
    server.close()
    await server.wait_closed()


def assert_datagram_buffer_empty(transport, loop_kind):
    """The datagram ``transport`` has nothing buffered: its write-buffer size is 0 (on stock
    asyncio with gh-135444, only the headers it never subtracted are left)."""
    if loop_kind == "asyncio" and DATAGRAM_BUFFER_KEEPS_HEADERS:
        assert transport.get_write_buffer_size() % DATAGRAM_HEADER_SIZE == 0
    else:
        assert transport.get_write_buffer_size() == 0
