//! GF(2^8) dot products `out_j = Σ_i c_ji · in_i`, with split-nibble tables:
//! `c · x = lo[x & 0xf] ^ hi[x >> 4]`, where `lo[t] = c · t` and `hi[t] = c · (t << 4)`.
//!
//! Outputs are computed in blocks of up to four: each input chunk is loaded and split into
//! nibbles once, then folded into four accumulators held in registers. AVX-512BW handles
//! 64 bytes per shuffle, AVX2 32, each with a zero-padded last chunk; the scalar loop serves
//! CPUs with neither.
#![allow(unsafe_code)]

use crate::gf::mul;

/// The two 16-entry product tables of one coefficient.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
pub(crate) struct Tables {
    lo: [u8; 16],
    hi: [u8; 16],
}

impl Tables {
    pub(crate) fn new(c: u8) -> Self {
        let mut t = Self {
            lo: [0; 16],
            hi: [0; 16],
        };
        // Multiplication by c is linear: fill each table from its four basis products.
        for bit in 0..4 {
            let (lo, hi) = (mul(c, 1 << bit), mul(c, 1 << (bit + 4)));
            let b = 1usize << bit;
            for n in 0..b {
                t.lo[b + n] = t.lo[n] ^ lo;
                t.hi[b + n] = t.hi[n] ^ hi;
            }
        }
        t
    }
}

/// Outputs folded per pass over the inputs.
const BLOCK: usize = 4;

/// `outs[j] = Σ_i tables[j * inputs.len() + i] · inputs[i]`. Every input must be at least as
/// long as every output.
pub(crate) fn dot(tables: &[Tables], inputs: &[&[u8]], outs: &mut [&mut [u8]]) {
    let n = inputs.len();
    debug_assert_eq!(tables.len(), n * outs.len());
    for (b, block) in outs.chunks_mut(BLOCK).enumerate() {
        let t = &tables[b * BLOCK * n..(b * BLOCK + block.len()) * n];
        match block.len() {
            1 => dot_block::<1>(t, inputs, block),
            2 => dot_block::<2>(t, inputs, block),
            3 => dot_block::<3>(t, inputs, block),
            _ => dot_block::<4>(t, inputs, block),
        }
    }
}

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The fastest implementation this CPU supports.
pub(crate) fn best() -> Path {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bw") {
            return Path::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Path::Avx2;
        }
    }
    Path::Scalar
}

fn dot_block<const N: usize>(tables: &[Tables], inputs: &[&[u8]], outs: &mut [&mut [u8]]) {
    dot_block_on::<N>(best(), tables, inputs, outs);
}

