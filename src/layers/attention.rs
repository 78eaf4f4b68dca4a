//! Attention-weighted global pools: GlobalAttentionPool (gated) and
//! GlobalAttnSumPool (softmax over nodes).

use std::ops::Range;

use ndarray::{s, Array1, Array2, ArrayD, ArrayView1, ArrayView2, Axis, Zip};
use rayon::prelude::*;

use crate::batch::{check_finite_2d, DisjointBatch};
use crate::error::{PoolError, Result};
use crate::framework::layer::{
    check_grad_shape, finite_gradients, zero_edge_grad, InputSignature, LayerStamp,
};
use crate::framework::{Gradients, Layer};
use crate::kernels::segment::{segment_softmax, segment_softmax_vjp, segment_sum, segment_sum_vjp};
use crate::kernels::{map_nodes, rows, ROW_BLOCK};
use crate::nn::params::check_array_size;
use crate::nn::{
    dense_pair_backward_streamed, matmul, matmul_vjp, rng_from_seed, Activation, Dense,
    Initializer, Params,
};
use crate::scalar::Scalar;

/// Gated attention pool (Li et al., *Gated Graph Sequence Neural Networks*,
/// ICLR 2016; Spektral `GlobalAttentionPool`):
/// $$X'_g = \sum_{n \in g} \big(\sigma(X W_2 + b_2) \odot (X W_1 + b_1)\big)_n,$$
/// output $B \times C$. Parameters `features.kernel` $(F, C)$, `features.bias`
/// $(C)$, `attention.kernel` $(F, C)$, `attention.bias` $(C)$; kernels
/// glorot-uniform, biases zero. An empty graph gives a zero row; an
/// overflowing output (features or weights near the float type's maximum)
/// is a [`PoolError::NonFinite`], and so is an overflowing gradient.
///
/// ```
/// use graphpool::{layers::GlobalAttentionPool, framework::Layer, DisjointBatch};
/// use ndarray::array;
/// let pool = GlobalAttentionPool::<f64>::new(2, 3, 42)?;
/// let b = DisjointBatch::from_graph_ids(array![[1.0, 0.0], [0.0, 1.0]], sprs::CsMat::zero((2, 2)), &[0, 1], 2)?;
/// assert_eq!(pool.call(&b)?.dim(), (2, 3));
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalAttentionPool<T: Scalar> {
    channels: usize,
    params: Params<T>,
    features: Dense,
    attention: Dense,
}

/// Saved state of [`GlobalAttentionPool`]'s forward pass: the output's
/// shape and what identifies the batch and the weights. No $N \times C$
/// array is kept: the backward pass recomputes the two factors of the gate,
/// $X W_1 + b_1$ and $\sigma(X W_2 + b_2)$, a chunk of rows at a time while
/// it forms their gradients (the same bits as the forward pass's), so the
/// layer holds at most one $N \times C$ matrix in either pass.
#[derive(Debug, Clone)]
pub struct GlobalAttentionCache<T: Scalar> {
    out_shape: [usize; 2],
    input: InputSignature,
    stamp: LayerStamp,
    _scalar: std::marker::PhantomData<T>,
}

impl<T: Scalar> GlobalAttentionPool<T> {
    fn stamp(&self) -> LayerStamp {
        LayerStamp::of("GlobalAttentionPool", &self.channels, &self.params)
    }

    /// A pool from `in_features` to `channels`, weights drawn from `seed`.
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] if `channels` is 0, or if
    /// `in_features` x `channels` weights cannot be allocated.
    pub fn new(in_features: usize, channels: usize, seed: u64) -> Result<Self> {
        if channels == 0 {
            return Err(PoolError::InvalidConfig {
                name: "channels".into(),
                value: "0".into(),
                expected: "a positive number of output channels".into(),
            });
        }
        check_array_size::<T>("channels", &[in_features, channels])?;
        let features = Dense::new("features.", true, Activation::Linear);
        let attention = Dense::new("attention.", true, Activation::Sigmoid);
        let mut rng = rng_from_seed(seed);
        let mut params = Params::new();
        features.init_params(&mut params, in_features, channels, &mut rng);
        attention.init_params(&mut params, in_features, channels, &mut rng);
        Ok(Self {
            channels,
            params,
            features,
            attention,
        })
    }

    /// Number of output channels $C$.
    pub fn channels(&self) -> usize {
        self.channels
    }
}

