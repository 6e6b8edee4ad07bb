"""The virtual clock's semantics (``oxloop.VirtualClock``): time, order, jumps, control,
deadlock, time patching and the command line. Real work under the clock (sockets, threads,
subprocesses, signals) is in test_virtual_clock_real_work.py; libraries on real servers in
ecosystem/test_virtual_clock_services.py.

The virtual clock is an oxloop feature: these tests run on oxloop only. Each checks what an
ideal clock would give stock asyncio (the comparison with stock asyncio itself, on looptime, is
in test_virtual_clock_example.py).
"""

import asyncio
import random
import subprocess
import sys
import textwrap
import time

import pytest

import oxloop


@pytest.fixture
def clock():
    return oxloop.VirtualClock()


@pytest.fixture
def vloop(oxloop_leak_check, clock):
    """A loop on the ``clock`` fixture's virtual clock (closed and leak-checked at teardown)."""
    return oxloop_leak_check.new_loop(factory=lambda: oxloop.new_event_loop(clock=clock))


def test_an_hour_of_sleep_is_an_hour_of_loop_time(vloop, clock):
    async def main():
        start = vloop.time()
        await asyncio.sleep(3600)
        return vloop.time() - start

    assert vloop.run_until_complete(main()) == 3600
    assert clock.time() == vloop.time() == 3600
    assert clock.elapsed == 3600


def test_time_equals_the_deadline_inside_the_timer_callback(vloop):
    seen = []

    async def main():
        for delay in (0.1, 0.2, 1 / 3, 2.5, 1e-9, 7 * 24 * 3600):
            handle = vloop.call_later(delay, lambda h=None: seen.append(vloop.time()))
            seen.append(handle.when())
            await asyncio.sleep(delay * 2)

    vloop.run_until_complete(main())
    deadlines, times = seen[0::2], seen[1::2]
    assert times == deadlines


def test_equal_deadlines_fire_in_scheduling_order(vloop):
    fired = []

    async def main():
        when = vloop.time() + 10
        for i in range(100):
            vloop.call_at(when, fired.append, i)
        vloop.call_later(5, fired.append, "earlier")
        await asyncio.sleep(20)

    vloop.run_until_complete(main())
    assert fired == ["earlier", *range(100)]


def test_time_never_goes_backwards_and_does_not_move_while_callbacks_run(vloop):
    readings = []

    async def ticker(period):
        for _ in range(50):
            before = vloop.time()
            for _ in range(3):
                await asyncio.sleep(0)  # ready callbacks: no time passes
            assert vloop.time() == before
            readings.append(vloop.time())
            await asyncio.sleep(period)

    async def main():
        await asyncio.gather(ticker(0.7), ticker(1.3), ticker(60))

    vloop.run_until_complete(main())
    assert readings == sorted(readings)


def _simulation(seed):
    """A seeded program: its log of (loop time, event) is what an ideal clock gives."""
    log = []

    async def worker(name, rng):
        loop = asyncio.get_running_loop()
        for step in range(20):
            await asyncio.sleep(rng.choice([0, 0.5, 1.25, 3, 60]))
            log.append((loop.time(), name, step))

    async def main():
        rng = random.Random(seed)
        await asyncio.gather(*(worker(f"w{i}", random.Random(rng.random())) for i in range(20)))

    return main, log


def _ideal_times(seed):
    """The times at which the program above logs, computed without a loop: each worker's
    are the running sums of its delays (an ideal clock makes them exact)."""
    rng = random.Random(seed)
    times = []
    for _ in range(20):
        worker_rng, now = random.Random(rng.random()), 0.0
        for _ in range(20):
            now += worker_rng.choice([0, 0.5, 1.25, 3, 60])
            times.append(now)
    return sorted(times)


def test_runs_are_identical_and_times_are_those_of_an_ideal_clock(oxloop_leak_check):
    logs = []
    for _ in range(3):
        main, log = _simulation(seed=7)
        clock = oxloop.VirtualClock()
        loop = oxloop_leak_check.new_loop(factory=lambda c=clock: oxloop.new_event_loop(clock=c))
        loop.run_until_complete(main())
        logs.append(log)
    assert logs[0] == logs[1] == logs[2]
    assert [t for t, _, _ in logs[0]] == _ideal_times(seed=7)


