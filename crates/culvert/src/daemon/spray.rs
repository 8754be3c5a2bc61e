//! The extra UDP sockets port prediction sends from (`culvert_core::path`, "Port
//! prediction"): behind a NAT that gives every new destination a random port, each socket
//! opens one more public port towards the peer. Opened when the endpoint first sends from
//! one, closed once idle; they share one nested epoll instance, so the daemon's own
//! poller watches a single descriptor for all of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::Result;
use culvert_core::SPRAY_SOCKETS;
use culvert_core::path::{KEEPALIVE, PUNCH_FOR, RETRY_MIN};
use culvert_sys::poll::Poller;
use culvert_sys::udp::UdpSocket;

/// A socket nothing was sent from for this long is closed. A socket that carries a direct
/// path sends a keepalive probe every [`KEEPALIVE`]; a failed attempt's sockets must be
/// gone before the next attempt (at least `PUNCH_FOR + RETRY_MIN` later), which then
/// gets new random public ports — the old ones are barred at the peer's NAT by the
/// conntrack entries the first sprays left there.
const IDLE: Duration = KEEPALIVE.saturating_mul(3);

const _: () = assert!(IDLE.as_millis() + 600 < PUNCH_FOR.as_millis() + RETRY_MIN.as_millis());

struct Spray {
    sock: UdpSocket,
    used: Instant,
}

/// Sockets `1..=SPRAY_SOCKETS` (0 is the main socket, not kept here).
pub(crate) struct SpraySockets {
    poller: Poller,
    mark: Option<u32>,
    /// Unspecified address of the main socket's family, to bind to.
    bind: IpAddr,
    /// Socket `k` at index `k - 1`.
    open: Vec<Option<Spray>>,
    count: usize,
    next_expiry: Option<Instant>,
}

impl SpraySockets {
    /// `v6`: the main socket's family; `mark`: a full tunnel's firewall mark, for every
    /// socket.
    pub(crate) fn new(v6: bool, mark: Option<u32>) -> Result<Self> {
        Ok(Self {
            mark,
            poller: Poller::new(usize::from(SPRAY_SOCKETS))?,
            bind: if v6 {
                Ipv6Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::UNSPECIFIED.into()
            },
            open: (0..SPRAY_SOCKETS).map(|_| None).collect(),
            count: 0,
            next_expiry: None,
        })
    }

    /// Socket `k`, opened now if it is not; marked used at `now`. `None` when `k` is out of
    /// range or the socket cannot be opened (logged).
    pub(crate) fn open(&mut self, k: u16, now: Instant) -> Option<&UdpSocket> {
        let slot = self.open.get_mut(usize::from(k).checked_sub(1)?)?;
        if slot.is_none() {
            let sock = match UdpSocket::bind(SocketAddr::new(self.bind, 0))
                .and_then(|s| self.mark.map_or(Ok(()), |m| s.set_mark(m)).map(|()| s))
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("port prediction: {e}");
                    return None;
                }
            };
            if let Err(e) = self.poller.add(sock.as_raw_fd(), u64::from(k)) {
                tracing::warn!("port prediction: {e}");
                return None;
            }
            if self.count == 0 {
                tracing::debug!("port prediction: opening extra UDP sockets");
            }
            self.count += 1;
            self.next_expiry.get_or_insert(now + IDLE);
            *slot = Some(Spray { sock, used: now });
        }
        let s = slot.as_mut()?;
        s.used = now;
        Some(&s.sock)
    }

    /// Socket `k` if it is open.
    pub(crate) fn get(&self, k: u16) -> Option<&UdpSocket> {
        let i = usize::from(k).checked_sub(1)?;
        self.open.get(i)?.as_ref().map(|s| &s.sock)
    }

    /// The sockets with datagrams waiting.
    pub(crate) fn ready(&mut self) -> Vec<u16> {
        match self.poller.wait(Duration::ZERO) {
            Ok(tokens) => tokens.filter_map(|t| u16::try_from(t).ok()).collect(),
            Err(e) => {
                tracing::warn!("port prediction: {e}");
                Vec::new()
            }
        }
    }

    /// Closes the sockets idle for [`IDLE`].
    pub(crate) fn expire(&mut self, now: Instant) {
        if self.next_expiry.is_none_or(|t| t > now) {
            return;
        }
        let mut next: Option<Instant> = None;
        for slot in &mut self.open {
            let Some(s) = slot else { continue };
            if now.saturating_duration_since(s.used) >= IDLE {
                let _ = self.poller.remove(s.sock.as_raw_fd());
                *slot = None;
                self.count -= 1;
            } else {
                let at = s.used + IDLE;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if self.count == 0 {
            tracing::debug!("port prediction: extra UDP sockets closed");
        }
        self.next_expiry = next;
    }
}

impl AsRawFd for SpraySockets {
    fn as_raw_fd(&self) -> RawFd {
        self.poller.as_raw_fd()
    }
}