impl<T: Scalar> GlobalAttentionPool<T> {
    /// $(W, b)$ of the `features.` or `attention.` branch, checked against `x`.
    fn weights<'a>(
        &'a self,
        prefix: &str,
        x: &ArrayView2<T>,
    ) -> Result<(ArrayView2<'a, T>, ArrayView1<'a, T>)> {
        let w = self.params.matrix(&format!("{prefix}kernel"))?;
        if w.nrows() != x.ncols() {
            return Err(PoolError::ShapeMismatch {
                what: format!("input of `{prefix}kernel`"),
                expected: format!("{} columns", w.nrows()),
                got: format!("{} columns", x.ncols()),
            });
        }
        Ok((w, self.params.vector(&format!("{prefix}bias"))?))
    }

    /// The pooled output from the gated rows, checked for overflow.
    fn pool(gated: &Array2<T>, batch: &DisjointBatch<T>) -> Result<Array2<T>> {
        let out = segment_sum(gated.view(), batch.segments());
        check_finite_2d(
            &out.view(),
            "GlobalAttentionPool pooled x (overflow: features or weights too large)",
        )?;
        Ok(out)
    }
}

/// The attention factor of the gate for some rows $X_r$ of $X$:
/// $f_2(X_r W_2 + b_2)$. The forward pass forms it a block of rows at a time
/// and the backward pass recomputes it a chunk at a time; each row's value
/// does not depend on the rows around it ([`matmul`]), so both get the
/// same bits.
fn attention_rows<T: Scalar>(
    xr: ArrayView2<T>,
    w2: ArrayView2<T>,
    b2: ArrayView1<T>,
    activation: Activation,
) -> Array2<T> {
    let mut a = matmul(xr, w2, Some(b2));
    activation.forward_inplace(&mut a);
    a
}

impl<T: Scalar> Layer<T> for GlobalAttentionPool<T> {
    type Output = Array2<T>;
    type Cache = GlobalAttentionCache<T>;

    fn forward(&self, batch: &DisjointBatch<T>) -> Result<(Array2<T>, Self::Cache)> {
        let out = self.call(batch)?;
        let out_shape = [out.nrows(), out.ncols()];
        Ok((
            out,
            GlobalAttentionCache {
                out_shape,
                input: InputSignature::of(batch),
                stamp: self.stamp(),
                _scalar: std::marker::PhantomData,
            },
        ))
    }

    /// The forward pass without a cache (the forward pass keeps none of its
    /// arrays either): the attention branch is computed a block of
    /// [`ROW_BLOCK`] rows at a time and
    /// multiplied into the features, so one $N \times C$ matrix is held.
    fn call(&self, batch: &DisjointBatch<T>) -> Result<Array2<T>> {
        let x = batch.x().view();
        let (w1, b1) = self.weights(self.features.prefix.as_str(), &x)?;
        let (w2, b2) = self.weights(self.attention.prefix.as_str(), &x)?;
        let activation = self.attention.activation;
        let mut gated = matmul(x, w1, Some(b1));
        gated
            .axis_chunks_iter_mut(Axis(0), ROW_BLOCK)
            .into_par_iter()
            .enumerate()
            .for_each(|(b, mut block)| {
                let r0 = b * ROW_BLOCK;
                let xb = x.slice(s![r0..r0 + block.nrows(), ..]);
                let attention = attention_rows(xb, w2, b2, activation);
                Zip::from(&mut block)
                    .and(&attention)
                    .for_each(|f, &a| *f *= a);
            });
        Self::pool(&gated, batch)
    }

