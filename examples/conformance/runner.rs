//! Reads conformance cases (format: `../shared/conformance/README.md`), runs
//! each through graphpool in `f32` (the references' dtype) and compares every
//! recorded output within the case's tolerance.
//!
//! Shared by `examples/conformance/main.rs` and `tests/conformance.rs`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use graphpool::framework::Layer;
use graphpool::{DisjointBatch, PoolError, Segments};
use ndarray::{Array2, ArrayD, Dimension, IxDyn};
use serde::Deserialize;
use serde_json::Value;

#[path = "clustering.rs"]
mod clustering;
#[path = "diff_mem.rs"]
mod diff_mem;
#[path = "global.rs"]
mod global;
#[path = "selection.rs"]
mod selection;

/// One case file.
#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub reference: String,
    pub layer: String,
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
    pub inputs: Inputs,
    #[serde(default)]
    pub weights: BTreeMap<String, Value>,
    pub outputs: Outputs,
    pub tolerance: Tolerance,
}

#[derive(Debug, Deserialize)]
pub struct Inputs {
    pub x: Vec<Vec<f64>>,
    pub a: Csr,
    pub i: Vec<usize>,
}

#[derive(Debug, Deserialize)]
pub struct Csr {
    pub shape: [usize; 2],
    pub indptr: Vec<usize>,
    pub indices: Vec<usize>,
    pub data: Vec<f64>,
}

#[derive(Debug, Deserialize)]
pub struct Outputs {
    pub x: Option<Value>,
    pub a: Option<Value>,
    pub i: Option<Vec<usize>>,
    pub s: Option<Value>,
    pub score: Option<Value>,
    pub losses: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

/// What graphpool computed for a case; `None` where the layer has no such output.
#[derive(Debug, Default)]
pub struct Got {
    pub x: Option<ArrayD<f64>>,
    pub a: Option<Array2<f64>>,
    pub i: Option<Vec<usize>>,
    pub s: Option<ArrayD<f64>>,
    pub score: Option<ArrayD<f64>>,
    pub losses: BTreeMap<String, f64>,
}

/// Why a case did not produce outputs.
#[derive(Debug)]
pub enum RunError {
    /// The layer is not implemented yet: the case is skipped.
    NotImplemented(String),
    /// The case file is malformed or graphpool returned an error.
    Failed(String),
}

impl From<PoolError> for RunError {
    fn from(e: PoolError) -> Self {
        RunError::Failed(format!("graphpool error: {e}"))
    }
}

/// The verdict on one case.
#[derive(Debug)]
pub enum Verdict {
    Pass,
    Fail(String),
    Skip(String),
}

/// The verdict on every `*.json` case of a folder, by file name order.
pub fn run_dir(dir: &Path) -> Result<Vec<(String, Verdict)>, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files
        .iter()
        .map(|p| {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match std::fs::read_to_string(p)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<Case>(&t).map_err(|e| e.to_string()))
            {
                Ok(case) => (case.name.clone(), run_case(&case)),
                Err(e) => (stem, Verdict::Fail(format!("cannot parse case: {e}"))),
            }
        })
        .collect())
}

/// Runs and checks one case.
pub fn run_case(case: &Case) -> Verdict {
    let got = match build_batch(case)
        .map_err(RunError::from)
        .and_then(|b| run_layer(case, &b))
    {
        Ok(g) => g,
        Err(RunError::NotImplemented(l)) => {
            return Verdict::Skip(format!("layer {l} not implemented yet"))
        }
        Err(RunError::Failed(why)) => return Verdict::Fail(why),
    };
    match compare(case, &got) {
        Ok(()) => Verdict::Pass,
        Err(why) => Verdict::Fail(why),
    }
}

