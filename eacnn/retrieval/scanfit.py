"""A whole-pattern fit of one candidate to a scan at the scan's own resolution: the verdict's evidence from the
data rather than from 0.5° bins.

The search ranks candidates on the model's 140 bins, where two phases whose strong lines lie within a bin of each
other look alike. On the scan itself (typically 0.01–0.02° steps, peaks 0.05–0.3° wide) a right candidate can be
fitted to within the counting noise and a look-alike cannot. :func:`fit_scan` fits, by Levenberg–Marquardt with
analytic Jacobians (MINPACK, :func:`eacnn.retrieval.lsq.levenberg_marquardt`):

* **positions**: the candidate's reflections (:class:`eacnn.physics.xrd.IndexedReflections`) at the cell allowed by
  its symmetry (:func:`cell_groups`: the reciprocal metric's components that are equal stay equal, those that are
  zero stay zero, so a cubic cell has one parameter and a triclinic six), a zero offset and a specimen displacement
  (Δ2θ = zero + D cos θ, D in degrees); each reflection at Kα1 and, for a lab anode with a tabulated Kα2, at Kα2 with
  its own free (non-negative) scale, so a monochromated or stripped scan fits a Kα2 scale of 0;
* **widths**: a Thompson–Cox–Hastings pseudo-Voigt (:func:`eacnn.physics.measurement.tch_pseudo_voigt`) of a
  Caglioti Gaussian FWHM² = U tan²θ + V tan θ + W and a Lorentzian X / cos θ (size);
* **intensities**: the candidate's own integrated intensities times a March–Dollase preferred orientation along the
  best of its low-index directions (:data:`eacnn.retrieval.refine.TEXTURE_DIRECTIONS`, tried on a grid of r with the
  rest fixed, then r refined with everything else) where that lowers χ² by :data:`TEXTURE_GAIN`;
* **background**: a Chebyshev polynomial of :data:`BACKGROUND_TERMS` terms over the fitted range, jointly;

weighted by counting statistics: σ² = g · max(y, 1), the gain g estimated from the scan's point-to-point scatter
(1 for raw counts; any scaling of the counts is undone). Only the points whose d-spacings the candidate's
reflections cover completely are fitted (the model's 10–80° of Cu Kα1 translated to the scan's wavelength).

What comes back (:class:`ScanFit`) are the usual Rietveld agreement factors: Rwp, the background-subtracted
Rwp' (Σ w (y − ŷ)² / Σ w (y − b)²)^½ — what a wrong phase cannot lower, since the background is fitted either way —,
Rexp and χ² = (Rwp / Rexp)², and the share of the net intensity left in significant positive residuals
(*unexplained*: peaks of another phase or a wrong candidate's missing lines).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from eacnn.physics.measurement import march_dollase
from eacnn.physics.xrd import metric_monomials
from eacnn.retrieval.refine import TEXTURE_DIRECTIONS, TEXTURE_R, texture_cosines
# the model the fit refines, and its names as this module has offered them
from eacnn.retrieval.scanmodel import (BACKGROUND_TERMS, KALPHA2_MAX, MODEL_WINDOW, WINDOW_FWHM, _estimate_fwhm,
                                       _merge, _Model, _widths, cell_groups, counting_gain, prepare_scan)

__all__ = ["Scan", "ScanFit", "fit_scan", "prepare_scan", "fit_shortlist", "scan_margin", "cell_groups",
           "counting_gain", "BACKGROUND_TERMS", "TEXTURE_GAIN", "WINDOW_FWHM", "MODEL_WINDOW", "HOPELESS"]

#: a preferred orientation is kept when it lowers χ² by this factor (it has two more parameters)
TEXTURE_GAIN = 1.05
#: a candidate whose first stage leaves Rwp' above this is not worth the texture trial and the full fit: it is
#: finished with a few evaluations (its χ² is reported as it stands; such a fit is no answer either way)
HOPELESS = 0.7


@dataclass(frozen=True, eq=False)
class Scan:
    """A scan as measured, for :func:`fit_scan`: 2θ [n] (degrees at ``wavelength``, ascending), intensity [n]
    (counts, any scale), the Kα1 (Å) and the Kα2 (Å; None: monochromated or synchrotron, one line)."""

    two_theta: np.ndarray
    intensity: np.ndarray
    wavelength: float = 1.5406
    kalpha2: float | None = None


@dataclass
class ScanFit:
    """One candidate fitted to one scan (see the module docstring)."""

    rwp: float  # weighted profile R over the fitted points
    rwp_net: float  # background-subtracted weighted profile R
    rexp: float  # expected R from the counting statistics
    chi2: float  # reduced χ² = (rwp / rexp)²
    unexplained: float  # share of the net intensity in significant positive residuals
    zero_shift: float  # degrees 2θ
    displacement: float  # degrees 2θ × cos θ
    metric: np.ndarray  # [6] fitted reciprocal metric, Å⁻²
    strain: float  # largest principal strain of the fitted cell relative to the candidate's
    fwhm: float  # degrees, the fitted FWHM at 2θ = 40° (Kα1)
    eta: float  # Lorentzian fraction at 40°
    kalpha2: float  # fitted Kα2 / Kα1 scale (0 without a Kα2 line)
    texture_r: float  # March–Dollase r (1: none)
    texture_hkl: tuple  # the preferred reciprocal direction (() when none)
    points: int  # fitted points
    parameters: int  # refined parameters
    evaluations: int  # profile evaluations of the fit
    seconds: float
    two_theta: np.ndarray = field(repr=False, default=None)  # [m] degrees, the fitted points
    observed: np.ndarray = field(repr=False, default=None)  # [m]
    calculated: np.ndarray = field(repr=False, default=None)  # [m]
    background: np.ndarray = field(repr=False, default=None)  # [m]

    def to_dict(self) -> dict:
        return {"rwp": round(self.rwp, 4), "rwp_net": round(self.rwp_net, 4), "rexp": round(self.rexp, 4),
                "chi2": round(self.chi2, 3), "unexplained": round(self.unexplained, 4),
                "zero_shift": round(self.zero_shift, 4), "displacement": round(self.displacement, 4),
                "strain": round(self.strain, 4), "fwhm_40": round(self.fwhm, 4), "eta_40": round(self.eta, 3),
                "kalpha2_ratio": round(self.kalpha2, 3), "texture_r": round(self.texture_r, 3),
                "texture_hkl": list(self.texture_hkl), "points": self.points, "parameters": self.parameters}


def fit_scan(two_theta: np.ndarray, intensity: np.ndarray, reflections, wavelength: float = 1.5406,
             kalpha2: float | None = None, strain: float = 0.0, zero_shift: float = 0.0,
             metric: np.ndarray | None = None, texture: bool = True,
             max_evaluations: int = 60, keep_curves: bool = False) -> ScanFit | None:
    """Fit one candidate's reflections to a scan (module docstring).

    Args:
        two_theta: [n] degrees at ``wavelength`` (ascending); intensity: [n] counts (any scale).
        reflections: the candidate's :class:`eacnn.physics.xrd.IndexedReflections`.
        wavelength: the scan's Kα1 (Å); kalpha2: its Kα2 (Å) or None (monochromated, synchrotron).
        strain, zero_shift: the search's isotropic fit (d × (1 + strain); degrees), the starting point.
        metric: [6] the search's fitted reciprocal metric (Å⁻²), a better start where its cell fit was kept: its
            projection on the cells the candidate's symmetry allows.
        texture: try a preferred orientation.
        max_evaluations: of the Levenberg–Marquardt stage.
        keep_curves: keep the fitted points, observed, calculated and background curves.

    Returns:
        :class:`ScanFit`, or None where fewer than 50 points or no reflection lie in the covered range.
    """
    from eacnn.retrieval.lsq import levenberg_marquardt

    t0 = time.perf_counter()
    prepared = prepare_scan(two_theta, intensity, wavelength)
    if prepared is None or reflections is None or len(reflections.hkl) == 0:
        return None
    x, y, sigma = prepared
    base = np.asarray(reflections.metric, np.float64) / (1.0 + strain) ** 2
    groups = cell_groups(base)
    hkl = np.asarray(reflections.hkl, np.float64)
    mono, area, inverse = _merge(hkl, np.asarray(reflections.area, np.float64), base, groups)
    lines = (wavelength,) if kalpha2 is None else (wavelength, kalpha2)
    fw0 = _estimate_fwhm(x, y)
    model = _Model(x, y, sigma, mono, area, base, groups, lines, None, BACKGROUND_TERMS)
    nl, nb, k = model.nl, model.nb, model.k
    p = np.zeros(model.size())
    p[nl + nb] = zero_shift
    if metric is not None:  # the start's relative change of each group's components, averaged (least squares)
        rel = np.where(np.abs(base) > 0, np.asarray(metric, np.float64) / np.where(base != 0, base, 1.0) - 1.0, 0.0)
        p[nl + nb + 2 : nl + nb + 2 + k] = 100.0 * (groups.T @ rel) / np.maximum(groups.sum(axis=0), 1.0)
    j = nl + nb + 2 + k
    p[j : j + 4] = [0.02, 0.0, 0.8 * fw0, np.sqrt(0.3 * fw0)]  # √U, V, √W, √X
    p = _linear_start(model, p)
    # first without the displacement (which trades off with the zero offset and the cell), then everything
    model.frozen[nl + nb + 1] = True
    p = levenberg_marquardt(model.residual, model.jacobian, p, max_evaluations // 5, _scales(model, p), ftol=1e-4)[0]
    model.frozen[:] = False
    if _rwp_net(model, p) > HOPELESS:  # no answer either way: reported as it stands
        return _summary(model, p, base, np.asarray(reflections.metric, np.float64), 1.0, (),
                        time.perf_counter() - t0, keep_curves)
    p, residual = levenberg_marquardt(model.residual, model.jacobian, p, max_evaluations, _scales(model, p), ftol=1e-5)
    chi = float(np.sum(residual[:-2] ** 2))
    r_best, direction = 1.0, ()
    if texture and k >= 0:
        p, chi, r_best, direction, model = _texture(model, p, chi, hkl, inverse, np.asarray(reflections.area, np.float64),
                                                    base, max_evaluations)
    return _summary(model, p, base, np.asarray(reflections.metric, np.float64), r_best, direction,
                    time.perf_counter() - t0, keep_curves)


def _rwp_net(model: _Model, p: np.ndarray) -> float:
    """The background-subtracted weighted profile R at p."""
    c = model._evaluate(p)
    w = 1.0 / model.sigma**2
    return float(np.sqrt(np.sum(w * (model.y - c["calc"]) ** 2) / max(np.sum(w * (model.y - c["bg"]) ** 2), 1e-300)))


def _scales(model: _Model, p: np.ndarray) -> np.ndarray:
    """Typical sizes of the parameters (the solver's x_scale): scales and background by their start, positions in
    0.01°, the cell in 0.1 % of a component, widths in 0.01° (½ for √U), ln r by 0.1."""
    nl, nb, k = model.nl, model.nb, model.k
    lin = np.maximum(np.abs(p[: nl + nb]), 1e-3 * max(abs(p[0]), 1e-12))
    if nl > 1:
        lin[1] = 0.1  # √ratio
    out = np.concatenate([lin, [0.01, 0.01],
                          np.full(k, 0.1), [0.05, 0.01, 0.01, 0.05], [0.1] * (model.cos_dir is not None)])
    return out


def _linear_start(model: _Model, p: np.ndarray) -> np.ndarray:
    """p with the scales and background set by weighted linear least squares at its other values."""
    c = model._evaluate(p)
    a = np.concatenate([c["basis"], model.cheb], axis=1) / model.sigma[:, None]
    sol = np.linalg.lstsq(a, model.y / model.sigma, rcond=None)[0]
    out = p.copy()
    scale, ratio = max(sol[0], 0.0), (float(np.clip(sol[1] / sol[0], 0.0, KALPHA2_MAX)) if model.nl > 1 and sol[0] > 0
                                      else 0.5)
    out[0] = scale
    if model.nl > 1:
        out[1] = np.sqrt(ratio)
    out[model.nl : model.nl + model.nb] = sol[model.nl :]
    model._at = None
    return out


def _texture(model, p, chi, hkl, inverse, area_raw, base, max_evaluations):
    """Try March–Dollase along each low-index direction on a grid of r (positions and widths fixed, scales and
    background linear), then refine r with everything from the best; kept when χ² falls by TEXTURE_GAIN."""
    from eacnn.retrieval.lsq import levenberg_marquardt

    q = model.unpack(p)
    metric = base * (1.0 + model.groups @ q["cell"] / 100.0)
    cos = texture_cosines(hkl, metric, TEXTURE_DIRECTIONS)  # [R, D] unmerged
    # each merged reflection's profile [m] per line at the fit, as a sparse matrix, to try the grid by products
    from scipy.sparse import csr_matrix

    c = model._evaluate(p)
    m, n_merged = len(model.x), len(model.area)
    mats = []
    for ln in range(model.nl):
        sel = model.unpack(p)["scale"][ln] * (c["line_of"][c["owner"]] == ln)
        mats.append(csr_matrix((c["prof"] * sel, (c["idx"], c["refl"][c["owner"]])), shape=(m, n_merged)))
    prof = sum(mats[1:], mats[0])  # [m, M] the lines at their fitted scales
    ws = 1.0 / model.sigma
    # every (direction, r) at once: the scan is linear in the textured column and the background, so each trial's
    # χ² is that of y after the background is projected out, less what the projected column explains
    qb, _ = np.linalg.qr(model.cheb * ws[:, None])  # [m, nb]
    yw = model.y * ws
    y_perp = yw - qb @ (qb.T @ yw)
    factors = march_dollase(cos.T[:, None, :], TEXTURE_R[None, :, None]).reshape(-1, len(area_raw))  # [D·n, R]
    merged = np.stack([np.bincount(inverse, weights=area_raw * f, minlength=n_merged) for f in factors], axis=1)
    cols = (prof @ merged) * ws[:, None]  # [m, D·n]
    cols -= qb @ (qb.T @ cols)
    along = y_perp @ cols  # [D·n]
    chis = y_perp @ y_perp - np.where(along > 0, along**2 / np.maximum(np.einsum("ij,ij->j", cols, cols), 1e-300), 0)
    t = int(np.argmin(chis))
    best = (float(chis[t]), t // len(TEXTURE_R), float(TEXTURE_R[t % len(TEXTURE_R)]))
    if chi < TEXTURE_GAIN * best[0]:
        return p, chi, 1.0, (), model
    d, r = best[1], best[2]
    # merged reflections no longer share a texture factor: refit on the unmerged ones with ln r free
    tmodel = _Model(model.x, model.y, model.sigma, metric_monomials(hkl), area_raw, model.base, model.groups,
                    model.wavelengths, cos[:, d], model.nb)
    p2 = np.concatenate([p, [np.log(r)]])
    p2 = _linear_start(tmodel, p2)
    p2, residual = levenberg_marquardt(tmodel.residual, tmodel.jacobian, p2, max_evaluations // 2, _scales(tmodel, p2),
                                       ftol=1e-5)
    chi2 = float(np.sum(residual[:-2] ** 2))
    if chi < TEXTURE_GAIN * chi2:
        return p, chi, 1.0, (), model
    tmodel.evaluations += model.evaluations
    return p2, chi2, float(np.exp(tmodel.unpack(p2)["lnr"])), tuple(int(v) for v in TEXTURE_DIRECTIONS[d]), tmodel


def _summary(model: _Model, p, base, own, r, direction, seconds, keep_curves) -> ScanFit:
    from eacnn.retrieval.refine import _anisotropy

    c = model._evaluate(p)
    q = c["q"]
    w = 1.0 / model.sigma**2
    res2 = w * (model.y - c["calc"]) ** 2
    n, npar = len(model.x), model.size()
    rwp = float(np.sqrt(res2.sum() / max(np.sum(w * model.y**2), 1e-300)))
    net = model.y - c["bg"]
    rwp_net = float(np.sqrt(res2.sum() / max(np.sum(w * net**2), 1e-300)))
    rexp = float(np.sqrt(max(n - npar, 1) / max(np.sum(w * model.y**2), 1e-300)))
    # significant positive residuals: (y - ŷ)/σ smoothed over ~ the peak width above 3 / sqrt(width in points)
    z = (model.y - c["calc"]) / model.sigma
    fw, eta = _widths(np.array([40.0]), q["u"], q["v"], q["w"], q["lx"])
    span = int(np.clip(round(float(fw[0]) / max(np.median(np.diff(model.x)), 1e-6)), 1, max(len(z) // 20, 1)))
    kernel = np.ones(span) / span
    zs = np.convolve(z, kernel, mode="same") * np.sqrt(span)
    pos = (zs > 3.0) & (model.y > c["calc"])
    unexplained = float(np.sum((model.y - c["calc"])[pos]) / max(np.sum(np.maximum(net, 0.0)), 1e-300))
    metric = base * (1.0 + model.groups @ q["cell"] / 100.0)
    _, largest = _anisotropy(own, metric)
    ratio = float(q["ratio"])
    curves = dict(two_theta=model.x, observed=model.y, calculated=c["calc"], background=c["bg"]) if keep_curves else {}
    return ScanFit(rwp, rwp_net, rexp, (rwp / rexp) ** 2, unexplained, float(q["zero"]), float(q["disp"]), metric,
                   float(largest), float(fw[0]), float(eta[0]), ratio, float(r), direction, n, npar,
                   model.evaluations, float(seconds), **curves)


#: the columns :func:`fit_shortlist` adds
SCAN_COLUMNS = ("scan_chi2", "scan_rwp", "scan_rwp_net", "scan_unexplained", "scan_texture_r", "scan_seconds")


def fit_shortlist(hits, scan: Scan, reflections, n: int, model_wavelength: float = 1.5406):
    """The best ``n`` rows of a refined, re-ranked ``hits`` table (``row``, ``strain``, ``zero_shift`` columns)
    fitted to ``scan`` (:func:`fit_scan`; ``reflections(row)`` the database's); returns (a copy of ``hits`` with
    :data:`SCAN_COLUMNS`, NaN where not fitted; {row: ScanFit}). The search's zero shift is a start only where the
    scan was taken at the model's wavelength (elsewhere it is in other degrees)."""
    import pandas as pd

    out = hits.copy()
    for col in SCAN_COLUMNS:
        out[col] = np.nan
    fits = {}
    same = abs(scan.wavelength - model_wavelength) < 1e-3
    for i in range(min(n, len(out))):
        row = int(out["row"].iloc[i])
        indexed = reflections(row)
        strain = float(out["strain"].iloc[i]) if "strain" in out and pd.notna(out["strain"].iloc[i]) else 0.0
        zero = float(out["zero_shift"].iloc[i]) if same and "zero_shift" in out and pd.notna(
            out["zero_shift"].iloc[i]) else 0.0
        metric = out["metric"].iloc[i] if "metric" in out else None
        fit = fit_scan(scan.two_theta, scan.intensity, indexed, scan.wavelength, scan.kalpha2, strain=strain,
                       zero_shift=zero, metric=metric if isinstance(metric, np.ndarray) else None)
        if fit is None:
            continue
        fits[row] = fit
        out.iloc[i, [out.columns.get_loc(c) for c in SCAN_COLUMNS]] = [
            fit.chi2, fit.rwp, fit.rwp_net, fit.unexplained, fit.texture_r, fit.seconds]
    return out, fits


def scan_margin(chi2: np.ndarray, phase: np.ndarray, top: int = 0) -> float:
    """How far the answer's scan fit stands out: ln χ² of the best fitted candidate of another phase less ln χ² of
    candidate ``top`` (the answer; ``chi2`` [k], NaN where not fitted; ``phase`` [k] labels). Negative when another
    phase fits better; infinite when no other phase was fitted; NaN when the answer was not."""
    chi2, phase = np.asarray(chi2, float), np.asarray(phase)
    if not np.isfinite(chi2[top]):
        return float("nan")
    others = chi2[np.isfinite(chi2) & (phase != phase[top])]
    return float(np.log(others.min()) - np.log(chi2[top])) if len(others) else float("inf")
