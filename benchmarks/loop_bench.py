"""Runs the same workloads on several asyncio event loops, interleaved, and reports medians.

    python benchmarks/loop_bench.py [--quick] [--rounds R] [--only NAME,...]
                                    [--loops NAME,...] [--no-gc] [--json PATH]

Loops: stock asyncio, uvloop, rloop and oxloop; a loop whose package cannot be imported is
skipped with a note. Each measurement runs one workload on a fresh loop, in this process,
with a full garbage collection before it and the collector running during it, as it does in
programs (``--no-gc`` disables it while a workload runs: the collections a loop's
per-callback objects cause are then left out, and the numbers are steadier). Every round
runs every loop once, in an order rotated from round to round, so that drift (other
processes, CPU frequency) hits all loops alike; one warm-up run per loop precedes the rounds.

The Markdown report goes to stdout, progress to stderr. Nothing here judges the numbers.
"""

import argparse
import asyncio
import gc
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from workloads import WORKLOADS, Workload

TARGET_LOOP = "oxloop"
BASELINE_LOOPS = ("uvloop", "rloop")  # the loops the target is compared with
DEFAULT_ROUNDS = 7
QUICK_ROUNDS = 3
QUICK_WORK_DIVISOR = 20  # --quick runs each workload on n / QUICK_WORK_DIVISOR units of work


@dataclass(frozen=True)
class LoopCandidate:
    """An event loop to benchmark if its module imports: ``module.factory()`` makes one."""

    name: str
    module: str
    factory: str = "new_event_loop"


CANDIDATE_LOOPS = (
    LoopCandidate("asyncio", "asyncio"),
    LoopCandidate("uvloop", "uvloop"),
    LoopCandidate("rloop", "rloop"),
    LoopCandidate(TARGET_LOOP, "oxloop"),
)


@dataclass(frozen=True)
class AvailableLoop:
    name: str
    version: str
    new_event_loop: Callable[[], asyncio.AbstractEventLoop]


def load_loops(names: list[str]) -> tuple[list[AvailableLoop], dict[str, str]]:
    """Imports the named loops; returns those available and, for the others, why not."""
    available, skipped = [], {}
    for candidate in CANDIDATE_LOOPS:
        if candidate.name not in names:
            continue
        try:
            module = importlib.import_module(candidate.module)
            new_event_loop = getattr(module, candidate.factory)
        except Exception as error:  # a half-built extension may fail in any way
            skipped[candidate.name] = f"{type(error).__name__}: {error}"
            continue
        available.append(AvailableLoop(candidate.name, _version_of(candidate), new_event_loop))
    return available, skipped


def _version_of(candidate: LoopCandidate) -> str:
    if candidate.module == "asyncio":
        return platform.python_version()
    try:
        return importlib.metadata.version(candidate.module)
    except importlib.metadata.PackageNotFoundError:
        return getattr(sys.modules[candidate.module], "__version__", "unknown version")


# --- Measuring -----------------------------------------------------------------------------


class ErrorReportedByLoop(RuntimeError):
    """A callback or task raised during a workload; the loop passed it to its exception handler."""


def measure_once(loop: AvailableLoop, workload: Workload, n: int, collector: bool = True) -> float:
    """Runs ``workload`` once on a fresh ``loop`` and returns the time its work took.

    The garbage collector starts from a full collection, and runs during the workload unless
    ``collector`` is false.

    An error the loop reports to its exception handler (which would otherwise only be logged,
    and could leave the workload waiting forever) stops the loop and fails the measurement.
    """
    event_loop = loop.new_event_loop()
    reported_errors = []

    def stop_on_error(failing_loop: asyncio.AbstractEventLoop, context: dict) -> None:
        reported_errors.append(context)
        failing_loop.stop()

    try:
        event_loop.set_exception_handler(stop_on_error)
        gc.collect()
        if not collector:
            gc.disable()
        try:
            return workload.run(event_loop, n)
        finally:
            gc.enable()
            if reported_errors:
                context = reported_errors[0]
                raise ErrorReportedByLoop(f"{context['message']}: {context.get('exception')!r}")
    finally:
        event_loop.close()


