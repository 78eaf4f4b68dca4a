//! Public proptest strategies for disjoint batches (feature `proptest`).
//!
//! ```
//! use graphpool::proptest::{batches, BatchShape};
//! use proptest::strategy::{Strategy, ValueTree};
//! use proptest::test_runner::TestRunner;
//!
//! let mut runner = TestRunner::deterministic();
//! let b = batches(BatchShape::default()).new_tree(&mut runner).unwrap().current();
//! assert!(b.num_graphs() >= 1);
//! ```

use std::ops::RangeInclusive;

use ndarray::Array2;
use proptest::prelude::*;
use sprs::TriMat;

use crate::batch::{DisjointBatch, Segments};

/// The size of the batches [`batches`] draws.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchShape {
    /// Number of graphs.
    pub graphs: RangeInclusive<usize>,
    /// Nodes per graph (0 allowed: empty graphs).
    pub nodes: RangeInclusive<usize>,
    /// Number of features.
    pub features: RangeInclusive<usize>,
    /// Probability of each undirected edge.
    pub edge_probability: f64,
    /// Whether edge weights are drawn in $[0.5, 2]$ (else all 1).
    pub weighted: bool,
    /// Probability that a graph is directed: each of its edges is then
    /// stored one way only (either way, drawn per edge), so its adjacency is
    /// not symmetric. 0 (the default): every graph is undirected.
    pub directed: f64,
}

impl Default for BatchShape {
    fn default() -> Self {
        Self {
            graphs: 1..=4,
            nodes: 1..=8,
            features: 1..=4,
            edge_probability: 0.4,
            weighted: true,
            directed: 0.0,
        }
    }
}

/// Batches of random graphs: adjacency without self loops, symmetric unless
/// a graph is drawn directed ([`BatchShape::directed`]), weights in
/// $[0.5, 2]$, features in $[-2, 2]$ (continuous, so ties have probability
/// zero).
pub fn batches(shape: BatchShape) -> impl Strategy<Value = DisjointBatch<f64>> {
    let BatchShape {
        graphs,
        nodes,
        features,
        edge_probability,
        weighted,
        directed,
    } = shape;
    (proptest::collection::vec(nodes, graphs), features)
        .prop_flat_map(move |(sizes, f)| {
            let n: usize = sizes.iter().sum();
            let pairs: usize = sizes.iter().map(|s| s * s.saturating_sub(1) / 2).sum();
            let graphs = sizes.len();
            (
                Just(sizes),
                proptest::collection::vec(-2.0f64..2.0, n * f),
                proptest::collection::vec((0.0f64..1.0, 0.5f64..2.0), pairs),
                proptest::collection::vec(0.0f64..1.0, graphs),
                Just(f),
            )
        })
        .prop_map(move |(sizes, xs, edges, kinds, f)| {
            let segments = Segments::from_sizes(&sizes);
            let n = segments.num_nodes();
            let x = Array2::from_shape_vec((n, f), xs).expect("n * f features");
            let mut tri = TriMat::new((n, n));
            let mut e = 0;
            for (r, &kind) in segments.ranges().zip(&kinds) {
                let one_way = kind < directed;
                for i in r.clone() {
                    for j in i + 1..r.end {
                        let (p, w) = edges[e];
                        e += 1;
                        if p < edge_probability {
                            let w = if weighted { w } else { 1.0 };
                            if !one_way || p < edge_probability / 2.0 {
                                tri.add_triplet(i, j, w);
                            }
                            if !one_way || p >= edge_probability / 2.0 {
                                tri.add_triplet(j, i, w);
                            }
                        }
                    }
                }
            }
            DisjointBatch::new(x, tri.to_csr(), segments).expect("a valid random batch")
        })
}

/// A batch together with a permutation of its nodes within graphs
/// (`perm[j]` = old index of new node `j`), for equivariance properties.
pub fn batch_and_permutation(
    shape: BatchShape,
) -> impl Strategy<Value = (DisjointBatch<f64>, Vec<usize>)> {
    batches(shape)
        .prop_flat_map(|b| {
            let n = b.num_nodes();
            (Just(b), proptest::collection::vec(any::<u64>(), n))
        })
        .prop_map(|(b, keys)| {
            let mut perm = Vec::with_capacity(b.num_nodes());
            for r in b.segments().ranges() {
                let mut idx: Vec<usize> = r.collect();
                idx.sort_by_key(|&i| (keys[i], i));
                perm.extend(idx);
            }
            (b, perm)
        })
}
