"""The entry points: the loop factory and ``run``."""

import asyncio

from ._loop import Loop


def new_event_loop(*, clock=None) -> Loop:
    """Return a new oxloop event loop (a loop factory for ``asyncio.Runner`` and friends).

    With ``clock`` (an ``oxloop.VirtualClock``), the loop runs on virtual time.
    """
    return Loop(clock=clock)


def run(main, *, debug=None, clock=None):
    """Run the coroutine ``main`` on a new oxloop loop and return its result.

    Behaves as ``asyncio.run``: the loop is closed afterwards, after remaining tasks are
    cancelled and async generators and the default executor are shut down. With ``clock``
    (an ``oxloop.VirtualClock``), the loop runs on virtual time.
    """
    if asyncio.events._get_running_loop() is not None:
        # Checked before a loop is made, as asyncio.run does.
        raise RuntimeError("oxloop.run() cannot be called from a running event loop")
    with asyncio.Runner(loop_factory=lambda: new_event_loop(clock=clock), debug=debug) as runner:
        return runner.run(main)
