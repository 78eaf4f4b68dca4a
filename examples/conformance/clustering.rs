//! Conformance runners for the MLP-based dense-assignment clustering pools
//! (MinCutPool, DMoNPool, JustBalancePool, AsymCheegerCutPool).

use graphpool::framework::{Layer, Selection};
use graphpool::layers::{
    AsymCheegerCutPool, DMoNPool, DMoNVariant, JustBalancePool, MinCutPool, MinCutVariant,
};
use graphpool::nn::Activation;
use graphpool::DisjointBatch;

use super::{
    cfg_bool, cfg_f64, cfg_str, cfg_usize, cfg_usize_list, load_weights, sparse_to_dense, Case,
    Got, RunError,
};

fn activation(case: &Case) -> Result<Activation, RunError> {
    // Spektral's default mlp_activation is "relu"
    Ok(Activation::from_name(Some(
        cfg_str(case, "mlp_activation").unwrap_or("relu"),
    ))?)
}

fn is_pyg(case: &Case) -> bool {
    case.reference.starts_with("torch_geometric") || cfg_str(case, "variant") == Some("pyg")
}

pub fn run(case: &Case, batch: &DisjointBatch<f32>) -> Result<Got, RunError> {
    let f = batch.num_features();
    let k = cfg_usize(case, "k")?;
    let hidden = cfg_usize_list(case, "mlp_hidden");
    let act = activation(case)?;
    let pooled = match case.layer.as_str() {
        "MinCutPool" => {
            let mut l = MinCutPool::new(f, k, &hidden, act, 0)?;
            if is_pyg(case) {
                l = l.with_variant(MinCutVariant::Pyg);
            }
            load_weights(case, &mut l)?;
            // the cases hold S: asked for, as the references were
            l.with_return_selection(true).call(batch)?
        }
        "DMoNPool" => {
            let reg = cfg_f64(case, "collapse_regularization", 0.1);
            let mut l = DMoNPool::new(f, k, &hidden, act, reg, 0)?;
            if is_pyg(case) {
                l = l.with_variant(DMoNVariant::Pyg);
            }
            load_weights(case, &mut l)?;
            // the cases hold S: asked for, as the references were
            l.with_return_selection(true).call(batch)?
        }
        "JustBalancePool" => {
            let norm = cfg_bool(case, "normalized_loss", false);
            let mut l = JustBalancePool::new(f, k, &hidden, act, norm, 0)?;
            load_weights(case, &mut l)?;
            // the cases hold S: asked for, as the references were
            l.with_return_selection(true).call(batch)?
        }
        "AsymCheegerCutPool" => {
            let tv = cfg_f64(case, "totvar_coeff", 1.0);
            let bal = cfg_f64(case, "balance_coeff", 1.0);
            let mut l = AsymCheegerCutPool::new(f, k, &hidden, act, tv, bal, 0)?;
            load_weights(case, &mut l)?;
            // the cases hold S: asked for, as the references were
            l.with_return_selection(true).call(batch)?
        }
        other => return Err(RunError::NotImplemented(other.into())),
    };
    let s = match &pooled.selection {
        Some(Selection::Dense(d)) => Some(d.s.mapv(|v| v as f64).into_dyn()),
        _ => None,
    };
    Ok(Got {
        x: Some(pooled.batch.x().mapv(|v| v as f64).into_dyn()),
        a: Some(sparse_to_dense(pooled.batch.a())),
        i: Some(pooled.batch.graph_ids()),
        s,
        score: None,
        losses: pooled
            .losses
            .iter()
            .map(|(n, &v)| (n.clone(), v as f64))
            .collect(),
    })
}
