#!/usr/bin/env python3
"""Run CPython's own asyncio test-suite (``test.test_asyncio``) against oxloop.

The tests are imported from the interpreter's stdlib ``test`` package; each
module runs in its own subprocess (``stdlib_worker.py``) with a time limit, and
every test is classified by whether it really ran on the loop under test:

    passed       passed, and used the loop under test
    failed       an assertion failed                     (counts as failed)
    error        an exception, crash or hang             (counts as failed)
    xfail        failed, and is listed in expected_failures.py (or is a stdlib
                 @expectedFailure)
    xpass        listed as expected failure but passed   (counts as failed)
    skipped      skipped by the test, its class, or the runner's SKIP list
    not-on-loop  passed without using the loop under test (only asyncio's own
                 loops, the mock-clock TestLoop or mocks): NOT counted as passed

The last line printed is ``stdlib: N passed, M failed, K skipped``.  The exit
status is 1 if any test failed (and is not an expected failure) or a module
crashed or timed out, 2 on a usage error.  See README.md in this directory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from expected_failures import EXPECTED_FAILURES, SKIP  # noqa: E402
from stdlib_modules import MODULES, MODULES_BY_NAME, StdlibModule  # noqa: E402

WORKER = HERE / "stdlib_worker.py"
LOOPS = ("oxloop", "uvloop", "asyncio")
#: Report columns, in order.
CATEGORIES = ("passed", "failed", "error", "xfail", "xpass", "skipped", "not-on-loop")
#: Categories that make up the "M failed" of the closing line.
FAILING = ("failed", "error", "xpass")
#: How many times a module whose worker crashed or hung inside a test is
#: resumed (after that test) before giving up on the rest of the module.
MAX_RESUMES = 5


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass
class ClassifiedTest:
    """One test's classified outcome."""

    id: str
    category: str
    #: Raw unittest outcome from the worker: passed, failed, error, skipped,
    #: expected_failure, unexpected_success.
    outcome: str
    #: Did it use the loop under test (see uses_loop)?  None when unknown: the
    #: worker crashed or hung in this test.
    on_loop: bool | None
    #: Traceback, skip reason or expected-failure reason.
    detail: str = ""
    output: str = ""
    duration: float = 0.0
    usage: dict = field(default_factory=dict)


@dataclass
class ModuleReport:
    """Everything known about one module's run."""

    name: str
    status: str = "ok"  # ok, FAIL, CRASH, TIMEOUT, ERROR
    seconds: float = 0.0
    attempts: int = 0
    tests: list[ClassifiedTest] = field(default_factory=list)
    #: Problems not attributed to a test (fixture errors, crashes between
    #: tests, import errors); each counts as one failure.
    problems: list[str] = field(default_factory=list)
    policy_repairs: int = 0
    counting: str = ""

    @property
    def counts(self) -> Counter:
        counts = Counter(t.category for t in self.tests)
        counts["error"] += len(self.problems)
        return counts

    @property
    def failures(self) -> int:
        counts = self.counts
        return sum(counts[c] for c in FAILING)


def uses_loop(record: dict) -> bool:
    """Did the test really run on the loop under test?

    Yes if it ran (``run_forever``/``run_until_complete``) a loop under test;
    or if it created one and created or ran no other loop (a test of
    call_soon, handles, close() ... that has no need to run the loop).  A test
    that created a loop under test but ran or created asyncio's own loops (the
    mock-clock TestLoop, a mocked BaseEventLoop, a DefaultEventLoopPolicy's
    loop) does not count: it tested those.
    """
    if record.get("ran"):
        return True
    return bool(
        record.get("created")
        and not record.get("foreign_created")
        and not record.get("foreign_ran")
    )


