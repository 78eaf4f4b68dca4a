//! Sparse kernels on CSR matrices: row-parallel products with dense
//! matrices, transposition that remembers where each entry came from, and
//! induced subgraphs. None of them ever forms a dense $N \times N$ matrix.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, Zip};
use rayon::prelude::*;
use sprs::{CsMat, CsMatView};

use super::ROW_BLOCK;
use crate::scalar::Scalar;

/// Row-parallel sparse × dense product $A X$ ($N \times M$ times $M \times F$).
///
/// Each output row is summed over its stored entries in index order, so the
/// result does not depend on the thread count. (sprs's own product is
/// sequential.)
pub fn spmm<T: Scalar>(a: CsMatView<T>, x: ArrayView2<T>) -> Array2<T> {
    debug_assert_eq!(a.cols(), x.nrows());
    let mut out = Array2::zeros((a.rows(), x.ncols()));
    out.axis_chunks_iter_mut(Axis(0), ROW_BLOCK)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut block)| {
            for (j, mut row) in block.outer_iter_mut().enumerate() {
                if let Some(arow) = a.outer_view(b * ROW_BLOCK + j) {
                    for (c, &w) in arow.iter() {
                        Zip::from(&mut row)
                            .and(&x.row(c))
                            .for_each(|o, &v| *o += w * v);
                    }
                }
            }
        });
    out
}

/// VJP of [`spmm`] with respect to the stored values of $A$:
/// $\bar a_{ij} = \langle \bar O_i, X_j \rangle$, aligned with `a.data()`.
pub fn spmm_vjp_values<T: Scalar>(
    a: CsMatView<T>,
    x: ArrayView2<T>,
    grad: ArrayView2<T>,
) -> Array1<T> {
    let ip = a.indptr();
    let ip = ip.raw_storage();
    let base = ip[0];
    let idx = a.indices();
    let vals: Vec<T> = (0..a.rows())
        .into_par_iter()
        .flat_map_iter(|r| {
            let g = grad.row(r);
            (ip[r] - base..ip[r + 1] - base).map(move |e| g.dot(&x.row(idx[e])))
        })
        .collect();
    Array1::from(vals)
}

/// A CSR transpose $A^\top$ together with, for each of its stored entries,
/// the position of the same entry in `a.data()`.
#[derive(Debug, Clone)]
pub struct Transposed<T: Scalar> {
    /// $A^\top$ in CSR storage, sorted indices.
    pub matrix: CsMat<T>,
    /// `source[e]` is the index in `a.data()` of entry `e` of `matrix.data()`.
    pub source: Vec<usize>,
}

/// Transposes a CSR matrix by a counting sort (deterministic, $O(\mathrm{nnz} + N)$).
pub fn transpose<T: Scalar>(a: CsMatView<T>) -> Transposed<T> {
    let (rows, cols) = (a.rows(), a.cols());
    let ip = a.indptr();
    let ip = ip.raw_storage();
    let base = ip[0];
    let nnz = a.nnz();
    let mut indptr = vec![0usize; cols + 1];
    for &c in a.indices() {
        indptr[c + 1] += 1;
    }
    for c in 0..cols {
        indptr[c + 1] += indptr[c];
    }
    let mut next = indptr.clone();
    let mut indices = vec![0usize; nnz];
    let mut data = vec![T::zero(); nnz];
    let mut source = vec![0usize; nnz];
    for r in 0..rows {
        for e in ip[r] - base..ip[r + 1] - base {
            let c = a.indices()[e];
            let p = next[c];
            next[c] += 1;
            indices[p] = r;
            data[p] = a.data()[e];
            source[p] = e;
        }
    }
    Transposed {
        matrix: CsMat::new((cols, rows), indptr, indices, data),
        source,
    }
}

/// VJP of [`spmm`] with respect to $X$: $\bar X = A^\top \bar O$.
pub fn spmm_vjp_x<T: Scalar>(a: CsMatView<T>, grad: ArrayView2<T>) -> Array2<T> {
    let t = transpose(a);
    spmm(t.matrix.view(), grad)
}

/// The subgraph induced by the sorted node list `kept`: the rows and columns
/// of `kept`, renumbered `0..kept.len()`, plus for each stored entry of the
/// result the index of its source entry in `a.data()` (for the VJP).
#[derive(Debug, Clone)]
pub struct Induced<T: Scalar> {
    /// The induced adjacency, `kept.len()` square, CSR.
    pub matrix: CsMat<T>,
    /// `source[e]` is the position in `a.data()` of entry `e` of `matrix`.
    pub source: Vec<usize>,
}

