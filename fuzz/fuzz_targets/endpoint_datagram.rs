//! The core's datagram entry point, on a hub and on a client: arbitrary datagrams from
//! arbitrary sources, interleaved with timer events, never panic.
//!
//! Input: a sequence of `[role+source byte][time step byte][len lo][len hi][bytes...]`.
#![no_main]
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use culvert_core::{
    ClientConfig, Config, Endpoint, HubConfig, Psk, Remote, Role, StaticSecret, Timing, Transport,
    TransportMode,
};
use culvert_wire::hello::Cipher;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn config(role: Role, addr: &str, key: u8) -> Config {
    Config {
        secret: StaticSecret::from_bytes([key; 32]),
        passphrase: Some(Psk::from_bytes([7; 32])),
        addresses: vec![addr.parse().unwrap()],
        ciphers: vec![Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305],
        aead: culvert_core::aead::rustcrypto,
        timing: Timing::default(),
        fec: culvert_core::fec::Config::default(),
        role,
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let t0 = epoch();
    let hub = Role::Hub(HubConfig {
        max_clients: 4,
        isolation: false,
        clients: Vec::new(),
        handshake_load_limit: 8,
    });
    let client = Role::Client(ClientConfig {
        server: "198.19.1.2:9000".parse().unwrap(),
        server_key: None,
        transport: TransportMode::Auto,
        networks: vec!["10.0.0.0/24".parse().unwrap()],
    });
    let mut eps = [
        Endpoint::new(
            config(hub, "10.0.0.1/24", 1),
            [1; 32],
            t0,
            Duration::from_secs(1_700_000_000),
        ),
        Endpoint::new(
            config(client, "10.0.0.2/24", 2),
            [2; 32],
            t0,
            Duration::from_secs(1_700_000_000),
        ),
    ];
    let sources: [SocketAddr; 3] = [
        "198.19.1.2:9000".parse().unwrap(),
        "198.18.1.2:4000".parse().unwrap(),
        "[2001:db8::1]:5".parse().unwrap(),
    ];
    let mut now = t0;
    let mut rest = data;
    while rest.len() >= 4 {
        let (head, tail) = rest.split_at(4);
        let len = usize::from(u16::from_le_bytes([head[2], head[3]])).min(tail.len());
        let (msg, tail) = tail.split_at(len);
        rest = tail;
        now += Duration::from_millis(u64::from(head[1]) * 10);
        let ep = &mut eps[usize::from(head[0] & 1)];
        let from = sources[usize::from(head[0] >> 1) % sources.len()];
        let mut buf = msg.to_vec();
        let transport = if head[0] & 0x80 == 0 {
            Transport::Udp
        } else {
            Transport::FakeTcp
        };
        let _ = ep.handle_datagram(
            now,
            Remote {
                transport,
                addr: from,
            },
            &mut buf,
            0..len,
        );
        if ep.poll_timeout() <= now {
            ep.handle_timeout(now);
        }
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
        let _ = ep.status(now);
    }
});
