"""Child Python interpreters, for the tests that run a script in a subprocess.

``PYTHON``       the running interpreter (the one with oxloop installed).
``child_env``    the environment for a child interpreter.
``run_python``   run ``python args...`` to completion.
"""

import os
import subprocess
import sys

PYTHON = sys.executable


def child_env() -> dict:
    """The environment of a child interpreter: ours, without asyncio debug switches."""
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_python(args, *, cwd=None, timeout=60) -> subprocess.CompletedProcess:
    """Run ``python args...`` to completion and return its result (text output)."""
    return subprocess.run(
        [PYTHON, *args], cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout
    )
