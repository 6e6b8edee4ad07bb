"""examples/vaccination.py, the asyncio-tutorial simulation of over 100 hours of vaccination
stations, run unchanged with ``python -m oxloop --virtual-clock`` in a child process:

- it finishes, and the simulated time it prints spans over 100 hours;
- two runs print the same bytes;
- it prints exactly what the same ``main()`` prints on stock asyncio's selector loop under an
  ideal clock: looptime's (``looptime.patch_event_loop``), which jumps the loop's time to the
  next timer when nothing else can happen, as oxloop's virtual clock does.

Why an exact comparison holds: looptime keeps time in whole microseconds, and the example's
random durations are whole microseconds, so both clocks read every deadline to well under a
microsecond, which is what the example prints. Its tasks share one seeded random generator, so
any difference in the order they run in changes the lines that follow.

Nothing here looks at how long a run takes in real time.
"""

import asyncio
import contextlib
import importlib.util
import io
import re
import subprocess
from pathlib import Path

import pytest

import oxloop
from helpers.processes import PYTHON, child_env

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "vaccination.py"
HOUR = 3600
# A line's simulated time: hours:minutes:seconds.microseconds at its start.
STAMP = re.compile(r"^ *(\d+):(\d\d):(\d\d)\.(\d{6})  ")
# The seeds compared with stock asyncio: the example's default (None) and two more.
SEEDS = [None, 1, 2]


def run_on_virtual_clock(seed=None) -> bytes:
    """What ``python -m oxloop --virtual-clock examples/vaccination.py`` prints."""
    args = [] if seed is None else ["--seed", str(seed)]
    result = subprocess.run(
        [PYTHON, "-m", "oxloop", "--virtual-clock", str(EXAMPLE), *args],
        env=child_env(),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stderr == b""
    return result.stdout


def load_example():
    """examples/vaccination.py as a module (its ``__main__`` part not run)."""
    spec = importlib.util.spec_from_file_location("vaccination_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_on_looptime(seed=None) -> bytes:
    """What the example's ``main()`` prints on stock asyncio's selector loop with looptime."""
    try:
        import looptime
    except ImportError as exc:
        pytest.skip(f"looptime (requirements/test.txt) cannot be imported: {exc}")
    example = load_example()
    loops = []

    def looptime_loop():
        # noop_cycles: looptime idles this many loop iterations before each jump, to let I/O
        # arrive; the example does no I/O, so one is enough (the default, 42, prints the same).
        loop = looptime.patch_event_loop(asyncio.SelectorEventLoop(), start=0.0, noop_cycles=1)
        loops.append(loop)
        return loop

    out = io.StringIO()
    with contextlib.redirect_stdout(out), asyncio.Runner(loop_factory=looptime_loop) as runner:
        runner.run(example.main() if seed is None else example.main(seed))
    (loop,) = loops
    assert isinstance(loop, asyncio.SelectorEventLoop)
    assert isinstance(loop, looptime.LoopTimeEventLoop)
    assert not isinstance(loop, oxloop.Loop)
    return out.getvalue().encode()


def stamps(output: bytes) -> list[float]:
    """The simulated times, in seconds, the output's lines start with."""
    times = []
    for line in output.decode().splitlines():
        match = STAMP.match(line)
        if match:
            hours, minutes, seconds, micros = map(int, match.groups())
            times.append(hours * HOUR + minutes * 60 + seconds + micros / 1e6)
    return times


@pytest.fixture(scope="module")
def virtual_output() -> bytes:
    return run_on_virtual_clock()


def test_the_example_finishes_after_over_100_simulated_hours(virtual_output):
    times = stamps(virtual_output)
    assert len(times) > 200  # two lines a box at least
    assert times == sorted(times)
    assert times[0] == 0.0
    assert times[-1] > 100 * HOUR
    (summary,) = (line for line in virtual_output.decode().splitlines() if "summary:" in line)
    assert "10000 shots" in summary


def test_two_runs_print_the_same_bytes(virtual_output):
    assert run_on_virtual_clock() == virtual_output


@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed={seed or 'default'}")
def test_the_output_is_stock_asyncio_on_an_ideal_clock(seed, virtual_output):
    expected = run_on_looptime(seed)
    assert stamps(expected)[-1] > 100 * HOUR  # looptime did run the simulation
    actual = virtual_output if seed is None else run_on_virtual_clock(seed)
    assert actual.decode().splitlines() == expected.decode().splitlines()  # a readable diff
    assert actual == expected
