//! Path MTU discovery through whole endpoints, in virtual time: a path that starts
//! carrying only smaller datagrams (a narrower link, no ICMP from anywhere).

mod sim;

use std::time::Duration;

use culvert_core::{Role, TransportMode};
use sim::{World, client_config, hub_config, ip_packet, passphrase};

/// A hub and one client with a 1354-byte TUN on both; the network drops every datagram
/// longer than `path` bytes (UDP payload), silently.
fn narrow_world(path: usize) -> World {
    narrow_world_over(path, TransportMode::Udp)
}

/// [`narrow_world`] with the client on `transport`; over FakeTCP, `path` bounds the whole
/// IP packet.
fn narrow_world_over(path: usize, transport: TransportMode) -> World {
    let mut w = World::new(90);
    let hs = w.secret();
    let mut hub = hub_config(hs, Some(passphrase()));
    hub.mtu = Some(1354);
    w.add(hub, sim::HUB_ADDR);
    let s = w.secret();
    let mut c = client_config(s, Some(passphrase()), "10.0.0.2/24");
    c.mtu = Some(1354);
    if let Role::Client(cc) = &mut c.role {
        cc.p2p = false;
        cc.transport = transport;
    }
    w.add(c, "198.18.1.2:40000");
    w.filter = Some(Box::new(move |d| d.bytes.len() <= path));
    assert!(w.run_until(Duration::from_secs(10), |w| w.joined(1)));
    w
}

fn packet(len: usize) -> Vec<u8> {
    packet_to("10.0.0.1", len)
}

fn packet_to(dst: &str, len: usize) -> Vec<u8> {
    let mut p = ip_packet("10.0.0.2", dst, &vec![7u8; len - 28]);
    p[6] = 0x40; // DF
    p
}

/// Client 1 sends 800 small packets to `dst`, one per 10 ms, and the probes beside them
/// look for the narrow path. Asserts that node `receiver` got them all; returns when (ms
/// into the traffic) and what client 1's status first gave as node `peer`'s path MTU below
/// the TUN's 1354.
fn small_traffic_finds_the_path(
    w: &mut World,
    dst: &str,
    receiver: usize,
    peer: u32,
) -> Option<(u32, u16)> {
    let before = w.nodes[receiver].delivered.len();
    let mut found = None;
    for i in 0..800 {
        let _ = w.tun(1, &packet_to(dst, 400));
        w.step(Duration::from_millis(10));
        let mtu = w.nodes[1]
            .ep
            .status(w.now)
            .peers
            .iter()
            .find(|p| p.node == peer)
            .and_then(|p| p.path_mtu)
            .filter(|m| *m < 1354);
        if let (None, Some(m)) = (found, mtu) {
            found = Some((i * 10, m));
        }
    }
    w.run(Duration::from_millis(100));
    assert_eq!(
        w.nodes[receiver].delivered.len() - before,
        800,
        "small packets lost"
    );
    found
}

#[test]
fn a_narrow_path_is_found_and_too_big_packets_get_frag_needed() {
    let mut w = narrow_world(1200);
    // Traffic that fits: it flows, and the probes beside it find the path's size.
    let found = small_traffic_finds_the_path(&mut w, "10.0.0.1", 0, 0);
    let (after_ms, mtu) = found.expect("the narrow path was never found");
    eprintln!("path MTU {mtu} found after {after_ms} ms");
    // 1200 bytes of UDP payload carry a packet of 1200 - 32 (data header and tag) - 18
    // (room for FEC parity) bytes; within one search step of that.
    assert!((1140..=1150).contains(&mtu), "{mtu}");
    assert!(after_ms < 4000);
    // A packet over it: not sent, answered with ICMP frag-needed from the hub's address.
    let sent = w.log.len();
    let _ = w.tun(1, &packet(1300));
    let icmp = w.nodes[1].delivered.last().cloned().expect("an ICMP error");
    assert_eq!(
        &icmp[12..16],
        &[10, 0, 0, 1],
        "from the far end of the path"
    );
    assert_eq!(&icmp[16..20], &[10, 0, 0, 2], "to the sender");
    assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 4));
    assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), mtu);
    assert!(
        !w.log[sent..].iter().any(|d| d.bytes.len() > 1200),
        "the too-big packet went out"
    );
    assert!(w.drops(1, "too_big") >= 1);
    // A packet that fits the discovered size goes through.
    let before = w.nodes[0].delivered.len();
    let _ = w.tun(1, &packet(usize::from(mtu)));
    w.run(Duration::from_millis(50));
    assert_eq!(w.nodes[0].delivered.len(), before + 1);
}

