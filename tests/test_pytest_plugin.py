"""The pytest plugin (``oxloop.pytest_plugin``): the ``oxloop_virtual_clock`` marker and the
``virtual_clock`` fixture, checked by running small test files in a child pytest
(``pytester.runpytest_subprocess``) and reading their outcomes.

The child runs load the plugin with ``-p oxloop.pytest_plugin`` after ``-p no:oxloop`` (which
blocks the ``pytest11`` entry point of that name, once an install declares it, so the module
is never registered twice). They also turn looptime's plugins off, as this repository's
pytest configuration does (which the child runs do not read): installed for other tests,
looptime's plugin fails every fixture when pytest-asyncio is absent.

The tests with pytest-asyncio run where it is installed (they are skipped elsewhere), e.g.::

    python -m venv /tmp/pa-venv && /tmp/pa-venv/bin/pip install pytest-asyncio pytest-timeout \\
        trustme && PYTHONPATH=python /tmp/pa-venv/bin/python -m pytest tests/test_pytest_plugin.py
"""

import importlib.metadata
import importlib.util
import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

# Loads the plugin (by module, the entry point of the same plugin blocked).
LOAD_PLUGIN = ("-p", "no:oxloop", "-p", "oxloop.pytest_plugin")
# Every child run: looptime's plugins off, no cache directory.
COMMON_ARGS = (
    "-p",
    "no:looptime_plugin",
    "-p",
    "no:looptime_chronometers",
    "-p",
    "no:looptime_timeproxies",
    "-p",
    "no:cacheprovider",
)

HAS_PYTEST_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None
needs_pytest_asyncio = pytest.mark.skipif(
    not HAS_PYTEST_ASYNCIO, reason="pytest-asyncio is not installed"
)


def run(pytester, *args, pytest_asyncio=False):
    """Runs pytest on pytester's directory in a child process, with the plugin loaded, and
    pytest-asyncio off unless asked for (where it is installed)."""
    no_asyncio = () if pytest_asyncio else ("-p", "no:asyncio")
    return pytester.runpytest_subprocess(*LOAD_PLUGIN, *COMMON_ARGS, *no_asyncio, *args)


def without_plugin(pytester, *args):
    """Runs pytest as ``run`` does, the plugin off."""
    return pytester.runpytest_subprocess("-p", "no:oxloop", *COMMON_ARGS, "-p", "no:asyncio", *args)


# --------------------------------------------------------------------------------------------
# The marker and the fixture, without pytest-asyncio
# --------------------------------------------------------------------------------------------


