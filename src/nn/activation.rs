//! Element-wise activations by their Keras names, and the row-wise softmax.

use ndarray::{Array2, ArrayView2};

use crate::error::{PoolError, Result};
use crate::kernels::rows;
use crate::scalar::Scalar;

const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

/// An element-wise activation, named as in Keras.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// $x$ (`"linear"`, also `None` in Keras).
    #[default]
    Linear,
    /// $\max(x, 0)$.
    Relu,
    /// $\tanh x$.
    Tanh,
    /// $1 / (1 + e^{-x})$.
    Sigmoid,
    /// $x$ if $x > 0$ else $e^x - 1$.
    Elu,
    /// $\lambda x$ if $x > 0$ else $\lambda\alpha(e^x - 1)$, Keras' constants.
    Selu,
    /// $\ln(1 + e^x)$.
    Softplus,
    /// $x / (1 + |x|)$.
    Softsign,
    /// $x \sigma(x)$ (`"swish"` or `"silu"`).
    Swish,
    /// $e^x$.
    Exponential,
}

impl Activation {
    /// Every activation, in declaration order (for tests and fuzz targets
    /// that run each one).
    ///
    /// ```
    /// use graphpool::nn::Activation;
    /// assert_eq!(Activation::ALL.len(), 10);
    /// assert_eq!(Activation::ALL[0], Activation::default());
    /// ```
    pub const ALL: [Activation; 10] = [
        Activation::Linear,
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Elu,
        Activation::Selu,
        Activation::Softplus,
        Activation::Softsign,
        Activation::Swish,
        Activation::Exponential,
    ];

