//! The main job: pool a real graph-classification dataset (bundled in `data/`).
//!
//! `cargo run --release --example pool_tu_dataset -- [data/mutag | data/proteins]`
//!
//! Loads the dataset's `.npy` files into one disjoint batch (every graph of
//! the dataset), runs each available pooling layer on it, and prints per
//! layer the output shape, a checksum, the auxiliary losses and the time,
//! plus per-class mean readouts of a global pool as a sanity check.

use std::path::{Path, PathBuf};
use std::time::Instant;

use graphpool::framework::Layer;
use graphpool::layers::{
    GlobalAttentionPool, GlobalAttnSumPool, GlobalAvgPool, GlobalMaxPool, GlobalSumPool, SortPool,
};
use graphpool::DisjointBatch;
use ndarray::{Array1, Array2};
use ndarray_npy::read_npy;

fn load(dir: &Path) -> Result<(DisjointBatch<f32>, Array1<i64>), Box<dyn std::error::Error>> {
    let x: Array2<f32> = read_npy(dir.join("x.npy"))?;
    let edge_index: Array2<i64> = read_npy(dir.join("edge_index.npy"))?;
    let batch: Array1<i64> = read_npy(dir.join("batch.npy"))?;
    let y: Array1<i64> = read_npy(dir.join("y.npy"))?;
    let ids = batch.to_vec();
    let num_graphs = y.len();
    let b = DisjointBatch::from_edge_index(x, edge_index.view(), None, &ids, num_graphs)?;
    Ok((b, y))
}

fn report(name: &str, shape: &[usize], sum: f64, t: f64) {
    println!(
        "{name:<22} out {shape:?}  checksum {sum:>14.6}  {:>8.2} ms",
        t * 1e3
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/mutag"));
    let t0 = Instant::now();
    let (batch, y) = load(&dir)?;
    println!(
        "{}: {} graphs, {} nodes, {} directed edges, {} features (loaded and validated in {:.1} ms, {} threads)",
        dir.display(),
        batch.num_graphs(),
        batch.num_nodes(),
        batch.a().nnz(),
        batch.num_features(),
        t0.elapsed().as_secs_f64() * 1e3,
        rayon::current_num_threads()
    );
    let f = batch.num_features();

    macro_rules! run {
        ($name:expr, $layer:expr) => {{
            let layer = $layer;
            let t = Instant::now();
            let out = layer.call(&batch)?;
            let dt = t.elapsed().as_secs_f64();
            report($name, out.shape(), out.iter().map(|&v| v as f64).sum(), dt);
            out
        }};
    }
    let avg = run!("GlobalAvgPool", GlobalAvgPool);
    run!("GlobalSumPool", GlobalSumPool);
    run!("GlobalMaxPool", GlobalMaxPool);
    run!(
        "GlobalAttentionPool",
        GlobalAttentionPool::<f32>::new(f, 16, 0)?
    );
    run!("GlobalAttnSumPool", GlobalAttnSumPool::<f32>::new(f, 0));
    run!("SortPool(k=10)", SortPool::new(10)?);

    // sanity: mean readout per class
    let classes = y.iter().copied().max().map_or(0, |m| m as usize + 1);
    println!("\nmean GlobalAvgPool readout per class:");
    for c in 0..classes {
        let rows: Vec<usize> = (0..y.len()).filter(|&g| y[g] as usize == c).collect();
        let mean = avg
            .select(ndarray::Axis(0), &rows)
            .mean_axis(ndarray::Axis(0));
        let mean: Vec<String> = mean
            .into_iter()
            .flatten()
            .map(|v| format!("{v:.3}"))
            .collect();
        println!("  class {c} ({} graphs): [{}]", rows.len(), mean.join(", "));
    }
    Ok(())
}
