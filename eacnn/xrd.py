"""Powder X-ray diffraction patterns from crystal structures (paper, Methods §2.1).

The physics, for a structure with sites j at fractional coordinates x_j and reflections (hkl):

* Bragg's law: 2 d_hkl sin θ = λ, with 1/d_hkl = |h a* + k b* + l c*| (crystallographic reciprocal lattice).
* Structure factor: F_hkl = Σ_j Σ_e w_je f_e(s) exp(-B s²) exp(2πi (h x_j + k y_j + l z_j)), s = sin θ / λ, with
  w_je the occupancy of site j by element e (a disordered site scatters as the occupancy-weighted average) and
  f_e(s) = Z - 41.78214 s² Σ_i a_i exp(-b_i s²) the four-Gaussian atomic scattering factor (pymatgen's table).
* Intensity of one reflection: |F_hkl|² × Lorentz-polarisation (1 + cos² 2θ) / (sin² θ cos θ).
  Reflections of equal 2θ (within ``two_theta_tol``) are merged, so their number is the multiplicity.
  F(-h) = F(h)* (Friedel's law, no anomalous scattering), so only half of reciprocal space is evaluated.
* Profile: a pseudo-Voigt of constant FWHM in 2θ, integrated exactly over each 0.5° bin of [10°, 80°) — binning,
  not point sampling, so a sharp peak is never missed — then max-normalised: the 140-value model input.

Speed: each structure is unpacked once into small arrays (the only Python loop over sites). A batch of structures
is then one set of numpy calls over the concatenated reflections of all of them, ``seg`` telling which structure
a row belongs to (only three tiny matmuls per structure remain in Python loops); phases are reduced in float64 and
their cos/sin taken in float32. The profile step deposits all sticks on a fine 2θ grid (linear split between grid
points) and multiplies by a precomputed matrix of exact bin integrals. ``benchmarks/bench_xrd.py`` measures the
speed against pymatgen's ``XRDCalculator``; ``tests/test_xrd.py`` the agreement.
"""

from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import repeat
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import sparse
from scipy.special import erf
from tqdm.auto import tqdm

from .config import XRDConfig
from .errors import ConfigError, NoReflectionsError, StructureError, UnknownElementError

log = logging.getLogger(__name__)

__all__ = ["XRDSimulator", "XRDPattern", "SimulationResult", "simulate_vectors", "simulate_batch", "bin_profile",
           "scattering_factor"]

# Reflections weaker than this fraction of their structure's strongest are numerical zeros (systematic absences
# come out near 1e-14 in float32); dropping them makes e.g. a supercell give exactly the sticks of its cell.
ZERO_INTENSITY_TOL = 1e-9
# Cap on the (reflection, site) pairs of one vectorised batch: bounds its memory to ~100 MB.
WORK_PER_CHUNK = 3_000_000


# ---------------------------------------------------------------------------------------------------------------
# Atomic scattering factors
# ---------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _scattering_table() -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """Element symbol -> row; atomic numbers [n_el]; Gaussian coefficients [n_el, 4, 2] (a_i, b_i)."""
    import pymatgen.analysis.diffraction as diffraction
    from pymatgen.core.periodic_table import Element

    params = json.loads((Path(diffraction.__file__).parent / "atomic_scattering_params.json").read_text())
    symbols = sorted(params, key=lambda s: Element(s).Z)
    index = {s: i for i, s in enumerate(symbols)}
    z = np.array([Element(s).Z for s in symbols], dtype=np.float64)
    coeffs = np.zeros((len(symbols), max(len(v) for v in params.values()), 2))
    for s, rows in params.items():
        coeffs[index[s], : len(rows)] = rows
    return index, z, coeffs


def scattering_factor(symbol: str, sin_theta_over_lambda: np.ndarray | float) -> np.ndarray:
    """Atomic scattering factor f(s) of an element (electrons), s = sin θ / λ in Å⁻¹, same shape as s.

    Raises:
        UnknownElementError: the element has no tabulated coefficients.
    """
    index, z, coeffs = _scattering_table()
    if symbol not in index:
        raise UnknownElementError(f"no atomic scattering factor for element {symbol!r}; tabulated: {len(index)} elements")
    s2 = np.asarray(sin_theta_over_lambda, dtype=np.float64) ** 2
    a, b = coeffs[index[symbol], :, 0], coeffs[index[symbol], :, 1]
    return z[index[symbol]] - 41.78214 * s2 * np.sum(a * np.exp(-np.multiply.outer(s2, b)), axis=-1)


