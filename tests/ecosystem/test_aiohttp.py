"""aiohttp used for real: an ``aiohttp.web`` server (AppRunner + TCPSite on 127.0.0.1, a free
port) and a ``ClientSession`` talking to it, both running in the loop under test.

Covers plain requests (query, headers), multi-MiB uploads (whole and chunked), streamed and
slowly read responses, file responses (``loop.sendfile``) with ranges, a Unix socket server,
clients going away (the handler's writes fail, or it is cancelled), WebSockets (echo, many
messages, close codes from both sides, over TLS), HTTPS with a certificate generated at test
time, keep-alive connection reuse, concurrent requests, a failing handler and a client
timeout. Every test runs on stock asyncio and on oxloop (see conftest.py);
sessions and runners are closed inside the test, so the leak checks of the fixtures apply.
"""

import asyncio
import os

import aiohttp
import pytest
from aiohttp import web

from helpers.net import record_errors
from helpers.tls import make_client_context, make_server_context
from web_helpers import MiB, aiohttp_server, connection_trace, random_bytes, sha256

# What a loop in debug mode reports when an incoming connection's TLS handshake fails.
FAILED_INCOMING = "Error on transport creation for incoming connection"

CLOSES = web.AppKey("closes", list)  # what the echo handler saw of the client's close frame

# Fixtures from the helpers (pytest finds fixtures among a module's names; short_dir is one).


# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------


async def describe_request(request):
    """Reply with what the server saw of the request, as JSON."""
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": sorted(request.query.items()),
            "x_test": request.headers.get("X-Test"),
            "secure": request.secure,
        }
    )


async def hash_whole_body(request):
    """Read the whole body at once and reply with its size and SHA-256."""
    body = await request.read()
    return web.json_response({"size": len(body), "sha256": sha256(body)})


async def hash_streamed_body(request):
    """Read the body piece by piece and reply with its size, SHA-256 and transfer encoding."""
    body = bytearray()
    async for piece in request.content.iter_chunked(64 * 1024):
        body += piece
    return web.json_response(
        {
            "size": len(body),
            "sha256": sha256(bytes(body)),
            "transfer_encoding": request.headers.get("Transfer-Encoding"),
        }
    )


async def websocket_echo(request):
    """Echo every text and binary message; record the close frame the client sent."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        else:
            request.app[CLOSES].append((msg.type, msg.data, msg.extra, ws.close_code))
            break
    return ws


async def websocket_closing(request):
    """Send one message, then close the WebSocket with code 4001."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str("about to close")
    await ws.close(code=4001, message=b"server says bye")
    return ws


def make_app(**kwargs):
    app = web.Application(**kwargs)
    app[CLOSES] = []
    app.router.add_get("/describe", describe_request)
    app.router.add_post("/describe", describe_request)
    app.router.add_post("/hash", hash_whole_body)
    app.router.add_post("/hash-stream", hash_streamed_body)
    app.router.add_get("/ws", websocket_echo)
    app.router.add_get("/ws-closing", websocket_closing)
    return app


# --------------------------------------------------------------------------------------------
# Plain HTTP
# --------------------------------------------------------------------------------------------


def test_get_with_query_and_headers(loop):
    """A GET's query string and headers reach the handler; its JSON reply reaches the client."""

    async def main():
        async with aiohttp_server(make_app()) as url, aiohttp.ClientSession() as session:
            async with session.get(
                f"{url}/describe", params={"b": "2", "a": "x y"}, headers={"X-Test": "hello"}
            ) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("application/json")
                body = await resp.json()
        assert body == {
            "method": "GET",
            "path": "/describe",
            "query": [["a", "x y"], ["b", "2"]],
            "x_test": "hello",
            "secure": False,
        }

    loop.run_until_complete(main())


# aiohttp advises against big bytes bodies (they are written at once): that is the point here.
LARGE_BODY_WARNING = "ignore:Sending a large body directly:ResourceWarning"


@pytest.mark.filterwarnings(LARGE_BODY_WARNING)
def test_post_of_8_mib(loop):
    """An 8 MiB POST body arrives whole: the server's SHA-256 of it matches the client's."""
    body = random_bytes(8 * MiB, seed=1)

    async def main():
        app = make_app(client_max_size=16 * MiB)
        async with aiohttp_server(app) as url, aiohttp.ClientSession() as session:
            async with session.post(f"{url}/hash", data=body) as resp:
                assert resp.status == 200
                return await resp.json()

    assert loop.run_until_complete(main()) == {"size": len(body), "sha256": sha256(body)}


