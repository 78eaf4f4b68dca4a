//! MinCut, DiffPool, DMoN, JustBalance, AsymCheegerCut and MemPooling (k = 16) on 10^4 graphs of ~30 nodes and on one graph
//! of 10^5 / 10^6 nodes (average degree 10), F = 64, forward and forward+backward.
//!
//! One function per layer, registered in `criterion_group!` at the end;
//! every workload is generated once, on first use ([`workload`]), and shared.
//! Bench ids: `<layer>/<workload>/forward` and `.../forward_backward`; filter
//! e.g. with `cargo bench --bench clustering_pools -- 'MinCutPool/disjoint'`.

#[path = "workloads.rs"]
mod workloads;

use std::hint::black_box;
use std::sync::OnceLock;

use criterion::{criterion_group, criterion_main, Criterion};
use graphpool::framework::{Layer, Pooled, PooledGrad};
use graphpool::layers::{AsymCheegerCutPool, DMoNPool, JustBalancePool, MinCutPool};
use graphpool::nn::Activation;
use graphpool::DisjointBatch;

/// Clusters per graph.
const K: usize = 16;

/// The workload names, in bench order.
const WORKLOADS: [&str; 3] = [
    "disjoint_1e4_graphs",
    "single_1e5_nodes",
    "single_1e6_nodes",
];

/// Workload `w` of [`WORKLOADS`], generated on first use (so a filtered run
/// never builds the others) and shared by every layer's bench.
fn workload(w: usize) -> &'static DisjointBatch<f32> {
    static W: [OnceLock<DisjointBatch<f32>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    W[w].get_or_init(|| match w {
        0 => workloads::disjoint_small(10_000, 4, 1),
        1 => workloads::single_graph(100_000, 10, 2),
        _ => workloads::single_graph(1_000_000, 10, 3),
    })
}

/// Forward and forward+backward (all-ones output gradient, every loss
/// weighted 1) of `layer` on every workload.
fn bench_pool<L>(c: &mut Criterion, name: &str, layer: &L)
where
    L: Layer<f32, Output = Pooled<f32>>,
{
    for (w, wname) in WORKLOADS.iter().enumerate() {
        let mut g = c.benchmark_group(format!("{name}/{wname}"));
        g.sample_size(10);
        g.bench_function("forward", |bch| {
            let b = workload(w);
            bch.iter(|| black_box(layer.call(b).unwrap()))
        });
        g.bench_function("forward_backward", |bch| {
            let b = workload(w);
            bch.iter(|| {
                let (y, cache) = layer.forward(b).unwrap();
                let mut grad = PooledGrad::zeros(&y);
                grad.x.fill(1.0);
                grad.edge_weights.fill(1.0);
                grad.losses.values_mut().for_each(|v| *v = 1.0);
                black_box(layer.backward(b, &cache, &grad).unwrap())
            })
        });
        g.finish();
    }
}

fn mincut(c: &mut Criterion) {
    let l = MinCutPool::<f32>::new(workloads::F, K, &[], Activation::Relu, 0).unwrap();
    bench_pool(c, "MinCutPool_k16", &l);
}

fn dmon(c: &mut Criterion) {
    let l = DMoNPool::<f32>::new(workloads::F, K, &[], Activation::Relu, 0.1, 0).unwrap();
    bench_pool(c, "DMoNPool_k16", &l);
}

fn just_balance(c: &mut Criterion) {
    let l = JustBalancePool::<f32>::new(workloads::F, K, &[], Activation::Relu, true, 0).unwrap();
    bench_pool(c, "JustBalancePool_k16", &l);
}

fn asym_cheeger(c: &mut Criterion) {
    let l = AsymCheegerCutPool::<f32>::new(workloads::F, K, &[], Activation::Relu, 1.0, 1.0, 0)
        .unwrap();
    bench_pool(c, "AsymCheegerCutPool_k16", &l);
}

criterion_group!(benches, mincut, dmon, just_balance, asym_cheeger);
criterion_main!(benches);
