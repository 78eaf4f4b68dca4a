//! The result of an SRC pool: a new disjoint batch plus selection, scores and losses.

use std::collections::BTreeMap;

use ndarray::{Array1, Array2};

use super::layer::{pair_arrays, random_like, Differentiable};
use super::Selection;
use crate::batch::DisjointBatch;
use crate::error::{PoolError, Result};
use crate::kernels::rows::{first_non_finite, first_non_finite_entry};
use crate::nn::ParamRng;
use crate::scalar::Scalar;

/// Named auxiliary losses (`"mincut"`, `"ortho"`, …), each already the mean
/// over the graphs of the batch of the per-graph losses.
pub type Losses<T> = BTreeMap<String, T>;

/// What an SRC pool returns.
///
/// `batch` is again a [`DisjointBatch`] (pooled features $X'$, pooled
/// adjacency $A'$, pooled segments), so pools stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Pooled<T: Scalar> {
    /// The pooled graphs.
    pub batch: DisjointBatch<T>,
    /// How input nodes map to output nodes, when the layer was asked for it
    /// (`with_return_selection(true)`, Spektral's `return_selection`); `None`
    /// by default, as in Spektral, whose pools return $S$ only when asked.
    /// A dense assignment is $N \times K$: not returning it spares writing
    /// (and holding) that much on every call.
    pub selection: Option<Selection<T>>,
    /// The raw score of every input node for the selection pools (TopK, SAG); `None` otherwise.
    pub score: Option<Array1<T>>,
    /// Auxiliary losses by name.
    pub losses: Losses<T>,
}

/// The gradient of a scalar loss with respect to a [`Pooled`] output.
///
/// The selection and score are not differentiated through (they feed the
/// outputs, and their influence is counted there); a missing loss gradient
/// counts as 0.
#[derive(Debug, Clone, PartialEq)]
pub struct PooledGrad<T: Scalar> {
    /// $\partial L / \partial X'$.
    pub x: Array2<T>,
    /// $\partial L / \partial a'_{ij}$ aligned with `pooled.batch.a().data()`.
    pub edge_weights: Array1<T>,
    /// $\partial L / \partial \ell$ for each auxiliary loss $\ell$.
    pub losses: Losses<T>,
}

impl<T: Scalar> PooledGrad<T> {
    /// Zero gradients matching `pooled`, in fresh memory like the layers'
    /// outputs ([`crate::kernels::rows::fresh_matrix`]: a large array is
    /// backed by transparent huge pages, so that filling it in takes one
    /// page fault per 2 MiB instead of per 4 KiB).
    pub fn zeros(pooled: &Pooled<T>) -> Self {
        let (rows, cols) = pooled.batch.x().dim();
        Self {
            x: crate::kernels::rows::fresh_matrix(rows, cols),
            edge_weights: Array1::from(crate::kernels::rows::fresh_vec(pooled.batch.a().nnz())),
            losses: pooled
                .losses
                .keys()
                .map(|k| (k.clone(), T::zero()))
                .collect(),
        }
    }

    /// The gradient of loss `name` (0 when absent).
    pub fn loss(&self, name: &str) -> T {
        self.losses.get(name).copied().unwrap_or_else(T::zero)
    }
}

impl<T: Scalar> Differentiable<T> for Pooled<T> {
    type Grad = PooledGrad<T>;

    fn pair(&self, grad: &PooledGrad<T>) -> Result<T> {
        let mut acc = pair_arrays("pooled x", self.batch.x(), &grad.x)?;
        let w = Array1::from(self.batch.a().data().to_vec());
        acc += pair_arrays("pooled edge weights", &w, &grad.edge_weights)?;
        for (name, g) in &grad.losses {
            let v = self
                .losses
                .get(name)
                .ok_or_else(|| PoolError::GradientShape {
                    what: format!("loss `{name}`"),
                    expected: format!("{:?}", self.losses.keys().collect::<Vec<_>>()),
                    got: name.clone(),
                })?;
            acc += *v * *g;
        }
        Ok(acc)
    }

    fn random_cotangent(&self, rng: &mut ParamRng) -> PooledGrad<T> {
        let w = Array1::from(self.batch.a().data().to_vec());
        PooledGrad {
            x: random_like(self.batch.x(), rng),
            edge_weights: random_like(&w, rng),
            losses: self
                .losses
                .keys()
                .map(|k| {
                    (
                        k.clone(),
                        random_like(&Array1::from_elem(1, T::one()), rng)[0],
                    )
                })
                .collect(),
        }
    }
}

/// The error for a pooled feature matrix whose entry at flat position `p`
/// (row-major) overflowed.
pub(crate) fn pooled_x_overflow<T: Scalar>(layer: &str, x: &Array2<T>, p: usize) -> PoolError {
    crate::batch::non_finite_at(
        format!("{layer} pooled x (overflow: inputs, edge weights or parameters too large)"),
        &x.view(),
        p,
    )
}

/// A value the forward pass may both keep in its cache (`keep`) and return
/// (`output`, Spektral's `return_selection`): moved to whichever takes it,
/// and `copy`'d only when both do. `(cached, returned)`.
pub(crate) fn cached_and_returned<V>(
    keep: bool,
    output: bool,
    v: V,
    copy: impl FnOnce(&V) -> V,
) -> (Option<V>, Option<V>) {
    match (keep, output) {
        (true, true) => (Some(copy(&v)), Some(v)),
        (true, false) => (Some(v), None),
        (false, true) => (None, Some(v)),
        (false, false) => (None, None),
    }
}

