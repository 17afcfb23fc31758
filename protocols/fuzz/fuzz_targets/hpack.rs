//! HPACK decoder: any header blocks, exact or unknown table, complete or
//! cut: no panic, table within its cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmoas_protocols::hpack::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, mut rest)) = data.split_first() else { return };
    let cap = 4096;
    let mut d = if ctl & 1 == 0 { Decoder::new(cap) } else { Decoder::unknown(cap) };
    // Blocks: a length byte, then the block.
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (block, tail) = tail.split_at(n);
        rest = tail;
        let complete = len & 0x80 == 0 || ctl & 2 != 0;
        let mut fields = 0usize;
        d.decode(block, complete, |_, _| fields += 1);
        assert!(fields <= block.len());
        assert!(d.table_size() <= cap);
        assert!(d.memory_bytes() <= 16 * cap + 4 * 1024);
    }
});
