//! Conformance runners for the global pools.

use graphpool::framework::Layer;
use graphpool::layers::{
    GlobalAttentionPool, GlobalAttnSumPool, GlobalAvgPool, GlobalMaxPool, GlobalSumPool, SortPool,
};
use graphpool::DisjointBatch;

use super::{cfg_usize, load_weights, Case, Got, RunError};

pub fn run(case: &Case, batch: &DisjointBatch<f32>) -> Result<Got, RunError> {
    let f = batch.num_features();
    let x = match case.layer.as_str() {
        "GlobalSumPool" => GlobalSumPool.call(batch)?.into_dyn(),
        "GlobalAvgPool" => GlobalAvgPool.call(batch)?.into_dyn(),
        "GlobalMaxPool" => GlobalMaxPool.call(batch)?.into_dyn(),
        "GlobalAttentionPool" => {
            let mut l = GlobalAttentionPool::new(f, cfg_usize(case, "channels")?, 0)?;
            load_weights(case, &mut l)?;
            l.call(batch)?.into_dyn()
        }
        "GlobalAttnSumPool" | "NodeAttentionPool" => {
            let mut l = GlobalAttnSumPool::new(f, 0);
            load_weights(case, &mut l)?;
            l.call(batch)?.into_dyn()
        }
        "SortPool" => SortPool::new(cfg_usize(case, "k")?)?
            .call(batch)?
            .into_dyn(),
        other => return Err(RunError::NotImplemented(other.into())),
    };
    Ok(Got {
        x: Some(x.mapv(|v| v as f64)),
        ..Got::default()
    })
}
