//! End-to-end tests of forward error correction, in network namespaces: the router drops
//! a share of the forwarded packets in both directions (nftables `numgen random`).
//!
//! ```text
//!   host 0: server 10.0.0.1  198.18.1.2 --+-- router: drops N per mille, both ways
//!   host 1: client 10.0.0.2  198.18.2.2 --+
//! ```

mod common;

use common::*;
use culvert_core::fec;

/// Packets per stream, as the issue asks.
const PACKETS: u32 = 20_000;
/// Stream pace: 5,000 packets of 1,000 bytes per second (40 Mbit/s).
const RATE: u32 = 5_000;
const SIZE: usize = 1_000;

/// Makes the router drop `per_mille` of every forwarded packet (0: none).
fn set_loss(lab: &Lab, per_mille: u32) {
    let _ = lab.sh(None, "nft delete table inet test_loss");
    if per_mille > 0 {
        lab.router_nft(&format!(
            "table inet test_loss {{
  chain forward {{ type filter hook forward priority -10;
    numgen random mod 1000 < {per_mille} counter drop
  }}
}}"
        ))
        .unwrap();
    }
}

/// Loss of a UDP stream from the client to the server, through the tunnel: of the
/// datagrams culvert read from the TUN device (on a CPU-starved test machine the kernel
/// may drop some before the daemon runs; that is not link loss FEC could recover).
fn stream_loss(lab: &Lab) -> f64 {
    let s = lab
        .udp_stream(1, 0, overlay(0), PACKETS, SIZE, RATE)
        .unwrap();
    if s.not_read > 0 {
        eprintln!(
            "note: the client host dropped {} of {} datagrams before culvert read them (CPU starved)",
            s.not_read, s.sent
        );
    }
    assert!(
        s.not_read <= s.sent / 2,
        "the test host is too starved of CPU to measure: {s:?}"
    );
    s.tunnel_loss()
}

/// The client's FEC counters for the server: (data shards, parity shards).
fn sent_shards(lab: &Lab) -> (u64, u64) {
    let s = lab.status(1).unwrap();
    let f = &s["peers"][0]["fec"];
    (
        f["data_shards"].as_u64().unwrap(),
        f["parity_shards"].as_u64().unwrap(),
    )
}

/// What the server measured on the client's traffic before recovery: (expected, missing).
fn measured_loss(lab: &Lab) -> (u64, u64) {
    let s = lab.status(0).unwrap();
    let f = &s["peers"][0]["fec"];
    (
        f["expected"].as_u64().unwrap(),
        f["missing"].as_u64().unwrap(),
    )
}

fn start(lab: &mut Lab, fec: &str) {
    start_on(lab, "udp", fec);
}

fn start_on(lab: &mut Lab, transport: &str, fec: &str) {
    let extra = ["--transport", transport, "--fec", fec];
    start_network(lab, 0, &extra);
    start_client_with(lab, 1, "10.0.0.2/24", KEY, &extra);
    wait_ping(lab, 1, overlay(0));
}

#[test]
fn fixed_10_3_recovers_5_and_10_percent_loss() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("ffix", 2) else {
        return;
    };
    start(&mut lab, "10:3");
    set_loss(&lab, 50);
    let loss5 = stream_loss(&lab);
    set_loss(&lab, 100);
    let loss10 = stream_loss(&lab);
    let s = lab.status(0).unwrap();
    let recovered = s["peers"][0]["fec"]["recovered"].as_u64().unwrap();
    eprintln!(
        "10:3: residual UDP loss {:.3}% at 5%, {:.3}% at 10% ({recovered} recovered)",
        loss5 * 100.0,
        loss10 * 100.0
    );
    assert!(loss5 <= 0.003, "10:3 at 5%: lost {:.3}%", loss5 * 100.0);
    assert!(loss10 <= 0.02, "10:3 at 10%: lost {:.3}%", loss10 * 100.0);
    assert!(recovered > 1000, "{recovered}");
}

