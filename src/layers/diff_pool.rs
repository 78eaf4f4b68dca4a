//! DiffPool: a GCN-computed soft assignment of every node to the $K$
//! clusters of its own graph, with the link-prediction and entropy losses,
//! all in sparse per-graph form.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Arc;

use ndarray::{s, Array1, Array2, ArrayD, ArrayView1, ArrayView2, ArrayViewMut2, Axis, Zip};
use rayon::prelude::*;
use sprs::CsMatView;

use crate::batch::{DisjointBatch, Segments};
use crate::error::{PoolError, Result};
use crate::framework::layer::{check_pooled_grad, InputSignature, LayerStamp};
use crate::framework::runs::{graph_runs, DenseRunOutputs, Saved, XOut, XRows, RUN_NODES};
use crate::framework::{
    DenseAssignment, DenseConnectCache, Gradients, Layer, Losses, Pooled, PooledGrad, Selection,
    SrcPool,
};
use crate::kernels::recycle::Recycler;
use crate::kernels::rows::{add_row, dot, row_major};
use crate::kernels::segment::{
    segment_matmul_nn_combine, segment_matmul_tn, segment_matmul_tn_vjp,
    segment_matmul_tn_vjp_in_place, segment_mean, segment_sum,
};
use crate::kernels::sparse::{
    gcn_filter, map_entries, sddmm, sddmm_vjp, spmm_over, GcnOperator, RawCsr,
};
use crate::kernels::{for_each_node_row, map_nodes, reduce_chunked_rows, rows, CHUNK};
use crate::nn::{
    matmul_acc_piece, rng_from_seed, softmax_rows_in_place, softmax_rows_vjp_in_place,
    transpose_times, Activation, Initializer, Params,
};
use crate::scalar::Scalar;

/// Whose definition of DiffPool's auxiliary losses to use.
///
/// The forward pass ($S$, $X'$, $A'$) is the same; the references differ
/// only in the losses, each computed per graph and averaged over the graphs
/// of the batch:
///
/// | | `link_pred` | `entropy` |
/// |---|---|---|
/// | [`DiffPoolVariant::Spektral`] (default) | $\lVert A_g - S_g S_g^\top\rVert_F$ | $\frac{1}{n_g}\sum_{n}-\sum_k s_{nk}\ln(s_{nk} + 10^{-7})$ |
/// | [`DiffPoolVariant::Pyg`] | $\lVert A_g - S_g S_g^\top\rVert_F / n_g^2$ | $\frac{1}{n_g}\sum_{n}-\sum_k s_{nk}\ln(s_{nk} + 10^{-15})$ |
///
/// Spektral: `DiffPool.link_prediction_loss` (no normalisation) and
/// `entropy_loss` with `K.epsilon()`; PyG: `dense_diff_pool` with
/// `normalize=True` (divides by `adj.numel()`, which is $n_g^2$ for one
/// graph) and `1e-15`. PyG's padded batch mode would instead take one norm
/// over the whole padded batch divided by $B\,N_{\max}^2$; graphpool uses
/// the per-graph definition, as the conformance cases do.
///
/// ```
/// use graphpool::framework::Layer;
/// use graphpool::layers::{DiffPool, DiffPoolVariant};
/// use graphpool::nn::Activation;
/// use graphpool::DisjointBatch;
/// use ndarray::array;
/// use sprs::TriMat;
///
/// let mut t = TriMat::new((2, 2));
/// t.add_triplet(0, 1, 1.0);
/// t.add_triplet(1, 0, 1.0);
/// let b = DisjointBatch::single(array![[1.0, 0.0], [0.0, 1.0]], t.to_csr())?;
/// let spektral = DiffPool::<f64>::new(2, 2, None, Activation::Linear, 1)?;
/// let pyg = spektral.clone().with_variant(DiffPoolVariant::Pyg);
/// let (ls, lp) = (spektral.call(&b)?.losses, pyg.call(&b)?.losses);
/// // the same forward pass; PyG divides the link loss by n^2 = 4
/// assert!((ls["link_pred"] / 4.0 - lp["link_pred"]).abs() < 1e-12);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiffPoolVariant {
    /// Spektral 1.3's losses (the default).
    #[default]
    Spektral,
    /// PyTorch Geometric's `dense_diff_pool` losses.
    Pyg,
}

impl DiffPoolVariant {
    fn entropy_eps<T: Scalar>(self) -> T {
        match self {
            DiffPoolVariant::Spektral => T::c(1e-7),
            DiffPoolVariant::Pyg => T::c(1e-15),
        }
    }

    /// The factor applied to graph `g`'s Frobenius norm.
    fn link_scale<T: Scalar>(self, n: usize) -> T {
        match self {
            DiffPoolVariant::Spektral => T::one(),
            DiffPoolVariant::Pyg if n == 0 => T::zero(),
            DiffPoolVariant::Pyg => T::one() / (T::from_count(n) * T::from_count(n)),
        }
    }
}

/// DiffPool (Ying et al., *Hierarchical Graph Representation Learning with
/// Differentiable Pooling*, NeurIPS 2018; Spektral `DiffPool`, PyG
/// `dense_diff_pool`), sparse and per graph.
///
/// With the GCN filter $\hat A = \hat D^{-1/2}(A + I)\hat D^{-1/2}$ (never
/// stored: each entry is formed from $A$ as a product reads it,
/// [`GcnOperator`], with $\hat D^{-1/2}$ computed once per batch and kept
/// with it, [`DisjointBatch::gcn_deg_inv_sqrt`]):
/// $$Z = \sigma(\hat A X W_{\text{emb}}), \qquad S = \operatorname{softmax}(\hat A X W_{\text{pool}}),$$
/// $$X'_g = S_g^\top Z_g, \qquad A'_g = S_g^\top A_g S_g,$$
/// where $S$ is $N \times K$ and row $n$ holds node $n$'s weights over the
/// $K$ clusters **of its own graph** $g$ ([`DenseAssignment`]). The output
/// has $K$ nodes per graph ($X'$ is $BK \times C$), $A'$ is block-diagonal
/// with dense $K \times K$ blocks (every entry stored). $A'$ uses the raw
/// $A$, not the filter, as the references do.
///
/// Auxiliary losses (see [`DiffPoolVariant`] for PyG's), each the mean over
/// the $B$ graphs of the per-graph value:
/// * `link_pred` $= \lVert A_g - S_g S_g^\top\rVert_F$, computed without any
///   $n_g \times n_g$ matrix as
///   $$\lVert A_g - S_gS_g^\top\rVert_F^2 = \sum_{(i,j) \in E_g} w_{ij}\,(w_{ij} - 2\langle S_i, S_j\rangle) + \lVert S_g^\top S_g\rVert_F^2$$
///   (the stored entries $E_g$ of $A_g$ and the $K \times K$ Gram matrix),
///   the edge sum taken per node $i$ as
///   $\sum_j w_{ij}^2 - 2\langle S_i, (A S)_i\rangle$ from the $A S$ of the
///   connect step, so no pass over the edges gathers rows of $S$ for it
///   (the per-edge products, [`sddmm`], are formed only for the edge-weight
///   gradients); the square root of a value that rounding makes negative
///   is taken as 0, and its gradient at 0 as 0;
/// * `entropy` $= \frac{1}{n_g}\sum_{n \in g} -\sum_k s_{nk} \ln(s_{nk} + 10^{-7})$.
///
/// Shapes: input $X$ $N \times F$; parameters `kernel_emb` $(F, C)$ and
/// `kernel_pool` $(F, K)$, Keras glorot-uniform; `channels = None` means
/// $C = F$ (Spektral). Memory $O(\mathrm{nnz} + NF + NC + NK + BK^2)$.
///
/// Defined results for degenerate graphs: an empty graph gives $K$ zero rows,
/// a zero block and losses 0 (and still counts in the mean over graphs); a
/// single node or an isolated node gets the filter $1$ on itself. The
/// filter's degree normalisation is $\hat D^{-1/2}$, where Spektral's
/// `normalize_A` divides by $\sqrt{\hat d} + 10^{-7}$ (a relative difference
/// below $10^{-7}$ for degrees $\ge 1$), and a node whose degree is $\le 0$
/// (only with negative weights) gets 0 where Spektral gets NaN.
///
/// Errors of the forward pass: [`PoolError::ShapeMismatch`] if $X$ has not
/// $F$ columns; [`PoolError::NonFinite`] if an output overflows (features,
/// edge weights or weights too large for the float type).
///
/// ```
/// use graphpool::framework::Layer;
/// use graphpool::layers::DiffPool;
/// use graphpool::nn::Activation;
/// use graphpool::DisjointBatch;
/// use ndarray::array;
/// use sprs::TriMat;
///
/// // a path of 3 nodes and a single node, pooled to 2 clusters each
/// let mut t = TriMat::new((4, 4));
/// for (i, j) in [(0, 1), (1, 2)] {
///     t.add_triplet(i, j, 1.0);
///     t.add_triplet(j, i, 1.0);
/// }
/// let x = array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]];
/// let b = DisjointBatch::from_graph_ids(x, t.to_csr(), &[0, 0, 0, 1], 2)?;
/// let pool = DiffPool::<f64>::new(2, 2, Some(3), Activation::Relu, 7)?;
/// let out = pool.call(&b)?;
/// assert_eq!(out.batch.x().dim(), (4, 3)); // 2 graphs x 2 clusters, 3 channels
/// assert_eq!(out.batch.graph_ids(), vec![0, 0, 1, 1]);
/// assert!(out.losses["link_pred"] >= 0.0 && out.losses["entropy"] >= 0.0);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DiffPool<T: Scalar> {
    k: usize,
    channels: usize,
    activation: Activation,
    variant: DiffPoolVariant,
    params: Params<T>,
    /// The node budget of a run ([`DiffPool::with_run_nodes`]).
    run_nodes: usize,
    /// Whether [`Pooled::selection`] holds $S$
    /// ([`DiffPool::with_return_selection`]).
    return_selection: bool,
    /// The backward pass's large $N \times K$ and $N \times C$ buffers,
    /// kept for the next forward pass's $S$, $Z$'s pre-activation and
    /// $A S$ ([`DiffPool::release_buffers`]).
    recycler: Recycler<T>,
}

