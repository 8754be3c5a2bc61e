//! A directory held open, and the files below it reached without following links.
//!
//! Root reads and writes files in places the daemon's unprivileged user may also write
//! (its state directory; under systemd, the runtime directory). A path a root process
//! opens, chowns or chmods there could have been replaced by a symbolic link to
//! `/etc/shadow` a moment before. So the directory is opened once (refusing a link as its
//! last component), checked, and everything below it goes through its descriptor:
//! `openat` with `O_NOFOLLOW`, `fchownat` with `AT_SYMLINK_NOFOLLOW`, `unlinkat`, and a
//! socket bound through `/proc/self/fd/N/`. Whoever swaps names around afterwards changes
//! nothing that root does.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::privilege::User;
use crate::{Error, Result};

/// What an open file or directory is, from `fstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Owner.
    pub uid: u32,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Hard links to it.
    pub links: u64,
    /// A regular file.
    pub regular: bool,
}

/// An open directory.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens the directory `path`, creating it (and missing parents) with `mode` if it does
    /// not exist. Its last component must not be a symbolic link.
    ///
    /// As root, the directory is made root's and not writable by group or others if it
    /// was not (an earlier run may have handed it to the daemon's user): after that, only
    /// root can add or replace entries in it. Entries already there are not trusted by
    /// that; each use checks its own file ([`Dir::open_regular`]).
    pub fn open(path: &Path, mode: u32) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let c = cstring(path.as_os_str().as_bytes())?;
        // SAFETY: open with a valid C string; the result is checked by owned_fd.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY,
            )
        };
        let fd = crate::owned_fd(
            fd,
            format!(
                "opening {} (it must be a directory, not a link)",
                path.display()
            ),
        )?;
        let dir = Self {
            fd,
            path: path.to_owned(),
        };
        if crate::privilege::euid() == 0 {
            let m = dir.meta()?;
            if m.uid != 0 {
                // SAFETY: fchown on a descriptor we own.
                let rc = unsafe { libc::fchown(dir.fd.as_raw_fd(), 0, 0) };
                check(rc, || format!("taking {} back for root", path.display()))?;
            }
            if m.uid != 0 || m.mode & 0o022 != 0 {
                // SAFETY: fchmod on a descriptor we own.
                let rc = unsafe { libc::fchmod(dir.fd.as_raw_fd(), m.mode & 0o755) };
                check(rc, || format!("restricting {}", path.display()))?;
            }
        }
        Ok(dir)
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's own status.
    pub fn meta(&self) -> Result<Meta> {
        fstat(self.fd.as_raw_fd())
            .map_err(|e| Error::io(format!("inspecting {}", self.path.display()), e))
    }

    /// `name` below this directory through its descriptor (`/proc/self/fd/N/name`): for
    /// calls that take only a path (binding a socket), which then cannot leave it.
    pub fn proc_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }

    /// Opens the regular file `name` for reading: never through a link, and only if it is
    /// owned by `owner` (this process's user, say) and has no other name. `None` if there
    /// is no such file.
    pub fn open_regular(&self, name: &str, owner: u32) -> Result<Option<(File, Meta)>> {
        let what = || format!("opening {}", self.path.join(name).display());
        let fd = match self.openat(name, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(what(), e)),
        };
        let m = fstat(fd.as_raw_fd()).map_err(|e| Error::io(what(), e))?;
        if !m.regular || m.uid != owner || m.links != 1 {
            return Err(Error::io(
                what(),
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "not a regular file of uid {owner} with one name (uid {}, {} links): \
                         not trusted",
                        m.uid, m.links
                    ),
                ),
            ));
        }
        Ok(Some((File::from(fd), m)))
    }

    /// Creates the file `name` with `mode` for reading and writing; whatever had that
    /// name (a file, a link, a socket) is removed first, never followed.
    pub fn create(&self, name: &str, mode: u32) -> Result<File> {
        self.remove(name)?;
        let fd = self
            .openat(
                name,
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                mode as libc::mode_t,
            )
            .map_err(|e| Error::io(format!("creating {}", self.path.join(name).display()), e))?;
        Ok(File::from(fd))
    }

    /// Removes the entry `name` (not a directory); nothing if there is none.
    pub fn remove(&self, name: &str) -> Result<()> {
        let c = cstring(name.as_bytes())?;
        // SAFETY: unlinkat relative to our descriptor with a valid C string.
        let rc = unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotFound {
                return Err(Error::io(
                    format!("removing {}", self.path.join(name).display()),
                    e,
                ));
            }
        }
        Ok(())
    }

    /// Gives the entry `name` (never a link's target) to `user`.
    pub fn chown(&self, name: &str, user: &User) -> Result<()> {
        let c = cstring(name.as_bytes())?;
        // SAFETY: fchownat relative to our descriptor; AT_SYMLINK_NOFOLLOW changes a link
        // itself, never what it points at.
        let rc = unsafe {
            libc::fchownat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                user.uid,
                user.gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        check(rc, || {
            format!(
                "giving {} to user {}",
                self.path.join(name).display(),
                user.name
            )
        })
    }

    /// Sets the permission bits of the entry `name`, which this process just created in a
    /// directory only it may write (so it cannot be a link by now).
    pub fn chmod(&self, name: &str, mode: u32) -> Result<()> {
        let c = cstring(name.as_bytes())?;
        // SAFETY: fchmodat relative to our descriptor with a valid C string.
        let rc = unsafe { libc::fchmodat(self.fd.as_raw_fd(), c.as_ptr(), mode, 0) };
        check(rc, || {
            format!("restricting {}", self.path.join(name).display())
        })
    }

    /// Gives the directory itself to `user` (through its descriptor).
    pub fn chown_self(&self, user: &User) -> Result<()> {
        // SAFETY: fchown on a descriptor we own.
        let rc = unsafe { libc::fchown(self.fd.as_raw_fd(), user.uid, user.gid) };
        check(rc, || {
            format!("giving {} to user {}", self.path.display(), user.name)
        })
    }

    /// Another descriptor of the same directory.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            fd: self
                .fd
                .try_clone()
                .map_err(|e| Error::io(format!("duplicating {}", self.path.display()), e))?,
            path: self.path.clone(),
        })
    }

    fn openat(&self, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
        if name.contains('/') || name == "." || name == ".." || name.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a name inside the directory, not a path",
            ));
        }
        let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: openat relative to our descriptor with a valid C string.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                libc::c_uint::from(mode),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn fstat(fd: libc::c_int) -> io::Result<Meta> {
    // SAFETY: stat is plain data that fstat fills in.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Meta {
            uid: st.st_uid,
            mode: st.st_mode & 0o7777,
            size: u64::try_from(st.st_size).unwrap_or(0),
            links: st.st_nlink,
            regular: st.st_mode & libc::S_IFMT == libc::S_IFREG,
        })
    }
}

fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| {
        Error::io(
            "naming a file",
            io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a file name"),
        )
    })
}

fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> Result<()> {
    if rc < 0 {
        return Err(Error::last(what()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("culvert-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn links_are_never_followed() {
        let base = scratch("links");
        let dir = Dir::open(&base, 0o700).unwrap();
        let target = base.join("target");
        std::fs::write(&target, "secret").unwrap();
        std::os::unix::fs::symlink(&target, base.join("link")).unwrap();
        let me = crate::privilege::euid();
        assert!(dir.open_regular("link", me).is_err(), "read through a link");
        assert!(dir.open_regular("missing", me).unwrap().is_none());
        let mut f = dir.create("link", 0o600).unwrap();
        f.write_all(b"mine").unwrap();
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "secret",
            "wrote through a link"
        );
        let (mut f, m) = dir.open_regular("link", me).unwrap().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(
            (s.as_str(), m.mode & 0o777, m.regular),
            ("mine", 0o600, true)
        );
        std::fs::hard_link(&target, base.join("hard")).unwrap();
        assert!(dir.open_regular("hard", me).is_err(), "a second name");
        assert!(dir.open_regular("../x", me).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_link_is_not_a_directory() {
        let base = scratch("notdir");
        std::fs::create_dir_all(&base).unwrap();
        let link = base.join("l");
        std::os::unix::fs::symlink("/tmp", &link).unwrap();
        assert!(Dir::open(&link, 0o700).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
