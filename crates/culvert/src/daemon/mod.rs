//! The daemon: wires the core endpoint to the TUN device, the underlay (UDP and FakeTCP),
//! timers, signals, the control socket and metrics, in one thread. The per-packet side
//! (TUN, sockets, buffers) is [`packets::Packets`]; this module keeps control (netlink,
//! routes, the gateway, requests).
//!
//! Pipeline, per wake-up:
//!
//! ```text
//! TUN readable     -> read up to BATCH packets -> seal in place -> sendmmsg (UDP or raw)
//! UDP readable     -> recvmmsg                 -> open in place -> write to the TUN (or relay)
//! packet socket    -> recvmmsg                 -> FakeTCP stack -> records -> as UDP
//! timer due        -> handle_timeout (the endpoint's, FakeTCP's within it)
//! always           -> send queued control messages, act on events
//! ```

mod gateway;
mod packets;
mod requests;
mod spray;
mod underlay;

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use culvert_core::{
    ClientConfig, Config, Endpoint, Event, HubConfig, Psk, PublicKey, Role, Timing, TransportMode,
    faketcp,
};
use culvert_sys::control::ControlListener;
use culvert_sys::dir::Dir;
use culvert_sys::netlink::{Netlink, Route, Via};
use culvert_sys::nft::{RuleSet, Table};
use culvert_sys::poll::{Poller, Signals};
use culvert_sys::privilege;
use culvert_sys::tun::Tun;
use culvert_sys::udp::UdpSocket;
use culvert_wire::addr::Prefix;
use culvert_wire::hello::Cipher;
use culvert_wire::message::DATA_OVERHEAD;
use culvert_wire::tcp;

use crate::cli::TransportArg;
use crate::config::{PassphraseOrigin, RoleSettings, Settings};
use crate::{identity, metrics};
use gateway::Gateway;
use packets::Packets;
use requests::{Kind, Readable, Requests, Stream};
use spray::SpraySockets;
use underlay::{FakeTcp, Underlay};

const TUN: u64 = 0;
const UDP: u64 = 1;
const SIGNAL: u64 = 2;
const CONTROL: u64 = 3;
const METRICS: u64 = 4;
/// Port prediction's extra UDP sockets (one nested epoll for all).
const SPRAY: u64 = 5;
/// Packet sockets of FakeTCP: `RAW + i`.
const RAW: u64 = 8;
/// Control and metrics connections: from `CONNECTIONS` up.
const CONNECTIONS: u64 = 1 << 20;

