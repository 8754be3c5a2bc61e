//! The daemon's control socket: `/run/culvert/<netns>/<instance>.sock`.
//!
//! Nobody else may squat or fake it. The socket is a file in a directory that only root
//! (or, under systemd, the daemon's own user through `RuntimeDirectory=`) can write, so no
//! other local user can bind the name first or put a socket of their own there. Both ends
//! check the other with `SO_PEERCRED`: the daemon serves only root and its own user, and
//! `culvert status` ([`request`]) talks only to a daemon that runs as root or as the owner
//! of that directory. One directory per network namespace keeps `ip netns exec NS culvert
//! status` to the daemons of NS.
//!
//! Connections are served by the daemon's event loop, never blocking it: accepted
//! non-blocking, and read and written as far as they go ([`ControlListener::accept`]).
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Error, Result};

/// Where the per-namespace directories live.
pub const RUN_DIR: &str = "/run/culvert";

/// The directory of the control sockets of network namespace `netns`.
pub fn dir(netns: &str) -> PathBuf {
    Path::new(RUN_DIR).join(netns)
}

/// The control socket of `instance` in network namespace `netns`.
pub fn path(netns: &str, instance: &str) -> PathBuf {
    dir(netns).join(format!("{instance}.sock"))
}

/// Listens for `culvert status` and similar requests.
#[derive(Debug)]
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlListener {
    /// Binds the control socket of `instance`; fails if a daemon with that instance name
    /// answers there. A socket file left by a crashed daemon is replaced.
    pub fn bind(netns: &str, instance: &str) -> Result<Self> {
        let dir = dir(netns);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let path = path(netns, instance);
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(Error::io(
                    format!("binding control socket {}", path.display()),
                    io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another culvert daemon with this instance name runs in this network \
                         namespace; stop it or pick another --tun-name",
                    ),
                ));
            }
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("binding control socket {}", path.display()), e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| Error::io(format!("restricting {}", path.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("control socket non-blocking", e))?;
        Ok(Self { listener, path })
    }

    /// The socket file (to hand it and its directory to the daemon's user).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket itself, for a caller with its own event loop (the proxy's
    /// async runtime). That caller checks each peer with [`may_ask`]; the file is still
    /// removed when `self` drops.
    pub fn try_clone_socket(&self) -> Result<UnixListener> {
        self.listener
            .try_clone()
            .map_err(|e| Error::io("duplicating the control socket", e))
    }

    /// Accepts one pending connection from root or the daemon's own user, non-blocking.
    /// Returns `None` when nothing is pending; refused connections are closed.
    pub fn accept(&self) -> Option<UnixStream> {
        loop {
            let (mut stream, _) = self.listener.accept().ok()?;
            if !peer_uid(&stream).is_some_and(may_ask) {
                let _ = stream.set_nonblocking(true);
                let _ = stream.write_all(
                    b"{\"error\":\"permission denied: run as root or as the daemon's user\"}\n",
                );
                continue;
            }
            stream.set_nonblocking(true).ok()?;
            return Some(stream);
        }
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AsRawFd for ControlListener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }
}

/// Whether a process running as `uid` may ask this daemon: root and its own user.
pub fn may_ask(uid: u32) -> bool {
    uid == 0 || uid == crate::privilege::euid()
}

/// The user id of the process at the other end of a Unix socket.
pub fn peer_uid(stream: &UnixStream) -> Option<u32> {
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

/// Who may answer on the control directory of `netns`: root, and the owner of that
/// directory, provided neither it nor its parent can be written by anyone else. (Only root
/// can create entries in `/run`, so the parent's owner was chosen by root: by hand, or by
/// systemd's `RuntimeDirectory=` for the daemon's user.)
fn trusted_daemon_uid(netns: &str) -> io::Result<u32> {
    let refuse = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
    let parent = std::fs::metadata(RUN_DIR)?;
    if parent.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "{RUN_DIR} is writable by group or others: refusing to trust it"
        )));
    }
    let d = dir(netns);
    let meta = std::fs::metadata(&d)?;
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "{} is writable by others: refusing to trust it",
            d.display()
        )));
    }
    Ok(meta.uid())
}

/// Sends `request` to the daemon `instance` of network namespace `netns`; returns its
/// answer. Refuses to talk to a process that is neither root nor the owner of the control
/// directory (a fake daemon).
pub fn request(netns: &str, instance: &str, request: &str) -> io::Result<String> {
    let owner = trusted_daemon_uid(netns)?;
    let mut s = UnixStream::connect(path(netns, instance))?;
    match peer_uid(&s) {
        Some(uid) if uid == 0 || uid == owner => {}
        other => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the process on the control socket runs as uid {other:?}, neither root nor \
                     the owner of {}: not a culvert daemon of this host",
                    dir(netns).display()
                ),
            ));
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request.as_bytes())?;
    s.write_all(b"\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Instance names of the culvert daemons answering in network namespace `netns`.
pub fn instances(netns: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir(netns)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let instance = name.strip_suffix(".sock")?.to_owned();
            // A socket a crashed daemon left answers nothing.
            UnixStream::connect(e.path()).ok().map(|_| instance)
        })
        .collect();
    out.sort();
    out
}
