"""No leaks: file descriptors, poller registrations and memory come back to their baseline
after tens of thousands of connections, millions of callbacks and thousands of cancelled
socket operations.

Every test runs on stock asyncio and on oxloop (see tests/conftest.py); asyncio passing the
same thresholds shows that they are fair. How things are measured:

* file descriptors: the entries of /proc/self/fd, counted after the connections are closed,
  with the cyclic garbage collector paused (closing must release them by itself), then again
  after ``gc.collect()``;
* memory: the resident set size (/proc/self/statm) after a warm-up (so that caches, free
  lists and allocator arenas have grown to their working size) and at the end, both after
  ``gc.collect()``. The allowed growth, ``RSS_SLACK``, is below what a leak of 100 bytes per
  connection over 100,000 connections would cost (9.5 MiB), and above the noise of both loops;
* poller registrations: ``reliability_helpers.watched_fds``.

The callback test runs its full 10 million callbacks on oxloop and a tenth of them on stock
asyncio (which runs callbacks about twice as slowly), to keep this file's run time modest; the
threshold is the same.
"""

import asyncio
import collections
import gc
import socket
import sys
import weakref

import pytest

from reliability_helpers import (
    PING,
    MiB,
    churn,
    fd_count,
    gc_disabled,
    rss_bytes,
    start_echo_server,
    wait_for_count,
    watched_fds,
)

RSS_SLACK = 8 * MiB
WAVE = 500  # connections open at once


# --------------------------------------------------------------------------------------------
# File descriptors
# --------------------------------------------------------------------------------------------


def run_then_check_fds_after_gc(loop, main):
    """Runs ``main`` (which returns the fd count it started from) with the collector paused,
    then checks that the count is back to that baseline after a collection too."""
    with gc_disabled():
        baseline = loop.run_until_complete(main)
    gc.collect()
    assert fd_count() == baseline


@pytest.mark.timeout(120)
def test_10000_tcp_connections_give_back_every_fd(loop):
    """10,000 TCP connections (create_server + create_connection), 500 at a time, each with one
    echoed message: after every wave, and after the server is closed, the fd count is back to
    its baseline without any garbage collection; it stays there after ``gc.collect()``."""
    stats = collections.Counter()

    async def main():
        baseline, watched = fd_count(), watched_fds(loop)
        server, open_client = await start_echo_server(loop, "tcp", None, stats)
        with_server = fd_count()
        assert with_server == baseline + 1

        async def after_wave(opened):
            await wait_for_count(stats, "server lost", opened, loop)
            assert fd_count() == with_server

        await churn(loop, open_client, 10_000, WAVE, reset=True, after_wave=after_wave)
        server.close()
        await server.wait_closed()
        assert stats["server lost"] == 10_000
        assert fd_count() == baseline
        assert watched_fds(loop) == watched
        return baseline

    run_then_check_fds_after_gc(loop, main())


@pytest.mark.timeout(120)
def test_10000_unix_stream_connections_give_back_every_fd(loop, sock_dir):
    """The same over Unix sockets, with asyncio streams (start_unix_server +
    open_unix_connection, each side closing its writer and waiting for wait_closed)."""
    stats = collections.Counter()

    async def handle(reader, writer):
        writer.write(await reader.readexactly(len(PING)))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        stats["server lost"] += 1

    async def one(path):
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(PING)
        echo = await reader.readexactly(len(PING))
        writer.close()
        await writer.wait_closed()
        return echo

    async def main():
        baseline, watched = fd_count(), watched_fds(loop)
        path = f"{sock_dir}/streams.sock"
        server = await asyncio.start_unix_server(handle, path, backlog=2048)
        with_server = fd_count()
        for opened in range(WAVE, 10_001, WAVE):
            assert await asyncio.gather(*(one(path) for _ in range(WAVE))) == [PING] * WAVE
            await wait_for_count(stats, "server lost", opened, loop)
            assert fd_count() == with_server
        server.close()
        await server.wait_closed()
        assert fd_count() == baseline
        assert watched_fds(loop) == watched
        return baseline

    run_then_check_fds_after_gc(loop, main())


