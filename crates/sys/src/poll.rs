//! epoll, and SIGINT/SIGTERM delivered as a readable file descriptor.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::{Error, Result};

/// An epoll instance; registered descriptors are identified by a `u64` token.
#[derive(Debug)]
pub struct Poller {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    /// Creates an epoll instance able to report `capacity` events per wait.
    pub fn new(capacity: usize) -> Result<Self> {
        // SAFETY: plain epoll_create1 call; the descriptor is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        Ok(Self {
            fd: crate::owned_fd(fd, "creating an epoll instance")?,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    /// Watches `fd` for readability (level-triggered) under `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token)
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) -> Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0)
    }

    /// Watches a registered `fd` for writability too (`true`), or again only for
    /// readability: a reply that did not fit the socket buffer continues when it drains.
    pub fn want_write(&self, fd: RawFd, token: u64, write: bool) -> Result<()> {
        let events = if write {
            libc::EPOLLIN | libc::EPOLLOUT
        } else {
            libc::EPOLLIN
        };
        self.ctl_events(libc::EPOLL_CTL_MOD, fd, token, events as u32)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> Result<()> {
        self.ctl_events(op, fd, token, libc::EPOLLIN as u32)
    }

    fn ctl_events(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the call's duration.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(Error::last(format!("epoll_ctl on descriptor {fd}")));
        }
        Ok(())
    }

    /// Waits up to `timeout` and returns the tokens of the ready descriptors.
    pub fn wait(&mut self, timeout: Duration) -> Result<impl Iterator<Item = u64> + '_> {
        // Round up so that a deadline 0.3 ms away does not become a busy loop of 0 ms waits.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: `events` is a valid, writable array of the length passed.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ms,
            )
        };
        let n = if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(Error::io("waiting for events", e));
            }
            0
        } else {
            n as usize
        };
        Ok(self.events[..n].iter().map(|e| e.u64))
    }
}

impl AsRawFd for Poller {
    /// The epoll descriptor: readable while any registered descriptor is ready, so one
    /// poller can watch another's set.
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// SIGINT, SIGTERM and SIGHUP as a readable descriptor.
///
/// Creating it blocks those signals for the calling thread (and threads it spawns later),
/// so create it first thing in `main`.
#[derive(Debug)]
pub struct Signals {
    fd: OwnedFd,
}

impl Signals {
    /// Blocks the signals and opens the signalfd.
    pub fn new() -> Result<Self> {
        // SAFETY: the sigset is initialised by sigemptyset before use; the calls only read it.
        let fd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(Error::last("blocking signals"));
            }
            libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
        };
        Ok(Self {
            fd: crate::owned_fd(fd, "creating a signalfd")?,
        })
    }

    /// The next pending signal number, if any.
    pub fn read(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data; we read at most its size into it.
        unsafe {
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let size = size_of::<libc::signalfd_siginfo>();
            let n = libc::read(self.fd.as_raw_fd(), (&raw mut info).cast(), size);
            (n == size as isize).then_some(info.ssi_signo as i32)
        }
    }
}

impl AsRawFd for Signals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
