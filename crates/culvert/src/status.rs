//! `culvert status`: asks the daemon(s) of this network namespace and prints the answer.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Result, bail};
use culvert_core::Status;
use culvert_core::faketcp::FlowStatus;
use serde_json::Value;

use crate::cli::StatusArgs;
use crate::daemon::DaemonInfo;

/// The JSON the daemon answers with: the core's status plus facts about the process and
/// its FakeTCP flows.
pub(crate) fn render_json(
    status: &Status,
    info: &DaemonInfo,
    kernel_routes: Vec<String>,
    routes_skipped: &[(culvert_wire::addr::Prefix, String)],
    faketcp: Option<(Vec<FlowStatus>, u64)>,
) -> String {
    let mut v = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        let (flows, merged) = faketcp.unwrap_or_default();
        m.insert("transports".into(), info.transports.into());
        m.insert("nft_table".into(), info.nft_table.clone().into());
        m.insert("gateway".into(), info.gateway.clone().into());
        m.insert("kernel_routes".into(), kernel_routes.into());
        m.insert(
            "routes_not_installed".into(),
            routes_skipped
                .iter()
                .map(|(p, why)| serde_json::json!({"prefix": p.to_string(), "why": why}))
                .collect::<Vec<_>>()
                .into(),
        );
        m.insert(
            "faketcp_flows".into(),
            serde_json::to_value(flows).unwrap_or(Value::Null),
        );
        m.insert("faketcp_merged_records".into(), merged.into());
        m.insert("instance".into(), info.instance.clone().into());
        m.insert("netns".into(), info.netns.clone().into());
        m.insert("mtu".into(), info.mtu.into());
        m.insert("underlay".into(), info.underlay.clone().into());
        m.insert(
            "uptime_secs".into(),
            Instant::now()
                .saturating_duration_since(info.started)
                .as_secs()
                .into(),
        );
    }
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// Runs `culvert status`.
pub(crate) fn command(args: &StatusArgs) -> Result<()> {
    let netns = culvert_sys::netns::current_name();
    let instances = match &args.instance {
        Some(i) => vec![i.clone()],
        None => culvert_sys::control::instances(&netns),
    };
    if instances.is_empty() {
        bail!(
            "no culvert daemon runs in this network namespace (for another one: ip netns exec NAME culvert status)"
        );
    }
    let mut answers = Vec::new();
    for i in &instances {
        let text = culvert_sys::control::request(&netns, i, "status").map_err(|e| {
            anyhow::anyhow!(
                "cannot reach daemon {i:?}: {e} (is it running? are you root or its user?)"
            )
        })?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("daemon {i:?} answered something unreadable: {e}"))?;
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            bail!("daemon {i:?}: {err}");
        }
        answers.push(v);
    }
    if args.json {
        let out = if answers.len() == 1 {
            answers.remove(0)
        } else {
            Value::Array(answers)
        };
        println!("{out}");
    } else {
        for a in &answers {
            print!("{}", human(a));
        }
    }
    Ok(())
}

