//! What `pool_bench` and `pool_footprint` share: the workload loader, the
//! table of layers with the peers' settings, and the all-ones output
//! gradient. Included by both with `#[path = "pool_bench/common.rs"] mod common;`
//! so there is one copy of the layer table.

use std::error::Error;
use std::path::{Path, PathBuf};

use graphpool::framework::{Differentiable, Layer, Pooled, PooledGrad, Selection};
use graphpool::layers::*;
use graphpool::nn::Activation;
use graphpool::{DisjointBatch, Segments};
use ndarray::{Array1, Array2, Array3};
use ndarray_npy::read_npy;

/// Errors of the examples: anything displayable.
pub type BoxError = Box<dyn Error>;

/// The command line shared by `pool_bench` and `pool_footprint`.
pub struct Args {
    pub workload: PathBuf,
    pub layer: String,
    pub k: usize,
    pub ratio: f64,
    pub backward: bool,
    /// `--edge-grad`: the backward pass also differentiates the edge weights.
    pub edge_grad: bool,
    pub repeat: usize,
}

/// Parses `--workload DIR --layer NAME [--k 16] [--ratio 0.5] [--backward
/// [--edge-grad]] [--repeat 5]`.
pub fn parse_args(program: &str) -> Result<Args, String> {
    let mut a = Args {
        workload: PathBuf::new(),
        layer: String::new(),
        k: 16,
        ratio: 0.5,
        backward: false,
        edge_grad: false,
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
            "--edge-grad" => a.edge_grad = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.layer.is_empty() || a.workload.as_os_str().is_empty() {
        return Err(format!("usage: {program} --workload DIR --layer NAME [--k 16] [--ratio 0.5] [--backward [--edge-grad]] [--repeat 5]"));
    }
    if a.edge_grad && !a.backward {
        return Err("--edge-grad only applies with --backward".into());
    }
    Ok(a)
}

/// The workload folder's name (the `workload` field of the JSON line).
pub fn workload_name(dir: &Path) -> String {
    dir.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// "forward" or "forward+backward" (the `phase` field).
pub fn phase(backward: bool) -> &'static str {
    if backward {
        "forward+backward"
    } else {
        "forward"
    }
}

/// Loads the workload folder of `a`, with edge-weight gradients on only
/// under `--edge-grad` (the peers differentiate `x` and the parameters only).
pub fn load_for(a: &Args) -> Result<DisjointBatch<f32>, BoxError> {
    Ok(load(&a.workload)?.with_edge_weight_grad(a.edge_grad))
}

/// Loads a workload folder written by `bench/make_workloads.py`.
pub fn load(dir: &Path) -> Result<DisjointBatch<f32>, BoxError> {
    let x: Array2<f32> = read_npy(dir.join("x.npy"))?;
    let indptr: Array1<i64> = read_npy(dir.join("indptr.npy"))?;
    let indices: Array1<i64> = read_npy(dir.join("indices.npy"))?;
    let data: Array1<f32> = read_npy(dir.join("data.npy"))?;
    let batch: Array1<i64> = read_npy(dir.join("batch.npy"))?;
    // converted in place (same-size elements: `collect` reuses the buffer),
    // so the loaded workload is not held twice while the batch is built
    let to_usize = |v: Array1<i64>, what: &str| -> Result<Vec<usize>, String> {
        v.into_raw_vec_and_offset()
            .0
            .into_iter()
            .map(|i| usize::try_from(i).map_err(|_| format!("negative entry in {what}")))
            .collect()
    };
    let num_graphs = batch.iter().copied().max().map_or(0, |m| m as usize + 1);
    let segments = Segments::from_graph_ids_i64(
        batch.as_slice().ok_or("batch.npy not contiguous")?,
        num_graphs,
    )?;
    Ok(DisjointBatch::from_csr_parts(
        x,
        to_usize(indptr, "indptr")?,
        to_usize(indices, "indices")?,
        data.into_raw_vec_and_offset().0,
        segments,
    )?)
}

/// What the examples need of a layer's output: the gradient of "the sum of
/// every output and loss" (all ones), and the bytes the output holds.
pub trait BenchOutput: Differentiable<f32> {
    /// The all-ones output gradient.
    fn ones(&self) -> Self::Grad;
    /// Appends (name, bytes) for every array the output holds.
    fn footprint(&self, parts: &mut Vec<(String, u64)>);
}

const F32: u64 = std::mem::size_of::<f32>() as u64;
const USIZE: u64 = std::mem::size_of::<usize>() as u64;

impl BenchOutput for Array2<f32> {
    fn ones(&self) -> Array2<f32> {
        // in fresh memory as the layers' outputs are (huge pages when large)
        let mut g = graphpool::kernels::rows::fresh_matrix(self.nrows(), self.ncols());
        g.par_mapv_inplace(|_| 1.0);
        g
    }
    fn footprint(&self, parts: &mut Vec<(String, u64)>) {
        parts.push(("out".into(), self.len() as u64 * F32));
    }
}

impl BenchOutput for Array3<f32> {
    fn ones(&self) -> Array3<f32> {
        let (a, b, c) = self.dim();
        let mut g =
            Array3::from_shape_vec((a, b, c), graphpool::kernels::rows::fresh_vec(a * b * c))
                .expect("a * b * c entries");
        g.par_mapv_inplace(|_| 1.0);
        g
    }
    fn footprint(&self, parts: &mut Vec<(String, u64)>) {
        parts.push(("out".into(), self.len() as u64 * F32));
    }
}

impl BenchOutput for Pooled<f32> {
    fn ones(&self) -> PooledGrad<f32> {
        // fresh memory (PooledGrad::zeros), filled in parallel: the pages
        // are faulted in on every core
        let mut g = PooledGrad::zeros(self);
        g.x.par_mapv_inplace(|_| 1.0);
        g.edge_weights.par_mapv_inplace(|_| 1.0);
        g.losses.values_mut().for_each(|v| *v = 1.0);
        g
    }
    fn footprint(&self, parts: &mut Vec<(String, u64)>) {
        batch_footprint("pooled_", &self.batch, parts);
        match &self.selection {
            // not returned by default (Spektral's return_selection)
            None => {}
            Some(Selection::Subset(s)) => {
                parts.push(("selection_kept".into(), s.kept.len() as u64 * USIZE));
                parts.push(("selection_gate".into(), s.gate.len() as u64 * F32));
            }
            Some(Selection::Dense(d)) => {
                parts.push(("selection_s".into(), d.s.len() as u64 * F32));
            }
            Some(Selection::Sparse(s)) => {
                let m = s.s.view();
                parts.push(("selection_s_indptr".into(), m.indptr().len() as u64 * USIZE));
                parts.push(("selection_s_indices".into(), m.nnz() as u64 * USIZE));
                parts.push(("selection_s_data".into(), m.nnz() as u64 * F32));
                parts.push(("selection_leaders".into(), s.leaders.len() as u64 * USIZE));
            }
        }
        if let Some(score) = &self.score {
            parts.push(("score".into(), score.len() as u64 * F32));
        }
        parts.push(("losses".into(), self.losses.len() as u64 * F32));
    }
}

/// Appends the bytes of a batch's arrays as held in memory: x, the CSR
/// adjacency (indptr, indices, data) and the segment offsets.
pub fn batch_footprint(prefix: &str, b: &DisjointBatch<f32>, parts: &mut Vec<(String, u64)>) {
    let a = b.a();
    parts.push((format!("{prefix}x"), b.x().len() as u64 * F32));
    parts.push((format!("{prefix}indptr"), (a.rows() as u64 + 1) * USIZE));
    parts.push((format!("{prefix}indices"), a.nnz() as u64 * USIZE));
    parts.push((format!("{prefix}data"), a.nnz() as u64 * F32));
    parts.push((
        format!("{prefix}segments"),
        b.segments().offsets().len() as u64 * USIZE,
    ));
}

/// Something done with a layer of any type: `dispatch` builds the layer
/// named on the command line and hands it to `run`.
pub trait WithLayer {
    /// What `run` returns.
    type Out;
    /// Does the work with the built layer.
    fn run<L>(self, layer: &L) -> Result<Self::Out, BoxError>
    where
        L: Layer<f32>,
        L::Output: BenchOutput;
}

/// The layer table: Spektral's names and the peers' settings (K clusters,
/// ratio, MemPooling with 4 heads and F' = F, MLPs without hidden layers,
/// seed 0), for a batch of `f` features.
pub fn dispatch<W: WithLayer>(
    name: &str,
    f: usize,
    k: usize,
    r: f64,
    w: W,
) -> Result<W::Out, BoxError> {
    let lin = Activation::Linear;
    match name {
        "GlobalSumPool" => w.run(&GlobalSumPool),
        "GlobalAvgPool" => w.run(&GlobalAvgPool),
        "GlobalMaxPool" => w.run(&GlobalMaxPool),
        "GlobalAttentionPool" => w.run(&GlobalAttentionPool::<f32>::new(f, f, 0)?),
        "GlobalAttnSumPool" | "NodeAttentionPool" => w.run(&GlobalAttnSumPool::<f32>::new(f, 0)),
        "SortPool" => w.run(&SortPool::new(k)?),
        "TopKPool" => w.run(&TopKPool::<f32>::new(f, r, 0)?),
        "SAGPool" => w.run(&SAGPool::<f32>::new(f, r, 0)?),
        "LaPool" => w.run(&LaPool::new(true)),
        "MinCutPool" => w.run(&MinCutPool::<f32>::new(f, k, &[], lin, 0)?),
        "DMoNPool" => w.run(&DMoNPool::<f32>::new(f, k, &[], lin, 0.1, 0)?),
        "JustBalancePool" => w.run(&JustBalancePool::<f32>::new(f, k, &[], lin, true, 0)?),
        "AsymCheegerCutPool" => w.run(&AsymCheegerCutPool::<f32>::new(
            f,
            k,
            &[],
            lin,
            1.0,
            1.0,
            0,
        )?),
        "DiffPool" => w.run(&DiffPool::<f32>::new(f, k, None, Activation::Relu, 0)?),
        "MemPooling" => w.run(&MemPooling::<f32>::new(f, f, 4, k, 1.0, 0)?),
        other => Err(format!("unknown layer {other}").into()),
    }
}

/// The process's own peak resident set size (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// One JSON object on one line from (key, already-encoded value) pairs.
pub fn json_line(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    format!("{{{}}}", body.join(", "))
}
