//! The layer contract and the Select–Reduce–Connect (SRC) framework.
//!
//! Every layer implements [`Layer`]: a forward pass that returns its output
//! and the state the backward pass needs, and a backward pass that maps the
//! gradient of a scalar loss with respect to each output to gradients with
//! respect to the node features, the stored edge weights and every
//! parameter ([`Gradients`]).
//!
//! Pooling layers that return a new graph follow the SRC split of
//! Grattarola et al., *Understanding Pooling in Graph Neural Networks*
//! (2022), as Spektral's `SRCPool` does: **select** computes a [`Selection`],
//! **reduce** the pooled features, **connect** the pooled adjacency and
//! **reduce_index** the pooled segments. The generic reduce / connect of each
//! of the three selection forms, and their vector-Jacobian products, live
//! here once ([`Subset`], [`DenseAssignment`], [`SparseAssignment`]).

pub(crate) mod layer;
pub(crate) mod pooled;
pub(crate) mod runs;
mod selection;
mod src_pool;

pub use layer::{Differentiable, Gradients, Layer};
pub use pooled::{Losses, Pooled, PooledGrad};
pub use selection::{
    DenseAssignment, DenseConnectCache, Selection, SparseAssignment, SparseConnectCache, Subset,
};
pub use src_pool::SrcPool;
