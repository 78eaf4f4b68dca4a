//! Inner loops on plain row slices, shared by the kernels: dot products,
//! scaled additions, finiteness scans and row-block iteration over
//! standard-layout matrices.
//!
//! Building an ndarray view per row or per stored entry costs more than the
//! short products these kernels do (rows of $K = 16$ or $F = 64$ values), so
//! the hot loops run on `&[T]` slices. Each function fixes its order of
//! operations, which depends only on the slice length: the same inputs give
//! the same bits on every call and every thread.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use ndarray::{s, Array1, Array2, ArrayView2};
use rayon::prelude::*;

use super::ROW_BLOCK;
use crate::scalar::Scalar;

/// $\sum_j t(a_j, b_j)$ over two slices of the same length, in the order
/// documented at [`dot`] (fixed, so the bits do not depend on the caller or
/// the thread count).
#[inline(always)]
pub(crate) fn lane_sum<T: Scalar>(a: &[T], b: &[T], t: impl Fn(T, T) -> T) -> T {
    debug_assert_eq!(a.len(), b.len());
    let mut p = [T::zero(); 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            p[l] += t(x[l], y[l]);
        }
    }
    let mut sum = fold_lanes(p);
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        sum += t(x, y);
    }
    sum
}

/// The eight partial sums of [`lane_sum`] and [`lane_sum_indexed`] folded
/// in [`dot`]'s order, from $+0$: $(p_0 + p_4)$, then $(p_1 + p_5)$,
/// $(p_2 + p_6)$, $(p_3 + p_7)$.
#[inline(always)]
fn fold_lanes<T: Scalar>(p: [T; 8]) -> T {
    let mut sum = T::zero();
    sum += p[0] + p[4];
    sum += p[1] + p[5];
    sum += p[2] + p[6];
    sum += p[3] + p[7];
    sum
}

/// $\sum_j t(j, a_j)$ in the order of [`lane_sum`] (so with `t(j, v) = v`
/// the bits of [`sum`]): for a term that depends on the entry's position.
#[inline(always)]
pub(crate) fn lane_sum_indexed<T: Scalar>(a: &[T], t: impl Fn(usize, T) -> T) -> T {
    let mut p = [T::zero(); 8];
    let mut ca = a.chunks_exact(8);
    for (c, x) in (&mut ca).enumerate() {
        for l in 0..8 {
            p[l] += t(8 * c + l, x[l]);
        }
    }
    let mut sum = fold_lanes(p);
    let done = a.len() - ca.remainder().len();
    for (j, &x) in ca.remainder().iter().enumerate() {
        sum += t(done + j, x);
    }
    sum
}

/// $\langle a, b\rangle$ of two slices of the same length, in ndarray's
/// order (its `unrolled_dot`, so the bits equal `ArrayView1::dot`'s on
/// contiguous rows): eight interleaved partial sums $p_0..p_7$ (entry $j$
/// to $p_{j \bmod 8}$) over the longest multiple of 8, combined as
/// $((((0 + (p_0 + p_4)) + (p_1 + p_5)) + (p_2 + p_6)) + (p_3 + p_7))$, then
/// the remaining entries added in order. The partial sums let the compiler
/// vectorise the loop without reassociating.
#[inline]
pub fn dot<T: Scalar>(a: &[T], b: &[T]) -> T {
    lane_sum(a, b, |x, y| x * y)
}

/// $\sum_j a_j$ in ndarray's order for a contiguous array (its `sum`,
/// through `unrolled_fold`): the order of [`dot`], eight interleaved
/// partial sums then the remaining entries. Inlined into its caller, where
/// ndarray's `sum` is a call per slice.
///
/// ```
/// use graphpool::kernels::rows::sum;
/// let a: Vec<f32> = (0..19).map(|i| 1.0 / (i as f32 + 3.0)).collect();
/// assert_eq!(sum(&a), ndarray::aview1(&a).sum());
/// ```
#[inline]
pub fn sum<T: Scalar>(a: &[T]) -> T {
    lane_sum(a, a, |x, _| x)
}

simd_levels! {
/// Row $i$ of `out` (rows of $F$ = `f`) set to $g_i\, x_{n_i}$ for the
/// nodes $n$ = `nodes` and scales $g$ = `scales` (one product per entry),
/// from the row-major `x`: a selection's gated rows. Each source row is
/// prefetched [`PREFETCH_AHEAD`] rows ahead (`ahead`: the whole list of
/// nodes and this block's position in it). Compiled for each SIMD level;
/// one multiplication per entry, so every level gives the same bits.
///
/// ```
/// use graphpool::kernels::rows::scaled_rows;
/// let x = [1.0_f32, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let mut out = [0.0; 4];
/// scaled_rows(&x, 2, &[2, 0], &[0.5, -1.0], (&[2, 0], 0), &mut out);
/// assert_eq!(out, [2.5, 3.0, -1.0, -2.0]);
/// ```
pub fn scaled_rows<T: Scalar>(
    x: &[T],
    f: usize,
    nodes: &[usize],
    scales: &[T],
    ahead: (&[usize], usize),
    out: &mut [T],
) {
    let (list, first) = ahead;
    for (i, (row, (&n, &g))) in out
        .chunks_exact_mut(f.max(1))
        .zip(nodes.iter().zip(scales))
        .enumerate()
    {
        prefetch_row_ahead(x, f, list, first + i);
        for (o, &v) in row.iter_mut().zip(&x[n * f..(n + 1) * f]) {
            *o = g * v;
        }
    }
}
}

simd_levels! {
/// `out[i]` $= \langle x_{\text{first} + i}, w\rangle$ ([`dot`]) for the
/// rows `first..first + out.len()` of the row-major `x` ($\cdot \times F$,
/// $F$ = `w.len()`): the scores of a run of rows. Compiled for each SIMD
/// level; [`dot`]'s fixed partial sums give the same bits on every one.
///
/// ```
/// use graphpool::kernels::rows::{dot, dot_rows};
/// let x = [1.0_f32, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let mut out = [0.0; 2];
/// dot_rows(&x, &[0.5, -1.0], 1, &mut out);
/// assert_eq!(out, [dot(&x[2..4], &[0.5, -1.0]), dot(&x[4..6], &[0.5, -1.0])]);
/// assert_eq!(out, [-2.5, -3.5]);
/// ```
pub fn dot_rows<T: Scalar>(x: &[T], w: &[T], first: usize, out: &mut [T]) {
    let f = w.len();
    for (i, o) in out.iter_mut().enumerate() {
        let n = first + i;
        *o = dot(&x[n * f..(n + 1) * f], w);
    }
}
}

/// $o \leftarrow o + w\,x$ entrywise.
#[inline]
pub fn axpy<T: Scalar>(o: &mut [T], w: T, x: &[T]) {
    debug_assert_eq!(o.len(), x.len());
    for (o, &v) in o.iter_mut().zip(x) {
        *o += w * v;
    }
}

/// Widest product (output columns) that the slice kernels [`rows_times`]
/// and [`outer_sum`] take; [`crate::nn::matmul`] sends wider ones to a GEMM.
pub const SMALL_COLS: usize = 64;

/// $o = \sum_j x_j\, W_j$ for a row $x$ ($F$) and a small row-major $W$
/// ($F \times C$, $C$ = `out.len()`): `out` is set to 0, then row $j$ of $W$
/// times $x_j$ is added for $j = 0, 1, \dots$ in order ([`axpy`]). Every
/// output column is its own sum, so the vector width does not change the
/// bits.
#[inline(always)]
pub fn row_times<T: Scalar>(x: &[T], w: &[T], out: &mut [T]) {
    let c = out.len();
    debug_assert_eq!(w.len(), x.len() * c);
    out.fill(T::zero());
    if c > 0 {
        for (&xv, wr) in x.iter().zip(w.chunks_exact(c)) {
            axpy(out, xv, wr);
        }
    }
}

simd_levels! {
/// $O = X W$ row by row for $X$ ($R \times F$, row-major `x`) and a small
/// $W$ ($F \times C$, row-major `w`, $C$ = `c`; any width, but the kernel is
/// tuned for $C \le$ [`SMALL_COLS`]): each row of
/// `out` ($R \times C$) is [`row_times`], then plus `bias` if given; with
/// `accumulate` the row's product is formed first and added once to the
/// old value of the row. Compiled for each SIMD level and chosen at run
/// time; the loops run across output columns (a row's sums stay in
/// registers for $C \in \{8, 16, 32, 64\}$), so every level and every
/// width gives the same bits.
pub fn rows_times<T: Scalar>(
    x: &[T],
    f: usize,
    w: &[T],
    c: usize,
    bias: Option<&[T]>,
    accumulate: bool,
    out: &mut [T],
) {
    debug_assert_eq!(w.len(), f * c);
    if c == 0 {
        return;
    }
    // a constant of each SIMD level's copy
    let avx512 = multiversion::target::target_cfg_f!(target_feature = "avx512f");
    if register_kernel(x, f, w, c, bias, accumulate, out, avx512) {
        return;
    }
    if f > 0 && c < SMALL_COLS {
        padded_rows_times(x, f, w, c, bias, accumulate, out, avx512);
        return;
    }
    // one row's sums at a time
    let mut scratch = ScratchRow::new();
    let p = scratch.zeros(c);
    for (i, o) in out.chunks_exact_mut(c).enumerate() {
        // F = 0: empty sums, 0 (+ bias)
        row_times(&x[i * f..(i + 1) * f], w, p);
        finish_row(p, bias, accumulate, o);
    }
}
}

