//! Global pools: one vector per graph by sum, mean or max over its nodes.

use ndarray::{Array2, ArrayView2};

use crate::batch::{non_finite_at, DisjointBatch, Segments};
use crate::error::{PoolError, Result};
use crate::framework::layer::check_grad_shape;
use crate::framework::{Gradients, Layer};
use crate::kernels::segment::{
    segment_extremum_vjp, segment_max, segment_mean_checked, segment_mean_vjp, segment_sum_checked,
    segment_sum_vjp,
};
use crate::nn::Params;
use crate::scalar::Scalar;

/// Implements [`Layer`] for a parameterless global pool given its forward
/// (the output and the flat index of its first non-finite entry, found as
/// the rows are written) and its VJP (which may use the input and the
/// forward's output).
macro_rules! parameterless_global_pool {
    ($name:ident, $fwd:expr, $vjp:expr) => {
        impl<T: Scalar> Layer<T> for $name {
            type Output = Array2<T>;
            type Cache = Array2<T>;

            fn forward(&self, batch: &DisjointBatch<T>) -> Result<(Array2<T>, Array2<T>)> {
                let out = self.call(batch)?;
                Ok((out.clone(), out))
            }

            /// The forward pass without the copy of the output its cache is.
            fn call(&self, batch: &DisjointBatch<T>) -> Result<Array2<T>> {
                let (out, bad) = $fwd(batch.x().view(), batch.segments());
                match bad {
                    None => Ok(out),
                    Some(p) => Err(non_finite_at(
                        "pooled x (overflow: features too large for the float type)",
                        &out.view(),
                        p,
                    )),
                }
            }

            fn backward(
                &self,
                batch: &DisjointBatch<T>,
                out: &Array2<T>,
                grad: &Array2<T>,
            ) -> Result<Gradients<T>> {
                // the output is B x F: a batch of other B or F is not the forward's
                let expected = [batch.num_graphs(), batch.num_features()];
                if out.shape() != expected {
                    return Err(PoolError::ShapeMismatch {
                        what: "batch passed to backward (it must be the forward pass's batch)"
                            .into(),
                        expected: format!("{} graphs, {} features", out.nrows(), out.ncols()),
                        got: format!("{} graphs, {} features", expected[0], expected[1]),
                    });
                }
                check_grad_shape("pooled x", out.shape(), grad)?;
                let gx = $vjp(batch, out, grad);
                // finite by construction, no scan needed: every entry is an
                // entry of the (checked, finite) output gradient, divided by a
                // count >= 1 (mean: the graph's size; max: its ties) or 0
                debug_assert!(gx
                    .as_slice()
                    .is_none_or(|s| crate::kernels::rows::first_non_finite(s).is_none()));
                Ok(Gradients {
                    x: gx,
                    edge_weights: $crate::framework::layer::zero_edge_grad(batch),
                    params: Params::new(),
                })
            }

            fn params(&self) -> &Params<T> {
                T::no_params()
            }
        }
    };
}

/// Sum of each graph's node features (Spektral `GlobalSumPool`, PyG `global_add_pool`):
/// $$X'_g = \sum_{n \in g} X_n,$$
/// output $B \times F$; an empty graph gives a zero row. A sum beyond the
/// float type's range is a [`crate::PoolError::NonFinite`] (see
/// [`Layer`]'s contract for bad and degenerate inputs).
///
/// ```
/// use graphpool::{layers::GlobalSumPool, framework::Layer, DisjointBatch};
/// use ndarray::array;
/// let b = DisjointBatch::from_graph_ids(array![[1.0_f64], [2.0], [4.0]], sprs::CsMat::zero((3, 3)), &[0, 0, 2], 3)?;
/// assert_eq!(GlobalSumPool.call(&b)?, array![[3.0], [0.0], [4.0]]);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalSumPool;

parameterless_global_pool!(
    GlobalSumPool,
    segment_sum_checked,
    |b: &DisjointBatch<T>, _out: &Array2<T>, g: &Array2<T>| segment_sum_vjp(g.view(), b.segments())
);

/// Mean of each graph's node features (Spektral `GlobalAvgPool`, PyG `global_mean_pool`):
/// $$X'_g = \frac{1}{\max(n_g, 1)} \sum_{n \in g} X_n,$$
/// output $B \times F$; an empty graph gives a zero row (the mean divides
/// by $\max(n_g, 1)$, never $0/0$). A sum beyond the float type's range is
/// a [`crate::PoolError::NonFinite`].
///
/// ```
/// use graphpool::{layers::GlobalAvgPool, framework::Layer, DisjointBatch};
/// use ndarray::array;
/// let b = DisjointBatch::from_graph_ids(array![[1.0_f64], [2.0], [4.0]], sprs::CsMat::zero((3, 3)), &[0, 0, 1], 2)?;
/// assert_eq!(GlobalAvgPool.call(&b)?, array![[1.5], [4.0]]);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalAvgPool;

parameterless_global_pool!(
    GlobalAvgPool,
    segment_mean_checked,
    |b: &DisjointBatch<T>, _out: &Array2<T>, g: &Array2<T>| segment_mean_vjp(
        g.view(),
        b.segments()
    )
);

/// Feature-wise max over each graph's nodes (Spektral `GlobalMaxPool`, PyG `global_max_pool`):
/// $$X'_{gf} = \max_{n \in g} X_{nf},$$
/// output $B \times F$; an empty graph gives a zero row, a single node its
/// own features.
///
/// **Gradient at ties**: split equally among the nodes attaining the max,
/// as TensorFlow and PyTorch do.
///
/// ```
/// use graphpool::{layers::GlobalMaxPool, framework::Layer, DisjointBatch};
/// use ndarray::array;
/// let b = DisjointBatch::from_graph_ids(array![[1.0_f64, -1.0], [2.0, -3.0]], sprs::CsMat::zero((2, 2)), &[0, 0], 1)?;
/// assert_eq!(GlobalMaxPool.call(&b)?, array![[2.0, -1.0]]);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalMaxPool;

parameterless_global_pool!(
    GlobalMaxPool,
    // the max of finite values (a batch's features are checked when it is
    // built) is one of them: the output needs no scan
    |x: ArrayView2<T>, s: &Segments| {
        let out = segment_max(x, s);
        debug_assert!(crate::kernels::rows::first_non_finite_entry(&out).is_none());
        (out, None)
    },
    |b: &DisjointBatch<T>, out: &Array2<T>, g: &Array2<T>| {
        segment_extremum_vjp(b.x().view(), b.segments(), out.view(), g.view())
    }
);
