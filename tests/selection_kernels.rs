//! The kernels added for the selection pools against dense oracles (test
//! only) and finite differences: spgemm VJPs, row softmax, sampled cosine
//! similarity, the Laplacian product, undirected shortest paths, and the
//! sparse-assignment reduce / connect of the SRC framework.

mod common;

use common::with_threads;
use graphpool::framework::SparseAssignment;
use graphpool::kernels::row_norms;
use graphpool::kernels::sparse::{
    cosine_at, cosine_at_vjp, cosine_at_vjp_acc, gather_at, laplacian_row_norms, laplacian_spmm,
    laplacian_spmm_vjp_values, laplacian_spmm_vjp_x, row_softmax, row_softmax_vjp, spgemm,
    spgemm_t_vjp_b, spgemm_vjp_a, spgemm_vjp_b, transpose, undirected_path_lengths,
    undirected_path_lengths_vjp,
};
use graphpool::{PoolError, Segments};
use ndarray::{Array1, Array2};
use proptest::prelude::*;
use sprs::{CsMat, TriMat};

fn dense(a: &CsMat<f64>) -> Array2<f64> {
    let mut d = Array2::zeros((a.rows(), a.cols()));
    for (&v, (r, c)) in a.iter() {
        d[[r, c]] += v;
    }
    d
}

fn with_data(a: &CsMat<f64>, data: Vec<f64>) -> CsMat<f64> {
    let (ip, idx, _) = a.clone().into_raw_storage();
    CsMat::new(a.shape(), ip, idx, data)
}

/// A random sparse matrix with values from `vals` (continuous) or small integers.
fn sparse(r: usize, c: usize, density: f64) -> impl Strategy<Value = CsMat<f64>> {
    proptest::collection::vec((0.0f64..1.0, -2.0f64..2.0), r * c).prop_map(move |cells| {
        let mut t = TriMat::new((r, c));
        for (k, (p, v)) in cells.into_iter().enumerate() {
            if p < density {
                t.add_triplet(k / c, k % c, v);
            }
        }
        t.to_csr()
    })
}

fn matrix(r: usize, c: usize) -> impl Strategy<Value = Array2<f64>> {
    proptest::collection::vec(-2.0f64..2.0, r * c)
        .prop_map(move |v| Array2::from_shape_vec((r, c), v).unwrap())
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())))
}

/// Central difference of `f` with respect to every entry of `v`.
fn numeric_grad(v: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    (0..v.len())
        .map(|k| {
            let mut p = v.to_vec();
            p[k] += h;
            let lp = f(&p);
            p[k] -= 2.0 * h;
            (lp - f(&p)) / (2.0 * h)
        })
        .collect()
}

/// A symmetric weighted graph on `n` nodes (weights in [0.5, 2], no loops).
fn graph(n: usize) -> impl Strategy<Value = CsMat<f64>> {
    proptest::collection::vec((0.0f64..1.0, 0.5f64..2.0), n * n).prop_map(move |cells| {
        let mut t = TriMat::new((n, n));
        for i in 0..n {
            for j in i + 1..n {
                let (p, w) = cells[i * n + j];
                if p < 0.45 {
                    t.add_triplet(i, j, w);
                    t.add_triplet(j, i, w);
                }
            }
        }
        t.to_csr()
    })
}

