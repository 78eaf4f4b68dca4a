//! Every malformed batch is refused with the specific typed error naming the
//! first offending index; valid corner cases (empty, single-node, edgeless
//! graphs) are accepted.

use graphpool::{DisjointBatch, PoolError, Segments};
use ndarray::{array, Array2};
use sprs::{CsMat, TriMat};

fn edge(n: usize, r: usize, c: usize, w: f64) -> CsMat<f64> {
    let mut t = TriMat::new((n, n));
    t.add_triplet(r, c, w);
    t.to_csr()
}

#[test]
fn unsorted_graph_ids_are_refused_naming_the_node() {
    let e = Segments::from_graph_ids(&[0, 1, 0], 2).unwrap_err();
    assert_eq!(
        e,
        PoolError::UnsortedGraphIds {
            node: 2,
            id: 0,
            prev: 1
        }
    );
}

#[test]
fn out_of_range_graph_ids_are_refused() {
    let e = Segments::from_graph_ids(&[0, 0, 2], 2).unwrap_err();
    assert_eq!(
        e,
        PoolError::GraphIdOutOfRange {
            node: 2,
            id: 2,
            num_graphs: 2
        }
    );
}

#[test]
fn negative_graph_ids_are_refused() {
    let e = Segments::from_graph_ids_i64(&[0, -1], 1).unwrap_err();
    assert_eq!(e, PoolError::NegativeGraphId { node: 1, id: -1 });
}

#[test]
fn decreasing_or_nonzero_first_offsets_are_refused() {
    assert!(matches!(
        Segments::from_offsets(vec![]),
        Err(PoolError::InvalidOffsets(_))
    ));
    assert!(matches!(
        Segments::from_offsets(vec![1, 2]),
        Err(PoolError::InvalidOffsets(_))
    ));
    assert!(matches!(
        Segments::from_offsets(vec![0, 3, 2]),
        Err(PoolError::InvalidOffsets(_))
    ));
}

#[test]
fn gapped_graph_ids_make_empty_graphs_not_errors() {
    // ids 0 and 2 with 4 graphs: graphs 1 and 3 are empty, and representable
    let s = Segments::from_graph_ids(&[0, 2], 4).unwrap();
    assert_eq!(s.sizes(), vec![1, 0, 1, 0]);
}

#[test]
fn feature_rows_must_match_the_segments() {
    let e = DisjointBatch::new(
        Array2::<f64>::zeros((2, 1)),
        CsMat::zero((3, 3)),
        Segments::single(3),
    )
    .unwrap_err();
    assert!(matches!(e, PoolError::ShapeMismatch { .. }), "{e}");
}

#[test]
fn non_square_or_wrong_size_adjacency_is_refused() {
    let e = DisjointBatch::single(Array2::<f64>::zeros((3, 1)), CsMat::zero((3, 2))).unwrap_err();
    assert_eq!(
        e,
        PoolError::AdjacencyShape {
            n: 3,
            rows: 3,
            cols: 2
        }
    );
}

#[test]
fn csc_adjacency_is_refused() {
    let a = edge(2, 0, 1, 1.0).to_csc();
    let e = DisjointBatch::single(Array2::<f64>::zeros((2, 1)), a).unwrap_err();
    assert_eq!(e, PoolError::NotCsr);
}

#[test]
fn edges_between_graphs_are_refused_naming_both_graphs() {
    let e = DisjointBatch::from_graph_ids(
        Array2::<f64>::zeros((3, 1)),
        edge(3, 1, 2, 1.0),
        &[0, 0, 1],
        2,
    )
    .unwrap_err();
    assert_eq!(
        e,
        PoolError::EdgeBetweenGraphs {
            row: 1,
            col: 2,
            row_graph: 0,
            col_graph: 1
        }
    );
}

