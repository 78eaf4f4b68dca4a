//! Stable per-segment sorting and top-k selection under a total order.

use ndarray::ArrayView1;
use rayon::prelude::*;

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
    match scores.iter().position(|v| !v.is_finite()) {
        Some(node) => Err(PoolError::NonFiniteScore {
            node,
            value: scores[node].to_string(),
        }),
        None => Ok(()),
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
/// # Errors
/// [`PoolError::NonFiniteScore`] if a score is NaN or infinite.
pub fn segment_top_k<T: Scalar>(
    score: ArrayView1<T>,
    segments: &Segments,
    count: impl Fn(usize) -> usize + Sync,
) -> Result<Vec<usize>> {
    check_scores(score)?;
    let sorted = segment_argsort_desc(score, segments);
    let mut kept: Vec<usize> = sorted
        .into_par_iter()
        .flat_map_iter(|idx| {
            let k = count(idx.len()).min(idx.len());
            let mut top: Vec<usize> = idx[..k].to_vec();
            top.sort_unstable();
            top
        })
        .collect();
    // graphs are contiguous and ordered, so the concatenation is sorted
    debug_assert!(kept.windows(2).all(|w| w[0] < w[1]));
    kept.shrink_to_fit();
    Ok(kept)
}