/// All-pairs undirected shortest paths (Floyd–Warshall on the dense
/// matrix, like scipy's `shortest_path(directed=False)`): test oracle only.
fn floyd_warshall(a: &CsMat<f64>) -> Array2<f64> {
    let n = a.rows();
    let mut d = Array2::from_elem((n, n), f64::INFINITY);
    for i in 0..n {
        d[[i, i]] = 0.0;
    }
    for (&w, (i, j)) in a.iter() {
        if i != j && w != 0.0 {
            d[[i, j]] = d[[i, j]].min(w);
            d[[j, i]] = d[[j, i]].min(w);
        }
    }
    for k in 0..n {
        for i in 0..n {
            for j in 0..n {
                let via = d[[i, k]] + d[[k, j]];
                if via < d[[i, j]] {
                    d[[i, j]] = via;
                }
            }
        }
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn spgemm_vjps_equal_dense_formulas(
        (a, b, g) in (1usize..6, 1usize..6, 1usize..6).prop_flat_map(|(n, k, m)| {
            (sparse(n, k, 0.5), sparse(k, m, 0.5), matrix(n, m))
        })
    ) {
        let c = spgemm(a.view(), b.view());
        let gc = with_data(&c, c.iter().map(|(_, (i, j))| g[[i, j]]).collect());
        // restricted to C's structure, the dense gradient is G masked by C's pattern
        let gmask = dense(&with_data(&c, gc.data().to_vec()));
        let ga_dense = gmask.dot(&dense(&b).t());
        let gb_dense = dense(&a).t().dot(&gmask);
        let ga = spgemm_vjp_a(a.view(), b.view(), gc.view());
        let gb = spgemm_vjp_b(a.view(), b.view(), gc.view());
        let want_a: Vec<f64> = a.iter().map(|(_, (i, k))| ga_dense[[i, k]]).collect();
        let want_b: Vec<f64> = b.iter().map(|(_, (k, j))| gb_dense[[k, j]]).collect();
        prop_assert!(close(ga.as_slice().unwrap(), &want_a, 1e-12));
        prop_assert!(close(gb.as_slice().unwrap(), &want_b, 1e-12));
    }

    #[test]
    fn spgemm_t_vjp_b_is_the_gathered_product_bit_for_bit_on_any_thread_count(
        (a, b, g) in (1usize..9, 1usize..9, 1usize..9).prop_flat_map(|(n, k, m)| {
            (sparse(n, k, 0.5), sparse(k, m, 0.5), sparse(n, m, 0.5))
        })
    ) {
        // A^T G sampled at B's pattern, without A^T G held: the values of
        // forming it and gathering, bit for bit
        let at = transpose(a.view()).matrix;
        let want = gather_at(spgemm(at.view(), g.view()).view(), b.view());
        for threads in [1, 3] {
            let got = with_threads(threads, || spgemm_t_vjp_b(at.view(), b.view(), g.view()));
            prop_assert_eq!(&got, &want);
            let through_a = with_threads(threads, || spgemm_vjp_b(a.view(), b.view(), g.view()));
            prop_assert_eq!(&through_a, &want);
        }
    }

    #[test]
    fn cosine_vjp_with_the_callers_transpose_equals_forming_it(
        (p, x, y, g) in (1usize..7, 1usize..7, 1usize..4).prop_flat_map(|(n, m, f)| {
            (sparse(n, m, 0.6), matrix(n, f), matrix(m, f), proptest::collection::vec(-1.0f64..1.0, n * m))
        })
    ) {
        let c = cosine_at(p.view(), x.view(), y.view());
        let g = Array1::from(g[..p.nnz()].to_vec());
        let t = transpose(p.view());
        let mut gx_formed = Array2::ones(x.raw_dim());
        let mut gx_given = gx_formed.clone();
        let gy_formed = cosine_at_vjp_acc((p.view(), None), x.view(), y.view(), c.view(), g.view(), &mut gx_formed);
        let gy_given = cosine_at_vjp_acc((p.view(), Some(&t)), x.view(), y.view(), c.view(), g.view(), &mut gx_given);
        prop_assert_eq!(gy_given, gy_formed);
        prop_assert_eq!(gx_given, gx_formed);
    }

    #[test]
    fn row_softmax_and_its_vjp_match_the_definition(
        (m, g) in (1usize..6, 1usize..6).prop_flat_map(|(r, c)| {
            (sparse(r, c, 0.6), proptest::collection::vec(-1.0f64..1.0, r * c))
        })
    ) {
        let s = row_softmax(m.view());
        for (i, row) in m.outer_iterator().enumerate() {
            let mx = row.data().iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.data().iter().map(|v| (v - mx).exp()).sum();
            let ip = m.indptr().raw_storage()[i];
            for (k, v) in row.data().iter().enumerate() {
                prop_assert!(((v - mx).exp() / z - s[ip + k]).abs() < 1e-14);
            }
        }
        let g: Vec<f64> = g[..m.nnz()].to_vec();
        let analytic = row_softmax_vjp(m.view(), s.view(), Array1::from(g.clone()).view());
        let numeric = numeric_grad(m.data(), |v| {
            row_softmax(with_data(&m, v.to_vec()).view()).iter().zip(&g).map(|(a, b)| a * b).sum()
        });
        prop_assert!(close(analytic.as_slice().unwrap(), &numeric, 1e-6));
    }

    #[test]
    fn cosine_at_and_its_vjp_match_the_definition(
        (p, x, y, g) in (1usize..6, 1usize..6, 1usize..4).prop_flat_map(|(n, m, f)| {
            (sparse(n, m, 0.6), matrix(n, f), matrix(m, f), proptest::collection::vec(-1.0f64..1.0, n * m))
        })
    ) {
        let c = cosine_at(p.view(), x.view(), y.view());
        for ((_, (i, j)), &cv) in p.iter().zip(c.iter()) {
            let (xi, yj) = (x.row(i), y.row(j));
            let want = xi.dot(&yj) / (xi.dot(&xi).sqrt() * yj.dot(&yj).sqrt());
            prop_assert!((want - cv).abs() < 1e-12);
        }
        let g = Array1::from(g[..p.nnz()].to_vec());
        let (gx, gy) = cosine_at_vjp(p.view(), x.view(), y.view(), c.view(), g.view());
        let loss = |xx: &Array2<f64>, yy: &Array2<f64>| cosine_at(p.view(), xx.view(), yy.view()).dot(&g);
        let nx = numeric_grad(x.as_slice().unwrap(), |v| {
            loss(&Array2::from_shape_vec(x.raw_dim(), v.to_vec()).unwrap(), &y)
        });
        let ny = numeric_grad(y.as_slice().unwrap(), |v| {
            loss(&x, &Array2::from_shape_vec(y.raw_dim(), v.to_vec()).unwrap())
        });
        prop_assert!(close(gx.as_slice().unwrap(), &nx, 1e-6));
        prop_assert!(close(gy.as_slice().unwrap(), &ny, 1e-6));
    }

    #[test]
    fn laplacian_product_and_vjps_equal_dense_oracles(
        (a, x, g) in (1usize..7, 1usize..4).prop_flat_map(|(n, f)| (sparse(n, n, 0.4), matrix(n, f), matrix(n, f)))
    ) {
        let ad = dense(&a);
        let deg = Array2::from_diag(&ad.sum_axis(ndarray::Axis(1)));
        let l = &deg - &ad;
        let lx = laplacian_spmm(a.view(), x.view());
        prop_assert!(close(lx.as_slice().unwrap(), l.dot(&x).as_slice().unwrap(), 1e-12));
        // the signal without LX held whole: the norms of its rows, bit for bit
        prop_assert_eq!(laplacian_row_norms(a.view(), x.view()), row_norms(lx.view()));
        let gx = laplacian_spmm_vjp_x(a.view(), g.view());
        prop_assert!(close(gx.as_slice().unwrap(), l.t().dot(&g).as_slice().unwrap(), 1e-12));
        let ga = laplacian_spmm_vjp_values(a.view(), x.view(), g.view());
        let numeric = numeric_grad(a.data(), |v| {
            (laplacian_spmm(with_data(&a, v.to_vec()).view(), x.view()) * &g).sum()
        });
        prop_assert!(close(ga.as_slice().unwrap(), &numeric, 1e-6));
    }

    #[test]
    fn path_lengths_equal_floyd_warshall_and_their_vjp_finite_differences(
        (a, g) in (1usize..8).prop_flat_map(|n| (graph(n), proptest::collection::vec(-1.0f64..1.0, n * n)))
    ) {
        let n = a.rows();
        let seg = Segments::single(n);
        let sources: Vec<usize> = (0..n).step_by(2).collect();
        let d = undirected_path_lengths(a.view(), &seg, &sources).unwrap();
        let fw = floyd_warshall(&a);
        for (k, &s) in sources.iter().enumerate() {
            for v in 0..n {
                let (got, want) = (d[k][v], fw[[s, v]]);
                prop_assert!(got == want || (got - want).abs() < 1e-12, "{} -> {}: {} vs {}", s, v, got, want);
            }
        }
        // loss = sum over reachable pairs of g * dist
        let gd: Vec<Vec<f64>> = sources.iter().enumerate()
            .map(|(k, _)| (0..n).map(|v| g[k * n + v]).collect()).collect();
        let loss = |w: &[f64]| -> f64 {
            let d = undirected_path_lengths(with_data(&a, w.to_vec()).view(), &seg, &sources).unwrap();
            d.iter().zip(&gd).flat_map(|(dk, gk)| dk.iter().zip(gk))
                .filter(|(d, _)| d.is_finite()).map(|(d, g)| d * g).sum()
        };
        let analytic = undirected_path_lengths_vjp(a.view(), &seg, &sources, &gd).unwrap();
        let numeric = numeric_grad(a.data(), loss);
        prop_assert!(close(analytic.as_slice().unwrap(), &numeric, 1e-5), "{} vs {:?}", analytic, numeric);
    }

    #[test]
    fn sparse_assignment_reduce_connect_and_vjps_match_dense_oracles(
        (a, s, x, gx, ga) in (1usize..6, 1usize..4, 1usize..3).prop_flat_map(|(n, l, f)| {
            (graph(n), sparse(n, l, 0.7), matrix(n, f), matrix(l, f), matrix(l, l))
        })
    ) {
        let asg = SparseAssignment { s: s.clone(), leaders: Vec::new() };
        let (sd, ad) = (dense(&s), dense(&a));
        let xr = asg.reduce(x.view());
        prop_assert!(close(xr.as_slice().unwrap(), sd.t().dot(&x).as_slice().unwrap(), 1e-12));
        let (ap, cache) = asg.connect(a.view());
        let want = sd.t().dot(&ad).dot(&sd);
        prop_assert!(close(dense(&ap).as_slice().unwrap(), want.as_slice().unwrap(), 1e-12));
        // reduce VJP
        let (g_s, g_x) = asg.reduce_vjp(x.view(), gx.view());
        prop_assert!(close(g_x.as_slice().unwrap(), sd.dot(&gx).as_slice().unwrap(), 1e-12));
        let ns = numeric_grad(s.data(), |v| {
            let a2 = SparseAssignment { s: with_data(&s, v.to_vec()), leaders: Vec::new() };
            (a2.reduce(x.view()) * &gx).sum()
        });
        prop_assert!(close(g_s.as_slice().unwrap(), &ns, 1e-6));
        // connect VJP: loss = sum over A' entries of ga * a'
        let gvals: Array1<f64> = ap.iter().map(|(_, (i, j))| ga[[i, j]]).collect();
        let (g_s, g_a) = asg.connect_vjp(a.view(), &cache, gvals.view());
        let loss = |s2: &CsMat<f64>, a2: &CsMat<f64>| -> f64 {
            let asg2 = SparseAssignment { s: s2.clone(), leaders: Vec::new() };
            let (p, _) = asg2.connect(a2.view());
            p.iter().map(|(v, (i, j))| v * ga[[i, j]]).sum()
        };
        let ns = numeric_grad(s.data(), |v| loss(&with_data(&s, v.to_vec()), &a));
        let na = numeric_grad(a.data(), |v| loss(&s, &with_data(&a, v.to_vec())));
        prop_assert!(close(g_s.as_slice().unwrap(), &ns, 1e-6));
        prop_assert!(close(g_a.as_slice().unwrap(), &na, 1e-6));
    }
}

#[test]
fn cosine_with_a_zero_vector_is_zero_with_zero_gradient() {
    let p = CsMat::new((1, 1), vec![0, 1], vec![0], vec![0.0]);
    let x = Array2::zeros((1, 2));
    let y = Array2::from_shape_vec((1, 2), vec![1.0, 2.0]).unwrap();
    let c = cosine_at(p.view(), x.view(), y.view());
    assert_eq!(c[0], 0.0);
    let (gx, gy) = cosine_at_vjp(p.view(), x.view(), y.view(), c.view(), c.view());
    assert!(gx.iter().chain(gy.iter()).all(|&v| v == 0.0));
}

#[test]
fn negative_path_lengths_are_an_error() {
    let a = CsMat::new((2, 2), vec![0, 1, 1], vec![1], vec![-1.0]);
    assert!(matches!(
        undirected_path_lengths(a.view(), &Segments::single(2), &[0]),
        Err(PoolError::NegativePathLength { row: 0, col: 1, .. })
    ));
}

#[test]
fn path_lengths_take_the_shorter_direction_and_skip_zero_weights() {
    // 0 -> 1 weight 3, 1 -> 0 weight 1; 1 -> 2 weight 0 (no edge)
    let mut t = TriMat::new((3, 3));
    t.add_triplet(0, 1, 3.0);
    t.add_triplet(1, 0, 1.0);
    t.add_triplet(1, 2, 0.0);
    let a: CsMat<f64> = t.to_csr();
    let d = undirected_path_lengths(a.view(), &Segments::single(3), &[0]).unwrap();
    assert_eq!(d[0], vec![0.0, 1.0, f64::INFINITY]);
    // only the shorter entry (1, 0) carries the gradient
    let g =
        undirected_path_lengths_vjp(a.view(), &Segments::single(3), &[0], &[vec![0.0, 1.0, 5.0]])
            .unwrap();
    let by_entry: Vec<((usize, usize), f64)> =
        a.iter().map(|(_, ij)| ij).zip(g.iter().copied()).collect();
    assert_eq!(by_entry, vec![((0, 1), 0.0), ((1, 0), 1.0), ((1, 2), 0.0)]);
}

/// Bit-identical results on 1 and 4 threads for inputs spanning several
/// row blocks.
#[test]
fn new_kernels_are_thread_count_independent() {
    let n = 3000;
    let mut t = TriMat::new((n, n));
    let mut seed = 12345u64;
    let mut rnd = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 11) as f64) / ((1u64 << 53) as f64)
    };
    for i in 0..n {
        for _ in 0..3 {
            let j = (rnd() * n as f64) as usize % n;
            if j != i {
                let w = 0.5 + rnd();
                t.add_triplet(i, j, w);
                t.add_triplet(j, i, w);
            }
        }
    }
    let a: CsMat<f64> = t.to_csr();
    let x = Array2::from_shape_simple_fn((n, 4), &mut rnd);
    let g = Array2::from_shape_simple_fn((n, 4), &mut rnd);
    let run = || {
        let lx = laplacian_spmm(a.view(), x.view());
        let gv = laplacian_spmm_vjp_values(a.view(), x.view(), g.view());
        let c = cosine_at(a.view(), x.view(), x.view());
        let (cx, cy) = cosine_at_vjp(a.view(), x.view(), x.view(), c.view(), c.view());
        let s = row_softmax(a.view());
        let d = undirected_path_lengths(a.view(), &Segments::single(n), &[0, 7, 99]).unwrap();
        let dv =
            undirected_path_lengths_vjp(a.view(), &Segments::single(n), &[0, 7, 99], &d).unwrap();
        (lx, gv, c, cx, cy, s, d, dv)
    };
    let r1 = with_threads(1, run);
    let r4 = with_threads(4, run);
    assert!(r1 == r4);
    // LaPool's signal over several row blocks: the norms of L X's rows, bit for bit
    for t in [1, 3] {
        let v = with_threads(t, || laplacian_row_norms(a.view(), x.view()));
        assert_eq!(v, row_norms(r1.0.view()));
    }
}

