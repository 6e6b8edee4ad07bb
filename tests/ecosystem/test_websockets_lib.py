"""The ``websockets`` library used for real: servers from ``websockets.asyncio.server.serve``
and clients from ``websockets.asyncio.client.connect`` (its asyncio implementation), both
running in the loop under test, over 127.0.0.1 (a free port).

Covers echo, thousands of messages in order, 1 MiB messages each way, fragmented messages,
pings, close codes and reasons seen on both sides, an aborted connection, 50 clients at once,
broadcasting to several clients, Unix sockets, a plain HTTP answer from ``process_request``
(fetched with aiohttp) and TLS (wss) with a certificate generated at test time. Every test
runs on stock asyncio and on oxloop (see conftest.py);
servers and connections are closed inside the test, so the leak checks of the fixtures apply.
"""

import asyncio
import contextlib
import http
import os
import ssl

import aiohttp
import pytest
from websockets.asyncio.client import connect, unix_connect
from websockets.asyncio.server import broadcast, serve, unix_serve
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidStatus,
)

from helpers.net import record_errors
from web_helpers import MiB, random_bytes

# Fixtures from the helpers (pytest finds fixtures among a module's names; short_dir is one).

# What a loop in debug mode reports when an incoming connection's TLS handshake fails.
FAILED_INCOMING = "Error on transport creation for incoming connection"


class EchoServer:
    """A handler sending every message back; ``closed`` gets the ``ConnectionClosed`` that
    ended each connection (None if the handler returned first)."""

    def __init__(self):
        self.closed = []

    async def __call__(self, ws):
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed as exc:  # a close code other than 1000 or 1001
            self.closed.append(exc)
        else:
            self.closed.append(ws.close_exc)

    async def wait_for_a_closed_connection(self):
        """Waits (up to a second) until a handler has returned: the closing handshake is
        over on the server's side."""
        for _ in range(100):
            if self.closed:
                return
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def serving(handler, **kwargs):
    """Run a websockets server with ``handler`` on 127.0.0.1 (port 0); yields its port.
    The server is closed (and its connections with it) at exit."""
    async with serve(handler, "127.0.0.1", 0, **kwargs) as server:
        yield server.sockets[0].getsockname()[1]


def client(port, scheme="ws", host="127.0.0.1", **kwargs):
    """``connect()`` to the server of the test (no proxy from the environment)."""
    return connect(f"{scheme}://{host}:{port}/", proxy=None, **kwargs)


def test_echo(loop):
    """A text and a binary message come back unchanged, with their type."""

    async def main():
        async with serving(EchoServer()) as port, client(port) as ws:
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\x01\xff")
            assert await ws.recv() == b"\x00\x01\xff"
            assert ws.remote_address[:2] == ("127.0.0.1", port)

    loop.run_until_complete(main())


def test_many_messages_in_order(loop):
    """2,000 text and 2,000 binary messages, sent while the replies are read, all come back
    in order."""
    count = 4000

    def message(i):
        return f"message {i}" if i % 2 == 0 else f"binary {i}".encode() * (1 + i % 40)

    async def main():
        async with serving(EchoServer()) as port, client(port) as ws:

            async def send_all():
                for i in range(count):
                    await ws.send(message(i))

            async def receive_all():
                return [await ws.recv() for _ in range(count)]

            _, received = await asyncio.gather(send_all(), receive_all())
        assert received == [message(i) for i in range(count)]

    loop.run_until_complete(main())