/// The case's input as an `f32` batch.
pub fn build_batch(case: &Case) -> Result<DisjointBatch<f32>, PoolError> {
    let n = case.inputs.x.len();
    let f = case.inputs.x.first().map_or(0, Vec::len);
    let flat: Vec<f32> = case.inputs.x.iter().flatten().map(|&v| v as f32).collect();
    let x = Array2::from_shape_vec((n, f), flat).map_err(|e| PoolError::ShapeMismatch {
        what: "case x".into(),
        expected: format!("{n} rows of {f}"),
        got: e.to_string(),
    })?;
    let num_graphs = case.inputs.i.iter().max().map_or(0, |m| m + 1);
    let seg = Segments::from_graph_ids(&case.inputs.i, num_graphs)?;
    let a = &case.inputs.a;
    if a.shape != [n, n] {
        return Err(PoolError::AdjacencyShape {
            n,
            rows: a.shape[0],
            cols: a.shape[1],
        });
    }
    DisjointBatch::from_csr_parts(
        x,
        a.indptr.clone(),
        a.indices.clone(),
        a.data.iter().map(|&v| v as f32).collect(),
        seg,
    )
}

fn run_layer(case: &Case, batch: &DisjointBatch<f32>) -> Result<Got, RunError> {
    match case.layer.as_str() {
        "GlobalSumPool"
        | "GlobalAvgPool"
        | "GlobalMaxPool"
        | "GlobalAttentionPool"
        | "GlobalAttnSumPool"
        | "NodeAttentionPool"
        | "SortPool" => global::run(case, batch),
        "DiffPool" | "MemPooling" => diff_mem::run(case, batch),
        "MinCutPool" | "DMoNPool" | "JustBalancePool" | "AsymCheegerCutPool" => {
            clustering::run(case, batch)
        }
        "TopKPool" | "SAGPool" | "LaPool" => selection::run(case, batch),
        other => Err(RunError::NotImplemented(other.to_string())),
    }
}

// ---------------------------------------------------------------- helpers for the per-family runners

/// Loads every weight of the case into the layer by its canonical name.
pub fn load_weights<L: Layer<f32>>(case: &Case, layer: &mut L) -> Result<(), RunError> {
    for (name, v) in &case.weights {
        let arr = json_array(v).map_err(|e| RunError::Failed(format!("weight {name}: {e}")))?;
        layer.set_param(name, arr.mapv(|v| v as f32))?;
    }
    Ok(())
}

/// A config value as usize.
pub fn cfg_usize(case: &Case, key: &str) -> Result<usize, RunError> {
    case.config
        .get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| RunError::Failed(format!("config `{key}` missing or not an integer")))
}

/// An optional config value as usize (`null` or absent gives `None`).
pub fn cfg_opt_usize(case: &Case, key: &str) -> Option<usize> {
    case.config
        .get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
}

/// A config value as f64, or a default.
pub fn cfg_f64(case: &Case, key: &str, default: f64) -> f64 {
    case.config
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or(default)
}

/// A config value as bool, or a default.
pub fn cfg_bool(case: &Case, key: &str, default: bool) -> bool {
    case.config
        .get(key)
        .and_then(Value::as_bool)
        .unwrap_or(default)
}

/// A config value as a string (`null` or absent gives `None`).
pub fn cfg_str<'c>(case: &'c Case, key: &str) -> Option<&'c str> {
    case.config.get(key).and_then(Value::as_str)
}

/// A config list of integers (`null`, absent or `[]` give an empty list).
pub fn cfg_usize_list(case: &Case, key: &str) -> Vec<usize> {
    case.config
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|v| v as usize)
                .collect()
        })
        .unwrap_or_default()
}

