"""Latency and memory of `eacnn search`, side by side in one run: the first search on an empty cache, warm
searches, a batch of patterns in one process, and the saved-database index at 150,000 candidates.

    python benchmarks/bench_search.py [--batch 40] [--big 150000]

* **cold**: `eacnn search` with ``EACNN_HOME`` pointing at an empty folder, so the embedded database is assembled
  from the shipped embeddings (reflections simulated, files written) before the search;
* **warm**: the same command again (the database is opened memory-mapped; no torch is imported), also with
  ``--phases 1`` and with ``--phases 1 --scan-fits 0`` (without the fit to the scan itself);
* **batch**: one `eacnn search` over ``--batch`` pattern files (copies of the shipped measured patterns), patterns per
  second after loading;
* **index**: a synthetic database of ``--big`` clustered embeddings written with an IVF index (recall measured at
  build time), then the time per query of one scale and of a whole multi-scale query.

Each command runs as a real subprocess, as users run it; wall time and peak resident memory (``ru_maxrss`` of the
child) are printed, with the date and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "eacnn" / "data" / "measured"


def run(args: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB of that child alone, stdout) of ``eacnn ARGS``."""
    code = ("import resource, runpy, sys; sys.argv = ['eacnn'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('eacnn', run_name='__main__')\n"
            "finally:\n    print(f'@@rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"eacnn {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    rss = int(proc.stderr.rsplit("@@rss ", 1)[1].split()[0]) / 1024  # kB -> MB
    return wall, rss, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=40, help="pattern files searched in one process")
    parser.add_argument("--big", type=int, default=150_000, help="candidates of the synthetic indexed database")
    args = parser.parse_args()
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    pattern = str(MEASURED / "Example__MnO.xy.gz")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "EACNN_HOME": home}
        cold, cold_mb, _ = run(["search", pattern, "--json"], env)
        warm, single, no_fit = [], [], []
        for _ in range(3):
            w, warm_mb, _ = run(["search", pattern, "--json"], env)
            warm.append(w)
            single.append(run(["search", pattern, "--json", "--phases", "1"], env)[0])
            no_fit.append(run(["search", pattern, "--json", "--phases", "1", "--scan-fits", "0"], env)[0])
        files = Path(home) / "patterns"
        files.mkdir()
        sources = sorted(MEASURED.glob("*.xy.gz"))
        for i in range(args.batch):
            shutil.copy(sources[i % len(sources)], files / f"p{i:03d}_{sources[i % len(sources)].name}")
        t_one, _, _ = run(["search", str(files / sorted(os.listdir(files))[0]), "--json", "--phases", "1"], env)
        t_batch, batch_mb, out = run(["search", str(files), "--json", "--phases", "1"], env)
        n_lines = len([line for line in out.splitlines() if line.strip()])
    per_second = args.batch / max(t_batch - t_one, 1e-9)
    print(f"{'path':<44} {'wall':>9} {'peak RSS':>10}")
    print(f"{'cold (empty cache, shipped embeddings)':<44} {cold:8.2f}s {cold_mb:8.0f}MB")
    print(f"{'warm (median of 3; phases auto, the default)':<44} {np.median(warm):8.2f}s {warm_mb:8.0f}MB")
    print(f"{'warm (median of 3; --phases 1)':<44} {np.median(single):8.2f}s")
    print(f"{'warm (median of 3; --phases 1 --scan-fits 0)':<44} {np.median(no_fit):8.2f}s")
    print(f"{f'batch of {args.batch} files, one process, --phases 1':<44} {t_batch:8.2f}s {batch_mb:8.0f}MB"
          f"   {per_second:.1f} patterns/s after loading ({n_lines} JSON lines)")
    if args.big > 0:  # --big 0: the command-line paths only
        _index(args.big)


def _index(n: int) -> None:
    from eacnn.retrieval.database import open_database, write_database
    from eacnn.retrieval.pattern_tower import PatternTower
    from eacnn.retrieval.query import SCALES

    import pandas as pd

    rng = np.random.default_rng(0)
    d = 256
    centres = rng.normal(size=(max(1, n // 50), d)).astype(np.float32)
    emb = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = pd.DataFrame({"material_id": [f"s-{i}" for i in range(n)], "formula": "X", "spacegroup_symbol": "P1",
                           "spacegroup_number": 1, "crystal_system": "triclinic", "source": "synthetic",
                           "elements": "X"})
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        tower = {"stem.w": np.zeros((1, 1, 7), np.float32)}  # unused here: queries are embeddings
        folder = write_database(Path(tmp) / "big", labels, emb, tower, {"threshold": 0.5}, "synthetic", ["synthetic"])
        built = time.perf_counter() - t
        db = open_database(folder)
        db.tower = PatternTower(db.tower.a)
        q = emb[rng.choice(n, 200)] + 0.05 * rng.normal(size=(200, d)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        db.scores(q[0], 10)  # load the index
        t = time.perf_counter()
        for z in q:
            db.scores(z, 10)
        one = 1000 * (time.perf_counter() - t) / len(q)
        t = time.perf_counter()
        for z in q[:50]:
            for _ in SCALES:
                db.scores(z, 40)
        multi = 1000 * (time.perf_counter() - t) / 50
        exact = 1000 * min(_timed(lambda: np.argsort(-(emb @ q[0]))[:10]) for _ in range(5))
        info = db.manifest["index"]
    print(f"\nindex over {n:,} synthetic candidates: {info['kind']} (nlist {info['nlist']}, nprobe {info['nprobe']}, "
          f"recall@10 {info['recall_at_10']:.3f}), built in {built:.1f} s")
    print(f"  one query {one:.2f} ms; a multi-scale query ({len(SCALES)} scales) {multi:.1f} ms; "
          f"exact matrix-vector product {exact:.1f} ms ({exact / one:.0f}x slower than the index)")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