@pytest.mark.parametrize("compression", ["deflate", None])
def test_one_mib_message_each_way(loop, compression):
    """A 1 MiB binary message from the client comes back from the server unchanged, then a
    1 MiB text message: both directions carry whole 1 MiB messages."""
    binary = random_bytes(MiB, seed=4)
    text = random_bytes(MiB // 2, seed=5).hex()

    async def main():
        limits = {"max_size": 2 * MiB, "compression": compression}
        async with serving(EchoServer(), **limits) as port, client(port, **limits) as ws:
            await ws.send(binary)
            assert await ws.recv() == binary
            await ws.send(text)
            assert await ws.recv() == text

    loop.run_until_complete(main())


def test_ping_pong(loop):
    """Pings from either side are answered: the client's ``ping()`` and the server's both
    resolve with a latency, also while messages are in flight."""

    async def main():
        server_pongs = []

        async def pinging_echo(ws):
            pong = await ws.ping(b"from server")
            server_pongs.append(await pong)
            async for message in ws:
                await ws.send(message)

        async with serving(pinging_echo) as port, client(port) as ws:
            await ws.send("before")
            latency = await (await ws.ping(b"from client"))
            assert latency >= 0.0
            assert await ws.recv() == "before"
            pongs = [await ws.ping(f"ping {i}") for i in range(10)]
            latencies = await asyncio.gather(*pongs)
            assert all(value >= 0.0 for value in latencies)
        assert len(server_pongs) == 1 and server_pongs[0] >= 0.0

    loop.run_until_complete(main())


def test_close_from_the_client_with_code_and_reason(loop):
    """The client closes with 4000 and a reason: the server sees that code and reason (its
    ``recv`` raises ``ConnectionClosedError``), and the client sees it echoed back."""

    async def main():
        echo = EchoServer()
        async with serving(echo) as port:
            async with client(port) as ws:
                await ws.send("one")
                assert await ws.recv() == "one"
                await ws.close(code=4000, reason="client done")
                assert (ws.close_code, ws.close_reason) == (4000, "client done")
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
                assert info.value.sent.code == 4000
            # the server's handler has returned once the closing handshake is over
            await echo.wait_for_a_closed_connection()
        return echo.closed

    closed = loop.run_until_complete(main())
    assert len(closed) == 1
    assert isinstance(closed[0], ConnectionClosedError)
    assert (closed[0].rcvd.code, closed[0].rcvd.reason) == (4000, "client done")


def test_close_from_the_server_with_code_and_reason(loop):
    """The server closes with 4001 and a reason after a message: the client receives the
    message, then ``ConnectionClosedError`` carrying that code and reason."""

    async def main():
        server_saw = []

        async def closing(ws):
            await ws.send("last words")
            await ws.close(code=4001, reason="server done")
            server_saw.append((ws.close_code, ws.close_reason))

        async with serving(closing) as port, client(port) as ws:
            assert await ws.recv() == "last words"
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "server done")
            assert (ws.close_code, ws.close_reason) == (4001, "server done")
            await ws.wait_closed()
        return server_saw

    assert loop.run_until_complete(main()) == [(4001, "server done")]


def test_normal_close_is_ok_on_both_sides(loop):
    """A close with 1000 ends the server's ``async for`` quietly and the client's ``recv``
    with ``ConnectionClosedOK``."""

    async def main():
        echo = EchoServer()
        async with serving(echo) as port:
            async with client(port) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                await ws.close()
                with pytest.raises(ConnectionClosedOK):
                    await ws.recv()
            await echo.wait_for_a_closed_connection()
        return echo.closed

    closed = loop.run_until_complete(main())
    assert len(closed) == 1
    assert isinstance(closed[0], ConnectionClosedOK)
    assert closed[0].rcvd.code == 1000


def test_abrupt_disconnect_is_an_error_without_close_frame(loop):
    """A client whose connection is aborted (no closing handshake) ends the server's handler
    with ``ConnectionClosedError`` with no close frame either way (code 1006)."""

    async def main():
        echo = EchoServer()
        async with serving(echo) as port:
            async with client(port) as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                ws.transport.abort()
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
                assert info.value.rcvd is None
            await echo.wait_for_a_closed_connection()
        return echo.closed

    closed = loop.run_until_complete(main())
    assert len(closed) == 1
    assert isinstance(closed[0], ConnectionClosedError)
    assert (closed[0].rcvd, closed[0].sent) == (None, None)


def test_broadcast_to_several_clients(loop):
    """The server broadcasts 300 messages to 5 connected clients: each receives all of them,
    in order; the server's shutdown then closes every client with 1001."""
    clients, count = 5, 300

    def message(i):
        return f"news {i}" if i % 3 else f"news {i}".encode()

    async def main():
        connected = set()
        all_connected = asyncio.Event()

        async def register(ws):
            connected.add(ws)
            if len(connected) == clients:
                all_connected.set()
            await ws.wait_closed()

        sockets = []
        try:
            async with serving(register) as port:
                for _ in range(clients):
                    sockets.append(await client(port))
                await asyncio.wait_for(all_connected.wait(), 10)
                for i in range(count):
                    broadcast(connected, message(i))

                async def read_all(ws):
                    return [await ws.recv() for _ in range(count)]

                results = await asyncio.gather(*(read_all(ws) for ws in sockets))
                assert results == [[message(i) for i in range(count)]] * clients
            for ws in sockets:  # closed by the server's shutdown
                await asyncio.wait_for(ws.wait_closed(), 10)
            return [ws.close_code for ws in sockets]
        finally:
            for ws in sockets:
                await ws.close()

    assert loop.run_until_complete(main()) == [1001] * clients


