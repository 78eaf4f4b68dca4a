//! Properties of the selection pools (TopKPool, SAGPool, LaPool): node
//! permutation equivariance, ratio 1 keeps everything, batch = graphs pooled
//! alone, thread-count independence, pooled batches pool again, gradients
//! against finite differences, and their edge cases.

mod common;

use common::{assert_gradients, with_threads};
use graphpool::framework::{Layer, Pooled, Selection, SrcPool};
use graphpool::grad::{check_layer_gradients, GradCheckOptions};
use graphpool::kernels::sort::keep_count;
use graphpool::layers::{Gating, KeepRule, SAGPool, SagScorer, TopKPool};
use graphpool::proptest::{batch_and_permutation, batches, BatchShape};
use graphpool::{DisjointBatch, PoolError};
use ndarray::{array, Array2, ArrayD, IxDyn};
use proptest::prelude::*;
use sprs::{CsMat, TriMat};

/// A pool as a function of the batch.
type Pool = Box<dyn Fn(&DisjointBatch<f64>) -> Pooled<f64> + Send + Sync>;

/// Every score-based selection pool configuration, by name, returning
/// its selection.
fn selection_pools(f: usize, ratio: f64) -> Vec<(&'static str, Pool)> {
    let topk = TopKPool::<f64>::new(f, ratio, 1)
        .unwrap()
        .with_return_selection(true);
    let topk_sig = TopKPool::<f64>::new(f, ratio, 2)
        .unwrap()
        .with_sigmoid_gating(true)
        .with_return_selection(true);
    let sag = SAGPool::<f64>::new(f, ratio, 3)
        .unwrap()
        .with_return_selection(true);
    let sag_gc = SAGPool::<f64>::new_with_scorer(f, ratio, SagScorer::GraphConv, 4)
        .unwrap()
        .with_gating(Gating::Sigmoid)
        .with_return_selection(true);
    vec![
        (
            "topk",
            Box::new(move |b: &DisjointBatch<f64>| topk.call(b).unwrap()),
        ),
        (
            "topk_sigmoid",
            Box::new(move |b: &DisjointBatch<f64>| topk_sig.call(b).unwrap()),
        ),
        (
            "sag_gcn",
            Box::new(move |b: &DisjointBatch<f64>| sag.call(b).unwrap()),
        ),
        (
            "sag_graph_conv",
            Box::new(move |b: &DisjointBatch<f64>| sag_gc.call(b).unwrap()),
        ),
    ]
}

fn kept(p: &Pooled<f64>) -> Vec<usize> {
    match p
        .selection
        .as_ref()
        .expect("the pools under test return it")
    {
        Selection::Subset(s) => s.kept.clone(),
        other => panic!("expected a subset, got {other:?}"),
    }
}

fn dense(a: &CsMat<f64>) -> Array2<f64> {
    let mut d = Array2::zeros((a.rows(), a.cols()));
    for (&v, (r, c)) in a.iter() {
        d[[r, c]] += v;
    }
    d
}

fn assert_batches_close(a: &DisjointBatch<f64>, b: &DisjointBatch<f64>, tol: f64, what: &str) {
    assert_eq!(a.segments(), b.segments(), "{what}: segments");
    common::assert_close(a.x(), b.x(), tol);
    common::assert_close(&dense(a.a()), &dense(b.a()), tol);
}

