//! Kernel log2 histograms -> Prometheus histograms.
//!
//! The kernel keeps one slot per power of two of nanoseconds (slot i counts
//! values v with 2^i <= v < 2^(i+1)). A Prometheus bucket boundary at 2^k ns
//! therefore takes slots 0..k exactly; buckets are chosen as powers of two so
//! that no sample is ever split or guessed. A value of exactly 2^k ns lands
//! in the bucket above `le = 2^k ns`: the only rounding, one nanosecond wide.

use pmoas_bpf::types::{HIST_SLOTS, Log2Hist};

use crate::metrics::Histogram;

/// Exported bucket boundaries, as exponents of 2 ns.
#[derive(Clone, Copy, Debug)]
pub struct Log2Buckets {
    /// Smallest boundary: 2^first ns.
    pub first: u32,
    /// Largest boundary: 2^last ns.
    pub last: u32,
    /// Exponent step between boundaries (1: x2, 2: x4).
    pub step: u32,
}

impl Log2Buckets {
    /// 4 us .. 17 s, x4: handshakes and queue waits, loopback to WAN.
    pub const HANDSHAKE: Log2Buckets = Log2Buckets { first: 12, last: 34, step: 2 };
    /// 1 ms .. 4.9 h, x4: connection lifetimes.
    pub const LIFETIME: Log2Buckets = Log2Buckets { first: 20, last: 44, step: 2 };

    /// The boundaries in seconds, ascending (without +Inf).
    pub fn bounds_seconds(&self) -> Vec<f64> {
        (self.first..=self.last).step_by(self.step as usize).map(|k| (1u64 << k) as f64 / 1e9).collect()
    }

    /// Folds a kernel histogram into these buckets.
    pub fn fold(&self, h: &Log2Hist) -> Histogram {
        let mut buckets = Vec::new();
        let mut slot = 0usize;
        for k in (self.first..=self.last).step_by(self.step as usize) {
            let upto = (k as usize).min(HIST_SLOTS);
            let n: u64 = h.slots[slot.min(upto)..upto].iter().sum();
            slot = upto;
            buckets.push(((1u64 << k) as f64 / 1e9, n));
        }
        let rest: u64 = h.slots[slot.min(HIST_SLOTS)..].iter().sum();
        buckets.push((f64::INFINITY, rest));
        Histogram { sum: h.sum_ns as f64 / 1e9, count: h.count(), buckets }
    }
}

/// The slot the kernel puts a value in (pmoas_log2 + clamp), for tests.
pub fn slot_of(ns: u64) -> usize {
    if ns == 0 { 0 } else { (63 - ns.leading_zeros() as usize).min(HIST_SLOTS - 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Log2Hist {
        let mut h = Log2Hist::default();
        for &v in values {
            h.slots[slot_of(v)] += 1;
            h.sum_ns += v;
        }
        h
    }

    fn cumulative(h: &Histogram) -> Vec<u64> {
        h.buckets
            .iter()
            .scan(0, |acc, (_, n)| {
                *acc += n;
                Some(*acc)
            })
            .collect()
    }

    #[test]
    fn slots_match_floor_log2() {
        assert_eq!(slot_of(0), 0);
        assert_eq!(slot_of(1), 0);
        assert_eq!(slot_of(2), 1);
        assert_eq!(slot_of(3), 1);
        assert_eq!(slot_of(4096), 12);
        assert_eq!(slot_of(4095), 11);
        assert_eq!(slot_of(u64::MAX), HIST_SLOTS - 1);
    }

    #[test]
    fn every_sample_lands_under_the_right_bound() {
        let b = Log2Buckets::HANDSHAKE;
        // 1 us, 30 us (loopback handshake), 1 ms, 200 ms, 1 min (over the top)
        let values = [1_000, 30_000, 1_000_000, 200_000_000, 60_000_000_000];
        let h = b.fold(&hist(&values));
        assert_eq!(h.count, 5);
        assert!((h.sum - values.iter().sum::<u64>() as f64 / 1e9).abs() < 1e-12);
        let bounds = b.bounds_seconds();
        let cum = cumulative(&h);
        for (i, le) in bounds.iter().enumerate() {
            let expect = values.iter().filter(|&&v| (v as f64 / 1e9) <= *le).count() as u64;
            assert_eq!(cum[i], expect, "le={le}");
        }
        assert_eq!(*cum.last().unwrap(), 5, "+Inf holds everything");
        assert_eq!(h.buckets.last().unwrap().0, f64::INFINITY);
    }

    #[test]
    fn boundaries_are_powers_of_two_nanoseconds() {
        let b = Log2Buckets::HANDSHAKE.bounds_seconds();
        assert_eq!(b.first().copied(), Some(4096e-9));
        assert_eq!(b.len(), 12);
        assert_eq!(b.last().copied(), Some((1u64 << 34) as f64 / 1e9));
        let l = Log2Buckets::LIFETIME.bounds_seconds();
        assert_eq!(l.first().copied(), Some((1u64 << 20) as f64 / 1e9));
        assert_eq!(l.len(), 13);
    }

    #[test]
    fn empty_histogram_is_all_zero() {
        let h = Log2Buckets::LIFETIME.fold(&Log2Hist::default());
        assert_eq!(h.count, 0);
        assert!(h.buckets.iter().all(|(_, n)| *n == 0));
    }
}
