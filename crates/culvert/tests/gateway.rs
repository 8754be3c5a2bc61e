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

use std::time::Duration;

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
    lab.stop(client, true);
    lab.stop(server, true);
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
    for black_hole in [true, false] {
        let Some(mut lab) = lab("gwmtu", 2) else {
            return;
        };
        mtu_router(&lab, black_hole);
        start_network(&mut lab, 1, &[]);
        wait_ping(&lab, 1, overlay(0));
        // Mid-transfer, the router's link to the client narrows to 1280 bytes.
        let t = lab
            .transfer(0, 1, overlay(1), 20 * MB, || {
                lab.sh(None, "ip link set h1 mtu 1280").unwrap();
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
        assert_eq!((t.bytes, &t.sent), (20 * MB, &t.received));
        eprintln!(
            "black hole {black_hole}: 20 MB intact, longest stall {:.2} s, {:.0} Mbit/s",
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
