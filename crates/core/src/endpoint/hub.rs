//! The hub: admission of clients, the directory, relaying between clients, expiry.

use core::ops::Range;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use culvert_wire::addr::Prefix;
use culvert_wire::frame::{DIRECTORY_HEADER_LEN, DirEntry, Directory, Frame};
use culvert_wire::hello::{FLAG_ISOLATION, Hello, RefusalCode, Reply, Welcome};
use culvert_wire::message::{DATA_HEADER_LEN, NoticeCode};

use super::handshake::Request;
use super::{DatagramOutcome, Endpoint, MAX_FRAME, RoleState, Transmit};
use crate::config::{HubConfig, Timing};
use crate::cookie::CookieJar;
use crate::keys::PublicKey;
use crate::limit::RateWindow;
use crate::noise::Responder;
use crate::peer::{Path, Peer, PeerId, Remote, Source, Unconfirmed};
use crate::rng::Rng;
use crate::session::Session;
use crate::stats::DropReason;

/// Hub-only state.
#[derive(Debug)]
pub(super) struct Hub {
    pub(super) cfg: HubConfig,
    pub(super) cookies: CookieJar,
    pub(super) dir_version: u64,
    dir_dirty: bool,
    next_node: u32,
    pub(super) refusal_log: RateWindow,
}

impl Hub {
    pub(super) fn new(cfg: HubConfig, rng: &mut Rng, now: Instant) -> Self {
        let cookies = CookieJar::new(rng, now, cfg.handshake_load_limit);
        Self {
            cfg,
            cookies,
            dir_version: 1,
            dir_dirty: false,
            next_node: 1,
            refusal_log: RateWindow::new(10, Duration::from_secs(10)),
        }
    }

    pub(super) fn next_deadline(&self, peers: &BTreeMap<PeerId, Peer>, t: &Timing) -> Instant {
        let expiry = peers
            .values()
            .filter_map(|p| p.last_rx)
            .min()
            .map(|rx| rx + t.node_timeout);
        let rotate = self.cookies.next_rotation();
        expiry.map_or(rotate, |e| e.min(rotate))
    }

    fn binding(&self, key: &PublicKey) -> Option<&[Prefix]> {
        self.cfg
            .clients
            .iter()
            .find(|b| b.key == *key)
            .map(|b| &b.addresses[..])
    }
}

impl Endpoint {
    fn hub(&mut self) -> &mut Hub {
        match &mut self.role {
            RoleState::Hub(h) => h,
            RoleState::Client(_) => unreachable!("hub-only path reached on a client"),
        }
    }

    /// Admits (or refuses) a client whose message 1 authenticated.
    pub(super) fn accept_join(
        &mut self,
        now: Instant,
        from: Remote,
        request: Request,
        responder: Responder,
        hello: Hello,
    ) -> Result<(), DropReason> {
        let init_index = request.index;
        let key = responder.remote_static();
        if key == self.public {
            return Err(DropReason::UnknownKey);
        }
        let key_mode = !self.cfg.passphrase_mode();
        if key_mode && self.hub().binding(&key).is_none() {
            self.log_refusal(
                now,
                from.addr,
                &format!("handshake from unknown client key {key}: add it to [[peer]]"),
            );
            self.notice(now, from, NoticeCode::UnknownKey, init_index);
            return Err(DropReason::UnknownKey);
        }
        let existing = self.peers.values().find(|p| p.key == key).map(|p| p.id);
        if let Some(id) = existing
            && hello.timestamp <= self.peers[&id].confirmed_timestamp
        {
            return Err(DropReason::HandshakeReplay);
        }
        let verdict = match self.choose_cipher(hello.ciphers) {
            None => Err((
                RefusalCode::NoCommonCipher,
                "no data cipher in common".to_owned(),
            )),
            Some(cipher) => self
                .admit(&key, existing, &hello)
                .map(|granted| (cipher, granted)),
        };
        let (cipher, granted) = match verdict {
            Ok(v) => v,
            Err((code, text)) => {
                self.log_refusal(now, from.addr, &format!("refused client {key}: {text}"));
                let reply = Reply::Refusal { code, text };
                self.send_reply(now, Source::Addr(from), 0, request, responder, &reply)?;
                return Ok(());
            }
        };
        let id = existing.unwrap_or_else(|| {
            let hub = self.hub();
            let id = PeerId(hub.next_node);
            hub.next_node += 1;
            id
        });
        let local_index = self.new_index(id);
        let hub = self.hub();
        let welcome = Reply::Welcome(Welcome {
            cipher,
            node: id.0,
            flags: if hub.cfg.isolation { FLAG_ISOLATION } else { 0 },
            keepalive_secs: u16::try_from(self.cfg.timing.keepalive.as_secs()).unwrap_or(u16::MAX),
            responder_addresses: self.cfg.addresses.clone(),
            granted: granted.clone(),
        });
        let split = match self.send_reply(
            now,
            Source::Addr(from),
            local_index,
            request,
            responder,
            &welcome,
        ) {
            Ok(s) => s,
            Err(r) => {
                self.release_index(local_index);
                return Err(r);
            }
        };
        let session = Session::new(
            self.cfg.aead,
            &split,
            cipher,
            local_index,
            init_index,
            false,
            now,
        );
        let peer = self
            .peers
            .entry(id)
            .or_insert_with(|| Peer::new(id, key, Vec::new(), Path::Direct(None)));
        let replaced = peer.next.replace(Unconfirmed {
            session,
            source: Source::Addr(from),
            timestamp: hello.timestamp,
        });
        let changed = peer.addresses != granted;
        peer.addresses = granted.clone();
        if let Some(old) = replaced {
            self.release_index(old.session.local_index);
        }
        if changed {
            self.routes.remove_value(id);
            for a in &granted {
                self.routes.insert(Prefix::host(a.addr()), id);
            }
            if existing.is_some() {
                self.hub().dir_dirty = true;
                self.schedule_now(now);
            }
        }
        self.deadline_dirty = true;
        Ok(())
    }

