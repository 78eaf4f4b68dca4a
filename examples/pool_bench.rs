//! `cargo run --release --example pool_bench -- --workload DIR --layer NAME
//!  [--k 16] [--ratio 0.5] [--backward] [--repeat 5]`
//!
//! Times one graphpool layer on a workload folder written by
//! `../shared/bench/make_workloads.py` (x.npy, indptr.npy, indices.npy,
//! data.npy, batch.npy), the same inputs the peers' timing scripts read, and
//! prints one JSON line with the peers' fields: library, layer, workload,
//! phase, threads, median_s, min_s, runs, peak_rss_bytes (the process's own
//! peak RSS, VmHWM), or `error`.
//!
//! Layers take Spektral's names and the peers' settings: K = 16 clusters,
//! ratio 0.5, MemPooling with 4 heads and F' = F, MLPs without hidden
//! layers. `--backward` times the forward pass plus the backward pass of the
//! sum of every output and auxiliary loss (all-ones output gradients). One
//! untimed warm-up run precedes the timed ones. This command is a public
//! contract: its name, arguments and output stay as they are.

use std::path::{Path, PathBuf};
use std::time::Instant;

use graphpool::framework::{Differentiable, Layer, Pooled, PooledGrad};
use graphpool::layers::*;
use graphpool::nn::Activation;
use graphpool::{DisjointBatch, Segments};
use ndarray::{Array1, Array2, Array3};
use ndarray_npy::read_npy;

struct Args {
    workload: PathBuf,
    layer: String,
    k: usize,
    ratio: f64,
    backward: bool,
    repeat: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        workload: PathBuf::new(),
        layer: String::new(),
        k: 16,
        ratio: 0.5,
        backward: false,
        repeat: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--workload" => a.workload = PathBuf::from(value()?),
            "--layer" => a.layer = value()?,
            "--k" => a.k = value()?.parse().map_err(|e| format!("--k: {e}"))?,
            "--ratio" => a.ratio = value()?.parse().map_err(|e| format!("--ratio: {e}"))?,
            "--repeat" => a.repeat = value()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--backward" => a.backward = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.layer.is_empty() || a.workload.as_os_str().is_empty() {
        return Err("usage: pool_bench --workload DIR --layer NAME [--k 16] [--ratio 0.5] [--backward] [--repeat 5]".into());
    }
    Ok(a)
}

fn load(dir: &Path) -> Result<DisjointBatch<f32>, Box<dyn std::error::Error>> {
    let x: Array2<f32> = read_npy(dir.join("x.npy"))?;
    let indptr: Array1<i64> = read_npy(dir.join("indptr.npy"))?;
    let indices: Array1<i64> = read_npy(dir.join("indices.npy"))?;
    let data: Array1<f32> = read_npy(dir.join("data.npy"))?;
    let batch: Array1<i64> = read_npy(dir.join("batch.npy"))?;
    let to_usize = |v: &Array1<i64>, what: &str| -> Result<Vec<usize>, String> {
        v.iter()
            .map(|&i| usize::try_from(i).map_err(|_| format!("negative entry in {what}")))
            .collect()
    };
    let num_graphs = batch.iter().copied().max().map_or(0, |m| m as usize + 1);
    let segments = Segments::from_graph_ids_i64(
        batch.as_slice().ok_or("batch.npy not contiguous")?,
        num_graphs,
    )?;
    Ok(DisjointBatch::from_csr_parts(
        x,
        to_usize(&indptr, "indptr")?,
        to_usize(&indices, "indices")?,
        data.to_vec(),
        segments,
    )?)
}

/// The gradient of "the sum of every output and loss".
trait OnesGrad: Differentiable<f32> {
    fn ones(&self) -> Self::Grad;
}
impl OnesGrad for Array2<f32> {
    fn ones(&self) -> Array2<f32> {
        Array2::ones(self.raw_dim())
    }
}
impl OnesGrad for Array3<f32> {
    fn ones(&self) -> Array3<f32> {
        Array3::ones(self.raw_dim())
    }
}
impl OnesGrad for Pooled<f32> {
    fn ones(&self) -> PooledGrad<f32> {
        let mut g = PooledGrad::zeros(self);
        g.x.fill(1.0);
        g.edge_weights.fill(1.0);
        g.losses.values_mut().for_each(|v| *v = 1.0);
        g
    }
}

