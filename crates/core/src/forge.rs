//! What an attacker who holds the PSK can build: a message 1 that *claims* someone else's
//! static public key, without its private key.
//!
//! `IXpsk0`'s message 1 carries the initiator's static key sealed under the PSK and the
//! ephemeral key only — no Diffie-Hellman with the static key happens before message 2 —
//! so anyone who holds the PSK can put any public key there. Such a handshake can never
//! complete (message 2's `se` needs the private key), which is why a responder must not
//! act on message 1 ([`crate::pending`]). The attack tests use this to perform the attack;
//! it is built from snow's own primitives, so it also checks our reading of the pattern.

use culvert_wire::hello::{Hello, HelloKind};
use culvert_wire::message::{HandshakeInit, handshake_init_len};
use snow::params::{CipherChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};

use crate::keys::{Psk, PublicKey};
use crate::noise::{MSG1_OVERHEAD, PATTERN, PROLOGUE};
use crate::rng::Rng;

/// A whole HandshakeInit (join) from `index` that claims `claimed` and `addresses`, padded
/// like a real one. Its ephemeral key is fresh; nobody can finish the handshake.
pub fn join_claiming(
    rng: &mut Rng,
    claimed: &PublicKey,
    psk: &Psk,
    index: u32,
    addresses: &[culvert_wire::addr::Prefix],
    timestamp: u64,
) -> Vec<u8> {
    claiming(
        rng,
        HelloKind::Join,
        claimed,
        psk,
        index,
        addresses,
        timestamp,
    )
}

/// A whole HandshakeInit for an end-to-end session between clients, from `index`,
/// claiming `claimed`: what a member can send another client as someone else.
pub fn peer_claiming(
    rng: &mut Rng,
    claimed: &PublicKey,
    psk: &Psk,
    index: u32,
    timestamp: u64,
) -> Vec<u8> {
    claiming(rng, HelloKind::Peer, claimed, psk, index, &[], timestamp)
}

fn claiming(
    rng: &mut Rng,
    kind: HelloKind,
    claimed: &PublicKey,
    psk: &Psk,
    index: u32,
    addresses: &[culvert_wire::addr::Prefix],
    timestamp: u64,
) -> Vec<u8> {
    let mut hello = Hello {
        kind,
        ciphers: 0x03,
        timestamp,
        addresses: addresses.to_vec(),
        routes: Vec::new(),
        padding: 0,
    };
    let unpadded = handshake_init_len(hello.unpadded_len() + MSG1_OVERHEAD);
    hello.padding = u16::try_from(720usize.saturating_sub(unpadded)).unwrap_or(0);
    let mut payload = Vec::new();
    hello.emit(&mut payload);
    let mut msg = vec![0u8; handshake_init_len(payload.len() + MSG1_OVERHEAD)];
    let mut view = HandshakeInit::new_unchecked(&mut msg[..]);
    message1_claiming(rng, claimed, psk, &payload, view.noise_mut());
    view.set_header(index);
    let mac1 = crate::cookie::mac1(
        &crate::cookie::mac1_key(psk),
        &HandshakeInit::new_unchecked(&msg[..]),
    );
    HandshakeInit::new_unchecked(&mut msg[..]).set_mac1(&mac1);
    msg
}

/// Writes Noise message 1 (`psk, e, s` and the payload) claiming `claimed` into `out`,
/// which must hold `payload.len() + MSG1_OVERHEAD` bytes.
///
/// # Panics
/// If `out` is too short.
pub fn message1_claiming(
    rng: &mut Rng,
    claimed: &PublicKey,
    psk: &Psk,
    payload: &[u8],
    out: &mut [u8],
) {
    let mut hash = DefaultResolver
        .resolve_hash(&HashChoice::Blake2s)
        .expect("BLAKE2s");
    let mut cipher = DefaultResolver
        .resolve_cipher(&CipherChoice::ChaChaPoly)
        .expect("ChaChaPoly");
    // InitializeSymmetric: the name is longer than 32 bytes, so h = HASH(name).
    let mut h = [0u8; 64];
    hash.reset();
    hash.input(PATTERN.as_bytes());
    hash.result(&mut h);
    let mut ck = h;
    let mix_hash = |hash: &mut Box<dyn snow::types::Hash>, h: &mut [u8; 64], data: &[u8]| {
        let mut out = [0u8; 64];
        hash.reset();
        hash.input(&h[..32]);
        hash.input(data);
        hash.result(&mut out);
        *h = out;
    };
    mix_hash(&mut hash, &mut h, PROLOGUE);
    // psk: MixKeyAndHash.
    let (mut o1, mut o2, mut o3) = ([0u8; 64], [0u8; 64], [0u8; 64]);
    hash.hkdf(&ck[..32], psk.as_bytes(), 3, &mut o1, &mut o2, &mut o3);
    ck = o1;
    mix_hash(&mut hash, &mut h, &o2[..32]);
    // e: MixHash(e), and in a PSK handshake MixKey(e) too. Any 32 bytes are an X25519
    // public value, so a forger needs no scalar multiplication: this costs it a few
    // symmetric operations per message.
    let e = PublicKey(rng.array());
    mix_hash(&mut hash, &mut h, &e.0);
    // The new chaining key (o1) is not needed: message 1 ends before the next MixKey.
    hash.hkdf(&ck[..32], &e.0, 2, &mut o1, &mut o2, &mut o3);
    let mut k = [0u8; 32];
    k.copy_from_slice(&o2[..32]);
    cipher.set(&k);
    out[..32].copy_from_slice(&e.0);
    // s, then the payload: EncryptAndHash under k with nonces 0 and 1.
    let s_end = 32 + 32 + 16;
    let n = cipher.encrypt(0, &h[..32], &claimed.0, &mut out[32..s_end]);
    let sealed_s = out[32..32 + n].to_vec();
    mix_hash(&mut hash, &mut h, &sealed_s);
    let end = s_end + payload.len() + 16;
    cipher.encrypt(1, &h[..32], payload, &mut out[s_end..end]);
    k.fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::StaticSecret;
    use crate::noise::{MAX_PAYLOAD, Responder};

    /// snow, as a responder, reads the forged message and believes the claim — which is
    /// exactly why message 1 alone proves nothing.
    #[test]
    fn a_responder_reads_the_claimed_key() {
        let mut rng = Rng::from_seed([8; 32]);
        let hub = StaticSecret::from_bytes(rng.array());
        let victim = StaticSecret::from_bytes(rng.array()).public_key();
        let psk = Psk::from_bytes([3; 32]);
        let msg = join_claiming(&mut rng, &victim, &psk, 7, &[], 1);
        let init = HandshakeInit::new_checked(&msg[..]).unwrap();
        let mut payload = [0u8; MAX_PAYLOAD];
        let (responder, n) =
            Responder::read(&mut rng, &hub, &psk, init.noise(), &mut payload).unwrap();
        assert_eq!(responder.remote_static(), victim);
        let hello = Hello::parse(&payload[..n]).unwrap();
        assert_eq!((hello.kind, hello.timestamp), (HelloKind::Join, 1));
        assert!(msg.len() >= 720);
        assert!(
            Responder::read(
                &mut rng,
                &hub,
                &Psk::from_bytes([4; 32]),
                init.noise(),
                &mut payload
            )
            .is_err(),
            "without the PSK nothing can be claimed"
        );
    }
}
