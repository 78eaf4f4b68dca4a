//! The three forms a selection takes, with the generic reduce / connect /
//! reduce_index of each and their vector-Jacobian products.

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Zip};
use sprs::{CsMat, CsMatView};

use crate::batch::Segments;
use crate::kernels::for_each_node_row;
use crate::kernels::segment::{
    segment_matmul_nn, segment_matmul_nn_combine, segment_matmul_tn, segment_matmul_tn_vjp,
};
use crate::kernels::sparse::{
    block_diag, block_diag_owned, induced_subgraph, scatter_values, spgemm, spgemm_t_vjp_b,
    spgemm_vjp_a, spgemm_vjp_b, spmm, spmm_vjp_values, spmm_vjp_x, symmetric_graphs, transpose,
    Induced, Transposed,
};
use crate::scalar::Scalar;

/// How the nodes of the input map to the nodes of the pooled graphs.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection<T: Scalar> {
    /// A kept subset of nodes with a gate per kept node (TopKPool, SAGPool).
    Subset(Subset<T>),
    /// A dense soft assignment of every node to the $K$ clusters of its own
    /// graph (MinCut, DiffPool, DMoN, JustBalance, AsymCheegerCut, MemPooling).
    Dense(DenseAssignment<T>),
    /// A sparse soft assignment of nodes to leader nodes (LaPool).
    Sparse(SparseAssignment<T>),
}

/// Kept nodes and their gates: $X' = (X \odot \mathrm{gate})_{\text{kept}}$,
/// $A' = A_{\text{kept},\text{kept}}$.
#[derive(Debug, Clone, PartialEq)]
pub struct Subset<T: Scalar> {
    /// Kept node indices into the input batch, sorted ascending (input order).
    pub kept: Vec<usize>,
    /// The gate of each kept node, aligned with `kept`: $\tanh(y)$ or
    /// $\sigma(y)$, or the per-graph softmax score under PyG's `min_score`.
    pub gate: Array1<T>,
}

impl<T: Scalar> Subset<T> {
    /// Reduce: row $j$ of the result is $\mathrm{gate}_j \, x_{\text{kept}_j}$.
    pub fn reduce(&self, x: ArrayView2<T>) -> Array2<T> {
        let mut out = crate::kernels::rows::zeros(self.kept.len(), x.ncols());
        let segs = Segments::single(self.kept.len());
        for_each_node_row(out.view_mut(), &segs, |_, j, mut row| {
            let g = self.gate[j];
            Zip::from(&mut row)
                .and(&x.row(self.kept[j]))
                .for_each(|o, &v| *o = g * v);
        });
        out
    }

    /// VJP of [`Subset::reduce`]: $(\bar X, \bar{\mathrm{gate}})$, with
    /// $\bar X_{\text{kept}_j} = \mathrm{gate}_j \bar X'_j$ (0 for dropped nodes)
    /// and $\bar{\mathrm{gate}}_j = \langle x_{\text{kept}_j}, \bar X'_j\rangle$.
    pub fn reduce_vjp(&self, x: ArrayView2<T>, grad: ArrayView2<T>) -> (Array2<T>, Array1<T>) {
        let mut gx = crate::kernels::rows::zeros(x.nrows(), x.ncols());
        let mut ggate = Array1::zeros(self.kept.len());
        for (j, &n) in self.kept.iter().enumerate() {
            let g = grad.row(j);
            gx.row_mut(n).scaled_add(self.gate[j], &g);
            ggate[j] = g.dot(&x.row(n));
        }
        (gx, ggate)
    }

    /// Connect: the induced subgraph on the kept nodes, never densified.
    pub fn connect(&self, a: CsMatView<T>) -> Induced<T> {
        induced_subgraph(a, &self.kept)
    }

    /// VJP of [`Subset::connect`]: scatters the gradient of each kept edge back
    /// to its source edge; dropped edges get 0.
    pub fn connect_vjp(induced: &Induced<T>, grad: ArrayView1<T>, nnz: usize) -> Array1<T> {
        let g: Vec<T> = grad.to_vec();
        scatter_values(&g, &induced.source, nnz)
    }

    /// Reduce index: the pooled segments (kept nodes per graph).
    pub fn reduce_index(&self, segments: &Segments) -> Segments {
        let mut sizes = vec![0usize; segments.num_graphs()];
        let mut g = 0;
        for &n in &self.kept {
            while n >= segments.offsets()[g + 1] {
                g += 1;
            }
            sizes[g] += 1;
        }
        Segments::from_sizes(&sizes)
    }
}

