//! The bad-input matrix: every public entry point (batch and segment
//! constructors, every layer constructor and builder, every layer's forward,
//! backward and set_param) against every kind of bad input that applies to
//! it, each asserting the **specific** typed error variant. Nothing may
//! panic (a panic fails the test), and nothing passed by reference may be
//! modified by a failed call (checked against a clone).
//!
//! The matrix size is printed at the end of `the_bad_input_matrix_...`
//! (`cargo test --test bad_input_matrix -- --nocapture`); at the time of
//! writing: 89 entry points × 90 kinds of bad input, 487 (entry point, kind)
//! cells that apply exercised, 588 checks (some cells are checked once per
//! parameter of the layer).

use std::collections::BTreeSet;

use graphpool::framework::{Differentiable, Layer, Pooled, PooledGrad};
use graphpool::layers::{
    AsymCheegerCutPool, DMoNPool, DMoNVariant, DiffPool, DiffPoolVariant, GlobalAttentionPool,
    GlobalAttnSumPool, GlobalAvgPool, GlobalMaxPool, GlobalSumPool, JustBalancePool, KeepRule,
    LaPool, MemAdjacency, MemPooling, MinCutPool, MinCutVariant, SAGPool, SagScorer, SortPool,
    TopKPool,
};
use graphpool::nn::{rng_from_seed, Activation};
use graphpool::{DisjointBatch, PoolError, Scalar, Segments};
use ndarray::{array, Array1, Array2, Array3, ArrayD, IxDyn};
use sprs::{CsMat, TriMat};

/// The name of an error variant.
fn variant(e: &PoolError) -> &'static str {
    match e {
        PoolError::ShapeMismatch { .. } => "ShapeMismatch",
        PoolError::AdjacencyShape { .. } => "AdjacencyShape",
        PoolError::NotCsr => "NotCsr",
        PoolError::InvalidCsr(_) => "InvalidCsr",
        PoolError::UnsortedGraphIds { .. } => "UnsortedGraphIds",
        PoolError::GraphIdOutOfRange { .. } => "GraphIdOutOfRange",
        PoolError::NegativeGraphId { .. } => "NegativeGraphId",
        PoolError::InvalidOffsets(_) => "InvalidOffsets",
        PoolError::EdgeBetweenGraphs { .. } => "EdgeBetweenGraphs",
        PoolError::NonFinite { .. } => "NonFinite",
        PoolError::InvalidConfig { .. } => "InvalidConfig",
        PoolError::UnknownParameter { .. } => "UnknownParameter",
        PoolError::ParameterShape { .. } => "ParameterShape",
        PoolError::NonFiniteScore { .. } => "NonFiniteScore",
        PoolError::GradientShape { .. } => "GradientShape",
        PoolError::NegativePathLength { .. } => "NegativePathLength",
        PoolError::CacheMismatch { .. } => "CacheMismatch",
        _ => "unknown variant",
    }
}

/// The cells exercised: (entry point, kind of bad input).
#[derive(Default)]
struct Matrix {
    cells: BTreeSet<(String, String)>,
    checks: usize,
}

impl Matrix {
    /// Asserts that `result` is the error `expected` and records the cell.
    fn check<R: std::fmt::Debug>(
        &mut self,
        entry: &str,
        kind: &str,
        expected: &str,
        result: Result<R, PoolError>,
    ) {
        match result {
            Err(e) => assert_eq!(
                variant(&e),
                expected,
                "{entry} with {kind}: expected {expected}, got {e}"
            ),
            Ok(v) => panic!("{entry} with {kind}: expected {expected}, got Ok({v:?})"),
        }
        self.cells.insert((entry.to_string(), kind.to_string()));
        self.checks += 1;
    }
}

fn w(entries: &[(usize, usize, f64)], n: usize) -> CsMat<f64> {
    let mut t = TriMat::new((n, n));
    for &(i, j, v) in entries {
        t.add_triplet(i, j, v);
    }
    t.to_csr()
}

/// A valid batch: graphs of 3, 0 and 2 nodes, 3 features, a few edges.
fn good() -> DisjointBatch<f64> {
    let x = Array2::from_shape_fn((5, 3), |(i, j)| (i as f64 - 2.0) * 0.5 + j as f64 * 0.25);
    let a = w(
        &[
            (0, 1, 1.0),
            (1, 0, 1.0),
            (1, 2, 2.0),
            (2, 1, 2.0),
            (3, 4, 0.5),
            (4, 3, 0.5),
        ],
        5,
    );
    DisjointBatch::from_offsets(x, a, vec![0, 3, 3, 5]).unwrap()
}

// ------------------------------------------------------------ batches

