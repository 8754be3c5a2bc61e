//! The server as an exit and a full-tunnel client, in namespaces.
//!
//! ```text
//!   host 0: server (--nat)          198.18.1.2 ---+
//!   host 1: client (--full-tunnel)  198.18.2.2 ---+-- router (drops host 1 <-> host 2)
//!   host 2: "the Internet"          198.18.3.2 ---+
//! ```
//! Host 2 is reachable from the client only through the tunnel; the router counts every
//! packet the client's underlay sends host 2 in the clear (a leak).

mod common;

use std::time::{Duration, Instant};

use common::*;

const INTERNET: &str = "198.18.3.2";
const INTERNET6: &str = "fd01:3::2";

/// The router forwards nothing between the client and host 2, and counts what the client
/// sends it in the clear, over IPv4 and IPv6.
const ROUTER: &str = "table inet test_gw {
  counter leaked {}
  counter leaked6 {}
  set what { type ipv4_addr . inet_proto; flags dynamic; }
  set what6 { type ipv6_addr . inet_proto; flags dynamic; }
  chain pre { type filter hook prerouting priority -300;
    ip saddr 198.18.2.2 ip daddr 198.18.3.0/24 counter name leaked \
      add @what { ip daddr . meta l4proto }
    ip6 saddr fd01:2::/64 ip6 daddr fd01:3::/64 counter name leaked6 \
      add @what6 { ip6 daddr . meta l4proto }
  }
  chain filter_fwd { type filter hook forward priority 0;
    ip saddr 198.18.2.2 ip daddr 198.18.3.2 drop
    ip saddr 198.18.3.2 ip daddr 198.18.2.2 drop
  }
}";

/// What a host's routing and firewall state looks like (culvert must leave it as found).
fn system_state(lab: &Lab, host: usize) -> String {
    lab.sh(
        Some(host),
        "ip rule; ip -6 rule; ip route show table all | grep -v culvert0; \
         ip -6 route show table all | grep -v culvert0; nft -s list ruleset; \
         sysctl net.ipv4.conf.all.src_valid_mark net.ipv4.conf.eth0.forwarding \
           net.ipv6.conf.all.forwarding net.ipv4.ip_forward",
    )
    .unwrap()
}

/// Gives the client, host 2 and the router IPv6 on the underlay, so a leak of IPv6 around
/// the tunnel would have somewhere to go.
fn underlay_v6(lab: &Lab) {
    lab.sh(
        None,
        "sysctl -qw net.ipv6.conf.all.forwarding=1; \
         ip addr add fd01:2::1/64 dev h1 nodad; ip addr add fd01:3::1/64 dev h2 nodad",
    )
    .unwrap();
    lab.sh(
        Some(1),
        "ip addr add fd01:2::2/64 dev eth0 nodad; ip -6 route add default via fd01:2::1",
    )
    .unwrap();
    lab.sh(
        Some(2),
        "ip addr add fd01:3::2/64 dev eth0 nodad; ip -6 route add default via fd01:3::1",
    )
    .unwrap();
}

fn ping6(lab: &Lab, from: usize, to: &str) -> bool {
    lab.sh(
        Some(from),
        &format!("ping -6 -c 1 -W 1 {to} >/dev/null && echo ok"),
    )
    .unwrap_or_default()
    .contains("ok")
}