    /// Parses a Keras activation name (`None`/`"linear"` is the identity).
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] listing the known names.
    pub fn from_name(name: Option<&str>) -> Result<Self> {
        Ok(match name.unwrap_or("linear") {
            "linear" | "none" | "identity" => Activation::Linear,
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "elu" => Activation::Elu,
            "selu" => Activation::Selu,
            "softplus" => Activation::Softplus,
            "softsign" => Activation::Softsign,
            "swish" | "silu" => Activation::Swish,
            "exponential" => Activation::Exponential,
            other => {
                return Err(PoolError::InvalidConfig {
                    name: "activation".into(),
                    value: other.into(),
                    expected: "one of linear, relu, tanh, sigmoid, elu, selu, softplus, softsign, swish, exponential".into(),
                })
            }
        })
    }

    /// Every value of `v` replaced by its activation ([`Activation::apply`],
    /// the same bits), the activation chosen once outside the loop, which
    /// is compiled for each SIMD level: $\tanh$ ([`Scalar::tanh_vectorizable`])
    /// and $\sigma$ ([`Scalar::exp_vectorizable`]) vectorise in `f32`.
    ///
    /// ```
    /// use graphpool::nn::Activation;
    /// let mut v = [0.5_f32, -2.0, 0.0];
    /// Activation::Tanh.apply_in_place(&mut v);
    /// assert_eq!(v, [Activation::Tanh.apply(0.5_f32), Activation::Tanh.apply(-2.0), 0.0]);
    /// ```
    pub fn apply_in_place<T: Scalar>(self, v: &mut [T]) {
        apply_slice(self, v);
    }

    /// The activation of one value (always inlined: with the `f64`
    /// evaluation of `tanh` the body is too large for the compiler to
    /// inline it on its own, and a call per entry is slow).
    #[inline(always)]
    pub fn apply<T: Scalar>(self, x: T) -> T {
        let one = T::one();
        match self {
            Activation::Linear => x,
            Activation::Relu => x.max(T::zero()),
            Activation::Tanh => x.tanh_vectorizable(),
            Activation::Sigmoid => sigmoid(x),
            Activation::Elu => {
                if x > T::zero() {
                    x
                } else {
                    x.exp_m1()
                }
            }
            Activation::Selu => {
                if x > T::zero() {
                    T::c(SELU_SCALE) * x
                } else {
                    T::c(SELU_SCALE * SELU_ALPHA) * x.exp_m1()
                }
            }
            Activation::Softplus => {
                // stable: max(x, 0) + ln(1 + e^-|x|)
                x.max(T::zero()) + (-x.abs()).exp().ln_1p()
            }
            Activation::Softsign => x / (one + x.abs()),
            Activation::Swish => x * sigmoid(x),
            Activation::Exponential => x.exp(),
        }
    }

    /// The derivative at pre-activation `x` (with `y = apply(x)`).
    /// At the kink of relu the derivative is taken as 0, as in TensorFlow.
    /// (Always inlined, as [`Activation::apply`]: a loop over it then
    /// chooses the activation once, not per entry through a call.)
    #[inline(always)]
    pub fn derivative<T: Scalar>(self, x: T, y: T) -> T {
        let one = T::one();
        match self {
            Activation::Linear => one,
            Activation::Relu => {
                if x > T::zero() {
                    one
                } else {
                    T::zero()
                }
            }
            Activation::Tanh => one - y * y,
            Activation::Sigmoid => y * (one - y),
            Activation::Elu => {
                if x > T::zero() {
                    one
                } else {
                    y + one
                }
            }
            Activation::Selu => {
                if x > T::zero() {
                    T::c(SELU_SCALE)
                } else {
                    y + T::c(SELU_SCALE * SELU_ALPHA)
                }
            }
            Activation::Softplus => sigmoid(x),
            Activation::Softsign => {
                let d = one + x.abs();
                one / (d * d)
            }
            Activation::Swish => {
                let s = sigmoid(x);
                s + x * s * (one - s)
            }
            Activation::Exponential => y,
        }
    }

    /// Applies the activation to every entry (in parallel over fixed
    /// blocks of rows).
    pub fn forward<T: Scalar>(self, x: ArrayView2<T>) -> Array2<T> {
        let mut out = rows::fresh_copy(x);
        self.forward_inplace(&mut out);
        out
    }

    /// [`Activation::forward`] in place: overwrites every entry of `x` with
    /// its activation (the same bits, without a second array), block by
    /// block with [`Activation::apply_in_place`].
    pub fn forward_inplace<T: Scalar>(self, x: &mut Array2<T>) {
        if self != Activation::Linear {
            rows::update_row_blocks(x, |_, block| self.apply_in_place(block));
        }
    }

    /// Whether $f'(x)$ is a function of $y = f(x)$ alone, so that
    /// [`Activation::derivative_from_output`] can stand in for
    /// [`Activation::derivative`] and a cache need not keep the
    /// pre-activation: true for linear, relu, elu, selu ($x > 0 \iff y > 0$),
    /// tanh, sigmoid and exponential.
    pub fn derivative_from_output_only(self) -> bool {
        !matches!(
            self,
            Activation::Softplus | Activation::Softsign | Activation::Swish
        )
    }

    /// $f'(x)$ from $y = f(x)$ alone, bit for bit
    /// [`Activation::derivative`]`(x, y)` when
    /// [`Activation::derivative_from_output_only`] holds (where it does not,
    /// this is not the derivative).
    #[inline(always)]
    pub fn derivative_from_output<T: Scalar>(self, y: T) -> T {
        self.derivative(y, y)
    }

    /// The VJP from the outputs alone: each output $y_i$ in `y` replaced by
    /// $\bar y_i \, f'(y_i)$ ($\bar y$ = `grad`, the same length), the bits of
    /// `grad[i] * self.derivative_from_output(y[i])`, where
    /// [`Activation::derivative_from_output_only`] holds. The activation is
    /// chosen once, outside the loop, which is compiled for each SIMD
    /// level: relu's derivative is then a select across the vector, not a
    /// branch per entry (DiffPool's backward pass through its embedding's
    /// relu: 18 % of its samples on `disjoint-small` in the per-entry form).
    ///
    /// ```
    /// use graphpool::nn::Activation;
    /// let mut y = [0.0_f32, 2.0, 0.5];
    /// Activation::Relu.grad_from_output_in_place(&mut y, &[3.0, -1.0, 4.0]);
    /// assert_eq!(y, [0.0, -1.0, 4.0]);
    /// let mut t = [0.5_f64];
    /// Activation::Tanh.grad_from_output_in_place(&mut t, &[2.0]);
    /// assert_eq!(t, [2.0 * (1.0 - 0.25)]);
    /// ```
    pub fn grad_from_output_in_place<T: Scalar>(self, y: &mut [T], grad: &[T]) {
        debug_assert_eq!(y.len(), grad.len());
        grad_from_output_slice(self, y, grad);
    }

    /// VJP: $\bar x = \bar y \odot f'(x)$.
    pub fn vjp<T: Scalar>(
        self,
        x: ArrayView2<T>,
        y: ArrayView2<T>,
        grad: ArrayView2<T>,
    ) -> Array2<T> {
        let f = x.ncols();
        let gs = rows::row_major(&grad);
        if self == Activation::Linear {
            return rows::build_rows(x.nrows(), f, |r, out| {
                out.copy_from_slice(&gs[r * f..(r + 1) * f])
            });
        }
        let (xs, ys) = (rows::row_major(&x), rows::row_major(&y));
        rows::build_rows(x.nrows(), f, |r, out| {
            let span = r * f..(r + 1) * f;
            vjp_slice(self, out, &gs[span.clone()], &xs[span.clone()], &ys[span]);
        })
    }
}

/// `$body` with `$a` bound to `$act` as a constant of each variant in
/// turn, so that in a loop in `$body` the activation's methods (always
/// inlined) reduce to that variant's formula: the activation chosen once,
/// outside the loop, rather than per entry (relu's derivative is then a
/// select across the vector, not a branch per entry).
macro_rules! per_activation {
    ($act:expr, $a:ident => $body:expr) => {
        per_activation!(@each $act, $a, $body,
            Linear Relu Tanh Sigmoid Elu Selu Softplus Softsign Swish Exponential)
    };
    (@each $act:expr, $a:ident, $body:expr, $($variant:ident)*) => {
        match $act {
            $(Activation::$variant => {
                const $a: Activation = Activation::$variant;
                $body
            })*
        }
    };
}

