"""Stream transports at the protocol level, over TCP and Unix sockets: create_connection,
create_unix_connection and connect_accepted_socket with their transports.

Covered: round trips through create_server; data_received (always bytes); BufferedProtocol
(get_buffer/buffer_updated, small buffers, an empty buffer is a fatal error); eof_received and
half-close (write_eof, can_write_eof, eof_received's return value); write and writelines with
bytes-like objects (copied at write time), large and many ordered writes; write flow control
(buffer limits and their errors, get_write_buffer_size, pause_writing/resume_writing); read
flow control (pause_reading/resume_reading/is_reading); close (flushes), abort (does not),
is_closing, writes after close/write_eof, connection_lost exactly once (overlapping close,
abort and peer reset), a peer reset; get_extra_info; set_protocol/get_protocol; TCP_NODELAY;
create_connection's resolution and errors (refused, several addresses, happy eyeballs,
local_addr, sock=, argument errors); connect_accepted_socket; Unix connections by path,
socket and abstract name.

Most tests drive the transport under test against a plain socket peer (accepted with
``sock_accept``), so that the peer's reads, EOFs and resets are under the test's control.

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
A test taking ``kind`` runs over TCP and over Unix sockets; the helpers shared with the other
network tests (``raw_peer``, ``Recorder``...) are in helpers/net.py.
One documented difference: oxloop sets TCP_NODELAY on every TCP stream transport, asyncio only
on sockets whose ``proto`` is IPPROTO_TCP (see test_tcp_nodelay_on_an_adopted_proto_0_socket).
"""

import asyncio
import contextlib
import errno
import gc
import hashlib
import os
import pathlib
import socket
import struct
import sys
import uuid
from unittest import mock

import pytest

from helpers import net
from helpers.net import (
    Echo,
    MiB,
    Recorder,
    connect,
    connected,
    fill_write_buffer,
    make_listener,
    peer_of,
    poll_rounds,
    raw_peer,
    record_errors,
    recv_exactly,
    recv_to_eof,
    run_raises,
    settle,
    wait_readable,
)

# Bugs of stock asyncio's selector transport from 3.12, whose zero-copy writes (gh-91166) gave
# it a writelines() of its own; present in the versions tested here (3.12.1, 3.13.0). The
# asyncio cases of the tests they break leave out the buggy call; the oxloop cases run whole.
# - write() and writelines() buffer the caller's bytearray or memoryview itself, so changing it
#   after the call changes what is sent.
STOCK_KEEPS_CALLERS_BUFFERS = (3, 12) <= sys.version_info < (3, 14)
# - writelines() after the connection is lost (close() included) does not drop the data as
#   write() does, and fails with TypeError or AttributeError (gh-136234).
STOCK_WRITELINES_FAILS_AFTER_LOSS = (3, 12) <= sys.version_info < (3, 14)
# Not a bug: from 3.12, writelines() after write_eof() names itself in its error.
WRITELINES_NAMES_ITSELF = sys.version_info >= (3, 12)

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class BufferedRecorder(asyncio.BufferedProtocol):
    """A BufferedProtocol receiving into a buffer of ``size`` bytes."""

    def __init__(self, loop, size):
        self.loop = loop
        self.buffer = bytearray(size)
        self.data = bytearray()
        self.events = []
        self.get_buffer_calls = 0
        self.sizehints = set()
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self._waiter = None

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def get_buffer(self, sizehint):
        self.get_buffer_calls += 1
        self.sizehints.add(type(sizehint))
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buffer)
        self.events.append("buffer_updated")
        self.data += self.buffer[:nbytes]
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)

    async def wait_data(self, size):
        while len(self.data) < size:
            assert not self.lost.done(), "connection lost"
            self._waiter = self.loop.create_future()
            await self._waiter


async def recv_end(loop, sock):
    """Read until the end of the stream; "reset" if it ends with a reset (a socket closed with
    unread data resets the connection)."""
    try:
        return await recv_to_eof(loop, sock)
    except ConnectionResetError:
        return "reset"


def close_with_reset(sock, kind):
    """Close ``sock``, which has unread data, so that the other end sees a reset (for TCP,
    SO_LINGER with a zero timeout makes sure the close is abortive)."""
    if kind == "tcp":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@contextlib.asynccontextmanager
async def served(loop, kind, sock_dir, server_factory, client_factory=None):
    """A server (create_server or create_unix_server) and one client connection to it.

    Yields (client transport, client protocol, server protocol); everything is closed at exit.
    """
    accepted = loop.create_future()

    def factory():
        protocol = server_factory()
        if not accepted.done():
            accepted.set_result(protocol)
        return protocol

    if kind == "tcp":
        server = await loop.create_server(factory, "127.0.0.1", 0)
    else:
        server = await loop.create_unix_server(factory, os.path.join(sock_dir, "server.sock"))
    transport = protocol = server_protocol = None
    try:
        address = server.sockets[0].getsockname()
        transport, protocol = await connect(
            loop, kind, client_factory or (lambda: Recorder(loop)), address
        )
        server_protocol = await accepted
        await server_protocol.made
        yield transport, protocol, server_protocol
    finally:
        if transport is not None and not protocol.lost.done():
            transport.abort()
        if (
            server_protocol is not None
            and server_protocol.made.done()
            and not server_protocol.lost.done()
        ):
            server_protocol.made.result().abort()
        await settle(getattr(protocol, "lost", None), getattr(server_protocol, "lost", None))
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------------------------
# Connections and data
# --------------------------------------------------------------------------------------------


def test_round_trip_through_a_server(loop, kind, sock_dir):
    async def main():
        async with served(loop, kind, sock_dir, lambda: Echo(loop)) as (transport, client, server):
            transport.write(b"hello, ")
            transport.write(b"world")
            assert await client.wait_data(12) == b"hello, world"
            assert bytes(server.data) == b"hello, world"
            assert client.data_types == server.data_types == {bytes}
            assert client.events[0] == server.events[0] == "made"

    loop.run_until_complete(main())