#[test]
fn a_full_tunnel_reaches_the_internet_through_the_exit_and_never_leaks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("gwfull", 3) else {
        return;
    };
    lab.router_nft(ROUTER).unwrap();
    underlay_v6(&lab);
    // Without culvert the client reaches host 2 over IPv6 (and the counters see it), not
    // over IPv4 (the router drops it).
    assert!(
        (0..5).any(|_| ping6(&lab, 1, INTERNET6)),
        "the IPv6 underlay works: {}",
        lab.sh(Some(1), "ip -6 addr; ip -6 route")
            .unwrap_or_default()
    );
    assert!(lab.ping(1, ip(INTERNET), Duration::from_secs(1)).is_none());
    let (leak4, leak6) = (
        counter(&lab, "test_gw", "leaked"),
        counter(&lab, "test_gw", "leaked6"),
    );
    assert!(leak4 >= 1 && leak6 >= 1, "the leak counters count");
    let before = (system_state(&lab, 0), system_state(&lab, 1));

    let server = lab.spawn(0, &server_args(KEY, &["--nat"])).unwrap();
    let client = start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &["--full-tunnel"]);
    wait_ping(&lab, 1, overlay(0));
    // Through the exit: host 2 answers, and sees the server's address.
    lab.sh(
        Some(2),
        "nft -f - <<'EOF'\ntable inet seen {\n counter server {}\n counter other {}\n \
         chain count { type filter hook input priority 0;\n \
         ip saddr 198.18.1.2 icmp type echo-request counter name server\n \
         ip saddr != 198.18.1.2 icmp type echo-request counter name other\n }\n}\nEOF",
    )
    .unwrap();
    let rtt = lab.ping_until(1, ip(INTERNET), Duration::from_secs(10));
    assert!(rtt.is_some(), "no answer through the exit\n{}", lab.logs());
    let seen = |name: &str| counter_in(&lab, Some(2), "seen", name);
    assert!(seen("server") >= 1, "host 2 saw the server's address");
    assert_eq!(seen("other"), 0, "host 2 saw another source");
    let st = lab.status(1).unwrap();
    assert!(
        st["gateway"]
            .as_str()
            .is_some_and(|g| g.starts_with("full tunnel")),
        "{st}"
    );
    assert!(
        lab.status(0).unwrap()["gateway"]
            .as_str()
            .is_some_and(|g| g.starts_with("exit via eth0")),
    );

    // Throughput: to the Internet host through the exit, and to the server itself.
    let exit = lab.transfer(1, 2, ip(INTERNET), 40 * MB, || ()).unwrap();
    assert_eq!((exit.bytes, &exit.sent), (40 * MB, &exit.received));
    let to_server = lab.transfer(1, 0, overlay(0), 40 * MB, || ()).unwrap();
    assert_eq!(to_server.sent, to_server.received);
    eprintln!(
        "full tunnel to the Internet host {:.0} Mbit/s, to the server {:.0} Mbit/s ({:.2}x)",
        exit.mbps(),
        to_server.mbps(),
        exit.mbps() / to_server.mbps()
    );

    // IPv6 to host 2 goes into the tunnel (the exit has no IPv6 uplink): blocked, not
    // sent around it.
    assert!(!ping6(&lab, 1, INTERNET6), "IPv6 bypassed the tunnel");

    // The server becomes unreachable: nothing goes out in the clear meanwhile.
    lab.router_nft(
        "table inet test_cut {\n chain f { type filter hook forward priority -10;\n \
         ip daddr 198.18.1.2 drop\n ip saddr 198.18.1.2 drop\n }\n}",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..3 {
        assert!(lab.ping(1, ip(INTERNET), Duration::from_secs(1)).is_none());
        assert!(!ping6(&lab, 1, INTERNET6));
    }
    let _ = lab.sh(
        Some(1),
        "for p in 53 80 443; do timeout 1 bash -c \"echo x > /dev/tcp/198.18.3.2/$p\"; done; \
         echo x > /dev/udp/198.18.3.2/53",
    );
    assert_eq!(
        (
            counter(&lab, "test_gw", "leaked"),
            counter(&lab, "test_gw", "leaked6")
        ),
        (leak4, leak6),
        "packets left the client outside the tunnel: {}",
        lab.sh(
            None,
            "nft list set inet test_gw what; nft list set inet test_gw what6"
        )
        .unwrap_or_default()
    );
    lab.sh(None, "nft delete table inet test_cut").unwrap();
    assert!(
        lab.ping_until(1, ip(INTERNET), Duration::from_secs(20))
            .is_some(),
        "the tunnel did not come back\n{}",
        lab.logs()
    );

    // Clean exit: everything as found.
    lab.stop(client, false);
    lab.stop(server, false);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(system_state(&lab, 0), before.0, "server state after exit");
    assert_eq!(system_state(&lab, 1), before.1, "client state after exit");

    // kill -9, start again (twice over the crash's leftovers), then exit: nothing doubled,
    // nothing left.
    let server = lab.spawn(0, &server_args(KEY, &["--nat"])).unwrap();
    let client = start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &["--full-tunnel"]);
    wait_ping(&lab, 1, ip(INTERNET));
    let running = (system_state(&lab, 0), system_state(&lab, 1));
    // (The first pings above may have left before the daemon routed anything: no tunnel
    // yet. Count from here.)
    let leaks = (
        counter(&lab, "test_gw", "leaked"),
        counter(&lab, "test_gw", "leaked6"),
    );
    lab.stop(client, true);
    lab.stop(server, true);
    // Crashed (the TUN is gone, the rules stay): fail closed, nothing in the clear.
    assert!(lab.ping(1, ip(INTERNET), Duration::from_secs(1)).is_none());
    assert!(
        !ping6(&lab, 1, INTERNET6),
        "IPv6 left in the clear after a crash"
    );
    let _ = lab.sh(
        Some(1),
        "timeout 1 bash -c 'echo x > /dev/tcp/198.18.3.2/443'; echo x > /dev/udp/198.18.3.2/53",
    );
    assert_eq!(
        (
            counter(&lab, "test_gw", "leaked"),
            counter(&lab, "test_gw", "leaked6")
        ),
        leaks,
        "packets left the client in the clear after its daemon was killed: {}\n{}",
        lab.sh(Some(1), "ip rule; ip route show table all")
            .unwrap_or_default(),
        lab.sh(None, "nft list set inet test_gw what")
            .unwrap_or_default()
    );
    let server = lab.spawn(0, &server_args(KEY, &["--nat"])).unwrap();
    let client = start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &["--full-tunnel"]);
    wait_ping(&lab, 1, ip(INTERNET));
    assert_eq!(
        (system_state(&lab, 0), system_state(&lab, 1)),
        running,
        "a restart after kill -9 duplicated or left something"
    );
    lab.stop(client, true);
    lab.stop(server, true);
    // The next start cleans up after the crash; a clean exit then leaves nothing.
    let server = lab.spawn(0, &server_args(KEY, &["--nat"])).unwrap();
    let client = start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &["--full-tunnel"]);
    wait_ping(&lab, 1, overlay(0));
    lab.stop(client, false);
    lab.stop(server, false);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        system_state(&lab, 0),
        before.0,
        "server state after a crash"
    );
    assert_eq!(
        system_state(&lab, 1),
        before.1,
        "client state after a crash"
    );
}

