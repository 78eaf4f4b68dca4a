//! No quadratic memory: pooling one graph of $N = 2 \cdot 10^5$ nodes
//! allocates $O(\mathrm{nnz} + N F + N K)$ bytes in every layer.
//!
//! This file is its own test binary, so its counting global allocator only
//! sees this test. For every layer (one configuration per layer type: the
//! variants share its code paths) it measures the peak of the bytes live
//! during one forward pass (the pooling, including the cache it keeps for
//! the backward pass) above what was live before it, and asserts
//! $$\text{peak} \le C \cdot (\mathrm{nnz} + N F + N K) \cdot 8 \text{ bytes}, \qquad C = 16,$$
//! i.e. at most 16 `f64`-sized words per stored edge, feature and
//! assignment entry (the worst layer, LaPool, uses about 3.6): room for
//! the kept caches (a few $N \times F$ and $N \times K$ arrays, copies of
//! the structure for transposes and the GCN filter), and about 0.4 GB here,
//! where a single $N \times N$ matrix of `f32` would be 160 GB. F = 8 and
//! K = 4 keep it quick in a debug build; one rayon thread makes the peak
//! independent of scheduling.
//!
//! The graph is a wheel: a hub joined to every node of a ring ($\mathrm{nnz}
//! = 4(N - 1)$). Its Laplacian signal has one local maximum, the hub, so
//! LaPool has one leader: LaPool's assignment is $O(N L)$ by definition
//! (every node gets a weight for every leader of its graph), and a graph
//! with few leaders keeps that term $O(N)$ as the others.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;

use common::all_layers;
use graphpool::{DisjointBatch, Segments};
use ndarray::Array2;

/// Counts the live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            if new_size >= layout.size() {
                let d = new_size - layout.size();
                let now = LIVE.fetch_add(d, Ordering::SeqCst) + d;
                PEAK.fetch_max(now, Ordering::SeqCst);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The peak of live bytes above the live bytes before `f`, and `f`'s result.
fn peak_of<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = f();
    (PEAK.load(Ordering::SeqCst) - base, r)
}

const N: usize = 200_000;
const F: usize = 8;
const K: usize = 4;
/// Words of 8 bytes allowed per stored edge, feature and assignment entry.
const C: usize = 16;

/// The wheel, built row by row in CSR order (sorted columns per row).
fn wheel(n: usize) -> DisjointBatch<f32> {
    let m = n - 1;
    let ring_w = |i: usize| 0.5 + (i % 7) as f32 / 4.0; // weight of the edge i -- i + 1
    let mut indptr = Vec::with_capacity(n + 1);
    let mut indices = Vec::with_capacity(4 * m);
    let mut data = Vec::with_capacity(4 * m);
    indptr.push(0);
    indices.extend(1..n);
    data.extend(std::iter::repeat_n(1.0f32, m));
    indptr.push(indices.len());
    for i in 0..m {
        // ring neighbours of node 1 + i: 1 + (i - 1 mod m) and 1 + (i + 1 mod m)
        let (prev, next) = ((i + m - 1) % m, (i + 1) % m);
        let mut row = vec![(0, 1.0), (1 + prev, ring_w(prev)), (1 + next, ring_w(i))];
        row.sort_by_key(|e| e.0);
        row.dedup_by_key(|e| e.0);
        for (c, v) in row {
            indices.push(c);
            data.push(v);
        }
        indptr.push(indices.len());
    }
    let x = Array2::from_shape_fn((n, F), |(i, j)| {
        ((i * 31 + j * 17) % 97) as f32 / 50.0 - 1.0
    });
    DisjointBatch::from_csr_parts(x, indptr, indices, data, Segments::single(n)).unwrap()
}

#[test]
fn pooling_one_graph_of_200k_nodes_allocates_linear_memory_in_every_layer() {
    // one thread: the peak then does not depend on how rayon interleaves work
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        let b = wheel(N);
        let nnz = b.a().nnz();
        let bound = C * (nnz + N * F + N * K) * 8;
        eprintln!(
            "N = {N}, nnz = {nnz}, F = {F}, K = {K}: bound {} MB (N^2 f32 would be {} GB)",
            bound / 1_000_000,
            (N * N * 4) / 1_000_000_000
        );
        let mut worst = 0.0f64;
        let mut seen = std::collections::BTreeSet::new();
        for (name, run) in all_layers::<f32>(F, K) {
            // one configuration per layer type (variants share the code paths)
            let base_name = name.split('(').next().unwrap();
            if !seen.insert(base_name.to_string()) {
                continue;
            }
            let t0 = std::time::Instant::now();
            let (peak, r) = peak_of(|| run.forward(&b));
            r.unwrap_or_else(|e| panic!("{name}: {e}"));
            let words = peak as f64 / 8.0 / (nnz + N * F + N * K) as f64;
            worst = worst.max(words);
            eprintln!(
                "{name:<22} forward peak {:>7.1} MB = {words:5.2} words per entry ({:?})",
                peak as f64 / 1e6,
                t0.elapsed()
            );
            assert!(
                peak <= bound,
                "{name}: peak {peak} bytes > {C} words x (nnz + N F + N K) = {bound}"
            );
        }
        eprintln!("worst: {worst:.2} words per entry (bound {C})");
    });
}
