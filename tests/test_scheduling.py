"""Scheduling: call_soon / call_later / call_at, handles and timer handles, the loop's clock
and the contextvars.Context callbacks run in.

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
"""

import asyncio
import contextvars
import decimal
import fractions
import gc
import random
import sys
import time
import weakref
from unittest import mock

import pytest

RESOLUTION = time.get_clock_info("monotonic").resolution
# From 3.13 asyncio shows a callback's arguments in handle reprs only in debug mode.
SHOWS_CALLBACK_ARGUMENTS = sys.version_info < (3, 13)


def run_until_stopped(loop, stop_after=5.0):
    """run_forever with a safety stop (a test that hangs fails instead)."""
    safety = loop.call_later(stop_after, loop.stop)
    loop.run_forever()
    safety.cancel()


def handle_context(handle):
    """The handle's context: ``get_context()`` (Python 3.12+, and oxloop), else ``_context``."""
    get_context = getattr(handle, "get_context", None)
    return get_context() if get_context is not None else handle._context


class CallbackObject:
    """A callable object that can be weakly referenced."""

    def __init__(self, out=None):
        self.out = out

    def __call__(self, *args):
        if self.out is not None:
            self.out.append(args)


# --------------------------------------------------------------------------------------------
# Order
# --------------------------------------------------------------------------------------------


def test_call_soon_runs_callbacks_in_fifo_order(loop):
    out = []
    for i in range(200):
        loop.call_soon(out.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == list(range(200))


def test_call_soon_passes_positional_arguments(loop):
    out = []
    loop.call_soon(lambda *args: out.append(args), 1, "two", None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [(1, "two", None)]


def test_call_soon_runs_before_call_later_zero_scheduled_earlier(loop):
    out = []
    loop.call_later(0, out.append, "later(0)")
    loop.call_soon(out.append, "soon")
    loop.call_later(0.001, loop.stop)
    run_until_stopped(loop)
    assert out == ["soon", "later(0)"]


def test_negative_delays_run_in_deadline_order(loop):
    out = []
    loop.call_later(-1, out.append, "-1")
    loop.call_later(0, out.append, "0")
    loop.call_later(-5, out.append, "-5")
    loop.call_later(-0.5, out.append, "-0.5")
    loop.call_later(0.01, loop.stop)
    run_until_stopped(loop)
    assert out == ["-5", "-1", "-0.5", "0"]


def test_negative_delay_runs_on_the_first_iteration(loop):
    out = []
    loop.call_later(-10, out.append, "timer")
    loop.stop()  # run_forever runs exactly one iteration
    loop.run_forever()
    assert out == ["timer"]


def test_timers_run_in_deadline_order_not_scheduling_order(loop):
    out = []
    loop.call_later(0.03, out.append, "c")
    loop.call_later(0.01, out.append, "a")
    loop.call_later(0.02, out.append, "b")
    loop.call_later(0.04, loop.stop)
    run_until_stopped(loop)
    assert out == ["a", "b", "c"]


def test_same_deadline_timers_all_run_in_the_same_iteration(loop):
    # asyncio does not promise an order between timers with the same deadline, but they are
    # all due together: a callback scheduled by the first one runs after all of them.
    out = []
    when = loop.time() + 0.01

    def timer(i):
        if not out:
            loop.call_soon(out.append, "next iteration")
        out.append(i)

    for i in range(20):
        loop.call_at(when, timer, i)
    loop.call_at(when + 0.01, loop.stop)
    run_until_stopped(loop)
    assert sorted(out[:20]) == list(range(20))
    assert out[20:] == ["next iteration"]


def test_only_callbacks_ready_at_iteration_start_run_in_it(loop):
    out = []

    def first():
        out.append("first")
        loop.stop()  # stop after this iteration
        loop.call_soon(out.append, "scheduled during the iteration")

    loop.call_soon(first)
    loop.call_soon(out.append, "second")
    loop.run_forever()
    assert out == ["first", "second"]
    loop.stop()
    loop.run_forever()
    assert out == ["first", "second", "scheduled during the iteration"]


def test_stop_before_run_forever_runs_one_iteration(loop):
    out = []
    loop.call_soon(out.append, 1)
    loop.stop()
    loop.run_forever()
    assert out == [1]
    assert not loop.is_running()


def test_self_rescheduling_callback_does_not_starve_timers(loop):
    count = 0

    def spin():
        nonlocal count
        count += 1
        loop.call_soon(spin)

    loop.call_soon(spin)
    fired = []
    loop.call_later(0.01, lambda: (fired.append(True), loop.stop()))
    loop.run_forever()
    assert fired == [True]
    assert count > 1
    loop.close()  # drops the pending spin()


def test_timer_does_not_fire_before_its_deadline(loop):
    fired_at = []
    handle = loop.call_later(0.02, lambda: fired_at.append(loop.time()))
    loop.call_later(0.03, loop.stop)
    run_until_stopped(loop)
    assert len(fired_at) == 1
    assert fired_at[0] >= handle.when() - RESOLUTION


def test_call_at_uses_the_loop_clock(loop):
    out = []
    when = loop.time() + 0.01
    loop.call_at(when, lambda: out.append(loop.time()))
    loop.call_at(when, loop.stop)
    run_until_stopped(loop)
    assert len(out) == 1 and out[0] >= when - RESOLUTION


# --------------------------------------------------------------------------------------------
# Argument errors
# --------------------------------------------------------------------------------------------


def test_call_later_rejects_none_delay(loop):
    with pytest.raises(TypeError, match="delay must not be None"):
        loop.call_later(None, print)


@pytest.mark.parametrize("delay", ["1", [], object()], ids=["str", "list", "object"])
def test_call_later_rejects_non_numbers(loop, delay):
    with pytest.raises(TypeError):
        loop.call_later(delay, print)


def test_call_at_rejects_none_when(loop):
    with pytest.raises(TypeError, match="when cannot be None"):
        loop.call_at(None, print)


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_scheduling_on_a_closed_loop_raises(loop, method):
    loop.close()
    args = (print,) if method.startswith("call_soon") else (0, print)
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        getattr(loop, method)(*args)


def test_non_callable_fails_when_run_outside_debug_mode(loop):
    # Outside debug mode asyncio does not check the callback; calling it fails later and the
    # error goes to the exception handler.
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    loop.set_debug(False)
    handle = loop.call_soon(42)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], TypeError)
    assert contexts[0]["handle"] is handle