/// [`rows_times`] by a register kernel when there is one for `c` (and
/// $F > 0$); `false`, with `out` untouched, otherwise. `avx512`: whether
/// the SIMD level has AVX-512's 32 vector registers.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn register_kernel<T: Scalar>(
    x: &[T],
    f: usize,
    w: &[T],
    c: usize,
    bias: Option<&[T]>,
    accumulate: bool,
    out: &mut [T],
    avx512: bool,
) -> bool {
    match c {
        _ if f == 0 => return false,
        // one column (DMoNPool's S d and its VJP): eight rows' sums at a
        // time, eight independent chains of additions
        1 => rows_times_octs::<T, 1>(x, f, w, bias, accumulate, out),
        8 => rows_times_quads::<T, 8>(x, f, w, bias, accumulate, out),
        // eight rows of 16 sums: 8 AVX-512 registers in f32, 16 in f64; with
        // AVX2's 16 they would spill
        16 if avx512 => rows_times_octs::<T, 16>(x, f, w, bias, accumulate, out),
        16 => rows_times_quads::<T, 16>(x, f, w, bias, accumulate, out),
        // four rows of 32 sums: 8 AVX-512 registers in f32, 16 in f64
        32 if avx512 => rows_times_quads::<T, 32>(x, f, w, bias, accumulate, out),
        // two rows of 32 sums in 8 AVX2 registers in f32; in f64, in slabs
        // of 16
        32 if std::mem::size_of::<T>() == 4 => {
            rows_times_slabs::<T, 32, 32>(x, f, w, bias, accumulate, out)
        }
        32 => rows_times_slabs::<T, 32, 16>(x, f, w, bias, accumulate, out),
        // two rows of 64 sums fill half of AVX-512's 32 registers in f32;
        // with AVX2's 16 (or in f64) they would spill
        64 if std::mem::size_of::<T>() == 4 && avx512 => {
            rows_times_slabs::<T, 64, 64>(x, f, w, bias, accumulate, out)
        }
        // otherwise two rows in slabs of 32 sums (`f32`) or 16 (`f64`)
        64 if std::mem::size_of::<T>() == 4 => {
            rows_times_slabs::<T, 64, 32>(x, f, w, bias, accumulate, out)
        }
        64 => rows_times_slabs::<T, 64, 16>(x, f, w, bias, accumulate, out),
        _ => return false,
    }
    true
}

/// [`rows_times`] for a width $C$ between the register kernels' (below
/// [`SMALL_COLS`], $F > 0$): the product at the next kernel's width
/// (8, 16, 32 or 64) with $W$ padded by columns of zeros, a block of rows
/// at a time, then each row's first $C$ sums finished (bias, accumulate)
/// into `out`. Every output column is its own sum, in the same order, so
/// the padding leaves the bits of the $C$ real ones. For $C = 10$ (a
/// MinCutPool with ten clusters on `disjoint-small`), one row at a time
/// through a loop of runtime width took 60 % of the forward pass.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn padded_rows_times<T: Scalar>(
    x: &[T],
    f: usize,
    w: &[T],
    c: usize,
    bias: Option<&[T]>,
    accumulate: bool,
    out: &mut [T],
    avx512: bool,
) {
    const BLOCK: usize = 64;
    let wide = c.next_power_of_two().max(8);
    let mut wp = vec![T::zero(); f * wide];
    for (dst, src) in wp.chunks_exact_mut(wide).zip(w.chunks_exact(c)) {
        dst[..c].copy_from_slice(src);
    }
    let mut sums = vec![T::zero(); BLOCK * wide];
    for (xb, ob) in x.chunks(BLOCK * f).zip(out.chunks_mut(BLOCK * c)) {
        let sums = &mut sums[..ob.len() / c * wide];
        let done = register_kernel(xb, f, &wp, wide, None, false, sums, avx512);
        debug_assert!(done, "a register kernel for every padded width");
        for (p, o) in sums.chunks_exact_mut(wide).zip(ob.chunks_exact_mut(c)) {
            finish_row(&mut p[..c], bias, accumulate, o);
        }
    }
}

/// [`rows_times`] for $C$ known at compile time, one row at a time: the
/// row's entries read by an iterator zipped with the rows of $W$ (no index
/// to check), its $C$ sums in registers. It serves the last rows of the
/// kernels below; [`rows_times_quads`], [`rows_times_octs`] and
/// [`rows_times_slabs`] take every width with a register kernel. (A
/// version indexed by `j` kept the sums on the stack: the check of the
/// index is an exit from the loop, so the compiler stored the sums on
/// every step.)
#[inline(always)]
fn rows_times_one<T: Scalar, const C: usize>(
    x: &[T],
    f: usize,
    w: &[T],
    bias: Option<&[T]>,
    accumulate: bool,
    out: &mut [T],
) {
    for (xr, o) in x.chunks_exact(f).zip(out.chunks_exact_mut(C)) {
        let mut p = [T::zero(); C];
        for (&xv, wr) in xr.iter().zip(w.chunks_exact(C)) {
            let wr: &[T; C] = wr.try_into().expect("chunks of C");
            for l in 0..C {
                p[l] += xv * wr[l];
            }
        }
        finish_row(&mut p, bias, accumulate, o);
    }
}

/// [`rows_times`] for $C$ known at compile time, two rows at a time and
/// their columns in slabs of `H` ($H$ divides $C$): for each slab, the two
/// rows' $2H$ sums stay in registers while the two rows are read along
/// $W$'s slab, so each vector of $W$ is loaded once for both rows. With
/// $H = C$, two whole rows ($C = 64$ in `f32` with AVX-512, where four
/// would not fit in the registers, and $C = 32$ in `f32` with AVX2; against
/// one row at a time, 30 % faster in cache: 300k rows of $F = 16$, one
/// thread, 7.2 → 5.1 ms). With $H < C$, for $C = 64$ in `f32` with AVX2
/// ($H = 32$: eight of its 16 registers), where two rows of 64 sums would
/// spill and one row loads all of $W$ again for each row. Every output
/// entry is the same sum in the same order, so the slabs leave the bits of
/// one row at a time. An odd last row by [`rows_times_one`].
#[inline(always)]
fn rows_times_slabs<T: Scalar, const C: usize, const H: usize>(
    x: &[T],
    f: usize,
    w: &[T],
    bias: Option<&[T]>,
    accumulate: bool,
    out: &mut [T],
) {
    debug_assert_eq!(C % H, 0);
    let mut xb = x.chunks_exact(2 * f);
    let mut ob = out.chunks_exact_mut(2 * C);
    for (xs, os) in (&mut xb).zip(&mut ob) {
        let (x0, x1) = xs.split_at(f);
        let (o0, o1) = os.split_at_mut(C);
        for h in (0..C).step_by(H) {
            let mut p0 = [T::zero(); H];
            let mut p1 = [T::zero(); H];
            for ((wr, &a), &b) in w.chunks_exact(C).zip(x0).zip(x1) {
                let wr: &[T; H] = wr[h..h + H].try_into().expect("a slab of H");
                for l in 0..H {
                    p0[l] += a * wr[l];
                    p1[l] += b * wr[l];
                }
            }
            let bias = bias.map(|b| &b[h..h + H]);
            finish_row(&mut p0, bias, accumulate, &mut o0[h..h + H]);
            finish_row(&mut p1, bias, accumulate, &mut o1[h..h + H]);
        }
    }
    rows_times_one::<T, C>(xb.remainder(), f, w, bias, accumulate, ob.into_remainder());
}

