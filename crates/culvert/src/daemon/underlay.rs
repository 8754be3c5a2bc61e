//! The underlay: the UDP socket and the FakeTCP machinery (stack, raw sender, packet
//! receivers; its nftables rules are in the instance's table), and the sending of outer
//! messages over either.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdp};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use culvert_core::faketcp::{self, Side};
use culvert_core::{DropReason, Endpoint, Remote, Transport};
use culvert_sys::nft::FlowMatch;
use culvert_sys::raw::{PacketMeta, PacketReceiver, PortMatch, RawSender};
use culvert_sys::udp::{BATCH, UdpSocket};

use super::spray::SpraySockets;

/// FakeTCP's sockets (the stack itself is the endpoint's, see
/// [`Endpoint::handle_segment`]).
pub(crate) struct FakeTcp {
    sender: RawSender,
    pub(crate) receivers: Vec<PacketReceiver>,
    /// Which segments are ours, for the nftables table.
    pub(crate) flows: FlowMatch,
    /// Firewall mark of everything sent (a full-tunnel client), for source lookups too.
    mark: Option<u32>,
    /// The overlay's TUN device: segments that arrive on it are not ours.
    pub(crate) tun_ifindex: Option<u32>,
    /// Server: which destinations are this host's own.
    local: Option<LocalAddresses>,
}

impl FakeTcp {
    /// Server side: receives TCP for `listen`'s port, on the families `listen` covers.
    /// Returns the sockets and the endpoint's stack settings.
    pub(crate) fn server(
        listen: SocketAddr,
        mss: u16,
        mask_key: [u8; 32],
    ) -> Result<(Self, faketcp::Config)> {
        let (v4, v6) = families(listen.ip());
        let flows = FlowMatch::Server {
            addr: listen.ip(),
            port: listen.port(),
        };
        let mut receivers = Vec::new();
        for v6r in [false, true]
            .into_iter()
            .filter(|&x| if x { v6 } else { v4 })
        {
            receivers.push(PacketReceiver::open(
                v6r,
                PortMatch::Destination(listen.port()),
            )?);
        }
        let cfg = faketcp::Config {
            side: Side::Server,
            mss,
            max_flows: 4096,
            isn: None,
            mask_key,
        };
        let sockets = Self {
            sender: RawSender::open(v4, v6)?,
            receivers,
            flows,
            mark: None,
            tun_ifindex: None,
            local: Some(LocalAddresses::new(listen.ip())),
        };
        Ok((sockets, cfg))
    }

    /// Client side: one flow to `server` (it stands by in `auto`); what it sends carries
    /// firewall mark `mark` if given. Returns the sockets and the endpoint's stack
    /// settings; [`FakeTcp::dial`] opens the flow.
    pub(crate) fn client(
        server: SocketAddr,
        mss: u16,
        isn: Option<u32>,
        mask_key: [u8; 32],
        mark: Option<u32>,
    ) -> Result<(Self, faketcp::Config)> {
        let receivers = vec![PacketReceiver::open(
            server.is_ipv6(),
            PortMatch::Source(server.port()),
        )?];
        let cfg = faketcp::Config {
            side: Side::Client,
            mss,
            max_flows: 1,
            isn,
            mask_key,
        };
        let sender = RawSender::open(server.is_ipv4(), server.is_ipv6())?;
        if let Some(m) = mark {
            sender.set_mark(m)?;
        }
        let sockets = Self {
            sender,
            receivers,
            flows: FlowMatch::Client { server },
            mark,
            tun_ifindex: None,
            local: None,
        };
        Ok((sockets, cfg))
    }

    /// Client: has the endpoint dial `server` from the address the routing table picks
    /// (with this instance's mark).
    pub(crate) fn dial(&self, ep: &mut Endpoint, now: Instant, server: SocketAddr) -> Result<()> {
        let local = source_address(server, self.mark)?;
        ep.faketcp_dial(now, local, server);
        Ok(())
    }

    /// Whether a packet the packet socket saw is for the stack at all: not from the
    /// overlay's TUN device, and — for a SYN, the only segment that gets an answer
    /// without a flow — addressed to this host, not merely forwarded through it.
    pub(crate) fn admits(&mut self, now: Instant, meta: PacketMeta, packet: &[u8]) -> bool {
        if self.tun_ifindex == Some(meta.ifindex) {
            return false;
        }
        match culvert_wire::tcp::Segment::parse(packet) {
            Ok(seg) if seg.has(culvert_wire::tcp::flags::SYN) => self
                .local
                .as_mut()
                .is_none_or(|l| l.is_local(now, seg.dst.ip())),
            _ => true,
        }
    }
}

