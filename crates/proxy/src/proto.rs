//! The relay's gRPC protocol (`proto/relay.proto` is the same text as a `.proto` file):
//! its messages written out with prost's derives and its one service routed by hand, so
//! building needs no `protoc`.
//!
//! * `Connect` — a client, one stream per intercepted TCP connection: `Open`, then data.
//! * `Register` — a connector's control stream: `Hello` with what it serves, heartbeats
//!   both ways, and `Dial` orders from the server.
//! * `Accept` — a connector, one stream per dialled flow: `Accept`, then `Connected` or
//!   `Reset`, then data.
//!
//! A data stream ends in each direction with `Fin` (TCP's half-close) and is aborted with
//! `Reset`; both are frames, so a half-closed flow keeps its stream for the other way.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use tonic::codec::ProstCodec;
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};
use tonic::{Request, Response, Status, Streaming};

/// The service's full name.
pub const SERVICE: &str = "culvert.proxy.v1.Relay";

/// One unit of a flow's stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    /// What the frame carries.
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<Kind>,
}

/// The kinds of [`Frame`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    /// Client → server, first: where the intercepted connection was going.
    #[prost(message, tag = "1")]
    Open(Open),
    /// Bytes of the TCP stream, in order.
    #[prost(bytes = "bytes", tag = "2")]
    Data(bytes::Bytes),
    /// No more data this way (the sender's peer shut its write side).
    #[prost(message, tag = "3")]
    Fin(Fin),
    /// The flow is aborted; the receiver resets its TCP connection.
    #[prost(message, tag = "4")]
    Reset(Reset),
    /// The target accepted the connection.
    #[prost(message, tag = "5")]
    Connected(Connected),
    /// Connector → server, first: which dial order this stream answers.
    #[prost(message, tag = "6")]
    Accept(Accept),
}

/// A destination: the address's 4 or 16 bytes and a port.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Open {
    /// The original destination address (4 or 16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub addr: Vec<u8>,
    /// The original destination port.
    #[prost(uint32, tag = "2")]
    pub port: u32,
}

/// Half-close.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Fin {}

/// Why a flow was aborted.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reset {
    /// The reason, as [`Reason`].
    #[prost(enumeration = "Reason", tag = "1")]
    pub reason: i32,
    /// Detail for logs.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// Reasons for a [`Reset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Reason {
    /// The peer's TCP connection was reset or failed.
    Aborted = 0,
    /// The target refused the connection.
    Refused = 1,
    /// No connector serves the destination.
    NoRoute = 2,
    /// The target could not be reached in time.
    Unreachable = 3,
    /// The destination is outside what the connector serves.
    Forbidden = 4,
    /// Nothing moved for the idle timeout.
    Idle = 5,
    /// A component is shutting down.
    Shutdown = 6,
    /// The protocol was not followed.
    Protocol = 7,
}

impl Reason {
    /// The name used in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Aborted => "aborted",
            Self::Refused => "refused",
            Self::NoRoute => "no_route",
            Self::Unreachable => "unreachable",
            Self::Forbidden => "forbidden",
            Self::Idle => "idle",
            Self::Shutdown => "shutdown",
            Self::Protocol => "protocol",
        }
    }
}

/// The dial succeeded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Connected {
    /// The connector that dialled.
    #[prost(string, tag = "1")]
    pub connector: String,
}

/// Names the dial order a connector's stream answers.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Accept {
    /// The flow's number, from [`Dial`].
    #[prost(uint64, tag = "1")]
    pub flow: u64,
}

/// Connector → server on the control stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectorMsg {
    /// What the message carries.
    #[prost(oneof = "ConnectorKind", tags = "1, 2")]
    pub kind: Option<ConnectorKind>,
}

/// The kinds of [`ConnectorMsg`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ConnectorKind {
    /// First: who the connector is and what it serves.
    #[prost(message, tag = "1")]
    Hello(Hello),
    /// Liveness.
    #[prost(message, tag = "2")]
    Heartbeat(Heartbeat),
}

/// A connector's registration.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// Its id (its certificate must name it).
    #[prost(string, tag = "1")]
    pub id: String,
    /// The prefixes it serves, as clients address them.
    #[prost(message, repeated, tag = "2")]
    pub routes: Vec<RouteMsg>,
}