/// Checks that everything a pool is about to return besides its features
/// is finite: pooled edge weights, losses, scores and the selection's
/// values. With finite inputs they can only fail to be through overflow
/// (features, edge weights or parameters too large for the float type),
/// which every layer reports as this typed [`PoolError::NonFinite`] rather
/// than a result holding infinities or NaN. Called before the pooled batch
/// is built; [`Pooled::checked`] scans the features first.
pub(crate) fn check_pooled_finite<T: Scalar>(
    layer: &str,
    a: &sprs::CsMat<T>,
    losses: &Losses<T>,
    score: Option<&Array1<T>>,
    selection: Option<&Selection<T>>,
) -> Result<()> {
    let overflow = |what: &str, index: String, value: T| pooled_overflow(layer, what, index, value);
    // parallel, vectorised scans of the plain values (rows::first_non_finite)
    if let Some(e) = first_non_finite(a.data()) {
        return Err(overflow(
            "pooled adjacency",
            format!("entry {e}"),
            a.data()[e],
        ));
    }
    check_losses_and_score(layer, losses, score)?;
    let bad = selection.and_then(|selection| match selection {
        Selection::Subset(s) => first_non_finite_entry(&s.gate),
        Selection::Dense(s) => first_non_finite_entry(&s.s),
        Selection::Sparse(s) => first_non_finite(s.s.data()).map(|p| (p, s.s.data()[p])),
    });
    if let Some((i, v)) = bad {
        return Err(overflow("selection", format!("flat index {i}"), v));
    }
    Ok(())
}

/// The error for a pooled value (`what`, at `index`) that overflowed.
fn pooled_overflow<T: Scalar>(layer: &str, what: &str, index: String, value: T) -> PoolError {
    PoolError::NonFinite {
        what: format!("{layer} {what} (overflow: inputs, edge weights or parameters too large)"),
        index,
        value: value.to_string(),
    }
}

/// The part of [`check_pooled_finite`] that scans the losses and the score.
fn check_losses_and_score<T: Scalar>(
    layer: &str,
    losses: &Losses<T>,
    score: Option<&Array1<T>>,
) -> Result<()> {
    let overflow = |what: &str, index: String, value: T| pooled_overflow(layer, what, index, value);
    if let Some((name, &v)) = losses.iter().find(|(_, v)| !v.is_finite()) {
        return Err(overflow(&format!("loss `{name}`"), "-".into(), v));
    }
    if let Some(score) = score {
        if let Some((n, v)) = first_non_finite_entry(score) {
            return Err(overflow("score", format!("node {n}"), v));
        }
    }
    Ok(())
}

impl<T: Scalar> Pooled<T> {
    /// [`Pooled::checked`] for the outputs of a dense-assignment pool (no
    /// score) written run by run
    /// ([`crate::framework::runs::DenseRunOutputs`]), whose runs scanned
    /// $X'$, the pooled adjacency's values and the selection while they
    /// were still in cache: when every run found them finite
    /// (`written_finite`), only the losses are scanned here, so the outputs
    /// are not read from memory a second time. Otherwise everything is
    /// scanned as by [`Pooled::checked`], and the error names the batch's
    /// first bad value.
    pub(crate) fn checked_by_runs(
        layer: &str,
        written_finite: bool,
        x: Array2<T>,
        a: sprs::CsMat<T>,
        segments: crate::batch::Segments,
        selection: Option<Selection<T>>,
        losses: Losses<T>,
    ) -> Result<Self> {
        if !written_finite {
            return Self::checked(layer, x, a, segments, selection, None, losses);
        }
        check_losses_and_score(layer, &losses, None)?;
        Ok(Self::assemble(x, a, segments, selection, None, losses))
    }

    /// Builds a pool's result after [`check_pooled_finite`]: the parts come
    /// from a validated batch, so only finiteness can fail.
    pub(crate) fn checked(
        layer: &str,
        x: Array2<T>,
        a: sprs::CsMat<T>,
        segments: crate::batch::Segments,
        selection: Option<Selection<T>>,
        score: Option<Array1<T>>,
        losses: Losses<T>,
    ) -> Result<Self> {
        if let Some((p, _)) = first_non_finite_entry(&x) {
            return Err(pooled_x_overflow(layer, &x, p));
        }
        Self::checked_after_x(layer, x, a, segments, selection, score, losses)
    }

    /// [`Pooled::checked`] for pooled features whose finiteness the kernel
    /// that wrote them has checked (e.g.
    /// [`crate::kernels::gather::gather_scaled_rows_checked`]): the rest is
    /// scanned as there, `x` is not read again.
    pub(crate) fn checked_after_x(
        layer: &str,
        x: Array2<T>,
        a: sprs::CsMat<T>,
        segments: crate::batch::Segments,
        selection: Option<Selection<T>>,
        score: Option<Array1<T>>,
        losses: Losses<T>,
    ) -> Result<Self> {
        check_pooled_finite(layer, &a, &losses, score.as_ref(), selection.as_ref())?;
        Ok(Self::assemble(x, a, segments, selection, score, losses))
    }

    /// The result of [`Pooled::checked_after_x`] and [`Pooled::checked_by_runs`], once they have checked its parts.
    fn assemble(
        x: Array2<T>,
        a: sprs::CsMat<T>,
        segments: crate::batch::Segments,
        selection: Option<Selection<T>>,
        score: Option<Array1<T>>,
        losses: Losses<T>,
    ) -> Self {
        Self {
            batch: DisjointBatch::new_unchecked(x, a, segments),
            selection,
            score,
            losses,
        }
    }
}
