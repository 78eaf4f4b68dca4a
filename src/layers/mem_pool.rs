//! MemPooling: memory-based soft clustering of the nodes of each graph onto
//! learned keys (Student-t kernel, several heads mixed by a 1×1 convolution),
//! with PyG's KL auxiliary loss, per graph and without padding.

use ndarray::{s, Array1, Array2, ArrayD, ArrayView2, Axis, Zip};
use sprs::CsMat;

use crate::batch::{DisjointBatch, Segments};
use crate::error::{PoolError, Result};
use crate::framework::layer::{
    check_pooled_grad, finite_gradients, zero_edge_grad, InputSignature, LayerStamp,
};
use crate::framework::pooled::cached_and_returned;
use crate::framework::{
    DenseAssignment, DenseConnectCache, Gradients, Layer, Losses, Pooled, PooledGrad, Selection,
    SrcPool,
};
use crate::kernels::rows::{column_sums, row_major, row_major_1d};
use crate::kernels::segment::{segment_matmul_tn_vjp, segment_sum};
use crate::kernels::simd_levels;
use crate::kernels::{fill_node_rows, for_each_node_slice, reduce_chunked_rows, ROW_BLOCK};
use crate::nn::{
    matmul, matmul_vjp, rng_from_seed, softmax_rows_in_place, softmax_rows_vjp_in_place,
    Initializer, Params,
};
use crate::scalar::Scalar;
use rayon::prelude::*;

/// The pooled adjacency a [`MemPooling`] returns (the reference returns none).
///
/// ```
/// use graphpool::framework::Layer;
/// use graphpool::layers::{MemAdjacency, MemPooling};
/// use graphpool::DisjointBatch;
/// use ndarray::array;
/// use sprs::TriMat;
///
/// let mut t = TriMat::new((2, 2));
/// t.add_triplet(0, 1, 1.0);
/// t.add_triplet(1, 0, 1.0);
/// let b = DisjointBatch::single(array![[1.0, 0.0], [0.0, 1.0]], t.to_csr())?;
/// let pool = MemPooling::<f64>::new(2, 3, 1, 2, 1.0, 0)?;
/// assert_eq!(pool.call(&b)?.batch.a().nnz(), 0); // edgeless by default
/// let coarsened = pool.with_adjacency(MemAdjacency::Coarsened).call(&b)?;
/// assert_eq!(coarsened.batch.a().nnz(), 4); // one dense 2 x 2 block S^T A S
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemAdjacency {
    /// No edges: each graph pools to $K$ nodes and an empty $K \times K$
    /// block (nothing stored). PyG's `MemPooling` returns no adjacency, and
    /// the paper's memory layers after the first do not use one; this is the
    /// default.
    #[default]
    Edgeless,
    /// The soft-cluster coarsening $A'_g = S_g^\top A_g S_g$ (as DiffPool's
    /// connect, dense $K \times K$ blocks, every entry stored), for stacking
    /// message-passing layers after the pool. Costs one sparse product, and
    /// gradients then flow to the edge weights.
    Coarsened,
}

