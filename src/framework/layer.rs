//! The [`Layer`] contract: forward with saved state, backward to inputs and parameters.

use ndarray::{Array1, Array2, Array3, Dimension, Zip};
use rand::Rng;

use crate::batch::DisjointBatch;
use crate::error::{PoolError, Result};
use crate::kernels::rows;
use crate::nn::{ParamRng, Params};
use crate::scalar::Scalar;

/// Gradients of a scalar loss with respect to a layer's inputs and parameters.
///
/// The gradients of $X$ and of the parameters are always computed; those of
/// the edge weights only when the batch passed to
/// [`Layer::backward`] asks for them
/// ([`DisjointBatch::with_edge_weight_grad`], on by default), like
/// `requires_grad` on an edge-weight tensor in PyTorch. The gradients of $X$
/// and the parameters are bit-identical either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<T: Scalar> {
    /// $\partial L / \partial X$, $N \times F$.
    pub x: Array2<T>,
    /// $\partial L / \partial a_{ij}$ for every stored entry, aligned with
    /// `batch.a().data()`, if [`DisjointBatch::edge_weight_grad`] is on for
    /// the batch of the backward pass; `None` (nothing computed) if it is off.
    pub edge_weights: Option<Array1<T>>,
    /// $\partial L / \partial \theta$ for every parameter, same names and shapes as the layer's.
    pub params: Params<T>,
}

impl<T: Scalar> Gradients<T> {
    /// All-zero gradients for `batch` and `params` (edge weights `None` if
    /// `batch` has edge-weight gradients off).
    pub fn zeros(batch: &DisjointBatch<T>, params: &Params<T>) -> Self {
        Self {
            x: crate::kernels::rows::zeros(batch.num_nodes(), batch.num_features()),
            edge_weights: zero_edge_grad(batch),
            params: params.zeros_like(),
        }
    }
}

/// Zero edge-weight gradients for `batch`, or `None` if it has them off
/// (for layers whose output does not depend on the edge weights).
pub(crate) fn zero_edge_grad<T: Scalar>(batch: &DisjointBatch<T>) -> Option<Array1<T>> {
    batch
        .edge_weight_grad()
        .then(|| Array1::zeros(batch.a().nnz()))
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
    y: &ndarray::ArrayRef<T, D>,
    g: &ndarray::ArrayRef<T, D>,
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
    y: &ndarray::ArrayRef<T, D>,
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
///
/// # Edge-weight gradients
/// `backward` returns $\partial L / \partial a_{ij}$ only for a batch with
/// [`DisjointBatch::edge_weight_grad`] on (the default); with it off
/// ([`DisjointBatch::with_edge_weight_grad`]`(false)`, a fixed graph) it
/// skips that work and [`Gradients::edge_weights`] is `None`, the other
/// gradients bit-identical. The setting is part of the batch the forward
/// pass saw: a backward pass with a batch whose setting differs is refused
/// ([`PoolError::ShapeMismatch`]), except by the global pools, whose
/// backward pass does not read the adjacency.
///
/// # Bad and degenerate inputs (every layer)
/// * A configuration out of range (ratio $\notin (0, 1]$, $k = 0$,
///   `channels = 0`, a non-finite coefficient, …) is a
///   [`PoolError::InvalidConfig`] from the constructor; a batch whose
///   feature width does not match the parameters, a
///   [`PoolError::ShapeMismatch`] from `forward`.
/// * `backward` refuses an output gradient of the wrong shape, with a NaN
///   or infinite entry, or naming a loss the layer does not have
///   ([`PoolError::GradientShape`] / [`PoolError::NonFinite`]), and a batch
///   other than the forward pass's (other sizes, segments or sparsity
///   structure: [`PoolError::ShapeMismatch`]; the values are not compared),
///   and a cache made by another layer or by this one before `set_param`
///   changed it ([`PoolError::CacheMismatch`]).
/// * `set_param` refuses unknown names, wrong shapes and non-finite values
///   and leaves the layer unchanged; no call modifies its inputs.
/// * Empty graphs (anywhere in the batch), single-node graphs, isolated
///   nodes, graphs smaller than $K$, zero-weight edges and self loops give
///   defined, finite outputs, losses and gradients, documented per layer;
///   so do features of magnitude $10^{30}$ in `f32` and `f64`.
/// * An `Ok` result never holds a NaN or an infinity: where the true result
///   overflows the float type (features or weights near its maximum), the
///   layer returns a typed [`PoolError::NonFinite`] (or
///   [`PoolError::NonFiniteScore`] when a score that decides a selection
///   overflows).
/// * Outputs and gradients are bit-identical on any number of rayon
///   threads and across runs.
///
/// These are tested for every layer in `tests/edge_cases.rs`,
/// `tests/bad_input_matrix.rs`, `tests/determinism.rs` and by the fuzz
/// targets in `fuzz/`.
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

    /// Maps the output gradient to input and parameter gradients (and to the
    /// edge weights if `batch` has [`DisjointBatch::edge_weight_grad`] on).
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

/// Checks that a gradient has the shape of the output it belongs to and
/// that every entry is finite (a NaN or infinite cotangent would only give
/// NaN gradients).
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
    // a parallel, vectorised scan when the gradient is one slice
    if let Some((i, v)) = rows::first_non_finite_entry(grad) {
        return Err(PoolError::NonFinite {
            what: format!("gradient of {what}"),
            index: format!("flat index {i}"),
            value: v.to_string(),
        });
    }
    Ok(())
}

