//! Direct paths between clients over NAT models, in virtual time: hole punching coordinated
//! by the hub, LAN paths, path switches under traffic, fallback to the relay.
//!
//! ```text
//!   hub 198.19.1.2:9000 (public)
//!   NAT A 203.0.113.1  <- client A 192.168.1.2:4000
//!   NAT B 198.51.100.1 <- client B 192.168.2.2:4000   (or behind NAT A too)
//! ```

mod sim;

use std::time::Duration;

use culvert_core::Role;
use sim::{Mapping, World, client_config, hub_config, ip_packet, passphrase};

const SECOND: Duration = Duration::from_secs(1);

/// A hub and two clients, A (node index 1) and B (2), behind NATs of the given kinds (or
/// behind one NAT without hairpinning when `same_lan`).
fn world(seed: u64, a: Mapping, b: Mapping, same_lan: bool, p2p: bool) -> World {
    let mut w = World::new(seed);
    let hs = w.secret();
    w.add(hub_config(hs, Some(passphrase())), sim::HUB_ADDR);
    let (a_ip, b_ip) = if same_lan {
        ("192.168.1.2", "192.168.1.3")
    } else {
        ("192.168.1.2", "192.168.2.2")
    };
    if same_lan {
        w.add_nat("203.0.113.1", a, false, &[a_ip, b_ip]);
    } else {
        w.add_nat("203.0.113.1", a, false, &[a_ip]);
        w.add_nat("198.51.100.1", b, false, &[b_ip]);
    }
    for (i, ip) in [a_ip, b_ip].iter().enumerate() {
        let s = w.secret();
        let mut c = client_config(s, Some(passphrase()), &format!("10.0.0.{}/24", i + 2));
        if let Role::Client(cc) = &mut c.role {
            cc.p2p = p2p;
        }
        w.add(c, &format!("{ip}:4000"));
    }
    assert!(
        w.run_until(10 * SECOND, |w| w.joined(1)
            && w.joined(2)
            && w.mesh_known()),
        "clients did not join"
    );
    w
}

fn peer_path(w: &World, node: usize, peer: u32) -> (String, Option<String>) {
    let s = w.nodes[node].ep.status(w.now);
    let p = s.peers.iter().find(|p| p.node == peer).unwrap();
    (p.path.to_owned(), p.path_reason.map(str::to_owned))
}

/// Streams `count` packets A -> B, one per millisecond; returns how many arrived.
fn stream(w: &mut World, count: usize) -> usize {
    let before = w.nodes[2].delivered.len();
    for i in 0..count {
        let _ = w.tun(
            1,
            &ip_packet("10.0.0.2", "10.0.0.3", format!("p{i}").as_bytes()),
        );
        w.step(Duration::from_millis(1));
    }
    w.run(SECOND);
    w.nodes[2].delivered.len() - before
}

fn relayed(w: &World) -> u64 {
    w.nodes[0].ep.status(w.now).relayed.tx_packets
}

#[test]
fn port_preserving_nats_go_direct_within_3s_and_the_hub_relays_nothing_after() {
    let mut w = world(
        40,
        Mapping::EndpointIndependent,
        Mapping::EndpointIndependent,
        false,
        true,
    );
    let start = w.now;
    let _ = w.tun(1, &ip_packet("10.0.0.2", "10.0.0.3", b"first"));
    let direct = w.run_until(3 * SECOND, |w| {
        peer_path(w, 1, 2).0 == "direct" && peer_path(w, 2, 1).0 == "direct"
    });
    assert!(
        direct,
        "no direct path: {:?} / {:?}",
        peer_path(&w, 1, 2),
        peer_path(&w, 2, 1)
    );
    eprintln!("direct after {:?}", w.now - start);
    let hub_before = relayed(&w);
    assert_eq!(stream(&mut w, 1000), 1000);
    assert_eq!(
        relayed(&w),
        hub_before,
        "the hub still relayed client traffic"
    );
    let s = w.nodes[1].ep.status(w.now);
    let p = s.peers.iter().find(|p| p.node == 2).unwrap();
    assert!(
        p.endpoint.as_deref().unwrap().starts_with("198.51.100.1:"),
        "{:?}",
        p.endpoint
    );
    assert!(p.path_rtt_ms.is_some());
    assert_eq!(
        s.reflexive.as_deref(),
        Some("203.0.113.1:4000"),
        "the hub saw our NAT"
    );
}