/// MemPooling (Khasahmadi et al., *Memory-Based Graph Networks*, ICLR 2020;
/// PyG `MemPooling`), sparse and per graph.
///
/// With $H$ heads of $K$ learned keys $k^{(h)}_j \in \mathbb{R}^F$, the
/// Student-t kernel of temperature $\tau$ assigns node $i$ to the keys of each head:
/// $$S^{(h)}_{ij} = \frac{\big(1 + \lVert x_i - k^{(h)}_j\rVert^2/\tau\big)^{-\frac{1+\tau}{2}}}{\sum_{l=1}^{K}\big(1 + \lVert x_i - k^{(h)}_l\rVert^2/\tau\big)^{-\frac{1+\tau}{2}}},$$
/// a $1\times 1$ convolution over the heads mixes them and a softmax over the
/// clusters gives the assignment, then the pooled features:
/// $$S = \operatorname{softmax}\Big(\sum_{h} w_h S^{(h)}\Big) \in \mathbb{R}^{N \times K}, \qquad X'_g = S_g^\top X_g W.$$
/// Row $n$ of $S$ holds node $n$'s weights over the $K$ clusters **of its own
/// graph** ([`DenseAssignment`]); the output has $K$ nodes per graph
/// ($X'$ is $BK \times F'$). The pooled adjacency is chosen by
/// [`MemAdjacency`] (default: edgeless).
///
/// Parameters (canonical names): `keys` $(H, K, F)$, PyG's `k`, uniform in
/// $[-1, 1]$; `conv.weight` $(H)$, the Conv2d$(H \to 1)$ weight without bias,
/// uniform in $\pm 1/\sqrt{H}$; `lin.kernel` $(F, F')$, `lin.weight`$^\top$,
/// no bias, uniform in $\pm 1/\sqrt{F}$ (PyTorch's default initialisations,
/// drawn in that order from the seed).
///
/// **Auxiliary loss** `kl` (PyG's `MemPooling.kl_loss`): per graph, with the
/// column sums $c_{gj} = \sum_{n \in g} S_{nj}$ and the sharpened target
/// $$P_{nj} = \frac{S_{nj}^2 / c_{gj}}{\sum_{l} S_{nl}^2 / c_{gl}}, \qquad \mathrm{kl} = \frac{1}{B}\sum_{g=1}^{B}\sum_{n \in g}\sum_{j} \bar P_{nj}\big(\ln \bar P_{nj} - \ln \bar S_{nj}\big),$$
/// $\bar P = \max(P, 10^{-15})$, $\bar S = \max(S, 10^{-15})$ (computed as
/// $\bar P_{nj} \ln(\bar P_{nj} / \bar S_{nj})$, one logarithm per entry; PyG
/// takes the two logarithms, which differs only by rounding). PyG computes
/// it on the $[B, N_{\max}, K]$ batch padded by `to_dense_batch` with
/// `KLDivLoss(reduction='batchmean')`: padded rows contribute exactly 0 and
/// the sum is divided by $B$, so it is the mean over graphs of the per-graph
/// sums over nodes and clusters. graphpool computes exactly that without
/// padding: the column sums $c_g$ are segment sums, $P$ is per node, the
/// per-graph sums are segment sums, and the only batch-level term is the
/// division by $B$ (which counts empty graphs). $P$ is **not** detached: as
/// in PyG, gradients flow through the target too (and not through a clamped
/// value). `kl` is non-negative in exact arithmetic; in floating point it
/// can round to a tiny negative value (about $-10^{-16}$ in `f64`) when $P = S$.
///
/// Defined results for degenerate inputs: an empty graph gives $K$ zero rows
/// and contributes 0 to `kl` (PyG gives NaN for an empty graph inside a
/// batch: its column sums are 0/0); a single-node graph has $P = S$ and
/// `kl` 0. The per-head weights are computed from the ratios
/// $\big((\tau + d_{\min}) / (\tau + d_j)\big)^{\frac{1+\tau}{2}} \in (0, 1]$ to
/// the nearest key's kernel ($d_j$ the squared distances, summed directly,
/// not as $\lVert x\rVert^2 + \lVert k\rVert^2 - 2\langle x, k\rangle$), which
/// equals the ratio above but does not underflow to 0/0 for nodes far from
/// every key or a small $\tau$ (where PyG returns NaN); if every distance
/// of a head overflows to infinity, that head's weights are uniform (in
/// `f32` this happens for features beyond about $10^{19}$, whose squared
/// distances exceed the type: $X' = S^\top X W$ stays finite). Isolated
/// nodes, zero-weight edges and self loops only matter to
/// [`MemAdjacency::Coarsened`]'s $S^\top A S$.
///
/// Errors of the forward pass: [`PoolError::ShapeMismatch`] if $X$ has not
/// `in_channels` columns; [`PoolError::NonFinite`] if an output overflows.
///
/// ```
/// use graphpool::framework::Layer;
/// use graphpool::layers::MemPooling;
/// use graphpool::DisjointBatch;
/// use ndarray::array;
///
/// // two graphs (3 nodes and 1 node), 2 clusters each, 2 heads
/// let x = array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]];
/// let b = DisjointBatch::from_graph_ids(x, sprs::CsMat::zero((4, 4)), &[0, 0, 0, 1], 2)?;
/// let pool = MemPooling::<f64>::new(2, 5, 2, 2, 1.0, 7)?;
/// let out = pool.call(&b)?;
/// assert_eq!(out.batch.x().dim(), (4, 5));
/// assert_eq!(out.batch.graph_ids(), vec![0, 0, 1, 1]);
/// assert!(out.losses["kl"] >= 0.0);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MemPooling<T: Scalar> {
    in_channels: usize,
    out_channels: usize,
    heads: usize,
    k: usize,
    tau: T,
    adjacency: MemAdjacency,
    params: Params<T>,
    /// Whether [`Pooled::selection`] holds $S$
    /// ([`MemPooling::with_return_selection`]).
    return_selection: bool,
}

/// Saved state of [`MemPooling`]'s forward pass.
#[derive(Debug, Clone)]
pub struct MemPoolingCache<T: Scalar> {
    assignment: DenseAssignment<T>,
    /// Column sums $c_g$, $B \times K$.
    colsum: Array2<T>,
    connect: Option<DenseConnectCache<T>>,
    out_x_shape: [usize; 2],
    out_nnz: usize,
    input: InputSignature,
    stamp: LayerStamp,
}

const KEYS: &str = "keys";
const CONV: &str = "conv.weight";
const LIN: &str = "lin.kernel";
/// PyG's `EPS` in `kl_loss`.
const KL_EPS: f64 = 1e-15;

