//! An established session: two AEAD keys, the send counter and the replay window.
//!
//! Sessions are sealed and opened in place in caller buffers, without allocating.

use core::ops::Range;
use std::time::Instant;

use culvert_wire::hello::Cipher;
use culvert_wire::message::{DATA_HEADER_LEN, DATA_OVERHEAD, Data, FecParity};

use crate::aead::{Aead, AeadFactory, nonce, parity_nonce};
use crate::noise::Split;
use crate::replay::{self, Refused, ReplayWindow};
use crate::stats::DropReason;

/// One direction pair of keys agreed by a handshake.
#[derive(Debug)]
pub struct Session {
    /// The index this node chose; peers put it in data messages sent to us.
    pub local_index: u32,
    /// The index the peer chose; we put it in data messages we send.
    pub remote_index: u32,
    /// When the handshake completed.
    pub established: Instant,
    /// Whether this node initiated the handshake (the initiator rekeys on time).
    pub initiator: bool,
    /// The negotiated data cipher.
    pub cipher: Cipher,
    send: Box<dyn Aead>,
    recv: Box<dyn Aead>,
    next_counter: u64,
    replay: ReplayWindow,
}

impl Session {
    /// Builds a session from a completed handshake.
    pub fn new(
        aead: AeadFactory,
        split: &Split,
        cipher: Cipher,
        local_index: u32,
        remote_index: u32,
        initiator: bool,
        now: Instant,
    ) -> Self {
        Self {
            local_index,
            remote_index,
            established: now,
            initiator,
            cipher,
            send: aead(cipher, &split.send),
            recv: aead(cipher, &split.recv),
            next_counter: 0,
            replay: ReplayWindow::default(),
        }
    }

    /// Seals the plaintext `buf[at + 16 .. at + 16 + len]` into a data message occupying
    /// `buf[at .. at + len + 32]`, and returns that range.
    ///
    /// # Panics
    /// If `buf` is shorter than `at + len + 32`; callers reserve the head- and tailroom.
    pub fn seal(
        &mut self,
        buf: &mut [u8],
        at: usize,
        len: usize,
    ) -> Result<Range<usize>, DropReason> {
        if self.next_counter >= replay::COUNTER_LIMIT {
            return Err(DropReason::SessionExpired);
        }
        let counter = self.next_counter;
        self.next_counter += 1;
        let range = at..at + len + DATA_OVERHEAD;
        let mut msg = Data::new_unchecked(&mut buf[range.clone()]);
        msg.set_header(self.remote_index);
        msg.set_counter(counter);
        let (header, payload, tag) = msg.split_mut();
        self.send.seal(&nonce(counter), header, payload, tag);
        Ok(range)
    }

    /// Seals a parity message in place: its shard is encrypted and tagged, its header
    /// (shape, index, first counter) authenticated.
    pub fn seal_parity(&self, msg: &mut [u8]) -> Result<(), DropReason> {
        let p = FecParity::new_checked(&*msg).map_err(|_| DropReason::FecBadParity)?;
        let n = parity_nonce(p.first_counter(), p.j());
        let mut view = FecParity::new_unchecked(msg);
        let (header, shard, tag) = view.split_mut();
        self.send.seal(&n, header, shard, tag);
        Ok(())
    }

    /// Authenticates and decrypts a parity message in place: one AEAD check is all a
    /// forged one costs.
    pub fn open_parity(&self, msg: &mut [u8]) -> Result<(), DropReason> {
        let p = FecParity::new_checked(&*msg).map_err(|_| DropReason::FecBadParity)?;
        let n = parity_nonce(p.first_counter(), p.j());
        let mut view = FecParity::new_unchecked(msg);
        let (header, shard, tag) = view.split_mut();
        self.recv
            .open(&n, header, shard, tag)
            .map_err(|_| DropReason::FecBadParity)
    }

    /// Authenticates and decrypts a data message in place; returns the plaintext range
    /// within `msg`. The replay window is checked before and updated after decryption.
    pub fn open(&mut self, msg: &mut [u8]) -> Result<Range<usize>, DropReason> {
        let mut data = Data::new_checked(&mut *msg).map_err(|_| DropReason::Malformed)?;
        let counter = data.counter();
        self.replay.check(counter).map_err(replay_reason)?;
        let plain = DATA_HEADER_LEN..DATA_HEADER_LEN + data.payload_len();
        let (header, payload, tag) = data.split_mut();
        self.recv
            .open(&nonce(counter), header, payload, tag)
            .map_err(|_| DropReason::DecryptFailed)?;
        self.replay.mark(counter).map_err(replay_reason)?;
        Ok(plain)
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.next_counter
    }

    /// Highest counter received so far.
    pub fn received_max(&self) -> u64 {
        self.replay.last()
    }
}

fn replay_reason(r: Refused) -> DropReason {
    match r {
        Refused::Duplicate => DropReason::Replay,
        Refused::TooOld => DropReason::TooOld,
        Refused::Exhausted => DropReason::SessionExpired,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two ends of a session with fixed keys, for tests.
    pub(crate) fn pair(cipher: Cipher) -> (Session, Session) {
        let now = crate::test_epoch();
        let a = Split {
            remote_static: crate::keys::PublicKey([0; 32]),
            send: [1; 32],
            recv: [2; 32],
        };
        let b = Split {
            remote_static: crate::keys::PublicKey([0; 32]),
            send: [2; 32],
            recv: [1; 32],
        };
        let f = crate::aead::rustcrypto;
        (
            Session::new(f, &a, cipher, 10, 20, true, now),
            Session::new(f, &b, cipher, 20, 10, false, now),
        )
    }

    #[test]
    fn seal_open_replay() {
        let (mut a, mut b) = pair(Cipher::Aes256Gcm);
        let mut buf = [0u8; 64];
        buf[16..21].copy_from_slice(b"hello");
        let r = a.seal(&mut buf, 0, 5).unwrap();
        assert_eq!(r, 0..37);
        let captured = buf;
        let p = b.open(&mut buf[r.clone()]).unwrap();
        assert_eq!(&buf[p], b"hello");
        let mut again = captured;
        assert_eq!(b.open(&mut again[r.clone()]), Err(DropReason::Replay));
        let (_, mut fresh) = pair(Cipher::Aes256Gcm);
        let mut forged = captured;
        forged[20] ^= 0x80;
        assert_eq!(
            fresh.open(&mut forged[r.clone()]),
            Err(DropReason::DecryptFailed)
        );
        let mut ok = captured;
        assert!(
            fresh.open(&mut ok[r]).is_ok(),
            "a forgery must not burn the counter"
        );
    }

    #[test]
    fn forged_counter_does_not_move_the_window() {
        let (mut a, mut b) = pair(Cipher::ChaCha20Poly1305);
        let mut buf = [0u8; 64];
        let r = a.seal(&mut buf, 0, 0).unwrap();
        let mut forged = buf;
        Data::new_unchecked(&mut forged[r.clone()]).set_counter(1_000_000);
        assert_eq!(
            b.open(&mut forged[r.clone()]),
            Err(DropReason::DecryptFailed)
        );
        assert!(b.open(&mut buf[r]).is_ok());
        assert_eq!(b.received_max(), 0);
    }
}
