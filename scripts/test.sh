#!/usr/bin/env bash
# Builds oxloop into .venv and runs every test: the Rust core's unit tests, the pytest suite
# (behaviour tests run on stock asyncio and on oxloop), and CPython's own asyncio tests on oxloop.
source "$(dirname "$0")/env.sh" -r requirements/test.txt
cargo test --release -p oxloop-core
python -m pytest tests "$@"
python tests/stdlib/run_stdlib_tests.py
