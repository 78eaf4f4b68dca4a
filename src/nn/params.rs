//! Named parameters with canonical names and Keras layout.

use ndarray::{ArrayD, ArrayView1, ArrayView2, ArrayView3, Ix1, Ix2, Ix3, IxDyn};

use crate::error::{PoolError, Result};
use crate::scalar::Scalar;

/// An ordered set of named parameter arrays.
///
/// Names are the canonical ones of the conformance format (`kernel`,
/// `mlp.0.kernel`, `features.bias`, …); kernels use the Keras layout
/// `(in, out)`, i.e. $y = x W + b$. A layer's gradients are returned as a
/// `Params` with the same names and shapes.
///
/// ```
/// use graphpool::nn::Params;
/// use ndarray::{ArrayD, IxDyn};
/// let mut p = Params::<f64>::new();
/// p.insert("kernel", ArrayD::zeros(IxDyn(&[3, 1])));
/// assert!(p.set("kernel", ArrayD::zeros(IxDyn(&[3, 2]))).is_err());
/// p.set("kernel", ArrayD::from_elem(IxDyn(&[3, 1]), 0.5))?;
/// assert_eq!(p.get("kernel")?[[1, 0]], 0.5);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params<T: Scalar> {
    entries: Vec<(String, ArrayD<T>)>,
}

impl<T: Scalar> Params<T> {
    /// No parameters.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Adds (or replaces) a parameter; for layer constructors.
    pub fn insert(&mut self, name: &str, value: ArrayD<T>) {
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 = value,
            None => self.entries.push((name.to_string(), value)),
        }
    }

    /// The parameter `name`.
    ///
    /// # Errors
    /// [`PoolError::UnknownParameter`] listing the known names.
    pub fn get(&self, name: &str) -> Result<&ArrayD<T>> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| self.unknown(name))
    }

    /// Mutable access to the parameter `name` (its shape cannot change).
    ///
    /// # Errors
    /// [`PoolError::UnknownParameter`].
    pub fn get_mut(&mut self, name: &str) -> Result<ndarray::ArrayViewMutD<'_, T>> {
        let unknown = self.unknown(name);
        self.entries
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.view_mut())
            .ok_or(unknown)
    }

    /// Replaces the value of `name`, checking its shape and finiteness.
    ///
    /// # Errors
    /// [`PoolError::UnknownParameter`], [`PoolError::ParameterShape`],
    /// [`PoolError::NonFinite`]; the parameter is unchanged on error.
    pub fn set(&mut self, name: &str, value: ArrayD<T>) -> Result<()> {
        let unknown = self.unknown(name);
        let slot = self
            .entries
            .iter_mut()
            .find(|(n, _)| n == name)
            .ok_or(unknown)?;
        if slot.1.shape() != value.shape() {
            return Err(PoolError::ParameterShape {
                name: name.into(),
                expected: slot.1.shape().to_vec(),
                got: value.shape().to_vec(),
            });
        }
        if let Some((i, v)) = value.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(PoolError::NonFinite {
                what: format!("parameter `{name}`"),
                index: format!("{i:?}"),
                value: v.to_string(),
            });
        }
        slot.1 = value;
        Ok(())
    }

    /// The parameter names, in canonical order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, value)` pairs in canonical order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ArrayD<T>)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Mutable `(name, value)` pairs (shapes must not change).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut ArrayD<T>)> {
        self.entries.iter_mut().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of parameters (arrays).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Same names and shapes, all zeros (a gradient accumulator).
    pub fn zeros_like(&self) -> Self {
        Self {
            entries: self
                .entries
                .iter()
                .map(|(n, v)| (n.clone(), ArrayD::zeros(v.raw_dim())))
                .collect(),
        }
    }

    /// Adds `value` to the parameter `name` (gradient accumulation).
    ///
    /// # Errors
    /// [`PoolError::UnknownParameter`], [`PoolError::ParameterShape`].
    pub fn accumulate(&mut self, name: &str, value: ndarray::ArrayViewD<T>) -> Result<()> {
        let mut slot = self.get_mut(name)?;
        if slot.shape() != value.shape() {
            return Err(PoolError::ParameterShape {
                name: name.into(),
                expected: slot.shape().to_vec(),
                got: value.shape().to_vec(),
            });
        }
        slot += &value;
        Ok(())
    }

    /// The parameter `name` as a vector.
    ///
    /// # Errors
    /// [`PoolError::UnknownParameter`], or [`PoolError::ParameterShape`] if it is not 1-D.
    pub fn vector(&self, name: &str) -> Result<ArrayView1<'_, T>> {
        let v = self.get(name)?;
        v.view()
            .into_dimensionality::<Ix1>()
            .map_err(|_| self.rank_error(name, v.shape(), 1))
    }

    /// The parameter `name` as a matrix.
    ///
    /// # Errors
    /// [`PoolError::UnknownParameter`], or [`PoolError::ParameterShape`] if it is not 2-D.
    pub fn matrix(&self, name: &str) -> Result<ArrayView2<'_, T>> {
        let v = self.get(name)?;
        v.view()
            .into_dimensionality::<Ix2>()
            .map_err(|_| self.rank_error(name, v.shape(), 2))
    }

    /// The parameter `name` as a 3-D array.
    ///
    /// # Errors
    /// [`PoolError::UnknownParameter`], or [`PoolError::ParameterShape`] if it is not 3-D.
    pub fn tensor3(&self, name: &str) -> Result<ArrayView3<'_, T>> {
        let v = self.get(name)?;
        v.view()
            .into_dimensionality::<Ix3>()
            .map_err(|_| self.rank_error(name, v.shape(), 3))
    }

    /// Stores a gradient computed in a fixed dimensionality under `name`.
    ///
    /// # Errors
    /// As [`Params::accumulate`].
    pub fn accumulate_dim<D: ndarray::Dimension>(
        &mut self,
        name: &str,
        value: ndarray::ArrayView<T, D>,
    ) -> Result<()> {
        self.accumulate(name, value.into_dyn())
    }

    fn unknown(&self, name: &str) -> PoolError {
        PoolError::UnknownParameter {
            name: name.into(),
            known: if self.entries.is_empty() {
                "(none)".into()
            } else {
                self.names().collect::<Vec<_>>().join(", ")
            },
        }
    }

    fn rank_error(&self, name: &str, shape: &[usize], rank: usize) -> PoolError {
        PoolError::ParameterShape {
            name: format!("{name} (rank {rank} expected)"),
            expected: vec![0; rank],
            got: shape.to_vec(),
        }
    }
}

