"""Run one stdlib asyncio test module against one event loop, recording each test.

This is the subprocess half of ``run_stdlib_tests.py``; run it through that
driver.  It:

1. makes the loop under test the one asyncio hands out: installs its event loop
   policy, and patches ``asyncio.events._init_event_loop_policy`` so that the
   ``asyncio.set_event_loop_policy(None)`` the tests call in their tearDown /
   tearDownModule brings back a fresh policy of the loop under test, not
   asyncio's default one (and, before each test, replaces a foreign policy a
   previous test left behind);
2. instruments the loop class: ``__init__`` counts loops created, and
   ``run_forever`` / ``run_until_complete`` count loops run, so that each test
   can be told apart as having used the loop under test or not;
3. imports the stdlib module, drops the TestCases that hard-code asyncio's own
   loops and defines the module's TestCases for the loop under test (see
   ``stdlib_modules.py``);
4. runs the tests with a ``unittest.TestResult`` that writes one JSON line per
   event to the ``--out`` file, flushed at once, so that the driver still knows
   which test was running if this process crashes or hangs (a per-test
   ``faulthandler`` watchdog turns a hang into an exit with a traceback).

The records are raw outcomes; the driver classifies them (expected failures,
"did not use the loop", ...).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import fnmatch
import functools
import importlib
import json
import os
import re
import sys
import time
import traceback
import unittest
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stdlib_modules import MODULES_BY_NAME, LoopTestClass, StdlibModule

#: Longest detail (traceback + captured output) kept per test record.
MAX_DETAIL = 20_000

#: Outcomes from most to least severe; a test that reports several (subtests)
#: keeps the most severe one.
SEVERITY = ("error", "failed", "unexpected_success", "expected_failure", "passed", "skipped")


# --------------------------------------------------------------------------
# The loop under test
# --------------------------------------------------------------------------


@dataclass
class LoopTarget:
    """The event loop implementation the tests are pointed at."""

    #: "oxloop", "uvloop" or "asyncio".
    name: str
    #: Prefix of the TestCase classes defined for it ("Oxloop" + "EventLoopTests").
    class_prefix: str
    #: Creates a new loop (used by the classes defined from stdlib mixins).
    factory: Callable[[], asyncio.AbstractEventLoop]
    #: Policy class installed as asyncio's event loop policy.
    policy_class: type
    #: Class whose instances count as "the loop under test".
    loop_class: type


def load_target(name: str) -> LoopTarget:
    """Import the loop implementation ``name`` and describe it."""
    if name == "oxloop":
        import oxloop

        return LoopTarget(
            "oxloop", "Oxloop", oxloop.new_event_loop, oxloop.EventLoopPolicy, oxloop.Loop
        )
    if name == "uvloop":
        import uvloop

        return LoopTarget(
            "uvloop", "Uvloop", uvloop.new_event_loop, uvloop.EventLoopPolicy, uvloop.Loop
        )
    if name == "asyncio":
        # A trivial subclass, so that loops the tests create explicitly with
        # asyncio.SelectorEventLoop() (or the test loops) are *not* counted,
        # exactly as they would not be for oxloop.
        class StandinSelectorLoop(asyncio.SelectorEventLoop):
            """asyncio's own selector loop, as handed out by the stand-in policy."""

        class StandinPolicy(asyncio.DefaultEventLoopPolicy):
            """asyncio's default policy, creating StandinSelectorLoop."""

            _loop_factory = StandinSelectorLoop

        return LoopTarget(
            "asyncio", "Asyncio", StandinSelectorLoop, StandinPolicy, StandinSelectorLoop
        )
    raise ValueError(f"unknown loop {name!r}")


