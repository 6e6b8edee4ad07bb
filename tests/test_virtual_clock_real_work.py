"""Real work under a virtual clock (issue #17), without external services: loopback TCP and
Unix-socket echoes, a child process, a thread-pool job, ``call_soon_threadsafe`` from a
thread, signal handlers, and timeouts that must fire at their virtual deadline.

Each piece of work runs inside ``asyncio.wait_for(..., timeout)`` while a background task
sleeps hour after hour of virtual time: if the loop jumped while real work was outstanding,
the jump would reach the ``wait_for`` deadline first and the work would fail with a spurious
``TimeoutError``. After the work, each test checks that time does jump again (an hour of
``asyncio.sleep`` completes; were it held, pytest-timeout would fail the test). No test
asserts on wall-clock speed: the assertions are about virtual time (``loop.time()``), which
moves only by the jump rule (see ``oxloop.VirtualClock`` and ``event_loop/virtual_wait.rs``).

The loops are made under the ``oxloop_leak_check`` guard of conftest.py (closed at the end,
no leaked fds, threads or signal handlers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time

import pytest

import oxloop
from helpers.virtual_time import (
    HOUR,
    assert_time_jumps,
    new_virtual_loop,
    sleeping_hours,
)

# How far past its deadline a timeout may fire while virtual time runs with real time (a
# thread is alive): the real time the loop takes to run the timer and the cancellation.
LATE_SLACK = 0.5
ECHOES = 1000


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def clock():
    return oxloop.VirtualClock()


@pytest.fixture
def vloop(oxloop_leak_check, clock):
    """A virtual-clock oxloop loop on ``clock``, leak-checked."""
    return new_virtual_loop(oxloop_leak_check, clock)


# --------------------------------------------------------------------------------------------
# Loopback connections (both ends in the loop: they never hold time)
# --------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def echo_connection(kind, sock_dir):
    """A stream (reader, writer) connected to an echo server of ``kind`` ("tcp" or "unix") in
    the running loop; at exit the connection is closed on both sides and the server too."""
    handlers = []

    async def echo(reader, writer):
        handlers.append(asyncio.current_task())
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    if kind == "tcp":
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connecting = asyncio.open_connection("127.0.0.1", port)
    else:
        path = os.path.join(sock_dir, "echo.sock")
        server = await asyncio.start_unix_server(echo, path)
        connecting = asyncio.open_unix_connection(path)
    try:
        reader, writer = await connecting
        try:
            yield reader, writer
        finally:
            writer.close()
            await writer.wait_closed()
            await asyncio.gather(*handlers)
    finally:
        server.close()
        await server.wait_closed()


def test_loopback_echo_round_trips_neither_hold_nor_move_time(vloop, kind, sock_dir):
    """1,000 echo round trips with the server and client in the loop, inside
    ``wait_for(..., 5)`` while another task sleeps hours: no timeout, no jump (the sleeper
    never wakes) and no time passes at all (an in-loop connection does not make virtual time
    run with real time either). Once the echoes are done, time jumps again."""

    async def main():
        loop = asyncio.get_running_loop()
        async with echo_connection(kind, sock_dir) as (reader, writer), sleeping_hours() as sleeper:

            async def round_trips():
                for i in range(ECHOES):
                    line = b"echo %d\n" % i
                    writer.write(line)
                    await writer.drain()
                    assert await reader.readline() == line

            start = loop.time()
            await asyncio.wait_for(round_trips(), 5)
            elapsed = loop.time() - start
            assert sleeper.hours == 0
            assert elapsed <= 1e-6
            await assert_time_jumps(sleeper)
            # The idle connection (still open) does not hold time either, and still works.
            writer.write(b"after the jump\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"after the jump\n"

    vloop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Child processes, executor jobs, threads (real work: time runs with real time)
# --------------------------------------------------------------------------------------------


def test_subprocess_communicate_is_not_cut_short(vloop):
    """``sh -c 'sleep 0.2; echo hi'`` with ``communicate()`` inside ``wait_for(..., 10)`` while
    another task sleeps hours: the running child holds time, so it answers before any jump."""

    async def main():
        loop = asyncio.get_running_loop()
        async with sleeping_hours() as sleeper:

            async def run_child():
                proc = await asyncio.create_subprocess_exec(
                    "sh", "-c", "sleep 0.2; echo hi", stdout=asyncio.subprocess.PIPE
                )
                out, _ = await proc.communicate()
                return proc.returncode, out

            start = loop.time()
            assert await asyncio.wait_for(run_child(), 10) == (0, b"hi\n")
            elapsed = loop.time() - start
            assert sleeper.hours == 0
            # Virtual time ran with real time while the child ran (no jump, no standstill).
            assert 0.1 < elapsed < 10
            await assert_time_jumps(sleeper)

    vloop.run_until_complete(main())


def test_to_thread_sleep_is_not_cut_short(vloop):
    """``to_thread(time.sleep, 0.05)`` inside ``wait_for(..., 9)`` while another task sleeps
    hours: the executor job holds time until its result is back; afterwards the idle worker
    thread does not hold it."""

    async def main():
        loop = asyncio.get_running_loop()
        async with sleeping_hours() as sleeper:
            start = loop.time()
            assert await asyncio.wait_for(asyncio.to_thread(time.sleep, 0.05), 9) is None
            elapsed = loop.time() - start
            assert sleeper.hours == 0
            assert 0 < elapsed < 9
            await assert_time_jumps(sleeper)
        await loop.shutdown_default_executor()

    vloop.run_until_complete(main())


def test_call_soon_threadsafe_from_a_thread_is_waited_for(vloop):
    """A thread sleeps 50 ms, then sets a future's result with ``call_soon_threadsafe``; the
    loop awaits it inside ``wait_for(fut, 5)`` while another task sleeps hours: the live
    thread holds time, so its call arrives before any jump."""

    async def main():
        loop = asyncio.get_running_loop()
        async with sleeping_hours() as sleeper:
            fut = loop.create_future()

            def later():
                time.sleep(0.05)
                loop.call_soon_threadsafe(fut.set_result, "from the thread")

            thread = threading.Thread(target=later)
            start = loop.time()
            thread.start()
            try:
                assert await asyncio.wait_for(fut, 5) == "from the thread"
            finally:
                thread.join()
            elapsed = loop.time() - start
            assert sleeper.hours == 0
            assert 0 < elapsed < 5
            await assert_time_jumps(sleeper)

    vloop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Signal handlers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["subprocess", "thread"])
def test_signal_handler_runs_before_any_jump(vloop, sender):
    """A SIGUSR1 handler sets a future awaited inside ``wait_for(fut, 5)`` while another task
    sleeps hours; the signal comes from a child (``sh -c 'sleep 0.1; kill -USR1 <pid>'``) or
    from a thread calling ``os.kill`` after 50 ms. What sends it holds time (a running child,
    a live thread), so the handler runs before any jump."""

    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def handler(name):
            if not fut.done():
                fut.set_result(name)

        loop.add_signal_handler(signal.SIGUSR1, handler, "SIGUSR1")
        try:
            async with sleeping_hours() as sleeper:
                start = loop.time()
                if sender == "subprocess":
                    proc = await asyncio.create_subprocess_exec(
                        "sh", "-c", f"sleep 0.1; kill -USR1 {os.getpid()}"
                    )
                    try:
                        assert await asyncio.wait_for(fut, 5) == "SIGUSR1"
                    finally:
                        assert await asyncio.wait_for(proc.wait(), 5) == 0
                else:

                    def kill_later():
                        time.sleep(0.05)
                        os.kill(os.getpid(), signal.SIGUSR1)

                    thread = threading.Thread(target=kill_later)
                    thread.start()
                    try:
                        assert await asyncio.wait_for(fut, 5) == "SIGUSR1"
                    finally:
                        thread.join()
                elapsed = loop.time() - start
                assert sleeper.hours == 0
                assert 0 < elapsed < 5
                await assert_time_jumps(sleeper)
        finally:
            assert loop.remove_signal_handler(signal.SIGUSR1)

    vloop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Timeouts that should fire
# --------------------------------------------------------------------------------------------


def test_timeout_fires_exactly_at_its_virtual_deadline(vloop):
    """``wait_for(asyncio.sleep(100), 5)`` raises TimeoutError at exactly 5 virtual seconds
    (a jump to the deadline, not the sleep's end), while another task sleeps hours."""

    async def main():
        loop = asyncio.get_running_loop()
        async with sleeping_hours() as sleeper:
            start = loop.time()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.sleep(100), 5)
            assert loop.time() - start == 5
            assert sleeper.hours == 0

    vloop.run_until_complete(main())


