"""Timer throughput of a virtual-clock loop: hours of ``asyncio.sleep`` in seconds (issue #17).

    python benchmarks/virtual_clock_bench.py [--quick] [--rounds R] [--modes NAME,...]
                                             [--tasks N] [--sleeps K] [--hours H]
                                             [--real-scale S] [--seed S] [--no-gc] [--json PATH]

The workload: N tasks (default 10,000), each awaiting ``asyncio.sleep(d)`` K times in a row
(default 100), so N x K timer firings (default 1,000,000). Each task's K delays are drawn
from a seeded random generator (uniform, then scaled so that they add up to H hours, default
8): the mean delay is H hours / K (288 s by default), the delays lie between 0 and about twice
that, every task ends at H hours, and the run spans H hours of loop time. All modes get the
same delays (the same seed).

Modes, each the same workload (the same tasks and the same delays in the same order):

- ``oxloop-virtual``: ``oxloop.new_event_loop(clock=oxloop.VirtualClock())``; with nothing
  ready it jumps to the next timer's deadline.
- ``looptime``: stock asyncio (``asyncio.new_event_loop()``, the selector loop) patched by
  the ``looptime`` package (``looptime.new_event_loop()``, default settings): its selector
  moves a fake time to the next timer, after a number of no-op loop cycles (42 by default).
- ``oxloop-real``: ``oxloop.new_event_loop()`` on the real clock. H hours cannot be waited
  for, so its delays are the same ones multiplied by ``--real-scale`` (default 1e-5: the run
  spans H x 3600 x S real seconds, 0.288 s by default) and the loop sleeps for real. Same tasks,
  same firings, same order. A real-clock loop cannot be faster than the span of its timers, so
  its timer events per second are bounded by N x K / that span (3.47M/s by default); the report
  gives that ceiling. Below it the loop is CPU-bound: the timers fire late, in batches.
- ``asyncio-real``: the same on stock asyncio (``asyncio.new_event_loop()``).

Timer events per second = firings / the real seconds of the run. The real seconds are those of
``loop.run_until_complete`` of the coroutine that starts the N tasks and gathers them; drawing
the delays and creating the loop are not timed. Every run is checked: exactly N x K sleeps
completed, and the loop's own clock moved by H hours (virtual modes: within 10 ms) or by at
least the scaled span (real modes); a failed check fails the mode (``error`` in the table, a
note under it, and an exit status of 1).

How it measures, as ``process_bench.py`` does: every measurement runs in a fresh process on one
loop (this script again with ``--child MODE``), which first does an unrecorded warm-up run of
a smaller workload (a tenth of the tasks and of the sleeps, a tenth of the span) on a fresh
loop, then the measured run on another fresh loop, through ``loop_bench``'s ``measure_once``: a
full garbage collection before, the collector on during the run (``--no-gc``: off), an error
reported to the loop's exception handler fails the run. Each round runs every mode once, in an
order rotated by one from round to round; the report shows medians and their median absolute
deviation, and ``oxloop-virtual vs X`` = X's median real time / oxloop-virtual's (the ratio of
their timer events per second: above 1x means oxloop-virtual is faster).

The looptime run is by far the longest (minutes at the default size); leave it out with
``--modes oxloop-virtual,oxloop-real,asyncio-real``. The Markdown report goes to stdout,
progress to stderr. Nothing here judges the numbers.
"""

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import random
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

from loop_bench import (
    AvailableLoop,
    _comma_separated,
    format_rate,
    format_ratio,
    format_seconds,
    measure_once,
    parse_with_rounds,
)
from workloads import Workload, WorkloadCheckError

SCRIPT = Path(__file__).resolve()
TARGET_MODE = "oxloop-virtual"
DEFAULT_TASKS = 10_000
DEFAULT_SLEEPS = 100
DEFAULT_HOURS = 8.0
DEFAULT_REAL_SCALE = 1e-5
DEFAULT_SEED = 17
DEFAULT_ROUNDS = 3  # a looptime run takes minutes at the default size
QUICK_TASKS = 100
QUICK_SLEEPS = 10
QUICK_ROUNDS = 2
WARM_UP_DIVISOR = 10  # the warm-up run: 1/10 of the tasks, of the sleeps and of the span
VIRTUAL_TOLERANCE = 0.01  # seconds a virtual loop's clock may end away from H hours
REAL_TOLERANCE = 1e-3  # seconds a real loop's clock may end short of the scaled span
CHILD_TIMEOUT = 3600.0  # seconds one child (warm-up and measured run) may take


