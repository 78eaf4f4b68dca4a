//! Decoding of fuzzer bytes into graphpool inputs, and the bodies of the
//! fuzz targets.
//!
//! The targets in `fuzz_targets/` are one line each: they hand the bytes to
//! a function of this file. The regression test `tests/fuzz_regressions.rs`
//! includes this file with `#[path]` and replays the saved inputs
//! (`fuzz/regressions/<target>/`, `fuzz/seeds/<target>/`) through exactly
//! the same code, in a debug build with overflow checks.
//!
//! Every run asserts, for every layer it builds:
//! * no panic, anywhere (constructors, forward, backward, `set_param`, the
//!   SRC steps, the batch constructors);
//! * a rejected configuration is `InvalidConfig`; a forward error is one of
//!   the documented kinds (`NonFinite`/`NonFiniteScore` on overflow,
//!   `NegativePathLength`, `ShapeMismatch` only for a wrong feature width),
//!   and on moderate inputs there is no overflow error at all;
//! * an `Ok` result holds only finite values and a valid pooled batch, and
//!   a second forward pass gives the same result;
//! * backward with a matching random cotangent returns finite gradients of
//!   the right shapes (or `NonFinite` on overflow, never on moderate inputs;
//!   for an `f32` clustering pool, inputs are moderate only if the exact
//!   gradient, computed in `f64`, fits `f32`);
//!   a mismatched gradient is `GradientShape`, another batch `ShapeMismatch`,
//!   a cache from before `set_param` `CacheMismatch`;
//! * inputs and parameters are never modified by a call.

use std::fmt::Debug;

use arbitrary::{Arbitrary, Unstructured};
use graphpool::framework::{
    Differentiable, Gradients, Layer, Pooled, PooledGrad, Selection, SrcPool,
};
use graphpool::layers::{
    AsymCheegerCutPool, DMoNPool, DMoNVariant, DiffPool, DiffPoolVariant, Gating,
    GlobalAttentionPool, GlobalAttnSumPool, GlobalAvgPool, GlobalMaxPool, GlobalSumPool,
    JustBalancePool, KeepRule, LaPool, MemAdjacency, MemPooling, MinCutPool, MinCutVariant,
    SAGPool, SagScorer, SortPool, TopKPool,
};
use graphpool::nn::{rng_from_seed, Activation, Params};
use graphpool::{DisjointBatch, PoolError, Scalar, Segments};
use ndarray::{Array1, Array2, Array3, ArrayD};
use sprs::CsMat;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The fuzz targets by name (the directory names under `fuzz/seeds/` and
/// `fuzz/regressions/`).
pub const TARGETS: [(&str, Target); 6] = [
    ("batch_construction", batch_construction),
    ("global_pools", global_pools),
    ("selection_pools", selection_pools),
    ("clustering_pools", clustering_pools),
    ("diff_mem_pools", diff_mem_pools),
    ("wide_features", wide_features),
];

/// Makes the fuzzing thread rayon's only worker (the `init` of every
/// target): with `RAYON_NUM_THREADS=1` alone, every parallel kernel call
/// would hand its work to a separate pool thread and wait for it, which
/// costs more than the tiny batches themselves. Results do not depend on
/// the thread count (tests/determinism.rs), so nothing is lost.
pub fn single_thread() {
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build_global();
}

/// Decodes the whole input as libfuzzer-sys's typed `fuzz_target!` does.
fn decode<'a, I: Arbitrary<'a>>(data: &'a [u8]) -> Option<I> {
    I::arbitrary_take_rest(Unstructured::new(data)).ok()
}

// ---------------------------------------------------------------- numbers

/// A finite number from a menu of magnitudes, so that moderate values
/// (where the layers do real work) are common and the extremes (0, 1e±30,
/// f32::MAX, subnormals, any finite f64) still appear.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Num(pub f64);

impl<'a> Arbitrary<'a> for Num {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let tag: u8 = u.arbitrary()?;
        let sign = if tag & 0x80 != 0 { -1.0 } else { 1.0 };
        Ok(Num(match tag & 0x0f {
            0..=7 => f64::from(u.arbitrary::<i8>()?) / 16.0,
            8 => 0.0,
            9 => sign * 1e30,
            10 => sign * 1e-30,
            11 => sign * 1e15,
            12 => sign * f64::from(f32::MAX),
            13 => sign * 5e-324,
            _ => {
                let v: f64 = u.arbitrary()?;
                if v.is_finite() {
                    v
                } else {
                    sign * f64::MAX
                }
            }
        }))
    }
}

impl Num {
    /// Zero or of magnitude in [1e-6, 1e6]: no honest result overflows.
    pub fn moderate(self) -> bool {
        moderate(self.0)
    }
}

fn moderate(v: f64) -> bool {
    v == 0.0 || (1e-6..=1e6).contains(&v.abs())
}

// ---------------------------------------------------------------- batches

/// Raw, unvalidated batch parts: whatever the bytes say.
#[derive(Debug, Arbitrary)]
pub struct RawBatch {
    /// Nodes (kept small).
    pub n: u8,
    /// Features per node.
    pub f: u8,
    /// Graph ids (may be unsorted, out of range, too few or too many).
    pub ids: Vec<u8>,
    /// Declared number of graphs.
    pub num_graphs: u8,
    /// Which huge `num_graphs` to try as well (most of the time none).
    pub huge_graphs: u8,
    /// CSR row pointer (may be malformed).
    pub indptr: Vec<u8>,
    /// CSR column indices (may be malformed).
    pub indices: Vec<u8>,
    /// Edge weights (may be non-finite).
    pub data: Vec<f64>,
    /// Features (may be non-finite).
    pub x: Vec<f64>,
    /// Segment offsets (may be malformed).
    pub offsets: Vec<u8>,
    /// A PyG edge list (may hold negative, out-of-range or duplicate ids).
    pub edge_index: Vec<(i8, i8)>,
    /// Per-node `i64` graph ids (may be negative).
    pub ids_i64: Vec<i8>,
    /// Whether the edge list comes with weights.
    pub weighted: bool,
}

impl RawBatch {
    fn x(&self) -> Array2<f64> {
        let n = self.n as usize % 48;
        let f = self.f as usize % 6;
        let mut xs = self.x.clone();
        xs.resize(n * f, 0.5);
        Array2::from_shape_vec((n, f), xs).unwrap_or_else(|_| Array2::zeros((n, f)))
    }

