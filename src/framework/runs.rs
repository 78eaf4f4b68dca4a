//! Pooling a batch of many small graphs run by run: runs of consecutive
//! whole graphs, each pooled as a batch of its own
//! ([`crate::DisjointBatch::graph_run`]), in parallel, so that the steps of
//! a layer read each other's $N \times F$ and $N \times K$ intermediates
//! from cache instead of memory. The helpers here cut a batch into runs,
//! split the batch's outputs into the runs' rows, and add the runs'
//! parameter gradients in run order.

use std::mem::MaybeUninit;
use std::ops::Range;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

use crate::batch::{DisjointBatch, Segments};
use crate::error::Result;
use crate::framework::layer::{finite_gradients, finite_gradients_given_x};
use crate::framework::Gradients;
use crate::kernels::rows;
use crate::nn::Params;
use crate::scalar::Scalar;

/// The default node budget of a run of whole graphs that a batch of small
/// graphs is pooled by (`with_run_nodes` of [`crate::layers::MinCutPool`],
/// DMoNPool, JustBalancePool, AsymCheegerCutPool and DiffPool):
/// 0.25 MiB of a 64-wide `f32` $X$, so that a run's $X$, $S$ and
/// intermediates stay in a core's L2 cache (1 MiB on the bench machine)
/// between the steps that read them. Of budgets 256 to 4096, 1024 was the
/// fastest for MinCutPool on the `disjoint-small` bench workload.
pub const RUN_NODES: usize = 1024;

/// Cuts a batch of small graphs into runs of consecutive whole graphs of
/// at most `budget` nodes together (a run takes graphs while they fit),
/// each pooled as a batch of its own; `None` (pool the batch whole) if the
/// budget is 0, a graph has more than `budget` nodes, or there would be a
/// single run. The runs depend on the graph sizes alone, never on the
/// thread count.
pub(crate) fn graph_runs(seg: &Segments, budget: usize) -> Option<Vec<Range<usize>>> {
    let b = seg.num_graphs();
    if budget == 0 {
        return None;
    }
    let mut runs = Vec::with_capacity(seg.num_nodes() / budget + 1);
    let (mut start, mut nodes) = (0, 0);
    for g in 0..b {
        let size = seg.size(g);
        if size > budget {
            return None;
        }
        if nodes + size > budget {
            runs.push(start..g);
            (start, nodes) = (g, 0);
        }
        nodes += size;
    }
    if start < b {
        runs.push(start..b);
    }
    (runs.len() > 1).then_some(runs)
}

/// Cuts `data` (rows of `width` entries) into the consecutive row counts
/// `rows`, in order.
pub(crate) fn split_rows<T>(
    mut data: &mut [T],
    width: usize,
    rows: impl Iterator<Item = usize>,
) -> Vec<&mut [T]> {
    rows.map(|r| {
        let (head, tail) = std::mem::take(&mut data).split_at_mut(r * width);
        data = tail;
        head
    })
    .collect()
}

/// Copies `src` (any layout) into `dst`, row-major.
pub(crate) fn copy_rows<T: Scalar>(dst: &mut [T], src: ArrayView2<'_, T>) {
    dst.copy_from_slice(&rows::row_major(&src));
}

/// The sum of the runs' parameter gradients `parts`, added in run order
/// (so the same bits whatever the thread count), shaped like `params`.
///
/// # Errors
/// A part that does not have `params`' names and shapes.
pub(crate) fn sum_in_order<T: Scalar>(
    params: &Params<T>,
    parts: &[Params<T>],
) -> Result<Params<T>> {
    let mut total = params.zeros_like();
    for p in parts {
        for (name, v) in p.iter() {
            total.accumulate(name, v.view())?;
        }
    }
    Ok(total)
}

/// The state each run keeps for the backward pass, with the run's graphs,
/// in run order.
pub(crate) type RunStates<S> = Vec<(Range<usize>, S)>;