/// Counts fragments the router forwards, and optionally drops the ICMP errors it would
/// send (a PMTU black hole).
fn mtu_router(lab: &Lab, black_hole: bool) {
    let drop_icmp = if black_hole {
        "chain out { type filter hook output priority 0;\n icmp type destination-unreachable counter name icmp_dropped drop\n }\n"
    } else {
        ""
    };
    lab.router_nft(&format!(
        "table inet test_mtu {{\n counter frags {{}}\n counter icmp_dropped {{}}\n \
         chain pre {{ type filter hook prerouting priority -300;\n \
         ip frag-off & 0x3fff != 0 counter name frags\n }}\n {drop_icmp}}}"
    ))
    .unwrap();
}

#[test]
fn a_path_that_narrows_to_1280_keeps_carrying_a_transfer_with_or_without_icmp() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (transport, black_hole) in [("udp", true), ("udp", false), ("faketcp", true)] {
        let Some(mut lab) = lab("gwmtu", 2) else {
            return;
        };
        mtu_router(&lab, black_hole);
        start_network(&mut lab, 0, &[]);
        start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &["--transport", transport]);
        wait_ping(&lab, 1, overlay(0));
        assert_eq!(
            lab.status(1).unwrap()["peers"][0]["transport"].as_str(),
            Some(transport)
        );
        // Mid-transfer, the router's link to the client narrows to 1280 bytes.
        let t = lab
            .transfer(0, 1, overlay(1), 20 * MB, || {
                lab.sh(None, "ip link set h1 mtu 1280").unwrap();
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
        assert_eq!((t.bytes, &t.sent), (20 * MB, &t.received));
        eprintln!(
            "{transport}, black hole {black_hole}: 20 MB intact, longest stall {:.2} s, {:.0} Mbit/s",
            t.max_stall,
            t.mbps()
        );
        assert!(t.max_stall < 5.0, "stalled {:.2} s", t.max_stall);
        // The other way too, on the narrow path from the start.
        let t = lab.transfer(1, 0, overlay(0), 20 * MB, || ()).unwrap();
        assert_eq!((t.bytes, &t.sent), (20 * MB, &t.received));
        assert_eq!(
            counter(&lab, "test_mtu", "frags"),
            0,
            "the underlay fragmented"
        );
        if black_hole {
            assert!(
                counter(&lab, "test_mtu", "icmp_dropped") > 0,
                "no ICMP was withheld"
            );
        }
        // A too-large ping with DF through the tunnel, the narrow way (the router's link
        // to the client narrowed what leaves it), hears "fragmentation needed" with the
        // discovered MTU.
        let out = lab
            .sh(
                Some(0),
                "ping -M do -s 1300 -c 3 -i 0.3 -W 1 10.0.0.2 2>&1; true",
            )
            .unwrap_or_default();
        eprintln!("{out}");
        let mtu = out
            .split("mtu")
            .nth(1)
            .and_then(|s| {
                s.trim_start_matches([' ', '=', '('])
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
            })
            .unwrap_or_else(|| {
                panic!(
                    "no frag-needed answer: {out}\n{}\n{}",
                    lab.status(0).unwrap(),
                    lab.logs()
                )
            });
        assert!((1100..=1250).contains(&mtu), "mtu {mtu}");
        let st = lab.status(0).unwrap();
        assert!(drops(&st, "too_big") > 0, "{st}");
    }
}

