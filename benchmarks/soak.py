"""Soak: an HTTP server on one event loop under steady load with connection churn, watched
over time for throughput, memory (RSS) and file descriptors.

    python benchmarks/soak.py [--loop asyncio|uvloop|oxloop] [--server aiohttp|protocol]
                              [--duration S] [--interval S] [--warmup S]
                              [--connections N] [--requests-per-connection K] [--json PATH]

Three processes, all this file (``--role`` picks what a child does):

- the **server** (``--role server``) serves HTTP/1.1 on 127.0.0.1 on the loop under test,
  either as an ``aiohttp.web`` application (``--server aiohttp``) or as a minimal
  ``asyncio.Protocol`` server (``--server protocol``). Both answer ``GET /hello/TOKEN`` with
  ``hello TOKEN`` and ``POST /echo`` with the request body, keep connections alive, and close
  a connection after answering a request that says ``Connection: close``. It prints its port
  when it listens;
- the **client** (``--role client``, on uvloop when installed, else stock asyncio) keeps
  ``--connections`` connections busy. Each makes ``--requests-per-connection`` keep-alive
  requests one after another (every fourth a 64 KiB POST, the others small GETs), checks every
  response byte for byte, then closes and reconnects: that is the churn. Every other
  connection asks the server to close it (``Connection: close`` on its last request), the
  others are closed by the client;
- the **harness** (this command) starts both, and every ``--interval`` seconds asks each for
  its counters (a line on its stdin, answered by one JSON line on its stdout, from a thread
  that does not touch the loop) and reads the server's VmRSS (``/proc/PID/status``) and open
  file descriptors (``/proc/PID/fd``). Closing a child's stdin tells it to stop.

Before the load starts and after it ends (once the server has seen every connection close),
the harness also samples the idle server: its fd count must come back to where it was.

It prints one row per interval (time, requests/s, RSS, fds, connections open and opened so
far, errors) and a summary: total requests, errors, the RSS of the first sample after the
warm-up and of the last one with the slope of a least-squares line through them (MiB per
minute), fds first -> last and idle before -> after. The exit status is 1 if a request
failed, the server reported an error, an interval completed no request, the client's and the
server's request counts differ, or the idle server's fd count grew by more than ``FD_MARGIN``;
0 otherwise. The fd count under load moves with the connections being opened and closed at
the moment of the sample, so it is reported, not judged; so is RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

LOOPS = ("asyncio", "uvloop", "oxloop")
SERVERS = ("aiohttp", "protocol")
HOST = "127.0.0.1"
POST_SIZE = 64 * 1024  # bytes of each POST body, echoed back
POST_EVERY = 4  # every fourth request of a connection is a POST
PAYLOADS = 8  # distinct POST bodies the client cycles through
MAX_HEAD = 16 * 1024  # protocol server: longest request head accepted
REQUEST_TIMEOUT = 10.0  # client: seconds for one request, connecting included
ANSWER_TIMEOUT = 10.0  # harness: seconds for a child to answer or to stop
IDLE_TIMEOUT = 10.0  # harness: seconds for the server to see every connection closed
FD_MARGIN = 2  # fds the idle server may gain between before and after the load
MAX_ERRORS_KEPT = 10
MiB = 1024 * 1024


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """``new_event_loop`` of the named loop."""
    if name == "asyncio":
        return asyncio.new_event_loop
    return importlib.import_module(name).new_event_loop


class Counters:
    """What a child counted; read by the control thread while the loop updates it."""

    def __init__(self) -> None:
        self.requests = 0  # server: requests answered; client: responses checked
        self.connections = 0  # connections accepted (server) or opened (client)
        self.open = 0  # connections open now
        self.count_open: Callable[[], int] | None = None  # replaces ``open`` if set
        self.errors = 0
        self.error_samples: list[str] = []

    def error(self, where: str, error: object) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERRORS_KEPT:
            self.error_samples.append(f"{where}: {error!r}")

    def snapshot(self) -> dict:
        return {
            "requests": self.requests,
            "connections": self.connections,
            "open": self.count_open() if self.count_open else self.open,
            "errors": self.errors,
            "error_samples": list(self.error_samples),
        }


counters = Counters()


def serve_control(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """Answers every line on stdin with the counters as one JSON line, from a thread; at the
    end of stdin, calls ``stop`` in the loop."""

    def run() -> None:
        for _ in sys.stdin:
            print(json.dumps(counters.snapshot()), flush=True)
        loop.call_soon_threadsafe(stop)

    threading.Thread(target=run, name="soak-control", daemon=True).start()


def count_loop_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Counts whatever reaches the loop's exception handler as an error."""

    def handler(_loop, context: dict) -> None:
        counters.error("exception handler", context.get("exception") or context["message"])

    loop.set_exception_handler(handler)


