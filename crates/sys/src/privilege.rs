//! Giving up root after setup: another user, two capabilities, no way back.
//!
//! Once the TUN device, the sockets and the nftables table exist, the daemon needs only
//! `CAP_NET_ADMIN` (addresses and routes over netlink, the `nft` command at exit) and, for
//! FakeTCP, `CAP_NET_RAW`. [`drop_to`] switches to an unprivileged user keeping exactly
//! those — in the permitted, effective, inheritable and ambient sets, so that the `nft`
//! the daemon runs inherits them too — empties the bounding set of everything else, and
//! sets `PR_SET_NO_NEW_PRIVS`, so no exec can gain more.
#![allow(unsafe_code)]

use std::ffi::CString;

use crate::{Error, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
/// The highest capability number any kernel we run on knows (CAP_CHECKPOINT_RESTORE).
const CAP_LAST: u32 = 40;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// A user to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The name, for messages.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Looks up `name` in `/etc/passwd` only: enough for a local system user, and it loads
/// no NSS modules into the daemon (about 1 MB of RSS) for the default lookup.
pub fn lookup_local(name: &str) -> Option<User> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| {
            Some(User {
                name: name.to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })?
    })
}

/// Looks up `name` in the user database (NSS: files, LDAP, ...); `None` if there is no
/// such user.
pub fn lookup(name: &str) -> Result<Option<User>> {
    let c = CString::new(name).map_err(|_| {
        Error::io(
            "looking up a user",
            std::io::Error::other("a user name cannot contain a NUL byte"),
        )
    })?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data; getpwnam_r writes into it and into `buf`, whose length
    // we pass, and sets `result` to it or to null.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(Error::io(
                format!("looking up user {name}"),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        if result.is_null() {
            return Ok(None);
        }
        Ok(Some(User {
            name: name.to_owned(),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        }))
    }
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Becomes `user`, keeping `CAP_NET_ADMIN` (and `CAP_NET_RAW` when `raw`), and forbids
/// gaining privileges again. Must be called as root, before any other thread starts.
pub fn drop_to(user: &User, raw: bool) -> Result<()> {
    let keep: &[u32] = if raw {
        &[CAP_NET_ADMIN, CAP_NET_RAW]
    } else {
        &[CAP_NET_ADMIN]
    };
    // SAFETY: prctl and the set*id calls take plain integers; each result is checked.
    unsafe {
        for cap in 0..=CAP_LAST {
            if !keep.contains(&cap) && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                let e = std::io::Error::last_os_error();
                // A capability this kernel does not know is not in the set anyway.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(Error::io("emptying the capability bounding set", e));
                }
            }
        }
        check(
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
            "keeping capabilities",
        )?;
        let groups = [user.gid];
        check(
            libc::setgroups(1, groups.as_ptr()),
            "setting supplementary groups",
        )?;
        check(
            libc::setresgid(user.gid, user.gid, user.gid),
            "changing group",
        )?;
        check(
            libc::setresuid(user.uid, user.uid, user.uid),
            "changing user",
        )?;
        check(
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0),
            "clearing keep-capabilities",
        )?;
    }
    set_capabilities(keep)?;
    for &cap in keep {
        // SAFETY: plain prctl; the capability is in the permitted and inheritable sets.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE,
                libc::c_ulong::from(cap),
                0,
                0,
            )
        };
        check(rc, "raising an ambient capability")?;
    }
    no_new_privs()
}

/// Sets `PR_SET_NO_NEW_PRIVS`: no exec from here on gains privileges (setuid bits, file
/// capabilities).
pub fn no_new_privs() -> Result<()> {
    // SAFETY: plain prctl.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(rc, "setting no_new_privs")
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Makes `caps` the effective, permitted and inheritable sets of this thread.
fn set_capabilities(caps: &[u32]) -> Result<()> {
    let mut data = [CapData::default(); 2];
    for &c in caps {
        let (word, bit) = ((c / 32) as usize, 1u32 << (c % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
        data[word].inheritable |= bit;
    }
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads one header and two data structs of the v3 layout.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
    if rc != 0 {
        return Err(Error::last("setting capabilities"));
    }
    Ok(())
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc < 0 {
        return Err(Error::last(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_nonsense_does_not() {
        let root = lookup("root").unwrap().expect("every system has root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup("no-such-user-culvert-test").unwrap(), None);
        assert_eq!(lookup_local("root"), Some(root));
        assert_eq!(lookup_local("no-such-user-culvert-test"), None);
        assert!(lookup("bad\0name").is_err());
    }
}
