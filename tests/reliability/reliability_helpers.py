"""Helpers shared by the reliability tests (test_no_leaks.py, test_threadsafe_stress.py and
test_loop_teardown.py).

``fd_count``, ``rss_bytes``  the process's open file descriptors and resident memory, read
                             from /proc (Linux).
``watched_fds``              how many file descriptors a loop's poller watches (white-box: each
                             loop kind keeps the number in its own place).
``gc_disabled``              a context manager pausing the cyclic garbage collector, so that a
                             check "before gc" really runs before any collection.
``EchoOnce``, ``PingOnce``   server and client protocols of one short exchange per connection.
``churn``                    opens and closes many connections in waves, checking each exchange.
"""

import asyncio
import contextlib
import gc
import os
import socket
import struct

import oxloop

MiB = 1024 * 1024
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PING = b"ping"
# SO_LINGER on, with a zero timeout: close() resets the connection instead of leaving it in
# TIME_WAIT, so that tens of thousands of loopback connections do not use up the ephemeral ports.
LINGER_ZERO = struct.pack("ii", 1, 0)


def fd_count() -> int:
    """How many file descriptors the process has open."""
    return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself opened


def rss_bytes() -> int:
    """The process's resident set size, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


def watched_fds(loop) -> int:
    """How many file descriptors ``loop`` watches for I/O (both kinds count their own wake-up
    fd, so compare the number with an earlier one of the same loop)."""
    if isinstance(loop, oxloop.Loop):
        return loop._counters()["watched_fds"]
    return len(loop._selector.get_map())


@contextlib.contextmanager
def gc_disabled():
    """Pause the cyclic garbage collector inside the block (restored at exit)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class EchoOnce(asyncio.Protocol):
    """Server side of one exchange: sends back what it receives; counts its closed connections
    in ``stats["server lost"]``."""

    def __init__(self, stats):
        self.stats = stats
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.stats["server lost"] += 1
        self.transport = None


class PingOnce(asyncio.Protocol):
    """Client side of one exchange: sends ``PING``, and once the echo is back closes the
    connection with a reset (``LINGER_ZERO``, TCP only). ``done`` gets the echoed bytes when
    the connection is lost."""

    def __init__(self, loop, reset):
        self.reset = reset
        self.received = bytearray()
        self.done = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(PING)

    def data_received(self, data):
        self.received += data
        if len(self.received) >= len(PING):
            if self.reset:
                sock = self.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
            self.transport.close()

    def connection_lost(self, exc):
        self.transport = None
        if not self.done.done():
            self.done.set_result(bytes(self.received))


async def start_echo_server(loop, family, sock_dir, stats):
    """An ``EchoOnce`` server: returns it and an ``open_client(factory)`` coroutine function
    connecting to it (family "tcp": 127.0.0.1, "unix": a path in ``sock_dir``)."""
    if family == "tcp":
        # A backlog well above a wave of connections: an overflowing accept queue drops SYNs,
        # and the client retries only a second later.
        server = await loop.create_server(lambda: EchoOnce(stats), "127.0.0.1", 0, backlog=2048)
        host, port = server.sockets[0].getsockname()

        def open_client(factory):
            return loop.create_connection(factory, host, port)
    else:
        path = os.path.join(sock_dir, "echo.sock")
        server = await loop.create_unix_server(lambda: EchoOnce(stats), path, backlog=2048)

        def open_client(factory):
            return loop.create_unix_connection(factory, path)

    return server, open_client


async def churn(loop, open_client, total, wave, reset, after_wave=None):
    """Open ``total`` connections with ``open_client``, ``wave`` at a time; each makes one
    ``PingOnce`` exchange and is closed. Fails unless every exchange got its echo back.
    ``await after_wave(opened)`` (if given) runs after each wave, once its connections are
    closed on the client side; ``opened`` counts the connections made so far."""

    async def one():
        _, protocol = await open_client(lambda: PingOnce(loop, reset))
        return await protocol.done

    for start in range(0, total, wave):
        echoes = await asyncio.gather(*(one() for _ in range(min(wave, total - start))))
        assert echoes == [PING] * len(echoes)
        if after_wave is not None:
            await after_wave(start + len(echoes))


async def wait_for_count(stats, key, expected, loop):
    """Let the loop run until ``stats[key]`` reaches ``expected`` (bounded: fails after 10 s of
    loop time)."""
    deadline = loop.time() + 10
    while stats[key] < expected:
        assert loop.time() < deadline, f"{key}: {stats[key]} of {expected}"
        await asyncio.sleep(0.001)
    assert stats[key] == expected