@dataclass(frozen=True)
class Mode:
    """A way to run the workload; ``make_loop(name)`` makes a fresh loop of it."""

    name: str
    virtual: bool  # whether the loop's clock jumps (the delays are not scaled)
    package: str  # whose version the report gives
    description: str


MODES = (
    Mode(TARGET_MODE, True, "oxloop", "oxloop.new_event_loop(clock=oxloop.VirtualClock())"),
    Mode("looptime", True, "looptime", "looptime.new_event_loop() (stock asyncio, patched)"),
    Mode("oxloop-real", False, "oxloop", "oxloop.new_event_loop(), delays scaled"),
    Mode("asyncio-real", False, "asyncio", "asyncio.new_event_loop(), delays scaled"),
)
MODE_NAMES = [mode.name for mode in MODES]


def make_loop(mode: str) -> asyncio.AbstractEventLoop:
    """A fresh loop of ``mode``; imports only what that mode needs."""
    if mode == TARGET_MODE:
        import oxloop

        return oxloop.new_event_loop(clock=oxloop.VirtualClock())
    if mode == "looptime":
        import looptime

        return looptime.new_event_loop()
    if mode == "oxloop-real":
        import oxloop

        return oxloop.new_event_loop()
    if mode == "asyncio-real":
        return asyncio.new_event_loop()
    raise ValueError(f"unknown mode {mode!r}")


def package_version(package: str) -> str:
    if package == "asyncio":
        return f"Python {platform.python_version()}"
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{package} (not installed)"


# --- The workload --------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    tasks: int
    sleeps: int
    hours: float  # the span of every task, in loop time (virtual modes)

    @property
    def firings(self) -> int:
        return self.tasks * self.sleeps

    @property
    def span(self) -> float:
        """Seconds of loop time every task sleeps in all."""
        return self.hours * 3600.0


def draw_delays(size: Size, scale: float, seed: int) -> list[list[float]]:
    """Each task's delays: uniform, scaled to add up to ``size.span`` x ``scale`` seconds.

    Drawn from ``1 - random()``, in (0, 1], so that no delay is 0 (``asyncio.sleep(0)``
    yields without a timer).
    """
    rng = random.Random(seed)
    delay_lists = []
    for _ in range(size.tasks):
        draws = [1.0 - rng.random() for _ in range(size.sleeps)]
        factor = size.span * scale / sum(draws)
        delay_lists.append([draw * factor for draw in draws])
    return delay_lists


async def sleeper(delays: list[float]) -> int:
    """Sleeps each of ``delays`` in turn; returns how many sleeps completed."""
    sleep = asyncio.sleep
    completed = 0
    for delay in delays:
        await sleep(delay)
        completed += 1
    return completed


async def sleep_all(delay_lists: list[list[float]]) -> tuple[int, float]:
    """Runs one ``sleeper`` task per delay list; returns the sleeps completed and how far the
    loop's clock moved meanwhile."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    completed = await asyncio.gather(*(sleeper(delays) for delays in delay_lists))
    return sum(completed), loop.time() - start


@dataclass
class RunOutcome:
    seconds: float = 0.0  # real seconds of the run
    loop_span: float = 0.0  # how far the loop's clock moved


def timer_workload(
    mode: Mode, size: Size, scale: float, seed: int, outcome: RunOutcome
) -> Workload:
    """The workload as ``loop_bench``'s ``measure_once`` takes it (``run(loop, n) -> seconds``),
    checking the firings and the loop's clock; fills in ``outcome``."""
    expected_span = size.span if mode.virtual else size.span * scale
    delay_lists = draw_delays(size, 1.0 if mode.virtual else scale, seed)

    def run(loop: asyncio.AbstractEventLoop, n: int) -> float:
        start = perf_counter()
        fired, loop_span = loop.run_until_complete(sleep_all(delay_lists))
        seconds = perf_counter() - start
        if fired != n:
            raise WorkloadCheckError(f"{fired:,} sleeps completed, expected {n:,}")
        if mode.virtual and abs(loop_span - expected_span) > VIRTUAL_TOLERANCE:
            raise WorkloadCheckError(
                f"the virtual clock moved {loop_span!r} s, expected {expected_span!r} s"
            )
        if not mode.virtual and loop_span < expected_span - REAL_TOLERANCE:
            raise WorkloadCheckError(
                f"the loop's clock moved {loop_span!r} s, less than the timers' span "
                f"{expected_span!r} s: timers fired early"
            )
        outcome.seconds, outcome.loop_span = seconds, loop_span
        return seconds

    return Workload("virtual_clock_timers", run, size.firings, "timer firings")


