//! Dense (fully connected) layers $y = f(xW + b)$ and the row-parallel matmul.

use std::ops::Range;

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::{Activation, Params};
use crate::error::{PoolError, Result};
use crate::kernels::{reduce_chunked, reduce_chunked_rows, rows, ROW_BLOCK};
use crate::scalar::Scalar;

/// Widest $W$ (columns) that [`matmul`] and [`matmul_acc`] compute as
/// per-row dot products instead of a packed GEMM: for a score
/// ($C = 1$) the GEMM copies every block of $X$ into its packing buffer,
/// which costs more than the product itself.
pub const NARROW_COLS: usize = 4;

/// Row-parallel $X W$ ($N \times F$ times $F \times C$), optionally plus a bias
/// row. Rows are computed in fixed blocks; each row's value does not depend
/// on the block it falls in, so results are thread-count independent.
///
/// For $C \le$ [`NARROW_COLS`] every entry is one [`rows::dot`] of a row of
/// $X$ with a column of $W$ (plus the bias), on plain slices; up to
/// [`rows::SMALL_COLS`] columns every row is [`rows::rows_times`] (no
/// packing of $X$); wider products go through ndarray's GEMM per block of
/// rows.
pub fn matmul<T: Scalar>(
    x: ArrayView2<T>,
    w: ArrayView2<T>,
    bias: Option<ArrayView1<T>>,
) -> Array2<T> {
    if w.ncols() <= NARROW_COLS {
        let wt = w.t().as_standard_layout().into_owned();
        let ws = wt.as_slice().expect("standard layout");
        let xs = rows::row_major(&x);
        let f = x.ncols();
        let b = bias.map(|b| b.to_vec());
        return rows::build_rows(x.nrows(), w.ncols(), |r, out| {
            let xr = &xs[r * f..(r + 1) * f];
            for (j, o) in out.iter_mut().enumerate() {
                let v = rows::dot(xr, &ws[j * f..(j + 1) * f]);
                *o = match &b {
                    Some(b) => v + b[j],
                    None => v,
                };
            }
        });
    }
    let mut out = rows::fresh_matrix(x.nrows(), w.ncols());
    if w.ncols() <= rows::SMALL_COLS {
        small_product(x, w, bias, false, &mut out);
        return out;
    }
    out.axis_chunks_iter_mut(Axis(0), ROW_BLOCK)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut block)| {
            let r0 = b * ROW_BLOCK;
            let xb = x.slice(s![r0..r0 + block.nrows(), ..]);
            ndarray::linalg::general_mat_mul(T::one(), &xb, &w, T::zero(), &mut block);
            if let Some(bias) = bias {
                block += &bias;
            }
        });
    out
}

/// $\mathrm{out} \mathrel{+}= X W$, row-parallel in the fixed blocks of
/// [`matmul`]: each row is its product added once to the row's old value
/// (the same bits as adding [`matmul`]'s result), without allocating the
/// product.
pub fn matmul_acc<T: Scalar>(x: ArrayView2<T>, w: ArrayView2<T>, out: &mut Array2<T>) {
    debug_assert_eq!(out.dim(), (x.nrows(), w.ncols()));
    if w.ncols() <= NARROW_COLS {
        let wt = w.t().as_standard_layout().into_owned();
        let ws = wt.as_slice().expect("standard layout");
        let xs = rows::row_major(&x);
        let f = x.ncols();
        rows::update_rows(out, |r, o| {
            let xr = &xs[r * f..(r + 1) * f];
            for (j, o) in o.iter_mut().enumerate() {
                *o += rows::dot(xr, &ws[j * f..(j + 1) * f]);
            }
        });
        return;
    }
    if w.ncols() <= rows::SMALL_COLS && out.is_standard_layout() {
        small_product(x, w, None, true, out);
        return;
    }
    out.axis_chunks_iter_mut(Axis(0), ROW_BLOCK)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut block)| {
            let r0 = b * ROW_BLOCK;
            let xb = x.slice(s![r0..r0 + block.nrows(), ..]);
            ndarray::linalg::general_mat_mul(T::one(), &xb, &w, T::one(), &mut block);
        });
}