/// Checks the gradient of a [`crate::framework::Pooled`] output: the shapes
/// of $\bar X'$ and $\bar a'$, finite entries, and that every loss it names
/// is one of the layer's (`losses`).
pub(crate) fn check_pooled_grad<T: Scalar>(
    grad: &crate::framework::PooledGrad<T>,
    x_shape: &[usize; 2],
    nnz: usize,
    losses: &[&str],
) -> Result<()> {
    check_grad_shape("pooled x", x_shape, &grad.x)?;
    check_grad_shape("pooled edge weights", &[nnz], &grad.edge_weights)?;
    for (name, v) in &grad.losses {
        if !losses.contains(&name.as_str()) {
            return Err(PoolError::GradientShape {
                what: format!("loss `{name}`"),
                expected: format!("one of the layer's losses {losses:?}"),
                got: name.clone(),
            });
        }
        if !v.is_finite() {
            return Err(PoolError::NonFinite {
                what: format!("gradient of loss `{name}`"),
                index: "-".into(),
                value: v.to_string(),
            });
        }
    }
    Ok(())
}

/// The shape and structure of the batch a forward pass ran on, kept in its
/// cache so that the backward pass refuses a different batch with a typed
/// error instead of indexing out of bounds. Compares the sizes, the segment
/// offsets and a fingerprint of the adjacency's sparsity structure
/// (`indptr`, `indices`), and whether the batch asks for edge-weight
/// gradients (a forward pass may skip caching what only they need); the
/// values of $X$ and $A$ are not compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InputSignature {
    nodes: usize,
    features: usize,
    nnz: usize,
    offsets: Vec<usize>,
    structure: u64,
    edge_weight_grad: bool,
}

impl InputSignature {
    /// The signature of `batch`: $O(B)$, with the fingerprint of its
    /// structure ([`DisjointBatch::structure_hash`], $O(N + \mathrm{nnz})$
    /// once per batch).
    pub(crate) fn of<T: Scalar>(batch: &DisjointBatch<T>) -> Self {
        Self {
            nodes: batch.num_nodes(),
            features: batch.num_features(),
            nnz: batch.a().nnz(),
            offsets: batch.segments().offsets().to_vec(),
            structure: batch.structure_hash(),
            edge_weight_grad: batch.edge_weight_grad(),
        }
    }

    /// [`PoolError::ShapeMismatch`] unless `batch` has this signature.
    pub(crate) fn check<T: Scalar>(&self, batch: &DisjointBatch<T>) -> Result<()> {
        let other = Self::of(batch);
        if &other == self {
            return Ok(());
        }
        let describe = |s: &Self| {
            format!(
                "{} nodes, {} features, {} stored edges, {} graphs{}{}",
                s.nodes,
                s.features,
                s.nnz,
                s.offsets.len() - 1,
                if s.nodes == self.nodes && s.nnz == self.nnz && s.offsets == self.offsets {
                    format!(" (structure fingerprint {:016x})", s.structure)
                } else {
                    String::new()
                },
                if s.edge_weight_grad {
                    ", edge-weight gradients on"
                } else {
                    ", edge-weight gradients off (with_edge_weight_grad(false))"
                }
            )
        };
        Err(PoolError::ShapeMismatch {
            what: "batch passed to backward (it must be the forward pass's batch)".into(),
            expected: describe(self),
            got: describe(&other),
        })
    }
}

