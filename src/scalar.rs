//! The floating-point element type every layer is generic over.

use std::fmt::{Debug, Display};
use std::iter::Sum;

use ndarray::{LinalgScalar, ScalarOperand};
use num_traits::{Float, FromPrimitive, ToPrimitive};
use ordered_float::OrderedFloat;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// A real floating-point scalar: implemented for [`f32`] and [`f64`].
///
/// Every kernel and layer has a single generic code path; `f32` is what the
/// references compute in, `f64` is what the gradient checks use.
pub trait Scalar:
    Float
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + FromPrimitive
    + ToPrimitive
    + LinalgScalar
    + ScalarOperand
    + Sum
    + Debug
    + Display
    + Default
    + Send
    + Sync
    + 'static
{
    /// Converts an `f64` constant into this type (rounding to nearest).
    fn c(v: f64) -> Self;
    /// Converts a count into this type.
    fn from_count(n: usize) -> Self;
    /// The value under a total order ([`OrderedFloat`]: NaN above +inf), used
    /// by every sort and top-k so that selections are deterministic.
    fn ordered(self) -> Self::Ordered;
    /// The (static) empty parameter set, returned by parameterless layers.
    #[doc(hidden)]
    fn no_params() -> &'static crate::nn::Params<Self>;
    /// The totally ordered wrapper, `OrderedFloat<Self>`.
    type Ordered: Ord + Copy + Send + Sync;
}

impl Scalar for f32 {
    #[inline]
    fn c(v: f64) -> Self {
        v as f32
    }
    #[inline]
    fn from_count(n: usize) -> Self {
        n as f32
    }
    #[inline]
    fn ordered(self) -> OrderedFloat<Self> {
        OrderedFloat(self)
    }
    type Ordered = OrderedFloat<Self>;
    fn no_params() -> &'static crate::nn::Params<Self> {
        crate::nn::params::no_params_f32()
    }
}

impl Scalar for f64 {
    #[inline]
    fn c(v: f64) -> Self {
        v
    }
    #[inline]
    fn from_count(n: usize) -> Self {
        n as f64
    }
    #[inline]
    fn ordered(self) -> OrderedFloat<Self> {
        OrderedFloat(self)
    }
    type Ordered = OrderedFloat<Self>;
    fn no_params() -> &'static crate::nn::Params<Self> {
        crate::nn::params::no_params_f64()
    }
}
