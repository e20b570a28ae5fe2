"""Mixtures: name every phase of a multi-phase pattern, with its approximate weight fraction (issue 16).

:func:`identify_phases` searches a saved database (:class:`eacnn.retrieval.database.SavedDatabase`) one phase at a
time and fits the phases found to the pattern on the model's 140-bin grid:

1. **Fit.** The chosen phases and a smooth background are fitted jointly over the covered bins: each phase's
   reflections under its own lattice strain Δd/d, zero shift and peak width (optionally with a Cu Kα2 copy),
   profiled onto the bins (:func:`profile_grid`), times a non-negative scale; the background is a non-negative
   combination of Bernstein polynomials of degree :data:`BACKGROUND_DEGREE` in 2θ (smooth, never negative, too
   broad to take up a Bragg peak). All scales come from one weighted non-negative least-squares fit
   (``scipy.optimize.nnls``, Poisson-like weights w = 1 / max(y, :data:`WEIGHT_FLOOR`)); each phase's strain, shift
   and width from a grid search for the least weighted misfit against the pattern less everything else
   (:data:`STRAIN_OFFSETS`, :data:`SHIFTS`, :data:`WIDTHS`), alternating twice.
2. **Candidates for the residual** (pattern − fit): the union of the model's ``shortlist`` best candidates (the
   residual's multi-scale query, :func:`eacnn.retrieval.identify.identify` without refinement) and the
   ``shortlist`` candidates whose stored clean pattern, at the best of the lattice scales :data:`FIT_SCALES`,
   removes most of the residual's weighted misfit on its own (a search-match screen over the whole database, two
   matrix products: residuals are not patterns the model was trained on, and this screen finds most minor phases
   the model misses). Each candidate not already chosen (same id, or same formula and space group) is fitted to
   the residual over every plausible strain (:data:`SCREEN`) and ranked by its **gain**, the share of the
   remaining weighted misfit χ² it removes in a joint NNLS with the chosen phases; a candidate whose profile is
   collinear with a chosen phase's (cosine ≥ :data:`COLLINEAR`) is skipped. The best is added and step 1 runs
   again. The first step follows its ``beam`` best candidates to the end; another line of search replaces the
   greedy one when it ends with no more phases and an Rwp lower by :data:`BEAM_GAIN` (relative).
3. **Stopping rule** (``phases="auto"``): the best candidate is *not* added, and the search ends, when

   * *no significant peak*: the largest residual bin is below max(``significance`` × σ, ``min_peak``): σ the noise
     (1.4826 × the median absolute deviation of neighbouring residual bins' differences / √2, robust to peaks and
     blind to a smooth background), ``min_peak`` a fraction of the strongest bin (defaults 5 σ and 12 %, chosen
     on validation mixtures: :class:`eacnn.config.MixtureConfig`); or
   * *no confident match*: its agreement (cosine of its fitted profile with the positive residual) is below
     ``min_agreement`` (0.5), or its gain, after the joint refit, is below ``min_gain`` (0.3), or its scale is 0.

   The defaults were set on synthetic 2- and 3-phase mixtures of MP-20 test structures (``scripts/mixtures.py``):
   a true phase's gain is above 0.44 in 95 % of steps, a spurious one's (fitting the misfit of phases already
   found: Kα2, intensity errors, peak shapes) is below 0.4 in half of them. The database's calibrated
   single-phase verdict is not used: a minor phase's agreement is diluted by the others, and the residual is no
   single-phase pattern. With ``phases=N`` the search goes on to N phases whatever these rules say (each phase
   reports whether it passed them, ``confident``), stopping only when no candidate is left or one gets a zero
   scale.
4. **Re-check each slot.** Every chosen phase is tried against the :data:`ALTERNATIVES` next candidates of the
   step that found it: the swap is kept when the joint fit's Rwp falls by more than :data:`SWAP_GAIN` (relative).

**Weight fractions (approximate, RIR-style).** With the joint fit's scale s_i of phase i's stored reflections
(strongest stick 1) and A_i the ratio of its absolute cell scattering (Σ |F_hkl|² × Lorentz-polarisation with the
simulator's Debye–Waller B, from the candidate's structure by pymatgen's ``XRDCalculator``) to those stored areas,
the scale on the absolute scale is S_i = s_i / A_i and (Hill & Howard, J. Appl. Cryst. 20, 467 (1987))
W_i = S_i (Z M V)_i / Σ_j S_j (Z M V)_j, Z M the cell's mass and V its volume (:func:`weight_fractions`).
Neglected: absorption contrast and microabsorption (Brindley) between phases, preferred orientation, extinction,
amorphous content (fractions are of the crystalline part and sum to 1), and intensity that overlapping peaks
trade between phases. Fractions are only meaningful when the named phases are right.

**Agreement.** ``rwp``: √(Σ w (y − ŷ)² / Σ w y²) over the covered bins with the weights above (y max-normalised,
ŷ the fit); ``explained``: Σ min(ŷ_phases, y⁺) / Σ y⁺, the share of the background-free intensity the phases
account for.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from math import comb
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from threadpoolctl import threadpool_limits

from eacnn.config import MixtureConfig, XRDConfig
from eacnn.datasets.structures import (cif_entries, cif_stem, is_cif_archive, load_embedded, parse_structure_file,
                                      row_to_structure)
from eacnn.errors import ConfigError, EACNNError, PatternError
from eacnn.physics.perturb import binned_variants
from eacnn.retrieval.identify import identify
from eacnn.retrieval.query import rescale_many

log = logging.getLogger(__name__)

__all__ = ["MixturePhase", "MixtureResult", "identify_phases", "fit_phases", "profile_grid", "cell_scattering",
           "weight_fractions", "phase_structure", "refine_on_scan", "ScanPhases", "MAX_PHASES", "MIXTURE"]

#: Every setting of the mixture search (:class:`eacnn.config.MixtureConfig`: units and where each was chosen); the
#: names below are its values, for the readers of this module
MIXTURE = MixtureConfig()
MAX_PHASES = MIXTURE.max_phases  # most phases one pattern is searched for
KALPHA2_RATIO = MIXTURE.kalpha2_ratio  # Cu Kα2 / Kα1 area ratio tried when the pattern may carry Kα2
BACKGROUND_DEGREE = MIXTURE.background_degree  # Bernstein polynomials of this degree in 2θ: the smooth background
STRAIN_OFFSETS = np.linspace(-MIXTURE.strain_offset, MIXTURE.strain_offset, 13)  # Δd/d, 0.1 % steps
SHIFTS = np.linspace(-MIXTURE.shift, MIXTURE.shift, 13)  # degrees 2θ, zero shift, 0.05° steps
WIDTHS = MIXTURE.widths  # peak FWHM in units of the model's xrd.fwhm
# the coarser grids every candidate is screened on (strains over the ±3 % a measured cell may differ from the
# database's, and a little more) before the chosen one is fitted on the grids above
SCREEN = (np.linspace(-MIXTURE.screen_strain, MIXTURE.screen_strain, 29), np.linspace(-MIXTURE.shift, MIXTURE.shift, 5),
          MIXTURE.screen_widths)
COLLINEAR = MIXTURE.collinear  # a candidate whose profile has this cosine with a chosen phase's is the same pattern
ALTERNATIVES = MIXTURE.alternatives  # candidates per slot tried in the final re-check
SWAP_GAIN = MIXTURE.swap_gain  # a swap must lower the weighted residual by this fraction
BEAM_GAIN = MIXTURE.beam_gain  # another first phase replaces the greedy one when it lowers Rwp by this fraction
WEIGHT_FLOOR = MIXTURE.weight_floor  # Poisson-like weights 1 / max(y, floor) of the fit and of rwp
FIT_SCALES = np.round(np.linspace(1 - MIXTURE.fit_scale, 1 + MIXTURE.fit_scale, 15), 4)  # 0.5 % steps


@dataclass
class MixturePhase:
    """One phase of a mixture."""

    id: str  # the database's material_id
    formula: str
    spacegroup: str
    source: str  # "embedded" or the CIF folder it came from
    row: int  # row in the database
    strain: float  # fitted lattice strain Δd/d (> 0: the measured cell is larger)
    zero_shift: float  # fitted zero shift, degrees 2θ
    width: float  # fitted peak FWHM, degrees 2θ
    scale: float  # NNLS scale of the stored reflections (strongest stick 1) on the max-1 pattern
    intensity_fraction: float  # share of the phases' fitted intensity over the covered bins
    weight_fraction: float  # approximate (RIR-style, see the module docstring); NaN when no structure was found
    agreement: float  # cosine of the phase's profile with the pattern less the other phases and background
    confident: bool  # its step passed the stopping rules (always True in "auto" mode)
    step: int  # the search step that found it (1 = the first)

    def to_dict(self) -> dict:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.__dict__.items()}


@dataclass
class MixtureResult:
    """The phases of one pattern, the fit and what to plot. Curves are on the model grid [n_bins]."""

    phases: list  # MixturePhase, by intensity fraction (largest first); empty when nothing was found
    explained: float  # fraction of the background-free intensity explained by the phases
    rwp: float  # Rwp-like agreement of the fit (module docstring)
    noise: float  # σ, the noise estimate of the max-1 pattern
    stop_reason: str  # why the search ended
    two_theta: np.ndarray  # [n_bins] bin centres, degrees
    measured: np.ndarray  # [n_bins] the pattern (max 1), 0 where not covered
    covered: np.ndarray  # [n_bins] bool
    curves: np.ndarray  # [k, n_bins] each phase's fitted contribution (same order as phases)
    background: np.ndarray  # [n_bins] the fitted background
    kalpha2: float = 0.0  # the Kα2 / Kα1 area ratio the phase profiles carry (given, or decided on the first phase)
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per step of each line of search: step,
    # id, row, formula, spacegroup, agreement, height, snr, gain, similarity, proposed_by, accepted, reason, branch,
    # chosen (the line kept)

    @property
    def total(self) -> np.ndarray:
        """[n_bins] background + every phase."""
        return self.background + self.curves.sum(axis=0)

    @property
    def residual(self) -> np.ndarray:
        """[n_bins] measured − total over the covered bins (0 elsewhere)."""
        return np.where(self.covered, self.measured - self.total, 0.0)

    def table(self) -> pd.DataFrame:
        """One row per phase."""
        return pd.DataFrame([p.to_dict() for p in self.phases], columns=list(MixturePhase.__dataclass_fields__))

    def to_dict(self) -> dict:
        """JSON-ready: ``phases`` (list of dicts with id, formula, spacegroup, weight_fraction, ...) and the fit."""
        return {"phases": [p.to_dict() for p in self.phases], "explained": self.explained, "rwp": self.rwp,
                "noise": self.noise, "kalpha2": self.kalpha2, "stop_reason": self.stop_reason,
                "weight_fraction_note": "approximate: RIR-style from the fitted scales with Z·M·V; absorption, "
                                        "microabsorption, texture and amorphous content neglected"}


# ---------------------------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Slot:
    """A chosen phase while fitting: its database row, reflections, profile parameters and alternatives."""

    row: int
    tt: np.ndarray  # [p] degrees
    area: np.ndarray  # [p]
    strain: float
    shift: float
    width: float
    profile: np.ndarray  # [n_bins] at the current parameters
    kalpha2: float = 0.0  # Kα2 / Kα1 area ratio its profile carries
    step: int = 0
    confident: bool = True
    alternatives: list = field(default_factory=list)  # (row, strain) of the step's next candidates


def profile_grid(two_theta: np.ndarray, area: np.ndarray, strains: np.ndarray, shifts: np.ndarray, width: float,
                 xrd: XRDConfig, kalpha2: float = 0.0) -> np.ndarray:
    """Binned patterns [V, n_bins] (float64, not normalised) of one phase's reflections under each (lattice strain,
    zero shift) pair: :func:`eacnn.physics.perturb.binned_variants`, the profile the refinement uses too, in float64
    for the weighted least squares of the mixture fit."""
    return binned_variants(two_theta, area, strains, shifts, width, xrd, kalpha2=kalpha2, dtype=np.float64)


@lru_cache(maxsize=4)
def _background_basis(xrd: XRDConfig, degree: int) -> np.ndarray:
    """[degree + 1, n_bins] Bernstein polynomials of 2θ over the window (non-negative, summing to 1)."""
    x = (xrd.bin_centers() - xrd.two_theta_min) / (xrd.two_theta_max - xrd.two_theta_min)
    return np.stack([comb(degree, k) * x**k * (1 - x) ** (degree - k) for k in range(degree + 1)])


def _weights(y: np.ndarray) -> np.ndarray:
    return 1.0 / np.maximum(y, WEIGHT_FLOOR)


def _nnls(y: np.ndarray, mask: np.ndarray, profiles: Sequence[np.ndarray], basis: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative scales of the profiles [k] and of the background basis [m], weighted, over the masked bins."""
    a = np.concatenate([np.asarray(profiles, np.float64).reshape(-1, len(y)), basis], axis=0)[:, mask].T  # [c, k+m]
    sw = np.sqrt(_weights(y[mask]))
    coef, _ = nnls(a * sw[:, None], y[mask] * sw, maxiter=50 * a.shape[1])
    return coef[: len(profiles)], coef[len(profiles):]