/// Saved state of [`DiffPool`]'s forward pass: the batch's, or each run's
/// for a batch pooled run by run ([`DiffPool::with_run_nodes`]).
#[derive(Debug, Clone)]
pub struct DiffPoolCache<T: Scalar> {
    saved: Saved<ForwardState<T>>,
    out_x_shape: [usize; 2],
    out_nnz: usize,
    input: InputSignature,
    stamp: LayerStamp,
}

/// What the backward pass of one batch (or run) reads: its filter's
/// $\hat D^{-1/2}$ (the batch's, shared), $S$, the pre-activation $\hat A X W_{\text{emb}}$
/// of $Z$, $A S$, and the loss terms. The first backward pass with the
/// cache takes $S$, the pre-activation and $A S$ out of it and overwrites
/// the first two with their gradients (so they are never held twice); a
/// second backward pass with the same cache forms them again from $\hat A$,
/// $A$ and $X$ (more passes, the same bits). Keeping them costs $N(2K + C)$
/// values between the passes and saves the backward pass a product with
/// $\hat A$ ($N \times F$ gathered rows), $\hat A X [W_{\text{pool}} \;
/// W_{\text{emb}}]$ and the product $A S$ ($N \times K$ gathered rows)
/// that the connect step's VJP and the link loss's read.
#[derive(Debug, Clone)]
struct ForwardState<T: Scalar> {
    deg_inv_sqrt: Arc<Array1<T>>,
    /// $S$, $\hat A X W_{\text{emb}}$ (the pre-activation of $Z$) and
    /// $A S$, for the first backward pass to take.
    forward: TakeOnce<Kept<T>>,
    link: LinkTerms<T>,
}

/// What a forward pass keeps for the first backward pass: $S$, the
/// pre-activation of $Z$, and $A S$.
type Kept<T> = (Array2<T>, Array2<T>, Array2<T>);

/// One batch's (or run's) forward pass, before its outputs are assembled.
struct Forward<T: Scalar> {
    s: Array2<T>,
    /// Its own, or written into the rows of a run given for it.
    x_out: XOut<T>,
    /// $S_g^\top A_g S_g$, stacked.
    blocks: Array2<T>,
    entropies: Array1<T>,
    link: LinkTerms<T>,
    /// The pre-activation of $Z$ and $A S$, when a cache is asked for.
    kept: Option<(Array2<T>, Array2<T>)>,
    deg_inv_sqrt: Arc<Array1<T>>,
}

/// Each loss's gradient per graph: the batch's loss gradient over $B$.
#[derive(Debug, Clone, Copy)]
struct LossGrads<T> {
    link: T,
    entropy: T,
}

/// The batch's outputs before they are checked: $X'$, the stacked
/// blocks, $S$, each graph's link norm and entropy, and the saved state.
struct Outputs<T: Scalar> {
    x_out: Array2<T>,
    blocks: Array2<T>,
    /// $S$ when returned ([`DiffPool::with_return_selection`])
    s: Option<Array2<T>>,
    norms: Vec<T>,
    entropies: Vec<T>,
    saved: Option<Saved<ForwardState<T>>>,
    /// Whether the runs found $X'$, the blocks and $S$ finite as they
    /// wrote them ([`Pooled::checked_by_runs`]); `false` for the whole batch.
    written_finite: bool,
}

/// $S$, $X'$ (written in the rows it was given) and, when asked for, the
/// pre-activation of $Z$ ([`DiffPool::assign_and_pool_into`]).
type AssignedAndPooled<'o, T> = (Array2<T>, &'o mut [T], Option<Array2<T>>);

/// A value that the first backward pass with a cache takes and then
/// overwrites (a second backward pass with the same cache forms it again).
#[derive(Debug)]
struct TakeOnce<V>(std::sync::Mutex<Option<V>>);

impl<V> TakeOnce<V> {
    fn new(v: V) -> Self {
        Self(std::sync::Mutex::new(Some(v)))
    }

    /// The value if no backward pass has taken it yet (a poisoned lock, a
    /// pass that panicked while taking it, counts as taken).
    fn take(&self) -> Option<V> {
        self.0.lock().ok().and_then(|mut v| v.take())
    }
}

impl<V: Clone> Clone for TakeOnce<V> {
    fn clone(&self) -> Self {
        let v = self.0.lock().ok().and_then(|v| v.clone());
        Self(std::sync::Mutex::new(v))
    }
}

/// The pieces of the sparse link-prediction loss.
#[derive(Debug, Clone)]
struct LinkTerms<T: Scalar> {
    /// $\langle S_i, S_j\rangle$ for every stored entry of $A$ (kept for
    /// the edge-weight gradients only: empty in a cache when they are off).
    p: Array1<T>,
    /// $S_g^\top S_g$, stacked $(BK) \times K$.
    gram: Array2<T>,
    /// $\lVert A_g - S_g S_g^\top\rVert_F$ per graph.
    norms: Vec<T>,
}

const KERNEL_EMB: &str = "kernel_emb";
const KERNEL_POOL: &str = "kernel_pool";

