//! Differential test: the sparse per-graph clustering pools against a
//! straightforward dense computation on each graph alone, written the way
//! the references write it (dense $n_g \times n_g$ adjacency, dense degree
//! matrix, element-wise square root of $S^\top S$, all-pairs total
//! variation, full sort for the quantile). The oracle lives here only.

use graphpool::framework::{Layer, Pooled, Selection};
use graphpool::layers::{
    AsymCheegerCutPool, DMoNPool, DMoNVariant, JustBalancePool, MinCutPool, MinCutVariant,
};
use graphpool::nn::{Activation, Params};
use graphpool::proptest::{batches, BatchShape};
use graphpool::DisjointBatch;
use ndarray::{s, Array1, Array2, Axis};
use proptest::prelude::*;
use std::collections::BTreeMap;

const K: usize = 3;

#[derive(Clone, Copy, Debug)]
enum Which {
    MinCut(f64),
    DMoNSpektral(f64),
    DMoNPyg,
    JustBalance(bool),
    AsymCheeger(f64, f64),
}

struct Oracle {
    x: Array2<f64>,
    a_blocks: Vec<Array2<f64>>,
    s: Array2<f64>,
    losses: BTreeMap<String, f64>,
}

fn mlp(params: &Params<f64>, hidden: usize, act: Activation, x: &Array2<f64>) -> Array2<f64> {
    let mut h = x.clone();
    for j in 0..=hidden {
        let w = params.matrix(&format!("mlp.{j}.kernel")).unwrap();
        let b = params.vector(&format!("mlp.{j}.bias")).unwrap();
        h = h.dot(&w) + b;
        if j < hidden {
            h.mapv_inplace(|v| act.apply(v));
        }
    }
    // softmax
    for mut r in h.rows_mut() {
        let m = r.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        r.mapv_inplace(|v| (v - m).exp());
        let z = r.sum();
        r.mapv_inplace(|v| v / z);
    }
    h
}

fn dense_graph(b: &DisjointBatch<f64>, g: usize) -> (Array2<f64>, Array2<f64>) {
    let (x, a) = b.graph(g);
    let mut d = Array2::zeros((a.rows(), a.cols()));
    for (&v, (r, c)) in a.iter() {
        d[[r, c]] += v;
    }
    (x, d)
}

fn frob(m: &Array2<f64>) -> f64 {
    m.iter().map(|v| v * v).sum::<f64>().sqrt()
}

fn ortho(s: &Array2<f64>) -> f64 {
    let ss = s.t().dot(s);
    let n = frob(&ss);
    if n == 0.0 {
        return 0.0;
    }
    let i = Array2::<f64>::eye(K) / (K as f64).sqrt();
    frob(&(ss / n - i))
}

fn normalize(c: &Array2<f64>, eps: f64) -> Array2<f64> {
    let mut z = c.clone();
    for i in 0..K {
        z[[i, i]] = 0.0;
    }
    let d: Array1<f64> = z.sum_axis(Axis(1)).mapv(|v| v.max(0.0).sqrt() + eps);
    Array2::from_shape_fn((K, K), |(i, j)| z[[i, j]] / d[i] / d[j])
}

