"""Shared fixtures of the behaviour suite: every behaviour is written once and runs on stock
asyncio *and* on oxloop (in the style of uvloop's test-suite).

Fixtures
--------
``loop_kind``          "asyncio" or "oxloop" (parametrized: each test using it runs twice).
``leak_check``         the test's ``LoopGuard`` for that kind: at teardown it closes the loops
                       it made and fails the test if anything leaked (fds, threads, tasks,
                       signal handlers, unexpected exception-handler calls...).
``loop_factory``       ``loop_factory(kind=None)`` makes fresh, guarded loops.
``loop``               one fresh loop from ``loop_factory``.
``oxloop_leak_check``  a guard for tests not parametrized by loop kind (oxloop-only features).
``oxloop_loop``        an oxloop loop under that guard.
``restore_policy``     restores asyncio's event loop policy after the test.

Marks
-----
``@pytest.mark.oxloop_xfail(reason=...)``  the oxloop case of a parametrized test is a known
oxloop bug: it becomes ``xfail(strict=True)`` (the asyncio case must still pass, and the
oxloop case starts failing the suite as soon as the bug is fixed, so the mark gets removed).

Every test gets a pytest-timeout limit (``DEFAULT_TIMEOUT`` unless it sets its own), so a hang
fails one test instead of stalling CI.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

import oxloop

DEFAULT_TIMEOUT = 30

LOOP_FACTORIES = {
    "asyncio": asyncio.new_event_loop,
    "oxloop": oxloop.new_event_loop,
}

LOOP_TYPES = {
    "asyncio": asyncio.SelectorEventLoop,
    "oxloop": oxloop.Loop,
}

# Signals whose disposition a test must leave as it found it.
WATCHED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
)

# Files of this directory owned by others: not given a default timeout here.
_NOT_OURS = {"test_dns_literals.py"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "oxloop_xfail(reason): the oxloop case of this test is a known oxloop bug (strict xfail)",
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).name in _NOT_OURS:
            continue
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))
        marker = item.get_closest_marker("oxloop_xfail")
        callspec = getattr(item, "callspec", None)
        if (
            marker is not None
            and callspec is not None
            and callspec.params.get("loop_kind") == "oxloop"
        ):
            reason = marker.kwargs.get("reason") or (
                marker.args[0] if marker.args else "oxloop bug"
            )
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))


# --------------------------------------------------------------------------------------------
# Process state snapshots
# --------------------------------------------------------------------------------------------


def open_fds() -> set[tuple[int, str]]:
    """The process's open file descriptors, as (number, what it points to) pairs."""
    result = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            result.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except OSError:  # the listing's own fd, or closed meanwhile
            pass
    return result


def current_wakeup_fd() -> int:
    """``signal.set_wakeup_fd``'s current value, without changing it (main thread only)."""
    previous = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(previous)
    return previous


def process_state() -> dict:
    """What a test must leave as it found it."""
    policy = asyncio.get_event_loop_policy()
    return {
        "running loop": asyncio._get_running_loop(),
        "asyncgen hooks": tuple(sys.get_asyncgen_hooks()),
        "coroutine origin tracking depth": sys.get_coroutine_origin_tracking_depth(),
        "wakeup fd": current_wakeup_fd(),
        "signal handlers": {sig: signal.getsignal(sig) for sig in WATCHED_SIGNALS},
        "event loop policy": type(policy),
        "current event loop": getattr(policy._local, "_loop", None),
    }