/// A fingerprint of a layer's configuration and parameters (names, shapes
/// and value bits), kept in its forward cache so that its backward pass
/// refuses a cache made by another layer, or by this layer before
/// `set_param` changed it ([`PoolError::CacheMismatch`]). $O(\#\text{params})$.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayerStamp(u64);

impl LayerStamp {
    /// The stamp of a layer of kind `kind` with configuration `config`
    /// (its `Debug` form, without the parameters) and parameters `params`.
    pub(crate) fn of<T: Scalar>(
        kind: &str,
        config: &impl std::fmt::Debug,
        params: &Params<T>,
    ) -> Self {
        struct Fx(u64);
        impl Fx {
            fn word(&mut self, w: u64) {
                self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
            }
            fn bytes(&mut self, b: &[u8]) {
                self.word(b.len() as u64);
                for &c in b {
                    self.word(u64::from(c));
                }
            }
        }
        let mut h = Fx(0xcbf2_9ce4_8422_2325);
        h.bytes(kind.as_bytes());
        h.bytes(format!("{config:?}").as_bytes());
        for (name, p) in params.iter() {
            h.bytes(name.as_bytes());
            h.bytes(format!("{:?}", p.shape()).as_bytes());
            for v in p.iter() {
                h.word(v.to_f64().map_or(u64::MAX, f64::to_bits));
            }
        }
        let h = h.0;
        Self(h)
    }

    /// [`PoolError::CacheMismatch`] unless `self` (the cache's) is `now`.
    pub(crate) fn check(self, now: Self, layer: &str) -> Result<()> {
        if self == now {
            Ok(())
        } else {
            Err(PoolError::CacheMismatch {
                layer: layer.into(),
            })
        }
    }
}

/// Checks that every gradient a backward pass computed is finite: with
/// finite inputs they can only fail to be through overflow (huge features,
/// edge weights, parameters or cotangents), reported as a typed
/// [`PoolError::NonFinite`] instead of gradients holding infinities or NaN.
pub(crate) fn finite_gradients<T: Scalar>(layer: &str, g: Gradients<T>) -> Result<Gradients<T>> {
    let x_first_bad = {
        let xv = g.x.view();
        rows::first_non_finite(&rows::row_major(&xv))
    };
    finite_gradients_given_x(layer, g, x_first_bad)
}

/// [`finite_gradients`] for a gradient of $X$ whose kernel already found
/// its first non-finite entry (`x_first_bad`, a flat row-major index) as it
/// wrote it, so that $\bar X$ is not read a second time.
pub(crate) fn finite_gradients_given_x<T: Scalar>(
    layer: &str,
    g: Gradients<T>,
    x_first_bad: Option<usize>,
) -> Result<Gradients<T>> {
    let overflow = |what: String, index: String, v: T| {
        PoolError::NonFinite {
        what: format!("{layer} gradient of {what} (overflow: inputs, parameters or output gradient too large)"),
        index,
        value: v.to_string(),
    }
    };
    {
        if let Some(i) = x_first_bad {
            let (r, c) = (i / g.x.ncols(), i % g.x.ncols());
            return Err(overflow("x".into(), format!("({r}, {c})"), g.x[[r, c]]));
        }
        if let Some(w) = &g.edge_weights {
            let wv = w.view();
            let ws = rows::row_major_1d(&wv);
            if let Some(e) = rows::first_non_finite(&ws) {
                return Err(overflow("edge weights".into(), format!("edge {e}"), ws[e]));
            }
        }
    }
    for (name, p) in g.params.iter() {
        if let Some((i, &v)) = p.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(overflow(
                format!("parameter `{name}`"),
                format!("flat index {i}"),
                v,
            ));
        }
    }
    Ok(g)
}
