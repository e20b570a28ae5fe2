"""Measured-style scans from a generator that is not eacnn's: the family no selection, grid or calibration reads.

Everything eacnn chooses (model, search settings, verdict thresholds) was chosen on queries made by its own
simulator and its own measurement model (:mod:`eacnn.physics.conditions`). Graded only on those, the project grades
itself in its own world. This module makes queries the way a user's data are made, with other code at every step,
and is read by the evaluation alone (``scripts/unseen_scans.py``; never by training, ``select_*.py`` or
``calibrate``):

* **sticks from pymatgen** (``XRDCalculator``, Cu Kα1 1.5406 Å, its own atomic scattering factors and merging), of
  the structure as given, with its cell scaled, strained, or its intensities textured (:data:`UNSEEN_CONDITIONS`);
* **a scan written to a file** as an instrument writes it: a 0.02° grid from 5 to 90°, Kα1 + Kα2 (ratio 0.5, the
  Kα2 wavelength of :mod:`eacnn.physics.wavelengths`), a Thompson–Cox–Hastings-like pseudo-Voigt whose Gaussian
  width follows a Caglioti law and whose Lorentzian width grows as 1/cos θ (size), a sloped background with a
  low-angle decay, Poisson counting noise, a zero offset;
* **read back** through :func:`eacnn.measured.read_pattern` and :func:`eacnn.measured.to_model_grid`, as
  ``eacnn search`` reads a file.

The functional forms here (peak shape, width law, background, noise) differ from those of
:func:`eacnn.physics.measurement.perturb_measured`, and the sticks come from pymatgen, not from
:mod:`eacnn.physics.xrd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eacnn.physics.conditions import random_strains, strain_cell
from eacnn.physics.measurement import march_dollase
from eacnn.physics.wavelengths import CU

__all__ = ["ScanModel", "UNSEEN_CONDITIONS", "pymatgen_sticks", "unseen_structure", "texture_sticks", "point_rotations",
           "measured_scan", "write_xy"]

#: condition -> what is done to the structure or its sticks before the scan is made
#: (``texture r=0.6`` scales each merged peak by its first Miller index's March factor, as the issue's external check
#: did; ``texture r=0.6 averaged`` by the mean factor over the symmetry-equivalent reflections of that index, as a
#: textured powder's peak is: the sum of its equivalents' intensities, each at its own angle to the direction)
UNSEEN_CONDITIONS = ("unstrained", "iso -3 %", "iso -2 %", "iso +1 %", "aniso 1.5 %", "texture r=0.6", "field",
                     "texture r=0.6 averaged")


@dataclass(frozen=True)
class ScanModel:
    """How :func:`measured_scan` makes a lab scan (each range drawn uniformly per scan unless stated)."""

    two_theta_min: float = 5.0  # degrees
    two_theta_max: float = 90.0  # degrees
    step: float = 0.02  # degrees 2θ
    caglioti_w: tuple = (0.004, 0.02)  # deg²; Gaussian FWHM² = U tan²θ + V tanθ + W
    caglioti_u: tuple = (0.0, 0.03)  # deg²
    caglioti_v: float = -0.005  # deg² (fixed; small, negative as fitted to lab instruments)
    size_fwhm: tuple = (0.02, 0.12)  # degrees 2θ at 2θ = 0 of the Lorentzian (size) width, times 1 / cos θ
    kalpha2_ratio: float = 0.5
    zero_offset: tuple = (-0.04, 0.04)  # degrees 2θ
    peak_counts: tuple = (2e3, 5e4)  # counts at the strongest point, log-uniform
    background: tuple = (0.02, 0.08)  # flat background, fraction of the strongest point
    slope: tuple = (-0.5, 0.5)  # relative change of the background over the scan
    air: tuple = (0.0, 0.15)  # low-angle decay exp(-(2θ - 5°) / 6°), fraction of the strongest point


def pymatgen_sticks(structure, wavelength: float = CU.kalpha1, two_theta: tuple = (5.0, 90.0)):
    """(2θ [p] degrees, intensity [p] (strongest 100), first Miller index of each peak's family [p, 3]) of
    pymatgen's ``XRDCalculator``: an independent simulator of the sticks."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    pattern = XRDCalculator(wavelength=wavelength).get_pattern(structure, scaled=True, two_theta_range=two_theta)
    hkl = np.array([fam[0]["hkl"][-3:] for fam in pattern.hkls], dtype=float).reshape(-1, 3)
    return np.asarray(pattern.x, float), np.asarray(pattern.y, float), hkl


def unseen_structure(structure, condition: str, rng: np.random.Generator):
    """The structure a condition measures: its cell scaled (``iso ±k %``: every length times 1 ± k %) or strained
    (``aniso 1.5 %``: principal strains U(±1.5 %) along random axes); ``field`` draws one of iso -2 … +1 % with a
    mild anisotropic strain. Texture is applied to the sticks, not here."""
    from pymatgen.core import Lattice, Structure

    if condition.startswith("iso"):
        eps = float(condition.split()[1]) / 100.0
        return Structure(Lattice(structure.lattice.matrix * (1.0 + eps)), structure.species, structure.frac_coords)
    if condition.startswith("aniso") or condition == "field":
        big = 0.015 if condition.startswith("aniso") else 0.005
        e = random_strains(rng, 1, big)[0]
        if condition == "field":
            e = e + np.eye(3) * rng.uniform(-0.02, 0.01)
        return Structure(Lattice(strain_cell(structure.lattice.matrix, e)), structure.species, structure.frac_coords)
    return structure


def _march(hkl: np.ndarray, lattice: np.ndarray, direction: np.ndarray, r: float) -> np.ndarray:
    """March–Dollase factors [p] of reflections ``hkl`` [p, 3] for the preferred reciprocal direction ``direction``."""
    recip = np.linalg.inv(lattice).T  # rows: reciprocal vectors (no 2π)
    g = hkl @ recip  # [p, 3]
    h = direction @ recip
    cos = np.abs(g @ h) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(h), 1e-12)
    return march_dollase(cos, r)


