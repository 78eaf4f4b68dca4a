//! LaPool: soft assignment of every node to the Laplacian "leaders" of its graph.

use ndarray::{Array1, Axis, Zip};
use rayon::prelude::*;
use sprs::CsMat;

use crate::batch::{check_finite_2d, DisjointBatch};
use crate::error::{PoolError, Result};
use crate::framework::layer::{check_pooled_grad, finite_gradients, InputSignature, LayerStamp};
use crate::framework::pooled::cached_and_returned;
use crate::framework::{
    Gradients, Layer, Losses, Pooled, PooledGrad, Selection, SparseAssignment, SparseConnectCache,
    SrcPool,
};
use crate::kernels::sort::check_scores;
use crate::kernels::sparse::{
    cosine_at, cosine_at_vjp_acc, laplacian_row_norms, row_softmax, row_softmax_vjp,
    undirected_path_lengths, undirected_path_lengths_vjp,
};
use crate::nn::Params;
use crate::scalar::Scalar;
use crate::Segments;

/// LaPool (Noutahi et al., *Towards Interpretable Sparse Graph
/// Representation Learning with Laplacian Pooling*, 2019; Spektral `LaPool`):
/// $$v = \|L X\|_2 \text{ per node}, \qquad
/// \mathcal{L} = \{ i : v_i \ge v_j \ \forall j \text{ with } a_{ij} \text{ stored} \},$$
/// $$S_{il} = \beta_{il} \operatorname{softmax}_{l \in \mathcal{L}_g}\Big(\frac{\langle x_i, x_l\rangle}{\|x_i\|\|x_l\|}\Big)
/// \text{ for } i \notin \mathcal{L}, \qquad S_{ll'} = \delta_{ll'} \text{ for leaders},$$
/// $$X' = S^\top X, \qquad A' = S^\top A S,$$
/// where $L = D - A$ with the weighted degrees $D_{ii} = \sum_j a_{ij}$, the
/// softmax runs over the leaders $\mathcal{L}_g$ of node $i$'s own graph,
/// and $\beta_{il} = 1 / \mathrm{dist}(i, l)$ (undirected shortest path,
/// edge weights as lengths; 0 where unreachable) with
/// `shortest_path_reg`, else 1. No parameters.
///
/// Shapes: $S$ is $N \times L$ ($L$ = leaders of the whole batch, one column
/// per leader in node order), sparse: row $i$ stores one entry per leader
/// of its graph (a leader's row only its own 1). $X'$ is $L \times F$, $A'$
/// is $L \times L$ block-diagonal CSR, the pooled segments hold the leaders
/// of each graph. [`Pooled::selection`] is the [`Selection::Sparse`] $S$ when
/// asked for ([`LaPool::with_return_selection`]), `None` by default.
/// Memory is $O(\mathrm{nnz} + N F + \sum_g n_g L_g)$: no $N \times N$ matrix,
/// shortest paths are Dijkstra runs from each leader on the CSR (Spektral
/// densifies $A$ and runs scipy on all pairs).
///
/// Spektral's definition, kept (its `reference` notes): the softmax is
/// `tf.sparse.softmax` (the docstring says sparsemax), $S$ is not
/// renormalised after $\beta$, a node is a leader when $v_i \ge v_j$ over
/// every stored entry $(i, j)$ (an isolated node is a leader, equal
/// neighbours are both leaders); path lengths are
/// `scipy.sparse.csgraph.shortest_path(dense(A), directed=False)`'s: the
/// smaller of $a_{ij}, a_{ji}$, zero weights are no edge.
///
/// Defined where Spektral is not:
/// * the cosine similarity with a zero feature vector is 0 (Spektral: NaN);
/// * a negative edge weight with `shortest_path_reg` is a
///   [`PoolError::NegativePathLength`] (scipy: negative cycle error);
/// * a non-finite $v$ (overflowing features) is a [`PoolError::NonFiniteScore`];
/// * the Laplacian signal and the cosines use overflow-safe norms
///   ([`crate::kernels::row_norms`]): features of magnitude $10^{30}$ work
///   in `f32` too; an overflowing pooled output is a [`PoolError::NonFinite`];
/// * a zero-weight edge is no path (scipy's dense zero) but still a
///   neighbour for the leader test; a self loop never shortens a path;
/// * an empty graph has no leader and no pooled node; every non-empty graph
///   has at least one leader (its node of largest $v$).
///
/// Gradients flow through $S$ (the cosine similarities, the softmax and,
/// with `shortest_path_reg`, the path lengths: $\partial\,\mathrm{dist}/\partial a_e$
/// is 1 on the shortest path) into $X$ and the edge weights, and through
/// $X' = S^\top X$, $A' = S^\top A S$. The Laplacian only decides the
/// leaders, which is piecewise constant: it contributes no gradient.
/// (Spektral's $\beta$ comes from `tf.numpy_function` and gets no gradient.)
///
/// ```
/// use graphpool::{layers::LaPool, framework::Layer, DisjointBatch};
/// use ndarray::array;
/// use sprs::TriMat;
///
/// // a path 0 - 1 - 2: node 1 has the largest Laplacian signal
/// let mut t = TriMat::new((3, 3));
/// for (i, j) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
///     t.add_triplet(i, j, 1.0);
/// }
/// let b = DisjointBatch::single(array![[1.0_f64, 0.0], [0.0, 4.0], [1.0, 1.0]], t.to_csr())?;
/// let p = LaPool::new(true).call(&b)?;
/// assert_eq!(p.batch.num_nodes(), 1); // one leader, node 1
/// // one leader: softmax 1, times beta = 1 / dist = 1 for both neighbours
/// assert_eq!(p.batch.x(), &array![[2.0, 5.0]]);
/// # Ok::<(), graphpool::PoolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LaPool {
    shortest_path_reg: bool,
    /// Whether [`Pooled::selection`] holds $S$
    /// ([`LaPool::with_return_selection`]).
    return_selection: bool,
}