@lru_cache(maxsize=1)
def _coefficients() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The table as float32 for the hot path: Z [n_el], a_i [4, n_el], b_i [4, n_el]."""
    _, z, coeffs = _scattering_table()
    return z.astype(np.float32), *np.ascontiguousarray(coeffs.transpose(2, 1, 0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Structure -> plain arrays (the only place that touches pymatgen objects)
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Crystal:
    lattice: np.ndarray  # [3, 3] Å, rows are lattice vectors
    frac: np.ndarray  # [n, 3] fractional coordinates of the sites
    occupancy: np.ndarray  # [k, 3] (site, index into elements, occupancy) of each species on each site
    elements: np.ndarray  # [e] int, the crystal's distinct elements, as rows of the scattering table
    volume: float  # Å³


def _as_crystal(structure, label: str = "structure") -> _Crystal:
    """Check a pymatgen Structure and unpack it; errors name the structure and the bad value."""
    index = _scattering_table()[0]
    if structure is None or len(structure) == 0:
        raise StructureError(f"{label}: the structure has no sites")
    frac, occupancy, elements = [], {}, {}  # occupancy: (site, local element) -> occ; elements: table row -> local
    for i, site in enumerate(structure):
        for sp, occu in site.species.items():
            symbol = sp.symbol if hasattr(sp, "symbol") else str(sp)  # Fe2+ -> "Fe"; DummySpecies -> "X"
            if symbol not in index:
                raise UnknownElementError(
                    f"{label}: site {i} holds {str(sp)!r}, which has no tabulated atomic scattering factor"
                )
            key = (i, elements.setdefault(index[symbol], len(elements)))
            occupancy[key] = occupancy.get(key, 0.0) + occu  # Fe2+ and Fe3+ on one site both scatter as Fe
        frac.append(site.frac_coords)
    lattice = np.asarray(structure.lattice.matrix, dtype=np.float64)
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = lattice.tolist()  # triple product: cheaper than np.linalg.det
    volume = abs(ax * (by * cz - bz * cy) - ay * (bx * cz - bz * cx) + az * (bx * cy - by * cx))
    if not volume >= 1e-3:  # also catches NaN/inf in the lattice
        raise StructureError(f"{label}: degenerate or non-finite lattice, volume {volume:.3g} Å³: {lattice.tolist()}")
    frac_arr = np.array(frac, dtype=np.float64)
    if not math.isfinite(frac_arr.sum()):  # one cheap test; the details only when it fails
        bad = int(np.flatnonzero(~np.isfinite(frac_arr).all(axis=1))[0])
        raise StructureError(f"{label}: site {bad} has non-finite fractional coordinates {frac_arr[bad].tolist()}")
    occupancy_arr = np.array([(i, e, o) for (i, e), o in occupancy.items()], dtype=np.float64)
    return _Crystal(lattice, frac_arr, occupancy_arr, np.array(list(elements), dtype=np.intp), volume)


# ---------------------------------------------------------------------------------------------------------------
# Reflections and intensities of a batch of crystals
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Reflections:
    seg: np.ndarray  # [m] int, which crystal of the batch; rows are sorted by (seg, 2θ)
    hkl: np.ndarray  # [m, 3] Miller indices (float), one of each Friedel pair; [0, 3] unless asked for
    two_theta: np.ndarray  # [m] degrees
    intensity: np.ndarray  # [m] |F|² × LP × 2 (the Friedel mate), arbitrary units


def _inv_d(cfg: XRDConfig, two_theta: float) -> float:
    """|g| = 1/d (Å⁻¹) of a reflection at ``two_theta`` degrees (clipped to the physical range)."""
    return 2.0 * math.sin(math.radians(min(max(two_theta, 0.0), 179.9) / 2.0)) / cfg.wavelength


@lru_cache(maxsize=512)  # MP-20 needs ~260 distinct boxes, ~9 MB
def _half_mesh(hmax: int, kmax: int, lmax: int) -> tuple[np.ndarray, np.ndarray]:
    """One Friedel half of the box |h|<=hmax, |k|<=kmax, |l|<=lmax: h > 0, or h = 0 < k, or h = k = 0 < l.

    Returns (cached, read-only): Miller indices [M, 3] (int16) and the monomials (h², k², l², 2hk, 2hl, 2kl) [M, 6],
    so that 1/d² = monomials @ (G11, G22, G33, G12, G13, G23), G the reciprocal metric tensor.
    """
    h, k, l = np.arange(0, hmax + 1), np.arange(-kmax, kmax + 1), np.arange(-lmax, lmax + 1)
    hkl = np.stack(np.meshgrid(h, k, l, indexing="ij"), axis=-1).reshape(-1, 3)
    half = (hkl[:, 0] > 0) | ((hkl[:, 0] == 0) & ((hkl[:, 1] > 0) | ((hkl[:, 1] == 0) & (hkl[:, 2] > 0))))
    hkl = np.ascontiguousarray(hkl[half], dtype=np.int16)  # compact: gathered once per batch
    h, k, l = hkl.T.astype(np.float64)
    mono = np.stack([h * h, k * k, l * l, 2 * h * k, 2 * h * l, 2 * k * l], axis=1)
    hkl.setflags(write=False)
    mono.setflags(write=False)
    return hkl, mono


def _padded(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack arrays of shape [n_i, ...] into [len(arrays), max n_i, ...], zero-padded."""
    n = np.array([len(a) for a in arrays])
    seg = np.repeat(np.arange(len(arrays)), n)
    out = np.zeros((len(arrays), n.max()) + arrays[0].shape[1:], dtype=arrays[0].dtype)
    out[seg, np.arange(len(seg)) - np.repeat(np.cumsum(n) - n, n)] = np.concatenate(arrays)
    return out


