//! Protocol scenarios: a hub and clients over the simulated network, in virtual time.

mod sim;

use std::time::Duration;

use culvert_core::{ClientBinding, DropReason, Event, Psk, Role, TunOutcome};
use culvert_wire::message::MessageType;
use sim::{World, client_config, hub_config, ip_packet, passphrase, prefix};

const SECOND: Duration = Duration::from_secs(1);

fn join_all(w: &mut World) {
    let n = w.nodes.len();
    assert!(
        w.run_until(10 * SECOND, |w| (1..n).all(|i| w.joined(i))),
        "clients did not join"
    );
    assert!(
        w.run_until(5 * SECOND, World::mesh_known),
        "directory did not spread"
    );
}

/// Sends `count` packets from node `a` to overlay `dst` and returns how many arrived at `b`.
fn transfer(w: &mut World, a: usize, b: usize, count: usize) -> usize {
    let before = w.nodes[b].delivered.len();
    let src = World::overlay(a);
    let dst = World::overlay(b);
    for i in 0..count {
        let pkt = ip_packet(&src, &dst, format!("packet {i}").as_bytes());
        let _ = w.tun(a, &pkt);
        w.step(Duration::from_millis(1));
    }
    w.run(SECOND);
    w.nodes[b].delivered.len() - before
}

#[test]
fn clients_join_and_reach_the_hub_and_each_other() {
    let mut w = World::hub_and_clients(1, 3);
    join_all(&mut w);
    assert_eq!(transfer(&mut w, 1, 0, 10), 10, "client -> hub");
    assert_eq!(transfer(&mut w, 0, 1, 10), 10, "hub -> client");
    // Client to client: end to end through the hub's relay.
    let hub_before = w.nodes[0].delivered.len();
    let secret = b"only-for-client-3";
    let pkt = ip_packet("10.0.0.2", "10.0.0.4", secret);
    let _ = w.tun(1, &pkt);
    w.run(2 * SECOND);
    assert_eq!(w.nodes[3].delivered.last().unwrap(), &pkt);
    assert_eq!(
        w.nodes[0].delivered.len(),
        hub_before,
        "the hub must not deliver relayed traffic"
    );
    assert!(
        !w.log
            .iter()
            .any(|d| d.bytes.windows(secret.len()).any(|x| x == secret)),
        "plaintext crossed the network"
    );
    assert_eq!(transfer(&mut w, 2, 3, 50), 50, "client -> client");
    assert_eq!(transfer(&mut w, 3, 2, 50), 50, "and back");
    let s = w.nodes[1].ep.status(w.now);
    let peer3 = s.peers.iter().find(|p| p.node == 3).unwrap();
    // Public addresses on both sides: the hub coordinated a direct path.
    assert_eq!(peer3.path, "direct");
    assert_eq!(peer3.state, "up");
    // No handshake reply is larger than the message it answers.
    let inits: Vec<usize> = w
        .log
        .iter()
        .filter(|d| MessageType::of(&d.bytes) == Ok(MessageType::HandshakeInit))
        .map(|d| d.bytes.len())
        .collect();
    let shortest_init = inits.iter().min().copied().unwrap();
    for d in w
        .log
        .iter()
        .filter(|d| MessageType::of(&d.bytes) == Ok(MessageType::HandshakeResponse))
    {
        assert!(
            d.bytes.len() <= shortest_init,
            "{} byte reply to a {shortest_init} byte init",
            d.bytes.len()
        );
    }
}

#[test]
fn ipv6_inside_the_tunnel() {
    let mut w = World::new(2);
    let hs = w.secret();
    let mut hub = hub_config(hs, Some(passphrase()));
    hub.addresses.push(prefix("fd00::1/64"));
    w.add(hub, sim::HUB_ADDR);
    let cs = w.secret();
    let mut c = client_config(cs, Some(passphrase()), "10.0.0.2/24");
    c.addresses.push(prefix("fd00::2/64"));
    w.add(c, "198.18.1.2:4000");
    join_all(&mut w);
    let mut v6 = vec![0u8; 48];
    v6[0] = 0x60;
    v6[5] = 8;
    v6[6] = 17;
    v6[8..24].copy_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v6[24..40].copy_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    assert!(matches!(w.tun(1, &v6), TunOutcome::Send(_)));
    w.run(SECOND);
    assert_eq!(w.nodes[0].delivered.last().unwrap(), &v6);
}

