"""The workloads of the loop benchmark suite.

Each workload is a function ``run(loop, n) -> seconds``: it does ``n`` units of work on the
fresh, not yet running event loop it is given and returns the time the work took, measured
with ``time.perf_counter`` around the work only (loop creation, input preparation and the
correctness check afterwards are excluded). Every workload checks that the work really
happened, so a loop that silently skips work fails loudly instead of looking fast.

The ``n`` given to ``@workload`` is the full-size amount of work, chosen so that one run takes
roughly 100 ms on stock asyncio on a small 2-core VM.
"""

import asyncio
import itertools
import random
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from time import perf_counter
from typing import Any

WorkloadFunction = Callable[[asyncio.AbstractEventLoop, int], float]


@dataclass(frozen=True)
class Workload:
    name: str
    run: WorkloadFunction
    n: int
    unit: str  # what one of the n units of work is, e.g. "callbacks"

    @property
    def summary(self) -> str:
        """The first line of the workload function's docstring."""
        return (self.run.__doc__ or "").strip().splitlines()[0]


WORKLOADS: list[Workload] = []


def workload(n: int, unit: str) -> Callable[[WorkloadFunction], WorkloadFunction]:
    """Registers the decorated function as a workload doing ``n`` ``unit`` at full size."""

    def register(run: WorkloadFunction) -> WorkloadFunction:
        WORKLOADS.append(Workload(run.__name__, run, n, unit))
        return run

    return register


class WorkloadCheckError(RuntimeError):
    """The loop did not do the work the workload asked for."""


def _check(what: str, actual: object, expected: object) -> None:
    if actual != expected:
        raise WorkloadCheckError(f"{what}: expected {expected!r}, got {actual!r}")


def _time_run_forever(loop: asyncio.AbstractEventLoop, schedule: Callable[[], None]) -> float:
    """Times ``schedule()`` plus ``loop.run_forever()``; a callback must stop the loop."""
    start = perf_counter()
    schedule()
    loop.run_forever()
    return perf_counter() - start


def _time_until_complete(
    loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any]
) -> tuple[float, Any]:
    """Times ``loop.run_until_complete(coroutine)``; returns the time and the coroutine's result."""
    start = perf_counter()
    result = loop.run_until_complete(coroutine)
    return perf_counter() - start, result


# --- Callbacks -----------------------------------------------------------------------------


