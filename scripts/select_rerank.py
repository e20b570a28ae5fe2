"""Choose how ``eacnn search`` re-ranks its refined candidates (:data:`eacnn.retrieval.identify.RERANK_WEIGHT`), on
the validation split only.

    python scripts/select_rerank.py [--queries 400]

For each method (the shipped model, search-match) and seven query conditions of :mod:`eacnn.robustness` (clean,
iso −2 %, iso +1 %, anisotropic 1.5 %, texture, the training measurement family, the held-out family), each of
``--queries`` validation structures is read at the lattice scales of the multi-scale query, its best ten candidates
among the validation split are refined (:func:`eacnn.retrieval.identify.refine`) and re-ranked by
w · agreement + (1 − w) · similarity for w in 0, 0.25 … 1. Prints Top-1 per (method, condition, w) and the mean over
conditions; the weight with the best mean for the model is the default. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

CONDITIONS = ("clean", "iso -2 %", "iso +1 %", "aniso 1.5 %", "texture", "measured", "held-out")
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


def main() -> None:
    import torch

    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.retrieval.identify import refine, rerank_score
    from eacnn.retrieval.query import SCALES, rescale_many
    from eacnn.robustness import _similarities, condition_queries, method_embeddings
    from eacnn.training.checkpoint import DEFAULT_CHECKPOINT, load_pretrained

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=400)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    ds = build_dataset(Config.cpu(), progress=False)
    rows = ds.indices("val")
    sel = np.random.default_rng(1).permutation(len(rows))[: args.queries]
    records = []
    for name, model in (("eacnn (current default)", load_pretrained(DEFAULT_CHECKPOINT)), ("search-match", None)):
        cands, clean = method_embeddings(model, ds, rows, "val"), ds.vectors[rows].astype(np.float32)
        for condition in CONDITIONS:
            patterns, masks = condition_queries(ds, rows, condition, seed=7)
            patterns, masks = patterns[sel], None if masks is None else masks[sel]
            best = np.full((len(sel), len(rows)), -np.inf, np.float32)
            scale = np.ones_like(best)
            for s in SCALES:
                read = [rescale_many(p, np.array([s]), ds.config.xrd, None if masks is None else m)
                        for p, m in zip(patterns, masks if masks is not None else [None] * len(patterns))]
                at = _similarities(model, cands, clean, np.concatenate([y for y, _ in read]),
                                   np.concatenate([m for _, m in read]))
                scale[at > best] = s
                np.maximum(best, at, out=best)
            hits = {w: [] for w in WEIGHTS}
            for k, q in enumerate(sel):
                top = np.argsort(-best[k])[:10]
                agree = refine(patterns[k], None if masks is None else masks[k], rows[top], ds.sticks,
                               ds.config.xrd, scale[k, top])["agreement"].to_numpy()
                for w in WEIGHTS:
                    hits[w].append(top[np.argmax(rerank_score(agree, best[k, top], w))] == q)
            for w in WEIGHTS:
                records.append({"method": name, "condition": condition, "w": w, "top1": 100 * np.mean(hits[w])})
    table = pd.DataFrame(records).pivot_table(index=["method", "condition"], columns="w", values="top1")
    print(table.round(1).to_string())
    means = table.groupby(level="method").mean()
    print("mean over conditions:\n" + means.round(2).to_string())
    print(f"best weight for the model: {means.loc['eacnn (current default)'].idxmax()}")


if __name__ == "__main__":
    main()
