//! The engine shared by the MLP-based dense-assignment clustering pools
//! (MinCutPool, DMoNPool, JustBalancePool, AsymCheegerCutPool).
//!
//! Every graph $g$ of the batch gets its own $K$ clusters:
//! $S = \mathrm{softmax}(\mathrm{MLP}(X))$ ($N \times K$, row $n$ = node $n$'s
//! weights over its own graph's clusters), then through
//! [`DenseAssignment`] $X'_g = S_g^\top X_g$ and $A'_g = S_g^\top A_g S_g$
//! (one sparse product and a per-graph $S_g^\top Y_g$), $A'$ stored as a
//! block-diagonal CSR matrix of dense $K \times K$ blocks, and $i'$ = every
//! graph id repeated $K$ times. The layers differ only in an optional
//! post-processing of $X'$ / $A'$ ([`PostProcess`]) and in their auxiliary
//! losses ([`AuxLoss`]), every one computed in a sparse per-graph form: no
//! $N \times N$ matrix is ever formed, in any pass. Memory is
//! $O(\mathrm{nnz} + N F + N K + B K^2)$.
//!
//! Each auxiliary loss of a batch is the mean over its $B$ graphs of the
//! per-graph losses (0 for a batch without graphs); where a per-graph loss
//! is $0/0$ in the references (an edgeless or empty graph) it is a
//! documented finite value, given with each layer.
//!
//! A batch of many small graphs is pooled run by run (`with_run_nodes` on
//! each layer): runs of consecutive whole graphs of at most [`RUN_NODES`]
//! nodes, each pooled as a batch of its own, in parallel, so that the
//! steps' $N \times F$ and $N \times K$ intermediates stay in cache. The
//! results are the whole batch's (the parameters' gradients to rounding).
//!
//! The backward pass of a normalised $A'$ ([`normalize_blocks_vjp`]) is
//! computed in `f64`; a graph whose block gradient exceeds
//! $\sqrt{\mathrm{T::MAX}}$ ([`blocks_fit`]) is carried through the connect
//! and softmax VJPs in `f64` on its own, so the gradient of `f32` logits stays
//! in range whenever the true one does.

use std::ops::Range;

use ndarray::{s, Array1, Array2, ArrayD, ArrayViewMut2, Axis, Zip};
use rayon::prelude::*;

use crate::batch::{check_finite_2d, DisjointBatch, Segments};
use crate::error::{PoolError, Result};
use crate::framework::layer::{check_pooled_grad, InputSignature, LayerStamp};
use crate::framework::runs::{graph_runs, DenseRunOutputs, Saved, XOut, XRows, RUN_NODES};
use crate::framework::{
    DenseAssignment, DenseConnectCache, Gradients, Losses, Pooled, PooledGrad, Selection,
};
use crate::kernels::rows::add_row;
use crate::kernels::segment::{
    blocks_fit, normalize_blocks, normalize_blocks_vjp, segment_gram_vjp, segment_kth_largest,
    segment_kth_largest_vjp_add, segment_matmul_nn_add_rows, segment_matmul_tn,
    segment_matmul_tn_vjp, segment_matmul_tn_vjp_s_add_rows, segment_sum, segment_sum_squares,
    segment_sum_vjp, NormalizedBlocks, SegmentKthLargest,
};
use crate::kernels::sparse::{
    row_sums, row_sums_vjp, segment_edge_l1_vjp_opt, segment_nnz, spmm_and_edge_l1,
    spmm_and_row_sums,
};
use crate::kernels::{map_nodes, reduce_segment_rows, rows};
use crate::nn::{
    rng_from_seed, softmax_rows_in_place, softmax_rows_vjp, softmax_rows_vjp_in_place, Activation,
    Mlp, MlpCache, Params,
};
use crate::scalar::Scalar;

/// Spektral's `K.epsilon()` in `normalize_A`.
pub(crate) const SPEKTRAL_NORM_EPS: f64 = 1e-7;
/// PyG's `EPS` in `dense_mincut_pool` / `DMoNPooling`.
pub(crate) const PYG_NORM_EPS: f64 = 1e-15;

/// Post-processing of the pooled features and adjacency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PostProcess {
    /// $X' = \mathrm{selu}(S^\top X)$ (PyG's DMoNPooling) instead of $S^\top X$.
    pub selu_x: bool,
    /// Zero the diagonal of every $A'_g$ and normalise it symmetrically with
    /// this $\varepsilon$ ([`normalize_blocks`]); `None` keeps $S^\top A S$.
    pub normalize_eps: Option<f64>,
}

/// How DMoN's modularity counts the edges $m_g$ of a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeCount {
    /// Spektral: the number of stored entries (`len(a.values)`).
    Stored,
    /// PyG: half the sum of the weighted degrees, $\sum_{ij} a_{ij} / 2$.
    HalfWeight,
}

/// One auxiliary loss; each per-graph value is averaged over the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AuxLoss {
    /// MinCut: $-\mathrm{Tr}(S_g^\top A_g S_g) / \mathrm{Tr}(S_g^\top D_g S_g)$;
    /// 0 where the denominator is 0.
    CutRatio,
    /// $\lVert P/\lVert P\rVert_F - I_K/\sqrt K\rVert_F$, $P = S_g^\top S_g$; 0 for an empty graph.
    Orthogonality,
    /// DMoN: $-\mathrm{Tr}(S_g^\top A_g S_g - (S_g^\top d_g)(d_g^\top S_g)/2m_g)/2m_g$; 0 where $m_g = 0$.
    Modularity(EdgeCount),
    /// $c\,(\lVert \sum_{n} S_n\rVert_2 \sqrt K / n_g - 1)$; 0 for an empty graph.
    Collapse(f64),
    /// JustBalance: $-\sum_k \sqrt{(S_g^\top S_g)_{kk}}$, divided by $\sqrt{n_g K}$ if normalised.
    SqrtBalance(bool),
    /// $c\,\sum_{E_g} a_{ij}\lVert S_i - S_j\rVert_1 / (2 |E_g|)$; 0 where $|E_g| = 0$.
    TotalVariation(f64),
    /// $c\,(1 - \sum \mathrm{asym}(S_g - q_g) / (n_g (K-1)))$; 0 for an empty graph.
    AsymBalance(f64),
}

impl AuxLoss {
    fn needs_degrees(self) -> bool {
        matches!(self, AuxLoss::CutRatio | AuxLoss::Modularity(_))
    }

    /// Whether the loss reads [`crate::kernels::sparse::segment_edge_l1`] of $S$.
    fn needs_edge_l1(self) -> bool {
        matches!(self, AuxLoss::TotalVariation(_))
    }
}

/// Validates the common hyper-parameters.
pub(crate) fn check_k(k: usize, min: usize) -> Result<()> {
    if k < min {
        return Err(PoolError::InvalidConfig {
            name: "k".into(),
            value: k.to_string(),
            expected: if min == 1 {
                "a positive number of clusters per graph".into()
            } else {
                format!("at least {min} clusters per graph")
            },
        });
    }
    Ok(())
}

