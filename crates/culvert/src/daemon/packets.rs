//! The per-packet side of the daemon: the TUN device, the underlay's sockets and the
//! buffers packets are read, sealed and opened in. It holds nothing of control (netlink,
//! routes, the control socket, requests): the unit each worker thread will own once the
//! per-packet path leaves the control thread (issue 20).

use std::ops::Range;
use std::time::Instant;

use culvert_core::{
    DatagramOutcome, DropReason, Endpoint, HEADROOM, Remote, TAILROOM, TunOutcome, faketcp,
};
use culvert_sys::raw::PacketMeta;
use culvert_sys::tun::Tun;
use culvert_sys::udp::{BATCH, RecvMeta};

use super::underlay::{Outbound, Underlay};

/// Buffer slot per packet: room for any IP packet plus head- and tailroom.
const SLOT: usize = 65_536 + 256;
/// Where a TUN packet starts inside its slot: room for the core's headers and FakeTCP's.
const TUN_OFFSET: usize = 128;
/// Where a received datagram or packet lands inside its slot: room to re-wrap a relayed
/// message for FakeTCP in place.
const RX_OFFSET: usize = 128;
/// Batches handled per readiness event before other sources get a turn.
const ROUNDS: usize = 4;
const _: () =
    assert!(TUN_OFFSET >= HEADROOM + faketcp::HEADROOM && TUN_OFFSET + 65_535 + TAILROOM <= SLOT);
const _: () = assert!(RX_OFFSET >= faketcp::HEADROOM);

/// The TUN device, the sockets, and the buffers of one packet-moving thread.
pub(super) struct Packets {
    pub(super) tun: Tun,
    pub(super) underlay: Underlay,
    tun_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    /// One slot for the packets the endpoint holds for the TUN (FEC recovered, ICMP
    /// errors, messages merged behind another in a FakeTCP segment).
    scratch: Vec<u8>,
    meta: [RecvMeta; BATCH],
    packets: [PacketMeta; BATCH],
    io_errors: u64,
}

impl Packets {
    pub(super) fn new(tun: Tun, underlay: Underlay) -> Self {
        Self {
            tun,
            underlay,
            tun_buf: vec![0u8; SLOT * BATCH],
            rx_buf: vec![0u8; SLOT * BATCH],
            scratch: vec![0u8; SLOT],
            meta: [RecvMeta::default(); BATCH],
            packets: [PacketMeta::default(); BATCH],
            io_errors: 0,
        }
    }

