//! The multi-layer perceptron that computes cluster logits in the
//! dense-assignment pools (MinCut, DMoN, JustBalance, AsymCheegerCut).

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use super::{Activation, Dense, DenseCache, ParamRng, Params};
use crate::error::Result;
use crate::scalar::Scalar;

/// Hidden dense layers with a shared activation, then a linear output layer:
/// parameters `mlp.{j}.kernel` / `mlp.{j}.bias` for `j = 0..=hidden.len()`
/// (the last is the output layer), as Spektral's `mlp_hidden` /
/// `mlp_activation` build it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    layers: Vec<Dense>,
    sizes: Vec<usize>,
}

/// Intermediate values of an [`Mlp`] forward pass.
#[derive(Debug, Clone)]
pub struct MlpCache<T: Scalar> {
    layers: Vec<DenseCache<T>>,
}

impl<T: Scalar> MlpCache<T> {
    /// The MLP's output (linear logits).
    pub fn output(&self) -> &Array2<T> {
        self.layers[self.layers.len() - 1].output()
    }

    /// Moves the output (linear logits) out of the cache, leaving a
    /// $0 \times 0$ array in its place: [`Mlp::backward`] never reads it (the
    /// last layer is linear, and a linear layer's VJP needs only its input),
    /// so a caller that maps the logits (a softmax) can do it in place
    /// instead of allocating a second $N \times$ `out` array.
    ///
    /// ```
    /// use graphpool::nn::{rng_from_seed, Activation, Mlp, Params};
    /// use ndarray::array;
    ///
    /// let mlp = Mlp::new(&[3], Activation::Relu, 2, 2);
    /// let mut params = Params::default();
    /// mlp.init_params(&mut params, &mut rng_from_seed(0));
    /// let x = array![[1.0_f64, 2.0], [0.5, -1.0]];
    /// let mut cache = mlp.forward(&params, x.view())?;
    /// let logits = cache.output().clone();
    /// assert_eq!(cache.take_output(), logits);
    /// assert_eq!(cache.output().dim(), (0, 0));
    /// // the backward pass is unchanged
    /// let g = array![[1.0, 0.0], [0.0, 1.0]];
    /// let full = mlp.forward(&params, x.view())?;
    /// let (mut g1, mut g2) = (params.zeros_like(), params.zeros_like());
    /// assert_eq!(
    ///     mlp.backward(&params, x.view(), &cache, g.view(), &mut g1)?,
    ///     mlp.backward(&params, x.view(), &full, g.view(), &mut g2)?,
    /// );
    /// assert_eq!(g1, g2);
    /// # Ok::<(), graphpool::PoolError>(())
    /// ```
    pub fn take_output(&mut self) -> Array2<T> {
        let last = self.layers.len() - 1;
        self.layers[last].take_linear_output()
    }
}

impl Mlp {
    /// An MLP `in_features → hidden[0] → … → out`, under the prefix `mlp.`.
    pub fn new(hidden: &[usize], activation: Activation, in_features: usize, out: usize) -> Self {
        let mut sizes = vec![in_features];
        sizes.extend_from_slice(hidden);
        sizes.push(out);
        let n = hidden.len();
        let layers = (0..=n)
            .map(|j| {
                let act = if j < n {
                    activation
                } else {
                    Activation::Linear
                };
                Dense::new(&format!("mlp.{j}."), true, act)
            })
            .collect();
        Self { layers, sizes }
    }

    /// Registers the parameters (glorot-uniform kernels, zero biases).
    pub fn init_params<T: Scalar>(&self, params: &mut Params<T>, rng: &mut ParamRng) {
        for (j, l) in self.layers.iter().enumerate() {
            l.init_params(params, self.sizes[j], self.sizes[j + 1], rng);
        }
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.sizes[0]
    }

