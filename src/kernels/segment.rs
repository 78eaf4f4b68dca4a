//! Segment reductions over the graphs of a batch, with their vector-Jacobian
//! products.
//!
//! Conventions for an empty graph (documented contract): its sum, mean, max
//! and min are 0 (the mean divides by $\max(n, 1)$); its softmax is empty.

use std::mem::MaybeUninit;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use rayon::prelude::*;

use super::rows::{self, add_row};
use super::{
    fill_node_rows, for_each_segment_block, for_each_segment_block_with_scratch, map_nodes,
    map_rows, reduce_chunked, reduce_segment_rows, CHUNK,
};
use crate::batch::Segments;
use crate::scalar::Scalar;

/// Segment sum: $\mathrm{out}_g = \sum_{n \in g} x_n$, shape $B \times F$.
///
/// Each graph is summed in node order from 0; a graph larger than
/// [`super::CHUNK`] nodes is summed in pieces of [`super::CHUNK`] nodes
/// (counted from its first node) whose partial sums are added in order
/// ([`reduce_segment_rows`]): the same bits on any thread count and for a
/// graph inside a batch as alone.
pub fn segment_sum<T: Scalar>(x: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    segment_sum_checked(x, segments).0
}

/// [`segment_sum`] with the flat (row-major) index of the first non-finite
/// entry of its output, found row by row as the rows are summed
/// ([`rows::FirstNonFinite`]): the same result as scanning the output after
/// it, without reading it again.
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::segment::segment_sum_checked;
/// use ndarray::array;
///
/// let seg = Segments::from_graph_ids(&[0, 1, 1], 2)?;
/// let x = array![[1.0_f32, 2.0], [3.0e38, 1.0], [3.0e38, 1.0]];
/// let (out, bad) = segment_sum_checked(x.view(), &seg);
/// assert_eq!(out[[1, 0]], f32::INFINITY);
/// assert_eq!(bad, Some(2)); // (graph 1, feature 0)
/// # Ok::<(), graphpool::PoolError>(())
/// ```
pub fn segment_sum_checked<T: Scalar>(
    x: ArrayView2<T>,
    segments: &Segments,
) -> (Array2<T>, Option<usize>) {
    sum_rows_checked(x, segments, |_, _| {})
}

/// Segment sum of squares: $\mathrm{out}_{g} = \sum_{n \in g} x_n \odot x_n$,
/// shape $B \times F$ (per graph, the diagonal of $X_g^\top X_g$).
///
/// The same bits as [`segment_sum`] of $X \odot X$ (each square rounded,
/// then added in the same order), without the $N \times F$ temporary.
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::segment::{segment_sum, segment_sum_squares};
/// use ndarray::array;
///
/// let seg = Segments::from_graph_ids(&[0, 0, 1], 2)?;
/// let x = array![[1.0, -2.0], [3.0, 0.5], [4.0, 1.0]];
/// let sq = segment_sum_squares(x.view(), &seg);
/// assert_eq!(sq, array![[10.0, 4.25], [16.0, 1.0]]);
/// assert_eq!(sq, segment_sum((&x * &x).view(), &seg));
/// # Ok::<(), graphpool::PoolError>(())
/// ```
pub fn segment_sum_squares<T: Scalar>(x: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    reduce_segment_rows(
        x,
        segments,
        x.ncols(),
        |_, rows: &[T], acc: &mut [T]| {
            for row in rows.chunks_exact(acc.len()) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v * v;
                }
            }
        },
        add_row,
        |_, _| {},
    )
}

/// `acc += ` every row of `rows` in order (`acc` has the rows' width).
#[inline]
fn sum_rows<T: Scalar>(_: usize, rows: &[T], acc: &mut [T]) {
    for row in rows.chunks_exact(acc.len()) {
        add_row(acc, row);
    }
}

/// VJP of [`segment_sum`]: every node of graph $g$ receives $\bar{\mathrm{out}}_g$.
pub fn segment_sum_vjp<T: Scalar>(grad: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    let f = grad.ncols();
    let gs = rows::row_major(&grad);
    fill_node_rows(segments, f, |g, _, row| {
        row.copy_from_slice(&gs[g * f..(g + 1) * f])
    })
}

/// Segment mean: $\mathrm{out}_g = \frac{1}{\max(n_g, 1)} \sum_{n \in g} x_n$
/// (the sum of [`segment_sum`], then one division per entry).
pub fn segment_mean<T: Scalar>(x: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    segment_mean_checked(x, segments).0
}

/// [`segment_mean`] with the flat (row-major) index of the first
/// non-finite entry of its output, found row by row as each row is
/// finished (see [`segment_sum_checked`]).
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::segment::segment_mean_checked;
/// use ndarray::array;
///
/// let seg = Segments::from_graph_ids(&[0, 0, 1], 2)?;
/// let x = array![[1.0_f32, 3.0e38], [3.0, 3.0e38], [4.0, 1.0]];
/// let (out, bad) = segment_mean_checked(x.view(), &seg);
/// assert_eq!(out[[0, 0]], 2.0);
/// assert_eq!(bad, Some(1)); // the sum of feature 1 overflows before the division
/// # Ok::<(), graphpool::PoolError>(())
/// ```
pub fn segment_mean_checked<T: Scalar>(
    x: ArrayView2<T>,
    segments: &Segments,
) -> (Array2<T>, Option<usize>) {
    sum_rows_checked(x, segments, |g, row| {
        let n = T::from_count(segments.size(g).max(1));
        for v in row.iter_mut() {
            *v /= n;
        }
    })
}

/// Each graph's rows summed ([`reduce_segment_rows`] with [`sum_rows`]),
/// `finish(g, row)` applied to graph `g`'s row, then the row checked
/// ([`rows::FirstNonFinite`]): the output and the flat index of its first
/// non-finite entry.
fn sum_rows_checked<T: Scalar>(
    x: ArrayView2<T>,
    segments: &Segments,
    finish: impl Fn(usize, &mut [T]) + Sync,
) -> (Array2<T>, Option<usize>) {
    let first = rows::FirstNonFinite::new();
    let out = reduce_segment_rows(x, segments, x.ncols(), sum_rows, add_row, |g, row| {
        finish(g, row);
        first.check_row(g, row);
    });
    (out, first.get())
}

/// VJP of [`segment_mean`]: every node of graph $g$ receives $\bar{\mathrm{out}}_g / n_g$.
pub fn segment_mean_vjp<T: Scalar>(grad: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    let f = grad.ncols();
    let gs = rows::row_major(&grad);
    fill_node_rows(segments, f, |g, _, row| {
        let n = T::from_count(segments.size(g).max(1));
        for (o, &v) in row.iter_mut().zip(&gs[g * f..(g + 1) * f]) {
            *o = v / n;
        }
    })
}

/// Which extremum a [`segment_extremum`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extremum {
    /// The largest value.
    Max,
    /// The smallest value.
    Min,
}

impl Extremum {
    /// `acc = better(v, acc) ? v : acc` entry by entry.
    #[inline]
    fn merge<T: Scalar>(self, acc: &mut [T], row: &[T]) {
        match self {
            Extremum::Max => {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a = if v > *a { v } else { *a };
                }
            }
            Extremum::Min => {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a = if v < *a { v } else { *a };
                }
            }
        }
    }
}

simd_levels! {
/// `acc[j] += 1` for every row of `rows` (row-major, `m.len()` columns)
/// whose entry `j` equals `m[j]`: the ties of an extremum, counted exactly.
/// Compiled for each SIMD level and chosen at run time.
fn count_equal<T: Scalar>(rows: &[T], m: &[T], acc: &mut [usize]) {
    if m.is_empty() {
        return;
    }
    for row in rows.chunks_exact(m.len()) {
        for ((c, &v), &m) in acc.iter_mut().zip(row).zip(m) {
            *c += usize::from(v == m);
        }
    }
}
}