/// A dense per-graph soft assignment $S$ ($N \times K$): row $n$ holds node
/// $n$'s weights over the $K$ clusters of its own graph.
///
/// $X'_g = S_g^\top X_g$, $A'_g = S_g^\top A_g S_g$, stacked over graphs;
/// $A'$ is block-diagonal with dense $K \times K$ blocks (all $K^2$ entries
/// stored, so that its sparsity structure is fixed).
#[derive(Debug, Clone, PartialEq)]
pub struct DenseAssignment<T: Scalar> {
    /// $S$, $N \times K$.
    pub s: Array2<T>,
}

/// What [`DenseAssignment::connect_blocks`] keeps for its VJP.
#[derive(Debug, Clone)]
pub struct DenseConnectCache<T: Scalar> {
    /// $A S$, $N \times K$.
    pub a_s: Array2<T>,
}

impl<T: Scalar> DenseAssignment<T> {
    /// Number of clusters per graph.
    pub fn k(&self) -> usize {
        self.s.ncols()
    }

    /// Reduce: $X'_g = S_g^\top X_g$, a $(B K) \times F$ matrix.
    pub fn reduce(&self, x: ArrayView2<T>, segments: &Segments) -> Array2<T> {
        segment_matmul_tn(self.s.view(), x, segments)
    }

