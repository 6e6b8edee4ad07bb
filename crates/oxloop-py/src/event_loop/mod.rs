//! `LoopCore`: the native half of `oxloop.Loop` — its construction, its Python-visible
//! methods and properties, and the scheduling of callbacks, timers and tasks.
//!
//! The loop is split by concern: [`state`] holds what it schedules and what its handles and
//! transports share, [`iteration`] runs it, [`fd_watch`] watches descriptors, and
//! [`fast_methods`] holds the hand-written vectorcall entries of the per-callback methods.
//!
//! Invariants:
//! - Python code (`oxloop.Loop`, a subclass) does the once-per-loop work; everything that runs
//!   per callback, per timer or per event is native.
//! - All scheduling state is in the loop's shared part, borrowed through a [`GilCell`] (see
//!   [`state`]); the waiting half of the reactor and the iteration buffers are in `driver`, a
//!   mutex held by the thread running the loop for the whole run (see [`iteration`]).
//! - The loop owns its epoll instance and waker, never a watched descriptor (see
//!   [`fd_watch`]).
//! - A loop made with a virtual clock reads its time from it and moves it (see
//!   [`virtual_wait`]); without one, the only cost is a branch where the time is read.
//! - The ready queue holds callbacks and stream transport events ([`Runnable`]); what stream
//!   transports wrote during an iteration is sent at its end, before the next poll.

pub(crate) mod fast_methods;
mod fd_watch;
mod iteration;
mod state;
mod virtual_wait;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use oxloop_core::clock::Clock;
use oxloop_core::reactor::{self, Registrar, Trigger, Watch};
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple, PyWeakrefReference};
use pyo3::{PyTraverseError, PyVisit};

use self::fd_watch::{fileobj_to_fd, Side};
use self::iteration::Driver;
pub(crate) use self::state::{LoopRef, MAX_READ};
use self::state::{LoopState, Runnable};
use self::virtual_wait::ThreadCensus;
use crate::futures;
use crate::gil_cell::{GilCell, GilRefMut};
use crate::glue::os_error;
use crate::handles::{Callback, Handle, HandleContext, ScheduledTimer, TimerHandle};
use crate::virtual_clock::VirtualClockCore;

/// The native half of `oxloop.Loop`.
#[pyclass(module = "oxloop._core", subclass, weakref, frozen)]
pub struct LoopCore {
    shared: LoopRef,
    /// What only the thread running the loop uses; None once the loop is closed.
    driver: Mutex<Option<Driver>>,
    /// The clock's resolution (asyncio's `_clock_resolution`), read once.
    clock_resolution: f64,
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
    /// The virtual clock the loop was made with (`oxloop.Loop(clock=...)`), or None for the
    /// real monotonic clock. Fixed for the loop's life.
    virtual_clock: Option<Py<VirtualClockCore>>,
    /// What a virtual clock last learnt of the threads that may call into the loop.
    thread_census: GilCell<ThreadCensus>,
}

impl Drop for LoopCore {
    fn drop(&mut self) {
        // Pending handles may sit in cycles with their callbacks' objects: break them.
        Python::attach(|py| self.shared.release_everything(py));
        if let Some(clock) = &self.virtual_clock {
            clock.get().release();
        }
    }
}

