//! The daemon's control socket, in the abstract namespace: `@culvert/<instance>`.
//!
//! Abstract Unix sockets belong to the network namespace they were created in, so
//! `ip netns exec NS culvert status` reaches exactly the daemons of namespace NS, and a
//! crashed daemon leaves no socket file behind. Abstract sockets carry no file mode, so
//! access is checked on every connection with `SO_PEERCRED`: only root and the daemon's
//! own user are served.
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

use crate::{Error, Result};

const PREFIX: &str = "culvert/";
/// Longest request a client may send.
const MAX_REQUEST: u64 = 4096;

/// Listens for `culvert status` and similar requests.
#[derive(Debug)]
pub struct ControlListener {
    listener: UnixListener,
    instance: String,
}

impl ControlListener {
    /// Binds `@culvert/<instance>`; fails if a daemon with that instance name runs in this
    /// network namespace.
    pub fn bind(instance: &str) -> Result<Self> {
        let name = format!("{PREFIX}{instance}");
        let addr = SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| Error::io(format!("control socket name {name}"), e))?;
        let listener = UnixListener::bind_addr(&addr).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => Error::io(
                format!("binding control socket @{name}"),
                io::Error::new(
                    e.kind(),
                    "another culvert daemon with this instance name runs in this network namespace; \
                     stop it or pick another --tun-name",
                ),
            ),
            _ => Error::io(format!("binding control socket @{name}"), e),
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("control socket non-blocking", e))?;
        Ok(Self {
            listener,
            instance: instance.to_owned(),
        })
    }

    /// The instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Accepts one pending connection from an allowed user and reads its request line.
    /// Returns `None` when nothing is pending; refused or broken connections are closed.
    pub fn accept(&self) -> Option<(UnixStream, String)> {
        let (mut stream, _) = self.listener.accept().ok()?;
        let uid = peer_uid(&stream)?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if uid != 0 && uid != me {
            let _ = stream.write_all(
                b"{\"error\":\"permission denied: run as root or as the daemon's user\"}\n",
            );
            return None;
        }
        stream.set_nonblocking(false).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok()?;
        stream
            .set_write_timeout(Some(Duration::from_millis(500)))
            .ok()?;
        let mut req = String::new();
        let mut limited = (&stream).take(MAX_REQUEST);
        let mut byte = [0u8; 1];
        while limited.read(&mut byte).ok()? == 1 && byte[0] != b'\n' {
            req.push(char::from(byte[0]));
        }
        Some((stream, req))
    }
}

impl AsRawFd for ControlListener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    // SAFETY: ucred is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut cred: libc::ucred = std::mem::zeroed();
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        );
        (rc == 0).then_some(cred.uid)
    }
}

/// Sends `request` to the daemon `instance` of this network namespace; returns its answer.
pub fn request(instance: &str, request: &str) -> io::Result<String> {
    let addr = SocketAddr::from_abstract_name(format!("{PREFIX}{instance}").as_bytes())?;
    let mut s = UnixStream::connect_addr(&addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request.as_bytes())?;
    s.write_all(b"\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Instance names of the culvert daemons listening in this network namespace.
pub fn instances() -> Vec<String> {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let mut out: Vec<String> = table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter_map(|p| p.strip_prefix('@')?.strip_prefix(PREFIX))
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    out
}
