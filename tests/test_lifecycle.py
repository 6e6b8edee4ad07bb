"""The loop's life cycle: run_forever / run_until_complete / stop / close and their error
cases, what close() releases, async generator hooks and shutdown_asyncgens, debug flag, and
oxloop's ``_counters()``.

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
"""

import asyncio
import gc
import socket
import sys
import warnings
import weakref

import pytest

from helpers.loops import LOOP_FACTORIES, LOOP_TYPES, open_fds

# asyncio 3.13.0 to 3.13.2: a run_forever() refused because another loop is running still
# clears the thread's running loop on its way out (gh-130145, fixed in 3.13.3), so a
# run_until_complete() after it is not refused and really runs.
REFUSED_RUN_FOREVER_CLEARS_THE_RUNNING_LOOP = (3, 13) <= sys.version_info < (3, 13, 3)


class CallbackObject:
    def __call__(self, *args):
        pass


async def answer(value=42):
    await asyncio.sleep(0)
    return value


def runtime_errors_while_running(loop, *actions):
    """Runs ``loop`` until a callback has called each of ``actions`` in turn and stopped it;
    returns the messages of the RuntimeErrors the actions raised."""
    errors = []

    def call_actions():
        for action in actions:
            try:
                action()
            except RuntimeError as exc:
                errors.append(str(exc))
        loop.stop()

    loop.call_soon(call_actions)
    loop.run_forever()
    return errors


# --------------------------------------------------------------------------------------------
# run_until_complete / run_forever
# --------------------------------------------------------------------------------------------


def test_loop_type(loop, loop_kind):
    assert isinstance(loop, LOOP_TYPES[loop_kind])
    assert isinstance(loop, asyncio.AbstractEventLoop)


def test_run_until_complete_returns_the_result(loop):
    assert loop.run_until_complete(answer(7)) == 7


def test_run_until_complete_accepts_a_future(loop):
    future = loop.create_future()
    loop.call_soon(future.set_result, "done")
    assert loop.run_until_complete(future) == "done"


def test_run_until_complete_with_a_done_future_returns_at_once(loop):
    future = loop.create_future()
    future.set_result(1)
    assert loop.run_until_complete(future) == 1


def test_run_until_complete_raises_the_coroutine_exception(loop):
    async def failing():
        await asyncio.sleep(0)
        raise ValueError("from coroutine")

    with pytest.raises(ValueError, match="from coroutine"):
        loop.run_until_complete(failing())


def test_running_state_inside_and_outside(loop):
    seen = {}

    async def main():
        seen["running"] = loop.is_running()
        seen["running loop"] = asyncio.get_running_loop()
        seen["event loop"] = asyncio.get_event_loop()

    assert not loop.is_running()
    loop.run_until_complete(main())
    assert seen == {"running": True, "running loop": loop, "event loop": loop}
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None


def test_run_until_complete_while_running_raises(loop):
    errors = runtime_errors_while_running(
        loop, lambda: loop.run_until_complete(loop.create_future())
    )
    assert errors == ["This event loop is already running"]


def test_run_forever_while_running_raises(loop):
    errors = runtime_errors_while_running(loop, loop.run_forever)
    assert errors == ["This event loop is already running"]
    assert not loop.is_running()


@pytest.mark.parametrize("inner_kind", sorted(LOOP_FACTORIES))
def test_running_a_loop_while_another_runs_in_this_thread_raises(loop, loop_factory, inner_kind):
    inner = loop_factory(inner_kind)
    running_loops = []
    actions = [inner.run_forever, lambda: running_loops.append(asyncio._get_running_loop())]
    if not (inner_kind == "asyncio" and REFUSED_RUN_FOREVER_CLEARS_THE_RUNNING_LOOP):
        actions.append(lambda: inner.run_until_complete(inner.create_future()))
    try:
        errors = runtime_errors_while_running(loop, *actions)
    finally:
        inner.close()
    assert errors == ["Cannot run the event loop while another loop is running"] * (
        len(actions) - 1
    )
    if inner_kind == "asyncio" and REFUSED_RUN_FOREVER_CLEARS_THE_RUNNING_LOOP:
        assert running_loops == [None]
    else:
        assert running_loops == [loop]
    assert asyncio._get_running_loop() is None


def test_run_on_a_closed_loop_raises(loop):
    loop.close()
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        loop.run_forever()
    coro = answer()
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        loop.run_until_complete(coro)
    coro.close()