fn batch_constructors(m: &mut Matrix) {
    let b = good();
    let (x, a) = (b.x().to_owned(), b.a().clone());
    let seg = b.segments().clone();
    let ids = b.graph_ids();

    // DisjointBatch::new
    let e = "DisjointBatch::new";
    m.check(
        e,
        "x rows != segment nodes",
        "ShapeMismatch",
        DisjointBatch::new(Array2::zeros((4, 3)), a.clone(), seg.clone()),
    );
    m.check(
        e,
        "non-square adjacency",
        "AdjacencyShape",
        DisjointBatch::new(x.clone(), CsMat::zero((5, 4)), seg.clone()),
    );
    m.check(
        e,
        "adjacency of the wrong size",
        "AdjacencyShape",
        DisjointBatch::new(x.clone(), CsMat::zero((6, 6)), seg.clone()),
    );
    m.check(
        e,
        "CSC adjacency",
        "NotCsr",
        DisjointBatch::new(x.clone(), a.to_csc(), seg.clone()),
    );
    m.check(
        e,
        "edge across graphs",
        "EdgeBetweenGraphs",
        DisjointBatch::new(x.clone(), w(&[(2, 3, 1.0)], 5), seg.clone()),
    );
    let mut xn = x.clone();
    xn[[1, 2]] = f64::NAN;
    m.check(
        e,
        "NaN feature",
        "NonFinite",
        DisjointBatch::new(xn, a.clone(), seg.clone()),
    );
    let mut xi = x.clone();
    xi[[4, 0]] = f64::NEG_INFINITY;
    m.check(
        e,
        "infinite feature",
        "NonFinite",
        DisjointBatch::new(xi, a.clone(), seg.clone()),
    );
    m.check(
        e,
        "NaN edge weight",
        "NonFinite",
        DisjointBatch::new(x.clone(), w(&[(0, 1, f64::NAN)], 5), seg.clone()),
    );
    m.check(
        e,
        "infinite edge weight",
        "NonFinite",
        DisjointBatch::new(x.clone(), w(&[(3, 3, f64::INFINITY)], 5), seg.clone()),
    );

    // DisjointBatch::from_graph_ids
    let e = "DisjointBatch::from_graph_ids";
    m.check(
        e,
        "ids length != x rows",
        "ShapeMismatch",
        DisjointBatch::from_graph_ids(x.clone(), a.clone(), &ids[..4], 3),
    );
    m.check(
        e,
        "unsorted graph ids",
        "UnsortedGraphIds",
        DisjointBatch::from_graph_ids(x.clone(), a.clone(), &[0, 2, 0, 2, 2], 3),
    );
    m.check(
        e,
        "graph id out of range",
        "GraphIdOutOfRange",
        DisjointBatch::from_graph_ids(x.clone(), a.clone(), &[0, 0, 0, 2, 3], 3),
    );
    m.check(
        e,
        "num_graphs overflowing the offsets",
        "InvalidConfig",
        DisjointBatch::from_graph_ids(x.clone(), a.clone(), &ids, usize::MAX),
    );
    m.check(
        e,
        "edge across graphs",
        "EdgeBetweenGraphs",
        DisjointBatch::from_graph_ids(x.clone(), a.clone(), &[0, 0, 1, 1, 1], 2),
    );

    // DisjointBatch::from_offsets
    let e = "DisjointBatch::from_offsets";
    m.check(
        e,
        "no offsets",
        "InvalidOffsets",
        DisjointBatch::from_offsets(x.clone(), a.clone(), vec![]),
    );
    m.check(
        e,
        "first offset != 0",
        "InvalidOffsets",
        DisjointBatch::from_offsets(x.clone(), a.clone(), vec![1, 3, 5]),
    );
    m.check(
        e,
        "decreasing offsets",
        "InvalidOffsets",
        DisjointBatch::from_offsets(x.clone(), a.clone(), vec![0, 3, 2, 5]),
    );
    m.check(
        e,
        "last offset != x rows",
        "ShapeMismatch",
        DisjointBatch::from_offsets(x.clone(), a.clone(), vec![0, 3, 4]),
    );

    // DisjointBatch::from_csr_parts
    let e = "DisjointBatch::from_csr_parts";
    let csr = |ip: Vec<usize>, ix: Vec<usize>, d: Vec<f64>| {
        DisjointBatch::from_csr_parts(x.clone(), ip, ix, d, seg.clone())
    };
    m.check(
        e,
        "indptr of the wrong length",
        "InvalidCsr",
        csr(vec![0, 0, 0], vec![], vec![]),
    );
    m.check(
        e,
        "decreasing indptr",
        "InvalidCsr",
        csr(vec![0, 1, 0, 0, 0, 0], vec![1], vec![1.0]),
    );
    m.check(
        e,
        "column index out of range",
        "InvalidCsr",
        csr(vec![0, 1, 1, 1, 1, 1], vec![7], vec![1.0]),
    );
    m.check(
        e,
        "unsorted column indices",
        "InvalidCsr",
        csr(vec![0, 2, 2, 2, 2, 2], vec![2, 1], vec![1.0, 1.0]),
    );
    m.check(
        e,
        "duplicate column index",
        "InvalidCsr",
        csr(vec![0, 2, 2, 2, 2, 2], vec![1, 1], vec![1.0, 1.0]),
    );
    m.check(
        e,
        "indices and data of different lengths",
        "InvalidCsr",
        csr(vec![0, 1, 1, 1, 1, 1], vec![1], vec![1.0, 2.0]),
    );
    m.check(
        e,
        "edge across graphs",
        "EdgeBetweenGraphs",
        csr(vec![0, 1, 1, 1, 1, 1], vec![4], vec![1.0]),
    );
    m.check(
        e,
        "NaN edge weight",
        "NonFinite",
        csr(vec![0, 1, 1, 1, 1, 1], vec![1], vec![f64::NAN]),
    );

    // DisjointBatch::single
    let e = "DisjointBatch::single";
    m.check(
        e,
        "non-square adjacency",
        "AdjacencyShape",
        DisjointBatch::single(x.clone(), CsMat::zero((5, 3))),
    );
    m.check(
        e,
        "infinite feature",
        "NonFinite",
        DisjointBatch::single(array![[f64::INFINITY]], CsMat::zero((1, 1))),
    );

    // DisjointBatch::stack
    let e = "DisjointBatch::stack";
    m.check(
        e,
        "graphs of different widths",
        "ShapeMismatch",
        DisjointBatch::<f64>::stack(&[
            (Array2::zeros((2, 3)), CsMat::zero((2, 2))),
            (Array2::zeros((1, 2)), CsMat::zero((1, 1))),
        ]),
    );
    m.check(
        e,
        "adjacency of the wrong size",
        "AdjacencyShape",
        DisjointBatch::<f64>::stack(&[(Array2::zeros((2, 3)), CsMat::zero((3, 3)))]),
    );
    m.check(
        e,
        "NaN edge weight",
        "NonFinite",
        DisjointBatch::stack(&[(Array2::zeros((2, 1)), w(&[(0, 1, f64::NAN)], 2))]),
    );

    // DisjointBatch::from_edge_index
    let e = "DisjointBatch::from_edge_index";
    let gi: Vec<i64> = ids.iter().map(|&g| g as i64).collect();
    let ei = array![[0_i64, 1], [1, 0]];
    m.check(
        e,
        "edge_index not 2 x E",
        "ShapeMismatch",
        DisjointBatch::from_edge_index(x.clone(), array![[0_i64, 1]].view(), None, &gi, 3),
    );
    m.check(
        e,
        "weights length != E",
        "ShapeMismatch",
        DisjointBatch::from_edge_index(x.clone(), ei.view(), Some(&[1.0][..]), &gi, 3),
    );
    m.check(
        e,
        "graph ids length != x rows",
        "ShapeMismatch",
        DisjointBatch::from_edge_index(x.clone(), ei.view(), None, &gi[..2], 3),
    );
    m.check(
        e,
        "negative node id",
        "InvalidCsr",
        DisjointBatch::from_edge_index(x.clone(), array![[0_i64], [-1]].view(), None, &gi, 3),
    );
    m.check(
        e,
        "node id out of range",
        "InvalidCsr",
        DisjointBatch::from_edge_index(x.clone(), array![[5_i64], [0]].view(), None, &gi, 3),
    );
    m.check(
        e,
        "duplicate edge",
        "InvalidCsr",
        DisjointBatch::from_edge_index(x.clone(), array![[0_i64, 0], [1, 1]].view(), None, &gi, 3),
    );
    m.check(
        e,
        "negative graph id",
        "NegativeGraphId",
        DisjointBatch::from_edge_index(x.clone(), ei.view(), None, &[0, 0, -1, 2, 2], 3),
    );
    m.check(
        e,
        "unsorted graph ids",
        "UnsortedGraphIds",
        DisjointBatch::from_edge_index(x.clone(), ei.view(), None, &[0, 2, 0, 2, 2], 3),
    );
    m.check(
        e,
        "graph id out of range",
        "GraphIdOutOfRange",
        DisjointBatch::from_edge_index(x.clone(), ei.view(), None, &gi, 2),
    );
    m.check(
        e,
        "edge across graphs",
        "EdgeBetweenGraphs",
        DisjointBatch::from_edge_index(x.clone(), array![[2_i64], [3]].view(), None, &gi, 3),
    );
    m.check(
        e,
        "NaN edge weight",
        "NonFinite",
        DisjointBatch::from_edge_index(x.clone(), ei.view(), Some(&[1.0, f64::NAN][..]), &gi, 3),
    );

    // methods of a batch: the batch must be unchanged after each failure
    let before = b.clone();
    let e = "DisjointBatch::with_x";
    m.check(
        e,
        "x rows != segment nodes",
        "ShapeMismatch",
        b.with_x(Array2::zeros((2, 3))),
    );
    m.check(
        e,
        "NaN feature",
        "NonFinite",
        b.with_x(Array2::from_elem((5, 3), f64::NAN)),
    );
    let e = "DisjointBatch::with_edge_weights";
    m.check(
        e,
        "weights length != nnz",
        "ShapeMismatch",
        b.with_edge_weights(vec![1.0; 5]),
    );
    m.check(
        e,
        "infinite edge weight",
        "NonFinite",
        b.with_edge_weights(vec![1.0, 1.0, f64::INFINITY, 1.0, 1.0, 1.0]),
    );
    let e = "DisjointBatch::permute_nodes";
    m.check(
        e,
        "permutation of the wrong length",
        "InvalidConfig",
        b.permute_nodes(&[0, 1, 2]),
    );
    m.check(
        e,
        "repeated node",
        "InvalidConfig",
        b.permute_nodes(&[0, 0, 2, 3, 4]),
    );
    m.check(
        e,
        "node id out of range",
        "InvalidConfig",
        b.permute_nodes(&[0, 1, 2, 3, 9]),
    );
    m.check(
        e,
        "node moved across graphs",
        "InvalidConfig",
        b.permute_nodes(&[0, 1, 3, 2, 4]),
    );
    let e = "DisjointBatch::select_graphs";
    m.check(
        e,
        "graph id out of range",
        "InvalidConfig",
        b.select_graphs(&[0, 3]),
    );
    assert_eq!(b, before, "a failed call modified the batch");

    // Segments
    let e = "Segments::from_graph_ids";
    m.check(
        e,
        "unsorted graph ids",
        "UnsortedGraphIds",
        Segments::from_graph_ids(&[1, 0], 2),
    );
    m.check(
        e,
        "graph id out of range",
        "GraphIdOutOfRange",
        Segments::from_graph_ids(&[0, 2], 2),
    );
    m.check(
        e,
        "num_graphs overflowing the offsets",
        "InvalidConfig",
        Segments::from_graph_ids(&[0], usize::MAX),
    );
    let e = "Segments::from_graph_ids_i64";
    m.check(
        e,
        "negative graph id",
        "NegativeGraphId",
        Segments::from_graph_ids_i64(&[0, -3], 2),
    );
    m.check(
        e,
        "unsorted graph ids",
        "UnsortedGraphIds",
        Segments::from_graph_ids_i64(&[1, 0], 2),
    );
    let e = "Segments::from_offsets";
    m.check(
        e,
        "no offsets",
        "InvalidOffsets",
        Segments::from_offsets(vec![]),
    );
    m.check(
        e,
        "first offset != 0",
        "InvalidOffsets",
        Segments::from_offsets(vec![2, 3]),
    );
    m.check(
        e,
        "decreasing offsets",
        "InvalidOffsets",
        Segments::from_offsets(vec![0, 3, 1]),
    );
}

