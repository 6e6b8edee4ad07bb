"""``python -m oxloop script.py [args]`` / ``python -m oxloop -m module [args]``.

Runs a program with oxloop installed as asyncio's loop, so its ``asyncio.run()`` uses oxloop.
"""

import os
import runpy
import sys

from ._policy import install

USAGE = "usage: python -m oxloop (script.py | -m module) [args ...]"


def main(argv: list[str]) -> None:
    """Run the script or module named in ``argv`` (as ``python`` would) on oxloop."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        raise SystemExit(0 if argv else 2)
    install()
    if argv[0] == "-m":
        if len(argv) < 2:
            raise SystemExit(USAGE)
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
