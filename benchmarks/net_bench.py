"""Runs network workloads against servers on several asyncio event loops, interleaved.

    python benchmarks/net_bench.py [--quick] [--rounds R] [--only NAME,...]
                                   [--loops NAME,...] [--placement auto|shared|split|none]
                                   [--keep-awake | --no-keep-awake] [--json PATH]
                                   [--loadgen PATH]

The servers are ``net_servers.py`` processes, one per loop; the load comes from ``loadgen`` (a
small Rust program in ``loadgen/``, built here with cargo when needed). Workloads, by name:

- ``echo_{protocol,streams,sock}_{1k,100k}_c{1,16}``: TCP echo round trips (asyncio Protocol,
  streams and sock_* servers; 1 KiB and 100 KiB messages; 1 and 16 connections);
- ``bulk_{protocol,streams,sock}``: one-way bulk throughput over one TCP connection;
- ``idle_{protocol,streams,sock}``: 10,000 idle connections (time to accept and answer them
  all, and the server's memory per connection);
- ``tls_echo_1k_c{1,16}``, ``tls_bulk``: echo round trips and bulk throughput over TLS 1.3
  (an asyncio Protocol server created with ``ssl=``, a certificate made with the ``openssl``
  command at start; loadgen is the TLS client, through OpenSSL);
- ``udp_echo_512_c{1,16}``: 512-byte datagrams echoed by a ``create_datagram_endpoint``
  server, 1 or 16 client sockets each waiting for its echo (re-sent after 50 ms if lost).

``--only`` takes names, shell patterns (``echo_*_c16``), the groups ``echo`` (every round-trip
workload, UDP and TLS included), ``bulk`` and ``idle``, or the transports ``tcp``, ``tls`` and
``udp``. Subprocess workloads are in ``process_bench.py``.

Placement (``--placement auto``, the default): echo workloads pin the server and loadgen to
the same CPU, because on a small virtual machine waking a process on another virtual CPU costs
tens of microseconds to milliseconds, more than the round trips being measured; bulk and idle
workloads pin the server to one CPU and loadgen to another, so that loadgen's own kernel work
(sending, connecting) is not counted against the server, and keep both CPUs from idling with
a SCHED_IDLE busy loop each. ``--placement split`` or ``shared`` uses one of them throughout.

Echo and bulk workloads start one server per loop, warm it up with one unrecorded run, and
reuse it for every round; idle workloads start a fresh server per measurement, since they
measure its memory. Every round measures every loop once, in an order rotated from round to
round, so that drift (other processes, CPU frequency) hits all loops alike. A loop whose
server fails to start, or fails a run, or whose server's own counts disagree with the load
generator's, is dropped from that workload only, with a note under the tables.

The Markdown report goes to stdout, progress to stderr. Nothing here judges the numbers.
"""

import argparse
import fnmatch
import json
import math
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loop_bench import (
    BASELINE_LOOPS,
    CANDIDATE_LOOPS,
    TARGET_LOOP,
    AvailableLoop,
    compared_baselines,
    format_rate,
    format_ratio,
    format_seconds,
    geometric_mean_row,
    load_loops,
    parse_with_rounds,
)

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "net_servers.py"
LOADGEN_DIR = HERE / "loadgen"

KiB = 1024
MiB = 1024 * KiB

DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 2


@dataclass(frozen=True)
class Settings:
    """How much work one measurement does; --quick shrinks all of it."""

    echo_seconds: float  # measured part of one echo run
    echo_warmup: float  # unmeasured start of every echo run (connections, TCP ramp-up)
    warmup_run_seconds: float  # the one unrecorded echo run per loop and workload
    bulk_bytes: int
    idle_conns: int


FULL = Settings(
    echo_seconds=0.75,
    echo_warmup=0.1,
    warmup_run_seconds=0.3,
    bulk_bytes=256 * MiB,
    idle_conns=10_000,
)
QUICK = Settings(
    echo_seconds=0.15,
    echo_warmup=0.05,
    warmup_run_seconds=0.1,
    bulk_bytes=32 * MiB,
    idle_conns=1_000,
)

SERVER_START_TIMEOUT = 20.0  # seconds for a server to print its port
SERVER_STOP_TIMEOUT = 20.0  # seconds for a server to print its counts and exit
LOADGEN_SLACK = 60.0  # seconds a loadgen run may take beyond its planned duration


# --- Workloads -----------------------------------------------------------------------------

KINDS = ("protocol", "streams", "sock")
KIND_SUMMARIES = {
    "protocol": "loop.create_server with an asyncio.Protocol",
    "streams": "asyncio.start_server, reader.read(65536), writer.write, await drain()",
    "sock": "loop.sock_accept, one task per connection on sock_recv(65536)/sock_sendall",
}
TRANSPORTS = ("tcp", "tls", "udp")
TRANSPORT_NAMES = {"tcp": "TCP", "tls": "TLS 1.3", "udp": "UDP"}
UDP_SERVER_SUMMARY = "loop.create_datagram_endpoint, transport.sendto(data, addr) per datagram"
UDP_RESEND_AFTER_MS = 50  # loadgen re-sends a datagram whose echo is not back by then


