//! A snapshot of the node for `culvert status` and metrics.

use serde::Serialize;

use crate::stats::{DropCounters, Traffic};

/// The whole node.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `server` or `client`.
    pub role: &'static str,
    /// This node's public key (base64).
    pub public_key: String,
    /// Node id (the hub is 0; a client before joining has none).
    pub node: Option<u32>,
    /// Own overlay addresses.
    pub addresses: Vec<String>,
    /// Subnets behind this node it offers (client) or advertises (server).
    pub advertised_routes: Vec<String>,
    /// Client: which of them the hub accepted (`None` until its directory says).
    pub accepted_routes: Option<Vec<String>>,
    /// Other nodes' subnets routed into the overlay, each with the node behind it.
    pub routes: Vec<RouteStatus>,
    /// Directory version held (client) or published (server).
    pub directory_version: u64,
    /// Client: whether the hub isolates clients.
    pub isolation: bool,
    /// Responder handshakes waiting for their initiator to prove its key.
    pub pending_handshakes: usize,
    /// Client: the UDP endpoint the hub sees us at (our server-reflexive address).
    pub reflexive: Option<String>,
    /// Messages this node relayed for others, and their bytes.
    pub relayed: Traffic,
    /// Totals over all peers.
    pub traffic: Traffic,
    /// Every drop, by reason, including drops not attributable to a peer.
    pub drops: DropCounters,
    /// One entry per known peer.
    pub peers: Vec<PeerStatus>,
}

/// A subnet reached through another node.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    /// The subnet.
    pub prefix: String,
    /// The node behind it (0 is the hub).
    pub node: u32,
}

/// One peer.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// Node id (0 is the hub).
    pub node: u32,
    /// Public key (base64), empty while unknown.
    pub public_key: String,
    /// Overlay addresses.
    pub addresses: Vec<String>,
    /// Underlay endpoint, for a direct path.
    pub endpoint: Option<String>,
    /// `lan`, `direct` (a public endpoint) or `relay`.
    pub path: &'static str,
    /// The node a relayed peer is reached through (0: the hub).
    pub relay_via: Option<u32>,
    /// Why a relayed peer is relayed (no candidates, punch timed out, disabled, ...).
    pub path_reason: Option<&'static str>,
    /// RTT of a client peer's direct path, from its probes, in milliseconds.
    pub path_rtt_ms: Option<f64>,
    /// Share of a direct path's probes that went unanswered.
    pub path_loss: Option<f64>,
    /// The largest IP packet the path carries now (discovered; a relayed one end to end),
    /// when known.
    pub path_mtu: Option<u16>,
    /// Underlay transport of a direct path.
    pub transport: Option<crate::peer::Transport>,
    /// The last transport switch: when, to what, and why (client, towards the hub).
    pub last_switch: Option<String>,
    /// `up`, `connecting` (our handshake is under way) or `down`.
    pub state: &'static str,
    /// Data cipher of the current session.
    pub cipher: Option<&'static str>,
    /// Seconds since the last completed handshake.
    pub last_handshake_secs: Option<f64>,
    /// Seconds since the last packet from the peer.
    pub last_rx_secs: Option<f64>,
    /// Last measured round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Traffic with this peer.
    pub traffic: Traffic,
    /// Drops attributed to this peer.
    pub drops: DropCounters,
    /// Forward error correction on the path to this peer.
    pub fec: crate::fec::Stats,
}
