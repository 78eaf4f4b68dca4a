//! Kernel properties: sparse kernels against dense oracles (test-only), exact
//! on integer values, and thread-count independence on graphs larger than a chunk.

mod common;

use common::with_threads;
use graphpool::kernels::segment::{segment_matmul_tn, segment_max, segment_sum};
use graphpool::kernels::sparse::{
    block_diag, block_diag_owned, gcn_deg_inv_sqrt, gcn_filter, induced_subgraph, spgemm, spmm,
    spmm_many, spmm_rows, spmm_t, spmm_times, symmetric_graphs, transpose, GcnOperator,
};
use graphpool::proptest::{batches, BatchShape};
use graphpool::Segments;
use ndarray::{Array1, Array2, ShapeBuilder};
use proptest::prelude::*;
use sprs::{CsMat, TriMat};

fn dense(a: &CsMat<f64>) -> Array2<f64> {
    let mut d = Array2::zeros((a.rows(), a.cols()));
    for (&v, (r, c)) in a.iter() {
        d[[r, c]] += v;
    }
    d
}

fn int_sparse() -> impl Strategy<Value = CsMat<f64>> {
    (1usize..9, 1usize..9).prop_flat_map(|(r, c)| int_matrix(r, c))
}

fn int_square() -> impl Strategy<Value = CsMat<f64>> {
    (1usize..9).prop_flat_map(|n| int_matrix(n, n))
}

fn int_matrix(r: usize, c: usize) -> impl Strategy<Value = CsMat<f64>> {
    {
        proptest::collection::vec((0..r, 0..c, -3i32..4), 0..20).prop_map(move |t| {
            let mut tri = TriMat::new((r, c));
            let mut seen = std::collections::BTreeSet::new();
            for (i, j, v) in t {
                if seen.insert((i, j)) {
                    tri.add_triplet(i, j, v as f64);
                }
            }
            tri.to_csr()
        })
    }
}

/// A random square matrix of `n` nodes and about `4 n` entries (a few
/// diagonal ones among them), values -3..=3.
fn random_square(n: usize, seed: u64) -> CsMat<f64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut tri = TriMat::new((n, n));
    for _ in 0..4 * n {
        let (i, j) = (next() % n, next() % n);
        if seen.insert((i, j)) {
            tri.add_triplet(i, j, (next() % 7) as f64 - 3.0);
        }
    }
    tri.to_csr()
}

