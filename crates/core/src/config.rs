//! Configuration handed to the core by the shell, already validated and typed.

use core::net::SocketAddr;
use std::time::Duration;

use culvert_wire::addr::Prefix;
use culvert_wire::hello::Cipher;

use crate::aead::AeadFactory;
use crate::keys::{Psk, PublicKey, StaticSecret};
use crate::peer::Transport;

/// Everything an [`crate::Endpoint`] needs.
#[derive(Debug)]
pub struct Config {
    /// This node's static identity.
    pub secret: StaticSecret,
    /// The passphrase-derived PSK (passphrase mode), or `None` (key mode).
    pub passphrase: Option<Psk>,
    /// This node's overlay addresses.
    pub addresses: Vec<Prefix>,
    /// Subnets behind this node it routes for (site to site): a client offers them to the
    /// hub, which accepts what its config allows; the hub's own go to every client.
    pub routes: Vec<Prefix>,
    /// Data ciphers in order of preference (the first is proposed and preferred).
    pub ciphers: Vec<Cipher>,
    /// The AEAD implementation for data messages ([`crate::aead::rustcrypto`] by default).
    pub aead: AeadFactory,
    /// Protocol timers.
    pub timing: Timing,
    /// Forward error correction on direct paths.
    pub fec: crate::fec::Config,
    /// The TUN device's MTU. With it, direct paths discover their MTU
    /// ([`crate::pmtu`]) and a packet too big for its path is answered with an ICMP error
    /// ([`crate::icmp`]); `None`: neither (every path is trusted with any size).
    pub mtu: Option<u16>,
    /// FakeTCP's settings when this node carries messages over it too (the shell has its
    /// packet sockets); `None`: UDP only. A client dials with [`crate::Endpoint::faketcp_dial`].
    pub faketcp: Option<crate::faketcp::Config>,
    /// Hub or client.
    pub role: Role,
}

/// The role of the node.
#[derive(Debug, Clone)]
pub enum Role {
    /// The hub: accepts clients, keeps the directory, relays.
    Hub(HubConfig),
    /// A client of one hub.
    Client(ClientConfig),
}

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Most clients connected at once; the next one is refused.
    pub max_clients: usize,
    /// Clients reach the hub but not each other.
    pub isolation: bool,
    /// The hub is its clients' exit to the Internet (`--nat`): a client's full tunnel
    /// works only through one, and is told in the Welcome.
    pub exit: bool,
    /// Key mode: the client keys accepted and the addresses bound to each. In passphrase
    /// mode an entry still binds addresses to a key (optional).
    pub clients: Vec<ClientBinding>,
    /// Routes any client may offer: an offered route inside one of these is accepted (in
    /// key mode as well, beside each binding's own).
    pub allow_routes: Vec<Prefix>,
    /// Accept a client's route that overlaps another node's or the hub's own (a more
    /// specific route draws that part of the other's traffic). Off by default: a member
    /// must not take traffic from another site by advertising into its subnet.
    pub allow_route_overlap: bool,
    /// Handshake messages per second above which a cookie is required.
    pub handshake_load_limit: u32,
}

/// A client key and the overlay addresses it may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientBinding {
    /// The client's static public key.
    pub key: PublicKey,
    /// Addresses bound to that key.
    pub addresses: Vec<Prefix>,
    /// Routes this key may offer (inside one of these).
    pub routes: Vec<Prefix>,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The hub's underlay address (the same port serves UDP and FakeTCP).
    pub server: SocketAddr,
    /// The hub's pinned public key: configured (required in key mode), or remembered from
    /// the first contact in passphrase mode. `None`: trust the first hub that answers,
    /// then pin it ([`crate::Event::ServerKeyPinned`]).
    pub server_key: Option<PublicKey>,
    /// Which transports to use towards the hub.
    pub transport: TransportMode,
    /// The overlay networks this client accepts addresses and routes in: what the hub
    /// grants, its own addresses and the directory's entries must lie inside one of them;
    /// anything else is refused and logged.
    pub networks: Vec<Prefix>,
    /// Try direct paths to other clients (hole punching coordinated by the hub).
    pub p2p: bool,
    /// Forward ciphertext for other nodes over our direct paths (mesh relaying), and reach
    /// the hub through another client when our own path to it fails.
    pub mesh_relay: MeshRelay,
    /// Full tunnel: every destination without a more specific route (0.0.0.0/0, ::/0)
    /// goes to the hub, and packets from the hub may come from any source — the hub is
    /// this client's exit to the Internet.
    pub full_tunnel: bool,
    /// Where the routes other nodes offer (subnets behind them, the hub's own too) may
    /// lie to be installed: a route inside one of these is, any other is refused and
    /// logged. Empty: none, only their overlay addresses are reachable. A hub cannot make
    /// a client route a public prefix into the tunnel unless the client lists it.
    pub accept_routes: Vec<Prefix>,
}

/// Mesh relaying settings of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshRelay {
    /// Forward for others at all (reaching the hub through others works either way).
    pub enabled: bool,
    /// Relays a message we send may cross (the hop limit it starts with).
    pub max_hops: u8,
    /// Bytes per second this client forwards for others, at most (bursts of 1/4 s).
    pub rate: u64,
}

impl Default for MeshRelay {
    fn default() -> Self {
        Self {
            enabled: true,
            max_hops: 3,
            rate: 100_000_000 / 8,
        }
    }
}

/// The transports a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// UDP only.
    Udp,
    /// FakeTCP only.
    FakeTcp,
    /// UDP when it works, FakeTCP when it does not, and back to UDP once it works again.
    #[default]
    Auto,
}

impl TransportMode {
    /// The transport to try first.
    pub fn first(self) -> Transport {
        match self {
            Self::FakeTcp => Transport::FakeTcp,
            Self::Udp | Self::Auto => Transport::Udp,
        }
    }
}

/// Protocol timers; defaults follow WireGuard where the concept is the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// Clients ping the hub this often; it keeps NAT mappings and measures RTT.
    pub keepalive: Duration,
    /// A client that hears nothing from the hub this long reconnects from a new port.
    pub dead_after: Duration,
    /// The hub forgets a client it has not heard from this long.
    pub node_timeout: Duration,
    /// The initiator of a session starts a new handshake after this age.
    pub rekey_after_time: Duration,
    /// A session older than this is never used.
    pub reject_after_time: Duration,
    /// The initiator rekeys after this many messages in either direction.
    pub rekey_after_messages: u64,
    /// First handshake retry delay; doubles per failed attempt.
    pub retry_min: Duration,
    /// Cap of the retry delay.
    pub retry_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(5),
            dead_after: Duration::from_secs(25),
            node_timeout: Duration::from_secs(45),
            rekey_after_time: Duration::from_secs(120),
            reject_after_time: Duration::from_secs(180),
            rekey_after_messages: 1 << 60,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Whether the nodes authenticate with a shared passphrase.
    pub fn passphrase_mode(&self) -> bool {
        self.passphrase.is_some()
    }

    /// The PSK of a handshake whose responder has key `responder`.
    pub(crate) fn psk_for(&self, responder: &PublicKey) -> Psk {
        match &self.passphrase {
            Some(p) => p.clone(),
            None => Psk::for_responder(responder),
        }
    }
}