/// A client looks at its interface addresses (its LAN candidates) this often.
const CANDIDATES_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a daemon until SIGINT/SIGTERM.
pub(crate) fn run(settings: Settings) -> Result<()> {
    let signals = Signals::new()?;
    let netns = culvert_sys::netns::current_name();
    if settings.passphrase_origin == Some(PassphraseOrigin::CommandLine) {
        tracing::warn!(
            "the passphrase was given with -k: every local user can read it in `ps`; \
             use --key-file FILE or the CULVERT_KEY environment variable instead"
        );
    }
    for note in &settings.notes {
        tracing::warn!("{note}");
    }
    let control = ControlListener::bind(&netns, &settings.tun_name)?;
    let state_dir = settings
        .state_dir
        .clone()
        .unwrap_or_else(|| identity::default_state_dir(&netns, &settings.tun_name));
    let (secret, created) = identity::resolve(settings.private_key_file.as_deref(), &state_dir)?;
    if let Some(p) = created {
        tracing::info!(path = %p.display(), "generated this instance's identity key");
    }
    tracing::info!(public_key = %secret.public_key(), instance = %settings.tun_name, netns = %netns, "starting");
    Gateway::recover(control.dir(), &settings.tun_name);
    // A full-tunnel client marks every underlay socket: marked traffic bypasses the tunnel.
    let mark = match &settings.role {
        RoleSettings::Client {
            full_tunnel: Some(_),
            ..
        } => Some(gateway::mark_for(&settings.tun_name)),
        _ => None,
    };
    let psk = settings
        .passphrase
        .as_deref()
        .map(|p| identity::stretch(p, settings.kdf))
        .transpose()?;
    culvert_core::aead::check_known_answers(crate::aead::ring)
        .map_err(|e| anyhow::anyhow!("AEAD self-test failed, refusing to run: {e}"))?;
    let now = Instant::now();
    let instance = settings.tun_name.clone();
    let transport_arg = match (settings.transport, culvert_sys::nft::available()) {
        (TransportArg::Auto, false) => {
            tracing::warn!(
                "FakeTCP is off: it needs the nft command, which is not installed here ({}); \
                 UDP only",
                culvert_sys::nft::INSTALL_HINT
            );
            TransportArg::Udp
        }
        (TransportArg::Faketcp, false) => bail!(
            "--transport faketcp needs the nft command: {}",
            culvert_sys::nft::INSTALL_HINT
        ),
        (t, _) => t,
    };

    let (role, underlay, faketcp, v6, server) = match &settings.role {
        RoleSettings::Server {
            listen,
            max_clients,
            isolation,
            peers,
            nat,
            allow_routes,
            allow_route_overlap,
        } => {
            let udp = (transport_arg != TransportArg::Faketcp)
                .then(|| UdpSocket::bind(*listen))
                .transpose()?;
            let mss = mss_for(mtu_guess(&settings, listen.is_ipv6()));
            let mask = faketcp::mask_key(&handshake_psk(&psk, secret.public_key()));
            let ftcp = match (transport_arg, FakeTcp::server(*listen, mss, mask)) {
                (TransportArg::Udp, _) => None,
                (_, Ok(f)) => Some(f),
                (TransportArg::Faketcp, Err(e)) => return Err(e.context("starting FakeTCP")),
                (TransportArg::Auto, Err(e)) => {
                    tracing::warn!("FakeTCP disabled, serving UDP only: {e:#}");
                    None
                }
            };
            let hub = HubConfig {
                max_clients: *max_clients,
                isolation: *isolation,
                exit: nat.is_some(),
                clients: peers.clone(),
                allow_routes: allow_routes.clone(),
                allow_route_overlap: *allow_route_overlap,
                handshake_load_limit: 500,
            };
            let (ftcp, faketcp) = ftcp.unzip();
            (
                Role::Hub(hub),
                Underlay {
                    udp,
                    ftcp,
                    spray: SpraySockets::new(listen.is_ipv6(), None)?,
                },
                faketcp,
                listen.is_ipv6(),
                None,
            )
        }
        RoleSettings::Client {
            server,
            server_key,
            networks,
            p2p,
            mesh_relay,
            full_tunnel,
            accept_routes,
            nat: _,
        } => {
            let addr = resolve(server)?;
            let udp = (transport_arg != TransportArg::Faketcp)
                .then(|| bind_client(addr, mark))
                .transpose()?;
            // The configured key, else the one pinned at the first contact (passphrase mode).
            let pinned = match server_key {
                Some(k) => Some(*k),
                None => identity::known_server(&state_dir, server)?,
            };
            if let (None, Some(k)) = (server_key, pinned) {
                tracing::info!(server_key = %k, file = %state_dir.join(identity::KNOWN_SERVERS).display(), "the server's key is pinned from the first contact");
            }
            let mss = mss_for(mtu_guess(&settings, addr.is_ipv6()));
            // A key-mode client always has the server's key (the config requires it).
            let responder = pinned.unwrap_or(PublicKey([0; 32]));
            let mask = faketcp::mask_key(&handshake_psk(&psk, responder));
            let ftcp = match (
                transport_arg,
                FakeTcp::client(addr, mss, settings.faketcp_isn, mask, mark),
            ) {
                (TransportArg::Udp, _) => None,
                (_, Ok(f)) => Some(f),
                (TransportArg::Faketcp, Err(e)) => return Err(e.context("starting FakeTCP")),
                (TransportArg::Auto, Err(e)) => {
                    tracing::warn!("FakeTCP unavailable, using UDP only: {e:#}");
                    None
                }
            };
            let transport = match (transport_arg, ftcp.is_some()) {
                (TransportArg::Udp, _) | (TransportArg::Auto, false) => TransportMode::Udp,
                (TransportArg::Faketcp, _) => TransportMode::FakeTcp,
                (TransportArg::Auto, true) => TransportMode::Auto,
            };
            let cfg = ClientConfig {
                server: addr,
                server_key: pinned,
                transport,
                networks: networks.clone(),
                p2p: *p2p,
                mesh_relay: *mesh_relay,
                full_tunnel: full_tunnel.is_some(),
                accept_routes: accept_routes.clone(),
            };
            let (ftcp, faketcp) = ftcp.unzip();
            (
                Role::Client(cfg),
                Underlay {
                    udp,
                    ftcp,
                    spray: SpraySockets::new(addr.is_ipv6(), mark)?,
                },
                faketcp,
                addr.is_ipv6(),
                Some(server.clone()),
            )
        }
    };
    let faketcp_on = underlay.ftcp.is_some();
    let udp_on = underlay.udp.is_some();
    let mtu = settings
        .mtu
        .unwrap_or_else(|| default_mtu(v6, faketcp_on, fec_on(&settings)));

    let mut netlink = Netlink::open()?;
    remove_stale_tun(&mut netlink, &settings.tun_name);
    let tun = Tun::create(&settings.tun_name)?;
    let ifindex = Netlink::link_index(tun.name())?;
    let mut underlay = underlay;
    if let Some(f) = &mut underlay.ftcp {
        f.tun_ifindex = Some(ifindex);
    }
    enable_ipv6(tun.name());
    netlink.set_link_up(ifindex, mtu)?;
    for a in &settings.addresses {
        netlink.add_address(ifindex, *a)?;
    }
    let transports = match (udp_on, faketcp_on) {
        (true, true) => "udp+faketcp",
        (true, false) => "udp",
        _ => "faketcp",
    };
    tracing::info!(tun = tun.name(), mtu, addresses = %list(&settings.addresses), transports, "TUN device up");
    let (gateway, table) = system_rules(
        &settings,
        control.dir().try_clone()?,
        &mut netlink,
        tun.name(),
        ifindex,
        &underlay,
        mark,
    )?;

    let timing = Timing {
        keepalive: settings.keepalive,
        ..Timing::default()
    };
    let dial_to = match &role {
        Role::Client(c) => Some(c.server),
        Role::Hub(_) => None,
    };
    let cfg = Config {
        secret,
        passphrase: psk,
        addresses: settings.addresses.clone(),
        routes: settings.routes.clone(),
        ciphers: cipher_preference(),
        aead: crate::aead::ring,
        timing,
        fec: settings.fec,
        mtu: u16::try_from(mtu).ok(),
        faketcp,
        role,
    };
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut ep = Endpoint::new(cfg, identity::os_random(), now, unix);
    if let (Some(f), Some(to)) = (&underlay.ftcp, dial_to)
        && let Err(e) = f.dial(&mut ep, now, to)
    {
        tracing::warn!("FakeTCP cannot dial the server yet: {e:#}");
    }

    let metrics = settings.metrics.map(metrics::Server::bind).transpose()?;
    let poller = Poller::new(64)?;
    poller.add(tun.as_raw_fd(), TUN)?;
    if let Some(u) = &underlay.udp {
        poller.add(u.as_raw_fd(), UDP)?;
        poller.add(underlay.spray.as_raw_fd(), SPRAY)?;
    }
    if let Some(f) = &underlay.ftcp {
        for (i, r) in f.receivers.iter().enumerate() {
            poller.add(r.as_raw_fd(), RAW + i as u64)?;
        }
    }
    poller.add(signals.as_raw_fd(), SIGNAL)?;
    poller.add(control.as_raw_fd(), CONTROL)?;
    if let Some(m) = &metrics {
        poller.add(m.as_raw_fd(), METRICS)?;
    }
    let info = DaemonInfo {
        instance,
        netns,
        mtu,
        underlay: match &settings.role {
            RoleSettings::Server { listen, .. } => listen.to_string(),
            RoleSettings::Client { server, .. } => server.clone(),
        },
        transports,
        nft_table: table.as_ref().map(|t| t.name().to_owned()),
        gateway: gateway.as_ref().and_then(Gateway::summary),
        started: now,
    };
    drop_privileges(settings.user.as_deref(), &state_dir, &control, faketcp_on)?;
    let mut d = Daemon {
        ep,
        gateway,
        _table: table,
        mark,
        packets: Packets::new(tun, underlay),
        poller,
        signals,
        control,
        metrics,
        requests: Requests::new(CONNECTIONS),
        state_dir,
        netlink,
        ifindex,
        addresses: settings.addresses.clone(),
        kernel_routes: Vec::new(),
        routes_skipped: Vec::new(),
        overlay_routes: Vec::new(),
        info,
        server,
        stop: false,
        next_candidates: now,
    };
    d.refresh_candidates(now);
    d.run()
}

