//! Sparse kernels on CSR matrices: row-parallel products with dense
//! matrices, transposition that remembers where each entry came from, and
//! induced subgraphs. None of them ever forms a dense $N \times N$ matrix.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, Zip};
use rayon::prelude::*;
use sprs::{CsMat, CsMatView};

use super::segment::{segment_column_sums, segment_column_sums_then};
use super::{map_rows, rows, ROW_BLOCK};
use crate::batch::Segments;
use crate::error::PoolError;
use crate::scalar::Scalar;

/// The raw CSR arrays of a matrix view, with row access by plain slices
/// (the row pointer rebased to 0 for views that start inside a larger
/// matrix).
#[derive(Clone, Copy)]
pub(crate) struct RawCsr<'a, T> {
    indptr: &'a [usize],
    base: usize,
    indices: &'a [usize],
    data: &'a [T],
    /// Number of rows.
    pub rows: usize,
}

impl<'a, T> RawCsr<'a, T> {
    /// The arrays of `a`, which must be CSR.
    pub(crate) fn new(a: &'a CsMatView<'_, T>) -> Self {
        let indptr = a.indptr().into_raw_storage();
        Self {
            base: indptr[0],
            indptr,
            indices: a.indices(),
            data: a.data(),
            rows: a.rows(),
        }
    }

    /// The positions in `data` of row `r`'s stored entries.
    #[inline]
    pub(crate) fn range(&self, r: usize) -> std::ops::Range<usize> {
        self.indptr[r] - self.base..self.indptr[r + 1] - self.base
    }

    /// The positions in `data` of the stored entries of `rows` (consecutive).
    #[inline]
    pub(crate) fn rows_range(&self, rows: std::ops::Range<usize>) -> std::ops::Range<usize> {
        self.indptr[rows.start] - self.base..self.indptr[rows.end] - self.base
    }

    /// `out` (one value per stored entry, aligned with `data`) cut into the
    /// pieces of consecutive blocks of [`ROW_BLOCK`] rows: each block's rows
    /// and the slice of `out` that holds their entries (whose first element
    /// is entry `rows_range(rows).start`), for a row-parallel pass that
    /// writes every entry in place.
    pub(crate) fn entry_blocks<'o, R>(
        &self,
        out: &'o mut [R],
    ) -> Vec<(std::ops::Range<usize>, &'o mut [R])> {
        let mut pieces = Vec::with_capacity(self.rows.div_ceil(ROW_BLOCK));
        let mut rest = out;
        for first in (0..self.rows).step_by(ROW_BLOCK) {
            let rows = first..(first + ROW_BLOCK).min(self.rows);
            let (head, tail) =
                std::mem::take(&mut rest).split_at_mut(self.rows_range(rows.clone()).len());
            pieces.push((rows, head));
            rest = tail;
        }
        pieces
    }

    /// Calls `f(r, c, e)` for every stored entry $(r, c)$ with
    /// `lo <= c < hi`, rows ascending (then columns), where `e` is the
    /// entry's position in `data`. A row whose first and last column both
    /// miss the range is skipped in $O(1)$: columns are sorted.
    #[inline]
    pub(crate) fn for_each_in_columns(
        &self,
        lo: usize,
        hi: usize,
        mut f: impl FnMut(usize, usize, usize),
    ) {
        for r in 0..self.rows {
            let e = self.range(r);
            let cs = &self.indices[e.clone()];
            match (cs.first(), cs.last()) {
                (Some(&first), Some(&last)) if last >= lo && first < hi => {}
                _ => continue,
            }
            let start = cs.partition_point(|&c| c < lo);
            for (i, &c) in cs[start..].iter().enumerate() {
                if c >= hi {
                    break;
                }
                f(r, c, e.start + start + i);
            }
        }
    }

    /// Asks the CPU to start loading the row of `xs` (row-major, rows of
    /// `width`) named by the column of stored entry `e + PREFETCH_AHEAD`, if
    /// that entry exists: the row a gather over the entries in storage order
    /// needs [`rows::PREFETCH_AHEAD`] entries from now, maybe in a later row
    /// ([`rows::prefetch_row_ahead`] over the columns).
    #[inline(always)]
    pub(crate) fn prefetch_column_row<U>(&self, e: usize, xs: &[U], width: usize) {
        rows::prefetch_row_ahead(xs, width, self.indices, e);
    }

    /// Asks the CPU to start loading what a pass over the rows `order` (in
    /// that order) will read `ahead` rows after the `i`-th: the row pointer
    /// of `order[i + 2 * ahead]` and the columns and values of
    /// `order[i + ahead]`. A pass over scattered rows of a few entries each
    /// is latency-bound: each row's loop exit mispredicts, which would
    /// otherwise leave every row waiting for its own loads (the induced
    /// subgraph's former counting pass, 10⁶ nodes and 10⁷ edges: 7.9-8.3 ms
    /// without, 5.7-6.2 ms with, [`ROWS_AHEAD`] rows ahead). A hint only:
    /// no effect on results.
    #[inline(always)]
    pub(crate) fn prefetch_rows_ahead(&self, order: &[usize], i: usize, ahead: usize) {
        if let Some(&far) = order.get(i + 2 * ahead) {
            rows::prefetch(&self.indptr[far..far + 1]);
        }
        if let Some(&near) = order.get(i + ahead) {
            let m = self.range(near);
            rows::prefetch(&self.indices[m.clone()]);
            rows::prefetch(&self.data[m]);
        }
    }

    /// Column indices and values of row `r`.
    #[inline]
    pub(crate) fn row(&self, r: usize) -> (&'a [usize], &'a [T]) {
        let e = self.range(r);
        (&self.indices[e.clone()], &self.data[e])
    }
}

/// The entries of a square sparse operator, row by row in column order, as
/// the product kernels read them: a stored CSR matrix ([`Stored`]), or the
/// GCN filter of one formed entry by entry as it is read
/// ([`GcnOperator`]). Each entry comes with a position in the structure's
/// stored entries at or next to it, for the kernels' prefetching.
pub(crate) trait RowEntries<T: Scalar>: Copy + Send + Sync {
    /// The stored structure the entries are read from.
    fn structure(&self) -> RawCsr<'_, T>;

    /// `f(e, c, v)` for every entry $(r, c)$ of row `r`, columns ascending.
    fn for_each_in_row(&self, r: usize, f: impl FnMut(usize, usize, T));

    /// `f(r, c, e, v)` for every entry $(r, c)$ with `lo <= c < hi`, rows
    /// ascending (within a row in any order: no two of a row's entries share
    /// a column).
    fn for_each_in_columns(&self, lo: usize, hi: usize, f: impl FnMut(usize, usize, usize, T));
}

/// A stored CSR matrix: the structure of `raw` with the values `vals`
/// (aligned with its entries).
#[derive(Clone, Copy)]
pub(crate) struct Stored<'a, T> {
    raw: RawCsr<'a, T>,
    vals: &'a [T],
}

impl<'a, T> Stored<'a, T> {
    /// The structure and values of `a`.
    fn of(a: &'a CsMatView<'_, T>) -> Self {
        Self::with_values(RawCsr::new(a), a.data())
    }

    /// The structure of `raw` with the values `vals`.
    fn with_values(raw: RawCsr<'a, T>, vals: &'a [T]) -> Self {
        debug_assert_eq!(raw.data.len(), vals.len());
        Self { raw, vals }
    }
}

impl<T: Scalar> RowEntries<T> for Stored<'_, T> {
    #[inline(always)]
    fn structure(&self) -> RawCsr<'_, T> {
        self.raw
    }

    #[inline(always)]
    fn for_each_in_row(&self, r: usize, mut f: impl FnMut(usize, usize, T)) {
        for e in self.raw.range(r) {
            f(e, self.raw.indices[e], self.vals[e]);
        }
    }

    #[inline(always)]
    fn for_each_in_columns(&self, lo: usize, hi: usize, mut f: impl FnMut(usize, usize, usize, T)) {
        self.raw
            .for_each_in_columns(lo, hi, |r, c, e| f(r, c, e, self.vals[e]));
    }
}

/// How many rows ahead the induced subgraph's pass asks
/// [`RawCsr::prefetch_rows_ahead`] for: rows of about ten entries (80 bytes
/// of columns), so some 30 rows keep as many lines in flight as
/// [`rows::PREFETCH_AHEAD`] rows of 64 `f32` do.
const ROWS_AHEAD: usize = 32;

/// Which graphs of a block-diagonal $A$ are symmetric, bit for bit: entry
/// $g$ is `true` iff for every stored entry $(r, c)$ of graph $g$'s block
/// the entry $(c, r)$ is stored with the same bits ($-0 \ne +0$; a NaN is
/// never equal). Length $B$; an empty or edgeless graph is symmetric.
///
/// Each stored entry above the diagonal looks up its mirror by binary search
/// in the mirror's row (sorted columns), and a graph must hold as many
/// entries below its diagonal as above: the mirror map is then a bijection.
/// $O(\mathrm{nnz} \log d)$ work, no allocation beyond the result, in
/// parallel over the fixed [`segment_work`](super::segment_work) items
/// (many small graphs per task, a large graph cut in pieces).
///
/// A symmetric graph has $A_g^\top Y_g = A_g Y_g$: the backward passes use it
/// to skip a transposed product ([`crate::DisjointBatch::symmetric_graphs`]
/// computes it once per batch).
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::sparse::symmetric_graphs;
/// use sprs::CsMat;
/// // graph 0: 0 <-> 1 (weights 2, 2); graph 1: 2 -> 3 only
/// let a = CsMat::new((4, 4), vec![0, 1, 2, 3, 3], vec![1, 0, 3], vec![2.0_f64, 2.0, 1.0]);
/// let segs = Segments::from_offsets(vec![0, 2, 4]).unwrap();
/// assert_eq!(symmetric_graphs(a.view(), &segs), vec![true, false]);
/// ```
pub fn symmetric_graphs<T: Scalar>(a: CsMatView<T>, segments: &Segments) -> Vec<bool> {
    use super::SegmentWork;
    debug_assert_eq!(a.rows(), segments.num_nodes());
    let raw = RawCsr::new(&a);
    let same = |p: T, q: T| p == q && p.is_sign_negative() == q.is_sign_negative();
    // (entries above - entries below the diagonal) of row r, or None if an
    // entry above has no equal mirror
    let balance = |r: usize| -> Option<isize> {
        let (cs, vs) = raw.row(r);
        let below = cs.partition_point(|&c| c < r);
        let above = cs.partition_point(|&c| c <= r);
        let e0 = raw.range(r).start;
        for (i, (&c, &v)) in cs[above..].iter().zip(&vs[above..]).enumerate() {
            // the mirror rows a few entries ahead (latency-bound lookups at
            // random rows): the rows named by the columns, in storage order
            raw.prefetch_rows_ahead(raw.indices, e0 + above + i, rows::PREFETCH_AHEAD);
            let (mc, mv) = raw.row(c);
            match mc.binary_search(&r) {
                Ok(i) if same(mv[i], v) => {}
                _ => return None,
            }
        }
        Some((cs.len() - above) as isize - below as isize)
    };
    let rows_balance =
        |nodes: std::ops::Range<usize>| nodes.map(balance).try_fold(0isize, |t, b| Some(t + b?));
    let offsets = segments.offsets();
    let partials: Vec<Vec<(usize, Option<isize>)>> = super::segment_work(segments)
        .into_par_iter()
        .map(|item| match item {
            SegmentWork::Graphs(gr) => gr
                .map(|g| (g, rows_balance(offsets[g]..offsets[g + 1])))
                .collect(),
            SegmentWork::Piece { graph, nodes } => vec![(graph, rows_balance(nodes))],
        })
        .collect();
    let mut total = vec![Some(0isize); segments.num_graphs()];
    for (g, p) in partials.into_iter().flatten() {
        total[g] = total[g].zip(p).map(|(t, p)| t + p);
    }
    total.into_iter().map(|t| t == Some(0)).collect()
}

/// Row-parallel sparse × dense product $A X$ ($N \times M$ times $M \times F$).
///
/// Each output row is summed over its stored entries in index order, so the
/// result does not depend on the thread count. (sprs's own product is
/// sequential.)
pub fn spmm<T: Scalar>(a: CsMatView<T>, x: ArrayView2<T>) -> Array2<T> {
    debug_assert_eq!(a.cols(), x.nrows());
    product(Stored::of(&a), x)
}

/// $M X$ for the operator `m`'s entries, in fresh memory.
fn product<T: Scalar, M: RowEntries<T>>(m: M, x: ArrayView2<T>) -> Array2<T> {
    product_over(m, x, rows::fresh_matrix(m.structure().rows, x.ncols()))
}

/// $M X$ written over `out` ($N \times F$, standard layout, any values):
/// each block of [`ROW_BLOCK`] rows zeroed just before its sums, so a
/// buffer the caller no longer needs serves as fresh memory does, with the
/// same bits.
fn product_over<T: Scalar, M: RowEntries<T>>(
    m: M,
    x: ArrayView2<T>,
    mut out: Array2<T>,
) -> Array2<T> {
    let f = x.ncols();
    assert_eq!(out.dim(), (m.structure().rows, f), "an N x F output");
    assert!(out.is_standard_layout(), "an output in standard layout");
    let xs = rows::row_major(&x);
    rows::update_row_blocks(&mut out, |first, block| {
        block.fill(T::zero());
        product_rows(m, &xs, f, first, block, &mut [])
    });
    out
}

/// [`spmm`]`(a, x)` and [`row_sums`]`(a)` in one pass over the stored
/// entries of $A$: a row's weighted degree is summed as its entries are
/// read for $A X$. The same bits as the two calls (each degree is its
/// row's values added in index order from $+0$), for about the cost of the
/// product alone: on rows of a few entries each, what a pass costs is the
/// row loop's mispredicted exits, which the two now share.
///
/// ```
/// use graphpool::kernels::sparse::{row_sums, spmm, spmm_and_row_sums};
/// use ndarray::array;
/// use sprs::CsMat;
/// let a = CsMat::new((3, 3), vec![0, 2, 3, 3], vec![1, 2, 0], vec![2.0_f64, 1.0, 0.5]);
/// let x = array![[1.0, 0.0], [0.25, 0.75], [0.5, 0.5]];
/// let (ax, d) = spmm_and_row_sums(a.view(), x.view());
/// assert_eq!(ax, spmm(a.view(), x.view()));
/// assert_eq!(d, row_sums(a.view()));
/// assert_eq!(d.to_vec(), vec![3.0, 0.5, 0.0]);
/// ```
pub fn spmm_and_row_sums<T: Scalar>(a: CsMatView<T>, x: ArrayView2<T>) -> (Array2<T>, Array1<T>) {
    debug_assert_eq!(a.cols(), x.nrows());
    let f = x.ncols();
    if f == 0 {
        return (Array2::zeros((a.rows(), 0)), row_sums(a));
    }
    let xs = rows::row_major(&x);
    let mut out = rows::fresh_matrix(a.rows(), f);
    let mut sums: Vec<T> = rows::fresh_vec(a.rows());
    out.as_slice_mut()
        .expect("fresh matrices are standard layout")
        .par_chunks_mut(ROW_BLOCK * f)
        .zip(sums.par_chunks_mut(ROW_BLOCK))
        .enumerate()
        .for_each(|(b, (block, sb))| {
            // zeroed first, as `rows::build_row_blocks` does for `spmm`
            block.iter_mut().for_each(|v| *v = T::zero());
            product_rows(Stored::of(&a), &xs, f, b * ROW_BLOCK, block, sb);
        });
    (out, Array1::from(sums))
}

super::simd_levels! {
/// Rows `first..` of $M X$ into `out` (zeroed, whole rows of $F$ = `f`
/// entries; `xs` the rows of $X$): each row's entries added in column
/// order, each entry its own multiply and add, so the same bits at every
/// SIMD level. If `sums` is not empty, each row's sum of values (from
/// $+0$, in index order: [`row_sums`]' bits) into it, one per row of `out`.
/// Called once per block of rows, so that the SIMD level is chosen once
/// per block, not once per row. For $F \in \{8, 16, 32, 64\}$ a row's sum
/// is kept in registers ([`product_row_fixed`]).
fn product_rows<T: Scalar, M: RowEntries<T>>(
    m: M,
    xs: &[T],
    f: usize,
    first: usize,
    out: &mut [T],
    sums: &mut [T],
) {
    if f == 0 {
        return;
    }
    let want = !sums.is_empty();
    let mut sums = sums.iter_mut();
    let mut put = |d: T| {
        if want {
            if let Some(slot) = sums.next() {
                *slot = d;
            }
        }
    };
    let rows = out.chunks_exact_mut(f).enumerate().map(|(j, o)| (first + j, o));
    match f {
        8 => rows.for_each(|(r, o)| put(product_row_fixed::<T, M, 8>(m, xs, r, o))),
        16 => rows.for_each(|(r, o)| put(product_row_fixed::<T, M, 16>(m, xs, r, o))),
        32 => rows.for_each(|(r, o)| put(product_row_fixed::<T, M, 32>(m, xs, r, o))),
        64 => rows.for_each(|(r, o)| put(product_row_fixed::<T, M, 64>(m, xs, r, o))),
        _ => rows.for_each(|(r, o)| {
            let mut d = T::zero();
            let raw = m.structure();
            m.for_each_in_row(r, |e, c, v| {
                raw.prefetch_column_row(e, xs, f);
                d += v;
                rows::axpy(o, v, &xs[c * f..(c + 1) * f]);
            });
            put(d);
        }),
    }
}
}

/// Row `r` of $A X_1$ and of $A X_2$ into `outs` for widths `W1`, `W2`
/// known at compile time ([`product_row_fixed`] for two products in one
/// pass over the row's entries, inlined into each SIMD level of
/// [`product_rows_many`]): the same bits.
#[inline(always)]
fn product_row_fixed_pair<T: Scalar, M: RowEntries<T>, const W1: usize, const W2: usize>(
    m: M,
    (x1, x2): (&[T], &[T]),
    r: usize,
    o1: &mut [T],
    o2: &mut [T],
) {
    let mut a1 = [T::zero(); W1];
    let mut a2 = [T::zero(); W2];
    let raw = m.structure();
    // inlined (as is each call of the walk), so that the sums stay in
    // registers within the caller's SIMD level
    m.for_each_in_row(
        r,
        #[inline(always)]
        |e, c, v| {
            raw.prefetch_column_row(e, x1, W1);
            raw.prefetch_column_row(e, x2, W2);
            for (a, &x) in a1.iter_mut().zip(&x1[c * W1..(c + 1) * W1]) {
                *a += v * x;
            }
            for (a, &x) in a2.iter_mut().zip(&x2[c * W2..(c + 1) * W2]) {
                *a += v * x;
            }
        },
    );
    o1.copy_from_slice(&a1);
    o2.copy_from_slice(&a2);
}

