//! The hub's directory as its clients know it, and how it reaches them: the whole
//! directory once, to a client that just connected (or asks, once a second at most), then
//! only what changed, as a delta from the version each client holds.
//!
//! Every change of one member's entry would otherwise cost the hub the whole directory to
//! every client: N² bytes for a rejoin that changed an address (hardening finding 9).
//! With deltas a change costs one entry per client, and a member's own changes reach the
//! others at most every [`MEMBER_CHANGE_GAP`]: rejoining in a loop with new addresses
//! cannot make the hub write faster than the member does. Changes are published at most
//! every [`PUSH_GAP`], so a burst of joins goes out as one delta.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use culvert_wire::frame::{DIRECTORY_HEADER_LEN, DirDelta, DirEntry, Directory, Frame};

use super::{Endpoint, MAX_FRAME, RoleState};
use crate::peer::PeerId;
use crate::stats::DropReason;

/// Changes are published at most this often.
pub(super) const PUSH_GAP: Duration = Duration::from_secs(1);
/// One member's changed entry reaches the others at most this often (its first
/// appearance and its removal are never held back).
pub(super) const MEMBER_CHANGE_GAP: Duration = Duration::from_secs(5);
/// A client is sent the whole directory on its request at most this often.
const REQUEST_INTERVAL: Duration = Duration::from_secs(1);

/// What the clients were last told.
#[derive(Debug)]
pub(super) struct Published {
    pub(super) version: u64,
    entries: BTreeMap<u32, DirEntry>,
    /// Since when something changed that was not pushed yet.
    dirty_since: Option<Instant>,
    last_push: Option<Instant>,
    /// Clients that get the whole directory at the next push (they just connected).
    fresh: BTreeSet<PeerId>,
    /// When each member's changed entry was last published.
    changed_at: BTreeMap<u32, Instant>,
    /// Members whose change was held back at the last push.
    held: BTreeSet<u32>,
}

impl Default for Published {
    fn default() -> Self {
        Self {
            version: 1,
            entries: BTreeMap::new(),
            dirty_since: None,
            last_push: None,
            fresh: BTreeSet::new(),
            changed_at: BTreeMap::new(),
            held: BTreeSet::new(),
        }
    }
}

impl Published {
    /// The directory changed (or may have) at `now`.
    pub(super) fn touch(&mut self, now: Instant) {
        self.dirty_since.get_or_insert(now);
    }

    /// `id` just connected: the next push gives it everything.
    pub(super) fn welcome(&mut self, now: Instant, id: PeerId) {
        self.fresh.insert(id);
        self.touch(now);
    }

    /// When the next push is due, if one is: a change waits for [`PUSH_GAP`] after the
    /// last push, a held-back member's for its [`MEMBER_CHANGE_GAP`].
    pub(super) fn due(&self) -> Option<Instant> {
        let gap = |t: Instant| self.last_push.map_or(t, |p| t.max(p + PUSH_GAP));
        let changed = self.dirty_since.map(gap);
        let held = self
            .held
            .iter()
            .filter_map(|n| self.changed_at.get(n))
            .map(|t| gap(*t + MEMBER_CHANGE_GAP))
            .min();
        [changed, held].into_iter().flatten().min()
    }

    /// Moves the published directory towards `now_entries` (everything the hub would list
    /// now) where the budgets allow; returns the delta (empty when nothing could change).
    fn advance(&mut self, now: Instant, now_entries: &BTreeMap<u32, DirEntry>) -> DirDelta {
        self.held.clear();
        let mut entries = Vec::new();
        for (node, e) in now_entries {
            match self.entries.get(node) {
                Some(old) if old == e => {}
                Some(_) => {
                    let last = self.changed_at.get(node).copied();
                    if last.is_some_and(|t| now.saturating_duration_since(t) < MEMBER_CHANGE_GAP) {
                        self.held.insert(*node);
                        continue;
                    }
                    self.changed_at.insert(*node, now);
                    entries.push(e.clone());
                }
                None => entries.push(e.clone()),
            }
        }
        let removed: Vec<u32> = self
            .entries
            .keys()
            .copied()
            .filter(|n| !now_entries.contains_key(n))
            .collect();
        for e in &entries {
            self.entries.insert(e.node, e.clone());
        }
        for n in &removed {
            self.entries.remove(n);
            self.changed_at.remove(n);
        }
        let from = self.version;
        if !entries.is_empty() || !removed.is_empty() {
            self.version += 1;
        }
        self.dirty_since = None;
        self.last_push = Some(now);
        DirDelta {
            from,
            version: self.version,
            entries,
            removed,
        }
    }
}