/// A table for people.
pub(crate) fn human(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    if s("role").starts_with("proxy ") {
        return proxy_human(v);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "culvert {}  instance {}  netns {}  node {}  {}",
        s("role"),
        s("instance"),
        s("netns"),
        v.get("node")
            .and_then(Value::as_u64)
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        strings(v.get("addresses")).join(", ")
    );
    let _ = writeln!(out, "  public key  {}", s("public_key"));
    let _ = writeln!(
        out,
        "  underlay {} ({})  mtu {}  up {}s  directory v{}{}",
        s("underlay"),
        s("transports"),
        n(v, "mtu"),
        n(v, "uptime_secs"),
        n(v, "directory_version"),
        if v.get("isolation").and_then(Value::as_bool) == Some(true) {
            "  client isolation"
        } else {
            ""
        }
    );
    if let Some(g) = v.get("gateway").and_then(Value::as_str) {
        let _ = writeln!(out, "  gateway  {g}");
    }
    for r in v
        .get("routes_not_installed")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "  route {} not installed: {}",
            r["prefix"].as_str().unwrap_or_default(),
            r["why"].as_str().unwrap_or_default()
        );
    }
    let advertised = strings(v.get("advertised_routes"));
    if !advertised.is_empty() {
        let accepted = match v.get("accepted_routes") {
            Some(Value::Array(_)) => format!(
                " (the server accepted: {})",
                or_none(strings(v.get("accepted_routes")))
            ),
            _ => String::new(),
        };
        let _ = writeln!(out, "  advertises  {}{accepted}", advertised.join(", "));
    }
    let installed = strings(v.get("kernel_routes"));
    let routes: Vec<String> = v
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| {
            let prefix = r.get("prefix").and_then(Value::as_str).unwrap_or("-");
            let kernel = if installed.iter().any(|i| i == prefix) {
                ""
            } else {
                " (not in the kernel: a local route exists)"
            };
            format!("{prefix} via node {}{kernel}", n(r, "node"))
        })
        .collect();
    if !routes.is_empty() {
        let _ = writeln!(out, "  routes   {}", routes.join(", "));
    }
    let t = v.get("traffic").cloned().unwrap_or(Value::Null);
    let _ = writeln!(
        out,
        "  traffic  rx {} ({} pkts)  tx {} ({} pkts)",
        bytes(n(&t, "rx_bytes")),
        n(&t, "rx_packets"),
        bytes(n(&t, "tx_bytes")),
        n(&t, "tx_packets")
    );
    let _ = writeln!(out, "  drops    {}", drops(v.get("drops")));
    for note in drop_notes(v.get("drops")) {
        let _ = writeln!(out, "           {note}");
    }
    let _ = writeln!(
        out,
        "\n  {:<5} {:<22} {:<22} {:<14} {:<10} {:<10} {:<8} {:<18} {:<18} DROPS",
        "NODE", "ADDRESSES", "ENDPOINT", "PATH", "STATE", "HANDSHAKE", "RTT", "RX", "TX"
    );
    for p in v
        .get("peers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let t = p.get("traffic").cloned().unwrap_or(Value::Null);
        let _ = writeln!(
            out,
            "  {:<5} {:<22} {:<22} {:<14} {:<10} {:<10} {:<8} {:<18} {:<18} {}",
            n(p, "node"),
            strings(p.get("addresses")).join(","),
            p.get("endpoint").and_then(Value::as_str).unwrap_or("-"),
            match (
                p.get("path").and_then(Value::as_str),
                p.get("transport").and_then(Value::as_str)
            ) {
                (Some(path @ ("direct" | "lan")), Some(t)) => format!("{path}/{t}"),
                (Some("relay"), _) => match p.get("relay_via").and_then(Value::as_u64) {
                    Some(0) | None => "relay".to_owned(),
                    Some(via) => format!("relay via {via}"),
                },
                (Some(path), _) => path.to_owned(),
                _ => "-".to_owned(),
            },
            p.get("state").and_then(Value::as_str).unwrap_or("-"),
            p.get("last_handshake_secs")
                .and_then(Value::as_f64)
                .map_or_else(|| "-".into(), |s| format!("{s:.0}s ago")),
            p.get("rtt_ms")
                .and_then(Value::as_f64)
                .map_or_else(|| "-".into(), |r| format!("{r:.2}ms")),
            format!("{}/{}", bytes(n(&t, "rx_bytes")), n(&t, "rx_packets")),
            format!("{}/{}", bytes(n(&t, "tx_bytes")), n(&t, "tx_packets")),
            drops(p.get("drops")),
        );
    }
    for p in v
        .get("peers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(sw) = p.get("last_switch").and_then(Value::as_str) {
            let what = if n(p, "node") == 0 {
                "transport"
            } else {
                "path"
            };
            let _ = writeln!(out, "  node {} {what} switched {sw}", n(p, "node"));
        }
        if let Some(why) = p.get("path_reason").and_then(Value::as_str) {
            let _ = writeln!(out, "  node {} relayed: {why}", n(p, "node"));
        }
        if let Some(mtu) = p.get("path_mtu").and_then(Value::as_u64) {
            let _ = writeln!(out, "  node {} path mtu {mtu}", n(p, "node"));
        }
        if let Some(line) = p.get("fec").and_then(fec_line) {
            let _ = writeln!(out, "  node {} fec {line}", n(p, "node"));
        }
    }
    for f in v
        .get("faketcp_flows")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "  faketcp {} -> {}  {}  segments in {} out {}",
            f.get("local").and_then(Value::as_str).unwrap_or("-"),
            f.get("remote").and_then(Value::as_str).unwrap_or("-"),
            f.get("state").and_then(Value::as_str).unwrap_or("-"),
            n(f, "segments_in"),
            n(f, "segments_out"),
        );
    }
    out.push('\n');
    out
}