@dataclass(frozen=True)
class NetWorkload:
    name: str
    group: str  # "echo", "bulk" or "idle"
    kind: str  # net_servers.py --kind
    size: int = 0  # echo: message size in bytes
    conns: int = 1  # echo: concurrent connections (UDP: client sockets)
    transport: str = "tcp"  # net_servers.py --transport: "tcp", "tls" or "udp"

    @property
    def role(self) -> str:
        """net_servers.py --role."""
        return {"echo": "echo", "bulk": "sink", "idle": "idle"}[self.group]

    @property
    def server_summary(self) -> str:
        if self.transport == "udp":
            return UDP_SERVER_SUMMARY
        if self.transport == "tls":
            return f"{KIND_SUMMARIES[self.kind]} and ssl= (a TLS 1.3-only server context)"
        return KIND_SUMMARIES[self.kind]

    @property
    def summary(self) -> str:
        connection = "TLS connection" if self.transport == "tls" else "connection"
        if self.group == "echo" and self.transport == "udp":
            return (
                f"{self.conns} UDP socket(s), each a closed loop of {_format_size(self.size)} "
                f"datagrams echoed back (re-sent if not back after {UDP_RESEND_AFTER_MS} ms); "
                f"server: {self.server_summary}"
            )
        if self.group == "echo":
            return (
                f"{self.conns} {connection}(s), each a closed loop of "
                f"{_format_size(self.size)} messages echoed back; server: {self.server_summary}"
            )
        if self.group == "bulk":
            return (
                f"one {connection} sends a length and then that many bytes as fast as the server "
                f"reads them, the server answers the count; server: {self.server_summary}"
            )
        return (
            "open connections (at most 512 unanswered), each sends 1 byte and waits for 1 byte "
            "back; time until all are answered, then the server's VmRSS growth per connection; "
            f"server: {self.server_summary}"
        )

    def work(self, settings: Settings) -> str:
        if self.group == "echo":
            plural = "s" if self.conns > 1 else ""
            endpoints = f"socket{plural}" if self.transport == "udp" else f"conn{plural}"
            return f"{self.conns} {endpoints} × {_format_size(self.size)}"
        if self.group == "bulk":
            return f"{_format_size(settings.bulk_bytes)} one way"
        return f"accept {settings.idle_conns:,} conns"


def _format_size(size: int) -> str:
    if size >= MiB and size % MiB == 0:
        return f"{size // MiB} MiB"
    if size >= KiB and size % KiB == 0:
        return f"{size // KiB} KiB"
    return f"{size} B"


def _all_workloads() -> list[NetWorkload]:
    workloads = []
    for kind in KINDS:
        for size, size_name in ((1 * KiB, "1k"), (100 * KiB, "100k")):
            for conns in (1, 16):
                name = f"echo_{kind}_{size_name}_c{conns}"
                workloads.append(NetWorkload(name, "echo", kind, size, conns))
    workloads += [NetWorkload(f"bulk_{kind}", "bulk", kind) for kind in KINDS]
    workloads += [NetWorkload(f"idle_{kind}", "idle", kind) for kind in KINDS]
    for conns in (1, 16):
        name = f"tls_echo_1k_c{conns}"
        workloads.append(NetWorkload(name, "echo", "protocol", 1 * KiB, conns, "tls"))
    workloads.append(NetWorkload("tls_bulk", "bulk", "protocol", transport="tls"))
    for conns in (1, 16):
        name = f"udp_echo_512_c{conns}"
        workloads.append(NetWorkload(name, "echo", "protocol", 512, conns, "udp"))
    return workloads


WORKLOADS = _all_workloads()
GROUPS = ("echo", "bulk", "idle")


# --- TLS certificate -----------------------------------------------------------------------


@dataclass(frozen=True)
class TlsCertificate:
    """A self-signed certificate for 127.0.0.1 (and localhost), made for one benchmark run."""

    server_pem: Path  # private key and certificate: net_servers.py --cert
    cert_pem: Path  # the certificate alone: what loadgen --tls trusts


