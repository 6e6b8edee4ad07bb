//! Clocks: the loop's source of time.
//!
//! Invariants: a clock is owned by one loop and read on the loop's thread (and by `call_later`
//! callers, which hold the GIL and borrow the loop's state). [`Clock::Monotonic`] reads
//! `CLOCK_MONOTONIC`, the clock behind Python's `time.monotonic()`, and converts it exactly as
//! CPython does, so `loop.time() == time.monotonic()` holds to the last bit. [`Clock::Virtual`]
//! only moves when the loop tells it to: when the loop would sleep until its next timer, it jumps
//! there instead, so hours of timers run in microseconds, deterministically.

/// A source of time for one event loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Clock {
    /// Real time: `CLOCK_MONOTONIC`, in seconds, exactly as `time.monotonic()` reports it.
    Monotonic,
    /// Simulated time, in seconds; advanced by the loop when it would otherwise wait.
    Virtual {
        /// The current simulated time.
        now: f64,
    },
}

/// Reads `CLOCK_MONOTONIC` as nanoseconds.
// `time_t` and `c_long` are `i32` on 32-bit targets: the casts are needed there.
#[allow(clippy::unnecessary_cast)]
fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux,
    // so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64
}

/// Converts nanoseconds to seconds the way CPython's `_PyTime_AsSecondsDouble` does.
fn ns_to_seconds(ns: i64) -> f64 {
    if ns % 1_000_000_000 == 0 {
        (ns / 1_000_000_000) as f64
    } else {
        ns as f64 / 1e9
    }
}

impl Clock {
    /// A virtual clock starting at `start` seconds.
    pub fn virtual_at(start: f64) -> Clock {
        Clock::Virtual { now: start }
    }

    /// The current time in seconds.
    pub fn now(&self) -> f64 {
        match self {
            Clock::Monotonic => ns_to_seconds(monotonic_ns()),
            Clock::Virtual { now } => *now,
        }
    }

    /// The smallest step this clock distinguishes, in seconds (asyncio's `_clock_resolution`).
    // `time_t` and `c_long` are `i32` on 32-bit targets: the casts are needed there.
    #[allow(clippy::unnecessary_cast)]
    pub fn resolution(&self) -> f64 {
        match self {
            Clock::Monotonic => {
                let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: as in `monotonic_ns`.
                unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC, &mut ts) };
                ns_to_seconds(ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64)
            }
            Clock::Virtual { .. } => 1e-9,
        }
    }

    /// How long the loop may block in its poll when the earliest timer is due at `deadline`
    /// (`None`: no timer). A virtual clock never makes the loop sleep for a timer: it jumps to
    /// the deadline and returns a zero timeout; with no timer it lets the loop wait for I/O.
    pub fn poll_timeout(&mut self, deadline: Option<f64>) -> Option<f64> {
        match (self, deadline) {
            (Clock::Monotonic, Some(when)) => Some((when - Clock::Monotonic.now()).max(0.0)),
            (Clock::Monotonic, None) => None,
            (Clock::Virtual { now }, Some(when)) => {
                if when > *now {
                    *now = when;
                }
                Some(0.0)
            }
            (Clock::Virtual { .. }, None) => None,
        }
    }

    /// Moves a virtual clock forward by `seconds` (no effect on a real clock, or backwards).
    pub fn advance(&mut self, seconds: f64) {
        if let Clock::Virtual { now } = self {
            if seconds > 0.0 {
                *now += seconds;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_is_non_decreasing_and_fine_grained() {
        let a = Clock::Monotonic.now();
        let b = Clock::Monotonic.now();
        assert!(b >= a);
        assert!(Clock::Monotonic.resolution() <= 1e-3);
    }

    #[test]
    fn conversion_matches_cpython() {
        assert_eq!(ns_to_seconds(3_000_000_000), 3.0);
        assert_eq!(ns_to_seconds(1_500_000_001), 1_500_000_001f64 / 1e9);
    }

    #[test]
    fn virtual_clock_jumps_to_the_next_deadline() {
        let mut clock = Clock::virtual_at(10.0);
        assert_eq!(clock.poll_timeout(Some(3600.0)), Some(0.0));
        assert_eq!(clock.now(), 3600.0);
        // A deadline in the past never moves time backwards.
        assert_eq!(clock.poll_timeout(Some(5.0)), Some(0.0));
        assert_eq!(clock.now(), 3600.0);
        assert_eq!(clock.poll_timeout(None), None);
        clock.advance(1.5);
        assert_eq!(clock.now(), 3601.5);
    }

    #[test]
    fn real_clock_timeout_is_never_negative() {
        let mut clock = Clock::Monotonic;
        assert_eq!(clock.poll_timeout(Some(0.0)), Some(0.0));
        let t = clock.poll_timeout(Some(Clock::Monotonic.now() + 10.0)).unwrap();
        assert!(t > 9.0 && t <= 10.0);
    }
}