def _refit_profile(slot: _Slot, target: np.ndarray, mask: np.ndarray, xrd: XRDConfig, weights: np.ndarray,
                   screen: bool = False) -> float:
    """Grid-search the slot's strain, shift and width for the least weighted misfit to ``target`` at the best
    non-negative scale, i.e. the largest (Σ w t p)² / Σ w p² with Σ w t p > 0 (the :data:`SCREEN` grids, over
    every plausible strain, when ``screen``; else the fine grids around the slot's strain). Updates the slot and
    returns the cosine of its new profile with the positive part of the target (the agreement)."""
    t = np.where(mask, target, 0.0)
    w = np.where(mask, weights, 0.0)
    if screen:
        strains, shifts, widths = SCREEN
    else:
        strains, shifts, widths = slot.strain + STRAIN_OFFSETS, SHIFTS, WIDTHS
    eps, delta = np.meshgrid(strains, shifts, indexing="ij")
    eps, delta = eps.ravel(), delta.ravel()
    best = (-np.inf, slot.strain, slot.shift, slot.width)
    for factor in widths:
        y = profile_grid(slot.tt, slot.area, eps, delta, factor * xrd.fwhm, xrd, slot.kalpha2)  # [V, n_bins]
        num = y @ (w * t)  # [V]
        score = np.where(num > 0, num * num / np.maximum((y * y) @ w, 1e-300), -1.0)
        j = int(np.argmax(score))
        if score[j] > best[0]:
            best = (float(score[j]), float(eps[j]), float(delta[j]), factor * xrd.fwhm)
    slot.strain, slot.shift, slot.width = best[1:]
    slot.profile = _profile(slot, xrd)
    return _cosine(slot.profile, np.clip(t, 0.0, None), mask)


