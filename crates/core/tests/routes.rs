//! Subnet routes (site to site) through whole endpoints over the simulated network: what a
//! hub accepts, what reaches the directory, where packets to and from a subnet go.

mod sim;

use std::time::Duration;

use culvert_core::{Config, Event, Role, TunOutcome};
use sim::{World, client_config, hub_config, ip_packet, passphrase, prefix};

const SECOND: Duration = Duration::from_secs(1);

fn hub(w: &mut World, allow: &[&str], own: &[&str], isolation: bool) -> Config {
    let s = w.secret();
    let mut cfg = hub_config(s, Some(passphrase()));
    cfg.routes = own.iter().map(|r| prefix(r)).collect();
    if let Role::Hub(h) = &mut cfg.role {
        h.allow_routes = allow.iter().map(|r| prefix(r)).collect();
        h.isolation = isolation;
    }
    cfg
}

fn client(w: &mut World, n: u8, offers: &[&str]) -> Config {
    let s = w.secret();
    let mut cfg = client_config(s, Some(passphrase()), &format!("10.0.0.{n}/24"));
    cfg.routes = offers.iter().map(|r| prefix(r)).collect();
    cfg
}

/// The routes node `i` was last told to install in the kernel.
fn kernel_routes(w: &World, i: usize) -> Vec<String> {
    w.nodes[i]
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::RoutesChanged { routes } => Some(routes.iter().map(|r| r.to_string()).collect()),
            _ => None,
        })
        .unwrap_or_default()
}

fn settle(w: &mut World, n: usize) {
    assert!(
        w.run_until(10 * SECOND, |w| (1..n).all(|i| w.joined(i))),
        "clients did not join"
    );
    w.run(2 * SECOND);
}

#[test]
fn an_allowed_route_reaches_the_others_and_carries_traffic_both_ways() {
    let mut w = World::new(1);
    let h = hub(&mut w, &["192.168.0.0/16"], &["172.20.0.0/24"], false);
    w.add(h, sim::HUB_ADDR);
    // Offers one allowed route, one outside allow_routes, and nothing else.
    let a = client(&mut w, 2, &["192.168.50.0/24", "203.0.113.0/24"]);
    w.add(a, "198.18.1.2:40000");
    let b = client(&mut w, 3, &[]);
    w.add(b, "198.18.2.2:40000");
    settle(&mut w, 3);

    assert_eq!(
        kernel_routes(&w, 0),
        ["192.168.50.0/24"],
        "the hub routes A's subnet"
    );
    assert_eq!(
        kernel_routes(&w, 2),
        ["172.20.0.0/24", "192.168.50.0/24"],
        "B routes the hub's and A's subnets"
    );
    assert_eq!(
        kernel_routes(&w, 1),
        ["172.20.0.0/24"],
        "A routes the hub's subnet only"
    );
    let hub_status = w.nodes[0].ep.installed_routes();
    assert_eq!(hub_status, vec![(prefix("192.168.50.0/24"), 1)]);

    // B → a host behind A: delivered at A; the answer from that host is accepted at B.
    let to_lan = ip_packet("10.0.0.3", "192.168.50.7", b"to the LAN");
    assert!(matches!(
        w.tun(2, &to_lan),
        TunOutcome::Send(_) | TunOutcome::Queued
    ));
    w.run(SECOND);
    assert_eq!(w.nodes[1].delivered.last(), Some(&to_lan));
    let answer = ip_packet("192.168.50.7", "10.0.0.3", b"from the LAN");
    assert!(matches!(
        w.tun(1, &answer),
        TunOutcome::Send(_) | TunOutcome::Queued
    ));
    w.run(SECOND);
    assert_eq!(w.nodes[2].delivered.last(), Some(&answer));

    // The hub's own host reaches A's LAN; A's LAN answers the hub.
    let from_hub = ip_packet("10.0.0.1", "192.168.50.9", b"hub to LAN");
    assert!(matches!(w.tun(0, &from_hub), TunOutcome::Send(_)));
    w.run(SECOND);
    assert_eq!(w.nodes[1].delivered.last(), Some(&from_hub));

    // A route that was not accepted carries nothing, and a source outside every route of
    // the sender is still refused.
    let outside = ip_packet("10.0.0.3", "203.0.113.5", b"not routed");
    assert!(matches!(w.tun(2, &outside), TunOutcome::Dropped(_)));
    let spoofed = ip_packet("198.51.100.1", "10.0.0.3", b"spoofed source");
    let before = w.drops(2, "source_not_allowed");
    let _ = w.tun(1, &spoofed);
    w.run(SECOND);
    assert_eq!(w.drops(2, "source_not_allowed"), before + 1);
}