def texture_sticks(intensity: np.ndarray, hkl: np.ndarray, lattice: np.ndarray, rng: np.random.Generator,
                   r: float = 0.6, rotations: np.ndarray | None = None) -> np.ndarray:
    """Intensities [p] under March–Dollase texture of parameter ``r`` along a random low-index reciprocal direction
    (components in {-1, 0, 1}, not all 0), through each peak's first Miller index [p, 3]: that index's factor alone
    (``rotations`` None: equivalents not averaged), or the mean factor over its symmetry-equivalent indices h·R for
    the point-group ``rotations`` [k, 3, 3] (fractional, acting on direct coordinates; :func:`point_rotations`)."""
    choices = np.array([v for v in np.ndindex(3, 3, 3) if any(c != 1 for c in v)], float) - 1.0
    direction = choices[rng.integers(len(choices))]
    hkl, lattice = np.asarray(hkl, float), np.asarray(lattice, float)
    if rotations is None:
        return np.asarray(intensity, float) * _march(hkl, lattice, direction, r)
    factor = np.empty(len(hkl))
    for i, h in enumerate(hkl):
        orbit = np.unique(np.rint(np.einsum("j,kjl->kl", h, np.asarray(rotations, float))), axis=0)  # [m, 3]
        factor[i] = _march(orbit, lattice, direction, r).mean()
    return np.asarray(intensity, float) * factor