def _profile(slot: _Slot, xrd: XRDConfig) -> np.ndarray:
    """[n_bins] the slot's profile at its current strain, shift, width and Kα2 ratio."""
    return profile_grid(slot.tt, slot.area, np.array([slot.strain]), np.array([slot.shift]), slot.width, xrd,
                        slot.kalpha2)[0]


def fit_phases(y: np.ndarray, mask: np.ndarray, slots: list, xrd: XRDConfig, rounds: int = 2
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jointly fit the slots' profiles and the background to ``y`` over ``mask`` (module docstring, step 1); the
    slots' strain, shift, width and profile are updated in place.

    Returns:
        scales [k], background [n_bins], agreements [k]: the cosine of each phase's profile with the positive part
        of y less the background and the other phases (the phase seen alone).
    """
    basis = _background_basis(xrd, BACKGROUND_DEGREE)  # [m, n_bins]
    scales, bg = _nnls(y, mask, [s.profile for s in slots], basis)
    for _ in range(rounds):
        for i, slot in enumerate(slots):
            _refit_profile(slot, y - _others(scales, bg @ basis, slots, i), mask, xrd, _weights(y))
            scales, bg = _nnls(y, mask, [s.profile for s in slots], basis)
    agree = np.array([_cosine(s.profile, np.clip(y - _others(scales, bg @ basis, slots, i), 0.0, None), mask)
                      for i, s in enumerate(slots)])
    return scales, bg @ basis, agree


def _others(scales: np.ndarray, background: np.ndarray, slots: list, i: int) -> np.ndarray:
    """[n_bins] background + every fitted phase but slot i."""
    return background + sum((scales[j] * s.profile for j, s in enumerate(slots) if j != i), np.zeros(len(background)))


def _rwp(y: np.ndarray, fit: np.ndarray, mask: np.ndarray) -> float:
    w = _weights(y[mask])
    return float(np.sqrt(np.sum(w * (y[mask] - fit[mask]) ** 2) / max(np.sum(w * y[mask] ** 2), 1e-12)))


def _noise(residual: np.ndarray, mask: np.ndarray) -> float:
    """σ of a residual from neighbouring covered bins' differences (median absolute value, Gaussian-consistent)."""
    both = mask[1:] & mask[:-1]
    d = np.diff(residual)[both]
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0)) if len(d) else 0.0


