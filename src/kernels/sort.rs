//! Stable per-segment sorting and top-k selection under a total order.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

use std::ops::Range;

use super::CHUNK;
use crate::batch::Segments;
use crate::error::{PoolError, Result};
use crate::scalar::Scalar;

/// Checks that every score is finite: a NaN or infinite score makes a
/// selection undefined, so it is an error rather than a silent pick.
///
/// # Errors
/// [`PoolError::NonFiniteScore`] naming the first offending node.
pub fn check_scores<T: Scalar>(scores: ArrayView1<T>) -> Result<()> {
    if scores
        .as_slice()
        .is_some_and(|s| super::rows::first_non_finite(s).is_none())
    {
        return Ok(());
    }
    match scores.iter().position(|v| !v.is_finite()) {
        Some(node) => Err(non_finite_score(node, scores[node])),
        None => Ok(()),
    }
}

/// The [`PoolError::NonFiniteScore`] of `node`, whose score is `value`.
fn non_finite_score<T: Scalar>(node: usize, value: T) -> PoolError {
    PoolError::NonFiniteScore {
        node,
        value: value.to_string(),
    }
}

/// Sorts the nodes of every graph by `key` descending, ties broken by the
/// smaller node index first, and returns, per graph, the sorted global node
/// indices.
///
/// The order is total (keys compared as [`ordered_float::OrderedFloat`]), so the result is
/// unique and independent of the thread count.
pub fn segment_argsort_desc<T: Scalar>(key: ArrayView1<T>, segments: &Segments) -> Vec<Vec<usize>> {
    let cmp = |a: &usize, b: &usize| key[*b].ordered().cmp(&key[*a].ordered()).then(a.cmp(b));
    segments
        .ranges()
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|r| {
            let mut idx: Vec<usize> = r.collect();
            if idx.len() > CHUNK {
                idx.par_sort_unstable_by(cmp);
            } else {
                idx.sort_unstable_by(cmp);
            }
            idx
        })
        .collect()
}

/// The number of nodes a selection pool keeps of a graph of `n` nodes:
/// $\lceil \text{ratio} \cdot n \rceil$ computed in `f32` as both references do
/// (so ratio 0.6 of 25 nodes keeps 16), at least 1 for a non-empty graph and
/// at most `n`.
pub fn keep_count(ratio: f64, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let k = ((ratio as f32) * (n as f32)).ceil() as usize;
    k.clamp(1, n)
}