@dataclass
class WorkloadResult:
    workload: Workload
    n: int
    samples: dict[str, list[float]] = field(default_factory=dict)  # loop name -> seconds
    errors: dict[str, str] = field(default_factory=dict)  # loop name -> what went wrong

    def median(self, loop_name: str) -> float | None:
        samples = self.samples.get(loop_name)
        return statistics.median(samples) if samples else None

    def relative_spread(self, loop_name: str) -> float | None:
        """The samples' median absolute deviation as a fraction of their median."""
        median = self.median(loop_name)
        if not median:
            return None
        return statistics.median(abs(s - median) for s in self.samples[loop_name]) / median

    def ops_per_second(self, loop_name: str) -> float | None:
        median = self.median(loop_name)
        return self.n / median if median else None

    def speedup(self, baseline: str) -> float | None:
        """baseline time / target time: above 1 means the target loop is faster."""
        target_median, baseline_median = self.median(TARGET_LOOP), self.median(baseline)
        if target_median is None or baseline_median is None:
            return None
        return baseline_median / target_median


def run_workload(
    workload: Workload, n: int, loops: list[AvailableLoop], rounds: int, collector: bool
) -> WorkloadResult:
    """Warms each loop up once, then runs ``rounds`` rounds of every loop, rotating the order.

    A loop whose run raises (a failed check, a missing feature) is dropped from the rest of
    this workload and its error recorded.
    """
    result = WorkloadResult(workload, n)
    healthy = list(loops)

    def measure(loop: AvailableLoop, record: bool) -> None:
        try:
            elapsed = measure_once(loop, workload, n, collector)
        except Exception as error:
            result.errors[loop.name] = f"{type(error).__name__}: {error}"
            result.samples.pop(loop.name, None)
            healthy.remove(loop)
            return
        if record:
            result.samples.setdefault(loop.name, []).append(elapsed)

    for loop in list(healthy):
        measure(loop, record=False)
    for round_index in range(rounds):
        start = round_index % len(healthy) if healthy else 0
        for loop in healthy[start:] + healthy[:start]:
            measure(loop, record=True)
    return result


# --- Reporting -----------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def format_rate(per_second: float) -> str:
    """Three significant digits with a k/M/G suffix, e.g. 2.35M/s or 812k/s."""
    scaled, suffix = per_second, ""
    for scale, scale_suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= scale:
            scaled, suffix = per_second / scale, scale_suffix
            break
    decimals = 0 if scaled >= 100 else 1 if scaled >= 10 else 2
    return f"{scaled:.{decimals}f}{suffix}/s"


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(value) for value in values) / len(values))


def compared_baselines(loop_names: list[str]) -> list[str]:
    """The baselines to show a speedup column for: those measured, if the target was too."""
    if TARGET_LOOP not in loop_names:
        return []
    return [name for name in BASELINE_LOOPS if name in loop_names]


def markdown_report(
    results: list[WorkloadResult],
    loops: list[AvailableLoop],
    skipped: dict[str, str],
    rounds: int,
    collector: bool = True,
) -> str:
    loop_names = [loop.name for loop in loops]
    baselines = compared_baselines(loop_names)
    header = ["workload", "work", *loop_names, *(f"{TARGET_LOOP} vs {b}" for b in baselines)]
    alignment = [":---", "---:", *["---:"] * (len(header) - 2)]
    rows = [header, alignment]
    for result in results:
        cells = [result.workload.name, f"{result.n:,} {result.workload.unit}"]
        for name in loop_names:
            median = result.median(name)
            if median is None:
                cells.append("error" if name in result.errors else "–")
            else:
                spread = result.relative_spread(name)
                cells.append(
                    f"{format_seconds(median)} ±{spread:.0%} · {format_rate(result.n / median)}"
                )
        cells += [format_ratio(result.speedup(baseline)) for baseline in baselines]
        rows.append(cells)
    if baselines:
        rows.append(geometric_mean_row(results, len(loop_names), baselines))

    lines = [
        "## Event loop benchmarks",
        "",
        f"Python {platform.python_version()} on {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} CPUs; median of {rounds} interleaved "
        "rounds per loop; garbage collector "
        + ("on, as in programs" if collector else "off while a workload runs")
        + "; each cell is median time ±median absolute deviation · units of work per second.",
        "Loops: " + ", ".join(f"{loop.name} {loop.version}" for loop in loops) + ".",
    ]
    if baselines:
        lines.append(
            f"`{TARGET_LOOP} vs X` = X's median time / {TARGET_LOOP}'s: "
            f"above 1× means {TARGET_LOOP} is faster."
        )
    lines.append("")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    notes = [f"- {name} skipped: {reason}" for name, reason in skipped.items()]
    notes += [
        f"- {result.workload.name} failed on {name}: {error}"
        for result in results
        for name, error in result.errors.items()
    ]
    if TARGET_LOOP in loop_names and not baselines:
        notes.append(f"- no speedup columns: none of {', '.join(BASELINE_LOOPS)} was measured")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def format_ratio(ratio: float | None) -> str:
    """A ratio cell: ``1.23×``, or ``–`` when it could not be computed."""
    return "–" if ratio is None else f"{ratio:.2f}×"


