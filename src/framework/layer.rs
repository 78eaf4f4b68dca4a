//! The [`Layer`] contract: forward with saved state, backward to inputs and parameters.

use ndarray::{Array1, Array2, Array3, Dimension, Zip};
use rand::Rng;

use crate::batch::DisjointBatch;
use crate::error::{PoolError, Result};
use crate::nn::{ParamRng, Params};
use crate::scalar::Scalar;

/// Gradients of a scalar loss with respect to a layer's inputs and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<T: Scalar> {
    /// $\partial L / \partial X$, $N \times F$.
    pub x: Array2<T>,
    /// $\partial L / \partial a_{ij}$ for every stored entry, aligned with `batch.a().data()`.
    pub edge_weights: Array1<T>,
    /// $\partial L / \partial \theta$ for every parameter, same names and shapes as the layer's.
    pub params: Params<T>,
}

impl<T: Scalar> Gradients<T> {
    /// All-zero gradients for `batch` and `params`.
    pub fn zeros(batch: &DisjointBatch<T>, params: &Params<T>) -> Self {
        Self {
            x: Array2::zeros(batch.x().raw_dim()),
            edge_weights: Array1::zeros(batch.a().nnz()),
            params: params.zeros_like(),
        }
    }
}

/// An output that gradients can be taken through: it pairs with a gradient
/// of the same shape (the cotangent) to give the scalar $\langle y, \bar y\rangle$.
pub trait Differentiable<T: Scalar> {
    /// The gradient type, e.g. an array of the same shape.
    type Grad: Clone + std::fmt::Debug;

    /// $\sum$ over every entry of `self` ⊙ `grad`; the scalar loss whose
    /// gradient is `grad`.
    ///
    /// # Errors
    /// [`PoolError::GradientShape`] if the shapes (or sparsity structure) differ.
    fn pair(&self, grad: &Self::Grad) -> Result<T>;

    /// A random gradient of the right shape, entries in $[-1, 1]$ (for checks).
    fn random_cotangent(&self, rng: &mut ParamRng) -> Self::Grad;
}

pub(crate) fn pair_arrays<T: Scalar, D: Dimension>(
    what: &str,
    y: &ndarray::Array<T, D>,
    g: &ndarray::Array<T, D>,
) -> Result<T> {
    if y.shape() != g.shape() {
        return Err(PoolError::GradientShape {
            what: what.into(),
            expected: format!("{:?}", y.shape()),
            got: format!("{:?}", g.shape()),
        });
    }
    let mut acc = T::zero();
    Zip::from(y).and(g).for_each(|&a, &b| acc += a * b);
    Ok(acc)
}

pub(crate) fn random_like<T: Scalar, D: Dimension>(
    y: &ndarray::Array<T, D>,
    rng: &mut ParamRng,
) -> ndarray::Array<T, D> {
    y.map(|_| T::c(rng.random_range(-1.0..=1.0)))
}

impl<T: Scalar> Differentiable<T> for Array2<T> {
    type Grad = Array2<T>;
    fn pair(&self, grad: &Array2<T>) -> Result<T> {
        pair_arrays("output", self, grad)
    }
    fn random_cotangent(&self, rng: &mut ParamRng) -> Array2<T> {
        random_like(self, rng)
    }
}

impl<T: Scalar> Differentiable<T> for Array3<T> {
    type Grad = Array3<T>;
    fn pair(&self, grad: &Array3<T>) -> Result<T> {
        pair_arrays("output", self, grad)
    }
    fn random_cotangent(&self, rng: &mut ParamRng) -> Array3<T> {
        random_like(self, rng)
    }
}

/// A differentiable layer on a [`DisjointBatch`].
///
/// `forward` returns the output and a cache; `backward` takes the same batch,
/// that cache and the gradient of a scalar loss with respect to the output,
/// and returns [`Gradients`]. Parameters are named ([`Params`]) and can be
/// read and replaced by name with shape checks.
pub trait Layer<T: Scalar> {
    /// What the layer returns.
    type Output: Differentiable<T>;
    /// What the forward pass keeps for the backward pass.
    type Cache;

    /// Runs the layer and keeps what the backward pass needs.
    ///
    /// # Errors
    /// A typed [`PoolError`] for inputs the layer cannot take (feature width
    /// not matching the parameters, non-finite scores, …).
    fn forward(&self, batch: &DisjointBatch<T>) -> Result<(Self::Output, Self::Cache)>;

    /// Maps the output gradient to input and parameter gradients.
    ///
    /// # Errors
    /// [`PoolError::GradientShape`] if `grad` does not match the forward output.
    fn backward(
        &self,
        batch: &DisjointBatch<T>,
        cache: &Self::Cache,
        grad: &<Self::Output as Differentiable<T>>::Grad,
    ) -> Result<Gradients<T>>;

    /// The layer's parameters.
    fn params(&self) -> &Params<T>;

    /// Replaces the parameter `name`, checking its shape and finiteness (for
    /// loading weights or an optimiser step).
    ///
    /// # Errors
    /// [`PoolError::UnknownParameter`], [`PoolError::ParameterShape`],
    /// [`PoolError::NonFinite`]; the layer is unchanged on error.
    fn set_param(&mut self, name: &str, value: ndarray::ArrayD<T>) -> Result<()> {
        let _ = value;
        Err(PoolError::UnknownParameter {
            name: name.into(),
            known: "(none)".into(),
        })
    }

    /// The forward pass without keeping a cache.
    ///
    /// # Errors
    /// As [`Layer::forward`].
    fn call(&self, batch: &DisjointBatch<T>) -> Result<Self::Output> {
        Ok(self.forward(batch)?.0)
    }
}

/// Checks that a gradient has the shape of the output it belongs to.
pub(crate) fn check_grad_shape<T: Scalar, D: Dimension>(
    what: &str,
    expected: &[usize],
    grad: &ndarray::Array<T, D>,
) -> Result<()> {
    if grad.shape() != expected {
        return Err(PoolError::GradientShape {
            what: what.into(),
            expected: format!("{expected:?}"),
            got: format!("{:?}", grad.shape()),
        });
    }
    Ok(())
}