/// [`rows_times`] for $C$ known at compile time, eight rows at a time:
/// [`rows_times_quads`] with eight sums of $C$ (for $C = 16$ with AVX-512,
/// whose 32 registers hold them: eight chains of additions instead of
/// four; in cache, one thread, 300k rows of $F = 64$: 4.4 → 3.8 ms; and
/// for $C = 1$, eight scalar sums). The last rows (fewer than eight): from
/// [`OCT_PAD_FROM`] on, as a block of eight whose missing rows repeat the
/// last one; otherwise by [`rows_times_quads`].
#[inline(always)]
fn rows_times_octs<T: Scalar, const C: usize>(
    x: &[T],
    f: usize,
    w: &[T],
    bias: Option<&[T]>,
    accumulate: bool,
    out: &mut [T],
) {
    let mut xb = x.chunks_exact(8 * f);
    let mut ob = out.chunks_exact_mut(8 * C);
    for (i, (xs, os)) in (&mut xb).zip(&mut ob).enumerate() {
        // the rows two steps ahead: eight rows read a line of each in turn,
        // which the hardware prefetcher follows less well than one stream
        if let Some(ahead) = x.get((i + 2) * 8 * f..(i + 3) * 8 * f) {
            prefetch(ahead);
        }
        let mut p = oct_sums::<T, C>(std::array::from_fn(|r| &xs[r * f..(r + 1) * f]), w);
        for (p, o) in p.iter_mut().zip(os.chunks_exact_mut(C)) {
            finish_row(p, bias, accumulate, o);
        }
    }
    let (xr, or) = (xb.remainder(), ob.into_remainder());
    let rows = or.len() / C;
    if rows >= OCT_PAD_FROM {
        // the last rows summed eight at a time too (a graph of 30 nodes
        // ends in 6 rows), the missing ones standing in for by the last
        // row: their sums are dropped, and a row's sums do not depend on
        // the other rows
        let mut p = oct_sums::<T, C>(
            std::array::from_fn(|r| &xr[r.min(rows - 1) * f..(r.min(rows - 1) + 1) * f]),
            w,
        );
        for (p, o) in p.iter_mut().zip(or.chunks_exact_mut(C)) {
            finish_row(p, bias, accumulate, o);
        }
        return;
    }
    rows_times_quads::<T, C>(xr, f, w, bias, accumulate, or);
}

/// The fewest last rows (of fewer than eight) that [`rows_times_octs`]
/// sums as a block of eight rather than four and fewer at a time.
const OCT_PAD_FROM: usize = 3;

/// The sums of eight rows `xs` (of $F$ entries each) times $W$ ($F \times
/// C$): row $r$'s $p_r = \sum_j x_{rj} W_j$, each entry its own multiply
/// and add in order of $j$ from $+0$ (the bits of [`row_times`]).
#[inline(always)]
fn oct_sums<T: Scalar, const C: usize>(xs: [&[T]; 8], w: &[T]) -> [[T; C]; 8] {
    let [x0, x1, x2, x3, x4, x5, x6, x7] = xs;
    let mut p = [[T::zero(); C]; 8];
    let [p0, p1, p2, p3, p4, p5, p6, p7] = &mut p;
    let xs = x0.iter().zip(x1).zip(x2).zip(x3);
    let xs = xs.zip(x4.iter().zip(x5).zip(x6).zip(x7));
    for (((((&a, &b), &c), &d), (((&e, &g), &h), &k)), wr) in xs.zip(w.chunks_exact(C)) {
        let wr: &[T; C] = wr.try_into().expect("chunks of C");
        for l in 0..C {
            p0[l] += a * wr[l];
            p1[l] += b * wr[l];
            p2[l] += c * wr[l];
            p3[l] += d * wr[l];
            p4[l] += e * wr[l];
            p5[l] += g * wr[l];
            p6[l] += h * wr[l];
            p7[l] += k * wr[l];
        }
    }
    p
}

/// [`rows_times`] for $C$ known at compile time, four rows at a time: the
/// four rows' entries are read by iterators zipped with the rows of $W$
/// (no index to check) and their sums kept in four separate arrays, which
/// the compiler keeps in registers (four independent chains of additions;
/// each row of $W$ loaded once for the four). An array of four rows' sums
/// indexed by row and `j` computes the same, but there the compiler
/// checked the strided indices and stored the sums to the stack on every
/// step. In cache, 300k rows, one thread: $C = 16$ from $F = 64$
/// 5.1 → 4.4 ms; $C = 8$ from $F = 64$ 19.4 → 3.4 ms; $C = 32$ from
/// $F = 64$ (against two rows) 8.5 → 5.9 ms. The last rows (fewer than
/// four) by [`rows_times_one`].
#[inline(always)]
fn rows_times_quads<T: Scalar, const C: usize>(
    x: &[T],
    f: usize,
    w: &[T],
    bias: Option<&[T]>,
    accumulate: bool,
    out: &mut [T],
) {
    let mut xb = x.chunks_exact(4 * f);
    let mut ob = out.chunks_exact_mut(4 * C);
    for (xs, os) in (&mut xb).zip(&mut ob) {
        let (x0, rest) = xs.split_at(f);
        let (x1, rest) = rest.split_at(f);
        let (x2, x3) = rest.split_at(f);
        let mut p0 = [T::zero(); C];
        let mut p1 = [T::zero(); C];
        let mut p2 = [T::zero(); C];
        let mut p3 = [T::zero(); C];
        for ((((wr, &a), &b), &c), &d) in w.chunks_exact(C).zip(x0).zip(x1).zip(x2).zip(x3) {
            let wr: &[T; C] = wr.try_into().expect("chunks of C");
            for l in 0..C {
                p0[l] += a * wr[l];
                p1[l] += b * wr[l];
                p2[l] += c * wr[l];
                p3[l] += d * wr[l];
            }
        }
        for (p, o) in [&mut p0, &mut p1, &mut p2, &mut p3]
            .into_iter()
            .zip(os.chunks_exact_mut(C))
        {
            finish_row(p, bias, accumulate, o);
        }
    }
    rows_times_one::<T, C>(xb.remainder(), f, w, bias, accumulate, ob.into_remainder());
}

/// `o = p (+ bias)`, or `o += p (+ bias)` when `accumulate`.
#[inline(always)]
fn finish_row<T: Scalar>(p: &mut [T], bias: Option<&[T]>, accumulate: bool, o: &mut [T]) {
    if let Some(b) = bias {
        for (v, &bv) in p.iter_mut().zip(b) {
            *v += bv;
        }
    }
    if accumulate {
        for (o, &v) in o.iter_mut().zip(p.iter()) {
            *o += v;
        }
    } else {
        o.copy_from_slice(p);
    }
}

/// $O = S^\top Y = \sum_n s_n y_n^\top$ for the rows of $S$ ($R \times K$,
/// row-major `s`) and $Y$ ($R \times F$, row-major `y`): entry $(k, j)$ of
/// `out` ($K \times F$, overwritten) is $0 + s_{0k} y_{0j} + s_{1k} y_{1j} +
/// \dots$, the rows added in order. Compiled for each SIMD level and chosen
/// at run time; each output entry is its own sum (kept in registers for
/// $F \in \{16, 32, 64\}$), so every level gives the same bits.
///
/// ```
/// use graphpool::kernels::rows::outer_sum;
/// // S: 2 x 2, Y: 2 x 3
/// let (s, y) = ([1.0_f32, 2.0, 3.0, 4.0], [1.0_f32, 0.0, -1.0, 2.0, 1.0, 0.0]);
/// let mut out = [f32::NAN; 6];
/// outer_sum(&s, 2, &y, 3, &mut out);
/// assert_eq!(out, [7.0, 3.0, -1.0, 10.0, 4.0, -2.0]);
/// ```
///
/// # Panics
/// If `out` does not have $K F$ entries.
pub fn outer_sum<T: Scalar>(s: &[T], k: usize, y: &[T], f: usize, out: &mut [T]) {
    // SAFETY: `outer_sum_into` writes only values of `T`
    outer_sum_into(s, k, y, f, unsafe { as_unwritten(out) });
}

/// [`outer_sum`] written into `out` ($K F$ entries, not yet written, or
/// written and overwritten), returned written: the register kernels store
/// their sums without zeros written first, so an output block of a larger
/// matrix is written once (the first touch of fresh pages included).
pub(crate) fn outer_sum_into<'o, T: Scalar>(
    s: &[T],
    k: usize,
    y: &[T],
    f: usize,
    out: &'o mut [MaybeUninit<T>],
) -> &'o mut [T] {
    assert_eq!(out.len(), k * f, "K F entries");
    if outer_sum_written(s, k, y, f, out) {
        // SAFETY: `outer_sum_written` returned true: it wrote every entry
        return unsafe { assume_written_slice(out) };
    }
    let out = zeroed_in_place(out);
    outer_sum_add(s, k, y, f, out);
    out
}