#[test]
fn wrong_passphrase_gets_no_session_and_others_are_unaffected() {
    let mut w = World::hub_and_clients(3, 1);
    let s = w.secret();
    let bad = w.add(
        client_config(s, Some(Psk::from_bytes([7; 32])), "10.0.0.9/24"),
        "198.18.9.2:4000",
    );
    w.run(10 * SECOND);
    assert!(w.joined(1));
    assert!(!w.joined(bad));
    assert!(w.drops(0, DropReason::HandshakeAuth.as_str()) > 0);
    assert_eq!(transfer(&mut w, 1, 0, 5), 5);
    assert!(matches!(
        w.tun(bad, &ip_packet("10.0.0.9", "10.0.0.1", b"x")),
        TunOutcome::Dropped(_)
    ));
}

#[test]
fn key_mode_binds_addresses_to_keys() {
    let mut w = World::new(4);
    let hub_secret = w.secret();
    let hub_key = hub_secret.public_key();
    let good = w.secret();
    let stranger = w.secret();
    let mut hub = hub_config(hub_secret, None);
    if let Role::Hub(h) = &mut hub.role {
        h.clients = vec![ClientBinding {
            key: good.public_key(),
            addresses: vec![prefix("10.0.0.2/24")],
            routes: Vec::new(),
        }];
    }
    w.add(hub, sim::HUB_ADDR);
    let mut cfg = client_config(good, None, "");
    if let Role::Client(c) = &mut cfg.role {
        c.server_key = Some(hub_key);
    }
    let c = w.add(cfg, "198.18.1.2:4000");
    let mut cfg = client_config(stranger, None, "10.0.0.3/24");
    if let Role::Client(c) = &mut cfg.role {
        c.server_key = Some(hub_key);
    }
    let s = w.add(cfg, "198.18.2.2:4000");
    assert!(w.run_until(5 * SECOND, |w| w.joined(c)));
    // Without -t the client gets the addresses bound to its key.
    assert!(w.nodes[c].events.iter().any(
        |e| matches!(e, Event::Joined { granted, .. } if granted == &vec![prefix("10.0.0.2/24")])
    ));
    w.run(5 * SECOND);
    assert!(!w.joined(s));
    assert_eq!(w.nodes[0].ep.status(w.now).peers.len(), 1);
    // The stranger is told why, in an authenticated refusal (message 2), not a notice.
    let stranger_addr: std::net::SocketAddr = "198.18.2.2:4000".parse().unwrap();
    assert!(w.log.iter().any(|d| d.to == stranger_addr
        && MessageType::of(&d.bytes) == Ok(MessageType::HandshakeResponse)));
    assert_eq!(transfer(&mut w, c, 0, 3), 3);
}

#[test]
fn key_mode_client_refuses_an_impostor_server() {
    let mut w = World::new(5);
    let real = w.secret().public_key();
    let hs = w.secret();
    w.add(hub_config(hs, Some(passphrase())), sim::HUB_ADDR);
    let cs = w.secret();
    let mut cfg = client_config(cs, Some(passphrase()), "10.0.0.2/24");
    if let Role::Client(c) = &mut cfg.role {
        c.server_key = Some(real);
    }
    let c = w.add(cfg, "198.18.1.2:4000");
    w.run(5 * SECOND);
    assert!(!w.joined(c));
    assert!(w.drops(c, DropReason::UnknownKey.as_str()) > 0);
}

#[test]
fn replayed_data_is_dropped_and_counted() {
    let mut w = World::hub_and_clients(6, 1);
    join_all(&mut w);
    let sent_before = w.log.len();
    assert_eq!(transfer(&mut w, 1, 0, 5), 5);
    let captured: Vec<_> = w.log[sent_before..]
        .iter()
        .filter(|d| {
            d.to.to_string() == sim::HUB_ADDR && MessageType::of(&d.bytes) == Ok(MessageType::Data)
        })
        .cloned()
        .collect();
    assert!(captured.len() >= 5);
    let delivered = w.nodes[0].delivered.len();
    for d in &captured {
        w.inject(d.from, d.to, d.bytes.clone());
    }
    w.run(SECOND);
    assert_eq!(
        w.nodes[0].delivered.len(),
        delivered,
        "a replay was delivered"
    );
    assert!(w.drops(0, "replay") >= captured.len() as u64);
}

