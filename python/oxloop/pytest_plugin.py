"""oxloop's pytest plugin: tests (and their async fixtures) on a virtual-clock loop.

Installed with oxloop, it registers itself through the ``pytest11`` entry point named
``oxloop``: ``-p no:oxloop`` turns it off. Where the entry point is not installed (or not
loaded), ``-p no:oxloop -p oxloop.pytest_plugin`` loads it by module (the ``no:`` keeps an
installed entry point from registering the same module a second time, which pytest refuses).
It needs nothing else: no pytest-asyncio, no pytest-trio. A test that does not ask for it is
left exactly as it was.

Usage
-----
Mark an ``async def`` test, or have it request the ``virtual_clock`` fixture (as pytest-trio's
``autojump_clock``)::

    import asyncio
    import pytest

    @pytest.mark.oxloop_virtual_clock
    async def test_retry_backoff():
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3600)             # an hour, in milliseconds of real time
        assert loop.time() == 3600.0

    async def test_ticks(virtual_clock):      # the fixture alone is enough
        ticks = []
        asyncio.get_running_loop().call_later(5, ticks.append, "tick")
        await virtual_clock.advance(4)
        assert ticks == []
        await virtual_clock.advance(1)
        assert ticks == ["tick"] and virtual_clock.time() == 5.0

Such a test runs on a fresh oxloop loop with its own ``oxloop.VirtualClock``: when nothing is
ready and no real work is outstanding, time jumps to the next timer, so sleeps and timeouts
cost no real time, in the order an ideal clock gives them, identically on every run. Real
sockets, threads and subprocesses still work (while they have work outstanding, virtual time
runs with real time). A test that waits for something nothing can ever bring fails with
``oxloop.DeadlockError`` instead of hanging.

The marker: ``@pytest.mark.oxloop_virtual_clock(start=0.0, patch_time=False,
io_quiet_period=0.02)``, keyword arguments only; they are ``VirtualClock``'s (``start``: what
``loop.time()`` reads first; ``patch_time``: ``time.time()``, ``time.monotonic()`` and
``time.perf_counter()`` follow the clock while the loop runs; ``io_quiet_period``: see
``VirtualClock``). It may be put on a test, a class or a module (``pytestmark``); options of
several levels are merged, the closest winning. On a test that is not ``async def`` it does
nothing.

Fixtures:

- ``virtual_clock``: the test's ``oxloop.VirtualClock`` (``time()``, ``time_ns()``,
  ``elapsed``, ``real_elapsed``, ``await advance(seconds)``, ``await run_until_idle()``). In
  a synchronous test it is a fresh clock for the test's own loops
  (``oxloop.run(main(), clock=virtual_clock)``). Override it (in a ``conftest.py``) to make the
  clock yourself; a wider scope there gives the tests one time line (each test's loop uses the
  clock in turn, and time never goes backwards).

The async fixtures of such a test: every function-scoped fixture written as ``async def``
(coroutine or async generator), requested directly or through other fixtures, is set up and
torn down on the test's loop, before the test and after it, with the same clock (so
``asyncio.get_running_loop()`` in the fixture is the test's loop, and a fixture's background
tasks keep running during the test). Context variables a fixture sets are seen by the test, as
with pytest-asyncio. The loop is closed after the last of them is torn down (``asyncio.Runner``'s
clean-up: remaining tasks cancelled, async generators and the default executor shut down).
Async fixtures of a wider scope (module, session...) would outlive the loop: they are not run
here; with pytest-asyncio installed they run on its loops (share plain values only, not objects
bound to a loop), without it the test fails, saying so.

With pytest-asyncio
-------------------
The plugin also works next to pytest-asyncio (1.x; checked with 1.5.0, in strict and auto
mode). A virtual-clock test is always run by this plugin, once, on its virtual-clock loop,
even when pytest-asyncio would run it too (auto mode, or ``@pytest.mark.asyncio``): the test
body and its function-scoped async fixtures, ``@pytest_asyncio.fixture`` ones included, run on
the virtual-clock loop, never on pytest-asyncio's (pytest-asyncio still makes its own loop for
the test, unused). Tests without the marker or the fixture stay pytest-asyncio's. When a
``pytest_asyncio_loop_factories`` hook (pytest-asyncio 1.4+) gives several loop factories, a
virtual-clock test still runs once: its variants for the other factories are reported as
skipped, with the reason. (pytest-asyncio's ``event_loop_policy`` fixture and loop factories
are not used for these tests: the loop is oxloop's, the point of the test.)

Not supported: async generator tests and Hypothesis' ``@given`` on async tests.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import unittest
from asyncio import Runner

import pytest

from ._runner import new_event_loop
from ._virtual_clock import VirtualClock

__all__ = ["MARKER", "virtual_clock"]

#: The marker's name: ``@pytest.mark.oxloop_virtual_clock(**clock_options)``.
MARKER = "oxloop_virtual_clock"

_CLOCK_OPTIONS = ("start", "patch_time", "io_quiet_period")
# The fixture owning the test's loop (an asyncio.Runner); put first in a virtual-clock test's
# fixtures, so it is set up before, and torn down after, all the others.
_RUNNER = "_oxloop_virtual_clock_runner"
# pytest-asyncio 1.4+'s parameter giving a test one variant per configured loop factory.
_PYTEST_ASYNCIO_FACTORY = "_asyncio_loop_factory"
# Set on the virtual-clock tests (at collection): the test function, as collected.
_TEST_FUNCTION = pytest.StashKey[object]()


def pytest_configure(config):
    """Registers the ``oxloop_virtual_clock`` marker."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(start=0.0, patch_time=False, io_quiet_period=0.02): run this async test, "
        "and its function-scoped async fixtures, on a fresh oxloop loop with an "
        "oxloop.VirtualClock made with these options (the virtual_clock fixture)",
    )


