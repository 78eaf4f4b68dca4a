//! Properties of the dense-assignment pools DiffPool and MemPooling in sparse
//! disjoint mode: permutation invariance / equivariance within graphs,
//! batch = graphs pooled alone, thread-count independence, loss bounds,
//! gradients against finite differences and defined results on degenerate
//! graphs.

mod common;

use common::{assert_gradients, assert_run_by_run, with_threads};
use graphpool::framework::{Layer, Pooled, Selection, SrcPool};
use graphpool::layers::{DiffPool, DiffPoolVariant, MemAdjacency, MemPooling};
use graphpool::nn::Activation;
use graphpool::proptest::{batch_and_permutation, batches, BatchShape};
use graphpool::DisjointBatch;
use ndarray::{s, Array2};
use proptest::prelude::*;

/// A pool under test, as a function of the batch.
type Pool = Box<dyn Fn(&DisjointBatch<f64>) -> Pooled<f64> + Send + Sync>;

const K: usize = 3;

/// Every configuration under test, by name.
fn all_pools(f: usize) -> Vec<(&'static str, Pool)> {
    let diff_relu = DiffPool::<f64>::new(f, K, None, Activation::Relu, 3)
        .unwrap()
        .with_return_selection(true);
    let diff_pyg = DiffPool::<f64>::new(f, K, Some(2), Activation::Tanh, 4)
        .unwrap()
        .with_variant(DiffPoolVariant::Pyg)
        .with_return_selection(true);
    let mem = MemPooling::<f64>::new(f, 2, 2, K, 1.0, 5)
        .unwrap()
        .with_return_selection(true);
    let mem_coarsened = MemPooling::<f64>::new(f, 3, 1, K, 0.5, 6)
        .unwrap()
        .with_adjacency(MemAdjacency::Coarsened)
        .with_return_selection(true);
    vec![
        (
            "mem_pooling",
            Box::new(move |b: &DisjointBatch<f64>| mem.call(b).unwrap()),
        ),
        (
            "mem_pooling_coarsened",
            Box::new(move |b: &DisjointBatch<f64>| mem_coarsened.call(b).unwrap()),
        ),
        (
            "diffpool_spektral",
            Box::new(move |b: &DisjointBatch<f64>| diff_relu.call(b).unwrap()),
        ),
        (
            "diffpool_pyg",
            Box::new(move |b: &DisjointBatch<f64>| diff_pyg.call(b).unwrap()),
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

fn s_of(p: &Pooled<f64>) -> &Array2<f64> {
    match p.selection.as_ref().expect("the pools under test return S") {
        Selection::Dense(d) => &d.s,
        other => panic!("expected a dense assignment, got {other:?}"),
    }
}

fn dense(a: &sprs::CsMat<f64>) -> Array2<f64> {
    let mut d = Array2::zeros((a.rows(), a.cols()));
    for (&v, (r, c)) in a.iter() {
        d[[r, c]] += v;
    }
    d
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

fn all_close(a: &ndarray::ArrayRef2<f64>, b: &ndarray::ArrayRef2<f64>, tol: f64) -> bool {
    a.shape() == b.shape() && a.iter().zip(b.iter()).all(|(&u, &v)| close(u, v, tol))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn pooled_graph_and_losses_are_invariant_and_assignment_equivariant_under_node_permutation((b, perm) in batch_and_permutation(shape())) {
        let p = b.permute_nodes(&perm).unwrap();
        for (name, pool) in all_pools(b.num_features()) {
            let (y, yp) = (pool(&b), pool(&p));
            prop_assert!(all_close(y.batch.x(), yp.batch.x(), 1e-10), "{name}: x'");
            prop_assert!(all_close(&dense(y.batch.a()), &dense(yp.batch.a()), 1e-10), "{name}: a'");
            prop_assert_eq!(y.batch.segments(), yp.batch.segments());
            for (l, v) in &y.losses {
                prop_assert!(close(*v, yp.losses[l], 1e-10), "{name}: loss {l} {v} vs {}", yp.losses[l]);
            }
            let s = s_of(&y).select(ndarray::Axis(0), &perm);
            prop_assert!(all_close(&s, s_of(&yp), 1e-12), "{name}: S not equivariant");
        }
    }

    #[test]
    fn batch_pools_as_its_graphs_alone_with_losses_averaged(b in batches(shape())) {
        for (name, pool) in all_pools(b.num_features()) {
            let y = pool(&b);
            let ad = dense(y.batch.a());
            let mut sums = std::collections::BTreeMap::<String, f64>::new();
            for g in 0..b.num_graphs() {
                let (x, a) = b.graph(g);
                let alone = pool(&DisjointBatch::single(x, a).unwrap());
                let r = g * K..(g + 1) * K;
                prop_assert_eq!(alone.batch.x(), &y.batch.x().slice(s![r.clone(), ..]).to_owned(), "{} graph {}", name, g);
                prop_assert_eq!(dense(alone.batch.a()), ad.slice(s![r.clone(), r.clone()]).to_owned(), "{} graph {}", name, g);
                let nodes = b.segments().range(g);
                prop_assert_eq!(s_of(&alone), &s_of(&y).slice(s![nodes, ..]).to_owned(), "{} graph {}", name, g);
                for (l, v) in &alone.losses {
                    *sums.entry(l.clone()).or_default() += v;
                }
            }
            for (l, v) in &y.losses {
                let want = sums[l] / b.num_graphs() as f64;
                prop_assert!(close(*v, want, 1e-12), "{name}: loss {l}: batch {v}, mean alone {want}");
            }
        }
    }

    #[test]
    fn results_are_identical_on_one_and_two_threads(b in batches(shape())) {
        for (name, pool) in all_pools(b.num_features()) {
            let y1 = with_threads(1, || pool(&b));
            let y2 = with_threads(2, || pool(&b));
            let y3 = with_threads(3, || pool(&b));
            prop_assert_eq!(&y1, &y2, "{}", name);
            prop_assert_eq!(&y1, &y3, "{}", name);
        }
    }

    #[test]
    fn diffpool_run_by_run_gives_the_whole_batch_outputs_and_gradients_on_any_thread_count(
        b in batches(BatchShape { graphs: 1..=8, ..shape() }),
        budget in 7usize..=20,
        edge_grad in any::<bool>(),
    ) {
        let b = b.with_edge_weight_grad(edge_grad);
        let f = b.num_features();
        for (name, l) in [
            ("relu", DiffPool::<f64>::new(f, K, None, Activation::Relu, 3).unwrap()),
            ("pyg_tanh", DiffPool::<f64>::new(f, K, Some(2), Activation::Tanh, 4).unwrap().with_variant(DiffPoolVariant::Pyg)),
            ("softplus", DiffPool::<f64>::new(f, K, Some(3), Activation::Softplus, 5).unwrap()),
        ] {
            // with and without S returned (Spektral's return_selection): the
            // same bits but for S, which is there exactly when asked for
            let mut plain = None;
            for ret in [false, true] {
                let l = l.clone().with_return_selection(ret);
                let by_runs = l.clone().with_run_nodes(budget);
                let whole = l.with_run_nodes(0);
                assert_run_by_run(name, || forward_backward(&by_runs, &b), || forward_backward(&whole, &b));
                let (mut y, g) = forward_backward(&by_runs, &b);
                prop_assert_eq!(y.selection.is_some(), ret, "{}", name);
                y.selection = None;
                match &plain {
                    None => plain = Some((y, g)),
                    Some(p) => prop_assert!(p == &(y, g), "{}: S changes other outputs", name),
                }
            }
        }
    }

    #[test]
    fn losses_stay_within_their_bounds(b in batches(shape())) {
        for (name, pool) in all_pools(b.num_features()) {
            let y = pool(&b);
            // link_pred and entropy are sums of non-negative terms (a norm, a
            // clamped square root); kl is a KL divergence, non-negative in exact
            // arithmetic, computed as PyG does, so it may round to -1e-16 when P = S
            for (l, &v) in &y.losses {
                let floor = if l == "kl" { -1e-12 } else { 0.0 };
                prop_assert!(v.is_finite() && v >= floor, "{name}: {l} = {v}");
            }
            if let Some(&e) = y.losses.get("entropy") {
                prop_assert!(e <= (K as f64).ln() + 1e-9, "{name}: entropy {e} above ln K");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences(b in batches(BatchShape { nodes: 0..=5, directed: 0.5, ..shape() })) {
        let f = b.num_features();
        assert_gradients(&DiffPool::<f64>::new(f, K, Some(2), Activation::Tanh, 1).unwrap(), &b);
        assert_gradients(
            &DiffPool::<f64>::new(f, 2, None, Activation::Linear, 2).unwrap().with_variant(DiffPoolVariant::Pyg),
            &b,
        );
        // activations whose derivative needs their input (Z is not
        // overwritten by its gradient), with C = F and C != F
        assert_gradients(&DiffPool::<f64>::new(f, K, None, Activation::Softplus, 5).unwrap(), &b);
        assert_gradients(&DiffPool::<f64>::new(f, K, Some(3), Activation::Swish, 6).unwrap(), &b);
        assert_gradients(&MemPooling::<f64>::new(f, 2, 2, K, 1.0, 3).unwrap(), &b);
        assert_gradients(
            &MemPooling::<f64>::new(f, 3, 3, 2, 0.7, 4).unwrap().with_adjacency(MemAdjacency::Coarsened),
            &b,
        );
    }
}

/// Select, reduce, connect, reduce_index and losses of the SRC interface, run
/// one by one, against the layer's forward pass.
fn src_agrees_with_forward<L>(l: &L, b: &DisjointBatch<f64>) -> Result<(), TestCaseError>
where
    L: Layer<f64, Output = Pooled<f64>> + SrcPool<f64>,
{
    let y = l.call(b).unwrap();
    let (sel, score) = l.select(b).unwrap();
    prop_assert!(score.is_none());
    // the selection is returned exactly when the layer says so
    prop_assert_eq!(
        y.selection.as_ref(),
        SrcPool::return_selection(l).then_some(&sel)
    );
    prop_assert_eq!(&l.reduce(b, &sel), y.batch.x());
    prop_assert_eq!(&l.connect(b, &sel), y.batch.a());
    prop_assert_eq!(&l.reduce_index(b, &sel), y.batch.segments());
    prop_assert_eq!(&l.losses(b, &sel).unwrap(), &y.losses);
    prop_assert_eq!(&l.pool(b).unwrap(), &y);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn src_steps_compose_to_the_forward_pass(b in batches(shape())) {
        let f = b.num_features();
        // each with and without its selection returned
        for ret in [false, true] {
            let diff = DiffPool::<f64>::new(f, K, Some(2), Activation::Relu, 1).unwrap();
            src_agrees_with_forward(&diff.with_return_selection(ret), &b)?;
            let mem = MemPooling::<f64>::new(f, 2, 2, K, 1.0, 2).unwrap();
            src_agrees_with_forward(&mem.with_return_selection(ret), &b)?;
        }
        src_agrees_with_forward(
            &MemPooling::<f64>::new(f, 2, 2, K, 0.5, 3).unwrap().with_adjacency(MemAdjacency::Coarsened),
            &b,
        )?;
    }
}

/// Graphs smaller than K, a single node, isolated nodes and an empty graph.
fn degenerate_batch() -> DisjointBatch<f64> {
    // graph 0: 2 nodes joined; graph 1: 1 node; graph 2: empty; graph 3: 3 isolated nodes
    let mut t = sprs::TriMat::new((6, 6));
    t.add_triplet(0, 1, 1.5);
    t.add_triplet(1, 0, 1.5);
    let x = Array2::from_shape_fn((6, 2), |(i, j)| (i as f64 - 2.5) * 0.4 + j as f64 * 0.3);
    DisjointBatch::from_offsets(x, t.to_csr(), vec![0, 2, 3, 3, 6]).unwrap()
}

#[test]
fn graphs_smaller_than_k_single_nodes_isolated_nodes_and_empty_graphs_give_finite_results() {
    let b = degenerate_batch();
    for (name, pool) in all_pools(2) {
        let y = pool(&b);
        assert_eq!(y.batch.num_graphs(), 4, "{name}");
        assert_eq!(y.batch.num_nodes(), 4 * K, "{name}");
        assert!(y.batch.x().iter().all(|v| v.is_finite()), "{name}: x'");
        assert!(
            y.batch.a().data().iter().all(|v| v.is_finite()),
            "{name}: a'"
        );
        assert!(s_of(&y).iter().all(|v| v.is_finite()), "{name}: S");
        for (l, v) in &y.losses {
            assert!(v.is_finite() && *v >= 0.0, "{name}: {l} = {v}");
        }
        // the empty graph pools to zero rows
        assert!(
            y.batch
                .x()
                .slice(s![2 * K..3 * K, ..])
                .iter()
                .all(|&v| v == 0.0),
            "{name}"
        );
    }
}

#[test]
fn a_batch_without_graphs_pools_to_nothing_with_zero_losses() {
    let b = DisjointBatch::from_offsets(Array2::zeros((0, 2)), sprs::CsMat::zero((0, 0)), vec![0])
        .unwrap();
    for (name, pool) in all_pools(2) {
        let y = pool(&b);
        assert_eq!(y.batch.num_nodes(), 0, "{name}");
        assert!(y.losses.values().all(|&v| v == 0.0), "{name}");
    }
}

#[test]
fn nodes_far_from_every_key_and_small_temperatures_give_finite_assignments() {
    // PyG's (1 + d / tau)^(-(1 + tau) / 2) underflows to 0/0 here
    let x = Array2::from_shape_fn((4, 2), |(i, j)| {
        50.0 * (i as f64 + 1.0) * if j == 0 { 1.0 } else { -1.0 }
    });
    let b = DisjointBatch::single(x, sprs::CsMat::zero((4, 4))).unwrap();
    for tau in [0.01, 1.0, 100.0] {
        let pool = MemPooling::<f64>::new(2, 2, 2, K, tau, 1)
            .unwrap()
            .with_return_selection(true);
        let (y, cache) = pool.forward(&b).unwrap();
        assert!(
            s_of(&y).iter().all(|v| v.is_finite() && *v >= 0.0),
            "tau {tau}"
        );
        assert!(y.losses["kl"].is_finite(), "tau {tau}");
        let mut g = graphpool::framework::PooledGrad::zeros(&y);
        g.x.fill(1.0);
        g.losses.insert("kl".into(), 1.0);
        let grads = pool.backward(&b, &cache, &g).unwrap();
        assert!(grads.x.iter().all(|v| v.is_finite()), "tau {tau}");
        assert!(
            grads
                .params
                .iter()
                .all(|(_, p)| p.iter().all(|v| v.is_finite())),
            "tau {tau}"
        );
    }
}

#[test]
fn overflowing_outputs_are_typed_errors() {
    use graphpool::PoolError;
    let x = Array2::from_elem((2, 1), 1e300);
    let b = DisjointBatch::single(x, sprs::CsMat::zero((2, 2))).unwrap();
    let mut pool = MemPooling::<f64>::new(1, 1, 1, 2, 1.0, 0).unwrap();
    pool.set_param(
        "lin.kernel",
        ndarray::ArrayD::from_elem(ndarray::IxDyn(&[1, 1]), 1e300),
    )
    .unwrap();
    assert!(matches!(pool.call(&b), Err(PoolError::NonFinite { .. })));
    let mut diff = DiffPool::<f64>::new(1, 2, None, Activation::Linear, 0).unwrap();
    diff.set_param(
        "kernel_emb",
        ndarray::ArrayD::from_elem(ndarray::IxDyn(&[1, 1]), 1e300),
    )
    .unwrap();
    assert!(matches!(diff.call(&b), Err(PoolError::NonFinite { .. })));
}

#[test]
fn degenerate_graphs_have_correct_gradients() {
    let b = degenerate_batch();
    assert_gradients(
        &DiffPool::<f64>::new(2, K, Some(2), Activation::Tanh, 5).unwrap(),
        &b,
    );
    assert_gradients(
        &DiffPool::<f64>::new(2, K, None, Activation::Linear, 6)
            .unwrap()
            .with_variant(DiffPoolVariant::Pyg),
        &b,
    );
    assert_gradients(&MemPooling::<f64>::new(2, 2, 2, K, 1.0, 7).unwrap(), &b);
    assert_gradients(
        &MemPooling::<f64>::new(2, 2, 3, K, 2.0, 8)
            .unwrap()
            .with_adjacency(MemAdjacency::Coarsened),
        &b,
    );
}

#[test]
fn invalid_configurations_are_typed_errors() {
    use graphpool::PoolError;
    assert!(matches!(
        DiffPool::<f64>::new(3, 0, None, Activation::Linear, 0),
        Err(PoolError::InvalidConfig { .. })
    ));
    assert!(matches!(
        DiffPool::<f64>::new(3, 2, Some(0), Activation::Linear, 0),
        Err(PoolError::InvalidConfig { .. })
    ));
    let pool = DiffPool::<f64>::new(3, 2, None, Activation::Linear, 0).unwrap();
    assert!(matches!(
        pool.call(&degenerate_batch()),
        Err(PoolError::ShapeMismatch { .. })
    ));
}

/// One graph of 5,000 nodes (more than one CHUNK of 4,096) and 100 of 6,
/// undirected, non-integer weights and features.
fn batch_beyond_one_chunk() -> DisjointBatch<f64> {
    let mut sizes = vec![5_000usize];
    sizes.extend(std::iter::repeat_n(6, 100));
    let seg = graphpool::Segments::from_sizes(&sizes);
    let n = seg.num_nodes();
    let x = Array2::from_shape_fn((n, 3), |(i, j)| {
        ((i * 31 + j * 17) % 101) as f64 / 25.0 - 2.0
    });
    let mut t = sprs::TriMat::new((n, n));
    for r in seg.ranges() {
        for i in r.clone() {
            for step in [1, 7] {
                let j = i + step;
                if j < r.end {
                    let w = 0.5 + ((i * 13) % 7) as f64 / 7.0;
                    t.add_triplet(i, j, w);
                    t.add_triplet(j, i, w);
                }
            }
        }
    }
    DisjointBatch::new(x, t.to_csr(), seg).unwrap()
}

/// DiffPool's forward pass forms S and X' piece by piece without holding Z;
/// the SRC steps (S, then Z whole, then S_g^T Z_g) give the same bits, also
/// on a graph cut into several pieces, on any thread count.
#[test]
fn src_steps_compose_to_the_forward_pass_beyond_one_chunk() {
    let b = batch_beyond_one_chunk();
    for act in [Activation::Relu, Activation::Tanh, Activation::Linear] {
        let diff = DiffPool::<f64>::new(3, K, Some(4), act, 6).unwrap();
        for threads in [1, 2, 3] {
            with_threads(threads, || src_agrees_with_forward(&diff, &b)).unwrap();
        }
    }
}

/// A graph larger than a reduction chunk next to many small graphs: forward
/// and backward give the same bits on 1, 2 and 3 threads.
#[test]
fn forward_and_backward_are_identical_on_any_thread_count_beyond_one_chunk() {
    let b = batch_beyond_one_chunk();
    let diff = DiffPool::<f64>::new(3, K, None, Activation::Tanh, 1).unwrap();
    let mem = MemPooling::<f64>::new(3, 2, 2, K, 0.5, 2)
        .unwrap()
        .with_adjacency(MemAdjacency::Coarsened);
    let base = with_threads(1, || {
        (forward_backward(&diff, &b), forward_backward(&mem, &b))
    });
    for threads in [2, 3] {
        assert_eq!(
            with_threads(threads, || (
                forward_backward(&diff, &b),
                forward_backward(&mem, &b)
            )),
            base,
            "{threads} threads"
        );
    }
}

/// DiffPool's cache hands the forward pass's S, Z pre-activation and A S to
/// the first backward pass (which overwrites the first two); a second
/// backward pass with the same cache, or with a clone of it, forms them
/// again: all give the same bits, on a graph cut into several pieces and
/// with every activation kind (derivative from the output, over Z in place,
/// or from its input).
#[test]
fn backward_passes_with_one_cache_are_identical_whether_they_take_or_form_s_z_and_a_s() {
    let b = batch_beyond_one_chunk();
    for (act, c) in [
        (Activation::Tanh, None),
        (Activation::Relu, Some(4)),
        (Activation::Softplus, None),
        (Activation::Linear, Some(2)),
    ] {
        let diff = DiffPool::<f64>::new(3, K, c, act, 7).unwrap();
        let (y, cache) = diff.forward(&b).unwrap();
        let mut g = graphpool::framework::PooledGrad::zeros(&y);
        g.x.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = ((i % 7) as f64 - 3.0) / 5.0);
        g.edge_weights.fill(-0.5);
        g.losses.values_mut().for_each(|v| *v = 0.75);
        let unused_clone = cache.clone();
        let first = diff.backward(&b, &cache, &g).unwrap();
        let second = diff.backward(&b, &cache, &g).unwrap();
        let after = cache.clone();
        assert_eq!(first, second, "{act:?}: second pass");
        assert_eq!(
            diff.backward(&b, &after, &g).unwrap(),
            first,
            "{act:?}: clone after"
        );
        assert_eq!(
            diff.backward(&b, &unused_clone, &g).unwrap(),
            first,
            "{act:?}: clone before"
        );
    }
}

/// A forward pass and the backward pass of a fixed output gradient.
fn forward_backward<L: Layer<f64, Output = Pooled<f64>>>(
    l: &L,
    b: &DisjointBatch<f64>,
) -> (Pooled<f64>, graphpool::framework::Gradients<f64>) {
    let (y, cache) = l.forward(b).unwrap();
    let mut g = graphpool::framework::PooledGrad::zeros(&y);
    g.x.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = ((i % 5) as f64 - 2.0) / 3.0);
    g.edge_weights.fill(0.25);
    g.losses.values_mut().for_each(|v| *v = 1.0);
    let grads = l.backward(b, &cache, &g).unwrap();
    (y, grads)
}

/// Many small graphs, more than twice [`graphpool::layers::RUN_NODES`]
/// nodes together, pooled run by run at the default budget: the whole
/// batch's outputs and gradients of X and of the edge weights bit for bit,
/// its parameter gradients to rounding, the same bits on any number of
/// threads, and a second backward pass with the same cache (which forms
/// each run's S and Z again) gives the first one's bits.
#[test]
fn diffpool_pools_many_small_graphs_run_by_run_as_the_whole_batch() {
    let sizes: Vec<usize> = (0..300).map(|g| [0, 1, 9, 30, 41, 17][g % 6]).collect();
    let seg = graphpool::Segments::from_sizes(&sizes);
    let n = seg.num_nodes();
    assert!(n > 2 * graphpool::layers::RUN_NODES);
    let x = Array2::from_shape_fn((n, 3), |(i, j)| {
        ((i * 31 + j * 17) % 101) as f64 / 25.0 - 2.0
    });
    let mut t = sprs::TriMat::new((n, n));
    for r in seg.ranges() {
        for i in r.clone() {
            let j = i + 1 + i % 3;
            if j < r.end {
                let w = 0.5 + ((i * 13) % 7) as f64 / 7.0;
                t.add_triplet(i, j, w);
                t.add_triplet(j, i, w);
            }
        }
    }
    let b = DisjointBatch::new(x, t.to_csr(), seg)
        .unwrap()
        .with_edge_weight_grad(true);
    let l = DiffPool::<f64>::new(3, K, Some(4), Activation::Tanh, 8).unwrap();
    assert_eq!(l.run_nodes(), graphpool::layers::RUN_NODES);
    let whole = l.clone().with_run_nodes(0);
    assert_run_by_run(
        "DiffPool",
        || forward_backward(&l, &b),
        || forward_backward(&whole, &b),
    );
    let (y, cache) = l.forward(&b).unwrap();
    let g = graphpool::framework::PooledGrad::zeros(&y);
    let mut g = g;
    g.x.fill(0.5);
    g.losses.values_mut().for_each(|v| *v = 1.0);
    let first = l.backward(&b, &cache, &g).unwrap();
    assert_eq!(l.backward(&b, &cache, &g).unwrap(), first, "second pass");
}
