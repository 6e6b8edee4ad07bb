#!/usr/bin/env bash
# Builds oxloop and runs every test on each supported CPython (scripts/pythons.sh): the Rust
# core's unit tests and the code gates (scripts/gates.sh: rustfmt, clippy, ruff) once; then, for each version in its own virtualenv (.venv-3.11, ...), the
# pytest suite (behaviour tests run on stock asyncio and on oxloop; tests/ecosystem uses real
# libraries and the PostgreSQL and Redis servers that scripts/services.sh installs and starts
# on loopback) and CPython's own asyncio tests from that interpreter's stdlib; last, a wheel
# built by scripts/build_wheels.sh is installed into a fresh virtualenv and runs the demo.
# Ends with one line per version and a total.
#
# Usage: scripts/test.sh [pytest arguments...]
#   OXLOOP_PYTHONS  the versions to test, e.g. "3.12" (default: every supported version)
# A supported version without an interpreter is reported as skipped by name; under CI
# (CI=true) that fails the run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/pythons.sh
read -r -a versions <<< "${OXLOOP_PYTHONS:-${SUPPORTED_PYTHONS[*]}}"
RESULTS="$ROOT/target/test-results"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"

cargo test --release -p oxloop-core 2>&1 | tee "$RESULTS/cargo.log"

status=0
# The code gates (formatting, lints); a failed gate fails the run, after the tests.
gate_python="$(python_for "${versions[0]}" || command -v python3)"
PYTHON="$gate_python" ./scripts/gates.sh 2>&1 | tee "$RESULTS/gates.log" || status=1

# The servers are stopped however the tests end. A server that cannot start is reported here,
# and the tests that need it skip saying so.
trap './scripts/services.sh stop' EXIT
./scripts/services.sh start || echo "scripts/services.sh: some services did not start (their tests will skip)" >&2

# Builds and tests one version ($1, its interpreter $2; the rest goes to pytest) in a
# subshell; fails if any of its tests failed.
test_version() {
    local version="$1" python="$2"
    shift 2
    (
        PYTHON="$python" VENV=".venv-$version" source scripts/env.sh -r requirements/test.txt -r requirements/ecosystem.txt
        set +e
        # Two worker processes (pytest-xdist): the tests are independent (each makes its own
        # loops, sockets and ports), and CI has two cores.
        python -m pytest tests -n 2 -p no:cacheprovider "$@" 2>&1 | tee "$RESULTS/pytest-$version.log"
        local pytest_status=${PIPESTATUS[0]}
        python tests/stdlib/run_stdlib_tests.py 2>&1 | tee "$RESULTS/stdlib-$version.log"
        local stdlib_status=${PIPESTATUS[0]}
        [ "$pytest_status" -eq 0 ] && [ "$stdlib_status" -eq 0 ]
    )
}

for version in "${versions[@]}"; do
    if ! python="$(python_for "$version")"; then
        echo "CPython $version: no interpreter found" | tee "$RESULTS/missing-$version.log"
        if [ "${CI:-}" = true ]; then status=1; fi
        continue
    fi
    echo "=== CPython $version: $python ==="
    # Not called as `test_version ... || status=1`: bash ignores `set -e` in a function
    # called in a condition, and env.sh's steps rely on it.
    set +e
    test_version "$version" "$python" "$@"
    version_status=$?
    set -e
    if [ "$version_status" -ne 0 ]; then status=1; fi
done

echo "=== The wheel: built, installed into a fresh virtualenv, running the demo ==="
./scripts/check_wheel.sh "${versions[0]}" 2>&1 | tee "$RESULTS/wheel.log" || status=1

python3 scripts/test_summary.py "$RESULTS" "${versions[@]}"
exit "$status"
