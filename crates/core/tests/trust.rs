//! The trust model, attack by attack: each test performs the attack against endpoints on
//! the simulated network and checks that nothing anyone else sees has changed.

mod sim;

use std::net::SocketAddr;
use std::time::Duration;

use culvert_core::forge;
use culvert_core::pending::PER_KEY;
use culvert_core::rng::Rng;
use culvert_core::{ClientBinding, DropReason, Event, PeerStatus, Role, TunOutcome};
use culvert_wire::message::{FEC_OVERHEAD, MessageType, emit_fec_header};
use sim::{World, client_config, hub_config, ip_packet, passphrase, prefix};

const SECOND: Duration = Duration::from_secs(1);
const ATTACKER: &str = "192.0.2.66:6666";

fn hub_addr() -> SocketAddr {
    sim::HUB_ADDR.parse().unwrap()
}

fn attacker() -> SocketAddr {
    ATTACKER.parse().unwrap()
}

/// Until every client is joined, confirmed at the hub, and knows the others.
fn join_all(w: &mut World) {
    let n = w.nodes.len();
    assert!(w.run_until(10 * SECOND, |w| (1..n).all(|i| w.joined(i))
        && hub_sees(w) == n - 1));
    assert!(w.run_until(5 * SECOND, World::mesh_known));
}

/// Clients whose session the hub has confirmed.
fn hub_sees(w: &World) -> usize {
    let s = w.nodes[0].ep.status(w.now);
    s.peers.iter().filter(|p| p.state == "up").count()
}

