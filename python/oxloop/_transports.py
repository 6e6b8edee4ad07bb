"""Stream transports (TCP and Unix sockets), servers and sendfile.

``SocketTransport`` is the ``asyncio.Transport`` protocols see. Its per-packet work (reads,
``data_received``, writes, flow control) is native, in ``_core.StreamTransport``, kept in the
``_core`` slot; the per-packet methods (``write``, ``writelines``, ``is_closing``,
``get_write_buffer_size``, ``is_reading``, ``pause_reading``, ``resume_reading``) are native
method descriptors installed on the class, so a call reaches Rust without a Python frame.
What happens once per connection is here: set-up, ``connection_lost``, error reports.

``StreamOperations`` gives ``Loop`` the hooks asyncio's ``BaseEventLoop`` calls to make
transports and to serve listening sockets. The rest of the once-per-connection machinery is
asyncio's own code, reused as it is: ``create_connection``/``create_server`` (in
``BaseEventLoop``), the registration of the accept callback, the TLS accept task and
``sendfile`` (``BaseSelectorEventLoop``) and the Unix socket set-up (``_UnixSelectorEventLoop``).
The accept callback itself is here: it makes plain connections' transports at once instead of
in a task per connection.
"""

import contextvars
import errno
import inspect
import logging
import socket
from asyncio import (
    base_events,
    constants,
    futures,
    selector_events,
    transports,
    trsock,
    unix_events,
)

from . import _core, _tls
from ._transport_base import NativeTransportBase

logger = logging.getLogger("asyncio")

_selector_loop = selector_events.BaseSelectorEventLoop
_unix_loop = unix_events._UnixSelectorEventLoop

# Python 3.13 made servers track their transports: _attach/_detach take the transport.
_SERVER_TRACKS_TRANSPORTS = "transport" in inspect.signature(base_events.Server._attach).parameters


