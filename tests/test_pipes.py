"""Pipe transports: loop.connect_read_pipe and loop.connect_write_pipe.

Covered, read side: data_received (bytes, in order, large transfers), end of stream
(eof_received then connection_lost(None), eof_received's return value ignored), read flow
control (pause_reading/resume_reading/is_reading), close (connection_lost once, the pipe object
closed), get_extra_info('pipe'), the transport's classes, a socket and a pty master as "pipes"
(a pty ends with EIO), which objects are accepted (a regular file is rejected) and a
StreamReader over a read pipe.
Write side: write/writelines with bytes-like objects, ordering, buffering and flow control
(pause_writing/resume_writing, set_write_buffer_limits), write_eof and close (which flush),
abort (which does not), the reader closing its end (connection_lost(None) when nothing is
buffered, BrokenPipeError when something is), writes after the end (dropped, with asyncio's
warning from the sixth on), a socket and /dev/null as "pipes", and a regular file rejected.

The other end of each pipe is a plain file object the test reads or writes itself (through
``add_reader`` or a thread), so that its reads, writes and closes are under the test's control.

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
"""

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import socket
import sys
import threading
import tty

import pytest

from helpers.net import MiB, Recorder, fill_write_buffer, poll_rounds, record_errors

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Linux pty semantics (EIO)"
)

CONNLOST_WARNING = "pipe closed by peer or os.write(pipe, data) raised exception."

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def pipe():
    """A new pipe as two unbuffered file objects (read end, write end), closed afterwards."""
    r, w = os.pipe()
    read_end, write_end = open(r, "rb", buffering=0), open(w, "wb", buffering=0)
    yield read_end, write_end
    read_end.close()
    write_end.close()


