"""A panic in oxloop's native code never aborts the interpreter: it becomes pyo3's
``PanicException`` (a ``BaseException``). Raised inside a task it fails that task, as any
exception does; raised by a callback it leaves ``run_forever`` like ``KeyboardInterrupt``
(the rest of the batch kept), and the loop stays usable.

``oxloop._core._panic_for_tests`` panics on purpose; it is called directly, as a loop
callback and from a task. oxloop-only: stock asyncio has no native code of ours.
"""

import asyncio

import pytest

from oxloop import _core


def panic_exception_type():
    try:
        _core._panic_for_tests("probe")
    except BaseException as exc:
        return type(exc)
    pytest.fail("_panic_for_tests returned")


def test_a_panic_is_a_python_exception():
    """Calling native code that panics raises PanicException with the panic's message."""
    with pytest.raises(BaseException, match="the message") as info:
        _core._panic_for_tests("the message")
    assert type(info.value).__name__ == "PanicException"
    assert not isinstance(info.value, Exception)


def test_a_panicking_callback_stops_the_loop_which_can_run_again(oxloop_loop):
    """A callback that panics makes ``run_forever`` raise the PanicException (a native bug is
    loud, like ``KeyboardInterrupt``: a documented difference from asyncio, which would pass
    any other ``BaseException`` to the exception handler); the callbacks after it in the batch
    are kept and run when the loop runs again, and the loop still closes cleanly."""
    loop = oxloop_loop
    ran = []
    loop.call_soon(_core._panic_for_tests, "in a callback")
    loop.call_soon(ran.append, "after")
    with pytest.raises(panic_exception_type(), match="in a callback"):
        loop.run_forever()
    assert not loop.is_running()
    assert ran == []
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["after"]
    assert loop.run_until_complete(asyncio.sleep(0, result=1)) == 1


def test_a_panic_in_a_task_fails_that_task_only(oxloop_loop):
    """A task whose step panics ends with the PanicException; other tasks are unaffected."""
    loop = oxloop_loop

    async def panics():
        await asyncio.sleep(0)
        _core._panic_for_tests("in a task")

    async def main():
        failing = asyncio.ensure_future(panics())
        healthy = asyncio.ensure_future(asyncio.sleep(0.01, result="fine"))
        with pytest.raises(panic_exception_type(), match="in a task"):
            await failing
        return await healthy

    assert loop.run_until_complete(main()) == "fine"
