//! The shared core of the score-based selection pools ([`super::TopKPool`],
//! [`super::SAGPool`]): from a raw score per node to the kept subset, the
//! gated features and the induced adjacency, and back. Each layer only
//! computes its score $y$ (and differentiates it); everything after the
//! score lives here once.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;

use crate::batch::{check_finite_2d, DisjointBatch};
use crate::error::{PoolError, Result};
use crate::framework::layer::{check_pooled_grad, InputSignature, LayerStamp};
use crate::framework::pooled::{cached_and_returned, pooled_x_overflow};
use crate::framework::{Losses, Pooled, PooledGrad, Selection, Subset};
use crate::kernels::gather::{
    gather_gated_rows_checked, gather_scaled_rows_vjp_scale, linear_score_selection_vjp,
    scatter_scaled_rows_plus_checked, weighted_row_sum,
};
use crate::kernels::rows::{fresh_copy_slice, fresh_vec, row_major};
use crate::kernels::segment::{segment_max, segment_softmax, segment_softmax_vjp};
use crate::kernels::sort::{
    check_scores, keep_count, linear_top_k_rows, scored_top_k_rows, segment_top_k, ScoredRows,
};
use crate::kernels::sparse::{
    gcn_scores_of_run, gcn_spmv_with, induced_matrix, scatter_values, Induced,
};
use crate::kernels::{map_nodes, ROW_BLOCK};
use crate::nn::{matmul, Activation};
use crate::scalar::Scalar;
use crate::Segments;

/// The gate a selection pool multiplies the kept features with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Gating {
    /// $\tanh(y)$ (Cangea et al.; Spektral's default, PyG's `nonlinearity='tanh'`).
    #[default]
    Tanh,
    /// $\sigma(y)$ (Gao & Ji; Spektral's `sigmoid_gating=True`).
    Sigmoid,
}

impl Gating {
    /// `Sigmoid` if `sigmoid_gating`, else `Tanh` (Spektral's flag).
    pub fn from_sigmoid_gating(sigmoid_gating: bool) -> Self {
        if sigmoid_gating {
            Gating::Sigmoid
        } else {
            Gating::Tanh
        }
    }

    fn activation(self) -> Activation {
        match self {
            Gating::Tanh => Activation::Tanh,
            Gating::Sigmoid => Activation::Sigmoid,
        }
    }
}

/// How many nodes per graph a selection pool keeps.
///
/// Spektral only has [`KeepRule::Ratio`]; PyG's `ratio` argument is a
/// [`KeepRule::Ratio`] when it is a float below 1 and a
/// [`KeepRule::Count`] when it is an integer (PyG treats any `ratio >= 1` as
/// an integer $k$), and its `min_score` is [`KeepRule::MinScore`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeepRule {
    /// Keep $\lceil \text{ratio} \cdot n_g \rceil$ nodes of each graph
    /// (computed in `f32` as both references do), ratio in $(0, 1]$.
    Ratio(f64),
    /// Keep $\min(k, n_g)$ nodes of each graph, $k \ge 1$ (PyG's integer `ratio`).
    Count(usize),
    /// PyG's `min_score` $\tilde\alpha$: the score becomes
    /// $s = \operatorname{softmax}_g(y)$ per graph, every node with
    /// $s_i > \min(\max_{j \in g} s_j - 10^{-7}, \tilde\alpha)$ is kept (at
    /// least one per non-empty graph), and the gate is $s$ itself (no
    /// tanh/sigmoid). TopKPool's score is then $X p$, not normalised by
    /// $\|p\|$, as in PyG.
    MinScore(f64),
}

