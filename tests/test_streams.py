"""asyncio streams on the loop's transports: open_connection/start_server and
open_unix_connection/start_unix_server.

Covered: echo round trips; readline, readexactly, readuntil, read and at_eof; the reader's
limit (LimitOverrunError/ValueError, and the reader pausing the transport when its buffer is
full); IncompleteReadError when the peer closes early; large payloads; StreamWriter.drain
blocking while the peer does not read (write flow control) and returning once it does;
write_eof; close and wait_closed; drain after close; get_extra_info; an exception in the
connection handler; many concurrent clients.

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
A test taking ``kind`` runs over TCP and over Unix sockets (helpers: helpers/net.py).
"""

import asyncio
import contextlib
import hashlib
import os
import socket

import pytest

from helpers.net import MiB, close_server, poll_rounds, record_errors

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class Handlers:
    """A connection handler for start_server that keeps the tasks running ``handler``, so
    that a test can wait for them (the writer is closed when ``handler`` returns)."""

    def __init__(self, loop, handler):
        self.loop = loop
        self.handler = handler
        self.tasks = []
        self._arrivals = []

    def __call__(self, reader, writer):
        # A plain function (not a coroutine function): the task exists as soon as the
        # connection is made.
        self.tasks.append(self.loop.create_task(self._run(reader, writer)))
        waiters, self._arrivals = self._arrivals, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _run(self, reader, writer):
        try:
            await self.handler(reader, writer)
        finally:
            writer.close()

    async def join(self, connections):
        """Wait for ``connections`` handlers to be started, then for every handler to end."""
        while len(self.tasks) < connections:
            waiter = self.loop.create_future()
            self._arrivals.append(waiter)
            await waiter
        await asyncio.gather(*self.tasks)


async def start(loop, kind, sock_dir, handler, **kwargs):
    """Start a stream server running ``handler``; return (server, address)."""
    if kind == "tcp":
        server = await asyncio.start_server(handler, "127.0.0.1", 0, **kwargs)
    else:
        path = os.path.join(sock_dir, f"s{len(os.listdir(sock_dir))}.sock")
        server = await asyncio.start_unix_server(handler, path, **kwargs)
    return server, server.sockets[0].getsockname()


async def open_(kind, address, **kwargs):
    if kind == "tcp":
        return await asyncio.open_connection(*address, **kwargs)
    return await asyncio.open_unix_connection(address, **kwargs)


async def close_writer(writer):
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


@contextlib.asynccontextmanager
async def opened(kind, address, **kwargs):
    """``async with opened(kind, address) as (reader, writer)``: open_connection (or
    open_unix_connection); the writer is closed at exit."""
    reader, writer = await open_(kind, address, **kwargs)
    try:
        yield reader, writer
    finally:
        await close_writer(writer)


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


def sending(*pieces):
    """A connection handler that writes ``pieces``, drains, and returns (closing the writer)."""

    async def handler(reader, writer):
        for piece in pieces:
            writer.write(piece)
        await writer.drain()

    return handler


def run(loop, kind, sock_dir, handler, client, connections=1, **server_kwargs):
    """Serve ``handler``, run ``client(address)`` (which makes ``connections`` connections),
    then close the server and wait for the handlers. Returns what ``client`` returned."""
    handlers = Handlers(loop, handler)

    async def main():
        server, address = await start(loop, kind, sock_dir, handlers, **server_kwargs)
        try:
            return await client(address)
        finally:
            try:
                await asyncio.wait_for(handlers.join(connections), 10)
            finally:
                await close_server(server)

    return loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_echo(loop, kind, sock_dir):
    async def client(address):
        async with opened(kind, address) as (reader, writer):
            writer.write(b"hello ")
            writer.writelines([b"stream", b"s\n"])
            await writer.drain()
            return await reader.readline()

    assert run(loop, kind, sock_dir, echo, client) == b"hello streams\n"


def test_read_methods(loop, kind, sock_dir):
    handler = sending(b"line one\nline two\r\n0123456789", b"<record>END", b"tail without newline")

    async def client(address):
        async with opened(kind, address) as (reader, _writer):
            assert not reader.at_eof()
            assert await reader.readline() == b"line one\n"
            assert await reader.readline() == b"line two\r\n"
            assert await reader.readexactly(4) == b"0123"
            assert await reader.read(6) == b"456789"  # the rest of the first write, buffered
            assert await reader.readuntil(b"END") == b"<record>END"
            assert await reader.readuntil(b" ") == b"tail "
            rest = await reader.read()
            assert rest == b"without newline"
            assert reader.at_eof()
            assert await reader.readline() == b""
            assert await reader.read() == b""
            assert await reader.readexactly(0) == b""

    run(loop, kind, sock_dir, handler, client)


