//! The client: joining the hub, pings, the directory of other clients, reconnecting.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use culvert_wire::addr::Prefix;
use culvert_wire::frame::{DirDelta, DirEntry, Directory, Frame};
use culvert_wire::hello::{FLAG_EXIT, FLAG_ISOLATION, Hello, Reply, Welcome};

use super::detour::Detour;
use super::handshake::Request;
use super::{Endpoint, RoleState};
use crate::budget::SourceBudget;
use crate::config::{ClientConfig, MeshRelay, TransportMode};
use crate::event::Event;
use crate::keys::PublicKey;
use crate::limit::{ByteBucket, RateWindow};
use crate::noise::Responder;
use crate::peer::{Path, Peer, PeerId, Remote, Source, Transport};
use crate::pending::{Claim, Pending, Standing};
use crate::rng::Rng;
use crate::session::Session;
use crate::stats::DropReason;

/// Silence over UDP (with traffic unanswered) after which `auto` moves to FakeTCP. Short
/// enough that the switch lands before an inner TCP's retransmission timer has backed off
/// past about 3 s (its retransmissions go out at 0.2, 0.6, 1.4, 3.0, 6.2 s).
const FAILOVER_AFTER: Duration = Duration::from_secs(2);
/// Unanswered for this long, the client pings every [`FAST_PING`] to find out quickly.
const SUSPECT_AFTER: Duration = Duration::from_millis(500);
/// Unanswered for this long (two fast pings lost), the client starts a new handshake with
/// the hub while it keeps the current session: a hub that restarted and forgot us answers
/// it at once (it says nothing to a session it does not know), and a live hub treats it as
/// a rekey.
const REJOIN_AFTER: Duration = Duration::from_millis(1500);
/// Ping interval while the path is suspect: four pings must go unanswered to switch.
const FAST_PING: Duration = Duration::from_millis(500);
/// On FakeTCP in `auto`, a UDP probe goes out this often.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// A probe unanswered this long counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive answered probes (a stable period of 15 s) before `auto` returns to UDP.
const PROBES_TO_RETURN: u32 = 3;
/// Handshake attempts on one transport before `auto` tries the other.
const ATTEMPTS_PER_TRANSPORT: u32 = 2;
/// Handshakes a client answers per second for one origin node: a peer retries about once
/// a second; more is a member making us spend Diffie-Hellman.
const PEER_HANDSHAKES_PER_ORIGIN: u32 = 5;