// ------------------------------------------------------------ configurations

fn configurations(m: &mut Matrix) {
    let f = 3;
    let act = Activation::Relu;
    let bad_ratios = [
        ("ratio = 0", 0.0),
        ("ratio < 0", -0.5),
        ("ratio > 1", 1.5),
        ("ratio NaN", f64::NAN),
        ("ratio infinite", f64::INFINITY),
    ];
    for (kind, r) in bad_ratios {
        m.check(
            "TopKPool::new",
            kind,
            "InvalidConfig",
            TopKPool::<f64>::new(f, r, 0),
        );
        m.check(
            "SAGPool::new",
            kind,
            "InvalidConfig",
            SAGPool::<f64>::new(f, r, 0),
        );
        m.check(
            "SAGPool::new_with_scorer",
            kind,
            "InvalidConfig",
            SAGPool::<f64>::new_with_scorer(f, r, SagScorer::GraphConv, 0),
        );
        m.check(
            "KeepRule::validate",
            kind,
            "InvalidConfig",
            KeepRule::Ratio(r).validate(),
        );
        let topk = TopKPool::<f64>::new(f, 0.5, 0).unwrap();
        m.check(
            "TopKPool::with_keep",
            kind,
            "InvalidConfig",
            topk.with_keep(KeepRule::Ratio(r)),
        );
        let sag = SAGPool::<f64>::new(f, 0.5, 0).unwrap();
        m.check(
            "SAGPool::with_keep",
            kind,
            "InvalidConfig",
            sag.with_keep(KeepRule::Ratio(r)),
        );
    }
    let keep_bad = [
        ("k = 0", KeepRule::Count(0)),
        ("min_score NaN", KeepRule::MinScore(f64::NAN)),
        ("min_score infinite", KeepRule::MinScore(f64::NEG_INFINITY)),
    ];
    for (kind, k) in keep_bad {
        m.check("KeepRule::validate", kind, "InvalidConfig", k.validate());
        m.check(
            "TopKPool::with_keep",
            kind,
            "InvalidConfig",
            TopKPool::<f64>::new(f, 0.5, 0).unwrap().with_keep(k),
        );
        m.check(
            "SAGPool::with_keep",
            kind,
            "InvalidConfig",
            SAGPool::<f64>::new(f, 0.5, 0).unwrap().with_keep(k),
        );
    }
    for (kind, mult) in [
        ("multiplier NaN", f64::NAN),
        ("multiplier infinite", f64::INFINITY),
    ] {
        m.check(
            "TopKPool::with_multiplier",
            kind,
            "InvalidConfig",
            TopKPool::<f64>::new(f, 0.5, 0)
                .unwrap()
                .with_multiplier(mult),
        );
        m.check(
            "SAGPool::with_multiplier",
            kind,
            "InvalidConfig",
            SAGPool::<f64>::new(f, 0.5, 0)
                .unwrap()
                .with_multiplier(mult),
        );
    }
    m.check(
        "TopKPool::with_multiplier",
        "multiplier infinite in f32",
        "InvalidConfig",
        TopKPool::<f32>::new(f, 0.5, 0)
            .unwrap()
            .with_multiplier(1e300),
    );

    m.check("SortPool::new", "k = 0", "InvalidConfig", SortPool::new(0));
    m.check(
        "GlobalAttentionPool::new",
        "channels = 0",
        "InvalidConfig",
        GlobalAttentionPool::<f64>::new(f, 0, 0),
    );
    for (kind, eps) in [
        ("eps < 0", -1e-9),
        ("eps NaN", f64::NAN),
        ("eps infinite", f64::INFINITY),
    ] {
        m.check(
            "GlobalAttnSumPool::with_eps",
            kind,
            "InvalidConfig",
            GlobalAttnSumPool::<f64>::new(f, 0).with_eps(eps),
        );
    }
    m.check(
        "GlobalAttnSumPool::with_eps",
        "eps infinite in f32",
        "InvalidConfig",
        GlobalAttnSumPool::<f32>::new(f, 0).with_eps(1e300),
    );

    // clustering pools
    m.check(
        "MinCutPool::new",
        "k = 0",
        "InvalidConfig",
        MinCutPool::<f64>::new(f, 0, &[], act, 0),
    );
    m.check(
        "MinCutPool::new",
        "hidden width 0",
        "InvalidConfig",
        MinCutPool::<f64>::new(f, 2, &[4, 0], act, 0),
    );
    m.check(
        "DMoNPool::new",
        "k = 0",
        "InvalidConfig",
        DMoNPool::<f64>::new(f, 0, &[], act, 0.1, 0),
    );
    m.check(
        "DMoNPool::new",
        "hidden width 0",
        "InvalidConfig",
        DMoNPool::<f64>::new(f, 2, &[0], act, 0.1, 0),
    );
    m.check(
        "DMoNPool::new",
        "coefficient NaN",
        "InvalidConfig",
        DMoNPool::<f64>::new(f, 2, &[], act, f64::NAN, 0),
    );
    m.check(
        "DMoNPool::new",
        "coefficient infinite in f32",
        "InvalidConfig",
        DMoNPool::<f32>::new(f, 2, &[], act, 1e300, 0),
    );
    m.check(
        "JustBalancePool::new",
        "k = 0",
        "InvalidConfig",
        JustBalancePool::<f64>::new(f, 0, &[], act, false, 0),
    );
    m.check(
        "JustBalancePool::new",
        "hidden width 0",
        "InvalidConfig",
        JustBalancePool::<f64>::new(f, 2, &[0], act, false, 0),
    );
    m.check(
        "AsymCheegerCutPool::new",
        "k = 0",
        "InvalidConfig",
        AsymCheegerCutPool::<f64>::new(f, 0, &[], act, 1.0, 1.0, 0),
    );
    m.check(
        "AsymCheegerCutPool::new",
        "k = 1 (no quantile)",
        "InvalidConfig",
        AsymCheegerCutPool::<f64>::new(f, 1, &[], act, 1.0, 1.0, 0),
    );
    m.check(
        "AsymCheegerCutPool::new",
        "hidden width 0",
        "InvalidConfig",
        AsymCheegerCutPool::<f64>::new(f, 2, &[0], act, 1.0, 1.0, 0),
    );
    m.check(
        "AsymCheegerCutPool::new",
        "coefficient NaN",
        "InvalidConfig",
        AsymCheegerCutPool::<f64>::new(f, 2, &[], act, f64::NAN, 1.0, 0),
    );
    m.check(
        "AsymCheegerCutPool::new",
        "coefficient infinite",
        "InvalidConfig",
        AsymCheegerCutPool::<f64>::new(f, 2, &[], act, 1.0, f64::INFINITY, 0),
    );
    m.check(
        "AsymCheegerCutPool::new",
        "coefficient infinite in f32",
        "InvalidConfig",
        AsymCheegerCutPool::<f32>::new(f, 2, &[], act, 1e39, 1.0, 0),
    );

    // DiffPool, MemPooling
    m.check(
        "DiffPool::new",
        "k = 0",
        "InvalidConfig",
        DiffPool::<f64>::new(f, 0, None, act, 0),
    );
    m.check(
        "DiffPool::new",
        "channels = 0",
        "InvalidConfig",
        DiffPool::<f64>::new(f, 2, Some(0), act, 0),
    );
    let mem = |c, h, k, tau| MemPooling::<f64>::new(f, c, h, k, tau, 0);
    m.check(
        "MemPooling::new",
        "channels = 0",
        "InvalidConfig",
        mem(0, 1, 2, 1.0),
    );
    m.check(
        "MemPooling::new",
        "heads = 0",
        "InvalidConfig",
        mem(2, 0, 2, 1.0),
    );
    m.check(
        "MemPooling::new",
        "k = 0",
        "InvalidConfig",
        mem(2, 1, 0, 1.0),
    );
    m.check(
        "MemPooling::new",
        "tau = 0",
        "InvalidConfig",
        mem(2, 1, 2, 0.0),
    );
    m.check(
        "MemPooling::new",
        "tau < 0",
        "InvalidConfig",
        mem(2, 1, 2, -1.0),
    );
    m.check(
        "MemPooling::new",
        "tau NaN",
        "InvalidConfig",
        mem(2, 1, 2, f64::NAN),
    );
    m.check(
        "MemPooling::new",
        "tau infinite",
        "InvalidConfig",
        mem(2, 1, 2, f64::INFINITY),
    );
    m.check(
        "MemPooling::new",
        "tau zero in f32",
        "InvalidConfig",
        MemPooling::<f32>::new(f, 2, 1, 2, 1e-300, 0),
    );
    // sizes whose arrays cannot exist: typed errors, not capacity-overflow panics
    let huge = usize::MAX;
    let kind = "a size whose arrays overflow memory";
    m.check(
        "GlobalAttentionPool::new",
        kind,
        "InvalidConfig",
        GlobalAttentionPool::<f64>::new(f, huge, 0),
    );
    m.check(
        "TopKPool::new",
        kind,
        "InvalidConfig",
        TopKPool::<f64>::new(huge, 0.5, 0),
    );
    m.check(
        "SAGPool::new",
        kind,
        "InvalidConfig",
        SAGPool::<f64>::new(huge / 2, 0.5, 0),
    );
    m.check(
        "MinCutPool::new",
        kind,
        "InvalidConfig",
        MinCutPool::<f64>::new(f, huge, &[], act, 0),
    );
    m.check(
        "MinCutPool::new",
        "hidden width overflowing memory",
        "InvalidConfig",
        MinCutPool::<f64>::new(f, 2, &[huge], act, 0),
    );
    m.check(
        "DMoNPool::new",
        kind,
        "InvalidConfig",
        DMoNPool::<f64>::new(0, huge, &[], act, 0.1, 0),
    );
    m.check(
        "JustBalancePool::new",
        kind,
        "InvalidConfig",
        JustBalancePool::<f64>::new(f, 1 << 40, &[], act, false, 0),
    );
    m.check(
        "AsymCheegerCutPool::new",
        kind,
        "InvalidConfig",
        AsymCheegerCutPool::<f64>::new(f, huge, &[], act, 1.0, 1.0, 0),
    );
    m.check(
        "DiffPool::new",
        kind,
        "InvalidConfig",
        DiffPool::<f64>::new(f, huge, None, act, 0),
    );
    m.check(
        "DiffPool::new",
        "channels overflowing memory",
        "InvalidConfig",
        DiffPool::<f64>::new(f, 2, Some(huge), act, 0),
    );
    m.check(
        "MemPooling::new",
        kind,
        "InvalidConfig",
        mem(2, huge, 2, 1.0),
    );
    m.check(
        "MemPooling::new",
        "channels overflowing memory",
        "InvalidConfig",
        mem(huge, 1, 2, 1.0),
    );
    m.check(
        "MemPooling::new",
        "k overflowing memory",
        "InvalidConfig",
        MemPooling::<f64>::new(0, 2, 1, huge, 1.0, 0),
    );
    let b = good();
    for k in [huge, huge / 3] {
        m.check(
            "SortPool::forward",
            kind,
            "InvalidConfig",
            Layer::<f64>::forward(&SortPool::new(k).unwrap(), &b).map(|_| ()),
        );
    }
    let none =
        DisjointBatch::<f64>::from_offsets(Array2::zeros((0, 2)), CsMat::zero((0, 0)), vec![0])
            .unwrap();
    m.check(
        "SortPool::forward",
        "a size whose arrays overflow memory (no graphs)",
        "InvalidConfig",
        Layer::<f64>::forward(&SortPool::new(huge).unwrap(), &none).map(|_| ()),
    );
    m.check(
        "Activation::from_name",
        "unknown activation",
        "InvalidConfig",
        Activation::from_name(Some("gelu")),
    );
}