def test_connection_made_has_run_when_create_connection_returns(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            protocol = conn.protocol
            assert protocol.made.done()
            assert protocol.made.result() is conn.transport
            assert (
                protocol.is_transport
            )  # isinstance(transport, asyncio.Transport) in connection_made
            assert protocol.events == ["made"]
            assert conn.transport.get_protocol() is protocol
            assert not conn.transport.is_closing()
            assert conn.transport.is_reading()

    loop.run_until_complete(main())


def test_server_side_transport_is_a_transport_instance(loop, kind, sock_dir):
    async def main():
        async with served(loop, kind, sock_dir, lambda: Recorder(loop)) as (_, client, server):
            assert server.is_transport
            assert client.is_transport
            assert server.transport.get_protocol() is server

    loop.run_until_complete(main())


def test_data_received_gets_bytes_in_order(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            chunks = [bytes([i]) * (i * 100 + 1) for i in range(50)]
            for chunk in chunks:
                conn.peer.send(chunk)
            expected = b"".join(chunks)
            assert await conn.protocol.wait_data(len(expected)) == expected
            assert conn.protocol.data_types == {bytes}

    loop.run_until_complete(main())


@pytest.mark.parametrize("size", [7, 64 * 1024])
def test_buffered_protocol_receives_into_its_buffer(loop, kind, sock_dir, size):
    data = os.urandom(20 * size if size < 1024 else 200 * 1024)

    async def main():
        async with raw_peer(loop, kind, sock_dir, lambda: BufferedRecorder(loop, size)) as conn:
            protocol = conn.protocol
            send = asyncio.ensure_future(loop.sock_sendall(conn.peer, data))
            await protocol.wait_data(len(data))
            await send
            assert bytes(protocol.data) == data
            assert protocol.get_buffer_calls >= len(data) // size  # each call reads at most `size`
            assert protocol.sizehints == {int}
            conn.peer.shutdown(socket.SHUT_WR)
            await protocol.eof
            assert await protocol.lost is None
            assert protocol.events[0] == "made"
            assert protocol.events[-2:] == ["eof", "lost"]
            assert set(protocol.events[1:-2]) == {"buffer_updated"}

    loop.run_until_complete(main())


def test_get_buffer_returning_an_empty_buffer_is_a_fatal_error(loop, kind, sock_dir):
    errors = record_errors(loop)

    async def main():
        async with raw_peer(loop, kind, sock_dir, lambda: BufferedRecorder(loop, 0)) as conn:
            conn.peer.send(b"data")
            exc = await conn.protocol.lost
            assert isinstance(exc, RuntimeError)
            assert str(exc) == "get_buffer() returned an empty buffer"
            assert conn.transport.is_closing()
            assert await recv_end(loop, conn.peer) in (b"", "reset")

    loop.run_until_complete(main())
    assert len(errors) == 1
    assert errors[0]["message"] == "Fatal error: protocol.get_buffer() call failed."
    assert isinstance(errors[0]["exception"], RuntimeError)


def test_data_received_raising_is_a_fatal_error(loop, kind, sock_dir):
    errors = record_errors(loop)

    class Failing(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise ZeroDivisionError("boom")

    async def main():
        async with raw_peer(loop, kind, sock_dir, lambda: Failing(loop)) as conn:
            conn.peer.send(b"data")
            exc = await conn.protocol.lost
            assert isinstance(exc, ZeroDivisionError)
            assert conn.protocol.lost_calls == [exc]
            assert await recv_to_eof(loop, conn.peer) == b""

    loop.run_until_complete(main())
    assert [e["message"] for e in errors] == ["Fatal error: protocol.data_received() call failed."]
    assert isinstance(errors[0]["exception"], ZeroDivisionError)


# --------------------------------------------------------------------------------------------
# End of stream and half-close
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eof_result", [None, False])
def test_eof_received_returning_false_closes_the_transport(loop, kind, sock_dir, eof_result):
    async def main():
        factory = lambda: Recorder(loop, eof_result=eof_result)  # noqa: E731
        async with raw_peer(loop, kind, sock_dir, factory) as conn:
            conn.peer.sendall(b"last words")
            conn.peer.shutdown(socket.SHUT_WR)
            assert await conn.protocol.lost is None
            assert conn.protocol.events == ["made", "data", "eof", "lost"]
            assert bytes(conn.protocol.data) == b"last words"
            assert conn.transport.is_closing()
            assert await recv_to_eof(loop, conn.peer) == b""  # the transport closed its end

    loop.run_until_complete(main())


def test_eof_received_returning_true_keeps_the_transport_open_for_writing(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir, lambda: Recorder(loop, eof_result=True)) as conn:
            conn.peer.shutdown(socket.SHUT_WR)
            await conn.protocol.eof
            await poll_rounds(loop)
            assert not conn.protocol.lost.done()
            assert not conn.transport.is_closing()
            conn.transport.write(b"still open")
            assert await recv_exactly(loop, conn.peer, 10) == b"still open"
            conn.transport.close()
            assert await conn.protocol.lost is None
            assert await recv_to_eof(loop, conn.peer) == b""
            assert conn.protocol.events == ["made", "eof", "lost"]

    loop.run_until_complete(main())


def test_write_eof_half_closes(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            transport = conn.transport
            assert transport.can_write_eof() is True
            transport.write(b"request")
            transport.write_eof()
            transport.write_eof()  # a second call does nothing
            assert not transport.is_closing()
            assert await recv_to_eof(loop, conn.peer) == b"request"
            # The other direction still works.
            await loop.sock_sendall(conn.peer, b"response")
            assert await conn.protocol.wait_data(8) == b"response"
            conn.peer.shutdown(socket.SHUT_WR)
            assert await conn.protocol.lost is None
            assert conn.protocol.events[-2:] == ["eof", "lost"]

    loop.run_until_complete(main())


def test_write_eof_is_sent_after_the_buffered_data(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            data = await fill_write_buffer(conn.transport)
            conn.transport.write_eof()
            received = await recv_to_eof(loop, conn.peer)
            assert len(received) == len(data)
            assert received == data
            assert conn.transport.get_write_buffer_size() == 0

    loop.run_until_complete(main())


def test_write_after_write_eof_raises(loop, kind, sock_dir):
    writelines_error = r"^Cannot call %s\(\) after write_eof\(\)$" % (
        "writelines" if WRITELINES_NAMES_ITSELF else "write"
    )

    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            conn.transport.write_eof()
            with pytest.raises(RuntimeError, match=r"^Cannot call write\(\) after write_eof\(\)$"):
                conn.transport.write(b"too late")
            with pytest.raises(RuntimeError, match=writelines_error):
                conn.transport.writelines([b"too", b"late"])
            assert await recv_to_eof(loop, conn.peer) == b""

    loop.run_until_complete(main())


def test_half_close_round_trip_through_a_server(loop, kind, sock_dir):
    class CountThenClose(Recorder):
        """Counts the bytes until EOF, answers with the count, then closes."""

        def eof_received(self):
            super().eof_received()
            self.transport.write(str(len(self.data)).encode())
            self.transport.close()
            return True

    async def main():
        async with served(loop, kind, sock_dir, lambda: CountThenClose(loop)) as (
            transport,
            client,
            server,
        ):
            transport.writelines([b"x" * 1000, b"y" * 234])
            transport.write_eof()
            assert await client.lost is None
            assert bytes(client.data) == b"1234"
            assert client.events[-2:] == ["eof", "lost"]
            assert await server.lost is None

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", [bytes, bytearray, memoryview])
def test_write_accepts_bytes_like_objects(loop, kind, sock_dir, type_):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            conn.transport.write(type_(b"abc"))
            conn.transport.writelines([type_(b"def"), type_(b"gh")])
            conn.transport.writelines(iter([type_(b"ij")]))
            assert await recv_exactly(loop, conn.peer, 10) == b"abcdefghij"

    loop.run_until_complete(main())


def test_write_of_a_memoryview_slice(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            conn.transport.write(memoryview(b"0123456789")[2:5])
            conn.transport.write(memoryview(bytearray(b"abcdef"))[::1][3:])
            assert await recv_exactly(loop, conn.peer, 6) == b"234def"

    loop.run_until_complete(main())


def test_write_rejects_str_and_empty_writes_do_nothing(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            with pytest.raises(
                TypeError, match=r"^data argument must be a bytes-like object, not 'str'$"
            ):
                conn.transport.write("text")
            conn.transport.write(b"")
            conn.transport.writelines([])
            assert conn.transport.get_write_buffer_size() == 0
            conn.transport.write(b"end")
            assert await recv_exactly(loop, conn.peer, 3) == b"end"

    loop.run_until_complete(main())


def test_small_write_is_sent_at_once(loop, loop_kind, kind, sock_dir):
    # asyncio tries send() inside write(): with room in the socket buffer nothing is buffered.
    # oxloop sends what one iteration wrote together, at the end of the iteration (a
    # documented difference, docs/compatibility.md): until then the bytes count as buffered.
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            conn.transport.write(b"x" * 1000)
            buffered_until_iteration_end = 1000 if loop_kind == "oxloop" else 0
            assert conn.transport.get_write_buffer_size() == buffered_until_iteration_end
            await asyncio.sleep(0)
            assert conn.transport.get_write_buffer_size() == 0
            assert await recv_exactly(loop, conn.peer, 1000) == b"x" * 1000

    loop.run_until_complete(main())


def test_mutating_a_buffer_after_write_does_not_change_what_is_sent(
    loop, loop_kind, kind, sock_dir
):
    if loop_kind == "asyncio" and STOCK_KEEPS_CALLERS_BUFFERS:
        pytest.skip(
            "stock asyncio 3.12 and 3.13 send the caller's changed buffer "
            "(zero-copy writes, gh-91166)"
        )

    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            head = await fill_write_buffer(conn.transport)  # what follows is buffered
            first = bytearray(b"A" * 1000)
            second = bytearray(b"B" * 1000)
            third = bytearray(b"C" * 1000)
            conn.transport.write(first)
            conn.transport.write(memoryview(second))
            conn.transport.writelines([third])
            first[:] = b"a" * 1000
            second[:] = b"b" * 1000
            third[:] = b"c" * 1000
            first.extend(b"more")  # resizing is allowed: the transport kept no export
            conn.transport.close()
            received = await recv_to_eof(loop, conn.peer)
            assert len(received) == len(head) + 3000
            assert received[len(head) :] == b"A" * 1000 + b"B" * 1000 + b"C" * 1000

    loop.run_until_complete(main())


def test_large_write_arrives_complete_and_in_order(loop, kind, sock_dir):
    data = os.urandom(8 * MiB)

    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            conn.transport.write(data)
            received = await recv_exactly(loop, conn.peer, len(data))
            assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
            await poll_rounds(loop)
            assert conn.transport.get_write_buffer_size() == 0

    loop.run_until_complete(main())


def test_large_transfer_to_data_received(loop, kind, sock_dir):
    data = os.urandom(8 * MiB)

    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            send = asyncio.ensure_future(loop.sock_sendall(conn.peer, data))
            received = await conn.protocol.wait_data(len(data))
            await send
            assert len(received) == len(data)
            assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()

    loop.run_until_complete(main())


def test_large_echo_through_a_server_in_both_directions(loop, kind, sock_dir):
    data = os.urandom(4 * MiB)

    async def main():
        async with served(loop, kind, sock_dir, lambda: Echo(loop)) as (transport, client, server):
            for offset in range(0, len(data), 256 * 1024):
                transport.write(data[offset : offset + 256 * 1024])
            received = await client.wait_data(len(data))
            assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
            assert len(server.data) == len(data)

    loop.run_until_complete(main())


def test_writes_made_in_one_callback_arrive_in_order(loop, kind, sock_dir):
    pieces = []
    for i in range(3000):
        pieces.append(f"{i:05d},".encode())
        if i % 500 == 0:
            pieces.append(bytes([i % 251]) * (300 * 1024))  # some writes that fill the socket
    expected = b"".join(pieces)

    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            done = loop.create_future()

            def write_all():
                for i, piece in enumerate(pieces):
                    if i % 3 == 0:
                        conn.transport.write(piece)
                    elif i % 3 == 1:
                        conn.transport.write(bytearray(piece))
                    else:
                        conn.transport.writelines([memoryview(piece)])
                done.set_result(None)

            loop.call_soon(write_all)
            received = await recv_exactly(loop, conn.peer, len(expected))
            await done
            assert received == expected

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Write flow control
# --------------------------------------------------------------------------------------------


def test_default_write_buffer_limits(loop, kind, sock_dir):
    async def main():
        async with served(loop, kind, sock_dir, lambda: Recorder(loop)) as (transport, _, server):
            assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            assert server.transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            assert transport.get_write_buffer_size() == 0

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, (16384, 65536)),
        ({"high": 100}, (25, 100)),
        ({"low": 100}, (100, 400)),
        ({"high": 100, "low": 100}, (100, 100)),
        ({"high": 1000, "low": 10}, (10, 1000)),
        ({"high": 0}, (0, 0)),
        ({"high": 3}, (0, 3)),
        ({"high": 0, "low": 0}, (0, 0)),
    ],
)
def test_set_write_buffer_limits(loop, sock_dir, kwargs, expected):
    async def main():
        async with raw_peer(loop, "tcp", sock_dir) as conn:
            conn.transport.set_write_buffer_limits(high=1, low=1)
            conn.transport.set_write_buffer_limits(**kwargs)
            assert conn.transport.get_write_buffer_limits() == expected
            assert conn.protocol.pause_calls == 0  # nothing buffered

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"high": 10, "low": 20}, "high (10) must be >= low (20) must be >= 0"),
        ({"low": -1}, "high (-4) must be >= low (-1) must be >= 0"),
        ({"high": -1}, "high (-1) must be >= low (-1) must be >= 0"),
        ({"high": 5, "low": -1}, "high (5) must be >= low (-1) must be >= 0"),
    ],
)
def test_set_write_buffer_limits_errors(loop, sock_dir, kwargs, message):
    async def main():
        async with raw_peer(loop, "tcp", sock_dir) as conn:
            with pytest.raises(ValueError) as info:
                conn.transport.set_write_buffer_limits(**kwargs)
            assert str(info.value) == message
            assert conn.transport.get_write_buffer_limits() == (16384, 65536)  # unchanged

    loop.run_until_complete(main())


