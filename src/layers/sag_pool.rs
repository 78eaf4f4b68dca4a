//! SAGPool: keep the nodes with the largest graph-convolutional score.

use ndarray::{Array1, Array2, ArrayD, Axis};
use sprs::CsMat;

use super::selection_core::{
    selection_builders, Gating, KeepRule, Scores, SelectionCore, SelectionPoolCache,
};
use crate::batch::DisjointBatch;
use crate::error::{PoolError, Result};
use crate::framework::layer::{finite_gradients_given_x, LayerStamp};
use crate::framework::{Gradients, Layer, Pooled, PooledGrad, Selection, SrcPool};
use crate::kernels::gather::weighted_row_sum;
use crate::kernels::reduce_chunked;
use crate::kernels::sparse::{gcn_spmv_vjp_opt, spmm, transpose};
use crate::nn::{matmul, rng_from_seed, Initializer, Params};
use crate::scalar::Scalar;

/// The graph convolution that scores the nodes of a [`SAGPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SagScorer {
    /// Spektral's scorer: $y = \hat D^{-1/2}(A + I)\hat D^{-1/2} X w$ with the
    /// weighted degrees $\hat D$ of $A + I$; parameter `kernel` $(F, 1)$.
    #[default]
    Gcn,
    /// PyG's default `GNN=GraphConv`:
    /// $y_i = x_i w_{\text{root}} + \sum_{j : a_{ji} \text{ stored}} x_j w_{\text{rel}} + b$
    /// (sum over the incoming edges $j \to i$, PyG's `source_to_target`
    /// flow, with edge weights **ignored**: PyG's `SAGPooling` calls the GNN
    /// without them); parameters `gnn.lin_rel.kernel` $(F, 1)$,
    /// `gnn.lin_rel.bias` $(1)$, `gnn.lin_root.kernel` $(F, 1)$.
    GraphConv,
}

/// SAGPool (Lee et al., *Self-Attention Graph Pooling*, ICML 2019;
/// Spektral `SAGPool`, PyG `SAGPooling`):
/// $$y = \mathrm{GNN}(A, X), \qquad \mathbf{i} = \operatorname{top}_k(y), \qquad
/// X' = (X \odot \tanh(y))_{\mathbf{i}}, \qquad A' = A_{\mathbf{i},\mathbf{i}},$$
/// with $k = \lceil \text{ratio} \cdot n_g \rceil$ per graph. The GNN is
/// Spektral's GCN filter by default,
/// $y = \hat D^{-1/2}(A + I)\hat D^{-1/2} X w$ (`kernel` $(F, 1)$,
/// glorot-uniform, **not** normalised), or PyG's `GraphConv`
/// ([`SagScorer::GraphConv`]).
///
/// Selection, gating and connection are exactly [`super::TopKPool`]'s (the
/// same core): kept nodes in input order, ties by node index, induced
/// subgraph in CSR, [`Pooled::score`] the raw $y$, [`Pooled::selection`] a
/// [`Selection::Subset`] when asked for ([`SAGPool::with_return_selection`]).
///
/// Differences from the references, documented:
/// * Spektral normalises with $a_{ij} / (\sqrt{d_i} + 10^{-7}) / (\sqrt{d_j} + 10^{-7})$;
///   graphpool uses the exact $a_{ij} / \sqrt{d_i d_j}$ of
///   [`crate::kernels::sparse::gcn_filter`] (relative difference
///   $\approx 10^{-7}/\sqrt d$), and 0 instead of NaN for a degree $\le 0$.
/// * PyG's `SelectTopK` multiplies the GNN score by $p / |p|$ for its own
///   scalar weight $p$; only the sign of $p$ matters and graphpool fixes it to
///   $+1$.
/// * The GraphConv parameters are glorot-uniform (bias zero), not PyG's
///   initialisation; load weights by name to reproduce a PyG model.
///
/// Degenerate graphs: an empty graph keeps nothing, a single-node or
/// isolated node's GCN score is its own $x w$ (the filter is 1 on it), a
/// self loop adds its weight to the $+1$ of $A + I$, a zero-weight edge
/// is a stored entry of weight 0 (in $A'$ too), and a node whose degree
/// in $A + I$ cancels to $\le 0$ (negative weights) gets a filter row of 0:
/// every score is finite.
///
/// Gradients flow into $X$, the edge weights (through the GCN filter and
/// $A'$) and the parameters; the choice of nodes is piecewise constant.
///
/// ```
/// use graphpool::{layers::SAGPool, framework::Layer, DisjointBatch};
/// use ndarray::array;
/// use sprs::TriMat;
///
/// let mut t = TriMat::new((4, 4));
/// for (i, j) in [(0, 1), (1, 0), (2, 3), (3, 2)] {
///     t.add_triplet(i, j, 1.0);
/// }
/// let x = array![[1.0_f64, 0.0], [0.5, 1.0], [-1.0, 2.0], [0.0, 0.3]];
/// let b = DisjointBatch::from_graph_ids(x, t.to_csr(), &[0, 0, 1, 1], 2)?;
/// let p = SAGPool::<f64>::new(2, 0.5, 3)?.call(&b)?;
/// assert_eq!(p.batch.num_nodes(), 2); // one node of each graph
/// assert_eq!(p.batch.segments().sizes(), vec![1, 1]);
/// assert_eq!(p.score.unwrap().len(), 4);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SAGPool<T: Scalar> {
    core: SelectionCore,
    scorer: SagScorer,
    params: Params<T>,
}

