//! DiffPool and MemPooling, forward and backward, on arbitrary valid batches
//! and configurations (invalid ones included), in f32 and f64.
//!
//! The body and every check live in `graphpool_fuzz::diff_mem_pools` (fuzz/src/lib.rs),
//! shared with the replay test `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: graphpool_fuzz::single_thread(),
    |data: &[u8]| graphpool_fuzz::diff_mem_pools(data)
);