# ---------------------------------------------------------------------------------------------------------------
# Weight fractions
# ---------------------------------------------------------------------------------------------------------------
def cell_scattering(structure, two_theta: np.ndarray, area: np.ndarray, xrd: XRDConfig | None = None) -> float:
    """A_i: the absolute scattering of the structure's cell (Σ |F|² × Lorentz-polarisation × multiplicity with the
    simulator's Debye–Waller B, :func:`eacnn.physics.xrd.absolute_scattering`) over the 2θ range of the stored
    reflections, divided by their summed stored areas (strongest stick 1)."""
    from eacnn.physics.xrd import absolute_scattering

    xrd = xrd or XRDConfig()
    lo, hi = float(np.min(two_theta)) - 1e-3, float(np.max(two_theta)) + 1e-3
    total = absolute_scattering(structure, xrd, (max(lo, 0.0), min(hi, 180.0)))
    return float(total / max(float(np.sum(area)), 1e-12))


def weight_fractions(scales: Sequence[float], scattering: Sequence[float], masses: Sequence[float],
                     volumes: Sequence[float]) -> np.ndarray:
    """W_i = S_i (Z M V)_i / Σ_j S_j (Z M V)_j with S_i = scale_i / scattering_i (Hill & Howard 1987).

    Args:
        scales: fitted scales of the stored (max-1) reflections; scattering: A_i (:func:`cell_scattering`);
        masses: cell masses Z·M (g/mol); volumes: cell volumes V (Å³). NaN entries give NaN fractions.
    """
    s = np.asarray(scales, float) / np.asarray(scattering, float) * np.asarray(masses, float) * np.asarray(volumes,
                                                                                                          float)
    total = np.nansum(s)
    return s / total if total > 0 and np.isfinite(s).all() else np.full(len(s), np.nan)


def phase_structure(db, row: int):
    """The candidate's structure: the embedded table by id, or ``<source>/<id>.cif``; None when not found."""
    label = db.labels.iloc[row]
    try:
        if label["source"] == "embedded":
            table = load_embedded()
            hit = table[table["material_id"] == label["material_id"]]
            return row_to_structure(hit.iloc[0].to_dict()) if len(hit) else None
        folder = Path(label["source"])
        if folder.is_dir() or is_cif_archive(folder):  # the file of that name (read streaming from an archive)
            for name, text in cif_entries(folder):
                if cif_stem(name) == label["material_id"]:
                    return parse_structure_file(text, f"{folder}:{name}")
        return None
    except EACNNError as err:
        log.warning("no structure for %s (%s): its weight fraction is unknown", label["material_id"], err)
        return None


# ---------------------------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------------------------
def _check_phases(phases) -> int | None:
    """None for "auto", else the number asked for (1..MAX_PHASES)."""
    if isinstance(phases, str):
        if phases.strip().lower() == "auto":
            return None
        try:
            phases = int(phases)
        except ValueError:
            raise ConfigError(f"phases must be 'auto' or an integer 1..{MAX_PHASES}, got {phases!r}") from None
    if isinstance(phases, bool) or not isinstance(phases, (int, np.integer)) or not 1 <= phases <= MAX_PHASES:
        raise ConfigError(f"phases must be 'auto' or an integer 1..{MAX_PHASES}, got {phases!r}")
    return int(phases)


def _label(db, row: int) -> tuple[str, str, str, str]:
    lab = db.labels.iloc[row]
    return str(lab["material_id"]), str(lab["formula"]), str(lab["spacegroup_symbol"]), str(lab["source"])


def _slot(db, row: int, strain: float, xrd: XRDConfig, step: int, kalpha2: float) -> _Slot:
    tt, area = db.sticks(int(row))
    tt, area = np.asarray(tt, np.float64), np.asarray(area, np.float64)
    return _Slot(int(row), tt, area, float(strain), 0.0, xrd.fwhm, np.zeros(xrd.n_bins), float(kalpha2), step)


