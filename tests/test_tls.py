"""TLS over stream transports: servers and clients with ``ssl=``, asyncio streams over TLS,
``start_tls`` upgrading a plain connection, the TLS extra information, and a large transfer.

TLS itself is asyncio's ``SSLProtocol`` on top of the loop's socket transport. Runs on stock
asyncio and on oxloop (see conftest.py). The certificates are generated at test time (a CA and
a server certificate for "localhost" and "127.0.0.1", see conftest.py); clients trust only
that CA and check the host name.
"""

import asyncio
import hashlib
import socket
import ssl
from asyncio import sslproto

import pytest
import trustme

from helpers.net import record_errors
from helpers.tls import make_client_context
from oxloop import _core

MiB = 1024 * 1024


async def others_done(timeout=5.0):
    """Wait until every task but the current one is done."""
    for _ in range(int(timeout / 0.01)):
        if all(task.done() for task in asyncio.all_tasks() if task is not asyncio.current_task()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("tasks still pending")


async def echo_lines(reader, writer):
    """A stream handler sending every line back, until EOF."""
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


def test_tls_stream_echo(loop, server_context, client_context):
    async def main():
        server = await asyncio.start_server(echo_lines, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        # server_hostname defaults to the host: the certificate is checked for 127.0.0.1.
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        assert ssl_object.version() is not None
        assert ssl_object.server_hostname == "127.0.0.1"
        peercert = writer.get_extra_info("peercert")
        assert ("IP Address", "127.0.0.1") in peercert["subjectAltName"]
        assert ("DNS", "localhost") in peercert["subjectAltName"]
        assert writer.get_extra_info("peername")[0] == "127.0.0.1"
        for i in range(3):
            writer.write(b"line %d\n" % i)
            assert await reader.readline() == b"line %d\n" % i
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_tls_large_transfer_arrives_intact(loop, server_context, client_context):
    payload = bytes(range(256)) * (4 * MiB // 256) + b"\n"

    async def main():
        server = await asyncio.start_server(echo_lines, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname="localhost", limit=8 * MiB
        )
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


class _CountingSink(asyncio.Protocol):
    """Counts what arrives; answers b"done" once ``expected`` bytes came; ``closed`` is done
    when the connection is lost."""

    def __init__(self, expected, digest):
        self.closed = asyncio.get_running_loop().create_future()
        self.expected = expected
        self.received = 0
        self.digest = digest
        self.hash = hashlib.sha256()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.received += len(data)
        self.hash.update(data)
        if self.received >= self.expected:
            self.transport.write(b"done" if self.hash.digest() == self.digest else b"bad!")

    def connection_lost(self, exc):
        self.closed.set_result(exc)


def _send_with_a_blocking_client(port, client_context, chunk, count):
    """A plain blocking TLS client (in a thread): send ``count`` times ``chunk``, then wait for
    the server's answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
            for _ in range(count):
                tls.sendall(chunk)
            return tls.recv(4)


@pytest.mark.parametrize("chunk_size", [65536, 10_000])
def test_tls_records_split_across_reads_are_all_delivered(
    loop, server_context, client_context, chunk_size
):
    """Records arrive cut at arbitrary points (the client writes as fast as TLS lets it); a
    record whose start TLS consumed in one read must be delivered when the rest arrives."""
    count = 8 * MiB // chunk_size
    chunk = bytes(range(256)) * (chunk_size // 256) + bytes(chunk_size % 256)
    expected = count * chunk_size
    digest = hashlib.sha256(chunk * count).digest()

    async def main():
        sink = None

        def factory():
            nonlocal sink
            sink = _CountingSink(expected, digest)
            return sink

        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        answer = await asyncio.wait_for(
            loop.run_in_executor(
                None, _send_with_a_blocking_client, port, client_context, chunk, count
            ),
            30,
        )
        assert (answer, sink.received) == (b"done", expected)
        await asyncio.wait_for(sink.closed, 10)  # the server's side of the client's close
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


@pytest.mark.parametrize("failure", ["untrusted CA", "host name mismatch"])
def test_tls_handshake_failure_reaches_the_client(loop, tls_ca, server_context, failure):
    # A client that verifies certificates rejects one from a CA it does not trust, or one
    # issued for another host name; the server side reports its failed handshake to the
    # exception handler.
    errors = record_errors(loop)
    if failure == "untrusted CA":
        client, hostname, reason = (
            make_client_context(trustme.CA()),
            "localhost",
            "unable to get",
        )
    else:
        client, hostname, reason = (
            make_client_context(tls_ca),
            "example.com",
            "Hostname mismatch",
        )

    async def main():
        server = await asyncio.start_server(echo_lines, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ssl.SSLCertVerificationError, match=reason):
            await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=hostname)
        await others_done()  # the server's side of the failed handshake
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert all(
        isinstance(error.get("exception"), (ssl.SSLError, ConnectionError)) for error in errors
    )


def test_start_tls_upgrades_a_plain_connection(loop, server_context, client_context):
    upgraded = asyncio.Event()

    async def upgrade_then_echo(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.drain()
        await writer.start_tls(server_context)
        upgraded.set()
        await echo_lines(reader, writer)

    async def main():
        server = await asyncio.start_server(upgrade_then_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert writer.get_extra_info("ssl_object") is None
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        await writer.start_tls(client_context, server_hostname="localhost")
        assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)
        writer.write(b"secret\n")
        assert await reader.readline() == b"secret\n"
        assert upgraded.is_set()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_ssl_argument_errors_are_asyncio_s(loop):
    async def main():
        with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, server_hostname="x")
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful with ssl"):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, ssl_handshake_timeout=1)
        with pytest.raises(TypeError, match="ssl argument must be an SSLContext or None"):
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=True)

    loop.run_until_complete(main())


def test_the_native_tls_methods_refuse_a_class_without_their_state():
    """oxloop-only: ``install_tls_methods`` puts methods that read native state on a class; a
    class that does not have that state is refused at once (never a wrong read later)."""

    class NotAProtocolState(sslproto.SSLProtocol):
        pass

    with pytest.raises(TypeError, match="is not a subclass of TlsProtocolState"):
        _core.install_tls_methods(
            NotAProtocolState,
            sslproto._SSLProtocolTransport,
            sslproto.SSLProtocol,
            sslproto.SSLProtocolState.WRAPPED,
            (ssl.SSLWantReadError,),
        )
    assert "get_buffer" not in vars(NotAProtocolState)