/// Row `r` of $A X$ into `out` for $F$ = `W` known at compile time (inlined
/// into each SIMD level of [`product_rows`]): the sum is kept in a
/// `[T; W]` (registers) instead of `out`, so an entry's add does not wait
/// for the previous one's store. Each entry is still its own multiply and
/// add, in index order, from `+0`: the bits of accumulating into `out`.
/// Returns the row's sum of values, added in the same order from `+0`.
#[inline(always)]
fn product_row_fixed<T: Scalar, M: RowEntries<T>, const W: usize>(
    m: M,
    xs: &[T],
    r: usize,
    out: &mut [T],
) -> T {
    let mut acc = [T::zero(); W];
    let mut d = T::zero();
    let raw = m.structure();
    m.for_each_in_row(
        r,
        #[inline(always)]
        |e, c, v| {
            raw.prefetch_column_row(e, xs, W);
            d += v;
            for (a, &x) in acc.iter_mut().zip(&xs[c * W..(c + 1) * W]) {
                *a += v * x;
            }
        },
    );
    out.copy_from_slice(&acc);
    d
}

/// Rows `rows` of $A X$ into `out` (`rows.len()` $\times F$, row-major,
/// overwritten): the rows of [`spmm`], bit for bit, for a caller that
/// consumes $A X$ piece by piece instead of holding it whole.
pub fn spmm_rows<T: Scalar>(
    a: CsMatView<T>,
    x: ArrayView2<T>,
    rows: std::ops::Range<usize>,
    out: &mut [T],
) {
    product_rows_into(Stored::of(&a), x, rows, out);
}

/// Rows `rows` of $M X$ into `out` (overwritten).
fn product_rows_into<T: Scalar, M: RowEntries<T>>(
    m: M,
    x: ArrayView2<T>,
    rows: std::ops::Range<usize>,
    out: &mut [T],
) {
    let f = x.ncols();
    debug_assert_eq!(out.len(), rows.len() * f);
    let xs = rows::row_major(&x);
    out.fill(T::zero());
    product_rows(m, &xs, f, rows.start, out, &mut []);
}

/// $(A X) W_i$ for several small $W_i$ ($F \times C_i$) without holding
/// $A X$ ($N \times F$): in parallel over fixed blocks of
/// [`ROW_BLOCK`] rows, a block of $A X$ ([`spmm`]'s rows) is formed once
/// and multiplied by every $W_i$ ([`rows::rows_times`]). One pass over
/// $A$ and $X$ for all the products, and memory $O(\text{threads} \cdot
/// F)$ beyond the outputs; each output row's bits do not depend on the
/// block it falls in (thread-count independent). A GCN layer
/// $\hat A X W$ computed this way reads $X$'s rows, $F$ wide, once for
/// all its kernels.
pub fn spmm_times<T: Scalar>(
    a: CsMatView<T>,
    x: ArrayView2<T>,
    ws: &[ArrayView2<T>],
) -> Vec<Array2<T>> {
    debug_assert_eq!(a.cols(), x.nrows());
    product_times(Stored::of(&a), x, ws)
}

/// [`spmm_times`] for the operator `m`.
fn product_times<T: Scalar, M: RowEntries<T>>(
    m: M,
    x: ArrayView2<T>,
    ws: &[ArrayView2<T>],
) -> Vec<Array2<T>> {
    let (n, f) = (m.structure().rows, x.ncols());
    let xs = rows::row_major(&x);
    let wss: Vec<_> = ws.iter().map(|w| rows::row_major(w).into_owned()).collect();
    let mut outs: Vec<Array2<T>> = ws
        .iter()
        .map(|w| rows::fresh_matrix(n, w.ncols()))
        .collect();
    row_blocks_of(&mut outs, n)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut pieces)| {
            let r0 = b * ROW_BLOCK;
            let r1 = (r0 + ROW_BLOCK).min(n);
            let mut ax = vec![T::zero(); (r1 - r0) * f];
            product_rows(m, &xs, f, r0, &mut ax, &mut []);
            for ((piece, w), ws) in pieces.iter_mut().zip(ws).zip(&wss) {
                rows::rows_times(&ax, f, ws, w.ncols(), None, false, piece);
            }
        });
    outs
}

/// The row blocks of several standard-layout outputs of `n` rows: entry
/// `b` holds every output's rows of the [`ROW_BLOCK`] block `b` (an empty
/// slice for an output without columns), so that one task per block writes
/// all of them ([`spmm_times`], [`spmm_many`]).
fn row_blocks_of<T>(outs: &mut [Array2<T>], n: usize) -> Vec<Vec<&mut [T]>> {
    let mut per_block: Vec<Vec<&mut [T]>> =
        (0..n.div_ceil(ROW_BLOCK)).map(|_| Vec::new()).collect();
    for o in outs.iter_mut() {
        let w = o.ncols();
        if w == 0 {
            per_block.iter_mut().for_each(|p| p.push(&mut []));
            continue;
        }
        let o = o.as_slice_mut().expect("standard layout");
        for (b, piece) in o.chunks_mut(ROW_BLOCK * w).enumerate() {
            per_block[b].push(piece);
        }
    }
    per_block
}

/// $A X_i$ for several $X_i$ with $A$'s columns as rows, in one pass over
/// $A$: each stored entry $(r, c)$ adds $a_{rc}$ times row $c$ of every
/// $X_i$ into row $r$ of the $i$-th output.
///
/// Every output is [`spmm`]`(a, xs[i])` bit for bit (each row summed over
/// its entries in index order; thread-count independent). One pass reads
/// $A$'s structure once and keeps the gathers of all the $X_i$ in flight
/// together: for a 64-wide and a 16-wide $X$ on the 10⁷ entries of
/// `single-1e6`, one pass instead of two.
///
/// ```
/// use graphpool::kernels::sparse::{spmm, spmm_many};
/// use ndarray::array;
/// use sprs::TriMat;
/// let mut t = TriMat::new((2, 2));
/// t.add_triplet(0, 1, 2.0_f32);
/// t.add_triplet(1, 0, 3.0);
/// let a = t.to_csr::<usize>();
/// let (x, y) = (array![[1.0_f32, 2.0], [3.0, 4.0]], array![[5.0_f32], [6.0]]);
/// let outs = spmm_many(a.view(), &[x.view(), y.view()]);
/// assert_eq!(outs[0], spmm(a.view(), x.view()));
/// assert_eq!(outs[1], array![[12.0], [15.0]]);
/// ```
pub fn spmm_many<T: Scalar>(a: CsMatView<T>, xs: &[ArrayView2<T>]) -> Vec<Array2<T>> {
    debug_assert!(xs.iter().all(|x| x.nrows() == a.cols()));
    product_many(Stored::of(&a), xs)
}

/// [`spmm_many`] for the operator `m`.
fn product_many<T: Scalar, M: RowEntries<T>>(m: M, xs: &[ArrayView2<T>]) -> Vec<Array2<T>> {
    let n = m.structure().rows;
    let outs = xs
        .iter()
        .map(|x| rows::fresh_matrix(n, x.ncols()))
        .collect();
    product_many_into(m, xs, outs)
}

/// [`spmm`] written over `out` ($N \times F$, standard layout, any
/// values) and returned: a buffer the caller no longer needs serves
/// instead of fresh memory. The same bits as [`spmm`].
///
/// # Panics
/// If `out` is not $N \times F$ or not in standard layout.
pub(crate) fn spmm_over<T: Scalar>(a: CsMatView<T>, x: ArrayView2<T>, out: Array2<T>) -> Array2<T> {
    debug_assert_eq!(a.cols(), x.nrows());
    product_over(Stored::of(&a), x, out)
}

/// [`product_many`] written into `outs` (one per input, $N \times$ its
/// width, standard layout) and returned: what they held is overwritten
/// (each block of rows is zeroed just before its sums), so a buffer the
/// caller no longer needs serves instead of fresh memory. The same bits as
/// [`product_many`].
///
/// # Panics
/// If an output's shape is not $N \times$ its input's width, or (checked
/// by [`row_blocks_of`]) it is not in standard layout.
fn product_many_into<T: Scalar, M: RowEntries<T>>(
    m: M,
    xs: &[ArrayView2<T>],
    mut outs: Vec<Array2<T>>,
) -> Vec<Array2<T>> {
    let n = m.structure().rows;
    assert_eq!(outs.len(), xs.len(), "one output per input");
    for (o, x) in outs.iter().zip(xs) {
        assert_eq!(
            o.dim(),
            (n, x.ncols()),
            "an output of N rows, its input's width"
        );
    }
    let inputs: Vec<_> = xs.iter().map(|x| rows::row_major(x)).collect();
    let inputs: Vec<&[T]> = inputs.iter().map(|x| &x[..]).collect();
    let widths: Vec<usize> = xs.iter().map(|x| x.ncols()).collect();
    row_blocks_of(&mut outs, n)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut pieces)| {
            // written before any read: one page fault per page
            pieces.iter_mut().for_each(|p| p.fill(T::zero()));
            let r0 = b * ROW_BLOCK;
            let r1 = (r0 + ROW_BLOCK).min(n);
            product_rows_many(m, &inputs, &widths, r0..r1, &mut pieces);
        });
    outs
}

super::simd_levels! {
/// Rows `rows` of every $M X_i$ ([`spmm_many`]) into `outs[i]` (that block's
/// rows, zeroed): the entries in column order, as [`product_rows`]
/// does for one. Two inputs whose widths are both among 8, 16, 32 and 64
/// keep their rows' sums in registers ([`product_row_fixed_pair`]: on
/// `single-1e6`, whose DiffPool backward pass forms products of 64 and 16
/// columns so, a forward and backward pass took about 5% less time on an
/// AVX2 host while the per-entry closure was still compiled apart from
/// this function; on an AVX-512 one, once it was inlined, 14% less in two
/// of three alternating pairs and 2% more in the third);
/// others add into `outs`. Called once per block of rows (one choice of
/// SIMD level per block).
fn product_rows_many<T: Scalar, M: RowEntries<T>>(
    m: M,
    inputs: &[&[T]],
    widths: &[usize],
    rows: std::ops::Range<usize>,
    outs: &mut [&mut [T]],
) {
    let r0 = rows.start;
    let raw = m.structure();
    if let ([x1, x2], [o1, o2]) = (inputs, &mut *outs) {
        // two products of fixed widths: their sums in registers
        macro_rules! pair {
            ($w1:literal, $w2:literal) => {{
                for r in rows {
                    let local = r - r0;
                    product_row_fixed_pair::<T, M, $w1, $w2>(
                        m,
                        (x1, x2),
                        r,
                        &mut o1[local * $w1..(local + 1) * $w1],
                        &mut o2[local * $w2..(local + 1) * $w2],
                    );
                }
                return;
            }};
        }
        // every pair of the widths product_rows keeps in registers
        macro_rules! pairs {
            ($(($w1:literal, $w2:literal)),*) => {
                match (widths[0], widths[1]) {
                    $(($w1, $w2) => pair!($w1, $w2),)*
                    _ => {}
                }
            };
        }
        pairs!(
            (8, 8), (8, 16), (8, 32), (8, 64),
            (16, 8), (16, 16), (16, 32), (16, 64),
            (32, 8), (32, 16), (32, 32), (32, 64),
            (64, 8), (64, 16), (64, 32), (64, 64)
        );
    }
    for r in rows {
        let local = r - r0;
        m.for_each_in_row(r, |e, c, v| {
            for (x, &w) in inputs.iter().zip(widths) {
                raw.prefetch_column_row(e, x, w);
            }
            for ((x, &w), o) in inputs.iter().zip(widths).zip(outs.iter_mut()) {
                rows::axpy(&mut o[local * w..(local + 1) * w], v, &x[c * w..(c + 1) * w]);
            }
        });
    }
}
}

/// The transposed product $A^\top X$ ($M \times N$ times $N \times F$)
/// without forming $A^\top$.
///
/// The output rows are cut into ranges, one task each; a task scans the
/// rows of $A$ in order and adds $a_{rc} X_r$ into its output rows $c$, so
/// output row $c$ is summed over $r$ ascending, starting from 0: exactly the
/// bits of `spmm(transpose(a), x)`, whatever the ranges and the thread
/// count. A row of $A$ whose first and last column both miss a task's range
/// is skipped in $O(1)$ (columns are sorted), so a block-diagonal matrix
/// costs each task little beyond its own graphs; a single graph is read
/// once per task, sequentially, while the writes stay within the task's
/// rows.
pub fn spmm_t<T: Scalar>(a: CsMatView<T>, x: ArrayView2<T>) -> Array2<T> {
    debug_assert_eq!(a.rows(), x.nrows());
    product_t(Stored::of(&a), a.cols(), x)
}

/// $M^\top X$ for the operator `op` ($\cdot \times m$).
fn product_t<T: Scalar, M: RowEntries<T>>(op: M, m: usize, x: ArrayView2<T>) -> Array2<T> {
    let f = x.ncols();
    let mut out = rows::zeros(m, f);
    if f == 0 || m == 0 {
        return out;
    }
    let raw = op.structure();
    let xs = rows::row_major(&x);
    // one range of output rows per thread (the bits do not depend on the
    // ranges): every task reads the row structure, so fewer is cheaper;
    // none shorter than a row block
    let parts = rayon::current_num_threads().max(1);
    let len = m.div_ceil(parts).max(ROW_BLOCK);
    let os = out
        .as_slice_mut()
        .expect("a new array is in standard layout");
    os.par_chunks_mut(len * f)
        .enumerate()
        .for_each(|(p, block)| {
            let lo = p * len;
            let hi = lo + block.len() / f;
            op.for_each_in_columns(lo, hi, |r, c, e, v| {
                // the output row written PREFETCH_AHEAD entries from now, if ours
                if let Some(&ahead) = raw.indices.get(e + rows::PREFETCH_AHEAD) {
                    if (lo..hi).contains(&ahead) {
                        rows::prefetch(&block[(ahead - lo) * f..(ahead - lo + 1) * f]);
                    }
                }
                let o = &mut block[(c - lo) * f..(c - lo + 1) * f];
                rows::axpy(o, v, &xs[r * f..(r + 1) * f]);
            });
        });
    out
}

/// VJP of [`spmm`] with respect to the stored values of $A$:
/// $\bar a_{ij} = \langle \bar O_i, X_j \rangle$, aligned with `a.data()`.
pub fn spmm_vjp_values<T: Scalar>(
    a: CsMatView<T>,
    x: ArrayView2<T>,
    grad: ArrayView2<T>,
) -> Array1<T> {
    // the sampled product of the output gradient with X on A's pattern
    sddmm(a, grad, x)
}

/// A CSR transpose $A^\top$ together with, for each of its stored entries,
/// the position of the same entry in `a.data()`.
#[derive(Debug, Clone)]
pub struct Transposed<T: Scalar> {
    /// $A^\top$ in CSR storage, sorted indices.
    pub matrix: CsMat<T>,
    /// `source[e]` is the index in `a.data()` of entry `e` of `matrix.data()`.
    pub source: Vec<usize>,
}

/// Transposes a CSR matrix by a counting sort (deterministic,
/// $O(\mathrm{nnz} + N)$ work), in parallel: the columns of $A$ are cut
/// into ranges, and each task counts, then places, the entries of its own
/// columns, scanning $A$'s rows in order. The result is the sequential
/// counting sort's, whatever the thread count: row $c$ of $A^\top$ lists
/// its entries by ascending row of $A$.
pub fn transpose<T: Scalar>(a: CsMatView<T>) -> Transposed<T> {
    let (rows, cols) = (a.rows(), a.cols());
    let raw = RawCsr::new(&a);
    let nnz = a.nnz();
    let parts = rayon::current_num_threads().max(1);
    let len = cols.div_ceil(parts).max(ROW_BLOCK);
    // column counts, each range by its own task
    let mut indptr = vec![0usize; cols + 1];
    indptr[1..]
        .par_chunks_mut(len)
        .enumerate()
        .for_each(|(p, counts)| {
            let lo = p * len;
            raw.for_each_in_columns(lo, lo + counts.len(), |_, c, _| counts[c - lo] += 1);
        });
    for c in 0..cols {
        indptr[c + 1] += indptr[c];
    }
    let mut indices: Vec<usize> = rows::fresh_vec(nnz);
    let mut data: Vec<T> = rows::fresh_vec(nnz);
    let mut source: Vec<usize> = rows::fresh_vec(nnz);
    // every range's entries are one contiguous run of the outputs
    let mut pieces = Vec::with_capacity(cols.div_ceil(len.max(1)));
    let (mut ri, mut rd, mut rs) = (&mut indices[..], &mut data[..], &mut source[..]);
    let mut lo = 0;
    while lo < cols {
        let hi = (lo + len).min(cols);
        let count = indptr[hi] - indptr[lo];
        let (pi, ti) = ri.split_at_mut(count);
        let (pd, td) = rd.split_at_mut(count);
        let (ps, ts) = rs.split_at_mut(count);
        pieces.push((lo, hi, pi, pd, ps));
        (ri, rd, rs) = (ti, td, ts);
        lo = hi;
    }
    pieces.into_par_iter().for_each(|(lo, hi, pi, pd, ps)| {
        let first = indptr[lo];
        let mut next: Vec<usize> = indptr[lo..hi].iter().map(|&p| p - first).collect();
        raw.for_each_in_columns(lo, hi, |r, c, e| {
            let p = next[c - lo];
            next[c - lo] += 1;
            pi[p] = r;
            pd[p] = raw.data[e];
            ps[p] = e;
        });
    });
    Transposed {
        matrix: csr_by_construction((cols, rows), indptr, indices, data),
        source,
    }
}

/// VJP of [`spmm`] with respect to $X$: $\bar X = A^\top \bar O$.
pub fn spmm_vjp_x<T: Scalar>(a: CsMatView<T>, grad: ArrayView2<T>) -> Array2<T> {
    spmm_t(a, grad)
}

