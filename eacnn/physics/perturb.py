"""Perturbations of a simulated pattern: the training augmentation of the first models (levels 0–3).

It acts on the sticks (2θ, area) of each structure before the one pseudo-Voigt of :mod:`eacnn.physics.profile` is
integrated over the 0.5° bins again; it draws per pattern from a numpy ``Generator`` (a seed fixes the output) and
run vectorised over all peaks of a batch.

:func:`augment_patterns` (the augmentation training uses today, :class:`eacnn.config.AugmentConfig`):

* lattice strain ε: every d-spacing becomes d (1 + ε), so by Bragg's law sin θ' = sin θ / (1 + ε); expansion
  (ε > 0) moves every peak to lower 2θ, more so at high angle;
* zero offset δ (sample displacement, goniometer zero): 2θ' = 2θ + δ;
* crystallite size L (Scherrer): extra width β = K λ / (L cos θ) (radians 2θ), combined with the instrumental
  FWHM in quadrature, so peaks broaden towards high angle;
* texture / intensity errors: each peak area times a log-normal factor exp(σ N(0, 1));
* a smooth background (a decaying exponential and a low-order polynomial, never negative);
* counting noise: Poisson-like sqrt(I / counts) and additive Gaussian noise;
* then clipped at zero and max-normalised like the clean input.

The model of real measurements (lattice mismatch, texture, Kα2, coverage, ...) is :mod:`eacnn.physics.measurement`.

>>> from eacnn.config import AugmentConfig
>>> import numpy as np
>>> aug = augment_patterns([(np.array([30.0, 45.0]), np.array([1.0, 0.5]))], AugmentConfig.level(0))
>>> aug.shape, float(aug.max())
((1, 140), 1.0)
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from eacnn.config import AugmentConfig, XRDConfig
from eacnn.physics.profile import bin_kernel, bin_peaks, deposit_matrix
from eacnn.physics.wavelengths import CU

__all__ = ["augment_patterns", "profile_patterns", "bragg_shift", "binned_variants", "variant_kernel", "VARIANT_GRID"]



def bragg_shift(
    two_theta: np.ndarray, strain: float | np.ndarray, zero_shift: float | np.ndarray, wavelength: float
) -> np.ndarray:
    """Peak positions (degrees 2θ) after scaling every d-spacing by 1 + ``strain`` and adding ``zero_shift`` (°).

    ``wavelength`` (Å) only enters through d = λ / (2 sin θ); it cancels in sin θ' = sin θ / (1 + ε), kept in the
    signature to make the physics explicit.
    """
    theta = np.radians(np.asarray(two_theta, dtype=np.float64) / 2.0)
    d = wavelength / (2.0 * np.sin(theta))  # Å
    sin_new = np.clip(wavelength / (2.0 * d * (1.0 + np.asarray(strain))), 0.0, 1.0)
    return np.degrees(2.0 * np.arcsin(sin_new)) + zero_shift


#: degrees 2θ: the fine grid variants' reflections are split onto before the bin integrals (refinement, mixtures)
VARIANT_GRID = 0.02


@lru_cache(maxsize=32)
def variant_kernel(xrd: XRDConfig, width: float, dtype=np.float32) -> tuple[float, np.ndarray]:
    """(origin in degrees, [n_fine, n_bins] bin integrals of a unit pseudo-Voigt of FWHM ``width`` at each point of
    the :data:`VARIANT_GRID`, as ``dtype``), cached by grid, width and type (a float64 product would otherwise
    convert the float32 kernel, ~0.5 M entries, on every call: twice the cost of the product)."""
    if np.dtype(dtype) != np.float32:
        lo, kernel = variant_kernel(xrd, width)
        return lo, kernel.astype(dtype)
    return bin_kernel(xrd.two_theta_min, xrd.two_theta_max, xrd.step, width, xrd.eta, VARIANT_GRID,
                      max(1.0, 10 * width))


def binned_variants(two_theta: np.ndarray, area: np.ndarray, strains: np.ndarray, shifts: np.ndarray, width: float,
                    xrd: XRDConfig, kalpha2: float = 0.0, dtype=np.float32) -> np.ndarray:
    """Binned patterns [V, n_bins] (not normalised) of one phase's reflections (2θ [p] degrees, areas [p]) under
    each (lattice strain Δd/d, zero shift in degrees) pair [V], peaks of FWHM ``width`` (degrees): the one profile
    of every variant the refinement and the mixture fit try, through a sparse deposit matrix (two entries per
    reflection and variant), so a grid of hundreds of variants costs milliseconds.

    ``kalpha2``: area ratio of a Cu Kα2 copy of every reflection (its d-spacings read at λ(Kα2), i.e. a strain of
    (1 + ε) λ₁/λ₂ − 1, then the same zero shift).
    """
    lo, kernel = variant_kernel(xrd, float(width), np.dtype(dtype).type)  # [n_fine, n_bins]
    strains, shifts = np.asarray(strains, np.float64).reshape(-1, 1), np.asarray(shifts, np.float64).reshape(-1, 1)
    two_theta, area = np.asarray(two_theta, np.float64), np.asarray(area)
    pos = bragg_shift(two_theta[None, :], strains, shifts, xrd.wavelength)  # [V, p]
    if kalpha2 > 0:
        second = bragg_shift(two_theta[None, :], (1 + strains) * xrd.wavelength / CU.kalpha2 - 1, shifts,
                             xrd.wavelength)
        pos, area = np.concatenate([pos, second], axis=1), np.concatenate([area, kalpha2 * area])  # [V, 2p], [2p]
    dep = deposit_matrix(pos, area, lo, VARIANT_GRID, kernel.shape[0], dtype=dtype)  # [V, n_fine]
    return np.asarray(dep @ kernel, dtype=dtype)


def profile_patterns(
    sticks: Sequence[tuple[np.ndarray, np.ndarray]],
    fwhm: Sequence[np.ndarray | float] | None = None,
    xrd: XRDConfig | None = None,
) -> np.ndarray:
    """Exact pseudo-Voigt bin integrals of many stick patterns, [B, n_bins] float32, not normalised.

    The batched float32 equivalent of :func:`eacnn.physics.profile.bin_profile` with per-peak widths.

    Args:
        sticks: B pairs (2θ [p] in degrees, area [p]).
        fwhm: B per-peak FWHM arrays [p] or scalars (degrees 2θ); ``xrd.fwhm`` when None.
        xrd: grid and profile shape (η); the paper's settings when None.
    """
    cfg = xrd or XRDConfig()
    pos, area, owner = _concat(sticks)
    if fwhm is None:
        width = np.full(len(pos), cfg.fwhm)
    else:
        counts = np.bincount(owner, minlength=len(sticks))
        width = np.concatenate([np.broadcast_to(np.asarray(w, dtype=np.float64), (c,)) for w, c in zip(fwhm, counts)])
    return bin_peaks(pos, area, width, owner, len(sticks), cfg)


def _concat(sticks: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All peaks of a batch in one list: 2θ [P], area [P], pattern of each peak [P]."""
    counts = [len(tt) for tt, _ in sticks]
    if not sticks:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    pos = np.concatenate([np.asarray(tt, dtype=np.float64) for tt, _ in sticks])
    area = np.concatenate([np.asarray(a, dtype=np.float64) for _, a in sticks])
    return pos, area, np.repeat(np.arange(len(sticks)), counts)


