//! The across-the-rows softmax of [`super::rows::softmax_rows_slice`] for
//! `f32` rows of 16, 32, 48 or 64 columns on x86-64 with AVX-512, with the
//! transposes done in registers.
//!
//! The portable path transposes each block of 16 rows into a scratch block
//! one entry at a time, and LLVM vectorises those loops, and the maximum and
//! the sum over the columns, along the columns with gathers and scatters
//! (16-wide, stride 16): they took half of the softmax's time, as much as
//! the exponentials. Here a 16 × 16 tile is transposed by 64 shuffles, the
//! maximum, the differences, the sum and the quotients are one vector
//! operation per column, and the exponentials one loop over the scratch.
//! Each value goes through the portable path's operations in its order, so
//! the bits are its bits.

/// Replaces the leading whole blocks of 16 rows of `x` (rows of `k`
/// columns) by their softmax, as [`super::rows::softmax_rows_slice`]
/// documents it, if this CPU has AVX-512 and `k` is 16, 32, 48 or 64;
/// returns how many entries it replaced (0 if it did nothing).
pub(crate) fn softmax_row_blocks_f32(x: &mut [f32], k: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if k != 0
            && k.is_multiple_of(LANES)
            && k <= MAX_COLS
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512cd")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            let done = x.len() / (LANES * k) * (LANES * k);
            // SAFETY: the CPU has the AVX-512 subsets the function is
            // compiled for (checked above)
            unsafe { avx512::softmax_blocks(&mut x[..done], k) };
            return done;
        }
    }
    let _ = (x, k);
    0
}

/// Rows per block, and columns per transposed tile: one `f32` vector.
const LANES: usize = 16;

/// The widest rows taken (the scratch block holds this many columns).
const MAX_COLS: usize = 64;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_castpd_ps, _mm512_castps_pd, _mm512_div_ps, _mm512_load_ps,
        _mm512_loadu_ps, _mm512_max_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_shuffle_f32x4,
        _mm512_store_ps, _mm512_storeu_ps, _mm512_sub_ps, _mm512_unpackhi_pd, _mm512_unpackhi_ps,
        _mm512_unpacklo_pd, _mm512_unpacklo_ps,
    };

    use super::{LANES, MAX_COLS};
    use crate::scalar::exp_f32;

    /// The transposed block: column $j$ of the 16 rows in `0[j]`.
    #[repr(align(64))]
    struct Columns([[f32; LANES]; MAX_COLS]);

    /// The transpose of the 16 × 16 tile whose rows are `r`: 32-bit, then
    /// 64-bit interleaves within 128-bit lanes, then two exchanges of
    /// 128-bit lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: &[__m512; LANES]) -> [__m512; LANES] {
        let z = _mm512_setzero_ps();
        let mut t = [z; LANES];
        for i in 0..LANES / 2 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [z; LANES];
        for b in (0..LANES).step_by(4) {
            let (t0, t1) = (_mm512_castps_pd(t[b]), _mm512_castps_pd(t[b + 1]));
            let (t2, t3) = (_mm512_castps_pd(t[b + 2]), _mm512_castps_pd(t[b + 3]));
            u[b] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
            u[b + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
            u[b + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
            u[b + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
        }
        let mut v = [z; LANES];
        for b in (0..LANES).step_by(8) {
            for k in 0..4 {
                v[b + k] = _mm512_shuffle_f32x4::<0x88>(u[b + k], u[b + k + 4]);
                v[b + k + 4] = _mm512_shuffle_f32x4::<0xdd>(u[b + k], u[b + k + 4]);
            }
        }
        let mut c = [z; LANES];
        for k in 0..LANES / 2 {
            c[k] = _mm512_shuffle_f32x4::<0x88>(v[k], v[k + 8]);
            c[k + 8] = _mm512_shuffle_f32x4::<0xdd>(v[k], v[k + 8]);
        }
        c
    }

    /// A column of [`Columns`] as a vector.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(c: &[f32; LANES]) -> __m512 {
        // SAFETY: a column of `Columns` is 16 values on 64 bytes
        unsafe { _mm512_load_ps(c.as_ptr()) }
    }

    /// A vector into a column of [`Columns`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store(c: &mut [f32; LANES], v: __m512) {
        // SAFETY: a column of `Columns` is 16 values on 64 bytes
        unsafe { _mm512_store_ps(c.as_mut_ptr(), v) }
    }

    /// The softmax of every block of 16 rows of `x` (`k` columns, a
    /// multiple of 16 up to 64; `x` whole blocks). Per row, as the portable
    /// path: $m$ folded by `max` from $-\infty$ in column order (`maxps`
    /// keeps $m$ where the value is NaN or equal to it, as `f32::max` does
    /// up to the sign of a zero maximum, which changes no difference
    /// $z_j - m$ but that of $z_j = -0$, whose exponential is 1 either way),
    /// then $e^{z_j - m}$ by [`exp_f32`], their sum from $+0$ in column
    /// order, and each one divided by it.
    #[target_feature(enable = "avx512f,avx512bw,avx512cd,avx512dq,avx512vl")]
    pub(super) fn softmax_blocks(x: &mut [f32], k: usize) {
        let tiles = k / LANES;
        let mut t = Columns([[0.0; LANES]; MAX_COLS]);
        for block in x.chunks_exact_mut(LANES * k) {
            for g in 0..tiles {
                let mut r = [_mm512_setzero_ps(); LANES];
                for (i, ri) in r.iter_mut().enumerate() {
                    let row = &block[i * k + g * LANES..][..LANES];
                    // SAFETY: `row` holds 16 values
                    *ri = unsafe { _mm512_loadu_ps(row.as_ptr()) };
                }
                for (col, c) in t.0[g * LANES..][..LANES].iter_mut().zip(transpose16(&r)) {
                    store(col, c);
                }
            }
            let cols = &mut t.0[..k];
            let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
            for c in cols.iter() {
                m = _mm512_max_ps(load(c), m);
            }
            for c in cols.iter_mut() {
                store(c, _mm512_sub_ps(load(c), m));
            }
            for v in cols.as_flattened_mut() {
                *v = exp_f32(*v);
            }
            let mut total = _mm512_setzero_ps();
            for c in cols.iter() {
                total = _mm512_add_ps(total, load(c));
            }
            for c in cols.iter_mut() {
                store(c, _mm512_div_ps(load(c), total));
            }
            for g in 0..tiles {
                let mut c = [_mm512_setzero_ps(); LANES];
                for (cj, col) in c.iter_mut().zip(&t.0[g * LANES..][..LANES]) {
                    *cj = load(col);
                }
                for (i, r) in transpose16(&c).into_iter().enumerate() {
                    let row = &mut block[i * k + g * LANES..][..LANES];
                    // SAFETY: `row` holds 16 values
                    unsafe { _mm512_storeu_ps(row.as_mut_ptr(), r) };
                }
            }
        }
    }
}
