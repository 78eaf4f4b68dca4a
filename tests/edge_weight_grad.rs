//! Edge-weight gradients as an opt-out (`DisjointBatch::with_edge_weight_grad`):
//! with them off, every layer's backward pass returns no edge gradient and
//! gradients of `x` and of the parameters bit-identical to those with them on;
//! a backward pass refuses a batch whose setting differs from the forward
//! pass's; the setting survives every derived batch; the gradient checker
//! skips the edge coordinates.

mod common;

use common::{all_layers, with_threads, Out};
use graphpool::framework::{Gradients, Layer};
use graphpool::grad::{check_layer_gradients, GradCheckOptions};
use graphpool::layers::{DiffPool, MinCutPool, SAGPool};
use graphpool::nn::Activation;
use graphpool::proptest::{batch_and_permutation, batches, BatchShape};
use graphpool::{DisjointBatch, PoolError, Scalar};
use proptest::prelude::*;

const F: usize = 3;
const K: usize = 2;

/// The global pools whose backward pass reads neither the adjacency nor a
/// saved signature of the batch (their cache is the output itself).
const SIGNATURELESS: [&str; 3] = ["GlobalSumPool", "GlobalAvgPool", "GlobalMaxPool"];

fn shape() -> BatchShape {
    BatchShape {
        graphs: 1..=4,
        nodes: 0..=7,
        features: F..=F,
        edge_probability: 0.5,
        weighted: true,
        directed: 0.3,
    }
}

fn bits<T: Scalar>(v: impl IntoIterator<Item = T>) -> Vec<u64> {
    v.into_iter()
        .map(|x| x.to_f64().unwrap_or(f64::NAN).to_bits())
        .collect()
}

fn param_bits<T: Scalar>(g: &Gradients<T>) -> Vec<(String, Vec<u64>)> {
    g.params
        .iter()
        .map(|(n, p)| (n.to_string(), bits(p.iter().copied())))
        .collect()
}

