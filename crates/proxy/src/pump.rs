//! Moving a flow's bytes: a TCP connection spliced onto a gRPC stream (client,
//! connector), and two streams spliced onto each other (server).
//!
//! Each direction ends on its own: EOF on a socket becomes `Fin`, `Fin` becomes
//! `shutdown(SHUT_WR)`, so a half-closed connection keeps flowing the other way. An error
//! or `Reset` aborts both directions, and the socket is closed with a reset (`SO_LINGER`
//! 0). Channels hold a few frames of at most [`CHUNK`] bytes and sockets are read only
//! when there is room, so a slow reader stalls its sender through HTTP/2 flow control
//! instead of filling memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Streaming;

use crate::proto::{Connected, Fin, Frame, Kind, Reason, frame, reset};

/// The largest data frame.
pub const CHUNK: usize = 32 * 1024;
/// Frames a flow's channel holds per direction.
pub const DEPTH: usize = 4;

/// How a flow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both directions finished.
    Closed,
    /// Aborted, for this reason.
    Reset(Reason, String),
}

impl End {
    /// The label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Reset(r, _) => r.label(),
        }
    }
}

/// Bytes moved one way by one flow, also added to its peer's running total so that
/// metrics count a long flow while it is open, not only when it ends.
#[derive(Debug, Default)]
pub struct Count {
    flow: AtomicU64,
    total: Arc<AtomicU64>,
}

impl Count {
    /// A flow's count feeding `total`.
    pub fn new(total: Arc<AtomicU64>) -> Self {
        Self {
            flow: AtomicU64::new(0),
            total,
        }
    }

    fn add(&self, n: usize) {
        self.flow.fetch_add(n as u64, Ordering::Relaxed);
        self.total.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// This flow's bytes so far.
    pub fn get(&self) -> u64 {
        self.flow.load(Ordering::Relaxed)
    }
}

/// Bytes moved, per direction.
#[derive(Debug, Default)]
pub struct Bytes {
    /// Towards the target.
    pub up: Count,
    /// Back towards the client.
    pub down: Count,
}

/// When anything last moved, for the idle timeout.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

fn reason_of(e: &std::io::Error) -> Reason {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Reason::Refused,
        _ => Reason::Aborted,
    }
}

/// Which way a TCP side's bytes count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: what it reads goes up.
    Client,
    /// The connector: what it reads goes down.
    Connector,
}

/// Splices `tcp` onto a stream: what `tcp` sends goes out as frames on `out`, frames
/// from `inbound` are written to `tcp`. `on_connected` runs at a `Connected` frame.
///
/// `inbound` is the call that opens the stream: reading `tcp` starts at once, so the
/// first bytes follow the opening frame without waiting a round trip for the server's
/// response headers.
#[allow(clippy::too_many_arguments)]
pub async fn splice(
    tcp: TcpStream,
    inbound: impl Future<Output = Result<Streaming<Frame>, tonic::Status>>,
    out: mpsc::Sender<Frame>,
    side: Side,
    bytes: &Bytes,
    idle: Duration,
    mut on_connected: impl FnMut(&Connected),
) -> End {
    let (mut rd, mut wr) = tcp.into_split();
    let activity = Activity::new();
    let (read_count, write_count) = match side {
        Side::Client => (&bytes.up, &bytes.down),
        Side::Connector => (&bytes.down, &bytes.up),
    };
    let reading = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) => {
                    return match out.send(frame(Kind::Fin(Fin {}))).await {
                        Ok(()) => Ok(()),
                        Err(_) => Err(End::Reset(Reason::Aborted, "the stream closed".into())),
                    };
                }
                Ok(n) => {
                    activity.touch();
                    read_count.add(n);
                    let data = buf.split_to(n.min(buf.len())).freeze();
                    if out.send(frame(Kind::Data(data))).await.is_err() {
                        return Err(End::Reset(Reason::Aborted, "the stream closed".into()));
                    }
                }
                Err(e) => {
                    let r = reason_of(&e);
                    let _ = out.send(reset(r, e.to_string())).await;
                    return Err(End::Reset(r, e.to_string()));
                }
            }
        }
    };
    let mut stream = None;
    let writing = async {
        let inbound = match inbound.await {
            Ok(s) => stream.insert(s),
            Err(st) => {
                let m = format!("the server did not take the flow: {}", with_causes(&st));
                return Err(End::Reset(Reason::Unreachable, m));
            }
        };
        loop {
            let msg = match inbound.message().await {
                Ok(Some(f)) => f,
                Ok(None) => {
                    return Err(End::Reset(
                        Reason::Aborted,
                        "the stream ended without fin".into(),
                    ));
                }
                Err(s) => return Err(End::Reset(Reason::Aborted, s.message().to_string())),
            };
            match msg.kind {
                Some(Kind::Data(d)) => {
                    activity.touch();
                    if let Err(e) = wr.write_all(&d).await {
                        let _ = out.send(reset(Reason::Aborted, e.to_string())).await;
                        return Err(End::Reset(Reason::Aborted, e.to_string()));
                    }
                    write_count.add(d.len());
                }
                Some(Kind::Fin(_)) => {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                Some(Kind::Reset(r)) => {
                    let reason = Reason::try_from(r.reason).unwrap_or(Reason::Aborted);
                    return Err(End::Reset(reason, r.message));
                }
                Some(Kind::Connected(c)) => on_connected(&c),
                _ => {
                    let _ = out.send(reset(Reason::Protocol, "unexpected frame")).await;
                    return Err(End::Reset(Reason::Protocol, "unexpected frame".into()));
                }
            }
        }
    };
    let end = both(reading, writing, &activity, idle, &out).await;
    if let (End::Closed, Some(inbound)) = (&end, stream.as_mut()) {
        drop((rd, wr));
        finish(out, inbound).await;
    } else {
        // Whole again, so that dropping the write half sends no FIN first; then
        // SO_LINGER 0: the close sends RST, and the application sees the reset.
        if let Ok(tcp) = rd.reunite(wr) {
            let _ = tcp.set_zero_linger();
        }
    }
    end
}

