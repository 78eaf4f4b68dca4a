//! TopKPool (gPool): keep the nodes with the largest projection score.

use ndarray::{Array1, Array2, ArrayD, Axis};

use super::selection_core::{
    selection_builders, Gating, KeepRule, Scores, SelectionCore, SelectionPoolCache,
};
use crate::batch::DisjointBatch;
use crate::error::{PoolError, Result};
use crate::framework::layer::{finite_gradients_given_x, LayerStamp};
use crate::framework::{Gradients, Layer, Pooled, PooledGrad, Selection, SrcPool};
use crate::nn::{rng_from_seed, Initializer, Params};
use crate::scalar::Scalar;

/// Spektral's `K.l2_normalize` floor on $\|p\|^2$.
const L2_NORMALIZE_EPS: f64 = 1e-12;

/// TopKPool (Gao & Ji, *Graph U-Nets*, ICML 2019; Cangea et al., *Towards
/// Sparse Hierarchical Graph Classifiers*, 2018; Spektral `TopKPool`, PyG
/// `TopKPooling`):
/// $$y = \frac{X p}{\|p\|}, \qquad \mathbf{i} = \operatorname{top}_k(y), \qquad
/// X' = (X \odot \tanh(y))_{\mathbf{i}}, \qquad A' = A_{\mathbf{i},\mathbf{i}},$$
/// with $k = \lceil \text{ratio} \cdot n_g \rceil$ per graph (in `f32`, as both
/// references). Parameter `kernel` $p$ $(F, 1)$, glorot-uniform.
///
/// Shapes: $X$ $N \times F$ → $X'$ $K \times F$ with $K = \sum_g k_g$; $A'$ is
/// the induced subgraph (CSR, never densified); the pooled segments hold the
/// kept nodes of each graph. [`Pooled::selection`] is a [`Selection::Subset`]
/// (kept indices in input order, and their gates) when asked for
/// ([`TopKPool::with_return_selection`], Spektral's `return_selection`;
/// `None` by default, as there), and [`Pooled::score`] the raw $y$ of every
/// input node (PyG's `score`, always returned).
///
/// * Kept nodes keep their input order (Spektral's `tf.sort(s)`; PyG returns
///   them graph by graph in descending score order).
/// * Ties in $y$: the node with the smaller index wins. (PyG ranks by the
///   gated score $\tanh(y)$, which saturates to 1 in `f32` for $y \gtrsim 9$
///   and then ties in an unspecified order; Spektral pads graphs with
///   $-10^{20}$ before sorting, so scores below that lose to padding. Both
///   agree with graphpool elsewhere.)
/// * $\|p\|$ is Spektral's `l2_normalize`: $\sqrt{\max(\sum p^2, 10^{-12})}$
///   (PyG divides by $\|p\|$ and gives NaN for $p = 0$).
/// * An empty graph keeps nothing; a non-empty graph keeps at least one node
///   (a single-node graph keeps its node). $A'$ keeps self loops and
///   zero-weight edges between kept nodes as stored entries.
/// * A non-finite score is a [`PoolError::NonFiniteScore`].
/// * Gradients flow through the gates into $X$ and $p$, and through $A'$
///   into the kept edges; the choice of nodes is piecewise constant.
///
/// PyG's options: [`TopKPool::with_keep`] ([`KeepRule::Count`] is PyG's
/// integer `ratio`, [`KeepRule::MinScore`] its `min_score`, which also
/// changes the score to an unnormalised per-graph softmax used as the gate),
/// [`TopKPool::with_multiplier`] and [`TopKPool::with_gating`].
///
/// ```
/// use graphpool::{layers::TopKPool, framework::Layer, DisjointBatch};
/// use ndarray::{array, ArrayD, IxDyn};
/// use sprs::TriMat;
///
/// let mut t = TriMat::new((3, 3));
/// for (i, j) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
///     t.add_triplet(i, j, 1.0);
/// }
/// let b = DisjointBatch::single(array![[1.0_f64], [3.0], [2.0]], t.to_csr())?;
/// let mut pool = TopKPool::<f64>::new(1, 0.5, 0)?;
/// pool.set_param("kernel", ArrayD::from_elem(IxDyn(&[1, 1]), 2.0))?;
/// let p = pool.call(&b)?;
/// // y = x (p / |p| = 1): ceil(0.5 * 3) = 2 nodes kept, 1 and 2, in input order
/// assert_eq!(p.batch.x(), &array![[3.0 * 3.0_f64.tanh()], [2.0 * 2.0_f64.tanh()]]);
/// assert_eq!(p.batch.a().nnz(), 2);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TopKPool<T: Scalar> {
    core: SelectionCore,
    params: Params<T>,
}

selection_builders!(TopKPool, "TopKPool::<f64>::new(4, 0.5, 0)?");

