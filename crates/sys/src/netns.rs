//! Which network namespace this process runs in, to keep per-namespace state apart.

use std::os::unix::fs::MetadataExt;

/// The name of the network namespace PID 1 is in.
pub const HOST: &str = "host";

/// A stable name for the current network namespace: [`HOST`] for the one PID 1 is in, the
/// `ip netns` name when there is one, `ns-<inode>` otherwise.
pub fn current_name() -> String {
    let Ok(me) = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()) else {
        return HOST.to_owned();
    };
    if std::fs::metadata("/proc/1/ns/net").is_ok_and(|m| m.ino() == me) {
        return HOST.to_owned();
    }
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            if entry.metadata().is_ok_and(|m| m.ino() == me) {
                return entry.file_name().to_string_lossy().into_owned();
            }
        }
    }
    format!("ns-{me}")
}

/// Moves the calling thread into the named network namespace (`/run/netns/NAME`).
///
/// Only this thread changes namespace; sockets it creates afterwards live there. Run it in
/// a dedicated thread.
#[allow(unsafe_code)]
pub fn enter(name: &str) -> crate::Result<()> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{name}");
    let f =
        std::fs::File::open(&path).map_err(|e| crate::Error::io(format!("opening {path}"), e))?;
    // SAFETY: setns on a valid namespace descriptor affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        return Err(crate::Error::last(format!(
            "entering network namespace {name}"
        )));
    }
    Ok(())
}