// ------------------------------------------------------------ layers

/// Output gradients a backward pass must refuse, by kind, with the variant.
trait BadGrads<T: Scalar>: Differentiable<T> {
    fn bad_grads(&self) -> Vec<(&'static str, Self::Grad, &'static str)>;
}

fn poisoned<D: ndarray::Dimension>(
    g: &ndarray::Array<f64, D>,
    v: f64,
) -> Option<ndarray::Array<f64, D>> {
    let mut g = g.clone();
    let first = g.iter_mut().next()?;
    *first = v;
    Some(g)
}

impl BadGrads<f64> for Array2<f64> {
    fn bad_grads(&self) -> Vec<(&'static str, Array2<f64>, &'static str)> {
        let (r, c) = self.dim();
        let mut v = vec![
            (
                "output gradient with an extra row",
                Array2::zeros((r + 1, c)),
                "GradientShape",
            ),
            (
                "output gradient with an extra column",
                Array2::zeros((r, c + 1)),
                "GradientShape",
            ),
        ];
        let ones = Array2::ones((r, c));
        v.extend(poisoned(&ones, f64::NAN).map(|g| ("NaN in the output gradient", g, "NonFinite")));
        v.extend(
            poisoned(&ones, f64::INFINITY)
                .map(|g| ("infinity in the output gradient", g, "NonFinite")),
        );
        v
    }
}