/// Passes sprs's full structure check (the kernels build their outputs
/// without it in release builds).
fn assert_valid_csr(m: &CsMat<f64>, what: &str) -> Result<(), TestCaseError> {
    let ip = m.indptr();
    let rebuilt = CsMat::try_new(
        m.shape(),
        ip.raw_storage().to_vec(),
        m.indices().to_vec(),
        m.data().to_vec(),
    );
    prop_assert!(
        rebuilt.is_ok(),
        "{} is not a valid CSR matrix: {:?}",
        what,
        rebuilt.err().map(|e| e.3)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every kernel that builds a CSR matrix without sprs's check in
    /// release builds (induced_subgraph, transpose, spgemm, gcn_filter,
    /// block_diag) gives one that passes it: monotone indptr from 0 to nnz,
    /// each row's columns strictly increasing and in bounds. Up to 3,000
    /// nodes, so several row blocks of the parallel passes.
    #[test]
    fn kernel_outputs_are_valid_csr(n in 1usize..3000, seed in any::<u64>(), keep in 1u64..8, k in 0usize..5) {
        let a = random_square(n, seed);
        let kept: Vec<usize> = (0..n).filter(|&i| (i as u64 * 2654435761 + seed) % 8 < keep).collect();
        assert_valid_csr(&induced_subgraph(a.view(), &kept).matrix, "induced_subgraph")?;
        assert_valid_csr(&transpose(a.view()).matrix, "transpose")?;
        assert_valid_csr(&spgemm(a.view(), a.view()), "spgemm")?;
        assert_valid_csr(&gcn_filter(a.view()).matrix, "gcn_filter")?;
        let blocks = Array2::from_shape_fn((n / 50 * k, k), |(i, j)| (i * 3 + j) as f64);
        assert_valid_csr(&block_diag(blocks.view()), "block_diag")?;
    }
}

proptest! {
    /// block_diag_owned is block_diag whatever the layout of the blocks it
    /// is given: standard (its buffer becomes the values), a slice that
    /// starts past its buffer's first element (moved to the front, as
    /// fresh_matrix's cache-line-aligned blocks are), or column-major
    /// (copied).
    #[test]
    fn block_diag_owned_equals_block_diag_in_every_layout(b in 0usize..6, k in 0usize..5, seed in 0u64..100) {
        let v = |i: usize, j: usize| ((i * 7 + j * 3) as u64 + seed) as f64 / 5.0;
        let standard = Array2::from_shape_fn((b * k, k), |(i, j)| v(i, j));
        let want = block_diag(standard.view());
        assert_valid_csr(&want, "block_diag")?;
        prop_assert_eq!(&block_diag_owned(standard), &want);
        let column_major = Array2::from_shape_fn((b * k, k).f(), |(i, j)| v(i, j));
        prop_assert_eq!(&block_diag_owned(column_major), &want);
        let mut shifted = Array2::from_shape_fn((b * k + 1, k), |(i, j)| if i == 0 { -1.0 } else { v(i - 1, j) });
        shifted.slice_collapse(ndarray::s![1.., ..]);
        prop_assert_eq!(&block_diag_owned(shifted), &want);
        let mut aligned = graphpool::kernels::rows::fresh_matrix::<f64>(b * k, k);
        aligned.assign(&Array2::from_shape_fn((b * k, k), |(i, j)| v(i, j)));
        prop_assert_eq!(&block_diag_owned(aligned), &want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// spmm and spmm_many at the widths whose row sums are held in registers
    /// (8, 16, 32, 64) and at others, over several row blocks (up to 3,000
    /// rows): exactly the product on integers, summed entry by entry from the
    /// stored triplets; spmm_rows gives the same rows for any range, and
    /// spmm_many the same matrices, also for two inputs of different widths
    /// (whose pairs of register widths have a kernel of their own): the
    /// bits of spmm of each on fractional values.
    #[test]
    fn spmm_is_exact_on_integers_at_every_width_and_row_block(
        n in 1usize..3000,
        seed in any::<u64>(),
        f in proptest::sample::select(vec![1usize, 5, 8, 16, 32, 64]),
        g in proptest::sample::select(vec![3usize, 8, 16, 32, 64]),
        lo in 0usize..3000,
        len in 0usize..1500,
    ) {
        let a = random_square(n, seed);
        let x = Array2::from_shape_fn((n, f), |(i, j)| ((i * 7 + j * 3) % 5) as f64 - 2.0);
        let mut want = Array2::<f64>::zeros((n, f));
        for (&v, (r, c)) in a.iter() {
            for j in 0..f {
                want[[r, j]] += v * x[[c, j]];
            }
        }
        let got = spmm(a.view(), x.view());
        prop_assert_eq!(&got, &want);
        let (lo, hi) = (lo.min(n), (lo + len).min(n));
        let mut rows = vec![f64::NAN; (hi - lo) * f];
        spmm_rows(a.view(), x.view(), lo..hi, &mut rows);
        prop_assert_eq!(&rows[..], got.slice(ndarray::s![lo..hi, ..]).to_slice().unwrap());
        let many = spmm_many(a.view(), &[x.view(), want.view()]);
        prop_assert_eq!(&many[0], &got);
        prop_assert_eq!(&many[1], &spmm(a.view(), want.view()));
        let y = Array2::from_shape_fn((n, g), |(i, j)| ((i * 5 + j) % 13) as f64 / 3.0 - 1.1);
        let mixed = spmm_many(a.view(), &[x.view(), y.view()]);
        prop_assert_eq!(&mixed[0], &got);
        prop_assert_eq!(&mixed[1], &spmm(a.view(), y.view()));
        let swapped = spmm_many(a.view(), &[y.view(), x.view()]);
        prop_assert_eq!(&swapped[0], &mixed[1]);
        prop_assert_eq!(&swapped[1], &got);
    }
}

proptest! {
    #[test]
    fn spmm_equals_dense_product_exactly_on_integers(a in int_sparse(), f in 1usize..4, seed in 0i64..100) {
        let x = Array2::from_shape_fn((a.cols(), f), |(i, j)| ((i as i64 * 7 + j as i64 * 3 + seed) % 5 - 2) as f64);
        prop_assert_eq!(spmm(a.view(), x.view()), dense(&a).dot(&x));
    }

    #[test]
    fn spmm_many_equals_spmm_of_each_input_bit_for_bit(a in int_sparse(), f in 0usize..4, g in 0usize..3, seed in 0i64..100) {
        // fractional values: every output must add the same terms in the
        // same order as spmm to give the same bits
        let x = Array2::from_shape_fn((a.cols(), f), |(i, j)| ((i as i64 * 7 + j as i64 * 3 + seed) % 11) as f64 / 7.0 - 0.6);
        let y = Array2::from_shape_fn((a.cols(), g), |(i, j)| ((i as i64 * 5 + j as i64 + seed) % 13) as f64 / 3.0 - 1.1);
        let outs = spmm_many(a.view(), &[x.view(), y.view()]);
        prop_assert_eq!(outs.len(), 2);
        prop_assert_eq!(&outs[0], &spmm(a.view(), x.view()));
        prop_assert_eq!(&outs[1], &spmm(a.view(), y.view()));
        let d = dense(&a).dot(&x);
        prop_assert!(outs[0].iter().zip(&d).all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs())));
    }

    #[test]
    fn spmm_t_equals_dense_transposed_product_exactly_on_integers(a in int_sparse(), f in 1usize..4, seed in 0i64..100) {
        let x = Array2::from_shape_fn((a.rows(), f), |(i, j)| ((i as i64 * 7 + j as i64 * 3 + seed) % 5 - 2) as f64);
        prop_assert_eq!(spmm_t(a.view(), x.view()), dense(&a).t().dot(&x));
    }

    #[test]
    fn transpose_equals_dense_transpose_and_tracks_sources(a in int_sparse()) {
        let t = transpose(a.view());
        prop_assert_eq!(dense(&t.matrix), dense(&a).t().to_owned());
        for (e, &s) in t.source.iter().enumerate() {
            prop_assert_eq!(t.matrix.data()[e], a.data()[s]);
        }
    }

    #[test]
    fn spgemm_equals_dense_product_exactly_on_integers(a in int_sparse(), seed in 0i64..50) {
        let b = Array2::from_shape_fn((a.cols(), 3), |(i, j)| ((i as i64 * 5 + j as i64 + seed) % 3 - 1) as f64);
        let mut tri = TriMat::new(b.dim());
        for ((i, j), &v) in b.indexed_iter() { if v != 0.0 { tri.add_triplet(i, j, v); } }
        let bs: CsMat<f64> = tri.to_csr();
        prop_assert_eq!(dense(&spgemm(a.view(), bs.view())), dense(&a).dot(&b));
    }

    #[test]
    fn induced_subgraph_equals_dense_submatrix(a in int_square(), mask in proptest::collection::vec(any::<bool>(), 9)) {
        let kept: Vec<usize> = (0..a.rows()).filter(|&i| mask[i]).collect();
        let sub = induced_subgraph(a.view(), &kept);
        let d = dense(&a);
        let want = Array2::from_shape_fn((kept.len(), kept.len()), |(i, j)| d[[kept[i], kept[j]]]);
        prop_assert_eq!(dense(&sub.matrix), want);
    }

    #[test]
    fn gcn_filter_equals_dense_normalisation(a in int_square()) {
        let a = a.map(|v| v.abs() + 0.5);
        let f = gcn_filter(a.view());
        let b = dense(&a) + Array2::<f64>::eye(a.rows());
        let d: Array1<f64> = b.sum_axis(ndarray::Axis(1)).mapv(|v| 1.0 / v.sqrt());
        let want = Array2::from_shape_fn(b.dim(), |(i, j)| d[i] * b[[i, j]] * d[j]);
        let got = dense(&f.matrix);
        for (g, w) in got.iter().zip(want.iter()) { prop_assert!((g - w).abs() < 1e-12); }
    }

    #[test]
    fn gcn_filter_vjp_matches_finite_differences(a in int_square(), seed in 0u64..100) {
        prop_assume!(a.nnz() > 0);
        let a = a.map(|v| v.abs() + 0.5);
        let f = gcn_filter(a.view());
        let g: Vec<f64> = (0..f.matrix.nnz()).map(|e| (((e as u64 * 2654435761 + seed) % 1000) as f64) / 500.0 - 1.0).collect();
        let loss = |w: &[f64]| -> f64 {
            let (ip, ix, _) = a.clone().into_raw_storage();
            let aw = CsMat::new((a.rows(), a.cols()), ip, ix, w.to_vec());
            gcn_filter(aw.view()).matrix.data().iter().zip(&g).map(|(x, y)| x * y).sum()
        };
        let an = f.vjp(a.view(), &g);
        let w0 = a.data().to_vec();
        for e in 0..a.nnz() {
            let (mut wp, mut wm) = (w0.clone(), w0.clone());
            wp[e] += 1e-6; wm[e] -= 1e-6;
            let num = (loss(&wp) - loss(&wm)) / 2e-6;
            prop_assert!((num - an[e]).abs() < 1e-6 * (1.0 + num.abs()), "edge {}: {} vs {}", e, an[e], num);
        }
    }
}

proptest! {
    /// `gcn_spmv` is the product with `gcn_filter`'s matrix (same degrees bit
    /// for bit), and
    /// `gcn_spmv_vjp` matches the dense transpose product and finite
    /// differences over the edge weights (weights of both signs, so that
    /// some degrees vanish); `vjp_in_graphs` equals `vjp`.
    #[test]
    fn gcn_spmv_and_its_vjp_match_the_filter_the_transpose_and_finite_differences(a in int_square(), seed in 0u64..100) {
        use graphpool::kernels::sparse::{gcn_spmv, gcn_spmv_vjp};
        prop_assume!(a.nnz() > 0);
        let n = a.rows();
        let h = |i: usize, k: u64| ((((i as u64) * 2654435761 + seed * k) % 1000) as f64) / 500.0 - 1.0;
        let v = Array1::from_shape_fn(n, |i| h(i, 3));
        let seg = Segments::single(n);
        // signed weights: the product only (degrees may cancel)
        let signed = a.map(|w| w * 0.7);
        let fs = gcn_filter(signed.view());
        let gs = gcn_spmv(signed.view(), v.view());
        let want_y = spmm(fs.matrix.view(), v.view().insert_axis(ndarray::Axis(1)));
        for (g, w) in gs.y.iter().zip(want_y.column(0)) { prop_assert!((g - w).abs() < 1e-12, "{} vs {}", g, w); }
        prop_assert_eq!(&gs.deg_inv_sqrt, &fs.deg_inv_sqrt);
        // positive weights for the derivatives
        let a = a.map(|w| w.abs() + 0.5);
        let f = gcn_filter(a.view());
        let gcn = gcn_spmv(a.view(), v.view());
        // some rows without gradient (skipped by the kernel)
        let gy = Array1::from_shape_fn(n, |i| if i % 3 == 1 { 0.0 } else { h(i, 7) });
        let (gv, ga) = gcn_spmv_vjp(a.view(), gcn.deg_inv_sqrt.view(), v.view(), gy.view(), &seg);
        let want_gv = dense(&f.matrix).t().dot(&gy);
        for (g, w) in gv.iter().zip(want_gv.iter()) { prop_assert!((g - w).abs() < 1e-12); }
        let loss = |w: &[f64]| -> f64 {
            let (ip, ix, _) = a.clone().into_raw_storage();
            let aw = CsMat::new((n, n), ip, ix, w.to_vec());
            gcn_spmv(aw.view(), v.view()).y.dot(&gy)
        };
        let w0 = a.data().to_vec();
        for e in 0..a.nnz() {
            let (mut wp, mut wm) = (w0.clone(), w0.clone());
            wp[e] += 1e-6; wm[e] -= 1e-6;
            let num = (loss(&wp) - loss(&wm)) / 2e-6;
            prop_assert!((num - ga[e]).abs() < 1e-6 * (1.0 + num.abs()), "edge {}: {} vs {}", e, ga[e], num);
        }
        let g: Vec<f64> = (0..f.matrix.nnz()).map(|e| h(e, 11)).collect();
        prop_assert_eq!(f.vjp_in_graphs(a.view(), &g, &seg), f.vjp(a.view(), &g));
    }
}

/// `segment_column_sums` is `A^T v` (exact on integers) for a batch with a
/// graph cut into pieces, gives each graph the bits it has alone, and the
/// same bits on 1, 2 and 5 threads; `segment_column_sums_then` adds its
/// finishing term with the bits of a pass after the sums.
#[test]
fn segment_column_sums_are_per_graph_transpose_products() {
    use graphpool::kernels::segment::{segment_column_sums, segment_column_sums_then};
    let sizes = [3usize, 0, 40_000, 1, 17, 5_000];
    let seg = Segments::from_sizes(&sizes);
    let n = seg.num_nodes();
    let mut t = TriMat::new((n, n));
    for r in seg.ranges() {
        for i in r.clone() {
            for k in [1usize, 7, 4_099, 30_011] {
                let j = r.start + (i - r.start + k) % r.len();
                if j != i || k == 1 {
                    t.add_triplet(i, j, ((i * 31 + j) % 7) as f64 - 3.0);
                }
            }
        }
    }
    let a: CsMat<f64> = t.to_csr();
    // values of all magnitudes so that the order of additions shows in the bits
    let v = Array1::from_shape_fn(n, |i| {
        ((i * 7919) % 1009) as f64 * 10f64.powi((i % 7) as i32 - 3)
    });
    let run = || {
        segment_column_sums(
            a.view(),
            &seg,
            |r| r % 5 == 2,
            |e, r, _| [a.data()[e] * v[r], 1.0],
        )
    };
    let got = with_threads(1, run);
    for th in [2, 5] {
        assert_eq!(with_threads(th, run), got, "{th} threads");
    }
    let vi = Array1::from_shape_fn(n, |i| {
        if i % 5 == 2 {
            0.0
        } else {
            ((i * 7919) % 1009) as f64
        }
    });
    let exact = segment_column_sums(
        a.view(),
        &seg,
        |r| r % 5 == 2,
        |e, r, _| [a.data()[e] * vi[r]],
    );
    let mut want = Array1::<f64>::zeros(n);
    for (&w, (r, c)) in a.iter() {
        want[c] += w * vi[r];
    }
    for c in 0..n {
        assert_eq!(exact[c][0], want[c], "column {c}");
    }
    // every graph alone
    for (g, r) in seg.ranges().enumerate() {
        let sub = a.slice_outer(r.clone());
        let ag = {
            let mut tg = TriMat::new((r.len(), r.len()));
            for (&w, (i, j)) in sub.iter() {
                tg.add_triplet(i, j - r.start, w);
            }
            tg.to_csr::<usize>()
        };
        let vg = v.slice(ndarray::s![r.clone()]).to_owned();
        let alone = segment_column_sums(
            ag.view(),
            &Segments::single(r.len()),
            |i| (i + r.start) % 5 == 2,
            |e, i, _| [ag.data()[e] * vg[i], 1.0],
        );
        assert_eq!(&got[r.clone()], &alone[..], "graph {g}");
    }
    // a finishing term per column, added in the task that summed it: the
    // bits of a pass over the finished sums, on any thread count
    let finish = |c: usize, slot: &mut [f64; 2]| {
        slot[0] += v[c] * 0.75;
        slot[1] *= 3.0;
    };
    let mut want = got.clone();
    for (c, slot) in want.iter_mut().enumerate() {
        finish(c, slot);
    }
    for th in [1, 2, 5] {
        let then = with_threads(th, || {
            segment_column_sums_then(
                a.view(),
                &seg,
                |r| r % 5 == 2,
                |e, r, _| [a.data()[e] * v[r], 1.0],
                finish,
            )
        });
        assert_eq!(then, want, "finish, {th} threads");
    }
}

/// Reductions over a graph larger than a chunk (so partials are combined),
/// next to many small graphs: the same bits on 1, 2, 3 and 8 threads.
#[test]
fn chunked_reductions_are_identical_on_any_thread_count() {
    let mut sizes = vec![10_000usize];
    sizes.extend(std::iter::repeat_n(7, 300));
    let seg = Segments::from_sizes(&sizes);
    let n = seg.num_nodes();
    let x = Array2::from_shape_fn((n, 5), |(i, j)| {
        ((i * 31 + j * 17) % 101) as f64 / 7.3 - 6.0
    });
    let s = Array2::from_shape_fn((n, 3), |(i, j)| ((i * 13 + j) % 11) as f64 / 11.0);
    let run = || {
        (
            segment_sum(x.view(), &seg),
            segment_max(x.view(), &seg),
            segment_matmul_tn(s.view(), x.view(), &seg),
        )
    };
    let base = with_threads(1, run);
    for t in [2, 3, 8] {
        assert_eq!(with_threads(t, run), base, "{t} threads");
    }
}

proptest! {
    #[test]
    fn sddmm_equals_dense_product_on_the_pattern_exactly_on_integers(a in int_sparse(), f in 1usize..20, seed in 0i64..100) {
        use graphpool::kernels::sparse::sddmm;
        let u = Array2::from_shape_fn((a.rows(), f), |(i, j)| ((i as i64 * 7 + j as i64 * 3 + seed) % 5 - 2) as f64);
        let v = Array2::from_shape_fn((a.cols(), f), |(i, j)| ((i as i64 * 5 + j as i64 + seed) % 7 - 3) as f64);
        let full = u.dot(&v.t());
        let p = sddmm(a.view(), u.view(), v.view());
        for (e, (_, (r, c))) in a.iter().enumerate() {
            prop_assert_eq!(p[e], full[[r, c]]);
        }
    }

    #[test]
    fn sddmm_vjp_matches_the_dense_gradient(a in int_sparse(), f in 1usize..4, seed in 0i64..100) {
        use graphpool::kernels::sparse::{sddmm, sddmm_vjp};
        let u = Array2::from_shape_fn((a.rows(), f), |(i, j)| ((i as i64 * 7 + j as i64 * 3 + seed) % 5 - 2) as f64);
        let v = Array2::from_shape_fn((a.cols(), f), |(i, j)| ((i as i64 * 5 + j as i64 + seed) % 7 - 3) as f64);
        let g = Array1::from_shape_fn(a.nnz(), |e| ((e as i64 * 3 + seed) % 5 - 2) as f64);
        // L = sum_e g_e <u_r, v_c>: dL/du = G v, dL/dv = G^T u with G the pattern holding g
        let mut gd = Array2::zeros((a.rows(), a.cols()));
        for (e, (_, (r, c))) in a.iter().enumerate() {
            gd[[r, c]] = g[e];
        }
        let (gu, gv) = sddmm_vjp(a.view(), u.view(), v.view(), g.view());
        prop_assert_eq!(gu, gd.dot(&v));
        prop_assert_eq!(gv, gd.t().dot(&u));
        prop_assert_eq!(sddmm(a.view(), u.view(), v.view()).len(), a.nnz());
    }
}

/// `segment_matmul_tn` and its VJP equal the per-graph dense products exactly
/// on integer values: $O_g = S_g^\top Y_g$, $\bar S_g = Y_g \bar O_g^\top$,
/// $\bar Y_g = S_g \bar O_g$, for narrow, register-kernel and wide
/// (more than `rows::SMALL_COLS`) widths of $K$ and $F$.
#[test]
fn segment_matmul_tn_and_vjps_equal_dense_per_graph_products_on_integers() {
    for (k, f) in [(3, 2), (16, 64), (16, 100), (70, 5), (1, 65)] {
        segment_matmul_tn_case(k, f);
    }
}

fn segment_matmul_tn_case(k: usize, f: usize) {
    use graphpool::kernels::segment::{segment_matmul_tn_vjp, segment_matmul_tn_vjp_in_place};
    let seg = Segments::from_sizes(&[3, 0, 1, 2000, 4]);
    let n = seg.num_nodes();
    let s = Array2::from_shape_fn((n, k), |(i, j)| ((i * 5 + j * 3) % 7) as f64 - 3.0);
    let y = Array2::from_shape_fn((n, f), |(i, j)| ((i * 3 + j * 11) % 5) as f64 - 2.0);
    let o = Array2::from_shape_fn((seg.num_graphs() * k, f), |(i, j)| {
        ((i + 2 * j) % 3) as f64 - 1.0
    });
    let out = segment_matmul_tn(s.view(), y.view(), &seg);
    let (gs, gy) = segment_matmul_tn_vjp(s.view(), y.view(), &seg, o.view());
    for (g, r) in seg.ranges().enumerate() {
        let (sg, yg) = (
            s.slice(ndarray::s![r.clone(), ..]),
            y.slice(ndarray::s![r.clone(), ..]),
        );
        let og = o.slice(ndarray::s![g * k..(g + 1) * k, ..]);
        assert_eq!(
            out.slice(ndarray::s![g * k..(g + 1) * k, ..]),
            sg.t().dot(&yg)
        );
        assert_eq!(gs.slice(ndarray::s![r.clone(), ..]), yg.dot(&og.t()));
        assert_eq!(gy.slice(ndarray::s![r, ..]), sg.dot(&og));
    }
    // the in-place form: the same dS, and post(y_n, dy_n) in y's rows
    let mut y2 = y.clone();
    let gs2 = segment_matmul_tn_vjp_in_place(s.view(), &mut y2, &seg, o.view(), |row, dy| {
        for (v, &d) in row.iter_mut().zip(dy) {
            *v += 10.0 * d;
        }
    });
    assert_eq!(gs2, gs);
    assert_eq!(y2, gy.mapv(|d| 10.0 * d) + &y);
    // the Gram form S^T S: one product with the symmetrised gradient equals
    // the sum of the two halves of the general VJP (exact on integers)
    let og = Array2::from_shape_fn((seg.num_graphs() * k, k), |(i, j)| {
        ((i * 3 + j) % 5) as f64 - 2.0
    });
    let (g1, g2) = segment_matmul_tn_vjp(s.view(), s.view(), &seg, og.view());
    let gram = graphpool::kernels::segment::segment_gram_vjp(s.view(), &seg, og.view());
    assert_eq!(gram, &g1 + &g2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn row_norms_equal_the_plain_formula_bit_for_bit_on_moderate_rows(
        vals in proptest::collection::vec(-1e3f64..1e3, 0..24), f in 1usize..5
    ) {
        let n = vals.len() / f;
        let x = Array2::from_shape_vec((n, f), vals[..n * f].to_vec()).unwrap();
        let norms = graphpool::kernels::row_norms(x.view());
        for (r, row) in x.rows().into_iter().enumerate() {
            let plain = row.dot(&row).sqrt();
            // bit-identical unless the squares underflow (rows below ~1e-146)
            if plain == 0.0 || plain > 1e-140 {
                prop_assert_eq!(norms[r].to_bits(), plain.to_bits());
            }
        }
    }

    #[test]
    fn row_norms_vjp_matches_finite_differences(
        vals in proptest::collection::vec(-3f64..3.0, 1..12), g in -1f64..1.0
    ) {
        let f = vals.len();
        let x = Array2::from_shape_vec((1, f), vals).unwrap();
        let n = graphpool::kernels::row_norms(x.view());
        prop_assume!(n[0] > 1e-3);
        let grad = Array1::from(vec![g]);
        let gx = graphpool::kernels::row_norms_vjp(x.view(), n.view(), grad.view());
        for c in 0..f {
            let h = 1e-6;
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[[0, c]] += h;
            xm[[0, c]] -= h;
            let fd = g * (graphpool::kernels::row_norms(xp.view())[0]
                - graphpool::kernels::row_norms(xm.view())[0]) / (2.0 * h);
            prop_assert!((fd - gx[[0, c]]).abs() < 1e-6, "{} vs {}", fd, gx[[0, c]]);
        }
    }
}

#[test]
fn row_norms_do_not_overflow_or_underflow_where_the_norm_is_representable() {
    let x = ndarray::array![
        [1e30f32, 1e30, -1e30],
        [3e-30, -4e-30, 0.0],
        [f32::MAX, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [f32::MAX, f32::MAX, 0.0]
    ];
    let n = graphpool::kernels::row_norms(x.view());
    assert!((n[0] / (3f32.sqrt() * 1e30) - 1.0).abs() < 1e-6, "{}", n[0]);
    assert!((n[1] / 5e-30 - 1.0).abs() < 1e-6, "{}", n[1]);
    assert_eq!(n[2], f32::MAX);
    assert_eq!(n[3], 0.0);
    // the true norm, sqrt(2) * f32::MAX, is beyond f32: infinite, honestly
    assert!(n[4].is_infinite());
    let g = graphpool::kernels::row_norms_vjp(x.view(), n.view(), Array1::ones(5).view());
    assert!(g
        .row(0)
        .iter()
        .all(|v| v.is_finite() && (v.abs() - 0.57735).abs() < 1e-4));
    assert!(g.row(3).iter().all(|&v| v == 0.0));
}

/// A random sparse matrix of `rows` x `cols` with about `per_row` entries
/// per row and non-integer values (so that the order of additions shows).
fn random_sparse(rows: usize, cols: usize, per_row: usize, seed: u64) -> CsMat<f64> {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut tri = TriMat::new((rows, cols));
    let mut seen = std::collections::BTreeSet::new();
    for r in 0..rows {
        for _ in 0..per_row {
            let c = next() % cols;
            if seen.insert((r, c)) {
                tri.add_triplet(r, c, (next() % 1000) as f64 / 7.0 - 70.0);
            }
        }
    }
    tri.to_csr()
}

#[test]
fn transposed_kernels_are_identical_on_any_thread_count_beyond_a_row_block() {
    // several output ranges per thread: columns well beyond ROW_BLOCK
    let a = random_sparse(5000, 7000, 6, 11);
    let x = Array2::from_shape_fn((5000, 3), |(i, j)| {
        ((i * 13 + j * 7) % 101) as f64 / 9.0 - 5.0
    });
    let reference_t: CsMat<f64> = a.transpose_view().to_csr();
    let reference_product = spmm(reference_t.view(), x.view());
    for threads in [1, 2, 3, 8] {
        let (t, p) = with_threads(threads, || {
            (transpose(a.view()), spmm_t(a.view(), x.view()))
        });
        assert_eq!(t.matrix, reference_t, "transpose on {threads} threads");
        for (e, &s) in t.source.iter().enumerate() {
            assert_eq!(t.matrix.data()[e], a.data()[s]);
        }
        assert_eq!(p, reference_product, "A^T X on {threads} threads");
    }
}

/// The documented summation order of the segment reductions, written out
/// plainly: each graph from 0 (max/min: from its first row) in node order,
/// a graph larger than `CHUNK` in pieces of `CHUNK` nodes from its first
/// node, the pieces' partials combined left to right.
fn reference_reduction(
    x: &Array2<f32>,
    seg: &Segments,
    start: impl Fn(&[f32]) -> Vec<f32>,
    step: impl Fn(&mut [f32], &[f32]),
) -> Array2<f32> {
    use graphpool::kernels::CHUNK;
    let f = x.ncols();
    let mut out = Array2::zeros((seg.num_graphs(), f));
    for (g, r) in seg.ranges().enumerate() {
        if r.is_empty() {
            continue;
        }
        let mut total: Option<Vec<f32>> = None;
        for s in r.clone().step_by(CHUNK) {
            let rows: Vec<Vec<f32>> = (s..(s + CHUNK).min(r.end))
                .map(|n| x.row(n).to_vec())
                .collect();
            let mut acc = start(&rows[0]);
            for row in &rows[1..] {
                step(&mut acc, row);
            }
            match total.as_mut() {
                None => total = Some(acc),
                Some(t) => step(t, &acc),
            }
        }
        out.row_mut(g).assign(&ndarray::aview1(&total.unwrap()));
    }
    out
}

/// `segment_sum`, `segment_mean`, `segment_max` and `segment_min` follow
/// their documented order of operations bit for bit (graphs larger than a
/// chunk, empty graphs, runs of many tiny graphs), on a standard and a
/// strided `x`, on 1, 2 and 5 threads.
#[test]
fn segment_reductions_follow_the_documented_order_bit_for_bit() {
    use graphpool::kernels::segment::{segment_mean, segment_min};
    let mut sizes = vec![0usize, 9_000, 1, 0];
    sizes.extend((0..700).map(|i| i % 13));
    sizes.push(4_096);
    sizes.push(4_097);
    sizes.extend(std::iter::repeat_n(0, 5_000));
    sizes.push(3);
    let seg = Segments::from_sizes(&sizes);
    let n = seg.num_nodes();
    // values of all magnitudes, so that the order of additions shows
    let x = Array2::from_shape_fn((n, 5), |(i, j)| {
        let k = (i * 7919 + j * 104_729) % 1_000_003;
        (k as f32 / 1_000_003.0 - 0.4) * 10f32.powi((k % 9) as i32 - 4)
    });
    let add = |a: &mut [f32], r: &[f32]| a.iter_mut().zip(r).for_each(|(a, v)| *a += v);
    let zero_plus = |r: &[f32]| r.iter().map(|v| 0.0 + v).collect::<Vec<f32>>();
    let sum = reference_reduction(&x, &seg, zero_plus, add);
    let mut mean = sum.clone();
    for (g, mut row) in mean.outer_iter_mut().enumerate() {
        let c = seg.size(g).max(1) as f32;
        row.mapv_inplace(|v| v / c);
    }
    let max = reference_reduction(&x, &seg, <[f32]>::to_vec, |a, r| {
        a.iter_mut()
            .zip(r)
            .for_each(|(a, &v)| *a = if v > *a { v } else { *a })
    });
    let min = reference_reduction(&x, &seg, <[f32]>::to_vec, |a, r| {
        a.iter_mut()
            .zip(r)
            .for_each(|(a, &v)| *a = if v < *a { v } else { *a })
    });
    let xf = x.t().as_standard_layout().into_owned();
    for xv in [x.view(), xf.t()] {
        for t in [1, 2, 5] {
            let got = with_threads(t, || {
                (
                    segment_sum(xv, &seg),
                    segment_mean(xv, &seg),
                    segment_max(xv, &seg),
                    segment_min(xv, &seg),
                )
            });
            assert_eq!(got.0, sum, "sum, {t} threads");
            assert_eq!(got.1, mean, "mean, {t} threads");
            assert_eq!(got.2, max, "max, {t} threads");
            assert_eq!(got.3, min, "min, {t} threads");
        }
    }
}

/// The broadcast VJPs give every node its graph's gradient row (divided by
/// the graph's size for the mean), and the max VJP splits a feature's
/// gradient equally among the tied nodes, for a graph larger than a chunk
/// too.
#[test]
fn segment_vjps_broadcast_rows_and_split_ties() {
    use graphpool::kernels::segment::{
        segment_extremum_vjp, segment_mean_vjp, segment_min, segment_sum_vjp,
    };
    let sizes = [3usize, 0, 5_000, 1];
    let seg = Segments::from_sizes(&sizes);
    let n = seg.num_nodes();
    let x = Array2::from_shape_fn((n, 3), |(i, j)| ((i * 3 + j) % 4) as f64);
    let grad = Array2::from_shape_fn((4, 3), |(g, j)| (g * 3 + j) as f64 + 1.0);
    let gt = grad.t().as_standard_layout().into_owned();
    for gv in [grad.view(), gt.t()] {
        let gs = segment_sum_vjp(gv, &seg);
        let gm = segment_mean_vjp(gv, &seg);
        for node in 0..n {
            let g = seg.graph_of(node);
            assert_eq!(gs.row(node), grad.row(g));
            assert_eq!(gm.row(node), grad.row(g).mapv(|v| v / seg.size(g) as f64));
        }
    }
    let m = segment_max(x.view(), &seg);
    let gx = segment_extremum_vjp(x.view(), &seg, m.view(), grad.view());
    assert_extremum_vjp_splits_ties(&x, &seg, &m, &grad, &gx);
    // f32 and a width past one vector of lanes (and not a multiple of it):
    // the SIMD tie count and fill, their remainders, and the minimum too
    let x = Array2::from_shape_fn((n, 37), |(i, j)| ((i * 7 + j * 3) % 5) as f32 - 2.0);
    let grad = Array2::from_shape_fn((4, 37), |(g, j)| (g * 37 + j) as f32 * 0.25 + 1.0);
    for (m, which) in [
        (segment_max(x.view(), &seg), "max"),
        (segment_min(x.view(), &seg), "min"),
    ] {
        let gx = segment_extremum_vjp(x.view(), &seg, m.view(), grad.view());
        assert!(gx.iter().any(|&v| v != 0.0), "{which}");
        assert_extremum_vjp_splits_ties(&x, &seg, &m, &grad, &gx);
    }
}

/// Every entry of `gx` is `grad[g, j]` divided by the number of nodes of
/// graph `g` whose feature `j` equals `m[g, j]` for such a node, else 0.
fn assert_extremum_vjp_splits_ties<T: graphpool::Scalar + std::fmt::Debug>(
    x: &Array2<T>,
    seg: &Segments,
    m: &Array2<T>,
    grad: &Array2<T>,
    gx: &Array2<T>,
) {
    for g in 0..seg.num_graphs() {
        let r = seg.range(g);
        for j in 0..x.ncols() {
            let ties = r.clone().filter(|&i| x[[i, j]] == m[[g, j]]).count();
            for i in r.clone() {
                let want = if x[[i, j]] == m[[g, j]] {
                    grad[[g, j]] / T::from_count(ties)
                } else {
                    T::zero()
                };
                assert_eq!(gx[[i, j]], want, "graph {g} node {i} feature {j}");
            }
        }
    }
}

/// `scatter_values` equals the plain `out[source[e]] += grad[e]` loop for
/// strictly increasing sources (filled in parallel) and for repeated,
/// unordered ones, on 1 and 3 threads.
#[test]
fn scatter_values_equals_the_plain_scatter() {
    use graphpool::kernels::sparse::scatter_values;
    let len = 300_000;
    let increasing: Vec<usize> = (0..len).filter(|i| i % 3 != 0).collect();
    let repeated: Vec<usize> = (0..100_000).map(|i| (i * 7919) % 5_000).collect();
    for source in [increasing, repeated] {
        let grad: Vec<f64> = (0..source.len())
            .map(|e| (e % 17) as f64 * 0.1 - 0.8)
            .collect();
        let mut want = Array1::<f64>::zeros(len);
        for (&g, &s) in grad.iter().zip(&source) {
            want[s] += g;
        }
        for t in [1, 3] {
            assert_eq!(
                with_threads(t, || scatter_values(&grad, &source, len)),
                want
            );
        }
    }
}

/// Values with many significant bits, so that any change in the order of
/// the additions shows in the result.
fn rough(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * 3.7
        })
        .collect()
}

#[test]
fn small_products_follow_the_documented_order_bit_for_bit_at_every_width() {
    use graphpool::kernels::rows::{outer_sum, SMALL_COLS};
    // the widths with a register kernel (1, 8, 16, 32, 64) and others around them
    for &c in &[
        0usize, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100,
    ] {
        // more than one tile of outer_sum; 65, 66, 67 and 71 rows reach every
        // remainder path of rows_times' 8-, 4- and 2-row kernels (66 = 8 * 8 +
        // 2 ends in the 2-row kernel, 67 = 8 * 8 + 3 in a block of eight with
        // five repeated rows, 71 = 8 * 8 + 4 + 3 in the 4-row one)
        for (&f, rows) in [0usize, 1, 5, 16, 64, 70]
            .iter()
            .flat_map(|f| [(f, 65usize), (f, 66), (f, 67), (f, 71)])
        {
            let (x, w) = (rough(rows * f, 1 + c as u64), rough(f * c, 2 + f as u64));
            assert_rows_times_in_order(&x, &w, (rows, f, c));
            // in f64 too: its own register kernels (slabs of 16 columns
            // without AVX-512), on values of full f64 mantissas (a product
            // of two f32 values would be exact, and fused or not alike)
            let wide = |v: &[f32]| v.iter().map(|&a| f64::from(a) / 3.0).collect::<Vec<_>>();
            assert_rows_times_in_order(&wide(&x), &wide(&w), (rows, f, c));
            // outer_sum: S (rows x c) transposed times Y (rows x f), c <= 64 as K
            if c <= SMALL_COLS {
                let (s, y) = (rough(rows * c, 5), rough(rows * f, 6));
                let mut out = rough(c * f, 7); // overwritten
                outer_sum(&s, c, &y, f, &mut out);
                assert_outer_sums_in_row_order(&s, &y, (rows, c, f), &out, &format!("K {c} F {f}"));
            }
        }
    }
}

/// `rows_times` of `x` (`rows` $\times F$) and `w` ($F \times C$), with
/// and without a bias and accumulating, gives bit for bit each entry's sum
/// over $F$ in order from $+0$, plus the bias, added once to the old value.
fn assert_rows_times_in_order<T: graphpool::Scalar + std::fmt::Debug>(
    x: &[T],
    w: &[T],
    (rows, f, c): (usize, usize, usize),
) {
    use graphpool::kernels::rows::rows_times;
    let bias: Vec<T> = rough(c, 3).into_iter().map(|v| T::c(v.into())).collect();
    let old: Vec<T> = rough(rows * c, 4)
        .into_iter()
        .map(|v| T::c(v.into()))
        .collect();
    for (with_bias, accumulate) in [(false, false), (true, false), (false, true)] {
        let mut out = old.clone();
        let b = with_bias.then_some(&bias[..]);
        rows_times(x, f, w, c, b, accumulate, &mut out);
        for r in 0..rows {
            for j in 0..c {
                let mut p = T::zero();
                for t in 0..f {
                    p += x[r * f + t] * w[t * c + j];
                }
                if with_bias {
                    p += bias[j];
                }
                let want = if accumulate { old[r * c + j] + p } else { p };
                // the same sign, exponent and mantissa: the same bits
                assert_eq!(
                    num_traits::Float::integer_decode(out[r * c + j]),
                    num_traits::Float::integer_decode(want),
                    "c {c} f {f} ({r}, {j})"
                );
            }
        }
    }
}

/// `out` ($K \times F$) is, bit for bit, $S^\top Y$ with each entry summed
/// over the rows in order from $+0$ (`outer_sum`'s documented order), for
/// $S$ (`rows` $\times K$) and $Y$ (`rows` $\times F$).
fn assert_outer_sums_in_row_order(
    s: &[f32],
    y: &[f32],
    (rows, k, f): (usize, usize, usize),
    out: &[f32],
    what: &str,
) {
    for kk in 0..k {
        for j in 0..f {
            let mut p = 0.0f32;
            for n in 0..rows {
                p += s[n * k + kk] * y[n * f + j];
            }
            assert_eq!(out[kk * f + j].to_bits(), p.to_bits(), "{what} ({kk}, {j})");
        }
    }
}

/// `outer_sum` at the widths it pads to a register kernel's (F below 64,
/// not 16, 32 or 64) gives the documented row-order sums bit for bit, over
/// more rows than one padded block holds (the sums continue from block to
/// block), with K from 1 to past 64.
#[test]
fn padded_outer_sums_follow_the_documented_order_bit_for_bit() {
    use graphpool::kernels::rows::outer_sum;
    for &f in &[1usize, 5, 10, 15, 17, 31, 33, 63] {
        for &k in &[1usize, 3, 10, 16, 70] {
            for rows in [67usize, 600] {
                let (s, y) = (rough(rows * k, 8 + k as u64), rough(rows * f, 9 + f as u64));
                let mut out = rough(k * f, 10);
                outer_sum(&s, k, &y, f, &mut out);
                assert_outer_sums_in_row_order(
                    &s,
                    &y,
                    (rows, k, f),
                    &out,
                    &format!("F {f} K {k} rows {rows}"),
                );
            }
        }
    }
}

/// The plain row-by-row softmax that `softmax_rows_slice` documents: the
/// maximum folded from -inf, the exponentials added from 0, in column order.
fn softmax_row_by_row<T: graphpool::Scalar>(x: &mut [T], k: usize) {
    for row in x.chunks_exact_mut(k) {
        let m = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        for v in row.iter_mut() {
            *v = (*v - m).exp_vectorizable();
        }
        let total = row.iter().fold(T::zero(), |a, &v| a + v);
        for v in row.iter_mut() {
            *v /= total;
        }
    }
}

/// `softmax_rows_slice` gives the row-by-row bits whether a row goes
/// through the across-the-rows blocks (16 rows, up to 64 columns; for `f32`
/// rows of 16, 32, 48 or 64 on a CPU with AVX-512, the kernel that
/// transposes them in registers, and on a CPU with AVX2 only, for rows of
/// 8, 16, ..., 64, the same kernel by blocks of 8 rows) or the remainder, on rough values and on the special ones (NaN, infinities,
/// signed zeros, huge and tied values), in `f32` and `f64`. A NaN result
/// is compared as NaN: Rust leaves the sign and payload of a NaN that an
/// operation returns unspecified (LLVM may swap the operands of an
/// addition, and x86 returns the first NaN operand or a negative default
/// NaN), and they differ between debug and release builds.
#[test]
fn softmax_rows_give_the_row_by_row_bits_in_blocks_and_remainders() {
    let special = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        0.0,
        1e30,
        -1e30,
        88.0,
        -150.0,
        1.0,
        1.0,
    ];
    for k in [
        1usize, 2, 3, 7, 8, 16, 17, 24, 32, 33, 40, 48, 56, 63, 64, 65, 70,
    ] {
        for rows in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 32, 40] {
            let mut x = rough(rows * k, (k * 100 + rows) as u64);
            // a sprinkling of special values, and whole rows of them
            for (i, v) in x.iter_mut().enumerate() {
                if i % 5 == 0 {
                    *v = special[(i / 5) % special.len()];
                }
            }
            if rows > 3 {
                x[2 * k..3 * k].fill(f32::NEG_INFINITY);
                x[3 * k..4 * k].fill(-0.0);
            }
            let xd: Vec<f64> = x.iter().map(|&v| v as f64 * 7.0).collect();
            assert_softmax_gives_the_row_by_row_bits(x, k, &format!("f32 k {k} rows {rows}"));
            assert_softmax_gives_the_row_by_row_bits(xd, k, &format!("f64 k {k} rows {rows}"));
        }
    }
}

