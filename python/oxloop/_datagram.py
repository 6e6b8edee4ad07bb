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

from asyncio import futures, transports, trsock

from . import _core
from ._transport_base import NativeTransportBase

_DEFAULT_HIGH_WATER = 64 * 1024
_DEFAULT_LOW_WATER = _DEFAULT_HIGH_WATER // 4


def _address(get):
    try:
        return get()
    except OSError:
        return None


class DatagramSocketTransport(
    NativeTransportBase, transports._FlowControlMixin, transports.DatagramTransport
):
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

    def _repr_io(self, sock):
        if sock is None:
            return ()
        state = "polling" if self._core.writing_watched else "idle"
        return (
            "read=polling" if self._core.reading_watched else "read=idle",
            f"write=<{state}, bufsize={self.get_write_buffer_size()}>",
        )

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

    def _force_close(self, exc):
        self._core.force_close(exc)


class DatagramOperations:
    """Mixin of ``Loop``: the datagram transport hook of ``create_datagram_endpoint``."""

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return DatagramSocketTransport(self, sock, protocol, address, waiter, extra)