    /// Every checked constructor path on these parts; any outcome but a
    /// panic is fine, and each is returned for the checks of a valid batch.
    pub fn build_all(&self) -> Vec<Result<DisjointBatch<f64>, PoolError>> {
        let x = self.x();
        let ids: Vec<usize> = self.ids.iter().map(|&i| i as usize).collect();
        let parts = || {
            (
                self.indptr.iter().map(|&v| v as usize).collect::<Vec<_>>(),
                self.indices.iter().map(|&v| v as usize).collect::<Vec<_>>(),
                self.data.clone(),
            )
        };
        let mut out = Vec::new();
        // graph ids -> segments -> CSR parts
        out.push(
            Segments::from_graph_ids(&ids, self.num_graphs as usize).and_then(|seg| {
                let (ip, ix, d) = parts();
                DisjointBatch::from_csr_parts(x.clone(), ip, ix, d, seg)
            }),
        );
        // offsets -> CSR parts
        let offsets: Vec<usize> = self.offsets.iter().map(|&v| v as usize).collect();
        out.push(Segments::from_offsets(offsets).and_then(|seg| {
            let (ip, ix, d) = parts();
            DisjointBatch::from_csr_parts(x.clone(), ip, ix, d, seg)
        }));
        // a CSC adjacency is refused
        let n = x.nrows();
        let (ip, ix, d) = parts();
        if let Ok(csc) = CsMat::try_new_csc((n, n), ip, ix, d) {
            let r = DisjointBatch::from_graph_ids(x.clone(), csc, &ids, self.num_graphs as usize);
            if let Err(e) = &r {
                assert!(
                    !matches!(e, PoolError::InvalidCsr(_)),
                    "a structurally valid CSC matrix is not an InvalidCsr: {e}"
                );
            }
            out.push(r);
        }
        // a PyG edge list with i64 graph ids
        let ei: Vec<i64> = self
            .edge_index
            .iter()
            .map(|e| i64::from(e.0))
            .chain(self.edge_index.iter().map(|e| i64::from(e.1)))
            .collect();
        let e = self.edge_index.len();
        let ei = Array2::from_shape_vec((2, e), ei).unwrap_or_else(|_| Array2::zeros((2, 0)));
        let mut w = self.data.clone();
        w.resize(e, 1.0);
        let gids: Vec<i64> = self.ids_i64.iter().map(|&v| i64::from(v)).collect();
        out.push(DisjointBatch::from_edge_index(
            x.clone(),
            ei.view(),
            self.weighted.then_some(&w[..]),
            &gids,
            self.num_graphs as usize,
        ));
        // a garbage number of graphs is a typed error, not an overflow or an abort
        let huge = [usize::MAX, usize::MAX / 2, 1 << 60];
        if let Some(&g) = huge.get(self.huge_graphs as usize % 16) {
            match Segments::from_graph_ids(&ids, g) {
                Err(PoolError::InvalidConfig { .. }) => {}
                Err(PoolError::UnsortedGraphIds { .. }) => {}
                other => panic!("num_graphs = {g} gave {other:?}"),
            }
        }
        out
    }
}

/// A *valid* small batch drawn from the bytes (so that the layers get
/// exercised, not only the validation): up to 5 graphs of up to 9 nodes
/// (empty ones included), up to 4 features (0 included), symmetric or
/// directed edges, self loops, zero, negative, tiny and huge weights.
#[derive(Debug, Clone)]
pub struct ValidBatch(pub DisjointBatch<f64>);

impl<'a> Arbitrary<'a> for ValidBatch {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let graphs = u.int_in_range(0..=5usize)?;
        let f = u.int_in_range(0..=4usize)?;
        let directed: bool = u.arbitrary()?;
        let mut sizes = Vec::with_capacity(graphs);
        for _ in 0..graphs {
            sizes.push(u.int_in_range(0..=9usize)?);
        }
        let seg = Segments::from_sizes(&sizes);
        let n = seg.num_nodes();
        let mut xs = Vec::with_capacity(n * f);
        for _ in 0..n * f {
            xs.push(Num::arbitrary(u)?.0);
        }
        let x =
            Array2::from_shape_vec((n, f), xs).map_err(|_| arbitrary::Error::IncorrectFormat)?;
        let mut tri = sprs::TriMat::new((n, n));
        for r in seg.ranges() {
            for i in r.clone() {
                for j in i..r.end {
                    if u.ratio(1u8, 3u8)? {
                        let w = Num::arbitrary(u)?.0;
                        if !directed {
                            tri.add_triplet(i, j, w);
                            if i != j {
                                tri.add_triplet(j, i, w);
                            }
                        } else if u.arbitrary::<bool>()? {
                            tri.add_triplet(i, j, w);
                        } else {
                            tri.add_triplet(j, i, w);
                        }
                    }
                }
            }
        }
        DisjointBatch::new(x, tri.to_csr(), seg)
            .map(ValidBatch)
            .map_err(|_| arbitrary::Error::IncorrectFormat)
    }
}

impl ValidBatch {
    /// Every feature and edge weight zero or of magnitude in [1e-6, 1e6].
    pub fn moderate(&self) -> bool {
        self.0.x().iter().all(|&v| moderate(v)) && self.0.a().data().iter().all(|&v| moderate(v))
    }
}

/// The batch in `f32`; values beyond `f32::MAX` become `±f32::MAX` (so the
/// f32 runs see the largest magnitudes too).
pub fn to_f32(b: &DisjointBatch<f64>) -> DisjointBatch<f32> {
    let cast = |v: f64| {
        let c = v as f32;
        if c.is_finite() {
            c
        } else {
            f32::MAX.copysign(c)
        }
    };
    let x = b.x().mapv(cast);
    let a = b.a().map(|&v| cast(v));
    DisjointBatch::new(x, a, b.segments().clone()).expect("a valid batch stays valid in f32")
}

/// The batch with one more single-node graph: what a backward pass must
/// refuse as "not the forward's batch".
fn with_extra_graph<T: Scalar>(b: &DisjointBatch<T>) -> DisjointBatch<T> {
    let mut graphs = b.split();
    graphs.push((Array2::zeros((1, b.num_features())), CsMat::zero((1, 1))));
    DisjointBatch::stack(&graphs).expect("stacking valid graphs")
}

/// The batch without its edges (same nodes, graphs and features).
fn without_edges<T: Scalar>(b: &DisjointBatch<T>) -> DisjointBatch<T> {
    let n = b.num_nodes();
    DisjointBatch::new(b.x().to_owned(), CsMat::zero((n, n)), b.segments().clone())
        .expect("an edgeless copy of a valid batch")
}

// ---------------------------------------------------------------- checks

/// What every layer output supports in the checks.
pub trait Output<T: Scalar>: Differentiable<T> + PartialEq + Debug + Sized {
    /// Every value finite (and a pooled batch valid).
    fn assert_valid(&self);
    /// Output gradients a backward pass must refuse with `GradientShape`.
    fn wrong_grads(&self) -> Vec<Self::Grad>;
    /// Multiplies a gradient by `s`.
    fn scale(g: &mut Self::Grad, s: T);
}

fn all_finite<'a, T: Scalar>(mut it: impl Iterator<Item = &'a T>) -> bool {
    it.all(|v| v.is_finite())
}

impl<T: Scalar> Output<T> for Array2<T> {
    fn assert_valid(&self) {
        assert!(all_finite(self.iter()), "non-finite output {self}");
    }
    fn wrong_grads(&self) -> Vec<Array2<T>> {
        let (r, c) = self.dim();
        vec![Array2::zeros((r + 1, c)), Array2::zeros((r, c + 1))]
    }
    fn scale(g: &mut Array2<T>, s: T) {
        g.mapv_inplace(|v| v * s);
    }
}

