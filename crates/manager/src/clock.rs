//! The two clocks a request reads, as plain integers: `CLOCK_MONOTONIC` and `CLOCK_REALTIME`
//! (on Linux, `Instant`'s and `SystemTime`'s), read through `clock_gettime` (the vDSO, no
//! syscall).
//! The std types read the same clocks; their checked arithmetic on two timespecs cost 65-75
//! instructions a reading more (callgrind: -149 for a request's latency and its log line's
//! timestamp, -134 for `/__healthz`'s two readings).

use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};

/// A moment on the monotonic clock (`Instant`'s on Linux), in nanoseconds since an unspecified start
/// (boot): one integer, so that a latency is one subtraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Monotonic(u64);

impl Monotonic {
    /// Now.
    pub fn now() -> Self {
        let now = clock_gettime(ClockId::Monotonic);
        // Counted from boot: positive, and within u64 nanoseconds for 584 years.
        Monotonic(
            (now.tv_sec as u64)
                .wrapping_mul(1_000_000_000)
                .wrapping_add(now.tv_nsec as u64),
        )
    }

    /// Since this moment (zero if it is later than now, which a monotonic clock never is).
    pub fn elapsed(self) -> Duration {
        Duration::from_nanos(Self::now().0.saturating_sub(self.0))
    }
}

/// The wall clock, since the Unix epoch (zero on a clock set before 1970).
pub fn since_epoch() -> Duration {
    let now = clock_gettime(ClockId::Realtime);
    match (u64::try_from(now.tv_sec), u32::try_from(now.tv_nsec)) {
        (Ok(secs), Ok(nanos)) => Duration::new(secs, nanos),
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same clocks as `Instant` and `SystemTime`: a reading taken between two of theirs
    /// falls between them.
    #[test]
    fn the_clocks_are_the_std_ones() {
        let wall_before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let ours = since_epoch();
        let wall_after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        assert!(
            wall_before <= ours && ours <= wall_after,
            "{wall_before:?} {ours:?} {wall_after:?}"
        );

        // The monotonic reading spans the `Instant` one: no upper bound, which only a machine
        // that is not slow would keep.
        let start = Monotonic::now();
        let instant = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let inner = instant.elapsed();
        let outer = start.elapsed();
        assert!(
            outer >= inner && inner >= Duration::from_millis(20),
            "{outer:?} {inner:?}"
        );
        assert!(Monotonic::now() >= start);
    }
}
