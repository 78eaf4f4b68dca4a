//! Keras-style initialisers drawn from a seedable RNG.

use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::scalar::Scalar;

/// The random source of every initialiser: ChaCha8, reproducible from a seed
/// on every platform.
pub type ParamRng = ChaCha8Rng;

/// How a parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Initializer {
    /// Keras `glorot_uniform`: $U(-l, l)$, $l = \sqrt{6 / (\text{fan\_in} + \text{fan\_out})}$
    /// where, as in Keras, for rank > 2 the leading dimensions multiply into a
    /// receptive field size that scales both fans.
    GlorotUniform,
    /// All zeros (Keras `zeros`, the default for biases).
    Zeros,
    /// $U(\text{lo}, \text{hi})$.
    Uniform(f64, f64),
}

impl Initializer {
    /// Draws an array of the given shape.
    pub fn sample<T: Scalar>(self, shape: &[usize], rng: &mut ParamRng) -> ArrayD<T> {
        let n: usize = shape.iter().product();
        let (lo, hi) = match self {
            Initializer::Zeros => return ArrayD::zeros(IxDyn(shape)),
            Initializer::Uniform(lo, hi) => (lo, hi),
            Initializer::GlorotUniform => {
                let (fan_in, fan_out) = fans(shape);
                let l = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
                (-l, l)
            }
        };
        let data: Vec<T> = (0..n).map(|_| T::c(rng.random_range(lo..=hi))).collect();
        super::params::dyn_array(shape, data)
    }
}

/// Keras' `_compute_fans`.
fn fans(shape: &[usize]) -> (usize, usize) {
    match shape.len() {
        0 => (1, 1),
        1 => (shape[0], shape[0]),
        2 => (shape[0], shape[1]),
        r => {
            let receptive: usize = shape[..r - 2].iter().product();
            (shape[r - 2] * receptive, shape[r - 1] * receptive)
        }
    }
}

/// A reproducible RNG from a seed.
pub fn rng_from_seed(seed: u64) -> ParamRng {
    ParamRng::seed_from_u64(seed)
}
