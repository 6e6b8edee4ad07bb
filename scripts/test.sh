#!/usr/bin/env bash
# Builds oxloop into .venv and runs every test: the Rust core's unit tests, the pytest suite
# (behaviour tests run on stock asyncio and on oxloop; tests/ecosystem uses real libraries and
# the PostgreSQL and Redis servers that scripts/services.sh installs and starts on loopback),
# and CPython's own asyncio tests on oxloop.
source "$(dirname "$0")/env.sh" -r requirements/test.txt -r requirements/ecosystem.txt
cargo test --release -p oxloop-core
# The servers are stopped however the tests end. A server that cannot start is reported here,
# and the tests that need it skip saying so.
trap './scripts/services.sh stop' EXIT
./scripts/services.sh start || echo "scripts/services.sh: some services did not start (their tests will skip)" >&2
python -m pytest tests "$@"
python tests/stdlib/run_stdlib_tests.py