/// A prefix a connector serves: `prefix` as clients address it; `real`, when set, the
/// network it is mapped to on the connector's side (same length, host bits kept).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RouteMsg {
    /// The prefix clients address (`192.168.1.0/24`, `100.64.1.0/24`).
    #[prost(string, tag = "1")]
    pub prefix: String,
    /// The real prefix behind a virtual one; empty when not mapped.
    #[prost(string, tag = "2")]
    pub real: String,
}

/// Liveness, both ways on the control stream.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Heartbeat {
    /// A counter, for logs.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
}

/// Server → connector on the control stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerMsg {
    /// What the message carries.
    #[prost(oneof = "ServerKind", tags = "1, 2")]
    pub kind: Option<ServerKind>,
}

/// The kinds of [`ServerMsg`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ServerKind {
    /// Dial a target and answer on a new `Accept` stream.
    #[prost(message, tag = "1")]
    Dial(Dial),
    /// Liveness.
    #[prost(message, tag = "2")]
    Heartbeat(Heartbeat),
}

/// An order to dial.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dial {
    /// The flow's number, echoed in [`Accept`].
    #[prost(uint64, tag = "1")]
    pub flow: u64,
    /// The destination as the client addressed it (the connector maps it).
    #[prost(message, optional, tag = "2")]
    pub target: Option<Open>,
}

/// A stream of messages to the peer.
pub type Outbound<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// What the server does with each method.
#[tonic::async_trait]
pub trait Relay: Send + Sync + 'static {
    /// A client's flow.
    async fn connect(
        &self,
        req: Request<Streaming<Frame>>,
    ) -> Result<Response<Outbound<Frame>>, Status>;
    /// A connector's control stream.
    async fn register(
        &self,
        req: Request<Streaming<ConnectorMsg>>,
    ) -> Result<Response<Outbound<ServerMsg>>, Status>;
    /// A connector's answer to a dial order.
    async fn accept(
        &self,
        req: Request<Streaming<Frame>>,
    ) -> Result<Response<Outbound<Frame>>, Status>;
}

/// The service as tonic's server routes it.
#[derive(Debug)]
pub struct RelayServer<T>(Arc<T>);

impl<T> RelayServer<T> {
    /// Serves `relay`.
    pub fn new(relay: Arc<T>) -> Self {
        Self(relay)
    }
}

impl<T> Clone for RelayServer<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> tonic::server::NamedService for RelayServer<T> {
    const NAME: &'static str = SERVICE;
}

/// One bidirectional method: `call` on the relay, with tonic's framing around it.
struct Method<T, Req, F> {
    relay: Arc<T>,
    call: F,
    _req: std::marker::PhantomData<fn(Req)>,
}

impl<T, Req, Resp, F, Fut> tonic::server::StreamingService<Req> for Method<T, Req, F>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>, Request<Streaming<Req>>) -> Fut,
    Fut: Future<Output = Result<Response<Outbound<Resp>>, Status>> + Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type ResponseStream = Outbound<Resp>;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Outbound<Resp>>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<Req>>) -> Self::Future {
        Box::pin((self.call)(self.relay.clone(), request))
    }
}

fn serve<T, Req, Resp, F, Fut, B>(
    relay: Arc<T>,
    call: F,
    req: http::Request<B>,
) -> BoxFuture<http::Response<tonic::body::BoxBody>, Infallible>
where
    T: Send + Sync + 'static,
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: Fn(Arc<T>, Request<Streaming<Req>>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<Outbound<Resp>>, Status>> + Send + 'static,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    Box::pin(async move {
        let method = Method {
            relay,
            call,
            _req: std::marker::PhantomData,
        };
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Resp, Req>::default());
        Ok(grpc.streaming(method, req).await)
    })
}