class LoopUsage:
    """Counts, since the last reset, loops created and run.

    ``created`` and ``ran`` count loops of the target's class;
    ``foreign_created`` and ``foreign_ran`` count every other asyncio loop
    (asyncio's selector loops, the stdlib's mock-clock ``TestLoop``, mocked
    ``BaseEventLoop`` objects).  The counters are process-wide: a loop created
    or run in another thread during a test counts for that test too.
    """

    COUNTERS = ("created", "ran", "foreign_created", "foreign_ran")

    def __init__(self) -> None:
        self.reset()
        #: How creation is detected: "<Loop>.__init__" or "factory+policy".
        self.method = ""

    def reset(self) -> None:
        for counter in self.COUNTERS:
            setattr(self, counter, 0)

    def snapshot(self) -> dict[str, int]:
        return {counter: getattr(self, counter) for counter in self.COUNTERS}

    def install(self, target: LoopTarget) -> None:
        """Wrap the target's loop class (or, failing that, its factories)."""
        cls = target.loop_class
        try:
            self._wrap(cls, "__init__", "created")
            self.method = f"{cls.__name__}.__init__"
        except (TypeError, AttributeError):
            # An immutable (extension) type: count at the two places the tests
            # can get one from instead.
            target.factory = self._counting(target.factory, "created")
            self._wrap(target.policy_class, "new_event_loop", "created")
            self.method = "factory+policy"
        for name in ("run_forever", "run_until_complete"):
            try:
                self._wrap(cls, name, "ran")
            except (TypeError, AttributeError):
                pass
        # Every other asyncio loop is a BaseEventLoop and runs through its run_forever.
        self._wrap(asyncio.BaseEventLoop, "__init__", "foreign_created", unless=cls)
        self._wrap(asyncio.BaseEventLoop, "run_forever", "foreign_ran", unless=cls)

    def _counting(self, func: Callable, counter: str, unless: type | None = None) -> Callable:
        usage = self

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            if unless is None or not (args and isinstance(args[0], unless)):
                setattr(usage, counter, getattr(usage, counter) + 1)
            return func(*args, **kwargs)

        return wrapper

    def _wrap(self, cls: type, name: str, counter: str, unless: type | None = None) -> None:
        setattr(cls, name, self._counting(getattr(cls, name), counter, unless))


def install_policy(target: LoopTarget) -> None:
    """Make the target's policy asyncio's policy, and keep it so."""
    events = asyncio.events

    def _init_event_loop_policy() -> None:
        # Replaces asyncio's: called by get_event_loop_policy() when the policy
        # was reset with set_event_loop_policy(None).
        with events._lock:
            if events._event_loop_policy is None:
                events._event_loop_policy = target.policy_class()

    events._init_event_loop_policy = _init_event_loop_policy
    asyncio.set_event_loop_policy(target.policy_class())


def check_instrumentation(target: LoopTarget, usage: LoopUsage) -> None:
    """Fail loudly if the counting cannot see the loop under test."""
    usage.reset()
    loop = asyncio.new_event_loop()
    try:
        if not isinstance(loop, target.loop_class) or not usage.created:
            raise RuntimeError(
                f"asyncio.new_event_loop() gave {type(loop)!r} (created={usage.created}):"
                f" the {target.name} policy is not in force or not counted"
            )
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    if usage.ran == 0 or usage.foreign_created or usage.foreign_ran:
        raise RuntimeError(
            f"running the {target.name} loop was not counted right: {usage.snapshot()}"
        )
    selector_loop = asyncio.SelectorEventLoop()
    try:
        selector_loop.run_until_complete(asyncio.sleep(0))
    finally:
        selector_loop.close()
    if usage.created != 1 or usage.foreign_created != 1 or usage.foreign_ran != 1:
        raise RuntimeError(f"asyncio.SelectorEventLoop() was not counted right: {usage.snapshot()}")
    usage.reset()


# --------------------------------------------------------------------------
# Recording results
# --------------------------------------------------------------------------


