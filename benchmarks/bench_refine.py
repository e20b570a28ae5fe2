"""Cost per candidate of the two refinements ``eacnn search`` runs, side by side in one run: the lattice-scale
refinement (:func:`eacnn.retrieval.identify.refine` without reflections) and the whole-cell fit
(:func:`eacnn.retrieval.identify.refine_cell`) — the figures behind the search's tiering (refine
:data:`~eacnn.retrieval.identify.RERANK_DEPTH`, fit the cells of :data:`~eacnn.retrieval.identify.CELL_FITS`).

    python benchmarks/bench_refine.py [--candidates 60]

Validation patterns with a 2 % smaller cell, each against ``--candidates`` validation structures (the right one
and others); single-threaded BLAS, as the search runs it. Prints milliseconds per candidate of each, their ratio,
and the refinement time of one search at the shipped depth.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np


def main() -> None:
    import torch

    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.retrieval.identify import CELL_FITS, RERANK_DEPTH, refine, refine_cell
    from eacnn.physics.conditions import condition_queries

    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, default=60)
    parser.add_argument("--queries", type=int, default=4)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    ds = build_dataset(Config.cpu(), progress=False)
    val = ds.indices("val")
    rows = [int(r) for r in val[: args.candidates] if ds.reflections(int(r)) is not None]
    patterns, masks = condition_queries(ds, val[: args.queries], "iso -2 %", seed=7)
    masks = [None] * len(patterns) if masks is None else masks
    sticks, xrd = ds.sticks, ds.config.xrd
    refine(patterns[0], masks[0], rows[:2], sticks, xrd)  # warm caches (kernels) before timing

    t = time.perf_counter()
    fits = [refine(p, m, rows, sticks, xrd) for p, m in zip(patterns, masks)]
    iso = (time.perf_counter() - t) / (len(patterns) * len(rows))
    t = time.perf_counter()
    for p, m, f in zip(patterns, masks, fits):
        for r, fit in zip(rows, f.itertuples()):
            refine_cell(p, m, ds.reflections(r), xrd, fit.strain, fit.zero_shift, fit.width)
    cell = (time.perf_counter() - t) / (len(patterns) * len(rows))
    print(f"{datetime.date.today()}, {platform.machine()}, {len(patterns)} patterns x {len(rows)} candidates")
    print(f"lattice-scale refinement {1e3 * iso:7.1f} ms per candidate")
    print(f"whole-cell fit           {1e3 * cell:7.1f} ms per candidate ({cell / iso:.0f}x)")
    print(f"one search at the shipped depth (refine {RERANK_DEPTH}, cells {CELL_FITS}): "
          f"{RERANK_DEPTH * iso + CELL_FITS * cell:.2f} s of refinement")


if __name__ == "__main__":
    main()
