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

Speed: each structure is unpacked once into small arrays, with its reciprocal metric (the only Python loop over
sites). One structure (``get_pattern``, ``vector``, ``simulate``) then takes a few dozen numpy calls on its own
reflections: a cached half-mesh of Miller indices, dense gathers, no scatters. A batch (``get_patterns``,
``simulate_batch``) is one set of numpy calls over the concatenated reflections of many structures, ``seg`` telling
which structure a row belongs to. Both go through the same phase sums, form factors and Lorentz-polarisation, so
they agree to float rounding; phases are reduced in float64 and their cos/sin taken in float32. Binning splits each
stick between two points of a fine 2θ grid and sums rows of a precomputed matrix of exact bin integrals.
``benchmarks/bench_xrd.py`` measures the speed against pymatgen's ``XRDCalculator``; ``tests/test_xrd.py`` the
agreement.

Memory is bounded: a structure with more than ``XRDSimulator.MAX_REFLECTIONS`` reflections is refused before
anything is allocated, and phases are computed in blocks of at most ``WORK_PER_CHUNK`` (reflection, site) pairs.
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
from tqdm.auto import tqdm

from eacnn.config import XRDConfig
from eacnn.errors import ConfigError, NoReflectionsError, StructureError, UnknownElementError
from eacnn.physics.profile import bin_kernel, bin_profile, split_on_grid

log = logging.getLogger(__name__)

__all__ = ["XRDSimulator", "XRDPattern", "SimulationResult", "simulate_vectors", "simulate_batch", "bin_profile",
           "scattering_factor", "IndexedReflections", "indexed_reflections", "metric_monomials", "STRAIN_PAD",
           "absolute_scattering"]

# Reflections weaker than this fraction of their structure's strongest are numerical zeros (systematic absences
# come out near 1e-14 in float32); dropping them makes e.g. a supercell give exactly the sticks of its cell.
ZERO_INTENSITY_TOL = 1e-9
# Cap on the (reflection, site) pairs handled at once, in a batch of structures or a block of one structure's
# reflections: the phase arrays take 20 bytes a pair, so ~60 MB.
WORK_PER_CHUNK = 3_000_000
# Half-meshes of Miller indices with more points than this (54 bytes each) are built for the call, not cached
MESH_CACHE_POINTS = 1_000_000


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
    metric: np.ndarray  # [6] (G11, G22, G33, G12, G13, G23) of the reciprocal metric tensor (no 2π), Å⁻²
    lengths: tuple  # (|a|, |b|, |c|), Å
    frac: np.ndarray  # [N, 3] fractional coordinates of the sites
    occupancy: np.ndarray  # [k, 3] (site, index into elements, occupancy) of each species on each site
    elements: np.ndarray  # [E] int, the crystal's distinct elements, as rows of the scattering table
    volume: float  # Å³


def _as_crystal(structure, label: str = "structure") -> _Crystal:
    """Check a pymatgen Structure, or a structure as plain arrays, and unpack it; errors name the structure and the
    bad value.

    The plain form is the tuple (lattice [3, 3] rows a, b, c in Å, species [N], fractional coordinates [N, 3]), each
    species an element symbol or {symbol: occupancy}, as a structure table row stores them
    (:mod:`eacnn.datasets.structures`): simulating thousands of table rows then skips building pymatgen objects.
    """
    index = _scattering_table()[0]
    if isinstance(structure, tuple) and len(structure) == 3:
        matrix, species, coords = structure
        sites = [({sp: 1.0} if isinstance(sp, str) else dict(sp), xyz) for sp, xyz in zip(species, coords)]
        if len(species) != len(coords):
            raise StructureError(f"{label}: {len(species)} species for {len(coords)} sites")
    elif hasattr(structure, "lattice") and hasattr(structure, "sites"):
        matrix = structure.lattice.matrix
        sites = [(site.species, site.frac_coords) for site in structure]
    else:
        hint = " (a file name? read it first with eacnn.read_cif)" if isinstance(structure, (str, Path)) else ""
        raise StructureError(f"{label}: expected a pymatgen Structure, got {type(structure).__name__} "
                             f"{str(structure)[:80]!r}{hint}")
    if len(sites) == 0:
        raise StructureError(f"{label}: the structure has no sites")
    frac, occupancy, elements = [], {}, {}  # occupancy: (site, local element) -> occ; elements: table row -> local
    for i, (species, xyz) in enumerate(sites):
        for sp, occu in species.items():
            symbol = sp.symbol if hasattr(sp, "symbol") else str(sp)  # Fe2+ -> "Fe"; DummySpecies -> "X"
            if symbol not in index:
                raise UnknownElementError(
                    f"{label}: site {i} holds {str(sp)!r}, which has no tabulated atomic scattering factor"
                )
            key = (i, elements.setdefault(index[symbol], len(elements)))
            occupancy[key] = occupancy.get(key, 0.0) + occu  # Fe2+ and Fe3+ on one site both scatter as Fe
        frac.append(xyz)
    metric, lengths, volume = _cell(matrix, label)
    frac_arr = np.array(frac, dtype=np.float64)
    if not math.isfinite(frac_arr.sum()):  # one cheap test; the details only when it fails
        bad = int(np.flatnonzero(~np.isfinite(frac_arr).all(axis=1))[0])
        raise StructureError(f"{label}: site {bad} has non-finite fractional coordinates {frac_arr[bad].tolist()}")
    occupancy_arr = np.array([(i, e, o) for (i, e), o in occupancy.items()], dtype=np.float64)
    return _Crystal(metric, lengths, frac_arr, occupancy_arr, np.array(list(elements), dtype=np.intp), volume)


