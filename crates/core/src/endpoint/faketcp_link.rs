//! FakeTCP composed with the endpoint: the node's [`Stack`], the client's dialling, and
//! what a received segment's records become. The shell only moves whole IP packets between
//! its packet sockets and [`Endpoint::handle_segment`] / [`Endpoint::encapsulate`] /
//! [`Endpoint::poll_segment`], so the simulator runs the same composition as the daemon.

use core::net::{IpAddr, SocketAddr};
use core::ops::Range;
use std::time::{Duration, Instant};

use super::{DatagramOutcome, Endpoint, HEADROOM, TAILROOM};
use crate::faketcp::{FlowStatus, Received, Stack};
use crate::peer::Remote;
use crate::stats::DropReason;

/// A flow being set up is given this long before it is dialled again.
const DIAL_WAIT: Duration = Duration::from_secs(1);

/// A flow heard from this recently works; an older one is dialled again before it carries
/// the hub's traffic (a server that restarted answers nothing on a flow it forgot).
const FLOW_FRESH: Duration = Duration::from_secs(2);

/// The stack and what the endpoint keeps beside it.
#[derive(Debug)]
pub(super) struct FakeTcpLink {
    stack: Stack,
    /// Client: the server dialled and the local address dialled from (segments from
    /// anywhere else are not ours).
    target: Option<(IpAddr, SocketAddr)>,
    /// Client: when the current flow was dialled. A flow that is being set up is not
    /// dialled again (a rebind and a transport switch both ask for one at once: the second
    /// dial made the first flow's answers land on a 4-tuple no longer known).
    dialed: Option<Instant>,
    /// Messages that arrived behind another in one segment (segments merged by GRO).
    merged: u64,
}

impl FakeTcpLink {
    pub(super) fn new(cfg: crate::faketcp::Config, seed: [u8; 32], now: Instant) -> Self {
        Self {
            stack: Stack::new(cfg, seed, now),
            target: None,
            dialed: None,
            merged: 0,
        }
    }

    /// Whether a segment from `from` belongs to us (a client only talks to its server).
    fn accepts(&self, from: SocketAddr) -> bool {
        self.target.is_none_or(|(_, s)| s == from)
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.stack.poll_timeout()
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        if self.stack.poll_timeout().is_some_and(|t| t <= now) {
            self.stack.handle_timeout(now);
        }
    }
}

impl Endpoint {
    /// Client: dials a FakeTCP flow from `local` (the address the routing table picks
    /// towards `server`; a new random port and ISN) — unless a flow to the same server is
    /// still being set up.
    pub fn faketcp_dial(&mut self, now: Instant, local: IpAddr, server: SocketAddr) {
        let Some(link) = &mut self.faketcp else {
            return;
        };
        let setting_up = link
            .dialed
            .is_some_and(|t| now.saturating_duration_since(t) < DIAL_WAIT)
            && link.target.is_some_and(|(_, s)| s == server)
            && !link.stack.heard_within(server, now, DIAL_WAIT);
        if setting_up {
            return;
        }
        link.dialed = Some(now);
        link.target = Some((local, server));
        link.stack.connect(now, SocketAddr::new(local, 0), server);
        tracing::debug!(%server, %local, "FakeTCP: connecting");
    }

    /// Client: a FakeTCP flow is about to carry the hub's traffic; one not heard from
    /// lately (a standby flow, or one the server may have forgotten by restarting) is
    /// replaced by a new one from the same addresses.
    pub(super) fn refresh_faketcp_flow(&mut self, now: Instant) {
        let Some(link) = &self.faketcp else {
            return;
        };
        if let Some((local, server)) = link.target
            && !link.stack.heard_within(server, now, FLOW_FRESH)
        {
            self.faketcp_dial(now, local, server);
        }
    }