class RecordWriter:
    """Appends JSON records, one a line, flushed at once."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")

    def write(self, **record) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()


class RecordingResult(unittest.TestResult):
    """A TestResult writing each test's outcome and loop usage to a RecordWriter."""

    def __init__(
        self,
        tests: list[unittest.TestCase],
        writer: RecordWriter,
        usage: LoopUsage,
        target: LoopTarget,
        test_timeout: float,
    ):
        super().__init__()
        self.tests = tests
        self.buffer = True  # captured stdout/stderr is appended to tracebacks
        self.writer = writer
        self.usage = usage
        self.target = target
        self.test_timeout = test_timeout
        self.policy_repairs = 0
        self._outcome: str | None = None
        self._detail = ""
        self._started = 0.0

    # -- per-test bookkeeping ---------------------------------------------

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self._repair_policy()
        self.usage.reset()
        self._outcome, self._detail = None, ""
        self.writer.write(event="start", id=test.id())
        self._arm_watchdog()
        self._started = time.monotonic()

    def stopTest(self, test: unittest.TestCase) -> None:
        duration = time.monotonic() - self._started
        output = self._captured_output() if self._outcome not in ("passed", "skipped") else ""
        super().stopTest(test)
        self.writer.write(
            event="test",
            id=test.id(),
            outcome=self._outcome or "error",
            detail=self._detail[-MAX_DETAIL:] if self._outcome else "no outcome was reported",
            output=output[-MAX_DETAIL:],
            duration=round(duration, 3),
            **self.usage.snapshot(),
        )
        self._arm_watchdog()  # also covers class/module fixtures up to the next test

    def _arm_watchdog(self) -> None:
        """Exit (with every thread's traceback on stderr) if the process hangs."""
        faulthandler.dump_traceback_later(self.test_timeout, exit=True, file=sys.__stderr__)

    def _repair_policy(self) -> None:
        """Bring back the target's policy if a previous test left another one."""
        policy = asyncio.events._event_loop_policy
        if policy is not None and not isinstance(policy, self.target.policy_class):
            asyncio.set_event_loop_policy(self.target.policy_class())
            self.policy_repairs += 1

    def _set(self, outcome: str, detail: str = "") -> None:
        if self._outcome is None or SEVERITY.index(outcome) < SEVERITY.index(self._outcome):
            self._outcome, self._detail = outcome, detail

    # -- unittest's callbacks ---------------------------------------------

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set("passed")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set("failed", self._traceback(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.TestCase):
            self._set("error", self._traceback(err, test))
        else:
            self._fixture_outcome(test, "error", self._traceback(err, test))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if not isinstance(test, unittest.TestCase):
            self._fixture_outcome(test, "skipped", reason)
        elif not hasattr(test, "test_case") or self._outcome is None:
            # The test itself, or a skipped subtest of a test reporting nothing else.
            self._set("skipped", reason)

    def _fixture_outcome(self, holder, outcome: str, detail: str) -> None:
        """An error or skip raised by a class or module fixture, outside any test.

        When setUpClass or setUpModule fails or skips, unittest does not run
        the tests it covers at all: record each of them with that outcome (and
        no loop usage), so that they are counted.  Any other fixture error
        (tearDownClass, tearDownModule, ...) is recorded as such.
        """
        match = re.fullmatch(r"(\w+) \((.*)\)", holder.description)
        fixture, scope = match.groups() if match else ("", "")
        covered = []
        if fixture == "setUpClass":
            covered = [t for t in self.tests if unittest.util.strclass(type(t)) == scope]
        elif fixture == "setUpModule":
            covered = [t for t in self.tests if type(t).__module__ == scope]
        for test in covered:
            self.writer.write(
                event="test",
                id=test.id(),
                outcome=outcome,
                detail=f"{holder.description}: {detail}"[-MAX_DETAIL:],
                duration=0.0,
                **dict.fromkeys(LoopUsage.COUNTERS, 0),
            )
        if not covered and outcome == "error":
            self.writer.write(
                event="fixture_error", id=holder.description, detail=detail[-MAX_DETAIL:]
            )

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set("expected_failure", self._traceback(err, test))

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set("unexpected_success", "the test is marked @expectedFailure in the stdlib")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "failed" if issubclass(err[0], test.failureException) else "error"
            self._set(kind, f"{subtest.id()}\n{self._traceback(err, test)}")

    # -- helpers ----------------------------------------------------------

    def _traceback(self, err, test) -> str:
        """The formatted exception, without the captured output unittest appends."""
        buffer, self.buffer = self.buffer, False
        try:
            return self._exc_info_to_string(err, test)
        finally:
            self.buffer = buffer

    def _captured_output(self) -> str:
        """What the running test wrote to sys.stdout / sys.stderr so far."""
        parts = []
        for label, stream in (("stdout", self._stdout_buffer), ("stderr", self._stderr_buffer)):
            text = stream.getvalue() if stream is not None else ""
            if text:
                parts.append(f"--- captured {label} ---\n{text}")
        return "\n".join(parts)


# --------------------------------------------------------------------------
# Building the suite
# --------------------------------------------------------------------------


def _resolve(module, dotted: str):
    return functools.reduce(getattr, dotted.split("."), module)


def _iter_tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _iter_tests(item)
        else:
            yield item


def make_loop_class(module, spec: LoopTestClass, target: LoopTarget) -> type:
    """Define ``spec``'s TestCase for ``target`` inside ``module`` (not bound in it)."""
    name = target.class_prefix + spec.suffix

    def new_loop(self):
        return target.factory()

    namespace = {
        "__module__": module.__name__,
        "__qualname__": name,
        "__doc__": (
            f"{' + '.join(spec.bases)} run on a {target.name} loop (defined by the stdlib runner)."
        ),
    }
    for method in spec.factory_methods:
        namespace[method] = new_loop
    return type(name, tuple(_resolve(module, base) for base in spec.bases), namespace)


def adapt_runners(module, target: LoopTarget) -> None:
    """test_runners: make ``BaseTest.new_loop`` build a loop under test.

    The stdlib's ``new_loop`` (the factory of the ``TestPolicy`` every test
    installs) builds an ``asyncio.BaseEventLoop`` with a mocked selector and a
    fake ``shutdown_asyncgens`` that sets ``shutdown_ag_run``, which tearDown
    checks.  This builds a real loop under test instead, whose
    ``shutdown_asyncgens`` sets that flag and then does its real work.
    """

    def new_loop(self):
        loop = target.factory()
        real_shutdown_asyncgens = loop.shutdown_asyncgens
        loop.shutdown_ag_run = False

        async def shutdown_asyncgens():
            loop.shutdown_ag_run = True
            await real_shutdown_asyncgens()

        loop.shutdown_asyncgens = shutdown_asyncgens
        return loop

    module.BaseTest.new_loop = new_loop


#: Fixture adapters, by the name ``StdlibModule.adapter`` gives.
ADAPTERS = {"runners": adapt_runners}


def build_tests(
    spec: StdlibModule, target: LoopTarget, adapt: bool = True
) -> list[unittest.TestCase]:
    """The tests of ``spec`` for ``target``, in load order."""
    loader = unittest.TestLoader()
    module = importlib.import_module(spec.module)
    if spec.adapter and adapt:
        ADAPTERS[spec.adapter](module, target)
    tests = []
    if spec.stdlib_tests:
        for test in _iter_tests(loader.loadTestsFromModule(module)):
            if type(test).__name__ not in spec.drop_classes:
                tests.append(test)
    for class_spec in spec.loop_classes:
        cls = make_loop_class(module, class_spec, target)
        keep = (
            vars(_resolve(module, class_spec.only_tests_of)) if class_spec.only_tests_of else None
        )
        for test in _iter_tests(loader.loadTestsFromTestCase(cls)):
            if keep is None or test._testMethodName in keep:
                tests.append(test)
    return tests


def skip_test(test: unittest.TestCase, reason: str) -> None:
    """Make ``test`` report a skip without running (not even its setUp)."""

    @unittest.skip(reason)
    def skipped():
        pass  # pragma: no cover

    setattr(test, test._testMethodName, skipped)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def run(module_name: str, loop_name: str, out: str, config: dict) -> int:
    """Run one module; returns the process exit status."""
    writer = RecordWriter(out)
    faulthandler.enable(file=sys.__stderr__, all_threads=True)
    try:
        target = load_target(loop_name)
        usage = LoopUsage()
        usage.install(target)
        install_policy(target)
        check_instrumentation(target, usage)
        tests = build_tests(
            MODULES_BY_NAME[module_name], target, adapt=config.get("adapters", True)
        )
    except BaseException:
        writer.write(event="setup_error", detail=traceback.format_exc()[-MAX_DETAIL:])
        return 3
    writer.write(
        event="meta", loop=target.name, counting=usage.method, python=sys.version.split()[0]
    )

    exclude = set(config.get("exclude", ()))
    patterns = config.get("filters") or []
    runner_skips = config.get("skip", {})
    selected = []
    for test in tests:
        test_id = test.id()
        if test_id in exclude:
            continue
        if patterns and not any(fnmatch.fnmatchcase(test_id, p) or p in test_id for p in patterns):
            continue
        if test_id in runner_skips:
            skip_test(test, f"runner: {runner_skips[test_id]}")
        selected.append(test)

    writer.write(event="plan", ids=[test.id() for test in selected])
    result = RecordingResult(selected, writer, usage, target, config.get("test_timeout", 60.0))
    result._arm_watchdog()
    unittest.TestSuite(selected).run(result)
    writer.write(event="done", tests=result.testsRun, policy_repairs=result.policy_repairs)
    # The watchdog stays armed: a hang at interpreter exit (a thread or an
    # executor that never ends) also ends the process, with a traceback.
    result._arm_watchdog()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True, choices=sorted(MODULES_BY_NAME))
    parser.add_argument("--loop", required=True, choices=("oxloop", "uvloop", "asyncio"))
    parser.add_argument("--out", required=True, help="JSON-lines file the records are appended to")
    parser.add_argument(
        "--config", help="JSON file: exclude (ids), skip ({id: reason}), filters, test_timeout"
    )
    args = parser.parse_args(argv)
    config = {}
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            config = json.load(f)
    return run(args.module, args.loop, args.out, config)


if __name__ == "__main__":
    sys.exit(main())
