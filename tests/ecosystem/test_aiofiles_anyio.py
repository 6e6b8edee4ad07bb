"""aiofiles and anyio used for real, on stock asyncio and on oxloop.

aiofiles does its file I/O in the loop's default executor, so its tests also check
``loop.run_in_executor`` directly (results, exceptions, many calls at once). They run in
the ``loop`` fixture's loop of each kind, and finish like ``asyncio.run`` does, with
``loop.shutdown_default_executor()``.

anyio runs on its asyncio backend with the loop factory of each kind:
``anyio.run(main, backend="asyncio", backend_options={"loop_factory": ...})``; ``main`` first
asserts that the running loop is of the expected class. Covered: task groups and cancel
scopes, sleeps and timeouts, memory object streams, TCP and UDP sockets, worker threads
(``to_thread``/``from_thread``, blocking portals), child processes, files (``anyio.Path``,
``open_file``), signals, and the synchronization primitives.
"""

import asyncio
import functools
import os
import random
import signal
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import aiofiles
import aiofiles.os
import aiofiles.ospath
import aiofiles.tempfile
import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from anyio.abc import UNIXSocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from helpers.loops import LOOP_FACTORIES, LOOP_TYPES
from helpers.processes import PYTHON, child_env

MiB = 1024 * 1024


def run_in(loop, coro_fn, *args):
    """Run ``coro_fn(*args)`` in ``loop``, then shut its default executor down (as
    ``asyncio.run`` does); returns the coroutine's result."""
    try:
        return loop.run_until_complete(coro_fn(*args))
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())


# --------------------------------------------------------------------------------------------
# loop.run_in_executor
# --------------------------------------------------------------------------------------------


class Boom(Exception):
    """The exception raised in worker threads by these tests."""


def explode(message):
    raise Boom(message)


def test_run_in_executor_results_and_exceptions(loop):
    """The default executor runs functions in another thread and returns their results;
    exceptions come back as the same object type with their arguments; an explicit executor
    works too; 200 calls at once all complete with their own results."""

    async def main():
        main_thread = threading.get_ident()
        assert await loop.run_in_executor(None, pow, 3, 4) == 81
        assert await loop.run_in_executor(None, threading.get_ident) != main_thread
        assert await loop.run_in_executor(None, functools.partial(int, "ff", base=16)) == 255
        with pytest.raises(Boom, match="from a thread"):
            await loop.run_in_executor(None, explode, "from a thread")
        with ThreadPoolExecutor(max_workers=2) as executor:
            assert await loop.run_in_executor(executor, sorted, [3, 1, 2]) == [1, 2, 3]
        results = await asyncio.gather(*(loop.run_in_executor(None, pow, i, 2) for i in range(200)))
        assert results == [i * i for i in range(200)]

    run_in(loop, main)


def test_run_in_executor_cancelled_wait(loop):
    """Cancelling the await of an executor call cancels the awaiting task only: the loop stays
    usable and later calls succeed."""

    async def main():
        release = threading.Event()
        future = loop.run_in_executor(None, release.wait, 10)
        task = asyncio.ensure_future(future)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        assert await loop.run_in_executor(None, str.upper, "still works") == "STILL WORKS"

    run_in(loop, main)


# --------------------------------------------------------------------------------------------
# aiofiles
# --------------------------------------------------------------------------------------------


def test_aiofiles_binary_roundtrip(loop, tmp_path):
    """3 MiB written in 64 KiB pieces read back whole, and piecewise after seek/tell."""
    data = random.Random(2).randbytes(3 * MiB)
    path = tmp_path / "data.bin"

    async def main():
        async with aiofiles.open(path, "wb") as f:
            for start in range(0, len(data), 64 * 1024):
                await f.write(data[start : start + 64 * 1024])
            assert await f.tell() == len(data)
        async with aiofiles.open(path, "rb") as f:
            assert await f.read() == data
            await f.seek(MiB)
            assert await f.read(10) == data[MiB : MiB + 10]
            assert await f.tell() == MiB + 10
        assert path.read_bytes() == data

    run_in(loop, main)


