//! The FEC decoder fed arbitrary originals and parity (raw, and from a real encoder with
//! flipped bytes), with time moving: nothing panics, state stays bounded, and whatever is
//! "recovered" is a well-formed data message no longer than any message can be.
#![no_main]
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use culvert_core::fec::{Config, Decoder, Encoder, MAX_GROUPS, MAX_MESSAGE, Mode, data_message};
use culvert_wire::message::{DATA_HEADER_LEN, Data, FecParity};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut now = epoch();
    let mut dec = Decoder::default();
    let mut enc = Encoder::new(Config {
        mode: Mode::Fixed { k: 4, m: 2 },
        ..Config::default()
    });
    let mut counter = 0u64;
    let mut parity: Vec<Vec<u8>> = Vec::new();
    let mut input = data;
    while let Some((&op, rest)) = input.split_first() {
        let take = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        input = tail;
        let recovered = match op % 5 {
            // An original arrives (and authenticates) or is lost.
            0 | 1 => {
                let msg = data_message(7, counter, chunk);
                parity.extend(enc.push(now, 7, counter, &msg));
                if op % 5 == 0 {
                    if let Some(slot) = dec.keep(now, 7, counter, &msg) {
                        dec.authenticated(slot);
                    }
                    dec.count(now, 7, counter);
                }
                counter += 1;
                Vec::new()
            }
            // Parity from the encoder, possibly with one byte flipped.
            2 => {
                let Some(mut p) = parity.pop() else { continue };
                if let (Some(&at), Some(&x)) = (chunk.first(), chunk.get(1)) {
                    let i = usize::from(at) % p.len();
                    p[i] ^= x;
                }
                match FecParity::new_checked(&p[..]) {
                    Ok(f) => dec.on_parity(now, &f),
                    Err(_) => Vec::new(),
                }
            }
            // Raw bytes as parity.
            3 => match FecParity::new_checked(chunk) {
                Ok(f) => dec.on_parity(now, &f),
                Err(_) => Vec::new(),
            },
            // Time passes.
            _ => {
                now += Duration::from_millis(u64::from(chunk.first().copied().unwrap_or(0)) * 10);
                parity.extend(enc.handle_timeout(now));
                dec.expire(now);
                let _ = dec.take_report(now);
                Vec::new()
            }
        };
        assert!(dec.open_groups() <= MAX_GROUPS);
        for m in recovered {
            let d = Data::new_checked(&m[..]);
            assert!(d.is_ok() || m.len() < DATA_HEADER_LEN + 16);
            assert!(m.len() <= DATA_HEADER_LEN + MAX_MESSAGE);
        }
    }
});
