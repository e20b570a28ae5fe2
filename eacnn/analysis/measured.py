"""Measured patterns and mixtures (chapters 9 and 10): the re-ranking comparison and synthetic mixtures."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd


# reduced_formula and score_phases live with the mixture reports (eacnn.measured.report); named here as before
from eacnn.measured.report import reduced_formula, score_phases

log = logging.getLogger(__name__)

__all__ = ["rerank_comparison", "synthetic_mixture", "reduced_formula", "score_phases"]


# Measured patterns (chapter 9)
# ---------------------------------------------------------------------------------------------------------------
def rerank_comparison(report: pd.DataFrame, reranked: pd.DataFrame, top: int) -> pd.DataFrame:
    """Rank of the right formula per (phase, filter): by the model, and after re-ranking its ``top`` candidates
    (both :func:`eacnn.measured.report.identification_report` tables of the same patterns)."""
    return pd.DataFrame({"model rank": report["rank"].to_numpy(),
                         f"re-ranked (top {top})": reranked["rank"].to_numpy()},
                        index=pd.MultiIndex.from_frame(report[["phase", "filter"]]))


# ---------------------------------------------------------------------------------------------------------------
# Mixtures (issue 16)
# ---------------------------------------------------------------------------------------------------------------
def synthetic_mixture(sticks: Sequence[tuple[np.ndarray, np.ndarray]], fractions: Sequence[float],
                      rng: np.random.Generator, family: str = "train", strain_mean: float = -0.005,
                      strain_sd: float = 0.015, strain_max: float = 0.03) -> tuple[np.ndarray, np.ndarray, dict]:
    """A measured-like pattern of a mixture: each phase's reflections (2θ [p] degrees, areas [p]) under its own
    lattice mismatch ε ~ N(strain_mean, strain_sd) truncated to ±strain_max, areas scaled to sum to its intensity
    fraction, then every other effect of :func:`eacnn.physics.measurement.perturb_measured` (``family``) drawn once
    for the whole pattern (one instrument: zero shift, displacement, peak shape, Kα2, background, noise, coverage).
    Without Miller indices there is no preferred orientation; there is no impurity phase.

    Returns:
        pattern [n_bins] (max 1), covered [n_bins] bool, and ``{"strains": [k], "params": drawn values}``.
    """
    import dataclasses

    from eacnn.config import MeasurementConfig
    from eacnn.physics.measurement import perturb_measured
    from eacnn.physics.perturb import bragg_shift
    from eacnn.physics.wavelengths import CU

    strains = np.clip(rng.normal(strain_mean, strain_sd, len(sticks)), -strain_max, strain_max)
    tts, areas = [], []
    for (tt, area), f, eps in zip(sticks, fractions, strains):
        tts.append(bragg_shift(np.asarray(tt, np.float64), eps, 0.0, CU.kalpha1))
        areas.append(np.asarray(area, np.float64) * f / max(float(np.sum(area)), 1e-12))
    tt, area = np.concatenate(tts), np.concatenate(areas)
    order = np.argsort(tt)
    cfg = dataclasses.replace(MeasurementConfig(), scale_mean=0.0, scale_sd=0.0, scale_max=0.0)  # per phase here
    y, mask, params = perturb_measured([(tt[order], area[order])], cfg, rng, family=family)
    return y[0], mask[0], {"strains": strains, "params": params}

