//! Replays saved fuzzer inputs through the fuzz targets' own code
//! (fuzz/src/lib.rs, included below), in this debug build with overflow
//! checks: every input that once crashed a target (`fuzz/regressions/<target>/`,
//! each file named after the defect it found). A panic fails the test and
//! names the file.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz;

use std::path::Path;

use graphpool::framework::{Differentiable, Layer, PooledGrad};
use graphpool::layers::{MinCutPool, MinCutVariant};
use graphpool::nn::{rng_from_seed, Activation};
use graphpool::{DisjointBatch, PoolError};
use ndarray::{s, Array1, Array2};

/// Replays every file of `dir/<target>/` through `<target>`; returns how many.
fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut count = 0;
    for (target, run) in fuzz::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("a readable input");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} panics on {}", file.display());
            count += 1;
        }
    }
    count
}

#[test]
fn every_input_that_once_crashed_a_fuzz_target_now_passes_its_checks() {
    let n = replay("fuzz/regressions");
    assert!(n >= 2, "the regression inputs are missing ({n} found)");
}

#[test]
fn every_seed_of_the_committed_corpus_passes_its_target_checks() {
    // fuzz/seeds/<target>/: inputs kept from the 10^6-run campaigns (the
    // largest of each target's set-cover-minimised corpus), replayed here so
    // that the checks they reach keep holding between campaigns
    let n = replay("fuzz/seeds");
    assert!(n >= 5 * 48, "the seed corpus is missing ({n} inputs found)");
}

/// Gradients of x and of the edge weights.
type XEdgeGrads = (Array2<f64>, Array1<f64>);

/// The f32 and f64 runs of MinCutPool (PyG variant) of a clustering_pools
/// regression input, as `fuzz::mincut_pyg_f32_and_f64` makes them.
fn mincut_pyg_runs(name: &str) -> (Result<XEdgeGrads, PoolError>, XEdgeGrads) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions/clustering_pools")
        .join(name);
    let data = std::fs::read(path).expect("the finding's input");
    let (g32, g64) = fuzz::mincut_pyg_f32_and_f64(&data).expect("a MinCutPool run");
    (g32, g64.expect("f64 backward"))
}

#[test]
fn mincut_pyg_f32_gradient_agrees_with_f64_when_pooled_degrees_underflow() {
    // the campaign's finding: a saturated assignment makes pooled degrees of
    // about 1e-31, and the normalisation's VJP (PyG's eps 1e-15) reaches
    // 1e45 before the softmax VJP's tiny factors bring it back; f32 once
    // overflowed there (NonFinite), it must now give f64's answer to f32
    // precision
    let (g32, (x64, e64)) = mincut_pyg_runs("mincut-pyg-f32-intermediate-overflow");
    let (x32, e32) = g32.expect("f32 backward");
    let flat = |a: &[f64]| a.to_vec();
    for (what, got, want) in [
        (
            "x",
            x32.iter().copied().collect::<Vec<_>>(),
            x64.iter().copied().collect(),
        ),
        (
            "edge",
            flat(e32.as_slice().unwrap()),
            flat(e64.as_slice().unwrap()),
        ),
    ] {
        let scale = want.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
        if what == "x" {
            assert!(
                scale > 1e10,
                "the finding no longer reaches its regime ({scale:e})"
            );
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * scale,
                "{what} gradient {i}: f32 {g:e}, f64 {w:e} (scale {scale:e})"
            );
        }
    }
}

