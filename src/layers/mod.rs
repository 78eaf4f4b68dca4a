//! The pooling layers, one module per layer or family. Names follow Spektral.

mod asym_cheeger;
mod attention;
pub(crate) mod clustering;
mod diff_pool;
mod dmon;
mod global;
mod just_balance;
mod la_pool;
mod mem_pool;
mod mincut;
mod sag_pool;
mod selection_core;
mod sort_pool;
mod topk_pool;

pub use crate::framework::runs::RUN_NODES;
pub use asym_cheeger::AsymCheegerCutPool;
pub use attention::{
    GlobalAttentionCache, GlobalAttentionPool, GlobalAttnSumCache, GlobalAttnSumPool,
    NodeAttentionPool,
};
pub use clustering::ClusteringCache;
pub use diff_pool::{DiffPool, DiffPoolCache, DiffPoolVariant};
pub use dmon::{DMoNPool, DMoNVariant};
pub use global::{GlobalAvgPool, GlobalMaxPool, GlobalSumPool};
pub use just_balance::JustBalancePool;
pub use la_pool::{LaPool, LaPoolCache};
pub use mem_pool::{MemAdjacency, MemPooling, MemPoolingCache};
pub use mincut::{MinCutPool, MinCutVariant};
pub use sag_pool::{SAGPool, SagPoolCache, SagScorer};
pub use selection_core::{Gating, KeepRule, SelectionPoolCache};
pub use sort_pool::{SortPool, SortPoolCache};
pub use topk_pool::TopKPool;
