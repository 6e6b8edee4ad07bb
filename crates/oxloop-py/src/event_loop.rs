//! `LoopCore`: the native half of `oxloop.Loop` — ready queue, timers, fd watching and the
//! iteration that runs them.
//!
//! Invariants:
//! - Python code (`oxloop.Loop`, a subclass) does the once-per-loop work; everything that runs
//!   per callback, per timer or per event is here.
//! - All scheduling state lives in `state`, a [`GilCell`]: borrowed only with the GIL held and
//!   never across a call into Python or a drop of a Python object (a drop can run a finalizer
//!   that schedules a callback). So no other thread sees it mid-change and nothing re-enters it.
//! - The waiting half of the reactor and the iteration buffers live in `driver`, locked by the
//!   thread running the loop for the whole run; it waits with the GIL released and without
//!   borrowing `state`. The buffers are empty between iterations. Other threads (holding
//!   the GIL) only push to the ready queue and trigger the waker, and only when the loop is
//!   waiting.
//! - The loop owns its epoll instance and waker, never a watched descriptor: `add_reader`
//!   callers keep theirs open and remove them before closing; a stream transport's socket is
//!   owned by the transport, which unregisters it before closing it (`transport.rs`).
//! - The ready queue holds callbacks and stream transport events (`Runnable`); what stream
//!   transports wrote during an iteration is sent at its end (`flush_transports`), before
//!   the next poll.
//! - One iteration runs exactly the callbacks that were ready when it started (asyncio's rule);
//!   if a callback raises `KeyboardInterrupt` or `SystemExit`, the rest of the batch is put back
//!   at the head of the queue before the exception leaves the loop. A panic (ours, or a
//!   `PanicException` a callback raised) is caught around the iteration and leaves the loop
//!   the same way, as a `PanicException`; the driver's lock is not poisoned by it.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::gil_cell::{GilCell, GilRefMut};
use std::time::{Duration, Instant};

use oxloop_core::clock::Clock;
use oxloop_core::counters::Counters;
use oxloop_core::reactor::{self, Reactor, Readiness, Registrar, Trigger, Watch, Waker};
use oxloop_core::ready::ReadyQueue;
use oxloop_core::timers::TimerHeap;
use pyo3::exceptions::{PyAttributeError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyInt, PyString, PyTuple, PyWeakrefReference};
use pyo3::{PyTraverseError, PyVisit};

use crate::futures;
use crate::handles::{Callback, Handle, HandleContext, ScheduledTimer, TimerHandle};
use crate::transport::{StreamTransport, MAX_READ};

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: the longest single wait, in seconds.
const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;

/// The callbacks watching one file descriptor, and the file object first registered for it
/// (as asyncio's selector keeps it: `remove_reader` finds the registration of a file object
/// closed since by identity).
struct FdCallbacks {
    fileobj: Py<PyAny>,
    reader: Option<Py<Handle>>,
    writer: Option<Py<Handle>>,
}

impl FdCallbacks {
    /// The callback slot of one side.
    fn slot(&mut self, side: Side) -> &mut Option<Py<Handle>> {
        match side {
            Side::Read => &mut self.reader,
            Side::Write => &mut self.writer,
        }
    }

    /// Whether a callback watches one side.
    fn watches(&self, side: Side) -> bool {
        match side {
            Side::Read => self.reader.is_some(),
            Side::Write => self.writer.is_some(),
        }
    }
}

/// What a change of fd watches took out of the loop's bookkeeping. The caller cancels and
/// drops it after the state borrow ends (cancelling calls into Python, and dropping the last
/// reference to a file object can run its finalizer).
#[must_use]
#[derive(Default)]
struct Unwatched {
    /// The callback the change replaced on its own side.
    replaced: Option<Py<Handle>>,
    /// Callbacks left by a descriptor that was closed while watched: its number names another
    /// file now, and they can never fire for theirs.
    stale: Vec<Py<Handle>>,
    /// File objects whose entries are gone.
    fileobjs: Vec<Py<PyAny>>,
}

impl Unwatched {
    /// Takes a whole entry out as stale.
    fn add_stale(&mut self, entry: FdCallbacks) {
        self.stale.extend(entry.reader.into_iter().chain(entry.writer));
        self.fileobjs.push(entry.fileobj);
    }

    /// Cancels the callbacks taken out; whether one was replaced on the changed side.
    fn cancel(self, py: Python<'_>) -> PyResult<bool> {
        let replaced = self.replaced.is_some();
        for handle in self.replaced.iter().chain(&self.stale) {
            handle.bind(py).call_method0("cancel")?;
        }
        Ok(replaced)
    }

    /// Moves everything into `released`, to be dropped outside the lock (for callbacks that
    /// are cancelled already).
    fn release_into(self, released: &mut Vec<Py<PyAny>>) {
        released.extend(self.replaced.into_iter().chain(self.stale).map(Py::into_any));
        released.extend(self.fileobjs);
    }
}

/// Which side of an fd a callback watches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Read,
    Write,
}

/// One entry of the ready queue.
pub(crate) enum Runnable {
    /// A callback (`call_soon`, a due timer, an `add_reader` watcher...).
    Callback(Py<Handle>),
    /// A read by a stream transport (its socket became readable, or a read is due).
    StreamRead(Py<StreamTransport>),
    /// A flush by a stream transport whose socket became writable.
    StreamWrite(Py<StreamTransport>),
}

/// Everything the loop schedules. Guarded by `LoopCore::state`.
struct LoopState {
    ready: ReadyQueue<Runnable>,
    timers: TimerHeap<ScheduledTimer>,
    /// Registers fds with the epoll instance; None once the loop is closed.
    registrar: Option<Registrar>,
    /// Wakes a waiting poll; None once the loop is closed.
    waker: Option<Arc<Waker>>,
    fd_callbacks: HashMap<RawFd, FdCallbacks>,
    /// Stream transports, by descriptor (watched edge-triggered, both directions).
    streams: HashMap<RawFd, Py<StreamTransport>>,
    /// Transports written to during this iteration, flushed at its end.
    flush_queue: Vec<Py<StreamTransport>>,
    clock: Clock,
    counters: Counters,
    /// The loop is (about to be) blocked in its poll: threadsafe calls must wake it.
    waiting: bool,
    /// The read end of the signal wakeup pipe (`signal.set_wakeup_fd`), drained natively: it
    /// only exists to end a wait when a signal arrives.
    wakeup_reader: Option<RawFd>,
}

