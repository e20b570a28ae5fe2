"""A whole-pattern fit of one candidate to a scan at the scan's own resolution: the verdict's evidence from the
data rather than from 0.5° bins.

The search ranks candidates on the model's 140 bins, where two phases whose strong lines lie within a bin of each
other look alike. On the scan itself (typically 0.01–0.02° steps, peaks 0.05–0.3° wide) a right candidate can be
fitted to within the counting noise and a look-alike cannot. :func:`fit_scan` fits, by Levenberg–Marquardt with
analytic Jacobians (``scipy.optimize.least_squares``, trust-region reflective with bounds):

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

from eacnn.physics.measurement import march_dollase, tch_pseudo_voigt
from eacnn.physics.xrd import metric_monomials
from eacnn.retrieval.refine import TEXTURE_DIRECTIONS, TEXTURE_R

__all__ = ["Scan", "ScanFit", "fit_scan", "prepare_scan", "fit_shortlist", "scan_margin", "cell_groups", "counting_gain", "BACKGROUND_TERMS", "TEXTURE_GAIN", "WINDOW_FWHM",
           "MODEL_WINDOW"]

#: terms of the Chebyshev background (over the fitted range)
BACKGROUND_TERMS = 8
#: a preferred orientation is kept when it lowers χ² by this factor (it has two more parameters)
TEXTURE_GAIN = 1.05
#: each reflection's profile is evaluated within ± this many FWHM of its centre (±0.4° at least, ±WINDOW_MAX at most)
WINDOW_FWHM = 10.0
WINDOW_MAX = 2.0  # degrees
#: degrees 2θ: scans with a finer step are fitted with neighbouring points summed to about this step (peaks of
#: lab scans are 0.05–0.3° wide, so 4+ points a FWHM remain; the fit's cost is linear in the points)
FIT_STEP = 0.02
#: a candidate whose first stage leaves Rwp' above this is not worth the texture trial and the full fit: it is
#: finished with a few evaluations (its χ² is reported as it stands; such a fit is no answer either way)
HOPELESS = 0.7
#: degrees 2θ at Cu Kα1 (1.5406 Å) the candidates' reflections cover completely (the model's window)
MODEL_WINDOW = (10.0, 80.0, 1.5406)
#: degrees: the priors' widths on the zero offset and the displacement coefficient (a weak pull to 0 that only
#: decides between the two where the scan cannot)
ZERO_PRIOR = 0.5
DISPLACEMENT_PRIOR = 0.2
#: the largest Kα2 / Kα1 scale (the tabulated ratio is 0.5; more is another phase's peak, not Kα2)
KALPHA2_MAX = 0.6
#: relative tolerance of "equal" and "zero" metric components in :func:`cell_groups`
METRIC_TOL = 1e-4
_LN2 = np.log(2.0)
_G0 = 2.0 * np.sqrt(_LN2 / np.pi)


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


def cell_groups(metric: np.ndarray, tol: float = METRIC_TOL) -> np.ndarray:
    """[6, k] which reciprocal-metric components move together: the fitted metric is metric ∘ (1 + B p / 100) with
    p [k] in per cent of each component. Zero components stay zero; equal diagonal components share a parameter;
    an off-diagonal component equal to half its two equal diagonals (hexagonal axes, γ* = 60°) shares theirs;
    equal off-diagonal components share one. So a cubic cell has k = 1, hexagonal and tetragonal 2, rhombohedral
    (rhombohedral axes) 2, orthorhombic 3, monoclinic 4, triclinic 6 — without a space-group setting to read."""
    g = np.asarray(metric, np.float64)
    scale = float(np.mean(np.abs(g[:3])))
    close = lambda a, b: abs(a - b) <= tol * scale  # noqa: E731
    group = [-1] * 6
    k = 0
    for i in range(3):  # diagonal components
        for j in range(i):
            if close(g[i], g[j]):
                group[i] = group[j]
                break
        else:
            group[i], k = k, k + 1
    pairs = {3: (0, 1), 4: (0, 2), 5: (1, 2)}
    for i in (3, 4, 5):  # off-diagonal components
        if abs(g[i]) <= tol * scale:
            continue  # stays zero
        a, b = pairs[i]
        if group[a] == group[b] and close(abs(g[i]), g[a] / 2):
            group[i] = group[a]
            continue
        for j in (3, 4, 5):
            if j < i and group[j] >= 0 and close(g[i], g[j]) and j not in pairs.get(i, ()):
                group[i] = group[j]
                break
        else:
            group[i], k = k, k + 1
    out = np.zeros((6, k))
    for i, gi in enumerate(group):
        if gi >= 0:
            out[i, gi] = 1.0
    return out


def counting_gain(y: np.ndarray) -> float:
    """g in var(y) = g · y: from the scatter of each point about its neighbours' mean, where the profile is smooth
    on the step's scale (1.5 var(y) for independent noise). 1 for raw counts."""
    y = np.asarray(y, np.float64)
    if len(y) < 5:
        return 1.0
    d = y[1:-1] - 0.5 * (y[:-2] + y[2:])  # [n-2]
    level = np.maximum(y[1:-1], 1e-12)
    ratio = d * d / (1.5 * level)
    # the median over the smooth half: peaks' curvature inflates the rest
    smooth = np.abs(y[2:] - y[:-2]) <= np.quantile(np.abs(y[2:] - y[:-2]), 0.5)
    return float(max(np.median(ratio[smooth]) / 0.4549, 1e-12))  # median of χ²₁ is 0.4549


