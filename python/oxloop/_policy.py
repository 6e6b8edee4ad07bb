"""``EventLoopPolicy`` for code that still creates its loops through asyncio's policy.

asyncio's policy system is deprecated from Python 3.14; prefer ``oxloop.run`` or the loop
factory. The policy behaves as asyncio's default policy in every respect (``get_event_loop``
in the main thread, child watchers where the Python version has them) but the loop it makes.
"""

import asyncio

from ._loop import Loop


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy, creating oxloop loops."""

    _loop_factory = Loop


def install() -> None:
    """Make oxloop the loop that ``asyncio.new_event_loop()`` and ``asyncio.run()`` create."""
    asyncio.set_event_loop_policy(EventLoopPolicy())
