//! `culvert demo`: a server and two clients, each client behind its own NAT router, in
//! throwaway network namespaces; pings and transfers through the tunnel, the direct path the
//! clients punch through their NATs, a short report, and everything removed afterwards (also
//! on Ctrl-C).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cli::DemoArgs;
use crate::testbed::{self, Lab, Site, server_args};

const PREFIX: &str = "cvtdemo";

pub(crate) fn run(args: &DemoArgs) -> Result<()> {
    // SAFETY-free check of the effective user: /proc tells.
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        bail!(
            "the demo needs root (it creates network namespaces and TUN devices): run it with sudo"
        );
    }
    if let Some(missing) = testbed::missing_tools() {
        bail!("the demo needs {missing}");
    }
    let signals = culvert_sys::poll::Signals::new()?;
    let megabytes = args.megabytes;
    let worker = std::thread::spawn(move || steps(megabytes));
    loop {
        if worker.is_finished() {
            return worker
                .join()
                .map_err(|_| anyhow::anyhow!("the demo panicked"))?;
        }
        if signals.read().is_some() {
            eprintln!("\ninterrupted: removing the demo namespaces");
            testbed::remove_labs(PREFIX);
            std::process::exit(130);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn steps(megabytes: u32) -> Result<()> {
    let bin = std::env::current_exe().context("locating the culvert binary")?;
    println!(
        "culvert demo: building namespaces {PREFIX}-0 (server), {PREFIX}-1 and {PREFIX}-2 (clients, each behind its own NAT router), joined by a router"
    );
    let nat = |nat| Site::Nat {
        nat,
        symmetric: false,
    };
    let mut lab = Lab::with_sites(PREFIX, &[Site::Public, nat(1), nat(2)], &bin)
        .context("building the demo namespaces")?;
    let secret = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(crate::identity::os_random::<18>())
    };
    let start = Instant::now();
    lab.spawn(0, &server_args(&secret, &[]))?;
    for c in 1..=2 {
        let v4 = format!("10.0.0.{}/24", c + 1);
        let v6 = format!("fd00::{}/64", c + 1);
        lab.spawn(
            c,
            &[
                "client",
                "-r",
                "198.18.1.2:9000",
                "-t",
                &v4,
                "-t",
                &v6,
                "-k",
                &secret,
            ],
        )?;
    }
    let up = wait_up(&lab, 1, Duration::from_secs(20))
        .with_context(|| format!("the tunnel did not come up\n{}", lab.logs()))?;
    println!(
        "  tunnel up           {:.2} s after start (processes, passphrase stretching, handshake)",
        up.duration_since(start).as_secs_f64()
    );
    let server: IpAddr = "10.0.0.1".parse()?;
    let peer: IpAddr = "10.0.0.3".parse()?;
    let first = lab
        .ping_until(1, peer, Duration::from_secs(10))
        .context("client 1 cannot reach client 2")?;
    println!(
        "  first client-client ping {:.2} ms (includes the end-to-end handshake, through the server)",
        ms(first)
    );
    match wait_direct(&lab, Duration::from_secs(5)) {
        Some((took, endpoint)) => println!(
            "  direct path         client 1 -> client 2 punched through both NATs {:.2} s after that ping, at {endpoint}",
            took.as_secs_f64()
        ),
        None => println!(
            "  direct path         none within 5 s: client-to-client traffic stays on the server's relay"
        ),
    }
    for (name, dst) in [
        ("client 1 -> server  ", server),
        ("client 1 -> client 2", peer),
        ("client 1 -> server v6", "fd00::1".parse()?),
    ] {
        let rtts: Vec<Duration> = (0..20)
            .filter_map(|_| lab.ping(1, dst, Duration::from_secs(1)))
            .collect();
        if rtts.is_empty() {
            bail!("no ping answers from {dst}\n{}", lab.logs());
        }
        let avg = rtts.iter().sum::<Duration>() / rtts.len() as u32;
        let min = rtts.iter().min().copied().unwrap_or_default();
        println!(
            "  ping {name}  {}/20 answered, avg {:.3} ms, min {:.3} ms",
            rtts.len(),
            ms(avg),
            ms(min)
        );
    }
    let bytes = u64::from(megabytes) << 20;
    for (name, to, ip) in [
        ("client 1 -> server  ", 0, server),
        ("client 1 -> client 2", 2, peer),
    ] {
        let t = lab.transfer(1, to, ip, bytes, || ())?;
        let ok = if t.sent == t.received && t.bytes == bytes {
            "SHA-256 match"
        } else {
            "HASH MISMATCH"
        };
        println!(
            "  transfer {name}  {megabytes} MB in {:.2} s = {:.0} Mbit/s, {ok}",
            t.secs,
            t.mbps()
        );
        if t.sent != t.received {
            bail!("the transfer arrived corrupted");
        }
    }
    let status = lab.status(1)?;
    println!("  client 1 peers:");
    for p in status["peers"].as_array().into_iter().flatten() {
        println!(
            "    node {:<2} {:<28} path {:<6} {:<5} cipher {}  rtt {}",
            p["node"],
            p["addresses"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
            p["path"].as_str().unwrap_or("-"),
            p["state"].as_str().unwrap_or("-"),
            p["cipher"].as_str().unwrap_or("-"),
            p["rtt_ms"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2} ms")),
        );
    }
    drop(lab);
    println!("done: namespaces, devices and processes removed");
    Ok(())
}

/// Waits until client 1 has a direct path to client 2; returns when, and the endpoint.
fn wait_direct(lab: &Lab, timeout: Duration) -> Option<(Duration, String)> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let direct = lab.status(1).ok().and_then(|s| {
            s["peers"].as_array()?.iter().find_map(|p| {
                (p["node"] != 0 && p["path"] == "direct")
                    .then(|| p["endpoint"].as_str().unwrap_or("-").to_owned())
            })
        });
        if let Some(endpoint) = direct {
            return Some((start.elapsed(), endpoint));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn wait_up(lab: &Lab, client: usize, timeout: Duration) -> Option<Instant> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        let up = lab.status(client).ok().is_some_and(|s| {
            s["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["node"] == 0 && p["state"] == "up"))
        });
        if up {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
