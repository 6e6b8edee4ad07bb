"""Helpers shared by the web-library tests (test_aiohttp.py and test_websockets_lib.py).

``aiohttp_server``  an async context manager serving an ``aiohttp.web.Application`` on
                    127.0.0.1 (a free port) or a Unix socket, yielding its base URL; the runner
                    is cleaned up at exit.
``random_bytes``    reproducible pseudo-random bytes (cheaper than ``os.urandom`` for MiBs).
``sha256``          the hex SHA-256 of some bytes.
"""

import contextlib
import hashlib
import random

import aiohttp
from aiohttp import web

MiB = 1024 * 1024


@contextlib.asynccontextmanager
async def aiohttp_server(app: web.Application, ssl_context=None, unix_path=None, **runner_options):
    """Serve ``app`` in the running loop, on 127.0.0.1 (port 0) or on the Unix socket
    ``unix_path``; yields the base URL ("http://127.0.0.1:PORT", "https://..." with
    ``ssl_context``, "http://localhost" on a Unix socket). ``runner_options`` go to the
    ``AppRunner``."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0, **runner_options)
    await runner.setup()
    try:
        scheme = "https" if ssl_context is not None else "http"
        if unix_path is not None:
            await web.UnixSite(runner, unix_path, ssl_context=ssl_context).start()
            yield f"{scheme}://localhost"
        else:
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
            host, port = runner.addresses[0][:2]
            yield f"{scheme}://{host}:{port}"
    finally:
        await runner.cleanup()


def random_bytes(size: int, seed: int = 0) -> bytes:
    """``size`` pseudo-random bytes, the same for the same ``seed``."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def connection_trace():
    """An ``aiohttp.TraceConfig`` recording the connections a client session makes and reuses:
    ``(trace, created, reused)``, the last two lists of the events' parameters."""
    created, reused = [], []

    async def on_create(session, context, params):
        created.append(params)

    async def on_reuse(session, context, params):
        reused.append(params)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    return trace, created, reused
