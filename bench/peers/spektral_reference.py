#!/usr/bin/env python3
# Provenance: copied from the project's shared bench kit (shared/bench/spektral_reference.py, 2026-11-21);
# one change since: the warm-up (warm_up.py, imported below).
"""Time Spektral's pooling layers on a workload folder written by
make_workloads.py, so graphpool can be compared with it on the same inputs.

Usage:
  spektral_reference.py --workload DIR --layer NAME [--k 16] [--ratio 0.5]
                        [--backward] [--repeat 5] [--threads 2]

Layers: GlobalSumPool GlobalAvgPool GlobalMaxPool TopKPool SAGPool MemPooling
        MinCutPool DMoNPool DiffPool JustBalancePool AsymCheegerCutPool
Prints one JSON line with the same fields as pyg_reference.py (library,
layer, workload, phase, threads, median_s, min_s, runs, peak_rss_bytes, and
error where the layer could not run).

How each layer is run (the way a Spektral user runs it):
- global pools, TopKPool, SAGPool: disjoint mode, [x, a, i] with a as a
  tf.SparseTensor and i the graph id of each node.
- MinCutPool, DMoNPool, DiffPool, JustBalancePool, AsymCheegerCutPool: Spektral
  has single and batch mode only. On a one-graph workload: single mode,
  [x, a] with a sparse. On a many-graph workload: batch mode, graphs
  zero-padded to the largest one with spektral.data.utils.to_batch(mask=True)
  and GraphMasking, as BatchLoader(mask=True) does; the padding is numpy work
  done once before timing (its time is printed on stderr), so only the layer
  on the padded [B, Nmax, F] / [B, Nmax, Nmax] tensors is timed.
- MemPooling: not in Spektral (error).
Every call is wrapped in tf.function. The forward returns the outputs and
layer.losses (so the auxiliary losses are computed, not pruned); --backward
takes a tf.GradientTape over the sum of the float outputs plus layer.losses
and differentiates it w.r.t. x and the layer's trainable weights.

Set-up (once): python3 -m venv venv && venv/bin/pip install tensorflow-cpu==2.15.* spektral==1.3.1 numpy
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np

from warm_up import warm_up  # this folder's warm_up.py

DISJOINT = ("GlobalSumPool", "GlobalAvgPool", "GlobalMaxPool", "TopKPool", "SAGPool")
SINGLE_OR_BATCH = ("MinCutPool", "DMoNPool", "DiffPool", "JustBalancePool",
                   "AsymCheegerCutPool")


def load(folder):
    x = np.load(os.path.join(folder, "x.npy"))
    indptr = np.load(os.path.join(folder, "indptr.npy"))
    cols = np.load(os.path.join(folder, "indices.npy"))
    weight = np.load(os.path.join(folder, "data.npy"))
    batch = np.load(os.path.join(folder, "batch.npy"))
    return x, indptr, cols, weight, batch


def sparse_a(tf, indptr, cols, weight, n):
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    # CSR rows and sorted columns: already in the canonical (row-major) order
    return tf.SparseTensor(np.stack([rows, cols], 1), weight, (n, n))


def padded_batch(x, indptr, cols, weight, batch):
    """Spektral batch mode: one scipy matrix per graph, then to_batch(mask=True)."""
    import scipy.sparse as sp
    from spektral.data.utils import to_batch

    bounds = np.flatnonzero(np.diff(batch)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(batch)]))
    a = sp.csr_matrix((weight, cols, indptr), shape=(len(batch), len(batch)))
    x_list = [x[s:e] for s, e in zip(starts, ends)]
    a_list = [a[s:e, s:e] for s, e in zip(starts, ends)]
    xb, ab = to_batch(x_list, a_list, mask=True)
    return xb.astype(np.float32), ab.astype(np.float32)


def make_layer(name, k, ratio):
    from spektral import layers as L
    if name == "TopKPool":
        return L.TopKPool(ratio)
    if name == "SAGPool":
        return L.SAGPool(ratio)
    if name in ("GlobalSumPool", "GlobalAvgPool", "GlobalMaxPool"):
        return getattr(L, name)()
    if name in SINGLE_OR_BATCH:
        return getattr(L, name)(k)
    if name == "MemPooling":
        raise NotSupported("MemPooling is not in Spektral 1.3.1")
    sys.exit(f"unknown layer {name}")


class NotSupported(Exception):
    pass


def build(tf, name, data, k, ratio):
    """Returns (layer, inputs, call) where call(*inputs) runs the layer."""
    x, indptr, cols, weight, batch = data
    n = x.shape[0]
    n_graphs = int(batch[-1]) + 1
    layer = make_layer(name, k, ratio)
    if name in DISJOINT:
        xt, it = tf.constant(x), tf.constant(batch)
        if name.startswith("Global"):
            return layer, (xt, it), lambda x_, i_: layer([x_, i_])
        at = sparse_a(tf, indptr, cols, weight, n)
        return layer, (xt, at, it), lambda x_, a_, i_: layer([x_, a_, i_])
    # single / batch only layers
    if n_graphs == 1:
        at = sparse_a(tf, indptr, cols, weight, n)
        return layer, (tf.constant(x), at), lambda x_, a_: layer([x_, a_])
    from spektral.layers import GraphMasking
    t0 = time.perf_counter()
    xb, ab = padded_batch(x, indptr, cols, weight, batch)
    print(f"spektral batch-mode padding (to_batch): {time.perf_counter() - t0:.3f} s, "
          f"x {xb.shape}, a {ab.shape}", file=sys.stderr, flush=True)
    masking = GraphMasking()
    return layer, (tf.constant(xb), tf.constant(ab)), \
        lambda x_, a_: layer([masking(x_), a_])


def float_sum(tf, out):
    """A scalar that depends on every float output (dense or sparse values)."""
    total = tf.constant(0.0)
    for o in tf.nest.flatten(out, expand_composites=False):
        if isinstance(o, tf.SparseTensor):
            o = o.values
        if o.dtype.is_floating:
            total = total + tf.reduce_sum(tf.cast(o, tf.float32))
    return total


def first_line(e):
    msg = getattr(e, "message", None) or str(e)
    lines = [l.strip() for l in msg.strip().splitlines() if l.strip()]
    for l in lines:  # TF puts the useful line after a traceback of the graph
        if "OOM" in l or "allocat" in l:
            return l[:160]
    skip = ("Graph execution error", "Detected at node", "File ", "Traceback", "in ", "<")
    for l in lines:
        if not l.startswith(skip):
            return l[:160]
    return (lines[0] if lines else type(e).__name__)[:160]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", required=True)
    ap.add_argument("--layer", required=True)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    tf.random.set_seed(0)
    res = {"library": "spektral", "layer": a.layer,
           "workload": os.path.basename(os.path.normpath(a.workload)),
           "phase": "forward+backward" if a.backward else "forward",
           "threads": a.threads}
    try:
        layer, inputs, call = build(tf, a.layer, load(a.workload), a.k, a.ratio)

        @tf.function
        def forward(*args):
            out = call(*args)
            return out, list(layer.losses)

        @tf.function
        def forward_backward(*args):
            x_ = args[0]
            with tf.GradientTape() as tape:
                tape.watch(x_)
                out = call(*args)
                loss = float_sum(tf, out)
                for l in layer.losses:
                    loss = loss + tf.reduce_sum(l)
            return loss, tape.gradient(loss, [x_] + layer.trainable_weights)

        fn = forward_backward if a.backward else forward
        warm_up(lambda: fn(*inputs))  # the first run traces, builds the layer
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            fn(*inputs)
            times.append(time.perf_counter() - t0)
        res.update(median_s=statistics.median(times), min_s=min(times), runs=len(times))
    except NotSupported as e:
        res["error"] = f"not supported: {e}"
    except (tf.errors.OpError, RuntimeError, MemoryError, ValueError, TypeError) as e:
        res["error"] = f"{type(e).__name__}: {first_line(e)}"
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
