//! End-to-end tests of FakeTCP and transport selection, in network namespaces.
//!
//! ```text
//!   host 0: server 10.0.0.1  198.18.1.2 --+
//!   host 1: client 10.0.0.2  198.18.2.2 --+-- router: drops UDP / enforces TCP state /
//!   host 2: client 10.0.0.3  198.18.3.2 --+           shapes / captures
//!   host 3: client 10.0.0.4  198.18.4.2 --+
//! ```

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use culvert::testbed::in_ns;
use culvert_sys::capture::{Capture, Direction};
use culvert_wire::tcp::{self, Segment, SegmentOptions, SegmentRepr, flags};

const BLOCK_UDP: &str = "table inet test_block {
  chain drop_udp { type filter hook forward priority 0; meta l4proto udp counter drop; }
}";

/// A router that passes only TCP flows a conntrack in strict mode considers valid, and
/// counts what it sees.
const STRICT_TCP: &str = "table inet test_strict {
  counter invalid {}
  counter rst {}
  counter udp_pkts {}
  counter new_syn {}
  chain forward { type filter hook forward priority 0; policy drop;
    ct state invalid counter name invalid drop
    tcp flags rst counter name rst
    meta l4proto udp counter name udp_pkts
    tcp flags & (fin|syn|rst|ack) == syn ct state new counter name new_syn accept
    ct state established,related accept
  }
}";

fn transport(lab: &Lab, host: usize, node: u64) -> Option<String> {
    let s = lab.status(host).ok()?;
    let p = s["peers"]
        .as_array()?
        .iter()
        .find(|p| p["node"] == node)?
        .clone();
    p["transport"].as_str().map(str::to_owned)
}

fn culvert_tables(lab: &Lab, host: usize) -> Vec<String> {
    lab.sh(Some(host), "nft list tables")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("culvert"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn udp_blocking_router_faketcp_and_auto_pass_udp_fails() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("fblk", 4) else {
        return;
    };
    lab.router_nft(BLOCK_UDP).unwrap();
    start_network(&mut lab, 0, &[]);
    start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &["--transport", "faketcp"]);
    start_client_with(&mut lab, 2, "10.0.0.3/24", KEY, &["--transport", "auto"]);
    let udp = start_client_with(&mut lab, 3, "10.0.0.4/24", KEY, &["--transport", "udp"]);
    wait_ping(&lab, 1, overlay(0));
    wait_ping(&lab, 2, overlay(0));
    for c in [1, 2] {
        let t = lab.transfer(c, 0, overlay(0), 50 * MB, || ()).unwrap();
        assert_eq!((&t.sent, t.bytes), (&t.received, 50 * MB), "client {c}");
        eprintln!(
            "client {c} over FakeTCP through a UDP block: {:.0} Mbit/s",
            t.mbps()
        );
    }
    assert_eq!(transport(&lab, 2, 0).as_deref(), Some("faketcp"));
    let s = lab.status(2).unwrap();
    let why = s["peers"][0]["last_switch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("no handshake answer over UDP"), "{why}");
    // The UDP-only client gets nowhere and says why.
    std::thread::sleep(Duration::from_secs(4));
    assert!(lab.ping(3, overlay(0), Duration::from_secs(1)).is_none());
    let log = lab.log(udp);
    assert!(
        log.contains("no answer from the server") && log.contains("UDP not blocked"),
        "{log}"
    );
}

/// A restarted server knows none of the old FakeTCP flows and, silent towards strangers,
/// answers nothing on them: a client must dial a new flow rather than talk into the old
/// one — both its idle standby flow (UDP fails after the restart) and the flow it was
/// using (the server crashes while UDP is blocked).
#[test]
fn clients_redial_faketcp_flows_a_restarted_server_forgot() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("fstale", 3) else {
        return;
    };
    let mut server = start_network(&mut lab, 2, &[])[0];
    for c in [1, 2] {
        wait_ping(&lab, c, overlay(0));
        // A client started before the server listened may have gone to FakeTCP; auto
        // brings it back to UDP after three answered probes (15 s).
        let on_udp = Instant::now();
        while transport(&lab, c, 0).as_deref() != Some("udp")
            && on_udp.elapsed() < Duration::from_secs(25)
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(transport(&lab, c, 0).as_deref(), Some("udp"));
    }
    for round in ["standby flow, then UDP blocked", "flow in use"] {
        lab.stop(server, true);
        server = lab.spawn(0, &server_args(KEY, &[])).unwrap();
        if round.starts_with("standby") {
            lab.router_nft(BLOCK_UDP).unwrap();
        }
        let restarted = Instant::now();
        for c in [1, 2] {
            let rtt = lab.ping_until(c, overlay(0), Duration::from_secs(12));
            assert!(
                rtt.is_some(),
                "client {c} did not recover ({round})\n{}",
                lab.logs()
            );
            assert_eq!(transport(&lab, c, 0).as_deref(), Some("faketcp"));
        }
        let took = restarted.elapsed();
        eprintln!(
            "both clients back over FakeTCP {:.1}s after the restart ({round})",
            took.as_secs_f64()
        );
    }
}

