//! Prometheus metrics in the text exposition format, over a minimal HTTP responder.
//!
//! Opt-in (`metrics = "127.0.0.1:9100"`); every request gets the full set, whatever its path.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use anyhow::{Context, Result};
use culvert_core::fec::Stats as FecStats;
use culvert_core::{DropReason, Status};

use crate::daemon::DaemonInfo;

/// The metrics listener.
#[derive(Debug)]
pub(crate) struct Server {
    listener: TcpListener,
}

impl Server {
    pub(crate) fn bind(addr: SocketAddr) -> Result<Self> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("binding metrics listener {addr}"))?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener })
    }

    /// The next pending connection, non-blocking (served by the event loop).
    pub(crate) fn accept(&self) -> Option<std::net::TcpStream> {
        let (s, _) = self.listener.accept().ok()?;
        s.set_nonblocking(true).ok()?;
        Some(s)
    }
}

/// The HTTP answer to any request: every metric, whatever the path.
pub(crate) fn answer(status: &Status, info: &DaemonInfo) -> Vec<u8> {
    let body = render(status, info);
    let mut out = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

impl AsRawFd for Server {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

/// The metrics text.
pub(crate) fn render(status: &Status, info: &DaemonInfo) -> String {
    let mut o = String::new();
    header(
        &mut o,
        "culvert_info",
        "gauge",
        "Static facts about this daemon.",
    );
    let _ = writeln!(
        o,
        "culvert_info{{role=\"{}\",instance=\"{}\",netns=\"{}\",version=\"{}\"}} 1",
        status.role,
        info.instance,
        info.netns,
        env!("CARGO_PKG_VERSION")
    );
    header(
        &mut o,
        "culvert_route",
        "gauge",
        "Other nodes' subnets routed into the overlay (1 per subnet, by the node behind it).",
    );
    for r in &status.routes {
        let _ = writeln!(
            o,
            "culvert_route{{prefix=\"{}\",node=\"{}\"}} 1",
            r.prefix, r.node
        );
    }
    header(
        &mut o,
        "culvert_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    let uptime = Instant::now()
        .saturating_duration_since(info.started)
        .as_secs();
    let _ = writeln!(o, "culvert_uptime_seconds {uptime}");
    for (name, help, v) in [
        (
            "culvert_rx_bytes_total",
            "Plaintext bytes received from peers.",
            status.traffic.rx_bytes,
        ),
        (
            "culvert_rx_packets_total",
            "Packets received from peers.",
            status.traffic.rx_packets,
        ),
        (
            "culvert_tx_bytes_total",
            "Plaintext bytes sent to peers.",
            status.traffic.tx_bytes,
        ),
        (
            "culvert_tx_packets_total",
            "Packets sent to peers.",
            status.traffic.tx_packets,
        ),
    ] {
        header(&mut o, name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    }
    header(
        &mut o,
        "culvert_packets_dropped_total",
        "counter",
        "Packets dropped, by reason.",
    );
    for r in DropReason::ALL {
        let _ = writeln!(
            o,
            "culvert_packets_dropped_total{{reason=\"{}\"}} {}",
            r.as_str(),
            status.drops.get(*r)
        );
    }
    header(
        &mut o,
        "culvert_peer_up",
        "gauge",
        "Whether the session with the peer is up; path and, when relayed, the relaying node.",
    );
    for p in &status.peers {
        let up = u8::from(p.state == "up");
        let via = p.relay_via.map(|v| v.to_string()).unwrap_or_default();
        let _ = writeln!(
            o,
            "culvert_peer_up{{node=\"{}\",path=\"{}\",via=\"{via}\"}} {up}",
            p.node, p.path
        );
    }
    header(
        &mut o,
        "culvert_peer_rtt_seconds",
        "gauge",
        "Last round-trip time to the peer.",
    );
    for p in &status.peers {
        if let Some(ms) = p.rtt_ms {
            let _ = writeln!(
                o,
                "culvert_peer_rtt_seconds{{node=\"{}\"}} {}",
                p.node,
                ms / 1000.0
            );
        }
    }
    header(
        &mut o,
        "culvert_peer_path_rtt_seconds",
        "gauge",
        "RTT of a client peer's path (direct, or a relay through a client), from its probes.",
    );
    for p in &status.peers {
        if let Some(ms) = p.path_rtt_ms {
            let _ = writeln!(
                o,
                "culvert_peer_path_rtt_seconds{{node=\"{}\",path=\"{}\"}} {}",
                p.node,
                p.path,
                ms / 1000.0
            );
        }
    }
    for (name, help, v) in [
        (
            "culvert_relayed_packets_total",
            "Messages this node relayed for other nodes.",
            status.relayed.tx_packets,
        ),
        (
            "culvert_relayed_bytes_total",
            "Bytes of the messages this node relayed for other nodes.",
            status.relayed.tx_bytes,
        ),
    ] {
        header(&mut o, name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    }
    header(
        &mut o,
        "culvert_peer_rx_bytes_total",
        "counter",
        "Plaintext bytes received from the peer.",
    );
    for p in &status.peers {
        let _ = writeln!(
            o,
            "culvert_peer_rx_bytes_total{{node=\"{}\"}} {}",
            p.node, p.traffic.rx_bytes
        );
    }
    header(
        &mut o,
        "culvert_peer_tx_bytes_total",
        "counter",
        "Plaintext bytes sent to the peer.",
    );
    for p in &status.peers {
        let _ = writeln!(
            o,
            "culvert_peer_tx_bytes_total{{node=\"{}\"}} {}",
            p.node, p.traffic.tx_bytes
        );
    }
    for (name, kind, help, value) in FEC_METRICS {
        header(&mut o, name, kind, help);
        for p in &status.peers {
            let _ = writeln!(o, "{name}{{node=\"{}\"}} {}", p.node, value(&p.fec));
        }
    }
    header(
        &mut o,
        "culvert_peer_packets_dropped_total",
        "counter",
        "Packets of the peer dropped, by reason.",
    );
    for p in &status.peers {
        for (reason, n) in p.drops.nonzero() {
            let _ = writeln!(
                o,
                "culvert_peer_packets_dropped_total{{node=\"{}\",reason=\"{reason}\"}} {n}",
                p.node
            );
        }
    }
    o
}

/// Per-peer FEC metrics: name, type, help, and how to read it from the peer's stats.
type FecMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&FecStats) -> f64,
);

#[allow(clippy::cast_precision_loss)] // counters far below 2^53
const FEC_METRICS: [FecMetric; 11] = [
    (
        "culvert_peer_fec_groups_total",
        "counter",
        "FEC groups sent with parity.",
        |s| s.groups as f64,
    ),
    (
        "culvert_peer_fec_data_shards_total",
        "counter",
        "Data packets sent inside FEC groups.",
        |s| s.data_shards as f64,
    ),
    (
        "culvert_peer_fec_parity_shards_total",
        "counter",
        "FEC parity packets sent.",
        |s| s.parity_shards as f64,
    ),
    (
        "culvert_peer_fec_parity_received_total",
        "counter",
        "FEC parity packets received.",
        |s| s.parity_received as f64,
    ),
    (
        "culvert_peer_fec_recovered_total",
        "counter",
        "Packets recovered from FEC parity.",
        |s| s.recovered as f64,
    ),
    (
        "culvert_peer_fec_groups_lost_total",
        "counter",
        "FEC groups that expired with packets missing.",
        |s| s.groups_lost as f64,
    ),
    (
        "culvert_peer_fec_expected_total",
        "counter",
        "Data packets expected from the peer in the intervals reported on.",
        |s| s.expected as f64,
    ),
    (
        "culvert_peer_fec_missing_total",
        "counter",
        "Of those, packets missing before recovery (the path's loss).",
        |s| s.missing as f64,
    ),
    (
        "culvert_peer_fec_parity_ratio",
        "gauge",
        "Parity packets per data packet in a full group now.",
        |s| {
            if s.k == 0 {
                0.0
            } else {
                f64::from(s.m) / f64::from(s.k)
            }
        },
    ),
    (
        "culvert_peer_fec_peer_loss_ratio",
        "gauge",
        "Loss the peer reports on what we send (smoothed).",
        |s| s.peer_loss,
    ),
    (
        "culvert_peer_fec_local_loss_ratio",
        "gauge",
        "Loss measured on what we receive, before recovery.",
        |s| s.local_loss,
    ),
];

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