/// `softmax_rows_slice` of `x` (rows of `k`) against
/// [`softmax_row_by_row`]: every entry's bits, or NaN for NaN (compared
/// through `f64`, which holds every `f32` exactly and apart).
fn assert_softmax_gives_the_row_by_row_bits<T: graphpool::Scalar>(x: Vec<T>, k: usize, what: &str) {
    let (mut got, mut want) = (x.clone(), x);
    graphpool::kernels::rows::softmax_rows_slice(&mut got, k);
    softmax_row_by_row(&mut want, k);
    let bits = |v: T| v.to_f64().map(f64::to_bits);
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!(
            bits(g) == bits(w) || (g.is_nan() && w.is_nan()),
            "{what} entry {i}: {g:?} vs {w:?}"
        );
    }
}

/// `nn::dense_backward_streamed` (the gradient formed chunk by chunk) gives
/// the bits of `matmul_acc` and `matmul_vjp_params` on the whole gradient,
/// on every path of $\bar X = \bar Z W^\top$ (F wide: narrow for F <= 4,
/// the small-product kernel up to 64, the GEMM beyond) and of
/// $X^\top \bar Z$ (C wide: `outer_sum` up to 64, the GEMM beyond), over
/// more rows than one chunk.
#[test]
fn streamed_dense_backward_equals_the_whole_gradient_products_bit_for_bit() {
    use graphpool::nn::{dense_backward_streamed, matmul_acc, matmul_vjp_params};
    let n = graphpool::kernels::CHUNK * 2 + 37;
    for (f, c) in [(3, 8), (16, 8), (64, 16), (64, 64), (100, 7), (5, 100)] {
        let x = Array2::from_shape_fn((n, f), |(i, j)| ((i * 13 + j * 7) % 17) as f32 / 7.0 - 1.1);
        let w = Array2::from_shape_fn((f, c), |(i, j)| ((i * 5 + j * 3) % 11) as f32 / 5.0 - 0.9);
        let g = Array2::from_shape_fn((n, c), |(i, j)| ((i * 3 + j * 11) % 13) as f32 / 6.0 - 1.0);
        let gx0 = Array2::from_shape_fn((n, f), |(i, j)| ((i + j) % 5) as f32 / 3.0);
        let mut streamed = gx0.clone();
        let (gw, gb) = dense_backward_streamed(
            x.view(),
            w.view(),
            |r| g.slice(ndarray::s![r, ..]).to_owned(),
            &mut streamed,
        );
        let mut whole = gx0.clone();
        matmul_acc(g.view(), w.t(), &mut whole);
        let (gw2, gb2) = matmul_vjp_params(x.view(), g.view());
        let bits = |a: &Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&streamed), bits(&whole), "gx, F {f} C {c}");
        assert_eq!(bits(&gw), bits(&gw2), "gW, F {f} C {c}");
        assert_eq!(
            gb.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            gb2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "gb, F {f} C {c}"
        );
    }
}

