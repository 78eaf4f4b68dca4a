//! DMoNPool: deep modularity networks.

use super::clustering::{
    check_coeff, check_k, clustering_layer, AuxLoss, DenseClustering, EdgeCount, PostProcess,
    PYG_NORM_EPS,
};
use crate::error::Result;
use crate::nn::Activation;
use crate::scalar::Scalar;

/// Which reference's DMoN definition to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DMoNVariant {
    /// Spektral `DMoNPool`: $X' = S^\top X$, $A' = S^\top A S$ unchanged;
    /// losses `modularity` with $m_g$ = the number of **stored entries** of
    /// the graph (`len(a.values)`: both directions of an edge, a self loop
    /// once) and `collapse` multiplied by `collapse_regularization`.
    #[default]
    Spektral,
    /// PyG `DMoNPooling`: $X' = \mathrm{selu}(S^\top X)$, $A'$ with its
    /// diagonal zeroed and normalised as MinCut's ($\varepsilon = 10^{-15}$);
    /// losses `spectral` (the modularity with the **weighted**
    /// $m_g = \sum_{ij} a_{ij} / 2$), `ortho` (as MinCut's) and `cluster`
    /// (the collapse term, **not** multiplied by any coefficient:
    /// `collapse_regularization` is unused). PyG's MLP has no activation
    /// between its layers: build it with [`Activation::Linear`].
    Pyg,
}

/// DMoNPool (Tsitsulin et al., *Graph Clustering with Graph Neural
/// Networks*, JMLR 2023; Spektral `DMoNPool`, PyG `DMoNPooling`), per graph
/// in disjoint mode.
///
/// Every graph $g$ is pooled to its own $K$ clusters:
/// $$S = \mathrm{softmax}(\mathrm{MLP}(X)), \quad X'_g = S_g^\top X_g, \quad A'_g = S_g^\top A_g S_g$$
/// (see [`DMoNVariant::Pyg`] for PyG's post-processing).
///
/// Losses (each the mean over the graphs of the batch), with $d$ the
/// weighted degrees (row sums of $A$) and $m_g$ the edge count of
/// [`DMoNVariant`]:
/// * `modularity` $= -\frac{1}{2m_g}\mathrm{Tr}\big(S_g^\top A_g S_g - \frac{(S_g^\top d_g)(d_g^\top S_g)}{2m_g}\big)$,
///   computed from the trace of the pooled block and the $K$-vector
///   $S_g^\top d_g$ (never the $N \times N$ modularity matrix). **An edgeless
///   graph** ($m_g = 0$), where the references give NaN, **contributes 0**.
/// * `collapse` $= c \,\big(\lVert \sum_{n \in g} S_n \rVert_2 \sqrt K / n_g - 1\big) \in [0, c(\sqrt K - 1)]$,
///   $c$ = `collapse_regularization`; an empty graph contributes 0.
///
/// Shapes: $X$ $N \times F$, $S$ $N \times K$ (returned as
/// [`crate::framework::Selection::Dense`]), $X'$ $(B K) \times F$, $A'$
/// block-diagonal with dense $K \times K$ blocks. Parameters `mlp.{j}.kernel`
/// / `mlp.{j}.bias` as [`super::MinCutPool`]'s. Memory
/// $O(\mathrm{nnz} + N F + N K + B K^2)$.
///
/// Degenerate graphs (see also [`crate::framework::Layer`]'s contract): a
/// graph smaller than $K$, a single node included, still gives $K$ pooled
/// nodes (their rows of $S$ sum to 1 over the clusters); an isolated node
/// or a zero-weight edge adds nothing to $A'$ and to the edge terms of the
/// losses; a self loop is a stored entry like any other. The softmax of the
/// MLP's logits is shifted by each row's maximum, so features of magnitude
/// $10^{30}$ give finite results in `f32` and `f64`; an output that truly
/// overflows is a [`crate::PoolError::NonFinite`].
///
/// ```
/// use graphpool::framework::Layer;
/// use graphpool::layers::DMoNPool;
/// use graphpool::nn::Activation;
/// use graphpool::DisjointBatch;
/// use ndarray::array;
/// use sprs::TriMat;
///
/// let mut t = TriMat::new((3, 3));
/// for (i, j) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
///     t.add_triplet(i, j, 1.0);
/// }
/// let x = array![[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]];
/// let b = DisjointBatch::single(x, t.to_csr())?;
/// let pool = DMoNPool::<f64>::new(2, 2, &[], Activation::Relu, 0.1, 0)?;
/// let p = pool.call(&b)?;
/// assert_eq!(p.batch.x().dim(), (2, 2));
/// assert!(p.losses.contains_key("modularity") && p.losses.contains_key("collapse"));
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DMoNPool<T: Scalar> {
    inner: DenseClustering<T>,
    collapse_regularization: f64,
    variant: DMoNVariant,
}

