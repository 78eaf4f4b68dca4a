//! The pooling layers, one module per layer or family. Names follow Spektral.

mod attention;
pub(crate) mod clustering;
mod dmon;
mod global;
mod mincut;
mod sort_pool;

pub use attention::{
    GlobalAttentionCache, GlobalAttentionPool, GlobalAttnSumCache, GlobalAttnSumPool,
    NodeAttentionPool,
};
pub use clustering::ClusteringCache;
pub use dmon::{DMoNPool, DMoNVariant};
pub use global::{GlobalAvgPool, GlobalMaxPool, GlobalSumPool};
pub use mincut::{MinCutPool, MinCutVariant};
pub use sort_pool::{SortPool, SortPoolCache};
