//! An in-memory network with a virtual clock for driving several endpoints.
//!
//! Datagrams travel through a queue where they can be lost, duplicated, delayed, reordered,
//! captured or altered; nodes can change underlay address (NAT rebinding) or be replaced
//! (a restart). Time only moves when the test says so.
//!
//! FakeTCP runs as in the daemon: a hub serves it, a client whose transport is not UDP dials
//! it, and what travels is the whole IP packet the endpoint's stack built (SYNs, ACKs,
//! segments of records); a NAT rewrites its IPv4 and TCP headers as it rewrites a UDP
//! datagram's addresses.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use culvert_core::rng::Rng;
use culvert_core::{
    ClientConfig, Config, DatagramOutcome, Endpoint, Event, HEADROOM, HubConfig, Psk, PublicKey,
    Remote, Role, SPRAY_SOCKETS, StaticSecret, TAILROOM, Timing, Transport, TransportMode,
    TunOutcome, faketcp,
};
use culvert_wire::addr::Prefix;
use culvert_wire::hello::Cipher;

pub const HUB_ADDR: &str = "198.19.1.2:9000";

/// Decides whether a datagram in flight passes.
pub type Filter = Box<dyn FnMut(&Datagram) -> bool>;

/// How a NAT picks the public port of a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// The inside port, unless that would clash with a flow the NAT already tracks to the
    /// same remote (what Linux masquerade does): in effect one public port per endpoint.
    EndpointIndependent,
    /// A new port per destination ("symmetric"), the next free one.
    Symmetric,
    /// A new random port per destination (Linux `masquerade fully-random`).
    Random,
}

/// A NAT router in front of some nodes, modelled on Linux conntrack: flows are tracked per
/// (inside endpoint, remote); only a packet that answers a tracked flow — from the exact
/// remote address and port — comes back in; and a packet that answers nothing is remembered
/// as a flow of its own, so a later outbound flow to that remote must take another port.
#[derive(Debug)]
pub struct Nat {
    pub public: IpAddr,
    pub mapping: Mapping,
    /// Whether inside nodes reach each other through the public address.
    pub hairpin: bool,
    /// The private addresses behind it.
    pub inside: BTreeSet<IpAddr>,
    /// (inside endpoint, remote) → public port.
    flows: BTreeMap<(SocketAddr, SocketAddr), u16>,
    /// (public port, remote) → inside endpoint.
    back: BTreeMap<(u16, SocketAddr), SocketAddr>,
    /// (public port, remote) of refused inbound packets conntrack still remembers.
    refused: BTreeSet<(u16, SocketAddr)>,
    next_port: u16,
    rng: Rng,
}

impl Nat {
    fn outbound(&mut self, from: SocketAddr, to: SocketAddr) -> SocketAddr {
        if let Some(&port) = self.flows.get(&(from, to)) {
            return SocketAddr::new(self.public, port);
        }
        let taken =
            |n: &Self, p: u16| n.back.contains_key(&(p, to)) || n.refused.contains(&(p, to));
        let mut port = from.port();
        if self.mapping == Mapping::Random {
            loop {
                port = 1024 + self.rng.below(65536 - 1024) as u16;
                if !taken(self, port) {
                    break;
                }
            }
        } else if self.mapping == Mapping::Symmetric || taken(self, port) {
            loop {
                self.next_port = self.next_port.wrapping_add(1).max(20_000);
                if !taken(self, self.next_port) {
                    break;
                }
            }
            port = self.next_port;
        }
        self.flows.insert((from, to), port);
        self.back.insert((port, to), from);
        SocketAddr::new(self.public, port)
    }

    fn inbound(&mut self, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        let inside = self.back.get(&(to.port(), from)).copied();
        if inside.is_none() {
            self.refused.insert((to.port(), from));
        }
        inside
    }
}

/// The origin of virtual time; the only clock read in the simulation.
#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}