# --- server --------------------------------------------------------------------------------


class CountingLogHandler(logging.Handler):
    """Counts the warnings and errors aiohttp logs (a failing handler, a broken connection)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        counters.error(record.name, record.getMessage())


def answer(method: str, target: str, body: bytes) -> tuple[int, bytes]:
    """The application, the same for both servers: (status, body) of a request."""
    if method == "GET" and target.startswith("/hello/"):
        return 200, b"hello " + target[len("/hello/") :].encode()
    if method == "POST" and target == "/echo":
        return 200, body
    return 404, b"not found"


class HttpProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 server: requests with a Content-Length body (or none), keep-alive,
    pipelining, ``Connection: close``. Anything else gets a 400 and the connection closed."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        counters.connections += 1
        counters.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        counters.open -= 1
        if exc is not None:
            counters.error("connection_lost", exc)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buffer += data
        while not self.closing and self.handle_one():
            pass

    def handle_one(self) -> bool:
        """Answers the first request in the buffer; False if it is not complete yet."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self.reject("request head too long")
            return False
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
        except ValueError as error:
            self.reject(error)
            return False
        start = end + 4
        if len(self.buffer) < start + length:
            return False
        body = bytes(self.buffer[start : start + length])
        del self.buffer[: start + length]
        status, content = answer(method, target, body)
        close = headers.get("connection", "").lower() == "close"
        self.respond(status, content, close)
        counters.requests += 1
        return True

    def respond(self, status: int, content: bytes, close: bool) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(content)}\r\n"
        if close:
            head += "Connection: close\r\n"
        self.transport.write(head.encode() + b"\r\n" + content)
        if close:
            self.closing = True
            self.transport.close()

    def reject(self, error: object) -> None:
        counters.error("bad request", error)
        self.respond(400, b"bad request", close=True)


async def serve_protocol(sock: socket.socket, stopped: asyncio.Event) -> None:
    server = await asyncio.get_running_loop().create_server(HttpProtocol, sock=sock)
    await stopped.wait()
    server.close()
    await server.wait_closed()


async def serve_aiohttp(sock: socket.socket, stopped: asyncio.Event) -> None:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        status, content = answer("GET", request.path, b"")
        counters.requests += 1
        return web.Response(status=status, body=content)

    async def echo(request: web.Request) -> web.Response:
        status, content = answer("POST", request.path, await request.read())
        counters.requests += 1
        return web.Response(status=status, body=content)

    app = web.Application()
    app.router.add_get("/hello/{token}", hello)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    http = runner.server
    assert http is not None

    def counting_protocol() -> asyncio.Protocol:
        counters.connections += 1
        return http()

    counters.count_open = lambda: len(http.connections)  # aiohttp's own count
    logging.getLogger("aiohttp").addHandler(CountingLogHandler())
    server = await asyncio.get_running_loop().create_server(counting_protocol, sock=sock)
    await stopped.wait()
    server.close()
    await runner.cleanup()


async def server_main(kind: str) -> None:
    loop = asyncio.get_running_loop()
    count_loop_errors(loop)
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(1024)
    stopped = asyncio.Event()
    print(sock.getsockname()[1], flush=True)
    serve_control(loop, stopped.set)
    await (serve_aiohttp if kind == "aiohttp" else serve_protocol)(sock, stopped)