/// The gradient of `x` of `layer` on `b` with a random cotangent of the
/// pooled outputs and 0 for the losses (a loss's per-graph gradient is its
/// cotangent over the number of graphs, which a filler changes), and the
/// same after a filler graph of `filler` nodes (zero features, no edges)
/// is put before `b`'s graphs: the second's rows of `b`'s nodes.
fn x_grad_alone_and_after_filler(
    layer: &MinCutPool<f32>,
    b: &DisjointBatch<f32>,
    filler: usize,
) -> (Array2<f32>, Array2<f32>) {
    let (y, cache) = layer.forward(b).expect("forward");
    let mut g = y.random_cotangent(&mut rng_from_seed(7));
    g.losses.values_mut().for_each(|v| *v = 0.0);
    let alone = layer.backward(b, &cache, &g).expect("backward").x;
    let filler_graph = (
        Array2::zeros((filler, b.num_features())),
        sprs::CsMat::zero((filler, filler)),
    );
    let mut graphs = vec![filler_graph];
    graphs.extend(b.split());
    let padded = DisjointBatch::stack(&graphs).expect("a valid batch");
    let (yp, cache_p) = layer.forward(&padded).expect("forward");
    // the filler's pooled nodes and edges come first; their cotangent is 0
    let (rows, edges) = (
        yp.batch.num_nodes() - g.x.nrows(),
        yp.batch.a().nnz() - g.edge_weights.len(),
    );
    let mut gx = Array2::zeros((rows + g.x.nrows(), g.x.ncols()));
    gx.slice_mut(s![rows.., ..]).assign(&g.x);
    let mut ge = Array1::zeros(edges + g.edge_weights.len());
    ge.slice_mut(s![edges..]).assign(&g.edge_weights);
    let gp = PooledGrad {
        x: gx,
        edge_weights: ge,
        losses: g.losses.clone(),
    };
    let after = layer.backward(&padded, &cache_p, &gp).expect("backward").x;
    let n = b.num_nodes();
    (alone, after.slice(s![filler..filler + n, ..]).to_owned())
}

#[test]
fn mincut_f32_gradient_of_a_graph_in_f64_keeps_its_bits_across_a_chunk_boundary() {
    // on the finding's batch, a one-layer MinCutPool (PyG) whose scaled
    // kernel saturates the assignment: a graph's block gradient leaves f32
    // (|dx| reaches 1e14), so its softmax VJP runs in f64 on its own. The
    // backward pass forms the logits' gradient in fixed chunks of CHUNK
    // nodes (a one-layer MLP takes them as they come); the fillers put the
    // chunk boundary after each of the finding's nodes in turn, or the
    // finding inside the second chunk
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions/clustering_pools/mincut-pyg-f32-intermediate-overflow");
    let data = std::fs::read(path).expect("the finding's input");
    let b = fuzz::mincut_pyg_f32_batch(&data).expect("the finding's batch");
    let layer = fuzz::scaled(
        MinCutPool::<f32>::new(b.num_features(), 2, &[], Activation::Linear, 4).unwrap(),
        3.0,
    )
    .with_variant(MinCutVariant::Pyg);
    let n = b.num_nodes();
    let chunk = graphpool::kernels::CHUNK;
    for filler in (chunk - n + 1..chunk).chain([0, 1, chunk + 3]) {
        let (alone, after) = x_grad_alone_and_after_filler(&layer, &b, filler);
        assert!(
            alone.iter().any(|v| v.abs() > 1e10),
            "the gradient no longer reaches the f64 path"
        );
        for (i, (a, w)) in alone.iter().zip(&after).enumerate() {
            assert_eq!(
                a.to_bits(),
                w.to_bits(),
                "filler {filler}, entry {i}: {a:e} vs {w:e}"
            );
        }
    }
}

#[test]
fn mincut_pyg_f32_refuses_an_edge_gradient_whose_exact_value_exceeds_f32_max() {
    // found by the campaign after the fix above: a mutation of the same
    // input whose exact edge gradient (f64) is about 1.3e43; f32 cannot hold
    // it, and the typed NonFinite is the right answer (not a wrong finite one)
    let (g32, (_, e64)) = mincut_pyg_runs("mincut-pyg-f32-edge-gradient-beyond-f32-max");
    let exact = e64.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    assert!(exact > f64::from(f32::MAX), "exact edge gradient {exact:e}");
    assert!(
        matches!(g32, Err(PoolError::NonFinite { .. })),
        "f32 gave {g32:?}"
    );
}