def test_chunked_streaming_upload(loop):
    """A body given as an async generator is sent with chunked transfer encoding; the server,
    reading it as a stream, gets every byte in order."""
    pieces = [random_bytes(size, seed=size) for size in (1, 100, 65536, 300_000, 7, 1_000_000)] * 3
    expected = b"".join(pieces)

    async def produce():
        for piece in pieces:
            yield piece
            await asyncio.sleep(0)

    async def main():
        async with aiohttp_server(make_app()) as url, aiohttp.ClientSession() as session:
            async with session.post(f"{url}/hash-stream", data=produce()) as resp:
                assert resp.status == 200
                return await resp.json()

    assert loop.run_until_complete(main()) == {
        "size": len(expected),
        "sha256": sha256(expected),
        "transfer_encoding": "chunked",
    }


def test_streaming_response(loop):
    """A ``StreamResponse`` written in 500 chunks of varied sizes is read back, in pieces of
    at most 4 KiB with ``iter_chunked``, byte for byte."""
    chunks = [random_bytes(1 + (i * 7919) % 20000, seed=i) for i in range(500)]

    async def stream(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def main():
        app = web.Application()
        app.router.add_get("/stream", stream)
        received = bytearray()
        async with aiohttp_server(app) as url, aiohttp.ClientSession() as session:
            async with session.get(f"{url}/stream") as resp:
                assert resp.status == 200
                assert resp.headers["Transfer-Encoding"] == "chunked"
                async for piece in resp.content.iter_chunked(4096):
                    assert 0 < len(piece) <= 4096
                    received += piece
        return bytes(received)

    assert loop.run_until_complete(main()) == b"".join(chunks)


def test_handler_error_gives_500_and_server_keeps_serving(loop):
    """A handler raising gives a 500 response; the server then answers other requests (and the
    failing route again) normally."""

    async def failing(request):
        raise RuntimeError("handler failure on purpose")

    async def main():
        app = make_app()
        app.router.add_get("/fail", failing)
        statuses = []
        async with aiohttp_server(app) as url, aiohttp.ClientSession() as session:
            for path in ("/fail", "/describe", "/fail", "/describe"):
                async with session.get(url + path) as resp:
                    await resp.read()
                    statuses.append(resp.status)
        return statuses

    assert loop.run_until_complete(main()) == [500, 200, 500, 200]


def test_client_timeout_on_a_slow_handler(loop):
    """A request to a handler that does not answer in time fails with a timeout on the client;
    the server then still answers."""

    async def main():
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow(request):
            started.set()
            await release.wait()
            return web.Response(text="too late")

        app = make_app()
        app.router.add_get("/slow", slow)
        async with aiohttp_server(app) as url, aiohttp.ClientSession() as session:
            with pytest.raises(asyncio.TimeoutError):
                async with session.get(f"{url}/slow", timeout=aiohttp.ClientTimeout(total=0.3)):
                    pass
            assert started.is_set()
            release.set()
            async with session.get(f"{url}/describe") as resp:
                assert resp.status == 200
                assert (await resp.json())["path"] == "/describe"

    loop.run_until_complete(main())


def test_slowly_read_16_mib_download(loop):
    """A 16 MiB streamed response read in small pieces, the reader yielding to the loop now
    and then (so the client's flow control pauses and resumes the connection), arrives whole."""
    block = random_bytes(64 * 1024, seed=7)
    blocks = 256

    async def download(request):
        resp = web.StreamResponse()
        resp.content_length = len(block) * blocks
        await resp.prepare(request)
        for _ in range(blocks):
            await resp.write(block)
        await resp.write_eof()
        return resp

    async def main():
        app = web.Application()
        app.router.add_get("/download", download)
        received = bytearray()
        async with aiohttp_server(app) as url, aiohttp.ClientSession() as session:
            async with session.get(f"{url}/download") as resp:
                async for piece in resp.content.iter_chunked(8192):
                    received += piece
                    if len(received) % (256 * 1024) < len(piece):
                        await asyncio.sleep(0.001)
        return bytes(received)

    assert loop.run_until_complete(main()) == block * blocks


def test_client_going_away_mid_stream(loop):
    """A client closing its response after the first piece makes the server's next writes
    fail with ``ConnectionError`` in the handler; the server keeps serving."""

    async def main():
        failures = []
        handler_done = asyncio.Event()

        async def endless(request):
            resp = web.StreamResponse()
            await resp.prepare(request)
            try:
                for _ in range(100_000):
                    await resp.write(b"x" * 65536)
            except ConnectionError as exc:
                failures.append(exc)
            finally:
                handler_done.set()
            return resp

        app = make_app()
        app.router.add_get("/endless", endless)
        async with aiohttp_server(app) as url, aiohttp.ClientSession() as session:
            async with session.get(f"{url}/endless") as resp:
                assert len(await resp.content.readexactly(1000)) == 1000
                resp.close()
            await asyncio.wait_for(handler_done.wait(), 10)
            async with session.get(f"{url}/describe") as resp:
                assert resp.status == 200
        assert len(failures) == 1

    loop.run_until_complete(main())


@pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])
def test_file_response_whole_and_ranges(loop, tmp_path, secure, server_cert, tls_ca):
    """A ``FileResponse`` of a 6 MiB file (sent with ``loop.sendfile``, which over HTTPS falls
    back to reads and writes) arrives whole; Range requests get 206 and the exact slice."""
    content = random_bytes(6 * MiB, seed=8)
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    server_ssl = make_server_context(server_cert) if secure else None
    client_ssl = make_client_context(tls_ca) if secure else None

    async def send_file(request):
        return web.FileResponse(path)

    async def main():
        app = web.Application()
        app.router.add_get("/file", send_file)
        async with aiohttp_server(app, ssl_context=server_ssl) as url:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}/file", ssl=client_ssl) as resp:
                    assert resp.status == 200
                    assert resp.content_length == len(content)
                    assert await resp.read() == content
                for first, last in [(0, 0), (1000, 1999), (len(content) - 5000, len(content) - 1)]:
                    headers = {"Range": f"bytes={first}-{last}"}
                    async with session.get(f"{url}/file", headers=headers, ssl=client_ssl) as resp:
                        assert resp.status == 206
                        assert await resp.read() == content[first : last + 1]

    loop.run_until_complete(main())


