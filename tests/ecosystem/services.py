"""Where the ecosystem tests find their PostgreSQL and Redis servers.

The defaults are the throwaway servers ``scripts/services.sh start`` runs on loopback;
the environment variables ``OXLOOP_TEST_PG_DSN`` and ``OXLOOP_TEST_REDIS_URL`` point the tests
at other servers. The fixtures ``postgres_dsn`` and ``redis_url`` (in this directory's
conftest.py) skip a test, saying how to start the server, when its server does not answer
(``require``).

Also here: ``unique_name``, a name no other test (or earlier run) uses, for schemas, tables,
channels and key prefixes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

PG_DSN = os.environ.get("OXLOOP_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:54329/postgres")
REDIS_URL = os.environ.get("OXLOOP_TEST_REDIS_URL", "redis://127.0.0.1:63799/0")

# The directory of the Unix socket of scripts/services.sh's PostgreSQL (only that server's).
PG_SOCKET_DIR = Path(__file__).resolve().parents[2] / ".services" / "pg-socket"

START_HINT = "start it with scripts/services.sh start"
CONNECT_TIMEOUT = 2.0


def address(url: str, default_port: int) -> tuple[str, int]:
    """The (host, port) of a server's URL."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _answers(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def require(name: str, url: str, default_port: int) -> str:
    """``url`` if its server answers; else the test is skipped, saying how to start it."""
    host, port = address(url, default_port)
    if not _answers(host, port):
        pytest.skip(f"{name} is not running on {host}:{port}: {START_HINT}")
    return url


def unique_name(prefix: str = "oxl") -> str:
    """A fresh identifier (lower-case letters, digits and underscores)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def redis_client(url: str, **kwargs):
    """A redis.asyncio client (with its own connection pool), closed at exit."""
    redis = aioredis.Redis.from_url(url, **kwargs)
    try:
        yield redis
    finally:
        await redis.aclose()