def _fit_state(y, mask, slots, xrd, rounds: int = 2):
    """(scales, background, agreements, fit, rwp) of the slots."""
    scales, bg, agree = fit_phases(y, mask, slots, xrd, rounds)
    fit = bg + sum((s * sl.profile for s, sl in zip(scales, slots)), np.zeros_like(y))
    return scales, bg, agree, fit, _rwp(y, fit, mask)


def _chi2(y: np.ndarray, mask: np.ndarray, profiles: list, basis: np.ndarray) -> tuple[float, float]:
    """(weighted residual sum of squares, scale of the last profile) of a quick NNLS with fixed profiles."""
    scales, bg = _nnls(y, mask, profiles, basis)
    fit = bg @ basis + (scales @ np.asarray(profiles) if len(profiles) else 0.0)
    return float(np.sum(_weights(y[mask]) * (y[mask] - fit[mask]) ** 2)), float(scales[-1]) if len(scales) else 0.0


def _fit_screen(y: np.ndarray, residual: np.ndarray, mask: np.ndarray, db, keep: np.ndarray | None, k: int,
                xrd: XRDConfig) -> pd.DataFrame:
    """The ``k`` candidates whose clean patterns best fit the residual by themselves: for each stored pattern v
    [n, n_bins] and each lattice scale of :data:`FIT_SCALES` (the residual read there,
    :func:`eacnn.retrieval.query.rescale_many`), the share (Σ w r v)² / (Σ w v² Σ w r²) of the residual's weighted
    misfit one non-negative multiple of v removes. Returns rows, similarity (NaN), scale, sorted best first."""
    r, m = rescale_many(np.clip(residual, 0.0, None), FIT_SCALES, xrd, mask)  # [S, n_bins] each
    full, _ = rescale_many(y, FIT_SCALES, xrd, mask)
    w = np.where(m, 1.0 / np.maximum(full, WEIGHT_FLOOR), 0.0)  # [S, n_bins]
    v = _vectors(db)  # [n, n_bins]
    num = v @ (w * r).T  # [n, S]
    share = np.where(num > 0, num * num / np.maximum((v * v) @ w.T, 1e-30), 0.0) / np.maximum(
        np.sum(w * r * r, axis=1), 1e-30)
    j = share.argmax(axis=1)
    best = share[np.arange(len(share)), j]
    if keep is not None:
        best = np.where(keep, best, -1.0)
    rows = np.argsort(-best, kind="stable")[:k]
    rows = rows[best[rows] > 0]
    return pd.DataFrame({"row": rows, "similarity": np.nan, "scale": FIT_SCALES[j[rows]], "fit_share": best[rows]})


def _vectors(db) -> np.ndarray:
    """[n, n_bins] float32 clean patterns of a database, read once per database."""
    cached = getattr(db, "_mixture_vectors", None)
    if cached is None:
        cached = np.asarray(db.vectors, np.float32)
        db._mixture_vectors = cached
    return cached


def _shortlist(y, mask, residual, height, slots, db, elements, k: int, xrd) -> pd.DataFrame:
    """The union of the model's ``k`` best candidates for the residual (multi-scale query, no refinement) and the
    ``k`` best of the fit screen: row, id, formula, spacegroup, similarity, scale, proposed_by."""
    found = identify(np.clip(residual, 0.0, None) / height, mask, db, top=k, elements=elements, rerank=0, xrd=xrd)
    model = found.hits[["row", "similarity", "scale"]].assign(proposed_by="model")
    keep = None
    if elements:
        keep = np.array([el <= set(elements) for el in db.elements])
    fit = _fit_screen(y, residual, mask, db, keep, k, xrd).drop(columns="fit_share").assign(proposed_by="fit")
    both = pd.concat([model, fit[~fit["row"].isin(model["row"])]], ignore_index=True)
    both.loc[both["row"].isin(fit["row"]) & (both["proposed_by"] == "model"), "proposed_by"] = "both"
    labels = db.labels.iloc[both["row"].to_numpy()]
    return both.assign(id=labels["material_id"].to_numpy(), formula=labels["formula"].to_numpy(),
                       spacegroup=labels["spacegroup_symbol"].to_numpy())


def _candidates(y, mask, residual, slots, db, found, xrd, step: int, kalpha2: float) -> list:
    """The shortlist's candidates, each fitted to the residual, as (gain, agreement, slot, hit), best gain first.

    The gain is 1 − χ²(with the candidate) / χ²(without), both quick NNLS fits with the chosen phases' profiles
    fixed: the share of the remaining weighted misfit the candidate removes."""
    basis = _background_basis(xrd, BACKGROUND_DEGREE)
    base, _ = _chi2(y, mask, [s.profile for s in slots], basis)
    taken = {_label(db, s.row)[1:3] for s in slots} | {("", "")}
    out = []
    for h in found.itertuples():
        if int(h.row) in {s.row for s in slots} or (h.formula, h.spacegroup) in taken:
            continue
        cand = _slot(db, int(h.row), 1.0 / float(h.scale) - 1.0, xrd, step, kalpha2)
        agreement = _refit_profile(cand, residual, mask, xrd, _weights(y), screen=True)
        if any(_cosine(cand.profile, s.profile, mask) >= COLLINEAR for s in slots):
            continue
        chi2, scale = _chi2(y, mask, [s.profile for s in slots] + [cand.profile], basis)
        if scale > 0:
            out.append((1.0 - chi2 / max(base, 1e-300), agreement, cand, h))
    return sorted(out, key=lambda c: -c[0])