/// A `culvert proxy` role's answer, for people.
fn proxy_human(v: &Value) -> String {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let d = v.get("detail").cloned().unwrap_or(Value::Null);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "culvert {}  instance {}  netns {}  up {}s",
        s(v, "role"),
        s(v, "instance"),
        s(v, "netns"),
        n(v, "uptime_secs")
    );
    match s(v, "role").as_str() {
        "proxy server" => {
            let _ = writeln!(out, "  listen   {}", s(v, "listen"));
            let connectors: Vec<String> = v
                .get("connectors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{} ({}) {} flows",
                        s(c, "id"),
                        strings(c.get("routes")).join(" "),
                        n(c, "flows")
                    )
                })
                .collect();
            let _ = writeln!(out, "  connectors  {}", or_none(connectors));
        }
        "proxy connector" => {
            let _ = writeln!(
                out,
                "  id {}  server {}  serves {}",
                s(&d, "id"),
                s(&d, "server"),
                strings(d.get("routes")).join(" ")
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "  server {}  intercepts {} -> port {}",
                s(&d, "server"),
                strings(d.get("cidrs")).join(" "),
                n(&d, "listen_port")
            );
        }
    }
    let _ = writeln!(
        out,
        "  flows    open {}  refused {}  ended {}  reconnects {}",
        n(v, "flows_open"),
        drops(v.get("refused")),
        drops(v.get("ended")),
        n(v, "reconnects")
    );
    let _ = writeln!(
        out,
        "\n  {:<28} {:<6} {:<8} {:<12} DOWN",
        "PEER", "OPEN", "TOTAL", "UP"
    );
    for (peer, p) in v
        .get("peers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "  {:<28} {:<6} {:<8} {:<12} {}",
            peer,
            n(p, "open"),
            n(p, "total"),
            bytes(n(p, "bytes_up")),
            bytes(n(p, "bytes_down"))
        );
    }
    out.push('\n');
    out
}