/// Twin of the FakeTCP case of e2e `gateway::a_path_that_narrows_to_1280_keeps_carrying_a_transfer_with_or_without_icmp`:
/// a FakeTCP path whose link carries IP packets of at most 1280 bytes, and no ICMP.
#[test]
fn a_narrow_faketcp_path_is_found_and_too_big_packets_get_frag_needed() {
    let mut w = narrow_world_over(1280, TransportMode::FakeTcp);
    let found = small_traffic_finds_the_path(&mut w, "10.0.0.1", 0, 0);
    let (after_ms, mtu) = found.expect("the narrow path was never found");
    eprintln!("FakeTCP path MTU {mtu} found after {after_ms} ms");
    // 1280 less IPv4 (20), TCP with timestamps (32), the record's length (2), the data
    // header and tag (32) and room for FEC parity (18): 1176, within one search step.
    assert!((1166..=1176).contains(&mtu), "{mtu}");
    assert!(after_ms < 4000);
    let _ = w.tun(1, &packet(1300));
    let icmp = w.nodes[1].delivered.last().cloned().expect("an ICMP error");
    assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 4));
    assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), mtu);
    let before = w.nodes[0].delivered.len();
    let _ = w.tun(1, &packet(usize::from(mtu)));
    w.run(Duration::from_millis(50));
    assert_eq!(w.nodes[0].delivered.len(), before + 1);
    assert!(
        w.log
            .iter()
            .all(|d| d.transport == culvert_core::Transport::FakeTcp)
    );
}

#[test]
fn a_path_that_carries_everything_costs_one_probe_per_half_second_of_traffic() {
    let mut w = narrow_world(65_535);
    let log = w.log.len();
    for _ in 0..200 {
        let _ = w.tun(1, &packet(400));
        w.step(Duration::from_millis(10));
    }
    let s = w.nodes[1].ep.status(w.now);
    assert_eq!(
        s.peers
            .iter()
            .find(|p| p.node == 0)
            .and_then(|p| p.path_mtu),
        Some(1354)
    );
    let big = w.log[log..]
        .iter()
        .filter(|d| d.from.port() == 40000 && d.bytes.len() > 1300)
        .count();
    assert!((3..=6).contains(&big), "{big} full-size probes in 2 s");
}

/// Two clients that reach each other only through the hub; the hub's link to client 2 is
/// the narrow one — a hop client 1 does not probe itself. End-to-end probes find it.
#[test]
fn a_relayed_peer_is_probed_end_to_end_through_the_relay() {
    let mut w = World::new(91);
    let hs = w.secret();
    let mut hub = hub_config(hs, Some(passphrase()));
    hub.mtu = Some(1354);
    w.add(hub, sim::HUB_ADDR);
    for i in 1..=2 {
        let s = w.secret();
        let mut c = client_config(s, Some(passphrase()), &format!("10.0.0.{}/24", i + 1));
        c.mtu = Some(1354);
        if let Role::Client(cc) = &mut c.role {
            cc.p2p = false;
        }
        w.add(c, &format!("198.18.{i}.2:40000"));
    }
    let narrow: std::net::SocketAddr = "198.18.2.2:40000".parse().unwrap();
    w.filter = Some(Box::new(move |d| d.to != narrow || d.bytes.len() <= 1200));
    assert!(w.run_until(Duration::from_secs(10), |w| w.mesh_known()));
    // The first packet opens the session with client 2 (through the hub).
    let _ = w.tun(1, &packet_to("10.0.0.3", 400));
    w.run(Duration::from_secs(1));
    let found = small_traffic_finds_the_path(&mut w, "10.0.0.3", 2, 2);
    let st = w.nodes[1].ep.status(w.now);
    assert!(st.peers.iter().any(|p| p.node == 2 && p.path == "relay"));
    let (after_ms, mtu) = found.expect("the relay's narrow hop was never found");
    eprintln!("relayed path MTU {mtu} found after {after_ms} ms");
    // 1200 bytes of UDP payload from the hub carry a relay frame: the inner message's data
    // header and tag, the relay header, the hop's data header and tag (32 + 10 + 32).
    assert!((1118..=1126).contains(&mtu), "{mtu}");
    // No RTT was known for the relayed path; a floor-sized probe measured it, so its lost
    // rounds wait 250 ms, not 1 s (3.7 s before).
    assert!(after_ms < 2000, "{after_ms}");
    // Too big for it: frag-needed from client 2's address, and nothing sent.
    let _ = w.tun(1, &packet_to("10.0.0.3", 1300));
    let icmp = w.nodes[1].delivered.last().cloned().expect("an ICMP error");
    assert_eq!(&icmp[12..16], &[10, 0, 0, 3], "from the far end");
    assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 4));
    assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), mtu);
    // At the discovered size, through.
    let before = w.nodes[2].delivered.len();
    let _ = w.tun(1, &packet_to("10.0.0.3", usize::from(mtu)));
    w.run(Duration::from_millis(50));
    assert_eq!(w.nodes[2].delivered.len(), before + 1);
}