impl KeepRule {
    /// Checks the rule's parameter.
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] for a ratio outside $(0, 1]$, $k = 0$ or
    /// a non-finite `min_score`.
    pub fn validate(self) -> Result<Self> {
        let bad = |name: &str, value: String, expected: &str| PoolError::InvalidConfig {
            name: name.into(),
            value,
            expected: expected.into(),
        };
        match self {
            KeepRule::Ratio(r) if !(r > 0.0 && r <= 1.0) => Err(bad(
                "ratio",
                r.to_string(),
                "a fraction in (0, 1] of the nodes of each graph (for PyG's integer k use KeepRule::Count)",
            )),
            KeepRule::Count(0) => Err(bad(
                "k",
                "0".into(),
                "at least one node to keep per graph",
            )),
            KeepRule::MinScore(m) if !m.is_finite() => Err(bad(
                "min_score",
                m.to_string(),
                "a finite score threshold (PyG uses values in [0, 1])",
            )),
            ok => Ok(ok),
        }
    }

    /// Whether the score is turned into a per-graph softmax (PyG's `min_score`).
    pub fn uses_softmax(self) -> bool {
        matches!(self, KeepRule::MinScore(_))
    }

    /// How many nodes of a graph of `n` nodes a ratio or a count keeps
    /// ([`keep_count`], or $\min(k, n)$); `None` for a minimum score, which
    /// keeps by value.
    fn count(self, n: usize) -> Option<usize> {
        match self {
            KeepRule::Ratio(r) => Some(keep_count(r, n)),
            KeepRule::Count(k) => Some(k.min(n)),
            KeepRule::MinScore(_) => None,
        }
    }
}

/// PyG's epsilon in `torch_geometric.utils.softmax`.
const PYG_SOFTMAX_EPS: f64 = 1e-16;
/// PyG's `tol` in `topk(..., min_score)`.
const PYG_MIN_SCORE_TOL: f64 = 1e-7;

/// The configuration shared by the selection pools.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SelectionCore {
    pub(crate) keep: KeepRule,
    pub(crate) gating: Gating,
    pub(crate) multiplier: f64,
    /// Whether [`Pooled::selection`] holds the kept nodes and gates
    /// (Spektral's `return_selection`; `false` by default).
    pub(crate) return_selection: bool,
}

/// Saved state of a selection pool's forward pass ([`super::TopKPool`],
/// and inside [`super::SagPoolCache`]).
#[derive(Debug, Clone)]
pub struct SelectionPoolCache<T: Scalar> {
    pub(crate) subset: Subset<T>,
    /// The raw score of the kept nodes (for the gate's derivative).
    y_kept: Array1<T>,
    /// The per-graph softmax of the scores ([`KeepRule::MinScore`] only).
    softmax: Option<Array1<T>>,
    /// The source entry in the input adjacency of every pooled edge (empty
    /// when the batch does not ask for edge-weight gradients).
    source: Vec<usize>,
    x_shape: [usize; 2],
    nnz: usize,
    input: InputSignature,
    stamp: LayerStamp,
}

/// Gradients of the core with respect to its inputs, but for $X$: the
/// direct path through the gated features is added by
/// [`CoreGrads::grad_x`] together with the layer's path through the score,
/// so that $\bar X$ is written once.
pub(crate) struct CoreGrads<'a, T: Scalar> {
    /// Through the induced adjacency (`None` with edge-weight gradients off).
    pub(crate) edge_weights: Option<Array1<T>>,
    /// With respect to the raw score of every node.
    pub(crate) y: Array1<T>,
    /// The output gradient of the pooled features times the multiplier.
    gx_out: ndarray::CowArray<'a, T, ndarray::Ix2>,
    cache: &'a SelectionPoolCache<T>,
}

/// The gradients of a selection with a linear score
/// ([`SelectionCore::backward_linear_score`]).
pub(crate) struct LinearScoreGrads<T: Scalar> {
    /// $\bar X$, written once.
    pub(crate) x: Array2<T>,
    /// The flat index of the first non-finite entry of `x`, if any.
    pub(crate) first_bad: Option<usize>,
    /// Through the induced adjacency (`None` with edge-weight gradients off).
    pub(crate) edge_weights: Option<Array1<T>>,
    /// $\bar w = X^\top \bar y$.
    pub(crate) w: Array1<T>,
}

