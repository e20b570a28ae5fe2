"""The model a whole-pattern fit refines (:mod:`eacnn.retrieval.scanfit` fits one candidate with it,
:mod:`eacnn.retrieval.scanmix` several together): which points of a scan are fitted and with what counting errors
(:func:`prepare_scan`, :func:`counting_gain`), which cell parameters a candidate's symmetry allows
(:func:`cell_groups`), and the calculated scan with its analytic Jacobian (:class:`_Model`: every reflection at Kα1
and Kα2 as a Thompson–Cox–Hastings pseudo-Voigt, a zero offset and displacement, a March–Dollase factor, a
Chebyshev background).
"""

from __future__ import annotations

import numpy as np

from eacnn.physics.measurement import march_dollase, tch_pseudo_voigt
from eacnn.physics.xrd import metric_monomials

__all__ = ["cell_groups", "counting_gain", "prepare_scan", "BACKGROUND_TERMS", "WINDOW_FWHM", "WINDOW_MAX", "FIT_STEP",
           "MODEL_WINDOW", "ZERO_PRIOR", "DISPLACEMENT_PRIOR", "KALPHA2_MAX", "METRIC_TOL"]

#: terms of the Chebyshev background (over the fitted range)
BACKGROUND_TERMS = 8
#: each reflection's profile is evaluated within ± this many FWHM of its centre (±0.4° at least, ±WINDOW_MAX at most)
WINDOW_FWHM = 10.0
WINDOW_MAX = 2.0  # degrees
#: degrees 2θ: scans with a finer step are fitted with neighbouring points summed to about this step (peaks of
#: lab scans are 0.05–0.3° wide, so 4+ points a FWHM remain; the fit's cost is linear in the points)
FIT_STEP = 0.02
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
