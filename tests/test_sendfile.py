"""loop.sendfile (over TCP and Unix stream transports) and loop.sock_sendfile.

Covered: whole files, offset and count, a count beyond the end of the file, empty files; the
file position afterwards; fallback=True/False with a regular file and with a file object that
has no file descriptor (io.BytesIO: only the fallback can send it); data written before and
after sendfile keeps its place in the stream; write() during sendfile; the argument errors
asyncio raises (text-mode file, negative or non-integer offset and count, a closing
transport) and that the transport still works after them; sock_sendfile on a non-blocking
socket. Data is always compared by hash.

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
A test taking ``kind`` runs over TCP and over Unix sockets (helpers: helpers/net.py).
"""

import asyncio
import hashlib
import io
import os
import socket

import pytest

from helpers.net import MiB, fill_write_buffer, poll_rounds, raw_peer, recv_exactly, run_raises

SIZE = 3 * MiB + 12345


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


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


async def sendfile_and_receive(loop, conn, file, size, **kwargs):
    """Run loop.sendfile with a concurrent reader of ``size`` bytes on the peer."""
    reading = asyncio.ensure_future(recv_exactly(loop, conn.peer, size))
    try:
        sent = await loop.sendfile(conn.transport, file, **kwargs)
    except BaseException:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        raise
    return sent, await reading


async def still_works(loop, conn):
    """The transport still sends and receives."""
    conn.transport.write(b"still writing")
    assert await recv_exactly(loop, conn.peer, 13) == b"still writing"
    before = len(conn.protocol.data)
    await loop.sock_sendall(conn.peer, b"still reading")
    assert (await conn.protocol.wait_data(before + 13))[before:] == b"still reading"


# --------------------------------------------------------------------------------------------
# loop.sendfile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fallback", [True, False])
def test_sendfile_whole_file(loop, kind, sock_dir, data_file, content, fallback):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            with open(data_file, "rb") as f:
                sent, received = await sendfile_and_receive(loop, conn, f, SIZE, fallback=fallback)
                assert sent == SIZE
                assert f.tell() == SIZE
            assert digest(received) == digest(content)
            await still_works(loop, conn)

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    "source, offset, count",
    [
        ("file", 1000, 100_000),
        ("file", 0, 1),
        ("file", SIZE - 10, 10),
        ("file", 5000, None),
        ("file", 0, None),
        ("file", 10, 2 * SIZE),  # a count beyond the end of the file: up to the end
        # io.BytesIO has no fileno(): the native path is not available, the fallback reads it.
        ("bytesio", 0, None),
        ("bytesio", 100, 5000),
        ("bytesio", SIZE - 3, None),
    ],
)
def test_sendfile_offset_and_count(loop, kind, sock_dir, data_file, content, source, offset, count):
    expected = content[offset : None if count is None else offset + count]

    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            with open(data_file, "rb") if source == "file" else io.BytesIO(content) as f:
                sent, received = await sendfile_and_receive(
                    loop, conn, f, len(expected), offset=offset, count=count
                )
                assert sent == len(expected)
                assert f.tell() == offset + len(expected)
            assert digest(received) == digest(expected)
            await still_works(loop, conn)

    loop.run_until_complete(main())


