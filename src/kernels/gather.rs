//! Row gathers and scatters of the subset (score-based) selections, on
//! plain slices: the kept rows scaled by their gates, and the backward pass
//! that writes the gradient of $X$ once, fused with the rank-$r$ term of a
//! linear score ($\bar X \mathrel{+}= C V$).

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

use super::rows::{add_row, first_non_finite_in, row_major};
use super::{reduce_chunked, reduce_chunked_rows, ROW_BLOCK};
use crate::scalar::Scalar;

/// The kept rows scaled by their gates: row $j$ of the result ($K \times F$)
/// is $\mathrm{scale}_j \, x_{\text{kept}_j}$ (the reduce of a
/// [`crate::framework::Subset`] selection). Parallel over fixed blocks of
/// [`ROW_BLOCK`] output rows; every entry is one product, so the bits do not
/// depend on the thread count.
///
/// ```
/// use graphpool::kernels::gather::gather_scaled_rows;
/// use ndarray::array;
/// let x = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
/// let out = gather_scaled_rows(x.view(), &[0, 2], array![2.0, -1.0].view());
/// assert_eq!(out, array![[2.0, 4.0], [-5.0, -6.0]]);
/// ```
pub fn gather_scaled_rows<T: Scalar>(
    x: ArrayView2<T>,
    kept: &[usize],
    scale: ArrayView1<T>,
) -> Array2<T> {
    gather_scaled_rows_checked(x, kept, scale).0
}

/// [`gather_scaled_rows`], plus the flat index of the result's first
/// non-finite entry (an overflowing product), if any: each block of rows is
/// scanned right after it is written, while it is still in cache, instead of
/// in a second pass over the whole result.
///
/// ```
/// use graphpool::kernels::gather::gather_scaled_rows_checked;
/// use ndarray::array;
/// let x = array![[1.0_f32, 3e38], [3.0, 4.0]];
/// let (out, bad) = gather_scaled_rows_checked(x.view(), &[0, 1], array![2.0, 1.0].view());
/// assert_eq!(bad, Some(1));
/// assert_eq!(out[[1, 1]], 4.0);
/// ```
pub fn gather_scaled_rows_checked<T: Scalar>(
    x: ArrayView2<T>,
    kept: &[usize],
    scale: ArrayView1<T>,
) -> (Array2<T>, Option<usize>) {
    debug_assert_eq!(kept.len(), scale.len());
    gather_rows_scaled_by(x, kept, |j| scale[j], |_| {}, None)
}

/// [`gather_scaled_rows_checked`] with the scales computed block by block
/// as the rows are gathered: $\mathrm{scale}_j = \mathrm{gate}(v_{\text{kept}_j})$,
/// returned beside the rows. For each block of [`ROW_BLOCK`] rows the
/// values $v_{\text{kept}_j}$ are gathered, `gate` turns the block's values
/// into its scales in place (a selection pool's $\tanh$ or $\sigma$, in one
/// loop that vectorises: [`crate::nn::Activation::apply_in_place`]), then
/// the rows are scaled; the gates are not a pass of their own.
///
/// ```
/// use graphpool::kernels::gather::gather_gated_rows_checked;
/// use ndarray::array;
/// let x = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
/// let y = array![0.5, 9.0, -1.0];
/// let double = |g: &mut [f64]| g.iter_mut().for_each(|v| *v *= 2.0);
/// let (out, gate, bad) = gather_gated_rows_checked(x.view(), &[0, 2], y.view(), double);
/// assert_eq!(gate, array![1.0, -2.0]);
/// assert_eq!(out, array![[1.0, 2.0], [-10.0, -12.0]]);
/// assert_eq!(bad, None);
/// ```
pub fn gather_gated_rows_checked<T: Scalar>(
    x: ArrayView2<T>,
    kept: &[usize],
    values: ArrayView1<T>,
    gate: impl Fn(&mut [T]) + Sync,
) -> (Array2<T>, Array1<T>, Option<usize>) {
    let mut gates: Vec<T> = super::rows::fresh_vec(kept.len());
    let (matrix, bad) = gather_rows_scaled_by(x, kept, |j| values[kept[j]], gate, Some(&mut gates));
    (matrix, Array1::from(gates), bad)
}

