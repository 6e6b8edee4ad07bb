"""Debug mode: slow callback warnings naming the task, detection of non-threadsafe calls from
other threads, rejection of coroutines and non-callables by call_soon & co, where handles were
created (source tracebacks in reprs and exception contexts).

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
"""

import asyncio
import inspect
import logging
import re
import threading
import time

import pytest


@pytest.fixture
def debug_loop(loop):
    loop.set_debug(True)
    return loop


def asyncio_warnings(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and r.levelno == logging.WARNING
    ]


def next_line():
    """The line number following the caller's line."""
    return inspect.currentframe().f_back.f_lineno + 1


# --------------------------------------------------------------------------------------------
# Slow callbacks
# --------------------------------------------------------------------------------------------


def test_slow_task_step_warning_names_the_task(debug_loop, caplog):
    loop = debug_loop
    loop.slow_callback_duration = 0.01

    async def slowpoke():
        time.sleep(0.05)  # blocks the loop: well over slow_callback_duration

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(loop.create_task(slowpoke(), name="the-slow-one"))
    messages = asyncio_warnings(caplog)
    assert len(messages) == 1, messages
    assert re.fullmatch(
        r"Executing <Task .*name='the-slow-one'.*> took \d+\.\d{3} seconds", messages[0], re.S
    )
    assert "slowpoke()" in messages[0]
    seconds = float(messages[0].rsplit(" took ", 1)[1].split()[0])
    assert seconds >= 0.05


def test_slow_plain_callback_warning_names_the_handle(debug_loop, caplog):
    loop = debug_loop
    loop.slow_callback_duration = 0.01

    def blocking_callback():
        time.sleep(0.05)

    loop.call_soon(blocking_callback)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    messages = asyncio_warnings(caplog)
    assert len(messages) == 1, messages
    assert re.fullmatch(
        r"Executing <Handle .*blocking_callback\(\).*> took \d+\.\d{3} seconds", messages[0], re.S
    )


def test_fast_callbacks_are_not_reported(debug_loop, caplog):
    loop = debug_loop
    loop.slow_callback_duration = 10
    for _ in range(10):
        loop.call_soon(lambda: None)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    assert asyncio_warnings(caplog) == []


def test_slow_callbacks_are_not_reported_outside_debug_mode(loop, caplog):
    loop.set_debug(False)
    loop.slow_callback_duration = 0.001
    loop.call_soon(time.sleep, 0.01)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    assert asyncio_warnings(caplog) == []


# --------------------------------------------------------------------------------------------
# Thread checks
# --------------------------------------------------------------------------------------------


def call_from_thread(func):
    result = []

    def target():
        try:
            result.append(func())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return result[0]


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_non_threadsafe_call_from_another_thread_raises_in_debug_mode(debug_loop, method):
    loop = debug_loop
    args = {"call_soon": (print,), "call_later": (1, print), "call_at": (0, print)}[method]

    async def main():
        return call_from_thread(lambda: getattr(loop, method)(*args))

    error = loop.run_until_complete(main())
    assert isinstance(error, RuntimeError)
    assert (
        str(error)
        == "Non-thread-safe operation invoked on an event loop other than the current one"
    )


def test_call_soon_threadsafe_from_another_thread_is_fine_in_debug_mode(debug_loop):
    loop = debug_loop
    out = []

    async def main():
        handle = call_from_thread(lambda: loop.call_soon_threadsafe(out.append, "ok"))
        assert isinstance(handle, asyncio.Handle) or type(handle).__name__ == "Handle"
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    assert out == ["ok"]


def test_calls_from_another_thread_are_not_checked_while_not_running(debug_loop):
    loop = debug_loop
    handle = call_from_thread(lambda: loop.call_soon(print))
    assert not isinstance(handle, BaseException)
    handle.cancel()


# --------------------------------------------------------------------------------------------
# Callback checks
# --------------------------------------------------------------------------------------------


async def coroutine_function():
    pass


