"""The Python half of a virtual-clock loop (``Loop(clock=VirtualClock())``).

What runs once per connection, executor job, server or deadlock: telling the native jump rule
(``event_loop/virtual_wait.rs``) where each stream's peer is, which threads may call into the
loop, which executor jobs are outstanding, and describing a deadlock. On a real-clock loop
none of it runs (each entry point checks ``_virtual_clock`` first) except the native hold
counters that child processes and connections in progress update.
"""

import asyncio
import os
import socket
import threading
import weakref

from ._virtual_clock import DeadlockError

# Where a stream's peer is, as the native transport takes it (see virtual_clock.rs).
_IN_LOOP = "in_loop"
_OUTSIDE_CLIENT = "outside_client"
_OUTSIDE_SERVER = "outside_server"

# The longest repr of an awaited future a deadlock report shows.
_MAX_AWAITED_REPR = 160


class VirtualTimeOperations:
    """Mixin of ``Loop``: the bookkeeping of a virtual clock."""

    def _init_virtual_time(self):
        # Stream transports whose other end may yet appear in this loop, by (family, local
        # address, peer address): a new stream whose reverse key is here is their other end.
        # (Several Unix clients of one path share a key.)
        self._unpaired_ends = {}
        # The executors this loop ran jobs in: their idle workers will not call into it.
        self._executors_used = weakref.WeakSet()

    def run_in_executor(self, executor, func, *args):
        """asyncio's ``run_in_executor``; on a virtual clock the job holds time until its
        result has reached the loop."""
        future = super().run_in_executor(executor, func, *args)
        if self._virtual_clock is not None:
            self._executors_used.add(executor if executor is not None else self._default_executor)
            self._hold_time()
            future.add_done_callback(self._executor_job_done)
        return future

    def _executor_job_done(self, future):
        self._release_time()

    def _threads_outside_loop(self):
        """How many live threads may call into the loop: all but the loop's own and the
        workers of executors it used (a busy worker's job holds time by itself)."""
        own = {self._thread_id}
        for executor in list(self._executors_used):
            own.update(thread.ident for thread in getattr(executor, "_threads", ()))
        return sum(1 for thread in threading.enumerate() if thread.ident not in own)

    def _classify_stream(self, core, sock, accepted):
        """Tell the native transport ``core`` (of a new connection on ``sock``; ``accepted``
        by one of this loop's servers) where its peer is.

        Both ends of a connection made in this loop are paired by their addresses, whichever
        transport is made first (a client's is often made before its server accepts); the
        first is classified as outside until then, which only makes it hold time for the
        iteration or two before the accept.
        """
        try:
            local, peer = sock.getsockname(), sock.getpeername()
        except OSError:
            return
        family = sock.family
        if family == socket.AF_UNIX and not local and not peer:
            core._set_peer(_IN_LOOP)  # an unnamed pair: socketpair()
            return
        other = self._pop_unpaired_end((family, peer, local))
        if other is not None:
            other._set_peer(_IN_LOOP)
            core._set_peer(_IN_LOOP)
            return
        core._set_peer(_OUTSIDE_CLIENT if accepted else _OUTSIDE_SERVER)
        self._unpaired_ends.setdefault((family, local, peer), []).append(weakref.ref(core))

    def _pop_unpaired_end(self, key):
        """A live transport waiting under ``key`` for its other end, if any (removed)."""
        ends = self._unpaired_ends.get(key)
        while ends:
            end = ends.pop(0)()
            if end is not None:
                return end
        self._unpaired_ends.pop(key, None)
        return None

    def _deadlock_error(self):
        """The ``DeadlockError`` to raise now that nothing can wake the loop, or None if a
        signal handler still may."""
        if self._signal_handlers:
            return None
        tasks = [task for task in asyncio.all_tasks(self) if not task.done()]
        if tasks:
            lines = "".join(f"\n  {_describe_waiting_task(task)}" for task in tasks)
            many = len(tasks) > 1
            waiting = f"{len(tasks)} task{'s wait' if many else ' waits'} forever:{lines}"
        else:
            waiting = "no task is waiting"
        return DeadlockError(
            "virtual clock: deadlock: nothing can wake the loop (no timer, no ready callback, "
            f"no real work outstanding, nothing outside the loop to wait for); {waiting}",
            tasks,
        )


def _describe_waiting_task(task):
    """``Task 'name': main() at app.py:9 -> Event.wait() at locks.py:213, awaiting <...>``."""
    frames = []
    coro = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        name = getattr(code, "co_qualname", code.co_name)
        frames.append(f"{name}() at {os.path.basename(code.co_filename)}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    awaited = getattr(task, "_fut_waiter", None)
    if isinstance(awaited, asyncio.Task):
        awaiting = f"awaiting task {awaited.get_name()!r}"
    elif awaited is not None:
        text = repr(awaited)
        if len(text) > _MAX_AWAITED_REPR:
            text = text[: _MAX_AWAITED_REPR - 3] + "..."
        awaiting = f"awaiting {text}"
    else:
        awaiting = "awaiting nothing the loop knows of"
    where = " -> ".join(frames) if frames else "(no frame)"
    return f"Task {task.get_name()!r}: {where}, {awaiting}"
