//! Kernel timestamps to wall-clock time, for spans.

use std::time::{Duration, SystemTime};

/// Maps `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to wall time: the offset is
/// taken once per drain, so the spans of one trace keep their exact gaps.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall_at: SystemTime,
    mono_at_ns: u64,
}

impl Clock {
    /// The offset now.
    pub fn now() -> Clock {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime fills `ts`; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Clock { wall_at: SystemTime::now(), mono_at_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64 }
    }

    #[cfg(test)]
    pub fn fixed(wall_at: SystemTime, mono_at_ns: u64) -> Clock {
        Clock { wall_at, mono_at_ns }
    }

    /// CLOCK_MONOTONIC when the offset was taken (ns): "now" in the
    /// kernel's timestamps.
    pub fn mono_ns(&self) -> u64 {
        self.mono_at_ns
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        // checked_*: a kernel timestamp is never so far off that this
        // leaves SystemTime's range, but a panic must not depend on it.
        if mono_ns >= self.mono_at_ns {
            self.wall_at.checked_add(Duration::from_nanos(mono_ns - self.mono_at_ns))
        } else {
            self.wall_at.checked_sub(Duration::from_nanos(self.mono_at_ns - mono_ns))
        }
        .unwrap_or(self.wall_at)
    }
}