def identify_phases(vector: np.ndarray, covered: np.ndarray | None, db, phases: str | int = "auto",
                    elements: Sequence[str] | None = None, shortlist: int = MIXTURE.shortlist,
                    significance: float = MIXTURE.significance, min_peak: float = MIXTURE.min_peak,
                    min_gain: float = MIXTURE.min_gain, min_agreement: float = MIXTURE.min_agreement,
                    kalpha2: float | None = None, beam: int = MIXTURE.beam, structures: Callable | None = None,
                    xrd: XRDConfig | None = None) -> MixtureResult:
    """Name every phase of a (possibly multi-phase) pattern with its approximate weight fraction.

    The search, its stopping rule and the fraction method are in the module docstring.

    Args:
        vector: [n_bins] the pattern on the model grid (background-subtracted or not: a smooth background is
            fitted); covered: [n_bins] bool, the bins the scan measured (all when None).
        db: a :class:`eacnn.retrieval.database.SavedDatabase` (with reflections: ``sticks``).
        phases: ``"auto"`` (stop by the rules) or the number of phases to name, 1..:data:`MAX_PHASES`.
        elements: keep only candidates made of these elements (and no others).
        shortlist: candidates the model proposes per step (multi-scale query of the residual), and as many from
            the fit screen; each is then fitted to the residual.
        significance, min_peak: the residual's largest bin must reach max(significance × σ, min_peak) (fraction of
            the strongest bin) for another phase to be searched.
        min_gain: the least share of the remaining weighted misfit (χ²) a new phase must remove.
        min_agreement: the least cosine of a new phase's fitted profile with the residual.
        kalpha2: Kα2 / Kα1 area ratio of the profiles: 0 for Kα1-only (or Kα2-stripped) patterns, None to decide
            on the first phase (0 or :data:`KALPHA2_RATIO`, whichever fits better).
        beam: first phases followed to the end of the search (the best first candidates by gain); another line
            of search replaces the greedy one when it ends with no more phases and an Rwp lower by
            :data:`BEAM_GAIN` (relative).
        structures: ``structures(row) -> pymatgen Structure`` for the weight fractions; by default the embedded
            table or ``<source>/<id>.cif``.

    Returns:
        a :class:`MixtureResult`; no phase when the pattern holds no significant peak that a candidate explains.

    Raises:
        ConfigError: ``phases`` is neither "auto" nor 1..4 (the message shows the value).
        PatternError: the vector is not [n_bins] finite values with a positive maximum over the covered bins.
    """
    xrd = xrd or XRDConfig()
    limit = _check_phases(phases)
    y = np.asarray(vector, np.float64)
    if y.shape != (xrd.n_bins,) or not np.isfinite(y).all():
        raise PatternError(f"need a finite pattern of shape ({xrd.n_bins},), got shape {y.shape}")
    mask = np.ones(xrd.n_bins, bool) if covered is None else np.asarray(covered, bool)
    top = float(np.max(np.where(mask, y, -np.inf))) if mask.any() else 0.0
    if not top > 0:
        raise PatternError("the pattern has no positive intensity over its covered bins")
    y = np.where(mask, np.clip(y, 0.0, None) / top, 0.0)

    with threadpool_limits(1, "blas"):  # many small products: one BLAS thread, no spin-waiting on busy cores
        rules = _Rules(limit, elements, shortlist, significance, min_peak, min_gain, min_agreement)
        empty = _Branch([], _fit_state(y, mask, [], xrd), kalpha2, [], f"reached {limit or MAX_PHASES} phases")
        first = _rank(y, mask, db, rules, xrd, empty, 1)
        if isinstance(first, str):
            empty.stop = first
            branches = [empty]
        else:  # the first phase decides most of what follows: follow the best few first candidates to the end
            branches = [_search(y, mask, db, rules, xrd, _accept(y, mask, rules, xrd, empty, 1, first, b), 2)
                        for b in range(min(beam, len(first[0])))]
        best = branches[0]  # the greedy line; another wins only with a clearly better fit and no more phases
        for other in branches[1:]:
            if other.slots and len(other.slots) <= len(best.slots) and (
                    not best.slots or other.state[4] < (1 - BEAM_GAIN) * best.state[4]):
                best = other
        if best.slots:
            best.state = _recheck(y, mask, best.slots, best.state, db, xrd)
        sigma = max(_noise(np.where(mask, y - best.state[3], 0.0), mask), 1e-6)
        steps = [dict(row, branch=i + 1, chosen=br is best) for i, br in enumerate(branches) for row in br.steps]
        result = _result(y, mask, best.slots, best.state, sigma, best.stop, pd.DataFrame(steps), db, structures, xrd)
        result.kalpha2 = float(best.kalpha2 or 0.0)
        return result


@dataclass(frozen=True)
class _Rules:
    """The search's settings (:func:`identify_phases`' arguments)."""

    limit: int | None  # phases asked for; None: "auto"
    elements: Sequence[str] | None
    shortlist: int
    significance: float
    min_peak: float
    min_gain: float
    min_agreement: float


@dataclass
class _Branch:
    """One line of search: the phases chosen so far, their fit, the Kα2 ratio, the log and why it ended."""

    slots: list
    state: tuple  # _fit_state's (scales, background, agreements, fit, rwp)
    kalpha2: float | None
    steps: list
    stop: str


