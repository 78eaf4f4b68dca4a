//! Shared numeric kernels: every layer is composed of these, and each comes
//! with its vector-Jacobian product (`*_vjp`).
//!
//! Kernels are building blocks with documented preconditions (matching
//! shapes, a CSR matrix, sorted index lists): they do not validate their
//! arguments, the layers and [`crate::DisjointBatch`] do. Call them with the
//! shapes their documentation states.
//!
//! # Determinism
//! Parallel work is cut into pieces that depend only on the data (a graph,
//! then fixed chunks of [`CHUNK`] nodes counted from the graph's first node,
//! or fixed blocks of rows; [`segment_work`] groups runs of small whole
//! graphs into one item), never on the number of threads; partial results
//! are combined in a fixed order. Every kernel therefore returns the same bits
//! whatever `RAYON_NUM_THREADS` is, and a graph gives the same bits inside a
//! batch as alone.

/// Compiles the function it wraps for every SIMD level the CPU may have
/// and picks one at run time ([`multiversion`]): AVX-512 (which
/// multiversion's `"simd"` preset leaves out), AVX2 with FMA, SSE4.2 and
/// SSE2 on x86, NEON on AArch64. The one list of levels for every hot loop;
/// the loops it wraps do the same operations in the same order at every
/// width, so the level changes the speed, not the bits.
macro_rules! simd_levels {
    ($(#[$attr:meta])* $vis:vis fn $($rest:tt)*) => {
        $(#[$attr])*
        #[multiversion::multiversion(targets(
            "x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+popcnt",
            "x86_64+avx2+fma+popcnt",
            "x86_64+sse4.2",
            "x86+avx2+fma",
            "x86+sse4.2",
            "x86+sse2",
            "aarch64+neon",
        ))]
        $vis fn $($rest)*
    };
}
pub(crate) use simd_levels;

pub mod gather;
pub(crate) mod recycle;
pub mod rows;
pub mod segment;
pub(crate) mod softmax_simd;
pub mod sort;
pub mod sparse;

use std::ops::Range;

use rayon::prelude::*;

use crate::batch::Segments;

/// Nodes per work item of a chunked segment reduction.
pub const CHUNK: usize = 4096;

/// Rows per work item of a row-parallel kernel.
pub const ROW_BLOCK: usize = 1024;

/// The Euclidean norm of every row of `x`, $\lVert x_r\rVert_2$, without
/// spurious overflow or underflow: where the plain $\sqrt{\sum x^2}$ would
/// overflow (rows of magnitude $\gtrsim 10^{19}$ in `f32`, $10^{154}$ in
/// `f64`) or lose the squares to underflow, the row is first divided by its
/// largest magnitude $m$ and the norm is $m\sqrt{\sum (x/m)^2}$ (as `hypot`
/// does). Elsewhere the result is exactly the plain formula's. The norm of
/// a row of $10^{30}$s is $\approx 10^{30}$ in `f32`, not infinity; it is
/// infinite only when the true norm exceeds the type's range.
pub fn row_norms<T: crate::scalar::Scalar>(x: ndarray::ArrayView2<'_, T>) -> ndarray::Array1<T> {
    let norms: Vec<T> = (0..x.nrows())
        .into_par_iter()
        .map(|r| row_norm(x.row(r)))
        .collect();
    ndarray::Array1::from(norms)
}

/// The norm of one row, as [`row_norms`] takes it.
pub(crate) fn row_norm<T: crate::scalar::Scalar>(row: ndarray::ArrayView1<'_, T>) -> T {
    // below this sum of squares, squares of the entries may have lost bits to underflow
    let tiny = T::min_positive_value() / T::epsilon();
    let s = row.dot(&row);
    if s.is_finite() && s >= tiny {
        return s.sqrt();
    }
    let m = row.iter().fold(T::zero(), |m, &v| m.max(v.abs()));
    if m == T::zero() || !m.is_finite() {
        return m;
    }
    let scaled = row.iter().fold(T::zero(), |acc, &v| {
        let q = v / m;
        acc + q * q
    });
    m * scaled.sqrt()
}

