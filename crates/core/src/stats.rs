//! Counters: per-reason packet drops and per-peer traffic.
//!
//! Every packet the core drops is counted under exactly one [`DropReason`], globally and,
//! when the packet can be attributed, on the peer. The shell exports both in `culvert
//! status` and as Prometheus metrics; the core itself depends on no metrics crate.

use serde::Serialize;

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident => $label:literal,)*) => {
        /// Why a packet was dropped. The label is the metric label and status key.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DropReason {
            $($(#[$doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$name,)*];

            /// Stable snake_case label.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$name => $label,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// A datagram too short or inconsistent for its message type.
    Malformed => "malformed",
    /// An unknown message type byte.
    UnknownType => "unknown_type",
    /// A data message for a session index this node does not have.
    UnknownSession => "unknown_session",
    /// A data message whose counter was already received.
    Replay => "replay",
    /// A data message whose counter is older than the replay window.
    TooOld => "too_old",
    /// A data message whose tag did not verify.
    DecryptFailed => "decrypt_failed",
    /// A session past its reject-after time or message limit.
    SessionExpired => "session_expired",
    /// A handshake message that failed Noise authentication (wrong passphrase or key).
    HandshakeAuth => "handshake_auth",
    /// A handshake whose timestamp was not newer than the last one accepted (replay).
    HandshakeReplay => "handshake_replay",
    /// A handshake from a static key this node does not accept.
    UnknownKey => "unknown_key",
    /// A handshake response or cookie for no handshake in progress.
    UnexpectedHandshake => "unexpected_handshake",
    /// A handshake turned away because the responder is under load and no cookie came.
    CookieRequired => "cookie_required",
    /// A message 1 refused because the handshakes already waiting for its key stand
    /// higher (proven sources, the key's current path): a claim never displaces those.
    HandshakeCrowded => "handshake_crowded",
    /// A handshake turned away by the rate limiter.
    RateLimited => "rate_limited",
    /// A control frame that could not be parsed, or is not valid in this direction.
    BadFrame => "bad_frame",
    /// A confirmed join whose addresses or slot another client took while it was pending.
    AdmissionRaced => "admission_raced",
    /// A TUN packet that is not IPv4/IPv6 or is inconsistent.
    BadTunPacket => "bad_tun_packet",
    /// A TUN packet for an overlay address no peer holds.
    NoRoute => "no_route",
    /// A multicast or broadcast TUN packet: the overlay carries unicast only (the host's
    /// own chatter, e.g. IPv6 router solicitations on the TUN).
    NotUnicast => "not_unicast",
    /// A packet dropped because the queue for a peer without a session was full.
    QueueFull => "queue_full",
    /// A decrypted packet whose inner source address is not the peer's.
    SourceNotAllowed => "source_not_allowed",
    /// Client-to-client traffic refused under client isolation.
    Isolation => "isolation",
    /// A relay frame for a node that is not connected, or that it would send back.
    RelayNoPeer => "relay_no_peer",
    /// A relay frame that had crossed as many relays as its sender allowed (a loop, or a
    /// route longer than `max_hops`).
    RelayHopLimit => "relay_hop_limit",
    /// A relay frame whose origin the neighbour that passed it may not speak for (only
    /// itself, or a node it reaches the hub for).
    RelayOrigin => "relay_origin",
    /// A relay frame for another node, on a client with `mesh_relay = false`.
    RelayDisabled => "relay_disabled",
    /// A relay frame over the client's relay rate limit.
    RelayRateLimited => "relay_rate_limited",
    /// A packet for a peer with no session that this node may not start one with.
    NoSession => "no_session",
    /// A packet larger than the path can carry.
    TooBig => "too_big",
    /// A handshake message 1 shorter than the reply would be (no reply may be larger).
    ShortHandshake => "short_handshake",
    /// The TUN device refused a packet (its queue was full).
    TunWriteFailed => "tun_write_failed",
    /// The socket refused a datagram (send buffer full, no route).
    SendFailed => "send_failed",
    /// FakeTCP: a message for a peer whose TCP flow is not established (yet).
    TcpNotConnected => "tcp_not_connected",
    /// FakeTCP: a segment for no known flow, without a valid SYN cookie.
    TcpNoFlow => "tcp_no_flow",
    /// FakeTCP: a segment far outside the flow's window, or an unexpected SYN.
    TcpOutOfWindow => "tcp_out_of_window",
    /// FakeTCP: an RST (counted and ignored: it never tears a flow down).
    TcpRst => "tcp_rst",
    /// FakeTCP: a FIN (counted and ignored).
    TcpFin => "tcp_fin",
    /// FEC: a parity message for no session, or with an inconsistent group.
    FecBadParity => "fec_bad_parity",
}

/// One counter per [`DropReason`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl Default for DropCounters {
    fn default() -> Self {
        Self([0; DropReason::ALL.len()])
    }
}

impl DropCounters {
    /// Counts one drop.
    pub fn add(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }

    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// The sum over every reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(label, count)` for every reason with a non-zero count.
    pub fn nonzero(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|&r| (r.as_str(), self.get(r)))
            .filter(|&(_, n)| n > 0)
    }
}

impl Serialize for DropCounters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.nonzero() {
            m.serialize_entry(k, &v)?;
        }
        m.end()
    }
}

/// Traffic counters of one peer (or of the whole node).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Bytes of plaintext received from the peer (IP packets and frames).
    pub rx_bytes: u64,
    /// Packets received from the peer and accepted.
    pub rx_packets: u64,
    /// Bytes of plaintext sent to the peer.
    pub tx_bytes: u64,
    /// Packets sent to the peer.
    pub tx_packets: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for r in DropReason::ALL {
            let l = r.as_str();
            assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{l}");
            assert!(seen.insert(l), "duplicate label {l}");
        }
    }

    #[test]
    fn counts() {
        let mut c = DropCounters::default();
        c.add(DropReason::Replay);
        c.add(DropReason::Replay);
        c.add(DropReason::NoRoute);
        assert_eq!(c.get(DropReason::Replay), 2);
        assert_eq!(c.total(), 3);
        assert_eq!(
            c.nonzero().collect::<Vec<_>>(),
            vec![("replay", 2), ("no_route", 1)]
        );
    }
}
