//! Handshake DoS defence: stateless cookies bound to the initiator's address.
//!
//! A responder under load (more handshake messages per second than its limit) answers a
//! message 1 that lacks a valid `mac2` with a [`CookieReply`] instead of doing any DH. The
//! cookie is `MAC(secret, source address)`, with a secret that rotates every two minutes,
//! so the responder keeps nothing per initiator. An initiator that really owns its source
//! address receives the cookie and retries with `mac2 = MAC(cookie, message)`.
//!
//! The reply is 52 bytes, smaller than any message 1, so it cannot amplify a flood. It is
//! sealed under a key derived from the handshake PSK, with message 1's final tag as
//! associated data: only the initiator that sent that message can read it.
//!
//! Before any of that, `mac1` (keyed with the PSK, [`mac1_key`]) tells a message 1 of a
//! member from a stranger's with one MAC: a stranger's gets no answer — no cookie reply,
//! nothing — and costs the responder nothing more.

use core::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use culvert_wire::message::{COOKIE_REPLY_LEN, CookieReply, HandshakeInit, MAC_LEN, TAG_LEN};

use crate::keys::{Psk, blake2s, mac16};
use crate::limit::RateWindow;
use crate::rng::Rng;

/// How long one cookie secret lives (WireGuard uses the same two minutes).
pub const SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// How long an initiator keeps using a cookie it received.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(110);

/// A cookie received from a responder.
#[derive(Debug, Clone, Copy)]
pub struct Cookie {
    value: [u8; 16],
    received: Instant,
}

impl Cookie {
    /// Whether the cookie may still be used at `now`.
    pub fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.received) < COOKIE_LIFETIME
    }

    /// The `mac2` of a message 1 that carries this cookie.
    pub fn mac2(&self, covered: &[u8]) -> [u8; MAC_LEN] {
        mac16(&self.value, &[covered])
    }
}

/// The responder side: the rotating secret and the load meter.
#[derive(Debug)]
pub struct CookieJar {
    secret: [u8; 32],
    secret_born: Instant,
    load: RateWindow,
}

impl CookieJar {
    /// A jar that starts requiring cookies above `limit_per_sec` handshakes per second.
    pub fn new(rng: &mut Rng, now: Instant, limit_per_sec: u32) -> Self {
        Self {
            secret: rng.array(),
            secret_born: now,
            load: RateWindow::new(limit_per_sec, Duration::from_secs(1)),
        }
    }

    /// Counts one handshake message and tells whether the responder is now under load.
    pub fn note_handshake(&mut self, now: Instant) -> bool {
        !self.load.allow(now)
    }

    /// Rotates the secret when it is older than [`SECRET_LIFETIME`].
    pub fn rotate(&mut self, rng: &mut Rng, now: Instant) {
        if now.saturating_duration_since(self.secret_born) >= SECRET_LIFETIME {
            self.secret = rng.array();
            self.secret_born = now;
        }
    }

    /// When the secret must next rotate.
    pub fn next_rotation(&self) -> Instant {
        self.secret_born + SECRET_LIFETIME
    }

    /// Whether message 1 carries a valid `mac2` for its source address.
    pub fn check_mac2(&self, init: &HandshakeInit<&[u8]>, from: SocketAddr) -> bool {
        let expected = mac16(&self.cookie_for(from), &[init.mac2_covered()]);
        constant_time_eq(&expected, &init.mac2())
    }

    /// Writes a cookie reply for `init` into `out`.
    pub fn reply(
        &self,
        rng: &mut Rng,
        psk: &Psk,
        init: &HandshakeInit<&[u8]>,
        from: SocketAddr,
        out: &mut [u8; COOKIE_REPLY_LEN],
    ) {
        let nonce: [u8; 12] = rng.array();
        let mut reply = CookieReply::new_unchecked(&mut out[..]);
        reply.set_header(init.index());
        reply.set_nonce(&nonce);
        let sealed = reply.sealed_cookie_mut();
        sealed[..16].copy_from_slice(&self.cookie_for(from));
        let (cookie, tag) = sealed.split_at_mut(16);
        let t = reply_cipher(psk)
            .encrypt_in_place_detached(&nonce.into(), init_tag(init), cookie)
            .expect("a 16-byte cookie fits the AEAD");
        tag.copy_from_slice(&t);
    }

