#!/usr/bin/env python3
"""graphpool side by side with its peers (PyTorch Geometric, Spektral,
torch-geometric-pool), on the same input files, in one run; writes
BENCHMARKS.md at the repository root.

Usage:
  bench/compare.py [--quick] [--only LAYER,...] [--repeat 15] [--peer-repeat 3]
                   [--slow-repeat 1] [--timeout 300] [--pyg-python PATH]
                   [--spk-python PATH] [--workloads DIR] [--out DIR]
                   [--no-slow-peers] [--report-only [--run-id ID]] [--dry-run]

What a run does, in this order:
 1. writes the missing workloads with bench/make_workloads.py (numpy; run by
    the pyg environment's python) into --workloads (default bench-out/workloads);
 2. builds the examples pool_bench, pool_footprint, read_bandwidth (release);
 3. measures the memory read bandwidth (examples/read_bandwidth.rs, 1 GiB,
    2 threads) at the start and again at the end; the report uses the median
    of the two measurements (their mean) and prints both;
 4. for every row (layer x workload x phase) runs graphpool's pool_bench,
    then each peer that has the layer (pyg, spektral, tgp), then the next
    row: alternation, so a slow drift of the machine hits every library
    alike. Every command runs with 2 threads (RAYON_NUM_THREADS=2,
    OMP_NUM_THREADS=2, MKL_NUM_THREADS=2, the peers' --threads 2) and under a
    wall-clock timeout (--timeout, default 300 s); a timeout is recorded as
    the error "timed out after N s";
 5. runs pool_footprint once per layer x workload (with --backward) for the
    bytes of inputs and outputs (the "peak memory <= 2x inputs+outputs" target);
 6. appends every JSON line (with the run id) to bench-out/results.jsonl and
    writes BENCHMARKS.md from this run's lines, and bench/clustering_scaling.svg
    (forward+backward time against N = 10^3..10^6, one panel per clustering
    pool; drawn with matplotlib by the pyg environment's python).

Repeats: graphpool always runs --repeat timed runs (default 15) after its
warm-up. A peer runs --repeat when its expected run time (the shared
reference medians in REFERENCE below) is under 1 s, --peer-repeat (default 3)
when it is longer, and --slow-repeat (default 1) on the slow rows: tgp's
clustering pools on disjoint-small (its sparse mode loops over the 10^4 graphs
in Python: 3.4-14 s forward, 23-85 s forward+backward per run). The peers'
scripts are copies (bench/peers/) with one change: every harness, graphpool's
and the peers', warms up untimed for at least 0.5 s (and at least one run).
With one warm-up run, a fast row still had its first 0.2-0.3 s of runs in its
timed ones, up to 1.5x slower (graphpool JustBalancePool disjoint-small
forward: 30-41 ms for the first 7 runs, then 21-26 ms), which a slow peer's
one warm-up run had already absorbed.
Why 15 and not 5 (measured when each harness warmed up with one run): a
process's first runs after its warm-up are slower than the ones after them,
for graphpool and the peers alike (the allocator's and the kernel's memory
settling: e.g. graphpool DiffPool disjoint-small
forward, three processes of 15 runs: the first five 72-116 ms, the last ten
67-88 ms but for one of 208 ms; Spektral's median of 5 was 501 ms, of 15
462 ms). With 5 the median sat inside that settling (that row: 77 ms in run
26, 125 ms in run 27, the same code); with 15 it is the steady state a
training loop sees.

--quick: a smoke test of the whole pipeline on small inputs: single-1e6 is
replaced by single-1e4, the global-1e6/1e7 rows and the slow rows are left
out, one timed run per command, timeout 120 s. BENCHMARKS.md then says at the
top that it is a quick-mode smoke run.

Runs with any python3 >= 3.9 and its standard library; numpy and matplotlib
come from the peers' environments (bench/setup_peers.sh makes them in
bench-env/pyg and bench-env/spk, the defaults of --pyg-python / --spk-python).
"""
import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

GLOBAL = ["GlobalSumPool", "GlobalAvgPool", "GlobalMaxPool"]
SELECTION = ["TopKPool", "SAGPool"]
CLUSTERING = ["MinCutPool", "DMoNPool", "DiffPool", "JustBalancePool", "AsymCheegerCutPool"]
GRAPHPOOL_ONLY = ["LaPool", "SortPool", "GlobalAttentionPool"]
PHASES = ["forward", "forward+backward"]
SCALING = ["single-1e3", "single-1e4", "single-1e5", "single-1e6"]
SCALING_N = {"single-1e3": 1e3, "single-1e4": 1e4, "single-1e5": 1e5, "single-1e6": 1e6}

# Which peer script runs which layer (bench/peers/*_reference.py). Spektral
# has LaPool, SortPool, GlobalAttentionPool and PyG has SortAggregation and
# AttentionalAggregation, but the shared peer scripts do not run them.
PEER_LAYERS = {
    "pyg": set(GLOBAL + SELECTION + ["MemPooling", "MinCutPool", "DMoNPool"]),
    "spektral": set(GLOBAL + SELECTION + CLUSTERING),
    "tgp": set(GLOBAL + SELECTION + CLUSTERING),
}
PEERS = ["pyg", "spektral", "tgp"]
PEER_NAMES = {"graphpool": "graphpool", "pyg": "PyG", "spektral": "Spektral", "tgp": "tgp"}
# PyG's MinCut and DMoN are dense (to_dense_adj): not sparse peers. Spektral's
# single mode takes a sparse adjacency, tgp runs its sparse mode.
SPARSE_PEERS = {"spektral", "tgp"}

