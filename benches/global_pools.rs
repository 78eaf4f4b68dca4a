//! Global pools on 10^6 nodes x 64 features in graphs of 30 (forward and forward+backward).

#[path = "workloads.rs"]
mod workloads;

use criterion::{criterion_group, criterion_main, Criterion};
use graphpool::framework::Layer;
use graphpool::layers::{
    GlobalAttentionPool, GlobalAttnSumPool, GlobalAvgPool, GlobalMaxPool, GlobalSumPool, SortPool,
};

use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let b = workloads::global_only(1_000_000, 1);
    let mut g = c.benchmark_group("global_1e6_nodes_in_graphs_of_30_64_features");
    g.sample_size(10);
    macro_rules! fwd_bwd {
        ($name:expr, $layer:expr) => {{
            let layer = $layer;
            g.bench_function(concat!($name, "/forward"), |bch| {
                bch.iter(|| black_box(layer.call(&b).unwrap()))
            });
            g.bench_function(concat!($name, "/forward_backward"), |bch| {
                bch.iter(|| {
                    let (y, cache) = layer.forward(&b).unwrap();
                    let ones = y.mapv(|_| 1.0f32);
                    black_box(layer.backward(&b, &cache, &ones).unwrap())
                })
            });
        }};
    }
    fwd_bwd!("GlobalSumPool", GlobalSumPool);
    fwd_bwd!("GlobalAvgPool", GlobalAvgPool);
    fwd_bwd!("GlobalMaxPool", GlobalMaxPool);
    fwd_bwd!(
        "GlobalAttentionPool_c64",
        GlobalAttentionPool::<f32>::new(workloads::F, 64, 0).unwrap()
    );
    fwd_bwd!(
        "GlobalAttnSumPool",
        GlobalAttnSumPool::<f32>::new(workloads::F, 0)
    );
    fwd_bwd!("SortPool_k10", SortPool::new(10).unwrap());

    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