def make_tls_certificate(directory: Path) -> TlsCertificate:
    """Makes a P-256 key and a self-signed certificate valid for a day with the openssl
    command, in ``directory``."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    if shutil.which("openssl") is None:
        sys.exit("the TLS workloads need the openssl command to make a certificate")
    made = subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "1",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
            "-keyout", str(key), "-out", str(cert),
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if made.returncode != 0:
        sys.exit(f"openssl could not make a certificate: {made.stderr.strip()}")
    server_pem = directory / "server.pem"
    server_pem.write_bytes(key.read_bytes() + cert.read_bytes())
    return TlsCertificate(server_pem, cert)


# --- Processes -----------------------------------------------------------------------------


class MeasurementError(RuntimeError):
    """A server or a load generator run failed, or their counts disagree."""


def _pinned_to(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _read_line(stream, timeout: float) -> bytes | None:
    """One line from a pipe, or None if none arrives within ``timeout`` or the pipe closes."""
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
            return None
        more = os.read(stream.fileno(), 1)  # byte by byte: nothing read past the line is lost
        if not more:
            return None
        line += more
    return line


class Server:
    """A net_servers.py process: started listening, stopped with its counts collected."""

    def __init__(
        self,
        loop: str,
        workload: NetWorkload,
        cpu: int | None,
        certificate: TlsCertificate | None = None,
    ) -> None:
        self._stderr = tempfile.TemporaryFile()
        tls_options = []
        if workload.transport == "tls":
            assert certificate is not None, "a TLS workload needs a certificate"
            tls_options = ["--cert", str(certificate.server_pem)]
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(SERVERS),
                "--loop",
                loop,
                "--kind",
                workload.kind,
                "--role",
                workload.role,
                "--transport",
                workload.transport,
                *tls_options,
                "--addr",
                "127.0.0.1:0",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            preexec_fn=_pinned_to(cpu),
        )
        line = _read_line(self.process.stdout, SERVER_START_TIMEOUT)
        if line is None or not line.strip().isdigit():
            message = self._last_stderr_line() or "no port printed"
            self.kill()
            raise MeasurementError(f"server did not start: {message}")
        self.port = int(line)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise MeasurementError("no VmRSS in /proc/PID/status")

    def stop(self) -> dict:
        """Closes the server's stdin, which makes it print its counts as JSON and exit."""
        if self.process.poll() is not None:
            raise MeasurementError(
                f"server exited early ({self.process.returncode}): {self._last_stderr_line()}"
            )
        assert self.process.stdin is not None
        self.process.stdin.close()
        line = _read_line(self.process.stdout, SERVER_STOP_TIMEOUT)
        try:
            self.process.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        if line is None:
            message = self._last_stderr_line()
            self.kill()
            raise MeasurementError(f"server printed no counts: {message}")
        self.kill()
        return json.loads(line)

    def kill(self) -> None:
        """Ends the process if it still runs and closes its pipes; safe to call again."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self._stderr):
            if stream is not None and not stream.closed:
                stream.close()

    def _last_stderr_line(self) -> str:
        if self._stderr.closed:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""


def _check_server_counts(
    counts: dict, expected: dict[str, int], ranges: dict[str, list[int]] | None = None
) -> None:
    """The server reported no error, and its counts are ``expected`` exactly or, for the keys
    of ``ranges``, within [low, high]."""
    if counts["error_count"]:
        raise MeasurementError(
            f"server reported {counts['error_count']} error(s), first: {counts['errors'][0]}"
        )
    for key, value in expected.items():
        if counts[key] != value:
            raise MeasurementError(f"server counted {key}={counts[key]}, expected {value}")
    for key, (low, high) in (ranges or {}).items():
        if not low <= counts[key] <= high:
            raise MeasurementError(f"server counted {key}={counts[key]}, expected {low} to {high}")


class Loadgen:
    """Runs the loadgen binary, pinned to a CPU, and returns its JSON report."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def command(self, mode: str, port: int, *options: object) -> list[str]:
        return [str(self.binary), mode, "--addr", f"127.0.0.1:{port}", *map(str, options)]

    def run(self, cpu: int | None, mode: str, port: int, *options: object, timeout: float) -> dict:
        try:
            finished = subprocess.run(
                self.command(mode, port, *options),
                capture_output=True,
                timeout=timeout,
                preexec_fn=_pinned_to(cpu),
            )
        except subprocess.TimeoutExpired:
            raise MeasurementError(f"loadgen {mode} took over {timeout:.0f} s") from None
        if finished.returncode != 0:
            message = finished.stderr.decode(errors="replace").strip() or "no message"
            raise MeasurementError(f"loadgen {mode} exited {finished.returncode}: {message}")
        return json.loads(finished.stdout)

    def start(self, cpu: int | None, mode: str, port: int, *options: object) -> subprocess.Popen:
        return subprocess.Popen(
            self.command(mode, port, *options),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_pinned_to(cpu),
        )


PLACEMENTS = {
    "auto": "shared for echo workloads, split for bulk and idle",
    "shared": "servers and loadgen pinned to the same CPU",
    "split": "servers pinned to one CPU, loadgen to another",
    "none": "nothing pinned",
}

# Runs only when nothing else wants its CPU (SCHED_IDLE), so that the CPU never goes idle;
# exits when its parent (this harness) is gone.
KEEP_AWAKE_CODE = """
import os
parent = os.getppid()
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
while os.getppid() == parent:
    for _ in range(100_000):
        pass
"""


@dataclass(frozen=True)
class Placement:
    """Where one workload's processes run (None: not pinned)."""

    server_cpu: int | None
    loadgen_cpu: int | None
    keep_awake: tuple[int, ...] = ()  # CPUs kept from idling during the workload

    def describe(self) -> str:
        if self.server_cpu is None:
            text = "nothing pinned"
        elif self.server_cpu == self.loadgen_cpu:
            text = f"server and loadgen pinned to CPU {self.server_cpu}"
        else:
            text = f"server pinned to CPU {self.server_cpu}, loadgen to CPU {self.loadgen_cpu}"
        if self.keep_awake:
            cpus = " and ".join(map(str, self.keep_awake))
            text += f", CPU {cpus} kept from idling by a SCHED_IDLE busy loop"
        return text


