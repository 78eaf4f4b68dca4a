//! `cargo run --release --example pool_footprint -- --workload DIR --layer NAME
//!  [--k 16] [--ratio 0.5] [--backward [--edge-grad]] [--repeat 5]`
//!
//! The size of what a layer takes and gives, for the target "peak memory at
//! most 2x the size of the inputs plus the outputs" (`bench/compare.py`
//! divides `pool_bench`'s peak RSS by it). Same arguments and layer table as
//! `pool_bench` (`--repeat` is accepted and ignored): loads the workload
//! folder, runs the layer once (forward; with `--backward` also the backward
//! pass of the all-ones output gradient) and prints one JSON line:
//!
//! - `input_bytes`: the batch as the layer holds it in memory, x (N x F f32),
//!   the CSR adjacency (indptr and indices as usize, data as f32), the
//!   segment offsets, and the layer's parameters;
//! - `output_bytes`: every array of the forward output (pooled x, pooled
//!   CSR adjacency and segments, selection, scores, losses; or the pooled
//!   matrix of a global pool) and, with `--backward`, the gradients
//!   (x, parameters, and with `--edge-grad` the edge weights: as in
//!   `pool_bench`, edge-weight gradients are off by default);
//! - `inputs`, `outputs`: the same, array by array (gradients as `grad_*`);
//! - library, layer, workload, phase as in `pool_bench`, and this process's
//!   peak RSS (`peak_rss_bytes`, one untimed run, for reference), or `error`.

#[path = "pool_bench/common.rs"]
#[allow(dead_code)]
mod common;

use common::{BenchOutput, BoxError, WithLayer};
use graphpool::framework::Layer;
use graphpool::DisjointBatch;

/// Runs the layer once and lists the bytes of inputs and outputs.
struct Footprint<'a> {
    batch: &'a DisjointBatch<f32>,
    backward: bool,
}

type Parts = Vec<(String, u64)>;

impl WithLayer for Footprint<'_> {
    type Out = (Parts, Parts);

    fn run<L>(self, layer: &L) -> Result<(Parts, Parts), BoxError>
    where
        L: Layer<f32>,
        L::Output: BenchOutput,
    {
        let f32_bytes = std::mem::size_of::<f32>() as u64;
        let mut inputs = Vec::new();
        common::batch_footprint("", self.batch, &mut inputs);
        let params: usize = layer.params().iter().map(|(_, p)| p.len()).sum();
        inputs.push(("params".into(), params as u64 * f32_bytes));
        let mut outputs = Vec::new();
        if self.backward {
            let (y, cache) = layer.forward(self.batch)?;
            let g = layer.backward(self.batch, &cache, &y.ones())?;
            y.footprint(&mut outputs);
            drop(cache);
            let grad_params: usize = g.params.iter().map(|(_, p)| p.len()).sum();
            outputs.push(("grad_x".into(), g.x.len() as u64 * f32_bytes));
            let grad_edges = g.edge_weights.as_ref().map_or(0, |e| e.len());
            outputs.push(("grad_edge_weights".into(), grad_edges as u64 * f32_bytes));
            outputs.push(("grad_params".into(), grad_params as u64 * f32_bytes));
        } else {
            layer.call(self.batch)?.footprint(&mut outputs);
        }
        Ok((inputs, outputs))
    }
}

fn parts_json(parts: &Parts) -> String {
    let fields: Vec<(&str, String)> = parts
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_string()))
        .collect();
    common::json_line(&fields)
}

fn main() {
    let a = match common::parse_args("pool_footprint") {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut fields = vec![
        ("library", common::json_str("graphpool")),
        ("layer", common::json_str(&a.layer)),
        (
            "workload",
            common::json_str(&common::workload_name(&a.workload)),
        ),
        ("phase", common::json_str(common::phase(a.backward))),
    ];
    let result = common::load_for(&a).and_then(|b| {
        let fp = Footprint {
            batch: &b,
            backward: a.backward,
        };
        common::dispatch(&a.layer, b.num_features(), a.k, a.ratio, fp)
    });
    match result {
        Ok((inputs, outputs)) => {
            let sum = |p: &Parts| p.iter().map(|(_, v)| v).sum::<u64>();
            fields.push(("input_bytes", sum(&inputs).to_string()));
            fields.push(("output_bytes", sum(&outputs).to_string()));
            fields.push(("inputs", parts_json(&inputs)));
            fields.push(("outputs", parts_json(&outputs)));
        }
        Err(e) => fields.push(("error", common::json_str(&e.to_string()))),
    }
    fields.push(("peak_rss_bytes", common::peak_rss_bytes().to_string()));
    println!("{}", common::json_line(&fields));
}
