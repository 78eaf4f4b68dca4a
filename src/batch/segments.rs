//! The segment layout of a disjoint batch: which contiguous block of nodes
//! belongs to which graph.

use std::ops::Range;

use crate::error::{PoolError, Result};

/// Offsets of each graph's nodes in a disjoint batch.
///
/// Graph `g` owns the nodes `offsets[g]..offsets[g + 1]`; there are `B + 1`
/// offsets for `B` graphs, starting at 0 and ending at `N`. Empty graphs
/// (equal consecutive offsets), including leading and trailing ones, are
/// representable, which a plain per-node graph-id vector cannot express.
///
/// ```
/// use graphpool::Segments;
/// let s = Segments::from_graph_ids(&[0, 0, 2, 2, 2], 4)?;
/// assert_eq!(s.offsets(), &[0, 2, 2, 5, 5]);
/// assert_eq!(s.sizes(), vec![2, 0, 3, 0]);
/// assert_eq!(s.graph_ids(), vec![0, 0, 2, 2, 2]);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Segments {
    offsets: Vec<usize>,
}

impl Segments {
    /// Builds the layout from per-node graph ids (sorted, each `< num_graphs`).
    ///
    /// # Errors
    /// [`PoolError::UnsortedGraphIds`] if an id decreases,
    /// [`PoolError::GraphIdOutOfRange`] if an id is `>= num_graphs`,
    /// [`PoolError::InvalidConfig`] if the `num_graphs + 1` offsets cannot be
    /// allocated (a garbage `num_graphs` such as `usize::MAX`).
    pub fn from_graph_ids(ids: &[usize], num_graphs: usize) -> Result<Self> {
        let mut offsets = zeroed_offsets(num_graphs)?;
        let mut prev = 0usize;
        for (node, &id) in ids.iter().enumerate() {
            if id < prev {
                return Err(PoolError::UnsortedGraphIds { node, id, prev });
            }
            if id >= num_graphs {
                return Err(PoolError::GraphIdOutOfRange {
                    node,
                    id,
                    num_graphs,
                });
            }
            offsets[id + 1] += 1;
            prev = id;
        }
        for g in 0..num_graphs {
            offsets[g + 1] += offsets[g];
        }
        Ok(Self { offsets })
    }

    /// Like [`Segments::from_graph_ids`] for `i64` ids as stored in `.npy` files.
    ///
    /// # Errors
    /// Also [`PoolError::NegativeGraphId`] for an id below zero.
    pub fn from_graph_ids_i64(ids: &[i64], num_graphs: usize) -> Result<Self> {
        let mut conv = Vec::with_capacity(ids.len());
        for (node, &id) in ids.iter().enumerate() {
            let id = usize::try_from(id).map_err(|_| PoolError::NegativeGraphId { node, id })?;
            conv.push(id);
        }
        Self::from_graph_ids(&conv, num_graphs)
    }

    /// Builds the layout from `B + 1` offsets.
    ///
    /// # Errors
    /// [`PoolError::InvalidOffsets`] unless the offsets are non-empty, start at 0
    /// and never decrease.
    pub fn from_offsets(offsets: Vec<usize>) -> Result<Self> {
        match offsets.first() {
            None => {
                return Err(PoolError::InvalidOffsets(
                    "need at least one offset (0 graphs: [0])".into(),
                ))
            }
            Some(&o) if o != 0 => {
                return Err(PoolError::InvalidOffsets(format!(
                    "the first offset must be 0, got {o}"
                )))
            }
            _ => {}
        }
        if let Some(g) = offsets.windows(2).position(|w| w[1] < w[0]) {
            return Err(PoolError::InvalidOffsets(format!(
                "offset {} ({}) is smaller than offset {} ({})",
                g + 1,
                offsets[g + 1],
                g,
                offsets[g]
            )));
        }
        Ok(Self { offsets })
    }

    /// [`Segments::from_offsets`] without the check, for offsets this crate
    /// derived from a valid layout (checked in debug builds).
    pub(crate) fn from_offsets_unchecked(offsets: Vec<usize>) -> Self {
        debug_assert!(offsets.first() == Some(&0) && offsets.windows(2).all(|w| w[0] <= w[1]));
        Self { offsets }
    }

    /// Builds the layout from the number of nodes of each graph.
    ///
    /// Sizes summing beyond `usize::MAX` saturate instead of wrapping (no
    /// feature matrix has that many rows, so [`crate::DisjointBatch::new`]
    /// then refuses the layout with a typed error).
    pub fn from_sizes(sizes: &[usize]) -> Self {
        let mut offsets = Vec::with_capacity(sizes.len() + 1);
        offsets.push(0);
        let mut acc = 0usize;
        for &s in sizes {
            acc = acc.saturating_add(s);
            offsets.push(acc);
        }
        Self { offsets }
    }