#[test]
fn two_clients_behind_one_nat_without_hairpin_use_their_lan() {
    let mut w = world(
        41,
        Mapping::EndpointIndependent,
        Mapping::EndpointIndependent,
        true,
        true,
    );
    let _ = w.tun(1, &ip_packet("10.0.0.2", "10.0.0.3", b"first"));
    assert!(
        w.run_until(3 * SECOND, |w| peer_path(w, 1, 2).0 == "lan"),
        "{:?}",
        peer_path(&w, 1, 2)
    );
    let hub_before = relayed(&w);
    assert_eq!(stream(&mut w, 500), 500);
    assert_eq!(relayed(&w), hub_before);
    let s = w.nodes[1].ep.status(w.now);
    let p = s.peers.iter().find(|p| p.node == 2).unwrap();
    assert_eq!(p.endpoint.as_deref(), Some("192.168.1.3:4000"));
}

#[test]
fn symmetric_nats_on_both_sides_stay_relayed_and_say_why() {
    let mut w = world(42, Mapping::Symmetric, Mapping::Symmetric, false, true);
    let _ = w.tun(1, &ip_packet("10.0.0.2", "10.0.0.3", b"first"));
    w.run(5 * SECOND);
    let (path, why) = peer_path(&w, 1, 2);
    assert_eq!(path, "relay");
    let why = why.unwrap();
    assert!(why.contains("symmetric NAT on both sides"), "{why}");
    assert_eq!(
        stream(&mut w, 500),
        500,
        "the relay carries everything meanwhile"
    );
    // Backed off: no new punch during the next second of traffic.
    let probes_before = w.log.len();
    let _ = stream(&mut w, 200);
    assert!(w.log.len() > probes_before);
}

#[test]
fn cone_against_symmetric_goes_direct_by_port_prediction_about_two_times_in_three() {
    let tries = 24u64;
    let mut direct = 0;
    for seed in 0..tries {
        let mut w = world(
            100 + seed,
            Mapping::EndpointIndependent,
            Mapping::Random,
            false,
            true,
        );
        let log_from = w.log.len();
        let start = w.now;
        let _ = w.tun(1, &ip_packet("10.0.0.2", "10.0.0.3", b"first"));
        let ok = w.run_until(4 * SECOND, |w| {
            peer_path(w, 1, 2).0 == "direct" && peer_path(w, 2, 1).0 == "direct"
        });
        // Bounded: at most 256 prediction probes per side in this one attempt, and the
        // hard side (B) sends them from its extra sockets.
        let sent_by = |ip: &str, extra: bool| {
            w.log[log_from..]
                .iter()
                .filter(|d| {
                    let main = w.nodes[if ip == "a" { 1 } else { 2 }].addr;
                    let nat = if ip == "a" {
                        "203.0.113.1"
                    } else {
                        "198.51.100.1"
                    };
                    d.from.ip() == sim::ip(nat)
                        && (d.to.port() != main.port() || !extra)
                        && d.to.ip() != sim::ip("198.19.1.2")
                })
                .count()
        };
        let (a, b) = (sent_by("a", false), sent_by("b", false));
        if ok {
            direct += 1;
            eprintln!("seed {seed}: direct after {:?}", w.now - start);
            assert_eq!(stream(&mut w, 300), 300);
            let s = w.nodes[2].ep.status(w.now);
            let p = s.peers.iter().find(|p| p.node == 1).unwrap();
            assert!(p.endpoint.as_deref().unwrap().starts_with("203.0.113.1:"));
        } else {
            let (path, why) = peer_path(&w, 1, 2);
            assert_eq!(path, "relay");
            let why = why.unwrap();
            assert!(why.contains("port prediction found no match"), "{why}");
            assert_eq!(stream(&mut w, 300), 300, "the relay carries it meanwhile");
            // A failed attempt, then backoff: 256 guesses (A) and 256 sprays (B) at most,
            // plus the ordinary punch probes (≤ 31 per candidate).
            assert!(a <= 256 + 2 * 31 + 40, "A sent {a}");
            assert!(b <= 256 + 2 * 31 + 40, "B sent {b}");
        }
    }
    eprintln!("{direct}/{tries} direct");
    // 1 - (1 - 256/64512)^256 ≈ 0.64; fewer than 8 of 24 is a broken technique, not luck
    // (p < 0.001).
    assert!(direct >= 8, "only {direct}/{tries} went direct");
}