simd_levels! {
/// `out[j] = share[j]` where `x[j] == m[j]`, else 0: one node's row of the
/// gradient of an extremum. Compiled for each SIMD level and chosen at run
/// time (selects only: the same bits at every level).
fn share_where_equal<T: Scalar>(x: &[T], m: &[T], share: &[T], out: &mut [T]) {
    for (((o, &v), &m), &s) in out.iter_mut().zip(x).zip(m).zip(share) {
        *o = if v == m { s } else { T::zero() };
    }
}
}

/// Segment max or min per feature, shape $B \times F$; 0 for an empty graph.
///
/// Each graph (or each piece of [`super::CHUNK`] nodes of a larger graph)
/// starts from its first row and takes in the others in node order; a
/// NaN never replaces a number (comparisons with NaN are false), but a NaN
/// first row stays. Bit-identical on any thread count (see
/// [`reduce_segment_rows`]).
pub fn segment_extremum<T: Scalar>(
    x: ArrayView2<T>,
    segments: &Segments,
    which: Extremum,
) -> Array2<T> {
    let f = x.ncols();
    reduce_segment_rows(
        x,
        segments,
        f,
        |_, rows, acc| {
            // an empty graph keeps its zeroed row; a piece is never empty
            let mut it = rows.chunks_exact(f);
            if let Some(first) = it.next() {
                acc.copy_from_slice(first);
                for row in it {
                    which.merge(acc, row);
                }
            }
        },
        |acc, next| which.merge(acc, next),
        |_, _| {},
    )
}

/// Segment max per feature; see [`segment_extremum`].
pub fn segment_max<T: Scalar>(x: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    segment_extremum(x, segments, Extremum::Max)
}

/// Segment min per feature; see [`segment_extremum`].
pub fn segment_min<T: Scalar>(x: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    segment_extremum(x, segments, Extremum::Min)
}

/// VJP of [`segment_extremum`], given its output `out`.
///
/// **Ties**: when several nodes of a graph attain the extremum of a feature,
/// the gradient is split equally among them, as TensorFlow's
/// `segment_max` and PyTorch's `scatter_reduce(amax)` both do. This keeps the
/// gradient equivariant under node permutations. (The ties are counted
/// exactly, as integers.)
pub fn segment_extremum_vjp<T: Scalar>(
    x: ArrayView2<T>,
    segments: &Segments,
    out: ArrayView2<T>,
    grad: ArrayView2<T>,
) -> Array2<T> {
    let f = x.ncols();
    let os = rows::row_major(&out);
    // number of nodes attaining the extremum, per graph and feature
    let counts = reduce_segment_rows(
        x,
        segments,
        f,
        |g, rows, acc: &mut [usize]| count_equal(rows, &os[g * f..(g + 1) * f], acc),
        |acc, next| {
            for (c, &d) in acc.iter_mut().zip(next) {
                *c += d;
            }
        },
        |_, _| {},
    );
    // each tied node's share of the gradient, once per graph and feature
    // (the division every tied entry would otherwise repeat: the same bits)
    let gs = rows::row_major(&grad);
    let cs = counts.as_slice().expect("fresh array");
    let shares: Vec<T> = map_rows(cs.len(), |i| {
        // a graph's extremum is attained (c >= 1) unless the graph is
        // empty, whose share no node reads
        if cs[i] == 0 {
            T::zero()
        } else {
            gs[i] / T::from_count(cs[i])
        }
    });
    drop(counts);
    let xs = rows::row_major(&x);
    fill_node_rows(segments, f, |g, n, row| {
        let r = g * f..(g + 1) * f;
        share_where_equal(&xs[n * f..(n + 1) * f], &os[r.clone()], &shares[r], row);
    })
}

/// Segment softmax of a per-node score $v$:
/// $$\alpha_n = \frac{e^{v_n - m_g}}{\sum_{j \in g} e^{v_j - m_g} + \varepsilon}, \quad m_g = \max_{j\in g} v_j.$$
///
/// Spektral's `unsorted_segment_softmax` uses $\varepsilon = 10^{-9}$, PyG's
/// `softmax` $10^{-16}$.
pub fn segment_softmax<T: Scalar>(v: ArrayView1<T>, segments: &Segments, eps: T) -> Array1<T> {
    let v2 = v.view().insert_axis(Axis(1));
    let m = segment_max(v2, segments);
    let e: Array1<T> = Array1::from(map_nodes(segments, |g, n| {
        (v[n] - m[[g, 0]]).exp_vectorizable()
    }));
    let z = segment_sum(e.view().insert_axis(Axis(1)), segments);
    Array1::from(map_nodes(segments, |g, n| e[n] / (z[[g, 0]] + eps)))
}

/// VJP of [`segment_softmax`] given its output $\alpha$:
/// $\bar v_n = \alpha_n(\bar\alpha_n - \sum_{j\in g}\alpha_j\bar\alpha_j)$
/// (exact for any $\varepsilon$; the shift by the max has zero derivative up
/// to the $\varepsilon$ term).
pub fn segment_softmax_vjp<T: Scalar>(
    alpha: ArrayView1<T>,
    grad: ArrayView1<T>,
    segments: &Segments,
) -> Array1<T> {
    let prod = &alpha * &grad;
    let dots = segment_sum(prod.view().insert_axis(Axis(1)), segments);
    Array1::from(map_nodes(segments, |g, n| {
        alpha[n] * (grad[n] - dots[[g, 0]])
    }))
}

/// Per-graph product $S_g^\top Y_g$ for a stacked per-node matrix $S$
/// ($N \times K$) and $Y$ ($N \times F$): the result stacks the $B$ blocks of
/// $K \times F$ into a $(B K) \times F$ matrix. This is the reduce step of every
/// dense-assignment pool and, with $S = \mathbf{1}$, a segment sum.
pub fn segment_matmul_tn<T: Scalar>(
    s: ArrayView2<T>,
    y: ArrayView2<T>,
    segments: &Segments,
) -> Array2<T> {
    rows::written_matrix(segments.num_graphs() * s.ncols(), y.ncols(), |out| {
        segment_matmul_tn_into(s, y, segments, out)
    })
}

/// [`segment_matmul_tn`] written into `out` (its $(B K) \times F$ entries,
/// row-major, not yet written), returned written: for a caller whose
/// result goes straight into a larger output (a run's rows of the
/// batch's $X'$). Each block is written once, by its sums
/// ([`rows::outer_sum_into`]: no zeros written first).
///
/// # Panics
/// If `out` does not have $B K F$ entries.
pub(crate) fn segment_matmul_tn_into<'o, T: Scalar>(
    s: ArrayView2<T>,
    y: ArrayView2<T>,
    segments: &Segments,
    out: &'o mut [MaybeUninit<T>],
) -> &'o mut [T] {
    let (k, f) = (s.ncols(), y.ncols());
    assert_eq!(out.len(), segments.num_graphs() * k * f, "B K F entries");
    if k * f > 0 {
        let (ss, ys) = (rows::row_major(&s), rows::row_major(&y));
        out.par_chunks_mut(k * f)
            .enumerate()
            .for_each(|(g, block)| {
                let nodes = segments.range(g);
                if nodes.len() <= CHUNK {
                    // one chunk: its sums straight into the block (the chunk's
                    // product as below, without a vector of its own and a copy)
                    let (s_rows, y_rows) = (
                        &ss[nodes.start * k..nodes.end * k],
                        &ys[nodes.start * f..nodes.end * f],
                    );
                    rows::outer_sum_into(s_rows, k, y_rows, f, block);
                    return;
                }
                let r = reduce_chunked(
                    nodes,
                    |chunk| {
                        // S_c^T Y_c on slices, rows of the chunk in order
                        let mut p = vec![T::zero(); k * f];
                        rows::outer_sum(
                            &ss[chunk.start * k..chunk.end * k],
                            k,
                            &ys[chunk.start * f..chunk.end * f],
                            f,
                            &mut p,
                        );
                        p
                    },
                    |mut a, b| {
                        add_row(&mut a, &b);
                        a
                    },
                );
                rows::write_slice(block, &r);
            });
    }
    // SAFETY: `out` is empty (K F = 0) or cut into B blocks of K F entries
    // (its length, asserted above), each written whole above (by
    // `outer_sum_into` or `write_slice`)
    unsafe { rows::assume_written_slice(out) }
}