#[pymethods]
impl LoopCore {
    /// A new, empty loop core: on the real monotonic clock, or on the `oxloop.VirtualClock`
    /// given as the keyword argument `clock` (other arguments are the subclass's).
    #[new]
    #[pyo3(signature = (*_args, **kwargs))]
    fn py_new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let virtual_clock = match kwargs.map(|k| k.get_item("clock")).transpose()?.flatten() {
            Some(clock) if !clock.is_none() => {
                let clock = clock.cast_into::<VirtualClockCore>().map_err(|err| {
                    pyo3::exceptions::PyTypeError::new_err(format!(
                        "clock must be an oxloop.VirtualClock or None, not {}",
                        err.into_inner()
                            .get_type()
                            .name()
                            .map_or_else(|_| "?".into(), |n| n.to_string())
                    ))
                })?;
                clock.get().claim()?;
                Some(clock.unbind())
            }
            _ => None,
        };
        let (reactor, registrar, waker) = match reactor::new() {
            Ok(parts) => parts,
            Err(err) => {
                if let Some(clock) = &virtual_clock {
                    clock.get().release();
                }
                return Err(err.into());
            }
        };
        Ok(LoopCore {
            virtual_clock,
            thread_census: GilCell::new(ThreadCensus::default()),
            clock_resolution: Clock::resolution(),
            shared: LoopRef::new(py, registrar, waker)?,
            driver: Mutex::new(Some(Driver::new(reactor))),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            thread_id: AtomicU64::new(0),
            task_factory: GilCell::new(None),
            patched_time: GilCell::new(None),
            time_patched: AtomicBool::new(false),
        })
    }

    /// The loop's time: `time.monotonic()`, or its virtual clock's time.
    fn time(&self, py: Python<'_>) -> f64 {
        self.now(py)
    }

    /// The `oxloop.VirtualClock` the loop was made with, or None.
    #[getter]
    fn _virtual_clock(&self, py: Python<'_>) -> Option<Py<VirtualClockCore>> {
        self.virtual_clock.as_ref().map(|c| c.clone_ref(py))
    }

    /// Virtual clock: real work started that the loop will hear back from (an executor job, a
    /// child process, a connection being made): time may not jump until `_release_time()`.
    fn _hold_time(&self, py: Python<'_>) {
        self.state(py).time_holds += 1;
    }

    /// Virtual clock: the real work of a `_hold_time()` is over.
    fn _release_time(&self, py: Python<'_>) {
        let mut state = self.state(py);
        state.time_holds = state.time_holds.saturating_sub(1);
    }

    /// Virtual clock: sets `future`'s result the next time nothing is ready and nothing is
    /// outstanding, instead of moving time (`VirtualClock.run_until_idle()`).
    fn _add_idle_waiter(&self, future: Bound<'_, PyAny>) -> PyResult<()> {
        self.check_closed()?;
        self.state(future.py()).idle_waiters.push(future.unbind());
        Ok(())
    }

    /// Sets an attribute as `object.__setattr__` does, noting a patched `time`.
    fn __setattr__(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyString>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
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
    /// (conservatively) if the state is borrowed.
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
        let old =
            (self.task_factory.borrow_mut(py).take(), self.patched_time.borrow_mut(py).take());
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
        Self::run_until_stopped(slf)
    }

    /// Runs one iteration (asyncio's `_run_once`).
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::run_one_iteration(slf)
    }

    /// Marks the loop closed and releases every pending callback, timer and fd watch.
    fn _close_core(&self, py: Python<'_>) -> PyResult<()> {
        let mut driver = self.lock_driver()?;
        self.closed.store(true, Ordering::Release);
        self.shared.release_everything(py);
        *driver = None; // closes the epoll instance
        if let Some(clock) = &self.virtual_clock {
            clock.get().release();
        }
        Ok(())
    }

    /// Watches the read end of the signal wakeup pipe: it ends a wait when a signal arrives
    /// and is drained natively (signal handlers themselves run from Python's signal module).
    fn _set_wakeup_reader(&self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        let mut state = self.state(py);
        let registrar = state
            .registrar
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("Event loop is closed"))?;
        registrar
            .set_watch(fd, Watch { readable: true, writable: false, trigger: Trigger::Edge })
            .map_err(os_error)?;
        state.wakeup_reader = Some(fd);
        Ok(())
    }

    /// Watches `fd` for reading: `callback(*args)` runs each iteration while it is readable.
    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::add_fd_callback(slf, fd, Side::Read, callback, args, true).map(drop)
    }

    /// Like `add_reader`, returning the handle, and allowed on a transport's fd (for the
    /// loop's own use, as asyncio's `_add_reader`).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
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
    fn add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::add_fd_callback(slf, fd, Side::Write, callback, args, true).map(drop)
    }

    /// Like `add_writer`, returning the handle, and allowed on a transport's fd (asyncio's
    /// `_add_writer`).
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
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
            let state = self.state(py);
            (
                state.counters,
                state.ready.len(),
                state.timers.len(),
                state.registrar.as_ref().map_or(0, Registrar::len),
                state.streams.len(),
            )
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
    /// Borrows the scheduling state (by the rule of [`GilCell`]).
    #[inline]
    fn state<'a>(&'a self, py: Python<'a>) -> GilRefMut<'a, LoopState> {
        self.shared.state(py)
    }

    /// Takes the driver (the reactor's waiting half and the iteration buffers): only one
    /// thread may run the loop.
    fn lock_driver(&self) -> PyResult<MutexGuard<'_, Option<Driver>>> {
        self.driver
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("This event loop is already running"))
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
    fn debug_checks(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<Option<Py<PyAny>>> {
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
    fn new_handle(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        one_shot: bool,
        traceback: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let context = HandleContext::given_or_copied(py, context)?;
        Py::new(
            py,
            Handle::new(
                slf.get().shared_with_handles(slf)?,
                Callback::new(callback, args),
                context,
                one_shot,
                traceback,
            ),
        )
    }

    /// The shared part, for a new stream transport of the loop `slf`.
    pub(crate) fn shared_for_transport(slf: &Bound<'_, Self>) -> PyResult<LoopRef> {
        slf.get().check_closed()?;
        slf.get().shared_with_handles(slf)
    }

    /// The shared part, for a new handle; records the loop object on first use.
    fn shared_with_handles(&self, slf: &Bound<'_, Self>) -> PyResult<LoopRef> {
        self.shared
            .loop_object
            .get_or_try_init(slf.py(), || PyWeakrefReference::new(slf).map(Bound::unbind))?;
        Ok(self.shared.clone_ref(slf.py()))
    }

    /// Appends a handle to the ready queue; wakes the poller if `threadsafe` and it waits.
    #[inline]
    fn push_ready(&self, py: Python<'_>, handle: Py<Handle>, threadsafe: bool) -> PyResult<()> {
        let mut state = self.state(py);
        state.ready.push(Runnable::Callback(handle));
        if threadsafe && state.waiting {
            if let Some(waker) = &state.waker {
                // A non-blocking write to an eventfd: no Python, allowed during the borrow.
                waker.wake()?;
            }
        }
        Ok(())
    }

    /// `call_soon` (or, `threadsafe`, `call_soon_threadsafe`) after argument parsing: the
    /// entry points are hand-written vectorcall functions in `fast_methods`.
    pub(crate) fn schedule_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        threadsafe: bool,
    ) -> PyResult<Py<Handle>> {
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
    /// function in `fast_methods`): wraps the coroutine `coro` in an `asyncio.Task` (or what the
    /// task factory makes), which schedules its first step. Extra keywords go to the task class
    /// or factory.
    pub(crate) fn spawn_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<Bound<'py, PyAny>>,
        context: Option<Bound<'py, PyAny>>,
        extra: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        slf.get().check_closed()?;
        let factory = slf.get().task_factory.borrow_mut(py).as_ref().map(|f| f.bind(py).clone());
        let none = py.None().into_bound(py);
        futures::create_task(
            slf.as_any(),
            factory,
            coro,
            name.as_ref().unwrap_or(&none),
            context.as_ref().unwrap_or(&none),
            extra,
        )
    }

    /// `call_at` after argument parsing (the entry points of `call_at` and `call_later` are
    /// hand-written vectorcall functions in `fast_methods`).
    /// `given_when` is `call_at`'s `when` when it is not a float, kept for `when()`.
    pub(crate) fn schedule_timer(
        slf: &Bound<'_, Self>,
        when: f64,
        given_when: Option<Bound<'_, PyAny>>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        method: &str,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let traceback = Self::debug_checks(slf, &callback, method, true)?;
        let context = HandleContext::given_or_copied(py, context)?;
        let handle = Handle::new(
            this.shared_with_handles(slf)?,
            Callback::new(callback, args),
            context,
            true,
            traceback,
        );
        if let Some(given) = given_when {
            handle.keep_given_when(py, given.unbind());
        }
        let init = PyClassInitializer::from(handle).add_subclass(TimerHandle::new(when));
        let timer = Py::new(py, init)?;
        let mut state = this.state(py);
        state.timers.push(timer.get().deadline(), ScheduledTimer(timer.clone_ref(py)));
        state.counters.timers_scheduled += 1;
        Ok(timer)
    }

    /// The time timers are scheduled and run by: the loop's clock, or what a `time` patched
    /// on the loop object says (see `patched_time`).
    #[inline]
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
        let old = std::mem::replace(
            &mut *self.patched_time.borrow_mut(py),
            value.map(|v| v.clone().unbind()),
        );
        self.time_patched.store(value.is_some(), Ordering::Relaxed);
        drop(old); // after the borrow ends: dropping may run a finalizer
    }

    /// The loop's time: its clock's, or its virtual clock's.
    #[inline]
    pub(crate) fn now(&self, py: Python<'_>) -> f64 {
        match &self.virtual_clock {
            None => Clock::now(),
            Some(clock) => virtual_now(clock, py),
        }
    }
}

/// A virtual clock's time: out of line, so that the real clock's path stays as short as it
/// was before virtual clocks existed.
#[cold]
#[inline(never)]
fn virtual_now(clock: &Py<VirtualClockCore>, py: Python<'_>) -> f64 {
    clock.get().now(py)
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
fn generic_setattr(
    object: &Bound<'_, PyAny>,
    name: &Bound<'_, PyString>,
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let value = value.map_or(std::ptr::null_mut(), Bound::as_ptr);
    // SAFETY: the GIL is held and both objects are alive; a NULL value deletes, as the C API
    // defines. On failure an exception is set, which `PyErr::fetch` takes.
    if unsafe { ffi::PyObject_GenericSetAttr(object.as_ptr(), name.as_ptr(), value) } < 0 {
        return Err(PyErr::fetch(object.py()));
    }
    Ok(())
}
