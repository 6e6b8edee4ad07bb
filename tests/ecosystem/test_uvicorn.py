"""uvicorn serving a real ASGI application (asgi_app.py) on stock asyncio and on oxloop.

Two ways of running it:

* **As a process**, from uvicorn's command line: ``python -m uvicorn asgi_app:app --loop
  oxloop:new_event_loop`` (``--loop asyncio`` for the stock case) with ``--http httptools`` or
  ``--http h11`` (and once with ``--workers 2``), serving a listening socket the test bound and
  passes with ``--fd``. The test drives it with an ``httpx.AsyncClient`` (in a loop of the same
  kind), then stops it with SIGTERM or SIGINT and checks the graceful shutdown.
* **In-process**: ``uvicorn.Server(uvicorn.Config(app, loop="none", ...)).serve()`` as a task
  of the test's loop (on a socket uvicorn binds, or with ``sockets=[sock]``: TCP or Unix),
  driven by ``httpx.AsyncClient`` (HTTP, HTTPS) and the ``websockets`` client (WebSocket) in
  that same loop, stopped with ``server.should_exit = True``.

The common HTTP checks: the requests really ran on the expected loop class (the ``/loop``
route answers it), plain GETs, 4 MiB request bodies (hashed and echoed), a chunked streaming
response, several requests over one keep-alive connection, 100 concurrent requests. Then, in
process: TLS, a Unix socket, HTTP/1.1 pipelining, the keep-alive timeout, a client leaving in
the middle of a response, a shutdown during a response, and WebSocket echo.
"""

import asyncio
import contextlib
import hashlib
import os
import random
import re
import signal
import socket
import subprocess

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect as ws_connect

import asgi_app
from helpers.loops import LOOP_TYPES
from helpers.processes import PYTHON, child_env

APP_DIR = os.path.dirname(os.path.abspath(__file__))
MiB = 1024 * 1024
BIG_BODY = random.Random(1).randbytes(4 * MiB)
CONCURRENT_REQUESTS = 100
STREAM_CHUNKS, STREAM_CHUNK_SIZE = 50, 16 * 1024

# uvicorn's --loop value that gives each kind of loop in a server process.
CLI_LOOPS = {"asyncio": "asyncio", "oxloop": "oxloop:new_event_loop"}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1 (a free port), with room for many pending clients."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(CONCURRENT_REQUESTS + 28)
    return sock


def http_client(base_url: str, *, uds: str | None = None, verify=True) -> httpx.AsyncClient:
    """An httpx client for the server (over the Unix socket ``uds`` if given, trusting the
    ``verify`` context for TLS), allowed as many connections as the concurrency test."""
    limits = httpx.Limits(
        max_connections=CONCURRENT_REQUESTS, max_keepalive_connections=CONCURRENT_REQUESTS
    )
    transport = httpx.AsyncHTTPTransport(uds=uds, verify=verify, limits=limits)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=20)


def expected_stream() -> bytes:
    """The body the ``/stream`` route sends for STREAM_CHUNKS chunks of STREAM_CHUNK_SIZE."""
    return b"".join(b"%d" % (i % 10) * STREAM_CHUNK_SIZE for i in range(STREAM_CHUNKS))


async def check_runs_on(client: httpx.AsyncClient, loop_type: type) -> dict:
    """Assert that the server answers ``/loop`` from a loop of class ``loop_type`` after its
    lifespan startup; returns the answer."""
    response = await client.get("/loop")
    assert response.status_code == 200
    info = response.json()
    assert (info["module"], info["name"]) == (loop_type.__module__, loop_type.__name__)
    assert info["started"] is True
    return info