@pytest.fixture
def virtual_clock(request):
    """The test's ``oxloop.VirtualClock``, made with the options of its
    ``oxloop_virtual_clock`` markers. An ``async def`` test requesting it (directly or through
    a fixture) runs on a loop using this clock, as if marked."""
    return VirtualClock(**_clock_options(request.node))


@pytest.fixture
def _oxloop_virtual_clock_runner(virtual_clock):
    """The virtual-clock test's ``asyncio.Runner``, on an oxloop loop using ``virtual_clock``."""
    with Runner(loop_factory=functools.partial(new_event_loop, clock=virtual_clock)) as runner:
        runner.get_loop()  # now: a clock another loop still uses fails the setup, not the test
        yield runner


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Finds the virtual-clock tests (after other plugins have added their marks) and gives
    each the fixture owning its loop, first."""
    for item in items:
        if not isinstance(item, pytest.Function) or _is_unittest(item):
            continue
        if not inspect.iscoroutinefunction(item.obj):
            if any(mark.name == MARKER for mark in item.own_markers):
                item.warn(
                    pytest.PytestWarning(
                        f"{item.nodeid} is marked {MARKER} but is not an 'async def' test: "
                        "the mark does nothing here"
                    )
                )
            continue
        if item.get_closest_marker(MARKER) is None and "virtual_clock" not in item.fixturenames:
            continue
        item.stash[_TEST_FUNCTION] = item.obj
        # A list of this item's own: parametrized items share the one they were made with.
        item.fixturenames = [_RUNNER, *(name for name in item.fixturenames if name != _RUNNER)]


def pytest_collection_finish(session):
    """A virtual-clock test that pytest-asyncio parametrized by its loop factories runs once:
    of the selected variants, the first (with a factory) runs, the others are skipped, with
    the reason."""
    _skip_loop_factory_variants(session.items)


def _is_unittest(item):
    """A ``unittest.TestCase`` test: unittest runs it (``IsolatedAsyncioTestCase`` has its own
    loop), not pytest's call of the test function."""
    cls = getattr(item, "cls", None)
    return isinstance(cls, type) and issubclass(cls, unittest.TestCase)


