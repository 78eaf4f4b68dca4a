//! Helpers shared by the property tests.

#![allow(dead_code)]

use graphpool::framework::Layer;
use graphpool::grad::{check_layer_gradients, GradCheckOptions};
use graphpool::DisjointBatch;

/// Runs `f` on a dedicated rayon pool of `threads` threads.
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
        .install(f)
}

/// Asserts that a layer's backward pass matches central differences.
pub fn assert_gradients<L: Layer<f64> + Clone>(layer: &L, batch: &DisjointBatch<f64>) {
    let report = check_layer_gradients(layer, batch, GradCheckOptions::default())
        .expect("gradient check runs");
    assert!(report.passed(), "gradient check failed: {report}");
}

/// Asserts two arrays are equal within an absolute tolerance.
pub fn assert_close<D: ndarray::Dimension>(
    a: &ndarray::Array<f64, D>,
    b: &ndarray::Array<f64, D>,
    tol: f64,
) {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    for (x, y) in a.iter().zip(b.iter()) {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{x} vs {y}\n{a}\nvs\n{b}"
        );
    }
}
