//! Handshake flood bench: a server with one client streaming UDP through the tunnel, while
//! the router floods the server with forged message 1s. Reports the client's loss, and the
//! server's CPU and memory, with and without the flood.
//!
//! `cargo run --release -p culvert --example handshake_flood [RATE] [SECONDS]` as root
//! (`bench/handshake-flood.sh`). Kinds of forgery, each for SECONDS at RATE per second:
//!
//! * `psk`: valid under the passphrase (what a passphrase holder can send), each claiming a
//!   new random key, from spoofed sources all over 203.0.113.0/24 and 198.51.100.0/24 —
//!   the most expensive kind: each would cost a Diffie-Hellman answer without the budgets;
//! * `stranger`: the same shape under a wrong passphrase (what a scanner can send);
//! * `one-source`: valid forgeries from the router's own address, which sees the answers.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use culvert::testbed::{
    Lab, Spoofer, cpu_seconds, forged_join, in_ns, passphrase_psk, proc_field, random_seed,
    server_args,
};

const KEY: &str = "bench-passphrase-for-the-flood";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rate: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let bin = std::env::var("CULVERT_BIN").unwrap_or_else(|_| "target/release/culvert".into());
    let mut lab = Lab::new("cvtflood", 2, Path::new(&bin)).expect("building the lab");
    let server = lab.spawn(0, &server_args(KEY, &[])).unwrap();
    lab.spawn(
        1,
        &[
            "client",
            "-r",
            "198.18.1.2:9000",
            "-t",
            "10.0.0.2/24",
            "-k",
            KEY,
        ],
    )
    .unwrap();
    assert!(
        lab.ping_until(1, "10.0.0.1".parse().unwrap(), Duration::from_secs(20))
            .is_some(),
        "the client did not join\n{}",
        lab.logs()
    );
    let pid = lab.pid(server).unwrap();
    println!("flood: {rate} forged message 1 per second, {secs} s per kind");
    println!("| kind | sent/s | client loss | server CPU | server RSS | drops |");
    println!("|---|---|---|---|---|---|");
    for kind in ["none", "psk", "stranger", "one-source"] {
        let pool = pool(kind);
        let cpu0 = cpu_seconds(pid);
        let drops0 = lab.status(0).unwrap()["drops"].clone();
        let router = lab.router();
        let (stream, sent) = std::thread::scope(|s| {
            let flood = s.spawn(|| {
                if kind == "none" {
                    std::thread::sleep(Duration::from_secs(secs));
                    return 0;
                }
                in_ns(&router, || {
                    flood(kind, &pool, rate, Duration::from_secs(secs))
                })
            });
            // 1000 datagrams a second from the client to the server, through the tunnel.
            let n = u32::try_from(secs).unwrap_or(10) * 1000;
            let stream = lab
                .udp_stream(1, 0, "10.0.0.1".parse().unwrap(), n, 200, 1000)
                .unwrap();
            (stream, flood.join().unwrap())
        });
        let cpu = cpu_seconds(pid) - cpu0;
        let rss = proc_field(pid, "VmRSS").unwrap_or_default();
        let drops1 = lab.status(0).unwrap()["drops"].clone();
        let delta: Vec<String> = drops1
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| {
                let d = v.as_u64()? - drops0[k].as_u64().unwrap_or(0);
                (d > 0).then(|| format!("{k} {d}"))
            })
            .collect();
        println!(
            "| {kind} | {} | {:.2}% ({} of {}) | {:.0}% of a core | {rss} | {} |",
            sent / secs,
            stream.tunnel_loss() * 100.0,
            stream.sent - stream.received,
            stream.sent,
            cpu * 100.0 / secs as f64,
            delta.join(", ")
        );
    }
}

/// Distinct forged messages of one kind (each claims another random key).
fn pool(kind: &str) -> Vec<Vec<u8>> {
    let passphrase = if kind == "stranger" {
        "not-the-passphrase-at-all"
    } else {
        KEY
    };
    let addr = "10.0.0.77/24".parse().unwrap();
    let psk = passphrase_psk(passphrase);
    let mut rng = culvert_core::rng::Rng::from_seed(random_seed());
    (0..4096u32)
        .map(|i| forged_join(&psk, &culvert_core::PublicKey(rng.array()), &[addr], i))
        .collect()
}

/// Sends the pool round and round at `rate` per second for `d`; returns how many went.
fn flood(kind: &str, pool: &[Vec<u8>], rate: u32, d: Duration) -> u64 {
    let server = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 9000);
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    let spoofer = Spoofer::new().unwrap();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < d {
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due {
            let msg = &pool[(sent % pool.len() as u64) as usize];
            if kind == "one-source" {
                let _ = sock.send_to(msg, server);
            } else {
                let i = sent as u32;
                let net = if i & 1 == 0 {
                    [203, 0, 113]
                } else {
                    [198, 51, 100]
                };
                let src = SocketAddrV4::new(
                    Ipv4Addr::new(net[0], net[1], net[2], (i >> 1) as u8),
                    1024 + (i >> 9) as u16 % 60_000,
                );
                let _ = spoofer.send(src, server, msg);
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    sent
}
