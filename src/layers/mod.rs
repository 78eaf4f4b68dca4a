//! The pooling layers, one module per layer or family. Names follow Spektral.

/// `with_return_selection` and `return_selection` for an SRC pool whose
/// flag is the field at `$($field).+` (of `self`); `$example` builds the
/// layer for the doctest, over a batch of 6 nodes and 4 features.
macro_rules! return_selection_methods {
    ($example:expr, $($field:ident).+) => {
        /// Whether [`Pooled::selection`](crate::framework::Pooled::selection)
        /// holds the selection (Spektral's `return_selection`): `false` by
        /// default, as in Spektral, whose SRC pools return it only when
        /// asked. The pooled batch, scores and losses are the same either
        /// way, bit for bit; a pool that does not return its selection does
        /// not write it (a dense assignment is $N \times K$) on the forward
        /// pass.
        ///
        /// ```
        /// use graphpool::framework::{Layer, Selection};
        /// use graphpool::layers::*;
        /// use graphpool::nn::Activation;
        /// use graphpool::DisjointBatch;
        /// use ndarray::Array2;
        /// use sprs::CsMat;
        /// // three graphs of two nodes joined by one edge each
        /// let a = CsMat::new((6, 6), vec![0, 1, 2, 3, 4, 5, 6], vec![1, 0, 3, 2, 5, 4], vec![1.0; 6]);
        /// let x = Array2::from_shape_fn((6, 4), |(i, j)| ((i * 4 + j) % 7) as f64 / 7.0 + i as f64);
        /// let batch = DisjointBatch::from_offsets(x, a, vec![0, 2, 4, 6])?;
        #[doc = concat!("let pool = ", $example, ";")]
        /// assert!(!pool.return_selection());
        /// let plain = pool.call(&batch)?;
        /// assert!(plain.selection.is_none());
        /// let with = pool.with_return_selection(true).call(&batch)?;
        /// assert!(with.selection.is_some());
        /// assert_eq!((plain.batch, plain.score, plain.losses), (with.batch, with.score, with.losses));
        /// # Ok::<(), graphpool::PoolError>(())
        /// ```
        pub fn with_return_selection(mut self, yes: bool) -> Self {
            self.$($field).+ = yes;
            self
        }

        /// Whether the selection is returned ([`Self::with_return_selection`]).
        pub fn return_selection(&self) -> bool {
            self.$($field).+
        }
    };
}
pub(crate) use return_selection_methods;

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