def classify(record: dict, expected: dict[str, str]) -> ClassifiedTest:
    """Turn a worker's raw test record into a ClassifiedTest."""
    test_id, outcome = record["id"], record["outcome"]
    on_loop = None if record.get("interrupted") else uses_loop(record)
    detail = record.get("detail", "")
    if outcome == "skipped":
        category = "skipped"
    elif outcome in ("failed", "error"):
        if test_id in expected:
            category, detail = "xfail", f"expected failure: {expected[test_id]}\n{detail}"
        else:
            category = outcome
    elif outcome == "expected_failure":
        category, detail = "xfail", f"stdlib @expectedFailure\n{detail}"
    elif outcome == "unexpected_success":
        category = "xpass"
    elif test_id in expected:  # passed
        category = "xpass"
        detail = f"listed in expected_failures.py ({expected[test_id]}) but passed"
        detail += "" if on_loop else " (without using the loop under test)"
    else:
        category = "passed" if on_loop else "not-on-loop"
    return ClassifiedTest(
        id=test_id,
        category=category,
        outcome=outcome,
        on_loop=on_loop,
        detail=detail,
        output=record.get("output", ""),
        duration=record.get("duration", 0.0),
        usage={k: record.get(k, 0) for k in ("created", "ran", "foreign_created", "foreign_ran")},
    )


# --------------------------------------------------------------------------
# Running one module
# --------------------------------------------------------------------------


@dataclass
class RunOptions:
    loop: str
    timeout: float
    test_timeout: float
    filters: list[str]
    expected: dict[str, str]
    skip: dict[str, str]
    workdir: Path
    adapters: bool = True