impl<T: Scalar> Output<T> for Array3<T> {
    fn assert_valid(&self) {
        assert!(all_finite(self.iter()), "non-finite output {self}");
    }
    fn wrong_grads(&self) -> Vec<Array3<T>> {
        let (b, k, f) = self.dim();
        vec![Array3::zeros((b + 1, k, f)), Array3::zeros((b, k, f + 1))]
    }
    fn scale(g: &mut Array3<T>, s: T) {
        g.mapv_inplace(|v| v * s);
    }
}

impl<T: Scalar> Output<T> for Pooled<T> {
    fn assert_valid(&self) {
        let b = &self.batch;
        assert!(all_finite(b.x().iter()), "non-finite pooled x {}", b.x());
        assert!(
            all_finite(b.a().data().iter()),
            "non-finite pooled edge weights"
        );
        assert!(
            all_finite(self.losses.values()),
            "non-finite loss {:?}",
            self.losses
        );
        if let Some(s) = &self.score {
            assert!(all_finite(s.iter()), "non-finite score {s}");
        }
        match &self.selection {
            None => {}
            Some(Selection::Subset(s)) => {
                assert!(all_finite(s.gate.iter()));
                assert_eq!(s.kept.len(), b.num_nodes());
                assert!(s.kept.windows(2).all(|w| w[0] < w[1]));
            }
            Some(Selection::Dense(s)) => assert!(all_finite(s.s.iter())),
            Some(Selection::Sparse(s)) => assert!(all_finite(s.s.data().iter())),
        }
        let again = DisjointBatch::new(b.x().to_owned(), b.a().clone(), b.segments().clone());
        assert!(again.is_ok(), "pooled batch invalid: {again:?}");
    }
    fn wrong_grads(&self) -> Vec<PooledGrad<T>> {
        let good = PooledGrad::zeros(self);
        let (r, c) = good.x.dim();
        let mut x = good.clone();
        x.x = Array2::zeros((r + 1, c));
        let mut e = good.clone();
        e.edge_weights = Array1::zeros(good.edge_weights.len() + 1);
        let mut l = good;
        l.losses.insert("no_such_loss".into(), T::one());
        vec![x, e, l]
    }
    fn scale(g: &mut PooledGrad<T>, s: T) {
        g.x.mapv_inplace(|v| v * s);
        g.edge_weights.mapv_inplace(|v| v * s);
        g.losses.values_mut().for_each(|v| *v *= s);
    }
}

/// How a layer run is judged.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// The layer was built for the batch's feature width (else the forward
    /// pass must be a `ShapeMismatch`).
    pub width_ok: bool,
    /// Inputs, parameters, configuration and cotangent are all moderate: no
    /// overflow error is acceptable.
    pub moderate: bool,
    /// Seed of the random cotangent.
    pub seed: u64,
    /// Factor of the random cotangent.
    pub cot_scale: f64,
}

fn assert_gradients<T: Scalar>(g: &Gradients<T>, b: &DisjointBatch<T>, params: &Params<T>) {
    assert_eq!(g.x.dim(), b.x().dim(), "gradient of x has the wrong shape");
    // edge-weight gradients exactly when the batch asks for them
    let edges = g.edge_weights.as_ref().map(|e| e.len());
    let expected = b.edge_weight_grad().then(|| b.a().nnz());
    assert_eq!(edges, expected, "edge-weight gradients");
    assert_eq!(g.params.len(), params.len());
    for (name, p) in params.iter() {
        let gp = g.params.get(name).expect("a gradient for every parameter");
        assert_eq!(gp.shape(), p.shape(), "gradient of `{name}`");
        assert!(all_finite(gp.iter()), "non-finite gradient of `{name}`");
    }
    assert!(all_finite(g.x.iter()), "non-finite gradient of x");
    assert!(
        all_finite(g.edge_weights.iter().flatten()),
        "non-finite edge gradient"
    );
}

/// Runs a layer's forward and backward passes with every check of the
/// module documentation.
pub fn exercise<T: Scalar, L: Layer<T> + Clone>(l: &L, b: &DisjointBatch<T>, ctx: Ctx)
where
    L::Output: Output<T>,
{
    let before = b.clone();
    let params_before = l.params().clone();
    match l.forward(b) {
        Err(e) => match e {
            PoolError::ShapeMismatch { .. } if !ctx.width_ok => {}
            PoolError::NegativePathLength { .. } => {}
            PoolError::NonFinite { .. } | PoolError::NonFiniteScore { .. } if !ctx.moderate => {}
            e => panic!("unexpected forward error ({ctx:?}): {e}"),
        },
        Ok((y, cache)) => {
            assert!(ctx.width_ok, "a wrong feature width was accepted");
            y.assert_valid();
            let (y2, _) = l
                .forward(b)
                .expect("forward succeeds again on the same batch");
            assert!(y == y2, "two forward passes differ");
            let mut g = y.random_cotangent(&mut rng_from_seed(ctx.seed));
            L::Output::scale(&mut g, T::c(ctx.cot_scale));
            match l.backward(b, &cache, &g) {
                Ok(grads) => assert_gradients(&grads, b, l.params()),
                Err(PoolError::NonFinite { .. }) if !ctx.moderate => {}
                Err(e) => panic!("backward refused a matching gradient ({ctx:?}): {e}"),
            }
            for wrong in y.wrong_grads() {
                match l.backward(b, &cache, &wrong) {
                    Err(PoolError::GradientShape { .. }) => {}
                    other => panic!("a mismatched output gradient gave {other:?}"),
                }
            }
            match l.backward(&with_extra_graph(b), &cache, &g) {
                Err(PoolError::ShapeMismatch { .. }) => {}
                other => panic!("backward on another batch gave {other:?}"),
            }
            // the batch with the other edge-weight gradient setting: refused,
            // but by the global pools (their backward pass reads no A)
            let flipped = b.clone().with_edge_weight_grad(!b.edge_weight_grad());
            match l.backward(&flipped, &cache, &g) {
                Err(PoolError::ShapeMismatch { .. }) => {}
                Ok(grads) => assert_eq!(
                    grads.edge_weights.is_some(),
                    flipped.edge_weight_grad(),
                    "edge-weight gradients of a batch with the other setting"
                ),
                Err(PoolError::NonFinite { .. }) if !ctx.moderate => {}
                Err(e) => panic!("backward with the other edge-weight setting gave {e}"),
            }
            // a cache from before set_param changed the layer
            if let Some((name, p)) = l.params().iter().next() {
                let changed = p.mapv(|v| v + T::one());
                if changed.iter().zip(p.iter()).any(|(a, b)| a != b) {
                    let mut l2 = l.clone();
                    if l2.set_param(name, changed).is_ok() {
                        match l2.backward(b, &cache, &g) {
                            Err(PoolError::CacheMismatch { .. }) => {}
                            other => panic!("a stale cache gave {other:?}"),
                        }
                    }
                }
            }
            if b.a().nnz() > 0 {
                // the global sum/avg/max pools do not read A: Ok is fine for them
                match l.backward(&without_edges(b), &cache, &g) {
                    Err(PoolError::ShapeMismatch { .. }) | Err(PoolError::NonFinite { .. }) => {}
                    Ok(grads) => assert_eq!(grads.edge_weights.map(|e| e.len()), Some(0)),
                    Err(e) => panic!("backward on the edgeless batch gave {e}"),
                }
            }
        }
    }
    assert_eq!(b, &before, "the batch was modified");
    assert_eq!(l.params(), &params_before, "the parameters were modified");
}