/// The gather of [`gather_scaled_rows_checked`] with the scale of output row
/// `j` from `finish` applied to a block's `scale_of(j)` values, also written
/// to `scales[j]` if given.
fn gather_rows_scaled_by<T: Scalar>(
    x: ArrayView2<T>,
    kept: &[usize],
    scale_of: impl Fn(usize) -> T + Sync,
    finish: impl Fn(&mut [T]) + Sync,
    scales: Option<&mut [T]>,
) -> (Array2<T>, Option<usize>) {
    let f = x.ncols();
    let mut matrix = super::rows::fresh_matrix(kept.len(), f);
    let out = matrix.as_slice_mut().expect("standard layout");
    let xs = row_major(&x);
    let gather = |b: usize, block: &mut [T], scales: Option<&mut [T]>| {
        let rows = block.len() / f.max(1);
        let mut own = Vec::new();
        let block_scales = match scales {
            Some(s) => s,
            None => {
                own.resize(rows, T::zero());
                &mut own[..]
            }
        };
        // the block's scales first (a gate's tanh or sigmoid over the
        // block at once vectorises), then the rows
        let first = b * ROW_BLOCK;
        for (i, s) in block_scales.iter_mut().enumerate() {
            *s = scale_of(first + i);
        }
        finish(block_scales);
        let nodes = &kept[first..first + rows];
        super::rows::scaled_rows(&xs, f, nodes, block_scales, (kept, first), block);
        first_non_finite_in(block).map(|p| b * ROW_BLOCK * f + p)
    };
    let first_bad = if f == 0 {
        // no rows to gather: the scales alone
        if let Some(s) = scales {
            s.par_chunks_mut(ROW_BLOCK).enumerate().for_each(|(b, s)| {
                for (i, s) in s.iter_mut().enumerate() {
                    *s = scale_of(b * ROW_BLOCK + i);
                }
                finish(s);
            });
        }
        None
    } else {
        let blocks = out.par_chunks_mut(ROW_BLOCK * f).enumerate();
        match scales {
            Some(s) => blocks
                .zip(s.par_chunks_mut(ROW_BLOCK))
                .filter_map(|((b, block), s)| gather(b, block, Some(s)))
                .min(),
            None => blocks.filter_map(|(b, block)| gather(b, block, None)).min(),
        }
    };
    (matrix, first_bad)
}

/// VJP of [`gather_scaled_rows`] with respect to the scales:
/// $\bar{\mathrm{scale}}_j = \langle x_{\text{kept}_j}, \bar O_j\rangle$
/// ([`dot`](super::rows::dot): ndarray's `dot`'s bits), in parallel over
/// fixed blocks of [`ROW_BLOCK`] kept rows, each block by [`kept_dots`]
/// (compiled for each SIMD level).
///
/// ```
/// use graphpool::kernels::gather::gather_scaled_rows_vjp_scale;
/// use ndarray::array;
/// let x = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
/// let grad = array![[1.0, -1.0], [0.5, 0.5]];
/// let g = gather_scaled_rows_vjp_scale(x.view(), &[0, 2], grad.view());
/// assert_eq!(g, array![-1.0, 5.5]);
/// assert_eq!(g[1], x.row(2).dot(&grad.row(1)));
/// ```
pub fn gather_scaled_rows_vjp_scale<T: Scalar>(
    x: ArrayView2<T>,
    kept: &[usize],
    grad: ArrayView2<T>,
) -> Array1<T> {
    let f = x.ncols();
    let (xs, gs) = (row_major(&x), row_major(&grad));
    let mut dots: Vec<T> = super::rows::fresh_vec(kept.len());
    dots.par_chunks_mut(ROW_BLOCK)
        .enumerate()
        .for_each(|(b, out)| kept_dots(&xs, &gs, f, kept, b * ROW_BLOCK, out));
    Array1::from(dots)
}

super::simd_levels! {
/// `out[i]` $= \langle \bar O_j, x_{\text{kept}_j}\rangle$ for
/// $j$ = `first + i` ([`dot`](super::rows::dot)), from the row-major `xs`
/// ($\cdot \times F$) and `gs` (the kept rows' gradients, $F$ = `f`),
/// the rows of $X$ prefetched ahead: a block of
/// [`gather_scaled_rows_vjp_scale`]. The bits of `dot` at every SIMD level.
pub fn kept_dots<T: Scalar>(
    xs: &[T],
    gs: &[T],
    f: usize,
    kept: &[usize],
    first: usize,
    out: &mut [T],
) {
    for (i, o) in out.iter_mut().enumerate() {
        let j = first + i;
        super::rows::prefetch_row_ahead(xs, f, kept, j);
        let n = kept[j];
        *o = super::rows::dot(&gs[j * f..(j + 1) * f], &xs[n * f..(n + 1) * f]);
    }
}
}