/// The subgraph induced by the sorted node list `kept`: the rows and columns
/// of `kept`, renumbered `0..kept.len()`, plus for each stored entry of the
/// result the index of its source entry in `a.data()` (for the VJP).
#[derive(Debug, Clone)]
pub struct Induced<T: Scalar> {
    /// The induced adjacency, `kept.len()` square, CSR.
    pub matrix: CsMat<T>,
    /// `source[e]` is the position in `a.data()` of entry `e` of `matrix`.
    pub source: Vec<usize>,
}

/// Extracts the induced subgraph $A[\text{kept}, \text{kept}]$ in parallel
/// over blocks of kept rows, never densifying: one pass over each block's
/// rows compacts their kept entries into a buffer of the block's (counting
/// each row's as it goes), then the blocks are copied into place (no
/// per-row allocation; a second pass over the input's rows, to count them
/// first, cost more than the copy: 2.4 -> 1.6 ms for TopKPool's subgraph
/// on `disjoint-small`, 2 threads). Membership and new indices come from a
/// bitmap of the kept nodes with per-word ranks ($N/8$ bytes plus $N/16$ or
/// $N/8$ for the ranks, cache-resident where an $N$-long index map would
/// not be). Besides the result, the kept entries are held once more while
/// the blocks are copied.
///
/// `kept` must be sorted ascending without duplicates (as returned by
/// [`crate::kernels::sort::segment_top_k`]).
pub fn induced_subgraph<T: Scalar>(a: CsMatView<T>, kept: &[usize]) -> Induced<T> {
    let (matrix, source) = induced::<T, true>(a, kept);
    Induced { matrix, source }
}

/// [`induced_subgraph`]'s matrix alone, without the sources (which only a
/// backward pass needs: one `usize` per kept entry not written).
///
/// ```
/// use graphpool::kernels::sparse::{induced_matrix, induced_subgraph};
/// use sprs::CsMat;
/// let a = CsMat::new((3, 3), vec![0, 2, 3, 4], vec![1, 2, 0, 0], vec![1.0_f64, 2.0, 3.0, 4.0]);
/// assert_eq!(induced_matrix(a.view(), &[0, 2]), induced_subgraph(a.view(), &[0, 2]).matrix);
/// ```
pub fn induced_matrix<T: Scalar>(a: CsMatView<T>, kept: &[usize]) -> CsMat<T> {
    induced::<T, false>(a, kept).0
}

/// The induced subgraph, with the sources of its entries if `SOURCE` (an
/// empty vector otherwise).
fn induced<T: Scalar, const SOURCE: bool>(
    a: CsMatView<T>,
    kept: &[usize],
) -> (CsMat<T>, Vec<usize>) {
    debug_assert!(kept.windows(2).all(|w| w[0] < w[1]));
    let m = kept.len();
    // over every column index, so that any stored column can be looked up
    let kept_set = RankedBitmap::new(a.rows().max(a.cols()), kept);
    let raw = RawCsr::new(&a);
    // one pass over each block of kept rows: its entries compacted into a
    // buffer of its own (at most the rows' stored entries), its row counts
    // into indptr; then every block's entries copied into place
    let mut indptr = vec![0usize; m + 1];
    let blocks: Vec<Compacted<T>> = indptr[1..]
        .par_chunks_mut(ROW_BLOCK)
        .zip(kept.par_chunks(ROW_BLOCK))
        .map(|(counts, rows)| compact_members::<T, SOURCE>(&kept_set, raw, rows, counts))
        .collect();
    for j in 0..m {
        indptr[j + 1] += indptr[j];
    }
    let total = indptr[m];
    // every entry is written once below (fresh pages, huge when large)
    let mut indices: Vec<usize> = rows::fresh_vec(total);
    let mut source: Vec<usize> = rows::fresh_vec(if SOURCE { total } else { 0 });
    let mut data: Vec<T> = rows::fresh_vec(total);
    let mut tasks = Vec::with_capacity(blocks.len());
    let (mut ri, mut rs, mut rd) = (&mut indices[..], &mut source[..], &mut data[..]);
    for block in &blocks {
        let len = block.indices.len();
        let (hi, ti) = std::mem::take(&mut ri).split_at_mut(len);
        let (hs, ts) = std::mem::take(&mut rs).split_at_mut(if SOURCE { len } else { 0 });
        let (hd, td) = std::mem::take(&mut rd).split_at_mut(len);
        (ri, rs, rd) = (ti, ts, td);
        tasks.push((block, hi, hs, hd));
    }
    tasks.into_par_iter().for_each(|(block, oi, os, od)| {
        oi.copy_from_slice(&block.indices);
        os.copy_from_slice(&block.source);
        od.copy_from_slice(&block.data);
    });
    (csr_by_construction((m, m), indptr, indices, data), source)
}

/// One block's entries of an induced subgraph ([`compact_members`]).
struct Compacted<T> {
    indices: Vec<usize>,
    source: Vec<usize>,
    data: Vec<T>,
}

super::simd_levels! {
/// The stored entries of `rows` whose column is in `set`, in order, with
/// their columns renumbered by rank in `set` (and, if `SOURCE`, their
/// positions in the input), and each row's number of them into `counts`.
///
/// A branch-free compaction (about half the entries are kept, in no pattern
/// a branch predictor could learn): every entry is written at the next free
/// slot, which only a kept entry then takes, into buffers of one slot per
/// stored entry of `rows`, cut to the kept entries at the end. The rows'
/// entries are read ahead ([`RawCsr::prefetch_rows_ahead`]) only when they
/// average a cache line of columns or more: shorter rows lie close enough
/// for the hardware's prefetch, and the hints cost more than they save
/// (TopKPool's subgraph, one thread: `disjoint-small`, 3.6 entries a row,
/// 1.59 ms without them against 1.73-1.78 ms with; `single-1e6`, 10 a row,
/// 11.8 ms with against 16.1 ms without).
fn compact_members<T: Scalar, const SOURCE: bool>(
    set: &RankedBitmap,
    raw: RawCsr<'_, T>,
    rows: &[usize],
    counts: &mut [usize],
) -> Compacted<T> {
    let slots = rows.iter().map(|&r| raw.range(r).len()).sum::<usize>();
    let read_ahead = slots >= rows.len() * LINE_OF_COLUMNS;
    let mut oi: Vec<usize> = Vec::with_capacity(slots);
    let mut os: Vec<usize> = Vec::with_capacity(if SOURCE { slots } else { 0 });
    let mut od: Vec<T> = Vec::with_capacity(slots);
    let (si, ss, sd) = (
        oi.spare_capacity_mut(),
        os.spare_capacity_mut(),
        od.spare_capacity_mut(),
    );
    let mut p = 0;
    for (i, (&r, c)) in rows.iter().zip(counts.iter_mut()).enumerate() {
        if read_ahead {
            raw.prefetch_rows_ahead(rows, i, ROWS_AHEAD);
        }
        let before = p;
        let range = raw.range(r);
        let start = range.start;
        for (e, (&col, &v)) in raw.indices[range.clone()].iter().zip(&raw.data[range]).enumerate() {
            // SAFETY: a stored column is below the matrix's columns (a CSR
            // invariant), which the bitmap covers (`induced` builds it over
            // `max(rows, cols)`)
            let (is_kept, new) = unsafe { set.rank_or_next_unchecked(col) };
            // SAFETY: `p` counts the kept entries of the entries visited
            // before this one, at most the `slots` stored entries of `rows`
            // less one: below the capacity of every buffer (`ss`'s when
            // `SOURCE`, the only case it is written)
            unsafe {
                si.get_unchecked_mut(p).write(new);
                sd.get_unchecked_mut(p).write(v);
                if SOURCE {
                    ss.get_unchecked_mut(p).write(start + e);
                }
            }
            p += usize::from(is_kept);
        }
        *c = p - before;
    }
    // SAFETY: the first `p` slots of each buffer were written above (slot
    // `q < p` by the entry that took it, kept entries being written before
    // `p` moves past them)
    unsafe {
        oi.set_len(p);
        os.set_len(if SOURCE { p } else { 0 });
        od.set_len(p);
    }
    // cut to the kept entries, the rest given back while the other blocks
    // run (glibc's realloc shrinks in place, without a copy)
    oi.shrink_to_fit();
    os.shrink_to_fit();
    od.shrink_to_fit();
    Compacted {
        indices: oi,
        source: os,
        data: od,
    }
}
}

/// Stored entries per 64-byte cache line of `usize` column indices: the
/// mean row length from which [`compact_members`] reads rows ahead.
const LINE_OF_COLUMNS: usize = 64 / std::mem::size_of::<usize>();

/// A set of node indices as a bitmap with the rank (number of members
/// before it) of every 64-bit word: membership and the new index of a
/// member in $O(1)$ from about $N/4$ bytes.
struct RankedBitmap {
    words: Vec<u64>,
    ranks: Vec<usize>,
}

impl RankedBitmap {
    /// The set `members` (sorted ascending, each `< n`).
    fn new(n: usize, members: &[usize]) -> Self {
        let mut words = vec![0u64; n.div_ceil(64)];
        // each block of words holds a contiguous range of the sorted members
        const WORDS: usize = 1024;
        words
            .par_chunks_mut(WORDS)
            .enumerate()
            .for_each(|(b, block)| {
                let lo = b * WORDS * 64;
                let first = members.partition_point(|&k| k < lo);
                for &k in &members[first..] {
                    let w = (k - lo) / 64;
                    if w >= block.len() {
                        break;
                    }
                    block[w] |= 1u64 << (k % 64);
                }
            });
        let mut ranks = Vec::with_capacity(words.len());
        let mut acc = 0usize;
        for w in &words {
            ranks.push(acc);
            acc += w.count_ones() as usize;
        }
        Self { words, ranks }
    }

    /// Whether `i` is a member, and the number of members before it (its
    /// position among them if it is one), without a branch or a bounds
    /// check.
    ///
    /// # Safety
    /// `i` must be below the `n` the bitmap was built for.
    #[inline]
    unsafe fn rank_or_next_unchecked(&self, i: usize) -> (bool, usize) {
        debug_assert!(i / 64 < self.words.len());
        // SAFETY: the caller's `i < n` gives `i / 64 < n.div_ceil(64)`, the
        // length of `words` and of `ranks`
        let (w, rank) = unsafe {
            (
                *self.words.get_unchecked(i / 64),
                *self.ranks.get_unchecked(i / 64),
            )
        };
        let bit = 1u64 << (i % 64);
        (w & bit != 0, rank + (w & (bit - 1)).count_ones() as usize)
    }
}

/// Scatters gradients of gathered entries back: `out[source[e]] += grad[e]`
/// over a vector of length `len` (the VJP of any gather of stored values).
///
/// When `source` is strictly increasing (the sources of an [`Induced`]
/// subgraph are), every output is one copy `0 + grad[e]` and blocks of the
/// output are filled in parallel; otherwise the entries are added in order,
/// sequentially. Either way the result does not depend on the thread count.
pub fn scatter_values<T: Scalar>(grad: &[T], source: &[usize], len: usize) -> Array1<T> {
    let mut out: Vec<T> = rows::fresh_vec(len);
    let increasing = source.par_windows(2).all(|w| w[0] < w[1]);
    if increasing {
        out.par_chunks_mut(ROW_BLOCK * 64)
            .enumerate()
            .for_each(|(b, block)| {
                // written first: the fresh pages are not read before
                block.fill(T::zero());
                let lo = b * ROW_BLOCK * 64;
                let first = source.partition_point(|&s| s < lo);
                for (&s, &g) in source[first..].iter().zip(&grad[first..]) {
                    if s >= lo + block.len() {
                        break;
                    }
                    block[s - lo] += g;
                }
            });
    } else {
        for (&g, &s) in grad.iter().zip(source) {
            out[s] += g;
        }
    }
    Array1::from(out)
}

/// A CSR matrix from parts that a kernel of this crate built valid by
/// construction: `indptr` of length `rows + 1` from 0 to `indices.len()`,
/// non-decreasing (prefix sums of row lengths), and every row's columns
/// strictly increasing and below `cols`. The O(1) parts are asserted; the
/// O(nnz) scan of sprs's checked constructor (serial, about 3 % of a
/// TopKPool forward pass on a million nodes) runs in debug builds only.
/// `tests/kernels.rs::kernel_outputs_are_valid_csr` checks every caller's
/// output with the full check in release builds.
pub(crate) fn csr_by_construction<T: Scalar>(
    shape: (usize, usize),
    indptr: Vec<usize>,
    indices: Vec<usize>,
    data: Vec<T>,
) -> CsMat<T> {
    if cfg!(debug_assertions) {
        return CsMat::new(shape, indptr, indices, data);
    }
    assert_eq!(indptr.len(), shape.0 + 1, "CSR indptr length");
    assert_eq!(indptr.first().copied(), Some(0), "CSR indptr start");
    assert_eq!(
        indptr.last().copied(),
        Some(indices.len()),
        "CSR indptr end"
    );
    assert_eq!(indices.len(), data.len(), "CSR indices and data lengths");
    // SAFETY: sprs's algorithms may rely on a valid compressed structure
    // (in-bounds, sorted indices, monotone indptr). The lengths and ends
    // are asserted above; monotone indptr and sorted in-bounds columns are
    // what every caller builds (prefix sums of row lengths; rows written in
    // column order), checked in full in debug builds and by the structure
    // property test on every caller.
    unsafe { CsMat::new_unchecked(sprs::CompressedStorage::CSR, shape, indptr, indices, data) }
}

/// A block-diagonal CSR matrix from stacked dense $K \times K$ blocks
/// (a $(B K) \times K$ matrix). Every entry of every block is stored, explicit
/// zeros included, so that the data vector is the blocks flattened row-major
/// (the gradient of the stored values reshapes back to the blocks).
pub fn block_diag<T: Scalar>(blocks: ArrayView2<T>) -> CsMat<T> {
    let (n, k) = blocks.dim();
    let data: Vec<T> = rows::fresh_copy_slice(&rows::row_major(&blocks));
    block_diag_with_data(n, k, data)
}

/// [`block_diag`] of blocks given by value: their buffer becomes the
/// matrix's data vector (the blocks flattened row-major are the data), so
/// no new buffer is allocated when they are in standard layout: blocks that
/// start past their buffer's first entry ([`rows::fresh_matrix`] aligns its
/// rows to a cache line) are moved to its front. In any other layout they
/// are copied as [`block_diag`] does. The same matrix.
///
/// ```
/// use graphpool::kernels::sparse::{block_diag, block_diag_owned};
/// use ndarray::array;
/// let blocks = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]];
/// let m = block_diag_owned(blocks.clone());
/// assert_eq!(m, block_diag(blocks.view()));
/// assert_eq!(m.get(3, 2), Some(&7.0)); // block 1, row 1, column 0
/// assert_eq!(m.get(3, 0), None); // outside the blocks: not stored
/// ```
pub fn block_diag_owned<T: Scalar>(blocks: Array2<T>) -> CsMat<T> {
    let (n, k) = blocks.dim();
    if !blocks.is_standard_layout() {
        return block_diag(blocks.view());
    }
    let (mut data, offset) = blocks.into_raw_vec_and_offset();
    // standard layout: the n k entries lie in order from the first one
    let start = offset.unwrap_or(0);
    if start > 0 {
        data.copy_within(start..start + n * k, 0);
    }
    data.truncate(n * k);
    block_diag_with_data(n, k, data)
}

/// The block-diagonal structure of $n / k$ dense $k \times k$ blocks around
/// `data` (the blocks flattened row-major, $n k$ values).
fn block_diag_with_data<T: Scalar>(n: usize, k: usize, data: Vec<T>) -> CsMat<T> {
    debug_assert_eq!(data.len(), n * k);
    // the row pointers and the columns, both filled in parallel into fresh
    // memory: row r holds the columns of its block, (r / k) k .. (r / k) k + k
    let indptr: Vec<usize> = map_rows(n + 1, |r| r * k);
    // not zeroed first: every entry is written below
    let mut indices = rows::unwritten_vec::<usize>(n * k);
    if k > 0 {
        indices.par_chunks_mut(k).enumerate().for_each(|(r, row)| {
            let base = r / k * k;
            for (j, c) in row.iter_mut().enumerate() {
                c.write(base + j);
            }
        });
    }
    // SAFETY: the rows of `k` entries cover `indices` (empty when k = 0),
    // and every entry of each was written
    let indices = unsafe { rows::assume_written(indices) };
    csr_by_construction((n, n), indptr, indices, data)
}

/// Row `r` of $A B$ into the dense accumulator `acc` (Gustavson's step):
/// each column reached is marked in `seen` and listed in `touched` (in order
/// of first touch) and starts at 0; the terms are added in the order of
/// $A$'s row entries, then of $B$'s. The caller reads the touched columns,
/// then clears `seen` and `touched`.
#[inline]
fn accumulate_row<T: Scalar>(
    a: &CsMatView<T>,
    b: &CsMatView<T>,
    r: usize,
    acc: &mut [T],
    seen: &mut [bool],
    touched: &mut Vec<usize>,
) {
    let (ak, av) = row_parts(a, r);
    for (&k, &w) in ak.iter().zip(av) {
        let (bc, bv) = row_parts(b, k);
        for (&c, &v) in bc.iter().zip(bv) {
            if !seen[c] {
                seen[c] = true;
                touched.push(c);
                acc[c] = T::zero();
            }
            acc[c] += w * v;
        }
    }
}

/// A dense accumulator over `m` columns for [`accumulate_row`], one per
/// rayon task.
fn accumulator<T: Scalar>(m: usize) -> (Vec<T>, Vec<bool>, Vec<usize>) {
    (vec![T::zero(); m], vec![false; m], Vec::new())
}