@workload(n=20_000, unit="callbacks")
def call_soon_chain(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """call_soon one at a time: each no-arg callback schedules the next (one loop pass each).

    Measures the per-iteration cost of the loop when a single handle is ready: call_soon,
    one trip through the run loop (with a zero-timeout I/O poll, unless the loop skips it
    when callbacks are ready), and the callback call.
    """
    remaining = n

    def step() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining:
            loop.call_soon(step)
        else:
            loop.stop()

    elapsed = _time_run_forever(loop, lambda: loop.call_soon(step))
    _check("callbacks left to run", remaining, 0)
    return elapsed


@workload(n=40_000, unit="callbacks")
def call_soon_batch(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """call_soon of n no-arg callbacks at once, all run in a single loop pass.

    Measures the raw cost of creating a Handle and running it from the ready queue, with the
    per-iteration overhead amortised away. The callback is a C-level bound method
    (``itertools.count().__next__``) so the callback body itself costs almost nothing.
    """
    callbacks_run = itertools.count()
    count_callback = callbacks_run.__next__

    def schedule() -> None:
        for _ in range(n):
            loop.call_soon(count_callback)
        loop.call_soon(loop.stop)

    elapsed = _time_run_forever(loop, schedule)
    _check("callbacks run", next(callbacks_run), n)
    return elapsed


@workload(n=20_000, unit="callbacks")
def call_soon_args(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """call_soon with 3 positional arguments, chained: each callback schedules the next.

    Same shape as call_soon_chain but the handle carries ``(remaining, payload, flag)``, so the
    difference between the two shows the cost of storing and passing callback arguments.
    """
    payload = ("some", "payload")
    finished = []

    def step(remaining: int, payload: tuple[str, str], flag: bool) -> None:
        if remaining:
            loop.call_soon(step, remaining - 1, payload, not flag)
        else:
            finished.append(flag)
            loop.stop()

    elapsed = _time_run_forever(loop, lambda: loop.call_soon(step, n - 1, payload, False))
    _check("final flag (parity of callbacks run)", finished, [n % 2 == 0])
    return elapsed


# --- Timers --------------------------------------------------------------------------------


@workload(n=20_000, unit="timers")
def call_later_cancel(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """call_later of n timers with varied delays (1 s - 1 h), cancel them all, run one pass.

    Measures timer insertion into the scheduler (random order, so a heap has real work) plus
    cancellation, including whatever clean-up the loop does for cancelled timers in the
    following iteration. None of the timers fires.
    """
    rng = random.Random(0)
    delays = [rng.uniform(1.0, 3600.0) for _ in range(n)]
    timers = []

    def schedule() -> None:
        for delay in delays:
            timers.append(loop.call_later(delay, _never_called))
        for timer in timers:
            timer.cancel()
        loop.call_soon(loop.stop)

    elapsed = _time_run_forever(loop, schedule)
    _check("timers not cancelled", sum(not timer.cancelled() for timer in timers), 0)
    return elapsed


def _never_called() -> None:
    raise AssertionError("a cancelled timer fired")  # reported by the loop's exception handler


@workload(n=10_000, unit="timers")
def timers_fire(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """call_later of n timers with delays of 0-99 µs that all fire; runs until the last fires.

    Measures timer insertion, expiry and dispatch: the delays are tiny (100 distinct values,
    including 0) so the work, not the waiting, dominates.
    """
    delays = [(i % 100) * 1e-6 for i in range(n)]
    pending = n

    def fire() -> None:
        nonlocal pending
        pending -= 1
        if not pending:
            loop.stop()

    def schedule() -> None:
        for delay in delays:
            loop.call_later(delay, fire)

    elapsed = _time_run_forever(loop, schedule)
    _check("timers not fired", pending, 0)
    return elapsed


# --- Coroutines and tasks ------------------------------------------------------------------


@workload(n=15_000, unit="sleeps")
def sleep0(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """One task doing ``await asyncio.sleep(0)`` n times.

    Measures the cost of a task yielding to the loop and being resumed: the Task step
    machinery plus one loop iteration per sleep.
    """

    async def sleep_n_times() -> int:
        sleeps = 0
        for _ in range(n):
            await asyncio.sleep(0)
            sleeps += 1
        return sleeps

    elapsed, sleeps = _time_until_complete(loop, sleep_n_times())
    _check("sleeps done", sleeps, n)
    return elapsed


@workload(n=5_000, unit="tasks")
def tasks_gather(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """create_task of n trivial coroutines, then ``asyncio.gather`` of them all.

    Measures task creation, the first (and only) step of each task, completion callbacks and
    gather's result collection.
    """

    async def trivial(value: int) -> int:
        return value

    async def spawn_and_gather() -> list[int]:
        return await asyncio.gather(*[asyncio.create_task(trivial(i)) for i in range(n)])

    elapsed, results = _time_until_complete(loop, spawn_and_gather())
    _check("gathered results", results, list(range(n)))
    return elapsed


class _Mailbox:
    """A one-message channel: the receiver awaits a future that the sender resolves."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future = loop.create_future()

    def send(self, message: int) -> None:
        self._future.set_result(message)

    async def receive(self) -> int:
        message = await self._future
        self._future = self._loop.create_future()
        return message


@workload(n=5_000, unit="round trips")
def future_ping_pong(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """Two tasks exchange n round trips, each message a fresh future resolved by the peer.

    Measures create_future, set_result, awaiting a future and the wake-up of the task waiting
    on it: two of each per round trip, with exactly one task runnable at any time.
    """

    async def pinger(to_ponger: _Mailbox, to_pinger: _Mailbox) -> int:
        reply = -1
        for message in range(n):
            to_ponger.send(message)
            reply = await to_pinger.receive()
        return reply

    async def ponger(to_ponger: _Mailbox, to_pinger: _Mailbox) -> None:
        for _ in range(n):
            to_pinger.send(await to_ponger.receive())

    async def play() -> int:
        to_ponger, to_pinger = _Mailbox(loop), _Mailbox(loop)
        last_reply, _ = await asyncio.gather(
            pinger(to_ponger, to_pinger), ponger(to_ponger, to_pinger)
        )
        return last_reply

    elapsed, last_reply = _time_until_complete(loop, play())
    _check("last reply", last_reply, n - 1)
    return elapsed


# --- File descriptor watching ------------------------------------------------------------


@workload(n=20_000, unit="callbacks")
def reader_level(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """add_reader on a socket that stays readable: its callback runs once per loop pass.

    Measures level-triggered readiness, asyncio's ``add_reader`` semantics: each iteration
    polls, finds the socket still readable (nothing is read from it) and runs the callback.
    """
    ours, theirs = socket.socketpair()
    remaining = n

    def on_readable() -> None:
        nonlocal remaining
        remaining -= 1
        if not remaining:
            loop.remove_reader(ours.fileno())
            loop.stop()

    with ours, theirs:
        theirs.send(b"x")
        elapsed = _time_run_forever(loop, lambda: loop.add_reader(ours.fileno(), on_readable))
    _check("callbacks left to run", remaining, 0)
    return elapsed


@workload(n=10_000, unit="round trips")
def reader_ping_pong(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """Two add_reader callbacks on the ends of a socketpair bounce one byte n times.

    Measures readiness of descriptors that become readable, are drained and wait again: per
    message one poll, one ``recv`` and one ``send``; two messages per round trip.
    """
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    round_trips = 0

    def on_left() -> None:
        nonlocal round_trips
        left.recv(1)
        round_trips += 1
        if round_trips == n:
            loop.remove_reader(left.fileno())
            loop.remove_reader(right.fileno())
            loop.stop()
        else:
            left.send(b"p")

    def on_right() -> None:
        right.recv(1)
        right.send(b"p")

    def schedule() -> None:
        loop.add_reader(left.fileno(), on_left)
        loop.add_reader(right.fileno(), on_right)
        left.send(b"p")

    with left, right:
        elapsed = _time_run_forever(loop, schedule)
    _check("round trips", round_trips, n)
    return elapsed


# --- asyncio primitives built on the loop --------------------------------------------------

QUEUE_SIZE = 100


@workload(n=30_000, unit="items")
def queue(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """A producer task puts n items through an ``asyncio.Queue(maxsize=100)`` to a consumer.

    Measures the pure-Python queue's blocking put/get on top of the loop's futures and task
    wake-ups: the bounded queue makes the two tasks alternate in bursts.
    """

    async def produce(items: asyncio.Queue[int | None]) -> None:
        for item in range(n):
            await items.put(item)
        await items.put(None)

    async def consume(items: asyncio.Queue[int | None]) -> int:
        received = 0
        while await items.get() is not None:
            received += 1
        return received

    async def run_pipeline() -> int:
        items: asyncio.Queue[int | None] = asyncio.Queue(maxsize=QUEUE_SIZE)
        _, received = await asyncio.gather(produce(items), consume(items))
        return received

    elapsed, received = _time_until_complete(loop, run_pipeline())
    _check("items received", received, n)
    return elapsed


WORKERS_IN_FLIGHT = 100


@workload(n=5_000, unit="jobs")
def worker_pool(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """n jobs with 100 in flight, refilled with ``asyncio.wait(..., FIRST_COMPLETED)``.

    Each job yields 1-4 times (``sleep(0)``) so completions are staggered and every wait
    returns only part of the pool. Measures task churn plus asyncio.wait's per-call
    registration and removal of a done-callback on every pending task.
    """

    async def job(yields: int) -> None:
        for _ in range(yields):
            await asyncio.sleep(0)

    async def run_pool() -> int:
        in_flight: set[asyncio.Task[None]] = set()
        started = finished = 0
        while started < n or in_flight:
            while started < n and len(in_flight) < WORKERS_IN_FLIGHT:
                in_flight.add(asyncio.create_task(job(started % 4 + 1)))
                started += 1
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            finished += len(done)
        return finished

    elapsed, finished = _time_until_complete(loop, run_pool())
    _check("jobs finished", finished, n)
    return elapsed
