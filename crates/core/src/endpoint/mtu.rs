//! Path MTU per path to a peer ([`crate::pmtu`]) and the ICMP errors for packets too big
//! for theirs ([`crate::icmp`]).
//!
//! Direct paths (UDP or FakeTCP) are probed hop by hop. A relayed peer is probed end to
//! end, through its relays, with probes sealed in its own session like its data: a narrow
//! link anywhere on the way (our uplink, or the relay's link to the peer) shows as lost
//! probes, where probing only our own first hop would miss the relay's.

use std::time::Instant;

use culvert_wire::frame::{Frame, MTU_PROBE_MIN};

use super::Endpoint;
use crate::Config;
use crate::fec::Mode as FecMode;
use crate::path::Path;
use crate::peer::PeerId;
use crate::pmtu::Pmtu;

impl Endpoint {
    /// The largest IP packet `id`'s path takes now, when it is below the TUN's MTU.
    pub(super) fn packet_limit(&self, id: PeerId) -> Option<u16> {
        self.path_mtu(id).filter(|m| Some(*m) < self.cfg.mtu)
    }

    /// The largest IP packet `id`'s path takes now, as discovered.
    pub(super) fn path_mtu(&self, id: PeerId) -> Option<u16> {
        let p = self.peers.get(&id)?;
        let (path, pmtu) = p.pmtu.as_ref()?;
        if p.path != *path {
            return None;
        }
        let ceiling = mtu_ceiling(&self.cfg, *path)?;
        Some(pmtu.current().min(ceiling) - (ceiling - self.cfg.mtu?))
    }

    /// Writes the ICMP error for a packet too big for its path to `id` into the TUN. It
    /// comes from the peer's overlay address — the far end of the narrow path, reached
    /// through the TUN — not ours: the kernel drops a packet arriving with a source of its
    /// own, and a locally sent packet's sender is this host.
    pub(super) fn answer_too_big(&mut self, id: PeerId, packet: &[u8], limit: u16) {
        let v4 = packet.first().is_some_and(|b| b >> 4 == 4);
        let Some(src) = self
            .peers
            .get(&id)
            .into_iter()
            .flat_map(|p| p.addresses.iter())
            .map(|a| a.addr())
            .find(|a| a.is_ipv4() == v4)
        else {
            return;
        };
        if let Some(error) = crate::icmp::too_big(packet, limit, src) {
            self.recovered.push_back(error);
        }
    }

    /// Probes `id`'s path while traffic flows on it. Over FakeTCP as over UDP: its
    /// segments carry DF too, and a probe lost on the way is a lost segment, which the
    /// fake stream tolerates like any loss. Through relays as directly: they pass probes
    /// on like any message, and the answer comes back the same way.
    pub(super) fn mtu_timers(&mut self, now: Instant, id: PeerId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let path = p.path;
        let Some(ceiling) = mtu_ceiling(&self.cfg, path) else {
            return;
        };
        if path == Path::Direct(None) {
            p.pmtu = None;
            return;
        }
        if p.sessions.current.is_none() {
            return;
        }
        if p.pmtu.as_ref().is_none_or(|(on, _)| *on != path) {
            p.pmtu = Some((path, Pmtu::new(ceiling, p.rtt)));
        }
        let sent = p.traffic.tx_packets;
        let Some((_, pmtu)) = p.pmtu.as_mut() else {
            return;
        };
        for probe in pmtu.poll(now, sent) {
            let pad = usize::from(probe.size).saturating_sub(MTU_PROBE_MIN);
            let frame = Frame::MtuProbe {
                seq: probe.seq,
                pad: u16::try_from(pad).unwrap_or(u16::MAX),
            };
            self.send_frame_on(now, id, path, &frame, None);
        }
        self.deadline_dirty = true;
    }

    /// An answer to one of our MTU probes.
    pub(super) fn on_mtu_ack(&mut self, now: Instant, id: PeerId, seq: u32) {
        if let Some((_, pmtu)) = self.peers.get_mut(&id).and_then(|p| p.pmtu.as_mut()) {
            pmtu.on_ack(now, seq);
            self.deadline_dirty = true;
        }
    }
}

/// The largest plaintext a path must carry: a full TUN packet, and on a direct path with
/// FEC the parity's extra bytes on top (relays protect their own hops).
fn mtu_ceiling(cfg: &Config, path: Path) -> Option<u16> {
    let parity = match path {
        Path::Direct(_) if cfg.fec.mode != FecMode::Off => crate::fec::PARITY_OVERHEAD as u16,
        _ => 0,
    };
    Some(cfg.mtu?.saturating_add(parity))
}
