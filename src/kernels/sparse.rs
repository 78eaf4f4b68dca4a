//! Sparse kernels on CSR matrices: row-parallel products with dense
//! matrices, transposition that remembers where each entry came from, and
//! induced subgraphs. None of them ever forms a dense $N \times N$ matrix.

use ndarray::{Array1, Array2, ArrayView2, Axis, Zip};
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
