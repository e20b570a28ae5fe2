"""The one registry of query conditions: how a structure's reflections become a query as a measurement would
make it. Training, calibration, the robustness table and the selection scripts all draw their queries here.

Conditions (:data:`CONDITIONS`, :func:`condition_queries`): ``clean``; ``iso ±k %`` (every d-spacing times 1 ± k %,
the whole cell scaled: ``iso -2 %`` is a measured cell 2 % smaller than the database's); ``aniso 1.5 %`` (the cell
strained by a random symmetric strain with principal strains U(±1.5 %) along random axes and simulated again, so
symmetry-equivalent reflections split); ``texture`` (March–Dollase, r log-uniform 0.6–1.4 along a random reciprocal
direction, through each merged reflection's first hkl); ``strong texture`` (the same with platelets only, r 0.5–0.7:
a flat-packed powder); ``window 20–60°`` and ``low angle 10–45°`` (only those bins
measured); ``impurity 10 %`` (another structure's reflections at 10 % of the strongest); ``measured``
(:func:`measured_queries`, the family training draws from); ``second family`` (:func:`perturb_measured` with
``family="heldout"``: other functional forms, which training never draws; model selection, the re-ranking grids and
the verdict's calibration do read it, so it is a second family, not an unseen one). The calibration mix
(:func:`calibration_queries`) is a third each of ``measured``, ``second family`` and a clean scan of a cell up to ±2 % off.

A data set here is anything with ``sticks(i)``, ``vectors``, ``config`` and, for the conditions that re-simulate a
structure, ``structure(i)`` (:class:`eacnn.datasets.dataset.CrystalDataset`); nothing here imports torch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eacnn.config import Config, MeasurementConfig
from eacnn.physics.measurement import perturb_measured
from eacnn.physics.perturb import augment_patterns, bragg_shift, profile_patterns

__all__ = ["CONDITIONS", "condition_queries", "measured_queries", "calibration_queries", "strain_cell",
           "random_strains", "scan_queries", "SCAN_STEP"]

#: degrees 2θ, the step of :func:`scan_queries` (a laboratory scan's)
SCAN_STEP = 0.02

CONDITIONS = ("clean", "iso -3 %", "iso -2 %", "iso -1 %", "iso +1 %", "iso +2 %", "iso +3 %", "aniso 1.5 %",
              "texture", "window 20–60°", "low angle 10–45°", "impurity 10 %", "measured", "second family",
              "strong texture")


def strain_cell(lattice: np.ndarray, strain: np.ndarray) -> np.ndarray:
    """The cell [3, 3] (rows a, b, c in Å) under a symmetric strain tensor ``strain`` [3, 3] (small, dimensionless):
    every lattice vector r becomes (I + E) r."""
    return np.asarray(lattice) @ (np.eye(3) + np.asarray(strain)).T


def random_strains(rng: np.random.Generator, n: int, max_principal: float) -> np.ndarray:
    """n symmetric strain tensors [n, 3, 3]: principal strains U(±max) along random orthonormal axes."""
    q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))  # [n, 3, 3] random rotations (up to sign)
    e = rng.uniform(-max_principal, max_principal, (n, 3))
    return np.einsum("nij,nj,nkj->nik", q, e, q)


def _strained_structures(dataset, rows, strains) -> list:
    from pymatgen.core import Lattice, Structure

    out = []
    for i, e in zip(rows, strains):
        s = dataset.structure(int(i))
        out.append(Structure(Lattice(strain_cell(s.lattice.matrix, e)), s.species, s.frac_coords))
    return out


def measured_queries(cfg: Config, dataset, rows: np.ndarray, sticks: list, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(patterns [B, n_bins] float32, coverage masks [B, n_bins] bool) of the structures ``rows`` as measured: the
    training family.

    A fraction ``cfg.measure.p_aniso`` of the cells is strained (principal strains up to ``measure.aniso_max``)
    and simulated again when the data set can rebuild its structures (``dataset.structure(i)``); the others keep
    their cached sticks. Each pattern's impurity candidate is the next structure of the batch. A fraction
    ``1 - cfg.augment.measured_fraction`` gets the legacy corruptions instead, fully covered.
    """
    sticks = list(sticks)
    m = cfg.measure
    if m.p_aniso > 0 and m.aniso_max > 0 and hasattr(dataset, "structure"):
        chosen = np.flatnonzero(rng.random(len(rows)) < m.p_aniso)
        if len(chosen):
            from eacnn.physics.xrd import simulate_batch

            strains = random_strains(rng, len(chosen), m.aniso_max)
            sim = simulate_batch(_strained_structures(dataset, [rows[k] for k in chosen], strains), cfg.xrd,
                                 progress=False)
            for j, k in enumerate(chosen):
                if j not in sim.failures and len(sim.stick_two_theta[j]):
                    sticks[k] = (sim.stick_two_theta[j], sim.stick_intensity[j])
    impurities = sticks[1:] + sticks[:1] if len(sticks) > 1 else [None] * len(sticks)
    patterns, masks, _ = perturb_measured(sticks, m, rng, family="train", impurities=impurities, xrd=cfg.xrd)
    if cfg.augment.measured_fraction >= 1:
        return patterns, masks
    legacy = np.flatnonzero(rng.random(len(sticks)) >= cfg.augment.measured_fraction)
    if len(legacy):  # the rest of the batch: the legacy corruptions, fully covered
        patterns[legacy] = augment_patterns([sticks[k] for k in legacy], cfg.augment, rng, cfg.xrd)
        masks[legacy] = True
    return patterns, masks


