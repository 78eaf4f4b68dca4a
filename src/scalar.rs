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
    /// $e^x$ written so that a loop over it vectorises: the exponential of
    /// every softmax (rows, segments, sparse rows).
    ///
    /// For `f32`: [`exp_f32`], evaluated in `f64` with plain additions and
    /// multiplications and rounded once, so the result is the correctly
    /// rounded $e^x$ except within about $10^{-8}$ ULP of a tie, and has
    /// the same bits on every platform and SIMD level. For `f64`: the
    /// platform's `exp` (not vectorised).
    ///
    /// ```
    /// use graphpool::Scalar;
    /// assert_eq!(0.0_f32.exp_vectorizable(), 1.0);
    /// assert_eq!(1.0_f32.exp_vectorizable(), std::f32::consts::E);
    /// assert_eq!((-1.5_f64).exp_vectorizable(), (-1.5_f64).exp());
    /// ```
    fn exp_vectorizable(self) -> Self;
    /// $\tanh x$ written so that a loop over it vectorises (the gates of
    /// the selection pools, and the tanh activation): for `f32`
    /// [`tanh_f32`] (correctly rounded but at near ties, the same bits on
    /// every platform); for `f64` the platform's `tanh`.
    ///
    /// ```
    /// use graphpool::Scalar;
    /// assert_eq!(0.5_f32.tanh_vectorizable(), 0.5_f64.tanh() as f32);
    /// assert_eq!(0.5_f64.tanh_vectorizable(), 0.5_f64.tanh());
    /// ```
    fn tanh_vectorizable(self) -> Self;
    /// $\ln x$ written so that a loop over it vectorises (DiffPool's
    /// entropy, MemPooling's KL divergence): for `f32` [`ln_f32`]
    /// (correctly rounded but at near ties, the same bits on every platform
    /// and SIMD level); for `f64` the platform's `ln`.
    ///
    /// ```
    /// use graphpool::Scalar;
    /// assert_eq!(2.5_f32.ln_vectorizable(), 2.5_f64.ln() as f32);
    /// assert_eq!(2.5_f64.ln_vectorizable(), 2.5_f64.ln());
    /// ```
    fn ln_vectorizable(self) -> Self;
    /// Replaces the leading whole blocks of 16 rows of `x` (rows of `k`
    /// columns) by their softmax with a kernel written for this type and
    /// CPU, if there is one, and returns how many entries it replaced (0
    /// if none). [`crate::kernels::rows::softmax_rows_slice`] calls it
    /// first and does the rest; the bits are those of its portable path.
    /// For `f32` with AVX-512 and $k \in \{16, 32, 48, 64\}$: the blocks
    /// are transposed in registers. For `f64`: none.
    ///
    /// ```
    /// use graphpool::Scalar;
    /// let mut x = vec![0.0_f32; 16 * 16 + 16];
    /// let done = f32::softmax_row_blocks(&mut x, 16);
    /// assert!(done == 0 || done == 16 * 16);
    /// assert!(x[..done].iter().all(|&v| v == 1.0 / 16.0));
    /// assert_eq!(f64::softmax_row_blocks(&mut [0.0; 32], 16), 0);
    /// ```
    fn softmax_row_blocks(x: &mut [Self], k: usize) -> usize {
        let _ = (x, k);
        0
    }
    /// The totally ordered wrapper, `OrderedFloat<Self>`.
    type Ordered: Ord + Copy + Send + Sync;
}

/// $\ln 2$ in two parts (fdlibm's `ln2_hi`, `ln2_lo`), for the range
/// reductions of [`exp_f32`] and [`ln_f32`]: the high part has 32
/// significant bits (trailing zeros), so $k \ln 2_{\mathrm{hi}}$ is exact
/// for every exponent $k$ they meet.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// $e^x$ for `f32`, computed in `f64` and rounded once to `f32`.
///
/// With $k = \mathrm{round}(x \log_2 e)$ and $r = x - k \ln 2$ (Cody and
/// Waite's two-part $\ln 2$, so $k \ln 2_{\mathrm{hi}}$ is exact),
/// $|r| \le \tfrac12 \ln 2$ and
/// $$e^x = 2^k \sum_{i=0}^{12} \frac{r^i}{i!},$$
/// the sum mostly by Estrin's scheme (see `exp_in_f64`). Its relative
/// error is about $10^{-15}$ (truncation $|r|^{13}/13! < 2 \cdot 10^{-16}$,
/// plus the `f64` roundings), so the single rounding to `f32` gives the
/// correctly rounded $e^x$ unless the exact value lies within about
/// $10^{-8}$ ULP of a tie between two `f32` (where the result is within
/// $0.5 + 10^{-8}$ ULP). $x$ is first clamped to $[-150, 100]$: below,
/// $e^x$ rounds to 0 in `f32`; above, to $+\infty$. NaN stays NaN.
/// Subnormal results are rounded once, by the conversion.
///
/// Only additions, multiplications and bit operations: no table, no
/// branch, no fused multiply-add (Rust does not contract), so a loop over
/// it vectorises and every SIMD level gives the same bits.
///
/// ```
/// use graphpool::scalar::exp_f32;
/// for x in [-103.0_f32, -20.5, -1e-3, 0.0, 0.5, 10.0, 88.5] {
///     assert_eq!(exp_f32(x), f64::from(x).exp() as f32);
/// }
/// assert_eq!(exp_f32(-200.0), 0.0);
/// assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
/// assert_eq!(exp_f32(89.0), f32::INFINITY);
/// assert!(exp_f32(f32::NAN).is_nan());
/// ```
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    exp_in_f64(f64::from(x).clamp(-150.0, 100.0)) as f32
}