impl<T: Scalar> TopKPool<T> {
    /// A pool keeping `ratio` of the nodes of each graph, tanh gating, for
    /// `in_features` features, the kernel drawn from `seed`.
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] unless $0 < \text{ratio} \le 1$ (or for
    /// an `in_features` whose kernel cannot be allocated).
    pub fn new(in_features: usize, ratio: f64, seed: u64) -> Result<Self> {
        let core = SelectionCore::new(KeepRule::Ratio(ratio), Gating::Tanh)?;
        crate::nn::params::check_array_size::<T>("in_features", &[in_features, 1])?;
        let mut params = Params::new();
        params.insert(
            "kernel",
            Initializer::GlorotUniform.sample(&[in_features, 1], &mut rng_from_seed(seed)),
        );
        Ok(Self { core, params })
    }

    fn stamp(&self) -> LayerStamp {
        LayerStamp::of("TopKPool", &self.core, &self.params)
    }

    /// The keep rule.
    pub fn keep(&self) -> KeepRule {
        self.core.keep
    }

    /// The gating.
    pub fn gating(&self) -> Gating {
        self.core.gating
    }

    /// The projection used for the score, $p / \|p\|$ (or $p$ itself for
    /// [`KeepRule::MinScore`]), and the norm divided by.
    fn projection(&self, f: usize) -> Result<(Array2<T>, Option<T>)> {
        let p = self.params.matrix("kernel")?;
        if p.nrows() != f {
            return Err(PoolError::ShapeMismatch {
                what: "x for kernel".into(),
                expected: format!("{} columns", p.nrows()),
                got: format!("{f} columns"),
            });
        }
        if self.core.keep.uses_softmax() {
            return Ok((p.to_owned(), None));
        }
        let sq = p.iter().fold(T::zero(), |s, &v| s + v * v);
        let norm = sq.max(T::c(L2_NORMALIZE_EPS)).sqrt();
        Ok((p.mapv(|v| v / norm), Some(norm)))
    }
}

impl<T: Scalar> Layer<T> for TopKPool<T> {
    type Output = Pooled<T>;
    type Cache = SelectionPoolCache<T>;

    fn forward(&self, batch: &DisjointBatch<T>) -> Result<(Pooled<T>, Self::Cache)> {
        let (p, _) = self.projection(batch.num_features())?;
        self.core
            .forward("TopKPool", self.stamp(), batch, Scores::Linear(p.column(0)))
    }

    /// The forward pass without building the cache.
    fn call(&self, batch: &DisjointBatch<T>) -> Result<Pooled<T>> {
        let (p, _) = self.projection(batch.num_features())?;
        self.core
            .pool("TopKPool", batch, Scores::Linear(p.column(0)))
    }

    fn backward(
        &self,
        batch: &DisjointBatch<T>,
        cache: &Self::Cache,
        grad: &PooledGrad<T>,
    ) -> Result<Gradients<T>> {
        let x = batch.x().view();
        let (p_hat, norm) = self.projection(x.ncols())?;
        // the score path y = X p^: dX += dy p^T (written with dX's direct
        // path) and dp^ = X^T dy (dy is 0 off the kept nodes), in one pass
        let core = self.core.backward_linear_score(
            ("TopKPool", self.stamp()),
            batch,
            cache,
            grad,
            p_hat.column(0),
        )?;
        let gp_hat = core.w.insert_axis(Axis(1));
        // through p / max(|p|, eps): (I - p^ p^T) / |p| above the floor
        let gp = match norm {
            None => gp_hat,
            Some(norm) => {
                let p = self.params.matrix("kernel")?;
                let sq = p.iter().fold(T::zero(), |s, &v| s + v * v);
                if sq > T::c(L2_NORMALIZE_EPS) {
                    let dot = (&p_hat * &gp_hat).sum();
                    (&gp_hat - &p_hat.mapv(|v| v * dot)).mapv(|v| v / norm)
                } else {
                    gp_hat.mapv(|v| v / norm)
                }
            }
        };
        let mut params = self.params.zeros_like();
        params.accumulate_dim("kernel", gp.view())?;
        finite_gradients_given_x(
            "TopKPool",
            Gradients {
                x: core.x,
                edge_weights: core.edge_weights,
                params,
            },
            core.first_bad,
        )
    }

    fn params(&self) -> &Params<T> {
        &self.params
    }

    fn set_param(&mut self, name: &str, value: ArrayD<T>) -> Result<()> {
        self.params.set(name, value)
    }
}

impl<T: Scalar> SrcPool<T> for TopKPool<T> {
    fn return_selection(&self) -> bool {
        self.core.return_selection
    }

    fn select(&self, batch: &DisjointBatch<T>) -> Result<(Selection<T>, Option<Array1<T>>)> {
        let (p, _) = self.projection(batch.num_features())?;
        let y = Scores::Linear(p.column(0)).by_separate_passes(batch);
        let (subset, _) = self.core.select(y.view(), batch.segments())?;
        Ok((Selection::Subset(subset), Some(y)))
    }

    /// The generic reduce of the selection, times PyG's multiplier.
    fn reduce(&self, batch: &DisjointBatch<T>, selection: &Selection<T>) -> Array2<T> {
        self.core.reduce(batch, selection)
    }

    fn pool(&self, batch: &DisjointBatch<T>) -> Result<Pooled<T>> {
        self.call(batch)
    }
}
