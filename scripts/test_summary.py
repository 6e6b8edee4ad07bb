"""Prints the per-version summary of a scripts/test.sh run, from the logs it saved.

Usage: python3 scripts/test_summary.py RESULTS_DIR VERSION [VERSION ...]

One line per suite: cargo's counts, the code gates, each version's pytest and stdlib counts
(or that the version was skipped for want of an interpreter), the wheel check; then a total
line,
``total: N passed, M failed, K skipped``, where failed counts failures and errors.
"""

import re
import sys
from pathlib import Path

COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b")


def matching_lines(path, pattern):
    """The lines of ``path`` that match ``pattern`` (none if there is no such log)."""
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [line.strip(" =") for line in lines if re.search(pattern, line)]


def last_match(path, pattern):
    """The last line of ``path`` that matches ``pattern``, or None (no log, no such line)."""
    lines = matching_lines(path, pattern)
    return lines[-1] if lines else None


def cargo_line(path):
    """One line adding up cargo's ``test result:`` lines (unit tests, doc tests...)."""
    lines = matching_lines(path, r"^test result: ")
    if not lines:
        return None
    found = counts(" ".join(lines))
    return f"{found['passed']} passed, {found['failed']} failed"


def counts(line):
    """``{"passed": N, "failed": M, "skipped": K}`` from a closing line (errors count as
    failed; xfailed/xpassed are not counted)."""
    found = {"passed": 0, "failed": 0, "skipped": 0}
    for number, word in COUNT.findall(line or ""):
        key = "failed" if word.startswith("error") else word
        if key in found:
            found[key] += int(number)
    return found


def main(results, versions):
    results = Path(results)
    total = {"passed": 0, "failed": 0, "skipped": 0}
    rows = []

    def add(name, line, missing="did not run"):
        if line is None:
            rows.append(f"{name:<16} {missing}")
            total["failed"] += 1
            return
        rows.append(f"{name:<16} {line}")
        for key, value in counts(line).items():
            total[key] += value

    add("cargo", cargo_line(results / "cargo.log"))
    gates = last_match(results / "gates.log", r"^gates: ")
    rows.append(f"{'gates':<16} {gates or 'did not run'}")
    if gates is None or not gates.startswith("gates: passed"):
        total["failed"] += 1
    for version in versions:
        if (results / f"missing-{version}.log").exists():
            rows.append(f"{'CPython ' + version:<16} skipped: no interpreter")
            continue
        add(
            f"{version} pytest",
            last_match(
                results / f"pytest-{version}.log", r"\d+ (passed|failed|errors?)\b.* in [\d.]+s"
            ),
        )
        add(f"{version} stdlib", last_match(results / f"stdlib-{version}.log", r"^stdlib: "))
    wheel = last_match(results / "wheel.log", r"^wheel: passed")
    rows.append(f"{'wheel':<16} {wheel or 'FAILED (see ' + str(results / 'wheel.log') + ')'}")
    if wheel is None:
        total["failed"] += 1
    print("\n=== Summary ===")
    print("\n".join(rows))
    print(f"total: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[2])
    main(sys.argv[1], sys.argv[2:])