/// `segment_top_k` keeps exactly the first `count(n)` nodes of each graph
/// in the order of `segment_argsort_desc` (score descending, ties by node
/// index), returned in input order: many ties, negative zeros, empty
/// graphs, graphs on both sides of each width the small graphs are ranked
/// at by counting (16, 32, 64) and of the selection beyond, graphs larger
/// than a chunk (whose threshold a parallel radix selection finds), values
/// spread over magnitudes and signs in `f32` and `f64`, counts from 0 to
/// n; the same on 1 and 3 threads.
#[test]
fn top_k_selection_equals_the_prefix_of_the_stable_sort() {
    let sizes = [
        0usize, 1, 2, 7, 30, 0, 9_000, 50, 4_097, 3, 16, 17, 32, 33, 64, 65, 100,
    ];
    let seg = Segments::from_sizes(&sizes);
    let n = seg.num_nodes();
    // few distinct values: ties everywhere, -0.0 and 0.0 equal
    let score = Array1::from_shape_fn(n, |i| match (i * 7919) % 11 {
        0 => -0.0,
        1 => 0.0,
        v => (v as f32 - 5.0) * 0.25,
    });
    check_top_k_against_sort(&seg, score.view());
    // many distinct values across magnitudes and signs (the radix selection
    // of a large graph then finds its threshold in one bucket among many),
    // a few ties, in f32 and f64
    let spread = |i: usize| {
        let u = ((i as u64).wrapping_mul(2654435761) % 1_000_003) as f64 / 1_000_003.0;
        let v = (u - 0.5) * 10f64.powi((i % 13) as i32 - 6);
        if i.is_multiple_of(97) {
            0.125
        } else {
            v
        }
    };
    check_top_k_against_sort(&seg, Array1::from_shape_fn(n, |i| spread(i) as f32).view());
    check_top_k_against_sort(&seg, Array1::from_shape_fn(n, spread).view());
}

