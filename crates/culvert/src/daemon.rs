//! The daemon: wires the core endpoint to the TUN device, the UDP socket, timers, signals,
//! the control socket and metrics, in one thread.
//!
//! Pipeline, per wake-up:
//!
//! ```text
//! TUN readable  -> read up to BATCH packets -> seal in place -> sendmmsg
//! UDP readable  -> recvmmsg up to BATCH     -> open in place -> write to TUN (or relay)
//! timer due     -> handle_timeout
//! always        -> send queued control messages, act on events
//! ```

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use culvert_core::{
    ClientConfig, Config, DatagramOutcome, DropReason, Endpoint, Event, HEADROOM, HubConfig, Role,
    TAILROOM, Timing, TunOutcome,
};
use culvert_sys::control::ControlListener;
use culvert_sys::netlink::Netlink;
use culvert_sys::poll::{Poller, Signals};
use culvert_sys::tun::Tun;
use culvert_sys::udp::{BATCH, RecvMeta, UdpSocket};
use culvert_wire::addr::Prefix;
use culvert_wire::hello::Cipher;
use culvert_wire::message::DATA_OVERHEAD;

use crate::config::{RoleSettings, Settings};
use crate::{identity, metrics};

const TUN: u64 = 0;
const UDP: u64 = 1;
const SIGNAL: u64 = 2;
const CONTROL: u64 = 3;
const METRICS: u64 = 4;

/// Buffer slot per packet: room for any IP packet plus the core's head- and tailroom.
const SLOT: usize = 65_536 + 256;
/// Where a TUN packet starts inside its slot.
const TUN_OFFSET: usize = 128;
/// Batches handled per readiness event before other sources get a turn.
const ROUNDS: usize = 4;

const _: () = assert!(TUN_OFFSET >= HEADROOM && TUN_OFFSET + 65_535 + TAILROOM <= SLOT);

/// Runs a daemon until SIGINT/SIGTERM.
pub(crate) fn run(settings: Settings) -> Result<()> {
    let signals = Signals::new()?;
    let netns = culvert_sys::netns::current_name();
    let control = ControlListener::bind(&settings.tun_name)?;
    let state_dir = settings
        .state_dir
        .clone()
        .unwrap_or_else(|| identity::default_state_dir(&netns, &settings.tun_name));
    let (secret, created) = identity::resolve(settings.private_key_file.as_deref(), &state_dir)?;
    if let Some(p) = created {
        tracing::info!(path = %p.display(), "generated this instance's identity key");
    }
    tracing::info!(public_key = %secret.public_key(), instance = %settings.tun_name, netns = %netns, "starting");
    let psk = settings
        .passphrase
        .as_deref()
        .map(identity::stretch)
        .transpose()?;

    let (udp, role, family_v6) = match &settings.role {
        RoleSettings::Server {
            listen,
            max_clients,
            isolation,
            peers,
        } => {
            let udp = UdpSocket::bind(*listen)?;
            let hub = HubConfig {
                max_clients: *max_clients,
                isolation: *isolation,
                clients: peers.clone(),
                handshake_load_limit: 500,
            };
            (udp, Role::Hub(hub), listen.is_ipv6())
        }
        RoleSettings::Client { server, server_key } => {
            let addr = resolve(server)?;
            let udp = bind_client(addr)?;
            (
                udp,
                Role::Client(ClientConfig {
                    server: addr,
                    server_key: *server_key,
                }),
                addr.is_ipv6(),
            )
        }
    };
    let is_client = matches!(role, Role::Client(_));
    let mtu = settings
        .mtu
        .unwrap_or_else(|| default_mtu(is_client, family_v6));

    let mut netlink = Netlink::open()?;
    remove_stale_tun(&mut netlink, &settings.tun_name);
    let tun = Tun::create(&settings.tun_name)?;
    let ifindex = Netlink::link_index(tun.name())?;
    netlink.set_link_up(ifindex, mtu)?;
    for a in &settings.addresses {
        netlink.add_address(ifindex, *a)?;
    }
    tracing::info!(tun = tun.name(), mtu, addresses = %list(&settings.addresses), "TUN device up");

    let timing = Timing {
        keepalive: settings.keepalive,
        ..Timing::default()
    };
    let cfg = Config {
        secret,
        passphrase: psk,
        addresses: settings.addresses.clone(),
        ciphers: cipher_preference(),
        aead: crate::aead::ring,
        timing,
        role,
    };
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ep = Endpoint::new(cfg, identity::os_random(), Instant::now(), unix);

    let metrics = settings.metrics.map(metrics::Server::bind).transpose()?;
    let poller = Poller::new(16)?;
    poller.add(tun.as_raw_fd(), TUN)?;
    poller.add(udp.as_raw_fd(), UDP)?;
    poller.add(signals.as_raw_fd(), SIGNAL)?;
    poller.add(control.as_raw_fd(), CONTROL)?;
    if let Some(m) = &metrics {
        poller.add(m.as_raw_fd(), METRICS)?;
    }
    let started = Instant::now();
    let mut d = Daemon {
        ep,
        tun,
        udp,
        poller,
        signals,
        control,
        metrics,
        netlink,
        ifindex,
        addresses: settings.addresses.clone(),
        info: DaemonInfo {
            instance: settings.tun_name.clone(),
            netns,
            mtu,
            underlay: match &settings.role {
                RoleSettings::Server { listen, .. } => listen.to_string(),
                RoleSettings::Client { server, .. } => server.clone(),
            },
            started,
        },
        server: match &settings.role {
            RoleSettings::Client { server, .. } => Some(server.clone()),
            RoleSettings::Server { .. } => None,
        },
        tun_buf: vec![0u8; SLOT * BATCH],
        rx_buf: vec![0u8; SLOT * BATCH],
        meta: [RecvMeta::default(); BATCH],
        stop: false,
        io_errors: 0,
    };
    d.run()
}