def _widths(two_theta: np.ndarray, su: float, v: float, sw: float, sx: float) -> tuple[np.ndarray, np.ndarray]:
    """(FWHM, η) [n] for the fit's width parameters: U = su², V = v, W = sw², X = sx² (squares keep them positive
    without bounds; each capped where the FWHM would pass ~2°, so a diverging fit of a wrong candidate stays finite)."""
    return _tch(two_theta, min(su * su, 2.0), float(np.clip(v, -1.0, 1.0)), min(sw * sw, 2.0), min(sx * sx, 2.0))


def _tch(two_theta: np.ndarray, u: float, v: float, w: float, x: float) -> tuple[np.ndarray, np.ndarray]:
    """(FWHM, η) [n] of the pseudo-Voigt at 2θ [n] (degrees) for Caglioti U, V, W (deg²) and Lorentzian X / cos θ."""
    th = np.radians(two_theta / 2.0)
    t = np.tan(th)
    fg = np.sqrt(np.maximum(u * t * t + v * t + w, 1e-8))
    fl = np.maximum(x, 0.0) / np.cos(th)
    return tch_pseudo_voigt(fg, fl)


class _Model:
    """The calculated scan and its Jacobian for parameter vector p (layout in :meth:`unpack`)."""

    def __init__(self, x, y, sigma, mono, area, base, groups, wavelengths, cos_dir, nb):
        self.x, self.y, self.sigma = x, y, sigma  # [m] each
        self.mono, self.area, self.base, self.groups = mono, area, base, groups  # [R, 6], [R], [6], [6, k]
        self.wavelengths = wavelengths  # (Kα1,) or (Kα1, Kα2)
        self.cos_dir = cos_dir  # [R] cosines to the preferred direction (None: no texture)
        lo, hi = x[0], x[-1]
        z = (2 * x - lo - hi) / max(hi - lo, 1e-9)
        self.cheb = np.polynomial.chebyshev.chebvander(z, nb - 1)  # [m, nb]
        self.nl = len(wavelengths)
        self.k = groups.shape[1]
        self.nb = nb
        self.evaluations = 0
        self.frozen = np.zeros(self.size(), bool)  # parameters held (their Jacobian columns zero)
        self._at = None

    # layout: [scale, (√(Kα2 ratio) with two lines), background (nb), zero, displacement, cell (k), √U, V, √W, √X,
    # (ln r)]; the lines' scales are (scale, scale × ratio), the ratio at most KALPHA2_MAX
    def unpack(self, p):
        nl, nb, k = self.nl, self.nb, self.k
        i = nl + nb
        ratio = min(p[1] ** 2, KALPHA2_MAX) if nl > 1 else 0.0
        scale = np.array([p[0], p[0] * ratio])[:nl]
        out = dict(scale=scale, ratio=ratio, bg=p[nl:i], zero=p[i], disp=p[i + 1], cell=p[i + 2 : i + 2 + k])
        j = i + 2 + k
        out.update(u=p[j], v=p[j + 1], w=p[j + 2], lx=p[j + 3], lnr=p[j + 4] if self.cos_dir is not None else 0.0)
        return out

    def size(self) -> int:
        return self.nl + self.nb + 2 + self.k + 4 + (self.cos_dir is not None)

    def _evaluate(self, p):
        if self._at is not None and np.array_equal(self._at[0], p):
            return self._at[1]
        self.evaluations += 1
        q = self.unpack(p)
        rel = self.groups @ q["cell"] / 100.0  # [6]
        g2 = np.maximum(self.mono @ (self.base * (1.0 + rel)), 1e-12)  # [R] 1/d², Å⁻²
        area = self.area.copy()
        dlnr = None
        if self.cos_dir is not None:
            r = np.exp(np.clip(q["lnr"], np.log(0.2), np.log(5.0)))
            md = march_dollase(self.cos_dir, r)
            area = area * md
            # d ln MD / d ln r = -1.5 (2 r² c² - s² / r) / (r² c² + s² / r)
            c2 = self.cos_dir**2
            dlnr = -1.5 * (2 * r * r * c2 - (1 - c2) / r) / (r * r * c2 + (1 - c2) / r)
        rows = []
        for line, lam in enumerate(self.wavelengths):
            s = lam / 2 * np.sqrt(g2)
            ok = s < 0.999
            th = np.arcsin(np.minimum(s, 0.999))  # [R]
            centre = np.degrees(2 * th) + q["zero"] + q["disp"] * np.cos(th)
            dc_dg2 = np.degrees(lam / (2 * np.sqrt(g2) * np.cos(th)))  # [R] degrees per Å⁻²
            inside = ok & (centre > self.x[0] - 2.0) & (centre < self.x[-1] + 2.0)
            rows.append((line, np.flatnonzero(inside), centre, th, dc_dg2))
        # one sparse block of (reflection, line) profiles
        line_of, refl, centre, th, dc = (np.concatenate(a) for a in zip(*[
            (np.full(len(ix), ln), ix, c[ix], t[ix], d[ix]) for ln, ix, c, t, d in rows]))
        tt = np.degrees(2 * th)
        raw = [q["u"], q["v"], q["w"], q["lx"]]
        fw, eta = _widths(tt, *raw)  # [Q]
        # widths' derivatives per reflection, by central differences of the TCH formulas (cheap: one per row)
        dfw, deta = [], []
        for i, h in enumerate((1e-4, 1e-4, 1e-4, 1e-4)):
            a, b = list(raw), list(raw)
            a[i] += h
            b[i] -= h
            fa, ea = _widths(tt, *a)
            fb, eb = _widths(tt, *b)
            dfw.append((fa - fb) / (2 * h))
            deta.append((ea - eb) / (2 * h))
        half = np.clip(WINDOW_FWHM * fw, 0.4, WINDOW_MAX)
        start = np.searchsorted(self.x, centre - half)
        stop = np.searchsorted(self.x, centre + half)
        n = np.maximum(stop - start, 0)
        owner = np.repeat(np.arange(len(n)), n)  # [E] row of each entry
        idx = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(start, n)  # [E] point index
        gam = fw[owner]
        uu = (self.x[idx] - centre[owner]) / gam
        lor = (2 / np.pi) / gam / (1 + 4 * uu * uu)
        gau = _G0 / gam * np.exp(-4 * _LN2 * uu * uu)
        e = eta[owner]
        prof = e * lor + (1 - e) * gau  # [E]
        dprof_dc = (e * lor * 8 * uu / (1 + 4 * uu * uu) + (1 - e) * gau * 8 * _LN2 * uu) / gam
        dprof_dfw = (e * lor * (-1 + 8 * uu * uu / (1 + 4 * uu * uu)) + (1 - e) * gau * (-1 + 8 * _LN2 * uu * uu)) / gam
        dprof_deta = lor - gau
        m = len(self.x)
        a_row = area[refl]  # [Q]
        basis = np.stack([np.bincount(idx, weights=(prof * a_row[owner]) * (line_of[owner] == ln), minlength=m)
                          for ln in range(self.nl)], axis=1)  # [m, nl]
        scale_row = q["scale"][line_of]  # [Q]
        peaks = basis @ q["scale"]
        bg = self.cheb @ q["bg"]
        calc = peaks + bg
        cache = dict(q=q, idx=idx, owner=owner, refl=refl, line_of=line_of, a_row=a_row, scale_row=scale_row,
                     prof=prof, dprof_dc=dprof_dc, dprof_dfw=dprof_dfw, dprof_deta=dprof_deta, dfw=dfw, deta=deta,
                     th=th, dc=dc, g2=g2, dlnr=dlnr, basis=basis, bg=bg, peaks=peaks, calc=calc)
        self._at = (p.copy(), cache)
        return cache

    def residual(self, p):
        """[m + 2] the weighted residuals and two prior rows: the zero offset (σ :data:`ZERO_PRIOR`) and the
        displacement (σ :data:`DISPLACEMENT_PRIOR`), which otherwise trade off almost freely (cos θ varies little)."""
        c = self._evaluate(p)
        i = self.nl + self.nb
        return np.concatenate([(self.y - c["calc"]) / self.sigma, [p[i] / ZERO_PRIOR, p[i + 1] / DISPLACEMENT_PRIOR]])

    def jacobian(self, p):
        c = self._evaluate(p)
        m = len(self.x)
        idx, owner, refl = c["idx"], c["owner"], c["refl"]
        amp = (c["a_row"] * c["scale_row"])[owner]  # [E]
        q = c["q"]
        cols = [c["basis"] @ (q["scale"] / max(q["scale"][0], 1e-300)) if q["scale"][0] != 0 else c["basis"][:, 0]]
        if self.nl > 1:  # d calc / d √ratio, zero where the ratio is capped
            root = p[1]
            cols.append(c["basis"][:, 1] * p[0] * 2 * root * (root * root < KALPHA2_MAX))
        cols += [self.cheb[:, i] for i in range(self.nb)]
        dcen = amp * c["dprof_dc"]  # [E] d calc / d centre
        per_row = [np.ones(len(refl)), np.cos(c["th"])]  # zero, displacement
        mono_rel = self.mono[refl] * self.base  # [Q, 6]
        for j in range(self.k):
            per_row.append(c["dc"] * (mono_rel @ self.groups[:, j]) / 100.0)
        for v in per_row:
            cols.append(np.bincount(idx, weights=dcen * v[owner], minlength=m))
        for dfw, deta in zip(c["dfw"], c["deta"]):
            cols.append(np.bincount(idx, weights=amp * (c["dprof_dfw"] * dfw[owner] + c["dprof_deta"] * deta[owner]),
                                    minlength=m))
        if self.cos_dir is not None:
            cols.append(np.bincount(idx, weights=amp * c["prof"] * c["dlnr"][refl][owner], minlength=m))
        jac = np.zeros((m + 2, self.size()))
        jac[:m] = -np.stack(cols, axis=1) / self.sigma[:, None]
        i = self.nl + self.nb
        jac[m, i], jac[m + 1, i + 1] = 1.0 / ZERO_PRIOR, 1.0 / DISPLACEMENT_PRIOR
        jac[:, self.frozen] = 0.0
        return jac