async def check_http(client: httpx.AsyncClient) -> None:
    """Plain GET, 4 MiB bodies, streaming, keep-alive and concurrency against the app."""
    response = await client.get("/hello")
    assert (response.status_code, response.text) == (200, "hello")
    assert (await client.get("/nowhere")).status_code == 404

    response = await client.post("/sha256", content=BIG_BODY)
    assert response.json() == {
        "length": len(BIG_BODY),
        "sha256": hashlib.sha256(BIG_BODY).hexdigest(),
    }
    response = await client.post("/echo", content=BIG_BODY)
    assert response.content == BIG_BODY

    params = {"chunks": STREAM_CHUNKS, "size": STREAM_CHUNK_SIZE}
    async with client.stream("GET", "/stream", params=params) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        received = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert received == expected_stream()

    # Keep-alive: so far one request at a time, so the client's pool holds a single connection,
    # which the server keeps open: these requests all go over it.
    responses = [await client.get("/hello") for _ in range(5)]
    assert len({id(r.extensions["network_stream"]) for r in responses}) == 1

    # Concurrency: every request overlaps the others (each waits 50 ms on the server's loop).
    responses = await asyncio.gather(
        *(client.get("/slow", params={"id": i}) for i in range(CONCURRENT_REQUESTS))
    )
    assert [r.text for r in responses] == [str(i) for i in range(CONCURRENT_REQUESTS)]


@contextlib.asynccontextmanager
async def served(
    http: str, *, ws: str = "auto", sock: socket.socket | None = None, ssl_context=None, **options
):
    """Serve asgi_app in the running loop with uvicorn's ``http``/``ws`` implementations, over
    TLS with ``ssl_context``, on ``sock`` (``serve(sockets=[sock])``) or else on 127.0.0.1 and
    a port uvicorn binds itself (``Config(port=0)``); other ``options`` go to ``Config``.
    Yields ``(server, base_url)`` and shuts the server down gracefully at exit."""
    asgi_app.LIFESPAN_EVENTS.clear()
    config = uvicorn.Config(
        asgi_app.app,
        loop="none",
        http=http,
        ws=ws,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_config=None,
        access_log=False,
        ssl_context_factory=None if ssl_context is None else lambda config, default: ssl_context,
        **options,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=None if sock is None else [sock]))
    try:
        while not server.started:
            assert not task.done(), task  # an error at startup: the await below raises it
            await asyncio.sleep(0.01)
        listener = server.servers[0].sockets[0]
        if listener.family == socket.AF_UNIX:
            base_url = "http://localhost"
        else:
            scheme = "http" if ssl_context is None else "https"
            base_url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]:d}"
        yield server, base_url
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        if sock is not None:
            sock.close()  # uvicorn closed it at shutdown; this is a no-op unless startup failed
    assert asgi_app.LIFESPAN_EVENTS == ["startup", "shutdown"]


# --------------------------------------------------------------------------------------------
# uvicorn as a process, from its command line
# --------------------------------------------------------------------------------------------

# Each HTTP implementation is stopped with one of the two signals uvicorn handles. After a
# graceful shutdown uvicorn raises the signal again: SIGTERM's default action then ends the
# process (return code -SIGTERM), SIGINT ends it normally (return code 0).
PROCESS_CASES = [
    pytest.param("httptools", signal.SIGTERM, -signal.SIGTERM, id="httptools-SIGTERM"),
    pytest.param("h11", signal.SIGINT, 0, id="h11-SIGINT"),
]