def place(workload: NetWorkload, choice: str, keep_awake: bool | None) -> Placement:
    """The placement of ``workload`` under ``--placement choice`` and ``--[no-]keep-awake``.

    ``auto`` shares one CPU for echo, whose round trips are short enough for a cross-CPU
    wake-up to dominate them on a virtual machine, and splits for bulk and idle, where
    loadgen's own kernel work (sending, connecting) would otherwise be counted against the
    server.
    """
    if choice == "auto":
        choice = "shared" if workload.group == "echo" else "split"
    if choice == "none":
        return Placement(None, None)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = cpus[0]
    loadgen_cpu = cpus[1] if choice == "split" and len(cpus) >= 2 else server_cpu
    if keep_awake is None:
        keep_awake = loadgen_cpu != server_cpu
    return Placement(
        server_cpu, loadgen_cpu, tuple(sorted({server_cpu, loadgen_cpu})) if keep_awake else ()
    )


class KeepAwake:
    """One SCHED_IDLE busy loop per CPU while it is open, so that those CPUs never idle.

    On a virtual machine, waking a task on an idle (halted) virtual CPU can take from tens of
    microseconds to milliseconds, which would swamp the round trips being measured.
    """

    def __init__(self, cpus: tuple[int, ...]) -> None:
        self.cpus = cpus
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> "KeepAwake":
        for cpu in self.cpus:
            command = [sys.executable, "-c", KEEP_AWAKE_CODE]
            self.processes.append(subprocess.Popen(command, preexec_fn=_pinned_to(cpu)))
        return self

    def __exit__(self, *_: object) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def build_loadgen() -> Path:
    """Builds loadgen with cargo (a no-op when up to date) and returns the executable's path."""
    manifest = LOADGEN_DIR / "Cargo.toml"
    if shutil.which("cargo") is None:
        target_dir = Path(os.environ.get("CARGO_TARGET_DIR", LOADGEN_DIR / "target"))
        binary = target_dir / "release" / "loadgen"
        if binary.exists():
            return binary
        sys.exit(f"cargo not found and no {binary}: build loadgen or pass --loadgen PATH")
    built = subprocess.run(
        [
            "cargo",
            "build",
            "--release",
            "--quiet",
            "--manifest-path",
            str(manifest),
            "--message-format=json-render-diagnostics",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    if built.returncode != 0:
        sys.exit("building loadgen failed (see above)")
    for line in built.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable"):
            return Path(message["executable"])
    sys.exit("cargo built loadgen but reported no executable")


# --- Measuring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    settings: Settings
    loadgen: Loadgen
    placement: Placement
    certificate: TlsCertificate | None  # when a TLS workload is to run


class LoopRun:
    """One loop's part of one workload: its server (if it lives across runs) and its runs."""

    def __init__(self, loop: str, workload: NetWorkload, context: Context) -> None:
        self.loop, self.workload, self.context = loop, workload, context
        self.server: Server | None = None
        self.expected = {"connections": 0, "bytes": 0, "answered": 0}
        # Counts known only within [low, high]: a UDP server's bytes lie between those loadgen
        # got back and those it sent, since a datagram or its echo may be lost.
        self.expected_ranges: dict[str, list[int]] = {}
        if workload.transport == "udp":
            del self.expected["bytes"]
            self.expected_ranges["bytes"] = [0, 0]

    def open(self) -> None:
        """Echo and bulk: one server per loop for the whole workload, warmed up by one run."""
        if self.workload.group == "idle":
            return
        self.server = self._start_server()
        self.measure(warm_up=True)

    def close(self) -> None:
        """Stops the server and checks its counts against what the load generator saw."""
        if self.server is not None:
            server, self.server = self.server, None
            _check_server_counts(server.stop(), self.expected, self.expected_ranges)

    def _start_server(self) -> Server:
        cpu = self.context.placement.server_cpu
        return Server(self.loop, self.workload, cpu, self.context.certificate)

    def _tls_options(self) -> list[object]:
        """loadgen's options for the workload's transport: ``--tls CERT`` for TLS."""
        if self.workload.transport != "tls":
            return []
        assert self.context.certificate is not None, "a TLS workload needs a certificate"
        return ["--tls", self.context.certificate.cert_pem]

    def kill(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server = None

    @property
    def port(self) -> int:
        assert self.server is not None, "the server of an echo or bulk workload is not open"
        return self.server.port

    def measure(self, warm_up: bool = False) -> dict:
        group = self.workload.group
        if group == "echo" and self.workload.transport == "udp":
            return self._udp_echo(warm_up)
        if group == "echo":
            return self._echo(warm_up)
        if group == "bulk":
            return self._bulk()
        return self._idle()

    def _echo(self, warm_up: bool) -> dict:
        settings, workload = self.context.settings, self.workload
        seconds = settings.warmup_run_seconds if warm_up else settings.echo_seconds
        report = self.context.loadgen.run(
            self.context.placement.loadgen_cpu,
            "echo",
            self.port,
            "--conns", workload.conns,
            "--size", workload.size,
            "--warmup", settings.echo_warmup,
            "--duration", seconds,
            *self._tls_options(),
            timeout=settings.echo_warmup + seconds + LOADGEN_SLACK,
        )  # fmt: skip
        self.expected["connections"] += workload.conns
        self.expected["bytes"] += report["total_round_trips"] * workload.size
        latency = report["latency_us"]
        return {
            "rate": report["round_trips_per_s"],
            "round_trips": report["round_trips"],
            "p50_us": latency["p50"],
            "p99_us": latency["p99"],
        }

    def _udp_echo(self, warm_up: bool) -> dict:
        """Like ``_echo``, with datagrams; also records the datagrams re-sent and late echoes."""
        settings, workload = self.context.settings, self.workload
        seconds = settings.warmup_run_seconds if warm_up else settings.echo_seconds
        report = self.context.loadgen.run(
            self.context.placement.loadgen_cpu,
            "udp",
            self.port,
            "--conns", workload.conns,
            "--size", workload.size,
            "--warmup", settings.echo_warmup,
            "--duration", seconds,
            "--resend-after", UDP_RESEND_AFTER_MS,
            timeout=settings.echo_warmup + seconds + LOADGEN_SLACK,
        )  # fmt: skip
        self.expected_ranges["bytes"][0] += report["echoes_received"] * workload.size
        self.expected_ranges["bytes"][1] += report["datagrams_sent"] * workload.size
        latency = report["latency_us"]
        return {
            "rate": report["round_trips_per_s"],
            "round_trips": report["round_trips"],
            "p50_us": latency["p50"],
            "p99_us": latency["p99"],
            "resent": report["resent"],
            "late": report["late"],
        }

    def _bulk(self) -> dict:
        total = self.context.settings.bulk_bytes
        report = self.context.loadgen.run(
            self.context.placement.loadgen_cpu,
            "bulk",
            self.port,
            "--bytes",
            total,
            *self._tls_options(),
            timeout=LOADGEN_SLACK * 2,
        )
        self.expected["connections"] += 1
        self.expected["bytes"] += total
        self.expected["answered"] += 1
        return {"rate": report["mb_per_s"] * 1e6, "seconds": report["elapsed_s"]}

    def _idle(self) -> dict:
        """A fresh server: its VmRSS before the connections and once all are answered."""
        n = self.context.settings.idle_conns
        server = self._start_server()
        loadgen = None
        try:
            rss_before = server.rss_bytes()
            loadgen = self.context.loadgen.start(
                self.context.placement.loadgen_cpu, "idle", server.port, "--conns", n
            )
            line = _read_line(loadgen.stdout, LOADGEN_SLACK * 2)
            if line is None:
                loadgen.kill()
                _, stderr = loadgen.communicate()
                message = stderr.decode(errors="replace").strip()
                raise MeasurementError(f"loadgen idle failed: {message or 'no report'}")
            rss_after = server.rss_bytes()
            report = json.loads(line)
            # Stop the server first: it exits without handling 10,000 hang-ups one by one.
            counts = server.stop()
            _check_server_counts(counts, {"connections": n, "answered": n, "bytes": 0})
        finally:
            server.kill()
            if loadgen is not None and loadgen.stdin is not None:
                loadgen.stdin.close()
                try:
                    loadgen.wait(LOADGEN_SLACK)
                except subprocess.TimeoutExpired:
                    loadgen.kill()
                    loadgen.wait()
        return {
            "rate": report["conns_per_s"],
            "seconds": report["elapsed_s"],
            "bytes_per_conn": (rss_after - rss_before) / n,
            "rss_before": rss_before,
            "rss_after": rss_after,
        }


@dataclass
class WorkloadResult:
    workload: NetWorkload
    work: str
    placement: Placement
    samples: dict[str, list[dict]] = field(default_factory=dict)  # loop name -> one per run
    errors: dict[str, str] = field(default_factory=dict)  # loop name -> what went wrong

    def values(self, loop: str, metric: str) -> list[float]:
        return [sample[metric] for sample in self.samples.get(loop, [])]

    def median(self, loop: str, metric: str) -> float | None:
        values = self.values(loop, metric)
        return statistics.median(values) if values else None

    def relative_spread(self, loop: str, metric: str) -> float | None:
        """The samples' median absolute deviation as a fraction of their median."""
        median = self.median(loop, metric)
        if not median:
            return None
        return statistics.median(abs(v - median) for v in self.values(loop, metric)) / median

    def speedup(self, baseline: str) -> float | None:
        """target rate / baseline rate: above 1 means the target loop is faster."""
        target, base = self.median(TARGET_LOOP, "rate"), self.median(baseline, "rate")
        return target / base if target and base else None

    def memory_ratio(self, baseline: str) -> float | None:
        """target bytes per connection / baseline's: below 1 means the target uses less."""
        if self.workload.group != "idle":
            return None
        target = self.median(TARGET_LOOP, "bytes_per_conn")
        base = self.median(baseline, "bytes_per_conn")
        return target / base if target is not None and base else None


def run_workload(
    workload: NetWorkload, loops: list[AvailableLoop], rounds: int, context: Context
) -> WorkloadResult:
    """Starts each loop's server (echo, bulk) and warms it up, then runs ``rounds`` rounds of
    every loop in rotated order, then stops the servers and checks their counts.

    A loop that fails anywhere is dropped from this workload and its error recorded.
    """
    result = WorkloadResult(workload, workload.work(context.settings), context.placement)
    runs: list[LoopRun] = []

    def drop(run: LoopRun, error: Exception) -> None:
        result.errors[run.loop] = (
            str(error)
            if isinstance(error, MeasurementError)
            else (f"{type(error).__name__}: {error}")
        )
        result.samples.pop(run.loop, None)
        run.kill()
        runs.remove(run)

    try:
        for loop in loops:
            run = LoopRun(loop.name, workload, context)
            runs.append(run)
            try:
                run.open()
            except Exception as error:
                drop(run, error)
        for round_index in range(rounds):
            start = round_index % len(runs) if runs else 0
            for run in runs[start:] + runs[:start]:
                try:
                    sample = run.measure()
                except Exception as error:
                    drop(run, error)
                    continue
                result.samples.setdefault(run.loop, []).append(sample)
        for run in list(runs):
            try:
                run.close()
            except Exception as error:
                drop(run, error)
    finally:
        for run in runs:
            run.kill()
    return result


# --- Reporting -----------------------------------------------------------------------------


def format_bytes_rate(per_second: float) -> str:
    """Three significant digits in decimal units, e.g. 1.23 GB/s or 845 MB/s."""
    for scale, unit in ((1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s")):
        if per_second >= scale:
            scaled = per_second / scale
            decimals = 0 if scaled >= 100 else 1 if scaled >= 10 else 2
            return f"{scaled:.{decimals}f} {unit}"
    return f"{per_second:.0f} B/s"


def format_bytes(size: float) -> str:
    if abs(size) >= KiB:
        return f"{size / KiB:.2f} KiB"
    return f"{size:.0f} B"


def _speed_cell(result: WorkloadResult, loop: str) -> str:
    rate = result.median(loop, "rate")
    if rate is None:
        return "error" if loop in result.errors else "–"
    spread = result.relative_spread(loop, "rate")
    group = result.workload.group
    if group == "echo":
        p99 = result.median(loop, "p99_us") or math.nan
        return f"{format_rate(rate)} ±{spread or 0:.0%} · p99 {format_seconds(p99 / 1e6)}"
    if group == "bulk":
        return f"{format_bytes_rate(rate)} ±{spread or 0:.0%}"
    seconds = result.median(loop, "seconds") or math.nan
    time_spread = result.relative_spread(loop, "seconds") or 0
    return f"{format_seconds(seconds)} ±{time_spread:.0%} · {format_rate(rate)}"


def _memory_cell(result: WorkloadResult, loop: str) -> str:
    per_conn = result.median(loop, "bytes_per_conn")
    if per_conn is None:
        return "error" if loop in result.errors else "–"
    spread = result.relative_spread(loop, "bytes_per_conn") or 0
    return f"{format_bytes(per_conn)} ±{spread:.0%}"


def _transports_used(results: list[WorkloadResult]) -> str:
    """The transports of ``results`` in words, e.g. "TCP, TLS 1.3 and UDP"."""
    used = {result.workload.transport for result in results} or {"tcp"}
    names = [TRANSPORT_NAMES[transport] for transport in TRANSPORTS if transport in used]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _resend_notes(results: list[WorkloadResult], loop_names: list[str]) -> list[str]:
    """One note per UDP workload and loop whose runs re-sent datagrams (lost, or slow)."""
    notes = []
    for result in results:
        if result.workload.transport != "udp":
            continue
        for name in loop_names:
            resent = sum(result.values(name, "resent"))
            late = sum(result.values(name, "late"))
            if resent:
                notes.append(
                    f"- {result.workload.name} on {name}: {resent:,} datagram(s) re-sent after "
                    f"{UDP_RESEND_AFTER_MS} ms without an echo, of which {late:,} were late "
                    "rather than lost (their first echo came back after all)"
                )
    return notes


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    alignment = [":---", "---:", *["---:"] * (len(header) - 2)]
    return ["| " + " | ".join(row) + " |" for row in [header, alignment, *rows]]


def markdown_report(
    results: list[WorkloadResult],
    loops: list[AvailableLoop],
    skipped: dict[str, str],
    rounds: int,
    settings: Settings,
    placement_choice: str,
) -> str:
    loop_names = [loop.name for loop in loops]
    baselines = compared_baselines(loop_names)
    # Which placement each group of workloads ran with, e.g. "echo: ...; bulk, idle: ...".
    groups_by_placement: dict[str, list[str]] = {}
    for result in results:
        groups = groups_by_placement.setdefault(result.placement.describe(), [])
        if result.workload.group not in groups:
            groups.append(result.workload.group)
    if len(groups_by_placement) == 1:
        pinning = next(iter(groups_by_placement))
    else:
        pinning = "; ".join(
            f"{', '.join(groups)}: {text}" for text, groups in groups_by_placement.items()
        )
    lines = [
        "## Network benchmarks",
        "",
        (
            f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs; {_transports_used(results)} over loopback; median of {rounds} "
            "interleaved rounds per loop; ±x% is the median absolute deviation."
        ),
        f"Placement ({placement_choice}): {pinning}.",
        "Loops: " + ", ".join(f"{loop.name} {loop.version}" for loop in loops) + ".",
        "",
    ]

    if results:
        lines += [
            "### Speed",
            "",
            (
                "Echo cells: round trips/s ±spread · median p99 latency; bulk: bytes/s received "
                "by the server; idle: time until every connection was accepted and answered "
                "· connections/s."
            ),
        ]
        if baselines:
            lines.append(
                f"`{TARGET_LOOP} vs X` = {TARGET_LOOP}'s rate / X's rate (for idle: X's time / "
                f"{TARGET_LOOP}'s): **above 1× means {TARGET_LOOP} is faster**."
            )
        lines.append("")
        header = ["workload", "work", *loop_names, *(f"{TARGET_LOOP} vs {b}" for b in baselines)]
        rows = []
        for result in results:
            cells = [result.workload.name, result.work]
            cells += [_speed_cell(result, name) for name in loop_names]
            cells += [format_ratio(result.speedup(baseline)) for baseline in baselines]
            rows.append(cells)
        if baselines:
            rows.append(geometric_mean_row(results, len(loop_names), baselines))
        lines += _table(header, rows)

    idle_results = [result for result in results if result.workload.group == "idle"]
    if idle_results:
        n = settings.idle_conns
        lines += [
            "",
            "### Memory per idle connection",
            "",
            (
                f"Growth of the server's VmRSS from listening to {n:,} connections accepted and "
                f"answered, divided by {n:,}; lower is better. Kernel socket memory is not in it."
            ),
        ]
        if baselines:
            lines.append(
                f"`{TARGET_LOOP} ÷ X` = {TARGET_LOOP}'s bytes per connection / X's: "
                f"**below 1× means {TARGET_LOOP} uses less memory**."
            )
        lines.append("")
        header = ["workload", "work", *loop_names, *(f"{TARGET_LOOP} ÷ {b}" for b in baselines)]
        rows = []
        for result in idle_results:
            cells = [result.workload.name, f"{n:,} idle conns"]
            cells += [_memory_cell(result, name) for name in loop_names]
            cells += [format_ratio(result.memory_ratio(baseline)) for baseline in baselines]
            rows.append(cells)
        lines += _table(header, rows)

    notes = [f"- {name} skipped: {reason}" for name, reason in skipped.items()]
    # One note per (loop, error), listing the workloads it hit, so a missing feature reads once.
    failures: dict[tuple[str, str], list[str]] = {}
    for result in results:
        for name, error in result.errors.items():
            failures.setdefault((name, error), []).append(result.workload.name)
    for (name, error), workload_names in failures.items():
        notes.append(f"- {name} failed on {', '.join(workload_names)}: {error}")
    notes += _resend_notes(results, loop_names)
    if TARGET_LOOP in loop_names and not baselines:
        notes.append(f"- no ratio columns: none of {', '.join(BASELINE_LOOPS)} was measured")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def json_report(
    results: list[WorkloadResult],
    loops: list[AvailableLoop],
    skipped: dict[str, str],
    rounds: int,
    settings: Settings,
    placement_choice: str,
) -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "placement": placement_choice,
        "rounds": rounds,
        "settings": settings.__dict__,
        "loops": {loop.name: loop.version for loop in loops},
        "skipped_loops": skipped,
        "target_loop": TARGET_LOOP,
        "workloads": [
            {
                "name": result.workload.name,
                "group": result.workload.group,
                "kind": result.workload.kind,
                "transport": result.workload.transport,
                "size": result.workload.size,
                "conns": result.workload.conns,
                "work": result.work,
                "summary": result.workload.summary,
                "placement": {
                    "server_cpu": result.placement.server_cpu,
                    "loadgen_cpu": result.placement.loadgen_cpu,
                    "keep_awake_cpus": list(result.placement.keep_awake),
                },
                "loops": {
                    name: {
                        "median_rate": result.median(name, "rate"),
                        "relative_spread": result.relative_spread(name, "rate"),
                        **(
                            {"median_p99_us": result.median(name, "p99_us")}
                            if result.workload.group == "echo"
                            else {}
                        ),
                        **(
                            {
                                "median_seconds": result.median(name, "seconds"),
                                "median_bytes_per_conn": result.median(name, "bytes_per_conn"),
                            }
                            if result.workload.group == "idle"
                            else {}
                        ),
                        "samples": samples,
                    }
                    for name, samples in result.samples.items()
                },
                "errors": result.errors,
                "speedup_vs": {
                    baseline: result.speedup(baseline)
                    for baseline in compared_baselines(list(result.samples))
                },
                **(
                    {
                        "memory_ratio_vs": {
                            baseline: result.memory_ratio(baseline)
                            for baseline in compared_baselines(list(result.samples))
                        }
                    }
                    if result.workload.group == "idle"
                    else {}
                ),
            }
            for result in results
        ],
    }


# --- Command line --------------------------------------------------------------------------


def _workload_selection(text: str) -> list[str]:
    """Names, shell patterns (``echo_*_1k_*``), groups (echo, bulk, idle) or transports (tcp,
    tls, udp), comma-separated."""
    names = []
    for item in (item.strip() for item in text.split(",")):
        if not item:
            continue
        matched = [
            w.name
            for w in WORKLOADS
            if item in (w.group, w.transport) or fnmatch.fnmatchcase(w.name, item)
        ]
        if not matched:
            raise argparse.ArgumentTypeError(
                f"no workload matches {item!r}; choose from {', '.join(GROUPS)}, "
                f"{', '.join(TRANSPORTS)} or {', '.join(w.name for w in WORKLOADS)}"
            )
        names += matched
    if not names:
        raise argparse.ArgumentTypeError("no workload given")
    return names


def _loop_selection(text: str) -> list[str]:
    choices = [candidate.name for candidate in CANDIDATE_LOOPS]
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in choices]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown loop(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(choices)}"
        )
    return names


def parse_arguments() -> argparse.Namespace:
    loop_names = [candidate.name for candidate in CANDIDATE_LOOPS]
    parser = argparse.ArgumentParser(
        description="Benchmark asyncio event loops as network servers, interleaved."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-test size: {QUICK.echo_seconds} s echo runs, "
        f"{_format_size(QUICK.bulk_bytes)} bulk, {QUICK.idle_conns:,} idle connections, "
        f"{QUICK_ROUNDS} rounds unless --rounds is given",
    )
    parser.add_argument(
        "--rounds", type=int, help=f"measured runs per loop and workload (default {DEFAULT_ROUNDS})"
    )
    parser.add_argument(
        "--only",
        type=_workload_selection,
        default=[w.name for w in WORKLOADS],
        metavar="NAME,...",
        help="workloads to run (default all): names, shell patterns such as 'echo_*_c16', "
        f"groups ({', '.join(GROUPS)}) or transports ({', '.join(TRANSPORTS)})",
    )
    parser.add_argument(
        "--loops",
        type=_loop_selection,
        default=loop_names,
        metavar="NAME,...",
        help=f"loops to run, if importable (default all): {', '.join(loop_names)}",
    )
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="auto",
        help="where the processes run: "
        + "; ".join(f"{name}: {what}" for name, what in PLACEMENTS.items())
        + " (default auto)",
    )
    parser.add_argument(
        "--keep-awake",
        action=argparse.BooleanOptionalAction,
        help="run a SCHED_IDLE busy loop on each pinned CPU during a workload, so that they "
        "never idle (default: for the workloads whose server and loadgen are on different CPUs)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the full results as JSON")
    parser.add_argument(
        "--loadgen", metavar="PATH", type=Path, help="use this loadgen binary instead of building"
    )
    return parse_with_rounds(parser, QUICK_ROUNDS, DEFAULT_ROUNDS)


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit; the children inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    arguments = parse_arguments()
    settings = QUICK if arguments.quick else FULL
    raise_open_files_limit()
    loops, skipped = load_loops(arguments.loops)
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", file=sys.stderr)
    if not loops:
        sys.exit("no event loop to benchmark")
    binary = arguments.loadgen or build_loadgen()
    loadgen = Loadgen(binary)

    selected = [workload for workload in WORKLOADS if workload.name in arguments.only]
    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="net_bench_") as scratch:
        certificate = None
        if any(workload.transport == "tls" for workload in selected):
            certificate = make_tls_certificate(Path(scratch))
        for workload in selected:
            placement = place(workload, arguments.placement, arguments.keep_awake)
            with KeepAwake(placement.keep_awake):
                context = Context(settings, loadgen, placement, certificate)
                result = run_workload(workload, loops, arguments.rounds, context)
            results.append(result)
            progress = ", ".join(
                f"{loop.name} {_speed_cell(result, loop.name)}"
                if loop.name in result.samples
                else f"{loop.name} failed"
                for loop in loops
            )
            print(f"{workload.name} ({result.work}): {progress}", file=sys.stderr, flush=True)
    print(f"done in {time.monotonic() - started:.0f} s", file=sys.stderr)

    report_arguments = (results, loops, skipped, arguments.rounds, settings, arguments.placement)
    print(markdown_report(*report_arguments), end="")
    if arguments.json:
        with open(arguments.json, "w") as json_file:
            report = json_report(*report_arguments)
            json.dump(report, json_file, indent=2)
            json_file.write("\n")


if __name__ == "__main__":
    main()
