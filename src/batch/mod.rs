//! The disjoint batch: node features, block-diagonal CSR adjacency and the
//! segment layout, validated once so that every layer can trust them.

mod segments;

pub use segments::{SegmentChunk, Segments};

use std::sync::Arc;

use ndarray::{s, ArcArray2, Array2, ArrayView2};
use sprs::{CsMat, CsMatView};

use crate::error::{PoolError, Result};
use crate::kernels::rows;
use crate::scalar::Scalar;

/// A batch of graphs in disjoint mode.
///
/// * `x`: node features, $N \times F$, the nodes of graph 0 first, then graph 1, …
/// * `a`: weighted adjacency, $N \times N$, CSR, block-diagonal (no edge joins two graphs);
/// * `segments`: the node range of each of the $B$ graphs.
///
/// Every constructor validates all of it and returns a typed [`PoolError`]
/// naming the first offending index; nothing is modified or dropped silently.
///
/// ```
/// use graphpool::{DisjointBatch, Segments};
/// use ndarray::array;
/// use sprs::TriMat;
///
/// // two graphs: a 2-node edge and a single node
/// let x = array![[1.0_f32, 0.0], [0.0, 1.0], [2.0, 2.0]];
/// let mut t = TriMat::new((3, 3));
/// t.add_triplet(0, 1, 1.0);
/// t.add_triplet(1, 0, 1.0);
/// let batch = DisjointBatch::from_graph_ids(x, t.to_csr(), &[0, 0, 1], 2)?;
/// assert_eq!(batch.num_graphs(), 2);
/// assert_eq!(batch.split().len(), 2);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, PartialEq)]
pub struct DisjointBatch<T: Scalar> {
    /// Starts on a cache line ([`rows::align_to_cache_line`]; every public
    /// constructor goes through [`DisjointBatch::assemble`]). Shared, so
    /// that a run of its graphs ([`DisjointBatch::graph_run`], internal) is
    /// a window on the same rows rather than a copy of them; a window
    /// starts where its first row does.
    x: ArcArray2<T>,
    a: CsMat<T>,
    segments: Segments,
    /// Whether backward passes differentiate the edge weights
    /// ([`DisjointBatch::with_edge_weight_grad`]).
    edge_weight_grad: bool,
    /// What is derived from `a` and the segments, computed on first use.
    derived: Derived<T>,
}

/// [`DisjointBatch::symmetric_graphs`],
/// [`DisjointBatch::gcn_deg_inv_sqrt`] and [`DisjointBatch::structure_hash`],
/// each computed on first use and kept. Functions of `a` and the segments,
/// so they take no part in equality; a batch derived with the same `a`
/// shares them.
#[derive(Debug, Clone)]
struct Derived<T: Scalar> {
    symmetric: std::sync::OnceLock<Vec<bool>>,
    gcn_degrees: std::sync::OnceLock<Arc<ndarray::Array1<T>>>,
    structure: std::sync::OnceLock<u64>,
}

impl<T: Scalar> Default for Derived<T> {
    fn default() -> Self {
        Self {
            symmetric: std::sync::OnceLock::new(),
            gcn_degrees: std::sync::OnceLock::new(),
            structure: std::sync::OnceLock::new(),
        }
    }
}