    /// [`DenseAssignment::reduce`] written into `out` ($BK \times F$
    /// entries, row-major, not yet written), returned written.
    pub(crate) fn reduce_into<'o>(
        &self,
        x: ArrayView2<T>,
        segments: &Segments,
        out: &'o mut [std::mem::MaybeUninit<T>],
    ) -> &'o mut [T] {
        crate::kernels::segment::segment_matmul_tn_into(self.s.view(), x, segments, out)
    }

    /// VJP of [`DenseAssignment::reduce`]: $(\bar S, \bar X)$.
    pub fn reduce_vjp(
        &self,
        x: ArrayView2<T>,
        segments: &Segments,
        grad: ArrayView2<T>,
    ) -> (Array2<T>, Array2<T>) {
        segment_matmul_tn_vjp(self.s.view(), x, segments, grad)
    }

    /// Connect: the stacked blocks $S_g^\top A_g S_g$ as a $(B K) \times K$
    /// matrix, computed as $S_g^\top (A S)_g$ with one sparse product.
    pub fn connect_blocks(
        &self,
        a: CsMatView<T>,
        segments: &Segments,
    ) -> (Array2<T>, DenseConnectCache<T>) {
        self.connect_blocks_from(self.connect_cache(a), segments)
    }

    /// [`DenseAssignment::connect_blocks`] given $A S$ formed by the caller,
    /// for a layer that forms it in the same pass over $A$ as something else
    /// ([`crate::kernels::sparse::spmm_and_edge_l1`]): the blocks
    /// $S_g^\top (A S)_g$, and `cache` kept for the VJP.
    ///
    /// ```
    /// use graphpool::framework::DenseAssignment;
    /// use graphpool::batch::Segments;
    /// use graphpool::kernels::sparse::spmm_and_edge_l1;
    /// use ndarray::array;
    /// use sprs::CsMat;
    /// let a = CsMat::new((2, 2), vec![0, 1, 2], vec![1, 0], vec![1.0_f64, 2.0]);
    /// let sel = DenseAssignment { s: array![[1.0, 0.0], [0.25, 0.75]] };
    /// let seg = Segments::single(2);
    /// let (a_s, _) = spmm_and_edge_l1(a.view(), sel.s.view(), &seg);
    /// let cache = graphpool::framework::DenseConnectCache { a_s };
    /// assert_eq!(sel.connect_blocks_from(cache, &seg).0, sel.connect_blocks(a.view(), &seg).0);
    /// ```
    pub fn connect_blocks_from(
        &self,
        cache: DenseConnectCache<T>,
        segments: &Segments,
    ) -> (Array2<T>, DenseConnectCache<T>) {
        debug_assert_eq!(cache.a_s.dim(), self.s.dim());
        let blocks = segment_matmul_tn(self.s.view(), cache.a_s.view(), segments);
        (blocks, cache)
    }

    /// What [`DenseAssignment::connect_blocks`] keeps for its VJP, $A S$
    /// ($N \times K$), formed alone: for a layer that does not keep it from
    /// the forward pass but forms it again when the backward pass needs it.
    ///
    /// ```
    /// use graphpool::framework::DenseAssignment;
    /// use graphpool::batch::Segments;
    /// use ndarray::array;
    /// use sprs::CsMat;
    /// let a = CsMat::new((2, 2), vec![0, 1, 2], vec![1, 0], vec![1.0_f64, 2.0]);
    /// let sel = DenseAssignment { s: array![[1.0, 0.0], [0.25, 0.75]] };
    /// let (_, kept) = sel.connect_blocks(a.view(), &Segments::single(2));
    /// assert_eq!(sel.connect_cache(a.view()).a_s, kept.a_s);
    /// assert_eq!(kept.a_s, array![[0.25, 0.75], [2.0, 0.0]]);
    /// ```
    pub fn connect_cache(&self, a: CsMatView<T>) -> DenseConnectCache<T> {
        DenseConnectCache {
            a_s: spmm(a, self.s.view()),
        }
    }

    /// VJP of [`DenseAssignment::connect_blocks`] given the gradient of the
    /// stacked blocks: $(\bar S, \bar a)$, the latter aligned with `a.data()`.
    ///
    /// $\bar S_g = (A S)_g \bar O_g^\top + A_g^\top (S_g \bar O_g)$. For a
    /// graph whose block of $A$ is symmetric
    /// ([`crate::kernels::sparse::symmetric_graphs`], checked here) the second
    /// term is $(A S)_g \bar O_g$ and no transposed sparse product is made:
    /// $\bar S_g = (A S)_g (\bar O_g^\top + \bar O_g)$.
    ///
    /// ```
    /// use graphpool::batch::Segments;
    /// use graphpool::framework::DenseAssignment;
    /// use ndarray::array;
    /// use sprs::CsMat;
    /// // one symmetric graph: 0 <-> 1 with weight 2
    /// let a = CsMat::new((2, 2), vec![0, 1, 2], vec![1, 0], vec![2.0_f64, 2.0]);
    /// let sel = DenseAssignment { s: array![[1.0, 0.0], [0.5, 0.5]] };
    /// let segs = Segments::single(2);
    /// let (_, cache) = sel.connect_blocks(a.view(), &segs);
    /// let grad = array![[1.0, 2.0], [0.0, 1.0]];
    /// let (gs, _) = sel.connect_blocks_vjp(a.view(), &segs, &cache, grad.view());
    /// // (A S)(G^T + G) with A S = [[1, 1], [2, 0]] and G^T + G = [[2, 2], [2, 2]]
    /// assert_eq!(gs, array![[4.0, 4.0], [4.0, 4.0]]);
    /// ```
    pub fn connect_blocks_vjp(
        &self,
        a: CsMatView<T>,
        segments: &Segments,
        cache: &DenseConnectCache<T>,
        grad_blocks: ArrayView2<T>,
    ) -> (Array2<T>, Array1<T>) {
        let symmetric = symmetric_graphs(a, segments);
        let (gs, ga) =
            self.connect_blocks_vjp_opt(a, segments, &symmetric, cache, grad_blocks, true);
        (gs, ga.unwrap_or_else(|| Array1::zeros(a.nnz())))
    }

    /// [`DenseAssignment::connect_blocks_vjp`] given which graphs are
    /// symmetric (`symmetric[g]`, from the batch), with $\bar a$ (an SDDMM
    /// over the stored entries, $O(\mathrm{nnz}\,K)$) only if
    /// `edge_weights`; $\bar S$ is the same either way. A graph's rows of
    /// $\bar S$ depend only on that graph (and on whether it is symmetric),
    /// never on the others in the batch.
    pub(crate) fn connect_blocks_vjp_opt(
        &self,
        a: CsMatView<T>,
        segments: &Segments,
        symmetric: &[bool],
        cache: &DenseConnectCache<T>,
        grad_blocks: ArrayView2<T>,
        edge_weights: bool,
    ) -> (Array2<T>, Option<Array1<T>>) {
        debug_assert_eq!(symmetric.len(), segments.num_graphs());
        let both = Self::connect_factor(symmetric, grad_blocks);
        let mut gs = segment_matmul_nn(cache.a_s.view(), both.view(), segments);
        let general = symmetric.iter().any(|&sym| !sym);
        if !(general || edge_weights) {
            return (gs, None);
        }
        let mut g_as = segment_matmul_nn(self.s.view(), grad_blocks, segments);
        let ga = edge_weights.then(|| spmm_vjp_values(a, self.s.view(), g_as.view()));
        if general {
            // A^T (S O) for the other graphs; a symmetric graph's rows of
            // S O are zeroed (their term is in `gs`) and its rows skipped
            for (g, r) in segments.ranges().enumerate() {
                if symmetric[g] {
                    g_as.slice_mut(s![r, ..]).fill(T::zero());
                }
            }
            let t = spmm_vjp_x(a, g_as.view());
            for (g, r) in segments.ranges().enumerate() {
                if !symmetric[g] {
                    let mut rows = gs.slice_mut(s![r.clone(), ..]);
                    rows += &t.slice(s![r, ..]);
                }
            }
        }
        (gs, ga)
    }

    /// [`DenseAssignment::connect_blocks_vjp_opt`] with $\bar S$ added
    /// into `gs` (the shape of $S$, standard layout) instead of returned:
    /// `gs + term` row by row, the bits of adding the returned term. When
    /// every graph is symmetric, $(A S)_g (\bar O_g^\top + \bar O_g)$ is
    /// formed a piece of rows at a time and added
    /// ([`segment_matmul_nn_combine`]): no $N \times K$ array of its own.
    /// Returns $\bar a$ if `edge_weights`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn connect_blocks_vjp_add(
        &self,
        a: CsMatView<T>,
        segments: &Segments,
        symmetric: &[bool],
        cache: &DenseConnectCache<T>,
        grad_blocks: ArrayView2<T>,
        edge_weights: bool,
        gs: &mut Array2<T>,
    ) -> Option<Array1<T>> {
        debug_assert_eq!(symmetric.len(), segments.num_graphs());
        if symmetric.iter().any(|&sym| !sym) {
            let (term, ga) = self.connect_blocks_vjp_opt(
                a,
                segments,
                symmetric,
                cache,
                grad_blocks,
                edge_weights,
            );
            crate::kernels::rows::add_into(gs, &term);
            return ga;
        }
        let both = Self::connect_factor(symmetric, grad_blocks);
        segment_matmul_nn_combine(cache.a_s.view(), both.view(), segments, gs, |o, q| *o += q);
        edge_weights.then(|| {
            let g_as = segment_matmul_nn(self.s.view(), grad_blocks, segments);
            spmm_vjp_values(a, self.s.view(), g_as.view())
        })
    }

    /// The stacked $K \times K$ blocks $\bar O_g^\top$, plus $\bar O_g$
    /// for a symmetric graph: what $(A S)_g$ multiplies in $\bar S$.
    fn connect_factor(symmetric: &[bool], grad_blocks: ArrayView2<T>) -> Array2<T> {
        let k = grad_blocks.ncols();
        // every entry is assigned below
        let mut both = crate::kernels::rows::fresh_matrix(grad_blocks.nrows(), k);
        for (g, &sym) in symmetric.iter().enumerate() {
            let rows = g * k..(g + 1) * k;
            let og = grad_blocks.slice(s![rows.clone(), ..]);
            let mut block = both.slice_mut(s![rows, ..]);
            block.assign(&og.t());
            if sym {
                block += &og;
            }
        }
        both
    }

    /// The block-diagonal CSR matrix of stacked $K \times K$ blocks.
    pub fn blocks_to_csr(blocks: ArrayView2<T>) -> CsMat<T> {
        block_diag(blocks)
    }

    /// [`DenseAssignment::blocks_to_csr`] of blocks given by value: their
    /// buffer becomes the matrix's values without a copy
    /// ([`crate::kernels::sparse::block_diag_owned`]).
    pub fn blocks_into_csr(blocks: Array2<T>) -> CsMat<T> {
        block_diag_owned(blocks)
    }

    /// Reduce index: $B$ graphs of $K$ nodes.
    pub fn reduce_index(&self, segments: &Segments) -> Segments {
        Segments::uniform(segments.num_graphs(), self.k())
    }
}