/// Extracts the induced subgraph $A[\text{kept}, \text{kept}]$ in parallel
/// over rows, never densifying.
///
/// `kept` must be sorted ascending without duplicates (as returned by
/// [`crate::kernels::sort::segment_top_k`]).
pub fn induced_subgraph<T: Scalar>(a: CsMatView<T>, kept: &[usize]) -> Induced<T> {
    debug_assert!(kept.windows(2).all(|w| w[0] < w[1]));
    let n = a.rows();
    let mut new_id = vec![usize::MAX; n];
    for (j, &k) in kept.iter().enumerate() {
        new_id[k] = j;
    }
    let ip = a.indptr();
    let ip = ip.raw_storage();
    let base = ip[0];
    let idx = a.indices();
    let rows: Vec<(Vec<usize>, Vec<usize>)> = kept
        .par_iter()
        .map(|&r| {
            let mut cols = Vec::new();
            let mut src = Vec::new();
            for e in ip[r] - base..ip[r + 1] - base {
                let c = new_id[idx[e]];
                if c != usize::MAX {
                    cols.push(c);
                    src.push(e);
                }
            }
            (cols, src)
        })
        .collect();
    let mut indptr = Vec::with_capacity(kept.len() + 1);
    indptr.push(0);
    let total: usize = rows.iter().map(|(c, _)| c.len()).sum();
    let mut indices = Vec::with_capacity(total);
    let mut source = Vec::with_capacity(total);
    for (c, s) in rows {
        indices.extend(c);
        source.extend(s);
        indptr.push(indices.len());
    }
    let data: Vec<T> = source.iter().map(|&e| a.data()[e]).collect();
    let m = kept.len();
    Induced {
        matrix: CsMat::new((m, m), indptr, indices, data),
        source,
    }
}

/// Scatters gradients of gathered entries back: `out[source[e]] += grad[e]`
/// over a vector of length `len` (the VJP of any gather of stored values).
pub fn scatter_values<T: Scalar>(grad: &[T], source: &[usize], len: usize) -> Array1<T> {
    let mut out = Array1::zeros(len);
    for (&g, &s) in grad.iter().zip(source) {
        out[s] += g;
    }
    out
}

/// A block-diagonal CSR matrix from stacked dense $K \times K$ blocks
/// (a $(B K) \times K$ matrix). Every entry of every block is stored, explicit
/// zeros included, so that the data vector is the blocks flattened row-major
/// (the gradient of the stored values reshapes back to the blocks).
pub fn block_diag<T: Scalar>(blocks: ArrayView2<T>) -> CsMat<T> {
    let k = blocks.ncols();
    let n = blocks.nrows();
    let indptr: Vec<usize> = (0..=n).map(|r| r * k).collect();
    let mut indices = Vec::with_capacity(n * k);
    for r in 0..n {
        let base = r.checked_div(k).map_or(0, |q| q * k);
        indices.extend(base..base + k);
    }
    let data: Vec<T> = blocks.iter().copied().collect();
    CsMat::new((n, n), indptr, indices, data)
}

/// Row-parallel sparse × sparse product $A B$ (Gustavson's algorithm with a
/// sorted accumulator per row). Each output entry is summed in the order of
/// $A$'s row entries, so the result does not depend on the thread count.
pub fn spgemm<T: Scalar>(a: CsMatView<T>, b: CsMatView<T>) -> CsMat<T> {
    debug_assert_eq!(a.cols(), b.rows());
    let rows: Vec<Vec<(usize, T)>> = (0..a.rows())
        .into_par_iter()
        .map(|r| {
            let mut acc: std::collections::BTreeMap<usize, T> = std::collections::BTreeMap::new();
            if let Some(arow) = a.outer_view(r) {
                for (k, &w) in arow.iter() {
                    if let Some(brow) = b.outer_view(k) {
                        for (c, &v) in brow.iter() {
                            let e = acc.entry(c).or_insert_with(T::zero);
                            *e += w * v;
                        }
                    }
                }
            }
            acc.into_iter().collect()
        })
        .collect();
    let mut indptr = Vec::with_capacity(a.rows() + 1);
    indptr.push(0);
    let nnz: usize = rows.iter().map(Vec::len).sum();
    let mut indices = Vec::with_capacity(nnz);
    let mut data = Vec::with_capacity(nnz);
    for row in rows {
        for (c, v) in row {
            indices.push(c);
            data.push(v);
        }
        indptr.push(indices.len());
    }
    CsMat::new((a.rows(), b.cols()), indptr, indices, data)
}