def test_start_and_epoch_sized_times(oxloop_leak_check):
    clock = oxloop.VirtualClock(start=1.7e9)
    loop = oxloop_leak_check.new_loop(factory=lambda: oxloop.new_event_loop(clock=clock))

    async def main():
        start = loop.time()
        ticks = 0
        while loop.time() - start < 0.01:  # 10,000 sleeps of a microsecond: no stall
            await asyncio.sleep(1e-6)
            ticks += 1
        return start, ticks

    start, ticks = loop.run_until_complete(main())
    assert start == 1.7e9
    # What an ideal clock gives: each deadline is the float sum now + 1e-6 (at 1.7e9 a float's
    # step is 0.24 us, so each sleep lasts 0.95 us), and the loop sits on each deadline.
    ideal_ticks, now = 0, 1.7e9
    while now - 1.7e9 < 0.01:
        now += 1e-6
        ideal_ticks += 1
    assert ticks == ideal_ticks
    assert clock.time() == now


def test_advance_runs_due_timers_in_order_and_lands_exactly(vloop, clock):
    fired = []

    async def main():
        for delay in (3, 1, 2, 10):
            vloop.call_later(delay, lambda d=delay: fired.append((d, vloop.time())))
        await clock.advance(5)
        assert vloop.time() == 5
        assert fired == [(1, 1), (2, 2), (3, 3)]
        await clock.advance(0)
        assert vloop.time() == 5
        await clock.advance(5)
        assert fired[-1] == (10, 10)
        with pytest.raises(ValueError, match="seconds must be a number >= 0"):
            await clock.advance(-1)

    vloop.run_until_complete(main())


def test_run_until_idle_returns_without_moving_time(vloop, clock):
    steps = []

    async def chatter():
        for i in range(5):
            steps.append(i)
            await asyncio.sleep(0)
        await asyncio.sleep(100)

    async def main():
        task = asyncio.create_task(chatter())
        await clock.run_until_idle()
        assert steps == [0, 1, 2, 3, 4]
        assert vloop.time() == 0
        task.cancel()

    vloop.run_until_complete(main())


def test_control_methods_refuse_another_loop(oxloop_leak_check, clock):
    loop = oxloop_leak_check.new_loop()  # a real-clock loop
    with pytest.raises(RuntimeError, match="must be awaited on the loop using it"):
        loop.run_until_complete(clock.advance(1))


def test_a_clock_serves_one_loop_at_a_time_and_time_goes_on(oxloop_leak_check, clock):
    first = oxloop_leak_check.new_loop(factory=lambda: oxloop.new_event_loop(clock=clock))
    with pytest.raises(RuntimeError, match="already used by another event loop"):
        oxloop.new_event_loop(clock=clock)
    first.run_until_complete(asyncio.sleep(10))
    first.close()
    second = oxloop_leak_check.new_loop(factory=lambda: oxloop.new_event_loop(clock=clock))
    assert second.time() == 10
    second.run_until_complete(asyncio.sleep(5))
    assert clock.time() == 15


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"start": -1.0}, ValueError, "start must be a finite number of seconds"),
        ({"start": float("nan")}, ValueError, "start must be a finite number of seconds"),
        ({"start": 1e300}, ValueError, "start must be a finite number of seconds"),
        ({"io_quiet_period": -0.1}, ValueError, "io_quiet_period must be between"),
        ({"start": "0"}, TypeError, "must be real number, not str"),
    ],
)
def test_bad_clock_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        oxloop.VirtualClock(**kwargs)


def test_clock_must_be_a_virtual_clock():
    with pytest.raises(TypeError, match=r"clock must be an oxloop\.VirtualClock or None, not str"):
        oxloop.new_event_loop(clock="fast")


def test_runner_and_run_take_the_clock(oxloop_leak_check):
    clock = oxloop.VirtualClock()

    async def main():
        await asyncio.sleep(120)
        return asyncio.get_running_loop().time()

    with asyncio.Runner(loop_factory=lambda: oxloop.new_event_loop(clock=clock)) as runner:
        assert runner.run(main()) == 120
    assert oxloop.run(main(), clock=oxloop.VirtualClock(start=5)) == 125