/// Graphs of 1-40 nodes with empty ones among them and one graph longer
/// than a chunk, so that chunks and pieces start and end inside graphs.
fn graphs_across_chunks() -> Segments {
    let mut sizes = vec![0, 7, 30, 0, 0, 29];
    sizes.extend((0..300).map(|i| 20 + i % 17));
    sizes.extend([graphpool::kernels::CHUNK + 5, 0, 1, 33]);
    sizes.extend((0..200).map(|i| 1 + i % 40));
    sizes.push(0);
    Segments::from_sizes(&sizes)
}

/// An `r` x `cols` matrix of [`rough`] values.
fn rough_matrix(r: usize, cols: usize, seed: u64) -> Array2<f32> {
    Array2::from_shape_vec((r, cols), rough(r * cols, seed)).unwrap()
}

/// `segment_matmul_tn_vjp_s_add_rows` and `segment_matmul_nn_add_rows`,
/// called on consecutive pieces of rows (of a chunk, of 1,000 and of 37
/// rows, so that pieces start and end inside graphs and around empty ones),
/// add to each row the bits of the whole products' row
/// (`segment_matmul_tn_vjp`'s $\bar S$, `segment_matmul_nn`): the result is
/// `old + whole` entry by entry, at every width of the small products.
#[test]
fn products_added_by_pieces_of_rows_have_the_bits_of_the_whole_products() {
    use graphpool::kernels::segment::{
        segment_matmul_nn, segment_matmul_nn_add_rows, segment_matmul_tn_vjp,
        segment_matmul_tn_vjp_s_add_rows,
    };
    let chunk = graphpool::kernels::CHUNK;
    let segs = graphs_across_chunks();
    let (n, b) = (segs.num_nodes(), segs.num_graphs());
    let arr = rough_matrix;
    let bits = |a: &Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for (f, k) in [(64, 16), (3, 16), (16, 3), (100, 5), (1, 1), (0, 4), (5, 0)] {
        let (y, s) = (arr(n, f, 1), arr(n, k, 2));
        let (o, old_s, old_y) = (arr(b * k, f, 3), arr(n, k, 4), arr(n, f, 5));
        let want_s = &old_s + &segment_matmul_tn_vjp(s.view(), y.view(), &segs, o.view()).0;
        let want_y = &old_y + &segment_matmul_nn(s.view(), o.view(), &segs);
        for piece in [chunk, 1000, 37] {
            let (mut got_s, mut got_y) = (old_s.clone(), old_y.clone());
            let (ys, ss, os) = (
                y.as_slice().unwrap(),
                s.as_slice().unwrap(),
                o.as_slice().unwrap(),
            );
            let (gs, gy) = (got_s.as_slice_mut().unwrap(), got_y.as_slice_mut().unwrap());
            for start in (0..n).step_by(piece) {
                let r = start..(start + piece).min(n);
                let out_s = &mut gs[r.start * k..r.end * k];
                segment_matmul_tn_vjp_s_add_rows(ys, f, os, k, &segs, r.clone(), out_s);
                let out_y = &mut gy[r.start * f..r.end * f];
                segment_matmul_nn_add_rows(ss, k, os, f, &segs, r, out_y);
            }
            assert_eq!(
                bits(&got_s),
                bits(&want_s),
                "S-bar, F {f} K {k}, pieces of {piece}"
            );
            assert_eq!(
                bits(&got_y),
                bits(&want_y),
                "Y-bar, F {f} K {k}, pieces of {piece}"
            );
        }
    }
}