#[test]
fn a_stream_that_starts_relayed_moves_direct_without_loss() {
    let mut w = world(
        44,
        Mapping::EndpointIndependent,
        Mapping::EndpointIndependent,
        false,
        true,
    );
    // The first packet opens the end-to-end session; the stream starts on the relay.
    let _ = w.tun(1, &ip_packet("10.0.0.2", "10.0.0.3", b"first"));
    w.run(Duration::from_millis(50));
    assert_eq!(peer_path(&w, 1, 2).0, "relay");
    let got = stream(&mut w, 3000);
    assert_eq!(got, 3000, "packets lost across the switch");
    assert_eq!(peer_path(&w, 1, 2).0, "direct");
    let mut seen = std::collections::BTreeSet::new();
    for p in &w.nodes[2].delivered {
        assert!(seen.insert(p.clone()), "a packet was delivered twice");
    }
}

#[test]
fn a_dead_direct_path_falls_back_to_the_relay_within_2s() {
    let mut w = world(
        45,
        Mapping::EndpointIndependent,
        Mapping::EndpointIndependent,
        false,
        true,
    );
    let _ = w.tun(1, &ip_packet("10.0.0.2", "10.0.0.3", b"first"));
    assert!(w.run_until(3 * SECOND, |w| peer_path(w, 1, 2).0 == "direct"));
    // The direct path dies (only traffic with the hub passes).
    let hub: std::net::SocketAddr = sim::HUB_ADDR.parse().unwrap();
    w.filter = Some(Box::new(move |d| d.to == hub || d.from == hub));
    let cut = w.now;
    let mut back = None;
    let before = w.nodes[2].delivered.len();
    for i in 0..4000 {
        let _ = w.tun(
            1,
            &ip_packet("10.0.0.2", "10.0.0.3", format!("q{i}").as_bytes()),
        );
        w.step(Duration::from_millis(1));
        if back.is_none() && peer_path(&w, 1, 2).0 == "relay" {
            back = Some(w.now - cut);
        }
    }
    let took = back.expect("never fell back");
    assert!(
        took <= 2 * SECOND + Duration::from_millis(100),
        "fallback took {took:?}"
    );
    let s = w.nodes[1].ep.status(w.now);
    let switch = s
        .peers
        .iter()
        .find(|p| p.node == 2)
        .unwrap()
        .last_switch
        .clone();
    assert!(switch.unwrap().contains("silent"), "the log says why");
    let delivered = w.nodes[2].delivered.len() - before;
    assert!(
        delivered > 1500,
        "only {delivered} of 4000 arrived after the fallback"
    );
}

#[test]
fn p2p_off_stays_relayed_and_says_so() {
    let mut w = world(
        46,
        Mapping::EndpointIndependent,
        Mapping::EndpointIndependent,
        false,
        false,
    );
    assert_eq!(stream(&mut w, 200), 200);
    let (path, why) = peer_path(&w, 1, 2);
    assert_eq!(path, "relay");
    assert_eq!(why.as_deref(), Some("p2p disabled by config"));
}

/// Hardening finding 10: a member publishes LAN candidates of its choosing — hosts on the
/// victim's own LAN and public addresses of a third party — and asks the hub for a punch
/// towards the victim every second for two minutes. The victim probes them no more often
/// than its own backoff allows, public "LAN" addresses not at all, and never beyond its
/// probe budget.
#[test]
fn a_member_cannot_make_others_probe_addresses_of_its_choosing() {
    let mut w = World::hub_and_clients(80, 2);
    let (victim, member) = (1, 2);
    assert!(w.run_until(10 * SECOND, |w| w.joined(1)
        && w.joined(2)
        && w.mesh_known()));
    let victim_node = w.nodes[victim].ep.status(w.now).node.unwrap();
    // The member has a session with the victim (relayed: no direct path between them).
    let (va, ma) = (w.nodes[victim].addr, w.nodes[member].addr);
    w.filter = Some(Box::new(move |d| {
        !((d.from == va && d.to == ma) || (d.from == ma && d.to == va))
    }));
    let _ = w.tun(member, &ip_packet("10.0.0.3", "10.0.0.2", b"hello"));
    w.run(5 * SECOND);
    let targets: Vec<std::net::SocketAddr> = (1..=8)
        .map(|i| format!("192.168.77.{i}:80").parse().unwrap())
        .chain((1..=8).map(|i| format!("203.0.113.{i}:53").parse().unwrap()))
        .collect();
    let mut candidates = Vec::new();
    culvert_wire::frame::Frame::Candidates(targets.clone()).emit(&mut candidates);
    let mut punch = Vec::new();
    culvert_wire::frame::Frame::PunchRequest { node: victim_node }.emit(&mut punch);
    let from = w.now;
    for _ in 0..120 {
        let now = w.now;
        w.nodes[member].ep.forge_plain(now, 0, &candidates);
        w.nodes[member].ep.forge_plain(now, 0, &punch);
        w.drain(member);
        w.run(SECOND);
    }
    let victim_addr = w.nodes[victim].addr;
    let probes = |private: bool| {
        w.log
            .iter()
            .filter(|d| d.at >= from && d.from.ip() == victim_addr.ip())
            .filter(|d| {
                targets
                    .iter()
                    .any(|t| *t == d.to && (t.ip().to_string().starts_with("192.") == private))
            })
            .count()
    };
    let (lan, public) = (probes(true), probes(false));
    eprintln!(
        "in 120 s the victim probed the member's LAN candidates {lan} times, public ones {public}"
    );
    assert_eq!(public, 0, "public addresses passed as LAN candidates");
    // A punch lasts 3 s (30 rounds of 8 candidates); after each failure the victim waits
    // 2, 4, 8, 16, 32, 64 s: at most 6 punches in 120 s.
    assert!(lan <= 6 * 30 * 8, "{lan} probes");
}