/// Validates a loss coefficient: finite, also in the layer's float type `T`
/// (`1e300` is finite in `f64` but infinite in `f32`).
pub(crate) fn check_coeff<T: Scalar>(name: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && T::c(v).is_finite()) {
        return Err(PoolError::InvalidConfig {
            name: name.into(),
            value: v.to_string(),
            expected: "a finite coefficient (finite in the layer's float type)".into(),
        });
    }
    Ok(())
}

/// The MLP $\to$ softmax assignment, the SRC steps and the auxiliary losses,
/// shared by the four layers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DenseClustering<T: Scalar> {
    /// The layer's name, for error messages.
    name: &'static str,
    k: usize,
    mlp: Mlp,
    params: Params<T>,
    post: PostProcess,
    losses: Vec<(&'static str, AuxLoss)>,
    /// The node budget of a run ([`graph_runs`]); 0: every batch whole.
    run_nodes: usize,
    /// Whether [`Pooled::selection`] holds $S$ (Spektral's
    /// `return_selection`; `false` by default).
    pub(crate) return_selection: bool,
}

/// Saved state of a dense-assignment clustering pool's forward pass
/// (MinCutPool, DMoNPool, JustBalancePool, AsymCheegerCutPool): the
/// batch's, or each run's for a batch pooled run by run
/// ([`crate::layers::MinCutPool::with_run_nodes`]).
#[derive(Debug, Clone)]
pub struct ClusteringCache<T: Scalar> {
    saved: Saved<BatchState<T>>,
    x_shape: [usize; 2],
    input: InputSignature,
    stamp: LayerStamp,
}

/// What the backward pass of one batch (or run of graphs) reads.
#[derive(Debug, Clone)]
struct BatchState<T: Scalar> {
    mlp: MlpCache<T>,
    assignment: DenseAssignment<T>,
    /// $(S^\top X, \mathrm{selu}(S^\top X))$ when $X'$ is activated (PyG's DMoN).
    selu: Option<(Array2<T>, Array2<T>)>,
    connect: DenseConnectCache<T>,
    normalized: Option<NormalizedBlocks<T>>,
    degrees: Option<Array1<T>>,
    aux: Vec<AuxCache<T>>,
}

impl<T: Scalar> BatchState<T> {
    /// The pooled blocks: the normalised ones if there are, else `raw`.
    fn out_blocks<'a>(&'a self, raw: &'a Array2<T>) -> &'a Array2<T> {
        self.normalized.as_ref().map_or(raw, |n| &n.out)
    }
}

/// The forward pass of one batch (or run of graphs), before its outputs
/// are assembled: $X'$ (or the proof that it was written into the rows the
/// caller gave), the raw blocks $S_g^\top A_g S_g$ stacked, each loss's
/// per-graph values and the state the backward pass reads.
struct Forward<T: Scalar> {
    x_out: XOut<T>,
    blocks: Array2<T>,
    values: Vec<Array1<T>>,
    state: BatchState<T>,
}

/// A forward pass's outputs, before they are checked and assembled into
/// a [`Pooled`]: $X'$, $A'$, each loss's per-graph values, $S$ and, when
/// kept, the state for the backward pass.
struct Outputs<T: Scalar> {
    x_out: Array2<T>,
    a_out: sprs::CsMat<T>,
    values: Vec<Array1<T>>,
    /// $S$ when returned ([`DenseClustering::return_selection`])
    s: Option<Array2<T>>,
    saved: Option<Saved<BatchState<T>>>,
    /// Whether the runs found $X'$, the blocks and $S$ finite as they
    /// wrote them ([`Pooled::checked_by_runs`]); `false` for the whole batch.
    written_finite: bool,
}

/// What each auxiliary loss keeps for its VJP.
#[derive(Debug, Clone)]
enum AuxCache<T: Scalar> {
    CutRatio {
        trace: Array1<T>,
        den: Array1<T>,
    },
    Orthogonality {
        gram: Array2<T>,
        /// $(\lVert P\rVert_F, L)$ per graph.
        norms: Vec<(T, T)>,
    },
    Modularity {
        trace: Array1<T>,
        sd: Array2<T>,
        m: Array1<T>,
    },
    Collapse {
        sums: Array2<T>,
    },
    SqrtBalance {
        sq: Array2<T>,
    },
    TotalVariation {
        nnz: Vec<usize>,
    },
    AsymBalance {
        quantile: SegmentKthLargest<T>,
    },
}

/// What every loss reads: the batch, $S$ and the weighted degrees (when a
/// loss needs them).
#[derive(Clone, Copy)]
struct LossInputs<'a, T: Scalar> {
    batch: &'a DisjointBatch<T>,
    s: &'a Array2<T>,
    degrees: Option<&'a Array1<T>>,
    /// [`crate::kernels::sparse::segment_edge_l1`] of $S$, when a loss needs it.
    edge_l1: Option<&'a Array1<T>>,
}

/// Gradients accumulated by the losses before the shared backward pass.
/// `degrees` and `edges` only feed the edge-weight gradients: `edges` is
/// `None` and `degrees` empty (never written) when they are off.
struct Cotangents<T: Scalar> {
    s: Array2<T>,
    blocks: Array2<T>,
    degrees: Array1<T>,
    edges: Option<Array1<T>>,
}

/// Splits the `f64` gradient of the stacked blocks into what fits `T`
/// (blocks that do not are zeroed there) and, per graph that does not, its
/// own block in `f64` ([`blocks_fit`]).
fn split_wide_blocks<T: Scalar>(
    wide: Array2<f64>,
    k: usize,
) -> (Array2<T>, Vec<(usize, Array2<f64>)>) {
    let fits = blocks_fit::<T>(wide.view(), k);
    // fresh zeros; the blocks that fit are written in parallel
    let mut narrow = crate::kernels::rows::fresh_matrix(wide.nrows(), wide.ncols());
    crate::kernels::for_each_graph_block(narrow.view_mut(), k, |g, mut block| {
        if fits[g] {
            let w = wide.slice(s![g * k..(g + 1) * k, ..]);
            block.zip_mut_with(&w, |o, &v| *o = T::c(v));
        }
    });
    let blocks = fits
        .iter()
        .enumerate()
        .filter(|(_, &fit)| !fit)
        .map(|(g, _)| (g, wide.slice(s![g * k..(g + 1) * k, ..]).to_owned()))
        .collect();
    (narrow, blocks)
}