/// The SRC steps of a pool that implements [`SrcPool`]: `pool` is the
/// forward output, and select / reduce / connect / reduce_index / losses
/// compose to it.
pub fn exercise_src<T: Scalar, L>(l: &L, b: &DisjointBatch<T>)
where
    L: SrcPool<T> + Layer<T, Output = Pooled<T>>,
{
    let Ok((y, _)) = l.forward(b) else {
        assert!(l.pool(b).is_err(), "pool succeeds where forward fails");
        return;
    };
    assert_eq!(l.pool(b).expect("pool succeeds where forward does"), y);
    let (sel, score) = l.select(b).expect("select succeeds where forward does");
    // the selection is returned exactly when the layer says so
    assert_eq!(y.selection.as_ref(), l.return_selection().then_some(&sel));
    assert_eq!(score, y.score);
    assert_eq!(&l.reduce_index(b, &sel), y.batch.segments());
    let x = l.reduce(b, &sel);
    assert_eq!(x.dim(), y.batch.x().dim());
    let a = l.connect(b, &sel);
    assert_eq!(a.shape(), y.batch.a().shape());
    let losses = l
        .losses(b, &sel)
        .expect("losses succeed where forward does");
    assert_eq!(
        losses.keys().collect::<Vec<_>>(),
        y.losses.keys().collect::<Vec<_>>()
    );
}

/// Exercises `set_param` on every parameter of `l` (a wrong shape, a NaN,
/// an unknown name are typed errors and leave the layer unchanged), then
/// multiplies every parameter by `scale` where that stays finite in `T`
/// (an overflowing product is refused as `NonFinite`, the parameter kept).
pub fn scaled<T: Scalar, L: Layer<T>>(mut l: L, scale: f64) -> L {
    let before = l.params().clone();
    let names: Vec<String> = before.names().map(str::to_string).collect();
    assert!(matches!(
        l.set_param("no_such_parameter", ArrayD::zeros(ndarray::IxDyn(&[1]))),
        Err(PoolError::UnknownParameter { .. })
    ));
    for name in &names {
        let p = before.get(name).expect("a listed parameter").clone();
        let mut shape = p.shape().to_vec();
        shape.push(1);
        match l.set_param(name, ArrayD::zeros(ndarray::IxDyn(&shape))) {
            Err(PoolError::ParameterShape { .. }) => {}
            other => panic!("a wrong shape for `{name}` gave {other:?}"),
        }
        if !p.is_empty() {
            let mut nan = p.clone();
            nan.iter_mut().for_each(|v| *v = T::nan());
            match l.set_param(name, nan) {
                Err(PoolError::NonFinite { .. }) => {}
                other => panic!("a NaN `{name}` gave {other:?}"),
            }
        }
    }
    assert_eq!(l.params(), &before, "a refused set_param changed the layer");
    if scale != 1.0 {
        let s = T::c(scale);
        for name in &names {
            let p = before
                .get(name)
                .expect("a listed parameter")
                .mapv(|v| v * s);
            match l.set_param(name, p.clone()) {
                Ok(()) => assert_eq!(l.params().get(name).ok(), Some(&p)),
                Err(PoolError::NonFinite { .. }) => {
                    assert!(p.iter().any(|v| !v.is_finite()))
                }
                Err(e) => panic!("scaling `{name}` gave {e}"),
            }
        }
    }
    l
}

/// The feature width a layer is built for: the batch's (most of the time)
/// or a wrong one.
fn in_features(f: usize, width: u8) -> (usize, bool) {
    if width % 8 == 7 {
        (f + 1 + (width as usize / 8) % 3, false)
    } else {
        (f, true)
    }
}

/// Asserts a constructor's result: `Ok`, or `InvalidConfig` when `invalid`.
fn built<L>(r: Result<L, PoolError>, invalid: bool, what: &str) -> Option<L> {
    match r {
        Ok(l) => {
            assert!(!invalid, "{what}: an invalid configuration was accepted");
            Some(l)
        }
        Err(PoolError::InvalidConfig { .. }) if invalid => None,
        Err(e) => panic!("{what}: unexpected constructor result {e} (invalid = {invalid})"),
    }
}

/// Whether `v` is finite (and, for `T = f32`, representable) in `T`.
fn finite_in<T: Scalar>(v: f64) -> bool {
    v.is_finite() && T::c(v).is_finite()
}

// ---------------------------------------------------------------- targets

/// Target `batch_construction`: arbitrary CSR parts, graph ids, offsets,
/// edge lists and features through every checked constructor; a built batch
/// revalidates, splits and restacks to itself, selects and permutes to
/// itself, and refuses bad replacement features and weights.
pub fn batch_construction(data: &[u8]) {
    let Some(raw) = decode::<RawBatch>(data) else {
        return;
    };
    for b in raw.build_all().into_iter().flatten() {
        check_batch(&b);
    }
}

fn check_batch(b: &DisjointBatch<f64>) {
    let again = DisjointBatch::new(b.x().to_owned(), b.a().clone(), b.segments().clone());
    assert_eq!(again.as_ref(), Ok(b));
    let parts = b.split();
    if b.num_graphs() > 0 {
        // stacking zero graphs cannot know the feature width: select_graphs can
        let stacked = DisjointBatch::stack(&parts).expect("the graphs of a valid batch restack");
        assert_eq!(stacked.x(), b.x());
        assert_eq!(stacked.segments(), b.segments());
        assert_eq!(stacked.a().to_dense(), b.a().to_dense());
    }
    let all: Vec<usize> = (0..b.num_graphs()).collect();
    let selected = b.select_graphs(&all).expect("selecting every graph");
    assert_eq!(selected.x(), b.x());
    assert_eq!(selected.segments(), b.segments());
    assert!(matches!(
        b.select_graphs(&[b.num_graphs()]),
        Err(PoolError::InvalidConfig { .. })
    ));
    let identity: Vec<usize> = (0..b.num_nodes()).collect();
    assert_eq!(b.permute_nodes(&identity).expect("identity").x(), b.x());
    let ids = b.graph_ids();
    let seg = Segments::from_graph_ids(&ids, b.num_graphs()).expect("own graph ids");
    assert_eq!(&seg, b.segments());
    let w = b.a().data().to_vec();
    assert_eq!(
        b.with_edge_weights(w.clone()).expect("same weights").a(),
        b.a()
    );
    let mut longer = w.clone();
    longer.push(1.0);
    assert!(matches!(
        b.with_edge_weights(longer),
        Err(PoolError::ShapeMismatch { .. })
    ));
    if !w.is_empty() {
        let mut nan = w;
        nan[0] = f64::NAN;
        assert!(matches!(
            b.with_edge_weights(nan),
            Err(PoolError::NonFinite { .. })
        ));
    }
    if !b.x().is_empty() {
        let mut x = b.x().to_owned();
        x[[0, 0]] = f64::INFINITY;
        assert!(matches!(b.with_x(x), Err(PoolError::NonFinite { .. })));
    }
}