fn check_top_k_against_sort<T: graphpool::Scalar>(seg: &Segments, score: ndarray::ArrayView1<T>) {
    use graphpool::kernels::sort::{segment_argsort_desc, segment_top_k};
    let sorted = segment_argsort_desc(score, seg);
    for frac in [0.0, 0.1, 0.5, 0.9, 1.0] {
        let count = |m: usize| ((m as f64) * frac).ceil() as usize;
        let mut want: Vec<usize> = sorted
            .iter()
            .flat_map(|idx| {
                let mut top = idx[..count(idx.len())].to_vec();
                top.sort_unstable();
                top
            })
            .collect();
        want.sort_unstable();
        for t in [1, 3] {
            let got = with_threads(t, || segment_top_k(score, seg, count).unwrap());
            assert_eq!(got, want, "fraction {frac}, {t} threads");
        }
    }
}

/// The row kernels of the subset selections against plain loops: the
/// gathered scaled rows (scales given, or computed per kept node as the
/// rows are gathered), the gradient of the scales, the gradient of `X`
/// with its rank-r score term written in one pass (bit for bit the order
/// `(0 + s * g) + c_1 v_1 + c_2 v_2`), and `X^T c` (exact on integers), on
/// 1 and 3 threads, for more rows than a chunk.
#[test]
fn row_kernels_equal_plain_loops() {
    use graphpool::kernels::gather::{
        gather_gated_rows_checked, gather_scaled_rows, gather_scaled_rows_vjp_scale,
        scatter_scaled_rows_plus, weighted_row_sum,
    };
    let (n, f) = (9_000usize, 3usize);
    let x = Array2::from_shape_fn((n, f), |(i, j)| ((i * 7 + j * 3) % 13) as f64 - 6.0);
    let kept: Vec<usize> = (0..n).filter(|i| i % 3 != 1).collect();
    let k = kept.len();
    let scale = Array1::from_shape_fn(k, |j| (j % 5) as f64 * 0.25 - 0.5);
    let grad = Array2::from_shape_fn((k, f), |(j, c)| ((j * 11 + c) % 7) as f64 * 0.5 - 1.0);
    let c = Array2::from_shape_fn((n, 2), |(i, t)| {
        if i % 4 == t {
            0.0
        } else {
            (i % 9) as f64 - 4.0
        }
    });
    let v = Array2::from_shape_fn((2, f), |(t, j)| (t * 3 + j) as f64 * 0.5 - 1.0);
    // a gate of a per-node value, and the scales it gives the kept rows
    let values = Array1::from_shape_fn(n, |i| (i % 7) as f64);
    let gate_of = |v: f64| v * 0.25 - 0.75;
    let gate = Array1::from_iter(kept.iter().map(|&i| gate_of(values[i])));
    let gated = || {
        gather_gated_rows_checked(x.view(), &kept, values.view(), |g: &mut [f64]| {
            g.iter_mut().for_each(|v| *v = gate_of(*v))
        })
    };
    let (g_out, g_scale, g_bad) = with_threads(1, gated);
    assert_eq!(
        with_threads(3, gated),
        (g_out.clone(), g_scale.clone(), None)
    );
    assert_eq!(g_bad, None);
    assert_eq!(g_scale, gate);
    assert_eq!(g_out, gather_scaled_rows(x.view(), &kept, gate.view()));
    let run = || {
        (
            gather_scaled_rows(x.view(), &kept, scale.view()),
            gather_scaled_rows_vjp_scale(x.view(), &kept, grad.view()),
            scatter_scaled_rows_plus(n, &kept, scale.view(), grad.view(), c.view(), v.view()),
            weighted_row_sum(x.view(), c.column(0)),
        )
    };
    let (out, gscale, gx, xtc) = with_threads(1, run);
    assert_eq!(
        with_threads(3, run),
        (out.clone(), gscale.clone(), gx.clone(), xtc.clone())
    );
    let mut want_gx = Array2::<f64>::zeros((n, f));
    for i in 0..n {
        for j in 0..f {
            let mut o = 0.0;
            if let Ok(p) = kept.binary_search(&i) {
                assert_eq!(out[[p, j]], scale[p] * x[[i, j]]);
                o += scale[p] * grad[[p, j]];
            }
            for t in 0..2 {
                o += c[[i, t]] * v[[t, j]];
            }
            want_gx[[i, j]] = o;
        }
    }
    assert_eq!(gx, want_gx);
    for (p, &i) in kept.iter().enumerate() {
        assert_eq!(gscale[p], grad.row(p).dot(&x.row(i)));
    }
    assert_eq!(xtc, x.t().dot(&c.column(0)));
}