/// The connect VJP of one graph whose block gradient leaves `T`'s range,
/// computed in `f64` on the graph alone (the same bits whether the graph
/// is pooled alone or in a batch): its assignment's gradient becomes
/// moderate again only after the softmax VJP multiplies it by the tiny
/// assignment entries, so that step is done in `f64` too.
struct WideGraph {
    nodes: std::ops::Range<usize>,
    /// Position of the graph's first edge in `a.data()`.
    first_edge: usize,
    /// $\bar S$ from the connect step, the graph's rows.
    g_s: Array2<f64>,
    /// $\bar a$ from the connect step, the graph's edges (if wanted).
    g_a: Option<Array1<f64>>,
}

impl WideGraph {
    fn connect_vjp<T: Scalar>(
        batch: &DisjointBatch<T>,
        g: usize,
        s: &Array2<T>,
        connect: &DenseConnectCache<T>,
        block: Array2<f64>,
    ) -> Self {
        let nodes = batch.segments().range(g);
        let wide = |v: &T| v.to_f64().unwrap_or(f64::NAN);
        let (_, a_g) = batch.graph(g);
        let a_g = a_g.map(wide);
        let rows = s![nodes.clone(), ..];
        let assignment = DenseAssignment {
            s: s.slice(rows).map(wide),
        };
        let cache = DenseConnectCache {
            a_s: connect.a_s.slice(rows).map(wide),
        };
        let single = Segments::single(nodes.len());
        let (g_s, g_a) = assignment.connect_blocks_vjp_opt(
            a_g.view(),
            &single,
            &[batch.symmetric_graphs()[g]],
            &cache,
            block.view(),
            batch.edge_weight_grad(),
        );
        let first_edge = batch.a().indptr().raw_storage()[nodes.start];
        WideGraph {
            nodes,
            first_edge,
            g_s,
            g_a,
        }
    }

    /// Adds $\bar a$ to the graph's edge gradients (in `f64`, then rounded).
    fn add_edges<T: Scalar>(&self, edges: &mut Array1<T>) {
        let Some(g_a) = &self.g_a else { return };
        for (e, &v) in g_a.iter().enumerate() {
            let at = self.first_edge + e;
            edges[at] = T::c(edges[at].to_f64().unwrap_or(f64::NAN) + v);
        }
    }

    /// Rewrites the graph's rows among `rows` of the logits' gradient
    /// `g_logits` (which holds rows `rows`): the softmax VJP of `gs` (the
    /// other terms of $\bar S$, rows `rows`) plus $\bar S$ from the connect
    /// step, in `f64`.
    fn softmax_vjp_rows<T: Scalar>(
        &self,
        s: &Array2<T>,
        rows: std::ops::Range<usize>,
        gs: ndarray::ArrayView2<T>,
        g_logits: &mut Array2<T>,
    ) {
        let (lo, hi) = (
            self.nodes.start.max(rows.start),
            self.nodes.end.min(rows.end),
        );
        if lo >= hi {
            return;
        }
        let wide = |v: &T| v.to_f64().unwrap_or(f64::NAN);
        let local = s![lo - rows.start..hi - rows.start, ..];
        let g_s = self
            .g_s
            .slice(s![lo - self.nodes.start..hi - self.nodes.start, ..]);
        let mut gs = gs.slice(local).map(wide) + g_s;
        let s = s.slice(s![lo..hi, ..]).map(wide);
        softmax_rows_vjp_in_place(s.view(), &mut gs);
        g_logits
            .slice_mut(local)
            .zip_mut_with(&gs, |o, &v| *o = T::c(v));
    }
}

fn traces<T: Scalar>(blocks: &Array2<T>, k: usize, b: usize) -> Array1<T> {
    Array1::from_shape_fn(b, |g| {
        (0..k).fold(T::zero(), |acc, i| acc + blocks[[g * k + i, i]])
    })
}

fn mean<T: Scalar>(values: &Array1<T>) -> T {
    if values.is_empty() {
        return T::zero();
    }
    values.iter().fold(T::zero(), |a, &v| a + v) / T::from_count(values.len())
}