impl BadGrads<f64> for Array3<f64> {
    fn bad_grads(&self) -> Vec<(&'static str, Array3<f64>, &'static str)> {
        let (b, k, f) = self.dim();
        let mut v = vec![
            (
                "output gradient with an extra row",
                Array3::zeros((b + 1, k, f)),
                "GradientShape",
            ),
            (
                "output gradient with an extra column",
                Array3::zeros((b, k, f + 1)),
                "GradientShape",
            ),
        ];
        let ones = Array3::ones((b, k, f));
        v.extend(poisoned(&ones, f64::NAN).map(|g| ("NaN in the output gradient", g, "NonFinite")));
        v.extend(
            poisoned(&ones, f64::INFINITY)
                .map(|g| ("infinity in the output gradient", g, "NonFinite")),
        );
        v
    }
}

impl BadGrads<f64> for Pooled<f64> {
    fn bad_grads(&self) -> Vec<(&'static str, PooledGrad<f64>, &'static str)> {
        let good = PooledGrad::zeros(self);
        let (r, c) = good.x.dim();
        let with = |f: &dyn Fn(&mut PooledGrad<f64>)| {
            let mut g = good.clone();
            f(&mut g);
            g
        };
        let mut v = vec![
            (
                "output gradient with an extra row",
                with(&|g| g.x = Array2::zeros((r + 1, c))),
                "GradientShape",
            ),
            (
                "output gradient with an extra column",
                with(&|g| g.x = Array2::zeros((r, c + 1))),
                "GradientShape",
            ),
            (
                "edge-weight gradient of the wrong length",
                with(&|g| g.edge_weights = Array1::zeros(good.edge_weights.len() + 1)),
                "GradientShape",
            ),
            (
                "gradient of an unknown loss",
                with(&|g| {
                    g.losses.insert("no_such_loss".into(), 1.0);
                }),
                "GradientShape",
            ),
        ];
        if r * c > 0 {
            v.push((
                "NaN in the output gradient",
                with(&|g| g.x[[0, 0]] = f64::NAN),
                "NonFinite",
            ));
        }
        if !good.edge_weights.is_empty() {
            v.push((
                "infinity in the output gradient",
                with(&|g| g.edge_weights[0] = f64::INFINITY),
                "NonFinite",
            ));
        }
        if let Some(name) = good.losses.keys().next().cloned() {
            v.push((
                "NaN loss gradient",
                with(&|g| {
                    g.losses.insert(name.clone(), f64::NAN);
                }),
                "NonFinite",
            ));
        }
        v
    }
}