def test_run_until_complete_with_a_future_of_another_loop_raises(loop, loop_factory):
    other = loop_factory()
    future = other.create_future()
    with pytest.raises(ValueError, match="The future belongs to a different loop"):
        loop.run_until_complete(future)


def test_run_until_complete_raises_if_the_loop_stops_first(loop):
    future = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match=r"^Event loop stopped before Future completed\.$"):
        loop.run_until_complete(future)
    assert not future.done()


def test_run_until_complete_returns_when_the_future_completes_despite_later_timers(loop):
    loop.call_later(3600, print)
    future = loop.create_future()
    loop.call_soon(future.set_result, None)
    loop.run_until_complete(future)
    assert not loop.is_running()


def test_loop_can_be_run_many_times(loop):
    for i in range(5):
        assert loop.run_until_complete(answer(i)) == i
        loop.call_soon(loop.stop)
        loop.run_forever()


def test_stop_from_a_callback_ends_run_forever(loop):
    out = []
    loop.call_soon(out.append, 1)
    loop.call_later(0.001, lambda: (out.append(2), loop.stop()))
    loop.run_forever()
    assert out == [1, 2]
    assert not loop.is_running()


def test_stop_is_forgotten_after_run_forever_returns(loop):
    loop.stop()
    loop.run_forever()
    # A new run does not stop at once: the timer below runs first.
    out = []
    loop.call_later(0.005, lambda: (out.append("timer"), loop.stop()))
    loop.run_forever()
    assert out == ["timer"]


# --------------------------------------------------------------------------------------------
# close()
# --------------------------------------------------------------------------------------------


def test_close_while_running_raises_and_the_loop_keeps_working(loop):
    errors = runtime_errors_while_running(loop, loop.close)
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()
    assert loop.run_until_complete(answer(3)) == 3


def test_close_is_idempotent(loop):
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()
    assert loop.is_closed()


def test_close_drops_pending_callbacks_and_timers(loop):
    soon, later = CallbackObject(), CallbackObject()
    soon_ref, later_ref = weakref.ref(soon), weakref.ref(later)
    loop.call_soon(soon)
    loop.call_later(3600, later)
    del soon, later
    assert soon_ref() is not None and later_ref() is not None
    loop.close()
    gc.collect()
    assert soon_ref() is None
    assert later_ref() is None


def test_close_releases_the_loops_file_descriptors(loop_kind):
    before = open_fds()
    loop = LOOP_FACTORIES[loop_kind]()
    assert open_fds() - before, "a loop has at least a selector/poller fd"
    loop.close()
    # Released by close() itself, while the loop object is still alive.
    assert open_fds() - before == set()


def test_unclosed_loop_warns_when_collected(loop_kind):
    loop = LOOP_FACTORIES[loop_kind]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del loop
        gc.collect()
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert any(m.startswith("unclosed event loop") for m in messages), messages


def test_collected_unclosed_loop_releases_its_file_descriptors(loop_kind):
    before = open_fds()
    loop = LOOP_FACTORIES[loop_kind]()
    ref = weakref.ref(loop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del loop
        gc.collect()
    assert ref() is None
    assert open_fds() - before == set()


def test_loop_is_collected_after_close(loop_kind):
    loop = LOOP_FACTORIES[loop_kind]()
    loop.call_soon(print)
    loop.call_later(10, print)
    loop.run_until_complete(answer())
    loop.close()
    ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert ref() is None


# --------------------------------------------------------------------------------------------
# Debug flag
# --------------------------------------------------------------------------------------------


def test_set_debug_and_get_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_coroutine_origin_tracking_follows_debug_mode(loop):
    depths = []

    async def main():
        depths.append(sys.get_coroutine_origin_tracking_depth())

    loop.set_debug(True)
    loop.run_until_complete(main())
    loop.set_debug(False)
    loop.run_until_complete(main())
    assert depths[0] > 0
    assert depths[1] == 0
    assert sys.get_coroutine_origin_tracking_depth() == 0


# --------------------------------------------------------------------------------------------
# Async generators
# --------------------------------------------------------------------------------------------


def test_asyncgen_hooks_are_installed_while_running_and_restored(loop):
    before = sys.get_asyncgen_hooks()
    seen = []

    async def main():
        seen.append(sys.get_asyncgen_hooks())

    loop.run_until_complete(main())
    assert seen[0].firstiter is not None and seen[0].finalizer is not None
    assert seen[0] != before
    assert sys.get_asyncgen_hooks() == before


def test_shutdown_asyncgens_finalizes_pending_async_generators(loop):
    finalized = []

    async def agen(name):
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)  # finalization may await: it runs on the loop
            finalized.append(name)

    generators = [agen("a"), agen("b")]

    async def start():
        for g in generators:
            assert await g.__anext__() == 1

    loop.run_until_complete(start())
    assert finalized == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert sorted(finalized) == ["a", "b"]