/// Two clients that reach each other only through the server; the router's link to
/// client 2 narrows to 1280 mid-transfer, and sends no ICMP. Client 1 never sees that
/// hop: its end-to-end probes through the relay find it.
#[test]
fn a_relayed_path_that_narrows_keeps_carrying_a_transfer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("gwrly", 3) else {
        return;
    };
    mtu_router(&lab, true);
    start_network(&mut lab, 0, &[]);
    for (i, addr) in [(1, "10.0.0.2/24"), (2, "10.0.0.3/24")] {
        start_client_with(&mut lab, i, addr, KEY, &["--no-p2p"]);
    }
    wait_ping(&lab, 1, overlay(2));
    // Client `host`'s view of client `other` (node ids follow the order of joining).
    let peer = |host: usize, other: usize| {
        let addr = format!("{}/", overlay(other));
        lab.status(host).unwrap()["peers"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|p| p["addresses"].to_string().contains(&addr))
                    .cloned()
            })
            .unwrap_or_default()
    };
    assert_eq!(peer(1, 2)["path"], "relay");
    let t = lab
        .transfer(1, 2, overlay(2), 20 * MB, || {
            lab.sh(None, "ip link set h2 mtu 1280").unwrap();
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!((t.bytes, &t.sent), (20 * MB, &t.received));
    let mtu = peer(1, 2)["path_mtu"].as_u64();
    eprintln!(
        "relayed, black hole: 20 MB intact, longest stall {:.2} s, {:.0} Mbit/s, path MTU {mtu:?}",
        t.max_stall,
        t.mbps()
    );
    assert!(t.max_stall < 5.0, "stalled {:.2} s", t.max_stall);
    assert!(mtu.is_some_and(|m| (1100..1250).contains(&m)), "{mtu:?}");
    // The other way: client 2's own uplink is the narrow hop.
    let t = lab.transfer(2, 1, overlay(1), 20 * MB, || ()).unwrap();
    assert_eq!((t.bytes, &t.sent), (20 * MB, &t.received));
    assert_eq!(
        counter(&lab, "test_mtu", "frags"),
        0,
        "the underlay fragmented"
    );
}

/// A subnet router's state: [`system_state`] plus its LAN interface's forwarding, without
/// the link-local routes a new LAN interface gains by itself.
fn router_state(lab: &Lab, host: usize) -> String {
    let state = system_state(lab, host)
        + &lab
            .sh(Some(host), "sysctl net.ipv4.conf.lan0.forwarding")
            .unwrap();
    state
        .lines()
        .filter(|l| !l.contains("fe80:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Counts, in LAN host `host`, the TCP SYNs and echo requests arriving from each source.
fn count_sources(lab: &Lab, host: usize) {
    lab.sh(
        Some(host),
        "nft -f - <<'EOF'\ntable inet seen {\n set from { type ipv4_addr; flags dynamic; }\n \
         chain count { type filter hook input priority 0;\n \
         tcp flags syn add @from { ip saddr }\n icmp type echo-request add @from { ip saddr }\n }\n}\nEOF",
    )
    .unwrap();
}

fn sources_seen(lab: &Lab, host: usize) -> String {
    lab.sh(Some(host), "nft list set inet seen from")
        .unwrap_or_default()
}

/// Site to site:
/// ```text
///   LAN host 4 192.168.60.2 -- server (host 0, advertises 192.168.60.0/24)
///   LAN host 3 192.168.50.2 -- client A (host 1, advertises 192.168.50.0/24 with --nat,
///                                        and 192.168.99.0/24, which the server refuses)
///                              client B (host 2)
/// ```
#[test]
fn subnet_routes_carry_traffic_between_sites_in_both_directions() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("gwsub", 3) else {
        return;
    };
    let lan_a = lab.add_lan_host(1, "192.168.50").unwrap();
    let lan_s = lab.add_lan_host(0, "192.168.60").unwrap();
    count_sources(&lab, lan_a);
    count_sources(&lab, lan_s);
    let before = (router_state(&lab, 0), router_state(&lab, 1));
    let server_flags = [
        "--allow-route",
        "192.168.50.0/24",
        "--advertise-route",
        "192.168.60.0/24",
    ];
    let a_flags = [
        "--advertise-route",
        "192.168.50.0/24,192.168.99.0/24",
        "--nat",
    ];
    let server = lab.spawn(0, &server_args(KEY, &server_flags)).unwrap();
    let a = start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &a_flags);
    let b = start_client(&mut lab, 2, "10.0.0.3/24", KEY);
    wait_ping(&lab, 2, overlay(1));

    // B reaches the LAN behind A; the LAN host sees A's LAN address (masqueraded).
    let rtt = lab.ping_until(2, ip("192.168.50.2"), Duration::from_secs(10));
    assert!(rtt.is_some(), "B -> LAN behind A\n{}", lab.logs());
    let t = lab
        .transfer(2, lan_a, ip("192.168.50.2"), 20 * MB, || ())
        .unwrap();
    assert_eq!((t.bytes, &t.sent), (20 * MB, &t.received), "B -> LAN A");
    let seen = sources_seen(&lab, lan_a);
    assert!(
        seen.contains("192.168.50.1") && !seen.contains("10.0.0.3"),
        "{seen}"
    );

    // The LAN behind A and the LAN behind the server, both ways, unmasqueraded (each LAN
    // routes through its gateway): the server's LAN host sees the other LAN's address.
    let t = lab
        .transfer(lan_a, lan_s, ip("192.168.60.2"), 20 * MB, || ())
        .unwrap();
    assert_eq!((t.bytes, &t.sent), (20 * MB, &t.received), "LAN A -> LAN S");
    let t = lab
        .transfer(lan_s, lan_a, ip("192.168.50.2"), 20 * MB, || ())
        .unwrap();
    assert_eq!((t.bytes, &t.sent), (20 * MB, &t.received), "LAN S -> LAN A");
    let seen = sources_seen(&lab, lan_s);
    assert!(seen.contains("192.168.50.2"), "{seen}");
    // B reaches the server's LAN too (the hub's own route).
    assert!(
        lab.ping_until(2, ip("192.168.60.2"), Duration::from_secs(5))
            .is_some()
    );

    // What each node routes, in the kernel and in status; the refused offer is nowhere.
    let kernel = lab.sh(Some(2), "ip route show dev culvert0").unwrap();
    assert!(
        kernel.contains("192.168.50.0/24") && kernel.contains("192.168.60.0/24"),
        "{kernel}"
    );
    assert!(!kernel.contains("192.168.99.0"), "{kernel}");
    let st = lab.status(1).unwrap();
    let a_node = st["node"].as_u64().unwrap();
    assert_eq!(
        st["accepted_routes"],
        serde_json::json!(["192.168.50.0/24"]),
        "{st}"
    );
    assert!(
        st["gateway"]
            .as_str()
            .is_some_and(|g| g.contains("192.168.50.0/24 via lan0")),
        "{st}"
    );
    let st = lab.status(0).unwrap();
    assert_eq!(
        st["routes"],
        serde_json::json!([{"prefix": "192.168.50.0/24", "node": a_node}]),
        "{st}"
    );
    assert!(
        lab.log(server).contains("192.168.99.0/24"),
        "the refusal is logged"
    );

    // A second node offering the same subnet is refused, with the reason.
    let dup = lab
        .spawn(
            2,
            &[
                "client",
                "-r",
                "198.18.1.2:9000",
                "-t",
                "10.0.0.9/24",
                "-k",
                KEY,
                "--tun-name",
                "culvert1",
                "--advertise-route",
                "192.168.50.0/24",
            ],
        )
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !lab.log(dup).contains("already routed by node") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        lab.log(dup)
            .contains(&format!("already routed by node {a_node}")),
        "{}",
        lab.log(dup)
    );
    lab.stop(dup, false);

    // kill -9 the subnet router; its next start cleans up and works; a clean exit then
    // leaves every host as it was.
    lab.stop(a, true);
    let a = start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &a_flags);
    assert!(
        lab.ping_until(2, ip("192.168.50.2"), Duration::from_secs(20))
            .is_some(),
        "after a restart\n{}",
        lab.logs()
    );
    lab.stop(b, false);
    lab.stop(a, false);
    lab.stop(server, false);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(router_state(&lab, 0), before.0, "server state after exit");
    assert_eq!(
        router_state(&lab, 1),
        before.1,
        "subnet router state after exit"
    );
}