# --- client --------------------------------------------------------------------------------


class BadResponse(Exception):
    """A response that is not the one expected."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Reads one HTTP/1.1 response with a Content-Length body: (status, body)."""
    status_line = await reader.readline()
    if not status_line:
        raise BadResponse("connection closed before a response")
    status = int(status_line.split(b" ", 2)[1])
    length = None
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise BadResponse(f"no Content-Length in the response to {status_line!r}")
    return status, await reader.readexactly(length)


async def request(reader, writer, target: str, body: bytes | None, close: bool) -> None:
    """Sends one request and checks its response: status 200, and the expected body."""
    method = "GET" if body is None else "POST"
    head = f"{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n"
    if close:
        head += "Connection: close\r\n"
    writer.write(head.encode() + b"\r\n" + (body or b""))
    await writer.drain()
    status, content = await read_response(reader)
    expected = (b"hello " + target[len("/hello/") :].encode()) if body is None else body
    if status != 200 or content != expected:
        raise BadResponse(f"{method} {target}: status {status}, {len(content)} bytes back")


CLIENT_ERRORS = (OSError, EOFError, asyncio.TimeoutError, BadResponse, ValueError, IndexError)


class LoadClient:
    """``connections`` workers, each connecting, making ``requests`` checked requests and
    reconnecting, until ``stopping`` is set."""

    def __init__(self, port: int, connections: int, requests: int) -> None:
        self.port = port
        self.connections = connections
        self.requests = requests
        self.payloads = [os.urandom(POST_SIZE) for _ in range(PAYLOADS)]
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(*(self.worker(index) for index in range(self.connections)))

    async def worker(self, index: int) -> None:
        """Runs one connection after another until told to stop."""
        number = 0
        while not self.stopping.is_set():
            number += 1
            try:
                await self.one_connection(f"{index}-{number}", server_closes=number % 2 == 0)
            except CLIENT_ERRORS as error:  # IncompleteReadError is an EOFError
                counters.error(f"client {index}", error)
                await asyncio.sleep(0.1)  # do not spin on a server that is gone

    async def one_connection(self, name: str, server_closes: bool) -> None:
        """Up to ``requests`` checked requests on one connection, then closed by the client,
        or by the server if ``server_closes`` (``Connection: close`` on the last request)."""
        async with asyncio.timeout(REQUEST_TIMEOUT):
            reader, writer = await asyncio.open_connection(HOST, self.port)
        counters.connections += 1
        counters.open += 1
        try:
            for seq in range(self.requests):
                if self.stopping.is_set():
                    break
                close = server_closes and seq == self.requests - 1
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    if seq % POST_EVERY == POST_EVERY - 1:
                        payload = self.payloads[seq % PAYLOADS]
                        await request(reader, writer, "/echo", payload, close)
                    else:
                        await request(reader, writer, f"/hello/{name}-{seq}", None, close)
                counters.requests += 1
                if close:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        if await reader.read(1) != b"":
                            raise BadResponse("data after a response with Connection: close")
        finally:
            counters.open -= 1
            writer.close()
            try:
                await writer.wait_closed()
            except (TimeoutError, ConnectionError):
                pass


async def client_main(port: int, connections: int, requests: int) -> None:
    client = LoadClient(port, connections, requests)
    loop = asyncio.get_running_loop()
    count_loop_errors(loop)
    serve_control(loop, client.stopping.set)
    await client.run()


def run_child(args: argparse.Namespace) -> None:
    """A child process: serve or load until stdin closes, then print the final counters."""
    if args.role == "server":
        main = server_main(args.server)
    else:
        main = client_main(args.port, args.connections, args.requests_per_connection)
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(main)
    print(json.dumps(counters.snapshot()), flush=True)


# --- harness -------------------------------------------------------------------------------