#[test]
fn survives_loss_reordering_and_duplication() {
    let mut w = World::hub_and_clients(7, 2);
    w.loss = 0.2;
    w.reorder = 0.1;
    w.duplicate = 0.1;
    assert!(
        w.run_until(60 * SECOND, |w| w.joined(1) && w.joined(2)),
        "no join under loss"
    );
    assert!(w.run_until(60 * SECOND, World::mesh_known));
    // Open the end-to-end session first; then about 0.8 * 0.8 of the packets must arrive.
    let up = |w: &World| {
        w.nodes[1]
            .ep
            .status(w.now)
            .peers
            .iter()
            .any(|p| p.node == 2 && p.state == "up")
    };
    for _ in 0..60 {
        if up(&w) {
            break;
        }
        let _ = w.tun(1, &ip_packet("10.0.0.2", "10.0.0.3", b"prime"));
        w.run(SECOND / 2);
    }
    assert!(up(&w), "no end-to-end session under loss");
    let got = transfer(&mut w, 1, 2, 500);
    // Some packets are lost for good (20% per hop, two hops, plus those queued while the
    // end-to-end handshake ran); none may be delivered twice.
    assert!(got > 250, "only {got} of 500 arrived");
    let mut seen = std::collections::BTreeSet::new();
    for p in w.nodes[2]
        .delivered
        .iter()
        .filter(|p| !p.ends_with(b"prime"))
    {
        assert!(seen.insert(p.clone()), "duplicate delivered");
    }
}

#[test]
fn rekey_under_traffic_loses_nothing() {
    let mut w = World::new(8);
    let hs = w.secret();
    let mut hub = hub_config(hs, Some(passphrase()));
    hub.timing.rekey_after_time = Duration::from_secs(3);
    hub.timing.reject_after_time = Duration::from_secs(6);
    w.add(hub, sim::HUB_ADDR);
    for i in 0..2 {
        let s = w.secret();
        let mut c = client_config(s, Some(passphrase()), &format!("10.0.0.{}/24", i + 2));
        c.timing.rekey_after_time = Duration::from_secs(3);
        c.timing.reject_after_time = Duration::from_secs(6);
        c.timing.rekey_after_messages = 700;
        w.add(c, &format!("198.18.{}.2:4000", i + 1));
    }
    join_all(&mut w);
    // Prime the client-to-client session so nothing waits for a first handshake.
    assert_eq!(transfer(&mut w, 1, 2, 1), 1);
    let handshakes = |w: &World| {
        w.log
            .iter()
            .filter(|d| MessageType::of(&d.bytes) == Ok(MessageType::HandshakeInit))
            .count()
    };
    let before = handshakes(&w);
    let (a, b) = (transfer(&mut w, 1, 0, 4000), transfer(&mut w, 1, 2, 4000));
    assert_eq!((a, b), (4000, 4000), "packets lost across rekeys");
    assert!(
        handshakes(&w) >= before + 4,
        "expected several rekeys, saw {}",
        handshakes(&w) - before
    );
}

#[test]
fn hub_refuses_conflicts_and_enforces_max_clients() {
    let mut w = World::new(9);
    let hs = w.secret();
    let mut hub = hub_config(hs, Some(passphrase()));
    if let Role::Hub(h) = &mut hub.role {
        h.max_clients = 2;
    }
    w.add(hub, sim::HUB_ADDR);
    let s = w.secret();
    let a = w.add(
        client_config(s, Some(passphrase()), "10.0.0.2/24"),
        "198.18.1.2:4000",
    );
    let s = w.secret();
    let dup = w.add(
        client_config(s, Some(passphrase()), "10.0.0.2/24"),
        "198.18.2.2:4000",
    );
    let s = w.secret();
    let own = w.add(
        client_config(s, Some(passphrase()), "10.0.0.1/24"),
        "198.18.3.2:4000",
    );
    let s = w.secret();
    let b = w.add(
        client_config(s, Some(passphrase()), "10.0.0.3/24"),
        "198.18.4.2:4000",
    );
    let s = w.secret();
    let full = w.add(
        client_config(s, Some(passphrase()), "10.0.0.4/24"),
        "198.18.5.2:4000",
    );
    w.run(5 * SECOND);
    assert!(w.joined(a) && w.joined(b));
    assert!(!w.joined(dup) && !w.joined(own) && !w.joined(full));
    assert_eq!(
        w.nodes[0]
            .ep
            .status(w.now)
            .peers
            .iter()
            .filter(|p| p.state == "up")
            .count(),
        2
    );
}

