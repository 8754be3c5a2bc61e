//! A systematic Reed-Solomon erasure code over GF(2^8), built for small groups of packets.
//!
//! `k` data shards and `m` parity shards of equal length; any `k` of the `k + m` recover the
//! data. The parity rows form a Cauchy matrix (`1 / (x_j + y_i)` with distinct `x`, `y`), so
//! every square submatrix is invertible: the code is MDS for any `k + m <= 256`.
//!
//! Decoding costs what is missing, not what the group is: for `e` lost data shards it
//! inverts the `e × e` Cauchy submatrix of the parity rows used, folds that inverse into the
//! coefficients, and rebuilds the lost shards in one pass over the survivors and those `e`
//! parity shards — no `k × k` inversion, no intermediate buffers.
//!
//! The inner loop is a GF(2^8) dot product (`out = Σ c_i · in_i`) done with the split-nibble
//! table method: on x86_64 with AVX-512BW (64 bytes) or AVX2 (32 bytes) per `vpshufb` pair,
//! up to four outputs held in registers across all inputs; elsewhere a scalar loop.

#![warn(missing_docs)]

mod gf;
mod kernel;

pub use gf::{div, inv, mul};

/// The most shards (data + parity) in one group.
pub const MAX_SHARDS: usize = 256;

/// Why a codec could not be built or a group not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `k` is 0 or `k + m` exceeds [`MAX_SHARDS`].
    #[error("invalid group shape {k}:{m}")]
    Shape {
        /// Data shards asked for.
        k: usize,
        /// Parity shards asked for.
        m: usize,
    },
    /// Fewer than `k` shards are present.
    #[error("too few shards to recover the group")]
    TooFewShards,
    /// Shards of different lengths, or the wrong number of them.
    #[error("shards do not match the group shape")]
    ShardMismatch,
}

/// An encoder/decoder for one group shape `k:m`.
#[derive(Debug, Clone)]
pub struct Codec {
    k: usize,
    m: usize,
    /// Row-major `m × k` parity coefficients.
    coef: Vec<u8>,
    /// Split-nibble tables for every coefficient, in the same order.
    tables: Vec<kernel::Tables>,
}

impl Codec {
    /// A codec for `k` data and `m` parity shards.
    pub fn new(k: usize, m: usize) -> Result<Self, Error> {
        if k == 0 || k + m > MAX_SHARDS {
            return Err(Error::Shape { k, m });
        }
        let coef: Vec<u8> = (0..m)
            .flat_map(|j| (0..k).map(move |i| cauchy(j, i, m)))
            .collect();
        let tables = coef.iter().map(|&c| kernel::Tables::new(c)).collect();
        Ok(Self { k, m, coef, tables })
    }

    /// Data shards.
    pub fn data_shards(&self) -> usize {
        self.k
    }

    /// Parity shards.
    pub fn parity_shards(&self) -> usize {
        self.m
    }

    /// Computes the `m` parity shards of `data` (`k` shards of equal length).
    pub fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), Error> {
        let len = data.first().map_or(0, |d| d.len());
        if data.len() != self.k
            || parity.len() != self.m
            || data.iter().any(|d| d.len() != len)
            || parity.iter().any(|p| p.len() != len)
        {
            return Err(Error::ShardMismatch);
        }
        kernel::dot(&self.tables, data, parity);
        Ok(())
    }

    /// Recovers the missing data shards in place.
    ///
    /// `shards` holds the `k` data shards followed by the `m` parity shards, all of the same
    /// length; `present[i]` tells which hold valid bytes. Missing data shards are
    /// overwritten; parity shards are only read.
    pub fn reconstruct(&self, shards: &mut [&mut [u8]], present: &[bool]) -> Result<(), Error> {
        let (k, m) = (self.k, self.m);
        if shards.len() != k + m || present.len() != k + m {
            return Err(Error::ShardMismatch);
        }
        let len = shards[0].len();
        if shards.iter().any(|s| s.len() != len) {
            return Err(Error::ShardMismatch);
        }
        let lost: Vec<usize> = (0..k).filter(|&i| !present[i]).collect();
        if lost.is_empty() {
            return Ok(());
        }
        let parities: Vec<usize> = (0..m)
            .filter(|&j| present[k + j])
            .take(lost.len())
            .collect();
        if parities.len() < lost.len() {
            return Err(Error::TooFewShards);
        }
        let e = lost.len();
        // With C[a][b] = c_{parities[a], lost[b]} (a Cauchy matrix, always invertible), each
        // parity shard gives p_{j_a} = Σ_{i present} c_{j_a,i} · d_i + Σ_b C[a][b] · d_{lost b},
        // so d_lost = C⁻¹ · (p + Σ_{i present} c_{j,i} · d_i). Folding C⁻¹ into the
        // coefficients makes that a single pass over the survivors and the parity shards.
        let mut c: Vec<u8> = Vec::with_capacity(e * e);
        for &j in &parities {
            c.extend(lost.iter().map(|&x| self.coef[j * k + x]));
        }
        let inverse = gf::invert(&c, e).ok_or(Error::TooFewShards)?;
        let mut tables = Vec::with_capacity(e * k);
        for row in inverse.chunks(e) {
            for i in (0..k).filter(|&i| present[i]) {
                let v = row
                    .iter()
                    .zip(&parities)
                    .fold(0, |acc, (&r, &j)| acc ^ mul(r, self.coef[j * k + i]));
                tables.push(kernel::Tables::new(v));
            }
            tables.extend(row.iter().map(|&r| kernel::Tables::new(r)));
        }
        let (data, parity) = shards.split_at_mut(k);
        let mut inputs: Vec<&[u8]> = Vec::with_capacity(k);
        let mut outs: Vec<&mut [u8]> = Vec::with_capacity(e);
        for (i, shard) in data.iter_mut().enumerate() {
            if present[i] {
                inputs.push(&**shard);
            } else {
                outs.push(&mut **shard);
            }
        }
        inputs.extend(parities.iter().map(|&j| &*parity[j]));
        kernel::dot(&tables, &inputs, &mut outs);
        Ok(())
    }
}

