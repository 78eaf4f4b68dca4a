//! The kernels added for the clustering pools: per-graph column quantile
//! (k-th largest), zero-diagonal block normalisation and per-graph edge
//! total variation, against dense oracles and finite differences, and
//! thread-count independence.

mod common;

use common::with_threads;
use graphpool::kernels::segment::{
    normalize_blocks, normalize_blocks_vjp, segment_kth_largest, segment_kth_largest_vjp,
    SMALL_RANK,
};
use graphpool::kernels::sparse::{segment_edge_l1, segment_edge_l1_vjp, segment_nnz};
use graphpool::Segments;
use ndarray::{Array1, Array2};
use proptest::prelude::*;
use sprs::{CsMat, TriMat};

/// Segments plus a per-node matrix (distinct values) and a block-diagonal
/// matrix with weights in [0.5, 2] (not necessarily symmetric).
fn graph_data() -> impl Strategy<Value = (Segments, Array2<f64>, CsMat<f64>)> {
    (proptest::collection::vec(0usize..7, 1..4), 1usize..4).prop_flat_map(|(sizes, k)| {
        let seg = Segments::from_sizes(&sizes);
        let n = seg.num_nodes();
        (
            Just(seg),
            proptest::collection::vec(-3.0f64..3.0, n * k),
            proptest::collection::vec((0.0f64..1.0, 0.5f64..2.0), n * n),
            Just(k),
        )
            .prop_map(|(seg, vals, edges, k)| {
                let n = seg.num_nodes();
                let s = Array2::from_shape_vec((n, k), vals).unwrap();
                let mut t = TriMat::new((n, n));
                for r in seg.ranges() {
                    for i in r.clone() {
                        for j in r.clone() {
                            let (p, w) = edges[i * n + j];
                            if p < 0.4 {
                                t.add_triplet(i, j, w);
                            }
                        }
                    }
                }
                (seg, s, t.to_csr())
            })
    })
}

/// Segments of up to 3 * SMALL_RANK nodes (so that ranks reach both the
/// scan and the selection of `segment_kth_largest`) and a per-node matrix
/// of 1 to 40 columns (so that the row scan takes its columns in several
/// passes at the larger ranks).
fn quantile_data() -> impl Strategy<Value = (Segments, Array2<f64>)> {
    (
        proptest::collection::vec(0usize..3 * SMALL_RANK, 1..4),
        1usize..40,
    )
        .prop_flat_map(|(sizes, k)| {
            let seg = Segments::from_sizes(&sizes);
            let n = seg.num_nodes();
            proptest::collection::vec(-3.0f64..3.0, n * k)
                .prop_map(move |vals| (seg.clone(), Array2::from_shape_vec((n, k), vals).unwrap()))
        })
}

