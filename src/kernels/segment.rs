//! Segment reductions over the graphs of a batch, with their vector-Jacobian
//! products.
//!
//! Conventions for an empty graph (documented contract): its sum, mean, max
//! and min are 0 (the mean divides by $\max(n, 1)$); its softmax is empty.

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis, Zip};

use super::{for_each_graph_block, for_each_node_row, map_nodes, reduce_chunked};
use crate::batch::Segments;
use crate::scalar::Scalar;

/// Segment sum: $\mathrm{out}_g = \sum_{n \in g} x_n$, shape $B \times F$.
pub fn segment_sum<T: Scalar>(x: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    let f = x.ncols();
    let mut out = Array2::zeros((segments.num_graphs(), f));
    for_each_graph_block(out.view_mut(), 1, |g, mut row| {
        let r = reduce_chunked(
            segments.range(g),
            |nodes| {
                let mut acc = Array1::<T>::zeros(f);
                for n in nodes {
                    acc += &x.row(n);
                }
                acc
            },
            |a, b| a + b,
        );
        row.row_mut(0).assign(&r);
    });
    out
}

/// VJP of [`segment_sum`]: every node of graph $g$ receives $\bar{\mathrm{out}}_g$.
pub fn segment_sum_vjp<T: Scalar>(grad: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    let mut gx = Array2::zeros((segments.num_nodes(), grad.ncols()));
    for_each_node_row(gx.view_mut(), segments, |g, _, mut row| {
        row.assign(&grad.row(g))
    });
    gx
}

/// Segment mean: $\mathrm{out}_g = \frac{1}{\max(n_g, 1)} \sum_{n \in g} x_n$.
pub fn segment_mean<T: Scalar>(x: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    let mut out = segment_sum(x, segments);
    for (g, mut row) in out.outer_iter_mut().enumerate() {
        let n = T::from_count(segments.size(g).max(1));
        row.mapv_inplace(|v| v / n);
    }
    out
}

/// VJP of [`segment_mean`]: every node of graph $g$ receives $\bar{\mathrm{out}}_g / n_g$.
pub fn segment_mean_vjp<T: Scalar>(grad: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    let mut gx = Array2::zeros((segments.num_nodes(), grad.ncols()));
    for_each_node_row(gx.view_mut(), segments, |g, _, mut row| {
        let n = T::from_count(segments.size(g).max(1));
        Zip::from(&mut row)
            .and(&grad.row(g))
            .for_each(|o, &v| *o = v / n);
    });
    gx
}

/// Which extremum a [`segment_extremum`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extremum {
    /// The largest value.
    Max,
    /// The smallest value.
    Min,
}

impl Extremum {
    #[inline]
    fn better<T: Scalar>(self, a: T, b: T) -> bool {
        match self {
            Extremum::Max => a > b,
            Extremum::Min => a < b,
        }
    }
}

/// Segment max or min per feature, shape $B \times F$; 0 for an empty graph.
pub fn segment_extremum<T: Scalar>(
    x: ArrayView2<T>,
    segments: &Segments,
    which: Extremum,
) -> Array2<T> {
    let f = x.ncols();
    let mut out = Array2::zeros((segments.num_graphs(), f));
    for_each_graph_block(out.view_mut(), 1, |g, mut row| {
        let nodes = segments.range(g);
        if nodes.is_empty() {
            return;
        }
        // chunks of a non-empty graph are never empty
        let r = reduce_chunked(
            nodes,
            |chunk| {
                let mut acc = x.row(chunk.start).to_owned();
                for n in chunk.start + 1..chunk.end {
                    Zip::from(&mut acc).and(&x.row(n)).for_each(|a, &v| {
                        if which.better(v, *a) {
                            *a = v
                        }
                    });
                }
                acc
            },
            |mut a, b| {
                Zip::from(&mut a).and(&b).for_each(|a, &v| {
                    if which.better(v, *a) {
                        *a = v
                    }
                });
                a
            },
        );
        row.row_mut(0).assign(&r);
    });
    out
}

/// Segment max per feature; see [`segment_extremum`].
pub fn segment_max<T: Scalar>(x: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    segment_extremum(x, segments, Extremum::Max)
}

/// Segment min per feature; see [`segment_extremum`].
pub fn segment_min<T: Scalar>(x: ArrayView2<T>, segments: &Segments) -> Array2<T> {
    segment_extremum(x, segments, Extremum::Min)
}

