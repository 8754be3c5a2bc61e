//! Static X25519 identities, public keys and pre-shared keys.

use core::fmt;

use blake2::digest::{FixedOutput, Update};
use snow::resolvers::{CryptoResolver, DefaultResolver};

/// A node's static X25519 public key: its identity in the overlay.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl fmt::Display for PublicKey {
    /// Standard base64, as in key files and configs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use base64::Engine;
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl core::str::FromStr for PublicKey {
    type Err = KeyParseError;

    /// Parses standard base64 of exactly 32 bytes.
    fn from_str(s: &str) -> Result<Self, KeyParseError> {
        Ok(Self(decode_key(s)?))
    }
}

/// A key string is not base64 of 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a key: expected 44 characters of base64 (32 bytes), as printed by `culvert genkey`")]
pub struct KeyParseError;

/// Decodes standard base64 of exactly 32 bytes.
pub fn decode_key(s: &str) -> Result<[u8; 32], KeyParseError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| KeyParseError)?;
    bytes.try_into().map_err(|_| KeyParseError)
}

impl PublicKey {
    /// The first characters of the base64 form, enough to tell keys apart in logs.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

/// A static X25519 private key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticSecret([u8; 32]);

impl StaticSecret {
    /// Wraps 32 bytes, clamping them as X25519 does.
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Self(bytes)
    }

    /// The key in standard base64, for writing a key file (zeroized when dropped).
    pub fn to_base64(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(PublicKey(self.0).to_string())
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let mut dh = DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .expect("the default resolver provides X25519");
        dh.set(&self.0);
        let mut out = [0u8; 32];
        out.copy_from_slice(dh.pubkey());
        PublicKey(out)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticSecret(<redacted>)")
    }
}

impl Drop for StaticSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// A 32-byte pre-shared key mixed into every handshake (Noise `psk0`).
///
/// In passphrase mode it is the Argon2id stretch of the passphrase, the same on every node.
/// In key mode it is derived from the responder's public key ([`Psk::for_responder`]),
/// which keeps handshake message 1 opaque to anyone who does not know that key.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk([u8; 32]);

impl Psk {
    /// Wraps 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key-mode PSK for handshakes towards `responder`.
    pub fn for_responder(responder: &PublicKey) -> Self {
        Self(blake2s(&[b"culvert key-mode psk v1", &responder.0]))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

impl Drop for Psk {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// BLAKE2s-256 over the concatenation of `parts`.
pub(crate) fn blake2s(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake2::Blake2s256::default();
    for p in parts {
        h.update(p);
    }
    h.finalize_fixed().into()
}

/// Keyed BLAKE2s with a 16-byte output (the MAC used for cookies and `mac2`).
pub(crate) fn mac16(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    use blake2::digest::KeyInit;
    let mut m = blake2::Blake2sMac::<blake2::digest::consts::U16>::new_from_slice(key)
        .expect("BLAKE2s accepts keys up to 32 bytes");
    for p in parts {
        m.update(p);
    }
    m.finalize_fixed().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = StaticSecret::from_bytes([1; 32]);
        assert_eq!(format!("{s:?}"), "StaticSecret(<redacted>)");
        assert_eq!(format!("{:?}", Psk::from_bytes([1; 32])), "Psk(<redacted>)");
    }

    /// RFC 7748 §6.1: Alice's private key and public key.
    #[test]
    fn x25519_public_key_vector() {
        let hex = |s: &str| -> [u8; 32] {
            let v: Vec<u8> = (0..32)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            v.try_into().unwrap()
        };
        let sk = StaticSecret::from_bytes(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            sk.public_key().0,
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    #[test]
    fn mac_depends_on_key() {
        assert_ne!(mac16(&[1; 32], &[b"x"]), mac16(&[2; 32], &[b"x"]));
        assert_eq!(mac16(&[1; 32], &[b"x", b"y"]), mac16(&[1; 32], &[b"xy"]));
    }
}