/// One peer as others see it: node id, key, addresses, endpoint, session state.
type PeerView = (u32, String, Vec<String>, Option<String>, &'static str);

/// What a node's peers look like to others: identity, addresses, path, session state.
fn view(w: &World, i: usize) -> Vec<PeerView> {
    let s = w.nodes[i].ep.status(w.now);
    s.peers
        .iter()
        .map(|p: &PeerStatus| {
            (
                p.node,
                p.public_key.clone(),
                p.addresses.clone(),
                p.endpoint.clone(),
                p.state,
            )
        })
        .collect()
}

fn handshakes_from(w: &World, from: SocketAddr) -> usize {
    w.log
        .iter()
        .filter(|d| d.from == from && MessageType::of(&d.bytes) == Ok(MessageType::HandshakeInit))
        .count()
}

/// Sends `count` packets from node `a` to node `b` and returns how many arrived.
fn transfer(w: &mut World, a: usize, b: usize, count: usize) -> usize {
    let before = w.nodes[b].delivered.len();
    for i in 0..count {
        let pkt = ip_packet(
            &World::overlay(a),
            &World::overlay(b),
            format!("p{i}").as_bytes(),
        );
        let _ = w.tun(a, &pkt);
        w.step(Duration::from_millis(1));
    }
    w.run(SECOND);
    w.nodes[b].delivered.len() - before
}

#[test]
fn a_forged_join_with_a_victims_public_key_changes_nothing() {
    let mut w = World::hub_and_clients(30, 2);
    join_all(&mut w);
    let victim = w.nodes[1].ep.public_key();
    let other = w.nodes[2].ep.public_key();
    let before = (view(&w, 0), view(&w, 1), view(&w, 2));
    let dir = w.nodes[0].ep.status(w.now).directory_version;
    let victim_inits = handshakes_from(&w, w.nodes[1].addr);
    let mut rng = Rng::from_seed([66; 32]);
    // Claims: the victim's key with a new address, with its own address, and the other
    // client's address; far-future timestamps, so no replay floor stops them.
    let claims = [
        (victim, vec![prefix("10.0.0.66/24")]),
        (victim, vec![prefix("10.0.0.2/24")]),
        (victim, vec![prefix("10.0.0.3/24")]),
        (other, vec![prefix("10.0.0.99/24")]),
    ];
    for (n, (key, addrs)) in claims.iter().enumerate() {
        let msg = forge::join_claiming(
            &mut rng,
            key,
            &passphrase(),
            1000 + n as u32,
            addrs,
            u64::MAX - n as u64,
        );
        w.inject(attacker(), hub_addr(), msg);
    }
    w.run(3 * SECOND);
    assert!(
        w.nodes[0].ep.status(w.now).pending_handshakes > 0,
        "the claims were answered"
    );
    assert_eq!(
        (view(&w, 0), view(&w, 1), view(&w, 2)),
        before,
        "a claim changed shared state"
    );
    assert_eq!(
        w.nodes[0].ep.status(w.now).directory_version,
        dir,
        "the directory moved"
    );
    assert_eq!(
        handshakes_from(&w, w.nodes[1].addr),
        victim_inits,
        "the victim had to rejoin"
    );
    assert!(matches!(
        w.tun(0, &ip_packet("10.0.0.1", "10.0.0.66", b"x")),
        TunOutcome::Dropped(DropReason::NoRoute)
    ));
    assert_eq!(transfer(&mut w, 1, 0, 20), 20);
    assert_eq!(transfer(&mut w, 0, 1, 20), 20);
    assert_eq!(transfer(&mut w, 2, 1, 20), 20);
    // The victim rekeys: a handshake of its own still wins.
    w.run(130 * SECOND);
    assert_eq!(transfer(&mut w, 1, 2, 20), 20);
}

#[test]
fn a_claim_before_the_victims_first_join_does_not_block_it() {
    let mut w = World::new(31);
    let hs = w.secret();
    let mut hub = hub_config(hs, Some(passphrase()));
    if let Role::Hub(h) = &mut hub.role {
        h.max_clients = 1;
    }
    w.add(hub, sim::HUB_ADDR);
    let secret = w.secret();
    let victim = secret.public_key();
    let mut rng = Rng::from_seed([67; 32]);
    // Before the victim exists: 50 random keys that would fill max_clients = 1 many times
    // over if claims took slots, then one claiming the victim's key (far-future timestamp).
    for i in 0..50u32 {
        let key = culvert_core::StaticSecret::from_bytes(rng.array()).public_key();
        let addr = prefix(&format!("10.0.0.{}/24", 100 + i));
        let msg = forge::join_claiming(&mut rng, &key, &passphrase(), 100 + i, &[addr], 1);
        w.inject(attacker(), hub_addr(), msg);
    }
    let claim = forge::join_claiming(
        &mut rng,
        &victim,
        &passphrase(),
        7,
        &[prefix("10.0.0.2/24")],
        u64::MAX,
    );
    w.inject(attacker(), hub_addr(), claim);
    w.run(SECOND);
    let c = w.add(
        client_config(secret, Some(passphrase()), "10.0.0.2/24"),
        "198.18.1.2:4000",
    );
    assert!(
        w.run_until(5 * SECOND, |w| w.joined(c) && hub_sees(w) == 1),
        "the victim could not join"
    );
    let hub = w.nodes[0].ep.status(w.now);
    assert_eq!(hub.peers.len(), 1);
    // Pending claims hold the ids their Welcomes promised while they wait (15 s), so a new
    // node may get a higher id than without them; no existing node's id ever changes.
    assert!(hub.peers[0].node >= 1);
    assert_eq!(hub.peers[0].public_key, victim.to_string());
    assert_eq!(transfer(&mut w, c, 0, 10), 10);
}

#[test]
fn duplicated_handshakes_never_kill_a_join_or_a_rekey() {
    let mut w = World::new(32);
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
        w.add(c, &format!("198.18.{}.2:4000", i + 1));
    }
    w.duplicate_handshakes = true;
    join_all(&mut w);
    assert_eq!(transfer(&mut w, 1, 2, 1), 1);
    let (a, b) = (transfer(&mut w, 1, 0, 3000), transfer(&mut w, 2, 1, 3000));
    assert_eq!(
        (a, b),
        (3000, 3000),
        "packets lost across duplicated rekeys"
    );
    assert!(
        w.drops(0, "handshake_replay") > 0,
        "the duplicates were not even seen"
    );
    assert_eq!(
        w.nodes[1]
            .events
            .iter()
            .filter(|e| matches!(e, Event::Joined { .. }))
            .count(),
        1,
        "a rejoin instead of rekeys"
    );
}