#[test]
fn same_identity_reconnecting_replaces_its_session() {
    let mut w = World::new(10);
    let hs = w.secret();
    w.add(hub_config(hs, Some(passphrase())), sim::HUB_ADDR);
    let secret = w.secret();
    let c = w.add(
        client_config(secret.clone(), Some(passphrase()), "10.0.0.2/24"),
        "198.18.1.2:4000",
    );
    assert!(w.run_until(5 * SECOND, |w| w.joined(c)));
    // The client restarts (same key, new port) while its old session is still alive.
    w.set_addr(c, "198.18.1.2:4001");
    w.restart(c, client_config(secret, Some(passphrase()), "10.0.0.2/24"));
    assert!(w.run_until(5 * SECOND, |w| w.joined(c)));
    assert_eq!(transfer(&mut w, c, 0, 3), 3);
    assert_eq!(transfer(&mut w, 0, c, 3), 3);
    let hub = w.nodes[0].ep.status(w.now);
    assert_eq!(hub.peers.len(), 1);
    assert_eq!(hub.peers[0].endpoint.as_deref(), Some("198.18.1.2:4001"));
}

#[test]
fn client_isolation() {
    let mut w = World::new(11);
    let hs = w.secret();
    let mut hub = hub_config(hs, Some(passphrase()));
    if let Role::Hub(h) = &mut hub.role {
        h.isolation = true;
    }
    w.add(hub, sim::HUB_ADDR);
    for i in 0..2 {
        let s = w.secret();
        w.add(
            client_config(s, Some(passphrase()), &format!("10.0.0.{}/24", i + 2)),
            &format!("198.18.{}.2:4000", i + 1),
        );
    }
    assert!(w.run_until(5 * SECOND, |w| w.joined(1) && w.joined(2)));
    w.run(2 * SECOND);
    assert_eq!(transfer(&mut w, 1, 0, 3), 3);
    assert_eq!(transfer(&mut w, 1, 2, 3), 0);
    assert!(matches!(
        w.tun(1, &ip_packet("10.0.0.2", "10.0.0.3", b"x")),
        TunOutcome::Dropped(DropReason::NoRoute)
    ));
}

/// Waits until the hub has `n` clients up and every client is joined; returns the time.
fn recover(w: &mut World, n: usize, traffic: bool) -> Duration {
    let start = w.now;
    let hub_sees_all = |w: &World| {
        w.nodes[0]
            .ep
            .status(w.now)
            .peers
            .iter()
            .filter(|p| p.state == "up")
            .count()
            == n
    };
    while w.now - start < 20 * SECOND && !((1..=n).all(|i| w.joined(i)) && hub_sees_all(w)) {
        if traffic {
            for i in 1..=n {
                let _ = w.tun(i, &ip_packet(&World::overlay(i), "10.0.0.1", b"ping"));
            }
        }
        w.run(SECOND / 10);
    }
    assert!(hub_sees_all(w), "clients did not recover");
    w.now - start
}

#[test]
fn clients_recover_after_a_hub_crash_and_restart() {
    let mut w = World::hub_and_clients(12, 2);
    let hub_secret = w.hub_secret.clone().unwrap();
    join_all(&mut w);
    // The hub comes back with its identity (kept in its state directory) and no sessions.
    w.restart(0, hub_config(hub_secret.clone(), Some(passphrase())));
    // It says nothing to traffic it does not know; a client whose traffic goes unanswered
    // for 1.5 s starts a new handshake beside its session.
    let took = recover(&mut w, 2, true);
    assert!(took < 3 * SECOND, "{took:?}");
    assert!(w.run_until(5 * SECOND, World::mesh_known));
    assert_eq!(transfer(&mut w, 1, 2, 10), 10);
    // Without traffic, the next keepalive finds out.
    w.restart(0, hub_config(hub_secret, Some(passphrase())));
    assert!(recover(&mut w, 2, false) < 10 * SECOND);
}