# Fastest peer's median per run (s), forward and forward+backward, from the
# shared reference figures (bench/README.md); used only to plan repeats and
# to estimate the run time.
REFERENCE = {
    ("GlobalSumPool", "disjoint-small"): (0.0036, 0.015),
    ("GlobalSumPool", "global-1e6"): (0.030, 0.036),
    ("GlobalSumPool", "global-1e7"): (0.22, 0.39),
    ("GlobalAvgPool", "disjoint-small"): (0.0057, 0.014),
    ("GlobalAvgPool", "global-1e6"): (0.025, 0.041),
    ("GlobalAvgPool", "global-1e7"): (0.31, 0.41),
    ("GlobalMaxPool", "disjoint-small"): (0.0053, 0.038),
    ("GlobalMaxPool", "global-1e6"): (0.031, 0.17),
    ("GlobalMaxPool", "global-1e7"): (0.33, 1.4),
    ("TopKPool", "disjoint-small"): (0.048, 0.078),
    ("TopKPool", "single-1e6"): (0.45, 0.52),
    ("SAGPool", "disjoint-small"): (0.20, 0.28),
    ("SAGPool", "single-1e6"): (2.1, 1.9),
    ("MemPooling", "disjoint-small"): (1.4, 3.9),
    ("MemPooling", "single-1e6"): (2.3, 6.8),
    ("MinCutPool", "disjoint-small"): (0.11, 0.40),
    ("MinCutPool", "single-1e6"): (3.6, 4.7),
    ("DMoNPool", "disjoint-small"): (0.090, 0.32),
    ("DMoNPool", "single-1e6"): (3.7, 4.0),
    ("DiffPool", "disjoint-small"): (0.19, 0.54),
    ("DiffPool", "single-1e6"): (3.8, 7.7),
    ("JustBalancePool", "disjoint-small"): (0.060, 0.30),
    ("JustBalancePool", "single-1e6"): (2.7, 4.6),
    ("AsymCheegerCutPool", "disjoint-small"): (0.42, 1.4),
    ("AsymCheegerCutPool", "single-1e6"): (4.6, 4.9),
}
STARTUP = {"graphpool": 0.1, "pyg": 3.0, "tgp": 5.0, "spektral": 7.0}  # s, imports + tracing
LOAD = {"disjoint-small": 0.5, "single-1e6": 1.5, "global-1e6": 0.7, "global-1e7": 4.0}
GENERATE = {"global-1e7": 90.0, "single-1e6": 20.0, "global-1e6": 10.0, "disjoint-small": 10.0}

SPEEDUP_TARGET = 5.0
BANDWIDTH_TARGET = 0.70
RSS_LIMIT = 4e9  # bytes: "under 4 GB peak RSS"
MEMORY_FACTOR = 2.0  # peak memory <= 2x inputs + outputs
# Below this many bytes of inputs + outputs the process's fixed RSS (binary,
# libraries, allocator: a few MB) dominates the peak, and the ratio says
# nothing about the layer: shown, not judged.
MEMORY_MIN_BYTES = 50e6


# ---------------------------------------------------------------- the plan

def estimate_run(lib, layer, workload, phase, graphpool_speedup=1.0):
    """Expected seconds per run of `lib` on a row (rough); graphpool is taken
    `graphpool_speedup` times faster than the fastest peer."""
    fb = phase == "forward+backward"
    if workload in SCALING_N and workload != "single-1e6":
        ref = REFERENCE.get((layer, "single-1e6"))
        scale = SCALING_N[workload] / 1e6
        ref = (max(ref[0] * scale, 0.003), max(ref[1] * scale, 0.003)) if ref else None
    else:
        ref = REFERENCE.get((layer, workload))
    base = (ref[1] if fb else ref[0]) if ref else 0.2
    if lib == "graphpool":
        return base / graphpool_speedup
    if lib == "tgp" and layer in CLUSTERING and workload == "disjoint-small":
        return 50.0 if fb else 8.0  # Python loop over 10^4 graphs (shared README)
    if lib == "pyg" and layer in ("MinCutPool", "DMoNPool") and workload in (
            "single-1e5", "single-1e6"):
        return 0.0  # dense N x N: fails at once
    return 1.5 * base  # a peer that is not the fastest: unknown, say 1.5x


def load_time(workload, lib):
    t = LOAD.get(workload, 0.2)
    if lib == "spektral" and workload == "disjoint-small":
        t += 1.5  # zero-padding to a batch (Spektral's to_batch), untimed
    return t


class Row:
    def __init__(self, group, layer, workload, phase, peers, target):
        self.group, self.layer, self.workload, self.phase = group, layer, workload, phase
        self.peers = peers  # peers that run this layer
        self.target = target  # "bandwidth" | "speedup" | "speedup-sparse" | None

    @property
    def key(self):
        return (self.layer, self.workload, self.phase)


def plan_rows(quick, only):
    """Every row, in run order, and its group."""
    def peers_of(layer):
        return [p for p in PEERS if layer in PEER_LAYERS[p]]

    big = "single-1e4" if quick else "single-1e6"
    rows = []

    def add(group, layers, workloads, target_of, phases=PHASES):
        for layer in layers:
            for wl in workloads:
                for ph in phases:
                    rows.append(Row(group, layer, wl, ph, peers_of(layer), target_of(layer, wl, ph)))

    add("global", GLOBAL, ["disjoint-small"] + ([] if quick else ["global-1e6", "global-1e7"]),
        lambda l, w, p: "bandwidth" if w == "global-1e7" and p == "forward" else None)
    add("selection", SELECTION, ["disjoint-small", big],
        lambda l, w, p: "speedup" if w in ("disjoint-small", "single-1e6") else None)
    add("mempool", ["MemPooling"], ["disjoint-small", big],
        lambda l, w, p: "speedup" if w == "disjoint-small" else None)
    add("clustering", CLUSTERING, ["disjoint-small", big],
        lambda l, w, p: ("speedup" if w == "disjoint-small" else
                         "speedup-sparse" if w == "single-1e6" else None))
    scaling = [w for w in SCALING if w != big and (not quick or w in ("single-1e3",))]
    add("scaling", CLUSTERING, scaling, lambda l, w, p: None, phases=["forward+backward"])
    add("graphpool-only", GRAPHPOOL_ONLY, ["disjoint-small"], lambda l, w, p: None)
    if only:
        rows = [r for r in rows if r.layer in only]
    return rows