/// Static facts about the daemon, for status and metrics.
#[derive(Debug, Clone)]
pub(crate) struct DaemonInfo {
    pub(crate) instance: String,
    pub(crate) netns: String,
    pub(crate) mtu: u32,
    pub(crate) underlay: String,
    pub(crate) started: Instant,
}

struct Daemon {
    ep: Endpoint,
    tun: Tun,
    udp: UdpSocket,
    poller: Poller,
    signals: Signals,
    control: ControlListener,
    metrics: Option<metrics::Server>,
    netlink: Netlink,
    ifindex: u32,
    addresses: Vec<Prefix>,
    info: DaemonInfo,
    /// Client: the server as configured (re-resolved when rebinding).
    server: Option<String>,
    tun_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    meta: [RecvMeta; BATCH],
    stop: bool,
    io_errors: u64,
}

impl Daemon {
    fn run(&mut self) -> Result<()> {
        let mut ready = [0u64; 8];
        while !self.stop {
            let timeout = self
                .ep
                .poll_timeout()
                .saturating_duration_since(Instant::now());
            let mut n = 0;
            for t in self.poller.wait(timeout)? {
                if n < ready.len() {
                    ready[n] = t;
                    n += 1;
                }
            }
            for &token in &ready[..n] {
                match token {
                    TUN => self.on_tun(),
                    UDP => self.on_udp(),
                    SIGNAL => self.on_signal(),
                    CONTROL => self.on_control(),
                    METRICS => self.on_metrics(),
                    _ => {}
                }
            }
            let now = Instant::now();
            if self.ep.poll_timeout() <= now {
                self.ep.handle_timeout(now);
            }
            self.flush_outbox();
            self.on_events();
        }
        tracing::info!("shutting down");
        self.ep.shutdown(Instant::now());
        self.flush_outbox();
        Ok(())
    }

