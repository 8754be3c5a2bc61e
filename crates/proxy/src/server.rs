//! The relay server: clients open flows, connectors register what they serve and answer
//! dial orders; each flow is two streams joined here.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::pki::{self, CLIENT_NAME};
use crate::proto::RelayServer;
use crate::proto::{
    ConnectorKind, ConnectorMsg, Dial, Frame, Heartbeat, Kind, Outbound, Reason, Relay, ServerKind,
    ServerMsg, reset,
};
use crate::pump::{self, DEPTH, End};
use crate::routes::{self, Route};
use crate::{HEARTBEAT, HEARTBEAT_LOSS, open_to_addr, shown};
use culvert_wire::addr::Prefix;

/// How long a client's first frame, and a connector's answer to a dial order, may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may take to finish TLS: a stranger that sends a ClientHello
/// and then nothing must not hold a slot for the kernel's retransmission timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes under way at once; a connection beyond them is closed at once.
const HANDSHAKES: usize = 256;
/// A TLS failure from one address is logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// A registered connector.
#[derive(Debug)]
struct Connector {
    id: String,
    session: u64,
    routes: Vec<Route>,
    orders: mpsc::Sender<ServerMsg>,
    flows: AtomicUsize,
}

/// A dial order waiting for its connector's stream.
struct Pending {
    connector: String,
    hand: oneshot::Sender<(Streaming<Frame>, mpsc::Sender<Frame>)>,
}

/// The server's shared state.
#[derive(Default)]
pub struct Hub {
    connectors: Mutex<HashMap<u64, Arc<Connector>>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
    /// Counters for `/metrics` and `/status`.
    pub metrics: Metrics,
    idle: Duration,
    /// What each connector may serve; empty: any connector anything.
    scopes: BTreeMap<String, Vec<Prefix>>,
    /// Flows open per client address, and the most one may have.
    per_client: Mutex<HashMap<IpAddr, usize>>,
    max_flows_per_client: usize,
}

/// One of a client's open flows; counted off when dropped.
struct ClientFlow<'a> {
    hub: &'a Hub,
    ip: IpAddr,
}

impl Drop for ClientFlow<'_> {
    fn drop(&mut self) {
        let mut m = self.hub.per_client.lock().unwrap();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

fn outbound<T: Send + 'static>(rx: mpsc::Receiver<T>) -> Outbound<T> {
    Box::pin(ReceiverStream::new(rx).map(Ok))
}

impl Hub {
    /// A hub whose flows end after `idle` without traffic. With `scopes`, a connector may
    /// register only routes inside its own entry, and one without an entry not at all: a
    /// connector's certificate proves who it is, not which networks are its to serve, and
    /// a longer prefix would otherwise draw other sites' flows to it.
    ///
    /// One client address may hold `max_flows_per_client` flows at once (a client host
    /// or a NAT in front of several): every flow costs the server two streams, and a
    /// single certificate holder must not take them all.
    pub fn new(
        idle: Duration,
        scopes: BTreeMap<String, Vec<Prefix>>,
        max_flows_per_client: usize,
    ) -> Self {
        if scopes.is_empty() {
            tracing::warn!(
                "any connector may serve any prefix (and draw flows from the others with a longer one): restrict each with --allow-connector ID=PREFIX"
            );
        }
        Self {
            idle,
            scopes,
            max_flows_per_client,
            ..Self::default()
        }
    }