/// The GCN filter $\hat A = \hat D^{-1/2} (A + I) \hat D^{-1/2}$ with
/// $\hat D_{ii} = \sum_j (A + I)_{ij}$ (row sums), built sparse, as Spektral's
/// `normalize_A(a + I)` and `gcn_filter`. An existing diagonal entry gets
/// $+1$. A node whose degree $\hat D_{ii} \le 0$ (possible only with
/// negative weights) gets $\hat D_{ii}^{-1/2} = 0$ instead of NaN.
#[derive(Debug, Clone)]
pub struct GcnFilter<T: Scalar> {
    /// $\hat A$, CSR, sorted indices; the structure of $A$ plus the diagonal.
    pub matrix: CsMat<T>,
    /// $(A + I)$'s stored values, aligned with `matrix`.
    pub with_loops: Vec<T>,
    /// `source[e]`: position in `a.data()` of the $A$ entry that entry `e`
    /// of `matrix` comes from, or `usize::MAX` for an added diagonal entry.
    pub source: Vec<usize>,
    /// $\hat D^{-1/2}$ per node.
    pub deg_inv_sqrt: Array1<T>,
}

/// Builds the [`GcnFilter`] of `a` (square).
pub fn gcn_filter<T: Scalar>(a: CsMatView<T>) -> GcnFilter<T> {
    let n = a.rows();
    let ip = a.indptr();
    let ip = ip.raw_storage();
    let base = ip[0];
    let mut indptr = Vec::with_capacity(n + 1);
    let mut indices = Vec::with_capacity(a.nnz() + n);
    let mut vals = Vec::with_capacity(a.nnz() + n);
    let mut source = Vec::with_capacity(a.nnz() + n);
    indptr.push(0);
    for r in 0..n {
        let mut placed = false;
        for e in ip[r] - base..ip[r + 1] - base {
            let c = a.indices()[e];
            if !placed && c >= r {
                if c == r {
                    indices.push(r);
                    vals.push(a.data()[e] + T::one());
                    source.push(e);
                    placed = true;
                    continue;
                }
                indices.push(r);
                vals.push(T::one());
                source.push(usize::MAX);
                placed = true;
            }
            indices.push(c);
            vals.push(a.data()[e]);
            source.push(e);
        }
        if !placed {
            indices.push(r);
            vals.push(T::one());
            source.push(usize::MAX);
        }
        indptr.push(indices.len());
    }
    let deg_inv_sqrt = Array1::from(
        (0..n)
            .into_par_iter()
            .map(|r| {
                let d: T = vals[indptr[r]..indptr[r + 1]].iter().copied().sum();
                if d > T::zero() {
                    T::one() / d.sqrt()
                } else {
                    T::zero()
                }
            })
            .collect::<Vec<T>>(),
    );
    let data: Vec<T> = (0..n)
        .into_par_iter()
        .flat_map_iter(|r| {
            let (idx, vals, dis) = (&indices, &vals, &deg_inv_sqrt);
            (indptr[r]..indptr[r + 1]).map(move |e| dis[r] * vals[e] * dis[idx[e]])
        })
        .collect();
    GcnFilter {
        matrix: CsMat::new((n, n), indptr, indices.clone(), data),
        with_loops: vals,
        source,
        deg_inv_sqrt,
    }
}