impl LoopState {
    /// Sets (`new`: the handle and the file object it was registered with) or clears the
    /// callback on one side of `fd` and updates the epoll watch. What the change takes out
    /// goes to `unwatched`, whether it succeeds or not.
    ///
    /// A descriptor closed while watched is noticed here when a new file with its number is
    /// watched: epoll dropped the old file (so the registrar no longer knows the fd, or epoll
    /// refuses to modify it), and the entry's callbacks are stale. They are taken out and the
    /// new file is watched for the new callback alone.
    fn set_fd_callback(&mut self, fd: RawFd, side: Side, new: Option<(Py<Handle>, &Bound<'_, PyAny>)>, unwatched: &mut Unwatched) -> PyResult<()> {
        let Some(registrar) = self.registrar.as_mut() else {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        };
        let adding = new.is_some();
        if adding && !registrar.is_watched(fd) {
            if let Some(stale) = self.fd_callbacks.remove(&fd) {
                unwatched.add_stale(stale);
            }
        }
        let entry = match new {
            // An existing entry keeps its file object; the caller holds the one given, so the
            // unused reference dropped here only decrements it.
            Some((handle, fileobj)) => {
                let entry = self.fd_callbacks.entry(fd).or_insert_with(|| FdCallbacks { fileobj: fileobj.clone().unbind(), reader: None, writer: None });
                unwatched.replaced = entry.slot(side).replace(handle);
                entry
            }
            None => match self.fd_callbacks.get_mut(&fd) {
                Some(entry) => {
                    unwatched.replaced = entry.slot(side).take();
                    entry
                }
                None => return Ok(()),
            },
        };
        let watch = |entry: &FdCallbacks| Watch { readable: entry.reader.is_some(), writable: entry.writer.is_some(), trigger: Trigger::Level };
        let mut result = registrar.set_watch(fd, watch(entry));
        if adding && result.is_err() && !registrar.is_watched(fd) {
            // Closed while watched (see above): what else the entry held is stale.
            let other = match side {
                Side::Read => entry.writer.take(),
                Side::Write => entry.reader.take(),
            };
            unwatched.stale.extend(other.into_iter().chain(unwatched.replaced.take()));
            result = registrar.set_watch(fd, watch(entry));
        }
        if result.is_err() && !adding && !registrar.is_watched(fd) {
            // Removing one side of a descriptor closed while watched: nothing is left to
            // modify. The other side stays in the bookkeeping until it is removed too.
            result = Ok(());
        }
        if result.is_err() {
            // Undo the bookkeeping. The caller still holds the rejected handle, so dropping it
            // here only decrements it. (Stale callbacks stay out: they can never fire.)
            let _rejected = std::mem::replace(entry.slot(side), unwatched.replaced.take());
        }
        if !entry.watches(Side::Read) && !entry.watches(Side::Write) {
            if let Some(gone) = self.fd_callbacks.remove(&fd) {
                unwatched.fileobjs.push(gone.fileobj);
            }
        }
        result.map_err(os_error)
    }

    /// The descriptor a file object that no longer has one (it was closed) was registered
    /// with, found by identity as asyncio's selector finds it.
    fn fd_registered_for(&self, fileobj: &Bound<'_, PyAny>) -> Option<RawFd> {
        self.fd_callbacks.iter().find(|(_, entry)| entry.fileobj.is(fileobj)).map(|(&fd, _)| fd)
    }

    /// Whether a stale entry (of a descriptor closed while watched) is all that holds `fd`:
    /// if so it is taken out into `unwatched`.
    fn discard_if_stale(&mut self, fd: RawFd, unwatched: &mut Unwatched) {
        let Some(registrar) = self.registrar.as_mut() else { return };
        if self.fd_callbacks.contains_key(&fd) && !registrar.confirm(fd) {
            if let Some(stale) = self.fd_callbacks.remove(&fd) {
                unwatched.add_stale(stale);
            }
        }
    }

    /// Whether a zero-timeout poll could report anything: not when no descriptor but the
    /// wakeup pipe is watched (threadsafe calls reach the ready queue directly, and signals
    /// are handled by `check_signals` every iteration). Skipping it then changes nothing but
    /// the cost of a system call per iteration.
    fn poll_can_report(&self) -> bool {
        self.registrar.as_ref().is_some_and(|r| r.len() > usize::from(self.wakeup_reader.is_some()))
    }

    /// Moves the timers due now to the ready queue (asyncio: deadline before now plus the
    /// clock's resolution), then takes the whole queue as this iteration's batch.
    /// `patched_now` is the time when `loop.time` is patched (see `LoopCore::patched_time`).
    fn take_batch(&mut self, py: Python<'_>, resolution: f64, patched_now: Option<f64>, batch: &mut VecDeque<Runnable>) {
        if !self.timers.is_empty() {
            // The clock is read only when there are timers to compare with it.
            let end = patched_now.unwrap_or_else(|| self.clock.now()) + resolution;
            let mut due = DueTimers { py, ready: &mut self.ready };
            self.timers.pop_due(end, |t| t.bind(py).as_super().get().is_cancelled(), &mut due);
        }
        self.ready.take_batch(batch);
    }

    /// Queues the callbacks of one readiness event (asyncio's `_process_events`): a cancelled
    /// watcher is removed instead. Returns handles to release outside the lock.
    fn dispatch_io(&mut self, py: Python<'_>, event: Readiness, released: &mut Vec<Py<PyAny>>) {
        if Some(event.fd) == self.wakeup_reader {
            drain(event.fd);
            return;
        }
        if let Some(stream) = self.streams.get(&event.fd) {
            let transport = stream.get();
            if event.read_closed {
                transport.note_peer_closed();
            }
            if event.readable && transport.wants_readable_event() {
                self.ready.push(Runnable::StreamRead(stream.clone_ref(py)));
            }
            if event.writable && transport.wants_writable_event() {
                self.ready.push(Runnable::StreamWrite(stream.clone_ref(py)));
            }
            return;
        }
        let Some(entry) = self.fd_callbacks.get(&event.fd) else { return };
        let mut remove = [false, false];
        for (side, ready, handle) in [(0, event.readable, &entry.reader), (1, event.writable, &entry.writer)] {
            if let (true, Some(handle)) = (ready, handle) {
                if handle.get().is_cancelled() {
                    remove[side] = true;
                } else {
                    self.ready.push(Runnable::Callback(handle.clone_ref(py)));
                }
            }
        }
        for (side, remove) in [(Side::Read, remove[0]), (Side::Write, remove[1])] {
            if remove {
                let mut unwatched = Unwatched::default();
                // Removing only fails once the loop is closed, and a closed loop polls nothing.
                let _ = self.set_fd_callback(event.fd, side, None, &mut unwatched);
                unwatched.release_into(released);
            }
        }
    }
}

/// An `OSError` as Python raises it for a failed system call: `OSError(errno, strerror)`,
/// which Python turns into the matching subclass (`PermissionError`, ...).
pub(crate) fn os_error(err: std::io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(code) => {
            // SAFETY: strerror returns a pointer to a NUL-terminated static or thread-local
            // message, read at once.
            let message = unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }.to_string_lossy().into_owned();
            PyOSError::new_err((code, message))
        }
        None => err.into(),
    }
}

/// Reads and discards everything readable on a non-blocking `fd`.
fn drain(fd: RawFd) {
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: `buf` is a valid writable buffer of the given length; `fd` is the loop's own
        // wakeup pipe, open while registered.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            continue;
        }
        // End of file, EAGAIN (drained) or a real error: stop; only EINTR retries.
        if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Where due timers go (the heap has marked them unscheduled): appended to the ready queue.
struct DueTimers<'a, 'py> {
    py: Python<'py>,
    ready: &'a mut ReadyQueue<Runnable>,
}

