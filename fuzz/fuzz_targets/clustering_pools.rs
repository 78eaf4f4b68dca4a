//! MinCut, DMoN (both variants), JustBalance and AsymCheegerCut pools,
//! forward and backward, on arbitrary valid batches with arbitrary k, MLP
//! widths, activation and loss coefficients, in f32 and f64.
//!
//! The body and every check live in `graphpool_fuzz::clustering_pools` (fuzz/src/lib.rs),
//! shared with the replay test `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: graphpool_fuzz::single_thread(),
    |data: &[u8]| graphpool_fuzz::clustering_pools(data)
);