impl<T: Scalar> DiffPool<T> {
    /// A DiffPool from `in_features` to `k` clusters per graph and
    /// `channels` output features (`None`: as many as the input, Spektral's
    /// default), embedding activation `activation`, weights drawn from `seed`
    /// (Keras glorot-uniform, `kernel_emb` first).
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] if `k` or `channels` is 0, or if the
    /// weights or a $K \times K$ block cannot be allocated.
    pub fn new(
        in_features: usize,
        k: usize,
        channels: Option<usize>,
        activation: Activation,
        seed: u64,
    ) -> Result<Self> {
        if k == 0 {
            return Err(PoolError::InvalidConfig {
                name: "k".into(),
                value: "0".into(),
                expected: "a positive number of clusters per graph".into(),
            });
        }
        if channels == Some(0) {
            return Err(PoolError::InvalidConfig {
                name: "channels".into(),
                value: "0".into(),
                expected: "a positive number of output channels, or None for as many as the input"
                    .into(),
            });
        }
        let channels = channels.unwrap_or(in_features);
        let size = crate::nn::params::check_array_size::<T>;
        size("channels", &[in_features, channels])?;
        size("k", &[in_features, k])?;
        size("k", &[k, k])?;
        let mut rng = rng_from_seed(seed);
        let mut params = Params::new();
        params.insert(
            KERNEL_EMB,
            Initializer::GlorotUniform.sample(&[in_features, channels], &mut rng),
        );
        params.insert(
            KERNEL_POOL,
            Initializer::GlorotUniform.sample(&[in_features, k], &mut rng),
        );
        Ok(Self {
            k,
            channels,
            activation,
            variant: DiffPoolVariant::Spektral,
            params,
            run_nodes: RUN_NODES,
            return_selection: false,
            recycler: Recycler::default(),
        })
    }

    /// Uses the losses of `variant` (see [`DiffPoolVariant`]).
    pub fn with_variant(mut self, variant: DiffPoolVariant) -> Self {
        self.variant = variant;
        self
    }

    /// Pools a batch of small graphs run by run: in runs of consecutive
    /// whole graphs of at most `nodes` nodes together, each run as a batch
    /// of its own (with its slice of the batch's $\hat D^{-1/2}$), in parallel,
    /// so that every step reads what the previous one wrote while it is
    /// still in cache. A batch with a graph larger than `nodes`, or that
    /// fits in one run, is pooled whole; `nodes = 0` pools every batch
    /// whole. Default [`RUN_NODES`].
    ///
    /// The outputs, losses and gradients of $X$ and of the edge weights
    /// are the whole batch's, bit for bit, whatever the budget (every one
    /// depends on its own graph alone). The parameters' gradients are sums
    /// over the nodes of the batch: run by run, each run's sum is added in
    /// run order, so they can differ from the whole batch's in the last
    /// bits; for a given budget they never depend on the thread count.
    ///
    /// ```
    /// use graphpool::framework::Layer;
    /// use graphpool::layers::DiffPool;
    /// use graphpool::nn::Activation;
    /// use graphpool::DisjointBatch;
    /// use ndarray::Array2;
    /// use sprs::CsMat;
    /// // three graphs of two nodes joined by one edge each
    /// let a = CsMat::new((6, 6), vec![0, 1, 2, 3, 4, 5, 6], vec![1, 0, 3, 2, 5, 4], vec![1.0; 6]);
    /// let x = Array2::from_shape_fn((6, 4), |(i, j)| ((i * 4 + j) % 7) as f64 / 7.0);
    /// let batch = DisjointBatch::from_offsets(x, a, vec![0, 2, 4, 6])?;
    /// let pool = DiffPool::<f64>::new(4, 2, None, Activation::Relu, 0)?;
    /// // three runs of one graph each, then the whole batch
    /// let by_runs = pool.clone().with_run_nodes(2).call(&batch)?;
    /// let whole = pool.with_run_nodes(0).call(&batch)?;
    /// assert_eq!(by_runs.batch.x(), whole.batch.x());
    /// assert_eq!(by_runs.batch.a(), whole.batch.a());
    /// assert_eq!(by_runs.losses, whole.losses);
    /// # Ok::<(), graphpool::PoolError>(())
    /// ```
    pub fn with_run_nodes(mut self, nodes: usize) -> Self {
        self.run_nodes = nodes;
        self
    }

    /// The node budget of a run ([`DiffPool::with_run_nodes`]).
    pub fn run_nodes(&self) -> usize {
        self.run_nodes
    }

    super::return_selection_methods!(
        "DiffPool::<f64>::new(4, 2, None, Activation::Relu, 0)?",
        return_selection
    );

    /// The bytes of the buffers the layer keeps from its last backward
    /// pass for its next forward pass to write over.
    ///
    /// Large matrices (of [`crate::kernels::rows::MAPPED_FROM`] bytes or
    /// more, from about 130,000 nodes at $C = 64$ in `f32`) are mappings of
    /// their own, which `free` returns to the kernel and which the next
    /// pass would take again as fresh memory, zeroed page by page. The
    /// backward pass therefore keeps the buffers of the gradients of $Z$'s
    /// and $S$'s pre-activations (when $C = F$, where $X$'s gradient is
    /// formed in place) and of $\hat A^\top$ times the latter (one
    /// $N \times C$, two $N \times K$), and the next forward pass writes
    /// $Z$'s pre-activation, $S$ and $A S$ over them: on `single-1e6`,
    /// about 390 MB of the 720 MB of fresh memory a forward and backward
    /// pass took (huge-page faults per pass 339 → 154). The results are
    /// the same bits. They are held only until that forward pass (which
    /// releases them all if its batch needs matrices they do not fit), so
    /// a training step's peak memory is unchanged; a layer that only runs
    /// forward never keeps any. [`DiffPool::release_buffers`] frees them,
    /// and a clone starts without them.
    ///
    /// ```
    /// use graphpool::framework::PooledGrad;
    /// use graphpool::layers::DiffPool;
    /// use graphpool::nn::Activation;
    /// use graphpool::framework::Layer;
    /// use graphpool::DisjointBatch;
    /// use ndarray::array;
    /// use sprs::TriMat;
    /// let mut t = TriMat::new((3, 3));
    /// for (i, j) in [(0, 1), (1, 2)] {
    ///     t.add_triplet(i, j, 1.0);
    ///     t.add_triplet(j, i, 1.0);
    /// }
    /// let x = array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]];
    /// let b = DisjointBatch::from_graph_ids(x, t.to_csr(), &[0, 0, 0], 1)?;
    /// let pool = DiffPool::<f64>::new(2, 2, None, Activation::Relu, 7)?;
    /// let (out, cache) = pool.forward(&b)?;
    /// let mut grad = PooledGrad::zeros(&out);
    /// grad.x.fill(1.0);
    /// pool.backward(&b, &cache, &grad)?;
    /// // a small batch's buffers are left to the allocator
    /// assert_eq!(pool.kept_buffer_bytes(), 0);
    /// pool.release_buffers();
    /// # Ok::<(), graphpool::PoolError>(())
    /// ```
    pub fn kept_buffer_bytes(&self) -> usize {
        self.recycler.kept_bytes()
    }

    /// Frees the buffers kept for the next forward pass
    /// ([`DiffPool::kept_buffer_bytes`]), for a caller that will not run
    /// the layer again soon.
    pub fn release_buffers(&self) {
        self.recycler.release();
    }

    /// Clusters per graph $K$.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output channels $C$.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The loss definitions in use.
    pub fn variant(&self) -> DiffPoolVariant {
        self.variant
    }

    fn stamp(&self) -> LayerStamp {
        let config = (self.k, self.channels, self.activation, self.variant);
        LayerStamp::of("DiffPool", &config, &self.params)
    }

    fn check_input(&self, batch: &DisjointBatch<T>) -> Result<()> {
        let w = self.params.matrix(KERNEL_POOL)?;
        if w.nrows() != batch.num_features() {
            return Err(PoolError::ShapeMismatch {
                what: "x for DiffPool".into(),
                expected: format!("{} columns (the layer's in_features)", w.nrows()),
                got: format!("{} columns", batch.num_features()),
            });
        }
        Ok(())
    }

    /// The GCN passes with the kernels `names`: $(\hat A X) W$ for each, the
    /// filtered features formed block by block and never held whole
    /// ([`GcnOperator::spmm_times`]: one pass over $\hat A$ and $X$ for all kernels).
    fn gnn(
        &self,
        filter: GcnOperator<T>,
        x: ArrayView2<T>,
        names: &[&str],
    ) -> Result<Vec<Array2<T>>> {
        let ws = names
            .iter()
            .map(|n| self.params.matrix(n))
            .collect::<Result<Vec<_>>>()?;
        Ok(filter.spmm_times(x, &ws))
    }

    /// $S = \operatorname{softmax}(\hat A X W_{\text{pool}})$ and
    /// $\hat A X W_{\text{emb}}$ (the pre-activation of $Z$), in one pass.
    fn assign_and_embed(
        &self,
        filter: GcnOperator<T>,
        x: ArrayView2<T>,
    ) -> Result<(Array2<T>, Array2<T>)> {
        let mut outs = self.gnn(filter, x, &[KERNEL_POOL, KERNEL_EMB])?;
        let z_pre = outs.pop().expect("two kernels");
        let mut s = outs.pop().expect("two kernels");
        softmax_rows_in_place(&mut s);
        Ok((s, z_pre))
    }

    /// $S = \operatorname{softmax}(\hat A X W_{\text{pool}})$ and the pooled
    /// features $X'_g = S_g^\top \sigma(\hat A X W_{\text{emb}})_g$, without
    /// ever holding $Z = \sigma(\hat A X W_{\text{emb}})$ ($N \times C$).
    ///
    /// The nodes are taken in the pieces of [`segment_matmul_tn`]
    /// ([`Segments::chunks`] of [`CHUNK`] nodes, counted from each graph's
    /// first node), in parallel: a piece forms its rows of $\hat A X$
    /// ([`GcnOperator::spmm_rows`]), writes its rows of $S$, keeps its rows of $Z$ in a
    /// scratch and reduces $S_p^\top Z_p$ ([`rows::outer_sum`]); a graph's
    /// pieces are then added in order. Every row of $S$ and $Z$ has the bits
    /// of [`GcnOperator::spmm_times`] (a row's product does not depend on its block) and
    /// $X'$ those of [`segment_matmul_tn`] (same pieces, same order), so the
    /// result is the unfused one's, bit for bit, on any thread count. With
    /// `keep_z` each piece also writes its rows of the pre-activation
    /// $\hat A X W_{\text{emb}}$ into an $N \times C$ matrix, for the cache.
    ///
    /// $X'$ is written into `out` ($BK \times C$ entries, row-major, not
    /// yet written: a run's rows of the batch's, or a matrix of its own)
    /// and returned written, each graph's block zeroed by its first piece
    /// just before its sums. `weights`: $W_{\text{pool}}$ and
    /// $W_{\text{emb}}$.
    ///
    /// # Panics
    /// If `out` does not have $BKC$ entries.
    fn assign_and_pool_into<'o>(
        &self,
        filter: GcnOperator<T>,
        (x, segs): (ArrayView2<T>, &Segments),
        (w_pool, w_emb): (ArrayView2<T>, ArrayView2<T>),
        keep_z: bool,
        out: &'o mut [MaybeUninit<T>],
    ) -> AssignedAndPooled<'o, T> {
        let (wp, we) = (row_major(&w_pool), row_major(&w_emb));
        let (n, f) = x.dim();
        let (k, c) = (w_pool.ncols(), w_emb.ncols());
        let b = segs.num_graphs();
        let act = self.activation;
        // rows `nodes`: their rows of S into `s_rows`, S_p^T Z_p into `part`
        let piece = |nodes: Range<usize>,
                     s_rows: &mut [T],
                     z_rows: &mut [T],
                     part: &mut [MaybeUninit<T>]| {
            let m = nodes.len();
            let mut fx = vec![T::zero(); m * f];
            filter.spmm_rows(x, nodes, &mut fx);
            rows::rows_times(&fx, f, &wp, k, None, false, s_rows);
            rows::softmax_rows_slice(s_rows, k);
            let mut z = vec![T::zero(); m * c];
            if c > 0 {
                rows::rows_times(&fx, f, &we, c, None, false, &mut z);
            }
            // the pre-activation kept for the backward pass when asked
            z_rows.copy_from_slice(&z[..z_rows.len()]);
            act.apply_in_place(&mut z);
            rows::outer_sum_into(s_rows, k, &z, c, part);
        };
        assert_eq!(out.len(), b * k * c, "B K C entries of X'");
        // every entry of S and Z's pre-activation is written below: a
        // buffer kept from the last backward pass serves as well as fresh
        let mut s = self.recycler.take_or_fresh(n, k);
        let mut z_pre = keep_z.then(|| self.recycler.take_or_fresh(n, c));
        // the pieces in node order (an empty graph has one, empty); a
        // graph's first piece writes its block of X', the others return a
        // partial
        let offsets = segs.offsets();
        let mut tasks = Vec::with_capacity(b);
        {
            let mut s_rest = s.as_slice_mut().expect("fresh matrix");
            let mut z_rest: &mut [T] = match &mut z_pre {
                Some(z) => z.as_slice_mut().expect("fresh matrix"),
                None => &mut [],
            };
            let mut out_rest = &mut *out;
            for item in segs.chunks(CHUNK) {
                let block = (item.nodes.start == offsets[item.graph]).then(|| {
                    let (block, tail) = std::mem::take(&mut out_rest).split_at_mut(k * c);
                    out_rest = tail;
                    block
                });
                let (rows, tail) = std::mem::take(&mut s_rest).split_at_mut(item.nodes.len() * k);
                s_rest = tail;
                let z_len = if keep_z { item.nodes.len() * c } else { 0 };
                let (z_rows, tail) = std::mem::take(&mut z_rest).split_at_mut(z_len);
                z_rest = tail;
                tasks.push((item.graph, item.nodes, rows, z_rows, block));
            }
            // every graph's block goes to its first piece, which writes it
            assert!(out_rest.is_empty(), "a first piece for every graph");
        }
        let partials: Vec<(usize, Option<Vec<T>>)> = tasks
            .into_par_iter()
            .map(|(g, nodes, rows, z_rows, block)| match block {
                Some(block) => {
                    piece(nodes, rows, z_rows, block);
                    (g, None)
                }
                None => {
                    let mut part = vec![MaybeUninit::uninit(); k * c];
                    piece(nodes, rows, z_rows, &mut part);
                    // SAFETY: `outer_sum_into` wrote every entry of `part`
                    (g, Some(unsafe { rows::assume_written(part) }))
                }
            })
            .collect();
        // SAFETY: the blocks cover `out` (asserted above), and each was
        // written whole by its graph's first piece (`outer_sum_into`)
        let out = unsafe { rows::assume_written_slice(out) };
        for (g, part) in partials {
            if let Some(part) = part {
                add_row(&mut out[g * k * c..(g + 1) * k * c], &part);
            }
        }
        (s, out, z_pre)
    }

    /// The forward pass, with its cache when `keep`: whole, or run by run
    /// ([`DiffPool::with_run_nodes`]).
    fn run(
        &self,
        batch: &DisjointBatch<T>,
        keep: bool,
    ) -> Result<(Pooled<T>, Option<DiffPoolCache<T>>)> {
        self.check_input(batch)?;
        let segs = batch.segments();
        // the batch's filter normalisation, kept with it (a run takes its slice)
        batch.gcn_deg_inv_sqrt();
        let Outputs {
            x_out,
            blocks,
            s,
            norms,
            entropies,
            saved,
            written_finite,
        } = match graph_runs(segs, self.run_nodes) {
            Some(runs) => self.forward_runs(batch, &runs, keep)?,
            None => self.forward_whole(batch, keep)?,
        };
        let a_out = DenseAssignment::blocks_into_csr(blocks);
        let losses = self.losses_from(segs, &norms, &entropies);
        let out_segments = Segments::uniform(segs.num_graphs(), self.k);
        let cache = saved.map(|saved| DiffPoolCache {
            saved,
            out_x_shape: [x_out.nrows(), x_out.ncols()],
            out_nnz: a_out.nnz(),
            input: InputSignature::of(batch),
            stamp: self.stamp(),
        });
        Ok((
            Pooled::checked_by_runs(
                "DiffPool",
                written_finite,
                x_out,
                a_out,
                out_segments,
                s.map(|s| Selection::Dense(DenseAssignment { s })),
                losses,
            )?,
            cache,
        ))
    }

    /// The whole batch's forward pass.
    fn forward_whole(&self, batch: &DisjointBatch<T>, keep: bool) -> Result<Outputs<T>> {
        let fw = self.compute(batch, keep, None)?;
        let norms = fw.link.norms.clone();
        let (s, saved) = match fw.kept {
            Some((z_pre, a_s)) => {
                // the cache keeps S; the output, when it returns S, gets a
                // copy in fresh memory, written in parallel
                let s = self.return_selection.then(|| rows::fresh_copy(fw.s.view()));
                let state = ForwardState {
                    deg_inv_sqrt: fw.deg_inv_sqrt,
                    forward: TakeOnce::new((fw.s, z_pre, a_s)),
                    link: fw.link,
                };
                (s, Some(Saved::Whole(Box::new(state))))
            }
            None => (self.return_selection.then_some(fw.s), None),
        };
        Ok(Outputs {
            x_out: fw.x_out.into_own().expect("no rows given for X'"),
            blocks: fw.blocks,
            s,
            norms,
            entropies: fw.entropies.to_vec(),
            saved,
            written_finite: false,
        })
    }

    /// [`DiffPool::forward_whole`] run by run: each run of `runs` pooled as
    /// a batch of its own, in parallel, its outputs copied into the
    /// batch's.
    fn forward_runs(
        &self,
        batch: &DisjointBatch<T>,
        runs: &[Range<usize>],
        keep: bool,
    ) -> Result<Outputs<T>> {
        let (outputs, states) = DenseRunOutputs::by_runs(
            batch.segments(),
            runs,
            self.k,
            self.channels,
            2,
            self.return_selection,
            |r, mut rows| {
                // X' straight into the batch's rows
                let fw = self.compute(&batch.graph_run(r), keep, Some(rows.x_rows()))?;
                let filled = rows.fill(
                    fw.x_out,
                    fw.blocks.view(),
                    fw.s.view(),
                    &[ArrayView1::from(&fw.link.norms), fw.entropies.view()],
                );
                let state = fw.kept.map(|(z_pre, a_s)| ForwardState {
                    deg_inv_sqrt: fw.deg_inv_sqrt,
                    forward: TakeOnce::new((fw.s, z_pre, a_s)),
                    link: fw.link,
                });
                Ok::<_, PoolError>((filled, state))
            },
        )?;
        let DenseRunOutputs {
            x_out,
            blocks,
            s,
            mut per_graph,
            finite,
        } = outputs;
        let entropies = per_graph.pop().expect("two values per graph");
        let norms = per_graph.pop().expect("two values per graph");
        Ok(Outputs {
            x_out,
            blocks,
            s,
            norms,
            entropies,
            saved: keep.then_some(Saved::Runs(states)),
            written_finite: finite,
        })
    }

    /// $S$, $X'$, the blocks $S_g^\top A_g S_g$, the per-graph entropies and
    /// link terms of one batch (or run), and the pre-activation of $Z$ if
    /// `keep`; $X'$ written into `x_rows` if given (a run's rows of the
    /// batch's), else returned.
    fn compute(
        &self,
        batch: &DisjointBatch<T>,
        keep: bool,
        x_rows: Option<XRows<'_, T>>,
    ) -> Result<Forward<T>> {
        let (x, a, segs) = (batch.x().view(), batch.a().view(), batch.segments());
        let deg_inv_sqrt = Arc::clone(batch.gcn_deg_inv_sqrt());
        let filter = GcnOperator::new(&a, as_slice(&deg_inv_sqrt))?;
        let weights = (
            self.params.matrix(KERNEL_POOL)?,
            self.params.matrix(KERNEL_EMB)?,
        );
        let mut assigned = None;
        let bk_c = (segs.num_graphs() * self.k, weights.1.ncols());
        let x_out = XOut::write(x_rows, bk_c, |out| {
            let (s, x_out, z_pre) =
                self.assign_and_pool_into(filter, (x, segs), weights, keep, out);
            assigned = Some((s, z_pre));
            x_out
        });
        let (s, z_pre) = assigned.expect("S formed with X'");
        let assignment = DenseAssignment { s };
        // A S, for the connect step and the link loss, kept for the
        // backward pass with the cache
        let connect = DenseConnectCache {
            a_s: spmm_over(
                a,
                assignment.s.view(),
                self.recycler.take_or_fresh(a.rows(), self.k),
            ),
        };
        let (blocks, connect) = assignment.connect_blocks_from(connect, segs);
        let s = assignment.s;
        let link = link_terms(
            a,
            s.view(),
            connect.a_s.view(),
            segs,
            batch.edge_weight_grad(),
        );
        let kept = z_pre.map(|z_pre| (z_pre, connect.a_s));
        let entropies = entropy_per_graph(s.view(), segs, self.variant.entropy_eps());
        Ok(Forward {
            s,
            x_out,
            blocks,
            entropies,
            link,
            kept,
            deg_inv_sqrt,
        })
    }

    /// The backward pass of one batch (or run) of `batch` from its forward
    /// state, the output gradients `g_x` ($\bar X'$) and `g_blocks` (the
    /// pooled blocks'), and each loss's per-graph gradient; the gradients
    /// are not checked.
    fn backward_state(
        &self,
        batch: &DisjointBatch<T>,
        state: &ForwardState<T>,
        g_x: ArrayView2<'_, T>,
        g_blocks: ArrayView2<'_, T>,
        loss_grads: LossGrads<T>,
    ) -> Result<Gradients<T>> {
        let (x, a, segs) = (batch.x().view(), batch.a().view(), batch.segments());
        let filter = GcnOperator::new(&a, as_slice(&state.deg_inv_sqrt))?;

        // S, Z's pre-activation and A S as the forward pass kept them, or,
        // once the first backward pass has taken them, formed again (the
        // same bits). X' = S_g^T Z_g: Z is used for S's gradient and the
        // activation's, and (for an activation whose derivative is a
        // function of its output) overwritten by the gradient of its
        // pre-activation, so that the two never coexist
        let (assignment, z_pre, connect) = match state.forward.take() {
            Some((s, z_pre, a_s)) => (DenseAssignment { s }, z_pre, DenseConnectCache { a_s }),
            None => {
                let (s, z_pre) = self.assign_and_embed(filter, x)?;
                let assignment = DenseAssignment { s };
                let connect = assignment.connect_cache(a);
                (assignment, z_pre, connect)
            }
        };
        let s = assignment.s.view();
        let act = self.activation;
        let (mut gs, g_zpre) = if act.derivative_from_output_only() {
            // the gradient of Z's pre-activation written over Z itself
            let mut z = z_pre;
            act.forward_inplace(&mut z);
            let gs = segment_matmul_tn_vjp_in_place(s, &mut z, segs, g_x, |row, dy| {
                act.grad_from_output_in_place(row, dy)
            });
            (gs, z)
        } else {
            let z = act.forward(z_pre.view());
            let (gs, gz) = segment_matmul_tn_vjp(s, z.view(), segs, g_x);
            (gs, act.vjp(z_pre.view(), z.view(), gz.view()))
        };
        // A' = S_g^T A_g S_g
        // the cache matches the batch's edge-weight setting (signature checked)
        let edge_grad = batch.edge_weight_grad();
        let symmetric = batch.symmetric_graphs();
        let all_symmetric = symmetric.iter().all(|&y| y);
        let mut ga = assignment
            .connect_blocks_vjp_add(a, segs, symmetric, &connect, g_blocks, edge_grad, &mut gs);
        // the link loss's edge term takes A S again when every graph is
        // symmetric (A^T S = A S)
        let a_s = if all_symmetric {
            Some(connect.a_s)
        } else {
            drop(connect);
            None
        };

        // losses
        let g_link = loss_grads.link;
        if g_link != T::zero() {
            let coef = |g: usize| {
                let l = state.link.norms[g];
                if l > T::zero() {
                    g_link * self.variant.link_scale::<T>(segs.size(g)) / (T::c(2.0) * l)
                } else {
                    T::zero()
                }
            };
            let edges = LinkEdges {
                a,
                a_s: a_s.as_ref().map(|m| m.view()),
                p: &state.link.p,
                edge_weights: edge_grad,
            };
            let ga_link = link_vjp(&edges, s, segs, &state.link.gram, coef, &mut gs);
            if let (Some(ga), Some(ga_link)) = (&mut ga, ga_link) {
                *ga += &ga_link;
            }
        }
        drop(a_s);
        let g_ent = loss_grads.entropy;
        if g_ent != T::zero() {
            entropy_vjp_add(s, segs, self.variant.entropy_eps(), g_ent, &mut gs);
        }

        // S = softmax((F X) W_pool), Z = act((F X) W_emb): with G_p, G_e
        // the gradients of the two pre-activations, W_pool gets
        // (F X)^T G_p = X^T (F^T G_p) and X gets F^T (G_e W_emb^T + G_p
        // W_pool^T) = U_e W_emb^T + U_p W_pool^T with U = F^T G. So F is
        // applied once, to G (C + K columns), and never to X again: U_e and
        // U_p, then one pass over fixed chunks of rows adds each chunk's
        // share of both parameter gradients (X^T U) and writes its rows of
        // X's gradient, over U_e's own rows when C == F, so that it takes
        // no memory of its own. The filter's values get <H_i, X_j> with H =
        // G_e W_emb^T + G_p W_pool^T, formed only when they are asked for
        let mut g_logits = gs;
        softmax_rows_vjp_in_place(s, &mut g_logits);
        // S is not read again: its buffer (N x K) takes U_p below, unless
        // the filter's values need H (N x F) first, which would then
        // coexist with it
        let spare_s = ga.is_none().then_some(assignment.s);
        let w_emb = self.params.matrix(KERNEL_EMB)?;
        let w_pool = self.params.matrix(KERNEL_POOL)?;
        let f = x.ncols();
        // E W_emb^T + P W_pool^T for a piece of rows, into `out`
        let back_project = |e: ArrayView2<T>, p: ArrayView2<T>, mut out: ArrayViewMut2<T>| {
            out.fill(T::zero());
            matmul_acc_piece(e, w_emb.t(), out.view_mut());
            matmul_acc_piece(p, w_pool.t(), out);
        };
        if let Some(ga) = &mut ga {
            let mut h = crate::kernels::rows::zeros(x.nrows(), f);
            reduce_chunked_rows(
                &mut h,
                |r, rows| {
                    let (g_e, g_p) = (g_zpre.slice(s![r.clone(), ..]), g_logits.slice(s![r, ..]));
                    back_project(g_e, g_p, rows);
                },
                |(), ()| (),
            );
            // the filter stored for its values' VJP alone (only with
            // edge-weight gradients): its entries are the operator's
            let stored = gcn_filter(a);
            let g_fvals = sddmm(stored.matrix.view(), h.view(), x).to_vec();
            *ga += &stored.vjp(a, &g_fvals);
        }
        // a filter of symmetric graphs is symmetric bit for bit (see
        // kernels::sparse::gcn_filter): F^T G is then F G, the same bits,
        // as a gather (both products in one pass over F)
        let (u_e, u_p) = if all_symmetric {
            let (n, k) = g_logits.dim();
            let outs = vec![
                rows::fresh_matrix(n, g_zpre.ncols()),
                spare_s.unwrap_or_else(|| rows::fresh_matrix(n, k)),
            ];
            let mut u = filter.spmm_many_over(&[g_zpre.view(), g_logits.view()], outs);
            let u_p = u.pop().expect("two products");
            (u.pop().expect("two products"), u_p)
        } else {
            drop(spare_s);
            (filter.spmm_t(g_zpre.view()), filter.spmm_t(g_logits.view()))
        };
        // Z's and S's gradients are not read again: their buffers serve the
        // next forward pass when X's gradient is formed in place (else its
        // fresh N x F would coexist with them)
        if u_e.ncols() == f {
            self.recycler.keep(g_zpre);
            self.recycler.keep(g_logits);
        } else {
            drop(g_zpre);
            drop(g_logits);
        }
        let chunk = |r: Range<usize>, u_e: ArrayView2<T>, gx: ArrayViewMut2<T>| {
            let xr = x.slice(s![r.clone(), ..]);
            let u_p = u_p.slice(s![r, ..]);
            let grads = (transpose_times(xr, u_e), transpose_times(xr, u_p));
            back_project(u_e, u_p, gx);
            grads
        };
        let sum = |(a, b), (c, d)| (a + c, b + d);
        let (gx, (gw_emb, gw_pool)) = if u_e.ncols() == f {
            let mut gx = u_e;
            let grads = reduce_chunked_rows(
                &mut gx,
                |r, rows| {
                    let u_e = rows.to_owned();
                    chunk(r, u_e.view(), rows)
                },
                sum,
            );
            (gx, grads)
        } else {
            let mut gx = crate::kernels::rows::zeros(x.nrows(), f);
            let grads = reduce_chunked_rows(
                &mut gx,
                |r, rows| chunk(r.clone(), u_e.slice(s![r, ..]), rows),
                sum,
            );
            drop(u_e);
            (gx, grads)
        };
        self.recycler.keep(u_p);
        let mut params = self.params.zeros_like();
        params.accumulate_dim(KERNEL_EMB, gw_emb.view())?;
        params.accumulate_dim(KERNEL_POOL, gw_pool.view())?;
        Ok(Gradients {
            x: gx,
            edge_weights: ga,
            params,
        })
    }

    /// The mean over graphs of the scaled per-graph link norms `norms`, and
    /// of the per-graph `entropies`.
    fn losses_from(&self, segs: &Segments, norms: &[T], entropies: &[T]) -> Losses<T> {
        let b = segs.num_graphs();
        let mut link_pred = T::zero();
        for (g, &l) in norms.iter().enumerate() {
            link_pred += self.variant.link_scale::<T>(segs.size(g)) * l;
        }
        let mut entropy = T::zero();
        for &e in entropies {
            entropy += e;
        }
        let denom = T::from_count(b.max(1));
        let mut losses = Losses::new();
        losses.insert("link_pred".into(), link_pred / denom);
        losses.insert("entropy".into(), entropy / denom);
        losses
    }
}

