//! AsymCheegerCutPool: total variation plus an asymmetric-norm balance term.

use super::clustering::{
    check_coeff, check_k, clustering_layer, AuxLoss, DenseClustering, PostProcess,
};
use crate::error::Result;
use crate::nn::Activation;
use crate::scalar::Scalar;

/// AsymCheegerCutPool (Hansen & Bianchi, *Total Variation Graph Neural
/// Networks*, ICML 2023; Spektral `AsymCheegerCutPool`), per graph in
/// disjoint mode.
///
/// Every graph $g$ is pooled to its own $K \ge 2$ clusters:
/// $$S = \mathrm{softmax}(\mathrm{MLP}(X)), \quad X'_g = S_g^\top X_g, \quad A'_g = S_g^\top A_g S_g$$
/// (no post-processing of $A'$).
///
/// Losses (each the mean over the graphs of the batch):
/// * `total_variation` $= c_{tv} \frac{1}{2|E_g|}\sum_{(i,j) \in E_g} a_{ij} \lVert S_i - S_j\rVert_1$,
///   a sum over the stored entries $E_g$ of the graph (both directions of an
///   edge; $|E_g|$ = Spektral's `len(a.values)`). **An edgeless graph**
///   ($|E_g| = 0$, NaN in the reference) **contributes 0**.
/// * `balance` $= c_{b} \Big(1 - \frac{1}{n_g (K-1)} \sum_{i \in g,\,k} \mathrm{asym}(S_{ik} - q_{gk})\Big)$,
///   $\mathrm{asym}(x) = (K-1)x$ for $x \ge 0$, $-x$ otherwise, and $q_{gk}$ the
///   $(\lfloor n_g/K \rfloor + 1)$-th largest value of column $k$ within the
///   graph (a per-graph, per-cluster quantile:
///   [`crate::kernels::segment::segment_kth_largest`], ties to the smaller
///   node index, its gradient routed to the node holding it as TensorFlow's
///   `top_k` does). Range $[0, c_b]$ for $c_b \ge 0$. An empty graph
///   contributes 0.
///
/// $c_{tv}$ = `totvar_coeff`, $c_b$ = `balance_coeff` (Spektral's defaults
/// 1, 1). Shapes and parameters as [`super::MinCutPool`]'s. Memory
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
/// use graphpool::layers::AsymCheegerCutPool;
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
/// let pool = AsymCheegerCutPool::<f64>::new(2, 2, &[8], Activation::Relu, 1.0, 1.0, 0)?;
/// let p = pool.call(&b)?;
/// assert!((0.0..=1.0).contains(&p.losses["balance"]));
/// assert!(p.losses["total_variation"] >= 0.0);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AsymCheegerCutPool<T: Scalar> {
    inner: DenseClustering<T>,
    totvar_coeff: f64,
    balance_coeff: f64,
}

impl<T: Scalar> AsymCheegerCutPool<T> {
    /// A pool from `in_features` to `k` clusters per graph, MLP hidden widths
    /// `mlp_hidden` with `mlp_activation`, loss weights `totvar_coeff` and
    /// `balance_coeff`; weights drawn from `seed`.
    ///
    /// # Errors
    /// [`crate::PoolError::InvalidConfig`] if `k < 2` (the balance term
    /// divides by $K - 1$, and the reference's quantile does not exist for
    /// $K = 1$), a hidden width is 0 or a coefficient is not finite (in `T`).
    pub fn new(
        in_features: usize,
        k: usize,
        mlp_hidden: &[usize],
        mlp_activation: Activation,
        totvar_coeff: f64,
        balance_coeff: f64,
        seed: u64,
    ) -> Result<Self> {
        check_k(k, 2)?;
        check_coeff::<T>("totvar_coeff", totvar_coeff)?;
        check_coeff::<T>("balance_coeff", balance_coeff)?;
        let inner = DenseClustering::new(
            "AsymCheegerCutPool",
            in_features,
            k,
            mlp_hidden,
            mlp_activation,
            seed,
            PostProcess {
                selu_x: false,
                normalize_eps: None,
            },
            vec![
                ("total_variation", AuxLoss::TotalVariation(totvar_coeff)),
                ("balance", AuxLoss::AsymBalance(balance_coeff)),
            ],
        )?;
        Ok(Self {
            inner,
            totvar_coeff,
            balance_coeff,
        })
    }

    /// Number of clusters per graph $K$.
    pub fn k(&self) -> usize {
        self.inner.k()
    }

    /// The weight of the total-variation loss.
    pub fn totvar_coeff(&self) -> f64 {
        self.totvar_coeff
    }

    /// The weight of the balance loss.
    pub fn balance_coeff(&self) -> f64 {
        self.balance_coeff
    }
}

clustering_layer!(
    AsymCheegerCutPool,
    "AsymCheegerCutPool::<f64>::new(4, 2, &[], Activation::Linear, 1.0, 1.0, 0)?"
);
