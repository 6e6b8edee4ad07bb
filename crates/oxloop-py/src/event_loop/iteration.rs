//! One iteration of the loop (asyncio's `_run_once`) and the runs made of them: the driver
//! that owns the reactor's waiting half, the buffers iterations reuse, due timers, and the
//! end-of-iteration flush of stream transports.
//!
//! Invariants:
//! - The driver is a mutex, locked by the thread running the loop for the whole run; it
//!   waits with the GIL released and without borrowing the loop's state. Other threads
//!   (holding the GIL) only push to the ready queue and trigger the waker, and only when the
//!   loop is waiting.
//! - The iteration buffers are empty between iterations: Python objects put in them under the
//!   state borrow are dropped after it ends, in the iteration that put them there.
//! - One iteration runs exactly the callbacks that were ready when it started (asyncio's rule);
//!   if a callback raises `KeyboardInterrupt` or `SystemExit`, the rest of the batch is put back
//!   at the head of the queue before the exception leaves the loop. A panic (ours, or a
//!   `PanicException` a callback raised) is caught around the iteration and leaves the loop
//!   the same way, as a `PanicException`; the driver's mutex is not poisoned by it.
//! - What stream transports wrote during an iteration is sent at its end
//!   (`flush_transports`), before the next poll.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use oxloop_core::clock::Clock;
use oxloop_core::reactor::{Reactor, Readiness};
use oxloop_core::ready::ReadyQueue;
use pyo3::exceptions::PyRuntimeError;
use pyo3::panic::PanicException;
use pyo3::prelude::*;

use super::state::{LoopState, Runnable};
use super::LoopCore;
use crate::handles::{Handle, ScheduledTimer};
use crate::stream::StreamTransport;
use crate::virtual_clock::VirtualClockCore;

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: the longest single wait, in seconds.
const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;

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
    /// Nothing to wait for: the batch is taken without polling.
    Skip,
    /// Poll for at most this many seconds (`None`: no limit).
    Poll(Option<f64>),
    /// A virtual-clock loop with nothing ready: the jump rule decides (see `virtual_wait`);
    /// the earliest timer's deadline, if any.
    Virtual(Option<f64>),
}

/// The part of the loop only the thread running it uses: the reactor's waiting half and the
/// buffers iterations reuse.
pub(super) struct Driver {
    reactor: Reactor,
    buffers: IterationBuffers,
}

impl Driver {
    /// A driver waiting with `reactor`, with empty buffers.
    pub(super) fn new(reactor: Reactor) -> Self {
        Driver { reactor, buffers: IterationBuffers::default() }
    }
}

/// Buffers the loop reuses from iteration to iteration and from one run to the next, so that
/// an iteration allocates nothing and a run does not start by growing them again (freeing
/// large buffers hands their pages back to the system, and a page faulted in again costs
/// about as much as a callback). They are empty between iterations: Python objects in them
/// are dropped after the state borrow ends, in the iteration that put them there.
#[derive(Default)]
pub(super) struct IterationBuffers {
    pub(super) batch: VecDeque<Runnable>,
    /// The transports to flush at the end of an iteration.
    flushes: Vec<Py<StreamTransport>>,
    io_events: Vec<Readiness>,
    released_objects: Vec<Py<PyAny>>,
    released_timers: Vec<ScheduledTimer>,
    /// Callbacks run since the counters were last updated (added at the next state borrow).
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

impl LoopState {
    /// Whether a zero-timeout poll could report anything: not when no descriptor but the
    /// wakeup pipe is watched (threadsafe calls reach the ready queue directly, and signals
    /// are handled by `check_signals` every iteration). Skipping it then changes nothing but
    /// the cost of a system call per iteration.
    pub(super) fn poll_can_report(&self) -> bool {
        self.registrar.as_ref().is_some_and(|r| r.len() > usize::from(self.wakeup_reader.is_some()))
    }