/// Per-graph top-k: keeps the `count(n_g)` best nodes of every graph by
/// `score` (descending, ties by node index) and returns the kept global
/// indices sorted ascending (input order).
///
/// A graph of at most 64 nodes is ranked by counting, every node's number
/// of nodes that beat it at once in vector lanes (`rank_top_k`). A larger
/// graph is selected, not sorted: with $t$ the `count`-th largest score of the
/// graph (found by `select_nth_unstable`, expected $O(n_g)$; for a graph
/// larger than [`CHUNK`], by a parallel radix selection), the kept
/// nodes are those scoring above $t$ and, of those scoring exactly $t$, the
/// ones with the smallest indices — exactly the first `count` of the order
/// of [`segment_argsort_desc`]. Runs of small graphs are one task each and
/// a graph larger than [`CHUNK`] is scanned and written in parallel pieces
/// ([`super::segment_work`]); the result does not depend on the thread count.
///
/// # Errors
/// [`PoolError::NonFiniteScore`] if a score is NaN or infinite.
pub fn segment_top_k<T: Scalar>(
    score: ArrayView1<T>,
    segments: &Segments,
    count: impl Fn(usize) -> usize + Sync,
) -> Result<Vec<usize>> {
    use super::SegmentWork;
    check_scores(score)?;
    let score = score.as_standard_layout();
    let keys = score.as_slice().expect("standard layout");
    let b = segments.num_graphs();
    let offsets = segments.offsets();
    let out_off = kept_offsets(segments, count);
    let mut kept = vec![0usize; out_off[b]];
    let items = super::segment_work(segments);
    // runs of small graphs: one task each, writing their own slice
    let mut tasks = Vec::with_capacity(items.len());
    let mut rest: &mut [usize] = &mut kept;
    for item in &items {
        let graphs = match item {
            SegmentWork::Graphs(gr) => gr.clone(),
            SegmentWork::Piece { graph, nodes } => {
                if nodes.start != offsets[*graph] {
                    continue;
                }
                *graph..*graph + 1
            }
        };
        // (a large graph's output slice goes with its first piece)
        let len = out_off[graphs.end] - out_off[graphs.start];
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        tasks.push((matches!(item, SegmentWork::Graphs(_)), graphs, head));
    }
    let (small, large): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|t| t.0);
    small.into_par_iter().for_each(|(_, graphs, out)| {
        let mut buf = Vec::new();
        let mut at = 0;
        for g in graphs {
            let r = segments.range(g);
            let k = out_off[g + 1] - out_off[g];
            let dst = &mut out[at..at + k];
            at += k;
            top_k_of_small_graph(&keys[r.clone()], r.start, dst, &mut buf);
        }
    });
    for (_, graphs, out) in large {
        // one large graph: the threshold by a selection over all its nodes,
        // then a parallel scan of its pieces, merged in order
        let g = graphs.start;
        let r = segments.range(g);
        let k = out.len();
        let graph_keys = &keys[r.clone()];
        let Some(t) = kth_largest_parallel(graph_keys, k) else {
            // k == n: every node
            for (o, n) in out.iter_mut().zip(r) {
                *o = n;
            }
            continue;
        };
        // per piece: how many nodes are above t and how many tied at t
        let starts: Vec<usize> = r.clone().step_by(CHUNK).collect();
        let piece = |s: usize| s..(s + CHUNK).min(r.end);
        let counts: Vec<(usize, usize)> = starts
            .par_iter()
            .map(|&s| {
                keys[piece(s)].iter().fold((0, 0), |(above, tied), v| {
                    let o = v.ordered();
                    (above + usize::from(o > t), tied + usize::from(o == t))
                })
            })
            .collect();
        // the ties kept are the first in node order: each piece's share of
        // the quota, then its place in the output, in piece order
        let above: usize = counts.iter().map(|c| c.0).sum();
        let mut quota = k - above;
        let mut tasks = Vec::with_capacity(starts.len());
        let mut rest: &mut [usize] = out;
        for (&s, &(above, tied)) in starts.iter().zip(&counts) {
            let keep_tied = tied.min(quota);
            quota -= keep_tied;
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(above + keep_tied);
            rest = tail;
            tasks.push((piece(s), keep_tied, head));
        }
        debug_assert!(rest.is_empty());
        // a second scan of each piece (its keys still cached) writes them
        tasks
            .into_par_iter()
            .for_each(|(nodes, keep_tied, dst)| write_kept(keys, nodes, Some(t), keep_tied, dst));
    }
    // graphs are contiguous and ordered, so the concatenation is sorted
    debug_assert!(kept.windows(2).all(|w| w[0] < w[1]));
    Ok(kept)
}

/// Where each graph's kept nodes start in a selection's output (and their
/// total, last): the running sum of `count(n_g)`, at most $n_g$ each.
fn kept_offsets(segments: &Segments, count: impl Fn(usize) -> usize) -> Vec<usize> {
    let b = segments.num_graphs();
    let mut out_off = Vec::with_capacity(b + 1);
    out_off.push(0usize);
    for g in 0..b {
        let n = segments.size(g);
        out_off.push(out_off[g] + count(n).min(n));
    }
    out_off
}

/// The top `dst.len()` nodes of one graph of at most [`CHUNK`] nodes (its
/// finite `keys`, its first node `first`), written ascending into `dst`:
/// ranked by counting up to 64 nodes, else selected
/// ([`segment_top_k`]'s choice for a graph of a run).
fn top_k_of_small_graph<T: Scalar>(
    keys: &[T],
    first: usize,
    dst: &mut [usize],
    buf: &mut Vec<T::Ordered>,
) {
    match keys.len() {
        0..=16 => rank_top_k::<T, 16>(keys, first, dst),
        17..=32 => rank_top_k::<T, 32>(keys, first, dst),
        33..=RANK_MAX => rank_top_k::<T, RANK_MAX>(keys, first, dst),
        _ => {
            let k = dst.len();
            let t = kth_largest(keys, k, buf);
            let quota = ties_to_keep(keys, k, t);
            write_kept(keys, 0..keys.len(), t, quota, dst);
            dst.iter_mut().for_each(|d| *d += first);
        }
    }
}

