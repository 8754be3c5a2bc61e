//! Events the core reports to the shell.

use culvert_wire::addr::Prefix;

/// Something the shell must act on (beyond sending and delivering packets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The client joined (or re-joined) the hub.
    Joined {
        /// Node id the hub assigned.
        node: u32,
        /// The overlay addresses the hub granted; the TUN must carry them.
        granted: Vec<Prefix>,
        /// The hub's own overlay addresses.
        hub_addresses: Vec<Prefix>,
        /// Whether the hub isolates clients from each other.
        isolation: bool,
        /// Whether the hub is its clients' exit (a full tunnel needs one).
        exit: bool,
    },
    /// The client lost the hub; the shell should open a new UDP socket and a new FakeTCP
    /// flow (new source ports) before the next handshake, in case a middlebox dropped the
    /// old mappings.
    Rebind,
    /// The client now reaches the hub over this transport (the shell may need to bring its
    /// FakeTCP flow up).
    TransportChanged {
        /// The transport now in use.
        transport: crate::peer::Transport,
    },
    /// Passphrase mode, first contact: the hub welcomed us with this key, which is pinned
    /// from now on. The shell stores it so that later runs refuse any other key.
    ServerKeyPinned {
        /// The hub's public key.
        key: crate::keys::PublicKey,
    },
    /// The subnets routed into the overlay (other nodes' routes this node installed)
    /// changed; the shell makes the kernel's routes into the TUN match.
    RoutesChanged {
        /// Every such subnet, sorted.
        routes: Vec<Prefix>,
    },
    /// A responder at the hub's address proved a key other than the pinned one: an
    /// impostor, or a hub whose identity changed. Nothing was accepted from it.
    ServerKeyMismatch {
        /// The pinned key.
        pinned: crate::keys::PublicKey,
        /// The key it proved.
        offered: crate::keys::PublicKey,
    },
}
