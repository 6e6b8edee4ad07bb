"""Threads: call_soon_threadsafe (ordering, waking a blocked loop, after close), the
executor API (run_in_executor, set_default_executor, shutdown_default_executor) and
asyncio.to_thread.

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
"""

import asyncio
import concurrent.futures
import contextvars
import sys
import threading
import time
import warnings

import pytest


def start_thread(target, *args):
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------------------------
# call_soon_threadsafe
# --------------------------------------------------------------------------------------------


def test_call_soon_threadsafe_from_many_threads_runs_every_callback_once_in_order(loop):
    threads, per_thread = 4, 5000
    received = {t: [] for t in range(threads)}
    total = threads * per_thread
    count = 0
    done = loop.create_future()

    def record(t, i):
        nonlocal count
        received[t].append(i)
        count += 1
        if count == total:
            done.set_result(None)

    barrier = threading.Barrier(threads)

    def producer(t):
        barrier.wait()
        for i in range(per_thread):
            loop.call_soon_threadsafe(record, t, i)

    async def main():
        workers = [start_thread(producer, t) for t in range(threads)]
        await done
        return workers

    workers = loop.run_until_complete(main())
    for worker in workers:
        worker.join()
    # Let anything scheduled after the total was reached (there must be nothing) run.
    loop.run_until_complete(asyncio.sleep(0.01))
    assert count == total
    for t in range(threads):
        assert received[t] == list(range(per_thread))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("delay", [0, 0.001, 0.01, 0.05])
def test_call_soon_threadsafe_wakes_a_loop_blocked_with_no_timers(loop, delay):
    # Nothing but the future is pending: the loop waits for I/O with no timeout, and only
    # the threadsafe call can wake it.
    for _ in range(3):
        future = loop.create_future()
        started = threading.Event()

        def wake():
            started.wait()
            time.sleep(delay)  # give the loop time to block (not needed for correctness)
            loop.call_soon_threadsafe(future.set_result, "woken")

        thread = start_thread(wake)
        loop.call_soon(started.set)
        assert loop.run_until_complete(future) == "woken"
        thread.join()


def test_call_soon_threadsafe_while_not_running_runs_on_the_next_run(loop):
    out = []
    thread = start_thread(lambda: loop.call_soon_threadsafe(out.append, "queued"))
    thread.join()
    assert out == []
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["queued"]


def test_call_soon_threadsafe_after_close_raises(loop):
    loop.close()
    errors = []

    def call():
        try:
            loop.call_soon_threadsafe(print)
        except RuntimeError as exc:
            errors.append(str(exc))

    start_thread(call).join()
    assert errors == ["Event loop is closed"]
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        loop.call_soon_threadsafe(print)


def test_call_soon_threadsafe_handle_can_be_cancelled(loop):
    out = []
    handle = loop.call_soon_threadsafe(out.append, "cancelled")
    handle.cancel()
    assert handle.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == []


def test_future_completed_from_a_thread_via_call_soon_threadsafe(loop):
    async def main():
        future = loop.create_future()
        start_thread(lambda: loop.call_soon_threadsafe(future.set_result, threading.get_ident()))
        return await future

    assert loop.run_until_complete(main()) != threading.get_ident()


def test_run_coroutine_threadsafe_from_another_thread(loop):
    results = []

    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    def worker():
        results.append(asyncio.run_coroutine_threadsafe(double(21), loop).result(timeout=10))

    async def main():
        thread = start_thread(worker)
        while thread.is_alive():
            await asyncio.sleep(0.001)

    loop.run_until_complete(main())
    assert results == [42]


def test_loop_running_in_a_worker_thread(loop_factory):
    loop = loop_factory()
    ready = threading.Event()
    results = {}

    def run():
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            asyncio.set_event_loop(None)

    async def where():
        await asyncio.sleep(0.001)
        return threading.get_ident(), asyncio.get_running_loop()

    thread = start_thread(run)
    try:
        assert ready.wait(10)
        assert loop.is_running()
        with pytest.raises(RuntimeError, match="Cannot close a running event loop"):
            loop.close()
        results["ident"], results["loop"] = asyncio.run_coroutine_threadsafe(where(), loop).result(
            10
        )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    assert not thread.is_alive()
    assert results == {"ident": thread.ident, "loop": loop}
    assert not loop.is_running()
    # The main thread has no running loop, and can now run this one itself.
    assert loop.run_until_complete(where())[0] == threading.get_ident()


