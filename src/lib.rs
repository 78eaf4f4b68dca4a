//! # graphpool
//!
//! Graph-neural-network pooling layers on sparse graphs in *disjoint mode*:
//! one feature matrix $X$ ($N \times F$) stacking the nodes of every graph,
//! one block-diagonal CSR adjacency $A$ ($N \times N$), and the segment layout
//! of the graphs ([`DisjointBatch`]).
//!
//! * **The same numbers** as Spektral and PyTorch Geometric (checked against
//!   cases computed by running them; see `examples/conformance`).
//! * **Sparse everywhere**: no layer ever forms an $N \times N$ dense matrix;
//!   memory stays $O(\mathrm{nnz} + N F + N K)$.
//! * **Parallel and deterministic**: segment reductions and sparse products
//!   run on rayon and give the same bits whatever the number of threads.
//! * **Differentiable**: every layer has a backward pass ([`framework::Layer`]),
//!   checked against finite differences ([`grad::check_layer_gradients`]).
//!
//! ## Layout
//! * [`batch`]: the validated disjoint batch and its [`Segments`];
//! * [`kernels`]: segment reductions, sorting / top-k, sparse products, each with its VJP;
//! * [`framework`]: the [`framework::Layer`] contract and the SRC framework;
//! * [`nn`]: parameters, initialisers, dense layers, activations, MLPs;
//! * [`layers`]: the pooling layers, one module per layer or family;
//! * [`grad`]: the finite-difference gradient checker.
//!
//! ## Example
//! ```
//! use graphpool::layers::GlobalAvgPool;
//! use graphpool::framework::Layer;
//! use graphpool::DisjointBatch;
//! use ndarray::array;
//! use sprs::CsMat;
//!
//! let x = array![[1.0_f32, 2.0], [3.0, 4.0], [5.0, 6.0]];
//! let batch = DisjointBatch::from_graph_ids(x, CsMat::zero((3, 3)), &[0, 0, 1], 2)?;
//! let pooled = GlobalAvgPool.call(&batch)?;
//! assert_eq!(pooled, array![[2.0, 3.0], [5.0, 6.0]]);
//! # Ok::<(), graphpool::PoolError>(())
//! ```

#![warn(missing_docs)]

pub mod batch;
pub mod error;
pub mod framework;
pub mod grad;
pub mod kernels;
pub mod layers;
pub mod nn;
pub mod scalar;

#[cfg(feature = "proptest")]
pub mod proptest;

pub use batch::{DisjointBatch, Segments};

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub use error::{PoolError, Result};
pub use scalar::Scalar;