/// The gradient of $X$ ($N \times F$, `n` rows) of a subset selection whose
/// score is linear in $X$, written once:
/// $$\bar X_n = \big(0 + \mathrm{scale}_j \bar O_j\big) + \sum_{t} C_{nt} V_t
/// \quad (n = \text{kept}_j), \qquad \bar X_n = 0 + \sum_t C_{nt} V_t
/// \text{ otherwise},$$
/// the terms added left to right ($C$ is $N \times r$, $V$ is $r \times F$,
/// $r$ small: the rank-$r$ path through the score, e.g. $\bar y\, \hat p^\top$
/// for $y = X \hat p$). This is [`gather_scaled_rows`]'s VJP with respect to
/// $X$ plus the outer products, in one pass instead of an $N \times F$ array
/// per term. Parallel over fixed blocks of [`ROW_BLOCK`] rows.
pub fn scatter_scaled_rows_plus<T: Scalar>(
    n: usize,
    kept: &[usize],
    scale: ArrayView1<T>,
    grad: ArrayView2<T>,
    c: ArrayView2<T>,
    v: ArrayView2<T>,
) -> Array2<T> {
    scatter_scaled_rows_plus_checked(n, kept, scale, grad, c, v).0
}

/// [`scatter_scaled_rows_plus`], plus the flat index of the result's first
/// non-finite entry (an overflow), if any: each block of rows is scanned
/// right after it is written, while it is still in cache, instead of in a
/// second pass over the whole $N \times F$ gradient (as
/// [`gather_scaled_rows_checked`] does for the forward pass).
///
/// ```
/// use graphpool::kernels::gather::scatter_scaled_rows_plus_checked;
/// use ndarray::array;
/// let (c, v) = (array![[1.0_f32], [1.0]], array![[3e38_f32, 1.0]]);
/// let g = array![[3e38_f32, 0.0]];
/// let (gx, bad) =
///     scatter_scaled_rows_plus_checked(2, &[1], array![1.0].view(), g.view(), c.view(), v.view());
/// assert_eq!(bad, Some(2)); // row 1: 3e38 + 3e38 overflows
/// assert_eq!(gx.row(0).to_vec(), vec![3e38, 1.0]);
/// ```
pub fn scatter_scaled_rows_plus_checked<T: Scalar>(
    n: usize,
    kept: &[usize],
    scale: ArrayView1<T>,
    grad: ArrayView2<T>,
    c: ArrayView2<T>,
    v: ArrayView2<T>,
) -> (Array2<T>, Option<usize>) {
    debug_assert!(kept.windows(2).all(|w| w[0] < w[1]));
    debug_assert_eq!(c.nrows(), n);
    debug_assert_eq!(c.ncols(), v.nrows());
    let f = grad.ncols();
    let r = v.nrows();
    let mut out = super::rows::fresh_matrix(n, f);
    let mut first_bad = None;
    if f > 0 {
        let (gs, cs, vs) = (row_major(&grad), row_major(&c), row_major(&v));
        first_bad = out
            .as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(ROW_BLOCK * f)
            .enumerate()
            .filter_map(|(b, block)| {
                let lo = b * ROW_BLOCK;
                let mut j = kept.partition_point(|&k| k < lo);
                for (i, row) in block.chunks_exact_mut(f).enumerate() {
                    let node = lo + i;
                    let cn = &cs[node * r..(node + 1) * r];
                    let is_kept = j < kept.len() && kept[j] == node;
                    if is_kept {
                        let g = scale[j];
                        for (o, &d) in row.iter_mut().zip(&gs[j * f..(j + 1) * f]) {
                            *o = T::zero() + g * d;
                        }
                        j += 1;
                    } else if cn.iter().all(|&ct| ct == T::zero()) {
                        // 0 + 0 * v is +0: the zeroed row (written, so that its
                        // fresh page is not first read)
                        row.fill(T::zero());
                        continue;
                    } else {
                        row.fill(T::zero());
                    }
                    for (t, &ct) in cn.iter().enumerate() {
                        for (o, &vt) in row.iter_mut().zip(&vs[t * f..(t + 1) * f]) {
                            *o += ct * vt;
                        }
                    }
                }
                first_non_finite_in(block).map(|p| b * ROW_BLOCK * f + p)
            })
            .min();
    }
    (out, first_bad)
}