/// VJP of [`row_norms`]: $\bar x_r = \bar n_r \, x_r / \lVert x_r\rVert$
/// (0 for a zero row, where the norm has no gradient; 0 is the minimal-norm
/// subgradient). Computed as $\bar n_r (x_r / \lVert x_r\rVert)$ so that it
/// stays finite wherever the norm does.
pub fn row_norms_vjp<T: crate::scalar::Scalar>(
    x: ndarray::ArrayView2<'_, T>,
    norms: ndarray::ArrayView1<'_, T>,
    grad: ndarray::ArrayView1<'_, T>,
) -> ndarray::Array2<T> {
    let mut out = rows::zeros(x.nrows(), x.ncols());
    out.axis_iter_mut(ndarray::Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(r, mut row)| {
            let n = norms[r];
            if n > T::zero() {
                let g = grad[r];
                ndarray::Zip::from(&mut row)
                    .and(&x.row(r))
                    .for_each(|o, &v| *o = g * (v / n));
            }
        });
    out
}

/// Reduces the node range `nodes` by mapping fixed chunks of [`CHUNK`] nodes
/// (in parallel when there are several) and folding the partial results in
/// chunk order.
///
/// `map` must accept an empty range (it yields the identity) and `fold` must
/// combine two partials: the result is independent of the thread count.
pub fn reduce_chunked<R, M, F>(nodes: Range<usize>, map: M, fold: F) -> R
where
    R: Send,
    M: Fn(Range<usize>) -> R + Sync,
    F: Fn(R, R) -> R,
{
    if nodes.len() <= CHUNK {
        return map(nodes);
    }
    let starts: Vec<usize> = nodes.clone().step_by(CHUNK).collect();
    let partials: Vec<R> = starts
        .into_par_iter()
        .map(|s| map(s..(s + CHUNK).min(nodes.end)))
        .collect();
    let mut it = partials.into_iter();
    // `nodes` is longer than CHUNK, so there are at least two partials
    let first = it.next().expect("at least one chunk");
    it.fold(first, fold)
}

