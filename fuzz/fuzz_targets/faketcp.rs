//! FakeTCP's segment parser and state machine: a client and a server stack, connected,
//! then fed arbitrary packets (and their own traffic, mutated) with timer events: nothing
//! panics.
#![no_main]
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use culvert_core::faketcp::{Config, HEADROOM, Side, Stack};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut now = epoch();
    let cfg = |side| Config {
        side,
        mss: 1460,
        max_flows: 8,
        isn: None,
        mask_key: [3; 32],
    };
    let mut c = Stack::new(cfg(Side::Client), [1; 32], now);
    let mut s = Stack::new(cfg(Side::Server), [2; 32], now);
    let server: SocketAddr = "198.19.1.2:9000".parse().unwrap();
    c.connect(now, "198.18.1.2:0".parse().unwrap(), server);
    for _ in 0..2 {
        while let Some((_, p)) = c.poll_transmit() {
            let _ = s.handle_packet(now, &p);
        }
        while let Some((_, p)) = s.poll_transmit() {
            let _ = c.handle_packet(now, &p);
        }
    }
    assert!(c.established(server));
    for chunk in data.chunks(97) {
        let (op, rest) = chunk.split_first().unwrap_or((&0, &[]));
        now += Duration::from_millis(u64::from(*op & 0x1f) * 100);
        match op >> 5 {
            0 | 1 => {
                // A packet, and the records of its payload if it carried any.
                let stack = if op >> 5 == 0 { &mut s } else { &mut c };
                if let Ok(Some(rx)) = stack.handle_packet(now, rest) {
                    let mut payload = rest[rx.payload.clone()].to_vec();
                    let mut at = 0;
                    while let Some(Ok(r)) = stack.next_message(&rx, &mut payload, at) {
                        assert!(r.end <= payload.len() && r.start > at);
                        at = r.end;
                    }
                    stack.confirm(now, &rx);
                }
            }
            2 => {
                // A real segment of ours, with fuzz bytes XORed over it.
                let mut buf = vec![0u8; HEADROOM + 8];
                if let Ok(r) = c.encapsulate(now, server, &mut buf, HEADROOM..HEADROOM + 8) {
                    let pkt = &mut buf[r];
                    for (b, x) in pkt.iter_mut().zip(rest) {
                        *b ^= x;
                    }
                    let _ = s.handle_packet(now, pkt);
                }
            }
            _ => {
                c.handle_timeout(now);
                s.handle_timeout(now);
                while c.poll_transmit().is_some() {}
                while s.poll_transmit().is_some() {}
            }
        }
        let _ = (c.status(), s.status());
    }
});
