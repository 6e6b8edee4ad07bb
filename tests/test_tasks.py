"""Tasks and futures on the loop (create_task names and contexts, task factories,
create_future) and asyncio's own primitives running on it: sleep, gather, wait, wait_for,
timeout, TaskGroup, shield, Queue, Lock, Event, Condition, Semaphore, cancellation.

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
"""

import asyncio
import contextvars
import sys

import pytest

var = contextvars.ContextVar("var", default="unset")


async def sleep_recording_cancellation(cancelled):
    """Sleeps an hour; if cancelled meanwhile, appends True to ``cancelled`` and re-raises."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        cancelled.append(True)
        raise


# --------------------------------------------------------------------------------------------
# create_task / create_future / task factory
# --------------------------------------------------------------------------------------------


def test_create_task_name(loop):
    async def work():
        return asyncio.current_task().get_name()

    named = loop.create_task(work(), name="my-task")
    unnamed = loop.create_task(work())
    assert named.get_name() == "my-task"
    assert unnamed.get_name().startswith("Task-")
    assert loop.run_until_complete(named) == "my-task"
    loop.run_until_complete(unnamed)


def test_create_task_runs_in_the_given_context(loop):
    context = contextvars.copy_context()
    context.run(var.set, "given")

    async def work():
        seen = var.get()
        var.set("changed in task")
        return seen

    assert loop.run_until_complete(loop.create_task(work(), context=context)) == "given"
    assert context[var] == "changed in task"
    assert var.get() == "unset"


def test_create_task_copies_the_current_context(loop):
    async def work():
        seen = var.get()
        var.set("changed in task")
        return seen

    def create():
        var.set("current")
        return loop.create_task(work())

    outer = contextvars.copy_context()
    task = outer.run(create)
    assert loop.run_until_complete(task) == "current"
    assert outer[var] == "current"


def test_task_factory_is_used_by_create_task(loop):
    created = []

    class MyTask(asyncio.Task):
        pass

    def factory(lp, coro, **kwargs):
        created.append((lp, kwargs))
        return MyTask(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def work():
        return 5

    task = loop.create_task(work(), name="via-factory")
    assert isinstance(task, MyTask)
    assert task.get_name() == "via-factory"
    assert loop.run_until_complete(task) == 5

    async def main():
        # ensure_future (here through gather) goes through the factory too.
        return await asyncio.gather(work(), work())

    assert loop.run_until_complete(main()) == [5, 5]
    # create_task, run_until_complete's task for main(), gather's two tasks.
    assert created == [(loop, {})] * 4
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_task_factory_gets_the_context_only_when_given(loop):
    """create_task passes context= to the task factory only when it is given, and sets the
    name on the task the factory returned."""
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append(sorted(kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    async def work():
        return var.get()

    context = contextvars.copy_context()
    context.run(var.set, "given")
    loop.set_task_factory(factory)
    plain = loop.create_task(work(), name="plain")
    in_context = loop.create_task(work(), name="in context", context=context)
    assert loop.run_until_complete(asyncio.gather(plain, in_context)) == ["unset", "given"]
    assert (plain.get_name(), in_context.get_name()) == ("plain", "in context")
    assert calls[:2] == [[], ["context"]]


EAGER_TASKS = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="eager tasks are new in Python 3.12"
)


@EAGER_TASKS
def test_eager_task_factory_runs_tasks_until_their_first_wait(loop):
    """With asyncio.eager_task_factory, create_task runs the coroutine at once, up to its first
    wait: one that never waits is done when create_task returns, having run in the given
    context (the name is set after the factory returned: the coroutine saw the default one)."""
    events = []
    context = contextvars.copy_context()
    context.run(var.set, "given")

    async def no_wait():
        events.append(("no_wait", asyncio.current_task().get_name(), var.get()))
        return "at once"

    async def waits():
        events.append("waits starts")
        await asyncio.sleep(0)
        events.append("waits resumes")
        return "later"

    async def main():
        done_at_once = loop.create_task(no_wait(), name="eager", context=context)
        assert done_at_once.done() and done_at_once.result() == "at once"
        assert done_at_once.get_name() == "eager"
        pending = loop.create_task(waits())
        assert events == [("no_wait", events[0][1], "given"), "waits starts"]
        assert events[0][1].startswith("Task-")
        assert not pending.done() and pending in asyncio.all_tasks()
        assert await pending == "later"
        async with asyncio.TaskGroup() as group:
            in_group = group.create_task(no_wait())
            assert in_group.done()

    loop.set_task_factory(asyncio.eager_task_factory)
    loop.run_until_complete(main())  # main() itself is not eager: the loop was not running
    assert events[2:] == ["waits resumes", ("no_wait", events[3][1], "unset")]


@EAGER_TASKS
def test_eager_task_factory_of_a_task_subclass(loop):
    """asyncio.create_eager_task_factory(MyTask): create_task makes a MyTask, started eagerly."""

    class MyTask(asyncio.Task):
        pass

    async def main():
        started = []

        async def work():
            started.append(True)
            await asyncio.sleep(0)
            return 7

        task = loop.create_task(work())
        assert isinstance(task, MyTask) and started == [True]
        return await task

    loop.set_task_factory(asyncio.create_eager_task_factory(MyTask))
    assert loop.run_until_complete(main()) == 7


def test_set_task_factory_rejects_non_callables(loop):
    with pytest.raises(TypeError, match="task factory must be a callable or None"):
        loop.set_task_factory(1)


def test_create_future_belongs_to_the_loop(loop):
    future = loop.create_future()
    assert isinstance(future, asyncio.Future)
    assert future.get_loop() is loop
    loop.call_soon(future.set_result, "value")
    assert loop.run_until_complete(future) == "value"


def test_create_task_on_a_closed_loop_raises(loop):
    loop.close()

    async def work():
        pass

    coro = work()
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        loop.create_task(coro)
    coro.close()


def test_all_tasks_and_current_task(loop):
    async def child():
        await asyncio.sleep(0)

    async def main():
        me = asyncio.current_task()
        task = asyncio.create_task(child())
        tasks = asyncio.all_tasks()
        await task
        return me, task, tasks

    me, task, tasks = loop.run_until_complete(main())
    assert tasks == {me, task}
    assert asyncio.current_task(loop) is None


# --------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------


def test_sleep_order(loop):
    out = []

    async def sleeper(delay, name):
        await asyncio.sleep(delay)
        out.append(name)

    async def main():
        await asyncio.gather(
            sleeper(0.03, "c"), sleeper(0.01, "a"), sleeper(0.02, "b"), sleeper(0, "zero")
        )

    loop.run_until_complete(main())
    assert out == ["zero", "a", "b", "c"]


def test_sleep_returns_its_result(loop):
    assert loop.run_until_complete(asyncio.sleep(0.001, result="r")) == "r"


def test_gather_results_and_exceptions(loop):
    async def ok(x):
        await asyncio.sleep(0)
        return x

    async def fail():
        await asyncio.sleep(0)
        raise ValueError("gathered")

    async def main():
        results = await asyncio.gather(ok(1), fail(), ok(3), return_exceptions=True)
        with pytest.raises(ValueError, match="gathered"):
            await asyncio.gather(ok(1), fail())
        return results

    results = loop.run_until_complete(main())
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], ValueError)


def test_wait_first_completed(loop):
    async def main():
        fast = asyncio.ensure_future(asyncio.sleep(0.001, "fast"))
        slow = asyncio.ensure_future(asyncio.sleep(3600))
        done, pending = await asyncio.wait({fast, slow}, return_when=asyncio.FIRST_COMPLETED)
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        return done, pending, fast, slow

    done, pending, fast, slow = loop.run_until_complete(main())
    assert done == {fast} and pending == {slow}
    assert slow.cancelled()


def test_wait_with_timeout_returns_pending(loop):
    async def main():
        future = loop.create_future()
        done, pending = await asyncio.wait({future}, timeout=0.01)
        return done, pending, future

    done, pending, future = loop.run_until_complete(main())
    assert done == set() and pending == {future}


def test_wait_for_timeout_cancels_the_awaitable(loop):
    cancelled = []

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sleep_recording_cancellation(cancelled), 0.01)
        return await asyncio.wait_for(asyncio.sleep(0, "in time"), 10)

    assert loop.run_until_complete(main()) == "in time"
    assert cancelled == [True]


def test_timeout_context_manager(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(3600)
        async with asyncio.timeout(10) as cm:
            await asyncio.sleep(0)
        assert not cm.expired()
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + 10):
            await asyncio.sleep(0)
        return "ok"

    assert loop.run_until_complete(main()) == "ok"


def test_task_group_collects_results_and_errors(loop):
    async def ok(x):
        await asyncio.sleep(0.001)
        return x

    async def fail(message):
        await asyncio.sleep(0)
        raise ValueError(message)

    cancelled = []

    async def main():
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(ok(i)) for i in range(5)]
        assert [t.result() for t in tasks] == list(range(5))
        with pytest.raises(ExceptionGroup) as info:
            async with asyncio.TaskGroup() as group:
                group.create_task(sleep_recording_cancellation(cancelled))
                group.create_task(fail("one"))
                group.create_task(fail("two"))
        return sorted(str(e) for e in info.value.exceptions)

    assert loop.run_until_complete(main()) == ["one", "two"]
    assert cancelled == [True]


def test_shield_protects_the_inner_task(loop):
    async def inner():
        await asyncio.sleep(0.01)
        return "inner done"

    async def main():
        task = asyncio.ensure_future(inner())
        outer = asyncio.ensure_future(asyncio.shield(task))
        await asyncio.sleep(0)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        return await task

    assert loop.run_until_complete(main()) == "inner done"


def test_queue_producer_consumer(loop):
    async def main():
        queue = asyncio.Queue(maxsize=3)
        received = []

        async def producer():
            for i in range(50):
                await queue.put(i)
            await queue.put(None)

        async def consumer():
            while (item := await queue.get()) is not None:
                received.append(item)
                queue.task_done()
            queue.task_done()

        await asyncio.gather(producer(), consumer())
        await queue.join()
        return received

    assert loop.run_until_complete(main()) == list(range(50))


async def most_workers_inside_at_once(primitive, workers, hold_seconds):
    """Runs ``workers`` coroutines that each enter ``primitive`` (a Lock, a Semaphore...) and
    sleep ``hold_seconds`` inside it; returns how many of them were inside at once at most."""
    inside = 0
    max_inside = 0

    async def worker():
        nonlocal inside, max_inside
        async with primitive:
            inside += 1
            max_inside = max(max_inside, inside)
            await asyncio.sleep(hold_seconds)
            inside -= 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return max_inside


def test_lock_serializes_critical_sections(loop):
    async def main():
        lock = asyncio.Lock()
        return await most_workers_inside_at_once(lock, workers=10, hold_seconds=0), lock.locked()

    assert loop.run_until_complete(main()) == (1, False)


def test_semaphore_bounds_concurrency(loop):
    async def main():
        semaphore = asyncio.Semaphore(3)
        return await most_workers_inside_at_once(semaphore, workers=12, hold_seconds=0.001)

    assert loop.run_until_complete(main()) == 3


def test_event_wakes_all_waiters(loop):
    async def main():
        event = asyncio.Event()
        woken = []

        async def waiter(i):
            await event.wait()
            woken.append(i)

        tasks = [asyncio.ensure_future(waiter(i)) for i in range(5)]
        await asyncio.sleep(0)
        assert woken == []
        event.set()
        await asyncio.gather(*tasks)
        return sorted(woken)

    assert loop.run_until_complete(main()) == list(range(5))


def test_condition_notify(loop):
    async def main():
        condition = asyncio.Condition()
        items = []

        async def consumer():
            async with condition:
                await condition.wait_for(lambda: items)
                return items.pop()

        task = asyncio.ensure_future(consumer())
        await asyncio.sleep(0)
        async with condition:
            items.append("item")
            condition.notify()
        return await task

    assert loop.run_until_complete(main()) == "item"


def test_task_cancellation_runs_cleanup_and_reports_cancelled(loop):
    steps = []

    async def worker():
        try:
            await asyncio.sleep(3600)
        finally:
            steps.append("cleanup")

    async def main():
        task = asyncio.ensure_future(worker())
        await asyncio.sleep(0)
        assert task.cancel("reason")
        with pytest.raises(asyncio.CancelledError):
            await task
        return task

    task = loop.run_until_complete(main())
    assert task.cancelled()
    assert steps == ["cleanup"]


def test_future_done_callbacks_run_in_order_on_the_loop(loop):
    out = []

    async def main():
        future = loop.create_future()
        for i in range(5):
            future.add_done_callback(lambda f, i=i: out.append((i, f.result())))
        future.set_result("r")
        assert out == []  # callbacks are scheduled, not called
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert out == [(i, "r") for i in range(5)]