def _reflections(
    crystals: Sequence[_Crystal], cfg: XRDConfig, tt_lo: float, tt_hi: float, with_hkl: bool = False
) -> _Reflections:
    """All non-zero reflections with tt_lo <= 2θ <= tt_hi (degrees) of every crystal, half of reciprocal space.

    Their Miller indices are returned only ``with_hkl`` (the model input does not need them)."""
    g_min, g_max = _inv_d(cfg, tt_lo), _inv_d(cfg, tt_hi)
    n_cryst = len(crystals)
    lattice = np.stack([c.lattice for c in crystals])  # [S, 3, 3]
    recip = np.linalg.inv(lattice).transpose(0, 2, 1)  # [S, 3, 3] rows a*, b*, c* (no 2π)
    metric = (recip @ recip.transpose(0, 2, 1)).reshape(n_cryst, 9)[:, [0, 4, 8, 1, 2, 5]]  # [S, 6] Å⁻²
    # |h| <= g_max |a| because h = g · a for any g of length <= g_max
    boxes = np.floor(g_max * np.linalg.norm(lattice, axis=2) + 1e-9).astype(int).tolist()  # [S][3]
    meshes = [_half_mesh(*box) for box in boxes]
    g2 = np.concatenate([mono @ metric[i] for i, (_, mono) in enumerate(meshes)])  # [B] 1/d², Å⁻²
    seg = np.repeat(np.arange(n_cryst), [len(hkl) for hkl, _ in meshes])  # [B]
    keep = np.flatnonzero((g2 <= g_max * g_max) & (g2 >= g_min * g_min))
    # sorted by crystal, then 1/d: merging needs that order, and reflections of equal 1/d become neighbours
    keep = keep[np.argsort(seg[keep] * (2.0 * g_max * g_max + 1.0) + g2[keep])]
    hkl = np.concatenate([hkl for hkl, _ in meshes])[keep].astype(np.float64)  # [m, 3]
    seg, g2 = seg[keep], g2[keep]  # [m], [m]
    if len(seg) == 0:
        return _Reflections(seg, hkl, g2, g2)
    counts = np.bincount(seg, minlength=n_cryst)  # [S] reflections per crystal
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()  # [S + 1]

    # Per-crystal arrays padded to the batch maximum; padded sites have weight 0 and scatter nothing
    frac = _padded([c.frac for c in crystals])  # [S, N, 3]
    frac_t = np.ascontiguousarray(frac.transpose(0, 2, 1))  # [S, 3, N]
    elements = _padded([c.elements for c in crystals])  # [S, E]
    occ = np.concatenate([c.occupancy for c in crystals])  # [K, 3]
    weights = np.zeros(frac.shape[:2] + elements.shape[1:], dtype=np.float32)  # [S, N, E]
    occ_seg = np.repeat(np.arange(n_cryst), [len(c.occupancy) for c in crystals])
    weights[occ_seg, occ[:, 0].astype(np.intp), occ[:, 1].astype(np.intp)] = occ[:, 2]
    n_sites, n_el = weights.shape[1:]

    # Phases h · x_j of each crystal's reflections with its own sites (one small matmul per crystal), reduced
    # mod 1 in float64 (h reaches ~40), then float32 trigonometry (SIMD; phase error ~1e-6 rad)
    turns = np.empty((len(seg), n_sites))  # [m, N]
    for i in range(n_cryst):
        np.matmul(hkl[bounds[i] : bounds[i + 1]], frac_t[i], out=turns[bounds[i] : bounds[i + 1]])
    turns -= np.rint(turns)
    phase = turns.astype(np.float32)
    phase *= np.float32(2.0 * np.pi)
    trig = np.empty((2, len(seg), n_sites), dtype=np.float32)  # [(cos, sin), m, N], contiguous for SIMD
    np.cos(phase, out=trig[0])
    np.sin(phase, out=trig[1])
    # Occupancy-weighted phase sums per element: sums[:, m, e] = Σ_j w_je (cos, sin)(2π h · x_j)
    sums = np.empty((2, len(seg), n_el), dtype=np.float32)  # [2, m, E]
    for i in range(n_cryst):
        rows = slice(bounds[i], bounds[i + 1])
        np.matmul(trig[:, rows], weights[i], out=sums[:, rows])

    # Atomic scattering factors f_e(s) = Z - 41.78214 s² Σ_i a_i exp(-b_i s²) of each crystal's elements, once
    # per distinct 1/d of a crystal (symmetry-equivalent reflections share it; ~2.6 reflections per 1/d on MP-20)
    new = np.ones(len(seg), dtype=bool)  # [m] first reflection of each distinct 1/d (relative tolerance 1e-6)
    new[1:] = (np.diff(g2) > 1e-6 * g2[1:]) | (np.diff(seg) != 0)
    s2 = (g2[new] / 4.0).astype(np.float32)  # [q] (sin θ / λ)²
    per_crystal = np.bincount(seg[new], minlength=n_cryst)  # [S] distinct 1/d per crystal
    z, a, b = _coefficients()
    gauss = np.repeat(b[:, elements], per_crystal, axis=1)  # [4, q, E]: b_i, Gaussian index first for fast sums
    gauss *= -s2[:, None]
    np.exp(gauss, out=gauss)
    gauss *= np.repeat(a[:, elements], per_crystal, axis=1)
    f = np.repeat(z[elements], per_crystal, axis=0) - (41.78214 * s2)[:, None] * gauss.sum(axis=0)  # [q, E]
    if cfg.b_factor:
        f *= np.exp(-cfg.b_factor * s2)[:, None]  # Debye–Waller on F, so exp(-2 B s²) on the intensity
    f = f[np.cumsum(new) - 1]  # [m, E]
    structure_factor = np.einsum("me,cme->cm", f, sums).astype(np.float64)  # [2, m] (Re F, Im F)

    # Lorentz-polarisation (1 + cos² 2θ) / (sin² θ cos θ) from sin² θ = λ² g² / 4, without trigonometry
    sin2 = np.minimum(cfg.wavelength**2 * g2 / 4.0, 1.0)  # [m]
    cos_2t = 1.0 - 2.0 * sin2
    lp = (1.0 + cos_2t * cos_2t) / (sin2 * np.sqrt(1.0 - sin2))
    intensity = 2.0 * np.einsum("cm,cm->m", structure_factor, structure_factor) * lp  # [m]
    keep = intensity > ZERO_INTENSITY_TOL * np.repeat(_top(seg, intensity, n_cryst), counts)
    two_theta = np.degrees(2.0 * np.arcsin(np.sqrt(sin2[keep])))
    return _Reflections(seg[keep], hkl[keep] if with_hkl else hkl[:0], two_theta, intensity[keep])