def test_aiofiles_text_lines(loop, tmp_path):
    """Text mode with an encoding: writelines, ``async for`` over the lines, readline and
    append mode."""
    lines = [f"line {i}: {'é' * (i % 7)}ß€\n" for i in range(2000)]
    path = tmp_path / "text.txt"

    async def main():
        async with aiofiles.open(path, "w", encoding="utf-8") as f:
            await f.writelines(lines)
        async with aiofiles.open(path, encoding="utf-8") as f:
            assert [line async for line in f] == lines
        async with aiofiles.open(path, "a", encoding="utf-8") as f:
            await f.write("last\n")
        async with aiofiles.open(path, encoding="utf-8") as f:
            assert await f.readline() == lines[0]
            rest = await f.read()
        assert rest == "".join(lines[1:]) + "last\n"

    run_in(loop, main)


def test_aiofiles_os_calls(loop, tmp_path):
    """``aiofiles.os``: stat, rename, listdir, mkdir/rmdir, remove, exists, and errors raised
    by the underlying call (FileNotFoundError) reaching the caller."""

    async def main():
        source, target = tmp_path / "a.bin", tmp_path / "b.bin"
        source.write_bytes(b"x" * 12345)
        assert (await aiofiles.os.stat(source)).st_size == 12345
        await aiofiles.os.rename(source, target)
        assert not await aiofiles.ospath.exists(source)
        assert await aiofiles.ospath.isfile(target)
        await aiofiles.os.mkdir(tmp_path / "sub")
        assert sorted(await aiofiles.os.listdir(tmp_path)) == ["b.bin", "sub"]
        await aiofiles.os.rmdir(tmp_path / "sub")
        await aiofiles.os.remove(target)
        assert await aiofiles.os.listdir(tmp_path) == []
        with pytest.raises(FileNotFoundError):
            await aiofiles.os.remove(target)
        with pytest.raises(FileNotFoundError):
            await aiofiles.os.stat(source)

    run_in(loop, main)


def test_aiofiles_tempfile(loop):
    """``aiofiles.tempfile``: a named temporary file (visible on disk while open, removed at
    exit), a temporary directory, and a spooled temporary file rolled over to disk."""

    async def main():
        async with aiofiles.tempfile.TemporaryDirectory() as directory:
            async with aiofiles.tempfile.NamedTemporaryFile("w+b", dir=directory) as f:
                await f.write(b"temporary")
                await f.flush()
                with open(f.name, "rb") as plain:
                    assert plain.read() == b"temporary"
                await f.seek(0)
                assert await f.read() == b"temporary"
                name = f.name
            assert not os.path.exists(name)
            assert os.path.isdir(directory)
        assert not os.path.exists(directory)

        async with aiofiles.tempfile.SpooledTemporaryFile(max_size=1024, mode="w+b") as f:
            await f.write(b"s" * 4096)
            await f.seek(0)
            assert await f.read() == b"s" * 4096

    run_in(loop, main)


def test_aiofiles_concurrent_tasks(loop, tmp_path):
    """50 tasks each write, then re-read and remove, their own 64 KiB file at the same time:
    every task gets its own data back."""

    async def worker(n):
        data = random.Random(n).randbytes(64 * 1024)
        path = tmp_path / f"file{n}.bin"
        async with aiofiles.open(path, "wb") as f:
            await f.write(data)
        async with aiofiles.open(path, "rb") as f:
            same = await f.read() == data
        await aiofiles.os.remove(path)
        return same

    async def main():
        assert await asyncio.gather(*(worker(n) for n in range(50))) == [True] * 50
        assert os.listdir(tmp_path) == []

    run_in(loop, main)


# --------------------------------------------------------------------------------------------
# anyio on the asyncio backend
# --------------------------------------------------------------------------------------------


def run_anyio(kind, main, *args):
    """``anyio.run(main, *args)`` on the asyncio backend with the loop factory of ``kind``;
    asserts first that the running loop is of that kind's class."""

    async def checked():
        assert isinstance(asyncio.get_running_loop(), LOOP_TYPES[kind])
        return await main(*args)

    return anyio.run(
        checked, backend="asyncio", backend_options={"loop_factory": LOOP_FACTORIES[kind]}
    )


def test_anyio_run_returns_result(leak_check):
    """``anyio.run`` uses the given loop factory, runs main as an asyncio task that anyio
    knows, and returns main's result."""

    async def main(value):
        await anyio.sleep(0)
        assert anyio.get_current_task().id == id(asyncio.current_task())
        return value * 2

    assert run_anyio(leak_check.kind, main, 21) == 42