/// Row-parallel sparse × sparse product $A B$ (Gustavson's algorithm with a
/// dense accumulator per task, touched columns sorted per row). Each
/// output entry is summed in the order of $A$'s row entries, so the result
/// does not depend on the thread count.
///
/// Two passes: the first counts each row's columns, the second writes
/// every block of [`ROW_BLOCK`] rows straight into its part of the result,
/// so that nothing but the result is held (no per-row lists to join).
pub fn spgemm<T: Scalar>(a: CsMatView<T>, b: CsMatView<T>) -> CsMat<T> {
    debug_assert_eq!(a.cols(), b.rows());
    let (n, m) = (a.rows(), b.cols());
    // pass 1: the number of columns of each row of A B
    let counts: Vec<usize> = (0..n)
        .into_par_iter()
        .map_init(
            || (vec![false; m], Vec::new()),
            |(seen, touched), r| {
                for &k in row_parts(&a, r).0 {
                    for &c in row_parts(&b, k).0 {
                        if !seen[c] {
                            seen[c] = true;
                            touched.push(c);
                        }
                    }
                }
                let len = touched.len();
                touched.drain(..).for_each(|c| seen[c] = false);
                len
            },
        )
        .collect();
    let mut indptr = Vec::with_capacity(n + 1);
    indptr.push(0);
    for c in counts {
        indptr.push(indptr[indptr.len() - 1] + c);
    }
    let nnz = indptr[n];
    let mut indices: Vec<usize> = rows::fresh_vec(nnz);
    let mut data: Vec<T> = rows::fresh_vec(nnz);
    // pass 2: each block of rows writes its own part of the result
    let mut pieces = Vec::with_capacity(n.div_ceil(ROW_BLOCK));
    let (mut ri, mut rd) = (&mut indices[..], &mut data[..]);
    for r0 in (0..n).step_by(ROW_BLOCK) {
        let rows = r0..(r0 + ROW_BLOCK).min(n);
        let len = indptr[rows.end] - indptr[r0];
        let (pi, ti) = std::mem::take(&mut ri).split_at_mut(len);
        let (pd, td) = std::mem::take(&mut rd).split_at_mut(len);
        pieces.push((rows, pi, pd));
        (ri, rd) = (ti, td);
    }
    pieces.into_par_iter().for_each_init(
        || accumulator(m),
        |(acc, seen, touched), (rows, pi, pd)| {
            let mut k = 0;
            for r in rows {
                accumulate_row(&a, &b, r, acc, seen, touched);
                touched.sort_unstable();
                for c in touched.drain(..) {
                    seen[c] = false;
                    pi[k] = c;
                    pd[k] = acc[c];
                    k += 1;
                }
            }
        },
    );
    csr_by_construction((n, m), indptr, indices, data)
}

/// The GCN filter $\hat A = \hat D^{-1/2} (A + I) \hat D^{-1/2}$ with
/// $\hat D_{ii} = \sum_j (A + I)_{ij}$ (row sums), built sparse, as Spektral's
/// `normalize_A(a + I)` and `gcn_filter`. An existing diagonal entry gets
/// $+1$. A node whose degree $\hat D_{ii} \le 0$ (possible only with
/// negative weights) gets $\hat D_{ii}^{-1/2} = 0$ instead of NaN.
///
/// Each value is rounded as $b_{ij} \cdot (u_i u_j)$ ($b$ the values of
/// $A + I$, $u = \hat D^{-1/2}$): the product $u_i u_j$ does not depend on
/// the order of $i$ and $j$, so the filter of a graph that is symmetric bit
/// for bit is itself symmetric bit for bit, and a transposed product with
/// it can be taken as a plain one ($\hat A^\top Y = \hat A Y$, the same
/// bits: [`spmm`] and [`spmm_t`] add the same terms in the same order).
///
/// Only $\hat A$ and $\hat D^{-1/2}$ are held (nnz + 2N values and
/// indices): the values of $A + I$ and which entry of $A$ each entry of
/// $\hat A$ comes from are read back from $A$ itself when the VJP needs
/// them ([`GcnFilter::vjp`] takes $A$), row $r$ of $\hat A$ being row $r$
/// of $A$ with its diagonal entry merged or inserted in column order.
/// Products with the filter do not need it stored: [`GcnOperator`] gives
/// their bits from $A$ and $\hat D^{-1/2}$ alone.
#[derive(Debug, Clone)]
pub struct GcnFilter<T: Scalar> {
    /// $\hat A$, CSR, sorted indices; the structure of $A$ plus the diagonal.
    pub matrix: CsMat<T>,
    /// $\hat D^{-1/2}$ per node.
    pub deg_inv_sqrt: Array1<T>,
}

/// Where row `r` (sorted column indices `cols`) gets its diagonal entry in
/// $A + I$: the position of the first column $\ge r$, and whether that
/// column is $r$ itself (the existing entry gets $+1$) or the diagonal is
/// inserted there.
#[inline]
fn diagonal_slot(cols: &[usize], r: usize) -> (usize, bool) {
    let p = cols.iter().position(|&c| c >= r).unwrap_or(cols.len());
    (p, cols.get(p) == Some(&r))
}

/// Builds the [`GcnFilter`] of `a` (square), in parallel over fixed blocks
/// of rows: one pass sizes the rows of $A + I$, one writes its structure
/// and values with each row's degree, one normalises the values in place.
pub fn gcn_filter<T: Scalar>(a: CsMatView<T>) -> GcnFilter<T> {
    let n = a.rows();
    let raw = RawCsr::new(&a);
    // pass 1: row lengths of A + I
    let mut indptr = vec![0usize; n + 1];
    indptr[1..]
        .par_chunks_mut(ROW_BLOCK)
        .enumerate()
        .for_each(|(b, lens)| {
            for (i, len) in lens.iter_mut().enumerate() {
                let r = b * ROW_BLOCK + i;
                let cols = raw.row(r).0;
                *len = cols.len() + usize::from(!diagonal_slot(cols, r).1);
            }
        });
    for r in 0..n {
        indptr[r + 1] += indptr[r];
    }
    let total = indptr[n];
    // pass 2: structure, values of A + I (in `data`, normalised by pass 3),
    // degrees
    let mut indices: Vec<usize> = rows::fresh_vec(total);
    let mut data: Vec<T> = rows::fresh_vec(total);
    let mut deg_inv_sqrt = vec![T::zero(); n];
    {
        let mut tasks = Vec::with_capacity(n.div_ceil(ROW_BLOCK));
        let (mut ri, mut rv) = (&mut indices[..], &mut data[..]);
        for (b, dis) in deg_inv_sqrt.chunks_mut(ROW_BLOCK).enumerate() {
            let rows = b * ROW_BLOCK..b * ROW_BLOCK + dis.len();
            let len = indptr[rows.end] - indptr[rows.start];
            let (hi, ti) = std::mem::take(&mut ri).split_at_mut(len);
            let (hv, tv) = std::mem::take(&mut rv).split_at_mut(len);
            (ri, rv) = (ti, tv);
            tasks.push((rows, hi, hv, dis));
        }
        tasks.into_par_iter().for_each(|(rows, oi, ov, dis)| {
            let mut p = 0;
            for (r, d) in rows.zip(dis.iter_mut()) {
                let start = p;
                for_each_with_loop(raw, r, |_, c, b| {
                    (oi[p], ov[p]) = (c, b);
                    p += 1;
                });
                let deg: T = ov[start..p].iter().copied().sum();
                *d = if deg > T::zero() {
                    T::one() / deg.sqrt()
                } else {
                    T::zero()
                };
            }
        });
    }
    let deg_inv_sqrt = Array1::from(deg_inv_sqrt);
    // pass 3: the normalised values, in place
    {
        let dis = deg_inv_sqrt.as_slice().expect("fresh array");
        let mut tasks = Vec::with_capacity(n.div_ceil(ROW_BLOCK));
        let mut rd = &mut data[..];
        for b in 0..n.div_ceil(ROW_BLOCK) {
            let rows = b * ROW_BLOCK..((b + 1) * ROW_BLOCK).min(n);
            let (hd, td) =
                std::mem::take(&mut rd).split_at_mut(indptr[rows.end] - indptr[rows.start]);
            rd = td;
            tasks.push((rows, hd));
        }
        let indices = &indices;
        tasks.into_par_iter().for_each(|(rows, od)| {
            let off = indptr[rows.start];
            for r in rows {
                for e in indptr[r]..indptr[r + 1] {
                    let v = &mut od[e - off];
                    *v *= dis[r] * dis[indices[e]];
                }
            }
        });
    }
    GcnFilter {
        matrix: csr_by_construction((n, n), indptr, indices, data),
        deg_inv_sqrt,
    }
}

/// Entry `e` = (r, c) of a [`GcnFilter`]'s matrix read back from $A$: the
/// value of $A + I$ there, and the position in `a.data()` of the entry of
/// $A$ it comes from (`None` for an inserted diagonal). Row $r$ of the
/// filter is row $r$ of $A$ with the diagonal merged (same length) or
/// inserted (one longer) in column order, so the position is found in
/// $O(1)$: the same offset in the row, one less past an inserted diagonal.
struct LoopEntries<'a, T: Scalar> {
    filter_ip: &'a [usize],
    a_ip: &'a [usize],
    a_data: &'a [T],
}

impl<'a, T: Scalar> LoopEntries<'a, T> {
    fn new(filter: &'a CsMat<T>, a: &'a CsMatView<'a, T>) -> Self {
        Self {
            filter_ip: filter.indptr().into_raw_storage(),
            a_ip: a.indptr().into_raw_storage(),
            a_data: a.data(),
        }
    }

    #[inline]
    fn source(&self, e: usize, r: usize, c: usize) -> Option<usize> {
        let a_lo = self.a_ip[r] - self.a_ip[0];
        let merged = self.filter_ip[r + 1] - self.filter_ip[r] == self.a_ip[r + 1] - self.a_ip[r];
        let k = e - self.filter_ip[r];
        match c.cmp(&r) {
            std::cmp::Ordering::Less => Some(a_lo + k),
            std::cmp::Ordering::Equal => merged.then_some(a_lo + k),
            std::cmp::Ordering::Greater => Some(a_lo + k - usize::from(!merged)),
        }
    }

    #[inline]
    fn value(&self, e: usize, r: usize, c: usize) -> T {
        match self.source(e, r, c) {
            Some(s) if c == r => self.a_data[s] + T::one(),
            Some(s) => self.a_data[s],
            None => T::one(),
        }
    }
}

impl<T: Scalar> GcnFilter<T> {
    /// VJP: the gradient with respect to $A$'s stored values (aligned with
    /// `a.data()`, length `nnz`) from the gradient $\bar{\hat a}$ of the
    /// filter's stored values; `a` is the matrix the filter was built from.
    ///
    /// With $u = \hat D^{-1/2}$ and $b$ the values of $A + I$:
    /// $\bar b_{ij} = \bar{\hat a}_{ij} u_i u_j + \bar d_i$, where
    /// $\bar d_i = -\tfrac12 u_i^3 \big(\sum_j \bar{\hat a}_{ij} b_{ij} u_j + \sum_r \bar{\hat a}_{ri} b_{ri} u_r\big)$
    /// (0 where $u_i = 0$).
    ///
    /// The column sums $\sum_r$ are taken as if the matrix were one graph
    /// ([`crate::kernels::segment::segment_column_sums`]); pass the batch's
    /// segments to [`GcnFilter::vjp_in_graphs`] for results that are, graph
    /// by graph, bit-identical to the graphs' alone.
    ///
    /// ```
    /// use graphpool::kernels::sparse::gcn_filter;
    /// use sprs::CsMat;
    /// let a = CsMat::new((2, 2), vec![0, 1, 2], vec![1, 0], vec![1.0_f64, 1.0]);
    /// let f = gcn_filter(a.view());
    /// // A + I = [[1, 1], [1, 1]]: every degree is 2, every entry 1/2
    /// assert!(f.matrix.data().iter().all(|v| (v - 0.5).abs() < 1e-15));
    /// // d(sum of the filter's entries) / d(a_01) = 0: the filter's
    /// // entries always sum to 2 for two nodes linked both ways
    /// let g = f.vjp(a.view(), &[1.0; 4]);
    /// assert!(g.iter().all(|v| v.abs() < 1e-15));
    /// ```
    pub fn vjp(&self, a: CsMatView<T>, grad: &[T]) -> Array1<T> {
        self.vjp_in_graphs(a, grad, &Segments::single(self.matrix.rows()))
    }

    /// [`GcnFilter::vjp`] for the filter of a batch with these `segments`
    /// (every stored entry within a graph), in parallel.
    pub fn vjp_in_graphs(&self, a: CsMatView<T>, grad: &[T], segments: &Segments) -> Array1<T> {
        let u = self.deg_inv_sqrt.as_slice().expect("fresh array");
        let loops = LoopEntries::new(&self.matrix, &a);
        let g = |e: usize, _: usize, _: usize| grad[e];
        let col = segment_column_sums(
            self.matrix.view(),
            segments,
            |_| false,
            |e, r, c| [g(e, r, c) * loops.value(e, r, c) * u[r]],
        );
        self.values_vjp(&loops, a.nnz(), g, |_| false, |i| col[i][0])
    }

    /// The gradient of $A$'s values from the gradient `g(e, r, c)` of the
    /// filter's entry `e` = (r, c) (0 on the rows where `zero_row`), given
    /// the column part $\sum_r \bar{\hat a}_{ri} b_{ri} u_r$ of every node.
    fn values_vjp<G, Z, C>(
        &self,
        loops: &LoopEntries<'_, T>,
        nnz: usize,
        g: G,
        zero_row: Z,
        col_part: C,
    ) -> Array1<T>
    where
        G: Fn(usize, usize, usize) -> T + Sync,
        Z: Fn(usize) -> bool + Sync,
        C: Fn(usize) -> T + Sync,
    {
        let m = &self.matrix;
        let n = m.rows();
        let ip = m.indptr();
        let ip = ip.raw_storage();
        let idx = m.indices();
        let u = self.deg_inv_sqrt.as_slice().expect("fresh array");
        let half = T::c(0.5);
        // dL/dd_i from the row part and the column part of dL/du_i
        let gd: Vec<T> = (0..n)
            .into_par_iter()
            .map(|r| {
                let row = if zero_row(r) {
                    T::zero()
                } else {
                    (ip[r]..ip[r + 1])
                        .map(|e| g(e, r, idx[e]) * loops.value(e, r, idx[e]) * u[idx[e]])
                        .fold(T::zero(), |s, v| s + v)
                };
                let gu = row + col_part(r);
                -half * u[r] * u[r] * u[r] * gu
            })
            .collect();
        // every stored entry of A appears once in the filter, in order: each
        // block of rows writes its own range of the result (A's rows)
        let a_ip = loops.a_ip;
        let mut out: Vec<T> = rows::fresh_vec(nnz);
        let mut tasks = Vec::with_capacity(n.div_ceil(ROW_BLOCK));
        let mut rest = &mut out[..];
        for bl in 0..n.div_ceil(ROW_BLOCK) {
            let rows = bl * ROW_BLOCK..((bl + 1) * ROW_BLOCK).min(n);
            let len = a_ip[rows.end] - a_ip[rows.start];
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            tasks.push((rows, head));
        }
        tasks.into_par_iter().for_each(|(rows, dst)| {
            let at = a_ip[rows.start] - a_ip[0];
            for r in rows {
                for (e, &c) in (ip[r]..).zip(&idx[ip[r]..ip[r + 1]]) {
                    if let Some(s) = loops.source(e, r, c) {
                        dst[s - at] = T::zero() + (g(e, r, c) * u[r] * u[c] + gd[r]);
                    }
                }
            }
        });
        Array1::from(out)
    }
}

/// The value of $A + I$ at row `r`'s diagonal, given [`diagonal_slot`]'s
/// `(slot, merged)` for the row's values `vals`: $a_{rr} + 1$, or 1 where
/// $A$ stores none.
#[inline(always)]
fn loop_value<T: Scalar>(vals: &[T], (slot, merged): (usize, bool)) -> T {
    if merged {
        vals[slot] + T::one()
    } else {
        T::one()
    }
}

/// Calls `f(e, c, b)` for every entry $(r, c)$ of row `r` of $A + I$ in
/// column order, on plain slices: the entries of $A$ before the diagonal,
/// the diagonal ([`loop_value`]), the entries after it; `b` the value of
/// $A + I$ and `e` the position in $A$'s entries of the entry it comes
/// from (for a diagonal $A$ does not store, of the entry it is inserted
/// before). The sequence of the rows of [`GcnFilter::matrix`], and the one
/// walk of a row of $A + I$ that the filter, its degrees, SAGPool's score
/// and [`GcnOperator`] share.
#[inline(always)]
fn for_each_with_loop<T: Scalar>(a: RawCsr<'_, T>, r: usize, mut f: impl FnMut(usize, usize, T)) {
    let e0 = a.range(r).start;
    let (cols, vals) = a.row(r);
    let diagonal = diagonal_slot(cols, r);
    let (slot, merged) = diagonal;
    for (k, (&c, &b)) in cols[..slot].iter().zip(&vals[..slot]).enumerate() {
        f(e0 + k, c, b);
    }
    f(e0 + slot, r, loop_value(vals, diagonal));
    let rest = slot + usize::from(merged);
    for (k, (&c, &b)) in cols[rest..].iter().zip(&vals[rest..]).enumerate() {
        f(e0 + rest + k, c, b);
    }
}

/// The GCN filter $\hat A = \hat D^{-1/2}(A + I)\hat D^{-1/2}$ of a square
/// $A$ as an operator that is never stored: each entry
/// $\hat a_{rc} = b_{rc}\,(u_r u_c)$ is formed as a product reads it, from
/// $A$'s own structure and values ($b$ the values of $A + I$, row $r$ of
/// $A$ with its diagonal merged or inserted in column order) and
/// $u = \hat D^{-1/2}$ ([`gcn_deg_inv_sqrt`], $N$ values).
///
/// Every product is the same product with [`gcn_filter`]'s matrix, bit for
/// bit, on any thread count: the entries come in the same order with the
/// same rounding ($b_{rc}$ times the rounded $u_r u_c$, as [`gcn_filter`]
/// normalises). What it saves is the stored filter: its values and a second
/// copy of $A$'s structure with the diagonal (12 to 16 bytes per entry),
/// for one more multiply and a gathered $u_c$ per entry read.
///
/// ```
/// use graphpool::kernels::sparse::{gcn_deg_inv_sqrt, gcn_filter, spmm, GcnOperator};
/// use ndarray::array;
/// use sprs::CsMat;
/// // 0 - 1 with weight 3, node 2 alone
/// let a = CsMat::new((3, 3), vec![0, 1, 2, 2], vec![1, 0], vec![3.0_f64, 3.0]);
/// let u = gcn_deg_inv_sqrt(a.view());
/// let view = a.view();
/// let op = GcnOperator::new(&view, u.as_slice().unwrap())?;
/// let x = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
/// assert_eq!(op.spmm(x.view()), spmm(gcn_filter(a.view()).matrix.view(), x.view()));
/// // A + I = [[1, 3], [3, 1]] and [1]: u = (1/2, 1/2, 1)
/// assert_eq!(op.spmm(x.view()).row(2).to_vec(), vec![5.0, 6.0]);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Clone, Copy)]
pub struct GcnOperator<'a, T: Scalar> {
    raw: RawCsr<'a, T>,
    u: &'a [T],
}

