//! The across-the-rows softmax of [`super::rows::softmax_rows_slice`] for
//! `f32` rows on x86-64, with the transposes done in registers: blocks of
//! 16 rows of 16, 32, 48 or 64 columns with AVX-512, else blocks of 8 rows
//! of 8, 16, ..., 64 columns with AVX2. One kernel, generic over the vector
//! ([`Lanes`]: its width, its arithmetic and its square transpose).
//!
//! The portable path transposes each block of rows into a scratch block
//! one entry at a time, and LLVM vectorises those loops, and the maximum and
//! the sum over the columns, along the columns with gathers and scatters
//! (16-wide, stride 16): they took half of the softmax's time, as much as
//! the exponentials. Here a tile of as many rows as a vector has lanes is
//! transposed by shuffles (64 for a 16 × 16 tile, 24 for 8 × 8), the
//! maximum, the differences, the sum and the quotients are one vector
//! operation per column, and the exponentials one loop over the scratch.
//! Each value goes through the portable path's operations in its order, so
//! the bits are its bits. Without AVX-512 the portable path had taken
//! 15.6 % of JustBalancePool's forward pass on `disjoint-small`.

/// Replaces the leading whole blocks of rows of `x` (rows of `k` columns)
/// by their softmax, as [`super::rows::softmax_rows_slice`] documents it:
/// blocks of 16 rows if this CPU has AVX-512 and `k` is 16, 32, 48 or 64,
/// else blocks of 8 rows if it has AVX2 and `k` is a multiple of 8 up to
/// 64; returns how many entries it replaced (0 if it did nothing).
pub(crate) fn softmax_row_blocks_f32(x: &mut [f32], k: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let fits = |lanes: usize| k != 0 && k.is_multiple_of(lanes) && k <= MAX_COLS;
        let whole = |lanes: usize| x.len() / (lanes * k) * (lanes * k);
        if fits(16)
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512cd")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            let done = whole(16);
            // SAFETY: the CPU has the AVX-512 subsets the function is
            // compiled for (checked above)
            unsafe { x86::softmax_blocks_avx512(&mut x[..done], k) };
            return done;
        }
        if fits(8) && std::arch::is_x86_feature_detected!("avx2") {
            let done = whole(8);
            // SAFETY: the CPU has AVX2 (checked above)
            unsafe { x86::softmax_blocks_avx2(&mut x[..done], k) };
            return done;
        }
    }
    let _ = (x, k);
    0
}

/// The widest rows taken (the scratch block holds this many columns).
const MAX_COLS: usize = 64;