impl Default for LaPool {
    /// Spektral's default: `shortest_path_reg = True`.
    fn default() -> Self {
        Self {
            shortest_path_reg: true,
            return_selection: false,
        }
    }
}

/// Saved state of [`LaPool`]'s forward pass.
#[derive(Debug, Clone)]
pub struct LaPoolCache<T: Scalar> {
    assignment: SparseAssignment<T>,
    cos: Array1<T>,
    soft: Array1<T>,
    /// $\beta$ aligned with $S$ (`None` without the regularisation: all 1).
    beta: Option<Array1<T>>,
    /// Per leader, for the path-length VJP: the graph's first node.
    graph_start: Vec<usize>,
    connect: SparseConnectCache<T>,
    x_shape: [usize; 2],
    nnz: usize,
    input: InputSignature,
    stamp: LayerStamp,
}

/// What the selection step computes.
struct Select<T: Scalar> {
    assignment: SparseAssignment<T>,
    cos: Array1<T>,
    soft: Array1<T>,
    beta: Option<Array1<T>>,
    graph_start: Vec<usize>,
}

impl LaPool {
    /// LaPool with or without the shortest-path regularisation $\beta$.
    pub fn new(shortest_path_reg: bool) -> Self {
        Self {
            shortest_path_reg,
            return_selection: false,
        }
    }

    /// Whether $\beta = 1/\mathrm{dist}$ is applied.
    pub fn shortest_path_reg(&self) -> bool {
        self.shortest_path_reg
    }

    super::return_selection_methods!("LaPool::default()", return_selection);

    /// The leaders of every graph, ascending: nodes whose Laplacian signal
    /// $v_i = \|(LX)_i\|_2$ is at least that of every stored neighbour.
    ///
    /// # Errors
    /// [`PoolError::NonFiniteScore`] if some $v_i$ is not finite.
    pub fn leaders<T: Scalar>(&self, batch: &DisjointBatch<T>) -> Result<Vec<usize>> {
        let a = batch.a();
        // overflow-safe: rows of 1e30 have a finite signal in f32 too; LX
        // is never held whole
        let v: Array1<T> = laplacian_row_norms(a.view(), batch.x().view());
        check_scores(v.view())?;
        let is_leader: Vec<bool> = (0..a.rows())
            .into_par_iter()
            .map(|i| {
                a.outer_view(i)
                    .is_none_or(|row| row.indices().iter().all(|&j| v[i] >= v[j]))
            })
            .collect();
        Ok((0..a.rows()).filter(|&i| is_leader[i]).collect())
    }