/// [`rows::rows_times`] over fixed blocks of [`ROW_BLOCK`] rows in
/// parallel: `out` $= XW$ (+ bias), or `out` $\mathrel{+}= XW$ when
/// `accumulate`, for $W$ at most [`rows::SMALL_COLS`] wide.
fn small_product<T: Scalar>(
    x: ArrayView2<T>,
    w: ArrayView2<T>,
    bias: Option<ArrayView1<T>>,
    accumulate: bool,
    out: &mut Array2<T>,
) {
    let (f, c) = (x.ncols(), w.ncols());
    if c == 0 {
        return;
    }
    let xs = rows::row_major(&x);
    let ws = rows::row_major(&w);
    let b = bias.map(|b| b.to_vec());
    let os = out
        .as_slice_mut()
        .expect("the output is in standard layout");
    os.par_chunks_mut(ROW_BLOCK * c)
        .enumerate()
        .for_each(|(i, block)| {
            let r0 = i * ROW_BLOCK;
            let rows_here = block.len() / c;
            rows::rows_times(
                &xs[r0 * f..(r0 + rows_here) * f],
                f,
                &ws,
                c,
                b.as_deref(),
                accumulate,
                block,
            );
        });
}

/// $(\bar W = X^\top \bar Y,\ \bar b = \sum_n \bar Y_n)$, the parameter
/// part of [`matmul_vjp`]; the reductions over rows use fixed chunks
/// (deterministic).
pub fn matmul_vjp_params<T: Scalar>(
    x: ArrayView2<T>,
    grad: ArrayView2<T>,
) -> (Array2<T>, Array1<T>) {
    reduce_chunked(
        0..x.nrows(),
        |r| {
            let xs = x.slice(s![r.clone(), ..]);
            let gs = grad.slice(s![r, ..]);
            (transpose_times(xs, gs), rows::column_sums(gs))
        },
        |(a, b), (c2, d)| (a + c2, b + d),
    )
}

/// $X^\top G$ for one chunk of rows ($X$: $R \times F$, $G$: $R \times C$):
/// [`rows::outer_sum`] (the rows added in order, no packing) when $C \le$
/// [`rows::SMALL_COLS`], else ndarray's GEMM, the split of [`matmul`].
pub(crate) fn transpose_times<T: Scalar>(x: ArrayView2<T>, g: ArrayView2<T>) -> Array2<T> {
    let (f, c) = (x.ncols(), g.ncols());
    if c > rows::SMALL_COLS {
        return x.t().dot(&g);
    }
    let (xs, gs) = (rows::row_major(&x), rows::row_major(&g));
    let mut out = vec![T::zero(); f * c];
    rows::outer_sum(&xs, f, &gs, c, &mut out);
    Array2::from_shape_vec((f, c), out).expect("F * C entries")
}

/// `out += X W` for a piece of rows: `x` and `out` hold the rows
/// `r0..r0 + x.nrows()` of a larger product, with `r0` a multiple of
/// [`ROW_BLOCK`]. The same products, block by block, as [`matmul_acc`]
/// (sequential here: the caller runs the pieces in parallel).
pub(crate) fn matmul_acc_piece<T: Scalar>(
    x: ArrayView2<T>,
    w: ArrayView2<T>,
    out: ArrayViewMut2<T>,
) {
    matmul_piece(x, w, out, true);
}

/// Whether [`matmul_piece`] forms each entry's product before it touches
/// the entry (and then adds it once to the old value when accumulating):
/// the paths other than the GEMM's, which adds its product into `out` in
/// pieces of the inner dimension.
fn forms_products_first<T>(w: &ArrayView2<T>, out: &ArrayViewMut2<T>) -> bool {
    w.ncols() <= NARROW_COLS || (w.ncols() <= rows::SMALL_COLS && out.is_standard_layout())
}