impl Extend<ScheduledTimer> for DueTimers<'_, '_> {
    fn extend<I: IntoIterator<Item = ScheduledTimer>>(&mut self, timers: I) {
        let timers = timers.into_iter();
        self.ready.reserve(timers.size_hint().0);
        for ScheduledTimer(timer) in timers {
            self.ready.push(Runnable::Callback(timer.into_bound(self.py).into_super().unbind()));
        }
    }
}

/// Whether an iteration polls, and for how long (`None`: until something happens).
enum Wait {
    Skip,
    Poll(Option<f64>),
}

/// The part of the loop only the thread running it uses: the reactor's waiting half and the
/// buffers iterations reuse.
struct Driver {
    reactor: Reactor,
    buffers: IterationBuffers,
}

/// Buffers the loop reuses from iteration to iteration and from one run to the next, so that
/// an iteration allocates nothing and a run does not start by growing them again (freeing
/// large buffers hands their pages back to the system, and a page faulted in again costs
/// about as much as a callback). They are empty between iterations: Python objects in them
/// are dropped outside the state lock, at the end of the iteration that put them there.
#[derive(Default)]
struct IterationBuffers {
    batch: VecDeque<Runnable>,
    /// The transports to flush at the end of an iteration.
    flushes: Vec<Py<StreamTransport>>,
    io_events: Vec<Readiness>,
    released_objects: Vec<Py<PyAny>>,
    released_timers: Vec<ScheduledTimer>,
    /// Callbacks run since the counters were last updated (added at the next lock).
    callbacks_run: u64,
}

impl IterationBuffers {
    /// Empties what an iteration cut short by a panic may have left in the buffers (its batch
    /// is put back in the ready queue separately), so that the next run starts clean.
    fn discard_leftovers(&mut self) {
        self.flushes.clear();
        self.io_events.clear();
        self.released_objects.clear();
        self.released_timers.clear();
    }
}

/// The part of a loop its handles share: the scheduling state, the debug flag and a weak
/// reference to the Python loop object (handles must not keep the loop alive).
///
/// A Python object (never exposed) so that the references the loop, its handles and its
/// transports hold ([`SharedRef`]) are counted by the interpreter's reference count, which
/// the GIL guards: an `Arc` would cost two atomic instructions per handle.
#[pyclass(module = "oxloop._core", frozen)]
pub(crate) struct LoopShared {
    state: GilCell<LoopState>,
    debug: AtomicBool,
    loop_object: PyOnceLock<Py<PyWeakrefReference>>,
    /// Where stream transports read before copying into `bytes` (allocated on first use;
    /// only the loop's thread reads).
    read_buffer: GilCell<Vec<u8>>,
    /// Whether `state.flush_queue` may hold transports: set when one is queued, so that an
    /// iteration with nothing to flush does not take the lock to find out.
    flush_queued: AtomicBool,
}

/// A reference to a loop's [`LoopShared`].
pub(crate) struct SharedRef(Py<LoopShared>);

impl SharedRef {
    /// Another reference to the same loop.
    pub(crate) fn clone_ref(&self, py: Python<'_>) -> Self {
        SharedRef(self.0.clone_ref(py))
    }
}

impl std::ops::Deref for SharedRef {
    type Target = LoopShared;

    #[inline]
    fn deref(&self) -> &LoopShared {
        self.0.get()
    }
}

impl LoopShared {
    /// Borrows the scheduling state (see the module invariants).
    #[inline]
    fn lock<'a>(&'a self, py: Python<'a>) -> GilRefMut<'a, LoopState> {
        self.state.borrow_mut(py)
    }

    /// Whether debug mode is on.
    #[inline]
    pub(crate) fn debug_enabled(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// Called by a `TimerHandle` cancelled while still in the heap.
    pub(crate) fn timer_cancelled(&self, py: Python<'_>) {
        let mut state = self.lock(py);
        state.timers.note_cancelled();
        state.counters.timers_cancelled += 1;
    }

    /// Called when a callback's exception goes to the exception handler.
    pub(crate) fn note_callback_error(&self, py: Python<'_>) {
        self.lock(py).counters.callback_errors += 1;
    }

    /// The Python loop object, if it is still alive.
    pub(crate) fn loop_object<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.loop_object.get(py).and_then(|weak| weak.bind(py).upgrade())
    }

    /// Whether the loop has let go of everything (it was closed, or freed): its registrar is
    /// gone (`release_everything`).
    pub(crate) fn is_released(&self, py: Python<'_>) -> bool {
        self.lock(py).registrar.is_none()
    }

    /// Runs `f` on the loop's read buffer ([`MAX_READ`] bytes).
    /// `f` must not run Python code (see the module invariants).
    pub(crate) fn with_read_buffer<R>(&self, py: Python<'_>, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut buffer = self.read_buffer.borrow_mut(py);
        if buffer.is_empty() {
            buffer.resize(MAX_READ, 0);
        }
        f(&mut buffer)
    }

    /// Registers a stream transport's descriptor: watched edge-triggered for reading (and
    /// for writing only while a send would block: see [`Self::watch_stream_writable`]).
    pub(crate) fn register_stream(&self, py: Python<'_>, fd: RawFd, transport: Py<StreamTransport>) -> PyResult<()> {
        let mut stale = Unwatched::default();
        let registered = {
            let mut state = self.lock(py);
            state.discard_if_stale(fd, &mut stale);
            if state.fd_callbacks.contains_key(&fd) || state.streams.contains_key(&fd) {
                Err(PyRuntimeError::new_err(format!("File descriptor {fd} is already watched by the loop")))
            } else {
                match state.registrar.as_mut() {
                    None => Err(PyRuntimeError::new_err("Event loop is closed")),
                    Some(registrar) => registrar.set_watch(fd, Watch { readable: true, writable: false, trigger: Trigger::Edge }).map_err(os_error),
                }
                .map(|()| state.streams.insert(fd, transport.clone_ref(py)))
            }
        };
        drop(transport);
        stale.cancel(py)?;
        registered.map(drop)
    }

    /// Adds or removes writability to a stream transport's watch. Writability is watched only
    /// while a send would block, as libuv does: a socket watched for it all the time wakes
    /// the poller each time the peer's acknowledgements free buffer space.
    pub(crate) fn watch_stream_writable(&self, py: Python<'_>, fd: RawFd, writable: bool) -> PyResult<()> {
        let mut state = self.lock(py);
        if !state.streams.contains_key(&fd) {
            return Ok(());
        }
        let Some(registrar) = state.registrar.as_mut() else { return Ok(()) };
        registrar.set_watch(fd, Watch { readable: true, writable, trigger: Trigger::Edge }).map_err(os_error)
    }

    /// Stops watching a stream transport's descriptor; returns the loop's reference to the
    /// transport (to be dropped by the caller, outside the lock).
    pub(crate) fn unregister_stream(&self, py: Python<'_>, fd: RawFd) -> Option<Py<StreamTransport>> {
        let mut state = self.lock(py);
        let transport = state.streams.remove(&fd)?;
        if let Some(registrar) = state.registrar.as_mut() {
            registrar.unwatch(fd);
        }
        Some(transport)
    }