class Endpoint(asyncio.Protocol):
    """One end of a connection: keeps its transport; ``lost`` is done at connection_lost."""

    def __init__(self, loop, endpoints):
        self.transport = None
        self.lost = loop.create_future()
        endpoints.append(self)

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_closed_transports_and_servers_leave_no_registration(loop_factory, sock_dir):
    """A TCP and a Unix server, and connections to both closed every way (client close, abort,
    close while reading is paused, close with 1 MiB unsent, server side closing first):
    afterwards the loop watches no more fds than before and none of theirs is open; the loop
    then closes and gives back its own fds too."""
    before_loop = fd_count()
    loop = loop_factory()
    server_ends, client_ends = [], []
    path = f"{sock_dir}/reg.sock"

    async def main():
        baseline, watched = fd_count(), watched_fds(loop)
        tcp = await loop.create_server(lambda: Endpoint(loop, server_ends), "127.0.0.1", 0)
        unix = await loop.create_unix_server(lambda: Endpoint(loop, server_ends), path)
        for _ in range(10):
            await loop.create_connection(
                lambda: Endpoint(loop, client_ends), *tcp.sockets[0].getsockname()
            )
            await loop.create_unix_connection(lambda: Endpoint(loop, client_ends), path)
        while len(server_ends) < len(client_ends):
            await asyncio.sleep(0.001)
        assert watched_fds(loop) > watched

        client_first = []
        for i, end in enumerate(client_ends):
            way = i % 5
            if way == 0:
                end.transport.close()
            elif way == 1:
                end.transport.abort()
            elif way == 2:
                end.transport.pause_reading()
                end.transport.close()
            elif way == 3:
                end.transport.write(b"x" * MiB)  # more than the socket buffers take
                end.transport.close()
            else:
                continue  # way 4: the server side closes first, below
            client_first.append(end.lost)
        await asyncio.gather(*client_first)
        for end in server_ends:
            end.transport.close()
        await asyncio.gather(*(end.lost for end in server_ends + client_ends))
        for server in (tcp, unix):
            server.close()
            await server.wait_closed()
        assert fd_count() == baseline
        assert watched_fds(loop) == watched

    loop.run_until_complete(main())
    loop.close()
    assert fd_count() == before_loop


# --------------------------------------------------------------------------------------------
# Cancelled socket operations
# --------------------------------------------------------------------------------------------


def fill_send_buffer(sock):
    """Send on non-blocking ``sock`` until its send buffer (and the peer's receive buffer)
    is full."""
    chunk = b"x" * 65536
    while True:
        try:
            sock.send(chunk)
        except BlockingIOError:
            return


async def drain(loop, sock):
    """Read ``sock`` until the end of the stream; return how many bytes came."""
    total = 0
    while chunk := await loop.sock_recv(sock, 1 << 20):
        total += len(chunk)
    return total