/// $\frac{1}{n_g}\sum_{n\in g} -\sum_k s_{nk}\ln(s_{nk}+\varepsilon)$ per graph (0 for an empty graph).
fn entropy_per_graph<T: Scalar>(s: ArrayView2<T>, segs: &Segments, eps: T) -> Array1<T> {
    let k = s.ncols();
    let ss = row_major(&s);
    // one entry per node (0 if K = 0), by blocks of rows
    let h = rows::build_row_blocks(s.nrows(), 1, |lo, out| {
        if k > 0 {
            entropy_rows(&ss[lo * k..(lo + out.len()) * k], k, eps, out);
        }
    });
    segment_mean(h.view(), segs).remove_axis(Axis(1))
}

crate::kernels::simd_levels! {
/// Each row's $-\sum_k s_k \ln(s_k + \varepsilon)$ of a block of rows of
/// $S$ (`s`, `k` > 0 wide) into `out`: the row's logarithms first, in a
/// loop of their own so that it vectorises ([`Scalar::ln_vectorizable`]),
/// then the sum from 0 in column order.
fn entropy_rows<T: Scalar>(s: &[T], k: usize, eps: T, out: &mut [T]) {
    let mut scratch = rows::ScratchRow::new();
    let logs = scratch.zeros(k);
    for (row, o) in s.chunks_exact(k).zip(out.iter_mut()) {
        for (l, &v) in logs.iter_mut().zip(row) {
            *l = (v + eps).ln_vectorizable();
        }
        *o = row
            .iter()
            .zip(logs.iter())
            .fold(T::zero(), |acc, (&v, &l)| acc - v * l);
    }
}
}

