"""Identify the measured single-phase patterns of XRD-AutoAnalyzer and time `eacnn search`.

    python benchmarks/bench_search.py [--checkpoint PATH]

Prints, for MnO, Mn2O3, MnO2, TiO2 and LiMnO2 (measured, Cu Kα, eacnn/data/measured), the rank of the first
candidate with the right reduced formula when the database is the embedded set plus the 56 reference CIFs shipped
with those patterns, with and without an element filter; then the latency of the command end to end and of one
query over the database and over a synthetic pool of 150,000 embeddings (torch and FAISS).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "eacnn" / "data" / "measured"
REFERENCE_CIFS = ROOT / "eacnn" / "data" / "reference_cifs"
PHASES = ["MnO", "Mn2O3", "MnO2", "TiO2", "LiMnO2"]


def main() -> None:
    import torch

    from eacnn.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, model_from_checkpoint
    from eacnn.config import Config
    from eacnn.measured import read_pattern, to_model_grid
    from eacnn.retrieval import Index, have_faiss, query_latency
    from eacnn.search import calibrate, load_database, phase_report, rank

    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--cifs", default=str(REFERENCE_CIFS), help="folder of reference CIFs added to the database")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    ckpt = load_checkpoint(args.checkpoint)
    model, cfg = model_from_checkpoint(ckpt), Config.from_dict(ckpt["config"])
    sources = ["embedded"] + ([args.cifs] if Path(args.cifs).is_dir() else [])
    t0 = time.perf_counter()
    db = load_database(sources, model, cfg, progress=False)
    print(f"database: {len(db.labels):,} structures from {sources} (embedded in {time.perf_counter() - t0:.0f} s, "
          f"cached afterwards)")
    cal = calibrate(model, cfg)
    print(f"no-confident-match threshold {cal.threshold:.4f} (validation, level {cal.level}, "
          f"{cal.n_queries} queries present and absent, {100 * cal.target:.0f} % precision of a match)\n")
    grids = {phase: to_model_grid(read_pattern(MEASURED / f"Example__{phase}.xy.gz")) for phase in PHASES}
    report = phase_report(grids, model, db, cal)
    reranked = phase_report(grids, model, db, cal, cfg=cfg, rerank=20)
    report.insert(3, "rank after --rerank 20", reranked["rank"])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(report.round(3).to_string(index=False))

    # latency: one query over the database, and over a synthetic 150k pool
    grid = to_model_grid(read_pattern(MEASURED / "Example__MnO.xy.gz"))
    t = time.perf_counter()
    for _ in range(20):
        rank(grid.vector, model, db, top=10)
    print(f"\nper query over {len(db.labels):,} structures (embed pattern + rank): "
          f"{1000 * (time.perf_counter() - t) / 20:.1f} ms")
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((150_000, db.embeddings.shape[1])).astype(np.float32)
    queries = rng.standard_normal((100, db.embeddings.shape[1])).astype(np.float32)
    for backend in ["torch"] + (["faiss"] if have_faiss() else []):
        ms = query_latency(Index(pool, backend=backend), queries, repeat=1)
        print(f"per query over a synthetic pool of 150,000 ({backend}): {ms:.2f} ms")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "eacnn", "search", str(MEASURED / "Example__MnO.xy.gz"), "--json"],
                          capture_output=True, text=True)
    print(f"`eacnn search` end to end (process start, model load, cached database, query): "
          f"{time.perf_counter() - t:.1f} s (exit {proc.returncode})")


if __name__ == "__main__":
    main()