def _rank(y, mask, db, rules: _Rules, xrd, branch: _Branch, step: int):
    """(ranked candidates, residual, height, σ, significant) for the next phase, or the reason to stop (str)."""
    residual = np.where(mask, y - branch.state[3], 0.0)
    sigma = max(_noise(residual, mask), 1e-6)
    height = float(residual.max())
    significant = height >= max(rules.significance * sigma, rules.min_peak)
    if not significant and (rules.limit is None or height <= 0):
        return (f"no significant residual peak ({height:.3f} < max({rules.significance:g} σ = "
                f"{rules.significance * sigma:.3f}, {rules.min_peak:g}))")
    found = _shortlist(y, mask, residual, height, branch.slots, db, rules.elements, rules.shortlist, xrd)
    ranked = _candidates(y, mask, residual, branch.slots, db, found, xrd, step, branch.kalpha2 or 0.0)
    if not ranked:
        return f"step {step}: no candidate explains any of the residual"
    return ranked, residual, height, sigma, significant


def _accept(y, mask, rules: _Rules, xrd, branch: _Branch, step: int, ranked, pick: int = 0) -> _Branch:
    """A new branch with candidate ``pick`` of ``ranked`` (:func:`_rank`) added when it passes the rules (or when
    phases were asked for); else the branch, stopped."""
    candidates, residual, height, sigma, significant = ranked
    _, agreement, cand, hit = candidates[pick]
    cand = dataclasses.replace(cand)
    kalpha2 = branch.kalpha2
    trial = _fit_state(y, mask, branch.slots + [cand], xrd)
    if kalpha2 is None:  # the first phase decides whether the pattern carries Kα2
        other = dataclasses.replace(cand, kalpha2=KALPHA2_RATIO)
        with_ka2 = _fit_state(y, mask, branch.slots + [other], xrd)
        kalpha2 = KALPHA2_RATIO if with_ka2[4] < trial[4] else 0.0
        cand, trial = (other, with_ka2) if kalpha2 else (cand, trial)
        agreement = _cosine(cand.profile, np.clip(residual, 0.0, None), mask)
    gain = 1.0 - (trial[4] / max(branch.state[4], 1e-12)) ** 2
    diag = {"height": height, "snr": height / sigma, "gain": gain, "similarity": float(hit.similarity),
            "proposed_by": hit.proposed_by}
    reason = ("" if significant else "residual not significant") or (
        f"agreement {agreement:.3f} < {rules.min_agreement:g}" if agreement < rules.min_agreement else
        f"gain {gain:.3f} < {rules.min_gain:g}" if gain < rules.min_gain else
        "zero scale in the joint fit" if trial[0][-1] <= 0 else "")
    if reason and (rules.limit is None or trial[0][-1] <= 0):
        return _Branch(list(branch.slots), branch.state, kalpha2,
                       branch.steps + [_log(step, hit, agreement, False, reason, diag)],
                       f"step {step}: {reason} (best candidate {hit.formula} {hit.spacegroup})")
    cand.confident = not reason
    cand.alternatives = [(c[2].row, c[2].strain) for i, c in enumerate(candidates) if i != pick][:ALTERNATIVES]
    return _Branch(branch.slots + [cand], trial, kalpha2,
                   branch.steps + [_log(step, hit, agreement, True, reason, diag)], branch.stop)


def _search(y, mask, db, rules: _Rules, xrd, branch: _Branch, step: int) -> _Branch:
    """Add phases greedily from ``step`` until a rule stops the branch or the limit is reached."""
    while step <= (rules.limit or MAX_PHASES) and len(branch.slots) == step - 1:
        ranked = _rank(y, mask, db, rules, xrd, branch, step)
        if isinstance(ranked, str):
            branch.stop = ranked
            break
        branch = _accept(y, mask, rules, xrd, branch, step, ranked)
        step += 1
    return branch