crate::kernels::simd_levels! {
/// Rows of [`entropy_vjp_add`]: $-c_n (\ln(s + \varepsilon) + s / (s +
/// \varepsilon))$ for each entry of a block of rows of $S$ (`k` > 0 wide),
/// $c_n$ the row's entry of `coef`, added into `out`.
fn entropy_vjp_rows<T: Scalar>(s: &[T], k: usize, eps: T, coef: &[T], out: &mut [T]) {
    for ((o, row), &c) in out.chunks_exact_mut(k).zip(s.chunks_exact(k)).zip(coef) {
        for (o, &v) in o.iter_mut().zip(row) {
            *o += -c * ((v + eps).ln_vectorizable() + v / (v + eps));
        }
    }
}
}

/// The sparse link-prediction terms of $\lVert A_g - S_gS_g^\top\rVert_F$,
/// given $A S$ (`a_s`): per node $i$, $\sum_j w_{ij}^2 - 2\langle S_i, (AS)_i\rangle$,
/// the node's share of $\sum_{(i,j) \in E_g} w_{ij}(w_{ij} - 2\langle S_i, S_j\rangle)$.
/// The per-edge products $\langle S_i, S_j\rangle$ ([`sddmm`]) only if
/// `per_edge` (for the edge-weight gradients).
fn link_terms<T: Scalar>(
    a: CsMatView<T>,
    s: ArrayView2<T>,
    a_s: ArrayView2<T>,
    segs: &Segments,
    per_edge: bool,
) -> LinkTerms<T> {
    let k = s.ncols();
    let p = if per_edge {
        sddmm(a, s, s)
    } else {
        Array1::zeros(0)
    };
    let raw = RawCsr::new(&a);
    let w = a.data();
    let two = T::c(2.0);
    let (ss, ass) = (row_major(&s), row_major(&a_s));
    let rows = Array1::from(map_nodes(segs, |_, n| {
        let squares = raw.range(n).fold(T::zero(), |acc, e| acc + w[e] * w[e]);
        let r = n * k..(n + 1) * k;
        squares - two * dot(&ss[r.clone()], &ass[r])
    }));
    let edge_part = segment_sum(rows.view().insert_axis(Axis(1)), segs);
    let gram = segment_matmul_tn(s, s, segs);
    let norms = (0..segs.num_graphs())
        .into_par_iter()
        .map(|g| {
            let block = gram.slice(s![g * k..(g + 1) * k, ..]);
            let q = block.iter().fold(edge_part[[g, 0]], |acc, &v| acc + v * v);
            if q > T::zero() {
                q.sqrt()
            } else {
                T::zero()
            }
        })
        .collect();
    LinkTerms { p, gram, norms }
}

