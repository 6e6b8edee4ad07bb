#!/usr/bin/env bash
# The code gates CI runs before the tests: rustfmt, clippy with the workspace lint table
# (Cargo.toml's [workspace.lints], warnings are errors), ruff's linter and formatter on the
# Python code. Each gate runs even if an earlier one failed; the script fails if any did.
# (The stub check, mypy's stubtest of python/oxloop/_core.pyi against the built extension,
# is tests/test_stubs.py: it runs in every version's pytest.)
#
# Usage: scripts/gates.sh
#   PYTHON  the interpreter for ruff's virtualenv and for PyO3's build (default: python3)
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
failed=()

gate() {
    local name="$1"
    shift
    echo "--- gate: $name"
    if "$@"; then
        echo "gate $name: passed"
    else
        echo "gate $name: FAILED"
        failed+=("$name")
    fi
}

gate "cargo fmt" cargo fmt --all --check
# Its own target directory: clippy's dev-profile artefacts would otherwise evict the release
# builds the tests use.
gate "cargo clippy" env PYO3_PYTHON="$PYTHON" CARGO_TARGET_DIR="$ROOT/target/clippy" \
    cargo clippy --workspace --all-targets --quiet -- -D warnings

# ruff, pinned by requirements/lint.txt, in a virtualenv of its own. To fix what it reports:
# `.venv-lint/bin/ruff format .` and `.venv-lint/bin/ruff check --fix .` (the rest by hand).
if [ ! -x .venv-lint/bin/python ]; then "$PYTHON" -m venv .venv-lint; fi
.venv-lint/bin/python -m pip install --quiet -r requirements/lint.txt
gate "ruff check" .venv-lint/bin/ruff check .
gate "ruff format" .venv-lint/bin/ruff format --check .

if [ "${#failed[@]}" -ne 0 ]; then
    echo "gates: FAILED (${failed[*]})"
    exit 1
fi
echo "gates: passed (cargo fmt, cargo clippy, ruff check, ruff format)"