simd_levels! {
/// [`outer_sum`]'s sums written into every entry of `out` by a register
/// kernel, its sums started from zeros in registers (the bits of zeros
/// written first and added to), when there is one for `f` and $S$ has a
/// row; `false`, with `out` untouched, otherwise.
fn outer_sum_written<T: Scalar>(
    s: &[T],
    k: usize,
    y: &[T],
    f: usize,
    out: &mut [MaybeUninit<T>],
) -> bool {
    // a tile, which writes every entry, only if there is a row
    if k == 0 || f == 0 || s.len() < k || y.len() < f {
        return false;
    }
    let avx512 = multiversion::target::target_cfg_f!(target_feature = "avx512f");
    outer_register_kernel(s, k, y, f, out, false, avx512)
}
}

simd_levels! {
/// [`outer_sum`]'s sums added to `out` ($K \times F$, written), each entry
/// its own sum continued in row order.
fn outer_sum_add<T: Scalar>(s: &[T], k: usize, y: &[T], f: usize, out: &mut [T]) {
    if k == 0 || f == 0 {
        return;
    }
    // a constant of each SIMD level's copy
    let avx512 = multiversion::target::target_cfg_f!(target_feature = "avx512f");
    // SAFETY: the register kernels write only values of `T`
    if outer_register_kernel(s, k, y, f, unsafe { as_unwritten(out) }, true, avx512) {
        return;
    }
    if f == 1 {
        // one column (DMoNPool's S^T d): the K sums side by side, one row
        // of S at a time
        for (sn, &yn) in s.chunks_exact(k).zip(y) {
            for (o, &v) in out.iter_mut().zip(sn) {
                *o += v * yn;
            }
        }
        return;
    }
    if f < SMALL_COLS {
        // a width between the register kernels': Y's rows padded with
        // zeros to the next kernel's width, a block at a time, the padded
        // sums continued from block to block (each entry is its own sum,
        // in row order: the C real ones keep their bits); for K = F = 10
        // (MinCutPool's S^T A S with ten clusters) the loop of runtime
        // width took a quarter of the forward+backward pass
        const BLOCK: usize = 256;
        let wide = f.next_power_of_two().max(16);
        // the sums continue from `out`'s values
        let mut padded = vec![T::zero(); k * wide];
        for (p, o) in padded.chunks_exact_mut(wide).zip(out.chunks_exact(f)) {
            p[..f].copy_from_slice(o);
        }
        // a block of padded rows, no more than there are rows
        let mut yp = vec![T::zero(); BLOCK.min(y.len() / f) * wide];
        for (sb, yb) in s.chunks(BLOCK * k).zip(y.chunks(BLOCK * f)) {
            let yp = &mut yp[..yb.len() / f * wide];
            for (dst, src) in yp.chunks_exact_mut(wide).zip(yb.chunks_exact(f)) {
                dst[..f].copy_from_slice(src);
            }
            // SAFETY: the register kernels write only values of `T`
            let pv = unsafe { as_unwritten(&mut padded) };
            let done = outer_register_kernel(sb, k, yp, wide, pv, true, avx512);
            debug_assert!(done, "a register kernel for every padded width");
        }
        for (o, p) in out.chunks_exact_mut(f).zip(padded.chunks_exact(wide)) {
            o.copy_from_slice(&p[..f]);
        }
        return;
    }
    for (sn, yn) in s.chunks_exact(k).zip(y.chunks_exact(f)) {
        for (&v, o) in sn.iter().zip(out.chunks_exact_mut(f)) {
            axpy(o, v, yn);
        }
    }
}
}

/// [`outer_sum`]'s sums by a register kernel when there is one for `f`:
/// added to `out` if `written`, else written into it (each sum started
/// from zeros in registers; every entry written if $S$ has a row);
/// `false`, with `out` untouched, otherwise. `avx512`: whether the SIMD
/// level has AVX-512's 32 vector registers.
#[inline(always)]
fn outer_register_kernel<T: Scalar>(
    s: &[T],
    k: usize,
    y: &[T],
    f: usize,
    out: &mut [MaybeUninit<T>],
    written: bool,
    avx512: bool,
) -> bool {
    match f {
        16 => outer_sum_fixed::<T, 16, 4>(s, k, y, out, written),
        32 => outer_sum_fixed::<T, 32, 2>(s, k, y, out, written),
        // four rows of 64 sums fill half of AVX-512's 32 registers in
        // f32; with AVX2's 16 (or in f64) they would spill
        64 if std::mem::size_of::<T>() == 4 && avx512 => {
            outer_sum_fixed::<T, 64, 4>(s, k, y, out, written)
        }
        64 => outer_sum_fixed::<T, 64, 1>(s, k, y, out, written),
        _ => return false,
    }
    true
}

/// [`outer_sum`] for $F$ known at compile time: `R` output rows at a time,
/// their sums in registers (independent chains of additions) while a tile
/// of rows of $Y$, small enough to stay in L1, passes by; a row's sums
/// continue from tile to tile, in order. The sums start from `out` if
/// `written`, else from zeros (and `out` is written by the first tile).
#[inline(always)]
fn outer_sum_fixed<T: Scalar, const F: usize, const R: usize>(
    s: &[T],
    k: usize,
    y: &[T],
    out: &mut [MaybeUninit<T>],
    mut written: bool,
) {
    const TILE: usize = 64;
    // the sums of rows of `out` continued over a tile: loaded if written,
    // stored after
    let load = |acc: &mut [T; F], o: &[MaybeUninit<T>], written: bool| {
        if written {
            for (a, o) in acc.iter_mut().zip(o) {
                // SAFETY: `o` was written (by the caller, or by an
                // earlier tile)
                *a = unsafe { o.assume_init() };
            }
        }
    };
    let store = |acc: &[T; F], o: &mut [MaybeUninit<T>]| {
        for (o, &a) in o.iter_mut().zip(acc) {
            o.write(a);
        }
    };
    for (st, yt) in s.chunks(TILE * k).zip(y.chunks(TILE * F)) {
        let mut groups = out.chunks_exact_mut(R * F);
        let mut c0 = 0;
        for o in &mut groups {
            let mut acc = [[T::zero(); F]; R];
            for (a, o) in acc.iter_mut().zip(o.chunks_exact(F)) {
                load(a, o, written);
            }
            for (sn, yn) in st.chunks_exact(k).zip(yt.chunks_exact(F)) {
                let yn: &[T; F] = yn.try_into().expect("chunks of F");
                let v: [T; R] = std::array::from_fn(|r| sn[c0 + r]);
                #[allow(clippy::needless_range_loop)]
                for r in 0..R {
                    for l in 0..F {
                        acc[r][l] += v[r] * yn[l];
                    }
                }
            }
            for (a, o) in acc.iter().zip(o.chunks_exact_mut(F)) {
                store(a, o);
            }
            c0 += R;
        }
        for (c, o) in groups.into_remainder().chunks_exact_mut(F).enumerate() {
            let mut acc = [T::zero(); F];
            load(&mut acc, o, written);
            for (sn, yn) in st.chunks_exact(k).zip(yt.chunks_exact(F)) {
                let v = sn[c0 + c];
                for (a, &yv) in acc.iter_mut().zip(yn) {
                    *a += v * yv;
                }
            }
            store(&acc, o);
        }
        written = true;
    }
}

/// The rows of `x` as one row-major slice: borrowed when `x` is already in
/// standard layout, else copied once.
pub fn row_major<'a, T: Scalar>(x: &'a ArrayView2<'a, T>) -> Cow<'a, [T]> {
    match x.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(x.iter().copied().collect()),
    }
}

/// An $R \times C$ matrix whose row $r$ is written by `f(r, row)` (`row`
/// zeroed on entry), in parallel over fixed blocks of [`ROW_BLOCK`] rows
/// ([`build_row_blocks`]).
pub fn build_rows<T, F>(rows: usize, cols: usize, f: F) -> Array2<T>
where
    T: Scalar,
    F: Fn(usize, &mut [T]) + Sync,
{
    build_row_blocks(rows, cols, |first, block| {
        for (j, row) in block.chunks_mut(cols).enumerate() {
            f(first + j, row);
        }
    })
}

/// An $R \times C$ matrix written block by block: `f(first, block)` gets
/// the row-major slice of rows `first..` (at most [`ROW_BLOCK`] of them,
/// zeroed on entry), for every fixed block, in parallel, so that a kernel
/// can run over many rows per call. The zeros are written before anything
/// reads the block: one page fault per page of a fresh output (see
/// [`zeros`]). They stay even for a kernel that overwrites its rows
/// ([`crate::kernels::sparse::spmm`] at $F \in \{8, 16, 32, 64\}$): without
/// them $A S$ on single-1e6 ($K = 16$, two threads, best of 12) took 54.6-55.9
/// ms instead of 49.1-50.1 ms (probably because the sequential zero pass
/// brings the block into cache ahead of the product's row writes), while
/// on disjoint-small dropping them saved only 0.2-0.3 ms of 3.6.
pub fn build_row_blocks<T, F>(rows: usize, cols: usize, f: F) -> Array2<T>
where
    T: Scalar,
    F: Fn(usize, &mut [T]) + Sync,
{
    let mut out = fresh_matrix(rows, cols);
    let data = out.as_slice_mut().expect("standard layout");
    if cols > 0 {
        data.par_chunks_mut(ROW_BLOCK * cols)
            .enumerate()
            .for_each(|(b, block)| {
                block.iter_mut().for_each(|v| *v = T::zero());
                f(b * ROW_BLOCK, block);
            });
    }
    out
}