impl<T: Scalar> MemPooling<T> {
    /// A MemPooling from `in_channels` to `out_channels` features with
    /// `heads` heads of `num_clusters` keys and temperature `tau`, weights
    /// drawn from `seed` (PyG's `MemPooling(in_channels, out_channels,
    /// heads, num_clusters, tau)`).
    ///
    /// # Errors
    /// [`PoolError::InvalidConfig`] if `out_channels`, `heads` or
    /// `num_clusters` is 0, `tau` is not finite and $> 0$ in `T`, or the
    /// keys, weights or per-node assignments cannot be allocated.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        heads: usize,
        num_clusters: usize,
        tau: f64,
        seed: u64,
    ) -> Result<Self> {
        let positive = |name: &str, v: usize, what: &str| {
            if v == 0 {
                Err(PoolError::InvalidConfig {
                    name: name.into(),
                    value: "0".into(),
                    expected: format!("a positive number of {what}"),
                })
            } else {
                Ok(())
            }
        };
        positive("channels", out_channels, "output channels")?;
        positive("heads", heads, "heads")?;
        positive("k", num_clusters, "clusters per graph")?;
        // finite and positive in T too: 1e300 is infinite and 1e-300 is 0 in f32
        let tau_t = T::c(tau);
        if !(tau.is_finite() && tau > 0.0 && tau_t.is_finite() && tau_t > T::zero()) {
            return Err(PoolError::InvalidConfig {
                name: "tau".into(),
                value: tau.to_string(),
                expected: "a finite temperature > 0 (also in the layer's float type)".into(),
            });
        }
        let size = crate::nn::params::check_array_size::<T>;
        size("heads / k", &[heads, num_clusters, in_channels])?;
        size("heads / k", &[heads, num_clusters])?;
        size("k", &[num_clusters, num_clusters])?;
        size("channels", &[in_channels, out_channels])?;
        let mut rng = rng_from_seed(seed);
        let mut params = Params::new();
        params.insert(
            KEYS,
            Initializer::Uniform(-1.0, 1.0).sample(&[heads, num_clusters, in_channels], &mut rng),
        );
        let bh = 1.0 / (heads as f64).sqrt();
        params.insert(
            CONV,
            Initializer::Uniform(-bh, bh).sample(&[heads], &mut rng),
        );
        let bf = 1.0 / (in_channels.max(1) as f64).sqrt();
        params.insert(
            LIN,
            Initializer::Uniform(-bf, bf).sample(&[in_channels, out_channels], &mut rng),
        );
        Ok(Self {
            in_channels,
            out_channels,
            heads,
            k: num_clusters,
            tau: T::c(tau),
            adjacency: MemAdjacency::Edgeless,
            params,
            return_selection: false,
        })
    }

    /// Chooses the pooled adjacency (see [`MemAdjacency`]).
    pub fn with_adjacency(mut self, adjacency: MemAdjacency) -> Self {
        self.adjacency = adjacency;
        self
    }

    super::return_selection_methods!(
        "MemPooling::<f64>::new(4, 3, 2, 2, 1.0, 0)?",
        return_selection
    );

    /// Clusters per graph $K$.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Heads $H$.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Output channels $F'$.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// Temperature $\tau$.
    pub fn tau(&self) -> T {
        self.tau
    }

    /// The pooled adjacency in use.
    pub fn adjacency(&self) -> MemAdjacency {
        self.adjacency
    }

    /// The keys as an $HK \times F$ matrix.
    fn keys(&self) -> Result<Array2<T>> {
        let keys = self.params.tensor3(KEYS)?;
        let (h, k, f) = keys.dim();
        keys.to_owned()
            .into_shape_with_order((h * k, f))
            .map_err(|e| PoolError::ParameterShape {
                name: format!("{KEYS} ({e})"),
                expected: vec![h, k, f],
                got: vec![h, k, f],
            })
    }

    /// The exponent $\frac{1+\tau}{2}$.
    fn alpha(&self) -> T {
        (T::one() + self.tau) * T::c(0.5)
    }

    fn stamp(&self) -> LayerStamp {
        let config = (
            self.in_channels,
            self.out_channels,
            self.heads,
            self.k,
            self.tau,
            self.adjacency,
        );
        LayerStamp::of("MemPooling", &config, &self.params)
    }

    fn check_input(&self, batch: &DisjointBatch<T>) -> Result<()> {
        if batch.num_features() != self.in_channels {
            return Err(PoolError::ShapeMismatch {
                what: "x for MemPooling".into(),
                expected: format!("{} columns (the layer's in_channels)", self.in_channels),
                got: format!("{} columns", batch.num_features()),
            });
        }
        Ok(())
    }

    /// What [`assign_block`] reads for the nodes of `xs` (row-major, $F$ per
    /// node), the keys as [`transposed_keys`] lays them out and the head
    /// convolution.
    fn block_context<'a>(
        &self,
        xs: &'a [T],
        f: usize,
        kt: &'a [T],
        conv: &'a [T],
    ) -> AssignBlock<'a, T> {
        AssignBlock {
            xs,
            kt,
            conv,
            f,
            m: self.heads * self.k,
            k: self.k,
            tau: self.tau,
            alpha: self.alpha(),
        }
    }

    /// $S$ ($N \times K$): one parallel pass over fixed blocks of
    /// [`ROW_BLOCK`] nodes on plain slices (distances two nodes at a time,
    /// per-head weights, logits; the distances and per-head weights live in
    /// a per-task scratch block), then the row softmax. Every value is
    /// computed as the per-row formulas say, so the result does not depend
    /// on the thread count. The backward pass recomputes a chunk's
    /// distances and per-head weights with the same [`assign_block`] (the
    /// same bits) rather than keeping the $N \times HK$ distances.
    fn assign(&self, x: ArrayView2<T>) -> Result<Array2<T>> {
        let (n, f, k) = (x.nrows(), x.ncols(), self.k);
        let m = self.heads * k;
        let kt = transposed_keys(&self.keys()?);
        let conv = self.params.vector(CONV)?;
        let conv = row_major_1d(&conv);
        let xs = row_major(&x);
        let ctx = self.block_context(&xs, f, &kt, &conv);
        let mut logits = vec![T::zero(); n * k];
        if m > 0 {
            logits
                .par_chunks_mut(ROW_BLOCK * k)
                .enumerate()
                .for_each_init(
                    || {
                        (
                            vec![T::zero(); ROW_BLOCK * m],
                            vec![T::zero(); ROW_BLOCK * m],
                        )
                    },
                    |(db, pb), (b, lb)| {
                        let len = lb.len() / k * m;
                        assign_block(&ctx, b * ROW_BLOCK, &mut db[..len], &mut pb[..len], lb);
                    },
                );
        }
        // the logits become S in place (softmax_rows' bits, no N x K copy)
        let mut s = Array2::from_shape_vec((n, k), logits).expect("the length is rows * columns");
        softmax_rows_in_place(&mut s);
        Ok(s)
    }

    /// The forward pass, with its cache when `keep`.
    fn run(
        &self,
        batch: &DisjointBatch<T>,
        keep: bool,
    ) -> Result<(Pooled<T>, Option<MemPoolingCache<T>>)> {
        self.check_input(batch)?;
        let (x, segs) = (batch.x().view(), batch.segments());
        let s = self.assign(x)?;
        let assignment = DenseAssignment { s };
        let (x_out, _) = self.reduce_features(&assignment, x, segs)?;
        let out_segments = assignment.reduce_index(segs);
        let (a_out, connect) = self.connect_graph(&assignment, batch);
        let (kl, colsum) = kl_loss(assignment.s.view(), segs);
        let mut losses = Losses::new();
        losses.insert("kl".into(), kl);
        let out_x_shape = [x_out.nrows(), x_out.ncols()];
        let out_nnz = a_out.nnz();
        let (cached, returned) =
            cached_and_returned(keep, self.return_selection, assignment, Clone::clone);
        let cache = cached.map(|assignment| MemPoolingCache {
            assignment,
            colsum,
            connect,
            out_x_shape,
            out_nnz,
            input: InputSignature::of(batch),
            stamp: self.stamp(),
        });
        let pooled = Pooled::checked(
            "MemPooling",
            x_out,
            a_out,
            out_segments,
            returned.map(Selection::Dense),
            None,
            losses,
        )?;
        Ok((pooled, cache))
    }

    /// $X'_g = (S_g^\top X_g) W$, and $S_g^\top X_g$.
    fn reduce_features(
        &self,
        s: &DenseAssignment<T>,
        x: ArrayView2<T>,
        segs: &Segments,
    ) -> Result<(Array2<T>, Array2<T>)> {
        let reduced = s.reduce(x, segs);
        let x_out = matmul(reduced.view(), self.params.matrix(LIN)?, None);
        Ok((x_out, reduced))
    }

    /// The pooled adjacency of [`MemAdjacency`].
    fn connect_graph(
        &self,
        s: &DenseAssignment<T>,
        batch: &DisjointBatch<T>,
    ) -> (CsMat<T>, Option<DenseConnectCache<T>>) {
        match self.adjacency {
            MemAdjacency::Edgeless => {
                let bk = batch.num_graphs() * self.k;
                (CsMat::zero((bk, bk)), None)
            }
            MemAdjacency::Coarsened => {
                let (blocks, cache) = s.connect_blocks(batch.a().view(), batch.segments());
                (DenseAssignment::blocks_into_csr(blocks), Some(cache))
            }
        }
    }
}

