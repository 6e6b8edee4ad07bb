"""``VirtualClock``: asyncio time that moves only when nothing else can happen.

A loop made with ``oxloop.new_event_loop(clock=VirtualClock())`` runs its timers in virtual
time: when nothing is ready and no real work is outstanding, it jumps straight to the next
timer's deadline, so hours of ``asyncio.sleep`` take milliseconds, in the order an ideal clock
would give, identically on every run. Real sockets, threads and subprocesses keep working:
while they have work outstanding, virtual time runs with real time (the rule is in
``docs/architecture.md``, the mechanics in ``_virtual_time.py`` and the native
``event_loop/virtual_wait.rs``).
"""

import asyncio
from asyncio import futures

from . import _core


class DeadlockError(RuntimeError):
    """A virtual-clock loop found that nothing can ever wake it: no timer, nothing ready, no
    real work outstanding, nothing outside the loop to wait for. Raised out of
    ``run_until_complete`` (and ``oxloop.run``) instead of hanging; ``tasks`` holds the tasks
    that were still waiting."""

    def __init__(self, message, tasks=()):
        super().__init__(message)
        self.tasks = list(tasks)


class VirtualClock(_core.VirtualClockCore):
    """A virtual clock for one oxloop loop at a time.

    ``VirtualClock(start=0.0, *, patch_time=False, io_quiet_period=0.02)``:

    - ``start``: what ``loop.time()`` reads first, in seconds (time never goes backwards,
      also when the clock is used again by a later loop);
    - ``patch_time``: while the loop runs, ``time.time()``, ``time.monotonic()``,
      ``time.perf_counter()`` and their ``_ns`` forms follow the clock on the loop's thread
      (``python -m oxloop --virtual-clock`` sets it);
    - ``io_quiet_period``: how long, in real seconds, a connection to another process keeps
      time from jumping after it last received data (a reply arriving in pieces).

    Use it with ``oxloop.run(main(), clock=clock)``, ``oxloop.new_event_loop(clock=clock)``
    or ``asyncio.Runner(loop_factory=lambda: oxloop.new_event_loop(clock=clock))``.
    """

    @property
    def elapsed(self):
        """Virtual seconds since the clock's start."""
        return self.time() - self.start

    async def advance(self, seconds):
        """Move virtual time on by ``seconds``, running the timers due meanwhile in deadline
        order (each at its own deadline), and return at exactly ``start time + seconds``.

        Await it on the clock's loop. Real work outstanding (a thread, a child process, a
        reply from another process) is waited for in real time, as always.
        """
        if not seconds >= 0:
            raise ValueError(f"seconds must be a number >= 0, not {seconds!r}")
        loop = self._running_loop("advance")
        done = loop.create_future()
        timer = loop.call_at(
            self.time() + seconds, futures._set_result_unless_cancelled, done, None
        )
        try:
            await done
        finally:
            timer.cancel()

    async def run_until_idle(self):
        """Return once nothing is ready and no real work is outstanding, without moving
        virtual time (what ``trio.testing.wait_all_tasks_blocked`` waits for)."""
        loop = self._running_loop("run_until_idle")
        idle = loop.create_future()
        loop._add_idle_waiter(idle)
        await idle

    def _running_loop(self, method):
        loop = asyncio.get_running_loop()
        if getattr(loop, "_virtual_clock", None) is not self:
            raise RuntimeError(f"VirtualClock.{method}() must be awaited on the loop using it")
        return loop

    def __repr__(self):
        return (
            f"<VirtualClock time={self.time()!r} elapsed={self.elapsed!r} "
            f"real_elapsed={self.real_elapsed:.3f}>"
        )