/// Configuration of the global-pools target.
#[derive(Debug, Arbitrary)]
pub struct GlobalConfig {
    /// Run in `f32` instead of `f64`.
    pub f32: bool,
    /// GlobalAttentionPool channels (0 is invalid).
    pub channels: u8,
    /// SortPool k (0 is invalid).
    pub k: u8,
    /// GlobalAttnSumPool eps (negative is invalid).
    pub eps: Num,
    /// Feature width selector (see [`in_features`]).
    pub width: u8,
    /// Factor applied to every parameter.
    pub param_scale: Num,
    /// Factor of the cotangent.
    pub cot_scale: Num,
    /// Weights and cotangent seed.
    pub seed: u64,
}

/// Target `global_pools`: GlobalSum/Avg/Max, GlobalAttentionPool,
/// GlobalAttnSumPool and SortPool in `f32` or `f64`.
pub fn global_pools(data: &[u8]) {
    let Some((vb, c)) = decode::<(ValidBatch, GlobalConfig)>(data) else {
        return;
    };
    let moderate = vb.moderate() && c.param_scale.moderate() && c.cot_scale.moderate();
    if c.f32 {
        global_pools_t(&to_f32(&vb.0), &c, moderate);
    } else {
        global_pools_t(&vb.0, &c, moderate);
    }
}

fn global_pools_t<T: Scalar>(b: &DisjointBatch<T>, c: &GlobalConfig, moderate: bool) {
    let f = b.num_features();
    let (fin, width_ok) = in_features(f, c.width);
    let ctx = Ctx {
        width_ok: true,
        moderate,
        seed: c.seed,
        cot_scale: c.cot_scale.0,
    };
    exercise(&GlobalSumPool, b, ctx);
    exercise(&GlobalAvgPool, b, ctx);
    exercise(&GlobalMaxPool, b, ctx);
    let ctx = Ctx { width_ok, ..ctx };
    let channels = c.channels as usize % 5;
    if let Some(l) = built(
        GlobalAttentionPool::<T>::new(fin, channels, c.seed),
        channels == 0,
        "GlobalAttentionPool",
    ) {
        exercise(&scaled(l, c.param_scale.0), b, ctx);
    }
    let eps_ok = c.eps.0 >= 0.0 && finite_in::<T>(c.eps.0);
    if let Some(l) = built(
        GlobalAttnSumPool::<T>::new(fin, c.seed).with_eps(c.eps.0.abs()),
        !(finite_in::<T>(c.eps.0.abs())),
        "GlobalAttnSumPool",
    ) {
        exercise(&scaled(l, c.param_scale.0), b, ctx);
    }
    let _ = built(
        GlobalAttnSumPool::<T>::new(fin, c.seed).with_eps(c.eps.0),
        !eps_ok,
        "GlobalAttnSumPool eps",
    );
    let k = c.k as usize % 12;
    if let Some(l) = built(SortPool::new(k), k == 0, "SortPool") {
        exercise(
            &l,
            b,
            Ctx {
                width_ok: f > 0,
                ..ctx
            },
        );
    }
}

/// Configuration of the selection-pools target.
#[derive(Debug, Arbitrary)]
pub struct SelectionConfig {
    /// Run in `f32` instead of `f64`.
    pub f32: bool,
    /// Ratio selector: mostly a valid fraction, sometimes any f64.
    pub ratio_tag: u8,
    /// The raw ratio used by some selectors.
    pub ratio_raw: f64,
    /// KeepRule::Count k (0 is invalid).
    pub count: u8,
    /// KeepRule::MinScore threshold.
    pub min_score: Num,
    /// PyG's multiplier.
    pub multiplier: Num,
    /// Which keep rule.
    pub rule: u8,
    /// Sigmoid instead of tanh gating.
    pub sigmoid: bool,
    /// SAGPool's GraphConv scorer instead of GCN.
    pub graph_conv: bool,
    /// LaPool's shortest-path regularisation.
    pub shortest_path_reg: bool,
    /// Feature width selector.
    pub width: u8,
    /// Factor applied to every parameter.
    pub param_scale: Num,
    /// Factor of the cotangent.
    pub cot_scale: Num,
    /// Weights and cotangent seed.
    pub seed: u64,
}

impl SelectionConfig {
    fn ratio(&self) -> f64 {
        match self.ratio_tag % 4 {
            0 => self.ratio_raw,
            _ => f64::from(self.ratio_tag) / 255.0,
        }
    }

    fn keep(&self) -> KeepRule {
        match self.rule % 4 {
            0 | 1 => KeepRule::Ratio(self.ratio()),
            2 => KeepRule::Count(self.count as usize % 12),
            _ => KeepRule::MinScore(self.min_score.0),
        }
    }
}

fn valid_ratio(r: f64) -> bool {
    r > 0.0 && r <= 1.0
}

fn valid_keep(k: KeepRule) -> bool {
    match k {
        KeepRule::Ratio(r) => valid_ratio(r),
        KeepRule::Count(k) => k > 0,
        KeepRule::MinScore(m) => m.is_finite(),
    }
}

/// Target `selection_pools`: TopKPool, SAGPool (both scorers) and LaPool,
/// every keep rule, gating and multiplier, in `f32` or `f64`; the pooled
/// batch is pooled again.
pub fn selection_pools(data: &[u8]) {
    let Some((vb, c)) = decode::<(ValidBatch, SelectionConfig)>(data) else {
        return;
    };
    let moderate = vb.moderate()
        && c.param_scale.moderate()
        && c.cot_scale.moderate()
        && c.multiplier.moderate();
    if c.f32 {
        selection_pools_t(&to_f32(&vb.0), &c, moderate);
    } else {
        selection_pools_t(&vb.0, &c, moderate);
    }
}

