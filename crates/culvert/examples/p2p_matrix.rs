//! Direct-path matrix: for each NAT combination, how many tries end on a direct path, and
//! how long after the first client-to-client packet.
//!
//! `cargo run --release -p culvert --example p2p_matrix [TRIES]` as root
//! (`bench/p2p-matrix.sh`). Each try is a fresh namespace lab: a public server, two clients
//! behind Linux masquerade NATs (port-preserving "cone", or `fully-random` "symmetric"), or
//! both behind one NAT (no hairpin). The clients join, client 1 pings client 2 once, and the
//! clock runs until both see a direct (or LAN) path, for at most 10 s.
//! `MATRIX_ONLY=symmetric` runs only the combinations whose name contains that text.

use std::path::Path;
use std::time::{Duration, Instant};

use culvert::testbed::{Lab, Site, server_args};

const KEY: &str = "matrix-passphrase-for-the-bench";

fn main() {
    let tries: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let bin = std::env::var("CULVERT_BIN").unwrap_or_else(|_| "target/release/culvert".into());
    let nat = |nat, symmetric| Site::Nat { nat, symmetric };
    let combos = [
        ("cone / cone", [nat(1, false), nat(2, false)], "direct"),
        ("same LAN", [nat(1, false), nat(1, false)], "lan"),
        ("cone / symmetric", [nat(1, false), nat(2, true)], "direct"),
        (
            "symmetric / symmetric",
            [nat(1, true), nat(2, true)],
            "direct",
        ),
        ("public / cone", [Site::Public, nat(2, false)], "direct"),
        ("public / symmetric", [Site::Public, nat(2, true)], "direct"),
    ];
    println!("| NAT combination | direct | median time to direct | each (s) | why not |");
    println!("|---|---|---|---|---|");
    let only = std::env::var("MATRIX_ONLY").unwrap_or_default();
    for (name, clients, want) in combos.into_iter().filter(|c| c.0.contains(&only)) {
        let mut times = Vec::new();
        let mut why = Vec::new();
        for _ in 0..tries {
            match attempt(&bin, clients, want) {
                Ok(t) => times.push(t),
                Err(e) => why.push(e),
            }
        }
        let each: Vec<String> = times
            .iter()
            .map(|t| format!("{:.2}", t.as_secs_f64()))
            .collect();
        times.sort();
        let median = times
            .get(times.len() / 2)
            .map_or_else(|| "-".to_owned(), |t| format!("{:.2} s", t.as_secs_f64()));
        why.sort();
        why.dedup();
        println!(
            "| {name} | {}/{tries} | {median} | {} | {} |",
            times.len(),
            each.join(", "),
            why.join("; ")
        );
    }
}

/// One try; the time from the first client-to-client ping to a direct path both ways.
fn attempt(bin: &str, clients: [Site; 2], want: &str) -> Result<Duration, String> {
    let sites = [Site::Public, clients[0], clients[1]];
    let lab = Lab::with_sites("cvtmatrix", &sites, Path::new(bin)).map_err(|e| e.to_string())?;
    let mut lab = lab;
    lab.spawn(0, &server_args(KEY, &[]))
        .map_err(|e| e.to_string())?;
    for c in 1..=2 {
        let addr = format!("10.0.0.{}/24", c + 1);
        lab.spawn(
            c,
            &["client", "-r", "198.18.1.2:9000", "-t", &addr, "-k", KEY],
        )
        .map_err(|e| e.to_string())?;
    }
    for c in 1..=2 {
        lab.ping_until(c, "10.0.0.1".parse().unwrap(), Duration::from_secs(20))
            .ok_or("no join")?;
    }
    let node = |h: usize| lab.status(h).ok().and_then(|s| s["node"].as_u64());
    let (n1, n2) = (node(1).ok_or("no node")?, node(2).ok_or("no node")?);
    let start = Instant::now();
    let _ = lab.ping(1, "10.0.0.3".parse().unwrap(), Duration::from_secs(2));
    let path = |h: usize, n: u64| -> (String, String) {
        let s = lab.status(h).unwrap_or_default();
        let p = s["peers"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["node"] == n).cloned())
            .unwrap_or_default();
        (
            p["path"].as_str().unwrap_or("-").to_owned(),
            p["path_reason"].as_str().unwrap_or("").to_owned(),
        )
    };
    while start.elapsed() < Duration::from_secs(10) {
        if path(1, n2).0 == want && path(2, n1).0 == want {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(path(1, n2).1)
}