/// VJP of [`segment_matmul_tn`]: with $\bar O_g$ the gradient of block $g$,
/// $\bar S_g = Y_g \bar O_g^\top$ and $\bar Y_g = S_g \bar O_g$.
pub fn segment_matmul_tn_vjp<T: Scalar>(
    s: ArrayView2<T>,
    y: ArrayView2<T>,
    segments: &Segments,
    grad: ArrayView2<T>,
) -> (Array2<T>, Array2<T>) {
    let gs = vjp_of_s(s.ncols(), y, segments, grad);
    let gy = segment_matmul_nn(s, grad, segments);
    (gs, gy)
}

/// [`segment_matmul_tn_vjp`] writing $\bar Y$ over $Y$, for a backward pass
/// that needs $Y$ only until its own gradient is known (an activation's
/// output): returns $\bar S$ and leaves in every row $n$ of `y` the result
/// of `post(y_n, dy_n)`, which gets the row of $Y$ to overwrite and the
/// row $\bar y_n = s_n \bar O_{g(n)}$. No second $N \times F$ array is
/// made (unless `y` is not in standard layout: it is then first copied into
/// it); $\bar S$ and $\bar y_n$ have the bits of [`segment_matmul_tn_vjp`].
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::segment::{segment_matmul_tn_vjp, segment_matmul_tn_vjp_in_place};
/// use ndarray::array;
/// let segs = Segments::from_sizes(&[2, 1]);
/// let s = array![[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]];
/// let y = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
/// let grad = array![[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 2.0]];
/// let (gs, gy) = segment_matmul_tn_vjp(s.view(), y.view(), &segs, grad.view());
/// let mut z = y.clone();
/// // the gradient through y = relu(pre): dy * [y > 0]
/// let gs2 = segment_matmul_tn_vjp_in_place(s.view(), &mut z, &segs, grad.view(), |row, dy| {
///     for (o, &d) in row.iter_mut().zip(dy) {
///         *o = if *o > 0.0 { d } else { 0.0 };
///     }
/// });
/// assert_eq!(gs2, gs);
/// assert_eq!(z, gy);
/// ```
pub fn segment_matmul_tn_vjp_in_place<T, P>(
    s: ArrayView2<T>,
    y: &mut Array2<T>,
    segments: &Segments,
    grad: ArrayView2<T>,
    post: P,
) -> Array2<T>
where
    T: Scalar,
    P: Fn(&mut [T], &[T]) + Sync,
{
    let gs = vjp_of_s(s.ncols(), y.view(), segments, grad);
    let (k, f) = (s.ncols(), y.ncols());
    if f == 0 {
        return gs;
    }
    let (ss, gr) = (rows::row_major(&s), rows::row_major(&grad));
    if !y.is_standard_layout() {
        *y = y.as_standard_layout().into_owned();
    }
    for_each_segment_block_with_scratch(y.view_mut(), segments, |scratch, g, nodes, mut block| {
        let yb = block.as_slice_mut().expect("row blocks are contiguous");
        // every entry written by the product
        let dy = super::scratch_slice(scratch, yb.len());
        nn_piece(&ss, k, &gr, f, g, nodes, false, dy);
        for (row, d) in yb.chunks_exact_mut(f).zip(dy.chunks_exact(f)) {
            post(row, d);
        }
    });
    gs
}

/// $\bar S_g = Y_g \bar O_g^\top$, one small product per fixed piece of a
/// graph's rows (a row times $\bar O_g^\top$, [`rows::rows_times`]).
fn vjp_of_s<T: Scalar>(
    k: usize,
    y: ArrayView2<T>,
    segments: &Segments,
    grad: ArrayView2<T>,
) -> Array2<T> {
    let f = y.ncols();
    if k == 0 || f == 0 {
        return rows::zeros(y.nrows(), k);
    }
    // every row is written once (the graphs cover the nodes): fresh memory
    let mut gs = rows::fresh_matrix(y.nrows(), k);
    let (ys, gr) = (rows::row_major(&y), rows::row_major(&grad));
    for_each_segment_block_with_scratch(gs.view_mut(), segments, |scratch, g, nodes, mut block| {
        let out = block.as_slice_mut().expect("row blocks are contiguous");
        tn_vjp_s_piece(&ys, f, &gr, k, g, nodes, scratch, false, out);
    });
    gs
}

/// The rows `rows` of [`segment_matmul_tn_vjp`]'s $\bar S$ added into `out` (those
/// rows, row-major, $K$ = `k` columns): to row $n$ its product
/// $y_n \bar O_{g(n)}^\top$, formed first and added once to the row's old
/// value ([`rows::rows_times`] with `accumulate`), so each row's product has
/// the bits of that row of $\bar S$. `ys` is $Y$
/// ($N \times F$, $F$ = `f`) and `gr` is $\bar O$ ($(BK) \times F$), both
/// row-major. For a caller that forms $\bar S$ a piece of rows at a time
/// along with other terms of the same rows (sequential: the caller runs
/// the pieces in parallel).
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::segment::{segment_matmul_tn_vjp, segment_matmul_tn_vjp_s_add_rows};
/// use ndarray::array;
/// let segs = Segments::from_sizes(&[2, 0, 1]);
/// let s = array![[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]];
/// let y = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
/// let grad = array![[1.0, 0.0], [0.0, 1.0], [9.0, 9.0], [9.0, 9.0], [2.0, 0.0], [0.0, 2.0]];
/// let (whole, _) = segment_matmul_tn_vjp(s.view(), y.view(), &segs, grad.view());
/// // rows 1 and 2 (graphs 0 and 2) onto rows of ones
/// let mut out = vec![1.0; 4];
/// let (ys, gr) = (y.as_slice().unwrap(), grad.as_slice().unwrap());
/// segment_matmul_tn_vjp_s_add_rows(ys, 2, gr, 2, &segs, 1..3, &mut out);
/// assert_eq!(out, [1.0 + whole[[1, 0]], 1.0 + whole[[1, 1]], 1.0 + whole[[2, 0]], 1.0 + whole[[2, 1]]]);
/// assert_eq!(out, [4.0, 5.0, 11.0, 13.0]);
/// ```
pub fn segment_matmul_tn_vjp_s_add_rows<T: Scalar>(
    ys: &[T],
    f: usize,
    gr: &[T],
    k: usize,
    segments: &Segments,
    rows: std::ops::Range<usize>,
    out: &mut [T],
) {
    debug_assert_eq!(out.len(), rows.len() * k);
    if k == 0 || f == 0 {
        // empty sums: each row plus 0, as rows_times adds them
        for o in out.iter_mut() {
            *o += T::zero();
        }
        return;
    }
    let mut scratch = Vec::new();
    for_each_graph_piece(segments, rows.clone(), |g, nodes| {
        let piece = &mut out[(nodes.start - rows.start) * k..(nodes.end - rows.start) * k];
        tn_vjp_s_piece(ys, f, gr, k, g, nodes, &mut scratch, true, piece);
    });
}