/// `kl` (the mean over graphs) and the column sums it used.
fn kl_loss<T: Scalar>(s: ArrayView2<T>, segs: &Segments) -> (T, Array2<T>) {
    let (colsum, kl_g) = kl_terms(s, segs);
    let kl = kl_g.iter().fold(T::zero(), |a, &v| a + v) / T::from_count(segs.num_graphs().max(1));
    (kl, colsum)
}

/// Column sums $c_g$, the target $P$ and `kl` per graph (see [`MemPooling`]).
fn kl_terms<T: Scalar>(s: ArrayView2<T>, segs: &Segments) -> (Array2<T>, Array1<T>) {
    let colsum = segment_sum(s, segs);
    let eps = T::c(KL_EPS);
    let k = s.ncols();
    let ss = row_major(&s);
    let cs = colsum.as_slice().expect("fresh array");
    let per_node = fill_node_rows(segs, 1, |g, n, out| {
        let (srow, c) = (&ss[n * k..(n + 1) * k], &cs[g * k..(g + 1) * k]);
        let q = sharpened_sum(srow, c);
        let mut acc = T::zero();
        for (&sv, &cv) in srow.iter().zip(c) {
            let p = if q > T::zero() {
                sharpened_entry(sv, cv) / q
            } else {
                T::zero()
            };
            let (pc, sc) = (p.max(eps), sv.max(eps));
            // ln(P / S): one logarithm per entry instead of two
            acc += pc * (pc / sc).ln();
        }
        out[0] = acc;
    });
    let per_graph = segment_sum(per_node.view(), segs).remove_axis(Axis(1));
    (colsum, per_graph)
}

/// $\tilde P_j = S_j^2 / c_j$ (0 where $c_j = 0$).
#[inline]
fn sharpened_entry<T: Scalar>(v: T, c: T) -> T {
    if c > T::zero() {
        v * v / c
    } else {
        T::zero()
    }
}

/// $Q = \sum_j \tilde P_j$, summed in order.
#[inline]
fn sharpened_sum<T: Scalar>(s: &[T], c: &[T]) -> T {
    s.iter()
        .zip(c)
        .fold(T::zero(), |a, (&v, &c)| a + sharpened_entry(v, c))
}

/// The keys ($HK \times F$) transposed, $F \times HK$: one contiguous row
/// of key entries per feature, as [`assign_block`] reads them.
fn transposed_keys<T: Scalar>(keys: &Array2<T>) -> Vec<T> {
    keys.t().iter().copied().collect()
}

/// What [`assign_block`] reads: the features (row-major, $F$ per node),
/// the keys transposed ($F \times HK$), the head convolution, $HK$, $K$, $\tau$
/// and $\alpha$.
struct AssignBlock<'a, T: Scalar> {
    xs: &'a [T],
    kt: &'a [T],
    conv: &'a [T],
    f: usize,
    m: usize,
    k: usize,
    tau: T,
    alpha: T,
}

