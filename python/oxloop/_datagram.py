"""Datagram transports (UDP and Unix datagram sockets): the hook of
``BaseEventLoop.create_datagram_endpoint``.

``create_datagram_endpoint`` itself (argument checks, resolving, binding, connecting,
``reuse_port``, ``allow_broadcast``, ``sock=``) is asyncio's code in ``BaseEventLoop``; it
hands the socket to ``_make_datagram_transport``. The transport's per-datagram work is native
(``_core.DatagramTransport``): receiving, ``datagram_received``, ``sendto`` (stored in the
``sendto`` slot as the native bound method, so a call reaches Rust directly) and buffering.
What is here runs once per endpoint, or only when the kernel's buffer is full: set-up,
flow control, closing and error reports, as asyncio's ``_SelectorDatagramTransport`` does.
"""

import logging
import warnings
from asyncio import futures, transports, trsock

from . import _core

logger = logging.getLogger("asyncio")

_DEFAULT_HIGH_WATER = 64 * 1024
_DEFAULT_LOW_WATER = _DEFAULT_HIGH_WATER // 4


def _address(get):
    try:
        return get()
    except OSError:
        return None


class DatagramSocketTransport(transports._FlowControlMixin, transports.DatagramTransport):
    """A UDP or Unix datagram transport (an ``asyncio.DatagramTransport``, and an
    ``asyncio.Transport`` as asyncio's own datagram transport is)."""

    __slots__ = ("__dict__", "__weakref__", "_core", "_sock", "_sock_fd", "sendto")

    max_size = 256 * 1024  # the largest datagram received whole

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        transports.BaseTransport.__init__(self, extra)
        self._extra["socket"] = trsock.TransportSocket(sock)
        self._extra["sockname"] = _address(sock.getsockname)
        if "peername" not in self._extra:
            self._extra["peername"] = _address(sock.getpeername)
        self._loop = loop
        self._protocol_paused = False
        self._high_water = _DEFAULT_HIGH_WATER
        self._low_water = _DEFAULT_LOW_WATER
        self._sock_fd = sock.fileno()
        self._sock = None
        self._core = _core.DatagramTransport(
            loop, sock, protocol, self, address, bool(self._extra["peername"])
        )
        self.sendto = self._core.sendto
        # From here on the transport owns the socket.
        self._sock = sock
        loop._transports[self._sock_fd] = self
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self.is_closing():
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._sock is not None:
            info.append("read=polling" if self._core.reading_watched else "read=idle")
            state = "polling" if self._core.writing_watched else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn):
        if getattr(self, "_sock", None) is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._core.detach()
            self._sock.close()

    @property
    def _protocol(self):
        return self._core.get_protocol()

    @property
    def _closing(self):
        return self._core.is_closing()

    @property
    def _conn_lost(self):
        return self._core.conn_lost

    def set_protocol(self, protocol):
        self._core.set_protocol(protocol)

    def get_protocol(self):
        return self._core.get_protocol()

    def get_write_buffer_size(self):
        return self._core.get_write_buffer_size()

    def is_closing(self):
        return self._core.is_closing()

    def is_reading(self):
        return self._core.is_reading()

    def pause_reading(self):
        self._core.pause_reading()

    def resume_reading(self):
        self._core.resume_reading()

    def close(self):
        """Stop receiving; ``connection_lost(None)`` follows once the buffer is sent."""
        self._core.close()

    def abort(self):
        """Close now, dropping buffered datagrams; ``connection_lost(None)`` follows."""
        self._core.force_close(None)

    def _force_close(self, exc):
        self._core.force_close(exc)

    def _fatal_error(self, exc, message="Fatal error on transport"):
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=exc)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _call_connection_lost(self, exc):
        protocol = self._core.get_protocol()
        try:
            if protocol is not None:
                protocol.connection_lost(exc)
        finally:
            self._core.detach()
            self._sock.close()
            self._sock = None


class DatagramOperations:
    """Mixin of ``Loop``: the datagram transport hook of ``create_datagram_endpoint``."""

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return DatagramSocketTransport(self, sock, protocol, address, waiter, extra)