def _normalised(y: np.ndarray) -> np.ndarray:
    peak = y.max(axis=1, keepdims=True)
    return (y / np.where(peak > 0, peak, 1.0)).astype(np.float32)


def _window(y: np.ndarray, lo: float, hi: float, xrd) -> tuple[np.ndarray, np.ndarray]:
    centres = xrd.bin_centers()
    mask = np.broadcast_to((centres >= lo) & (centres <= hi), y.shape).copy()
    return _normalised(np.where(mask, y, 0.0)), mask


def _strained(dataset, rows: np.ndarray, rng: np.random.Generator, max_principal: float) -> np.ndarray:
    from eacnn.physics.xrd import simulate_batch

    strains = random_strains(rng, len(rows), max_principal)
    sim = simulate_batch(_strained_structures(dataset, rows, strains), dataset.config.xrd, progress=False)
    out = sim.vectors.copy()
    bad = ~np.isfinite(out).all(axis=1)
    out[bad] = dataset.vectors[rows[bad]]  # a failed strained simulation keeps the clean pattern
    return out


def _textured(dataset, rows: np.ndarray, rng: np.random.Generator, r: tuple | None = None) -> np.ndarray:
    from eacnn.physics.xrd import XRDSimulator

    sim = XRDSimulator(dataset.config.xrd)
    sticks, hkl, lattice = [], [], []
    for i in rows:
        s = dataset.structure(int(i))
        p = sim.get_pattern(s)
        sticks.append((p.two_theta, p.intensity))
        hkl.append(np.array([fam[0]["hkl"][-3:] for fam in p.hkls], dtype=float))
        lattice.append(s.lattice.matrix)
    cfg = dataclasses.replace(MeasurementConfig.off(), p_texture=1.0)
    if r is not None:  # March r log-uniform in [r[0], r[1]]
        cfg = dataclasses.replace(cfg, march_r_min=r[0], march_r_max=r[1])
    y, _, _ = perturb_measured(sticks, cfg, rng, hkl=hkl, lattice=lattice, xrd=dataset.config.xrd)
    return y