/// [`reduce_chunked`] over the rows of `out` that also hands each chunk its
/// rows of `out` to write: `map(nodes, rows)` for the fixed chunks of
/// [`CHUNK`] rows (in parallel when there are several), partials folded in
/// chunk order. For a backward pass that forms a gradient piece by piece
/// (adding its share of $\bar X$ into `out`) while reducing the parameter
/// gradients: the same chunks, hence the same bits, as [`reduce_chunked`].
pub fn reduce_chunked_rows<T, R, M, F>(out: &mut ndarray::Array2<T>, map: M, fold: F) -> R
where
    T: Send + Sync,
    R: Send,
    M: Fn(Range<usize>, ndarray::ArrayViewMut2<'_, T>) -> R + Sync,
    F: Fn(R, R) -> R,
{
    let n = out.nrows();
    if n <= CHUNK {
        return map(0..n, out.view_mut());
    }
    let partials: Vec<R> = out
        .axis_chunks_iter_mut(ndarray::Axis(0), CHUNK)
        .into_par_iter()
        .enumerate()
        .map(|(i, rows)| {
            let s = i * CHUNK;
            map(s..s + rows.nrows(), rows)
        })
        .collect();
    let mut it = partials.into_iter();
    // more than CHUNK rows, so at least two partials
    let first = it.next().expect("at least one chunk");
    it.fold(first, fold)
}

/// `f(r)` for every row `r` in `0..n`, in parallel over fixed blocks of
/// [`ROW_BLOCK`] rows, written in place into a fresh vector: for a kernel
/// that makes one value per row (a row sum, a degree), each computed on its
/// own, so the result does not depend on the thread count.
///
/// ```
/// use graphpool::kernels::map_rows;
/// assert_eq!(map_rows(3000, |r| r * 2)[2999], 5998);
/// ```
pub fn map_rows<R, F>(n: usize, f: F) -> Vec<R>
where
    R: Copy + Default + Send + Sync,
    F: Fn(usize) -> R + Sync,
{
    // not zeroed first: every entry is written below
    let mut out = rows::unwritten_vec::<R>(n);
    out.par_chunks_mut(ROW_BLOCK)
        .enumerate()
        .for_each(|(b, block)| {
            for (i, o) in block.iter_mut().enumerate() {
                o.write(f(b * ROW_BLOCK + i));
            }
        });
    // SAFETY: the blocks cover `out`, and every entry of each was written
    unsafe { rows::assume_written(out) }
}

/// Calls `f(graph, node)` for every node, in parallel over fixed blocks of
/// [`ROW_BLOCK`] nodes; `f` returns the value (a plain `Copy` value: a
/// float, a flag) stored for that node, written in place.
pub fn map_nodes<R, F>(segments: &Segments, f: F) -> Vec<R>
where
    R: Copy + Default + Send + Sync,
    F: Fn(usize, usize) -> R + Sync,
{
    let n = segments.num_nodes();
    let offsets = segments.offsets();
    // written in place, block by block (no per-block vectors to join), and
    // not zeroed first: every entry is written below
    let mut out = rows::unwritten_vec::<R>(n);
    out.par_chunks_mut(ROW_BLOCK)
        .enumerate()
        .for_each(|(b, block)| {
            let start = b * ROW_BLOCK;
            let mut g = segments.graph_of(start);
            for (i, o) in block.iter_mut().enumerate() {
                let node = start + i;
                while node >= offsets[g + 1] {
                    g += 1;
                }
                o.write(f(g, node));
            }
        });
    // SAFETY: the blocks cover `out`, and every entry of each was written
    unsafe { rows::assume_written(out) }
}

/// Calls `f(graph, node, row)` for every row of `out` (one row per node), in
/// parallel over fixed blocks of [`ROW_BLOCK`] rows.
pub fn for_each_node_row<T, F>(mut out: ndarray::ArrayViewMut2<'_, T>, segments: &Segments, f: F)
where
    T: Send + Sync,
    F: Fn(usize, usize, ndarray::ArrayViewMut1<'_, T>) + Sync,
{
    let offsets = segments.offsets();
    out.axis_chunks_iter_mut(ndarray::Axis(0), ROW_BLOCK)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut block)| {
            let start = b * ROW_BLOCK;
            let mut g = segments.graph_of(start);
            for (j, row) in block.outer_iter_mut().enumerate() {
                let node = start + j;
                while node >= offsets[g + 1] {
                    g += 1;
                }
                f(g, node, row);
            }
        });
}

/// Calls `f(graph, row)` for every graph, in parallel, where `row` is the
/// graph's block of `rows_per_graph` rows of `out`.
pub fn for_each_graph_block<T, F>(
    mut out: ndarray::ArrayViewMut2<'_, T>,
    rows_per_graph: usize,
    f: F,
) where
    T: Send + Sync,
    F: Fn(usize, ndarray::ArrayViewMut2<'_, T>) + Sync,
{
    if rows_per_graph == 0 {
        return;
    }
    out.axis_chunks_iter_mut(ndarray::Axis(0), rows_per_graph)
        .into_par_iter()
        .enumerate()
        .for_each(|(g, block)| f(g, block));
}

/// Calls `f(graph, nodes, block)` for fixed pieces of every graph's rows of
/// `out` (one row per node): each graph is cut into chunks of [`ROW_BLOCK`]
/// rows counted from its first node, and the pieces run in parallel. Lets a
/// kernel use one small matrix product per piece instead of one per row;
/// the pieces depend only on each graph, so results do not depend on the
/// thread count nor on the other graphs of the batch.
pub fn for_each_segment_block<T, F>(out: ndarray::ArrayViewMut2<'_, T>, segments: &Segments, f: F)
where
    T: Send + Sync,
    F: Fn(usize, Range<usize>, ndarray::ArrayViewMut2<'_, T>) + Sync,
{
    segment_pieces(out, segments)
        .into_par_iter()
        .for_each(|(item, block)| f(item.graph, item.nodes, block));
}

/// The pieces of [`for_each_segment_block`]: each graph's chunks of
/// [`ROW_BLOCK`] rows, with their rows of `out`.
fn segment_pieces<'a, T>(
    out: ndarray::ArrayViewMut2<'a, T>,
    segments: &Segments,
) -> Vec<(crate::batch::SegmentChunk, ndarray::ArrayViewMut2<'a, T>)> {
    debug_assert_eq!(out.nrows(), segments.num_nodes());
    let mut pieces = Vec::with_capacity(segments.num_graphs());
    let mut rest = out;
    for item in segments.chunks(ROW_BLOCK) {
        let (head, tail) = rest.split_at(ndarray::Axis(0), item.nodes.len());
        pieces.push((item, head));
        rest = tail;
    }
    pieces
}

/// [`for_each_segment_block`] with a scratch vector per rayon task
/// (`for_each_init`), handed to `f` with the block: a kernel that needs a
/// temporary per graph (a transposed block, a row of products) grows one
/// buffer and reuses it instead of allocating one per graph. Its contents
/// are left from the previous graph: `f` must write what it reads.
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::{for_each_segment_block_with_scratch, scratch_slice};
/// let segs = Segments::from_sizes(&[2, 3]);
/// let mut out = ndarray::Array2::<f64>::zeros((5, 2));
/// for_each_segment_block_with_scratch(out.view_mut(), &segs, |scratch, g, nodes, mut block| {
///     // a per-graph temporary, written before it is read
///     let t = scratch_slice(scratch, nodes.len());
///     t.iter_mut().zip(nodes.clone()).for_each(|(v, n)| *v = (10 * g + n) as f64);
///     for (mut row, &v) in block.rows_mut().into_iter().zip(t.iter()) {
///         row.fill(v);
///     }
/// });
/// assert_eq!(out.column(0).to_vec(), vec![0.0, 1.0, 12.0, 13.0, 14.0]);
/// ```
pub fn for_each_segment_block_with_scratch<T, F>(
    out: ndarray::ArrayViewMut2<'_, T>,
    segments: &Segments,
    f: F,
) where
    T: Send + Sync + Copy + Default,
    F: Fn(&mut Vec<T>, usize, Range<usize>, ndarray::ArrayViewMut2<'_, T>) + Sync,
{
    segment_pieces(out, segments)
        .into_par_iter()
        .for_each_init(Vec::new, |scratch, (item, block)| {
            f(scratch, item.graph, item.nodes, block)
        });
}

/// A scratch slice of `len` entries from `scratch`, grown (with
/// `T::default()`) if it is shorter; the entries already there are left as
/// they are, for a caller that writes them all before reading them.
///
/// ```
/// use graphpool::kernels::scratch_slice;
/// let mut v = vec![7.0_f32; 2];
/// assert_eq!(scratch_slice(&mut v, 3), &[7.0, 7.0, 0.0]);
/// assert_eq!(scratch_slice(&mut v, 1).len(), 1);
/// assert_eq!(v.len(), 3);
/// ```
pub fn scratch_slice<T: Copy + Default>(scratch: &mut Vec<T>, len: usize) -> &mut [T] {
    if scratch.len() < len {
        scratch.resize(len, T::default());
    }
    &mut scratch[..len]
}

/// A work item of [`reduce_segment_rows`], see [`segment_work`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentWork {
    /// Consecutive whole graphs (each at most [`CHUNK`] nodes), every one
    /// reduced alone, in node order, by this one task.
    Graphs(Range<usize>),
    /// A piece of [`CHUNK`] nodes (the last one shorter) of a graph larger
    /// than [`CHUNK`], counted from the graph's first node.
    Piece {
        /// The graph.
        graph: usize,
        /// The piece's nodes.
        nodes: Range<usize>,
    },
}

/// The fixed work items of a segment reduction: runs of consecutive small
/// graphs (closed as soon as they hold at least [`CHUNK`] nodes or
/// [`CHUNK`] graphs) and, for every graph larger than [`CHUNK`], its pieces
/// of [`CHUNK`] nodes counted from its own first node (the cut of
/// [`Segments::chunks`]).
///
/// The items depend only on the segment layout, never on the thread count.
/// A small graph is always reduced whole by one task and a large graph
/// always cut the same way whatever its neighbours, so a reduction that
/// folds a graph's pieces in order gives the same bits on any number of
/// threads and for a graph inside a batch as alone; grouping many small
/// graphs per task keeps the per-task overhead off batches of tiny graphs.
pub fn segment_work(segments: &Segments) -> Vec<SegmentWork> {
    segment_work_of(segments, CHUNK)
}

/// [`segment_work`] with runs of small graphs closed at `run_nodes` nodes
/// (or graphs) instead of [`CHUNK`]; graphs above `CHUNK` nodes are still
/// cut into pieces of `CHUNK`.
pub(crate) fn segment_work_of(segments: &Segments, run_nodes: usize) -> Vec<SegmentWork> {
    let offsets = segments.offsets();
    let b = segments.num_graphs();
    let mut items = Vec::with_capacity(segments.num_nodes() / run_nodes.max(1) + 2);
    let mut run = 0;
    for g in 0..b {
        let r = segments.range(g);
        if r.len() > CHUNK {
            if run < g {
                items.push(SegmentWork::Graphs(run..g));
            }
            let mut s = r.start;
            while s < r.end {
                let e = (s + CHUNK).min(r.end);
                items.push(SegmentWork::Piece {
                    graph: g,
                    nodes: s..e,
                });
                s = e;
            }
            run = g + 1;
        } else if offsets[g + 1] - offsets[run] >= run_nodes || g + 1 - run >= run_nodes {
            items.push(SegmentWork::Graphs(run..g + 1));
            run = g + 1;
        }
    }
    if run < b {
        items.push(SegmentWork::Graphs(run..b));
    }
    items
}

/// The rows `nodes` of `x` as one contiguous row-major slice: borrowed from
/// a standard-layout `x`, else copied (the fallback for strided views).
fn rows_of<'a, T: Copy>(
    x: &ndarray::ArrayView2<'a, T>,
    xs: Option<&'a [T]>,
    nodes: Range<usize>,
) -> std::borrow::Cow<'a, [T]> {
    let f = x.ncols();
    match xs {
        Some(s) => std::borrow::Cow::Borrowed(&s[nodes.start * f..nodes.end * f]),
        None => std::borrow::Cow::Owned(x.slice(ndarray::s![nodes, ..]).iter().copied().collect()),
    }
}

/// A per-graph reduction of the rows of `x` ($N \times F$) to one row of
/// `width` values per graph ($B \times$ `width`), over the fixed
/// [`segment_work`] items, in parallel.
///
/// * `map(g, rows, acc)`: reduces `rows` (a contiguous row-major slice of
///   whole rows of graph `g`, in node order: the whole graph, or one of its
///   pieces; empty for an empty graph) into `acc` (`width` values, zeroed
///   on entry).
/// * `fold(acc, next)`: combines the partial of a graph's next piece into
///   the running one (pieces are folded in node order: $((p_0 \oplus p_1)
///   \oplus p_2) \ldots$).
/// * `finish(g, row)`: last step on graph `g`'s result (e.g. the division of
///   a mean).
///
/// The results are bit-identical on any thread count and for a graph
/// inside a batch or alone (see [`segment_work`]). The inner loops see
/// plain slices, so they vectorise; a non-standard-layout `x` is copied
/// piece by piece.
pub fn reduce_segment_rows<T, U, M, Fo, Fi>(
    x: ndarray::ArrayView2<'_, T>,
    segments: &Segments,
    width: usize,
    map: M,
    fold: Fo,
    finish: Fi,
) -> ndarray::Array2<U>
where
    T: Copy + Send + Sync,
    U: Copy + Default + Send + Sync,
    M: Fn(usize, &[T], &mut [U]) + Sync,
    Fo: Fn(&mut [U], &[U]),
    Fi: Fn(usize, &mut [U]) + Sync,
{
    debug_assert_eq!(x.nrows(), segments.num_nodes());
    let b = segments.num_graphs();
    let mut matrix = rows::fresh_matrix(b, width);
    if width == 0 || b == 0 {
        return matrix;
    }
    let out = matrix.as_slice_mut().expect("standard layout");
    let f = x.ncols();
    let offsets = segments.offsets();
    let xs = x.as_slice();
    let items = segment_work(segments);
    // each item's slice of the output: its graphs' rows, or for the first
    // piece of a large graph that graph's row (the other pieces return theirs)
    let mut tasks = Vec::with_capacity(items.len());
    let mut rest: &mut [U] = &mut *out;
    for item in &items {
        let len = match item {
            SegmentWork::Graphs(gr) => gr.len() * width,
            SegmentWork::Piece { graph, nodes } => {
                if nodes.start == offsets[*graph] {
                    width
                } else {
                    0
                }
            }
        };
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
        tasks.push((item, head));
        rest = tail;
    }
    // `map` into an output row: a narrow row is reduced in a stack row and
    // stored once. Reduced in the output itself, every step stored the row
    // that the next loads of `x` could alias (both start on a cache line:
    // GlobalMaxPool on global-1e7 took 74-84 ms that way, 64-78 ms this
    // way). A wide row is zeroed first by writing it: a first touch that
    // reads (an accumulation) would fault every page twice.
    let map_row = |g: usize, part: &[T], dst: &mut [U]| {
        if width <= rows::SMALL_COLS {
            let mut m = [U::default(); rows::SMALL_COLS];
            map(g, part, &mut m[..width]);
            dst.copy_from_slice(&m[..width]);
        } else {
            dst.fill(U::default());
            map(g, part, dst);
        }
    };
    let partials: Vec<Option<Vec<U>>> = tasks
        .into_par_iter()
        .map(|(item, dst)| match item {
            SegmentWork::Graphs(gr) => {
                let first = offsets[gr.start];
                let rows = rows_of(&x, xs, first..offsets[gr.end]);
                for (g, acc) in gr.clone().zip(dst.chunks_exact_mut(width)) {
                    let local = (offsets[g] - first) * f..(offsets[g + 1] - first) * f;
                    map_row(g, &rows[local], acc);
                    finish(g, acc);
                }
                None
            }
            SegmentWork::Piece { graph, nodes } => {
                let rows = rows_of(&x, xs, nodes.clone());
                if dst.is_empty() {
                    let mut p = vec![U::default(); width];
                    map(*graph, &rows, &mut p);
                    Some(p)
                } else {
                    map_row(*graph, &rows, dst);
                    None
                }
            }
        })
        .collect();
    // fold the pieces of every large graph in order, then finish it
    for (item, p) in items.iter().zip(partials) {
        if let SegmentWork::Piece { graph, nodes } = item {
            let row = &mut out[graph * width..(graph + 1) * width];
            if let Some(p) = p {
                fold(row, &p);
            }
            if nodes.end == offsets[graph + 1] {
                finish(*graph, row);
            }
        }
    }
    matrix
}

/// Calls `f(graph, node, row)` for every `width`-long row of the row-major
/// slice `out` (one row per node), in parallel over fixed blocks of
/// [`ROW_BLOCK`] rows: [`for_each_node_row`] on plain slices.
pub fn for_each_node_slice<U, F>(out: &mut [U], width: usize, segments: &Segments, f: F)
where
    U: Send,
    F: Fn(usize, usize, &mut [U]) + Sync,
{
    if width == 0 {
        return;
    }
    let offsets = segments.offsets();
    out.par_chunks_mut(ROW_BLOCK * width)
        .enumerate()
        .for_each(|(b, block)| {
            let start = b * ROW_BLOCK;
            let mut g = segments.graph_of(start);
            for (j, row) in block.chunks_exact_mut(width).enumerate() {
                let node = start + j;
                while node >= offsets[g + 1] {
                    g += 1;
                }
                f(g, node, row);
            }
        });
}

/// Builds an $N \times$ `width` matrix (one row per node) whose row `node`
/// is written by `f(graph, node, row)` (`row` arrives zeroed), in parallel
/// over fixed blocks of [`ROW_BLOCK`] rows, on plain slices
/// ([`for_each_node_slice`]).
///
/// The matrix is freshly allocated (zero pages mapped on first touch): `f`
/// should write every entry of its row rather than read it first (a read
/// then a write faults a page twice).
pub fn fill_node_rows<U, F>(segments: &Segments, width: usize, f: F) -> ndarray::Array2<U>
where
    U: Copy + Default + Send + Sync,
    F: Fn(usize, usize, &mut [U]) + Sync,
{
    let n = segments.num_nodes();
    let mut out = rows::fresh_matrix(n, width);
    for_each_node_slice(
        out.as_slice_mut().expect("standard layout"),
        width,
        segments,
        f,
    );
    out
}
