"""From a measured pattern to the model's input: the same 140 bin integrals the simulator makes.

:func:`to_model_grid` runs, in order (each stage is kept in ``GridResult.steps`` for plotting):

1. ``stripped``: optional Kα2 stripping (Rachinger), in the measured 2θ.
2. ``mapped``: each point's d = λ / (2 sin θ) is moved to the model's wavelength (Cu Kα1), 2θ' = 2 asin(λ' / 2d).
   Points whose d is shorter than λ'/2 cannot diffract at λ' and are dropped (counted in ``n_dropped``). The
   intensity is multiplied by dθ/dθ' so that every peak keeps its area, and (``lp_correction``) by the ratio of the
   simulator's Lorentz-polarisation factor at the two angles, so peak areas compare with simulated ones.
3. ``background``: SNIP (:func:`snip_background`), subtracted to give ``corrected``.
4. ``smoothed``: optional Savitzky–Golay (``scipy.signal.savgol_filter``).
5. ``vector``: the integral of the (trapezoid-interpolated, negative parts clipped to 0) pattern over each bin of
   ``XRDConfig`` — bin integrals, as :mod:`eacnn.physics.xrd` makes them, never point samples — then max-normalised.

Bins the scan does not reach are **not** silently zero: they are 0 in ``vector`` and False in ``covered``;
``coverage`` is their complement's fraction, logged when below ``warn_coverage`` and an error below
``min_coverage``. A bin counts as covered when the scan spans at least ``min_bin_fraction`` of it (its integral is
then scaled up to the full width, i.e. the mean intensity over the covered part times the bin width); a gap between
two points wider than ``max_gap`` is not covered.

The SNIP defaults (4th-order filter, 1° window, log-log-sqrt) were chosen on simulated patterns with an added
exponential + linear background or an amorphous hump, at 0.15° and 0.5° FWHM: the 4th-order filter with a 1–2°
window recovers the clean vector (correlation >= 0.99) in all of them, while the classic 2nd-order filter erodes a
hump at any window above ~0.5°. A 1° window also scored best or near-best against the reference phases of the five
measured patterns (``eacnn/data/measured``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eacnn.config import XRDConfig
from eacnn.errors import ConfigError, PatternError
from eacnn.physics.wavelengths import CU
from eacnn.measured.io import KALPHA1_MATCH, MeasuredPattern, kalpha2_of, read_pattern, scan_of

log = logging.getLogger(__name__)

__all__ = ["PreprocessConfig", "GridResult", "to_model_grid", "snip_background", "strip_kalpha2", "map_wavelength",
           "bin_integrals"]

DEFAULT_KALPHA2_RATIO = 0.5  # I(Kα2) / I(Kα1) when the file gives none (Cu: 0.497; 2:1 by level populations)


@dataclass(frozen=True)
class PreprocessConfig:
    """How a measured pattern becomes the model input (:func:`to_model_grid`); override fields by keyword there."""

    strip_kalpha2: bool = False  # Rachinger Kα2 stripping; off: many scans are Kα1-only (monochromator) already
    kalpha2_ratio: float | None = None  # I(Kα2)/I(Kα1); None: the file's ratio (.xrdml), else 0.5
    kalpha2: float | None = None  # Å; None: the file's Kα2, else the tabulated Kα2 of the anode whose Kα1 matches
    background: bool = True  # subtract a SNIP background
    snip_window: float = 1.0  # degrees 2θ (at the model's λ); largest clipping half-width: about the base
    # half-width of a broad (0.5° FWHM) peak, well below the width of an amorphous hump (~10°)
    snip_lls: bool = True  # clip log(log(sqrt(I + 1) + 1) + 1), which follows the background under strong peaks
    snip_order: int = 4  # SNIP filter: 4 follows a concave background (amorphous hump), 2 is the classic one
    smooth: bool = False  # Savitzky–Golay smoothing after background removal (the 0.5° bins already average)
    smooth_window: float = 0.2  # degrees 2θ; Savitzky–Golay window (shorter than a peak, ~1.3 x the paper's FWHM)
    smooth_order: int = 3  # Savitzky–Golay polynomial order
    lp_correction: bool = True  # rescale Lorentz-polarisation from measured to model angles (no-op at Cu Kα1)
    min_bin_fraction: float = 0.5  # a bin is covered when the scan spans at least this fraction of its width
    max_gap: float | None = None  # degrees; wider gaps between neighbouring points are uncovered; None: bin width
    warn_coverage: float = 0.9  # log a warning when fewer bins than this fraction are covered
    min_coverage: float = 0.3  # raise PatternError when fewer bins than this fraction are covered

    def __post_init__(self) -> None:
        if self.kalpha2_ratio is not None and not 0 <= self.kalpha2_ratio < 1:
            raise ConfigError(f"kalpha2_ratio={self.kalpha2_ratio!r} must lie in [0, 1)")
        if self.snip_order not in (2, 4):
            raise ConfigError(f"snip_order must be 2 or 4, got {self.snip_order!r}")
        if self.snip_window <= 0 or self.smooth_window <= 0 or self.smooth_order < 0:
            raise ConfigError(
                f"need snip_window > 0, smooth_window > 0, smooth_order >= 0; got {self.snip_window!r}, "
                f"{self.smooth_window!r}, {self.smooth_order!r}"
            )
        if not 0 < self.min_bin_fraction <= 1 or not 0 <= self.min_coverage <= self.warn_coverage <= 1:
            raise ConfigError(
                f"need 0 < min_bin_fraction <= 1 and 0 <= min_coverage <= warn_coverage <= 1; got "
                f"{self.min_bin_fraction!r}, {self.min_coverage!r}, {self.warn_coverage!r}"
            )
        if self.max_gap is not None and self.max_gap <= 0:
            raise ConfigError(f"max_gap={self.max_gap!r} must be > 0 degrees (or None for the bin width)")


@dataclass(frozen=True, eq=False)
class GridResult:
    """A measured pattern on the model's grid, with what was done to it and which bins it covers."""

    vector: np.ndarray  # [n_bins] float32, max 1; 0 in uncovered bins
    covered: np.ndarray  # [n_bins] bool, the bins the scan reaches
    coverage: float  # fraction of bins covered
    two_theta: np.ndarray  # [m] degrees 2θ at the model's wavelength of the points kept
    background: np.ndarray  # [m] what was subtracted (zeros when background removal is off)
    wavelength: float  # Å, the wavelength the scan was measured with
    steps: dict = field(default_factory=dict, repr=False)  # stage -> array: "two_theta_raw" [n], "raw" [n],
    # "stripped" [n] (measured 2θ); "two_theta" [m], "mapped", "background", "corrected", "smoothed" [m] (model 2θ)
    n_dropped: int = 0  # points whose d-spacing the model's wavelength cannot reach (d < λ / 2)
    source: str = ""  # the file
    metadata: dict = field(default_factory=dict, repr=False)  # the file's (Kα1/Kα2/ratio where it gives them)

    def as_scan(self):
        """The scan as read, before any preprocessing, for the whole-pattern fit (:func:`eacnn.measured.io.scan_of`:
        its own 2θ and wavelength, the file's or the anode's Kα2)."""
        return scan_of(self.steps["two_theta_raw"], self.steps["raw"], self.wavelength, self.metadata)

    def uncovered_ranges(self, config: XRDConfig | None = None) -> list[tuple[float, float]]:
        """Runs of uncovered bins as (low, high) edges, degrees 2θ (``config``: the grid used; default the paper's)."""
        edges = (config or XRDConfig()).bin_edges()
        flags = np.concatenate([[False], ~self.covered, [False]]).astype(np.int8)
        starts, stops = np.flatnonzero(np.diff(flags) == 1), np.flatnonzero(np.diff(flags) == -1)
        return [(float(edges[a]), float(edges[b])) for a, b in zip(starts, stops)]


