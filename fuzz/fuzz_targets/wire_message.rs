//! Every outer-message view: parse never panics, accessors never panic after a check.
#![no_main]
use culvert_wire::message::{
    CookieReply, Data, FEC_OVERHEAD, FecParity, HandshakeInit, HandshakeResponse, MessageType,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = MessageType::of(data);
    if let Ok(d) = Data::new_checked(data) {
        assert_eq!(d.payload_len() + 32, data.len());
        let _ = (d.index(), d.counter());
    }
    if let Ok(h) = HandshakeInit::new_checked(data) {
        assert_eq!(h.noise().len() + 40, data.len());
        let _ = (
            h.mac1(),
            h.mac1_covered(),
            h.mac2(),
            h.mac2_covered(),
            h.index(),
        );
    }
    if let Ok(h) = HandshakeResponse::new_checked(data) {
        let _ = (h.noise(), h.receiver_index());
    }
    if let Ok(c) = CookieReply::new_checked(data) {
        let _ = (c.nonce(), c.sealed_cookie());
    }
    if let Ok(f) = FecParity::new_checked(data) {
        assert!(f.j() < f.m() && f.k() > 0);
        assert_eq!(f.shard().len() + FEC_OVERHEAD, data.len());
        // The group's last counter never passes u64::MAX.
        assert!(
            f.first_counter()
                .checked_add(u64::from(f.k()) - 1)
                .is_some()
        );
        let _ = (f.index(), f.first_counter());
    }
});
