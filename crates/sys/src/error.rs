//! Errors that name the operation and the object, and say what to do when that is clear.

use std::io;

/// A failed system operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller lacks the privilege the operation needs.
    #[error("permission denied {what}: run as root or grant CAP_NET_ADMIN")]
    Permission {
        /// What was attempted, e.g. "opening /dev/net/tun".
        what: String,
    },
    /// Any other failure, with the operation it belongs to. The OS error is part of the
    /// message, not a separate cause, so that an error chain prints it once.
    #[error("{what}: {cause}")]
    Io {
        /// What was attempted.
        what: String,
        /// The underlying error.
        cause: io::Error,
    },
}

/// The result of a system operation.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with what was being done; EPERM/EACCES become [`Error::Permission`].
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::PermissionDenied => Self::Permission { what: what.into() },
            _ => Self::Io {
                what: what.into(),
                cause: source,
            },
        }
    }

    /// Wraps the current `errno`.
    pub(crate) fn last(what: impl Into<String>) -> Self {
        Self::io(what, io::Error::last_os_error())
    }

    /// The OS error code, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Permission { .. } => Some(libc::EPERM),
            Self::Io { cause, .. } => cause.raw_os_error(),
        }
    }
}

/// Takes ownership of the descriptor a syscall returned, or reports `errno` as `what`.
#[allow(unsafe_code)]
pub(crate) fn owned_fd(fd: libc::c_int, what: impl Into<String>) -> Result<std::os::fd::OwnedFd> {
    if fd < 0 {
        return Err(Error::last(what));
    }
    // SAFETY: a non-negative return from a descriptor-creating syscall is a fresh
    // descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}
