//! The connector: connects out to the server (never listens), registers what it serves,
//! and dials targets on the server's orders, from its own address.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::Metrics;
use crate::proto::{
    Accept, Connected, ConnectorKind, ConnectorMsg, Dial, Heartbeat, Hello, Kind, Reason,
    RelayClient, ServerKind, ServerMsg, frame, reset,
};
use crate::pump::{self, DEPTH, Side};
use crate::routes::{Route, dial_target};
use crate::{HEARTBEAT, HEARTBEAT_LOSS, drain, open_to_addr, shown};

/// How long dialling a target may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection backoff: first wait, and the longest.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));

/// What a connector runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The server, `host:port`.
    pub server: String,
    /// Its id (its certificate names it).
    pub id: String,
    /// What it serves.
    pub routes: Vec<Route>,
    /// How long a flow may carry nothing.
    pub idle: Duration,
    /// How long open flows may drain at shutdown.
    pub grace: Duration,
}

/// Runs the connector until SIGTERM or SIGINT, reconnecting with backoff.
pub async fn run(
    s: Settings,
    endpoint: tonic::transport::Endpoint,
    metrics: Arc<Metrics>,
) -> Result<()> {
    let s = Arc::new(s);
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new();
    loop {
        let started = Instant::now();
        tokio::select! {
            () = &mut shutdown => break,
            r = session(&endpoint, &s, &metrics) => {
                let e = r.err().map(|e| format!("{e:#}")).unwrap_or_default();
                if started.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                let wait = backoff.next();
                tracing::warn!(server = %s.server, retry_in_ms = wait.as_millis() as u64, "connection to the server lost: {e}");
                metrics.reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    tracing::info!("shutting down: deregistered, open flows drain");
    drain(&metrics, s.grace).await;
    Ok(())
}

/// One connection to the server: register, then obey dial orders until it breaks.
async fn session(
    endpoint: &tonic::transport::Endpoint,
    s: &Arc<Settings>,
    metrics: &Arc<Metrics>,
) -> Result<()> {
    let channel = endpoint.connect().await?;
    let mut relay = RelayClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    let hello = Hello {
        id: s.id.clone(),
        routes: s.routes.iter().map(|r| r.to_msg()).collect(),
    };
    tx.send(ConnectorMsg {
        kind: Some(ConnectorKind::Hello(hello)),
    })
    .await?;
    let mut orders = match relay.register(ReceiverStream::new(rx)).await {
        Ok(o) => o,
        Err(st) => bail!("registration refused: {}", st.message()),
    };
    tracing::info!(
        id = %s.id,
        server = %s.server,
        routes = %s.routes.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
        "connector registered"
    );
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut seq = 0;
    loop {
        tokio::select! {
            m = tokio::time::timeout(HEARTBEAT_LOSS, orders.message()) => match m {
                Ok(Ok(Some(ServerMsg { kind: Some(ServerKind::Dial(d)) }))) => {
                    tokio::spawn(dial(relay.clone(), d, s.clone(), metrics.clone()));
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => bail!("the server ended the control stream"),
                Ok(Err(st)) => bail!("{}", st.message()),
                Err(_) => bail!("nothing from the server in {} s", HEARTBEAT_LOSS.as_secs()),
            },
            _ = beat.tick() => {
                seq += 1;
                tx.send(ConnectorMsg { kind: Some(ConnectorKind::Heartbeat(Heartbeat { seq })) }).await?;
            }
        }
    }
}

/// Answers one dial order: dials the (mapped) target, opens the flow's stream, splices.
async fn dial(mut relay: RelayClient, d: Dial, s: Arc<Settings>, metrics: Arc<Metrics>) {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel(DEPTH);
    let _ = tx.send(frame(Kind::Accept(Accept { flow: d.flow }))).await;
    let asked = d.target.as_ref().and_then(open_to_addr);
    let real = asked
        .ok_or_else(|| "no destination".to_string())
        .and_then(|a| dial_target(&s.routes, a));
    let tcp = match &real {
        Err(why) => Err((Reason::Forbidden, why.clone())),
        Ok(to) => match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(*to)).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Err((Reason::Refused, format!("{to} refused the connection")))
            }
            Ok(Err(e)) => Err((Reason::Unreachable, format!("{to}: {e}"))),
            Err(_) => Err((
                Reason::Unreachable,
                format!("{to} did not answer in {} s", DIAL_TIMEOUT.as_secs()),
            )),
        },
    };
    let first = match &tcp {
        Ok(t) => {
            let _ = t.set_nodelay(true);
            frame(Kind::Connected(Connected {
                connector: s.id.clone(),
            }))
        }
        Err((r, m)) => reset(*r, m.clone()),
    };
    let _ = tx.send(first).await;
    let inbound = relay.accept(ReceiverStream::new(rx));
    match tcp {
        Ok(tcp) => {
            let bytes = metrics.flow_opened("server");
            let end = pump::splice(tcp, inbound, tx, Side::Connector, &bytes, s.idle, |_| {}).await;
            metrics.flow_closed("server", &end);
            tracing::info!(
                flow = d.flow,
                target = %real.as_ref().map(ToString::to_string).unwrap_or_default(),
                asked = %shown(asked),
                up = bytes.up.get(),
                down = bytes.down.get(),
                secs = format!("{:.3}", started.elapsed().as_secs_f64()),
                end = end.label(),
                "flow"
            );
        }
        Err((r, m)) => {
            if let Ok(mut inbound) = inbound.await {
                // The reset is queued: let it reach the server.
                pump::finish(tx, &mut inbound).await;
            }
            metrics.refused(r);
            tracing::info!(flow = d.flow, asked = %shown(asked), reason = r.label(), "dial failed: {m}");
        }
    }
}

/// Exponential backoff with jitter (each wait 50–100 % of the current step).
struct Backoff {
    step: Duration,
    seed: u64,
}

impl Backoff {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id()) << 32;
        Self {
            step: BACKOFF.0,
            seed: seed | 1,
        }
    }

    fn reset(&mut self) {
        self.step = BACKOFF.0;
    }

    fn next(&mut self) -> Duration {
        // xorshift64: jitter needs no quality, only that connectors do not move in step.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        let wait = self.step.mul_f64(frac);
        self.step = (self.step * 2).min(BACKOFF.1);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..12).map(|_| b.next()).collect();
        assert!(waits[0] >= BACKOFF.0 / 2 && waits[0] <= BACKOFF.0);
        assert!(waits.iter().all(|w| *w <= BACKOFF.1));
        assert!(waits[11] >= BACKOFF.1 / 2);
        b.reset();
        assert!(b.next() <= BACKOFF.0);
    }
}