fn selection_pools_t<T: Scalar>(b: &DisjointBatch<T>, c: &SelectionConfig, moderate: bool) {
    let f = b.num_features();
    let (fin, width_ok) = in_features(f, c.width);
    let ctx = Ctx {
        width_ok,
        moderate,
        seed: c.seed,
        cot_scale: c.cot_scale.0,
    };
    let gating = Gating::from_sigmoid_gating(c.sigmoid);
    let ratio = c.ratio();
    let keep = c.keep();
    let mult_ok = finite_in::<T>(c.multiplier.0);
    if let Some(l) = built(
        TopKPool::<T>::new(fin, ratio, c.seed),
        !valid_ratio(ratio),
        "TopKPool",
    ) {
        let l = scaled(l.with_gating(gating), c.param_scale.0)
            .with_return_selection(asks_for_selection(c.seed));
        exercise(&l, b, ctx);
        exercise_src(&l, b);
        if let Some(l) = built(
            l.with_keep(keep)
                .and_then(|l| l.with_multiplier(c.multiplier.0)),
            !(valid_keep(keep) && mult_ok),
            "TopKPool options",
        ) {
            exercise(&l, b, ctx);
            exercise_src(&l, b);
            if let Ok(y) = l.call(b) {
                exercise(&l, &y.batch, ctx);
            }
        }
    }
    let scorer = if c.graph_conv {
        SagScorer::GraphConv
    } else {
        SagScorer::Gcn
    };
    if let Some(l) = built(
        SAGPool::<T>::new_with_scorer(fin, ratio, scorer, c.seed),
        !valid_ratio(ratio),
        "SAGPool",
    ) {
        let l = scaled(l.with_gating(gating), c.param_scale.0)
            .with_return_selection(asks_for_selection(c.seed));
        exercise(&l, b, ctx);
        exercise_src(&l, b);
        if let Some(l) = built(
            l.with_keep(keep)
                .and_then(|l| l.with_multiplier(c.multiplier.0)),
            !(valid_keep(keep) && mult_ok),
            "SAGPool options",
        ) {
            exercise(&l, b, ctx);
            exercise_src(&l, b);
            if let Ok(y) = l.call(b) {
                exercise(&l, &y.batch, ctx);
            }
        }
    }
    let l = LaPool::new(c.shortest_path_reg).with_return_selection(asks_for_selection(c.seed));
    let ctx = Ctx {
        width_ok: true,
        ..ctx
    };
    exercise(&l, b, ctx);
    exercise_src(&l, b);
    if let Ok(y) = Layer::<T>::call(&l, b) {
        exercise(&l, &y.batch, ctx);
    }
}

/// Configuration of the clustering-pools target.
#[derive(Debug, Arbitrary)]
pub struct ClusteringConfig {
    /// Run in `f32` instead of `f64`.
    pub f32: bool,
    /// Clusters per graph (0 is invalid; 1 for AsymCheegerCut too).
    pub k: u8,
    /// MLP hidden widths (0 is invalid).
    pub hidden: Vec<u8>,
    /// MLP activation.
    pub activation: u8,
    /// First loss coefficient.
    pub coeff_a: Num,
    /// Second loss coefficient.
    pub coeff_b: Num,
    /// JustBalance's normalised loss.
    pub normalized: bool,
    /// Feature width selector.
    pub width: u8,
    /// Factor applied to every parameter.
    pub param_scale: Num,
    /// Factor of the cotangent.
    pub cot_scale: Num,
    /// Weights and cotangent seed.
    pub seed: u64,
    /// Node budget of a run (`with_run_nodes`, taken modulo 12; 0 pools
    /// every batch whole).
    pub run_nodes: u8,
}

/// Target `clustering_pools`: MinCut (both variants), DMoN (both variants),
/// JustBalance and AsymCheegerCut with arbitrary k, MLP widths, activation
/// and loss coefficients, in `f32` or `f64`.
pub fn clustering_pools(data: &[u8]) {
    let Some((vb, c)) = decode::<(ValidBatch, ClusteringConfig)>(data) else {
        return;
    };
    run_clustering_pools(&vb, &c);
}

/// The body of `clustering_pools` on a decoded batch and configuration.
fn run_clustering_pools(vb: &ValidBatch, c: &ClusteringConfig) {
    // the exponential activation overflows on moderate inputs by design
    let moderate = vb.moderate()
        && c.param_scale.moderate()
        && c.cot_scale.moderate()
        && c.coeff_a.moderate()
        && c.coeff_b.moderate()
        && Activation::ALL[c.activation as usize % Activation::ALL.len()]
            != Activation::Exponential;
    if c.f32 {
        clustering_pools_t(&to_f32(&vb.0), c, moderate);
    } else {
        clustering_pools_t(&vb.0, c, moderate);
    }
}

/// MinCutPool's PyG variant in `f32` and its batch exactly as
/// `clustering_pools` builds them for some input, with what built them.
struct MinCutPygF32 {
    /// The layer.
    l32: MinCutPool<f32>,
    /// The batch.
    b32: DisjointBatch<f32>,
    /// The decoded configuration.
    c: ClusteringConfig,
    /// The layer's input width, `K`, hidden sizes and activation.
    fin: usize,
    k: usize,
    hidden: Vec<usize>,
    act: Activation,
}

/// [`MinCutPygF32`] for `data`, `None` if it does not decode to a run.
fn mincut_pyg_f32(data: &[u8]) -> Option<MinCutPygF32> {
    let (vb, c) = decode::<(ValidBatch, ClusteringConfig)>(data)?;
    let b32 = to_f32(&vb.0);
    let (fin, width_ok) = in_features(b32.num_features(), c.width);
    let k = c.k as usize % 7;
    let hidden: Vec<usize> = c.hidden.iter().take(2).map(|&h| h as usize % 5).collect();
    let act = Activation::ALL[c.activation as usize % Activation::ALL.len()];
    if !width_ok || k == 0 || hidden.contains(&0) {
        return None;
    }
    let l32 = scaled(
        MinCutPool::<f32>::new(fin, k, &hidden, act, c.seed).ok()?,
        c.param_scale.0,
    )
    .with_run_nodes(run_budget(c.run_nodes))
    .with_variant(MinCutVariant::Pyg);
    Some(MinCutPygF32 {
        l32,
        b32,
        c,
        fin,
        k,
        hidden,
        act,
    })
}

/// For the tests (not a target): the `f32` batch that `clustering_pools`
/// builds for `data`, `None` if `data` does not decode to a MinCutPool run.
pub fn mincut_pyg_f32_batch(data: &[u8]) -> Option<DisjointBatch<f32>> {
    mincut_pyg_f32(data).map(|run| run.b32)
}