/// The gates' gradient takes ndarray's `dot` bits at every width (its
/// eight partial sums, then the remainder), on `f32` values that round, over
/// more kept rows than a block, on 1 and 3 threads.
#[test]
fn gather_scaled_rows_vjp_scale_gives_ndarray_dot_bits_at_every_width() {
    use graphpool::kernels::gather::gather_scaled_rows_vjp_scale;
    let n = 3_000usize;
    let kept: Vec<usize> = (0..n).filter(|i| i % 3 != 1).collect();
    for f in [1usize, 5, 8, 15, 16, 17, 31, 64, 70] {
        let x = Array2::from_shape_fn((n, f), |(i, j)| {
            ((i * 31 + j * 17) % 101) as f32 / 7.3 - 6.1
        });
        let grad = Array2::from_shape_fn((kept.len(), f), |(j, c)| {
            ((j * 13 + c * 5) % 29) as f32 / 11.0 - 1.2
        });
        let got = with_threads(1, || {
            gather_scaled_rows_vjp_scale(x.view(), &kept, grad.view())
        });
        assert_eq!(
            with_threads(3, || gather_scaled_rows_vjp_scale(
                x.view(),
                &kept,
                grad.view()
            )),
            got
        );
        for (j, &i) in kept.iter().enumerate() {
            assert_eq!(
                got[j].to_bits(),
                grad.row(j).dot(&x.row(i)).to_bits(),
                "F = {f}, row {j}"
            );
        }
    }
}

