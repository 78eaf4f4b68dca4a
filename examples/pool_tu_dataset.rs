//! The main job: pool a real graph-classification dataset (bundled in `data/`).
//!
//! `cargo run --release --example pool_tu_dataset -- [data/mutag | data/proteins]`
//!
//! Loads the dataset's `.npy` files into one disjoint batch (every graph of
//! the dataset), runs every pooling layer on it, and prints per layer the
//! output shape (or pooled graph size), a checksum or the auxiliary losses
//! and the time, plus per-class mean readouts of a global pool as a sanity
//! check.

use std::path::{Path, PathBuf};
use std::time::Instant;

use graphpool::framework::{Layer, Pooled};
use graphpool::layers::*;
use graphpool::nn::Activation;
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

    // pools that return a new graph: pooled size, losses, and a second pooling
    // of the pooled batch (pools stack)
    println!("\npools returning graphs (nodes / edges after pooling, losses; then GlobalAvgPool on top):");
    macro_rules! pool {
        ($name:expr, $layer:expr) => {{
            let layer = $layer;
            let t = Instant::now();
            let p: Pooled<f32> = layer.call(&batch)?;
            let dt = t.elapsed().as_secs_f64();
            let readout = GlobalAvgPool.call(&p.batch)?;
            let losses: Vec<String> = p
                .losses
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            println!(
                "{:<22} {:>6} nodes {:>7} edges  readout {:?}  [{}]  {:>8.2} ms",
                $name,
                p.batch.num_nodes(),
                p.batch.a().nnz(),
                readout.shape(),
                losses.join(", "),
                dt * 1e3
            );
        }};
    }
    let relu = Activation::Relu;
    pool!("TopKPool(0.5)", TopKPool::<f32>::new(f, 0.5, 0)?);
    pool!("SAGPool(0.5)", SAGPool::<f32>::new(f, 0.5, 0)?);
    pool!("LaPool", LaPool::new(true));
    pool!(
        "MinCutPool(k=8)",
        MinCutPool::<f32>::new(f, 8, &[16], relu, 0)?
    );
    pool!(
        "DiffPool(k=8)",
        DiffPool::<f32>::new(f, 8, Some(16), relu, 0)?
    );
    pool!(
        "DMoNPool(k=8)",
        DMoNPool::<f32>::new(f, 8, &[16], relu, 0.1, 0)?
    );
    pool!(
        "JustBalancePool(k=8)",
        JustBalancePool::<f32>::new(f, 8, &[16], relu, true, 0)?
    );
    pool!(
        "AsymCheegerCut(k=8)",
        AsymCheegerCutPool::<f32>::new(f, 8, &[16], relu, 1.0, 1.0, 0)?
    );
    pool!(
        "MemPooling(h=4,k=8)",
        MemPooling::<f32>::new(f, 16, 4, 8, 1.0, 0)?
    );

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