/// Applies `f(r, row)` to every row of a standard-layout `x`, in parallel
/// over fixed blocks of [`ROW_BLOCK`] rows.
pub fn update_rows<T, F>(x: &mut Array2<T>, f: F)
where
    T: Scalar,
    F: Fn(usize, &mut [T]) + Sync,
{
    let cols = x.ncols();
    update_row_blocks(x, |first, block| {
        for (j, row) in block.chunks_mut(cols).enumerate() {
            f(first + j, row);
        }
    });
}

/// Applies `f(first, block)` to fixed blocks of [`ROW_BLOCK`] rows of a
/// standard-layout `x` (a non-standard one is first copied into it), in
/// parallel: `block` is the row-major slice of rows `first..`, so a kernel
/// can run over many rows at once.
pub fn update_row_blocks<T, F>(x: &mut Array2<T>, f: F)
where
    T: Scalar,
    F: Fn(usize, &mut [T]) + Sync,
{
    let cols = x.ncols();
    if cols == 0 {
        return;
    }
    if !x.is_standard_layout() {
        *x = x.as_standard_layout().into_owned();
    }
    let data = x.as_slice_mut().expect("standard layout");
    data.par_chunks_mut(ROW_BLOCK * cols)
        .enumerate()
        .for_each(|(b, block)| f(b * ROW_BLOCK, block));
}

simd_levels! {
/// Every `k`-long row of the row-major slice `x` replaced by its softmax,
/// max-shifted: with $m = \max_j z_j$, $s_j = e^{z_j - m} / \sum_i e^{z_i - m}$,
/// the maximum folded from $-\infty$ and the exponentials (by
/// [`Scalar::exp_vectorizable`]) added from 0, both in column order.
/// Compiled for each SIMD level; every level, and every way of cutting `x`,
/// gives the same bits (a NaN result is NaN; Rust does not fix its sign
/// and payload).
///
/// Each row's maximum and sum are chains of dependent operations, so up to
/// 64 columns the rows go [`SOFTMAX_LANES`] at a time, transposed into a
/// scratch block, and every step runs across the rows (one vector lane per
/// row, the same operations in the same order per row as row by row).
/// A type may take whole blocks with a kernel of its own first
/// ([`Scalar::softmax_row_blocks`]: `f32` rows of 16, 32, 48 or 64 columns
/// on a CPU with AVX-512, transposed in registers), with the same bits.
///
/// ```
/// use graphpool::kernels::rows::softmax_rows_slice;
/// let mut x = vec![0.0_f64, 2.0_f64.ln(), 1.0, 1.0];
/// softmax_rows_slice(&mut x, 2);
/// assert!((x[0] - 1.0 / 3.0).abs() < 1e-15 && (x[1] - 2.0 / 3.0).abs() < 1e-15);
/// assert_eq!(&x[2..], &[0.5, 0.5]);
/// ```
pub fn softmax_rows_slice<T: Scalar>(x: &mut [T], k: usize) {
    if k == 0 {
        return;
    }
    // the blocks a kernel written for the type and CPU takes, if any
    let done = T::softmax_row_blocks(x, k);
    let mut rest = &mut x[done..];
    if k <= SOFTMAX_BLOCK_COLS {
        let mut scratch = [[T::zero(); SOFTMAX_LANES]; SOFTMAX_BLOCK_COLS];
        let mut blocks = rest.chunks_exact_mut(SOFTMAX_LANES * k);
        for block in &mut blocks {
            softmax_lanes(block, &mut scratch[..k]);
        }
        rest = blocks.into_remainder();
    }
    for row in rest.chunks_exact_mut(k) {
        let m = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        // the exponentials in a loop of their own, so that it vectorises
        for v in row.iter_mut() {
            *v = (*v - m).exp_vectorizable();
        }
        let total = row.iter().fold(T::zero(), |a, &v| a + v);
        for v in row.iter_mut() {
            *v /= total;
        }
    }
}
}

/// Rows per block of [`softmax_rows_slice`]'s across-the-rows path: one
/// AVX-512 vector of `f32`.
pub const SOFTMAX_LANES: usize = 16;

/// Up to how many columns [`softmax_rows_slice`] takes the across-the-rows
/// path (its scratch block is `SOFTMAX_LANES` × this, on the stack).
const SOFTMAX_BLOCK_COLS: usize = 64;

/// The softmax of the [`SOFTMAX_LANES`] rows of `block` (`t.len()` columns),
/// through the transposed scratch block `t`: column $j$ of every row in
/// `t[j]`. Inlined into each SIMD level of [`softmax_rows_slice`].
#[inline(always)]
fn softmax_lanes<T: Scalar>(block: &mut [T], t: &mut [[T; SOFTMAX_LANES]]) {
    let k = t.len();
    for (r, row) in block.chunks_exact(k).enumerate() {
        for (tj, &v) in t.iter_mut().zip(row) {
            tj[r] = v;
        }
    }
    let mut m = [T::neg_infinity(); SOFTMAX_LANES];
    for tj in t.iter() {
        for (mr, &v) in m.iter_mut().zip(tj) {
            *mr = mr.max(v);
        }
    }
    for tj in t.iter_mut() {
        for (v, &mr) in tj.iter_mut().zip(&m) {
            *v = (*v - mr).exp_vectorizable();
        }
    }
    let mut total = [T::zero(); SOFTMAX_LANES];
    for tj in t.iter() {
        for (sum, &v) in total.iter_mut().zip(tj) {
            *sum += v;
        }
    }
    for (r, row) in block.chunks_exact_mut(k).enumerate() {
        for (v, tj) in row.iter_mut().zip(t.iter()) {
            *v = tj[r] / total[r];
        }
    }
}

/// `acc += row` entrywise (the fold of the segment sums' pieces, and the
/// blocks of [`add_into`]).
#[inline]
pub(crate) fn add_row<T: Scalar>(acc: &mut [T], row: &[T]) {
    for (a, &v) in acc.iter_mut().zip(row) {
        *a += v;
    }
}

/// $\sum_n g_n$, the sum of the rows of `g` ($N \times C$ → $C$), with
/// the bits of ndarray's `sum_axis(Axis(0))`: for a matrix in standard
/// layout ndarray adds the rows into zeros one at a time, as here, but
/// through an array addition per row, whose overhead dominates short rows
/// (the bias gradients of the clustering pools' MLPs, rows of $K = 16$);
/// other layouts, and a column whose stride is below the row stride (which
/// ndarray sums as one lane, in [`dot`]'s order), are left to ndarray.
///
/// ```
/// use graphpool::kernels::rows::column_sums;
/// use ndarray::{array, Axis};
/// let g = array![[1.0_f32, 2.0], [0.1, 0.2], [3.0, -1.0]];
/// assert_eq!(column_sums(g.view()), g.sum_axis(Axis(0)));
/// assert_eq!(column_sums(g.t()), g.t().sum_axis(Axis(0)));
/// ```
pub fn column_sums<T: Scalar>(g: ndarray::ArrayView2<'_, T>) -> ndarray::Array1<T> {
    // ndarray sums along its least-strided axis (the last on a tie) by
    // lanes, in another order: only where that is axis 1 does it add rows
    let [s0, s1] = [g.stride_of(ndarray::Axis(0)), g.stride_of(ndarray::Axis(1))];
    let (Some(flat), true) = (g.as_slice(), s0.unsigned_abs() >= s1.unsigned_abs()) else {
        return g.sum_axis(ndarray::Axis(0));
    };
    let mut acc = vec![T::zero(); g.ncols()];
    if !acc.is_empty() {
        for row in flat.chunks_exact(acc.len()) {
            add_row(&mut acc, row);
        }
    }
    ndarray::Array1::from(acc)
}

