//! Handshake messages: starting and retrying our own, answering others', cookies.
//!
//! A responder answers only a message 1 that authenticates under the PSK, and what it
//! answers changes no shared state: the handshake waits in the pending table until a data
//! message proves the initiator's static key ([`crate::pending`]).

use std::time::{Duration, Instant};

use culvert_wire::hello::{Cipher, Hello, HelloKind, Reply};
use culvert_wire::message::{
    COOKIE_REPLY_LEN, CookieReply, HandshakeInit, HandshakeResponse, handshake_init_len,
    handshake_response_len,
};

use super::{Endpoint, RoleState};
use crate::cookie::open_reply;
use crate::noise::{Initiator, MAX_PAYLOAD, MSG1_OVERHEAD, MSG2_OVERHEAD, Responder, Split};
use crate::peer::{Path, PeerId, PendingHandshake, Remote, Source, Transport};
use crate::session::Session;
use crate::stats::DropReason;

/// Handshake attempts towards a client peer before giving up until new traffic.
const PEER_ATTEMPTS: u32 = 5;
/// Message 1 is padded to this length: more than the largest message 2 (two full address
/// lists), so that no reply is ever larger than its request.
pub(super) const INIT_PADDED_LEN: usize = 720;

/// What a responder needs to know of the message 1 it answers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Request {
    /// The initiator's index, echoed in message 2.
    pub(super) index: u32,
    /// The length of message 1; message 2 may not be longer.
    pub(super) len: usize,
    /// Its source cannot be forged: an address that returned our cookie, or an
    /// authenticated neighbour that relayed it ([`crate::pending::Standing`]).
    pub(super) verified: bool,
}
/// Cipher bit meaning "the sender prefers ChaCha20 (no AES instructions)".
const PREFER_CHACHA: u8 = 0x80;

