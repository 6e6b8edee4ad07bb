"""Helpers of test_faults.py (the reliability tests under faults).

``healthy_connection``  an echo connection that keeps carrying data on the loop while a test
                        injects a fault elsewhere; at exit it checks that every byte came back
                        intact and in order.
``reset_on_close``      make a plain socket's ``close()`` send a TCP reset (SO_LINGER 0).
``client_hello``        the first flight of a real TLS client (a ClientHello), as bytes.
``reference_tls_error`` the ``ssl.SSLError`` reason the ssl module itself gives a TLS
                        endpoint whose peer sends some bytes that are not TLS.
``emfile_scenario``     the accept-out-of-descriptors scenario, run in a child process (this
                        file is its script: ``python fault_helpers.py emfile <loop kind>``,
                        with tests/ on PYTHONPATH) so that the pytest process keeps its limits.
"""

import asyncio
import contextlib
import json
import os
import resource
import socket
import ssl
import struct
import sys

import oxloop
from helpers import net

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB  # what the healthy connection sends per round trip


class HealthyConnection:
    """The state of one ``healthy_connection``: what was sent and how many round trips ran."""

    def __init__(self, loop, transport, protocol):
        self.loop = loop
        self.transport = transport
        self.protocol = protocol
        self.sent = bytearray()
        self.rounds = 0
        self.stopping = False

    async def pump(self, min_rounds):
        """Send a chunk, wait for its echo, again, until stopped (and ``min_rounds`` done)."""
        while not (self.stopping and self.rounds >= min_rounds):
            chunk = os.urandom(CHUNK)
            self.sent += chunk
            self.transport.write(chunk)
            await self.protocol.wait_data(len(self.sent))
            self.rounds += 1


@contextlib.asynccontextmanager
async def healthy_connection(loop, min_rounds=8, timeout=10):
    """Run an echo server and a client on ``loop`` that echo random chunks back and forth for
    as long as the block runs (the fault is injected inside it). At exit, the client must have
    got back exactly what it sent: the fault did not disturb a connection that stayed up."""
    server = await loop.create_server(lambda: net.Echo(loop), "127.0.0.1", 0)
    try:
        transport, protocol = await loop.create_connection(
            lambda: net.Recorder(loop), *server.sockets[0].getsockname()
        )
        healthy = HealthyConnection(loop, transport, protocol)
        pump = asyncio.ensure_future(healthy.pump(min_rounds))
        try:
            yield healthy
            healthy.stopping = True
            await asyncio.wait_for(asyncio.shield(pump), timeout)
            assert healthy.rounds >= min_rounds
            assert protocol.data == healthy.sent, "the healthy connection's data was corrupted"
            assert not protocol.lost.done(), "the healthy connection was lost"
        finally:
            if not pump.done():
                pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            transport.close()
            await asyncio.wait_for(protocol.lost, timeout)
    finally:
        await net.close_server(server)