# --------------------------------------------------------------------------------------------
# Handles
# --------------------------------------------------------------------------------------------


def test_cancelled_handle_does_not_run(loop):
    out = []
    handle = loop.call_soon(out.append, "cancelled")
    loop.call_soon(out.append, "kept")
    assert not handle.cancelled()
    assert handle.cancel() is None
    assert handle.cancelled()
    handle.cancel()  # twice is harmless
    assert handle.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["kept"]


def test_handle_cancelled_by_an_earlier_callback_of_the_same_iteration_does_not_run(loop):
    out = []
    handles = []
    loop.call_soon(lambda: handles[0].cancel())
    handles.append(loop.call_soon(out.append, "victim"))
    loop.call_soon(out.append, "survivor")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["survivor"]


def test_cancelled_timer_does_not_run(loop):
    out = []
    handle = loop.call_later(0.01, out.append, "cancelled")
    loop.call_later(0.01, out.append, "kept")
    handle.cancel()
    assert handle.cancelled()
    loop.call_later(0.02, loop.stop)
    run_until_stopped(loop)
    assert out == ["kept"]


def test_timer_cancelled_when_due_in_the_same_iteration_does_not_run(loop):
    out = []
    when = loop.time() + 0.01
    handles = []
    loop.call_at(when, lambda: handles[0].cancel())
    handles.append(loop.call_at(when + 1e-6, out.append, "victim"))
    loop.call_at(when + 0.01, loop.stop)
    run_until_stopped(loop)
    assert out == []


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_cancel_releases_callback_and_arguments_at_once(loop, method):
    callback = CallbackObject()
    argument = CallbackObject()
    callback_ref, argument_ref = weakref.ref(callback), weakref.ref(argument)
    if method == "call_soon":
        handle = loop.call_soon(callback, argument)
    elif method == "call_later":
        handle = loop.call_later(3600, callback, argument)
    else:
        handle = loop.call_at(loop.time() + 3600, callback, argument)
    del callback, argument
    assert callback_ref() is not None and argument_ref() is not None  # the handle holds them
    handle.cancel()
    # No gc.collect(): released by cancel() itself, not by a later purge or collection.
    assert callback_ref() is None
    assert argument_ref() is None