class Child:
    """A child process of this file, asked for its counters over stdin/stdout."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.process.pid

    def read_line(self) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], ANSWER_TIMEOUT)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            status = self.process.poll()
            raise RuntimeError(f"the {self.name} did not answer (exit status {status})")
        return line

    def ask(self) -> dict:
        self.process.stdin.write("?\n")
        self.process.stdin.flush()
        return json.loads(self.read_line())

    def stop(self) -> dict:
        """Closes stdin; returns the final counters the child prints before exiting."""
        self.process.stdin.close()
        final = json.loads(self.read_line())
        self.process.wait(ANSWER_TIMEOUT)
        return final

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def rss_mib(pid: int) -> float:
    """The process's resident set size (VmRSS), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / MiB
    raise RuntimeError(f"no VmRSS for process {pid}")


def fd_count(pid: int) -> int:
    """The number of file descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Slope of the least-squares line through (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def default_client_loop() -> str:
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return "asyncio"
    return "uvloop"


COLUMNS = ("t", "req_per_s", "rss_mib", "fds", "open", "connections", "errors")
HEADINGS = ("time s", "req/s", "RSS MiB", "fds", "open", "opened", "errors")
ROW = "{:>7} {:>9} {:>8} {:>5} {:>5} {:>10} {:>6}"


def print_row(sample: dict) -> None:
    cells = [f"{sample['t']:.1f}", f"{sample['req_per_s']:.0f}", f"{sample['rss_mib']:.1f}"]
    cells += [sample[column] for column in COLUMNS[3:]]
    print(ROW.format(*cells), flush=True)


def soak(args: argparse.Namespace) -> dict:
    """Runs the soak; returns the report (config, idle samples, samples, summary, problems)."""
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 5)
    client_loop = args.client_loop or default_client_loop()
    config = {"client_loop": client_loop, "warmup": warmup}
    for option in ("loop", "server", "duration", "interval", "connections"):
        config[option] = getattr(args, option)
    config["requests_per_connection"] = args.requests_per_connection
    report: dict = {"config": config, "samples": []}
    server = Child("server", ["--role", "server", "--loop", args.loop, "--server", args.server])
    client = None
    try:
        port = int(server.read_line())
        time.sleep(0.5)
        report["idle_before"] = {"fds": fd_count(server.pid), "rss_mib": rss_mib(server.pid)}
        print(
            f"soak: {args.server} server on {args.loop} (pid {server.pid}, port {port}); "
            f"{args.connections} connections x {args.requests_per_connection} requests "
            f"from a {client_loop} client; {args.duration:g} s, warm-up {warmup:g} s; "
            f"idle: {report['idle_before']['fds']} fds, {report['idle_before']['rss_mib']:.1f} MiB"
        )
        client = Child(
            "client",
            [
                "--role",
                "client",
                "--loop",
                client_loop,
                "--port",
                str(port),
                "--connections",
                str(args.connections),
                "--requests-per-connection",
                str(args.requests_per_connection),
            ],
        )
        print(ROW.format(*HEADINGS), flush=True)
        start = previous_time = time.monotonic()
        previous_requests = 0
        for tick in range(1, int(args.duration / args.interval + 1e-9) + 1):
            time.sleep(max(0.0, start + tick * args.interval - time.monotonic()))
            now = time.monotonic()
            counts, client_counts = server.ask(), client.ask()
            done = counts["requests"] - previous_requests
            sample = {
                "t": round(now - start, 3),
                "requests": done,
                "req_per_s": done / (now - previous_time),
                "rss_mib": rss_mib(server.pid),
                "fds": fd_count(server.pid),
                "open": counts["open"],
                "connections": counts["connections"],
                "errors": counts["errors"] + client_counts["errors"],
            }
            report["samples"].append(sample)
            print_row(sample)
            previous_time, previous_requests = now, counts["requests"]
        report["client"] = client.stop()
        deadline = time.monotonic() + IDLE_TIMEOUT
        while server.ask()["open"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)  # the last connection_lost runs just before its socket is closed
        report["idle_after"] = {"fds": fd_count(server.pid), "rss_mib": rss_mib(server.pid)}
        report["server"] = server.stop()
    finally:
        for child in (client, server):
            if child is not None:
                child.kill()
    report["summary"], report["problems"] = summarize(report, warmup)
    return report


def summarize(report: dict, warmup: float) -> tuple[dict, list[str]]:
    """The summary numbers, and the problems that make the soak fail."""
    samples = report["samples"]
    steady = [s for s in samples if s["t"] >= warmup] or samples[-1:]
    client, server = report["client"], report["server"]
    summary = {
        "requests": server["requests"],
        "client_requests": client["requests"],
        "connections": server["connections"],
        "errors": client["errors"] + server["errors"],
        "rss_first_mib": steady[0]["rss_mib"],
        "rss_last_mib": steady[-1]["rss_mib"],
        "rss_growth_mib": steady[-1]["rss_mib"] - steady[0]["rss_mib"],
        "rss_slope_mib_per_min": slope_per_minute([(s["t"], s["rss_mib"]) for s in steady]),
        "fds_first": steady[0]["fds"],
        "fds_last": steady[-1]["fds"],
        "idle_fds_before": report["idle_before"]["fds"],
        "idle_fds_after": report["idle_after"]["fds"],
    }
    problems = []
    if summary["errors"]:
        first = "; ".join(client["error_samples"] + server["error_samples"])
        problems.append(f"{summary['errors']} error(s): {first}")
    stalled = [s["t"] for s in samples if s["requests"] == 0]
    if stalled:
        problems.append(f"no request completed in the interval(s) ending at {stalled} s")
    if client["requests"] != server["requests"]:
        problems.append(
            f"the client checked {client['requests']} responses, "
            f"the server answered {server['requests']} requests"
        )
    before, after = summary["idle_fds_before"], summary["idle_fds_after"]
    if after > before + FD_MARGIN:
        problems.append(f"idle fds grew from {before} to {after}")
    return summary, problems


def print_summary(report: dict) -> None:
    s = report["summary"]
    print(
        f"\nrequests: {s['requests']} ({s['connections']} connections), errors: {s['errors']}\n"
        f"RSS after warm-up: {s['rss_first_mib']:.1f} -> {s['rss_last_mib']:.1f} MiB "
        f"({s['rss_growth_mib']:+.1f} MiB, slope {s['rss_slope_mib_per_min']:+.2f} MiB/min)\n"
        f"fds under load: {s['fds_first']} -> {s['fds_last']}; "
        f"idle: {s['idle_fds_before']} -> {s['idle_fds_after']}"
    )
    for problem in report["problems"]:
        print(f"FAIL: {problem}")
    print("FAILED" if report["problems"] else "OK", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--loop", choices=LOOPS, default="oxloop", help="the server's loop (default oxloop)")
    add(
        "--server",
        choices=SERVERS,
        default="aiohttp",
        help="an aiohttp.web app or a plain asyncio.Protocol (default aiohttp)",
    )
    add("--duration", type=float, default=600, help="seconds of load (default 600)")
    add("--interval", type=float, default=5, help="seconds between samples (default 5)")
    add(
        "--warmup",
        type=float,
        help="seconds of load left out of the RSS and fd summary "
        "(default: a fifth of --duration, at most 60)",
    )
    add("--connections", type=int, default=64, help="concurrent connections (default 64)")
    add(
        "--requests-per-connection",
        type=int,
        default=20,
        help="keep-alive requests before a connection is closed and reopened (default 20)",
    )
    add(
        "--client-loop",
        choices=("asyncio", "uvloop"),
        help="the load generator's loop (default uvloop if installed)",
    )
    add("--json", metavar="PATH", help="also write the samples and summary as JSON")
    add(
        "--role", choices=("harness", "server", "client"), default="harness", help=argparse.SUPPRESS
    )
    add("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.duration < args.interval:
        parser.error("need 0 < --interval <= --duration")
    return args


def main() -> int:
    args = parse_args()
    if args.role != "harness":
        run_child(args)
        return 0
    report = soak(args)
    print_summary(report)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
