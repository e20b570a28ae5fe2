"""Exploration, validation split only, not used by ``eacnn search``: would refining an anisotropic strain of each
candidate's cell (not only a lattice scale) lift Top-1 under anisotropic strain without costing the other
conditions?

    python scripts/explore_aniso_refine.py [--queries 400] [--conditions "aniso 1.5 %,measured"]

Same protocol and code as ``scripts/select_rerank.py`` (its ``search_top1``: validation queries, the validation +
training structures as the pool, multi-scale query with the shipped prior, the best ten refined by
:func:`eacnn.retrieval.identify.refine` and re-ranked by the shipped rule). Then each of the ten is fitted again
with a symmetric strain tensor E (six components, so symmetry-equivalent reflections split as the strained metric
says, plus the zero shift; a seeded random search in four shrinking rounds of 64 trials from the isotropic fit), the
agreement kept when it is better, and the candidates re-ranked by ``rerank_score(agreement, similarity) − λ · |dev E| / 1 %``, where dev E is the
strain's deviatoric (shape-changing) part. Prints Top-1 per condition for the isotropic fit (the shipped rule's
name) and for each λ of :data:`PENALTIES` ("aniso λ").

The fit needs each reflection's Miller indices, which neither the data-set cache nor a search database stores: here
they are recomputed from each candidate's structure (``Dataset.structure``); with the fit, about 12 ms a candidate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_rerank import CONDITIONS, search_top1  # noqa: E402

PENALTIES = (0.0, 0.01, 0.02, 0.03, 0.04, 0.06)  # rerank score per 1 % of deviatoric strain
ROUNDS = ((0.006, 64), (0.003, 64), (0.0015, 64), (0.0007, 64))  # (step of E, trials) of the random search


def main() -> None:
    import torch

    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.physics import xrd as X
    from eacnn.physics.profile import deposit_matrix
    from eacnn.retrieval.identify import FINE, RERANK, _kernel, rerank_score
    from eacnn.retrieval.query import SCALE_PENALTY
    from eacnn.training.checkpoint import DEFAULT_CHECKPOINT, load_pretrained

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    ds = build_dataset(Config.cpu(), progress=False)
    xrd = ds.config.xrd
    cache, streams = {}, {}

    def reflections(row: int):
        """(|g|² [R] Å⁻², the six metric derivatives [R, 6], areas [R]) of a candidate's unmerged reflections."""
        if row not in cache:
            s = ds.structure(int(row))
            r = X._reflections([X._as_crystal(s)], xrd, xrd.two_theta_min - 3, xrd.two_theta_max + 3, with_hkl=True)
            g = r.hkl @ np.linalg.inv(s.lattice.matrix).T  # [R, 3] Cartesian reciprocal vectors
            f = np.stack([g[:, 0] ** 2, g[:, 1] ** 2, g[:, 2] ** 2, 2 * g[:, 0] * g[:, 1], 2 * g[:, 0] * g[:, 2],
                          2 * g[:, 1] * g[:, 2]], axis=1)  # d|g|²/dE = −2 f · E to first order
            cache[row] = ((g ** 2).sum(axis=1), f, r.intensity / r.intensity.max())
        return cache[row]

    def aniso_fit(vector, mask, row, eps0, zero0, width, rng):
        """(best agreement, deviatoric strain in %) of a candidate under a fitted strain tensor and zero shift."""
        mask = np.ones(len(vector), bool) if mask is None else mask
        q = np.where(mask, vector, 0.0).astype(np.float64)
        q /= np.linalg.norm(q)
        g2, f, area = reflections(row)
        lo, kernel = _kernel(xrd, width)

        def score(E, Z):  # E [V, 6] (e_xx, e_yy, e_zz, e_xy, e_xz, e_yz), Z [V] degrees
            s2 = xrd.wavelength ** 2 / 4 * (g2[None] - 2 * E @ f.T)  # sin²θ [V, R]
            pos = np.degrees(2 * np.arcsin(np.sqrt(np.clip(s2, 0, 1)))) + Z[:, None]
            y = np.where(mask, np.asarray(deposit_matrix(pos, area, lo, FINE, kernel.shape[0]) @ kernel), 0.0)
            return (y @ q) / np.maximum(np.linalg.norm(y, axis=1), 1e-12)

        best_e, best_z = np.array([eps0, eps0, eps0, 0, 0, 0.0]), zero0
        best = score(best_e[None], np.array([best_z]))[0]
        for step, n in ROUNDS:
            E = best_e + rng.normal(0, step, (n, 6)) * np.array([1, 1, 1, 0.5, 0.5, 0.5])
            Z = best_z + rng.normal(0, step * 10, n)
            c = score(E, Z)
            j = int(np.argmax(c))
            if c[j] > best:
                best, best_e, best_z = c[j], E[j], Z[j]
        t = np.array([[best_e[0], best_e[3], best_e[4]], [best_e[3], best_e[1], best_e[5]],
                      [best_e[4], best_e[5], best_e[2]]])
        dev = t - np.trace(t) / 3 * np.eye(3)
        return best, float(np.sqrt((dev ** 2).sum()) / 0.01)

    def aniso_scores(condition, pattern, mask, rows, fits, similarity) -> dict:
        """The refined candidates re-scored with a fitted strain tensor, one score per penalty of PENALTIES."""
        if condition not in streams:  # the same draws whichever conditions run together
            streams[condition] = np.random.default_rng([0, CONDITIONS.index(condition)])
        agree = fits["agreement"].to_numpy()
        fitted = [aniso_fit(pattern, mask, row, fr.strain, fr.zero_shift, fr.width, streams[condition])
                  for row, fr in zip(rows, fits.itertuples())]
        better = np.array([a > g for (a, _), g in zip(fitted, agree)])
        aa = np.where(better, [a for a, _ in fitted], agree)
        dev = np.where(better, [d for _, d in fitted], 0.0)
        return {f"aniso {p:g}": rerank_score(aa, similarity) - p * dev for p in PENALTIES}

    records = search_top1(load_pretrained(DEFAULT_CHECKPOINT), ds, args.queries, (SCALE_PENALTY,), (RERANK,),
                          conditions=tuple(args.conditions.split(",")), extra=aniso_scores)
    table = pd.DataFrame(records).pivot_table(index="condition", columns="rule", values="top1", sort=False)
    table.loc["mean"] = table.mean()
    print(table.round(1).to_string())


if __name__ == "__main__":
    main()
