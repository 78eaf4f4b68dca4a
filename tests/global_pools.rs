//! Properties of the global pools: permutation invariance, graph-order
//! equivariance, batching consistency, thread-count independence and
//! gradients against finite differences.

mod common;

use common::{assert_close, assert_gradients, with_threads};
use graphpool::framework::Layer;
use graphpool::layers::{
    GlobalAttentionPool, GlobalAttnSumPool, GlobalAvgPool, GlobalMaxPool, GlobalSumPool, SortPool,
};
use graphpool::proptest::{batch_and_permutation, batches, BatchShape};
use graphpool::DisjointBatch;
use ndarray::{Array2, Array3, Axis};
use proptest::prelude::*;

/// A pool as a function of the batch, its output flattened to B x (rest).
type Pool = Box<dyn Fn(&DisjointBatch<f64>) -> Array2<f64> + Send + Sync>;

/// Every global pool, by name.
fn all_pools(f: usize) -> Vec<(&'static str, Pool)> {
    let attn = GlobalAttentionPool::<f64>::new(f, 3, 7).unwrap();
    let attn_sum = GlobalAttnSumPool::<f64>::new(f, 9);
    let sort = SortPool::new(3).unwrap();
    vec![
        (
            "sum",
            Box::new(|b: &DisjointBatch<f64>| GlobalSumPool.call(b).unwrap()),
        ),
        (
            "avg",
            Box::new(|b: &DisjointBatch<f64>| GlobalAvgPool.call(b).unwrap()),
        ),
        (
            "max",
            Box::new(|b: &DisjointBatch<f64>| GlobalMaxPool.call(b).unwrap()),
        ),
        (
            "attention",
            Box::new(move |b: &DisjointBatch<f64>| attn.call(b).unwrap()),
        ),
        (
            "attn_sum",
            Box::new(move |b: &DisjointBatch<f64>| attn_sum.call(b).unwrap()),
        ),
        (
            "sort",
            Box::new(move |b: &DisjointBatch<f64>| {
                let y: Array3<f64> = sort.call(b).unwrap();
                let (bb, k, ff) = y.dim();
                y.into_shape_with_order((bb, k * ff)).unwrap()
            }),
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pooled_output_is_invariant_under_node_permutation_within_graphs((b, perm) in batch_and_permutation(shape())) {
        let p = b.permute_nodes(&perm).unwrap();
        for (name, pool) in all_pools(b.num_features()) {
            let (y, yp) = (pool(&b), pool(&p));
            prop_assert_eq!(y.shape(), yp.shape(), "{}", name);
            for (u, v) in y.iter().zip(yp.iter()) {
                prop_assert!((u - v).abs() <= 1e-12 * (1.0 + u.abs()), "{name}: {u} vs {v}");
            }
        }
    }

    #[test]
    fn reordering_graphs_reorders_pooled_rows(b in batches(shape()), seed in any::<u64>()) {
        let mut order: Vec<usize> = (0..b.num_graphs()).collect();
        order.sort_by_key(|&g| (seed.rotate_left(g as u32 * 7) ^ g as u64, g));
        let r = b.select_graphs(&order).unwrap();
        for (name, pool) in all_pools(b.num_features()) {
            let y = pool(&b);
            prop_assert_eq!(pool(&r), y.select(Axis(0), &order), "{}", name);
        }
    }

    #[test]
    fn batch_pools_exactly_as_its_graphs_alone(b in batches(shape())) {
        for (name, pool) in all_pools(b.num_features()) {
            let y = pool(&b);
            for g in 0..b.num_graphs() {
                let (x, a) = b.graph(g);
                let alone = pool(&DisjointBatch::single(x, a).unwrap());
                prop_assert_eq!(alone.row(0), y.row(g), "{} graph {}", name, g);
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
    fn gradients_match_finite_differences(b in batches(shape())) {
        let f = b.num_features();
        assert_gradients(&GlobalSumPool, &b);
        assert_gradients(&GlobalAvgPool, &b);
        assert_gradients(&GlobalMaxPool, &b);
        assert_gradients(&GlobalAttentionPool::<f64>::new(f, 3, 1).unwrap(), &b);
        assert_gradients(&GlobalAttnSumPool::<f64>::new(f, 2), &b);
        assert_gradients(&SortPool::new(3).unwrap(), &b);
    }
}

#[test]
fn empty_graphs_pool_to_zero_rows() {
    let x = Array2::from_shape_vec((2, 2), vec![1.0, -2.0, 3.0, -4.0]).unwrap();
    let b = DisjointBatch::from_offsets(x, sprs::CsMat::zero((2, 2)), vec![0, 0, 2, 2]).unwrap();
    for (name, pool) in all_pools(2) {
        let y = pool(&b);
        assert_eq!(y.nrows(), 3, "{name}");
        assert!(
            y.row(0).iter().all(|&v| v == 0.0),
            "{name}: leading empty graph"
        );
        assert!(
            y.row(2).iter().all(|&v| v == 0.0),
            "{name}: trailing empty graph"
        );
        assert!(y.iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn max_gradient_is_split_equally_among_ties() {
    let x = Array2::from_shape_vec((3, 1), vec![2.0, 2.0, 1.0]).unwrap();
    let b = DisjointBatch::single(x, sprs::CsMat::zero((3, 3))).unwrap();
    let (y, cache) = GlobalMaxPool.forward(&b).unwrap();
    let g = GlobalMaxPool
        .backward(&b, &cache, &Array2::ones(y.raw_dim()))
        .unwrap();
    assert_close(
        &g.x,
        &Array2::from_shape_vec((3, 1), vec![0.5, 0.5, 0.0]).unwrap(),
        0.0,
    );
}

/// GlobalSumPool and GlobalAvgPool check their output row by row as it is
/// summed (no scan after it). The error must name the entry a scan of the
/// whole output in order finds first, on one thread and on two, with the
/// overflows in a graph summed in pieces of `kernels::CHUNK` nodes and in
/// a later graph: here graph 2, feature 3 (two nodes of 3e38 in different
/// pieces), before graph 3, feature 0.
#[test]
fn overflowing_sums_name_the_first_non_finite_entry_a_full_scan_finds() {
    use graphpool::kernels::rows::first_non_finite_entry;
    use graphpool::kernels::segment::{segment_mean, segment_sum};
    use graphpool::kernels::CHUNK;
    use graphpool::{batch::Segments, PoolError};

    let seg = Segments::from_sizes(&[3, 0, 2 * CHUNK + 5, 2]);
    let n = seg.num_nodes();
    let f = 5;
    let mut x = Array2::from_shape_fn((n, f), |(i, j)| ((i * 3 + j) % 7) as f32 - 3.0);
    let big = seg.range(2);
    x[[big.start + 1, 3]] = 3.0e38;
    x[[big.start + CHUNK + 7, 3]] = 3.0e38;
    let last = seg.range(3);
    x[[last.start, 0]] = 3.0e38;
    x[[last.start + 1, 0]] = 3.0e38;
    let b = DisjointBatch::new(x.clone(), sprs::CsMat::zero((n, n)), seg.clone()).unwrap();
    type Kernel = fn(ndarray::ArrayView2<f32>, &Segments) -> Array2<f32>;
    let cases: [(&str, Kernel); 2] = [("sum", segment_sum), ("avg", segment_mean)];
    for (name, kernel) in cases {
        // the kernel's output, scanned in order
        let (p, value) = first_non_finite_entry(&kernel(x.view(), &seg)).expect("an overflow");
        assert_eq!((p / f, p % f), (2, 3), "{name}");
        for threads in [1, 2] {
            let got = with_threads(threads, || match name {
                "sum" => GlobalSumPool.call(&b),
                _ => GlobalAvgPool.call(&b),
            });
            match got {
                Err(PoolError::NonFinite {
                    index, value: v, ..
                }) => {
                    assert_eq!(
                        index,
                        format!("({}, {})", p / f, p % f),
                        "{name}, {threads} threads"
                    );
                    assert_eq!(v, value.to_string(), "{name}");
                }
                other => panic!("{name}, {threads} threads: {other:?}"),
            }
        }
    }
}