/// $a \mathrel{+}= b$ entrywise, in parallel over fixed blocks when both are
/// in standard layout (else ndarray's serial `+=`): the same bits either
/// way, one addition per entry. For the sums of $N \times K$ (or
/// $N \times F$) gradients that a backward pass accumulates.
///
/// ```
/// use graphpool::kernels::rows::add_into;
/// use ndarray::array;
/// let mut a = array![[1.0, 2.0], [3.0, 4.0]];
/// add_into(&mut a, &array![[0.5, 0.5], [-3.0, 1.0]]);
/// assert_eq!(a, array![[1.5, 2.5], [0.0, 5.0]]);
/// ```
pub fn add_into<T: Scalar, D: ndarray::Dimension>(
    a: &mut ndarray::Array<T, D>,
    b: &ndarray::Array<T, D>,
) {
    const BLOCK: usize = 1 << 14;
    assert_eq!(a.shape(), b.shape(), "add_into: shapes differ");
    match (a.as_slice_mut(), b.as_slice()) {
        (Some(x), Some(y)) => x
            .par_chunks_mut(BLOCK)
            .zip(y.par_chunks(BLOCK))
            .for_each(|(x, y)| add_row(x, y)),
        _ => *a += b,
    }
}

/// The position of the first non-finite value of `x` (NaN or $\pm\infty$),
/// scanning fixed blocks in parallel; `None` if every value is finite.
pub fn first_non_finite<T: Scalar>(x: &[T]) -> Option<usize> {
    const BLOCK: usize = 1 << 14;
    x.par_chunks(BLOCK)
        .enumerate()
        .find_map_first(|(b, c)| first_non_finite_in(c).map(|i| b * BLOCK + i))
}

/// [`first_non_finite`] of one block, on the calling thread: a branch-free
/// pass that vectorises, then the position only if the block has one. The
/// kernels that check what they write scan each block with it while the
/// block is still in cache.
///
/// ```
/// use graphpool::kernels::rows::first_non_finite_in;
/// assert_eq!(first_non_finite_in(&[1.0_f32, f32::NAN, f32::INFINITY]), Some(1));
/// assert_eq!(first_non_finite_in(&[1.0_f64, -2.0]), None);
/// ```
#[inline]
pub fn first_non_finite_in<T: Scalar>(block: &[T]) -> Option<usize> {
    if any_non_finite(block) {
        block.iter().position(|v| !v.is_finite())
    } else {
        None
    }
}

/// The first non-finite entry (flat row-major index) of a matrix whose rows
/// are written in parallel, recorded as each row is finished: the check
/// reads a row while it is in cache instead of scanning the whole output
/// again after it. The index kept is the smallest reported, so it is the
/// one a scan in order would find, on any thread count.
///
/// ```
/// use graphpool::kernels::rows::FirstNonFinite;
/// let first = FirstNonFinite::new();
/// first.check_row(3, &[1.0_f32, 2.0]);
/// assert_eq!(first.get(), None);
/// first.check_row(2, &[1.0_f32, f32::INFINITY]);
/// first.check_row(1, &[f32::NAN, 0.0]);
/// // rows of 2 values: row 1's first entry is flat index 2
/// assert_eq!(first.get(), Some(2));
/// ```
#[derive(Debug)]
pub struct FirstNonFinite(std::sync::atomic::AtomicUsize);

impl FirstNonFinite {
    /// Nothing recorded yet.
    pub fn new() -> Self {
        Self(std::sync::atomic::AtomicUsize::new(usize::MAX))
    }

