//! The loop's scheduling state ([`LoopState`]), the part of a loop its handles and transports
//! share ([`LoopShared`]) and their reference to it ([`LoopRef`]).
//!
//! Invariants:
//! - All scheduling state lives in [`LoopShared::state`], a [`GilCell`], borrowed by the rule
//!   stated there (a drop during the borrow could run a finalizer that schedules a callback).
//! - The loop owns its epoll registrar and waker (closed when `release_everything` drops
//!   them), never a watched descriptor.
//! - Handles and transports refer to their loop through a [`LoopRef`], never to the Python loop
//!   object (a weak reference in `loop_object`), so they never keep an unclosed loop alive.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use oxloop_core::counters::Counters;
use oxloop_core::reactor::{Registrar, Waker};
use oxloop_core::ready::ReadyQueue;
use oxloop_core::timers::TimerHeap;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyWeakrefReference;

use crate::gil_cell::{GilCell, GilRefMut};
use crate::handles::{Handle, ScheduledTimer};
use crate::stream::StreamTransport;

/// The most one read asks for (asyncio's `max_size`): the size of the loop's read buffer.
pub(crate) const MAX_READ: usize = 256 * 1024;

/// One entry of the ready queue.
pub(crate) enum Runnable {
    /// A callback (`call_soon`, a due timer, an `add_reader` watcher...).
    Callback(Py<Handle>),
    /// A read by a stream transport (its socket became readable, or a read is due).
    StreamRead(Py<StreamTransport>),
    /// A flush by a stream transport whose socket became writable.
    StreamWrite(Py<StreamTransport>),
}

/// Everything the loop schedules, borrowed through [`LoopShared::state`].
pub(super) struct LoopState {
    pub(super) ready: ReadyQueue<Runnable>,
    pub(super) timers: TimerHeap<ScheduledTimer>,
    /// Registers fds with the epoll instance; None once the loop is closed.
    pub(super) registrar: Option<Registrar>,
    /// Wakes a waiting poll; None once the loop is closed.
    pub(super) waker: Option<Arc<Waker>>,
    pub(super) fd_callbacks: HashMap<RawFd, FdCallbacks>,
    /// Stream transports, by descriptor (watched edge-triggered, both directions).
    pub(super) streams: HashMap<RawFd, Py<StreamTransport>>,
    /// Transports written to during this iteration, flushed at its end.
    pub(super) flush_queue: Vec<Py<StreamTransport>>,
    pub(super) counters: Counters,
    /// The loop is (about to be) blocked in its poll: threadsafe calls must wake it.
    pub(super) waiting: bool,
    /// The read end of the signal wakeup pipe (`signal.set_wakeup_fd`), drained natively: it
    /// only exists to end a wait when a signal arrives.
    pub(super) wakeup_reader: Option<RawFd>,
    /// Virtual clock: real work in progress that keeps time from jumping (`_hold_time`).
    pub(super) time_holds: usize,
    /// Virtual clock: futures to resolve when the loop is next idle (`_add_idle_waiter`).
    pub(super) idle_waiters: Vec<Py<PyAny>>,
}

/// The callbacks watching one file descriptor, and the file object first registered for it
/// (as asyncio's selector keeps it: `remove_reader` finds the registration of a file object
/// closed since by identity).
pub(super) struct FdCallbacks {
    /// The file object first registered for the descriptor.
    pub(super) fileobj: Py<PyAny>,
    /// The callback watching for reading.
    pub(super) reader: Option<Py<Handle>>,
    /// The callback watching for writing.
    pub(super) writer: Option<Py<Handle>>,
}

/// The part of a loop its handles share: the scheduling state, the debug flag and a weak
/// reference to the Python loop object (handles must not keep the loop alive).
///
/// A Python object (never exposed) so that the references the loop, its handles and its
/// transports hold ([`LoopRef`]) are counted by the interpreter's reference count, which
/// the GIL guards: an `Arc` would cost two atomic instructions per handle.
#[pyclass(module = "oxloop._core", frozen)]
pub(crate) struct LoopShared {
    pub(super) state: GilCell<LoopState>,
    pub(super) debug: AtomicBool,
    pub(super) loop_object: PyOnceLock<Py<PyWeakrefReference>>,
    /// Where stream transports read before copying into `bytes` (allocated on first use;
    /// only the loop's thread reads).
    pub(super) read_buffer: GilCell<Vec<u8>>,
    /// Whether `state.flush_queue` may hold transports: set when one is queued, so that an
    /// iteration with nothing to flush does not borrow the state to find out.
    pub(super) flush_queued: AtomicBool,
}

/// A reference to a loop's [`LoopShared`], as the loop, its handles and its transports hold
/// it.
pub(crate) struct LoopRef(Py<LoopShared>);