def test_timeout_fires_at_its_deadline_after_a_thread_ends(vloop):
    """While a thread lives (100 ms), virtual time runs with real time; once it has ended, time
    jumps to the deadline: ``wait_for(asyncio.sleep(100), 5)`` times out at 5 virtual seconds
    (after the real time the thread held, well before the sleep's end)."""

    async def main():
        loop = asyncio.get_running_loop()
        async with sleeping_hours() as sleeper:
            thread = threading.Thread(target=time.sleep, args=(0.1,))
            start = loop.time()
            thread.start()
            try:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(asyncio.sleep(100), 5)
                elapsed = loop.time() - start
            finally:
                thread.join()
            assert 5 <= elapsed <= 5 + LATE_SLACK
            assert sleeper.hours == 0

    vloop.run_until_complete(main())


def test_timeout_fires_at_its_deadline_in_real_time_while_a_thread_lives(vloop):
    """While a thread lives, virtual time runs with real time; a ``wait_for(asyncio.sleep(100),
    0.2)`` that ends while the thread still lives fires at its deadline: 0.2 virtual seconds
    after it began (plus the real time taken to run the timer), not earlier, not at a jump."""

    async def main():
        loop = asyncio.get_running_loop()
        async with sleeping_hours() as sleeper:
            release = threading.Event()
            thread = threading.Thread(target=release.wait, args=(10,))
            thread.start()
            try:
                start = loop.time()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(asyncio.sleep(100), 0.2)
                elapsed = loop.time() - start
                assert thread.is_alive()
            finally:
                release.set()
                thread.join()
            assert 0.2 <= elapsed <= 0.2 + LATE_SLACK
            assert sleeper.hours == 0
            await assert_time_jumps(sleeper)

    vloop.run_until_complete(main())


