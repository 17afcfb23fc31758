//! Packet journeys as traces: 1 in `--collector.netstack.trace-sample-rate`
//! followed packets carries the time it reached each stage; when it reaches
//! the last stage of its direction the kernel sends that record through the
//! `netstack_journeys` ring buffer, and this module turns it into one trace
//! for the OTLP pipeline: a root span for the whole path, and one span per
//! stage, named by the stage, in path order (each from the previous stage
//! to this one; the first stage is an instant).

use pmoas_bpf::netstack as n;
use pmoas_otlp::{Span, SpanKind, Trace, attr};

pub use crate::clock::Clock;

/// The stages of a direction, in path order.
fn stages_of(direction: u32) -> Option<std::ops::Range<usize>> {
    match direction {
        n::DIR_INGRESS => Some(n::STAGE_DEVICE_RECEIVE as usize..n::STAGE_APP_READ as usize + 1),
        n::DIR_EGRESS => Some(n::STAGE_APP_SEND as usize..n::STAGE_DEV_XMIT as usize + 1),
        _ => None,
    }
}

/// One journey as a trace, or `None` when it holds fewer than two stages
/// or an unknown direction (nothing to show). `pod` becomes the resource's
/// k8s attributes; `netns` stays a span attribute.
pub fn to_trace(j: &n::Journey, pod: Option<pmoas_otlp::Pod>, clock: &Clock) -> Option<Trace> {
    let range = stages_of(j.direction)?;
    let direction = if j.direction == n::DIR_INGRESS { "ingress" } else { "egress" };
    let seen: Vec<(usize, u64)> = range.filter(|&s| j.ts_ns[s] != 0).map(|s| (s, j.ts_ns[s])).collect();
    if seen.len() < 2 {
        return None;
    }
    let (first, last) = (seen[0].1, seen[seen.len() - 1].1);
    let common = |stage: Option<&str>| {
        let mut a = vec![attr("pmoas.direction", direction), attr("pmoas.netns.inode", j.netns as i64)];
        if let Some(s) = stage {
            a.push(attr("pmoas.stage", s));
        }
        a
    };
    let mut spans = vec![Span {
        name: format!("{direction} packet"),
        kind: SpanKind::Internal,
        start: clock.wall(first),
        end: clock.wall(last),
        parent: None,
        attributes: common(None),
        error: None,
    }];
    let mut previous = first;
    for (stage, ts) in seen {
        let name = n::STAGE_NAMES[stage];
        spans.push(Span {
            name: name.to_string(),
            kind: SpanKind::Internal,
            start: clock.wall(previous.min(ts)),
            end: clock.wall(ts),
            parent: Some(0),
            attributes: common(Some(name)),
            error: None,
        });
        previous = ts;
    }
    Some(Trace { pod, spans, remote_parent: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn journey(direction: u32, ts: &[(u32, u64)]) -> n::Journey {
        let mut j = n::Journey { netns: 4026532000, direction, ..Default::default() };
        for (stage, t) in ts {
            j.ts_ns[*stage as usize] = *t;
        }
        j
    }

    #[test]
    fn an_ingress_journey_is_a_root_and_its_stages_in_path_order() {
        let clock = Clock::fixed(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000), 5_000);
        let j = journey(
            n::DIR_INGRESS,
            &[
                (n::STAGE_DEVICE_RECEIVE, 10_000),
                (n::STAGE_TCP_RECEIVE, 12_000),
                (n::STAGE_SOCKET_QUEUE, 15_000),
                (n::STAGE_APP_READ, 40_000),
            ],
        );
        let pod = pmoas_otlp::Pod { namespace: "shop".into(), name: "web".into(), uid: "u1".into(), container: None };
        let t = to_trace(&j, Some(pod.clone()), &clock).unwrap();
        assert_eq!(t.pod, Some(pod));
        let names: Vec<&str> = t.spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ingress packet", "device_receive", "tcp_receive", "socket_queue", "app_read"]);
        let at = |ns: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_000) + Duration::from_nanos(ns - 5_000);
        assert_eq!((t.spans[0].start, t.spans[0].end), (at(10_000), at(40_000)));
        assert_eq!((t.spans[1].start, t.spans[1].end), (at(10_000), at(10_000)), "the first stage is an instant");
        assert_eq!((t.spans[3].start, t.spans[3].end), (at(12_000), at(15_000)));
        assert!(t.spans[1..].iter().all(|s| s.parent == Some(0)));
        assert!(t.spans.windows(2).skip(1).all(|w| w[0].end <= w[1].start || w[0].end == w[1].start));
    }

    #[test]
    fn missing_stages_are_skipped_and_lone_ones_dropped() {
        let clock = Clock::fixed(SystemTime::UNIX_EPOCH, 0);
        let j = journey(n::DIR_EGRESS, &[(n::STAGE_APP_SEND, 100), (n::STAGE_DEV_XMIT, 900)]);
        let t = to_trace(&j, None, &clock).unwrap();
        let names: Vec<&str> = t.spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["egress packet", "app_send", "dev_xmit"]);
        assert!(to_trace(&journey(n::DIR_EGRESS, &[(n::STAGE_DEV_XMIT, 5)]), None, &clock).is_none());
        assert!(to_trace(&journey(7, &[(0, 1), (1, 2)]), None, &clock).is_none());
        // Stages of the other direction do not leak in.
        let mixed =
            journey(n::DIR_INGRESS, &[(n::STAGE_DEVICE_RECEIVE, 1), (n::STAGE_APP_READ, 3), (n::STAGE_DEV_XMIT, 9)]);
        assert_eq!(to_trace(&mixed, None, &clock).unwrap().spans.len(), 3);
    }
}
