//! Arbitrary CSR parts, graph ids and features: constructing a batch either
//! succeeds or returns a typed error, never panics; a built batch splits and
//! restacks to itself.
#![no_main]

use graphpool::DisjointBatch;
use graphpool_fuzz::RawBatch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: RawBatch| {
    if let Ok(b) = raw.build() {
        let parts = b.split();
        let again = DisjointBatch::stack(&parts).expect("the graphs of a valid batch restack");
        assert_eq!(again.x(), b.x());
    }
});