impl<T: Scalar> Layer<T> for DiffPool<T> {
    type Output = Pooled<T>;
    type Cache = DiffPoolCache<T>;

    fn forward(&self, batch: &DisjointBatch<T>) -> Result<(Pooled<T>, DiffPoolCache<T>)> {
        let (pooled, cache) = self.run(batch, true)?;
        Ok((pooled, cache.expect("requested")))
    }

    /// The forward pass without a cache: nothing is kept for a backward
    /// pass (the same bits as [`Layer::forward`]).
    fn call(&self, batch: &DisjointBatch<T>) -> Result<Pooled<T>> {
        Ok(self.run(batch, false)?.0)
    }

    fn backward(
        &self,
        batch: &DisjointBatch<T>,
        cache: &DiffPoolCache<T>,
        grad: &PooledGrad<T>,
    ) -> Result<Gradients<T>> {
        cache.stamp.check(self.stamp(), "DiffPool")?;
        cache.input.check(batch)?;
        check_pooled_grad(
            grad,
            &cache.out_x_shape,
            cache.out_nnz,
            &["link_pred", "entropy"],
        )?;
        let k = self.k;
        let b = batch.num_graphs();
        let g_blocks = grad
            .edge_weights
            .view()
            .into_shape_with_order((b * k, k))
            .map_err(|e| PoolError::GradientShape {
                what: "pooled edge weights".into(),
                expected: format!("{} = B * K * K values", b * k * k),
                got: e.to_string(),
            })?;
        // each loss's per-graph gradient (the mean's 1/B of the batch's)
        let denom = T::from_count(b.max(1));
        let loss_grads = LossGrads {
            link: grad.loss("link_pred") / denom,
            entropy: grad.loss("entropy") / denom,
        };
        cache
            .saved
            .backward("DiffPool", batch, &self.params, k, |part, state, rows| {
                self.backward_state(
                    part,
                    state,
                    grad.x.slice(s![rows.clone(), ..]),
                    g_blocks.slice(s![rows, ..]),
                    loss_grads,
                )
            })
    }

