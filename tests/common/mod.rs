//! Helpers shared by the property tests.

#![allow(dead_code)]

use graphpool::framework::Layer;
use graphpool::grad::{check_layer_gradients, GradCheckOptions};
use graphpool::DisjointBatch;

/// Runs `f` on a dedicated rayon pool of `threads` threads.
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
        .install(f)
}

/// A forward pass and the backward pass of an output gradient.
pub type ForwardBackward = (
    graphpool::framework::Pooled<f64>,
    graphpool::framework::Gradients<f64>,
);

/// Asserts that a batch pooled run by run (`runs`) gives the whole batch's
/// (`whole`) outputs and gradients of X and of the edge weights bit for
/// bit, and its parameter gradients (sums over the nodes, added run by
/// run) to a relative `1e-12`.
pub fn assert_runs_match_whole(name: &str, runs: &ForwardBackward, whole: &ForwardBackward) {
    assert_eq!(runs.0, whole.0, "{name}: outputs");
    assert_eq!(runs.1.x, whole.1.x, "{name}: gradient of x");
    assert_eq!(
        runs.1.edge_weights, whole.1.edge_weights,
        "{name}: edge gradients"
    );
    for ((p, v), (_, w)) in runs.1.params.iter().zip(whole.1.params.iter()) {
        for (a, c) in v.iter().zip(w.iter()) {
            let tol = 1e-12 * (1.0 + a.abs().max(c.abs()));
            assert!(
                (a - c).abs() <= tol,
                "{name}: gradient of {p}: {a} against {c}"
            );
        }
    }
}

/// Asserts that `by_runs` (a batch pooled run by run) gives the same bits
/// on 1, 2 and 3 threads, and the results of `whole` (the same batch
/// pooled whole) as [`assert_runs_match_whole`] says.
pub fn assert_run_by_run(
    name: &str,
    by_runs: impl Fn() -> ForwardBackward + Sync,
    whole: impl Fn() -> ForwardBackward,
) {
    let base = with_threads(1, &by_runs);
    for threads in [2, 3] {
        assert!(
            with_threads(threads, &by_runs) == base,
            "{name}: {threads} threads"
        );
    }
    assert_runs_match_whole(name, &base, &whole());
}

/// Asserts that a layer's backward pass matches central differences.
pub fn assert_gradients<L: Layer<f64> + Clone>(layer: &L, batch: &DisjointBatch<f64>) {
    let report = check_layer_gradients(layer, batch, GradCheckOptions::default())
        .expect("gradient check runs");
    assert!(report.passed(), "gradient check failed: {report}");
}

/// Asserts two arrays are equal within an absolute tolerance.
pub fn assert_close<D: ndarray::Dimension>(
    a: &ndarray::ArrayRef<f64, D>,
    b: &ndarray::ArrayRef<f64, D>,
    tol: f64,
) {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    for (x, y) in a.iter().zip(b.iter()) {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{x} vs {y}\n{a}\nvs\n{b}"
        );
    }
}

use graphpool::framework::{Differentiable, Gradients, Pooled};
use graphpool::layers::{
    AsymCheegerCutPool, DMoNPool, DMoNVariant, DiffPool, DiffPoolVariant, GlobalAttentionPool,
    GlobalAttnSumPool, GlobalAvgPool, GlobalMaxPool, GlobalSumPool, JustBalancePool, KeepRule,
    LaPool, MemAdjacency, MemPooling, MinCutPool, MinCutVariant, SAGPool, SagScorer, SortPool,
    TopKPool,
};
use graphpool::nn::{rng_from_seed, Activation};
use graphpool::{PoolError, Scalar};
use ndarray::{Array2, Array3};

/// What a layer returned, by output kind.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Out<T: Scalar> {
    /// A global pool's $B \times F$ (or $B \times C$) rows.
    Rows(Array2<T>),
    /// SortPool's $B \times k \times F$.
    Sorted(Array3<T>),
    /// An SRC pool's pooled batch, selection, scores and losses.
    Pooled(Pooled<T>),
}