/// Other batches than the forward's, by kind.
fn other_batches(b: &DisjointBatch<f64>) -> Vec<(&'static str, DisjointBatch<f64>, bool)> {
    let mut graphs = b.split();
    graphs.push((Array2::zeros((1, b.num_features())), CsMat::zero((1, 1))));
    let extra = DisjointBatch::stack(&graphs).unwrap();
    let n = b.num_nodes();
    let edgeless =
        DisjointBatch::new(b.x().to_owned(), CsMat::zero((n, n)), b.segments().clone()).unwrap();
    let wider = b
        .with_x(ndarray::concatenate![
            ndarray::Axis(1),
            b.x().to_owned(),
            Array2::zeros((n, 1))
        ])
        .unwrap();
    let merged =
        DisjointBatch::from_offsets(b.x().to_owned(), b.a().clone(), vec![0, 3, 5]).unwrap();
    // (kind, batch, whether even a layer that never reads A must refuse it)
    vec![
        ("backward batch with an extra graph", extra, true),
        ("backward batch of another width", wider, true),
        ("backward batch with other segments", merged, true),
        (
            "backward batch with another adjacency structure",
            edgeless,
            false,
        ),
    ]
}

/// Every bad input of one layer: forward with a wrong feature width,
/// backward with bad gradients and other batches, set_param with bad values.
fn layer_cases<L>(
    m: &mut Matrix,
    name: &str,
    mut layer: L,
    other: Option<L>,
    width_checked: bool,
    reads_a: bool,
) where
    L: Layer<f64> + Clone + std::fmt::Debug + PartialEq,
    L::Output: BadGrads<f64> + Clone,
{
    let b = good();
    let before = b.clone();
    let layer_before = layer.clone();
    let fwd = format!("{name}::forward");
    let n = b.num_nodes();
    if width_checked {
        let narrow = b
            .with_x(b.x().slice(ndarray::s![.., ..2]).to_owned())
            .unwrap();
        let wide = b
            .with_x(ndarray::concatenate![
                ndarray::Axis(1),
                b.x().to_owned(),
                Array2::ones((n, 2))
            ])
            .unwrap();
        m.check(
            &fwd,
            "features narrower than the layer's",
            "ShapeMismatch",
            layer.forward(&narrow).map(|_| ()),
        );
        m.check(
            &fwd,
            "features wider than the layer's",
            "ShapeMismatch",
            layer.forward(&wide).map(|_| ()),
        );
    }
    let (y, cache) = layer.forward(&b).expect("the good batch pools");
    let bwd = format!("{name}::backward");
    for (kind, g, expected) in y.bad_grads() {
        let g_before = g.clone();
        m.check(
            &bwd,
            kind,
            expected,
            layer.backward(&b, &cache, &g).map(|_| ()),
        );
        // by their printed form: NaN != NaN
        assert_eq!(
            format!("{g:?}"),
            format!("{g_before:?}"),
            "{bwd} modified the gradient"
        );
    }
    let g = y.random_cotangent(&mut rng_from_seed(5));
    for (kind, other, always) in other_batches(&b) {
        if always || reads_a {
            m.check(
                &bwd,
                kind,
                "ShapeMismatch",
                layer.backward(&other, &cache, &g).map(|_| ()),
            );
        }
    }
    // a cache made by another layer, or before set_param changed this one
    if let Some(other) = &other {
        m.check(
            &bwd,
            "another layer's cache",
            "CacheMismatch",
            other.backward(&b, &cache, &g).map(|_| ()),
        );
    }
    if let Some((pname, p)) = layer.params().iter().next() {
        let mut changed = layer.clone();
        changed.set_param(pname, p.mapv(|v| v + 0.5)).unwrap();
        m.check(
            &bwd,
            "a cache from before set_param",
            "CacheMismatch",
            changed.backward(&b, &cache, &g).map(|_| ()),
        );
    }
    // set_param: unknown names, wrong shapes, non-finite values
    let set = format!("{name}::set_param");
    m.check(
        &set,
        "unknown parameter name",
        "UnknownParameter",
        layer.set_param("no_such_parameter", ArrayD::zeros(IxDyn(&[1]))),
    );
    let params: Vec<(String, ArrayD<f64>)> = layer
        .params()
        .iter()
        .map(|(n, p)| (n.to_string(), p.clone()))
        .collect();
    for (pname, p) in &params {
        let mut extra = p.shape().to_vec();
        extra.push(1);
        m.check(
            &set,
            "parameter with an extra dimension",
            "ParameterShape",
            layer.set_param(pname, ArrayD::zeros(IxDyn(&extra))),
        );
        let mut bigger = p.shape().to_vec();
        bigger[0] += 1;
        m.check(
            &set,
            "parameter of the wrong size (weights for another width)",
            "ParameterShape",
            layer.set_param(pname, ArrayD::zeros(IxDyn(&bigger))),
        );
        if !p.is_empty() {
            let mut nan = p.clone();
            nan.iter_mut().for_each(|v| *v = f64::NAN);
            m.check(
                &set,
                "NaN parameter",
                "NonFinite",
                layer.set_param(pname, nan),
            );
            let mut inf = p.clone();
            *inf.iter_mut().last().unwrap() = f64::INFINITY;
            m.check(
                &set,
                "infinite parameter",
                "NonFinite",
                layer.set_param(pname, inf),
            );
        }
    }
    assert_eq!(
        layer, layer_before,
        "{name}: a failed call modified the layer"
    );
    assert_eq!(b, before, "{name}: a failed call modified the batch");
}