/// `out = X W`, or `out += X W` with `accumulate`, for a piece of rows as
/// [`matmul_acc_piece`] takes it; only `out += X W` where the GEMM adds the
/// product ([`forms_products_first`] is false).
fn matmul_piece<T: Scalar>(
    x: ArrayView2<T>,
    w: ArrayView2<T>,
    mut out: ArrayViewMut2<T>,
    accumulate: bool,
) {
    if forms_products_first(&w, &out) {
        if w.ncols() <= NARROW_COLS {
            let wt = w.t().as_standard_layout().into_owned();
            let ws = wt.as_slice().expect("standard layout");
            let f = x.ncols();
            for (xr, mut o) in x.outer_iter().zip(out.outer_iter_mut()) {
                let xr = xr.as_standard_layout();
                let xr = xr.as_slice().expect("standard layout");
                for (j, o) in o.iter_mut().enumerate() {
                    let v = rows::dot(xr, &ws[j * f..(j + 1) * f]);
                    *o = if accumulate { *o + v } else { v };
                }
            }
        } else {
            // the rows of `small_product` (a row's bits do not depend on
            // the block it falls in)
            let os = out.as_slice_mut().expect("standard layout");
            let (xs, ws) = (rows::row_major(&x), rows::row_major(&w));
            rows::rows_times(&xs, x.ncols(), &ws, w.ncols(), None, accumulate, os);
        }
        return;
    }
    // the GEMM's path only accumulates: `matmul_plus_piece` puts R first
    debug_assert!(accumulate, "the GEMM's path adds into `out`");
    for (b, mut block) in out.axis_chunks_iter_mut(Axis(0), ROW_BLOCK).enumerate() {
        let r0 = b * ROW_BLOCK;
        let xb = x.slice(s![r0..r0 + block.nrows(), ..]);
        ndarray::linalg::general_mat_mul(T::one(), &xb, &w, T::one(), &mut block);
    }
}

/// `out = R + X W` for a piece of rows as [`matmul_acc_piece`] takes it,
/// where `add_rest(out)` adds to every entry its term of $R$, formed on
/// its own and added once to the entry's value (as [`rows::rows_times`]
/// with `accumulate` adds): the values of writing $R$ into `out` and then
/// calling [`matmul_acc_piece`]. Where the product is formed before it is
/// added, it is written first and $R$ added to it, the two terms of each
/// sum swapped (IEEE addition commutes; only a NaN's payload could differ
/// if both terms were NaN); on the GEMM's path $R$ comes first.
fn matmul_plus_piece<T, A>(
    x: ArrayView2<T>,
    w: ArrayView2<T>,
    mut out: ArrayViewMut2<T>,
    add_rest: A,
) where
    T: Scalar,
    A: FnOnce(ArrayViewMut2<T>),
{
    if forms_products_first(&w, &out) {
        matmul_piece(x, w, out.view_mut(), false);
        add_rest(out);
    } else {
        out.fill(T::zero());
        add_rest(out.view_mut());
        matmul_piece(x, w, out, true);
    }
}

/// The backward pass of a dense layer $Y = f(X W + b)$ whose gradient with
/// respect to the pre-activation, $\bar Z$, is produced piece by piece by
/// `grad_pre(rows)` (a `rows.len()` $\times C$ matrix) instead of being
/// held whole: adds $\bar X = \bar Z W^\top$ into `gx` and returns
/// $(\bar W = X^\top \bar Z,\ \bar b = \sum_n \bar Z_n)$.
///
/// The pieces are the fixed [`CHUNK`](crate::kernels::CHUNK)-node chunks of [`reduce_chunked`]
/// (in parallel), so the bits are those of [`matmul_acc`] and
/// [`matmul_vjp_params`] on the whole $\bar Z$ (thread-count independent),
/// while the memory held is one chunk of $\bar Z$ per thread: a layer
/// whose $\bar Z$ is a cheap element-wise function of its cache (a gate, an
/// activation's derivative) never materialises the $N \times C$ matrix.
pub fn dense_backward_streamed<T, G>(
    x: ArrayView2<T>,
    w: ArrayView2<T>,
    grad_pre: G,
    gx: &mut Array2<T>,
) -> (Array2<T>, Array1<T>)
where
    T: Scalar,
    G: Fn(Range<usize>) -> Array2<T> + Sync,
{
    debug_assert_eq!(gx.dim(), x.dim());
    let wt = w.t();
    reduce_chunked_rows(
        gx,
        |r, gx_rows| {
            let g = grad_pre(r.clone());
            debug_assert_eq!(g.dim(), (r.len(), w.ncols()));
            matmul_acc_piece(g.view(), wt, gx_rows);
            params_piece(x.slice(s![r, ..]), &g)
        },
        |(a, b), (c, d)| (a + c, b + d),
    )
}