/// $e^x$ in `f64` for $x \in [-150, 100]$ (or NaN), to about $10^{-15}$
/// relative: the reduction and polynomial of [`exp_f32`].
///
/// The polynomial is $1 + r\,(1 + r\,q(r))$ with
/// $q(r) = \sum_{i=2}^{12} r^{i-2}/i!$ by Estrin's scheme: pairs
/// $c_i + c_{i+1} r$, then pairs of pairs with $r^2$, $r^4$ and $r^8$, so
/// that the longest chain of dependent operations after the reduction is
/// 10 long instead of Horner's 27 (with 16 `f64` lanes per AVX2 column of
/// a softmax, Horner's rule kept the exponentials waiting on latency). The
/// roundings differ from Horner's in the last bits of the `f64` value, but
/// the `f32` results of [`exp_f32`] and [`tanh_f32`] are the same for
/// every one of the $2^{32}$ `f32` inputs (compared exhaustively, see the
/// test `exp_and_tanh_are_horners_for_every_f32`).
#[inline(always)]
fn exp_in_f64(x: f64) -> f64 {
    // 1.5 * 2^52: adding it rounds to an integer held in the low bits
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    // 1 / i!, i = 2 to 12
    const C: [f64; 11] = [
        0.5,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
    ];
    let t = x * std::f64::consts::LOG2_E + SHIFT;
    let kd = t - SHIFT;
    let r = (x - kd * LN2_HI) - kd * LN2_LO;
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let q01 = (C[0] + C[1] * r) + (C[2] + C[3] * r) * r2;
    let q23 = (C[4] + C[5] * r) + (C[6] + C[7] * r) * r2;
    let q4 = (C[8] + C[9] * r) + C[10] * r2;
    let q = (q01 + q23 * r4) + q4 * r8;
    let p = q * r + 1.0;
    let p = p * r + 1.0;
    // 2^k from k's bits: the exponent field holds k + 1023 (|k| <= 217)
    let k_bits = t.to_bits().wrapping_sub(SHIFT.to_bits());
    let scale = f64::from_bits(k_bits.wrapping_add(1023) << 52);
    p * scale
}