simd_levels! {
/// The backward pass's per-node work of a block of nodes: from the block's
/// squared distances `d` and per-head weights `p` (rows of $HK$, as
/// [`assign_block`] forms them) and the gradient `g` of the logits (rows
/// of $K$), the gradient `gd` of the distances (rows of $HK$, overwritten)
/// through each head's softmax of $u = -\alpha \ln(1 + d / \tau)$, and
/// each head's $\sum_j g_j p_{hj}$ added into `acc` (the convolution's
/// gradient), node by node in order. `terms`: the convolution's weights,
/// $K$, $\alpha$, $\tau$. Compiled for every SIMD level (the loops run
/// across a head's $K$ keys, each value its own sequence of operations),
/// so the bits do not depend on the CPU.
fn distance_grads_block<T: Scalar>(
    d: &[T],
    p: &[T],
    g: &[T],
    (conv, k, alpha, tau): (&[T], usize, T, T),
    acc: &mut [T],
    gd: &mut [T],
) {
    let m = conv.len() * k;
    if m == 0 {
        return;
    }
    let rows = gd.chunks_exact_mut(m).zip(d.chunks_exact(m)).zip(p.chunks_exact(m));
    for (((row, d), ph), g) in rows.zip(g.chunks_exact(k)) {
        for (a, ph) in acc.iter_mut().zip(ph.chunks_exact(k)) {
            for (&gj, &pj) in g.iter().zip(ph) {
                *a += gj * pj;
            }
        }
        for (head, &w) in conv.iter().enumerate() {
            let r = head * k..(head + 1) * k;
            let (phh, dh) = (&ph[r.clone()], &d[r.clone()]);
            let dot = g
                .iter()
                .zip(phh)
                .fold(T::zero(), |a, (&gj, &pj)| a + w * gj * pj);
            for (((o, &gj), &pj), &dj) in row[r].iter_mut().zip(g).zip(phh).zip(dh) {
                let gu = pj * (w * gj - dot);
                let dd = -alpha / (tau + dj);
                *o = if dd.is_finite() { gu * dd } else { T::zero() };
            }
        }
    }
}
}

simd_levels! {
/// $\bar X$'s share from the distances $d = \lVert x - \text{key}\rVert^2$
/// for a block of nodes: each row of `out` ($F$ wide) gets
/// $2\,(x \sum_j \bar d_j - \bar d K)$ added, from the rows of `gd`
/// ($HK$ wide, summed in order from 0), of `gd_keys` $= \bar d K$ and of
/// `x` (`(m, f)` = ($HK$, $F$)). Compiled for every SIMD level (the loop
/// runs across the $F$ columns), so the bits do not depend on the CPU.
fn distance_x_grads_block<T: Scalar>(
    gd: &[T],
    gd_keys: &[T],
    x: &[T],
    (m, f): (usize, usize),
    out: &mut [T],
) {
    let two = T::c(2.0);
    let rows = out.chunks_exact_mut(f).zip(x.chunks_exact(f)).zip(gd_keys.chunks_exact(f));
    for (((o, xr), gk), gdr) in rows.zip(gd.chunks_exact(m)) {
        let rs = gdr.iter().fold(T::zero(), |a, &v| a + v);
        for ((o, &xv), &kv) in o.iter_mut().zip(xr).zip(gk) {
            *o += two * (xv * rs - kv);
        }
    }
}
}

simd_levels! {
/// One block of nodes from `lo`: squared distances `db` and per-head
/// weights `pb` (rows of $HK$), logits `lb` (rows of $K$). Compiled for
/// every SIMD level the CPU may have and chosen at run time
/// ([`multiversion`]): the loops run across keys, lane by lane, so every
/// value is the same sequence of operations at any vector width (Rust never
/// fuses a multiply and an add), and the bits do not depend on the CPU.
fn assign_block<T: Scalar>(
    ctx: &AssignBlock<'_, T>,
    lo: usize,
    db: &mut [T],
    pb: &mut [T],
    lb: &mut [T],
) {
    let AssignBlock {
        xs,
        kt,
        conv,
        f,
        m,
        k,
        tau,
        alpha,
    } = *ctx;
    let unit_alpha = alpha == T::one();
    // squared distances, summed over the features in order, two nodes at a time
    let rows_here = lb.len() / k;
    let xr = |i: usize| &xs[(lo + i) * f..(lo + i + 1) * f];
    let mut pairs = db.chunks_exact_mut(2 * m);
    for (i, pair) in pairs.by_ref().enumerate() {
        let (d0, d1) = pair.split_at_mut(m);
        sq_dists([xr(2 * i), xr(2 * i + 1)], kt, [d0, d1]);
    }
    let last = pairs.into_remainder();
    if !last.is_empty() {
        sq_dists([xr(rows_here - 1)], kt, [last]);
    }
    let rows = db.chunks_exact(m).zip(pb.chunks_exact_mut(m));
    for ((d, ph), lg) in rows.zip(lb.chunks_exact_mut(k)) {
        // per-head Student-t assignments as ratios to the nearest
        // key's kernel: ((tau + d_min) / (tau + d_j))^alpha
        head_weights(d, ph, k, tau, alpha, unit_alpha);
        // 1x1 convolution over heads
        lg.fill(T::zero());
        for (&w, row) in conv.iter().zip(ph.chunks_exact(k)) {
            for (l, &p) in lg.iter_mut().zip(row) {
                *l += w * p;
            }
        }
    }
}
}