/// `segment_matmul_nn_combine` gives, entry by entry, `combine(old, q)`
/// with $q$ the bits of `segment_matmul_nn`'s entry: adding $q$ once (the
/// connect step's VJP) and $q + q$ (the link loss's Gram term), over graphs
/// that cross the chunks' edges, empty graphs and one graph longer than a
/// chunk, at every width of the small products, on 1, 2 and 3 threads.
#[test]
fn products_combined_into_an_array_have_the_bits_of_the_whole_products_added() {
    use graphpool::kernels::segment::{segment_matmul_nn, segment_matmul_nn_combine};
    let segs = graphs_across_chunks();
    let (n, b) = (segs.num_nodes(), segs.num_graphs());
    let bits = |a: &Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for (f, k) in [
        (16, 16),
        (64, 16),
        (3, 16),
        (16, 3),
        (100, 5),
        (1, 1),
        (0, 4),
        (5, 0),
    ] {
        let (s, o, old) = (
            rough_matrix(n, k, 1),
            rough_matrix(b * k, f, 2),
            rough_matrix(n, f, 3),
        );
        let whole = segment_matmul_nn(s.view(), o.view(), &segs);
        let once = &old + &whole;
        let twice = ndarray::Zip::from(&old)
            .and(&whole)
            .map_collect(|&o, &q| o + (q + q));
        for threads in [1, 2, 3] {
            let (got_once, got_twice) = with_threads(threads, || {
                let (mut a, mut b) = (old.clone(), old.clone());
                segment_matmul_nn_combine(s.view(), o.view(), &segs, &mut a, |o, q| *o += q);
                segment_matmul_nn_combine(s.view(), o.view(), &segs, &mut b, |o, q| *o += q + q);
                (a, b)
            });
            let what = format!("F {f} K {k}, {threads} threads");
            assert_eq!(bits(&got_once), bits(&once), "old + q, {what}");
            assert_eq!(bits(&got_twice), bits(&twice), "old + (q + q), {what}");
        }
    }
}

/// `softmax_rows_vjp_in_place` writes over the gradient the bits that
/// `softmax_rows_vjp` returns, for rows of every width (0 included), and on
/// 1 and 3 threads (a matrix of several row blocks).
#[test]
fn softmax_vjp_in_place_has_the_bits_of_the_softmax_vjp() {
    use graphpool::nn::{softmax_rows, softmax_rows_vjp, softmax_rows_vjp_in_place};
    let bits = |a: &Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for (n, k) in [
        (0, 4),
        (5, 0),
        (1, 1),
        (3, 16),
        (20_000, 16),
        (7_001, 5),
        (300, 64),
    ] {
        let s = softmax_rows(rough_matrix(n, k, 7).view());
        let g = rough_matrix(n, k, 8);
        let want = softmax_rows_vjp(s.view(), g.view());
        for threads in [1, 3] {
            let got = with_threads(threads, || {
                let mut got = g.clone();
                softmax_rows_vjp_in_place(s.view(), &mut got);
                got
            });
            assert_eq!(bits(&got), bits(&want), "N {n} K {k}, {threads} threads");
        }
    }
}

/// `nn::dense_backward_streamed_into` with the other term $R = S O$ added
/// chunk by chunk (`segment_matmul_nn_add_rows`, as the clustering pools'
/// backward pass forms $\bar X$) gives the bits of $R$ formed whole
/// (`segment_matmul_nn`) and then `dense_backward_streamed` into it: on
/// every path of $\bar Z W^\top$ (F narrow, small, GEMM-wide), over graphs
/// that cross the chunks' edges, empty graphs and one graph longer than a
/// chunk, on 1 and 3 threads. It fails if a row's two terms are added in
/// pieces, or if a piece reads another graph's block.
#[test]
fn streamed_backward_into_a_rest_formed_by_pieces_has_the_bits_of_the_rest_formed_whole() {
    use graphpool::kernels::segment::{segment_matmul_nn, segment_matmul_nn_add_rows};
    use graphpool::nn::{dense_backward_streamed, dense_backward_streamed_into};
    let segs = graphs_across_chunks();
    let (n, b) = (segs.num_nodes(), segs.num_graphs());
    for (f, c, k) in [
        (3, 8, 16),
        (16, 8, 3),
        (64, 16, 16),
        (100, 7, 5),
        (5, 100, 16),
    ] {
        let arr = rough_matrix;
        let (x, w, g) = (arr(n, f, 1), arr(f, c, 2), arr(n, c, 3));
        let (s, o) = (arr(n, k, 4), arr(b * k, f, 5));
        let rows = |r: std::ops::Range<usize>| g.slice(ndarray::s![r, ..]).to_owned();
        let bits = |a: &Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for threads in [1, 3] {
            let ((gx, gw, gb), (whole, hw, hb)) = with_threads(threads, || {
                let (ss, os) = (s.as_slice().unwrap(), o.as_slice().unwrap());
                let into = dense_backward_streamed_into(x.view(), w.view(), rows, |r, mut out| {
                    let out = out.as_slice_mut().unwrap();
                    segment_matmul_nn_add_rows(ss, k, os, f, &segs, r, out);
                });
                let mut whole = segment_matmul_nn(s.view(), o.view(), &segs);
                let (hw, hb) = dense_backward_streamed(x.view(), w.view(), rows, &mut whole);
                (into, (whole, hw, hb))
            });
            let what = format!("F {f} C {c} K {k}, {threads} threads");
            assert_eq!(bits(&gx), bits(&whole), "gx, {what}");
            assert_eq!(bits(&gw), bits(&hw), "gW, {what}");
            let bits1 = |a: &Array1<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits1(&gb), bits1(&hb), "gb, {what}");
        }
    }
}

proptest! {
    /// Against the dense test: a graph is symmetric iff its dense block
    /// equals its transpose. Directed and undirected graphs are drawn, and
    /// each batch is checked again with one stored weight changed (its
    /// mirror kept: the structure stays symmetric, the values do not).
    #[test]
    fn symmetric_graphs_says_which_blocks_equal_their_transpose(
        b in batches(BatchShape { directed: 0.5, ..BatchShape::default() }),
        bump in any::<proptest::sample::Index>(),
    ) {
        let mut variants = vec![b.clone()];
        let mut w = b.a().data().to_vec();
        if !w.is_empty() {
            let i = bump.index(w.len());
            w[i] += 1.0;
            variants.push(b.with_edge_weights(w).unwrap());
        }
        for v in variants {
            let want: Vec<bool> = (0..v.num_graphs())
                .map(|g| {
                    let d = dense(&v.graph(g).1);
                    d == d.t()
                })
                .collect();
            prop_assert_eq!(symmetric_graphs(v.a().view(), v.segments()), want.clone());
            prop_assert_eq!(v.symmetric_graphs(), &want[..]);
        }
    }
}

proptest! {
    /// `gcn_filter` rounds each value as b_ij (u_i u_j), so the filter of a
    /// graph that is symmetric bit for bit is symmetric bit for bit (with
    /// (u_i b_ij) u_j it is not: the two products round differently), and
    /// on such a batch the transposed product equals the plain one, bit
    /// for bit: DiffPool's backward takes F H for F^T H there.
    #[test]
    fn gcn_filter_of_a_symmetric_graph_is_symmetric_bit_for_bit(
        b in batches(BatchShape { directed: 0.3, ..BatchShape::default() }),
        und in batches(BatchShape::default()),
        f in 1usize..5,
        seed in 0u64..1000,
    ) {
        let filter = gcn_filter(b.a().view());
        let m = &filter.matrix;
        let symmetric = b.symmetric_graphs();
        for (&v, (r, c)) in m.iter() {
            if symmetric[b.segments().graph_of(r)] {
                let mirror = m.get(c, r).copied();
                prop_assert_eq!(mirror.map(f64::to_bits), Some(v.to_bits()), "entry ({}, {})", r, c);
            }
        }
        let bits = |a: &Array2<f64>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let y = |n: usize| Array2::from_shape_fn((n, f), |(i, j)| {
            ((i * 31 + j * 17) as f64 + seed as f64 * 0.61).sin()
        });
        if symmetric.iter().all(|&s| s) {
            let y = y(m.rows());
            prop_assert_eq!(bits(&spmm(m.view(), y.view())), bits(&spmm_t(m.view(), y.view())));
        }
        // an undirected batch: every graph symmetric
        prop_assert!(und.symmetric_graphs().iter().all(|&s| s));
        let mu = gcn_filter(und.a().view()).matrix;
        let yu = y(mu.rows());
        prop_assert_eq!(bits(&spmm(mu.view(), yu.view())), bits(&spmm_t(mu.view(), yu.view())));
    }
}

/// [`random_sparse`] ($n \times n$) with every row whose index is a
/// multiple of `empty_every` emptied.
fn random_sparse_with_empty_rows(
    n: usize,
    per_row: usize,
    seed: u64,
    empty_every: usize,
) -> CsMat<f64> {
    let full = random_sparse(n, n, per_row, seed);
    let mut tri = TriMat::new((n, n));
    for (&v, (r, c)) in full.iter() {
        if r % empty_every != 0 {
            tri.add_triplet(r, c, v);
        }
    }
    tri.to_csr()
}

#[test]
fn row_sums_equal_spmm_with_a_column_of_ones_bit_for_bit() {
    use graphpool::kernels::sparse::row_sums;
    // non-integer values, so that a different order of additions shows;
    // more rows than one ROW_BLOCK, and rows with no entries
    let a = random_sparse_with_empty_rows(9000, 5, 3, 7);
    let ones = Array2::ones((a.cols(), 1));
    let reference = spmm(a.view(), ones.view()).column(0).to_owned();
    for threads in [1, 2, 5] {
        let d = with_threads(threads, || row_sums(a.view()));
        assert_eq!(d.len(), a.rows());
        for (i, (&got, &want)) in d.iter().zip(&reference).enumerate() {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "row {i} on {threads} threads"
            );
        }
    }
    // the plain formula, summed in storage order from +0; an empty row is +0
    let d = row_sums(a.view());
    for (i, row) in a.outer_iterator().enumerate() {
        let plain = row.data().iter().fold(0.0, |t, &v| t + v);
        assert_eq!(d[i].to_bits(), plain.to_bits(), "row {i}");
    }
    assert!(
        a.outer_iterator().any(|row| row.nnz() == 0),
        "an empty row is covered"
    );
    // its VJP: every stored entry gets its row's gradient, as the VJP of
    // spmm(A, ones) gives
    use graphpool::kernels::sparse::{row_sums_vjp, spmm_vjp_values};
    let g = Array1::from_shape_fn(a.rows(), |i| ((i * 37) % 101) as f64 / 9.0 - 5.0);
    let via_spmm = spmm_vjp_values(
        a.view(),
        ones.view(),
        g.view().insert_axis(ndarray::Axis(1)),
    );
    for threads in [1, 2, 5] {
        let ga = with_threads(threads, || row_sums_vjp(a.view(), g.view()));
        assert_eq!(ga, via_spmm, "{threads} threads");
    }
    let ga = row_sums_vjp(a.view(), g.view());
    for (&v, (_, (r, _))) in ga.iter().zip(a.iter()) {
        assert_eq!(v, g[r]);
    }
}

#[test]
fn spmm_and_edge_l1_equal_spmm_and_segment_edge_l1_bit_for_bit_on_any_thread_count() {
    use graphpool::kernels::sparse::{segment_edge_l1, spmm_and_edge_l1};
    use graphpool::kernels::CHUNK;
    // graphs of every kind of work item: runs of small graphs, an empty
    // graph, one graph cut in several CHUNK pieces; blocks of a random
    // matrix with non-integer values, so that any other order shows
    let sizes = [3, 0, 7, 2 * CHUNK + 123, 1, 40, 5, 3 * CHUNK + 7, CHUNK + 1];
    let n: usize = sizes.iter().sum();
    let seg = Segments::from_sizes(&sizes);
    let mut tri = TriMat::new((n, n));
    let mut seen = std::collections::BTreeSet::new();
    for (g, r) in seg.ranges().enumerate() {
        for i in r.clone() {
            for t in 0..4 {
                let c = r.start + (i * 7919 + t * 104_729 + g) % r.len();
                if seen.insert((i, c)) {
                    tri.add_triplet(i, c, ((i * 13 + c * 5) % 1000) as f32 / 7.0 - 70.0);
                }
            }
        }
    }
    let a: CsMat<f32> = tri.to_csr();
    // rows on different scales, so that the pieces' partials differ in
    // magnitude and any other association of them rounds differently
    let scale = [1.0, 1e-3, 1e3];
    let s = Array2::from_shape_fn((n, 5), |(i, j)| {
        ((i * 31 + j * 17) % 97) as f32 / 13.0 * scale[(i / 1500) % 3]
    });
    // f32: its coarser rounding shows a different order of additions
    // the documented order, written out: each graph's entries added to 0
    // in storage order, a graph larger than CHUNK in pieces of CHUNK rows
    // from its first node whose partials are added left to right
    let l1 = graphpool::kernels::rows::l1_distance::<f32>;
    let piece = |rows: std::ops::Range<usize>| {
        let mut acc = 0.0;
        for r in rows {
            let row = a.outer_view(r).unwrap();
            for (c, &w) in row.iter() {
                acc += w * l1(s.row(r).as_slice().unwrap(), s.row(c).as_slice().unwrap());
            }
        }
        acc
    };
    let want_tv: Vec<f32> = seg
        .ranges()
        .map(|r| {
            let starts: Vec<usize> = r.clone().step_by(CHUNK).collect();
            match starts.split_first() {
                None => 0.0,
                Some((&first, rest)) => rest
                    .iter()
                    .fold(piece(first..(first + CHUNK).min(r.end)), |t, &p| {
                        t + piece(p..(p + CHUNK).min(r.end))
                    }),
            }
        })
        .collect();
    assert!(want_tv.iter().filter(|&&t| t != 0.0).count() >= 4);

    assert_eq!(segment_edge_l1(a.view(), s.view(), &seg).to_vec(), want_tv);
    let want_as = spmm(a.view(), s.view());
    for threads in [1, 2, 3] {
        let (a_s, tv) = with_threads(threads, || spmm_and_edge_l1(a.view(), s.view(), &seg));
        assert_eq!(a_s, want_as, "A S on {threads} threads");
        for (g, (&got, &want)) in tv.iter().zip(&want_tv).enumerate() {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "graph {g} on {threads} threads"
            );
        }
    }
}