/// A datagram in flight (one outer message, whatever the transport).
#[derive(Debug, Clone)]
pub struct Datagram {
    pub at: Instant,
    /// IP TTL it left with (64 by default).
    pub ttl: u8,
    pub transport: Transport,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

pub struct Node {
    pub ep: Endpoint,
    /// The main socket's address; extra socket `k` (port prediction) is at port + `k`.
    pub addr: SocketAddr,
    /// IP packets delivered to this node's TUN.
    pub delivered: Vec<Vec<u8>>,
    pub events: Vec<Event>,
}

impl Node {
    /// Where this node's socket `socket` is bound.
    pub fn socket_addr(&self, socket: u16) -> SocketAddr {
        SocketAddr::new(self.addr.ip(), self.addr.port() + socket)
    }

    /// Which of this node's sockets `addr` is, if any.
    fn socket_of(&self, addr: SocketAddr) -> Option<u16> {
        let k = addr.port().checked_sub(self.addr.port())?;
        (addr.ip() == self.addr.ip() && k <= SPRAY_SOCKETS).then_some(k)
    }
}

pub struct World {
    pub now: Instant,
    pub nodes: Vec<Node>,
    pub queue: VecDeque<Datagram>,
    pub rng: Rng,
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub latency: Duration,
    /// Every datagram ever sent, for inspection and replay.
    pub log: Vec<Datagram>,
    /// Returns false to drop a datagram in flight (a firewall).
    pub filter: Option<Filter>,
    /// Every handshake message is delivered twice (a router that duplicates them).
    pub duplicate_handshakes: bool,
    /// NAT routers; a node whose address is inside one is behind it.
    pub nats: Vec<Nat>,
    /// The hub's identity, when [`World::hub_and_clients`] made it (to restart it as itself).
    pub hub_secret: Option<StaticSecret>,
    seeds: u8,
}

pub fn passphrase() -> Psk {
    Psk::from_bytes([0x42; 32])
}

pub fn fast_timing() -> Timing {
    Timing {
        retry_min: Duration::from_millis(500),
        ..Timing::default()
    }
}

pub fn hub_config(secret: StaticSecret, psk: Option<Psk>) -> Config {
    Config {
        secret,
        passphrase: psk,
        addresses: vec!["10.0.0.1/24".parse().unwrap()],
        routes: Vec::new(),
        ciphers: vec![Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305],
        aead: culvert_core::aead::rustcrypto,
        timing: fast_timing(),
        fec: culvert_core::fec::Config::default(),
        mtu: None,
        faketcp: None,
        role: Role::Hub(HubConfig {
            max_clients: 100,
            isolation: false,
            exit: false,
            clients: Vec::new(),
            allow_routes: Vec::new(),
            allow_route_overlap: false,
            handshake_load_limit: 1000,
        }),
    }
}

pub fn client_config(secret: StaticSecret, psk: Option<Psk>, addr: &str) -> Config {
    Config {
        secret,
        passphrase: psk,
        addresses: if addr.is_empty() {
            Vec::new()
        } else {
            vec![addr.parse().unwrap()]
        },
        routes: Vec::new(),
        ciphers: vec![Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305],
        aead: culvert_core::aead::rustcrypto,
        timing: fast_timing(),
        fec: culvert_core::fec::Config::default(),
        mtu: None,
        faketcp: None,
        role: Role::Client(ClientConfig {
            server: HUB_ADDR.parse().unwrap(),
            server_key: None,
            transport: TransportMode::Udp,
            networks: vec![prefix("10.0.0.0/8"), prefix("fd00::/8")],
            p2p: true,
            mesh_relay: culvert_core::MeshRelay::default(),
            full_tunnel: false,
            accept_routes: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"]
                .map(prefix)
                .to_vec(),
        }),
    }
}

/// What a NAT does to a TCP packet's headers: new addresses and ports (IPv4: the NATs
/// here are IPv4), both checksums updated.
fn translate(packet: &mut [u8], src: SocketAddr, dst: SocketAddr) {
    use culvert_wire::checksum;
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("the simulated NATs translate IPv4 only");
    };
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    packet[12..16].copy_from_slice(&s.octets());
    packet[16..20].copy_from_slice(&d.octets());
    packet[10..12].fill(0);
    let ip_sum = checksum::data(&packet[..ihl]);
    packet[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp = &mut packet[ihl..];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[16..18].fill(0);
    let pseudo = checksum::pseudo_header(src.ip(), dst.ip(), 6, tcp.len());
    let tcp_sum = checksum::finish(checksum::sum(pseudo, tcp));
    tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
}

/// FakeTCP as the daemon sets it up, unless `cfg` has its own: a hub serves it; a client
/// whose transport is not UDP gets a stack (dialled by [`World::add`]).
pub fn with_faketcp(mut cfg: Config) -> Config {
    if cfg.faketcp.is_some() {
        return cfg;
    }
    let (side, max_flows, responder) = match &cfg.role {
        Role::Hub(_) => (faketcp::Side::Server, 4096, cfg.secret.public_key()),
        Role::Client(c) if c.transport != TransportMode::Udp => (
            faketcp::Side::Client,
            1,
            c.server_key.unwrap_or(PublicKey([0; 32])),
        ),
        Role::Client(_) => return cfg,
    };
    let psk = (cfg.passphrase.clone()).unwrap_or_else(|| Psk::for_responder(&responder));
    cfg.faketcp = Some(faketcp::Config {
        side,
        mss: 1400,
        max_flows,
        isn: None,
        mask_key: faketcp::mask_key(&psk),
    });
    cfg
}

/// The server a client's FakeTCP dials, if it has FakeTCP.
fn faketcp_server(cfg: &Config) -> Option<SocketAddr> {
    match (&cfg.faketcp, &cfg.role) {
        (Some(_), Role::Client(c)) => Some(c.server),
        _ => None,
    }
}

/// An IPv4 packet `src -> dst` (protocol 253, "experimental") carrying `payload`.
pub fn ip_packet(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    let len = u16::try_from(20 + payload.len()).unwrap();
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 253;
    let s: std::net::Ipv4Addr = src.parse().unwrap();
    let d: std::net::Ipv4Addr = dst.parse().unwrap();
    p[12..16].copy_from_slice(&s.octets());
    p[16..20].copy_from_slice(&d.octets());
    p.extend_from_slice(payload);
    p
}

impl World {
    pub fn new(seed: u64) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        Self {
            now: epoch(),
            nodes: Vec::new(),
            queue: VecDeque::new(),
            rng: Rng::from_seed(s),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            latency: Duration::from_millis(5),
            log: Vec::new(),
            filter: None,
            duplicate_handshakes: false,
            nats: Vec::new(),
            hub_secret: None,
            seeds: 0,
        }
    }