    /// Moves the timers due now to the ready queue (asyncio: deadline before now plus the
    /// clock's resolution), then takes the whole queue as this iteration's batch.
    /// `known_now` is the time when the real clock is not the loop's (a virtual clock, or a
    /// patched `loop.time`: see `LoopCore::known_now`).
    pub(super) fn take_batch(
        &mut self,
        py: Python<'_>,
        resolution: f64,
        known_now: Option<f64>,
        batch: &mut VecDeque<Runnable>,
    ) {
        if !self.timers.is_empty() {
            // The clock is read only when there are timers to compare with it.
            let now = known_now.unwrap_or_else(Clock::now);
            // At times as large as the epoch, the resolution is below a float's step: a timer
            // due exactly now must still be due (a virtual clock sits on its deadline).
            let end = (now + resolution).max(now.next_up());
            let mut due = DueTimers { py, ready: &mut self.ready };
            self.timers.pop_due(end, |t| t.bind(py).as_super().get().is_cancelled(), &mut due);
        }
        self.ready.take_batch(batch);
    }
}

impl LoopCore {
    /// Runs iterations until `stop()` (the core of `run_forever`).
    pub(super) fn run_until_stopped(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let mut driver = this.lock_driver()?;
        let Driver { reactor, buffers } =
            driver.as_mut().ok_or_else(|| PyRuntimeError::new_err("Event loop is closed"))?;
        let result = loop {
            if let Err(err) = Self::run_once_catching_panics(slf, reactor, buffers) {
                break Err(err);
            }
            if this.stopping.load(Ordering::Relaxed) {
                break Ok(());
            }
        };
        this.state(slf.py()).counters.callbacks_run += std::mem::take(&mut buffers.callbacks_run);
        result
    }

    /// Runs one iteration (asyncio's `_run_once`).
    pub(super) fn run_one_iteration(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let mut driver = this.lock_driver()?;
        let Driver { reactor, buffers } =
            driver.as_mut().ok_or_else(|| PyRuntimeError::new_err("Event loop is closed"))?;
        let result = Self::run_once_catching_panics(slf, reactor, buffers);
        this.state(slf.py()).counters.callbacks_run += std::mem::take(&mut buffers.callbacks_run);
        result
    }

    /// Sends what was written to stream transports during the iteration.
    fn flush_transports(slf: &Bound<'_, Self>, buffers: &mut IterationBuffers) -> PyResult<()> {
        let py = slf.py();
        let shared = &slf.get().shared;
        if !shared.flush_queued.load(Ordering::Relaxed) {
            return Ok(());
        }
        {
            let mut state = shared.state(py);
            shared.flush_queued.store(false, Ordering::Relaxed);
            std::mem::swap(&mut state.flush_queue, &mut buffers.flushes);
        }
        let mut pending = buffers.flushes.drain(..);
        while let Some(transport) = pending.next() {
            if let Err(err) = StreamTransport::flush_queued(transport.bind(py)) {
                let rest: Vec<_> = pending.collect();
                shared.state(py).flush_queue.extend(rest);
                shared.flush_queued.store(true, Ordering::Relaxed);
                return Err(err);
            }
        }
        Ok(())
    }

    /// The time to compare timers with when it is not the real clock's: a patched
    /// `loop.time`'s (`patched_now`), or the virtual clock's.
    pub(super) fn known_now(&self, py: Python<'_>, patched_now: Option<f64>) -> Option<f64> {
        patched_now.or_else(|| self.virtual_clock.as_ref().map(|clock| clock.get().now(py)))
    }

    /// Polls for at most `timeout` seconds (`None`: until something happens), queues what
    /// became ready and the timers now due, and takes the batch. With `advance`, a virtual
    /// clock is moved on by the time the poll waited, up to the given deadline.
    #[inline(always)]
    pub(super) fn poll_and_take_batch(
        slf: &Bound<'_, Self>,
        reactor: &mut Reactor,
        buffers: &mut IterationBuffers,
        timeout: Option<f64>,
        advance: Option<(&VirtualClockCore, Option<f64>)>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let started = Instant::now();
        let io_events = &mut buffers.io_events;
        let timeout = timeout.map(Duration::from_secs_f64);
        // A zero-timeout poll does not block: the GIL is kept (releasing and taking it
        // back would cost more than the system call).
        let outcome = if timeout == Some(Duration::ZERO) {
            reactor.poll(timeout, io_events)
        } else {
            py.detach(|| reactor.poll(timeout, io_events))
        };
        let waited = started.elapsed();
        if let Some((clock, deadline)) = advance {
            clock.advance_waited(py, waited.as_nanos() as u64, deadline);
        }
        // Read again after the wait, as asyncio does (outside the borrow: it calls Python).
        let patched_now = this.patched_now(py);
        {
            let mut state = this.state(py);
            state.waiting = false;
            state.counters.polls += 1;
            state.counters.poll_wait_ns += waited.as_nanos() as u64;
            state.counters.io_events += buffers.io_events.len() as u64;
            for event in buffers.io_events.drain(..) {
                state.dispatch_io(py, event, &mut buffers.released_objects);
            }
            if let Ok(patched_now) = patched_now {
                let now = this.known_now(py, patched_now);
                state.take_batch(py, this.clock_resolution, now, &mut buffers.batch);
            }
        }
        // Dropped after the borrow.
        buffers.released_objects.clear();
        // A patched `time` that raised: its exception leaves the loop, as in asyncio (the
        // events are queued, nothing was taken out of the queue).
        patched_now?;
        if let Err(err) = outcome {
            this.state(py).ready.requeue_front(&mut buffers.batch);
            return Err(err.into());
        }
        Ok(())
    }

