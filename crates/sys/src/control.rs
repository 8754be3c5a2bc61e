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
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dir::Dir;
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
    dir: Dir,
    name: String,
}

impl ControlListener {
    /// Binds the control socket of `instance`; fails if a daemon with that instance name
    /// answers there. A socket file left by a crashed daemon is replaced.
    ///
    /// The directory is opened once and the socket bound through it (see [`crate::dir`]):
    /// as root, it is root's and stays so (only the socket file goes to the daemon's user,
    /// [`ControlListener::give_to`]), so nothing the unprivileged daemon can do there
    /// changes what a later root start touches.
    pub fn bind(netns: &str, instance: &str) -> Result<Self> {
        let run_dir = Dir::open(&dir(netns), 0o755)?;
        let name = format!("{instance}.sock");
        let path = path(netns, instance);
        if UnixStream::connect(run_dir.proc_path(&name)).is_ok() {
            return Err(Error::io(
                format!("binding control socket {}", path.display()),
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another culvert daemon with this instance name runs in this network \
                     namespace; stop it or pick another --tun-name",
                ),
            ));
        }
        run_dir.remove(&name)?;
        let listener = UnixListener::bind(run_dir.proc_path(&name))
            .map_err(|e| Error::io(format!("binding control socket {}", path.display()), e))?;
        run_dir.chmod(&name, 0o660)?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("control socket non-blocking", e))?;
        Ok(Self {
            listener,
            dir: run_dir,
            name,
        })
    }

    /// The socket file.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }

    /// The directory the socket is in, held open: a root-owned place (when started as
    /// root) for other records that only root may write.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Lets `user` (the daemon's, after it drops root) answer on the socket: the socket
    /// file becomes theirs, never the directory.
    pub fn give_to(&self, user: &crate::privilege::User) -> Result<()> {
        self.dir.chown(&self.name, user)
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
        // Fails once root is dropped (the directory is root's): the next start replaces
        // the file, and nothing answers on it meanwhile.
        let _ = self.dir.remove(&self.name);
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

/// Who may answer on the control socket of `instance` in `netns`: root; the owner of the
/// directory, provided neither it nor its parent can be written by anyone else (only root
/// can create entries in `/run`, so the parent's owner was chosen by root: by hand, or by
/// systemd's `RuntimeDirectory=` for the daemon's user); and, in a directory of root's,
/// the owner of the socket file, which only root could have made theirs.
fn trusted_daemon_uids(netns: &str, instance: &str) -> io::Result<[u32; 2]> {
    let refuse = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
    let parent = std::fs::metadata(RUN_DIR)?;
    if parent.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "{RUN_DIR} is writable by group or others: refusing to trust it"
        )));
    }
    let d = dir(netns);
    let meta = std::fs::symlink_metadata(&d)?;
    if meta.mode() & 0o022 != 0 || !meta.is_dir() {
        return Err(refuse(format!(
            "{} is writable by others or not a directory: refusing to trust it",
            d.display()
        )));
    }
    let socket_owner = match meta.uid() {
        0 => std::fs::symlink_metadata(path(netns, instance))?.uid(),
        owner => owner,
    };
    Ok([meta.uid(), socket_owner])
}

/// Sends `request` to the daemon `instance` of network namespace `netns`; returns its
/// answer. Refuses to talk to a process that is neither root nor the daemon's user as
/// the control directory vouches for it (a fake daemon).
pub fn request(netns: &str, instance: &str, request: &str) -> io::Result<String> {
    let trusted = trusted_daemon_uids(netns, instance)?;
    let mut s = UnixStream::connect(path(netns, instance))?;
    match peer_uid(&s) {
        Some(uid) if uid == 0 || trusted.contains(&uid) => {}
        other => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the process on the control socket runs as uid {other:?}, neither root nor \
                     the daemon's user as {} says: not a culvert daemon of this host",
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