    pub fn secret(&mut self) -> StaticSecret {
        StaticSecret::from_bytes(self.rng.array())
    }

    fn seed(&mut self) -> [u8; 32] {
        self.seeds += 1;
        let mut s = self.rng.array::<32>();
        s[0] = self.seeds;
        s
    }

    /// Adds a node and returns its index.
    pub fn add(&mut self, cfg: Config, addr: &str) -> usize {
        let seed = self.seed();
        let cfg = with_faketcp(cfg);
        let dial = faketcp_server(&cfg);
        let mut ep = Endpoint::new(cfg, seed, self.now, Duration::from_secs(1_700_000_000));
        // Its own interface address: a LAN candidate (a no-op on the hub).
        let addr: SocketAddr = addr.parse().unwrap();
        ep.set_local_addresses(self.now, vec![addr]);
        if let Some(server) = dial {
            ep.faketcp_dial(self.now, addr.ip(), server);
        }
        self.nodes.push(Node {
            ep,
            addr,
            delivered: Vec::new(),
            events: Vec::new(),
        });
        let i = self.nodes.len() - 1;
        self.drain(i);
        i
    }

    /// Replaces node `i` by a fresh endpoint (a restart), keeping its address.
    pub fn restart(&mut self, i: usize, cfg: Config) {
        let seed = self.seed();
        let cfg = with_faketcp(cfg);
        let dial = faketcp_server(&cfg);
        self.nodes[i].ep = Endpoint::new(cfg, seed, self.now, Duration::from_secs(1_700_000_100));
        if let Some(server) = dial {
            let ip = self.nodes[i].addr.ip();
            self.nodes[i].ep.faketcp_dial(self.now, ip, server);
        }
        self.drain(i);
    }