impl<T: Scalar> DenseClustering<T> {
    /// An engine for `in_features` inputs, `k` clusters per graph, an MLP
    /// with the given hidden widths and activation, weights drawn from `seed`.
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] for a zero hidden width, or sizes whose
    /// weights or $K \times K$ blocks cannot be allocated.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: &'static str,
        in_features: usize,
        k: usize,
        mlp_hidden: &[usize],
        mlp_activation: Activation,
        seed: u64,
        post: PostProcess,
        losses: Vec<(&'static str, AuxLoss)>,
    ) -> Result<Self> {
        if let Some(j) = mlp_hidden.iter().position(|&h| h == 0) {
            return Err(PoolError::InvalidConfig {
                name: format!("mlp_hidden[{j}]"),
                value: "0".into(),
                expected: "a positive width for every hidden layer".into(),
            });
        }
        // every kernel of the MLP, and the K x K pooled block of a graph
        let mut widths = vec![in_features];
        widths.extend_from_slice(mlp_hidden);
        widths.push(k);
        for w in widths.windows(2) {
            crate::nn::params::check_array_size::<T>("mlp_hidden / k", w)?;
        }
        crate::nn::params::check_array_size::<T>("k", &[k, k])?;
        let mlp = Mlp::new(mlp_hidden, mlp_activation, in_features, k);
        let mut params = Params::new();
        mlp.init_params(&mut params, &mut rng_from_seed(seed));
        Ok(Self {
            name,
            k,
            mlp,
            params,
            post,
            losses,
            run_nodes: RUN_NODES,
            return_selection: false,
        })
    }

    pub(crate) fn k(&self) -> usize {
        self.k
    }

    fn stamp(&self) -> LayerStamp {
        let config = (self.k, &self.mlp, self.post, &self.losses);
        LayerStamp::of(self.name, &config, &self.params)
    }

    pub(crate) fn params(&self) -> &Params<T> {
        &self.params
    }

    pub(crate) fn set_param(&mut self, name: &str, value: ArrayD<T>) -> Result<()> {
        self.params.set(name, value)
    }

    pub(crate) fn set_post(&mut self, post: PostProcess) {
        self.post = post;
    }

    pub(crate) fn set_run_nodes(&mut self, nodes: usize) {
        self.run_nodes = nodes;
    }

    pub(crate) fn run_nodes(&self) -> usize {
        self.run_nodes
    }

    pub(crate) fn set_losses(&mut self, losses: Vec<(&'static str, AuxLoss)>) {
        self.losses = losses;
    }

    /// Select: $S = \mathrm{softmax}(\mathrm{MLP}(X))$.
    fn select(&self, x: ndarray::ArrayView2<T>) -> Result<(MlpCache<T>, Array2<T>)> {
        let mut mlp = self.mlp.forward(&self.params, x)?;
        let mut s = mlp.take_output();
        softmax_rows_in_place(&mut s);
        check_finite_2d(
            &s.view(),
            "cluster assignment S (the MLP's logits overflowed)",
        )?;
        Ok((mlp, s))
    }

    pub(crate) fn forward(
        &self,
        batch: &DisjointBatch<T>,
    ) -> Result<(Pooled<T>, ClusteringCache<T>)> {
        let (pooled, cache) = self.run(batch, true)?;
        Ok((pooled, cache.expect("run keeps a cache when asked to")))
    }

    /// The forward pass without a cache: $S$ moves into the result instead
    /// of being copied for the backward pass.
    pub(crate) fn call(&self, batch: &DisjointBatch<T>) -> Result<Pooled<T>> {
        Ok(self.run(batch, false)?.0)
    }

    /// The forward pass, whole or run by run ([`graph_runs`]); the cache
    /// if `keep`.
    ///
    /// A batch of small graphs is pooled run by run, every run as a batch
    /// of its own, in parallel: each step of a run reads what the previous
    /// one wrote while it is still in cache, where the whole batch would
    /// pass over $N \times F$ and $N \times K$ arrays in memory once per
    /// step. Every output of a graph depends on that graph alone, so the
    /// results are those of the whole batch, bit for bit.
    fn run(
        &self,
        batch: &DisjointBatch<T>,
        keep: bool,
    ) -> Result<(Pooled<T>, Option<ClusteringCache<T>>)> {
        let seg = batch.segments();
        let by_runs =
            graph_runs(seg, self.run_nodes).and_then(|runs| self.forward_runs(batch, &runs, keep));
        let Outputs {
            x_out,
            a_out,
            values,
            s,
            saved,
            written_finite,
        } = match by_runs {
            Some(outputs) => outputs,
            None => self.forward_whole(batch, keep)?,
        };
        let x_shape = [x_out.nrows(), x_out.ncols()];
        let mut losses = Losses::new();
        for (&(name, _), v) in self.losses.iter().zip(&values) {
            losses.insert(name.to_string(), mean(v));
        }
        let out_segments = Segments::uniform(seg.num_graphs(), self.k);
        let pooled = Pooled::checked_by_runs(
            self.name,
            written_finite,
            x_out,
            a_out,
            out_segments,
            s.map(|s| Selection::Dense(DenseAssignment { s })),
            losses,
        )?;
        let cache = saved.map(|saved| ClusteringCache {
            saved,
            x_shape,
            input: InputSignature::of(batch),
            stamp: self.stamp(),
        });
        Ok((pooled, cache))
    }

    /// The whole batch's forward pass: $X'$, $A'$, the losses' per-graph
    /// values, $S$ for the output and, if `keep`, the saved state.
    fn forward_whole(&self, batch: &DisjointBatch<T>, keep: bool) -> Result<Outputs<T>> {
        let Forward {
            x_out,
            blocks,
            values,
            state,
        } = self.compute(batch, None)?;
        let x_out = x_out.into_own().expect("no rows given for X'");
        let a_out = DenseAssignment::blocks_to_csr(state.out_blocks(&blocks).view());
        Ok(if keep {
            // the output's copy in fresh memory, written in parallel
            let s = self
                .return_selection
                .then(|| rows::fresh_copy(state.assignment.s.view()));
            Outputs {
                x_out,
                a_out,
                values,
                s,
                saved: Some(Saved::Whole(Box::new(state))),
                written_finite: false,
            }
        } else {
            Outputs {
                x_out,
                a_out,
                values,
                s: self.return_selection.then_some(state.assignment.s),
                saved: None,
                written_finite: false,
            }
        })
    }

    /// [`DenseClustering::forward_whole`] run by run: each run of `runs`
    /// pooled as a batch of its own, in parallel, its outputs copied into
    /// the batch's. `None` if a run fails: the caller then pools the whole
    /// batch, whose error names the batch's own nodes and graphs.
    fn forward_runs(
        &self,
        batch: &DisjointBatch<T>,
        runs: &[Range<usize>],
        keep: bool,
    ) -> Option<Outputs<T>> {
        let (outputs, states) = DenseRunOutputs::by_runs(
            batch.segments(),
            runs,
            self.k,
            batch.num_features(),
            self.losses.len(),
            self.return_selection,
            |r, mut rows| {
                // X' straight into the batch's rows, unless an activation
                // follows the reduce (DMoNPool's SELU keeps its input)
                let x_rows = (!self.post.selu_x).then(|| rows.x_rows());
                let fw = self.compute(&batch.graph_run(r), x_rows)?;
                let values: Vec<_> = fw.values.iter().map(|v| v.view()).collect();
                let filled = rows.fill(
                    fw.x_out,
                    fw.state.out_blocks(&fw.blocks).view(),
                    fw.state.assignment.s.view(),
                    &values,
                );
                Ok::<_, PoolError>((filled, keep.then_some(fw.state)))
            },
        )
        .ok()?;
        let DenseRunOutputs {
            x_out,
            blocks,
            s,
            per_graph,
            finite,
        } = outputs;
        Some(Outputs {
            x_out,
            a_out: DenseAssignment::blocks_into_csr(blocks),
            values: per_graph.into_iter().map(Array1::from).collect(),
            s,
            saved: keep.then_some(Saved::Runs(states)),
            written_finite: finite,
        })
    }

    /// Select, reduce, connect and the losses of one batch (or run); $X'$
    /// written into `x_rows` if given ($BK \times F$, row-major, and only
    /// when no activation follows the reduce), else returned.
    fn compute(
        &self,
        batch: &DisjointBatch<T>,
        x_rows: Option<XRows<'_, T>>,
    ) -> Result<Forward<T>> {
        let seg = batch.segments();
        let a = batch.a().view();
        let (mlp, s) = self.select(batch.x().view())?;
        let assignment = DenseAssignment { s };
        let x = batch.x().view();
        let (x_out, selu) = if self.post.selu_x {
            let x_pre = assignment.reduce(x, seg);
            let out = Activation::Selu.forward(x_pre.view());
            (XOut::Own(out.clone()), Some((x_pre, out)))
        } else {
            let shape = (seg.num_graphs() * self.k, x.ncols());
            let x_out = XOut::write(x_rows, shape, |out| assignment.reduce_into(x, seg, out));
            (x_out, None)
        };
        // a total-variation loss reads every edge's rows of S as A S does,
        // and the degrees are sums over the entries A S reads: each formed
        // in the same pass as A S
        let needs_degrees = self.losses.iter().any(|(_, l)| l.needs_degrees());
        let (blocks, connect, edge_l1, degrees) =
            if self.losses.iter().any(|(_, l)| l.needs_edge_l1()) {
                let (a_s, tv) = spmm_and_edge_l1(a, assignment.s.view(), seg);
                let (blocks, connect) =
                    assignment.connect_blocks_from(DenseConnectCache { a_s }, seg);
                (
                    blocks,
                    connect,
                    Some(tv),
                    needs_degrees.then(|| row_sums(a)),
                )
            } else if needs_degrees {
                let (a_s, d) = spmm_and_row_sums(a, assignment.s.view());
                let (blocks, connect) =
                    assignment.connect_blocks_from(DenseConnectCache { a_s }, seg);
                (blocks, connect, None, Some(d))
            } else {
                let (blocks, connect) = assignment.connect_blocks(a, seg);
                (blocks, connect, None, None)
            };
        let normalized = self
            .post
            .normalize_eps
            .map(|eps| normalize_blocks(blocks.view(), T::c(eps)));
        let inputs = LossInputs {
            batch,
            s: &assignment.s,
            degrees: degrees.as_ref(),
            edge_l1: edge_l1.as_ref(),
        };
        let (values, aux) = self
            .losses
            .iter()
            .map(|&(_, loss)| self.loss_forward(loss, &inputs, &blocks))
            .unzip();
        Ok(Forward {
            x_out,
            blocks,
            values,
            state: BatchState {
                mlp,
                assignment,
                selu,
                connect,
                normalized,
                degrees,
                aux,
            },
        })
    }

    fn loss_forward(
        &self,
        loss: AuxLoss,
        inputs: &LossInputs<'_, T>,
        blocks: &Array2<T>,
    ) -> (Array1<T>, AuxCache<T>) {
        let LossInputs {
            batch,
            s,
            degrees,
            edge_l1,
        } = *inputs;
        let seg = batch.segments();
        let b = seg.num_graphs();
        let k = self.k;
        let kt = T::from_count(k);
        let zero = T::zero();
        let no_degrees = Array1::zeros(0);
        let d = degrees.unwrap_or(&no_degrees);
        match loss {
            AuxLoss::CutRatio => {
                let trace = traces(blocks, k, b);
                let per_node = scaled_self_dots(s, seg, |_, n| d[n]);
                let den =
                    segment_sum(per_node.view().insert_axis(Axis(1)), seg).remove_axis(Axis(1));
                let values = Zip::from(&trace).and(&den).map_collect(|&t, &q| {
                    if q != zero {
                        -(t / q)
                    } else {
                        zero
                    }
                });
                (values, AuxCache::CutRatio { trace, den })
            }
            AuxLoss::Orthogonality => {
                let gram = segment_matmul_tn(s.view(), s.view(), seg);
                let inv_sqrt_k = T::one() / kt.sqrt();
                // per graph, in parallel: ||P||_F and the loss, each a sum
                // over the block in rows::dot's order (eight partial sums)
                let eye: Vec<T> = (0..k * k)
                    .map(|ij| if ij / k == ij % k { inv_sqrt_k } else { zero })
                    .collect();
                let norms: Vec<(T, T)> = if k == 0 {
                    vec![(zero, zero); b]
                } else {
                    rows::row_major(&gram.view())
                        .par_chunks(k * k)
                        .map(|p| {
                            let n = rows::dot(p, p).sqrt();
                            if n == zero {
                                return (zero, zero);
                            }
                            let l = rows::lane_sum(p, &eye, |v, e| {
                                let q = v / n - e;
                                q * q
                            });
                            (n, l.sqrt())
                        })
                        .collect()
                };
                let values = norms.iter().map(|&(_, l)| l).collect();
                (values, AuxCache::Orthogonality { gram, norms })
            }
            AuxLoss::Modularity(count) => {
                let trace = traces(blocks, k, b);
                let sd = segment_matmul_tn(s.view(), d.view().insert_axis(Axis(1)), seg);
                let m: Array1<T> = match count {
                    EdgeCount::Stored => segment_nnz(batch.a().view(), seg)
                        .into_iter()
                        .map(T::from_count)
                        .collect(),
                    EdgeCount::HalfWeight => {
                        segment_sum(d.view().insert_axis(Axis(1)), seg).remove_axis(Axis(1))
                            / T::c(2.0)
                    }
                };
                let values = Array1::from_shape_fn(b, |g| {
                    let m = m[g];
                    if m == zero {
                        return zero;
                    }
                    let c2 = (0..k).fold(zero, |a, i| a + sd[[g * k + i, 0]] * sd[[g * k + i, 0]]);
                    let two_m = m + m;
                    -(trace[g] - c2 / two_m) / two_m
                });
                (values, AuxCache::Modularity { trace, sd, m })
            }
            AuxLoss::Collapse(coeff) => {
                let sums = segment_sum(s.view(), seg);
                let c = T::c(coeff);
                let values = Array1::from_shape_fn(b, |g| {
                    let n = seg.size(g);
                    if n == 0 {
                        return zero;
                    }
                    let norm = sums.row(g).dot(&sums.row(g)).sqrt();
                    c * (norm / T::from_count(n) * kt.sqrt() - T::one())
                });
                (values, AuxCache::Collapse { sums })
            }
            AuxLoss::SqrtBalance(normalized) => {
                let sq = segment_sum_squares(s.view(), seg);
                let values = Array1::from_shape_fn(b, |g| {
                    let n = seg.size(g);
                    if n == 0 {
                        return zero;
                    }
                    let l = -sq.row(g).iter().fold(zero, |a, &v| a + v.sqrt());
                    if normalized {
                        l / (T::from_count(n) * kt).sqrt()
                    } else {
                        l
                    }
                });
                (values, AuxCache::SqrtBalance { sq })
            }
            AuxLoss::TotalVariation(coeff) => {
                let tv = edge_l1.expect("run forms the edge L1 sums for a total-variation loss");
                let nnz = segment_nnz(batch.a().view(), seg);
                let c = T::c(coeff);
                let values = Array1::from_shape_fn(b, |g| {
                    if nnz[g] == 0 {
                        zero
                    } else {
                        c * (tv[g] / T::from_count(2 * nnz[g]))
                    }
                });
                (values, AuxCache::TotalVariation { nnz })
            }
            AuxLoss::AsymBalance(coeff) => {
                let quantile = segment_kth_largest(s.view(), seg, |n| n / k + 1);
                let km1 = kt - T::one();
                // S and the quantiles as row-major slices (they are built
                // in standard layout, so no copy)
                let (s_rows, q_rows) =
                    (s.as_standard_layout(), quantile.values.as_standard_layout());
                let (s_rows, q_rows) = (
                    s_rows.as_slice().expect("standard layout"),
                    q_rows.as_slice().expect("standard layout"),
                );
                let per_node = Array1::from(map_nodes(seg, |g, n| {
                    let (sn, qg) = (&s_rows[n * k..(n + 1) * k], &q_rows[g * k..(g + 1) * k]);
                    sn.iter().zip(qg).fold(zero, |a, (&v, &qv)| {
                        let x = v - qv;
                        a + if x >= zero { km1 * x } else { -x }
                    })
                }));
                let sums = segment_sum(per_node.view().insert_axis(Axis(1)), seg);
                let c = T::c(coeff);
                let values = Array1::from_shape_fn(b, |g| {
                    let n = seg.size(g);
                    if n == 0 {
                        return zero;
                    }
                    let total = T::from_count(n) * km1;
                    c * (T::one() / total * (total - sums[[g, 0]]))
                });
                (values, AuxCache::AsymBalance { quantile })
            }
        }
    }

    /// Adds the VJP of one loss (per-graph gradient `lg = loss_grad / B`).
    fn loss_backward(
        &self,
        loss: AuxLoss,
        cache: &AuxCache<T>,
        inputs: &LossInputs<'_, T>,
        lg: T,
        cot: &mut Cotangents<T>,
    ) {
        let LossInputs {
            batch, s, degrees, ..
        } = *inputs;
        let seg = batch.segments();
        let b = seg.num_graphs();
        let k = self.k;
        let kt = T::from_count(k);
        let zero = T::zero();
        let two = T::c(2.0);
        let no_degrees = Array1::zeros(0);
        let d = degrees.unwrap_or(&no_degrees);
        match (loss, cache) {
            (AuxLoss::CutRatio, AuxCache::CutRatio { trace, den }) => {
                let mut g_den = Array1::zeros(b);
                for g in 0..b {
                    if den[g] == zero {
                        continue;
                    }
                    let g_trace = -lg / den[g];
                    for i in 0..k {
                        cot.blocks[[g * k + i, i]] += g_trace;
                    }
                    g_den[g] = lg * trace[g] / (den[g] * den[g]);
                }
                add_rows(&mut cot.s, seg, |g, n, mut row| {
                    let f = two * d[n] * g_den[g];
                    row.scaled_add(f, &s.row(n));
                });
                if cot.edges.is_some() {
                    cot.degrees += &scaled_self_dots(s, seg, |g, _| g_den[g]);
                }
            }
            (AuxLoss::Orthogonality, AuxCache::Orthogonality { gram, norms }) => {
                let inv_sqrt_k = T::one() / kt.sqrt();
                let mut g_gram = crate::kernels::rows::zeros(gram.nrows(), gram.ncols());
                if k > 0 {
                    // per graph, in parallel over the contiguous blocks
                    let gs = g_gram
                        .as_slice_mut()
                        .expect("fresh matrices are standard layout");
                    gs.par_chunks_mut(k * k)
                        .zip(rows::row_major(&gram.view()).par_chunks(k * k))
                        .zip(norms.par_iter())
                        .for_each(|((out, p), &(n, l))| {
                            if n == zero || l == zero {
                                return;
                            }
                            // G = lg Q / L, P̄ = G/n - P <P, G> / n^3 (the
                            // inner product summed in row-major order)
                            for (i, (orow, prow)) in
                                out.chunks_exact_mut(k).zip(p.chunks_exact(k)).enumerate()
                            {
                                for (j, (o, &v)) in orow.iter_mut().zip(prow).enumerate() {
                                    let e = if i == j { inv_sqrt_k } else { zero };
                                    *o = lg * (v / n - e) / l;
                                }
                            }
                            let pg = p.iter().zip(out.iter()).fold(zero, |a, (&x, &y)| a + x * y);
                            for (o, &x) in out.iter_mut().zip(p) {
                                *o = *o / n - x * pg / (n * n * n);
                            }
                        });
                }
                let gs = segment_gram_vjp(s.view(), seg, g_gram.view());
                rows::add_into(&mut cot.s, &gs);
            }
            (AuxLoss::Modularity(count), AuxCache::Modularity { trace, sd, m }) => {
                let mut g_sd = crate::kernels::rows::zeros(sd.nrows(), sd.ncols());
                let mut g_m = Array1::zeros(b);
                for g in 0..b {
                    let m = m[g];
                    if m == zero {
                        continue;
                    }
                    let two_m = two * m;
                    let c2 = (0..k).fold(zero, |a, i| a + sd[[g * k + i, 0]] * sd[[g * k + i, 0]]);
                    for i in 0..k {
                        cot.blocks[[g * k + i, i]] += -lg / two_m;
                        g_sd[[g * k + i, 0]] = lg * sd[[g * k + i, 0]] / (two * m * m);
                    }
                    g_m[g] = lg * (trace[g] / (two * m * m) - c2 / (two * m * m * m));
                }
                let (gs, gd) = segment_matmul_tn_vjp(
                    s.view(),
                    d.view().insert_axis(Axis(1)),
                    seg,
                    g_sd.view(),
                );
                rows::add_into(&mut cot.s, &gs);
                if cot.edges.is_some() {
                    cot.degrees += &gd.remove_axis(Axis(1));
                }
                if count == EdgeCount::HalfWeight && cot.edges.is_some() {
                    let gm = Array1::from(map_nodes(seg, |g, _| g_m[g] / two));
                    cot.degrees += &gm;
                }
            }
            (AuxLoss::Collapse(coeff), AuxCache::Collapse { sums }) => {
                let c = T::c(coeff);
                let mut g_sums = crate::kernels::rows::zeros(sums.nrows(), sums.ncols());
                for g in 0..b {
                    let n = seg.size(g);
                    let norm = sums.row(g).dot(&sums.row(g)).sqrt();
                    if n == 0 || norm == zero {
                        continue;
                    }
                    let f = lg * c * kt.sqrt() / T::from_count(n) / norm;
                    g_sums.row_mut(g).scaled_add(f, &sums.row(g));
                }
                rows::add_into(&mut cot.s, &segment_sum_vjp(g_sums.view(), seg));
            }
            (AuxLoss::SqrtBalance(normalized), AuxCache::SqrtBalance { sq }) => {
                let g_sq = Array2::from_shape_fn(sq.raw_dim(), |(g, c)| {
                    let n = seg.size(g);
                    if n == 0 || sq[[g, c]] <= zero {
                        return zero;
                    }
                    let scale = if normalized {
                        T::one() / (T::from_count(n) * kt).sqrt()
                    } else {
                        T::one()
                    };
                    -lg * scale / (two * sq[[g, c]].sqrt())
                });
                add_rows(&mut cot.s, seg, |g, n, mut row| {
                    Zip::from(&mut row)
                        .and(&s.row(n))
                        .and(&g_sq.row(g))
                        .for_each(|o, &v, &q| *o += two * v * q);
                });
            }
            (AuxLoss::TotalVariation(coeff), AuxCache::TotalVariation { nnz }) => {
                let c = T::c(coeff);
                let g_tv = Array1::from_shape_fn(b, |g| {
                    if nnz[g] == 0 {
                        zero
                    } else {
                        lg * c / T::from_count(2 * nnz[g])
                    }
                });
                let (gs, ge) = segment_edge_l1_vjp_opt(
                    batch.a().view(),
                    s.view(),
                    seg,
                    g_tv.view(),
                    batch.symmetric_graphs().iter().all(|&sym| sym),
                    cot.edges.is_some(),
                );
                rows::add_into(&mut cot.s, &gs);
                if let (Some(edges), Some(ge)) = (&mut cot.edges, ge) {
                    *edges += &ge;
                }
            }
            (AuxLoss::AsymBalance(coeff), AuxCache::AsymBalance { quantile }) => {
                let c = T::c(coeff);
                let km1 = kt - T::one();
                let q = &quantile.values;
                // d loss_g / d s_ik (direct) = -c lg asym'(s_ik - q_gk) / (n (K-1)),
                // formed where it is used (no N x K array of it)
                let scale = |g: usize| -lg * c / (T::from_count(seg.size(g)) * km1);
                let direct =
                    |scale: T, v: T, qq: T| scale * if v - qq >= zero { km1 } else { -T::one() };
                // through the quantile: q̄_gk = -sum_i direct_ik (summed as
                // segment_sum sums, so the same bits)
                let q_rows = q.as_standard_layout();
                let q_rows = q_rows.as_slice().expect("standard layout");
                let sum_direct = reduce_segment_rows(
                    s.view(),
                    seg,
                    k,
                    |g, rows: &[T], acc: &mut [T]| {
                        let (sc, qg) = (scale(g), &q_rows[g * k..(g + 1) * k]);
                        for row in rows.chunks_exact(k) {
                            for ((a, &v), &qq) in acc.iter_mut().zip(row).zip(qg) {
                                *a += direct(sc, v, qq);
                            }
                        }
                    },
                    add_row,
                    |_, _| {},
                );
                let g_q = -sum_direct;
                add_rows(&mut cot.s, seg, |g, n, mut row| {
                    let sc = scale(g);
                    Zip::from(&mut row)
                        .and(&s.row(n))
                        .and(&q.row(g))
                        .for_each(|o, &v, &qq| *o += direct(sc, v, qq));
                });
                segment_kth_largest_vjp_add(quantile, g_q.view(), &mut cot.s);
            }
            _ => unreachable!("loss caches are built in the order of the losses"),
        }
    }

    pub(crate) fn backward(
        &self,
        batch: &DisjointBatch<T>,
        cache: &ClusteringCache<T>,
        grad: &PooledGrad<T>,
    ) -> Result<Gradients<T>> {
        let seg = batch.segments();
        let b = seg.num_graphs();
        let k = self.k;
        cache.stamp.check(self.stamp(), self.name)?;
        cache.input.check(batch)?;
        let names: Vec<&str> = self.losses.iter().map(|(l, _)| *l).collect();
        check_pooled_grad(grad, &cache.x_shape, b * k * k, &names)?;
        let g_out = grad
            .edge_weights
            .view()
            .into_shape_with_order((b * k, k))
            .map_err(|e| PoolError::GradientShape {
                what: "pooled edge weights".into(),
                expected: format!("{} values", b * k * k),
                got: e.to_string(),
            })?;
        let inv_b = if b == 0 {
            T::zero()
        } else {
            T::one() / T::from_count(b)
        };
        // each loss's per-graph gradient (the mean's 1/B of the whole
        // batch's), if its gradient is not 0
        let loss_grads: Vec<Option<T>> = names
            .iter()
            .map(|&name| {
                let lg = grad.loss(name);
                (lg != T::zero()).then(|| lg * inv_b)
            })
            .collect();
        cache
            .saved
            .backward(self.name, batch, &self.params, k, |part, state, rows| {
                self.backward_state(
                    part,
                    state,
                    grad.x.slice(s![rows.clone(), ..]),
                    g_out.slice(s![rows, ..]),
                    &loss_grads,
                )
            })
    }

    /// The backward pass of one batch (or run) from its saved state, the
    /// output gradients `g_x` ($\bar X'$) and `g_out` (the pooled blocks'),
    /// and each loss's per-graph gradient; the gradients are not checked.
    fn backward_state(
        &self,
        batch: &DisjointBatch<T>,
        state: &BatchState<T>,
        g_x: ndarray::ArrayView2<'_, T>,
        g_out: ndarray::ArrayView2<'_, T>,
        loss_grads: &[Option<T>],
    ) -> Result<Gradients<T>> {
        let seg = batch.segments();
        let b = seg.num_graphs();
        let k = self.k;
        let s = &state.assignment.s;
        let a = batch.a().view();
        let edge_grad = batch.edge_weight_grad();
        let mut cot = Cotangents {
            s: crate::kernels::rows::zeros(s.nrows(), s.ncols()),
            // the losses' direct gradient of the raw blocks; the output's
            // joins it below, through the normalisation when there is one
            blocks: match &state.normalized {
                Some(_) => crate::kernels::rows::zeros(b * k, k),
                None => crate::kernels::rows::fresh_copy(g_out),
            },
            degrees: Array1::zeros(if state.degrees.is_some() && edge_grad {
                batch.num_nodes()
            } else {
                0
            }),
            edges: edge_grad.then(|| Array1::zeros(a.nnz())),
        };
        // the backward pass does not read the losses' forward values
        let inputs = LossInputs {
            batch,
            s,
            degrees: state.degrees.as_ref(),
            edge_l1: None,
        };
        for ((&(_, loss), aux), lg) in self.losses.iter().zip(&state.aux).zip(loss_grads) {
            if let Some(lg) = *lg {
                self.loss_backward(loss, aux, &inputs, lg, &mut cot);
            }
        }
        let (blocks, wide) = match &state.normalized {
            Some(norm) => {
                split_wide_blocks::<T>(normalize_blocks_vjp(norm, g_out, cot.blocks.view()), k)
            }
            None => (cot.blocks, Vec::new()),
        };
        // reduce
        let g_selu = state
            .selu
            .as_ref()
            .map(|(pre, out)| Activation::Selu.vjp(pre.view(), out.view(), g_x));
        let g_x_pre = g_selu.as_ref().map_or(g_x, |g| g.view());
        // its two terms, S-bar's (X X'-bar^T per graph) and X-bar's (S X'-bar
        // per graph), are formed chunk by chunk below, where the MLP's
        // backward pass reads the same rows of X and writes the same rows
        // of X-bar, instead of as two arrays written whole and read back
        let x_view = batch.x().view();
        let f = x_view.ncols();
        let s_view = s.view();
        let (x_rows, s_rows) = (rows::row_major(&x_view), rows::row_major(&s_view));
        let g_rows = rows::row_major(&g_x_pre);
        // connect
        let (gs_connect, ga_connect) = state.assignment.connect_blocks_vjp_opt(
            a,
            seg,
            batch.symmetric_graphs(),
            &state.connect,
            blocks.view(),
            edge_grad,
        );
        let mut edges = cot.edges;
        if let (Some(edges), Some(ga)) = (&mut edges, ga_connect) {
            *edges += &ga;
        }
        let wide: Vec<WideGraph> = wide
            .into_iter()
            .map(|(g, block)| WideGraph::connect_vjp(batch, g, s, &state.connect, block))
            .collect();
        if let Some(edges) = &mut edges {
            for w in &wide {
                w.add_edges(edges);
            }
            if state.degrees.is_some() {
                *edges += &row_sums_vjp(a, cot.degrees.view());
            }
        }
        // select: S's gradient (the losses' terms, then the reduce's, then
        // the connect's), its softmax VJP and the MLP's backward pass, formed
        // chunk by chunk as the MLP's backward pass reads them
        let g_logits = |r: std::ops::Range<usize>| {
            let piece = s![r.clone(), ..];
            let mut gs = cot.s.slice(piece).to_owned();
            let out = gs.as_slice_mut().expect("a fresh array");
            segment_matmul_tn_vjp_s_add_rows(&x_rows, f, &g_rows, k, seg, r.clone(), out);
            gs += &gs_connect.slice(piece);
            let mut g = softmax_rows_vjp(s.slice(piece), gs.view());
            for w in &wide {
                w.softmax_vjp_rows(s, r.clone(), gs.view(), &mut g);
            }
            g
        };
        let mut params = self.params.zeros_like();
        let reduce_x = |r: std::ops::Range<usize>, mut out: ArrayViewMut2<'_, T>| {
            let out = out.as_slice_mut().expect("row chunks of a fresh matrix");
            segment_matmul_nn_add_rows(&s_rows, k, &g_rows, f, seg, r, out);
        };
        let gx = self.mlp.backward_streamed_into(
            &self.params,
            batch.x().view(),
            &state.mlp,
            g_logits,
            &mut params,
            reduce_x,
        )?;
        Ok(Gradients {
            x: gx,
            edge_weights: edges,
            params,
        })
    }
}