/// The forward state `S` a layer keeps for its backward pass: the whole
/// batch's, or each run's.
#[derive(Debug, Clone)]
pub(crate) enum Saved<S> {
    Whole(Box<S>),
    Runs(RunStates<S>),
}

impl<S: Sync> Saved<S> {
    /// The backward pass from the saved state of `layer` (its name, for
    /// errors), which has `k` pooled rows per graph: `pass(batch, state,
    /// rows)` on the whole batch, or on each run's batch through
    /// [`backward_by_runs`], with `rows` the pooled rows whose output
    /// gradients are the batch's (or run's). The gradients are checked
    /// ([`finite_gradients`]); run by run, each run scans its rows of
    /// $\bar X$ as it copies them, so $\bar X$ is not read again.
    ///
    /// # Errors
    /// Those of `pass`; a non-finite gradient.
    pub(crate) fn backward<T, F>(
        &self,
        layer: &str,
        batch: &DisjointBatch<T>,
        params: &Params<T>,
        k: usize,
        pass: F,
    ) -> Result<Gradients<T>>
    where
        T: Scalar,
        F: Fn(&DisjointBatch<T>, &S, Range<usize>) -> Result<Gradients<T>> + Sync,
    {
        match self {
            Saved::Whole(state) => {
                finite_gradients(layer, pass(batch, state, 0..batch.num_graphs() * k)?)
            }
            Saved::Runs(runs) => {
                // known once for the batch, then carried over to every run
                batch.symmetric_graphs();
                let (gradients, x_first_bad) =
                    backward_by_runs(batch, runs, params, |run, graphs, state| {
                        pass(run, state, graphs.start * k..graphs.end * k)
                    })?;
                finite_gradients_given_x(layer, gradients, x_first_bad)
            }
        }
    }
}

/// The outputs of a dense-assignment pool (one $K \times K$ block and $K$
/// pooled rows per graph), written run by run: $X'$ ($BK \times C$), the
/// stacked blocks ($BK \times K$), $S$ ($N \times K$, when asked for) and
/// some per-graph values ($B$ each), all in fresh memory; `finite` if every run found its
/// $X'$, blocks and $S$ finite as it wrote them ([`RunRows::fill`]).
pub(crate) struct DenseRunOutputs<T: Scalar> {
    pub x_out: Array2<T>,
    pub blocks: Array2<T>,
    pub s: Option<Array2<T>>,
    pub per_graph: Vec<Vec<T>>,
    pub finite: bool,
}

/// One run's rows of [`DenseRunOutputs`], not yet written: [`RunRows::fill`]
/// writes every one of them.
pub(crate) struct RunRows<'a, T> {
    graphs: Range<usize>,
    /// `None` once taken by [`RunRows::x_rows`]
    x_out: Option<&'a mut [MaybeUninit<T>]>,
    /// where the run's rows of $X'$ start, to recognise them when written
    x_at: usize,
    blocks: &'a mut [MaybeUninit<T>],
    /// `None` when the batch's $S$ is not returned
    s: Option<&'a mut [MaybeUninit<T>]>,
    per_graph: Vec<&'a mut [MaybeUninit<T>]>,
}

/// A run's rows of $X'$ (row-major, not yet written), taken from its
/// [`RunRows`] for a kernel to write in place ([`XRows::write`]).
pub(crate) struct XRows<'a, T>(&'a mut [MaybeUninit<T>]);