def test_timer_handle_when_is_the_absolute_deadline(loop):
    when = loop.time() + 100
    assert loop.call_at(when, print).when() == when
    before = loop.time()
    handle = loop.call_later(10, print)
    after = loop.time()
    assert before + 10 <= handle.when() <= after + 10


@pytest.mark.parametrize(
    "when", [10**6, 10**6 + 0.5, fractions.Fraction(10**6, 3), decimal.Decimal("1e6")], ids=repr
)
def test_call_at_keeps_the_type_of_when(loop, when):
    """asyncio keeps what ``call_at`` was given: an int stays an int (aiohttp's helpers rely on
    it); the repr shows it as asyncio's does."""
    handle = loop.call_at(when, print)
    assert type(handle.when()) is type(when) and handle.when() == when
    assert type(handle._when) is type(when)
    assert f"when={when}" in repr(handle)
    handle.cancel()
    assert type(handle.when()) is type(when)


def test_an_int_deadline_orders_with_float_ones(loop):
    now = int(loop.time())
    fired = []
    loop.call_at(now + 0.02, fired.append, "float")
    loop.call_at(now, fired.append, "int")
    loop.call_at(now + 0.03, loop.stop)
    loop.run_forever()
    assert fired == ["int", "float"]


def test_timers_follow_a_time_patched_on_the_loop(loop):
    """``mock.patch.object(loop, "time", ...)`` (aiohttp's keep-alive tests): asyncio's iteration
    reads ``self.time()``, so a timer an hour away fires as soon as the patched time passes
    its deadline."""
    fired = []
    start = loop.time()
    loop.call_at(start + 3600, fired.append, "an hour")
    loop.call_at(start + 7200, fired.append, "two hours")

    async def step():
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    with mock.patch.object(loop, "time", return_value=start + 3601):
        loop.run_until_complete(step())
        assert fired == ["an hour"]
        later = loop.call_later(10, print)
        assert later.when() == start + 3611
        later.cancel()
    assert loop.time() < start + 60
    loop.run_until_complete(step())
    assert fired == ["an hour"]  # the real clock is back


def test_a_patched_time_that_raises_stops_the_loop_with_its_exception(loop):
    loop.call_later(3600, print)

    def broken_time():
        raise LookupError("no time")

    loop.call_soon(setattr, loop, "time", broken_time)
    with pytest.raises(LookupError, match="no time"):
        loop.run_forever()
    del loop.time


def test_timer_handle_when_survives_cancel(loop):
    handle = loop.call_later(5, print)
    when = handle.when()
    handle.cancel()
    assert handle.when() == when


def test_handle_repr_names_the_callback(loop):
    def my_callback(arg):
        pass

    handle = loop.call_soon(my_callback, 1)
    text = repr(handle)
    assert text.startswith("<Handle ")
    assert ("my_callback(1)" if SHOWS_CALLBACK_ARGUMENTS else "my_callback()") in text
    timer = loop.call_later(10, my_callback, 2)
    text = repr(timer)
    assert text.startswith("<TimerHandle when=")
    assert ("my_callback(2)" if SHOWS_CALLBACK_ARGUMENTS else "my_callback()") in text
    handle.cancel()
    timer.cancel()
    assert repr(handle) == "<Handle cancelled>"