def _merge(hkl, area, base, groups):
    """Reflections that coincide at every cell the groups allow, merged ([M] monomials, areas, first hkl)."""
    mono = metric_monomials(hkl)  # [R, 6]
    key = (mono * base) @ np.concatenate([groups, (groups.sum(axis=1) == 0)[:, None].astype(float)], axis=1)
    key = np.round(key / max(np.abs(key).max(), 1e-12), 9)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    return mono[first], np.bincount(inverse, weights=area), inverse


def _estimate_fwhm(x: np.ndarray, y: np.ndarray) -> float:
    """FWHM (degrees) of the scan's strongest peak above a low quantile, a starting value."""
    base = np.quantile(y, 0.2)
    i = int(np.argmax(y))
    top = y[i] - base
    lo, hi = i, i
    while lo > 0 and y[lo] - base > top / 2:
        lo -= 1
    while hi < len(y) - 1 and y[hi] - base > top / 2:
        hi += 1
    return float(np.clip(x[hi] - x[lo], 0.03, 1.0))


def prepare_scan(two_theta: np.ndarray, intensity: np.ndarray, wavelength: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(2θ [m], counts [m], σ [m]) of the points a fit reads: those whose d-spacings the candidates' reflections
    cover completely (:data:`MODEL_WINDOW` at the scan's wavelength), neighbours summed where the step is finer than
    :data:`FIT_STEP`, with σ² = g · max(y, a low quantile) and at least one count's worth (:func:`counting_gain`);
    None when fewer than 50 points are left."""
    x = np.asarray(two_theta, np.float64)
    y = np.asarray(intensity, np.float64)
    lo_cu, hi_cu, lam_cu = MODEL_WINDOW
    d_max, d_min = lam_cu / (2 * np.sin(np.radians(lo_cu / 2))), lam_cu / (2 * np.sin(np.radians(hi_cu / 2)))
    s_lo, s_hi = wavelength / (2 * d_max), wavelength / (2 * d_min)
    lo = np.degrees(2 * np.arcsin(min(s_lo, 1.0)))
    hi = np.degrees(2 * np.arcsin(min(s_hi, 1.0))) if s_hi < 1 else 180.0
    keep = (x >= lo) & (x <= hi) & np.isfinite(y)
    if keep.sum() < 50:
        return None
    x, y = x[keep], np.maximum(y[keep], 0.0)
    step = float(np.median(np.diff(x)))
    k = int(FIT_STEP // step) if step > 0 else 1
    if k > 1 and len(x) >= 50 * k:  # finer than a fit needs: sum k neighbours (still counts, the cost / k)
        n = len(x) // k * k
        x, y = x[:n].reshape(-1, k).mean(axis=1), y[:n].reshape(-1, k).sum(axis=1)
    gain = counting_gain(y)
    sigma = np.sqrt(gain * np.maximum(y, max(np.quantile(y, 0.05), 1e-12)))
    return x, y, np.maximum(sigma, np.sqrt(gain))


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
    from scipy.optimize import least_squares

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
    p = least_squares(model.residual, p, jac=model.jacobian, method="lm", x_scale=_scales(model, p),
                      max_nfev=max_evaluations // 5, xtol=1e-8, ftol=1e-4).x
    model.frozen[:] = False
    if _rwp_net(model, p) > HOPELESS:  # no answer either way: reported as it stands
        return _summary(model, p, base, np.asarray(reflections.metric, np.float64), 1.0, (),
                        time.perf_counter() - t0, keep_curves)
    fit = least_squares(model.residual, p, jac=model.jacobian, method="lm", x_scale=_scales(model, p),
                        max_nfev=max_evaluations, xtol=1e-8, ftol=1e-5)
    p, chi = fit.x, float(np.sum(fit.fun[:-2] ** 2))
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
    from scipy.optimize import least_squares

    q = model.unpack(p)
    metric = base * (1.0 + model.groups @ q["cell"] / 100.0)
    gmat = np.array([[metric[0], metric[3], metric[4]], [metric[3], metric[1], metric[5]],
                     [metric[4], metric[5], metric[2]]])
    g2 = np.maximum(metric_monomials(hkl) @ metric, 1e-12)
    dots = hkl @ gmat @ TEXTURE_DIRECTIONS.T  # [R, D]
    norms = np.sqrt(g2)[:, None] * np.sqrt(np.einsum("di,ij,dj->d", TEXTURE_DIRECTIONS, gmat, TEXTURE_DIRECTIONS))
    cos = dots / np.maximum(norms, 1e-12)  # [R, D] unmerged
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
    fit = least_squares(tmodel.residual, p2, jac=tmodel.jacobian, method="lm", x_scale=_scales(tmodel, p2),
                        max_nfev=max_evaluations // 2, xtol=1e-8, ftol=1e-5)
    chi2 = float(np.sum(fit.fun[:-2] ** 2))
    if chi < TEXTURE_GAIN * chi2:
        return p, chi, 1.0, (), model
    tmodel.evaluations += model.evaluations
    return fit.x, chi2, float(np.exp(tmodel.unpack(fit.x)["lnr"])), tuple(int(v) for v in TEXTURE_DIRECTIONS[d]), tmodel


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