/// First contact, item 5: with subnet routes, a peer's probe can arrive through the tunnel
/// itself (its source an overlay address, or inside a routed subnet), and a candidate
/// inside a routed subnet is reached only through the tunnel. Neither is ever a path.
#[test]
fn a_path_through_the_tunnel_itself_is_never_taken() {
    let mut w = World::new(81);
    let hs = w.secret();
    let mut hub = hub_config(hs, Some(passphrase()));
    if let Role::Hub(h) = &mut hub.role {
        h.allow_routes = vec![sim::prefix("192.168.0.0/16")];
    }
    w.add(hub, sim::HUB_ADDR);
    let sa = w.secret();
    let mut a = client_config(sa, Some(passphrase()), "10.0.0.2/24");
    a.routes = vec![sim::prefix("192.168.50.0/24")];
    let a_i = w.add(a, "198.18.1.2:4000");
    let sb = w.secret();
    let b_i = w.add(
        client_config(sb, Some(passphrase()), "10.0.0.3/24"),
        "198.18.2.2:4000",
    );
    let (a_addr, b_addr) = (w.nodes[a_i].addr, w.nodes[b_i].addr);
    // A's LAN behind it is one of its candidates; no direct path between them.
    let now = w.now;
    w.nodes[a_i]
        .ep
        .set_local_addresses(now, vec![a_addr, "192.168.50.1:4000".parse().unwrap()]);
    w.filter = Some(Box::new(move |d| {
        !((d.from == a_addr && d.to == b_addr) || (d.from == b_addr && d.to == a_addr))
    }));
    assert!(w.run_until(10 * SECOND, |w| w.joined(a_i)
        && w.joined(b_i)
        && w.mesh_known()));
    for i in 0..30 {
        let _ = w.tun(
            a_i,
            &ip_packet("10.0.0.2", "10.0.0.3", format!("p{i}").as_bytes()),
        );
        let _ = w.tun(
            b_i,
            &ip_packet("10.0.0.3", "10.0.0.2", format!("q{i}").as_bytes()),
        );
        w.step(Duration::from_millis(100));
    }
    let lan: std::net::SocketAddr = "192.168.50.1:4000".parse().unwrap();
    assert!(
        !w.log
            .iter()
            .any(|d| d.from.ip() == b_addr.ip() && d.to == lan),
        "B probed A's LAN candidate, inside the subnet routed to A"
    );
    // A probe of A's, arriving as if through the tunnel (from A's overlay address).
    let probe = w
        .log
        .iter()
        .rev()
        .find(|d| d.from == a_addr && d.to == b_addr)
        .expect("A probed B")
        .bytes
        .clone();
    w.inject("10.0.0.2:59086".parse().unwrap(), b_addr, probe);
    w.run(SECOND);
    let st = w.nodes[b_i].ep.status(w.now);
    let a_seen = st
        .peers
        .iter()
        .find(|p| p.addresses.contains(&"10.0.0.2/24".to_owned()))
        .unwrap();
    assert_eq!(a_seen.path, "relay", "{:?}", a_seen.endpoint);
}