def _cell(matrix, label: str) -> tuple[np.ndarray, tuple, float]:
    """Reciprocal metric [6] (Å⁻²), lattice vector lengths (Å) and volume (Å³) of a lattice
    [3, 3] (rows a, b, c).

    In plain floats: for one 3×3 matrix, cross products are cheaper than numpy's inverse.
    """
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = rows = np.asarray(matrix).tolist()  # [3][3] Python floats
    bc1, bc2, bc3 = by * cz - bz * cy, bz * cx - bx * cz, bx * cy - by * cx  # b × c = det · a*
    ca1, ca2, ca3 = cy * az - cz * ay, cz * ax - cx * az, cx * ay - cy * ax  # c × a = det · b*
    ab1, ab2, ab3 = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx  # a × b = det · c*
    det = ax * bc1 + ay * bc2 + az * bc3
    volume = abs(det)
    if not 1e-3 <= volume < math.inf:  # also catches NaN/inf in the lattice
        raise StructureError(f"{label}: degenerate or non-finite lattice, volume {volume:.3g} Å³: {rows}")
    scale = 1.0 / (det * det)
    metric = np.array([  # [6] a*·a*, b*·b*, c*·c*, a*·b*, a*·c*, b*·c*
        (bc1 * bc1 + bc2 * bc2 + bc3 * bc3) * scale, (ca1 * ca1 + ca2 * ca2 + ca3 * ca3) * scale,
        (ab1 * ab1 + ab2 * ab2 + ab3 * ab3) * scale, (bc1 * ca1 + bc2 * ca2 + bc3 * ca3) * scale,
        (bc1 * ab1 + bc2 * ab2 + bc3 * ab3) * scale, (ca1 * ab1 + ca2 * ab2 + ca3 * ab3) * scale,
    ])
    lengths = (math.sqrt(ax * ax + ay * ay + az * az), math.sqrt(bx * bx + by * by + bz * bz),
               math.sqrt(cx * cx + cy * cy + cz * cz))
    return metric, lengths, volume


def _inv_d(cfg: XRDConfig, two_theta: float) -> float:
    """|g| = 1/d (Å⁻¹) of a reflection at ``two_theta`` degrees (clipped to the physical range)."""
    return 2.0 * math.sin(math.radians(min(max(two_theta, 0.0), 179.9) / 2.0)) / cfg.wavelength


def _box(crystal: _Crystal, g_max: float) -> list[int]:
    """Largest |h|, |k|, |l| with |g| <= g_max (Å⁻¹): h = g · a, so |h| <= g_max |a|."""
    return [int(math.floor(g_max * length + 1e-9)) for length in crystal.lengths]


def _within_limits(crystal: _Crystal, cfg: XRDConfig, tt_max: float, label: str) -> _Crystal:
    """The crystal, if its reflections up to ``tt_max`` degrees fit ``XRDSimulator.MAX_REFLECTIONS``; checked before
    anything is allocated (a 300 Å cubic cell would need > 13 GB)."""
    g_max, limit = _inv_d(cfg, tt_max), XRDSimulator.MAX_REFLECTIONS
    count = 4.0 * math.pi / 3.0 * g_max**3 * crystal.volume  # lattice points in the sphere |g| <= g_max, one per 1/V
    h, k, l = _box(crystal, g_max)
    if count > limit:
        raise StructureError(
            f"{label}: a cell of {crystal.volume:,.0f} Å³ has about {count:,.0f} reflections up to "
            f"2θ = {tt_max:g}° at λ = {cfg.wavelength} Å, more than XRDSimulator.MAX_REFLECTIONS = {limit:,}; "
            f"simulate a smaller (primitive) cell, or a narrower 2θ range"
        )
    box = (2 * h + 1) * (2 * k + 1) * (2 * l + 1)  # hkl searched (half of them stored, 54 bytes each)
    if box > 4 * limit:  # ~2 × count for a cube, more the more oblique the cell
        raise StructureError(
            f"{label}: the cell is so oblique (|a|, |b|, |c| = {', '.join(f'{x:.1f}' for x in crystal.lengths)} Å for "
            f"{crystal.volume:,.0f} Å³) that its hkl search box of {box:,} points exceeds 4 × "
            f"XRDSimulator.MAX_REFLECTIONS = {limit:,}; reduce it first (Structure.get_reduced_structure())"
        )
    return crystal


