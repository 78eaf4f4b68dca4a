//! DiffPool and MemPooling, forward and backward, on arbitrary valid batches
//! and arbitrary configurations: no panic; a configuration the constructors
//! reject is a typed error, and so is an output that overflows.
#![no_main]

use arbitrary::Arbitrary;
use graphpool::framework::{Layer, Pooled, PooledGrad};
use graphpool::layers::{DiffPool, DiffPoolVariant, MemAdjacency, MemPooling};
use graphpool::nn::Activation;
use graphpool_fuzz::ValidBatch;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Config {
    k: u8,
    channels: u8,
    heads: u8,
    tau: f64,
    activation: u8,
    pyg: bool,
    coarsened: bool,
    seed: u64,
    /// Cotangent of every output entry and loss.
    cotangent: f64,
}

fn run<L: Layer<f64, Output = Pooled<f64>>>(l: &L, b: &graphpool::DisjointBatch<f64>, c: f64) {
    if let Ok((y, cache)) = l.forward(b) {
        assert!(y.batch.x().iter().all(|v| v.is_finite()));
        let mut g = PooledGrad::zeros(&y);
        let c = if c.is_finite() { c } else { 1.0 };
        g.x.fill(c);
        g.edge_weights.fill(c);
        for v in g.losses.values_mut() {
            *v = c;
        }
        let _ = l.backward(b, &cache, &g);
    }
}

fuzz_target!(|input: (ValidBatch, Config)| {
    let (ValidBatch(b), c) = input;
    let f = b.num_features();
    let k = c.k as usize % 6;
    let channels = c.channels as usize % 5;
    let activation = [
        Activation::Linear,
        Activation::Relu,
        Activation::Tanh,
        Activation::Softplus,
    ][c.activation as usize % 4];
    let channels_opt = if c.channels % 2 == 0 { None } else { Some(channels) };
    if let Ok(l) = DiffPool::<f64>::new(f, k, channels_opt, activation, c.seed) {
        let variant = if c.pyg {
            DiffPoolVariant::Pyg
        } else {
            DiffPoolVariant::Spektral
        };
        run(&l.with_variant(variant), &b, c.cotangent);
    }
    if let Ok(l) = MemPooling::<f64>::new(f, channels, c.heads as usize % 4, k, c.tau, c.seed) {
        let adjacency = if c.coarsened {
            MemAdjacency::Coarsened
        } else {
            MemAdjacency::Edgeless
        };
        run(&l.with_adjacency(adjacency), &b, c.cotangent);
    }
});