/// Runs every layer with edge-weight gradients on and off on `b` and checks
/// the property; returns how many layers ran backward.
fn check_on_off<T: Scalar>(b: &DisjointBatch<T>) -> Result<usize, TestCaseError> {
    let off = b.clone().with_edge_weight_grad(false);
    let mut ran = 0;
    for (name, run) in all_layers::<T>(F, K) {
        let (on_res, off_res) = (run.both(b), run.both(&off));
        let ((y_on, g_on), (y_off, g_off)) = match (on_res, off_res) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(a), Err(b)) => {
                prop_assert_eq!(a.to_string(), b.to_string(), "{}: errors differ", name);
                continue;
            }
            (a, b) => {
                return Err(TestCaseError::fail(format!(
                    "{name}: on {:?} but off {:?}",
                    a.map(|_| ()),
                    b.map(|_| ())
                )))
            }
        };
        prop_assert!(y_on == y_off, "{}: outputs differ", name);
        let edges_on = g_on.edge_weights.as_ref().map(|e| e.len());
        prop_assert_eq!(edges_on, Some(b.a().nnz()), "{}: edge gradient on", name);
        prop_assert!(g_off.edge_weights.is_none(), "{}: edge gradient off", name);
        prop_assert_eq!(
            bits(g_on.x.iter().copied()),
            bits(g_off.x.iter().copied()),
            "{}: x gradients differ",
            name
        );
        prop_assert_eq!(
            param_bits(&g_on),
            param_bits(&g_off),
            "{}: parameter gradients differ",
            name
        );
        if let Out::Pooled(p) = &y_off {
            prop_assert!(
                p.batch.edge_weight_grad(),
                "{}: the pooled batch has edge-weight gradients on",
                name
            );
        }
        ran += 1;
    }
    Ok(ran)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// For every layer on random batches (empty and edgeless graphs
    /// included), in `f64` and `f32`, on 1 and 2 threads.
    #[test]
    fn edge_weights_off_gives_bit_identical_x_and_param_gradients_and_no_edge_gradient(
        b in batches(shape()),
    ) {
        let ran = with_threads(1, || check_on_off(&b))?;
        prop_assert!(ran > 0);
        with_threads(2, || check_on_off(&b))?;
        let b32 = DisjointBatch::new(
            b.x().mapv(|v| v as f32),
            b.a().map(|&v| v as f32),
            b.segments().clone(),
        )
        .unwrap();
        with_threads(2, || check_on_off(&b32))?;
    }

    /// A forward pass with one setting and a backward pass with the other
    /// is a `ShapeMismatch` (both ways) for every layer that keeps the
    /// batch's signature; the three global pools that keep none follow the
    /// backward batch's setting.
    #[test]
    fn backward_refuses_a_batch_whose_edge_weight_grad_setting_differs_from_the_forward_pass(
        b in batches(shape()),
    ) {
        for on in [true, false] {
            let fwd = b.clone().with_edge_weight_grad(on);
            let bwd = b.clone().with_edge_weight_grad(!on);
            for (name, run) in all_layers::<f64>(F, K) {
                if run.both(&fwd).is_err() {
                    continue;
                }
                let res = run.forward_then_backward_on(&fwd, &bwd);
                if SIGNATURELESS.contains(&name) {
                    let g = res.map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
                    prop_assert_eq!(g.edge_weights.is_some(), !on, "{}", name);
                } else {
                    match res {
                        Err(PoolError::ShapeMismatch { what, expected, got }) => {
                            prop_assert!(what.contains("backward"), "{}: {}", name, what);
                            prop_assert!(
                                expected.contains("edge-weight gradients")
                                    && got.contains("edge-weight gradients"),
                                "{}: {} / {}",
                                name,
                                expected,
                                got
                            );
                        }
                        other => {
                            return Err(TestCaseError::fail(format!(
                                "{name}: a mismatched setting gave {:?}",
                                other.map(|_| ())
                            )))
                        }
                    }
                }
            }
        }
    }

    /// Every derived batch keeps the setting; constructors turn it on.
    #[test]
    fn derived_batches_keep_the_edge_weight_grad_setting_and_constructors_turn_it_on(
        (b, perm) in batch_and_permutation(shape()),
    ) {
        prop_assert!(b.edge_weight_grad());
        for on in [false, true] {
            let s = b.clone().with_edge_weight_grad(on);
            prop_assert_eq!(s.edge_weight_grad(), on);
            prop_assert_eq!(s.clone().edge_weight_grad(), on);
            prop_assert_eq!(s.with_x(s.x().mapv(|v| v * 2.0)).unwrap().edge_weight_grad(), on);
            let w: Vec<f64> = s.a().data().iter().map(|v| v + 1.0).collect();
            prop_assert_eq!(s.with_edge_weights(w).unwrap().edge_weight_grad(), on);
            prop_assert_eq!(s.permute_nodes(&perm).unwrap().edge_weight_grad(), on);
            let all: Vec<usize> = (0..s.num_graphs()).rev().collect();
            prop_assert_eq!(s.select_graphs(&all).unwrap().edge_weight_grad(), on);
            prop_assert_eq!(s.select_graphs(&[]).unwrap().edge_weight_grad(), on);
            // constructors
            let (x, a, seg) = s.clone().into_parts();
            prop_assert!(DisjointBatch::new(x, a, seg).unwrap().edge_weight_grad());
            prop_assert!(DisjointBatch::stack(&s.split()).unwrap().edge_weight_grad());
            // Gradients::zeros follows the setting
            let z = Gradients::zeros(&s, &graphpool::nn::Params::new());
            prop_assert_eq!(z.edge_weights.map(|e| e.len()), on.then(|| s.a().nnz()));
        }
    }
}

/// With edge-weight gradients off, `check_layer_gradients` compares every
/// feature and parameter and no edge weight (and still passes); with them
/// on, it compares the edges too.
#[test]
fn gradient_check_skips_edge_coordinates_when_edge_weight_gradients_are_off() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let shape = BatchShape {
        graphs: 2..=2,
        nodes: 3..=5,
        ..shape()
    };
    let b = batches(shape).new_tree(&mut runner).unwrap().current();
    assert!(b.a().nnz() > 0);
    fn check<L: Layer<f64> + Clone>(name: &str, l: &L, b: &DisjointBatch<f64>) {
        let params: usize = l.params().iter().map(|(_, p)| p.len()).sum();
        let features = b.x().len();
        let opts = GradCheckOptions::default();
        let on = check_layer_gradients(l, b, opts).unwrap();
        assert!(on.passed(), "{name} on: {on}");
        assert_eq!(on.checked, features + b.a().nnz() + params, "{name}");
        let off_batch = b.clone().with_edge_weight_grad(false);
        let off = check_layer_gradients(l, &off_batch, opts).unwrap();
        assert!(off.passed(), "{name} off: {off}");
        assert_eq!(off.checked, features + params, "{name}");
    }
    let act = Activation::Tanh;
    check(
        "MinCutPool",
        &MinCutPool::new(F, K, &[4], act, 1).unwrap(),
        &b,
    );
    check(
        "DiffPool",
        &DiffPool::new(F, K, Some(3), Activation::Relu, 2).unwrap(),
        &b,
    );
    check("SAGPool", &SAGPool::new(F, 0.5, 3).unwrap(), &b);
}
