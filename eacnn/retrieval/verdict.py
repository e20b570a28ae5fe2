"""The verdict's rules and their calibration (step 3 of :mod:`eacnn.retrieval.identify`): the margin over the best
other phase, the open-set threshold and rule, the ambiguous set, and :func:`calibrate`, the one calibration, fitted
on validation structures asked with their phase present and absent.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
import pandas as pd

from eacnn.retrieval.query import SCALE_PENALTY, multiscale_cosine, multiscale_similarity, query_embeddings
from eacnn.retrieval.refine import (ANISOTROPY_PENALTY, CELL_FITS, CELL_MIN_GAIN, RERANK, RERANK_DEPTH, SEARCH,
                                    refine_shortlist)

log = logging.getLogger(__name__)

__all__ = ["margin_of", "open_set_rule", "open_set_threshold", "calibrate"]

def _ambiguous_set(refined: pd.DataFrame, score_name: str, need: float, most: int = 5) -> pd.DataFrame:
    """The best refined candidate of each phase (formula and space group) that scores within the calibrated margin
    ``need`` of the best: the phases the pattern cannot tell apart (empty when one phase stands out)."""
    if not len(refined) or need <= 0:
        return refined.iloc[0:0]
    scores = refined[score_name].fillna(-np.inf)
    close = refined[scores >= scores.max() - need]
    close = close.assign(_phase=close["formula"] + "|" + close["spacegroup"]).drop_duplicates("_phase")
    return close.drop(columns="_phase").head(most).reset_index(drop=True) if len(close) > 1 else refined.iloc[0:0]


def margin_of(score: np.ndarray, phase: np.ndarray) -> float:
    """How far the best candidate stands out: its score less the best score of a candidate of another phase
    (``phase`` [k] labels, e.g. "formula|space group"; ``score`` [k], best first or not). The whole score when every
    candidate is the same phase."""
    score, phase = np.asarray(score, float), np.asarray(phase)
    j = int(np.argmax(score))
    others = score[phase != phase[j]]
    return float(score[j] - (others.max() if len(others) else 0.0))


def open_set_rule(score: np.ndarray, margin: np.ndarray, correct: np.ndarray, present: np.ndarray, target: float,
                  margins: Sequence[float] = (0.0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1)
                  ) -> tuple[float, float, float, float]:
    """The (score threshold, margin threshold) under which "match" verdicts (score >= t and margin >= m) are right at
    least ``target`` of the time and name the most right answers, over queries with their phase present (``present``
    True; right or not: ``correct``) and absent (always wrong). Returns (t, m, precision, recall); recall is over the
    right answers among the present queries. Where no pair reaches the target: (above every score, 0, nan, 0)."""
    score, margin = np.asarray(score, float), np.asarray(margin, float)
    correct, present = np.asarray(correct, bool) & np.asarray(present, bool), np.asarray(present, bool)
    n_right = max(int(correct.sum()), 1)
    best = (float(score.max()) + 1e-6, 0.0, float("nan"), 0.0)
    for m in margins:
        ok = margin >= m
        if not ok.any():
            continue
        t = open_set_threshold(score[ok & present], correct[ok & present], score[ok & ~present], target)
        chosen = ok & (score >= t)
        if not chosen.any():
            continue
        recall = float(correct[chosen].sum() / n_right)
        if recall > best[3]:
            best = (float(t), float(m), float(correct[chosen].mean()), recall)
    return best


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


def calibrate(model, dataset, n_queries: int | None = None, rerank: int = RERANK_DEPTH,
              target: float = SEARCH.target_precision, seed: int = 0, progress: bool = True) -> dict:
    """The verdict's thresholds, open-set, on validation structures: of the similarity (used without refinement),
    and of the refined score with its margin (:func:`open_set_rule`).

    ``n_queries`` validation structures become realistic queries, a third each from the measurement family training
    draws from (:func:`eacnn.physics.conditions.calibration_queries`), the held-out family it never sees
    (:func:`eacnn.physics.measurement.perturb_measured`, ``family="heldout"``) and a clean lab scan of a cell up to
    ±2 % off the database's (isotropic); each is identified among the validation and training structures twice:
    with its phase in the pool and without it (a phase absent from the database). A phase is a (reduced formula,
    space group) pair, as a materials scientist names it: an answer with the query's formula and space group is right
    (MP-20 holds duplicate entries of some phases), and "absent" removes every entry of that phase.
    """
    from tqdm.auto import tqdm

    from eacnn.physics.conditions import calibration_queries
    from eacnn.retrieval.embed import embed_dataset

    n_queries = SEARCH.calibration_queries if n_queries is None else n_queries
    rng = np.random.default_rng([seed, 271828])
    xrd = dataset.config.xrd
    val = np.asarray(dataset.indices("val"))
    pool_rows = np.concatenate([val, np.asarray(dataset.indices("train"))])
    phase = (dataset.labels["formula"] + "|" + dataset.labels["spacegroup_number"].astype(str)).to_numpy()[pool_rows]
    pool = np.concatenate([embed_dataset(model, dataset, split, levels=(0,), progress=progress).structures
                           for split in ("val", "train")])  # [n_pool, d]
    chosen = rng.choice(len(val), min(n_queries, len(val)), replace=False)  # positions in val = rows of the pool
    patterns, masks = calibration_queries(dataset, val[chosen], rng)
    reads = model.model_config.xrd_mask_channel

    def encode(y, m):
        return model.encode_patterns(y * m, progress=False, masks=m if reads else None).numpy()

    vectors = np.asarray(dataset.vectors[pool_rows], np.float32)  # [n_pool, n_bins] for the cosine recall
    rec = {key: [] for key in ("present", "similarity", "sim_correct", "score", "margin", "correct")}
    for q, m, own in tqdm(list(zip(patterns, masks, chosen)), desc="calibrating the verdict", disable=not progress):
        z = query_embeddings(encode, q, m, xrd)
        sim, scale = multiscale_similarity(pool, z)
        cos, cos_at = multiscale_cosine(vectors, q, m, xrd) if rerank and SEARCH.cosine_recall else (None, None)
        for present in (True, False):  # absent: every entry of the query's phase left out of the pool
            shown = sim if present else np.where(phase == phase[own], -np.inf, sim)
            recall = cos if present or cos is None else np.where(phase == phase[own], -np.inf, cos)
            top, _, score = refine_shortlist(q, m, shown, pool_rows, dataset.sticks, xrd, scale, dataset.reflections,
                                             depth=rerank, recall=recall, recall_scale=cos_at)
            j = int(score.argmax())
            for key, value in (("present", present), ("similarity", sim[top[0]]),
                               ("sim_correct", present and phase[top[0]] == phase[own]), ("score", score[j]),
                               ("margin", margin_of(score, phase[top])), ("correct", present and phase[top[j]] ==
                                                                         phase[own])):
                rec[key].append(value)
    r = {key: np.asarray(v) for key, v in rec.items()}
    pres = r["present"].astype(bool)
    sim_t = open_set_threshold(r["similarity"][pres], r["sim_correct"][pres], r["similarity"][~pres], target)
    score_t, margin_t, precision, recall = open_set_rule(r["score"], r["margin"], r["correct"], pres, target)
    out = {"similarity": sim_t, "score": score_t, "margin": margin_t, "rerank_rule": list(RERANK),
           "scale_penalty": SCALE_PENALTY, "cell_fit": {"anisotropy_penalty": ANISOTROPY_PENALTY,
                                                        "min_gain": CELL_MIN_GAIN, "cells": CELL_FITS},
           "target": target,
           "n_queries": int(len(chosen)),
           "queries": "validation split: a third each measured (training family), measured (held-out family), "
                      "clean with an isotropic lattice mismatch up to ±2 %",
           "right": "same reduced formula and space group", "pool": int(len(pool_rows)), "rerank": rerank,
           "precision_score": precision, "recall_score": recall,
           "recall_similarity": float(np.mean(r["similarity"][pres & r["sim_correct"].astype(bool)] >= sim_t))
           if r["sim_correct"].any() else 0.0,
           "top1_present": float(np.mean(r["correct"][pres]))}
    out["threshold"] = out["score"] if rerank else out["similarity"]
    out["search"] = dataclasses.replace(SEARCH, rerank_depth=rerank, cell_fits=min(CELL_FITS, rerank),
                                        cosine_recall=SEARCH.cosine_recall if rerank else 0,
                                        target_precision=target, calibration_queries=int(len(chosen))).to_dict()
    return out
