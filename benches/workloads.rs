//! Bench workloads, generated deterministically (no files needed):
//! many small graphs, and one large sparse graph, both with F = 64.
//! Included by every bench file with `#[path = "workloads.rs"] mod workloads;`.

#![allow(dead_code)]

use graphpool::{DisjointBatch, Segments};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sprs::TriMat;

/// Number of features of every workload.
pub const F: usize = 64;

/// `graphs` graphs of 10..=50 nodes (mean 30), about `degree` directed edges
/// per node (symmetric), features in [-1, 1].
pub fn disjoint_small(graphs: usize, degree: usize, seed: u64) -> DisjointBatch<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sizes: Vec<usize> = (0..graphs).map(|_| rng.random_range(10..=50)).collect();
    build(&sizes, degree, &mut rng)
}

/// One graph of `n` nodes with average degree `degree` (random symmetric edges).
pub fn single_graph(n: usize, degree: usize, seed: u64) -> DisjointBatch<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    build(&[n], degree, &mut rng)
}

/// `n` nodes in graphs of 30, no edges (the global pools' workload).
pub fn global_only(n: usize, seed: u64) -> DisjointBatch<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sizes: Vec<usize> = std::iter::repeat_n(30, n / 30).collect();
    build(&sizes, 0, &mut rng)
}

fn build(sizes: &[usize], degree: usize, rng: &mut ChaCha8Rng) -> DisjointBatch<f32> {
    let seg = Segments::from_sizes(sizes);
    let n = seg.num_nodes();
    let x = Array2::from_shape_simple_fn((n, F), || rng.random_range(-1.0f32..1.0));
    let mut tri = TriMat::with_capacity((n, n), n * degree);
    for r in seg.ranges() {
        let m = r.len();
        if m < 2 {
            continue;
        }
        // degree/2 undirected edges per node, both directions stored
        for i in r.clone() {
            for _ in 0..degree / 2 {
                let j = r.start + rng.random_range(0..m);
                if j != i {
                    let w = rng.random_range(0.5f32..1.5);
                    tri.add_triplet(i, j, w);
                    tri.add_triplet(j, i, w);
                }
            }
        }
    }
    // duplicates are summed by to_csr, keeping the matrix symmetric
    DisjointBatch::new(x, tri.to_csr(), seg).expect("a valid generated workload")
}