/// A selection by scores with its gated rows, from [`linear_top_k_rows`]
/// or [`scored_top_k_rows`].
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredRows<T> {
    /// Every node's score ($N$).
    pub scores: Array1<T>,
    /// A value per node the scorer wrote beside the score ($N$, e.g.
    /// SAGPool's $X w$), or empty when none was asked for.
    pub node_values: Array1<T>,
    /// The kept nodes, ascending (as [`segment_top_k`] keeps them).
    pub kept: Vec<usize>,
    /// The kept nodes' gates, `gate` of their scores.
    pub gate: Array1<T>,
    /// The kept nodes' rows times their gates ($|\text{kept}| \times F$).
    pub rows: Array2<T>,
    /// The flat index of the first non-finite entry of `rows`, if any.
    pub first_non_finite_row_entry: Option<usize>,
}

/// The rows of $X$ a run of [`scored_top_k_rows`] reads (256 KiB): small
/// enough to stay in a core's L2 cache (1 MiB on the host of
/// BENCHMARKS.md) from the scores to the gather, beside the run's output.
/// Runs of [`CHUNK`] nodes (1 MiB at $F = 64$ `f32`) spilled: TopKPool's
/// forward pass on disjoint-small took 6.15-6.23 ms (medians, freed memory
/// kept), against 5.32-5.37 with runs of 1,024 nodes and 5.32-5.45 with
/// 2,048.
pub const FUSED_RUN_BYTES: usize = 256 << 10;

/// Scores, top-k, gates and gathered rows in one pass over each run of
/// small graphs: $y_n = \langle x_n, p\rangle$ ([`super::rows::dot_rows`], the
/// bits of [`crate::nn::matmul`] with one column), then as
/// [`scored_top_k_rows`].
///
/// # Errors
/// [`PoolError::NonFiniteScore`] for a NaN or infinite score, as
/// [`check_scores`] names it.
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::sort::{keep_count, linear_top_k_rows, segment_top_k};
/// use ndarray::array;
///
/// let seg = Segments::from_sizes(&[3, 2]);
/// let x = array![[1.0_f64, 0.0], [0.0, 2.0], [3.0, 1.0], [-1.0, 0.0], [0.5, 0.5]];
/// let p = [1.0, 1.0];
/// let half = |v: &mut [f64]| v.iter_mut().for_each(|g| *g *= 0.5);
/// let got = linear_top_k_rows(x.view(), &p, &seg, |n| keep_count(0.5, n), half)?.unwrap();
/// assert_eq!(got.scores, array![1.0, 2.0, 4.0, -1.0, 1.0]);
/// assert_eq!(got.kept, segment_top_k(got.scores.view(), &seg, |n| keep_count(0.5, n))?);
/// assert_eq!(got.kept, vec![1, 2, 4]);
/// assert_eq!(got.gate, array![1.0, 2.0, 0.5]);
/// assert_eq!(got.rows, array![[0.0, 2.0], [6.0, 2.0], [0.25, 0.25]]);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
pub fn linear_top_k_rows<T: Scalar>(
    x: ArrayView2<T>,
    p: &[T],
    segments: &Segments,
    count: impl Fn(usize) -> usize + Sync,
    gate: impl Fn(&mut [T]) + Sync,
) -> Result<Option<ScoredRows<T>>> {
    debug_assert_eq!(p.len(), x.ncols());
    let xs = super::rows::row_major(&x);
    let score = |nodes: Range<usize>, y: &mut [T], _: &mut [T]| {
        super::rows::dot_rows(&xs, p, nodes.start, y)
    };
    scored_top_k_rows(x, segments, false, score, count, gate)
}

