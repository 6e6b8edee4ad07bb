"""Helpers of the virtual-clock tests (test_virtual_clock_real_work.py and
ecosystem/test_virtual_clock_services.py): a loop on a virtual clock under a ``LoopGuard``,
a task sleeping hour after hour (a far deadline to jump to), and virtual-time measurements."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

import oxloop

HOUR = 3600.0


def new_virtual_loop(guard, clock=None):
    """A loop on ``clock`` (default: a fresh ``VirtualClock``), closed and leak-checked by
    ``guard`` (a ``LoopGuard``) at the end of the test. No other thread may be alive: one would
    make virtual time run with real time, which the tests using this rule out."""
    assert_no_other_thread()
    clock = clock if clock is not None else oxloop.VirtualClock()
    return guard.new_loop(factory=lambda: oxloop.new_event_loop(clock=clock))


def assert_no_other_thread():
    """Fails if a thread other than this one is alive (after giving threads left by earlier
    tests a moment to end): it would make virtual time run with real time."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread():
            thread.join(timeout=5)
    assert threading.active_count() == 1, (
        f"threads left over from elsewhere would hold virtual time: {threading.enumerate()}"
    )


class HourSleeper:
    """A task sleeping an hour of virtual time, again and again (``hours`` counts them): it
    gives the loop a far deadline to jump to whenever nothing holds time."""

    def __init__(self):
        self.hours = 0
        self.task = asyncio.create_task(self._sleep())

    async def _sleep(self):
        while True:
            await asyncio.sleep(HOUR)
            self.hours += 1


@contextlib.asynccontextmanager
async def sleeping_hours():
    """A running ``HourSleeper``, cancelled at exit."""
    sleeper = HourSleeper()
    try:
        yield sleeper
    finally:
        sleeper.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sleeper.task


async def assert_time_jumps(sleeper):
    """Once the work is done, nothing holds time: an hour of sleep is a jump (the background
    sleeper wakes too)."""
    loop = asyncio.get_running_loop()
    hours, before = sleeper.hours, loop.time()
    await asyncio.sleep(HOUR)
    assert loop.time() - before == pytest.approx(HOUR, abs=1e-6)
    assert sleeper.hours > hours


class Stopwatch:
    """Virtual seconds since it was made (or last ``restart``)."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()

    def restart(self):
        self.start = self.loop.time()

    @property
    def elapsed(self):
        return self.loop.time() - self.start