/// Under client isolation, a full-tunnel client's packets for another client reach the
/// exit's TUN like any other destination: the exit's own forwarding must not carry them
/// back out to that client.
#[test]
fn an_exit_under_isolation_does_not_forward_between_clients() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("gwiso", 3) else {
        return;
    };
    let _server = lab
        .spawn(0, &server_args(KEY, &["--nat", "--client-isolation"]))
        .unwrap();
    let _a = start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &["--full-tunnel"]);
    let _b = start_client(&mut lab, 2, "10.0.0.3/24", KEY);
    wait_ping(&lab, 1, overlay(0));
    wait_ping(&lab, 2, overlay(0));
    for _ in 0..3 {
        assert!(
            lab.ping(1, overlay(2), Duration::from_secs(1)).is_none(),
            "a client reached another through the exit's forwarding\n{}",
            lab.logs()
        );
    }
    let table = lab.status(0).unwrap()["nft_table"]
        .as_str()
        .unwrap()
        .to_owned();
    let rules = lab
        .sh(Some(0), &format!("nft list chain inet {table} confine"))
        .unwrap();
    assert!(
        rules
            .lines()
            .any(|l| l.contains("client isolation") && !l.contains("packets 0 ")),
        "{rules}"
    );
}

/// DNS servers of a full tunnel go to resolvconf (a stand-in that records its calls, in
/// the daemon's own mount namespace) and are withdrawn at exit and, after `kill -9`, at
/// the next start.
#[test]
fn full_tunnel_dns_is_set_through_resolvconf_and_withdrawn_after_exit_and_crash() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !std::path::Path::new("/usr/local/sbin").is_dir()
        || std::path::Path::new("/usr/sbin/resolvconf").exists()
        || std::path::Path::new("/sbin/resolvconf").exists()
    {
        eprintln!("SKIPPED: needs /usr/local/sbin and no resolvconf of the host's own");
        return;
    }
    let Some(mut lab) = lab("gwdns", 2) else {
        return;
    };
    let calls = lab.dir().join("resolvconf-calls");
    let stub = lab.dir().join("resolvconf");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\necho \"$@\" >> {0}\ncat >> {0}\n",
            calls.display()
        ),
    )
    .unwrap();
    let setup = format!(
        "mount -t tmpfs none /usr/local/sbin && cp {} /usr/local/sbin/resolvconf && \
         chmod 755 /usr/local/sbin/resolvconf && \
         if [ -d /run/systemd ]; then mount -t tmpfs none /run/systemd; fi",
        stub.display()
    );
    let client_args = [
        "client",
        "-r",
        "198.18.1.2:9000",
        "-t",
        "10.0.0.2/24",
        "-k",
        KEY,
        "--full-tunnel",
        "--dns",
        "10.0.0.1",
        "--dns",
        "fd00::1",
    ];
    let _server = lab.spawn(0, &server_args(KEY, &["--nat"])).unwrap();
    let read = || std::fs::read_to_string(&calls).unwrap_or_default();

    let client = lab.spawn_after(1, Some(&setup), &client_args).unwrap();
    wait_ping(&lab, 1, overlay(0));
    let set = read();
    assert!(
        set.contains("-a culvert0.culvert -m 0 -x\nnameserver 10.0.0.1\nnameserver fd00::1\n"),
        "{set}\n{}",
        lab.logs()
    );
    assert!(
        lab.status(1).unwrap()["gateway"]
            .as_str()
            .is_some_and(|g| g.contains("DNS 10.0.0.1 fd00::1"))
    );
    lab.stop(client, false);
    assert!(read().ends_with("-d culvert0.culvert -f\n"), "{}", read());

    // kill -9: the entry stays until the next start withdraws it, before adding its own.
    let client = lab.spawn_after(1, Some(&setup), &client_args).unwrap();
    wait_ping(&lab, 1, overlay(0));
    lab.stop(client, true);
    let crashed = read();
    assert!(crashed.ends_with("nameserver fd00::1\n"), "{crashed}");
    let client = lab.spawn_after(1, Some(&setup), &client_args).unwrap();
    wait_ping(&lab, 1, overlay(0));
    let after = read();
    assert!(
        after[crashed.len()..].starts_with("-d culvert0.culvert -f\n-a culvert0.culvert"),
        "{after}"
    );
    lab.stop(client, false);
    let all = read();
    assert_eq!(
        all.matches("-a culvert0.culvert").count(),
        all.matches("-d culvert0.culvert").count(),
        "every entry added was withdrawn: {all}"
    );
}