def _skip_loop_factory_variants(items):
    """Skips the variants of each virtual-clock test but one (see above)."""
    groups = {}
    for item in items:
        callspec = getattr(item, "callspec", None)
        if _TEST_FUNCTION not in item.stash or callspec is None:
            continue
        if _PYTEST_ASYNCIO_FACTORY not in callspec.params:
            continue
        others = tuple(
            sorted(
                (name, id(value))
                for name, value in callspec.params.items()
                if name != _PYTEST_ASYNCIO_FACTORY
            )
        )
        groups.setdefault((id(item.parent), item.originalname, others), []).append(item)
    for variants in groups.values():
        kept = next(
            (item for item in variants if item.callspec.params[_PYTEST_ASYNCIO_FACTORY]),
            variants[0],
        )
        for item in variants:
            if item is not kept:
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"{MARKER}: runs once, on oxloop's virtual-clock loop, as "
                        f"{kept.name} (not once per pytest-asyncio loop factory)"
                    )
                )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(fixturedef, request):
    """Sets a virtual-clock test's function-scoped async fixtures up (and down) on its loop.

    Outermost of the ``pytest_fixture_setup`` wrappers: the fixture function is swapped for a
    synchronous one before other plugins look at it (pytest-asyncio then leaves it alone)."""
    func = fixturedef.func
    is_async = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
    if is_async and fixturedef.scope != "function":
        _check_wide_async_fixture(fixturedef, request)
    item = request.node
    if (
        not is_async
        or fixturedef.scope != "function"
        or not isinstance(item, pytest.Function)
        or _TEST_FUNCTION not in item.stash
    ):
        return (yield)
    runner = request.getfixturevalue(_RUNNER)
    fixturedef.func = _synchronous_fixture(_bound_fixture_function(func, request), runner, request)
    try:
        return (yield)
    finally:
        fixturedef.func = func


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Runs a virtual-clock test on its loop (the function as collected: when pytest-asyncio
    also runs the test, its stand-in for the function is not called)."""
    func = pyfuncitem.stash.get(_TEST_FUNCTION, None)
    if func is None:
        return None
    __tracebackhide__ = True
    funcargs = pyfuncitem.funcargs
    runner = funcargs[_RUNNER]
    testargs = {name: funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    runner.run(func(**testargs), context=contextvars.copy_context())
    return True


def _check_wide_async_fixture(fixturedef, request):
    """Without pytest-asyncio, nothing runs an async fixture of a wider scope than the test:
    fails a virtual-clock test requesting one with the reason and the ways out."""
    item = getattr(request, "_pyfuncitem", None)
    if (
        isinstance(item, pytest.Function)
        and _TEST_FUNCTION in item.stash
        and not request.config.pluginmanager.hasplugin("asyncio")
    ):
        pytest.fail(
            f"{item.nodeid}: async fixture {fixturedef.argname!r} has scope "
            f"{fixturedef.scope!r}: a virtual-clock test runs its async fixtures on its own "
            "loop, which lasts one test, so only function-scoped ones (make it "
            "function-scoped, or synchronous)",
            pytrace=False,
        )


def _clock_options(item):
    """The ``VirtualClock`` options of the item's ``oxloop_virtual_clock`` marks, merged from
    the farthest (module) to the closest (test)."""
    options = {}
    for mark in reversed(list(item.iter_markers(MARKER))):
        unknown = sorted(set(mark.kwargs) - set(_CLOCK_OPTIONS))
        if mark.args or unknown:
            given = [*map(repr, mark.args), *unknown]
            pytest.fail(
                f"{item.nodeid}: @pytest.mark.{MARKER} takes the keyword arguments "
                f"{', '.join(_CLOCK_OPTIONS)} only, not {', '.join(given)}",
                pytrace=False,
            )
        options.update(mark.kwargs)
    return options


def _bound_fixture_function(func, request):
    """The fixture function bound to the test's instance (a fixture defined in a test class is
    collected bound to another instance of the class)."""
    instance = request.instance
    if (
        instance is not None
        and inspect.ismethod(func)
        and isinstance(instance, type(func.__self__))
    ):
        return func.__func__.__get__(instance)
    return func


def _synchronous_fixture(func, runner, request):
    """A synchronous stand-in for the async fixture function ``func``, running it on
    ``runner``: a generator for an async generator (its teardown runs on the loop too), a
    function for a coroutine function."""
    if inspect.isasyncgenfunction(func):

        @functools.wraps(func, updated=())
        def asyncgen_fixture(*args, **kwargs):
            agen = func(*args, **kwargs)
            context = contextvars.copy_context()
            value = runner.run(_first_item(agen, request.fixturename), context=context)
            restore = _adopt_context_changes(context)
            try:
                yield value
                runner.run(_last_item(agen, request.fixturename), context=context)
            finally:
                restore()

        return asyncgen_fixture

    @functools.wraps(func, updated=())
    def coroutine_fixture(*args, **kwargs):
        context = contextvars.copy_context()
        value = runner.run(func(*args, **kwargs), context=context)
        request.addfinalizer(_adopt_context_changes(context))
        return value

    return coroutine_fixture


async def _first_item(agen, name):
    """The async generator fixture's value: its setup, up to its ``yield``."""
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        raise ValueError(f"fixture {name!r} did not yield a value") from None


async def _last_item(agen, name):
    """The async generator fixture's teardown: the rest, after its ``yield``."""
    try:
        await agen.__anext__()
    except StopAsyncIteration:
        return
    await agen.aclose()
    raise ValueError(f"fixture {name!r} yields more than once (an async fixture yields once)")


def _adopt_context_changes(context):
    """Sets, in the current context, the variables ``context`` changed (what a fixture set is
    then seen by the test and the fixtures after it); returns the function undoing that."""
    tokens = []
    for var, value in context.items():
        try:
            if var.get() is value:
                continue
        except LookupError:
            pass
        tokens.append(var.set(value))

    def restore():
        while tokens:
            token = tokens.pop()
            token.var.reset(token)

    return restore
