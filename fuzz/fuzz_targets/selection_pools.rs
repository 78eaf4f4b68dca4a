//! TopKPool, SAGPool (both scorers) and LaPool, forward and backward, on
//! arbitrary valid batches and configurations (invalid ratios, counts,
//! thresholds and multipliers included), in f32 and f64; the pooled batch
//! is pooled again.
//!
//! The body and every check live in `graphpool_fuzz::selection_pools` (fuzz/src/lib.rs),
//! shared with the replay test `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: graphpool_fuzz::single_thread(),
    |data: &[u8]| graphpool_fuzz::selection_pools(data)
);
