"""The one peak profile: a pseudo-Voigt of unit area, integrated exactly over the 0.5° bins.

A peak at 2θ₀ with full width at half maximum ``w`` (degrees) and Lorentzian fraction η is

    P(x) = η L(x; w) + (1 − η) G(x; w),   x = 2θ − 2θ₀,

with G a Gaussian and L a Lorentzian of the same FWHM. Each bin of the model input holds the integral of P over the
bin, the difference of the cumulative distribution

    C(x) = η (½ + arctan(2x / w) / π) + (1 − η) ½ (1 + erf(x / (σ √2))),   σ = w / (2 √(2 ln 2)),

at the bin's two edges. :func:`pv_cdf` is that formula, written once; the simulator (:mod:`eacnn.physics.xrd`,
through :func:`bin_kernel`) and the perturbations (:mod:`eacnn.physics.perturb`, through :func:`bin_peaks`) both
call it, and :func:`bin_profile` is the plain reference the fast paths are tested against.

>>> from eacnn.config import XRDConfig
>>> y = bin_profile(np.array([30.0]), np.array([1.0]), XRDConfig())
>>> round(float(y.sum()), 3)   # a unit peak well inside 10-80° keeps (almost) all of its area
0.997
"""

from __future__ import annotations

import math

import numpy as np
from scipy import sparse
from scipy.special import erf

from eacnn.config import XRDConfig

__all__ = ["pv_cdf", "bin_profile", "bin_kernel", "split_on_grid", "deposit_matrix", "bin_peaks", "FWHM_TO_SIGMA"]

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # σ of a Gaussian per unit FWHM


def pv_cdf(x: np.ndarray, fwhm: float | np.ndarray, eta: float | np.ndarray) -> np.ndarray:
    """Cumulative pseudo-Voigt of unit area centred at 0, at offsets ``x`` (degrees); keeps x's float dtype.

    ``fwhm`` and ``eta`` are scalars or arrays broadcastable against ``x`` (per-peak widths as a column).
    """
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    inv_w = (1.0 / np.asarray(fwhm, dtype=np.float64)).astype(dtype)
    eta = np.asarray(eta, dtype=dtype)
    gauss = erf(x * (inv_w * dtype.type(1.0 / (FWHM_TO_SIGMA * math.sqrt(2.0)))))  # 2 G_cdf - 1
    lorentz = np.arctan(x * (2.0 * inv_w)) * dtype.type(2.0 / math.pi)  # 2 L_cdf - 1
    return dtype.type(0.5) + dtype.type(0.5) * (eta * lorentz + (1.0 - eta) * gauss)


def bin_profile(
    two_theta: np.ndarray,
    intensity: np.ndarray,
    config: XRDConfig | None = None,
    fwhm: float | np.ndarray | None = None,
    eta: float | np.ndarray | None = None,
) -> np.ndarray:
    """Exact bin integrals of a sum of pseudo-Voigt peaks, float64 (the reference the fast paths are tested against).

    Args:
        two_theta: peak positions, degrees, shape [p].
        intensity: peak areas, shape [p].
        config: grid and default profile; the paper's settings when None.
        fwhm, eta: profile overrides, scalars or per-peak arrays [p] (e.g. size broadening).

    Returns:
        Binned pattern, shape [n_bins], not normalised.
    """
    cfg = config or XRDConfig()
    fwhm = cfg.fwhm if fwhm is None else np.asarray(fwhm)[..., None] if np.ndim(fwhm) else fwhm
    eta = cfg.eta if eta is None else np.asarray(eta)[..., None] if np.ndim(eta) else eta
    edges = cfg.bin_edges()
    cdf = pv_cdf(edges[None, :] - np.asarray(two_theta, dtype=np.float64)[:, None], fwhm, eta)  # [p, n_bins + 1]
    return np.asarray(intensity, dtype=np.float64) @ np.diff(cdf, axis=1)


