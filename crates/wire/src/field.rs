//! Byte-range helpers shared by the format modules.

use core::ops::{Range, RangeFrom};

/// A fixed field: its byte range inside a header.
pub(crate) type Field = Range<usize>;
/// A variable tail: everything from an offset on.
pub(crate) type Rest = RangeFrom<usize>;

/// Reads a big-endian `u16` from a field known to be two bytes long and in bounds.
pub(crate) fn be16(buf: &[u8], at: Field) -> u16 {
    let b = &buf[at];
    u16::from_be_bytes([b[0], b[1]])
}

/// Reads a big-endian `u32` from a field known to be four bytes long and in bounds.
pub(crate) fn be32(buf: &[u8], at: Field) -> u32 {
    let b = &buf[at];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads a big-endian `u64` from a field known to be eight bytes long and in bounds.
pub(crate) fn be64(buf: &[u8], at: Field) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at]);
    u64::from_be_bytes(b)
}

/// A forward-only reader over a byte slice for the small variable-length formats.
///
/// Every read checks the remaining length and fails with [`crate::Error::Truncated`], so a
/// parser written with it cannot index out of bounds.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> crate::Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(crate::Error::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> crate::Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> crate::Result<u16> {
        Ok(be16(self.take(2)?, 0..2))
    }

    pub(crate) fn u32(&mut self) -> crate::Result<u32> {
        Ok(be32(self.take(4)?, 0..4))
    }

    pub(crate) fn u64(&mut self) -> crate::Result<u64> {
        Ok(be64(self.take(8)?, 0..8))
    }

    pub(crate) fn array<const N: usize>(&mut self) -> crate::Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Whether every byte was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    /// Fails with [`crate::Error::TrailingBytes`] unless everything was read.
    pub(crate) fn finish(self) -> crate::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(crate::Error::TrailingBytes)
        }
    }
}
