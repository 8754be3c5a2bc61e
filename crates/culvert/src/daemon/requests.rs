//! Connections to the control socket and the metrics listener, served by the event loop
//! without ever blocking it.
//!
//! Every connection is non-blocking and watched by epoll: it is read as far as it goes,
//! answered once its request is complete, and written as far as the socket takes, the
//! rest when it drains. A connection that idles, dawdles or never reads its answer is
//! closed after [`DEADLINE`]; beyond [`MAX_OPEN`] connections the oldest is closed. So an
//! idle or hostile client of either costs the tunnel nothing but a few system calls.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use culvert_sys::poll::Poller;

/// Longest a connection may stay open, from accept to the last byte of its answer.
pub(crate) const DEADLINE: Duration = Duration::from_secs(2);
/// Most connections open at once (control and metrics together).
pub(crate) const MAX_OPEN: usize = 64;
/// Longest request read (a status request line, an HTTP request head).
const MAX_REQUEST: usize = 4096;

/// Which listener a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `culvert status`: one request line.
    Control,
    /// Prometheus: an HTTP request head.
    Metrics,
}

/// Either socket type.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Self::Unix(s) => s.as_raw_fd(),
            Self::Tcp(s) => s.as_raw_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }
}

#[derive(Debug)]
struct Conn {
    stream: Stream,
    kind: Kind,
    input: Vec<u8>,
    /// The answer, once the request was complete, and how much of it went out.
    output: Option<(Vec<u8>, usize)>,
    opened: Instant,
}

/// The open connections, by epoll token.
#[derive(Debug)]
pub(crate) struct Requests {
    first_token: u64,
    next: u64,
    conns: BTreeMap<u64, Conn>,
}

/// What became of a readable connection.
#[derive(Debug)]
pub(crate) enum Readable {
    /// Nothing to do yet (partial request, or the connection is gone).
    Pending,
    /// A complete request: answer it with [`Requests::respond`].
    Request(Kind, String),
}

impl Requests {
    /// Connections get epoll tokens from `first_token` up.
    pub(crate) fn new(first_token: u64) -> Self {
        Self {
            first_token,
            next: first_token,
            conns: BTreeMap::new(),
        }
    }

    /// Whether `token` is one of ours.
    pub(crate) fn owns(&self, token: u64) -> bool {
        token >= self.first_token
    }

    /// Takes a freshly accepted, non-blocking connection.
    pub(crate) fn add(&mut self, poller: &Poller, now: Instant, kind: Kind, stream: Stream) {
        if self.conns.len() >= MAX_OPEN
            && let Some(oldest) = self.conns.keys().next().copied()
        {
            self.close(poller, oldest);
        }
        let token = self.next;
        self.next += 1;
        if poller.add(stream.fd(), token).is_err() {
            return;
        }
        self.conns.insert(
            token,
            Conn {
                stream,
                kind,
                input: Vec::new(),
                output: None,
                opened: now,
            },
        );
    }

    /// Reads what `token` has; returns its request once complete.
    pub(crate) fn readable(&mut self, poller: &Poller, token: u64) -> Readable {
        let Some(c) = self.conns.get_mut(&token) else {
            return Readable::Pending;
        };
        if c.output.is_some() {
            // Answered: whatever else comes is ignored; a closed peer ends it.
            let mut sink = [0u8; 512];
            if matches!(c.stream.read(&mut sink), Ok(0)) {
                self.close(poller, token);
            }
            return Readable::Pending;
        }
        let mut buf = [0u8; 1024];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    c.input.extend_from_slice(&buf[..n]);
                    if c.input.len() >= MAX_REQUEST {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if complete(c.kind, &c.input) {
                        break;
                    }
                    return Readable::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(poller, token);
                    return Readable::Pending;
                }
            }
        }
        // A complete request, one at the size limit, or the peer closed its side.
        if c.input.is_empty() {
            self.close(poller, token);
            return Readable::Pending;
        }
        let line = String::from_utf8_lossy(&c.input)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        Readable::Request(c.kind, line)
    }

    /// Sends `answer` to `token` (as far as the socket takes it now).
    pub(crate) fn respond(&mut self, poller: &Poller, token: u64, answer: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.output = Some((answer, 0));
            self.writable(poller, token);
        }
    }

    /// Writes more of `token`'s answer; closes it when all went out.
    pub(crate) fn writable(&mut self, poller: &Poller, token: u64) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let Some((out, sent)) = &mut c.output else {
            return;
        };
        while *sent < out.len() {
            match c.stream.write(&out[*sent..]) {
                Ok(0) => break,
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = poller.want_write(c.stream.fd(), token, true);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close(poller, token);
    }

    /// Closes connections older than [`DEADLINE`].
    pub(crate) fn expire(&mut self, poller: &Poller, now: Instant) {
        let old: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.opened) >= DEADLINE)
            .map(|(t, _)| *t)
            .collect();
        for t in old {
            self.close(poller, t);
        }
    }

    /// When the oldest open connection times out.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().map(|c| c.opened + DEADLINE).min()
    }

    /// Connections open now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.conns.len()
    }

    fn close(&mut self, poller: &Poller, token: u64) {
        if let Some(c) = self.conns.remove(&token) {
            let _ = poller.remove(c.stream.fd());
        }
    }
}

/// Whether `input` holds a whole request of its kind.
fn complete(kind: Kind, input: &[u8]) -> bool {
    match kind {
        Kind::Control => input.contains(&b'\n'),
        Kind::Metrics => input.windows(4).any(|w| w == b"\r\n\r\n") || input.ends_with(b"\n\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_complete_at_their_terminator() {
        assert!(!complete(Kind::Control, b"stat"));
        assert!(complete(Kind::Control, b"status\n"));
        assert!(!complete(
            Kind::Metrics,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
        ));
        assert!(complete(
            Kind::Metrics,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        ));
    }

    /// Idle connections neither block nor pile up: the loop keeps going, and they are
    /// closed at the deadline.
    #[test]
    fn idle_connections_are_bounded_and_expire() {
        let poller = Poller::new(16).unwrap();
        let mut r = Requests::new(1000);
        let t = Instant::now();
        let mut peers = Vec::new();
        for _ in 0..(MAX_OPEN + 10) {
            let (a, b) = UnixStream::pair().unwrap();
            a.set_nonblocking(true).unwrap();
            r.add(&poller, t, Kind::Control, Stream::Unix(a));
            peers.push(b);
        }
        assert_eq!(r.open(), MAX_OPEN);
        let started = Instant::now();
        for token in 1000..1000 + MAX_OPEN as u64 + 10 {
            assert!(matches!(r.readable(&poller, token), Readable::Pending));
        }
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "a read blocked"
        );
        r.expire(&poller, t + DEADLINE);
        assert_eq!(r.open(), 0);
    }

    #[test]
    fn a_request_is_answered_in_full() {
        let poller = Poller::new(16).unwrap();
        let mut r = Requests::new(7);
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        r.add(&poller, Instant::now(), Kind::Control, Stream::Unix(a));
        b.write_all(b"status\n").unwrap();
        let Readable::Request(Kind::Control, line) = r.readable(&poller, 7) else {
            panic!("no request");
        };
        assert_eq!(line, "status");
        r.respond(&poller, 7, b"{}\n".to_vec());
        let mut got = String::new();
        b.read_to_string(&mut got).unwrap();
        assert_eq!(got, "{}\n");
        assert_eq!(r.open(), 0);
    }
}