def test_anyio_task_group_and_cancel_scopes(leak_check):
    """Task groups wait for their children; cancelling a scope cancels its tasks (a shielded
    scope finishes its work); a failing child cancels its siblings and the group raises an
    ExceptionGroup with the failure."""

    async def main():
        results = []

        async def worker(n):
            await anyio.sleep(0.01 * n)
            results.append(n)

        async with anyio.create_task_group() as tg:
            for n in (3, 1, 2):
                tg.start_soon(worker, n)
        assert results == [1, 2, 3]

        shielded_done = anyio.Event()

        async def shielded():
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.02)
                shielded_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 60)
            tg.start_soon(shielded)
            await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
        assert tg.cancel_scope.cancel_called and shielded_done.is_set()

        cancelled = []

        async def sleeper():
            try:
                await anyio.sleep(60)
            except anyio.get_cancelled_exc_class():
                cancelled.append(True)
                raise

        async def failing():
            await anyio.sleep(0.01)
            raise ValueError("child failed")

        with pytest.raises(ExceptionGroup) as info:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleeper)
                tg.start_soon(failing)
        assert [type(e) for e in info.value.exceptions] == [ValueError]
        assert cancelled == [True]

        async def started_task(*, task_status=anyio.TASK_STATUS_IGNORED):
            task_status.started("ready")
            await anyio.sleep(60)

        async with anyio.create_task_group() as tg:
            assert await tg.start(started_task) == "ready"
            tg.cancel_scope.cancel()

    run_anyio(leak_check.kind, main)


def test_anyio_sleep_and_timeouts(leak_check):
    """``anyio.sleep`` lasts at least its delay; ``fail_after`` raises TimeoutError when its
    deadline passes; ``move_on_after`` cancels quietly and reports it; neither fires when
    the work finishes in time."""

    async def main():
        start = anyio.current_time()
        await anyio.sleep(0.05)
        assert anyio.current_time() - start >= 0.05

        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.02):
                await anyio.sleep(60)
        with anyio.move_on_after(0.02) as scope:
            await anyio.sleep(60)
        assert scope.cancelled_caught

        with anyio.fail_after(10):
            await anyio.sleep(0)
        with anyio.move_on_after(10) as scope:
            await anyio.sleep(0)
        assert not scope.cancelled_caught

    run_anyio(leak_check.kind, main)


def test_anyio_memory_object_streams(leak_check):
    """Memory object streams: an unbuffered and a buffered channel carry every item in order
    to cloned receivers; iteration ends when all senders are closed; sending to a closed
    receiver raises BrokenResourceError."""

    async def main():
        for buffer in (0, 5):
            send, receive = anyio.create_memory_object_stream[int](buffer)
            received = []

            async def consume(stream):
                async with stream:
                    async for item in stream:
                        received.append(item)

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume, receive.clone())
                tg.start_soon(consume, receive)
                async with send:
                    for i in range(100):
                        await send.send(i)
            assert sorted(received) == list(range(100))

        send, receive = anyio.create_memory_object_stream[int](1)
        await receive.aclose()
        with pytest.raises(anyio.BrokenResourceError):
            await send.send(1)
        await send.aclose()

    run_anyio(leak_check.kind, main)


def test_anyio_tcp_echo(leak_check):
    """``create_tcp_listener`` serving an echo handler, five clients of ``connect_tcp`` sending
    256 KiB each at once and reading it back exactly; connecting to a closed port fails with
    OSError."""

    async def echo(client):
        async with client:
            async for chunk in client:
                await client.send(chunk)

    async def one_client(port, n):
        data = random.Random(n).randbytes(256 * 1024)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.send, data)
                received = await BufferedByteReceiveStream(stream).receive_exactly(len(data))
        assert received == data

    async def main():
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo)
            async with anyio.create_task_group() as clients:
                for n in range(5):
                    clients.start_soon(one_client, port, n)
            tg.cancel_scope.cancel()

        with pytest.raises(OSError):
            await anyio.connect_tcp("127.0.0.1", port)

    run_anyio(leak_check.kind, main)


