//! The hub: admission of clients, the directory, relaying between clients, expiry.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use culvert_wire::addr::Prefix;
use culvert_wire::hello::{FLAG_EXIT, FLAG_ISOLATION, Hello, RefusalCode, Reply, Welcome};

use super::directory::Published;
use super::handshake::Request;
use super::{Endpoint, RoleState};
use crate::budget::SourceBudget;
use crate::config::{HubConfig, Timing};
use crate::cookie::CookieJar;
use crate::keys::PublicKey;
use crate::limit::RateWindow;
use crate::noise::Responder;
use crate::peer::{Path, Peer, PeerId, Source};
use crate::pending::{Claim, Pending, SourceClass, Standing};
use crate::rng::Rng;
use crate::session::Session;
use crate::stats::DropReason;

/// Handshake answers (each costs Diffie-Hellman) per second to one source address.
const HANDSHAKES_PER_SOURCE: u32 = 30;

/// Why a join is refused: the code and the text both sides log.
pub(super) type Refusal = (RefusalCode, String);

/// Hub-only state.
#[derive(Debug)]
pub(super) struct Hub {
    pub(super) cfg: HubConfig,
    pub(super) cookies: CookieJar,
    /// Handshake answers per source address (on top of the cookies' global limit).
    pub(super) handshake_budget: SourceBudget,
    /// The directory as the clients know it.
    pub(super) published: Published,
    next_node: u32,
    pub(super) refusal_log: RateWindow,
    /// Clients' LAN candidates, as they reported them.
    pub(super) locals: BTreeMap<PeerId, Vec<core::net::SocketAddr>>,
    /// When each client last asked for a punch (rate limit).
    pub(super) punch_asked: BTreeMap<PeerId, Instant>,
    /// The clients each client reaches directly and relays for, by its last report.
    pub(super) neighbours: BTreeMap<PeerId, NeighbourReport>,
}

/// A client's last report of its neighbours, and what the other clients were told.
#[derive(Debug)]
pub(super) struct NeighbourReport {
    pub(super) list: Vec<u32>,
    /// When the report was taken (reports are taken at most every half second).
    pub(super) taken: Instant,
    /// When the others were last told of it; a change since waits until
    /// [`super::neighbours::FANOUT_GAP`] has passed, so that a client alternating its
    /// report cannot make the hub write to everyone at its rate.
    pub(super) told: Option<Instant>,
    /// A change the others have not heard of yet.
    pub(super) untold: bool,
}

impl Hub {
    pub(super) fn new(cfg: HubConfig, rng: &mut Rng, now: Instant) -> Self {
        let cookies = CookieJar::new(rng, now, cfg.handshake_load_limit);
        let handshake_budget =
            SourceBudget::new(rng, HANDSHAKES_PER_SOURCE, Duration::from_secs(1), 32, 64);
        Self {
            cfg,
            cookies,
            handshake_budget,
            published: Published::default(),
            next_node: 1,
            refusal_log: RateWindow::new(10, Duration::from_secs(10)),
            locals: BTreeMap::new(),
            punch_asked: BTreeMap::new(),
            neighbours: BTreeMap::new(),
        }
    }

    pub(super) fn next_deadline(&self, peers: &BTreeMap<PeerId, Peer>, t: &Timing) -> Instant {
        let expiry = peers
            .values()
            .filter_map(|p| p.last_rx)
            .min()
            .map(|rx| rx + t.node_timeout);
        let rotate = self.cookies.next_rotation();
        let directory = self.published.due();
        let fanout = self
            .neighbours
            .values()
            .filter(|r| r.untold)
            .filter_map(|r| r.told)
            .map(|t| t + super::neighbours::FANOUT_GAP)
            .min();
        [expiry, fanout, directory]
            .into_iter()
            .flatten()
            .fold(rotate, Instant::min)
    }

    fn binding(&self, key: &PublicKey) -> Option<&[Prefix]> {
        self.cfg
            .clients
            .iter()
            .find(|b| b.key == *key)
            .map(|b| &b.addresses[..])
    }