impl<T: Scalar> CoreGrads<'_, T> {
    /// $\bar X$: the direct path (the gates times the pooled gradient, on the
    /// kept rows) plus the score's path $C V$ ($C$: $N \times r$, $V$:
    /// $r \times F$), see
    /// [`crate::kernels::gather::scatter_scaled_rows_plus`]; with the flat index
    /// of its first non-finite entry, found as it is written (for
    /// [`crate::framework::layer::finite_gradients_given_x`]).
    pub(crate) fn grad_x(&self, c: ArrayView2<T>, v: ArrayView2<T>) -> (Array2<T>, Option<usize>) {
        let sub = &self.cache.subset;
        scatter_scaled_rows_plus_checked(
            c.nrows(),
            &sub.kept,
            sub.gate.view(),
            self.gx_out.view(),
            c,
            v,
        )
    }
}

/// The raw scores a selection pool ranks its nodes by.
pub(crate) enum Scores<'a, T> {
    /// Computed by the layer (SAGPool's graph convolution).
    Given(Array1<T>),
    /// $y = X p$ for a projection $p$ ($F$; TopKPool's): computed by the
    /// core, in one pass with the selection and the gather when it can.
    Linear(ArrayView1<'a, T>),
    /// $y = \hat A (X w)$ for a kernel $w$ ($F$), with $\hat D^{-1/2}$ given
    /// as `u` (SAGPool's graph convolution): computed by the core, in one
    /// pass with the selection and the gather when it can; $X w$ is left in
    /// `xw` for the backward pass.
    Gcn {
        w: ArrayView1<'a, T>,
        u: ArrayView1<'a, T>,
        xw: &'a mut Option<Array1<T>>,
    },
}

impl<T: Scalar> Scores<'_, T> {
    /// The raw scores by separate passes: [`matmul`] for $X p$ or $X w$,
    /// then for the graph convolution [`gcn_spmv_with`], leaving $X w$ in
    /// `xw`. The bits of the one-pass forms, for any batch; what the
    /// layers' SRC `select` and the forward pass's fallback compute.
    pub(crate) fn by_separate_passes(self, batch: &DisjointBatch<T>) -> Array1<T> {
        let x = batch.x().view();
        match self {
            Scores::Given(y) => y,
            Scores::Linear(p) => matmul(x, p.insert_axis(Axis(1)), None).remove_axis(Axis(1)),
            Scores::Gcn { w, u, xw } => {
                let v = matmul(x, w.insert_axis(Axis(1)), None).remove_axis(Axis(1));
                let y = gcn_spmv_with(batch.a().view(), u, v.view());
                *xw = Some(v);
                y
            }
        }
    }
}

/// What a forward pass has after its selection and its gather: the raw
/// scores, the kept nodes with their gates, the softmax of
/// [`KeepRule::MinScore`], the gated rows and the flat index of their
/// first non-finite entry.
struct Gathered<T: Scalar> {
    y: Array1<T>,
    subset: Subset<T>,
    softmax: Option<Array1<T>>,
    x: Array2<T>,
    first_bad_x: Option<usize>,
}

impl SelectionCore {
    pub(crate) fn new(keep: KeepRule, gating: Gating) -> Result<Self> {
        Ok(Self {
            keep: keep.validate()?,
            gating,
            multiplier: 1.0,
            return_selection: false,
        })
    }

    /// A multiplier must be finite in the layer's float type `T` (`1e300`
    /// is finite in `f64` but infinite in `f32`).
    pub(crate) fn check_multiplier<T: Scalar>(m: f64) -> Result<f64> {
        if m.is_finite() && T::c(m).is_finite() {
            Ok(m)
        } else {
            Err(PoolError::InvalidConfig {
                name: "multiplier".into(),
                value: m.to_string(),
                expected:
                    "a finite factor for the pooled features (finite in the layer's float type)"
                        .into(),
            })
        }
    }

