//! HTTP/1 parser: any calls, no panic, memory within the limits.
#![no_main]

mod chunks;

use libfuzzer_sys::fuzz_target;
use pmoas_protocols::{Losses, http1::Http1};

fuzz_target!(|data: &[u8]| {
    let calls = chunks::calls(data);
    let (role, close) = (calls.role, calls.close);
    let limits = chunks::limits();
    let bound = limits.max_connection_bytes();
    let mut p = Http1::new(role, limits);
    let mut out = Vec::new();
    let mut losses = Losses::new();
    for chunk in calls {
        p.feed(&chunk, &mut out, &mut losses);
        assert!(p.memory_bytes() <= bound);
        assert!(p.queued() <= limits.max_pipelined);
    }
    if close {
        p.close(u64::MAX / 2, &mut out, &mut losses);
    }
    for e in &out {
        assert!(e.path.as_ref().is_none_or(|p| p.len() <= limits.max_path));
    }
});