/// [`dense_backward_streamed`] into a fresh $\bar X = R + \bar Z W^\top$
/// whose other term $R$ ($N \times F$) is formed chunk by chunk too:
/// `add_rest(rows, out)` adds the rows `rows` of $R$ into `out` (those rows
/// of $\bar X$), each entry's term formed on its own and added once to it,
/// as [`rows::rows_times`] with `accumulate` adds. Returns
/// $(\bar X, \bar W, \bar b)$ with the values of writing $R$ into `gx` and
/// calling [`dense_backward_streamed`] (the two terms of each entry's sum
/// may be swapped: IEEE addition commutes). $R$ is never held whole: each
/// chunk's rows of $\bar X$ are written once and finished while they are in
/// cache, instead of $R$ written to memory and read back.
///
/// ```
/// use graphpool::nn::{dense_backward_streamed, dense_backward_streamed_into};
/// use ndarray::{array, s};
/// let x = array![[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]];
/// let w = array![[1.0, 0.5, 0.0], [2.0, -1.0, 1.0]];
/// let g = array![[1.0, 0.0, 2.0], [0.0, -1.0, 1.0], [2.0, 1.0, 0.0]];
/// let rest = array![[0.25, -4.0], [1.0, 2.0], [-3.0, 0.5]];
/// let (gx, gw, gb) = dense_backward_streamed_into(
///     x.view(),
///     w.view(),
///     |r| g.slice(s![r, ..]).to_owned(),
///     |r, mut out| out += &rest.slice(s![r, ..]),
/// );
/// let mut whole = rest.clone();
/// let (hw, hb) = dense_backward_streamed(x.view(), w.view(), |r| g.slice(s![r, ..]).to_owned(), &mut whole);
/// assert_eq!((gx, gw, gb), (whole, hw, hb));
/// ```
pub fn dense_backward_streamed_into<T, G, A>(
    x: ArrayView2<T>,
    w: ArrayView2<T>,
    grad_pre: G,
    add_rest: A,
) -> (Array2<T>, Array2<T>, Array1<T>)
where
    T: Scalar,
    G: Fn(Range<usize>) -> Array2<T> + Sync,
    A: Fn(Range<usize>, ArrayViewMut2<'_, T>) + Sync,
{
    // every entry written by the chunk that holds it
    let mut gx = rows::fresh_matrix(x.nrows(), x.ncols());
    let wt = w.t();
    let (gw, gb) = reduce_chunked_rows(
        &mut gx,
        |r, gx_rows| {
            let g = grad_pre(r.clone());
            debug_assert_eq!(g.dim(), (r.len(), w.ncols()));
            matmul_plus_piece(g.view(), wt, gx_rows, |out| add_rest(r.clone(), out));
            params_piece(x.slice(s![r, ..]), &g)
        },
        |(a, b), (c, d)| (a + c, b + d),
    );
    (gx, gw, gb)
}

/// One chunk's share of a dense layer's parameter gradients, from its rows
/// of $X$ and of $\bar Z$: $(X_r^\top \bar Z_r,\ \sum_{n \in r} \bar Z_n)$
/// (the streamed backward passes add these up in chunk order).
fn params_piece<T: Scalar>(xs: ArrayView2<T>, g: &Array2<T>) -> (Array2<T>, Array1<T>) {
    (transpose_times(xs, g.view()), rows::column_sums(g.view()))
}

/// [`dense_backward_streamed`] for two dense layers that read the same
/// $X$, $Y_1 = f_1(X W_1 + b_1)$ and $Y_2 = f_2(X W_2 + b_2)$, whose
/// pre-activation gradients `grad_pre(rows)` forms together, a chunk at a
/// time (a gate and its gated factor, say, recomputed from the chunk's
/// rows of $X$). Adds $\bar Z_1 W_1^\top$ then $\bar Z_2 W_2^\top$ into each
/// row of `gx` and returns $((\bar W_1, \bar b_1), (\bar W_2, \bar b_2))$:
/// the bits of [`dense_backward_streamed`] for layer 1 and then for layer 2
/// on the same `gx`, in one pass over the chunks instead of two.
///
/// ```
/// use graphpool::nn::{dense_backward_streamed, dense_pair_backward_streamed};
/// use ndarray::{array, s, Array2};
/// let x = array![[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]];
/// let (w1, w2) = (array![[1.0], [2.0]], array![[0.0, 1.0], [1.0, -1.0]]);
/// let g1 = array![[1.0], [0.0], [2.0]];
/// let g2 = array![[1.0, 1.0], [-1.0, 0.5], [0.0, 3.0]];
/// let rows = |g: &Array2<f64>, r: std::ops::Range<usize>| g.slice(s![r, ..]).to_owned();
/// let mut gx = Array2::zeros((3, 2));
/// let ((gw1, gb1), (gw2, gb2)) = dense_pair_backward_streamed(
///     x.view(), w1.view(), w2.view(), |r| (rows(&g1, r.clone()), rows(&g2, r)), &mut gx);
/// let mut twice = Array2::zeros((3, 2));
/// let (hw1, hb1) = dense_backward_streamed(x.view(), w1.view(), |r| rows(&g1, r), &mut twice);
/// let (hw2, hb2) = dense_backward_streamed(x.view(), w2.view(), |r| rows(&g2, r), &mut twice);
/// assert_eq!(gw1, array![[2.0], [2.0]]); // X^T g1
/// assert_eq!((gx, gw1, gb1, gw2, gb2), (twice, hw1, hb1, hw2, hb2));
/// ```
#[allow(clippy::type_complexity)]
pub fn dense_pair_backward_streamed<T, G>(
    x: ArrayView2<T>,
    w1: ArrayView2<T>,
    w2: ArrayView2<T>,
    grad_pre: G,
    gx: &mut Array2<T>,
) -> ((Array2<T>, Array1<T>), (Array2<T>, Array1<T>))
where
    T: Scalar,
    G: Fn(Range<usize>) -> (Array2<T>, Array2<T>) + Sync,
{
    debug_assert_eq!(gx.dim(), x.dim());
    reduce_chunked_rows(
        gx,
        |r, mut gx_rows| {
            let (g1, g2) = grad_pre(r.clone());
            debug_assert_eq!(g1.dim(), (r.len(), w1.ncols()));
            debug_assert_eq!(g2.dim(), (r.len(), w2.ncols()));
            matmul_acc_piece(g1.view(), w1.t(), gx_rows.view_mut());
            matmul_acc_piece(g2.view(), w2.t(), gx_rows);
            let xs = x.slice(s![r, ..]);
            (params_piece(xs, &g1), params_piece(xs, &g2))
        },
        |((a, b), (c, d)), ((e, f), (g, h))| ((a + e, b + f), (c + g, d + h)),
    )
}

/// VJP of [`matmul`]: returns $(\bar X = \bar Y W^\top,\ \bar W = X^\top \bar Y,\ \bar b = \sum_n \bar Y_n)$.
/// The reductions over rows use fixed chunks (deterministic).
pub fn matmul_vjp<T: Scalar>(
    x: ArrayView2<T>,
    w: ArrayView2<T>,
    grad: ArrayView2<T>,
) -> (Array2<T>, Array2<T>, Array1<T>) {
    let gx = matmul(grad, w.t(), None);
    let (gw, gb) = matmul_vjp_params(x, grad);
    debug_assert_eq!(gw.dim(), (x.ncols(), w.ncols()));
    (gx, gw, gb)
}

/// A dense layer whose weights live in a [`Params`] under
/// `{prefix}kernel` $(F, C)$ and, if it has a bias, `{prefix}bias` $(C)$.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// Parameter-name prefix, e.g. `"mlp.0."` or `""`.
    pub prefix: String,
    /// Whether a bias is added.
    pub use_bias: bool,
    /// The activation applied to $xW + b$.
    pub activation: Activation,
}