    fn on_tun(&mut self) {
        for _ in 0..ROUNDS {
            let now = Instant::now();
            let mut sends: [(SocketAddr, usize, usize); BATCH] = [(unspecified(), 0, 0); BATCH];
            let mut k = 0;
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
                if let TunOutcome::Send(t) = self.ep.handle_tun_packet(now, slot, TUN_OFFSET, len) {
                    sends[k] = (t.to, read * SLOT + t.range.start, read * SLOT + t.range.end);
                    k += 1;
                }
                read += 1;
            }
            self.send_from(&sends[..k], true);
            if read < BATCH {
                break;
            }
        }
    }

    fn on_udp(&mut self) {
        for _ in 0..ROUNDS {
            let got = match self.udp.recv_batch(&mut self.rx_buf, SLOT, &mut self.meta) {
                Ok(n) => n,
                Err(e) => {
                    self.io_error("receiving UDP", &e);
                    break;
                }
            };
            if got == 0 {
                break;
            }
            let now = Instant::now();
            let mut sends: [(SocketAddr, usize, usize); BATCH] = [(unspecified(), 0, 0); BATCH];
            let mut k = 0;
            for i in 0..got {
                let m = self.meta[i];
                let slot = &mut self.rx_buf[i * SLOT..(i + 1) * SLOT];
                match self.ep.handle_datagram(now, m.from, slot, 0..m.len) {
                    DatagramOutcome::Deliver(r) => {
                        if let Err(e) = self.tun.send(&slot[r]) {
                            self.ep.count_shell_drop(DropReason::TunWriteFailed);
                            if e.kind() != std::io::ErrorKind::WouldBlock {
                                self.io_error("writing to the TUN device", &e);
                            }
                        }
                    }
                    DatagramOutcome::Send(t) => {
                        sends[k] = (t.to, i * SLOT + t.range.start, i * SLOT + t.range.end);
                        k += 1;
                    }
                    DatagramOutcome::Done | DatagramOutcome::Dropped(_) => {}
                }
            }
            self.send_from(&sends[..k], false);
            self.flush_outbox();
            if got < BATCH {
                break;
            }
        }
    }

    /// Sends `(to, start, end)` ranges of the TUN (or receive) buffer in one batch.
    fn send_from(&mut self, ranges: &[(SocketAddr, usize, usize)], tun_buf: bool) {
        if ranges.is_empty() {
            return;
        }
        let buf = if tun_buf { &self.tun_buf } else { &self.rx_buf };
        let mut msgs: [(SocketAddr, &[u8]); BATCH] = [(unspecified(), &[]); BATCH];
        for (m, &(to, s, e)) in msgs.iter_mut().zip(ranges) {
            *m = (to, &buf[s..e]);
        }
        let sent = self.udp.send_batch(&msgs[..ranges.len()]);
        self.account_sends(sent, ranges.len());
    }

    fn flush_outbox(&mut self) {
        while let Some(t) = self.ep.poll_transmit() {
            let sent = self.udp.send_batch(&[(t.to, &t.bytes)]);
            self.account_sends(sent, 1);
        }
    }

    /// Counts the datagrams of a batch the kernel did not take as `send_failed` drops.
    fn account_sends(&mut self, sent: std::io::Result<usize>, wanted: usize) {
        let done = match sent {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    self.io_error("sending UDP", &e);
                }
                0
            }
        };
        for _ in done..wanted {
            self.ep.count_shell_drop(DropReason::SendFailed);
        }
    }

    fn on_events(&mut self) {
        while let Some(ev) = self.ep.poll_event() {
            match ev {
                Event::Joined { granted, .. } => {
                    for a in granted {
                        if !self.addresses.contains(&a) {
                            match self.netlink.add_address(self.ifindex, a) {
                                Ok(()) => self.addresses.push(a),
                                Err(e) => tracing::error!("{e}"),
                            }
                        }
                    }
                }
                Event::Rebind => self.rebind(),
            }
        }
    }

    /// Client: a new socket (new source port), and the server's name resolved again.
    fn rebind(&mut self) {
        let Some(server) = &self.server else { return };
        let addr = match resolve(server) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("{e:#}");
                return;
            }
        };
        match bind_client(addr) {
            Ok(udp) => {
                let _ = self.poller.remove(self.udp.as_raw_fd());
                if let Err(e) = self.poller.add(udp.as_raw_fd(), UDP) {
                    tracing::error!("{e}");
                    return;
                }
                self.udp = udp;
                self.ep.set_server_addr(addr);
                tracing::info!(server = %addr, local = ?self.udp.local_addr().ok(), "rebound the UDP socket");
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }

    fn on_signal(&mut self) {
        while let Some(sig) = self.signals.read() {
            tracing::info!(signal = sig, "received signal");
            self.stop = true;
        }
    }

    fn on_control(&mut self) {
        while let Some((mut stream, request)) = self.control.accept() {
            let body = match request.trim() {
                "status" | "" => {
                    crate::status::render_json(&self.ep.status(Instant::now()), &self.info)
                }
                other => format!("{{\"error\":\"unknown request {other:?}\"}}"),
            };
            let _ = std::io::Write::write_all(&mut stream, body.as_bytes());
        }
    }

    fn on_metrics(&mut self) {
        let status = self.ep.status(Instant::now());
        if let Some(m) = &self.metrics {
            m.serve(&status, &self.info);
        }
    }

    /// Logs an I/O error, rate-limited to the first few and then every 1000th.
    fn io_error(&mut self, what: &str, e: &std::io::Error) {
        self.io_errors += 1;
        if self.io_errors <= 5 || self.io_errors % 1000 == 0 {
            tracing::warn!(count = self.io_errors, "{what}: {e}");
        }
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

fn resolve(server: &str) -> Result<SocketAddr> {
    server
        .to_socket_addrs()
        .with_context(|| format!("resolving server {server}"))?
        .next()
        .with_context(|| format!("server {server} resolved to no address"))
}

fn bind_client(server: SocketAddr) -> Result<UdpSocket> {
    let local: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    Ok(UdpSocket::bind(local)?)
}

/// The overlay MTU that keeps a 1500-byte underlay from fragmenting: outer IP and UDP
/// headers, the data header and tag, and on clients the relay wrapping of client-to-client
/// traffic (a second header, frame header and tag).
pub(crate) fn default_mtu(client: bool, ipv6: bool) -> u32 {
    let ip = if ipv6 { 40 } else { 20 };
    let relay = if client {
        DATA_OVERHEAD + culvert_wire::frame::RELAY_HEADER_LEN
    } else {
        0
    };
    (1500 - ip - 8 - DATA_OVERHEAD - relay) as u32
}

/// AES-256-GCM first where the CPU has AES instructions, ChaCha20-Poly1305 first otherwise.
fn cipher_preference() -> Vec<Cipher> {
    #[cfg(target_arch = "x86_64")]
    let aes = std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let aes = std::arch::is_aarch64_feature_detected!("aes");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let aes = false;
    if aes {
        vec![Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305]
    } else {
        vec![Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm]
    }
}

/// Removes an interface of our name that a crashed run left behind. Only a TUN device
/// that no process holds (no carrier) is touched, and only after the control socket proved
/// that no live culvert daemon of this name runs here.
fn remove_stale_tun(netlink: &mut Netlink, name: &str) {
    let sys = std::path::Path::new("/sys/class/net").join(name);
    let detached = std::fs::read_to_string(sys.join("carrier")).is_ok_and(|c| c.trim() == "0");
    if !sys.join("tun_flags").exists() || !detached {
        return;
    }
    if let Ok(index) = Netlink::link_index(name) {
        match netlink.delete_link(index) {
            Ok(()) => tracing::info!(
                tun = name,
                "removed a stale TUN device left by an earlier run"
            ),
            Err(e) => tracing::debug!("stale TUN {name}: {e}"),
        }
    }
}

fn list(p: &[Prefix]) -> String {
    p.iter()
        .map(Prefix::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
