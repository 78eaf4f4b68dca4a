//! Conformance runners for DiffPool and MemPooling.

use graphpool::framework::{Layer, Pooled, Selection};
use graphpool::layers::{DiffPool, MemPooling};
use graphpool::nn::Activation;
use graphpool::DisjointBatch;

use super::{
    cfg_f64, cfg_opt_usize, cfg_str, cfg_usize, load_weights, sparse_to_dense, Case, Got, RunError,
};

pub fn run(case: &Case, batch: &DisjointBatch<f32>) -> Result<Got, RunError> {
    let f = batch.num_features();
    let pooled = match case.layer.as_str() {
        "DiffPool" => {
            let activation = Activation::from_name(cfg_str(case, "activation"))?;
            let mut l = DiffPool::new(
                f,
                cfg_usize(case, "k")?,
                cfg_opt_usize(case, "channels"),
                activation,
                0,
            )?;
            load_weights(case, &mut l)?;
            // the cases hold S: asked for, as the references were
            l.with_return_selection(true).call(batch)?
        }
        "MemPooling" => {
            let mut l = MemPooling::new(
                f,
                cfg_usize(case, "channels")?,
                cfg_usize(case, "heads")?,
                cfg_usize(case, "k")?,
                cfg_f64(case, "tau", 1.0),
                0,
            )?;
            load_weights(case, &mut l)?;
            // the cases hold S: asked for, as the references were
            l.with_return_selection(true).call(batch)?
        }
        other => return Err(RunError::NotImplemented(other.into())),
    };
    Ok(got_from(&pooled))
}

/// Every output of a dense-assignment pool: x, a (dense), i, s, losses.
fn got_from(p: &Pooled<f32>) -> Got {
    let s = match &p.selection {
        Some(Selection::Dense(d)) => Some(d.s.mapv(f64::from).into_dyn()),
        _ => None,
    };
    Got {
        x: Some(p.batch.x().mapv(f64::from).into_dyn()),
        a: Some(sparse_to_dense(p.batch.a())),
        i: Some(p.batch.graph_ids()),
        s,
        score: None,
        losses: p
            .losses
            .iter()
            .map(|(k, v)| (k.clone(), f64::from(*v)))
            .collect(),
    }
}
