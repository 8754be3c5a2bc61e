//! The TUN device: IP packets in and out, one read or write per packet.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::{Error, Result};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// An open TUN device. It disappears from the system when dropped (it is not persistent).
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tun {
    /// Creates (or attaches to a free persistent) TUN device called `name`, non-blocking.
    pub fn create(name: &str) -> Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(Error::io(
                format!("TUN name {name:?}"),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "must be 1-15 characters, no '/' or spaces",
                ),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::io(
                    "opening /dev/net/tun",
                    io::Error::new(
                        e.kind(),
                        "no such device: load the tun module (modprobe tun)",
                    ),
                ),
                _ => Error::io("opening /dev/net/tun", e),
            })?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `IfReq` has the same size and
        // layout for the fields the kernel uses (name, flags), and lives across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            let what = format!("creating TUN device {name}");
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY) => Error::io(
                    what,
                    io::Error::new(
                        e.kind(),
                        "device busy: another process (another culvert?) holds it; choose another --tun-name",
                    ),
                ),
                Some(libc::EINVAL) => Error::io(
                    what,
                    io::Error::new(
                        e.kind(),
                        "an interface of that name exists and is not a TUN device",
                    ),
                ),
                _ => Error::io(what, e),
            });
        }
        Ok(Self {
            file,
            name: name.to_owned(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet; `Ok(None)` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match (&self.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one packet. A full queue (`WouldBlock`) drops the packet, like a full NIC.
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        (&self.file).write(packet).map(|_| ())
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
