//! culvert's protocol engine, without I/O.
//!
//! This crate makes every protocol decision — handshakes, sessions, replay protection,
//! cryptokey routing, the hub's admission and directory, relaying, timers — and performs no
//! I/O of any kind: no sockets, no clock reads, no OS randomness. The shell (the `culvert`
//! binary) feeds it events and carries out what it asks, as described on [`Endpoint`]. That
//! makes the whole protocol testable in-process with a simulated network and virtual time,
//! and fuzzable.
//!
//! Layers, bottom up: [`aead`] and [`replay`] (one message), [`session`] (one key pair),
//! [`noise`] and [`cookie`] (handshakes), [`peer`] (one remote node), [`router`]
//! (overlay address → peer), [`Endpoint`] (the node).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aead;
pub mod budget;
pub mod config;
pub mod cookie;
pub mod event;
pub mod faketcp;
pub mod fec;
#[doc(hidden)]
pub mod forge;
pub mod icmp;
pub mod keys;
pub mod limit;
pub mod noise;
pub mod path;
pub mod peer;
pub mod pending;
pub mod pmtu;
pub mod replay;
pub mod rng;
pub mod router;
pub mod session;
mod sessions;
pub mod stats;
pub mod status;
pub mod via;

mod endpoint;

pub use config::{
    ClientBinding, ClientConfig, Config, HubConfig, MeshRelay, Role, Timing, TransportMode,
};
pub use endpoint::{
    DatagramOutcome, Endpoint, HEADROOM, MAX_FRAME, OwnedTransmit, TAILROOM, Transmit, TunOutcome,
};
pub use event::Event;
pub use keys::{KeyParseError, Psk, PublicKey, StaticSecret};
pub use peer::{PeerId, Remote, SPRAY_SOCKETS, Transport};
pub use stats::{DropCounters, DropReason, Traffic};
pub use status::{PeerStatus, Status};

/// The origin of virtual time in unit tests (the core itself never reads the clock).
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
pub(crate) fn test_epoch() -> std::time::Instant {
    std::time::Instant::now()
}
