//! Degenerate inputs with defined, finite answers, for every layer, in `f32`
//! and `f64`: empty graphs (leading, middle, trailing), single-node graphs,
//! isolated nodes, graphs smaller than K and than SortPool's k, zero-weight
//! edges, self loops, degrees that cancel to 0, and features of magnitude
//! 1e30. Every layer returns finite outputs, losses and gradients, or (only
//! where the honest answer overflows the float type) a typed `NonFinite`.

mod common;

use common::{all_layers, gradients_finite, Out};
use graphpool::framework::{Layer, Selection};
use graphpool::layers::{GlobalSumPool, LaPool, SAGPool, SortPool, TopKPool};
use graphpool::{DisjointBatch, PoolError, Scalar, Segments};
use ndarray::{s, Array2};
use sprs::TriMat;

const F: usize = 3;
const K: usize = 4;

/// Seven graphs: empty (leading), a single node, four nodes (a self loop, a
/// zero-weight edge, an isolated node), empty (middle), a weighted 6-ring,
/// two nodes, empty (trailing). Sizes 1 and 2 are below K = 4 and below
/// SortPool's k = 5; the ring is above both.
fn degenerate<T: Scalar>(scale: f64) -> DisjointBatch<T> {
    let sizes = [0, 1, 4, 0, 6, 2, 0];
    let seg = Segments::from_sizes(&sizes);
    let n = seg.num_nodes();
    let x = Array2::from_shape_fn((n, F), |(i, j)| {
        T::c(scale * (((i * 7 + j * 3) % 11) as f64 - 5.0) / 4.0)
    });
    let mut t = TriMat::new((n, n));
    let mut und = |i: usize, j: usize, w: f64| {
        t.add_triplet(i, j, T::c(w));
        if i != j {
            t.add_triplet(j, i, T::c(w));
        }
    };
    // graph 2: nodes 1..5
    und(1, 1, 2.0); // self loop
    und(1, 2, 1.0);
    und(2, 3, 0.0); // zero-weight edge
                    // node 4 isolated
                    // graph 4: nodes 5..11, a ring
    for i in 0..6 {
        und(5 + i, 5 + (i + 1) % 6, 0.5 + i as f64 / 4.0);
    }
    // graph 5: nodes 11, 12
    und(11, 12, 1.5);
    DisjointBatch::new(x, t.to_csr(), seg).unwrap()
}

/// Empty graphs of the degenerate batch.
const EMPTY: [usize; 3] = [0, 3, 6];

fn check_all<T: Scalar>(batch: &DisjointBatch<T>) -> usize {
    let mut n = 0;
    for (name, run) in all_layers::<T>(F, K) {
        let (out, grads) = run.both(batch).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(out.all_finite(), "{name}: non-finite output {out:?}");
        assert!(gradients_finite(&grads), "{name}: non-finite gradients");
        assert_eq!(grads.x.dim(), batch.x().dim(), "{name}");
        assert_eq!(
            grads.edge_weights.as_ref().map(|g| g.len()),
            Some(batch.a().nnz()),
            "{name}"
        );
        check_empty_graphs(name, &out);
        n += 1;
    }
    n
}