/// A sparse assignment of nodes to leader nodes (LaPool): $S$ is $N \times L$,
/// column $l$ belongs to leader node `leaders[l]`, and a node's weights on
/// leaders of other graphs are 0.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseAssignment<T: Scalar> {
    /// $S$ in CSR storage, $N \times L$.
    pub s: CsMat<T>,
    /// The node index of each leader (sorted ascending).
    pub leaders: Vec<usize>,
}

/// What [`SparseAssignment::connect`] keeps for its VJP.
#[derive(Debug, Clone)]
pub struct SparseConnectCache<T: Scalar> {
    /// $S^\top$ with, per entry, its position in `s.data()`.
    pub st: Transposed<T>,
    /// $B = A S$ ($N \times L$, CSR).
    pub a_s: CsMat<T>,
    /// $A'$ itself (its structure carries the output gradient).
    pub pooled: CsMat<T>,
}

impl<T: Scalar> SparseAssignment<T> {
    /// Number of leaders (pooled nodes) $L$.
    pub fn num_leaders(&self) -> usize {
        self.leaders.len()
    }

    /// Reduce: $X' = S^\top X$ ($L \times F$), one sparse product through
    /// the transpose (row-parallel, deterministic).
    pub fn reduce(&self, x: ArrayView2<T>) -> Array2<T> {
        let st = transpose(self.s.view()).matrix;
        spmm(st.view(), x)
    }