fn post(variant: DMoNVariant) -> PostProcess {
    match variant {
        DMoNVariant::Spektral => PostProcess {
            selu_x: false,
            normalize_eps: None,
        },
        DMoNVariant::Pyg => PostProcess {
            selu_x: true,
            normalize_eps: Some(PYG_NORM_EPS),
        },
    }
}

fn losses(variant: DMoNVariant, reg: f64) -> Vec<(&'static str, AuxLoss)> {
    match variant {
        DMoNVariant::Spektral => vec![
            ("modularity", AuxLoss::Modularity(EdgeCount::Stored)),
            ("collapse", AuxLoss::Collapse(reg)),
        ],
        DMoNVariant::Pyg => vec![
            ("spectral", AuxLoss::Modularity(EdgeCount::HalfWeight)),
            ("ortho", AuxLoss::Orthogonality),
            ("cluster", AuxLoss::Collapse(1.0)),
        ],
    }
}

impl<T: Scalar> DMoNPool<T> {
    /// A pool from `in_features` to `k` clusters per graph (Spektral's
    /// definition), MLP hidden widths `mlp_hidden` with `mlp_activation`,
    /// collapse loss weight `collapse_regularization` (Spektral's default
    /// 0.1); weights drawn from `seed`.
    ///
    /// # Errors
    /// [`crate::PoolError::InvalidConfig`] if `k` is 0, a hidden width is 0
    /// or `collapse_regularization` is not finite (in `T`).
    pub fn new(
        in_features: usize,
        k: usize,
        mlp_hidden: &[usize],
        mlp_activation: Activation,
        collapse_regularization: f64,
        seed: u64,
    ) -> Result<Self> {
        check_k(k, 1)?;
        check_coeff::<T>("collapse_regularization", collapse_regularization)?;
        let variant = DMoNVariant::Spektral;
        let inner = DenseClustering::new(
            "DMoNPool",
            in_features,
            k,
            mlp_hidden,
            mlp_activation,
            seed,
            post(variant),
            losses(variant, collapse_regularization),
        )?;
        Ok(Self {
            inner,
            collapse_regularization,
            variant,
        })
    }

    /// Follows `variant`'s definition (see [`DMoNVariant`]); this changes
    /// the loss names.
    pub fn with_variant(mut self, variant: DMoNVariant) -> Self {
        self.variant = variant;
        self.inner.set_post(post(variant));
        self.inner
            .set_losses(losses(variant, self.collapse_regularization));
        self
    }

    /// Number of clusters per graph $K$.
    pub fn k(&self) -> usize {
        self.inner.k()
    }

    /// The weight of the collapse loss (Spektral variant).
    pub fn collapse_regularization(&self) -> f64 {
        self.collapse_regularization
    }

    /// The reference definition followed.
    pub fn variant(&self) -> DMoNVariant {
        self.variant
    }
}

clustering_layer!(
    DMoNPool,
    "DMoNPool::<f64>::new(4, 2, &[], Activation::Linear, 0.1, 0)?"
);