/// `f(graph, nodes)` for the pieces of the graphs that hold the rows
/// `rows`, in order (empty graphs skipped).
fn for_each_graph_piece(
    segments: &Segments,
    rows: std::ops::Range<usize>,
    mut f: impl FnMut(usize, std::ops::Range<usize>),
) {
    if rows.is_empty() {
        return;
    }
    let mut g = segments.graph_of(rows.start);
    let mut start = rows.start;
    while start < rows.end {
        let end = segments.range(g).end.min(rows.end);
        if end > start {
            f(g, start..end);
        }
        start = end;
        g += 1;
    }
}

/// Rows `nodes` (of graph `g`) of [`vjp_of_s`] into `out`
/// (added to it with `accumulate`): $\bar O_g$ transposed into `scratch`,
/// then the rows $y_n \bar O_g^\top$ ([`rows::rows_times`]); $F, K > 0$.
#[allow(clippy::too_many_arguments)]
#[inline]
fn tn_vjp_s_piece<T: Scalar>(
    ys: &[T],
    f: usize,
    gr: &[T],
    k: usize,
    g: usize,
    nodes: std::ops::Range<usize>,
    scratch: &mut Vec<T>,
    accumulate: bool,
    out: &mut [T],
) {
    let og = &gr[g * k * f..(g + 1) * k * f];
    // every entry written by the transpose
    let ogt = super::scratch_slice(scratch, f * k);
    for (j, orow) in og.chunks_exact(f).enumerate() {
        for (i, &v) in orow.iter().enumerate() {
            ogt[i * k + j] = v;
        }
    }
    let yb = &ys[nodes.start * f..nodes.end * f];
    rows::rows_times(yb, f, ogt, k, None, accumulate, out);
}

/// VJP of the per-graph Gram matrix $P_g = S_g^\top S_g$
/// ([`segment_matmul_tn`] of $S$ with itself): with $\bar P_g$ the gradient
/// of block $g$, $\bar S_g = S_g (\bar P_g + \bar P_g^\top)$, one product
/// ([`segment_matmul_nn`]) with the symmetrised blocks instead of the two
/// of [`segment_matmul_tn_vjp`] (half the work, one $N \times K$ array).
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::segment::{segment_gram_vjp, segment_matmul_tn_vjp};
/// use ndarray::array;
/// let segs = Segments::from_sizes(&[2, 1]);
/// let s = array![[1.0, 0.0], [2.0, 3.0], [0.0, 1.0]];
/// let grad = array![[1.0, 2.0], [0.0, -1.0], [3.0, 0.0], [1.0, 1.0]];
/// let (g1, g2) = segment_matmul_tn_vjp(s.view(), s.view(), &segs, grad.view());
/// assert_eq!(segment_gram_vjp(s.view(), &segs, grad.view()), g1 + g2);
/// ```
pub fn segment_gram_vjp<T: Scalar>(
    s: ArrayView2<T>,
    segments: &Segments,
    grad: ArrayView2<T>,
) -> Array2<T> {
    let k = s.ncols();
    debug_assert_eq!(grad.dim(), (segments.num_graphs() * k, k));
    let mut sym = rows::fresh_matrix(grad.nrows(), k);
    if k > 0 {
        let gs = rows::row_major(&grad);
        sym.as_slice_mut()
            .expect("fresh matrices are standard layout")
            .par_chunks_mut(k * k)
            .zip(gs.par_chunks(k * k))
            .for_each(|(out, g)| {
                for (i, (orow, grow)) in out.chunks_exact_mut(k).zip(g.chunks_exact(k)).enumerate()
                {
                    for (j, (o, &v)) in orow.iter_mut().zip(grow).enumerate() {
                        *o = v + g[j * k + i];
                    }
                }
            });
    }
    segment_matmul_nn(s, sym.view(), segments)
}

/// Per-graph product $S_g O_g$ for a stacked per-node matrix $S$
/// ($N \times K$) and stacked per-graph blocks $O$ ($(BK) \times F$): the
/// $N \times F$ result holds node $n$'s row $s_n O_{g(n)}$ (the second half
/// of [`segment_matmul_tn_vjp`], bit for bit). Each entry is summed over
/// $k$ in order ([`rows::rows_times`]).
pub fn segment_matmul_nn<T: Scalar>(
    s: ArrayView2<T>,
    o: ArrayView2<T>,
    segments: &Segments,
) -> Array2<T> {
    let (k, f) = (s.ncols(), o.ncols());
    // every row is written once (the graphs cover the nodes): fresh memory
    let mut out = rows::fresh_matrix(s.nrows(), f);
    if f > 0 {
        segment_matmul_nn_into(
            &rows::row_major(&s),
            k,
            &rows::row_major(&o),
            f,
            segments,
            &mut out,
        );
    }
    out
}

fn segment_matmul_nn_into<T: Scalar>(
    ss: &[T],
    k: usize,
    os: &[T],
    f: usize,
    segments: &Segments,
    out: &mut Array2<T>,
) {
    for_each_segment_block(out.view_mut(), segments, |g, nodes, mut block| {
        let out = block.as_slice_mut().expect("row blocks are contiguous");
        nn_piece(ss, k, os, f, g, nodes, false, out);
    });
}

/// [`segment_matmul_nn`] combined into `out` ($N \times F$, the shape of
/// the product) entry by entry: `combine(o, q)` with $q$ each entry of
/// $s_n O_{g(n)}$, formed first (the bits of [`segment_matmul_nn`]'s row)
/// in a scratch piece per task, never as an $N \times F$ array. For a
/// backward pass that adds a term $S O$ (or $2\,S O$) into a gradient it
/// already holds.
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::segment::{segment_matmul_nn, segment_matmul_nn_combine};
/// use ndarray::array;
/// let segs = Segments::from_sizes(&[2, 1]);
/// let s = array![[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]];
/// let o = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]];
/// let mut out = array![[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]];
/// segment_matmul_nn_combine(s.view(), o.view(), &segs, &mut out, |o, q| *o += q + q);
/// let whole = segment_matmul_nn(s.view(), o.view(), &segs);
/// assert_eq!(out, whole.mapv(|q| 1.0 + (q + q)));
/// assert_eq!(out.row(1).to_vec(), vec![5.0, 7.0]);
/// ```
pub fn segment_matmul_nn_combine<T, C>(
    s: ArrayView2<T>,
    o: ArrayView2<T>,
    segments: &Segments,
    out: &mut Array2<T>,
    combine: C,
) where
    T: Scalar,
    C: Fn(&mut T, T) + Sync,
{
    debug_assert_eq!(out.dim(), (s.nrows(), o.ncols()));
    let (k, f) = (s.ncols(), o.ncols());
    if f == 0 {
        return;
    }
    let (ss, os) = (rows::row_major(&s), rows::row_major(&o));
    if !out.is_standard_layout() {
        *out = out.as_standard_layout().into_owned();
    }
    for_each_segment_block_with_scratch(
        out.view_mut(),
        segments,
        |scratch, g, nodes, mut block| {
            let ob = block.as_slice_mut().expect("row blocks are contiguous");
            // every entry written by the product
            let q = super::scratch_slice(scratch, ob.len());
            nn_piece(&ss, k, &os, f, g, nodes, false, q);
            ob.iter_mut()
                .zip(q.iter())
                .for_each(|(o, &q)| combine(o, q));
        },
    );
}

