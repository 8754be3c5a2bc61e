//! culvert's wire formats, as zero-copy views over byte buffers.
//!
//! Each format follows the smoltcp pattern:
//!
//! * a view `Foo<T: AsRef<[u8]>>` wraps a buffer without copying it;
//! * `Foo::new_checked(buf)` checks every length once; **after it succeeds no accessor
//!   panics**, whatever the bytes are. Untrusted input must go through `new_checked`.
//! * `Foo::new_unchecked(buf)` is for emission into a buffer the caller sized with the
//!   format's `*_LEN` constants; a length check on a reused buffer would mean nothing.
//! * setters live in the `T: AsMut<[u8]>` impl, getters in the `T: AsRef<[u8]>` impl.
//!
//! Variable-length structures that are small and rare (handshake payloads, control frames)
//! are parsed into plain `Repr` values with `parse` and written back with `emit`.
//!
//! All integers are big-endian (network order) unless a field says otherwise. Nothing in
//! this crate allocates on the data path, and nothing here performs I/O. The normative
//! description of every format is `docs/PROTOCOL.md`; its hex examples are the unit tests
//! at the bottom of each module.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod checksum;
pub mod frame;
pub mod hello;
pub mod ip;
pub mod message;
pub mod tcp;

mod field;

/// Why a buffer could not be read as the format asked for.
///
/// It is `Copy` and carries no heap data, so the data path can return it freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field or value the format requires is out of its allowed range.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The buffer ends before the format says it should.
    #[error("truncated message")]
    Truncated,
    /// The buffer is longer than the format allows.
    #[error("trailing bytes after message")]
    TrailingBytes,
    /// The type byte names no known message or frame.
    #[error("unknown type {0:#04x}")]
    UnknownType(u8),
    /// The protocol version is one this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
}

/// The result of parsing a wire format.
pub type Result<T> = core::result::Result<T, Error>;
