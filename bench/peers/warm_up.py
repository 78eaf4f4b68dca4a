"""The untimed warm-up of the three peer scripts in this folder (their one
change from the shared kit, 2026-11-26): runs until WARM_UP_S seconds have
passed, and at least one, the same rule as graphpool's
examples/pool_bench.rs (its WARM_UP). On the 2-core VM of the benches a
process's first 0.2-0.3 s of runs were up to 1.5x slower than the later
ones, which left a fast row's median, and not a slow one's, in that phase.
The scripts import it from their own folder (Python puts a script's folder
first on its path)."""
import time

WARM_UP_S = 0.5


def warm_up(step):
    """Untimed runs of `step`: at least one, and until WARM_UP_S have passed."""
    t0 = time.perf_counter()
    step()
    while time.perf_counter() - t0 < WARM_UP_S:
        step()