# ---------------------------------------------------------------------------------------------------------------
# Reflections and intensities, shared by one structure and a batch
# ---------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=512)  # MP-20 needs ~260 distinct boxes, ~9 MB
def _half_mesh(hmax: int, kmax: int, lmax: int) -> tuple[np.ndarray, np.ndarray]:
    """One Friedel half of the box |h|<=hmax, |k|<=kmax, |l|<=lmax: h > 0, or h = 0 < k, or h = k = 0 < l.

    Returns (cached, read-only): Miller indices [M, 3] (int16; int32 beyond its range) and the monomials
    (h², k², l², 2hk, 2hl, 2kl) [M, 6], so that 1/d² = monomials @ (G11, G22, G33, G12, G13, G23), G the reciprocal
    metric tensor.
    """
    h, k, l = np.arange(0, hmax + 1), np.arange(-kmax, kmax + 1), np.arange(-lmax, lmax + 1)
    hkl = np.stack(np.meshgrid(h, k, l, indexing="ij"), axis=-1).reshape(-1, 3)
    half = (hkl[:, 0] > 0) | ((hkl[:, 0] == 0) & ((hkl[:, 1] > 0) | ((hkl[:, 1] == 0) & (hkl[:, 2] > 0))))
    small = max(hmax, kmax, lmax) <= np.iinfo(np.int16).max
    hkl = np.ascontiguousarray(hkl[half], dtype=np.int16 if small else np.int32)  # compact: gathered once per call
    h, k, l = hkl.T.astype(np.float64)
    mono = np.stack([h * h, k * k, l * l, 2 * h * k, 2 * h * l, 2 * k * l], axis=1)
    hkl.setflags(write=False)
    mono.setflags(write=False)
    return hkl, mono