    /// Whether `key` may offer `route`: inside `allow_routes` or its binding's routes.
    pub(super) fn may_route(&self, key: &PublicKey, route: &Prefix) -> bool {
        let bound = self.cfg.clients.iter().filter(|b| b.key == *key);
        self.cfg
            .allow_routes
            .iter()
            .chain(bound.flat_map(|b| b.routes.iter()))
            .any(|a| a.covers(route))
    }
}

impl Endpoint {
    fn hub(&mut self) -> &mut Hub {
        match &mut self.role {
            RoleState::Hub(h) => h,
            RoleState::Client(_) => unreachable!("hub-only path reached on a client"),
        }
    }

    /// Answers a message 1 of kind join that authenticated under the PSK. The static key it
    /// claims is not proven yet, so nothing changes here but the pending table: the
    /// Welcome's promises (node id, addresses) take effect when the first data message
    /// opens ([`Endpoint::admit_confirmed`]).
    ///
    /// Through a relay (a client that lost its own path to the hub and reaches it through
    /// another client), only a node's rekey is accepted: the node must exist with this key.
    pub(super) fn accept_join(
        &mut self,
        now: Instant,
        src: Source,
        request: Request,
        responder: Responder,
        hello: Hello,
    ) -> Result<(), DropReason> {
        let key = responder.remote_static();
        if key == self.public {
            return Err(DropReason::UnknownKey);
        }
        let existing = self.peer_by_key(&key);
        if let Source::Relay { node, .. } = src
            && existing != Some(node)
        {
            return Err(DropReason::UnexpectedHandshake);
        }
        let floor = existing.map_or(0, |id| self.peers[&id].confirmed_timestamp);
        if hello.timestamp <= floor || self.pending.has(&key, hello.timestamp) {
            return Err(DropReason::HandshakeReplay);
        }
        let key_mode = !self.cfg.passphrase_mode();
        let verdict = if key_mode && self.hub().binding(&key).is_none() {
            Err((
                RefusalCode::UnknownKey,
                format!("unknown client key {key}: add it to the server's [[peer]] list"),
            ))
        } else {
            match self.choose_cipher(hello.ciphers) {
                None => Err((
                    RefusalCode::NoCommonCipher,
                    "no data cipher in common".to_owned(),
                )),
                Some(cipher) => self.grant(&key, &hello).and_then(|g| {
                    let routes = self.allowed_routes(now, src, &key, &hello.routes);
                    self.check_claims(&key, existing, &g, &routes)
                        .map(|()| (cipher, g, routes))
                }),
            }
        };
        let (cipher, granted, routes) = match verdict {
            Ok(v) => v,
            Err((code, text)) => {
                if let Source::Addr(from) = src {
                    self.log_refusal(now, from.addr, &format!("refused client {key}: {text}"));
                }
                let reply = Reply::Refusal { code, text };
                self.send_reply(now, src, 0, request, responder, &reply)?;
                return Ok(());
            }
        };
        let standing = match (request.verified, existing) {
            (false, _) => Standing::Unverified,
            (true, Some(id)) if on_path(src, self.peers[&id].path) => Standing::OnPath,
            (true, _) => Standing::Verified,
        };
        if !self.pending.has_room(&key, src.into(), standing) {
            return Err(DropReason::HandshakeCrowded);
        }
        let node = existing
            .or_else(|| self.pending.promised_node(&key))
            .unwrap_or_else(|| self.free_node_id());
        let local_index = self.fresh_index();
        let hub = self.hub();
        let welcome = Reply::Welcome(Welcome {
            cipher,
            node: node.0,
            flags: if hub.cfg.isolation { FLAG_ISOLATION } else { 0 }
                | if hub.cfg.exit { FLAG_EXIT } else { 0 },
            keepalive_secs: u16::try_from(self.cfg.timing.keepalive.as_secs()).unwrap_or(u16::MAX),
            responder_addresses: self.cfg.addresses.clone(),
            granted: granted.clone(),
        });
        let split = self.send_reply(now, src, local_index, request, responder, &welcome)?;
        let session = Session::new(
            self.cfg.aead,
            &split,
            cipher,
            local_index,
            request.index,
            false,
            now,
        );
        self.pending.insert(
            local_index,
            Pending {
                session,
                key,
                claim: Claim::Join {
                    node,
                    granted,
                    routes,
                },
                source: src,
                timestamp: hello.timestamp,
                standing,
            },
        );
        self.deadline_dirty = true;
        Ok(())
    }

