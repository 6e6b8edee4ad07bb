"""Unix signals: add_signal_handler / remove_signal_handler (callbacks with arguments, return
values, errors, close() restoring the handlers), signals waking a blocked loop, and Ctrl+C
(SIGINT) ending a program blocked in oxloop.run / asyncio.Runner / run_forever with
KeyboardInterrupt (in a child process).

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
"""

import asyncio
import os
import signal
import subprocess
import textwrap
import threading
import time

import pytest

from helpers.processes import PYTHON, child_env


def kill_self(sig=signal.SIGUSR1):
    os.kill(os.getpid(), sig)


# --------------------------------------------------------------------------------------------
# add_signal_handler / remove_signal_handler
# --------------------------------------------------------------------------------------------


def test_signal_runs_the_callback_with_its_arguments_on_the_loop(loop):
    calls = []

    async def main():
        done = loop.create_future()

        def handler(*args):
            calls.append((args, asyncio.get_running_loop(), threading.current_thread()))
            done.set_result(None)

        loop.add_signal_handler(signal.SIGUSR1, handler, "arg", 2)
        kill_self()
        await done

    try:
        loop.run_until_complete(main())
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert calls == [(("arg", 2), loop, threading.main_thread())]


def test_each_signal_runs_the_callback(loop):
    count = 0

    async def main():
        nonlocal count
        for expected in range(1, 6):
            done = loop.create_future()

            def handler():
                nonlocal count
                count += 1
                done.set_result(None)

            loop.add_signal_handler(signal.SIGUSR1, handler)
            kill_self()
            await done
            assert count == expected

    try:
        loop.run_until_complete(main())
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert count == 5


@pytest.mark.timeout(20)
def test_signal_wakes_a_loop_blocked_with_no_timers(loop):
    received = []

    def handler():
        received.append(True)
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR2, handler)
    started = threading.Event()

    def send():
        started.wait()
        time.sleep(0.05)  # let the loop block (not needed for correctness)
        kill_self(signal.SIGUSR2)

    thread = threading.Thread(target=send)
    thread.start()
    loop.call_soon(started.set)
    try:
        loop.run_forever()
    finally:
        thread.join()
        loop.remove_signal_handler(signal.SIGUSR2)
    assert received == [True]


def test_signal_received_while_not_running_runs_on_the_next_run(loop):
    calls = []
    loop.add_signal_handler(signal.SIGUSR1, calls.append, "late")
    try:
        kill_self()
        assert calls == []
        loop.run_until_complete(asyncio.sleep(0.01))
        assert calls == ["late"]
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_adding_a_handler_again_replaces_it(loop):
    calls = []

    async def main():
        done = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, calls.append, "first")
        loop.add_signal_handler(
            signal.SIGUSR1, lambda: (calls.append("second"), done.set_result(None))
        )
        kill_self()
        await done
        await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(main())
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert calls == ["second"]


def test_remove_signal_handler_return_values_and_restored_disposition(loop):
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    loop.add_signal_handler(signal.SIGUSR1, print)
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_removing_a_sigint_handler_restores_default_int_handler(loop):
    loop.add_signal_handler(signal.SIGINT, print)
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_close_removes_the_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.add_signal_handler(signal.SIGUSR2, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


def test_signal_callback_exception_goes_to_the_exception_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def failing():
        raise ZeroDivisionError("in signal callback")

    loop.add_signal_handler(signal.SIGUSR1, failing)
    try:
        kill_self()
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert contexts[0]["message"].startswith("Exception in callback ")
    assert "failing()" in contexts[0]["message"]


def test_running_the_loop_keeps_a_wakeup_fd_installed_by_someone_else(loop):
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous = signal.set_wakeup_fd(w)
    try:
        loop.run_until_complete(asyncio.sleep(0.001))
        assert signal.set_wakeup_fd(w) == w
    finally:
        signal.set_wakeup_fd(previous)
        os.close(r)
        os.close(w)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", ["SIGUSR1", 1.0, None], ids=repr)
def test_non_int_signal_raises_type_error(loop, sig):
    with pytest.raises(TypeError, match=f"^sig must be an int, not {sig!r}$"):
        loop.add_signal_handler(sig, print)
    with pytest.raises(TypeError, match=f"^sig must be an int, not {sig!r}$"):
        loop.remove_signal_handler(sig)


@pytest.mark.parametrize("sig", [0, -1, 1000])
def test_invalid_signal_number_raises_value_error(loop, sig):
    with pytest.raises(ValueError, match=f"^invalid signal number {sig}$"):
        loop.add_signal_handler(sig, print)
    with pytest.raises(ValueError, match=f"^invalid signal number {sig}$"):
        loop.remove_signal_handler(sig)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP, int(signal.SIGKILL)])