async def read_some(loop, file):
    """One read (up to 256 KiB) from ``file`` once it is readable; b"" at the end of stream."""
    os.set_blocking(file.fileno(), False)
    ready = loop.create_future()
    loop.add_reader(file.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(file.fileno())
    try:
        return os.read(file.fileno(), 256 * 1024)
    except BlockingIOError:
        return await read_some(loop, file)


async def read_exactly(loop, file, size):
    """Read ``size`` bytes from ``file``; fails if the stream ends first."""
    out = bytearray()
    while len(out) < size:
        chunk = await read_some(loop, file)
        if not chunk:
            raise AssertionError(f"end of stream after {len(out)} of {size} bytes")
        out += chunk
    return bytes(out)


async def read_to_eof(loop, file):
    """Read from ``file`` until the end of the stream."""
    out = bytearray()
    while chunk := await read_some(loop, file):
        out += chunk
    return bytes(out)


@contextlib.contextmanager
def writing_thread(file, data):
    """A thread writing ``data`` to ``file`` (blocking writes), then closing it; joined at exit."""

    def run():
        with file:
            view = memoryview(data)
            while view:
                view = view[os.write(file.fileno(), view[: 64 * 1024]) :]

    thread = threading.Thread(target=run, name="pipe-writer")
    thread.start()
    try:
        yield thread
    finally:
        thread.join(timeout=10)


def sha(data):
    return hashlib.sha256(data).hexdigest()


async def connect_read(loop, pipe_object, factory=None):
    return await loop.connect_read_pipe(factory or (lambda: Recorder(loop)), pipe_object)


async def connect_write(loop, pipe_object, factory=None):
    return await loop.connect_write_pipe(factory or (lambda: Recorder(loop)), pipe_object)


def asyncio_warnings(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and r.levelno == logging.WARNING
    ]


# --------------------------------------------------------------------------------------------
# Read pipes
# --------------------------------------------------------------------------------------------


def test_read_pipe_transport_is_ready_when_connect_returns(loop, pipe):
    r, _ = pipe

    async def main():
        transport, protocol = await connect_read(loop, r)
        assert protocol.events == ["made"]  # connection_made has run
        assert protocol.made.result() is transport
        assert transport.get_protocol() is protocol
        assert isinstance(transport, asyncio.ReadTransport)
        assert not isinstance(transport, asyncio.WriteTransport)
        assert not protocol.is_transport  # not a (bidirectional) asyncio.Transport
        assert transport.get_extra_info("pipe") is r
        assert transport.get_extra_info("nothing", "default") == "default"
        assert transport.is_reading()
        assert not transport.is_closing()
        assert not os.get_blocking(r.fileno())  # the transport made the fd non-blocking
        transport.close()
        assert await protocol.lost is None

    loop.run_until_complete(main())


def test_read_pipe_data_received_gets_bytes_in_order(loop, pipe):
    r, w = pipe

    async def main():
        transport, protocol = await connect_read(loop, r)
        chunks = [bytes([i]) * (i * 20 + 1) for i in range(50)]  # 24 KiB: fits in the pipe
        for chunk in chunks:
            w.write(chunk)
        expected = b"".join(chunks)
        assert await protocol.wait_data(len(expected)) == expected
        assert protocol.data_types == {bytes}
        transport.close()
        await protocol.lost

    loop.run_until_complete(main())


def test_read_pipe_large_transfer_from_a_thread(loop, pipe):
    r, w = pipe
    data = os.urandom(8 * MiB)

    async def main():
        _transport, protocol = await connect_read(loop, r)
        with writing_thread(w, data):
            assert await protocol.lost is None  # the thread closes its end when done
        assert len(protocol.data) == len(data)
        assert sha(protocol.data) == sha(data)
        assert protocol.events[-2:] == ["eof", "lost"]

    loop.run_until_complete(main())


@pytest.mark.parametrize("eof_result", [None, True])
def test_read_pipe_eof_then_connection_lost(loop, pipe, eof_result):
    # eof_received's return value is ignored: a read pipe always closes at the end of stream.
    r, w = pipe

    async def main():
        transport, protocol = await connect_read(
            loop, r, lambda: Recorder(loop, eof_result=eof_result)
        )
        w.write(b"last words")
        w.close()
        assert await protocol.lost is None
        assert protocol.events == ["made", "data", "eof", "lost"]
        assert bytes(protocol.data) == b"last words"
        assert transport.is_closing()
        assert not transport.is_reading()
        assert r.closed  # the transport closed the pipe object
        await poll_rounds(loop)
        assert protocol.lost_calls == [None]

    loop.run_until_complete(main())


def test_read_pipe_of_a_writer_that_closes_at_once(loop, pipe):
    r, w = pipe
    w.close()

    async def main():
        _, protocol = await connect_read(loop, r)
        assert await protocol.lost is None
        assert protocol.events == ["made", "eof", "lost"]

    loop.run_until_complete(main())


def test_read_pipe_pause_reading_holds_back_data_and_eof(loop, pipe):
    r, w = pipe

    async def main():
        transport, protocol = await connect_read(loop, r)
        transport.pause_reading()
        transport.pause_reading()  # idempotent
        assert not transport.is_reading()
        w.write(b"while paused")
        await poll_rounds(loop, 3)
        assert protocol.data == b""
        transport.resume_reading()
        transport.resume_reading()  # idempotent
        assert transport.is_reading()
        assert await protocol.wait_data(12) == b"while paused"
        transport.pause_reading()
        w.write(b" and more")
        w.close()
        await poll_rounds(loop, 3)
        assert protocol.data == b"while paused"
        assert not protocol.eof.done()
        transport.resume_reading()
        assert await protocol.lost is None
        assert protocol.data == b"while paused and more"
        assert protocol.events == ["made", "data", "data", "eof", "lost"]

    loop.run_until_complete(main())


def test_read_pipe_close_calls_connection_lost_once_and_closes_the_pipe(loop, pipe):
    r, w = pipe

    async def main():
        transport, protocol = await connect_read(loop, r)
        transport.close()
        assert transport.is_closing()
        assert not transport.is_reading()
        assert protocol.lost_calls == []  # never from inside close()
        transport.close()
        assert await protocol.lost is None
        transport.close()
        await poll_rounds(loop)
        assert protocol.lost_calls == [None]
        assert protocol.events == ["made", "lost"]
        assert r.closed
        with pytest.raises(BrokenPipeError):  # no reader left: the fd itself was closed
            w.write(b"x")

    loop.run_until_complete(main())


def test_read_pipe_pause_and_resume_reading_are_no_ops_after_close(loop, pipe):
    r, _w = pipe

    async def main():
        transport, protocol = await connect_read(loop, r)
        transport.pause_reading()
        transport.close()
        transport.resume_reading()
        assert not transport.is_reading()
        assert await protocol.lost is None
        transport.resume_reading()
        transport.pause_reading()
        assert not transport.is_reading()
        assert protocol.events == ["made", "lost"]

    loop.run_until_complete(main())


def test_read_pipe_over_a_socket(loop, pair):
    a, b = pair

    async def main():
        transport, protocol = await connect_read(loop, b)
        assert transport.get_extra_info("pipe") is b
        a.sendall(b"over a socket")
        assert await protocol.wait_data(13) == b"over a socket"
        a.shutdown(socket.SHUT_WR)
        assert await protocol.lost is None
        assert protocol.events[-2:] == ["eof", "lost"]
        assert b.fileno() == -1  # closed by the transport

    loop.run_until_complete(main())


@linux_only
def test_read_pipe_from_a_pty_master_ends_with_eio(loop):
    # Closing the slave makes the master's read() fail with EIO: asyncio passes that OSError to
    # connection_lost (no eof_received) without calling the exception handler (the leak check
    # fails the test on unexpected calls).
    master, slave = os.openpty()
    tty.setraw(slave)  # no line discipline: bytes pass unchanged
    master_file = open(master, "rb", buffering=0)
    slave_file = open(slave, "wb", buffering=0)

    async def main():
        transport, protocol = await connect_read(loop, master_file)
        slave_file.write(b"from the slave")
        assert await protocol.wait_data(14) == b"from the slave"
        slave_file.write(b" unread")
        slave_file.close()  # the bytes still in the pty are delivered before the error
        exc = await protocol.lost
        assert type(exc) is OSError
        assert exc.errno == errno.EIO
        assert protocol.data == b"from the slave unread"
        assert protocol.events[0] == "made" and protocol.events[-1] == "lost"
        assert "eof" not in protocol.events
        assert transport.is_closing()
        assert master_file.closed
        await poll_rounds(loop)
        assert protocol.lost_calls == [exc]

    try:
        loop.run_until_complete(main())
    finally:
        master_file.close()
        slave_file.close()


def test_read_pipe_rejects_a_regular_file(loop, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"data")

    async def main():
        with open(path, "rb") as file:
            with pytest.raises(ValueError) as info:
                await connect_read(loop, file)
            assert str(info.value) == "Pipe transport is for pipes/sockets only."
            assert not file.closed  # left to its owner
            assert file.read() == b"data"

    loop.run_until_complete(main())


def test_read_pipe_accepts_a_character_device(loop):
    # Character devices pass the check. (/dev/null cannot be polled: asyncio's selector then
    # reports an error to the exception handler, recorded and ignored here.)
    record_errors(loop)

    async def main():
        with open("/dev/null", "rb", buffering=0) as file:
            transport, protocol = await connect_read(loop, file)
            assert transport.get_extra_info("pipe") is file
            transport.close()
            assert await protocol.lost is None
            assert protocol.lost_calls == [None]
            assert file.closed

    loop.run_until_complete(main())


def test_stream_reader_reads_lines_from_a_read_pipe(loop, pipe):
    r, w = pipe

    class ReaderProtocol(asyncio.StreamReaderProtocol):
        def __init__(self, reader):
            super().__init__(reader)
            self.lost = loop.create_future()

        def connection_lost(self, exc):
            super().connection_lost(exc)
            self.lost.set_result(exc)

    async def main():
        reader = asyncio.StreamReader()
        transport, protocol = await loop.connect_read_pipe(lambda: ReaderProtocol(reader), r)
        w.write(b"line one\nline ")
        assert await reader.readline() == b"line one\n"
        w.write(b"two\npartial")
        w.close()
        assert await reader.readline() == b"line two\n"
        assert await reader.readline() == b"partial"
        assert await reader.readline() == b""
        assert reader.at_eof()
        assert await protocol.lost is None
        assert transport.is_closing()

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Write pipes
# --------------------------------------------------------------------------------------------


def test_write_pipe_transport_is_ready_when_connect_returns(loop, pipe):
    _, w = pipe

    async def main():
        transport, protocol = await connect_write(loop, w)
        assert protocol.events == ["made"]
        assert protocol.made.result() is transport
        assert transport.get_protocol() is protocol
        assert isinstance(transport, asyncio.WriteTransport)
        assert transport.get_extra_info("pipe") is w
        assert transport.can_write_eof() is True
        assert transport.get_write_buffer_size() == 0
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        assert not transport.is_closing()
        assert not os.get_blocking(w.fileno())  # the transport made the fd non-blocking
        transport.close()
        assert await protocol.lost is None

    loop.run_until_complete(main())


@pytest.mark.parametrize("type_", [bytes, bytearray, memoryview])
def test_write_pipe_accepts_bytes_like_objects(loop, pipe, type_):
    r, w = pipe

    async def main():
        transport, protocol = await connect_write(loop, w)
        transport.write(type_(b"abc"))
        transport.write(type_(b""))  # nothing
        transport.writelines([type_(b"def"), type_(b"gh")])
        transport.writelines(iter([type_(b"ij")]))
        transport.write(memoryview(type_(b"0123456789"))[2:5])
        assert await read_exactly(loop, r, 13) == b"abcdefghij234"
        transport.close()
        assert await protocol.lost is None

    loop.run_until_complete(main())


def test_write_pipe_many_writes_arrive_in_order(loop, pipe):
    r, w = pipe
    chunks = [bytes([i % 256]) * (i * 37 % 5000 + 1) for i in range(500)]
    expected = b"".join(chunks)

    async def main():
        transport, protocol = await connect_write(loop, w)
        for chunk in chunks:
            transport.write(chunk)
        transport.close()
        received = await read_to_eof(loop, r)
        assert len(received) == len(expected)
        assert received == expected
        assert await protocol.lost is None

    loop.run_until_complete(main())


def test_write_pipe_mutating_a_buffer_after_write_does_not_change_what_is_sent(loop, pipe):
    r, w = pipe

    async def main():
        transport, protocol = await connect_write(loop, w)
        head = await fill_write_buffer(transport)  # what follows is buffered
        first = bytearray(b"A" * 1000)
        second = bytearray(b"B" * 1000)
        transport.write(first)
        transport.write(memoryview(second))
        first[:] = b"a" * 1000
        second[:] = b"b" * 1000
        first.extend(b"more")  # resizing is allowed: the transport kept no export
        transport.close()
        received = await read_to_eof(loop, r)
        assert len(received) == len(head) + 2000
        assert received[len(head) :] == b"A" * 1000 + b"B" * 1000
        assert await protocol.lost is None

    loop.run_until_complete(main())


def test_write_pipe_pauses_and_resumes_writing_with_a_slow_reader(loop, pipe):
    r, w = pipe
    data = os.urandom(16) * (4 * MiB // 16)

    async def main():
        transport, protocol = await connect_write(loop, w)
        transport.write(data)
        # Called inside write() as soon as the buffer is over the high-water mark.
        assert protocol.pause_calls == 1
        assert protocol.size_at_pause > 64 * 1024
        size = transport.get_write_buffer_size()
        assert 64 * 1024 < size <= len(data)
        transport.write(b"tail")
        assert transport.get_write_buffer_size() == size + 4
        assert protocol.pause_calls == 1  # not again while paused
        received = await read_exactly(loop, r, len(data) + 4)
        await protocol.resumed
        assert protocol.resume_calls == 1
        assert protocol.size_at_resume <= 16 * 1024
        assert sha(received) == sha(data + b"tail")
        assert protocol.events == ["made", "pause", "resume"]
        transport.close()
        assert await protocol.lost is None

    loop.run_until_complete(main())


def test_write_pipe_set_write_buffer_limits_pauses_at_once_when_over_the_new_mark(loop, pipe):
    r, w = pipe

    async def main():
        transport, protocol = await connect_write(loop, w)
        transport.set_write_buffer_limits(high=1024 * MiB)
        assert transport.get_write_buffer_limits() == (256 * MiB, 1024 * MiB)
        data = await fill_write_buffer(transport)
        assert protocol.pause_calls == 0
        size = transport.get_write_buffer_size()
        transport.set_write_buffer_limits(high=size - 1, low=0)
        assert transport.get_write_buffer_limits() == (0, size - 1)
        assert protocol.pause_calls == 1
        assert protocol.size_at_pause == size
        assert await read_exactly(loop, r, len(data)) == data
        await protocol.resumed
        assert protocol.size_at_resume == 0
        transport.close()
        assert await protocol.lost is None

    loop.run_until_complete(main())


@pytest.mark.parametrize("end", ["write_eof", "close"])
def test_write_pipe_write_eof_and_close_flush_then_close_the_pipe(loop, pipe, end):
    # For a pipe, write_eof() is close(): once the buffer is flushed, the pipe is closed and
    # connection_lost(None) is called.
    r, w = pipe

    async def main():
        transport, protocol = await connect_write(loop, w)
        data = await fill_write_buffer(transport)
        getattr(transport, end)()
        assert transport.is_closing()
        await poll_rounds(loop)
        assert not protocol.lost.done()  # nobody reads: still flushing
        received = await read_to_eof(loop, r)  # the end of stream follows the data
        assert len(received) == len(data)
        assert received == data
        assert await protocol.lost is None
        assert w.closed
        transport.write_eof()  # does nothing now
        transport.close()
        await poll_rounds(loop)
        assert protocol.lost_calls == [None]
        assert protocol.events == ["made", "pause", "resume", "lost"]

    loop.run_until_complete(main())


@pytest.mark.parametrize("end", ["write_eof", "close"])
def test_write_pipe_write_eof_and_close_with_nothing_buffered(loop, pipe, end):
    r, w = pipe

    async def main():
        transport, protocol = await connect_write(loop, w)
        transport.write(b"all")
        assert await read_exactly(loop, r, 3) == b"all"
        getattr(transport, end)()
        getattr(transport, end)()  # a second call does nothing
        assert transport.is_closing()
        assert protocol.lost_calls == []  # never from inside the call
        assert await protocol.lost is None
        assert await read_to_eof(loop, r) == b""
        assert protocol.lost_calls == [None]

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    "close_first", [False, True], ids=["abort", "abort-while-close-is-flushing"]
)
def test_write_pipe_abort_discards_buffered_data(loop, pipe, close_first):
    r, w = pipe

    async def main():
        transport, protocol = await connect_write(loop, w)
        data = await fill_write_buffer(transport)
        if close_first:
            transport.close()
        transport.abort()
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        assert protocol.lost_calls == []  # never from inside abort()
        assert await protocol.lost is None
        received = await read_to_eof(loop, r)
        assert len(received) < len(data)
        assert received == data[: len(received)]
        await poll_rounds(loop)
        assert protocol.lost_calls == [None]

    loop.run_until_complete(main())


@pytest.mark.parametrize("end", ["write_eof", "close"])
def test_write_pipe_writes_after_close_are_dropped_without_error(loop, pipe, end):
    # Unlike a socket transport, a pipe raises no RuntimeError for a write after write_eof().
    r, w = pipe

    async def main():
        transport, protocol = await connect_write(loop, w)
        transport.write(b"before")
        getattr(transport, end)()
        transport.write(b"after")
        transport.writelines([b"after", b"again"])
        assert await protocol.lost is None
        transport.write(b"after connection_lost")
        assert transport.get_write_buffer_size() == 0
        assert await read_to_eof(loop, r) == b"before"

    loop.run_until_complete(main())


def test_write_pipe_reader_closing_with_nothing_buffered_gives_connection_lost_none(loop, pipe):
    r, w = pipe

    async def main():
        transport, protocol = await connect_write(loop, w)
        transport.write(b"read")
        assert await read_exactly(loop, r, 4) == b"read"
        r.close()
        assert await protocol.lost is None
        assert transport.is_closing()
        assert w.closed
        assert protocol.events == ["made", "lost"]

    loop.run_until_complete(main())


def test_write_pipe_reader_closing_with_data_buffered_gives_broken_pipe(loop, pipe):
    # Not reported to the exception handler (the leak check fails the test on unexpected calls).
    r, w = pipe

    async def main():
        transport, protocol = await connect_write(loop, w)
        await fill_write_buffer(transport)
        r.close()
        exc = await protocol.lost
        assert isinstance(exc, BrokenPipeError)
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        assert w.closed
        transport.close()
        transport.write(b"dropped")
        await poll_rounds(loop)
        assert protocol.lost_calls == [exc]

    loop.run_until_complete(main())


def test_write_pipe_reader_closing_while_close_is_flushing(loop, pipe):
    r, w = pipe

    async def main():
        transport, protocol = await connect_write(loop, w)
        await fill_write_buffer(transport)
        transport.close()
        r.close()
        assert isinstance(await protocol.lost, BrokenPipeError)
        await poll_rounds(loop)
        assert len(protocol.lost_calls) == 1

    loop.run_until_complete(main())


@pytest.mark.parametrize("end", ["reader closed", "close", "write_eof"])
def test_write_pipe_warns_from_the_sixth_write_after_the_end(loop, pipe, caplog, end):
    # asyncio drops such writes silently five times, then logs a warning for each one.
    r, w = pipe

    async def main():
        transport, protocol = await connect_write(loop, w)
        if end == "reader closed":
            r.close()
        else:
            getattr(transport, end)()
        assert await protocol.lost is None
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(5):
                transport.write(b"dropped")
            assert asyncio_warnings(caplog) == []
            transport.write(b"dropped")
            assert asyncio_warnings(caplog) == [CONNLOST_WARNING]
            transport.write(b"dropped")
            transport.writelines([b"dropped"])
            assert asyncio_warnings(caplog) == [CONNLOST_WARNING] * 3

    loop.run_until_complete(main())


def test_write_pipe_over_a_socket(loop, pair):
    a, b = pair

    async def main():
        transport, protocol = await connect_write(loop, b)
        assert transport.get_extra_info("pipe") is b
        transport.write(b"over a socket")
        transport.close()
        received = bytearray()
        while chunk := await loop.sock_recv(a, 1024):
            received += chunk
        assert received == b"over a socket"
        assert await protocol.lost is None
        assert b.fileno() == -1  # closed by the transport

    loop.run_until_complete(main())


def test_write_pipe_to_a_character_device(loop):
    async def main():
        with open("/dev/null", "wb", buffering=0) as file:
            transport, protocol = await connect_write(loop, file)
            transport.write(b"x" * (4 * MiB))
            await poll_rounds(loop)
            assert transport.get_write_buffer_size() == 0
            assert protocol.pause_calls == 0
            transport.close()
            assert await protocol.lost is None
            assert file.closed

    loop.run_until_complete(main())


def test_write_pipe_rejects_a_regular_file(loop, tmp_path):
    async def main():
        with open(tmp_path / "regular", "wb") as file:
            with pytest.raises(ValueError) as info:
                await connect_write(loop, file)
            assert (
                str(info.value) == "Pipe transport is only for pipes, sockets and character devices"
            )
            assert not file.closed  # left to its owner

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Both ends
# --------------------------------------------------------------------------------------------


def test_write_pipe_to_read_pipe_large_transfer(loop, pipe):
    r, w = pipe
    data = os.urandom(8 * MiB)

    async def main():
        reader, receiver = await connect_read(loop, r)
        writer, sender = await connect_write(loop, w)
        for offset in range(0, len(data), MiB):
            writer.write(data[offset : offset + MiB])
        writer.write_eof()
        assert await receiver.lost is None
        assert await sender.lost is None
        assert len(receiver.data) == len(data)
        assert sha(receiver.data) == sha(data)
        assert receiver.events[-2:] == ["eof", "lost"]
        assert reader.is_closing() and writer.is_closing()

    loop.run_until_complete(main())