#[test]
fn a_replayed_message_1_changes_nothing() {
    let mut w = World::hub_and_clients(33, 1);
    join_all(&mut w);
    let victim = w.nodes[1].addr;
    let captured = w
        .log
        .iter()
        .find(|d| d.from == victim && MessageType::of(&d.bytes) == Ok(MessageType::HandshakeInit))
        .cloned()
        .unwrap();
    let before = view(&w, 0);
    for i in 0..100 {
        let from = if i % 2 == 0 { victim } else { attacker() };
        w.inject(from, hub_addr(), captured.bytes.clone());
    }
    w.run(2 * SECOND);
    assert_eq!(view(&w, 0), before);
    assert_eq!(
        w.nodes[0].ep.status(w.now).pending_handshakes,
        0,
        "a replay was answered"
    );
    // Refused as replays, or before that by the per-source budget.
    assert!(w.drops(0, "handshake_replay") + w.drops(0, "rate_limited") >= 100);
    assert!(w.drops(0, "handshake_replay") > 0);
    assert_eq!(transfer(&mut w, 1, 0, 10), 10);
}

#[test]
fn pending_handshakes_are_bounded_per_key() {
    let mut w = World::hub_and_clients(34, 1);
    join_all(&mut w);
    let victim = w.nodes[1].ep.public_key();
    let mut rng = Rng::from_seed([68; 32]);
    for i in 0..40u32 {
        let msg = forge::join_claiming(
            &mut rng,
            &victim,
            &passphrase(),
            500 + i,
            &[prefix("10.0.0.2/24")],
            u64::MAX - u64::from(i),
        );
        w.inject(attacker(), hub_addr(), msg);
    }
    w.step(Duration::from_millis(10));
    let pending = w.nodes[0].ep.status(w.now).pending_handshakes;
    assert!(
        (1..=PER_KEY).contains(&pending),
        "{pending} pending for one key"
    );
    assert_eq!(transfer(&mut w, 1, 0, 10), 10);
}