    /// Queues a read of a stream transport for the next iteration.
    pub(crate) fn schedule_stream_read(&self, py: Python<'_>, transport: Py<StreamTransport>) {
        self.lock(py).ready.push(Runnable::StreamRead(transport));
    }

    /// Queues a stream transport for the end-of-iteration flush.
    pub(crate) fn queue_flush(&self, py: Python<'_>, transport: Py<StreamTransport>) {
        self.lock(py).flush_queue.push(transport);
        self.flush_queued.store(true, Ordering::Relaxed);
    }

    /// The stream transport using `fd`, if any.
    fn stream_on(&self, py: Python<'_>, fd: RawFd) -> Option<Py<StreamTransport>> {
        self.lock(py).streams.get(&fd).map(|t| t.clone_ref(py))
    }

    /// Removes every pending callback, timer and fd watch, and drops their callbacks (the
    /// loop is closing or being freed). Nothing is dropped under the lock.
    fn release_everything(&self, py: Python<'_>) {
        let (ready, timers, watchers, streams, flushes) = {
            let mut state = self.lock(py);
            // Dropping the registrar and the waker closes their descriptors (the epoll
            // instance itself closes with the reactor, in `_close_core`).
            if let Some(mut registrar) = state.registrar.take() {
                registrar.unwatch_all();
            }
            state.waker = None;
            let watchers: Vec<FdCallbacks> = state.fd_callbacks.drain().map(|(_, w)| w).collect();
            let streams: Vec<Py<StreamTransport>> = state.streams.drain().map(|(_, t)| t).collect();
            let flushes = std::mem::take(&mut state.flush_queue);
            (state.ready.drain_all(), state.timers.drain_all(), watchers, streams, flushes)
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
        drop((ready, timers, watchers, streams, flushes));
    }
}

/// The native half of `oxloop.Loop`.
#[pyclass(module = "oxloop._core", subclass, weakref, frozen)]
pub struct LoopCore {
    shared: SharedRef,
    /// What only the thread running the loop uses; None once the loop is closed.
    driver: Mutex<Option<Driver>>,
    clock_resolution: f64,
    /// Whether the clock is the real one (`Clock::Monotonic`), which is read without taking
    /// the state lock; set when the loop is made.
    real_time: bool,
    closed: AtomicBool,
    stopping: AtomicBool,
    /// `threading.get_ident()` of the thread running the loop, 0 when not running.
    thread_id: AtomicU64,
    /// `set_task_factory()`'s factory.
    task_factory: GilCell<Option<Py<PyAny>>>,
    /// A `time` set on the loop object (`mock.patch.object(loop, "time", ...)`): asyncio's
    /// iteration and `call_later` read `self.time()`, so timers follow it there, and here.
    patched_time: GilCell<Option<Py<PyAny>>>,
    /// Whether `patched_time` is set: the one branch an iteration pays for it.
    time_patched: AtomicBool,
}

impl Drop for LoopCore {
    fn drop(&mut self) {
        // Pending handles may sit in cycles with their callbacks' objects: break them.
        Python::attach(|py| self.shared.release_everything(py));
    }
}

impl LoopCore {
    /// Borrows the scheduling state (see the module invariants).
    #[inline]
    fn lock<'a>(&'a self, py: Python<'a>) -> GilRefMut<'a, LoopState> {
        self.shared.lock(py)
    }

    /// Takes the driver (the reactor's waiting half and the iteration buffers): only one
    /// thread may run the loop.
    fn lock_driver(&self) -> PyResult<MutexGuard<'_, Option<Driver>>> {
        self.driver.try_lock().map_err(|_| PyRuntimeError::new_err("This event loop is already running"))
    }

