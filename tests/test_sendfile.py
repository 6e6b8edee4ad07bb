"""loop.sendfile (over TCP and Unix stream transports) and loop.sock_sendfile.

Covered: whole files, offset and count, a count beyond the end of the file, empty files; the
file position afterwards; fallback=True/False with a regular file and with a file object that
has no file descriptor (io.BytesIO: only the fallback can send it); data written before and
after sendfile keeps its place in the stream; write() during sendfile; the argument errors
asyncio raises (text-mode file, negative or non-integer offset and count, a closing
transport) and that the transport still works after them; sock_sendfile on a non-blocking
socket. Data is always compared by hash.

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
"""

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import socket
import tempfile

import pytest

KINDS = ["tcp", "unix"]
MiB = 1024 * 1024
SIZE = 3 * MiB + 12345


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sock_dir():
    """A short directory for Unix socket paths (pytest's tmp_path can exceed their 107 bytes)."""
    path = tempfile.mkdtemp(prefix="oxl-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def content():
    return os.urandom(SIZE)


@pytest.fixture
def data_file(tmp_path, content):
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    return path


def digest(data):
    return hashlib.sha256(data).hexdigest()


class Recorder(asyncio.Protocol):
    def __init__(self, loop):
        self.loop = loop
        self.data = bytearray()
        self.lost = loop.create_future()
        self._waiters = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)

    async def wait_data(self, size):
        while len(self.data) < size:
            assert not self.lost.done(), "connection lost"
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            await waiter
        return bytes(self.data)


async def recv_exactly(loop, sock, size):
    out = bytearray()
    while len(out) < size:
        chunk = await loop.sock_recv(sock, min(size - len(out), 256 * 1024))
        if not chunk:
            raise AssertionError(f"end of stream after {len(out)} of {size} bytes")
        out += chunk
    return bytes(out)


def make_listener(kind, sock_dir, rcvbuf=None):
    if kind == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("127.0.0.1", 0)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = os.path.join(sock_dir, "sendfile.sock")
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(address)
    sock.listen(4)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def connection(loop, kind, sock_dir, rcvbuf=None):
    """A transport (create_connection/create_unix_connection) and the plain socket it is
    connected to; both closed at exit."""
    listener = make_listener(kind, sock_dir, rcvbuf)
    accept = asyncio.ensure_future(loop.sock_accept(listener))
    peer = transport = protocol = None
    try:
        address = listener.getsockname()
        if kind == "tcp":
            transport, protocol = await loop.create_connection(lambda: Recorder(loop), *address)
        else:
            transport, protocol = await loop.create_unix_connection(lambda: Recorder(loop), address)
        peer, _ = await accept
        yield transport, protocol, peer
    finally:
        if not accept.done():
            accept.cancel()
        result = (await asyncio.gather(accept, return_exceptions=True))[0]
        if isinstance(result, tuple):
            result[0].close()
        if transport is not None:
            if not protocol.lost.done():
                transport.abort()
            await asyncio.wait([protocol.lost], timeout=5)
        listener.close()


async def sendfile_and_receive(loop, transport, peer, file, size, **kwargs):
    """Run loop.sendfile with a concurrent reader of ``size`` bytes on ``peer``."""
    reading = asyncio.ensure_future(recv_exactly(loop, peer, size))
    try:
        sent = await loop.sendfile(transport, file, **kwargs)
    except BaseException:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        raise
    return sent, await reading


async def poll_rounds(loop, n=2):
    """Let the loop poll for I/O ``n`` times: I/O that was ready before has been handled after."""
    a, b = socket.socketpair()
    try:
        for _ in range(n):
            ready = loop.create_future()
            loop.add_reader(b.fileno(), lambda: ready.done() or ready.set_result(None))
            a.send(b"x")
            try:
                await ready
            finally:
                loop.remove_reader(b.fileno())
            b.recv(1)
    finally:
        a.close()
        b.close()


async def still_works(loop, transport, protocol, peer):
    """The transport still sends and receives."""
    transport.write(b"still writing")
    assert await recv_exactly(loop, peer, 13) == b"still writing"
    before = len(protocol.data)
    await loop.sock_sendall(peer, b"still reading")
    assert (await protocol.wait_data(before + 13))[before:] == b"still reading"


# --------------------------------------------------------------------------------------------
# loop.sendfile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fallback", [True, False])
def test_sendfile_whole_file(loop, kind, sock_dir, data_file, content, fallback):
    async def main():
        async with connection(loop, kind, sock_dir) as (transport, protocol, peer):
            with open(data_file, "rb") as f:
                sent, received = await sendfile_and_receive(loop, transport, peer, f, SIZE, fallback=fallback)
                assert sent == SIZE
                assert f.tell() == SIZE
            assert digest(received) == digest(content)
            await still_works(loop, transport, protocol, peer)

    loop.run_until_complete(main())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "offset, count",
    [(1000, 100_000), (0, 1), (SIZE - 10, 10), (5000, None), (0, None)],
)
def test_sendfile_offset_and_count(loop, kind, sock_dir, data_file, content, offset, count):
    expected = content[offset : None if count is None else offset + count]

    async def main():
        async with connection(loop, kind, sock_dir) as (transport, protocol, peer):
            with open(data_file, "rb") as f:
                sent, received = await sendfile_and_receive(
                    loop, transport, peer, f, len(expected), offset=offset, count=count
                )
                assert sent == len(expected)
                assert f.tell() == offset + len(expected)
            assert digest(received) == digest(expected)
            await still_works(loop, transport, protocol, peer)

    loop.run_until_complete(main())


