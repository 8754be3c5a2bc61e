//! Counters of flows and bytes, served as Prometheus text (`/metrics`) and JSON
//! (`/status`) on an optional local HTTP listener, and as JSON on the control socket that
//! `culvert status` reads, beside the overlay daemons of the same network namespace.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proto::Reason;
use crate::pump::{Bytes, Count, End};

/// Per peer (a connector on the server, the server on a client or connector).
#[derive(Debug, Default)]
struct Per {
    open: u64,
    total: u64,
    /// Running totals, which open flows add to as they go.
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

/// What a [`Per`] holds at one instant.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct PerNow {
    open: u64,
    total: u64,
    bytes_up: u64,
    bytes_down: u64,
}

impl Per {
    fn now(&self) -> PerNow {
        PerNow {
            open: self.open,
            total: self.total,
            bytes_up: self.up.load(Ordering::Relaxed),
            bytes_down: self.down.load(Ordering::Relaxed),
        }
    }
}

/// A component's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    refused: Mutex<BTreeMap<&'static str, u64>>,
    ended: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections closed before they could carry a flow (server: TLS).
    connections: Mutex<BTreeMap<&'static str, u64>>,
    per: Mutex<BTreeMap<String, Per>>,
    /// Reconnections to the server (client, connector).
    pub reconnects: AtomicU64,
}

impl Metrics {
    /// A flow refused before it carried anything.
    pub fn refused(&self, r: Reason) {
        *self.refused.lock().unwrap().entry(r.label()).or_default() += 1;
    }

    /// A connection closed before it carried anything, for `reason`.
    pub fn connection_refused(&self, reason: &'static str) {
        *self.connections.lock().unwrap().entry(reason).or_default() += 1;
    }

    /// A flow through `peer` starts; its byte counters.
    pub fn flow_opened(&self, peer: &str) -> Arc<Bytes> {
        let mut per = self.per.lock().unwrap();
        let p = per.entry(peer.to_string()).or_default();
        p.open += 1;
        p.total += 1;
        Arc::new(Bytes {
            up: Count::new(p.up.clone()),
            down: Count::new(p.down.clone()),
        })
    }

    /// A flow through `peer` ended.
    pub fn flow_closed(&self, peer: &str, end: &End) {
        let mut per = self.per.lock().unwrap();
        let p = per.entry(peer.to_string()).or_default();
        p.open = p.open.saturating_sub(1);
        *self.ended.lock().unwrap().entry(end.label()).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<String, PerNow> {
        self.per
            .lock()
            .unwrap()
            .iter()
            .map(|(k, p)| (k.clone(), p.now()))
            .collect()
    }

    /// Flows open now.
    pub fn open(&self) -> u64 {
        self.per.lock().unwrap().values().map(|p| p.open).sum()
    }

    /// Prometheus text exposition, every name prefixed `culvert_proxy_`, `role` as a label.
    pub fn prometheus(&self, role: &str) -> String {
        let mut out = String::new();
        let per = self.snapshot();
        let mut family = |name: &str, help: &str, kind: &str, rows: Vec<(String, u64)>| {
            out += &format!(
                "# HELP culvert_proxy_{name} {help}\n# TYPE culvert_proxy_{name} {kind}\n"
            );
            for (labels, v) in rows {
                out += &format!("culvert_proxy_{name}{{role=\"{role}\"{labels}}} {v}\n");
            }
        };
        let by_peer = |f: fn(&PerNow) -> u64| -> Vec<(String, u64)> {
            per.iter()
                .map(|(k, p)| {
                    (
                        format!(",peer=\"{}\"", k.replace(['"', '\\', '\n'], "_")),
                        f(p),
                    )
                })
                .collect()
        };
        family(
            "flows_open",
            "Flows open now.",
            "gauge",
            by_peer(|p| p.open),
        );
        family(
            "flows_total",
            "Flows carried (opened).",
            "counter",
            by_peer(|p| p.total),
        );
        family(
            "bytes_up_total",
            "Bytes towards targets.",
            "counter",
            by_peer(|p| p.bytes_up),
        );
        family(
            "bytes_down_total",
            "Bytes towards clients.",
            "counter",
            by_peer(|p| p.bytes_down),
        );
        let reasons = |m: &Mutex<BTreeMap<&'static str, u64>>| -> Vec<(String, u64)> {
            m.lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (format!(",reason=\"{k}\""), *v))
                .collect()
        };
        family(
            "flows_refused_total",
            "Flows refused before carrying data, by reason.",
            "counter",
            reasons(&self.refused),
        );
        family(
            "flows_ended_total",
            "Flows ended, by how.",
            "counter",
            reasons(&self.ended),
        );
        family(
            "connections_refused_total",
            "Connections closed before carrying a flow (TLS failed or timed out, too many handshakes), by reason.",
            "counter",
            reasons(&self.connections),
        );
        family(
            "reconnects_total",
            "Reconnections to the server.",
            "counter",
            vec![(String::new(), self.reconnects.load(Ordering::Relaxed))],
        );
        out
    }

    /// The counters as JSON, for `culvert proxy status`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "flows_open": self.open(),
            "peers": self.snapshot(),
            "refused": *self.refused.lock().unwrap(),
            "ended": *self.ended.lock().unwrap(),
            "connections_refused": *self.connections.lock().unwrap(),
            "reconnects": self.reconnects.load(Ordering::Relaxed),
        })
    }
}

