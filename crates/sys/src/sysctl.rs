//! Kernel parameters under `/proc/sys` (this network namespace's, for `net.*`).

use std::io;
use std::path::PathBuf;

use crate::{Error, Result};

/// The file of parameter `name` (`net.ipv4.conf.eth0.forwarding`). Interface names may
/// contain dots, so callers pass the parts.
pub fn path(parts: &[&str]) -> PathBuf {
    let mut p = PathBuf::from("/proc/sys");
    for part in parts {
        p.push(part);
    }
    p
}

/// The current value, trimmed.
pub fn read(parts: &[&str]) -> Result<String> {
    let p = path(parts);
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_owned())
        .map_err(|e| Error::io(format!("reading {}", p.display()), e))
}

/// Sets a value.
pub fn write(parts: &[&str], value: &str) -> Result<()> {
    let p = path(parts);
    std::fs::write(&p, value).map_err(|e| {
        let e = if e.kind() == io::ErrorKind::PermissionDenied {
            io::Error::new(
                e.kind(),
                "permission denied: run as root or grant CAP_NET_ADMIN",
            )
        } else {
            e
        };
        Error::io(format!("writing {value} to {}", p.display()), e)
    })
}
