//! Handshake payloads: parse never panics; parsed values round-trip.
#![no_main]
use culvert_wire::hello::{Hello, Reply};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Hello::parse(data) {
        let mut out = Vec::new();
        h.emit(&mut out);
        assert_eq!(Hello::parse(&out), Ok(h));
    }
    if let Ok(r) = Reply::parse(data) {
        let mut out = Vec::new();
        r.emit(&mut out);
        assert_eq!(Reply::parse(&out), Ok(r));
    }
});
