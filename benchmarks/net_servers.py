"""The servers of the network benchmarks: one process serves one role on one event loop.

    python benchmarks/net_servers.py --loop asyncio|uvloop|rloop|oxloop
                                     --kind protocol|streams|sock
                                     [--role echo|sink|idle]
                                     [--transport tcp|tls|udp] [--cert PEMFILE]
                                     [--addr HOST:PORT | --unix PATH]

Roles, each written three ways (``--kind``):

- ``echo``: sends every byte it receives straight back;
- ``sink``: reads an 8-byte big-endian length, then that many bytes, and answers with the
  8-byte big-endian count it received (what ``loadgen bulk`` sends and expects);
- ``idle``: answers a connection's first byte with one byte, then keeps the connection open,
  reading and ignoring whatever comes, until the client closes it (what ``loadgen idle`` does).

Kinds:

- ``protocol``: ``loop.create_server`` with an ``asyncio.Protocol``; the loop decides how
  much it reads at a time;
- ``streams``: ``asyncio.start_server``, one handler task per connection,
  ``reader.read(65536)`` / ``writer.write`` / ``await writer.drain()``;
- ``sock``: a plain non-blocking listening socket, ``loop.sock_accept`` and one task per
  connection on ``loop.sock_recv(sock, 65536)`` / ``loop.sock_sendall``.

Transports (``--transport``):

- ``tcp`` (default): plain stream sockets, TCP or, with ``--unix``, a Unix socket;
- ``tls``: the same servers (``protocol`` and ``streams`` kinds) with ``ssl=``: a server
  SSLContext that speaks TLS 1.3 only, with the certificate and private key found in
  ``--cert`` (one PEM file holding both);
- ``udp``: ``loop.create_datagram_endpoint`` with an ``asyncio.DatagramProtocol`` that sends
  every datagram straight back to its sender with ``transport.sendto(data, addr)``
  (``--kind protocol --role echo`` only).

When it listens, the server prints its port (or, with ``--unix``, its path) as the first line
on stdout. It serves until its standard input is closed (Ctrl-D by hand), then prints one line
of JSON with what it counted (connections, bytes, answered, errors) and exits at once, without
tearing its connections down. Errors (a connection lost with an exception, an exception in a
handler, a UDP send error passed to ``error_received``, anything passed to the loop's exception
handler) are counted and reported there, not raised: the harness decides what they mean. A UDP
server counts no connections; its ``bytes`` are the bytes of the datagrams it echoed.

The soft RLIMIT_NOFILE is raised to the hard limit at start.
"""

import argparse
import asyncio
import importlib
import json
import os
import resource
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine
from typing import Any

LOOPS = ("asyncio", "uvloop", "rloop", "oxloop")
KINDS = ("protocol", "streams", "sock")
ROLES = ("echo", "sink", "idle")
TRANSPORTS = ("tcp", "tls", "udp")
READ_SIZE = 65536  # bytes asked for per read by the streams and sock servers
BACKLOG = 4096  # listen backlog (the kernel caps it at net.core.somaxconn)
HEADER_SIZE = 8  # sink: big-endian length prefix, and the size of the answer
MAX_ERRORS_KEPT = 10


class Stats:
    """What the server did, printed as JSON when it stops."""

    def __init__(self) -> None:
        self.connections = 0  # connections accepted
        self.bytes = 0  # echo: bytes echoed; sink: payload bytes received
        self.answered = 0  # sink: byte counts sent; idle: one-byte answers sent
        self.error_count = 0
        self.errors: list[str] = []

    def error(self, where: str, error: object) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(f"{where}: {error!r}")

    def as_json(self) -> str:
        return json.dumps(
            {
                "connections": self.connections,
                "bytes": self.bytes,
                "answered": self.answered,
                "error_count": self.error_count,
                "errors": self.errors,
            }
        )


stats = Stats()


# --- protocol ------------------------------------------------------------------------------


