//! Replays saved fuzzer inputs through the fuzz targets' own code
//! (fuzz/src/lib.rs, included below), in this debug build with overflow
//! checks: every input that once crashed a target (`fuzz/regressions/<target>/`,
//! each file named after the defect it found). A panic fails the test and
//! names the file.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz;

use std::path::Path;

/// Replays every file of `dir/<target>/` through `<target>`; returns how many.
fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut count = 0;
    for (target, run) in fuzz::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("a readable input");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} panics on {}", file.display());
            count += 1;
        }
    }
    count
}

#[test]
fn every_input_that_once_crashed_a_fuzz_target_now_passes_its_checks() {
    let n = replay("fuzz/regressions");
    assert!(n >= 2, "the regression inputs are missing ({n} found)");
}

#[test]
fn every_seed_of_the_committed_corpus_passes_its_target_checks() {
    // fuzz/seeds/<target>/: inputs kept from the 10^6-run campaigns (the
    // largest of each target's set-cover-minimised corpus), replayed here so
    // that the checks they reach keep holding between campaigns
    let n = replay("fuzz/seeds");
    assert!(n >= 5 * 48, "the seed corpus is missing ({n} inputs found)");
}