/// The rows `rows` of [`segment_matmul_nn`] added into `out` (those rows,
/// row-major, $F$ = `f` columns): to row $n$ its product $s_n O_{g(n)}$,
/// formed first and added once to the row's old value
/// ([`rows::rows_times`] with `accumulate`), so each row's product has the
/// bits of [`segment_matmul_nn`]'s row. `ss` is $S$ ($N \times K$, $K$ =
/// `k`) and `os` is $O$ ($(BK) \times F$), both row-major. For a caller that
/// forms $S O$ a piece of rows at a time along with other terms of the same
/// rows, without the $N \times F$ matrix (sequential: the caller runs the
/// pieces in parallel).
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::segment::{segment_matmul_nn, segment_matmul_nn_add_rows};
/// use ndarray::array;
/// let segs = Segments::from_sizes(&[2, 0, 1]);
/// let s = array![[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]];
/// let o = array![[1.0, 2.0], [3.0, 4.0], [9.0, 9.0], [9.0, 9.0], [5.0, 6.0], [7.0, 8.0]];
/// let whole = segment_matmul_nn(s.view(), o.view(), &segs);
/// // rows 1 and 2 (graphs 0 and 2) onto rows of ones
/// let mut out = vec![1.0; 4];
/// let (ss, os) = (s.as_slice().unwrap(), o.as_slice().unwrap());
/// segment_matmul_nn_add_rows(ss, 2, os, 2, &segs, 1..3, &mut out);
/// assert_eq!(out, [1.0 + whole[[1, 0]], 1.0 + whole[[1, 1]], 1.0 + whole[[2, 0]], 1.0 + whole[[2, 1]]]);
/// assert_eq!(out, [3.0, 4.0, 8.0, 9.0]);
/// ```
pub fn segment_matmul_nn_add_rows<T: Scalar>(
    ss: &[T],
    k: usize,
    os: &[T],
    f: usize,
    segments: &Segments,
    rows: std::ops::Range<usize>,
    out: &mut [T],
) {
    debug_assert_eq!(out.len(), rows.len() * f);
    if f == 0 {
        return;
    }
    for_each_graph_piece(segments, rows.clone(), |g, nodes| {
        let piece = &mut out[(nodes.start - rows.start) * f..(nodes.end - rows.start) * f];
        nn_piece(ss, k, os, f, g, nodes, true, piece);
    });
}

/// Rows `nodes` (of graph `g`) of [`segment_matmul_nn`] into `out` (added
/// to it with `accumulate`): the rows $s_n O_g$ ([`rows::rows_times`]),
/// `ss` and `os` row-major.
#[allow(clippy::too_many_arguments)]
#[inline]
fn nn_piece<T: Scalar>(
    ss: &[T],
    k: usize,
    os: &[T],
    f: usize,
    g: usize,
    nodes: std::ops::Range<usize>,
    accumulate: bool,
    out: &mut [T],
) {
    let og = &os[g * k * f..(g + 1) * k * f];
    let sb = &ss[nodes.start * k..nodes.end * k];
    rows::rows_times(sb, k, og, f, None, accumulate, out);
}

/// The `rank(n_g)`-th largest value of every column of $S$ within every graph
/// (a per-graph, per-column quantile), with the node that holds it.
///
/// `rank` is 1-based and clamped to $[1, n_g]$. Values are ordered by
/// [`Scalar::ordered`] descending, ties broken by the smaller node index first
/// (TensorFlow's `top_k` order), so the chosen node is unique and independent
/// of the thread count. An empty graph gives value 0 and no node.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentKthLargest<T: Scalar> {
    /// $B \times K$: the chosen value of column $k$ in graph $g$.
    pub values: Array2<T>,
    /// $B \times K$: the node holding it, `usize::MAX` for an empty graph.
    pub nodes: Array2<usize>,
}

/// Computes [`SegmentKthLargest`]: per graph and column, in parallel over
/// graphs and, inside a graph larger than [`super::CHUNK`], over columns. A
/// rank up to [`SMALL_RANK`] is found by one scan over the graph's rows that
/// keeps the best `rank` values of 16 columns at a time in order
/// ($O(n_g \cdot \text{rank})$, no allocation); a larger one by a selection
/// per column ($O(n_g)$ expected, not a full sort). The order is total, so
/// both find the same node.
///
/// AsymCheegerCutPool's balance term uses it with
/// $\text{rank}(n) = \lfloor n / K \rfloor + 1$ (Spektral's `top_k(...)[-1]`).
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::segment::segment_kth_largest;
/// use ndarray::array;
///
/// // graph 0: nodes 0..3, graph 1: node 3; the 2nd largest per column
/// let seg = Segments::from_graph_ids(&[0, 0, 0, 1], 2)?;
/// let s = array![[0.1, 0.5], [0.7, 0.5], [0.4, 0.2], [0.9, 0.3]];
/// let q = segment_kth_largest(s.view(), &seg, |_| 2);
/// assert_eq!(q.values, array![[0.4, 0.5], [0.9, 0.3]]);
/// // the tie in column 1 (nodes 0 and 1): the smaller node ranks first
/// assert_eq!(q.nodes, array![[2, 1], [3, 3]]);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
pub fn segment_kth_largest<T: Scalar>(
    s: ArrayView2<T>,
    segments: &Segments,
    rank: impl Fn(usize) -> usize + Sync,
) -> SegmentKthLargest<T> {
    use rayon::prelude::*;
    let k = s.ncols();
    let b = segments.num_graphs();
    let mut values = vec![T::zero(); b * k];
    let mut nodes = vec![usize::MAX; b * k];
    if k > 0 {
        // a rank above SMALL_RANK: a selection over one column
        let column = |r: std::ops::Range<usize>, c: usize, buf: &mut Vec<(T::Ordered, usize)>| {
            let pos = rank(r.len()).clamp(1, r.len()) - 1;
            buf.clear();
            buf.extend(r.map(|n| (s[[n, c]].ordered(), n)));
            let (_, &mut (_, node), _) = buf.select_nth_unstable_by(pos, rank_order);
            (s[[node, c]], node)
        };
        // the rows of S in row-major order, for the row scan
        let rows = s.as_standard_layout();
        let rows = rows.as_slice().expect("standard layout");
        values
            .par_chunks_mut(k)
            .zip(nodes.par_chunks_mut(k))
            .enumerate()
            .for_each_init(Vec::new, |buf, (g, (vs, ns))| {
                let r = segments.range(g);
                if r.is_empty() {
                    return;
                }
                let want = rank(r.len()).clamp(1, r.len());
                let large = r.len() > super::CHUNK;
                let graph_rows = &rows[r.start * k..r.end * k];
                // one group of ROW_SCAN_LANES columns: its first column and
                // its slices of the results
                let scan = |(j, (v, n)): (usize, (&mut [T], &mut [usize]))| {
                    let c0 = j * ROW_SCAN_LANES;
                    best_in_rows(graph_rows, k, c0..c0 + v.len(), want, r.start, v, n);
                };
                match (want <= SMALL_RANK, large) {
                    (true, false) => vs
                        .chunks_mut(ROW_SCAN_LANES)
                        .zip(ns.chunks_mut(ROW_SCAN_LANES))
                        .enumerate()
                        .for_each(scan),
                    (true, true) => vs
                        .par_chunks_mut(ROW_SCAN_LANES)
                        .zip(ns.par_chunks_mut(ROW_SCAN_LANES))
                        .enumerate()
                        .for_each(scan),
                    (false, false) => {
                        for (c, (v, n)) in vs.iter_mut().zip(ns.iter_mut()).enumerate() {
                            (*v, *n) = column(r.clone(), c, buf);
                        }
                    }
                    (false, true) => {
                        let picked: Vec<(T, usize)> = (0..k)
                            .into_par_iter()
                            .map_init(Vec::new, |buf, c| column(r.clone(), c, buf))
                            .collect();
                        for ((v, n), p) in vs.iter_mut().zip(ns.iter_mut()).zip(picked) {
                            (*v, *n) = p;
                        }
                    }
                }
            });
    }
    SegmentKthLargest {
        values: Array2::from_shape_vec((b, k), values).expect("B * K values"),
        nodes: Array2::from_shape_vec((b, k), nodes).expect("B * K nodes"),
    }
}