/// Client-only state.
#[derive(Debug)]
pub(super) struct Client {
    /// The hub's underlay address.
    pub(super) server: SocketAddr,
    /// Which transports may be used.
    mode: TransportMode,
    /// The last switch of transport: when, to what, why.
    switched: Option<(Instant, Transport, &'static str)>,
    /// Handshake attempts since the last switch.
    attempts_here: u32,
    /// When the hub last refused a join (it answers, so "no answer" would mislead).
    pub(super) refused_at: Option<Instant>,
    /// The likely causes of the hub's silence were logged (once per silence).
    explained: bool,
    /// Whether the hub said it is an exit, once joined.
    exit: Option<bool>,
    /// The shell's FakeTCP flow to the hub came up at least once (its TCP port answers).
    faketcp_up: bool,
    probe_seq: u32,
    probe_out: Option<(u32, Instant)>,
    probes_answered: u32,
    next_probe: Option<Instant>,
    /// The hub's pinned key: configured, remembered, or learnt at the first Welcome.
    pub(super) server_key: Option<PublicKey>,
    /// Where addresses and routes may lie (what the hub grants, the directory).
    networks: Vec<Prefix>,
    /// Whether direct paths to other clients are tried.
    pub(super) p2p: bool,
    /// Mesh relaying: whether and how much we forward for others, the hop limit we set.
    pub(super) mesh: MeshRelay,
    /// What we forward for others, limited to `mesh.rate`.
    pub(super) relay_budget: ByteBucket,
    /// The clients each other client reaches directly, by its report via the hub.
    pub(super) reach: BTreeMap<PeerId, Vec<PeerId>>,
    /// Our own neighbours as last reported to the hub, and when we may report again.
    pub(super) reported: Option<Vec<u32>>,
    pub(super) next_report: Option<Instant>,
    pub(super) reported_at: Option<Instant>,
    /// The client we reach the hub through while our own path to it fails.
    pub(super) detour: Option<Box<Detour>>,
    /// Our own interface endpoints (LAN candidates), as the shell reports them.
    pub(super) locals: Vec<SocketAddr>,
    /// The UDP endpoint the hub sees us at.
    pub(super) reflexive: Option<SocketAddr>,
    /// Node id the hub gave us, once joined.
    pub(super) node: Option<u32>,
    pub(super) isolation: bool,
    /// The addresses the hub granted at the last join.
    granted: Vec<Prefix>,
    /// Our offered routes the hub accepted, from our directory entry (`None`: not known).
    pub(super) accepted_routes: Option<Vec<Prefix>>,
    pub(super) dir: DirectoryAssembly,
    ping_seq: u32,
    /// Outstanding ping: sequence number and when it was sent.
    ping_out: Option<(u32, Instant)>,
    next_ping: Option<Instant>,
    pub(super) refusal_log: RateWindow,
    /// Handshake answers per origin node (each costs Diffie-Hellman and a message 2).
    pub(super) handshake_budget: SourceBudget,
}

/// Collects the parts of a directory snapshot until all have arrived.
#[derive(Debug, Default)]
pub(super) struct DirectoryAssembly {
    /// Version of the last snapshot applied (0: none).
    pub(super) held: u64,
    version: u64,
    parts: Vec<Option<Vec<DirEntry>>>,
}

impl DirectoryAssembly {
    /// Adds a part; returns the whole snapshot once complete.
    fn add(&mut self, d: Directory) -> Option<Vec<DirEntry>> {
        if d.version == self.held {
            return None;
        }
        if d.version != self.version || self.parts.len() != usize::from(d.parts) {
            self.version = d.version;
            self.parts = vec![None; usize::from(d.parts)];
        }
        self.parts[usize::from(d.part)] = Some(d.entries);
        if self.parts.iter().any(Option::is_none) {
            return None;
        }
        self.held = self.version;
        Some(self.parts.drain(..).flatten().flatten().collect())
    }
}

impl Client {
    /// The addresses the hub granted at the last join.
    pub(super) fn granted(&self) -> &[Prefix] {
        &self.granted
    }

    /// The transports this client tries the hub over, for messages.
    pub(super) fn transports(&self) -> &'static str {
        match self.mode {
            TransportMode::Udp => "UDP",
            TransportMode::FakeTcp => "FakeTCP",
            TransportMode::Auto => "UDP or FakeTCP",
        }
    }

    /// Whether the hub's silence after `attempts` handshakes should be explained now: once,
    /// when every transport this client may use has been tried.
    pub(super) fn explain_silence(&mut self, attempts: u32) -> bool {
        let tried_all = match self.mode {
            TransportMode::Auto => attempts >= 2 * ATTEMPTS_PER_TRANSPORT,
            TransportMode::Udp | TransportMode::FakeTcp => true,
        };
        let explain = tried_all && !self.explained;
        self.explained |= explain;
        explain
    }