def test_pause_and_resume_writing_follow_the_peer(loop, kind, sock_dir):
    data = os.urandom(16) * (16 * MiB // 16)

    async def main():
        async with raw_peer(loop, kind, sock_dir, rcvbuf=64 * 1024) as conn:
            transport, protocol = conn.transport, conn.protocol
            transport.write(data)
            # Called inside write() as soon as the buffer is over the high-water mark.
            assert protocol.pause_calls == 1
            assert protocol.size_at_pause > 64 * 1024
            size = transport.get_write_buffer_size()
            assert 64 * 1024 < size <= len(data)
            transport.write(b"tail")
            assert transport.get_write_buffer_size() == size + 4
            assert protocol.pause_calls == 1  # not called again while paused
            assert protocol.resume_calls == 0
            received = await recv_exactly(loop, conn.peer, len(data) + 4)
            await protocol.resumed
            assert protocol.resume_calls == 1
            assert protocol.size_at_resume <= 16 * 1024
            assert received == data + b"tail"
            assert protocol.events == ["made", "pause", "resume"]

    loop.run_until_complete(main())


def test_set_write_buffer_limits_pauses_at_once_when_over_the_new_mark(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir, rcvbuf=64 * 1024) as conn:
            transport, protocol = conn.transport, conn.protocol
            transport.set_write_buffer_limits(high=1024 * MiB)
            data = await fill_write_buffer(transport)
            assert protocol.pause_calls == 0
            size = transport.get_write_buffer_size()
            assert size > 0
            transport.set_write_buffer_limits(high=size - 1, low=0)
            assert protocol.pause_calls == 1
            assert protocol.size_at_pause == size
            received = await recv_exactly(loop, conn.peer, len(data))
            assert received == data
            await protocol.resumed
            assert protocol.size_at_resume == 0
            assert transport.get_write_buffer_size() == 0

    loop.run_until_complete(main())


def test_pause_writing_at_a_zero_high_mark(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir, rcvbuf=64 * 1024) as conn:
            transport, protocol = conn.transport, conn.protocol
            transport.set_write_buffer_limits(high=0)
            transport.write(b"fits")  # sent at once: nothing buffered, no pause
            assert protocol.pause_calls == 0
            data = await fill_write_buffer(transport)
            assert protocol.pause_calls == 1
            await recv_exactly(loop, conn.peer, 4 + len(data))
            await protocol.resumed
            assert protocol.resume_calls == 1

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Read flow control
# --------------------------------------------------------------------------------------------


def test_pause_reading_stops_delivery_until_resume_reading(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            transport, protocol = conn.transport, conn.protocol
            assert transport.is_reading()
            transport.pause_reading()
            transport.pause_reading()  # idempotent
            assert not transport.is_reading()
            conn.peer.sendall(b"while paused")
            await poll_rounds(loop, 3)
            assert protocol.data == b""
            transport.resume_reading()
            transport.resume_reading()  # idempotent
            assert transport.is_reading()
            assert await protocol.wait_data(12) == b"while paused"
            # Pausing again also holds back an end of stream.
            transport.pause_reading()
            conn.peer.sendall(b"more")
            conn.peer.shutdown(socket.SHUT_WR)
            await poll_rounds(loop, 3)
            assert protocol.data == b"while paused"
            assert not protocol.eof.done()
            transport.resume_reading()
            assert await protocol.lost is None
            assert protocol.data == b"while pausedmore"
            assert protocol.events[-2:] == ["eof", "lost"]

    loop.run_until_complete(main())


class PausingRecorder(Recorder):
    """A Recorder that pauses reading from data_received once it has ``limit`` bytes."""

    def __init__(self, loop, transport, limit):
        super().__init__(loop)
        self.transport = transport
        self.limit = limit
        self.paused_at = None
        self.data_while_paused = 0

    def data_received(self, data):
        if self.paused_at is not None:
            self.data_while_paused += len(data)
        super().data_received(data)
        if self.limit is not None and len(self.data) >= self.limit:
            self.limit = None
            self.paused_at = len(self.data)
            self.transport.pause_reading()


def test_pause_reading_in_data_received_holds_back_the_rest_of_a_large_transfer(
    loop, kind, sock_dir
):
    # A large transfer is read in several reads per readiness event: pausing between two of
    # them must stop the next one.
    data = os.urandom(8 * MiB)

    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            protocol = PausingRecorder(loop, conn.transport, limit=MiB)
            conn.transport.set_protocol(protocol)
            conn.protocol = protocol
            send = asyncio.ensure_future(loop.sock_sendall(conn.peer, data))
            while protocol.paused_at is None:
                await asyncio.sleep(0.001)
            await poll_rounds(loop, 5)
            assert protocol.data_while_paused == 0
            assert len(protocol.data) == protocol.paused_at
            protocol.paused_at = None
            conn.transport.resume_reading()
            received = await protocol.wait_data(len(data))
            await send
            assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()

    loop.run_until_complete(main())


class SwitchingRecorder(Recorder):
    """A Recorder that hands the transport to ``successor`` once it has ``limit`` bytes."""

    def __init__(self, loop, transport, limit, successor):
        super().__init__(loop)
        self.transport = transport
        self.limit = limit
        self.successor = successor

    def data_received(self, data):
        assert self.limit is not None, "data_received after set_protocol"
        super().data_received(data)
        if len(self.data) >= self.limit:
            self.limit = None
            self.transport.set_protocol(self.successor)


def test_set_protocol_in_data_received_sends_the_rest_of_a_large_transfer_to_the_new_protocol(
    loop, kind, sock_dir
):
    data = os.urandom(8 * MiB)

    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            second = Recorder(loop)
            first = SwitchingRecorder(loop, conn.transport, MiB, second)
            conn.transport.set_protocol(first)
            conn.protocol = second
            send = asyncio.ensure_future(loop.sock_sendall(conn.peer, data))
            await send
            rest = await second.wait_data(len(data) - len(first.data))
            assert len(first.data) >= MiB
            assert bytes(first.data) + rest == data

    loop.run_until_complete(main())


def test_pause_and_resume_reading_are_no_ops_after_close(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            transport = conn.transport
            transport.pause_reading()
            transport.close()
            assert not transport.is_reading()
            transport.resume_reading()
            assert not transport.is_reading()
            transport.pause_reading()
            assert await conn.protocol.lost is None
            transport.resume_reading()
            transport.pause_reading()
            assert not transport.is_reading()
            assert conn.protocol.events == ["made", "lost"]

    loop.run_until_complete(main())


def test_writing_works_while_reading_is_paused(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            conn.transport.pause_reading()
            conn.transport.write(b"one way")
            assert await recv_exactly(loop, conn.peer, 7) == b"one way"

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# close, abort, connection_lost
# --------------------------------------------------------------------------------------------


def test_close_calls_connection_lost_later_and_once(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            transport, protocol = conn.transport, conn.protocol
            assert not transport.is_closing()
            transport.close()
            assert transport.is_closing()
            assert protocol.lost_calls == []  # never from inside close()
            transport.close()
            assert await protocol.lost is None
            transport.close()
            transport.abort()
            await poll_rounds(loop)
            assert protocol.lost_calls == [None]
            assert protocol.events == ["made", "lost"]
            assert transport.is_closing()
            assert await recv_to_eof(loop, conn.peer) == b""

    loop.run_until_complete(main())


def test_close_flushes_buffered_data_then_calls_connection_lost(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            transport, protocol = conn.transport, conn.protocol
            data = await fill_write_buffer(transport)
            transport.close()
            assert transport.is_closing()
            await poll_rounds(loop)
            assert not protocol.lost.done()  # the peer has not read: still flushing
            received = await recv_to_eof(loop, conn.peer)
            assert len(received) == len(data)
            assert received == data
            assert await protocol.lost is None
            await poll_rounds(loop)
            assert protocol.lost_calls == [None]

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    "close_first", [False, True], ids=["abort", "abort-while-close-is-flushing"]
)
def test_abort_discards_buffered_data(loop, kind, sock_dir, close_first):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            transport, protocol = conn.transport, conn.protocol
            data = await fill_write_buffer(transport)
            if close_first:
                transport.close()
            transport.abort()
            assert transport.is_closing()
            assert protocol.lost_calls == []  # never from inside abort()
            assert await protocol.lost is None
            received = await recv_to_eof(loop, conn.peer)
            assert len(received) < len(data)
            assert received == data[: len(received)]
            transport.abort()
            transport.close()
            await poll_rounds(loop)
            assert protocol.lost_calls == [None]

    loop.run_until_complete(main())


def test_writes_after_close_are_dropped(loop, loop_kind, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            transport = conn.transport
            transport.write(b"before")
            assert await recv_exactly(loop, conn.peer, 6) == b"before"
            transport.close()
            transport.write(b"after")  # no exception
            if not (loop_kind == "asyncio" and STOCK_WRITELINES_FAILS_AFTER_LOSS):
                transport.writelines([b"after", b"again"])
            assert await conn.protocol.lost is None
            for _ in range(10):  # asyncio logs a warning after 5 such writes; still no exception
                transport.write(b"after lost")
            assert await recv_to_eof(loop, conn.peer) == b""

    loop.run_until_complete(main())


async def reset_peer(loop, conn, kind):
    """Close the peer so that the transport sees a reset (the peer has unread data)."""
    conn.transport.write(b"unread")
    await wait_readable(loop, conn.peer)
    close_with_reset(conn.peer, kind)


async def close_then_reset_peer(loop, conn, kind):
    """close() the transport while it is flushing a full buffer, then reset the peer (it has
    unread data)."""
    await fill_write_buffer(conn.transport)
    await wait_readable(loop, conn.peer)
    conn.transport.close()
    close_with_reset(conn.peer, kind)


def test_peer_reset_reaches_connection_lost(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            await reset_peer(loop, conn, kind)
            exc = await conn.protocol.lost
            assert isinstance(exc, ConnectionResetError)
            assert exc.errno == errno.ECONNRESET
            assert conn.protocol.events == ["made", "lost"]  # no eof_received
            assert conn.transport.is_closing()
            conn.transport.write(b"after the reset")  # dropped, no exception
            conn.transport.close()
            conn.transport.abort()
            await poll_rounds(loop)
            assert conn.protocol.lost_calls == [exc]

    loop.run_until_complete(main())
    # An OSError on the socket is not reported to the exception handler (the leak check
    # fails the test on unexpected calls).


def test_connection_lost_once_when_close_abort_and_a_peer_reset_overlap(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            transport, protocol = conn.transport, conn.protocol
            await close_then_reset_peer(loop, conn, kind)
            transport.abort()
            transport.close()
            assert await protocol.lost is None  # abort() came first
            await poll_rounds(loop, 3)
            assert protocol.lost_calls == [None]

    loop.run_until_complete(main())


def test_peer_reset_while_close_is_flushing(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            transport, protocol = conn.transport, conn.protocol
            await close_then_reset_peer(loop, conn, kind)
            exc = await protocol.lost
            # The failing send() gives the error: asyncio gets ECONNRESET over TCP and EPIPE
            # over Unix sockets (reading stopped at close()).
            assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
            transport.abort()
            transport.close()
            await poll_rounds(loop, 3)
            assert protocol.lost_calls == [exc]

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# get_extra_info, set_protocol
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["write", "writelines", "is_closing", "close", "pause_reading"])
def test_a_transport_method_can_be_patched_on_the_instance(loop, kind, sock_dir, method):
    """``mock.patch.object(transport, "write")`` (aiohttp's websocket heartbeat tests) shadows
    the method on that instance only, and leaving the patch restores it."""

    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            transport = conn.transport
            with mock.patch.object(transport, method) as patched:
                getattr(transport, method)(b"x")
                patched.assert_called_once_with(b"x")
            assert method not in vars(transport)
            transport.write(b"after")
            assert await recv_exactly(loop, conn.peer, 5) == b"after"

    loop.run_until_complete(main())


def test_a_transport_takes_new_attributes(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            conn.transport.tag = "mine"
            assert conn.transport.tag == "mine"
            del conn.transport.tag
            assert not hasattr(conn.transport, "tag")

    loop.run_until_complete(main())


def test_get_extra_info(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            transport = conn.transport
            sock = transport.get_extra_info("socket")
            assert isinstance(sock, asyncio.trsock.TransportSocket)
            assert sock.family == (socket.AF_INET if kind == "tcp" else socket.AF_UNIX)
            assert sock.type == socket.SOCK_STREAM
            assert sock.fileno() >= 0
            assert transport.get_extra_info("sockname") == sock.getsockname()
            assert transport.get_extra_info("sockname") == conn.peer.getpeername()
            assert transport.get_extra_info("peername") == conn.peer.getsockname()
            assert transport.get_extra_info("no such key") is None
            assert transport.get_extra_info("no such key", "default") == "default"
            assert transport.get_extra_info("peercert") is None  # not a TLS transport
            if kind == "tcp":
                assert transport.get_extra_info("peername")[0] == "127.0.0.1"
            else:
                assert transport.get_extra_info("sockname") == ""  # unbound client

    loop.run_until_complete(main())


def test_get_extra_info_of_accepted_transports(loop, kind, sock_dir):
    async def main():
        async with served(loop, kind, sock_dir, lambda: Recorder(loop)) as (transport, _, server):
            accepted = server.transport
            assert isinstance(accepted.get_extra_info("socket"), asyncio.trsock.TransportSocket)
            assert accepted.get_extra_info("peername") == transport.get_extra_info("sockname")
            assert accepted.get_extra_info("sockname") == transport.get_extra_info("peername")
            assert accepted.get_extra_info("nope", 42) == 42

    loop.run_until_complete(main())


def test_extra_info_stays_after_close(loop, kind, sock_dir):
    """peername, sockname and socket are still there after connection_lost (sockname and
    socket asked for the first time only then)."""

    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            transport = conn.transport
            peername = transport.get_extra_info("peername")
            transport.close()
            await conn.protocol.lost
            assert transport.get_extra_info("peername") == peername
            assert transport.get_extra_info("sockname") == conn.client_address
            sock = transport.get_extra_info("socket")
            assert isinstance(sock, asyncio.trsock.TransportSocket)
            assert sock.family == (socket.AF_INET if kind == "tcp" else socket.AF_UNIX)

    loop.run_until_complete(main())


def test_set_protocol_switches_the_receiver(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            first = conn.protocol
            conn.peer.sendall(b"one")
            assert await first.wait_data(3) == b"one"
            second = Recorder(loop)
            conn.transport.set_protocol(second)
            conn.protocol = second
            assert conn.transport.get_protocol() is second
            conn.peer.sendall(b"two")
            assert await second.wait_data(3) == b"two"
            conn.peer.shutdown(socket.SHUT_WR)
            assert await second.lost is None
            assert bytes(first.data) == b"one"
            assert first.events == ["made", "data"]
            assert second.events == ["data", "eof", "lost"]  # no connection_made

    loop.run_until_complete(main())


def test_set_protocol_to_a_buffered_protocol_and_back(loop, kind, sock_dir):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            buffered = BufferedRecorder(loop, 5)
            conn.transport.set_protocol(buffered)
            conn.protocol = buffered
            conn.peer.sendall(b"0123456789abc")
            await buffered.wait_data(13)
            assert bytes(buffered.data) == b"0123456789abc"
            assert buffered.get_buffer_calls >= 3
            plain = Recorder(loop)
            conn.transport.set_protocol(plain)
            conn.protocol = plain
            conn.peer.sendall(b"plain")
            assert await plain.wait_data(5) == b"plain"
            assert bytes(buffered.data) == b"0123456789abc"

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# TCP_NODELAY
# --------------------------------------------------------------------------------------------


def nodelay(transport):
    return (
        transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    )


def test_tcp_nodelay_is_set_on_connected_and_accepted_sockets(loop, sock_dir):
    async def main():
        async with served(loop, "tcp", sock_dir, lambda: Recorder(loop)) as (transport, _, server):
            assert nodelay(transport)
            assert nodelay(server.transport)

    loop.run_until_complete(main())


def test_tcp_nodelay_on_an_adopted_proto_0_socket(loop, loop_kind):
    # Documented difference. asyncio's _set_nodelay only sets TCP_NODELAY when
    # sock.proto == IPPROTO_TCP; socket.socket() makes sockets with proto 0, so a socket handed
    # over with create_connection(sock=...) keeps Nagle's algorithm on asyncio. oxloop sets
    # TCP_NODELAY on every TCP stream socket it makes a transport of.
    asyncio_sets_it = False
    expected = loop_kind == "oxloop" or asyncio_sets_it
    listener = make_listener("tcp", None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    assert sock.proto == 0

    async def main():
        sock.setblocking(False)
        await loop.sock_connect(sock, listener.getsockname())
        async with peer_of(
            loop, listener, loop.create_connection(lambda: Recorder(loop), sock=sock)
        ) as conn:
            assert nodelay(conn.transport) == expected

    with listener, sock:
        loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# create_connection
# --------------------------------------------------------------------------------------------


@pytest.fixture
def refusing_address():
    """A TCP address that refuses connections (bound, not listening: the port stays taken)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()
    sock.close()


def test_create_connection_refused(loop, refusing_address):
    error = run_raises(
        loop,
        loop.create_connection(asyncio.Protocol, *refusing_address),
        ConnectionRefusedError,
        f"[Errno {errno.ECONNREFUSED}] Connect call failed {refusing_address}",
    )
    assert error.errno == errno.ECONNREFUSED


def test_create_connection_refused_is_an_oserror_in_happy_eyeballs_mode(loop, refusing_address):
    coro = loop.create_connection(asyncio.Protocol, *refusing_address, happy_eyeballs_delay=0.1)
    with pytest.raises(ConnectionRefusedError):
        loop.run_until_complete(coro)


def fake_resolver(loop, addresses):
    """Make ``loop.getaddrinfo`` resolve every name to ``addresses`` (IPv4 literals) in order."""
    calls = []

    async def getaddrinfo(host, port, *, family=0, type=0, proto=0, flags=0):
        calls.append((host, port))
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port))
            for a in addresses
        ]

    loop.getaddrinfo = getaddrinfo
    return calls


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"interleave": 2},
        {"happy_eyeballs_delay": 0.25},
        {"happy_eyeballs_delay": 0.25, "interleave": 1},
    ],
    ids=["sequential", "interleave", "happy-eyeballs", "happy-eyeballs+interleave"],
)
def test_create_connection_tries_each_address(loop, options):
    listener = make_listener("tcp", None)
    port = listener.getsockname()[1]
    # Nothing listens on 127.0.0.2:port (the listener is bound to 127.0.0.1 only).
    calls = fake_resolver(loop, ["127.0.0.2", "127.0.0.1"])

    async def main():
        connecting = loop.create_connection(
            lambda: Recorder(loop), "several.invalid", port, **options
        )
        async with peer_of(loop, listener, connecting) as conn:
            assert conn.transport.get_extra_info("peername") == ("127.0.0.1", port)
            conn.transport.write(b"hi")
            assert await recv_exactly(loop, conn.peer, 2) == b"hi"

    with listener:
        loop.run_until_complete(main())
    assert calls == [("several.invalid", port)]


@pytest.mark.parametrize(
    "options", [{}, {"happy_eyeballs_delay": 0.25}], ids=["sequential", "happy-eyeballs"]
)
def test_create_connection_every_address_refused(loop, refusing_address, options):
    port = refusing_address[1]
    fake_resolver(loop, ["127.0.0.2", "127.0.0.1"])
    error = run_raises(
        loop,
        loop.create_connection(asyncio.Protocol, "several.invalid", port, **options),
        OSError,
        f"Multiple exceptions: [Errno {errno.ECONNREFUSED}] "
        f"Connect call failed ('127.0.0.2', {port}), "
        f"[Errno {errno.ECONNREFUSED}] Connect call failed ('127.0.0.1', {port})",
    )
    assert type(error) is OSError


def test_create_connection_all_errors(loop, refusing_address):
    def run():
        loop.run_until_complete(
            loop.create_connection(asyncio.Protocol, *refusing_address, all_errors=True)
        )

    if sys.version_info >= (3, 12):
        with pytest.raises(ExceptionGroup) as info:
            run()
        assert all(isinstance(e, ConnectionRefusedError) for e in info.value.exceptions)
    else:
        # all_errors arrived in Python 3.12: on 3.11 it is an unexpected keyword argument
        # (raised by the call itself, before any coroutine runs).
        with pytest.raises(TypeError, match="unexpected keyword argument 'all_errors'"):
            run()


def test_create_connection_empty_resolution(loop):
    fake_resolver(loop, [])
    with pytest.raises(OSError, match=r"^getaddrinfo\(\) returned empty list$"):
        loop.run_until_complete(loop.create_connection(asyncio.Protocol, "nothing.invalid", 80))


def test_create_connection_resolution_error_propagates(loop):
    async def getaddrinfo(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    loop.getaddrinfo = getaddrinfo
    with pytest.raises(socket.gaierror):
        loop.run_until_complete(loop.create_connection(asyncio.Protocol, "nothing.invalid", 80))


def test_create_connection_local_addr(loop):
    listener = make_listener("tcp", None)

    async def main():
        connecting = loop.create_connection(
            lambda: Recorder(loop), *listener.getsockname(), local_addr=("127.0.0.2", 0)
        )
        async with peer_of(loop, listener, connecting) as conn:
            assert conn.transport.get_extra_info("sockname")[0] == "127.0.0.2"
            assert conn.client_address == conn.transport.get_extra_info("sockname")

    with listener:
        loop.run_until_complete(main())


def test_create_connection_local_addr_in_use(loop):
    with make_listener("tcp", None) as listener:
        address = listener.getsockname()
        error = run_raises(
            loop,
            loop.create_connection(asyncio.Protocol, *address, local_addr=address),
            OSError,
            net.address_in_use_message(address),
        )
        assert error.errno == errno.EADDRINUSE


def test_create_connection_over_ipv6(loop):
    try:
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        pytest.skip("no IPv6")
    try:
        listener.bind(("::1", 0))
    except OSError:
        listener.close()
        pytest.skip("no IPv6 loopback")
    listener.listen(1)
    listener.setblocking(False)

    async def main():
        connecting = loop.create_connection(
            lambda: Recorder(loop), "::1", listener.getsockname()[1]
        )
        async with peer_of(loop, listener, connecting) as conn:
            transport = conn.transport
            assert transport.get_extra_info("socket").family == socket.AF_INET6
            assert transport.get_extra_info("peername")[:2] == listener.getsockname()[:2]
            assert nodelay(transport)
            conn.peer.sendall(b"v6")
            assert await conn.protocol.wait_data(2) == b"v6"

    with listener:
        loop.run_until_complete(main())


@pytest.mark.parametrize(
    "kind, create",
    [
        ("tcp", "create_connection"),
        ("unix", "create_connection"),
        ("unix", "create_unix_connection"),
    ],
    ids=["tcp", "unix", "unix-create_unix_connection"],
)
def test_create_connection_with_sock_adopts_the_socket(loop, kind, sock_dir, create):
    listener = make_listener(kind, sock_dir)
    family = socket.AF_INET if kind == "tcp" else socket.AF_UNIX
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.connect(listener.getsockname())  # a blocking socket: the loop makes it non-blocking
    fd = sock.fileno()

    async def main():
        peer, _ = await loop.sock_accept(listener)
        with peer:
            transport, protocol = await getattr(loop, create)(lambda: Recorder(loop), sock=sock)
            assert sock.gettimeout() == 0
            assert transport.get_extra_info("socket").fileno() == fd
            assert transport.get_extra_info("peername") == sock.getpeername()
            transport.write(b"adopted")
            assert await recv_exactly(loop, peer, 7) == b"adopted"
            transport.close()
            assert await protocol.lost is None
            assert sock.fileno() == -1  # closing the transport closed the socket object

    with listener, sock:
        loop.run_until_complete(main())
        # The fd is free again; whatever reuses it must not be closed by the loop later (or by
        # the transport's finalizer).
        a, b = socket.socketpair()
        with a, b:
            sock.close()
            loop.run_until_complete(asyncio.sleep(0))
            gc.collect()
            a.send(b"alive")
            assert b.recv(10) == b"alive"
            os.fstat(a.fileno())
            os.fstat(b.fileno())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"host": "127.0.0.1", "port": 1, "server_hostname": "a.example"},
            "server_hostname is only meaningful with ssl",
        ),
        (
            {"host": "127.0.0.1", "port": 1, "ssl_handshake_timeout": 1},
            "ssl_handshake_timeout is only meaningful with ssl",
        ),
        (
            {"host": "127.0.0.1", "port": 1, "ssl_shutdown_timeout": 1},
            "ssl_shutdown_timeout is only meaningful with ssl",
        ),
        ({}, "host and port was not specified and no sock specified"),
    ],
)
def test_create_connection_argument_errors(loop, kwargs, message):
    run_raises(loop, loop.create_connection(asyncio.Protocol, **kwargs), ValueError, message)


def test_create_connection_with_host_and_sock(loop):
    with socket.socket() as sock:
        run_raises(
            loop,
            loop.create_connection(asyncio.Protocol, "127.0.0.1", 80, sock=sock),
            ValueError,
            "host/port and sock can not be specified at the same time",
        )
        with pytest.raises(ValueError):
            loop.run_until_complete(loop.create_connection(asyncio.Protocol, port=80, sock=sock))
        assert sock.fileno() >= 0  # not closed


@pytest.mark.parametrize(
    "adopt",
    [
        lambda loop, sock: loop.create_connection(asyncio.Protocol, sock=sock),
        lambda loop, sock: loop.connect_accepted_socket(asyncio.Protocol, sock),
    ],
    ids=["create_connection", "connect_accepted_socket"],
)
def test_a_datagram_sock_is_rejected(loop, adopt):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        run_raises(
            loop, adopt(loop, sock), ValueError, f"A Stream Socket was expected, got {sock!r}"
        )


def test_cancelled_create_connection_leaves_nothing_behind(loop):
    listener = make_listener("tcp", None)
    address = listener.getsockname()

    async def main():
        task = asyncio.ensure_future(loop.create_connection(asyncio.Protocol, *address))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with listener:
        loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# connect_accepted_socket
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["tcp", "unix-socketpair"])
def accepted_pair(request):
    """(the socket to hand to connect_accepted_socket, a non-blocking socket at the other end):
    over TCP, an accepted socket left blocking; else conftest's Unix ``pair``."""
    if request.param == "unix-socketpair":
        return request.getfixturevalue("pair")
    listener = make_listener("tcp", None)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    request.addfinalizer(client.close)
    with listener:
        client.connect(listener.getsockname())
        client.setblocking(False)
        conn, _ = listener.accept()  # a blocking socket: the loop makes it non-blocking
    request.addfinalizer(conn.close)
    return conn, client


def test_connect_accepted_socket(loop, accepted_pair):
    conn, other = accepted_pair

    async def main():
        transport, protocol = await loop.connect_accepted_socket(lambda: Recorder(loop), conn)
        assert protocol.made.done() and protocol.is_transport
        assert conn.gettimeout() == 0
        assert transport.get_extra_info("socket").fileno() == conn.fileno()
        assert transport.get_extra_info("peername") == other.getsockname()
        await loop.sock_sendall(other, b"ping")
        assert await protocol.wait_data(4) == b"ping"
        transport.write(b"pong")
        assert await recv_exactly(loop, other, 4) == b"pong"
        transport.close()
        assert await protocol.lost is None
        assert conn.fileno() == -1
        assert await recv_to_eof(loop, other) == b""

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# create_unix_connection
# --------------------------------------------------------------------------------------------


def test_create_unix_connection_by_path_object(loop, sock_dir):
    listener = make_listener("unix", sock_dir)
    path = listener.getsockname()

    async def main():
        connecting = loop.create_unix_connection(lambda: Recorder(loop), pathlib.Path(path))
        async with peer_of(loop, listener, connecting) as conn:
            assert conn.transport.get_extra_info("peername") == path
            assert conn.transport.get_extra_info("socket").family == socket.AF_UNIX
            conn.peer.sendall(b"unix")
            assert await conn.protocol.wait_data(4) == b"unix"

    with listener:
        loop.run_until_complete(main())


def test_create_unix_connection_to_an_abstract_name(loop):
    name = f"\0oxloop-test-{uuid.uuid4().hex}"

    async def main():
        server_protocols = []

        def factory():
            server_protocols.append(Echo(loop))
            return server_protocols[-1]

        server = await loop.create_unix_server(factory, name)
        try:
            assert server.sockets[0].getsockname() == name.encode()
            connecting = loop.create_unix_connection(lambda: Recorder(loop), name)
            async with connected(connecting) as (transport, protocol):
                transport.write(b"abstract")
                assert await protocol.wait_data(8) == b"abstract"
            await server_protocols[0].lost
        finally:
            server.close()
            await server.wait_closed()

    loop.run_until_complete(main())


def test_create_unix_connection_errors(loop, sock_dir):
    missing = os.path.join(sock_dir, "missing.sock")
    with pytest.raises(FileNotFoundError):
        loop.run_until_complete(loop.create_unix_connection(asyncio.Protocol, missing))

    not_listening = os.path.join(sock_dir, "bound.sock")
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(not_listening)
    inet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with bound, inet:
        with pytest.raises(ConnectionRefusedError):
            loop.run_until_complete(loop.create_unix_connection(asyncio.Protocol, not_listening))
        cases = [
            (
                {"path": not_listening, "sock": bound},
                "path and sock can not be specified at the same time",
            ),
            ({}, "no path and sock were specified"),
            ({"sock": inet}, f"A UNIX Domain Stream Socket was expected, got {inet!r}"),
            (
                {"path": not_listening, "server_hostname": "example.com"},
                "server_hostname is only meaningful with ssl",
            ),
        ]
        for kwargs, message in cases:
            run_raises(
                loop, loop.create_unix_connection(asyncio.Protocol, **kwargs), ValueError, message
            )
