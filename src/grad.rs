//! A reusable central-difference gradient checker (f64).
//!
//! For a layer $f$ and a batch, [`check_layer_gradients`] draws a random
//! cotangent $c$ of the output's shape, takes the scalar loss
//! $L = \langle f(X, a, \theta), c\rangle$, and compares the layer's backward
//! pass with central differences
//! $\frac{L(v + \varepsilon) - L(v - \varepsilon)}{2\varepsilon}$ for every
//! feature $X_{nf}$, every stored edge weight $a_e$ (only if the batch has
//! [`DisjointBatch::edge_weight_grad`] on) and every parameter
//! entry. Pass inputs without ties (selection pools are piecewise constant in
//! their choice of nodes).

use ndarray::Array1;

use crate::batch::DisjointBatch;
use crate::error::{PoolError, Result};
use crate::framework::{Differentiable, Layer};
use crate::nn::rng_from_seed;

/// Step and tolerances of a gradient check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradCheckOptions {
    /// Finite-difference step $\varepsilon$.
    pub eps: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Seed of the random cotangent.
    pub seed: u64,
    /// Perturb each pair of mirrored edge weights $a_{uv}, a_{vu}$
    /// together and compare with the sum of their gradients (the
    /// directional derivative along $e_{uv} + e_{vu}$), instead of one
    /// weight at a time. For a layer whose weights enter through
    /// $\min(a_{uv}, a_{vu})$ (LaPool's path lengths) a symmetric graph sits
    /// on the kink of that minimum, where one-at-a-time central differences
    /// are off by $O(\varepsilon)$ times the curvature; along the pair's
    /// direction the function is smooth. Self loops and unmirrored entries
    /// are still perturbed alone.
    pub paired_edges: bool,
}

impl Default for GradCheckOptions {
    fn default() -> Self {
        Self {
            eps: 1e-6,
            rtol: 1e-5,
            atol: 1e-7,
            seed: 0,
            paired_edges: false,
        }
    }
}

/// One coordinate where the analytic and numeric gradients disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// Which coordinate, e.g. `x[3, 1]`, `edge 7`, `param kernel[2, 0]`.
    pub coordinate: String,
    /// The backward pass's value.
    pub analytic: f64,
    /// The central difference.
    pub numeric: f64,
}

/// The outcome of a gradient check.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GradCheckReport {
    /// Number of coordinates compared.
    pub checked: usize,
    /// Largest $|\text{analytic} - \text{numeric}|$ seen.
    pub max_abs_error: f64,
    /// Every coordinate outside tolerance.
    pub mismatches: Vec<Mismatch>,
}

impl GradCheckReport {
    /// Whether every coordinate is within tolerance.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl std::fmt::Display for GradCheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} coordinates, max abs error {:.3e}, {} mismatches",
            self.checked,
            self.max_abs_error,
            self.mismatches.len()
        )?;
        for m in self.mismatches.iter().take(10) {
            write!(
                f,
                "\n  {}: analytic {:.9e}, numeric {:.9e}",
                m.coordinate, m.analytic, m.numeric
            )?;
        }
        Ok(())
    }
}