def point_rotations(structure, symprec: float = 0.01) -> np.ndarray:
    """[k, 3, 3] the rotations of the structure's space group in fractional coordinates (spglib, through pymatgen),
    for :func:`texture_sticks`'s averaging over symmetry-equivalent reflections."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    ops = SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_operations(cartesian=False)
    return np.unique(np.array([np.rint(op.rotation_matrix) for op in ops]), axis=0)


def measured_scan(two_theta: np.ndarray, intensity: np.ndarray, rng: np.random.Generator,
                  model: ScanModel = ScanModel()) -> tuple[np.ndarray, np.ndarray, dict]:
    """A lab scan (2θ grid [m], counts [m]) of sticks (2θ [p] degrees at Cu Kα1, intensity [p]): Kα1 + Kα2 doublet,
    pseudo-Voigt peaks of Caglioti Gaussian and 1/cos θ Lorentzian widths (Thompson–Cox–Hastings mixing), zero
    offset, background and Poisson noise; the drawn values come back in a dict."""
    m = model
    x = np.arange(m.two_theta_min, m.two_theta_max + 1e-9, m.step)  # [m]
    p = {"w": rng.uniform(*m.caglioti_w), "u": rng.uniform(*m.caglioti_u), "size": rng.uniform(*m.size_fwhm),
         "zero": rng.uniform(*m.zero_offset), "counts": float(np.exp(rng.uniform(*np.log(m.peak_counts)))),
         "background": rng.uniform(*m.background), "slope": rng.uniform(*m.slope), "air": rng.uniform(*m.air)}
    tt = np.asarray(two_theta, float)
    theta2 = np.degrees(2 * np.arcsin(np.clip(np.sin(np.radians(tt / 2)) * CU.kalpha2 / CU.kalpha1, 0, 1)))
    pos = np.concatenate([tt, theta2]) + p["zero"]  # [2p] Kα1 then Kα2
    area = np.concatenate([intensity, m.kalpha2_ratio * np.asarray(intensity, float)])
    th = np.radians(pos / 2)
    fg = np.sqrt(np.maximum(p["u"] * np.tan(th) ** 2 + m.caglioti_v * np.tan(th) + p["w"], 1e-6))  # Gaussian FWHM
    fl = p["size"] / np.cos(th)  # Lorentzian FWHM
    # Thompson, Cox & Hastings (1987): the pseudo-Voigt FWHM and mixing of a Voigt of widths fg and fl
    f = (fg**5 + 2.69269 * fg**4 * fl + 2.42843 * fg**3 * fl**2 + 4.47163 * fg**2 * fl**3 + 0.07842 * fg * fl**4
         + fl**5) ** 0.2
    q = fl / f
    eta = 1.36603 * q - 0.47719 * q**2 + 0.11116 * q**3
    y = np.zeros_like(x)
    for c, a, w, e in zip(pos, area, f, eta):
        lo, hi = np.searchsorted(x, [c - 20 * w, c + 20 * w])
        d = x[lo:hi] - c
        gauss = np.sqrt(4 * np.log(2) / np.pi) / w * np.exp(-4 * np.log(2) * d**2 / w**2)
        lorentz = 2 / (np.pi * w) / (1 + 4 * d**2 / w**2)
        y[lo:hi] += a * (e * lorentz + (1 - e) * gauss)
    y *= p["counts"] / max(y.max(), 1e-12)
    t = (x - x[0]) / (x[-1] - x[0])
    bg = p["counts"] * (p["background"] * (1 + p["slope"] * (t - 0.5)) + p["air"] * np.exp(-(x - x[0]) / 6.0))
    counts = rng.poisson(np.maximum(y + bg, 0.0)).astype(float)
    return x, counts, p


def write_xy(path: str | Path, two_theta: np.ndarray, counts: np.ndarray) -> Path:
    """A two-column text file as diffractometer software exports it (a header line, 2θ and counts)."""
    path = Path(path)
    body = "\n".join(f"{a:.3f} {b:.0f}" for a, b in zip(two_theta, counts))
    path.write_text("# 2theta(deg) counts  (Cu Ka1/Ka2, generated by eacnn.physics.scans)\n" + body + "\n")
    return path
