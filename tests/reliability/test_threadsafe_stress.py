"""Threads hammering a loop: call_soon_threadsafe at full speed from several threads while
the loop runs timers and a socket echo, threads racing stop() and close(),
run_coroutine_threadsafe from many threads, and an asyncio.to_thread fan-out.

Every test runs on stock asyncio and on oxloop (see tests/conftest.py), whose behaviour is the
expectation; the fixtures also check that no thread, fd or task outlives a test. The checks are
on results (what ran, how often, in which order, with which value), never on timing.
"""

import asyncio
import contextvars
import socket
import threading

import pytest

THREADS = 4


def start_threads(target, count=THREADS):
    """Start ``count`` threads running ``target(index)``; returns them."""
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


async def echo_rounds(loop, rounds):
    """``rounds`` request/reply exchanges over a socket pair (sock_sendall/sock_recv on one
    end, an echo task on the other); returns the replies."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def echo():
        while data := await loop.sock_recv(b, 4096):
            await loop.sock_sendall(b, data)

    echoing = asyncio.ensure_future(echo())
    replies = []
    try:
        for i in range(rounds):
            message = f"{i:08d}".encode()
            await loop.sock_sendall(a, message)
            reply = b""
            while len(reply) < len(message):
                reply += await loop.sock_recv(a, len(message) - len(reply))
            replies.append(reply)
        a.shutdown(socket.SHUT_WR)
        await echoing
    finally:
        echoing.cancel()
        a.close()
        b.close()
    return replies


async def timer_chain(loop, count, delay):
    """``count`` call_later timers, each scheduling the next; returns how many fired."""
    fired = 0
    done = loop.create_future()

    def tick():
        nonlocal fired
        fired += 1
        if fired < count:
            loop.call_later(delay, tick)
        else:
            done.set_result(None)

    loop.call_later(delay, tick)
    await done
    return fired


@pytest.mark.timeout(120)
def test_call_soon_threadsafe_flood_runs_every_callback_once_in_order(loop):
    """4 threads each call ``call_soon_threadsafe(cb, thread, seq)`` 200,000 times as fast as
    they can while the loop runs a chain of timers and 200 socket echo exchanges: every
    callback runs exactly once, on the loop's thread, in order within each thread; the timers
    and the echo complete with the right results."""
    per_thread = 200_000
    received = [[] for _ in range(THREADS)]
    ran_in = set()
    remaining = THREADS * per_thread
    all_ran = loop.create_future()
    barrier = threading.Barrier(THREADS)

    def record(thread, seq):
        nonlocal remaining
        received[thread].append(seq)
        ran_in.add(threading.get_ident())
        remaining -= 1
        if remaining == 0:
            all_ran.set_result(None)

    def produce(thread):
        barrier.wait()
        for seq in range(per_thread):
            loop.call_soon_threadsafe(record, thread, seq)

    async def main():
        producers = start_threads(produce)
        fired, replies, _ = await asyncio.gather(
            timer_chain(loop, 50, 0.001), echo_rounds(loop, 200), all_ran
        )
        for thread in producers:
            thread.join()
        await asyncio.sleep(0)  # anything (wrongly) scheduled twice would run now
        return fired, replies

    fired, replies = loop.run_until_complete(main())
    assert fired == 50
    assert replies == [f"{i:08d}".encode() for i in range(200)]
    assert remaining == 0
    assert ran_in == {threading.get_ident()}
    for thread in range(THREADS):
        assert received[thread] == list(range(per_thread)), f"thread {thread}"


@pytest.mark.timeout(120)
def test_threads_racing_stop_and_close(loop_factory):
    """10 rounds: 4 threads call ``call_soon_threadsafe`` in a tight loop, each also asking
    the loop to stop after its 1,000th call; the loop runs until stopped and is closed while
    the threads keep calling. Each thread's calls then end in exactly
    ``RuntimeError('Event loop is closed')``, nothing else fails, and the callbacks that ran
    are, for each thread, its first calls in order with none repeated."""
    main_thread = threading.get_ident()
    for _ in range(10):
        loop = loop_factory()
        ran = [[] for _ in range(THREADS)]
        ran_in = set()
        outcome = [None] * THREADS
        barrier = threading.Barrier(THREADS)

        def record(thread, seq):
            ran[thread].append(seq)
            ran_in.add(threading.get_ident())

        def produce(thread):
            barrier.wait()
            seq = 0
            try:
                while True:
                    loop.call_soon_threadsafe(record, thread, seq)
                    seq += 1
                    if seq == 1000:
                        loop.call_soon_threadsafe(loop.stop)
            except BaseException as exc:  # what ended the calls, checked below
                outcome[thread] = (exc, seq)

        producers = start_threads(produce)
        loop.run_forever()
        loop.close()
        for thread in producers:
            thread.join()

        for thread, (exc, calls) in enumerate(outcome):
            assert type(exc) is RuntimeError and str(exc) == "Event loop is closed", repr(exc)
            assert ran[thread] == list(range(len(ran[thread])))
            assert len(ran[thread]) <= calls
        assert ran_in <= {main_thread}
        with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
            loop.call_soon_threadsafe(print)


@pytest.mark.timeout(120)
def test_run_coroutine_threadsafe_from_many_threads(loop):
    """8 threads each submit 250 coroutines with ``run_coroutine_threadsafe`` and collect the
    results (every 50th raises), then submit one that never ends and cancel it: every thread
    gets its own results and exceptions, every coroutine ran on the loop's thread, and the
    cancelled ones saw CancelledError inside the loop."""
    threads, per_thread = 8, 250
    loop_thread = threading.get_ident()
    results = {}
    cancelled_inside = []
    finished = loop.create_future()

    async def work(thread, seq):
        await asyncio.sleep(0)
        assert threading.get_ident() == loop_thread
        if seq % 50 == 49:
            raise ValueError(thread, seq)
        return thread, seq

    async def forever(thread, started):
        started.set()
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            cancelled_inside.append(thread)
            raise

    def client(thread):
        futures = [
            asyncio.run_coroutine_threadsafe(work(thread, seq), loop) for seq in range(per_thread)
        ]
        out = []
        for future in futures:
            try:
                out.append(future.result(timeout=60))
            except ValueError as exc:
                out.append(("raised", *exc.args))
        started = threading.Event()
        never = asyncio.run_coroutine_threadsafe(forever(thread, started), loop)
        started.wait(timeout=60)
        never.cancel()
        out.append(never.cancelled())
        results[thread] = out
        if len(results) == threads:
            loop.call_soon_threadsafe(finished.set_result, None)

    async def main():
        start_threads(client, threads)
        await finished
        while len(cancelled_inside) < threads:  # the cancellations reach the loop
            await asyncio.sleep(0.001)

    loop.run_until_complete(main())
    for thread in range(threads):
        expected = [
            ("raised", thread, seq) if seq % 50 == 49 else (thread, seq)
            for seq in range(per_thread)
        ]
        assert results[thread] == [*expected, True]
    assert sorted(cancelled_inside) == list(range(threads))


@pytest.mark.timeout(60)
def test_to_thread_fan_out(loop):
    """500 ``asyncio.to_thread`` calls gathered at once, each calling back into the loop
    (``run_coroutine_threadsafe``) from its worker: every call returns its own result (or
    exception, for every 100th) and saw the caller's context variables, none ran on the
    loop's thread, and ``shutdown_default_executor`` then joins the workers."""
    var = contextvars.ContextVar("var")
    loop_thread = threading.get_ident()

    async def double(i):
        await asyncio.sleep(0)
        return 2 * i

    def work(i):
        if i % 100 == 99:
            raise KeyError(i)
        doubled = asyncio.run_coroutine_threadsafe(double(i), loop).result(timeout=60)
        return i, var.get(), doubled, threading.get_ident()

    async def main():
        var.set("from main")
        calls = [asyncio.to_thread(work, i) for i in range(500)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await loop.shutdown_default_executor()
        return results

    results = loop.run_until_complete(main())
    for i, result in enumerate(results):
        if i % 100 == 99:
            assert type(result) is KeyError and result.args == (i,)
        else:
            assert result[:3] == (i, "from main", 2 * i)
            assert result[3] != loop_thread