# accept() errors that mean "out of a system resource" (asyncio retries after a delay).
_ACCEPT_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _set_nodelay(sock):
    """Disable Nagle's algorithm on a TCP socket, whatever its ``proto`` field says (asyncio
    only does it when ``proto`` is ``IPPROTO_TCP``; a socket made with ``proto=0`` then
    stalls small responses for the peer's delayed ACK)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _sockname(sock):
    try:
        return sock.getsockname()
    except OSError:
        return None


def _peername(sock):
    try:
        return sock.getpeername()
    except OSError:
        return None


# The extra information every socket transport has: computed on first use (``peername``,
# unless the accept loop gave it, when the transport is made).
_SOCKET_EXTRA = {"socket": trsock.TransportSocket, "sockname": _sockname, "peername": _peername}

# asyncio's default flow-control limits (shared int objects: no allocation per transport).
_DEFAULT_HIGH_WATER = 64 * 1024
_DEFAULT_LOW_WATER = _DEFAULT_HIGH_WATER // 4


class SocketTransport(NativeTransportBase, transports._FlowControlMixin, transports.Transport):
    """A TCP or Unix stream transport."""

    __slots__ = ("__dict__", "__weakref__", "_core", "_server", "_sock", "_sock_fd")

    # Probed by asyncio (start_tls, sendfile) and by frameworks.
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        transports.BaseTransport.__init__(self, extra)
        self._loop = loop
        self._sock = None
        self._server = None
        if "peername" not in self._extra:
            # Eager, as asyncio: the peer's address is gone once it disconnects.
            self._extra["peername"] = _peername(sock)
        self._sock_fd = sock.fileno()
        _set_nodelay(sock)
        self._high_water = _DEFAULT_HIGH_WATER
        self._low_water = _DEFAULT_LOW_WATER
        self._core = _core.StreamTransport(loop, self._sock_fd, protocol, self)
        # From here on the transport owns the socket.
        self._sock = sock
        if loop._virtual_clock is not None:
            loop._classify_stream(self._core, sock, accepted=server is not None)
        if server is not None:
            self._server = server
            if _SERVER_TRACKS_TRANSPORTS:
                server._attach(self)
            else:
                server._attach()
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def _repr_io(self, sock):
        if sock is None or self._loop.is_closed():
            return ()
        state = "polling" if self._core.write_pending else "idle"
        return (
            "read=polling" if self._core.reading_watched else "read=idle",
            f"write=<{state}, bufsize={self.get_write_buffer_size()}>",
        )

    def _on_unclosed(self):
        # From 3.13 asyncio's unclosed transport leaves its server too (so that wait_closed()
        # does not wait for it).
        if _SERVER_TRACKS_TRANSPORTS and self._server is not None:
            self._server._detach(self)

    # Set in __init__ of asyncio's own transports; native state here (the others are in
    # NativeTransportBase).
    @property
    def _protocol_paused(self):
        return self._core.writing_paused

    @property
    def _eof(self):
        return self._core.eof_requested

    def get_extra_info(self, name, default=None):
        """Optional transport information: asyncio's keys ``socket``, ``sockname`` and
        ``peername``, and whatever ``extra`` the transport was made with."""
        extra = self._extra
        if name not in extra and name in _SOCKET_EXTRA and self._sock is not None:
            extra[name] = _SOCKET_EXTRA[name](self._sock)
        return extra.get(name, default)

    def _freeze_socket_extra(self):
        """Record the socket's extra information before the socket is closed (asyncio
        records ``socket`` and ``sockname`` when the transport is made; here they are
        computed on first use, which saves memory per idle connection)."""
        for name, compute in _SOCKET_EXTRA.items():
            if name not in self._extra:
                self._extra[name] = compute(self._sock)

    def close(self):
        """Close after sending what is buffered; ``connection_lost(None)`` follows."""
        self._core.close()

    def write_eof(self):
        """Shut down the write side once the buffer is sent."""
        self._core.write_eof()

    def can_write_eof(self):
        return True

    def set_write_buffer_limits(self, high=None, low=None):
        self._set_write_buffer_limits(high=high, low=low)
        self._core.set_write_buffer_limits(self._high_water, self._low_water)

    def _force_close(self, exc):
        # Called by asyncio's SSLProtocol on the transport under it.
        self._core.force_close(exc)

    def _release(self):
        """After ``connection_lost``: record the socket's extra information, close it, and
        leave the server."""
        self._freeze_socket_extra()
        self._sock.close()
        self._sock = None
        server = self._server
        if server is not None:
            self._server = None
            if _SERVER_TRACKS_TRANSPORTS:
                server._detach(self)
            else:
                server._detach()

    def _make_empty_waiter(self):
        if self._core.has_empty_waiter:
            raise RuntimeError("Empty waiter is already set")
        waiter = self._loop.create_future()
        self._core.set_empty_waiter(waiter)
        return waiter

    def _reset_empty_waiter(self):
        self._core.set_empty_waiter(None)


_core.install_transport_methods(SocketTransport)


class StreamOperations:
    """Mixin of ``Loop``: stream transports, serving, Unix sockets, sendfile."""

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        try:
            return SocketTransport(self, sock, protocol, waiter, extra, server)
        except BaseException:
            sock.close()
            raise

    def _make_ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        """TLS: asyncio's ``SSLProtocol`` (a ``BufferedProtocol`` doing TLS in memory; its
        per-record methods native, see ``_tls``) on a socket transport; the application's
        protocol gets its app-side transport."""
        ssl_protocol = _tls.PROTOCOL_CLASS(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    # Serving a listening socket: asyncio's registration of the accept callback; TLS
    # connections are set up by asyncio's task per connection (it awaits the handshake).
    _start_serving = _selector_loop._start_serving
    _accept_connection2 = _selector_loop._accept_connection2

    def _accept_connection(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        """The listening socket is readable: accept up to ``backlog`` connections.

        A plain connection gets its protocol and transport at once. (asyncio starts a task
        per connection to do that, which costs a task, a coroutine and a future per accepted
        connection, and the memory they hold while many connections arrive at once.)
        """
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                    raise  # the loop's exception handler reports it
                # Out of descriptors or memory: the socket stays readable, so stop watching
                # it for a while instead of spinning (asyncio's rule and message).
                self.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": exc,
                        "socket": trsock.TransportSocket(sock),
                    }
                )
                self._remove_reader(sock.fileno())
                self.call_later(
                    constants.ACCEPT_RETRY_DELAY,
                    self._start_serving,
                    protocol_factory,
                    sock,
                    sslcontext,
                    server,
                    backlog,
                    ssl_handshake_timeout,
                    ssl_shutdown_timeout,
                )
                return
            if self._debug:
                logger.debug("%r got a new connection from %r: %r", server, addr, conn)
            extra = {"peername": addr}
            if sslcontext:
                self.create_task(
                    self._accept_connection2(
                        protocol_factory,
                        conn,
                        extra,
                        sslcontext,
                        server,
                        ssl_handshake_timeout,
                        ssl_shutdown_timeout,
                    )
                )
            else:
                # In a fresh copy of the context, as asyncio's task per connection would run.
                contextvars.copy_context().run(
                    self._serve_connection, protocol_factory, conn, extra, server
                )

    def _serve_connection(self, protocol_factory, conn, extra, server):
        """Make the protocol and the transport of an accepted plain connection."""
        protocol = None
        try:
            protocol = protocol_factory()
            self._make_socket_transport(conn, protocol, extra=extra, server=server)
        except (SystemExit, KeyboardInterrupt):
            conn.close()
            raise
        except BaseException as exc:
            conn.close()
            if self._debug:
                context = {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                }
                if protocol is not None:
                    context["protocol"] = protocol
                self.call_exception_handler(context)

    # Unix socket set-up, as asyncio's Unix selector loop has it.
    create_unix_connection = _unix_loop.create_unix_connection
    create_unix_server = _unix_loop.create_unix_server

    # sendfile: the kernel's sendfile driven by asyncio's own loop code.
    _sock_sendfile_native = _unix_loop._sock_sendfile_native
    _sock_sendfile_native_impl = _unix_loop._sock_sendfile_native_impl
    _sock_sendfile_update_filepos = _unix_loop._sock_sendfile_update_filepos
    _sock_add_cancellation_callback = _unix_loop._sock_add_cancellation_callback

    async def _sendfile_native(self, transp, file, offset, count):
        """``loop.sendfile()`` on a ``SocketTransport``: drain its buffer, then hand its socket
        to ``sock_sendfile`` (the transport stops watching it meanwhile)."""
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        transp._core.suspend_watching()
        try:
            return await self.sock_sendfile(transp._sock, file, offset, count, fallback=False)
        finally:
            transp._reset_empty_waiter()
            if transp._sock is not None:
                transp._core.resume_watching()
            if resume_reading:
                transp.resume_reading()