    /// Records the first non-finite value of `row`, row `index` of a
    /// matrix as wide as `row`, if it has one.
    #[inline]
    pub fn check_row<T: Scalar>(&self, index: usize, row: &[T]) {
        if let Some(p) = first_non_finite_in(row) {
            self.0
                .fetch_min(index * row.len() + p, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The smallest flat index recorded, `None` if every checked row was
    /// finite.
    pub fn get(&self) -> Option<usize> {
        let p = self.0.load(std::sync::atomic::Ordering::Relaxed);
        (p != usize::MAX).then_some(p)
    }
}

impl Default for FirstNonFinite {
    fn default() -> Self {
        Self::new()
    }
}

simd_levels! {
/// Whether `block` holds a NaN or an infinity: the branch-free pass of
/// [`first_non_finite_in`], compiled for each SIMD level.
fn any_non_finite<T: Scalar>(block: &[T]) -> bool {
    block.iter().fold(false, |bad, v| bad | !v.is_finite())
}
}

/// The first non-finite entry of an array in logical (row-major) order, as
/// (flat index, value): [`first_non_finite`] on its slice when it is
/// contiguous, else an in-order scan.
pub fn first_non_finite_entry<T: Scalar, D: ndarray::Dimension>(
    m: &ndarray::ArrayRef<T, D>,
) -> Option<(usize, T)> {
    match m.as_slice() {
        Some(v) => first_non_finite(v).map(|p| (p, v[p])),
        None => m.iter().copied().enumerate().find(|(_, v)| !v.is_finite()),
    }
}

/// The values of a vector as one slice: borrowed when contiguous, else
/// copied once.
pub fn row_major_1d<'a, T: Scalar>(x: &'a ndarray::ArrayView1<'a, T>) -> Cow<'a, [T]> {
    match x.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(x.iter().copied().collect()),
    }
}

/// $\lVert a - b\rVert_1$ of two slices of the same length, summed in
/// [`dot`]'s order (eight interleaved partial sums, so the loop vectorises;
/// a plain left-to-right sum is one dependent addition per entry).
#[inline]
pub fn l1_distance<T: Scalar>(a: &[T], b: &[T]) -> T {
    lane_sum(a, b, |p, q| (p - q).abs())
}

/// Asks the CPU to start loading `row` into cache (a hint: no effect on
/// results). The sparse products gather or scatter rows at random
/// positions, whose loads are latency-bound; issuing them a few stored
/// entries ahead overlaps the waits.
#[inline(always)]
pub fn prefetch<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(row);
        let p = row.as_ptr() as *const i8;
        let mut off = 0;
        while off < bytes {
            // SAFETY: `_mm_prefetch` is a hint that never faults and does not
            // read or write memory as far as the program can observe; the
            // address is inside `row`. SSE is part of the x86_64 baseline.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.add(off))
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// How many stored entries ahead the sparse products prefetch.
pub const PREFETCH_AHEAD: usize = 8;

/// Asks the CPU to start loading row `list[i + PREFETCH_AHEAD]` of `xs`
/// (row-major, rows of `width`), if there is one: the row a pass over
/// `list` in order reads [`PREFETCH_AHEAD`] steps from now. For the
/// columns of a sparse product's stored entries (random rows) and for the
/// kept rows of a selection (ascending with random gaps, which the hardware
/// prefetcher does not follow: the gather of TopKPool on disjoint-small,
/// 150k of 300k rows of 64 `f32`, took 8.3-10.7 ms without, 5.5-6.2 ms
/// with). A hint only: no effect on results.
#[inline(always)]
pub(crate) fn prefetch_row_ahead<T>(xs: &[T], width: usize, list: &[usize], i: usize) {
    if let Some(&r) = list.get(i + PREFETCH_AHEAD) {
        if let Some(row) = xs.get(r * width..(r + 1) * width) {
            prefetch(row);
        }
    }
}

/// An $R \times C$ matrix of zeros whose memory is written (in parallel
/// blocks) before it is returned.
///
/// `Array2::zeros` gets fresh pages from the OS that are mapped on first
/// access: a kernel that first *reads* an entry (`+=`) maps the shared zero
/// page and then takes a second, copy-on-write fault when it writes. Writing
/// the zeros first takes one fault per page, spread over the threads.
pub fn zeros<T: Scalar>(rows: usize, cols: usize) -> Array2<T> {
    let mut out = fresh_matrix(rows, cols);
    out.as_slice_mut()
        .expect("standard layout")
        .par_chunks_mut(1 << 16)
        .for_each(|c| c.iter_mut().for_each(|v| *v = T::zero()));
    out
}

/// A copy of `x` in fresh memory ([`fresh_matrix`]: huge pages when large),
/// written in parallel blocks of rows: for a copy that must outlive its
/// source (a layer's output and its cache each holding $S$). `clone` or
/// `to_owned` on a large array takes ordinary pages from the allocator and
/// one fault per 4 KiB on a single thread.
///
/// ```
/// use graphpool::kernels::rows::fresh_copy;
/// use ndarray::array;
/// let x = array![[1.0_f32, 2.0], [3.0, 4.0]];
/// assert_eq!(fresh_copy(x.view()), x);
/// assert_eq!(fresh_copy(x.t()), x.t());
/// ```
pub fn fresh_copy<T: Scalar>(x: ArrayView2<T>) -> Array2<T> {
    let (rows, cols) = x.dim();
    let mut out = fresh_matrix(rows, cols);
    if cols > 0 {
        out.axis_chunks_iter_mut(ndarray::Axis(0), ROW_BLOCK)
            .into_par_iter()
            .zip(x.axis_chunks_iter(ndarray::Axis(0), ROW_BLOCK))
            .for_each(|(mut o, x)| o.assign(&x));
    }
    out
}

/// A copy of a slice in fresh memory ([`fresh_vec`]), written in parallel.
///
/// ```
/// use graphpool::kernels::rows::fresh_copy_slice;
/// assert_eq!(fresh_copy_slice(&[1.0_f32, 2.0, 3.0]), vec![1.0, 2.0, 3.0]);
/// ```
pub fn fresh_copy_slice<T: Copy + Default + Send + Sync>(x: &[T]) -> Vec<T> {
    let mut out = fresh_vec(x.len());
    out.par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(o, x)| o.copy_from_slice(x));
    out
}

/// Bytes in a cache line: [`fresh_matrix`] starts its matrices on one.
pub const CACHE_LINE: usize = 64;

/// An $R \times C$ matrix of zeros (standard layout, in fresh memory not
/// yet written, as from [`fresh_vec`]) whose first entry, if it has any,
/// starts a [`CACHE_LINE`], or a huge page when the matrix is one the
/// allocator maps on its own ([`MAPPED_FROM`] bytes or more).
///
/// The sparse products gather one row of an $N \times K$ matrix per stored
/// entry ($A S$ reads row $j$ of $S$ for entry $(i, j)$). A large buffer from
/// the allocator starts 16 bytes past a page boundary, so a row of
/// $K = 16$ `f32` (64 bytes) would straddle two cache lines and each gather
/// would fetch both; from a line boundary, every such row is one line. (On
/// the 10⁷ entries of `single-1e6`, [`crate::kernels::sparse::spmm`] with
/// $K = 16$ takes about half the time on an aligned $S$.)
///
/// From [`MAPPED_FROM`] bytes on, glibc's `malloc` serves every request
/// with a mapping of its own, which starts 16 bytes past a page, so only
/// the 2 MiB-aligned middle of it could be backed by huge pages: the
/// partial huge pages at either end took up to 511 page faults of 4 KiB
/// each (about 700 of the thousand faults of a TopKPool forward pass on
/// disjoint-small, for its 38 MB of pooled rows). Such a matrix starts on
/// a 2 MiB boundary instead, and its length is rounded up to whole huge
/// pages, all advised for them: the buffer grows by at most 4 MiB of
/// address space, of which only the rounding past its last entry (under
/// 2 MiB) is ever touched, by the kernel, in the last huge page. A smaller
/// matrix is not padded that way: glibc may serve it from its heap, where
/// `calloc` writes zeros over the whole buffer, padding included. The
/// matrix owns its padding before its first entry: an ndarray array may
/// start inside its buffer.
///
/// ```
/// use graphpool::kernels::rows::{fresh_matrix, CACHE_LINE, MAPPED_FROM};
/// let s = fresh_matrix::<f32>(1000, 16);
/// assert_eq!(s.dim(), (1000, 16));
/// assert_eq!(s.as_ptr() as usize % CACHE_LINE, 0);
/// assert!(s.iter().all(|&v| v == 0.0));
/// let big = fresh_matrix::<f32>(MAPPED_FROM / 64 + 3, 16);
/// assert_eq!(big.as_ptr() as usize % (2 << 20), 0);
/// assert!(big.iter().all(|&v| v == 0.0));
/// ```
pub fn fresh_matrix<T: Copy + Default>(rows: usize, cols: usize) -> Array2<T> {
    // `vec!` of zeros takes zeroed memory from the allocator (see
    // `fresh_vec`)
    aligned_matrix(rows, cols, |len| vec![T::default(); len])
}

/// [`fresh_matrix`]'s layout (a cache line or, when the allocator maps it
/// on its own, a huge page before its first entry) without its zeros: for
/// an output whose every entry is written before it is read, so that a
/// buffer the allocator recycles from its heap is not first zeroed, on one
/// thread, by `calloc`. [`ndarray::ArrayBase::assume_init`] once written.
pub(crate) fn unwritten_matrix<T: Copy>(rows: usize, cols: usize) -> Array2<MaybeUninit<T>> {
    aligned_matrix(rows, cols, unwritten_vec_unadvised)
}

/// A standard-layout $R \times C$ matrix over the buffer `alloc(n)`
/// returns ($n \ge RC$ entries, or more: a longer buffer, such as one kept
/// by [`super::recycle::Recycler`], is viewed in part): the buffer is
/// padded so that the first entry starts a [`CACHE_LINE`], or a huge page
/// when the matrix is one the allocator maps on its own ([`MAPPED_FROM`]
/// bytes or more), whose length is then rounded up to whole huge pages,
/// all advised for them.
pub(crate) fn aligned_matrix<E>(
    rows: usize,
    cols: usize,
    alloc: impl FnOnce(usize) -> Vec<E>,
) -> Array2<E> {
    let len = rows * cols;
    let size = std::mem::size_of::<E>().max(1);
    let (align, tail) = aligned_layout::<E>(len);
    let pad = align / size;
    let data = alloc(aligned_buffer_len::<E>(rows, cols));
    let off = data.as_ptr() as usize % align;
    // the allocation is aligned to E, so the gap to the boundary is a
    // whole number of entries when E's size divides the alignment
    let start = if off == 0 || !off.is_multiple_of(size) {
        0
    } else {
        ((align - off) / size).min(pad)
    };
    advise_huge_pages(&data[start..start + len + tail]);
    Array1::from_vec(data)
        .slice_move(s![start..start + len])
        .into_shape_with_order((rows, cols))
        .expect("rows * cols entries")
}

/// The entries [`aligned_matrix`] asks its `alloc` for, for an
/// $R \times C$ matrix: $RC$, its padding and its rounding.
pub(crate) fn aligned_buffer_len<E>(rows: usize, cols: usize) -> usize {
    let len = rows * cols;
    let (align, tail) = aligned_layout::<E>(len);
    len + align / std::mem::size_of::<E>().max(1) + tail
}

/// The alignment of an [`aligned_matrix`] of `len` entries (a cache line,
/// or a huge page for one the allocator maps on its own) and the entries
/// past its last that round it up to whole huge pages.
fn aligned_layout<E>(len: usize) -> (usize, usize) {
    let size = std::mem::size_of::<E>().max(1);
    let bytes = len * size;
    if bytes >= MAPPED_FROM && HUGE_PAGE.is_multiple_of(size) {
        (
            HUGE_PAGE,
            (bytes.next_multiple_of(HUGE_PAGE) - bytes) / size,
        )
    } else {
        (CACHE_LINE, 0)
    }
}

/// From how many bytes glibc's `malloc` always serves a request with a
/// mapping of its own (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit targets:
/// its dynamic threshold never rises above it); [`fresh_matrix`] puts such
/// matrices on huge pages whole.
pub const MAPPED_FROM: usize = 32 << 20;

/// Bytes in a transparent huge page (x86-64, aarch64 with 4 KiB pages).
const HUGE_PAGE: usize = 2 << 20;

/// `x` with its first entry on a [`CACHE_LINE`], in standard layout: the
/// same shape and values, moved within its own buffer when it does not
/// start on a line.
///
/// A large array from the allocator (`read_npy`, `Array2::zeros`, `clone`)
/// starts 16 bytes past a page boundary, so with rows a multiple of 64
/// bytes wide every row straddles one more cache line than it fills, and
/// every SIMD load of it crosses a line. The sparse products gather one
/// row of $X$ per stored entry: on the 10⁷ entries of `single-1e6`,
/// [`crate::kernels::sparse::spmm`] over a 64-wide `f32` $X$ took 195-230 ms
/// from the allocator's address and 117-135 ms from a line boundary.
///
/// The buffer grows by at most one line (`realloc`: for a large buffer the
/// allocator remaps its pages rather than copying them) and the entries
/// move up by less than a line (one `memmove`), so the matrix is never held
/// twice. A matrix in another layout is copied once ([`fresh_copy`]).
///
/// ```
/// use graphpool::kernels::rows::{align_to_cache_line, CACHE_LINE};
/// use ndarray::Array2;
/// let x = Array2::from_shape_fn((1000, 16), |(i, j)| (i * 16 + j) as f32);
/// let y = align_to_cache_line(x.clone());
/// assert_eq!(y, x);
/// assert_eq!(y.as_ptr() as usize % CACHE_LINE, 0);
/// let t = align_to_cache_line(x.t().to_owned());
/// assert_eq!(t, x.t());
/// assert_eq!(t.as_ptr() as usize % CACHE_LINE, 0);
/// ```
pub fn align_to_cache_line<T: Scalar>(x: Array2<T>) -> Array2<T> {
    if !x.is_standard_layout() {
        return fresh_copy(x.view());
    }
    let size = std::mem::size_of::<T>();
    let misalign = x.as_ptr() as usize % CACHE_LINE;
    if x.is_empty() || misalign == 0 || !misalign.is_multiple_of(size) {
        return x;
    }
    let (rows, cols) = x.dim();
    let len = rows * cols;
    let (mut data, offset) = x.into_raw_vec_and_offset();
    let offset = offset.unwrap_or(0);
    // room for a shift of up to a line, reserved before the address is
    // read (the reservation may move the buffer)
    let room = CACHE_LINE / size;
    data.reserve_exact((len + room).saturating_sub(data.len()));
    let off = data.as_ptr() as usize % CACHE_LINE;
    let start = if off.is_multiple_of(size) {
        ((CACHE_LINE - off) % CACHE_LINE) / size
    } else {
        0
    };
    if data.len() < start + len {
        data.resize(start + len, T::zero());
    }
    data.copy_within(offset..offset + len, start);
    data.truncate(start + len);
    Array1::from_vec(data)
        .slice_move(s![start..])
        .into_shape_with_order((rows, cols))
        .expect("rows * cols entries")
}

/// From how many bytes a fresh buffer asks for transparent huge pages.
const HUGE_PAGES_FROM: usize = 4 << 20;

/// A scratch row: a slice of zeros on the stack up to [`SMALL_COLS`]
/// values (no allocation for a row of a narrow matrix), else on the heap.
/// Taken in the kernel's own body rather than through a closure: a closure
/// in a kernel compiled for a SIMD level is compiled apart, at the
/// baseline level (DiffPool's entropy rows ran as 128-bit SSE2 code, at
/// 4 ns per value, through such a closure).
///
/// ```
/// use graphpool::kernels::rows::{ScratchRow, SMALL_COLS};
/// let mut scratch = ScratchRow::<f32>::new();
/// assert_eq!(scratch.zeros(3), &[0.0; 3]);
/// let wide = scratch.zeros(SMALL_COLS + 1);
/// wide[0] = 1.0;
/// assert_eq!(wide.len(), SMALL_COLS + 1);
/// assert_eq!(scratch.zeros(SMALL_COLS + 1)[0], 0.0);
/// ```
pub struct ScratchRow<T> {
    stack: [T; SMALL_COLS],
    heap: Vec<T>,
}

impl<T: Scalar> ScratchRow<T> {
    /// An empty scratch row (nothing allocated yet).
    #[inline(always)]
    pub fn new() -> Self {
        Self {
            stack: [T::zero(); SMALL_COLS],
            heap: Vec::new(),
        }
    }

    /// `len` zeros, on the stack up to [`SMALL_COLS`], else on the heap.
    #[inline(always)]
    pub fn zeros(&mut self, len: usize) -> &mut [T] {
        if len <= SMALL_COLS {
            let row = &mut self.stack[..len];
            row.fill(T::zero());
            row
        } else {
            self.heap.clear();
            self.heap.resize(len, T::zero());
            &mut self.heap
        }
    }
}

impl<T: Scalar> Default for ScratchRow<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A fresh vector of `len` zeros (`T::default()`) for an output the caller writes in full
/// (write before read, see [`zeros`]). From 4 MiB on (Linux), the kernel is
/// asked to back it with transparent huge pages (`madvise(MADV_HUGEPAGE)`):
/// one page fault per 2 MiB instead of per 4 KiB. Every call of a layer
/// allocates its outputs afresh, and large allocations are new mappings
/// from the OS each time, so on disjoint-small a quarter of a forward pass
/// was page faults. A hint only: the values are the same either way.
pub fn fresh_vec<T: Copy + Default>(len: usize) -> Vec<T> {
    // `Default` is zero for the scalars, indices and arrays of them used
    // here: `vec!` then takes zeroed memory from the allocator (untouched
    // fresh pages for a large buffer) instead of writing it
    let v = vec![T::default(); len];
    advise_huge_pages(&v);
    v
}

/// [`fresh_vec`] without its zeros: `len` entries not yet written, for an
/// output whose every entry is written before it is read (a buffer the
/// allocator recycles from its heap is then not zeroed first, on one
/// thread, by `calloc`). [`assume_written`] once written.
pub(crate) fn unwritten_vec<T>(len: usize) -> Vec<MaybeUninit<T>> {
    let v = unwritten_vec_unadvised(len);
    advise_huge_pages(&v);
    v
}

/// `len` entries not yet written (`malloc`, not `calloc`).
fn unwritten_vec_unadvised<T>(len: usize) -> Vec<MaybeUninit<T>> {
    Box::<[T]>::new_uninit_slice(len).into_vec()
}

/// The entries of `v`, in place, once every one has been written.
///
/// # Safety
/// Every entry of `v` is initialised.
pub(crate) unsafe fn assume_written<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: `MaybeUninit<T>` has `T`'s size and alignment, so the
    // allocation is one of `cap` `T`s, of which the first `len` are
    // initialised (the caller's promise); `v` no longer owns it
    unsafe { Vec::from_raw_parts(ptr.cast::<T>(), len, cap) }
}

/// `dst` written whole by `write`, which gets it unwritten and must return
/// it written (a kernel's `_into` form: safe code can only produce an
/// initialised `&mut [T]` by writing every entry of it).
///
/// # Panics
/// If `write` returns other memory than `dst` (a bug of the kernel).
pub(crate) fn write_whole<'a, T>(
    dst: &'a mut [MaybeUninit<T>],
    write: impl FnOnce(&'a mut [MaybeUninit<T>]) -> &'a mut [T],
) -> &'a mut [T] {
    let (at, len) = (dst.as_ptr() as usize, dst.len());
    let written = write(dst);
    assert!(
        written.as_ptr() as usize == at && written.len() == len,
        "a kernel returns the whole slice it got, written"
    );
    written
}

