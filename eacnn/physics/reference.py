"""Our simulated sticks against pymatgen's ``XRDCalculator`` (the reference we test against): the one comparison.

Both sides use λ = 1.5406 Å (Cu Kα1; pymatgen's ``"CuKa"`` would be 1.54184 Å) and no Debye–Waller factor
(pymatgen applies B only when given per element), so the physics compared is the same. The tests, the benchmark
``benchmarks/bench_xrd.py`` and chapter 1 all call :func:`compare_sticks`.

pymatgen merges reflections by rounding 2θ to multiples of 1e-5°. The MP-20 cells are rounded to 1e-6 Å, which
splits symmetry-equivalent reflections by up to ~1e-5°, so one observable peak can straddle a rounding boundary and
come out as two entries, each with part of the intensity. Both codes' peaks are therefore grouped into observable
peaks (closer than :data:`CLUSTER_GAP`), whose summed intensities are compared after scaling each side to a
strongest group of 100. Positions are compared in both directions: every pymatgen peak above
:data:`COMPARE_ABOVE` % has one of ours within :data:`TWO_THETA_TOL`, and every one of ours has one of pymatgen's.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from eacnn.config import XRDConfig
from eacnn.physics.xrd import XRDSimulator

__all__ = ["compare_sticks", "compare_with_pymatgen", "pymatgen_pattern", "agreement_table", "TWO_THETA_TOL",
           "INTENSITY_TOL", "COMPARE_ABOVE", "CLUSTER_GAP"]

TWO_THETA_TOL = 0.01  # degrees; peak positions must agree within this
INTENSITY_TOL = 1.0  # percent of the strongest peak; relative intensities must agree within this
COMPARE_ABOVE = 1.0  # percent of the strongest; weaker peaks are not compared
CLUSTER_GAP = 0.005  # degrees; peaks closer than this (either code) are one observable peak


def _clusters(two_theta: np.ndarray, gap: float) -> np.ndarray:
    """Label [p] of each peak after single-linkage grouping of peaks closer than ``gap`` degrees."""
    order = np.argsort(two_theta)
    label = np.empty(len(two_theta), dtype=int)
    label[order] = np.cumsum(np.concatenate([[True], np.diff(two_theta[order]) > gap])) - 1
    return label


def compare_sticks(our_tt: np.ndarray, our_i: np.ndarray, ref_tt: np.ndarray, ref_i: np.ndarray
                   ) -> tuple[float, float]:
    """(largest peak-position difference in degrees, largest intensity difference in % of the strongest).

    Args:
        our_tt, our_i: our sticks, 2θ [p] (degrees) and intensity [p] (any scale).
        ref_tt, ref_i: the reference sticks [q] (pymatgen's ``pattern.x``, ``pattern.y``).
    """
    our_tt, our_i = np.asarray(our_tt, dtype=float), np.asarray(our_i, dtype=float)
    ref_tt, ref_i = np.asarray(ref_tt, dtype=float), np.asarray(ref_i, dtype=float)
    if not len(our_tt) or not len(ref_tt):
        return (0.0, 0.0) if len(our_tt) == len(ref_tt) else (float("inf"), 100.0)
    label = _clusters(np.concatenate([ref_tt, our_tt]), CLUSTER_GAP)
    n = label.max() + 1
    ref_sum = np.bincount(label[: len(ref_tt)], ref_i, n)
    our_sum = np.bincount(label[len(ref_tt):], our_i, n)
    ref_sum, our_sum = 100 * ref_sum / ref_sum.max(), 100 * our_sum / our_sum.max()
    d_intensity = np.abs(ref_sum - our_sum)[np.maximum(ref_sum, our_sum) > COMPARE_ABOVE].max()
    ref_big = ref_tt[100 * ref_i / ref_i.max() > COMPARE_ABOVE]
    our_big = our_tt[100 * our_i / our_i.max() > COMPARE_ABOVE]
    d_tt = max(
        np.abs(our_tt[:, None] - ref_big[None, :]).min(axis=0).max(initial=0.0),  # each reference peak: ours near
        np.abs(ref_tt[:, None] - our_big[None, :]).min(axis=0).max(initial=0.0),  # each of ours: a reference near
    )
    return float(d_tt), float(d_intensity)


def pymatgen_pattern(structure, config: XRDConfig | None = None):
    """pymatgen's unscaled pattern of ``structure`` at the config's wavelength and 2θ window."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    cfg = config or XRDConfig(b_factor=0.0)
    return XRDCalculator(wavelength=cfg.wavelength).get_pattern(
        structure, scaled=False, two_theta_range=(cfg.two_theta_min, cfg.two_theta_max))


def compare_with_pymatgen(structure, config: XRDConfig | None = None) -> dict:
    """Our pattern and pymatgen's for one structure, compared with :func:`compare_sticks`.

    Returns:
        dict with ``max_dtt`` (degrees), ``max_dI`` (% of strongest), ``n_peaks`` (pymatgen peaks above
        :data:`COMPARE_ABOVE` %), ``ok`` (both within :data:`TWO_THETA_TOL` and :data:`INTENSITY_TOL`), and the two
        patterns (``ours``, ``reference``).
    """
    cfg = config or XRDConfig(b_factor=0.0)
    ref = pymatgen_pattern(structure, cfg)
    ours = XRDSimulator(cfg).get_pattern(structure)
    d_tt, d_i = compare_sticks(ours.two_theta, ours.intensity, ref.x, ref.y)
    ref_y = np.asarray(ref.y, dtype=float)
    return {
        "n_peaks": int((100 * ref_y / max(ref_y.max(initial=0.0), 1e-300) > COMPARE_ABOVE).sum()),
        "max_dtt": d_tt,
        "max_dI": d_i,
        "ok": bool(d_tt <= TWO_THETA_TOL and d_i <= INTENSITY_TOL),
        "ours": ours,
        "reference": ref,
    }


def agreement_table(structures: Sequence, ids: Sequence[str] | None = None, config: XRDConfig | None = None,
                    progress: bool = True) -> pd.DataFrame:
    """One row per structure: id, formula, peaks compared, max |Δ2θ| (°), max |ΔI| (%), within tolerance."""
    rows = []
    for i, s in enumerate(tqdm(structures, desc="comparing with pymatgen", unit="structure", disable=not progress)):
        r = compare_with_pymatgen(s, config)
        rows.append({"id": ids[i] if ids is not None else i, "formula": s.composition.reduced_formula,
                     "n_peaks": r["n_peaks"], "max_dtt": r["max_dtt"], "max_dI": r["max_dI"], "ok": r["ok"]})
    return pd.DataFrame(rows)