def test_uncatchable_signal_raises_runtime_error(loop, sig):
    with pytest.raises(RuntimeError, match=f"^sig {int(sig)} cannot be caught$"):
        loop.add_signal_handler(sig, print)
    assert loop.remove_signal_handler(sig) is False


def test_add_signal_handler_from_a_non_main_thread_raises_runtime_error(loop):
    errors = []

    def add():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except RuntimeError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=add)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert "main thread" in errors[0]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_coroutine_callbacks_are_rejected(loop):
    async def coroutine_function():
        pass

    with pytest.raises(TypeError, match=r"^coroutines cannot be used with add_signal_handler\(\)$"):
        loop.add_signal_handler(signal.SIGUSR1, coroutine_function)
    coro = coroutine_function()
    try:
        with pytest.raises(
            TypeError, match=r"^coroutines cannot be used with add_signal_handler\(\)$"
        ):
            loop.add_signal_handler(signal.SIGUSR1, coro)
    finally:
        coro.close()
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_add_signal_handler_on_a_closed_loop_raises(loop):
    loop.close()
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        loop.add_signal_handler(signal.SIGUSR1, print)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


# --------------------------------------------------------------------------------------------
# Ctrl+C, in a child process
# --------------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, signal, sys
    # What Python does at start-up unless SIGINT was ignored by whoever started us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import oxloop

    kind, mode = sys.argv[1], sys.argv[2]
    factory = oxloop.new_event_loop if kind == "oxloop" else asyncio.new_event_loop

    async def main():
        print("READY", flush=True)
        await asyncio.sleep(30)

    if mode == "run":
        (oxloop.run if kind == "oxloop" else asyncio.run)(main())
    elif mode == "runner":
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    elif mode == "handled":
        loop = factory()
        loop.add_signal_handler(signal.SIGINT, lambda: (print("HANDLED", flush=True), loop.stop()))
        loop.call_soon(lambda: print("READY", flush=True))
        try:
            loop.run_forever()
        finally:
            loop.close()
        print("CLEAN EXIT", flush=True)
        raise SystemExit(0)
    elif mode == "run_forever":
        loop = factory()
        loop.call_soon(lambda: print("READY", flush=True))
        try:
            loop.run_forever()
        finally:
            loop.close()
    print("NOT INTERRUPTED", flush=True)
    """
)


def start_child(loop_kind, mode, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen(
        [PYTHON, str(script), loop_kind, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


def interrupt(child):
    """Wait for the child to say READY, send it SIGINT; return its (stdout, stderr)."""
    try:
        assert child.stdout.readline() == "READY\n"
        time.sleep(0.1)  # let it block in its poll (it must work either way)
        child.send_signal(signal.SIGINT)
        # The program would sleep 30 s: ending well before that means the signal ended it.
        return child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("mode", ["run", "runner", "run_forever"])
def test_ctrl_c_interrupts_a_blocked_program_with_keyboard_interrupt(loop_kind, mode, tmp_path):
    child = start_child(loop_kind, mode, tmp_path)
    stdout, stderr = interrupt(child)
    assert "NOT INTERRUPTED" not in stdout
    assert "Traceback (most recent call last):" in stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    # An uncaught KeyboardInterrupt ends Python by SIGINT.
    assert child.returncode == -signal.SIGINT


@pytest.mark.timeout(40)
def test_ctrl_c_with_a_sigint_handler_runs_the_handler_instead(loop_kind, tmp_path):
    child = start_child(loop_kind, "handled", tmp_path)
    stdout, stderr = interrupt(child)
    assert stdout.splitlines()[-2:] == ["HANDLED", "CLEAN EXIT"], stderr
    assert "KeyboardInterrupt" not in stderr
    assert child.returncode == 0