/// The whole backward pass of a gated subset selection whose raw score is
/// linear in $X$, $y = X w$, with the gate an entrywise function of the
/// score, in one pass over the nodes: for kept node $n = \text{kept}_j$,
/// $$\bar g_j = \langle \bar O_j, x_n \rangle, \qquad
/// \bar y_n = \texttt{score\_grad}(j, \bar g_j),$$
/// $$\bar X_n = \big(0 + g_j \bar O_j\big) + \bar y_n w^\top, \qquad
/// \bar w = \sum_n \bar y_n x_n,$$
/// and $\bar X_n = 0$, $\bar y_n = 0$ on the dropped nodes ($g$: the gates,
/// $\bar O$: the gradient of the gathered rows, $K \times F$; $w$: an
/// $F$-vector). Returns $\bar X$ ($N \times F$), the flat index of its first
/// non-finite entry (each kept row scanned as it is written; the dropped
/// rows are the zeros of the fresh matrix, never written or read), and
/// $\bar w$.
///
/// It gives the bits of the kernels it fuses, on any thread count:
/// [`gather_scaled_rows_vjp_scale`] for $\bar g$,
/// [`scatter_scaled_rows_plus_checked`] with $C = \bar y$, $V = w^\top$ for
/// $\bar X$, and [`weighted_row_sum`] for $\bar w$ (the same fixed chunks
/// of [`CHUNK`](super::CHUNK) nodes, added in order). Composed, those read each kept row
/// of $X$ twice and $\bar O$ twice, and keep $\bar g$ and an $N$-vector
/// $\bar y$; here each kept row and each row of $\bar O$ is read once, and
/// used again while it is in cache.
///
/// ```
/// use graphpool::kernels::gather::linear_score_selection_vjp;
/// use ndarray::array;
/// let x = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
/// let (gate, grad, w) = (array![0.5], array![[1.0, -1.0]], array![1.0, 2.0]);
/// // keep node 2; the score's gradient is twice the gate's
/// let (gx, bad, gw) =
///     linear_score_selection_vjp(x.view(), &[2], gate.view(), grad.view(), w.view(), |_, g| 2.0 * g);
/// // g_bar = <(1, -1), (5, 6)> = -1, so y_bar = -2
/// assert_eq!(gx, array![[0.0, 0.0], [0.0, 0.0], [0.5 - 2.0, -0.5 - 4.0]]);
/// assert_eq!(bad, None);
/// assert_eq!(gw, array![-10.0, -12.0]);
/// ```
pub fn linear_score_selection_vjp<T: Scalar>(
    x: ArrayView2<T>,
    kept: &[usize],
    gate: ArrayView1<T>,
    grad: ArrayView2<T>,
    w: ArrayView1<T>,
    score_grad: impl Fn(usize, T) -> T + Sync,
) -> (Array2<T>, Option<usize>, Array1<T>) {
    debug_assert!(kept.windows(2).all(|pair| pair[0] < pair[1]));
    debug_assert_eq!(gate.len(), kept.len());
    debug_assert_eq!(grad.dim(), (kept.len(), x.ncols()));
    debug_assert_eq!(w.len(), x.ncols());
    let (n, f) = x.dim();
    let mut out = super::rows::fresh_matrix(n, f);
    if f == 0 {
        return (out, None, Array1::zeros(0));
    }
    let (xs, gs) = (row_major(&x), row_major(&grad));
    let ws = w.to_vec();
    // one fixed chunk of CHUNK nodes (`block` holds their rows): its kept
    // rows of X-bar (a dropped node's row keeps the fresh matrix's zeros:
    // no write, and no read that would map a page before it is written),
    // its partial sum of w-bar (in node order, as weighted_row_sum) and its
    // first bad entry
    let chunk = |nodes: std::ops::Range<usize>, block: &mut [T]| {
        let js =
            kept.partition_point(|&k| k < nodes.start)..kept.partition_point(|&k| k < nodes.end);
        let mut acc = vec![T::zero(); f];
        let rows = SelectionRows {
            xs: &xs,
            gs: &gs,
            ws: &ws,
            kept,
            gate,
        };
        let bad = selection_vjp_rows(&rows, js, nodes.start, &score_grad, block, &mut acc);
        (acc, bad)
    };
    let (total, first_bad) = reduce_chunked_rows(
        &mut out,
        |nodes, rows| {
            let block = rows.into_slice().expect("rows of a standard-layout matrix");
            chunk(nodes, block)
        },
        |(mut total, bad), (part, later)| {
            add_row(&mut total, &part);
            (total, bad.or(later))
        },
    );
    (out, first_bad, Array1::from(total))
}