impl<'a, T: Scalar> XRows<'a, T> {
    /// Writes the rows with `write`, which gets them unwritten and returns
    /// them written (a kernel's `_into` form: an initialised slice can only
    /// come from writing every entry), and scans them for a non-finite
    /// value while they are in cache.
    ///
    /// # Panics
    /// If `write` returns other memory than the rows it got (a bug;
    /// [`rows::write_whole`]).
    pub(crate) fn write(
        self,
        write: impl FnOnce(&'a mut [MaybeUninit<T>]) -> &'a mut [T],
    ) -> XWritten {
        let rows = rows::write_whole(self.0, write);
        XWritten {
            at: rows.as_ptr() as usize,
            finite: rows::first_non_finite_in(rows).is_none(),
        }
    }
}

/// The proof that a run's rows of $X'$ are written ([`XRows::write`]),
/// with whether they are all finite.
#[derive(Debug)]
#[must_use]
pub(crate) struct XWritten {
    at: usize,
    finite: bool,
}

/// A forward pass's $X'$: its own (a whole batch's, or a run's that
/// [`RunRows::fill`] copies into its rows), or the proof that it was
/// written in place into a run's rows ([`RunRows::x_rows`]).
pub(crate) enum XOut<T> {
    Own(Array2<T>),
    Written(XWritten),
}

impl<T: Scalar> XOut<T> {
    /// $X'$ ($R \times C$) written by `write` (a kernel's `_into` form) into
    /// `x_rows` if given (a run's rows of the batch's, [`XRows::write`]),
    /// else into a matrix of its own ([`rows::written_matrix`]).
    pub(crate) fn write(
        x_rows: Option<XRows<'_, T>>,
        (r, c): (usize, usize),
        write: impl FnOnce(&mut [MaybeUninit<T>]) -> &mut [T],
    ) -> Self {
        match x_rows {
            Some(rows) => XOut::Written(rows.write(write)),
            None => XOut::Own(rows::written_matrix(r, c, write)),
        }
    }

    /// $X'$ when it is the pass's own; `None` once written in place.
    pub(crate) fn into_own(self) -> Option<Array2<T>> {
        match self {
            XOut::Own(x) => Some(x),
            XOut::Written(_) => None,
        }
    }
}

/// What [`RunRows::fill`] found of the values it copied: whether $X'$, the
/// blocks and $S$ are all finite, and the run (its graphs) whose rows it
/// wrote. A run returns it to [`DenseRunOutputs::by_runs`], which takes it
/// as the proof that the run's rows are written.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub(crate) struct Filled {
    graphs: Range<usize>,
    finite: bool,
}

impl<'a, T: Scalar> RunRows<'a, T> {
    /// The run's rows of $X'$, for the run to write in place (then
    /// [`RunRows::fill`] gets [`XOut::Written`]): no copy of the run's own,
    /// and each block is written while the run's $S$ and $X$ are in cache.
    ///
    /// # Panics
    /// If they were taken already (a bug).
    pub(crate) fn x_rows(&mut self) -> XRows<'a, T> {
        XRows(self.x_out.take().expect("X' rows taken once"))
    }

    /// Writes a run's $X'$ (unless [`XOut::Written`] in place through
    /// [`RunRows::x_rows`]), blocks, $S$ (when returned) and per-graph
    /// values into its rows of the batch's, every one of them, and scans
    /// $X'$, the blocks and $S$ for a non-finite value while they are still
    /// in cache, so that the batch's outputs need not be read again to be
    /// checked ([`crate::framework::Pooled::checked_by_runs`]).
    ///
    /// # Panics
    /// If a value's shape is not that of the run's rows, or $X'$ is
    /// neither given nor written in this run's rows (bugs of the layer, not
    /// of its input).
    pub(crate) fn fill(
        self,
        x_out: XOut<T>,
        blocks: ArrayView2<'_, T>,
        s: ArrayView2<'_, T>,
        per_graph: &[ArrayView1<'_, T>],
    ) -> Filled {
        assert_eq!(
            per_graph.len(),
            self.per_graph.len(),
            "one value per graph each"
        );
        // X' copied with the blocks and S, or already written and scanned
        let (x_dst, x_own, mut finite) = match (self.x_out, x_out) {
            (Some(dst), XOut::Own(src)) => (Some(dst), Some(src), true),
            (None, XOut::Written(w)) => {
                assert_eq!(w.at, self.x_at, "X' written into this run's rows");
                (None, None, w.finite)
            }
            _ => panic!("X' neither given nor written in place"),
        };
        for (dst, src) in x_dst
            .zip(x_own.as_ref().map(|x| x.view()))
            .into_iter()
            .chain([(self.blocks, blocks)])
            .chain(self.s.map(|dst| (dst, s)))
        {
            let src = rows::row_major(&src);
            finite &= rows::first_non_finite_in(&src).is_none();
            rows::write_slice(dst, &src);
        }
        for (dst, src) in self.per_graph.into_iter().zip(per_graph) {
            rows::write_slice(dst, &rows::row_major_1d(src));
        }
        Filled {
            graphs: self.graphs,
            finite,
        }
    }
}

