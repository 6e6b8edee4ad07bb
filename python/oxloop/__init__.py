"""oxloop: a fast asyncio event loop written in Rust.

Use it as a loop factory::

    oxloop.run(main())
    asyncio.run(main(), loop_factory=oxloop.new_event_loop)      # Python 3.12+
    with asyncio.Runner(loop_factory=oxloop.new_event_loop) as runner: ...

or, for code that creates its loops through asyncio's policy (Python < 3.14), call
``oxloop.install()`` first.
"""

from ._loop import Loop
from ._policy import EventLoopPolicy, install
from ._runner import new_event_loop, run

__all__ = ["Loop", "EventLoopPolicy", "install", "new_event_loop", "run"]
__version__ = "0.1.0"