def bin_kernel(tt_min: float, tt_max: float, step: float, fwhm: float, eta: float, fine: float, pad: float
               ) -> tuple[float, np.ndarray]:
    """Fine-grid origin (degrees) and the matrix [n_fine, n_bins] (float32) of bin integrals of a unit peak at each
    point of a fine grid from ``tt_min - pad`` to ``tt_max + pad`` (spacing ``fine``, degrees)."""
    lo = tt_min - pad
    grid = lo + fine * np.arange(int(math.ceil((tt_max + pad - lo) / fine)) + 2)  # [n_fine]
    edges = tt_min + step * np.arange(int(round((tt_max - tt_min) / step)) + 1)  # [n_bins + 1]
    cdf = pv_cdf(edges[None, :] - grid[:, None], fwhm, eta)  # [n_fine, n_bins + 1]
    return lo, np.ascontiguousarray(np.diff(cdf, axis=1), dtype=np.float32)


def split_on_grid(x: np.ndarray, n_fine: int) -> tuple[np.ndarray, np.ndarray]:
    """Each position ``x`` (in fine-grid steps from the grid's first point, any shape) split linearly between its two
    neighbouring grid points: (index of the lower point, share of the upper point in [0, 1]), both shaped like ``x``.
    A position off the grid goes whole to the grid's end point. Then the product with :func:`bin_kernel`'s matrix
    bins the peaks; the simulator, refinement and the mixture fit all deposit their sticks this way."""
    i0 = np.clip(np.floor(x).astype(np.int64), 0, n_fine - 2)
    return i0, np.clip(x - i0, 0.0, 1.0)


def deposit_matrix(positions: np.ndarray, area: np.ndarray, lo: float, fine: float, n_fine: int,
                   dtype=np.float32) -> sparse.csr_matrix:
    """The sticks of V variants of one pattern on the fine grid: a sparse [V, n_fine] matrix, 2p entries a row.

    Args:
        positions: [V, p] degrees 2θ (each row the same p reflections, moved); area: [p] their areas.
        lo, fine, n_fine: the grid of :func:`bin_kernel` (first point, spacing, number of points).

    Its product with the kernel [n_fine, n_bins] gives the binned patterns [V, n_bins]; for a few hundred variants
    that is 2-3x faster than a dense deposit."""
    i0, w1 = split_on_grid((positions - lo) / fine, n_fine)  # [V, p] each
    v, p = positions.shape
    cols = np.stack([i0, i0 + 1], axis=-1).reshape(v, 2 * p)  # [V, 2p]
    weights = np.stack([area[None, :] * (1.0 - w1), area[None, :] * w1], axis=-1).reshape(v, 2 * p)
    return sparse.csr_matrix((weights.astype(dtype).ravel(), cols.ravel(), np.arange(0, v * 2 * p + 1, 2 * p)),
                             shape=(v, n_fine))


def bin_peaks(pos: np.ndarray, area: np.ndarray, width: np.ndarray, owner: np.ndarray, n: int,
              config: XRDConfig | None = None, eta: float | None = None) -> np.ndarray:
    """Bin integrals [n, n_bins] (float32) of the peaks of n patterns, each peak with its own width.

    Args:
        pos: peak positions [P], degrees 2θ (float64).
        area: peak areas [P].
        width: FWHM of each peak [P], degrees.
        owner: the pattern (0..n-1) each peak belongs to [P], non-decreasing.
        n: number of patterns.
        config: grid and η.
        eta: Lorentzian fraction override (``config.eta`` when None).
    """
    cfg = config or XRDConfig()
    out = np.zeros((n, cfg.n_bins), dtype=np.float32)
    if len(pos) == 0:
        return out
    # float32 offsets from each peak centre without losing the position's precision (a float32 2θ near 80° is only
    # good to ~4e-6°): edge - round(2θ) is exact (multiples of the step minus an integer), the fraction is small
    whole = np.rint(pos)
    x = cfg.bin_edges().astype(np.float32)[None, :] - whole.astype(np.float32)[:, None]  # [P, n_bins + 1]
    x -= (pos - whole).astype(np.float32)[:, None]
    cdf = pv_cdf(x, np.asarray(width, dtype=np.float64)[:, None], cfg.eta if eta is None else eta)
    per_peak = np.diff(cdf, axis=1) * np.asarray(area, dtype=np.float32)[:, None]  # [P, n_bins]
    counts = np.bincount(owner, minlength=n)
    has = counts > 0
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[has]
    out[has] = np.add.reduceat(per_peak, starts, axis=0)  # peaks are grouped by pattern: a segment sum
    return out
