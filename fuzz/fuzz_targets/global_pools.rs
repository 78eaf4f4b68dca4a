//! Every global pool, forward and backward, on arbitrary valid batches:
//! no panic, finite outputs for finite inputs of moderate size.
#![no_main]

use graphpool::framework::Layer;
use graphpool::layers::{
    GlobalAttentionPool, GlobalAttnSumPool, GlobalAvgPool, GlobalMaxPool, GlobalSumPool, SortPool,
};
use graphpool_fuzz::ValidBatch;
use libfuzzer_sys::fuzz_target;

fn run<L: Layer<f64>>(l: &L, b: &graphpool::DisjointBatch<f64>)
where
    L::Output: graphpool::framework::Differentiable<f64, Grad = L::Output> + Clone,
{
    if let Ok((y, cache)) = l.forward(b) {
        let _ = l.backward(b, &cache, &y);
    }
}

fuzz_target!(|input: (ValidBatch, u8)| {
    let (ValidBatch(b), k) = input;
    let f = b.num_features();
    run(&GlobalSumPool, &b);
    run(&GlobalAvgPool, &b);
    run(&GlobalMaxPool, &b);
    if let Ok(l) = GlobalAttentionPool::<f64>::new(f, 1 + k as usize % 4, k as u64) {
        run(&l, &b);
    }
    run(&GlobalAttnSumPool::<f64>::new(f, k as u64), &b);
    if let Ok(l) = SortPool::new(k as usize % 12) {
        run(&l, &b);
    }
});
