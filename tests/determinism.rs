//! Determinism for every layer: forward outputs (pooled features, pooled
//! edge weights, segments, selections, scores, losses) and backward
//! gradients (features, edge weights, parameters) are bit-identical on rayon
//! pools of 1, 2, 3 and 8 threads and across repeated runs, on a batch
//! holding one graph larger than `kernels::CHUNK` (and `ROW_BLOCK`) nodes
//! next to many small and empty graphs, in `f32` and `f64`.

mod common;

use common::{all_layers, all_layers_with, with_threads, Out};
use graphpool::framework::{Gradients, Selection};
use graphpool::kernels::{CHUNK, ROW_BLOCK};
use graphpool::nn::rng_from_seed;
use graphpool::{DisjointBatch, Scalar, Segments};
use ndarray::Array2;
use rand::Rng;
use sprs::TriMat;

const F: usize = 4;
const K: usize = 3;

/// One "wheel" graph of `CHUNK + 105` nodes (a hub joined to every node of a
/// ring; one Laplacian leader, so LaPool stays cheap) between 40 small
/// graphs of 0 to 9 nodes with random edges, self loops and zero weights.
fn batch<T: Scalar>() -> DisjointBatch<T> {
    let mut rng = rng_from_seed(2024);
    // more than one reduction chunk, and more than four row blocks
    let big = CHUNK + 105;
    const _: () = assert!(CHUNK + 105 > 4 * ROW_BLOCK);
    let mut sizes: Vec<usize> = (0..40).map(|_| rng.random_range(0..10usize)).collect();
    sizes[0] = 0;
    sizes.insert(17, big);
    sizes.push(0);
    let seg = Segments::from_sizes(&sizes);
    let n = seg.num_nodes();
    let x = Array2::from_shape_fn((n, F), |_| T::c(rng.random_range(-2.0..2.0)));
    let mut t = TriMat::new((n, n));
    for (g, r) in seg.ranges().enumerate() {
        if g == 17 {
            let hub = r.start;
            let m = r.len() - 1;
            for i in 0..m {
                let (u, v) = (r.start + 1 + i, r.start + 1 + (i + 1) % m);
                let wv = T::c(rng.random_range(0.1..2.0));
                t.add_triplet(hub, u, T::c(1.0));
                t.add_triplet(u, hub, T::c(1.0));
                t.add_triplet(u, v, wv);
                t.add_triplet(v, u, wv);
            }
            continue;
        }
        for i in r.clone() {
            for j in i..r.end {
                if rng.random_bool(0.35) {
                    let wv = T::c(*[0.0, 0.5, 1.0, 2.5].get(rng.random_range(0..4)).unwrap());
                    t.add_triplet(i, j, wv);
                    if i != j {
                        t.add_triplet(j, i, wv);
                    }
                }
            }
        }
    }
    DisjointBatch::new(x, t.to_csr(), seg).unwrap()
}

/// Every number of an output and its gradients, as bits (with the pooled
/// structure as integers), in a fixed order.
fn bits<T: Scalar>(out: &Out<T>, g: &Gradients<T>) -> Vec<u64> {
    let f = |v: &T| v.to_f64().unwrap().to_bits();
    let mut b: Vec<u64> = Vec::new();
    match out {
        Out::Rows(y) => b.extend(y.iter().map(f)),
        Out::Sorted(y) => b.extend(y.iter().map(f)),
        Out::Pooled(p) => {
            b.extend(p.batch.x().iter().map(f));
            b.extend(p.batch.a().data().iter().map(f));
            b.extend(p.batch.a().indices().iter().map(|&i| i as u64));
            b.extend(p.batch.segments().offsets().iter().map(|&o| o as u64));
            b.extend(p.losses.values().map(f));
            b.extend(p.score.iter().flatten().map(f));
            match &p.selection {
                None => {}
                Some(Selection::Subset(s)) => {
                    b.extend(s.kept.iter().map(|&k| k as u64));
                    b.extend(s.gate.iter().map(f));
                }
                Some(Selection::Dense(s)) => b.extend(s.s.iter().map(f)),
                Some(Selection::Sparse(s)) => {
                    b.extend(s.leaders.iter().map(|&k| k as u64));
                    b.extend(s.s.data().iter().map(f));
                }
            }
        }
    }
    b.extend(g.x.iter().map(f));
    b.extend(g.edge_weights.iter().flatten().map(f));
    for (_, p) in g.params.iter() {
        b.extend(p.iter().map(f));
    }
    b
}

fn check<T: Scalar>(threads: &[usize]) {
    let b = batch::<T>();
    for (name, run) in all_layers::<T>(F, K) {
        let go = || {
            let (out, g) = run.both(&b).unwrap_or_else(|e| panic!("{name}: {e}"));
            bits(&out, &g)
        };
        let reference = with_threads(1, go);
        assert!(
            reference.len() > b.num_nodes(),
            "{name}: too little compared"
        );
        for &t in threads {
            assert!(
                with_threads(t, go) == reference,
                "{name}: {t} threads differ from 1 thread"
            );
        }
    }
}

#[test]
fn every_layer_is_bit_identical_on_1_2_3_and_8_threads_and_across_runs_in_f64() {
    // 2 twice: a repeated run on the same pool size
    check::<f64>(&[2, 3, 8, 2]);
}

#[test]
fn every_layer_is_bit_identical_on_1_3_and_8_threads_in_f32() {
    check::<f32>(&[3, 8]);
}

/// `Layer::call` (which several layers implement without building the
/// backward cache, or without the per-node intermediates only the backward
/// pass needs) returns exactly what `forward` returns, for every layer, on
/// 1 and 3 threads, in `f64` and `f32`.
#[test]
fn call_returns_exactly_the_forward_output_for_every_layer() {
    fn check_call<T: Scalar>() {
        let b = batch::<T>();
        for (name, run) in all_layers::<T>(F, K) {
            for t in [1, 3] {
                with_threads(t, || run.forward_and_call(&b))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
    check_call::<f64>();
    check_call::<f32>();
}

/// Spektral's `return_selection`: every SRC pool returns its selection
/// exactly when asked for (not by default), and its pooled batch, score,
/// losses and gradients are the same bits either way, on 1 and 3 threads,
/// in `f64` and `f32`.
#[test]
fn returning_the_selection_or_not_changes_no_other_bit_of_any_layer() {
    fn check_flag<T: Scalar>() {
        let b = batch::<T>();
        let asked = all_layers_with::<T>(F, K, true);
        let plain = all_layers_with::<T>(F, K, false);
        for ((name, with), (_, without)) in asked.iter().zip(&plain) {
            for t in [1, 3] {
                let both = |run: &common::Run<T>| {
                    with_threads(t, || run.both(&b)).unwrap_or_else(|e| panic!("{name}: {e}"))
                };
                let (mut out, g) = both(with);
                let (bare, g_bare) = both(without);
                if let (Out::Pooled(p), Out::Pooled(q)) = (&mut out, &bare) {
                    assert!(p.selection.is_some(), "{name}: selection asked for");
                    assert!(q.selection.is_none(), "{name}: selection by default");
                    p.selection = None;
                }
                assert!(
                    bits(&out, &g) == bits(&bare, &g_bare),
                    "{name}: the selection flag changes other outputs ({t} threads)"
                );
            }
        }
    }
    check_flag::<f64>();
    check_flag::<f32>();
}
