"""Identify one measured pattern: a multi-scale query, physics refinement of the best candidates, and a verdict
calibrated for that final score.

1. **Multi-scale query** (:mod:`eacnn.retrieval.query`): the pattern is read at the lattice scales 0.96–1.04 and
   embedded at each; every candidate keeps its best cosine similarity and the scale it was found at.
2. **Refinement** (:func:`refine`): each of the best ``rerank`` candidates' reflections is moved by a lattice scale
   around the one the query found (±0.6 % in 0.2 % steps, so ±3 % in all with the query's grid) and a zero shift
   (±0.3°) at the model's peak width, then the width (the model's or twice it) at that fit, profiled onto the bins
   and compared with the pattern over the bins the scan covers (cosine). The candidates are re-ranked by that agreement.
3. **Verdict**: "match" when the final score (the agreement after refinement, else the similarity) reaches the
   threshold calibrated for it (:func:`calibrate`): validation structures, measured-like queries, each asked with
   its structure in the pool and without it, the lowest score at which a "match" is right ``target`` of the time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from eacnn.config import XRDConfig
from eacnn.errors import EACNNError
from eacnn.physics.perturb import bragg_shift
from eacnn.physics.profile import bin_kernel
from eacnn.retrieval.query import SCALES, rescale_many

log = logging.getLogger(__name__)

__all__ = ["Identification", "identify", "refine", "calibrate", "open_set_threshold", "REFINE_OFFSETS",
           "REFINE_SHIFTS", "REFINE_WIDTHS"]

REFINE_OFFSETS = np.linspace(-0.006, 0.006, 7)  # lattice-scale offsets around the query's best scale
REFINE_SHIFTS = np.linspace(-0.3, 0.3, 7)  # degrees 2θ, zero shift
REFINE_WIDTHS = (1.0, 2.0)  # peak FWHM in units of the model's xrd.fwhm
FINE = 0.02  # degrees; the fine grid reflections are deposited on before the bin integrals


@lru_cache(maxsize=8)
def _kernel(xrd: XRDConfig, width: float) -> tuple[float, np.ndarray]:
    return bin_kernel(xrd.two_theta_min, xrd.two_theta_max, xrd.step, width, xrd.eta, FINE, max(1.0, 10 * width))


def _profiles(two_theta: np.ndarray, area: np.ndarray, strains: np.ndarray, shifts: np.ndarray, xrd: XRDConfig,
              width: float) -> np.ndarray:
    """Binned patterns [V, n_bins] of one candidate's reflections under each (strain, shift) pair [V]."""
    lo, kernel = _kernel(xrd, width)  # [n_fine, n_bins]
    pos = bragg_shift(two_theta[None, :], strains[:, None], shifts[:, None], xrd.wavelength)  # [V, p]
    x = (pos - lo) / FINE
    i0 = np.clip(np.floor(x).astype(np.int64), 0, kernel.shape[0] - 2)
    w1 = np.clip(x - i0, 0.0, 1.0)
    n_fine = kernel.shape[0]
    flat = (np.arange(len(strains))[:, None] * n_fine + i0).ravel()  # [V * p] positions in the flattened [V, n_fine]
    weights = np.broadcast_to(area[None, :], w1.shape)
    dep = np.bincount(flat, (weights * (1 - w1)).ravel(), minlength=len(strains) * n_fine)
    dep += np.bincount(flat + 1, (weights * w1).ravel(), minlength=len(strains) * n_fine)
    return dep.reshape(len(strains), n_fine).astype(np.float32) @ kernel  # [V, n_bins]


def refine(vector: np.ndarray, covered: np.ndarray | None, rows: Sequence[int], sticks: Callable, xrd: XRDConfig,
           scales: Sequence[float] | None = None) -> pd.DataFrame:
    """Agreement of each candidate row with the pattern after a fitted lattice scale, zero shift and width.

    Args:
        vector: [n_bins] the pattern on the model grid; covered: [n_bins] bool (all when None).
        rows: candidate rows; sticks: ``sticks(row) -> (2θ [p] degrees, areas [p])``.
        scales: per row, the lattice scale the multi-scale query found (1 when None).

    Returns:
        one row per candidate: ``row``, ``agreement`` (cosine over the covered bins), ``strain`` (the fitted
        d-spacing change of the candidate, Δd/d), ``zero_shift`` (degrees), ``width`` (degrees FWHM).
    """
    mask = np.ones(len(vector), bool) if covered is None else np.asarray(covered, bool)
    q = np.where(mask, np.asarray(vector, np.float64), 0.0)
    q /= max(np.linalg.norm(q), 1e-12)
    out = []
    for k, row in enumerate(rows):
        tt, area = sticks(int(row))
        tt, area = np.asarray(tt, np.float64), np.asarray(area, np.float32)
        centre = 1.0 / float(scales[k]) - 1.0 if scales is not None else 0.0
        eps, delta = np.meshgrid(centre + REFINE_OFFSETS, REFINE_SHIFTS, indexing="ij")
        eps, delta = eps.ravel(), delta.ravel()
        # lattice scale and zero shift on the grid at the model's width, then the width at that fit
        y = np.where(mask, _profiles(tt, area, eps, delta, xrd, REFINE_WIDTHS[0] * xrd.fwhm), 0.0)  # [V, n_bins]
        cos = (y @ q) / np.maximum(np.linalg.norm(y, axis=1), 1e-12)
        j = int(np.argmax(cos))
        best = (float(cos[j]), float(eps[j]), float(delta[j]), REFINE_WIDTHS[0] * xrd.fwhm)
        for factor in REFINE_WIDTHS[1:]:
            y = np.where(mask, _profiles(tt, area, eps[j : j + 1], delta[j : j + 1], xrd, factor * xrd.fwhm), 0.0)
            c = float((y @ q)[0] / max(np.linalg.norm(y), 1e-12))
            if c > best[0]:
                best = (c, best[1], best[2], factor * xrd.fwhm)
        out.append({"row": int(row), "agreement": best[0], "strain": best[1], "zero_shift": best[2],
                    "width": best[3]})
    return pd.DataFrame(out, columns=["row", "agreement", "strain", "zero_shift", "width"])