SCHEDULERS = {
    "call_soon": lambda loop, cb: loop.call_soon(cb),
    "call_soon_threadsafe": lambda loop, cb: loop.call_soon_threadsafe(cb),
    "call_later": lambda loop, cb: loop.call_later(1, cb),
    "call_at": lambda loop, cb: loop.call_at(loop.time() + 1, cb),
}
# asyncio implements call_later with call_at: its errors name call_at.
CHECKED_AS = {
    "call_soon": "call_soon",
    "call_soon_threadsafe": "call_soon_threadsafe",
    "call_later": "call_at",
    "call_at": "call_at",
}


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_coroutine_function_is_rejected_in_debug_mode(debug_loop, method):
    with pytest.raises(TypeError) as info:
        SCHEDULERS[method](debug_loop, coroutine_function)
    assert str(info.value) == f"coroutines cannot be used with {CHECKED_AS[method]}()"


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_coroutine_object_is_rejected_in_debug_mode(debug_loop, method):
    coro = coroutine_function()
    try:
        with pytest.raises(TypeError) as info:
            SCHEDULERS[method](debug_loop, coro)
    finally:
        coro.close()
    assert str(info.value) == f"coroutines cannot be used with {CHECKED_AS[method]}()"


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_non_callable_is_rejected_in_debug_mode(debug_loop, method):
    with pytest.raises(TypeError) as info:
        SCHEDULERS[method](debug_loop, "not callable")
    assert (
        str(info.value)
        == f"a callable object was expected by {CHECKED_AS[method]}(), got 'not callable'"
    )


def test_run_in_executor_rejects_coroutine_functions_in_debug_mode(debug_loop):
    with pytest.raises(TypeError, match=r"^coroutines cannot be used with run_in_executor\(\)$"):
        debug_loop.run_in_executor(None, coroutine_function)


def test_coroutine_function_is_accepted_outside_debug_mode(loop):
    # asyncio only checks in debug mode: every scheduler takes it and returns a pending handle
    # holding it (cancelled here: running it would only make a coroutine nobody awaits).
    loop.set_debug(False)
    for method in sorted(SCHEDULERS):
        handle = SCHEDULERS[method](loop, coroutine_function)
        assert not handle.cancelled(), method
        assert handle._callback is coroutine_function, method
        handle.cancel()
        assert handle.cancelled(), method


# --------------------------------------------------------------------------------------------
# Where handles were created
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_source_traceback_points_at_the_caller(debug_loop, method):
    def callback():
        pass

    line = next_line()
    handle = SCHEDULERS[method](debug_loop, callback)
    frame = handle._source_traceback[-1]
    assert frame.filename == __file__
    # The lambda in SCHEDULERS is the caller of the loop method.
    assert frame.name == "<lambda>"
    assert handle._source_traceback[-2].lineno == line
    assert f"created at {__file__}:{frame.lineno}" in repr(handle)
    handle.cancel()


def test_no_source_traceback_outside_debug_mode(loop):
    loop.set_debug(False)
    handle = loop.call_soon(print)
    assert handle._source_traceback is None
    assert "created at" not in repr(handle)
    handle.cancel()


def test_callback_error_context_has_the_source_traceback_in_debug_mode(debug_loop):
    loop = debug_loop
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def failing():
        raise ZeroDivisionError

    line = next_line()
    loop.call_soon(failing)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert set(contexts[0]) == {"message", "exception", "handle", "source_traceback"}
    frame = contexts[0]["source_traceback"][-1]
    assert (frame.filename, frame.lineno) == (__file__, line)


def test_default_handler_adds_the_current_handle_traceback_in_debug_mode(debug_loop, caplog):
    loop = debug_loop
    loop.set_exception_handler(None)

    def reporter():
        loop.call_exception_handler({"message": "reported from a callback"})

    line = next_line()
    loop.call_soon(reporter)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    messages = [
        r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno == logging.ERROR
    ]
    assert len(messages) == 1
    lines = messages[0].split("\n")
    assert lines[0] == "reported from a callback"
    assert lines[1] == "handle_traceback: Handle created at (most recent call last):"
    assert f'File "{__file__}", line {line}, in ' in messages[0]


def test_cancelled_handle_repr_keeps_the_callback_in_debug_mode(debug_loop):
    def my_callback():
        pass

    handle = debug_loop.call_soon(my_callback)
    handle.cancel()
    text = repr(handle)
    assert text.startswith("<Handle cancelled ")
    assert "my_callback()" in text
    assert "created at" in text


def test_current_handle_is_set_while_a_callback_runs_in_debug_mode(debug_loop):
    loop = debug_loop
    seen = []
    handle = loop.call_soon(lambda: seen.append(loop._current_handle))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [handle]
    assert loop._current_handle is None