    /// Runs the MLP on `x`.
    ///
    /// # Errors
    /// Shape errors from [`Dense::forward`].
    pub fn forward<T: Scalar>(&self, params: &Params<T>, x: ArrayView2<T>) -> Result<MlpCache<T>> {
        let mut caches: Vec<DenseCache<T>> = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let c = match caches.last() {
                None => l.forward(params, x)?,
                Some(prev) => l.forward(params, prev.output().view())?,
            };
            caches.push(c);
        }
        Ok(MlpCache { layers: caches })
    }

    /// Backward from the gradient of the output; accumulates parameter
    /// gradients into `grads` and returns $\bar x$.
    ///
    /// # Errors
    /// Parameter look-up errors.
    pub fn backward<T: Scalar>(
        &self,
        params: &Params<T>,
        x: ArrayView2<T>,
        cache: &MlpCache<T>,
        grad_out: ArrayView2<T>,
        grads: &mut Params<T>,
    ) -> Result<Array2<T>> {
        let mut gx = crate::kernels::rows::zeros(x.nrows(), x.ncols());
        self.backward_acc(params, x, cache, grad_out, grads, &mut gx)?;
        Ok(gx)
    }

    /// [`Mlp::backward`] that adds $\bar x$ into `gx` instead of returning
    /// it (no $N \times F$ temporary).
    ///
    /// # Errors
    /// Parameter look-up errors only (shapes were checked by the forward).
    pub fn backward_acc<T: Scalar>(
        &self,
        params: &Params<T>,
        x: ArrayView2<T>,
        cache: &MlpCache<T>,
        grad_out: ArrayView2<T>,
        grads: &mut Params<T>,
        gx: &mut Array2<T>,
    ) -> Result<()> {
        let mut g: Option<Array2<T>> = None;
        for j in (1..self.layers.len()).rev() {
            let input = cache.layers[j - 1].output().view();
            let go = g.as_ref().map_or(grad_out, |g| g.view());
            let mut gi = crate::kernels::rows::zeros(input.nrows(), input.ncols());
            self.layers[j].backward_acc(params, input, &cache.layers[j], go, grads, &mut gi)?;
            g = Some(gi);
        }
        let go = g.as_ref().map_or(grad_out, |g| g.view());
        self.layers[0].backward_acc(params, x, &cache.layers[0], go, grads, gx)
    }

    /// [`Mlp::backward_acc`] with the output's gradient produced piece by
    /// piece by `grad_out(rows)`, the same bits. Without hidden layers the
    /// MLP is one linear layer, and its backward pass takes the pieces as
    /// they come ([`Dense::backward_streamed_acc`]): one pass over $X$, and
    /// the $N \times$ `out` gradient is never held whole. With hidden layers
    /// the gradient is formed whole (`grad_out(0..N)`) for the chain.
    ///
    /// ```
    /// use graphpool::nn::{rng_from_seed, Activation, Mlp, Params};
    /// use ndarray::{array, s};
    ///
    /// for hidden in [vec![], vec![3]] {
    ///     let mlp = Mlp::new(&hidden, Activation::Relu, 2, 2);
    ///     let mut params = Params::default();
    ///     mlp.init_params(&mut params, &mut rng_from_seed(0));
    ///     let x = array![[1.0_f64, 2.0], [0.5, -1.0], [0.0, 3.0]];
    ///     let g = array![[1.0, 0.0], [0.0, 1.0], [-2.0, 0.5]];
    ///     let cache = mlp.forward(&params, x.view())?;
    ///     let (mut g1, mut g2) = (params.zeros_like(), params.zeros_like());
    ///     let (mut gx1, mut gx2) = (x.clone(), x.clone());
    ///     mlp.backward_acc(&params, x.view(), &cache, g.view(), &mut g1, &mut gx1)?;
    ///     let pieces = |r| g.slice(s![r, ..]).to_owned();
    ///     mlp.backward_streamed_acc(&params, x.view(), &cache, pieces, &mut g2, &mut gx2)?;
    ///     assert_eq!((g1, gx1), (g2, gx2));
    /// }
    /// # Ok::<(), graphpool::PoolError>(())
    /// ```
    ///
    /// # Errors
    /// Parameter look-up errors only.
    pub fn backward_streamed_acc<T, G>(
        &self,
        params: &Params<T>,
        x: ArrayView2<T>,
        cache: &MlpCache<T>,
        grad_out: G,
        grads: &mut Params<T>,
        gx: &mut Array2<T>,
    ) -> Result<()>
    where
        T: Scalar,
        G: Fn(std::ops::Range<usize>) -> Array2<T> + Sync,
    {
        if let [layer] = &self.layers[..] {
            // the output layer is linear: its output's gradient is its
            // pre-activation's
            return layer.backward_streamed_acc(params, x, grad_out, grads, gx);
        }
        let g = grad_out(0..x.nrows());
        self.backward_acc(params, x, cache, g.view(), grads, gx)
    }

    /// [`Mlp::backward_streamed_acc`] into a fresh $\bar x = R + {}$ the
    /// MLP's input gradient, whose term $R$ `add_rest(rows, out)` adds chunk
    /// by chunk, each entry's term formed on its own and added once to it
    /// (as [`crate::kernels::rows::rows_times`] with `accumulate` adds).
    /// Returns $\bar x$ with the values of [`Mlp::backward_streamed_acc`] on
    /// a `gx` holding $R$. With one layer $R$ is never held whole
    /// ([`crate::nn::dense_backward_streamed_into`]); with hidden layers it
    /// is formed first and the layers' gradients added into it.
    ///
    /// ```
    /// use graphpool::nn::{rng_from_seed, Activation, Mlp, Params};
    /// use ndarray::{array, s};
    /// for hidden in [vec![], vec![3]] {
    ///     let mlp = Mlp::new(&hidden, Activation::Relu, 2, 2);
    ///     let mut params = Params::default();
    ///     mlp.init_params(&mut params, &mut rng_from_seed(0));
    ///     let x = array![[1.0_f64, 2.0], [0.5, -1.0], [0.0, 3.0]];
    ///     let g = array![[1.0, 0.0], [0.0, 1.0], [-2.0, 0.5]];
    ///     let rest = array![[0.5, -1.0], [2.0, 0.25], [-3.0, 1.0]];
    ///     let cache = mlp.forward(&params, x.view())?;
    ///     let (mut g1, mut g2) = (params.zeros_like(), params.zeros_like());
    ///     let mut gx1 = rest.clone();
    ///     let pieces = |r| g.slice(s![r, ..]).to_owned();
    ///     mlp.backward_streamed_acc(&params, x.view(), &cache, pieces, &mut g1, &mut gx1)?;
    ///     let add_rest = |r, mut out: ndarray::ArrayViewMut2<f64>| out += &rest.slice(s![r, ..]);
    ///     let gx2 = mlp.backward_streamed_into(&params, x.view(), &cache, pieces, &mut g2, add_rest)?;
    ///     assert_eq!((g1, gx1), (g2, gx2));
    /// }
    /// # Ok::<(), graphpool::PoolError>(())
    /// ```
    ///
    /// # Errors
    /// Parameter look-up errors only.
    pub fn backward_streamed_into<T, G, A>(
        &self,
        params: &Params<T>,
        x: ArrayView2<T>,
        cache: &MlpCache<T>,
        grad_out: G,
        grads: &mut Params<T>,
        add_rest: A,
    ) -> Result<Array2<T>>
    where
        T: Scalar,
        G: Fn(std::ops::Range<usize>) -> Array2<T> + Sync,
        A: Fn(std::ops::Range<usize>, ArrayViewMut2<'_, T>) + Sync,
    {
        if let [layer] = &self.layers[..] {
            return layer.backward_streamed_into(params, x, grad_out, grads, add_rest);
        }
        // R first (each entry 0 plus its term), then the layers' gradient
        let mut gx = crate::kernels::rows::fresh_matrix(x.nrows(), x.ncols());
        crate::kernels::reduce_chunked_rows(&mut gx, &add_rest, |(), ()| ());
        let g = grad_out(0..x.nrows());
        self.backward_acc(params, x, cache, g.view(), grads, &mut gx)?;
        Ok(gx)
    }
}
