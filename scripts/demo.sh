#!/usr/bin/env bash
# Builds oxloop into .venv and runs a short demo program on it.
source "$(dirname "$0")/env.sh"
python examples/demo.py
