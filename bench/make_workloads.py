#!/usr/bin/env python3
"""Write the benchmark workloads as .npy files, so that graphpool and the
reference libraries are timed on exactly the same inputs.

Usage: make_workloads.py OUT_DIR [NAME ...]   (default: every workload but global-1e7)

Each workload is a folder holding:
  x.npy        float32 [N, F]   node features
  indptr.npy   int64   [N+1]    CSR adjacency (symmetric, no self loops)
  indices.npy  int64   [nnz]
  data.npy     float32 [nnz]    edge weights (all 1.0)
  batch.npy    int64   [N]      graph id of each node, sorted, from 0
Only numpy is needed.

Provenance: copied from the project's shared bench kit
(shared/bench/make_workloads.py, 2026-11-21); unchanged but for the two
workloads single-1e3 and single-1e4 (built like single-1e5 / single-1e6,
own seeds), added so the scaling plot of bench/compare.py covers 10^3..10^6.
"""
import os
import sys

import numpy as np

F = 64

WORKLOADS = {
    # name: (graph sizes generator, average degree)
    "disjoint-small": dict(graphs=10_000, n_lo=10, n_hi=50, degree=4.0, seed=1),
    "single-1e3": dict(graphs=1, n=1_000, degree=10.0, seed=6),
    "single-1e4": dict(graphs=1, n=10_000, degree=10.0, seed=7),
    "single-1e5": dict(graphs=1, n=100_000, degree=10.0, seed=2),
    "single-1e6": dict(graphs=1, n=1_000_000, degree=10.0, seed=3),
    "global-1e6": dict(graphs=33_334, n=30, degree=0.0, seed=4),
    "global-1e7": dict(graphs=333_334, n=30, degree=0.0, seed=5),
}
DEFAULT = ["disjoint-small", "single-1e3", "single-1e4", "single-1e5", "single-1e6",
           "global-1e6"]


def graph_sizes(spec, rng):
    if "n" in spec:
        return np.full(spec["graphs"], spec["n"], dtype=np.int64)
    return rng.integers(spec["n_lo"], spec["n_hi"] + 1, size=spec["graphs"])


def random_edges(sizes, degree, rng):
    """Erdos-Renyi-like edges inside each graph: about degree*n/2 undirected
    pairs per graph, deduplicated, symmetrised, no self loops."""
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    m = np.maximum((sizes * degree / 2).astype(np.int64), 0)
    g = np.repeat(np.arange(len(sizes)), m)
    n = sizes[g]
    u = (rng.random(len(g)) * n).astype(np.int64) + offsets[g]
    v = (rng.random(len(g)) * n).astype(np.int64) + offsets[g]
    keep = u != v
    u, v = u[keep], v[keep]
    rows = np.concatenate((u, v))
    cols = np.concatenate((v, u))
    total = int(sizes.sum())
    key = np.unique(rows * total + cols)
    return key // total, key % total, total


def write(out, name):
    spec = WORKLOADS[name]
    rng = np.random.default_rng(spec["seed"])
    sizes = graph_sizes(spec, rng)
    total = int(sizes.sum())
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    x = rng.standard_normal((total, F), dtype=np.float32)
    np.save(os.path.join(folder, "x.npy"), x)
    del x
    batch = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    np.save(os.path.join(folder, "batch.npy"), batch)
    rows, cols, _ = random_edges(sizes, spec["degree"], rng)
    indptr = np.zeros(total + 1, dtype=np.int64)
    np.add.at(indptr, rows + 1, 1)
    indptr = np.cumsum(indptr)
    np.save(os.path.join(folder, "indptr.npy"), indptr)
    np.save(os.path.join(folder, "indices.npy"), cols.astype(np.int64))
    np.save(os.path.join(folder, "data.npy"), np.ones(len(cols), dtype=np.float32))
    print(f"{name}: {len(sizes)} graphs, {total} nodes, {len(cols)} directed edges, F={F}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    names = sys.argv[2:] or DEFAULT
    for name in names:
        if name not in WORKLOADS:
            sys.exit(f"unknown workload {name}; known: {', '.join(WORKLOADS)}")
        write(out, name)


if __name__ == "__main__":
    main()
