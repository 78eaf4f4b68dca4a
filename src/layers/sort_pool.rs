//! SortPool: the k nodes with the largest last feature, per graph.

use ndarray::Array3;
use rayon::prelude::*;

use crate::batch::DisjointBatch;
use crate::error::{PoolError, Result};
use crate::framework::layer::{
    check_grad_shape, finite_gradients, zero_edge_grad, InputSignature, LayerStamp,
};
use crate::framework::runs::split_rows;
use crate::framework::{Gradients, Layer};
use crate::kernels::sort::segment_argsort_desc;
use crate::nn::Params;
use crate::scalar::Scalar;

/// SortPool (Zhang et al., *An End-to-End Deep Learning Architecture for
/// Graph Classification*, AAAI 2018; Spektral `SortPool`, PyG
/// `SortAggregation`): per graph, the nodes sorted by their last feature,
/// descending, the first $k$ kept and zero rows appended up to $k$.
/// Output $B \times k \times F$.
///
/// * Ties in the last feature: the node with the smaller index first.
/// * Only real nodes are sorted; padding always comes last (Spektral's
///   disjoint mode pads before sorting, so padding can outrank nodes with a
///   negative last feature: a defect graphpool does not reproduce, as PyG).
/// * A $k$ so large that the $B \times k \times F$ output cannot be
///   allocated is a [`PoolError::InvalidConfig`] from the forward pass.
/// * An empty graph gives $k$ zero rows; a graph of fewer than $k$ nodes
///   its nodes, then zero rows. Features of any finite magnitude are copied,
///   never combined, so nothing overflows.
///
/// ```
/// use graphpool::{layers::SortPool, framework::Layer, DisjointBatch};
/// use ndarray::array;
/// let b = DisjointBatch::single(array![[1.0_f64, -1.0], [2.0, 5.0]], sprs::CsMat::zero((2, 2)))?;
/// let y = SortPool::new(3)?.call(&b)?;
/// assert_eq!(y.index_axis(ndarray::Axis(0), 0), array![[2.0, 5.0], [1.0, -1.0], [0.0, 0.0]]);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortPool {
    k: usize,
}

/// Saved state of [`SortPool`]'s forward pass: the kept nodes of each graph, in output order.
#[derive(Debug, Clone)]
pub struct SortPoolCache {
    kept: Vec<Vec<usize>>,
    out_shape: [usize; 3],
    input: InputSignature,
    stamp: LayerStamp,
}

impl SortPool {
    /// Keeps `k` nodes per graph.
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] if `k` is 0.
    pub fn new(k: usize) -> Result<Self> {
        if k == 0 {
            return Err(PoolError::InvalidConfig {
                name: "k".into(),
                value: "0".into(),
                expected: "a positive number of nodes to keep".into(),
            });
        }
        Ok(Self { k })
    }

    /// The number of rows per graph.
    pub fn k(&self) -> usize {
        self.k
    }
}

impl<T: Scalar> Layer<T> for SortPool {
    type Output = Array3<T>;
    type Cache = SortPoolCache;

    fn forward(&self, batch: &DisjointBatch<T>) -> Result<(Array3<T>, SortPoolCache)> {
        let f = batch.num_features();
        if f == 0 {
            return Err(PoolError::ShapeMismatch {
                what: "x for SortPool".into(),
                expected: "at least one feature (nodes are sorted by the last)".into(),
                got: "0 features".into(),
            });
        }
        // B x k x F must be allocatable (k = usize::MAX is accepted by `new`)
        crate::nn::params::check_array_size::<T>("k", &[batch.num_graphs(), self.k, f])?;
        let x = batch.x();
        let key = x.column(f - 1);
        let mut kept = segment_argsort_desc(key, batch.segments());
        for idx in &mut kept {
            idx.truncate(self.k);
        }
        let mut out = Array3::zeros((batch.num_graphs(), self.k, f));
        let xv = x.view();
        let xs = crate::kernels::rows::row_major(&xv);
        out.as_slice_mut()
            .expect("a new array is standard layout")
            .par_chunks_mut(self.k.max(1) * f)
            .zip(kept.par_iter())
            .for_each(|(block, idx)| {
                for (row, &n) in block.chunks_exact_mut(f).zip(idx) {
                    row.copy_from_slice(&xs[n * f..(n + 1) * f]);
                }
            });
        let out_shape = [batch.num_graphs(), self.k, f];
        let input = InputSignature::of(batch);
        Ok((
            out,
            SortPoolCache {
                kept,
                out_shape,
                input,
                stamp: LayerStamp::of("SortPool", &self.k, T::no_params()),
            },
        ))
    }

    fn backward(
        &self,
        batch: &DisjointBatch<T>,
        cache: &SortPoolCache,
        grad: &Array3<T>,
    ) -> Result<Gradients<T>> {
        let stamp = LayerStamp::of("SortPool", &self.k, T::no_params());
        cache.stamp.check(stamp, "SortPool")?;
        cache.input.check(batch)?;
        check_grad_shape("pooled x", &cache.out_shape, grad)?;
        // each graph's kept rows get their rows of the gradient, the rest
        // keep the fresh matrix's zeros: in parallel over the graphs, whose
        // rows are disjoint
        let (n, f) = (batch.num_nodes(), batch.num_features());
        let mut gx = crate::kernels::rows::fresh_matrix(n, f);
        if f > 0 {
            let offsets = batch.segments().offsets();
            let grad = grad.as_standard_layout();
            let gs = grad.as_slice().expect("standard layout");
            let k = cache.out_shape[1];
            let sizes = offsets.windows(2).map(|w| w[1] - w[0]);
            let blocks = split_rows(gx.as_slice_mut().expect("standard"), f, sizes);
            blocks
                .into_par_iter()
                .zip(cache.kept.par_iter())
                .enumerate()
                .for_each(|(g, (rows, idx))| {
                    for (j, &node) in idx.iter().enumerate() {
                        let r = (node - offsets[g]) * f;
                        let from = (g * k + j) * f;
                        rows[r..r + f].copy_from_slice(&gs[from..from + f]);
                    }
                });
        }
        finite_gradients(
            "SortPool",
            Gradients {
                x: gx,
                edge_weights: zero_edge_grad(batch),
                params: Params::new(),
            },
        )
    }

    fn params(&self) -> &Params<T> {
        T::no_params()
    }
}