/// A vector of `L` `f32` lanes: what the kernel (`softmax_blocks`) needs
/// of it.
/// Each function is the one instruction (or, for `transpose`, the
/// shuffles) of its vector extension, inlined into the kernel compiled for
/// that extension.
#[cfg(target_arch = "x86_64")]
trait Lanes<const L: usize> {
    /// The vector.
    type V: Copy;
    /// A vector of `L` values, from any address.
    ///
    /// # Safety
    /// The CPU has the extension.
    unsafe fn load(p: &[f32; L]) -> Self::V;
    /// `v` into `L` values at any address.
    ///
    /// # Safety
    /// The CPU has the extension.
    unsafe fn store(p: &mut [f32; L], v: Self::V);
    /// Every lane `v`.
    ///
    /// # Safety
    /// The CPU has the extension.
    unsafe fn splat(v: f32) -> Self::V;
    /// Lane by lane `maxps(a, b)`: `b` where the two are equal or either is
    /// NaN, else the larger.
    ///
    /// # Safety
    /// The CPU has the extension.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Lane by lane `a - b`.
    ///
    /// # Safety
    /// The CPU has the extension.
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// Lane by lane `a + b`.
    ///
    /// # Safety
    /// The CPU has the extension.
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// Lane by lane `a / b`.
    ///
    /// # Safety
    /// The CPU has the extension.
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// The transpose of the `L` × `L` tile whose rows are `r`.
    ///
    /// # Safety
    /// The CPU has the extension.
    unsafe fn transpose(r: [Self::V; L]) -> [Self::V; L];
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, __m512, _mm256_add_ps, _mm256_div_ps, _mm256_loadu_ps, _mm256_max_ps,
        _mm256_permute2f128_ps, _mm256_set1_ps, _mm256_shuffle_ps, _mm256_storeu_ps, _mm256_sub_ps,
        _mm256_unpackhi_ps, _mm256_unpacklo_ps, _mm512_add_ps, _mm512_castpd_ps, _mm512_castps_pd,
        _mm512_div_ps, _mm512_loadu_ps, _mm512_max_ps, _mm512_set1_ps, _mm512_shuffle_f32x4,
        _mm512_storeu_ps, _mm512_sub_ps, _mm512_unpackhi_pd, _mm512_unpackhi_ps,
        _mm512_unpacklo_pd, _mm512_unpacklo_ps,
    };

    use super::{Lanes, MAX_COLS};
    use crate::scalar::exp_f32;

    /// AVX-512F: 16 lanes.
    pub(super) struct Avx512;

    /// AVX2 (and AVX): 8 lanes.
    pub(super) struct Avx2;

    /// The loads, stores and lane-by-lane arithmetic of an impl of
    /// [`Lanes`]: one intrinsic each (the caller's CPU has the
    /// extension).
    macro_rules! lanes_arithmetic {
        ($l:literal, $v:ty, $load:ident, $store:ident, $splat:ident,
         $max:ident, $sub:ident, $add:ident, $div:ident) => {
            type V = $v;
            #[inline(always)]
            unsafe fn load(p: &[f32; $l]) -> $v {
                // SAFETY: `$l` values at `p`; the CPU has the extension
                // (caller)
                unsafe { $load(p.as_ptr()) }
            }
            #[inline(always)]
            unsafe fn store(p: &mut [f32; $l], v: $v) {
                // SAFETY: `$l` values at `p`; the CPU has the extension
                // (caller)
                unsafe { $store(p.as_mut_ptr(), v) }
            }
            #[inline(always)]
            unsafe fn splat(v: f32) -> $v {
                // SAFETY: the CPU has the extension (caller)
                unsafe { $splat(v) }
            }
            #[inline(always)]
            unsafe fn max(a: $v, b: $v) -> $v {
                // SAFETY: the CPU has the extension (caller)
                unsafe { $max(a, b) }
            }
            #[inline(always)]
            unsafe fn sub(a: $v, b: $v) -> $v {
                // SAFETY: the CPU has the extension (caller)
                unsafe { $sub(a, b) }
            }
            #[inline(always)]
            unsafe fn add(a: $v, b: $v) -> $v {
                // SAFETY: the CPU has the extension (caller)
                unsafe { $add(a, b) }
            }
            #[inline(always)]
            unsafe fn div(a: $v, b: $v) -> $v {
                // SAFETY: the CPU has the extension (caller)
                unsafe { $div(a, b) }
            }
        };
    }

    impl Lanes<16> for Avx512 {
        lanes_arithmetic!(
            16,
            __m512,
            _mm512_loadu_ps,
            _mm512_storeu_ps,
            _mm512_set1_ps,
            _mm512_max_ps,
            _mm512_sub_ps,
            _mm512_add_ps,
            _mm512_div_ps
        );
        /// 32-bit, then 64-bit interleaves within 128-bit lanes, then two
        /// exchanges of 128-bit lanes.
        #[inline(always)]
        unsafe fn transpose(r: [__m512; 16]) -> [__m512; 16] {
            // SAFETY: the CPU has AVX-512F (caller)
            unsafe {
                let t: [__m512; 16] = array_of(
                    r[0],
                    #[inline(always)]
                    |i| {
                        let (a, b) = (r[i & !1], r[i | 1]);
                        if i % 2 == 0 {
                            _mm512_unpacklo_ps(a, b)
                        } else {
                            _mm512_unpackhi_ps(a, b)
                        }
                    },
                );
                let u: [__m512; 16] = array_of(
                    r[0],
                    #[inline(always)]
                    |i| {
                        // within each group of 4: (t0, t2) lo, hi, (t1, t3) lo, hi
                        let (b, j) = (i & !3, i % 4);
                        let (a, c) = (t[b + j / 2], t[b + j / 2 + 2]);
                        let (a, c) = (_mm512_castps_pd(a), _mm512_castps_pd(c));
                        _mm512_castpd_ps(if j % 2 == 0 {
                            _mm512_unpacklo_pd(a, c)
                        } else {
                            _mm512_unpackhi_pd(a, c)
                        })
                    },
                );
                let v: [__m512; 16] = array_of(
                    r[0],
                    #[inline(always)]
                    |i| {
                        let (b, j) = (i & !7, i % 8);
                        let (a, c) = (u[b + j % 4], u[b + j % 4 + 4]);
                        if j < 4 {
                            _mm512_shuffle_f32x4::<0x88>(a, c)
                        } else {
                            _mm512_shuffle_f32x4::<0xdd>(a, c)
                        }
                    },
                );
                array_of(
                    r[0],
                    #[inline(always)]
                    |i| {
                        let (a, c) = (v[i % 8], v[i % 8 + 8]);
                        if i < 8 {
                            _mm512_shuffle_f32x4::<0x88>(a, c)
                        } else {
                            _mm512_shuffle_f32x4::<0xdd>(a, c)
                        }
                    },
                )
            }
        }
    }

    impl Lanes<8> for Avx2 {
        lanes_arithmetic!(
            8,
            __m256,
            _mm256_loadu_ps,
            _mm256_storeu_ps,
            _mm256_set1_ps,
            _mm256_max_ps,
            _mm256_sub_ps,
            _mm256_add_ps,
            _mm256_div_ps
        );
        /// 32-bit interleaves, then 64-bit shuffles within 128-bit lanes,
        /// then an exchange of 128-bit lanes.
        #[inline(always)]
        unsafe fn transpose(r: [__m256; 8]) -> [__m256; 8] {
            // SAFETY: the CPU has AVX (caller)
            unsafe {
                let t: [__m256; 8] = array_of(
                    r[0],
                    #[inline(always)]
                    |i| {
                        let (a, b) = (r[i & !1], r[i | 1]);
                        if i % 2 == 0 {
                            _mm256_unpacklo_ps(a, b)
                        } else {
                            _mm256_unpackhi_ps(a, b)
                        }
                    },
                );
                let u: [__m256; 8] = array_of(
                    r[0],
                    #[inline(always)]
                    |i| {
                        // within each group of 4: (t0, t2) lo, hi, (t1, t3) lo, hi
                        let (b, j) = (i & !3, i % 4);
                        let (a, c) = (t[b + j / 2], t[b + j / 2 + 2]);
                        if j % 2 == 0 {
                            _mm256_shuffle_ps::<0x44>(a, c)
                        } else {
                            _mm256_shuffle_ps::<0xee>(a, c)
                        }
                    },
                );
                array_of(
                    r[0],
                    #[inline(always)]
                    |i| {
                        let (a, c) = (u[i % 4], u[i % 4 + 4]);
                        if i < 4 {
                            _mm256_permute2f128_ps::<0x20>(a, c)
                        } else {
                            _mm256_permute2f128_ps::<0x31>(a, c)
                        }
                    },
                )
            }
        }
    }

    /// `[f(0), ..., f(N - 1)]`, built in the caller (`f` inlined into it),
    /// so that the intrinsics `f` calls are inlined into the caller's
    /// vector extension: `std::array::from_fn` is compiled apart from the
    /// kernel, without the extension, and each intrinsic it reached was a
    /// call (about 4 % of DiffPool's forward and backward pass on
    /// `single-1e6`).
    #[inline(always)]
    fn array_of<V: Copy, const N: usize>(fill: V, mut f: impl FnMut(usize) -> V) -> [V; N] {
        let mut a = [fill; N];
        for (i, v) in a.iter_mut().enumerate() {
            *v = f(i);
        }
        a
    }

    /// The scratch block of [`softmax_blocks`], on a cache line.
    #[repr(align(64))]
    struct Columns<const L: usize>([[f32; L]; MAX_COLS]);

    /// [`softmax_blocks`] with 16 lanes.
    ///
    /// # Safety
    /// The CPU has the AVX-512 subsets enabled here.
    #[target_feature(enable = "avx512f,avx512bw,avx512cd,avx512dq,avx512vl")]
    pub(super) unsafe fn softmax_blocks_avx512(x: &mut [f32], k: usize) {
        // SAFETY: the CPU has AVX-512F (caller)
        unsafe { softmax_blocks::<16, Avx512>(x, k) }
    }

    /// [`softmax_blocks`] with 8 lanes.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn softmax_blocks_avx2(x: &mut [f32], k: usize) {
        // SAFETY: the CPU has AVX (caller)
        unsafe { softmax_blocks::<8, Avx2>(x, k) }
    }

    /// The softmax of every block of `L` rows of `x` (`k` columns, a
    /// multiple of `L` up to [`MAX_COLS`]; `x` whole blocks). Per row, as
    /// the portable path: $m$ folded by `max` from $-\infty$ in column order
    /// (`maxps` keeps $m$ where the value is NaN or equal to it, as
    /// `f32::max` does up to the sign of a zero maximum, which changes no
    /// difference $z_j - m$ but that of $z_j = -0$, whose exponential is 1
    /// either way), then $e^{z_j - m}$ by [`exp_f32`], their sum from $+0$
    /// in column order, and each one divided by it. Each block goes through
    /// a scratch block of its columns (column $j$ of the `L` rows in
    /// `t[j]`), `L` × `L` tiles transposed in registers on the way in and
    /// out.
    ///
    /// # Safety
    /// The CPU has `S`'s vector extension.
    #[inline(always)]
    unsafe fn softmax_blocks<const L: usize, S: Lanes<L>>(x: &mut [f32], k: usize) {
        let tiles = k / L;
        let mut t = Columns([[0.0_f32; L]; MAX_COLS]);
        let t = &mut t.0;
        // SAFETY (every block below): the CPU has S's extension (caller)
        unsafe {
            for block in x.chunks_exact_mut(L * k) {
                for g in 0..tiles {
                    let r: [S::V; L] = array_of(
                        S::splat(0.0),
                        #[inline(always)]
                        |i| S::load(block[i * k + g * L..][..L].try_into().expect("L values")),
                    );
                    for (col, c) in t[g * L..][..L].iter_mut().zip(S::transpose(r)) {
                        S::store(col, c);
                    }
                }
                let cols = &mut t[..k];
                let mut m = S::splat(f32::NEG_INFINITY);
                for c in cols.iter() {
                    m = S::max(S::load(c), m);
                }
                for c in cols.iter_mut() {
                    S::store(c, S::sub(S::load(c), m));
                }
                for v in cols.as_flattened_mut() {
                    *v = exp_f32(*v);
                }
                let mut total = S::splat(0.0);
                for c in cols.iter() {
                    total = S::add(total, S::load(c));
                }
                for c in cols.iter_mut() {
                    S::store(c, S::div(S::load(c), total));
                }
                for g in 0..tiles {
                    let c: [S::V; L] = array_of(
                        S::splat(0.0),
                        #[inline(always)]
                        |j| S::load(&t[g * L + j]),
                    );
                    for (i, r) in S::transpose(c).into_iter().enumerate() {
                        let row: &mut [f32; L] = (&mut block[i * k + g * L..][..L])
                            .try_into()
                            .expect("L values");
                        S::store(row, r);
                    }
                }
            }
        }
    }
}
