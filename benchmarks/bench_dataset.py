"""Build the whole embedded dataset cold (fresh cache folder) and warm (from the cache); print times and counts.

    .venv/bin/python benchmarks/bench_dataset.py [--limit N] [--jobs J]

Targets on 2 CPU cores: cold < 3 min, warm < 5 s, for the 18,093 embedded structures.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="first N of each MP-20 split (0 = all)")
    parser.add_argument("--jobs", type=int, default=-1, help="worker processes (-1 = all cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="eacnn-bench-") as tmp:
        os.environ["EACNN_CACHE"] = tmp  # a fresh cache: the first build is cold
        from eacnn import Config
        from eacnn.datasets.dataset import build_dataset
        from eacnn.datasets.structures import _read_embedded

        cfg = Config.cpu().replace(**{"data.max_structures": args.limit})
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

        t0 = time.perf_counter()
        cold = build_dataset(cfg, progress=False, n_jobs=args.jobs)
        t_cold = time.perf_counter() - t0
        _read_embedded.cache_clear()  # the warm load reads the embedded table again, as a new process would
        t0 = time.perf_counter()
        warm = build_dataset(cfg, progress=False, n_jobs=args.jobs)
        t_warm = time.perf_counter() - t0

        assert warm.from_cache and not cold.from_cache
        size_mb = sum(f.stat().st_size for f in cold.cache_path.parent.glob("dataset-*")) / 1e6
        splits = {s: len(cold.indices(s)) for s in ("train", "val", "test")}
        print(f"cores: {cores}, n_jobs: {args.jobs}, input rows: {len(cold) + len(cold.skipped)}")
        print(f"cold build: {t_cold:7.1f} s   (target < 180 s)")
        print(f"warm load:  {t_warm:7.2f} s   (target < 5 s)")
        print(f"built: {len(cold)} structures {splits}")
        print(f"skipped: {len(cold.skipped)} {cold.skipped['reason'].value_counts().to_dict()}")
        print(f"edges: {cold._a['edge_index'].shape[1]:,}  sticks: {len(cold._a['stick_two_theta']):,}")
        print(f"cache: {size_mb:.1f} MB in {cold.cache_path.parent}")


if __name__ == "__main__":
    main()