    fn params(&self) -> &Params<T> {
        &self.params
    }

    fn set_param(&mut self, name: &str, value: ArrayD<T>) -> Result<()> {
        self.params.set(name, value)
    }
}

/// What [`link_vjp`] reads of the edges: $A$, and $A S$ if every graph is
/// symmetric ($A^\top S = A S$ then), the per-edge products $p_e$ of the
/// forward pass, and whether $\bar a$ is wanted.
struct LinkEdges<'a, T: Scalar> {
    a: CsMatView<'a, T>,
    a_s: Option<ArrayView2<'a, T>>,
    p: &'a Array1<T>,
    edge_weights: bool,
}

/// VJP of the per-graph norms $\lVert A_g - S_gS_g^\top\rVert_F$ weighted by
/// `coef(g)` $= \partial L / \partial \lVert\cdot\rVert \cdot \frac{1}{2\lVert\cdot\rVert}$:
/// adds $\bar S$ into `gs` and returns $\bar a$ (when `edges.edge_weights`). With
/// $q_g$ the squared norm, $\partial q / \partial w_e = 2(w_e - p_e)$,
/// $\partial q / \partial S = -2(AS + A^\top S) + 4 S_g (S_g^\top S_g)$. The
/// edge term is $-4\,(AS)_g$ when every graph is symmetric (from
/// `edges.a_s`, no pass over the edges), else the VJP of the per-edge
/// products ([`sddmm_vjp`]). The Gram term is $S_g O_g + S_g O_g^\top$ with
/// the symmetric $O_g = 2 c_g S_g^\top S_g$, formed once as $2\,S_g O_g$ (the
/// Gram blocks are symmetric bit for bit: entry $(k, j)$ and $(j, k)$ are the
/// same products in the same order).
fn link_vjp<T: Scalar>(
    edges: &LinkEdges<'_, T>,
    s: ArrayView2<T>,
    segs: &Segments,
    gram: &Array2<T>,
    coef: impl Fn(usize) -> T + Sync,
    gs: &mut Array2<T>,
) -> Option<Array1<T>> {
    let a = edges.a;
    let k = s.ncols();
    let coefs: Vec<T> = (0..segs.num_graphs()).map(&coef).collect();
    let node_coef = map_nodes(segs, |g, _| coefs[g]);
    let w = a.data();
    let two = T::c(2.0);
    let ga = edges.edge_weights.then(|| {
        let p = edges.p;
        map_entries(a, |r, e, _| two * (w[e] - p[e]) * node_coef[r])
    });
    // the edge term, then the Gram term, each added into `gs`: the Gram
    // term a piece of rows at a time, the edge term from A S, or, for a
    // directed batch, as two N x K terms (dropped after)
    match edges.a_s {
        Some(a_s) => {
            let four = two * two;
            for_each_node_row(gs.view_mut(), segs, |g, n, mut row| {
                let c = -four * coefs[g];
                Zip::from(&mut row)
                    .and(a_s.row(n))
                    .for_each(|o, &v| *o += c * v);
            });
        }
        None => {
            let gp: Vec<T> = map_entries(a, |r, e, _| -two * w[e] * node_coef[r]);
            let (gu, gv) = sddmm_vjp(a, s, s, ArrayView1::from(&gp[..]));
            drop(gp);
            Zip::from(&mut *gs)
                .and(&gu)
                .and(&gv)
                .par_for_each(|o, &u, &v| *o += u + v);
        }
    }
    let mut g_gram = gram.clone();
    for (g, mut block) in g_gram.axis_chunks_iter_mut(Axis(0), k.max(1)).enumerate() {
        let c = two * coefs[g];
        block.mapv_inplace(|v| v * c);
    }
    segment_matmul_nn_combine(s, g_gram.view(), segs, gs, |o, q| *o += q + q);
    ga.map(Array1::from)
}

