//! `VirtualClockCore`: the native half of `oxloop.VirtualClock` (the time a virtual-clock loop
//! reads and moves), and [`PeerWatch`], what a stream transport tells that loop about its peer.
//!
//! Invariants:
//! - A clock is used by at most one loop at a time (`in_use`, claimed when the loop is made,
//!   released when it closes or is freed). Its time is in a [`GilCell`]: read and moved with
//!   the GIL held, by the thread running that loop (and read by any thread holding the GIL).
//! - A [`PeerWatch`] belongs to one stream transport and is touched only on its loop's thread;
//!   it costs a transport on a real-clock loop one relaxed load per read and per write.
//!   The jump rule that reads it is in `event_loop::virtual_wait`.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};

use oxloop_core::clock::monotonic_ns;
use oxloop_core::virtual_time::VirtualTime;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::gil_cell::GilCell;

/// The native half of `oxloop.VirtualClock`: a loop's virtual time and its settings.
#[pyclass(module = "oxloop._core", subclass, frozen, weakref)]
pub struct VirtualClockCore {
    time: GilCell<VirtualTime>,
    /// The time the clock started at, in seconds.
    start: f64,
    /// `CLOCK_MONOTONIC` when the clock was made, in nanoseconds (for `real_elapsed`).
    made_real_ns: i64,
    /// How long a connection to another process holds time after its last read, in ns.
    io_quiet_period_ns: u64,
    /// Whether `time.time()`, `time.monotonic()`... follow this clock while its loop runs.
    patch_time: bool,
    /// A loop uses this clock.
    in_use: AtomicBool,
}

#[pymethods]
impl VirtualClockCore {
    /// A clock starting at `start` seconds (see `oxloop.VirtualClock`). The default
    /// `io_quiet_period`, 20 ms, lets a reply from another process that comes in several
    /// pieces arrive whole before time may jump.
    #[new]
    #[pyo3(signature = (start = 0.0, *, patch_time = false, io_quiet_period = 0.02))]
    fn py_new(start: f64, patch_time: bool, io_quiet_period: f64) -> PyResult<Self> {
        let time = VirtualTime::new(start).map_err(|_| {
            PyValueError::new_err(format!(
                "start must be a finite number of seconds >= 0 and < 9.2e9, not {start}"
            ))
        })?;
        if !(io_quiet_period.is_finite() && (0.0..=3600.0).contains(&io_quiet_period)) {
            return Err(PyValueError::new_err(format!(
                "io_quiet_period must be between 0 and 3600 seconds, not {io_quiet_period}"
            )));
        }
        Ok(VirtualClockCore {
            time: GilCell::new(time),
            start,
            made_real_ns: monotonic_ns(),
            io_quiet_period_ns: (io_quiet_period * 1e9) as u64,
            patch_time,
            in_use: AtomicBool::new(false),
        })
    }

    /// The virtual time in seconds (what `loop.time()` returns on the clock's loop).
    fn time(&self, py: Python<'_>) -> f64 {
        self.now(py)
    }

    /// The virtual time in integer nanoseconds.
    fn time_ns(&self, py: Python<'_>) -> i64 {
        self.time.borrow_mut(py).now_ns()
    }

    /// The time the clock started at, in seconds.
    #[getter]
    fn start(&self) -> f64 {
        self.start
    }

    /// Real seconds since the clock was made.
    #[getter]
    fn real_elapsed(&self) -> f64 {
        (monotonic_ns() - self.made_real_ns) as f64 / 1e9
    }

    /// How long a connection to another process holds time after it last received data, in
    /// seconds.
    #[getter]
    fn io_quiet_period(&self) -> f64 {
        self.io_quiet_period_ns as f64 / 1e9
    }

    /// Whether `time.time()`, `time.monotonic()`, `time.perf_counter()` (and their `_ns`
    /// forms) follow this clock on its loop's thread while the loop runs.
    #[getter]
    fn patch_time(&self) -> bool {
        self.patch_time
    }
}

impl VirtualClockCore {
    /// The virtual time in seconds.
    #[inline]
    pub(crate) fn now(&self, py: Python<'_>) -> f64 {
        self.time.borrow_mut(py).now()
    }

    /// Jumps to a timer's deadline (nothing else could happen first).
    pub(crate) fn jump_to(&self, py: Python<'_>, deadline: f64) {
        self.time.borrow_mut(py).jump_to(deadline);
    }

