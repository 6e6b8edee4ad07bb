#!/usr/bin/env bash
# Builds oxloop into .venv and runs a short demo program on it.
source "$(dirname "$0")/env.sh"
python examples/demo.py
echo
echo "examples/vaccination.py: over 100 simulated hours on oxloop's virtual clock (its end):"
start=$(date +%s.%N)
python -m oxloop --virtual-clock examples/vaccination.py | tail -n 5
python -c "import sys; print(f'(ran in {float(sys.argv[2]) - float(sys.argv[1]):.2f} s real)')" "$start" "$(date +%s.%N)"