def _max_normalise(y: np.ndarray) -> np.ndarray:
    peak = y.max(axis=1, keepdims=True)
    return y / np.where(peak > 0, peak, 1.0)


def augment_patterns(
    sticks: Sequence[tuple[np.ndarray, np.ndarray]],
    config: AugmentConfig | None = None,
    rng: np.random.Generator | int | None = None,
    xrd: XRDConfig | None = None,
    return_params: bool = False,
):
    """Augmented model inputs of B stick patterns, [B, n_bins] float32, each max-normalised.

    Args:
        sticks: B pairs (2θ [p] in degrees, area [p]) as from :meth:`eacnn.physics.xrd.XRDSimulator.sticks`.
        config: the corruptions. ``AugmentConfig.level(0)`` reproduces the clean vector to ~3e-4 of the strongest
            bin (the clean vectors come from eacnn.physics.xrd's fine-grid kernel; this is the exact integral).
        rng: a numpy ``Generator`` or a seed.
        xrd: the grid, wavelength and instrumental profile; the paper's settings when None.
        return_params: also return the drawn per-pattern parameters
            (dict of [B] arrays: ``strain``, ``zero_shift`` in degrees, ``size_nm``).
    """
    cfg = config or AugmentConfig()
    xcfg = xrd or XRDConfig()
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n = len(sticks)
    strain = rng.uniform(-cfg.strain, cfg.strain, n) if cfg.strain else np.zeros(n)
    shift = rng.uniform(-cfg.zero_shift, cfg.zero_shift, n) if cfg.zero_shift else np.zeros(n)
    if cfg.size_broadening:
        size_nm = np.exp(rng.uniform(math.log(cfg.size_min_nm), math.log(cfg.size_max_nm), n))
    else:
        size_nm = np.full(n, np.inf)

    pos, area, owner = _concat(sticks)  # [P], [P], [P]
    if cfg.strain or cfg.zero_shift:
        pos = bragg_shift(pos, strain[owner], shift[owner], xcfg.wavelength)
    if cfg.intensity_jitter:
        area = area * np.exp(cfg.intensity_jitter * rng.standard_normal(len(area)))
    if cfg.size_broadening:
        beta = np.degrees(cfg.scherrer_k * xcfg.wavelength / (size_nm[owner] * 10.0 * np.cos(np.radians(pos / 2.0))))
        width = np.sqrt(xcfg.fwhm**2 + beta**2)  # degrees 2θ
    else:
        width = np.full(len(pos), xcfg.fwhm)
    y = _max_normalise(bin_peaks(pos, area, width, owner, n, xcfg).astype(np.float64))  # [B, n_bins]

    if cfg.background:
        x = (xcfg.bin_centers() - xcfg.two_theta_min) / (xcfg.two_theta_max - xcfg.two_theta_min)  # [n_bins] 0..1
        height = rng.uniform(0.0, cfg.background, (n, 1))
        decay = np.exp(-x[None, :] / rng.uniform(0.1, 0.5, (n, 1)))  # air scatter / fluorescence at low angle
        u = 2.0 * x[None, :] - 1.0
        poly = 1.0 + rng.uniform(-0.5, 0.5, (n, 1)) * u + rng.uniform(-0.5, 0.5, (n, 1)) * u * u  # in [0, 2]
        mix = rng.uniform(0.0, 1.0, (n, 1))
        shape = mix * decay + (1.0 - mix) * poly / 2.0
        y = y + height * shape / shape.max(axis=1, keepdims=True)
    if cfg.counts:
        y = y + np.sqrt(np.clip(y, 0.0, None) / cfg.counts) * rng.standard_normal(y.shape)
    if cfg.noise:
        y = y + cfg.noise * rng.standard_normal(y.shape)
    out = _max_normalise(np.clip(y, 0.0, None)).astype(np.float32)
    if return_params:
        return out, {"strain": strain, "zero_shift": shift, "size_nm": size_nm}
    return out
