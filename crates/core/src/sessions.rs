//! The session slots of one peer, and how they rotate.
//!
//! A peer has at most three: the *current* session, which sends and receives; the
//! *previous* one, kept after a rekey for messages still in flight (receive only); and the
//! handshake this node initiated and is waiting on. A new session becomes current and the
//! current one becomes previous; what falls off the end is returned, so that the endpoint
//! can unregister its index.

use std::time::{Duration, Instant};

use crate::peer::PendingHandshake;
use crate::session::Session;

/// Which of a peer's sessions a data message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Current,
    Previous,
    Handshake,
}

/// One peer's sessions (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    pub(crate) current: Option<Session>,
    pub(crate) previous: Option<Session>,
    pub(crate) handshake: Option<PendingHandshake>,
}

impl Sessions {
    /// The slot holding local index `index`, if any.
    pub(crate) fn slot(&self, index: u32) -> Option<Slot> {
        if self
            .current
            .as_ref()
            .is_some_and(|s| s.local_index == index)
        {
            Some(Slot::Current)
        } else if self
            .previous
            .as_ref()
            .is_some_and(|s| s.local_index == index)
        {
            Some(Slot::Previous)
        } else if self
            .handshake
            .as_ref()
            .is_some_and(|h| h.local_index == index)
        {
            Some(Slot::Handshake)
        } else {
            None
        }
    }

    /// The session in `slot` (a handshake in progress has none yet).
    pub(crate) fn session_mut(&mut self, slot: Slot) -> Option<&mut Session> {
        match slot {
            Slot::Current => self.current.as_mut(),
            Slot::Previous => self.previous.as_mut(),
            Slot::Handshake => None,
        }
    }

    /// Whether the current session may carry packets at `now`.
    pub(crate) fn usable(&self, now: Instant, reject_after: Duration) -> bool {
        self.current
            .as_ref()
            .is_some_and(|s| now.saturating_duration_since(s.established) < reject_after)
    }

    /// `session` becomes current, the current one previous. Returns the local index of
    /// the session that fell off, to unregister, and whether this was the first session.
    pub(crate) fn rotate(&mut self, session: Session) -> (Option<u32>, bool) {
        let dropped = self.previous.take().map(|s| s.local_index);
        let first = self.current.is_none();
        self.previous = self.current.replace(session);
        (dropped, first)
    }

    /// Drops the sessions established `lifetime` ago or earlier; returns their indices.
    pub(crate) fn expire(&mut self, now: Instant, lifetime: Duration) -> Vec<u32> {
        let dead = |s: &Session| now.saturating_duration_since(s.established) >= lifetime;
        let mut released = Vec::new();
        for slot in [&mut self.current, &mut self.previous] {
            if slot.as_ref().is_some_and(dead) {
                released.extend(slot.take().map(|s| s.local_index));
            }
        }
        released
    }

    /// Drops everything; returns every local index held, to unregister.
    pub(crate) fn clear(&mut self) -> Vec<u32> {
        let indices = self
            .current
            .iter()
            .chain(self.previous.iter())
            .map(|s| s.local_index)
            .chain(self.handshake.iter().map(|h| h.local_index))
            .collect();
        *self = Self::default();
        indices
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::pair;
    use culvert_wire::hello::Cipher;

    fn session(index: u32, age: Duration) -> Session {
        let (mut s, _) = pair(Cipher::Aes256Gcm);
        s.local_index = index;
        s.established += age;
        s
    }

    #[test]
    fn rotation_keeps_one_previous_and_hands_back_what_fell_off() {
        let mut s = Sessions::default();
        assert_eq!(s.rotate(session(1, Duration::ZERO)), (None, true));
        assert_eq!(s.rotate(session(2, Duration::ZERO)), (None, false));
        assert_eq!(s.slot(1), Some(Slot::Previous));
        assert_eq!(s.slot(2), Some(Slot::Current));
        assert_eq!(s.rotate(session(3, Duration::ZERO)), (Some(1), false));
        assert_eq!(s.slot(1), None);
        assert_eq!(s.clear(), vec![3, 2]);
        assert_eq!(s.slot(3), None);
    }

    #[test]
    fn expiry_drops_only_sessions_past_their_lifetime() {
        let t0 = crate::test_epoch();
        let mut s = Sessions::default();
        s.rotate(session(1, Duration::ZERO));
        s.rotate(session(2, Duration::from_secs(100)));
        let now = t0 + Duration::from_secs(150);
        assert!(s.usable(now, Duration::from_secs(60)));
        assert_eq!(s.expire(now, Duration::from_secs(120)), vec![1]);
        assert_eq!(s.slot(2), Some(Slot::Current));
        assert_eq!(
            s.expire(now + Duration::from_secs(100), Duration::from_secs(120)),
            vec![2]
        );
        assert!(!s.usable(now, Duration::from_secs(60)));
    }
}
