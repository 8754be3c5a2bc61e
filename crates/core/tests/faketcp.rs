//! FakeTCP through the simulator: the endpoint's own stack on both ends, whole TCP packets
//! on the wire. Twins of the e2e scenarios in `crates/culvert/tests/faketcp.rs` (all but
//! the one about system rules left behind, which has nothing to simulate) and of
//! `first_contact.rs`'s cold start; the FakeTCP cases of `fec.rs` and `gateway.rs` have
//! theirs in `fec.rs` and `mtu.rs` here.

mod sim;

use std::time::Duration;

use culvert_core::{Role, Transport, TransportMode};
use culvert_wire::tcp::{Segment, SegmentOptions, SegmentRepr, flags};
use sim::{World, client_config, hub_config, ip_packet, passphrase};

const SECOND: Duration = Duration::from_secs(1);

/// A passphrase hub and one client per transport mode, in that order.
fn world(seed: u64, modes: &[TransportMode]) -> World {
    let mut w = World::new(seed);
    let hs = w.secret();
    w.hub_secret = Some(hs.clone());
    w.add(hub_config(hs, Some(passphrase())), sim::HUB_ADDR);
    for (i, &mode) in modes.iter().enumerate() {
        let s = w.secret();
        let mut c = client_config(s, Some(passphrase()), &format!("10.0.0.{}/24", i + 2));
        if let Role::Client(cc) = &mut c.role {
            cc.transport = mode;
        }
        w.add(c, &format!("198.18.{}.2:40000", i + 1));
    }
    w
}

fn block_udp(w: &mut World) {
    w.filter = Some(Box::new(|d| d.transport != Transport::Udp));
}

fn transport_to_hub(w: &World, node: usize) -> Option<Transport> {
    let s = w.nodes[node].ep.status(w.now);
    s.peers
        .iter()
        .find(|p| p.node == 0)
        .and_then(|p| p.transport)
}

/// Sends `count` packets of `size` bytes from node `a` to node `b` one per millisecond;
/// returns those `b` received intact, in the order received.
fn transfer(w: &mut World, a: usize, b: usize, count: usize, size: usize) -> Vec<Vec<u8>> {
    let before = w.nodes[b].delivered.len();
    let (src, dst) = (World::overlay(a), World::overlay(b));
    let sent: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let body: Vec<u8> = (0..size).map(|k| (k * 7 + i) as u8).collect();
            ip_packet(&src, &dst, &body)
        })
        .collect();
    for p in &sent {
        let _ = w.tun(a, p);
        w.step(Duration::from_millis(1));
    }
    w.run(SECOND);
    let got = w.nodes[b].delivered[before..].to_vec();
    assert!(
        got.iter().all(|p| sent.contains(p)),
        "a packet arrived altered"
    );
    got
}

/// Every FakeTCP datagram of the log is a well-formed TCP packet with valid checksums.
fn assert_real_tcp(w: &World) {
    let mut n = 0;
    for d in w.log.iter().filter(|d| d.transport == Transport::FakeTcp) {
        let seg = Segment::parse(&d.bytes).expect("a TCP packet");
        assert_eq!((seg.src, seg.dst), (d.from, d.to));
        assert!(culvert_wire::tcp::checksums_ok(&d.bytes), "bad checksum");
        n += 1;
    }
    assert!(n > 0, "no FakeTCP packet at all");
}

#[test]
fn through_a_udp_block_faketcp_and_auto_carry_data_and_udp_only_does_not() {
    let mut w = world(
        40,
        &[
            TransportMode::FakeTcp,
            TransportMode::Auto,
            TransportMode::Udp,
        ],
    );
    block_udp(&mut w);
    assert!(
        w.run_until(15 * SECOND, |w| w.joined(1) && w.joined(2)),
        "FakeTCP and auto clients did not join through the UDP block"
    );
    for c in [1, 2] {
        let got = transfer(&mut w, c, 0, 300, 1200);
        assert_eq!(got.len(), 300, "client {c}");
        assert_eq!(transport_to_hub(&w, c), Some(Transport::FakeTcp));
    }
    let s = w.nodes[2].ep.status(w.now);
    let why = s.peers[0].last_switch.clone().unwrap_or_default();
    assert!(why.contains("no handshake answer over UDP"), "{why}");
    assert!(!w.joined(3), "the UDP-only client got through a UDP block");
    assert_real_tcp(&w);
    // The hub holds one proven flow per FakeTCP client.
    let (flows, _) = w.nodes[0].ep.faketcp_status().unwrap();
    let established = flows.iter().filter(|f| f.state == "established").count();
    assert_eq!(established, 2, "{flows:?}");
}

