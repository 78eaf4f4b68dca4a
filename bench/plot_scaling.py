#!/usr/bin/env python3
"""Draws bench/clustering_scaling.svg for bench/compare.py (which runs it with
the pyg environment's python, where matplotlib is installed).

Reads JSON on stdin: {"layers": [...], "out": PATH,
"series": {layer: {library: [[N, median_s], ...]}}}; writes one log-log panel
per layer, forward+backward median time against the number of nodes.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"graphpool": ("tab:red", "o", "-"), "PyG": ("tab:blue", "s", "--"),
         "Spektral": ("tab:green", "^", "--"), "tgp": ("tab:purple", "D", "--")}


def main():
    d = json.load(sys.stdin)
    layers = [l for l in d["layers"] if l in d["series"]]
    plt.rcParams["svg.hashsalt"] = "graphpool"  # stable ids: diffs show data changes only
    cols = min(len(layers), 3)
    rows = (len(layers) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    for ax, layer in zip(axes.flat, layers):
        for lib, pts in sorted(d["series"][layer].items(),
                               key=lambda kv: list(STYLE).index(kv[0]) if kv[0] in STYLE else 9):
            pts = sorted(pts)
            color, marker, ls = STYLE.get(lib, ("gray", "x", ":"))
            label = lib + (" (dense)" if lib == "PyG" else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker,
                    linestyle=ls, label=label)
        ax.set_xscale("log")
        ax.set_xlim(6e2, 1.6e6)
        ax.set_yscale("log")
        ax.set_title(layer)
        ax.set_xlabel("nodes N (one graph, degree 10, F = 64)")
        ax.set_ylabel("forward+backward (s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Clustering pools, K = 16, 2 threads: median time against graph size")
    fig.tight_layout()
    fig.savefig(d["out"], metadata={"Date": None})


if __name__ == "__main__":
    main()