impl<T: Scalar> GcnFilter<T> {
    /// VJP: the gradient with respect to $A$'s stored values (aligned with
    /// `a.data()`, length `nnz`) from the gradient $\bar{\hat a}$ of the
    /// filter's stored values.
    ///
    /// With $u = \hat D^{-1/2}$ and $b$ the values of $A + I$:
    /// $\bar b_{ij} = \bar{\hat a}_{ij} u_i u_j + \bar d_i$, where
    /// $\bar d_i = -\tfrac12 u_i^3 \big(\sum_j \bar{\hat a}_{ij} b_{ij} u_j + \sum_r \bar{\hat a}_{ri} b_{ri} u_r\big)$
    /// (0 where $u_i = 0$).
    pub fn vjp(&self, grad: &[T], nnz: usize) -> Array1<T> {
        let m = &self.matrix;
        let n = m.rows();
        let ip = m.indptr();
        let ip = ip.raw_storage();
        let idx = m.indices();
        let u = &self.deg_inv_sqrt;
        let b = &self.with_loops;
        // row part of dL/du_i
        let mut gu: Vec<T> = (0..n)
            .into_par_iter()
            .map(|r| {
                (ip[r]..ip[r + 1])
                    .map(|e| grad[e] * b[e] * u[idx[e]])
                    .fold(T::zero(), |s, v| s + v)
            })
            .collect();
        // column part, scattered in entry order (deterministic)
        for r in 0..n {
            for e in ip[r]..ip[r + 1] {
                gu[idx[e]] += grad[e] * b[e] * u[r];
            }
        }
        let half = T::c(0.5);
        let gd: Vec<T> = (0..n).map(|i| -half * u[i] * u[i] * u[i] * gu[i]).collect();
        let mut out = Array1::zeros(nnz);
        for r in 0..n {
            for e in ip[r]..ip[r + 1] {
                let s = self.source[e];
                if s != usize::MAX {
                    out[s] += grad[e] * u[r] * u[idx[e]] + gd[r];
                }
            }
        }
        out
    }
}

/// Sampled dense–dense product (SDDMM): for every stored entry $(i, j)$ of
/// $A$, the inner product $\langle U_i, V_j \rangle$, aligned with `a.data()`
/// ($A$'s values are not used, only its structure).
///
/// These are the entries of $U V^\top$ on $A$'s sparsity pattern, e.g.
/// $\langle S_i, S_j\rangle$ for the sparse form of $\|A - S S^\top\|_F$
/// without forming the $N \times N$ product. Row-parallel; each value is one
/// dot product, so the result does not depend on the thread count.
///
/// ```
/// use graphpool::kernels::sparse::sddmm;
/// use ndarray::array;
/// use sprs::TriMat;
/// let mut t = TriMat::new((2, 2));
/// t.add_triplet(0, 1, 5.0);
/// t.add_triplet(1, 1, 5.0);
/// let a: sprs::CsMat<f64> = t.to_csr();
/// let u = array![[1.0, 2.0], [3.0, 4.0]];
/// assert_eq!(sddmm(a.view(), u.view(), u.view()).to_vec(), vec![11.0, 25.0]);
/// ```
pub fn sddmm<T: Scalar>(a: CsMatView<T>, u: ArrayView2<T>, v: ArrayView2<T>) -> Array1<T> {
    debug_assert_eq!(a.rows(), u.nrows());
    debug_assert_eq!(a.cols(), v.nrows());
    debug_assert_eq!(u.ncols(), v.ncols());
    let ip = a.indptr();
    let ip = ip.raw_storage();
    let base = ip[0];
    let idx = a.indices();
    let vals: Vec<T> = (0..a.rows())
        .into_par_iter()
        .flat_map_iter(|r| {
            let ur = u.row(r);
            (ip[r] - base..ip[r + 1] - base).map(move |e| ur.dot(&v.row(idx[e])))
        })
        .collect();
    Array1::from(vals)
}

/// VJP of [`sddmm`]: given $\bar p_e$ for every stored entry (aligned with
/// `a.data()`), returns $(\bar U, \bar V)$ with $\bar U = G V$ and
/// $\bar V = G^\top U$, where $G$ has $A$'s structure and values $\bar p$.
pub fn sddmm_vjp<T: Scalar>(
    a: CsMatView<T>,
    u: ArrayView2<T>,
    v: ArrayView2<T>,
    grad: ArrayView1<T>,
) -> (Array2<T>, Array2<T>) {
    debug_assert_eq!(grad.len(), a.nnz());
    let ip = a.indptr();
    let ip = ip.raw_storage();
    let base = ip[0];
    let indptr: Vec<usize> = ip.iter().map(|p| p - base).collect();
    let g = CsMat::new(
        (a.rows(), a.cols()),
        indptr,
        a.indices().to_vec(),
        grad.to_vec(),
    );
    let gu = spmm(g.view(), v);
    let gv = spmm_vjp_x(g.view(), u);
    (gu, gv)
}

