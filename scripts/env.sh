# Shared by the set-up scripts: creates (once) and activates a virtualenv with the build and
# test tools, then builds oxloop into it.
# Usage: source scripts/env.sh [extra pip install arguments...]
#   PYTHON  the interpreter (default: python3)
#   VENV    the virtualenv's directory (default: .venv)
# Each Python version builds in its own cargo target directory (target/py311, ...), so that
# builds for several versions do not undo each other.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
CARGO_TARGET_DIR="$ROOT/target/$(python -c 'import sys; print("py%d%d" % sys.version_info[:2])')"
export CARGO_TARGET_DIR
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -r requirements/build.txt "$@"
# The extension, built in release mode (the loop is meant to be measured) into the venv.
maturin develop --release --quiet