def test_over_a_unix_socket(loop, short_dir):
    """A server on a Unix socket (``UnixSite``) and a client through ``UnixConnector``: a GET
    and a 1 MiB POST."""
    body = random_bytes(MiB, seed=9)
    path = os.path.join(short_dir, "web.sock")

    async def main():
        async with aiohttp_server(make_app(client_max_size=2 * MiB), unix_path=path) as url:
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path)) as session:
                async with session.get(f"{url}/describe", params={"q": "1"}) as resp:
                    assert (await resp.json())["query"] == [["q", "1"]]
                async with session.post(f"{url}/hash", data=body) as resp:
                    assert await resp.json() == {"size": len(body), "sha256": sha256(body)}

    loop.run_until_complete(main())


def test_client_going_away_cancels_the_handler(loop):
    """With ``handler_cancellation=True``, a client giving up on a request (its timeout
    closes the connection) gets the server's handler cancelled."""

    async def main():
        cancelled = asyncio.Event()

        async def waits_forever(request):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        app = make_app()
        app.router.add_get("/forever", waits_forever)
        async with aiohttp_server(app, handler_cancellation=True) as url:
            async with aiohttp.ClientSession() as session:
                with pytest.raises(asyncio.TimeoutError):
                    await session.get(f"{url}/forever", timeout=aiohttp.ClientTimeout(total=0.2))
                await asyncio.wait_for(cancelled.wait(), 10)
                async with session.get(f"{url}/describe") as resp:
                    assert resp.status == 200

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(loop):
    """Sequential requests of one session go over one kept-alive connection: the connector
    opens it once and reuses it, and the server sees a single client address."""

    async def main():
        peers = []

        async def peer(request):
            peers.append(request.transport.get_extra_info("peername"))
            return web.Response(text=str(len(peers)))

        trace, created, reused = connection_trace()

        app = web.Application()
        app.router.add_get("/peer", peer)
        texts = []
        session = aiohttp.ClientSession(trace_configs=[trace])
        async with aiohttp_server(app) as url, session:
            for _ in range(6):
                async with session.get(f"{url}/peer") as resp:
                    texts.append(await resp.text())
        assert texts == ["1", "2", "3", "4", "5", "6"]
        assert len(created) == 1
        assert len(reused) == 5
        assert len(set(peers)) == 1

    loop.run_until_complete(main())