impl<T: Scalar> Out<T> {
    /// Every value finite.
    pub fn all_finite(&self) -> bool {
        match self {
            Out::Rows(y) => y.iter().all(|v| v.is_finite()),
            Out::Sorted(y) => y.iter().all(|v| v.is_finite()),
            Out::Pooled(p) => {
                p.batch.x().iter().all(|v| v.is_finite())
                    && p.batch.a().data().iter().all(|v| v.is_finite())
                    && p.losses.values().all(|v| v.is_finite())
                    && p.score.iter().flatten().all(|v| v.is_finite())
            }
        }
    }

    /// The pooled batch of an SRC pool.
    pub fn pooled(&self) -> &Pooled<T> {
        match self {
            Out::Pooled(p) => p,
            other => panic!("not a pooled batch: {other:?}"),
        }
    }
}

/// Every gradient finite.
pub fn gradients_finite<T: Scalar>(g: &Gradients<T>) -> bool {
    g.x.iter().all(|v| v.is_finite())
        && g.edge_weights.iter().flatten().all(|v| v.is_finite())
        && g.params
            .iter()
            .all(|(_, p)| p.iter().all(|v| v.is_finite()))
}

/// What a [`Run`] does: the forward pass, forward and backward, or the
/// forward pass checked against `call` (which may skip building the cache).
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Forward,
    Both,
    CallChecked,
}

/// The forward batch, the backward batch (the same one but in
/// [`Run::forward_then_backward_on`]) and what to run.
type RunFn<T> = dyn Fn(
        &DisjointBatch<T>,
        &DisjointBatch<T>,
        Mode,
    ) -> Result<(Out<T>, Option<Gradients<T>>), PoolError>
    + Send
    + Sync;

/// A layer behind a uniform interface: its forward pass, and its forward
/// and backward passes with a fixed random cotangent.
pub struct Run<T: Scalar>(Box<RunFn<T>>);

impl<T: Scalar> Run<T> {
    /// Forward and backward.
    pub fn both(&self, b: &DisjointBatch<T>) -> Result<(Out<T>, Gradients<T>), PoolError> {
        let (out, g) = (self.0)(b, b, Mode::Both)?;
        Ok((out, g.expect("a backward pass was asked for")))
    }

    /// The forward pass on `fwd`, then the backward pass with its cache but
    /// the batch `bwd` (to check what a backward pass refuses).
    pub fn forward_then_backward_on(
        &self,
        fwd: &DisjointBatch<T>,
        bwd: &DisjointBatch<T>,
    ) -> Result<Gradients<T>, PoolError> {
        let (_, g) = (self.0)(fwd, bwd, Mode::Both)?;
        Ok(g.expect("a backward pass was asked for"))
    }

    /// The forward pass only.
    pub fn forward(&self, b: &DisjointBatch<T>) -> Result<Out<T>, PoolError> {
        Ok((self.0)(b, b, Mode::Forward)?.0)
    }

    /// The forward pass, after checking that `Layer::call` returns exactly
    /// the same output (panics if not).
    #[allow(dead_code)]
    pub fn forward_and_call(&self, b: &DisjointBatch<T>) -> Result<Out<T>, PoolError> {
        Ok((self.0)(b, b, Mode::CallChecked)?.0)
    }
}

fn run<T: Scalar, L: Layer<T> + Send + Sync + 'static>(
    l: L,
    wrap: fn(L::Output) -> Out<T>,
) -> Run<T>
where
    L::Output: Differentiable<T> + PartialEq,
{
    Run(Box::new(move |b, bwd, mode| {
        let (y, cache) = l.forward(b)?;
        if mode == Mode::CallChecked {
            assert!(l.call(b)? == y, "call differs from forward");
        }
        if mode != Mode::Both {
            return Ok((wrap(y), None));
        }
        let g = y.random_cotangent(&mut rng_from_seed(99));
        let grads = l.backward(bwd, &cache, &g)?;
        Ok((wrap(y), Some(grads)))
    }))
}