def test_async_generator_dropped_while_running_is_finalized_on_the_loop(loop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(asyncio.get_running_loop())

    async def main():
        g = agen()
        await g.__anext__()
        del g  # the finalizer hook schedules aclose() on the loop
        for _ in range(5):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert finalized == [loop]


def test_async_generator_started_after_shutdown_asyncgens_warns(loop):
    loop.run_until_complete(loop.shutdown_asyncgens())

    async def agen():
        yield 1

    async def main():
        g = agen()
        with pytest.warns(ResourceWarning, match="was scheduled after loop.shutdown_asyncgens"):
            await g.__anext__()
        await g.aclose()

    loop.run_until_complete(main())


def test_shutdown_asyncgens_reports_errors_of_finalizers(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def agen():
        try:
            yield 1
        finally:
            raise ZeroDivisionError("in finalizer")

    async def start():
        await g.__anext__()

    g = agen()
    loop.run_until_complete(start())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(contexts) == 1
    assert contexts[0]["message"].startswith(
        "an error occurred during closing of asynchronous generator"
    )
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert contexts[0]["asyncgen"] is g


# --------------------------------------------------------------------------------------------
# oxloop's counters
# --------------------------------------------------------------------------------------------

COUNTER_KEYS = {
    "iterations",
    "callbacks_run",
    "callback_errors",
    "timers_scheduled",
    "timers_cancelled",
    "io_events",
    "polls",
    "poll_wait_seconds",
    "ready",
    "timers",
    "watched_fds",
    "stream_transports",
}


def test_oxloop_counters_count_what_the_loop_did(oxloop_loop):
    loop = oxloop_loop
    loop.set_exception_handler(lambda lp, ctx: None)
    start = loop._counters()
    assert set(start) == COUNTER_KEYS
    for _i in range(10):
        loop.call_soon(lambda: None)
    loop.call_soon(lambda: 1 / 0)
    cancelled = loop.call_later(3600, print)
    loop.call_later(3600, print)
    pending = loop._counters()
    assert pending["ready"] == start["ready"] + 11
    assert pending["timers_scheduled"] == start["timers_scheduled"] + 2
    cancelled.cancel()
    assert loop._counters()["timers_cancelled"] == start["timers_cancelled"] + 1
    loop.call_soon(loop.stop)
    loop.run_forever()
    end = loop._counters()
    assert end["callbacks_run"] >= start["callbacks_run"] + 12
    assert end["callback_errors"] == start["callback_errors"] + 1
    assert end["iterations"] > start["iterations"]
    assert end["ready"] == 0
    assert end["poll_wait_seconds"] >= 0.0


def test_oxloop_counters_count_stream_transports(oxloop_loop):
    loop = oxloop_loop

    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        base = loop._counters()
        transport, _ = await loop.create_connection(
            asyncio.Protocol, *server.sockets[0].getsockname()
        )
        await asyncio.sleep(0.01)  # the server side's transport is made by a task
        made = loop._counters()
        assert made["stream_transports"] == base["stream_transports"] + 2
        assert made["watched_fds"] == base["watched_fds"] + 2
        transport.close()
        server.close()
        await server.wait_closed()
        for _ in range(100):  # the server side notices the close
            if loop._counters()["stream_transports"] == base["stream_transports"]:
                break
            await asyncio.sleep(0.01)
        assert loop._counters()["stream_transports"] == base["stream_transports"]

    loop.run_until_complete(main())


def test_oxloop_counters_count_watched_fds(oxloop_loop):
    loop = oxloop_loop
    a, b = socket.socketpair()
    try:
        base = loop._counters()["watched_fds"]
        loop.add_reader(a, print)
        loop.add_writer(a, print)
        loop.add_reader(b, print)
        assert loop._counters()["watched_fds"] == base + 2
        loop.remove_reader(a)
        assert loop._counters()["watched_fds"] == base + 2
        loop.remove_writer(a)
        loop.remove_reader(b)
        assert loop._counters()["watched_fds"] == base
    finally:
        a.close()
        b.close()