def test_cancelled_timer_handle_repr(loop):
    timer = loop.call_later(10, print)
    timer.cancel()
    # asyncio's TimerHandle._repr_info inserts when= after the word "cancelled".
    assert repr(timer) == f"<TimerHandle cancelled when={timer.when()}>"


# --------------------------------------------------------------------------------------------
# The clock
# --------------------------------------------------------------------------------------------


def test_loop_time_is_time_monotonic(loop):
    for _ in range(100):
        before = time.monotonic()
        now = loop.time()
        after = time.monotonic()
        assert before <= now <= after


def test_loop_time_never_goes_backwards(loop):
    previous = loop.time()
    for _ in range(1000):
        now = loop.time()
        assert now >= previous
        previous = now


# --------------------------------------------------------------------------------------------
# contextvars
# --------------------------------------------------------------------------------------------

var = contextvars.ContextVar("var", default="unset")


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_callback_runs_in_the_given_context(loop, method):
    context = contextvars.copy_context()
    context.run(var.set, "in context")
    seen = []

    def callback():
        seen.append(var.get())
        var.set("changed by callback")

    if method.startswith("call_soon"):
        handle = getattr(loop, method)(callback, context=context)
    elif method == "call_later":
        handle = loop.call_later(0, callback, context=context)
    else:
        handle = loop.call_at(loop.time(), callback, context=context)
    assert handle_context(handle) is context
    loop.call_later(0.001, loop.stop)
    run_until_stopped(loop)
    assert seen == ["in context"]
    assert context[var] == "changed by callback"  # ran inside that very context
    assert var.get() == "unset"


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later"])
def test_callback_default_context_is_a_copy_of_the_current_one(loop, method):
    seen = []

    def callback():
        seen.append(var.get())
        var.set("set by callback")

    def schedule():
        var.set("at scheduling time")
        args = (callback,) if method.startswith("call_soon") else (0, callback)
        handle = getattr(loop, method)(*args)
        var.set("after scheduling")
        return handle

    outer = contextvars.copy_context()
    handle = outer.run(schedule)
    ctx = handle_context(handle)
    assert isinstance(ctx, contextvars.Context)
    assert ctx is not outer
    loop.call_later(0.001, loop.stop)
    run_until_stopped(loop)
    assert seen == ["at scheduling time"]
    assert outer[var] == "after scheduling"  # the callback's set() did not leak out
    assert var.get() == "unset"


def test_each_callback_gets_its_own_context_copy(loop):
    seen = []

    def setter():
        var.set("leaked?")

    def getter():
        seen.append(var.get())

    loop.call_soon(setter)
    loop.call_soon(getter)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["unset"]


def test_context_is_released_when_a_handle_runs(loop):
    # Not asyncio-specified, but both keep the callback's references only as long as needed:
    # after the loop ran (and dropped) its handles, the callback object and the context it ran
    # in (here, an object only that context holds) are gone.
    callback = CallbackObject()
    ref = weakref.ref(callback)
    var = contextvars.ContextVar("var")
    in_context = CallbackObject()
    in_context_ref = weakref.ref(in_context)
    context = contextvars.copy_context()
    context.run(var.set, in_context)
    loop.call_soon(callback, context=context)
    del callback, in_context, context
    loop.call_soon(loop.stop)
    loop.run_forever()
    gc.collect()
    assert ref() is None
    assert in_context_ref() is None


def test_oxloop_handles_have_get_context(oxloop_loop):
    # Handle.get_context() is Python 3.12 API; oxloop offers it on every Python version.
    context = contextvars.copy_context()
    handle = oxloop_loop.call_soon(print, context=context)
    timer = oxloop_loop.call_later(1, print, context=context)
    assert handle.get_context() is context
    assert timer.get_context() is context
    assert handle._context is context
    handle.cancel()
    timer.cancel()


def test_handle_keeps_its_context_after_cancel(loop):
    # asyncio's cancel() drops the callback and its arguments but keeps the context
    # (Handle._context; get_context() from Python 3.12 returns it).
    context = contextvars.copy_context()
    handle = loop.call_soon(print, context=context)
    timer = loop.call_later(10, print, context=context)
    handle.cancel()
    timer.cancel()
    assert handle_context(handle) is context
    assert handle_context(timer) is context


