//! TopKPool, SAGPool (both scorers) and LaPool, forward and backward, on
//! arbitrary valid batches with arbitrary configurations, invalid ratios,
//! counts, thresholds and multipliers included: never a panic; a rejected
//! configuration or input is a typed error.
#![no_main]

use arbitrary::Arbitrary;
use graphpool::framework::{Layer, Pooled, PooledGrad};
use graphpool::layers::{Gating, KeepRule, LaPool, SAGPool, SagScorer, TopKPool};
use graphpool::DisjointBatch;
use graphpool_fuzz::ValidBatch;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Config {
    ratio: f64,
    count: usize,
    min_score: f64,
    multiplier: f64,
    rule: u8,
    sigmoid: bool,
    graph_conv: bool,
    shortest_path_reg: bool,
    seed: u64,
}

fn run<L: Layer<f64, Output = Pooled<f64>>>(l: &L, b: &DisjointBatch<f64>) {
    if let Ok((y, cache)) = l.forward(b) {
        // the pooled batch is valid and pools again
        let again = DisjointBatch::new(
            y.batch.x().clone(),
            y.batch.a().clone(),
            y.batch.segments().clone(),
        );
        assert!(again.is_ok(), "pooled batch invalid: {again:?}");
        let mut g = PooledGrad::zeros(&y);
        g.x.fill(1.0);
        g.edge_weights.fill(1.0);
        let _ = l.backward(b, &cache, &g);
        let _ = l.forward(&y.batch);
    }
}

fn keep(c: &Config) -> KeepRule {
    match c.rule % 4 {
        0 | 1 => KeepRule::Ratio(c.ratio),
        2 => KeepRule::Count(c.count % 12),
        _ => KeepRule::MinScore(c.min_score),
    }
}

fuzz_target!(|input: (ValidBatch, Config)| {
    let (ValidBatch(b), c) = input;
    let f = b.num_features();
    let gating = Gating::from_sigmoid_gating(c.sigmoid);
    if let Ok(l) = TopKPool::<f64>::new(f, c.ratio, c.seed) {
        let l = l.with_gating(gating);
        run(&l, &b);
        if let Ok(l) = l.with_keep(keep(&c)).and_then(|l| l.with_multiplier(c.multiplier)) {
            run(&l, &b);
        }
    }
    let scorer = if c.graph_conv {
        SagScorer::GraphConv
    } else {
        SagScorer::Gcn
    };
    if let Ok(l) = SAGPool::<f64>::new_with_scorer(f, c.ratio, scorer, c.seed) {
        let l = l.with_gating(gating);
        run(&l, &b);
        if let Ok(l) = l.with_keep(keep(&c)).and_then(|l| l.with_multiplier(c.multiplier)) {
            run(&l, &b);
        }
    }
    run(&LaPool::new(c.shortest_path_reg), &b);
});
