//! `cargo run --release --example conformance -- DIR`
//!
//! Runs every conformance case in DIR (format: `../shared/conformance/README.md`)
//! and prints `PASS name`, `FAIL name: why` or `SKIP name: why` per case, then
//! `N passed, M failed, K skipped`. Exits non-zero on any failure or when DIR
//! holds no case.

mod runner;

use runner::Verdict;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: conformance DIR");
        std::process::exit(2);
    };
    let verdicts = match runner::run_dir(std::path::Path::new(&dir)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    for (name, v) in &verdicts {
        match v {
            Verdict::Pass => {
                pass += 1;
                println!("PASS {name}");
            }
            Verdict::Fail(why) => {
                fail += 1;
                println!("FAIL {name}: {why}");
            }
            Verdict::Skip(why) => {
                skip += 1;
                println!("SKIP {name}: {why}");
            }
        }
    }
    println!("{pass} passed, {fail} failed, {skip} skipped");
    if verdicts.is_empty() {
        eprintln!("no case in {dir}");
        std::process::exit(1);
    }
    if fail > 0 {
        std::process::exit(1);
    }
}