    /// Decides which addresses a joining client gets, or why it may not join.
    fn admit(
        &mut self,
        key: &PublicKey,
        existing: Option<PeerId>,
        hello: &Hello,
    ) -> Result<Vec<Prefix>, (RefusalCode, String)> {
        let hub = self.hub();
        let binding = hub.binding(key).map(<[Prefix]>::to_vec);
        let max_clients = hub.cfg.max_clients;
        let granted = match (binding, hello.addresses.is_empty()) {
            (Some(bound), true) => bound,
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
                hello.addresses.clone()
            }
            (None, true) => {
                return Err((
                    RefusalCode::NoAddress,
                    "no overlay address claimed: start the client with -t ADDRESS/PREFIX"
                        .to_owned(),
                ));
            }
            (None, false) => hello.addresses.clone(),
        };
        for a in &granted {
            if self.cfg.addresses.iter().any(|own| own.addr() == a.addr()) {
                return Err((
                    RefusalCode::AddressInUse,
                    format!("{} is the server's own address", a.addr()),
                ));
            }
            let holder = self.peers.values().find(|p| {
                Some(p.id) != existing && p.addresses.iter().any(|h| h.addr() == a.addr())
            });
            if holder.is_some() {
                return Err((
                    RefusalCode::AddressInUse,
                    format!("{} is held by another client", a.addr()),
                ));
            }
        }
        if existing.is_none() && self.peers.len() >= max_clients {
            return Err((
                RefusalCode::ServerFull,
                format!("the server is full: max_clients = {max_clients} clients are connected"),
            ));
        }
        Ok(granted)
    }

    /// Passes a client's relay frame on to its destination, re-sealed in place.
    pub(super) fn relay(
        &mut self,
        now: Instant,
        origin: PeerId,
        target: PeerId,
        buf: &mut [u8],
        message: Range<usize>,
        plain: Range<usize>,
    ) -> DatagramOutcome {
        if self.hub().cfg.isolation {
            return DatagramOutcome::Dropped(self.count_drop(DropReason::Isolation, Some(origin)));
        }
        if target == origin || !self.ready(now, target) {
            return DatagramOutcome::Dropped(
                self.count_drop(DropReason::RelayNoPeer, Some(origin)),
            );
        }
        buf[plain.start + 1..plain.start + 5].copy_from_slice(&origin.0.to_be_bytes());
        let peer = self
            .peers
            .get_mut(&target)
            .expect("ready() checked the peer");
        let session = peer.current.as_mut().expect("ready() checked the session");
        let sealed = session.seal(buf, plain.start - DATA_HEADER_LEN, plain.len());
        debug_assert!(sealed.as_ref().map_or(true, |r| *r == message));
        match (sealed, peer.path) {
            (Ok(range), Path::Direct(Some(to))) => {
                peer.last_tx = Some(now);
                self.fec_sealed(now, target, to, &buf[range.clone()]);
                DatagramOutcome::Send(Transmit { to, range })
            }
            (Err(r), _) => DatagramOutcome::Dropped(self.count_drop(r, Some(target))),
            (Ok(_), _) => {
                DatagramOutcome::Dropped(self.count_drop(DropReason::RelayNoPeer, Some(target)))
            }
        }
    }

    /// A client's session was confirmed by its first data message.
    pub(super) fn on_confirmed(&mut self, now: Instant, id: PeerId, first: bool) {
        let RoleState::Hub(hub) = &mut self.role else {
            tracing::debug!(peer = id.0, "peer session confirmed");
            return;
        };
        if first {
            hub.dir_dirty = true;
            self.schedule_now(now);
            let p = &self.peers[&id];
            tracing::info!(
                node = id.0,
                key = %p.key,
                addresses = %list(&p.addresses),
                endpoint = ?p.path,
                "client connected"
            );
        }
    }

    /// A peer was removed (expiry, goodbye, replacement).
    pub(super) fn on_peer_removed(&mut self, now: Instant, id: PeerId) {
        if let RoleState::Hub(hub) = &mut self.role {
            hub.dir_dirty = true;
            self.schedule_now(now);
            tracing::info!(node = id.0, "client disconnected");
        }
    }

    pub(super) fn on_ping(
        &mut self,
        now: Instant,
        id: PeerId,
        held: u64,
    ) -> Result<(), DropReason> {
        if let RoleState::Hub(hub) = &self.role
            && held != hub.dir_version
            && !hub.cfg.isolation
        {
            self.send_directory(now, id);
        }
        Ok(())
    }

    pub(super) fn on_dir_request(&mut self, now: Instant, id: PeerId) -> Result<(), DropReason> {
        match &self.role {
            RoleState::Hub(hub) if !hub.cfg.isolation => {
                self.send_directory(now, id);
                Ok(())
            }
            _ => Err(DropReason::BadFrame),
        }
    }

    /// Sends the current directory snapshot to one client, in as many parts as needed.
    fn send_directory(&mut self, now: Instant, to: PeerId) {
        let version = self.hub().dir_version;
        let entries: Vec<DirEntry> = self
            .peers
            .values()
            .filter(|p| p.current.is_some())
            .map(|p| DirEntry {
                node: p.id.0,
                public_key: p.key.0,
                addresses: p.addresses.clone(),
            })
            .collect();
        let mut parts: Vec<Vec<DirEntry>> = vec![Vec::new()];
        let mut size = DIRECTORY_HEADER_LEN;
        for e in entries {
            let last = parts.last_mut().expect("never empty");
            if size + e.buffer_len() > MAX_FRAME || last.len() == usize::from(u8::MAX) {
                parts.push(Vec::new());
                size = DIRECTORY_HEADER_LEN;
            }
            size += e.buffer_len();
            parts.last_mut().expect("never empty").push(e);
        }
        let count = u16::try_from(parts.len()).unwrap_or(u16::MAX);
        for (i, entries) in parts.into_iter().enumerate().take(usize::from(count)) {
            let part = u16::try_from(i).unwrap_or(u16::MAX);
            let frame = Frame::Directory(Directory {
                version,
                part,
                parts: count,
                entries,
            });
            self.send_frame(now, to, &frame);
        }
    }

    pub(super) fn hub_timers(&mut self, now: Instant) {
        let t = self.cfg.timing.clone();
        let RoleState::Hub(hub) = &mut self.role else {
            return;
        };
        hub.cookies.rotate(&mut self.rng, now);
        let expired: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| match p.last_rx {
                Some(rx) => now.saturating_duration_since(rx) >= t.node_timeout,
                None => p.current.is_none() && p.next.is_none(),
            })
            .map(|p| p.id)
            .collect();
        for id in expired {
            tracing::info!(node = id.0, "client timed out");
            self.remove_peer(now, id);
        }
        let hub = self.hub();
        if hub.dir_dirty {
            hub.dir_dirty = false;
            hub.dir_version += 1;
            if !hub.cfg.isolation {
                let ids: Vec<PeerId> = self
                    .peers
                    .values()
                    .filter(|p| p.current.is_some())
                    .map(|p| p.id)
                    .collect();
                for id in ids {
                    self.send_directory(now, id);
                }
            }
        }
    }
}

fn list(prefixes: &[Prefix]) -> String {
    prefixes
        .iter()
        .map(Prefix::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
