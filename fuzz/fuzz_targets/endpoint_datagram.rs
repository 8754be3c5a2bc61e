//! The core's datagram entry point, on a hub and on a client: arbitrary datagrams from
//! arbitrary sources, interleaved with timer events, never panic.
//!
//! A client first joins the hub over a perfect wire, so the input meets live sessions and
//! pending handshakes. Input: a sequence of `[op][time step][len lo][len hi][bytes...]`; op
//! bit 0 picks the endpoint, bits 1-2 the source, bit 7 the transport, bits 3-4 what is
//! sent: the bytes, a real message replayed with the bytes XORed over it, a join claiming
//! a key of the bytes' choice, or the real traffic in flight. With bit 5 the bytes are
//! instead a plaintext the other endpoint seals in its session (an authenticated frame of
//! the input's choice: what a peer holding the session could send).
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

fn config(role: Role, addr: &str, route: &str, key: u8) -> Config {
    let side = match role {
        Role::Hub(_) => culvert_core::faketcp::Side::Server,
        Role::Client(_) => culvert_core::faketcp::Side::Client,
    };
    Config {
        secret: StaticSecret::from_bytes([key; 32]),
        passphrase: Some(Psk::from_bytes([7; 32])),
        addresses: vec![addr.parse().unwrap()],
        routes: vec![route.parse().unwrap()],
        ciphers: vec![Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305],
        aead: culvert_core::aead::rustcrypto,
        timing: Timing::default(),
        fec: culvert_core::fec::Config::default(),
        mtu: Some(1354),
        faketcp: Some(culvert_core::faketcp::Config {
            side,
            mss: 1400,
            max_flows: 8,
            isn: None,
            mask_key: culvert_core::faketcp::mask_key(&Psk::from_bytes([7; 32])),
        }),
        role,
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let t0 = epoch();
    let hub = Role::Hub(HubConfig {
        max_clients: 4,
        isolation: false,
        exit: false,
        clients: Vec::new(),
        allow_routes: vec!["192.168.0.0/16".parse().unwrap()],
        allow_route_overlap: false,
        handshake_load_limit: 8,
    });
    let client = Role::Client(ClientConfig {
        server: "198.19.1.2:9000".parse().unwrap(),
        server_key: None,
        transport: TransportMode::Auto,
        networks: vec!["10.0.0.0/24".parse().unwrap()],
        p2p: true,
        mesh_relay: culvert_core::MeshRelay::default(),
        full_tunnel: false,
        accept_routes: vec!["192.168.0.0/16".parse().unwrap()],
    });
    let mut eps = [
        Endpoint::new(
            config(hub, "10.0.0.1/24", "192.168.60.0/24", 1),
            [1; 32],
            t0,
            Duration::from_secs(1_700_000_000),
        ),
        Endpoint::new(
            config(client, "10.0.0.2/24", "192.168.50.0/24", 2),
            [2; 32],
            t0,
            Duration::from_secs(1_700_000_000),
        ),
    ];
    eps[1].faketcp_dial(t0, "198.18.1.2".parse().unwrap(), "198.19.1.2:9000".parse().unwrap());
    let sources: [SocketAddr; 3] = [
        "198.19.1.2:9000".parse().unwrap(),
        "198.18.1.2:4000".parse().unwrap(),
        "[2001:db8::1]:5".parse().unwrap(),
    ];
    // Real traffic first: the client joins, so that the fuzz input meets live sessions,
    // pending handshakes and the directory, not only the parsers.
    let mut now = t0;
    let mut wire: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut log: Vec<(usize, Vec<u8>)> = Vec::new();
    let collect = |eps: &mut [Endpoint; 2], wire: &mut Vec<(usize, Vec<u8>)>| {
        for (i, ep) in eps.iter_mut().enumerate() {
            while let Some(t) = ep.poll_transmit() {
                wire.push((1 - i, t.bytes));
            }
            while ep.poll_event().is_some() {}
        }
    };
    collect(&mut eps, &mut wire);
    for _ in 0..8 {
        for (to, mut bytes) in std::mem::take(&mut wire) {
            let len = bytes.len();
            if log.len() < 64 {
                log.push((to, bytes.clone()));
            }
            let from = Remote::udp(sources[1 - to]);
            let _ = eps[to].handle_datagram(now, from, &mut bytes, 0..len);
        }
        now += Duration::from_millis(20);
        for ep in &mut eps {
            if ep.poll_timeout() <= now {
                ep.handle_timeout(now);
            }
        }
        collect(&mut eps, &mut wire);
    }
    assert!(eps[1].status(now).node.is_some(), "the client did not join");
    let mut rng = culvert_core::rng::Rng::from_seed([9; 32]);
    let mut rest = data;
    while rest.len() >= 4 {
        let (head, tail) = rest.split_at(4);
        let len = usize::from(u16::from_le_bytes([head[2], head[3]])).min(tail.len());
        let (msg, tail) = tail.split_at(len);
        rest = tail;
        now += Duration::from_millis(u64::from(head[1]) * 10);
        let target = usize::from(head[0] & 1);
        let from = sources[usize::from(head[0] >> 1 & 3) % sources.len()];
        let transport = if head[0] & 0x80 == 0 {
            Transport::Udp
        } else {
            Transport::FakeTcp
        };
        #[cfg(fuzzing)]
        if head[0] & 0x20 != 0 {
            let sender = 1 - target;
            let peer = if sender == 1 {
                0
            } else {
                eps[1].status(now).node.unwrap_or(1)
            };
            eps[sender].forge_plain(now, peer, msg);
            for t in std::iter::from_fn(|| eps[sender].poll_transmit()).collect::<Vec<_>>() {
                let mut bytes = t.bytes;
                let n = bytes.len();
                let _ = eps[target].handle_datagram(
                    now,
                    Remote::udp(sources[sender]),
                    &mut bytes,
                    0..n,
                );
            }
            collect(&mut eps, &mut wire);
            continue;
        }
        let mut buf = match head[0] >> 3 & 3 {
            // Arbitrary bytes.
            0 => msg.to_vec(),
            // A real message again (a replay), with the input XORed over it.
            1 if !log.is_empty() => {
                let (_, real) = &log[usize::from(msg.first().copied().unwrap_or(0)) % log.len()];
                let mut b = real.clone();
                for (x, m) in b.iter_mut().zip(msg.iter().skip(1)) {
                    *x ^= m;
                }
                b
            }
            // A join claiming a key of the input's choice, as a passphrase holder can.
            2 => {
                let mut key = [0u8; 32];
                for (k, m) in key.iter_mut().zip(msg) {
                    *k = *m;
                }
                let addr = format!("10.0.0.{}/24", msg.get(32).copied().unwrap_or(2))
                    .parse()
                    .unwrap();
                culvert_core::forge::join_claiming(
                    &mut rng,
                    &culvert_core::PublicKey(key),
                    &Psk::from_bytes([7; 32]),
                    u32::from(msg.get(33).copied().unwrap_or(1)),
                    &[addr],
                    u64::from(msg.get(34).copied().unwrap_or(0)),
                )
            }
            // Let the real traffic in flight arrive.
            _ => {
                for (to, mut bytes) in std::mem::take(&mut wire) {
                    let n = bytes.len();
                    let _ = eps[to].handle_datagram(
                        now,
                        Remote::udp(sources[1 - to]),
                        &mut bytes,
                        0..n,
                    );
                }
                collect(&mut eps, &mut wire);
                continue;
            }
        };
        let n = buf.len();
        let ep = &mut eps[target];
        if transport == Transport::FakeTcp && head[0] & 0x40 != 0 {
            // The bytes as a whole packet from FakeTCP's packet socket.
            let _ = ep.handle_segment(now, &mut buf, 0..n);
        } else {
            let _ = ep.handle_datagram(now, Remote::new(transport, from), &mut buf, 0..n);
        }
        if ep.poll_timeout() <= now {
            ep.handle_timeout(now);
        }
        collect(&mut eps, &mut wire);
        wire.truncate(256);
        let _ = (eps[0].status(now), eps[1].status(now));
    }
});
