//! Trainable building blocks: named parameters, Keras-style initialisers,
//! dense layers, activations and MLPs, each with its vector-Jacobian product.

mod activation;
mod dense;
mod init;
mod mlp;
pub(crate) mod params;

pub use activation::{
    softmax_rows, softmax_rows_in_place, softmax_rows_vjp, softmax_rows_vjp_in_place, Activation,
};
pub use dense::{
    dense_backward_streamed, dense_backward_streamed_into, dense_pair_backward_streamed, matmul,
    matmul_acc, matmul_vjp, matmul_vjp_params, Dense, DenseCache, NARROW_COLS,
};
pub(crate) use dense::{matmul_acc_piece, transpose_times};
pub use init::{rng_from_seed, Initializer, ParamRng};
pub use mlp::{Mlp, MlpCache};
pub use params::Params;