/// Static facts about the daemon, for status and metrics.
#[derive(Debug, Clone)]
pub(crate) struct DaemonInfo {
    pub(crate) instance: String,
    pub(crate) netns: String,
    pub(crate) mtu: u32,
    pub(crate) underlay: String,
    pub(crate) transports: &'static str,
    pub(crate) nft_table: Option<String>,
    /// What makes this node a gateway, if anything (exit, full tunnel).
    pub(crate) gateway: Option<String>,
    pub(crate) started: Instant,
}

struct Daemon {
    ep: Endpoint,
    /// Undone on drop: the gateway's system changes, the nftables table.
    gateway: Option<Gateway>,
    _table: Option<Table>,
    /// A full tunnel's firewall mark for underlay sockets.
    mark: Option<u32>,
    packets: Packets,
    poller: Poller,
    signals: Signals,
    control: ControlListener,
    metrics: Option<metrics::Server>,
    /// Open control and metrics connections.
    requests: Requests,
    /// Where this instance keeps its key and the pinned server keys.
    state_dir: PathBuf,
    netlink: Netlink,
    ifindex: u32,
    addresses: Vec<Prefix>,
    /// Routes into the TUN this daemon installed (other nodes' subnets).
    kernel_routes: Vec<Prefix>,
    /// Other nodes' subnets it left out, and why.
    routes_skipped: Vec<(Prefix, String)>,
    /// Routes to the hub's overlay networks that no address of ours brings (key mode).
    overlay_routes: Vec<Prefix>,
    info: DaemonInfo,
    /// Client: the server as configured (re-resolved when rebinding).
    server: Option<String>,
    stop: bool,
    /// When the client next refreshes its LAN candidates.
    next_candidates: Instant,
}