# --------------------------------------------------------------------------------------------
# Many timers
# --------------------------------------------------------------------------------------------


def test_many_timers_run_in_deadline_order(loop):
    rng = random.Random(1234)
    fired = []
    base = loop.time()
    handles = [
        loop.call_at(base + rng.uniform(0, 0.05), lambda i=i: fired.append(i)) for i in range(2000)
    ]
    whens = {i: h.when() for i, h in enumerate(handles)}
    loop.call_at(base + 0.06, loop.stop)
    run_until_stopped(loop)
    assert sorted(fired) == list(range(2000))
    fired_whens = [whens[i] for i in fired]
    assert fired_whens == sorted(fired_whens)


def test_a_burst_of_timers_with_shared_deadlines_runs_in_deadline_order(loop):
    # Thousands of timers due at once, on a handful of deadlines (call_at with equal `when`s):
    # all fire, in deadline order.
    rng = random.Random(7)
    fired = []
    base = loop.time()
    deadlines = [base + k * 1e-4 for k in range(5)]
    handles = [loop.call_at(rng.choice(deadlines), fired.append, i) for i in range(3000)]
    loop.call_at(base + 0.01, loop.stop)
    run_until_stopped(loop)
    assert sorted(fired) == list(range(3000))
    assert [handles[i].when() for i in fired] == sorted(handles[i].when() for i in fired)


def test_mass_cancellation_of_timers(loop):
    rng = random.Random(99)
    fired = []
    base = loop.time()
    handles = [loop.call_at(base + rng.uniform(0, 0.03), fired.append, i) for i in range(3000)]
    kept = set(rng.sample(range(3000), 100))
    for i, handle in enumerate(handles):
        if i not in kept:
            handle.cancel()
    loop.call_at(base + 0.04, loop.stop)
    run_until_stopped(loop)
    assert sorted(fired) == sorted(kept)
    assert [handles[i].when() for i in fired] == sorted(handles[i].when() for i in fired)


def test_explicit_none_context_copies_the_current_context(loop):
    seen = []
    var.set("current")
    try:
        loop.call_soon(lambda: seen.append(var.get()), context=None)
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        var.set("unset")
    assert seen == ["current"]


def test_call_soon_accepts_callback_as_a_keyword(loop):
    seen = []
    loop.call_soon(callback=lambda: seen.append("soon"), context=None)
    loop.call_soon_threadsafe(callback=lambda: seen.append("threadsafe"))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["soon", "threadsafe"]
    with pytest.raises(TypeError):
        loop.call_soon(print, callback=print)
    with pytest.raises(TypeError):
        loop.call_soon(print, ctx=None)


def test_timer_handles_compare_and_hash_by_deadline(loop):
    early = loop.call_at(loop.time() + 100, print)
    late = loop.call_at(loop.time() + 200, print)
    assert early < late and late > early and early <= late and late >= early
    assert early != late and not early == late
    assert sorted([late, early]) == [early, late]
    assert hash(early) == hash(early.when())
    twin = loop.call_at(early.when(), print)
    assert twin == early and early <= twin and early >= twin
    twin.cancel()
    assert twin != early
    early.cancel()
    late.cancel()


def test_a_cycle_through_a_handles_context_is_collected(loop):
    """A handle's own context copy, once handed out (``_context``; ``get_context()`` from
    Python 3.12), is visible to the garbage collector: a reference cycle through it is freed
    (oxloop keeps that copy out of the collector's sight only while the handle alone holds
    it)."""
    var = contextvars.ContextVar("var")

    class Holder:
        pass

    handle = loop.call_soon(lambda: None)
    holder = Holder()
    holder.context = handle._context
    holder.context.run(var.set, holder)  # context -> holder -> context
    alive = weakref.ref(holder)
    handle.cancel()
    del handle, holder
    loop.call_soon(loop.stop)
    loop.run_forever()
    gc.collect()
    assert alive() is None