/// Times `repeat` runs after one warm-up; returns the run times in seconds.
fn time_layer<L>(
    layer: &L,
    batch: &DisjointBatch<f32>,
    backward: bool,
    repeat: usize,
) -> graphpool::Result<Vec<f64>>
where
    L: Layer<f32>,
    L::Output: OnesGrad,
{
    let step = || -> graphpool::Result<()> {
        if backward {
            let (y, cache) = layer.forward(batch)?;
            let g = layer.backward(batch, &cache, &y.ones())?;
            std::hint::black_box(g);
        } else {
            std::hint::black_box(layer.call(batch)?);
        }
        Ok(())
    };
    step()?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn run(a: &Args, b: &DisjointBatch<f32>) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let f = b.num_features();
    let (k, r, bw, n) = (a.k, a.ratio, a.backward, a.repeat);
    let lin = Activation::Linear;
    Ok(match a.layer.as_str() {
        "GlobalSumPool" => time_layer(&GlobalSumPool, b, bw, n)?,
        "GlobalAvgPool" => time_layer(&GlobalAvgPool, b, bw, n)?,
        "GlobalMaxPool" => time_layer(&GlobalMaxPool, b, bw, n)?,
        "GlobalAttentionPool" => time_layer(&GlobalAttentionPool::<f32>::new(f, f, 0)?, b, bw, n)?,
        "GlobalAttnSumPool" | "NodeAttentionPool" => {
            time_layer(&GlobalAttnSumPool::<f32>::new(f, 0), b, bw, n)?
        }
        "SortPool" => time_layer(&SortPool::new(k)?, b, bw, n)?,
        "TopKPool" => time_layer(&TopKPool::<f32>::new(f, r, 0)?, b, bw, n)?,
        "SAGPool" => time_layer(&SAGPool::<f32>::new(f, r, 0)?, b, bw, n)?,
        "LaPool" => time_layer(&LaPool::new(true), b, bw, n)?,
        "MinCutPool" => time_layer(&MinCutPool::<f32>::new(f, k, &[], lin, 0)?, b, bw, n)?,
        "DMoNPool" => time_layer(&DMoNPool::<f32>::new(f, k, &[], lin, 0.1, 0)?, b, bw, n)?,
        "JustBalancePool" => time_layer(
            &JustBalancePool::<f32>::new(f, k, &[], lin, true, 0)?,
            b,
            bw,
            n,
        )?,
        "AsymCheegerCutPool" => time_layer(
            &AsymCheegerCutPool::<f32>::new(f, k, &[], lin, 1.0, 1.0, 0)?,
            b,
            bw,
            n,
        )?,
        "DiffPool" => time_layer(
            &DiffPool::<f32>::new(f, k, None, Activation::Relu, 0)?,
            b,
            bw,
            n,
        )?,
        "MemPooling" => time_layer(&MemPooling::<f32>::new(f, f, 4, k, 1.0, 0)?, b, bw, n)?,
        other => return Err(format!("unknown layer {other}").into()),
    })
}

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let workload = a
        .workload
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut fields = vec![
        ("library", json_str("graphpool")),
        ("layer", json_str(&a.layer)),
        ("workload", json_str(&workload)),
        (
            "phase",
            json_str(if a.backward {
                "forward+backward"
            } else {
                "forward"
            }),
        ),
        ("threads", rayon::current_num_threads().to_string()),
    ];
    match load(&a.workload).and_then(|b| run(&a, &b)) {
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
        Err(e) => fields.push(("error", json_str(&e.to_string()))),
    }
    fields.push(("peak_rss_bytes", peak_rss_bytes().to_string()));
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    println!("{{{}}}", body.join(", "));
}