/// A restarted hub knows none of the old flows and answers nothing on them: the clients
/// dial new ones — the idle standby flow when UDP fails after the restart, and the flow in
/// use when the hub restarts while UDP is blocked.
#[test]
fn clients_redial_flows_a_restarted_hub_forgot() {
    let mut w = world(41, &[TransportMode::Auto, TransportMode::Auto]);
    assert!(w.run_until(5 * SECOND, |w| w.joined(1) && w.joined(2)));
    for c in [1, 2] {
        assert_eq!(transport_to_hub(&w, c), Some(Transport::Udp));
    }
    let hub_secret = w.hub_secret.clone().unwrap();
    for round in ["standby flow, then UDP blocked", "flow in use"] {
        w.restart(0, hub_config(hub_secret.clone(), Some(passphrase())));
        if round.starts_with("standby") {
            block_udp(&mut w);
        }
        let restarted = w.now;
        for c in [1, 2] {
            // Pings of the hub's overlay address until one arrives.
            let mut back = false;
            for i in 0..120 {
                let before = w.nodes[0].delivered.len();
                let _ = w.tun(c, &ip_packet(&World::overlay(c), "10.0.0.1", &[i; 64]));
                w.run(Duration::from_millis(100));
                if w.nodes[0].delivered.len() > before {
                    back = true;
                    break;
                }
            }
            assert!(back, "client {c} did not recover ({round})");
            assert_eq!(transport_to_hub(&w, c), Some(Transport::FakeTcp), "{round}");
        }
        eprintln!(
            "both clients back over FakeTCP {:?} after the restart ({round})",
            w.now - restarted
        );
        assert!(w.now - restarted < 12 * SECOND, "{round}");
    }
    assert_real_tcp(&w);
}

/// Sequence numbers wrap in both directions during a transfer (the client's ISN just
/// below 2^32; the hub's, a SYN cookie, wherever it falls — both sides send 600 kB).
#[test]
fn flows_carry_data_across_sequence_number_wraparound() {
    let mut w = World::new(42);
    let hs = w.secret();
    w.add(hub_config(hs, Some(passphrase())), sim::HUB_ADDR);
    let s = w.secret();
    let mut c = sim::with_faketcp({
        let mut c = client_config(s, Some(passphrase()), "10.0.0.2/24");
        if let Role::Client(cc) = &mut c.role {
            cc.transport = TransportMode::FakeTcp;
        }
        c
    });
    if let Some(f) = &mut c.faketcp {
        f.isn = Some(u32::MAX - 100_000);
    }
    w.add(c, "198.18.1.2:40000");
    assert!(w.run_until(5 * SECOND, |w| w.joined(1)));
    let before = w.nodes[1].ep.faketcp_status().unwrap().0[0].snd_nxt;
    assert_eq!(transfer(&mut w, 1, 0, 500, 1200).len(), 500);
    assert_eq!(transfer(&mut w, 0, 1, 500, 1200).len(), 500);
    let after = w.nodes[1].ep.faketcp_status().unwrap().0[0].snd_nxt;
    assert!(after < before, "the client's sequence numbers did not wrap");
    assert_eq!(transport_to_hub(&w, 1), Some(Transport::FakeTcp));
}