    fn backward(
        &self,
        batch: &DisjointBatch<T>,
        cache: &Self::Cache,
        grad: &Array2<T>,
    ) -> Result<Gradients<T>> {
        cache.stamp.check(self.stamp(), "GlobalAttentionPool")?;
        cache.input.check(batch)?;
        check_grad_shape("pooled x", &cache.out_shape, grad)?;
        let x = batch.x().view();
        let (w1, b1) = self.weights(self.features.prefix.as_str(), &x)?;
        let (w2, b2) = self.weights(self.attention.prefix.as_str(), &x)?;
        let activation = self.attention.activation;
        let segments = batch.segments();
        // per chunk of rows, the factors of the gate recomputed from its rows
        // of X (the products of the forward pass's row blocks, since a chunk
        // starts on one: the same bits), then the gradients of the two
        // pre-activations, in their buffers: grad * attention for the
        // features, grad * features * sigma' (from sigma itself) for the
        // attention; grad[g] on every node of graph g
        let grad_pre = |rows: Range<usize>| {
            let xr = x.slice(s![rows.clone(), ..]);
            let mut att = attention_rows(xr, w2, b2, activation);
            let mut feat = matmul(xr, w1, Some(b1));
            let offsets = segments.offsets();
            let mut g = segments.graph_of(rows.start);
            for (j, (mut a, mut f)) in att.outer_iter_mut().zip(feat.outer_iter_mut()).enumerate() {
                while rows.start + j >= offsets[g + 1] {
                    g += 1;
                }
                let gr = grad.row(g);
                Zip::from(&mut a)
                    .and(&mut f)
                    .and(&gr)
                    .for_each(|a, f, &gv| {
                        *f = gv * *f * activation.derivative_from_output(*a);
                        *a = gv * *a;
                    });
            }
            (att, feat)
        };
        let mut gx = rows::zeros(x.nrows(), x.ncols());
        let ((gw1, gb1), (gw2, gb2)) = dense_pair_backward_streamed(x, w1, w2, grad_pre, &mut gx);
        let mut params = self.params.zeros_like();
        let p1 = self.features.prefix.as_str();
        let p2 = self.attention.prefix.as_str();
        params.accumulate_dim(&format!("{p1}kernel"), gw1.view())?;
        params.accumulate_dim(&format!("{p1}bias"), gb1.view())?;
        params.accumulate_dim(&format!("{p2}kernel"), gw2.view())?;
        params.accumulate_dim(&format!("{p2}bias"), gb2.view())?;
        finite_gradients(
            "GlobalAttentionPool",
            Gradients {
                x: gx,
                edge_weights: zero_edge_grad(batch),
                params,
            },
        )
    }

    fn params(&self) -> &Params<T> {
        &self.params
    }

    fn set_param(&mut self, name: &str, value: ArrayD<T>) -> Result<()> {
        self.params.set(name, value)
    }
}

/// Node-attention sum pool (Spektral `GlobalAttnSumPool`, formerly
/// `NodeAttentionPool`):
/// $$\alpha = \operatorname{softmax}_g(X a), \qquad X'_g = \sum_{n \in g} \alpha_n X_n,$$
/// the softmax taken over the nodes of each graph with Spektral's
/// denominator $\sum e + 10^{-9}$ (PyG's `softmax` uses $10^{-16}$: see
/// [`GlobalAttnSumPool::with_eps`]). Output $B \times F$; parameter
/// `attn_kernel` $(F, 1)$, glorot-uniform. An empty graph gives a zero row,
/// a single node weight $1/(1 + \varepsilon)$; the softmax is shifted by
/// each graph's maximum, so scores of magnitude $10^{30}$ do not overflow.
/// An overflowing output or gradient (features near the float type's
/// maximum: $\bar a = X^\top \bar v$ holds products of two features) is a
/// [`PoolError::NonFinite`].
///
/// ```
/// use graphpool::{layers::GlobalAttnSumPool, framework::Layer, DisjointBatch};
/// use ndarray::array;
/// let pool = GlobalAttnSumPool::<f64>::new(2, 7);
/// // a single node gets weight 1 (up to the 1e-9 of the denominator)
/// let b = DisjointBatch::single(array![[1.0, 2.0]], sprs::CsMat::zero((1, 1)))?;
/// let y = pool.call(&b)?;
/// assert!((y[[0, 1]] - 2.0).abs() < 1e-8);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalAttnSumPool<T: Scalar> {
    params: Params<T>,
    eps: T,
}

/// Spektral's former name for [`GlobalAttnSumPool`].
pub type NodeAttentionPool<T> = GlobalAttnSumPool<T>;

/// Saved state of [`GlobalAttnSumPool`]'s forward pass.
#[derive(Debug, Clone)]
pub struct GlobalAttnSumCache<T: Scalar> {
    alpha: Array1<T>,
    out_shape: [usize; 2],
    input: InputSignature,
    stamp: LayerStamp,
}

impl<T: Scalar> GlobalAttnSumPool<T> {
    /// Spektral's epsilon in the softmax denominator.
    pub const SPEKTRAL_EPS: f64 = 1e-9;
    /// PyG's epsilon in `torch_geometric.utils.softmax`.
    pub const PYG_EPS: f64 = 1e-16;