def test_fifty_concurrent_requests(loop):
    """50 requests sent at once via gather are all in their handlers at the same time (each
    handler waits until all 50 have arrived), and each gets its own answer."""
    count = 50

    async def main():
        arrived = []
        all_arrived = asyncio.Event()

        async def gathering(request):
            arrived.append(request.query["i"])
            if len(arrived) == count:
                all_arrived.set()
            await asyncio.wait_for(all_arrived.wait(), 10)
            return web.Response(text=f"answer {request.query['i']}")

        async def fetch(session, url, i):
            async with session.get(f"{url}/gather", params={"i": str(i)}) as resp:
                assert resp.status == 200
                return await resp.text()

        app = web.Application()
        app.router.add_get("/gather", gathering)
        async with aiohttp_server(app) as url, aiohttp.ClientSession() as session:
            answers = await asyncio.gather(*(fetch(session, url, i) for i in range(count)))
        assert answers == [f"answer {i}" for i in range(count)]
        assert sorted(arrived, key=int) == [str(i) for i in range(count)]

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# HTTPS
# --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings(LARGE_BODY_WARNING)
def test_https_with_a_test_certificate(loop, server_context, client_context):
    """HTTPS to a server presenting a certificate of the test CA, the client verifying it: a GET
    and a 2 MiB POST succeed, and the server sees a secure request."""
    body = random_bytes(2 * MiB, seed=2)

    async def main():
        app = make_app(client_max_size=4 * MiB)
        async with aiohttp_server(app, ssl_context=server_context) as url:
            assert url.startswith("https://")
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}/describe", ssl=client_context) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["secure"] is True
                async with session.post(f"{url}/hash", data=body, ssl=client_context) as resp:
                    assert await resp.json() == {"size": len(body), "sha256": sha256(body)}

    loop.run_until_complete(main())


def test_https_client_rejects_an_untrusted_certificate(loop, server_context):
    """A client trusting only the system CAs refuses the test certificate."""
    errors = record_errors(loop)

    async def main():
        async with aiohttp_server(make_app(), ssl_context=server_context) as url:
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await session.get(f"{url}/describe")

    loop.run_until_complete(main())
    # in debug mode, the loop reports the server side's failed handshake
    assert all(error["message"] == FAILED_INCOMING for error in errors)


# --------------------------------------------------------------------------------------------
# WebSockets
# --------------------------------------------------------------------------------------------


def test_websocket_text_and_binary_echo(loop):
    """Text and binary messages over ``ws_connect`` come back unchanged and with their type."""

    async def main():
        async with aiohttp_server(make_app()) as url, aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{url}/ws") as ws:
                await ws.send_str("héllo")
                msg = await ws.receive()
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "héllo")
                await ws.send_bytes(b"\x00\xffbinary")
                msg = await ws.receive()
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"\x00\xffbinary")
                big = random_bytes(MiB, seed=3)
                await ws.send_bytes(big)
                msg = await ws.receive()
                assert msg.data == big

    loop.run_until_complete(main())


def test_websocket_many_messages_in_order(loop):
    """2,000 messages (text and binary alternating), sent while the replies are read, all come
    back in order."""
    count = 2000

    def message(i):
        return f"text message {i}" if i % 2 == 0 else f"binary {i}".encode() * (1 + i % 50)

    async def main():
        async with aiohttp_server(make_app()) as url, aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{url}/ws") as ws:

                async def send_all():
                    for i in range(count):
                        data = message(i)
                        if isinstance(data, str):
                            await ws.send_str(data)
                        else:
                            await ws.send_bytes(data)

                async def receive_all():
                    return [(await ws.receive()).data for _ in range(count)]

                _, received = await asyncio.gather(send_all(), receive_all())
        assert received == [message(i) for i in range(count)]

    loop.run_until_complete(main())


def test_websocket_close_from_the_client(loop):
    """A close from the client with code 4002 and a reason reaches the server handler."""

    async def main():
        app = make_app()
        async with aiohttp_server(app) as url, aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{url}/ws") as ws:
                await ws.send_str("one")
                assert (await ws.receive()).data == "one"
                await ws.close(code=4002, message=b"client says bye")
                assert ws.closed
        return app[CLOSES]

    closes = loop.run_until_complete(main())
    assert closes == [(aiohttp.WSMsgType.CLOSE, 4002, "client says bye", 4002)]


def test_websocket_close_from_the_server(loop):
    """A close from the server with code 4001 and a reason is seen by the client, after the
    message sent before it."""

    async def main():
        async with aiohttp_server(make_app()) as url, aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{url}/ws-closing") as ws:
                msg = await ws.receive()
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "about to close")
                msg = await ws.receive()
                assert (msg.type, msg.data, msg.extra) == (
                    aiohttp.WSMsgType.CLOSE,
                    4001,
                    "server says bye",
                )
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSED
                assert ws.close_code == 4001

    loop.run_until_complete(main())


def test_websocket_over_https(loop, server_context, client_context):
    """A WebSocket through an HTTPS server (wss://), the client verifying the test CA: text and
    a 1 MiB binary message come back."""
    big = random_bytes(MiB, seed=10)

    async def main():
        async with aiohttp_server(make_app(), ssl_context=server_context) as url:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{url}/ws", ssl=client_context) as ws:
                    await ws.send_str("over tls")
                    assert (await ws.receive()).data == "over tls"
                    await ws.send_bytes(big)
                    assert (await ws.receive()).data == big

    loop.run_until_complete(main())