/// Which addresses are this host's own, remembered for a while (a SYN to any other was
/// forwarded through us and must not be answered).
struct LocalAddresses {
    /// The one address served, or `None` for an unspecified listen address.
    only: Option<IpAddr>,
    known: BTreeMap<IpAddr, (bool, Instant)>,
}

impl LocalAddresses {
    /// How long an answer is trusted (addresses come and go).
    const TTL: Duration = Duration::from_secs(10);
    /// Most addresses remembered; a flood of destinations only refills the cache.
    const CAPACITY: usize = 256;

    fn new(listen: IpAddr) -> Self {
        Self {
            only: (!listen.is_unspecified()).then_some(listen),
            known: BTreeMap::new(),
        }
    }

    fn is_local(&mut self, now: Instant, ip: IpAddr) -> bool {
        if let Some(only) = self.only {
            return ip == only;
        }
        if let Some(&(local, at)) = self.known.get(&ip)
            && now.saturating_duration_since(at) < Self::TTL
        {
            return local;
        }
        if self.known.len() >= Self::CAPACITY {
            self.known.clear();
        }
        // Binding succeeds only to an address of this host.
        let local = StdUdp::bind(SocketAddr::new(ip, 0)).is_ok();
        self.known.insert(ip, (local, now));
        local
    }
}

fn families(ip: IpAddr) -> (bool, bool) {
    match ip {
        IpAddr::V4(_) => (true, false),
        IpAddr::V6(a) if a.is_unspecified() => (true, true),
        IpAddr::V6(_) => (false, true),
    }
}

/// The local address the kernel would use to reach `server` (with firewall mark `mark`:
/// a full tunnel routes unmarked traffic into the TUN).
fn source_address(server: SocketAddr, mark: Option<u32>) -> Result<IpAddr> {
    let any: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = StdUdp::bind(any).context("finding the source address towards the server")?;
    if let Some(m) = mark {
        culvert_sys::sockopt::set_mark(&s, m).context("marking the source address lookup")?;
    }
    s.connect(server)
        .with_context(|| format!("no route to the server {server}"))?;
    Ok(s.local_addr()?.ip())
}

/// The sockets messages leave and arrive on.
pub(crate) struct Underlay {
    pub(crate) udp: Option<UdpSocket>,
    pub(crate) ftcp: Option<FakeTcp>,
    pub(crate) spray: SpraySockets,
}

/// Messages to send at the end of a batch: UDP datagrams (with the socket each leaves
/// from, see [`Remote::socket`]) and FakeTCP packets, as ranges of one buffer.
pub(crate) struct Outbound {
    udp: [(u16, SocketAddr, usize, usize); BATCH],
    n_udp: usize,
    raw: [(IpAddr, usize, usize); BATCH],
    n_raw: usize,
}

impl Outbound {
    pub(crate) fn new() -> Self {
        let zero = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            udp: [(0, zero, 0, 0); BATCH],
            n_udp: 0,
            raw: [(zero.ip(), 0, 0); BATCH],
            n_raw: 0,
        }
    }
}

impl Underlay {
    /// UDP socket `k` (0: the main one); an extra one is opened if needed.
    fn udp_socket(&mut self, k: u16, now: Instant) -> Option<&UdpSocket> {
        match k {
            0 => self.udp.as_ref(),
            _ if self.udp.is_none() => None,
            _ => self.spray.open(k, now),
        }
    }

    /// Queues `buf[range]` (a sealed outer message) for `to`. FakeTCP wraps it in place,
    /// so `buf` must have [`faketcp::HEADROOM`] free bytes before `range`.
    pub(crate) fn queue(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        out: &mut Outbound,
        to: Remote,
        buf: &mut [u8],
        range: Range<usize>,
    ) {
        match to.transport {
            Transport::Udp if out.n_udp < BATCH && self.udp_socket(to.socket, now).is_some() => {
                out.udp[out.n_udp] = (to.socket, to.addr, range.start, range.end);
                out.n_udp += 1;
            }
            Transport::FakeTcp if out.n_raw < BATCH && self.ftcp.is_some() => {
                if let Some(r) = ep.encapsulate(now, to.addr, buf, range) {
                    out.raw[out.n_raw] = (to.addr.ip(), r.start, r.end);
                    out.n_raw += 1;
                }
            }
            _ => ep.count_shell_drop(DropReason::SendFailed),
        }
    }