    /// One graph of `n` nodes.
    pub fn single(n: usize) -> Self {
        Self {
            offsets: vec![0, n],
        }
    }

    /// `B` graphs of `k` nodes each (the layout of a dense-assignment pool's
    /// output); offsets beyond `usize::MAX` saturate, as in [`Segments::from_sizes`].
    pub fn uniform(num_graphs: usize, k: usize) -> Self {
        Self {
            offsets: (0..=num_graphs).map(|g| g.saturating_mul(k)).collect(),
        }
    }

    /// The `B + 1` offsets.
    #[inline]
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Number of graphs `B`.
    #[inline]
    pub fn num_graphs(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of nodes `N` over all graphs.
    #[inline]
    pub fn num_nodes(&self) -> usize {
        self.offsets[self.offsets.len() - 1]
    }

    /// Node range of graph `g`.
    ///
    /// # Panics
    /// If `g >= num_graphs()` (an internal index, never user data).
    #[inline]
    pub fn range(&self, g: usize) -> Range<usize> {
        self.offsets[g]..self.offsets[g + 1]
    }

    /// Number of nodes of graph `g`.
    #[inline]
    pub fn size(&self, g: usize) -> usize {
        self.offsets[g + 1] - self.offsets[g]
    }

    /// Number of nodes of every graph.
    pub fn sizes(&self) -> Vec<usize> {
        self.offsets.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// The graph id of every node (length `N`), computed on demand.
    pub fn graph_ids(&self) -> Vec<usize> {
        let mut ids = Vec::with_capacity(self.num_nodes());
        for g in 0..self.num_graphs() {
            ids.extend(std::iter::repeat_n(g, self.size(g)));
        }
        ids
    }

    /// The graph of node `n` (binary search over the offsets).
    pub fn graph_of(&self, n: usize) -> usize {
        // the last g with offsets[g] <= n, skipping empty graphs
        self.offsets.partition_point(|&o| o <= n) - 1
    }

    /// Iterator over the node ranges of all graphs.
    pub fn ranges(&self) -> impl ExactSizeIterator<Item = Range<usize>> + '_ {
        self.offsets.windows(2).map(|w| w[0]..w[1])
    }

    /// Concatenates layouts: the graphs of `self`, then those of `other`.
    pub fn concat(&self, other: &Segments) -> Segments {
        let base = self.num_nodes();
        let mut offsets = self.offsets.clone();
        offsets.extend(other.offsets[1..].iter().map(|o| o + base));
        Segments { offsets }
    }

    /// Fixed work items for a parallel segment reduction: every graph is cut
    /// into chunks of `chunk` nodes counted from the graph's own first node.
    ///
    /// Because the cut depends only on the graph (never on the thread count
    /// nor on the other graphs of the batch), a reduction that sums each chunk
    /// in node order and then the chunks in order gives bit-identical results
    /// on any number of threads, and a graph pooled inside a batch gives the
    /// same bits as the graph pooled alone.
    pub fn chunks(&self, chunk: usize) -> Vec<SegmentChunk> {
        let chunk = chunk.max(1);
        let mut items = Vec::with_capacity(self.num_graphs());
        for (g, r) in self.ranges().enumerate() {
            let mut s = r.start;
            loop {
                let e = s.saturating_add(chunk).min(r.end);
                items.push(SegmentChunk {
                    graph: g,
                    nodes: s..e,
                });
                if e >= r.end {
                    break;
                }
                s = e;
            }
        }
        items
    }
}

/// `num_graphs + 1` zero offsets, or a typed error when that many cannot be
/// allocated (instead of an overflow panic or an allocation abort).
fn zeroed_offsets(num_graphs: usize) -> Result<Vec<usize>> {
    let too_many = || PoolError::InvalidConfig {
        name: "num_graphs".into(),
        value: num_graphs.to_string(),
        expected: "a number of graphs whose num_graphs + 1 offsets fit in memory".into(),
    };
    let len = num_graphs.checked_add(1).ok_or_else(too_many)?;
    let mut offsets = Vec::new();
    offsets.try_reserve_exact(len).map_err(|_| too_many())?;
    offsets.resize(len, 0);
    Ok(offsets)
}

/// One work item of a chunked segment reduction, see [`Segments::chunks`].
///
/// An empty graph yields one item with an empty node range, so that every
/// graph has at least one item and its result is defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentChunk {
    /// The graph this chunk belongs to.
    pub graph: usize,
    /// Its nodes.
    pub nodes: Range<usize>,
}