impl Endpoint {
    /// Sends a fresh message 1 to `id` and arms the retry timer.
    pub(super) fn start_handshake(&mut self, now: Instant, id: PeerId) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let responder = peer.key;
        if self.cfg.passphrase.is_none() && responder.0 == [0; 32] {
            tracing::error!(
                peer = id.0,
                "cannot start a handshake: the peer's public key is unknown"
            );
            return;
        }
        // Handshakes between clients always travel through the hub, whatever the data
        // path: the responder checks the origin the relay frame claims against the key the
        // hub's directory gives it. A client that reaches the hub through another client
        // rejoins that way too.
        let to = match peer.path {
            _ if id != PeerId::HUB => Source::Relay {
                node: id,
                via: PeerId::HUB,
            },
            Path::Direct(Some(a)) => Source::Addr(a),
            Path::Relay(via) => Source::Relay { node: id, via },
            Path::Direct(None) => return,
        };
        let cookie = peer.cookie.filter(|c| c.fresh(now));
        let kind = if id == PeerId::HUB {
            HelloKind::Join
        } else {
            HelloKind::Peer
        };
        let mut hello = Hello {
            kind,
            ciphers: self.cipher_bits(),
            timestamp: self.clock.timestamp(now),
            addresses: if kind == HelloKind::Join {
                self.cfg.addresses.clone()
            } else {
                Vec::new()
            },
            routes: if kind == HelloKind::Join {
                self.cfg.routes.clone()
            } else {
                Vec::new()
            },
            padding: 0,
        };
        let unpadded = handshake_init_len(hello.unpadded_len() + MSG1_OVERHEAD);
        hello.padding = u16::try_from(INIT_PADDED_LEN.saturating_sub(unpadded)).unwrap_or(0);
        let mut payload = Vec::new();
        hello.emit(&mut payload);
        let psk = self.cfg.psk_for(&responder);
        let noise_len = payload.len() + MSG1_OVERHEAD;
        let mut msg = vec![0u8; handshake_init_len(noise_len)];
        let started = {
            let mut view = HandshakeInit::new_unchecked(&mut msg[..]);
            Initiator::start(
                &mut self.rng,
                &self.cfg.secret,
                &psk,
                &payload,
                view.noise_mut(),
            )
        };
        let Ok((initiator, _)) = started else {
            tracing::error!(peer = id.0, "noise refused to start a handshake");
            return;
        };
        self.drop_pending(id);
        let local_index = self.new_index(id);
        HandshakeInit::new_unchecked(&mut msg[..]).set_header(local_index);
        let mac1 = crate::cookie::mac1(
            &crate::cookie::mac1_key(&psk),
            &HandshakeInit::new_unchecked(&msg[..]),
        );
        let mut view = HandshakeInit::new_unchecked(&mut msg[..]);
        view.set_mac1(&mac1);
        if let Some(c) = cookie {
            let mac = c.mac2(view.mac2_covered());
            view.set_mac2(&mac);
        }
        let backoff = self.backoff(self.peers[&id].attempts);
        let peer = self.peers.get_mut(&id).expect("checked above");
        peer.attempts = peer.attempts.saturating_add(1);
        peer.retry_at = Some(now + backoff);
        peer.sessions.handshake = Some(PendingHandshake {
            initiator,
            local_index,
            psk,
            message: msg.clone(),
            sent: now,
        });
        self.deadline_dirty = true;
        if let Err(r) = self.send_unsealed(now, to, &msg) {
            self.count_drop(r, Some(id));
        }
        if id == PeerId::HUB
            && let Some(direct) = self.detour_direct()
        {
            self.outbox
                .push_back(super::OwnedTransmit::new(direct, msg));
        }
    }

    /// The retry timer of `id` fired: try again, complain, or give up.
    pub(super) fn retry_handshake(&mut self, now: Instant, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let attempts = peer.attempts;
        if id == PeerId::HUB {
            let refused = matches!(&self.role, RoleState::Client(c)
                if c.refused_at.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(60)));
            if let (Some(h), Path::Direct(Some(addr))) = (&peer.sessions.handshake, peer.path)
                && attempts >= 2
                && attempts.is_power_of_two()
                && !refused
            {
                let waited_s = now.saturating_duration_since(h.sent).as_secs();
                let explain = match &mut self.role {
                    RoleState::Client(c) => c.explain_silence(attempts).then(|| c.transports()),
                    RoleState::Hub(_) => None,
                };
                if let Some(transports) = explain {
                    tracing::warn!(
                        server = %addr.addr,
                        attempts,
                        "no answer from the server over {transports}. The likely causes, in \
                         order: (1) the passphrase, or in key mode this client's key or the \
                         server key it was given, does not match the server's: a server answers \
                         nothing to a wrong one, and its log says 'handshake failed \
                         authentication' or 'do not decode under this network's key'; (2) the \
                         server's port is not reachable (UDP not blocked? FakeTCP needs TCP to \
                         the same port; --transport auto falls back to it); (3) a wrong server \
                         address. (A server that answers with another key than the one pinned \
                         is reported as such.)"
                    );
                } else {
                    tracing::warn!(
                        server = %addr.addr,
                        transport = addr.transport.as_str(),
                        attempts,
                        waited_s,
                        "no answer from the server yet"
                    );
                }
            }
            if attempts > 0 && attempts % 3 == 0 {
                self.events.push_back(crate::Event::Rebind);
            } else if attempts == 1
                && matches!(peer.path, Path::Direct(Some(r)) if r.transport == Transport::FakeTcp)
            {
                // The flow may be dead at the server: a restarted server silently ignores
                // segments of a flow it does not know.
                self.refresh_faketcp_flow(now);
            }
            self.next_join_transport(now);
        } else if attempts >= PEER_ATTEMPTS {
            tracing::debug!(
                peer = id.0,
                attempts,
                "giving up on the peer until new traffic"
            );
            let dropped = peer.queue.len();
            peer.queue.clear();
            peer.retry_at = None;
            peer.attempts = 0;
            self.drop_pending(id);
            for _ in 0..dropped {
                self.count_drop(DropReason::NoSession, Some(id));
            }
            return;
        }
        self.start_handshake(now, id);
    }

    /// Handles message 1 from an initiator.
    ///
    /// Order matters, cheapest first: `mac1` (one MAC: a stranger gets silence), then, on
    /// the hub, the load check (a cookie reply instead of any further work) and the
    /// per-source budget, then the Noise read (which derives our static public key: a
    /// scalar multiplication), and only then the answer that costs Diffie-Hellman.
    pub(super) fn handle_init(
        &mut self,
        now: Instant,
        src: Source,
        msg: &[u8],
    ) -> Result<(), DropReason> {
        let init = HandshakeInit::new_checked(msg).map_err(|_| DropReason::Malformed)?;
        if !crate::cookie::check_mac1(&self.mac1_key, &init) {
            if let Source::Addr(from) = src {
                self.log_refusal(
                    now,
                    from.addr,
                    "handshake failed authentication: wrong passphrase or server key? (not answered)",
                );
            }
            return Err(DropReason::HandshakeAuth);
        }
        let psk = self.cfg.psk_for(&self.public);
        let pressure = self.pending.under_pressure();
        let verified = match (&mut self.role, src) {
            (RoleState::Hub(hub), Source::Addr(from)) => {
                let verified = hub.cookies.check_mac2(&init, from.addr);
                let loaded = hub.cookies.note_handshake(now) || pressure;
                if loaded && !verified {
                    self.send_cookie(&init, from);
                    return Err(DropReason::CookieRequired);
                }
                if !hub.handshake_budget.allow(now, from.addr.ip()) {
                    return Err(DropReason::RateLimited);
                }
                verified
            }
            (RoleState::Client(_), Source::Addr(_)) => {
                return Err(DropReason::UnexpectedHandshake);
            }
            (role, Source::Relay { node, via }) => {
                // The relay that passed it is authenticated, and one waiting entry per
                // key and relay keeps a lying relay to its own slot. Each origin and relay
                // gets a budget of answers, as each address does.
                let budget = match role {
                    RoleState::Hub(h) => &mut h.handshake_budget,
                    RoleState::Client(c) => &mut c.handshake_budget,
                };
                if !budget.allow_relayed(now, node.0, via.0) {
                    return Err(DropReason::RateLimited);
                }
                true
            }
        };
        let mut payload = [0u8; MAX_PAYLOAD];
        let read = Responder::read(
            &mut self.rng,
            &self.cfg.secret,
            &psk,
            init.noise(),
            &mut payload,
        );
        let Ok((responder, n)) = read else {
            // A member's message with a valid mac1 that Noise refuses: tampered, or built
            // for another responder key.
            return Err(DropReason::HandshakeAuth);
        };
        let hello = match Hello::parse(&payload[..n]) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "unreadable hello");
                return Err(DropReason::BadFrame);
            }
        };
        // Another handshake for this key waits: a source anyone can spoof proves its
        // address first, so that forged claims cannot crowd out the one that will confirm.
        let claimed = responder.remote_static();
        if self.pending.has(&claimed, hello.timestamp) {
            return Err(DropReason::HandshakeReplay);
        }
        if let Source::Addr(from) = src
            && !verified
            && self.pending.waits_for(&claimed)
        {
            self.send_cookie(&init, from);
            return Err(DropReason::CookieRequired);
        }
        let request = Request {
            index: init.index(),
            len: msg.len(),
            verified,
        };
        match (&self.role, src, hello.kind) {
            (RoleState::Hub(_), _, HelloKind::Join) => {
                self.accept_join(now, src, request, responder, hello)
            }
            (RoleState::Client(_), Source::Relay { .. }, HelloKind::Peer) => {
                self.accept_peer(now, src, request, responder, hello)
            }
            _ => Err(DropReason::UnexpectedHandshake),
        }
    }

    /// Answers message 1 with a cookie reply: the initiator retries with proof that it
    /// receives at `to`. Smaller than message 1 and one MAC's work; hub only (a client
    /// answers no message 1 from an address).
    fn send_cookie(&mut self, init: &HandshakeInit<&[u8]>, to: Remote) {
        let psk = self.cfg.psk_for(&self.public);
        let RoleState::Hub(hub) = &mut self.role else {
            return;
        };
        let mut out = [0u8; COOKIE_REPLY_LEN];
        hub.cookies
            .reply(&mut self.rng, &psk, init, to.addr, &mut out);
        self.outbox
            .push_back(super::OwnedTransmit::new(to, out.to_vec()));
    }

    /// Writes message 2 carrying `reply` and sends it; returns the handshake's keys.
    /// Refuses (`ShortHandshake`) when message 2 would be longer than message 1.
    pub(super) fn send_reply(
        &mut self,
        now: Instant,
        to: Source,
        local_index: u32,
        request: Request,
        responder: Responder,
        reply: &Reply,
    ) -> Result<Split, DropReason> {
        let mut payload = Vec::new();
        reply.emit(&mut payload);
        let noise_len = payload.len() + MSG2_OVERHEAD;
        if handshake_response_len(noise_len) > request.len {
            return Err(DropReason::ShortHandshake);
        }
        let mut msg = vec![0u8; handshake_response_len(noise_len)];
        let mut view = HandshakeResponse::new_unchecked(&mut msg[..]);
        let (split, _) = responder
            .reply(&payload, view.noise_mut())
            .map_err(|_| DropReason::HandshakeAuth)?;
        view.set_header(local_index);
        view.set_receiver_index(request.index);
        self.send_unsealed(now, to, &msg)?;
        Ok(split)
    }

    /// Handles message 2 of a handshake we started.
    pub(super) fn handle_response(
        &mut self,
        now: Instant,
        src: Source,
        msg: &[u8],
    ) -> Result<(), DropReason> {
        let resp = HandshakeResponse::new_checked(msg).map_err(|_| DropReason::Malformed)?;
        let local = resp.receiver_index();
        let id = self
            .by_index
            .get(&local)
            .copied()
            .ok_or(DropReason::UnexpectedHandshake)?;
        if matches!(src, Source::Relay { node, .. } if node != id) {
            return Err(DropReason::UnexpectedHandshake);
        }
        let peer = self
            .peers
            .get_mut(&id)
            .expect("indices point at live peers");
        let pending = match peer.sessions.handshake.take() {
            Some(h) if h.local_index == local => h,
            other => {
                peer.sessions.handshake = other;
                return Err(DropReason::UnexpectedHandshake);
            }
        };
        let mut payload = [0u8; MAX_PAYLOAD];
        let finished = pending.initiator.finish(resp.noise(), &mut payload);
        let Ok((split, n)) = finished else {
            self.release_index(local);
            return Err(DropReason::HandshakeAuth);
        };
        // The hub's key is pinned (configured, or remembered from the first contact); a
        // peer's comes from the directory. `None`: the first contact with a hub.
        let pinned = match &self.role {
            RoleState::Client(c) if id == PeerId::HUB => c.server_key,
            _ => Some(peer.key),
        };
        if let Some(pinned) = pinned
            && split.remote_static != pinned
        {
            self.release_index(local);
            if id == PeerId::HUB {
                self.events.push_back(crate::Event::ServerKeyMismatch {
                    pinned,
                    offered: split.remote_static,
                });
            } else {
                tracing::warn!(
                    peer = id.0,
                    "a peer proved a key other than its directory entry's"
                );
            }
            return Err(DropReason::UnknownKey);
        }
        peer.key = split.remote_static;
        let Ok(reply) = Reply::parse(&payload[..n]) else {
            self.release_index(local);
            return Err(DropReason::BadFrame);
        };
        match reply {
            Reply::Welcome(w) => {
                if self.cipher_bits() & cipher_bit(w.cipher) == 0 {
                    self.release_index(local);
                    return Err(DropReason::BadFrame);
                }
                let session = Session::new(
                    self.cfg.aead,
                    &split,
                    w.cipher,
                    local,
                    resp.index(),
                    true,
                    now,
                );
                self.install_initiated(now, id, session);
                if let (PeerId::HUB, Source::Addr(from)) = (id, src) {
                    self.hub_heard_directly(now, from);
                }
                if id == PeerId::HUB {
                    self.pin_server_key(split.remote_static);
                    self.on_joined(now, w);
                } else if let Err(r) = self.send_plain(now, id, &[]) {
                    // An empty message confirms the session to the responder.
                    self.count_drop(r, Some(id));
                }
                self.flush_queue(now, id);
            }
            Reply::Refusal { code, text } => {
                self.release_index(local);
                if id == PeerId::HUB {
                    let hint = match code {
                        culvert_wire::hello::RefusalCode::UnknownKey => {
                            ": add our public key to the server's [[peer]] list"
                        }
                        _ => "",
                    };
                    tracing::error!(
                        code = code.as_str(),
                        "the server refused to let us join: {text}{hint}"
                    );
                    self.join_answered(now);
                    // The pinned hub said so, authenticated: a session we still hold is one
                    // it no longer honours (a join refused after it was welcomed). Retries
                    // go on at the backoff already set.
                    let retry = self.peers.get(&id).and_then(|p| p.retry_at);
                    self.reset_sessions(id);
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.retry_at = retry;
                    }
                } else {
                    tracing::debug!(
                        peer = id.0,
                        code = code.as_str(),
                        "peer refused a session: {text}"
                    );
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.queue.clear();
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles a cookie reply: keep the cookie and retry at once with it.
    pub(super) fn handle_cookie(
        &mut self,
        now: Instant,
        _src: Source,
        msg: &[u8],
    ) -> Result<(), DropReason> {
        let reply = CookieReply::new_checked(msg).map_err(|_| DropReason::Malformed)?;
        let id = self
            .by_index
            .get(&reply.index())
            .copied()
            .ok_or(DropReason::UnexpectedHandshake)?;
        let peer = self
            .peers
            .get_mut(&id)
            .expect("indices point at live peers");
        let pending = peer
            .sessions
            .handshake
            .as_ref()
            .filter(|h| h.local_index == reply.index())
            .ok_or(DropReason::UnexpectedHandshake)?;
        let init =
            HandshakeInit::new_checked(&pending.message[..]).map_err(|_| DropReason::Malformed)?;
        let cookie =
            open_reply(&pending.psk, &reply, &init, now).ok_or(DropReason::HandshakeAuth)?;
        tracing::info!(
            peer = id.0,
            "responder is under load; retrying the handshake with its cookie"
        );
        peer.cookie = Some(cookie);
        self.start_handshake(now, id);
        Ok(())
    }

    /// Logs a handshake refusal, rate-limited (a flood must not flood the log).
    pub(super) fn log_refusal(&mut self, now: Instant, from: std::net::SocketAddr, what: &str) {
        let limiter = match &mut self.role {
            RoleState::Hub(h) => &mut h.refusal_log,
            RoleState::Client(c) => &mut c.refusal_log,
        };
        if limiter.allow(now) {
            let suppressed = limiter.take_suppressed();
            tracing::warn!(peer = %from, suppressed, "{what}");
        }
    }

    /// Shell: a FakeTCP flow's first record from `from` did not decode under this
    /// network's key — what a client with a wrong passphrase or server key sends once it
    /// has moved to FakeTCP. Logged like a failed handshake (rate-limited, never answered).
    pub fn log_undecodable(&mut self, now: Instant, from: std::net::SocketAddr) {
        self.log_refusal(
            now,
            from,
            "FakeTCP records that do not decode under this network's key: wrong passphrase or \
             server key? (not answered)",
        );
    }

    /// Forgets our own unanswered handshake with `id`.
    pub(super) fn drop_pending(&mut self, id: PeerId) {
        if let Some(h) = self
            .peers
            .get_mut(&id)
            .and_then(|p| p.sessions.handshake.take())
        {
            self.release_index(h.local_index);
        }
    }

    /// Retry delay after `attempts` failures: doubling, capped, with up to 20% jitter.
    fn backoff(&mut self, attempts: u32) -> Duration {
        let t = &self.cfg.timing;
        let base = t
            .retry_min
            .saturating_mul(1 << attempts.min(16))
            .min(t.retry_max);
        let jitter = self.rng.below(1000) as u32;
        base + base * jitter / 5000
    }

    pub(super) fn cipher_bits(&self) -> u8 {
        let mut bits = self.cfg.ciphers.iter().fold(0, |b, c| b | cipher_bit(*c));
        if self.cfg.ciphers.first() == Some(&Cipher::ChaCha20Poly1305) {
            bits |= PREFER_CHACHA;
        }
        bits
    }

    /// Picks the data cipher for an initiator offering `theirs`: ChaCha20 if either side
    /// prefers it (a CPU without AES instructions), AES-256-GCM otherwise.
    pub(super) fn choose_cipher(&self, theirs: u8) -> Option<Cipher> {
        let ours = self.cipher_bits();
        let common = ours & theirs;
        let chacha = common & cipher_bit(Cipher::ChaCha20Poly1305) != 0;
        let aes = common & cipher_bit(Cipher::Aes256Gcm) != 0;
        match (aes, chacha) {
            (_, true) if (ours | theirs) & PREFER_CHACHA != 0 => Some(Cipher::ChaCha20Poly1305),
            (true, _) => Some(Cipher::Aes256Gcm),
            (false, true) => Some(Cipher::ChaCha20Poly1305),
            (false, false) => None,
        }
    }
}

fn cipher_bit(c: Cipher) -> u8 {
    match c {
        Cipher::Aes256Gcm => 0x01,
        Cipher::ChaCha20Poly1305 => 0x02,
    }
}
