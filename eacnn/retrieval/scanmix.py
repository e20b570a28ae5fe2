"""Several phases fitted together to one scan at its own resolution: a mixture's quantitative answer.

The mixture search (:mod:`eacnn.measured.mixtures`) names the phases on the model's 0.5° bins, where overlapping
lines of two phases cannot be told apart. :func:`fit_phases_scan` refines the named phases jointly on the scan as
measured, with the single-phase model of :mod:`eacnn.retrieval.scanfit` for each: per phase a scale, the cell its
symmetry allows and a Lorentzian (size) width; shared by all, the instrument (zero offset, displacement, Caglioti
U, V, W, the Kα2 ratio) and a Chebyshev background; weighted by counting statistics, by Levenberg–Marquardt with
the phases' analytic Jacobians summed. No preferred orientation is refined here (each phase's texture would trade
intensity with its neighbours' overlapping lines).

The fitted scales, with their standard errors from the covariance (JᵀJ)⁻¹ χ²ᵣ (inflated by the misfit, as Rietveld
programs report them), give weight fractions by Hill & Howard's relation (:func:`eacnn.measured.mixtures`'s
``weight_fractions``; the caller brings each phase's absolute scattering and Z·M·V) with errors propagated to
first order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from eacnn.retrieval.scanmodel import (BACKGROUND_TERMS, DISPLACEMENT_PRIOR, KALPHA2_MAX, ZERO_PRIOR, _estimate_fwhm,
                                       _merge, _Model, _widths, cell_groups, prepare_scan)

__all__ = ["PhasesFit", "fit_phases_scan", "fraction_errors"]


@dataclass
class PhasesFit:
    """Phases fitted together to one scan (module docstring); per-phase arrays in the order given."""

    rwp: float  # weighted profile R over the fitted points
    rwp_net: float  # background-subtracted
    chi2: float  # reduced χ²
    scales: np.ndarray  # [P] each phase's scale of its stored reflections (strongest 1)
    scale_errors: np.ndarray  # [P] their standard errors (covariance inflated by χ²)
    covariance: np.ndarray  # [P, P] of the scales
    metrics: list  # P fitted reciprocal metrics [6], Å⁻²
    fwhm: np.ndarray  # [P] FWHM at 2θ = 40°, degrees
    zero_shift: float  # degrees
    kalpha2: float  # Kα2 / Kα1 ratio
    points: int
    seconds: float
    two_theta: np.ndarray = field(repr=False, default=None)  # [m]
    observed: np.ndarray = field(repr=False, default=None)  # [m]
    curves: np.ndarray = field(repr=False, default=None)  # [P, m] each phase's fitted contribution
    background: np.ndarray = field(repr=False, default=None)  # [m]


class _Phases:
    """The sum of several single-phase models (:class:`eacnn.retrieval.scanfit._Model`) and one background.

    Layout of p: [scales (P), √(Kα2 ratio) (with two lines), background (nb), zero, displacement, √U, V, √W, then
    per phase its cell (k_i) and √X_i]."""

    def __init__(self, models: list, cheb: np.ndarray, nl: int):
        self.models, self.cheb, self.nl = models, cheb, nl
        self.P, self.nb = len(models), cheb.shape[1]
        self.shared = self.P + (nl > 1) + self.nb + 5
        self.offsets = np.cumsum([self.shared] + [m.k + 1 for m in models])[:-1]  # each phase's own block

    def size(self) -> int:
        return self.shared + sum(m.k + 1 for m in self.models)

    def _phase_p(self, p: np.ndarray, i: int) -> np.ndarray:
        """Phase i's parameters in its own model's layout (a zero background: the shared one is added once)."""
        m, P, nl, nb = self.models[i], self.P, self.nl, self.nb
        j = P + (nl > 1)
        zero, disp, su, v, sw = p[j + nb : j + nb + 5]
        own = p[self.offsets[i] : self.offsets[i] + m.k + 1]
        head = [p[i]] + ([p[P]] if nl > 1 else [])
        return np.concatenate([head, np.zeros(nb), [zero, disp], own[:-1], [su, v, sw, own[-1]]])

    def curves(self, p: np.ndarray) -> np.ndarray:
        return np.stack([m._evaluate(self._phase_p(p, i))["peaks"] for i, m in enumerate(self.models)])

    def background(self, p: np.ndarray) -> np.ndarray:
        j = self.P + (self.nl > 1)
        return self.cheb @ p[j : j + self.nb]

    def residual(self, p: np.ndarray) -> np.ndarray:
        m0 = self.models[0]
        calc = self.curves(p).sum(axis=0) + self.background(p)
        j = self.P + (self.nl > 1) + self.nb
        return np.concatenate([(m0.y - calc) / m0.sigma, [p[j] / ZERO_PRIOR, p[j + 1] / DISPLACEMENT_PRIOR]])

    def jacobian(self, p: np.ndarray) -> np.ndarray:
        P, nl, nb = self.P, self.nl, self.nb
        n_pts = len(self.models[0].x)
        jac = np.zeros((n_pts + 2, self.size()))
        j = P + (nl > 1)
        for i, m in enumerate(self.models):
            ji = m.jacobian(self._phase_p(p, i))  # [n + 2, size_i] in the phase's layout
            jac[:, i] += ji[:, 0]  # its scale
            if nl > 1:
                jac[:, P] += ji[:, 1]  # the shared Kα2 ratio
            a = m.nl + m.nb
            jac[:n_pts, j + nb : j + nb + 2] += ji[:n_pts, a : a + 2]  # zero, displacement (priors added below)
            jac[:n_pts, self.offsets[i] : self.offsets[i] + m.k] = ji[:n_pts, a + 2 : a + 2 + m.k]  # its cell
            w = a + 2 + m.k
            jac[:n_pts, j + nb + 2 : j + nb + 5] += ji[:n_pts, w : w + 3]  # √U, V, √W
            jac[:n_pts, self.offsets[i] + m.k] = ji[:n_pts, w + 3]  # its √X
        jac[:n_pts, j : j + nb] = -self.cheb / self.models[0].sigma[:, None]
        jac[n_pts, j + nb], jac[n_pts + 1, j + nb + 1] = 1.0 / ZERO_PRIOR, 1.0 / DISPLACEMENT_PRIOR
        return jac


def fit_phases_scan(two_theta: np.ndarray, intensity: np.ndarray, reflections: list, wavelength: float = 1.5406,
                    kalpha2: float | None = None, strains=None, scales=None, max_evaluations: int = 80,
                    keep_curves: bool = False) -> PhasesFit | None:
    """Fit several phases together to one scan (module docstring).

    Args:
        two_theta, intensity: the scan as measured ([n] degrees at ``wavelength``, counts of any scale).
        reflections: P :class:`eacnn.physics.xrd.IndexedReflections`, one per phase.
        wavelength, kalpha2: the scan's Kα1 and Kα2 (Å; None: one line).
        strains: [P] each phase's starting isotropic strain (d × (1 + strain)); scales: [P] relative starting
            scales (e.g. the binned fit's; equal when None).
        keep_curves: keep each phase's fitted curve and the background.

    Returns:
        :class:`PhasesFit`, or None when no phase or fewer than 50 points lie in the covered range.
    """
    from eacnn.retrieval.lsq import levenberg_marquardt

    t0 = time.perf_counter()
    prepared = prepare_scan(two_theta, intensity, wavelength)
    reflections = [r for r in reflections]
    if prepared is None or not reflections or any(r is None or not len(r.hkl) for r in reflections):
        return None
    x, y, sigma = prepared
    lines = (wavelength,) if kalpha2 is None else (wavelength, kalpha2)
    strains = np.zeros(len(reflections)) if strains is None else np.asarray(strains, float)
    models = []
    for r, eps in zip(reflections, strains):
        base = np.asarray(r.metric, np.float64) / (1.0 + eps) ** 2
        groups = cell_groups(base)
        mono, area, _ = _merge(np.asarray(r.hkl, np.float64), np.asarray(r.area, np.float64), base, groups)
        models.append(_Model(x, y, sigma, mono, area, base, groups, lines, None, BACKGROUND_TERMS))
    mix = _Phases(models, models[0].cheb, len(lines))
    P, nb = mix.P, mix.nb
    fw0 = _estimate_fwhm(x, y)
    p = np.zeros(mix.size())
    j = P + (mix.nl > 1)
    if mix.nl > 1:
        p[P] = np.sqrt(0.5)
    p[j + nb + 2 : j + nb + 5] = [0.02, 0.0, 0.8 * fw0]
    for i, m in enumerate(models):
        p[mix.offsets[i] + m.k] = np.sqrt(0.3 * fw0)
    # starting scales and background: one linear least-squares fit at the start's shapes
    p[:P] = 1.0 if scales is None else np.maximum(np.asarray(scales, float), 1e-6)
    shapes = mix.curves(p) / np.maximum(p[:P, None], 1e-300)  # [P, m] per unit scale
    a = np.concatenate([shapes.T, mix.cheb], axis=1) / sigma[:, None]
    sol = np.linalg.lstsq(a, y / sigma, rcond=None)[0]
    p[:P] = np.maximum(sol[:P], 1e-6 * max(float(np.abs(sol[:P]).max()), 1e-12))
    p[j : j + nb] = sol[P:]
    p = levenberg_marquardt(mix.residual, mix.jacobian, p, max_evaluations, "jac", ftol=1e-6)[0]
    curves, bg = mix.curves(p), mix.background(p)
    calc = curves.sum(axis=0) + bg
    w = 1.0 / sigma**2
    res2 = float(np.sum(w * (y - calc) ** 2))
    n, npar = len(x), mix.size()
    chi2 = res2 / max(n - npar, 1)
    jac = mix.jacobian(p)[:n]
    with np.errstate(over="ignore", invalid="ignore"):
        jtj = jac.T @ jac
    cov = np.full((P, P), np.nan)
    if np.all(np.isfinite(jtj)):  # a diverged fit's Jacobian overflows; LAPACK would print to stderr on it
        try:
            cov = np.linalg.pinv(jtj)[:P, :P] * chi2
        except np.linalg.LinAlgError:
            pass
    metrics = []
    for i, m in enumerate(models):
        cell = p[mix.offsets[i] : mix.offsets[i] + m.k]
        metrics.append(m.base * (1.0 + m.groups @ cell / 100.0))
    fwhm = np.array([float(_widths(np.array([40.0]), p[j + nb + 2], p[j + nb + 3], p[j + nb + 4],
                                   p[mix.offsets[i] + m.k])[0][0]) for i, m in enumerate(models)])
    ratio = float(min(p[P] ** 2, KALPHA2_MAX)) if mix.nl > 1 else 0.0
    extra = dict(two_theta=x, observed=y, curves=curves, background=bg) if keep_curves else {}
    return PhasesFit(float(np.sqrt(res2 / max(np.sum(w * y**2), 1e-300))),
                     float(np.sqrt(res2 / max(np.sum(w * (y - bg) ** 2), 1e-300))), float(chi2), p[:P].copy(),
                     np.sqrt(np.maximum(np.diag(cov), 0.0)), cov, metrics, fwhm, float(p[j + nb]), ratio, n,
                     time.perf_counter() - t0, **extra)


def fraction_errors(scales: np.ndarray, covariance: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weight fractions [P], their standard errors [P]) of W_i = c_i s_i / Σ_j c_j s_j for scales s with
    covariance [P, P] and factors c_i = (Z M V)_i / A_i (first-order propagation)."""
    s, c = np.asarray(scales, float), np.asarray(factors, float)
    t = c * s
    total = t.sum()
    if not np.isfinite(total) or total <= 0:
        return np.full(len(s), np.nan), np.full(len(s), np.nan)
    w = t / total
    grad = (np.diag(c) * total - np.outer(t, c)) / total**2  # [P, P] dW_i / ds_j
    cov_w = grad @ np.asarray(covariance, float) @ grad.T
    return w, np.sqrt(np.maximum(np.diag(cov_w), 0.0))