@contextlib.contextmanager
def uvicorn_process(loop_kind: str, *options: str):
    """``python -m uvicorn asgi_app:app --loop <loop_kind's> --fd N *options`` serving a socket
    the test bound; yields ``(process, base_url)`` (the process's output is piped, as text)
    and kills the process at exit if the test did not stop it."""
    sock = listening_socket()
    command = [
        PYTHON,
        "-m",
        "uvicorn",
        "asgi_app:app",
        "--app-dir",
        APP_DIR,
        "--loop",
        CLI_LOOPS[loop_kind],
        "--fd",
        str(sock.fileno()),
        "--lifespan",
        "on",
        "--no-access-log",
        *options,
    ]
    process = subprocess.Popen(
        command,
        pass_fds=[sock.fileno()],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]:d}"
    sock.close()  # the server holds the only copy: if it dies, connections are refused
    try:
        yield process, base_url
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("http, stop_signal, returncode", PROCESS_CASES)
def test_uvicorn_command_line(loop, loop_kind, http, stop_signal, returncode):
    """``python -m uvicorn --loop ... --http ... --fd N`` serves the app on the requested loop
    (GET, big POSTs, streaming, keep-alive, concurrency) and shuts down gracefully on a signal."""

    async def drive(process, base_url):
        # The socket listens already: the first request waits in its backlog until uvicorn serves.
        async with http_client(base_url) as client:
            info = await check_runs_on(client, LOOP_TYPES[loop_kind])
            assert info["pid"] == process.pid
            await check_http(client)

    with uvicorn_process(loop_kind, "--http", http) as (process, base_url):
        loop.run_until_complete(drive(process, base_url))
        process.send_signal(stop_signal)
        stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == returncode, stderr
    assert "Traceback" not in stderr, stderr
    assert "Shutting down" in stderr and f"Finished server process [{process.pid:d}]" in stderr, (
        stderr
    )
    assert "asgi_app: lifespan shutdown" in stdout


@pytest.mark.timeout(60)
def test_uvicorn_command_line_workers(loop, loop_kind):
    """``--workers 2``: uvicorn's parent process starts two worker processes that serve the
    shared socket on the requested loop; SIGINT to the parent stops both gracefully."""

    async def drive(base_url):
        # A new connection per request, so that the kernel may hand them to either worker.
        pids = set()
        for _ in range(10):
            async with http_client(base_url) as client:
                pids.add((await check_runs_on(client, LOOP_TYPES[loop_kind]))["pid"])
        return pids

    with uvicorn_process(loop_kind, "--workers", "2") as (process, base_url):
        pids = loop.run_until_complete(drive(base_url))
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    workers = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", stderr)}
    assert len(workers) == 2 and process.pid not in workers, stderr
    assert pids <= workers
    for pid in workers:
        assert f"Finished server process [{pid:d}]" in stderr, stderr
    assert stdout.count("asgi_app: lifespan shutdown") == 2


# --------------------------------------------------------------------------------------------
# uvicorn.Server in the test's loop
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_uvicorn_server_in_process(loop, http):
    """``uvicorn.Server.serve()`` runs in the current loop and serves GET, big POSTs,
    streaming, keep-alive and concurrent requests of a client in the same loop."""

    async def main():
        async with (
            served(http, sock=listening_socket()) as (server, base_url),
            http_client(base_url) as client,
        ):
            await check_runs_on(client, type(loop))
            await check_http(client)
            assert server.server_state.total_requests >= CONCURRENT_REQUESTS + 10

    loop.run_until_complete(main())


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_uvicorn_idle_and_dropped_connections(loop, http):
    """uvicorn binding its own port: it closes a keep-alive connection idle for longer than
    ``timeout_keep_alive`` (the client reconnects transparently), and forgets a connection the
    client drops in the middle of a streaming response."""

    async def wait_no_connections(server):
        for _ in range(200):
            if not server.server_state.connections:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"connections still open: {server.server_state.connections}")

    async def main():
        async with served(http, timeout_keep_alive=0.2) as (server, base_url):
            async with http_client(base_url) as client:
                first = await client.get("/hello")
                assert len(server.server_state.connections) == 1
                await wait_no_connections(server)
                second = await client.get("/hello")
                assert second.text == "hello"
                assert second.extensions["network_stream"] is not first.extensions["network_stream"]

                params = {"chunks": 100, "size": 64 * 1024}
                async with client.stream("GET", "/stream", params=params) as response:
                    assert len(await anext(response.aiter_raw())) > 0
            # Leaving the client closed its connection with the response unfinished.
            await wait_no_connections(server)

    loop.run_until_complete(main())


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_uvicorn_pipelined_requests(loop, http):
    """Ten requests and a POST written at once on one connection (HTTP/1.1 pipelining):
    uvicorn pauses reading while it answers each in turn, and every answer comes back, in
    order, before it closes the connection as the last request asked."""
    pipelined = b"".join(b"GET /slow?id=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(10))
    pipelined += (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlast"
    )

    async def main():
        async with served(http) as (_server, base_url):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", int(base_url.rsplit(":", 1)[1])
            )
            writer.write(pipelined)
            received = await reader.read()  # up to the server's close
            writer.close()
            await writer.wait_closed()
        responses = received.split(b"HTTP/1.1 ")[1:]
        assert [r.split(b"\r\n", 1)[0] for r in responses] == [b"200 OK"] * 11
        assert [r.split(b"\r\n\r\n", 1)[1] for r in responses] == [b"%d" % i for i in range(10)] + [
            b"last"
        ]

    loop.run_until_complete(main())