/// An [`unwritten_matrix`] ($R \times C$) written by `write` through
/// [`write_whole`]: the `_into` form of a kernel turned into one that
/// returns its own matrix.
pub(crate) fn written_matrix<T: Copy>(
    rows: usize,
    cols: usize,
    write: impl FnOnce(&mut [MaybeUninit<T>]) -> &mut [T],
) -> Array2<T> {
    let mut out = unwritten_matrix::<T>(rows, cols);
    write_whole(out.as_slice_mut().expect("standard layout"), write);
    // SAFETY: `write_whole` returned the whole of the matrix's entries as
    // an initialised slice, so every one was written
    unsafe { out.assume_init() }
}

/// `dst` with every entry set to 0, as the initialised slice it now is:
/// for an output written in place by a kernel that takes `&mut [T]` (and
/// overwrites it), zeroed a piece at a time just before, while in cache.
pub(crate) fn zeroed_in_place<T: Scalar>(dst: &mut [MaybeUninit<T>]) -> &mut [T] {
    for d in dst.iter_mut() {
        d.write(T::zero());
    }
    // SAFETY: every entry was written just above
    unsafe { assume_written_slice(dst) }
}

/// The entries of `v`, in place, once every one has been written (the
/// slice form of [`assume_written`]).
///
/// # Safety
/// Every entry of `v` is initialised.
pub(crate) unsafe fn assume_written_slice<T>(v: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: `MaybeUninit<T>` has `T`'s size and alignment, and every
    // entry is initialised (the caller's promise)
    unsafe { &mut *(v as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// A written slice seen as one that may be unwritten, for a kernel's
/// `_into` form to overwrite (the inverse of [`assume_written_slice`]).
///
/// # Safety
/// Nothing may write an uninitialised value through the view: `v` must be
/// whole and initialised again once the view is gone.
pub(crate) unsafe fn as_unwritten<T>(v: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: `MaybeUninit<T>` has `T`'s size and alignment; what is
    // written through the view is initialised (the caller's promise)
    unsafe { &mut *(v as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// Writes `src` into `dst`, entry for entry (a copy of the bytes): the
/// standard library's `<[MaybeUninit<T>]>::write_copy_of_slice`, stable
/// only from Rust 1.93, above this crate's `rust-version` (1.89).
///
/// # Panics
/// If the two have different lengths.
pub(crate) fn write_slice<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "a slice written whole");
    // SAFETY: both hold `src.len()` entries of `T`'s layout and, one
    // borrowed mutably and the other shared, cannot overlap
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<T>(), src.len());
    }
}

/// `madvise(MADV_HUGEPAGE)` on the 2 MiB-aligned part of a large buffer.
fn advise_huge_pages<T>(v: &[T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = HUGE_PAGE;
        let bytes = std::mem::size_of_val(v);
        if bytes < HUGE_PAGES_FROM {
            return;
        }
        let start = v.as_ptr() as usize;
        let lo = start.next_multiple_of(HUGE);
        let hi = (start + bytes) / HUGE * HUGE;
        if hi > lo {
            // SAFETY: [lo, hi) lies inside `v`'s allocation, which is live for
            // the call. MADV_HUGEPAGE only tells the kernel how to back the
            // pages of that range; it does not change their contents, their
            // protection or the mapping's validity, so nothing the program
            // can observe changes. The result is ignored: a refusal (THP
            // disabled, old kernel) leaves ordinary pages.
            unsafe {
                libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}