/// The Cauchy coefficient of parity row `j`, data column `i`: `1 / (j + (m + i))`.
fn cauchy(j: usize, i: usize, m: usize) -> u8 {
    let x = u8::try_from(j).expect("j < 256");
    let y = u8::try_from(m + i).expect("k + m <= 256");
    inv(x ^ y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn group(k: usize, m: usize, len: usize, seed: u8) -> (Codec, Vec<Vec<u8>>) {
        let codec = Codec::new(k, m).unwrap();
        let mut shards: Vec<Vec<u8>> = (0..k)
            .map(|i| {
                (0..len)
                    .map(|b| (b as u8).wrapping_mul(31).wrapping_add(i as u8 ^ seed))
                    .collect()
            })
            .collect();
        let mut parity = vec![vec![0u8; len]; m];
        {
            let data: Vec<&[u8]> = shards.iter().map(Vec::as_slice).collect();
            let mut p: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
            codec.encode(&data, &mut p).unwrap();
        }
        shards.extend(parity);
        (codec, shards)
    }

    #[test]
    fn shapes() {
        assert!(Codec::new(0, 3).is_err());
        assert!(Codec::new(200, 57).is_err());
        assert!(Codec::new(128, 128).is_ok());
        let c = Codec::new(10, 0).unwrap();
        c.encode(&[&[1u8][..]; 10], &mut []).unwrap();
    }

    #[test]
    fn losing_parity_count_shards_recovers_exactly() {
        let (codec, shards) = group(10, 3, 1400, 7);
        for lost in [[0, 1, 2], [9, 10, 12], [3, 7, 11], [0, 5, 9]] {
            let mut work = shards.clone();
            let mut present = vec![true; 13];
            for &l in &lost {
                present[l] = false;
                work[l].fill(0xee);
            }
            let mut refs: Vec<&mut [u8]> = work.iter_mut().map(Vec::as_mut_slice).collect();
            codec.reconstruct(&mut refs, &present).unwrap();
            assert_eq!(work[..10], shards[..10], "lost {lost:?}");
        }
    }

    #[test]
    fn too_many_losses_are_an_error() {
        let (codec, mut shards) = group(4, 2, 64, 1);
        let present = [false, false, false, true, true, true];
        let mut refs: Vec<&mut [u8]> = shards.iter_mut().map(Vec::as_mut_slice).collect();
        assert_eq!(
            codec.reconstruct(&mut refs, &present),
            Err(Error::TooFewShards)
        );
    }

    proptest! {
        /// Any `<= m` erasures, for random shapes, sizes (odd ones too) and contents.
        #[test]
        fn any_m_erasures(k in 1usize..24, m in 0usize..12, len in 1usize..300, seed: u8, picks in proptest::collection::vec(any::<usize>(), 12)) {
            let (codec, shards) = group(k, m, len, seed);
            let mut present = vec![true; k + m];
            let mut lost = 0;
            for p in picks {
                if lost == m { break; }
                let i = p % (k + m);
                if present[i] { present[i] = false; lost += 1; }
            }
            let mut work = shards.clone();
            for (i, w) in work.iter_mut().enumerate() {
                if !present[i] { w.fill(0x5a); }
            }
            let mut refs: Vec<&mut [u8]> = work.iter_mut().map(Vec::as_mut_slice).collect();
            codec.reconstruct(&mut refs, &present).unwrap();
            prop_assert_eq!(&work[..k], &shards[..k]);
        }

        /// The SIMD kernel agrees with the scalar definition.
        #[test]
        fn kernel_matches_scalar(coefs in proptest::collection::vec(any::<u8>(), 1..9), len in 0usize..200, seed: u8) {
            let inputs: Vec<Vec<u8>> = (0..coefs.len())
                .map(|i| (0..len).map(|b| (b as u8 ^ seed).wrapping_mul(i as u8 | 1)).collect())
                .collect();
            let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            let tables: Vec<kernel::Tables> = coefs.iter().map(|&c| kernel::Tables::new(c)).collect();
            let mut out = vec![0u8; len];
            kernel::dot(&tables, &refs, &mut [&mut out[..]]);
            for b in 0..len {
                let want = coefs.iter().zip(&inputs).fold(0u8, |acc, (&c, x)| acc ^ mul(c, x[b]));
                prop_assert_eq!(out[b], want);
            }
        }
    }
}