/// Ranks up to this one are found by a scan ([`segment_kth_largest`]).
pub const SMALL_RANK: usize = 8;

/// The order of [`segment_kth_largest`]: larger value first, then smaller
/// node (a total order: `Less` means `a` ranks before `b`).
#[inline]
fn rank_order<O: Ord>(a: &(O, usize), b: &(O, usize)) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Columns that [`best_in_rows`] takes side by side (one vector of `f32`
/// with AVX-512).
const ROW_SCAN_LANES: usize = 16;

simd_levels! {
/// For the rows of one graph (`rows`, row-major with `k` columns, local node
/// $i$ in row $i$; at least `want` rows, `want` in $1..=$ [`SMALL_RANK`])
/// and a group `cols` of at most [`ROW_SCAN_LANES`] columns, the `want`-th
/// best entry of every column in [`rank_order`]: writes the value of column
/// `cols.start + j` to `vs[j]` and its node, `first` + local node, to
/// `ns[j]`.
///
/// One pass over the rows in node order, the group's columns side by side,
/// each keeping its best `want` entries in order. A later node ranks
/// before a kept one exactly when its value is larger, so each row's entry
/// passes the kept levels that are not smaller, takes the first that is, and
/// every kept entry from there moves one level down (all by selects, so the
/// columns go side by side in vector lanes). Each level's select reads only
/// the row's entry and the old levels: a flag carried from level to level
/// was miscompiled by rustc 1.95's LLVM for AVX2 and AVX-512, which
/// `kth_largest_equals_a_full_sort_per_graph_and_column` caught. Compiled
/// for each SIMD level and chosen at run time; only comparisons and moves,
/// so the same node on every CPU.
fn best_in_rows<T: Scalar>(
    rows: &[T],
    k: usize,
    cols: std::ops::Range<usize>,
    want: usize,
    first: usize,
    vs: &mut [T],
    ns: &mut [usize],
) {
    const L: usize = ROW_SCAN_LANES;
    debug_assert!((1..=SMALL_RANK).contains(&want) && rows.len() >= want * k);
    debug_assert!(rows.len() / k.max(1) <= u32::MAX as usize);
    let w = cols.len();
    debug_assert!(w <= L && vs.len() == w && ns.len() == w);
    let mut top_v = [[T::zero(); L]; SMALL_RANK];
    let mut top_n = [[0u32; L]; SMALL_RANK];
    for (i, row) in rows.chunks_exact(k).enumerate() {
        let mut v = [T::zero(); L];
        v[..w].copy_from_slice(&row[cols.clone()]);
        let n = i as u32;
        // level j keeps its entry when that is not smaller than the row's
        // (a prefix of the levels; a free level keeps nothing); the first
        // level that is smaller takes the row's entry, each one below it the
        // entry of the level above; bottom up, so the level above is read
        // before it changes
        for j in (0..want.min(i + 1)).rev() {
            for l in 0..L {
                let keep = j < i && v[l].ordered() <= top_v[j][l].ordered();
                let (nv, nn) = if j == 0 || v[l].ordered() <= top_v[j - 1][l].ordered() {
                    (v[l], n)
                } else {
                    (top_v[j - 1][l], top_n[j - 1][l])
                };
                if !keep {
                    top_v[j][l] = nv;
                    top_n[j][l] = nn;
                }
            }
        }
    }
    for l in 0..w {
        vs[l] = top_v[want - 1][l];
        ns[l] = first + top_n[want - 1][l] as usize;
    }
}
}

/// VJP of [`segment_kth_largest`]: the gradient of the value of column $k$
/// in graph $g$ goes to the node that holds it (as TensorFlow's `top_k`
/// gradient); every other entry gets 0. `num_nodes` is $N$.
pub fn segment_kth_largest_vjp<T: Scalar>(
    picked: &SegmentKthLargest<T>,
    grad: ArrayView2<T>,
    num_nodes: usize,
) -> Array2<T> {
    let mut gs = super::rows::zeros(num_nodes, picked.nodes.ncols());
    segment_kth_largest_vjp_add(picked, grad, &mut gs);
    gs
}

/// [`segment_kth_largest_vjp`] added into `gs` ($N \times K$) in place:
/// `gs[node, k] += grad[g, k]` for each picked node, nothing else touched
/// (no $N \times K$ temporary; a node holds at most one pick per column, as
/// it lies in one graph).
pub fn segment_kth_largest_vjp_add<T: Scalar>(
    picked: &SegmentKthLargest<T>,
    grad: ArrayView2<T>,
    gs: &mut Array2<T>,
) {
    for ((g, c), &n) in picked.nodes.indexed_iter() {
        if n != usize::MAX {
            gs[[n, c]] += grad[[g, c]];
        }
    }
}

/// Zero-diagonal, symmetrically normalised stacked $K \times K$ blocks (the
/// post-processing of MinCut's, JustBalance's and PyG-DMoN's pooled
/// adjacency), with what the VJP needs.
///
/// For each block $C$: $Z = C$ with its diagonal set to 0, $d_i = \sum_j Z_{ij}$,
/// $D_i = \sqrt{\max(d_i, 0)} + \varepsilon$ and
/// $$\mathrm{out}_{ij} = \frac{Z_{ij}}{D_i D_j}.$$
/// Spektral's `normalize_A` uses $\varepsilon = 10^{-7}$ (`K.epsilon()`), PyG
/// $10^{-15}$. A non-positive degree (an isolated pooled node, or negative
/// weights) is taken as 0 under the root instead of giving NaN.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizedBlocks<T: Scalar> {
    /// The normalised blocks, $(B K) \times K$.
    pub out: Array2<T>,
    /// $d_i$ of every pooled node, length $B K$.
    pub degrees: Array1<T>,
    /// $D_i$ of every pooled node, length $B K$.
    pub denominators: Array1<T>,
}

/// Computes [`NormalizedBlocks`] from stacked blocks ($(B K) \times K$), in
/// parallel over groups of [`NORMALIZE_GROUP`] blocks.
pub fn normalize_blocks<T: Scalar>(blocks: ArrayView2<T>, eps: T) -> NormalizedBlocks<T> {
    let k = blocks.ncols();
    let rows = blocks.nrows();
    let src = super::rows::row_major(&blocks);
    let mut out = super::rows::fresh_matrix(rows, k);
    let mut degrees = vec![T::zero(); rows];
    let mut denominators = vec![T::zero(); rows];
    if k > 0 {
        let group = NORMALIZE_GROUP * k;
        out.as_slice_mut()
            .expect("fresh matrices are standard layout")
            .par_chunks_mut(group * k)
            .zip(src.par_chunks(group * k))
            .zip(degrees.par_chunks_mut(group))
            .zip(denominators.par_chunks_mut(group))
            .for_each(|(((ob, sb), db), qb)| normalize_block_group(sb, k, eps, ob, db, qb));
    }
    NormalizedBlocks {
        out,
        degrees: Array1::from(degrees),
        denominators: Array1::from(denominators),
    }
}

/// Blocks per work item of [`normalize_blocks`]: 64 blocks of $16 \times 16$
/// `f32` are 64 KiB of input.
pub const NORMALIZE_GROUP: usize = 64;