    /// A join whose initiator proved its key. What may have changed while it waited is
    /// checked again (another client confirmed the same address, the hub filled up); then
    /// the node is created or updated: addresses, routes, directory.
    pub(super) fn admit_confirmed(
        &mut self,
        now: Instant,
        key: &PublicKey,
        node: PeerId,
        granted: &[Prefix],
        routes: &[Prefix],
    ) -> Result<PeerId, DropReason> {
        let existing = self.peer_by_key(key);
        let id = existing.unwrap_or(node);
        let raced = match self.check_claims(key, existing, granted, routes) {
            Err((_, text)) => Some(text),
            Ok(()) if existing.is_none() && self.peers.contains_key(&id) => {
                Some(format!("node id {} was taken", id.0))
            }
            Ok(()) => None,
        };
        if let Some(text) = raced {
            tracing::warn!(%key, "refused a confirmed join: {text} while it was pending");
            return Err(DropReason::AdmissionRaced);
        }
        let peer = self
            .peers
            .entry(id)
            .or_insert_with(|| Peer::new(id, *key, Vec::new(), Path::Direct(None)));
        let changed = peer.addresses != granted || peer.routes != routes;
        peer.addresses = granted.to_vec();
        peer.routes = routes.to_vec();
        if changed {
            self.install_routes(id);
            if existing.is_some() {
                self.hub().published.touch(now);
                self.deadline_dirty = true;
            }
        }
        let hub = self.hub();
        hub.next_node = hub.next_node.max(id.0.saturating_add(1));
        Ok(id)
    }

