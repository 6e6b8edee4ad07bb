"""Fixtures of the ecosystem tests (the helpers are in services.py and web_helpers.py).

``postgres_dsn``, ``redis_url``  session: the address of a PostgreSQL / Redis server that
                                 answers; a test using one is skipped when its server does not
                                 (see services.py).
``short_dir``                    a short directory for Unix socket paths.
"""

import shutil
import tempfile

import pytest

import services


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The DSN of a PostgreSQL server that answers (else the test is skipped)."""
    return services.require("PostgreSQL", services.PG_DSN, 5432)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a Redis server that answers (else the test is skipped)."""
    return services.require("Redis", services.REDIS_URL, 6379)


@pytest.fixture
def short_dir():
    """A short directory for Unix socket paths (pytest's tmp_path can exceed their 107 bytes)."""
    path = tempfile.mkdtemp(prefix="oxl-web-")
    yield path
    shutil.rmtree(path, ignore_errors=True)