    fn cookie_for(&self, from: SocketAddr) -> [u8; 16] {
        let ip = match from.ip() {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        mac16(&self.secret, &[&ip, &from.port().to_be_bytes()])
    }
}

/// The key of `mac1` for handshakes under `psk` (compute once per PSK).
pub fn mac1_key(psk: &Psk) -> [u8; 32] {
    blake2s(&[b"culvert mac1 v2", psk.as_bytes()])
}

/// The `mac1` of a message 1, keyed with [`mac1_key`].
pub fn mac1(key: &[u8; 32], init: &HandshakeInit<&[u8]>) -> [u8; MAC_LEN] {
    mac16(key, &[init.mac1_covered()])
}

/// Whether message 1 carries a valid `mac1` (its sender holds the PSK).
pub fn check_mac1(key: &[u8; 32], init: &HandshakeInit<&[u8]>) -> bool {
    constant_time_eq(&mac1(key, init), &init.mac1())
}

/// Opens a cookie reply to the message 1 we sent (`init`).
pub fn open_reply(
    psk: &Psk,
    reply: &CookieReply<&[u8]>,
    init: &HandshakeInit<&[u8]>,
    now: Instant,
) -> Option<Cookie> {
    let mut value = [0u8; 16];
    value.copy_from_slice(&reply.sealed_cookie()[..16]);
    let tag = chacha20poly1305::Tag::from_slice(&reply.sealed_cookie()[16..16 + TAG_LEN]);
    reply_cipher(psk)
        .decrypt_in_place_detached(&reply.nonce().into(), init_tag(init), &mut value, tag)
        .ok()?;
    Some(Cookie {
        value,
        received: now,
    })
}

fn reply_cipher(psk: &Psk) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(&blake2s(&[b"culvert cookie v1", psk.as_bytes()]).into())
}

/// The last 16 bytes of the Noise message: its final AEAD tag, unpredictable to others.
fn init_tag<'a>(init: &HandshakeInit<&'a [u8]>) -> &'a [u8] {
    let msg = init.into_inner();
    let end = msg.len() - 2 * MAC_LEN;
    &msg[end - TAG_LEN..end]
}

fn constant_time_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use culvert_wire::message::{NOISE_MIN_LEN, handshake_init_len};

    #[test]
    fn cookie_round_trip() {
        let mut rng = Rng::from_seed([3; 32]);
        let t0 = crate::test_epoch();
        let jar = CookieJar::new(&mut rng, t0, 1);
        let psk = Psk::from_bytes([5; 32]);
        let from: SocketAddr = "198.18.1.2:4000".parse().unwrap();
        let mut msg = vec![0u8; handshake_init_len(NOISE_MIN_LEN)];
        rng.fill(&mut msg);
        HandshakeInit::new_unchecked(&mut msg[..]).set_header(77);
        let init = HandshakeInit::new_checked(&msg[..]).unwrap();
        assert!(!jar.check_mac2(&init, from));

        let mut out = [0u8; COOKIE_REPLY_LEN];
        jar.reply(&mut rng, &psk, &init, from, &mut out);
        assert!(out.len() < msg.len(), "a cookie reply must not amplify");
        let reply = CookieReply::new_checked(&out[..]).unwrap();
        assert_eq!(reply.index(), 77);
        let cookie = open_reply(&psk, &reply, &init, t0).unwrap();
        assert!(open_reply(&Psk::from_bytes([6; 32]), &reply, &init, t0).is_none());

        let mac = cookie.mac2(init.mac2_covered());
        HandshakeInit::new_unchecked(&mut msg[..]).set_mac2(&mac);
        let init = HandshakeInit::new_checked(&msg[..]).unwrap();
        assert!(jar.check_mac2(&init, from));
        assert!(!jar.check_mac2(&init, "198.18.1.3:4000".parse().unwrap()));
    }

    #[test]
    fn load_meter() {
        let mut rng = Rng::from_seed([3; 32]);
        let t0 = crate::test_epoch();
        let mut jar = CookieJar::new(&mut rng, t0, 2);
        assert!(!jar.note_handshake(t0));
        assert!(!jar.note_handshake(t0));
        assert!(jar.note_handshake(t0));
        assert!(!jar.note_handshake(t0 + Duration::from_secs(1)));
    }
}
