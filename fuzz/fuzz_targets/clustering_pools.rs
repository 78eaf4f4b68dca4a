//! MinCut, DMoN (both variants), JustBalance and AsymCheegerCut pools,
//! forward and backward, on arbitrary valid batches with arbitrary k, MLP
//! widths, activation and loss coefficients: never a panic (bad
//! configurations and overflowing inputs are typed errors).
#![no_main]

use arbitrary::Arbitrary;
use graphpool::framework::{Layer, Pooled, PooledGrad};
use graphpool::layers::{
    AsymCheegerCutPool, DMoNPool, DMoNVariant, JustBalancePool, MinCutPool, MinCutVariant,
};
use graphpool::nn::Activation;
use graphpool_fuzz::ValidBatch;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Config {
    k: u8,
    hidden: Vec<u8>,
    activation: u8,
    coeff_a: f64,
    coeff_b: f64,
    normalized: bool,
    seed: u64,
}

const ACTIVATIONS: [Activation; 10] = [
    Activation::Linear,
    Activation::Relu,
    Activation::Tanh,
    Activation::Sigmoid,
    Activation::Elu,
    Activation::Selu,
    Activation::Softplus,
    Activation::Softsign,
    Activation::Swish,
    Activation::Exponential,
];

fn run<L: Layer<f64, Output = Pooled<f64>>>(l: &L, b: &graphpool::DisjointBatch<f64>) {
    if let Ok((y, cache)) = l.forward(b) {
        let mut g = PooledGrad::zeros(&y);
        g.x.fill(1.0);
        g.edge_weights.fill(-0.5);
        g.losses.values_mut().for_each(|v| *v = 1.0);
        let _ = l.backward(b, &cache, &g);
    }
}

fuzz_target!(|input: (ValidBatch, Config)| {
    let (ValidBatch(b), c) = input;
    let f = b.num_features();
    // k may be 0 (a typed error); widths may be 0 (a typed error)
    let k = c.k as usize % 7;
    let hidden: Vec<usize> = c.hidden.iter().take(2).map(|&h| h as usize % 5).collect();
    let act = ACTIVATIONS[c.activation as usize % ACTIVATIONS.len()];
    if let Ok(l) = MinCutPool::<f64>::new(f, k, &hidden, act, c.seed) {
        run(&l, &b);
        run(&l.with_variant(MinCutVariant::Pyg), &b);
    }
    if let Ok(l) = DMoNPool::<f64>::new(f, k, &hidden, act, c.coeff_a, c.seed) {
        run(&l, &b);
        run(&l.with_variant(DMoNVariant::Pyg), &b);
    }
    if let Ok(l) = JustBalancePool::<f64>::new(f, k, &hidden, act, c.normalized, c.seed) {
        run(&l, &b);
    }
    if let Ok(l) = AsymCheegerCutPool::<f64>::new(f, k, &hidden, act, c.coeff_a, c.coeff_b, c.seed)
    {
        run(&l, &b);
    }
});