/// The per-head weights $S^{(h)}$ of one node (`ph`, $HK$) from its squared
/// distances `d` ($HK$): per head, Student-t assignments as ratios to the
/// nearest key's kernel, $((\tau + d_{\min}) / (\tau + d_j))^\alpha$,
/// normalised by their sum (taken over $j$ in order; a head whose
/// $\tau + d_{\min}$ is not finite gets $1/K$ everywhere). Called by
/// [`assign_block`], which both passes run (the backward pass recomputes a
/// chunk's distances and weights: same operations, same bits). Four heads at a time, so
/// their four sums advance side by side instead of one chain after another.
#[inline(always)]
fn head_weights<T: Scalar>(d: &[T], ph: &mut [T], k: usize, tau: T, alpha: T, unit_alpha: bool) {
    let mut dg = d.chunks_exact(4 * k);
    let mut pg = ph.chunks_exact_mut(4 * k);
    for (d4, p4) in (&mut dg).zip(&mut pg) {
        head_group::<T, 4>(d4, p4, k, tau, alpha, unit_alpha);
    }
    for (d1, p1) in dg
        .remainder()
        .chunks_exact(k)
        .zip(pg.into_remainder().chunks_exact_mut(k))
    {
        head_group::<T, 1>(d1, p1, k, tau, alpha, unit_alpha);
    }
}

/// [`head_weights`] for `G` heads (`d` and `ph` are $GK$ long).
#[inline(always)]
fn head_group<T: Scalar, const G: usize>(
    d: &[T],
    ph: &mut [T],
    k: usize,
    tau: T,
    alpha: T,
    unit_alpha: bool,
) {
    let mut uniform = [false; G];
    for ((dh, row), flat) in d
        .chunks_exact(k)
        .zip(ph.chunks_exact_mut(k))
        .zip(&mut uniform)
    {
        let base = tau + smallest(dh);
        if !base.is_finite() {
            row.fill(T::one() / T::from_count(k));
            *flat = true;
            continue;
        }
        // the test outside the loop: inside, a vectorised loop would
        // compute powf for every lane and select
        if unit_alpha {
            for (r, &dj) in row.iter_mut().zip(dh) {
                *r = base / (tau + dj);
            }
        } else {
            for (r, &dj) in row.iter_mut().zip(dh) {
                *r = (base / (tau + dj)).powf(alpha);
            }
        }
    }
    let mut z = [T::zero(); G];
    for j in 0..k {
        for (h, z) in z.iter_mut().enumerate() {
            *z += ph[h * k + j];
        }
    }
    for ((row, &z), &flat) in ph.chunks_exact_mut(k).zip(&z).zip(&uniform) {
        if !flat {
            for r in row.iter_mut() {
                *r /= z;
            }
        }
    }
}

/// The smallest value of `v` that is not NaN ($+\infty$ if there is none):
/// the fold of `min` from $+\infty$, in eight lanes so that it vectorises.
/// The minimum of a set does not depend on the order it is taken in, except
/// between $-0$ and $+0$, which give the same $\tau + d_{\min}$.
#[inline(always)]
fn smallest<T: Scalar>(v: &[T]) -> T {
    let mut m = [T::infinity(); 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (m, &x) in m.iter_mut().zip(c) {
            if x < *m {
                *m = x;
            }
        }
    }
    m.iter()
        .chain(chunks.remainder())
        .fold(T::infinity(), |a, &x| if x < a { x } else { a })
}