def test_two_loops_running_at_once_in_two_threads(loop_factory):
    loops = [loop_factory(), loop_factory()]
    barrier = threading.Barrier(2)
    seen = []

    def run(lp):
        async def main():
            barrier.wait(10)  # both loops are running now
            await asyncio.sleep(0.001)
            return asyncio.get_running_loop()

        seen.append(lp.run_until_complete(main()) is lp)

    threads = [start_thread(run, lp) for lp in loops]
    for thread in threads:
        thread.join(20)
    assert seen == [True, True]


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------


def test_run_in_executor_returns_the_result_from_a_worker_thread(loop):
    async def main():
        return await loop.run_in_executor(None, lambda a, b: (a + b, threading.get_ident()), 2, 3)

    (value, ident) = loop.run_until_complete(main())
    assert value == 5
    assert ident != threading.get_ident()


def test_run_in_executor_propagates_exceptions(loop):
    def failing():
        raise KeyError("from executor")

    with pytest.raises(KeyError, match="from executor"):
        loop.run_until_complete(loop.run_in_executor(None, failing))


def test_run_in_executor_with_a_given_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="given-executor") as executor:
        name = loop.run_until_complete(
            loop.run_in_executor(executor, lambda: threading.current_thread().name)
        )
    assert name.startswith("given-executor")


def test_set_default_executor(loop):
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="default-executor")
    loop.set_default_executor(executor)
    name = loop.run_until_complete(
        loop.run_in_executor(None, lambda: threading.current_thread().name)
    )
    assert name.startswith("default-executor")
    loop.run_until_complete(loop.shutdown_default_executor())
    assert executor._shutdown


def test_set_default_executor_rejects_other_executors(loop):
    class NotAThreadPool(concurrent.futures.Executor):
        pass

    with pytest.raises(TypeError, match="executor must be ThreadPoolExecutor"):
        loop.set_default_executor(NotAThreadPool())


def test_shutdown_default_executor_joins_the_worker_threads(loop):
    thread = loop.run_until_complete(loop.run_in_executor(None, threading.current_thread))
    assert thread.is_alive()
    loop.run_until_complete(loop.shutdown_default_executor())
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, print)


def test_shutdown_default_executor_with_a_timeout(loop):
    """Python 3.12's timeout= (how long to wait for the worker threads to be joined): a job
    that ends in time is waited for and the threads are joined, without a warning. 3.11 has
    no such argument."""
    thread = loop.run_until_complete(loop.run_in_executor(None, threading.current_thread))
    loop.run_in_executor(None, time.sleep, 0.05)
    if sys.version_info < (3, 12):
        with pytest.raises(TypeError, match="unexpected keyword argument 'timeout'"):
            loop.run_until_complete(loop.shutdown_default_executor(timeout=10))
        loop.run_until_complete(loop.shutdown_default_executor())
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            loop.run_until_complete(loop.shutdown_default_executor(timeout=10))
    assert not thread.is_alive()


def test_run_in_executor_on_a_closed_loop_raises(loop):
    loop.close()
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        loop.run_in_executor(None, print)


def test_executor_function_can_call_back_into_the_loop(loop):
    async def main():
        future = loop.create_future()

        def work():
            loop.call_soon_threadsafe(future.set_result, "from worker")
            return "returned"

        returned = await loop.run_in_executor(None, work)
        return returned, await future

    assert loop.run_until_complete(main()) == ("returned", "from worker")


def test_many_concurrent_executor_jobs(loop):
    async def main():
        return await asyncio.gather(*(loop.run_in_executor(None, pow, i, 2) for i in range(200)))

    assert loop.run_until_complete(main()) == [i * i for i in range(200)]


def test_cancelling_the_awaiting_task_cancels_the_executor_future(loop):
    release = threading.Event()

    async def main():
        future = loop.run_in_executor(None, release.wait, 10)
        task = asyncio.ensure_future(future)
        await asyncio.sleep(0)
        future.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()

    loop.run_until_complete(main())


def test_to_thread_runs_in_a_worker_with_the_current_context(loop):
    var = contextvars.ContextVar("var")

    async def main():
        var.set("propagated")
        return await asyncio.to_thread(lambda: (var.get(), threading.get_ident()))

    value, ident = loop.run_until_complete(main())
    assert value == "propagated"
    assert ident != threading.get_ident()