    /// VJP of [`SparseAssignment::reduce`]: $(\bar s, \bar X)$ with
    /// $\bar s_{nl} = \langle x_n, \bar X'_l\rangle$ (aligned with
    /// `s.data()`) and $\bar X = S \bar X'$.
    pub fn reduce_vjp(&self, x: ArrayView2<T>, grad: ArrayView2<T>) -> (Array1<T>, Array2<T>) {
        // X' = S^T X; entry (n, l) of S meets row n of X and row l of grad
        let gs = spmm_vjp_values(self.s.view(), grad, x);
        let gx = spmm(self.s.view(), grad);
        (gs, gx)
    }

    /// Connect: $A' = S^\top A S$ ($L \times L$, CSR), as $S^\top (A S)$
    /// with two sparse-sparse products; never densified. Its structure
    /// depends only on the structures of $A$ and $S$.
    pub fn connect(&self, a: CsMatView<T>) -> (CsMat<T>, SparseConnectCache<T>) {
        let a_s = spgemm(a, self.s.view());
        let st = transpose(self.s.view());
        let out = spgemm(st.matrix.view(), a_s.view());
        let cache = SparseConnectCache {
            st,
            a_s,
            pooled: out.clone(),
        };
        (out, cache)
    }

    /// VJP of [`SparseAssignment::connect`] given the gradient of $A'$'s
    /// stored values (aligned with the data of $A'$, length
    /// `cache.pooled.nnz()`): $(\bar s, \bar a)$ aligned with `s.data()` and
    /// `a.data()`. With $\bar B = S \bar A'$:
    /// $\bar S = B \bar A'^\top + A^\top \bar B$ and
    /// $\bar a_{ij} = \langle \bar B_i, S_j\rangle$, each only on stored entries.
    pub fn connect_vjp(
        &self,
        a: CsMatView<T>,
        cache: &SparseConnectCache<T>,
        grad: ArrayView1<T>,
    ) -> (Array1<T>, Array1<T>) {
        let (gs, ga) = self.connect_vjp_opt(a, cache, grad, true);
        (gs, ga.unwrap_or_else(|| Array1::zeros(a.nnz())))
    }

    /// [`SparseAssignment::connect_vjp`], with $\bar a$ only if
    /// `edge_weights`; $\bar s$ is the same either way.
    pub(crate) fn connect_vjp_opt(
        &self,
        a: CsMatView<T>,
        cache: &SparseConnectCache<T>,
        grad: ArrayView1<T>,
        edge_weights: bool,
    ) -> (Array1<T>, Option<Array1<T>>) {
        let grad = grad.as_standard_layout();
        let g = with_values(&cache.pooled, grad.as_slice().expect("standard layout"));
        // A' = S^T B: the transpose of S^T is S itself
        let g_st = spgemm_vjp_a(cache.st.matrix.view(), cache.a_s.view(), g);
        let g_b_vals = spgemm_t_vjp_b(self.s.view(), cache.a_s.view(), g);
        let g_b = with_values(&cache.a_s, g_b_vals.as_slice().expect("fresh vector"));
        // B = A S
        let ga = edge_weights.then(|| spgemm_vjp_a(a, self.s.view(), g_b));
        let mut gs = spgemm_vjp_b(a, self.s.view(), g_b);
        for (e, &src) in cache.st.source.iter().enumerate() {
            gs[src] += g_st[e];
        }
        (gs, ga)
    }

