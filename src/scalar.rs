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
    /// A 64-bit key with the order of [`Scalar::ordered`], left-aligned
    /// (its top bits are the sign, the exponent, then the leading mantissa
    /// bits): `a.ordered() <= b.ordered()` exactly when
    /// `a.order_key() <= b.order_key()`. `-0.0` has the key of `+0.0` and
    /// every NaN the largest key, as [`OrderedFloat`] orders them. Used to
    /// bucket values by their leading bits (a radix selection).
    ///
    /// ```
    /// use graphpool::Scalar;
    /// let v = [f32::NEG_INFINITY, -2.5, -1e-30, -0.0, 0.0, 1e-30, 3.0, f32::INFINITY, f32::NAN];
    /// for w in v.windows(2) {
    ///     assert_eq!(w[0].ordered().cmp(&w[1].ordered()), w[0].order_key().cmp(&w[1].order_key()));
    /// }
    /// ```
    fn order_key(self) -> u64;
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
    #[inline]
    fn order_key(self) -> u64 {
        if self.is_nan() {
            return u64::MAX;
        }
        // -0.0 as +0.0; negatives complemented, positives above them
        let b = if self == 0.0 { 0 } else { self.to_bits() };
        let k = if b >> 31 == 1 { !b } else { b | (1 << 31) };
        u64::from(k) << 32
    }
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
    #[inline]
    fn order_key(self) -> u64 {
        if self.is_nan() {
            return u64::MAX;
        }
        let b = if self == 0.0 { 0 } else { self.to_bits() };
        if b >> 63 == 1 {
            !b
        } else {
            b | (1 << 63)
        }
    }
    fn no_params() -> &'static crate::nn::Params<Self> {
        crate::nn::params::no_params_f64()
    }
}