impl<T: Scalar> std::fmt::Debug for GcnOperator<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcnOperator")
            .field("rows", &self.raw.rows)
            .field("stored_entries_of_a", &self.raw.data.len())
            .finish()
    }
}

impl<'a, T: Scalar> GcnOperator<'a, T> {
    /// The filter of `a` (square, CSR) with `deg_inv_sqrt` its
    /// $\hat D^{-1/2}$ ([`gcn_deg_inv_sqrt`]`(a)`, or a batch's
    /// [`crate::DisjointBatch::gcn_deg_inv_sqrt`]).
    ///
    /// # Errors
    /// [`PoolError::NotCsr`] if `a` is CSC, [`PoolError::AdjacencyShape`] if
    /// it is not square, [`PoolError::ShapeMismatch`] if `deg_inv_sqrt` does
    /// not have one value per row.
    pub fn new(a: &'a CsMatView<'_, T>, deg_inv_sqrt: &'a [T]) -> Result<Self, PoolError> {
        if !a.is_csr() {
            return Err(PoolError::NotCsr);
        }
        if a.rows() != a.cols() {
            return Err(PoolError::AdjacencyShape {
                n: a.rows(),
                rows: a.rows(),
                cols: a.cols(),
            });
        }
        if deg_inv_sqrt.len() != a.rows() {
            return Err(PoolError::ShapeMismatch {
                what: "deg_inv_sqrt of the GCN filter".into(),
                expected: format!("{} values (one per row of a)", a.rows()),
                got: format!("{} values", deg_inv_sqrt.len()),
            });
        }
        Ok(Self {
            raw: RawCsr::new(a),
            u: deg_inv_sqrt,
        })
    }

    /// $\hat A X$: [`spmm`] with the filter.
    pub fn spmm(&self, x: ArrayView2<T>) -> Array2<T> {
        debug_assert_eq!(self.raw.rows, x.nrows());
        product(*self, x)
    }

    /// Rows `rows` of $\hat A X$ into `out` (`rows.len()` $\times F$,
    /// row-major, overwritten): [`spmm_rows`] with the filter.
    pub fn spmm_rows(&self, x: ArrayView2<T>, rows: std::ops::Range<usize>, out: &mut [T]) {
        debug_assert_eq!(self.raw.rows, x.nrows());
        product_rows_into(*self, x, rows, out);
    }

    /// $(\hat A X) W_i$ for each $W_i$ without holding $\hat A X$:
    /// [`spmm_times`] with the filter.
    pub fn spmm_times(&self, x: ArrayView2<T>, ws: &[ArrayView2<T>]) -> Vec<Array2<T>> {
        debug_assert_eq!(self.raw.rows, x.nrows());
        product_times(*self, x, ws)
    }

    /// $\hat A X_i$ for several $X_i$ in one pass: [`spmm_many`] with the
    /// filter.
    pub fn spmm_many(&self, xs: &[ArrayView2<T>]) -> Vec<Array2<T>> {
        debug_assert!(xs.iter().all(|x| x.nrows() == self.raw.rows));
        product_many(*self, xs)
    }

    /// [`GcnOperator::spmm_many`] written over `outs` (one per input,
    /// $N \times$ its width, standard layout, any values): a layer's
    /// buffers that are not read again serve instead of fresh memory. The
    /// same bits.
    ///
    /// # Panics
    /// If an output's shape is not $N \times$ its input's width, or it is
    /// not in standard layout.
    pub(crate) fn spmm_many_over(
        &self,
        xs: &[ArrayView2<T>],
        outs: Vec<Array2<T>>,
    ) -> Vec<Array2<T>> {
        debug_assert!(xs.iter().all(|x| x.nrows() == self.raw.rows));
        product_many_into(*self, xs, outs)
    }

    /// $\hat A^\top X$: [`spmm_t`] with the filter.
    pub fn spmm_t(&self, x: ArrayView2<T>) -> Array2<T> {
        debug_assert_eq!(self.raw.rows, x.nrows());
        product_t(*self, self.raw.rows, x)
    }
}

impl<T: Scalar> GcnOperator<'_, T> {
    /// The filter's value at entry $(r, c)$ of $A + I$ (from entry `e` of
    /// $A$, [`for_each_with_loop`]), from its value `b` and $u_r$ = `ur`:
    /// $b\,(u_r u_c)$, the diagonal's included; asks for the $u_c$ that
    /// [`rows::PREFETCH_AHEAD`] entries on will read (a gather at random
    /// nodes, like the rows of $X$ the product asks for).
    #[inline(always)]
    fn value(&self, e: usize, c: usize, b: T, ur: T) -> T {
        rows::prefetch_row_ahead(self.u, 1, self.raw.indices, e);
        b * (ur * self.u[c])
    }
}

impl<T: Scalar> RowEntries<T> for GcnOperator<'_, T> {
    #[inline(always)]
    fn structure(&self) -> RawCsr<'_, T> {
        self.raw
    }

    #[inline(always)]
    fn for_each_in_row(&self, r: usize, mut f: impl FnMut(usize, usize, T)) {
        let ur = self.u[r];
        // inlined at each of the walk's three call sites, so that a kernel's
        // sums stay in its registers (a closure called three times is
        // otherwise compiled apart, outside the caller's SIMD level)
        for_each_with_loop(
            self.raw,
            r,
            #[inline(always)]
            |e, c, b| f(e, c, self.value(e, c, b, ur)),
        );
    }

    #[inline(always)]
    fn for_each_in_columns(&self, lo: usize, hi: usize, mut f: impl FnMut(usize, usize, usize, T)) {
        for r in 0..self.raw.rows {
            let e0 = self.raw.range(r).start;
            let (cols, vals) = self.raw.row(r);
            let diagonal = (lo..hi).contains(&r);
            let reaches = matches!((cols.first(), cols.last()),
                (Some(&first), Some(&last)) if last >= lo && first < hi);
            if !reaches && !diagonal {
                continue;
            }
            let ur = self.u[r];
            let start = cols.partition_point(|&c| c < lo);
            for (k, (&c, &b)) in cols[start..].iter().zip(&vals[start..]).enumerate() {
                if c >= hi {
                    break;
                }
                // the diagonal below: a row's entries go to distinct output rows
                if c != r {
                    let e = e0 + start + k;
                    f(r, c, e, self.value(e, c, b, ur));
                }
            }
            if diagonal {
                let slot = diagonal_slot(cols, r);
                let e = e0 + slot.0;
                f(r, r, e, self.value(e, r, loop_value(vals, slot), ur));
            }
        }
    }
}

/// The GCN filter applied to a vector without building it (see
/// [`gcn_spmv`]).
#[derive(Debug, Clone)]
pub struct GcnSpmv<T: Scalar> {
    /// $y = \hat A v$.
    pub y: Array1<T>,
    /// $\hat D^{-1/2}$ per node (0 where the degree is $\le 0$), for [`gcn_spmv_vjp`].
    pub deg_inv_sqrt: Array1<T>,
}

/// $y = \hat A v = \hat D^{-1/2}(A + I)\hat D^{-1/2} v$ for a vector $v$
/// (SAGPool's GCN score) straight from $A$, without storing $\hat A$ (whose
/// structure, values and sources take 24 bytes per entry): the degrees of
/// $A + I$ ([`gcn_deg_inv_sqrt`]), then [`gcn_spmv_with`]. (The same value
/// as `spmm(gcn_filter(a).matrix, v)` up to rounding: the products are
/// grouped differently.) Parallel over rows; the result does not depend on
/// the thread count.
pub fn gcn_spmv<T: Scalar>(a: CsMatView<T>, v: ArrayView1<T>) -> GcnSpmv<T> {
    let u = gcn_deg_inv_sqrt(a);
    GcnSpmv {
        y: gcn_spmv_with(a, u.view(), v),
        deg_inv_sqrt: u,
    }
}

/// $\hat D^{-1/2}$ of $A + I$, one value per node (0 where the degree is
/// $\le 0$): each row of $A + I$ summed in column order from 0, exactly as
/// [`gcn_filter`] sums it (the diagonal term is never $-0$, so the sign of
/// the start is moot). Parallel over rows. A batch keeps it
/// ([`crate::DisjointBatch::gcn_deg_inv_sqrt`]).
///
/// ```
/// use graphpool::kernels::sparse::gcn_deg_inv_sqrt;
/// use sprs::CsMat;
/// // node 0 has an edge of weight 3 (degree 1 + 3), node 1 none (degree 1)
/// let a = CsMat::new((2, 2), vec![0, 1, 1], vec![1], vec![3.0_f64]);
/// assert_eq!(gcn_deg_inv_sqrt(a.view()).to_vec(), vec![0.5, 1.0]);
/// ```
pub fn gcn_deg_inv_sqrt<T: Scalar>(a: CsMatView<T>) -> Array1<T> {
    let raw = RawCsr::new(&a);
    Array1::from(map_rows(a.rows(), |r| {
        let mut d = T::zero();
        for_each_with_loop(raw, r, |_, _, b| d += b);
        if d > T::zero() {
            T::one() / d.sqrt()
        } else {
            T::zero()
        }
    }))
}

/// $y = \hat A v$ given $u = \hat D^{-1/2}$ ([`gcn_deg_inv_sqrt`]):
/// $y_r = u_r \sum_c b_{rc}\,(u_c v_c)$ with $b$ the values of $A + I$ in
/// column order, one gathered value per stored entry. Parallel over rows;
/// the result does not depend on the thread count.
///
/// ```
/// use graphpool::kernels::sparse::{gcn_deg_inv_sqrt, gcn_spmv, gcn_spmv_with};
/// use ndarray::array;
/// use sprs::CsMat;
/// // A + I = [[1, 3], [3, 1]]: degrees 4, u = 1/2
/// let a = CsMat::new((2, 2), vec![0, 1, 2], vec![1, 0], vec![3.0_f64, 3.0]);
/// let v = array![1.0, 3.0];
/// let u = gcn_deg_inv_sqrt(a.view());
/// assert_eq!(gcn_spmv_with(a.view(), u.view(), v.view()), gcn_spmv(a.view(), v.view()).y);
/// // y_0 = (1 * 1 + 3 * 3) / 4, y_1 = (3 * 1 + 1 * 3) / 4
/// assert_eq!(gcn_spmv_with(a.view(), u.view(), v.view()).to_vec(), vec![2.5, 1.5]);
/// ```
pub fn gcn_spmv_with<T: Scalar>(a: CsMatView<T>, u: ArrayView1<T>, v: ArrayView1<T>) -> Array1<T> {
    let raw = RawCsr::new(&a);
    let (u, v) = (u.as_standard_layout(), v.as_standard_layout());
    let (us, vs) = (
        u.as_slice().expect("standard layout"),
        v.as_slice().expect("standard layout"),
    );
    let p: Vec<T> = us.par_iter().zip(vs).map(|(&u, &v)| u * v).collect();
    Array1::from(map_rows(a.rows(), |r| gcn_row(raw, us, r, |c| p[c])))
}

/// Row $r$ of [`gcn_spmv_with`]: $u_r \sum_c b_{rc}\, p_c$ with
/// $p_c = u_c v_c$ given by `p`.
#[inline(always)]
fn gcn_row<T: Scalar>(raw: RawCsr<'_, T>, u: &[T], r: usize, p: impl Fn(usize) -> T) -> T {
    let mut acc = T::zero();
    for_each_with_loop(raw, r, |_, c, b| acc += b * p(c));
    u[r] * acc
}

/// SAGPool's scores on one run of whole graphs (`nodes`, every entry of
/// their rows of $A$ within them): $v = X w$ on the run's rows
/// ([`crate::kernels::rows::dot_rows`] on the row-major `x` ($N \times F$),
/// the bits of [`crate::nn::matmul`] with one column) into `xw`,
/// then $y = \hat A v$ on them into `y`, the bits of [`gcn_spmv_with`]
/// (`u` = $\hat D^{-1/2}$ of the whole batch, [`gcn_deg_inv_sqrt`]). A
/// scorer for [`crate::kernels::sort::scored_top_k_rows`].
///
/// ```
/// use graphpool::kernels::sparse::{gcn_deg_inv_sqrt, gcn_scores_of_run, gcn_spmv_with};
/// use ndarray::array;
/// use sprs::CsMat;
/// // two graphs: nodes 0-1 joined, node 2 alone
/// let a = CsMat::new((3, 3), vec![0, 1, 2, 2], vec![1, 0], vec![3.0_f64, 3.0]);
/// let x = array![[1.0, 2.0], [0.5, -1.0], [4.0, 1.0]];
/// let w = [1.0, 0.5];
/// let u = gcn_deg_inv_sqrt(a.view());
/// let (mut y, mut xw) = (vec![0.0; 3], vec![0.0; 3]);
/// let xs = x.as_slice().unwrap();
/// gcn_scores_of_run(a.view(), u.as_slice().unwrap(), xs, 2, &w, 0..2, &mut y[..2], &mut xw[..2]);
/// gcn_scores_of_run(a.view(), u.as_slice().unwrap(), xs, 2, &w, 2..3, &mut y[2..], &mut xw[2..]);
/// assert_eq!(xw, vec![2.0, 0.0, 4.5]);
/// assert_eq!(y, gcn_spmv_with(a.view(), u.view(), ndarray::arr1(&xw).view()).to_vec());
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gcn_scores_of_run<T: Scalar>(
    a: CsMatView<T>,
    u: &[T],
    x: &[T],
    f: usize,
    w: &[T],
    nodes: std::ops::Range<usize>,
    y: &mut [T],
    xw: &mut [T],
) {
    let raw = RawCsr::new(&a);
    let base = nodes.start;
    debug_assert_eq!(w.len(), f);
    crate::kernels::rows::dot_rows(x, w, base, xw);
    let p: Vec<T> = nodes
        .clone()
        .zip(xw.iter())
        .map(|(c, &v)| u[c] * v)
        .collect();
    for (r, y) in nodes.zip(y.iter_mut()) {
        *y = gcn_row(raw, u, r, |c| p[c - base]);
    }
}

/// $\bar v = \hat A^\top \bar y$ of [`gcn_spmv_vjp`] for a symmetric $A$
/// whose graphs are each summed whole (at most [`CHUNK`](super::CHUNK)
/// nodes), with the column sums $S$ if `keep_sums`. There
/// $S_c = \sum_r b_{rc}\, q_r$ over the stored entries $(r, c)$ in row order
/// ($b = A + I$, $q_r = \bar y_r u_r$), then $q_c$ where row $c$ stores no
/// diagonal entry, and $\bar v_c = u_c S_c$. With $A = A^\top$ (same
/// pattern, same values bit for bit), column $c$'s entries in row order are
/// row $c$'s in column order with the same values, so $S_c$ is gathered
/// from row $c$ alone: parallel over fixed blocks of rows, each sum in a
/// register, no scatter, and $q$ computed where it is read. The scatter
/// skips the rows with $q_r = 0$; here every term is added, without a
/// branch on $q_r$ (half the nodes of a selection, at random): $b q_r$ is
/// then $\pm 0$ ($b$ is finite, as the batch's weights are), and a sum
/// that starts at $+0$ is never $-0$, so adding it changes no bit. The
/// terms are the same, added in the same order, so the bits are those of
/// [`crate::kernels::segment::segment_column_sums_then`] (which adds the
/// pieces of a larger graph's sums in an order of its own).
fn gcn_vjp_by_rows<T: Scalar>(
    raw: RawCsr<'_, T>,
    gy: &[T],
    u: &[T],
    keep_sums: bool,
) -> (Vec<T>, Option<Vec<[T; 1]>>) {
    let n = raw.rows;
    let mut gv: Vec<T> = rows::fresh_vec(n);
    let mut sums: Vec<[T; 1]> = if keep_sums {
        rows::fresh_vec(n)
    } else {
        Vec::new()
    };
    let mut sum_blocks: Vec<&mut [[T; 1]]> = sums.chunks_mut(ROW_BLOCK).collect();
    sum_blocks.resize_with(n.div_ceil(ROW_BLOCK), Default::default);
    gv.par_chunks_mut(ROW_BLOCK)
        .zip(sum_blocks)
        .enumerate()
        .for_each(|(b, (gv, sums))| {
            for (i, o) in gv.iter_mut().enumerate() {
                let c = b * ROW_BLOCK + i;
                let (cols, vals) = raw.row(c);
                let mut acc = T::zero();
                let mut diagonal = false;
                for (&r, &w) in cols.iter().zip(vals) {
                    // the value of A + I at (c, r)
                    let a_plus_i = if r == c { w + T::one() } else { w };
                    acc += a_plus_i * (gy[r] * u[r]);
                    diagonal |= r == c;
                }
                if !diagonal {
                    acc += gy[c] * u[c];
                }
                *o = u[c] * acc;
                if let Some(slot) = sums.get_mut(i) {
                    *slot = [acc];
                }
            }
        });
    (gv, keep_sums.then_some(sums))
}