    /// A standard world: a passphrase hub and `n` clients 10.0.0.2.. on their own addresses.
    pub fn hub_and_clients(seed: u64, n: usize) -> Self {
        let mut w = Self::new(seed);
        let hs = w.secret();
        w.hub_secret = Some(hs.clone());
        w.add(hub_config(hs, Some(passphrase())), HUB_ADDR);
        for i in 0..n {
            let s = w.secret();
            w.add(
                client_config(s, Some(passphrase()), &format!("10.0.0.{}/24", i + 2)),
                &format!("198.18.{}.2:40000", i + 1),
            );
        }
        w
    }

    /// Collects outputs and events of node `i` (what a shell does after every call).
    pub fn drain(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].ep.poll_transmit() {
            let len = t.bytes.len();
            self.transmit(i, t.to, t.bytes, 0..len, t.ttl.unwrap_or(64));
        }
        while let Some((_, packet)) = self.nodes[i].ep.poll_segment() {
            self.send_segment(packet);
        }
        while let Some(p) = self.nodes[i].ep.poll_recovered() {
            self.nodes[i].delivered.push(p);
        }
        while let Some(e) = self.nodes[i].ep.poll_event() {
            self.nodes[i].events.push(e);
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.below(1_000_000) as f64) < p * 1_000_000.0
    }

    /// Adds a NAT router with public address `public` in front of the nodes whose IP is in
    /// `inside`; returns its index.
    pub fn add_nat(
        &mut self,
        public: &str,
        mapping: Mapping,
        hairpin: bool,
        inside: &[&str],
    ) -> usize {
        let rng = Rng::from_seed(self.seed());
        self.nats.push(Nat {
            public: public.parse().unwrap(),
            mapping,
            hairpin,
            inside: inside.iter().map(|a| a.parse().unwrap()).collect(),
            flows: BTreeMap::new(),
            back: BTreeMap::new(),
            refused: BTreeSet::new(),
            next_port: 20_000,
            rng,
        });
        self.nats.len() - 1
    }

    /// What the network makes of a datagram from `from` to `to` sent with `ttl`: the source
    /// and destination it arrives with, or `None` if it is dropped. Hops: the sender's NAT,
    /// the core router, the receiver's NAT; each forwards only a TTL of 2 or more, and a NAT
    /// receives (and remembers) a packet for itself whatever its TTL.
    fn route(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        ttl: u8,
    ) -> Option<(SocketAddr, SocketAddr)> {
        let inside_of = |nats: &[Nat], ip: IpAddr| nats.iter().position(|n| n.inside.contains(&ip));
        let (src_nat, dst_nat) = (
            inside_of(&self.nats, from.ip()),
            inside_of(&self.nats, to.ip()),
        );
        if src_nat.is_some() && src_nat == dst_nat {
            return Some((from, to)); // the same LAN
        }
        if dst_nat.is_some() {
            return None; // a private address from elsewhere: not routed
        }
        let public_nat = self.nats.iter().position(|n| n.public == to.ip());
        let mut ttl = ttl;
        let src = match src_nat {
            Some(n) if public_nat == Some(n) && !self.nats[n].hairpin => return None,
            Some(_) if ttl < 2 => return None,
            Some(n) => {
                ttl -= 1;
                self.nats[n].outbound(from, to)
            }
            None => from,
        };
        if ttl < 2 {
            return None; // expired in the core router
        }
        ttl -= 1;
        match public_nat {
            Some(n) => {
                let inside = self.nats[n].inbound(src, to)?;
                (ttl >= 2).then_some((src, inside))
            }
            None => Some((src, to)),
        }
    }

    pub fn send(&mut self, from: SocketAddr, to: Remote, bytes: Vec<u8>) {
        self.send_ttl(from, to, bytes, 64);
    }

    /// Sends `bytes[range]`, a message node `i` built for `to`: as a UDP datagram from the
    /// socket it names, or wrapped by the node's FakeTCP stack into a segment.
    fn transmit(&mut self, i: usize, to: Remote, bytes: Vec<u8>, range: Range<usize>, ttl: u8) {
        if to.transport == Transport::Udp {
            let from = self.nodes[i].socket_addr(to.socket);
            return self.send_ttl(from, to, bytes[range].to_vec(), ttl);
        }
        let mut buf = vec![0u8; faketcp::HEADROOM + range.len()];
        buf[faketcp::HEADROOM..].copy_from_slice(&bytes[range]);
        let msg = faketcp::HEADROOM..buf.len();
        let now = self.now;
        if let Some(packet) = self.nodes[i].ep.encapsulate(now, to.addr, &mut buf, msg) {
            self.send_segment(buf[packet].to_vec());
        }
    }

    /// Sends a whole FakeTCP packet; its addresses are those of its headers.
    pub fn send_segment(&mut self, packet: Vec<u8>) {
        let seg = culvert_wire::tcp::Segment::parse(&packet).expect("a stack built it");
        self.send_ttl(seg.src, Remote::faketcp(seg.dst), packet, 64);
    }

    /// [`World::send`] with an IP TTL.
    pub fn send_ttl(&mut self, from: SocketAddr, to: Remote, mut bytes: Vec<u8>, ttl: u8) {
        let Some((src, dst)) = self.route(from, to.addr, ttl) else {
            return;
        };
        if to.transport == Transport::FakeTcp && (src, dst) != (from, to.addr) {
            translate(&mut bytes, src, dst);
        }
        let from = src;
        let d = Datagram {
            at: self.now + self.latency,
            ttl,
            transport: to.transport,
            from,
            to: dst,
            bytes,
        };
        self.log.push(d.clone());
        if let Some(f) = self.filter.as_mut()
            && !f(&d)
        {
            return;
        }
        if self.chance(self.loss) {
            return;
        }
        let handshake = matches!(d.bytes.first(), Some(1 | 2));
        if self.chance(self.duplicate) || (self.duplicate_handshakes && handshake) {
            self.queue.push_back(d.clone());
        }
        if self.chance(self.reorder) && !self.queue.is_empty() {
            let at = self.rng.below(self.queue.len() as u64) as usize;
            self.queue.insert(at, d);
        } else {
            self.queue.push_back(d);
        }
    }

    /// Injects a FakeTCP packet from outside (an attacker); its addresses are its headers'.
    pub fn inject_segment(&mut self, packet: Vec<u8>) {
        let seg = culvert_wire::tcp::Segment::parse(&packet).expect("a TCP packet");
        self.queue.push_back(Datagram {
            at: self.now,
            ttl: 64,
            transport: Transport::FakeTcp,
            from: seg.src,
            to: seg.dst,
            bytes: packet,
        });
    }

    /// Injects a datagram from outside (an attacker or a replay).
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.queue.push_back(Datagram {
            at: self.now,
            ttl: 64,
            transport: Transport::Udp,
            from,
            to,
            bytes,
        });
    }

    /// Writes `packet` into node `i`'s TUN side.
    pub fn tun(&mut self, i: usize, packet: &[u8]) -> TunOutcome {
        let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        let now = self.now;
        let out = self.nodes[i]
            .ep
            .handle_tun_packet(now, &mut buf, HEADROOM, packet.len());
        if let TunOutcome::Send(t) = &out {
            self.transmit(i, t.to, buf.clone(), t.range.clone(), 64);
        }
        self.drain(i);
        out
    }

    /// Delivers every datagram due at `now`; returns how many were delivered.
    pub fn deliver_due(&mut self) -> usize {
        let mut n = 0;
        let mut pending = VecDeque::new();
        while let Some(d) = self.queue.pop_front() {
            if d.at > self.now {
                pending.push_back(d);
                continue;
            }
            n += 1;
            let Some((i, socket)) = self.nodes.iter().enumerate().find_map(|(i, node)| {
                match d.transport {
                    Transport::Udp => node.socket_of(d.to).map(|s| (i, s)),
                    // The packet socket sees every port of its address.
                    Transport::FakeTcp => (node.addr.ip() == d.to.ip()).then_some((i, 0)),
                }
            }) else {
                continue;
            };
            let mut buf = d.bytes.clone();
            let len = buf.len();
            let now = self.now;
            let from = Remote {
                transport: d.transport,
                addr: d.from,
                socket,
            };
            let ep = &mut self.nodes[i].ep;
            let outcome = match d.transport {
                Transport::Udp => ep.handle_datagram(now, from, &mut buf, 0..len),
                Transport::FakeTcp => ep.handle_segment(now, &mut buf, 0..len),
            };
            match outcome {
                DatagramOutcome::Deliver(r) => self.nodes[i].delivered.push(buf[r].to_vec()),
                DatagramOutcome::Send(t) => self.transmit(i, t.to, buf, t.range, 64),
                DatagramOutcome::Done | DatagramOutcome::Dropped(_) => {}
            }
            self.drain(i);
        }
        self.queue = pending;
        n
    }

    /// Runs timers and the network for `d` of virtual time, in 1 ms steps.
    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(Duration::from_millis(1));
        }
    }

    pub fn step(&mut self, dt: Duration) {
        self.now += dt;
        while self.deliver_due() > 0 {}
        for i in 0..self.nodes.len() {
            let now = self.now;
            if self.nodes[i].ep.poll_timeout() <= now {
                self.nodes[i].ep.handle_timeout(now);
                self.drain(i);
                // A timer still due after it ran would make a real shell spin.
                assert!(
                    self.nodes[i].ep.poll_timeout() > now,
                    "node {i}: a timer stays due after handle_timeout"
                );
            }
        }
        while self.deliver_due() > 0 {}
    }

    /// Runs until `pred` holds, for at most `max`; returns whether it held.
    pub fn run_until(&mut self, max: Duration, mut pred: impl FnMut(&Self) -> bool) -> bool {
        let end = self.now + max;
        while self.now < end {
            if pred(self) {
                return true;
            }
            self.step(Duration::from_millis(1));
        }
        pred(self)
    }

    pub fn joined(&self, i: usize) -> bool {
        let s = self.nodes[i].ep.status(self.now);
        s.node.is_some() && s.peers.iter().any(|p| p.node == 0 && p.state == "up")
    }

    /// Whether every client knows every other client from the directory.
    pub fn mesh_known(&self) -> bool {
        let clients = self.nodes.len() - 1;
        (1..self.nodes.len()).all(|i| self.nodes[i].ep.status(self.now).peers.len() == clients)
    }

    pub fn drops(&self, i: usize, reason: &str) -> u64 {
        self.nodes[i]
            .ep
            .status(self.now)
            .drops
            .nonzero()
            .find(|(k, _)| *k == reason)
            .map_or(0, |(_, n)| n)
    }

    pub fn set_addr(&mut self, i: usize, addr: &str) {
        self.nodes[i].addr = addr.parse().unwrap();
    }

    pub fn overlay(i: usize) -> String {
        format!("10.0.0.{}", i + 1)
    }
}

pub fn prefix(s: &str) -> Prefix {
    s.parse().unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
