#!/usr/bin/env python3
# Provenance: copied from the project's shared bench kit (shared/bench/tgp_reference.py, 2026-11-21);
# one change since: the warm-up (warm_up.py, imported below).
"""Time torch-geometric-pool (tgp)'s poolers on a workload folder written by
make_workloads.py, so graphpool can be compared with it on the same inputs.

Usage:
  tgp_reference.py --workload DIR --layer NAME [--k 16] [--ratio 0.5]
                   [--backward] [--repeat 5] [--threads 2]

Layers (Spektral's names, mapped to tgp's poolers):
  GlobalSumPool GlobalAvgPool GlobalMaxPool -> tgp.reduce.GlobalReduce("sum" | "mean" | "max")
  TopKPool -> TopkPooling, SAGPool -> SAGPooling, MinCutPool -> MinCutPooling,
  DMoNPool -> DMoNPooling, DiffPool -> DiffPool, JustBalancePool -> JustBalancePooling,
  AsymCheegerCutPool -> AsymCheegerCutPooling, MemPooling (not in tgp: error)
Prints one JSON line with the same fields as pyg_reference.py (library,
layer, workload, phase, threads, median_s, min_s, runs, peak_rss_bytes, and
error where the layer could not run).

The dense poolers (MinCut, DMoN, DiffPool, JustBalance, AsymCheegerCut) run with
batched=False: sparse edge_index + edge weights + batch vector in, dense [N, K]
assignment, sparse losses, no padded or dense N x N adjacency (tgp's default
sparse_output=False: pooled x [B, K, F] and adjacency [B, K, K]). tgp's own
constructor defaults otherwise (one Linear + softmax for the assignment).
The forward runs under torch.no_grad(); --backward differentiates the sum of
the float outputs plus the auxiliary losses w.r.t. x and the parameters.

Set-up (once): python3 -m venv venv && venv/bin/pip install torch torch_geometric
  torch-geometric-pool scikit-learn numpy   (tgp needs torch_scatter, which is
  built from source when no wheel matches the installed torch, and imports
  scikit-learn without declaring it)
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

POOLERS = {
    "TopKPool": "TopkPooling",
    "SAGPool": "SAGPooling",
    "MinCutPool": "MinCutPooling",
    "DMoNPool": "DMoNPooling",
    "DiffPool": "DiffPool",
    "JustBalancePool": "JustBalancePooling",
    "AsymCheegerCutPool": "AsymCheegerCutPooling",
}
READOUTS = {"GlobalSumPool": "sum", "GlobalAvgPool": "mean", "GlobalMaxPool": "max"}


class NotSupported(Exception):
    pass


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
    F = x.shape[1]
    B = int(batch[-1]) + 1
    if layer in READOUTS:
        from tgp.reduce import GlobalReduce
        m = GlobalReduce(READOUTS[layer])
        return list(m.parameters()), lambda: m(x, batch=batch, size=B)
    if layer == "MemPooling":
        raise NotSupported("MemPooling is not in tgp")
    if layer not in POOLERS:
        sys.exit(f"unknown layer {layer}")
    import tgp.poolers as P
    cls = getattr(P, POOLERS[layer])
    if layer in ("TopKPool", "SAGPool"):
        m = cls(F, ratio=ratio)
    else:
        m = cls(F, k, batched=False)
    return list(m.parameters()), \
        lambda: m(x=x, adj=edge_index, edge_weight=weight, batch=batch)


def scalar(out):
    """A scalar that depends on every float output and auxiliary loss."""
    if torch.is_tensor(out):
        return out.float().sum()
    total = 0
    for o in (out.x, out.edge_index, out.edge_weight):
        if torch.is_tensor(o) and o.is_floating_point():
            total = total + o.sum()
    for v in (out.loss or {}).values():
        total = total + v.sum()
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
    res = {"library": "tgp", "layer": a.layer,
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
    except NotSupported as e:
        res["error"] = f"not supported: {e}"
    except (RuntimeError, MemoryError, ValueError) as e:
        res["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