impl<T, B> Service<http::Request<B>> for RelayServer<T>
where
    T: Relay,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let relay = self.0.clone();
        match req.uri().path().strip_prefix("/culvert.proxy.v1.Relay/") {
            Some("Connect") => serve(relay, |r: Arc<T>, q| async move { r.connect(q).await }, req),
            Some("Register") => serve(
                relay,
                |r: Arc<T>, q| async move { r.register(q).await },
                req,
            ),
            Some("Accept") => serve(relay, |r: Arc<T>, q| async move { r.accept(q).await }, req),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// The client side: opens the three methods' streams on a channel.
#[derive(Debug, Clone)]
pub struct RelayClient(tonic::client::Grpc<tonic::transport::Channel>);

impl RelayClient {
    /// A client on `channel`.
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self(tonic::client::Grpc::new(channel))
    }

    async fn open<Req, Resp>(
        &mut self,
        method: &'static str,
        out: impl tokio_stream::Stream<Item = Req> + Send + 'static,
    ) -> Result<Streaming<Resp>, Status>
    where
        Req: prost::Message + Send + 'static,
        Resp: prost::Message + Default + Send + 'static,
    {
        self.0
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("the server is not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(method);
        let resp = self
            .0
            .streaming(Request::new(out), path, ProstCodec::<Req, Resp>::default())
            .await?;
        Ok(resp.into_inner())
    }

    /// A client's flow.
    pub async fn connect(
        &mut self,
        out: impl tokio_stream::Stream<Item = Frame> + Send + 'static,
    ) -> Result<Streaming<Frame>, Status> {
        self.open("/culvert.proxy.v1.Relay/Connect", out).await
    }

    /// A connector's control stream.
    pub async fn register(
        &mut self,
        out: impl tokio_stream::Stream<Item = ConnectorMsg> + Send + 'static,
    ) -> Result<Streaming<ServerMsg>, Status> {
        self.open("/culvert.proxy.v1.Relay/Register", out).await
    }

    /// A connector's answer to a dial order.
    pub async fn accept(
        &mut self,
        out: impl tokio_stream::Stream<Item = Frame> + Send + 'static,
    ) -> Result<Streaming<Frame>, Status> {
        self.open("/culvert.proxy.v1.Relay/Accept", out).await
    }
}

/// A frame of kind `k`.
pub fn frame(k: Kind) -> Frame {
    Frame { kind: Some(k) }
}

/// A reset frame.
pub fn reset(reason: Reason, message: impl Into<String>) -> Frame {
    frame(Kind::Reset(Reset {
        reason: reason as i32,
        message: message.into(),
    }))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn wire_matches_the_proto_file() {
        let open = frame(Kind::Open(Open {
            addr: vec![192, 168, 1, 5],
            port: 80,
        }));
        // field 1 (open), length 8: field 1 (addr) length 4, field 2 (port) 80.
        assert_eq!(
            open.encode_to_vec(),
            [0x0a, 8, 0x0a, 4, 192, 168, 1, 5, 0x10, 80]
        );
        assert_eq!(
            frame(Kind::Data(bytes::Bytes::from_static(b"hi"))).encode_to_vec(),
            [0x12, 2, b'h', b'i']
        );
        assert_eq!(frame(Kind::Fin(Fin {})).encode_to_vec(), [0x1a, 0]);
        assert_eq!(
            reset(Reason::Refused, "").encode_to_vec(),
            [0x22, 2, 0x08, 1]
        );
        assert_eq!(
            frame(Kind::Accept(Accept { flow: 7 })).encode_to_vec(),
            [0x32, 2, 0x08, 7]
        );
        let dial = ServerMsg {
            kind: Some(ServerKind::Dial(Dial {
                flow: 1,
                target: None,
            })),
        };
        assert_eq!(dial.encode_to_vec(), [0x0a, 2, 0x08, 1]);
        let hello = ConnectorMsg {
            kind: Some(ConnectorKind::Hello(Hello {
                id: "a".into(),
                routes: vec![RouteMsg {
                    prefix: "p".into(),
                    real: String::new(),
                }],
            })),
        };
        assert_eq!(
            hello.encode_to_vec(),
            [0x0a, 8, 0x0a, 1, b'a', 0x12, 3, 0x0a, 1, b'p']
        );
    }

    proptest::proptest! {
        /// Whatever a peer sends decodes to a message or an error, and the checks on
        /// top of decoding never panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Ok(Frame { kind: Some(Kind::Open(o)) }) = Frame::decode(&bytes[..]) {
                let _ = crate::open_to_addr(&o);
            }
            if let Ok(ConnectorMsg { kind: Some(ConnectorKind::Hello(h)) }) = ConnectorMsg::decode(&bytes[..]) {
                let _ = crate::pki::check_connector_id(&h.id);
                for r in &h.routes {
                    let _ = crate::routes::Route::from_msg(r);
                }
            }
            if let Ok(ServerMsg { kind: Some(ServerKind::Dial(d)) }) = ServerMsg::decode(&bytes[..]) {
                let _ = d.target.as_ref().and_then(crate::open_to_addr);
            }
        }

        #[test]
        fn arbitrary_route_strings_never_panic(prefix in ".{0,40}", real in ".{0,40}") {
            let _ = crate::routes::Route::from_msg(&RouteMsg { prefix, real });
        }
    }
}