fn oracle(
    which: Which,
    params: &Params<f64>,
    hidden: usize,
    act: Activation,
    b: &DisjointBatch<f64>,
) -> Oracle {
    let s_all = mlp(params, hidden, act, &b.x().to_owned());
    let mut xs = Vec::new();
    let mut a_blocks = Vec::new();
    let mut per_graph: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut push = |name: &str, v: f64| per_graph.entry(name.to_string()).or_default().push(v);
    for g in 0..b.num_graphs() {
        let (x, a) = dense_graph(b, g);
        let n = x.nrows();
        let s = s_all.slice(s![b.segments().range(g), ..]).to_owned();
        let xp = s.t().dot(&x);
        let c = s.t().dot(&a).dot(&s);
        let deg = a.sum_axis(Axis(1));
        let n_edges = a.iter().filter(|&&v| v != 0.0).count() as f64;
        let trace = (0..K).map(|i| c[[i, i]]).sum::<f64>();
        let collapse = |s: &Array2<f64>| {
            if n == 0 {
                0.0
            } else {
                let sizes = s.sum_axis(Axis(0));
                sizes.dot(&sizes).sqrt() / n as f64 * (K as f64).sqrt() - 1.0
            }
        };
        let modularity = |m: f64| {
            if m == 0.0 {
                return 0.0;
            }
            let d = deg.view().insert_axis(Axis(1));
            let left = s.t().dot(&d);
            let right = d.t().dot(&s);
            let normalizer = left.dot(&right) / 2.0 / m;
            let dc = &c - &normalizer;
            -(0..K).map(|i| dc[[i, i]]).sum::<f64>() / 2.0 / m
        };
        match which {
            Which::MinCut(eps) => {
                let dm = Array2::from_diag(&deg);
                let den_m = s.t().dot(&dm).dot(&s);
                let den = (0..K).map(|i| den_m[[i, i]]).sum::<f64>();
                push("mincut", if den == 0.0 { 0.0 } else { -trace / den });
                push("ortho", ortho(&s));
                xs.push(xp);
                a_blocks.push(normalize(&c, eps));
            }
            Which::DMoNSpektral(reg) => {
                push("modularity", modularity(n_edges));
                push("collapse", reg * collapse(&s));
                xs.push(xp);
                a_blocks.push(c);
            }
            Which::DMoNPyg => {
                push("spectral", modularity(deg.sum() / 2.0));
                push("ortho", ortho(&s));
                push("cluster", collapse(&s));
                xs.push(xp.mapv(|v| Activation::Selu.apply(v)));
                a_blocks.push(normalize(&c, 1e-15));
            }
            Which::JustBalance(normalized) => {
                let ss = s.t().dot(&s).mapv(f64::sqrt);
                let mut l = -(0..K).map(|i| ss[[i, i]]).sum::<f64>();
                if normalized && n > 0 {
                    l /= ((n * K) as f64).sqrt();
                }
                push("balance", l);
                xs.push(xp);
                a_blocks.push(normalize(&c, 1e-7));
            }
            Which::AsymCheeger(tv_c, bal_c) => {
                // all pairs, as Spektral's dense path
                let mut tv = 0.0;
                for i in 0..n {
                    for j in 0..n {
                        let l1: f64 = (0..K).map(|k| (s[[i, k]] - s[[j, k]]).abs()).sum();
                        tv += a[[i, j]] * l1;
                    }
                }
                push(
                    "total_variation",
                    if n_edges == 0.0 {
                        0.0
                    } else {
                        tv_c * tv / (2.0 * n_edges)
                    },
                );
                let bal = if n == 0 {
                    0.0
                } else {
                    let idx = n / K + 1;
                    let mut total = 0.0;
                    for k in 0..K {
                        let mut col: Vec<f64> = s.column(k).to_vec();
                        col.sort_by(|a, b| b.partial_cmp(a).unwrap());
                        let q = col[idx.min(n) - 1];
                        for &v in s.column(k) {
                            let d = v - q;
                            total += if d >= 0.0 { (K - 1) as f64 * d } else { -d };
                        }
                    }
                    let nk = (n * (K - 1)) as f64;
                    (nk - total) / nk
                };
                push("balance", bal_c * bal);
                xs.push(xp);
                a_blocks.push(c);
            }
        }
    }
    let f = b.num_features();
    let x = if xs.is_empty() {
        Array2::zeros((0, f))
    } else {
        ndarray::concatenate(Axis(0), &xs.iter().map(|x| x.view()).collect::<Vec<_>>()).unwrap()
    };
    let losses = per_graph
        .into_iter()
        .map(|(k, v)| (k, v.iter().sum::<f64>() / v.len().max(1) as f64))
        .collect();
    Oracle {
        x,
        a_blocks,
        s: s_all,
        losses,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

fn compare(name: &str, got: &Pooled<f64>, want: &Oracle) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.batch.x().dim(), want.x.dim(), "{} x' shape", name);
    for (u, v) in got.batch.x().iter().zip(want.x.iter()) {
        prop_assert!(close(*u, *v), "{name} x': {u} vs {v}");
    }
    let mut a = Array2::zeros((got.batch.num_nodes(), got.batch.num_nodes()));
    for (&v, (r, c)) in got.batch.a().iter() {
        a[[r, c]] += v;
    }
    for (g, blk) in want.a_blocks.iter().enumerate() {
        let mine = a.slice(s![g * K..(g + 1) * K, g * K..(g + 1) * K]);
        for (u, v) in mine.iter().zip(blk.iter()) {
            prop_assert!(close(*u, *v), "{name} a' of graph {g}: {u} vs {v}");
        }
    }
    // nothing outside the diagonal blocks
    let outside: f64 = a
        .indexed_iter()
        .filter(|((r, c), _)| r / K != c / K)
        .map(|(_, v)| v.abs())
        .sum();
    prop_assert_eq!(outside, 0.0);
    let s = match &got.selection {
        Some(Selection::Dense(d)) => &d.s,
        other => panic!("{name}: the pools under test return S, got {other:?}"),
    };
    for (u, v) in s.iter().zip(want.s.iter()) {
        prop_assert!(close(*u, *v), "{name} S: {u} vs {v}");
    }
    prop_assert_eq!(
        got.losses.keys().collect::<Vec<_>>(),
        want.losses.keys().collect::<Vec<_>>()
    );
    for (l, v) in &want.losses {
        prop_assert!(
            close(got.losses[l], *v),
            "{name} loss {l}: {} vs oracle {v}",
            got.losses[l]
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn sparse_per_graph_pools_equal_the_dense_reference_computation(
        b in batches(BatchShape { graphs: 1..=4, nodes: 0..=9, features: 1..=4, ..BatchShape::default() })
    ) {
        let f = b.num_features();
        let act = Activation::Relu;
        let l = MinCutPool::<f64>::new(f, K, &[5], act, 11).unwrap().with_return_selection(true);
        compare("mincut", &l.call(&b).unwrap(), &oracle(Which::MinCut(1e-7), l.params(), 1, act, &b))?;
        let l = l.with_variant(MinCutVariant::Pyg);
        compare("mincut_pyg", &l.call(&b).unwrap(), &oracle(Which::MinCut(1e-15), l.params(), 1, act, &b))?;
        let l = DMoNPool::<f64>::new(f, K, &[5], act, 0.25, 12).unwrap().with_return_selection(true);
        compare("dmon", &l.call(&b).unwrap(), &oracle(Which::DMoNSpektral(0.25), l.params(), 1, act, &b))?;
        let l = DMoNPool::<f64>::new(f, K, &[5], Activation::Linear, 0.25, 13).unwrap().with_return_selection(true).with_variant(DMoNVariant::Pyg);
        compare("dmon_pyg", &l.call(&b).unwrap(), &oracle(Which::DMoNPyg, l.params(), 1, Activation::Linear, &b))?;
        for norm in [false, true] {
            let l = JustBalancePool::<f64>::new(f, K, &[], act, norm, 14).unwrap().with_return_selection(true);
            compare("just_balance", &l.call(&b).unwrap(), &oracle(Which::JustBalance(norm), l.params(), 0, act, &b))?;
        }
        let l = AsymCheegerCutPool::<f64>::new(f, K, &[5], act, 0.6, 1.7, 15).unwrap().with_return_selection(true);
        compare("asym_cheeger", &l.call(&b).unwrap(), &oracle(Which::AsymCheeger(0.6, 1.7), l.params(), 1, act, &b))?;
    }
}