    /// Counts a flow of the client at `ip` in, if it has room.
    fn admit(&self, ip: IpAddr) -> Option<ClientFlow<'_>> {
        let mut m = self.per_client.lock().unwrap();
        let n = m.entry(ip).or_default();
        if *n >= self.max_flows_per_client {
            return None;
        }
        *n += 1;
        Some(ClientFlow { hub: self, ip })
    }

    /// Why connector `id` may not serve `routes`, if it may not.
    fn out_of_scope(&self, id: &str, routes: &[Route]) -> Option<String> {
        if self.scopes.is_empty() {
            return None;
        }
        let Some(allowed) = self.scopes.get(id) else {
            return Some(format!(
                "connector {id:?} is not allowed here (--allow-connector)"
            ));
        };
        routes
            .iter()
            .find(|r| !allowed.iter().any(|a| a.covers(&r.prefix)))
            .map(|r| {
                format!(
                    "connector {id:?} may not serve {} (--allow-connector)",
                    r.prefix
                )
            })
    }

    /// The connectors registered now: id, routes, open flows.
    pub fn connectors(&self) -> Vec<(String, Vec<Route>, usize)> {
        let mut v: Vec<_> = self
            .connectors
            .lock()
            .unwrap()
            .values()
            .map(|c| {
                (
                    c.id.clone(),
                    c.routes.clone(),
                    c.flows.load(Ordering::Relaxed),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn choose(&self, ip: IpAddr) -> Option<Arc<Connector>> {
        let map = self.connectors.lock().unwrap();
        let key = routes::choose(
            map.values()
                .map(|c| (c.session, &c.routes[..], c.flows.load(Ordering::Relaxed))),
            ip,
        )?;
        map.get(&key).cloned()
    }

    /// One client flow, from its first frame to its end.
    async fn flow(
        self: Arc<Self>,
        peer: Option<SocketAddr>,
        mut inbound: Streaming<Frame>,
        to_client: mpsc::Sender<Frame>,
    ) {
        let started = tokio::time::Instant::now();
        let ip = peer.map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |p| {
            p.ip().to_canonical()
        });
        let Some(_counted) = self.admit(ip) else {
            tracing::warn!(client = %ip, max = self.max_flows_per_client, "flow refused: the client has as many flows open as it may (max_flows_per_client)");
            let _ = to_client
                .send(reset(Reason::Forbidden, "too many flows from this client"))
                .await;
            self.metrics.refused(Reason::Forbidden);
            return;
        };
        let first = tokio::time::timeout(SETUP_TIMEOUT, inbound.message()).await;
        let Ok(Ok(Some(Frame {
            kind: Some(Kind::Open(open)),
        }))) = first
        else {
            let _ = to_client
                .send(reset(Reason::Protocol, "a flow starts with open"))
                .await;
            self.metrics.refused(Reason::Protocol);
            return;
        };
        let Some(dst) = open_to_addr(&open) else {
            let _ = to_client
                .send(reset(Reason::Protocol, "bad destination"))
                .await;
            self.metrics.refused(Reason::Protocol);
            return;
        };
        let Some(connector) = self.choose(dst.ip()) else {
            tracing::info!(client = %shown(peer), %dst, "flow refused: no connector serves the destination");
            let _ = to_client
                .send(reset(Reason::NoRoute, format!("no connector serves {dst}")))
                .await;
            self.metrics.refused(Reason::NoRoute);
            return;
        };
        let flow = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (hand, handed) = oneshot::channel();
        self.pending.lock().unwrap().insert(
            flow,
            Pending {
                connector: connector.id.clone(),
                hand,
            },
        );
        let order = ServerMsg {
            kind: Some(ServerKind::Dial(Dial {
                flow,
                target: Some(open),
            })),
        };
        let answered = if connector.orders.send(order).await.is_ok() {
            tokio::time::timeout(SETUP_TIMEOUT, handed)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        let Some((from_connector, to_connector)) = answered else {
            self.pending.lock().unwrap().remove(&flow);
            tracing::warn!(flow, %dst, connector = %connector.id, "flow refused: the connector did not answer");
            let _ = to_client
                .send(reset(Reason::Unreachable, "the connector did not answer"))
                .await;
            self.metrics.refused(Reason::Unreachable);
            return;
        };
        connector.flows.fetch_add(1, Ordering::Relaxed);
        let bytes = self.metrics.flow_opened(&connector.id);
        let up = pump::forward(inbound, to_connector, &bytes.up);
        let down = pump::forward(from_connector, to_client, &bytes.down);
        // The ends reset a flow idle for `idle`; this is the backstop for ends that
        // vanished, and it counts idle time only, never a flow's age.
        let (up_end, down_end) = pump::until_idle(
            async { tokio::join!(up, down) },
            &bytes,
            self.idle * 2 + SETUP_TIMEOUT,
        )
        .await
        .unwrap_or((
            End::Reset(Reason::Idle, String::new()),
            End::Reset(Reason::Idle, String::new()),
        ));
        connector.flows.fetch_sub(1, Ordering::Relaxed);
        let end = if matches!(up_end, End::Reset(..)) {
            up_end
        } else {
            down_end
        };
        self.metrics.flow_closed(&connector.id, &end);
        tracing::info!(
            flow,
            client = %shown(peer),
            %dst,
            connector = %connector.id,
            up = bytes.up.get(),
            down = bytes.down.get(),
            secs = format!("{:.3}", started.elapsed().as_secs_f64()),
            end = end.label(),
            "flow"
        );
    }

    fn remove_connector(&self, session: u64) {
        if let Some(c) = self.connectors.lock().unwrap().remove(&session) {
            tracing::info!(connector = %c.id, "connector deregistered");
        }
    }
}

#[tonic::async_trait]
impl Relay for Arc<Hub> {
    async fn connect(
        &self,
        req: Request<Streaming<Frame>>,
    ) -> Result<Response<Outbound<Frame>>, Status> {
        if !pki::peer_holds(req.peer_certs().as_ref(), CLIENT_NAME) {
            self.metrics.refused(Reason::Forbidden);
            return Err(Status::permission_denied(
                "this certificate is not a client's",
            ));
        }
        let peer = req.remote_addr();
        let (tx, rx) = mpsc::channel(DEPTH);
        tokio::spawn(self.clone().flow(peer, req.into_inner(), tx));
        Ok(Response::new(outbound(rx)))
    }

    async fn register(
        &self,
        req: Request<Streaming<ConnectorMsg>>,
    ) -> Result<Response<Outbound<ServerMsg>>, Status> {
        let certs = req.peer_certs();
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let Ok(Ok(Some(ConnectorMsg {
            kind: Some(ConnectorKind::Hello(hello)),
        }))) = tokio::time::timeout(SETUP_TIMEOUT, inbound.message()).await
        else {
            return Err(Status::invalid_argument("a connector starts with hello"));
        };
        if pki::check_connector_id(&hello.id).is_err()
            || !pki::peer_holds(certs.as_ref(), &pki::connector_name(&hello.id))
        {
            tracing::warn!(id = %hello.id, peer = %shown(peer), "registration refused: the certificate is not this connector's");
            return Err(Status::permission_denied(format!(
                "this certificate is not connector {:?}'s",
                hello.id
            )));
        }
        let routes: Vec<Route> = hello.routes.iter().filter_map(Route::from_msg).collect();
        if routes.len() != hello.routes.len() || routes.is_empty() {
            return Err(Status::invalid_argument(
                "a route does not parse, or there is none",
            ));
        }
        if let Some(why) = self.out_of_scope(&hello.id, &routes) {
            tracing::warn!(id = %hello.id, peer = %shown(peer), "registration refused: {why}");
            return Err(Status::permission_denied(why));
        }
        let session = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(64);
        let connector = Arc::new(Connector {
            id: hello.id.clone(),
            session,
            routes,
            orders: tx.clone(),
            flows: AtomicUsize::new(0),
        });
        tracing::info!(
            connector = %hello.id,
            peer = %shown(peer),
            routes = %connector.routes.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            "connector registered"
        );
        self.connectors.lock().unwrap().insert(session, connector);
        let this = self.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            let mut beat = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    m = tokio::time::timeout(HEARTBEAT_LOSS, inbound.message()) => match m {
                        Ok(Ok(Some(_))) => {}
                        Ok(Ok(None)) | Ok(Err(_)) => break,
                        Err(_) => {
                            tracing::warn!(session, "connector silent: deregistered");
                            break;
                        }
                    },
                    _ = beat.tick() => {
                        seq += 1;
                        let m = ServerMsg { kind: Some(ServerKind::Heartbeat(Heartbeat { seq })) };
                        if tx.send(m).await.is_err() {
                            break;
                        }
                    }
                }
            }
            this.remove_connector(session);
        });
        Ok(Response::new(outbound(rx)))
    }

    async fn accept(
        &self,
        req: Request<Streaming<Frame>>,
    ) -> Result<Response<Outbound<Frame>>, Status> {
        let certs = req.peer_certs();
        let mut inbound = req.into_inner();
        let flow = match tokio::time::timeout(SETUP_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(Frame {
                kind: Some(Kind::Accept(a)),
            }))) => a.flow,
            _ => return Err(Status::invalid_argument("an answer starts with accept")),
        };
        let pending = {
            let mut map = self.pending.lock().unwrap();
            match map.get(&flow) {
                Some(p) if pki::peer_holds(certs.as_ref(), &pki::connector_name(&p.connector)) => {
                    map.remove(&flow)
                }
                Some(_) => {
                    return Err(Status::permission_denied(
                        "this dial order is another connector's",
                    ));
                }
                None => None,
            }
        };
        let Some(pending) = pending else {
            return Err(Status::not_found("no such dial order (timed out?)"));
        };
        let (tx, rx) = mpsc::channel(DEPTH);
        if pending.hand.send((inbound, tx)).is_err() {
            return Err(Status::cancelled("the client's flow is gone"));
        }
        Ok(Response::new(outbound(rx)))
    }
}