/// A nested JSON list of numbers as an n-d array.
pub fn json_array(v: &Value) -> Result<ArrayD<f64>, String> {
    fn shape(v: &Value, out: &mut Vec<usize>) {
        if let Value::Array(a) = v {
            out.push(a.len());
            if let Some(first) = a.first() {
                shape(first, out);
            }
        }
    }
    fn flatten(v: &Value, out: &mut Vec<f64>) -> Result<(), String> {
        match v {
            Value::Array(a) => a.iter().try_for_each(|x| flatten(x, out)),
            Value::Number(n) => {
                out.push(n.as_f64().ok_or("bad number")?);
                Ok(())
            }
            other => Err(format!("not a number: {other}")),
        }
    }
    let mut sh = Vec::new();
    shape(v, &mut sh);
    let mut data = Vec::new();
    flatten(v, &mut data)?;
    ArrayD::from_shape_vec(IxDyn(&sh), data).map_err(|e| format!("ragged array: {e}"))
}

/// A CSR or dense JSON adjacency as a dense matrix (test-sized only).
pub fn json_adjacency(v: &Value) -> Result<Array2<f64>, String> {
    if v.is_object() {
        let c: Csr = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        let mut d = Array2::zeros((c.shape[0], c.shape[1]));
        for r in 0..c.shape[0] {
            for e in c.indptr[r]..c.indptr[r + 1] {
                d[[r, c.indices[e]]] += c.data[e];
            }
        }
        Ok(d)
    } else {
        let a = json_array(v)?;
        if a.ndim() == 1 && a.is_empty() {
            return Ok(Array2::zeros((0, 0)));
        }
        a.into_dimensionality().map_err(|e| e.to_string())
    }
}

/// A sparse matrix as a dense one (test-sized only).
pub fn sparse_to_dense(a: &sprs::CsMat<f32>) -> Array2<f64> {
    let mut d = Array2::zeros((a.rows(), a.cols()));
    for (v, (r, c)) in a.iter() {
        d[[r, c]] += *v as f64;
    }
    d
}

/// `|got - want| <= atol + rtol * |want|`, false for NaN.
fn within(g: f64, w: f64, tol: Tolerance) -> bool {
    (g - w).abs() <= tol.atol + tol.rtol * w.abs()
}

fn close(what: &str, got: &ArrayD<f64>, want: &ArrayD<f64>, tol: Tolerance) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "{what}: shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    for ((idx, g), w) in got.indexed_iter().zip(want.iter()) {
        if !within(*g, *w, tol) {
            return Err(format!("{what}{:?}: got {g}, expected {w}", idx.slice()));
        }
    }
    Ok(())
}

fn compare(case: &Case, got: &Got) -> Result<(), String> {
    let tol = case.tolerance;
    let o = &case.outputs;
    if let Some(want) = &o.x {
        let want = json_array(want)?;
        let g = got.x.as_ref().ok_or("no x computed")?;
        close("x", g, &want, tol)?;
    }
    if let Some(want) = &o.a {
        let want = json_adjacency(want)?;
        let g = got.a.as_ref().ok_or("no a computed")?;
        close("a", &g.clone().into_dyn(), &want.into_dyn(), tol)?;
    }
    if let Some(want) = &o.i {
        let g = got.i.as_ref().ok_or("no i computed")?;
        if g != want {
            return Err(format!("i: got {g:?}, expected {want:?}"));
        }
    }
    if let Some(want) = &o.s {
        let want = json_array(want)?;
        let g = got.s.as_ref().ok_or("no s computed")?;
        close("s", g, &want, tol)?;
    }
    if let Some(want) = &o.score {
        let want = json_array(want)?;
        let g = got.score.as_ref().ok_or("no score computed")?;
        let g = g
            .clone()
            .into_shape_with_order(want.raw_dim())
            .map_err(|_| format!("score: {} values, expected {}", g.len(), want.len()))?;
        close("score", &g, &want, tol)?;
    }
    if let Some(want) = &o.losses {
        for (name, w) in want {
            let g = got
                .losses
                .get(name)
                .ok_or_else(|| format!("no loss `{name}` computed"))?;
            if !within(*g, *w, tol) {
                return Err(format!("loss {name}: got {g}, expected {w}"));
            }
        }
    }
    Ok(())
}