class LoopGuard:
    """Makes loops of one kind for a test, and checks at the end that nothing leaked.

    Checked at teardown: the test left no loop running, no task pending, no unexpected call of
    the exception handler (a test expecting errors installs its own handler); after closing
    the loops, no file descriptor opened during the test is left open (except those the loop
    constructors opened: that ``close()`` releases those is a test of its own), no thread
    started during the test is still alive, and the process state (running loop, async
    generator hooks, signal handlers, wakeup fd, policy...) is as before.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.loop_fds: set[tuple[int, str]] = set()
        self.unexpected_errors: list[dict] = []
        self.fds_before = open_fds()
        self.threads_before = set(threading.enumerate())
        self.state_before = process_state()

    def _record_error(self, loop, context):
        self.unexpected_errors.append(context)

    def new_loop(self, kind: str | None = None):
        """A new loop of the guard's kind (or of ``kind``), checked at teardown."""
        before = open_fds()
        loop = LOOP_FACTORIES[kind or self.kind]()
        self.loop_fds |= open_fds() - before
        loop.set_exception_handler(self._record_error)
        self.loops.append(loop)
        return loop

    def finish(self):
        problems = []
        for loop in self.loops:
            if loop.is_running():
                problems.append(f"{loop!r} is still running")
                continue
            if not loop.is_closed():
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                if pending:
                    problems.append(f"pending tasks left on {loop!r}: {pending!r}")
                    for task in pending:
                        task.cancel()
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()
        if self.unexpected_errors:
            problems.append(
                f"unexpected calls of the exception handler: {self.unexpected_errors!r}"
            )
        self.loops.clear()

        for thread in set(threading.enumerate()) - self.threads_before:
            thread.join(timeout=10)
            if thread.is_alive():
                problems.append(f"thread left running: {thread!r}")

        leaked = open_fds() - self.fds_before - self.loop_fds
        if leaked:
            # Maybe only garbage not yet collected (an exception's traceback can keep a loop
            # alive): collect it (slow, so only now); what was left unclosed in it says so
            # with a ResourceWarning.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ResourceWarning)
                gc.collect()
            for warning in caught:
                if issubclass(warning.category, ResourceWarning):
                    problems.append(f"left unclosed: {warning.message}")
            leaked = open_fds() - self.fds_before - self.loop_fds
        if leaked:
            problems.append(f"file descriptors left open: {sorted(leaked)}")

        state = process_state()
        for key, before in self.state_before.items():
            if state[key] != before:
                problems.append(f"{key} changed: {before!r} -> {state[key]!r}")
        if state["running loop"] is not None:
            asyncio.events._set_running_loop(None)
        if problems:
            pytest.fail("leak check failed:\n  " + "\n  ".join(problems))


@pytest.fixture(params=sorted(LOOP_FACTORIES))
def loop_kind(request) -> str:
    """The kind of loop under test: "asyncio" or "oxloop"."""
    return request.param


@pytest.fixture
def leak_check(loop_kind):
    """The ``LoopGuard`` of the test: for tests whose loops are made elsewhere (``oxloop.run``,
    ``asyncio.Runner``...), it still checks that no fd, thread or process state leaked."""
    guard = LoopGuard(loop_kind)
    yield guard
    guard.finish()


@pytest.fixture
def loop_factory(leak_check):
    """``loop_factory(kind=None)`` makes a fresh loop of ``loop_kind`` (or of ``kind``); the
    loops are closed and leak-checked at teardown."""
    return leak_check.new_loop


@pytest.fixture
def loop(loop_factory):
    """A fresh loop of each kind."""
    return loop_factory()


@pytest.fixture
def oxloop_leak_check():
    """A ``LoopGuard`` making oxloop loops, for tests that are not parametrized by loop kind."""
    guard = LoopGuard("oxloop")
    yield guard
    guard.finish()


@pytest.fixture
def oxloop_loop(oxloop_leak_check):
    """An oxloop loop, for oxloop-only features (same leak checks as ``loop``)."""
    return oxloop_leak_check.new_loop()


@pytest.fixture
def restore_policy():
    """Restores asyncio's event loop policy (and the current loop) after the test."""
    before = asyncio.events._event_loop_policy
    yield
    asyncio.set_event_loop_policy(before)


# --------------------------------------------------------------------------------------------
# Helpers for subprocess tests
# --------------------------------------------------------------------------------------------

PYTHON = sys.executable


def child_env() -> dict:
    """The environment of a child interpreter: ours, without asyncio debug switches."""
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_python(args, *, cwd=None, timeout=60) -> subprocess.CompletedProcess:
    """Run ``python args...`` to completion and return its result (text output)."""
    return subprocess.run(
        [PYTHON, *args], cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def pair():
    """A connected pair of non-blocking Unix sockets, closed afterwards."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()
