//! TopKPool, SAGPool and LaPool on 10^4 graphs of ~30 nodes and on one graph
//! of 10^5 / 10^6 nodes (average degree 10), F = 64, forward and
//! forward+backward (all-ones output gradient).
//!
//! LaPool's assignment is dense within a graph (every node gets a weight
//! for every leader of its graph, ~n/19 leaders at degree 10), so on one
//! graph of 10^5 nodes with ~5 * 10^3 leaders S alone has ~5 * 10^8
//! entries and S^T A S costs n L^2 ~ 3 * 10^12: by definition it does not
//! fit, in Spektral as here. LaPool is therefore benched on the
//! many-small-graphs workload and on one graph of 2 * 10^3 nodes instead.

#[path = "workloads.rs"]
mod workloads;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use graphpool::framework::{Layer, Pooled, PooledGrad};
use graphpool::layers::{LaPool, SAGPool, TopKPool};
use graphpool::DisjointBatch;

use std::hint::black_box;

fn ones(p: &Pooled<f32>) -> PooledGrad<f32> {
    let mut g = PooledGrad::zeros(p);
    g.x.fill(1.0);
    g.edge_weights.fill(1.0);
    g
}

fn fwd_bwd<L>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, layer: &L, b: &DisjointBatch<f32>)
where
    L: Layer<f32, Output = Pooled<f32>>,
{
    g.bench_function(format!("{name}/forward"), |bch| {
        bch.iter(|| black_box(layer.call(b).unwrap()))
    });
    g.bench_function(format!("{name}/forward_backward"), |bch| {
        bch.iter(|| {
            let (y, cache) = layer.forward(b).unwrap();
            black_box(layer.backward(b, &cache, &ones(&y)).unwrap())
        })
    });
}

fn score_pools(g: &mut BenchmarkGroup<'_, WallTime>, b: &DisjointBatch<f32>) {
    let f = workloads::F;
    fwd_bwd(
        g,
        "TopKPool_r0.5",
        &TopKPool::<f32>::new(f, 0.5, 0).unwrap(),
        b,
    );
    fwd_bwd(
        g,
        "SAGPool_r0.5",
        &SAGPool::<f32>::new(f, 0.5, 0).unwrap(),
        b,
    );
}

fn bench(c: &mut Criterion) {
    {
        let b = workloads::disjoint_small(10_000, 4, 1);
        let mut g = c.benchmark_group("selection_disjoint_small_1e4_graphs_of_30");
        g.sample_size(10);
        score_pools(&mut g, &b);
        fwd_bwd(&mut g, "LaPool_spr", &LaPool::new(true), &b);
        fwd_bwd(&mut g, "LaPool_nospr", &LaPool::new(false), &b);
        g.finish();
    }
    {
        let b = workloads::single_graph(2_000, 10, 2);
        let mut g = c.benchmark_group("selection_single_graph_2e3_nodes");
        g.sample_size(10);
        fwd_bwd(&mut g, "LaPool_spr", &LaPool::new(true), &b);
        fwd_bwd(&mut g, "LaPool_nospr", &LaPool::new(false), &b);
        g.finish();
    }
    {
        let b = workloads::single_graph(100_000, 10, 3);
        let mut g = c.benchmark_group("selection_single_graph_1e5_nodes");
        g.sample_size(10);
        score_pools(&mut g, &b);
        g.finish();
    }
    {
        let b = workloads::single_graph(1_000_000, 10, 4);
        let mut g = c.benchmark_group("selection_single_graph_1e6_nodes");
        g.sample_size(10);
        score_pools(&mut g, &b);
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