impl<T: Scalar> DenseRunOutputs<T> {
    /// Pools every run of `runs` (graphs of `seg`) with `run`, in parallel:
    /// each gets its graphs and its rows of the outputs ($K$ clusters,
    /// `width` pooled features, `per_graph` values per graph, $S$ if
    /// `with_s`), fills them
    /// ([`RunRows::fill`]) and returns what the fill found with the state it
    /// keeps, if any. The outputs and the kept states, in run order; the
    /// first error of a run in run order otherwise.
    pub(crate) fn by_runs<S, E, F>(
        seg: &Segments,
        runs: &[Range<usize>],
        k: usize,
        width: usize,
        per_graph: usize,
        with_s: bool,
        run: F,
    ) -> std::result::Result<(Self, RunStates<S>), E>
    where
        S: Send,
        E: Send,
        F: Fn(Range<usize>, RunRows<'_, T>) -> std::result::Result<(Filled, Option<S>), E> + Sync,
    {
        let offsets = seg.offsets();
        let b = seg.num_graphs();
        // the runs cover the graphs in order, so that their rows cover the
        // outputs: every entry is written by the run whose rows hold it
        let mut next = 0;
        for r in runs {
            assert_eq!(r.start, next, "consecutive runs");
            assert!(r.start <= r.end, "a run of graphs in order");
            next = r.end;
        }
        assert_eq!(next, b, "runs that cover the batch");
        // not zeroed (by `calloc`, on this thread, when the allocator
        // recycles a buffer of its heap): every entry is written below
        let mut x_out = rows::unwritten_matrix::<T>(b * k, width);
        // at the start of its buffer, so that the blocks become the pooled
        // adjacency's values without being moved
        // ([`crate::kernels::sparse::block_diag_owned`])
        let mut blocks = rows::unwritten_vec::<T>(b * k * k);
        let mut s = with_s.then(|| rows::unwritten_matrix::<T>(seg.num_nodes(), k));
        let mut values: Vec<Vec<MaybeUninit<T>>> =
            (0..per_graph).map(|_| rows::unwritten_vec(b)).collect();
        let graphs = || runs.iter().map(|r| r.len());
        let nodes = runs.iter().map(|r| offsets[r.end] - offsets[r.start]);
        let xs = split_rows(x_out.as_slice_mut().expect("standard"), k * width, graphs());
        let bs = split_rows(&mut blocks, k * k, graphs());
        let mut ss = s
            .as_mut()
            .map(|s| split_rows(s.as_slice_mut().expect("standard"), k, nodes).into_iter());
        let mut vs: Vec<_> = values
            .iter_mut()
            .map(|v| split_rows(v, 1, graphs()).into_iter())
            .collect();
        let tasks: Vec<_> = runs
            .iter()
            .cloned()
            .zip(xs)
            .zip(bs)
            .map(|((r, x_out), blocks)| {
                let s = ss.as_mut().map(|ss| ss.next().expect("one per run"));
                let per_graph = vs.iter_mut().map(|v| v.next().expect("one per run"));
                let rows = RunRows {
                    graphs: r.clone(),
                    x_at: x_out.as_ptr() as usize,
                    x_out: Some(x_out),
                    blocks,
                    s,
                    per_graph: per_graph.collect(),
                };
                (r, rows)
            })
            .collect();
        let results: Vec<std::result::Result<(Filled, Option<S>), E>> = tasks
            .into_par_iter()
            .map(|(r, rows)| run(r, rows))
            .collect();
        // the first error in run order, whatever the thread count
        let mut kept = Vec::with_capacity(runs.len());
        let mut finite = true;
        for (r, result) in runs.iter().zip(results) {
            let (filled, state) = result?;
            // a `Filled` is made only by `RunRows::fill`, which writes
            // every one of its run's rows
            assert_eq!(&filled.graphs, r, "each run fills its own rows");
            finite &= filled.finite;
            if let Some(state) = state {
                kept.push((r.clone(), state));
            }
        }
        // SAFETY: the runs cover the graphs (asserted above), so their rows
        // cover every entry of the outputs, and each run returned the
        // `Filled` of its own rows, that is, wrote every one of them
        let (x_out, s, blocks, values) = unsafe {
            (
                x_out.assume_init(),
                s.map(|s| s.assume_init()),
                rows::assume_written(blocks),
                values
                    .into_iter()
                    .map(|v| rows::assume_written(v))
                    .collect(),
            )
        };
        let blocks = Array2::from_shape_vec((b * k, k), blocks).expect("b k rows of k entries");
        Ok((
            Self {
                x_out,
                blocks,
                s,
                per_graph: values,
                finite,
            },
            kept,
        ))
    }
}

/// The backward pass of a batch pooled run by run: `run` gives each run's
/// gradients from its own batch ([`DisjointBatch::graph_run`]), its graphs
/// and its state, in parallel; their rows of $\bar X$ and entries of
/// $\bar a$ are copied into the batch's, and their parameter gradients
/// added in run order ([`sum_in_order`]). The gradients are not checked,
/// but each run scans its rows of $\bar X$ as it copies them: with the
/// gradients, the flat row-major position of $\bar X$'s first non-finite
/// entry, if any.
///
/// # Errors
/// The first error of a run, in run order.
fn backward_by_runs<T, S, F>(
    batch: &DisjointBatch<T>,
    runs: &[(Range<usize>, S)],
    params: &Params<T>,
    run: F,
) -> Result<(Gradients<T>, Option<usize>)>
where
    T: Scalar,
    S: Sync,
    F: Fn(&DisjointBatch<T>, Range<usize>, &S) -> Result<Gradients<T>> + Sync,
{
    let offsets = batch.segments().offsets();
    let (n, f) = batch.x().dim();
    let mut gx = rows::fresh_matrix::<T>(n, f);
    let mut edges: Option<Vec<T>> = batch
        .edge_weight_grad()
        .then(|| rows::fresh_vec(batch.a().nnz()));
    let node_counts = runs.iter().map(|(r, _)| offsets[r.end] - offsets[r.start]);
    let gxs = split_rows(gx.as_slice_mut().expect("standard"), f, node_counts);
    let indptr = batch.a().indptr();
    let indptr = indptr.raw_storage();
    let edge_counts = runs
        .iter()
        .map(|(r, _)| indptr[offsets[r.end]] - indptr[offsets[r.start]]);
    let es: Vec<&mut [T]> = match &mut edges {
        Some(e) => split_rows(e, 1, edge_counts),
        None => runs.iter().map(|_| Default::default()).collect(),
    };
    let results: Vec<Result<(Params<T>, Option<usize>)>> = runs
        .par_iter()
        .zip(gxs)
        .zip(es)
        .map(|(((r, state), gxo), eo)| {
            let g = run(&batch.graph_run(r.clone()), r.clone(), state)?;
            copy_rows(gxo, g.x.view());
            let bad = rows::first_non_finite_in(gxo).map(|p| offsets[r.start] * f + p);
            if let Some(w) = &g.edge_weights {
                eo.copy_from_slice(&rows::row_major_1d(&w.view()));
            }
            Ok((g.params, bad))
        })
        .collect();
    // the first error in run order, whatever the thread count
    let (parts, bad): (Vec<_>, Vec<_>) = results
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let gradients = Gradients {
        x: gx,
        edge_weights: edges.map(Array1::from),
        params: sum_in_order(params, &parts)?,
    };
    Ok((gradients, bad.into_iter().flatten().next()))
}