#[test]
fn strict_conntrack_passes_200mb_across_sequence_wraparound() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("fstr", 2) else {
        return;
    };
    lab.router_nft(STRICT_TCP).unwrap();
    lab.sh(
        None,
        "sysctl -qw net.netfilter.nf_conntrack_tcp_be_liberal=0",
    )
    .unwrap();
    start_network(&mut lab, 0, &[]);
    let router = lab.router();
    // Capture the start of the flow at the router, on the server's side.
    let captured = std::thread::scope(|s| {
        let cap = s.spawn(|| {
            in_ns(&router, || {
                let c = Capture::open("h0").unwrap();
                let mut pkts = Vec::new();
                let mut buf = vec![0u8; 65_536];
                let end = Instant::now() + Duration::from_secs(30);
                while pkts.len() < 400 && Instant::now() < end {
                    if let Ok(Some((n, dir))) = c.next(&mut buf, Duration::from_millis(200)) {
                        pkts.push((dir, buf[..n].to_vec()));
                    }
                }
                pkts
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        // 100 MB below 2^32: the sequence numbers wrap during the transfer.
        let isn = (u32::MAX - 100 * (1 << 20)).to_string();
        start_client_with(
            &mut lab,
            1,
            "10.0.0.2/24",
            KEY,
            &["--transport", "faketcp", "--faketcp-isn", &isn],
        );
        wait_ping(&lab, 1, overlay(0));
        let t = lab.transfer(1, 0, overlay(0), 200 * MB, || ()).unwrap();
        assert_eq!((&t.sent, t.bytes), (&t.received, 200 * MB));
        eprintln!("200 MB through strict conntrack: {:.0} Mbit/s", t.mbps());
        cap.join().unwrap()
    });
    assert_eq!(
        counter(&lab, "test_strict", "invalid"),
        0,
        "conntrack marked segments invalid"
    );
    assert_eq!(
        counter(&lab, "test_strict", "rst"),
        0,
        "an end host sent an RST"
    );
    assert_eq!(
        counter(&lab, "test_strict", "udp_pkts"),
        0,
        "UDP left a FakeTCP-only client"
    );
    assert_eq!(
        counter(&lab, "test_strict", "new_syn"),
        1,
        "one connection, opened once"
    );
    let flows = lab.status(1).unwrap()["faketcp_flows"].clone();
    let snd = flows[0]["snd_nxt"].as_u64().unwrap();
    assert!(
        snd < 150 * (1 << 20),
        "the sequence number did not wrap: {snd}"
    );
    // The wire: only TCP between the two hosts, valid checksums, a 3-way handshake first,
    // no recognisable culvert header bytes.
    let hosts: [IpAddr; 2] = [lab.ip(0).into(), lab.ip(1).into()];
    let between_hosts = |p: &[u8]| {
        p.len() >= 20 && p[0] >> 4 == 4 && {
            let (s, d) = (
                IpAddr::from([p[12], p[13], p[14], p[15]]),
                IpAddr::from([p[16], p[17], p[18], p[19]]),
            );
            hosts.contains(&s) && hosts.contains(&d)
        }
    };
    let segs: Vec<(Direction, Segment, Vec<u8>)> = captured
        .iter()
        .filter(|(_, p)| between_hosts(p))
        .map(|(d, p)| {
            let s = Segment::parse(p).unwrap_or_else(|e| panic!("not TCP between the hosts: {e}"));
            assert!(tcp::checksums_ok(p), "bad checksum");
            (*d, s, p.clone())
        })
        .collect();
    assert!(segs.len() > 100, "captured only {}", segs.len());
    let (syn, synack, ack) = (&segs[0].1, &segs[1].1, &segs[2].1);
    assert!(
        syn.flags == flags::SYN && syn.src.ip() == hosts[1],
        "first: {syn:?}"
    );
    assert_eq!(synack.flags, flags::SYN | flags::ACK);
    assert_eq!(synack.ack, syn.seq.wrapping_add(1));
    assert!(
        ack.has(flags::ACK)
            && ack.seq == syn.seq.wrapping_add(1)
            && ack.ack == synack.seq.wrapping_add(1)
    );
    let types: std::collections::BTreeSet<u8> = segs
        .iter()
        .filter(|(_, s, _)| s.payload.len() > 40)
        .map(|(_, s, p)| p[s.payload.start + 2])
        .collect();
    assert!(
        types.len() > 50,
        "the message type byte is visible: {types:?}"
    );
}

#[test]
fn auto_fails_over_mid_transfer_and_returns_to_udp() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("fauto", 2) else {
        return;
    };
    // Shaped to 60 Mbit/s so that the transfer lasts long enough to block UDP in the middle.
    lab.sh(None, "for i in h0 h1; do tc qdisc replace dev $i root tbf rate 60mbit burst 64kb latency 50ms; done").unwrap();
    start_network(&mut lab, 1, &[]);
    wait_ping(&lab, 1, overlay(0));
    assert_eq!(transport(&lab, 1, 0).as_deref(), Some("udp"));
    let t = lab
        .transfer(1, 0, overlay(0), 60 * MB, || {
            lab.router_nft(BLOCK_UDP).unwrap()
        })
        .unwrap();
    assert_eq!(
        t.sent, t.received,
        "the inner TCP connection did not survive the switch"
    );
    eprintln!(
        "transfer with a UDP block in the middle: longest stall {:.2} s",
        t.max_stall
    );
    assert!(t.max_stall < 5.0, "traffic stalled {:.1} s", t.max_stall);
    assert_eq!(transport(&lab, 1, 0).as_deref(), Some("faketcp"));
    assert_eq!(
        transport(&lab, 0, 1).as_deref(),
        Some("faketcp"),
        "the server did not follow"
    );
    let unblocked = Instant::now();
    lab.sh(None, "nft delete table inet test_block").unwrap();
    let end = unblocked + Duration::from_secs(30);
    while Instant::now() < end && transport(&lab, 1, 0).as_deref() != Some("udp") {
        std::thread::sleep(Duration::from_millis(250));
    }
    let took = unblocked.elapsed().as_secs_f64();
    eprintln!("back on UDP {took:.1} s after unblocking");
    assert_eq!(
        transport(&lab, 1, 0).as_deref(),
        Some("udp"),
        "auto did not return to UDP"
    );
    assert!(took < 25.0);
    let t = lab.transfer(1, 0, overlay(0), 5 * MB, || ()).unwrap();
    assert_eq!(t.sent, t.received);
}

#[test]
fn no_rules_or_devices_left_after_exit_or_kill() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("fclean", 2) else {
        return;
    };
    let server = start_network(&mut lab, 0, &[])[0];
    let client = start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &["--transport", "faketcp"]);
    wait_ping(&lab, 1, overlay(0));
    assert_eq!(culvert_tables(&lab, 0).len(), 1);
    assert_eq!(culvert_tables(&lab, 1).len(), 1);
    lab.stop(server, false);
    assert!(
        culvert_tables(&lab, 0).is_empty(),
        "the server left {:?}",
        culvert_tables(&lab, 0)
    );
    assert!(
        lab.sh(Some(0), "ip link show culvert0").is_err(),
        "the server left its TUN"
    );
    lab.stop(client, true);
    assert_eq!(
        culvert_tables(&lab, 1).len(),
        1,
        "kill -9 cannot clean up: the table stays until the next start"
    );
    let server = start_network(&mut lab, 0, &[])[0];
    let client = start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &["--transport", "faketcp"]);
    wait_ping(&lab, 1, overlay(0));
    assert_eq!(
        culvert_tables(&lab, 1).len(),
        1,
        "the restart replaced the stale table"
    );
    lab.stop(client, false);
    lab.stop(server, false);
    for h in [0, 1] {
        assert!(
            culvert_tables(&lab, h).is_empty(),
            "host {h} left {:?}",
            culvert_tables(&lab, h)
        );
        assert!(lab.sh(Some(h), "ip link show culvert0").is_err());
    }
}