# ---------------------------------------------------------------------------------------------------------------
# Peaks: merged reflections
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Peaks:
    seg: np.ndarray  # [p] int, which crystal; peaks are sorted by (seg, 2θ)
    two_theta: np.ndarray  # [p] degrees, intensity-weighted mean of the merged reflections
    intensity: np.ndarray  # [p] summed intensity of the merged reflections
    inverse: np.ndarray  # [m] the peak each reflection went to


def _merge(refl: _Reflections, tol: float) -> _Peaks:
    """Merge each crystal's reflections whose 2θ differ by at most ``tol`` degrees.

    Single linkage on the sorted list, so equivalent reflections (split by ~1e-5° when cells are rounded) are
    never separated by a rounding boundary, unlike pymatgen's rounding of 2θ to multiples of its tolerance.
    """
    tt, seg, inten = refl.two_theta, refl.seg, refl.intensity  # sorted by (seg, 2θ)
    starts = np.ones(len(tt), dtype=bool)  # [m] first reflection of each peak
    starts[1:] = (np.diff(tt) > tol) | (np.diff(seg) != 0)
    peak = np.cumsum(starts) - 1  # [m] peak of each reflection
    summed = np.bincount(peak, weights=inten)  # [p]
    weighted = np.bincount(peak, weights=tt * inten) / np.where(summed > 0, summed, 1.0)
    return _Peaks(seg[starts], np.where(summed > 0, weighted, tt[starts]), summed, peak)