impl Endpoint {
    /// Everything the hub would list now: itself first, then each client with a session.
    fn directory_now(&self) -> BTreeMap<u32, DirEntry> {
        let own = DirEntry {
            node: PeerId::HUB.0,
            public_key: self.public.0,
            addresses: self.cfg.addresses.clone(),
            routes: self.cfg.routes.clone(),
        };
        core::iter::once(own)
            .chain(
                self.peers
                    .values()
                    .filter(|p| p.sessions.current.is_some())
                    .map(|p| DirEntry {
                        node: p.id.0,
                        public_key: p.key.0,
                        addresses: p.addresses.clone(),
                        routes: p.routes.clone(),
                    }),
            )
            .map(|e| (e.node, e))
            .collect()
    }

    /// Hub timer: publishes what changed, when [`PUSH_GAP`] allows — the whole directory
    /// to clients that just connected, the delta to the others (the whole directory when
    /// the delta would not fit one frame). Under isolation a client hears only of the hub
    /// and itself, whole, when either changed.
    pub(super) fn push_directory(&mut self, now: Instant) {
        let RoleState::Hub(hub) = &self.role else {
            return;
        };
        if hub.published.due().is_none_or(|t| t > now) {
            return;
        }
        let current = self.directory_now();
        let RoleState::Hub(hub) = &mut self.role else {
            return;
        };
        let isolation = hub.cfg.isolation;
        let delta = hub.published.advance(now, &current);
        let fresh = core::mem::take(&mut hub.published.fresh);
        self.deadline_dirty = true;
        let ids: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.sessions.current.is_some())
            .map(|p| p.id)
            .collect();
        let touched: BTreeSet<u32> = delta
            .entries
            .iter()
            .map(|e| e.node)
            .chain(delta.removed.iter().copied())
            .collect();
        let fits = delta.buffer_len() <= MAX_FRAME
            && delta.entries.len() <= 255
            && delta.removed.len() <= 255;
        for id in ids {
            let concerns = touched.contains(&PeerId::HUB.0) || touched.contains(&id.0);
            let whole = fresh.contains(&id)
                || (isolation && concerns)
                || (!touched.is_empty() && !isolation && !fits);
            if whole {
                self.send_directory(now, id);
            } else if !touched.is_empty() && !isolation {
                self.send_frame(now, id, &Frame::DirDelta(delta.clone()));
            }
        }
    }

    /// A client's ping says which version it holds; an old one gets the whole directory.
    pub(super) fn on_ping(
        &mut self,
        now: Instant,
        id: PeerId,
        held: u64,
    ) -> Result<(), DropReason> {
        if let RoleState::Hub(hub) = &self.role
            && held != hub.published.version
        {
            // A ping too soon after the last answer is still answered; the next one gets
            // the directory.
            let _ = self.send_requested_directory(now, id);
        }
        Ok(())
    }

    pub(super) fn on_dir_request(&mut self, now: Instant, id: PeerId) -> Result<(), DropReason> {
        match &self.role {
            RoleState::Hub(_) => self.send_requested_directory(now, id),
            _ => Err(DropReason::BadFrame),
        }
    }

    /// The directory on a client's request, at most once per [`REQUEST_INTERVAL`]: a
    /// client cannot make the hub send it more than a bounded rate.
    fn send_requested_directory(&mut self, now: Instant, id: PeerId) -> Result<(), DropReason> {
        let p = self.peers.get_mut(&id).ok_or(DropReason::RelayNoPeer)?;
        if p.directory_sent
            .is_some_and(|t| now.saturating_duration_since(t) < REQUEST_INTERVAL)
        {
            return Err(DropReason::RateLimited);
        }
        p.directory_sent = Some(now);
        self.send_directory(now, id);
        Ok(())
    }

    /// Sends the published directory to one client, in as many parts as needed.
    ///
    /// The hub's own entry (node 0) comes first: its routes. Under isolation a client's
    /// directory holds only the hub and the client itself (which learns the routes the hub
    /// accepted from it).
    fn send_directory(&mut self, now: Instant, to: PeerId) {
        let RoleState::Hub(hub) = &self.role else {
            return;
        };
        let (version, isolation) = (hub.published.version, hub.cfg.isolation);
        let entries: Vec<DirEntry> = hub
            .published
            .entries
            .values()
            .filter(|e| !isolation || e.node == PeerId::HUB.0 || e.node == to.0)
            .cloned()
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
}