def test_an_hour_of_sleep_in_a_marked_test(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import oxloop
        import pytest

        @pytest.mark.oxloop_virtual_clock
        async def test_sleep_an_hour():
            loop = asyncio.get_running_loop()
            assert isinstance(loop, oxloop.Loop)
            before = loop.time()
            await asyncio.sleep(3600)
            assert loop.time() - before == 3600

        @pytest.mark.oxloop_virtual_clock
        async def test_clock_fixture(virtual_clock):
            assert isinstance(virtual_clock, oxloop.VirtualClock)
            assert asyncio.get_running_loop()._virtual_clock is virtual_clock
            assert virtual_clock.time() == 0.0
            await asyncio.wait_for(asyncio.sleep(3600), timeout=7200)
            assert virtual_clock.elapsed == 3600
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_async_fixtures_are_set_up_and_torn_down_on_the_test_loop(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import contextvars
        import pytest

        SEEN = []
        VAR = contextvars.ContextVar("VAR", default="unset")

        @pytest.fixture
        async def server(virtual_clock):
            loop = asyncio.get_running_loop()
            assert loop._virtual_clock is virtual_clock
            VAR.set("set by the fixture")
            await asyncio.sleep(10)
            SEEN.append(("setup", loop, loop.time()))
            yield loop
            await asyncio.sleep(5)
            SEEN.append(("teardown", asyncio.get_running_loop(), loop.time()))
            assert loop._virtual_clock is virtual_clock

        @pytest.fixture
        async def client(server):
            await asyncio.sleep(1)
            return asyncio.get_running_loop()

        @pytest.mark.oxloop_virtual_clock
        async def test_uses_them(server, client, virtual_clock):
            loop = asyncio.get_running_loop()
            assert server is loop and client is loop
            assert loop._virtual_clock is virtual_clock
            assert virtual_clock.time() == 11.0
            assert VAR.get() == "set by the fixture"
            await asyncio.sleep(100)
            SEEN.append(("test", loop, loop.time()))

        def test_after():
            (_, setup_loop, t1), (_, test_loop, t2), (_, teardown_loop, t3) = SEEN
            assert setup_loop is test_loop is teardown_loop
            assert (t1, t2, t3) == (10.0, 111.0, 116.0)
            assert [event for event, _, _ in SEEN] == ["setup", "test", "teardown"]
            assert test_loop.is_closed()
            assert VAR.get() == "unset"
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_advance_fires_the_timers_in_order(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        @pytest.mark.oxloop_virtual_clock
        async def test_advance(virtual_clock):
            loop = asyncio.get_running_loop()
            fired = []
            for delay in (3, 1, 5, 2):
                loop.call_later(delay, lambda d=delay: fired.append((d, loop.time())))
            await virtual_clock.advance(2.5)
            assert fired == [(1, 1.0), (2, 2.0)]
            assert virtual_clock.time() == 2.5
            await virtual_clock.advance(2.5)
            assert fired == [(1, 1.0), (2, 2.0), (3, 3.0), (5, 5.0)]
            assert loop.time() == virtual_clock.time() == 5.0

        @pytest.mark.oxloop_virtual_clock
        async def test_run_until_idle(virtual_clock):
            steps = []

            async def worker():
                for i in range(3):
                    steps.append(i)
                    await asyncio.sleep(0)

            asyncio.get_running_loop().create_task(worker())
            await virtual_clock.run_until_idle()
            assert steps == [0, 1, 2]
            assert virtual_clock.elapsed == 0
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_a_failing_assertion_is_a_failure(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        @pytest.mark.oxloop_virtual_clock
        async def test_fails():
            await asyncio.sleep(60)
            assert asyncio.get_running_loop().time() == 61
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert 60.0 == 61*"])


def test_a_deadlock_fails_the_test_instead_of_hanging(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        @pytest.mark.oxloop_virtual_clock
        async def test_waits_forever():
            await asyncio.Event().wait()
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*DeadlockError: virtual clock: deadlock*", "*test_waits_forever() at *Event.wait()*"]
    )


def test_unmarked_tests_are_unaffected(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        @pytest.fixture
        def number():
            return 1

        def test_sync(number):
            assert number == 1
            with pytest.raises(RuntimeError):
                asyncio.get_running_loop()

        async def test_unmarked_async():
            pass

        @pytest.mark.oxloop_virtual_clock
        def test_marked_but_sync(number):
            assert number == 1
        """
    )
    with_plugin = run(pytester)
    with_plugin.assert_outcomes(passed=2, failed=1)
    # pytest's own verdict on an async test no plugin runs
    with_plugin.stdout.fnmatch_lines(["*async def functions are not natively supported*"])
    without_plugin(pytester).assert_outcomes(passed=2, failed=1)


def test_unittest_cases_are_left_to_unittest(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import unittest
        import pytest

        pytestmark = pytest.mark.oxloop_virtual_clock

        class Case(unittest.IsolatedAsyncioTestCase):
            async def test_on_unittests_loop(self):
                loop = asyncio.get_running_loop()
                assert getattr(loop, "_virtual_clock", None) is None
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_the_mark_on_a_sync_test_warns(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.oxloop_virtual_clock
        def test_sync():
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*is marked oxloop_virtual_clock but is not an 'async def'*"])


def test_the_fixture_alone_makes_a_virtual_clock_test(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        async def test_requests_the_clock(virtual_clock):
            loop = asyncio.get_running_loop()
            assert loop._virtual_clock is virtual_clock
            await asyncio.sleep(86400)
            assert virtual_clock.elapsed == 86400

        @pytest.fixture
        def clock_user(virtual_clock):
            return virtual_clock

        async def test_through_a_fixture(clock_user):
            assert asyncio.get_running_loop()._virtual_clock is clock_user
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_a_sync_test_gets_a_clock_for_its_own_loops(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import oxloop

        def test_runs_its_loop(virtual_clock):
            async def main():
                await asyncio.sleep(50)
                return asyncio.get_running_loop().time()

            assert oxloop.run(main(), clock=virtual_clock) == 50.0
            assert oxloop.run(main(), clock=virtual_clock) == 100.0
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_marker_options(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import time
        import pytest

        pytestmark = pytest.mark.oxloop_virtual_clock(start=1000.0)

        async def test_module_start(virtual_clock):
            assert asyncio.get_running_loop().time() == 1000.0
            assert virtual_clock.start == 1000.0

        @pytest.mark.oxloop_virtual_clock(patch_time=True)
        async def test_merged_with_the_closer_mark(virtual_clock):
            assert virtual_clock.start == 1000.0 and virtual_clock.patch_time
            before = time.monotonic()
            await asyncio.sleep(30)
            assert time.monotonic() - before == pytest.approx(30)

        @pytest.mark.oxloop_virtual_clock(start=5.0)
        async def test_closest_wins():
            assert asyncio.get_running_loop().time() == 5.0

        class TestClass:
            pytestmark = pytest.mark.oxloop_virtual_clock(start=7.0)

            async def test_class_level(self):
                assert asyncio.get_running_loop().time() == 7.0

        @pytest.mark.oxloop_virtual_clock(begin=3)
        async def test_unknown_option():
            pass

        @pytest.mark.oxloop_virtual_clock(3)
        async def test_positional_option():
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*test_unknown_option: *takes the keyword arguments start, patch_time, *",
            "*test_positional_option: *only, not 3*",
        ]
    )


def test_class_tests_and_method_fixtures(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        @pytest.mark.oxloop_virtual_clock
        class TestService:
            @pytest.fixture
            async def service(self):
                self.started = asyncio.get_running_loop().time()
                await asyncio.sleep(2)
                yield self

            async def test_same_instance(self, service):
                assert service is self
                assert self.started == 0.0
                assert asyncio.get_running_loop().time() == 2.0
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_fixture_errors_are_reported(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        @pytest.fixture
        async def broken_setup():
            await asyncio.sleep(1)
            raise LookupError("setup went wrong")
            yield

        @pytest.fixture
        async def broken_teardown():
            yield
            await asyncio.sleep(1)
            raise LookupError("teardown went wrong")

        @pytest.fixture
        async def yields_twice():
            yield 1
            yield 2

        @pytest.fixture(scope="module")
        async def module_wide():
            return 1

        @pytest.mark.oxloop_virtual_clock
        async def test_setup(broken_setup):
            pass

        @pytest.mark.oxloop_virtual_clock
        async def test_teardown(broken_teardown):
            pass

        @pytest.mark.oxloop_virtual_clock
        async def test_twice(yields_twice):
            pass

        @pytest.mark.oxloop_virtual_clock
        async def test_module_wide(module_wide):
            pass
        """
    )
    result = run(pytester)
    # test_teardown and test_twice pass, then error at teardown
    result.assert_outcomes(passed=2, errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "*LookupError: setup went wrong*",
            "*LookupError: teardown went wrong*",
            "*fixture 'yields_twice' yields more than once*",
            "*async fixture 'module_wide' has scope 'module': a virtual-clock test runs*",
        ]
    )


def test_a_clock_fixture_of_a_wider_scope_gives_one_time_line(pytester):
    pytester.makeconftest(
        """
        import oxloop
        import pytest

        @pytest.fixture(scope="module")
        def virtual_clock():
            return oxloop.VirtualClock(start=100.0)
        """
    )
    pytester.makepyfile(
        """
        import asyncio

        async def test_first(virtual_clock):
            assert asyncio.get_running_loop().time() == 100.0
            await asyncio.sleep(10)

        async def test_second(virtual_clock):
            assert asyncio.get_running_loop().time() == 110.0
        """
    )
    run(pytester).assert_outcomes(passed=2)


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------


def test_the_entry_point_is_declared():
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    with pyproject.open("rb") as f:
        config = tomllib.load(f)
    assert config["project"]["entry-points"]["pytest11"] == {"oxloop": "oxloop.pytest_plugin"}


def test_the_installed_entry_point_loads_the_plugin(pytester):
    installed = importlib.metadata.entry_points(group="pytest11", name="oxloop")
    if not installed:
        pytest.skip("oxloop's pytest11 entry point is not installed yet (reinstall oxloop)")
    pytester.makepyfile(
        """
        import asyncio

        async def test_on_the_clock(virtual_clock):
            await asyncio.sleep(60)
            assert virtual_clock.elapsed == 60
        """
    )
    # the entry point alone (no -p)
    pytester.runpytest_subprocess(*COMMON_ARGS).assert_outcomes(passed=1)


# --------------------------------------------------------------------------------------------
# With pytest-asyncio
# --------------------------------------------------------------------------------------------

BOTH_PLUGINS = """
import asyncio
import pytest
import pytest_asyncio

RUNS = []

@pytest_asyncio.fixture
async def asyncio_fixture():
    yield asyncio.get_running_loop()

@pytest.mark.oxloop_virtual_clock
async def test_ours(asyncio_fixture, virtual_clock):
    RUNS.append("ours")
    loop = asyncio.get_running_loop()
    assert asyncio_fixture is loop and loop._virtual_clock is virtual_clock
    await asyncio.sleep(3600)
    assert virtual_clock.elapsed == 3600

@pytest.mark.asyncio
@pytest.mark.oxloop_virtual_clock
async def test_marked_for_both(asyncio_fixture, virtual_clock):
    RUNS.append("both")
    loop = asyncio.get_running_loop()
    assert asyncio_fixture is loop and loop._virtual_clock is virtual_clock
    await virtual_clock.advance(5)
    assert loop.time() == 5.0

@pytest.mark.asyncio
async def test_theirs(asyncio_fixture):
    RUNS.append("theirs")
    loop = asyncio.get_running_loop()
    assert asyncio_fixture is loop
    assert getattr(loop, "_virtual_clock", None) is None

async def test_unmarked():
    RUNS.append("unmarked")

def test_each_ran_once(request):
    auto = request.config.getoption("asyncio_mode") == "auto"
    assert RUNS == ["ours", "both", "theirs", *(["unmarked"] if auto else [])]
"""


@needs_pytest_asyncio
@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_with_pytest_asyncio_each_test_runs_once_on_its_loop(pytester, mode):
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(BOTH_PLUGINS)
    result = run(pytester, f"--asyncio-mode={mode}", pytest_asyncio=True)
    if mode == "auto":
        result.assert_outcomes(passed=5)
    else:
        # strict mode leaves the unmarked async test to pytest, which fails it
        result.assert_outcomes(passed=4, failed=1)


@needs_pytest_asyncio
def test_with_pytest_asyncio_plain_async_fixtures_of_our_tests_are_ours(pytester):
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        @pytest.fixture
        async def plain_fixture():
            yield asyncio.get_running_loop()

        @pytest.mark.oxloop_virtual_clock
        async def test_ours(plain_fixture, virtual_clock):
            assert plain_fixture is asyncio.get_running_loop()
            assert plain_fixture._virtual_clock is virtual_clock
        """
    )
    for mode in ("strict", "auto"):
        run(pytester, f"--asyncio-mode={mode}", pytest_asyncio=True).assert_outcomes(passed=1)


@needs_pytest_asyncio
def test_with_pytest_asyncio_loop_factories_a_test_still_runs_once(pytester):
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(
        """
        import asyncio

        def pytest_asyncio_loop_factories(config, item):
            return {"default": asyncio.new_event_loop, "selector": asyncio.SelectorEventLoop}
        """
    )
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        RUNS = []

        @pytest.mark.parametrize("x", [1, 2])
        @pytest.mark.oxloop_virtual_clock
        async def test_ours(x, virtual_clock):
            RUNS.append(("ours", x))
            assert asyncio.get_running_loop()._virtual_clock is virtual_clock

        async def test_theirs():
            RUNS.append("theirs")

        def test_runs():
            assert RUNS == [("ours", 1), ("ours", 2), "theirs", "theirs"]
        """
    )
    result = run(pytester, "--asyncio-mode=auto", "-rs", pytest_asyncio=True)
    result.assert_outcomes(passed=5, skipped=2)
    result.stdout.fnmatch_lines(
        ["*runs once, on oxloop's virtual-clock loop, as test_ours[[]default-1[]]*"]
    )
    # the variant selected runs, whichever it is
    result = run(pytester, "--asyncio-mode=auto", "-k", "ours and selector", pytest_asyncio=True)
    result.assert_outcomes(passed=2)


@needs_pytest_asyncio
def test_with_pytest_asyncio_wider_async_fixtures_stay_pytest_asyncios(pytester):
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        import asyncio
        import pytest
        import pytest_asyncio

        @pytest_asyncio.fixture(scope="module", loop_scope="module")
        async def settings():
            await asyncio.sleep(0)
            return {"loop": asyncio.get_running_loop()}

        @pytest.mark.oxloop_virtual_clock
        async def test_ours(settings, virtual_clock):
            loop = asyncio.get_running_loop()
            assert loop._virtual_clock is virtual_clock
            assert settings["loop"] is not loop
        """
    )
    run(pytester, pytest_asyncio=True).assert_outcomes(passed=1)