/// $c(g, n)\, (s_n \cdot s_n)$ for every node $n$ (of graph $g$): the cut
/// ratio's per-node terms and their gradient. The dot products run on
/// row-major slices, ndarray's `dot` on contiguous rows bit for bit,
/// without a view and a call per node.
fn scaled_self_dots<T: Scalar>(
    s: &Array2<T>,
    seg: &Segments,
    c: impl Fn(usize, usize) -> T + Sync,
) -> Array1<T> {
    let k = s.ncols();
    let s_view = s.view();
    let s_rows = rows::row_major(&s_view);
    Array1::from(map_nodes(seg, |g, n| {
        let sn = &s_rows[n * k..(n + 1) * k];
        c(g, n) * rows::dot(sn, sn)
    }))
}

/// Adds `f(graph, node, row)` into every row of `out` (row-parallel).
fn add_rows<T: Scalar, F>(out: &mut Array2<T>, seg: &Segments, f: F)
where
    F: Fn(usize, usize, ndarray::ArrayViewMut1<'_, T>) + Sync,
{
    crate::kernels::for_each_node_row(out.view_mut(), seg, f);
}

/// Implements [`crate::framework::Layer`] for a pool wrapping a
/// [`DenseClustering`] in its field `inner`.
macro_rules! clustering_layer {
    ($name:ident, $example:literal) => {
        impl<T: $crate::scalar::Scalar> $name<T> {
            /// Pools a batch of small graphs run by run: in runs of
            /// consecutive whole graphs of at most `nodes` nodes together,
            /// each run as a batch of its own, in parallel, so that every
            /// step reads what the previous one wrote while it is still in
            /// cache. A batch with a graph larger than `nodes`, or that
            /// fits in one run, is pooled whole; `nodes = 0` pools every
            /// batch whole. Default
            /// [`RUN_NODES`](crate::layers::RUN_NODES).
            ///
            /// The outputs, losses and gradients of $X$ and of the edge
            /// weights are the whole batch's, bit for bit, whatever the
            /// budget (every one depends on its own graph alone). The
            /// parameters' gradients are sums over the nodes of the batch:
            /// run by run, each run's sum is added in run order, so they
            /// can differ from the whole batch's in the last bits; for a
            /// given budget they never depend on the thread count.
            ///
            /// ```
            /// use graphpool::framework::Layer;
            /// use graphpool::layers::*;
            /// use graphpool::nn::Activation;
            /// use graphpool::DisjointBatch;
            /// use ndarray::Array2;
            /// use sprs::CsMat;
            /// // three graphs of two nodes joined by one edge each
            /// let a = CsMat::new((6, 6), vec![0, 1, 2, 3, 4, 5, 6], vec![1, 0, 3, 2, 5, 4], vec![1.0; 6]);
            /// let x = Array2::from_shape_fn((6, 4), |(i, j)| ((i * 4 + j) % 7) as f64 / 7.0);
            /// let batch = DisjointBatch::from_offsets(x, a, vec![0, 2, 4, 6])?;
            #[doc = concat!("let pool = ", $example, ";")]
            /// // three runs of one graph each, then the whole batch
            /// let by_runs = pool.clone().with_run_nodes(2).call(&batch)?;
            /// let whole = pool.with_run_nodes(0).call(&batch)?;
            /// assert_eq!(by_runs.batch.x(), whole.batch.x());
            /// assert_eq!(by_runs.batch.a(), whole.batch.a());
            /// assert_eq!(by_runs.losses, whole.losses);
            /// # Ok::<(), graphpool::PoolError>(())
            /// ```
            pub fn with_run_nodes(mut self, nodes: usize) -> Self {
                self.inner.set_run_nodes(nodes);
                self
            }

            /// The node budget of a run ([`Self::with_run_nodes`]).
            pub fn run_nodes(&self) -> usize {
                self.inner.run_nodes()
            }

            $crate::layers::return_selection_methods!($example, inner.return_selection);
        }

        impl<T: $crate::scalar::Scalar> $crate::framework::Layer<T> for $name<T> {
            type Output = $crate::framework::Pooled<T>;
            type Cache = $crate::layers::clustering::ClusteringCache<T>;

            fn forward(
                &self,
                batch: &$crate::batch::DisjointBatch<T>,
            ) -> $crate::error::Result<(Self::Output, Self::Cache)> {
                self.inner.forward(batch)
            }

            fn call(
                &self,
                batch: &$crate::batch::DisjointBatch<T>,
            ) -> $crate::error::Result<Self::Output> {
                self.inner.call(batch)
            }

            fn backward(
                &self,
                batch: &$crate::batch::DisjointBatch<T>,
                cache: &Self::Cache,
                grad: &$crate::framework::PooledGrad<T>,
            ) -> $crate::error::Result<$crate::framework::Gradients<T>> {
                self.inner.backward(batch, cache, grad)
            }

            fn params(&self) -> &$crate::nn::Params<T> {
                self.inner.params()
            }

            fn set_param(
                &mut self,
                name: &str,
                value: ndarray::ArrayD<T>,
            ) -> $crate::error::Result<()> {
                self.inner.set_param(name, value)
            }
        }
    };
}
pub(crate) use clustering_layer;