impl<T: Scalar> PartialEq for Derived<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A copy whose `x` starts on a cache line too ([`rows::fresh_copy`]; a
/// derived `clone` would take the allocator's address).
impl<T: Scalar> Clone for DisjointBatch<T> {
    fn clone(&self) -> Self {
        Self::assemble(
            rows::fresh_copy(self.x.view()),
            self.a.clone(),
            self.segments.clone(),
            self.edge_weight_grad,
            self.derived.clone(),
        )
    }
}

impl<T: Scalar> DisjointBatch<T> {
    /// The one place a batch is put together: `x` is moved to start on a
    /// cache line ([`rows::align_to_cache_line`], within its own buffer),
    /// so that the sparse products' row gathers read whole lines.
    fn assemble(
        x: Array2<T>,
        a: CsMat<T>,
        segments: Segments,
        edge_weight_grad: bool,
        derived: Derived<T>,
    ) -> Self {
        Self {
            x: rows::align_to_cache_line(x).into_shared(),
            a,
            segments,
            edge_weight_grad,
            derived,
        }
    }

    /// Validates and builds a batch.
    ///
    /// # Errors
    /// * [`PoolError::ShapeMismatch`] if `x` has not `segments.num_nodes()` rows;
    /// * [`PoolError::NotCsr`], [`PoolError::AdjacencyShape`] for a CSC or non-`N x N` adjacency;
    /// * [`PoolError::EdgeBetweenGraphs`] for an edge across graphs;
    /// * [`PoolError::NonFinite`] for a NaN or infinite feature or edge weight.
    ///
    /// sprs accepts a CSR matrix whose `indptr` does not start at 0 (an
    /// offset row pointer, as an outer slice has); the batch stores it
    /// rebased to 0, so that every layer can index `indices()` and `data()`
    /// with `indptr` directly.
    pub fn new(x: Array2<T>, a: CsMat<T>, segments: Segments) -> Result<Self> {
        validate_x(&x.view(), &segments)?;
        validate_adjacency(&a.view(), &segments)?;
        Ok(Self::assemble(
            x,
            rebased(a),
            segments,
            true,
            Derived::default(),
        ))
    }

    /// Builds a batch from per-node graph ids and an explicit number of graphs
    /// (so that trailing empty graphs are representable).
    ///
    /// # Errors
    /// Those of [`Segments::from_graph_ids`] and [`DisjointBatch::new`], and a
    /// [`PoolError::ShapeMismatch`] if `ids` has not one entry per row of `x`.
    pub fn from_graph_ids(
        x: Array2<T>,
        a: CsMat<T>,
        ids: &[usize],
        num_graphs: usize,
    ) -> Result<Self> {
        if ids.len() != x.nrows() {
            return Err(PoolError::ShapeMismatch {
                what: "graph ids".into(),
                expected: format!("one per node ({})", x.nrows()),
                got: ids.len().to_string(),
            });
        }
        Self::new(x, a, Segments::from_graph_ids(ids, num_graphs)?)
    }

    /// Builds a batch from `B + 1` segment offsets.
    ///
    /// # Errors
    /// Those of [`Segments::from_offsets`] and [`DisjointBatch::new`].
    pub fn from_offsets(x: Array2<T>, a: CsMat<T>, offsets: Vec<usize>) -> Result<Self> {
        Self::new(x, a, Segments::from_offsets(offsets)?)
    }

    /// Builds a batch from raw CSR parts (`indptr`, `indices`, `data`), as read
    /// from files. The parts are checked by sprs (monotone `indptr`, sorted,
    /// in-range, unique `indices`) before the batch checks.
    ///
    /// # Errors
    /// [`PoolError::InvalidCsr`] for a malformed structure, then those of [`DisjointBatch::new`].
    pub fn from_csr_parts(
        x: Array2<T>,
        indptr: Vec<usize>,
        indices: Vec<usize>,
        data: Vec<T>,
        segments: Segments,
    ) -> Result<Self> {
        let n = x.nrows();
        let a = CsMat::try_new((n, n), indptr, indices, data)
            .map_err(|(_, _, _, e)| PoolError::InvalidCsr(e.to_string()))?;
        Self::new(x, a, segments)
    }

    /// A batch holding one graph.
    ///
    /// # Errors
    /// Those of [`DisjointBatch::new`].
    pub fn single(x: Array2<T>, a: CsMat<T>) -> Result<Self> {
        let n = x.nrows();
        Self::new(x, a, Segments::single(n))
    }

    /// Stacks single graphs `(x_g, a_g)` into one batch (block-diagonal `a`).
    ///
    /// Zero graphs stack to a batch of 0 nodes and **0 features**: the width
    /// cannot be known. So `stack(&b.split())` restores `b` only when `b`
    /// has at least one graph; [`DisjointBatch::select_graphs`] keeps the
    /// width in every case.
    ///
    /// # Errors
    /// [`PoolError::ShapeMismatch`] if the graphs do not share one feature
    /// width, and those of [`DisjointBatch::new`] for each graph.
    pub fn stack(graphs: &[(Array2<T>, CsMat<T>)]) -> Result<Self> {
        let f = graphs.first().map_or(0, |(x, _)| x.ncols());
        let mut sizes = Vec::with_capacity(graphs.len());
        for (g, (x, a)) in graphs.iter().enumerate() {
            if x.ncols() != f {
                return Err(PoolError::ShapeMismatch {
                    what: format!("features of graph {g}"),
                    expected: format!("{f} columns (as graph 0)"),
                    got: x.ncols().to_string(),
                });
            }
            let seg = Segments::single(x.nrows());
            validate_x(&x.view(), &seg)?;
            validate_adjacency(&a.view(), &seg)?;
            sizes.push(x.nrows());
        }
        let segments = Segments::from_sizes(&sizes);
        let n = segments.num_nodes();
        let mut x = rows::zeros(n, f);
        let mut indptr = Vec::with_capacity(n + 1);
        let nnz: usize = graphs.iter().map(|(_, a)| a.nnz()).sum();
        let mut indices = Vec::with_capacity(nnz);
        let mut data = Vec::with_capacity(nnz);
        indptr.push(0);
        for (g, (xg, ag)) in graphs.iter().enumerate() {
            let r = segments.range(g);
            x.slice_mut(s![r.clone(), ..]).assign(xg);
            for row in ag.outer_iterator() {
                for (c, &v) in row.iter() {
                    indices.push(c + r.start);
                    data.push(v);
                }
                indptr.push(indices.len());
            }
        }
        let a = CsMat::new((n, n), indptr, indices, data);
        Ok(Self::assemble(x, a, segments, true, Derived::default()))
    }

    /// Builds a batch without validation. For results computed by this crate
    /// from a validated batch; the invariants are still checked in debug builds.
    pub fn new_unchecked(x: Array2<T>, a: CsMat<T>, segments: Segments) -> Self {
        debug_assert!(validate_x(&x.view(), &segments).is_ok());
        debug_assert!(validate_adjacency(&a.view(), &segments).is_ok());
        Self::assemble(x, a, segments, true, Derived::default())
    }

    /// Splits the batch back into its graphs `(x_g, a_g)`, local node ids.
    pub fn split(&self) -> Vec<(Array2<T>, CsMat<T>)> {
        (0..self.num_graphs()).map(|g| self.graph(g)).collect()
    }

    /// Graph `g` alone, with local node ids.
    ///
    /// # Panics
    /// If `g >= num_graphs()`.
    pub fn graph(&self, g: usize) -> (Array2<T>, CsMat<T>) {
        let r = self.segments.range(g);
        (
            self.x.slice(s![r.clone(), ..]).to_owned(),
            csr_block(&self.a, r),
        )
    }

    /// The consecutive graphs `graphs` of the batch as a batch of their own
    /// (node ids shifted to start at 0), for a layer that pools a batch of
    /// small graphs run by run ([`crate::framework::runs`]): their rows of
    /// `x` shared (a window on the batch's, no copy), those of `a` copied
    /// (their column ids shifted), and what is already known of the batch's
    /// per-graph symmetry flags and GCN degrees ($\hat D^{-1/2}$) is carried over (the run's
    /// slice of them: the same values the run would compute).
    ///
    /// # Panics
    /// If `graphs.end > num_graphs()`.
    pub(crate) fn graph_run(&self, graphs: std::ops::Range<usize>) -> Self {
        let offsets = self.segments.offsets();
        let nodes = offsets[graphs.start]..offsets[graphs.end];
        // the run's rows of the shared x, not a copy of them
        let x = self.x.clone().slice_move(s![nodes.clone(), ..]);
        let a = csr_block(&self.a, nodes.clone());
        let segments = Segments::from_offsets_unchecked(
            offsets[graphs.start..=graphs.end]
                .iter()
                .map(|&o| o - nodes.start)
                .collect(),
        );
        let derived = Derived::default();
        if let Some(flags) = self.derived.symmetric.get() {
            let _ = derived.symmetric.set(flags[graphs].to_vec());
        }
        if let Some(u) = self.derived.gcn_degrees.get() {
            // a node's degree is a function of its own row alone
            let _ = derived
                .gcn_degrees
                .set(Arc::new(u.slice(s![nodes]).to_owned()));
        }
        Self {
            x,
            a,
            segments,
            edge_weight_grad: self.edge_weight_grad,
            derived,
        }
    }

    /// A batch with the same graphs and new features (same number of rows; any width).
    ///
    /// # Errors
    /// Those of `x`'s validation in [`DisjointBatch::new`].
    pub fn with_x(&self, x: Array2<T>) -> Result<Self> {
        validate_x(&x.view(), &self.segments)?;
        Ok(Self::assemble(
            x,
            self.a.clone(),
            self.segments.clone(),
            self.edge_weight_grad,
            self.derived.clone(),
        ))
    }

    /// A batch with the same structure and new edge weights (aligned with `a().data()`).
    ///
    /// # Errors
    /// [`PoolError::ShapeMismatch`] for a wrong length, [`PoolError::NonFinite`].
    pub fn with_edge_weights(&self, w: Vec<T>) -> Result<Self> {
        if w.len() != self.a.nnz() {
            return Err(PoolError::ShapeMismatch {
                what: "edge weights".into(),
                expected: self.a.nnz().to_string(),
                got: w.len().to_string(),
            });
        }
        let (indptr, indices, _) = self.a.clone().into_raw_storage();
        let n = self.num_nodes();
        let a = CsMat::new((n, n), indptr, indices, w);
        validate_adjacency(&a.view(), &self.segments)?;
        Ok(Self::assemble(
            rows::fresh_copy(self.x.view()),
            a,
            self.segments.clone(),
            self.edge_weight_grad,
            Derived::default(),
        ))
    }

    /// The same batch (no copy) with edge-weight gradients on or off: the
    /// analogue of PyTorch's `requires_grad` on an edge-weight tensor.
    ///
    /// Every constructor turns them on, and every batch derived from this
    /// one ([`DisjointBatch::with_x`], [`DisjointBatch::with_edge_weights`],
    /// [`DisjointBatch::permute_nodes`], [`DisjointBatch::select_graphs`],
    /// clones) keeps the setting. With them off, a layer's
    /// [`crate::framework::Layer::backward`] on this batch computes
    /// gradients for $X$ and the parameters only (bit-identical to those
    /// with them on) and skips all the work of $\partial L / \partial a_{ij}$:
    /// [`crate::framework::Gradients::edge_weights`] is `None`. Turn them off
    /// for a fixed graph, whose weights are not trained. A forward pass
    /// remembers the setting: its backward pass refuses a batch with the
    /// other one ([`PoolError::ShapeMismatch`]). The pooled batch a layer
    /// returns has them on (its weights depend on $X$ and the parameters).
    ///
    /// ```
    /// use graphpool::framework::Layer;
    /// use graphpool::layers::GlobalSumPool;
    /// use graphpool::DisjointBatch;
    /// use ndarray::array;
    /// use sprs::TriMat;
    ///
    /// let mut t = TriMat::new((2, 2));
    /// t.add_triplet(0, 1, 1.0_f64);
    /// t.add_triplet(1, 0, 1.0);
    /// let batch = DisjointBatch::single(array![[1.0, 2.0], [3.0, 4.0]], t.to_csr())?;
    /// assert!(batch.edge_weight_grad());
    /// let fixed = batch.with_edge_weight_grad(false);
    /// assert!(!fixed.edge_weight_grad());
    ///
    /// let pool = GlobalSumPool;
    /// let (out, cache) = pool.forward(&fixed)?;
    /// let g = pool.backward(&fixed, &cache, &out.mapv(|_| 1.0))?;
    /// assert_eq!(g.x, array![[1.0, 1.0], [1.0, 1.0]]);
    /// assert!(g.edge_weights.is_none());
    /// # Ok::<(), graphpool::PoolError>(())
    /// ```
    #[must_use]
    pub fn with_edge_weight_grad(mut self, on: bool) -> Self {
        self.edge_weight_grad = on;
        self
    }

    /// Which graphs have a symmetric adjacency block, bit for bit
    /// ($A_g = A_g^\top$, [`crate::kernels::sparse::symmetric_graphs`]):
    /// length $B$. Computed on the first call ($O(\mathrm{nnz} \log d)$,
    /// in parallel) and kept with the batch; batches derived from it keep it
    /// when they keep `a` ([`DisjointBatch::with_x`]).
    ///
    /// The backward passes of the clustering pools read it: for a symmetric
    /// graph $A_g^\top (S_g \bar O_g) = (A S)_g \bar O_g$, so the gradient of
    /// $S_g^\top A_g S_g$ needs no transposed sparse product. The choice is
    /// per graph, so a graph's gradients are the same in any batch as alone.
    ///
    /// ```
    /// use graphpool::DisjointBatch;
    /// use ndarray::array;
    /// use sprs::TriMat;
    /// let mut t = TriMat::new((2, 2));
    /// t.add_triplet(0, 1, 1.0_f64);
    /// t.add_triplet(1, 0, 1.0);
    /// let batch = DisjointBatch::single(array![[1.0], [2.0]], t.to_csr())?;
    /// assert_eq!(batch.symmetric_graphs(), &[true]);
    /// # Ok::<(), graphpool::PoolError>(())
    /// ```
    pub fn symmetric_graphs(&self) -> &[bool] {
        self.derived
            .symmetric
            .get_or_init(|| crate::kernels::sparse::symmetric_graphs(self.a.view(), &self.segments))
    }

    /// $\hat D^{-1/2}$ of $A + I$, one value per node
    /// ([`crate::kernels::sparse::gcn_deg_inv_sqrt`]), computed on the first
    /// call and kept with the batch ($N$ values): SAGPool's GCN score
    /// ([`crate::kernels::sparse::gcn_spmv_with`]) then makes one pass over
    /// the entries instead of two. Batches derived from this one keep it
    /// when they keep `a` ([`DisjointBatch::with_x`], clones); new edge
    /// weights ([`DisjointBatch::with_edge_weights`]) recompute it.
    ///
    /// ```
    /// use graphpool::DisjointBatch;
    /// use ndarray::array;
    /// use sprs::TriMat;
    /// let mut t = TriMat::new((2, 2));
    /// t.add_triplet(0, 1, 3.0_f64);
    /// let batch = DisjointBatch::single(array![[1.0], [2.0]], t.to_csr())?;
    /// assert_eq!(batch.gcn_deg_inv_sqrt().to_vec(), vec![0.5, 1.0]);
    /// assert!(std::sync::Arc::ptr_eq(batch.gcn_deg_inv_sqrt(), batch.gcn_deg_inv_sqrt()));
    /// # Ok::<(), graphpool::PoolError>(())
    /// ```
    pub fn gcn_deg_inv_sqrt(&self) -> &Arc<ndarray::Array1<T>> {
        self.derived
            .gcn_degrees
            .get_or_init(|| Arc::new(crate::kernels::sparse::gcn_deg_inv_sqrt(self.a.view())))
    }

    /// A fingerprint of the adjacency's sparsity structure (`indptr`,
    /// `indices`; not the values), computed on the first call and kept with
    /// the batch: a layer's cache records it at the forward pass, and the
    /// backward pass compares it to refuse a different batch
    /// (`PoolError::ShapeMismatch`). Batches derived from this one keep it
    /// when they keep `a` ([`DisjointBatch::with_x`], clones).
    ///
    /// A word-at-a-time multiplicative hash (FxHash's) of fixed blocks of
    /// `indptr` (less its first entry) and of `indices`, in parallel, then
    /// of the blocks' hashes in order: the same on any thread count. Within
    /// a block, word $i$ goes to state $i \bmod 4$ and the four states are
    /// combined at the end, so each chain of multiplications is a quarter
    /// as long and the block is hashed at the speed of its reads. On
    /// `single-1e6` that still reads 88 MB of `usize` (a few milliseconds),
    /// which is why it is kept rather than recomputed by every forward and
    /// backward pass.
    ///
    /// ```
    /// use graphpool::DisjointBatch;
    /// use ndarray::array;
    /// use sprs::TriMat;
    /// let mut t = TriMat::new((2, 2));
    /// t.add_triplet(0, 1, 1.0_f64);
    /// let batch = DisjointBatch::single(array![[1.0], [2.0]], t.to_csr())?;
    /// let other = batch.with_edge_weights(vec![5.0])?;
    /// assert_eq!(batch.structure_hash(), other.structure_hash());
    /// let mut t = TriMat::new((2, 2));
    /// t.add_triplet(1, 0, 1.0_f64);
    /// let flipped = DisjointBatch::single(array![[1.0], [2.0]], t.to_csr())?;
    /// assert_ne!(batch.structure_hash(), flipped.structure_hash());
    /// # Ok::<(), graphpool::PoolError>(())
    /// ```
    pub fn structure_hash(&self) -> u64 {
        *self
            .derived
            .structure
            .get_or_init(|| structure_hash(self.a.view()))
    }

    /// Whether backward passes on this batch compute edge-weight gradients
    /// (on unless turned off by [`DisjointBatch::with_edge_weight_grad`]).
    #[inline]
    pub fn edge_weight_grad(&self) -> bool {
        self.edge_weight_grad
    }

    /// Node features, $N \times F$, in standard layout with the first entry
    /// on a cache line: every public constructor (and `clone`) moves `x` there if
    /// it is not ([`rows::align_to_cache_line`], within its own buffer, no
    /// second copy), so that the sparse products' gathers of its rows read
    /// whole cache lines.
    ///
    /// The rows are held in shared storage (an [`ArcArray2`]): the layers
    /// that pool a batch of small graphs run by run see each run's rows as
    /// a window on the batch's, not a copy. Read it as any ndarray array
    /// (`view()`, indexing, iteration); `to_owned()` gives an [`Array2`].
    #[inline]
    pub fn x(&self) -> &ArcArray2<T> {
        &self.x
    }
    /// Adjacency, $N \times N$ CSR.
    #[inline]
    pub fn a(&self) -> &CsMat<T> {
        &self.a
    }
    /// Segment layout.
    #[inline]
    pub fn segments(&self) -> &Segments {
        &self.segments
    }
    /// Number of graphs $B$.
    #[inline]
    pub fn num_graphs(&self) -> usize {
        self.segments.num_graphs()
    }
    /// Number of nodes $N$.
    #[inline]
    pub fn num_nodes(&self) -> usize {
        self.x.nrows()
    }
    /// Number of features $F$.
    #[inline]
    pub fn num_features(&self) -> usize {
        self.x.ncols()
    }
    /// The graph id of every node.
    pub fn graph_ids(&self) -> Vec<usize> {
        self.segments.graph_ids()
    }
    /// Takes the batch apart.
    pub fn into_parts(self) -> (Array2<T>, CsMat<T>, Segments) {
        (self.x.into_owned(), self.a, self.segments)
    }
}

/// `a` with its row pointer starting at 0 (the stored entries unchanged).
fn rebased<T: Scalar>(a: CsMat<T>) -> CsMat<T> {
    let base = a.indptr().raw_storage().first().copied().unwrap_or(0);
    if base == 0 {
        return a;
    }
    let shape = a.shape();
    let (indptr, indices, data) = a.into_raw_storage();
    let indptr = indptr.into_iter().map(|p| p - base).collect();
    CsMat::new(shape, indptr, indices, data)
}

fn validate_x<T: Scalar>(x: &ArrayView2<T>, segments: &Segments) -> Result<()> {
    if x.nrows() != segments.num_nodes() {
        return Err(PoolError::ShapeMismatch {
            what: "x".into(),
            expected: format!(
                "{} rows (one per node of the segments)",
                segments.num_nodes()
            ),
            got: format!("{} rows", x.nrows()),
        });
    }
    check_finite_2d(x, "x")
}

/// The block `r × r` of the CSR matrix `m` (indptr from 0), with local
/// indices: all the entries of its rows when `r` is a run of whole graphs
/// of a block-diagonal `m`, so a valid CSR matrix built without a check.
fn csr_block<T: Scalar>(m: &CsMat<T>, r: std::ops::Range<usize>) -> CsMat<T> {
    let ip = m.indptr();
    let ip = ip.raw_storage();
    let (lo, hi) = (ip[r.start], ip[r.end]);
    let indptr: Vec<usize> = ip[r.start..=r.end].iter().map(|p| p - lo).collect();
    let indices: Vec<usize> = m.indices()[lo..hi].iter().map(|c| c - r.start).collect();
    let data = m.data()[lo..hi].to_vec();
    let n = r.len();
    crate::kernels::sparse::csr_by_construction((n, n), indptr, indices, data)
}

/// Checks that every entry of a matrix is finite; names the first bad one.
pub(crate) fn check_finite_2d<T: Scalar>(x: &ArrayView2<T>, what: &str) -> Result<()> {
    let values = crate::kernels::rows::row_major(x);
    match crate::kernels::rows::first_non_finite(&values) {
        None => Ok(()),
        Some(i) => Err(non_finite_at(what, x, i)),
    }
}

/// The [`PoolError::NonFinite`] naming entry `flat` (row-major position)
/// of `x`, which `what` describes.
pub(crate) fn non_finite_at<T: Scalar>(
    what: impl Into<String>,
    x: &ArrayView2<T>,
    flat: usize,
) -> PoolError {
    let (r, c) = (flat / x.ncols().max(1), flat % x.ncols().max(1));
    PoolError::NonFinite {
        what: what.into(),
        index: format!("({r}, {c})"),
        value: x.get((r, c)).map_or_else(String::new, |v| v.to_string()),
    }
}

fn validate_adjacency<T: Scalar>(a: &CsMatView<T>, segments: &Segments) -> Result<()> {
    let n = segments.num_nodes();
    if !a.is_csr() {
        return Err(PoolError::NotCsr);
    }
    if a.rows() != n || a.cols() != n {
        return Err(PoolError::AdjacencyShape {
            n,
            rows: a.rows(),
            cols: a.cols(),
        });
    }
    let raw = crate::kernels::sparse::RawCsr::new(a);
    for (g, r) in segments.ranges().enumerate() {
        for row in r.clone() {
            for e in raw.range(row) {
                let col = a.indices()[e];
                let w = a.data()[e];
                if col < r.start || col >= r.end {
                    return Err(PoolError::EdgeBetweenGraphs {
                        row,
                        col,
                        row_graph: g,
                        col_graph: segments.graph_of(col),
                    });
                }
                if !w.is_finite() {
                    return Err(PoolError::NonFinite {
                        what: "edge weights".into(),
                        index: format!("edge {e} ({row}, {col})"),
                        value: w.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

impl<T: Scalar> DisjointBatch<T> {
    /// Relabels nodes: node `perm[j]` of `self` becomes node `j` of the result.
    /// `perm` must map every graph's node range onto itself (a permutation
    /// *within* graphs), so the segments are unchanged.
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] if `perm` is not such a permutation.
    pub fn permute_nodes(&self, perm: &[usize]) -> Result<Self> {
        let n = self.num_nodes();
        let bad = |why: String| PoolError::InvalidConfig {
            name: "perm".into(),
            value: format!("{} entries", perm.len()),
            expected: why,
        };
        if perm.len() != n {
            return Err(bad(format!("a permutation of the {n} nodes")));
        }
        let mut inverse = vec![usize::MAX; n];
        for (j, &old) in perm.iter().enumerate() {
            if old >= n || inverse[old] != usize::MAX {
                return Err(bad("each node exactly once".into()));
            }
            if self.segments.graph_of(old) != self.segments.graph_of(j) {
                return Err(bad(format!("node {old} moved out of its graph")));
            }
            inverse[old] = j;
        }
        let x = self.x.select(ndarray::Axis(0), perm);
        let mut tri = sprs::TriMat::with_capacity((n, n), self.a.nnz());
        for (&v, (r, c)) in self.a.iter() {
            tri.add_triplet(inverse[r], inverse[c], v);
        }
        Ok(Self::assemble(
            x,
            tri.to_csr(),
            self.segments.clone(),
            self.edge_weight_grad,
            Derived::default(),
        ))
    }

    /// The batch of graphs `order[0], order[1], …` of `self` (graphs may be
    /// repeated or left out).
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] if a graph index is out of range.
    pub fn select_graphs(&self, order: &[usize]) -> Result<Self> {
        if let Some(&g) = order.iter().find(|&&g| g >= self.num_graphs()) {
            return Err(PoolError::InvalidConfig {
                name: "graph order".into(),
                value: g.to_string(),
                expected: format!("graph indices below {}", self.num_graphs()),
            });
        }
        let graphs: Vec<_> = order.iter().map(|&g| self.graph(g)).collect();
        let mut out = Self::stack(&graphs)?;
        if graphs.is_empty() {
            out.x = Array2::zeros((0, self.num_features())).into_shared();
        }
        Ok(out.with_edge_weight_grad(self.edge_weight_grad))
    }
}

impl<T: Scalar> DisjointBatch<T> {
    /// Builds a batch from a PyG-style edge list (`edge_index[0]` sources,
    /// `edge_index[1]` targets, `i64` as read from `.npy`), optional edge
    /// weights (all 1 if `None`) and per-node `i64` graph ids.
    ///
    /// ```
    /// use graphpool::DisjointBatch;
    /// use ndarray::array;
    /// let x = array![[1.0_f32], [2.0], [3.0]];
    /// let ei = array![[0_i64, 1], [1, 0]];
    /// let b = DisjointBatch::from_edge_index(x, ei.view(), None, &[0, 0, 1], 2)?;
    /// assert_eq!(b.a().nnz(), 2);
    /// # Ok::<(), graphpool::PoolError>(())
    /// ```
    ///
    /// # Errors
    /// [`PoolError::ShapeMismatch`] if `edge_index` is not `2 x E` or the
    /// weights are not `E`; [`PoolError::InvalidCsr`] for a negative or
    /// out-of-range node id or a duplicate edge (never summed silently); then
    /// those of [`Segments::from_graph_ids_i64`] and [`DisjointBatch::new`].
    pub fn from_edge_index(
        x: Array2<T>,
        edge_index: ndarray::ArrayView2<i64>,
        weights: Option<&[T]>,
        graph_ids: &[i64],
        num_graphs: usize,
    ) -> Result<Self> {
        let n = x.nrows();
        if edge_index.nrows() != 2 {
            return Err(PoolError::ShapeMismatch {
                what: "edge_index".into(),
                expected: "2 rows (sources, targets)".into(),
                got: format!("{} rows", edge_index.nrows()),
            });
        }
        let e = edge_index.ncols();
        if let Some(w) = weights {
            if w.len() != e {
                return Err(PoolError::ShapeMismatch {
                    what: "edge weights".into(),
                    expected: format!("{e} (one per edge)"),
                    got: w.len().to_string(),
                });
            }
        }
        if graph_ids.len() != n {
            return Err(PoolError::ShapeMismatch {
                what: "graph ids".into(),
                expected: format!("one per node ({n})"),
                got: graph_ids.len().to_string(),
            });
        }
        let node = |v: i64, k: usize| -> Result<usize> {
            usize::try_from(v).ok().filter(|&u| u < n).ok_or_else(|| {
                PoolError::InvalidCsr(format!("edge {k} has node id {v}, outside 0..{n}"))
            })
        };
        let mut edges = Vec::with_capacity(e);
        for k in 0..e {
            let (r, c) = (node(edge_index[[0, k]], k)?, node(edge_index[[1, k]], k)?);
            let w = weights.map_or(T::one(), |w| w[k]);
            edges.push((r, c, w, k));
        }
        edges.sort_unstable_by_key(|&(r, c, _, k)| (r, c, k));
        if let Some(w) = edges
            .windows(2)
            .find(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1))
        {
            return Err(PoolError::InvalidCsr(format!(
                "duplicate edge ({}, {}) at positions {} and {}",
                w[0].0, w[0].1, w[0].3, w[1].3
            )));
        }
        let mut indptr = vec![0usize; n + 1];
        for &(r, ..) in &edges {
            indptr[r + 1] += 1;
        }
        for r in 0..n {
            indptr[r + 1] += indptr[r];
        }
        let indices = edges.iter().map(|e| e.1).collect();
        let data = edges.iter().map(|e| e.2).collect();
        let segments = Segments::from_graph_ids_i64(graph_ids, num_graphs)?;
        Self::from_csr_parts(x, indptr, indices, data, segments)
    }
}

/// [`DisjointBatch::structure_hash`], computed.
fn structure_hash<T: Scalar>(a: CsMatView<T>) -> u64 {
    use rayon::prelude::*;
    const BLOCK: usize = 1 << 16;
    const LANES: usize = 4;
    let ip = a.indptr();
    let ip = ip.raw_storage();
    let base = ip.first().copied().unwrap_or(0);
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    let block = |c: &[usize], sub: usize| -> u64 {
        let mut lanes = [0u64; LANES];
        let mut words = c.chunks_exact(LANES);
        for w in &mut words {
            for (h, &v) in lanes.iter_mut().zip(w) {
                *h = mix(*h, (v - sub) as u64);
            }
        }
        let h = lanes.into_iter().fold(0, mix);
        words
            .remainder()
            .iter()
            .fold(h, |h, &v| mix(h, (v - sub) as u64))
    };
    let blocks = |words: &[usize], sub: usize| -> Vec<u64> {
        words.par_chunks(BLOCK).map(|c| block(c, sub)).collect()
    };
    let indices = a.indices();
    let (hp, hi) = rayon::join(|| blocks(ip, base), || blocks(indices, 0));
    hp.into_iter().chain(hi).fold(0, mix)
}