/// VJP of [`gcn_spmv`]: given $\bar y$, returns
/// $(\bar v = \hat A^\top \bar y,\ \bar a)$, the latter aligned with
/// `a.data()`, through $\hat A$'s values and the degrees as in
/// [`GcnFilter::vjp`], straight from $A$ and in two sweeps over its
/// entries. With $q_r = \bar y_r u_r$, $p_c = v_c u_c$ and the column sums
/// $S_c = \sum_r b_{rc} q_r$ ([`crate::kernels::segment::segment_column_sums`],
/// rows with $q_r = 0$ skipped, the added diagonal entries last):
/// $\bar v_c = u_c S_c$, $\bar u_i = \bar y_i \sum_c b_{ic} p_c + v_i S_i$,
/// $\bar d_i = -\frac12 u_i^3 \bar u_i$ and $\bar a_{rc} = q_r p_c + \bar d_r$
/// (the row sums and $\bar a$ in one parallel pass over the rows). Every
/// entry must lie within its graph of `segments`; the results are, graph
/// by graph, those of the graph alone and do not depend on the thread count.
pub fn gcn_spmv_vjp<T: Scalar>(
    a: CsMatView<T>,
    deg_inv_sqrt: ArrayView1<T>,
    v: ArrayView1<T>,
    grad: ArrayView1<T>,
    segments: &Segments,
) -> (Array1<T>, Array1<T>) {
    let (gv, ga) = gcn_spmv_vjp_opt(a, deg_inv_sqrt, v, grad, (segments, None), true);
    (gv, ga.unwrap_or_else(|| Array1::zeros(a.nnz())))
}

/// [`gcn_spmv_vjp`], with $\bar a$ (the second sweep over the entries)
/// only if `edge_weights`; $\bar v$ is the same either way. With
/// `symmetric` (the batch's [`crate::DisjointBatch::symmetric_graphs`]),
/// the column sums $S$ of a batch whose graphs are all symmetric and
/// summed whole ([`gcn_vjp_by_rows`]) are gathered row by row
/// instead of scattered: the same bits.
pub(crate) fn gcn_spmv_vjp_opt<T: Scalar>(
    a: CsMatView<T>,
    deg_inv_sqrt: ArrayView1<T>,
    v: ArrayView1<T>,
    grad: ArrayView1<T>,
    (segments, symmetric): (&Segments, Option<&[bool]>),
    edge_weights: bool,
) -> (Array1<T>, Option<Array1<T>>) {
    let raw = RawCsr::new(&a);
    let (aidx, adata) = (a.indices(), a.data());
    let (u, v, gy) = (
        deg_inv_sqrt.as_standard_layout(),
        v.as_standard_layout(),
        grad.as_standard_layout(),
    );
    let (u, v, gy) = (
        u.as_slice().expect("standard layout"),
        v.as_slice().expect("standard layout"),
        gy.as_slice().expect("standard layout"),
    );
    // the value of A + I at A's entry e = (r, c)
    let b_of = |e: usize, r: usize, c: usize| {
        if c == r {
            adata[e] + T::one()
        } else {
            adata[e]
        }
    };
    let has_diagonal = |r: usize| diagonal_slot(raw.row(r).0, r).1;
    let by_rows = symmetric.is_some_and(|sym| sym.iter().all(|&s| s))
        && (0..segments.num_graphs()).all(|g| segments.size(g) <= super::CHUNK);
    let (gv, s) = if by_rows {
        gcn_vjp_by_rows(raw, gy, u, edge_weights)
    } else {
        let q: Vec<T> = gy.par_iter().zip(u).map(|(&g, &u)| g * u).collect();
        // the added diagonal entries last, each column's as soon as its
        // sums are complete (in the task that summed it)
        let s = segment_column_sums_then(
            a,
            segments,
            |r| q[r] == T::zero(),
            |e, r, c| [b_of(e, r, c) * q[r]],
            |r, slot| {
                if q[r] != T::zero() && !has_diagonal(r) {
                    slot[0] += q[r];
                }
            },
        );
        let mut gv: Vec<T> = rows::fresh_vec(s.len());
        gv.par_chunks_mut(ROW_BLOCK)
            .zip(s.par_chunks(ROW_BLOCK).zip(u.par_chunks(ROW_BLOCK)))
            .for_each(|(gv, (s, u))| {
                for (o, (s, &u)) in gv.iter_mut().zip(s.iter().zip(u)) {
                    *o = u * s[0];
                }
            });
        (gv, Some(s))
    };
    let gv = Array1::from(gv);
    let Some(s) = s.filter(|_| edge_weights) else {
        return (gv, None);
    };
    let p: Vec<T> = v.par_iter().zip(u).map(|(&v, &u)| v * u).collect();
    let half = T::c(0.5);
    let mut out: Vec<T> = rows::fresh_vec(a.nnz());
    raw.entry_blocks(&mut out)
        .into_par_iter()
        .for_each(|(rows, dst)| {
            let off = raw.rows_range(rows.clone()).start;
            for r in rows {
                let es = raw.range(r);
                // the row part of dL/du_r, then dL/dd_r
                let mut acc = T::zero();
                if gy[r] != T::zero() {
                    for e in es.clone() {
                        let c = aidx[e];
                        acc += b_of(e, r, c) * p[c];
                    }
                    if !has_diagonal(r) {
                        acc += p[r];
                    }
                }
                let gu = gy[r] * acc + v[r] * s[r][0];
                let gd = -half * u[r] * u[r] * u[r] * gu;
                for e in es {
                    dst[e - off] = T::zero() + ((gy[r] * u[r]) * p[aidx[e]] + gd);
                }
            }
        });
    (gv, Some(Array1::from(out)))
}

// ------------------------------------------------------------------------
// Kernels of the selection pools (TopKPool, SAGPool, LaPool): sparse-sparse
// product VJPs, row-wise softmax and cosine similarity on a sparsity
// pattern, the graph Laplacian product, and undirected shortest paths.

/// The stored entries of row `r` of a CSR view as `(indices, values)`.
#[inline]
fn row_parts<'a, T: Scalar>(m: &'a CsMatView<'_, T>, r: usize) -> (&'a [usize], &'a [T]) {
    RawCsr::new(m).row(r)
}

/// Dot product of two sparse vectors given by sorted indices (a merge, in
/// index order: deterministic).
#[inline]
fn sparse_dot<T: Scalar>(ai: &[usize], av: &[T], bi: &[usize], bv: &[T]) -> T {
    let (mut p, mut q) = (0, 0);
    let mut acc = T::zero();
    while p < ai.len() && q < bi.len() {
        match ai[p].cmp(&bi[q]) {
            std::cmp::Ordering::Less => p += 1,
            std::cmp::Ordering::Greater => q += 1,
            std::cmp::Ordering::Equal => {
                acc += av[p] * bv[q];
                p += 1;
                q += 1;
            }
        }
    }
    acc
}

/// Maps every stored entry of a CSR view, row-parallel, to a value:
/// `f(row, entry position in data, column)`; the result is aligned with
/// `m.data()`, each block of [`ROW_BLOCK`] rows writing its own entries in
/// place (a fresh vector, no per-row vectors to join).
pub(crate) fn map_entries<T: Scalar, R, F>(m: CsMatView<T>, f: F) -> Vec<R>
where
    R: Copy + Default + Send + Sync,
    F: Fn(usize, usize, usize) -> R + Sync,
{
    let raw = RawCsr::new(&m);
    let idx = m.indices();
    let mut out: Vec<R> = rows::fresh_vec(m.nnz());
    raw.entry_blocks(&mut out)
        .into_par_iter()
        .for_each(|(rows, part)| {
            let base = raw.rows_range(rows.clone()).start;
            for r in rows {
                for e in raw.range(r) {
                    part[e - base] = f(r, e, idx[e]);
                }
            }
        });
    out
}

/// The values of `m` at the stored positions of `pattern` (same shape), 0
/// where `m` has no entry; aligned with `pattern.data()`. Both must have
/// sorted indices.
pub fn gather_at<T: Scalar>(m: CsMatView<T>, pattern: CsMatView<T>) -> Array1<T> {
    debug_assert_eq!(m.shape(), pattern.shape());
    let vals = map_entries(pattern, |r, _, c| {
        let (mi, mv) = row_parts(&m, r);
        mi.binary_search(&c).map_or(T::zero(), |p| mv[p])
    });
    Array1::from(vals)
}

/// VJP of [`spgemm`] $C = A B$ with respect to the stored values of $A$:
/// $\bar a_{ik} = \sum_j \bar c_{ij} b_{kj} = \langle \bar C_{i\cdot}, B_{k\cdot}\rangle$,
/// aligned with `a.data()`. `grad` holds $\bar C$ on the structure of $C$
/// (any structure works: entries it lacks count as 0).
pub fn spgemm_vjp_a<T: Scalar>(a: CsMatView<T>, b: CsMatView<T>, grad: CsMatView<T>) -> Array1<T> {
    debug_assert_eq!((a.rows(), b.cols()), grad.shape());
    let vals = map_entries(a, |i, _, k| {
        let (gi, gv) = row_parts(&grad, i);
        let (bi, bv) = row_parts(&b, k);
        sparse_dot(gi, gv, bi, bv)
    });
    Array1::from(vals)
}

/// VJP of [`spgemm`] $C = A B$ with respect to the stored values of $B$:
/// $\bar b_{kj} = \sum_i a_{ik} \bar c_{ij} = (A^\top \bar C)_{kj}$, aligned
/// with `b.data()`. Transposes $A$, then [`spgemm_t_vjp_b`].
pub fn spgemm_vjp_b<T: Scalar>(a: CsMatView<T>, b: CsMatView<T>, grad: CsMatView<T>) -> Array1<T> {
    debug_assert_eq!((a.rows(), b.cols()), grad.shape());
    spgemm_t_vjp_b(transpose(a).matrix.view(), b, grad)
}

/// [`spgemm_vjp_b`] given $A^\top$ (`at`, CSR, sorted indices) instead of
/// $A$: row $k$ of $A^\top \bar C$ is accumulated as in [`spgemm`] and
/// read at the stored columns of row $k$ of $B$ (0 where it has no
/// entry), block of rows by block of rows, without ever holding
/// $A^\top \bar C$ (whose structure can be far larger than $B$'s). The
/// values are those of `gather_at(spgemm(at, grad), b)`, bit for bit.
pub fn spgemm_t_vjp_b<T: Scalar>(
    at: CsMatView<T>,
    b: CsMatView<T>,
    grad: CsMatView<T>,
) -> Array1<T> {
    debug_assert_eq!((at.cols(), at.rows()), (grad.rows(), b.rows()));
    debug_assert_eq!(b.cols(), grad.cols());
    let raw = RawCsr::new(&b);
    let cols = b.indices();
    let mut vals: Vec<T> = rows::fresh_vec(b.nnz());
    raw.entry_blocks(&mut vals).into_par_iter().for_each_init(
        || accumulator(grad.cols()),
        |(acc, seen, touched), (rows, out)| {
            let base = raw.rows_range(rows.clone()).start;
            for k in rows {
                accumulate_row(&at, &grad, k, acc, seen, touched);
                for e in raw.range(k) {
                    let c = cols[e];
                    out[e - base] = if seen[c] { acc[c] } else { T::zero() };
                }
                touched.drain(..).for_each(|c| seen[c] = false);
            }
        },
    );
    Array1::from(vals)
}

/// Softmax over the stored entries of each row of `m`:
/// $s_{ij} = e^{m_{ij} - \max_k m_{ik}} / \sum_{k} e^{m_{ik} - \max_k m_{ik}}$
/// over the stored $k$ of row $i$ (TensorFlow's `tf.sparse.softmax`);
/// aligned with `m.data()`. An empty row stays empty; a row of one entry gets 1.
pub fn row_softmax<T: Scalar>(m: CsMatView<T>) -> Array1<T> {
    let vals: Vec<T> = (0..m.rows())
        .into_par_iter()
        .flat_map_iter(|r| {
            let (_, v) = row_parts(&m, r);
            let mx = v.iter().copied().fold(T::neg_infinity(), T::max);
            let z: T = v
                .iter()
                .fold(T::zero(), |s, &x| s + (x - mx).exp_vectorizable());
            v.iter().map(move |&x| (x - mx).exp_vectorizable() / z)
        })
        .collect();
    Array1::from(vals)
}

/// VJP of [`row_softmax`] given its output `s` (aligned with `m.data()`):
/// $\bar m_{ij} = s_{ij}(\bar s_{ij} - \sum_k s_{ik}\bar s_{ik})$.
pub fn row_softmax_vjp<T: Scalar>(
    m: CsMatView<T>,
    s: ArrayView1<T>,
    grad: ArrayView1<T>,
) -> Array1<T> {
    let raw = RawCsr::new(&m);
    let vals: Vec<T> = (0..m.rows())
        .into_par_iter()
        .flat_map_iter(|r| {
            let range = raw.range(r);
            let dot = range.clone().fold(T::zero(), |acc, e| acc + s[e] * grad[e]);
            range.map(move |e| s[e] * (grad[e] - dot))
        })
        .collect();
    Array1::from(vals)
}

/// The rows of `x` divided by their norms (zero rows stay zero).
fn unit_rows<T: Scalar>(x: ArrayView2<T>, norms: &Array1<T>) -> Array2<T> {
    let mut u = x.to_owned();
    Zip::from(u.rows_mut())
        .and(norms)
        .par_for_each(|mut r, &n| {
            if n > T::zero() {
                r.mapv_inplace(|v| v / n);
            }
        });
    u
}

/// Cosine similarity sampled on a pattern: for every stored entry $(i, j)$
/// of `pattern` ($N \times M$),
/// $c_{ij} = \frac{\langle x_i, y_j\rangle}{\|x_i\| \|y_j\|}$, with $c_{ij} = 0$
/// when $\|x_i\| \|y_j\| = 0$ (the references return NaN there). Aligned
/// with `pattern.data()`; `x` is $N \times F$, `y` is $M \times F$.
///
/// Computed as $\langle x_i/\|x_i\|, y_j/\|y_j\|\rangle$ with the
/// overflow-safe [`super::row_norms`], so that it is finite and in
/// $[-1, 1]$ (up to rounding) for rows of any finite magnitude: rows of
/// $10^{30}$ in `f32`, whose squared norms overflow, or of $10^{-30}$, whose
/// squares underflow, get their true cosine.
pub fn cosine_at<T: Scalar>(
    pattern: CsMatView<T>,
    x: ArrayView2<T>,
    y: ArrayView2<T>,
) -> Array1<T> {
    let (nx, ny) = (super::row_norms(x), super::row_norms(y));
    // the unit rows of `y` once; those of `x` row by row (each row of the
    // pattern is one row of `x`), never all N at once
    let uy = unit_rows(y, &ny);
    let raw = RawCsr::new(&pattern);
    let idx = pattern.indices();
    let mut vals = rows::fresh_vec(pattern.nnz());
    raw.entry_blocks(&mut vals)
        .into_par_iter()
        .for_each(|(rows, out)| {
            let mut ui = Array1::zeros(x.ncols());
            let mut k = 0;
            for i in rows {
                let row_nnz = raw.range(i).len();
                if nx[i] > T::zero() {
                    unit_row_into(x.row(i), nx[i], &mut ui);
                    for &j in &idx[raw.range(i)] {
                        out[k] = if ny[j] > T::zero() {
                            ui.dot(&uy.row(j))
                        } else {
                            T::zero()
                        };
                        k += 1;
                    }
                } else {
                    out[k..k + row_nnz].fill(T::zero());
                    k += row_nnz;
                }
            }
        });
    Array1::from(vals)
}

/// Row `i` of [`unit_rows`] (for a row of norm `n > 0`) into `out`.
#[inline]
fn unit_row_into<T: Scalar>(x: ArrayView1<T>, n: T, out: &mut Array1<T>) {
    Zip::from(out).and(&x).for_each(|o, &v| *o = v / n);
}

/// VJP of [`cosine_at`] given its output `c`: $(\bar X, \bar Y)$ with
/// $\bar x_i = \sum_j \bar c_{ij}\,\frac{\hat y_j - c_{ij}\hat x_i}{\|x_i\|}$
/// ($\hat x = x / \|x\|$) and symmetrically for $\bar y_j$; 0 where a norm
/// is 0 (where [`cosine_at`] is constant). In unit vectors, so that it is
/// finite wherever the true gradient is. Row-parallel for $\bar X$,
/// column-parallel (through the transpose) for $\bar Y$; deterministic.
pub fn cosine_at_vjp<T: Scalar>(
    pattern: CsMatView<T>,
    x: ArrayView2<T>,
    y: ArrayView2<T>,
    c: ArrayView1<T>,
    grad: ArrayView1<T>,
) -> (Array2<T>, Array2<T>) {
    let mut gx = rows::zeros(x.nrows(), x.ncols());
    let gy = cosine_at_vjp_into((pattern, None), x, y, c, grad, &mut gx, false);
    (gx, gy)
}

/// [`cosine_at_vjp`] that adds $\bar X$ into `gx` (each row's gradient,
/// formed whole, added once: the bits of `gx += &cosine_at_vjp(..).0`)
/// and returns $\bar Y$; no $N \times F$ temporary, and the unit rows of
/// `x` are formed row by row, never all at once. `transposed`: the
/// [`transpose`] of `pattern` when the caller holds it already (only its
/// structure and `source` are read), else it is formed here.
///
/// # Panics
/// If `transposed` is not of `pattern`'s transposed shape and nnz.
pub fn cosine_at_vjp_acc<T: Scalar>(
    (pattern, transposed): (CsMatView<T>, Option<&Transposed<T>>),
    x: ArrayView2<T>,
    y: ArrayView2<T>,
    c: ArrayView1<T>,
    grad: ArrayView1<T>,
    gx: &mut Array2<T>,
) -> Array2<T> {
    if let Some(t) = transposed {
        assert_eq!(
            (t.matrix.shape(), t.source.len()),
            ((pattern.cols(), pattern.rows()), pattern.nnz()),
            "the transpose of the pattern"
        );
    }
    cosine_at_vjp_into((pattern, transposed), x, y, c, grad, gx, true)
}