/// Builds a dynamic-dimension array of the given shape from a flat vector.
/// Checks that an array of shape `dims` can exist: the product of the
/// dimensions must not overflow and must fit in `isize::MAX` bytes (ndarray's
/// and `Vec`'s limit), so that a configuration such as `k = usize::MAX` is a
/// typed error instead of a capacity-overflow panic. (A size that fits but
/// exceeds the machine's memory still aborts on allocation, as any Rust
/// allocation does.)
///
/// # Errors
/// [`PoolError::InvalidConfig`] naming `name`.
pub(crate) fn check_array_size<T: Scalar>(name: &str, dims: &[usize]) -> Result<()> {
    let max_bytes = isize::MAX as usize / std::mem::size_of::<T>().max(1);
    fn product(mut dims: impl Iterator<Item = usize>) -> Option<usize> {
        dims.try_fold(1usize, |a, d| a.checked_mul(d))
    }
    // ndarray also refuses shapes whose non-zero axis lengths overflow isize
    let elements = product(dims.iter().copied());
    let non_zero = product(dims.iter().copied().filter(|&d| d != 0));
    match (elements, non_zero) {
        (Some(n), Some(m)) if n <= max_bytes && m <= isize::MAX as usize => Ok(()),
        _ => Err(PoolError::InvalidConfig {
            name: name.into(),
            value: format!("{dims:?}"),
            expected: "sizes whose arrays can be allocated (this product of dimensions overflows)"
                .into(),
        }),
    }
}

pub(crate) fn dyn_array<T: Scalar>(shape: &[usize], data: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape and data length agree")
}

static NO_PARAMS_F32: Params<f32> = Params::new();
static NO_PARAMS_F64: Params<f64> = Params::new();

/// The empty parameter set of a parameterless layer, for `f32` and `f64`.
pub(crate) fn no_params_f32() -> &'static Params<f32> {
    &NO_PARAMS_F32
}
pub(crate) fn no_params_f64() -> &'static Params<f64> {
    &NO_PARAMS_F64
}
