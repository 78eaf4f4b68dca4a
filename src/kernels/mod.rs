//! Shared numeric kernels: every layer is composed of these, and each comes
//! with its vector-Jacobian product (`*_vjp`).
//!
//! # Determinism
//! Parallel work is cut into pieces that depend only on the data (a graph,
//! then fixed chunks of [`CHUNK`] nodes counted from the graph's first node,
//! or fixed blocks of rows), never on the number of threads; partial results
//! are combined in a fixed order. Every kernel therefore returns the same bits
//! whatever `RAYON_NUM_THREADS` is, and a graph gives the same bits inside a
//! batch as alone.

pub mod segment;
pub mod sort;
pub mod sparse;

use std::ops::Range;

use rayon::prelude::*;

use crate::batch::Segments;

/// Nodes per work item of a chunked segment reduction.
pub const CHUNK: usize = 4096;

/// Rows per work item of a row-parallel kernel.
pub const ROW_BLOCK: usize = 1024;

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

/// Calls `f(graph, node)` for every node, in parallel over fixed blocks of
/// [`ROW_BLOCK`] nodes; `f` returns the value stored for that node.
pub fn map_nodes<R, F>(segments: &Segments, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(usize, usize) -> R + Sync,
{
    let n = segments.num_nodes();
    let offsets = segments.offsets();
    (0..n.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .flat_map_iter(|b| {
            let start = b * ROW_BLOCK;
            let end = (start + ROW_BLOCK).min(n);
            let mut g = segments.graph_of(start);
            let f = &f;
            (start..end).map(move |node| {
                while node >= offsets[g + 1] {
                    g += 1;
                }
                f(g, node)
            })
        })
        .collect()
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
    debug_assert_eq!(out.nrows(), segments.num_nodes());
    let mut pieces = Vec::with_capacity(segments.num_graphs());
    let mut rest = out;
    for item in segments.chunks(ROW_BLOCK) {
        let (head, tail) = rest.split_at(ndarray::Axis(0), item.nodes.len());
        pieces.push((item, head));
        rest = tail;
    }
    pieces
        .into_par_iter()
        .for_each(|(item, block)| f(item.graph, item.nodes, block));
}