fn cosine_at_vjp_into<T: Scalar>(
    (pattern, transposed): (CsMatView<T>, Option<&Transposed<T>>),
    x: ArrayView2<T>,
    y: ArrayView2<T>,
    c: ArrayView1<T>,
    grad: ArrayView1<T>,
    gx: &mut Array2<T>,
    accumulate: bool,
) -> Array2<T> {
    debug_assert_eq!(gx.dim(), x.dim());
    let (nx, ny) = (super::row_norms(x), super::row_norms(y));
    let uy = unit_rows(y, &ny);
    let raw = RawCsr::new(&pattern);
    let idx = pattern.indices();
    let f = x.ncols();
    gx.axis_chunks_iter_mut(Axis(0), ROW_BLOCK)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut block)| {
            let (mut ui, mut acc) = (Array1::zeros(f), Array1::zeros(f));
            for (k, mut row) in block.outer_iter_mut().enumerate() {
                let i = b * ROW_BLOCK + k;
                if nx[i] <= T::zero() {
                    if !accumulate {
                        row.fill(T::zero());
                    }
                    continue;
                }
                unit_row_into(x.row(i), nx[i], &mut ui);
                acc.fill(T::zero());
                for e in raw.range(i) {
                    let j = idx[e];
                    if ny[j] > T::zero() {
                        let (g, ce) = (grad[e], c[e]);
                        Zip::from(&mut acc)
                            .and(&uy.row(j))
                            .and(&ui)
                            .for_each(|o, &yv, &xv| *o += g * (yv - ce * xv));
                    }
                }
                let n = nx[i];
                if accumulate {
                    Zip::from(&mut row).and(&acc).for_each(|o, &v| *o += v / n);
                } else {
                    Zip::from(&mut row).and(&acc).for_each(|o, &v| *o = v / n);
                }
            }
        });
    let formed;
    let t = match transposed {
        Some(t) => t,
        None => {
            formed = transpose(pattern);
            &formed
        }
    };
    let tip = t.matrix.indptr();
    let tip = tip.raw_storage();
    let tidx = t.matrix.indices();
    let mut gy = rows::zeros(y.nrows(), y.ncols());
    gy.axis_chunks_iter_mut(Axis(0), ROW_BLOCK)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut block)| {
            let mut ui = Array1::zeros(f);
            for (k, mut row) in block.outer_iter_mut().enumerate() {
                let j = b * ROW_BLOCK + k;
                if ny[j] <= T::zero() {
                    continue;
                }
                for (&i, &e) in tidx[tip[j]..tip[j + 1]]
                    .iter()
                    .zip(&t.source[tip[j]..tip[j + 1]])
                {
                    if nx[i] > T::zero() {
                        unit_row_into(x.row(i), nx[i], &mut ui);
                        let (g, ce) = (grad[e], c[e]);
                        Zip::from(&mut row)
                            .and(&ui)
                            .and(&uy.row(j))
                            .for_each(|o, &xv, &yv| *o += g * (xv - ce * yv));
                    }
                }
                let n = ny[j];
                row.mapv_inplace(|v| v / n);
            }
        });
    gy
}

/// The weighted degrees $d_i = \sum_j a_{ij}$: the row sums of the stored
/// values (a self loop included), length $N$ (the rows of $A$). Each is
/// summed from $+0$ in storage order, so the bits are those of
/// [`spmm`]`(a, ones)`, without gathering a column of ones. In parallel over
/// fixed blocks of [`ROW_BLOCK`] rows.
///
/// ```
/// use graphpool::kernels::sparse::row_sums;
/// use sprs::CsMat;
/// // [[0, 2, 1], [2, 0, 0], [0, 0, 0]]
/// let a = CsMat::new((3, 3), vec![0, 2, 3, 3], vec![1, 2, 0], vec![2.0_f64, 1.0, 2.0]);
/// assert_eq!(row_sums(a.view()).to_vec(), vec![3.0, 2.0, 0.0]);
/// ```
pub fn row_sums<T: Scalar>(a: CsMatView<T>) -> Array1<T> {
    let raw = RawCsr::new(&a);
    Array1::from(map_rows(raw.rows, |r| {
        raw.row(r).1.iter().fold(T::zero(), |t, &v| t + v)
    }))
}

/// VJP of [`row_sums`] with respect to the stored values: $\bar a_{ij} =
/// \bar d_i$, aligned with `a.data()` (each entry gets its row's gradient).
/// Numerically the VJP of [`spmm`]`(a, ones)` without a column of ones to
/// gather (that one also turns a $-0$ gradient into $+0$).
///
/// ```
/// use graphpool::kernels::sparse::row_sums_vjp;
/// use ndarray::array;
/// use sprs::CsMat;
/// // [[0, 2, 1], [2, 0, 0], [0, 0, 0]]
/// let a = CsMat::new((3, 3), vec![0, 2, 3, 3], vec![1, 2, 0], vec![2.0_f64, 1.0, 2.0]);
/// let g = array![0.5, -1.0, 3.0];
/// assert_eq!(row_sums_vjp(a.view(), g.view()).to_vec(), vec![0.5, 0.5, -1.0]);
/// ```
pub fn row_sums_vjp<T: Scalar>(a: CsMatView<T>, grad: ArrayView1<T>) -> Array1<T> {
    debug_assert_eq!(grad.len(), a.rows());
    let mut out: Vec<T> = rows::fresh_vec(a.nnz());
    per_entry_blocks(RawCsr::new(&a), &mut out, |r, _, vals| vals.fill(grad[r]));
    Array1::from(out)
}

/// The graph Laplacian applied to features, $L X = (D - A) X$ with the
/// weighted degrees $D_{ii} = \sum_j a_{ij}$ (row sums, a self loop
/// included), computed row by row as $(LX)_i = \sum_j a_{ij}(x_i - x_j)$
/// (Spektral's `laplacian(a)` then `modal_dot`).
pub fn laplacian_spmm<T: Scalar>(a: CsMatView<T>, x: ArrayView2<T>) -> Array2<T> {
    debug_assert_eq!(a.cols(), x.nrows());
    let mut out = rows::zeros(a.rows(), x.ncols());
    out.axis_chunks_iter_mut(Axis(0), ROW_BLOCK)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut block)| {
            for (k, row) in block.outer_iter_mut().enumerate() {
                laplacian_row(&a, x, b * ROW_BLOCK + k, row);
            }
        });
    out
}

/// $v_i = \lVert (LX)_i \rVert_2$ for every row (LaPool's Laplacian
/// signal) without forming $LX$ ($N \times F$): each row of $LX$ is formed
/// in a scratch row exactly as [`laplacian_spmm`] forms it and its norm
/// taken as [`super::row_norms`] takes it, so the same bits as
/// `row_norms(laplacian_spmm(a, x))` in $O(F)$ memory per thread.
///
/// ```
/// use graphpool::kernels::row_norms;
/// use graphpool::kernels::sparse::{laplacian_row_norms, laplacian_spmm};
/// use ndarray::array;
/// use sprs::CsMat;
/// let a = CsMat::new((3, 3), vec![0, 1, 3, 4], vec![1, 0, 2, 1], vec![1.0_f64, 1.0, 2.0, 2.0]);
/// let x = array![[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]];
/// let v = laplacian_row_norms(a.view(), x.view());
/// assert_eq!(v, row_norms(laplacian_spmm(a.view(), x.view()).view()));
/// ```
pub fn laplacian_row_norms<T: Scalar>(a: CsMatView<T>, x: ArrayView2<T>) -> Array1<T> {
    debug_assert_eq!(a.cols(), x.nrows());
    let f = x.ncols();
    let mut out: Vec<T> = rows::fresh_vec(a.rows());
    out.par_chunks_mut(ROW_BLOCK)
        .enumerate()
        .for_each(|(b, block)| {
            let mut lx = Array1::zeros(f);
            for (k, v) in block.iter_mut().enumerate() {
                let i = b * ROW_BLOCK + k;
                lx.fill(T::zero());
                laplacian_row(&a, x, i, lx.view_mut());
                *v = super::row_norm(lx.view());
            }
        });
    Array1::from(out)
}

/// Row `i` of $LX$ added into `row` (zeroed): $\sum_j a_{ij}(x_i - x_j)$,
/// the stored entries in index order.
#[inline]
fn laplacian_row<T: Scalar>(
    a: &CsMatView<T>,
    x: ArrayView2<T>,
    i: usize,
    mut row: ndarray::ArrayViewMut1<T>,
) {
    let (ci, cv) = row_parts(a, i);
    for (&j, &w) in ci.iter().zip(cv) {
        Zip::from(&mut row)
            .and(&x.row(i))
            .and(&x.row(j))
            .for_each(|o, &xi, &xj| *o += w * (xi - xj));
    }
}

/// VJP of [`laplacian_spmm`] with respect to $X$: $\bar X = L^\top \bar O$,
/// i.e. $\bar x_i = \sum_j a_{ij} \bar o_i - \sum_r a_{ri} \bar o_r$.
pub fn laplacian_spmm_vjp_x<T: Scalar>(a: CsMatView<T>, grad: ArrayView2<T>) -> Array2<T> {
    let mut gx = spmm_vjp_x(a, grad);
    let degrees = row_sums(a);
    Zip::from(gx.rows_mut())
        .and(grad.rows())
        .and(&degrees)
        .par_for_each(|mut g, o, &d| {
            g.mapv_inplace(|v| -v);
            g.scaled_add(d, &o);
        });
    gx
}

/// VJP of [`laplacian_spmm`] with respect to the stored values of $A$:
/// $\bar a_{ij} = \langle \bar o_i, x_i - x_j\rangle$, aligned with `a.data()`.
pub fn laplacian_spmm_vjp_values<T: Scalar>(
    a: CsMatView<T>,
    x: ArrayView2<T>,
    grad: ArrayView2<T>,
) -> Array1<T> {
    Array1::from(map_entries(a, |i, _, j| {
        grad.row(i).dot(&x.row(i)) - grad.row(i).dot(&x.row(j))
    }))
}

/// The undirected view of a weighted adjacency used as path lengths, as
/// `scipy.sparse.csgraph.shortest_path(dense(a), directed=False)` sees it:
/// nodes $u \ne v$ are joined when $a_{uv}$ or $a_{vu}$ is stored and
/// non-zero, with length the smallest such weight. Zero weights are
/// non-edges (a dense zero), self loops never shorten a path.
struct UndirectedLengths {
    indptr: Vec<usize>,
    nbr: Vec<usize>,
    len: Vec<f64>,
    /// The stored entries of `a` that attain the length (one or two; a
    /// second slot of `usize::MAX` when only one does), for the VJP; empty
    /// when not asked for.
    src: Vec<[usize; 2]>,
}

/// The [`UndirectedLengths`] of `a`, with the sources of each length if
/// `with_sources` (the VJP's need; the lengths alone take half the memory).
fn undirected_lengths<T: Scalar>(
    a: CsMatView<T>,
    with_sources: bool,
) -> Result<UndirectedLengths, PoolError> {
    let n = a.rows();
    let raw = RawCsr::new(&a);
    for r in 0..n {
        for e in raw.range(r) {
            let w = a.data()[e];
            if w < T::zero() {
                return Err(PoolError::NegativePathLength {
                    row: r,
                    col: a.indices()[e],
                    value: w.to_string(),
                });
            }
        }
    }
    let t = transpose(a);
    // the undirected neighbours of row u, merged from its stored row and
    // column, handed to `emit(v, length, sources)` in ascending v
    let merge_row = |u: usize, emit: &mut dyn FnMut(usize, f64, [usize; 2])| {
        let (oi, _) = row_parts(&a, u);
        let out_base = raw.range(u).start;
        let tr = t.matrix.indptr();
        let tr = tr.raw_storage();
        let (lo, hi) = (tr[u], tr[u + 1]);
        let ii = &t.matrix.indices()[lo..hi];
        let (mut p, mut q) = (0, 0);
        let val = |e: usize| a.data()[e].to_f64().unwrap_or(f64::NAN);
        while p < oi.len() || q < ii.len() {
            let take_out = q >= ii.len() || (p < oi.len() && oi[p] <= ii[q]);
            let take_in = p >= oi.len() || (q < ii.len() && ii[q] <= oi[p]);
            let v = if take_out { oi[p] } else { ii[q] };
            // the (at most two) stored entries joining u and v
            let mut cands = [usize::MAX; 2];
            if take_out {
                cands[0] = out_base + p;
                p += 1;
            }
            if take_in {
                cands[1] = t.source[lo + q];
                q += 1;
            }
            if v == u {
                continue;
            }
            let usable = |e: usize| e != usize::MAX && val(e) > 0.0;
            let best = cands
                .iter()
                .filter(|&&e| usable(e))
                .map(|&e| val(e))
                .fold(f64::INFINITY, f64::min);
            if best == f64::INFINITY {
                continue;
            }
            let mut src = [usize::MAX; 2];
            let mut k = 0;
            for &e in &cands {
                if usable(e) && val(e) == best {
                    src[k] = e;
                    k += 1;
                }
            }
            emit(v, best, src);
        }
    };
    // two passes (count, then fill the flat arrays in place): no per-row
    // vectors beside the result
    let counts: Vec<usize> = (0..n)
        .into_par_iter()
        .map(|u| {
            let mut c = 0;
            merge_row(u, &mut |_, _, _| c += 1);
            c
        })
        .collect();
    let mut indptr = Vec::with_capacity(n + 1);
    indptr.push(0);
    for c in counts {
        indptr.push(indptr[indptr.len() - 1] + c);
    }
    let m = indptr[n];
    let mut g = UndirectedLengths {
        nbr: vec![0; m],
        len: vec![0.0; m],
        src: vec![[usize::MAX; 2]; if with_sources { m } else { 0 }],
        indptr,
    };
    {
        // disjoint slices of the flat arrays, one per block of rows
        let mut pieces = Vec::with_capacity(n.div_ceil(super::ROW_BLOCK));
        let (mut nbr, mut len, mut src) = (&mut g.nbr[..], &mut g.len[..], &mut g.src[..]);
        for r0 in (0..n).step_by(super::ROW_BLOCK) {
            let r1 = (r0 + super::ROW_BLOCK).min(n);
            let k = g.indptr[r1] - g.indptr[r0];
            let (a1, b1) = std::mem::take(&mut nbr).split_at_mut(k);
            let (a2, b2) = std::mem::take(&mut len).split_at_mut(k);
            let (a3, b3) = std::mem::take(&mut src).split_at_mut(if with_sources { k } else { 0 });
            pieces.push((r0..r1, a1, a2, a3));
            (nbr, len, src) = (b1, b2, b3);
        }
        pieces.into_par_iter().for_each(|(rows, nb, ln, sr)| {
            let mut k = 0;
            for u in rows {
                merge_row(u, &mut |v, l, s| {
                    nb[k] = v;
                    ln[k] = l;
                    if let Some(slot) = sr.get_mut(k) {
                        *slot = s;
                    }
                    k += 1;
                });
            }
        });
    }
    Ok(g)
}

/// Dijkstra from `source` over the nodes `range` (its graph). Returns the
/// distances (local to `range`), the settle order (local ids) and the
/// parent (local node, slot into `g.nbr`) of every settled node but the
/// source (`usize::MAX` slots for the source and unreached nodes).
fn dijkstra(
    g: &UndirectedLengths,
    range: std::ops::Range<usize>,
    source: usize,
    want_tree: bool,
) -> (Vec<f64>, Vec<usize>, Vec<(usize, usize)>) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let m = range.len();
    let mut dist = vec![f64::INFINITY; m];
    let mut parent = if want_tree {
        vec![(usize::MAX, usize::MAX); m]
    } else {
        Vec::new()
    };
    let mut order = Vec::new();
    let mut done = vec![false; m];
    let mut heap = BinaryHeap::new();
    let s = source - range.start;
    dist[s] = 0.0;
    heap.push(Reverse((ordered_float::OrderedFloat(0.0f64), s)));
    while let Some(Reverse((ordered_float::OrderedFloat(d), u))) = heap.pop() {
        if done[u] {
            continue;
        }
        done[u] = true;
        if want_tree {
            order.push(u);
        }
        let gu = u + range.start;
        for slot in g.indptr[gu]..g.indptr[gu + 1] {
            let v = g.nbr[slot] - range.start;
            let nd = d + g.len[slot];
            if nd < dist[v] {
                dist[v] = nd;
                if want_tree {
                    parent[v] = (u, slot);
                }
                heap.push(Reverse((ordered_float::OrderedFloat(nd), v)));
            }
        }
    }
    (dist, order, parent)
}

/// Undirected shortest-path lengths from each node of `sources` to every
/// node of its own graph, edge weights as lengths (the convention of
/// [`undirected_path_lengths`]'s undirected view: the smaller of $a_{uv}$,
/// $a_{vu}$; zero weights are no edge). Result `[s][v - start_g]`,
/// `f64::INFINITY` where unreachable. Dijkstra per source, in parallel over
/// sources; $O(\sum_s E_g \log n_g)$ time, no $N \times N$ matrix.
///
/// # Errors
/// [`PoolError::NegativePathLength`] for a negative edge weight.
pub fn undirected_path_lengths<T: Scalar>(
    a: CsMatView<T>,
    segments: &Segments,
    sources: &[usize],
) -> Result<Vec<Vec<f64>>, PoolError> {
    let g = undirected_lengths(a, false)?;
    Ok(sources
        .par_iter()
        .map(|&s| dijkstra(&g, segments.range(segments.graph_of(s)), s, false).0)
        .collect())
}

/// VJP of [`undirected_path_lengths`] with respect to the stored values of
/// $A$, given $\bar d$ in the same layout: the derivative of a path length
/// with respect to an edge weight is 1 on the shortest path (found by
/// Dijkstra; among equally short paths the first settled) and 0 elsewhere;
/// where $a_{uv} = a_{vu}$ both attain the undirected length and the
/// gradient is split equally between them (the symmetric derivative, as
/// central differences see it). Unreachable nodes contribute nothing.
/// Parallel over graphs, sequential within a graph: deterministic.
///
/// # Errors
/// [`PoolError::NegativePathLength`] for a negative edge weight.
pub fn undirected_path_lengths_vjp<T: Scalar>(
    a: CsMatView<T>,
    segments: &Segments,
    sources: &[usize],
    grad: &[Vec<f64>],
) -> Result<Array1<T>, PoolError> {
    let g = undirected_lengths(a, true)?;
    let raw = RawCsr::new(&a);
    // sources of each graph (sources need not be sorted)
    let mut by_graph: Vec<Vec<usize>> = vec![Vec::new(); segments.num_graphs()];
    for (k, &s) in sources.iter().enumerate() {
        by_graph[segments.graph_of(s)].push(k);
    }
    let parts: Vec<Vec<f64>> = by_graph
        .par_iter()
        .enumerate()
        .map(|(gi, ks)| {
            let range = segments.range(gi);
            let edges = raw.rows_range(range.clone());
            let (elo, ehi) = (edges.start, edges.end);
            let mut out = vec![0.0f64; ehi - elo];
            let mut acc = vec![0.0f64; range.len()];
            for &k in ks {
                let (dist, order, parent) = dijkstra(&g, range.clone(), sources[k], true);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = if dist[v].is_finite() { grad[k][v] } else { 0.0 };
                }
                for &v in order.iter().rev() {
                    let (p, slot) = parent[v];
                    if slot == usize::MAX {
                        continue;
                    }
                    let gv = acc[v];
                    acc[p] += gv;
                    let [e1, e2] = g.src[slot];
                    if e2 == usize::MAX {
                        out[e1 - elo] += gv;
                    } else {
                        out[e1 - elo] += 0.5 * gv;
                        out[e2 - elo] += 0.5 * gv;
                    }
                }
            }
            out
        })
        .collect();
    let flat: Vec<T> = parts.into_iter().flatten().map(T::c).collect();
    Ok(Array1::from(flat))
}