/// Empty graphs give zero rows (global pools), k zero rows (SortPool), no
/// pooled node (subset and leader pools) or K zero rows and a zero block
/// (dense-assignment pools).
fn check_empty_graphs<T: Scalar>(name: &str, out: &Out<T>) {
    match out {
        Out::Rows(y) => {
            for g in EMPTY {
                assert!(
                    y.row(g).iter().all(|&v| v == T::zero()),
                    "{name}: graph {g}"
                );
            }
        }
        Out::Sorted(y) => {
            for g in EMPTY {
                let block = y.slice(s![g, .., ..]);
                assert!(block.iter().all(|&v| v == T::zero()), "{name}: graph {g}");
            }
        }
        Out::Pooled(p) => {
            let seg = p.batch.segments();
            assert_eq!(seg.num_graphs(), 7, "{name}: one pooled graph per graph");
            match p
                .selection
                .as_ref()
                .expect("all_layers returns the selection")
            {
                Selection::Subset(_) | Selection::Sparse(_) => {
                    for g in EMPTY {
                        assert_eq!(seg.size(g), 0, "{name}: graph {g}");
                    }
                    // every non-empty graph keeps at least one node
                    for g in [1, 2, 4, 5] {
                        assert!(seg.size(g) >= 1, "{name}: graph {g} pooled to nothing");
                    }
                }
                Selection::Dense(_) => {
                    for g in EMPTY {
                        assert_eq!(seg.size(g), K, "{name}: graph {g}");
                        let rows = p.batch.x().slice(s![g * K..(g + 1) * K, ..]);
                        assert!(rows.iter().all(|&v| v == T::zero()), "{name}: graph {g}");
                        let (_, a) = p.batch.graph(g);
                        assert!(
                            a.data().iter().all(|&v| v == T::zero()),
                            "{name}: graph {g}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_layer_is_finite_on_empty_single_node_isolated_small_zero_weight_and_self_loop_graphs() {
    let n64 = check_all(&degenerate::<f64>(1.0));
    let n32 = check_all(&degenerate::<f32>(1.0));
    eprintln!("{n64} layer configurations in f64, {n32} in f32");
    assert_eq!(n64, n32);
}

#[test]
fn every_layer_is_finite_on_a_batch_of_only_empty_graphs_and_on_no_graphs() {
    for seg in [Segments::from_sizes(&[0, 0, 0]), Segments::from_sizes(&[])] {
        let b = DisjointBatch::<f64>::new(
            Array2::zeros((0, F)),
            sprs::CsMat::zero((0, 0)),
            seg.clone(),
        )
        .unwrap();
        for (name, run) in all_layers::<f64>(F, K) {
            let (out, grads) = run.both(&b).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(out.all_finite(), "{name}");
            assert!(gradients_finite(&grads), "{name}");
            if let Out::Pooled(p) = &out {
                assert!(
                    p.losses.values().all(|&v| v == 0.0),
                    "{name}: {:?}",
                    p.losses
                );
            }
        }
    }
}

#[test]
fn single_node_graphs_keep_their_node_and_isolated_nodes_lead_themselves() {
    let b = degenerate::<f64>(1.0);
    // global sum of a single node is that node
    let y = GlobalSumPool.call(&b).unwrap();
    assert_eq!(y.row(1), b.x().row(0));
    // selection pools keep the single node of graph 1 (node 0)
    for p in [
        TopKPool::<f64>::new(F, 0.1, 1)
            .unwrap()
            .with_return_selection(true)
            .call(&b)
            .unwrap(),
        SAGPool::<f64>::new(F, 0.1, 2)
            .unwrap()
            .with_return_selection(true)
            .call(&b)
            .unwrap(),
    ] {
        let Some(Selection::Subset(sub)) = &p.selection else {
            panic!()
        };
        assert!(sub.kept.contains(&0));
    }
    // LaPool: the single node and the isolated node 4 are leaders
    let leaders = LaPool::new(true).leaders(&b).unwrap();
    assert!(leaders.contains(&0) && leaders.contains(&4), "{leaders:?}");
}

#[test]
fn sort_pool_pads_graphs_smaller_than_k_with_zero_rows_after_the_real_nodes() {
    let b = degenerate::<f32>(1.0);
    let k = 5;
    let y = SortPool::new(k).unwrap().call(&b).unwrap();
    for (g, size) in b.segments().sizes().into_iter().enumerate() {
        for j in size.min(k)..k {
            assert!(y.slice(s![g, j, ..]).iter().all(|&v| v == 0.0), "graph {g}");
        }
    }
}

#[test]
fn degrees_that_cancel_to_zero_give_finite_gcn_scores_and_gradients() {
    // weights -1 and a self loop: the GCN degree of A + I is exactly 0 for
    // node 0, and the plain degree of nodes 1 and 2 is 0 (1 - 1)
    let x = ndarray::array![[1.0_f64, 2.0, 0.5], [0.0, 1.0, -1.0], [3.0, 0.0, 1.0]];
    let mut t = TriMat::new((3, 3));
    t.add_triplet(0, 1, -0.5);
    t.add_triplet(0, 2, -0.5);
    t.add_triplet(1, 0, -0.5);
    t.add_triplet(1, 2, 0.5);
    t.add_triplet(2, 0, -0.5);
    t.add_triplet(2, 1, 0.5);
    let b = DisjointBatch::single(x, t.to_csr()).unwrap();
    for (name, run) in all_layers::<f64>(F, 2) {
        match run.both(&b) {
            Ok((out, grads)) => {
                assert!(out.all_finite(), "{name}");
                assert!(gradients_finite(&grads), "{name}");
            }
            // negative weights are no path lengths (LaPool with shortest_path_reg)
            Err(PoolError::NegativePathLength { .. }) if name == "LaPool" => {}
            Err(e) => panic!("{name}: {e}"),
        }
    }
}

/// Runs every layer on the degenerate batch with features of magnitude
/// `scale` and returns the names of the layers that refused with a typed
/// overflow error; every other layer must be finite.
fn huge<T: Scalar>(scale: f64) -> Vec<&'static str> {
    let b = degenerate::<T>(scale);
    let mut refused = Vec::new();
    for (name, run) in all_layers::<T>(F, K) {
        match run.both(&b) {
            Ok((out, grads)) => {
                assert!(out.all_finite(), "{name} at {scale:e}: {out:?}");
                assert!(gradients_finite(&grads), "{name} at {scale:e}");
            }
            Err(PoolError::NonFinite { .. }) | Err(PoolError::NonFiniteScore { .. }) => {
                refused.push(name)
            }
            Err(e) => panic!("{name} at {scale:e}: {e}"),
        }
    }
    refused
}

#[test]
fn features_of_magnitude_1e30_are_finite_in_f64_and_f32() {
    assert_eq!(huge::<f64>(1e30), Vec::<&str>::new());
    assert_eq!(huge::<f32>(1e30), Vec::<&str>::new());
}

#[test]
fn features_near_the_top_of_the_range_overflow_only_into_typed_errors() {
    // f64 1e300 (squares overflow) and f32 1e38 (sums overflow): the honest
    // answers of most layers overflow; they must be typed errors, never NaN
    let r64 = huge::<f64>(1e300);
    let r32 = huge::<f32>(1e38);
    eprintln!("refused at 1e300 (f64): {r64:?}\nrefused at 1e38 (f32): {r32:?}");
}

/// Widths beyond the register kernels of `rows::rows_times` and
/// `rows::outer_sum` (64 columns): features $F = 100$ with $K = 4$, and
/// $K = 70$ clusters with $F = 5$. Every layer's forward and backward pass
/// runs and is finite (a 100-feature clustering pool's backward pass once
/// indexed past a 64-entry buffer).
#[test]
fn every_layer_runs_forward_and_backward_with_more_than_64_features_or_clusters() {
    for (f, k) in [(100, 4), (5, 70)] {
        let seg = Segments::from_sizes(&[3, 0, 80, 1]);
        let n = seg.num_nodes();
        let x = Array2::from_shape_fn((n, f), |(i, j)| (((i * 7 + j * 3) % 11) as f64 - 5.0) / 4.0);
        let mut t = TriMat::new((n, n));
        for (lo, hi) in seg.ranges().map(|r| (r.start, r.end)) {
            for i in lo..hi.saturating_sub(1) {
                t.add_triplet(i, i + 1, 1.0);
                t.add_triplet(i + 1, i, 1.0);
            }
        }
        let b = DisjointBatch::new(x, t.to_csr(), seg).unwrap();
        for (name, run) in all_layers::<f64>(f, k) {
            let (out, grads) = run
                .both(&b)
                .unwrap_or_else(|e| panic!("{name} (F {f}, K {k}): {e}"));
            assert!(out.all_finite(), "{name} (F {f}, K {k})");
            assert!(gradients_finite(&grads), "{name} (F {f}, K {k})");
            assert_eq!(grads.x.dim(), b.x().dim(), "{name}");
        }
    }
}

/// An output gradient so large (`f32::MAX`) that the gradient of $X$
/// overflows. TopKPool and SAGPool check $\bar X$ as their kernel writes it
/// (`scatter_scaled_rows_plus_checked`) rather than in a pass after it; the
/// typed error must still name $X$, which is checked before the parameters
/// (whose gradients overflow too), with the position of its first
/// non-finite entry.
#[test]
fn selection_pools_name_x_when_its_gradient_overflows() {
    let x = ndarray::array![[1.5_f32, -2.0], [2.0, 1.0], [0.5, 3.0], [-1.0, 2.5]];
    let mut t = TriMat::new((4, 4));
    for i in 0..4 {
        t.add_triplet(i, (i + 1) % 4, 1.0_f32);
        t.add_triplet((i + 1) % 4, i, 1.0);
    }
    let b = DisjointBatch::single(x, t.to_csr()).unwrap();
    let check = |name: &str, r: graphpool::Result<graphpool::framework::Gradients<f32>>| {
        match r {
            Err(PoolError::NonFinite { what, index, .. }) => {
                assert!(what.contains("gradient of x"), "{name}: {what}");
                // the first non-finite entry in row-major order
                assert!(index.starts_with('('), "{name}: {index}");
            }
            other => panic!("{name}: expected an overflow of x's gradient, got {other:?}"),
        }
    };
    for seed in 0..4 {
        let topk = TopKPool::<f32>::new(2, 0.5, seed).unwrap();
        let (out, cache) = topk.forward(&b).unwrap();
        let mut g = graphpool::framework::PooledGrad::zeros(&out);
        g.x.fill(f32::MAX);
        check("TopKPool", topk.backward(&b, &cache, &g));
        let sag = SAGPool::<f32>::new(2, 0.5, seed).unwrap();
        let (out, cache) = sag.forward(&b).unwrap();
        let mut g = graphpool::framework::PooledGrad::zeros(&out);
        g.x.fill(f32::MAX);
        check("SAGPool", sag.backward(&b, &cache, &g));
    }
}
