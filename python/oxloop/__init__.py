"""oxloop: a fast asyncio event loop written in Rust.

Use it as a loop factory::

    oxloop.run(main())
    asyncio.run(main(), loop_factory=oxloop.new_event_loop)      # Python 3.12+
    with asyncio.Runner(loop_factory=oxloop.new_event_loop) as runner: ...

or, for code that creates its loops through asyncio's policy (Python < 3.14), call
``oxloop.install()`` first. ``oxloop.run(main(), clock=oxloop.VirtualClock())`` runs it on
virtual time: hours of timers in milliseconds, with real I/O still working.
"""

from ._interpreter import check_supported

check_supported()

from ._core import __version__ as __version__  # noqa: E402 (the version is the Rust crate's, defined once)
from ._loop import Loop  # noqa: E402
from ._policy import EventLoopPolicy, install  # noqa: E402
from ._runner import new_event_loop, run  # noqa: E402
from ._virtual_clock import DeadlockError, VirtualClock  # noqa: E402

__all__ = [
    "DeadlockError",
    "EventLoopPolicy",
    "Loop",
    "VirtualClock",
    "install",
    "new_event_loop",
    "run",
]