/// Hardening finding 4(b): a member advertising a prefix that overlaps another site's —
/// the same, a more specific one inside it (which would draw that part of its traffic by
/// longest prefix), a wider one — or that covers another member's underlay address is
/// refused; `allow_route_overlap` lets an operator allow overlaps that are not equal.
#[test]
fn overlapping_routes_and_overlay_overlaps_are_refused_unless_allowed() {
    for allow_overlap in [false, true] {
        let mut w = World::new(2);
        let mut h = hub(&mut w, &["0.0.0.0/0"], &[], false);
        if let Role::Hub(hub) = &mut h.role {
            hub.allow_route_overlap = allow_overlap;
        }
        w.add(h, sim::HUB_ADDR);
        let a = client(&mut w, 2, &["192.168.50.0/24"]);
        w.add(a, "198.18.1.2:40000");
        assert!(w.run_until(10 * SECOND, |w| w.joined(1)));
        let b = client(&mut w, 3, &["192.168.50.0/24"]);
        w.add(b, "198.18.2.2:40000");
        // Overlaps the overlay network 10.0.0.0/24.
        let c = client(&mut w, 4, &["10.0.0.0/16"]);
        w.add(c, "198.18.3.2:40000");
        // A more specific route inside A's, and a wider one over it.
        let d = client(&mut w, 5, &["192.168.50.128/25"]);
        w.add(d, "198.18.4.2:40000");
        let e = client(&mut w, 6, &["192.168.0.0/16"]);
        w.add(e, "198.18.5.2:40000");
        // A's underlay address.
        let f = client(&mut w, 7, &["198.18.1.0/24"]);
        w.add(f, "198.18.6.2:40000");
        w.run(5 * SECOND);
        assert!(
            !w.joined(2),
            "a second node with the same route was admitted"
        );
        assert!(
            !w.joined(3),
            "a route over the overlay network was admitted"
        );
        assert!(
            !w.joined(6),
            "a route over A's underlay address was admitted"
        );
        assert_eq!(
            (w.joined(4), w.joined(5)),
            (allow_overlap, allow_overlap),
            "allow_route_overlap = {allow_overlap}"
        );
        let low = ip_packet("10.0.0.1", "192.168.50.7", b"low half");
        let high = ip_packet("10.0.0.1", "192.168.50.200", b"high half");
        let _ = w.tun(0, &low);
        w.run(SECOND);
        assert_eq!(w.nodes[1].delivered.last(), Some(&low));
        let _ = w.tun(0, &high);
        w.run(SECOND);
        if allow_overlap {
            assert_eq!(
                kernel_routes(&w, 0),
                ["192.168.0.0/16", "192.168.50.0/24", "192.168.50.128/25"]
            );
            assert_eq!(
                w.nodes[4].delivered.last(),
                Some(&high),
                "the most specific wins"
            );
        } else {
            assert_eq!(kernel_routes(&w, 0), ["192.168.50.0/24"]);
            assert_eq!(
                w.nodes[1].delivered.last(),
                Some(&high),
                "A keeps its subnet"
            );
        }
    }
}

/// Hardening finding 14: a client installs subnet routes only inside `accept_routes` (by
/// default the private ranges), whoever offers them — the hub's own entry included. A
/// public prefix goes into the tunnel only when the client lists it.
#[test]
fn a_client_installs_routes_only_inside_accept_routes() {
    for listed in [false, true] {
        let mut w = World::new(5);
        let h = hub(&mut w, &["0.0.0.0/0"], &["8.8.8.0/24"], false);
        w.add(h, sim::HUB_ADDR);
        let a = client(&mut w, 2, &["192.168.50.0/24", "203.0.113.0/24"]);
        w.add(a, "198.18.1.2:40000");
        let mut b = client(&mut w, 3, &[]);
        if listed && let Role::Client(c) = &mut b.role {
            c.accept_routes.push(prefix("8.8.8.0/24"));
        }
        w.add(b, "198.18.2.2:40000");
        settle(&mut w, 3);
        let expected: &[&str] = if listed {
            &["8.8.8.0/24", "192.168.50.0/24"]
        } else {
            &["192.168.50.0/24"]
        };
        assert_eq!(kernel_routes(&w, 2), expected, "listed = {listed}");
        let to_public = ip_packet("10.0.0.3", "8.8.8.8", b"to a public address");
        let out = w.tun(2, &to_public);
        assert_eq!(
            matches!(out, TunOutcome::Dropped(_)),
            !listed,
            "a packet to 8.8.8.8 entered the tunnel: {out:?}"
        );
    }
}

#[test]
fn isolation_still_gives_the_hubs_routes_and_no_accept_routes_installs_none() {
    let mut w = World::new(3);
    let h = hub(&mut w, &["192.168.0.0/16"], &["172.20.0.0/24"], true);
    w.add(h, sim::HUB_ADDR);
    let a = client(&mut w, 2, &["192.168.50.0/24"]);
    w.add(a, "198.18.1.2:40000");
    let mut b = client(&mut w, 3, &[]);
    if let Role::Client(c) = &mut b.role {
        c.accept_routes = Vec::new();
    }
    w.add(b, "198.18.2.2:40000");
    let c = client(&mut w, 4, &[]);
    w.add(c, "198.18.3.2:40000");
    settle(&mut w, 4);
    assert_eq!(kernel_routes(&w, 0), ["192.168.50.0/24"]);
    assert_eq!(kernel_routes(&w, 1), ["172.20.0.0/24"]);
    assert!(kernel_routes(&w, 2).is_empty(), "accept_routes = false");
    // Isolation: C gets the hub's subnet, not A's.
    assert_eq!(kernel_routes(&w, 3), ["172.20.0.0/24"]);
    let to_a = ip_packet("10.0.0.4", "192.168.50.7", b"isolated");
    assert!(matches!(w.tun(3, &to_a), TunOutcome::Dropped(_)));
}

#[test]
fn a_route_over_the_servers_address_is_not_installed() {
    let mut w = World::new(4);
    let h = hub(&mut w, &["198.19.0.0/16"], &[], false);
    w.add(h, sim::HUB_ADDR);
    // A offers a subnet that holds the hub's underlay address: B must not route it.
    let a = client(&mut w, 2, &["198.19.1.0/24"]);
    w.add(a, "198.18.1.2:40000");
    let b = client(&mut w, 3, &[]);
    w.add(b, "198.18.2.2:40000");
    settle(&mut w, 3);
    assert_eq!(kernel_routes(&w, 0), ["198.19.1.0/24"]);
    assert!(kernel_routes(&w, 2).is_empty());
    // B still reaches the hub and A.
    let ping = ip_packet("10.0.0.3", "10.0.0.2", b"still here");
    let _ = w.tun(2, &ping);
    w.run(SECOND);
    assert_eq!(w.nodes[1].delivered.last(), Some(&ping));
}