/// A receiver's GRO merges consecutive segments of a flow into one packet: every message
/// in it is delivered, in order, and counted as merged.
#[test]
fn segments_merged_by_gro_deliver_every_message_in_order() {
    let mut w = world(43, &[TransportMode::FakeTcp]);
    assert!(w.run_until(5 * SECOND, |w| w.joined(1)));
    let before = w.nodes[0].delivered.len();
    let sent: Vec<Vec<u8>> = (0..40u8)
        .map(|i| ip_packet("10.0.0.2", "10.0.0.1", &vec![i; 300 + usize::from(i) * 20]))
        .collect();
    for p in &sent {
        let _ = w.tun(1, p);
    }
    // What GRO does: consecutive data segments become one packet with the first's headers.
    let queued: Vec<_> = w.queue.drain(..).collect();
    let mut merged_packets = 0;
    let mut pending: Option<sim::Datagram> = None;
    for d in queued {
        let data = d.transport == Transport::FakeTcp
            && Segment::parse(&d.bytes).is_ok_and(|s| !s.payload.is_empty());
        match pending.take() {
            Some(mut first) if data && (first.from, first.to) == (d.from, d.to) => {
                let seg = Segment::parse(&d.bytes).unwrap();
                first.bytes.extend_from_slice(&d.bytes[seg.payload]);
                let len = u16::try_from(first.bytes.len()).unwrap();
                first.bytes[2..4].copy_from_slice(&len.to_be_bytes());
                merged_packets += usize::from(d.to == w.nodes[0].addr);
                w.queue.push_back(first);
            }
            p => {
                w.queue.extend(p);
                if data {
                    pending = Some(d);
                } else {
                    w.queue.push_back(d);
                }
            }
        }
    }
    w.queue.extend(pending);
    assert!(merged_packets >= 19, "{merged_packets}");
    w.run(SECOND);
    assert_eq!(w.nodes[0].delivered[before..], sent[..]);
    let (_, merged) = w.nodes[0].ep.faketcp_status().unwrap();
    assert_eq!(merged, merged_packets as u64);
}

/// Forged RSTs, FINs and data spoofed as the client, a SYN flood and forged ACKs from
/// everywhere, interleaved with a transfer: the flow carries on, unchanged.
#[test]
fn garbage_rst_fin_and_syn_floods_do_not_hurt_the_flow() {
    let mut w = world(44, &[TransportMode::FakeTcp]);
    assert!(w.run_until(5 * SECOND, |w| w.joined(1)));
    let flow = |w: &World| w.nodes[1].ep.faketcp_status().unwrap().0[0].local.clone();
    let before = flow(&w);
    let client: std::net::SocketAddr = before.parse().unwrap();
    let hub: std::net::SocketAddr = sim::HUB_ADDR.parse().unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut delivered = 0;
    let log_from = w.log.len();
    for round in 0..200 {
        for i in 0..100u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = x;
            let junk: Vec<u8> = (0..(r % 200) as usize)
                .map(|k| (r >> (k % 50)) as u8)
                .collect();
            let stranger = std::net::SocketAddr::new(
                [203, 0, 113, (r % 250) as u8].into(),
                1024 + (r % 60_000) as u16,
            );
            let (src, f, payload): (_, u8, &[u8]) = match i % 5 {
                0 => (client, flags::RST, &[]),
                1 => (client, flags::FIN | flags::ACK, &[]),
                2 => (client, flags::ACK | flags::PSH, &junk),
                3 => (stranger, flags::SYN, &[]),
                _ => (stranger, flags::ACK, &junk),
            };
            let ack = if f == flags::SYN || f == flags::RST {
                0
            } else {
                (r >> 32) as u32
            };
            let p = forged(src, r as u32, ack, f, payload);
            w.inject_segment(p);
        }
        let packet = ip_packet("10.0.0.2", "10.0.0.1", format!("round {round}").as_bytes());
        let n = w.nodes[0].delivered.len();
        let _ = w.tun(1, &packet);
        w.run(Duration::from_millis(10));
        delivered += usize::from(w.nodes[0].delivered[n..].contains(&packet));
    }
    assert_eq!(delivered, 200, "the transfer suffered");
    assert_eq!(flow(&w), before, "the client had to redial");
    // 4000 SYNs in 2 s were answered within the stack's SYN-ACK budget.
    let synacks = w.log[log_from..]
        .iter()
        .filter(|d| d.transport == Transport::FakeTcp && d.from == hub)
        .filter_map(|d| Segment::parse(&d.bytes).ok())
        .filter(|s| s.has(flags::SYN))
        .count();
    eprintln!("{synacks} SYN-ACKs for 4000 forged SYNs");
    assert!(synacks < 4000 / 2, "{synacks} SYN-ACKs");
    assert!(w.drops(0, "tcp_rst") > 0 && w.drops(0, "tcp_no_flow") > 0);
}

