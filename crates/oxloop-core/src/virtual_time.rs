//! Virtual time: the clock of a loop made with `oxloop.VirtualClock`, which moves only when the
//! loop moves it (to its next timer's deadline when nothing else can happen, or with real time
//! while real work is outstanding).
//!
//! Invariants: owned by one clock object and changed only on the thread running its loop (the
//! owner guards it). Time is kept in integer nanoseconds and never goes backwards. It is
//! reported in seconds as `f64`; when the clock jumps to a timer's deadline it reports that
//! deadline itself (so `loop.time() == handle.when()` inside the timer's callback) while its
//! nanosecond count moves to the first nanosecond at or after it.

use crate::clock::ns_to_seconds;

/// Nanoseconds per second.
const NS_PER_SECOND: f64 = 1e9;

/// Why a time cannot be a virtual clock's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// Not finite, or negative, or beyond what nanoseconds in an `i64` hold (292 years).
    OutOfRange,
}

/// A virtual clock's current time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VirtualTime {
    /// Nanoseconds since the virtual epoch.
    now_ns: i64,
    /// What `loop.time()` reports: `now_ns` in seconds, or the deadline last jumped to.
    reported: f64,
}

/// The first nanosecond at or after `seconds` (saturating).
fn ceil_ns(seconds: f64) -> i64 {
    (seconds * NS_PER_SECOND).ceil() as i64
}

impl VirtualTime {
    /// A clock reading `start` seconds.
    pub fn new(start: f64) -> Result<Self, StartError> {
        if !start.is_finite() || start < 0.0 || start * NS_PER_SECOND >= i64::MAX as f64 {
            return Err(StartError::OutOfRange);
        }
        let now_ns = (start * NS_PER_SECOND).round() as i64;
        Ok(VirtualTime { now_ns, reported: ns_to_seconds(now_ns).max(start) })
    }

    /// The time in seconds, as `loop.time()` reports it.
    #[inline]
    pub fn now(&self) -> f64 {
        self.reported
    }

    /// The time in nanoseconds.
    #[inline]
    pub fn now_ns(&self) -> i64 {
        self.now_ns
    }

    /// Jumps to `deadline` (a timer's `when`), if it is later than now; the time then reads
    /// exactly `deadline`.
    pub fn jump_to(&mut self, deadline: f64) {
        if deadline > self.reported {
            self.now_ns = self.now_ns.max(ceil_ns(deadline));
            self.reported = deadline;
        }
    }

    /// Moves forward by `ns` nanoseconds (real time spent waiting for real work).
    pub fn advance_ns(&mut self, ns: u64) {
        if ns == 0 {
            return;
        }
        self.now_ns = self.now_ns.saturating_add(i64::try_from(ns).unwrap_or(i64::MAX));
        self.reported = self.reported.max(ns_to_seconds(self.now_ns));
    }

    /// Moves forward by `ns` nanoseconds of real waiting towards `deadline`: a wait that
    /// reaches the deadline leaves the time at the deadline exactly (the timer fires at its own
    /// time, not a little after it); a shorter one moves it by `ns`.
    pub fn advance_waited(&mut self, ns: u64, deadline: Option<f64>) {
        match deadline {
            Some(deadline) if ns_to_seconds(self.now_ns + ns as i64) >= deadline => {
                self.jump_to(deadline)
            }
            _ => self.advance_ns(ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_where_asked() {
        let t = VirtualTime::new(0.0).unwrap();
        assert_eq!((t.now(), t.now_ns()), (0.0, 0));
        let t = VirtualTime::new(1.7e9).unwrap();
        assert_eq!(t.now(), 1.7e9);
        assert_eq!(t.now_ns(), 1_700_000_000_000_000_000);
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e300] {
            assert_eq!(VirtualTime::new(bad), Err(StartError::OutOfRange));
        }
    }

    #[test]
    fn jumps_report_the_deadline_exactly_and_never_go_back() {
        let mut t = VirtualTime::new(0.0).unwrap();
        let deadline = 0.1 + 0.2; // not a whole number of nanoseconds in binary
        t.jump_to(deadline);
        assert_eq!(t.now(), deadline);
        assert_eq!(t.now_ns(), 300_000_001);
        t.jump_to(0.1);
        assert_eq!(t.now(), deadline);
        t.advance_ns(0);
        assert_eq!(t.now(), deadline);
        t.advance_ns(1_000);
        assert!(t.now() > deadline);
        assert_eq!(t.now_ns(), 300_001_001);
    }

    #[test]
    fn no_drift_at_epoch_sized_times() {
        let mut t = VirtualTime::new(1.7e9).unwrap();
        for _ in 0..1000 {
            let before = t.now();
            t.advance_ns(1_000); // a microsecond: below an f64's resolution at 1.7e9 s
            assert!(t.now() >= before);
        }
        assert_eq!(t.now_ns(), 1_700_000_000_000_000_000 + 1_000_000);
        assert_eq!(t.now(), 1.7e9 + 1e-3);
    }

    #[test]
    fn real_waits_stop_at_the_deadline() {
        let mut t = VirtualTime::new(10.0).unwrap();
        t.advance_waited(5_000_000, Some(10.5));
        assert_eq!(t.now(), 10.005);
        t.advance_waited(1_000_000_000, Some(10.5));
        assert_eq!(t.now(), 10.5);
        t.advance_waited(500_000_000, Some(11.0));
        assert_eq!(t.now(), 11.0);
        t.advance_waited(2_000_000, None);
        assert_eq!(t.now(), 11.002);
    }
}