fn shape() -> BatchShape {
    BatchShape {
        graphs: 1..=4,
        nodes: 0..=8,
        features: 1..=3,
        ..BatchShape::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Permuting nodes within graphs permutes the kept set the same way, and
    /// the pooled graph is the same graph with its node order mapped.
    #[test]
    fn selection_is_equivariant_under_node_permutation_within_graphs(
        (b, perm) in batch_and_permutation(shape()),
        ratio in 0.1f64..=1.0,
    ) {
        let p = b.permute_nodes(&perm).unwrap();
        for (name, pool) in selection_pools(b.num_features(), ratio) {
            let (y, yp) = (pool(&b), pool(&p));
            let k = kept(&y);
            let mut mapped: Vec<usize> = kept(&yp).iter().map(|&j| perm[j]).collect();
            // kept nodes of the permuted batch, as original nodes, in pooled order
            let pos: std::collections::HashMap<usize, usize> =
                k.iter().enumerate().map(|(j, &n)| (n, j)).collect();
            let q: Vec<usize> = mapped.iter().map(|n| pos[n]).collect();
            mapped.sort_unstable();
            prop_assert_eq!(&mapped, &k, "{}: kept sets differ", name);
            let relabelled = y.batch.permute_nodes(&q).unwrap();
            assert_batches_close(&relabelled, &yp.batch, 1e-12, name);
        }
    }

    /// Pooling a batch gives, graph by graph, what pooling each graph alone gives.
    #[test]
    fn batch_pools_exactly_as_its_graphs_alone(b in batches(shape()), ratio in 0.1f64..=1.0) {
        for (name, pool) in selection_pools(b.num_features(), ratio) {
            let y = pool(&b);
            for g in 0..b.num_graphs() {
                let (x, a) = b.graph(g);
                let alone = pool(&DisjointBatch::single(x, a).unwrap());
                let (xg, ag) = y.batch.graph(g);
                prop_assert_eq!(alone.batch.x(), &xg, "{} graph {}", name, g);
                prop_assert_eq!(dense(alone.batch.a()), dense(&ag), "{} graph {}", name, g);
                let r = b.segments().range(g);
                let score = y.score.as_ref().unwrap().slice(ndarray::s![r]).to_owned();
                prop_assert_eq!(alone.score.as_ref().unwrap(), &score, "{} graph {}", name, g);
            }
        }
    }

    #[test]
    fn results_are_identical_on_one_and_two_threads(b in batches(shape()), ratio in 0.1f64..=1.0) {
        for (name, pool) in selection_pools(b.num_features(), ratio) {
            let y1 = with_threads(1, || pool(&b));
            let y2 = with_threads(2, || pool(&b));
            let y3 = with_threads(3, || pool(&b));
            prop_assert_eq!(&y1, &y2, "{}", name);
            prop_assert_eq!(&y1, &y3, "{}", name);
        }
    }

    /// Ratio 1 keeps every node and every edge; the features are only gated.
    #[test]
    fn ratio_one_keeps_every_node(b in batches(shape())) {
        for (name, pool) in selection_pools(b.num_features(), 1.0) {
            let y = pool(&b);
            prop_assert_eq!(kept(&y), (0..b.num_nodes()).collect::<Vec<_>>(), "{}", name);
            prop_assert_eq!(y.batch.a(), b.a(), "{}", name);
            prop_assert_eq!(y.batch.segments(), b.segments(), "{}", name);
        }
    }

    /// A pooled batch is a valid batch and pools again, keeping
    /// ceil(ratio * ceil(ratio * n)) nodes per graph.
    #[test]
    fn pooled_batches_pool_again(b in batches(shape()), ratio in 0.1f64..=1.0) {
        for (name, pool) in selection_pools(b.num_features(), ratio) {
            let once = pool(&b);
            let re = DisjointBatch::new(
                once.batch.x().to_owned(), once.batch.a().clone(), once.batch.segments().clone(),
            );
            prop_assert!(re.is_ok(), "{}: pooled batch invalid: {:?}", name, re.err());
            let twice = pool(&once.batch);
            let expected: Vec<usize> = b.segments().sizes().iter()
                .map(|&n| keep_count(ratio, keep_count(ratio, n))).collect();
            prop_assert_eq!(twice.batch.segments().sizes(), expected, "{}", name);
        }
    }

    /// The number of kept nodes per graph is ceil(ratio * n) (at least one).
    #[test]
    fn each_graph_keeps_ceil_ratio_times_its_size(b in batches(shape()), ratio in 0.05f64..=1.0) {
        for (name, pool) in selection_pools(b.num_features(), ratio) {
            let y = pool(&b);
            let expected: Vec<usize> =
                b.segments().sizes().iter().map(|&n| keep_count(ratio, n)).collect();
            prop_assert_eq!(y.batch.segments().sizes(), expected, "{}", name);
        }
    }

    /// The kept nodes of each graph are those with the highest scores.
    #[test]
    fn kept_nodes_have_the_highest_scores(b in batches(shape()), ratio in 0.1f64..=1.0) {
        for (name, pool) in selection_pools(b.num_features(), ratio) {
            let y = pool(&b);
            let score = y.score.as_ref().unwrap();
            let k = kept(&y);
            for r in b.segments().ranges() {
                let kept_here: Vec<usize> = k.iter().copied().filter(|n| r.contains(n)).collect();
                let dropped = r.clone().filter(|n| !kept_here.contains(n));
                for d in dropped {
                    for &kk in &kept_here {
                        prop_assert!(score[kk] >= score[d], "{}: dropped {} beats kept {}", name, d, kk);
                    }
                }
            }
        }
    }
}

fn grad_shape() -> BatchShape {
    BatchShape {
        graphs: 1..=3,
        nodes: 0..=6,
        features: 1..=3,
        ..BatchShape::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn topk_gradients_match_finite_differences(b in batches(grad_shape()), ratio in 0.2f64..=1.0) {
        let f = b.num_features();
        assert_gradients(&TopKPool::<f64>::new(f, ratio, 5).unwrap(), &b);
        assert_gradients(&TopKPool::<f64>::new(f, ratio, 6).unwrap().with_sigmoid_gating(true), &b);
        assert_gradients(
            &TopKPool::<f64>::new(f, ratio, 7).unwrap().with_multiplier(1.5).unwrap()
                .with_keep(KeepRule::Count(2)).unwrap(),
            &b,
        );
        assert_gradients(
            &TopKPool::<f64>::new(f, ratio, 8).unwrap().with_keep(KeepRule::MinScore(0.3)).unwrap(),
            &b,
        );
    }

    #[test]
    fn sag_gradients_match_finite_differences(b in batches(grad_shape()), ratio in 0.2f64..=1.0) {
        let f = b.num_features();
        assert_gradients(&SAGPool::<f64>::new(f, ratio, 5).unwrap(), &b);
        assert_gradients(&SAGPool::<f64>::new(f, ratio, 6).unwrap().with_sigmoid_gating(true), &b);
        assert_gradients(
            &SAGPool::<f64>::new_with_scorer(f, ratio, SagScorer::GraphConv, 7).unwrap(),
            &b,
        );
        assert_gradients(
            &SAGPool::<f64>::new_with_scorer(f, ratio, SagScorer::GraphConv, 8).unwrap()
                .with_keep(KeepRule::MinScore(0.2)).unwrap(),
            &b,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// SAGPool's backward pass gathers $\hat A^\top \bar y$ row by row when
    /// every graph of the batch is symmetric
    /// ([`DisjointBatch::symmetric_graphs`]) and scatters it by columns
    /// otherwise. In a batch that mixes directed and undirected graphs (the
    /// scatter), each graph's gradients of `x` and of its edge weights are,
    /// bit for bit, those of the graph alone (the gather, for an undirected
    /// one).
    #[test]
    fn sag_gradients_in_a_batch_of_directed_and_undirected_graphs_are_each_graphs_own(
        b in batches(BatchShape { directed: 0.5, ..shape() }),
        ratio in 0.1f64..=1.0,
        sigmoid in any::<bool>(),
    ) {
        use graphpool::framework::{Differentiable, PooledGrad};
        use ndarray::s;
        let l = SAGPool::<f64>::new(b.num_features(), ratio, 3).unwrap().with_sigmoid_gating(sigmoid);
        let (y, cache) = l.forward(&b).unwrap();
        let cot = y.random_cotangent(&mut graphpool::nn::rng_from_seed(11));
        let g = l.backward(&b, &cache, &cot).unwrap();
        let (ip, pooled_ip) = (b.a().indptr(), y.batch.a().indptr());
        let (ip, pooled_ip) = (ip.raw_storage(), pooled_ip.raw_storage());
        for (i, nodes) in b.segments().ranges().enumerate() {
            let (x, a) = b.graph(i);
            let alone = DisjointBatch::single(x, a).unwrap();
            let (ya, ca) = l.forward(&alone).unwrap();
            let rows = y.batch.segments().range(i);
            let mut cot_a = PooledGrad::zeros(&ya);
            cot_a.x.assign(&cot.x.slice(s![rows.clone(), ..]));
            cot_a.edge_weights.assign(&cot.edge_weights.slice(s![pooled_ip[rows.start]..pooled_ip[rows.end]]));
            let ga = l.backward(&alone, &ca, &cot_a).unwrap();
            let what = format!("graph {i} (symmetric: {})", alone.symmetric_graphs()[0]);
            prop_assert_eq!(ga.x.view(), g.x.slice(s![nodes.clone(), ..]), "x, {}", what);
            prop_assert_eq!(
                ga.edge_weights.as_ref().unwrap().view(),
                g.edge_weights.as_ref().unwrap().slice(s![ip[nodes.start]..ip[nodes.end]]),
                "edge weights, {}", what
            );
        }
    }
}

// ---------------------------------------------------------------- edge cases and options

fn path3() -> DisjointBatch<f64> {
    let mut t = TriMat::new((3, 3));
    for (i, j) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
        t.add_triplet(i, j, 1.0);
    }
    DisjointBatch::single(array![[1.0], [3.0], [2.0]], t.to_csr()).unwrap()
}

fn unit_kernel<L: Layer<f64>>(mut l: L, name: &str) -> L {
    l.set_param(name, ArrayD::from_elem(IxDyn(&[1, 1]), 1.0))
        .unwrap();
    l
}

#[test]
fn ratio_outside_zero_one_is_rejected() {
    for r in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            TopKPool::<f64>::new(2, r, 0),
            Err(PoolError::InvalidConfig { .. })
        ));
        assert!(matches!(
            SAGPool::<f64>::new(2, r, 0),
            Err(PoolError::InvalidConfig { .. })
        ));
    }
    let l = TopKPool::<f64>::new(2, 0.5, 0).unwrap();
    assert!(l.clone().with_keep(KeepRule::Count(0)).is_err());
    assert!(l.clone().with_keep(KeepRule::MinScore(f64::NAN)).is_err());
    assert!(l.with_multiplier(f64::INFINITY).is_err());
}