/// VJP of the mean over nodes of each graph of $-\sum_k s\ln(s+\varepsilon)$,
/// each graph's mean weighted by `scale`, added into `gs` (the shape of
/// $S$, standard layout) entry by entry: `gs + term`, the term's bits
/// as if formed on its own, with no $N \times K$ array of its own.
fn entropy_vjp_add<T: Scalar>(
    s: ArrayView2<T>,
    segs: &Segments,
    eps: T,
    scale: T,
    gs: &mut Array2<T>,
) {
    let k = s.ncols();
    let coef = map_nodes(segs, |g, _| scale / T::from_count(segs.size(g).max(1)));
    let ss = row_major(&s);
    // by blocks of rows (no call for K = 0)
    rows::update_row_blocks(gs, |lo, out| {
        let rows = lo..lo + out.len() / k;
        entropy_vjp_rows(&ss[lo * k..rows.end * k], k, eps, &coef[rows], out);
    })
}

impl<T: Scalar> SrcPool<T> for DiffPool<T> {
    fn return_selection(&self) -> bool {
        self.return_selection
    }

    /// $S = \operatorname{softmax}(\hat A X W_{\text{pool}})$.
    fn select(&self, batch: &DisjointBatch<T>) -> Result<(Selection<T>, Option<Array1<T>>)> {
        self.check_input(batch)?;
        let a = batch.a().view();
        let filter = GcnOperator::new(&a, as_slice(batch.gcn_deg_inv_sqrt()))?;
        let mut s = self
            .gnn(filter, batch.x().view(), &[KERNEL_POOL])?
            .pop()
            .expect("one kernel");
        softmax_rows_in_place(&mut s);
        Ok((Selection::Dense(DenseAssignment { s }), None))
    }

    /// $X'_g = S_g^\top \sigma(\hat A X W_{\text{emb}})_g$ (not $S_g^\top X_g$).
    /// DiffPool only makes dense assignments: any other selection, or a batch
    /// that [`SrcPool::select`] rejects, gives 0 rows.
    fn reduce(&self, batch: &DisjointBatch<T>, selection: &Selection<T>) -> Array2<T> {
        let a = batch.a().view();
        let z = match self.check_input(batch) {
            Ok(()) => GcnOperator::new(&a, as_slice(batch.gcn_deg_inv_sqrt()))
                .and_then(|filter| self.gnn(filter, batch.x().view(), &[KERNEL_EMB]))
                .ok()
                .and_then(|mut z| z.pop()),
            // `select` rejects such a batch
            Err(_) => None,
        };
        match (selection, z) {
            (Selection::Dense(s), Some(z_pre)) => s.reduce(
                self.activation.forward(z_pre.view()).view(),
                batch.segments(),
            ),
            _ => Array2::zeros((0, self.channels)),
        }
    }

    /// `link_pred` and `entropy`, as in the forward pass.
    fn losses(&self, batch: &DisjointBatch<T>, selection: &Selection<T>) -> Result<Losses<T>> {
        match selection {
            Selection::Dense(s) => {
                let (a, segs) = (batch.a().view(), batch.segments());
                let a_s = s.connect_cache(a).a_s;
                let link = link_terms(a, s.s.view(), a_s.view(), segs, false);
                let entropies = entropy_per_graph(s.s.view(), segs, self.variant.entropy_eps());
                Ok(self.losses_from(segs, &link.norms, &entropies.to_vec()))
            }
            _ => Ok(Losses::new()),
        }
    }

    /// The forward pass of [`Layer::forward`] without its cache.
    fn pool(&self, batch: &DisjointBatch<T>) -> Result<Pooled<T>> {
        Ok(self.forward(batch)?.0)
    }
}

/// The values of a batch's $\hat D^{-1/2}$ ([`DisjointBatch::gcn_deg_inv_sqrt`]).
fn as_slice<T: Scalar>(deg_inv_sqrt: &Array1<T>) -> &[T] {
    deg_inv_sqrt
        .as_slice()
        .expect("the batch computes it in standard layout")
}

#[cfg(all(test, feature = "proptest"))]
mod tests {
    use super::*;
    use crate::framework::{Layer, PooledGrad};
    use crate::proptest::{batches, BatchShape};
    use proptest::prelude::*;

    /// A forward pass of `pool` on `b` and a backward pass with a
    /// cotangent whose every entry is set (from its index).
    fn pass(pool: &DiffPool<f64>, b: &DisjointBatch<f64>) -> (Pooled<f64>, Gradients<f64>) {
        let (out, cache) = pool.forward(b).unwrap();
        let mut g = PooledGrad::zeros(&out);
        g.x.indexed_iter_mut()
            .for_each(|((i, j), v)| *v = ((i * 7 + j * 3) % 11) as f64 / 5.0 - 1.0);
        g.edge_weights
            .indexed_iter_mut()
            .for_each(|(i, v)| *v = (i % 5) as f64 / 4.0 - 0.5);
        g.losses.values_mut().for_each(|v| *v = 0.75);
        let grads = pool.backward(b, &cache, &g).unwrap();
        (out, grads)
    }

    fn shape() -> BatchShape {
        BatchShape {
            graphs: 1..=3,
            nodes: 0..=12,
            features: 4..=4,
            directed: 0.3,
            ..BatchShape::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Passes that write over the buffers the last backward pass kept
        /// (stale values, from a batch of another size) give the bits of
        /// a layer that keeps none, whole or run by run, with and without
        /// edge-weight gradients, for C = F and C != F.
        #[test]
        fn passes_over_kept_buffers_give_the_bits_of_fresh_ones(
            b1 in batches(shape()),
            b2 in batches(shape()),
            runs in any::<bool>(),
            edge_grad in any::<bool>(),
            channels in prop_oneof![Just(None), Just(Some(2))],
        ) {
            let mut pool = DiffPool::<f64>::new(4, 3, channels, Activation::Relu, 5)
                .unwrap()
                .with_return_selection(true);
            if !runs {
                pool = pool.with_run_nodes(0);
            }
            // a layer that keeps every buffer, however small
            pool.recycler = Recycler::keeping_from(0);
            let (b1, b2) = (b1.with_edge_weight_grad(edge_grad), b2.with_edge_weight_grad(edge_grad));
            let mut kept = 0;
            for b in [&b1, &b2, &b2, &b1] {
                // a clone keeps nothing (and would keep only large buffers)
                let fresh = pool.clone();
                prop_assert_eq!(fresh.kept_buffer_bytes(), 0);
                let (out, grads) = pass(&pool, b);
                let (out_fresh, grads_fresh) = pass(&fresh, b);
                prop_assert_eq!(fresh.kept_buffer_bytes(), 0);
                prop_assert_eq!(&out, &out_fresh);
                prop_assert_eq!(&grads.x, &grads_fresh.x);
                prop_assert_eq!(&grads.edge_weights, &grads_fresh.edge_weights);
                prop_assert_eq!(&grads.params, &grads_fresh.params);
                kept = kept.max(pool.kept_buffer_bytes());
            }
            // the recycling was reached: Z's gradient is kept when C == F
            if channels.is_none() && b1.num_nodes() > 0 {
                prop_assert!(kept > 0);
            }
        }
    }
}