def test_timeout_fires_at_its_deadline_while_a_child_runs(vloop):
    """A ``wait_for(proc.wait(), 0.2)`` on a child that sleeps 5 s (it holds time: virtual time
    runs with real time) times out 0.2 virtual seconds after it began; the child is then
    killed."""

    async def main():
        loop = asyncio.get_running_loop()
        async with sleeping_hours() as sleeper:
            proc = await asyncio.create_subprocess_exec("sleep", "5")
            try:
                start = loop.time()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.2)
                elapsed = loop.time() - start
            finally:
                proc.kill()
                await proc.wait()
            assert 0.2 <= elapsed <= 0.2 + LATE_SLACK
            assert sleeper.hours == 0
            await assert_time_jumps(sleeper)

    vloop.run_until_complete(main())


def test_oxloop_run_with_a_virtual_clock(oxloop_leak_check):
    """The same rule through ``oxloop.run(main(), clock=...)``: a loopback round trip and a
    thread-pool job inside short ``wait_for``s while hours of sleep jump by."""
    clock = oxloop.VirtualClock(start=1000.0)

    async def main():
        loop = asyncio.get_running_loop()
        assert loop.time() == 1000.0
        async with sleeping_hours() as sleeper:
            a, b = socket.socketpair()
            with a, b:
                _, wa = await asyncio.open_connection(sock=a)
                rb, wb = await asyncio.open_connection(sock=b)
                wa.write(b"ping\n")
                assert await asyncio.wait_for(rb.readline(), 0.001) == b"ping\n"
                assert await asyncio.wait_for(asyncio.to_thread(sum, [1, 2, 3]), 1) == 6
                assert sleeper.hours == 0
                await assert_time_jumps(sleeper)
                wa.close()
                wb.close()
                await wa.wait_closed()
                await wb.wait_closed()
        return loop.time()

    assert oxloop.run(main(), clock=clock) >= 1000.0 + HOUR
    assert clock.elapsed >= HOUR