    /// The kept nodes (ascending) and their gates from the raw scores, and
    /// the softmax of the scores for [`KeepRule::MinScore`].
    pub(crate) fn select<T: Scalar>(
        &self,
        y: ArrayView1<T>,
        segments: &Segments,
    ) -> Result<(Subset<T>, Option<Array1<T>>)> {
        let (kept, softmax) = self.choose(y, segments)?;
        let gate = {
            let (values, act) = self.gate_of(y, softmax.as_ref());
            // one gate per kept node, in parallel (elementwise: the same bits
            // on any thread count)
            let mut g: Vec<T> = kept.par_iter().map(|&n| values[n]).collect();
            if let Some(act) = act {
                g.par_chunks_mut(ROW_BLOCK)
                    .for_each(|c| act.apply_in_place(c));
            }
            Array1::from(g)
        };
        Ok((Subset { kept, gate }, softmax))
    }

    /// The kept nodes (ascending) from the raw scores, and the softmax of
    /// the scores for [`KeepRule::MinScore`].
    fn choose<T: Scalar>(
        &self,
        y: ArrayView1<T>,
        segments: &Segments,
    ) -> Result<(Vec<usize>, Option<Array1<T>>)> {
        check_scores(y)?;
        match self.keep {
            KeepRule::Ratio(_) | KeepRule::Count(_) => {
                let count = |n| self.keep.count(n).unwrap_or(n);
                Ok((segment_top_k(y, segments, count)?, None))
            }
            KeepRule::MinScore(min_score) => {
                let s = segment_softmax(y, segments, T::c(PYG_SOFTMAX_EPS));
                let smax = segment_max(s.view().insert_axis(Axis(1)), segments);
                let keep = map_nodes(segments, |g, n| {
                    let thr = (smax[[g, 0]] - T::c(PYG_MIN_SCORE_TOL)).min(T::c(min_score));
                    s[n] > thr
                });
                let kept: Vec<usize> = (0..y.len()).filter(|&n| keep[n]).collect();
                Ok((kept, Some(s)))
            }
        }
    }