fn cotangent(n: usize, seed: u64) -> Vec<f64> {
    (0..n)
        .map(|e| ((e as u64 * 2654435761 + seed) % 1000) as f64 / 500.0 - 1.0)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Ranks on both sides of SMALL_RANK (scan and selection), and values
    /// rounded to quarters when `ties` (many equal values per column).
    #[test]
    fn kth_largest_equals_a_full_sort_per_graph_and_column(
        (seg, s) in quantile_data(),
        r in 1usize..3 * SMALL_RANK,
        ties in any::<bool>(),
    ) {
        let s = if ties { s.mapv(|v| (v * 4.0).round() / 4.0) } else { s };
        let q = segment_kth_largest(s.view(), &seg, |_| r);
        for (g, range) in seg.ranges().enumerate() {
            for c in 0..s.ncols() {
                if range.is_empty() {
                    prop_assert_eq!(q.values[[g, c]], 0.0);
                    prop_assert_eq!(q.nodes[[g, c]], usize::MAX);
                    continue;
                }
                let mut col: Vec<(f64, usize)> = range.clone().map(|n| (s[[n, c]], n)).collect();
                col.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
                let want = col[r.min(col.len()) - 1];
                prop_assert_eq!((q.values[[g, c]], q.nodes[[g, c]]), want);
            }
        }
    }

    /// Tied entries ahead of a larger one that enters later: each pushed
    /// down one level, still in node order (the case rustc 1.95's LLVM
    /// miscompiled in a vectorised form of the row scan), in every lane of a
    /// 16-column group and its remainder.
    #[test]
    fn kth_largest_keeps_tied_entries_in_node_order_below_a_later_larger_one(
        k in 1usize..40,
        r in 1usize..=9,
    ) {
        let mut s = Array2::<f64>::zeros((9, k));
        for c in 0..k {
            s[[6, c]] = 0.86;
            s[[7, c]] = 0.15;
            s[[8, c]] = -0.5;
        }
        let q = segment_kth_largest(s.view(), &Segments::single(9), |_| r);
        let order = [6, 7, 0, 1, 2, 3, 4, 5, 8];
        for c in 0..k {
            prop_assert_eq!(q.nodes[[0, c]], order[r - 1]);
            prop_assert_eq!(q.values[[0, c]], s[[order[r - 1], c]]);
        }
    }

    #[test]
    fn kth_largest_breaks_ties_by_the_smaller_node_index(n in 1usize..20, r in 1usize..20) {
        let s = Array2::from_elem((n, 2), 0.5);
        let q = segment_kth_largest(s.view(), &Segments::single(n), |_| r);
        prop_assert_eq!(q.nodes[[0, 0]], r.min(n) - 1);
    }

    #[test]
    fn kth_largest_vjp_matches_finite_differences((seg, s, _) in graph_data(), r in 1usize..4) {
        let q = segment_kth_largest(s.view(), &seg, |_| r);
        let cot = Array2::from_shape_vec(q.values.raw_dim(), cotangent(q.values.len(), 7)).unwrap();
        let gs = segment_kth_largest_vjp(&q, cot.view(), s.nrows());
        let loss = |s: &Array2<f64>| (segment_kth_largest(s.view(), &seg, |_| r).values * &cot).sum();
        for ((i, j), &v) in s.indexed_iter() {
            let h = 1e-7;
            let (mut sp, mut sm) = (s.clone(), s.clone());
            sp[[i, j]] = v + h;
            sm[[i, j]] = v - h;
            let num = (loss(&sp) - loss(&sm)) / (2.0 * h);
            prop_assert!((num - gs[[i, j]]).abs() < 1e-6, "({i}, {j}): {} vs {num}", gs[[i, j]]);
        }
    }

    #[test]
    fn normalized_blocks_equal_the_dense_zero_diagonal_normalisation(k in 1usize..5, b in 0usize..4, seed in 0u64..1000, eps in prop::sample::select(vec![1e-7, 1e-15])) {
        let vals = cotangent(b * k * k, seed).into_iter().map(|v| v + 1.0).collect();
        let blocks = Array2::from_shape_vec((b * k, k), vals).unwrap();
        let nb = normalize_blocks(blocks.view(), eps);
        for g in 0..b {
            let mut z = blocks.slice(ndarray::s![g * k..(g + 1) * k, ..]).to_owned();
            for i in 0..k { z[[i, i]] = 0.0; }
            let d: Array1<f64> = z.sum_axis(ndarray::Axis(1)).mapv(|v| v.max(0.0).sqrt() + eps);
            for i in 0..k {
                prop_assert_eq!(nb.out[[g * k + i, i]], 0.0);
                for j in 0..k {
                    let want = z[[i, j]] / d[i] / d[j];
                    prop_assert!((nb.out[[g * k + i, j]] - want).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn normalize_blocks_vjp_plus_a_direct_gradient_matches_finite_differences(k in 1usize..5, b in 1usize..3, seed in 0u64..1000) {
        let vals = cotangent(b * k * k, seed).into_iter().map(|v| v + 1.2).collect();
        let blocks = Array2::from_shape_vec((b * k, k), vals).unwrap();
        let cot = Array2::from_shape_vec((b * k, k), cotangent(b * k * k, seed + 1)).unwrap();
        let nb = normalize_blocks(blocks.view(), 1e-7);
        // a second path to the raw blocks (a loss's), added by the VJP
        let direct = Array2::from_shape_vec((b * k, k), cotangent(b * k * k, seed + 2)).unwrap();
        let gc = normalize_blocks_vjp(&nb, cot.view(), direct.view());
        let loss = |m: &Array2<f64>| (normalize_blocks(m.view(), 1e-7).out * &cot).sum() + (m * &direct).sum();
        for ((i, j), &v) in blocks.indexed_iter() {
            let h = 1e-6;
            let (mut p, mut m) = (blocks.clone(), blocks.clone());
            p[[i, j]] = v + h;
            m[[i, j]] = v - h;
            let num = (loss(&p) - loss(&m)) / (2.0 * h);
            prop_assert!((num - gc[[i, j]]).abs() < 1e-6 * (1.0 + num.abs()), "({i}, {j}): {} vs {num}", gc[[i, j]]);
        }
    }

    #[test]
    fn edge_total_variation_equals_the_dense_all_pairs_sum((seg, s, a) in graph_data()) {
        let tv = segment_edge_l1(a.view(), s.view(), &seg);
        let nnz = segment_nnz(a.view(), &seg);
        let mut dense = Array2::<f64>::zeros((a.rows(), a.cols()));
        for (&v, (r, c)) in a.iter() { dense[[r, c]] += v; }
        for (g, range) in seg.ranges().enumerate() {
            let mut want = 0.0;
            let mut count = 0;
            for i in range.clone() {
                for j in range.clone() {
                    if dense[[i, j]] != 0.0 { count += 1; }
                    want += dense[[i, j]] * (0..s.ncols()).map(|c| (s[[i, c]] - s[[j, c]]).abs()).sum::<f64>();
                }
            }
            prop_assert!((tv[g] - want).abs() < 1e-10 * (1.0 + want));
            prop_assert_eq!(nnz[g], count);
        }
    }

    /// A symmetric $A$ takes the path without a transpose (incoming entries
    /// read as the outgoing ones): against the dense formula
    /// $\bar S_i = \bar t_g \sum_j (a_{ij} + a_{ji})\,\mathrm{sign}(S_i - S_j)$.
    #[test]
    fn edge_total_variation_vjp_of_a_symmetric_matrix_equals_the_dense_formula((seg, s, a) in graph_data(), seed in 0u64..100) {
        let at = a.transpose_view().to_csr();
        let sym = &a + &at;
        prop_assert!(graphpool::kernels::sparse::symmetric_graphs(sym.view(), &seg).iter().all(|&v| v));
        let cot = Array1::from(cotangent(seg.num_graphs(), seed));
        let (gs, _) = segment_edge_l1_vjp(sym.view(), s.view(), &seg, cot.view());
        let mut dense = Array2::<f64>::zeros((sym.rows(), sym.cols()));
        for (&v, (r, c)) in sym.iter() { dense[[r, c]] += v; }
        for (g, range) in seg.ranges().enumerate() {
            for i in range.clone() {
                for c in 0..s.ncols() {
                    let mut want = 0.0;
                    for j in range.clone() {
                        let d = s[[i, c]] - s[[j, c]];
                        let sign = if d > 0.0 { 1.0 } else if d < 0.0 { -1.0 } else { 0.0 };
                        want += (dense[[i, j]] + dense[[j, i]]) * sign;
                    }
                    want *= cot[g];
                    prop_assert!((gs[[i, c]] - want).abs() < 1e-12 * (1.0 + want.abs()), "S({i}, {c}): {} vs {want}", gs[[i, c]]);
                }
            }
        }
    }

    #[test]
    fn edge_total_variation_vjp_matches_finite_differences((seg, s, a) in graph_data(), seed in 0u64..100) {
        let cot = Array1::from(cotangent(seg.num_graphs(), seed));
        let (gs, ga) = segment_edge_l1_vjp(a.view(), s.view(), &seg, cot.view());
        let loss = |s: &Array2<f64>, a: &CsMat<f64>| segment_edge_l1(a.view(), s.view(), &seg).dot(&cot);
        let h = 1e-7;
        for ((i, j), &v) in s.indexed_iter() {
            let (mut sp, mut sm) = (s.clone(), s.clone());
            sp[[i, j]] = v + h;
            sm[[i, j]] = v - h;
            let num = (loss(&sp, &a) - loss(&sm, &a)) / (2.0 * h);
            prop_assert!((num - gs[[i, j]]).abs() < 1e-6, "S({i}, {j}): {} vs {num}", gs[[i, j]]);
        }
        for e in 0..a.nnz() {
            let (ip, ix, w) = a.clone().into_raw_storage();
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[e] += h;
            wm[e] -= h;
            let ap = CsMat::new(a.shape(), ip.clone(), ix.clone(), wp);
            let am = CsMat::new(a.shape(), ip, ix, wm);
            let num = (loss(&s, &ap) - loss(&s, &am)) / (2.0 * h);
            prop_assert!((num - ga[e]).abs() < 1e-6, "edge {e}: {} vs {num}", ga[e]);
        }
    }
}

/// A graph larger than a chunk (its columns taken in parallel: groups of 16
/// by the scan, one by one by the selection) next to a small one, against a
/// full sort per column: ranks on both sides of SMALL_RANK, many ties, 40
/// columns (two full groups and a part), on 1 and 3 threads.
#[test]
fn kth_largest_of_a_graph_beyond_a_chunk_equals_a_full_sort() {
    let seg = Segments::from_sizes(&[4500, 30]);
    let (n, k) = (seg.num_nodes(), 40);
    let s = Array2::from_shape_fn((n, k), |(i, j)| {
        ((i * 7919 + j * 104_729) % 23) as f64 / 4.0
    });
    for r in [1, 3, SMALL_RANK, SMALL_RANK + 1] {
        for th in [1, 3] {
            let q = with_threads(th, || segment_kth_largest(s.view(), &seg, |_| r));
            for (g, range) in seg.ranges().enumerate() {
                for c in 0..k {
                    let mut col: Vec<(f64, usize)> =
                        range.clone().map(|n| (s[[n, c]], n)).collect();
                    col.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
                    let want = col[r.min(col.len()) - 1];
                    assert_eq!(
                        (q.values[[g, c]], q.nodes[[g, c]]),
                        want,
                        "rank {r}, graph {g}, column {c}, {th} threads"
                    );
                }
            }
        }
    }
}

/// A graph larger than a chunk next to small ones: the same bits on 1, 2, 3
/// and 8 threads for every new kernel and its VJP.
#[test]
fn clustering_kernels_are_identical_on_any_thread_count() {
    let mut sizes = vec![9000usize];
    sizes.extend(std::iter::repeat_n(5, 200));
    let seg = Segments::from_sizes(&sizes);
    let n = seg.num_nodes();
    let s = Array2::from_shape_fn((n, 4), |(i, j)| ((i * 37 + j * 11) % 97) as f64 / 97.0);
    let mut t = TriMat::new((n, n));
    for r in seg.ranges() {
        for i in r.clone() {
            let j = r.start + (i * 13 + 5) % r.len();
            t.add_triplet(i, j, 0.5 + (i % 4) as f64);
        }
    }
    let a: CsMat<f64> = t.to_csr();
    let blocks =
        Array2::from_shape_fn((seg.num_graphs() * 4, 4), |(i, j)| ((i + 2 * j) % 7) as f64);
    let run = || {
        let q = segment_kth_largest(s.view(), &seg, |m| m / 4 + 1);
        let gq = segment_kth_largest_vjp(&q, q.values.view(), n);
        let tv = segment_edge_l1(a.view(), s.view(), &seg);
        let (gs, ga) = segment_edge_l1_vjp(a.view(), s.view(), &seg, tv.view());
        let nb = normalize_blocks(blocks.view(), 1e-7);
        let gb = normalize_blocks_vjp(&nb, blocks.view(), blocks.view());
        (q, gq, tv, gs, ga, nb, gb)
    };
    let base = with_threads(1, run);
    for th in [2, 3, 8] {
        assert_eq!(with_threads(th, run), base, "{th} threads");
    }
}

/// The plain zero-diagonal normalisation of one block, entry by entry:
/// $Z$ = the block with its diagonal set to $+0$, $d_i$ = ndarray's sum of
/// $Z$'s contiguous row $i$, $D_i = \sqrt{\max(d_i, 0)} + \varepsilon$ and
/// $Z_{ij} / D_i / D_j$.
fn plain_normalized<T: graphpool::Scalar>(
    block: &Array2<T>,
    eps: T,
) -> (Array2<T>, Vec<T>, Vec<T>) {
    let k = block.nrows();
    let mut z = block.to_owned();
    for i in 0..k {
        z[[i, i]] = T::zero();
    }
    let d: Vec<T> = (0..k).map(|i| z.row(i).sum()).collect();
    let q: Vec<T> = d.iter().map(|&d| d.max(T::zero()).sqrt() + eps).collect();
    let out = Array2::from_shape_fn((k, k), |(i, j)| z[[i, j]] / q[i] / q[j]);
    (out, d, q)
}

fn same_bits<T: graphpool::Scalar>(a: T, b: T) -> bool {
    a.to_f64().unwrap().to_bits() == b.to_f64().unwrap().to_bits() || (a.is_nan() && b.is_nan())
}

fn check_normalized_bits<T: graphpool::Scalar>(k: usize, b: usize, eps: T, seed: u64) {
    // values that round (thirds, sevenths) of both signs, so that degrees
    // are sometimes negative and a different order of additions shows; a
    // non-finite diagonal entry, which Z replaces by +0
    let blocks = Array2::from_shape_fn((b * k, k), |(r, j)| {
        let h = (r as u64 * 131 + j as u64 * 71 + seed * 977) % 1013;
        if r % k == j && h.is_multiple_of(5) {
            return [T::nan(), T::infinity(), T::neg_infinity()][(h % 3) as usize];
        }
        T::c((h as f64 - 300.0) / 3.0 + (h % 7) as f64 / 7.0)
    });
    for threads in [1, 3] {
        let nb = with_threads(threads, || normalize_blocks(blocks.view(), eps));
        for g in 0..b {
            let block = blocks.slice(ndarray::s![g * k..(g + 1) * k, ..]).to_owned();
            let (out, d, q) = plain_normalized(&block, eps);
            for i in 0..k {
                let r = g * k + i;
                assert!(
                    same_bits(nb.degrees[r], d[i]),
                    "d, block {g} row {i} (k = {k})"
                );
                assert!(
                    same_bits(nb.denominators[r], q[i]),
                    "D, block {g} row {i} (k = {k})"
                );
                for j in 0..k {
                    assert!(
                        same_bits(nb.out[[r, j]], out[[i, j]]),
                        "block {g} ({i}, {j}) (k = {k}, {threads} threads): {:?} vs {:?}",
                        nb.out[[r, j]],
                        out[[i, j]]
                    );
                }
            }
        }
    }
}

#[test]
fn normalized_blocks_have_the_bits_of_the_plain_formula_at_every_width() {
    // widths below, at and past a vector of f32 and f64 and ndarray's
    // eight partial sums; more blocks than one work item (64 blocks)
    for k in [1, 2, 3, 7, 8, 9, 16, 17, 24, 33] {
        for (b, seed) in [(0, 0), (1, 1), (5, 2), (70, 3), (130, 4)] {
            for eps in [1e-7, 1e-15, 0.0] {
                check_normalized_bits::<f32>(k, b, eps as f32, seed);
                check_normalized_bits::<f64>(k, b, eps, seed);
            }
        }
    }
}

/// [`normalize_blocks_vjp`] entry by entry as its documentation states it
/// (`f64`): $\bar D_i = -\frac{1}{D_i}\sum_j(\bar O_{ij}\mathrm{out}_{ij} +
/// \bar O_{ji}\mathrm{out}_{ji})$, the terms added over $j$ in order from
/// $+0$, $\bar d_i = \bar D_i / (2\sqrt{d_i})$ (0 where $d_i \le 0$), and
/// $[i \ne j](\bar O_{ij} / (D_i D_j) + \bar d_i) + \mathrm{direct}_{ij}$.
fn plain_normalized_vjp<T: graphpool::Scalar>(
    nb: &graphpool::kernels::segment::NormalizedBlocks<T>,
    grad: &Array2<T>,
    direct: &Array2<T>,
    g: usize,
) -> Array2<f64> {
    let k = grad.ncols();
    let w = |v: T| v.to_f64().unwrap();
    let at = |m: &Array2<T>, i: usize, j: usize| w(m[[g * k + i, j]]);
    let den = |i: usize| w(nb.denominators[g * k + i]);
    let gd: Vec<f64> = (0..k)
        .map(|i| {
            let mut acc = 0.0;
            for j in 0..k {
                acc += at(grad, i, j) * at(&nb.out, i, j) + at(grad, j, i) * at(&nb.out, j, i);
            }
            let g_den = -acc / den(i);
            let d = w(nb.degrees[g * k + i]);
            if d > 0.0 {
                g_den / (2.0 * d.sqrt())
            } else {
                0.0
            }
        })
        .collect();
    Array2::from_shape_fn((k, k), |(i, j)| {
        let through = if i != j {
            at(grad, i, j) / (den(i) * den(j)) + gd[i]
        } else {
            0.0
        };
        through + at(direct, i, j)
    })
}

/// Whether a degree was not positive.
fn check_normalized_vjp_bits<T: graphpool::Scalar>(k: usize, b: usize, seed: u64) -> bool {
    let value = |r: usize, j: usize, salt: u64| {
        let h = (r as u64 * 131 + j as u64 * 71 + seed * 977 + salt * 389) % 1013;
        T::c((h as f64 - 300.0) / 3.0 + (h % 7) as f64 / 7.0)
    };
    // negative entries, so that some degrees are not positive
    let blocks = Array2::from_shape_fn((b * k, k), |(r, j)| value(r, j, 0));
    let grad = Array2::from_shape_fn((b * k, k), |(r, j)| value(r, j, 1) / T::c(50.0));
    let direct = Array2::from_shape_fn((b * k, k), |(r, j)| value(r, j, 2) / T::c(90.0));
    let nb = normalize_blocks(blocks.view(), T::c(1e-7));
    for threads in [1, 3] {
        let gc = with_threads(threads, || {
            normalize_blocks_vjp(&nb, grad.view(), direct.view())
        });
        for g in 0..b {
            let want = plain_normalized_vjp(&nb, &grad, &direct, g);
            for i in 0..k {
                for j in 0..k {
                    let got = gc[[g * k + i, j]];
                    assert!(
                        got.to_bits() == want[[i, j]].to_bits()
                            || (got.is_nan() && want[[i, j]].is_nan()),
                        "block {g} ({i}, {j}) (k = {k}, {threads} threads): {got:?} vs {:?}",
                        want[[i, j]]
                    );
                }
            }
        }
    }
    nb.degrees.iter().any(|&d| d <= T::zero())
}

#[test]
fn normalize_blocks_vjp_has_the_bits_of_the_plain_formula_at_every_width() {
    // widths below, at and past a vector of f64 and f32; more blocks than
    // one work item (64 blocks)
    let mut non_positive = false;
    for k in [1, 2, 3, 7, 8, 9, 16, 17, 33] {
        for (b, seed) in [(0, 0), (1, 1), (5, 2), (70, 3), (130, 4)] {
            non_positive |= check_normalized_vjp_bits::<f32>(k, b, seed);
            non_positive |= check_normalized_vjp_bits::<f64>(k, b, seed);
        }
    }
    assert!(non_positive, "a non-positive degree is covered");
}
