//! How a loop with a virtual clock waits: the jump rule.
//!
//! When nothing is ready, a real-clock loop sleeps in its poll until the next deadline. A
//! virtual-clock loop instead asks whether anything could happen before that deadline:
//!
//! 1. If real work is outstanding — a `_hold_time()` (an executor job, a running child, a
//!    connection being made), a request written to another process and not yet answered (or
//!    answered less than the clock's `io_quiet_period` ago), or a live thread that may call
//!    into the loop — it waits in real time, and virtual time runs with real time.
//! 2. Otherwise, if a zero-timeout poll finds something, that happens first (no time passes).
//! 3. Otherwise, futures from `run_until_idle()` are resolved (no time passes).
//! 4. Otherwise it jumps to the next deadline, where the due timers run in order.
//! 5. With no timer, it waits in real time if something outside the loop may still wake it
//!    (a descriptor other than its own loopback pairs, a signal handler); if nothing can, it
//!    raises `oxloop.DeadlockError` naming the waiting tasks.
//!
//! Invariants: runs on the loop's thread with the GIL held (the real waits release it, after
//! setting `waiting` in the same borrow that checks the ready queue, so a threadsafe call made
//! meanwhile wakes the poll). Virtual time never moves while a callback is ready, and moves in
//! real time only while real work is outstanding.

use std::time::Duration;

use oxloop_core::clock::monotonic_ns;
use oxloop_core::reactor::Reactor;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use super::iteration::IterationBuffers;
use super::LoopCore;
use crate::virtual_clock::{Peer, VirtualClockCore};

/// While a thread other than the loop's is alive, the loop looks again this often whether it
/// still is (a thread that ends without calling into the loop does not wake it).
const THREAD_RECHECK: Duration = Duration::from_millis(5);

/// What the loop last learnt of the threads that may call into it: the threads it was
/// computed for (see [`ThreadSet`]; the default matches none), and how many of them are outside
/// the loop (not its own thread, not an idle worker of an executor it used).
#[derive(Default)]
pub(super) struct ThreadCensus {
    threads: ThreadSet,
    outside: usize,
}

/// Which threads `threading` knows (alive or starting), as a count and a sum of the addresses
/// of their `Thread` objects. Two sets with the same count and sum are taken to be the same:
/// a census that found no thread outside the loop was made while every `Thread` object it
/// counted was referenced (by `threading`, or by the executor it belongs to), so none of their
/// addresses can have been reused by a thread started since.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct ThreadSet {
    count: usize,
    address_sum: usize,
}

/// How long real work keeps virtual time from jumping.
enum Hold {
    /// Nothing outstanding.
    Free,
    /// Wait in real time, at most this long (`None`: until woken or the next deadline).
    For(Option<Duration>),
}

impl Hold {
    /// The shorter of two holds.
    fn and(self, other: Hold) -> Hold {
        match (self, other) {
            (Hold::Free, hold) | (hold, Hold::Free) => hold,
            (Hold::For(a), Hold::For(b)) => Hold::For(match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }),
        }
    }
}

/// The threads `threading` knows: the values of `threading._active` and `threading._limbo`,
/// read without a call into Python (None where those are missing: the census is then taken
/// every time).
fn thread_set(py: Python<'_>) -> PyResult<Option<ThreadSet>> {
    static REGISTRY: PyOnceLock<Option<(Py<PyDict>, Py<PyDict>)>> = PyOnceLock::new();
    let registry = REGISTRY.get_or_try_init(py, || -> PyResult<_> {
        let threading = py.import("threading")?;
        let dict = |name| -> Option<Py<PyDict>> {
            threading.getattr(name).ok()?.cast_into::<PyDict>().ok().map(Bound::unbind)
        };
        Ok(dict("_active").zip(dict("_limbo")))
    })?;
    let Some((active, limbo)) = registry else { return Ok(None) };
    let mut set = ThreadSet::default();
    for dict in [active, limbo] {
        for (_, thread) in dict.bind(py).iter() {
            set.count += 1;
            set.address_sum = set.address_sum.wrapping_add(thread.as_ptr() as usize);
        }
    }
    Ok(Some(set))
}

