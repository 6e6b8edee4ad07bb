"""Pipe transports: ``connect_read_pipe`` and ``connect_write_pipe`` (and the pipes of
subprocesses, which asyncio connects with them).

The per-packet work is native: a pipe transport is a ``_core.StreamTransport`` made with
``kind="read_pipe"`` or ``"write_pipe"`` (reads into ``bytes``, buffered vectored writes, flow
control), kept in the ``_core`` slot, with the per-packet methods installed as native method
descriptors. What is here runs once per pipe, and follows asyncio's Unix pipe transports
(``_UnixReadPipeTransport`` and ``_UnixWritePipeTransport``): which descriptors are accepted,
end of file and a vanished reader closing the transport, which errors reach the exception
handler, and closing the pipe object after ``connection_lost``.
"""

import errno
import os
import stat
from asyncio import futures, transports

from . import _core
from ._transport_base import NativeTransportBase, logger

_DEFAULT_HIGH_WATER = 64 * 1024
_DEFAULT_LOW_WATER = _DEFAULT_HIGH_WATER // 4


class _PipeTransportBase(NativeTransportBase):
    """What both pipe transports share: the pipe object and the native half.

    ``_adopt`` sets ``_core`` (a ``_core.StreamTransport``) and ``_pipe`` (the pipe object,
    owned from then on and closed after ``connection_lost``).
    """

    __slots__ = ()

    _OWNED = "_pipe"
    _FD = "_fileno"

    def _adopt(self, loop, pipe, protocol, kind):
        """Make the native half for ``pipe``; from here on the transport owns the pipe."""
        self._extra["pipe"] = pipe
        self._loop = loop
        self._pipe = None
        self._fileno = pipe.fileno()
        os.set_blocking(self._fileno, False)
        self._core = _core.StreamTransport(loop, self._fileno, protocol, self, kind)
        self._pipe = pipe

    def _repr_io(self, pipe):
        # asyncio's form for a loop without a selector: "open" or "closed".
        return ("open" if pipe is not None else "closed",)


class ReadPipeTransport(_PipeTransportBase, transports.ReadTransport):
    """The read end of a pipe, a pty or a socket: ``data_received`` until end of file, then
    ``eof_received`` and ``connection_lost(None)``."""

    __slots__ = ("__dict__", "__weakref__", "_core", "_fileno", "_loop", "_pipe")

    max_size = 256 * 1024  # the most one read asks for

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        transports.ReadTransport.__init__(self, extra)
        mode = os.fstat(pipe.fileno()).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            raise ValueError("Pipe transport is for pipes/sockets only.")
        self._adopt(loop, pipe, protocol, "read_pipe")
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def close(self):
        """Stop reading; ``connection_lost(None)`` follows."""
        self._core.close()

    def _fatal_error(self, exc, message="Fatal error on pipe transport"):
        # EIO is how a pty reports that its other side closed: not an error worth reporting.
        if isinstance(exc, OSError) and exc.errno == errno.EIO:
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=exc)
        else:
            self._report_error(exc, message)
        self._core.force_close(exc)


_core.install_transport_methods(
    ReadPipeTransport, ["is_closing", "is_reading", "pause_reading", "resume_reading"]
)


class WritePipeTransport(
    _PipeTransportBase, transports._FlowControlMixin, transports.WriteTransport
):
    """The write end of a pipe, a pty or a socket. ``close()`` and ``write_eof()`` close the
    pipe once the buffer is sent; the reader going away closes the transport."""

    __slots__ = ("__dict__", "__weakref__", "_core", "_fileno", "_pipe")

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        transports.WriteTransport.__init__(self, extra)
        mode = os.fstat(pipe.fileno()).st_mode
        is_socket = stat.S_ISSOCK(mode)
        is_fifo = stat.S_ISFIFO(mode)
        if not (stat.S_ISCHR(mode) or is_fifo or is_socket):
            raise ValueError("Pipe transport is only for pipes, sockets and character devices")
        self._high_water = _DEFAULT_HIGH_WATER
        self._low_water = _DEFAULT_LOW_WATER
        self._adopt(loop, pipe, protocol, "write_pipe")
        loop.call_soon(protocol.connection_made, self)
        if is_socket or is_fifo:
            # asyncio learns of the reader going away this way for pipes and sockets.
            loop.call_soon(self._core._watch_peer_close)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    @property
    def _protocol_paused(self):
        return self._core.writing_paused

    def can_write_eof(self):
        return True

    def write_eof(self):
        """Close the pipe once the buffer is sent (a pipe has no half-close)."""
        self._core.close()

    def close(self):
        """Close the pipe once the buffer is sent; ``connection_lost(None)`` follows."""
        if self._pipe is not None:
            self._core.close()

    def set_write_buffer_limits(self, high=None, low=None):
        self._set_write_buffer_limits(high=high, low=low)
        self._core.set_write_buffer_limits(self._high_water, self._low_water)

    def _fatal_error(self, exc, message="Fatal error on pipe transport"):
        # OSErrors (a reader that went away...) are only logged in debug mode.
        NativeTransportBase._fatal_error(self, exc, message)


_core.install_transport_methods(
    WritePipeTransport, ["write", "writelines", "is_closing", "get_write_buffer_size"]
)


class PipeOperations:
    """Mixin of ``Loop``: the pipe transport hooks of ``BaseEventLoop``'s
    ``connect_read_pipe`` and ``connect_write_pipe``."""

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return WritePipeTransport(self, pipe, protocol, waiter, extra)