/// Saved state of [`SAGPool`]'s forward pass.
#[derive(Debug, Clone)]
pub struct SagPoolCache<T: Scalar> {
    core: SelectionPoolCache<T>,
    scorer: ScorerCache<T>,
}

#[derive(Debug, Clone)]
enum ScorerCache<T: Scalar> {
    /// $\hat D^{-1/2}$ (the batch's, shared) and $X w$.
    Gcn(Box<(std::sync::Arc<Array1<T>>, Array1<T>)>),
    GraphConv,
}

const KERNEL: &str = "kernel";
const REL_KERNEL: &str = "gnn.lin_rel.kernel";
const REL_BIAS: &str = "gnn.lin_rel.bias";
const ROOT_KERNEL: &str = "gnn.lin_root.kernel";

/// The 0/1 pattern of `a` (every stored entry, explicit zeros included).
fn pattern<T: Scalar>(a: &CsMat<T>) -> CsMat<T> {
    let ip = a.indptr();
    let ip = ip.raw_storage();
    let base = ip[0];
    CsMat::new(
        a.shape(),
        ip.iter().map(|p| p - base).collect(),
        a.indices().to_vec(),
        vec![T::one(); a.nnz()],
    )
}

selection_builders!(SAGPool, "SAGPool::<f64>::new(4, 0.5, 0)?");

impl<T: Scalar> SAGPool<T> {
    /// A pool with Spektral's GCN scorer keeping `ratio` of the nodes of
    /// each graph, tanh gating, weights drawn from `seed`.
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] unless $0 < \text{ratio} \le 1$.
    pub fn new(in_features: usize, ratio: f64, seed: u64) -> Result<Self> {
        Self::new_with_scorer(in_features, ratio, SagScorer::Gcn, seed)
    }

    /// A pool with the given scorer (PyG's `GraphConv` or Spektral's GCN).
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] unless $0 < \text{ratio} \le 1$ (or for
    /// an `in_features` whose kernels cannot be allocated).
    pub fn new_with_scorer(
        in_features: usize,
        ratio: f64,
        scorer: SagScorer,
        seed: u64,
    ) -> Result<Self> {
        let core = SelectionCore::new(KeepRule::Ratio(ratio), Gating::Tanh)?;
        crate::nn::params::check_array_size::<T>("in_features", &[in_features, 1])?;
        let mut rng = rng_from_seed(seed);
        let mut params = Params::new();
        let kernel = |rng: &mut _| Initializer::GlorotUniform.sample(&[in_features, 1], rng);
        match scorer {
            SagScorer::Gcn => params.insert(KERNEL, kernel(&mut rng)),
            SagScorer::GraphConv => {
                params.insert(REL_KERNEL, kernel(&mut rng));
                params.insert(REL_BIAS, Initializer::Zeros.sample(&[1], &mut rng));
                params.insert(ROOT_KERNEL, kernel(&mut rng));
            }
        }
        Ok(Self {
            core,
            scorer,
            params,
        })
    }

    fn stamp(&self) -> LayerStamp {
        LayerStamp::of("SAGPool", &(self.core, self.scorer), &self.params)
    }

    /// The scorer.
    pub fn scorer(&self) -> SagScorer {
        self.scorer
    }

    /// The keep rule.
    pub fn keep(&self) -> KeepRule {
        self.core.keep
    }

    /// The gating.
    pub fn gating(&self) -> Gating {
        self.core.gating
    }

    fn kernel(&self, name: &str, f: usize) -> Result<ndarray::ArrayView2<'_, T>> {
        let w = self.params.matrix(name)?;
        if w.nrows() != f {
            return Err(PoolError::ShapeMismatch {
                what: format!("x for {name}"),
                expected: format!("{} columns", w.nrows()),
                got: format!("{f} columns"),
            });
        }
        Ok(w)
    }

    /// `pool` (the core's forward pass or pool) on this layer's scores, with
    /// the scorer's cache. The graph convolution's scores are left to the
    /// core ([`Scores::Gcn`]), which computes them in one pass with the
    /// selection and the gather when it can.
    fn with_scores<R>(
        &self,
        batch: &DisjointBatch<T>,
        pool: impl FnOnce(Scores<'_, T>) -> Result<R>,
    ) -> Result<(R, ScorerCache<T>)> {
        match self.scorer {
            SagScorer::Gcn => {
                let w = self.kernel(KERNEL, batch.num_features())?;
                let u = batch.gcn_deg_inv_sqrt();
                let mut xw = None;
                let out = pool(Scores::Gcn {
                    w: w.column(0),
                    u: u.view(),
                    xw: &mut xw,
                })?;
                let xw = xw.expect("the core leaves X w for the cache");
                Ok((out, ScorerCache::Gcn(Box::new((u.clone(), xw)))))
            }
            SagScorer::GraphConv => {
                let x = batch.x().view();
                let f = x.ncols();
                let w_rel = self.kernel(REL_KERNEL, f)?;
                let w_root = self.kernel(ROOT_KERNEL, f)?;
                let b = self.params.vector(REL_BIAS)?;
                let xr = matmul(x, w_rel, None);
                let pt = transpose(pattern(batch.a()).view()).matrix;
                let mut y = spmm(pt.view(), xr.view());
                y += &matmul(x, w_root, Some(b));
                let out = pool(Scores::Given(y.remove_axis(Axis(1))))?;
                Ok((out, ScorerCache::GraphConv))
            }
        }
    }
}