    /// Sends everything queued in `out` (ranges of `buf`); counts what the kernel refused.
    pub(crate) fn flush(
        &self,
        ep: &mut Endpoint,
        out: &mut Outbound,
        buf: &[u8],
    ) -> Result<(), std::io::Error> {
        let mut result = Ok(());
        // One sendmmsg per run of datagrams from the same socket (nearly always one run).
        let mut first = 0;
        while first < out.n_udp {
            let socket = out.udp[first].0;
            let mut msgs: [(SocketAddr, &[u8]); BATCH] = [(out.udp[first].1, &[]); BATCH];
            let mut n = 0;
            for &(k, to, s, e) in out.udp[first..out.n_udp]
                .iter()
                .take_while(|m| m.0 == socket)
            {
                debug_assert_eq!(k, socket);
                msgs[n] = (to, &buf[s..e]);
                n += 1;
            }
            let sock = match socket {
                0 => self.udp.as_ref(),
                k => self.spray.get(k),
            };
            let sent = sock.map_or(Ok(0), |u| u.send_batch(&msgs[..n]));
            let r = account(ep, sent, n);
            result = result.and(r);
            first += n;
        }
        if out.n_raw > 0 {
            let mut pkts: [(IpAddr, &[u8]); BATCH] = [(out.raw[0].0, &[]); BATCH];
            for (p, &(to, s, e)) in pkts.iter_mut().zip(&out.raw[..out.n_raw]) {
                *p = (to, &buf[s..e]);
            }
            let sent = self
                .ftcp
                .as_ref()
                .map_or(Ok(0), |f| f.sender.send_batch(&pkts[..out.n_raw]));
            let raw = account(ep, sent, out.n_raw);
            result = result.and(raw);
        }
        out.n_udp = 0;
        out.n_raw = 0;
        result
    }

    /// Sends one message the endpoint built (a handshake, a control frame), with its TTL
    /// when it asks for one (UDP only: FakeTCP flows never punch).
    pub(crate) fn send_owned(
        &mut self,
        ep: &mut Endpoint,
        now: Instant,
        t: &culvert_core::OwnedTransmit,
    ) -> Result<(), std::io::Error> {
        let (to, bytes) = (t.to, &t.bytes[..]);
        if let (Some(ttl), Transport::Udp) = (t.ttl, to.transport)
            && let Some(udp) = self.udp_socket(to.socket, now)
        {
            return match udp.send_with_ttl(to.addr, bytes, ttl) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ep.count_shell_drop(DropReason::SendFailed);
                    Ok(())
                }
                Err(e) => {
                    ep.count_shell_drop(DropReason::SendFailed);
                    Err(e)
                }
            };
        }
        let mut buf = vec![0u8; faketcp::HEADROOM + bytes.len()];
        buf[faketcp::HEADROOM..].copy_from_slice(bytes);
        let mut out = Outbound::new();
        self.queue(
            ep,
            now,
            &mut out,
            to,
            &mut buf,
            faketcp::HEADROOM..faketcp::HEADROOM + bytes.len(),
        );
        self.flush(ep, &mut out, &buf)
    }

    /// Sends FakeTCP's own segments (SYN, SYN-ACK, ACKs).
    pub(crate) fn flush_faketcp_control(
        &mut self,
        ep: &mut Endpoint,
    ) -> Result<(), std::io::Error> {
        let Some(ft) = &self.ftcp else {
            return Ok(());
        };
        let mut result = Ok(());
        while let Some((to, pkt)) = ep.poll_segment() {
            let sent = ft.sender.send_batch(&[(to.ip(), &pkt)]);
            let r = account(ep, sent, 1);
            result = result.and(r);
        }
        result
    }
}

/// Counts the datagrams of a batch the kernel did not take as `send_failed` drops.
fn account(
    ep: &mut Endpoint,
    sent: std::io::Result<usize>,
    wanted: usize,
) -> Result<(), std::io::Error> {
    let (done, result) = match sent {
        Ok(n) => (n, Ok(())),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => (0, Ok(())),
        Err(e) => (0, Err(e)),
    };
    for _ in done..wanted {
        ep.count_shell_drop(DropReason::SendFailed);
    }
    result
}
