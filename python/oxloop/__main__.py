"""``python -m oxloop [--virtual-clock] script.py [args]`` / ``... -m module [args]``.

Runs a program with oxloop installed as asyncio's loop, so its ``asyncio.run()`` uses oxloop.
With ``--virtual-clock``, each loop the program makes runs on its own ``VirtualClock`` that also
patches ``time.time()``, ``time.monotonic()`` and ``time.perf_counter()`` while it runs: the
program runs unchanged, in simulated time.
Every argument after the script or module goes to the program unchanged. A mistake in the
command line (an unknown option, a missing module name, a script that cannot be opened) gets
a message and exit status 2, as it does with ``python`` itself.
"""

import asyncio
import os
import runpy
import sys
from typing import NoReturn

from ._loop import Loop
from ._policy import EventLoopPolicy, install
from ._virtual_clock import VirtualClock

PROG = "python -m oxloop"
USAGE = f"usage: {PROG} [-h] [--virtual-clock] (script.py | -m module) [args ...]"
HELP = f"""{USAGE}

Run a Python program as python would, with oxloop as asyncio's event loop.

options:
  -h, --help       show this help message and exit
  --virtual-clock  run on virtual time: timers fire as soon as nothing else can happen, and
                   time.time(), time.monotonic(), time.perf_counter() follow the loop's clock
  -m module        run a library module as a script (like python -m module)
  script.py        run the program in this file (or directory or zip file with a __main__.py)
  args ...         the program's sys.argv[1:], passed unchanged (options included)"""


class _VirtualClockPolicy(EventLoopPolicy):
    """The policy of ``--virtual-clock``: each new loop gets its own patching virtual clock."""

    @staticmethod
    def _loop_factory():
        return Loop(clock=VirtualClock(patch_time=True))


def _install(virtual_clock: bool) -> None:
    if virtual_clock:
        asyncio.set_event_loop_policy(_VirtualClockPolicy())
    else:
        install()


def _fail(message: str, *, usage: bool = True) -> NoReturn:
    """Report a mistake in the command line on stderr and exit with status 2."""
    if usage:
        message = f"{message}\n{USAGE}\nTry `{PROG} --help' for more information."
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _check_script(path: str) -> None:
    """Fail as ``python`` does if ``path`` names no script that can be opened."""
    if os.path.isdir(path):
        return  # runpy runs its __main__.py
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        _fail(
            f"{PROG}: can't open file {os.path.abspath(path)!r}: "
            f"[Errno {exc.errno}] {exc.strerror}",
            usage=False,
        )


def main(argv: list[str]) -> None:
    """Run the script or module named in ``argv`` (as ``python`` would) on oxloop."""
    virtual_clock = bool(argv) and argv[0] == "--virtual-clock"
    if virtual_clock:
        argv = argv[1:]
    if not argv:
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    first = argv[0]
    if first in ("-h", "--help"):
        print(HELP)
        raise SystemExit(0)
    if first == "-m":
        if len(argv) < 2:
            _fail("Argument expected for the -m option")
        _install(virtual_clock)
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif first.startswith("--"):
        _fail(f"unknown option {first}")
    elif first.startswith("-"):
        _fail(f"Unknown option: {first}")  # python's wording, for short options
    else:
        _check_script(first)
        _install(virtual_clock)
        sys.argv = argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(first)))
        runpy.run_path(first, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