def test_anyio_unix_sockets(leak_check, sock_dir):
    """anyio's Unix sockets (built on the loop's ``add_reader``/``add_writer``): an echo over
    ``create_unix_listener``/``connect_unix`` with 1 MiB from four clients at once, and a file
    descriptor passed with ``send_fds``/``receive_fds``."""
    path = os.path.join(sock_dir, "anyio.sock")

    async def echo(client):
        async with client:
            async for chunk in client:
                await client.send(chunk)

    async def one_client(n):
        data = random.Random(n).randbytes(MiB)
        async with await anyio.connect_unix(path) as stream:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.send, data)
                assert await BufferedByteReceiveStream(stream).receive_exactly(len(data)) == data

    async def main():
        async with (
            await anyio.create_unix_listener(path) as listener,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(listener.serve, echo)
            async with anyio.create_task_group() as clients:
                for n in range(4):
                    clients.start_soon(one_client, n)
            tg.cancel_scope.cancel()

        left, right = socket.socketpair()
        read_end, write_end = os.pipe()
        async with (
            await UNIXSocketStream.from_socket(left) as sender,
            await UNIXSocketStream.from_socket(right) as receiver,
        ):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender.send_fds, b"pipe", [write_end])
                message, fds = await receiver.receive_fds(4, 1)
        os.close(write_end)
        assert message == b"pipe" and len(fds) == 1
        with open(fds[0], "wb") as passed:  # the passed copy of the pipe's write end
            passed.write(b"through the passed fd")
        with open(read_end, "rb") as pipe:
            assert pipe.read() == b"through the passed fd"

    run_anyio(leak_check.kind, main)


def test_anyio_wait_readable_and_getaddrinfo(leak_check):
    """``anyio.wait_readable``/``wait_writable`` on a raw socket wake when it becomes ready;
    ``anyio.getaddrinfo`` resolves through the loop."""

    async def main():
        left, right = socket.socketpair()
        with left, right:
            left.setblocking(False)
            await anyio.wait_writable(left)
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.wait_readable, left)
                await anyio.wait_all_tasks_blocked()
                right.send(b"wake up")
            assert left.recv(100) == b"wake up"

        infos = await anyio.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        assert infos[0][4] == ("127.0.0.1", 80)

    run_anyio(leak_check.kind, main)


def test_anyio_udp(leak_check):
    """Connected UDP sockets of anyio exchange datagrams both ways, with their sender address."""

    async def main():
        async with await anyio.create_udp_socket(local_host="127.0.0.1") as server:
            port = server.extra(anyio.abc.SocketAttribute.local_port)
            async with await anyio.create_connected_udp_socket("127.0.0.1", port) as client:
                for i in range(5):
                    await client.send(b"ping %d" % i)
                    data, address = await server.receive()
                    assert data == b"ping %d" % i
                    await server.sendto(data.upper(), *address)
                    assert await client.receive() == b"PING %d" % i

    run_anyio(leak_check.kind, main)


def test_anyio_threads(leak_check):
    """``to_thread.run_sync`` runs in a worker thread and returns results or raises; from that
    thread, ``from_thread.run``/``run_sync`` call back into the event loop's thread."""

    async def main():
        loop_thread = threading.get_ident()

        async def in_loop(value):
            await anyio.sleep(0)
            return threading.get_ident(), value + 1

        def in_worker():
            thread_id, value = anyio.from_thread.run(in_loop, 1)
            assert thread_id == loop_thread
            assert anyio.from_thread.run_sync(threading.get_ident) == loop_thread
            return threading.get_ident(), value

        worker_thread, value = await anyio.to_thread.run_sync(in_worker)
        assert worker_thread != loop_thread and value == 2
        with pytest.raises(Boom):
            await anyio.to_thread.run_sync(explode, "in a worker")
        results = await asyncio.gather(*(anyio.to_thread.run_sync(pow, i, 3) for i in range(50)))
        assert results == [i**3 for i in range(50)]

    run_anyio(leak_check.kind, main)


def test_anyio_blocking_portal(leak_check):
    """A blocking portal runs its own loop (of the given factory) in a thread: synchronous code
    calls coroutines in it and gets their results and exceptions."""

    async def where():
        await anyio.sleep(0)
        return type(asyncio.get_running_loop())

    async def failing():
        raise Boom("in the portal")

    options = {"loop_factory": LOOP_FACTORIES[leak_check.kind]}
    with anyio.from_thread.start_blocking_portal("asyncio", backend_options=options) as portal:
        assert issubclass(portal.call(where), LOOP_TYPES[leak_check.kind])
        assert portal.call(anyio.to_thread.run_sync, sum, [1, 2, 3]) == 6
        with pytest.raises(Boom):
            portal.call(failing)


