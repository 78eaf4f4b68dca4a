//! `cargo run --release --example pool_bench -- --workload DIR --layer NAME
//!  [--k 16] [--ratio 0.5] [--backward [--edge-grad]] [--repeat 5]`
//!
//! Times one graphpool layer on a workload folder written by
//! `bench/make_workloads.py` (x.npy, indptr.npy, indices.npy, data.npy,
//! batch.npy), the same inputs the peers' timing scripts in `bench/peers/`
//! read, and prints one JSON line with the peers' fields: library, layer,
//! workload, phase, threads, median_s, min_s, runs, peak_rss_bytes (the
//! process's own peak RSS, VmHWM), or `error`.
//!
//! Layers take Spektral's names and the peers' settings: K = 16 clusters,
//! ratio 0.5, MemPooling with 4 heads and F' = F, MLPs without hidden
//! layers. `--backward` times the forward pass plus the backward pass of the
//! sum of every output and auxiliary loss (all-ones output gradients,
//! built between the two passes outside the timed span, as PyTorch's
//! backward of a sum expands a scalar without building them), with
//! respect to `x` and the parameters only, as the peers differentiate (the
//! batch has edge-weight gradients off,
//! `DisjointBatch::with_edge_weight_grad(false)`); `--edge-grad` (with
//! `--backward`) also computes the gradients of the stored edge weights.
//! Untimed warm-up runs precede the timed ones: at least one, and as many
//! as [`WARM_UP`] takes (the peers' scripts do the same). This command is
//! a public
//! contract: its name, arguments and output stay as they are.
//! `bench/compare.py` runs it beside the peers and writes BENCHMARKS.md.

#[path = "pool_bench/common.rs"]
#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

/// How long the untimed warm-up runs last at least (and at least one run).
/// On the 2-core VM the benches run on, a process's first 0.2-0.3 s of
/// passes ran up to 1.5x slower than the later ones (JustBalancePool,
/// `disjoint-small`, forward, 2 threads: 30-41 ms for the first 7 passes
/// after one warm-up run, then 21-26 ms; 21-27 ms from the first after 10),
/// so one warm-up run left a fast layer's median in that phase and a slow
/// peer's not. The same rule in every harness times every library past it.
const WARM_UP: Duration = Duration::from_millis(500);

use common::{BenchOutput, BoxError, WithLayer};
use graphpool::framework::Layer;
use graphpool::DisjointBatch;

/// Times `repeat` runs after one warm-up; returns the run times in seconds.
struct Timer<'a> {
    batch: &'a DisjointBatch<f32>,
    backward: bool,
    repeat: usize,
}

impl WithLayer for Timer<'_> {
    type Out = Vec<f64>;

    fn run<L>(self, layer: &L) -> Result<Vec<f64>, BoxError>
    where
        L: Layer<f32>,
        L::Output: BenchOutput,
    {
        // one run, its timed span in seconds: with --backward, the all-ones
        // output gradient is built between the forward and the backward
        // pass, outside the timed span (PyTorch's backward of a sum does
        // not build it either: it expands a scalar), and dropped after it;
        // it is held, as before, only while the backward pass runs
        let step = || -> graphpool::Result<f64> {
            if self.backward {
                let t = Instant::now();
                let (y, cache) = layer.forward(self.batch)?;
                let forward = t.elapsed();
                let ones = y.ones();
                let t = Instant::now();
                std::hint::black_box(layer.backward(self.batch, &cache, &ones)?);
                drop((y, cache));
                let backward = t.elapsed();
                drop(ones);
                Ok((forward + backward).as_secs_f64())
            } else {
                let t = Instant::now();
                std::hint::black_box(layer.call(self.batch)?);
                Ok(t.elapsed().as_secs_f64())
            }
        };
        let warm = Instant::now();
        step()?;
        while warm.elapsed() < WARM_UP {
            step()?;
        }
        let mut times = Vec::with_capacity(self.repeat);
        for _ in 0..self.repeat {
            times.push(step()?);
        }
        Ok(times)
    }
}

fn run(a: &common::Args, b: &DisjointBatch<f32>) -> Result<Vec<f64>, BoxError> {
    let timer = Timer {
        batch: b,
        backward: a.backward,
        repeat: a.repeat,
    };
    common::dispatch(&a.layer, b.num_features(), a.k, a.ratio, timer)
}

fn main() {
    let a = match common::parse_args("pool_bench") {
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
        ("threads", rayon::current_num_threads().to_string()),
    ];
    match common::load_for(&a).and_then(|b| run(&a, &b)) {
        Ok(mut times) => {
            times.sort_by(f64::total_cmp);
            let median = if times.is_empty() {
                f64::NAN
            } else if times.len() % 2 == 1 {
                times[times.len() / 2]
            } else {
                (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
            };
            fields.push(("median_s", format!("{median}")));
            fields.push((
                "min_s",
                format!("{}", times.first().copied().unwrap_or(f64::NAN)),
            ));
            fields.push(("runs", times.len().to_string()));
        }
        Err(e) => fields.push(("error", common::json_str(&e.to_string()))),
    }
    fields.push(("peak_rss_bytes", common::peak_rss_bytes().to_string()));
    println!("{}", common::json_line(&fields));
}