    /// A pool for `in_features` features, weights drawn from `seed`.
    ///
    /// # Panics
    /// If an `in_features` x 1 array cannot be allocated (an `in_features`
    /// beyond memory, as `Vec::with_capacity` panics).
    pub fn new(in_features: usize, seed: u64) -> Self {
        let mut params = Params::new();
        let mut rng = rng_from_seed(seed);
        params.insert(
            "attn_kernel",
            Initializer::GlorotUniform.sample(&[in_features, 1], &mut rng),
        );
        Self {
            params,
            eps: T::c(Self::SPEKTRAL_EPS),
        }
    }

    fn stamp(&self) -> LayerStamp {
        LayerStamp::of("GlobalAttnSumPool", &self.eps, &self.params)
    }

    /// Uses `eps` in the softmax denominator instead of Spektral's $10^{-9}$.
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] unless `eps` is $\ge 0$ and finite in `T`.
    pub fn with_eps(mut self, eps: f64) -> Result<Self> {
        if !(eps.is_finite() && eps >= 0.0 && T::c(eps).is_finite()) {
            return Err(PoolError::InvalidConfig {
                name: "eps".into(),
                value: eps.to_string(),
                expected: "a finite value >= 0".into(),
            });
        }
        self.eps = T::c(eps);
        Ok(self)
    }
}

impl<T: Scalar> Layer<T> for GlobalAttnSumPool<T> {
    type Output = Array2<T>;
    type Cache = GlobalAttnSumCache<T>;

    fn forward(&self, batch: &DisjointBatch<T>) -> Result<(Array2<T>, Self::Cache)> {
        let w = self.params.matrix("attn_kernel")?;
        let x = batch.x().view();
        if w.nrows() != x.ncols() {
            return Err(PoolError::ShapeMismatch {
                what: "x for attn_kernel".into(),
                expected: format!("{} columns", w.nrows()),
                got: format!("{} columns", x.ncols()),
            });
        }
        let v = matmul(x, w, None).remove_axis(Axis(1));
        let alpha = segment_softmax(v.view(), batch.segments(), self.eps);
        let mut weighted = x.to_owned();
        Zip::from(weighted.rows_mut())
            .and(&alpha)
            .par_for_each(|mut r, &a| r.mapv_inplace(|v| v * a));
        let out = segment_sum(weighted.view(), batch.segments());
        check_finite_2d(
            &out.view(),
            "GlobalAttnSumPool pooled x (overflow: features too large for the float type)",
        )?;
        let out_shape = [out.nrows(), out.ncols()];
        let input = InputSignature::of(batch);
        Ok((
            out,
            GlobalAttnSumCache {
                alpha,
                out_shape,
                input,
                stamp: self.stamp(),
            },
        ))
    }

    fn backward(
        &self,
        batch: &DisjointBatch<T>,
        cache: &Self::Cache,
        grad: &Array2<T>,
    ) -> Result<Gradients<T>> {
        cache.stamp.check(self.stamp(), "GlobalAttnSumPool")?;
        cache.input.check(batch)?;
        check_grad_shape("pooled x", &cache.out_shape, grad)?;
        let x = batch.x().view();
        let w = self.params.matrix("attn_kernel")?;
        let g_weighted = segment_sum_vjp(grad.view(), batch.segments());
        // d alpha_n = <x_n, g_out[g]>
        let g_alpha = Array1::from(map_nodes(batch.segments(), |_, n| {
            x.row(n).dot(&g_weighted.row(n))
        }));
        let gv = segment_softmax_vjp(cache.alpha.view(), g_alpha.view(), batch.segments());
        let gv2 = gv.view().insert_axis(Axis(1));
        let (gx_score, gw, _) = matmul_vjp(x, w, gv2);
        let mut gx = g_weighted;
        Zip::from(gx.rows_mut())
            .and(&cache.alpha)
            .par_for_each(|mut r, &a| r.mapv_inplace(|v| v * a));
        crate::kernels::rows::add_into(&mut gx, &gx_score);
        let mut params = self.params.zeros_like();
        params.accumulate_dim("attn_kernel", gw.view())?;
        finite_gradients(
            "GlobalAttnSumPool",
            Gradients {
                x: gx,
                edge_weights: zero_edge_grad(batch),
                params,
            },
        )
    }

    fn params(&self) -> &Params<T> {
        &self.params
    }

    fn set_param(&mut self, name: &str, value: ArrayD<T>) -> Result<()> {
        self.params.set(name, value)
    }
}