fn layers(m: &mut Matrix) {
    let f = 3;
    let act = Activation::Tanh;
    layer_cases(m, "GlobalSumPool", GlobalSumPool, None, false, false);
    layer_cases(m, "GlobalAvgPool", GlobalAvgPool, None, false, false);
    layer_cases(m, "GlobalMaxPool", GlobalMaxPool, None, false, false);
    layer_cases(
        m,
        "GlobalAttentionPool",
        GlobalAttentionPool::new(f, 2, 1).unwrap(),
        Some(GlobalAttentionPool::new(f, 4, 1).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "GlobalAttnSumPool",
        GlobalAttnSumPool::new(f, 2),
        Some(GlobalAttnSumPool::new(f, 2).with_eps(1e-16).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "SortPool",
        SortPool::new(2).unwrap(),
        Some(SortPool::new(3).unwrap()),
        false,
        true,
    );
    layer_cases(
        m,
        "TopKPool",
        TopKPool::new(f, 0.5, 3).unwrap(),
        Some(TopKPool::new(f, 0.9, 3).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "SAGPool",
        SAGPool::new(f, 0.5, 4).unwrap(),
        Some(SAGPool::new(f, 0.5, 5).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "SAGPool(GraphConv)",
        SAGPool::new_with_scorer(f, 0.5, SagScorer::GraphConv, 4).unwrap(),
        Some(SAGPool::new(f, 0.5, 4).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "LaPool",
        LaPool::new(true),
        Some(LaPool::new(false)),
        false,
        true,
    );
    layer_cases(
        m,
        "MinCutPool",
        MinCutPool::new(f, 2, &[4], act, 5).unwrap(),
        Some(MinCutPool::new(f, 3, &[4], act, 5).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "MinCutPool(PyG)",
        MinCutPool::new(f, 2, &[], act, 5)
            .unwrap()
            .with_variant(MinCutVariant::Pyg),
        Some(MinCutPool::new(f, 2, &[], act, 5).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "DMoNPool",
        DMoNPool::new(f, 2, &[4], act, 0.2, 6).unwrap(),
        Some(DMoNPool::new(f, 2, &[4], act, 0.3, 6).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "DMoNPool(PyG)",
        DMoNPool::new(f, 2, &[], act, 0.2, 6)
            .unwrap()
            .with_variant(DMoNVariant::Pyg),
        Some(DMoNPool::new(f, 2, &[], act, 0.2, 6).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "JustBalancePool",
        JustBalancePool::new(f, 2, &[4], act, true, 7).unwrap(),
        Some(JustBalancePool::new(f, 2, &[4], act, false, 7).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "AsymCheegerCutPool",
        AsymCheegerCutPool::new(f, 2, &[4], act, 1.0, 1.0, 8).unwrap(),
        Some(AsymCheegerCutPool::new(f, 3, &[4], act, 1.0, 1.0, 8).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "DiffPool",
        DiffPool::new(f, 2, Some(2), act, 9).unwrap(),
        Some(DiffPool::new(f, 2, Some(4), act, 9).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "DiffPool(PyG)",
        DiffPool::new(f, 2, None, act, 9)
            .unwrap()
            .with_variant(DiffPoolVariant::Pyg),
        Some(DiffPool::new(f, 2, None, act, 9).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "MemPooling",
        MemPooling::new(f, 2, 2, 2, 1.0, 10).unwrap(),
        Some(MemPooling::new(f, 2, 1, 2, 1.0, 10).unwrap()),
        true,
        true,
    );
    layer_cases(
        m,
        "MemPooling(coarsened)",
        MemPooling::new(f, 2, 1, 2, 1.0, 10)
            .unwrap()
            .with_adjacency(MemAdjacency::Coarsened),
        Some(
            MemPooling::new(f, 3, 1, 2, 1.0, 10)
                .unwrap()
                .with_adjacency(MemAdjacency::Coarsened),
        ),
        true,
        true,
    );
    // SortPool sorts by the last feature: a batch without features is refused
    let b = good();
    let none = b.with_x(Array2::zeros((b.num_nodes(), 0))).unwrap();
    m.check(
        "SortPool::forward",
        "no features",
        "ShapeMismatch",
        Layer::<f64>::forward(&SortPool::new(2).unwrap(), &none).map(|_| ()),
    );
    // LaPool with path lengths: negative weights have no shortest paths
    let neg = b
        .with_edge_weights(vec![1.0, 1.0, -2.0, -2.0, 0.5, 0.5])
        .unwrap();
    m.check(
        "LaPool::forward",
        "negative edge weight as a path length",
        "NegativePathLength",
        Layer::<f64>::forward(&LaPool::new(true), &neg).map(|_| ()),
    );
}

#[test]
fn the_bad_input_matrix_gives_the_specific_typed_error_for_every_entry_point_and_kind() {
    let mut m = Matrix::default();
    batch_constructors(&mut m);
    configurations(&mut m);
    layers(&mut m);
    let entries: BTreeSet<&str> = m.cells.iter().map(|(e, _)| e.as_str()).collect();
    let kinds: BTreeSet<&str> = m.cells.iter().map(|(_, k)| k.as_str()).collect();
    eprintln!(
        "bad-input matrix: {} entry points x {} kinds of bad input = {} cells possible, \
         {} cells exercised ({} checks)",
        entries.len(),
        kinds.len(),
        entries.len() * kinds.len(),
        m.cells.len(),
        m.checks
    );
    assert!(
        m.cells.len() >= 300,
        "the matrix shrank: {} cells",
        m.cells.len()
    );
}