/// $\mathrm{out}_{ij} = \sum_f (x_{if} - K_{fj})^2$ for `R` nodes at once
/// (their features `x[i]`, $F$ each) and the $F \times M$ row-major `kt`
/// (the keys transposed), every sum taken over $f$ in order from 0: 16 keys
/// of `R` nodes at a time in registers, each loaded key used `R` times.
#[inline(always)]
fn sq_dists<T: Scalar, const R: usize>(x: [&[T]; R], kt: &[T], out: [&mut [T]; R]) {
    const TILE: usize = 16;
    let m = out[0].len();
    let f = x[0].len();
    let mut out = out;
    let mut j0 = 0;
    while j0 + TILE <= m {
        let mut acc = [[T::zero(); TILE]; R];
        for c in 0..f {
            let kr = &kt[c * m + j0..c * m + j0 + TILE];
            for (a, xi) in acc.iter_mut().zip(&x) {
                let xf = xi[c];
                for (a, &kv) in a.iter_mut().zip(kr) {
                    let e = xf - kv;
                    *a += e * e;
                }
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            o[j0..j0 + TILE].copy_from_slice(a);
        }
        j0 += TILE;
    }
    for (o, xi) in out.iter_mut().zip(&x) {
        for (j, o) in o.iter_mut().enumerate().skip(j0) {
            let mut acc = T::zero();
            for (c, &xf) in xi.iter().enumerate() {
                let e = xf - kt[c * m + j];
                acc += e * e;
            }
            *o = acc;
        }
    }
}

/// VJP of $\beta \sum_g \mathrm{kl}_g$ with respect to $S$ (through $P$ and the
/// column sums; a clamped value passes no gradient, as `torch.clamp`),
/// added to `gs`: $\mathrm{gs} \leftarrow \mathrm{gs} + \bar S_{\mathrm{kl}}$.
fn kl_vjp_add<T: Scalar>(
    gs: &mut Array2<T>,
    s: ArrayView2<T>,
    segs: &Segments,
    colsum: &Array2<T>,
    beta: T,
) {
    let eps = T::c(KL_EPS);
    let k = s.ncols();
    let two = T::c(2.0);
    let ss = row_major(&s);
    let cs = colsum.as_slice().expect("fresh array");
    // per node: the gradient through P~ and the direct term, then t = gP~ * P~
    let both = fill_node_rows(segs, 2 * k, |g, n, out| {
        let (srow, c) = (&ss[n * k..(n + 1) * k], &cs[g * k..(g + 1) * k]);
        let q = sharpened_sum(srow, c);
        let p = |j: usize| {
            if q > T::zero() {
                sharpened_entry(srow[j], c[j]) / q
            } else {
                T::zero()
            }
        };
        // d kl / d P = ln(P / S) + 1 (through the clamp only where P >= eps),
        // kept in the second half of the row until it is used
        let (head, gp) = out.split_at_mut(k);
        let mut dot = T::zero();
        for (j, g) in gp.iter_mut().enumerate() {
            let v = p(j);
            *g = if v >= eps {
                beta * ((v / srow[j].max(eps)).ln() + T::one())
            } else {
                T::zero()
            };
            dot += *g * v;
        }
        for j in 0..k {
            let (sv, pj) = (srow[j], p(j));
            let pc = pj.max(eps);
            let direct = if sv >= eps {
                -beta * pc / sv
            } else {
                T::zero()
            };
            let gpt = if q > T::zero() {
                (gp[j] - dot) / q
            } else {
                T::zero()
            };
            let through = if c[j] > T::zero() {
                gpt * two * sv / c[j]
            } else {
                T::zero()
            };
            head[j] = direct + through;
            gp[j] = gpt * sharpened_entry(sv, c[j]);
        }
    });
    // column sums: g c_gj = -sum_n gP~_nj P~_nj / c_gj, broadcast to the graph's nodes
    let tsum = segment_sum(both.slice(s![.., k..]), segs);
    let ts = tsum.as_slice().expect("fresh array");
    let bs = both.as_slice().expect("fresh array");
    let gsl = gs.as_slice_mut().expect("fresh array");
    for_each_node_slice(gsl, k, segs, |g, n, row| {
        for j in 0..k {
            let c = cs[g * k + j];
            let mut v = bs[n * 2 * k + j];
            if c > T::zero() {
                v -= ts[g * k + j] / c;
            }
            row[j] += v;
        }
    });
}

impl<T: Scalar> Layer<T> for MemPooling<T> {
    type Output = Pooled<T>;
    type Cache = MemPoolingCache<T>;

    fn forward(&self, batch: &DisjointBatch<T>) -> Result<(Pooled<T>, MemPoolingCache<T>)> {
        let (pooled, cache) = self.run(batch, true)?;
        Ok((pooled, cache.expect("requested")))
    }

    /// The forward pass without the cache.
    fn call(&self, batch: &DisjointBatch<T>) -> Result<Pooled<T>> {
        Ok(self.run(batch, false)?.0)
    }

    fn backward(
        &self,
        batch: &DisjointBatch<T>,
        cache: &MemPoolingCache<T>,
        grad: &PooledGrad<T>,
    ) -> Result<Gradients<T>> {
        cache.stamp.check(self.stamp(), "MemPooling")?;
        cache.input.check(batch)?;
        check_pooled_grad(grad, &cache.out_x_shape, cache.out_nnz, &["kl"])?;
        let (x, segs) = (batch.x().view(), batch.segments());
        let (h, k) = (self.heads, self.k);
        let b = segs.num_graphs();
        let keys = self.keys()?;
        let conv = self.params.vector(CONV)?;
        let conv = row_major_1d(&conv);
        let lin = self.params.matrix(LIN)?;
        let (tau, alpha) = (self.tau, self.alpha());
        let s = cache.assignment.s.view();
        let mut params = self.params.zeros_like();

        // X' = (S_g^T X_g) W
        // S_g^T X_g recomputed (one N x K x F product, against the N x HK x F
        // ones below) rather than cached: not held beside the backward's
        // N x F and N x K gradients
        let reduced = cache.assignment.reduce(x, segs);
        let (g_reduced, g_lin, _) = matmul_vjp(reduced.view(), lin, grad.x.view());
        drop(reduced);
        params.accumulate_dim(LIN, g_lin.view())?;
        let (mut gs, mut gx) = segment_matmul_tn_vjp(s, x, segs, g_reduced.view());
        drop(g_reduced);
        // A' (coarsened only)
        let mut ga = zero_edge_grad(batch);
        if let Some(connect) = &cache.connect {
            let g_blocks = grad
                .edge_weights
                .view()
                .into_shape_with_order((b * k, k))
                .map_err(|e| PoolError::GradientShape {
                    what: "pooled edge weights".into(),
                    expected: format!("{} = B * K * K values", b * k * k),
                    got: e.to_string(),
                })?;
            ga = cache.assignment.connect_blocks_vjp_add(
                batch.a().view(),
                segs,
                batch.symmetric_graphs(),
                connect,
                g_blocks,
                batch.edge_weight_grad(),
                &mut gs,
            );
        }
        // kl
        let g_kl = grad.loss("kl") / T::from_count(b.max(1));
        if g_kl != T::zero() {
            kl_vjp_add(&mut gs, s, segs, &cache.colsum, g_kl);
        }
        // softmax over clusters, then the 1x1 convolution over heads
        let mut gz = gs;
        softmax_rows_vjp_in_place(s, &mut gz);
        let m = h * k;
        let f = x.ncols();
        let gzs = gz.as_slice().expect("fresh array");
        let xs = row_major(&x);
        let kt = transposed_keys(&keys);
        let ctx = self.block_context(&xs, f, &kt, &conv);
        let two = T::c(2.0);
        // one pass over the fixed chunks of reduce_chunked: per chunk the
        // distances and per-head weights of the forward pass, recomputed
        // by its own assign_block (the same bits; the N x HK distances are
        // not kept between the passes), then per node the gradient of the
        // distances gd (a chunk at a time, never N x HK), its share of gx,
        // and the partial sums of the convolution, key and column
        // gradients, folded in chunk order
        let (g_conv, gk_t, gd_col) = reduce_chunked_rows(
            &mut gx,
            |nodes, mut gx_rows| {
                let rows = nodes.len();
                let mut acc = Array1::<T>::zeros(h);
                let (mut dc, mut pc) = (vec![T::zero(); rows * m], vec![T::zero(); rows * m]);
                if m > 0 {
                    let mut logits = vec![T::zero(); rows * k];
                    assign_block(&ctx, nodes.start, &mut dc, &mut pc, &mut logits);
                }
                let mut gd = Array2::<T>::zeros((rows, m));
                let g = &gzs[nodes.start * k..nodes.end * k];
                let gds = gd.as_slice_mut().expect("fresh array");
                let terms = (&conv[..], k, alpha, tau);
                distance_grads_block(&dc, &pc, g, terms, acc.as_slice_mut().expect("fresh"), gds);
                // d = |x - key|^2: gx = 2 (x * rowsum(gd) - gd K),
                // gkey = 2 (colsum(gd) key - gd^T x)
                let xc = x.slice(s![nodes.clone(), ..]);
                let gk_part = xc.t().dot(&gd);
                let col_part = column_sums(gd.view());
                if f > 0 {
                    let gd_keys = matmul(gd.view(), keys.view(), None);
                    let gds = gd.as_slice().expect("fresh array");
                    let gks = gd_keys.as_slice().expect("fresh array");
                    let xr = &xs[nodes.start * f..nodes.end * f];
                    let out = gx_rows
                        .as_slice_mut()
                        .expect("rows of a standard-layout matrix");
                    distance_x_grads_block(gds, gks, xr, (m, f), out);
                }
                (acc, gk_part, col_part)
            },
            |(a, b, c), (d, e, f2)| (a + d, b + e, c + f2),
        );
        params.accumulate_dim(CONV, g_conv.view())?;
        let mut g_keys: Array2<T> = keys.clone();
        Zip::from(g_keys.rows_mut())
            .and(&gd_col)
            .and(gk_t.t().rows())
            .for_each(|mut row, &c, gxt| {
                Zip::from(&mut row)
                    .and(&gxt)
                    .for_each(|kv, &v| *kv = two * (c * *kv - v));
            });
        let g_keys = g_keys
            .into_shape_with_order((h, k, self.in_channels))
            .map_err(|e| PoolError::ParameterShape {
                name: format!("{KEYS} gradient ({e})"),
                expected: vec![h, k, self.in_channels],
                got: vec![h * k, self.in_channels],
            })?;
        params.accumulate_dim(KEYS, g_keys.view())?;
        finite_gradients(
            "MemPooling",
            Gradients {
                x: gx,
                edge_weights: ga,
                params,
            },
        )
    }

    fn params(&self) -> &Params<T> {
        &self.params
    }

    fn set_param(&mut self, name: &str, value: ArrayD<T>) -> Result<()> {
        self.params.set(name, value)
    }
}

impl<T: Scalar> SrcPool<T> for MemPooling<T> {
    fn return_selection(&self) -> bool {
        self.return_selection
    }

    /// $S = \operatorname{softmax}\big(\sum_h w_h S^{(h)}\big)$.
    fn select(&self, batch: &DisjointBatch<T>) -> Result<(Selection<T>, Option<Array1<T>>)> {
        self.check_input(batch)?;
        let s = self.assign(batch.x().view())?;
        Ok((Selection::Dense(DenseAssignment { s }), None))
    }

    /// $X'_g = (S_g^\top X_g) W$. MemPooling only makes dense assignments:
    /// any other selection gives 0 rows.
    fn reduce(&self, batch: &DisjointBatch<T>, selection: &Selection<T>) -> Array2<T> {
        match selection {
            Selection::Dense(s) => self
                .reduce_features(s, batch.x().view(), batch.segments())
                .map(|(x, _)| x)
                .unwrap_or_else(|_| Array2::zeros((0, self.out_channels))),
            _ => Array2::zeros((0, self.out_channels)),
        }
    }

    /// The adjacency chosen by [`MemAdjacency`].
    fn connect(&self, batch: &DisjointBatch<T>, selection: &Selection<T>) -> CsMat<T> {
        match selection {
            Selection::Dense(s) => self.connect_graph(s, batch).0,
            _ => CsMat::zero((0, 0)),
        }
    }

    /// `kl`, as in the forward pass.
    fn losses(&self, batch: &DisjointBatch<T>, selection: &Selection<T>) -> Result<Losses<T>> {
        let mut losses = Losses::new();
        if let Selection::Dense(s) = selection {
            losses.insert("kl".into(), kl_loss(s.s.view(), batch.segments()).0);
        }
        Ok(losses)
    }

    /// The forward pass of [`Layer::forward`] without its cache.
    fn pool(&self, batch: &DisjointBatch<T>) -> Result<Pooled<T>> {
        self.call(batch)
    }
}