/// Hardening finding 4(a): a member advertises another client's connected LAN and the
/// server's, and the server's allow_routes lets it. No node lets such a route replace or
/// shadow its own network: each LAN stays reachable directly, status says why the route
/// was left out, and the LAN's own route is as it was after the attacker leaves.
#[test]
fn an_advertised_route_never_takes_over_a_nodes_own_lan() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("gwhijack", 3) else {
        return;
    };
    let lan_a = lab.add_lan_host(1, "192.168.50").unwrap();
    let _lan_s = lab.add_lan_host(0, "192.168.60").unwrap();
    let _server = lab
        .spawn(0, &server_args(KEY, &["--allow-route", "192.168.0.0/16"]))
        .unwrap();
    let _a = start_client(&mut lab, 1, "10.0.0.2/24", KEY);
    wait_ping(&lab, 1, overlay(0));
    let route_a = |lab: &Lab| lab.sh(Some(1), "ip -4 route show 192.168.50.0/24").unwrap();
    let before = route_a(&lab);
    assert!(before.contains("lan0"), "{before}");
    let attacker = start_client_with(
        &mut lab,
        2,
        "10.0.0.3/24",
        KEY,
        &["--advertise-route", "192.168.50.0/24,192.168.60.0/24"],
    );
    // The directory carries the routes (the server allowed them); A and the server each
    // leave out the one over their own LAN.
    let skipped = |lab: &Lab, host: usize| -> Vec<String> {
        lab.status(host).map_or(Vec::new(), |s| {
            s["routes_not_installed"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| format!("{} {}", r["prefix"], r["why"]))
                .collect()
        })
    };
    let end = Instant::now() + Duration::from_secs(15);
    while (skipped(&lab, 1).is_empty() || skipped(&lab, 0).is_empty()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (sa, ss) = (skipped(&lab, 1), skipped(&lab, 0));
    assert!(
        sa.iter()
            .any(|r| r.contains("192.168.50.0/24") && r.contains("lan0")),
        "A: {sa:?}\n{}",
        lab.logs()
    );
    assert!(
        ss.iter()
            .any(|r| r.contains("192.168.60.0/24") && r.contains("lan0")),
        "server: {ss:?}"
    );
    for (host, dst) in [(1, "192.168.50.2"), (0, "192.168.60.2")] {
        let way = lab.sh(Some(host), &format!("ip route get {dst}")).unwrap();
        assert!(way.contains("dev lan0"), "host {host} -> {dst}: {way}");
    }
    assert!(
        lab.ping_until(1, ip("192.168.50.2"), Duration::from_secs(5))
            .is_some(),
        "A lost its own LAN"
    );
    let t = lab
        .transfer(1, lan_a, ip("192.168.50.2"), 2 * MB, || ())
        .unwrap();
    assert_eq!(t.sent, t.received);
    // The attacker goes; A's LAN route is still its own.
    lab.stop(attacker, false);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(route_a(&lab), before, "A's LAN route changed");
}

