//! The clustering pools, DiffPool and MemPooling on valid batches widened
//! past 64 features (the wide paths of the shared small-product kernels),
//! with every check of `clustering_pools` and `diff_mem_pools`.
//!
//! The body lives in `graphpool_fuzz::wide_features` (fuzz/src/lib.rs),
//! shared with the replay test `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: graphpool_fuzz::single_thread(),
    |data: &[u8]| graphpool_fuzz::wide_features(data)
);