/// An unsigned field of a JSON object, 0 when absent.
fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// One line of a peer's FEC state, or `None` while FEC has done nothing with it.
fn fec_line(f: &Value) -> Option<String> {
    let counters = ["groups", "parity_received", "recovered", "groups_lost"];
    if counters.iter().all(|k| n(f, k) == 0) && n(f, "m") == 0 {
        return None;
    }
    let pct = |k: &str| f.get(k).and_then(Value::as_f64).unwrap_or(0.0) * 100.0;
    Some(format!(
        "{}:{}  sent groups {} data {} parity {}  received parity {} recovered {} groups lost {}  loss reported by peer {:.2}% measured here {:.2}%",
        n(f, "k"),
        n(f, "m"),
        n(f, "groups"),
        n(f, "data_shards"),
        n(f, "parity_shards"),
        n(f, "parity_received"),
        n(f, "recovered"),
        n(f, "groups_lost"),
        pct("peer_loss"),
        pct("local_loss"),
    ))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn or_none(list: Vec<String>) -> String {
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

/// What the drops a healthy network shows mean, for the ones present.
fn drop_notes(v: Option<&Value>) -> Vec<&'static str> {
    let present = |k: &str| {
        v.and_then(|m| m.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
            > 0
    };
    [
        (
            "no_route",
            "no_route: packets to overlay addresses no node holds (a node that left, a typo)",
        ),
        (
            "not_unicast",
            "not_unicast: this host's own multicast and broadcast into the TUN (harmless)",
        ),
    ]
    .into_iter()
    .filter(|(k, _)| present(k))
    .map(|(_, note)| note)
    .collect()
}

fn drops(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "-".to_owned(),
    }
}

fn bytes(b: u64) -> String {
    match b {
        0..1_000 => format!("{b} B"),
        1_000..1_000_000 => format!("{:.1} kB", b as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        _ => format!("{:.2} GB", b as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_table_lists_peers_and_drops() {
        let v: Value = serde_json::from_str(
            r#"{"role":"server","instance":"culvert0","netns":"lab-srv","node":0,"addresses":["10.0.0.1/24"],
                "public_key":"k","underlay":"0.0.0.0:9000","mtu":1440,"uptime_secs":3,"directory_version":2,
                "isolation":false,"traffic":{"rx_bytes":2000000,"rx_packets":10,"tx_bytes":5,"tx_packets":1},
                "drops":{"replay":3},"peers":[{"node":1,"addresses":["10.0.0.2/24"],"endpoint":"198.18.1.2:40000",
                "path":"direct","state":"up","last_handshake_secs":4.0,"rtt_ms":null,"traffic":{},"drops":{}}]}"#,
        )
        .unwrap();
        let t = human(&v);
        assert!(t.contains("drops    replay=3"), "{t}");
        assert!(t.contains("198.18.1.2:40000"), "{t}");
        assert!(t.contains("2.0 MB (10 pkts)"), "{t}");
        assert!(!t.contains("no_route:"), "{t}");
        // The drops an idle, healthy network shows are explained (first contact, item 14).
        let mut v = v;
        v["drops"] = serde_json::json!({"no_route": 2, "not_unicast": 7});
        let t = human(&v);
        assert!(
            t.contains("no_route: packets to overlay addresses no node holds"),
            "{t}"
        );
        assert!(t.contains("not_unicast: this host's own multicast"), "{t}");
    }

    #[test]
    fn human_table_lists_routes_and_path_mtu() {
        let v: Value = serde_json::from_str(
            r#"{"role":"client","advertised_routes":["192.168.50.0/24","203.0.113.0/24"],
                "accepted_routes":["192.168.50.0/24"],
                "routes":[{"prefix":"172.20.0.0/24","node":0},{"prefix":"192.168.1.0/24","node":3}],
                "kernel_routes":["172.20.0.0/24"],
                "peers":[{"node":3,"path_mtu":1280}]}"#,
        )
        .unwrap();
        let t = human(&v);
        assert!(
            t.contains(
                "advertises  192.168.50.0/24, 203.0.113.0/24 (the server accepted: 192.168.50.0/24)"
            ),
            "{t}"
        );
        assert!(t.contains("routes   172.20.0.0/24 via node 0, 192.168.1.0/24 via node 3 (not in the kernel: a local route exists)"), "{t}");
        assert!(t.contains("node 3 path mtu 1280"), "{t}");
    }

    #[test]
    fn human_lines_for_proxy_roles() {
        let v: Value = serde_json::from_str(
            r#"{"role":"proxy server","instance":"proxy-server-8081","netns":"lab-0","uptime_secs":7,
                "listen":"[::]:8081","flows_open":2,"refused":{"no_route":1},"ended":{"fin":4},"reconnects":0,
                "connectors":[{"id":"a","routes":["100.64.1.0/24=192.168.1.0/24"],"flows":2}],
                "peers":{"a":{"open":2,"total":6,"bytes_up":52428800,"bytes_down":1000}}}"#,
        )
        .unwrap();
        let t = human(&v);
        assert!(
            t.contains("culvert proxy server  instance proxy-server-8081"),
            "{t}"
        );
        assert!(
            t.contains("connectors  a (100.64.1.0/24=192.168.1.0/24) 2 flows"),
            "{t}"
        );
        assert!(t.contains("refused no_route=1  ended fin=4"), "{t}");
        assert!(t.contains("52.4 MB"), "{t}");
        let v: Value = serde_json::from_str(
            r#"{"role":"proxy client","detail":{"server":"10.0.0.1:8081","cidrs":["100.64.0.0/10"],"listen_port":9999}}"#,
        )
        .unwrap();
        let t = human(&v);
        assert!(
            t.contains("server 10.0.0.1:8081  intercepts 100.64.0.0/10 -> port 9999"),
            "{t}"
        );
    }
}
