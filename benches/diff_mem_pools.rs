//! DiffPool and MemPooling (k = 16; MemPooling with 4 heads, F' = 64) on
//! 10^4 graphs of ~30 nodes (degree 4) and on one graph of 10^5 / 10^6 nodes
//! (average degree 10), F = 64: forward, and forward + backward (unit
//! cotangent on x', a' and every loss).

#[path = "workloads.rs"]
mod workloads;

use criterion::{criterion_group, criterion_main, Criterion};
use graphpool::framework::{Layer, Pooled, PooledGrad};
use graphpool::layers::{DiffPool, MemPooling};
use graphpool::nn::Activation;
use graphpool::DisjointBatch;

use std::hint::black_box;

const K: usize = 16;

fn ones(p: &Pooled<f32>) -> PooledGrad<f32> {
    let mut g = PooledGrad::zeros(p);
    g.x.fill(1.0);
    g.edge_weights.fill(1.0);
    for v in g.losses.values_mut() {
        *v = 1.0;
    }
    g
}

fn run<L>(c: &mut Criterion, group: &str, b: &DisjointBatch<f32>, name: &str, layer: &L)
where
    L: Layer<f32, Output = Pooled<f32>>,
{
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.bench_function(format!("{name}/forward"), |bch| {
        bch.iter(|| black_box(layer.call(b).unwrap()))
    });
    g.bench_function(format!("{name}/forward_backward"), |bch| {
        bch.iter(|| {
            let (y, cache) = layer.forward(b).unwrap();
            black_box(layer.backward(b, &cache, &ones(&y)).unwrap())
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let f = workloads::F;
    let diff = DiffPool::<f32>::new(f, K, None, Activation::Relu, 0).unwrap();
    let mem = MemPooling::<f32>::new(f, f, 4, K, 1.0, 0).unwrap();
    for (group, b) in [
        (
            "diff_mem_1e4_graphs_of_30",
            workloads::disjoint_small(10_000, 4, 1),
        ),
        (
            "diff_mem_1e5_nodes_one_graph",
            workloads::single_graph(100_000, 10, 2),
        ),
        (
            "diff_mem_1e6_nodes_one_graph",
            workloads::single_graph(1_000_000, 10, 3),
        ),
    ] {
        run(c, group, &b, "DiffPool_k16", &diff);
        run(c, group, &b, "MemPooling_k16_h4", &mem);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