/// Every layer of the crate (and every variant with its own code path),
/// for `f` input features, `k` clusters / kept nodes, by name; the SRC
/// pools return their selection, so that it is checked too.
pub fn all_layers<T: Scalar>(f: usize, k: usize) -> Vec<(&'static str, Run<T>)> {
    all_layers_with(f, k, true)
}

/// [`all_layers`], the SRC pools returning their selection if
/// `return_selection` (Spektral's flag; the layers' default is not to).
#[allow(dead_code)]
pub fn all_layers_with<T: Scalar>(
    f: usize,
    k: usize,
    return_selection: bool,
) -> Vec<(&'static str, Run<T>)> {
    let rows = Out::Rows as fn(Array2<T>) -> Out<T>;
    let pooled = Out::Pooled as fn(Pooled<T>) -> Out<T>;
    let act = Activation::Tanh;
    vec![
        ("GlobalSumPool", run(GlobalSumPool, rows)),
        ("GlobalAvgPool", run(GlobalAvgPool, rows)),
        ("GlobalMaxPool", run(GlobalMaxPool, rows)),
        (
            "GlobalAttentionPool",
            run(GlobalAttentionPool::<T>::new(f, 3, 1).unwrap(), rows),
        ),
        (
            "GlobalAttnSumPool",
            run(GlobalAttnSumPool::<T>::new(f, 2), rows),
        ),
        ("SortPool", run(SortPool::new(k + 1).unwrap(), Out::Sorted)),
        (
            "TopKPool",
            run(
                TopKPool::<T>::new(f, 0.5, 3)
                    .unwrap()
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "TopKPool(min_score)",
            run(
                TopKPool::<T>::new(f, 0.5, 3)
                    .unwrap()
                    .with_keep(KeepRule::MinScore(0.2))
                    .unwrap()
                    .with_multiplier(2.0)
                    .unwrap()
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "SAGPool",
            run(
                SAGPool::<T>::new(f, 0.5, 4)
                    .unwrap()
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "SAGPool(GraphConv)",
            run(
                SAGPool::<T>::new_with_scorer(f, 0.7, SagScorer::GraphConv, 5)
                    .unwrap()
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "LaPool",
            run(
                LaPool::new(true).with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "LaPool(no reg)",
            run(
                LaPool::new(false).with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "MinCutPool",
            run(
                MinCutPool::<T>::new(f, k, &[4], act, 6)
                    .unwrap()
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "MinCutPool(PyG)",
            run(
                MinCutPool::<T>::new(f, k, &[], act, 7)
                    .unwrap()
                    .with_variant(MinCutVariant::Pyg)
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "DMoNPool",
            run(
                DMoNPool::<T>::new(f, k, &[4], act, 0.3, 8)
                    .unwrap()
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "DMoNPool(PyG)",
            run(
                DMoNPool::<T>::new(f, k, &[], Activation::Relu, 0.3, 9)
                    .unwrap()
                    .with_variant(DMoNVariant::Pyg)
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "JustBalancePool",
            run(
                JustBalancePool::<T>::new(f, k, &[4], act, true, 10)
                    .unwrap()
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "AsymCheegerCutPool",
            run(
                AsymCheegerCutPool::<T>::new(f, k.max(2), &[4], act, 0.7, 1.3, 11)
                    .unwrap()
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "DiffPool",
            run(
                DiffPool::<T>::new(f, k, Some(3), Activation::Relu, 12)
                    .unwrap()
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "DiffPool(PyG)",
            run(
                DiffPool::<T>::new(f, k, None, Activation::Tanh, 13)
                    .unwrap()
                    .with_variant(DiffPoolVariant::Pyg)
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "MemPooling",
            run(
                MemPooling::<T>::new(f, 3, 2, k, 1.0, 14)
                    .unwrap()
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
        (
            "MemPooling(coarsened)",
            run(
                MemPooling::<T>::new(f, 3, 1, k, 0.5, 15)
                    .unwrap()
                    .with_adjacency(MemAdjacency::Coarsened)
                    .with_return_selection(return_selection),
                pooled,
            ),
        ),
    ]
}
