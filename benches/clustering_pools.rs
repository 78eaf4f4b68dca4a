//! MinCut, DiffPool, DMoN, JustBalance, AsymCheegerCut and MemPooling (k = 16) on 10^4 graphs of ~30 nodes and on one graph
//! of 10^5 / 10^6 nodes (average degree 10), F = 64. (Filled in by issue 4.)

#[path = "workloads.rs"]
mod workloads;

use criterion::{criterion_group, criterion_main, Criterion};

fn bench(_c: &mut Criterion) {}

criterion_group!(benches, bench);
criterion_main!(benches);