    fn select<T: Scalar>(&self, batch: &DisjointBatch<T>) -> Result<Select<T>> {
        let n = batch.num_nodes();
        let segments = batch.segments();
        let leaders = self.leaders(batch)?;
        // leader columns of each graph: lead_off[g]..lead_off[g + 1]
        let mut lead_off = vec![0usize; segments.num_graphs() + 1];
        let mut col_of = vec![usize::MAX; n];
        for (j, &l) in leaders.iter().enumerate() {
            lead_off[segments.graph_of(l) + 1] += 1;
            col_of[l] = j;
        }
        for g in 0..segments.num_graphs() {
            lead_off[g + 1] += lead_off[g];
        }
        let graph_start: Vec<usize> = leaders
            .iter()
            .map(|&l| segments.range(segments.graph_of(l)).start)
            .collect();
        // the path lengths before S: their search structure is freed
        // before S and its values are formed
        let dist = if self.shortest_path_reg {
            Some(undirected_path_lengths(
                batch.a().view(),
                segments,
                &leaders,
            )?)
        } else {
            None
        };
        // the pattern of S: one entry per leader of the row's graph, a
        // leader's row only its own column
        let mut indptr = Vec::with_capacity(n + 1);
        indptr.push(0);
        let nnz: usize = segments
            .ranges()
            .enumerate()
            .map(|(g, r)| {
                let k = lead_off[g + 1] - lead_off[g];
                k + (r.len() - k) * k
            })
            .sum();
        let mut indices = Vec::with_capacity(nnz);
        for (g, r) in segments.ranges().enumerate() {
            for i in r {
                if col_of[i] != usize::MAX {
                    indices.push(col_of[i]);
                } else {
                    indices.extend(lead_off[g]..lead_off[g + 1]);
                }
                indptr.push(indices.len());
            }
        }
        let nnz = indices.len();
        let l = leaders.len();
        let mut s = CsMat::new((n, l), indptr, indices, vec![T::zero(); nnz]);
        let x = batch.x().view();
        let x_leaders = x.select(Axis(0), &leaders);
        let cos = cosine_at(s.view(), x, x_leaders.view());
        drop(x_leaders);
        s.data_mut().iter_mut().zip(&cos).for_each(|(d, &c)| *d = c);
        let soft = row_softmax(s.view());
        let beta = dist.map(|dist| Array1::from(beta_values(&s, &col_of, &dist, &graph_start)));
        match &beta {
            Some(b) => Zip::from(s.data_mut())
                .and(&soft)
                .and(b)
                .for_each(|d, &p, &b| *d = p * b),
            None => s
                .data_mut()
                .iter_mut()
                .zip(&soft)
                .for_each(|(d, &p)| *d = p),
        }
        Ok(Select {
            assignment: SparseAssignment { s, leaders },
            cos,
            soft,
            beta,
            graph_start,
        })
    }

    /// The forward pass, with its cache when `keep`.
    fn run<T: Scalar>(
        &self,
        batch: &DisjointBatch<T>,
        keep: bool,
    ) -> Result<(Pooled<T>, Option<LaPoolCache<T>>)> {
        let sel = self.select(batch)?;
        let assignment = sel.assignment;
        // what only the backward pass reads
        let saved = keep.then_some((sel.cos, sel.soft, sel.beta, sel.graph_start));
        let x = assignment.reduce(batch.x().view());
        check_finite_2d(&x.view(), "pooled x (overflow in S^T X)")?;
        let (a, connect) = assignment.connect(batch.a().view());
        // the connect step's products go with the rest, or are freed here
        let saved = saved.map(|values| (values, connect));
        if let Some(p) = a.data().iter().position(|v| !v.is_finite()) {
            return Err(PoolError::NonFinite {
                what: "pooled adjacency (overflow in S^T A S)".into(),
                index: format!("entry {p}"),
                value: a.data()[p].to_string(),
            });
        }
        let segments: Segments = assignment.reduce_index(batch.segments());
        let x_shape = [x.nrows(), x.ncols()];
        let nnz = a.nnz();
        let (kept, returned) =
            cached_and_returned(keep, self.return_selection, assignment, Clone::clone);
        let cache = kept.zip(saved).map(|(assignment, (values, connect))| {
            let (cos, soft, beta, graph_start) = values;
            LaPoolCache {
                assignment,
                cos,
                soft,
                beta,
                graph_start,
                connect,
                x_shape,
                nnz,
                input: InputSignature::of(batch),
                stamp: LayerStamp::of("LaPool", &self.shortest_path_reg, T::no_params()),
            }
        });
        let pooled = Pooled::checked(
            "LaPool",
            x,
            a,
            segments,
            returned.map(Selection::Sparse),
            None,
            Losses::new(),
        )?;
        Ok((pooled, cache))
    }
}

/// $\beta$ aligned with the pattern `s`: 1 on a leader's row, else
/// $1/\mathrm{dist}$ (0 where unreachable).
fn beta_values<T: Scalar>(
    s: &CsMat<T>,
    col_of: &[usize],
    dist: &[Vec<f64>],
    graph_start: &[usize],
) -> Vec<T> {
    let ip = s.indptr();
    let ip = ip.raw_storage();
    let idx = s.indices();
    (0..s.rows())
        .into_par_iter()
        .flat_map_iter(|i| {
            idx[ip[i]..ip[i + 1]].iter().map(move |&j| {
                if col_of[i] != usize::MAX {
                    T::one()
                } else {
                    let d = dist[j][i - graph_start[j]];
                    if d.is_finite() && d > 0.0 {
                        T::c(1.0 / d)
                    } else {
                        T::zero()
                    }
                }
            })
        })
        .collect()
}