def condition_queries(dataset, rows: np.ndarray, condition: str, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """(query patterns [n, n_bins] float32, coverage masks [n, n_bins] or None for full coverage) of the data-set
    rows under one condition of :data:`CONDITIONS`, seeded by (seed, condition)."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose one of {CONDITIONS}")
    rows = np.asarray(rows)
    rng = np.random.default_rng([seed, CONDITIONS.index(condition)])
    xrd = dataset.config.xrd
    sticks = [dataset.sticks(int(i)) for i in rows]
    if condition == "clean":
        return dataset.vectors[rows].astype(np.float32), None
    if condition.startswith("iso"):
        eps = float(condition.split()[1]) / 100.0
        moved = [(bragg_shift(tt, eps, 0.0, xrd.wavelength), a) for tt, a in sticks]
        return _normalised(profile_patterns(moved, xrd=xrd)), None
    if condition.startswith("aniso"):
        return _normalised(_strained(dataset, rows, rng, 0.015)), None
    if condition == "texture":
        return _textured(dataset, rows, rng), None
    if condition == "strong texture":
        return _textured(dataset, rows, rng, (0.5, 0.7)), None
    if condition.startswith("window"):
        return _window(dataset.vectors[rows], 20.0, 60.0, xrd)
    if condition.startswith("low angle"):
        return _window(dataset.vectors[rows], 10.0, 45.0, xrd)
    if condition.startswith("impurity"):
        other = rng.permutation(len(rows))
        mixed = [(np.concatenate([tt, sticks[j][0]]),
                  np.concatenate([a / a.max(), 0.1 * sticks[j][1] / sticks[j][1].max()]))
                 for (tt, a), j in zip(sticks, other)]
        return _normalised(profile_patterns(mixed, xrd=xrd)), None
    if condition == "measured":
        return measured_queries(dataset.config, dataset, rows, sticks, rng)
    impurities = sticks[1:] + sticks[:1]
    y, mask, _ = perturb_measured(sticks, MeasurementConfig(), rng, family="heldout", impurities=impurities,
                                  xrd=xrd)
    return y, mask


def calibration_queries(dataset, rows: np.ndarray, rng: np.random.Generator, mismatch: float = 0.02
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(patterns [n, n_bins] float32, masks [n, n_bins] bool) the verdict is calibrated on: a third each of the
    training family (:func:`measured_queries`), the second family, and a clean scan of a cell up to ±``mismatch``
    off the database's (isotropic), in that order over ``rows``."""
    cfg, xrd = dataset.config, dataset.config.xrd
    rows = np.asarray(rows)
    k = len(rows) // 3
    sticks = [dataset.sticks(int(i)) for i in rows]
    p1, m1 = measured_queries(cfg, dataset, rows[:k], sticks[:k], rng)
    p2, m2, _ = perturb_measured(sticks[k : 2 * k], MeasurementConfig(), rng, family="heldout",
                                 impurities=sticks[k + 1 : 2 * k] + sticks[k : k + 1], xrd=xrd)
    eps = rng.uniform(-mismatch, mismatch, len(rows) - 2 * k)
    p3 = profile_patterns([(bragg_shift(tt, e, 0.0, xrd.wavelength), a) for (tt, a), e in zip(sticks[2 * k :], eps)],
                          xrd=xrd)
    p3 = (p3 / np.maximum(p3.max(axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return np.concatenate([p1, p2, p3]), np.concatenate([m1, m2, np.ones(p3.shape, bool)])


def scan_queries(structures: list, rng: np.random.Generator, family: str = "train", xrd=None
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Scans at a laboratory step (:data:`SCAN_STEP`) of pymatgen ``structures`` as our measurement model makes them
    (:func:`perturb_measured`, ``family`` "train" or "heldout": lattice mismatch and anisotropic strain through each
    reflection's hkl, texture, Kα2, impurity (the next structure's reflections), widths, background, counting noise
    at 10³–10⁵ counts in the strongest point, partial windows), for choosing and calibrating the whole-pattern fit
    (:mod:`eacnn.retrieval.scanfit`) on validation structures. Each is (2θ [m] degrees at Cu Kα1, intensity [m],
    strongest point 1) over the window the scan measured. The unseen-scan evaluation (``scripts/unseen_scans.py``)
    makes its scans with other code at every step, and nothing here reads it."""
    from eacnn.config import XRDConfig
    from eacnn.physics.xrd import XRDSimulator

    base = xrd or XRDConfig()
    fine = dataclasses.replace(base, step=SCAN_STEP)
    sim = XRDSimulator(base)
    sticks, hkl, lattice = [], [], []
    for s in structures:
        p = sim.get_pattern(s)
        sticks.append((np.asarray(p.two_theta, float), np.asarray(p.intensity, float)))
        hkl.append(np.array([fam[0]["hkl"][-3:] for fam in p.hkls], dtype=float))
        lattice.append(s.lattice.matrix)
    impurities = sticks[1:] + sticks[:1] if len(sticks) > 1 else [None] * len(sticks)
    y, mask, _ = perturb_measured(sticks, MeasurementConfig(), rng, family=family, hkl=hkl, lattice=lattice,
                                  impurities=impurities, xrd=fine)
    x = fine.bin_centers()
    return [(x[m], yy[m].astype(np.float64)) for yy, m in zip(y, mask)]