/// The pieces of a graph larger than CHUNK are folded left to right,
/// $(p_0 + p_1) + p_2$: with $p_0 = 2^{25}$ and $p_1 = p_2 = 1.5$ in f32
/// that is $2^{25}$, while $(p_2 + p_1) + p_0$ rounds to $2^{25} + 4$.
#[test]
fn edge_l1_folds_a_large_graphs_pieces_left_to_right() {
    use graphpool::kernels::sparse::{segment_edge_l1, spmm_and_edge_l1};
    use graphpool::kernels::CHUNK;
    let n = 3 * CHUNK;
    let seg = Segments::from_sizes(&[n]);
    // one edge per piece, from a row with S = 1 to a row with S = 0 (an L1
    // distance of 1), weighted by the piece's partial
    let mut tri = TriMat::new((n, n));
    let big = (1u32 << 25) as f32;
    for (p, w) in [big, 1.5, 1.5].into_iter().enumerate() {
        tri.add_triplet(p * CHUNK, p * CHUNK + 1, w);
    }
    let a: CsMat<f32> = tri.to_csr();
    let s = Array2::from_shape_fn((n, 1), |(i, _)| if i % CHUNK == 0 { 1.0f32 } else { 0.0 });
    assert_ne!(
        (1.5f32 + 1.5) + big,
        (big + 1.5) + 1.5,
        "the two orders differ"
    );
    for threads in [1, 2] {
        let tv = with_threads(threads, || segment_edge_l1(a.view(), s.view(), &seg));
        assert_eq!(tv[0], (big + 1.5) + 1.5, "{threads} threads");
        let (_, fused) = with_threads(threads, || spmm_and_edge_l1(a.view(), s.view(), &seg));
        assert_eq!(fused[0], (big + 1.5) + 1.5, "{threads} threads");
    }
}

/// The N x K matrices the sparse products gather rows of start on a cache
/// line (a large buffer from the allocator starts 16 bytes past a page
/// boundary, so without the padding these pointers are not aligned), hold
/// zeros when fresh, and give the same products as unaligned inputs.
#[test]
fn gathered_matrices_start_on_a_cache_line() {
    use graphpool::kernels::rows::{build_rows, fresh_matrix, zeros, CACHE_LINE};
    let aligned = |p: *const u8| (p as usize).is_multiple_of(CACHE_LINE);
    // (an empty matrix has no first entry to align)
    for (r, c) in [(1, 1), (3, 5), (100_000, 16), (70_001, 3)] {
        let m = fresh_matrix::<f32>(r, c);
        assert_eq!(m.dim(), (r, c));
        assert!(m.is_standard_layout() && m.iter().all(|&v| v == 0.0));
        assert!(aligned(m.as_ptr().cast()), "f32 {r} x {c}");
        let m = fresh_matrix::<f64>(r, c);
        assert!(aligned(m.as_ptr().cast()), "f64 {r} x {c}");
        let z = zeros::<f32>(r, c);
        assert!(aligned(z.as_ptr().cast()) && z.iter().all(|&v| v == 0.0));
        let b = build_rows::<f64, _>(r, c, |i, row| row.fill(i as f64));
        assert!(aligned(b.as_ptr().cast()));
        assert!(b
            .outer_iter()
            .enumerate()
            .all(|(i, row)| row.iter().all(|&v| v == i as f64)));
    }
    for (r, c) in [(0, 0), (0, 16), (16, 0)] {
        assert_eq!(fresh_matrix::<f32>(r, c).dim(), (r, c));
        assert_eq!(build_rows::<f32, _>(r, c, |_, _| ()).dim(), (r, c));
    }
    let a = random_sparse(50_000, 50_000, 6, 3);
    let x = Array2::from_shape_fn((50_000, 16), |(i, j)| ((i * 31 + j * 7) % 13) as f64 - 6.0);
    let y = spmm(a.view(), x.view());
    assert!(aligned(y.as_ptr().cast()));
    // the same matrix starting one entry into its buffer: the same bits
    let mut shifted = Array1::<f64>::zeros(x.len() + 1);
    shifted
        .slice_mut(ndarray::s![1..])
        .assign(&Array1::from_iter(x.iter().copied()));
    let off = shifted
        .slice_move(ndarray::s![1..])
        .into_shape_with_order((50_000, 16))
        .unwrap();
    assert_eq!(spmm(a.view(), off.view()), y);
}

/// `scatter_scaled_rows_plus_checked` reports the flat index of the first
/// non-finite entry of the gradient it wrote, the one a scan of the whole
/// result finds, over several row blocks (the blocks run in parallel; the
/// earliest must win), and writes the same bits as the unchecked kernel.
#[test]
fn checked_scatter_reports_the_first_non_finite_entry_of_its_result() {
    use graphpool::kernels::gather::{scatter_scaled_rows_plus, scatter_scaled_rows_plus_checked};
    use graphpool::kernels::rows::first_non_finite;
    let (n, f) = (5000, 3);
    let kept: Vec<usize> = (0..n).step_by(3).collect();
    let scale = ndarray::Array1::from_shape_fn(kept.len(), |j| 0.5 + (j % 7) as f32 / 8.0);
    let c = Array2::from_shape_fn((n, 1), |(i, _)| {
        if i % 5 == 0 {
            0.0
        } else {
            1.0 + (i % 3) as f32
        }
    });
    let v = ndarray::array![[1.0_f32, -2.0, 0.25]];
    for bad_rows in [vec![], vec![4321], vec![4999, 1200], vec![2, 3000, 3001]] {
        let mut grad = Array2::from_shape_fn((kept.len(), f), |(j, t)| (j + t) as f32 / 100.0);
        for &r in &bad_rows {
            // kept rows get f32::MAX + a positive product: +inf
            if let Ok(j) = kept.binary_search(&r) {
                grad[[j, 0]] = f32::MAX;
            } else {
                grad[[0, 2]] = f32::NAN; // row 0 (kept) instead
            }
        }
        let (gx, bad) = scatter_scaled_rows_plus_checked(
            n,
            &kept,
            scale.view(),
            grad.view(),
            c.view(),
            v.view(),
        );
        let plain =
            scatter_scaled_rows_plus(n, &kept, scale.view(), grad.view(), c.view(), v.view());
        assert_eq!(
            bad,
            first_non_finite(gx.as_slice().unwrap()),
            "bad rows {bad_rows:?}"
        );
        assert_eq!(bad.is_some(), !bad_rows.is_empty(), "bad rows {bad_rows:?}");
        let bits = |a: &Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&gx), bits(&plain));
    }
}

proptest! {
    /// Any matrix, in any layout or offset within its buffer, comes back with
    /// the same shape and values (bit for bit) and its first entry on a cache
    /// line.
    #[test]
    fn align_to_cache_line_keeps_every_value_and_starts_on_a_line(
        rows in 0usize..40, cols in 0usize..20, skip in 0usize..5, transpose in any::<bool>()
    ) {
        use graphpool::kernels::rows::{align_to_cache_line, CACHE_LINE};
        // `skip` leading rows sliced off in place: an array that starts
        // inside its buffer, at any address
        let whole = Array2::from_shape_fn((rows + skip, cols), |(i, j)| (i * 31 + j) as f64 * 0.5 - 7.0);
        let mut x = whole.clone();
        x.slice_collapse(ndarray::s![skip.., ..]);
        if transpose {
            x = x.reversed_axes();
        }
        let expected = x.clone();
        let y = align_to_cache_line(x);
        prop_assert_eq!(&y, &expected);
        prop_assert!(y.is_standard_layout() || y.is_empty());
        if !y.is_empty() {
            prop_assert_eq!(y.as_ptr() as usize % CACHE_LINE, 0);
        }
    }
}

/// Sweeps every 13th `f32` of either sign below $+\infty$ (about 330
/// million values): `ours(x)` must equal `reference(x)` (an `f64` function)
/// rounded once to `f32` (or, where that is NaN, be NaN), except where that `f64` lies within $10^{-7}$ ULP
/// of a tie between two `f32` (there the `f64` reference itself cannot
/// decide, and both neighbours are within $0.5 + 10^{-7}$ ULP). Returns how
/// many near ties there were, and on how many values the platform's `f32`
/// function differs from the correctly rounded value (counted, not
/// asserted: glibc's `expf` and `tanhf` are within about 0.5 and 1 ULP).
fn assert_correctly_rounded_except_at_near_ties(
    ours: impl Fn(f32) -> f32,
    reference: impl Fn(f64) -> f64,
    platform: impl Fn(f32) -> f32,
) -> (u64, u64) {
    let (mut checked, mut near_ties, mut platform_differs) = (0u64, 0u64, 0u64);
    let mut wrong = Vec::new();
    let mut b: u32 = 0;
    while b < 0x7f80_0000 {
        for sign in [0u32, 1 << 31] {
            let x = f32::from_bits(b | sign);
            let e = reference(f64::from(x));
            let want = e as f32;
            let got = ours(x);
            checked += 1;
            platform_differs += u64::from(platform(x).to_bits() != want.to_bits());
            // (a NaN, of any sign, where the reference gives one)
            if got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()) {
                continue;
            }
            // adjacent, and e within 1e-7 ULP of their midpoint
            let (lo, hi) = (f64::from(got.min(want)), f64::from(got.max(want)));
            let adjacent = got.to_bits().abs_diff(want.to_bits()) == 1;
            if adjacent && ((e - (lo + hi) / 2.0) / (hi - lo)).abs() < 1e-7 {
                near_ties += 1;
            } else {
                wrong.push(x);
            }
        }
        b += 13;
    }
    assert!(checked > 320_000_000);
    assert!(
        wrong.is_empty(),
        "{} of {checked} differ, e.g. at {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    (near_ties, platform_differs)
}

/// `exp_f32` (every softmax's exponential) is the correctly rounded $e^x$
/// but at near ties (of which the sweep meets none), overflow, underflow
/// and subnormals included.
#[test]
fn exp_f32_is_correctly_rounded_except_at_near_ties() {
    use graphpool::scalar::exp_f32;
    let (near_ties, platform) =
        assert_correctly_rounded_except_at_near_ties(exp_f32, f64::exp, f32::exp);
    eprintln!("exp: {near_ties} near ties; f32::exp differs on {platform}");
    assert!(
        near_ties <= 2,
        "{near_ties} near ties: more than the error bound allows"
    );
    assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp_f32(f32::MAX), f32::INFINITY);
    assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp_f32(f32::MIN), 0.0);
    assert_eq!(exp_f32(-100.0), (-100.0_f64).exp() as f32);
    assert!(exp_f32(-100.0) > 0.0 && exp_f32(-100.0) < f32::MIN_POSITIVE);
    assert!(exp_f32(f32::NAN).is_nan());
    // the near tie this test found at degree 11: e^x is 0.49999996 ULP
    // below the f32 0.36240962 (mpmath, 200 bits)
    assert_eq!(exp_f32(-1.014_980_2), 0.362_409_62);
}

/// $e^x$ in `f64` as `exp_f32` evaluated it up to 65ca047: the same
/// reduction, and $\sum_{i=0}^{12} r^i / i!$ by Horner's rule.
fn exp_in_f64_by_horner(x: f64) -> f64 {
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const C: [f64; 11] = [
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ];
    let t = x * std::f64::consts::LOG2_E + SHIFT;
    let kd = t - SHIFT;
    let r = (x - kd * LN2_HI) - kd * LN2_LO;
    let mut p = C[0];
    for &c in &C[1..] {
        p = p * r + c;
    }
    p = p * r + 1.0;
    p = p * r + 1.0;
    let k_bits = t.to_bits().wrapping_sub(SHIFT.to_bits());
    p * f64::from_bits(k_bits.wrapping_add(1023) << 52)
}