impl Daemon {
    fn run(&mut self) -> Result<()> {
        let mut ready = [0u64; 64];
        while !self.stop {
            let deadline = self.next_deadline();
            let timeout = deadline.saturating_duration_since(Instant::now());
            let mut n = 0;
            for t in self.poller.wait(timeout)? {
                if n < ready.len() {
                    ready[n] = t;
                    n += 1;
                }
            }
            for &token in &ready[..n] {
                match token {
                    TUN => self.packets.on_tun(&mut self.ep),
                    UDP => self.packets.on_udp(&mut self.ep, 0),
                    SPRAY => {
                        for k in self.packets.underlay.spray.ready() {
                            self.packets.on_udp(&mut self.ep, k);
                        }
                    }
                    SIGNAL => self.on_signal(),
                    CONTROL => self.on_control(),
                    METRICS => self.on_metrics(),
                    t if self.requests.owns(t) => self.on_request(t),
                    t if t >= RAW => self.packets.on_raw(&mut self.ep, (t - RAW) as usize),
                    _ => {}
                }
            }
            let now = Instant::now();
            if self.ep.poll_timeout() <= now {
                self.ep.handle_timeout(now);
            }
            if now >= self.next_candidates {
                self.refresh_candidates(now);
            }
            self.packets.flush_control(&mut self.ep);
            self.on_events();
            self.requests.expire(&self.poller, now);
            self.packets.underlay.spray.expire(now);
        }
        tracing::info!("shutting down");
        self.ep.shutdown(Instant::now());
        self.packets.flush_control(&mut self.ep);
        Ok(())
    }

    fn next_deadline(&mut self) -> Instant {
        let ep = self.ep.poll_timeout();
        self.requests
            .next_deadline()
            .map_or(ep, |r| r.min(ep))
            .min(self.next_candidates)
    }

    /// Client: this host's interface addresses with the UDP socket's port, for the hub to
    /// hand to peers as LAN candidates.
    fn refresh_candidates(&mut self, now: Instant) {
        self.next_candidates = now + CANDIDATES_EVERY;
        if let Some(g) = &mut self.gateway {
            g.refresh_lan(&mut self.netlink);
        }
        if self.server.is_none() {
            return;
        }
        let Some(local) = self
            .packets
            .underlay
            .udp
            .as_ref()
            .and_then(|u| u.local_addr().ok())
        else {
            return;
        };
        let tun = self.packets.tun.name().to_owned();
        let list = culvert_sys::ifaddrs::interface_addresses()
            .into_iter()
            .filter(|(name, ip)| *name != tun && ip.is_ipv4() == local.is_ipv4())
            .map(|(_, ip)| SocketAddr::new(ip, local.port()))
            .collect();
        self.ep.set_local_addresses(now, list);
    }

    fn on_events(&mut self) {
        while let Some(ev) = self.ep.poll_event() {
            match ev {
                Event::Joined {
                    granted,
                    hub_addresses,
                    exit,
                    ..
                } => {
                    self.take_addresses(&granted, &hub_addresses);
                    if !exit {
                        self.no_exit();
                    }
                }
                Event::RoutesChanged { routes } => self.sync_routes(routes),
                Event::Rebind => self.rebind(),
                Event::TransportChanged { .. } => {}
                Event::ServerKeyPinned { key } => self.remember_server(&key),
                Event::ServerKeyMismatch { pinned, offered } => {
                    tracing::error!(
                        server = self.server.as_deref().unwrap_or_default(),
                        %pinned,
                        %offered,
                        "the responder at the server's address proved another key than the pinned \
                         one; nothing was accepted from it. If the server's identity really \
                         changed, run `{}` and restart; otherwise someone else answers at its \
                         address",
                        self.forget_server_command()
                    );
                }
            }
        }
    }