#[test]
fn fixed_10_3_works_over_faketcp() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("fftcp", 2) else {
        return;
    };
    start_on(&mut lab, "faketcp", "10:3");
    set_loss(&lab, 50);
    let loss = stream_loss(&lab);
    eprintln!(
        "10:3 over FakeTCP: residual UDP loss {:.3}% at 5%",
        loss * 100.0
    );
    assert!(
        loss <= 0.003,
        "10:3 over FakeTCP at 5%: lost {:.3}%",
        loss * 100.0
    );
}

#[test]
fn auto_sends_no_parity_on_a_clean_link_and_protects_a_lossy_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("fauto", 2) else {
        return;
    };
    start(&mut lab, "auto");
    let (_, p0) = sent_shards(&lab);
    let clean = stream_loss(&lab);
    let (_, p1) = sent_shards(&lab);
    // Parity per packet of the stream (on a clean link no packet is in a group at all).
    let clean_overhead = (p1 - p0) as f64 / f64::from(PACKETS);
    assert_eq!(clean, 0.0, "clean link lost packets");
    assert!(clean_overhead < 0.05, "clean overhead {clean_overhead}");

    set_loss(&lab, 100);
    // The first seconds of loss teach the sender; then measure.
    lab.udp_stream(1, 0, overlay(0), 3 * RATE, SIZE, RATE)
        .unwrap();
    let ((d2, p2), (e2, x2)) = (sent_shards(&lab), measured_loss(&lab));
    let loss = stream_loss(&lab);
    let ((d3, p3), (e3, x3)) = (sent_shards(&lab), measured_loss(&lab));
    let overhead = (p3 - p2) as f64 / (d3 - d2).max(1) as f64;
    // The loss culvert saw: the router's 10%, plus whatever a CPU-starved host drops on
    // the way to the socket (loss too, which FEC rightly answers with more parity).
    let seen = (x3 - x2) as f64 / (e3 - e2).max(1) as f64;
    // What that loss prescribes, with room for the sender's estimate being a little off
    // the window's mean (9.5% seen may be estimated 10%: 8 of 20, not 7).
    let prescribed = f64::from(fec::parity_for(seen * 1.15, fec::AUTO_K, fec::TARGET_LOSS))
        / f64::from(fec::AUTO_K);
    eprintln!(
        "auto: clean overhead {:.2}%; at 10% loss (seen {:.2}%) residual {:.3}% with parity overhead {:.1}% (data shards {}; the seen loss prescribes {:.0}%)",
        clean_overhead * 100.0,
        seen * 100.0,
        loss * 100.0,
        overhead * 100.0,
        d3 - d2,
        prescribed * 100.0
    );
    assert!(loss <= 0.002, "auto at 10%: lost {:.3}%", loss * 100.0);
    assert!(
        (0.08..0.3).contains(&seen),
        "the router dropped 10%, the server saw {seen}"
    );
    // At 10% seen that is 8 of 20 (the issue's bound: at most 50%).
    assert!(
        overhead <= prescribed + 0.05,
        "auto at {:.1}% loss seen: overhead {overhead}, prescribed {prescribed}",
        seen * 100.0
    );
}

#[test]
fn tcp_transfer_at_5_percent_loss_completes_intact() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut lab) = lab("ftcp", 2) else {
        return;
    };
    start(&mut lab, "auto");
    set_loss(&lab, 50);
    // Let the first loss reports arrive before the transfer starts.
    lab.udp_stream(1, 0, overlay(0), 2 * RATE, 200, RATE)
        .unwrap();
    let t = lab.transfer(1, 0, overlay(0), 50 * MB, || ()).unwrap();
    assert_eq!((&t.sent, t.bytes), (&t.received, 50 * MB));
    eprintln!(
        "50 MB TCP at 5% loss each way with auto FEC: {:.0} Mbit/s",
        t.mbps()
    );
}
