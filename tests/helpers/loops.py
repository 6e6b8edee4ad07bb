"""The loops under test, and the leak checks of the ``loop`` fixtures (see conftest.py).

``LOOP_FACTORIES``, ``LOOP_TYPES``  per loop kind ("asyncio", "oxloop"): how to make a loop,
                                    and its class.
``LoopGuard``                       makes a test's loops and checks at its end that nothing
                                    leaked (what the ``leak_check`` fixture yields).
``open_fds``, ``process_state``     snapshots of what a test must leave as it found it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
import warnings

import pytest

import oxloop

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

    def new_loop(self, kind: str | None = None, *, factory=None):
        """A new loop of the guard's kind (or of ``kind``, or made by ``factory()``), checked
        at teardown."""
        before = open_fds()
        loop = (factory or LOOP_FACTORIES[kind or self.kind])()
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
