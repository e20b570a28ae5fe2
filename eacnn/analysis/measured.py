"""Measured patterns and mixtures (chapters 9 and 10): the re-ranking comparison and synthetic mixtures."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd


# reduced_formula and score_phases live with the mixture reports (eacnn.measured.report); named here as before
from eacnn.measured.report import reduced_formula, score_phases

log = logging.getLogger(__name__)

__all__ = ["rerank_comparison", "synthetic_mixture", "reduced_formula", "score_phases", "scan_fit_summary",
           "scan_fit_numbers", "scan_fit_example"]


# Measured patterns (chapter 9)
# ---------------------------------------------------------------------------------------------------------------
def rerank_comparison(report: pd.DataFrame, reranked: pd.DataFrame, top: int) -> pd.DataFrame:
    """Rank of the right formula per (phase, filter): by the model, and after re-ranking its ``top`` candidates
    (both :func:`eacnn.measured.report.identification_report` tables of the same patterns)."""
    return pd.DataFrame({"model rank": report["rank"].to_numpy(),
                         f"re-ranked (top {top})": reranked["rank"].to_numpy()},
                        index=pd.MultiIndex.from_frame(report[["phase", "filter"]]))


#: the re-ranking weights chapter 5 shows (none, the best Top-1's, the fit alone ordering the fitted)
SUMMARY_WEIGHTS = (0.0, 0.05, 100.0)


def scan_fit_summary(path=None) -> pd.DataFrame:
    """The whole-pattern fit's selection (``eacnn/data/scan_fit.csv``, ``scripts/select_scanfit.py --choose``) as
    chapter 5 shows it: per (candidates fitted, weight of ln χ² among :data:`SUMMARY_WEIGHTS`), Top-1 with the phase present and the verdict rule
    of best recall at the target precision (statistic, how it meets the binned verdict, limit, margin, precision,
    recall); the chosen row first. Empty when the file is absent."""
    from eacnn.paths import DATA_DIR

    path = DATA_DIR / "scan_fit.csv" if path is None else path
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        return pd.DataFrame()
    table = table[table["weight"].isin(SUMMARY_WEIGHTS) | table["chosen"]]
    best = table.sort_values(["recall", "precision"], ascending=False, kind="stable").groupby(
        ["fits", "weight"], sort=False).head(1)
    best = best.sort_values(["chosen", "fits", "weight"], ascending=[False, True, True], kind="stable")
    out = pd.DataFrame({
        "fitted": best["fits"].astype(int), "weight of ln χ²": best["weight"],
        "Top-1 %": best["top1_present"].round(1), "rule": best["statistic"].map({"chi2": "χ²", "rwp_net": "Rwp′"})
        + " ≤ " + best["limit"].map(lambda v: f"{v:.3g}") + ", margin ≥ " + best["margin_min"].map("{:g}".format)
        + best["combine"].map({"scan": "", "and": ", and binned", "or": ", or binned"}),
        "precision %": (100 * best["precision"]).round(1), "recall %": (100 * best["recall"]).round(1),
        "chosen": best["chosen"].map({True: "✓", False: ""})})
    return out.reset_index(drop=True)


def scan_fit_numbers(path=None) -> dict[str, str]:
    """The figures chapter 5 quotes from ``scan_fit.csv``: queries, the chosen rule's precision and recall, the
    binned verdict's on the same queries, Top-1 without re-ranking and the best any weight reached."""
    from eacnn.paths import DATA_DIR

    path = DATA_DIR / "scan_fit.csv" if path is None else path
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        return {}
    chosen = table[table["chosen"]].iloc[0]
    return {"sf_queries": f"{int(chosen['queries'])}", "sf_fits": f"{int(chosen['fits'])}",
            "sf_precision": f"{100 * chosen['precision']:.0f}", "sf_recall": f"{100 * chosen['recall']:.0f}",
            "sf_binned_precision": f"{100 * chosen['binned_precision']:.0f}",
            "sf_binned_recall": f"{100 * chosen['binned_recall']:.0f}",
            "sf_top1": f"{chosen['top1_without_scan']:.1f}", "sf_top1_best": f"{table['top1_present'].max():.1f}"}


def scan_fit_example(grid, db, formula: str, fits: int = 8) -> tuple[list, list[str]]:
    """The whole-pattern fits chapter 9 draws for one measured scan (``grid``, a
    :class:`eacnn.measured.preprocess.GridResult`): its best ``fits`` refined candidates fitted as ``eacnn search``
    fits them, then the best-fitting one of the right reduced ``formula`` and the best-fitting one of another
    formula fitted again with their curves kept. Returns ([ScanFit, ScanFit], ["formula space group", ...]); a
    side is left out where no fitted candidate has it."""
    from eacnn.retrieval.identify import identify
    from eacnn.retrieval.scanfit import fit_scan

    scan = grid.as_scan()
    result = identify(grid.vector, grid.covered, db, top=fits, scan=scan, scan_fits=fits)
    hits = result.hits[result.hits["scan_chi2"].notna()]
    right = hits["formula"].map(reduced_formula) == reduced_formula(formula)
    out, labels = [], []
    for side in (hits[right], hits[~right]):
        if not len(side):
            continue
        h = side.loc[side["scan_chi2"].idxmin()]
        metric = h["metric"] if isinstance(h.get("metric"), np.ndarray) else None
        out.append(fit_scan(scan.two_theta, scan.intensity, db.reflections(int(h["row"])), scan.wavelength,
                            scan.kalpha2, strain=float(h["strain"]), zero_shift=float(h["zero_shift"]),
                            metric=metric, keep_curves=True))
        labels.append(f"{h['formula']} {h['spacegroup']}")
    return out, labels


# ---------------------------------------------------------------------------------------------------------------
# Mixtures (issue 16)
# ---------------------------------------------------------------------------------------------------------------
def synthetic_mixture(sticks: Sequence[tuple[np.ndarray, np.ndarray]], fractions: Sequence[float],
                      rng: np.random.Generator, family: str = "train", strain_mean: float = -0.005,
                      strain_sd: float = 0.015, strain_max: float = 0.03, xrd=None
                      ) -> tuple[np.ndarray, np.ndarray, dict]:
    """A measured-like pattern of a mixture: each phase's reflections (2θ [p] degrees, areas [p]) under its own
    lattice mismatch ε ~ N(strain_mean, strain_sd) truncated to ±strain_max, areas scaled to sum to its intensity
    fraction, then every other effect of :func:`eacnn.physics.measurement.perturb_measured` (``family``) drawn once
    for the whole pattern (one instrument: zero shift, displacement, peak shape, Kα2, background, noise, coverage).
    Without Miller indices there is no preferred orientation; there is no impurity phase.

    ``xrd``: the grid the pattern is made on (default the model's 140 bins; e.g. a 0.02° step for a scan, whose
    2θ are ``xrd.bin_centers()``).

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
    y, mask, params = perturb_measured([(tt[order], area[order])], cfg, rng, family=family, xrd=xrd)
    return y[0], mask[0], {"strains": strains, "params": params}

