//! The latency a sidecar adds to a request: its span minus the span of the
//! request it forwarded, for each request it handles.
//!
//! - **Inbound**: the outer exchange is the sidecar's downstream request
//!   (it is the server: request read → response written); the inner one is
//!   the request it sends the app (it is the client: request written →
//!   response read).
//! - **Outbound**: the outer exchange is the app's request to the sidecar
//!   (the app is the client), the inner one the sidecar's upstream request.
//!
//! # How exchanges are paired
//!
//! A request and the one it became share, on the sidecar's side, one
//! *domain*: the pod, the direction, and the sidecar's thread that handled
//! both (Envoy binds a downstream connection and the upstream requests it
//! makes to one worker thread). Within a domain an inner exchange `i` can
//! be the forward of an outer one `o` only if it lies inside it in time
//! (`o.start <= i.start` and `i.end <= o.end`) and has the same method and
//! path. Among those candidates:
//! 1. if both carry an `x-request-id`, only the one with the same id
//!    (Envoy keeps the id it received, or sets one on the forward);
//! 2. if one candidate is left, it is the pair (`unique`);
//! 3. if several are (identical requests in flight at once on one thread),
//!    the one that started first (`ordered`): the sidecar forwards in the
//!    order it read. The choice among identical concurrent requests is
//!    the only one not proven; it is counted apart so that users can see
//!    how often it was made.
//!
//! An outer exchange with no candidate is not paired and counted
//! (`no_forward`: the sidecar answered itself — a local reply, a fault
//! abort, no healthy upstream — or the forward was not captured). An inner
//! exchange that no outer one took within [`MAX_AGE_NS`] is dropped and
//! counted (`forward_unclaimed`: a retry, or an outer exchange not seen).
//! A wrong pair is never made silently: every sample says how it was
//! paired.

use std::collections::{HashMap, VecDeque};

/// How long an inner exchange waits for its outer one.
pub const MAX_AGE_NS: u64 = 60_000_000_000;
/// Inner exchanges kept per domain at most (oldest dropped, counted).
pub const MAX_WAITING: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Where pairs are looked for: one pod's sidecar thread, one direction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Domain {
    pub pod_uid: String,
    pub direction: Direction,
    /// The sidecar's thread that handled the request.
    pub sidecar_tid: u32,
}

/// What identifies a request across the sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub method: String,
    pub path: String,
    pub request_id: Option<String>,
}

/// One completed exchange: its key, its span (ns), and what its user keeps
/// with it (`data`; the tracker: the whole exchange while tracing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange<T = ()> {
    pub key: RequestKey,
    pub start_ns: u64,
    pub end_ns: u64,
    pub data: T,
}

impl<T> Exchange<T> {
    /// Its length (ns).
    pub fn span(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// How a sample was paired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum How {
    /// Same `x-request-id` on both.
    RequestId,
    /// The only candidate.
    Unique,
    /// The first of several identical candidates.
    Ordered,
}

impl How {
    /// The `outcome` label of `pmoas_sidecar_pairing_total`.
    pub fn as_label(self) -> &'static str {
        match self {
            How::RequestId => "request_id",
            How::Unique => "unique",
            How::Ordered => "ordered",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The time spent in the sidecar (ns).
    Paired { added_ns: u64, how: How },
    /// No forward found for this outer exchange.
    NoForward,
}

/// Counters of what could not be paired, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unpaired {
    pub no_forward: u64,
    pub forward_unclaimed: u64,
}

pub struct Pairer<T = ()> {
    waiting: HashMap<Domain, VecDeque<Exchange<T>>>,
    pub unpaired: Unpaired,
}

impl<T> Default for Pairer<T> {
    fn default() -> Self {
        Pairer { waiting: HashMap::new(), unpaired: Unpaired::default() }
    }
}

impl<T> Pairer<T> {
    pub fn new() -> Pairer<T> {
        Pairer::default()
    }

    /// An inner exchange (the sidecar's forward) completed.
    pub fn inner(&mut self, domain: Domain, exchange: Exchange<T>) {
        let queue = self.waiting.entry(domain).or_default();
        if queue.len() >= MAX_WAITING {
            queue.pop_front();
            self.unpaired.forward_unclaimed += 1;
        }
        // Kept in start order: candidates are then found front to back.
        let at = queue.partition_point(|e| e.start_ns <= exchange.start_ns);
        queue.insert(at, exchange);
    }

    /// An outer exchange completed: the time it spent in the sidecar, or
    /// why it was not paired.
    pub fn outer<U>(&mut self, domain: &Domain, outer: &Exchange<U>) -> Outcome {
        match self.claim(domain, outer) {
            Some((inner, how)) => Outcome::Paired { added_ns: outer.span().saturating_sub(inner.span()), how },
            None => Outcome::NoForward,
        }
    }