#[test]
fn linear_score_selection_vjp_gives_the_bits_of_the_kernels_it_fuses() {
    use graphpool::kernels::gather::{
        gather_scaled_rows_vjp_scale, linear_score_selection_vjp, scatter_scaled_rows_plus_checked,
        weighted_row_sum,
    };
    // f32 values that round (so a different order of operations would show),
    // over three chunks of nodes, with score gradients of +0 and -0
    let (n, f) = (10_000usize, 5usize);
    let x = Array2::from_shape_fn((n, f), |(i, j)| {
        ((i * 31 + j * 17) % 101) as f32 / 7.3 - 6.1
    });
    let kept: Vec<usize> = (0..n).filter(|i| i % 5 != 2 && i % 7 != 0).collect();
    let k = kept.len();
    let gate = Array1::from_shape_fn(k, |j| ((j * 13) % 29) as f32 / 11.0 - 1.2);
    let w = Array1::from_shape_fn(f, |j| j as f32 / 3.0 - 0.7);
    let score_grad = |j: usize, g: f32| match j % 11 {
        0 => 0.0,
        1 => -0.0 * g,
        _ => g * (1.0 - gate[j] * gate[j]),
    };
    let composed = |grad: &Array2<f32>| {
        let ggate = gather_scaled_rows_vjp_scale(x.view(), &kept, grad.view());
        let mut gy = Array1::<f32>::zeros(n);
        for (j, &node) in kept.iter().enumerate() {
            gy[node] = score_grad(j, ggate[j]);
        }
        let (gx, bad) = scatter_scaled_rows_plus_checked(
            n,
            &kept,
            gate.view(),
            grad.view(),
            gy.view().insert_axis(ndarray::Axis(1)),
            w.view().insert_axis(ndarray::Axis(0)),
        );
        (gx, bad, weighted_row_sum(x.view(), gy.view()))
    };
    let fused = |grad: &Array2<f32>| {
        linear_score_selection_vjp(
            x.view(),
            &kept,
            gate.view(),
            grad.view(),
            w.view(),
            score_grad,
        )
    };
    let bits = |(gx, bad, gw): (Array2<f32>, Option<usize>, Array1<f32>)| {
        let b = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        (b(gx.as_slice().unwrap()), bad, b(gw.as_slice().unwrap()))
    };
    let mut grad =
        Array2::from_shape_fn((k, f), |(j, c)| ((j * 7 + c * 3) % 23) as f32 / 9.7 - 1.1);
    let want = bits(with_threads(1, || composed(&grad)));
    assert_eq!(want.1, None);
    assert!(want.2.iter().any(|&b| b != 0));
    for threads in [1, 2, 3] {
        assert_eq!(bits(with_threads(threads, || fused(&grad))), want);
    }
    // an overflow in the third chunk is reported at the same flat index
    grad[[k - 3, 1]] = f32::MAX;
    grad[[k - 2, 4]] = f32::INFINITY;
    let want = bits(composed(&grad));
    assert!(want.1.is_some());
    assert_eq!(bits(with_threads(2, || fused(&grad))), want);
}