/// [`dot_block`] on a given path; the caller guarantees the CPU supports it.
pub(crate) fn dot_block_on<const N: usize>(
    path: Path,
    tables: &[Tables],
    inputs: &[&[u8]],
    outs: &mut [&mut [u8]],
) {
    let len = outs.iter().map(|o| o.len()).min().unwrap_or(0);
    debug_assert!(inputs.iter().all(|i| i.len() >= len));
    let done = match path {
        Path::Scalar => 0,
        // SAFETY: the caller chose a path the CPU supports ([`best`] checks); the body stays
        // within `len`, which bounds every input and output.
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { dot_avx2::<N>(tables, inputs, outs, len) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { dot_avx512::<N>(tables, inputs, outs, len) },
    };
    let n = inputs.len();
    for b in done..len {
        for (j, out) in outs.iter_mut().enumerate() {
            out[b] = inputs.iter().enumerate().fold(0u8, |acc, (i, x)| {
                let t = &tables[j * n + i];
                acc ^ t.lo[usize::from(x[b] & 0x0f)] ^ t.hi[usize::from(x[b] >> 4)]
            });
        }
    }
}

/// Defines one SIMD kernel: `$width`-byte chunks (the last one zero-padded), four
/// accumulators of `$vec`, and the given intrinsics; returns how many bytes it wrote (all).
/// One body for every instruction set, so the paths cannot drift apart.
macro_rules! simd_dot {
    ($(#[$doc:meta])* $name:ident, $feature:literal, $width:literal, $vec:ident,
     zero = $zero:ident, splat = $splat:ident, load = $load:ident, store = $store:ident,
     and = $and:ident, shr = $shr:ident, xor = $xor:ident, shuffle = $shuffle:ident,
     broadcast = $broadcast:ident) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name<const N: usize>(
            tables: &[Tables],
            inputs: &[&[u8]],
            outs: &mut [&mut [u8]],
            len: usize,
        ) -> usize {
            use std::arch::x86_64::*;
            let n = inputs.len();
            let mask = $splat(0x0f);
            for c in 0..len.div_ceil($width) {
                let off = c * $width;
                // The last chunk may be partial: it goes through zero-padded copies.
                let part = (len - off).min($width);
                let mut acc: [$vec; N] = [$zero(); N];
                for (i, x) in inputs.iter().enumerate() {
                    let v = if part == $width {
                        // SAFETY: `off + $width <= len <= x.len()`.
                        unsafe { $load(x.as_ptr().add(off).cast()) }
                    } else {
                        let mut b = [0u8; $width];
                        b[..part].copy_from_slice(&x[off..off + part]);
                        // SAFETY: `b` is `$width` bytes.
                        unsafe { $load(b.as_ptr().cast()) }
                    };
                    let l = $and(v, mask);
                    let h = $and($shr(v, 4), mask);
                    for (j, a) in acc.iter_mut().enumerate() {
                        let t = &tables[j * n + i];
                        // SAFETY: the tables are 16-byte aligned arrays of 16 bytes.
                        let (lo, hi) = unsafe {
                            (
                                $broadcast(_mm_load_si128(t.lo.as_ptr().cast())),
                                $broadcast(_mm_load_si128(t.hi.as_ptr().cast())),
                            )
                        };
                        *a = $xor(*a, $xor($shuffle(lo, l), $shuffle(hi, h)));
                    }
                }
                for (o, a) in outs.iter_mut().zip(acc) {
                    if part == $width {
                        // SAFETY: `off + $width <= len <= o.len()`.
                        unsafe { $store(o.as_mut_ptr().add(off).cast(), a) };
                    } else {
                        let mut b = [0u8; $width];
                        // SAFETY: `b` is `$width` bytes.
                        unsafe { $store(b.as_mut_ptr().cast(), a) };
                        o[off..off + part].copy_from_slice(&b[..part]);
                    }
                }
            }
            len
        }
    };
}

simd_dot!(
    /// AVX2: 32 bytes per shuffle.
    dot_avx2, "avx2", 32, __m256i,
    zero = _mm256_setzero_si256, splat = _mm256_set1_epi8, load = _mm256_loadu_si256,
    store = _mm256_storeu_si256, and = _mm256_and_si256, shr = _mm256_srli_epi16,
    xor = _mm256_xor_si256, shuffle = _mm256_shuffle_epi8, broadcast = _mm256_broadcastsi128_si256
);

simd_dot!(
    /// AVX-512BW: 64 bytes per shuffle.
    dot_avx512, "avx512f,avx512bw", 64, __m512i,
    zero = _mm512_setzero_si512, splat = _mm512_set1_epi8, load = _mm512_loadu_si512,
    store = _mm512_storeu_si512, and = _mm512_and_si512, shr = _mm512_srli_epi16,
    xor = _mm512_xor_si512, shuffle = _mm512_shuffle_epi8, broadcast = _mm512_broadcast_i32x4
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn paths() -> Vec<Path> {
        let mut p = vec![Path::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                p.push(Path::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512bw") {
                p.push(Path::Avx512);
            }
        }
        p
    }

    proptest! {
        /// Every implementation agrees with the field's definition, for 1 to 4 outputs.
        #[test]
        fn all_paths_agree(coefs in proptest::collection::vec(any::<u8>(), 4..36), len in 0usize..300, seed: u8) {
            let n = coefs.len() / 4;
            let inputs: Vec<Vec<u8>> = (0..n)
                .map(|i| (0..len).map(|b| (b as u8 ^ seed).wrapping_mul(i as u8 | 1)).collect())
                .collect();
            let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            let tables: Vec<Tables> = coefs[..4 * n].iter().map(|&c| Tables::new(c)).collect();
            for path in paths() {
                let mut outs = vec![vec![0u8; len]; 4];
                let mut o: Vec<&mut [u8]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                dot_block_on::<4>(path, &tables, &refs, &mut o);
                for (j, out) in outs.iter().enumerate() {
                    for b in 0..len {
                        let want = (0..n).fold(0u8, |acc, i| acc ^ mul(coefs[j * n + i], inputs[i][b]));
                        prop_assert_eq!(out[b], want, "path {:?} output {} byte {}", path, j, b);
                    }
                }
            }
        }
    }
}
