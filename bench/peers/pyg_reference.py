#!/usr/bin/env python3
# Provenance: copied from the project's shared bench kit (shared/bench/pyg_reference.py, 2026-11-21);
# one change since: the warm-up (warm_up.py, imported below).
"""Time PyTorch Geometric's pooling layers on a workload folder written by
make_workloads.py, so graphpool can be compared with it on the same inputs.

Usage:
  pyg_reference.py --workload DIR --layer NAME [--k 16] [--ratio 0.5]
                   [--backward] [--repeat 5] [--threads 2]

Layers: GlobalSumPool GlobalAvgPool GlobalMaxPool TopKPool SAGPool MemPooling
        MinCutPool DMoNPool
Prints one JSON line: layer, workload, phase (forward | forward+backward),
median_s, min_s, runs, peak_rss_bytes, threads, and error where the layer
could not run (e.g. out of memory when it densifies the adjacency).

Set-up (once): python3 -m venv venv && venv/bin/pip install torch torch_geometric numpy
MinCutPool and DMoNPool are dense in PyG: they are run the way PyG users run
them on a disjoint batch, to_dense_batch + to_dense_adj + the dense layer.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch

from warm_up import warm_up  # this folder's warm_up.py


def load(folder):
    x = torch.from_numpy(np.load(os.path.join(folder, "x.npy")))
    indptr = np.load(os.path.join(folder, "indptr.npy"))
    cols = torch.from_numpy(np.load(os.path.join(folder, "indices.npy")))
    rows = torch.from_numpy(np.repeat(np.arange(len(indptr) - 1), np.diff(indptr)))
    edge_index = torch.stack([rows, cols])
    weight = torch.from_numpy(np.load(os.path.join(folder, "data.npy")))
    batch = torch.from_numpy(np.load(os.path.join(folder, "batch.npy")))
    return x, edge_index, weight, batch


def build(layer, x, edge_index, weight, batch, k, ratio):
    import torch_geometric.nn as gnn
    from torch_geometric.nn.dense import DMoNPooling, dense_mincut_pool
    from torch_geometric.utils import to_dense_adj, to_dense_batch

    F = x.shape[1]
    B = int(batch[-1]) + 1
    if layer == "GlobalSumPool":
        return [], lambda: gnn.global_add_pool(x, batch, size=B)
    if layer == "GlobalAvgPool":
        return [], lambda: gnn.global_mean_pool(x, batch, size=B)
    if layer == "GlobalMaxPool":
        return [], lambda: gnn.global_max_pool(x, batch, size=B)
    if layer == "TopKPool":
        m = gnn.TopKPooling(F, ratio=ratio)
        return list(m.parameters()), lambda: m(x, edge_index, weight, batch=batch)[:2]
    if layer == "SAGPool":
        m = gnn.SAGPooling(F, ratio=ratio)
        return list(m.parameters()), lambda: m(x, edge_index, weight, batch=batch)[:2]
    if layer == "MemPooling":
        m = gnn.pool.MemPooling(F, F, heads=4, num_clusters=k)
        return list(m.parameters()), lambda: m(x, batch)
    if layer == "MinCutPool":
        lin = torch.nn.Linear(F, k)

        def run():
            xd, mask = to_dense_batch(x, batch, batch_size=B)
            adj = to_dense_adj(edge_index, batch, weight, batch_size=B)
            return dense_mincut_pool(xd, adj, lin(xd), mask)
        return list(lin.parameters()), run
    if layer == "DMoNPool":
        m = DMoNPooling([F], k)

        def run():
            xd, mask = to_dense_batch(x, batch, batch_size=B)
            adj = to_dense_adj(edge_index, batch, weight, batch_size=B)
            return m(xd, adj, mask)
        return list(m.parameters()), run
    sys.exit(f"unknown layer {layer}")


def scalar(out):
    """A scalar that depends on every output tensor, for the backward pass."""
    if torch.is_tensor(out):
        return out.float().sum()
    total = 0
    for o in out:
        if torch.is_tensor(o) and o.is_floating_point():
            total = total + o.sum()
    return total


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
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    res = {"library": "pyg", "layer": a.layer,
           "workload": os.path.basename(os.path.normpath(a.workload)),
           "phase": "forward+backward" if a.backward else "forward",
           "threads": a.threads}
    try:
        x, ei, w, batch = load(a.workload)
        if a.backward:
            x.requires_grad_(True)
        params, fn = build(a.layer, x, ei, w, batch, a.k, a.ratio)

        def step():
            if a.backward:
                for p in params + [x]:
                    p.grad = None
                scalar(fn()).backward()
            else:
                with torch.no_grad():
                    fn()
        warm_up(step)
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        res.update(median_s=statistics.median(times), min_s=min(times), runs=len(times))
    except (RuntimeError, MemoryError) as e:
        res["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