/// VJP of [`segment_extremum`], given its output `out`.
///
/// **Ties**: when several nodes of a graph attain the extremum of a feature,
/// the gradient is split equally among them, as TensorFlow's
/// `segment_max` and PyTorch's `scatter_reduce(amax)` both do. This keeps the
/// gradient equivariant under node permutations.
pub fn segment_extremum_vjp<T: Scalar>(
    x: ArrayView2<T>,
    segments: &Segments,
    out: ArrayView2<T>,
    grad: ArrayView2<T>,
) -> Array2<T> {
    let f = x.ncols();
    // number of nodes attaining the extremum, per graph and feature
    let mut counts = Array2::<T>::zeros((segments.num_graphs(), f));
    for_each_graph_block(counts.view_mut(), 1, |g, mut row| {
        let r = reduce_chunked(
            segments.range(g),
            |chunk| {
                let mut acc = Array1::<T>::zeros(f);
                for n in chunk {
                    Zip::from(&mut acc)
                        .and(&x.row(n))
                        .and(&out.row(g))
                        .for_each(|c, &v, &m| {
                            if v == m {
                                *c += T::one()
                            }
                        });
                }
                acc
            },
            |a, b| a + b,
        );
        row.row_mut(0).assign(&r);
    });
    let mut gx = Array2::zeros((segments.num_nodes(), f));
    for_each_node_row(gx.view_mut(), segments, |g, n, mut row| {
        Zip::from(&mut row)
            .and(&x.row(n))
            .and(&out.row(g))
            .and(&grad.row(g))
            .and(&counts.row(g))
            .for_each(|o, &v, &m, &d, &c| {
                if v == m {
                    *o = d / c
                }
            });
    });
    gx
}

/// Segment softmax of a per-node score $v$:
/// $$\alpha_n = \frac{e^{v_n - m_g}}{\sum_{j \in g} e^{v_j - m_g} + \varepsilon}, \quad m_g = \max_{j\in g} v_j.$$
///
/// Spektral's `unsorted_segment_softmax` uses $\varepsilon = 10^{-9}$, PyG's
/// `softmax` $10^{-16}$.
pub fn segment_softmax<T: Scalar>(v: ArrayView1<T>, segments: &Segments, eps: T) -> Array1<T> {
    let v2 = v.view().insert_axis(Axis(1));
    let m = segment_max(v2, segments);
    let e: Array1<T> = Array1::from(map_nodes(segments, |g, n| (v[n] - m[[g, 0]]).exp()));
    let z = segment_sum(e.view().insert_axis(Axis(1)), segments);
    Array1::from(map_nodes(segments, |g, n| e[n] / (z[[g, 0]] + eps)))
}

/// VJP of [`segment_softmax`] given its output $\alpha$:
/// $\bar v_n = \alpha_n(\bar\alpha_n - \sum_{j\in g}\alpha_j\bar\alpha_j)$
/// (exact for any $\varepsilon$; the shift by the max has zero derivative up
/// to the $\varepsilon$ term).
pub fn segment_softmax_vjp<T: Scalar>(
    alpha: ArrayView1<T>,
    grad: ArrayView1<T>,
    segments: &Segments,
) -> Array1<T> {
    let prod = &alpha * &grad;
    let dots = segment_sum(prod.view().insert_axis(Axis(1)), segments);
    Array1::from(map_nodes(segments, |g, n| {
        alpha[n] * (grad[n] - dots[[g, 0]])
    }))
}

/// Per-graph product $S_g^\top Y_g$ for a stacked per-node matrix $S$
/// ($N \times K$) and $Y$ ($N \times F$): the result stacks the $B$ blocks of
/// $K \times F$ into a $(B K) \times F$ matrix. This is the reduce step of every
/// dense-assignment pool and, with $S = \mathbf{1}$, a segment sum.
pub fn segment_matmul_tn<T: Scalar>(
    s: ArrayView2<T>,
    y: ArrayView2<T>,
    segments: &Segments,
) -> Array2<T> {
    let (k, f) = (s.ncols(), y.ncols());
    let mut out = Array2::zeros((segments.num_graphs() * k, f));
    for_each_graph_block(out.view_mut(), k, |g, mut block| {
        let r = reduce_chunked(
            segments.range(g),
            |chunk| {
                let sc = s.slice(s![chunk.clone(), ..]);
                let yc = y.slice(s![chunk, ..]);
                sc.t().dot(&yc)
            },
            |a, b| a + b,
        );
        block.assign(&r);
    });
    out
}

/// VJP of [`segment_matmul_tn`]: with $\bar O_g$ the gradient of block $g$,
/// $\bar S_g = Y_g \bar O_g^\top$ and $\bar Y_g = S_g \bar O_g$.
pub fn segment_matmul_tn_vjp<T: Scalar>(
    s: ArrayView2<T>,
    y: ArrayView2<T>,
    segments: &Segments,
    grad: ArrayView2<T>,
) -> (Array2<T>, Array2<T>) {
    let k = s.ncols();
    let mut gs = Array2::zeros(s.raw_dim());
    let mut gy = Array2::zeros(y.raw_dim());
    for_each_node_row(gs.view_mut(), segments, |g, n, mut row| {
        let og = grad.slice(s![g * k..(g + 1) * k, ..]);
        row.assign(&og.dot(&y.row(n)));
    });
    for_each_node_row(gy.view_mut(), segments, |g, n, mut row| {
        let og = grad.slice(s![g * k..(g + 1) * k, ..]);
        row.assign(&s.row(n).dot(&og));
    });
    (gs, gy)
}