# ---------------------------------------------------------------------------------------------------------------
# Steps (each usable on its own)
# ---------------------------------------------------------------------------------------------------------------
def strip_kalpha2(two_theta: np.ndarray, intensity: np.ndarray, kalpha1: float, kalpha2: float,
                  ratio: float = DEFAULT_KALPHA2_RATIO) -> np.ndarray:
    """Remove the Kα2 copy of every peak (Rachinger, 1948), shape [n] like ``intensity``.

    The Kα2 intensity at 2θ is ``ratio`` times the Kα1 intensity at 2θ₁, where sin θ₁ = (λ₁/λ₂) sin θ (the Kα1
    angle of the same d). Going up in angle, I₁(2θ) = I(2θ) - ratio · I₁(2θ₁), I₁ linearly interpolated between
    already-stripped points (solved in closed form when 2θ₁ falls between a point and its left neighbour).

    Args:
        two_theta: degrees, strictly ascending, [n]. intensity: [n]. kalpha1, kalpha2: Å. ratio: I(Kα2)/I(Kα1).
    """
    x = np.asarray(two_theta, dtype=np.float64)
    y = np.asarray(intensity, dtype=np.float64)
    source = 2.0 * np.degrees(np.arcsin(np.sin(np.radians(x) / 2.0) * (kalpha1 / kalpha2)))  # [n] 2θ₁
    left = np.searchsorted(x, source, side="right") - 1  # [n] x[left] <= 2θ₁ < x[left + 1]
    ok = left >= 0  # 2θ₁ below the scan: nothing to strip there
    j = np.where(ok, left, 0)
    w = np.where(ok, (source - x[j]) / (x[np.minimum(j + 1, len(x) - 1)] - x[j] + 1e-300), 0.0)
    values = y.tolist()  # a Python loop over floats: each point needs the stripped points before it
    for i, (has, a, b) in enumerate(zip(ok.tolist(), j.tolist(), w.tolist())):
        if not has:
            continue
        if a + 1 >= i:  # 2θ₁ between x[i-1] and x[i]: I₁ᵢ = yᵢ - r((1 - w) I₁ᵢ₋₁ + w I₁ᵢ)
            values[i] = (values[i] - ratio * (1.0 - b) * values[a]) / (1.0 + ratio * b)
        else:
            values[i] -= ratio * ((1.0 - b) * values[a] + b * values[a + 1])
    return np.array(values)


