//! Properties of the MLP-based dense-assignment clustering pools (MinCut,
//! DMoN, JustBalance, AsymCheegerCut, with their reference variants):
//! permutation invariance / equivariance within graphs, batch = graphs
//! pooled alone, thread-count independence, losses within their bounds,
//! finite documented results on degenerate graphs, gradients against
//! finite differences.

mod common;

use common::{assert_gradients, assert_run_by_run, with_threads};
use graphpool::framework::{Differentiable, Gradients, Layer, Pooled, PooledGrad, Selection};
use graphpool::layers::{
    AsymCheegerCutPool, DMoNPool, DMoNVariant, JustBalancePool, MinCutPool, MinCutVariant,
};
use graphpool::nn::{rng_from_seed, Activation};
use graphpool::proptest::{batch_and_permutation, batches, BatchShape};
use graphpool::{DisjointBatch, PoolError};
use ndarray::{s, Array2};
use proptest::prelude::*;
use sprs::{CsMat, TriMat};

const K: usize = 3;

/// A forward + backward run.
type Run = Box<dyn Fn() -> (Pooled<f64>, Gradients<f64>) + Send + Sync>;

/// A pool as a function of the batch.
type Pool = Box<dyn Fn(&DisjointBatch<f64>) -> Pooled<f64> + Send + Sync>;

fn boxed<L: Layer<f64, Output = Pooled<f64>> + Send + Sync + 'static>(l: L) -> Pool {
    Box::new(move |b| l.call(b).expect("the pool runs"))
}

/// Every layer and variant, by name, with K clusters, returning S.
fn all_pools(f: usize) -> Vec<(&'static str, Pool)> {
    let act = Activation::Tanh;
    vec![
        (
            "mincut",
            boxed(
                MinCutPool::new(f, K, &[4], act, 1)
                    .unwrap()
                    .with_return_selection(true),
            ),
        ),
        (
            "mincut_pyg",
            boxed(
                MinCutPool::new(f, K, &[], act, 2)
                    .unwrap()
                    .with_variant(MinCutVariant::Pyg)
                    .with_return_selection(true),
            ),
        ),
        (
            "dmon",
            boxed(
                DMoNPool::new(f, K, &[4], act, 0.3, 3)
                    .unwrap()
                    .with_return_selection(true),
            ),
        ),
        (
            "dmon_pyg",
            boxed(
                DMoNPool::new(f, K, &[4], Activation::Linear, 0.3, 4)
                    .unwrap()
                    .with_variant(DMoNVariant::Pyg)
                    .with_return_selection(true),
            ),
        ),
        (
            "just_balance",
            boxed(
                JustBalancePool::new(f, K, &[4], act, false, 5)
                    .unwrap()
                    .with_return_selection(true),
            ),
        ),
        (
            "just_balance_normalized",
            boxed(
                JustBalancePool::new(f, K, &[], act, true, 6)
                    .unwrap()
                    .with_return_selection(true),
            ),
        ),
        (
            "asym_cheeger",
            boxed(
                AsymCheegerCutPool::new(f, K, &[4], act, 0.7, 1.3, 7)
                    .unwrap()
                    .with_return_selection(true),
            ),
        ),
    ]
}

fn shape() -> BatchShape {
    BatchShape {
        graphs: 1..=4,
        nodes: 0..=7,
        features: 1..=3,
        ..BatchShape::default()
    }
}

fn assignment(p: &Pooled<f64>) -> &Array2<f64> {
    match p.selection.as_ref().expect("the pools under test return S") {
        Selection::Dense(d) => &d.s,
        other => panic!("expected a dense selection, got {other:?}"),
    }
}

