"""Type stubs of ``oxloop._core``, the native half of oxloop (crates/oxloop-py).

``LoopCore`` is the base class of ``oxloop.Loop``; ``Handle`` and ``TimerHandle`` are what its
scheduling methods return. ``tests/test_stubs.py`` checks these stubs against the built
extension with ``mypy.stubtest``: keep them in step with the ``#[pymethods]`` blocks.
"""

import asyncio
import socket
from collections.abc import Callable, Coroutine, Generator
from contextvars import Context
from typing import Any, TypedDict, TypeVar, TypeVarTuple, Unpack, final

from _typeshed import FileDescriptorLike
from typing_extensions import disjoint_base

__all__ = ["Handle", "LoopCore", "TimerHandle", "getaddrinfo_literal"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

_GetAddrInfoEntry = tuple[
    socket.AddressFamily | int,
    socket.SocketKind | int,
    int,
    str,
    tuple[str, int] | tuple[str, int, int, int],
]

class _Counters(TypedDict):
    """What ``LoopCore._counters()`` returns: running totals, then the current sizes."""

    iterations: int
    callbacks_run: int
    callback_errors: int
    timers_scheduled: int
    timers_cancelled: int
    io_events: int
    polls: int
    poll_wait_seconds: float
    ready: int
    timers: int
    watched_fds: int

@disjoint_base
class LoopCore:
    """The native half of ``oxloop.Loop``: ready queue, timers, fd watching, the iteration."""

    # Accepts and ignores any arguments, so that subclasses may define their own __init__.
    def __new__(cls, *_args: Any, **_kwargs: Any) -> LoopCore: ...

    # -- Scheduling ------------------------------------------------------------------------
    def time(self) -> float: ...
    # callback is positional-only here (hand-written vectorcall entry points, fastcall.rs);
    # asyncio's own call_soon also accepts callback=... as a keyword.
    def call_soon(
        self, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts], context: Context | None = None
    ) -> Handle: ...
    def call_soon_threadsafe(
        self, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts], context: Context | None = None
    ) -> Handle: ...
    def call_at(
        self, when: float, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts], context: Context | None = None
    ) -> TimerHandle: ...
    def call_later(
        self, delay: float, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts], context: Context | None = None
    ) -> TimerHandle: ...

    # -- Futures and tasks (asyncio's own classes, or what the task factory makes) ---------
    def create_future(self) -> asyncio.Future[Any]: ...
    def create_task(
        self,
        coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
        *,
        name: object = None,
        context: Context | None = None,
        **kwargs: Any,
    ) -> asyncio.Task[_T]: ...

    # -- Running and closing ---------------------------------------------------------------
    def get_debug(self) -> bool: ...
    def stop(self) -> None: ...
    def is_running(self) -> bool: ...
    def is_closed(self) -> bool: ...
    def _check_closed(self) -> None: ...
    def _run_until_stopped(self) -> None: ...
    def _run_once(self) -> None: ...
    def _close_core(self) -> None: ...
    def _set_wakeup_reader(self, fd: int) -> None: ...

    # -- File descriptors -----------------------------------------------------------------
    def add_reader(
        self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> None: ...
    def _add_reader(
        self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> Handle: ...
    def remove_reader(self, fd: FileDescriptorLike) -> bool: ...
    def add_writer(
        self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> None: ...
    def _add_writer(
        self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> Handle: ...
    def remove_writer(self, fd: FileDescriptorLike) -> bool: ...

    # -- Metrics ---------------------------------------------------------------------------
    def _counters(self) -> _Counters: ...

    # -- asyncio.BaseEventLoop's attributes, kept natively ---------------------------------
    @property
    def _debug(self) -> bool: ...
    @_debug.setter
    def _debug(self, enabled: object) -> None: ...  # any object, read for its truth value
    @property
    def _closed(self) -> bool: ...
    @_closed.setter
    def _closed(self, closed: bool) -> None: ...
    @property
    def _stopping(self) -> bool: ...
    @_stopping.setter
    def _stopping(self, stopping: bool) -> None: ...
    @property
    def _thread_id(self) -> int | None: ...
    @_thread_id.setter
    def _thread_id(self, thread_id: int | None) -> None: ...
    @property
    def _task_factory(self) -> Callable[..., Any] | None: ...
    @_task_factory.setter
    def _task_factory(self, factory: Callable[..., Any] | None) -> None: ...

@disjoint_base
class Handle:
    """A callback scheduled on a loop: ``call_soon``, ``add_reader`` and friends return one.

    Not constructible from Python (the loop makes them). A one-shot handle (``call_soon``,
    timers) drops its callback and arguments once it has run; every handle drops them when
    cancelled: ``_callback`` and ``_args`` are then None.
    """

    def cancel(self) -> None: ...
    def cancelled(self) -> bool: ...
    def get_context(self) -> Context: ...
    def _run(self) -> None: ...
    @property
    def _callback(self) -> Callable[..., object] | None: ...
    @property
    def _args(self) -> tuple[Any, ...] | None: ...
    @property
    def _cancelled(self) -> bool: ...
    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None: ...
    @property
    def _context(self) -> Context: ...
    @property
    def _source_traceback(self) -> Any | None: ...  # asyncio.format_helpers.extract_stack's list

@final
class TimerHandle(Handle):
    """A callback scheduled for a point in time on the loop's clock (``call_at``/``call_later``)."""

    def when(self) -> float: ...
    def __hash__(self) -> int: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __lt__(self, value: TimerHandle, /) -> bool: ...
    def __le__(self, value: TimerHandle, /) -> bool: ...
    def __gt__(self, value: TimerHandle, /) -> bool: ...
    def __ge__(self, value: TimerHandle, /) -> bool: ...
    @property
    def _when(self) -> float: ...
    @property
    def _scheduled(self) -> bool: ...

def getaddrinfo_literal(
    host: bytes | str | None,
    port: bytes | str | int | None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> list[_GetAddrInfoEntry] | None: ...
