"""Errors raised by callbacks: the exception handler API, the context dict asyncio passes to
it, the default handler's log format, the fallback when a custom handler raises, and
SystemExit / KeyboardInterrupt leaving run_forever without losing the rest of the iteration.

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
"""

import asyncio
import gc
import logging
import sys

import pytest

# From 3.13 asyncio shows a callback's arguments in handle reprs and error messages only in
# debug mode (they may hold secrets).
SHOWS_CALLBACK_ARGUMENTS = sys.version_info < (3, 13)


class Boom(Exception):
    pass


def raise_(exc):
    raise exc


def collect_errors(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    return contexts


def asyncio_records(caplog):
    return [r for r in caplog.records if r.name == "asyncio"]


# --------------------------------------------------------------------------------------------
# The handler API
# --------------------------------------------------------------------------------------------


def test_exception_handler_getter_and_setter(loop):
    def handler(lp, ctx):
        pass

    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_set_exception_handler_rejects_non_callables(loop):
    with pytest.raises(TypeError, match="A callable object or None is expected, got 42"):
        loop.set_exception_handler(42)


# --------------------------------------------------------------------------------------------
# Callback errors
# --------------------------------------------------------------------------------------------


def test_callback_exception_goes_to_the_handler_with_asyncio_context_keys(loop):
    contexts = collect_errors(loop)
    error = Boom("in callback")

    def failing(arg):
        raise error

    handle = loop.call_soon(failing, "x")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    handler_loop, context = contexts[0]
    assert handler_loop is loop
    assert set(context) == {"message", "exception", "handle"}
    assert context["exception"] is error
    assert context["handle"] is handle
    assert context["message"].startswith("Exception in callback ")
    assert ("failing('x')" if SHOWS_CALLBACK_ARGUMENTS else "failing()") in context["message"]


def test_debug_mode_shows_the_callback_arguments(loop):
    loop.set_debug(True)
    contexts = collect_errors(loop)

    def failing(arg):
        raise Boom("in callback")

    handle = loop.call_soon(failing, "x")
    assert "failing('x')" in repr(handle)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert "failing('x')" in contexts[0][1]["message"]


def test_timer_callback_exception_names_the_timer_handle(loop):
    contexts = collect_errors(loop)
    error = Boom("in timer")
    handle = loop.call_later(0, raise_, error)
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    context = contexts[0][1]
    assert context["exception"] is error
    assert context["handle"] is handle
    assert context["message"].startswith("Exception in callback raise_(")


def test_callbacks_after_a_failing_one_still_run(loop):
    collect_errors(loop)
    out = []
    loop.call_soon(out.append, 1)
    loop.call_soon(raise_, Boom())
    loop.call_soon(out.append, 2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [1, 2]


def test_every_callback_exception_reaches_the_handler_in_order(loop):
    contexts = collect_errors(loop)
    for i in range(5):
        loop.call_soon(raise_, Boom(i))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert [ctx["exception"].args for _, ctx in contexts] == [(i,) for i in range(5)]
    assert not loop.is_running()


def test_callback_exception_is_logged_by_the_default_handler(loop, caplog):
    loop.set_exception_handler(None)

    def failing():
        raise Boom("logged")

    loop.call_soon(failing)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    records = asyncio_records(caplog)
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.ERROR
    lines = record.getMessage().split("\n")
    assert lines[0].startswith("Exception in callback ")
    assert "failing()" in lines[0]
    assert lines[1].startswith("handle: <Handle")
    assert record.exc_info[0] is Boom
    assert str(record.exc_info[1]) == "logged"


def test_handle_given_to_the_exception_handler_still_names_its_callback(loop, caplog):
    reprs = []

    def handler(lp, ctx):
        reprs.append(repr(ctx["handle"]))
        lp.default_exception_handler(ctx)

    loop.set_exception_handler(handler)

    def failing():
        raise Boom("logged")

    loop.call_soon(failing)
    loop.call_later(0, failing)
    loop.call_later(0.001, loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    assert len(reprs) == 2
    assert reprs[0].startswith("<Handle ") and "failing()" in reprs[0]
    assert reprs[1].startswith("<TimerHandle when=") and "failing()" in reprs[1]
    lines = [r.getMessage().split("\n")[1] for r in asyncio_records(caplog)]
    assert lines == [f"handle: {text}" for text in reprs]


def test_raising_exception_handler_falls_back_to_the_default_handler(loop, caplog):
    handler_error = RuntimeError("handler is broken")

    def bad_handler(lp, ctx):
        raise handler_error

    loop.set_exception_handler(bad_handler)
    out = []
    loop.call_soon(raise_, Boom("original"))
    loop.call_soon(out.append, "still running")
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    assert out == ["still running"]
    records = asyncio_records(caplog)
    assert len(records) == 1
    message = records[0].getMessage()
    assert message.startswith("Unhandled error in exception handler\ncontext: {")
    shown = "Boom('original')" if SHOWS_CALLBACK_ARGUMENTS else ""
    # The message as the context dict's repr quotes it, up to the end of the callback.
    assert f"'message': {repr(f'Exception in callback raise_({shown})')[:-1]}" in message
    assert "'exception': Boom('original')" in message
    assert records[0].exc_info[1] is handler_error


def test_exception_handler_raising_keyboard_interrupt_propagates(loop):
    def handler(lp, ctx):
        raise KeyboardInterrupt

    loop.set_exception_handler(handler)
    loop.call_soon(raise_, Boom())
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()


# --------------------------------------------------------------------------------------------
# call_exception_handler and the default handler's format
# --------------------------------------------------------------------------------------------


def test_call_exception_handler_calls_the_custom_handler(loop):
    contexts = collect_errors(loop)
    context = {"message": "custom", "extra": 1}
    loop.call_exception_handler(context)
    assert contexts == [(loop, context)]


def test_default_handler_log_format(loop, caplog):
    loop.set_exception_handler(None)
    try:
        raise Boom("with traceback")
    except Boom as exc:
        error = exc
    handle = loop.call_soon(print)
    handle.cancel()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler(
            {
                "message": "Something failed",
                "exception": error,
                "zeta": [1, 2],
                "alpha": "a",
                "handle": handle,
            }
        )
    records = asyncio_records(caplog)
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.ERROR
    # The message, then every other key but "exception", sorted, with repr() values.
    assert record.getMessage() == (
        f"Something failed\nalpha: 'a'\nhandle: {handle!r}\nzeta: [1, 2]"
    )
    assert record.exc_info == (Boom, error, error.__traceback__)


def test_default_handler_without_message_or_exception(loop, caplog):
    loop.set_exception_handler(None)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"key": "value"})
    records = asyncio_records(caplog)
    assert len(records) == 1
    assert records[0].getMessage() == "Unhandled exception in event loop\nkey: 'value'"
    assert not records[0].exc_info


def test_default_exception_handler_can_be_called_from_a_custom_one(loop, caplog):
    seen = []

    def handler(lp, ctx):
        seen.append(ctx["message"])
        lp.default_exception_handler(ctx)

    loop.set_exception_handler(handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "deferred"})
    assert seen == ["deferred"]
    assert [r.getMessage() for r in asyncio_records(caplog)] == ["deferred"]