/// `linear_top_k_rows` (scores, selection, gates and gathered rows in one
/// pass per run of small graphs) against the separate passes it fuses:
/// the scores of `nn::matmul` with one column, `segment_top_k` of them,
/// `gather_gated_rows_checked` with the same gate, bit for bit, in `f32`
/// and `f64`, on 1 and 3 threads. The graphs straddle the widths ranked by
/// counting (16, 32, 64) and the selection beyond (up to `CHUNK` nodes),
/// with empty graphs and many tied scores (rows drawn from few patterns);
/// a gate that doubles makes some rows overflow, and the first
/// non-finite entry must be the separate gather's. Rows of 6 and of 300
/// features, so that runs of small graphs close at [`CHUNK`] nodes and at
/// `FUSED_RUN_BYTES` of rows. A batch with a graph
/// above `CHUNK` nodes, or without features, is left to the separate
/// passes (`None`); a non-finite score is `check_scores`' error.
#[test]
fn fused_linear_top_k_gives_the_bits_of_the_separate_passes() {
    // returns how many cases had an overflowing row
    fn check<T: graphpool::Scalar>(scale: f64, f: usize) -> usize {
        let mut overflows = 0;
        use graphpool::kernels::gather::gather_gated_rows_checked;
        use graphpool::kernels::sort::{check_scores, linear_top_k_rows, segment_top_k};
        use graphpool::nn::{matmul, Activation};
        let sizes = [
            0usize, 1, 2, 7, 30, 0, 50, 3, 16, 17, 32, 33, 64, 65, 100, 4_096, 12, 900,
        ];
        let seg = Segments::from_sizes(&sizes);
        let n = seg.num_nodes();
        let x = Array2::from_shape_fn((n, f), |(i, j)| {
            T::c((((i * 7919) % 5 + j * 3) % 7) as f64 * scale - 2.0)
        });
        let p: Vec<T> = (0..f).map(|j| T::c(0.5 - 0.25 * j as f64)).collect();
        let pc = Array2::from_shape_vec((f, 1), p.clone()).unwrap();
        type Gate<T> = fn(&mut [T]);
        let gates: [(&str, Gate<T>); 2] = [
            ("tanh", |g: &mut [T]| Activation::Tanh.apply_in_place(g)),
            ("double", |g: &mut [T]| {
                g.iter_mut().for_each(|v| *v *= T::c(2.0))
            }),
        ];
        for frac in [0.0, 0.1, 0.5, 1.0] {
            let count = |m: usize| ((m as f64) * frac).ceil() as usize;
            for (name, gate) in gates {
                let y = matmul(x.view(), pc.view(), None).remove_axis(ndarray::Axis(1));
                let kept = segment_top_k(y.view(), &seg, count).unwrap();
                let (rows, gate_values, bad) =
                    gather_gated_rows_checked(x.view(), &kept, y.view(), gate);
                overflows += usize::from(bad.is_some());
                for t in [1, 3] {
                    let got =
                        with_threads(t, || linear_top_k_rows(x.view(), &p, &seg, count, gate))
                            .unwrap()
                            .expect("no graph above CHUNK");
                    let what = format!("{name}, fraction {frac}, {t} threads");
                    assert_eq!(got.scores, y, "{what}");
                    assert_eq!(got.kept, kept, "{what}");
                    assert_eq!(got.gate, gate_values, "{what}");
                    assert_eq!(got.rows, rows, "{what}");
                    assert_eq!(got.first_non_finite_row_entry, bad, "{what}");
                }
            }
        }
        // the separate passes' cases
        let tanh = |g: &mut [T]| Activation::Tanh.apply_in_place(g);
        let big = Segments::from_sizes(&[3, 4_097]);
        let xb = Array2::from_elem((big.num_nodes(), f), T::one());
        assert!(linear_top_k_rows(xb.view(), &p, &big, |m| m / 2, tanh)
            .unwrap()
            .is_none());
        let x0 = Array2::<T>::zeros((n, 0));
        assert!(linear_top_k_rows(x0.view(), &[], &seg, |m| m / 2, tanh)
            .unwrap()
            .is_none());
        // a score that overflows, in a later graph
        let mut xo = x.clone();
        xo[[n - 10, 0]] = T::max_value();
        xo[[n - 10, 1]] = T::max_value();
        let p_up: Vec<T> = vec![T::c(4.0); f];
        let pu = Array2::from_shape_vec((f, 1), p_up.clone()).unwrap();
        let y = matmul(xo.view(), pu.view(), None).remove_axis(ndarray::Axis(1));
        let want = check_scores(y.view()).unwrap_err();
        let got = linear_top_k_rows(xo.view(), &p_up, &seg, |m| m / 2, tanh).unwrap_err();
        assert_eq!(got.to_string(), want.to_string());
        assert!(matches!(got, PoolError::NonFiniteScore { .. }));
        overflows
    }
    // F = 6: runs of up to CHUNK nodes; F = 300: runs closed at
    // FUSED_RUN_BYTES of rows (109 nodes in f64, 218 in f32), so graphs of
    // 900 and 4,096 nodes make runs of their own and small graphs share runs
    // cut at other places
    // (the large scale: scores still finite in f32, but the doubling gate
    // times a row overflows some rows)
    for (f, large) in [(6, 0.5e37), (300, 1e20)] {
        assert_eq!(check::<f64>(1.0, f), 0);
        assert_eq!(check::<f32>(1.0, f), 0);
        assert!(check::<f32>(large, f) > 0);
    }
}