def _spawn(cmd: list[str], log: Path, timeout: float) -> tuple[int, bool]:
    """Run ``cmd`` with output to ``log``; kill its process group on timeout.

    Returns (exit status, timed out).
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=max(timeout, 1.0)), False
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return proc.wait(), True


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _read_records(path: Path) -> list[dict]:
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a crash
                    pass
    except FileNotFoundError:
        pass
    return records


def run_module(spec: StdlibModule, opts: RunOptions) -> ModuleReport:
    """Run ``spec`` in worker subprocesses, resuming after a crash or hang."""
    report = ModuleReport(spec.name)
    budget = spec.timeout or opts.timeout
    start = time.monotonic()
    deadline = start + budget
    records: dict[str, dict] = {}
    planned: list[str] = []
    while True:
        report.attempts += 1
        stem = f"{spec.name}.{report.attempts}"
        out, log, config = (opts.workdir / f"{stem}.{ext}" for ext in ("jsonl", "log", "json"))
        config.write_text(
            json.dumps(
                {
                    "exclude": sorted(records),
                    "skip": opts.skip,
                    "filters": opts.filters,
                    "test_timeout": opts.test_timeout,
                    "adapters": opts.adapters,
                }
            )
        )
        cmd = [sys.executable, str(WORKER), "--module", spec.name, "--loop", opts.loop]
        cmd += ["--out", str(out), "--config", str(config)]
        status, timed_out = _spawn(cmd, log, deadline - time.monotonic())

        running, done = None, False
        for event in _read_records(out):
            kind = event["event"]
            if kind == "start":
                running = event["id"]
            elif kind == "test":
                records[event["id"]] = event
                running = None
            elif kind == "fixture_error":
                report.problems.append(f"{event['id']}:\n{event['detail']}")
            elif kind == "setup_error":
                report.problems.append(f"worker set-up failed:\n{event['detail']}")
                report.status = "ERROR"
            elif kind == "meta":
                report.counting = event["counting"]
            elif kind == "plan" and report.attempts == 1:
                planned = event["ids"]
            elif kind == "done":
                done = True
                report.policy_repairs += event["policy_repairs"]
        if report.status == "ERROR" or (done and status == 0):
            break

        if timed_out:
            report.status, what = "TIMEOUT", f"module time limit of {budget:.0f}s reached"
        elif "Timeout (" in _tail(log, 400):
            report.status, what = "TIMEOUT", f"hung: no progress for {opts.test_timeout:.0f}s"
        else:
            report.status, what = "CRASH", f"worker died with exit status {status}"
        what += f"\n--- last lines of the worker's output ({log}) ---\n{_tail(log)}"
        if running is None:
            report.problems.append(f"outside any test: {what}")
            break
        records[running] = {
            "event": "test",
            "id": running,
            "outcome": "error",
            "detail": what,
            "interrupted": True,
        }
        if timed_out or report.attempts > MAX_RESUMES:
            break
    for test_id in planned:
        if test_id not in records:  # the module was given up on before this test
            records[test_id] = {
                "event": "test",
                "id": test_id,
                "outcome": "error",
                "interrupted": True,
                "detail": f"not run: the module was stopped ({report.status}) before this test",
            }
    report.seconds = time.monotonic() - start
    report.tests = [classify(r, opts.expected) for r in records.values()]
    if report.status == "ok" and report.failures:
        report.status = "FAIL"
    return report


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------

COLUMNS = ("tests", *CATEGORIES)


def traceback_summary(text: str, max_lines: int = 8) -> list[str]:
    """The innermost frame and the exception of a formatted traceback.

    For a crash or hang, the message and the top of the last thread's stack
    that faulthandler printed.
    """
    lines = [line for line in text.rstrip().splitlines() if line.strip()]
    stacks = [i for i, line in enumerate(lines) if line.endswith("(most recent call first):")]
    if stacks:
        return lines[:1] + lines[stacks[-1] : stacks[-1] + max_lines]
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    start = frames[-1] if frames else max(len(lines) - max_lines, 0)
    return lines[start : start + max_lines]


def print_table(reports: list[ModuleReport]) -> Counter:
    """Print the per-module table and the total row; return the totals."""
    width = max([len(r.name) for r in reports] + [len("TOTAL")])
    header = (
        f"{'module':<{width}} " + " ".join(f"{c:>11}" for c in COLUMNS) + f" {'secs':>6}  status"
    )
    print(header)
    print("-" * len(header))
    totals: Counter = Counter()
    for report in reports:
        if not report.tests and not report.problems:
            continue  # e.g. nothing matched -k
        counts = report.counts
        counts["tests"] = len(report.tests)
        totals.update(counts)
        row = " ".join(f"{counts[c]:>11}" for c in COLUMNS)
        note = f" (x{report.attempts} runs)" if report.attempts > 1 else ""
        print(f"{report.name:<{width}} {row} {report.seconds:>6.1f}  {report.status}{note}")
    print("-" * len(header))
    print(f"{'TOTAL':<{width}} " + " ".join(f"{totals[c]:>11}" for c in COLUMNS))
    return totals


def print_details(reports: list[ModuleReport], verbosity: int) -> None:
    """Per module, the tests that did not pass.

    -v: failures, errors and unexpected successes with a traceback summary,
    expected failures with their reason, skip reasons with counts.
    -vv: full tracebacks and captured output, each skipped test, and the tests
    that passed without using the loop under test.
    """
    hidden = ("passed",) if verbosity >= 2 else ("passed", "not-on-loop")
    for report in reports:
        shown = sorted(
            (t for t in report.tests if t.category not in hidden),
            key=lambda t: (CATEGORIES.index(t.category), t.id),
        )
        if not shown and not report.problems:
            continue
        print(f"\n=== {report.name} ===")
        for problem in report.problems:
            print(f"MODULE ERROR: {problem}")
        skip_reasons: Counter = Counter()
        for test in shown:
            if test.category == "skipped" and verbosity < 2:
                skip_reasons[test.detail] += 1
                continue
            if test.on_loop is None:
                where = " [crashed or hung: loop usage unknown]"
            elif test.on_loop or test.category == "skipped":
                where = ""
            else:
                where = " [did not use the loop under test]"
            print(f"{test.category.upper()}: {test.id}{where}")
            if test.category in ("not-on-loop", "skipped"):
                lines = [test.detail] if test.category == "skipped" else []
            elif verbosity >= 2:
                lines = test.detail.splitlines() + [
                    f"| {line}" for line in test.output.splitlines()[-40:]
                ]
            elif test.category == "xfail":
                lines = test.detail.splitlines()[:1]
            else:
                lines = traceback_summary(test.detail)
            for line in lines:
                print(f"    {line}")
        for reason, count in skip_reasons.most_common():
            print(f"SKIPPED x{count}: {reason}")


def suggested_reason(test: ClassifiedTest) -> str:
    """A one-line reason for a failing test, from its traceback."""
    lines = [line.strip() for line in test.detail.strip().splitlines() if line.strip()]
    if test.on_loop is None:
        return lines[0] if lines else "crashed"
    frames = [line for line in lines if line.startswith("File ")]
    where = ""
    if frames:
        match = re.match(r'File "(.*)", line \d+, in (.*)', frames[-1])
        if match:
            where = f" (in {Path(match.group(1)).name}:{match.group(2)})"
    return (lines[-1] if lines else "failed")[:200] + where


def print_expected_suggestions(reports: list[ModuleReport], args) -> None:
    """--print-expected: entries to add to / remove from expected_failures.py."""
    failing = [t for r in reports for t in r.tests if t.category in ("failed", "error")]
    passing = [
        t.id for r in reports for t in r.tests if t.category == "xpass" and t.id in args.expected
    ]
    print("\n# Failing tests not in expected_failures.py (hangs and crashes belong in SKIP):")
    for test in sorted(failing, key=lambda t: t.id):
        table = "SKIP" if test.on_loop is None else "EXPECTED_FAILURES"
        print(f"    {test.id!r}: {suggested_reason(test)!r},  # {table}")
    print("# Listed in EXPECTED_FAILURES but passed (remove them):")
    for test_id in sorted(passing):
        print(f"    {test_id!r}")


def write_json(path: str, args, reports: list[ModuleReport], totals: Counter) -> None:
    data = {
        "loop": args.loop,
        "python": sys.version.split()[0],
        "expected_failures_applied": bool(args.expected),
        "totals": dict(totals),
        "modules": {
            r.name: {
                "status": r.status,
                "seconds": round(r.seconds, 2),
                "attempts": r.attempts,
                "counting": r.counting,
                "policy_repairs": r.policy_repairs,
                "counts": dict(r.counts, tests=len(r.tests)),
                "problems": r.problems,
                "tests": [t.__dict__ for t in sorted(r.tests, key=lambda t: t.id)],
            }
            for r in reports
        },
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Example: %(prog)s --loop uvloop --modules test_locks,test_queues -v",
    )
    parser.add_argument(
        "--loop", choices=LOOPS, default="oxloop", help="event loop to test (default: oxloop)"
    )
    parser.add_argument(
        "--modules",
        action="append",
        metavar="NAMES",
        help=(
            "comma-separated modules to run (repeatable); 'default' = the default set, "
            "'all' = every known module"
        ),
    )
    parser.add_argument("--list", action="store_true", help="list the known modules and exit")
    parser.add_argument(
        "-k",
        dest="filters",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run only tests whose id contains PATTERN or matches it as a glob (repeatable)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=os.cpu_count() or 2,
        help="modules run in parallel (default: number of CPUs)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="time limit per module, seconds (default 300)"
    )
    parser.add_argument(
        "--test-timeout",
        type=float,
        default=60.0,
        help="a test making no progress for this long is a hang (default 60)",
    )
    parser.add_argument(
        "--ignore-expected-failures",
        action="store_true",
        help="do not apply expected_failures.py (it applies to --loop oxloop only anyway)",
    )
    parser.add_argument(
        "--no-adapters",
        action="store_true",
        help="do not adapt stdlib fixtures that build mocked loops (see stdlib_modules.py)",
    )
    parser.add_argument(
        "--print-expected",
        action="store_true",
        help="print expected_failures.py entries for the failing tests (to review and paste)",
    )
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON to PATH")
    parser.add_argument(
        "--keep-logs", metavar="DIR", help="keep the workers' records and output in DIR"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: failing tests with traceback summaries; -vv: every non-passing test in full",
    )
    args = parser.parse_args(argv)

    names: list[str] = []
    for item in args.modules or ["default"]:
        for name in filter(None, (n.strip() for n in item.split(","))):
            if name == "default":
                names += [m.name for m in MODULES if m.default and m.available()]
            elif name == "all":
                names += [m.name for m in MODULES if m.available()]
            elif name in MODULES_BY_NAME:
                if not MODULES_BY_NAME[name].available():
                    since = ".".join(map(str, MODULES_BY_NAME[name].since))
                    parser.error(f"module {name!r} needs Python {since} or newer")
                names.append(name)
            else:
                parser.error(f"unknown module {name!r} (see --list)")
    args.selected = [MODULES_BY_NAME[n] for n in dict.fromkeys(names)]
    use_tables = args.loop == "oxloop" and not args.ignore_expected_failures
    args.expected = dict(EXPECTED_FAILURES) if use_tables else {}
    args.skip = dict(SKIP) if use_tables else {}
    return args


def list_modules() -> None:
    width = max(len(m.name) for m in MODULES)
    for m in MODULES:
        flag = "default" if m.default else "extra  "
        note = (
            m.note
            if m.available()
            else f"{m.note} (Python {'.'.join(map(str, m.since))}+: not run here)"
        )
        print(f"{m.name:<{width}}  {flag}  {m.module:<40}  {note}")


def loop_importable(loop: str) -> str | None:
    """None if the worker can import ``loop`` and the stdlib's asyncio tests, else the error."""
    code = f"import {loop}, test.test_asyncio.utils"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        list_modules()
        return 0
    error = loop_importable(args.loop)
    if error:
        print(
            f"cannot import {args.loop} or test.test_asyncio with {sys.executable}: {error}",
            file=sys.stderr,
        )
        return 2

    print(
        f"stdlib asyncio tests on {args.loop} (Python {sys.version.split()[0]}, {args.jobs} jobs)",
        flush=True,
    )
    if args.loop == "oxloop" and args.ignore_expected_failures:
        print("expected_failures.py is NOT applied (--ignore-expected-failures)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stdlib-tests-") as tmp:
        workdir = Path(args.keep_logs or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        opts = RunOptions(
            args.loop,
            args.timeout,
            args.test_timeout,
            args.filters,
            args.expected,
            args.skip,
            workdir,
            adapters=not args.no_adapters,
        )
        reports: dict[str, ModuleReport] = {}
        with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            futures = [pool.submit(run_module, spec, opts) for spec in args.selected]
            for n, future in enumerate(as_completed(futures), 1):
                report = future.result()
                reports[report.name] = report
                counts = report.counts
                print(
                    f"[{n:>2}/{len(futures)}] {report.name}: {report.status}, "
                    f"{counts['passed']} passed, {report.failures} failed, "
                    f"{counts['not-on-loop']} not on loop ({report.seconds:.1f}s)",
                    flush=True,
                )
    ordered = [reports[spec.name] for spec in args.selected]

    print()
    if args.verbose:
        print_details(ordered, args.verbose)
        print()
    totals = print_table(ordered)
    failed = sum(totals[c] for c in FAILING)
    problems = [r for r in ordered if r.status in ("CRASH", "TIMEOUT", "ERROR")]
    print(
        f"\n{totals['tests']} tests in {time.monotonic() - started:.0f}s: "
        f"{totals['passed']} passed on {args.loop},"
        f" {totals['not-on-loop']} passed without using {args.loop} (not counted), "
        f"{totals['xfail']} expected"
        f" failures, {totals['xpass']} unexpected successes, {totals['failed']} failures,"
        f" {totals['error']} errors, {totals['skipped']} skipped"
    )
    for report in problems:
        print(f"module {report.name}: {report.status} -- see -v")
    if not args.filters:
        # A listed test whose class ran but which did not: renamed or removed.
        ran_ids = {t.id for r in ordered for t in r.tests}
        ran_classes = {test_id.rpartition(".")[0] for test_id in ran_ids}
        for test_id in sorted(set(args.expected) | set(args.skip)):
            if test_id.rpartition(".")[0] in ran_classes and test_id not in ran_ids:
                print(f"warning: {test_id} is listed in expected_failures.py but does not exist")
    if args.print_expected:
        print_expected_suggestions(ordered, args)
    if args.json:
        write_json(args.json, args, ordered, totals)
    print(f"stdlib: {totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
