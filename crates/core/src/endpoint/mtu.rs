//! Path MTU per direct path, UDP or FakeTCP ([`crate::pmtu`]) and the ICMP errors for packets too big
//! for theirs ([`crate::icmp`]).

use std::time::Instant;

use culvert_wire::frame::{Frame, MTU_PROBE_MIN};

use super::Endpoint;
use crate::fec::Mode as FecMode;
use crate::path::Path;
use crate::peer::PeerId;
use crate::pmtu::Pmtu;

impl Endpoint {
    /// The largest plaintext a path must carry: a full TUN packet, and with FEC the
    /// parity's extra bytes on top.
    fn mtu_ceiling(&self) -> Option<u16> {
        let parity = if self.cfg.fec.mode == FecMode::Off {
            0
        } else {
            crate::fec::PARITY_OVERHEAD as u16
        };
        Some(self.cfg.mtu?.saturating_add(parity))
    }

    /// The largest IP packet `id`'s path takes now, when it is below the TUN's MTU.
    pub(super) fn packet_limit(&self, id: PeerId) -> Option<u16> {
        self.path_mtu(id).filter(|m| Some(*m) < self.cfg.mtu)
    }

    /// The largest IP packet `id`'s direct path takes now, as discovered.
    pub(super) fn path_mtu(&self, id: PeerId) -> Option<u16> {
        let ceiling = self.mtu_ceiling()?;
        let p = self.peers.get(&id)?;
        let (at, pmtu) = p.pmtu.as_ref()?;
        if p.path != Path::Direct(Some(*at)) {
            return None;
        }
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

    /// Probes `id`'s direct path while traffic flows on it. Over FakeTCP as over UDP: its
    /// segments carry DF too, and a probe lost on the way is a lost segment, which the
    /// fake stream tolerates like any loss.
    pub(super) fn mtu_timers(&mut self, now: Instant, id: PeerId) {
        let Some(ceiling) = self.mtu_ceiling() else {
            return;
        };
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Path::Direct(Some(at)) = p.path else {
            p.pmtu = None;
            return;
        };
        if p.sessions.current.is_none() {
            return;
        }
        if p.pmtu.as_ref().is_none_or(|(r, _)| *r != at) {
            p.pmtu = Some((at, Pmtu::new(ceiling, p.rtt)));
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
            self.send_frame_on(now, id, Path::Direct(Some(at)), &frame, None);
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