SOCK_OPERATIONS = ["sock_recv", "sock_recv_into", "sock_accept", "sock_sendall"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("operation", SOCK_OPERATIONS)
def test_sock_operations_cancelled_10000_times_leave_nothing(loop, operation):
    """An operation that cannot complete (nothing to receive, nobody connecting, the send
    buffer full), started and cancelled 10,000 times on the same socket: the loop then
    watches no more fds than before, keeps no reference to the socket or to any of the
    cancelled tasks, and the same operation still completes once it can."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    buffer = bytearray(16)
    target = listener if operation == "sock_accept" else a
    start = {
        "sock_recv": lambda: loop.sock_recv(a, 16),
        "sock_recv_into": lambda: loop.sock_recv_into(a, buffer),
        "sock_accept": lambda: loop.sock_accept(listener),
        "sock_sendall": lambda: loop.sock_sendall(a, b"y" * 65536),
    }[operation]
    if operation == "sock_sendall":
        fill_send_buffer(a)

    async def cancel_many():
        refs = []
        for _ in range(10_000):
            task = asyncio.ensure_future(start())
            await asyncio.sleep(0)  # the operation starts, and waits for its fd
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            refs.append(weakref.ref(task))
        return refs

    async def complete_once():
        if operation == "sock_recv":
            b.send(b"after")
            assert await start() == b"after"
        elif operation == "sock_recv_into":
            b.send(b"after")
            assert await start() == 5 and buffer[:5] == b"after"
        elif operation == "sock_accept":
            with socket.create_connection(listener.getsockname()) as client:
                conn, address = await start()
                conn.close()
                assert address == client.getsockname()
        else:
            reader = asyncio.ensure_future(drain(loop, b))
            await start()
            a.shutdown(socket.SHUT_WR)
            assert await reader > 65536

    try:
        watched, fds, sock_refs = watched_fds(loop), fd_count(), sys.getrefcount(target)
        refs = loop.run_until_complete(cancel_many())
        gc.collect()
        assert watched_fds(loop) == watched
        assert fd_count() == fds
        assert sys.getrefcount(target) == sock_refs
        assert [ref for ref in refs if ref() is not None] == []
        loop.run_until_complete(complete_once())
    finally:
        for sock in (listener, a, b):
            sock.close()


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_memory_stays_flat_across_100000_connections(loop):
    """100,000 TCP connections, 500 at a time, each with one echoed message: the resident
    memory after them is within ``RSS_SLACK`` of what it was after a warm-up of 2,000."""
    stats = collections.Counter()

    async def main():
        server, open_client = await start_echo_server(loop, "tcp", None, stats)
        await churn(loop, open_client, 2_000, WAVE, reset=True)
        gc.collect()
        warm = rss_bytes()
        await churn(loop, open_client, 100_000, WAVE, reset=True)
        server.close()
        await server.wait_closed()
        await wait_for_count(stats, "server lost", 102_000, loop)
        gc.collect()
        return rss_bytes() - warm

    growth = loop.run_until_complete(main())
    assert growth < RSS_SLACK, f"resident memory grew by {growth / MiB:.1f} MiB"


CALLBACKS = {"oxloop": 10_000_000, "asyncio": 1_000_000}  # see the module docstring
BATCH = 100_000  # callbacks of one ``callback_batch``


async def callback_batch(loop):
    """100,000 callbacks of every kind, in 10 rounds of 10,000 (so that few are alive at
    once): 6,000 in 10 call_soon chains, 1,000 call_later timers that fire, 1,000 that are
    cancelled first, and 1,000 futures, each completed by a call_soon and then running a done
    callback. Fails unless exactly the right callbacks ran."""
    counts = collections.Counter()

    def step(left, finished):
        counts["chain steps"] += 1
        if left:
            loop.call_soon(step, left - 1, finished)
        elif counts["chain steps"] % 6_000 == 0:
            finished.set_result(None)

    def fired(i):
        counts["timers fired"] += 1

    def never(i):
        counts["cancelled timers run"] += 1

    def done(future):
        counts["future results"] += future.result()

    for round_ in range(1, 11):
        finished = loop.create_future()
        for _ in range(10):
            loop.call_soon(step, 599, finished)
        for i in range(1_000):
            loop.call_later(0, fired, i)
            loop.call_later(3600, never, i).cancel()
        futures = [loop.create_future() for _ in range(1_000)]
        for future in futures:
            future.add_done_callback(done)
            loop.call_soon(future.set_result, 1)
        await finished
        await asyncio.gather(*futures)
        while counts["timers fired"] < 1_000 * round_ or counts["future results"] < 1_000 * round_:
            await asyncio.sleep(0)
    assert counts == {"chain steps": 60_000, "timers fired": 10_000, "future results": 10_000}


@pytest.mark.timeout(300)
def test_memory_stays_flat_across_10_million_callbacks(loop, loop_kind):
    """10 million callbacks on oxloop, 1 million on stock asyncio (``callback_batch`` over and
    over): the resident memory after them is within ``RSS_SLACK`` of what it was after a
    warm-up of two batches."""

    async def main():
        for _ in range(2):
            await callback_batch(loop)
        gc.collect()
        warm = rss_bytes()
        for _ in range(CALLBACKS[loop_kind] // BATCH):
            await callback_batch(loop)
        gc.collect()
        return rss_bytes() - warm

    growth = loop.run_until_complete(main())
    assert growth < RSS_SLACK, f"resident memory grew by {growth / MiB:.1f} MiB"
