//! The SRC trait: select, reduce, connect, reduce_index and the composed `pool`.

use ndarray::{Array1, Array2};
use sprs::CsMat;

use super::{DenseAssignment, Losses, Pooled, Selection};
use crate::batch::{DisjointBatch, Segments};
use crate::error::Result;
use crate::scalar::Scalar;

/// A pooling layer in the Select–Reduce–Connect framework (Spektral's `SRCPool`).
///
/// Only [`SrcPool::select`] is required; reduce, connect and reduce_index
/// default to the generic operation of the selection's form.
///
/// **Precondition** of reduce, connect, reduce_index and losses: `selection`
/// is what [`SrcPool::select`] returned for this very `batch` (these steps
/// return plain arrays, not `Result`s, and index the batch with it; a
/// selection from another batch may panic on an out-of-range index).
/// [`SrcPool::pool`] and [`crate::framework::Layer::forward`] check
/// everything and never panic.
///
/// The generic steps per form:
///
/// | form | reduce $X'$ | connect $A'$ | reduce_index |
/// |---|---|---|---|
/// | [`Selection::Subset`] | $(X \odot \mathrm{gate})_{\text{kept}}$ | $A_{\text{kept},\text{kept}}$ | kept per graph |
/// | [`Selection::Dense`] | $S_g^\top X_g$ | $S_g^\top A_g S_g$ | $K$ per graph |
/// | [`Selection::Sparse`] | $S^\top X$ | $S^\top A S$ | leaders per graph |
///
/// ```
/// use graphpool::framework::{Selection, SrcPool, Subset};
/// use graphpool::{DisjointBatch, Result};
/// use ndarray::{array, Array1};
/// use sprs::CsMat;
///
/// /// Keeps the first node of every graph, ungated.
/// struct FirstNode;
/// impl SrcPool<f64> for FirstNode {
///     fn select(&self, b: &DisjointBatch<f64>) -> Result<(Selection<f64>, Option<Array1<f64>>)> {
///         let kept: Vec<usize> = b.segments().ranges().filter(|r| !r.is_empty()).map(|r| r.start).collect();
///         let gate = Array1::ones(kept.len());
///         Ok((Selection::Subset(Subset { kept, gate }), None))
///     }
/// }
/// let b = DisjointBatch::from_graph_ids(array![[1.0], [2.0], [3.0]], CsMat::zero((3, 3)), &[0, 0, 1], 2)?;
/// let p = FirstNode.pool(&b)?;
/// assert_eq!(p.batch.x(), &array![[1.0], [3.0]]);
/// assert!(p.selection.is_none()); // FirstNode keeps the default return_selection
/// # Ok::<(), graphpool::PoolError>(())
/// ```
pub trait SrcPool<T: Scalar> {
    /// Select: the selection, and the raw score of every node where the layer has one.
    ///
    /// # Errors
    /// Layer-specific ([`crate::PoolError`]).
    fn select(&self, batch: &DisjointBatch<T>) -> Result<(Selection<T>, Option<Array1<T>>)>;

    /// Reduce: the pooled features.
    fn reduce(&self, batch: &DisjointBatch<T>, selection: &Selection<T>) -> Array2<T> {
        match selection {
            Selection::Subset(s) => s.reduce(batch.x().view()),
            Selection::Dense(s) => s.reduce(batch.x().view(), batch.segments()),
            Selection::Sparse(s) => s.reduce(batch.x().view()),
        }
    }

    /// Connect: the pooled adjacency.
    fn connect(&self, batch: &DisjointBatch<T>, selection: &Selection<T>) -> CsMat<T> {
        match selection {
            Selection::Subset(s) => s.connect(batch.a().view()).matrix,
            Selection::Dense(s) => {
                let (blocks, _) = s.connect_blocks(batch.a().view(), batch.segments());
                DenseAssignment::blocks_into_csr(blocks)
            }
            Selection::Sparse(s) => s.connect(batch.a().view()).0,
        }
    }

    /// Reduce index: the pooled segments.
    fn reduce_index(&self, batch: &DisjointBatch<T>, selection: &Selection<T>) -> Segments {
        match selection {
            Selection::Subset(s) => s.reduce_index(batch.segments()),
            Selection::Dense(s) => s.reduce_index(batch.segments()),
            Selection::Sparse(s) => s.reduce_index(batch.segments()),
        }
    }

    /// Auxiliary losses computed from the selection (none by default).
    ///
    /// # Errors
    /// Layer-specific.
    fn losses(&self, _batch: &DisjointBatch<T>, _selection: &Selection<T>) -> Result<Losses<T>> {
        Ok(Losses::new())
    }

    /// Whether [`SrcPool::pool`] returns the selection in
    /// [`Pooled::selection`] (Spektral's `return_selection`): `false` unless
    /// the layer says otherwise, as in Spektral.
    fn return_selection(&self) -> bool {
        false
    }

    /// Select, reduce, connect and reduce_index in one pass.
    ///
    /// # Errors
    /// Those of [`SrcPool::select`] and [`SrcPool::losses`].
    fn pool(&self, batch: &DisjointBatch<T>) -> Result<Pooled<T>> {
        let (selection, score) = self.select(batch)?;
        let x = self.reduce(batch, &selection);
        let a = self.connect(batch, &selection);
        let segments = self.reduce_index(batch, &selection);
        let losses = self.losses(batch, &selection)?;
        Ok(Pooled {
            batch: DisjointBatch::new_unchecked(x, a, segments),
            selection: self.return_selection().then_some(selection),
            score,
            losses,
        })
    }
}