/// Runs the server until SIGTERM or SIGINT, then lets open flows drain for `grace`.
pub async fn run(
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    hub: Arc<Hub>,
    grace: Duration,
) -> anyhow::Result<()> {
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(HEARTBEAT))
        .http2_keepalive_timeout(Some(HEARTBEAT_LOSS))
        .initial_stream_window_size(crate::STREAM_WINDOW)
        .initial_connection_window_size(crate::CONNECTION_WINDOW)
        .add_service(RelayServer::new(Arc::new(hub.clone())));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))?;
    tracing::info!(%listen, "proxy server listening");
    let incoming = tls_incoming(listener, tls, hub.clone());
    let (fired, on_fire) = oneshot::channel();
    let serve = server.serve_with_incoming_shutdown(incoming, async move {
        crate::shutdown_signal().await;
        tracing::info!("shutting down: no new flows, open ones drain");
        let _ = fired.send(());
    });
    // Connectors' control streams never end by themselves: the server is done when its
    // flows are (or the grace period is over), not when every stream is.
    tokio::select! {
        r = serve => r?,
        () = async {
            if on_fire.await.is_ok() {
                crate::drain(&hub.metrics, grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {}
    }
    Ok(())
}

/// Connections that finished TLS, from an accept loop of our own: tonic's ends the whole
/// server on a handshake error it does not expect (a peer that sent a ClientHello and
/// then timed out at the TCP level), and waits for a silent peer without limit. Here each
/// handshake runs on its own, under [`HANDSHAKE_TIMEOUT`], at most [`HANDSHAKES`] at once,
/// and no error of one connection ends the loop.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    hub: Arc<Hub>,
) -> ReceiverStream<std::io::Result<TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        let refusals = Arc::new(Mutex::new(RefusalLog::default()));
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin; the loop goes on.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                hub.metrics.connection_refused("handshakes_full");
                continue;
            };
            // Small frames (a reset, a dial order) must not wait for a delayed ACK.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, hub, refusals) =
                (acceptor.clone(), tx.clone(), hub.clone(), refusals.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let why = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                        return;
                    }
                    Ok(Err(e)) => {
                        hub.metrics.connection_refused("tls_failed");
                        e.to_string()
                    }
                    Err(_) => {
                        hub.metrics.connection_refused("tls_timeout");
                        format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")
                    }
                };
                if refusals.lock().unwrap().due(peer.ip()) {
                    tracing::warn!(%peer, "connection refused: {why} (a client or connector with a certificate from another CA, or not a proxy peer at all)");
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// When each address's last TLS failure was logged, so a flood logs one line a minute.
#[derive(Default)]
struct RefusalLog(HashMap<IpAddr, tokio::time::Instant>);

impl RefusalLog {
    fn due(&mut self, ip: IpAddr) -> bool {
        let now = tokio::time::Instant::now();
        if self.0.len() > 4096 {
            self.0
                .retain(|_, t| now.duration_since(*t) < REFUSAL_LOG_EVERY);
        }
        match self.0.get(&ip) {
            Some(t) if now.duration_since(*t) < REFUSAL_LOG_EVERY => false,
            _ => {
                self.0.insert(ip, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connector_serves_only_what_lies_wholly_inside_its_scope() {
        let p = |s: &str| routes::parse_prefix(s).unwrap();
        let scoped = |allowed: Vec<Prefix>| {
            Hub::new(
                Duration::from_secs(1),
                BTreeMap::from([("a".to_string(), allowed)]),
                16,
            )
        };
        let hub = scoped(vec![p("100.64.1.0/24"), p("fd64::/16")]);
        let may =
            |hub: &Hub, id: &str, r: &str| hub.out_of_scope(id, &[Route::direct(p(r))]).is_none();
        assert!(may(&hub, "a", "100.64.1.0/24"));
        assert!(may(&hub, "a", "100.64.1.128/25"));
        assert!(may(&hub, "a", "fd64:1::/64"));
        assert!(!may(&hub, "a", "100.64.0.0/16"), "wider than the scope");
        assert!(!may(&hub, "a", "100.64.2.0/24"));
        assert!(!may(&hub, "a", "::/0"));
        assert!(!may(&hub, "b", "100.64.1.0/24"), "a connector not named");
        let v6 = scoped(vec![p("::/0")]);
        assert!(!may(&v6, "a", "0.0.0.0/0"), "another family");
        // Without scopes, anything goes (with a warning at start).
        let open = Hub::new(Duration::from_secs(1), BTreeMap::new(), 16);
        assert!(may(&open, "b", "0.0.0.0/0"));
    }
}