#[test]
fn a_hub_with_another_key_is_refused_after_the_first_contact() {
    let mut w = World::hub_and_clients(18, 1);
    join_all(&mut w);
    let pinned = w.nodes[1]
        .events
        .iter()
        .find_map(|e| match e {
            Event::ServerKeyPinned { key } => Some(*key),
            _ => None,
        })
        .expect("the first Welcome pins the hub");
    assert_eq!(pinned, w.nodes[0].ep.public_key());
    // Someone else with the passphrase answers at the hub's address now.
    let impostor = w.secret();
    w.restart(0, hub_config(impostor, Some(passphrase())));
    // Past `dead_after`, the old session is gone too; no new one may have come from it.
    w.run(40 * SECOND);
    assert!(!w.joined(1), "the client accepted an impostor");
    assert!(matches!(
        w.tun(1, &ip_packet("10.0.0.2", "10.0.0.1", b"secret")),
        TunOutcome::Dropped(_) | TunOutcome::Queued
    ));
    assert!(w.nodes[1].events.iter().any(|e| matches!(
        e,
        Event::ServerKeyMismatch { pinned: p, .. } if *p == pinned
    )));
    assert!(w.drops(1, DropReason::UnknownKey.as_str()) > 0);
    assert_eq!(
        w.nodes[0].ep.status(w.now).peers.len(),
        0,
        "nothing confirmed"
    );
}

#[test]
fn clients_recover_after_a_graceful_hub_restart() {
    let mut w = World::hub_and_clients(17, 2);
    join_all(&mut w);
    let now = w.now;
    w.nodes[0].ep.shutdown(now);
    while let Some(t) = w.nodes[0].ep.poll_transmit() {
        w.send(sim::HUB_ADDR.parse().unwrap(), t.to, t.bytes);
    }
    // The old process is gone: nothing reaches the hub's address until the restart.
    let hub: std::net::SocketAddr = sim::HUB_ADDR.parse().unwrap();
    w.filter = Some(Box::new(move |d| d.to != hub));
    w.run(SECOND / 2);
    w.filter = None;
    let hub_secret = w.hub_secret.clone().unwrap();
    w.restart(0, hub_config(hub_secret, Some(passphrase())));
    assert!(recover(&mut w, 2, false) < 3 * SECOND);
    assert!(w.run_until(5 * SECOND, World::mesh_known));
    assert_eq!(transfer(&mut w, 2, 1, 10), 10);
}

#[test]
fn hub_follows_a_roaming_client() {
    let mut w = World::hub_and_clients(13, 1);
    join_all(&mut w);
    w.set_addr(1, "203.0.113.7:5555");
    assert_eq!(transfer(&mut w, 1, 0, 3), 3);
    assert_eq!(
        transfer(&mut w, 0, 1, 3),
        3,
        "the hub did not follow the new address"
    );
}

#[test]
fn silent_hub_makes_the_client_rebind_and_reconnect() {
    let mut w = World::hub_and_clients(14, 1);
    join_all(&mut w);
    w.filter = Some(Box::new(|_| false));
    w.run(40 * SECOND);
    assert!(w.nodes[1].events.contains(&Event::Rebind));
    w.filter = None;
    assert!(w.run_until(40 * SECOND, |w| w.joined(1)));
    assert_eq!(transfer(&mut w, 1, 0, 3), 3);
}

#[test]
fn cookies_under_load_still_admit_real_clients() {
    let mut w = World::new(15);
    let hs = w.secret();
    let mut hub = hub_config(hs, Some(passphrase()));
    if let Role::Hub(h) = &mut hub.role {
        h.handshake_load_limit = 0;
    }
    w.add(hub, sim::HUB_ADDR);
    let s = w.secret();
    let c = w.add(
        client_config(s, Some(passphrase()), "10.0.0.2/24"),
        "198.18.1.2:4000",
    );
    assert!(w.run_until(5 * SECOND, |w| w.joined(c)));
    assert!(w.drops(0, "cookie_required") >= 1);
    let cookie_replies = w
        .log
        .iter()
        .filter(|d| MessageType::of(&d.bytes) == Ok(MessageType::CookieReply));
    for r in cookie_replies {
        assert!(r.bytes.len() < 100, "cookie reply larger than the request");
    }
}

