//! Helpers shared by the end-to-end test files.
#![allow(dead_code, unreachable_pub)]

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

pub use culvert::testbed::{Lab, Site, server_args};

pub static SERIAL: Mutex<()> = Mutex::new(());
pub const BIN: &str = env!("CARGO_BIN_EXE_culvert");
pub const KEY: &str = "e2e-test-passphrase";
pub const MB: u64 = 1 << 20;

/// Returns a star lab of `hosts` public hosts, or `None` (test skipped) when not root.
pub fn lab(name: &str, hosts: usize) -> Option<Lab> {
    lab_with(name, &vec![Site::Public; hosts])
}

/// Returns a lab with one host per `sites` entry (public or behind a NAT), or `None`
/// (test skipped) when not running as root.
pub fn lab_with(name: &str, sites: &[Site]) -> Option<Lab> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var("CULVERT_REQUIRE_E2E").as_deref() != Ok("1"),
            "CULVERT_REQUIRE_E2E=1 but the end-to-end tests cannot run: they need root"
        );
        eprintln!("SKIPPED {name}: end-to-end tests need root (network namespaces, TUN devices)");
        return None;
    }
    if let Some(missing) = culvert::testbed::missing_tools() {
        assert!(
            std::env::var("CULVERT_REQUIRE_E2E").as_deref() != Ok("1"),
            "CULVERT_REQUIRE_E2E=1 but the end-to-end tests need {missing}"
        );
        eprintln!("SKIPPED {name}: end-to-end tests need {missing}");
        return None;
    }
    let prefix = format!(
        "cvt{}{}",
        std::process::id() % 10_000,
        &name[..name.len().min(4)]
    );
    Some(
        Lab::with_sites(&prefix, sites, std::path::Path::new(BIN))
            .expect("building the namespace lab"),
    )
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn overlay(host: usize) -> IpAddr {
    ip(&format!("10.0.0.{}", host + 1))
}

/// Starts the server on host 0 and clients on hosts 1.. with the standard addresses.
pub fn start_network(lab: &mut Lab, clients: usize, server_extra: &[&str]) -> Vec<usize> {
    let mut ids = vec![lab.spawn(0, &server_args(KEY, server_extra)).unwrap()];
    for c in 1..=clients {
        ids.push(start_client(lab, c, &format!("10.0.0.{}/24", c + 1), KEY));
    }
    ids
}

pub fn start_client(lab: &mut Lab, host: usize, addr: &str, key: &str) -> usize {
    start_client_with(lab, host, addr, key, &[])
}

/// Starts a client with extra flags (e.g. `--transport faketcp`).
pub fn start_client_with(
    lab: &mut Lab,
    host: usize,
    addr: &str,
    key: &str,
    extra: &[&str],
) -> usize {
    let v6 = format!("fd00::{}/64", host + 1);
    let v6 = if addr.starts_with("10.0.0.") {
        v6
    } else {
        String::new()
    };
    let mut args = vec!["client", "-r", "198.18.1.2:9000", "-t", addr, "-k", key];
    if !v6.is_empty() {
        args.extend_from_slice(&["-t", &v6]);
    }
    args.extend_from_slice(extra);
    lab.spawn(host, &args).unwrap()
}

pub fn wait_ping(lab: &Lab, from: usize, to: IpAddr) {
    let rtt = lab.ping_until(from, to, Duration::from_secs(20));
    assert!(
        rtt.is_some(),
        "host {from} cannot reach {to}\n{}",
        lab.logs()
    );
}

/// Waits until `pred` holds for the log of daemon `id`, for at most `secs` seconds.
pub fn wait_log(lab: &Lab, id: usize, secs: u64, pred: impl Fn(&str) -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if pred(&lab.log(id)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    pred(&lab.log(id))
}

pub fn drops(status: &serde_json::Value, reason: &str) -> u64 {
    status["drops"][reason].as_u64().unwrap_or(0)
}

/// The UDP payload of an IPv4 packet to `port`, if it is one.
pub fn udp_payload(pkt: &[u8], port: u16) -> Option<Vec<u8>> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    if pkt.len() < ihl + 8
        || pkt[9] != 17
        || u16::from_be_bytes([pkt[ihl + 2], pkt[ihl + 3]]) != port
    {
        return None;
    }
    Some(pkt[ihl + 8..].to_vec())
}

/// The packets named counter `name` of the router's `inet` table `table` has counted
/// (`u64::MAX` if it cannot be read).
pub fn counter(lab: &Lab, table: &str, name: &str) -> u64 {
    counter_in(lab, None, table, name)
}

/// [`counter`] in host `host`'s namespace (`None`: the router's).
pub fn counter_in(lab: &Lab, host: Option<usize>, table: &str, name: &str) -> u64 {
    let out = lab
        .sh(host, &format!("nft list counter inet {table} {name}"))
        .unwrap_or_default();
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}