def test_readuntil_with_a_separator_split_across_writes(loop, kind, sock_dir):
    async def handler(reader, writer):
        for piece in (b"first--", b"--", b"second---", b"-"):
            writer.write(piece)
            await writer.drain()

    async def client(address):
        async with opened(kind, address) as (reader, _writer):
            received = []
            received.append(await reader.readuntil(b"----"))
            received.append(await reader.readuntil(b"----"))
            return received

    assert run(loop, kind, sock_dir, handler, client) == [b"first----", b"second----"]


def test_incomplete_read_when_the_peer_closes_early(loop, kind, sock_dir):
    async def client(address):
        async with opened(kind, address) as (reader, _writer):
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(10)
            assert info.value.partial == b"abcd"
            assert info.value.expected == 10
            assert reader.at_eof()

    run(loop, kind, sock_dir, sending(b"abcd"), client)


def test_readuntil_at_end_of_stream(loop, kind, sock_dir):
    async def client(address):
        async with opened(kind, address) as (reader, _writer):
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readuntil(b"\n")
            assert info.value.partial == b"no separator here"
            assert info.value.expected is None

    run(loop, kind, sock_dir, sending(b"no separator here"), client)


def test_reader_limit(loop, kind, sock_dir):
    async def client(address):
        async with opened(kind, address, limit=10) as (reader, _writer):
            with pytest.raises(ValueError, match="chunk"):
                await reader.readline()
            # readline() dropped the oversized line up to and including its separator.
            assert await reader.readline() == b"short\n"

    run(loop, kind, sock_dir, sending(b"x" * 100 + b"\nshort\n"), client)


def test_small_reader_limit_pauses_and_resumes_the_transport(loop, kind, sock_dir):
    # The reader pauses the transport when its buffer exceeds twice its limit and resumes it
    # as it is consumed: everything must arrive, in order.
    data = os.urandom(2 * MiB)

    async def client(address):
        async with opened(kind, address, limit=1024) as (reader, writer):
            received = bytearray()
            paused_seen = False
            while len(received) < len(data):
                paused_seen |= not writer.transport.is_reading()
                received += await reader.readexactly(min(4096, len(data) - len(received)))
            assert await reader.read() == b""
            return bytes(received), paused_seen

    received, paused_seen = run(loop, kind, sock_dir, sending(data), client)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    assert paused_seen


def test_large_payload_echo(loop, kind, sock_dir):
    data = os.urandom(8 * MiB)

    async def client(address):
        async with opened(kind, address) as (reader, writer):

            async def send():
                for offset in range(0, len(data), MiB):
                    writer.write(data[offset : offset + MiB])
                    await writer.drain()

            sending = asyncio.ensure_future(send())
            received = await reader.readexactly(len(data))
            await sending
            return received

    received = run(loop, kind, sock_dir, echo, client)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


def test_drain_waits_while_the_peer_does_not_read(loop, kind, sock_dir):
    go = loop.create_future()

    async def handler(reader, writer):
        await go
        total = 0
        while chunk := await reader.read(MiB):
            total += len(chunk)
        writer.write(str(total).encode())
        await writer.drain()

    async def client(address):
        async with opened(kind, address) as (reader, writer):
            try:
                transport = writer.transport
                high = transport.get_write_buffer_limits()[1]
                sent = 0
                while transport.get_write_buffer_size() <= high:
                    writer.write(b"d" * MiB)
                    sent += MiB
                    assert sent < 512 * MiB
                drain = asyncio.ensure_future(writer.drain())
                await poll_rounds(loop, 3)
                assert not drain.done()  # flow control engaged
                go.set_result(None)
                await drain
                assert transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[0]
                writer.write_eof()
                return sent, int(await reader.read())
            finally:
                if not go.done():
                    go.set_result(None)

    sent, received = run(loop, kind, sock_dir, handler, client)
    assert received == sent


def test_drain_returns_at_once_without_buffered_data(loop, kind, sock_dir):
    async def client(address):
        async with opened(kind, address) as (reader, writer):
            writer.write(b"small")
            drain = asyncio.ensure_future(writer.drain())
            await asyncio.sleep(0)
            assert drain.done()
            await drain
            assert await reader.readexactly(5) == b"small"

    run(loop, kind, sock_dir, echo, client)


