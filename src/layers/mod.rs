//! The pooling layers, one module per layer or family. Names follow Spektral.

mod asym_cheeger;
mod attention;
pub(crate) mod clustering;
mod diff_pool;
mod dmon;
mod global;
mod just_balance;
mod mem_pool;
mod mincut;
mod sort_pool;

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
pub use mem_pool::{MemAdjacency, MemPooling, MemPoolingCache};
pub use mincut::{MinCutPool, MinCutVariant};
pub use sort_pool::{SortPool, SortPoolCache};