/// `tanh_f32` as it was up to 65ca047, on [`exp_in_f64_by_horner`].
fn tanh_f32_by_horner(x: f32) -> f32 {
    let xd = f64::from(x);
    let a = xd.abs();
    let z = a * a;
    let series = a
        * (1.0
            + z * (-1.0 / 3.0
                + z * (2.0 / 15.0
                    + z * (-17.0 / 315.0 + z * (62.0 / 2835.0 + z * (-1382.0 / 155_925.0))))));
    let t = exp_in_f64_by_horner((-2.0 * a).clamp(-150.0, 0.0));
    let rational = (1.0 - t) / (1.0 + t);
    let v = if a < 0.0625 { series } else { rational };
    v.copysign(xd) as f32
}

/// `exp_f32` and `tanh_f32` evaluate their polynomial in $r$ mostly by
/// Estrin's scheme (shorter chains of dependent operations than Horner's
/// rule, which they used before): the `f64` values differ in their last
/// bits, but the `f32` results are the same bits as Horner's for every
/// `f32` input, NaN payloads apart. Every one of the $2^{32}$ bit patterns
/// in a release build (`cargo test --release`, about a minute on two
/// cores); every 97th in a debug build.
#[test]
fn exp_and_tanh_are_horners_for_every_f32() {
    use graphpool::scalar::{exp_f32, tanh_f32};
    use rayon::prelude::*;
    let stride: u64 = if cfg!(debug_assertions) { 97 } else { 1 };
    let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    // blocks of 2^20 patterns, in parallel
    let differ: Vec<(u32, &str)> = (0u64..1 << 12)
        .into_par_iter()
        .flat_map_iter(|block| {
            let mut found = Vec::new();
            let first = block << 20;
            let mut p = first.next_multiple_of(stride);
            while p < first + (1 << 20) {
                let x = f32::from_bits(p as u32);
                let horner = exp_in_f64_by_horner(f64::from(x).clamp(-150.0, 100.0)) as f32;
                if !same(exp_f32(x), horner) {
                    found.push((p as u32, "exp"));
                }
                if !same(tanh_f32(x), tanh_f32_by_horner(x)) {
                    found.push((p as u32, "tanh"));
                }
                p += stride;
            }
            found
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{} differ, e.g. {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
}

/// `ln_f32` (DiffPool's entropy, MemPooling's KL divergence) is the
/// correctly rounded $\ln x$ but at near ties, over the whole range:
/// subnormals, both sides of the reduction's switch at $\sqrt 2 / 2$, the
/// powers of two, zeros, infinities and negative values (NaN).
#[test]
fn ln_f32_is_correctly_rounded_except_at_near_ties() {
    use graphpool::scalar::ln_f32;
    let (near_ties, platform) =
        assert_correctly_rounded_except_at_near_ties(ln_f32, f64::ln, f32::ln);
    eprintln!("ln: {near_ties} near ties; f32::ln differs on {platform}");
    assert!(
        near_ties <= 2,
        "{near_ties} near ties: more than the error bound allows"
    );
    for x in [
        f32::from_bits(1),
        f32::MIN_POSITIVE,
        std::f32::consts::FRAC_1_SQRT_2,
        // the f32 on either side of sqrt(2)/2
        f32::from_bits(std::f32::consts::FRAC_1_SQRT_2.to_bits() - 1),
        f32::from_bits(std::f32::consts::FRAC_1_SQRT_2.to_bits() + 1),
        1.0,
        std::f32::consts::SQRT_2,
        2.0,
        0.5,
        f32::MAX,
    ] {
        assert_eq!(ln_f32(x), f64::from(x).ln() as f32, "at {x:e}");
    }
    assert_eq!(ln_f32(1.0).to_bits(), 0.0_f32.to_bits());
    assert_eq!(ln_f32(0.0), f32::NEG_INFINITY);
    assert_eq!(ln_f32(-0.0), f32::NEG_INFINITY);
    assert_eq!(ln_f32(f32::INFINITY), f32::INFINITY);
    assert!(ln_f32(-1e-30).is_nan() && ln_f32(f32::NEG_INFINITY).is_nan());
    assert!(ln_f32(f32::NAN).is_nan());
}

/// `tanh_f32` (the selection pools' gates) is the correctly rounded
/// $\tanh x$ but at near ties, on both sides of its switch at $|x| = 1/16$,
/// signed zeros and the infinities included.
#[test]
fn tanh_f32_is_correctly_rounded_except_at_near_ties() {
    use graphpool::scalar::tanh_f32;
    let (near_ties, platform) =
        assert_correctly_rounded_except_at_near_ties(tanh_f32, f64::tanh, f32::tanh);
    eprintln!("tanh: {near_ties} near ties; f32::tanh differs on {platform}");
    assert!(
        near_ties <= 2,
        "{near_ties} near ties: more than the error bound allows"
    );
    assert_eq!(tanh_f32(f32::INFINITY), 1.0);
    assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
    assert_eq!(tanh_f32(0.0).to_bits(), 0.0_f32.to_bits());
    assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0_f32).to_bits());
    assert_eq!(tanh_f32(1e-30), 1e-30);
    assert!(tanh_f32(f32::NAN).is_nan());
    for x in [0.0625_f32, 0.062_499_996] {
        assert_eq!(tanh_f32(x), f64::from(x).tanh() as f32);
    }
}

/// `Activation::apply_in_place` (one loop per activation, compiled for
/// each SIMD level) gives the bits of `apply` entry by entry, for every
/// activation, in `f32` and `f64`, on values across both signs, the
/// switch of `tanh_f32` at 1/16, zeros, infinities and NaN.
#[test]
fn activation_apply_in_place_equals_apply_entry_by_entry() {
    use graphpool::nn::Activation;
    let mut xs: Vec<f64> = (-400..=400).map(|i| f64::from(i) * 0.0625 / 3.0).collect();
    xs.extend([0.0625, -0.0625, 0.0, -0.0, 1e-30, 100.0, -100.0]);
    xs.extend([f64::INFINITY, f64::NEG_INFINITY, f64::NAN]);
    for act in Activation::ALL {
        let mut v64 = xs.clone();
        act.apply_in_place(&mut v64);
        let mut v32: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
        act.apply_in_place(&mut v32);
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(
                v64[i].to_bits(),
                act.apply(x).to_bits(),
                "{act:?} f64 at {x}"
            );
            let want = act.apply(x as f32);
            assert_eq!(v32[i].to_bits(), want.to_bits(), "{act:?} f32 at {x}");
        }
    }
}

#[test]
fn paired_streamed_dense_backward_equals_two_streamed_passes_bit_for_bit() {
    use graphpool::nn::{dense_backward_streamed, dense_pair_backward_streamed};
    let n = graphpool::kernels::CHUNK * 2 + 37;
    for (f, c1, c2) in [
        (3, 8, 8),
        (64, 64, 64),
        (64, 16, 7),
        (100, 7, 100),
        (5, 100, 3),
    ] {
        let x = Array2::from_shape_fn((n, f), |(i, j)| ((i * 13 + j * 7) % 17) as f32 / 7.0 - 1.1);
        let w1 = Array2::from_shape_fn((f, c1), |(i, j)| ((i * 5 + j * 3) % 11) as f32 / 5.0 - 0.9);
        let w2 = Array2::from_shape_fn((f, c2), |(i, j)| ((i * 7 + j) % 9) as f32 / 4.0 - 1.2);
        let g1 =
            Array2::from_shape_fn((n, c1), |(i, j)| ((i * 3 + j * 11) % 13) as f32 / 6.0 - 1.0);
        let g2 = Array2::from_shape_fn((n, c2), |(i, j)| ((i * 7 + j * 5) % 19) as f32 / 9.0 - 0.8);
        let gx0 = Array2::from_shape_fn((n, f), |(i, j)| ((i + j) % 5) as f32 / 3.0);
        let rows =
            |g: &Array2<f32>, r: std::ops::Range<usize>| g.slice(ndarray::s![r, ..]).to_owned();
        let mut paired = gx0.clone();
        let ((gw1, gb1), (gw2, gb2)) = dense_pair_backward_streamed(
            x.view(),
            w1.view(),
            w2.view(),
            |r| (rows(&g1, r.clone()), rows(&g2, r)),
            &mut paired,
        );
        let mut twice = gx0.clone();
        let (hw1, hb1) = dense_backward_streamed(x.view(), w1.view(), |r| rows(&g1, r), &mut twice);
        let (hw2, hb2) = dense_backward_streamed(x.view(), w2.view(), |r| rows(&g2, r), &mut twice);
        let bits = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let flat = |a: &Array2<f32>| bits(&a.iter().copied().collect::<Vec<_>>());
        assert_eq!(flat(&paired), flat(&twice), "gx, F {f} C {c1} {c2}");
        assert_eq!(flat(&gw1), flat(&hw1), "gW1, F {f} C {c1} {c2}");
        assert_eq!(flat(&gw2), flat(&hw2), "gW2, F {f} C {c1} {c2}");
        assert_eq!(
            bits(gb1.as_slice().unwrap()),
            bits(hb1.as_slice().unwrap()),
            "gb1"
        );
        assert_eq!(
            bits(gb2.as_slice().unwrap()),
            bits(hb2.as_slice().unwrap()),
            "gb2"
        );
    }
}

/// The backward passes through an activation, with the activation chosen
/// once outside a vectorised loop, give the bits of the per-entry formulas
/// for every activation: `vjp` those of `grad * derivative(x, y)` with
/// `y = apply(x)`, and `grad_from_output_in_place` (where the derivative is
/// a function of the output) those of `grad * derivative_from_output(y)`,
/// over values of every magnitude and sign, zeros, infinities and NaN, and
/// gradients with zeros and infinities among them.
#[test]
fn activation_backward_kernels_give_the_per_entry_bits_for_every_activation() {
    use graphpool::nn::Activation;
    use graphpool::Scalar;
    use ndarray::ArrayView2;
    fn check<T: Scalar + std::fmt::Debug>(vs: &[T], gs: &[T], bits: impl Fn(T) -> u64) {
        let n = vs.len();
        for act in Activation::ALL {
            let ys: Vec<T> = vs.iter().map(|&x| act.apply(x)).collect();
            let view = |v: &[T]| ArrayView2::from_shape((1, n), v).unwrap().to_owned();
            let got = act.vjp(view(vs).view(), view(&ys).view(), view(gs).view());
            for (i, &v) in got.iter().enumerate() {
                let want = gs[i] * act.derivative(vs[i], ys[i]);
                assert_eq!(bits(v), bits(want), "vjp {act:?} at x = {:?}", vs[i]);
            }
            if act.derivative_from_output_only() {
                // the values as outputs
                let mut got = vs.to_vec();
                act.grad_from_output_in_place(&mut got, gs);
                for ((&y, &g), &v) in vs.iter().zip(gs).zip(&got) {
                    let want = g * act.derivative_from_output(y);
                    assert_eq!(bits(v), bits(want), "{act:?} at y = {y:?}, grad = {g:?}");
                }
            }
        }
    }
    let mut vs: Vec<f32> = (0..50_000u32)
        .map(|i| f32::from_bits(i.wrapping_mul(85_837) & 0x7fff_ffff))
        .filter(|v| v.is_finite())
        .flat_map(|v| [v, -v])
        .collect();
    vs.extend([
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    // gradients of every sign and size, with zeros and infinities, at
    // positions that are no multiple of a vector's width
    let gs: Vec<f32> = (0..vs.len())
        .map(|i| match i % 37 {
            0 => 0.0,
            1 => -0.0,
            2 => f32::INFINITY,
            k => (k as f32 - 18.5) * 0.731,
        })
        .collect();
    check(&vs, &gs, |v: f32| u64::from(v.to_bits()));
    let (vs64, gs64): (Vec<f64>, Vec<f64>) = vs
        .iter()
        .zip(&gs)
        .map(|(&v, &g)| (f64::from(v), f64::from(g)))
        .unzip();
    check(&vs64, &gs64, f64::to_bits);
}

/// The sigmoid is one formula per side, 1/(1 + e^-x) for x >= 0 and
/// e^x/(1 + e^x) below (no overflow on either): its branch-free form gives
/// those bits, entry by entry and in a vectorised loop, over a sweep of
/// every magnitude and the special values, in f32 and f64.
#[test]
fn sigmoid_gives_the_two_sided_formula_bit_for_bit() {
    use graphpool::nn::Activation;
    use graphpool::Scalar;
    fn two_sided<T: Scalar>(x: T) -> T {
        let one = T::one();
        if x >= T::zero() {
            one / (one + (-x).exp_vectorizable())
        } else {
            let e = x.exp_vectorizable();
            e / (one + e)
        }
    }
    let mut xs: Vec<f32> = (0..200_000u32)
        .map(|i| f32::from_bits(i.wrapping_mul(21_477) & 0x7fff_ffff))
        .filter(|v| v.is_finite())
        .flat_map(|v| [v, -v])
        .collect();
    xs.extend([
        0.0, -0.0, 1e-30, -1e-30, 88.7, -88.7, 104.0, -104.0, 1e30, -1e30,
    ]);
    xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN]);
    let mut v32 = xs.clone();
    Activation::Sigmoid.apply_in_place(&mut v32);
    let mut v64: Vec<f64> = xs.iter().map(|&x| f64::from(x)).collect();
    Activation::Sigmoid.apply_in_place(&mut v64);
    for (i, &x) in xs.iter().enumerate() {
        assert_eq!(v32[i].to_bits(), two_sided(x).to_bits(), "f32 at {x:e}");
        assert_eq!(
            Activation::Sigmoid.apply(x).to_bits(),
            two_sided(x).to_bits(),
            "f32 at {x:e}"
        );
        let x64 = f64::from(x);
        assert_eq!(v64[i].to_bits(), two_sided(x64).to_bits(), "f64 at {x64:e}");
    }
}