def test_uvicorn_over_tls(loop, server_context, client_context):
    """uvicorn with an SSL context serves HTTPS: the same checks over TLS (the loop's TLS
    server transport under uvicorn's protocol, httpx verifying the certificate)."""

    async def main():
        async with served("httptools", ssl_context=server_context) as (_server, base_url):
            assert base_url.startswith("https://")
            async with http_client(base_url, verify=client_context) as client:
                await check_runs_on(client, type(loop))
                await check_http(client)

    loop.run_until_complete(main())


def test_uvicorn_over_unix_socket(loop, sock_dir):
    """uvicorn serving a listening Unix socket: the same checks over it."""
    path = os.path.join(sock_dir, "uvicorn.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(CONCURRENT_REQUESTS + 28)

    async def main():
        async with (
            served("h11", sock=sock) as (_server, base_url),
            http_client(base_url, uds=path) as client,
        ):
            await check_runs_on(client, type(loop))
            await check_http(client)

    loop.run_until_complete(main())


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_uvicorn_graceful_shutdown_finishes_response(loop, http):
    """``should_exit`` during a streaming response: uvicorn lets the response finish (the client
    gets every byte) and then ``serve()`` returns."""

    async def main():
        async with served(http) as (server, base_url), http_client(base_url) as client:
            params = {"chunks": STREAM_CHUNKS, "size": STREAM_CHUNK_SIZE}
            async with client.stream("GET", "/stream", params=params) as response:
                chunks = response.aiter_bytes()
                received = await anext(chunks)
                server.should_exit = True
                received += b"".join([chunk async for chunk in chunks])
            assert received == expected_stream()

    loop.run_until_complete(main())


# uvicorn's "websockets" implementation is built on the deprecated websockets.legacy API.
@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::uvicorn.config.UvicornDeprecationWarning"
)
@pytest.mark.parametrize("ws", ["websockets", "websockets-sansio"])
def test_uvicorn_websocket(loop, ws):
    """uvicorn's WebSocket support: text and binary echo (up to 1 MiB), several clients at
    once, and a close initiated by the server with code 1000."""

    async def one_client(base_url: str, n: int) -> None:
        async with ws_connect(base_url.replace("http", "ws", 1) + "/ws", max_size=2 * MiB) as conn:
            for size in (1, 1000, MiB):
                payload = random.Random(n).randbytes(size)
                await conn.send(payload)
                assert await conn.recv() == payload
            await conn.send(f"hello {n}")
            assert await conn.recv() == f"hello {n}"
            await conn.send("bye")
            await conn.wait_closed()
            assert conn.close_code == 1000

    async def main():
        async with served("httptools", ws=ws) as (_server, base_url):
            await asyncio.gather(*(one_client(base_url, n) for n in range(5)))

    loop.run_until_complete(main())