simd_levels! {
/// [`normalize_blocks`] of the whole $k \times k$ blocks `src` into `out`,
/// with their rows' $d_i$ and $D_i$, block by block: first every row's sum
/// $d_i$ of $Z$ (the row with its diagonal entry replaced by $+0$, summed in
/// ndarray's order for a contiguous row, as `sum_axis` forms it:
/// [`rows::sum`]), then every $D_i$, then every $Z_{ij} / D_i / D_j$. Both passes
/// read `src`, never the `out` just written (a load that spans several
/// smaller stores waits for them to reach the cache). Compiled for each
/// SIMD level; one operation per value in the same order at every level,
/// so the same bits.
fn normalize_block_group<T: Scalar>(
    src: &[T],
    k: usize,
    eps: T,
    out: &mut [T],
    degrees: &mut [T],
    denominators: &mut [T],
) {
    let zero = T::zero();
    let z = |i: usize, j: usize, v: T| if i == j { zero } else { v };
    for (((ob, sb), db), qb) in out
        .chunks_exact_mut(k * k)
        .zip(src.chunks_exact(k * k))
        .zip(degrees.chunks_exact_mut(k))
        .zip(denominators.chunks_exact_mut(k))
    {
        for (i, (from, d)) in sb.chunks_exact(k).zip(db.iter_mut()).enumerate() {
            *d = rows::lane_sum_indexed(from, |j, v| z(i, j, v));
        }
        // the roots in a loop of their own, a vector of rows at a time
        for (q, &d) in qb.iter_mut().zip(db.iter()) {
            *q = d.max(zero).sqrt() + eps;
        }
        for (i, ((row, from), &qi)) in ob
            .chunks_exact_mut(k)
            .zip(sb.chunks_exact(k))
            .zip(qb.iter())
            .enumerate()
        {
            for (j, ((v, &f), &qj)) in row.iter_mut().zip(from).zip(qb.iter()).enumerate() {
                *v = z(i, j, f) / qi / qj;
            }
        }
    }
}
}

/// VJP of [`normalize_blocks`] plus the gradient `direct` that reaches the
/// raw blocks by another path (a loss's trace term), **computed in `f64`**
/// whatever `T` is. With $\bar O$ the output gradient,
/// $\bar D_i = -\frac{1}{D_i}\sum_j(\bar O_{ij}\mathrm{out}_{ij} + \bar O_{ji}\mathrm{out}_{ji})$,
/// $\bar d_i = \bar D_i / (2\sqrt{d_i})$ (0 where $d_i \le 0$) and
/// $$\bar C_{ij} = [i \ne j]\,\Big(\frac{\bar O_{ij}}{D_i D_j} + \bar d_i\Big) + \mathrm{direct}_{ij}.$$
///
/// Why `f64`: with a saturated assignment a pooled degree $d_i$ can be as
/// small as $10^{-45}$, and with PyG's $\varepsilon = 10^{-15}$ the factor
/// $1/(2 D_i \sqrt{d_i})$ reaches $10^{37}$, so $\bar C$ leaves `f32`'s
/// range even though the gradient it finally gives the logits (after
/// multiplying by the tiny assignment entries) is moderate. The caller
/// decides per graph whether the blocks fit `T` (see
/// [`blocks_fit`]).
pub fn normalize_blocks_vjp<T: Scalar>(
    norm: &NormalizedBlocks<T>,
    grad: ArrayView2<T>,
    direct: ArrayView2<T>,
) -> Array2<f64> {
    let k = norm.out.ncols();
    // every entry is written once: fresh memory; per block, in parallel,
    // on contiguous slices
    let mut gc = super::rows::fresh_matrix(norm.out.nrows(), k);
    if k == 0 {
        return gc;
    }
    let out_view = norm.out.view();
    let (outs, gos, dirs) = (
        rows::row_major(&out_view),
        rows::row_major(&grad),
        rows::row_major(&direct),
    );
    let (den_view, deg_view) = (norm.denominators.view(), norm.degrees.view());
    let (dens, degs) = (rows::row_major_1d(&den_view), rows::row_major_1d(&deg_view));
    let inputs = BlocksVjpInputs {
        k,
        out: &outs,
        grad: &gos,
        direct: &dirs,
        den: &dens,
        deg: &degs,
    };
    gc.as_slice_mut()
        .expect("fresh matrices are standard layout")
        .par_chunks_mut(NORMALIZE_GROUP * k * k)
        .enumerate()
        .for_each_init(Vec::new, |scratch, (c, blocks)| {
            normalize_group_vjp(&inputs, c * NORMALIZE_GROUP, blocks, scratch);
        });
    gc
}

/// The inputs of [`normalize_blocks_vjp`] as row-major slices: the
/// normalised blocks, their gradient, the direct gradient, and every pooled
/// node's $D_i$ and $d_i$.
struct BlocksVjpInputs<'a, T> {
    k: usize,
    out: &'a [T],
    grad: &'a [T],
    direct: &'a [T],
    den: &'a [T],
    deg: &'a [T],
}

simd_levels! {
/// [`normalize_blocks_vjp`] of the blocks `first..` into `gc` (whole
/// $k \times k$ blocks, `f64`), block by block: the products
/// $p_{ij} = \bar O_{ij}\,\mathrm{out}_{ij}$ and their transpose into
/// `scratch`, then every row's
/// $\sum_j (p_{ij} + p_{ji})$ (added over $j$ in order from $+0$), $\bar D_i$
/// and $\bar d_i$ side by side, then every entry. The same operations in the
/// same order per value as one row at a time (an addition's operands are
/// taken in either order, which gives the same sum), at every SIMD level.
/// The former loop read $p_{ji}$ down a column and added one row's terms
/// in one chain: 470 ns a block of 16 in cache, one thread.
fn normalize_group_vjp<T: Scalar>(
    inputs: &BlocksVjpInputs<'_, T>,
    first: usize,
    gc: &mut [f64],
    scratch: &mut Vec<f64>,
) {
    let k = inputs.k;
    let kk = k * k;
    let wide = |v: T| v.to_f64().unwrap_or(f64::NAN);
    let scratch = super::scratch_slice(scratch, 2 * kk + k);
    let (p, rest) = scratch.split_at_mut(kk);
    let (pt, gd) = rest.split_at_mut(kk);
    for (c, block) in gc.chunks_exact_mut(kk).enumerate() {
        let g = first + c;
        let r = g * kk..(g + 1) * kk;
        let (out, go, direct) = (&inputs.out[r.clone()], &inputs.grad[r.clone()], &inputs.direct[r]);
        let (den, deg) = (&inputs.den[g * k..(g + 1) * k], &inputs.deg[g * k..(g + 1) * k]);
        for ((pv, &o), &v) in p.iter_mut().zip(out).zip(go) {
            *pv = wide(v) * wide(o);
        }
        for (i, prow) in p.chunks_exact(k).enumerate() {
            for (j, &v) in prow.iter().enumerate() {
                pt[j * k + i] = v;
            }
        }
        gd.fill(0.0);
        for (prow, ptrow) in p.chunks_exact(k).zip(pt.chunks_exact(k)) {
            // row j of p holds p_ji, row j of pt holds p_ij, for every i
            for ((acc, &pji), &pij) in gd.iter_mut().zip(prow).zip(ptrow) {
                *acc += pij + pji;
            }
        }
        for ((acc, &dn), &dg) in gd.iter_mut().zip(den).zip(deg) {
            let g_den = -*acc / wide(dn);
            let d = wide(dg);
            *acc = if d > 0.0 { g_den / (2.0 * d.sqrt()) } else { 0.0 };
        }
        for (i, ((row, gorow), drow)) in block
            .chunks_exact_mut(k)
            .zip(go.chunks_exact(k))
            .zip(direct.chunks_exact(k))
            .enumerate()
        {
            let (di, gdi) = (wide(den[i]), gd[i]);
            for (j, ((v, &gv), &dv)) in row.iter_mut().zip(gorow).zip(drow).enumerate() {
                let through_norm = if i != j {
                    wide(gv) / (di * wide(den[j])) + gdi
                } else {
                    0.0
                };
                *v = through_norm + wide(dv);
            }
        }
    }
}
}