/// For the tests (not a target): MinCutPool's PyG variant exactly as
/// `clustering_pools` builds and runs it in `f32` for `data` (batch,
/// scaled parameters, cotangent), and the same function in `f64` (the
/// `f32` batch, parameters and cotangent widened): the two gradients of
/// `x` and of the edge weights, each as `f64`. `None` if `data` does not
/// decode to such a run.
#[allow(clippy::type_complexity)]
pub fn mincut_pyg_f32_and_f64(
    data: &[u8],
) -> Option<(
    Result<(Array2<f64>, Array1<f64>), PoolError>,
    Result<(Array2<f64>, Array1<f64>), PoolError>,
)> {
    let MinCutPygF32 {
        l32,
        b32,
        c,
        fin,
        k,
        hidden,
        act,
    } = mincut_pyg_f32(data)?;
    let mut l64 = MinCutPool::<f64>::new(fin, k, &hidden, act, c.seed)
        .ok()?
        .with_variant(MinCutVariant::Pyg);
    for (name, p) in l32.params().iter() {
        l64.set_param(name, p.mapv(f64::from)).ok()?;
    }
    let b64 = DisjointBatch::new(
        b32.x().mapv(f64::from),
        b32.a().map(|&v| f64::from(v)),
        b32.segments().clone(),
    )
    .ok()?;
    let (y32, cache32) = l32.forward(&b32).ok()?;
    let mut g32 = y32.random_cotangent(&mut rng_from_seed(c.seed));
    Pooled::scale(&mut g32, c.cot_scale.0 as f32);
    let g64 = PooledGrad {
        x: g32.x.mapv(f64::from),
        edge_weights: g32.edge_weights.mapv(f64::from),
        losses: g32
            .losses
            .iter()
            .map(|(n, &v)| (n.clone(), f64::from(v)))
            .collect(),
    };
    let (_, cache64) = l64.forward(&b64).ok()?;
    let g32 = l32.backward(&b32, &cache32, &g32).map(|g| {
        let edges = g.edge_weights.map(|e| e.mapv(f64::from));
        (g.x.mapv(f64::from), edges.unwrap_or_default())
    });
    let g64 = l64
        .backward(&b64, &cache64, &g64)
        .map(|g| (g.x, g.edge_weights.unwrap_or_default()));
    Some((g32, g64))
}

/// `ctx` for an `f32` run of `l`, with `moderate` cleared when the exact
/// answer does not fit `f32`: the same function in `f64` (`twin` given the
/// `f32` parameters, the batch and cotangent widened) has a gradient beyond
/// `f32::MAX`, or overflows `f64` too. Moderate inputs can have such
/// gradients (a saturated assignment makes pooled degrees of 1e-31, and
/// PyG's eps 1e-15 lets the normalisation's derivative reach 1e43 with
/// respect to an edge weight); `NonFinite` is then `f32`'s right answer.
/// Any other run keeps `ctx`.
fn exact_answer_fits<T, L, M>(
    l: &L,
    twin: Result<M, PoolError>,
    b: &DisjointBatch<T>,
    ctx: Ctx,
) -> Ctx
where
    T: Scalar,
    L: Layer<T, Output = Pooled<T>>,
    M: Layer<f64, Output = Pooled<f64>>,
{
    let narrow = T::max_value().to_f64().is_some_and(|m| m < f64::MAX);
    let (Ok(mut twin), true, true) = (twin, narrow, ctx.moderate) else {
        return ctx;
    };
    let wide = |v: &T| v.to_f64().unwrap_or(f64::NAN);
    for (name, p) in l.params().iter() {
        if twin.set_param(name, p.map(wide)).is_err() {
            return ctx;
        }
    }
    let Ok(b64) = DisjointBatch::new(b.x().map(wide), b.a().map(wide), b.segments().clone()) else {
        return ctx;
    };
    let (Ok((y, _)), Ok((_, cache))) = (l.forward(b), twin.forward(&b64)) else {
        return ctx;
    };
    let mut g = y.random_cotangent(&mut rng_from_seed(ctx.seed));
    Pooled::scale(&mut g, T::c(ctx.cot_scale));
    let g64 = PooledGrad {
        x: g.x.map(wide),
        edge_weights: g.edge_weights.map(wide),
        losses: g.losses.iter().map(|(n, v)| (n.clone(), wide(v))).collect(),
    };
    let limit = T::max_value().to_f64().unwrap_or(f64::MAX);
    let fits = match twin.backward(&b64, &cache, &g64) {
        Ok(gr) => {
            gr.x.iter()
                .chain(gr.edge_weights.iter().flatten())
                .chain(gr.params.iter().flat_map(|(_, p)| p.iter()))
                .all(|v| v.abs() <= limit)
        }
        Err(_) => false,
    };
    Ctx {
        moderate: fits,
        ..ctx
    }
}

/// The node budget of a run (`with_run_nodes`) that a configuration's
/// `run_nodes` byte selects: 0 (every batch whole) to 11.
fn run_budget(byte: u8) -> usize {
    byte as usize % 12
}

/// A batch pooled run by run (`by_runs`) pools as the whole batch does
/// (`whole`): the same outputs and losses, bit for bit, or the same error.
fn runs_match_whole<T: Scalar, L: Layer<T, Output = Pooled<T>>>(
    by_runs: &L,
    whole: &L,
    b: &DisjointBatch<T>,
) {
    match (by_runs.call(b), whole.call(b)) {
        (Ok(y), Ok(w)) => assert_eq!(y, w, "run by run against the whole batch"),
        (Err(e), Err(w)) => assert_eq!(e.to_string(), w.to_string()),
        (y, w) => panic!("run by run {y:?} against the whole batch {w:?}"),
    }
}

/// Whether a layer built from `seed` asks for its selection (Spektral's
/// `return_selection`): half the inputs do, without a field of its own, so
/// the inputs' byte layout (and the saved corpus) stays as it was.
fn asks_for_selection(seed: u64) -> bool {
    seed % 2 == 1
}

fn clustering_pools_t<T: Scalar>(b: &DisjointBatch<T>, c: &ClusteringConfig, moderate: bool) {
    let f = b.num_features();
    let (fin, width_ok) = in_features(f, c.width);
    let ctx = Ctx {
        width_ok,
        moderate,
        seed: c.seed,
        cot_scale: c.cot_scale.0,
    };
    let k = c.k as usize % 7;
    let hidden: Vec<usize> = c.hidden.iter().take(2).map(|&h| h as usize % 5).collect();
    let bad_hidden = hidden.contains(&0);
    let act = Activation::ALL[c.activation as usize % Activation::ALL.len()];
    let (a, bb) = (c.coeff_a.0, c.coeff_b.0);
    let p = c.param_scale.0;
    let budget = run_budget(c.run_nodes);
    let ret = asks_for_selection(c.seed);
    // every layer pooled run by run, checked against the whole batch
    macro_rules! by_runs {
        ($l:expr) => {{
            let l = $l.with_run_nodes(budget).with_return_selection(ret);
            runs_match_whole(&l, &l.clone().with_run_nodes(0), b);
            l
        }};
    }
    if let Some(l) = built(
        MinCutPool::<T>::new(fin, k, &hidden, act, c.seed),
        k == 0 || bad_hidden,
        "MinCutPool",
    ) {
        let l = by_runs!(scaled(l, p));
        let twin = || MinCutPool::<f64>::new(fin, k, &hidden, act, c.seed);
        exercise(&l, b, exact_answer_fits(&l, twin(), b, ctx));
        let l = by_runs!(l.with_variant(MinCutVariant::Pyg));
        let twin = twin().map(|t| t.with_variant(MinCutVariant::Pyg));
        exercise(&l, b, exact_answer_fits(&l, twin, b, ctx));
    }
    if let Some(l) = built(
        DMoNPool::<T>::new(fin, k, &hidden, act, a, c.seed),
        k == 0 || bad_hidden || !finite_in::<T>(a),
        "DMoNPool",
    ) {
        let l = by_runs!(scaled(l, p));
        let twin = || DMoNPool::<f64>::new(fin, k, &hidden, act, a, c.seed);
        exercise(&l, b, exact_answer_fits(&l, twin(), b, ctx));
        let l = by_runs!(l.with_variant(DMoNVariant::Pyg));
        let twin = twin().map(|t| t.with_variant(DMoNVariant::Pyg));
        exercise(&l, b, exact_answer_fits(&l, twin, b, ctx));
    }
    if let Some(l) = built(
        JustBalancePool::<T>::new(fin, k, &hidden, act, c.normalized, c.seed),
        k == 0 || bad_hidden,
        "JustBalancePool",
    ) {
        let l = by_runs!(scaled(l, p));
        let twin = JustBalancePool::<f64>::new(fin, k, &hidden, act, c.normalized, c.seed);
        exercise(&l, b, exact_answer_fits(&l, twin, b, ctx));
    }
    if let Some(l) = built(
        AsymCheegerCutPool::<T>::new(fin, k, &hidden, act, a, bb, c.seed),
        k < 2 || bad_hidden || !finite_in::<T>(a) || !finite_in::<T>(bb),
        "AsymCheegerCutPool",
    ) {
        let l = by_runs!(scaled(l, p));
        let twin = AsymCheegerCutPool::<f64>::new(fin, k, &hidden, act, a, bb, c.seed);
        exercise(&l, b, exact_answer_fits(&l, twin, b, ctx));
    }
}

