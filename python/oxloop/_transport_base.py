"""What the Python halves of the native transports share.

A socket, datagram or pipe transport is a Python class (``_transports.SocketTransport``,
``_datagram.DatagramSocketTransport``, ``_pipes.ReadPipeTransport``/``WritePipeTransport``)
keeping its native half (``_core.StreamTransport`` or ``_core.DatagramTransport``) in the
``_core`` slot; its per-packet methods are native (method descriptors installed on the class,
or the native bound method in a slot). ``NativeTransportBase`` is their first base: the repr,
the unclosed-transport warning, the attributes asyncio's own transports set in ``__init__``
(``_protocol``, ``_closing``, ``_conn_lost``), ``get_protocol``/``set_protocol``, ``abort``,
the report of a fatal error and ``connection_lost``. Nothing here runs per packet.
"""

import logging
import warnings

logger = logging.getLogger("asyncio")


class NativeTransportBase:
    """Mixin (first base) of the Python transport classes that wrap a native transport.

    A subclass says which of its attributes holds what the transport owns (``_OWNED``: the
    socket or the pipe object, None once closed; it is closed after ``connection_lost``) and
    which holds the descriptor's number (``_FD``); it may add to the repr (``_repr_io``), to
    the release of what it owns (``_release``) and to the clean-up of a transport collected
    unclosed (``_on_unclosed``).
    """

    __slots__ = ()

    _OWNED = "_sock"
    _FD = "_sock_fd"

    def __repr__(self):
        owned = getattr(self, self._OWNED)
        info = [self.__class__.__name__]
        if owned is None:
            info.append("closed")
        elif self.is_closing():
            info.append("closing")
        info.append(f"fd={getattr(self, self._FD)}")
        info.extend(self._repr_io(owned))
        return "<{}>".format(" ".join(info))

    def _repr_io(self, owned):
        """The end of the repr (what is watched, what is buffered); ``owned`` is None once the
        transport is closed."""
        return ()

    def __del__(self, _warn=warnings.warn):
        owned = getattr(self, self._OWNED, None)
        if owned is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._core.detach()
            owned.close()
            self._on_unclosed()

    def _on_unclosed(self):
        """The rest of the clean-up of a transport collected unclosed (after its socket or
        pipe is closed)."""

    # Set in __init__ of asyncio's own transports; native state here.
    @property
    def _protocol(self):
        return self._core.get_protocol()

    @property
    def _closing(self):
        return self.is_closing()

    @property
    def _conn_lost(self):
        return self._core.conn_lost

    def set_protocol(self, protocol):
        self._core.set_protocol(protocol)

    def get_protocol(self):
        return self._core.get_protocol()

    def abort(self):
        """Close now, dropping what is buffered; ``connection_lost(None)`` follows."""
        self._core.force_close(None)

    def _report_error(self, exc, message):
        """asyncio's report of a fatal error to the loop's exception handler."""
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )

    def _fatal_error(self, exc, message="Fatal error on transport"):
        """A failure the native half hands over: reported as asyncio does (OSErrors, a reset
        peer..., are the peer's doing: only logged in debug mode), then the transport closes
        at once."""
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=exc)
        else:
            self._report_error(exc, message)
        self._core.force_close(exc)

    def _call_connection_lost(self, exc):
        protocol = self._core.get_protocol()
        try:
            if protocol is not None:
                protocol.connection_lost(exc)
        finally:
            self._core.detach()
            self._release()

    def _release(self):
        """After ``connection_lost``: close what the transport owns, and forget it."""
        getattr(self, self._OWNED).close()
        setattr(self, self._OWNED, None)