def test_write_eof(loop, kind, sock_dir):
    async def handler(reader, writer):
        data = await reader.read()  # until EOF
        writer.write(b"got %d bytes" % len(data))
        await writer.drain()

    async def client(address):
        async with opened(kind, address) as (reader, writer):
            assert writer.can_write_eof()
            writer.write(b"z" * 12345)
            writer.write_eof()
            assert not writer.is_closing()
            return await reader.read()

    assert run(loop, kind, sock_dir, handler, client) == b"got 12345 bytes"


def test_close_and_wait_closed(loop, kind, sock_dir):
    server_saw = loop.create_future()

    async def handler(reader, writer):
        server_saw.set_result(await reader.read())

    async def client(address):
        _reader, writer = await open_(kind, address)
        writer.write(b"bye")
        assert not writer.is_closing()
        writer.close()
        assert writer.is_closing()
        await writer.wait_closed()
        await writer.wait_closed()  # again: at once
        assert await server_saw == b"bye"
        writer.close()  # again: nothing

    run(loop, kind, sock_dir, handler, client)


def test_drain_after_close_raises_connection_reset(loop, kind, sock_dir):
    async def client(address):
        _reader, writer = await open_(kind, address)
        writer.close()
        with pytest.raises(ConnectionResetError, match=r"^Connection lost$"):
            await writer.drain()
        await writer.wait_closed()

    run(loop, kind, sock_dir, echo, client)


def test_at_eof_after_the_peer_closes(loop, kind, sock_dir):
    async def client(address):
        async with opened(kind, address) as (reader, _writer):
            assert not reader.at_eof()
            assert await reader.readexactly(4) == b"data"
            assert await reader.read(10) == b""
            assert reader.at_eof()

    run(loop, kind, sock_dir, sending(b"data"), client)


def test_get_extra_info(loop, kind, sock_dir):
    seen = {}

    async def handler(reader, writer):
        seen["peername"] = writer.get_extra_info("peername")
        seen["sockname"] = writer.get_extra_info("sockname")
        seen["socket"] = writer.get_extra_info("socket")
        await reader.read()

    async def client(address):
        async with opened(kind, address) as (_reader, writer):
            assert writer.get_extra_info("peername") == address
            assert isinstance(writer.get_extra_info("socket"), asyncio.trsock.TransportSocket)
            assert writer.get_extra_info("missing", "default") == "default"
            return writer.get_extra_info("sockname")

    sockname = run(loop, kind, sock_dir, handler, client)
    assert seen["peername"] == sockname
    assert isinstance(seen["socket"], asyncio.trsock.TransportSocket)


def test_exception_in_the_connection_handler(loop, kind, sock_dir):
    errors = record_errors(loop)
    tasks = []

    async def handler(reader, writer):
        tasks.append(asyncio.current_task())
        await reader.readexactly(2)
        raise ZeroDivisionError("handler failed")

    async def main():
        server, address = await start(loop, kind, sock_dir, handler)
        try:
            async with opened(kind, address) as (reader, writer):
                writer.write(b"go")
                # asyncio reports the exception and closes the connection.
                assert await reader.read() == b""
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await close_server(server)

    loop.run_until_complete(main())
    assert [e["message"] for e in errors] == ["Unhandled exception in client_connected_cb"]
    assert isinstance(errors[0]["exception"], ZeroDivisionError)


def test_many_concurrent_clients(loop, kind, sock_dir):
    n = 100

    async def one(address, i):
        async with opened(kind, address) as (reader, writer):
            message = f"{i:04d}:".encode() * 50 + b"\n"
            writer.write(message)
            await writer.drain()
            return await reader.readline() == message

    async def client(address):
        return await asyncio.gather(*(one(address, i) for i in range(n)))

    assert run(loop, kind, sock_dir, echo, client, connections=n, backlog=n) == [True] * n


def test_open_connection_refused(loop):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        with pytest.raises(ConnectionRefusedError):
            loop.run_until_complete(asyncio.open_connection(*closed_port.getsockname()))


def test_open_connection_with_sock(loop, pair):
    a, b = pair

    async def main():
        reader, writer = await asyncio.open_connection(sock=a)
        try:
            writer.write(b"over a socketpair")
            await writer.drain()
            assert await loop.sock_recv(b, 100) == b"over a socketpair"
            await loop.sock_sendall(b, b"reply\n")
            assert await reader.readline() == b"reply\n"
        finally:
            await close_writer(writer)

    loop.run_until_complete(main())