/// Hardening finding 5: (a) TunnelVision — once the full tunnel runs, the LAN (a rogue
/// DHCP server's option 121, a LAN router) adds 0.0.0.0/1 + 128.0.0.0/1 and ::/1 +
/// 8000::/1 to the main table, more specific than any default route; (b) the client was
/// started with `net.ipv6.conf.default.disable_ipv6 = 1`, so its TUN came up without IPv6.
/// Neither may take traffic out in the clear; the connected LAN stays reachable directly.
#[test]
fn a_full_tunnel_is_not_bypassed_by_lan_routes_or_a_tun_without_ipv6() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("gwtv", 3) else {
        return;
    };
    lab.router_nft(ROUTER).unwrap();
    underlay_v6(&lab);
    let _lan = lab.add_lan_host(1, "192.168.50").unwrap();
    lab.sh(Some(1), "sysctl -qw net.ipv6.conf.default.disable_ipv6=1")
        .unwrap();
    let _server = lab.spawn(0, &server_args(KEY, &["--nat"])).unwrap();
    let _client = lab
        .spawn(
            1,
            &[
                "client",
                "-r",
                "198.18.1.2:9000",
                "-t",
                "10.0.0.2/24",
                "-k",
                KEY,
                "--full-tunnel",
            ],
        )
        .unwrap();
    wait_ping(&lab, 1, overlay(0));
    lab.sh(
        Some(1),
        "ip route add 0.0.0.0/1 via 198.18.2.1 dev eth0; \
         ip route add 128.0.0.0/1 via 198.18.2.1 dev eth0; \
         ip -6 route add ::/1 via fd01:2::1 dev eth0; ip -6 route add 8000::/1 via fd01:2::1 dev eth0",
    )
    .unwrap();
    let leaks = (
        counter(&lab, "test_gw", "leaked"),
        counter(&lab, "test_gw", "leaked6"),
    );
    // IPv4 to "the Internet" goes through the exit; IPv6 has no way out there (the exit
    // has no IPv6 uplink) and must not find one around the tunnel.
    assert!(
        lab.ping_until(1, ip(INTERNET), Duration::from_secs(10))
            .is_some(),
        "no answer through the exit\n{}",
        lab.logs()
    );
    for _ in 0..3 {
        assert!(!ping6(&lab, 1, INTERNET6), "IPv6 went around the tunnel");
    }
    let _ = lab.sh(
        Some(1),
        "for p in 53 443; do timeout 1 bash -c \"echo x > /dev/tcp/198.18.3.2/$p\"; \
         timeout 1 bash -c \"echo x > /dev/tcp/fd01:3::2/$p\"; done",
    );
    let routes = lab
        .sh(
            Some(1),
            "ip rule; ip -6 rule; ip route show table all; ip -6 route show table all",
        )
        .unwrap_or_default();
    assert_eq!(
        (
            counter(&lab, "test_gw", "leaked"),
            counter(&lab, "test_gw", "leaked6")
        ),
        leaks,
        "packets left the client in the clear: {}\n{routes}",
        lab.sh(
            None,
            "nft list set inet test_gw what; nft list set inet test_gw what6"
        )
        .unwrap_or_default()
    );
    // The connected LAN stays outside the tunnel.
    let way = lab.sh(Some(1), "ip route get 192.168.50.2").unwrap();
    assert!(way.contains("dev lan0"), "{way}\n{routes}");
    assert!(
        lab.ping_until(1, ip("192.168.50.2"), Duration::from_secs(5))
            .is_some()
    );
}