#[test]
fn garbage_is_counted_and_never_panics() {
    let mut w = World::hub_and_clients(16, 1);
    join_all(&mut w);
    let attacker: std::net::SocketAddr = "192.0.2.66:6666".parse().unwrap();
    let hub: std::net::SocketAddr = sim::HUB_ADDR.parse().unwrap();
    for i in 0..2000u32 {
        let len = (i as usize * 7919) % 1500;
        let mut bytes = w.rng.array::<32>().repeat(len / 32 + 1);
        bytes.truncate(len);
        if let Some(b) = bytes.first_mut() {
            *b = (i % 7) as u8;
        }
        w.inject(attacker, hub, bytes);
    }
    w.run(SECOND);
    let s = w.nodes[0].ep.status(w.now);
    assert!(s.drops.total() >= 1900, "drops {}", s.drops.total());
    assert_eq!(transfer(&mut w, 1, 0, 5), 5);
    // Nothing at all answers garbage.
    let answered: Vec<usize> = w
        .log
        .iter()
        .filter(|d| d.to == attacker)
        .map(|d| d.bytes.len())
        .collect();
    assert!(answered.is_empty(), "sent to the attacker: {answered:?}");
}

fn auto_world(seed: u64, mode: culvert_core::TransportMode) -> World {
    let mut w = World::new(seed);
    let hs = w.secret();
    w.add(hub_config(hs, Some(passphrase())), sim::HUB_ADDR);
    let s = w.secret();
    let mut c = client_config(s, Some(passphrase()), "10.0.0.2/24");
    if let Role::Client(cc) = &mut c.role {
        cc.transport = mode;
    }
    w.add(c, "198.18.1.2:40000");
    w
}

fn block_udp(w: &mut World) {
    w.filter = Some(Box::new(|d| d.transport != culvert_core::Transport::Udp));
}

fn transport_of(w: &World, node: usize, peer: u32) -> Option<culvert_core::Transport> {
    w.nodes[node]
        .ep
        .status(w.now)
        .peers
        .iter()
        .find(|p| p.node == peer)
        .and_then(|p| p.transport)
}

#[test]
fn auto_joins_over_faketcp_when_udp_is_blocked_from_the_start() {
    let mut w = auto_world(20, culvert_core::TransportMode::Auto);
    block_udp(&mut w);
    assert!(
        w.run_until(15 * SECOND, |w| w.joined(1)),
        "auto did not fall back to FakeTCP"
    );
    w.run(SECOND);
    assert_eq!(
        transport_of(&w, 1, 0),
        Some(culvert_core::Transport::FakeTcp)
    );
    assert_eq!(
        transport_of(&w, 0, 1),
        Some(culvert_core::Transport::FakeTcp)
    );
    assert_eq!(transfer(&mut w, 1, 0, 20), 20);
    let s = w.nodes[1].ep.status(w.now);
    let why = s.peers[0].last_switch.clone().unwrap();
    assert!(why.contains("no handshake answer over UDP"), "{why}");
}

#[test]
fn udp_only_client_never_joins_through_a_udp_block() {
    let mut w = auto_world(21, culvert_core::TransportMode::Udp);
    block_udp(&mut w);
    w.run(15 * SECOND);
    assert!(!w.joined(1));
}

#[test]
fn faketcp_only_client_joins_and_stays_on_faketcp() {
    let mut w = auto_world(22, culvert_core::TransportMode::FakeTcp);
    assert!(w.run_until(5 * SECOND, |w| w.joined(1)));
    assert_eq!(transfer(&mut w, 1, 0, 10), 10);
    assert!(
        w.log
            .iter()
            .all(|d| d.transport == culvert_core::Transport::FakeTcp)
    );
}

/// The FakeTCP flow came up only after the handshake went out (and found no flow to carry
/// it): the handshake goes again at once, not at its retry a second or more later.
#[test]
fn a_handshake_goes_again_when_the_faketcp_flow_comes_up() {
    let mut w = auto_world(23, culvert_core::TransportMode::FakeTcp);
    // The SYN (and with it the only message 1) is lost; the SYN goes again after its RTO.
    w.queue.clear();
    assert!(!w.joined(1));
    let up = w.run_until(5 * SECOND, |w| {
        w.nodes[1]
            .ep
            .faketcp_status()
            .is_some_and(|(f, _)| f.iter().any(|f| f.state != "syn-sent"))
    });
    assert!(up, "the SYN was never sent again");
    let flow_up = w.now;
    assert!(
        w.run_until(Duration::from_millis(100), |w| w.joined(1)),
        "the handshake waited for its retry"
    );
    eprintln!("joined {:?} after the flow came up", w.now - flow_up);
}

