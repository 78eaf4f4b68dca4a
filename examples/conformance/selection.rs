//! Conformance runners for the selection pools: TopKPool, SAGPool, LaPool.

use graphpool::framework::{Layer, Pooled, Selection};
use graphpool::layers::{LaPool, SAGPool, SagScorer, TopKPool};
use graphpool::DisjointBatch;
use ndarray::Array1;

use super::{cfg_bool, cfg_f64, cfg_str, load_weights, sparse_to_dense, Case, Got, RunError};

pub fn run(case: &Case, batch: &DisjointBatch<f32>) -> Result<Got, RunError> {
    let f = batch.num_features();
    let pooled = match case.layer.as_str() {
        "TopKPool" => {
            let mut l = TopKPool::new(f, cfg_f64(case, "ratio", 0.5), 0)?
                .with_sigmoid_gating(cfg_bool(case, "sigmoid_gating", false));
            load_weights(case, &mut l)?;
            // the cases hold S: asked for, as the references were
            l.with_return_selection(true).call(batch)?
        }
        "SAGPool" => {
            let scorer = match cfg_str(case, "scorer") {
                None | Some("gcn") => SagScorer::Gcn,
                Some("graph_conv") => SagScorer::GraphConv,
                Some(other) => {
                    return Err(RunError::Failed(format!(
                        "unknown SAGPool scorer `{other}`"
                    )))
                }
            };
            let mut l = SAGPool::new_with_scorer(f, cfg_f64(case, "ratio", 0.5), scorer, 0)?
                .with_sigmoid_gating(cfg_bool(case, "sigmoid_gating", false));
            load_weights(case, &mut l)?;
            // the cases hold S: asked for, as the references were
            l.with_return_selection(true).call(batch)?
        }
        "LaPool" => LaPool::new(cfg_bool(case, "shortest_path_reg", true))
            .with_return_selection(true)
            .call(batch)?,
        other => return Err(RunError::NotImplemented(other.into())),
    };
    Ok(outputs(&pooled))
}

/// The case's outputs from a pooled batch: `s` is the sorted kept indices
/// for a subset, the dense N x L assignment for a sparse one.
fn outputs(p: &Pooled<f32>) -> Got {
    let s = match p
        .selection
        .as_ref()
        .expect("every layer here returns its selection")
    {
        Selection::Subset(s) => Array1::from_iter(s.kept.iter().map(|&n| n as f64)).into_dyn(),
        Selection::Sparse(s) => sparse_to_dense(&s.s).into_dyn(),
        Selection::Dense(s) => s.s.mapv(f64::from).into_dyn(),
    };
    Got {
        x: Some(p.batch.x().mapv(f64::from).into_dyn()),
        a: Some(sparse_to_dense(p.batch.a())),
        i: Some(p.batch.graph_ids()),
        s: Some(s),
        score: p.score.as_ref().map(|y| y.mapv(f64::from).into_dyn()),
        ..Got::default()
    }
}
