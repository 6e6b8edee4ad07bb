"""A small plain-ASGI application that the uvicorn tests (test_uvicorn.py) serve.

It is written against the bare ASGI interface (no framework) so that every byte of the
exchange goes through uvicorn's protocol classes and the event loop under test.

HTTP routes
-----------
``GET  /loop``          JSON: the class of the running event loop (``module``, ``name``),
                        the server's pid and whether the lifespan startup ran.
``GET  /hello``         the text ``hello``.
``POST /echo``          the request body, sent back unchanged.
``POST /sha256``        JSON: the length and SHA-256 hex digest of the request body.
``GET  /stream?chunks=N&size=M``
                        a chunked response of N chunks of M bytes; chunk ``i`` is the byte
                        ``b"%d" % (i % 10)`` repeated, and the app yields to the loop between
                        chunks so they really leave separately.
``GET  /slow?id=X``     waits 50 ms on the loop, then answers ``X`` (concurrency tests).

WebSocket route
---------------
``/ws``                 echoes every text and bytes message; on the text ``bye`` it closes
                        the connection with code 1000.

Lifespan
--------
Startup and shutdown are recorded in ``LIFESPAN_EVENTS`` (for in-process servers) and the
shutdown is also printed on stdout as ``asgi_app: lifespan shutdown`` (for server processes).
"""

import asyncio
import hashlib
import json
import os
from urllib.parse import parse_qs

LIFESPAN_EVENTS: list[str] = []
STREAM_PAUSE = 0.001  # seconds the stream route sleeps between chunks


async def read_body(receive) -> bytes:
    """The whole body of an HTTP request."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return bytes(body)


async def respond(send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    """Send a complete (non-streaming) HTTP response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def respond_json(send, data: dict) -> None:
    """Send ``data`` as a JSON response."""
    await respond(send, 200, json.dumps(data).encode(), b"application/json")


async def lifespan(receive, send) -> None:
    """Record the startup and shutdown events of the server."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            LIFESPAN_EVENTS.append("startup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            LIFESPAN_EVENTS.append("shutdown")
            print("asgi_app: lifespan shutdown", flush=True)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def websocket(receive, send) -> None:
    """Echo text and bytes messages until the client says ``bye`` or leaves."""
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "bye":
            await send({"type": "websocket.close", "code": 1000})
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def stream(send, chunks: int, size: int) -> None:
    """A chunked response of ``chunks`` chunks of ``size`` bytes each."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        }
    )
    for i in range(chunks):
        await send(
            {"type": "http.response.body", "body": b"%d" % (i % 10) * size, "more_body": True}
        )
        await asyncio.sleep(STREAM_PAUSE)
    await send({"type": "http.response.body", "body": b""})


async def http(scope, receive, send) -> None:
    """Dispatch an HTTP request to its route."""
    route = (scope["method"], scope["path"])
    query = {key: values[0] for key, values in parse_qs(scope["query_string"].decode()).items()}
    if route == ("GET", "/loop"):
        loop = asyncio.get_running_loop()
        await respond_json(
            send,
            {
                "module": type(loop).__module__,
                "name": type(loop).__name__,
                "pid": os.getpid(),
                "started": "startup" in LIFESPAN_EVENTS,
            },
        )
    elif route == ("GET", "/hello"):
        await respond(send, 200, b"hello")
    elif route == ("POST", "/echo"):
        await respond(send, 200, await read_body(receive), b"application/octet-stream")
    elif route == ("POST", "/sha256"):
        body = await read_body(receive)
        await respond_json(send, {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})
    elif route == ("GET", "/stream"):
        await stream(send, int(query["chunks"]), int(query["size"]))
    elif route == ("GET", "/slow"):
        await asyncio.sleep(0.05)
        await respond(send, 200, query["id"].encode())
    else:
        await respond(send, 404, b"not found")


async def app(scope, receive, send) -> None:
    """The ASGI entry point."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "websocket":
        await websocket(receive, send)
    else:
        await http(scope, receive, send)