/// What [`Dense::forward`] keeps for the backward pass.
#[derive(Debug, Clone)]
pub struct DenseCache<T: Scalar> {
    /// Pre-activation $xW + b$.
    pre: Array2<T>,
    /// Output $f(xW + b)$; `None` for the linear activation, whose output
    /// is `pre` itself (not stored twice).
    out: Option<Array2<T>>,
}

impl<T: Scalar> DenseCache<T> {
    /// The pre-activation $xW + b$.
    pub fn pre_activation(&self) -> &Array2<T> {
        &self.pre
    }

    /// The layer's output $f(xW + b)$.
    pub fn output(&self) -> &Array2<T> {
        self.out.as_ref().unwrap_or(&self.pre)
    }

    /// Moves the output of a **linear** layer out, leaving a $0 \times 0$
    /// array: its VJP reads neither the pre-activation nor the output (see
    /// [`super::MlpCache::take_output`]).
    pub(crate) fn take_linear_output(&mut self) -> Array2<T> {
        debug_assert!(self.out.is_none(), "only a linear layer's output is dead");
        std::mem::replace(&mut self.pre, Array2::zeros((0, 0)))
    }
}

impl Dense {
    /// A dense layer reading its weights under `prefix`.
    pub fn new(prefix: &str, use_bias: bool, activation: Activation) -> Self {
        Self {
            prefix: prefix.into(),
            use_bias,
            activation,
        }
    }