# --- Measuring -----------------------------------------------------------------------------


def run_child(arguments: argparse.Namespace) -> None:
    """The child's part: a warm-up run and the measured run of one mode, each on a fresh loop;
    prints the measured run as JSON, or the error on stderr and exits 1."""
    mode = next(m for m in MODES if m.name == arguments.child)
    size = Size(arguments.tasks, arguments.sleeps, arguments.hours)
    warm_up = Size(
        max(1, size.tasks // WARM_UP_DIVISOR),
        max(1, size.sleeps // WARM_UP_DIVISOR),
        size.hours / WARM_UP_DIVISOR,
    )
    loop = AvailableLoop(mode.name, mode.package, lambda: make_loop(mode.name))
    outcome = RunOutcome()
    try:
        for run_size in (warm_up, size):
            chosen = timer_workload(mode, run_size, arguments.real_scale, arguments.seed, outcome)
            measure_once(loop, chosen, run_size.firings, arguments.collector)
    except Exception as error:
        sys.exit(f"{type(error).__name__}: {error}")
    print(json.dumps({"seconds": outcome.seconds, "loop_span": outcome.loop_span}), flush=True)


class ChildError(RuntimeError):
    """A measuring child process failed; the message is its error."""


def measure_in_child(mode: Mode, arguments: argparse.Namespace) -> RunOutcome:
    """Runs one measurement in a fresh process (see ``run_child``)."""
    command = [sys.executable, str(SCRIPT), "--child", mode.name, *workload_options(arguments)]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ChildError(f"the measuring process took over {CHILD_TIMEOUT:.0f} s") from None
    if finished.returncode != 0:
        lines = finished.stderr.strip().splitlines()
        raise ChildError(lines[-1] if lines else f"exit status {finished.returncode}")
    return RunOutcome(**json.loads(finished.stdout))


def workload_options(arguments: argparse.Namespace) -> list[str]:
    """The options that make a child run the same workload."""
    options = [
        f"--tasks={arguments.tasks}",
        f"--sleeps={arguments.sleeps}",
        f"--hours={arguments.hours!r}",
        f"--real-scale={arguments.real_scale!r}",
        f"--seed={arguments.seed}",
    ]
    return options if arguments.collector else [*options, "--no-gc"]


@dataclass
class ModeResult:
    mode: Mode
    firings: int
    samples: list[float] = field(default_factory=list)  # real seconds per run
    loop_spans: list[float] = field(default_factory=list)  # the loop clock's move per run
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples and not self.error else None

    @property
    def relative_spread(self) -> float | None:
        """The samples' median absolute deviation as a fraction of their median."""
        median = self.median
        if not median:
            return None
        return statistics.median(abs(s - median) for s in self.samples) / median

    @property
    def events_per_second(self) -> float | None:
        median = self.median
        return self.firings / median if median else None


def run_rounds(modes: list[Mode], arguments: argparse.Namespace) -> list[ModeResult]:
    """Runs ``arguments.rounds`` rounds of every mode, each measurement in its own process, in
    an order rotated by one from round to round. A mode whose run fails is dropped from the
    rest of the rounds and its error recorded."""
    firings = arguments.tasks * arguments.sleeps
    results = {mode.name: ModeResult(mode, firings) for mode in modes}
    healthy = list(modes)
    for round_index in range(arguments.rounds):
        start = round_index % len(healthy) if healthy else 0
        for mode in healthy[start:] + healthy[:start]:
            result = results[mode.name]
            try:
                outcome = measure_in_child(mode, arguments)
            except Exception as error:
                result.error = str(error) if isinstance(error, ChildError) else repr(error)
                healthy.remove(mode)
                print(
                    f"round {round_index + 1}: {mode.name} failed: {result.error}",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            result.samples.append(outcome.seconds)
            result.loop_spans.append(outcome.loop_span)
            print(
                f"round {round_index + 1}/{arguments.rounds}: {mode.name} "
                f"{format_seconds(outcome.seconds)}, {format_rate(firings / outcome.seconds)}",
                file=sys.stderr,
                flush=True,
            )
    return [results[mode.name] for mode in modes]


# --- Reporting -----------------------------------------------------------------------------


def format_span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return format_seconds(seconds)


def speedup(results: list[ModeResult], other: ModeResult) -> float | None:
    """other's median time / the target's: above 1 means oxloop-virtual is faster."""
    target = next((r for r in results if r.mode.name == TARGET_MODE), None)
    if target is None or target.median is None or other.median is None:
        return None
    return other.median / target.median


def markdown_report(results: list[ModeResult], arguments: argparse.Namespace) -> str:
    size = Size(arguments.tasks, arguments.sleeps, arguments.hours)
    real_span = size.span * arguments.real_scale
    has_target = any(r.mode.name == TARGET_MODE for r in results)
    header = ["mode", "clock", "timers span", "real time per run", "timer events/s"]
    if has_target:
        header.append(f"{TARGET_MODE} vs mode")
    rows = [header, [":---", ":---", *["---:"] * (len(header) - 2)]]
    for result in results:
        mode = result.mode
        if mode.virtual:
            clock, span = "virtual", format_span(size.span)
        else:
            clock = f"real, delays × {arguments.real_scale:g}"
            span = f"{format_span(real_span)} (ceiling {format_rate(size.firings / real_span)})"
        if result.median is None:
            time_cell = rate_cell = "error" if result.error else "–"
        else:
            time_cell = f"{format_seconds(result.median)} ±{result.relative_spread:.0%}"
            rate_cell = format_rate(result.events_per_second)
        cells = [mode.name, clock, span, time_cell, rate_cell]
        if has_target:
            cells.append(
                "–" if mode.name == TARGET_MODE else format_ratio(speedup(results, result))
            )
        rows.append(cells)

    versions = sorted(
        {package_version(r.mode.package) for r in results if r.mode.package != "asyncio"}
    )
    workload = (
        f"{size.tasks:,} tasks × {size.sleeps:,} `asyncio.sleep(d)` each = "
        f"{size.firings:,} timer firings; each task's delays uniform random (seed "
        f"{arguments.seed}), scaled to add up to {size.hours:g} h (mean "
        f"{format_span(size.span / size.sleeps)}), so every task ends at {size.hours:g} h of "
        "loop time. Real-clock modes sleep the same delays multiplied by "
        f"{arguments.real_scale:g} ({format_span(real_span)} in all); a real-clock loop cannot "
        f"beat its timers' span, so its ceiling is {format_rate(size.firings / real_span)}."
    )
    collector = "collector on, as in programs" if arguments.collector else "collector off"
    method = (
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs{''.join(f', {v}' for v in versions)}. Median of "
        f"{arguments.rounds} interleaved rounds, each run in a fresh process after a smaller "
        f"warm-up run; garbage {collector}. Timer events/s = firings / median real time; ±: "
        "median absolute deviation."
    )
    lines = ["## Virtual clock benchmark", "", workload, "", method]
    if has_target:
        lines.append(
            f"`{TARGET_MODE} vs mode` = the mode's median real time / {TARGET_MODE}'s: "
            f"above 1× means {TARGET_MODE} is faster."
        )
    lines.append("")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    notes = [f"- {r.mode.name} failed: {r.error}" for r in results if r.error]
    notes += [
        f"- {r.mode.name}: {r.mode.description}; loop clock moved "
        f"{format_span(statistics.median(r.loop_spans))} per run (median)"
        for r in results
        if r.loop_spans
    ]
    lines += ["", *notes]
    return "\n".join(lines) + "\n"


def json_report(results: list[ModeResult], arguments: argparse.Namespace) -> dict:
    size = Size(arguments.tasks, arguments.sleeps, arguments.hours)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "rounds": arguments.rounds,
        "garbage_collector": arguments.collector,
        "tasks": size.tasks,
        "sleeps_per_task": size.sleeps,
        "firings": size.firings,
        "virtual_span_seconds": size.span,
        "real_scale": arguments.real_scale,
        "real_span_seconds": size.span * arguments.real_scale,
        "seed": arguments.seed,
        "target_mode": TARGET_MODE,
        "modes": {
            r.mode.name: {
                "description": r.mode.description,
                "version": package_version(r.mode.package),
                "virtual": r.mode.virtual,
                "samples_seconds": r.samples,
                "loop_spans_seconds": r.loop_spans,
                "median_seconds": r.median,
                "relative_spread": r.relative_spread,
                "events_per_second": r.events_per_second,
                "target_speedup": None if r.mode.name == TARGET_MODE else speedup(results, r),
                "error": r.error,
            }
            for r in results
        },
    }


# --- Command line --------------------------------------------------------------------------


def _positive(kind: Callable[[str], int | float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    return parse


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Timer events per second of a virtual-clock loop, looptime and real clocks."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-test size: {QUICK_TASKS} tasks x {QUICK_SLEEPS} sleeps unless --tasks or "
        f"--sleeps are given, {QUICK_ROUNDS} rounds unless --rounds is given",
    )
    parser.add_argument(
        "--rounds", type=int, help=f"measured runs per mode (default {DEFAULT_ROUNDS})"
    )
    parser.add_argument(
        "--modes",
        type=_comma_separated(MODE_NAMES),
        default=MODE_NAMES,
        metavar="NAME,...",
        help=f"modes to run (default all): {', '.join(MODE_NAMES)}",
    )
    parser.add_argument("--tasks", type=_positive(int), help=f"tasks (default {DEFAULT_TASKS:,})")
    parser.add_argument(
        "--sleeps", type=_positive(int), help=f"sleeps per task (default {DEFAULT_SLEEPS})"
    )
    parser.add_argument(
        "--hours",
        type=_positive(float),
        default=DEFAULT_HOURS,
        help=f"loop time every task sleeps in all (default {DEFAULT_HOURS:g})",
    )
    parser.add_argument(
        "--real-scale",
        type=_positive(float),
        default=DEFAULT_REAL_SCALE,
        metavar="S",
        help=f"real-clock modes sleep the delays x S (default {DEFAULT_REAL_SCALE:g})",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed of the delays")
    parser.add_argument(
        "--no-gc",
        dest="collector",
        action="store_false",
        help="disable the garbage collector while a run runs (default: it runs)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the full results as JSON")
    parser.add_argument("--child", choices=MODE_NAMES, help=argparse.SUPPRESS)
    arguments = parse_with_rounds(parser, QUICK_ROUNDS, DEFAULT_ROUNDS)
    if arguments.tasks is None:
        arguments.tasks = QUICK_TASKS if arguments.quick else DEFAULT_TASKS
    if arguments.sleeps is None:
        arguments.sleeps = QUICK_SLEEPS if arguments.quick else DEFAULT_SLEEPS
    return arguments


def main() -> None:
    arguments = parse_arguments()
    if arguments.child:
        run_child(arguments)
        return
    modes = [mode for mode in MODES if mode.name in arguments.modes]
    print(
        f"{arguments.tasks:,} tasks × {arguments.sleeps:,} sleeps, {arguments.rounds} rounds "
        f"of {', '.join(mode.name for mode in modes)}",
        file=sys.stderr,
        flush=True,
    )
    results = run_rounds(modes, arguments)
    print(markdown_report(results, arguments), end="")
    if arguments.json:
        with open(arguments.json, "w") as json_file:
            json.dump(json_report(results, arguments), json_file, indent=2)
            json_file.write("\n")
    if any(result.error for result in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
