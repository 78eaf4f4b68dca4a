//! Arbitrary CSR parts, graph ids, offsets, edge lists and features through
//! every checked batch constructor: a typed error or a valid batch that
//! revalidates, splits, restacks and selects to itself; never a panic.
//!
//! The body and every check live in `graphpool_fuzz::batch_construction` (fuzz/src/lib.rs),
//! shared with the replay test `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: graphpool_fuzz::single_thread(),
    |data: &[u8]| graphpool_fuzz::batch_construction(data)
);
