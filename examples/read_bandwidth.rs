//! `cargo run --release --example read_bandwidth [-- --gib 1 --repeat 7]`
//!
//! Measures the machine's memory read bandwidth with the run's thread count
//! (rayon's pool, `RAYON_NUM_THREADS`), so `bench/compare.py` can quote the
//! global pools as a fraction of it. Allocates a buffer of `--gib` GiB of
//! f32 (default 1 GiB, far beyond any cache), touches every page first,
//! then sums it `--repeat` times (default 7) in parallel: fixed chunks of
//! 1 MiB, each summed by a loop with 32 independent accumulators that the
//! compiler vectorises, the result kept alive with `black_box`. Prints one
//! JSON line: bytes (read per run), median_s, min_s, gb_per_s (bytes /
//! median, 10^9 bytes per second), threads.

use std::hint::black_box;
use std::time::Instant;

use rayon::prelude::*;

const LANES: usize = 32;
const CHUNK: usize = 1 << 18; // f32 per task: 1 MiB

/// Sum of a slice with `LANES` independent accumulators (vectorised: no
/// dependency between lanes, so no reassociation is needed).
fn chunk_sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut blocks = xs.chunks_exact(LANES);
    for b in &mut blocks {
        for (a, &v) in acc.iter_mut().zip(b) {
            *a += v;
        }
    }
    let tail: f32 = blocks.remainder().iter().sum();
    acc.iter().sum::<f32>() + tail
}

fn parse() -> Result<(f64, usize), String> {
    let (mut gib, mut repeat) = (1.0f64, 7usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--gib" => gib = value.parse().map_err(|e| format!("--gib: {e}"))?,
            "--repeat" => repeat = value.parse().map_err(|e| format!("--repeat: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !gib.is_finite() || gib <= 0.0 || repeat == 0 {
        return Err("usage: read_bandwidth [--gib 1] [--repeat 7] (both positive)".into());
    }
    Ok((gib, repeat))
}

fn main() {
    let (gib, repeat) = match parse() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let len = ((gib * (1u64 << 30) as f64) as usize / 4).max(LANES);
    // zero-filled pages are mapped lazily: write every element (in parallel,
    // like the reads) so the timed runs read resident memory
    let mut buf = vec![0.0f32; len];
    buf.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
        c.fill((i % 7) as f32 * 0.125 + 1.0);
    });
    let sum = || -> f32 { buf.par_chunks(CHUNK).map(chunk_sum).sum() };
    black_box(sum()); // warm-up
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        black_box(sum());
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    let bytes = (len * std::mem::size_of::<f32>()) as u64;
    println!(
        "{{\"bytes\": {bytes}, \"median_s\": {median}, \"min_s\": {}, \"gb_per_s\": {}, \"threads\": {}}}",
        times[0],
        bytes as f64 / median / 1e9,
        rayon::current_num_threads()
    );
}