    /// An outer exchange completed: its pair, taken out of the waiting
    /// ones, and how it was chosen; None (counted as `no_forward`) when
    /// there is none.
    pub fn claim<U>(&mut self, domain: &Domain, outer: &Exchange<U>) -> Option<(Exchange<T>, How)> {
        let Some(queue) = self.waiting.get_mut(domain) else {
            self.unpaired.no_forward += 1;
            return None;
        };
        let fits = |i: &Exchange<T>| {
            i.start_ns >= outer.start_ns
                && i.end_ns <= outer.end_ns
                && i.key.method == outer.key.method
                && i.key.path == outer.key.path
        };
        let candidates: Vec<usize> = queue.iter().enumerate().filter(|(_, i)| fits(i)).map(|(n, _)| n).collect();
        let by_id: Vec<usize> = match &outer.key.request_id {
            Some(id) => candidates
                .iter()
                .copied()
                .filter(|&n| queue[n].key.request_id.as_ref().is_some_and(|other| other == id))
                .collect(),
            None => Vec::new(),
        };
        let (chosen, how) = match (by_id.first(), candidates.len()) {
            (Some(&n), _) => (n, How::RequestId),
            (None, 0) => {
                self.unpaired.no_forward += 1;
                return None;
            }
            (None, 1) => (candidates[0], How::Unique),
            // Candidates are in start order: the first one started first.
            (None, _) => (candidates[0], How::Ordered),
        };
        let inner = queue.remove(chosen).expect("index from this queue");
        if queue.is_empty() {
            self.waiting.remove(domain);
        }
        Some((inner, how))
    }

    /// Drops inner exchanges that ended before `now_ns - MAX_AGE_NS`.
    pub fn expire(&mut self, now_ns: u64) {
        let limit = now_ns.saturating_sub(MAX_AGE_NS);
        let mut dropped = 0;
        self.waiting.retain(|_, q| {
            let before = q.len();
            q.retain(|e| e.end_ns >= limit);
            dropped += (before - q.len()) as u64;
            !q.is_empty()
        });
        self.unpaired.forward_unclaimed += dropped;
    }

    /// Inner exchanges waiting now (bounded by [`MAX_WAITING`] per domain).
    pub fn waiting(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn domain(tid: u32) -> Domain {
        Domain { pod_uid: "uid-1".into(), direction: Direction::Inbound, sidecar_tid: tid }
    }

    fn ex(path: &str, id: Option<&str>, start: u64, end: u64) -> Exchange {
        Exchange {
            key: RequestKey { method: "GET".into(), path: path.into(), request_id: id.map(str::to_string) },
            start_ns: start * MS,
            end_ns: end * MS,
            data: (),
        }
    }

    #[test]
    fn the_added_time_is_outer_minus_inner() {
        let mut p = Pairer::new();
        p.inner(domain(1), ex("/a", None, 2, 52));
        let o = p.outer(&domain(1), &ex("/a", None, 0, 55));
        assert_eq!(o, Outcome::Paired { added_ns: 5 * MS, how: How::Unique });
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn another_thread_path_or_time_is_no_pair() {
        let mut p = Pairer::new();
        p.inner(domain(2), ex("/a", None, 2, 52)); // another thread
        p.inner(domain(1), ex("/b", None, 2, 52)); // another path
        p.inner(domain(1), ex("/a", None, 2, 60)); // ends after the outer one
        assert_eq!(p.outer(&domain(1), &ex("/a", None, 0, 55)), Outcome::NoForward);
        assert_eq!(p.unpaired.no_forward, 1);
        assert_eq!(p.waiting(), 3);
    }

    #[test]
    fn the_request_id_decides_among_candidates() {
        let mut p = Pairer::new();
        p.inner(domain(1), ex("/a", Some("x"), 1, 20));
        p.inner(domain(1), ex("/a", Some("y"), 2, 10));
        let o = p.outer(&domain(1), &ex("/a", Some("y"), 0, 30));
        assert_eq!(o, Outcome::Paired { added_ns: 22 * MS, how: How::RequestId });
    }

    #[test]
    fn identical_concurrent_requests_pair_in_order_and_an_overlap_cannot_steal() {
        let mut p = Pairer::new();
        // Two identical requests read at 0 and 10, forwarded at 1 and 11;
        // the second's forward comes back first.
        p.inner(domain(1), ex("/a", None, 11, 40));
        p.inner(domain(1), ex("/a", None, 1, 50));
        // The second outer one completes first: only the forward that started
        // after it began fits, whatever the arrival order.
        assert_eq!(
            p.outer(&domain(1), &ex("/a", None, 10, 42)),
            Outcome::Paired { added_ns: 3 * MS, how: How::Unique }
        );
        assert_eq!(p.outer(&domain(1), &ex("/a", None, 0, 53)), Outcome::Paired { added_ns: 4 * MS, how: How::Unique });
        // Both outer ones read before either forward: the first started is taken.
        p.inner(domain(1), ex("/a", None, 101, 150));
        p.inner(domain(1), ex("/a", None, 102, 151));
        let first = p.outer(&domain(1), &ex("/a", None, 100, 160));
        assert_eq!(first, Outcome::Paired { added_ns: 11 * MS, how: How::Ordered });
        let second = p.outer(&domain(1), &ex("/a", None, 100, 161));
        assert_eq!(second, Outcome::Paired { added_ns: 12 * MS, how: How::Unique });
    }

    #[test]
    fn unclaimed_forwards_expire_and_the_queue_is_bounded() {
        let mut p = Pairer::new();
        p.inner(domain(1), ex("/a", None, 0, 10));
        p.expire(10 * MS + MAX_AGE_NS + 1);
        assert_eq!((p.waiting(), p.unpaired.forward_unclaimed), (0, 1));
        for i in 0..MAX_WAITING as u64 + 5 {
            p.inner(domain(3), ex("/a", None, i, i + 1));
        }
        assert_eq!(p.waiting(), MAX_WAITING);
        assert_eq!(p.unpaired.forward_unclaimed, 6);
    }
}