def geometric_mean_row(results: list, loop_count: int, baselines: list[str]) -> list[str]:
    """The last row of a speed table: the geometric mean of each baseline's ratio column
    (``result.speedup(baseline)`` of every result that has one)."""
    row = ["**geometric mean**", "", *[""] * loop_count]
    for baseline in baselines:
        speedups = [s for r in results if (s := r.speedup(baseline)) is not None]
        row.append(format_ratio(geometric_mean(speedups) if speedups else None))
    return row


def json_report(
    results: list[WorkloadResult],
    loops: list[AvailableLoop],
    skipped: dict[str, str],
    rounds: int,
    collector: bool = True,
) -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "rounds": rounds,
        "garbage_collector": collector,
        "loops": {loop.name: loop.version for loop in loops},
        "skipped_loops": skipped,
        "target_loop": TARGET_LOOP,
        "workloads": [
            {
                "name": result.workload.name,
                "summary": result.workload.summary,
                "n": result.n,
                "unit": result.workload.unit,
                "loops": {
                    name: {
                        "median_seconds": result.median(name),
                        "relative_spread": result.relative_spread(name),
                        "ops_per_second": result.ops_per_second(name),
                        "samples_seconds": samples,
                    }
                    for name, samples in result.samples.items()
                },
                "errors": result.errors,
                "speedup_vs": {
                    baseline: result.speedup(baseline)
                    for baseline in compared_baselines(list(result.samples))
                },
            }
            for result in results
        ],
    }


# --- Command line --------------------------------------------------------------------------


def _comma_separated(choices: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown name(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(choices)}"
            )
        return names

    return parse


def parse_arguments() -> argparse.Namespace:
    workload_names = [workload.name for workload in WORKLOADS]
    loop_names = [candidate.name for candidate in CANDIDATE_LOOPS]
    parser = argparse.ArgumentParser(
        description="Benchmark asyncio event loops on the same workloads, interleaved."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-test size: 1/{QUICK_WORK_DIVISOR} of the work, "
        f"{QUICK_ROUNDS} rounds unless --rounds is given",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"measured runs per loop and workload (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--only",
        type=_comma_separated(workload_names),
        default=workload_names,
        metavar="NAME,...",
        help=f"workloads to run (default all): {', '.join(workload_names)}",
    )
    parser.add_argument(
        "--loops",
        type=_comma_separated(loop_names),
        default=loop_names,
        metavar="NAME,...",
        help=f"loops to run, if importable (default all): {', '.join(loop_names)}",
    )
    parser.add_argument(
        "--no-gc",
        dest="collector",
        action="store_false",
        help="disable the garbage collector while a workload runs (default: it runs, as in "
        "programs)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the full results as JSON")
    return parse_with_rounds(parser, QUICK_ROUNDS, DEFAULT_ROUNDS)


def parse_with_rounds(
    parser: argparse.ArgumentParser, quick_rounds: int, default_rounds: int
) -> argparse.Namespace:
    """Parses the command line; ``--rounds`` defaults to ``quick_rounds`` with ``--quick``,
    else to ``default_rounds``, and must be at least 1."""
    arguments = parser.parse_args()
    if arguments.rounds is None:
        arguments.rounds = quick_rounds if arguments.quick else default_rounds
    if arguments.rounds < 1:
        parser.error("--rounds must be at least 1")
    return arguments


def main() -> None:
    arguments = parse_arguments()
    loops, skipped = load_loops(arguments.loops)
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", file=sys.stderr)
    if not loops:
        sys.exit("no event loop to benchmark")

    results = []
    for workload in WORKLOADS:
        if workload.name not in arguments.only:
            continue
        n = max(1, workload.n // QUICK_WORK_DIVISOR) if arguments.quick else workload.n
        result = run_workload(workload, n, loops, arguments.rounds, arguments.collector)
        results.append(result)
        progress = ", ".join(
            f"{loop.name} {format_seconds(median)}"
            if (median := result.median(loop.name)) is not None
            else f"{loop.name} failed"
            for loop in loops
        )
        print(f"{workload.name} (n={n:,}): {progress}", file=sys.stderr, flush=True)

    print(markdown_report(results, loops, skipped, arguments.rounds, arguments.collector), end="")
    if arguments.json:
        with open(arguments.json, "w") as json_file:
            report = json_report(results, loops, skipped, arguments.rounds, arguments.collector)
            json.dump(report, json_file, indent=2)
            json_file.write("\n")


if __name__ == "__main__":
    main()
