//! The trust model end to end: each test performs an attack on real daemons in namespaces
//! and checks what the victims and the network see.
//!
//! ```text
//!   host 0: server 10.0.0.1  198.18.1.2 --+
//!   host 1: client 10.0.0.2  198.18.2.2 --+-- router 198.18.N.1 (the attacker's seat)
//!   host 2: client 10.0.0.3  198.18.3.2 --+
//! ```

mod common;

use std::net::{SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use culvert::testbed::{Spoofer, cpu_seconds, forged_join, in_ns, passphrase_psk, proc_field};
use culvert_sys::capture::{Capture, Direction};

const SERVER: &str = "198.18.1.2:9000";

/// The parts of the server's view that a claim must not change.
fn server_view(lab: &Lab) -> Vec<(u64, String, Vec<String>, String)> {
    let s = lab.status(0).unwrap();
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["node"].as_u64().unwrap(),
                p["public_key"].as_str().unwrap().to_owned(),
                p["addresses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
                p["endpoint"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn client_key(lab: &Lab, host: usize) -> culvert_core::PublicKey {
    lab.status(host).unwrap()["public_key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Bytes of UDP and TCP payload that `from` sent to `to` on the router's interface `iface`
/// while `f` ran, and the number of TCP segments.
fn answered<T: Send>(
    lab: &Lab,
    iface: &str,
    from: [u8; 4],
    to: [u8; 4],
    f: impl FnOnce() -> T + Send,
) -> (usize, usize, T) {
    let router = lab.router();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let cap = s.spawn(|| {
            in_ns(&router, || {
                let c = Capture::open(iface).unwrap();
                let mut buf = vec![0u8; 65536];
                let (mut payload, mut segments) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(Some((n, Direction::In))) =
                        c.next(&mut buf, Duration::from_millis(50))
                    {
                        let p = &buf[..n];
                        if n < 20 || p[0] >> 4 != 4 || p[12..16] != from || p[16..20] != to {
                            continue;
                        }
                        let ihl = usize::from(p[0] & 0x0f) * 4;
                        match p[9] {
                            17 => payload += n.saturating_sub(ihl + 8),
                            6 => {
                                segments += 1;
                                let off = usize::from(p[ihl + 12] >> 4) * 4;
                                payload += n.saturating_sub(ihl + off);
                            }
                            _ => {}
                        }
                    }
                }
                (payload, segments)
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        let out = f();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (payload, segments) = cap.join().unwrap();
        (payload, segments, out)
    })
}

/// The session index in the first data message the router forwards out of `iface` (to
/// the server on `h0`, to client 1 on `h1`) while client 1 pings: what an on-path
/// observer learns.
fn observed_index(lab: &Lab, iface: &str) -> [u8; 4] {
    let router = lab.router();
    std::thread::scope(|sc| {
        let cap = sc.spawn(|| {
            in_ns(&router, || {
                let c = Capture::open(iface).unwrap();
                let mut buf = vec![0u8; 65536];
                let end = Instant::now() + Duration::from_secs(10);
                while Instant::now() < end {
                    if let Ok(Some((n, Direction::Out))) =
                        c.next(&mut buf, Duration::from_millis(100))
                    {
                        let p = &buf[..n];
                        let ihl = usize::from(p[0] & 0x0f) * 4;
                        let ports = &p[ihl..ihl + 4];
                        let culvert = ports[..2] == [0x23, 0x28] || ports[2..] == [0x23, 0x28];
                        if p[9] == 17 && culvert && p.get(ihl + 8) == Some(&4) {
                            return p[ihl + 12..ihl + 16].try_into().ok();
                        }
                    }
                }
                None
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..5 {
            let _ = lab.ping(1, overlay(0), Duration::from_millis(200));
        }
        cap.join().unwrap()
    })
    .expect("no data message seen")
}

#[test]
fn a_forged_join_with_a_victims_public_key_changes_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("forge", 3) else {
        return;
    };
    start_network(&mut lab, 2, &[]);
    wait_ping(&lab, 1, overlay(0));
    wait_ping(&lab, 2, overlay(1));
    let before = server_view(&lab);
    let dir = lab.status(0).unwrap()["directory_version"].clone();
    let victim = client_key(&lab, 1);
    let psk = passphrase_psk(KEY);
    let claims: Vec<Vec<u8>> = [
        vec!["10.0.0.66/24".parse().unwrap()],
        vec!["10.0.0.2/24".parse().unwrap()],
        vec!["10.0.0.3/24".parse().unwrap()],
    ]
    .iter()
    .enumerate()
    .map(|(i, a)| forged_join(&psk, &victim, a, 77 + i as u32))
    .collect();
    in_ns(&lab.router(), || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for c in &claims {
            s.send_to(c, SERVER).unwrap();
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let s = lab.status(0).unwrap();
    assert!(
        s["pending_handshakes"].as_u64().unwrap() >= 1,
        "the claims were not even answered: {s}"
    );
    assert_eq!(
        server_view(&lab),
        before,
        "a claim changed the server's view"
    );
    assert_eq!(s["directory_version"], dir, "the directory moved");
    assert!(
        lab.ping(0, ip("10.0.0.66"), Duration::from_secs(1))
            .is_none()
    );
    // The victim keeps its session (no new handshake) and its traffic flows both ways.
    let victim_log = lab.log(1);
    wait_ping(&lab, 1, overlay(0));
    wait_ping(&lab, 2, overlay(1));
    assert!(!lab.log(1)[victim_log.len()..].contains("starting a new handshake"));
}

#[test]
fn a_router_that_duplicates_every_handshake_packet_breaks_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("dup", 3) else {
        return;
    };
    lab.router_nft(
        "table ip twice {\n chain copies { type filter hook forward priority 0; policy accept;\n \
         udp dport 9000 @th,64,8 1 counter dup to ip daddr\n \
         udp sport 9000 @th,64,8 2 counter dup to ip daddr\n }\n}\n",
    )
    .unwrap();
    start_network(&mut lab, 2, &[]);
    wait_ping(&lab, 1, overlay(0));
    wait_ping(&lab, 2, overlay(0));
    // Client to client: an end-to-end handshake through the hub, too.
    wait_ping(&lab, 1, overlay(2));
    let t = lab.transfer(1, 2, overlay(2), 5 * MB, || ()).unwrap();
    assert_eq!(t.sent, t.received);
    let s = lab.status(0).unwrap();
    assert!(
        drops(&s, "handshake_replay") > 0,
        "nothing was duplicated: {}",
        s["drops"]
    );
}

#[test]
fn a_spoofed_notice_from_the_servers_address_changes_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("notice", 2) else {
        return;
    };
    start_network(&mut lab, 1, &[]);
    wait_ping(&lab, 1, overlay(0));
    let endpoint: SocketAddrV4 = lab.status(0).unwrap()["peers"][0]["endpoint"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let before = lab.log(1).len();
    let unknown = drops(&lab.status(1).unwrap(), "unknown_type");
    // The index the client receives its session under, as an on-path observer sees it.
    let router = lab.router();
    let index = observed_index(&lab, "h1");
    // Version 1's "unknown session" about that index, from the server's own address and
    // port: version 1 made the client drop its session and rejoin.
    in_ns(&router, || {
        let spoofer = Spoofer::new().unwrap();
        let mut notice = vec![5, 2, 0, 0];
        notice.extend_from_slice(&index);
        for _ in 0..64 {
            spoofer
                .send(SERVER.parse().unwrap(), endpoint, &notice)
                .unwrap();
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let log = &lab.log(1)[before..];
    assert!(
        !log.contains("reconnect") && !log.contains("handshake"),
        "the client reacted:\n{log}"
    );
    assert!(drops(&lab.status(1).unwrap(), "unknown_type") >= unknown + 64);
    wait_ping(&lab, 1, overlay(0));
}

#[test]
fn a_hub_granting_a_public_prefix_is_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("grant", 2) else {
        return;
    };
    let server_key =
        culvert_core::StaticSecret::from_bytes(culvert_core::rng::Rng::from_seed([1; 32]).array());
    let client_key =
        culvert_core::StaticSecret::from_bytes(culvert_core::rng::Rng::from_seed([2; 32]).array());
    let dir = lab.dir().to_owned();
    for (file, key) in [("server.key", &server_key), ("client.key", &client_key)] {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // Private keys readable by others are refused, as ssh refuses them.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(file))
            .and_then(|mut f| f.write_all(key.to_base64().as_str().as_bytes()))
            .unwrap();
    }
    let cfg = format!(
        "listen = \"0.0.0.0:9000\"\naddress = [\"10.0.0.1/24\"]\nprivate_key_file = \"{}\"\n\n\
         [[peer]]\npublic_key = \"{}\"\naddress = [\"10.0.0.2/24\", \"8.8.8.8/1\"]\n",
        dir.join("server.key").display(),
        client_key.public_key()
    );
    std::fs::write(dir.join("server.toml"), cfg).unwrap();
    lab.spawn(
        0,
        &["server", "-c", dir.join("server.toml").to_str().unwrap()],
    )
    .unwrap();
    let pk = server_key.public_key().to_string();
    let client = lab
        .spawn(
            1,
            &[
                "client",
                "-r",
                SERVER,
                "--private-key-file",
                dir.join("client.key").to_str().unwrap(),
                "--server-key",
                &pk,
            ],
        )
        .unwrap();
    wait_ping(&lab, 1, overlay(0));
    let log = lab.log(client);
    assert!(log.contains("refused granted addresses outside"), "{log}");
    let route = lab.sh(Some(1), "ip route get 8.8.8.8").unwrap();
    assert!(
        !route.contains("culvert0"),
        "8.8.8.8 routes into the tunnel: {route}"
    );
    let addrs = lab.sh(Some(1), "ip -o addr show dev culvert0").unwrap();
    assert!(!addrs.contains("8.8.8.8"), "{addrs}");
}

#[test]
fn probes_of_every_kind_get_zero_bytes_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("probe", 2) else {
        return;
    };
    start_network(&mut lab, 1, &[]);
    wait_ping(&lab, 1, overlay(0));
    let router = lab.router();
    let server = [198, 18, 1, 2];
    let scanner = [198, 18, 1, 1];
    // Every message type, random and truncated bodies, over UDP; then the same bytes
    // inside a TCP connection to the FakeTCP port.
    let (udp_bytes, _, ()) = answered(&lab, "h0", server, scanner, || {
        in_ns(&router, || {
            let s = UdpSocket::bind("198.18.1.1:0").unwrap();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for t in 0u8..=8 {
                for len in [
                    0usize, 1, 4, 7, 8, 12, 16, 24, 31, 32, 48, 52, 100, 121, 122, 200, 720, 1024,
                    1400,
                ] {
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
                    let _ = s.send_to(&m, SERVER);
                }
            }
        });
    });
    assert_eq!(udp_bytes, 0, "UDP bytes answered to probes");
    let (tcp_bytes, segments, ()) = answered(&lab, "h0", server, scanner, || {
        in_ns(&router, || {
            let mut c =
                TcpStream::connect_timeout(&SERVER.parse().unwrap(), Duration::from_secs(2))
                    .unwrap();
            for t in 0u8..=8 {
                let _ = std::io::Write::write_all(
                    &mut c,
                    &[t, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9, 9, 9, 9, 9],
                );
            }
            c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut buf = [0u8; 64];
            let got = std::io::Read::read(&mut c, &mut buf).unwrap_or(0);
            assert_eq!(got, 0, "the FakeTCP port answered bytes");
        });
    });
    assert!(segments >= 1, "no SYN-ACK: the port should look open");
    assert_eq!(tcp_bytes, 0, "TCP payload answered to probes");
    // nmap's scans and version probes, where nmap is installed (CI installs it).
    if std::process::Command::new("nmap")
        .arg("--version")
        .output()
        .is_ok()
    {
        let (bytes, _, out) = answered(&lab, "h0", server, scanner, || {
            lab.sh(None, "nmap -n -Pn -sU -sV --version-intensity 2 --max-retries 1 -p 9000 198.18.1.2; nmap -n -Pn -sT -sV --version-intensity 2 -p 9000 198.18.1.2").unwrap_or_default()
        });
        eprintln!("{out}");
        assert_eq!(bytes, 0, "payload bytes answered to nmap:\n{out}");
    }
    wait_ping(&lab, 1, overlay(0));
}

#[test]
fn a_faketcp_handshake_flood_from_one_address_does_not_hurt_a_transfer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("synflood", 2) else {
        return;
    };
    lab.spawn(0, &server_args(KEY, &[])).unwrap();
    start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &["--transport", "faketcp"]);
    wait_ping(&lab, 1, overlay(0));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let router = lab.router();
    let (t, attempts) = std::thread::scope(|s| {
        // 40 threads of back-to-back connects from the router's one address: about
        // 1,000 handshakes a second while they last.
        let flooders: Vec<_> = (0..40)
            .map(|_| {
                s.spawn(|| {
                    in_ns(&router, || {
                        let mut n = 0u32;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let _ = TcpStream::connect_timeout(
                                &SERVER.parse().unwrap(),
                                Duration::from_millis(40),
                            );
                            n += 1;
                        }
                        n
                    })
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        let t = lab.transfer(1, 0, overlay(0), 50 * MB, || ());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let attempts: u32 = flooders.into_iter().map(|f| f.join().unwrap()).sum();
        (t, attempts)
    });
    let t = t.unwrap();
    eprintln!(
        "{attempts} connects; transfer {:.0} Mbit/s, longest stall {:.2} s",
        t.mbps(),
        t.max_stall
    );
    assert_eq!((t.sent, t.bytes), (t.received, 50 * MB));
    let s = lab.status(0).unwrap();
    assert!(
        drops(&s, "rate_limited") > 0,
        "the flood was not budgeted: {}",
        s["drops"]
    );
    wait_ping(&lab, 1, overlay(0));
}

#[test]
fn forged_parity_floods_cost_bounded_cpu_and_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("parity", 2) else {
        return;
    };
    let ids = start_network(&mut lab, 1, &[]);
    wait_ping(&lab, 1, overlay(0));
    let pid = lab.pid(ids[0]).unwrap();
    // The index the server receives data under, as an on-path observer sees it.
    let router = lab.router();
    let index = u32::from_be_bytes(observed_index(&lab, "h0"));
    let rss_before: u64 = proc_field(pid, "VmRSS")
        .unwrap()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let sent = in_ns(&router, || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut p = vec![0u8; culvert_wire::message::FEC_OVERHEAD + 1300];
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(3) {
            for j in 0..20u8 {
                culvert_wire::message::emit_fec_header(&mut p, 20, 20, j, index, n * 20);
                p[40] = j;
                let _ = s.send_to(&p, SERVER);
            }
            n += 1;
            if n.is_multiple_of(50) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        n * 20
    });
    let cpu = cpu_seconds(pid) - cpu_before;
    let rss_after: u64 = proc_field(pid, "VmRSS")
        .unwrap()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    let s = lab.status(0).unwrap();
    let bad = drops(&s, "fec_bad_parity");
    eprintln!(
        "{sent} forged parity messages in 3 s: server CPU {cpu:.2} s ({:.1} µs each), RSS {rss_before} -> {rss_after} kB, {bad} dropped as fec_bad_parity",
        cpu * 1e6 / sent as f64
    );
    assert!(
        bad * 10 >= sent * 9 || bad > 10_000,
        "{bad} of {sent} counted"
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "memory grew by {} kB",
        rss_after - rss_before
    );
    assert!(
        cpu * 1e6 / (sent as f64) < 20.0,
        "more than an AEAD check per forgery"
    );
    assert_eq!(
        s["peers"][0]["fec"]["parity_received"], 0,
        "a forgery reached the decoder"
    );
    wait_ping(&lab, 1, overlay(0));
}

#[test]
fn idle_connections_to_the_metrics_port_do_not_stall_the_tunnel() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("idlemet", 2) else {
        return;
    };
    start_network(&mut lab, 1, &["--metrics", "198.18.1.2:9100"]);
    wait_ping(&lab, 1, overlay(0));
    let rtts = |lab: &Lab| -> Vec<f64> {
        (0..50)
            .filter_map(|_| {
                std::thread::sleep(Duration::from_millis(100));
                lab.ping(1, overlay(0), Duration::from_secs(1))
            })
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect()
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::INFINITY)
    };
    let quiet = median(rtts(&lab));
    let router = lab.router();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (during, lost) = std::thread::scope(|s| {
        let idle = s.spawn(|| {
            in_ns(&router, || {
                let mut open = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for _ in 0..20 {
                        if let Ok(c) = TcpStream::connect("198.18.1.2:9100") {
                            open.push(c);
                        }
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                open.len()
            })
        });
        std::thread::sleep(Duration::from_secs(1));
        let v = rtts(&lab);
        let lost = 50 - v.len();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let opened = idle.join().unwrap();
        eprintln!("{opened} idle connections opened");
        (median(v), lost)
    });
    eprintln!(
        "overlay RTT median: {quiet:.3} ms quiet, {during:.3} ms with idle metrics connections"
    );
    assert_eq!(lost, 0, "pings lost while idle connections were open");
    assert!(during < quiet + 20.0, "RTT {quiet:.3} -> {during:.3} ms");
    // And the metrics still answer.
    let m = in_ns(&router, || {
        let mut c = TcpStream::connect("198.18.1.2:9100").unwrap();
        std::io::Write::write_all(&mut c, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut out);
        out
    });
    assert!(
        m.contains("culvert_packets_dropped_total") || m.contains("culvert_info"),
        "{m}"
    );
}

#[test]
fn the_daemon_drops_root_and_still_cleans_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("user", 2) else {
        return;
    };
    let server = lab
        .spawn(0, &server_args(KEY, &["--user", "nobody"]))
        .unwrap();
    let client = start_client_with(
        &mut lab,
        1,
        "10.0.0.2/24",
        KEY,
        &[
            "--user",
            "nobody",
            "--transport",
            "faketcp",
            "--tun-name",
            "cvtuser",
        ],
    );
    wait_ping(&lab, 1, overlay(0));
    let nobody = culvert_sys::privilege::lookup("nobody").unwrap().unwrap();
    for id in [server, client] {
        let pid = lab.pid(id).unwrap();
        let uid = proc_field(pid, "Uid").unwrap();
        assert!(
            uid.split_whitespace().all(|u| u == nobody.uid.to_string()),
            "uid {uid}"
        );
        let caps = u64::from_str_radix(&proc_field(pid, "CapEff").unwrap(), 16).unwrap();
        assert_eq!(
            caps,
            (1 << 12) | (1 << 13),
            "effective capabilities {caps:#x}"
        );
        let bounding = u64::from_str_radix(&proc_field(pid, "CapBnd").unwrap(), 16).unwrap();
        assert_eq!(
            bounding,
            (1 << 12) | (1 << 13),
            "bounding set {bounding:#x}"
        );
        assert_eq!(proc_field(pid, "NoNewPrivs").as_deref(), Some("1"));
    }
    // FakeTCP works unprivileged, and `culvert status` (root) trusts the daemon's socket.
    let s = lab.status(1).unwrap();
    assert!(s.is_array() || s["instance"].is_string());
    let t = lab.transfer(1, 0, overlay(0), 5 * MB, || ()).unwrap();
    assert_eq!(t.sent, t.received);
    // At exit the unprivileged daemon still removes its nftables table and TUN device.
    lab.stop(client, false);
    std::thread::sleep(Duration::from_millis(300));
    let tables = lab.sh(Some(1), "nft list tables").unwrap();
    assert!(!tables.contains("culvert_"), "left behind: {tables}");
    let links = lab.sh(Some(1), "ip -o link").unwrap();
    assert!(
        !links.contains("cvtuser") && !links.contains("culvert0"),
        "{links}"
    );
}

#[test]
fn tcp_to_the_faketcp_port_over_the_tunnel_reaches_a_real_service() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("tunport", 2) else {
        return;
    };
    start_network(&mut lab, 1, &[]);
    wait_ping(&lab, 1, overlay(0));
    // A real TCP service on the server's overlay address, same port as FakeTCP: culvert's
    // rule and packet socket match only underlay traffic to this host, never the TUN.
    let server_ns = lab.ns(0);
    let listener = in_ns(&server_ns, || {
        std::net::TcpListener::bind("10.0.0.1:9000").unwrap()
    });
    let echo = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut c, &mut buf).unwrap();
        std::io::Write::write_all(&mut c, &buf).unwrap();
    });
    let got = in_ns(&lab.ns(1), || {
        let mut c =
            TcpStream::connect_timeout(&"10.0.0.1:9000".parse().unwrap(), Duration::from_secs(5))
                .expect("no connection to the real service over the tunnel");
        std::io::Write::write_all(&mut c, b"hello").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut c, &mut buf).unwrap();
        buf
    });
    echo.join().unwrap();
    assert_eq!(&got, b"hello");
    // The client's own standby flow (auto) comes from its underlay address; none may come
    // from the overlay.
    let status = lab.status(0).unwrap();
    let overlay_flows: Vec<&serde_json::Value> = status["faketcp_flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["remote"]
                .as_str()
                .is_some_and(|r| r.starts_with("10.0.0."))
        })
        .collect();
    assert!(
        overlay_flows.is_empty(),
        "culvert's FakeTCP took the overlay connection: {overlay_flows:?}"
    );
}

#[test]
fn another_local_user_can_neither_use_nor_squat_the_control_socket() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("ctlsock", 2) else {
        return;
    };
    start_network(&mut lab, 1, &[]);
    wait_ping(&lab, 1, overlay(0));
    let ns = lab.ns(1);
    let dir = culvert_sys::control::dir(&ns);
    let as_nobody = |cmd: &str| as_nobody(&ns, cmd).output().unwrap();
    // Reading the daemon's status: refused.
    let out = as_nobody(&format!("{BIN} status"));
    assert!(
        !out.status.success(),
        "nobody read the status: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Squatting: a socket of one's own in the control directory (before or beside the
    // daemon's) cannot be made.
    let squat = format!(
        "python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.bind('{}/fake.sock')\"",
        dir.display()
    );
    let out = as_nobody(&squat);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("PermissionError"),
        "nobody could make a socket in {} (or python3 is missing): {err}",
        dir.display()
    );
    // Root still reads it, and only real daemons are listed.
    assert_eq!(lab.status(1).unwrap()["role"], "client");
}

/// `sh -c cmd` in network namespace `ns` as the user nobody (65534): another local user,
/// or code running as a daemon started with `--user nobody`.
fn as_nobody(ns: &str, cmd: &str) -> std::process::Command {
    let mut c = std::process::Command::new("ip");
    c.args([
        "netns",
        "exec",
        ns,
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "sh",
        "-c",
        cmd,
    ]);
    c
}

/// Hardening finding 1: code running as the daemon's unprivileged user (`--user nobody`)
/// tries to get root from the next root start. (a) It plants a record of gateway changes
/// whose "sysctl" is a path out of `/proc/sys`, where a crashed run's record is looked for;
/// (b) it swaps the control socket for a link to a root-only file between the bind and
/// the hand-over to the daemon's user. Neither may write, chown or chmod anything of
/// root's, and the daemon still serves its status.
#[test]
fn the_daemons_user_cannot_get_root_from_the_next_root_start() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("rootst", 1) else {
        return;
    };
    let root_only = lab.dir().join("root-only");
    std::fs::create_dir(&root_only).unwrap();
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o700)).unwrap();
    let pwned = root_only.join("written-by-root");
    let victim = root_only.join("victim");
    std::fs::write(&victim, "root's own").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let args = server_args(KEY, &["--user", "nobody", "--nat"]);
    let server = lab.spawn(0, &args).unwrap();
    let up = |lab: &Lab| {
        let end = Instant::now() + Duration::from_secs(10);
        while lab.status(0).is_err() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        lab.status(0)
    };
    if let Err(e) = up(&lab) {
        panic!("the server did not start: {e}\n{}", lab.log(server));
    }
    let ns = lab.ns(0);
    let run = culvert_sys::control::dir(&ns);
    let state = lab.dir().join("state-host0");
    // (a) The record: "undo" a sysctl whose name leads from /proc/sys to a root-only
    // file; planted where a crashed run's record was read, and where it is now kept.
    let mut parts = vec!["..".to_owned(), "..".to_owned()];
    parts.extend(
        pwned
            .iter()
            .skip(1)
            .map(|c| c.to_string_lossy().into_owned()),
    );
    let record = serde_json::json!({
        "sysctls": [[parts, "pwned"]], "rules": [], "routes": [], "resolvconf": null
    })
    .to_string();
    let planted = as_nobody(
        &ns,
        &format!(
            "for f in {s}/gateway-changes.json {r}/culvert0.gateway.json; do \
             rm -f $f; printf '%s' '{record}' > $f; done; true",
            s = state.display(),
            r = run.display()
        ),
    )
    .output()
    .unwrap();
    eprintln!("planting: {}", String::from_utf8_lossy(&planted.stderr));
    // A crash leaves whatever the record says to undo.
    lab.stop(server, true);
    // (b) As soon as the next run's socket appears, it becomes a link to the victim.
    let sock = run.join("culvert0.sock");
    let mut swapper = as_nobody(
        &ns,
        &format!(
            "S={s}; rm -f $S; end=$(($(date +%s) + 15)); \
             while [ ! -S $S ] && [ $(date +%s) -lt $end ]; do :; done; \
             rm -f $S && ln -s {v} $S",
            s = sock.display(),
            v = victim.display()
        ),
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let again = lab.spawn(0, &args).unwrap();
    let status = up(&lab);
    let _ = swapper.kill();
    let _ = swapper.wait();
    std::thread::sleep(Duration::from_millis(500));
    let meta = std::fs::metadata(&victim).unwrap();
    let log = lab.log(again);
    assert!(
        !pwned.exists(),
        "root wrote a file the daemon's user named: {:?}\n{log}",
        std::fs::read_to_string(&pwned)
    );
    assert_eq!(
        (meta.uid(), meta.mode() & 0o7777),
        (0, 0o600),
        "root handed its file to the daemon's user\n{log}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's own");
    assert!(
        status.is_ok_and(|s| s["role"] == "server"),
        "the daemon does not answer on its control socket\n{log}"
    );
}