/// Twin of e2e `first_contact::a_cold_start_behind_a_udp_blocking_firewall_joins_within_2_s`:
/// with the daemon's timers, an `auto` client behind a UDP block joins over FakeTCP within
/// 2.5 s of its start.
#[test]
fn a_cold_start_behind_a_udp_block_joins_within_2_5_s() {
    let mut w = World::new(45);
    block_udp(&mut w);
    let hs = w.secret();
    let mut hub = hub_config(hs, Some(passphrase()));
    hub.timing = culvert_core::Timing::default();
    w.add(hub, sim::HUB_ADDR);
    let s = w.secret();
    let mut c = client_config(s, Some(passphrase()), "10.0.0.2/24");
    c.timing = culvert_core::Timing::default();
    if let Role::Client(cc) = &mut c.role {
        cc.transport = TransportMode::Auto;
    }
    let started = w.now;
    w.add(c, "198.18.1.2:40000");
    assert!(w.run_until(10 * SECOND, |w| w.joined(1)), "never joined");
    let took = w.now - started;
    eprintln!("joined over FakeTCP {took:?} after the start");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(transport_to_hub(&w, 1), Some(Transport::FakeTcp));
}

/// A TCP packet to the hub as anyone can forge it (timestamps, no valid cookie or window).
fn forged(src: std::net::SocketAddr, seq: u32, ack: u32, f: u8, payload: &[u8]) -> Vec<u8> {
    let repr = SegmentRepr {
        src,
        dst: sim::HUB_ADDR.parse().unwrap(),
        seq,
        ack,
        flags: f,
        window: 512,
        ip_id: 1,
        options: SegmentOptions::Timestamps { tsval: 1, tsecr: 0 },
    };
    let mut p = vec![0u8; repr.header_len() + payload.len()];
    p[repr.header_len()..].copy_from_slice(payload);
    repr.emit(&mut p);
    p
}

/// An attacker at `addr` completing FakeTCP handshakes with the hub: a SYN from each new
/// port, and the final ACK for every SYN-ACK that came back (what a kernel's `connect()`
/// does). Returns the handshakes completed since `*seen` (its place in the log).
struct Dialer {
    addr: std::net::IpAddr,
    next_port: u16,
    seen: usize,
}

impl Dialer {
    fn syn(&mut self, w: &mut World) {
        self.next_port = self.next_port.wrapping_add(1).max(1024);
        let src = std::net::SocketAddr::new(self.addr, self.next_port);
        w.inject_segment(forged(src, 1000, 0, flags::SYN, &[]));
    }

    /// ACKs every SYN-ACK the hub sent since the last call; returns how many.
    fn complete(&mut self, w: &mut World) -> usize {
        let synacks: Vec<Segment> = w.log[self.seen..]
            .iter()
            .filter(|d| d.transport == Transport::FakeTcp && d.to.ip() == self.addr)
            .filter_map(|d| Segment::parse(&d.bytes).ok())
            .filter(|s| s.has(flags::SYN) && s.has(flags::ACK))
            .collect();
        self.seen = w.log.len();
        for s in &synacks {
            let ack = forged(s.dst, 1001, s.seq.wrapping_add(1), flags::ACK, &[]);
            w.inject_segment(ack);
        }
        synacks.len()
    }
}

/// Twin of e2e `trust::a_faketcp_handshake_flood_from_one_address_does_not_hurt_a_transfer`:
/// about 1000 completed handshakes a second from one address while a FakeTCP client
/// transfers; every packet arrives and the flood is budgeted.
#[test]
fn a_handshake_flood_from_one_address_does_not_hurt_a_transfer() {
    let mut w = world(46, &[TransportMode::FakeTcp]);
    assert!(w.run_until(5 * SECOND, |w| w.joined(1)));
    let mut flood = Dialer {
        addr: "198.18.9.9".parse().unwrap(),
        next_port: 1024,
        seen: w.log.len(),
    };
    let mut completed = 0;
    let before = w.nodes[0].delivered.len();
    for i in 0..3000u32 {
        flood.syn(&mut w);
        let _ = w.tun(1, &ip_packet("10.0.0.2", "10.0.0.1", &i.to_be_bytes()));
        w.step(Duration::from_millis(1));
        completed += flood.complete(&mut w);
    }
    w.run(SECOND);
    assert_eq!(
        w.nodes[0].delivered.len() - before,
        3000,
        "the transfer suffered"
    );
    eprintln!("{completed} handshakes completed of 3000 SYNs in 3 s");
    assert!(w.drops(0, "rate_limited") > 0, "the flood was not budgeted");
    // The flows it left never carried an authentic message: they are kept apart and
    // never displace the client's.
    let (flows, _) = w.nodes[0].ep.faketcp_status().unwrap();
    let proven = flows.iter().filter(|f| f.state == "established").count();
    assert_eq!(proven, 1, "{} flows", flows.len());
    assert!(flows.len() <= 1 + culvert_core::faketcp::MAX_UNPROVEN);
}