def test_wss_with_a_test_certificate(loop, server_context, client_context):
    """wss:// to a server presenting a certificate of the test CA, the client verifying it
    against that CA and the host name: messages both ways, including 256 KiB."""
    big = random_bytes(256 * 1024, seed=6)

    async def main():
        async with serving(EchoServer(), ssl=server_context) as port:
            async with client(port, scheme="wss", host="localhost", ssl=client_context) as ws:
                ssl_object = ws.transport.get_extra_info("ssl_object")
                assert ssl_object is not None
                assert ssl_object.getpeercert()["subjectAltName"][0] == ("DNS", "localhost")
                await ws.send("secure hello")
                assert await ws.recv() == "secure hello"
                await ws.send(big)
                assert await ws.recv() == big

    loop.run_until_complete(main())


def test_wss_client_rejects_an_untrusted_certificate(loop, server_context):
    """A client trusting only the system CAs refuses the test certificate."""
    errors = record_errors(loop)

    async def main():
        async with serving(EchoServer(), ssl=server_context) as port:
            with pytest.raises(ssl.SSLCertVerificationError):
                async with client(port, scheme="wss", host="localhost"):
                    pass

    loop.run_until_complete(main())
    # in debug mode, the loop reports the server side's failed handshake
    assert all(error["message"] == FAILED_INCOMING for error in errors)


def test_fifty_clients_at_once(loop):
    """50 clients connected at the same time each exchange 20 messages with the server; every
    one gets exactly its own replies."""
    clients, rounds = 50, 20

    async def main():
        async def talk(port, who):
            async with client(port) as ws:
                replies = []
                for i in range(rounds):
                    await ws.send(f"{who}:{i}")
                    replies.append(await ws.recv())
                return replies

        async with serving(EchoServer()) as port:
            results = await asyncio.gather(*(talk(port, who) for who in range(clients)))
        assert results == [[f"{who}:{i}" for i in range(rounds)] for who in range(clients)]

    loop.run_until_complete(main())


def test_fragmented_message(loop):
    """A message sent in fragments (from an async iterator) is seen fragment by fragment by
    the server's ``recv_streaming`` and whole by ``recv``."""
    fragments = [random_bytes(size, seed=size) for size in (1, 5000, 200_000, 3)]

    async def main():
        seen = []

        async def streaming_echo(ws):
            async for fragment in ws.recv_streaming():
                seen.append(fragment)
            await ws.send(b"".join(seen))

        async def produce():
            for fragment in fragments:
                yield fragment
                await asyncio.sleep(0)

        async with serving(streaming_echo) as port, client(port) as ws:
            await ws.send(produce())
            assert await ws.recv() == b"".join(fragments)
        return seen

    # the sender only knows the message is over when the iterator ends: an empty final frame
    assert loop.run_until_complete(main()) == [*fragments, b""]


def test_over_a_unix_socket(loop, short_dir):
    """``unix_serve`` and ``unix_connect``: echo of a text and a 512 KiB binary message."""
    path = os.path.join(short_dir, "ws.sock")
    big = random_bytes(512 * 1024, seed=11)

    async def main():
        async with unix_serve(EchoServer(), path), unix_connect(path) as ws:
            await ws.send("over unix")
            assert await ws.recv() == "over unix"
            await ws.send(big)
            assert await ws.recv() == big

    loop.run_until_complete(main())


def test_plain_http_answer_from_process_request(loop):
    """A ``process_request`` hook answering "/health" with plain HTTP: aiohttp's client gets
    the body, a WebSocket client gets ``InvalidStatus``; other paths still upgrade."""

    def health_check(connection, request):
        if request.path == "/health":
            return connection.respond(http.HTTPStatus.OK, "healthy\n")
        return None

    async def main():
        async with serving(EchoServer(), process_request=health_check) as port:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                    assert resp.status == 200
                    assert await resp.text() == "healthy\n"
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"ws://127.0.0.1:{port}/health", proxy=None):
                    pass
            assert info.value.response.status_code == 200
            async with client(port) as ws:
                await ws.send("still upgrading")
                assert await ws.recv() == "still upgrading"

    loop.run_until_complete(main())