impl<T: Scalar> Layer<T> for LaPool {
    type Output = Pooled<T>;
    type Cache = LaPoolCache<T>;

    fn forward(&self, batch: &DisjointBatch<T>) -> Result<(Pooled<T>, Self::Cache)> {
        let (pooled, cache) = self.run(batch, true)?;
        Ok((pooled, cache.expect("a cache when asked")))
    }

    /// The forward pass without its cache: the softmax's inputs and outputs
    /// and the connect step's products are freed as soon as they are used.
    fn call(&self, batch: &DisjointBatch<T>) -> Result<Pooled<T>> {
        Ok(self.run(batch, false)?.0)
    }

    fn backward(
        &self,
        batch: &DisjointBatch<T>,
        cache: &Self::Cache,
        grad: &PooledGrad<T>,
    ) -> Result<Gradients<T>> {
        let stamp = LayerStamp::of("LaPool", &self.shortest_path_reg, T::no_params());
        cache.stamp.check(stamp, "LaPool")?;
        cache.input.check(batch)?;
        check_pooled_grad(grad, &cache.x_shape, cache.nnz, &[])?;
        let x = batch.x().view();
        let a = batch.a().view();
        let asg = &cache.assignment;
        let (gs_reduce, mut gx) = asg.reduce_vjp(x, grad.x.view());
        let edge_grad = batch.edge_weight_grad();
        let (gs_connect, mut ga) =
            asg.connect_vjp_opt(a, &cache.connect, grad.edge_weights.view(), edge_grad);
        let gs = gs_reduce + gs_connect;
        // S = beta * softmax(cos)
        let g_soft = match &cache.beta {
            Some(b) => &gs * b,
            None => gs.clone(),
        };
        let g_cos = row_softmax_vjp(asg.s.view(), cache.soft.view(), g_soft.view());
        let x_leaders = x.select(Axis(0), &asg.leaders);
        let g_leaders = cosine_at_vjp_acc(
            // the connect step's transpose of S has S's pattern
            (asg.s.view(), Some(&cache.connect.st)),
            x,
            x_leaders.view(),
            cache.cos.view(),
            g_cos.view(),
            &mut gx,
        );
        for (j, &l) in asg.leaders.iter().enumerate() {
            let mut row = gx.row_mut(l);
            row += &g_leaders.row(j);
        }
        if let (Some(beta), Some(ga)) = (&cache.beta, &mut ga) {
            // d beta / d dist = -beta^2, on non-leader rows with a finite path
            let mut g_dist: Vec<Vec<f64>> = asg
                .leaders
                .iter()
                .zip(&cache.graph_start)
                .map(|(&l, &start)| {
                    vec![0.0; batch.segments().range(batch.segments().graph_of(l)).end - start]
                })
                .collect();
            let ip = asg.s.indptr();
            let ip = ip.raw_storage();
            for i in 0..asg.s.rows() {
                for e in ip[i]..ip[i + 1] {
                    let j = asg.s.indices()[e];
                    if asg.leaders[j] == i || beta[e] == T::zero() {
                        continue;
                    }
                    let g = gs[e] * cache.soft[e] * (-beta[e] * beta[e]);
                    g_dist[j][i - cache.graph_start[j]] = g.to_f64().unwrap_or(0.0);
                }
            }
            *ga += &undirected_path_lengths_vjp(a, batch.segments(), &asg.leaders, &g_dist)?;
        }
        finite_gradients(
            "LaPool",
            Gradients {
                x: gx,
                edge_weights: ga,
                params: Params::new(),
            },
        )
    }

    fn params(&self) -> &Params<T> {
        T::no_params()
    }
}

impl<T: Scalar> SrcPool<T> for LaPool {
    fn return_selection(&self) -> bool {
        self.return_selection
    }

    fn select(&self, batch: &DisjointBatch<T>) -> Result<(Selection<T>, Option<Array1<T>>)> {
        Ok((
            Selection::Sparse(LaPool::select(self, batch)?.assignment),
            None,
        ))
    }

    fn pool(&self, batch: &DisjointBatch<T>) -> Result<Pooled<T>> {
        Ok(self.forward(batch)?.0)
    }
}