/// A hub that went quiet while the client talks to it over FakeTCP may have restarted and
/// forgotten the flow: the client dials a new one with its first new handshake.
#[test]
fn a_silent_hub_over_faketcp_gets_a_new_flow() {
    let mut w = auto_world(24, culvert_core::TransportMode::FakeTcp);
    assert!(w.run_until(5 * SECOND, |w| w.joined(1)));
    let local = |w: &World| w.nodes[1].ep.faketcp_status().unwrap().0[0].local.clone();
    let before = local(&w);
    w.filter = Some(Box::new(|_| false));
    let _ = w.tun(1, &ip_packet("10.0.0.2", "10.0.0.1", b"hello?"));
    let redialled = w.run_until(4 * SECOND, |w| local(w) != before);
    assert!(redialled, "still on {before}");
    // Dialled once, with the first new handshake, not again at each retry.
    let after = local(&w);
    w.run(2 * SECOND);
    assert_eq!(local(&w), after);
    w.filter = None;
    let established = |w: &World| {
        let flows = w.nodes[1].ep.faketcp_status().unwrap().0;
        flows.iter().all(|f| f.state == "established")
    };
    assert!(w.run_until(5 * SECOND, |w| w.joined(1) && established(w)));
    assert_eq!(transfer(&mut w, 1, 0, 10), 10);
}

#[test]
fn auto_fails_over_within_5s_and_returns_after_the_stable_period() {
    let mut w = auto_world(23, culvert_core::TransportMode::Auto);
    assert!(w.run_until(5 * SECOND, |w| w.joined(1)));
    assert_eq!(transport_of(&w, 1, 0), Some(culvert_core::Transport::Udp));
    // A steady stream client -> hub; UDP gets blocked in the middle of it.
    let mut delivered_at_block = 0;
    let mut failover = None;
    for ms in 0..20_000u64 {
        if ms == 2_000 {
            block_udp(&mut w);
            delivered_at_block = w.nodes[0].delivered.len();
        }
        if ms % 10 == 0 {
            let _ = w.tun(
                1,
                &ip_packet("10.0.0.2", "10.0.0.1", format!("p{ms}").as_bytes()),
            );
        }
        w.step(Duration::from_millis(1));
        if ms > 2_000 && failover.is_none() && w.nodes[0].delivered.len() > delivered_at_block + 5 {
            failover = Some(ms - 2_000);
        }
    }
    let took = failover.expect("traffic never resumed after UDP was blocked");
    assert!(took < 5_000, "failover took {took} ms");
    assert_eq!(
        transport_of(&w, 1, 0),
        Some(culvert_core::Transport::FakeTcp)
    );
    assert_eq!(
        transport_of(&w, 0, 1),
        Some(culvert_core::Transport::FakeTcp),
        "the hub did not follow"
    );
    // UDP comes back: after three answered probes the client returns.
    w.filter = None;
    let back = w.run_until(30 * SECOND, |w| {
        transport_of(w, 1, 0) == Some(culvert_core::Transport::Udp)
    });
    assert!(back, "auto did not return to UDP");
    assert_eq!(transfer(&mut w, 1, 0, 20), 20);
    assert_eq!(transport_of(&w, 0, 1), Some(culvert_core::Transport::Udp));
    // The session survived both moves: the client never lost its node (one Joined event),
    // and at most the handshake it starts beside the session while UDP is silent ran.
    let inits = w
        .log
        .iter()
        .filter(|d| MessageType::of(&d.bytes) == Ok(MessageType::HandshakeInit))
        .count();
    assert!(inits <= 4, "{inits} handshakes");
    let joins = w.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Joined { .. }))
        .count();
    assert_eq!(joins, 1, "the session was re-established instead of moved");
}

#[test]
fn one_lost_pong_does_not_trigger_failover() {
    let mut w = auto_world(24, culvert_core::TransportMode::Auto);
    assert!(w.run_until(5 * SECOND, |w| w.joined(1)));
    // Drop exactly one datagram from the hub, then let the link idle.
    let mut dropped = false;
    w.filter = Some(Box::new(move |d| {
        if !dropped && d.from.to_string() == sim::HUB_ADDR {
            dropped = true;
            return false;
        }
        true
    }));
    w.run(30 * SECOND);
    assert_eq!(transport_of(&w, 1, 0), Some(culvert_core::Transport::Udp));
}
