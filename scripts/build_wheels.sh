#!/usr/bin/env bash
# Builds the wheels users install: one per supported CPython version (or those named), as
# portable manylinux2014 wheels (linked with zig, from PyPI's `ziglang`, so that they run on
# glibc 2.17 and newer), and the source distribution, into dist/.
#
# Usage: scripts/build_wheels.sh [VERSION ...]     e.g. scripts/build_wheels.sh 3.12
# Each wheel builds in its own cargo target directory (target/wheel-py312, ...). Exits
# non-zero, naming it, if a version has no interpreter.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/pythons.sh
versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then versions=("${SUPPORTED_PYTHONS[@]}"); fi

# The build tools, in a virtualenv of their own.
TOOLS=.venv-build
if [ ! -x "$TOOLS/bin/python" ]; then python3 -m venv "$TOOLS"; fi
"$TOOLS/bin/python" -m pip install --quiet --upgrade pip
"$TOOLS/bin/python" -m pip install --quiet -r requirements/build.txt ziglang
export PATH="$ROOT/$TOOLS/bin:$PATH"

mkdir -p dist
for version in "${versions[@]}"; do
    python="$(python_for "$version")" || { echo "build_wheels.sh: no CPython $version interpreter" >&2; exit 1; }
    CARGO_TARGET_DIR="$ROOT/target/wheel-py${version/./}" \
        maturin build --release --zig --compatibility manylinux2014 --interpreter "$python" --out dist
done
maturin sdist --out dist
ls -l dist
