//! The pooling layers, one module per layer or family. Names follow Spektral.

mod asym_cheeger;
mod attention;
pub(crate) mod clustering;
mod dmon;
mod global;
mod just_balance;
mod mincut;
mod sort_pool;

pub use asym_cheeger::AsymCheegerCutPool;
pub use attention::{
    GlobalAttentionCache, GlobalAttentionPool, GlobalAttnSumCache, GlobalAttnSumPool,
    NodeAttentionPool,
};
pub use clustering::ClusteringCache;
pub use dmon::{DMoNPool, DMoNVariant};
pub use global::{GlobalAvgPool, GlobalMaxPool, GlobalSumPool};
pub use just_balance::JustBalancePool;
pub use mincut::{MinCutPool, MinCutVariant};
pub use sort_pool::{SortPool, SortPoolCache};
