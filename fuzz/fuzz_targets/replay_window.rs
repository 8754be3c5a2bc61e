//! The replay window never accepts a counter twice, whatever the sequence.
#![no_main]
use std::collections::BTreeSet;

use culvert_core::replay::ReplayWindow;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let w = ReplayWindow::default();
    let mut accepted = BTreeSet::new();
    let mut base = 0u64;
    for chunk in data.chunks(3) {
        let step = u64::from(u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
        base = if chunk.get(2).is_some_and(|b| b & 1 == 1) {
            base.wrapping_add(step)
        } else {
            base.saturating_sub(step)
        };
        if w.mark(base).is_ok() {
            assert!(accepted.insert(base), "counter {base} accepted twice");
        }
    }
});