/// What [`selection_vjp_rows`] reads: the row-major $X$ and $\bar O$, $w$,
/// the kept nodes and their gates.
struct SelectionRows<'a, T: Scalar> {
    xs: &'a [T],
    gs: &'a [T],
    ws: &'a [T],
    kept: &'a [usize],
    gate: ArrayView1<'a, T>,
}

super::simd_levels! {
/// The kept rows `js` of one chunk of [`linear_score_selection_vjp`] (its
/// nodes from `lo`, their rows in `block`): each row of $\bar X$ written,
/// $\bar w$'s partial sum added into `acc`, and the flat index of the
/// chunk's first non-finite entry returned. Compiled for each SIMD level:
/// at the baseline, the rows were written 16 bytes at a time and then read
/// back 64 bytes at a time by the finiteness check, which waited for the
/// stores to drain (a load wider than the stores it overlaps is not
/// forwarded); here each value is checked as it is made, and the row is
/// scanned only when the check fails. The same operations in the same
/// order at every level: the bits do not change.
fn selection_vjp_rows<T: Scalar>(
    r: &SelectionRows<'_, T>,
    js: std::ops::Range<usize>,
    lo: usize,
    score_grad: &(impl Fn(usize, T) -> T + Sync),
    block: &mut [T],
    acc: &mut [T],
) -> Option<usize> {
    let f = r.ws.len();
    let mut bad = None;
    for j in js {
        super::rows::prefetch_row_ahead(r.xs, f, r.kept, j);
        let node = r.kept[j];
        let row = &mut block[(node - lo) * f..(node - lo + 1) * f];
        let (d, xn) = (&r.gs[j * f..(j + 1) * f], &r.xs[node * f..(node + 1) * f]);
        let gy = score_grad(j, super::rows::dot(d, xn));
        let g = r.gate[j];
        let mut finite = true;
        for ((o, &dv), &wv) in row.iter_mut().zip(d).zip(r.ws) {
            *o = (T::zero() + g * dv) + gy * wv;
            finite &= o.is_finite();
        }
        if !finite && bad.is_none() {
            bad = first_non_finite_in(row).map(|p| node * f + p);
        }
        // a zero weight only adds +-0 to a sum that starts at +0
        if gy != T::zero() {
            for (a, &v) in acc.iter_mut().zip(xn) {
                *a += gy * v;
            }
        }
    }
    bad
}
}

/// $X^\top c$ (an $F$-vector) for a per-node weight $c$: the parameter
/// gradient of a linear score $y = X w$ given $\bar y = c$. Summed over
/// fixed chunks of [`CHUNK`](super::CHUNK) rows in node order (rows with $c_n = 0$ are
/// skipped: they would only add $\pm 0$ to a sum that starts at $+0$), the
/// chunks' partial sums added in order ([`reduce_chunked`]): the same bits
/// on any thread count.
/// The rows read are prefetched, as in [`gather_gated_rows_checked`].
///
/// ```
/// use graphpool::kernels::gather::weighted_row_sum;
/// use ndarray::array;
/// let x = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
/// assert_eq!(weighted_row_sum(x.view(), array![1.0, 0.0, 2.0].view()), array![11.0, 14.0]);
/// ```
pub fn weighted_row_sum<T: Scalar>(x: ArrayView2<T>, c: ArrayView1<T>) -> Array1<T> {
    debug_assert_eq!(x.nrows(), c.len());
    let f = x.ncols();
    let xs = row_major(&x);
    let n = c.len();
    let partial = |rows: std::ops::Range<usize>| {
        let mut acc = vec![T::zero(); f];
        for node in rows {
            // the row PREFETCH_AHEAD nodes ahead if it will be read (a
            // selection's gradient is 0 on the dropped nodes, at random)
            let ahead = node + super::rows::PREFETCH_AHEAD;
            let read = c.get(ahead).is_some_and(|&w| w != T::zero());
            let soon = if read { ahead } else { node };
            super::rows::prefetch(&xs[soon * f..(soon + 1) * f]);
            let w = c[node];
            if w != T::zero() {
                for (a, &v) in acc.iter_mut().zip(&xs[node * f..(node + 1) * f]) {
                    *a += w * v;
                }
            }
        }
        acc
    };
    Array1::from(reduce_chunked(0..n, partial, |mut total, part| {
        add_row(&mut total, &part);
        total
    }))
}