/// Scores, top-k, gates and gathered rows in one pass over each run of
/// small graphs: `score(nodes, y, values)` writes the run's scores $y$
/// (and, if `with_values`, a value per node beside them) from the run's
/// nodes alone; then the top `count(n_g)` of every graph
/// ([`segment_top_k`]'s nodes), their gates `gate` of $y_{\text{kept}}$
/// and the rows $\text{gate}_j\, x_{\text{kept}_j}$ (the bits of
/// [`super::gather::gather_gated_rows_checked`]; `gate` must act
/// entrywise). A run's rows ([`super::segment_work`], runs closed at
/// [`FUSED_RUN_BYTES`] of rows: 1,024 nodes at $F = 64$ `f32`), read for
/// their scores, are gathered from the core's own cache; as separate
/// passes the kept rows were read from memory a second time. The scores
/// are checked run by run, before the run's selection. The runs do not
/// change the result, only where it is computed.
///
/// `None` when a graph has more than [`CHUNK`] nodes or $F = 0$: the
/// separate passes handle those.
///
/// # Errors
/// [`PoolError::NonFiniteScore`] for a NaN or infinite score, as
/// [`check_scores`] names it (the first such node of the batch).
///
/// ```
/// use graphpool::batch::Segments;
/// use graphpool::kernels::sort::{keep_count, scored_top_k_rows};
/// use ndarray::array;
///
/// // scores: each node's first feature minus the one before it in its graph
/// let seg = Segments::from_sizes(&[3, 2]);
/// let x = array![[1.0_f64, 0.0], [4.0, 2.0], [3.0, 1.0], [-1.0, 0.0], [0.5, 0.5]];
/// let offsets = seg.offsets().to_vec();
/// let score = |nodes: std::ops::Range<usize>, y: &mut [f64], v: &mut [f64]| {
///     for (i, n) in nodes.enumerate() {
///         let first = offsets.contains(&n);
///         v[i] = x[[n, 0]];
///         y[i] = if first { x[[n, 0]] } else { x[[n, 0]] - x[[n - 1, 0]] };
///     }
/// };
/// let got = scored_top_k_rows(x.view(), &seg, true, score, |n| keep_count(0.5, n), |_| {})?
///     .unwrap();
/// assert_eq!(got.scores, array![1.0, 3.0, -1.0, -1.0, 1.5]);
/// assert_eq!(got.node_values, x.column(0));
/// assert_eq!(got.kept, vec![0, 1, 4]);
/// assert_eq!(got.rows, array![[1.0, 0.0], [12.0, 6.0], [0.75, 0.75]]);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
pub fn scored_top_k_rows<T: Scalar>(
    x: ArrayView2<T>,
    segments: &Segments,
    with_values: bool,
    score: impl Fn(Range<usize>, &mut [T], &mut [T]) + Sync,
    count: impl Fn(usize) -> usize + Sync,
    gate: impl Fn(&mut [T]) + Sync,
) -> Result<Option<ScoredRows<T>>> {
    use super::SegmentWork;
    let (n, f) = x.dim();
    if f == 0 || segments.ranges().any(|r| r.len() > CHUNK) {
        return Ok(None);
    }
    let xs = super::rows::row_major(&x);
    let b = segments.num_graphs();
    let offsets = segments.offsets();
    let out_off = kept_offsets(segments, count);
    let m = out_off[b];
    let mut scores: Vec<T> = super::rows::fresh_vec(n);
    let mut values: Vec<T> = super::rows::fresh_vec(if with_values { n } else { 0 });
    let mut kept: Vec<usize> = super::rows::fresh_vec(m);
    let mut gates: Vec<T> = super::rows::fresh_vec(m);
    let mut rows = super::rows::fresh_matrix::<T>(m, f);
    // every run's slices of the five outputs
    let mut tasks = Vec::new();
    {
        let (mut ys, mut vs) = (&mut scores[..], &mut values[..]);
        let (mut ks, mut gs) = (&mut kept[..], &mut gates[..]);
        let mut xo = rows.as_slice_mut().expect("standard layout");
        let run_nodes = (FUSED_RUN_BYTES / (f * std::mem::size_of::<T>())).clamp(1, CHUNK);
        for item in super::segment_work_of(segments, run_nodes) {
            let SegmentWork::Graphs(graphs) = item else {
                unreachable!("no graph above CHUNK nodes")
            };
            let nodes = offsets[graphs.start]..offsets[graphs.end];
            let len = out_off[graphs.end] - out_off[graphs.start];
            let (y, ty) = std::mem::take(&mut ys).split_at_mut(nodes.len());
            let (v, tv) =
                std::mem::take(&mut vs).split_at_mut(if with_values { nodes.len() } else { 0 });
            let (k, tk) = std::mem::take(&mut ks).split_at_mut(len);
            let (g, tg) = std::mem::take(&mut gs).split_at_mut(len);
            let (o, to) = std::mem::take(&mut xo).split_at_mut(len * f);
            (ys, vs, ks, gs, xo) = (ty, tv, tk, tg, to);
            tasks.push((graphs, nodes, y, v, k, g, o));
        }
    }
    // the first node with a non-finite score (the smallest reported)
    let bad_score = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let first_bad = tasks
        .into_par_iter()
        .filter_map(|(graphs, nodes, y, v, k, g, o)| {
            let base = nodes.start;
            score(nodes, y, v);
            if let Some(i) = super::rows::first_non_finite_in(y) {
                bad_score.fetch_min(base + i, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
            let mut buf = Vec::new();
            let mut at = 0;
            for graph in graphs.clone() {
                let r = segments.range(graph);
                let dst = &mut k[at..at + out_off[graph + 1] - out_off[graph]];
                at += dst.len();
                top_k_of_small_graph(&y[r.start - base..r.end - base], r.start, dst, &mut buf);
            }
            for (g, &node) in g.iter_mut().zip(k.iter()) {
                *g = y[node - base];
            }
            gate(g);
            super::rows::scaled_rows(&xs, f, k, g, (k, 0), o);
            super::rows::first_non_finite_in(o).map(|e| out_off[graphs.start] * f + e)
        })
        .min();
    let node = bad_score.into_inner();
    if node != usize::MAX {
        return Err(non_finite_score(node, scores[node]));
    }
    Ok(Some(ScoredRows {
        scores: Array1::from(scores),
        node_values: Array1::from(values),
        kept,
        gate: Array1::from(gates),
        rows,
        first_non_finite_row_entry: first_bad,
    }))
}

/// The `k`-th largest of `keys` under [`Scalar::ordered`], or `None` when
/// every key is kept (`k >= keys.len()`) or none is (`k == 0`, then nothing
/// passes [`keeps`] as the tie quota is 0 and no key is above `+∞`).
fn kth_largest<T: Scalar>(keys: &[T], k: usize, buf: &mut Vec<T::Ordered>) -> Option<T::Ordered> {
    if k >= keys.len() {
        return None;
    }
    if k == 0 {
        // a bound no key exceeds, with no ties kept
        return Some(T::infinity().ordered());
    }
    buf.clear();
    buf.extend(keys.iter().map(|v| v.ordered()));
    let (_, &mut t, _) = buf.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
    Some(t)
}

/// [`kth_largest`] for a large graph, in parallel: a radix selection. The
/// keys are counted by the top [`RADIX_BITS`] bits of their
/// [`Scalar::order_key`] (per-thread histograms added up: counts, so the
/// same on any thread count); the bucket holding the `k`-th largest is
/// found from the top, and only its keys are gathered and selected among
/// (`select_nth_unstable`). The value selected is the `k`-th largest, the
/// same as [`kth_largest`] finds.
fn kth_largest_parallel<T: Scalar>(keys: &[T], k: usize) -> Option<T::Ordered> {
    if k >= keys.len() || k == 0 || keys.len() <= CHUNK {
        return kth_largest(keys, k, &mut Vec::new());
    }
    const BUCKETS: usize = 1 << RADIX_BITS;
    let bucket = |v: T| (v.order_key() >> (64 - RADIX_BITS)) as usize;
    let counts = keys
        .par_chunks(CHUNK)
        .fold(
            || vec![0usize; BUCKETS],
            |mut h, c| {
                for &v in c {
                    h[bucket(v)] += 1;
                }
                h
            },
        )
        .reduce(
            || vec![0usize; BUCKETS],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    // the bucket of the k-th largest, and how many keys lie above it
    let (mut above, mut at) = (0, BUCKETS - 1);
    while above + counts[at] < k {
        above += counts[at];
        at -= 1;
    }
    let mut candidates: Vec<T::Ordered> = keys
        .par_iter()
        .filter(|&&v| bucket(v) == at)
        .map(|v| v.ordered())
        .collect();
    let (_, &mut t, _) = candidates.select_nth_unstable_by(k - above - 1, |a, b| b.cmp(a));
    Some(t)
}

/// Graphs of at most this many nodes are ranked by counting
/// ([`rank_top_k`]) rather than by a selection.
const RANK_MAX: usize = 64;

super::simd_levels! {
/// The top `dst.len()` of the `keys` of one graph of at most `W` nodes
/// (finite keys), written as node indices `first + i` in node order: node
/// $i$'s place in the order of [`segment_top_k`] (score descending, ties by
/// node index) is the number of nodes that beat it,
/// $$\#\{j : y_j > y_i\} + \#\{j < i : y_j = y_i\},$$
/// and it is kept when that is below $k$: exactly the nodes
/// [`kth_largest`] and [`write_kept`] keep. The counts of all nodes are
/// kept side by side in `W` lanes (the keys padded to `W`; the padding
/// lanes are counted and ignored), one key $j$ compared with every lane at
/// a time: a fixed width the compiler turns into whole vectors, with no
/// branch on the keys. $O(W n)$ comparisons, for graphs where a
/// selection's branches and copies cost more (on `disjoint-small`, graphs
/// of 10 to 50 nodes: 1.9 -> 0.8 ms for the whole batch on 2 threads).
fn rank_top_k<T: Scalar, const W: usize>(keys: &[T], first: usize, dst: &mut [usize]) {
    debug_assert!(keys.len() <= W && dst.len() <= keys.len());
    let k = dst.len();
    let mut padded = [T::neg_infinity(); W];
    padded[..keys.len()].copy_from_slice(keys);
    // every node's count at once, one key j at a time: W lanes of i
    let mut beaten = [0u32; W];
    // (indices as u32, the lanes' width: W is small)
    for (j, &v) in (0u32..).zip(keys) {
        for (i, (b, &yi)) in (0u32..).zip(beaten.iter_mut().zip(&padded)) {
            *b += u32::from((v > yi) | ((v == yi) & (j < i)));
        }
    }
    // branch-free, as in write_kept: every node takes the next slot, which
    // only a kept node keeps
    let mut p = 0;
    for (i, &b) in beaten[..keys.len()].iter().enumerate() {
        if let Some(d) = dst.get_mut(p) {
            *d = first + i;
        }
        p += usize::from((b as usize) < k);
    }
    debug_assert_eq!(p, k);
}
}

/// Leading key bits a radix selection buckets by ([`kth_largest_parallel`]).
const RADIX_BITS: u32 = 16;

/// How many of the keys equal to `t` are kept: `k` minus those above `t`.
fn ties_to_keep<T: Scalar>(keys: &[T], k: usize, t: Option<T::Ordered>) -> usize {
    match t {
        None => k,
        Some(t) => k - keys.iter().filter(|v| v.ordered() > t).count(),
    }
}

/// Whether a key is kept, in node order: above `t`, or tied at `t` while the
/// quota of ties lasts (`t` is `None` when every key is kept). Without a
/// branch on the key: which keys are kept follows no pattern a branch
/// predictor could learn.
#[inline]
fn keeps<T: Scalar>(v: T, t: Option<T::Ordered>, quota: &mut usize) -> bool {
    let Some(t) = t else { return true };
    let o = v.ordered();
    let tie = (o == t) & (*quota > 0);
    *quota -= usize::from(tie);
    (o > t) | tie
}

/// Writes the nodes of `nodes` that [`keeps`] keeps, in order, into `dst`
/// (which has exactly their number of slots), without a branch on the
/// keys: every node is written at the next free slot, which only a kept
/// node then takes.
#[inline]
fn write_kept<T: Scalar>(
    keys: &[T],
    nodes: std::ops::Range<usize>,
    t: Option<T::Ordered>,
    mut quota: usize,
    dst: &mut [usize],
) {
    let mut j = 0;
    for n in nodes {
        let kept = keeps(keys[n], t, &mut quota);
        if let Some(d) = dst.get_mut(j) {
            *d = n;
        }
        j += usize::from(kept);
    }
    debug_assert_eq!(j, dst.len());
}
