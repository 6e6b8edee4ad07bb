#!/usr/bin/env bash
# Checks that a user can install oxloop from a wheel: builds the wheel for one CPython
# version (default 3.11) with scripts/build_wheels.sh, installs it into a fresh virtualenv
# outside the repository and runs examples/demo.py there.
# Usage: scripts/check_wheel.sh [VERSION]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/pythons.sh
version="${1:-3.11}"
python="$(python_for "$version")" || { echo "check_wheel.sh: no CPython $version interpreter" >&2; exit 1; }
rm -f dist/oxloop-*-cp"${version/./}"-*.whl
./scripts/build_wheels.sh "$version"
wheel="$(ls dist/oxloop-*-cp"${version/./}"-*manylinux*.whl)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
"$python" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --quiet "$wheel"
cp examples/demo.py "$scratch/"
# Run from the scratch directory: the installed wheel is imported, not the source tree.
(cd "$scratch" && "$scratch/venv/bin/python" demo.py)
"$scratch/venv/bin/python" -c 'import oxloop, sys; print("wheel", oxloop.__version__, "on", sys.version.split()[0], "from", oxloop.__file__)'
echo "wheel: passed ($(basename "$wheel"))"