#[test]
fn non_finite_score_is_an_error() {
    let b = DisjointBatch::single(array![[1.7e308, 1.7e308]], CsMat::zero((1, 1))).unwrap();
    let mut l = TopKPool::<f64>::new(2, 0.5, 0).unwrap();
    l.set_param("kernel", ArrayD::from_elem(IxDyn(&[2, 1]), 1.0))
        .unwrap();
    assert!(matches!(
        l.call(&b),
        Err(PoolError::NonFiniteScore { node: 0, .. })
    ));
}

#[test]
fn feature_width_mismatch_is_an_error() {
    let b = path3();
    assert!(matches!(
        TopKPool::<f64>::new(2, 0.5, 0).unwrap().call(&b),
        Err(PoolError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        SAGPool::<f64>::new(4, 0.5, 0).unwrap().call(&b),
        Err(PoolError::ShapeMismatch { .. })
    ));
}

#[test]
fn empty_single_node_and_edgeless_graphs_are_defined() {
    let x = array![[0.5, -1.0], [2.0, 0.1], [-0.3, 0.7]];
    // graphs of 0, 1, 0, 2 nodes; no edges
    let b = DisjointBatch::from_offsets(x, CsMat::zero((3, 3)), vec![0, 0, 1, 1, 3]).unwrap();
    for (name, pool) in selection_pools(2, 0.3) {
        let y = pool(&b);
        assert_eq!(y.batch.segments().sizes(), vec![0, 1, 0, 1], "{name}");
        assert!(y.batch.x().iter().all(|v| v.is_finite()), "{name}");
        assert_eq!(y.batch.a().nnz(), 0, "{name}");
    }
}

#[test]
fn ties_are_broken_by_node_index() {
    let b = DisjointBatch::single(array![[1.0], [2.0], [2.0], [1.0]], CsMat::zero((4, 4))).unwrap();
    let l = unit_kernel(TopKPool::<f64>::new(1, 0.25, 0).unwrap(), "kernel")
        .with_return_selection(true);
    assert_eq!(kept(&l.call(&b).unwrap()), vec![1]);
    let l = l.with_keep(KeepRule::Ratio(0.75)).unwrap();
    assert_eq!(kept(&l.call(&b).unwrap()), vec![0, 1, 2]);
}

#[test]
fn topk_pools_as_the_formula_says() {
    let b = path3();
    let mut l = TopKPool::<f64>::new(1, 0.5, 0)
        .unwrap()
        .with_return_selection(true);
    l.set_param("kernel", ArrayD::from_elem(IxDyn(&[1, 1]), -2.0))
        .unwrap();
    // y = -x: nodes 0 (y=-1) and 2 (y=-2) kept
    let p = l.call(&b).unwrap();
    assert_eq!(kept(&p), vec![0, 2]);
    let want = array![[1.0 * (-1.0f64).tanh()], [2.0 * (-2.0f64).tanh()]];
    common::assert_close(p.batch.x(), &want, 1e-15);
    assert_eq!(p.batch.a().nnz(), 0);
    assert_eq!(p.score.unwrap(), array![-1.0, -3.0, -2.0]);
}

#[test]
fn count_rule_keeps_min_k_n_like_pyg_integer_ratio() {
    let b = DisjointBatch::from_offsets(
        array![[1.0], [3.0], [2.0], [0.5]],
        CsMat::zero((4, 4)),
        vec![0, 3, 4],
    )
    .unwrap();
    let l = unit_kernel(TopKPool::<f64>::new(1, 0.5, 0).unwrap(), "kernel")
        .with_return_selection(true)
        .with_keep(KeepRule::Count(2))
        .unwrap();
    let p = l.call(&b).unwrap();
    assert_eq!(kept(&p), vec![1, 2, 3]);
}

#[test]
fn min_score_rule_keeps_softmax_above_threshold_and_gates_with_it() {
    let b = DisjointBatch::single(array![[0.0], [1.0], [3.0]], CsMat::zero((3, 3))).unwrap();
    let l = unit_kernel(TopKPool::<f64>::new(1, 0.5, 0).unwrap(), "kernel")
        .with_return_selection(true)
        .with_keep(KeepRule::MinScore(0.1))
        .unwrap();
    let p = l.call(&b).unwrap();
    let z: f64 = [0.0f64, 1.0, 3.0].iter().map(|v| v.exp()).sum();
    let s = [1.0f64.exp() / z, 3.0f64.exp() / z];
    assert_eq!(kept(&p), vec![1, 2]);
    common::assert_close(p.batch.x(), &array![[s[0]], [3.0 * s[1]]], 1e-12);
    // a threshold above every score still keeps the best node
    let l = l.with_keep(KeepRule::MinScore(0.99)).unwrap();
    assert_eq!(kept(&l.call(&b).unwrap()), vec![2]);
}

#[test]
fn multiplier_scales_pooled_features() {
    let b = path3();
    let l = TopKPool::<f64>::new(1, 0.5, 3).unwrap();
    let p1 = l.call(&b).unwrap();
    let p2 = l.clone().with_multiplier(2.0).unwrap().call(&b).unwrap();
    common::assert_close(p2.batch.x(), &p1.batch.x().mapv(|v| 2.0 * v), 1e-15);
    assert_eq!(
        SrcPool::pool(&l.with_multiplier(2.0).unwrap(), &b).unwrap(),
        p2
    );
}

#[test]
fn graph_conv_scorer_sums_incoming_neighbours_ignoring_weights() {
    // a directed edge 0 -> 1 of weight 5: node 1 receives x_0, node 0 nothing
    let mut t = TriMat::new((2, 2));
    t.add_triplet(0, 1, 5.0);
    let b = DisjointBatch::single(array![[1.0], [10.0]], t.to_csr()).unwrap();
    let mut l = SAGPool::<f64>::new_with_scorer(1, 1.0, SagScorer::GraphConv, 0).unwrap();
    let one = |v: f64| ArrayD::from_elem(IxDyn(&[1, 1]), v);
    l.set_param("gnn.lin_rel.kernel", one(2.0)).unwrap();
    l.set_param("gnn.lin_root.kernel", one(1.0)).unwrap();
    l.set_param("gnn.lin_rel.bias", ArrayD::from_elem(IxDyn(&[1]), 0.5))
        .unwrap();
    let p = l.call(&b).unwrap();
    assert_eq!(p.score.unwrap(), array![1.5, 10.0 + 2.0 + 0.5]);
}

#[test]
fn gcn_scorer_uses_the_normalised_filter() {
    let b = path3();
    let l = unit_kernel(SAGPool::<f64>::new(1, 1.0, 0).unwrap(), "kernel");
    // degrees of A + I: 2, 3, 2
    let (d0, d1, d2) = (2.0f64, 3.0f64, 2.0f64);
    let y0 = 1.0 / d0 + 3.0 / (d0 * d1).sqrt();
    let y1 = 1.0 / (d1 * d0).sqrt() + 3.0 / d1 + 2.0 / (d1 * d2).sqrt();
    let y2 = 3.0 / (d2 * d1).sqrt() + 2.0 / d2;
    let p = l.call(&b).unwrap();
    common::assert_close(&p.score.unwrap(), &array![y0, y1, y2], 1e-14);
}

#[test]
fn src_select_matches_the_layer() {
    let b = path3();
    let l = SAGPool::<f64>::new(1, 0.5, 9).unwrap();
    let (sel, score) = l.select(&b).unwrap();
    let p = l.clone().with_return_selection(true).call(&b).unwrap();
    assert_eq!(Some(sel), p.selection);
    assert_eq!(score, p.score);
    // by default, as Spektral, the selection is not returned
    assert_eq!(l.call(&b).unwrap().selection, None);
}

// ---------------------------------------------------------------- LaPool

use graphpool::kernels::sparse::laplacian_spmm;
use graphpool::layers::LaPool;

fn lapools() -> Vec<(&'static str, LaPool)> {
    vec![
        ("lapool", LaPool::new(false).with_return_selection(true)),
        ("lapool_spr", LaPool::new(true).with_return_selection(true)),
    ]
}

fn assignment(p: &Pooled<f64>) -> graphpool::framework::SparseAssignment<f64> {
    match p.selection.as_ref().expect("the pools under test return S") {
        Selection::Sparse(s) => s.clone(),
        other => panic!("expected a sparse assignment, got {other:?}"),
    }
}

/// Whether two stored neighbours have Laplacian signals closer than `tol`
/// (relative): a perturbation could then flip the choice of leaders.
fn has_near_leader_tie(b: &DisjointBatch<f64>, tol: f64) -> bool {
    let lx = laplacian_spmm(b.a().view(), b.x().view());
    let v: Vec<f64> = lx.rows().into_iter().map(|r| r.dot(&r).sqrt()).collect();
    b.a().iter().any(|(_, (i, j))| {
        i != j && (v[i] - v[j]).abs() <= tol * (1.0 + v[i].abs().max(v[j].abs()))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Permuting nodes within graphs permutes the leaders the same way and
    /// the pooled graph is the same graph with its nodes relabelled.
    #[test]
    fn lapool_is_equivariant_under_node_permutation_within_graphs(
        (b, perm) in batch_and_permutation(shape()),
    ) {
        prop_assume!(!has_near_leader_tie(&b, 1e-9));
        let p = b.permute_nodes(&perm).unwrap();
        for (name, pool) in lapools() {
            let (y, yp) = (pool.call(&b).unwrap(), pool.call(&p).unwrap());
            let leaders = assignment(&y).leaders;
            let mut mapped: Vec<usize> = assignment(&yp).leaders.iter().map(|&j| perm[j]).collect();
            let pos: std::collections::HashMap<usize, usize> =
                leaders.iter().enumerate().map(|(j, &n)| (n, j)).collect();
            let q: Vec<usize> = mapped.iter().map(|n| pos[n]).collect();
            mapped.sort_unstable();
            prop_assert_eq!(&mapped, &leaders, "{}: leaders differ", name);
            let relabelled = y.batch.permute_nodes(&q).unwrap();
            assert_batches_close(&relabelled, &yp.batch, 1e-10, name);
        }
    }

    #[test]
    fn lapool_batch_pools_exactly_as_its_graphs_alone(b in batches(shape())) {
        for (name, pool) in lapools() {
            let y = pool.call(&b).unwrap();
            for g in 0..b.num_graphs() {
                let (x, a) = b.graph(g);
                let alone = pool.call(&DisjointBatch::single(x, a).unwrap()).unwrap();
                let (xg, ag) = y.batch.graph(g);
                prop_assert_eq!(alone.batch.x(), &xg, "{} graph {}", name, g);
                prop_assert_eq!(dense(alone.batch.a()), dense(&ag), "{} graph {}", name, g);
            }
        }
    }

    #[test]
    fn lapool_results_are_identical_on_one_and_two_threads(b in batches(shape())) {
        for (name, pool) in lapools() {
            let y1 = with_threads(1, || pool.call(&b).unwrap());
            let y2 = with_threads(2, || pool.call(&b).unwrap());
            let y3 = with_threads(3, || pool.call(&b).unwrap());
            prop_assert_eq!(&y1, &y2, "{}", name);
            prop_assert_eq!(&y1, &y3, "{}", name);
        }
    }

    /// Every non-empty graph has a leader; leaders are assigned to
    /// themselves; without the regularisation every row of S sums to 1
/// (with it, S = beta * softmax is not renormalised, as in Spektral).
    #[test]
    fn lapool_assignment_is_row_stochastic_and_leaders_are_their_own_cluster(b in batches(shape())) {
        for (name, pool) in lapools() {
            let y = pool.call(&b).unwrap();
            let s = assignment(&y);
            for (g, n) in y.batch.segments().sizes().into_iter().enumerate() {
                prop_assert_eq!(n == 0, b.segments().size(g) == 0, "{} graph {}", name, g);
            }
            for (j, &l) in s.leaders.iter().enumerate() {
                let row = s.s.outer_view(l).unwrap();
                prop_assert_eq!(row.indices(), &[j][..], "{}", name);
                prop_assert_eq!(row.data(), &[1.0][..], "{}", name);
            }
            for (i, row) in s.s.outer_iterator().enumerate() {
                let sum: f64 = row.data().iter().sum();
                prop_assert!(row.data().iter().all(|v| v.is_finite() && *v >= 0.0));
                // with the regularisation, beta = 1 / dist is not normalised
                if !pool.shortest_path_reg() {
                    prop_assert!((sum - 1.0).abs() < 1e-12, "{}: row {} sums to {}", name, i, sum);
                }
            }
        }
    }

    /// Pooled batches are valid batches and pool again (with any pool).
    #[test]
    fn lapool_pooled_batches_pool_again(b in batches(shape())) {
        for (name, pool) in lapools() {
            let once = pool.call(&b).unwrap();
            let re = DisjointBatch::new(
                once.batch.x().to_owned(), once.batch.a().clone(), once.batch.segments().clone(),
            );
            prop_assert!(re.is_ok(), "{}: pooled batch invalid: {:?}", name, re.err());
            let twice = pool.call(&once.batch).unwrap();
            prop_assert_eq!(twice.batch.num_graphs(), b.num_graphs());
            let topk = TopKPool::<f64>::new(b.num_features(), 0.5, 1).unwrap().call(&once.batch);
            prop_assert!(topk.is_ok());
            let from_topk = pool.call(&topk.unwrap().batch);
            prop_assert!(from_topk.is_ok());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Gradients of LaPool. Its assignment is smooth away from leader ties
    /// and zero feature vectors (the cosine jumps there), which the inputs
    /// avoid. With the shortest-path regularisation on a symmetric graph
    /// the undirected length min(a_uv, a_vu) has a kink at a_uv = a_vu:
    /// one-at-a-time central differences there are off by O(eps) times the
    /// curvature (a CI run once found 1.7e-7 on 2.0e-4 with eps = 1e-7), so
    /// the symmetric case perturbs each mirrored pair together, a smooth
    /// direction, and checks the sum of the pair's gradients (which the
    /// half-half split makes exact); on a graph with a_uv != a_vu the
    /// lengths are smooth and the default one-at-a-time check applies.
    #[test]
    fn lapool_gradients_match_finite_differences(b in batches(grad_shape()), skew in any::<u64>()) {
        prop_assume!(!has_near_leader_tie(&b, 1e-4));
        prop_assume!(b.x().rows().into_iter().all(|r| r.dot(&r).sqrt() > 1e-3));
        assert_gradients(&LaPool::new(false), &b);
        let report = check_layer_gradients(
            &LaPool::new(true), &b, GradCheckOptions { paired_edges: true, ..GradCheckOptions::default() },
        ).unwrap();
        prop_assert!(report.passed(), "symmetric weights: {}", report);
        // a_uv != a_vu: every stored weight scaled by its own factor in [1, 1.1)
        let w: Vec<f64> = b.a().data().iter().enumerate()
            .map(|(e, &w)| w * (1.0 + 0.1 * (((skew.rotate_left(e as u32 * 5) >> 11) as f64) / (1u64 << 53) as f64)))
            .collect();
        let asym = b.with_edge_weights(w).unwrap();
        prop_assume!(!has_near_leader_tie(&asym, 1e-4));
        assert_gradients(&LaPool::new(true), &asym);
    }
}

/// A weighted path 0 -1.0- 1 -2.0- 2 -0.5- 3 with node 3 the only leader.
fn weighted_path() -> DisjointBatch<f64> {
    let mut t = TriMat::new((4, 4));
    for (i, j, w) in [(0, 1, 1.0), (1, 2, 2.0), (2, 3, 0.5)] {
        t.add_triplet(i, j, w);
        t.add_triplet(j, i, w);
    }
    // v = |L x| = 0, 2, 2.5, 4.5: only node 3 is at least all its neighbours
    let x = array![[0.0], [0.0], [1.0], [10.0]];
    DisjointBatch::single(x, t.to_csr()).unwrap()
}

#[test]
fn lapool_beta_is_the_inverse_weighted_path_length() {
    let b = weighted_path();
    let leaders = LaPool::new(true).leaders(&b).unwrap();
    assert_eq!(leaders, vec![3]);
    let s_of = |reg: bool| {
        assignment(
            &LaPool::new(reg)
                .with_return_selection(true)
                .call(&b)
                .unwrap(),
        )
        .s
    };
    let s = s_of(true);
    // one leader: the softmax is 1, so S = beta = 1 / dist(i, 3)
    let want = [1.0 / 3.5, 1.0 / 2.5, 1.0 / 0.5, 1.0];
    for (i, w) in want.iter().enumerate() {
        assert!((s.get(i, 0).copied().unwrap() - w).abs() < 1e-15, "row {i}");
    }
    let s = s_of(false);
    assert!(s.data().iter().all(|&v| v == 1.0));
}

#[test]
fn lapool_unreachable_leaders_get_zero_weight_and_isolated_nodes_lead() {
    // one graph: an edge 0 - 1 and an isolated node 2
    let mut t = TriMat::new((3, 3));
    t.add_triplet(0, 1, 1.0);
    t.add_triplet(1, 0, 1.0);
    let x = array![[1.0, 0.0], [3.0, 1.0], [0.0, 1.0]];
    let b = DisjointBatch::single(x, t.to_csr()).unwrap();
    let p = LaPool::new(true)
        .with_return_selection(true)
        .call(&b)
        .unwrap();
    let s = assignment(&p);
    // 0 and 1 tie (|w (x0 - x1)| both ways): both lead, as does 2
    assert_eq!(s.leaders, vec![0, 1, 2]);
    assert_eq!(dense(&s.s), Array2::eye(3));
    let mut t = TriMat::new((4, 4));
    for (i, j, w) in [(0, 1, 1.0), (1, 2, 1.0)] {
        t.add_triplet(i, j, w);
        t.add_triplet(j, i, w);
    }
    let x = array![[1.0, 0.0], [-3.0, 1.0], [0.0, 1.0], [0.5, 0.5]];
    let b = DisjointBatch::single(x, t.to_csr()).unwrap();
    let s = assignment(
        &LaPool::new(true)
            .with_return_selection(true)
            .call(&b)
            .unwrap(),
    );
    assert_eq!(s.leaders, vec![1, 3]);
    // node 0 reaches leader 1 (dist 1) but not the isolated leader 3
    assert_eq!(s.s.get(0, 1).copied(), Some(0.0));
    assert!(s.s.get(0, 0).copied().unwrap() > 0.0);
}

#[test]
fn lapool_zero_features_give_finite_results() {
    let mut t = TriMat::new((3, 3));
    for (i, j) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
        t.add_triplet(i, j, 1.0);
    }
    let b: DisjointBatch<f64> =
        DisjointBatch::single(array![[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]], t.to_csr()).unwrap();
    for (name, pool) in lapools() {
        let (p, cache) = pool.forward(&b).unwrap();
        assert!(p.batch.x().iter().all(|v| v.is_finite()), "{name}");
        assert!(p.batch.a().data().iter().all(|v| v.is_finite()), "{name}");
        let g = pool.backward(&b, &cache, &PooledGradOnes::of(&p)).unwrap();
        assert!(g.x.iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn lapool_negative_weights_are_rejected_only_as_path_lengths() {
    let mut t = TriMat::new((2, 2));
    t.add_triplet(0, 1, -1.0);
    t.add_triplet(1, 0, -1.0);
    let b = DisjointBatch::single(array![[1.0], [2.0]], t.to_csr()).unwrap();
    assert!(matches!(
        LaPool::new(true).call(&b),
        Err(PoolError::NegativePathLength { .. })
    ));
    assert!(LaPool::new(false).call(&b).is_ok());
}

#[test]
fn lapool_empty_and_single_node_graphs_are_defined() {
    let b = DisjointBatch::from_offsets(
        array![[1.0, 2.0], [0.5, -1.0]],
        CsMat::zero((2, 2)),
        vec![0, 0, 1, 1, 2],
    )
    .unwrap();
    for (name, pool) in lapools() {
        let p = pool.call(&b).unwrap();
        assert_eq!(p.batch.segments().sizes(), vec![0, 1, 0, 1], "{name}");
        assert_eq!(p.batch.x(), b.x(), "{name}");
    }
}

#[test]
fn lapool_src_select_matches_the_layer() {
    let b = weighted_path();
    let l = LaPool::default().with_return_selection(true);
    let (sel, score) = SrcPool::<f64>::select(&l, &b).unwrap();
    let p = l.call(&b).unwrap();
    assert_eq!(Some(sel), p.selection);
    assert_eq!(score, None);
    assert_eq!(SrcPool::<f64>::pool(&l, &b).unwrap(), p);
    // by default, as Spektral, the selection is not returned
    let plain = LaPool::default().call(&b).unwrap();
    assert_eq!(plain.selection, None);
    assert_eq!(SrcPool::<f64>::pool(&LaPool::default(), &b).unwrap(), plain);
}

/// An all-ones output gradient.
struct PooledGradOnes;
impl PooledGradOnes {
    fn of(p: &Pooled<f64>) -> graphpool::framework::PooledGrad<f64> {
        let mut g = graphpool::framework::PooledGrad::zeros(p);
        g.x.fill(1.0);
        g.edge_weights.fill(1.0);
        g
    }
}