    /// Reduce index: the pooled segments (leaders per graph).
    pub fn reduce_index(&self, segments: &Segments) -> Segments {
        Subset::<T> {
            kept: self.leaders.clone(),
            gate: Array1::zeros(self.leaders.len()),
        }
        .reduce_index(segments)
    }
}

/// The structure of `m` with new stored values, borrowed: a view, no copy.
///
/// # Panics
/// If `values` does not hold one value per stored entry of `m`.
fn with_values<'a, T: Scalar>(m: &'a CsMat<T>, values: &'a [T]) -> CsMatView<'a, T> {
    assert_eq!(values.len(), m.nnz(), "one value per stored entry");
    // SAFETY: the structure is that of `m`, a valid CSR matrix, and
    // `values` has one value per stored entry (asserted)
    unsafe {
        CsMatView::new_unchecked(
            sprs::CompressedStorage::CSR,
            m.shape(),
            m.indptr().into_raw_storage(),
            m.indices(),
            values,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block-diagonal $A$ over `sizes`, each graph a ring with chords,
    /// symmetric where `symmetric[g]` (mirrored weights) and directed
    /// elsewhere, and a dense $S$ with rows that are not normalised.
    fn graphs(
        sizes: &[usize],
        symmetric: &[bool],
        k: usize,
    ) -> (CsMat<f64>, Segments, Array2<f64>) {
        let segs = Segments::from_sizes(sizes);
        let n = segs.num_nodes();
        let mut t = sprs::TriMat::new((n, n));
        for (g, r) in segs.ranges().enumerate() {
            let len = r.len();
            for i in r.clone() {
                for step in [1, 3] {
                    if len > step {
                        let j = r.start + (i - r.start + step) % len;
                        let w = 0.25 + ((i * 7 + step) % 5) as f64 / 4.0;
                        t.add_triplet(i, j, w);
                        if symmetric[g] {
                            t.add_triplet(j, i, w);
                        }
                    }
                }
            }
        }
        let s = Array2::from_shape_fn((n, k), |(i, j)| ((i * 5 + j * 3) % 11) as f64 / 7.0 - 0.6);
        (t.to_csr(), segs, s)
    }

    /// `connect_blocks_vjp_add` leaves in the gradient it is given the bits
    /// of `gs + term`, `term` the $\bar S$ that `connect_blocks_vjp_opt`
    /// returns, and returns its $\bar a$: for batches of symmetric graphs
    /// only (the term added a piece of rows at a time), of directed graphs
    /// only and of both, with and without edge-weight gradients, with empty
    /// and single-node graphs, and for $K = 0$.
    #[test]
    fn connect_vjp_added_into_a_gradient_has_the_bits_of_the_returned_term_added() {
        let sizes = [5, 0, 1, 7, 3, 12];
        for symmetric in [
            [true; 6],
            [false; 6],
            [true, false, true, true, false, true],
        ] {
            for k in [3, 1, 0] {
                let (a, segs, s) = graphs(&sizes, &symmetric, k);
                let sel = DenseAssignment { s };
                let (_, cache) = sel.connect_blocks(a.view(), &segs);
                let b = segs.num_graphs();
                let grad =
                    Array2::from_shape_fn((b * k, k), |(i, j)| (i as f64 - 2.0 * j as f64) / 3.0);
                let sym = symmetric_graphs(a.view(), &segs);
                // an empty or single-node graph is symmetric either way
                let expected: Vec<bool> = symmetric
                    .iter()
                    .zip(sizes)
                    .map(|(&y, n)| y || n <= 1)
                    .collect();
                assert_eq!(sym, expected);
                for edge_weights in [false, true] {
                    let old =
                        Array2::from_shape_fn(sel.s.dim(), |(i, j)| (i * j) as f64 / 9.0 - 1.0);
                    let (term, ga) = sel.connect_blocks_vjp_opt(
                        a.view(),
                        &segs,
                        &sym,
                        &cache,
                        grad.view(),
                        edge_weights,
                    );
                    let mut got = old.clone();
                    let got_ga = sel.connect_blocks_vjp_add(
                        a.view(),
                        &segs,
                        &sym,
                        &cache,
                        grad.view(),
                        edge_weights,
                        &mut got,
                    );
                    let want = &old + &term;
                    let bits = |m: &Array2<f64>| m.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    let what = format!("{symmetric:?} K {k} edge weights {edge_weights}");
                    assert_eq!(bits(&got), bits(&want), "S-bar, {what}");
                    assert_eq!(got_ga, ga, "a-bar, {what}");
                }
            }
        }
    }
}
