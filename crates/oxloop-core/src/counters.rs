//! Counters: what the loop has done, for live metrics.
//!
//! Invariants: owned by the loop and updated on the loop's thread only; reading them is a
//! copy. They are plain integers, so keeping them costs an add per event.

/// Running totals kept by one loop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Loop iterations (`_run_once` calls).
    pub iterations: u64,
    /// Callbacks run (handles whose callback was called, cancelled ones excluded).
    pub callbacks_run: u64,
    /// Callbacks that raised an exception handed to the exception handler.
    pub callback_errors: u64,
    /// Timers scheduled with `call_at`/`call_later`.
    pub timers_scheduled: u64,
    /// Timers cancelled before they fired.
    pub timers_cancelled: u64,
    /// I/O readiness events received from the poller.
    pub io_events: u64,
    /// Times the poller was entered.
    pub polls: u64,
    /// Nanoseconds spent blocked in the poller.
    pub poll_wait_ns: u64,
}