class _CountingProtocol(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            stats.error("connection_lost", exc)


class EchoProtocol(_CountingProtocol):
    def data_received(self, data: bytes) -> None:
        stats.bytes += len(data)
        self.transport.write(data)


class SinkProtocol(_CountingProtocol):
    def __init__(self) -> None:
        self.header = b""
        self.expected: int | None = None
        self.received = 0

    def data_received(self, data: bytes) -> None:
        if self.expected is None:
            self.header += data
            if len(self.header) < HEADER_SIZE:
                return
            self.expected = int.from_bytes(self.header[:HEADER_SIZE], "big")
            received = len(self.header) - HEADER_SIZE
            self.header = b""
        else:
            received = len(data)
        was_short = self.received < self.expected
        self.received += received
        stats.bytes += received
        if was_short and self.received >= self.expected:
            self.transport.write(self.received.to_bytes(HEADER_SIZE, "big"))
            stats.answered += 1


class IdleProtocol(_CountingProtocol):
    answered = False

    def data_received(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.transport.write(b"!")
            stats.answered += 1


PROTOCOLS: dict[str, type[asyncio.Protocol]] = {
    "echo": EchoProtocol,
    "sink": SinkProtocol,
    "idle": IdleProtocol,
}


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    """UDP echo: every datagram goes straight back to the address it came from."""

    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        stats.bytes += len(data)
        self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        stats.error("error_received", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            stats.error("connection_lost", exc)


# --- streams -------------------------------------------------------------------------------


async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(READ_SIZE):
        stats.bytes += len(data)
        writer.write(data)
        await writer.drain()


async def sink_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    expected = int.from_bytes(await reader.readexactly(HEADER_SIZE), "big")
    received = 0
    while received < expected:
        data = await reader.read(READ_SIZE)
        if not data:
            raise ConnectionError(f"EOF after {received} of {expected} bytes")
        received += len(data)
        stats.bytes += len(data)
    writer.write(received.to_bytes(HEADER_SIZE, "big"))
    await writer.drain()
    stats.answered += 1
    while await reader.read(READ_SIZE):
        pass


async def idle_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if not await reader.read(1):
        return
    writer.write(b"!")
    await writer.drain()
    stats.answered += 1
    while await reader.read(READ_SIZE):
        pass


StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]
STREAM_HANDLERS: dict[str, StreamHandler] = {
    "echo": echo_stream,
    "sink": sink_stream,
    "idle": idle_stream,
}


def counted_stream_handler(handler: StreamHandler) -> StreamHandler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats.connections += 1
        try:
            await handler(reader, writer)
        except Exception as error:
            stats.error(handler.__name__, error)
        finally:
            writer.close()

    return handle


# --- sock_* --------------------------------------------------------------------------------


async def echo_sock(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> None:
    while data := await loop.sock_recv(connection, READ_SIZE):
        stats.bytes += len(data)
        await loop.sock_sendall(connection, data)


async def _receive_exactly(
    loop: asyncio.AbstractEventLoop, connection: socket.socket, n: int
) -> bytes:
    data = b""
    while len(data) < n:
        more = await loop.sock_recv(connection, n - len(data))
        if not more:
            raise ConnectionError(f"EOF after {len(data)} of {n} bytes")
        data += more
    return data


async def sink_sock(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> None:
    expected = int.from_bytes(await _receive_exactly(loop, connection, HEADER_SIZE), "big")
    buffer = bytearray(READ_SIZE)
    received = 0
    while received < expected:
        n = await loop.sock_recv_into(connection, buffer)
        if not n:
            raise ConnectionError(f"EOF after {received} of {expected} bytes")
        received += n
        stats.bytes += n
    await loop.sock_sendall(connection, received.to_bytes(HEADER_SIZE, "big"))
    stats.answered += 1
    while await loop.sock_recv_into(connection, buffer):
        pass


async def idle_sock(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> None:
    if not await loop.sock_recv(connection, 1):
        return
    await loop.sock_sendall(connection, b"!")
    stats.answered += 1
    while await loop.sock_recv(connection, READ_SIZE):
        pass


SockHandler = Callable[[asyncio.AbstractEventLoop, socket.socket], Coroutine[Any, Any, None]]
SOCK_HANDLERS: dict[str, SockHandler] = {"echo": echo_sock, "sink": sink_sock, "idle": idle_sock}


async def serve_sock(
    loop: asyncio.AbstractEventLoop, listener: socket.socket, handler: SockHandler
) -> None:
    """Accepts forever, one task per connection (kept referenced until it finishes)."""
    tasks: set[asyncio.Task[None]] = set()

    async def handle(connection: socket.socket) -> None:
        try:
            await handler(loop, connection)
        except Exception as error:
            stats.error(handler.__name__, error)
        finally:
            connection.close()

    while True:
        connection, _ = await loop.sock_accept(listener)
        connection.setblocking(False)
        if connection.family != socket.AF_UNIX:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stats.connections += 1
        task = loop.create_task(handle(connection))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def listening_socket(host: str | None, port: int, unix_path: str | None) -> socket.socket:
    if unix_path is not None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(unix_path)
    else:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    listener.listen(BACKLOG)
    listener.setblocking(False)
    return listener


# --- Running -------------------------------------------------------------------------------


def server_tls_context(cert_path: str) -> ssl.SSLContext:
    """A TLS 1.3-only server context with the certificate and key in ``cert_path`` (PEM)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert_path)
    return context


async def start(
    loop: asyncio.AbstractEventLoop,
    kind: str,
    role: str,
    transport: str,
    cert: str | None,
    host: str,
    port: int,
    unix: str | None,
) -> tuple[str, asyncio.Future[None]]:
    """Starts listening; returns what to print (port or path) and a future to keep alive."""
    keep_alive: asyncio.Future[None] = loop.create_future()
    tls = server_tls_context(cert) if transport == "tls" and cert is not None else None
    if transport == "udp":
        endpoint, _ = await loop.create_datagram_endpoint(
            EchoDatagramProtocol, local_addr=(host, port)
        )
        listener_name = endpoint.get_extra_info("sockname")
    elif kind == "protocol":
        factory = PROTOCOLS[role]
        if unix is not None:
            server = await loop.create_unix_server(factory, unix, backlog=BACKLOG, ssl=tls)
        else:
            server = await loop.create_server(factory, host, port, backlog=BACKLOG, ssl=tls)
        listener_name = server.sockets[0].getsockname()
    elif kind == "streams":
        handle = counted_stream_handler(STREAM_HANDLERS[role])
        if unix is not None:
            server = await asyncio.start_unix_server(handle, unix, backlog=BACKLOG, ssl=tls)
        else:
            server = await asyncio.start_server(handle, host, port, backlog=BACKLOG, ssl=tls)
        listener_name = server.sockets[0].getsockname()
    else:
        listener = listening_socket(host, port, unix)
        listener_name = listener.getsockname()
        accepting = loop.create_task(serve_sock(loop, listener, SOCK_HANDLERS[role]))
        accepting.add_done_callback(_report_accept_failure)
        keep_alive = accepting  # stops the server if accepting ever fails
    shown = listener_name if unix is not None else str(listener_name[1])
    return shown, keep_alive


def _report_accept_failure(accepting: asyncio.Task[None]) -> None:
    if not accepting.cancelled() and accepting.exception() is not None:
        stats.error("sock_accept", accepting.exception())


def _resolve(future: asyncio.Future[None], *_: object) -> None:
    if not future.done():
        future.set_result(None)


def watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Future[None]) -> None:
    """Resolves ``stop`` once standard input is closed, watching it on the loop itself.

    Not from a thread: while a process has a second live thread, the kernel waits for an RCU
    grace period each time the process's file descriptor table grows (Linux's
    ``expand_fdtable``: a few milliseconds each, several times over 10,000 connections), and
    the loop being measured would pay that for the harness. Standard input is made
    non-blocking here and blocking again by ``restore_stdin``.
    """
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except (OSError, ValueError):
            data = b""
        if not data:
            loop.remove_reader(fd)
            _resolve(stop)

    loop.add_reader(fd, readable)


def restore_stdin() -> None:
    """Makes standard input blocking again (a terminal is shared with the shell)."""
    try:
        os.set_blocking(sys.stdin.fileno(), True)
    except (OSError, ValueError):
        pass


def new_event_loop(name: str) -> asyncio.AbstractEventLoop:
    return importlib.import_module(name).new_event_loop()


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A benchmark server on one event loop.")
    parser.add_argument("--loop", choices=LOOPS, required=True)
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--role", choices=ROLES, default="echo")
    parser.add_argument("--transport", choices=TRANSPORTS, default="tcp")
    parser.add_argument(
        "--cert", metavar="PEMFILE", help="tls: the server's certificate and private key"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--addr", default="127.0.0.1:0", metavar="HOST:PORT")
    where.add_argument("--unix", metavar="PATH")
    arguments = parser.parse_args()
    if arguments.transport == "tls" and (arguments.cert is None or arguments.kind == "sock"):
        parser.error("--transport tls needs --cert and --kind protocol or streams")
    if arguments.transport == "udp" and (
        arguments.kind != "protocol" or arguments.role != "echo" or arguments.unix is not None
    ):
        parser.error("--transport udp serves --kind protocol --role echo on --addr only")
    host, _, port = arguments.addr.rpartition(":")
    arguments.host, arguments.port = host.strip("[]") or "127.0.0.1", int(port)
    return arguments


def main() -> None:
    arguments = parse_arguments()
    raise_open_files_limit()
    if arguments.unix is not None and os.path.exists(arguments.unix):
        os.unlink(arguments.unix)
    try:
        loop = new_event_loop(arguments.loop)
        loop.set_exception_handler(
            lambda _, context: stats.error(
                "exception handler", context.get("exception") or context["message"]
            )
        )
        asyncio.set_event_loop(loop)
        shown, keep_alive = loop.run_until_complete(
            start(
                loop,
                arguments.kind,
                arguments.role,
                arguments.transport,
                arguments.cert,
                arguments.host,
                arguments.port,
                arguments.unix,
            )
        )
    except Exception as error:
        print(
            f"net_servers: cannot serve {arguments.role} ({arguments.kind}, "
            f"{arguments.transport}) on {arguments.loop}: {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        sys.exit(3)
    print(shown, flush=True)

    stop = loop.create_future()
    watch_stdin(loop, stop)
    keep_alive.add_done_callback(lambda _: _resolve(stop))
    loop.run_until_complete(stop)
    print(stats.as_json(), flush=True)
    restore_stdin()
    # Exit without tearing down thousands of connections and tasks: that is not measured,
    # and a loop under development may not survive it.
    os._exit(0)


if __name__ == "__main__":
    main()
