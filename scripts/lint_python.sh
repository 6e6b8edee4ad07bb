#!/usr/bin/env bash
# Lints and checks the formatting of the Python code (python/, tests/, benchmarks/, scripts/,
# examples/) with ruff, configured in pyproject.toml ([tool.ruff]). Fails if either check
# finds something.
#
# Usage: scripts/lint_python.sh
# Run it in the virtualenv to use: if ruff is not installed there, requirements/lint.txt is
# installed into it first (refused outside a virtualenv). To fix what it reports:
#   ruff format .        (formatting)
#   ruff check --fix .   (the findings ruff can fix safely; fix the others by hand)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -m ruff --version >/dev/null 2>&1; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
        echo "lint_python.sh: ruff is missing and $PYTHON is not in a virtualenv: activate one" >&2
        exit 2
    fi
    "$PYTHON" -m pip install --quiet -r requirements/lint.txt
fi

wanted="$(sed -n 's/^ruff==//p' requirements/lint.txt)"
installed="$("$PYTHON" -m ruff --version | awk '{print $2}')"
if [ "$installed" != "$wanted" ]; then
    echo "lint_python.sh: warning: ruff $installed installed, requirements/lint.txt pins $wanted" >&2
fi

status=0
echo "ruff check"
"$PYTHON" -m ruff check . || status=1
echo "ruff format --check"
"$PYTHON" -m ruff format --check . || status=1
exit "$status"