    fn kernel_name(&self) -> String {
        format!("{}kernel", self.prefix)
    }
    fn bias_name(&self) -> String {
        format!("{}bias", self.prefix)
    }

    /// Registers this layer's parameters (kernel glorot-uniform, bias zeros).
    pub fn init_params<T: Scalar>(
        &self,
        params: &mut Params<T>,
        fan_in: usize,
        units: usize,
        rng: &mut super::ParamRng,
    ) {
        params.insert(
            &self.kernel_name(),
            super::Initializer::GlorotUniform.sample(&[fan_in, units], rng),
        );
        if self.use_bias {
            params.insert(
                &self.bias_name(),
                super::Initializer::Zeros.sample(&[units], rng),
            );
        }
    }

    /// $f(xW + b)$.
    ///
    /// # Errors
    /// [`PoolError::ShapeMismatch`] if `x` has not as many columns as the kernel has rows.
    pub fn forward<T: Scalar>(
        &self,
        params: &Params<T>,
        x: ArrayView2<T>,
    ) -> Result<DenseCache<T>> {
        let w = params.matrix(&self.kernel_name())?;
        if w.nrows() != x.ncols() {
            return Err(PoolError::ShapeMismatch {
                what: format!("input of `{}`", self.kernel_name()),
                expected: format!("{} columns", w.nrows()),
                got: format!("{} columns", x.ncols()),
            });
        }
        let b = if self.use_bias {
            Some(params.vector(&self.bias_name())?)
        } else {
            None
        };
        let pre = matmul(x, w, b);
        let out =
            (self.activation != Activation::Linear).then(|| self.activation.forward(pre.view()));
        Ok(DenseCache { pre, out })
    }

    /// Backward: accumulates $\bar W, \bar b$ into `grads` and returns $\bar x$.
    ///
    /// # Errors
    /// Parameter look-up errors only (shapes were checked by the forward).
    pub fn backward<T: Scalar>(
        &self,
        params: &Params<T>,
        x: ArrayView2<T>,
        cache: &DenseCache<T>,
        grad_out: ArrayView2<T>,
        grads: &mut Params<T>,
    ) -> Result<Array2<T>> {
        let mut gx = crate::kernels::rows::zeros(x.nrows(), x.ncols());
        self.backward_acc(params, x, cache, grad_out, grads, &mut gx)?;
        Ok(gx)
    }

    /// [`Dense::backward`] that adds $\bar x$ into `gx` instead of
    /// returning it (no $N \times F$ temporary).
    ///
    /// # Errors
    /// Parameter look-up errors only (shapes were checked by the forward).
    pub fn backward_acc<T: Scalar>(
        &self,
        params: &Params<T>,
        x: ArrayView2<T>,
        cache: &DenseCache<T>,
        grad_out: ArrayView2<T>,
        grads: &mut Params<T>,
        gx: &mut Array2<T>,
    ) -> Result<()> {
        let w = params.matrix(&self.kernel_name())?;
        let activated = cache
            .out
            .as_ref()
            .map(|out| self.activation.vjp(cache.pre.view(), out.view(), grad_out));
        let gpre = activated.as_ref().map_or(grad_out, |g| g.view());
        matmul_acc(gpre, w.t(), gx);
        let (gw, gb) = matmul_vjp_params(x, gpre);
        self.accumulate_param_grads(grads, gw, gb)
    }

