"""Subprocesses: the transport hook of ``BaseEventLoop.subprocess_exec``/``subprocess_shell``.

Everything here runs once per child. The transport is asyncio's own Unix subprocess
transport (``subprocess.Popen`` for spawning, every keyword argument asyncio accepts, and
``connect_read_pipe``/``connect_write_pipe`` for its pipes, which are oxloop's native pipe
transports). What oxloop adds is how the child's exit is noticed: a pidfd (Linux 5.3+)
watched by the loop like any descriptor, so no thread and no SIGCHLD handler per child. Where
``os.pidfd_open`` is missing or refused, a thread waits for the child instead, as asyncio's
``ThreadedChildWatcher`` does.

Who reaps a child: the loop, when its pidfd becomes readable (``waitpid(WNOHANG)``). A child
still running when the loop closes is handed to a daemon thread that reaps it, so closing a
loop never leaves a zombie behind; at interpreter shutdown, when no thread can start, it is
left to init, which reaps the children of an exited process.

Python 3.11 to 3.13: asyncio's policy can hold a child watcher chosen by the application
(``set_child_watcher``: a ``SafeChildWatcher``, a ``FastChildWatcher`` that reaps every child
with ``waitpid(-1)``, a ``MultiLoopChildWatcher``...). asyncio's own loop hands every child to
it, and a ``FastChildWatcher`` would reap children watched any other way, so then oxloop
hands its children to that watcher too, as asyncio does. (Those watchers are deprecated from
3.12, where asyncio's loop still uses them, and gone in 3.14; asyncio's own default ones,
threaded or pidfd, are not used: oxloop's pidfd watch does their job.)
"""

import logging
import os
import sys
import threading
from asyncio import events, unix_events

logger = logging.getLogger("asyncio")


def _application_child_watcher():
    """Python 3.11 to 3.13: the child watcher the application installed in asyncio's policy,
    unless it is one of asyncio's defaults (threaded or pidfd), whose job oxloop does itself."""
    if sys.version_info >= (3, 14):
        return None
    watcher = getattr(events.get_event_loop_policy(), "_watcher", None)
    if watcher is None or type(watcher) in (
        unix_events.ThreadedChildWatcher,
        unix_events.PidfdChildWatcher,
    ):
        return None
    return watcher


def _reap_in_thread(pid, on_exit=None):
    """Wait for ``pid`` in a daemon thread; ``on_exit(returncode)`` runs in that thread."""

    def wait():
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            returncode = 255
        else:
            returncode = os.waitstatus_to_exitcode(status)
        if on_exit is not None:
            on_exit(returncode)

    thread = threading.Thread(target=wait, name=f"oxloop-waitpid-{pid}", daemon=True)
    thread.start()


class ProcessOperations:
    """Mixin of ``Loop``: spawning children and noticing their exit."""

    async def _make_subprocess_transport(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
    ):
        installed = _application_child_watcher()
        if installed is not None:
            with installed as entered:
                # As asyncio's loop: 3.11 uses what __enter__ returned, 3.12 and 3.13 the watcher.
                watcher = entered if sys.version_info < (3, 12) else installed
                if not watcher.is_active():
                    # asyncio's message for this case.
                    raise RuntimeError(
                        "asyncio.get_child_watcher() is not activated, "
                        "subprocess support is not installed."
                    )
                return await self._spawn(
                    watcher, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, kwargs
                )
        return await self._spawn(
            None, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, kwargs
        )

    async def _spawn(
        self, watcher, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, kwargs
    ):
        """Start the child and its transport; its exit is noticed by ``watcher`` if given,
        else by the loop."""
        waiter = self.create_future()
        transport = unix_events._UnixSubprocessTransport(
            self,
            protocol,
            args,
            shell,
            stdin,
            stdout,
            stderr,
            bufsize,
            waiter=waiter,
            extra=extra,
            **kwargs,
        )
        if watcher is not None:
            watcher.add_child_handler(transport.get_pid(), self._child_watcher_callback, transport)
        else:
            self._watch_child(transport)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport

    def _watch_child(self, transport):
        """Call ``transport._process_exited(returncode)`` when the child exits."""
        pid = transport.get_pid()
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            _reap_in_thread(
                pid, lambda returncode: self._child_exited_in_thread(transport, returncode)
            )
            return
        self._child_pidfds[pidfd] = pid
        self._add_reader(pidfd, self._child_exited, pidfd, transport)
        self._hold_time()  # a running child holds a virtual clock: it works in real time

    def _child_exited(self, pidfd, transport):
        """A child's pidfd became readable: reap the child and report its exit."""
        pid = self._child_pidfds[pidfd]
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            # Reaped elsewhere (Popen.poll() in the transport's close(), or user code).
            returncode = transport._proc.returncode
            if returncode is None:
                logger.warning(
                    "child process pid %d exit status already read:  will report returncode 255",
                    pid,
                )
                returncode = 255
        else:
            if reaped == 0:
                return  # not exited after all: keep watching
            returncode = os.waitstatus_to_exitcode(status)
        self._forget_child(pidfd)
        if self._debug:
            logger.debug("process %s exited with returncode %s", pid, returncode)
        transport._process_exited(returncode)

    def _child_watcher_callback(self, pid, returncode, transport):
        """Called by an application's child watcher (maybe in another thread)."""
        self.call_soon_threadsafe(transport._process_exited, returncode)

    def _child_exited_in_thread(self, transport, returncode):
        try:
            self.call_soon_threadsafe(transport._process_exited, returncode)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting for the exit any more

    def _forget_child(self, pidfd):
        """Stop watching a child's pidfd and close it; return the child's pid."""
        pid = self._child_pidfds.pop(pidfd)
        self._remove_reader(pidfd)
        os.close(pidfd)
        self._release_time()
        return pid

    def _release_children(self):
        """The loop is closing: hand the children still running to reaping threads.

        Not at interpreter shutdown (an unclosed loop's ``__del__``): no thread can start then
        (Python 3.11's ``Thread.start()`` would wait forever for one, later versions raise),
        and none is needed, as the children of a process that exits are reaped by init.
        """
        shutting_down = sys.is_finalizing()
        for pidfd in list(self._child_pidfds):
            pid = self._forget_child(pidfd)
            if not shutting_down:
                _reap_in_thread(pid)
