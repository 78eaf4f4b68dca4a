#!/usr/bin/env bash
# Creates the peers' Python environments for bench/compare.py:
#   bench-env/pyg  PyTorch Geometric + torch-geometric-pool (tgp) + matplotlib (the plot)
#   bench-env/spk  Spektral 1.3.1 on TensorFlow 2.15 (CPU)
# Usage: bench/setup_peers.sh [pyg] [spk]     (default: both)
# Environment: BENCH_ENV (default <repo>/bench-env), PYTHON (default python3, >= 3.9;
# TensorFlow 2.15 needs Python 3.9-3.11).
# Idempotent: an environment whose packages already import is left as it is; a
# half-made one is completed. Commands follow the peers' set-up in
# bench/README.md, with one change: torch_scatter (required by tgp) has no
# wheel on PyPI and is built from source against the installed torch, which
# needs torch installed first and no build isolation (otherwise pip builds it
# in a clean environment without torch and fails with "No module named 'torch'").
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
env_dir=${BENCH_ENV:-$(dirname "$here")/bench-env}
py=${PYTHON:-python3}
peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(pyg spk)

ready() { # venv, python imports
    [ -x "$1/bin/python" ] && "$1/bin/python" -c "import $2" 2>/dev/null
}

make_venv() {
    [ -x "$1/bin/python" ] || "$py" -m venv "$1"
}

for peer in "${peers[@]}"; do
    case "$peer" in
    pyg)
        v=$env_dir/pyg
        if ready "$v" "torch, torch_geometric, torch_scatter, tgp, sklearn, matplotlib, numpy"; then
            echo "pyg: $v ready, skipped"
            continue
        fi
        echo "pyg: installing into $v (torch from PyPI is a few GB; torch_scatter compiles for several minutes)"
        make_venv "$v"
        "$v/bin/pip" install --upgrade pip setuptools wheel
        "$v/bin/pip" install torch numpy scikit-learn matplotlib
        "$v/bin/pip" install --no-build-isolation torch_scatter
        "$v/bin/pip" install torch_geometric torch-geometric-pool
        ready "$v" "torch, torch_geometric, torch_scatter, tgp, sklearn, matplotlib, numpy"
        echo "pyg: ready"
        ;;
    spk)
        v=$env_dir/spk
        if ready "$v" "tensorflow, spektral, scipy, numpy"; then
            echo "spk: $v ready, skipped"
            continue
        fi
        echo "spk: installing into $v"
        make_venv "$v"
        "$v/bin/pip" install "tensorflow-cpu==2.15.*" spektral==1.3.1 scipy "numpy<2"
        ready "$v" "tensorflow, spektral, scipy, numpy"
        echo "spk: ready"
        ;;
    *)
        echo "unknown peer $peer (pyg or spk)" >&2
        exit 2
        ;;
    esac
done