fn dense(a: &CsMat<f64>) -> Array2<f64> {
    let mut d = Array2::zeros((a.rows(), a.cols()));
    for (&v, (r, c)) in a.iter() {
        d[[r, c]] += v;
    }
    d
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn pooled_graph_and_losses_are_invariant_and_selection_equivariant_under_node_permutation_within_graphs(
        (b, perm) in batch_and_permutation(shape())
    ) {
        let p = b.permute_nodes(&perm).unwrap();
        for (name, pool) in all_pools(b.num_features()) {
            let (y, yp) = (pool(&b), pool(&p));
            for (u, v) in y.batch.x().iter().zip(yp.batch.x().iter()) {
                prop_assert!(close(*u, *v, 1e-10), "{name} x': {u} vs {v}");
            }
            for (u, v) in dense(y.batch.a()).iter().zip(dense(yp.batch.a()).iter()) {
                prop_assert!(close(*u, *v, 1e-10), "{name} a': {u} vs {v}");
            }
            prop_assert_eq!(y.batch.segments(), yp.batch.segments());
            for (l, v) in &y.losses {
                prop_assert!(close(*v, yp.losses[l], 1e-10), "{name} loss {l}: {v} vs {}", yp.losses[l]);
            }
            let (s, sp) = (assignment(&y), assignment(&yp));
            for (j, &old) in perm.iter().enumerate() {
                for c in 0..K {
                    prop_assert!(close(sp[[j, c]], s[[old, c]], 1e-12), "{name} S row {j}");
                }
            }
        }
    }

    #[test]
    fn batch_pools_as_its_graphs_alone_and_its_losses_are_their_mean(b in batches(shape())) {
        for (name, pool) in all_pools(b.num_features()) {
            let y = pool(&b);
            let a = dense(y.batch.a());
            let s = assignment(&y);
            let mut sums = std::collections::BTreeMap::<String, f64>::new();
            for g in 0..b.num_graphs() {
                let (x, ag) = b.graph(g);
                let alone = pool(&DisjointBatch::single(x, ag).unwrap());
                let r = g * K..(g + 1) * K;
                prop_assert_eq!(alone.batch.x().view(), y.batch.x().slice(s![r.clone(), ..]), "{} x' of graph {}", name, g);
                let a_alone = dense(alone.batch.a());
                prop_assert_eq!(a_alone.view(), a.slice(s![r.clone(), r]), "{} a' of graph {}", name, g);
                prop_assert_eq!(assignment(&alone).view(), s.slice(s![b.segments().range(g), ..]), "{} S of graph {}", name, g);
                for (l, v) in &alone.losses {
                    *sums.entry(l.clone()).or_default() += v;
                }
            }
            for (l, v) in &y.losses {
                let want = sums[l] / b.num_graphs() as f64;
                prop_assert!(close(*v, want, 1e-12), "{name} loss {l}: batch {v}, mean alone {want}");
            }
        }
    }

    #[test]
    fn forward_and_backward_are_identical_on_one_two_and_three_threads(b in batches(shape())) {
        let f = b.num_features();
        fn run<L: Layer<f64, Output = Pooled<f64>> + Sync>(l: &L, b: &DisjointBatch<f64>) -> (Pooled<f64>, Gradients<f64>) {
            let (y, cache) = l.forward(b).unwrap();
            let cot = y.random_cotangent(&mut rng_from_seed(3));
            let g = l.backward(b, &cache, &cot).unwrap();
            (y, g)
        }
        macro_rules! check {
            ($l:expr) => {{
                let l = $l;
                let base = with_threads(1, || run(&l, &b));
                prop_assert_eq!(&with_threads(2, || run(&l, &b)), &base);
                prop_assert_eq!(&with_threads(3, || run(&l, &b)), &base);
            }};
        }
        check!(MinCutPool::<f64>::new(f, K, &[4], Activation::Relu, 1).unwrap());
        check!(DMoNPool::<f64>::new(f, K, &[4], Activation::Linear, 0.2, 1).unwrap().with_variant(DMoNVariant::Pyg));
        check!(JustBalancePool::<f64>::new(f, K, &[4], Activation::Elu, true, 1).unwrap());
        check!(AsymCheegerCutPool::<f64>::new(f, K, &[4], Activation::Tanh, 1.0, 1.0, 1).unwrap());
    }

    #[test]
    fn pooling_run_by_run_gives_the_whole_batch_outputs_and_gradients_on_any_thread_count(
        b in batches(BatchShape { graphs: 1..=8, ..shape() }),
        budget in 7usize..=20,
        edge_grad in any::<bool>(),
    ) {
        let b = b.with_edge_weight_grad(edge_grad);
        let f = b.num_features();

        // with and without S returned (Spektral's return_selection): the
        // same bits but for S, which is there exactly when asked for
        macro_rules! check {
            ($name:literal, $l:expr) => {{
                let mut plain = None;
                for ret in [false, true] {
                    let l = $l.with_return_selection(ret);
                    let by_runs = l.clone().with_run_nodes(budget);
                    let whole = l.with_run_nodes(0);
                    assert_run_by_run($name, || forward_backward(&by_runs, &b), || forward_backward(&whole, &b));
                    let (mut y, g) = forward_backward(&by_runs, &b);
                    prop_assert_eq!(y.selection.is_some(), ret, "{}", $name);
                    y.selection = None;
                    match &plain {
                        None => plain = Some((y, g)),
                        Some(p) => prop_assert!(p == &(y, g), "{}: S changes other outputs", $name),
                    }
                }
            }};
        }
        let act = Activation::Tanh;
        check!("mincut", MinCutPool::<f64>::new(f, K, &[4], act, 1).unwrap());
        check!("mincut_pyg", MinCutPool::<f64>::new(f, K, &[], act, 2).unwrap().with_variant(MinCutVariant::Pyg));
        check!("dmon", DMoNPool::<f64>::new(f, K, &[4], act, 0.3, 3).unwrap());
        check!("dmon_pyg", DMoNPool::<f64>::new(f, K, &[4], Activation::Linear, 0.3, 4).unwrap().with_variant(DMoNVariant::Pyg));
        check!("just_balance", JustBalancePool::<f64>::new(f, K, &[4], act, false, 5).unwrap());
        check!("just_balance_normalized", JustBalancePool::<f64>::new(f, K, &[], act, true, 6).unwrap());
        check!("asym_cheeger", AsymCheegerCutPool::<f64>::new(f, K, &[4], act, 0.7, 1.3, 7).unwrap());
    }

    #[test]
    fn losses_stay_within_their_known_bounds_on_every_graph(b in batches(BatchShape { weighted: false, ..shape() })) {
        let f = b.num_features();
        let k = K as f64;
        let eps = 1e-9;
        for g in 0..b.num_graphs() {
            let (x, ag) = b.graph(g);
            let n = x.nrows() as f64;
            let one = DisjointBatch::single(x, ag).unwrap();
            for (name, pool) in all_pools(f) {
                let l = pool(&one).losses;
                let within = |v: f64, lo: f64, hi: f64| v >= lo - eps && v <= hi + eps;
                for (ln, &v) in &l {
                    prop_assert!(v.is_finite(), "{name} {ln} = {v}");
                }
                match name {
                    "mincut" | "mincut_pyg" => {
                        prop_assert!(within(l["mincut"], -1.0, 0.0), "{name} mincut {}", l["mincut"]);
                        prop_assert!(within(l["ortho"], 0.0, 2f64.sqrt()), "{name} ortho {}", l["ortho"]);
                    }
                    "dmon" => {
                        // Spektral counts both directions of every edge: -1/2 <= loss <= 1/4
                        prop_assert!(within(l["modularity"], -0.5, 0.25), "modularity {}", l["modularity"]);
                        prop_assert!(within(l["collapse"], 0.0, 0.3 * (k.sqrt() - 1.0)), "collapse {}", l["collapse"]);
                    }
                    "dmon_pyg" => {
                        prop_assert!(within(l["spectral"], -(1.0 - 1.0 / k), 1.0), "spectral {}", l["spectral"]);
                        prop_assert!(within(l["ortho"], 0.0, 2f64.sqrt()), "ortho {}", l["ortho"]);
                        prop_assert!(within(l["cluster"], 0.0, k.sqrt() - 1.0), "cluster {}", l["cluster"]);
                    }
                    "just_balance" if n > 0.0 => {
                        prop_assert!(within(l["balance"], -(n * k).sqrt(), -n.sqrt()), "balance {}", l["balance"]);
                    }
                    "just_balance_normalized" if n > 0.0 => {
                        prop_assert!(within(l["balance"], -1.0, -1.0 / k.sqrt()), "balance {}", l["balance"]);
                    }
                    "asym_cheeger" => {
                        // unweighted: ||S_i - S_j||_1 <= 2, so 0 <= tv <= coefficient
                        prop_assert!(within(l["total_variation"], 0.0, 0.7), "tv {}", l["total_variation"]);
                        prop_assert!(within(l["balance"], 0.0, 1.3), "balance {}", l["balance"]);
                    }
                    _ => {
                        // empty graph: every loss is 0
                        for (ln, &v) in &l {
                            prop_assert_eq!(v, 0.0, "{} {} of an empty graph", name, ln);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences(b in batches(BatchShape { graphs: 1..=3, nodes: 0..=5, directed: 0.5, ..shape() })) {
        let f = b.num_features();
        assert_gradients(&MinCutPool::<f64>::new(f, K, &[4], Activation::Tanh, 1).unwrap(), &b);
        assert_gradients(&MinCutPool::<f64>::new(f, 2, &[], Activation::Relu, 2).unwrap().with_variant(MinCutVariant::Pyg), &b);
        assert_gradients(&DMoNPool::<f64>::new(f, K, &[4], Activation::Tanh, 0.3, 1).unwrap(), &b);
        assert_gradients(&DMoNPool::<f64>::new(f, 2, &[3], Activation::Linear, 0.3, 1).unwrap().with_variant(DMoNVariant::Pyg), &b);
        assert_gradients(&JustBalancePool::<f64>::new(f, K, &[4], Activation::Tanh, true, 1).unwrap(), &b);
        assert_gradients(&JustBalancePool::<f64>::new(f, 2, &[], Activation::Softplus, false, 1).unwrap(), &b);
        assert_gradients(&AsymCheegerCutPool::<f64>::new(f, K, &[4], Activation::Tanh, 0.7, 1.3, 1).unwrap(), &b);
        assert_gradients(&AsymCheegerCutPool::<f64>::new(f, 2, &[], Activation::Linear, 1.0, 1.0, 3).unwrap(), &b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The backward pass takes its shortcut for a symmetric adjacency
    /// ([`DisjointBatch::symmetric_graphs`]) graph by graph: in a batch that
    /// mixes directed and undirected graphs, the gradient of `x` from the
    /// pooled outputs is, row for row and bit for bit, each graph's own.
    #[test]
    fn x_gradients_in_a_batch_of_directed_and_undirected_graphs_are_each_graphs_own(
        b in batches(BatchShape { directed: 0.5, ..shape() })
    ) {
        let f = b.num_features();
        fn check<L: Layer<f64, Output = Pooled<f64>>>(name: &str, l: &L, b: &DisjointBatch<f64>) -> Result<(), TestCaseError> {
            let (y, cache) = l.forward(b).unwrap();
            let mut cot = y.random_cotangent(&mut rng_from_seed(11));
            cot.losses.values_mut().for_each(|v| *v = 0.0);
            let g = l.backward(b, &cache, &cot).unwrap();
            for (i, nodes) in b.segments().ranges().enumerate() {
                let (x, a) = b.graph(i);
                let alone = DisjointBatch::single(x, a).unwrap();
                let (ya, ca) = l.forward(&alone).unwrap();
                let mut cot_a = PooledGrad::zeros(&ya);
                cot_a.x.assign(&cot.x.slice(s![i * K..(i + 1) * K, ..]));
                cot_a.edge_weights.assign(&cot.edge_weights.slice(s![i * K * K..(i + 1) * K * K]));
                let ga = l.backward(&alone, &ca, &cot_a).unwrap();
                prop_assert_eq!(ga.x.view(), g.x.slice(s![nodes, ..]), "{} graph {} (symmetric: {})", name, i, alone.symmetric_graphs()[0]);
            }
            Ok(())
        }
        check("mincut", &MinCutPool::<f64>::new(f, K, &[4], Activation::Tanh, 1).unwrap(), &b)?;
        check("dmon", &DMoNPool::<f64>::new(f, K, &[4], Activation::Tanh, 0.3, 1).unwrap(), &b)?;
        check("just_balance", &JustBalancePool::<f64>::new(f, K, &[], Activation::Relu, true, 1).unwrap(), &b)?;
        check("asym_cheeger", &AsymCheegerCutPool::<f64>::new(f, K, &[4], Activation::Tanh, 0.7, 1.3, 1).unwrap(), &b)?;
    }
}

/// A batch of: an empty graph, a single node, an edgeless pair, a triangle
/// smaller than nothing (n = K), a 2-node graph smaller than K = 3 with an
/// isolated node, and a trailing empty graph.
fn degenerate_batch() -> DisjointBatch<f64> {
    let sizes = [0usize, 1, 2, 3, 3, 0];
    let seg = graphpool::Segments::from_sizes(&sizes);
    let n = seg.num_nodes();
    let x = Array2::from_shape_fn((n, 2), |(i, j)| ((i * 7 + j * 3) % 5) as f64 / 2.0 - 1.0);
    let mut t = TriMat::new((n, n));
    // triangle on nodes 3, 4, 5
    for (i, j) in [(3, 4), (4, 5), (3, 5)] {
        t.add_triplet(i, j, 1.0);
        t.add_triplet(j, i, 1.0);
    }
    // one edge 6-7, node 8 isolated
    t.add_triplet(6, 7, 2.0);
    t.add_triplet(7, 6, 2.0);
    DisjointBatch::new(x, t.to_csr(), seg).unwrap()
}

#[test]
fn empty_single_node_edgeless_and_smaller_than_k_graphs_give_finite_documented_results() {
    let b = degenerate_batch();
    for (name, pool) in all_pools(2) {
        let y = pool(&b);
        assert_eq!(y.batch.num_graphs(), 6, "{name}");
        assert_eq!(
            y.batch.num_nodes(),
            6 * K,
            "{name}: K pooled nodes per graph"
        );
        assert!(y.batch.x().iter().all(|v| v.is_finite()), "{name} x'");
        assert!(
            y.batch.a().data().iter().all(|v| v.is_finite()),
            "{name} a'"
        );
        assert!(
            y.losses.values().all(|v| v.is_finite()),
            "{name} {:?}",
            y.losses
        );
        // empty graphs pool to zero rows and zero blocks
        for g in [0, 5] {
            assert!(
                y.batch
                    .x()
                    .slice(s![g * K..(g + 1) * K, ..])
                    .iter()
                    .all(|&v| v == 0.0),
                "{name} empty graph {g}"
            );
        }
        let s = assignment(&y);
        for r in s.rows() {
            assert!(
                (r.sum() - 1.0).abs() < 1e-12,
                "{name}: S rows are distributions"
            );
        }
    }
    // per-graph values of the losses that are 0/0 in the references
    let alone = |g: usize| {
        let (x, a) = b.graph(g);
        DisjointBatch::single(x, a).unwrap()
    };
    for g in [0, 1, 2] {
        // empty, single node and edgeless: no edges
        let one = alone(g);
        let m = MinCutPool::<f64>::new(2, K, &[4], Activation::Relu, 0)
            .unwrap()
            .call(&one)
            .unwrap();
        assert_eq!(m.losses["mincut"], 0.0, "graph {g}");
        let d = DMoNPool::<f64>::new(2, K, &[4], Activation::Relu, 0.1, 0)
            .unwrap()
            .call(&one)
            .unwrap();
        assert_eq!(d.losses["modularity"], 0.0, "graph {g}");
        let c = AsymCheegerCutPool::<f64>::new(2, K, &[4], Activation::Relu, 1.0, 1.0, 0)
            .unwrap()
            .call(&one)
            .unwrap();
        assert_eq!(c.losses["total_variation"], 0.0, "graph {g}");
    }
}

#[test]
fn backward_is_finite_on_empty_single_node_edgeless_and_smaller_than_k_graphs() {
    let b = degenerate_batch();
    fn check<L: Layer<f64, Output = Pooled<f64>>>(name: &str, l: &L, b: &DisjointBatch<f64>) {
        let (y, cache) = l.forward(b).unwrap();
        let cot = y.random_cotangent(&mut rng_from_seed(1));
        let g = l.backward(b, &cache, &cot).unwrap();
        assert!(g.x.iter().all(|v| v.is_finite()), "{name} x");
        assert!(
            g.edge_weights
                .as_ref()
                .unwrap()
                .iter()
                .all(|v| v.is_finite()),
            "{name} edges"
        );
        for (p, v) in g.params.iter() {
            assert!(v.iter().all(|v| v.is_finite()), "{name} {p}");
        }
    }
    check(
        "mincut",
        &MinCutPool::<f64>::new(2, K, &[4], Activation::Relu, 0).unwrap(),
        &b,
    );
    check(
        "dmon",
        &DMoNPool::<f64>::new(2, K, &[4], Activation::Relu, 0.1, 0).unwrap(),
        &b,
    );
    check(
        "dmon_pyg",
        &DMoNPool::<f64>::new(2, K, &[4], Activation::Linear, 0.1, 0)
            .unwrap()
            .with_variant(DMoNVariant::Pyg),
        &b,
    );
    check(
        "just_balance",
        &JustBalancePool::<f64>::new(2, K, &[4], Activation::Relu, true, 0).unwrap(),
        &b,
    );
    check(
        "asym_cheeger",
        &AsymCheegerCutPool::<f64>::new(2, K, &[4], Activation::Relu, 1.0, 1.0, 0).unwrap(),
        &b,
    );
}

#[test]
fn gradients_match_finite_differences_on_degenerate_graphs() {
    let b = degenerate_batch();
    assert_gradients(
        &MinCutPool::<f64>::new(2, K, &[4], Activation::Tanh, 0).unwrap(),
        &b,
    );
    assert_gradients(
        &DMoNPool::<f64>::new(2, K, &[4], Activation::Tanh, 0.1, 0).unwrap(),
        &b,
    );
    assert_gradients(
        &DMoNPool::<f64>::new(2, K, &[4], Activation::Linear, 0.1, 0)
            .unwrap()
            .with_variant(DMoNVariant::Pyg),
        &b,
    );
    assert_gradients(
        &JustBalancePool::<f64>::new(2, K, &[4], Activation::Tanh, true, 0).unwrap(),
        &b,
    );
    assert_gradients(
        &AsymCheegerCutPool::<f64>::new(2, K, &[4], Activation::Tanh, 1.0, 1.0, 0).unwrap(),
        &b,
    );
}

#[test]
fn mincut_pooled_adjacency_has_a_zero_diagonal_and_is_symmetric() {
    let b = degenerate_batch();
    let y = MinCutPool::<f64>::new(2, K, &[4], Activation::Relu, 0)
        .unwrap()
        .call(&b)
        .unwrap();
    let a = dense(y.batch.a());
    for i in 0..a.nrows() {
        assert_eq!(a[[i, i]], 0.0);
        for j in 0..a.ncols() {
            assert!((a[[i, j]] - a[[j, i]]).abs() < 1e-12);
        }
    }
}

#[test]
fn constructors_reject_invalid_configurations_with_typed_errors() {
    let bad = |r: Result<(), PoolError>, what: &str| {
        assert!(
            matches!(r, Err(PoolError::InvalidConfig { .. })),
            "{what}: {r:?}"
        );
    };
    let a = Activation::Relu;
    bad(
        MinCutPool::<f32>::new(3, 0, &[], a, 0).map(|_| ()),
        "mincut k = 0",
    );
    bad(
        MinCutPool::<f32>::new(3, 2, &[4, 0], a, 0).map(|_| ()),
        "mincut hidden 0",
    );
    bad(
        DMoNPool::<f32>::new(3, 0, &[], a, 0.1, 0).map(|_| ()),
        "dmon k = 0",
    );
    bad(
        DMoNPool::<f32>::new(3, 2, &[], a, f64::NAN, 0).map(|_| ()),
        "dmon reg NaN",
    );
    bad(
        JustBalancePool::<f32>::new(3, 0, &[], a, true, 0).map(|_| ()),
        "jb k = 0",
    );
    bad(
        AsymCheegerCutPool::<f32>::new(3, 1, &[], a, 1.0, 1.0, 0).map(|_| ()),
        "acc k = 1",
    );
    bad(
        AsymCheegerCutPool::<f32>::new(3, 2, &[], a, f64::INFINITY, 1.0, 0).map(|_| ()),
        "acc tv inf",
    );
    bad(
        AsymCheegerCutPool::<f32>::new(3, 2, &[], a, 1.0, f64::NAN, 0).map(|_| ()),
        "acc balance NaN",
    );
}

#[test]
fn wrong_feature_width_and_mismatched_gradients_are_typed_errors() {
    let b = degenerate_batch();
    let l = MinCutPool::<f64>::new(3, K, &[4], Activation::Relu, 0).unwrap();
    assert!(matches!(
        l.forward(&b),
        Err(PoolError::ShapeMismatch { .. })
    ));
    let l = MinCutPool::<f64>::new(2, K, &[4], Activation::Relu, 0).unwrap();
    let (y, cache) = l.forward(&b).unwrap();
    let mut g = PooledGrad::zeros(&y);
    g.x = Array2::zeros((1, 1));
    assert!(matches!(
        l.backward(&b, &cache, &g),
        Err(PoolError::GradientShape { .. })
    ));
    let mut g = PooledGrad::zeros(&y);
    g.losses.insert("modularity".into(), 1.0);
    assert!(matches!(
        l.backward(&b, &cache, &g),
        Err(PoolError::GradientShape { .. })
    ));
}

#[test]
fn overflowing_logits_are_a_typed_error_not_nan() {
    let x = Array2::from_elem((2, 1), 1e308);
    let b = DisjointBatch::single(x, CsMat::zero((2, 2))).unwrap();
    let mut l = MinCutPool::<f64>::new(1, 2, &[], Activation::Relu, 0).unwrap();
    l.set_param("mlp.0.kernel", ndarray::arr2(&[[1e10, -1e10]]).into_dyn())
        .unwrap();
    assert!(matches!(l.forward(&b), Err(PoolError::NonFinite { .. })));
}

/// Graphs of the given sizes, `f` features, each node joined to one other
/// node of its graph by an undirected edge of weight 1, 2 or 3.
fn sized_batch(sizes: &[usize], f: usize) -> DisjointBatch<f64> {
    let seg = graphpool::Segments::from_sizes(sizes);
    let n = seg.num_nodes();
    let x = Array2::from_shape_fn((n, f), |(i, j)| {
        ((i * 31 + j * 17) % 101) as f64 / 50.0 - 1.0
    });
    let mut t = TriMat::new((n, n));
    for r in seg.ranges() {
        for i in r.clone() {
            let j = r.start + (i * 7 + 3) % r.len();
            if j != i {
                t.add_triplet(i, j, 1.0 + (i % 3) as f64);
                t.add_triplet(j, i, 1.0 + (i % 3) as f64);
            }
        }
    }
    DisjointBatch::new(x, t.to_csr(), seg).unwrap()
}

/// A forward pass and the backward pass of a random cotangent (seed 3).
fn forward_backward<L: Layer<f64, Output = Pooled<f64>> + Sync>(
    l: &L,
    b: &DisjointBatch<f64>,
) -> (Pooled<f64>, Gradients<f64>) {
    let (y, cache) = l.forward(b).unwrap();
    let cot = y.random_cotangent(&mut rng_from_seed(3));
    let g = l.backward(b, &cache, &cot).unwrap();
    (y, g)
}

/// A run by run batch whose second run overflows reports the whole
/// batch's error: the node is counted in the batch, not in its run.
#[test]
fn overflowing_logits_in_a_later_run_are_the_whole_batch_error() {
    let seg = graphpool::Segments::from_sizes(&[2, 2, 2]);
    let mut x = Array2::from_elem((6, 1), 1.0);
    x[[5, 0]] = 1e308;
    let b = DisjointBatch::new(x, CsMat::zero((6, 6)), seg).unwrap();
    let mut l = MinCutPool::<f64>::new(1, 2, &[], Activation::Relu, 0).unwrap();
    l.set_param("mlp.0.kernel", ndarray::arr2(&[[1e10, -1e10]]).into_dyn())
        .unwrap();
    let whole = l.clone().with_run_nodes(0).forward(&b).unwrap_err();
    let by_runs = l.with_run_nodes(2).forward(&b).unwrap_err();
    assert!(matches!(whole, PoolError::NonFinite { .. }));
    assert_eq!(by_runs.to_string(), whole.to_string());
}

/// Three graphs pooled one run each (budget 3 nodes), with $S$ uniform
/// (a zero MLP kernel) and $A = 0$.
fn three_runs(x: Array2<f64>) -> (DisjointBatch<f64>, MinCutPool<f64>) {
    let seg = graphpool::Segments::from_sizes(&[2, 2, 3]);
    let b = DisjointBatch::new(x, CsMat::zero((7, 7)), seg).unwrap();
    let mut l = MinCutPool::<f64>::new(1, 2, &[], Activation::Relu, 0).unwrap();
    l.set_param("mlp.0.kernel", ndarray::arr2(&[[0.0, 0.0]]).into_dyn())
        .unwrap();
    (b, l.with_run_nodes(3))
}

/// A run whose pooled features overflow (the last graph's three nodes of
/// 1.7e308, averaged with weights 1/2 into each cluster: 2.55e308) while
/// its $S$ is finite: the runs scan what they write, and the error is the
/// whole batch's, naming the row of the batch's $X'$.
#[test]
fn overflowing_pooled_x_in_a_later_run_is_the_whole_batch_error() {
    let mut x = Array2::from_elem((7, 1), 1.0);
    x.slice_mut(ndarray::s![4.., ..]).fill(1.7e308);
    let (b, l) = three_runs(x);
    let whole = l.clone().with_run_nodes(0).forward(&b).unwrap_err();
    let by_runs = l.forward(&b).unwrap_err();
    assert!(matches!(whole, PoolError::NonFinite { .. }));
    assert!(whole.to_string().contains("(4, 0)"), "{whole}");
    assert_eq!(by_runs.to_string(), whole.to_string());
    // the same batch with finite features pools by runs as a whole
    let (b, l) = three_runs(Array2::from_elem((7, 1), 1.0));
    let whole = l.clone().with_run_nodes(0).forward(&b).unwrap().0;
    assert_eq!(l.forward(&b).unwrap().0, whole);
}

/// A run whose gradient of $X$ overflows (the last graph's output
/// gradient at `f64::MAX`, times features of 2, gives an infinite
/// $\bar S$ and a NaN through the softmax VJP): the runs scan the rows of
/// $\bar X$ as they copy them, and the error is the whole batch's, naming
/// the batch's row.
#[test]
fn overflowing_x_gradient_in_a_later_run_is_the_whole_batch_error() {
    let (b, l) = three_runs(Array2::from_elem((7, 1), 2.0));
    let whole = l.clone().with_run_nodes(0);
    let (y, cache) = l.forward(&b).unwrap();
    let (_, whole_cache) = whole.forward(&b).unwrap();
    let mut cot = y.random_cotangent(&mut rng_from_seed(3));
    cot.x.slice_mut(ndarray::s![4.., ..]).fill(f64::MAX);
    let want = whole.backward(&b, &whole_cache, &cot).unwrap_err();
    let got = l.backward(&b, &cache, &cot).unwrap_err();
    assert!(matches!(want, PoolError::NonFinite { .. }));
    assert!(want.to_string().contains("gradient of x"), "{want}");
    assert!(want.to_string().contains("(4, 0)"), "{want}");
    assert_eq!(got.to_string(), want.to_string());
}

/// Many small graphs, more than [`graphpool::layers::RUN_NODES`] nodes
/// together, so that the default budget pools them run by run: the whole
/// batch's outputs and gradients of X and of the edge weights bit for bit,
/// its parameter gradients to rounding, and the same bits on any number of
/// threads.
#[test]
fn many_small_graphs_pool_run_by_run_as_the_whole_batch_on_any_thread_count() {
    let sizes: Vec<usize> = (0..300).map(|g| [0, 1, 9, 30, 41, 17][g % 6]).collect();
    let b = sized_batch(&sizes, 5).with_edge_weight_grad(true);
    assert!(b.num_nodes() > 2 * graphpool::layers::RUN_NODES);

    macro_rules! check {
        ($l:expr) => {{
            let l = $l;
            assert_eq!(l.run_nodes(), graphpool::layers::RUN_NODES);
            let whole = l.clone().with_run_nodes(0);
            assert_run_by_run(
                "run by run",
                || forward_backward(&l, &b),
                || forward_backward(&whole, &b),
            );
        }};
    }
    check!(MinCutPool::<f64>::new(5, 4, &[8], Activation::Relu, 0).unwrap());
    check!(DMoNPool::<f64>::new(5, 4, &[8], Activation::Relu, 0.1, 0).unwrap());
    check!(JustBalancePool::<f64>::new(5, 4, &[], Activation::Relu, true, 0).unwrap());
    check!(AsymCheegerCutPool::<f64>::new(5, 4, &[8], Activation::Relu, 1.0, 1.0, 0).unwrap());
}

/// A graph larger than a kernel chunk (4096 nodes) next to small ones, so
/// that chunked partial sums are combined: the same bits on any number of
/// threads, forward and backward.
#[test]
fn chunked_large_graph_results_are_identical_on_any_thread_count() {
    let mut sizes = vec![5000usize];
    sizes.extend(std::iter::repeat_n(6, 20));
    let b = sized_batch(&sizes, 3);

    let layers: Vec<Run> = vec![
        {
            let l = MinCutPool::<f64>::new(3, 4, &[8], Activation::Relu, 0).unwrap();
            let b = b.clone();
            Box::new(move || forward_backward(&l, &b))
        },
        {
            let l = DMoNPool::<f64>::new(3, 4, &[8], Activation::Relu, 0.1, 0).unwrap();
            let b = b.clone();
            Box::new(move || forward_backward(&l, &b))
        },
        {
            let l =
                AsymCheegerCutPool::<f64>::new(3, 4, &[8], Activation::Relu, 1.0, 1.0, 0).unwrap();
            let b = b.clone();
            Box::new(move || forward_backward(&l, &b))
        },
    ];
    for f in &layers {
        let base = with_threads(1, f);
        for t in [2, 4] {
            assert_eq!(with_threads(t, f), base, "{t} threads");
        }
    }
}

#[test]
fn a_batch_without_graphs_pools_to_an_empty_batch_with_zero_losses() {
    let b =
        DisjointBatch::from_offsets(Array2::zeros((0, 2)), CsMat::zero((0, 0)), vec![0]).unwrap();
    for (name, pool) in all_pools(2) {
        let y = pool(&b);
        assert_eq!(y.batch.num_graphs(), 0, "{name}");
        assert_eq!(y.batch.x().dim(), (0, 2), "{name}");
        assert!(
            y.losses.values().all(|&v| v == 0.0),
            "{name} {:?}",
            y.losses
        );
    }
    let l = AsymCheegerCutPool::<f64>::new(2, K, &[4], Activation::Relu, 1.0, 1.0, 0).unwrap();
    let (y, cache) = l.forward(&b).unwrap();
    let mut g = PooledGrad::zeros(&y);
    g.losses.values_mut().for_each(|v| *v = 1.0);
    let grads = l.backward(&b, &cache, &g).unwrap();
    assert_eq!(grads.x.dim(), (0, 2));
}