/// Sampled dense–dense product (SDDMM): for every stored entry $(i, j)$ of
/// $A$, the inner product $\langle U_i, V_j \rangle$, aligned with `a.data()`
/// ($A$'s values are not used, only its structure).
///
/// These are the entries of $U V^\top$ on $A$'s sparsity pattern, e.g.
/// $\langle S_i, S_j\rangle$ for the sparse form of $\|A - S S^\top\|_F$
/// without forming the $N \times N$ product. Row-parallel; each value is one
/// dot product, so the result does not depend on the thread count.
///
/// ```
/// use graphpool::kernels::sparse::sddmm;
/// use ndarray::array;
/// use sprs::TriMat;
/// let mut t = TriMat::new((2, 2));
/// t.add_triplet(0, 1, 5.0);
/// t.add_triplet(1, 1, 5.0);
/// let a: sprs::CsMat<f64> = t.to_csr();
/// let u = array![[1.0, 2.0], [3.0, 4.0]];
/// assert_eq!(sddmm(a.view(), u.view(), u.view()).to_vec(), vec![11.0, 25.0]);
/// ```
pub fn sddmm<T: Scalar>(a: CsMatView<T>, u: ArrayView2<T>, v: ArrayView2<T>) -> Array1<T> {
    debug_assert_eq!(a.rows(), u.nrows());
    debug_assert_eq!(a.cols(), v.nrows());
    debug_assert_eq!(u.ncols(), v.ncols());
    let raw = RawCsr::new(&a);
    let f = u.ncols();
    let (us, vs) = (rows::row_major(&u), rows::row_major(&v));
    let mut out: Vec<T> = rows::fresh_vec(a.nnz());
    per_entry_blocks(raw, &mut out, |r, cols, vals| {
        let ur = &us[r * f..(r + 1) * f];
        let e0 = raw.range(r).start;
        for (i, (o, &c)) in vals.iter_mut().zip(cols).enumerate() {
            raw.prefetch_column_row(e0 + i, &vs, f);
            *o = rows::dot(ur, &vs[c * f..(c + 1) * f]);
        }
    });
    Array1::from(out)
}

/// Fills `out` (one value per stored entry of `raw`, aligned with its
/// data) by `f(r, columns of row r, out's values of row r)`, in parallel
/// over fixed blocks of [`ROW_BLOCK`] rows.
fn per_entry_blocks<T: Scalar>(
    raw: RawCsr<'_, T>,
    out: &mut [T],
    f: impl Fn(usize, &[usize], &mut [T]) + Sync,
) {
    let mut pieces = Vec::with_capacity(raw.rows.div_ceil(ROW_BLOCK));
    let mut rest = out;
    for b in 0..raw.rows.div_ceil(ROW_BLOCK) {
        let r0 = b * ROW_BLOCK;
        let r1 = (r0 + ROW_BLOCK).min(raw.rows);
        let len = raw.range(r1 - 1).end - raw.range(r0).start;
        let (head, tail) = rest.split_at_mut(len);
        pieces.push((r0..r1, head));
        rest = tail;
    }
    pieces.into_par_iter().for_each(|(rs, block)| {
        let first = raw.range(rs.start).start;
        for r in rs {
            let e = raw.range(r);
            f(
                r,
                &raw.indices[e.clone()],
                &mut block[e.start - first..e.end - first],
            );
        }
    });
}

/// VJP of [`sddmm`]: given $\bar p_e$ for every stored entry (aligned with
/// `a.data()`), returns $(\bar U, \bar V)$ with $\bar U = G V$ and
/// $\bar V = G^\top U$, where $G$ has $A$'s structure and values $\bar p$.
pub fn sddmm_vjp<T: Scalar>(
    a: CsMatView<T>,
    u: ArrayView2<T>,
    v: ArrayView2<T>,
    grad: ArrayView1<T>,
) -> (Array2<T>, Array2<T>) {
    debug_assert_eq!(grad.len(), a.nnz());
    let g = rows::row_major_1d(&grad);
    let m = Stored::with_values(RawCsr::new(&a), &g);
    let gu = product(m, v);
    let gv = product_t(m, a.cols(), u);
    (gu, gv)
}

/// Per-graph weighted total variation of a per-node matrix $S$ over the
/// stored entries of $A$:
/// $$\mathrm{TV}_g = \sum_{(i,j) \in E_g} a_{ij} \lVert S_i - S_j \rVert_1,$$
/// summed over every stored entry (both directions of an undirected edge,
/// a self loop once, which contributes 0). Length $B$. Never forms the
/// $N \times N$ matrix of pairwise distances. Each graph's rows are summed
/// in node order, a graph larger than [`CHUNK`](super::CHUNK) in its fixed
/// [`segment_work`](super::segment_work) pieces folded in node order
/// (deterministic, batch = graph alone).
///
/// ```
/// use graphpool::kernels::sparse::segment_edge_l1;
/// use graphpool::Segments;
/// use ndarray::array;
/// use sprs::CsMat;
/// // one graph, the edge 0 - 1 stored both ways with weight 2
/// let a = CsMat::new((2, 2), vec![0, 1, 2], vec![1, 0], vec![2.0_f64, 2.0]);
/// let s = array![[1.0, 0.0], [0.25, 0.75]];
/// // 2 * (|1 - 0.25| + |0 - 0.75|), twice
/// assert_eq!(segment_edge_l1(a.view(), s.view(), &Segments::single(2)).to_vec(), vec![6.0]);
/// ```
pub fn segment_edge_l1<T: Scalar>(
    a: CsMatView<T>,
    s: ArrayView2<T>,
    segments: &crate::batch::Segments,
) -> Array1<T> {
    edge_l1_pass(a, s, segments, None)
}

/// [`spmm`]`(a, s)` and [`segment_edge_l1`]`(a, s, segments)` in one pass
/// over the stored entries of $A$: each row of $S$ gathered for an entry
/// $(i, j)$ feeds both $\lVert S_i - S_j\rVert_1$ and row $i$ of $A S$.
/// The same bits as the two calls (every row of $A S$ is its stored entries
/// added in index order to zeros), for about the cost of one: the gather of
/// random rows of $S$ is what bounds both on a large graph.
///
/// ```
/// use graphpool::kernels::sparse::{segment_edge_l1, spmm, spmm_and_edge_l1};
/// use graphpool::Segments;
/// use ndarray::array;
/// use sprs::CsMat;
/// let a = CsMat::new((3, 3), vec![0, 1, 2, 2], vec![1, 0], vec![2.0_f64, 0.5]);
/// let s = array![[1.0, 0.0], [0.25, 0.75], [0.5, 0.5]];
/// let seg = Segments::from_sizes(&[2, 1]);
/// let (a_s, tv) = spmm_and_edge_l1(a.view(), s.view(), &seg);
/// assert_eq!(a_s, spmm(a.view(), s.view()));
/// assert_eq!(tv, segment_edge_l1(a.view(), s.view(), &seg));
/// assert_eq!(tv.to_vec(), vec![3.75, 0.0]);
/// ```
pub fn spmm_and_edge_l1<T: Scalar>(
    a: CsMatView<T>,
    s: ArrayView2<T>,
    segments: &crate::batch::Segments,
) -> (Array2<T>, Array1<T>) {
    debug_assert_eq!(a.cols(), s.nrows());
    let mut a_s = rows::fresh_matrix(a.rows(), s.ncols());
    let tv = edge_l1_pass(
        a,
        s,
        segments,
        Some(a_s.as_slice_mut().expect("standard layout")),
    );
    (a_s, tv)
}

/// The pass of [`segment_edge_l1`], also writing $A S$ into `a_s` ($N
/// \times K$, row-major, overwritten) when given: over the fixed
/// [`segment_work`](super::segment_work) items in parallel, each item
/// writing its own rows of `a_s`; a graph's pieces folded in node order.
fn edge_l1_pass<T: Scalar>(
    a: CsMatView<T>,
    s: ArrayView2<T>,
    segments: &crate::batch::Segments,
    a_s: Option<&mut [T]>,
) -> Array1<T> {
    use super::SegmentWork;
    let raw = RawCsr::new(&a);
    let k = s.ncols();
    let ss = rows::row_major(&s);
    let offsets = segments.offsets();
    // each item's node range and, if A S is asked for, its rows of it
    let mut tasks = Vec::new();
    let mut rest = a_s;
    for item in super::segment_work(segments) {
        let nodes = match &item {
            SegmentWork::Graphs(gr) => offsets[gr.start]..offsets[gr.end],
            SegmentWork::Piece { nodes, .. } => nodes.clone(),
        };
        let dst = rest.take().map(|r| {
            let (head, tail) = r.split_at_mut(nodes.len() * k);
            rest = Some(tail);
            head
        });
        tasks.push((item, nodes, dst));
    }
    // the total variation of `rows`, their rows of A S into `dst` (rows
    // from `first` on)
    let rows_tv = |rows: std::ops::Range<usize>, first: usize, dst: &mut Option<&mut [T]>| {
        let mut acc = T::zero();
        for r in rows {
            let si = &ss[r * k..(r + 1) * k];
            let mut out = dst
                .as_deref_mut()
                .map(|d| &mut d[(r - first) * k..(r - first + 1) * k]);
            for e in raw.range(r) {
                raw.prefetch_column_row(e, &ss, k);
                let c = raw.indices[e];
                let sc = &ss[c * k..(c + 1) * k];
                acc += raw.data[e] * rows::l1_distance(si, sc);
                if let Some(o) = out.as_deref_mut() {
                    rows::axpy(o, raw.data[e], sc);
                }
            }
        }
        acc
    };
    let partials: Vec<Vec<(usize, T)>> = tasks
        .into_par_iter()
        .map(|(item, nodes, mut dst)| {
            // written before it is read (see `rows::zeros`)
            if let Some(d) = dst.as_deref_mut() {
                d.fill(T::zero());
            }
            match item {
                SegmentWork::Graphs(gr) => gr
                    .map(|g| {
                        (
                            g,
                            rows_tv(offsets[g]..offsets[g + 1], nodes.start, &mut dst),
                        )
                    })
                    .collect(),
                SegmentWork::Piece { graph, nodes } => {
                    vec![(graph, rows_tv(nodes.clone(), nodes.start, &mut dst))]
                }
            }
        })
        .collect();
    let mut tv: Vec<Option<T>> = vec![None; segments.num_graphs()];
    for (g, p) in partials.into_iter().flatten() {
        tv[g] = Some(tv[g].map_or(p, |t| t + p));
    }
    tv.into_iter().map(|t| t.unwrap_or_else(T::zero)).collect()
}

/// VJP of [`segment_edge_l1`] given the gradient of each graph's total
/// variation: $(\bar S, \bar a)$ with
/// $\bar a_{ij} = \bar t_g \lVert S_i - S_j\rVert_1$ and
/// $\bar S_i = \bar t_g \big(\sum_{j:(i,j)} a_{ij}\,\mathrm{sign}(S_i - S_j) + \sum_{j:(j,i)} a_{ji}\,\mathrm{sign}(S_i - S_j)\big)$,
/// with $\mathrm{sign}(0) = 0$ (TensorFlow's and PyTorch's gradient of $|x|$
/// at 0). Incoming edges are read through [`transpose`], so every row is
/// computed by one task (deterministic). When $A$ is symmetric
/// ([`symmetric_graphs`], checked here) the incoming entries of row $i$ are
/// its outgoing ones, in the same order. Each row sums its outgoing terms and
/// its incoming terms separately and then adds the two sums, so a symmetric
/// row is read once and its sum doubled: no transpose, the same bits.
pub fn segment_edge_l1_vjp<T: Scalar>(
    a: CsMatView<T>,
    s: ArrayView2<T>,
    segments: &crate::batch::Segments,
    grad: ArrayView1<T>,
) -> (Array2<T>, Array1<T>) {
    let symmetric = symmetric_graphs(a, segments).iter().all(|&sym| sym);
    let (gs, ga) = segment_edge_l1_vjp_opt(a, s, segments, grad, symmetric, true);
    (gs, ga.unwrap_or_else(|| Array1::zeros(a.nnz())))
}

/// [`segment_edge_l1_vjp`] given whether every graph of $A$ is symmetric
/// (from the batch), with $\bar a$ only if `edge_weights`; $\bar S$ is the
/// same either way, and the same whatever `symmetric` says of a symmetric
/// $A$.
pub(crate) fn segment_edge_l1_vjp_opt<T: Scalar>(
    a: CsMatView<T>,
    s: ArrayView2<T>,
    segments: &crate::batch::Segments,
    grad: ArrayView1<T>,
    symmetric: bool,
    edge_weights: bool,
) -> (Array2<T>, Option<Array1<T>>) {
    let sign = |v: T| {
        if v > T::zero() {
            T::one()
        } else if v < T::zero() {
            -T::one()
        } else {
            T::zero()
        }
    };
    let raw = RawCsr::new(&a);
    let k = s.ncols();
    let ss = rows::row_major(&s);
    let row_grad = super::map_nodes(segments, |g, _| grad[g]);
    let g_edges = edge_weights.then(|| {
        let mut g_edges: Vec<T> = rows::fresh_vec(a.nnz());
        per_entry_blocks(raw, &mut g_edges, |r, cols, out| {
            let si = &ss[r * k..(r + 1) * k];
            for (o, &c) in out.iter_mut().zip(cols) {
                *o = row_grad[r] * rows::l1_distance(si, &ss[c * k..(c + 1) * k]);
            }
        });
        Array1::from(g_edges)
    });
    // incoming entries (c, r) of row r: its own outgoing ones when A is
    // symmetric, else read through the transpose
    let t = (!symmetric).then(|| transpose(a));
    let tview = t.as_ref().map(|t| t.matrix.view());
    let traw = tview.as_ref().map(RawCsr::new);
    let w = a.data();
    // Row i sums its outgoing terms and its incoming terms separately, then
    // adds the two sums: for a symmetric A the incoming sum is the outgoing
    // one bit for bit (the same terms in the same order), so the row is read
    // once and the sum doubled, with the same bits as the general path.
    let add = |sum: &mut [T], si: &[T], c: usize, wc: T| {
        let sj = &ss[c * k..(c + 1) * k];
        for ((o, &p), &q) in sum.iter_mut().zip(si).zip(sj) {
            *o += wc * sign(p - q);
        }
    };
    let gs = rows::build_rows(s.nrows(), k, |r, out| {
        let si = &ss[r * k..(r + 1) * k];
        for e in raw.range(r) {
            raw.prefetch_column_row(e, &ss, k);
            add(out, si, raw.indices[e], w[e]);
        }
        match (&t, &traw) {
            (Some(t), Some(traw)) => {
                let mut scratch = rows::ScratchRow::new();
                let incoming = scratch.zeros(k);
                for te in traw.range(r) {
                    traw.prefetch_column_row(te, &ss, k);
                    add(incoming, si, traw.indices[te], w[t.source[te]]);
                }
                for (o, &v) in out.iter_mut().zip(incoming.iter()) {
                    *o += v;
                }
            }
            _ => {
                for o in out.iter_mut() {
                    *o += *o;
                }
            }
        }
        for o in out.iter_mut() {
            *o *= row_grad[r];
        }
    });
    (gs, g_edges)
}

/// The number of stored entries of $A$ in each graph's rows (Spektral's
/// `len(a.values)` per graph), length $B$.
pub fn segment_nnz(a: CsMatView<'_, impl Scalar>, segments: &crate::batch::Segments) -> Vec<usize> {
    let ip = a.indptr();
    let ip = ip.raw_storage();
    segments.ranges().map(|r| ip[r.end] - ip[r.start]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::s;

    /// The filter's products written over buffers that hold stale values
    /// (NaN, or the last product's) have the bits of the products into
    /// fresh memory: each block of rows is zeroed before its sums. On a
    /// ring with chords across three blocks of rows, widths 64, 16 and 0.
    #[test]
    fn products_written_over_stale_buffers_have_the_bits_of_fresh_ones() {
        let n = 2 * ROW_BLOCK + 37;
        let mut t = sprs::TriMat::new((n, n));
        for i in 0..n {
            for step in [1, 5, 211] {
                let j = (i + step) % n;
                let w = 0.5 + ((i * 3 + step) % 7) as f32 / 8.0;
                t.add_triplet(i, j, w);
                t.add_triplet(j, i, w);
            }
        }
        let a: CsMat<f32> = t.to_csr();
        let view = a.view();
        let u = gcn_deg_inv_sqrt(view.view());
        let filter =
            GcnOperator::new(&view, u.as_slice().expect("contiguous")).expect("square CSR");
        let x = |w: usize, seed: usize| {
            Array2::from_shape_fn((n, w), |(i, j)| {
                ((i * 13 + j * 7 + seed) % 17) as f32 / 5.0 - 1.5
            })
        };
        let (x64, x16, x0) = (x(64, 0), x(16, 3), x(0, 0));
        let xs = [x64.view(), x16.view(), x0.view()];
        let fresh = filter.spmm_many(&xs);
        let stale = vec![
            Array2::from_elem((n, 64), f32::NAN),
            fresh[0].slice(s![.., ..16]).to_owned(),
            Array2::zeros((n, 0)),
        ];
        let same_bits = |outs: &[Array2<f32>]| {
            outs.len() == fresh.len()
                && outs.iter().zip(&fresh).all(|(o, f)| {
                    o.dim() == f.dim() && o.iter().zip(f).all(|(p, q)| p.to_bits() == q.to_bits())
                })
        };
        let over = filter.spmm_many_over(&xs, stale);
        assert!(same_bits(&over));
        // and again over the products just formed
        let again = filter.spmm_many_over(&xs, over);
        assert!(same_bits(&again));
    }
}