/// A hub that grants what no client should install: public prefixes, its own public
/// address, directory entries outside the overlay.
#[test]
fn a_client_installs_only_what_its_networks_allow() {
    let mut w = World::new(35);
    let hs = w.secret();
    let (a, b) = (w.secret(), w.secret());
    let mut hub = hub_config(hs, Some(passphrase()));
    hub.addresses.push(prefix("198.51.100.1/32"));
    if let Role::Hub(h) = &mut hub.role {
        h.clients = vec![
            ClientBinding {
                key: a.public_key(),
                addresses: vec![prefix("10.0.0.2/24"), prefix("8.8.8.8/1")],
                routes: Vec::new(),
            },
            ClientBinding {
                key: b.public_key(),
                addresses: vec![prefix("10.0.0.3/24"), prefix("8.8.4.4/32")],
                routes: Vec::new(),
            },
        ];
    }
    w.add(hub, sim::HUB_ADDR);
    for (s, at) in [(a, "198.18.1.2:4000"), (b, "198.18.2.2:4000")] {
        let mut c = client_config(s, Some(passphrase()), "");
        if let Role::Client(cc) = &mut c.role {
            cc.networks = vec![prefix("10.0.0.0/24")];
        }
        w.add(c, at);
    }
    join_all(&mut w);
    let granted = w.nodes[1]
        .events
        .iter()
        .find_map(|e| match e {
            Event::Joined {
                granted,
                hub_addresses,
                ..
            } => Some((granted.clone(), hub_addresses.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        granted.0,
        vec![prefix("10.0.0.2/24")],
        "a public prefix reached the TUN"
    );
    assert_eq!(granted.1, vec![prefix("10.0.0.1/24")]);
    for dst in ["8.8.8.8", "198.51.100.1", "8.8.4.4"] {
        assert!(
            matches!(
                w.tun(1, &ip_packet("10.0.0.2", dst, b"x")),
                TunOutcome::Dropped(DropReason::NoRoute)
            ),
            "{dst} routed into the tunnel"
        );
    }
    let peer = w.nodes[1]
        .ep
        .status(w.now)
        .peers
        .into_iter()
        .find(|p| p.node != 0)
        .unwrap();
    assert_eq!(peer.addresses, vec!["10.0.0.3/24"]);
    assert_eq!(transfer(&mut w, 1, 2, 5), 5);
}

#[test]
fn the_hub_accepts_claims_only_in_its_network_and_keeps_bindings_reserved() {
    let mut w = World::new(36);
    let hs = w.secret();
    let bound = w.secret();
    let mut hub = hub_config(hs, Some(passphrase()));
    if let Role::Hub(h) = &mut hub.role {
        h.clients = vec![ClientBinding {
            key: bound.public_key(),
            addresses: vec![prefix("10.0.0.5/24")],
            routes: Vec::new(),
        }];
    }
    w.add(hub, sim::HUB_ADDR);
    let mut refused = Vec::new();
    for (i, claim) in ["192.168.1.5/24", "10.0.0.5/24", "10.0.0.7/16"]
        .iter()
        .enumerate()
    {
        let s = w.secret();
        refused.push(w.add(
            client_config(s, Some(passphrase()), claim),
            &format!("198.18.{}.2:4000", i + 1),
        ));
    }
    let ok = w.add(
        client_config(bound, Some(passphrase()), ""),
        "198.18.9.2:4000",
    );
    w.run(5 * SECOND);
    for r in refused {
        assert!(!w.joined(r), "client {r} was admitted");
    }
    assert!(w.joined(ok));
    let hub = w.nodes[0].ep.status(w.now);
    assert_eq!(hub.peers.len(), 1);
    assert_eq!(hub.peers[0].addresses, vec!["10.0.0.5/24"]);
}

#[test]
fn strangers_get_no_answer_and_cannot_end_a_session() {
    let mut w = World::hub_and_clients(37, 1);
    join_all(&mut w);
    let client = w.nodes[1].addr;
    // The client's current session index at the hub, as an on-path observer sees it.
    let index = w
        .log
        .iter()
        .rev()
        .find(|d| {
            d.from == hub_addr()
                && d.to == client
                && MessageType::of(&d.bytes) == Ok(MessageType::Data)
        })
        .map(|d| d.bytes[4..8].to_vec())
        .unwrap();
    let inits = handshakes_from(&w, client);
    // A spoofed version-1 notice "unknown session" from the hub's address.
    let mut notice = vec![5, 2, 0, 0];
    notice.extend_from_slice(&index);
    for _ in 0..10 {
        w.inject(hub_addr(), client, notice.clone());
    }
    // Every message type, with random and truncated bodies, from a stranger.
    let mut rng = Rng::from_seed([69; 32]);
    for t in 0u8..=7 {
        for len in [0usize, 1, 7, 8, 16, 31, 32, 52, 120, 720, 1400] {
            let mut bytes = vec![0u8; len];
            rng.fill(&mut bytes);
            if let Some(b) = bytes.first_mut() {
                *b = t;
            }
            if len >= 8 && t == 4 {
                bytes[4..8].copy_from_slice(&index); // a known index, a forged tag
            }
            w.inject(attacker(), hub_addr(), bytes.clone());
            w.inject(attacker(), client, bytes);
        }
    }
    // A message 1 under a wrong passphrase.
    let bad = forge::join_claiming(
        &mut rng,
        &w.nodes[1].ep.public_key(),
        &culvert_core::Psk::from_bytes([1; 32]),
        5,
        &[],
        9,
    );
    w.inject(attacker(), hub_addr(), bad);
    w.run(3 * SECOND);
    let answered: usize = w
        .log
        .iter()
        .filter(|d| d.to == attacker())
        .map(|d| d.bytes.len())
        .sum();
    assert_eq!(answered, 0, "bytes answered to a stranger");
    assert_eq!(
        handshakes_from(&w, client),
        inits,
        "a spoofed notice made the client rejoin"
    );
    assert!(w.drops(1, "unknown_type") >= 10);
    assert_eq!(transfer(&mut w, 1, 0, 10), 10);
}

#[test]
fn forged_parity_costs_one_check_and_recovers_nothing() {
    let mut w = World::hub_and_clients(38, 1);
    join_all(&mut w);
    assert_eq!(transfer(&mut w, 1, 0, 5), 5);
    let index = w
        .log
        .iter()
        .rev()
        .find(|d| d.to == hub_addr() && MessageType::of(&d.bytes) == Ok(MessageType::Data))
        .map(|d| u32::from_be_bytes(d.bytes[4..8].try_into().unwrap()))
        .unwrap();
    let client = w.nodes[1].addr;
    let mut rng = Rng::from_seed([70; 32]);
    for g in 0..2000u64 {
        let mut p = vec![0u8; FEC_OVERHEAD + 1200];
        rng.fill(&mut p);
        emit_fec_header(&mut p, 20, 10, (g % 10) as u8, index, g * 20);
        w.inject(client, hub_addr(), p);
    }
    w.run(SECOND);
    assert!(w.drops(0, "fec_bad_parity") >= 2000);
    let fec = &w.nodes[0].ep.status(w.now).peers[0].fec;
    assert_eq!(
        fec.parity_received, 0,
        "a forged parity reached the decoder"
    );
    assert_eq!(transfer(&mut w, 1, 0, 10), 10);
}

/// Hardening finding 2: forged message 1s claiming a victim's key, 200 a second for five
/// minutes, half spoofed from many source addresses (the victim's own among them), half
/// relayed by a member with the victim as the frame's origin. Every forgery authenticates
/// under the PSK, as a passphrase holder's does. The victim's rekeys must still confirm:
/// its pings to the hub lose at most 2%, the hub never times it out, it never rejoins.
#[test]
fn forged_claims_never_starve_a_victims_rekeys() {
    let mut w = World::hub_and_clients(41, 2);
    // 80 ms round trips: a handshake waits that long for its confirmation.
    w.latency = Duration::from_millis(40);
    join_all(&mut w);
    let victim_key = w.nodes[1].ep.public_key();
    let victim_node = w.nodes[1].ep.status(w.now).node.unwrap();
    let victim_addr = w.nodes[1].addr;
    let mut rng = Rng::from_seed([69; 32]);
    let from_victim = |w: &World| {
        w.nodes[0]
            .delivered
            .iter()
            .filter(|p| p[12..16] == [10, 0, 0, 2])
            .count()
    };
    let before = from_victim(&w);
    let rekeys_before = handshakes_from(&w, victim_addr);
    let (start, mut pings, mut n) = (w.now, 0usize, 0u32);
    let mut hub_lost_victim = 0;
    while w.now < start + 300 * SECOND {
        let msg = forge::join_claiming(
            &mut rng,
            &victim_key,
            &passphrase(),
            9000 + n,
            &[prefix("10.0.0.2/24")],
            u64::MAX - u64::from(n),
        );
        if n % 2 == 0 {
            let from = if n % 20 == 0 {
                victim_addr
            } else {
                let k = n / 2;
                SocketAddr::from((
                    [203, (k % 200) as u8, (k / 200 % 250) as u8, 7],
                    1024 + (k % 60_000) as u16,
                ))
            };
            w.inject(from, hub_addr(), msg);
        } else {
            let now = w.now;
            w.nodes[2].ep.forge_relay(now, 0, 0, victim_node, &msg);
            w.drain(2);
        }
        n += 1;
        if n % 20 == 0 {
            let pkt = ip_packet(
                &World::overlay(1),
                &World::overlay(0),
                format!("ping {pings}").as_bytes(),
            );
            let _ = w.tun(1, &pkt);
            pings += 1;
            let up = w.nodes[0]
                .ep
                .status(w.now)
                .peers
                .iter()
                .any(|p| p.node == victim_node && p.state == "up");
            hub_lost_victim += usize::from(!up);
        }
        w.step(Duration::from_millis(5));
    }
    w.run(SECOND);
    let arrived = from_victim(&w) - before;
    let lost = pings - arrived;
    assert!(n >= 60_000, "the attack sent {n} forgeries");
    let rekeys = handshakes_from(&w, victim_addr) - rekeys_before;
    let (origin, cookie, limited, crowded) = (
        w.drops(0, "relay_origin"),
        w.drops(0, "cookie_required"),
        w.drops(0, "rate_limited"),
        w.drops(0, "handshake_crowded"),
    );
    eprintln!(
        "{n} forgeries; victim: {rekeys} message 1s, {lost} of {pings} pings lost; hub drops: \
         relay_origin {origin}, cookie_required {cookie}, rate_limited {limited}, \
         handshake_crowded {crowded}"
    );
    assert!(
        rekeys >= 2,
        "the victim rekeyed {rekeys} times in 5 minutes"
    );
    assert!(
        origin >= 29_000,
        "relayed forgeries passed the origin check"
    );
    assert!(
        lost * 50 <= pings,
        "the victim lost {lost} of {pings} pings under forged claims"
    );
    assert_eq!(hub_lost_victim, 0, "the hub lost the victim's session");
    let joins = w.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Joined { .. }))
        .count();
    assert_eq!(joins, 1, "the victim had to rejoin");
    assert!(
        w.nodes[1]
            .ep
            .status(w.now)
            .peers
            .iter()
            .any(|p| p.node == 0 && p.state == "up"),
        "the victim's session with the hub is down"
    );
}

/// Hardening finding 7: a member forges message 1s between two other clients, claiming
/// each towards the other, 200 a second for five minutes: half through the hub (which must
/// not pass on a frame whose origin is not its sender's), half over its own direct path to
/// the victim. The victims' session survives its rekeys: A's packets to C lose at most 2%.
#[test]
fn forged_peer_handshakes_never_block_a_session_between_clients() {
    let mut w = World::hub_and_clients(42, 3);
    w.latency = Duration::from_millis(40);
    join_all(&mut w);
    let (a, c, m) = (1, 2, 3);
    // Sessions (and direct paths) A⇄C and M⇄A, M⇄C.
    assert_eq!(transfer(&mut w, a, c, 10), 10);
    assert_eq!(transfer(&mut w, m, a, 10), 10);
    assert_eq!(transfer(&mut w, m, c, 10), 10);
    w.run(5 * SECOND);
    let node = |w: &World, i: usize| w.nodes[i].ep.status(w.now).node.unwrap();
    let key = |w: &World, i: usize| w.nodes[i].ep.public_key();
    let victims =
        [(a, c), (c, a)].map(|(claimed, to)| (key(&w, claimed), node(&w, claimed), node(&w, to)));
    let mut rng = Rng::from_seed([70; 32]);
    let delivered = |w: &World| {
        w.nodes[c]
            .delivered
            .iter()
            .filter(|p| p[12..16] == [10, 0, 0, 2])
            .count()
    };
    let before = delivered(&w);
    let (start, mut sent, mut n) = (w.now, 0usize, 0u32);
    while w.now < start + 300 * SECOND {
        let (claimed, origin, dest) = victims[(n % 2) as usize];
        let msg = forge::peer_claiming(
            &mut rng,
            &claimed,
            &passphrase(),
            7000 + n,
            u64::MAX - u64::from(n),
        );
        // Through the hub, or straight over the forger's own path to the victim.
        let via = if n / 2 % 2 == 0 { 0 } else { dest };
        let now = w.now;
        w.nodes[m].ep.forge_relay(now, via, dest, origin, &msg);
        w.drain(m);
        n += 1;
        if n % 20 == 0 {
            let pkt = ip_packet(
                &World::overlay(a),
                &World::overlay(c),
                format!("a{sent}").as_bytes(),
            );
            let _ = w.tun(a, &pkt);
            sent += 1;
        }
        w.step(Duration::from_millis(5));
    }
    w.run(SECOND);
    let lost = sent - (delivered(&w) - before);
    let (origin, limited, crowded) = (
        w.drops(0, "relay_origin"),
        w.drops(c, "rate_limited") + w.drops(a, "rate_limited"),
        w.drops(c, "handshake_crowded") + w.drops(a, "handshake_crowded"),
    );
    eprintln!(
        "{n} forgeries; {lost} of {sent} packets A -> C lost; hub relay_origin {origin}; \
         victims rate_limited {limited}, handshake_crowded {crowded}"
    );
    assert!(
        lost * 50 <= sent,
        "A -> C lost {lost} of {sent} packets under forged handshakes"
    );
    assert!(
        origin >= 29_000,
        "the hub passed on frames with a forged origin"
    );
    assert!(limited > 0, "the victims answered every forgery");
    assert!(
        w.nodes[a]
            .ep
            .status(w.now)
            .peers
            .iter()
            .any(|p| p.node == node(&w, c) && p.state == "up"),
        "A's session with C is down"
    );
}

/// Hardening finding 9: one member of 40 rejoins 20 times in 10 s, each time with another
/// overlay address, so its directory entry changes at every rejoin. Each change used to
/// send the whole directory to every client (N² bytes). Now the others get a delta of one
/// entry, and one member's changes go out at most every 5 s: the hub writes the others
/// about as much as the member itself sends.
#[test]
fn a_member_rejoining_with_new_addresses_cannot_make_the_hub_flood_the_others() {
    let n = 40;
    let mut w = World::hub_and_clients(43, n);
    join_all(&mut w);
    w.run(5 * SECOND);
    let (hub, member) = (hub_addr(), n);
    let member_addr = w.nodes[member].addr;
    let secret = culvert_core::StaticSecret::from_bytes(w.rng.array());
    // The member with a key of its own, joined once normally.
    let cfg = |k: u64| {
        let addr = format!("10.0.0.{}/24", 100 + k);
        client_config(secret.clone(), Some(passphrase()), &addr)
    };
    let restart = |w: &mut World, k: u64| {
        let unix = Duration::from_secs(1_800_000_000 + k * 10);
        let seed = [u8::try_from(k + 1).unwrap(); 32];
        w.nodes[member].ep = culvert_core::Endpoint::new(cfg(k), seed, w.now, unix);
        w.drain(member);
    };
    restart(&mut w, 0);
    assert!(w.run_until(10 * SECOND, |w| w.joined(member)));
    w.run(10 * SECOND);
    let sent = |w: &World, from_t: std::time::Instant, from: SocketAddr, skip: SocketAddr| {
        w.log
            .iter()
            .filter(|d| d.at >= from_t && d.from == from && d.to != skip)
            .map(|d| d.bytes.len())
            .sum::<usize>()
    };
    let quiet_from = w.now;
    w.run(10 * SECOND);
    let quiet = sent(&w, quiet_from, hub, member_addr);
    let attack_from = w.now;
    for k in 1..=20 {
        restart(&mut w, k);
        w.run(Duration::from_millis(500));
    }
    let to_others = sent(&w, attack_from, hub, member_addr) - quiet;
    let by_member = sent(&w, attack_from, member_addr, member_addr);
    eprintln!(
        "20 rejoins in 10 s with new addresses: the member sent {by_member} bytes, the hub sent \
         the other {} clients {to_others} bytes more than in 10 quiet seconds ({quiet})",
        n - 1
    );
    assert!(
        to_others <= 2 * by_member,
        "the hub wrote the others {to_others} bytes for the member's {by_member}"
    );
    // The others still learn the member's final address.
    w.run(10 * SECOND);
    let seen = w.nodes[1].ep.status(w.now);
    let entry = seen
        .peers
        .iter()
        .find(|p| p.public_key == secret.public_key().to_string());
    assert_eq!(
        entry.map(|p| p.addresses.clone()),
        Some(vec!["10.0.0.120/24".to_owned()]),
        "the others do not know the member's last address"
    );
}

/// Hardening finding 13: a member sends authentic probes on its direct path to a client,
/// but with a third party's address as their source (a member can write any). Each is
/// answered at that address; at most 64 a second are.
#[test]
fn probe_answers_to_other_addresses_are_rate_limited() {
    let mut w = World::hub_and_clients(44, 2);
    join_all(&mut w);
    let (c, m) = (1, 2);
    assert_eq!(transfer(&mut w, m, c, 10), 10);
    w.run(5 * SECOND);
    let (c_addr, m_addr) = (w.nodes[c].addr, w.nodes[m].addr);
    let node_c = w.nodes[c].ep.status(w.now).node.unwrap();
    let third: SocketAddr = "192.0.2.99:53".parse().unwrap();
    let from = w.now;
    let mut probe = Vec::new();
    culvert_wire::frame::Frame::Probe { seq: 7, pad: 0 }.emit(&mut probe);
    for _ in 0..200 {
        let before = w.log.len();
        let now = w.now;
        w.nodes[m].ep.forge_plain(now, node_c, &probe);
        w.drain(m);
        let sealed: Vec<Vec<u8>> = w.log[before..]
            .iter()
            .filter(|d| d.from == m_addr && d.to == c_addr)
            .map(|d| d.bytes.clone())
            .collect();
        w.queue.retain(|d| !(d.from == m_addr && d.to == c_addr));
        for bytes in sealed {
            w.inject(third, c_addr, bytes);
        }
        w.step(Duration::from_millis(5));
    }
    let answers = w
        .log
        .iter()
        .filter(|d| d.at >= from && d.to == third)
        .count();
    eprintln!("200 probes in 1 s from a spoofed source: {answers} answers went there");
    assert!(
        (1..=64).contains(&answers),
        "{answers} answers to the third party"
    );
}