/// `first_non_finite_in` (a branch-free pass compiled per SIMD level, then
/// the position) and the parallel `first_non_finite` find the earliest NaN
/// or infinity wherever it sits: inside a vector, in the remainder, across
/// blocks, with a second bad value after it.
#[test]
fn first_non_finite_finds_the_earliest_nan_or_infinity_at_every_position() {
    use graphpool::kernels::rows::{first_non_finite, first_non_finite_in};
    fn check<T: graphpool::Scalar>(len: usize, positions: impl Iterator<Item = usize>) {
        let clean: Vec<T> = (0..len).map(|i| T::c(i as f64 * 0.5 - 3.0)).collect();
        assert_eq!(first_non_finite_in(&clean), None, "len {len}");
        assert_eq!(first_non_finite(&clean), None, "len {len}");
        for p in positions {
            for bad in [T::nan(), T::infinity(), T::neg_infinity()] {
                let mut v = clean.clone();
                v[p] = bad;
                if p + 3 < len {
                    v[p + 3] = T::nan();
                }
                assert_eq!(first_non_finite_in(&v), Some(p), "len {len} at {p}");
                assert_eq!(first_non_finite(&v), Some(p), "len {len} at {p}");
            }
        }
    }
    for len in 0..70 {
        check::<f32>(len, 0..len);
        check::<f64>(len, 0..len);
    }
    // past one block of the parallel scan (2^14 entries)
    let len = 40_000;
    let at = [0, 15, 16, 16_383, 16_384, 16_385, 32_767, 39_999];
    check::<f32>(len, at.into_iter());
    check::<f64>(len, at.into_iter());
}

/// The induced subgraph over many blocks of kept rows (each block compacted
/// on its own, then copied into place) against a plain filter of the stored
/// entries: the same structure, values and source entries, rows of 0 to 24
/// entries with a run of 1,200 empty rows (when every row is kept, a whole
/// block of kept rows keeps nothing), kept sets of four densities, on 1, 2
/// and 3 threads.
#[test]
fn induced_subgraph_equals_a_plain_filter_over_many_row_blocks() {
    let n = 5_000usize;
    let mut tri = TriMat::new((n, n));
    for r in 0..n {
        // no entries at all in rows 1000..2200
        let len = if (1_000..2_200).contains(&r) {
            0
        } else {
            (r * 7) % 25
        };
        for t in 0..len {
            let c = (r * 31 + t * 977) % n;
            tri.add_triplet(r, c, (r * n + c) as f64);
        }
    }
    let a: CsMat<f64> = tri.to_csr();
    for keep_every in [1usize, 2, 3, 7] {
        let kept: Vec<usize> = (0..n)
            .filter(|&i| (i * 2_654_435_761) % keep_every == 0 || (1_000..2_100).contains(&i))
            .collect();
        let mut rank = vec![usize::MAX; n];
        for (j, &k) in kept.iter().enumerate() {
            rank[k] = j;
        }
        let (mut indptr, mut indices, mut data, mut source) = (vec![0], vec![], vec![], vec![]);
        for &r in &kept {
            for e in a.indptr().outer_inds_sz(r) {
                let c = a.indices()[e];
                if rank[c] != usize::MAX {
                    indices.push(rank[c]);
                    data.push(a.data()[e]);
                    source.push(e);
                }
            }
            indptr.push(indices.len());
        }
        for threads in [1, 2, 3] {
            let got = with_threads(threads, || induced_subgraph(a.view(), &kept));
            let what = format!("every {keep_every}, {threads} threads");
            assert_eq!(got.matrix.indptr().raw_storage(), &indptr[..], "{what}");
            assert_eq!(got.matrix.indices(), &indices[..], "{what}");
            assert_eq!(got.matrix.data(), &data[..], "{what}");
            assert_eq!(got.source, source, "{what}");
        }
    }
}

/// `rows::column_sums` has the bits of ndarray's `sum_axis(Axis(0))` on
/// values that round, in `f32` and `f64`, for matrices of 0 to 40 rows and
/// 0, 1, 3 and 16 columns, standard and transposed (left to ndarray).
#[test]
fn column_sums_have_ndarray_sum_axis_bits() {
    use graphpool::kernels::rows::column_sums;
    fn check<T: graphpool::Scalar>() {
        for n in 0..40usize {
            for c in [0usize, 1, 3, 16] {
                let g = Array2::from_shape_fn((n, c), |(i, j)| {
                    T::c(((i * 37 + j * 11 + n) % 23) as f64 / 7.1 - 1.3)
                });
                for m in [g.view(), g.t()] {
                    let want: Vec<_> = m
                        .sum_axis(ndarray::Axis(0))
                        .iter()
                        .map(|v| v.to_string())
                        .collect();
                    let got: Vec<_> = column_sums(m).iter().map(|v| v.to_string()).collect();
                    assert_eq!(got, want, "{n} x {c}");
                }
            }
        }
    }
    check::<f32>();
    check::<f64>();
}

/// `rows::sum` has the bits of ndarray's `sum` of a contiguous array at
/// every length (eight partial sums, then the remainder), in `f32` and
/// `f64`, on values that round.
#[test]
fn row_sum_has_ndarray_sum_bits_at_every_length() {
    use graphpool::kernels::rows::sum;
    for len in 0..70usize {
        let a: Vec<f32> = (0..len)
            .map(|i| ((i * 37 + len) % 23) as f32 / 7.1 - 1.3)
            .collect();
        assert_eq!(
            sum(&a).to_bits(),
            ndarray::aview1(&a).sum().to_bits(),
            "f32 length {len}"
        );
        let b: Vec<f64> = a.iter().map(|&v| f64::from(v) / 3.3).collect();
        assert_eq!(
            sum(&b).to_bits(),
            ndarray::aview1(&b).sum().to_bits(),
            "f64 length {len}"
        );
    }
}

/// `spmm_and_row_sums(a, x)` has the bits of `spmm(a, x)` and
/// `row_sums(a)`.
fn assert_fused_degrees_bits<T: graphpool::Scalar>(a: &CsMat<T>, x: &Array2<T>, what: &str) {
    use graphpool::kernels::sparse::{row_sums, spmm_and_row_sums};
    let bits = |v: &T| v.to_f64().unwrap().to_bits();
    let (ax, d) = spmm_and_row_sums(a.view(), x.view());
    let want = spmm(a.view(), x.view());
    assert!(ax.iter().map(bits).eq(want.iter().map(bits)), "A X, {what}");
    assert!(
        d.iter().map(bits).eq(row_sums(a.view()).iter().map(bits)),
        "row sums, {what}"
    );
}

#[test]
fn spmm_and_row_sums_give_the_bits_of_spmm_and_row_sums() {
    // more rows than one ROW_BLOCK, rows with no entries, non-integer
    // values; every width with a register path (8, 16, 32, 64), others
    // around them, and none
    let a = random_sparse_with_empty_rows(2500, 4, 11, 5);
    let a32: CsMat<f32> = a.map(|&v| v as f32);
    for f in [0, 1, 3, 8, 9, 16, 32, 33, 64] {
        let x = Array2::from_shape_fn((2500, f), |(i, j)| {
            ((i * 7 + j * 13) % 29) as f64 / 9.0 - 1.5
        });
        let x32 = x.mapv(|v| v as f32);
        for threads in [1, 2, 5] {
            let what = format!("F = {f}, {threads} threads");
            with_threads(threads, || assert_fused_degrees_bits(&a, &x, &what));
            with_threads(threads, || assert_fused_degrees_bits(&a32, &x32, &what));
        }
    }
}

/// Every product of `GcnOperator` against the same product with the stored
/// filter of `a`, bit for bit, on 1, 2 and 3 threads, at the widths with a
/// fixed-width row kernel (8, 16, 64) and others.
fn assert_gcn_operator_is_the_stored_filter(a: &CsMat<f64>, seed: u64) {
    let bits = |m: &Array2<f64>| m.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let stored = gcn_filter(a.view());
    let fm = stored.matrix.view();
    let u = gcn_deg_inv_sqrt(a.view());
    let view = a.view();
    let op = GcnOperator::new(&view, u.as_slice().unwrap()).unwrap();
    let n = a.rows();
    let rough = |cols: usize, salt: u64| {
        Array2::from_shape_fn((n, cols), |(i, j)| {
            ((i * 37 + j * 11) as f64 * 0.173 + (seed + salt) as f64 * 0.61).sin() * 3.0
        })
    };
    let w = Array2::from_shape_fn((16, 5), |(i, j)| ((i * 5 + j) as f64 * 0.37).cos());
    for f in [1usize, 3, 8, 16, 64] {
        let (x, y) = (rough(f, 1), rough(2, 2));
        let want = spmm(fm, x.view());
        let want_t = spmm_t(fm, x.view());
        for threads in [1, 2, 3] {
            let (got, got_t, many) = with_threads(threads, || {
                (
                    op.spmm(x.view()),
                    op.spmm_t(x.view()),
                    op.spmm_many(&[x.view(), y.view()]),
                )
            });
            assert_same_bits(
                &bits(&got),
                &bits(&want),
                &format!("A X, F = {f}, {threads} threads"),
            );
            assert_same_bits(
                &bits(&got_t),
                &bits(&want_t),
                &format!("A^T X, F = {f}, {threads} threads"),
            );
            let want_many = spmm_many(fm, &[x.view(), y.view()]);
            for (g, v) in many.iter().zip(&want_many) {
                assert_same_bits(&bits(g), &bits(v), &format!("spmm_many, F = {f}"));
            }
            // rows from inside a row block to past the next one
            let rows = n / 3..n;
            let mut part = vec![0.0; rows.len() * f];
            op.spmm_rows(x.view(), rows.clone(), &mut part);
            let mut want_part = vec![0.0; rows.len() * f];
            spmm_rows(fm, x.view(), rows, &mut want_part);
            assert!(
                part.iter()
                    .zip(&want_part)
                    .all(|(p, q)| p.to_bits() == q.to_bits()),
                "rows, F = {f}"
            );
        }
    }
    let x = rough(16, 3);
    let got = with_threads(3, || {
        op.spmm_times(
            x.view(),
            &[w.view(), w.column(0).insert_axis(ndarray::Axis(1))],
        )
    });
    let want = spmm_times(
        fm,
        x.view(),
        &[w.view(), w.column(0).insert_axis(ndarray::Axis(1))],
    );
    for (g, v) in got.iter().zip(&want) {
        assert_same_bits(&bits(g), &bits(v), "spmm_times");
    }
}

fn assert_same_bits(got: &[u64], want: &[u64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        panic!(
            "{what}: entry {i} is {} instead of {}",
            f64::from_bits(got[i]),
            f64::from_bits(want[i])
        );
    }
}

#[test]
fn gcn_operator_products_are_the_stored_filters_bit_for_bit_on_any_thread_count() {
    // rough values: rows with and without a stored diagonal, a few empty
    // rows, negative weights (degrees <= 0 give u = 0), beyond a row block
    for (n, seed) in [(1usize, 1u64), (7, 2), (3000, 3)] {
        let mut a = random_sparse_with_empty_rows(n, 5, seed, 17);
        a.data_mut()
            .iter_mut()
            .enumerate()
            .for_each(|(e, v)| *v = *v * 0.013 + (e % 3) as f64 * 0.5);
        assert_gcn_operator_is_the_stored_filter(&a, seed);
    }
    // an empty matrix: the filter is the identity
    assert_gcn_operator_is_the_stored_filter(&CsMat::zero((5, 5)), 4);
}

proptest! {
    /// The same on small integer matrices: any pattern of diagonal entries,
    /// zero and negative degrees.
    #[test]
    fn gcn_operator_products_are_the_stored_filters_bit_for_bit_on_small_matrices(
        a in int_square(),
        seed in 0u64..100,
    ) {
        assert_gcn_operator_is_the_stored_filter(&a, seed);
    }
}

#[test]
fn gcn_operator_refuses_a_mismatched_input_with_a_typed_error() {
    use graphpool::PoolError;
    let a = random_square(4, 1);
    let u = gcn_deg_inv_sqrt(a.view());
    let view = a.view();
    assert!(matches!(
        GcnOperator::new(&view, &u.as_slice().unwrap()[..3]),
        Err(PoolError::ShapeMismatch { .. })
    ));
    let wide: CsMat<f64> = CsMat::zero((4, 5));
    let wide_view = wide.view();
    assert!(matches!(
        GcnOperator::new(&wide_view, u.as_slice().unwrap()),
        Err(PoolError::AdjacencyShape { .. })
    ));
    let csc = a.to_csc();
    let csc_view = csc.view();
    assert!(matches!(
        GcnOperator::new(&csc_view, u.as_slice().unwrap()),
        Err(PoolError::NotCsr)
    ));
}