    pub(super) fn new(cfg: ClientConfig, rng: &mut Rng) -> Self {
        Self {
            handshake_budget: SourceBudget::new(
                rng,
                PEER_HANDSHAKES_PER_ORIGIN,
                Duration::from_secs(1),
                32,
                128,
            ),
            server: cfg.server,
            mode: cfg.transport,
            switched: None,
            attempts_here: 0,
            refused_at: None,
            explained: false,
            exit: None,
            faketcp_up: false,
            probe_seq: 0,
            probe_out: None,
            probes_answered: 0,
            next_probe: None,
            server_key: cfg.server_key,
            networks: cfg.networks,
            p2p: cfg.p2p,
            mesh: cfg.mesh_relay,
            relay_budget: ByteBucket::new(cfg.mesh_relay.rate),
            reach: BTreeMap::new(),
            reported: None,
            next_report: None,
            reported_at: None,
            detour: None,
            locals: Vec::new(),
            reflexive: None,
            node: None,
            isolation: false,
            granted: Vec::new(),
            accepted_routes: None,
            dir: DirectoryAssembly::default(),
            ping_seq: 0,
            ping_out: None,
            next_ping: None,
            refusal_log: RateWindow::new(3, Duration::from_secs(10)),
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [
            self.next_ping,
            self.next_probe,
            self.probe_out.map(|(_, t)| t + PROBE_TIMEOUT),
            self.detour.as_deref().map(Detour::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl Endpoint {
    fn client(&mut self) -> &mut Client {
        match &mut self.role {
            RoleState::Client(c) => c,
            RoleState::Hub(_) => unreachable!("client-only path reached on the hub"),
        }
    }

    /// Passphrase mode, first contact: the hub that welcomed us is the one we keep.
    pub(super) fn pin_server_key(&mut self, key: PublicKey) {
        let c = self.client();
        if c.server_key.is_none() {
            c.server_key = Some(key);
            tracing::info!(server_key = %key, "pinned the server's key (first contact)");
            self.events.push_back(Event::ServerKeyPinned { key });
        }
    }

    /// Keeps the prefixes inside this client's overlay networks; logs the others, which
    /// the hub (or whoever poses as it) cannot make us install.
    fn inside_networks(&mut self, what: &str, prefixes: Vec<Prefix>) -> Vec<Prefix> {
        let c = self.client();
        let (ok, refused): (Vec<Prefix>, Vec<Prefix>) = prefixes
            .into_iter()
            .partition(|p| c.networks.iter().any(|n| n.covers(p)));
        if !refused.is_empty() {
            let allowed = c.networks.iter().map(Prefix::to_string).collect::<Vec<_>>();
            tracing::warn!(
                refused = %refused.iter().map(Prefix::to_string).collect::<Vec<_>>().join(", "),
                allowed = %allowed.join(", "),
                "refused {what} outside this client's overlay network (set 'network' to allow more)"
            );
        }
        ok
    }

    /// The hub accepted our join (first time, reconnect, or rekey).
    pub(super) fn on_joined(&mut self, now: Instant, mut w: Welcome) {
        // A new silence gets its own explanation.
        self.client().explained = false;
        w.responder_addresses = self.inside_networks(
            "server addresses",
            core::mem::take(&mut w.responder_addresses),
        );
        w.granted = self.inside_networks("granted addresses", core::mem::take(&mut w.granted));
        if let Some(hub) = self.peers.get_mut(&PeerId::HUB) {
            hub.addresses = w.responder_addresses.clone();
        }
        self.install_routes(PeerId::HUB);
        let keepalive = self.cfg.timing.keepalive;
        let c = self.client();
        let exit = w.flags & FLAG_EXIT != 0;
        let fresh = c.node != Some(w.node) || c.granted != w.granted || c.exit != Some(exit);
        c.exit = Some(exit);
        c.node = Some(w.node);
        c.isolation = w.flags & FLAG_ISOLATION != 0;
        // A hub that (re)admitted us has no report of ours yet.
        c.reported = None;
        c.granted = w.granted.clone();
        c.next_ping = Some(now + keepalive);
        let isolation = c.isolation;
        if fresh {
            tracing::info!(
                node = w.node,
                granted = %w.granted.iter().map(Prefix::to_string).collect::<Vec<_>>().join(", "),
                isolation,
                "joined the server"
            );
            self.events.push_back(Event::Joined {
                node: w.node,
                granted: w.granted,
                hub_addresses: w.responder_addresses,
                isolation,
                exit,
            });
        } else {
            tracing::debug!("session with the server renewed");
        }
        // The first data message confirms the session to the hub; a ping also measures RTT.
        self.send_ping(now);
        if fresh {
            self.publish_candidates(now);
        }
    }

    pub(super) fn send_ping(&mut self, now: Instant) {
        let keepalive = self.cfg.timing.keepalive;
        let c = self.client();
        c.ping_seq = c.ping_seq.wrapping_add(1);
        let seq = c.ping_seq;
        let dir_version = c.dir.held;
        c.ping_out = Some((seq, now));
        c.next_ping = Some(now + keepalive);
        self.send_frame(now, PeerId::HUB, &Frame::Ping { seq, dir_version });
    }

    pub(super) fn on_pong(
        &mut self,
        now: Instant,
        id: PeerId,
        seq: u32,
        _dir: u64,
    ) -> Result<(), DropReason> {
        if id != PeerId::HUB || !self.is_client() {
            return Ok(());
        }
        let c = self.client();
        if let Some((s, sent)) = c.ping_out
            && s == seq
        {
            c.ping_out = None;
            let rtt = now.saturating_duration_since(sent);
            if let Some(hub) = self.peers.get_mut(&PeerId::HUB) {
                hub.rtt = Some(rtt);
            }
        }
        Ok(())
    }

    pub(super) fn on_directory(
        &mut self,
        now: Instant,
        id: PeerId,
        part: Directory,
    ) -> Result<(), DropReason> {
        if id != PeerId::HUB || !self.is_client() {
            return Err(DropReason::BadFrame);
        }
        if let Some(entries) = self.client().dir.add(part) {
            self.apply_directory(now, entries);
        }
        Ok(())
    }

    /// The hub's delta from the version we hold to the next: applied when we hold its
    /// base; otherwise we ask for the whole directory (the hub answers once a second).
    pub(super) fn on_dir_delta(
        &mut self,
        now: Instant,
        id: PeerId,
        delta: DirDelta,
    ) -> Result<(), DropReason> {
        if id != PeerId::HUB || !self.is_client() {
            return Err(DropReason::BadFrame);
        }
        let held = self.client().dir.held;
        if delta.from != held {
            self.send_frame(now, PeerId::HUB, &Frame::DirRequest { version: held });
            return Ok(());
        }
        for e in delta.entries {
            self.apply_entry(now, e);
        }
        let own = self.client().node;
        for node in delta.removed {
            if node != PeerId::HUB.0 && Some(node) != own {
                self.remove_peer(now, PeerId(node));
            }
        }
        self.client().dir.held = delta.version;
        Ok(())
    }

    /// Makes the peer table match a complete directory snapshot.
    fn apply_directory(&mut self, now: Instant, entries: Vec<DirEntry>) {
        let keep: BTreeSet<PeerId> = entries
            .into_iter()
            .filter_map(|e| self.apply_entry(now, e))
            .collect();
        let gone: Vec<PeerId> = self
            .peers
            .keys()
            .copied()
            .filter(|id| *id != PeerId::HUB && !keep.contains(id))
            .collect();
        for id in gone {
            self.remove_peer(now, id);
        }
        tracing::debug!(
            peers = keep.len(),
            version = self.client().dir.held,
            "directory applied"
        );
    }

    /// One node's directory entry: the hub's routes, ours (what the hub accepted), or
    /// another client, added or updated. Returns the client it made or kept.
    fn apply_entry(&mut self, now: Instant, e: DirEntry) -> Option<PeerId> {
        let own = self.client().node;
        if e.node == PeerId::HUB.0 {
            let routes = self.usable_routes(PeerId::HUB, e.routes);
            if let Some(hub) = self.peers.get_mut(&PeerId::HUB)
                && hub.routes != routes
            {
                hub.routes = routes;
                self.install_routes(PeerId::HUB);
            }
            return None;
        }
        if Some(e.node) == own || e.public_key == self.public.0 {
            self.note_accepted_routes(e.routes);
            return None;
        }
        let id = PeerId(e.node);
        let key = PublicKey(e.public_key);
        let addresses = self.inside_networks("directory addresses", e.addresses);
        if self.peers.get(&id).is_some_and(|p| p.key != key) {
            self.remove_peer(now, id);
        }
        let peer = self
            .peers
            .entry(id)
            .or_insert_with(|| Peer::new(id, key, Vec::new(), Path::Relay(PeerId::HUB)));
        peer.addresses = addresses;
        let routes = self.usable_routes(id, e.routes);
        let peer = self.peers.get_mut(&id).expect("inserted above");
        peer.routes = routes;
        self.install_routes(id);
        Some(id)
    }

    /// Our own directory entry: the routes the hub accepted from us. Logs a change, and
    /// the offers it left out.
    fn note_accepted_routes(&mut self, accepted: Vec<Prefix>) {
        let offered: Vec<Prefix> = self.cfg.routes.iter().map(Prefix::network).collect();
        let c = self.client();
        if c.accepted_routes.as_ref() == Some(&accepted) {
            return;
        }
        let left_out: Vec<Prefix> = offered
            .into_iter()
            .filter(|r| !accepted.contains(r))
            .collect();
        if !left_out.is_empty() {
            tracing::warn!(
                routes = %super::hub::list(&left_out),
                "the server did not accept these offered routes (its allow_routes or this key's \
                 [[peer]] routes must cover them); see the server's log"
            );
        }
        if !accepted.is_empty() {
            tracing::info!(routes = %super::hub::list(&accepted), "the server routes these subnets to us");
        }
        c.accepted_routes = Some(accepted);
    }

    /// Accepts an end-to-end session from another client, relayed (by the hub, or by the
    /// clients a client reaches the hub through).
    pub(super) fn accept_peer(
        &mut self,
        now: Instant,
        src: Source,
        request: Request,
        responder: Responder,
        hello: Hello,
    ) -> Result<(), DropReason> {
        let Source::Relay { node: origin, .. } = src else {
            return Err(DropReason::UnexpectedHandshake);
        };
        let init_index = request.index;
        let key = responder.remote_static();
        let peer = self.peers.get(&origin).ok_or(DropReason::UnknownKey)?;
        if peer.key != key || origin == PeerId::HUB {
            return Err(DropReason::UnknownKey);
        }
        if hello.timestamp <= peer.confirmed_timestamp || self.pending.has(&key, hello.timestamp) {
            return Err(DropReason::HandshakeReplay);
        }
        let Some(cipher) = self.choose_cipher(hello.ciphers) else {
            return Err(DropReason::BadFrame);
        };
        // Relayed through the hub: one waiting entry per key and relay, the newest.
        if !self.pending.has_room(&key, src.into(), Standing::Verified) {
            return Err(DropReason::HandshakeCrowded);
        }
        let local_index = self.fresh_index();
        let welcome = Reply::Welcome(Welcome {
            cipher,
            node: 0,
            flags: 0,
            keepalive_secs: 0,
            responder_addresses: Vec::new(),
            granted: Vec::new(),
        });
        let split = self.send_reply(now, src, local_index, request, responder, &welcome)?;
        let session = Session::new(
            self.cfg.aead,
            &split,
            cipher,
            local_index,
            init_index,
            false,
            now,
        );
        self.pending.insert(
            local_index,
            Pending {
                session,
                key,
                claim: Claim::Peer(origin),
                source: src,
                timestamp: hello.timestamp,
                standing: Standing::Verified,
            },
        );
        self.deadline_dirty = true;
        Ok(())
    }

    /// The hub session is gone (silence, goodbye, or the hub forgot us): rejoin now.
    pub(super) fn lose_hub(&mut self, now: Instant, rebind: bool) {
        self.reset_sessions(PeerId::HUB);
        let c = self.client();
        c.next_ping = None;
        c.ping_out = None;
        // The hub may come back as a new process whose directory versions restart.
        c.dir = DirectoryAssembly::default();
        c.reach.clear();
        if let Some(hub) = self.peers.get_mut(&PeerId::HUB) {
            hub.attempts = 0;
            hub.last_rx = None;
        }
        if rebind {
            self.events.push_back(Event::Rebind);
        }
        self.start_handshake(now, PeerId::HUB);
    }

    pub(super) fn client_timers(&mut self, now: Instant) {
        let dead_after = self.cfg.timing.dead_after;
        let Some(hub) = self.peers.get(&PeerId::HUB) else {
            return;
        };
        let joined = hub.sessions.current.is_some();
        // The handshake is evidence of life too: a session may never have carried data.
        let heard = hub.last_rx.max(hub.last_handshake);
        let silent = heard.is_some_and(|t| now.saturating_duration_since(t) >= dead_after);
        let retry = hub.retry_at.is_some_and(|r| r <= now);
        if joined && silent {
            tracing::warn!(
                silent_s = dead_after.as_secs(),
                "nothing heard from the server; reconnecting from a new port"
            );
            self.lose_hub(now, true);
            return;
        }
        if retry {
            self.retry_handshake(now, PeerId::HUB);
        }
        if joined {
            self.watch_hub(now);
            self.detour_timers(now);
            if self.client().detour.is_none() {
                self.auto_transport(now);
            }
            if self.client().next_ping.is_some_and(|p| p <= now) {
                self.send_ping(now);
            }
            self.report_neighbours(now);
            self.maybe_rekey(now, PeerId::HUB);
        }
    }

    /// Traffic to the hub goes unanswered: ping fast to tell a lost pong from a silent
    /// hub, and soon start a new handshake beside the current session. Nothing the hub
    /// does not authenticate can end a session, so this is how a client finds a hub that
    /// restarted: a stranger's hint would be a way to disrupt it.
    fn watch_hub(&mut self, now: Instant) {
        let hub = &self.peers[&PeerId::HUB];
        let Some(unanswered) = hub
            .unanswered_since
            .map(|t| now.saturating_duration_since(t))
        else {
            return;
        };
        let handshaking = hub.sessions.handshake.is_some();
        if unanswered >= REJOIN_AFTER && !handshaking {
            tracing::info!(
                unanswered_ms = unanswered.as_millis() as u64,
                "the server does not answer; starting a new handshake beside the session"
            );
            if self.active_transport() == Transport::FakeTcp {
                // A server that restarted knows nothing of our flow.
                self.refresh_faketcp_flow(now);
            }
            self.start_handshake(now, PeerId::HUB);
        }
        if unanswered >= SUSPECT_AFTER {
            let c = self.client();
            if c.next_ping.is_none_or(|p| p > now + FAST_PING) {
                c.next_ping = Some(now);
            }
        }
    }

    /// `auto`: leaves UDP when it goes silent, probes it while on FakeTCP, returns to it
    /// once probes have been answered for a stable period.
    fn auto_transport(&mut self, now: Instant) {
        if self.client().mode != TransportMode::Auto {
            return;
        }
        let hub = &self.peers[&PeerId::HUB];
        let unanswered = hub
            .unanswered_since
            .map(|t| now.saturating_duration_since(t));
        let active = self.active_transport();
        if active == Transport::Udp {
            if unanswered.is_some_and(|u| u >= FAILOVER_AFTER) {
                self.switch_transport(now, Transport::FakeTcp, "nothing heard over UDP for 2 s");
            }
            return;
        }
        let c = self.client();
        if let Some((_, sent)) = c.probe_out
            && now.saturating_duration_since(sent) >= PROBE_TIMEOUT
        {
            c.probe_out = None;
            c.probes_answered = 0;
        }
        if c.next_probe.is_none_or(|p| p <= now) {
            c.probe_seq = c.probe_seq.wrapping_add(1);
            let seq = c.probe_seq;
            c.probe_out = Some((seq, now));
            c.next_probe = Some(now + PROBE_INTERVAL);
            let to = Path::Direct(Some(Remote::udp(c.server)));
            self.send_frame_on(now, PeerId::HUB, to, &Frame::Probe { seq, pad: 0 }, None);
        }
    }

    /// A probe of the hub's own address came back (`auto` over UDP, or a detour's).
    pub(super) fn on_probe_ack(&mut self, now: Instant, seq: u32) -> Result<(), DropReason> {
        if self.on_detour_probe_ack(now, seq) {
            return Ok(());
        }
        let RoleState::Client(c) = &mut self.role else {
            return Err(DropReason::BadFrame);
        };
        if c.probe_out.is_none_or(|(s, _)| s != seq) {
            return Err(DropReason::BadFrame);
        }
        c.probe_out = None;
        c.probes_answered += 1;
        if c.probes_answered >= PROBES_TO_RETURN {
            self.switch_transport(now, Transport::Udp, "UDP answered 3 probes in a row (15 s)");
        }
        Ok(())
    }

    /// Client: the FakeTCP flow to the hub has just come up. A handshake sent over FakeTCP
    /// before that found no flow to carry it, so it goes again now rather than at its next
    /// retry, a second or more later.
    pub(super) fn faketcp_ready(&mut self) {
        if let RoleState::Client(c) = &mut self.role {
            c.faketcp_up = true;
        }
        if self.active_transport() != Transport::FakeTcp {
            return;
        }
        let Some(hub) = self.peers.get(&PeerId::HUB) else {
            return;
        };
        if let (Some(h), Path::Direct(Some(to))) = (&hub.sessions.handshake, hub.path) {
            self.outbox
                .push_back(super::OwnedTransmit::new(to, h.message.clone()));
        }
    }

    /// The transport the client currently uses towards the hub.
    pub(super) fn active_transport(&self) -> Transport {
        match self.peers.get(&PeerId::HUB).map(|h| h.path) {
            Some(Path::Direct(Some(r))) => r.transport,
            _ => Transport::Udp,
        }
    }

    /// Moves the hub path to another transport; the session and its counters stay.
    pub(super) fn switch_transport(&mut self, now: Instant, to: Transport, why: &'static str) {
        let from = self.active_transport();
        let c = self.client();
        let server = c.server;
        c.switched = Some((now, to, why));
        c.attempts_here = 0;
        c.probe_out = None;
        c.probes_answered = 0;
        c.next_probe = None;
        let joined = self
            .peers
            .get(&PeerId::HUB)
            .is_some_and(|h| h.sessions.current.is_some());
        if let Some(hub) = self.peers.get_mut(&PeerId::HUB) {
            hub.path = Path::Direct(Some(Remote::new(to, server)));
            hub.unanswered_since = None;
        }
        tracing::info!(
            from = from.as_str(),
            to = to.as_str(),
            "switched transport: {why}"
        );
        self.events
            .push_back(Event::TransportChanged { transport: to });
        if to == Transport::FakeTcp {
            // A standby flow may have died quietly (the server restarted).
            self.refresh_faketcp_flow(now);
        }
        if joined {
            // Tells the hub where we are now, and measures the new path.
            self.send_ping(now);
        }
        self.deadline_dirty = true;
    }

    /// `auto`: after failed join attempts on one transport, tries the other. (A handshake
    /// beside a live session leaves the transport to [`Endpoint::auto_transport`].)
    pub(super) fn next_join_transport(&mut self, now: Instant) {
        let joined = self
            .peers
            .get(&PeerId::HUB)
            .is_some_and(|h| h.sessions.current.is_some());
        let c = self.client();
        if joined {
            return;
        }
        c.attempts_here += 1;
        // Before the first join, with the server's TCP port known to answer (the standby
        // FakeTCP flow is up) and UDP silent, FakeTCP is tried after one unanswered
        // handshake: a cold start behind a UDP-blocking firewall joins within about 2 s.
        let patience = if c.node.is_none() && c.faketcp_up {
            0
        } else {
            ATTEMPTS_PER_TRANSPORT
        };
        if c.mode != TransportMode::Auto || c.attempts_here <= patience {
            return;
        }
        match self.active_transport() {
            Transport::Udp => {
                self.switch_transport(now, Transport::FakeTcp, "no handshake answer over UDP")
            }
            Transport::FakeTcp => {
                self.switch_transport(now, Transport::Udp, "no handshake answer over FakeTCP")
            }
        }
    }

    /// The hub answered a join (with a refusal): the transport works, whatever it said.
    pub(super) fn join_answered(&mut self, now: Instant) {
        let c = self.client();
        c.attempts_here = 0;
        c.refused_at = Some(now);
    }

    /// The last transport switch, for status.
    pub(super) fn describe_switch(&self, now: Instant) -> Option<String> {
        let RoleState::Client(c) = &self.role else {
            return None;
        };
        c.switched.map(|(at, to, why)| {
            format!(
                "to {} {:.0}s ago: {why}",
                to.as_str(),
                now.saturating_duration_since(at).as_secs_f64()
            )
        })
    }
}