def query_embeddings(encode: Callable, vector: np.ndarray, covered: np.ndarray | None, xrd: XRDConfig,
                     scales: np.ndarray = SCALES) -> np.ndarray:
    """[S, d] embeddings of the pattern read at each scale; ``encode(patterns, masks) -> [S, d]``."""
    ys, ms = rescale_many(vector, scales, xrd, covered)
    return encode(ys, ms)


def multiscale_similarity(embeddings: np.ndarray, z: np.ndarray, scales: np.ndarray = SCALES
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(best similarity [n], its scale [n]) of each candidate embedding [n, d] over the query's scales z [S, d]."""
    sim = np.asarray(embeddings @ z.T)  # [n, S]
    j = sim.argmax(axis=1)
    return sim[np.arange(len(sim)), j], np.asarray(scales)[j]


@dataclass
class Identification:
    """The answer for one pattern."""

    hits: pd.DataFrame  # rank, id, formula, spacegroup, source, similarity, scale, [agreement, strain, zero_shift, width], row
    verdict: str  # "match" or "no confident match"
    score: float  # the final score of the top hit (agreement after refinement, else similarity)
    threshold: float  # the calibrated threshold of that score
    score_name: str  # "agreement" or "similarity"


def identify(vector: np.ndarray, covered: np.ndarray | None, db, top: int = 10, elements: Sequence[str] | None = None,
             rerank: int = 10, scales: np.ndarray = SCALES, xrd: XRDConfig | None = None,
             exclude: np.ndarray | None = None) -> Identification:
    """Rank a saved database's candidates for one pattern (see the module docstring).

    Args:
        vector: [n_bins] the pattern on the model grid; covered: [n_bins] bool.
        db: a :class:`eacnn.retrieval.database.SavedDatabase`.
        elements: keep only candidates made of these elements (and no others).
        rerank: refine the best ``rerank`` candidates (0: rank by the model's similarity alone).
        exclude: [n] bool, candidates left out (e.g. every entry of a phase, to ask what the verdict says when
            that phase is missing from the database).
    """
    xrd = xrd or XRDConfig()
    reads = db.tower.reads_mask
    z = query_embeddings(lambda y, m: db.tower(y, m if reads else None), vector, covered, xrd, scales)  # [S, d]
    keep = None
    if elements:
        allowed = {e for e in elements}
        keep = np.array([el <= allowed for el in db.elements])
        if not keep.any():
            raise EACNNError(f"no structure in the database is made only of {sorted(allowed)}")
    if exclude is not None:
        keep = ~np.asarray(exclude, bool) if keep is None else keep & ~np.asarray(exclude, bool)
    k = max(top, rerank)
    if db.manifest["index"]["kind"] == "exact":
        sim, scale = multiscale_similarity(db.embeddings, z, scales)
        idx = np.arange(len(sim)) if keep is None else np.flatnonzero(keep)
        best = idx[np.argsort(-sim[idx], kind="stable")[:k]]
        sims, best_scales = sim[best], scale[best]
    else:  # an indexed database: the union of each scale's nearest candidates
        found: dict[int, tuple[float, float]] = {}
        for s, zs in zip(scales, z):
            for v, r in zip(*db.scores(zs, 4 * k, keep)):
                if int(r) not in found or v > found[int(r)][0]:
                    found[int(r)] = (float(v), float(s))
        order = sorted(found, key=lambda r: -found[r][0])[:k]
        best = np.array(order, dtype=np.int64)
        sims = np.array([found[r][0] for r in order])
        best_scales = np.array([found[r][1] for r in order])
    labels = db.labels.iloc[best]
    hits = pd.DataFrame({"id": labels["material_id"].to_numpy(), "formula": labels["formula"].to_numpy(),
                         "spacegroup": labels["spacegroup_symbol"].to_numpy(), "source": labels["source"].to_numpy(),
                         "similarity": sims, "scale": best_scales, "row": best})
    cal = db.manifest.get("calibration", {})
    score_name, threshold = "similarity", float(cal.get("similarity", cal.get("threshold", np.inf)))
    if rerank and len(hits):
        fits = refine(vector, covered, hits["row"].head(rerank), db.sticks, xrd, hits["scale"].head(rerank))
        hits = hits.merge(fits, on="row", how="left")
        order = np.argsort(-hits["agreement"].fillna(-1.0).to_numpy(), kind="stable")
        hits = hits.iloc[order].reset_index(drop=True)
        if "agreement" in cal:
            score_name, threshold = "agreement", float(cal["agreement"])
    hits = hits.head(top).reset_index(drop=True)
    hits.insert(0, "rank", np.arange(1, len(hits) + 1))
    score = float(hits[score_name].iloc[0]) if len(hits) else float("nan")
    verdict = "match" if len(hits) and score >= threshold else "no confident match"
    return Identification(hits, verdict, score, threshold, score_name)


def open_set_threshold(present: np.ndarray, present_correct: np.ndarray, absent: np.ndarray, target: float) -> float:
    """The lowest score t such that "match" verdicts (score >= t) are right at least ``target`` of the time, over
    queries whose structure is in the pool (scores ``present`` [n], right or not: ``present_correct`` [n]) and
    queries whose structure is absent (scores ``absent`` [m], always wrong). Above the highest score when no
    threshold reaches the target."""
    s = np.concatenate([np.asarray(present, float), np.asarray(absent, float)])
    correct = np.concatenate([np.asarray(present_correct, bool), np.zeros(len(absent), bool)])
    order = np.argsort(-s, kind="stable")
    precision = np.cumsum(correct[order]) / np.arange(1, len(s) + 1)
    ok = np.flatnonzero(precision >= target)
    return float(s[order][ok[-1]]) if len(ok) else float(s.max()) + 1e-6


def calibrate(model, dataset, n_queries: int = 300, rerank: int = 10, target: float = 0.8, seed: int = 0,
              progress: bool = True) -> dict:
    """Thresholds of the similarity and of the refined agreement, open-set, on validation structures.

    ``n_queries`` validation structures are turned into measured-like queries
    (:func:`eacnn.training.batches.measured_queries`) and identified among the validation and training structures
    twice: with their own structure in the pool and without it (a phase absent from the database).
    """
    from tqdm.auto import tqdm

    from eacnn.retrieval.embed import embed_dataset
    from eacnn.training.batches import measured_queries

    cfg, xrd = dataset.config, dataset.config.xrd
    rng = np.random.default_rng([seed, 271828])
    val = np.asarray(dataset.indices("val"))
    pool_rows = np.concatenate([val, np.asarray(dataset.indices("train"))])
    pool = np.concatenate([embed_dataset(model, dataset, split, levels=(0,), progress=progress).structures
                           for split in ("val", "train")])  # [n_pool, d]
    chosen = rng.choice(len(val), min(n_queries, len(val)), replace=False)
    patterns, masks = measured_queries(cfg, dataset, val[chosen], [dataset.sticks(int(val[i])) for i in chosen], rng)
    reads = model.model_config.xrd_mask_channel

    def encode(y, m):
        return model.encode_patterns(y * m, progress=False, masks=m if reads else None).numpy()

    scores = {"similarity": ([], [], []), "agreement": ([], [], [])}
    for q, m, own in tqdm(list(zip(patterns, masks, chosen)), desc="calibrating the verdict", disable=not progress):
        z = query_embeddings(encode, q, m, xrd)
        sim, scale = multiscale_similarity(pool, z)
        order = np.argsort(-sim, kind="stable")
        for present in (True, False):
            cand = order if present else order[order != own]
            top = cand[: max(rerank, 1)]
            fits = refine(q, m, pool_rows[top], dataset.sticks, xrd, scale[top])
            j = int(fits["agreement"].to_numpy().argmax())
            for name, value, row in (("similarity", sim[top[0]], top[0]), ("agreement", fits["agreement"][j], top[j])):
                bucket = scores[name]
                if present:
                    bucket[0].append(value)
                    bucket[1].append(row == own)
                else:
                    bucket[2].append(value)
    out = {name: open_set_threshold(np.array(a), np.array(b), np.array(c), target)
           for name, (a, b, c) in scores.items()}
    out.update(target=target, n_queries=int(len(chosen)), queries="measured (training family), validation split",
               pool=int(len(pool_rows)), rerank=rerank,
               recall_similarity=float(np.mean(np.array(scores["similarity"][0]) >= out["similarity"])),
               recall_agreement=float(np.mean(np.array(scores["agreement"][0]) >= out["agreement"])))
    out["threshold"] = out["agreement"] if rerank else out["similarity"]
    return out
