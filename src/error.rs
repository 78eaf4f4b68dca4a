//! The one error type of the crate.

use thiserror::Error;

/// Everything that can go wrong when building a batch, configuring a layer or
/// running it. Every message names the offending index or value and says what
/// was expected, so that the caller can fix the input.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Two arrays that must agree in one dimension do not.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which input or parameter.
        what: String,
        /// The expected shape, e.g. `"(12, 4)"`.
        expected: String,
        /// The shape that was passed.
        got: String,
    },
    /// The adjacency matrix is not square or not `N x N` for `N` nodes.
    #[error("adjacency must be {n} x {n} (one row and column per node), got {rows} x {cols}")]
    AdjacencyShape {
        /// Number of nodes (rows of `x`).
        n: usize,
        /// Rows of the adjacency.
        rows: usize,
        /// Columns of the adjacency.
        cols: usize,
    },
    /// The adjacency is stored in CSC order; convert it with `to_csr()` first.
    #[error("adjacency must be in CSR storage; convert it with `a.to_csr()` first")]
    NotCsr,
    /// The CSR parts (indptr, indices, data) do not form a valid CSR matrix.
    #[error("invalid CSR structure: {0}")]
    InvalidCsr(String),
    /// A graph id is smaller than its predecessor: ids must be sorted.
    #[error("graph ids must be sorted (non-decreasing): node {node} has id {id} after id {prev}")]
    UnsortedGraphIds {
        /// The node whose id decreases.
        node: usize,
        /// Its id.
        id: usize,
        /// The id of the node before it.
        prev: usize,
    },
    /// A graph id is not below the declared number of graphs.
    #[error(
        "graph id {id} of node {node} is out of range: the batch declares {num_graphs} graphs"
    )]
    GraphIdOutOfRange {
        /// The node.
        node: usize,
        /// Its id.
        id: usize,
        /// The declared number of graphs.
        num_graphs: usize,
    },
    /// A graph id is negative (ids read from `i64` files).
    #[error("graph id of node {node} is negative ({id})")]
    NegativeGraphId {
        /// The node.
        node: usize,
        /// Its id.
        id: i64,
    },
    /// Segment offsets must start at 0, never decrease and end at `N`.
    #[error("invalid segment offsets: {0}")]
    InvalidOffsets(String),
    /// An edge joins two different graphs of the batch.
    #[error("edge ({row}, {col}) joins graph {row_graph} to graph {col_graph}: the adjacency must be block-diagonal")]
    EdgeBetweenGraphs {
        /// Source node.
        row: usize,
        /// Target node.
        col: usize,
        /// Graph of the source.
        row_graph: usize,
        /// Graph of the target.
        col_graph: usize,
    },
    /// A feature is NaN or infinite.
    #[error("non-finite value {value} in {what} at {index}")]
    NonFinite {
        /// Which array (`"x"`, `"edge weights"`, a parameter name).
        what: String,
        /// The position, e.g. `"(3, 1)"` or `"edge 7 (2, 5)"`.
        index: String,
        /// The value as printed.
        value: String,
    },
    /// A layer hyper-parameter is outside its valid range.
    #[error("invalid {name} = {value}: {expected}")]
    InvalidConfig {
        /// Name of the hyper-parameter, as in Spektral (`ratio`, `k`, ...).
        name: String,
        /// The value passed.
        value: String,
        /// What is allowed.
        expected: String,
    },
    /// A named parameter does not exist on this layer.
    #[error("unknown parameter `{name}`; this layer has: {known}")]
    UnknownParameter {
        /// The name asked for.
        name: String,
        /// The names the layer has, comma-separated.
        known: String,
    },
    /// A parameter was set with the wrong shape.
    #[error("parameter `{name}` must have shape {expected:?}, got {got:?}")]
    ParameterShape {
        /// Parameter name.
        name: String,
        /// Its shape.
        expected: Vec<usize>,
        /// The shape passed.
        got: Vec<usize>,
    },
    /// A score computed inside a layer is NaN or infinite, so no selection is defined.
    #[error("non-finite score {value} at node {node}: selection is undefined")]
    NonFiniteScore {
        /// The node.
        node: usize,
        /// The score as printed.
        value: String,
    },
    /// A backward pass was given an output gradient that does not match the forward output.
    #[error("gradient of {what} has shape {got}, the forward output has {expected}")]
    GradientShape {
        /// Which output.
        what: String,
        /// The forward output's shape.
        expected: String,
        /// The gradient's shape.
        got: String,
    },
    /// A negative edge weight where weights are used as path lengths
    /// (LaPool's shortest-path regularisation): shortest paths are undefined.
    #[error("edge ({row}, {col}) has weight {value} < 0, but edge weights are used as path lengths (shortest_path_reg): use non-negative weights or turn the regularisation off")]
    NegativePathLength {
        /// Source node.
        row: usize,
        /// Target node.
        col: usize,
        /// The weight as printed.
        value: String,
    },
    /// A backward pass was given a cache its layer did not make: the cache of
    /// another layer (other configuration or parameter shapes), or one made
    /// before the parameters changed (`set_param` between forward and
    /// backward). Its gradients would silently belong to another function.
    #[error("the cache passed to {layer}'s backward pass was not made by this layer's forward pass with its current configuration and parameters (another layer's cache, or set_param between forward and backward): run forward again")]
    CacheMismatch {
        /// The layer whose backward pass refused the cache.
        layer: String,
    },
}

/// The crate's result type.
pub type Result<T, E = PoolError> = std::result::Result<T, E>;
