//! The pooling layers, one module per layer or family. Names follow Spektral.

mod attention;
mod global;
mod la_pool;
mod sag_pool;
mod selection_core;
mod sort_pool;
mod topk_pool;

pub use attention::{
    GlobalAttentionCache, GlobalAttentionPool, GlobalAttnSumCache, GlobalAttnSumPool,
    NodeAttentionPool,
};
pub use global::{GlobalAvgPool, GlobalMaxPool, GlobalSumPool};
pub use la_pool::{LaPool, LaPoolCache};
pub use sag_pool::{SAGPool, SagPoolCache, SagScorer};
pub use selection_core::{Gating, KeepRule, SelectionPoolCache};
pub use sort_pool::{SortPool, SortPoolCache};
pub use topk_pool::TopKPool;
