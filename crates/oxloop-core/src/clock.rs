//! The loop's clock: `CLOCK_MONOTONIC`, the clock behind Python's `time.monotonic()`.
//!
//! Invariants: [`Clock`] holds no state; it reads `CLOCK_MONOTONIC` (from any thread) and
//! converts it exactly as CPython does, so `loop.time() == time.monotonic()` holds to the last
//! bit.

/// The loop's source of time: `CLOCK_MONOTONIC`, in seconds, exactly as `time.monotonic()`
/// reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock;

/// Reads `CLOCK_MONOTONIC` as nanoseconds (the real time a virtual clock measures its real
/// waits with).
// `time_t` and `c_long` are `i64` on 64-bit targets only: the casts are needed elsewhere.
#[allow(clippy::unnecessary_cast)]
pub fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux,
    // so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64
}

/// Converts nanoseconds to seconds the way CPython's `_PyTime_AsSecondsDouble` does.
pub fn ns_to_seconds(ns: i64) -> f64 {
    if ns % 1_000_000_000 == 0 {
        (ns / 1_000_000_000) as f64
    } else {
        ns as f64 / 1e9
    }
}

impl Clock {
    /// The current time in seconds.
    pub fn now() -> f64 {
        ns_to_seconds(monotonic_ns())
    }

    /// The smallest step the clock distinguishes, in seconds (asyncio's `_clock_resolution`).
    // `time_t` and `c_long` are `i64` on 64-bit targets only: the casts are needed elsewhere.
    #[allow(clippy::unnecessary_cast)]
    pub fn resolution() -> f64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: as in `monotonic_ns`.
        unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC, &mut ts) };
        ns_to_seconds(ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64)
    }

    /// How long the loop may block in its poll when the earliest timer is due at `deadline`
    /// (`None`: no timer, no limit); never negative.
    pub fn poll_timeout(deadline: Option<f64>) -> Option<f64> {
        deadline.map(|when| (when - Clock::now()).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_is_non_decreasing_and_fine_grained() {
        let a = Clock::now();
        let b = Clock::now();
        assert!(b >= a);
        assert!(Clock::resolution() <= 1e-3);
    }

    #[test]
    fn conversion_matches_cpython() {
        assert_eq!(ns_to_seconds(3_000_000_000), 3.0);
        assert_eq!(ns_to_seconds(1_500_000_001), 1_500_000_001f64 / 1e9);
    }

    #[test]
    fn timeout_is_never_negative() {
        assert_eq!(Clock::poll_timeout(Some(0.0)), Some(0.0));
        assert_eq!(Clock::poll_timeout(None), None);
        let t = Clock::poll_timeout(Some(Clock::now() + 10.0)).unwrap();
        assert!(t > 9.0 && t <= 10.0);
    }
}
