//! Sampling by time. With `--collector.netstack.sample-rate N` above 1 the
//! stage programs are attached 1/N of the time, in windows, and every packet
//! whose first stage falls in a window is followed to its last.
//!
//! Why not 1 in N packets decided in the kernel: a program runs on every
//! packet whatever it decides, and that run is most of the cost (through a
//! sidecar, 36 runs a request at ~60-100 ns each on our VM even when the
//! packet is not sampled), so per-packet sampling barely moved the cost with
//! N. A program that is not attached costs nothing: here the cost follows N.
//!
//! A window: the later stages' programs go on first and the first stages'
//! last (no packet is met halfway); at its end the first stages go off,
//! packets on their way get [`DRAIN`] to reach their last stage, then the
//! later stages go off and what is left (packets whose path left the traced
//! hooks) is taken out of the maps and counted. Drops and the connection
//! states behind the RTT's peer stay attached all the time.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ebpf::Kernel;

use super::Inner;

/// Programs of the first stage of each direction: nothing is followed
/// without them.
pub const FIRST_STAGES: [&str; 2] = ["netstack_rx", "netstack_app_send"];
/// Programs of the later stages (and the RTT's samples, in `tcp_probe`;
/// `consume_skb` ends paths that leave the traced stages).
pub const LATER_STAGES: [&str; 7] = [
    "netstack_tcp_rcv",
    "netstack_data_ready",
    "netstack_app_read",
    "netstack_dev_queue",
    "netstack_dev_start_xmit",
    "netstack_dev_xmit",
    "netstack_consume",
];

/// Shortest window: long enough that few followed packets are cut by its
/// end (a packet crosses a pod's stack in tens of microseconds).
pub const MIN_WINDOW: Duration = Duration::from_millis(20);
/// Shortest cycle: attaching a program flips a static key, patching kernel
/// text on every CPU, so not more than about once a second.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
/// After a window, the time packets on their way get to reach their last stage.
pub const DRAIN: Duration = Duration::from_millis(10);

/// When the stage programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub window: Duration,
    /// Mean time from one window's start to the next one's.
    pub period: Duration,
}

impl Schedule {
    /// None for rate 1: always attached.
    pub fn for_rate(rate: u32) -> Option<Schedule> {
        if rate <= 1 {
            return None;
        }
        let period = (MIN_WINDOW * rate).max(MIN_PERIOD);
        Some(Schedule { window: period / rate, period })
    }

    /// The pause between a window's end and the next one's start: the rest
    /// of the period, drawn between half and one and a half times it so
    /// that windows do not lock onto periodic traffic (the mean keeps the
    /// rate).
    pub fn pause(&self, rng: &mut u64) -> Duration {
        // xorshift64: enough to spread windows, no dependency.
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let fraction = 0.5 + (*rng >> 11) as f64 / (1u64 << 53) as f64;
        (self.period - self.window).mul_f64(fraction)
    }
}

/// Runs windows until `stop` is dropped (the collector was). The programs
/// are attached when this starts: that is the first window.
pub(super) fn spawn(
    kernel: Arc<Kernel>,
    inner: Arc<Mutex<Inner>>,
    schedule: Schedule,
    stop: Receiver<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("pmoas-netstack-windows".into()).spawn(move || {
        let mut rng = seed();
        let wait = |d: Duration| !matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Timeout));
        let mut warned = false;
        let mut set = |programs: &[&'static str], on: bool| {
            for program in programs {
                if let Err(e) = kernel.set_attached(program, on)
                    && !std::mem::replace(&mut warned, true)
                {
                    tracing::warn!(program, on, error = %e, "netstack: a sampling window could not switch a program");
                }
            }
        };
        loop {
            if wait(schedule.window) {
                return;
            }
            set(&FIRST_STAGES, false);
            if wait(DRAIN) {
                return;
            }
            set(&LATER_STAGES, false);
            let left = inner.lock().unwrap_or_else(|p| p.into_inner()).clear_left_over();
            if let Err(e) = left {
                tracing::warn!(error = %e, "netstack: clearing the packets left after a window failed");
            }
            if wait(schedule.pause(&mut rng)) {
                return;
            }
            set(&LATER_STAGES, true);
            set(&FIRST_STAGES, true);
        }
    })?;
    Ok(())
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(1);
    (nanos as u64 ^ u64::from(std::process::id())) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_one_is_always_attached() {
        assert_eq!(Schedule::for_rate(1), None);
    }

    #[test]
    fn windows_keep_the_rate() {
        for rate in [2, 8, 64, 1000] {
            let s = Schedule::for_rate(rate).unwrap();
            assert!(s.window >= MIN_WINDOW || s.period == MIN_PERIOD, "{rate}: {s:?}");
            assert!(s.period >= MIN_PERIOD, "{rate}: {s:?}");
            let ratio = s.period.as_secs_f64() / s.window.as_secs_f64();
            assert!((ratio - f64::from(rate)).abs() < 1e-6, "{rate}: {s:?}");
        }
        assert_eq!(Schedule::for_rate(64).unwrap().window, MIN_WINDOW);
        assert_eq!(Schedule::for_rate(2).unwrap().window, Duration::from_millis(500));
    }

    #[test]
    fn pauses_are_spread_around_the_rest_of_the_period() {
        let s = Schedule::for_rate(64).unwrap();
        let rest = s.period - s.window;
        let mut rng = 0x9E37_79B9_7F4A_7C15;
        let pauses: Vec<Duration> = (0..10_000).map(|_| s.pause(&mut rng)).collect();
        assert!(pauses.iter().all(|p| *p >= rest / 2 && *p <= rest * 3 / 2));
        let mean = pauses.iter().map(Duration::as_secs_f64).sum::<f64>() / pauses.len() as f64;
        assert!((mean / rest.as_secs_f64() - 1.0).abs() < 0.02, "mean {mean} vs {rest:?}");
        // Not all alike: windows must not lock onto periodic traffic.
        assert!(pauses.iter().max().unwrap().saturating_sub(*pauses.iter().min().unwrap()) > rest / 2);
    }
}