def test_anyio_processes(leak_check):
    """``run_process`` collects a child's output and exit status (``check`` raises on failure);
    ``open_process`` talks to a child line by line over its pipes, streams 4 MiB through a
    ``cat`` child and back, and terminates a child (its death by SIGTERM is reported)."""

    upper = "import sys\nfor line in sys.stdin: print(line.strip().upper(), flush=True)"
    cat = "import shutil, sys; shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer)"
    data = random.Random(4).randbytes(4 * MiB)

    async def feed(process):
        await process.stdin.send(data)
        await process.stdin.aclose()

    async def main():
        result = await anyio.run_process(
            [PYTHON, "-c", "print('out'); import sys; sys.exit(3)"], check=False, env=child_env()
        )
        assert (result.returncode, result.stdout) == (3, b"out\n")
        with pytest.raises(subprocess.CalledProcessError):
            await anyio.run_process([PYTHON, "-c", "raise SystemExit(1)"], env=child_env())

        async with await anyio.open_process([PYTHON, "-c", upper], env=child_env()) as process:
            lines = BufferedByteReceiveStream(process.stdout)
            for word in (b"alpha", b"beta", b"gamma"):
                await process.stdin.send(word + b"\n")
                assert await lines.receive_until(b"\n", 100) == word.upper()
            await process.stdin.aclose()
            assert await process.wait() == 0

        async with await anyio.open_process([PYTHON, "-c", cat], env=child_env()) as process:
            async with anyio.create_task_group() as tg:
                tg.start_soon(feed, process)
                assert (
                    await BufferedByteReceiveStream(process.stdout).receive_exactly(len(data))
                    == data
                )
            assert await process.wait() == 0

        async with await anyio.open_process(
            [PYTHON, "-c", "import time; time.sleep(60)"]
        ) as process:
            process.terminate()
            assert await process.wait() == -signal.SIGTERM

    run_anyio(leak_check.kind, main)


def test_anyio_files(leak_check, tmp_path):
    """``anyio.Path`` (write/read text and 2 MiB of bytes, stat, iterdir, rename, unlink) and
    ``anyio.open_file`` (async line iteration)."""
    data = random.Random(3).randbytes(2 * MiB)

    async def main():
        directory = anyio.Path(tmp_path)
        blob = directory / "blob.bin"
        await blob.write_bytes(data)
        assert (await blob.stat()).st_size == len(data)
        assert await blob.read_bytes() == data

        text = directory / "lines.txt"
        await text.write_text("".join(f"{i}\n" for i in range(500)))
        async with await anyio.open_file(text) as f:
            assert [line async for line in f] == [f"{i}\n" for i in range(500)]

        renamed = await text.rename(directory / "renamed.txt")
        assert sorted([p.name async for p in directory.iterdir()]) == ["blob.bin", "renamed.txt"]
        await renamed.unlink()
        await blob.unlink()
        assert not await blob.exists()

    run_anyio(leak_check.kind, main)


def test_anyio_signal_receiver(leak_check):
    """``open_signal_receiver`` delivers a signal the process sends itself, and the handler is
    removed afterwards (the leak check verifies the previous disposition is back)."""

    async def main():
        with anyio.open_signal_receiver(signal.SIGUSR1) as signals:
            os.kill(os.getpid(), signal.SIGUSR1)
            with anyio.fail_after(5):
                async for signum in signals:
                    assert signum == signal.SIGUSR1
                    break

    run_anyio(leak_check.kind, main)


def test_anyio_synchronization(leak_check):
    """Events wake every waiter; a Lock admits one task at a time, a Semaphore(3) and a
    CapacityLimiter(2) at most that many; a Condition wakes its waiters on notify."""

    async def main():
        event = anyio.Event()
        woken = []

        async def waiter(n):
            await event.wait()
            woken.append(n)

        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(waiter, n)
            await anyio.sleep(0.01)
            assert woken == []
            event.set()
        assert sorted(woken) == list(range(5))

        for make, limit in (
            (anyio.Lock, 1),
            (lambda: anyio.Semaphore(3), 3),
            (lambda: anyio.CapacityLimiter(2), 2),
        ):
            primitive = make()
            inside, most = 0, 0

            async def critical():
                nonlocal inside, most
                async with primitive:
                    inside += 1
                    most = max(most, inside)
                    await anyio.sleep(0.001)
                    inside -= 1

            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(critical)
            assert most == limit

        condition = anyio.Condition()
        notified = []

        async def wait_for_notify(n):
            async with condition:
                await condition.wait()
                notified.append(n)

        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(wait_for_notify, n)
            await anyio.wait_all_tasks_blocked()
            async with condition:
                condition.notify_all()
        assert sorted(notified) == [0, 1, 2]

    run_anyio(leak_check.kind, main)