@pytest.mark.parametrize("kind", KINDS)
def test_sendfile_count_beyond_the_end_of_the_file(loop, kind, sock_dir, data_file, content):
    async def main():
        async with connection(loop, kind, sock_dir) as (transport, protocol, peer):
            with open(data_file, "rb") as f:
                sent, received = await sendfile_and_receive(
                    loop, transport, peer, f, SIZE - 10, offset=10, count=2 * SIZE
                )
                assert sent == SIZE - 10
                assert f.tell() == SIZE
            assert digest(received) == digest(content[10:])
            await still_works(loop, transport, protocol, peer)

    loop.run_until_complete(main())


@pytest.mark.parametrize("kind", KINDS)
def test_sendfile_of_an_empty_file(loop, kind, sock_dir, tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")

    async def main():
        async with connection(loop, kind, sock_dir) as (transport, protocol, peer):
            with open(path, "rb") as f:
                assert await loop.sendfile(transport, f) == 0
                assert f.tell() == 0
            await still_works(loop, transport, protocol, peer)

    loop.run_until_complete(main())


@pytest.mark.parametrize("kind", KINDS)
def test_sendfile_keeps_its_place_between_writes(loop, kind, sock_dir, data_file, content):
    async def main():
        async with connection(loop, kind, sock_dir) as (transport, protocol, peer):
            total = 7 + SIZE + 8
            reading = asyncio.ensure_future(recv_exactly(loop, peer, total))
            transport.write(b"header:")
            with open(data_file, "rb") as f:
                assert await loop.sendfile(transport, f) == SIZE
            transport.write(b":trailer")
            received = await reading
            assert received[:7] == b"header:"
            assert received[-8:] == b":trailer"
            assert digest(received[7:-8]) == digest(content)

    loop.run_until_complete(main())


@pytest.mark.parametrize("kind", KINDS)
def test_sendfile_waits_for_buffered_data_first(loop, kind, sock_dir, data_file, content):
    async def main():
        async with connection(loop, kind, sock_dir, rcvbuf=64 * 1024) as (transport, protocol, peer):
            head = b""
            while transport.get_write_buffer_size() == 0:  # the peer does not read yet
                chunk = os.urandom(16) * (MiB // 16)
                transport.write(chunk)
                head += chunk
            with open(data_file, "rb") as f:
                sending = asyncio.ensure_future(loop.sendfile(transport, f))
                received = await recv_exactly(loop, peer, len(head) + SIZE)
                assert await sending == SIZE
            assert received[: len(head)] == head
            assert digest(received[len(head) :]) == digest(content)

    loop.run_until_complete(main())


@pytest.mark.parametrize("kind", KINDS)
def test_write_during_sendfile_raises(loop, kind, sock_dir, tmp_path):
    content = os.urandom(16) * (16 * MiB // 16)
    path = tmp_path / "big.bin"
    path.write_bytes(content)

    async def main():
        async with connection(loop, kind, sock_dir, rcvbuf=64 * 1024) as (transport, protocol, peer):
            with open(path, "rb") as f:
                sending = asyncio.ensure_future(loop.sendfile(transport, f))
                await poll_rounds(loop, 3)
                assert not sending.done()  # the peer does not read: sendfile is in progress
                with pytest.raises(RuntimeError, match="^unable to write; sendfile is in progress$"):
                    transport.write(b"interleaved")
                received = await recv_exactly(loop, peer, len(content))
                assert await sending == len(content)
            assert digest(received) == digest(content)
            await still_works(loop, transport, protocol, peer)

    loop.run_until_complete(main())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("offset, count", [(0, None), (100, 5000), (SIZE - 3, None)])
def test_sendfile_of_a_file_without_descriptor_uses_the_fallback(loop, kind, sock_dir, content, offset, count):
    # io.BytesIO has no fileno(): the native path is not available, the fallback reads it.
    expected = content[offset : None if count is None else offset + count]

    async def main():
        async with connection(loop, kind, sock_dir) as (transport, protocol, peer):
            f = io.BytesIO(content)
            sent, received = await sendfile_and_receive(
                loop, transport, peer, f, len(expected), offset=offset, count=count
            )
            assert sent == len(expected)
            assert f.tell() == offset + len(expected)
            assert digest(received) == digest(expected)
            await still_works(loop, transport, protocol, peer)

    loop.run_until_complete(main())


@pytest.mark.parametrize("kind", KINDS)
def test_sendfile_without_descriptor_and_fallback_false(loop, kind, sock_dir, content):
    async def main():
        async with connection(loop, kind, sock_dir) as (transport, protocol, peer):
            f = io.BytesIO(content)
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sendfile(transport, f, fallback=False)
            assert f.tell() == 0
            await still_works(loop, transport, protocol, peer)

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    "kwargs, exc_type, message",
    [
        ({"offset": -1}, ValueError, "offset must be a non-negative integer (got -1)"),
        ({"offset": "1"}, TypeError, "offset must be a non-negative integer (got '1')"),
        ({"offset": 1.0}, TypeError, "offset must be a non-negative integer (got 1.0)"),
        ({"count": 0}, ValueError, "count must be a positive integer (got 0)"),
        ({"count": -5}, ValueError, "count must be a positive integer (got -5)"),
        ({"count": 1.5}, TypeError, "count must be a positive integer (got 1.5)"),
    ],
)
def test_sendfile_argument_errors(loop, sock_dir, data_file, kwargs, exc_type, message):
    async def main():
        async with connection(loop, "tcp", sock_dir) as (transport, protocol, peer):
            with open(data_file, "rb") as f:
                with pytest.raises(exc_type) as info:
                    await loop.sendfile(transport, f, **kwargs)
                assert str(info.value) == message
                assert f.tell() == 0
            await still_works(loop, transport, protocol, peer)

    loop.run_until_complete(main())


def test_sendfile_of_a_text_file(loop, sock_dir, data_file):
    async def main():
        async with connection(loop, "tcp", sock_dir) as (transport, protocol, peer):
            with open(data_file, "r", encoding="latin-1") as f:
                with pytest.raises(ValueError) as info:
                    await loop.sendfile(transport, f)
                assert str(info.value) == "file should be opened in binary mode"
            await still_works(loop, transport, protocol, peer)

    loop.run_until_complete(main())


def test_sendfile_on_a_closing_transport(loop, sock_dir, data_file):
    async def main():
        async with connection(loop, "tcp", sock_dir) as (transport, protocol, peer):
            transport.close()
            with open(data_file, "rb") as f:
                with pytest.raises(RuntimeError) as info:
                    await loop.sendfile(transport, f)
                assert str(info.value) == "Transport is closing"
                assert f.tell() == 0
            assert await protocol.lost is None

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# loop.sock_sendfile
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["unix-socketpair", "tcp"])
def stream_pair(request):
    """Two connected non-blocking stream sockets."""
    if request.param == "tcp":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
        listener.close()
    else:
        a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("offset, count", [(0, None), (777, 1_000_000), (SIZE - 5, 100)])
def test_sock_sendfile(loop, stream_pair, data_file, content, offset, count):
    a, b = stream_pair
    expected = content[offset : None if count is None else offset + count]

    async def main():
        with open(data_file, "rb") as f:
            reading = asyncio.ensure_future(recv_exactly(loop, b, len(expected)))
            sent = await loop.sock_sendfile(a, f, offset, count)
            received = await reading
            assert sent == len(expected)
            assert f.tell() == offset + len(expected)
        assert digest(received) == digest(expected)
        # The socket is still usable and registered nowhere.
        await loop.sock_sendall(a, b"after")
        assert await recv_exactly(loop, b, 5) == b"after"
        assert loop.remove_writer(a) is False

    loop.run_until_complete(main())


def test_sock_sendfile_of_a_file_without_descriptor(loop, stream_pair, content):
    a, b = stream_pair

    async def main():
        f = io.BytesIO(content)
        reading = asyncio.ensure_future(recv_exactly(loop, b, SIZE))
        assert await loop.sock_sendfile(a, f) == SIZE
        assert digest(await reading) == digest(content)
        assert f.tell() == SIZE

    loop.run_until_complete(main())


def test_sock_sendfile_argument_errors(loop, stream_pair, data_file):
    a, _ = stream_pair
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dgram.setblocking(False)
    try:
        with open(data_file, "rb") as f:
            with pytest.raises(ValueError) as info:
                loop.run_until_complete(loop.sock_sendfile(dgram, f))
            assert str(info.value) == "only SOCK_STREAM type sockets are supported"
            with pytest.raises(ValueError) as info:
                loop.run_until_complete(loop.sock_sendfile(a, f, -1))
            assert str(info.value) == "offset must be a non-negative integer (got -1)"
            with pytest.raises(ValueError) as info:
                loop.run_until_complete(loop.sock_sendfile(a, f, 0, 0))
            assert str(info.value) == "count must be a positive integer (got 0)"
        with open(data_file, "r", encoding="latin-1") as f:
            with pytest.raises(ValueError) as info:
                loop.run_until_complete(loop.sock_sendfile(a, f))
            assert str(info.value) == "file should be opened in binary mode"
    finally:
        dgram.close()