def reset_on_close(sock):
    """Make ``sock.close()`` abort the TCP connection with a reset (SO_LINGER on, 0 s)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def client_hello():
    """The bytes a TLS client sends first (its ClientHello), made with the ssl module."""
    outgoing = ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing, server_hostname="localhost"
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def reference_tls_error(context, server_side, received):
    """The reason (``ssl.SSLError.reason``) the ssl module itself gives when the TLS handshake
    of an in-memory endpoint made from ``context`` receives ``received`` from its peer (after
    its ClientHello, on the client side)."""
    incoming = ssl.MemoryBIO()
    endpoint = context.wrap_bio(
        incoming,
        ssl.MemoryBIO(),
        server_side=server_side,
        server_hostname=None if server_side else "localhost",
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        endpoint.do_handshake()
    incoming.write(received)
    try:
        endpoint.do_handshake()
    except ssl.SSLError as exc:
        return exc.reason
    raise AssertionError(f"the ssl module's handshake went on after receiving {received!r}")


# --------------------------------------------------------------------------------------------
# accept() out of file descriptors (run in a child process)
# --------------------------------------------------------------------------------------------

EMFILE_CLIENTS = 6  # connections waiting in the listening socket's backlog
EMFILE_FREE_FDS = 2  # descriptors left under the lowered limit: accepted before EMFILE
EMFILE_BALLAST = 4  # descriptors held open, then closed to make room for the others
EMFILE_PAUSE_CHECK = 0.3  # how long the test watches the loop while accept() keeps failing


def _lower_fd_limit(free):
    """Lower the soft RLIMIT_NOFILE so that exactly ``free`` new descriptors can be opened."""
    in_use = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            os.readlink(f"/proc/self/fd/{name}")
            in_use.add(int(name))
    limit, left = 0, free
    while left or limit in in_use:
        if limit not in in_use:
            left -= 1
        limit += 1
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


async def _emfile_main(loop):
    """Queue ``EMFILE_CLIENTS`` connections on an echo server, lower the descriptor limit so
    that only ``EMFILE_FREE_FDS`` of them can be accepted, watch what the loop reports and
    whether it keeps retrying, then close the ballast descriptors and check that every client
    gets its echo; a ``healthy_connection`` runs throughout."""
    reports = []  # the exception handler's calls, summed up
    accepted = []

    class Counting(net.Echo):
        """An echo protocol that lists the connections it serves in ``accepted``."""

        def connection_made(self, transport):
            super().connection_made(transport)
            accepted.append(self)

    server = await loop.create_server(lambda: Counting(loop), "127.0.0.1", 0)
    address = server.sockets[0].getsockname()
    listener_fd = server.sockets[0].fileno()

    def report(loop, context):
        exc = context.get("exception")
        reports.append(
            {
                "keys": sorted(context),
                "message": context["message"],
                "exception": type(exc).__name__,
                "errno": getattr(exc, "errno", None),
                "socket is the listener": context.get("socket") is not None
                and context["socket"].fileno() == listener_fd,
            }
        )

    loop.set_exception_handler(report)
    result = {"reports": reports}
    async with healthy_connection(loop):
        ballast = [os.open(os.devnull, os.O_RDONLY) for _ in range(EMFILE_BALLAST)]
        clients = []
        try:
            for _ in range(EMFILE_CLIENTS):  # the kernel completes these connections in the backlog
                clients.append(socket.create_connection(address))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            _lower_fd_limit(EMFILE_FREE_FDS)
            try:
                async with asyncio.timeout(10):
                    while not reports:
                        await asyncio.sleep(0.01)
                result["accepted before EMFILE"] = len(accepted)
                result["reports at first"] = len(reports)
                # accept() still fails: the loop must have paused accepting, not be spinning.
                await asyncio.sleep(EMFILE_PAUSE_CHECK)
                result["reports after a pause"] = len(reports)
                for fd in ballast:
                    os.close(fd)
                ballast.clear()
                result["replies"] = []
                for sock in clients:  # every client is served once the server resumes
                    sock.setblocking(False)
                    await loop.sock_sendall(sock, b"ping")
                    reply = await asyncio.wait_for(net.recv_exactly(loop, sock, 4), 10)
                    result["replies"].append(reply.decode())
                result["accepted in all"] = len(accepted)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        finally:
            for fd in ballast:
                os.close(fd)
            for sock in clients:
                sock.close()
    for protocol in accepted:
        await protocol.lost
    await net.close_server(server)
    return result


def emfile_scenario(kind):
    """Serve connections with the accept() of a server failing with EMFILE, on a loop of
    ``kind``; returns what happened (see ``_emfile_main``) as a JSON-friendly dict."""
    loop = asyncio.new_event_loop() if kind == "asyncio" else oxloop.new_event_loop()
    try:
        return loop.run_until_complete(_emfile_main(loop))
    finally:
        loop.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["emfile"]:
        print(json.dumps(emfile_scenario(sys.argv[2])))
    else:
        sys.exit(f"usage: {sys.argv[0]} emfile asyncio|oxloop")