def is_slow(lib, row):
    """tgp's clustering pools on many graphs: its sparse mode loops over the
    graphs in Python (shared reference: 3.4-14 s forward, 23-85 s
    forward+backward per run on disjoint-small)."""
    return lib == "tgp" and row.layer in CLUSTERING and row.workload == "disjoint-small"


def repeat_for(lib, row, a):
    if lib == "graphpool":
        return a.repeat
    if is_slow(lib, row):
        return a.slow_repeat
    t = estimate_run(lib, row.layer, row.workload, row.phase)
    if t > 1.0:
        return a.peer_repeat
    return a.repeat


def estimate_plan(rows, a, missing_workloads, graphpool_speedup=1.0):
    total = sum(GENERATE.get(w, 5.0) for w in missing_workloads)
    total += 2 * 8.0  # bandwidth, start and end
    seen = set()
    for r in rows:
        libs = ["graphpool"] + [p for p in r.peers if not (a.no_slow_peers and is_slow(p, r))]
        for lib in libs:
            n = repeat_for(lib, r, a) + 1
            t = STARTUP[lib] + load_time(r.workload, lib) + n * estimate_run(
                lib, r.layer, r.workload, r.phase, graphpool_speedup)
            total += min(t, a.timeout)
        if (r.layer, r.workload) not in seen:
            seen.add((r.layer, r.workload))
            total += load_time(r.workload, "graphpool") + 2 * estimate_run(
                "graphpool", r.layer, r.workload, "forward+backward", graphpool_speedup)
    return total


# ---------------------------------------------------------------- running

def env_2_threads():
    env = dict(os.environ)
    env.update(RAYON_NUM_THREADS="2", OMP_NUM_THREADS="2", MKL_NUM_THREADS="2",
               OPENBLAS_NUM_THREADS="2", TF_CPP_MIN_LOG_LEVEL="2")
    return env