#[test]
fn non_finite_features_are_refused_naming_the_entry() {
    let e = DisjointBatch::single(array![[0.0, f64::NAN]], CsMat::zero((1, 1))).unwrap_err();
    match e {
        PoolError::NonFinite { what, index, .. } => {
            assert_eq!(what, "x");
            assert_eq!(index, "(0, 1)");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn non_finite_edge_weights_are_refused() {
    let e = DisjointBatch::single(Array2::<f64>::zeros((2, 1)), edge(2, 0, 1, f64::INFINITY))
        .unwrap_err();
    assert!(
        matches!(e, PoolError::NonFinite { ref what, .. } if what == "edge weights"),
        "{e}"
    );
}

#[test]
fn malformed_csr_parts_are_refused() {
    let x = Array2::<f64>::zeros((2, 1));
    // indptr too short, unsorted indices, index out of range
    for (ip, ix) in [
        (vec![0, 1], vec![1]),
        (vec![0, 2, 2], vec![1, 0]),
        (vec![0, 1, 1], vec![5]),
    ] {
        let n = ix.len();
        let e = DisjointBatch::from_csr_parts(x.clone(), ip, ix, vec![1.0; n], Segments::single(2))
            .unwrap_err();
        assert!(matches!(e, PoolError::InvalidCsr(_)), "{e}");
    }
}

#[test]
fn duplicate_and_out_of_range_edges_in_edge_lists_are_refused() {
    let x = Array2::<f64>::zeros((2, 1));
    let dup = array![[0_i64, 0], [1, 1]];
    assert!(matches!(
        DisjointBatch::from_edge_index(x.clone(), dup.view(), None, &[0, 0], 1),
        Err(PoolError::InvalidCsr(_))
    ));
    let oob = array![[0_i64], [2]];
    assert!(matches!(
        DisjointBatch::from_edge_index(x.clone(), oob.view(), None, &[0, 0], 1),
        Err(PoolError::InvalidCsr(_))
    ));
    let neg = array![[-1_i64], [0]];
    assert!(matches!(
        DisjointBatch::from_edge_index(x, neg.view(), None, &[0, 0], 1),
        Err(PoolError::InvalidCsr(_))
    ));
}

#[test]
fn stacking_graphs_of_different_widths_is_refused() {
    let g1 = (Array2::<f64>::zeros((1, 2)), CsMat::zero((1, 1)));
    let g2 = (Array2::<f64>::zeros((1, 3)), CsMat::zero((1, 1)));
    assert!(matches!(
        DisjointBatch::stack(&[g1, g2]),
        Err(PoolError::ShapeMismatch { .. })
    ));
}

#[test]
fn empty_single_node_and_edgeless_graphs_are_valid_and_split_back() {
    let x = array![[1.0], [2.0], [3.0]];
    let b = DisjointBatch::from_offsets(x, edge(3, 1, 2, 1.0), vec![0, 0, 1, 3, 3]).unwrap();
    assert_eq!(b.segments().sizes(), vec![0, 1, 2, 0]);
    let parts = b.split();
    assert_eq!(parts.len(), 4);
    assert_eq!(DisjointBatch::stack(&parts).unwrap(), b);
    let none =
        DisjointBatch::<f64>::from_offsets(Array2::zeros((0, 3)), CsMat::zero((0, 0)), vec![0])
            .unwrap();
    assert_eq!(none.num_graphs(), 0);
}

#[test]
fn every_batch_constructor_keeps_x_on_a_cache_line() {
    use graphpool::kernels::rows::CACHE_LINE;
    let aligned = |b: &DisjointBatch<f32>| (b.x().as_ptr() as usize).is_multiple_of(CACHE_LINE);
    // a large x from the allocator starts 16 bytes past a page: not on a line
    let n = 1 << 16;
    let x = Array2::from_shape_fn((n, 16), |(i, j)| (i * 16 + j) as f32);
    let mut t = TriMat::new((n, n));
    t.add_triplet(0, 1, 1.0_f32);
    t.add_triplet(1, 0, 1.0);
    let b = DisjointBatch::single(x.clone(), t.to_csr()).unwrap();
    assert!(aligned(&b));
    assert_eq!(b.x(), &x);
    let c = b.clone();
    assert!(aligned(&c));
    assert_eq!(c, b);
    assert!(aligned(&b.with_x(x.clone()).unwrap()));
    assert!(aligned(&b.with_edge_weights(vec![2.0, 2.0]).unwrap()));
    let mut perm: Vec<usize> = (0..n).collect();
    perm.swap(0, 5);
    let p = b.permute_nodes(&perm).unwrap();
    assert!(aligned(&p));
    assert_eq!(p.x().row(0), x.row(5));
    let s = DisjointBatch::stack(&[(x.clone(), t.to_csr()), (x.clone(), t.to_csr())]).unwrap();
    assert!(aligned(&s));
    assert_eq!(s.x().row(n + 3), x.row(3));
}
