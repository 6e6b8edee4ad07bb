"""``time.time()``, ``time.monotonic()``, ``time.perf_counter()`` and their ``_ns`` forms
following a virtual clock (``VirtualClock(patch_time=True)``, ``python -m oxloop
--virtual-clock``).

While at least one such loop runs, the ``time`` module's functions are replaced by wrappers
that read the virtual clock of the loop running in the calling thread, and real time in any
other thread or when no virtual-clock loop runs there. The originals are put back when the
last such loop stops. Code that bound a function before the patch (``from time import
monotonic`` at import time, as ``threading`` and ``queue`` do) keeps real time; the loop's own
clock is never patched.
"""

import threading
import time
import weakref
from asyncio import events

_NAMES = ("time", "monotonic", "perf_counter", "time_ns", "monotonic_ns", "perf_counter_ns")

_real = {name: getattr(time, name) for name in _NAMES}
_lock = threading.Lock()
_users = 0
# For each clock seen: the real ``time_ns()`` and ``perf_counter_ns()`` readings its start
# corresponds to (taken when it first ran with the patch).
_origins = weakref.WeakKeyDictionary()


def _virtual_clock():
    """The patching virtual clock of the loop running in this thread, or None."""
    clock = getattr(events._get_running_loop(), "_virtual_clock", None)
    return clock if clock is not None and clock.patch_time else None


def _elapsed_ns(clock):
    return clock.time_ns() - round(clock.start * 1e9)


def _make(name):
    """The patched ``time.<name>``: ``monotonic`` reads the loop's time itself (so the two
    compare equal); ``time`` and ``perf_counter`` their real reading at the clock's start plus
    the virtual time elapsed since."""
    real = _real[name]
    in_ns = name.endswith("_ns")
    reading = name.removesuffix("_ns")

    if reading == "monotonic":

        def patched():
            clock = _virtual_clock()
            if clock is None:
                return real()
            return clock.time_ns() if in_ns else clock.time()

    else:
        index = 0 if reading == "time" else 1

        def patched():
            clock = _virtual_clock()
            if clock is None:
                return real()
            now_ns = _origins[clock][index] + _elapsed_ns(clock)
            return now_ns if in_ns else now_ns / 1e9

    patched.__name__ = patched.__qualname__ = name
    patched.__doc__ = real.__doc__
    return patched


_patched = {name: _make(name) for name in _NAMES}


def enter(clock):
    """A loop with ``clock`` (patch_time=True) starts running: patch, if not patched yet."""
    global _users
    with _lock:
        if clock not in _origins:
            _origins[clock] = (_real["time_ns"](), _real["perf_counter_ns"]())
        _users += 1
        if _users == 1:
            for name, function in _patched.items():
                setattr(time, name, function)


def leave():
    """Such a loop stopped: restore the originals when it was the last."""
    global _users
    with _lock:
        _users -= 1
        if _users == 0:
            for name, function in _real.items():
                setattr(time, name, function)