/// GRO on the receiver (and TSO off on the router's side, which veth needs before it
/// coalesces): the transfer must still arrive intact. Whether this kernel merges FakeTCP's
/// segments is up to it (the daemon reports `faketcp_merged_records`); the splitting itself
/// is tested deterministically in `faketcp::tests::merged_segments_are_split_into_messages`.
#[test]
fn transfer_survives_gro_on_the_receiver() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("fgro", 2) else {
        return;
    };
    lab.sh(Some(0), "ethtool -K eth0 gro on").unwrap();
    lab.sh(None, "ethtool -K h0 tso off gso off").unwrap();
    start_network(&mut lab, 0, &[]);
    start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &["--transport", "faketcp"]);
    wait_ping(&lab, 1, overlay(0));
    let t = lab.transfer(1, 0, overlay(0), 50 * MB, || ()).unwrap();
    assert_eq!(t.sent, t.received);
    let merged = lab.status(0).unwrap()["faketcp_merged_records"]
        .as_u64()
        .unwrap();
    eprintln!("GRO merged {merged} messages behind others");
}

#[test]
fn garbage_rst_fin_and_syn_floods_do_not_hurt_the_flow() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("fatk", 2) else {
        return;
    };
    let server = start_network(&mut lab, 0, &[])[0];
    start_client_with(&mut lab, 1, "10.0.0.2/24", KEY, &["--transport", "faketcp"]);
    wait_ping(&lab, 1, overlay(0));
    let before = lab.status(1).unwrap()["faketcp_flows"][0]["local"]
        .as_str()
        .unwrap()
        .to_owned();
    let client: SocketAddr = before.parse().unwrap();
    let target: SocketAddr = SocketAddr::new(lab.ip(0).into(), 9000);
    let router = lab.router();
    in_ns(&router, || {
        let raw = culvert_sys::raw::RawSender::open(true, false).unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let send = |src: SocketAddr, seq: u32, ack: u32, f: u8, payload: &[u8]| {
            let repr = SegmentRepr {
                src,
                dst: target,
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
            let _ = raw.send_batch(&[(target.ip(), &p)]);
        };
        for i in 0..20_000u32 {
            let r = rnd();
            let junk: Vec<u8> = (0..(r % 200) as usize)
                .map(|k| (r >> (k % 50)) as u8)
                .collect();
            match i % 5 {
                // Spoofed as the real client: RSTs, FINs, far-off data.
                0 => send(client, r as u32, 0, flags::RST, &[]),
                1 => send(
                    client,
                    r as u32,
                    (r >> 32) as u32,
                    flags::FIN | flags::ACK,
                    &[],
                ),
                2 => send(
                    client,
                    r as u32,
                    (r >> 32) as u32,
                    flags::ACK | flags::PSH,
                    &junk,
                ),
                // A SYN flood and forged ACKs from everywhere.
                3 => send(
                    SocketAddr::new(
                        [203, 0, 113, (r % 250) as u8].into(),
                        1024 + (r % 60_000) as u16,
                    ),
                    r as u32,
                    0,
                    flags::SYN,
                    &[],
                ),
                _ => send(
                    SocketAddr::new(
                        [203, 0, 113, (r % 250) as u8].into(),
                        1024 + (r % 60_000) as u16,
                    ),
                    r as u32,
                    (r >> 32) as u32,
                    flags::ACK,
                    &junk,
                ),
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(lab.running(server), "server died\n{}", lab.logs());
    let s = lab.status(0).unwrap();
    let drops = |k: &str| s["drops"][k].as_u64().unwrap_or(0);
    eprintln!("server drops after the attack: {}", s["drops"]);
    assert!(
        drops("tcp_rst") >= 3_000 && drops("tcp_no_flow") >= 3_000,
        "{}",
        s["drops"]
    );
    assert!(
        s["faketcp_flows"].as_array().unwrap().len() <= 2,
        "SYNs created state"
    );
    wait_ping(&lab, 1, overlay(0));
    let after = lab.status(1).unwrap()["faketcp_flows"][0]["local"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(before, after, "the flow was torn down and rebuilt");
    let t = lab.transfer(1, 0, overlay(0), 10 * MB, || ()).unwrap();
    assert_eq!(t.sent, t.received);
}