/// $\ln x$ for `f32`, computed in `f64` and rounded once to `f32`.
///
/// With $x = 2^k m$, $m \in [\tfrac{1}{2}\sqrt 2, \sqrt 2)$ (every `f32`,
/// subnormals included, is a normal `f64`; $m$ and $k$ from the bits, as in
/// fdlibm's `log`), $f = m - 1$ (exact), $s = f / (2 + f)$, so that
/// $|s| \le 0.1716$ and
/// $$\ln x = k \ln 2 + 2 \sum_{i=0}^{9} \frac{s^{2i+1}}{2i+1},$$
/// the sum by Horner's rule in $z = s^2$ and $k \ln 2$ in fdlibm's two
/// parts ($k \ln 2_{\mathrm{hi}}$ exact). The truncation is below
/// $z^{10}/21 < 3 \cdot 10^{-17}$ relative and $|k \ln 2| \ge 2 |\ln m|$
/// when $k \ne 0$ (no cancellation), so the relative error is a few
/// $10^{-16}$ and the single rounding to `f32` gives the correctly rounded
/// $\ln x$ unless the exact value lies within about $10^{-8}$ ULP of a tie.
/// $\ln(\pm 0) = -\infty$, $\ln(+\infty) = +\infty$, and a negative $x$
/// or a NaN gives NaN.
///
/// Only additions, multiplications, one division and bit operations: no
/// table, no branch, no fused multiply-add, so a loop over it vectorises
/// and every SIMD level gives the same bits (the platform's `logf` is a
/// call per value, with an error of up to 0.82 ULP in glibc).
///
/// ```
/// use graphpool::scalar::ln_f32;
/// for x in [1e-45_f32, 1e-30, 0.3, 0.70710677, 1.0, 1.4142135, 2.0, 10.0, 3e38] {
///     assert_eq!(ln_f32(x), f64::from(x).ln() as f32);
/// }
/// assert_eq!(ln_f32(1.0), 0.0);
/// assert_eq!(ln_f32(0.0), f32::NEG_INFINITY);
/// assert_eq!(ln_f32(-0.0), f32::NEG_INFINITY);
/// assert_eq!(ln_f32(f32::INFINITY), f32::INFINITY);
/// assert!(ln_f32(-1.0).is_nan() && ln_f32(f32::NAN).is_nan());
/// ```
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    // 2 / (2i + 1), i = 9 down to 1 (the leading 2 apart)
    const C: [f64; 9] = [
        2.0 / 19.0,
        2.0 / 17.0,
        2.0 / 15.0,
        2.0 / 13.0,
        2.0 / 11.0,
        2.0 / 9.0,
        2.0 / 7.0,
        2.0 / 5.0,
        2.0 / 3.0,
    ];
    let xd = f64::from(x);
    let bits = xd.to_bits();
    // the high word moved so that its exponent field steps up at sqrt(2)/2
    // (fdlibm's reduction): k and m with m in [sqrt(2)/2, sqrt(2))
    let hx = (bits >> 32).wrapping_add(0x3ff0_0000 - 0x3fe6_a09e);
    let k = ((hx >> 20) & 0x7ff) as f64 - 1023.0;
    let m_hi = (hx & 0x000f_ffff).wrapping_add(0x3fe6_a09e);
    let m = f64::from_bits((m_hi << 32) | (bits & 0xffff_ffff));
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let mut p = C[0];
    for &c in &C[1..] {
        p = p * z + c;
    }
    // 2 s + s z p: ln m
    let ln_m = (s + s) + s * (z * p);
    let v = k * LN2_HI + (k * LN2_LO + ln_m);
    let v = if xd == f64::INFINITY { xd } else { v };
    let v = if xd > 0.0 {
        v
    } else if xd == 0.0 {
        f64::NEG_INFINITY
    } else {
        f64::NAN
    };
    v as f32
}

/// $\tanh x$ for `f32`, computed in `f64` and rounded once to `f32`.
///
/// With $a = |x|$: for $a < \tfrac1{16}$ the odd Taylor series
/// $a - \tfrac{a^3}{3} + \tfrac{2a^5}{15} - \tfrac{17a^7}{315} +
/// \tfrac{62a^9}{2835} - \tfrac{1382a^{11}}{155925}$ (the next term is below $2 \cdot 10^{-17}$
/// relative); above, $(1 - t)/(1 + t)$ with $t = e^{-2a}$ from
/// [`exp_f32`]'s `f64` evaluation ($1 - t \ge 0.11$, so its relative error
/// stays near $10^{-14}$); then the sign of $x$. As for [`exp_f32`], the one
/// rounding gives the correctly rounded $\tanh x$ except within a tiny
/// fraction of an ULP of a tie, the same bits on every platform and SIMD
/// level, and both branches are computed and one selected, so a loop
/// vectorises. $\tanh(\pm 0) = \pm 0$, $\tanh(\pm\infty) = \pm 1$, NaN stays NaN.
///
/// ```
/// use graphpool::scalar::tanh_f32;
/// for x in [-20.0_f32, -0.7, -1e-3, 0.0, 0.0625, 0.5, 3.0, 9.5] {
///     assert_eq!(tanh_f32(x), f64::from(x).tanh() as f32);
/// }
/// assert_eq!(tanh_f32(f32::INFINITY), 1.0);
/// assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0_f32).to_bits());
/// assert!(tanh_f32(f32::NAN).is_nan());
/// ```
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let xd = f64::from(x);
    let a = xd.abs();
    let z = a * a;
    let series = a
        * (1.0
            + z * (-1.0 / 3.0
                + z * (2.0 / 15.0
                    + z * (-17.0 / 315.0 + z * (62.0 / 2835.0 + z * (-1382.0 / 155_925.0))))));
    let t = exp_in_f64((-2.0 * a).clamp(-150.0, 0.0));
    let rational = (1.0 - t) / (1.0 + t);
    let v = if a < 0.0625 { series } else { rational };
    v.copysign(xd) as f32
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
    #[inline(always)]
    fn exp_vectorizable(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn tanh_vectorizable(self) -> Self {
        tanh_f32(self)
    }
    #[inline(always)]
    fn ln_vectorizable(self) -> Self {
        ln_f32(self)
    }
    fn softmax_row_blocks(x: &mut [Self], k: usize) -> usize {
        crate::kernels::softmax_simd::softmax_row_blocks_f32(x, k)
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
    #[inline(always)]
    fn exp_vectorizable(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn tanh_vectorizable(self) -> Self {
        self.tanh()
    }
    #[inline(always)]
    fn ln_vectorizable(self) -> Self {
        self.ln()
    }
}