def _top(seg: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Largest value of each of n crystals (0 where it has none), shape [n]."""
    top = np.zeros(n)
    np.maximum.at(top, seg, values)
    return top


def _families(hkl: np.ndarray, peak: np.ndarray, n_peaks: int) -> list[list[dict]]:
    """pymatgen-style hkl families of each peak: members are permutations of the same |h|,|k|,|l|.

    Returns n_peaks lists of {"hkl": the lexicographically largest member, "multiplicity": members × 2 (Friedel)}.
    """
    if len(hkl) == 0:
        return [[] for _ in range(n_peaks)]
    key = np.sort(np.abs(hkl), axis=1)  # [m, 3]
    order = np.lexsort((hkl[:, 2], hkl[:, 1], hkl[:, 0], key[:, 2], key[:, 1], key[:, 0], peak))
    pk, key = peak[order], key[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (pk[1:] != pk[:-1]) | (key[1:] != key[:-1]).any(axis=1)
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], len(order))  # a family is order[start:end]; its last member is the largest
    labels = map(tuple, np.rint(hkl[order[ends - 1]]).astype(int).tolist())
    families = [{"hkl": label, "multiplicity": 2 * count} for label, count in zip(labels, (ends - starts).tolist())]
    bounds = np.searchsorted(pk[starts], np.arange(n_peaks + 1)).tolist()  # families are sorted by peak
    return [families[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


# ---------------------------------------------------------------------------------------------------------------
# Profile and binning
# ---------------------------------------------------------------------------------------------------------------
def _pv_cdf(x: np.ndarray, fwhm: float | np.ndarray, eta: float | np.ndarray) -> np.ndarray:
    """Cumulative pseudo-Voigt of unit area, centred at 0, evaluated at offsets ``x`` (degrees)."""
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    gauss = 0.5 * (1.0 + erf(x / (sigma * math.sqrt(2.0))))
    lorentz = 0.5 + np.arctan(2.0 * x / fwhm) / np.pi
    return eta * lorentz + (1.0 - eta) * gauss


def _pad(cfg: XRDConfig) -> float:
    """How far outside the window (degrees) a peak may lie and still be counted: its tails reach in."""
    return max(1.0, 10.0 * cfg.fwhm)


def bin_profile(
    two_theta: np.ndarray,
    intensity: np.ndarray,
    config: XRDConfig | None = None,
    fwhm: float | np.ndarray | None = None,
    eta: float | np.ndarray | None = None,
) -> np.ndarray:
    """Exact bin integrals of a sum of pseudo-Voigt peaks (the reference the fast path is tested against).

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
    cdf = _pv_cdf(edges[None, :] - np.asarray(two_theta, dtype=np.float64)[:, None], fwhm, eta)  # [p, n_bins + 1]
    return np.asarray(intensity, dtype=np.float64) @ np.diff(cdf, axis=1)


@lru_cache(maxsize=8)
def _kernel(tt_min: float, tt_max: float, step: float, fwhm: float, eta: float, fine: float, pad: float):
    """Fine-grid origin (degrees) and the matrix [n_fine, n_bins] (float32) of bin integrals of a unit peak at each
    fine-grid point. Keyed on the grid and profile only, so configs differing in λ or B share it."""
    lo = tt_min - pad
    grid = lo + fine * np.arange(int(math.ceil((tt_max + pad - lo) / fine)) + 2)  # [n_fine]
    edges = tt_min + step * np.arange(int(round((tt_max - tt_min) / step)) + 1)  # [n_bins + 1]
    cdf = _pv_cdf(edges[None, :] - grid[:, None], fwhm, eta)
    return lo, np.ascontiguousarray(np.diff(cdf, axis=1), dtype=np.float32)


def _bin_sticks(sticks: _Peaks, n: int, cfg: XRDConfig) -> np.ndarray:
    """Profile-and-bin the sticks of n crystals at once: [n, n_bins], each row max-normalised (zero if empty)."""
    lo, kernel = _kernel(cfg.two_theta_min, cfg.two_theta_max, cfg.step, cfg.fwhm, cfg.eta, cfg.fine_step, _pad(cfg))
    pos = (sticks.two_theta - lo) / cfg.fine_step  # [p] position on the fine grid
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, kernel.shape[0] - 2)
    w1 = np.clip(pos - i0, 0.0, 1.0)
    # Each stick is split between its two neighbouring grid points; sticks are sorted by crystal, so the
    # deposit matrix [n, n_fine] is built directly in CSR form (2 entries per stick, rows in order)
    data = np.stack([sticks.intensity * (1.0 - w1), sticks.intensity * w1], axis=1).ravel()  # [2p]
    cols = np.stack([i0, i0 + 1], axis=1).ravel()  # [2p]
    indptr = 2 * np.searchsorted(sticks.seg, np.arange(n + 1))  # [n + 1]
    deposit = sparse.csr_matrix((data.astype(np.float32), cols, indptr), shape=(n, kernel.shape[0]))
    out = np.asarray(deposit @ kernel)  # [n, n_bins]
    peak = out.max(axis=1, keepdims=True)
    return out / np.where(peak > 0, peak, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------
def _chunks(crystals: Sequence[_Crystal], g_max: float, chunk_size: int) -> list[np.ndarray]:
    """Indices of crystals in batches of similar site and element counts (little padding) and bounded work."""
    n_sites = np.array([len(c.frac) for c in crystals])
    # reflections in half the sphere |g| <= g_max number (2π/3) g_max³ V; each is paired with every site
    work = (2.0 * np.pi / 3.0) * g_max**3 * np.array([c.volume for c in crystals]) * n_sites + 64
    order = np.lexsort(([len(c.elements) for c in crystals], n_sites))  # by sites, then elements
    chunks, start, total = [], 0, 0.0
    for pos, i in enumerate(order.tolist()):
        if pos > start and (pos - start >= chunk_size or total + work[i] > WORK_PER_CHUNK):
            chunks.append(order[start:pos])
            start, total = pos, 0.0
        total += work[i]
    return chunks + [order[start:]] if len(order) else chunks


def _simulate_chunk(crystals: list[_Crystal], cfg: XRDConfig) -> tuple[np.ndarray, _Peaks, list[int]]:
    """Vectors [n, n_bins] (float32, NaN rows for failures), sticks (max 1 each) and the failed local indices."""
    pad = _pad(cfg)
    refl = _reflections(crystals, cfg, cfg.two_theta_min - pad, cfg.two_theta_max + pad)
    peaks = _merge(refl, cfg.two_theta_tol)
    top = _top(peaks.seg, peaks.intensity, len(crystals))
    sticks = _Peaks(peaks.seg, peaks.two_theta, peaks.intensity / top[peaks.seg], peaks.inverse)
    vectors = _bin_sticks(sticks, len(crystals), cfg).astype(np.float32)
    ok = (top > 0) & (vectors.max(axis=1) > 0)
    vectors[~ok] = np.nan
    return vectors, sticks, np.flatnonzero(~ok).tolist()


def _pattern_chunk(crystals: list[_Crystal], cfg: XRDConfig, lo: float, hi: float) -> list:
    """Stick patterns of a batch of crystals within [lo, hi] degrees (None where a crystal has no peak)."""
    refl = _reflections(crystals, cfg, lo, hi, with_hkl=True)
    peaks = _merge(refl, cfg.two_theta_tol)
    top = _top(peaks.seg, peaks.intensity, len(crystals))
    shown = peaks.intensity >= cfg.intensity_tol * top[peaks.seg]  # [p]
    sel = np.flatnonzero(shown)  # [q] shown peaks, sorted by (crystal, 2θ)
    seg, tt = peaks.seg[sel], peaks.two_theta[sel]
    d = cfg.wavelength / (2.0 * np.sin(np.radians(tt / 2.0)))  # [q] Bragg's law at the peak position
    intensity = 100.0 * (peaks.intensity[sel] / top[seg])  # [q] the strongest of each crystal is exactly 100
    # the reflections of shown peaks, each with its peak's index within its own pattern
    bounds = np.searchsorted(seg, np.arange(len(crystals) + 1))  # [S + 1]
    rank = np.full(len(shown), -1)
    rank[sel] = np.arange(len(sel)) - bounds[seg]
    mine = shown[peaks.inverse]  # [m]
    hkl, local, refl_seg = refl.hkl[mine], rank[peaks.inverse[mine]], refl.seg[mine]
    refl_bounds = np.searchsorted(refl_seg, np.arange(len(crystals) + 1)).tolist()
    patterns = []
    for i, (a, b) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
        ra, rb = refl_bounds[i], refl_bounds[i + 1]
        patterns.append(XRDPattern(tt[a:b], intensity[a:b], d[a:b], cfg.wavelength, (hkl[ra:rb], local[ra:rb])) if b > a else None)
    return patterns


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class XRDPattern:
    """A simulated powder pattern as sticks (one per distinct d-spacing), like pymatgen's ``DiffractionPattern``.

    Immutable: nothing here normalises or smears in place. ``hkls`` is built on first access (it is Python-heavy).
    """

    two_theta: np.ndarray  # [p] degrees
    intensity: np.ndarray  # [p] strongest peak = 100
    d_hkls: np.ndarray  # [p] Å, λ / (2 sin θ) of the peak position
    wavelength: float = 1.5406  # Å
    reflections: tuple = field(default=(np.zeros((0, 3)), np.zeros(0, dtype=int)), repr=False)  # ([m, 3], [m])
    # the Friedel-half Miller indices behind the peaks, and the peak each one belongs to

    @cached_property
    def hkls(self) -> list[list[dict]]:
        """[p] lists of {"hkl": (h, k, l), "multiplicity": m}: families of permuted |h|,|k|,|l| (pymatgen's form)."""
        return _families(*self.reflections, len(self.two_theta))

    def __len__(self) -> int:
        return len(self.two_theta)

    def to_pymatgen(self):
        """The same sticks as a pymatgen ``DiffractionPattern`` (for its plotting and tools)."""
        from pymatgen.analysis.diffraction.core import DiffractionPattern

        return DiffractionPattern(self.two_theta.copy(), self.intensity.copy(), self.hkls, self.d_hkls.copy())


@dataclass
class SimulationResult:
    """Vectors and sticks of many structures; structures that failed are listed, never dropped silently."""

    vectors: np.ndarray  # [n, n_bins] float32, max 1; NaN rows where failed
    stick_two_theta: list = field(default_factory=list)  # n arrays of merged peak positions (degrees)
    stick_intensity: list = field(default_factory=list)  # n arrays of peak areas, strongest = 1
    failures: dict = field(default_factory=dict)  # index -> the exception (str() is the reason)


class XRDSimulator:
    """Simulate powder XRD patterns; ``XRDSimulator()`` uses the paper's settings (Cu Kα1, 10–80°, 0.5°).

    Example:
        >>> from pymatgen.core import Lattice, Structure
        >>> nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]])
        >>> XRDSimulator().vector(nacl).shape
        (140,)
    """

    def __init__(self, config: XRDConfig | None = None):
        self.config = config or XRDConfig()

    def get_pattern(self, structure, two_theta_range: tuple[float, float] | None = None) -> XRDPattern:
        """Stick pattern within ``two_theta_range`` (degrees; default the model window), strongest peak = 100.

        Peaks weaker than ``config.intensity_tol`` of the strongest are left out.

        Raises:
            StructureError, UnknownElementError: unusable structure.
            NoReflectionsError: no reflection in the range.
        """
        return self.get_patterns([structure], two_theta_range, labels=["structure"])[0]

    def get_patterns(self, structures: Sequence, two_theta_range: tuple[float, float] | None = None,
                     labels: Sequence[str] | None = None) -> list[XRDPattern]:
        """:meth:`get_pattern` of many structures, vectorised; raises on the first unusable one (named by ``labels``)."""
        cfg = self.config
        lo, hi = two_theta_range or (cfg.two_theta_min, cfg.two_theta_max)
        if not 0 <= lo < hi <= 180:
            raise ConfigError(f"two_theta_range must satisfy 0 <= lo < hi <= 180 degrees, got {(lo, hi)!r}")
        labels = labels or [f"structure {i}" for i in range(len(structures))]
        crystals = [_as_crystal(s, label) for s, label in zip(structures, labels)]
        patterns: list = [None] * len(crystals)
        for idx in _chunks(crystals, _inv_d(cfg, hi), 256):
            for i, pattern in zip(idx.tolist(), _pattern_chunk([crystals[i] for i in idx], cfg, lo, hi)):
                if pattern is None:
                    raise NoReflectionsError(
                        f"{labels[i]}: no reflection with {lo}° <= 2θ <= {hi}° at λ = {cfg.wavelength} Å"
                    )
                patterns[i] = pattern
        return patterns

    def sticks(self, structure) -> tuple[np.ndarray, np.ndarray]:
        """Merged peaks that reach the binned window (with its padding): 2θ [p] (degrees), area [p] (max 1)."""
        _, sticks = self._simulate_one(structure)
        return sticks.two_theta, sticks.intensity

    def vector(self, structure) -> np.ndarray:
        """The 140-value model input (bin integrals of the profile, max 1), shape [n_bins], float32."""
        return self._simulate_one(structure)[0][0]

    def vectors(self, structures: Iterable, progress: bool = True) -> np.ndarray:
        """Vectors of many structures, shape [n, n_bins]; raises on the first unusable structure."""
        return simulate_vectors(list(structures), self.config, progress=progress)

    def _simulate_one(self, structure) -> tuple[np.ndarray, _Peaks]:
        vectors, sticks, failed = _simulate_chunk([_as_crystal(structure)], self.config)
        if failed:
            raise NoReflectionsError(_outside_window(self.config, "structure"))
        return vectors, sticks


def _outside_window(cfg: XRDConfig, label: str) -> str:
    return (
        f"{label}: no reflection reaches the window {cfg.two_theta_min}–{cfg.two_theta_max}° 2θ "
        f"at λ = {cfg.wavelength} Å (is the cell tiny, or the wavelength too long?)"
    )


def simulate_batch(
    structures: Sequence,
    config: XRDConfig | None = None,
    n_jobs: int = 1,
    chunk_size: int = 256,
    progress: bool = True,
    ids: Sequence[str] | None = None,
) -> SimulationResult:
    """Vectors and sticks of many structures; failures are collected with their reasons, not raised.

    Args:
        structures: pymatgen Structures.
        config: XRD settings; the paper's when None.
        n_jobs: worker processes (1 = in this process; -1 = all cores).
        chunk_size: most structures per vectorised batch.
        progress: show a progress bar.
        ids: names used in failure messages (default: the index).
    """
    cfg = config or XRDConfig()
    n = len(structures)
    labels = [str(ids[i]) if ids is not None else f"structure {i}" for i in range(n)]
    failures: dict = {}
    crystals, valid = [], []
    for i, s in enumerate(tqdm(structures, desc="reading structures", unit="structure", disable=not progress)):
        try:
            crystals.append(_as_crystal(s, label=labels[i]))
            valid.append(i)
        except StructureError as err:
            failures[i] = err
    valid = np.array(valid, dtype=np.int64)
    chunks = _chunks(crystals, _inv_d(cfg, cfg.two_theta_max + _pad(cfg)), chunk_size)
    n_jobs = (os.cpu_count() or 1) if n_jobs == -1 else n_jobs

    vectors = np.full((n, cfg.n_bins), np.nan, dtype=np.float32)
    stick_tt, stick_i = [np.zeros(0)] * n, [np.zeros(0)] * n
    batches = ([crystals[j] for j in idx] for idx in chunks)
    pool = ProcessPoolExecutor(max_workers=n_jobs) if n_jobs > 1 and len(chunks) > 1 else None
    bar = tqdm(total=len(crystals), desc="simulating XRD", unit="structure", disable=not progress)
    try:
        parts = (pool.map if pool else map)(_simulate_chunk, batches, repeat(cfg))
        for idx, (vec, sticks, failed) in zip(chunks, parts):
            rows = valid[idx]  # [c] positions in the input
            vectors[rows] = vec
            bounds = np.searchsorted(sticks.seg, np.arange(len(idx) + 1)).tolist()
            for r, a, b in zip(rows.tolist(), bounds[:-1], bounds[1:]):
                stick_tt[r], stick_i[r] = sticks.two_theta[a:b], sticks.intensity[a:b]
            for j in failed:
                failures[int(rows[j])] = NoReflectionsError(_outside_window(cfg, labels[rows[j]]))
            bar.update(len(idx))
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    if failures:
        log.warning("%d of %d structures could not be simulated", len(failures), n)
    return SimulationResult(vectors, stick_tt, stick_i, dict(sorted(failures.items())))


def simulate_vectors(
    structures: Sequence, config: XRDConfig | None = None, n_jobs: int = 1, progress: bool = True
) -> np.ndarray:
    """Model inputs of many structures, shape [n, n_bins] (float32, each row max 1).

    Raises:
        StructureError / NoReflectionsError: for the first structure that cannot be simulated (use
        :func:`simulate_batch` to collect failures instead).
    """
    result = simulate_batch(structures, config, n_jobs=n_jobs, progress=progress)
    if result.failures:
        raise next(iter(result.failures.values()))  # the first by index; its message names the structure
    return result.vectors
