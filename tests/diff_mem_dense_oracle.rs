//! DiffPool and MemPooling against a straightforward dense computation on
//! each graph alone (dense $n \times n$ adjacency, the formulas as written in
//! the references), kept here only as a test oracle: the library itself never
//! forms an $N \times N$ matrix.

use graphpool::framework::{Layer, Pooled, Selection};
use graphpool::layers::{DiffPool, DiffPoolVariant, MemAdjacency, MemPooling};
use graphpool::nn::Activation;
use graphpool::proptest::{batches, BatchShape};
use graphpool::DisjointBatch;
use ndarray::{s, Array2, Axis};
use proptest::prelude::*;

fn dense(a: &sprs::CsMat<f64>) -> Array2<f64> {
    let mut d = Array2::zeros((a.rows(), a.cols()));
    for (&v, (r, c)) in a.iter() {
        d[[r, c]] += v;
    }
    d
}

fn softmax_rows(z: &Array2<f64>) -> Array2<f64> {
    let mut s = z.clone();
    for mut row in s.rows_mut() {
        let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        row.mapv_inplace(|v| (v - m).exp());
        let t = row.sum();
        row.mapv_inplace(|v| v / t);
    }
    s
}

fn frobenius(m: &Array2<f64>) -> f64 {
    m.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// What the oracle computes for one graph: X', A', S and the losses.
struct Alone {
    x: Array2<f64>,
    a: Array2<f64>,
    s: Array2<f64>,
    losses: Vec<(&'static str, f64)>,
}

/// Spektral's DiffPool on one graph, dense (PyG's losses with `pyg`).
fn diffpool_dense(
    pool: &DiffPool<f64>,
    act: Activation,
    x: &Array2<f64>,
    a: &Array2<f64>,
    pyg: bool,
) -> Alone {
    let n = x.nrows();
    let w_emb = pool.params().matrix("kernel_emb").unwrap();
    let w_pool = pool.params().matrix("kernel_pool").unwrap();
    let a_hat = a + &Array2::<f64>::eye(n);
    let d: Vec<f64> = a_hat
        .sum_axis(Axis(1))
        .iter()
        .map(|&v| if v > 0.0 { 1.0 / v.sqrt() } else { 0.0 })
        .collect();
    let filter = Array2::from_shape_fn((n, n), |(i, j)| d[i] * a_hat[[i, j]] * d[j]);
    let s = softmax_rows(&filter.dot(&x.dot(&w_pool)));
    let z = filter.dot(&x.dot(&w_emb)).mapv(|v| act.apply(v));
    let link = frobenius(&(a - &s.dot(&s.t())));
    let (link, eps) = if pyg {
        (if n == 0 { 0.0 } else { link / (n * n) as f64 }, 1e-15)
    } else {
        (link, 1e-7)
    };
    let entropy = if n == 0 {
        0.0
    } else {
        s.iter().map(|&v| -v * (v + eps).ln()).sum::<f64>() / n as f64
    };
    Alone {
        x: s.t().dot(&z),
        a: s.t().dot(a).dot(&s),
        s,
        losses: vec![("link_pred", link), ("entropy", entropy)],
    }
}

/// PyG's MemPooling on one graph, dense, with the power-law kernel as PyG writes it.
fn mem_dense(pool: &MemPooling<f64>, x: &Array2<f64>, a: &Array2<f64>) -> Alone {
    let (n, f) = x.dim();
    let keys = pool.params().tensor3("keys").unwrap();
    let conv = pool.params().vector("conv.weight").unwrap();
    let lin = pool.params().matrix("lin.kernel").unwrap();
    let (h, k, _) = keys.dim();
    let tau = pool.tau();
    let mut logits = Array2::<f64>::zeros((n, k));
    for head in 0..h {
        let mut t = Array2::<f64>::zeros((n, k));
        for i in 0..n {
            for j in 0..k {
                let d: f64 = (0..f)
                    .map(|c| (x[[i, c]] - keys[[head, j, c]]).powi(2))
                    .sum();
                t[[i, j]] = (1.0 + d / tau).powf(-(tau + 1.0) / 2.0);
            }
        }
        let norm = t.sum_axis(Axis(1)).insert_axis(Axis(1));
        logits = logits + (t / norm) * conv[head];
    }
    let s = softmax_rows(&logits);
    // PyG's kl_loss on one graph
    let colsum = s.sum_axis(Axis(0));
    let mut p = &s * &s / &colsum;
    let rows = p.sum_axis(Axis(1)).insert_axis(Axis(1));
    p = p / rows;
    let kl: f64 = p
        .iter()
        .zip(s.iter())
        .map(|(&p, &s)| {
            let (p, s) = (p.max(1e-15), s.max(1e-15));
            p * (p.ln() - s.ln())
        })
        .sum();
    Alone {
        x: s.t().dot(x).dot(&lin),
        a: s.t().dot(a).dot(&s),
        s,
        losses: vec![("kl", if n == 0 { 0.0 } else { kl })],
    }
}

fn s_of(p: &Pooled<f64>) -> &Array2<f64> {
    match p.selection.as_ref().expect("the pools under test return S") {
        Selection::Dense(d) => &d.s,
        other => panic!("expected a dense assignment, got {other:?}"),
    }
}

fn assert_close(
    what: &str,
    got: &ndarray::ArrayRef2<f64>,
    want: &ndarray::ArrayRef2<f64>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.shape(), want.shape(), "{}", what);
    for (g, w) in got.iter().zip(want.iter()) {
        prop_assert!(
            (g - w).abs() <= 1e-10 * (1.0 + w.abs()),
            "{what}: {g} vs {w}\n{got}\nvs\n{want}"
        );
    }
    Ok(())
}

/// Compares a pooled batch with the oracle on every graph alone; `with_a`
/// says whether the pool returns S^T A S.
fn check(
    b: &DisjointBatch<f64>,
    y: &Pooled<f64>,
    k: usize,
    with_a: bool,
    oracle: impl Fn(&Array2<f64>, &Array2<f64>) -> Alone,
) -> Result<(), TestCaseError> {
    let ad = dense(y.batch.a());
    let mut sums = std::collections::BTreeMap::<&str, f64>::new();
    for g in 0..b.num_graphs() {
        let (x, a) = b.graph(g);
        let want = oracle(&x, &dense(&a));
        let r = g * k..(g + 1) * k;
        assert_close(
            "x'",
            &y.batch.x().slice(s![r.clone(), ..]).to_owned(),
            &want.x,
        )?;
        if with_a {
            assert_close(
                "a'",
                &ad.slice(s![r.clone(), r.clone()]).to_owned(),
                &want.a,
            )?;
        }
        assert_close(
            "S",
            &s_of(y).slice(s![b.segments().range(g), ..]).to_owned(),
            &want.s,
        )?;
        for (name, v) in want.losses {
            *sums.entry(name).or_default() += v;
        }
    }
    if !with_a {
        prop_assert_eq!(y.batch.a().nnz(), 0);
    }
    for (name, total) in sums {
        let want = total / b.num_graphs() as f64;
        let got = y.losses[name];
        prop_assert!(
            (got - want).abs() <= 1e-10 * (1.0 + want.abs()),
            "{name}: {got} vs {want}"
        );
    }
    Ok(())
}

fn shape() -> BatchShape {
    BatchShape {
        graphs: 1..=4,
        nodes: 0..=7,
        features: 1..=3,
        ..BatchShape::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn diffpool_equals_the_dense_per_graph_computation(b in batches(shape()), k in 1usize..5, pyg in any::<bool>()) {
        let f = b.num_features();
        for act in [Activation::Linear, Activation::Relu] {
            let variant = if pyg { DiffPoolVariant::Pyg } else { DiffPoolVariant::Spektral };
            let pool = DiffPool::<f64>::new(f, k, Some(3), act, k as u64).unwrap().with_variant(variant).with_return_selection(true);
            let y = pool.call(&b).unwrap();
            check(&b, &y, k, true, |x, a| diffpool_dense(&pool, act, x, a, pyg))?;
        }
    }

    #[test]
    fn mem_pooling_equals_the_dense_per_graph_computation(b in batches(shape()), k in 1usize..5, heads in 1usize..7, tau in prop_oneof![Just(1.0f64), 0.2f64..3.0]) {
        let f = b.num_features();
        let pool = MemPooling::<f64>::new(f, 2, heads, k, tau, heads as u64).unwrap().with_return_selection(true);
        let y = pool.call(&b).unwrap();
        check(&b, &y, k, false, |x, a| mem_dense(&pool, x, a))?;
        let pool = pool.with_adjacency(MemAdjacency::Coarsened);
        let y = pool.call(&b).unwrap();
        check(&b, &y, k, true, |x, a| mem_dense(&pool, x, a))?;
    }
}