    /// The node that holds `key`.
    fn peer_by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.peers.values().find(|p| p.key == *key).map(|p| p.id)
    }

    /// The lowest node id from the counter on that no node holds and no pending join was
    /// promised: ids stay small and sequential, and forged joins burn none.
    fn free_node_id(&mut self) -> PeerId {
        let mut id = self.hub().next_node.max(1);
        while self.peers.contains_key(&PeerId(id)) || self.pending.reserves(PeerId(id)) {
            id = id.checked_add(1).unwrap_or(1);
        }
        PeerId(id)
    }

    /// The addresses a joining client gets: what it claims (within its key's binding, if
    /// it has one), or its binding when it claims none.
    fn grant(&mut self, key: &PublicKey, hello: &Hello) -> Result<Vec<Prefix>, Refusal> {
        let binding = self.hub().binding(key).map(<[Prefix]>::to_vec);
        match (binding, hello.addresses.is_empty()) {
            (Some(bound), true) => Ok(bound),
            (Some(bound), false) => {
                if let Some(a) = hello
                    .addresses
                    .iter()
                    .find(|a| !bound.iter().any(|b| b.addr() == a.addr()))
                {
                    return Err((
                        RefusalCode::AddressNotAllowed,
                        format!(
                            "{} is not allowed for this key (bound: {})",
                            a.addr(),
                            list(&bound)
                        ),
                    ));
                }
                Ok(hello.addresses.clone())
            }
            (None, true) => Err((
                RefusalCode::NoAddress,
                "no overlay address claimed: start the client with -t ADDRESS/PREFIX".to_owned(),
            )),
            (None, false) => {
                // Unbound claims (passphrase mode) must lie in the hub's own network(s).
                let own: Vec<Prefix> = self.cfg.addresses.iter().map(Prefix::network).collect();
                match hello
                    .addresses
                    .iter()
                    .find(|a| !own.iter().any(|n| n.covers(a)))
                {
                    Some(a) => Err((
                        RefusalCode::OutsideNetwork,
                        format!(
                            "{a} is outside the server's overlay network ({})",
                            list(&own)
                        ),
                    )),
                    None => Ok(hello.addresses.clone()),
                }
            }
        }
    }

    /// Whether `key` may hold `granted` and `routes` now: no address is the hub's, held by
    /// another node or bound to another key, no route conflicts, and a new node fits under
    /// `max_clients`.
    fn check_claims(
        &mut self,
        key: &PublicKey,
        existing: Option<PeerId>,
        granted: &[Prefix],
        routes: &[Prefix],
    ) -> Result<(), Refusal> {
        self.route_conflict(existing, routes)?;
        let max_clients = self.hub().cfg.max_clients;
        for a in granted {
            if self.cfg.addresses.iter().any(|own| own.addr() == a.addr()) {
                return Err((
                    RefusalCode::AddressInUse,
                    format!("{} is the server's own address", a.addr()),
                ));
            }
            let held = self.peers.values().any(|p| {
                Some(p.id) != existing && p.addresses.iter().any(|h| h.addr() == a.addr())
            });
            if held {
                return Err((
                    RefusalCode::AddressInUse,
                    format!("{} is held by another client", a.addr()),
                ));
            }
            let reserved = self
                .hub()
                .cfg
                .clients
                .iter()
                .any(|b| b.key != *key && b.addresses.iter().any(|x| x.addr() == a.addr()));
            if reserved {
                return Err((
                    RefusalCode::AddressInUse,
                    format!("{} is reserved for another key ([[peer]])", a.addr()),
                ));
            }
        }
        if existing.is_none() && self.peers.len() >= max_clients {
            return Err((
                RefusalCode::ServerFull,
                format!("the server is full: max_clients = {max_clients} clients are connected"),
            ));
        }
        Ok(())
    }

    /// A client's session was confirmed by its first data message.
    pub(super) fn on_confirmed(&mut self, now: Instant, id: PeerId, first: bool) {
        if !matches!(self.role, RoleState::Hub(_)) {
            tracing::debug!(peer = id.0, "peer session confirmed");
            return;
        }
        // The client learns the endpoint we see it at (its reflexive address).
        self.send_observed(now, id);
        let RoleState::Hub(hub) = &mut self.role else {
            return;
        };
        if first {
            hub.published.welcome(now, id);
            self.deadline_dirty = true;
            self.send_all_neighbours(now, id);
            let p = &self.peers[&id];
            tracing::info!(
                node = id.0,
                key = %p.key,
                addresses = %list(&p.addresses),
                endpoint = %p.path,
                "client connected"
            );
        }
    }

    /// A peer was removed (expiry, goodbye, replacement).
    pub(super) fn on_peer_removed(&mut self, now: Instant, id: PeerId) {
        if let RoleState::Hub(hub) = &mut self.role {
            hub.locals.remove(&id);
            hub.punch_asked.remove(&id);
            hub.neighbours.remove(&id);
            hub.published.touch(now);
            self.deadline_dirty = true;
            tracing::info!(node = id.0, "client disconnected");
        }
    }

    pub(super) fn hub_timers(&mut self, now: Instant) {
        let t = self.cfg.timing.clone();
        let RoleState::Hub(hub) = &mut self.role else {
            return;
        };
        hub.cookies.rotate(&mut self.rng, now);
        self.tell_neighbours(now);
        let expired: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| match p.last_rx {
                Some(rx) => now.saturating_duration_since(rx) >= t.node_timeout,
                None => p.sessions.current.is_none(),
            })
            .map(|p| p.id)
            .collect();
        for id in expired {
            tracing::info!(node = id.0, "client timed out");
            self.remove_peer(now, id);
        }
        self.push_directory(now);
        // A client that expired above asked for this very push: nothing urgent is left,
        // and a deadline left at `now` would be due forever.
        self.urgent = None;
    }
}

/// Whether a handshake from `src` comes the way the node's current session does: from
/// its address (any port: a NAT may rebind), or through its relay.
fn on_path(src: Source, path: Path) -> bool {
    match path {
        Path::Direct(Some(r)) => {
            SourceClass::from(src) == SourceClass::Addr(r.addr.ip().to_canonical())
        }
        Path::Relay(via) => SourceClass::from(src) == SourceClass::Via(via),
        Path::Direct(None) => false,
    }
}

pub(super) fn list(prefixes: &[Prefix]) -> String {
    prefixes
        .iter()
        .map(Prefix::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
