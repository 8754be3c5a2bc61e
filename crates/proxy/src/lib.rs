//! `culvert proxy`: a transparent L4 proxy. A **client** intercepts TCP to chosen prefixes
//! (nftables REDIRECT, `SO_ORIGINAL_DST`), a central **server** relays each connection over
//! gRPC with mutual TLS, and **connectors** — which only ever connect out — dial the real
//! targets inside the networks they serve.
//!
//! This crate is the only one with an async runtime; the L3 overlay does not link tokio.

pub mod client;
pub mod config;
pub mod connector;
pub mod metrics;
pub mod pki;
pub mod proto;
pub mod pump;
pub mod routes;
pub mod server;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub use config::{Args, run};

use crate::metrics::Metrics;
use crate::proto::Open;

/// Heartbeats on control streams, and HTTP/2 pings.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);
/// Silence after which a link counts as lost.
pub(crate) const HEARTBEAT_LOSS: Duration = Duration::from_secs(15);
/// HTTP/2 flow-control window per stream: what one flow may have in flight per hop.
pub(crate) const STREAM_WINDOW: u32 = 1 << 20;
/// HTTP/2 flow-control window per connection.
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;

/// A destination as the protocol carries it (an IPv4-mapped address as IPv4).
pub fn addr_to_open(a: SocketAddr) -> Open {
    let addr = match a.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        },
    };
    Open {
        addr,
        port: u32::from(a.port()),
    }
}

/// An address for a log field: as it is (an IPv4-mapped one as IPv4), empty when unknown
/// — never Rust's `Some(...)`.
pub(crate) fn shown(a: Option<SocketAddr>) -> String {
    a.map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()).to_string())
        .unwrap_or_default()
}

/// The destination in an [`Open`]; `None` when malformed.
pub fn open_to_addr(o: &Open) -> Option<SocketAddr> {
    let port = u16::try_from(o.port).ok().filter(|p| *p != 0)?;
    let ip = match o.addr.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&o.addr[..]).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&o.addr[..]).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Resolves at SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Waits until no flow is open, for at most `grace`.
pub(crate) async fn drain(metrics: &Metrics, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    while metrics.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if metrics.open() > 0 {
        tracing::warn!(
            open = metrics.open(),
            "flows still open after the grace period: closing them"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_survive_the_wire() {
        for a in ["192.168.1.5:80", "[fd00::5]:443"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(open_to_addr(&addr_to_open(a)), Some(a));
        }
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:22".parse().unwrap();
        assert_eq!(
            open_to_addr(&addr_to_open(mapped)),
            Some("10.1.2.3:22".parse().unwrap())
        );
        for bad in [
            Open {
                addr: vec![1, 2, 3],
                port: 80,
            },
            Open {
                addr: vec![1, 2, 3, 4],
                port: 0,
            },
            Open {
                addr: vec![1, 2, 3, 4],
                port: 70000,
            },
        ] {
            assert_eq!(open_to_addr(&bad), None);
        }
    }
}
