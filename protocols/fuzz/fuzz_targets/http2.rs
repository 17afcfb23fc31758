//! HTTP/2 + gRPC parser (from the preface, or joined mid-stream): any
//! calls, no panic, memory within the limits.
#![no_main]

mod chunks;

use libfuzzer_sys::fuzz_target;
use pmoas_protocols::{Losses, http2::Http2};

fuzz_target!(|data: &[u8]| {
    let from_start = data.first().is_some_and(|b| b & 4 != 0);
    let calls = chunks::calls(data);
    let (role, close) = (calls.role, calls.close);
    let limits = chunks::limits();
    let bound = limits.max_connection_bytes();
    let mut p = Http2::new(role, limits, from_start);
    let mut out = Vec::new();
    let mut losses = Losses::new();
    for chunk in calls {
        p.feed(&chunk, &mut out, &mut losses);
        assert!(p.memory_bytes() <= bound);
        assert!(p.open_streams() <= limits.max_streams);
    }
    if close {
        p.close(u64::MAX / 2, &mut out, &mut losses);
    }
});
