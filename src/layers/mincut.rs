//! MinCutPool: spectral clustering by a learned soft assignment.

use super::clustering::{
    check_k, clustering_layer, AuxLoss, DenseClustering, PostProcess, PYG_NORM_EPS,
    SPEKTRAL_NORM_EPS,
};
use crate::error::Result;
use crate::nn::Activation;
use crate::scalar::Scalar;

/// Which reference's MinCutPool definition to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinCutVariant {
    /// Spektral `MinCutPool`: the pooled adjacency is normalised with
    /// $D_i = \sqrt{d_i} + 10^{-7}$ (`normalize_A`).
    #[default]
    Spektral,
    /// PyG `dense_mincut_pool`: the same pool and losses, normalised with
    /// $D_i = \sqrt{d_i} + 10^{-15}$ (PyG's `EPS`).
    Pyg,
}

/// MinCutPool (Bianchi et al., *Spectral Clustering with Graph Neural
/// Networks for Graph Pooling*, ICML 2020; Spektral `MinCutPool`, PyG
/// `dense_mincut_pool`), per graph in disjoint mode.
///
/// Every graph $g$ is pooled to its own $K$ clusters:
/// $$S = \mathrm{softmax}(\mathrm{MLP}(X)), \quad X'_g = S_g^\top X_g, \quad
/// A'_g = \tilde D^{-1/2} \tilde A_g \tilde D^{-1/2},\ \tilde A_g = S_g^\top A_g S_g
/// \text{ with its diagonal set to } 0,$$
/// where $\tilde D^{-1/2}$ is taken as $1/(\sqrt{\max(\tilde d_i, 0)} + \varepsilon)$,
/// $\varepsilon = 10^{-7}$ (Spektral) or $10^{-15}$ ([`MinCutVariant::Pyg`]);
/// so an isolated pooled node gets a zero row, never NaN. With a saturated
/// assignment (entries near $10^{-32}$) a pooled degree can be $10^{-31}$,
/// and the normalisation's backward pass then passes through values far
/// beyond `f32::MAX` on its way to a moderate gradient; it is computed in
/// `f64`, and such a graph goes through the rest of the assignment's VJP in
/// `f64` on its own, so `f32` gives `f64`'s gradient rounded, not
/// [`crate::PoolError::NonFinite`].
///
/// Shapes: $X$ is $N \times F$; $S$ is $N \times K$ (returned as
/// [`crate::framework::Selection::Dense`]); $X'$ is $(B K) \times F$; $A'$ is
/// block-diagonal with dense $K \times K$ blocks; every graph gives $K$
/// pooled nodes, an empty graph $K$ zero rows.
///
/// Losses (each the mean over the graphs of the batch):
/// * `mincut` $= -\mathrm{Tr}(S_g^\top A_g S_g) / \mathrm{Tr}(S_g^\top D_g S_g) \in [-1, 0]$
///   for non-negative weights, computed sparse as
///   $-\sum_{E_g} a_{ij}\langle S_i, S_j\rangle / \sum_{i \in g} d_i \lVert S_i\rVert^2$
///   ($D$ = weighted degrees, row sums). **An edgeless (or empty) graph**,
///   where both references give $0/0 = $ NaN, **contributes 0**.
/// * `ortho` $= \lVert S_g^\top S_g / \lVert S_g^\top S_g\rVert_F - I_K/\sqrt K\rVert_F \in [0, \sqrt 2]$;
///   an empty graph contributes 0.
///
/// The MLP has hidden layers `mlp_hidden` with `mlp_activation` and a final
/// linear layer of $K$ units followed by the softmax; parameters
/// `mlp.{j}.kernel` $(F_j, F_{j+1})$ and `mlp.{j}.bias`, glorot-uniform /
/// zeros. Memory $O(\mathrm{nnz} + N F + N K + B K^2)$; no $N \times N$ matrix.
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
/// use graphpool::layers::MinCutPool;
/// use graphpool::nn::Activation;
/// use graphpool::DisjointBatch;
/// use ndarray::array;
/// use sprs::TriMat;
///
/// // a path 0-1-2 and a single node
/// let mut t = TriMat::new((4, 4));
/// for (i, j) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
///     t.add_triplet(i, j, 1.0);
/// }
/// let x = array![[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [2.0, 2.0]];
/// let b = DisjointBatch::from_graph_ids(x, t.to_csr(), &[0, 0, 0, 1], 2)?;
/// let pool = MinCutPool::<f64>::new(2, 2, &[4], Activation::Relu, 0)?;
/// let p = pool.call(&b)?;
/// assert_eq!(p.batch.x().dim(), (4, 2)); // 2 graphs x 2 clusters
/// assert_eq!(p.batch.graph_ids(), vec![0, 0, 1, 1]);
/// let mincut = p.losses["mincut"];
/// assert!((-1.0..=0.0).contains(&mincut)); // the edgeless graph counts 0
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MinCutPool<T: Scalar> {
    inner: DenseClustering<T>,
    variant: MinCutVariant,
}

fn post(variant: MinCutVariant) -> PostProcess {
    PostProcess {
        selu_x: false,
        normalize_eps: Some(match variant {
            MinCutVariant::Spektral => SPEKTRAL_NORM_EPS,
            MinCutVariant::Pyg => PYG_NORM_EPS,
        }),
    }
}

impl<T: Scalar> MinCutPool<T> {
    /// A pool from `in_features` to `k` clusters per graph, with an MLP of
    /// hidden widths `mlp_hidden` (may be empty) and `mlp_activation`
    /// between them; weights drawn from `seed`.
    ///
    /// # Errors
    /// [`crate::PoolError::InvalidConfig`] if `k` is 0 or a hidden width is 0.
    pub fn new(
        in_features: usize,
        k: usize,
        mlp_hidden: &[usize],
        mlp_activation: Activation,
        seed: u64,
    ) -> Result<Self> {
        check_k(k, 1)?;
        let variant = MinCutVariant::Spektral;
        let inner = DenseClustering::new(
            "MinCutPool",
            in_features,
            k,
            mlp_hidden,
            mlp_activation,
            seed,
            post(variant),
            vec![
                ("mincut", AuxLoss::CutRatio),
                ("ortho", AuxLoss::Orthogonality),
            ],
        )?;
        Ok(Self { inner, variant })
    }

    /// Follows `variant`'s definition (see [`MinCutVariant`]).
    pub fn with_variant(mut self, variant: MinCutVariant) -> Self {
        self.variant = variant;
        self.inner.set_post(post(variant));
        self
    }

    /// Number of clusters per graph $K$.
    pub fn k(&self) -> usize {
        self.inner.k()
    }

    /// The reference definition followed.
    pub fn variant(&self) -> MinCutVariant {
        self.variant
    }
}

clustering_layer!(
    MinCutPool,
    "MinCutPool::<f64>::new(4, 2, &[], Activation::Linear, 0)?"
);
