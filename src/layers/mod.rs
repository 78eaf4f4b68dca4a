//! The pooling layers, one module per layer or family. Names follow Spektral.

mod attention;
mod diff_pool;
mod global;
mod mem_pool;
mod sort_pool;

pub use attention::{
    GlobalAttentionCache, GlobalAttentionPool, GlobalAttnSumCache, GlobalAttnSumPool,
    NodeAttentionPool,
};
pub use diff_pool::{DiffPool, DiffPoolCache, DiffPoolVariant};
pub use global::{GlobalAvgPool, GlobalMaxPool, GlobalSumPool};
pub use mem_pool::{MemAdjacency, MemPooling, MemPoolingCache};
pub use sort_pool::{SortPool, SortPoolCache};
