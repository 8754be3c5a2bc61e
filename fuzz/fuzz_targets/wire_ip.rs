//! The IP header view: never panics, and the length it reports fits the buffer.
#![no_main]
use culvert_wire::ip::Packet;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_checked(data) {
        assert!(p.total_len() <= data.len());
        let _ = (p.src_addr(), p.dst_addr(), p.protocol(), p.version());
    }
});
