//! Control frames: parse never panics, and whatever parses re-encodes to the same bytes.
#![no_main]
use culvert_wire::frame::{Content, Frame};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Content::Frame(f)) = Content::parse(data) {
        let mut out = Vec::new();
        f.emit(&mut out);
        assert_eq!(Frame::parse(&out).as_ref(), Ok(&f));
    }
});