def map_wavelength(two_theta: np.ndarray, intensity: np.ndarray, wavelength: float, target: float = CU.kalpha1,
                   lp_correction: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move a scan from ``wavelength`` to ``target`` (Å) through d-spacings, keeping every peak's area.

    Returns:
        2θ at ``target`` [m] (degrees), intensity [m], and the mask [n] of input points kept (those with
        d >= target / 2).
    """
    x = np.asarray(two_theta, dtype=np.float64)
    y = np.asarray(intensity, dtype=np.float64)
    if wavelength == target:
        return x.copy(), y.copy(), np.ones(len(x), dtype=bool)
    theta = np.radians(x) / 2.0
    sin_t = np.sin(theta) * (target / wavelength)  # sin θ' = λ' / 2d
    keep = sin_t < 1.0
    theta, sin_t = theta[keep], sin_t[keep]
    theta_t = np.arcsin(sin_t)
    # area: I'(θ') = I(θ) dθ/dθ', and cos θ' dθ' = (λ'/λ) cos θ dθ
    y_t = y[keep] * np.cos(theta_t) / ((target / wavelength) * np.cos(theta))
    if lp_correction:
        y_t *= _lorentz_polarisation(theta_t) / _lorentz_polarisation(theta)
    return 2.0 * np.degrees(theta_t), y_t, keep


def _lorentz_polarisation(theta: np.ndarray) -> np.ndarray:
    """(1 + cos² 2θ) / (sin² θ cos θ), the simulator's factor (θ in radians)."""
    return (1.0 + np.cos(2.0 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))


MAX_SNIP_ITER = 200  # SNIP clips at most this many half-widths; finer scans are clipped on a block-averaged copy


def snip_background(two_theta: np.ndarray, intensity: np.ndarray, window: float = 1.0, lls: bool = True,
                    order: int = 4) -> np.ndarray:
    """Background under the peaks by SNIP clipping (Ryan et al., 1988; Morháč & Matoušek, 2008), shape [n].

    For half-widths p = 1 .. P points, each point becomes min(itself, estimate), the estimate being the mean of
    the points p to its left and right (``order`` 2) or, for ``order`` 4, the larger of that and the cubic-exact
    (-v[i-2q] + 4 v[i-q] + 4 v[i+q] - v[i+2q]) / 6 with q = p // 2. Peaks narrower than the window are shaved off while a smooth
    background survives; order 2 also erodes a concave background (an amorphous hump) a little at every p, order
    4 follows it. Near the ends the half-width shrinks to what is there. With ``lls`` the clipping runs on
    v = log(log(sqrt(I + 1) + 1) + 1) of the pattern scaled to a maximum of 10⁴ (so the result does not depend on
    the intensity unit). The result never exceeds the pattern.

    Args:
        two_theta: degrees, ascending [n]; its median step turns ``window`` into P points.
        intensity: [n].
        window: largest half-width, degrees 2θ.
        lls: clip the log-log-sqrt transform (True) or the intensities themselves.
        order: 2 or 4, the clipping filter.
    """
    if order not in (2, 4):
        raise ConfigError(f"SNIP order must be 2 or 4, got {order!r}")
    x = np.asarray(two_theta, dtype=np.float64)
    y = np.asarray(intensity, dtype=np.float64)
    n = len(y)
    n_iter = max(1, int(round(window / float(np.median(np.diff(x))))))
    if n_iter > MAX_SNIP_ITER and n > 4 * MAX_SNIP_ITER:
        # a very fine scan (a synchrotron's 10⁶ points): the work grows as points × iterations, so clip a copy
        # averaged over blocks of k points (the background is smooth over the window, and block means keep its
        # level) with at most MAX_SNIP_ITER iterations, and interpolate back: linear in the number of points
        k = -(-n_iter // MAX_SNIP_ITER)
        m = n // k
        xc = x[: m * k].reshape(m, k).mean(axis=1)  # [m]
        yc = y[: m * k].reshape(m, k).mean(axis=1)
        coarse = snip_background(xc, yc, window, lls, order)
        return np.minimum(np.interp(x, xc, coarse), y)
    offset = min(float(y.min()), 0.0)  # the transform needs I >= 0
    scale = 1e4 / max(float(y.max()) - offset, 1e-300)
    v = (y - offset) * scale
    if lls:
        v = np.log(np.log(np.sqrt(v + 1.0) + 1.0) + 1.0)
    for p in range(1, min(n_iter, n // 2) + 1):
        np.minimum(v, _snip_estimate(v, p, order), out=v)
    if lls:
        v = (np.exp(np.exp(v) - 1.0) - 1.0) ** 2 - 1.0
    return np.minimum(v / scale + offset, y)  # the inverse transform is exact only to rounding


def _snip_estimate(v: np.ndarray, p: int, order: int) -> np.ndarray:
    """SNIP's estimate [n] at half-width ``p`` (points): slices in the interior, where the whole window fits; near
    the ends the half-width shrinks to what is there (gathers over the 2p end points only)."""
    n = len(v)
    est = np.empty(n)
    est[p : n - p] = 0.5 * (v[: n - 2 * p] + v[2 * p :])
    if order == 4:
        q = p // 2
        cubic = (4.0 * (v[p - q : n - p - q] + v[p + q : n - p + q]) - v[p - 2 * q : n - p - 2 * q]
                 - v[p + 2 * q : n - p + 2 * q]) / 6.0
        np.maximum(est[p : n - p], cubic, out=est[p : n - p])
    ends = np.concatenate([np.arange(p), np.arange(n - p, n)])  # [2p]
    half = np.minimum(np.minimum(ends, n - 1 - ends), p)
    e = 0.5 * (v[ends - half] + v[ends + half])
    if order == 4:
        q = half // 2
        np.maximum(e, (4.0 * (v[ends - q] + v[ends + q]) - v[ends - 2 * q] - v[ends + 2 * q]) / 6.0, out=e)
    est[ends] = e
    return est


def bin_integrals(two_theta: np.ndarray, intensity: np.ndarray, edges: np.ndarray,
                  max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Integral of the linearly interpolated pattern over each bin, and the covered fraction of each bin.

    Trapezoids between neighbouring points, cut at the bin edges (the pattern interpolated there); the intervals
    between points farther apart than ``max_gap`` degrees count neither in the integral nor in the coverage.

    Returns:
        areas [n_bins] (intensity x degrees), fractions [n_bins] in [0, 1].
    """
    x = np.asarray(two_theta, dtype=np.float64)
    y = np.asarray(intensity, dtype=np.float64)
    h = np.diff(x)  # [n - 1]
    good = (h <= max_gap).astype(np.float64)  # [n - 1]
    area = np.concatenate([[0.0], np.cumsum(0.5 * (y[:-1] + y[1:]) * h * good)])  # [n] running integral
    span = np.concatenate([[0.0], np.cumsum(h * good)])  # [n] running covered length
    e = np.clip(edges, x[0], x[-1])  # [n_bins + 1]
    j = np.clip(np.searchsorted(x, e, side="right") - 1, 0, len(x) - 2)  # interval of each edge
    t = e - x[j]
    y_e = y[j] + (y[j + 1] - y[j]) * t / h[j]  # pattern at the edges
    area_e = area[j] + good[j] * 0.5 * (y[j] + y_e) * t
    span_e = span[j] + good[j] * t
    return np.diff(area_e), np.diff(span_e) / np.diff(edges)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------
def to_model_grid(pattern: MeasuredPattern | str | Path, config: XRDConfig | None = None,
                  options: PreprocessConfig | None = None, **overrides) -> GridResult:
    """A measured pattern as the model's input: 2θ mapped to ``config.wavelength``, background removed, binned.

    Args:
        pattern: a :class:`MeasuredPattern`, or a file path (read with :func:`eacnn.measured.io.read_pattern`).
        config: the model's grid and wavelength; the paper's (Cu Kα1, 10–80°, 0.5°) when None.
        options: the preprocessing; ``PreprocessConfig()`` when None.
        **overrides: fields of :class:`PreprocessConfig`, e.g. ``background=False``, ``strip_kalpha2=True``.

    Raises:
        PatternError: no point reachable at the model wavelength, coverage below ``min_coverage``, nothing left in
            the window, or no Kα2 wavelength known for stripping; the message names the file.
        ConfigError: an unknown override.
    """
    cfg = config or XRDConfig()
    opts = options or PreprocessConfig()
    if overrides:
        names = {f.name for f in dataclasses.fields(PreprocessConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"to_model_grid got unknown options {unknown}; PreprocessConfig fields: {sorted(names)}")
        opts = dataclasses.replace(opts, **overrides)
    if not isinstance(pattern, MeasuredPattern):
        pattern = read_pattern(pattern)
    src = pattern.source
    x_raw, y_raw = np.array(pattern.two_theta), np.array(pattern.intensity)  # [n]

    stripped = y_raw
    if opts.strip_kalpha2:
        # the file's Kα2 and ratio describe the file's Kα1: ignored when the scan was read at another wavelength
        meta = pattern.metadata
        own = meta.get("kalpha1") is not None and abs(meta["kalpha1"] - pattern.wavelength) <= KALPHA1_MATCH
        ka2 = opts.kalpha2 or (own and meta.get("kalpha2")) or kalpha2_of(pattern.wavelength)
        if not ka2:
            raise PatternError(f"{src}: no Kα2 wavelength known for Kα1 = {pattern.wavelength} Å; pass kalpha2=<Å>")
        ratio = opts.kalpha2_ratio
        if ratio is None:
            ratio = meta.get("kalpha2_ratio", DEFAULT_KALPHA2_RATIO) if own else DEFAULT_KALPHA2_RATIO
        stripped = strip_kalpha2(x_raw, y_raw, pattern.wavelength, ka2, ratio)

    x, mapped, keep = map_wavelength(x_raw, stripped, pattern.wavelength, cfg.wavelength, opts.lp_correction)
    n_dropped = int(len(keep) - keep.sum())
    if n_dropped:
        log.info("%s: %d points with d < %.4f Å cannot diffract at %.4f Å and were dropped",
                 src, n_dropped, cfg.wavelength / 2, cfg.wavelength)
    if len(x) < 2:
        raise PatternError(
            f"{src}: no measured d-spacing is reachable at λ = {cfg.wavelength} Å (scan {x_raw[0]:.3f}–"
            f"{x_raw[-1]:.3f}° at λ = {pattern.wavelength} Å); is the wavelength right?"
        )

    if opts.background:
        background = snip_background(x, mapped, opts.snip_window, opts.snip_lls, opts.snip_order)
    else:
        background = np.zeros_like(x)
    corrected = mapped - background
    smoothed = _smooth(x, corrected, opts.smooth_window, opts.smooth_order) if opts.smooth else corrected

    edges = cfg.bin_edges()  # [n_bins + 1]
    areas, fractions = bin_integrals(x, np.clip(smoothed, 0.0, None), edges, opts.max_gap or cfg.step)
    covered = fractions >= opts.min_bin_fraction - 1e-9  # [n_bins]
    vector = np.where(covered, areas / np.where(covered, fractions, 1.0), 0.0)
    coverage = float(covered.mean())
    scan = f"scan {x[0]:.2f}–{x[-1]:.2f}° 2θ at λ = {cfg.wavelength} Å"
    if coverage < opts.min_coverage:
        gap = opts.max_gap or cfg.step
        step = float(np.median(np.diff(x)))
        if step > gap:  # the points are farther apart than a bin: no bin can count as measured
            raise PatternError(
                f"{src}: the scan is too sparse for the model's {cfg.step}° bins: {len(x_raw)} points, median step "
                f"{step:.3g}° 2θ (at λ = {cfg.wavelength} Å), so it covers {coverage:.0%} of "
                f"{cfg.two_theta_min}–{cfg.two_theta_max}°; a step of at most {gap:g}° is needed (a peak list is "
                f"not a powder pattern)"
            )
        raise PatternError(
            f"{src}: the {scan} covers {coverage:.0%} of the model window {cfg.two_theta_min}–{cfg.two_theta_max}° "
            f"(minimum {opts.min_coverage:.0%})"
        )
    if coverage < opts.warn_coverage:
        log.warning("%s: the %s covers only %.0f%% of %s–%s°; uncovered bins are 0 and flagged",
                    src, scan, 100 * coverage, cfg.two_theta_min, cfg.two_theta_max)
    top = vector.max()
    if not top > 0:
        raise PatternError(f"{src}: no intensity left in {cfg.two_theta_min}–{cfg.two_theta_max}° after "
                           f"preprocessing (background={opts.background}); nothing to normalise")
    steps = {"two_theta_raw": x_raw, "raw": y_raw, "stripped": stripped, "two_theta": x, "mapped": mapped,
             "background": background, "corrected": corrected, "smoothed": smoothed}
    return GridResult((vector / top).astype(np.float32), covered, coverage, x, background, pattern.wavelength,
                      steps, n_dropped, src, dict(pattern.metadata))


def _smooth(x: np.ndarray, y: np.ndarray, window: float, order: int) -> np.ndarray:
    """Savitzky–Golay with a window of ``window`` degrees (odd point count, at least order + 2)."""
    from scipy.signal import savgol_filter

    points = int(round(window / float(np.median(np.diff(x)))))
    points = max(points + (points + 1) % 2, order + 2 + (order + 1) % 2)  # odd, > order
    if points > len(y):
        return y.copy()
    return savgol_filter(y, points, order, mode="interp")
