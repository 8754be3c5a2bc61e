//! An established session: its indices and the [`DataKeys`] its data messages are sealed
//! and opened with.
//!
//! The keys are shared (`Arc`) so that threads moving packets can seal and open without the
//! session's owner: sealing takes its counter from an atomic, opening checks and marks the
//! replay window under a lock held only around the window, never around the AEAD. Messages
//! are sealed and opened in place in caller buffers, without allocating.

use core::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    keys: Arc<DataKeys>,
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
            keys: Arc::new(DataKeys {
                remote_index,
                send: aead(cipher, &split.send),
                recv: aead(cipher, &split.recv),
                next_counter: OwnLine(AtomicU64::new(0)),
                replay: OwnLine(ReplayWindow::default()),
            }),
        }
    }

    /// The keys, for a thread that seals and opens this session's messages.
    pub fn data_keys(&self) -> Arc<DataKeys> {
        Arc::clone(&self.keys)
    }

    /// See [`DataKeys::seal`].
    pub fn seal(&self, buf: &mut [u8], at: usize, len: usize) -> Result<Range<usize>, DropReason> {
        self.keys.seal(buf, at, len)
    }

    /// See [`DataKeys::seal_parity`].
    pub fn seal_parity(&self, msg: &mut [u8]) -> Result<(), DropReason> {
        self.keys.seal_parity(msg)
    }

    /// See [`DataKeys::open_parity`].
    pub fn open_parity(&self, msg: &mut [u8]) -> Result<(), DropReason> {
        self.keys.open_parity(msg)
    }

    /// See [`DataKeys::open`].
    pub fn open(&self, msg: &mut [u8]) -> Result<Range<usize>, DropReason> {
        self.keys.open(msg)
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.keys.next_counter.load(Ordering::Relaxed)
    }

    /// Highest counter received so far.
    pub fn received_max(&self) -> u64 {
        self.keys.replay.last()
    }
}

/// The data keys of one session, shareable between threads.
#[derive(Debug)]
pub struct DataKeys {
    remote_index: u32,
    send: Box<dyn Aead>,
    recv: Box<dyn Aead>,
    /// The next data counter; each seal takes one, whichever thread it runs on.
    next_counter: OwnLine<AtomicU64>,
    replay: OwnLine<ReplayWindow>,
}

/// A value on cache lines of its own: the counter and the window are written by every
/// thread that seals or opens, and would otherwise make the read-only keys beside them
/// bounce between cores too.
#[derive(Debug, Default)]
#[repr(align(128))]
struct OwnLine<T>(T);

impl<T> core::ops::Deref for OwnLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl DataKeys {
    /// Seals the plaintext `buf[at + 16 .. at + 16 + len]` into a data message occupying
    /// `buf[at .. at + len + 32]`, and returns that range.
    ///
    /// # Panics
    /// If `buf` is shorter than `at + len + 32`; callers reserve the head- and tailroom.
    pub fn seal(&self, buf: &mut [u8], at: usize, len: usize) -> Result<Range<usize>, DropReason> {
        // Each counter is used once whatever the interleaving: no ordering is needed. The
        // counter cannot wrap: a session ends at COUNTER_LIMIT, far below u64::MAX.
        let counter = self.next_counter.fetch_add(1, Ordering::Relaxed);
        if counter >= replay::COUNTER_LIMIT {
            return Err(DropReason::SessionExpired);
        }
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
    /// within `msg`. The replay window is checked before decryption (a replay costs no AEAD
    /// work) and marked after it (a forgery never moves it); a copy racing this one through
    /// decryption on another thread is refused by the mark.
    pub fn open(&self, msg: &mut [u8]) -> Result<Range<usize>, DropReason> {
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
        let (a, b) = pair(Cipher::Aes256Gcm);
        let mut buf = [0u8; 64];
        buf[16..21].copy_from_slice(b"hello");
        let r = a.seal(&mut buf, 0, 5).unwrap();
        assert_eq!(r, 0..37);
        let captured = buf;
        let p = b.open(&mut buf[r.clone()]).unwrap();
        assert_eq!(&buf[p], b"hello");
        let mut again = captured;
        assert_eq!(b.open(&mut again[r.clone()]), Err(DropReason::Replay));
        let (_, fresh) = pair(Cipher::Aes256Gcm);
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

    /// Two threads open every one of 2000 messages, each its own copy, in opposite orders,
    /// while a third seals more: each message is accepted exactly once.
    #[test]
    fn threads_sharing_the_keys_accept_each_message_once() {
        let (a, b) = pair(Cipher::ChaCha20Poly1305);
        let (tx, rx) = (a.data_keys(), b.data_keys());
        let sealed: Vec<Vec<u8>> = (0..2000)
            .map(|i: u32| {
                let mut buf = vec![0u8; 64];
                buf[16..20].copy_from_slice(&i.to_le_bytes());
                let r = tx.seal(&mut buf, 0, 4).unwrap();
                buf[r].to_vec()
            })
            .collect();
        let opened = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for reversed in [false, true] {
                let (rx, sealed, opened) = (&rx, &sealed, &opened);
                s.spawn(move || {
                    let order: Vec<&Vec<u8>> = if reversed {
                        sealed.iter().rev().collect()
                    } else {
                        sealed.iter().collect()
                    };
                    for m in order {
                        match rx.open(&mut m.clone()) {
                            Ok(_) => {
                                opened.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => assert_eq!(e, DropReason::Replay),
                        }
                    }
                });
            }
            let tx = &tx;
            s.spawn(move || {
                let mut buf = [0u8; 64];
                for _ in 0..2000 {
                    tx.seal(&mut buf, 0, 4).unwrap();
                }
            });
        });
        assert_eq!(opened.into_inner(), 2000);
        assert_eq!(a.sent(), 4000, "every seal took a counter of its own");
    }

    #[test]
    fn forged_counter_does_not_move_the_window() {
        let (a, b) = pair(Cipher::ChaCha20Poly1305);
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