    /// Whether debug mode is on.
    #[inline]
    fn debug_enabled(&self) -> bool {
        self.shared.debug_enabled()
    }

    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(PyRuntimeError::new_err("Event loop is closed"))
        } else {
            Ok(())
        }
    }

    /// asyncio's `_check_thread` (debug mode): the loop's own thread only.
    fn check_thread(&self) -> PyResult<()> {
        let owner = self.thread_id.load(Ordering::Relaxed);
        if owner != 0 && owner != current_thread_id() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// Debug-mode checks of `call_soon`/`call_at` and the creation traceback.
    fn debug_checks(slf: &Bound<'_, Self>, callback: &Bound<'_, PyAny>, method: &str, check_thread: bool) -> PyResult<Option<Py<PyAny>>> {
        if !slf.get().debug_enabled() {
            return Ok(None);
        }
        if check_thread {
            slf.get().check_thread()?;
        }
        slf.call_method1(pyo3::intern!(slf.py(), "_check_callback"), (callback, method))?;
        Ok(Some(extract_stack(slf.py())?))
    }

    /// Creates a handle for `callback(*args)` in `context`.
    fn new_handle(slf: &Bound<'_, Self>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>, one_shot: bool, traceback: Option<Py<PyAny>>) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let context = HandleContext::given_or_copied(py, context)?;
        Py::new(py, Handle::new(slf.get().shared_with_handles(slf)?, Callback::new(callback, args), context, one_shot, traceback))
    }

    /// The shared part, for a new stream transport of the loop `slf`.
    pub(crate) fn shared_for_transport(slf: &Bound<'_, Self>) -> PyResult<SharedRef> {
        slf.get().check_closed()?;
        slf.get().shared_with_handles(slf)
    }

    /// asyncio's `_ensure_fd_no_transport`: the fd must not belong to a transport, native
    /// (a stream transport: it keeps its watch until it has flushed and lost its connection,
    /// so its fd stays taken until then) or Python (in the loop's `_transports`, as asyncio
    /// keeps them: taken until the transport is closing).
    fn ensure_fd_no_transport(slf: &Bound<'_, Self>, fileobj: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<()> {
        let py = slf.py();
        let owner = match slf.get().shared.stream_on(py, fd) {
            Some(transport) => Some(match transport.get().python_transport(py) {
                Some(owner) => owner.bind(py).repr()?.to_string(),
                None => "<closed transport>".to_owned(),
            }),
            None => match slf.getattr(pyo3::intern!(py, "_transports"))?.call_method1(pyo3::intern!(py, "get"), (fd,))? {
                transport if transport.is_none() => None,
                transport if transport.call_method0(pyo3::intern!(py, "is_closing"))?.is_truthy()? => None,
                transport => Some(transport.repr()?.to_string()),
            },
        };
        match owner {
            Some(owner) => Err(PyRuntimeError::new_err(format!("File descriptor {} is used by transport {owner}", fileobj.repr()?))),
            None => Ok(()),
        }
    }

    /// Sends what was written to stream transports during the iteration.
    fn flush_transports(slf: &Bound<'_, Self>, buffers: &mut IterationBuffers) -> PyResult<()> {
        let py = slf.py();
        let shared = &slf.get().shared;
        if !shared.flush_queued.load(Ordering::Relaxed) {
            return Ok(());
        }
        {
            let mut state = shared.lock(py);
            shared.flush_queued.store(false, Ordering::Relaxed);
            std::mem::swap(&mut state.flush_queue, &mut buffers.flushes);
        }
        let mut pending = buffers.flushes.drain(..);
        while let Some(transport) = pending.next() {
            if let Err(err) = StreamTransport::flush_queued(transport.bind(py)) {
                let rest: Vec<_> = pending.collect();
                shared.lock(py).flush_queue.extend(rest);
                shared.flush_queued.store(true, Ordering::Relaxed);
                return Err(err);
            }
        }
        Ok(())
    }

    /// The shared part, for a new handle; records the loop object on first use.
    fn shared_with_handles(&self, slf: &Bound<'_, Self>) -> PyResult<SharedRef> {
        self.shared.loop_object.get_or_try_init(slf.py(), || PyWeakrefReference::new(slf).map(Bound::unbind))?;
        Ok(self.shared.clone_ref(slf.py()))
    }

    /// Appends a handle to the ready queue; wakes the poller if `threadsafe` and it waits.
    #[inline]
    fn push_ready(&self, py: Python<'_>, handle: Py<Handle>, threadsafe: bool) -> PyResult<()> {
        let mut state = self.lock(py);
        state.ready.push(Runnable::Callback(handle));
        if threadsafe && state.waiting {
            if let Some(waker) = &state.waker {
                // A non-blocking write to an eventfd: no Python, safe under the lock.
                waker.wake()?;
            }
        }
        Ok(())
    }

    /// One iteration: wait for I/O or the next timer, queue what became ready, run the batch.
    fn run_once(slf: &Bound<'_, Self>, reactor: &mut Reactor, buffers: &mut IterationBuffers) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let is_cancelled = |t: &ScheduledTimer| t.bind(py).as_super().get().is_cancelled();
        Self::flush_transports(slf, buffers)?;
        let patched_now = this.patched_now(py)?;
        let wait = {
            let mut state = this.lock(py);
            state.counters.iterations += 1;
            state.counters.callbacks_run += std::mem::take(&mut buffers.callbacks_run);
            state.timers.purge_cancelled(is_cancelled, &mut buffers.released_timers);
            if !state.ready.is_empty() || this.stopping.load(Ordering::Relaxed) {
                if state.poll_can_report() {
                    Wait::Poll(Some(0.0))
                } else {
                    state.take_batch(py, this.clock_resolution, patched_now, &mut buffers.batch);
                    Wait::Skip
                }
            } else {
                let deadline = state.timers.next_deadline();
                state.waiting = true;
                let timeout = match patched_now {
                    None => state.clock.poll_timeout(deadline),
                    Some(now) => deadline.map(|when| (when - now).max(0.0)),
                };
                Wait::Poll(timeout.map(|t| t.min(MAXIMUM_SELECT_TIMEOUT)))
            }
        };
        buffers.released_timers.clear(); // dropped outside the lock

        if let Wait::Poll(timeout) = wait {
            let started = Instant::now();
            let io_events = &mut buffers.io_events;
            let timeout = timeout.map(Duration::from_secs_f64);
            // A zero-timeout poll does not block: the GIL is kept (releasing and taking it
            // back would cost more than the system call).
            let outcome = if timeout == Some(Duration::ZERO) { reactor.poll(timeout, io_events) } else { py.detach(|| reactor.poll(timeout, io_events)) };
            let waited = started.elapsed();
            // Read again after the wait, as asyncio does (outside the lock: it calls Python).
            let patched_now = this.patched_now(py);
            {
                let mut state = this.lock(py);
                state.waiting = false;
                state.counters.polls += 1;
                state.counters.poll_wait_ns += waited.as_nanos() as u64;
                state.counters.io_events += buffers.io_events.len() as u64;
                for event in buffers.io_events.drain(..) {
                    state.dispatch_io(py, event, &mut buffers.released_objects);
                }
                if let Ok(patched_now) = patched_now {
                    state.take_batch(py, this.clock_resolution, patched_now, &mut buffers.batch);
                }
            }
            buffers.released_objects.clear(); // dropped outside the lock
            // A patched `time` that raised: its exception leaves the loop, as in asyncio (the
            // events are queued, nothing was taken out of the queue).
            patched_now?;
            if let Err(err) = outcome {
                this.lock(py).ready.requeue_front(&mut buffers.batch);
                return Err(err.into());
            }
        }
        // Outside the lock: a signal handler may schedule callbacks. Fails only by raising
        // (KeyboardInterrupt): the batch goes back to the queue first.
        if let Err(err) = py.check_signals() {
            this.lock(py).ready.requeue_front(&mut buffers.batch);
            return Err(err);
        }

        let debug = this.debug_enabled();
        while let Some(item) = buffers.batch.pop_front() {
            let result = match item {
                Runnable::Callback(handle) => {
                    let handle = handle.into_bound(py);
                    if handle.get().is_cancelled() {
                        continue;
                    }
                    if debug {
                        Self::run_handle_debug(slf, &handle)
                    } else {
                        Handle::run(&handle, true)
                    }
                }
                Runnable::StreamRead(transport) => Self::run_stream_event(slf, transport.bind(py), debug, StreamTransport::on_readable, "_read_ready"),
                Runnable::StreamWrite(transport) => Self::run_stream_event(slf, transport.bind(py), debug, StreamTransport::on_writable, "_write_ready"),
            };
            buffers.callbacks_run += 1;
            if let Err(err) = result {
                let mut state = this.lock(py);
                state.counters.callbacks_run += std::mem::take(&mut buffers.callbacks_run);
                state.ready.requeue_front(&mut buffers.batch);
                return Err(err);
            }
        }
        Self::flush_transports(slf, buffers)
    }

    /// Runs one iteration, turning a panic into a `PanicException`: a panic of ours, or a
    /// `PanicException` that a callback raised (PyO3 resumes those as panics when it fetches
    /// them). The callbacks of the batch not yet run go back to the queue, and the driver's
    /// lock is held outside the unwinding (not poisoned), so the loop can run again or close,
    /// as after a `KeyboardInterrupt`.
    fn run_once_catching_panics(slf: &Bound<'_, Self>, reactor: &mut Reactor, buffers: &mut IterationBuffers) -> PyResult<()> {
        match catch_unwind(AssertUnwindSafe(|| Self::run_once(slf, reactor, buffers))) {
            Ok(result) => result,
            Err(payload) => {
                slf.get().lock(slf.py()).ready.requeue_front(&mut buffers.batch);
                buffers.discard_leftovers();
                let message = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("Rust panic in the event loop");
                Err(PanicException::new_err(message.to_owned()))
            }
        }
    }

    /// Runs a transport's read or flush; in debug mode, reports it if it was slow (as
    /// asyncio reports the transport's `_read_ready` handle).
    fn run_stream_event(slf: &Bound<'_, Self>, transport: &Bound<'_, StreamTransport>, debug: bool, run: fn(&Bound<'_, StreamTransport>) -> PyResult<()>, name: &str) -> PyResult<()> {
        if !debug {
            return run(transport);
        }
        let py = slf.py();
        let started = slf.get().now(py);
        run(transport)?;
        let elapsed = slf.get().now(py) - started;
        let slow: f64 = slf.getattr(pyo3::intern!(py, "slow_callback_duration"))?.extract()?;
        if elapsed >= slow {
            if let Some(owner) = transport.get().python_transport(py) {
                let what = format!("<Handle {}.{name}()>", owner.bind(py).get_type().name()?);
                slf.call_method1("_log_slow_callback", (what, elapsed))?;
            }
        }
        Ok(())
    }

    /// Runs a handle in debug mode: records it as `_current_handle` and reports it when it
    /// takes longer than `slow_callback_duration` (naming the task it steps, if any).
    fn run_handle_debug(slf: &Bound<'_, Self>, handle: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        slf.setattr(pyo3::intern!(py, "_current_handle"), handle)?;
        let started = slf.get().now(py);
        let result = Handle::run(handle, false);
        let elapsed = slf.get().now(py) - started;
        slf.setattr(pyo3::intern!(py, "_current_handle"), py.None())?;
        let logged = result.and_then(|()| {
            let slow: f64 = slf.getattr(pyo3::intern!(py, "slow_callback_duration"))?.extract()?;
            if elapsed >= slow {
                slf.call_method1("_log_slow_callback", (handle, elapsed))?;
            }
            Ok(())
        });
        handle.get().finish(py);
        logged
    }

    /// The time timers are scheduled and run by: the loop's clock, or what a `time` patched
    /// on the loop object says (see `patched_time`).
    pub(crate) fn scheduling_now(&self, py: Python<'_>) -> PyResult<f64> {
        if self.time_patched.load(Ordering::Relaxed) {
            if let Some(time) = self.patched_time.borrow_mut(py).as_ref().map(|t| t.clone_ref(py)) {
                return time.bind(py).call0()?.extract();
            }
        }
        Ok(self.now(py))
    }

    /// The patched time (see `patched_time`), if `time` is patched.
    fn patched_now(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        if self.time_patched.load(Ordering::Relaxed) {
            self.scheduling_now(py).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Notes a `time` set on or deleted from the loop object.
    fn note_time_attribute(&self, py: Python<'_>, value: Option<&Bound<'_, PyAny>>) {
        let old = std::mem::replace(&mut *self.patched_time.borrow_mut(py), value.map(|v| v.clone().unbind()));
        self.time_patched.store(value.is_some(), Ordering::Relaxed);
        drop(old); // after the borrow ends: dropping may run a finalizer
    }

    /// The loop's clock.
    pub(crate) fn now(&self, py: Python<'_>) -> f64 {
        if self.real_time {
            return Clock::Monotonic.now();
        }
        self.lock(py).clock.now()
    }

    /// `add_reader`/`add_writer` (`checked`: refused for a transport's fd, as the public
    /// methods are; the loop's own callers, like asyncio's `_add_reader`, are not checked).
    fn add_fd_callback(slf: &Bound<'_, Self>, fileobj: &Bound<'_, PyAny>, side: Side, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, checked: bool) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let fd = fileobj_to_fd(fileobj)?;
        if checked {
            Self::ensure_fd_no_transport(slf, fileobj, fd)?;
        }
        let handle = Self::new_handle(slf, callback, args, None, false, None)?;
        let mut unwatched = Unwatched::default();
        let added = this.lock(py).set_fd_callback(fd, side, Some((handle.clone_ref(py), fileobj)), &mut unwatched);
        unwatched.cancel(py)?;
        added.map(|()| handle)
    }

    /// `remove_reader`/`remove_writer`: whether a callback was registered (`checked` as for
    /// [`Self::add_fd_callback`]). A file object closed since it was registered is found by
    /// identity, as asyncio's selector finds it.
    fn remove_fd_callback(slf: &Bound<'_, Self>, fileobj: &Bound<'_, PyAny>, side: Side, checked: bool) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if this.closed.load(Ordering::Acquire) {
            return Ok(false);
        }
        let fd = match fileobj_to_fd(fileobj) {
            Ok(fd) => {
                if checked {
                    Self::ensure_fd_no_transport(slf, fileobj, fd)?;
                }
                fd
            }
            // (asyncio checks a closed file object's transports under its fd, -1: none.)
            Err(err) if err.is_instance_of::<PyValueError>(py) => this.lock(py).fd_registered_for(fileobj).ok_or(err)?,
            Err(err) => return Err(err),
        };
        let mut unwatched = Unwatched::default();
        let removed = {
            let mut state = this.lock(py);
            if !state.fd_callbacks.get(&fd).is_some_and(|entry| entry.watches(side)) {
                return Ok(false);
            }
            state.set_fd_callback(fd, side, None, &mut unwatched)
        };
        let was_registered = unwatched.cancel(py)?;
        removed.map(|()| was_registered)
    }
}

/// `threading.get_ident()` of the calling thread.
fn current_thread_id() -> u64 {
    // SAFETY: PyThread_get_thread_ident has no preconditions.
    unsafe { ffi::PyThread_get_thread_ident() as u64 }
}

/// `asyncio.format_helpers.extract_stack(sys._getframe(0))`: where a handle is created, for
/// debug mode. The top Python frame is the caller of the loop method (native frames do not
/// appear).
fn extract_stack(py: Python<'_>) -> PyResult<Py<PyAny>> {
    static EXTRACT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static GETFRAME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let extract = EXTRACT.import(py, "asyncio.format_helpers", "extract_stack")?;
    let frame = GETFRAME.import(py, "sys", "_getframe")?.call1((0,))?;
    Ok(extract.call1((frame,))?.unbind())
}

/// `object.__setattr__(object, name, value)`, or `object.__delattr__` for None.
fn generic_setattr(object: &Bound<'_, PyAny>, name: &Bound<'_, PyString>, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let value = value.map_or(std::ptr::null_mut(), Bound::as_ptr);
    // SAFETY: the GIL is held and both objects are alive; a NULL value deletes, as the C API
    // defines. On failure an exception is set, which `PyErr::fetch` takes.
    if unsafe { ffi::PyObject_GenericSetAttr(object.as_ptr(), name.as_ptr(), value) } < 0 {
        return Err(PyErr::fetch(object.py()));
    }
    Ok(())
}

/// selectors' `_fileobj_to_fd`: an int, or an object whose `fileno()` gives one.
fn fileobj_to_fd(fileobj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let py = fileobj.py();
    let fd: i64 = if fileobj.is_instance_of::<PyInt>() {
        fileobj.extract()?
    } else {
        let number = fileobj
            .call_method0("fileno")
            .and_then(|n| py.get_type::<PyInt>().call1((n,)))
            .and_then(|n| n.extract::<i64>());
        match number {
            Ok(fd) => fd,
            Err(err) if err.is_instance_of::<PyAttributeError>(py) || err.is_instance_of::<PyTypeError>(py) || err.is_instance_of::<PyValueError>(py) => {
                return Err(PyValueError::new_err(format!("Invalid file object: {}", fileobj.repr()?)));
            }
            Err(err) => return Err(err),
        }
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
    }
    RawFd::try_from(fd).map_err(|_| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
}

#[pymethods]
impl LoopCore {
    /// A new, empty loop core on the real monotonic clock.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(py: Python<'_>, _args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let (reactor, registrar, waker) = reactor::new()?;
        let clock = Clock::Monotonic;
        Ok(LoopCore {
            clock_resolution: clock.resolution(),
            real_time: clock == Clock::Monotonic,
            shared: SharedRef(Py::new(py, LoopShared {
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
                    clock,
                    counters: Counters::default(),
                    waiting: false,
                    wakeup_reader: None,
                }),
            })?),
            driver: Mutex::new(Some(Driver { reactor, buffers: IterationBuffers::default() })),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            thread_id: AtomicU64::new(0),
            task_factory: GilCell::new(None),
            patched_time: GilCell::new(None),
            time_patched: AtomicBool::new(false),
        })
    }

    /// The loop's time: `time.monotonic()`.
    fn time(&self, py: Python<'_>) -> f64 {
        self.now(py)
    }

    /// Sets an attribute as `object.__setattr__` does, noting a patched `time`.
    fn __setattr__(slf: &Bound<'_, Self>, name: &Bound<'_, PyString>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        generic_setattr(slf.as_any(), name, Some(value))?;
        if name.to_str()? == "time" {
            slf.get().note_time_attribute(slf.py(), Some(value));
        }
        Ok(())
    }

    /// Deletes an attribute as `object.__delattr__` does, noting an unpatched `time`.
    fn __delattr__(slf: &Bound<'_, Self>, name: &Bound<'_, PyString>) -> PyResult<()> {
        generic_setattr(slf.as_any(), name, None)?;
        if name.to_str()? == "time" {
            slf.get().note_time_attribute(slf.py(), None);
        }
        Ok(())
    }

    /// A new `asyncio.Future` attached to this loop.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        futures::create_future(slf.as_any())
    }

    /// Whether debug mode is on.
    fn get_debug(&self) -> bool {
        self.debug_enabled()
    }

    /// The task factory, or None (asyncio's `_task_factory` attribute).
    #[getter(_task_factory)]
    fn get_task_factory_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.task_factory.borrow_mut(py).as_ref().map(|f| f.clone_ref(py))
    }

    #[setter(_task_factory)]
    fn set_task_factory_attr(&self, factory: Bound<'_, PyAny>) -> PyResult<()> {
        futures::check_task_factory(&factory)?;
        let py = factory.py();
        let new = (!factory.is_none()).then(|| factory.unbind());
        let old = std::mem::replace(&mut *self.task_factory.borrow_mut(py), new);
        drop(old);
        Ok(())
    }

    /// Shows the collector what the loop holds: the task factory, its stream transports,
    /// and the callbacks of the timers and fd watchers only it refers to.
    /// Handles are invisible to the collector (see `handles.rs`); a handle someone else also
    /// holds is not looked into, so what it refers to counts as reachable from outside. The
    /// loop itself is long-lived, so this runs only in the rare full collections. Skipped
    /// (conservatively) if the state is locked.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: the collector calls `tp_traverse` with the GIL held; the token is only used
        // to borrow the state and to view timers as their `Handle` base (a pointer cast, no
        // call into Python).
        let py = unsafe { Python::assume_attached() };
        for cell in [&self.task_factory, &self.patched_time] {
            if let Some(object) = cell.try_borrow_mut(py) {
                if let Some(object) = object.as_ref() {
                    visit.call(object)?;
                }
            }
        }
        let Some(state) = self.shared.state.try_borrow_mut(py) else {
            return Ok(());
        };
        let visit_handle = |handle: &Handle, object: *mut ffi::PyObject| {
            // SAFETY: the collector runs with the GIL held; `object` is a live handle.
            if unsafe { ffi::Py_REFCNT(object) } == 1 {
                handle.traverse_contents(py, &visit)
            } else {
                Ok(())
            }
        };
        for item in state.ready.iter() {
            // Queued callbacks are not looked into: they run (and let go of what they hold) at
            // the next iteration, and a young loop with a long queue would make every young
            // collection walk all of them.
            if let Runnable::StreamRead(transport) | Runnable::StreamWrite(transport) = item {
                visit.call(transport)?;
            }
        }
        for timer in state.timers.iter() {
            visit_handle(timer.bind(py).as_super().get(), timer.as_ptr())?;
        }
        for watcher in state.fd_callbacks.values() {
            visit.call(&watcher.fileobj)?;
            for handle in watcher.reader.iter().chain(watcher.writer.iter()) {
                visit_handle(handle.get(), handle.as_ptr())?;
            }
        }
        for transport in state.streams.values().chain(state.flush_queue.iter()) {
            visit.call(transport)?;
        }
        Ok(())
    }

    /// Breaks the cycles the loop is part of when it is garbage: drops the task factory and
    /// everything pending (as closing does, without closing transports).
    fn __clear__(&self, py: Python<'_>) {
        let old = (self.task_factory.borrow_mut(py).take(), self.patched_time.borrow_mut(py).take());
        drop(old);
        self.shared.release_everything(py);
    }

    /// Asks the loop to stop after the current iteration.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether the loop is running.
    fn is_running(&self) -> bool {
        self.thread_id.load(Ordering::Relaxed) != 0
    }

    /// Whether the loop was closed.
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Raises `RuntimeError('Event loop is closed')` if the loop was closed.
    fn _check_closed(&self) -> PyResult<()> {
        self.check_closed()
    }

    /// Runs iterations until `stop()` (the core of `run_forever`; the caller sets up and
    /// tears down the running-loop state).
    fn _run_until_stopped(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let mut driver = this.lock_driver()?;
        let Driver { reactor, buffers } = driver.as_mut().ok_or_else(|| PyRuntimeError::new_err("Event loop is closed"))?;
        let result = loop {
            if let Err(err) = Self::run_once_catching_panics(slf, reactor, buffers) {
                break Err(err);
            }
            if this.stopping.load(Ordering::Relaxed) {
                break Ok(());
            }
        };
        this.lock(slf.py()).counters.callbacks_run += std::mem::take(&mut buffers.callbacks_run);
        result
    }

    /// Runs one iteration (asyncio's `_run_once`).
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let mut driver = this.lock_driver()?;
        let Driver { reactor, buffers } = driver.as_mut().ok_or_else(|| PyRuntimeError::new_err("Event loop is closed"))?;
        let result = Self::run_once_catching_panics(slf, reactor, buffers);
        this.lock(slf.py()).counters.callbacks_run += std::mem::take(&mut buffers.callbacks_run);
        result
    }

    /// Marks the loop closed and releases every pending callback, timer and fd watch.
    fn _close_core(&self, py: Python<'_>) -> PyResult<()> {
        let mut driver = self.lock_driver()?;
        self.closed.store(true, Ordering::Release);
        self.shared.release_everything(py);
        *driver = None; // closes the epoll instance
        Ok(())
    }

    /// Watches the read end of the signal wakeup pipe: it ends a wait when a signal arrives
    /// and is drained natively (signal handlers themselves run from Python's signal module).
    fn _set_wakeup_reader(&self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        let mut state = self.lock(py);
        let registrar = state.registrar.as_mut().ok_or_else(|| PyRuntimeError::new_err("Event loop is closed"))?;
        registrar.set_watch(fd, Watch { readable: true, writable: false, trigger: Trigger::Edge }).map_err(os_error)?;
        state.wakeup_reader = Some(fd);
        Ok(())
    }

    /// Watches `fd` for reading: `callback(*args)` runs each iteration while it is readable.
    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        Self::add_fd_callback(slf, fd, Side::Read, callback, args, true).map(drop)
    }

    /// Like `add_reader`, returning the handle, and allowed on a transport's fd (for the
    /// loop's own use, as asyncio's `_add_reader`).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<Py<Handle>> {
        Self::add_fd_callback(slf, fd, Side::Read, callback, args, false)
    }

    /// Stops watching `fd` for reading; whether it was watched.
    fn remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_fd_callback(slf, fd, Side::Read, true)
    }

    /// Like `remove_reader`, allowed on a transport's fd (asyncio's `_remove_reader`).
    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_fd_callback(slf, fd, Side::Read, false)
    }

    /// Watches `fd` for writing: `callback(*args)` runs each iteration while it is writable.
    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        Self::add_fd_callback(slf, fd, Side::Write, callback, args, true).map(drop)
    }

    /// Like `add_writer`, returning the handle, and allowed on a transport's fd (asyncio's
    /// `_add_writer`).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<Py<Handle>> {
        Self::add_fd_callback(slf, fd, Side::Write, callback, args, false)
    }

    /// Stops watching `fd` for writing; whether it was watched.
    fn remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_fd_callback(slf, fd, Side::Write, true)
    }

    /// Like `remove_writer`, allowed on a transport's fd (asyncio's `_remove_writer`).
    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_fd_callback(slf, fd, Side::Write, false)
    }

    /// asyncio's `_ensure_fd_no_transport(fd)`: RuntimeError if a transport uses `fd`.
    fn _ensure_fd_no_transport(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<()> {
        let fileno = fileobj_to_fd(fd)?;
        Self::ensure_fd_no_transport(slf, fd, fileno)
    }

    /// The loop's counters, for live metrics.
    fn _counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (counters, ready, timers, fds, transports) = {
            let state = self.lock(py);
            (state.counters, state.ready.len(), state.timers.len(), state.registrar.as_ref().map_or(0, Registrar::len), state.streams.len())
        };
        let dict = PyDict::new(py);
        dict.set_item("iterations", counters.iterations)?;
        dict.set_item("callbacks_run", counters.callbacks_run)?;
        dict.set_item("callback_errors", counters.callback_errors)?;
        dict.set_item("timers_scheduled", counters.timers_scheduled)?;
        dict.set_item("timers_cancelled", counters.timers_cancelled)?;
        dict.set_item("io_events", counters.io_events)?;
        dict.set_item("polls", counters.polls)?;
        dict.set_item("poll_wait_seconds", counters.poll_wait_ns as f64 / 1e9)?;
        dict.set_item("ready", ready)?;
        dict.set_item("timers", timers)?;
        dict.set_item("watched_fds", fds)?;
        dict.set_item("stream_transports", transports)?;
        Ok(dict)
    }

    /// Debug mode (asyncio's `_debug` attribute).
    #[getter(_debug)]
    fn get_debug_attr(&self) -> bool {
        self.debug_enabled()
    }

    #[setter(_debug)]
    fn set_debug_attr(&self, enabled: &Bound<'_, PyAny>) -> PyResult<()> {
        self.shared.debug.store(enabled.is_truthy()?, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the loop was closed (asyncio's `_closed` attribute).
    #[getter(_closed)]
    fn get_closed_attr(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    #[setter(_closed)]
    fn set_closed_attr(&self, closed: bool) {
        self.closed.store(closed, Ordering::Release);
    }

    /// Whether `stop()` was called (asyncio's `_stopping` attribute).
    #[getter(_stopping)]
    fn get_stopping_attr(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    #[setter(_stopping)]
    fn set_stopping_attr(&self, stopping: bool) {
        self.stopping.store(stopping, Ordering::Relaxed);
    }

    /// The thread running the loop, or None (asyncio's `_thread_id` attribute).
    #[getter(_thread_id)]
    fn get_thread_id_attr(&self) -> Option<u64> {
        match self.thread_id.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    #[setter(_thread_id)]
    fn set_thread_id_attr(&self, thread_id: Option<u64>) {
        self.thread_id.store(thread_id.unwrap_or(0), Ordering::Relaxed);
    }
}

impl LoopCore {
    /// `call_soon` (or, `threadsafe`, `call_soon_threadsafe`) after argument parsing: the
    /// entry points are hand-written vectorcall functions in `fastcall`.
    pub(crate) fn schedule_soon(slf: &Bound<'_, Self>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>, threadsafe: bool) -> PyResult<Py<Handle>> {
        let this = slf.get();
        this.check_closed()?;
        let traceback = match (this.debug_enabled(), threadsafe) {
            (false, _) => None,
            (true, true) => Self::debug_checks(slf, &callback, "call_soon_threadsafe", false)?,
            (true, false) => Self::debug_checks(slf, &callback, "call_soon", true)?,
        };
        let handle = Self::new_handle(slf, callback, args, context, true, traceback)?;
        this.push_ready(slf.py(), handle.clone_ref(slf.py()), threadsafe)?;
        Ok(handle)
    }

    /// `create_task` after argument parsing (its entry point is a hand-written vectorcall
    /// function in `fastcall`): wraps the coroutine `coro` in an `asyncio.Task` (or what the
    /// task factory makes), which schedules its first step. Extra keywords go to the task class
    /// or factory.
    pub(crate) fn spawn_task<'py>(slf: &Bound<'py, Self>, coro: &Bound<'py, PyAny>, name: Option<Bound<'py, PyAny>>, context: Option<Bound<'py, PyAny>>, extra: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        slf.get().check_closed()?;
        let factory = slf.get().task_factory.borrow_mut(py).as_ref().map(|f| f.bind(py).clone());
        let none = py.None().into_bound(py);
        futures::create_task(slf.as_any(), factory, coro, name.as_ref().unwrap_or(&none), context.as_ref().unwrap_or(&none), extra)
    }

    /// `call_at` after argument parsing (the entry points of `call_at` and `call_later` are
    /// hand-written vectorcall functions in `fastcall`).
    /// `given_when` is `call_at`'s `when` when it is not a float, kept for `when()`.
    pub(crate) fn schedule_timer(slf: &Bound<'_, Self>, when: f64, given_when: Option<Bound<'_, PyAny>>, callback: Bound<'_, PyAny>, args: Bound<'_, PyTuple>, context: Option<Bound<'_, PyAny>>, method: &str) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let traceback = Self::debug_checks(slf, &callback, method, true)?;
        let context = HandleContext::given_or_copied(py, context)?;
        let handle = Handle::new(this.shared_with_handles(slf)?, Callback::new(callback, args), context, true, traceback);
        if let Some(given) = given_when {
            handle.keep_given_when(py, given.unbind());
        }
        let init = PyClassInitializer::from(handle).add_subclass(TimerHandle::new(when));
        let timer = Py::new(py, init)?;
        let mut state = this.lock(py);
        state.timers.push(timer.get().deadline(), ScheduledTimer(timer.clone_ref(py)));
        state.counters.timers_scheduled += 1;
        Ok(timer)
    }
}