impl LoopCore {
    /// One wait of a virtual-clock loop with nothing ready (the rule in the module notes);
    /// `deadline` is the earliest timer's. Leaves the batch to run taken.
    pub(super) fn wait_virtually(
        slf: &Bound<'_, Self>,
        reactor: &mut Reactor,
        buffers: &mut IterationBuffers,
        deadline: Option<f64>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let clock = this.virtual_clock.as_ref().expect("a virtual-clock loop").get();
        if let Hold::For(cap) = Self::real_work_hold(slf, clock)? {
            let until_deadline = deadline.map(|d| (d - clock.now(py)).max(0.0));
            let timeout = match (until_deadline, cap) {
                (Some(d), Some(c)) => Some(d.min(c.as_secs_f64())),
                (d, c) => d.or(c.map(|c| c.as_secs_f64())),
            };
            return Self::real_wait(slf, reactor, buffers, clock, timeout, deadline);
        }
        // Nothing outstanding: what the poller has now is all that can happen before the
        // next deadline.
        if this.state(py).poll_can_report() {
            Self::poll_and_take_batch(slf, reactor, buffers, Some(0.0), None)?;
            if !buffers.batch.is_empty() {
                return Ok(());
            }
        }
        let idle_waiters = std::mem::take(&mut this.state(py).idle_waiters);
        if !idle_waiters.is_empty() {
            for waiter in idle_waiters {
                let waiter = waiter.into_bound(py);
                if !waiter.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                    waiter.call_method1(pyo3::intern!(py, "set_result"), (py.None(),))?;
                }
            }
            Self::take_batch_now(slf, buffers);
            return Ok(());
        }
        if let Some(deadline) = deadline {
            clock.jump_to(py, deadline);
            Self::take_batch_now(slf, buffers);
            return Ok(());
        }
        // No timer: only something outside the loop can still wake it.
        if !Self::may_be_woken_from_outside(slf) {
            let deadlock = slf.call_method0(pyo3::intern!(py, "_deadlock_error"))?;
            if !deadlock.is_none() {
                return Err(PyErr::from_value(deadlock));
            }
        }
        Self::real_wait(slf, reactor, buffers, clock, None, None)
    }

    /// Waits in real time for at most `timeout` seconds, virtual time running with real time
    /// up to `deadline`.
    fn real_wait(
        slf: &Bound<'_, Self>,
        reactor: &mut Reactor,
        buffers: &mut IterationBuffers,
        clock: &VirtualClockCore,
        timeout: Option<f64>,
        deadline: Option<f64>,
    ) -> PyResult<()> {
        let timeout = {
            let mut state = slf.get().state(slf.py());
            // Set in the same borrow that looks at the queue: a threadsafe call made since the
            // iteration began (Python ran in between) is already queued, and one made from now
            // on wakes the poll.
            state.waiting = true;
            if state.ready.is_empty() {
                timeout
            } else {
                Some(0.0)
            }
        };
        Self::poll_and_take_batch(slf, reactor, buffers, timeout, Some((clock, deadline)))
    }

    /// Takes the batch at the virtual clock's time (nothing was polled).
    fn take_batch_now(slf: &Bound<'_, Self>, buffers: &mut IterationBuffers) {
        let py = slf.py();
        let this = slf.get();
        let now = this.known_now(py, None);
        this.state(py).take_batch(py, this.clock_resolution, now, &mut buffers.batch);
    }

    /// What keeps virtual time from jumping now (see the module notes).
    fn real_work_hold(slf: &Bound<'_, Self>, clock: &VirtualClockCore) -> PyResult<Hold> {
        let py = slf.py();
        let this = slf.get();
        let mut hold = Hold::Free;
        {
            let state = this.state(py);
            if state.time_holds > 0 {
                return Ok(Hold::For(None));
            }
            // Read only if there are streams to look at (a clock read is a fifth of a jump).
            let now = if state.streams.is_empty() { 0 } else { monotonic_ns() };
            for transport in state.streams.values() {
                match transport.get().peer().holds_time(now, clock.io_quiet_period_ns()) {
                    None => {}
                    Some(None) => return Ok(Hold::For(None)),
                    Some(Some(left)) => {
                        hold = hold.and(Hold::For(Some(Duration::from_nanos(left))))
                    }
                }
            }
        }
        if Self::threads_outside_loop(slf)? > 0 {
            hold = hold.and(Hold::For(Some(THREAD_RECHECK)));
        }
        Ok(hold)
    }

    /// How many live threads may call into the loop (see [`ThreadCensus`]); asks the loop's
    /// `_threads_outside_loop()` unless the threads are those of a census that found none.
    fn threads_outside_loop(slf: &Bound<'_, Self>) -> PyResult<usize> {
        let py = slf.py();
        let this = slf.get();
        let threads = thread_set(py)?;
        if threads.is_some_and(|t| t.count <= 1) {
            return Ok(0);
        }
        {
            let census = this.thread_census.borrow_mut(py);
            if threads == Some(census.threads) && census.outside == 0 {
                return Ok(0);
            }
        }
        let outside = slf.call_method0(pyo3::intern!(py, "_threads_outside_loop"))?.extract()?;
        *this.thread_census.borrow_mut(py) =
            ThreadCensus { threads: threads.unwrap_or_default(), outside };
        Ok(outside)
    }

    /// Whether a descriptor the loop watches may become ready by the doing of something
    /// outside the loop: any but the signal wakeup pipe and the loop's own loopback
    /// connections (whose other end is in the loop). Signal handlers are the Python half's
    /// business (`_deadlock_error`).
    fn may_be_woken_from_outside(slf: &Bound<'_, Self>) -> bool {
        let state = slf.get().state(slf.py());
        let watched = state.registrar.as_ref().map_or(0, |r| r.len());
        let own = usize::from(state.wakeup_reader.is_some())
            + state.streams.values().filter(|t| t.get().peer().kind() == Peer::InLoop).count();
        watched > own
    }
}