    /// Packets the TUN device has for the overlay: each routed and sealed in place, sent
    /// in batches.
    pub(super) fn on_tun(&mut self, ep: &mut Endpoint) {
        for _ in 0..ROUNDS {
            let now = Instant::now();
            let mut out = Outbound::new();
            let mut read = 0;
            while read < BATCH {
                let slot = &mut self.tun_buf[read * SLOT..(read + 1) * SLOT];
                let len = match self.tun.recv(&mut slot[TUN_OFFSET..SLOT - TAILROOM]) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) => {
                        self.io_error("reading the TUN device", &e);
                        break;
                    }
                };
                if let TunOutcome::Send(t) = ep.handle_tun_packet(now, slot, TUN_OFFSET, len) {
                    let at = read * SLOT;
                    let range = at + t.range.start..at + t.range.end;
                    self.underlay
                        .queue(ep, now, &mut out, t.to, &mut self.tun_buf, range);
                }
                read += 1;
            }
            if let Err(e) = self.underlay.flush(ep, &mut out, &self.tun_buf) {
                self.io_error("sending", &e);
            }
            if read < BATCH {
                break;
            }
        }
    }

    /// Datagrams on UDP socket `socket` (0: the main one, else port prediction's).
    pub(super) fn on_udp(&mut self, ep: &mut Endpoint, socket: u16) {
        for _ in 0..ROUNDS {
            let udp = match socket {
                0 => self.underlay.udp.as_ref(),
                k => self.underlay.spray.get(k),
            };
            let Some(udp) = udp else {
                return;
            };
            let got = match udp.recv_batch(&mut self.rx_buf, SLOT, RX_OFFSET, &mut self.meta) {
                Ok(n) => n,
                Err(e) => {
                    self.io_error("receiving UDP", &e);
                    break;
                }
            };
            let now = Instant::now();
            let mut out = Outbound::new();
            for i in 0..got {
                let m = self.meta[i];
                let at = i * SLOT + RX_OFFSET;
                let from = Remote::udp_on(socket, m.from);
                self.deliver(ep, now, &mut out, from, at..at + m.len);
            }
            if let Err(e) = self.underlay.flush(ep, &mut out, &self.rx_buf) {
                self.io_error("sending", &e);
            }
            self.flush_control(ep);
            if got < BATCH {
                break;
            }
        }
    }

    /// Packets from FakeTCP's packet socket `index`.
    pub(super) fn on_raw(&mut self, ep: &mut Endpoint, index: usize) {
        for _ in 0..ROUNDS {
            let Some(ft) = &self.underlay.ftcp else {
                return;
            };
            let Some(rx) = ft.receivers.get(index) else {
                return;
            };
            let got = match rx.recv_batch(&mut self.rx_buf, SLOT, RX_OFFSET, &mut self.packets) {
                Ok(n) => n,
                Err(e) => {
                    self.io_error("receiving FakeTCP", &e);
                    break;
                }
            };
            let now = Instant::now();
            let mut out = Outbound::new();
            for i in 0..got {
                let at = i * SLOT + RX_OFFSET;
                let packet = at..at + self.packets[i].len;
                let ft = self.underlay.ftcp.as_mut().expect("checked above");
                if !ft.admits(now, self.packets[i], &self.rx_buf[packet.clone()]) {
                    // Forwarded through this host, or overlay traffic: not ours to answer.
                    continue;
                }
                let outcome = ep.handle_segment(now, &mut self.rx_buf, packet);
                self.take_outcome(ep, now, &mut out, outcome);
                // Messages merged behind the first (GRO) follow it into the TUN in order.
                self.write_recovered(ep);
            }
            if let Err(e) = self.underlay.flush(ep, &mut out, &self.rx_buf) {
                self.io_error("sending", &e);
            }
            self.flush_control(ep);
            if got < BATCH {
                break;
            }
        }
    }

    /// Hands `rx_buf[msg]` to the endpoint; delivers to the TUN or queues a relay.
    fn deliver(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        out: &mut Outbound,
        from: Remote,
        msg: Range<usize>,
    ) {
        let outcome = ep.handle_datagram(now, from, &mut self.rx_buf, msg);
        self.take_outcome(ep, now, out, outcome);
    }

    /// Carries out what the endpoint made of a message in `rx_buf`: a packet for the TUN,
    /// or a relay to send on.
    fn take_outcome(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        out: &mut Outbound,
        outcome: DatagramOutcome,
    ) {
        match outcome {
            DatagramOutcome::Deliver(r) => self.write_tun(ep, r, false),
            DatagramOutcome::Send(t) => {
                self.underlay
                    .queue(ep, now, out, t.to, &mut self.rx_buf, t.range);
            }
            DatagramOutcome::Done | DatagramOutcome::Dropped(_) => {}
        }
    }

    fn write_tun(&mut self, ep: &mut Endpoint, r: Range<usize>, scratch: bool) {
        let buf = if scratch { &self.scratch } else { &self.rx_buf };
        if let Err(e) = self.tun.send(&buf[r]) {
            ep.count_shell_drop(DropReason::TunWriteFailed);
            if e.kind() != std::io::ErrorKind::WouldBlock {
                self.io_error("writing to the TUN device", &e);
            }
        }
    }

    /// Sends the endpoint's control messages and FakeTCP's own segments, and writes the
    /// packets FEC recovered to the TUN device.
    pub(super) fn flush_control(&mut self, ep: &mut Endpoint) {
        self.write_recovered(ep);
        let now = Instant::now();
        while let Some(t) = ep.poll_transmit() {
            if let Err(e) = self.underlay.send_owned(ep, now, &t) {
                self.io_error("sending", &e);
            }
        }
        if let Err(e) = self.underlay.flush_faketcp_control(ep) {
            self.io_error("sending FakeTCP", &e);
        }
    }

    /// Writes the packets the endpoint holds for the TUN outside a datagram's outcome.
    fn write_recovered(&mut self, ep: &mut Endpoint) {
        while let Some(packet) = ep.poll_recovered() {
            let Some(slot) = self.scratch.get_mut(..packet.len()) else {
                continue;
            };
            slot.copy_from_slice(&packet);
            self.write_tun(ep, 0..packet.len(), true);
        }
    }

    /// Logs an I/O error, rate-limited to the first few and then every 1000th.
    pub(super) fn io_error(&mut self, what: &str, e: &std::io::Error) {
        self.io_errors += 1;
        if self.io_errors <= 5 || self.io_errors.is_multiple_of(1000) {
            tracing::warn!(count = self.io_errors, "{what}: {e}");
        }
    }
}