    /// Handles an IP packet FakeTCP's packet socket received, `buf[packet]`: the stack's
    /// part (handshakes, ACKs, what is in window), then each record's message as a
    /// datagram. The first message is handled in place — the packet's own headers before
    /// it are the room a relay needs — and its outcome returned; messages merged behind it
    /// (GRO) are handled on a copy, their packets and relays waiting in
    /// [`Endpoint::poll_recovered`] and [`Endpoint::poll_transmit`]. The flow takes the
    /// segment into account only if one of its messages was authentic.
    ///
    /// # Panics
    /// If `packet` is not inside `buf`.
    pub fn handle_segment(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        packet: Range<usize>,
    ) -> DatagramOutcome {
        let Some(link) = &mut self.faketcp else {
            return DatagramOutcome::Dropped(self.count_drop(DropReason::TcpNoFlow, None));
        };
        let received = link.stack.handle_packet(now, &buf[packet.clone()]);
        let ours = received.map(|r| r.filter(|seg| link.accepts(seg.from)));
        if link.stack.take_connected() {
            self.faketcp_ready();
        }
        let seg = match ours {
            Ok(Some(seg)) => seg,
            Ok(None) => return DatagramOutcome::Done,
            Err(reason) => return DatagramOutcome::Dropped(self.count_drop(reason, None)),
        };
        let payload = packet.start + seg.payload.start..packet.start + seg.payload.end;
        let (first, authentic) = self.handle_records(now, &seg, buf, payload);
        if authentic && let Some(link) = &mut self.faketcp {
            link.stack.confirm(now, &seg);
        }
        first
    }

    /// The records of `seg` (in `buf[payload]`), unmasked and handled one by one. Returns
    /// the first one's outcome and whether any was authentic.
    fn handle_records(
        &mut self,
        now: Instant,
        seg: &Received,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> (DatagramOutcome, bool) {
        let from = Remote::faketcp(seg.from);
        let mut first = None;
        let mut authentic = false;
        let mut next = 0;
        while let Some(record) = self
            .faketcp
            .as_ref()
            .and_then(|l| l.stack.next_message(seg, &mut buf[payload.clone()], next))
        {
            let Ok(r) = record else {
                let reason = self.count_drop(DropReason::Malformed, None);
                if first.is_none() {
                    self.log_undecodable(now, seg.from);
                    first = Some(DatagramOutcome::Dropped(reason));
                }
                break;
            };
            next = r.end;
            let msg = payload.start + r.start..payload.start + r.end;
            if first.is_none() {
                let o = self.handle_datagram(now, from, buf, msg);
                authentic |= !matches!(o, DatagramOutcome::Dropped(_));
                first = Some(o);
            } else {
                if let Some(l) = &mut self.faketcp {
                    l.merged += 1;
                }
                authentic |= self.handle_merged(now, from, &buf[msg]);
            }
        }
        (first.unwrap_or(DatagramOutcome::Done), authentic)
    }

    /// A message that arrived behind another in one segment: handled on a copy with room
    /// for a relay's headers. Returns whether it was authentic.
    fn handle_merged(&mut self, now: Instant, from: Remote, msg: &[u8]) -> bool {
        let mut copy = vec![0u8; HEADROOM + msg.len() + TAILROOM];
        copy[HEADROOM..HEADROOM + msg.len()].copy_from_slice(msg);
        match self.handle_datagram(now, from, &mut copy, HEADROOM..HEADROOM + msg.len()) {
            DatagramOutcome::Deliver(r) => {
                copy.truncate(r.end);
                copy.drain(..r.start);
                self.recovered.push_back(copy);
            }
            DatagramOutcome::Send(t) => self.push_owned(t.to, copy, t.range),
            DatagramOutcome::Done => {}
            DatagramOutcome::Dropped(_) => return false,
        }
        true
    }

    /// Wraps the sealed message `buf[msg]` into a FakeTCP segment to `to`, in place (the
    /// headers go into the [`crate::faketcp::HEADROOM`] bytes before `msg`). Returns the
    /// packet's range, or `None` when no flow to `to` can carry it (counted as a drop).
    ///
    /// # Panics
    /// If `buf` lacks [`crate::faketcp::HEADROOM`] bytes before `msg`.
    pub fn encapsulate(
        &mut self,
        now: Instant,
        to: SocketAddr,
        buf: &mut [u8],
        msg: Range<usize>,
    ) -> Option<Range<usize>> {
        let result = match &mut self.faketcp {
            Some(link) => link.stack.encapsulate(now, to, buf, msg),
            None => Err(DropReason::TcpNotConnected),
        };
        result.map_err(|r| self.count_drop(r, None)).ok()
    }

    /// The next segment FakeTCP sends of its own (SYN, SYN-ACK, ACK): destination and the
    /// whole IP packet.
    #[must_use]
    pub fn poll_segment(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.faketcp.as_mut()?.stack.poll_transmit()
    }

    /// FakeTCP's flows, and how many messages arrived merged behind another, for
    /// `culvert status`; `None` without FakeTCP.
    pub fn faketcp_status(&self) -> Option<(Vec<FlowStatus>, u64)> {
        let link = self.faketcp.as_ref()?;
        Some((link.stack.status(), link.merged))
    }
}