    /// One iteration: wait for I/O or the next timer, queue what became ready, run the batch.
    fn run_once(
        slf: &Bound<'_, Self>,
        reactor: &mut Reactor,
        buffers: &mut IterationBuffers,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let is_cancelled = |t: &ScheduledTimer| t.bind(py).as_super().get().is_cancelled();
        Self::flush_transports(slf, buffers)?;
        let patched_now = this.patched_now(py)?;
        let wait = {
            let mut state = this.state(py);
            state.counters.iterations += 1;
            state.counters.callbacks_run += std::mem::take(&mut buffers.callbacks_run);
            state.timers.purge_cancelled(is_cancelled, &mut buffers.released_timers);
            if !state.ready.is_empty() || this.stopping.load(Ordering::Relaxed) {
                if state.poll_can_report() {
                    Wait::Poll(Some(0.0))
                } else {
                    let now = this.known_now(py, patched_now);
                    state.take_batch(py, this.clock_resolution, now, &mut buffers.batch);
                    Wait::Skip
                }
            } else if this.virtual_clock.is_some() {
                Wait::Virtual(state.timers.next_deadline())
            } else {
                let deadline = state.timers.next_deadline();
                state.waiting = true;
                let timeout = match patched_now {
                    None => Clock::poll_timeout(deadline),
                    Some(now) => deadline.map(|when| (when - now).max(0.0)),
                };
                Wait::Poll(timeout.map(|t| t.min(MAXIMUM_SELECT_TIMEOUT)))
            }
        };
        buffers.released_timers.clear(); // dropped after the borrow

        match wait {
            Wait::Skip => {}
            Wait::Poll(timeout) => Self::poll_and_take_batch(slf, reactor, buffers, timeout, None)?,
            Wait::Virtual(deadline) => Self::wait_virtually(slf, reactor, buffers, deadline)?,
        }
        // Outside the borrow: a signal handler may schedule callbacks. Fails only by raising
        // (KeyboardInterrupt): the batch goes back to the queue first.
        if let Err(err) = py.check_signals() {
            this.state(py).ready.requeue_front(&mut buffers.batch);
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
                Runnable::StreamRead(transport) => Self::run_stream_event(
                    slf,
                    transport.bind(py),
                    debug,
                    StreamTransport::on_readable,
                    "_read_ready",
                ),
                Runnable::StreamWrite(transport) => Self::run_stream_event(
                    slf,
                    transport.bind(py),
                    debug,
                    StreamTransport::on_writable,
                    "_write_ready",
                ),
            };
            buffers.callbacks_run += 1;
            if let Err(err) = result {
                let mut state = this.state(py);
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
    fn run_once_catching_panics(
        slf: &Bound<'_, Self>,
        reactor: &mut Reactor,
        buffers: &mut IterationBuffers,
    ) -> PyResult<()> {
        match catch_unwind(AssertUnwindSafe(|| Self::run_once(slf, reactor, buffers))) {
            Ok(result) => result,
            Err(payload) => {
                slf.get().state(slf.py()).ready.requeue_front(&mut buffers.batch);
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
    fn run_stream_event(
        slf: &Bound<'_, Self>,
        transport: &Bound<'_, StreamTransport>,
        debug: bool,
        run: fn(&Bound<'_, StreamTransport>) -> PyResult<()>,
        name: &str,
    ) -> PyResult<()> {
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
}
