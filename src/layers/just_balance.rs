//! JustBalancePool: a balance-only clustering pool.

use super::clustering::{
    check_k, clustering_layer, AuxLoss, DenseClustering, PostProcess, SPEKTRAL_NORM_EPS,
};
use crate::error::Result;
use crate::nn::Activation;
use crate::scalar::Scalar;

/// JustBalancePool (Bianchi, *Simplifying Clustering with Graph Neural
/// Networks*, NLDL 2023; Spektral `JustBalancePool`), per graph in disjoint
/// mode.
///
/// Every graph $g$ is pooled to its own $K$ clusters:
/// $$S = \mathrm{softmax}(\mathrm{MLP}(X)), \quad X'_g = S_g^\top X_g, \quad
/// A'_g = \tilde D^{-1/2} \tilde A_g \tilde D^{-1/2},\ \tilde A_g = S_g^\top A_g S_g
/// \text{ with its diagonal set to } 0,$$
/// normalised as Spektral's `normalize_A`: $1/(\sqrt{\max(\tilde d_i, 0)} + 10^{-7})$.
/// $A$ is used **as given** (Spektral's docs suggest feeding
/// $I - \delta(I - \mathrm{N}(A))$; that preprocessing is the caller's).
///
/// Loss `balance` (the mean over the graphs of the batch):
/// $$-\sum_{k} \sqrt{(S_g^\top S_g)_{kk}} = -\sum_k \lVert S_{g,:k} \rVert_2,$$
/// divided by $\sqrt{n_g K}$ if `normalized_loss`. The reference takes the
/// **element-wise** square root of the whole $K \times K$ matrix
/// $S_g^\top S_g$ before the trace; only the diagonal reaches the trace, so
/// graphpool computes the $K$ column norms directly (segment sums of
/// $S \odot S$). Its range is $[-\sqrt{n_g K}, -\sqrt{n_g}]$
/// ($[-1, -1/\sqrt K]$ normalised). An empty graph contributes 0; a column
/// that underflowed to all zeros gets gradient 0 (not $\infty \cdot 0$).
///
/// Shapes and parameters as [`super::MinCutPool`]'s. Memory
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
/// use graphpool::layers::JustBalancePool;
/// use graphpool::nn::Activation;
/// use graphpool::DisjointBatch;
/// use ndarray::array;
///
/// let x = array![[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [2.0, 1.0]];
/// let b = DisjointBatch::single(x, sprs::CsMat::zero((4, 4)))?;
/// let pool = JustBalancePool::<f64>::new(2, 2, &[], Activation::Relu, true, 0)?;
/// let balance = pool.call(&b)?.losses["balance"];
/// assert!((-1.0..=-0.5_f64.sqrt()).contains(&balance));
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct JustBalancePool<T: Scalar> {
    inner: DenseClustering<T>,
    normalized_loss: bool,
}

impl<T: Scalar> JustBalancePool<T> {
    /// A pool from `in_features` to `k` clusters per graph, MLP hidden widths
    /// `mlp_hidden` with `mlp_activation`, the balance loss divided by
    /// $\sqrt{n_g K}$ if `normalized_loss`; weights drawn from `seed`.
    ///
    /// # Errors
    /// [`crate::PoolError::InvalidConfig`] if `k` is 0 or a hidden width is 0.
    pub fn new(
        in_features: usize,
        k: usize,
        mlp_hidden: &[usize],
        mlp_activation: Activation,
        normalized_loss: bool,
        seed: u64,
    ) -> Result<Self> {
        check_k(k, 1)?;
        let inner = DenseClustering::new(
            "JustBalancePool",
            in_features,
            k,
            mlp_hidden,
            mlp_activation,
            seed,
            PostProcess {
                selu_x: false,
                normalize_eps: Some(SPEKTRAL_NORM_EPS),
            },
            vec![("balance", AuxLoss::SqrtBalance(normalized_loss))],
        )?;
        Ok(Self {
            inner,
            normalized_loss,
        })
    }

    /// Number of clusters per graph $K$.
    pub fn k(&self) -> usize {
        self.inner.k()
    }

    /// Whether the balance loss is divided by $\sqrt{n_g K}$.
    pub fn normalized_loss(&self) -> bool {
        self.normalized_loss
    }
}

clustering_layer!(
    JustBalancePool,
    "JustBalancePool::<f64>::new(4, 2, &[], Activation::Linear, true, 0)?"
);
