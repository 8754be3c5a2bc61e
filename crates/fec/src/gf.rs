//! Arithmetic in GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d).

/// `EXP[i] = g^i` for the generator g = 2, doubled so that `EXP[a + b]` needs no modulo.
const EXP: [u8; 512] = {
    let mut t = [0u8; 512];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 512 {
        t[i] = x as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= 0x11d;
        }
        i += 1;
    }
    t
};

/// `LOG[x]` for x ≠ 0 (LOG[0] is unused).
const LOG: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 255 {
        t[EXP[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// `a · b`.
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    EXP[usize::from(LOG[usize::from(a)]) + usize::from(LOG[usize::from(b)])]
}

/// `1 / a`.
///
/// # Panics
/// If `a` is 0.
pub fn inv(a: u8) -> u8 {
    assert!(a != 0, "0 has no inverse in GF(2^8)");
    EXP[255 - usize::from(LOG[usize::from(a)])]
}

/// `a / b`.
///
/// # Panics
/// If `b` is 0.
pub fn div(a: u8, b: u8) -> u8 {
    mul(a, inv(b))
}

/// Inverts the row-major `n × n` matrix `m` (Gauss-Jordan); `None` if it is singular.
pub(crate) fn invert(m: &[u8], n: usize) -> Option<Vec<u8>> {
    let mut a = m.to_vec();
    let mut out = vec![0u8; n * n];
    for i in 0..n {
        out[i * n + i] = 1;
    }
    for col in 0..n {
        let pivot = (col..n).find(|&r| a[r * n + col] != 0)?;
        if pivot != col {
            for c in 0..n {
                a.swap(pivot * n + c, col * n + c);
                out.swap(pivot * n + c, col * n + c);
            }
        }
        let f = inv(a[col * n + col]);
        for c in 0..n {
            a[col * n + c] = mul(a[col * n + c], f);
            out[col * n + c] = mul(out[col * n + c], f);
        }
        for r in 0..n {
            let g = a[r * n + col];
            if r != col && g != 0 {
                for c in 0..n {
                    a[r * n + c] ^= mul(g, a[col * n + c]);
                    out[r * n + c] ^= mul(g, out[col * n + c]);
                }
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_laws() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "{a}");
            assert_eq!(mul(a, 1), a);
            assert_eq!(mul(a, 0), 0);
            assert_eq!(div(mul(a, 7), 7), a);
        }
        // Spot values for the 0x11d field.
        assert_eq!(mul(2, 0x80), 0x1d);
        assert_eq!(mul(3, 7), 9);
    }

    #[test]
    fn inverse_round_trips() {
        let m = [3u8, 7, 11, 2, 9, 4, 1, 1, 5];
        let i = invert(&m, 3).unwrap();
        for r in 0..3 {
            for c in 0..3 {
                let v = (0..3).fold(0u8, |acc, t| acc ^ mul(m[r * 3 + t], i[t * 3 + c]));
                assert_eq!(v, u8::from(r == c));
            }
        }
        assert!(invert(&[1, 1, 1, 1], 2).is_none());
    }
}
