"""Runs subprocess workloads on several asyncio event loops, each run in a fresh process.

    python benchmarks/process_bench.py [--quick] [--rounds R] [--only NAME,...]
                                       [--loops NAME,...] [--json PATH]

Workloads (one function each, ``run(loop, n) -> seconds`` as in ``workloads.py``):

- ``spawn_communicate``: n times, one after another, ``asyncio.create_subprocess_exec`` of
  ``/bin/cat`` with stdin and stdout pipes and ``await proc.communicate()`` of 1 KiB; every
  echo and exit status is checked. Spawns per second: fork/exec, the pipe transports, waiting
  for the child's exit.

How it measures: like ``loop_bench.py`` (loops, rounds rotated from round to round, medians,
``oxloop vs X`` ratios, the same report), except that every measurement runs in a process of
its own: this script again with ``--child``, on one loop, doing one unrecorded warm-up run
(n / 10 units) and then the measured run, each on a fresh loop through ``loop_bench``'s
``measure_once`` (garbage collected before, collector on during, an error reported to the
loop's exception handler fails the run). Subprocess support keeps process-wide state (a child
watcher thread, a SIGCHLD handler), so one loop's leftovers must not meet another loop. A loop
that fails a run (for instance one without subprocess support) is dropped from that workload,
with a note under the table.

The Markdown report goes to stdout, progress to stderr. Nothing here judges the numbers.
"""

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from time import perf_counter

from loop_bench import (
    CANDIDATE_LOOPS,
    DEFAULT_ROUNDS,
    QUICK_ROUNDS,
    QUICK_WORK_DIVISOR,
    AvailableLoop,
    WorkloadResult,
    _comma_separated,
    format_seconds,
    json_report,
    load_loops,
    markdown_report,
    measure_once,
    parse_with_rounds,
)
from workloads import Workload, WorkloadCheckError, WorkloadFunction

SCRIPT = Path(__file__).resolve()
CHILD_FLAG = "--child"  # process_bench.py --child LOOP WORKLOAD N: one measurement, as JSON
CHILD_TIMEOUT = 300.0  # seconds one child (warm-up and measured run) may take
WARM_UP_DIVISOR = 10  # the child's unrecorded first run does n / WARM_UP_DIVISOR units
ECHO_PROGRAM = "/bin/cat"
PAYLOAD = bytes(range(256)) * 4  # 1 KiB written to every child


# --- Workloads -----------------------------------------------------------------------------

WORKLOADS: list[Workload] = []


def workload(n: int, unit: str) -> Callable[[WorkloadFunction], WorkloadFunction]:
    """Registers the decorated function as a workload doing ``n`` ``unit`` at full size."""

    def register(run: WorkloadFunction) -> WorkloadFunction:
        WORKLOADS.append(Workload(run.__name__, run, n, unit))
        return run

    return register