    /// The gate of a kept node `n` is `act` of `values[n]`: the gating
    /// activation of its raw score, or for [`KeepRule::MinScore`] its
    /// softmax itself (`softmax` is then given, and `act` is `None`).
    fn gate_of<'a, T: Scalar>(
        &self,
        y: ArrayView1<'a, T>,
        softmax: Option<&'a Array1<T>>,
    ) -> (ArrayView1<'a, T>, Option<Activation>) {
        match softmax {
            Some(s) => (s.view(), None),
            None => (y, Some(self.gating.activation())),
        }
    }

    /// The generic reduce of `selection` times the multiplier (for the
    /// layers' [`crate::framework::SrcPool::reduce`]).
    pub(crate) fn reduce<T: Scalar>(
        &self,
        batch: &DisjointBatch<T>,
        selection: &Selection<T>,
    ) -> Array2<T> {
        let x = batch.x().view();
        let mut out = match selection {
            Selection::Subset(s) => s.reduce(x),
            Selection::Dense(s) => s.reduce(x, batch.segments()),
            Selection::Sparse(s) => s.reduce(x),
        };
        if self.multiplier != 1.0 {
            let m = T::c(self.multiplier);
            out.par_mapv_inplace(|v| v * m);
        }
        out
    }

    /// Select, reduce (gated features times the multiplier), connect
    /// (induced subgraph) and reduce_index from the raw scores: the
    /// pooled result, and if `cache`, what a cache needs (the subset, the raw
    /// scores of the kept nodes, the softmax, the source of every pooled
    /// edge; without it, the sources, the kept raw scores and the copy of
    /// the subset are not formed).
    ///
    /// Linear scores $y = X p$ with a keep rule by ratio or count take one
    /// pass over each run of small graphs for the scores, the selection,
    /// the gates and the gathered rows ([`linear_top_k_rows`]); otherwise (a
    /// minimum score, a graph above [`crate::kernels::CHUNK`] nodes, no
    /// features) the scores come from [`Scores::by_separate_passes`] and
    /// the steps are separate passes. The same result either way.
    #[allow(clippy::type_complexity)]
    fn run<T: Scalar>(
        &self,
        layer: &str,
        batch: &DisjointBatch<T>,
        mut scores: Scores<'_, T>,
        cache: bool,
    ) -> Result<(
        Pooled<T>,
        Option<(Subset<T>, Array1<T>, Option<Array1<T>>, Vec<usize>)>,
    )> {
        let fused = match &mut scores {
            Scores::Given(_) => None,
            Scores::Linear(p) => {
                let p = p.as_standard_layout();
                let p = p.as_slice().expect("standard");
                self.fused(batch, |x, seg, count, gate| {
                    linear_top_k_rows(x, p, seg, count, gate)
                })?
                .map(|(gathered, _)| gathered)
            }
            Scores::Gcn { w, u, xw } => {
                let (ws, us) = (w.as_standard_layout(), u.as_standard_layout());
                let (ws, us) = (
                    ws.as_slice().expect("standard"),
                    us.as_slice().expect("standard"),
                );
                let a = batch.a().view();
                let fused = self.fused(batch, |x, seg, count, gate| {
                    let f = x.ncols();
                    let xv = x.view();
                    let xs = row_major(&xv);
                    let score = |nodes, y: &mut [T], v: &mut [T]| {
                        gcn_scores_of_run(a, us, &xs, f, ws, nodes, y, v)
                    };
                    scored_top_k_rows(x, seg, true, score, count, gate)
                })?;
                fused.map(|(gathered, v)| {
                    **xw = Some(v);
                    gathered
                })
            }
        };
        if let Some(gathered) = fused {
            return self.finish_run(layer, batch, gathered, cache);
        }
        let y = scores.by_separate_passes(batch);
        let (kept, softmax) = self.choose(y.view(), batch.segments())?;
        // the gather computes the gates as it goes, and checks what it
        // writes: `x` is not scanned again below
        let (values, act) = self.gate_of(y.view(), softmax.as_ref());
        let (x, gate, bad) =
            gather_gated_rows_checked(batch.x().view(), &kept, values, |g: &mut [T]| {
                if let Some(act) = act {
                    act.apply_in_place(g);
                }
            });
        let gathered = Gathered {
            y,
            subset: Subset { kept, gate },
            softmax,
            x,
            first_bad_x: bad,
        };
        self.finish_run(layer, batch, gathered, cache)
    }

    /// The scores, the selection and the gather in one pass over each run
    /// of small graphs (`pass`: [`linear_top_k_rows`] or
    /// [`scored_top_k_rows`], given $X$, the segments, the keep count and
    /// the gate), when the keep rule is a ratio or a count and the batch
    /// allows it; with the values the scorer wrote beside the scores.
    fn fused<T: Scalar, P>(
        &self,
        batch: &DisjointBatch<T>,
        pass: P,
    ) -> Result<Option<(Gathered<T>, Array1<T>)>>
    where
        P: FnOnce(
            ArrayView2<T>,
            &Segments,
            &(dyn Fn(usize) -> usize + Sync),
            &(dyn Fn(&mut [T]) + Sync),
        ) -> Result<Option<ScoredRows<T>>>,
    {
        if self.keep.uses_softmax() {
            return Ok(None);
        }
        let act = self.gating.activation();
        let fused = pass(
            batch.x().view(),
            batch.segments(),
            &|n| self.keep.count(n).unwrap_or(n),
            &|g: &mut [T]| act.apply_in_place(g),
        )?;
        Ok(fused.map(|s| {
            let gathered = Gathered {
                y: s.scores,
                subset: Subset {
                    kept: s.kept,
                    gate: s.gate,
                },
                softmax: None,
                x: s.rows,
                first_bad_x: s.first_non_finite_row_entry,
            };
            (gathered, s.node_values)
        }))
    }

    /// The rest of a forward pass after the selection and the gather:
    /// the multiplier, reduce_index, connect, and the cache's parts.
    #[allow(clippy::type_complexity)]
    fn finish_run<T: Scalar>(
        &self,
        layer: &str,
        batch: &DisjointBatch<T>,
        gathered: Gathered<T>,
        cache: bool,
    ) -> Result<(
        Pooled<T>,
        Option<(Subset<T>, Array1<T>, Option<Array1<T>>, Vec<usize>)>,
    )> {
        let Gathered {
            y,
            subset,
            softmax,
            mut x,
            first_bad_x: bad,
        } = gathered;
        if let Some(p) = bad {
            return Err(pooled_x_overflow(layer, &x, p));
        }
        if self.multiplier != 1.0 {
            let m = T::c(self.multiplier);
            x.par_mapv_inplace(|v| v * m);
            check_finite_2d(&x.view(), "pooled x (the multiplier overflows)")?;
        }
        let segments = subset.reduce_index(batch.segments());
        // the sources of the pooled edges only serve the edge weights'
        // gradient: without a cache, or with that gradient off (checked
        // again at the backward pass, InputSignature), they are not formed
        let a = batch.a().view();
        let Induced { matrix, source } = if cache && batch.edge_weight_grad() {
            subset.connect(a)
        } else {
            Induced {
                matrix: induced_matrix(a, &subset.kept),
                source: Vec::new(),
            }
        };
        let y_kept = cache.then(|| {
            let mut y_kept = fresh_vec(subset.kept.len());
            y_kept
                .par_iter_mut()
                .zip(&subset.kept)
                .for_each(|(o, &n)| *o = y[n]);
            Array1::from(y_kept)
        });
        // the cache's copy, when both keep the subset, in fresh memory
        let (cached, returned) =
            cached_and_returned(cache, self.return_selection, subset, |subset| Subset {
                kept: fresh_copy_slice(&subset.kept),
                gate: Array1::from(fresh_copy_slice(
                    subset
                        .gate
                        .as_slice()
                        .expect("a fresh vector is contiguous"),
                )),
            });
        let kept = cached
            .zip(y_kept)
            .map(|(subset, y_kept)| (subset, y_kept, softmax, source));
        let pooled = Pooled::checked_after_x(
            layer,
            x,
            matrix,
            segments,
            returned.map(Selection::Subset),
            Some(y),
            Losses::new(),
        )?;
        Ok((pooled, kept))
    }

    /// The pooled result of [`SelectionCore::forward`] without a cache.
    pub(crate) fn pool<T: Scalar>(
        &self,
        layer: &str,
        batch: &DisjointBatch<T>,
        scores: Scores<'_, T>,
    ) -> Result<Pooled<T>> {
        Ok(self.run(layer, batch, scores, false)?.0)
    }

    /// Select, reduce, connect and reduce_index from the raw scores, with
    /// the cache of the backward pass.
    pub(crate) fn forward<T: Scalar>(
        &self,
        layer: &str,
        stamp: LayerStamp,
        batch: &DisjointBatch<T>,
        scores: Scores<'_, T>,
    ) -> Result<(Pooled<T>, SelectionPoolCache<T>)> {
        let run = self.run(layer, batch, scores, true)?;
        Ok(Self::with_cache(batch, stamp, run))
    }

    /// The pooled result and the cache of a run with a cache.
    #[allow(clippy::type_complexity)]
    fn with_cache<T: Scalar>(
        batch: &DisjointBatch<T>,
        stamp: LayerStamp,
        (pooled, kept): (
            Pooled<T>,
            Option<(Subset<T>, Array1<T>, Option<Array1<T>>, Vec<usize>)>,
        ),
    ) -> (Pooled<T>, SelectionPoolCache<T>) {
        let (subset, y_kept, softmax, source) = kept.expect("run with a cache");
        let x = pooled.batch.x();
        let cache = SelectionPoolCache {
            y_kept,
            softmax,
            x_shape: [x.nrows(), x.ncols()],
            nnz: pooled.batch.a().nnz(),
            subset,
            source,
            input: InputSignature::of(batch),
            stamp,
        };
        (pooled, cache)
    }

    /// What every selection pool's backward pass starts with: the checks of
    /// the cache and of `grad`, the pooled features' gradient times the
    /// multiplier, and the gradient of the edge weights through the induced
    /// adjacency (`None` with edge-weight gradients off).
    #[allow(clippy::type_complexity)]
    fn backward_shared<'a, T: Scalar>(
        &self,
        layer: &str,
        stamp: LayerStamp,
        batch: &DisjointBatch<T>,
        cache: &'a SelectionPoolCache<T>,
        grad: &'a PooledGrad<T>,
    ) -> Result<(ndarray::CowArray<'a, T, ndarray::Ix2>, Option<Array1<T>>)> {
        cache.stamp.check(stamp, layer)?;
        cache.input.check(batch)?;
        check_pooled_grad(grad, &cache.x_shape, cache.nnz, &[])?;
        let gx_out: ndarray::CowArray<'a, T, ndarray::Ix2> = if self.multiplier != 1.0 {
            let m = T::c(self.multiplier);
            grad.x.mapv(|v| v * m).into()
        } else {
            grad.x.view().into()
        };
        let edge_weights = batch.edge_weight_grad().then(|| {
            scatter_values(
                grad.edge_weights
                    .as_slice()
                    .expect("a one-dimensional array is contiguous"),
                &cache.source,
                batch.a().nnz(),
            )
        });
        Ok((gx_out, edge_weights))
    }

    /// The whole backward pass of a selection whose raw score is linear in
    /// $X$, $y = X w$ (TopKPool): $\bar X$ (with the flat index of its first
    /// non-finite entry), the edge weights' gradient and $\bar w = X^\top
    /// \bar y$. With a tanh or sigmoid gate every node's part is local, and
    /// [`linear_score_selection_vjp`] does it in one pass over the nodes;
    /// PyG's `min_score` softmax couples the nodes of a graph, so that rule
    /// goes through [`SelectionCore::backward`], [`CoreGrads::grad_x`] and
    /// [`weighted_row_sum`]. Both give the same bits as that composition.
    pub(crate) fn backward_linear_score<T: Scalar>(
        &self,
        (layer, stamp): (&str, LayerStamp),
        batch: &DisjointBatch<T>,
        cache: &SelectionPoolCache<T>,
        grad: &PooledGrad<T>,
        w: ArrayView1<T>,
    ) -> Result<LinearScoreGrads<T>> {
        let x = batch.x().view();
        if cache.softmax.is_some() {
            let core = self.backward((layer, stamp), batch, cache, grad)?;
            let (gx, first_bad) =
                core.grad_x(core.y.view().insert_axis(Axis(1)), w.insert_axis(Axis(0)));
            return Ok(LinearScoreGrads {
                w: weighted_row_sum(x, core.y.view()),
                x: gx,
                first_bad,
                edge_weights: core.edge_weights,
            });
        }
        let (gx_out, edge_weights) = self.backward_shared(layer, stamp, batch, cache, grad)?;
        let act = self.gating.activation();
        let sub = &cache.subset;
        let (gx, first_bad, gw) =
            linear_score_selection_vjp(x, &sub.kept, sub.gate.view(), gx_out.view(), w, |j, g| {
                g * act.derivative(cache.y_kept[j], sub.gate[j])
            });
        Ok(LinearScoreGrads {
            x: gx,
            first_bad,
            edge_weights,
            w: gw,
        })
    }

    /// The gradients of the core: through the gated features to $X$,
    /// through the induced adjacency to the edge weights, and through the
    /// gates to the raw scores (0 for dropped nodes: the choice itself is
    /// piecewise constant).
    pub(crate) fn backward<'a, T: Scalar>(
        &self,
        (layer, stamp): (&str, LayerStamp),
        batch: &DisjointBatch<T>,
        cache: &'a SelectionPoolCache<T>,
        grad: &'a PooledGrad<T>,
    ) -> Result<CoreGrads<'a, T>> {
        let (gx_out, edge_weights) = self.backward_shared(layer, stamp, batch, cache, grad)?;
        let kept = &cache.subset.kept;
        let ggate = gather_scaled_rows_vjp_scale(batch.x().view(), kept, gx_out.view());
        let n = batch.num_nodes();
        let gy = match &cache.softmax {
            None => {
                let act = self.gating.activation();
                on_kept(n, kept, |j| {
                    ggate[j] * act.derivative(cache.y_kept[j], cache.subset.gate[j])
                })
            }
            Some(s) => {
                let gs = on_kept(n, kept, |j| ggate[j]);
                segment_softmax_vjp(s.view(), gs.view(), batch.segments())
            }
        };
        Ok(CoreGrads {
            edge_weights,
            y: gy,
            gx_out,
            cache,
        })
    }
}