    /// [`Dense::backward_acc`] with the gradient of the **pre-activation**,
    /// $\bar Z$, produced piece by piece by `grad_pre(rows)`
    /// ([`dense_backward_streamed`]): adds $\bar X = \bar Z W^\top$ into
    /// `gx` and $X^\top \bar Z$, $\sum_n \bar Z_n$ into `grads`, in one pass
    /// over $X$, without the whole $N \times C$ gradient. For a linear layer
    /// $\bar Z$ is the output's gradient, and the bits are
    /// [`Dense::backward_acc`]'s.
    ///
    /// ```
    /// use graphpool::nn::{rng_from_seed, Activation, Dense, Params};
    /// use ndarray::{array, s};
    ///
    /// let layer = Dense::new("", true, Activation::Linear);
    /// let mut params = Params::default();
    /// layer.init_params(&mut params, 2, 3, &mut rng_from_seed(1));
    /// let x = array![[1.0_f64, 2.0], [0.5, -1.0]];
    /// let g = array![[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]];
    /// let cache = layer.forward(&params, x.view())?;
    /// let (mut g1, mut g2) = (params.zeros_like(), params.zeros_like());
    /// let (mut gx1, mut gx2) = (x.clone(), x.clone());
    /// layer.backward_acc(&params, x.view(), &cache, g.view(), &mut g1, &mut gx1)?;
    /// layer.backward_streamed_acc(&params, x.view(), |r| g.slice(s![r, ..]).to_owned(), &mut g2, &mut gx2)?;
    /// assert_eq!((g1, gx1), (g2, gx2));
    /// # Ok::<(), graphpool::PoolError>(())
    /// ```
    ///
    /// # Errors
    /// Parameter look-up errors only.
    pub fn backward_streamed_acc<T, G>(
        &self,
        params: &Params<T>,
        x: ArrayView2<T>,
        grad_pre: G,
        grads: &mut Params<T>,
        gx: &mut Array2<T>,
    ) -> Result<()>
    where
        T: Scalar,
        G: Fn(Range<usize>) -> Array2<T> + Sync,
    {
        let w = params.matrix(&self.kernel_name())?;
        let (gw, gb) = dense_backward_streamed(x, w.view(), grad_pre, gx);
        self.accumulate_param_grads(grads, gw, gb)
    }

    /// [`Dense::backward_streamed_acc`] into a fresh $\bar x = R + \bar Z W^\top$
    /// whose term $R$ `add_rest(rows, out)` adds chunk by chunk
    /// ([`dense_backward_streamed_into`]): returns $\bar x$, with the values
    /// of [`Dense::backward_streamed_acc`] on a `gx` holding $R$.
    ///
    /// # Errors
    /// Parameter look-up errors only.
    pub fn backward_streamed_into<T, G, A>(
        &self,
        params: &Params<T>,
        x: ArrayView2<T>,
        grad_pre: G,
        grads: &mut Params<T>,
        add_rest: A,
    ) -> Result<Array2<T>>
    where
        T: Scalar,
        G: Fn(Range<usize>) -> Array2<T> + Sync,
        A: Fn(Range<usize>, ArrayViewMut2<'_, T>) + Sync,
    {
        let w = params.matrix(&self.kernel_name())?;
        let (gx, gw, gb) = dense_backward_streamed_into(x, w.view(), grad_pre, add_rest);
        self.accumulate_param_grads(grads, gw, gb)?;
        Ok(gx)
    }

    /// Adds $\bar W$ (and $\bar b$ when the layer has a bias) into `grads`.
    fn accumulate_param_grads<T: Scalar>(
        &self,
        grads: &mut Params<T>,
        gw: Array2<T>,
        gb: Array1<T>,
    ) -> Result<()> {
        grads.accumulate_dim(&self.kernel_name(), gw.view())?;
        if self.use_bias {
            grads.accumulate_dim(&self.bias_name(), gb.view())?;
        }
        Ok(())
    }
}
