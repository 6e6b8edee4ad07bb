"""Unix signal handlers for ``Loop`` (``add_signal_handler`` and friends).

Signals arrive once in a while, so this is Python. The signal module's C handler writes the
signal number to the loop's wakeup pipe (``signal.set_wakeup_fd``), which ends the loop's
wait (the native core drains the pipe); the loop then runs Python's pending signal handlers
(``PyErr_CheckSignals``, every iteration), and ours schedules the registered callback.

The same wakeup fd also makes Ctrl+C interrupt a waiting loop: ``run_forever`` installs it on
the main thread when nobody else has one, so SIGINT wakes the poll even if the kernel
delivered it to another thread.
"""

import errno
import logging
import signal
import sys
import threading
import warnings
import weakref
from asyncio import coroutines, events

logger = logging.getLogger("asyncio")


class _SignalDispatcher:
    """The Python-level handler of a signal the loop handles: schedules its callback.

    Holds the loop weakly, so an installed handler does not keep a forgotten loop alive.
    """

    def __init__(self, loop):
        self._loop = weakref.ref(loop)

    def __call__(self, signum, frame):
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            loop._handle_signal(signum)


def _run_unless_cancelled(handle):
    """Run a signal handler's handle, unless it was cancelled since the signal arrived."""
    if not handle.cancelled():
        handle._run()


class SignalOperations:
    """Mixin of ``Loop``: signal handlers. Expects ``_self_writer`` and ``_signal_handlers``."""

    def add_signal_handler(self, sig, callback, *args):
        """Run ``callback(*args)`` on the loop whenever signal ``sig`` arrives.

        Main thread only. Raises ValueError for an invalid signal, RuntimeError for one that
        cannot be caught or when not called from the main thread.
        """
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # Also the check that this is the main thread: set_wakeup_fd raises elsewhere.
            signal.set_wakeup_fd(self._self_writer.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))  # noqa: B904 (chained implicitly, as asyncio does)
        self._owns_wakeup_fd = True
        # asyncio's own Handle: it lives as long as the registration, and its errors reach the
        # exception handler exactly as asyncio reports them.
        self._signal_handlers[sig] = events.Handle(callback, args, self, None)
        try:
            signal.signal(sig, _SignalDispatcher(self))
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                self._release_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")  # noqa: B904 (as asyncio)
            raise

    def remove_signal_handler(self, sig):
        """Remove the handler of ``sig``; return whether there was one."""
        self._check_signal(sig)
        handle = self._signal_handlers.pop(sig, None)
        if handle is None:
            return False
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, default)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")  # noqa: B904 (as asyncio)
            raise
        if not self._signal_handlers:
            self._release_wakeup_fd()
        return True

    def _check_signal(self, sig):
        """asyncio's validation of a signal number."""
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def _handle_signal(self, sig):
        """Schedule the callback of ``sig`` (called by its Python-level signal handler, on the
        main thread, possibly while the loop runs in another)."""
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return
        if handle.cancelled():
            self.remove_signal_handler(sig)
        else:
            self.call_soon_threadsafe(_run_unless_cancelled, handle)

    def _claim_wakeup_fd(self):
        """Install the self-pipe as the wakeup fd if we are on the main thread and no one else
        has one, for the duration of ``run_forever``. Returns whether it must be released
        afterwards."""
        if threading.current_thread() is not threading.main_thread():
            return False
        if self._owns_wakeup_fd:
            # Installed for signal handlers: keep it while we run, even if they go.
            self._wakeup_fd_needed_by_run = True
            return True
        ours = self._self_writer.fileno()
        try:
            previous = signal.set_wakeup_fd(ours, warn_on_full_buffer=False)
        except ValueError:  # not the main interpreter
            return False
        if previous not in (-1, ours):
            # Someone else's: leave it in place (its warn_on_full_buffer flag cannot be read
            # back, so it is restored with the default).
            signal.set_wakeup_fd(previous)
            return False
        self._owns_wakeup_fd = True
        self._wakeup_fd_needed_by_run = True
        return True

    def _end_run_wakeup_fd(self):
        """``run_forever`` is over: release the wakeup fd unless signal handlers need it."""
        self._wakeup_fd_needed_by_run = False
        self._release_wakeup_fd()

    def _release_wakeup_fd(self):
        """Uninstall the wakeup fd, unless signal handlers or a running loop still need it."""
        if self._signal_handlers or self._wakeup_fd_needed_by_run or not self._owns_wakeup_fd:
            return
        self._owns_wakeup_fd = False
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(-1) failed: %s", exc)

    def _remove_all_signal_handlers(self):
        """On close: restore the default handlers of every signal we handle."""
        if not self._signal_handlers:
            return
        if sys.is_finalizing():
            warnings.warn(
                f"Closing the loop {self!r} on interpreter shutdown stage, "
                "skipping signal handlers removal",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )
            self._signal_handlers.clear()
            return
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