def test_sendfile_of_an_empty_file(loop, kind, sock_dir, tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")

    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            with open(path, "rb") as f:
                assert await loop.sendfile(conn.transport, f) == 0
                assert f.tell() == 0
            await still_works(loop, conn)

    loop.run_until_complete(main())


def test_sendfile_keeps_its_place_between_writes(loop, kind, sock_dir, data_file, content):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            total = 7 + SIZE + 8
            reading = asyncio.ensure_future(recv_exactly(loop, conn.peer, total))
            conn.transport.write(b"header:")
            with open(data_file, "rb") as f:
                assert await loop.sendfile(conn.transport, f) == SIZE
            conn.transport.write(b":trailer")
            received = await reading
            assert received[:7] == b"header:"
            assert received[-8:] == b":trailer"
            assert digest(received[7:-8]) == digest(content)

    loop.run_until_complete(main())


def test_sendfile_waits_for_buffered_data_first(loop, kind, sock_dir, data_file, content):
    async def main():
        async with raw_peer(loop, kind, sock_dir, rcvbuf=64 * 1024) as conn:
            head = await fill_write_buffer(conn.transport)  # the peer does not read yet
            with open(data_file, "rb") as f:
                sending = asyncio.ensure_future(loop.sendfile(conn.transport, f))
                received = await recv_exactly(loop, conn.peer, len(head) + SIZE)
                assert await sending == SIZE
            assert received[: len(head)] == head
            assert digest(received[len(head) :]) == digest(content)

    loop.run_until_complete(main())


def test_write_during_sendfile_raises(loop, kind, sock_dir, tmp_path):
    content = os.urandom(16) * (16 * MiB // 16)
    path = tmp_path / "big.bin"
    path.write_bytes(content)

    async def main():
        async with raw_peer(loop, kind, sock_dir, rcvbuf=64 * 1024) as conn:
            with open(path, "rb") as f:
                sending = asyncio.ensure_future(loop.sendfile(conn.transport, f))
                await poll_rounds(loop, 3)
                assert not sending.done()  # the peer does not read: sendfile is in progress
                with pytest.raises(
                    RuntimeError, match=r"^unable to write; sendfile is in progress$"
                ):
                    conn.transport.write(b"interleaved")
                received = await recv_exactly(loop, conn.peer, len(content))
                assert await sending == len(content)
            assert digest(received) == digest(content)
            await still_works(loop, conn)

    loop.run_until_complete(main())


def test_sendfile_without_descriptor_and_fallback_false(loop, kind, sock_dir, content):
    async def main():
        async with raw_peer(loop, kind, sock_dir) as conn:
            f = io.BytesIO(content)
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sendfile(conn.transport, f, fallback=False)
            assert f.tell() == 0
            await still_works(loop, conn)

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    "mode, kwargs, exc_type, message",
    [
        ("rb", {"offset": -1}, ValueError, "offset must be a non-negative integer (got -1)"),
        ("rb", {"offset": "1"}, TypeError, "offset must be a non-negative integer (got '1')"),
        ("rb", {"offset": 1.0}, TypeError, "offset must be a non-negative integer (got 1.0)"),
        ("rb", {"count": 0}, ValueError, "count must be a positive integer (got 0)"),
        ("rb", {"count": -5}, ValueError, "count must be a positive integer (got -5)"),
        ("rb", {"count": 1.5}, TypeError, "count must be a positive integer (got 1.5)"),
        ("r", {}, ValueError, "file should be opened in binary mode"),  # a text file
    ],
)
def test_sendfile_argument_errors(loop, sock_dir, data_file, mode, kwargs, exc_type, message):
    async def main():
        async with raw_peer(loop, "tcp", sock_dir) as conn:
            with open(data_file, mode, encoding=None if "b" in mode else "latin-1") as f:
                with pytest.raises(exc_type) as info:
                    await loop.sendfile(conn.transport, f, **kwargs)
                assert str(info.value) == message
                assert f.tell() == 0
            await still_works(loop, conn)

    loop.run_until_complete(main())


def test_sendfile_on_a_closing_transport(loop, sock_dir, data_file):
    async def main():
        async with raw_peer(loop, "tcp", sock_dir) as conn:
            conn.transport.close()
            with open(data_file, "rb") as f:
                with pytest.raises(RuntimeError) as info:
                    await loop.sendfile(conn.transport, f)
                assert str(info.value) == "Transport is closing"
                assert f.tell() == 0
            assert await conn.protocol.lost is None

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# loop.sock_sendfile
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["unix-socketpair", "tcp"])
def stream_pair(request):
    """Two connected non-blocking stream sockets: conftest's Unix ``pair``, or a TCP pair."""
    if request.param == "unix-socketpair":
        return request.getfixturevalue("pair")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for sock in (a, b):
        sock.setblocking(False)
        request.addfinalizer(sock.close)
    return a, b


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
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
        dgram.setblocking(False)
        with open(data_file, "rb") as f:
            cases = [
                ((dgram, f), "only SOCK_STREAM type sockets are supported"),
                ((a, f, -1), "offset must be a non-negative integer (got -1)"),
                ((a, f, 0, 0), "count must be a positive integer (got 0)"),
            ]
            for args, message in cases:
                run_raises(loop, loop.sock_sendfile(*args), ValueError, message)
        with open(data_file, encoding="latin-1") as f:
            run_raises(
                loop, loop.sock_sendfile(a, f), ValueError, "file should be opened in binary mode"
            )