#[test]
fn gcn_scored_top_k_gives_the_bits_of_the_separate_passes() {
    // SAGPool's fused pass (`scored_top_k_rows` with `gcn_scores_of_run`)
    // against the passes it replaces: `matmul` with one column for X w,
    // `gcn_spmv_with` for the scores, `segment_top_k` and
    // `gather_gated_rows_checked`, compared with `==`
    fn check<T: graphpool::Scalar>() {
        use graphpool::kernels::gather::gather_gated_rows_checked;
        use graphpool::kernels::sort::{check_scores, scored_top_k_rows, segment_top_k};
        use graphpool::kernels::sparse::{gcn_deg_inv_sqrt, gcn_scores_of_run, gcn_spmv_with};
        use graphpool::nn::{matmul, Activation};
        // graphs straddling every width the selection is done at, with
        // empty, single-node and edgeless ones
        let sizes = [
            0usize, 1, 2, 7, 30, 0, 50, 3, 16, 17, 32, 33, 64, 65, 100, 4_096, 12, 900,
        ];
        let seg = Segments::from_sizes(&sizes);
        let (n, f) = (seg.num_nodes(), 5);
        let mut tri = TriMat::new((n, n));
        for (g, r) in seg.ranges().enumerate() {
            let m = r.len();
            if m < 2 || g == 3 {
                continue; // graph 3 (7 nodes) is edgeless
            }
            for i in 0..m {
                for step in [1, 3, 7] {
                    let j = (i * 5 + step) % m;
                    if i != j || step == 7 {
                        // a few self-loops too (step 7 with m = 7)
                        tri.add_triplet(r.start + i, r.start + j, T::c(0.5 + ((i + j) % 4) as f64));
                    }
                }
            }
        }
        let a: CsMat<T> = tri.to_csr();
        let x = Array2::from_shape_fn((n, f), |(i, j)| {
            T::c((((i * 7919) % 5 + j * 3) % 7) as f64 - 2.5)
        });
        let w: Vec<T> = (0..f).map(|j| T::c(0.75 - 0.3 * j as f64)).collect();
        let wc = Array2::from_shape_vec((f, 1), w.clone()).unwrap();
        let u = gcn_deg_inv_sqrt(a.view());
        let us = u.as_slice().unwrap();
        let xs = x.as_slice().unwrap();
        let score = |nodes, y: &mut [T], v: &mut [T]| {
            gcn_scores_of_run(a.view(), us, xs, f, &w, nodes, y, v)
        };
        let tanh = |g: &mut [T]| Activation::Tanh.apply_in_place(g);
        let xw = matmul(x.view(), wc.view(), None).remove_axis(ndarray::Axis(1));
        let y = gcn_spmv_with(a.view(), u.view(), xw.view());
        for frac in [0.0, 0.1, 0.5, 1.0] {
            let count = |m: usize| ((m as f64) * frac).ceil() as usize;
            let kept = segment_top_k(y.view(), &seg, count).unwrap();
            let (rows, gate, bad) = gather_gated_rows_checked(x.view(), &kept, y.view(), tanh);
            for t in [1, 2, 5] {
                let got = with_threads(t, || {
                    scored_top_k_rows(x.view(), &seg, true, score, count, tanh)
                })
                .unwrap()
                .expect("no graph above CHUNK");
                let what = format!("fraction {frac}, {t} threads");
                assert_eq!(got.node_values, xw, "{what}");
                assert_eq!(got.scores, y, "{what}");
                assert_eq!(got.kept, kept, "{what}");
                assert_eq!(got.gate, gate, "{what}");
                assert_eq!(got.rows, rows, "{what}");
                assert_eq!(got.first_non_finite_row_entry, bad, "{what}");
            }
        }
        // a score that overflows (a huge row in the 900-node graph): the
        // error of `check_scores` on the separate passes' scores
        let mut xo = x.clone();
        xo[[n - 10, 0]] = T::max_value();
        xo[[n - 10, 1]] = T::max_value();
        let xos = xo.as_slice().unwrap();
        let big = |nodes, y: &mut [T], v: &mut [T]| {
            gcn_scores_of_run(a.view(), us, xos, f, &w, nodes, y, v)
        };
        let xw = matmul(xo.view(), wc.view(), None).remove_axis(ndarray::Axis(1));
        let want = check_scores(gcn_spmv_with(a.view(), u.view(), xw.view()).view()).unwrap_err();
        let got = scored_top_k_rows(xo.view(), &seg, true, big, |m| m / 2, tanh).unwrap_err();
        assert_eq!(got.to_string(), want.to_string());
        assert!(matches!(got, PoolError::NonFiniteScore { .. }));
    }
    check::<f64>();
    check::<f32>();
}