crate::kernels::simd_levels! {
/// [`Activation::grad_from_output_in_place`], one loop per activation.
fn grad_from_output_slice<T: Scalar>(act: Activation, y: &mut [T], grad: &[T]) {
    per_activation!(act, A => {
        for (o, &d) in y.iter_mut().zip(grad) {
            *o = d * A.derivative_from_output(*o);
        }
    })
}
}

crate::kernels::simd_levels! {
/// A row of [`Activation::vjp`]: `out[i] = grad[i] * act.derivative(x[i],
/// y[i])`, one loop per activation.
fn vjp_slice<T: Scalar>(act: Activation, out: &mut [T], grad: &[T], x: &[T], y: &[T]) {
    per_activation!(act, A => {
        for ((o, &g), (&xv, &yv)) in out.iter_mut().zip(grad).zip(x.iter().zip(y)) {
            *o = g * A.derivative(xv, yv);
        }
    })
}
}

crate::kernels::simd_levels! {
/// [`Activation::apply_in_place`]: one loop per activation.
fn apply_slice<T: Scalar>(act: Activation, v: &mut [T]) {
    if act != Activation::Linear {
        per_activation!(act, A => v.iter_mut().for_each(|x| *x = A.apply(*x)))
    }
}
}

/// $\sigma(x) = 1 / (1 + e^{-x})$ for $x \ge 0$, $e^x / (1 + e^x)$ below
/// (no overflow either way), from the one exponential $e^{-|x|}$ and
/// selects rather than a branch, and always inlined, so that a loop over
/// it vectorises. A NaN is not $\ge 0$: it goes through $e^x$ itself, as in
/// the branch, so even its sign is the branch's. ($-|x|$ is $-x$ on the
/// upper side and $x$ below, and $e^{\pm 0} = 1$. Selecting $-x$ or $x$ by
/// the side instead cost twice the exponential's time in a vectorised
/// loop: 1.9 against 0.9 ns per `f32` value with AVX-512.)
#[inline(always)]
pub(crate) fn sigmoid<T: Scalar>(x: T) -> T {
    let one = T::one();
    let up = x >= T::zero();
    let e = (if x.is_nan() { x } else { -x.abs() }).exp_vectorizable();
    (if up { one } else { e }) / (one + e)
}

/// Softmax over each row (max-shifted): $s_{nk} = e^{z_{nk}} / \sum_j e^{z_{nj}}$
/// ([`rows::softmax_rows_slice`]).
pub fn softmax_rows<T: Scalar>(z: ArrayView2<T>) -> Array2<T> {
    let mut out = rows::fresh_copy(z);
    softmax_rows_in_place(&mut out);
    out
}

/// [`softmax_rows`] in place, the same bits: every row of the
/// standard-layout `z` replaced by its softmax.
pub fn softmax_rows_in_place<T: Scalar>(z: &mut Array2<T>) {
    let k = z.ncols();
    rows::update_row_blocks(z, |_, block| rows::softmax_rows_slice(block, k));
}

/// VJP of [`softmax_rows`] given its output $S$:
/// $\bar z_{n} = s_n \odot (\bar s_n - \langle s_n, \bar s_n\rangle)$.
pub fn softmax_rows_vjp<T: Scalar>(s: ArrayView2<T>, grad: ArrayView2<T>) -> Array2<T> {
    let k = s.ncols();
    let (ss, gs) = (rows::row_major(&s), rows::row_major(&grad));
    rows::build_rows(s.nrows(), k, |r, out| {
        out.copy_from_slice(&gs[r * k..(r + 1) * k]);
        softmax_vjp_row(&ss[r * k..(r + 1) * k], out);
    })
}

/// [`softmax_rows_vjp`] written over the gradient `grad` (standard layout,
/// the shape of $S$), the same bits: for a backward pass that does not
/// read $\bar S$ again, no second $N \times K$ array.
///
/// ```
/// use graphpool::nn::{softmax_rows, softmax_rows_vjp, softmax_rows_vjp_in_place};
/// use ndarray::array;
/// let s = softmax_rows(array![[0.0_f64, 1.0], [2.0, -1.0]].view());
/// let mut g = array![[1.0, -2.0], [0.5, 3.0]];
/// let expected = softmax_rows_vjp(s.view(), g.view());
/// softmax_rows_vjp_in_place(s.view(), &mut g);
/// assert_eq!(g, expected);
/// ```
pub fn softmax_rows_vjp_in_place<T: Scalar>(s: ArrayView2<T>, grad: &mut Array2<T>) {
    debug_assert_eq!(s.dim(), grad.dim());
    let k = s.ncols();
    let ss = rows::row_major(&s);
    rows::update_rows(grad, |r, g| softmax_vjp_row(&ss[r * k..(r + 1) * k], g));
}

/// One row of the softmax VJP, over the gradient `g`:
/// $g \leftarrow s \odot (g - \langle g, s\rangle)$.
#[inline]
fn softmax_vjp_row<T: Scalar>(s: &[T], g: &mut [T]) {
    let d = rows::dot(g, s);
    for (o, &sv) in g.iter_mut().zip(s) {
        *o = sv * (*o - d);
    }
}