impl<T: Scalar> Layer<T> for SAGPool<T> {
    type Output = Pooled<T>;
    type Cache = SagPoolCache<T>;

    fn forward(&self, batch: &DisjointBatch<T>) -> Result<(Pooled<T>, Self::Cache)> {
        let stamp = self.stamp();
        let ((pooled, core), scorer) = self.with_scores(batch, |scores| {
            self.core.forward("SAGPool", stamp, batch, scores)
        })?;
        Ok((pooled, SagPoolCache { core, scorer }))
    }

    /// The forward pass without building the cache.
    fn call(&self, batch: &DisjointBatch<T>) -> Result<Pooled<T>> {
        let (pooled, _) =
            self.with_scores(batch, |scores| self.core.pool("SAGPool", batch, scores))?;
        Ok(pooled)
    }

    fn backward(
        &self,
        batch: &DisjointBatch<T>,
        cache: &Self::Cache,
        grad: &PooledGrad<T>,
    ) -> Result<Gradients<T>> {
        let mut core = self
            .core
            .backward(("SAGPool", self.stamp()), batch, &cache.core, grad)?;
        let x = batch.x().view();
        let f = x.ncols();
        let gy = core.y.view().insert_axis(Axis(1));
        let mut params = self.params.zeros_like();
        let mut edge_weights = std::mem::take(&mut core.edge_weights);
        // the score path is linear in X: dX = (direct path) + C V, written once
        let gx = match &cache.scorer {
            ScorerCache::Gcn(gcn) => {
                let (deg_inv_sqrt, xw) = &**gcn;
                let w = self.kernel(KERNEL, f)?;
                // y = A^ (X w): both gradients of the sparse product at once
                let (g_xw, g_a) = gcn_spmv_vjp_opt(
                    batch.a().view(),
                    deg_inv_sqrt.view(),
                    xw.view(),
                    core.y.view(),
                    (batch.segments(), Some(batch.symmetric_graphs())),
                    edge_weights.is_some(),
                );
                if let (Some(edge_weights), Some(g_a)) = (&mut edge_weights, g_a) {
                    *edge_weights += &g_a;
                }
                let gw = weighted_row_sum(x, g_xw.view()).insert_axis(Axis(1));
                params.accumulate_dim(KERNEL, gw.view())?;
                core.grad_x(g_xw.view().insert_axis(Axis(1)), w.t())
            }
            ScorerCache::GraphConv => {
                let w_rel = self.kernel(REL_KERNEL, f)?;
                let w_root = self.kernel(ROOT_KERNEL, f)?;
                let g_xr = spmm(pattern(batch.a()).view(), gy);
                let gw_rel = weighted_row_sum(x, g_xr.column(0)).insert_axis(Axis(1));
                let gw_root = weighted_row_sum(x, core.y.view()).insert_axis(Axis(1));
                let gb = reduce_chunked(
                    0..core.y.len(),
                    |r| core.y.slice(ndarray::s![r]).sum(),
                    |a, b| a + b,
                );
                params.accumulate_dim(REL_KERNEL, gw_rel.view())?;
                params.accumulate_dim(REL_BIAS, ndarray::arr1(&[gb]).view())?;
                params.accumulate_dim(ROOT_KERNEL, gw_root.view())?;
                let c = ndarray::concatenate![Axis(1), g_xr, gy];
                let v = ndarray::concatenate![Axis(0), w_rel.t(), w_root.t()];
                core.grad_x(c.view(), v.view())
            }
        };
        finite_gradients_given_x(
            "SAGPool",
            Gradients {
                x: gx.0,
                edge_weights,
                params,
            },
            gx.1,
        )
    }

    fn params(&self) -> &Params<T> {
        &self.params
    }

    fn set_param(&mut self, name: &str, value: ArrayD<T>) -> Result<()> {
        self.params.set(name, value)
    }
}

impl<T: Scalar> SrcPool<T> for SAGPool<T> {
    fn return_selection(&self) -> bool {
        self.core.return_selection
    }

    fn select(&self, batch: &DisjointBatch<T>) -> Result<(Selection<T>, Option<Array1<T>>)> {
        let (y, _) = self.with_scores(batch, |scores| Ok(scores.by_separate_passes(batch)))?;
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