/// Serves `GET /metrics` (Prometheus text) and `GET /status` (`status()`, JSON) on
/// `addr` until the process ends. A listener that cannot bind (another proxy on this
/// host has the port) is a warning, not a failure: the proxy itself works without it.
pub async fn serve(
    addr: SocketAddr,
    metrics: impl Fn() -> String + Send + Sync + 'static,
    status: impl Fn() -> serde_json::Value + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, "metrics and status are off: {e} (choose another with --metrics ADDR)");
            return Ok(());
        }
    };
    let pages = Arc::new((metrics, status));
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let pages = pages.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let Some(head) = read_request(&mut conn, &mut buf, b"\r\n\r\n").await else {
                    return;
                };
                let head = String::from_utf8_lossy(head);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (code, kind, body) = match path {
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", (pages.0)()),
                    "/status" => ("200 OK", "application/json", (pages.1)().to_string()),
                    _ => (
                        "404 Not Found",
                        "text/plain",
                        "try /metrics or /status\n".into(),
                    ),
                };
                let reply = format!(
                    "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// Answers `culvert status` on the control socket `instance` of this network namespace
/// until the process ends. Binding needs the rights the overlay daemon's socket needs
/// (root, or systemd's `RuntimeDirectory=`); without them this is a warning, and
/// `culvert proxy status ROLE` over the metrics listener still works.
pub fn serve_control(
    instance: &str,
    status: impl Fn() -> serde_json::Value + Send + Sync + 'static,
) {
    use culvert_sys::control::{ControlListener, may_ask};
    let netns = culvert_sys::netns::current_name();
    let bound = ControlListener::bind(&netns, instance).and_then(|l| {
        let socket = l.try_clone_socket()?;
        Ok((l, socket))
    });
    let listener = bound
        .map_err(anyhow::Error::from)
        .and_then(|(l, socket)| Ok((l, tokio::net::UnixListener::from_std(socket)?)));
    let (file, listener) = match listener {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("`culvert status` will not list this proxy: {e:#}");
            return;
        }
    };
    let status = Arc::new(status);
    tokio::spawn(async move {
        // Owns the socket file: removed when the runtime ends.
        let _file = file;
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                // Out of descriptors, most likely: flows come first.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if !conn.peer_cred().is_ok_and(|c| may_ask(c.uid())) {
                let _ = conn
                    .write_all(
                        b"{\"error\":\"permission denied: run as root or as the proxy's user\"}\n",
                    )
                    .await;
                continue;
            }
            let status = status.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                let Some(line) = read_request(&mut conn, &mut buf, b"\n").await else {
                    return;
                };
                let reply = match std::str::from_utf8(line).map(str::trim) {
                    Ok("status") => status().to_string(),
                    _ => r#"{"error":"this culvert proxy answers only: status"}"#.to_owned(),
                };
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.write_all(b"\n").await;
            });
        }
    });
}

/// Reads a request into `buf` until `end` arrives, the peer stops sending, or `buf` is
/// full; `None` if that takes more than 5 s (a connection left open must not linger).
async fn read_request<'b>(
    conn: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &'b mut [u8],
    end: &[u8],
) -> Option<&'b [u8]> {
    let mut n = 0;
    tokio::time::timeout(Duration::from_secs(5), async {
        while n < buf.len() && !buf[..n].windows(end.len()).any(|w| w == end) {
            match conn.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    })
    .await
    .ok()?;
    Some(&buf[..n])
}