impl LoopRef {
    /// A new loop's shared part, watching with `registrar` and woken by `waker`.
    pub(super) fn new(py: Python<'_>, registrar: Registrar, waker: Arc<Waker>) -> PyResult<Self> {
        let shared = LoopShared {
            debug: AtomicBool::new(false),
            loop_object: PyOnceLock::new(),
            read_buffer: GilCell::new(Vec::new()),
            flush_queued: AtomicBool::new(false),
            state: GilCell::new(LoopState {
                ready: ReadyQueue::new(),
                timers: TimerHeap::new(),
                registrar: Some(registrar),
                waker: Some(waker),
                fd_callbacks: HashMap::new(),
                streams: HashMap::new(),
                flush_queue: Vec::new(),
                counters: Counters::default(),
                waiting: false,
                wakeup_reader: None,
                time_holds: 0,
                idle_waiters: Vec::new(),
            }),
        };
        Ok(LoopRef(Py::new(py, shared)?))
    }

    /// Another reference to the same loop.
    pub(crate) fn clone_ref(&self, py: Python<'_>) -> Self {
        LoopRef(self.0.clone_ref(py))
    }
}

impl std::ops::Deref for LoopRef {
    type Target = LoopShared;

    #[inline]
    fn deref(&self) -> &LoopShared {
        self.0.get()
    }
}

impl LoopShared {
    /// Borrows the scheduling state (by the rule of [`GilCell`]).
    #[inline]
    pub(super) fn state<'a>(&'a self, py: Python<'a>) -> GilRefMut<'a, LoopState> {
        self.state.borrow_mut(py)
    }

    /// Whether debug mode is on.
    #[inline]
    pub(crate) fn debug_enabled(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// Called by a `TimerHandle` cancelled while still in the heap.
    pub(crate) fn timer_cancelled(&self, py: Python<'_>) {
        let mut state = self.state(py);
        state.timers.note_cancelled();
        state.counters.timers_cancelled += 1;
    }

    /// Called when a callback's exception goes to the exception handler.
    pub(crate) fn note_callback_error(&self, py: Python<'_>) {
        self.state(py).counters.callback_errors += 1;
    }

    /// The Python loop object, if it is still alive.
    pub(crate) fn loop_object<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.loop_object.get(py).and_then(|weak| weak.bind(py).upgrade())
    }

    /// Whether the loop has let go of everything (it was closed, or freed): its registrar is
    /// gone (`release_everything`).
    pub(crate) fn is_released(&self, py: Python<'_>) -> bool {
        self.state(py).registrar.is_none()
    }

    /// Runs `f` on the loop's read buffer ([`MAX_READ`] bytes).
    /// `f` must not run Python code (the buffer is borrowed by the rule of [`GilCell`]).
    pub(crate) fn with_read_buffer<R>(&self, py: Python<'_>, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut buffer = self.read_buffer.borrow_mut(py);
        if buffer.is_empty() {
            buffer.resize(MAX_READ, 0);
        }
        f(&mut buffer)
    }

    /// Queues a read of a stream transport for the next iteration.
    pub(crate) fn schedule_stream_read(&self, py: Python<'_>, transport: Py<StreamTransport>) {
        self.state(py).ready.push(Runnable::StreamRead(transport));
    }

    /// Queues a stream transport for the end-of-iteration flush.
    pub(crate) fn queue_flush(&self, py: Python<'_>, transport: Py<StreamTransport>) {
        self.state(py).flush_queue.push(transport);
        self.flush_queued.store(true, Ordering::Relaxed);
    }

    /// Removes every pending callback, timer and fd watch, and drops their callbacks (the
    /// loop is closing or being freed). Nothing is dropped during the state borrow.
    pub(super) fn release_everything(&self, py: Python<'_>) {
        let (ready, timers, watchers, streams, queued) = {
            let mut state = self.state(py);
            // Dropping the registrar and the waker lets go of their shares of the epoll
            // instance and the eventfd; each closes once the reactor (dropped in
            // `_close_core`) has let go of it too.
            if let Some(mut registrar) = state.registrar.take() {
                registrar.unwatch_all();
            }
            state.waker = None;
            let watchers: Vec<FdCallbacks> = state.fd_callbacks.drain().map(|(_, w)| w).collect();
            let streams: Vec<Py<StreamTransport>> = state.streams.drain().map(|(_, t)| t).collect();
            let flushes = std::mem::take(&mut state.flush_queue);
            let idle_waiters = std::mem::take(&mut state.idle_waiters);
            let ready = state.ready.drain_all();
            (ready, state.timers.drain_all(), watchers, streams, (flushes, idle_waiters))
        };
        for item in &ready {
            if let Runnable::Callback(handle) = item {
                handle.get().release_callback(py);
            }
        }
        // Transports are not closed (as with asyncio, an unclosed transport warns when it is
        // freed), but they let go of their protocols so that nothing stays in a cycle.
        for transport in &streams {
            transport.get().abandon(py);
        }
        for timer in &timers {
            timer.bind(py).as_super().get().release_callback(py);
        }
        for watcher in &watchers {
            for handle in watcher.reader.iter().chain(watcher.writer.iter()) {
                handle.get().release_callback(py);
            }
        }
        drop((ready, timers, watchers, streams, queued));
    }
}