def run_cmd(cmd, timeout, env=None):
    """Runs cmd in its own process group; returns (parsed last JSON line or
    None, error string or None, wall seconds)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env or env_2_threads(), cwd=REPO, start_new_session=True)
    except OSError as e:
        return None, f"cannot start {cmd[0]}: {e}", 0.0
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        return None, f"timed out after {timeout:g} s", time.perf_counter() - t0
    wall = time.perf_counter() - t0
    lines = [l for l in out.decode(errors="replace").splitlines() if l.startswith("{")]
    if lines:
        try:
            return json.loads(lines[-1]), None, wall
        except ValueError:
            pass
    tail = [l.strip() for l in err.decode(errors="replace").splitlines() if l.strip()]
    why = f"exit code {p.returncode}" if p.returncode >= 0 else f"killed by signal {-p.returncode}"
    if p.returncode == -9:
        why += " (out of memory?)"
    return None, f"{why}: {tail[-1][:160] if tail else 'no output'}", wall


def build_examples():
    cmd = ["cargo", "build", "--release", "--message-format=json-render-diagnostics",
           "--example", "pool_bench", "--example", "pool_footprint",
           "--example", "read_bandwidth"]
    print("building:", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit("cargo build failed")
    exe = {}
    for line in p.stdout.decode().splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") == "compiler-artifact" and m.get("executable"):
            exe[m["target"]["name"]] = m["executable"]
    for name in ("pool_bench", "pool_footprint", "read_bandwidth"):
        if name not in exe:
            sys.exit(f"cargo did not report the {name} executable")
    return exe


def workload_ready(d):
    return all(os.path.exists(os.path.join(d, f)) for f in
               ("x.npy", "indptr.npy", "indices.npy", "data.npy", "batch.npy"))


def make_workloads(names, a):
    if not names:
        return
    py = a.pyg_python if os.path.exists(a.pyg_python) else a.spk_python
    print(f"writing workloads {', '.join(names)} into {a.workloads} ...", flush=True)
    cmd = [py, os.path.join(HERE, "make_workloads.py"), a.workloads] + names
    if subprocess.run(cmd).returncode != 0:
        sys.exit("make_workloads.py failed (it needs numpy: --pyg-python or --spk-python)")


def sh(cmd, cwd=REPO):
    try:
        return subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              timeout=120).stdout.decode().strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def python_versions(python, modules):
    code = ("import json, importlib.metadata as m\nout = {}\n"
            f"for d in {modules!r}:\n"
            "    try: out[d] = m.version(d)\n"
            "    except Exception as e: out[d] = None\n"
            "print(json.dumps(out))")
    if not os.path.exists(python):
        return {d: None for d in modules}
    try:
        return json.loads(sh([python, "-c", code]) or "{}")
    except ValueError:
        return {d: None for d in modules}


def peer_ready(python, modules):
    """None when `python -c 'import modules'` works, else why not."""
    if not os.path.exists(python):
        return f"not installed ({python} missing; run bench/setup_peers.sh)"
    p = subprocess.run([python, "-c", f"import {modules}"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env_2_threads())
    if p.returncode != 0:
        tail = [l for l in p.stderr.decode(errors="replace").splitlines() if l.strip()]
        return f"not installed ({tail[-1][:120] if tail else 'import failed'})"
    return None


def machine_info():
    info = {"platform": platform.platform(), "python": platform.python_version()}
    lscpu = sh(["lscpu"])
    for line in lscpu.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
                         "Socket(s)", "L3 cache", "Hypervisor vendor"):
            info[k.strip()] = v.strip()
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["ram_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    info["simd"] = simd_level()
    info.update(memory_policy())
    return info


def simd_level():
    """The widest x86-64 vector extension the CPU reports (which of graphpool's
    kernels run: AVX-512 has kernels of its own, e.g. the f32 softmax), or None
    off x86-64 or without /proc/cpuinfo."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    break
    except OSError:
        return None
    for name, need in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("SSE4.1", "sse4_1")):
        if need in flags:
            return name
    return "SSE2" if "sse2" in flags else None


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def memory_policy():
    """How this machine backs fresh memory, which every output pays for on its
    first touch: the transparent-huge-page mode, and whether the guest hands
    freed memory back to its hypervisor (virtio-balloon free page reporting,
    feature bit 5, with the kernel's page_reporting parameters). Read-only."""
    out = {}
    thp = read_text("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp and "[" in thp:
        out["thp"] = thp[thp.index("[") + 1:thp.index("]")]
    reporting = None
    for feats in glob.glob("/sys/bus/virtio/drivers/virtio_balloon/virtio*/features"):
        bits = read_text(feats) or ""
        reporting = bool(reporting) or (len(bits) > 5 and bits[5] == "1")
    if reporting is not None:
        out["free_page_reporting"] = reporting
        params = {}
        for name in ("page_reporting_order", "min_free_ms"):
            v = read_text(f"/sys/module/page_reporting/parameters/{name}")
            if v is not None:
                params[name] = v
        out["page_reporting"] = params
    return out


def versions(a):
    commit = sh(["git", "rev-parse", "--short=12", "HEAD"])
    if sh(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += " (with uncommitted changes)"
    v = {"rustc": sh(["rustc", "-V"]), "graphpool": commit}
    v.update(python_versions(a.pyg_python, ["torch", "torch_geometric", "torch-geometric-pool",
                                            "torch-scatter", "numpy"]))
    spk = python_versions(a.spk_python, ["tensorflow-cpu", "tensorflow", "spektral", "numpy"])
    v["tensorflow"] = spk.get("tensorflow-cpu") or spk.get("tensorflow")
    v["spektral"] = spk.get("spektral")
    v["numpy (spektral env)"] = spk.get("numpy")
    return v


def run(a):
    only = set(a.only.split(",")) if a.only else None
    rows = plan_rows(a.quick, only)
    if not rows:
        sys.exit("no rows: check --only")
    needed = sorted({r.workload for r in rows})
    missing = [w for w in needed if not workload_ready(os.path.join(a.workloads, w))]
    est = estimate_plan(rows, a, missing, SPEEDUP_TARGET)
    est_slow = estimate_plan(rows, a, missing, 1.0)
    n_cmds = sum(1 + len(r.peers) for r in rows)
    print(f"plan: {len(rows)} rows, {n_cmds} timed commands, workloads {', '.join(needed)}"
          f"{' (to write: ' + ', '.join(missing) + ')' if missing else ''}", flush=True)
    print(f"estimated time: {est / 60:.0f} min with graphpool at its targets (5x the fastest "
          f"peer), {est_slow / 60:.0f} min if only as fast as the fastest peer (from the "
          f"shared reference medians; the build not counted)", flush=True)
    load1 = os.getloadavg()[0]
    if load1 > 1.0:
        print(f"note: load average {load1:.1f} before the run: other work shares the CPUs, "
              f"so times are noisy and the run takes longer than estimated", flush=True)
    if a.dry_run:
        for r in rows:
            reps = {lib: repeat_for(lib, r, a) for lib in ["graphpool"] + r.peers}
            print(f"  {r.group:14} {r.layer:20} {r.workload:15} {r.phase:17} repeats {reps}")
        return None

    os.makedirs(a.out, exist_ok=True)
    make_workloads(missing, a)
    exe = build_examples()
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if a.quick:
        run_id += "-quick"
    results = os.path.join(a.out, "results.jsonl")
    t_start = time.perf_counter()

    def record(obj):
        obj["run_id"] = run_id
        with open(results, "a") as f:
            f.write(json.dumps(obj) + "\n")

    unavailable = {
        "pyg": peer_ready(a.pyg_python, "torch, torch_geometric"),
        "tgp": peer_ready(a.pyg_python, "torch, torch_geometric, tgp"),
        "spektral": peer_ready(a.spk_python, "tensorflow, spektral"),
    }
    for p, why in unavailable.items():
        if why:
            print(f"{p}: {why}", flush=True)
    record({"kind": "meta", "quick": a.quick, "machine": machine_info(), "versions": versions(a),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "repeat": a.repeat, "peer_repeat": a.peer_repeat, "slow_repeat": a.slow_repeat,
            "timeout_s": a.timeout, "threads": 2, "only": sorted(only) if only else None,
            "estimated_s": est, "load_average_start": os.getloadavg()})

    def bandwidth(when):
        res, err, wall = run_cmd([exe["read_bandwidth"]], a.timeout)
        res = res or {"error": err}
        res.update(kind="bandwidth", when=when)
        print(f"bandwidth ({when}): " + (f"{res['gb_per_s']:.1f} GB/s" if "gb_per_s" in res
                                         else res["error"]), flush=True)
        record(res)

    bandwidth("start")
    footprints = set()
    for i, r in enumerate(rows):
        wdir = os.path.join(a.workloads, r.workload)
        common = ["--workload", wdir, "--layer", r.layer, "--k", str(a.k), "--ratio", str(a.ratio)]
        if (r.layer, r.workload) not in footprints:
            footprints.add((r.layer, r.workload))
            res, err, _ = run_cmd([exe["pool_footprint"]] + common + ["--backward"], a.timeout)
            if res is None or "error" in res:  # backward failed: the forward's sizes at least
                res, err, _ = run_cmd([exe["pool_footprint"]] + common, a.timeout)
            res = res or {"library": "graphpool", "layer": r.layer, "workload": r.workload,
                          "error": err}
            res["kind"] = "footprint"
            record(res)
        bw = ["--backward"] if r.phase == "forward+backward" else []
        for lib in ["graphpool"] + r.peers:
            reps = repeat_for(lib, r, a)
            base = {"kind": "time", "library": lib, "layer": r.layer, "workload": r.workload,
                    "phase": r.phase, "group": r.group, "requested_repeat": reps}
            if lib != "graphpool" and unavailable[lib]:
                res, wall = dict(base, error=unavailable[lib]), 0.0
            elif lib != "graphpool" and a.no_slow_peers and is_slow(lib, r):
                res, wall = dict(base, error="skipped (--no-slow-peers)"), 0.0
            else:
                if lib == "graphpool":
                    cmd = [exe["pool_bench"]] + common + bw + ["--repeat", str(reps)]
                else:
                    py = a.spk_python if lib == "spektral" else a.pyg_python
                    script = os.path.join(HERE, "peers", f"{lib}_reference.py")
                    cmd = [py, script] + common + bw + ["--repeat", str(reps), "--threads", "2"]
                res, err, wall = run_cmd(cmd, a.timeout)
                res = dict(base, **res) if res else dict(base, error=err)
                res["wall_s"] = round(wall, 3)
            record(res)
            shown = f"{res['median_s']:.4g} s" if "median_s" in res else res.get("error", "?")
            print(f"[{i + 1}/{len(rows)} {time.perf_counter() - t_start:6.0f} s] "
                  f"{r.layer} {r.workload} {r.phase} {lib}: {shown}", flush=True)
    bandwidth("end")
    record({"kind": "end", "elapsed_s": round(time.perf_counter() - t_start, 1),
            "load_average_end": os.getloadavg()})
    print(f"done in {(time.perf_counter() - t_start) / 60:.1f} min "
          f"(estimated {est / 60:.0f} min); raw lines in {results}", flush=True)
    return run_id


# ---------------------------------------------------------------- the report

def fmt_s(t):
    if t is None:
        return "—"
    if t >= 99.95:
        return f"{t:.0f} s"
    if t >= 0.9995:
        return f"{t:.3g} s"
    if t >= 0.0009995:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


def fmt_bytes(b):
    if not b:
        return "—"
    for unit, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= s:
            return f"{b / s:.3g} {unit}"
    return f"{b} B"


def short_error(e):
    e = e or ""
    low = e.lower()
    if e.startswith("timed out"):
        return e
    if e.startswith("not supported"):
        return "not supported"
    if e.startswith("not installed"):
        return "not installed"
    if e.startswith("skipped"):
        return "skipped"
    if "oom" in low or "out of memory" in low or "can't allocate" in low or \
            "cannot allocate" in low or "memoryerror" in low or "allocat" in low:
        return "out of memory"
    return "error"


def load_run(results, run_id):
    recs = []
    with open(results) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    pass
    ids = [r.get("run_id") for r in recs if r.get("kind") == "meta"]
    if not ids:
        sys.exit(f"no run in {results}")
    rid = run_id or ids[-1]
    return rid, [r for r in recs if r.get("run_id") == rid]


def in_out_bytes(fp, phase):
    """inputs + outputs (forward) or + gradients (forward+backward)."""
    if not fp or "input_bytes" not in fp:
        return None
    outs = fp.get("outputs", {})
    fwd = sum(v for k, v in outs.items() if not k.startswith("grad_"))
    if phase == "forward":
        return fp["input_bytes"] + fwd
    if fp.get("phase") != "forward+backward":
        return None
    return fp["input_bytes"] + fp["output_bytes"]


def evaluate(row, times, fp, bw_bytes_per_s):
    """Everything one table line shows, and the targets' verdicts."""
    gp = times.get("graphpool", {})
    gp_t = gp.get("median_s")
    peers = {p: times[p] for p in PEERS if p in times}
    eligible = SPARSE_PEERS if row["target"] == "speedup-sparse" else set(PEERS)
    ok_peers = [(t["median_s"], p) for p, t in peers.items()
                if "median_s" in t and p in eligible]
    fastest = min(ok_peers) if ok_peers else None
    speedup = fastest[0] / gp_t if fastest and gp_t else None
    io = in_out_bytes(fp, row["phase"])
    gp_rss = gp.get("peak_rss_bytes")
    mem_ratio = gp_rss / io if gp_rss and io else None
    checks = []
    if row["target"] == "bandwidth":
        frac = (fp["inputs"]["x"] / gp_t / bw_bytes_per_s
                if gp_t and fp and "inputs" in fp and bw_bytes_per_s else None)
        checks.append((f"≥ {BANDWIDTH_TARGET:.0%} bandwidth",
                       None if frac is None else frac >= BANDWIDTH_TARGET))
    elif row["target"] in ("speedup", "speedup-sparse"):
        what = "sparse peer" if row["target"] == "speedup-sparse" else "peer"
        checks.append((f"≥ {SPEEDUP_TARGET:g}× fastest {what}",
                       None if speedup is None else speedup >= SPEEDUP_TARGET))
        if row["target"] == "speedup-sparse" and row["phase"] == "forward+backward":
            checks.append(("< 4 GB RSS", None if not gp_rss else gp_rss < RSS_LIMIT))
    if io is None or io >= MEMORY_MIN_BYTES:
        checks.append((f"RSS ≤ {MEMORY_FACTOR:g}× in+out",
                       None if mem_ratio is None else mem_ratio <= MEMORY_FACTOR))
    return {"gp": gp, "peers": peers, "fastest": fastest, "speedup": speedup, "io": io,
            "mem_ratio": mem_ratio, "checks": checks}


def cell(t):
    if t is None:
        return "—"
    if "median_s" in t:
        return fmt_s(t["median_s"])
    return short_error(t.get("error"))


def verdict(checks):
    parts = []
    for name, ok in checks:
        mark = "✓" if ok else ("✗" if ok is not None else "n/a")
        parts.append(f"{mark} {name}")
    return "<br>".join(parts) or "—"


def report(a, run_id):
    results = os.path.join(a.out, "results.jsonl")
    rid, recs = load_run(results, run_id)
    meta = next(r for r in recs if r.get("kind") == "meta")
    bws = {r["when"]: r for r in recs if r.get("kind") == "bandwidth"}
    bw_vals = [r["gb_per_s"] for r in bws.values() if "gb_per_s" in r]
    bw = statistics.median(bw_vals) * 1e9 if bw_vals else None
    fps = {(r["layer"], r["workload"]): r for r in recs if r.get("kind") == "footprint"}
    times = {}
    rows = []
    for r in recs:
        if r.get("kind") != "time":
            continue
        key = (r["layer"], r["workload"], r["phase"])
        if key not in times:
            rows.append((r["group"], key))
        times.setdefault(key, {})[r["library"]] = r
    only = set(meta["only"]) if meta.get("only") else None
    target_of = {r.key: r.target for r in plan_rows(meta.get("quick", False), only)}

    out = []
    w = out.append
    if meta.get("quick"):
        w("> **QUICK-MODE SMOKE RUN — NOT A BENCHMARK.** Written by `bench/compare.py --quick`: "
          "small workloads only, one timed run per command; these numbers test the "
          "pipeline, they measure nothing. Run `bench/compare.py` without `--quick` for "
          "the real comparison.\n")
    w("# Benchmarks: graphpool beside PyTorch Geometric, Spektral and torch-geometric-pool\n")
    if not any(r.get("kind") == "end" for r in recs):
        planned = len(plan_rows(meta.get("quick", False), only))
        w(f"> **This run was stopped before its end** ({len(rows)} of its {planned} rows "
          "measured): the rows below are complete, the missing ones were not run. "
          "Rerun `bench/compare.py` for the whole table.\n")
    w(f"Written by `bench/compare.py` (run `{rid}`, {meta['date']}); raw JSON lines in "
      f"`bench-out/results.jsonl`. Every library reads the same input files "
      f"(`bench/make_workloads.py`), runs with **2 threads**, one command per library "
      f"and row, in alternation (graphpool, PyG, Spektral, tgp, then the next row), "
      f"so ratios are measured side by side.\n")
    m, v = meta["machine"], meta["versions"]
    w("## Machine and versions\n")
    w(f"- CPU: {m.get('Model name', '?')}, {m.get('CPU(s)', '?')} CPUs "
      f"({m.get('Core(s) per socket', '?')} cores per socket × {m.get('Socket(s)', '?')}, "
      f"{m.get('Thread(s) per core', '?')} thread per core)"
      + (f", hypervisor {m['Hypervisor vendor']}" if m.get("Hypervisor vendor") else "")
      + (f"; widest SIMD: {m['simd']}" if m.get("simd") else ""))
    w(f"- RAM: {fmt_bytes(m.get('ram_bytes'))}; {m.get('platform', '')}")
    if "thp" in m or "free_page_reporting" in m:
        parts = []
        if "thp" in m:
            parts.append(f"transparent huge pages `{m['thp']}`")
        if m.get("free_page_reporting"):
            pr = m.get("page_reporting", {})
            detail = ", ".join(f"{k} {v}" for k, v in pr.items())
            parts.append("the hypervisor's free page reporting **on** (virtio-balloon"
                         + (f"; {detail}" if detail else "") + "): memory the guest frees is "
                         "handed back to the host, and its next first touch faults in the "
                         "host as well (see the README on fresh outputs)")
        elif "free_page_reporting" in m:
            parts.append("virtio-balloon present, free page reporting off")
        w("- fresh memory: " + "; ".join(parts))
    w(f"- graphpool {v.get('graphpool')} built by {v.get('rustc')}")
    w(f"- PyG: torch {v.get('torch')}, torch_geometric {v.get('torch_geometric')}; "
      f"tgp: torch-geometric-pool {v.get('torch-geometric-pool')} "
      f"(torch_scatter {v.get('torch-scatter')}); numpy {v.get('numpy')}")
    w(f"- Spektral {v.get('spektral')} on TensorFlow {v.get('tensorflow')} "
      f"(numpy {v.get('numpy (spektral env)')})")
    end = next((r for r in recs if r.get("kind") == "end"), None)
    loads = [x for x in (meta.get("load_average_start"), end and end.get("load_average_end"))
             if x]
    if loads:
        w("- load average (1, 5, 15 min) at the start" + (" and the end" if len(loads) > 1
                                                           else "") + " of the run: "
          + "; ".join(", ".join(f"{v:.1f}" for v in l) for l in loads)
          + " (about 0 on a quiet machine; higher means other work shared the CPUs)")
    w(f"- timed runs per command: graphpool {meta['repeat']}; peers {meta['repeat']} "
      f"when a run is expected under 1 s, {meta['peer_repeat']} when longer, "
      f"{meta['slow_repeat']} for tgp's clustering pools on disjoint-small (23-85 s per "
      f"forward+backward); each after untimed warm-up runs lasting at least 0.5 s (at "
      f"least one; the same rule in every harness); graphpool's all-ones "
      f"output gradient built between its two passes, outside the timed span (PyTorch's "
      f"backward of a sum expands a scalar; Spektral's tape builds it in every run); "
      f"timeout {meta['timeout_s']:g} s per command\n")
    w("## Memory read bandwidth\n")
    for when in ("start", "end"):
        r = bws.get(when, {})
        w(f"- {when} of the run: " + (f"{r['gb_per_s']:.1f} GB/s (1 GiB of f32 summed by 2 "
                                      f"threads, median of 7)" if "gb_per_s" in r
                                      else r.get("error", "not measured")))
    w(f"- used below: **{bw / 1e9:.1f} GB/s** (median of the two)\n" if bw else
      "- used below: none measured\n")

    summary = {"✓": 0, "✗": 0, "n/a": 0}
    sections = [
        ("global", "Global pools",
         "The bandwidth column: the bytes of x (N × F f32) / graphpool's median / the "
         "measured read bandwidth (the target, ≥ 70 %, is on the forward pass on global-1e7)."),
        ("selection", "Selection pools (TopKPool, SAGPool)", ""),
        ("mempool", "MemPooling", "MemPooling exists only in PyG."),
        ("clustering", "Clustering pools (K = 16)",
         "On single-1e6 the speed-up is to the fastest **sparse** peer (Spektral single mode "
         "with a sparse adjacency, tgp sparse mode): PyG's MinCut and DMoN are dense "
         "(`to_dense_adj`, N × N). On disjoint-small Spektral runs in batch mode on the "
         "graphs zero-padded to [10⁴, 50, ·] (its dense poolers have no disjoint mode); "
         "the padding (`to_batch`, about 1.4 s) is done before timing and not counted."),
        ("scaling", "Clustering pools: scaling (forward+backward)",
         "The rows of the plot below that are not in the table above."),
        ("graphpool-only", "Layers without a peer script",
         "Spektral has LaPool, SortPool and GlobalAttentionPool and PyG has SortAggregation "
         "and AttentionalAggregation, but the peers' timing scripts (bench/peers/) do not "
         "run them: graphpool's times only."),
    ]
    errors = {}
    for group, title, note in sections:
        keys = [k for g, k in rows if g == group]
        if not keys:
            continue
        w(f"## {title}\n")
        if note:
            w(note + "\n")
        bwcol = group == "global"
        head = ["layer", "workload", "phase", "graphpool", "PyG", "Spektral", "tgp",
                "fastest peer", "speed-up", "graphpool peak RSS", "peer peak RSS",
                "RSS / (in+out)"] + (["of bandwidth"] if bwcol else []) + ["targets"]
        w("| " + " | ".join(head) + " |")
        w("|" + "---|" * len(head))
        for key in keys:
            layer, wl, phase = key
            row = {"layer": layer, "workload": wl, "phase": phase,
                   "target": target_of.get(key)}
            ev = evaluate(row, times[key], fps.get((layer, wl)), bw)
            for lib, t in times[key].items():
                if "error" in t:
                    errors.setdefault(t["error"], []).append(
                        f"{PEER_NAMES[lib]} {layer} {wl} {phase}")
            fastest = ev["fastest"]
            peer_rss = (times[key][fastest[1]].get("peak_rss_bytes") if fastest else None)
            gp_t = ev["gp"].get("median_s")
            cells = [layer, wl, phase,
                     cell(ev["gp"]) if ev["gp"] else "—",
                     *[cell(times[key].get(p)) if p in PEER_LAYERS and layer in PEER_LAYERS[p]
                       else "no peer" for p in PEERS],
                     (f"{PEER_NAMES[fastest[1]]} {fmt_s(fastest[0])}"
                      + (" (sparse)" if row["target"] == "speedup-sparse" else "")
                      if fastest else "—"),
                     f"{ev['speedup']:.2f}×" if ev["speedup"] else "—",
                     fmt_bytes(ev["gp"].get("peak_rss_bytes")),
                     fmt_bytes(peer_rss),
                     f"{ev['mem_ratio']:.2f}" if ev["mem_ratio"] else "—"]
            if bwcol:
                fp = fps.get((layer, wl))
                frac = (fp["inputs"]["x"] / gp_t / bw
                        if gp_t and bw and fp and "inputs" in fp else None)
                cells.append(f"{frac:.0%}" if frac is not None else "—")
            cells.append(verdict(ev["checks"]))
            for _, ok in ev["checks"]:
                summary["✓" if ok else ("✗" if ok is not None else "n/a")] += 1
            w("| " + " | ".join(cells) + " |")
        w("")

    svg = os.path.join(HERE, "clustering_scaling.svg")
    if os.path.exists(svg):
        w("## Scaling of the clustering pools\n")
        w("Forward+backward median against the number of nodes (one graph, average degree "
          "10, F = 64, K = 16), log-log; a missing point is an error or a timeout (see the "
          "tables).\n")
        w("![forward+backward time against N for the clustering pools](bench/clustering_scaling.svg)\n")

    w("## Targets\n")
    w(f"{summary['✓']} met, {summary['✗']} missed, {summary['n/a']} not decidable (no result "
      "to compare). The targets: GlobalSum/Avg/MaxPool on global-1e7 ≥ 70 % of the measured "
      "read bandwidth; TopKPool and SAGPool on disjoint-small and single-1e6 and MemPooling on "
      "disjoint-small ≥ 5× the fastest peer; MinCut, DMoN, DiffPool, JustBalance, "
      "AsymCheegerCut on single-1e6 ≥ 5× the fastest sparse peer and forward+backward under "
      "4 GB peak RSS, on disjoint-small ≥ 5× the fastest peer (forward and forward+backward "
      "each); every layer: peak memory at most 2× its inputs plus outputs.\n")
    w("## How to read the tables\n")
    w("- Times are medians of the timed runs after at least 0.5 s of untimed warm-up runs "
      "(at least one; every harness, graphpool's and the peers', the same rule); the speed-up is the "
      "fastest (eligible) peer's median / graphpool's median, from this one run. A process's "
      "first few runs are slower than its later ones (memory settling, for every library), so "
      "the fast rows take 15 timed runs: the median is then the steady state a training loop "
      "sees, not the settling.")
    w("- What a graphpool batch keeps between runs: the first backward pass that needs it (the "
      "warm-up) computes which graphs of the batch have a symmetric adjacency "
      "(`DisjointBatch::symmetric_graphs`, O(nnz log d), once per batch: about the time of "
      "one transposed sparse product A^T S, e.g. ~0.37 s on single-1e6, ~10 ms on "
      "disjoint-small), and the timed runs reuse it, as a training loop over the same graphs "
      "would. The peers' inputs are likewise converted once before timing.")
    w("- Peak RSS is the whole process's high-water mark (graphpool: VmHWM; peers: "
      "ru_maxrss), loading the workload and the interpreter included.")
    w("- in+out: the bytes of the layer's inputs as held in memory (x, CSR indptr / indices "
      "/ data, segments, parameters) plus its outputs (pooled x and adjacency, selection, "
      "scores, losses) and, for forward+backward, the gradients (x, parameters), counted by "
      "`examples/pool_footprint.rs`. The memory target is judged "
      f"where in+out is at least {MEMORY_MIN_BYTES / 1e6:.0f} MB; below, the process's fixed "
      "RSS of a few MB dominates and the ratio is shown only.")
    w("- `--backward` (forward+backward) times the forward pass and the backward pass of the "
      "sum of every output and auxiliary loss, for every library, with respect to x and the "
      "parameters (graphpool's edge-weight gradients off, as the peers do not compute them).")
    w("- How each peer runs each layer: the docstrings of `bench/peers/*_reference.py`.\n")
    if errors:
        w("## Errors and timeouts\n")
        for e, where in errors.items():
            shown = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6 else "")
            w(f"- `{e}`: {shown}")
        w("")
    w("## Reproduce\n")
    if end:
        w(f"This run took {end['elapsed_s'] / 60:.0f} min (estimated beforehand: "
          f"{meta.get('estimated_s', 0) / 60:.0f} min).\n")
    w("```sh\nbench/setup_peers.sh    # the peers' environments, in bench-env/\n"
      "bench/compare.py        # the whole comparison (--quick: a smoke test)\n```")
    path = os.path.join(REPO, "BENCHMARKS.md")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {path}", flush=True)
    return rid, recs


def plot(a, recs):
    """bench/clustering_scaling.svg, drawn by the pyg environment's matplotlib."""
    series = {}
    for r in recs:
        if r.get("kind") == "time" and r["layer"] in CLUSTERING and \
                r["phase"] == "forward+backward" and r["workload"] in SCALING_N and \
                "median_s" in r:
            series.setdefault(r["layer"], {}).setdefault(PEER_NAMES[r["library"]], []).append(
                (SCALING_N[r["workload"]], r["median_s"]))
    if not series:
        print("plot: no clustering forward+backward results on single-1e3..1e6", flush=True)
        return
    svg = os.path.join(HERE, "clustering_scaling.svg")
    data = json.dumps({"layers": CLUSTERING, "series": series, "out": svg})
    p = subprocess.run([a.pyg_python, os.path.join(HERE, "plot_scaling.py")],
                       input=data.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        print("plot failed: " + p.stderr.decode(errors="replace").strip()[-300:], flush=True)
    else:
        print(f"wrote {svg}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test on small workloads")
    ap.add_argument("--only", help="comma-separated layer names (Spektral's)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed runs of graphpool, and of a peer when a run is expected "
                         "under 1 s (15)")
    ap.add_argument("--peer-repeat", type=int, default=None,
                    help="a peer's timed runs when a run is expected over 1 s (3)")
    ap.add_argument("--slow-repeat", type=int, default=None,
                    help="timed runs of the slow peer rows: tgp's clustering pools on "
                         "disjoint-small (1)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per command (300)")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--pyg-python", default=os.path.join(REPO, "bench-env", "pyg", "bin", "python"))
    ap.add_argument("--spk-python", default=os.path.join(REPO, "bench-env", "spk", "bin", "python"))
    ap.add_argument("--workloads", default=os.path.join(REPO, "bench-out", "workloads"))
    ap.add_argument("--out", default=os.path.join(REPO, "bench-out"))
    ap.add_argument("--no-slow-peers", action="store_true",
                    help="skip the slow peer rows (tgp's clustering pools on disjoint-small, "
                         "about 10 min)")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite BENCHMARKS.md (and the plot) from results.jsonl")
    ap.add_argument("--run-id", help="with --report-only: the run to report (default: the last)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and its estimate")
    a = ap.parse_args()
    quick_defaults = dict(repeat=1, peer_repeat=1, slow_repeat=1, timeout=120.0)
    full_defaults = dict(repeat=15, peer_repeat=3, slow_repeat=1, timeout=300.0)
    for k, v in (quick_defaults if a.quick else full_defaults).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.quick:
        a.no_slow_peers = True
    for p in ("pyg_python", "spk_python", "workloads", "out"):
        setattr(a, p, os.path.abspath(getattr(a, p)))
    if a.report_only:
        _, recs = load_run(os.path.join(a.out, "results.jsonl"), a.run_id)
        plot(a, recs)
        report(a, a.run_id)
        return
    run_id = run(a)
    if run_id:
        _, recs = load_run(os.path.join(a.out, "results.jsonl"), run_id)
        plot(a, recs)
        report(a, run_id)


if __name__ == "__main__":
    main()