    /// Moves on by `ns` nanoseconds of real waiting, stopping at `deadline` if the wait
    /// reached it (see `VirtualTime::advance_waited`).
    pub(crate) fn advance_waited(&self, py: Python<'_>, ns: u64, deadline: Option<f64>) {
        self.time.borrow_mut(py).advance_waited(ns, deadline);
    }

    /// How long a connection holds time after its last read, in nanoseconds.
    pub(crate) fn io_quiet_period_ns(&self) -> u64 {
        self.io_quiet_period_ns
    }

    /// Claims the clock for a new loop.
    pub(crate) fn claim(&self) -> PyResult<()> {
        if self.in_use.swap(true, Ordering::AcqRel) {
            return Err(PyRuntimeError::new_err(
                "this VirtualClock is already used by another event loop",
            ));
        }
        Ok(())
    }

    /// Lets the clock be used by another loop (its loop closed or was freed).
    pub(crate) fn release(&self) {
        self.in_use.store(false, Ordering::Release);
    }
}

/// Where a stream transport's peer is, for a virtual clock ([`PeerWatch::kind`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Peer {
    /// Not classified (the loop has a real clock): nothing is recorded.
    Untracked = 0,
    /// The other end is a transport of the same loop: it never holds time.
    InLoop = 1,
    /// Another process connected to this loop's server: it may send at any time (the loop
    /// may wait for it), but the loop awaits no reply from it.
    OutsideClient = 2,
    /// This loop connected to another process: a request written and not yet answered holds
    /// time (see `event_loop::virtual_wait`).
    OutsideServer = 3,
}

impl Peer {
    /// From the name `_set_peer` is given.
    fn parse(name: &str) -> PyResult<Self> {
        Ok(match name {
            "in_loop" => Peer::InLoop,
            "outside_client" => Peer::OutsideClient,
            "outside_server" => Peer::OutsideServer,
            _ => return Err(PyValueError::new_err(format!("unknown peer kind {name:?}"))),
        })
    }
}

/// What a stream transport records about its peer for a virtual clock: where it is, whether a
/// request to it awaits a reply, and when it last sent something.
pub(crate) struct PeerWatch {
    kind: AtomicU8,
    awaiting_reply: AtomicBool,
    /// `CLOCK_MONOTONIC` at the last read, in nanoseconds.
    last_read_ns: AtomicI64,
}

impl PeerWatch {
    /// An untracked peer.
    pub(crate) const fn new() -> Self {
        PeerWatch {
            kind: AtomicU8::new(Peer::Untracked as u8),
            awaiting_reply: AtomicBool::new(false),
            last_read_ns: AtomicI64::new(0),
        }
    }

    /// Sets where the peer is, from its name ("in_loop", "outside_client", "outside_server").
    pub(crate) fn set_kind(&self, name: &str) -> PyResult<()> {
        self.kind.store(Peer::parse(name)? as u8, Ordering::Relaxed);
        Ok(())
    }

    /// Where the peer is.
    pub(crate) fn kind(&self) -> Peer {
        match self.kind.load(Ordering::Relaxed) {
            1 => Peer::InLoop,
            2 => Peer::OutsideClient,
            3 => Peer::OutsideServer,
            _ => Peer::Untracked,
        }
    }

    /// The transport is about to read (the peer sent something, or closed).
    #[inline]
    pub(crate) fn note_read(&self) {
        if self.kind.load(Ordering::Relaxed) == Peer::OutsideServer as u8 {
            self.awaiting_reply.store(false, Ordering::Relaxed);
            self.last_read_ns.store(monotonic_ns(), Ordering::Relaxed);
        }
    }

    /// The transport was given data to send.
    #[inline]
    pub(crate) fn note_write(&self) {
        if self.kind.load(Ordering::Relaxed) == Peer::OutsideServer as u8 {
            self.awaiting_reply.store(true, Ordering::Relaxed);
        }
    }

    /// How long this peer keeps virtual time from jumping, seen at `now_ns` (real): `None`
    /// if it does not; `Some(None)` for as long as a request awaits its reply;
    /// `Some(Some(ns))` for the rest of the quiet period after its last read.
    pub(crate) fn holds_time(&self, now_ns: i64, quiet_period_ns: u64) -> Option<Option<u64>> {
        if self.kind() != Peer::OutsideServer {
            return None;
        }
        if self.awaiting_reply.load(Ordering::Relaxed) {
            return Some(None);
        }
        let since_read = now_ns.saturating_sub(self.last_read_ns.load(Ordering::Relaxed));
        let left = i64::try_from(quiet_period_ns).unwrap_or(i64::MAX).saturating_sub(since_read);
        (left > 0).then_some(Some(left as u64))
    }
}
