# Shared by the set-up scripts: creates (once) and activates the project's virtualenv in
# .venv, with the build and test tools, then builds oxloop into it.
# Usage: source scripts/env.sh [extra pip requirement files...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -r requirements/build.txt "$@"
# The extension, built in release mode (the loop is meant to be measured) into the venv.
maturin develop --release --quiet