def test_deadlock_raises_naming_the_waiting_tasks(oxloop_leak_check):
    async def wait_forever(event):
        await event.wait()

    async def main():
        event = asyncio.Event()
        waiter = asyncio.create_task(wait_forever(event), name="stuck-waiter")
        await waiter

    with pytest.raises(oxloop.DeadlockError) as caught:
        oxloop.run(main(), clock=oxloop.VirtualClock())
    message = str(caught.value)
    assert "deadlock: nothing can wake the loop" in message
    assert "Task 'stuck-waiter': " in message
    assert ".wait_forever() at test_virtual_clock.py:" in message
    assert "-> Event.wait() at locks.py:" in message
    assert "awaiting task 'stuck-waiter'" in message
    assert {task.get_name() for task in caught.value.tasks} >= {"stuck-waiter"}
    assert isinstance(caught.value, RuntimeError)


def test_deadlock_is_found_as_soon_as_the_loop_is_idle(vloop, clock):
    async def main():
        await asyncio.sleep(30)
        await asyncio.get_running_loop().create_future()

    task = vloop.create_task(main())
    with pytest.raises(oxloop.DeadlockError):
        vloop.run_until_complete(task)
    assert vloop.time() == 30  # raised at the last timer's time, not later
    task.cancel()
    vloop.run_until_complete(asyncio.gather(task, return_exceptions=True))


def test_no_deadlock_while_a_signal_handler_may_still_wake_the_loop(vloop):
    import os
    import signal

    async def main():
        done = asyncio.Event()
        vloop.add_signal_handler(signal.SIGUSR1, done.set)
        try:
            vloop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
            await done.wait()
        finally:
            vloop.remove_signal_handler(signal.SIGUSR1)

    vloop.run_until_complete(main())


def test_real_clock_loops_are_unchanged(oxloop_leak_check):
    loop = oxloop_leak_check.new_loop()
    assert loop._virtual_clock is None
    before = time.monotonic()
    now = loop.time()
    assert before <= now <= time.monotonic()


def test_patch_time_follows_the_clock_only_while_the_loop_runs(oxloop_leak_check):
    clock = oxloop.VirtualClock(start=100, patch_time=True)
    loop = oxloop_leak_check.new_loop(factory=lambda: oxloop.new_event_loop(clock=clock))
    real_monotonic = time.monotonic

    async def main():
        wall0, perf0, mono0 = time.time(), time.perf_counter(), time.monotonic()
        ns0 = time.perf_counter_ns(), time.time_ns(), time.monotonic_ns()
        assert mono0 == loop.time() == 100
        await asyncio.sleep(3600)
        assert time.monotonic() - mono0 == 3600
        assert time.perf_counter() - perf0 == pytest.approx(3600, abs=1e-6)
        assert time.time() - wall0 == pytest.approx(3600, abs=1e-6)
        ns1 = time.perf_counter_ns(), time.time_ns(), time.monotonic_ns()
        assert [b - a for a, b in zip(ns0, ns1, strict=True)] == [3600 * 10**9] * 3

    loop.run_until_complete(main())
    assert time.monotonic is real_monotonic
    assert abs(time.monotonic() - real_monotonic()) < 1


def test_without_patch_time_the_time_module_is_real(vloop):
    async def main():
        before = time.monotonic()
        await asyncio.sleep(3600)
        return time.monotonic() - before

    assert vloop.run_until_complete(main()) < 60


def test_command_line_virtual_clock(tmp_path):
    script = tmp_path / "sim.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys, time

            async def main():
                loop = asyncio.get_running_loop()
                t0, m0 = time.perf_counter(), time.monotonic()
                await asyncio.sleep(5 * 3600)
                print(type(loop).__module__, sys.argv[1:])
                print(round(time.perf_counter() - t0, 6), time.monotonic() - m0)

            asyncio.run(main())
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "oxloop", "--virtual-clock", str(script), "-x", "--flag"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["oxloop._loop ['-x', '--flag']", "18000.0 18000.0"]


def test_command_line_virtual_clock_usage_errors():
    result = subprocess.run(
        [sys.executable, "-m", "oxloop", "--virtual-clock"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m oxloop [-h] [--virtual-clock]")
    assert "Traceback" not in result.stderr