/// Per-graph weighted total variation of a per-node matrix $S$ over the
/// stored entries of $A$:
/// $$\mathrm{TV}_g = \sum_{(i,j) \in E_g} a_{ij} \lVert S_i - S_j \rVert_1,$$
/// summed over every stored entry (both directions of an undirected edge,
/// a self loop once, which contributes 0). Length $B$. Never forms the
/// $N \times N$ matrix of pairwise distances; each graph's edges are summed
/// in fixed chunks of rows (deterministic, batch = graph alone).
pub fn segment_edge_l1<T: Scalar>(
    a: CsMatView<T>,
    s: ArrayView2<T>,
    segments: &crate::batch::Segments,
) -> Array1<T> {
    let ip = a.indptr();
    let ip = ip.raw_storage();
    let base = ip[0];
    let idx = a.indices();
    let w = a.data();
    let per_graph: Vec<T> = segments
        .ranges()
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|r| {
            super::reduce_chunked(
                r,
                |rows| {
                    let mut acc = T::zero();
                    for row in rows {
                        let si = s.row(row);
                        for e in ip[row] - base..ip[row + 1] - base {
                            let sj = s.row(idx[e]);
                            let l1 = Zip::from(&si)
                                .and(&sj)
                                .fold(T::zero(), |t, &p, &q| t + (p - q).abs());
                            acc += w[e] * l1;
                        }
                    }
                    acc
                },
                |x, y| x + y,
            )
        })
        .collect();
    Array1::from(per_graph)
}

/// VJP of [`segment_edge_l1`] given the gradient of each graph's total
/// variation: $(\bar S, \bar a)$ with
/// $\bar a_{ij} = \bar t_g \lVert S_i - S_j\rVert_1$ and
/// $\bar S_i = \bar t_g \big(\sum_{j:(i,j)} a_{ij}\,\mathrm{sign}(S_i - S_j) + \sum_{j:(j,i)} a_{ji}\,\mathrm{sign}(S_i - S_j)\big)$,
/// with $\mathrm{sign}(0) = 0$ (TensorFlow's and PyTorch's gradient of $|x|$
/// at 0). Incoming edges are read through [`transpose`], so every row is
/// computed by one task (deterministic).
pub fn segment_edge_l1_vjp<T: Scalar>(
    a: CsMatView<T>,
    s: ArrayView2<T>,
    segments: &crate::batch::Segments,
    grad: ArrayView1<T>,
) -> (Array2<T>, Array1<T>) {
    let sign = |v: T| {
        if v > T::zero() {
            T::one()
        } else if v < T::zero() {
            -T::one()
        } else {
            T::zero()
        }
    };
    let ip = a.indptr();
    let ip = ip.raw_storage();
    let base = ip[0];
    let idx = a.indices();
    let w = a.data();
    let row_grad = Array1::from(super::map_nodes(segments, |g, _| grad[g]));
    let g_edges: Vec<T> = (0..a.rows())
        .into_par_iter()
        .flat_map_iter(|r| {
            let si = s.row(r);
            let gr = row_grad[r];
            (ip[r] - base..ip[r + 1] - base).map(move |e| {
                let sj = s.row(idx[e]);
                gr * Zip::from(&si)
                    .and(&sj)
                    .fold(T::zero(), |t, &p, &q| t + (p - q).abs())
            })
        })
        .collect();
    let t = transpose(a);
    let tip = t.matrix.indptr();
    let tip = tip.raw_storage();
    let tidx = t.matrix.indices();
    let mut gs = Array2::zeros(s.raw_dim());
    gs.axis_chunks_iter_mut(Axis(0), ROW_BLOCK)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut block)| {
            for (j, mut out) in block.outer_iter_mut().enumerate() {
                let r = b * ROW_BLOCK + j;
                let si = s.row(r);
                // outgoing entries (r, c), then incoming entries (c, r)
                let outgoing = (ip[r] - base..ip[r + 1] - base).map(|e| (idx[e], w[e]));
                let incoming = (tip[r]..tip[r + 1]).map(|e| (tidx[e], w[t.source[e]]));
                for (c, wc) in outgoing.chain(incoming) {
                    let sj = s.row(c);
                    Zip::from(&mut out)
                        .and(&si)
                        .and(&sj)
                        .for_each(|o, &p, &q| *o += wc * sign(p - q));
                }
                out.mapv_inplace(|v| v * row_grad[r]);
            }
        });
    (gs, Array1::from(g_edges))
}

/// The number of stored entries of $A$ in each graph's rows (Spektral's
/// `len(a.values)` per graph), length $B$.
pub fn segment_nnz(a: CsMatView<'_, impl Scalar>, segments: &crate::batch::Segments) -> Vec<usize> {
    let ip = a.indptr();
    let ip = ip.raw_storage();
    segments.ranges().map(|r| ip[r.end] - ip[r.start]).collect()
}
