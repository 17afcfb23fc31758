//! Exponential backoff with jitter for retrying the Kubernetes API.
//!
//! Delays double from `base` up to `cap`; each is drawn uniformly from
//! `[step / 2, step]` ("equal jitter"). The lower half-step is a floor on
//! purpose: with full jitter (`[0, step]`) a node may retry at once several
//! times in a row, and what this protects is a recovering API server facing
//! every node of the cluster; the upper half still spreads nodes that lost
//! the API at the same moment. The caller resets after real progress; a
//! failure that comes more than `quiet_reset` after the previous one also
//! starts again from `base`, as client-go does, because the watch was
//! evidently healthy in between even if it carried no pod.

use std::time::{Duration, Instant};

/// Attempts since the last reset and when the last one failed.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    quiet_reset: Duration,
    failures: u32,
    last_failure: Option<Instant>,
    rng: fastrand::Rng,
}

impl Backoff {
    /// `quiet_reset` must exceed `cap`, or a long outage would keep
    /// resetting itself.
    pub fn new(base: Duration, cap: Duration, quiet_reset: Duration) -> Backoff {
        assert!(base > Duration::ZERO && cap >= base && quiet_reset > cap, "backoff {base:?}..{cap:?}/{quiet_reset:?}");
        Backoff { base, cap, quiet_reset, failures: 0, last_failure: None, rng: fastrand::Rng::new() }
    }

    /// client-go's reflector: 0.8 s doubling to 30 s, reset after 2 min
    /// without a failure. At the cap a node asks at most once per 15 s.
    pub fn kubernetes() -> Backoff {
        Backoff::new(Duration::from_millis(800), Duration::from_secs(30), Duration::from_secs(120))
    }

    /// Deterministic jitter, for tests.
    pub fn with_seed(mut self, seed: u64) -> Backoff {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// The upper bound of the next delay: `base * 2^failures`, capped.
    pub fn step(&self) -> Duration {
        // The cap is reached long before 2^20; the shift must not overflow.
        let factor = 1u32 << self.failures.min(20);
        self.base.checked_mul(factor).map_or(self.cap, |d| d.min(self.cap))
    }

    /// Records a failure at `now`; how long to wait before the next attempt.
    pub fn next_delay(&mut self, now: Instant) -> Duration {
        if self.last_failure.is_some_and(|last| now.saturating_duration_since(last) > self.quiet_reset) {
            self.failures = 0;
        }
        self.last_failure = Some(now);
        let step = self.step();
        self.failures = self.failures.saturating_add(1);
        let half = step / 2;
        let spread = (step - half).as_nanos() as u64;
        half + Duration::from_nanos(self.rng.u64(0..=spread))
    }

    /// After real progress: the next failure waits `base` at most again.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.last_failure = None;
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn k8s(seed: u64) -> Backoff {
        Backoff::kubernetes().with_seed(seed)
    }

    #[test]
    fn steps_double_up_to_the_cap() {
        let mut b = k8s(1);
        let now = Instant::now();
        let mut steps = Vec::new();
        for _ in 0..10 {
            steps.push(b.step());
            b.next_delay(now);
        }
        let ms: Vec<u128> = steps.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000, 30000]);
        for _ in 0..100 {
            b.next_delay(now);
        }
        assert_eq!(b.step(), Duration::from_secs(30), "no overflow after many failures");
        assert_eq!(b.failures(), 110);
    }

    #[test]
    fn jitter_stays_within_half_a_step_and_the_step() {
        for seed in 0..200 {
            let mut b = k8s(seed);
            let now = Instant::now();
            for _ in 0..12 {
                let step = b.step();
                let d = b.next_delay(now);
                assert!(d >= step / 2 && d <= step, "seed {seed}: {d:?} outside [{:?}, {step:?}]", step / 2);
            }
        }
    }

    #[test]
    fn jitter_spreads_nodes_that_fail_together() {
        // 1,000 nodes losing the API at the same instant: their first
        // retries must not land together.
        let now = Instant::now();
        let mut firsts: Vec<Duration> = (0..1000).map(|seed| k8s(seed).next_delay(now)).collect();
        firsts.sort();
        assert!(firsts[0] < 450 * MS && firsts[999] > 750 * MS, "{:?}..{:?}", firsts[0], firsts[999]);
        // And not on a few values either: 1,000 draws over 400 ms.
        firsts.dedup_by_key(|d| d.as_millis());
        assert!(firsts.len() > 300, "{} distinct milliseconds", firsts.len());
    }

    #[test]
    fn reset_starts_again_from_the_base() {
        let mut b = k8s(7);
        let now = Instant::now();
        for _ in 0..5 {
            b.next_delay(now);
        }
        assert_eq!(b.step(), 25600 * MS);
        b.reset();
        assert_eq!((b.step(), b.failures()), (800 * MS, 0));
        assert!(b.next_delay(now) <= 800 * MS);
        assert_eq!(b.step(), 1600 * MS);
    }

    #[test]
    fn a_long_quiet_spell_resets_but_an_outage_does_not() {
        let mut b = k8s(3);
        let mut now = Instant::now();
        // An outage: each failure comes when the previous delay is over.
        for _ in 0..20 {
            now += b.next_delay(now);
        }
        assert_eq!(b.step(), Duration::from_secs(30), "failures a delay apart never reset");
        now += Duration::from_secs(121);
        assert!(b.next_delay(now) <= 800 * MS, "two quiet minutes are progress");
    }

    #[test]
    fn a_fixed_seed_repeats_its_delays() {
        let now = Instant::now();
        let run = |seed| {
            let mut b = k8s(seed);
            (0..6).map(|_| b.next_delay(now)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