/// An $N$-vector that is `value(j)` at the `j`-th kept node (`kept`
/// ascending) and 0 elsewhere, written in parallel blocks of nodes (each
/// entry computed on its own: the same bits on any thread count).
fn on_kept<T: Scalar>(n: usize, kept: &[usize], value: impl Fn(usize) -> T + Sync) -> Array1<T> {
    let mut out: Vec<T> = fresh_vec(n);
    out.par_chunks_mut(ROW_BLOCK)
        .enumerate()
        .for_each(|(b, block)| {
            let lo = b * ROW_BLOCK;
            let first = kept.partition_point(|&k| k < lo);
            let last = kept.partition_point(|&k| k < lo + block.len());
            for (j, &node) in kept.iter().enumerate().take(last).skip(first) {
                block[node - lo] = value(j);
            }
        });
    Array1::from(out)
}

/// The builder methods every selection pool shares (gating, keep rule,
/// multiplier), implemented once on the pool's `core: SelectionCore`.
macro_rules! selection_builders {
    ($pool:ident, $example:expr) => {
        impl<T: Scalar> $pool<T> {
            /// Uses `gating` ($\tanh$ or $\sigma$) for the kept features.
            pub fn with_gating(mut self, gating: Gating) -> Self {
                self.core.gating = gating;
                self
            }

            /// Spektral's `sigmoid_gating` flag.
            pub fn with_sigmoid_gating(self, sigmoid_gating: bool) -> Self {
                self.with_gating(Gating::from_sigmoid_gating(sigmoid_gating))
            }

            /// Replaces how many nodes are kept (PyG's integer `ratio` or `min_score`).
            ///
            /// # Errors
            /// Those of [`KeepRule::validate`].
            pub fn with_keep(mut self, keep: KeepRule) -> Result<Self> {
                self.core.keep = keep.validate()?;
                Ok(self)
            }

            $crate::layers::return_selection_methods!($example, core.return_selection);

            /// PyG's `multiplier`: the pooled features are scaled by `m`.
            ///
            /// # Errors
            /// [`PoolError::InvalidConfig`] for an `m` that is not finite in `T`.
            pub fn with_multiplier(mut self, m: f64) -> Result<Self> {
                self.core.multiplier = SelectionCore::check_multiplier::<T>(m)?;
                Ok(self)
            }
        }
    };
}
pub(crate) use selection_builders;
