//! Every conformance case (computed by running Spektral and PyG) must pass.
//!
//! Runs the same runner as `cargo run --example conformance -- DIR` over the
//! copy of the cases kept in `tests/conformance_cases/`, and over
//! `../shared/conformance/cases` too when that folder exists (it may hold
//! newer cases).

#[path = "../examples/conformance/runner.rs"]
mod runner;

use std::path::{Path, PathBuf};

use runner::Verdict;

fn check_dir(dir: &Path) {
    let verdicts = runner::run_dir(dir).expect("the case folder is readable");
    assert!(!verdicts.is_empty(), "no case in {}", dir.display());
    let failures: Vec<String> = verdicts
        .iter()
        .filter_map(|(n, v)| match v {
            Verdict::Fail(why) => Some(format!("FAIL {n}: {why}")),
            _ => None,
        })
        .collect();
    let skipped: Vec<&String> = verdicts
        .iter()
        .filter_map(|(_, v)| match v {
            Verdict::Skip(why) => Some(why),
            _ => None,
        })
        .collect();
    let passed = verdicts.len() - failures.len() - skipped.len();
    println!(
        "{}: {passed} passed, {} failed, {} skipped",
        dir.display(),
        failures.len(),
        skipped.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        skipped.is_empty(),
        "cases of unimplemented layers: {skipped:?}"
    );
}

#[test]
fn every_bundled_conformance_case_passes() {
    check_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance_cases"));
}

#[test]
fn every_shared_conformance_case_passes() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/cases");
    if shared.is_dir() {
        check_dir(&shared);
    } else {
        println!(
            "{} not present: covered by the bundled copy",
            shared.display()
        );
    }
}