    /// Client: the addresses the hub granted go on the TUN, and a route to the overlay
    /// with them: the networks of the hub's addresses, where a granted /32 (key mode)
    /// brings none of its own. Without it, traffic to the hub's overlay address would
    /// leave by the default route, outside the tunnel. Routes go with the device.
    fn take_addresses(&mut self, granted: &[Prefix], hub_addresses: &[Prefix]) {
        for a in granted {
            if !self.addresses.contains(a) {
                match self.netlink.add_address(self.ifindex, *a) {
                    Ok(()) => self.addresses.push(*a),
                    Err(e) => tracing::error!("{e}"),
                }
            }
        }
        for net in hub_addresses.iter().map(Prefix::network) {
            let covered = self.addresses.iter().any(|a| a.network().covers(&net))
                || self.overlay_routes.contains(&net);
            if covered
                || granted
                    .iter()
                    .all(|g| g.addr().is_ipv4() != net.addr().is_ipv4())
            {
                continue;
            }
            let route = Route {
                dst: net,
                via: Via::Interface(self.ifindex),
                metric: 0,
                table: Route::MAIN,
            };
            match self.netlink.add_route(route) {
                Ok(()) => {
                    tracing::info!(route = %net, "the overlay network is routed into the tunnel");
                    self.overlay_routes.push(net);
                }
                Err(e) => {
                    tracing::warn!(route = %net, "routing the overlay network into the tunnel: {e}")
                }
            }
        }
    }

    /// Client: the hub said it is no exit. A full tunnel through it would black-hole all
    /// traffic to the Internet, so it is taken down (the host's own routes carry that
    /// traffic again) and the operator is told, loudly and in status.
    fn no_exit(&mut self) {
        let Some(g) = &mut self.gateway else {
            return;
        };
        if g.leave_full_tunnel() {
            tracing::error!(
                "full tunnel refused: the server is not an exit (start it with --nat to be one); \
                 traffic to the Internet keeps using this host's own routes, only the overlay \
                 goes through the tunnel"
            );
            self.info.gateway = g.summary();
        }
    }

    /// The exact `culvert forget-server` command for this instance's pin.
    fn forget_server_command(&self) -> String {
        forget_server_command(
            &self.info.netns,
            &self.info.instance,
            &self.state_dir,
            self.server.as_deref(),
        )
    }

    /// Makes the kernel's routes into the TUN (main table) match the subnets the core
    /// routes to other nodes. They go with the device: a crash leaves none behind.
    ///
    /// A route is never installed over what this host reaches without the overlay: a
    /// prefix that overlaps one of its connected networks (its own LAN), covers the
    /// underlay address of a peer (that peer's tunnel would run into itself), or that the
    /// table already has (an operator's route, never replaced). Another node advertising
    /// such a prefix cannot take this host's traffic; status lists what was left out.
    fn sync_routes(&mut self, wanted: Vec<Prefix>) {
        let ifindex = self.ifindex;
        let route = |dst| Route {
            dst,
            via: Via::Interface(ifindex),
            metric: 0,
            table: Route::MAIN,
        };
        for gone in self.kernel_routes.iter().filter(|r| !wanted.contains(r)) {
            if let Err(e) = self.netlink.delete_route(route(*gone)) {
                tracing::warn!(route = %gone, "removing a route into the TUN: {e}");
            } else {
                tracing::info!(route = %gone, "route removed");
            }
        }
        self.kernel_routes.retain(|r| wanted.contains(r));
        let missing: Vec<Prefix> = wanted
            .into_iter()
            .filter(|r| !self.kernel_routes.contains(r))
            .collect();
        let tun = self.packets.tun.name().to_owned();
        let connected: Vec<(String, Prefix)> = culvert_sys::ifaddrs::interface_networks()
            .into_iter()
            .filter(|(dev, p)| *dev != tun && !p.addr().is_loopback())
            .map(|(dev, p)| (dev, p.network()))
            .collect();
        let underlay = self.ep.underlay_addresses();
        let mut skipped = Vec::new();
        for new in missing {
            let why = if let Some((dev, net)) = connected
                .iter()
                .find(|(_, n)| n.covers(&new) || new.covers(n))
            {
                format!("overlaps {net}, connected on {dev}: this host's own network")
            } else if let Some(ip) = underlay.iter().find(|ip| new.contains(**ip)) {
                format!("covers {ip}, a peer's underlay address")
            } else {
                match self.netlink.add_route(route(new)) {
                    Ok(()) => {
                        tracing::info!(route = %new, "route installed into the overlay");
                        self.kernel_routes.push(new);
                        continue;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                        "this host has a route to it already".to_owned()
                    }
                    Err(e) => e.to_string(),
                }
            };
            tracing::warn!(route = %new, "a subnet route of the overlay is not installed here: {why}");
            skipped.push((new, why));
        }
        self.routes_skipped = skipped;
    }

