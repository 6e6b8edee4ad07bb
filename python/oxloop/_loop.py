"""``Loop``: oxloop's event loop.

The per-callback machinery (ready queue, timers, fd watching, the iteration itself) is native,
in ``_core.LoopCore``. This module adds what runs once per loop or once per call that is not
hot: entering and leaving ``run_forever``, closing, signal handlers, and
asyncio's own Python code for the rest (``asyncio.BaseEventLoop``: tasks, futures, exception
handling, the default executor, async generator hooks, connection set-up).
"""

import asyncio
import logging
import os
import socket
import sys
import threading
import weakref
from asyncio import base_events, events

from . import _core, _time_patch
from ._datagram import DatagramOperations
from ._dns import ResolverOperations
from ._pipes import PipeOperations
from ._signals import SignalOperations
from ._sockets import SocketOperations
from ._subprocess import ProcessOperations
from ._transports import StreamOperations
from ._virtual_time import VirtualTimeOperations

logger = logging.getLogger("asyncio")


class Loop(
    _core.LoopCore,
    VirtualTimeOperations,
    SocketOperations,
    StreamOperations,
    DatagramOperations,
    PipeOperations,
    ProcessOperations,
    SignalOperations,
    ResolverOperations,
    asyncio.BaseEventLoop,
):
    """An asyncio event loop whose core is written in Rust.

    ``Loop(clock=None)``: with an ``oxloop.VirtualClock``, the loop runs on virtual time (see
    ``oxloop.VirtualClock``); without, on the real monotonic clock.
    """

    def __init__(self, *, clock=None):
        # ``clock`` was taken by the native constructor (``_core.LoopCore.__new__``).
        asyncio.BaseEventLoop.__init__(self)
        self._init_virtual_time()
        # asyncio keeps its queues in these; ours live in the native core.
        del self._ready, self._scheduled
        # Transports made in Python (datagram), by fd, as asyncio keeps them: their fds
        # cannot be watched by user code while they are open. (Stream and pipe transports
        # are known to the native core.)
        self._transports = weakref.WeakValueDictionary()
        # The pidfds of running children, with their pids (see _subprocess.py).
        self._child_pidfds = {}
        # Listening Unix sockets whose file _stop_serving removes, with the file's inode:
        # filled by Python 3.13's create_unix_server (asyncio's, borrowed by StreamOperations;
        # cleanup_socket=True), which reads this attribute; older versions leave it empty.
        self._unix_server_sockets = {}
        self._signal_handlers = {}
        self._self_reader, self._self_writer = socket.socketpair()
        self._self_reader.setblocking(False)
        self._self_writer.setblocking(False)
        self._internal_fds += 1
        self._set_wakeup_reader(self._self_reader.fileno())
        self._owns_wakeup_fd = False
        self._wakeup_fd_needed_by_run = False

    def run_forever(self):
        """Run until ``stop()`` is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        claimed_wakeup_fd = self._claim_wakeup_fd()
        clock = self._virtual_clock
        patches_time = clock is not None and clock.patch_time
        if patches_time:
            _time_patch.enter(clock)
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)
            self._run_until_stopped()
        finally:
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)
            if claimed_wakeup_fd:
                self._end_run_wakeup_fd()
            if patches_time:
                _time_patch.leave()

    def close(self):
        """Close the loop: drop pending callbacks, stop watching fds, shut the executor down.

        The loop must not be running. Closing twice does nothing.
        """
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self._debug:
            logger.debug("Close %r", self)
        self._remove_all_signal_handlers()
        self._release_children()
        self._close_core()
        self._self_reader.close()
        self._self_writer.close()
        self._internal_fds -= 1
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    def _stop_serving(self, sock):
        """Stop accepting on a listening socket and close it (asyncio's ``Server`` calls it).

        The file of a Unix socket that ``create_unix_server`` bound with ``cleanup_socket``
        (Python 3.13+) is removed too, unless it is no longer the socket's (another socket was
        bound to the path since), as asyncio's Unix loop does.
        """
        inode = self._unix_server_sockets.pop(sock, None)
        path = sock.getsockname() if inode is not None else None
        self.remove_reader(sock.fileno())
        sock.close()
        if path is not None:
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

    def _write_to_self(self):
        """Wake the loop from another thread."""
        self.call_soon_threadsafe(_do_nothing)

    def _log_slow_callback(self, handle, seconds):
        """Debug mode: report a callback that blocked the loop (naming its task, if any)."""
        what = handle if isinstance(handle, str) else base_events._format_handle(handle)
        logger.warning("Executing %s took %.3f seconds", what, seconds)


def _do_nothing():
    pass