def _in_range(crystal: _Crystal, g_min: float, g_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Miller indices [m, 3] (integers) and 1/d² [m] (Å⁻², ascending) of one crystal's reflections with
    g_min <= 1/d <= g_max (Å⁻¹), one of each Friedel pair; the same whether the crystal is alone or in a batch."""
    h, k, l = _box(crystal, g_max)
    small = (h + 1) * (2 * k + 1) * (2 * l + 1) <= MESH_CACHE_POINTS
    hkl, mono = (_half_mesh if small else _half_mesh.__wrapped__)(h, k, l)  # [M, 3], [M, 6]
    g2 = mono @ crystal.metric  # [M] 1/d², Å⁻²
    keep = np.flatnonzero((g2 <= g_max * g_max) & (g2 >= g_min * g_min))
    keep = keep[g2[keep].argsort()]  # by 1/d: merging needs that order (equal 1/d become neighbours)
    return hkl[keep], g2[keep]


def _phase_sums(hkl: np.ndarray, bounds: list[int], frac_t: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Occupancy-weighted phase sums Σ_j w_je (cos, sin)(2π h · x_j), [2, m, E] float32.

    Args:
        hkl: Miller indices [m, 3] (float64), the rows of crystal i being bounds[i]:bounds[i + 1].
        bounds: [S + 1] row offsets of the S crystals.
        frac_t: fractional coordinates [S, 3, N].
        weights: occupancies [S, N, E] (float32; padded sites and elements weigh 0).
    """
    m, n_sites = len(hkl), frac_t.shape[2]
    sums = np.empty((2, m, weights.shape[2]), dtype=np.float32)  # [2, m, E]
    block = max(1, WORK_PER_CHUNK // n_sites)  # rows per block: bounded memory for any cell
    for r0 in range(0, m, block):
        r1 = min(r0 + block, m)
        parts = [(i, max(bounds[i], r0), min(bounds[i + 1], r1)) for i in range(len(bounds) - 1)
                 if bounds[i] < r1 and bounds[i + 1] > r0]  # (crystal, first row, end row) within the block
        # Phases h · x_j (one small matmul per crystal), reduced mod 1 in float64 (h reaches ~40), then float32
        # trigonometry (SIMD; phase error ~1e-6 rad)
        turns = np.empty((r1 - r0, n_sites))  # [r, N]
        for i, a, b in parts:
            np.matmul(hkl[a:b], frac_t[i], out=turns[a - r0 : b - r0])
        turns -= np.rint(turns)
        phase = turns.astype(np.float32)
        phase *= np.float32(2.0 * np.pi)
        trig = np.empty((2, r1 - r0, n_sites), dtype=np.float32)  # [(cos, sin), r, N], contiguous for SIMD
        np.cos(phase, out=trig[0])
        np.sin(phase, out=trig[1])
        for i, a, b in parts:
            np.matmul(trig[:, a - r0 : b - r0], weights[i], out=sums[:, a:b])
    return sums


def _scattering_factors(s2: np.ndarray, z: np.ndarray, a: np.ndarray, b: np.ndarray, b_factor: float) -> np.ndarray:
    """f_e(s) exp(-B s²) = (Z_e - 41.78214 s² Σ_i a_ie exp(-b_ie s²)) exp(-B s²), [q, E] float32.

    Args:
        s2: (sin θ / λ)² [q] (float32).
        z: atomic numbers [q, E].
        a, b: Gaussian coefficients [4, q, E].
        b_factor: isotropic Debye–Waller B (Å²).
    """
    gauss = b * -s2[:, None]  # [4, q, E]: Gaussian index first for fast sums
    np.exp(gauss, out=gauss)
    gauss *= a
    f = z - (41.78214 * s2)[:, None] * np.add.reduce(gauss)  # [q, E]
    if b_factor:
        f *= np.exp(-b_factor * s2)[:, None]  # Debye–Waller on F, so exp(-2 B s²) on the intensity
    return f


def _form_factors(g2: np.ndarray, bounds: list[int], elements: np.ndarray, b_factor: float) -> np.ndarray:
    """:func:`_scattering_factors` [m, E] of each row's crystal's elements, g2 [m] (Å⁻²) sorted by (crystal, 1/d),
    bounds [S + 1] as for :func:`_phase_sums`, elements [S, E].

    Evaluated once per distinct 1/d of a crystal: symmetry-equivalent reflections share it (~2.6 per 1/d on MP-20),
    which saves two thirds of the exponentials.
    """
    m = len(g2)
    new = np.empty(m, dtype=bool)  # [m] first reflection of each distinct 1/d (relative tolerance 1e-6)
    np.greater(g2[1:] - g2[:-1], 1e-6 * g2[1:], out=new[1:])
    new[[r for r in bounds[:-1] if r < m]] = True  # and of each crystal
    distinct = new.cumsum()  # [m] 1 + index of each row's distinct 1/d
    ends = np.concatenate([[0], distinct])[bounds]  # [S + 1] distinct 1/d before each crystal
    per_crystal = ends[1:] - ends[:-1]  # [S]
    z, a, b = _coefficients()
    z, a, b = (np.repeat(t, per_crystal, axis=-2) for t in (z[elements], a[:, elements], b[:, elements]))
    return _scattering_factors((g2[new] / 4.0).astype(np.float32), z, a, b, b_factor)[distinct - 1]


def _sin2_theta(g2: np.ndarray, wavelength: float) -> np.ndarray:
    """sin² θ = λ² g² / 4 [m] from Bragg's law (g2 in Å⁻², λ in Å)."""
    return np.minimum(wavelength**2 * g2 / 4.0, 1.0)


def _two_theta(g2: np.ndarray, wavelength: float) -> np.ndarray:
    """2θ [m] in degrees of reflections with 1/d² = g2 (Å⁻²)."""
    return np.degrees(2.0 * np.arcsin(np.sqrt(_sin2_theta(g2, wavelength))))


def _intensities(hkl: np.ndarray, g2: np.ndarray, bounds: list[int], frac_t: np.ndarray, weights: np.ndarray,
                 f: np.ndarray, cfg: XRDConfig) -> np.ndarray:
    """|F|² × LP × 2 (the Friedel mate) [m] of reflections sorted by crystal, f [m, E] their form factors; the other
    arguments as for :func:`_phase_sums`."""
    sums = _phase_sums(hkl, bounds, frac_t, weights)  # [2, m, E]
    re, im = np.einsum("me,cme->cm", f, sums).astype(np.float64)  # [m], [m]: Re F, Im F
    # Lorentz-polarisation (1 + cos² 2θ) / (sin² θ cos θ) from sin² θ, without trigonometry
    sin2 = _sin2_theta(g2, cfg.wavelength)  # [m]
    cos_2t = 1.0 - 2.0 * sin2
    lp = (1.0 + cos_2t * cos_2t) / (sin2 * np.sqrt(1.0 - sin2))
    return 2.0 * (re * re + im * im) * lp


def _merge_peaks(two_theta: np.ndarray, intensity: np.ndarray, tol: float, seg: np.ndarray | None = None):
    """Merge reflections (sorted by 2θ, or by (seg, 2θ) for a batch) whose 2θ differ by at most ``tol`` degrees.

    Single linkage on the sorted list, so equivalent reflections (split by ~1e-5° when cells are rounded) are
    never separated by a rounding boundary, unlike pymatgen's rounding of 2θ to multiples of its tolerance.

    Returns:
        first reflection of each peak [m] (bool), peak 2θ [p] (intensity-weighted mean, degrees), summed
        intensity [p], and the peak of each reflection [m].
    """
    starts = np.empty(len(two_theta), dtype=bool)  # [m]
    starts[:1] = True
    np.greater(two_theta[1:] - two_theta[:-1], tol, out=starts[1:])
    if seg is not None:
        starts[1:] |= seg[1:] != seg[:-1]
    peak = starts.cumsum() - 1  # [m]
    summed = np.bincount(peak, weights=intensity)  # [p]
    weighted = np.bincount(peak, weights=two_theta * intensity) / np.where(summed > 0, summed, 1.0)
    return starts, np.where(summed > 0, weighted, two_theta[starts]), summed, peak


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
    h, k, l = np.rint(hkl[order[ends - 1]]).astype(int).T.tolist()  # the largest member of each family
    families = [{"hkl": label, "multiplicity": m} for label, m in zip(zip(h, k, l), (2 * (ends - starts)).tolist())]
    bounds = np.searchsorted(pk[starts], np.arange(n_peaks + 1)).tolist()  # families are sorted by peak
    return [families[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


# ---------------------------------------------------------------------------------------------------------------
# Profile and binning
# ---------------------------------------------------------------------------------------------------------------
def _pad(cfg: XRDConfig) -> float:
    """How far outside the window (degrees) a peak may lie and still be counted: its tails reach in."""
    return max(1.0, 10.0 * cfg.fwhm)


@lru_cache(maxsize=8)
def _kernel(tt_min: float, tt_max: float, step: float, fwhm: float, eta: float, fine: float, pad: float):
    """:func:`eacnn.physics.profile.bin_kernel`, cached: keyed on the grid and profile only, so configs differing
    in λ or B share it."""
    return bin_kernel(tt_min, tt_max, step, fwhm, eta, fine, pad)


def _deposit(two_theta: np.ndarray, area: np.ndarray, cfg: XRDConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each stick (2θ [p] degrees, area [p]) split linearly between its two neighbouring points of the fine grid.

    Returns: the kernel [n_fine, n_bins], the grid points [2p] and the areas deposited there [2p] (all float32),
    two per stick in stick order.
    """
    lo, kernel = _kernel(cfg.two_theta_min, cfg.two_theta_max, cfg.step, cfg.fwhm, cfg.eta, cfg.fine_step, _pad(cfg))
    i0, w1 = split_on_grid((two_theta - lo) / cfg.fine_step, kernel.shape[0])  # [p] lower point, upper share
    cols = np.empty((len(i0), 2), dtype=np.int64)  # [p, 2]
    cols[:, 0], cols[:, 1] = i0, i0 + 1
    weights = np.empty((len(i0), 2), dtype=np.float32)  # [p, 2]
    weights[:, 0], weights[:, 1] = area * (1.0 - w1), area * w1
    return kernel, cols.ravel(), weights.ravel()


def _bin_one(two_theta: np.ndarray, area: np.ndarray, cfg: XRDConfig) -> np.ndarray:
    """Profile-and-bin one crystal's sticks (2θ [p] degrees, area [p]): [n_bins] float32, not normalised."""
    kernel, cols, weights = _deposit(two_theta, area, cfg)
    # a dense gather of kernel rows [2p, n_bins], summed row after row in float32: the order of the batch's sparse
    # product, so both agree to the bit (checked on MP-20)
    return np.add.reduce(weights[:, None] * kernel[cols], axis=0)


def _bin_sticks(sticks: _Peaks, n: int, cfg: XRDConfig) -> np.ndarray:
    """Profile-and-bin the sticks of n crystals at once: [n, n_bins], each row max-normalised (zero if empty)."""
    kernel, cols, weights = _deposit(sticks.two_theta, sticks.intensity, cfg)  # [n_fine, n_bins], [2p], [2p]
    # Sticks are sorted by crystal, so the deposit matrix [n, n_fine] is built directly in CSR form (2 entries
    # per stick, rows in order); for thousands of sticks one sparse product beats per-crystal gathers
    indptr = 2 * np.searchsorted(sticks.seg, np.arange(n + 1))  # [n + 1]
    out = np.asarray(sparse.csr_matrix((weights, cols, indptr), shape=(n, kernel.shape[0])) @ kernel)  # [n, n_bins]
    peak = out.max(axis=1, keepdims=True)
    return out / np.where(peak > 0, peak, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# One structure
# ---------------------------------------------------------------------------------------------------------------
def _one_reflections(crystal: _Crystal, cfg: XRDConfig, g_min: float, g_max: float):
    """One crystal's reflections with g_min <= 1/d <= g_max (Å⁻¹), numerical zeros not yet removed.

    Returns: Miller indices [m, 3] (float), 1/d² [m] (Å⁻², ascending), intensities [m].
    """
    hkl, g2 = _in_range(crystal, g_min, g_max)  # [m, 3], [m]
    hkl = hkl.astype(np.float64)
    frac_t = np.ascontiguousarray(crystal.frac.T)[None]  # [1, 3, N]
    occ = crystal.occupancy  # [k, 3]
    weights = np.zeros((1, len(crystal.frac), len(crystal.elements)), dtype=np.float32)  # [1, N, E]
    weights[0, occ[:, 0].astype(np.intp), occ[:, 1].astype(np.intp)] = occ[:, 2]
    f = _form_factors(g2, [0, len(g2)], crystal.elements[None], cfg.b_factor)  # [m, E]
    intensity = _intensities(hkl, g2, [0, len(g2)], frac_t, weights, f, cfg)
    return hkl, g2, intensity


def absolute_scattering(structure, config: XRDConfig | None = None,
                        two_theta_range: tuple[float, float] | None = None) -> float:
    """Σ |F|² × Lorentz-polarisation × multiplicity of a structure's cell over ``two_theta_range`` (degrees; default
    the model window), on the absolute scale (electrons², the Debye–Waller B of ``config``): what quantitative phase
    analysis divides a fitted scale by (pymatgen's unscaled ``XRDCalculator`` sum, without importing it)."""
    cfg = config or XRDConfig()
    lo, hi = _checked_range(cfg, two_theta_range)
    crystal = _within_limits(_as_crystal(structure), cfg, hi, "structure")
    _, _, intensity = _one_reflections(crystal, cfg, _inv_d(cfg, lo), _inv_d(cfg, hi))
    return float(np.sum(intensity, dtype=np.float64))


def _select(reflections, cfg: XRDConfig, g_min: float, g_max: float):
    """Of :func:`_one_reflections`' output, those with g_min <= 1/d <= g_max that are not numerical zeros.

    Returns: Miller indices [k, 3], 2θ [k] (degrees, ascending), intensities [k].
    """
    hkl, g2, intensity = reflections
    a, b = int(g2.searchsorted(g_min * g_min, side="left")), int(g2.searchsorted(g_max * g_max, side="right"))
    hkl, g2, intensity = hkl[a:b], g2[a:b], intensity[a:b]  # g2 is sorted: a window is a slice
    keep = intensity > ZERO_INTENSITY_TOL * (intensity.max() if b > a else 0.0)
    return hkl[keep], _two_theta(g2[keep], cfg.wavelength), intensity[keep]


def _one_pattern(selected, cfg: XRDConfig) -> XRDPattern | None:
    """Stick pattern of one crystal's reflections as given by :func:`_select`; None when there is none."""
    hkl, two_theta, intensity = selected
    _, tt, summed, peak = _merge_peaks(two_theta, intensity, cfg.two_theta_tol)  # [p], [p], [m]
    if len(tt) == 0:
        return None
    top = summed.max()
    shown = summed >= cfg.intensity_tol * top  # [p]
    rank = np.cumsum(shown) - 1  # [p] index of each shown peak in the pattern
    mine = shown[peak]  # [m] reflections of shown peaks
    tt = tt[shown]  # [q]
    d = cfg.wavelength / (2.0 * np.sin(np.radians(tt / 2.0)))  # [q] Bragg's law at the peak position
    return XRDPattern(tt, 100.0 * (summed[shown] / top), d, cfg.wavelength, (hkl[mine], rank[peak[mine]]))


def _one_vector(selected, cfg: XRDConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Merged sticks (2θ [p] degrees, area [p], max 1) and model input [n_bins] (float32, max 1) of one crystal's
    reflections as given by :func:`_select`; None when nothing reaches the window."""
    _, two_theta, intensity = selected
    _, tt, summed, _ = _merge_peaks(two_theta, intensity, cfg.two_theta_tol)  # [p], [p]
    if len(tt) == 0:
        return None
    area = summed / summed.max()
    vector = _bin_one(tt, area, cfg)  # [n_bins]
    peak = vector.max()
    return (tt, area, vector / peak) if peak > 0 else None


# ---------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Reflections:
    seg: np.ndarray  # [m] int, which crystal of the batch; rows are sorted by (seg, 2θ)
    hkl: np.ndarray  # [m, 3] Miller indices (float), one of each Friedel pair; [0, 3] unless asked for
    two_theta: np.ndarray  # [m] degrees
    intensity: np.ndarray  # [m] |F|² × LP × 2 (the Friedel mate), arbitrary units


@dataclass(frozen=True)
class _Peaks:
    seg: np.ndarray  # [p] int, which crystal; peaks are sorted by (seg, 2θ)
    two_theta: np.ndarray  # [p] degrees, intensity-weighted mean of the merged reflections
    intensity: np.ndarray  # [p] summed intensity of the merged reflections
    inverse: np.ndarray  # [m] the peak each reflection went to


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
    found = [_in_range(c, g_min, g_max) for c in crystals]  # S × ([m_i, 3], [m_i]), each sorted by 1/d
    counts = [len(g) for _, g in found]  # [S]
    hkl = np.concatenate([h for h, _ in found]).astype(np.float64)  # [m, 3], sorted by (crystal, 1/d)
    g2 = np.concatenate([g for _, g in found])  # [m] 1/d², Å⁻²
    seg = np.repeat(np.arange(n_cryst), counts)  # [m]
    if len(seg) == 0:
        return _Reflections(seg, hkl, g2, g2)
    bounds = [0, *np.cumsum(counts).tolist()]  # [S + 1] first row of each crystal

    # Per-crystal arrays padded to the batch maximum; padded sites and elements weigh 0 and scatter nothing
    frac_t = np.ascontiguousarray(_padded([c.frac for c in crystals]).transpose(0, 2, 1))  # [S, 3, N]
    elements = _padded([c.elements for c in crystals])  # [S, E]
    occ = np.concatenate([c.occupancy for c in crystals])  # [K, 3]
    occ_seg = np.repeat(np.arange(n_cryst), [len(c.occupancy) for c in crystals])  # [K]
    weights = np.zeros((n_cryst, frac_t.shape[2], elements.shape[1]), dtype=np.float32)  # [S, N, E]
    weights[occ_seg, occ[:, 0].astype(np.intp), occ[:, 1].astype(np.intp)] = occ[:, 2]
    f = _form_factors(g2, bounds, elements, cfg.b_factor)  # [m, E]
    intensity = _intensities(hkl, g2, bounds, frac_t, weights, f, cfg)  # [m]
    keep = intensity > ZERO_INTENSITY_TOL * _top(seg, intensity, n_cryst)[seg]
    two_theta = _two_theta(g2[keep], cfg.wavelength)
    return _Reflections(seg[keep], hkl[keep] if with_hkl else hkl[:0], two_theta, intensity[keep])


def _merge(refl: _Reflections, tol: float) -> _Peaks:
    """Merge each crystal's reflections whose 2θ differ by at most ``tol`` degrees (:func:`_merge_peaks`)."""
    starts, two_theta, intensity, peak = _merge_peaks(refl.two_theta, refl.intensity, tol, refl.seg)
    return _Peaks(refl.seg[starts], two_theta, intensity, peak)


def _top(seg: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Largest value of each of n crystals (0 where it has none), shape [n]; ``seg`` is sorted."""
    top = np.zeros(n)
    if len(seg):
        starts = np.flatnonzero(np.diff(seg, prepend=-1))  # first row of each crystal present
        top[seg[starts]] = np.maximum.reduceat(values, starts)
    return top


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
    wavelength: float = XRDConfig.wavelength  # Å, Cu Kα1 (the config's default)
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

    One structure per call (``get_pattern``, ``vector``, ``sticks``, ``simulate``) or many at once
    (``get_patterns``, ``vectors``; :func:`simulate_batch` collects failures); both give the same numbers.

    Example:
        >>> from pymatgen.core import Lattice, Structure
        >>> nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]])
        >>> pattern, vector = XRDSimulator().simulate(nacl)
        >>> vector.shape, pattern.hkls[0]
        ((140,), [{'hkl': (1, 1, 1), 'multiplicity': 8}])
    """

    # Most reflections a structure may have up to the largest 2θ computed (about (4π/3) g_max³ V with
    # g_max = 2 sin θ_max / λ), checked before anything is allocated. At the limit (a 92 Å cubic cell at Cu Kα1)
    # one call takes ~3 s and ~150 MB; a 300 Å cubic cell has ~7e7 and needed > 13 GB.
    MAX_REFLECTIONS = 2_000_000

    def __init__(self, config: XRDConfig | None = None):
        self.config = config or XRDConfig()

    def get_pattern(self, structure, two_theta_range: tuple[float, float] | None = None) -> XRDPattern:
        """Stick pattern within ``two_theta_range`` (degrees; default the model window), strongest peak = 100.

        Peaks weaker than ``config.intensity_tol`` of the strongest are left out.

        Raises:
            StructureError, UnknownElementError: unusable structure, or more than ``MAX_REFLECTIONS`` reflections.
            NoReflectionsError: no reflection in the range.
        """
        lo, hi = _checked_range(self.config, two_theta_range)
        crystal = _within_limits(_as_crystal(structure), self.config, hi, "structure")
        reflections = _one_reflections(crystal, self.config, _inv_d(self.config, lo), _inv_d(self.config, hi))
        return self._pattern(reflections, lo, hi)

    def vector(self, structure) -> np.ndarray:
        """The 140-value model input (bin integrals of the profile, max 1), shape [n_bins], float32."""
        return self._binned(self._binned_reflections(structure))[2]

    def sticks(self, structure) -> tuple[np.ndarray, np.ndarray]:
        """Merged peaks that reach the binned window (with its padding): 2θ [p] (degrees), area [p] (max 1)."""
        two_theta, area, _ = self._binned(self._binned_reflections(structure))
        return two_theta, area

    def simulate(self, structure) -> tuple[XRDPattern, np.ndarray]:
        """:meth:`get_pattern` (default range) and :meth:`vector` of one structure, its reflections computed once."""
        reflections = self._binned_reflections(structure)
        pattern = self._pattern(reflections, self.config.two_theta_min, self.config.two_theta_max)
        return pattern, self._binned(reflections)[2]

    def get_patterns(self, structures: Sequence, two_theta_range: tuple[float, float] | None = None,
                     labels: Sequence[str] | None = None) -> list[XRDPattern]:
        """:meth:`get_pattern` of many structures, vectorised; raises on the first unusable one (named by ``labels``)."""
        cfg = self.config
        lo, hi = _checked_range(cfg, two_theta_range)
        labels = labels or [f"structure {i}" for i in range(len(structures))]
        crystals = [_within_limits(_as_crystal(s, label), cfg, hi, label) for s, label in zip(structures, labels)]
        patterns: list = [None] * len(crystals)
        for idx in _chunks(crystals, _inv_d(cfg, hi), 256):
            for i, pattern in zip(idx.tolist(), _pattern_chunk([crystals[i] for i in idx], cfg, lo, hi)):
                if pattern is None:
                    raise NoReflectionsError(_no_peak(cfg, labels[i], lo, hi))
                patterns[i] = pattern
        return patterns

    def vectors(self, structures: Iterable, progress: bool = True) -> np.ndarray:
        """Vectors of many structures, shape [n, n_bins]; raises on the first unusable structure."""
        return simulate_vectors(list(structures), self.config, progress=progress)

    def _binned_reflections(self, structure):
        """:func:`_one_reflections` of all that reaches the model window, its padding included."""
        cfg = self.config
        crystal = _within_limits(_as_crystal(structure), cfg, cfg.two_theta_max + _pad(cfg), "structure")
        return _one_reflections(crystal, cfg, *_binned_range(cfg))

    def _pattern(self, reflections, lo: float, hi: float) -> XRDPattern:
        """The stick pattern within [lo, hi] degrees of :func:`_one_reflections`' output."""
        pattern = _one_pattern(_select(reflections, self.config, _inv_d(self.config, lo), _inv_d(self.config, hi)),
                               self.config)
        if pattern is None:
            raise NoReflectionsError(_no_peak(self.config, "structure", lo, hi))
        return pattern

    def _binned(self, reflections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sticks (2θ [p], area [p]) and vector [n_bins] of :meth:`_binned_reflections`' output."""
        binned = _one_vector(_select(reflections, self.config, *_binned_range(self.config)), self.config)
        if binned is None:
            raise NoReflectionsError(_outside_window(self.config, "structure"))
        return binned


def _checked_range(cfg: XRDConfig, two_theta_range: tuple[float, float] | None) -> tuple[float, float]:
    lo, hi = two_theta_range or (cfg.two_theta_min, cfg.two_theta_max)
    if not 0 <= lo < hi <= 180:
        raise ConfigError(f"two_theta_range must satisfy 0 <= lo < hi <= 180 degrees, got {(lo, hi)!r}")
    return lo, hi


def _binned_range(cfg: XRDConfig) -> tuple[float, float]:
    """1/d range (Å⁻¹) of the reflections that reach the model window, its padding included."""
    return _inv_d(cfg, cfg.two_theta_min - _pad(cfg)), _inv_d(cfg, cfg.two_theta_max + _pad(cfg))


def _no_peak(cfg: XRDConfig, label: str, lo: float, hi: float) -> str:
    return f"{label}: no reflection with {lo}° <= 2θ <= {hi}° at λ = {cfg.wavelength} Å"


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
        structures: pymatgen Structures, or structures as plain (lattice, species, fractional coordinates) tuples
            (:func:`_as_crystal`).
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
            crystals.append(_within_limits(_as_crystal(s, labels[i]), cfg, cfg.two_theta_max + _pad(cfg), labels[i]))
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


# ---------------------------------------------------------------------------------------------------------------
# Reflections one by one, for fits that strain the cell
# ---------------------------------------------------------------------------------------------------------------
#: degrees beyond the padded model window that indexed reflections reach: a cell strained by up to 3 % moves a
#: reflection at 80° by about 3°
STRAIN_PAD = 3.0


@dataclass(frozen=True)
class IndexedReflections:
    """One structure's reflections unmerged (symmetry-equivalent ones apart, one of each Friedel pair), so that a
    strained cell can move each as its metric says: 1/d² = :func:`metric_monomials` (hkl) @ metric."""

    hkl: np.ndarray  # [R, 3] Miller indices (float)
    area: np.ndarray  # [R] integrated intensity, the strongest 1
    metric: np.ndarray  # [6] (G11, G22, G33, G12, G13, G23) reciprocal metric tensor, Å⁻²


def metric_monomials(hkl: np.ndarray) -> np.ndarray:
    """[R, 6] (h², k², l², 2hk, 2hl, 2kl) of Miller indices [R, 3]: 1/d² = monomials @ (G11, G22, G33, G12, G13,
    G23), linear in the reciprocal metric."""
    h, k, l = np.asarray(hkl, dtype=np.float64).T
    return np.stack([h * h, k * k, l * l, 2 * h * k, 2 * h * l, 2 * k * l], axis=1)


def indexed_reflections(structures: Sequence, config: XRDConfig | None = None, chunk_size: int = 256,
                        progress: bool = False) -> list[IndexedReflections | None]:
    """Each structure's :class:`IndexedReflections` reaching the padded model window, :data:`STRAIN_PAD` degrees
    further on both sides (None where none); structures as for :func:`simulate_batch`, in batches of
    ``chunk_size``. Errors name the structure."""
    cfg = config or XRDConfig()
    pad = _pad(cfg) + STRAIN_PAD
    crystals = [_within_limits(_as_crystal(s, f"structure {i}"), cfg, cfg.two_theta_max + pad, f"structure {i}")
                for i, s in enumerate(structures)]
    out = []
    for a in tqdm(range(0, len(crystals), chunk_size), desc="indexing reflections", disable=not progress):
        chunk = crystals[a : a + chunk_size]
        refl = _reflections(chunk, cfg, cfg.two_theta_min - pad, cfg.two_theta_max + pad, with_hkl=True)
        bounds = np.searchsorted(refl.seg, np.arange(len(chunk) + 1))
        for c, lo, hi in zip(chunk, bounds[:-1], bounds[1:]):
            area = refl.intensity[lo:hi].astype(np.float64)
            out.append(IndexedReflections(refl.hkl[lo:hi], area / area.max(), c.metric) if hi > lo else None)
    return out