/// A status with every cause under it: tonic says only "transport error" where TLS says
/// why (a certificate from another CA, an expired one, a name that does not match).
pub fn with_causes(st: &tonic::Status) -> String {
    let mut out = st.message().to_owned();
    let mut cause = std::error::Error::source(st);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out += ": ";
            out += &text;
        }
        cause = c.source();
    }
    out
}

/// Ends our side of a stream gracefully: what is queued on `out` still goes, then the
/// request ends; `inbound` is held until the server ends it too. Dropping it earlier
/// would cancel the HTTP/2 stream (RST_STREAM) and lose frames still queued.
pub async fn finish(out: mpsc::Sender<Frame>, inbound: &mut Streaming<Frame>) {
    drop(out);
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
}

/// How long a finished flow waits for the server to end its stream.
const LINGER: Duration = Duration::from_secs(10);

/// Runs both directions until both finish or one aborts, or nothing moved for `idle`.
async fn both(
    a: impl Future<Output = Result<(), End>>,
    b: impl Future<Output = Result<(), End>>,
    activity: &Activity,
    idle: Duration,
    out: &mpsc::Sender<Frame>,
) -> End {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut a_done, mut b_done) = (false, false);
    let mut tick =
        tokio::time::interval(idle.min(Duration::from_secs(60)) / 4 + Duration::from_millis(1));
    loop {
        tokio::select! {
            r = &mut a, if !a_done => match r {
                Ok(()) => a_done = true,
                Err(e) => return e,
            },
            r = &mut b, if !b_done => match r {
                Ok(()) => b_done = true,
                Err(e) => return e,
            },
            _ = tick.tick() => if activity.idle() >= idle {
                let _ = out.try_send(reset(Reason::Idle, "idle timeout"));
                return End::Reset(Reason::Idle, "idle timeout".into());
            },
        }
        if a_done && b_done {
            return End::Closed;
        }
    }
}

/// Runs `f` while `bytes` keep moving: `None` once nothing moved either way for `idle`
/// (however long the flow has lasted).
pub async fn until_idle<F: Future>(f: F, bytes: &Bytes, idle: Duration) -> Option<F::Output> {
    let moved = || bytes.up.get() + bytes.down.get();
    let mut f = std::pin::pin!(f);
    let mut tick = tokio::time::interval(idle / 4 + Duration::from_millis(1));
    let (mut seen, mut since) = (moved(), Instant::now());
    loop {
        tokio::select! {
            out = &mut f => return Some(out),
            _ = tick.tick() => {
                let now = moved();
                if now != seen {
                    (seen, since) = (now, Instant::now());
                } else if since.elapsed() >= idle {
                    return None;
                }
            }
        }
    }
}

/// Forwards one direction of a flow through the server: frames from `inbound` to `out`
/// as they come, counting data into `count`. Ends after `Fin` or `Reset` is passed on; a
/// stream that breaks off sends `Reset` on.
pub async fn forward(
    mut inbound: Streaming<Frame>,
    out: mpsc::Sender<Frame>,
    count: &Count,
) -> End {
    loop {
        let f = match inbound.message().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                let _ = out
                    .send(reset(Reason::Aborted, "the peer's stream ended"))
                    .await;
                return End::Reset(Reason::Aborted, "the peer's stream ended".into());
            }
            Err(s) => {
                let _ = out.send(reset(Reason::Aborted, s.message())).await;
                return End::Reset(Reason::Aborted, s.message().to_string());
            }
        };
        let end = match &f.kind {
            Some(Kind::Data(d)) => {
                count.add(d.len());
                None
            }
            Some(Kind::Fin(_)) => Some(End::Closed),
            Some(Kind::Reset(r)) => Some(End::Reset(
                Reason::try_from(r.reason).unwrap_or(Reason::Aborted),
                r.message.clone(),
            )),
            Some(Kind::Connected(_)) => None,
            _ => {
                let _ = out.send(reset(Reason::Protocol, "unexpected frame")).await;
                return End::Reset(Reason::Protocol, "unexpected frame".into());
            }
        };
        if out.send(f).await.is_err() {
            return End::Reset(Reason::Aborted, "the other side is gone".into());
        }
        if let Some(end) = end {
            return end;
        }
    }
}