@workload(n=100, unit="spawns")
def spawn_communicate(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """Spawns /bin/cat n times in a row with stdin/stdout pipes; communicate() 1 KiB with each."""

    async def spawn_all() -> list[tuple[bytes, int | None]]:
        outcomes = []
        for _ in range(n):
            process = await asyncio.create_subprocess_exec(
                ECHO_PROGRAM, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            output, _ = await process.communicate(PAYLOAD)
            outcomes.append((output, process.returncode))
        return outcomes

    start = perf_counter()
    outcomes = loop.run_until_complete(spawn_all())
    elapsed = perf_counter() - start
    wrong = [
        (len(output), status) for output, status in outcomes if (output, status) != (PAYLOAD, 0)
    ]
    if len(outcomes) != n or wrong:
        raise WorkloadCheckError(
            f"{len(outcomes)} of {n} children finished, {len(wrong)} with a wrong echo or exit "
            f"status, first (bytes echoed, exit status): {wrong[:1]}"
        )
    return elapsed


# --- Measuring -----------------------------------------------------------------------------


class ChildError(RuntimeError):
    """A measuring child process failed; the message is its error."""


def run_child(loop_name: str, workload_name: str, n: int) -> None:
    """The child's part: a warm-up run and a measured run of one workload on one loop, each on
    a fresh loop; prints the measured seconds as JSON, or the error on stderr and exits 1."""
    loops, skipped = load_loops([loop_name])
    if not loops:
        sys.exit(f"{loop_name} is not available: {skipped.get(loop_name, 'unknown loop')}")
    chosen = next(w for w in WORKLOADS if w.name == workload_name)
    try:
        measure_once(loops[0], chosen, max(1, n // WARM_UP_DIVISOR))
        seconds = measure_once(loops[0], chosen, n)
    except Exception as error:
        sys.exit(f"{type(error).__name__}: {error}")
    print(json.dumps({"seconds": seconds}), flush=True)


def measure_in_child(loop: AvailableLoop, chosen: Workload, n: int) -> float:
    """Runs one measurement in a fresh process (see ``run_child``); returns its seconds."""
    command = [sys.executable, str(SCRIPT), CHILD_FLAG, loop.name, chosen.name, str(n)]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ChildError(f"the measuring process took over {CHILD_TIMEOUT:.0f} s") from None
    if finished.returncode != 0:
        lines = finished.stderr.strip().splitlines()
        raise ChildError(lines[-1] if lines else f"exit status {finished.returncode}")
    return json.loads(finished.stdout)["seconds"]


def run_workload(
    chosen: Workload, n: int, loops: list[AvailableLoop], rounds: int
) -> WorkloadResult:
    """Runs ``rounds`` rounds of every loop, each measurement in its own process, in an order
    rotated by one from round to round.

    A loop whose run fails is dropped from the rest of this workload and its error recorded.
    """
    result = WorkloadResult(chosen, n)
    healthy = list(loops)
    for round_index in range(rounds):
        start = round_index % len(healthy) if healthy else 0
        for loop in healthy[start:] + healthy[:start]:
            try:
                seconds = measure_in_child(loop, chosen, n)
            except Exception as error:
                message = str(error) if isinstance(error, ChildError) else repr(error)
                result.errors[loop.name] = message
                result.samples.pop(loop.name, None)
                healthy.remove(loop)
                continue
            result.samples.setdefault(loop.name, []).append(seconds)
    return result


# --- Reporting -----------------------------------------------------------------------------


def process_report(
    results: list[WorkloadResult],
    loops: list[AvailableLoop],
    skipped: dict[str, str],
    rounds: int,
) -> str:
    """``loop_bench``'s report under this benchmark's own heading, saying how it measured."""
    _, rest = markdown_report(results, loops, skipped, rounds).split("\n", 1)
    return (
        "## Subprocess benchmarks\n\n"
        "Every measurement ran in a fresh process on one loop, after an unrecorded warm-up run "
        f"of 1/{WARM_UP_DIVISOR} of the work in that process.\n" + rest.lstrip("\n")
    )


# --- Command line --------------------------------------------------------------------------


def parse_arguments() -> argparse.Namespace:
    workload_names = [w.name for w in WORKLOADS]
    loop_names = [candidate.name for candidate in CANDIDATE_LOOPS]
    parser = argparse.ArgumentParser(
        description="Benchmark asyncio event loops on subprocess workloads, one process per run."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-test size: 1/{QUICK_WORK_DIVISOR} of the work, "
        f"{QUICK_ROUNDS} rounds unless --rounds is given",
    )
    parser.add_argument(
        "--rounds", type=int, help=f"measured runs per loop and workload (default {DEFAULT_ROUNDS})"
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
    parser.add_argument("--json", metavar="PATH", help="also write the full results as JSON")
    return parse_with_rounds(parser, QUICK_ROUNDS, DEFAULT_ROUNDS)


def main() -> None:
    if sys.argv[1:2] == [CHILD_FLAG]:
        loop_name, workload_name, n = sys.argv[2:5]
        run_child(loop_name, workload_name, int(n))
        return
    arguments = parse_arguments()
    loops, skipped = load_loops(arguments.loops)
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", file=sys.stderr)
    if not loops:
        sys.exit("no event loop to benchmark")

    results = []
    for chosen in WORKLOADS:
        if chosen.name not in arguments.only:
            continue
        n = max(1, chosen.n // QUICK_WORK_DIVISOR) if arguments.quick else chosen.n
        result = run_workload(chosen, n, loops, arguments.rounds)
        results.append(result)
        progress = ", ".join(
            f"{loop.name} {format_seconds(median)}"
            if (median := result.median(loop.name)) is not None
            else f"{loop.name} failed"
            for loop in loops
        )
        print(f"{chosen.name} (n={n:,}): {progress}", file=sys.stderr, flush=True)

    print(process_report(results, loops, skipped, arguments.rounds), end="")
    if arguments.json:
        with open(arguments.json, "w") as json_file:
            json.dump(json_report(results, loops, skipped, arguments.rounds), json_file, indent=2)
            json_file.write("\n")


if __name__ == "__main__":
    main()
