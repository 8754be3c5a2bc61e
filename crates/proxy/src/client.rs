//! The intercepting client: TCP connections to the chosen prefixes are redirected by
//! nftables to a local listener; each becomes one flow to the server.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use culvert_sys::nft::{Intercept, LanScope, RuleSet, Table};
use culvert_wire::addr::Prefix;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::Metrics;
use crate::proto::{Kind, Reason, RelayClient, frame};
use crate::pump::{self, DEPTH, End, Side};
use crate::{addr_to_open, drain};

/// What a client runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The server, `host:port`.
    pub server: String,
    /// Destinations whose TCP is intercepted.
    pub cidrs: Vec<Prefix>,
    /// The LAN whose connections are intercepted too; `None`: local programs only.
    pub lan: Option<LanScope>,
    /// The local listener's port.
    pub listen_port: u16,
    /// How long a flow may carry nothing.
    pub idle: Duration,
    /// How long open flows may drain at shutdown.
    pub grace: Duration,
}

/// Runs the client until SIGTERM or SIGINT.
pub async fn run(
    s: Settings,
    endpoint: tonic::transport::Endpoint,
    metrics: Arc<Metrics>,
) -> Result<()> {
    let relay = RelayClient::new(endpoint.connect_lazy());
    let except: Vec<SocketAddr> = tokio::net::lookup_host(&s.server)
        .await
        .with_context(|| format!("resolving the server {}", s.server))?
        .collect();
    let listeners = listen(s.listen_port, s.lan.is_some())?;
    let instance = format!("proxy-{}", s.listen_port);
    let rules = RuleSet {
        intercept: Some(Intercept {
            prefixes: s.cidrs.clone(),
            port: s.listen_port,
            except,
            lan: s.lan.clone(),
        }),
        ..RuleSet::default()
    };
    let table = Table::install(&instance, "", &rules).context(
        "installing the interception rules (they need root or CAP_NET_ADMIN, and nftables)",
    )?;
    tracing::info!(
        table = table.name(),
        port = s.listen_port,
        cidrs = %s.cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
        server = %s.server,
        "proxy client intercepting"
    );
    let s = Arc::new(s);
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (conn, is_v6) = tokio::select! {
            () = &mut shutdown => break,
            r = listeners[0].accept() => (r, false),
            r = listeners[1].accept() => (r, true),
        };
        match conn {
            Ok((tcp, _)) => {
                tokio::spawn(flow(tcp, is_v6, relay.clone(), s.clone(), metrics.clone()));
            }
            Err(e) => {
                tracing::warn!("accepting an intercepted connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!("shutting down: no new flows, open ones drain");
    drop(listeners);
    drain(&metrics, s.grace).await;
    drop(table);
    Ok(())
}

/// The listener on IPv4 and IPv6 (v6-only, so both can hold the port): on loopback when
/// only local programs are intercepted (a redirect in the output hook goes to 127.0.0.1 or
/// ::1), on every address when a LAN is (it goes to the address it arrived at).
fn listen(port: u16, lan: bool) -> Result<[TcpListener; 2]> {
    let bind = |addr: SocketAddr| -> Result<TcpListener> {
        let domain = socket2::Domain::for_address(addr);
        let sock =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        sock.set_reuse_address(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into()).with_context(|| {
            format!("binding the proxy's listener {addr}: is another proxy client on this port?")
        })?;
        sock.listen(1024)?;
        Ok(TcpListener::from_std(sock.into())?)
    };
    let (v4, v6) = if lan {
        (Ipv4Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED)
    } else {
        (Ipv4Addr::LOCALHOST, Ipv6Addr::LOCALHOST)
    };
    Ok([
        bind(SocketAddr::from((v4, port)))?,
        bind(SocketAddr::from((v6, port)))?,
    ])
}

async fn flow(
    tcp: TcpStream,
    v6: bool,
    mut relay: RelayClient,
    s: Arc<Settings>,
    metrics: Arc<Metrics>,
) {
    let started = tokio::time::Instant::now();
    let src = tcp.peer_addr().ok();
    let dst = match culvert_sys::sockopt::original_destination(&tcp, v6) {
        Ok(d) => d,
        Err(e) => {
            // Not redirected: someone connected to the listener itself.
            tracing::debug!(
                ?src,
                "connection without an original destination closed: {e}"
            );
            return;
        }
    };
    if !s.cidrs.iter().any(|c| c.contains(dst.ip())) {
        metrics.refused(Reason::Forbidden);
        abort(&tcp);
        return;
    }
    let (tx, rx) = mpsc::channel(DEPTH);
    let _ = tx.send(frame(Kind::Open(addr_to_open(dst)))).await;
    let inbound = relay.connect(ReceiverStream::new(rx));
    let bytes = metrics.flow_opened("server");
    let mut connector = String::new();
    let mut connected = false;
    let end = pump::splice(tcp, inbound, tx, Side::Client, &bytes, s.idle, |c| {
        connected = true;
        connector = c.connector.clone();
    })
    .await;
    if let (false, End::Reset(r, _)) = (connected, &end) {
        metrics.refused(*r);
    }
    metrics.flow_closed("server", &end);
    let detail = match &end {
        End::Reset(_, m) => m.as_str(),
        End::Closed => "",
    };
    tracing::info!(
        ?src,
        %dst,
        connector = %connector,
        up = bytes.up.get(),
        down = bytes.down.get(),
        secs = format!("{:.3}", started.elapsed().as_secs_f64()),
        end = end.label(),
        detail,
        "flow"
    );
}

/// Closes `tcp` with a reset.
fn abort(tcp: &TcpStream) {
    let _ = tcp.set_zero_linger();
}