/// Configuration of the DiffPool / MemPooling target.
#[derive(Debug, Arbitrary)]
pub struct DiffMemConfig {
    /// Run in `f32` instead of `f64`.
    pub f32: bool,
    /// Clusters per graph (0 is invalid).
    pub k: u8,
    /// Output channels (0 is invalid; DiffPool: `None` when even).
    pub channels: u8,
    /// MemPooling heads (0 is invalid).
    pub heads: u8,
    /// MemPooling temperature (must be > 0 and finite in `T`).
    pub tau: Num,
    /// DiffPool's embedding activation.
    pub activation: u8,
    /// PyG's DiffPool losses.
    pub pyg: bool,
    /// MemPooling's coarsened adjacency.
    pub coarsened: bool,
    /// Feature width selector.
    pub width: u8,
    /// Factor applied to every parameter.
    pub param_scale: Num,
    /// Factor of the cotangent.
    pub cot_scale: Num,
    /// Weights and cotangent seed.
    pub seed: u64,
    /// DiffPool's node budget of a run (`with_run_nodes`, taken modulo 12;
    /// 0 pools every batch whole).
    pub run_nodes: u8,
}

/// Target `diff_mem_pools`: DiffPool (both loss variants) and MemPooling
/// (both adjacencies) with arbitrary k, channels, heads, temperature and
/// activation, in `f32` or `f64`.
pub fn diff_mem_pools(data: &[u8]) {
    let Some((vb, c)) = decode::<(ValidBatch, DiffMemConfig)>(data) else {
        return;
    };
    run_diff_mem_pools(&vb, &c);
}

/// The body of `diff_mem_pools` on a decoded batch and configuration.
fn run_diff_mem_pools(vb: &ValidBatch, c: &DiffMemConfig) {
    let act = Activation::ALL[c.activation as usize % Activation::ALL.len()];
    let moderate = vb.moderate()
        && c.param_scale.moderate()
        && c.cot_scale.moderate()
        && c.tau.moderate()
        && act != Activation::Exponential;
    if c.f32 {
        diff_mem_pools_t(&to_f32(&vb.0), c, moderate);
    } else {
        diff_mem_pools_t(&vb.0, c, moderate);
    }
}

/// Which pools `wide_features` runs, with their configuration.
#[derive(Debug, Arbitrary)]
pub enum WideRun {
    /// The `clustering_pools` body.
    Clustering(ClusteringConfig),
    /// The `diff_mem_pools` body.
    DiffMem(DiffMemConfig),
}

/// The batch with `65 + extra % 6` feature columns, more than the
/// 64-column register kernels of the small products: its own columns, then
/// copies of them in turn (a featureless batch gets the constant 0.5).
pub fn widened(b: &DisjointBatch<f64>, extra: u8) -> DisjointBatch<f64> {
    let f = b.num_features();
    let wide = 65 + extra as usize % 6;
    let x = Array2::from_shape_fn((b.num_nodes(), wide), |(i, j)| {
        if f == 0 {
            0.5
        } else {
            b.x()[[i, j % f]]
        }
    });
    b.with_x(x).expect("the same nodes, finite features")
}

/// Target `wide_features`: the bodies of `clustering_pools` and
/// `diff_mem_pools` (every check included) on batches widened past 64
/// features, the widths where the shared small-product kernels leave their
/// register paths (a backward pass once panicked there).
pub fn wide_features(data: &[u8]) {
    let Some((vb, extra, run)) = decode::<(ValidBatch, u8, WideRun)>(data) else {
        return;
    };
    let vb = ValidBatch(widened(&vb.0, extra));
    match &run {
        WideRun::Clustering(c) => run_clustering_pools(&vb, c),
        WideRun::DiffMem(c) => run_diff_mem_pools(&vb, c),
    }
}

fn diff_mem_pools_t<T: Scalar>(b: &DisjointBatch<T>, c: &DiffMemConfig, moderate: bool) {
    let f = b.num_features();
    let (fin, width_ok) = in_features(f, c.width);
    let ctx = Ctx {
        width_ok,
        moderate,
        seed: c.seed,
        cot_scale: c.cot_scale.0,
    };
    let k = c.k as usize % 6;
    let channels = c.channels as usize % 5;
    let act = Activation::ALL[c.activation as usize % Activation::ALL.len()];
    let channels_opt = (c.channels % 2 == 1).then_some(channels);
    let variant = if c.pyg {
        DiffPoolVariant::Pyg
    } else {
        DiffPoolVariant::Spektral
    };
    if let Some(l) = built(
        DiffPool::<T>::new(fin, k, channels_opt, act, c.seed),
        k == 0 || channels_opt == Some(0),
        "DiffPool",
    ) {
        let l = scaled(l.with_variant(variant), c.param_scale.0)
            .with_run_nodes(run_budget(c.run_nodes))
            .with_return_selection(asks_for_selection(c.seed));
        runs_match_whole(&l, &l.clone().with_run_nodes(0), b);
        exercise(&l, b, ctx);
        exercise_src(&l, b);
    }
    let heads = c.heads as usize % 4;
    let tau = c.tau.0;
    let tau_ok = tau > 0.0 && finite_in::<T>(tau) && T::c(tau) > T::zero();
    let adjacency = if c.coarsened {
        MemAdjacency::Coarsened
    } else {
        MemAdjacency::Edgeless
    };
    if let Some(l) = built(
        MemPooling::<T>::new(fin, channels, heads, k, tau, c.seed),
        channels == 0 || heads == 0 || k == 0 || !tau_ok,
        "MemPooling",
    ) {
        let l = scaled(l.with_adjacency(adjacency), c.param_scale.0)
            .with_return_selection(asks_for_selection(c.seed));
        exercise(&l, b, ctx);
        exercise_src(&l, b);
    }
}