/// Checks a layer's backward pass against central differences with respect
/// to features, edge weights and every parameter. With edge-weight
/// gradients off for `batch` ([`DisjointBatch::with_edge_weight_grad`]) the
/// edge coordinates are skipped.
///
/// # Errors
/// Any error of the layer's forward or backward pass, including a
/// [`crate::PoolError::GradientShape`] when a perturbation changes the
/// output's structure (a tie in a selection: choose other inputs), or when
/// the backward pass returns edge-weight gradients although the batch has
/// them off, or none although it has them on.
pub fn check_layer_gradients<L>(
    layer: &L,
    batch: &DisjointBatch<f64>,
    opts: GradCheckOptions,
) -> Result<GradCheckReport>
where
    L: Layer<f64> + Clone,
{
    let (out, cache) = layer.forward(batch)?;
    let mut rng = rng_from_seed(opts.seed);
    let cot = out.random_cotangent(&mut rng);
    let analytic = layer.backward(batch, &cache, &cot)?;
    let no_edges = Array1::zeros(0);
    let analytic_edges = match (&analytic.edge_weights, batch.edge_weight_grad()) {
        (Some(g), true) if g.len() == batch.a().nnz() => g,
        (None, false) => &no_edges,
        (g, on) => {
            return Err(PoolError::GradientShape {
                what: "edge-weight gradients of the backward pass".into(),
                expected: if on {
                    format!("Some, {} values (the batch has them on)", batch.a().nnz())
                } else {
                    "None (the batch has them off)".into()
                },
                got: g
                    .as_ref()
                    .map_or("None".into(), |g| format!("Some, {} values", g.len())),
            })
        }
    };
    let loss = |l: &L, b: &DisjointBatch<f64>| -> Result<f64> { l.call(b)?.pair(&cot) };
    let mut report = GradCheckReport::default();
    let mut compare = |coordinate: String, a: f64, n: f64| {
        let err = (a - n).abs();
        report.checked += 1;
        report.max_abs_error = report.max_abs_error.max(err);
        if err > opts.atol + opts.rtol * a.abs().max(n.abs()) {
            report.mismatches.push(Mismatch {
                coordinate,
                analytic: a,
                numeric: n,
            });
        }
    };
    let h = opts.eps;
    // features
    for ((r, c), &v) in batch.x().indexed_iter() {
        let mut xp = batch.x().to_owned();
        xp[[r, c]] = v + h;
        let lp = loss(layer, &batch.with_x(xp.clone())?)?;
        xp[[r, c]] = v - h;
        let lm = loss(layer, &batch.with_x(xp)?)?;
        compare(
            format!("x[{r}, {c}]"),
            analytic.x[[r, c]],
            (lp - lm) / (2.0 * h),
        );
    }
    // edge weights (none with edge-weight gradients off)
    let w = if batch.edge_weight_grad() {
        batch.a().data().to_vec()
    } else {
        Vec::new()
    };
    let a = batch.a();
    let mirror = |e: usize| -> Option<usize> {
        // the position of (c, r) for the entry e at (r, c)
        let ip = a.indptr();
        let ip = ip.raw_storage();
        let r = ip.partition_point(|&p| p <= e) - 1;
        let c = a.indices()[e];
        let row = &a.indices()[ip[c]..ip[c + 1]];
        row.binary_search(&r).ok().map(|i| ip[c] + i)
    };
    for (e, &v) in w.iter().enumerate() {
        let pair = if opts.paired_edges {
            mirror(e).filter(|&m| m != e)
        } else {
            None
        };
        if pair.is_some_and(|m| m < e) {
            continue; // checked with its mirror
        }
        let mut wp = w.clone();
        wp[e] = v + h;
        if let Some(m) = pair {
            wp[m] = w[m] + h;
        }
        let lp = loss(layer, &batch.with_edge_weights(wp.clone())?)?;
        wp[e] = v - h;
        if let Some(m) = pair {
            wp[m] = w[m] - h;
        }
        let lm = loss(layer, &batch.with_edge_weights(wp)?)?;
        let (coordinate, a) = match pair {
            Some(m) => (
                format!("edges {e} + {m}"),
                analytic_edges[e] + analytic_edges[m],
            ),
            None => (format!("edge {e}"), analytic_edges[e]),
        };
        compare(coordinate, a, (lp - lm) / (2.0 * h));
    }
    // parameters
    let names: Vec<String> = layer.params().names().map(String::from).collect();
    for name in names {
        let value = layer.params().get(&name)?.clone();
        let grad = analytic.params.get(&name)?;
        for (idx, &v) in value.indexed_iter() {
            let mut perturbed = value.clone();
            let mut l2 = layer.clone();
            perturbed[idx.clone()] = v + h;
            l2.set_param(&name, perturbed.clone())?;
            let lp = loss(&l2, batch)?;
            perturbed[idx.clone()] = v - h;
            l2.set_param(&name, perturbed)?;
            let lm = loss(&l2, batch)?;
            compare(
                format!("param {name}{idx:?}"),
                grad[idx.clone()],
                (lp - lm) / (2.0 * h),
            );
        }
    }
    Ok(report)
}