/// Twin of the FakeTCP half of e2e `trust::probes_of_every_kind_get_zero_bytes_back`: a
/// stranger that completes a handshake and then sends bytes that look like every message
/// type gets no byte of payload back — only what TCP itself answers (SYN-ACK, pure ACKs).
#[test]
fn a_stranger_on_a_completed_flow_gets_no_payload_back() {
    let mut w = world(47, &[]);
    let mut scanner = Dialer {
        addr: "198.18.9.10".parse().unwrap(),
        next_port: 40_000,
        seen: w.log.len(),
    };
    scanner.syn(&mut w);
    w.run(Duration::from_millis(20));
    assert_eq!(scanner.complete(&mut w), 1, "no SYN-ACK");
    w.run(Duration::from_millis(20));
    let from = std::net::SocketAddr::new(scanner.addr, scanner.next_port);
    let mut seq = 1001u32;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for t in 0u8..=8 {
        for len in [0usize, 1, 2, 4, 16, 32, 48, 100, 122, 200, 1024] {
            let mut m: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if let Some(b) = m.first_mut() {
                *b = t;
            }
            // As a record (length prefix) and as raw bytes.
            let mut record = u16::try_from(m.len()).unwrap().to_be_bytes().to_vec();
            record.extend_from_slice(&m);
            for payload in [record, m] {
                if payload.is_empty() {
                    continue;
                }
                let len = u32::try_from(payload.len()).unwrap();
                w.inject_segment(forged(from, seq, 1, flags::ACK | flags::PSH, &payload));
                seq = seq.wrapping_add(len);
                w.run(Duration::from_millis(2));
            }
        }
    }
    w.run(SECOND);
    let payload: usize = w
        .log
        .iter()
        .filter(|d| d.to.ip() == scanner.addr)
        .filter_map(|d| Segment::parse(&d.bytes).ok().map(|s| s.payload.len()))
        .sum();
    assert_eq!(payload, 0, "the hub answered payload bytes to a stranger");
    // Nothing it sent was authentic: its flow stays unproven (it can never evict a
    // client's flow, and gets no keepalives).
    let (flows, _) = w.nodes[0].ep.faketcp_status().unwrap();
    let states: Vec<_> = flows.iter().map(|f| (f.remote.as_str(), f.state)).collect();
    assert_eq!(states, [(from.to_string().as_str(), "unproven")]);
    // Each was dropped and counted.
    let drops: u64 = w.nodes[0]
        .ep
        .status(w.now)
        .drops
        .nonzero()
        .map(|(_, n)| n)
        .sum();
    assert!(drops >= 100, "{drops} drops counted");
}

/// The common deployment: a laptop behind a home NAT on FakeTCP to a hub on a VPS. The
/// NAT rewrites every segment's addresses, ports and checksums; the hub sees the NAT's
/// public address, and data flows both ways.
#[test]
fn a_faketcp_client_behind_a_nat_joins_and_carries_data_both_ways() {
    let mut w = World::new(48);
    w.add_nat(
        "203.0.113.1",
        sim::Mapping::Random,
        false,
        &["192.168.1.10"],
    );
    let hs = w.secret();
    w.add(hub_config(hs, Some(passphrase())), sim::HUB_ADDR);
    let s = w.secret();
    let mut c = client_config(s, Some(passphrase()), "10.0.0.2/24");
    if let Role::Client(cc) = &mut c.role {
        cc.transport = TransportMode::FakeTcp;
    }
    w.add(c, "192.168.1.10:40000");
    assert!(w.run_until(5 * SECOND, |w| w.joined(1)), "never joined");
    assert_eq!(transfer(&mut w, 1, 0, 300, 1200).len(), 300);
    assert_eq!(transfer(&mut w, 0, 1, 300, 1200).len(), 300);
    let (flows, _) = w.nodes[0].ep.faketcp_status().unwrap();
    let remote: std::net::SocketAddr = flows[0].remote.parse().unwrap();
    assert_eq!(remote.ip(), sim::ip("203.0.113.1"), "{flows:?}");
    let (client_flows, _) = w.nodes[1].ep.faketcp_status().unwrap();
    assert!(
        client_flows[0].local.starts_with("192.168.1.10:"),
        "{client_flows:?}"
    );
    assert_real_tcp(&w);
}