/// Whether every entry of each stacked $K \times K$ block stays below
/// $\sqrt{\mathrm{T::MAX}}$ in magnitude (one flag per block): such a block
/// can be carried through the rest of a backward pass in `T` with room to
/// spare for the products that follow; a block that does not (or is not
/// finite) needs `f64`.
pub fn blocks_fit<T: Scalar>(blocks: ArrayView2<f64>, k: usize) -> Vec<bool> {
    let limit = T::max_value().to_f64().unwrap_or(f64::MAX).sqrt();
    if k == 0 {
        return Vec::new();
    }
    blocks
        .axis_chunks_iter(Axis(0), k)
        .map(|block| block.iter().all(|v| v.abs() <= limit))
        .collect()
}

/// Most pieces a graph is cut into by [`segment_column_sums`] (each piece
/// holds a private accumulator as long as the graph).
pub const COLUMN_SUM_PIECES: usize = 8;

/// Column sums over the stored entries of a block-diagonal CSR structure
/// (every entry $(r, c)$ within one graph, as in a [`crate::DisjointBatch`]):
/// $$\mathrm{out}_c = \sum_{(r, c) \text{ stored}} \mathrm{value}(e, r, c)$$
/// for `W` values at once ($e$ the entry's position in `a.data()`); rows
/// for which `skip_row(r)` holds are left out (their values must be 0).
/// With `value` $= a_e v_r$ this is $A^\top v$ without a transpose.
///
/// Deterministic without building $A^\top$: a graph of at most
/// [`super::CHUNK`] nodes is summed by one task in row order (runs of such
/// graphs per task, see [`super::segment_work`]); a larger graph of $n$
/// nodes is cut into pieces of $\max(\mathrm{CHUNK}, \lceil n /
/// \mathrm{COLUMN\_SUM\_PIECES}\rceil)$ rows counted from its first node,
/// each summed in row order into a private accumulator of $n$ columns, and
/// the pieces added in order. The cut depends only on the graph: the same
/// bits on any thread count and for a graph inside a batch as alone.
pub fn segment_column_sums<T, const W: usize, V, S>(
    a: sprs::CsMatView<T>,
    segments: &Segments,
    skip_row: S,
    value: V,
) -> Vec<[T; W]>
where
    T: Scalar,
    V: Fn(usize, usize, usize) -> [T; W] + Sync,
    S: Fn(usize) -> bool + Sync,
{
    segment_column_sums_then(a, segments, skip_row, value, |_, _| {})
}

/// [`segment_column_sums`], then `finish(c, out_c)` on every column once its
/// sums are complete, in the task that summed it while its sums are in
/// cache (a term that must come after every stored entry's, such as an
/// added diagonal). The same bits as a pass of `finish` over the result.
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::segment::{segment_column_sums, segment_column_sums_then};
/// use sprs::CsMat;
/// let a = CsMat::new((3, 3), vec![0, 1, 2, 2], vec![1, 0], vec![2.0_f64, 3.0]);
/// let seg = Segments::from_sizes(&[2, 1]);
/// let plain = segment_column_sums(a.view(), &seg, |_| false, |e, _, _| [a.data()[e]]);
/// assert_eq!(plain, vec![[3.0], [2.0], [0.0]]);
/// let then = segment_column_sums_then(a.view(), &seg, |_| false, |e, _, _| [a.data()[e]], |c, s| {
///     s[0] += c as f64
/// });
/// assert_eq!(then, vec![[3.0], [3.0], [2.0]]);
/// ```
pub fn segment_column_sums_then<T, const W: usize, V, S, Fi>(
    a: sprs::CsMatView<T>,
    segments: &Segments,
    skip_row: S,
    value: V,
    finish: Fi,
) -> Vec<[T; W]>
where
    T: Scalar,
    V: Fn(usize, usize, usize) -> [T; W] + Sync,
    S: Fn(usize) -> bool + Sync,
    Fi: Fn(usize, &mut [T; W]) + Sync,
{
    use rayon::prelude::*;
    let n = segments.num_nodes();
    debug_assert_eq!(a.rows(), n);
    let raw = super::sparse::RawCsr::new(&a);
    let idx = a.indices();
    let offsets = segments.offsets();
    // rows r0..r1 summed in row order into acc, whose first column is c0
    let sum_rows = |rows: std::ops::Range<usize>, c0: usize, acc: &mut [[T; W]]| {
        for r in rows {
            if skip_row(r) {
                continue;
            }
            let es = raw.range(r);
            for (e, &c) in es.clone().zip(&idx[es]) {
                let v = value(e, r, c);
                let slot = &mut acc[c - c0];
                for (s, v) in slot.iter_mut().zip(v) {
                    *s += v;
                }
            }
        }
    };
    let mut out = vec![[T::zero(); W]; n];
    // runs of small graphs: each task owns its graphs' columns
    let mut runs = Vec::new();
    let mut large = Vec::new();
    let mut rest: &mut [[T; W]] = &mut out;
    let mut at = 0;
    for item in super::segment_work(segments) {
        let (graphs, is_run) = match item {
            super::SegmentWork::Graphs(gr) => (gr, true),
            super::SegmentWork::Piece { graph, nodes } => {
                if nodes.start != offsets[graph] {
                    continue;
                }
                (graph..graph + 1, false)
            }
        };
        let nodes = offsets[graphs.start]..offsets[graphs.end];
        debug_assert_eq!(nodes.start, at);
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(nodes.len());
        rest = tail;
        at = nodes.end;
        if is_run {
            runs.push((nodes, head));
        } else {
            large.push((nodes, head));
        }
    }
    runs.into_par_iter().for_each(|(nodes, acc)| {
        // zeroed by writing (fresh pages: an accumulation would fault twice)
        acc.fill([T::zero(); W]);
        let c0 = nodes.start;
        sum_rows(nodes, c0, acc);
        for (i, slot) in acc.iter_mut().enumerate() {
            finish(c0 + i, slot);
        }
    });
    for (nodes, acc) in large {
        let len = nodes.len().div_ceil(COLUMN_SUM_PIECES).max(super::CHUNK);
        let starts: Vec<usize> = nodes.clone().step_by(len).collect();
        let c0 = nodes.start;
        let partials: Vec<Vec<[T; W]>> = starts
            .into_par_iter()
            .map(|s| {
                let mut p = Vec::with_capacity(nodes.len());
                p.resize(nodes.len(), [T::zero(); W]);
                sum_rows(s..(s + len).min(nodes.end), c0, &mut p);
                p
            })
            .collect();
        // from 0: the first piece, then the others in order
        acc.par_chunks_mut(super::ROW_BLOCK)
            .enumerate()
            .for_each(|(b, block)| {
                let lo = b * super::ROW_BLOCK;
                for (i, slot) in block.iter_mut().enumerate() {
                    *slot = [T::zero(); W];
                    for p in &partials {
                        for (s, v) in slot.iter_mut().zip(p[lo + i]) {
                            *s += v;
                        }
                    }
                    finish(c0 + lo + i, slot);
                }
            });
    }
    out
}