    /// Stores the key of the server we met first (passphrase mode), so that later runs
    /// refuse any other.
    fn remember_server(&mut self, key: &PublicKey) {
        let Some(server) = &self.server else { return };
        let file = self.state_dir.join(identity::KNOWN_SERVERS);
        match identity::remember_server(&self.state_dir, server, key) {
            Ok(()) => {
                tracing::info!(%key, file = %file.display(), "pinned the server's key: a server with another key will be refused")
            }
            Err(e) => tracing::error!("{e:#}: the server's key is pinned for this run only"),
        }
    }

    /// Client: new sockets (new source ports) and the server's name resolved again.
    fn rebind(&mut self) {
        let Some(server) = &self.server else { return };
        let addr = match resolve(server) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("{e:#}");
                return;
            }
        };
        if self.packets.underlay.udp.is_some() {
            match bind_client(addr, self.mark) {
                Ok(udp) => {
                    if let Some(old) = &self.packets.underlay.udp {
                        let _ = self.poller.remove(old.as_raw_fd());
                    }
                    if let Err(e) = self.poller.add(udp.as_raw_fd(), UDP) {
                        tracing::error!("{e}");
                        return;
                    }
                    tracing::info!(server = %addr, local = %udp.local_addr().map(|a| a.to_string()).unwrap_or_default(), "rebound the UDP socket");
                    self.packets.underlay.udp = Some(udp);
                    self.refresh_candidates(Instant::now());
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if let Some(ft) = &self.packets.underlay.ftcp
            && let Err(e) = ft.dial(&mut self.ep, Instant::now(), addr)
        {
            tracing::warn!("{e:#}");
        }
        self.ep.set_server_addr(addr);
    }

    fn on_signal(&mut self) {
        while let Some(sig) = self.signals.read() {
            tracing::info!(signal = sig, "received signal");
            self.stop = true;
        }
    }

    fn on_control(&mut self) {
        let now = Instant::now();
        while let Some(stream) = self.control.accept() {
            self.requests
                .add(&self.poller, now, Kind::Control, Stream::Unix(stream));
        }
    }

    fn on_metrics(&mut self) {
        let now = Instant::now();
        while let Some(stream) = self.metrics.as_ref().and_then(metrics::Server::accept) {
            self.requests
                .add(&self.poller, now, Kind::Metrics, Stream::Tcp(stream));
        }
    }

    /// A control or metrics connection is readable or writable.
    fn on_request(&mut self, token: u64) {
        match self.requests.readable(&self.poller, token) {
            Readable::Request(kind, line) => {
                let answer = self.answer(kind, &line);
                self.requests.respond(&self.poller, token, answer);
            }
            Readable::Pending => self.requests.writable(&self.poller, token),
        }
    }

    fn answer(&self, kind: Kind, request: &str) -> Vec<u8> {
        let status = self.ep.status(Instant::now());
        match (kind, request) {
            (Kind::Metrics, _) => metrics::answer(&status, &self.info),
            (Kind::Control, "status" | "") => crate::status::render_json(
                &status,
                &self.info,
                self.kernel_routes.iter().map(Prefix::to_string).collect(),
                &self.routes_skipped,
                self.ep.faketcp_status(),
            )
            .into_bytes(),
            (Kind::Control, other) => {
                format!("{{\"error\":\"unknown request {other:?}\"}}\n").into_bytes()
            }
        }
    }
}

/// The PSK of handshakes with `responder`: the passphrase's, or in key mode the one derived
/// from the responder's key.
fn handshake_psk(passphrase: &Option<Psk>, responder: PublicKey) -> Psk {
    passphrase
        .clone()
        .unwrap_or_else(|| Psk::for_responder(&responder))
}

/// After setup: becomes the configured user (by default `culvert`, when it exists) with
/// only CAP_NET_ADMIN, and CAP_NET_RAW when FakeTCP runs, and sets no_new_privs. What the
/// daemon still writes later — its state directory (the pinned server keys), its control
/// socket — is handed over first.
fn drop_privileges(
    user: Option<&str>,
    state_dir: &Path,
    control: &ControlListener,
    raw: bool,
) -> Result<()> {
    if privilege::euid() != 0 {
        // Started unprivileged with ambient capabilities (the systemd units).
        privilege::no_new_privs()?;
        return Ok(());
    }
    let target = match user {
        Some("root") => {
            tracing::warn!("keeping root (--user root): a flaw in culvert would be a flaw of root");
            privilege::no_new_privs()?;
            return Ok(());
        }
        Some(name) => privilege::lookup(name)?.with_context(|| {
            format!("--user {name}: no such user (create it, or pass --user root to keep root)")
        })?,
        None => match privilege::lookup_local("culvert") {
            Some(u) => u,
            None => {
                tracing::info!(
                    "running as root: create a 'culvert' system user (or pass --user NAME) to \
                     drop root after setup"
                );
                privilege::no_new_privs()?;
                return Ok(());
            }
        },
    };
    // Through descriptors, never a path the user could have swapped for a link; the
    // control directory stays root's (the gateway record lives there).
    Dir::open(state_dir, 0o700)?.chown_self(&target)?;
    control.give_to(&target)?;
    privilege::drop_to(&target, raw)?;
    tracing::info!(
        user = %target.name,
        uid = target.uid,
        capabilities = if raw { "CAP_NET_ADMIN, CAP_NET_RAW" } else { "CAP_NET_ADMIN" },
        "dropped root"
    );
    Ok(())
}

/// Turns IPv6 on for our TUN device: one made while `default.disable_ipv6 = 1` has it
/// off, so its IPv6 addresses and routes fail (with a misleading "permission denied") and
/// a full tunnel could not carry IPv6. The setting goes with the device. Nothing to do on
/// a kernel without IPv6.
fn enable_ipv6(tun: &str) {
    let parts = ["net", "ipv6", "conf", tun, "disable_ipv6"];
    if culvert_sys::sysctl::read(&parts).is_ok_and(|v| v != "0")
        && let Err(e) = culvert_sys::sysctl::write(&parts, "0")
    {
        tracing::warn!("turning IPv6 on for {tun}: {e}");
    }
}

/// The `culvert forget-server` command that lifts the pin of `instance` in network
/// namespace `netns` with state in `state_dir` for `server` (as configured): an operator
/// copies it as it is, whatever was non-default.
fn forget_server_command(
    netns: &str,
    instance: &str,
    state_dir: &Path,
    server: Option<&str>,
) -> String {
    let mut cmd = String::new();
    if netns != culvert_sys::netns::HOST && !netns.starts_with("ns-") {
        cmd += &format!("ip netns exec {netns} ");
    }
    cmd += &format!("culvert forget-server --tun-name {instance}");
    if state_dir != identity::default_state_dir(netns, instance) {
        cmd += &format!(" --state-dir {}", state_dir.display());
    }
    if let Some(server) = server {
        cmd += &format!(" -r {server}");
    }
    cmd
}

fn resolve(server: &str) -> Result<SocketAddr> {
    server
        .to_socket_addrs()
        .with_context(|| format!("resolving server {server}"))?
        .next()
        .with_context(|| format!("server {server} resolved to no address"))
}

/// The client's main UDP socket; with a full tunnel's `mark` on what it sends.
fn bind_client(server: SocketAddr, mark: Option<u32>) -> Result<UdpSocket> {
    let local: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let sock = UdpSocket::bind(local)?;
    if let Some(m) = mark {
        sock.set_mark(m)?;
    }
    Ok(sock)
}

/// The instance's system changes: a gateway's (exit, subnet router, full tunnel) and one
/// nftables table with every rule the instance needs (FakeTCP, masquerading, confinement,
/// MSS clamping).
fn system_rules(
    settings: &Settings,
    record_dir: Dir,
    netlink: &mut Netlink,
    tun: &str,
    ifindex: u32,
    underlay: &Underlay,
    mark: Option<u32>,
) -> Result<(Option<Gateway>, Option<Table>)> {
    let mut rules = RuleSet {
        faketcp: underlay.ftcp.as_ref().map(|f| f.flows),
        ..RuleSet::default()
    };
    let mut g = Gateway::new(record_dir, &settings.tun_name);
    let nat = match &settings.role {
        RoleSettings::Server { nat, isolation, .. } => {
            if let Some(uplink) = nat {
                g.exit(tun, uplink.as_deref(), &settings.addresses, &mut rules)?;
            }
            rules.isolate = *isolation;
            nat.is_some()
        }
        RoleSettings::Client {
            full_tunnel, nat, ..
        } => {
            if let Some(ft) = full_tunnel {
                g.full_tunnel(&settings.tun_name, tun, ifindex, netlink, ft)?;
            }
            *nat
        }
    };
    if !settings.routes.is_empty() {
        g.subnet_router(
            tun,
            &settings.routes,
            nat,
            &settings.addresses,
            mark,
            &mut rules,
        )?;
    }
    let gateway = g.summary().is_some().then_some(g);
    rules.clamp_mss = gateway.is_some();
    // Isolation only needs enforcing where the TUN forwards.
    rules.isolate &= gateway.is_some();
    if rules.is_empty() {
        Table::remove_stale(&settings.tun_name);
        return Ok((gateway, None));
    }
    let table = Table::install(&settings.tun_name, tun, &rules)?;
    Ok((gateway, Some(table)))
}

/// The overlay MTU that keeps a 1500-byte underlay from fragmenting, whatever transport
/// carries a packet: outer IP, the transport's header (UDP 8; FakeTCP's TCP header with
/// timestamps and record length, 34), the data header and tag, and the relay wrapping (a
/// second header, frame header and tag) — on every node, since a client's traffic to
/// another client may be relayed, and so may the hub's to a client that reaches it through
/// another client. With FEC, a parity message is longer than the longest message it
/// protects by its header and the length prefix of its shards.
pub(crate) fn default_mtu(ipv6: bool, faketcp: bool, fec: bool) -> u32 {
    let ip = if ipv6 { 40 } else { 20 };
    let transport = if faketcp {
        tcp::TCP_HEADER_LEN + tcp::TS_OPTIONS_LEN + tcp::RECORD_HEADER_LEN
    } else {
        8
    };
    let parity = if fec {
        culvert_core::fec::PARITY_OVERHEAD
    } else {
        0
    };
    let relay = DATA_OVERHEAD + culvert_wire::frame::RELAY_HEADER_LEN;
    (1500 - ip - transport - DATA_OVERHEAD - relay - parity) as u32
}

/// The MTU before the transports are known for sure (to size FakeTCP's announced MSS).
fn mtu_guess(settings: &Settings, ipv6: bool) -> u32 {
    settings.mtu.unwrap_or_else(|| {
        default_mtu(
            ipv6,
            settings.transport != TransportArg::Udp,
            fec_on(settings),
        )
    })
}

/// Whether this node may send FEC parity (which sizes the default MTU).
fn fec_on(settings: &Settings) -> bool {
    settings.fec.mode != culvert_core::fec::Mode::Off
}

/// The MSS a Linux stack on a 1500-byte link would announce.
fn mss_for(_overlay_mtu: u32) -> u16 {
    1460
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
    let sys = Path::new("/sys/class/net").join(name);
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

#[cfg(test)]
mod tests {
    use super::{default_mtu, forget_server_command};

    /// First contact, item 10: the hint names the instance's own pin file, whatever was
    /// not the default.
    #[test]
    fn the_pin_hint_is_the_exact_command() {
        let default = crate::identity::default_state_dir("host", "culvert0");
        assert_eq!(
            forget_server_command("host", "culvert0", &default, None),
            "culvert forget-server --tun-name culvert0"
        );
        let other = std::path::Path::new("/srv/vpn/state");
        assert_eq!(
            forget_server_command("blue", "wg1", other, Some("vpn.example.net:9000")),
            "ip netns exec blue culvert forget-server --tun-name wg1 --state-dir /srv/vpn/state \
             -r vpn.example.net:9000"
        );
    }

    /// The figures README.md and PROTOCOL.md quote, and what they add up to: the largest
    /// outer packet — a parity message carried by FakeTCP, relayed — is exactly 1500 bytes.
    #[test]
    fn default_mtus() {
        // (ipv6, faketcp, fec)
        assert_eq!(default_mtu(false, true, true), 1354);
        assert_eq!(default_mtu(false, false, true), 1380);
        assert_eq!(default_mtu(false, true, false), 1372);
        assert_eq!(default_mtu(true, true, true), 1334);
        let fec = culvert_core::fec::PARITY_OVERHEAD;
        let faketcp = culvert_wire::tcp::TCP_HEADER_LEN
            + culvert_wire::tcp::TS_OPTIONS_LEN
            + culvert_wire::tcp::RECORD_HEADER_LEN;
        let relay = culvert_wire::message::DATA_OVERHEAD + culvert_wire::frame::RELAY_HEADER_LEN;
        let outer = 20 + faketcp + culvert_wire::message::DATA_OVERHEAD + relay + fec;
        assert_eq!(default_mtu(false, true, true) as usize + outer, 1500);
    }
}