def test_unretrieved_task_exception_reaches_the_handler(loop):
    contexts = collect_errors(loop)

    async def failing():
        raise Boom("never retrieved")

    task = loop.create_task(failing())
    loop.run_until_complete(asyncio.sleep(0))
    assert task.done()
    del task
    gc.collect()
    assert len(contexts) == 1
    context = contexts[0][1]
    assert context["message"] == "Task exception was never retrieved"
    assert isinstance(context["exception"], Boom)


# --------------------------------------------------------------------------------------------
# SystemExit and KeyboardInterrupt
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_fatal_exception_from_callback_propagates_and_keeps_the_rest_of_the_iteration(
    loop, exc_type
):
    contexts = collect_errors(loop)
    out = []
    loop.call_soon(out.append, "before")
    loop.call_soon(raise_, exc_type())
    loop.call_soon(out.append, "after 1")
    loop.call_soon(out.append, "after 2")
    loop.call_soon(loop.stop)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert out == ["before"]
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    # The callbacks that were ready in that iteration were not lost: the next run runs them.
    loop.run_forever()
    assert out == ["before", "after 1", "after 2"]
    assert contexts == []


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_fatal_exception_from_timer_propagates_and_keeps_the_other_due_timers(loop, exc_type):
    out = []
    when = loop.time() + 0.005
    loop.call_at(when, out.append, "first")
    loop.call_at(when + 1e-4, raise_, exc_type())
    loop.call_at(when + 2e-4, out.append, "third")
    safety = loop.call_later(5, loop.stop)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert out == ["first"]
    loop.call_at(when + 3e-4, loop.stop)
    loop.run_forever()
    safety.cancel()
    assert out == ["first", "third"]


def test_keyboard_interrupt_from_a_task_propagates_out_of_run_until_complete(loop):
    async def interrupted():
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    task = loop.create_task(interrupted())
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(task)
    assert task.done()
    with pytest.raises(KeyboardInterrupt):
        task.result()
    assert not loop.is_running()


def test_loop_can_run_again_after_keyboard_interrupt(loop):
    loop.call_soon(raise_, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()

    async def main():
        await asyncio.sleep(0.001)
        return "ok"

    assert loop.run_until_complete(main()) == "ok"