def _cosine(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a, b = a[mask], b[mask]
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _log(step: int, hit, agreement: float, accepted: bool, reason: str, diag: dict | None = None) -> dict:
    """One row of :attr:`MixtureResult.steps`."""
    return {"step": step, "id": hit.id, "row": int(hit.row), "formula": hit.formula, "spacegroup": hit.spacegroup,
            "agreement": agreement, **(diag or {}), "accepted": accepted, "reason": reason}


def _recheck(y, mask, slots, state, db, xrd):
    """Swap each slot for one of its step's other candidates when the joint fit improves (module docstring, 4)."""
    for i in range(len(slots)):
        for row, strain in slots[i].alternatives:
            if any(s.row == row for s in slots):
                continue
            cand = _slot(db, row, strain, xrd, slots[i].step, slots[i].kalpha2)
            _refit_profile(cand, y - _others(state[0], state[1], slots, i), mask, xrd, _weights(y))
            trial = _fit_state(y, mask, slots[:i] + [cand] + slots[i + 1:], xrd, rounds=1)
            if trial[4] < state[4] * (1 - SWAP_GAIN) and trial[0][i] > 0:
                log.info("slot %d: %s replaces %s (Rwp %.3f -> %.3f)", i + 1, _label(db, row)[0],
                         _label(db, slots[i].row)[0], state[4], trial[4])
                cand.confident, cand.alternatives = slots[i].confident, slots[i].alternatives
                slots[i] = cand
                state = trial
    return state


def _result(y, mask, slots, state, sigma, stop, steps, db, structures, xrd) -> MixtureResult:
    scales, bg, agree, fit, rwp = state
    keep = [i for i in range(len(slots)) if scales[i] > 0]
    curves = np.array([scales[i] * slots[i].profile for i in keep]).reshape(len(keep), len(y))  # [k, n_bins]
    curves = np.where(mask, curves, 0.0)
    intensity = curves.sum(axis=1)
    frac_i = intensity / max(intensity.sum(), 1e-12)
    wf = _fractions([slots[i] for i in keep], scales[keep] if keep else np.zeros(0), db, structures, xrd)
    phases = []
    for n, i in enumerate(keep):
        ident, formula, sg, source = _label(db, slots[i].row)
        phases.append(MixturePhase(ident, formula, sg, source, slots[i].row, slots[i].strain, slots[i].shift,
                                   slots[i].width, float(scales[i]), float(frac_i[n]), float(wf[n]),
                                   float(agree[i]), slots[i].confident, slots[i].step))
    order = np.argsort([-p.intensity_fraction for p in phases], kind="stable")
    phases = [phases[j] for j in order]
    curves = curves[order] if len(order) else curves
    positive = np.clip(np.where(mask, y - bg, 0.0), 0.0, None)
    explained = float(np.minimum(curves.sum(axis=0), positive).sum() / max(positive.sum(), 1e-12)) if keep else 0.0
    return MixtureResult(phases, explained, rwp, sigma, stop, xrd.bin_centers(), y, mask, curves,
                         np.where(mask, bg, 0.0), steps=steps)


def _fractions(slots, scales, db, structures, xrd) -> np.ndarray:
    if not len(slots):
        return np.zeros(0)
    if len(slots) == 1:  # one phase is the whole sample: no structure to read (the embedded table takes 0.1 s)
        return np.ones(1)
    a, m, v = [], [], []
    for s in slots:
        st = structures(s.row) if structures is not None else phase_structure(db, s.row)
        if st is None:
            a.append(np.nan), m.append(np.nan), v.append(np.nan)
            continue
        a.append(cell_scattering(st, s.tt, s.area, xrd))
        m.append(float(st.composition.weight))
        v.append(float(st.volume))
    return weight_fractions(scales, a, m, v)


# ---------------------------------------------------------------------------------------------------------------
# The phases refined together on the scan itself
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ScanPhases:
    """A mixture's phases refined together on the scan at its own resolution (:func:`refine_on_scan`)."""

    weight_fractions: np.ndarray  # [P] Hill & Howard from the scan fit's scales (NaN where a structure is missing)
    weight_errors: np.ndarray  # [P] their standard errors (first order, scales' covariance inflated by χ²)
    fit: object  # eacnn.retrieval.scanmix.PhasesFit

    def to_dict(self) -> dict:
        return {"rwp": round(self.fit.rwp, 4), "rwp_net": round(self.fit.rwp_net, 4), "chi2": round(self.fit.chi2, 3),
                "kalpha2_ratio": round(self.fit.kalpha2, 3), "zero_shift": round(self.fit.zero_shift, 4)}


def refine_on_scan(result: MixtureResult, scan, db, structures: Callable | None = None,
                   xrd: XRDConfig | None = None) -> ScanPhases | None:
    """The phases of ``result`` refined together on ``scan`` (:class:`eacnn.retrieval.scanfit.Scan`, the file as
    measured; :func:`eacnn.retrieval.scanmix.fit_phases_scan`), and their weight fractions with standard errors
    from the refined scales: W_i = (s_i / A_i) (Z M V)_i / Σ_j …, A_i the absolute scattering of phase i's cell
    over its stored reflections' range divided by their summed areas (as :func:`cell_scattering`). None without
    phases, reflections, or points in range."""
    from eacnn.physics.xrd import metric_monomials
    from eacnn.retrieval.scanmix import fit_phases_scan, fraction_errors

    if not result.phases or not getattr(db, "has_reflections", False):
        return None
    xrd = xrd or XRDConfig()
    refl = [db.reflections(p.row) for p in result.phases]
    if any(r is None for r in refl):
        return None
    fit = fit_phases_scan(scan.two_theta, scan.intensity, refl, scan.wavelength, scan.kalpha2,
                          strains=[p.strain for p in result.phases], scales=[p.scale for p in result.phases])
    if fit is None:
        return None
    factors = []
    for p, r in zip(result.phases, refl):
        if len(result.phases) == 1:  # one phase is the whole sample, whatever its cell's mass and scattering
            factors.append(1.0)
            continue
        st = structures(p.row) if structures is not None else phase_structure(db, p.row)
        if st is None:
            factors.append(np.nan)
            continue
        g2 = metric_monomials(r.hkl) @ np.asarray(r.metric, np.float64)
        tt = np.degrees(2 * np.arcsin(np.minimum(xrd.wavelength / 2 * np.sqrt(np.maximum(g2, 0.0)), 1.0)))
        a = cell_scattering(st, tt, np.asarray(r.area, np.float64), xrd)
        factors.append(float(st.composition.weight) * float(st.volume) / a)
    w, err = fraction_errors(fit.scales, fit.covariance, np.asarray(factors))
    return ScanPhases(w, err, fit)
