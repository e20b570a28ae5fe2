"""What one contrastive step sees: batches that hold look-alikes, which pairs are not negatives, and queries that
look measured.

* **Look-alikes** (hard negatives): a random batch of MP-20 mostly pairs structures that are easy to tell apart;
  :class:`LookalikeSampler` fills a fraction of each batch with groups of structures that share a space group, so
  the loss must separate patterns that differ in detail only.
* **Duplicates are not negatives**: MP-20 holds the same structure under several ids; :func:`duplicate_pairs`
  marks the pairs of a batch with the same reduced formula and space group, which
  :func:`eacnn.training.losses.clip_loss` leaves out of the softmax.
* **Measured-like queries**: :func:`measured_queries` strains a fraction of the cells anisotropically and simulates
  them again (so symmetry-equivalent reflections split as the strained metric says), then applies the model of
  real measurements of :mod:`eacnn.physics.measurement` with another structure of the batch as the impurity.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler

from eacnn.config import Config
from eacnn.physics.measurement import perturb_measured

__all__ = ["LookalikeSampler", "duplicate_pairs", "measured_queries", "strain_cell"]


class LookalikeSampler(Sampler):
    """Positions 0..n-1 in batches of ``batch_size`` where ``fraction`` of each batch comes in groups of
    ``group_size`` positions sharing a key (e.g. the space group); the rest is drawn at random. Seeded by
    ``(seed, epoch)``; call :meth:`set_epoch` each epoch. Incomplete batches are dropped."""

    def __init__(self, keys: np.ndarray, batch_size: int, fraction: float, seed: int = 0, group_size: int = 4):
        self.keys = np.asarray(keys)
        self.batch_size, self.fraction, self.seed, self.group_size = batch_size, fraction, seed, group_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.keys) // self.batch_size) * self.batch_size

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch, 4099])
        n, b, g = len(self.keys), self.batch_size, self.group_size
        n_batches = n // b
        groups_per_batch = int(round(self.fraction * b / g))
        chunks = []  # groups of g positions of one key each, from every key with at least g positions
        for key in np.unique(self.keys):
            members = rng.permutation(np.flatnonzero(self.keys == key))
            chunks += [members[i : i + g] for i in range(0, len(members) - g + 1, g)]
        chunks = [chunks[i] for i in rng.permutation(len(chunks))][: n_batches * groups_per_batch]
        used = np.zeros(n, bool)
        for chunk in chunks:
            used[chunk] = True
        rest = list(rng.permutation(np.flatnonzero(~used)))
        out, c = [], 0
        for _ in range(n_batches):
            batch = [int(i) for chunk in chunks[c : c + groups_per_batch] for i in chunk]
            c += groups_per_batch
            while len(batch) < b and rest:
                batch.append(int(rest.pop()))
            if len(batch) < b:
                break
            out.extend(rng.permutation(batch).tolist())
        return iter(out)


def duplicate_pairs(keys: np.ndarray) -> torch.Tensor:
    """[B, B] bool: True where items i != j share a key (e.g. reduced formula + space group)."""
    k = np.asarray(keys)
    same = torch.from_numpy(k[:, None] == k[None, :])
    same.fill_diagonal_(False)
    return same


def strain_cell(lattice: np.ndarray, strain: np.ndarray) -> np.ndarray:
    """The cell [3, 3] (rows a, b, c in Å) under a symmetric strain tensor ``strain`` [3, 3] (small, dimensionless):
    every lattice vector r becomes (I + E) r."""
    return np.asarray(lattice) @ (np.eye(3) + np.asarray(strain)).T


def _random_strains(rng: np.random.Generator, n: int, max_principal: float) -> np.ndarray:
    """n symmetric strain tensors [n, 3, 3]: principal strains U(±max) along random orthonormal axes."""
    q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))  # [n, 3, 3] random rotations (up to sign)
    e = rng.uniform(-max_principal, max_principal, (n, 3))
    return np.einsum("nij,nj,nkj->nik", q, e, q)


def measured_queries(cfg: Config, dataset, rows: np.ndarray, sticks: list, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(patterns [B, n_bins] float32, coverage masks [B, n_bins] bool) of the structures ``rows`` as measured.

    A fraction ``cfg.measure.p_aniso`` of the cells is strained (principal strains up to ``measure.aniso_max``)
    and simulated again when the data set can rebuild its structures (``dataset.structure(i)``); the others keep
    their cached sticks. Each pattern's impurity candidate is the next structure of the batch.
    """
    sticks = list(sticks)
    m = cfg.measure
    if m.p_aniso > 0 and m.aniso_max > 0 and hasattr(dataset, "structure"):
        chosen = np.flatnonzero(rng.random(len(rows)) < m.p_aniso)
        if len(chosen):
            from pymatgen.core import Lattice, Structure

            from eacnn.physics.xrd import simulate_batch

            strains = _random_strains(rng, len(chosen), m.aniso_max)
            strained = []
            for k, e in zip(chosen, strains):
                s = dataset.structure(int(rows[k]))
                strained.append(Structure(Lattice(strain_cell(s.lattice.matrix, e)), s.species, s.frac_coords))
            sim = simulate_batch(strained, cfg.xrd, progress=False)
            for j, k in enumerate(chosen):
                if j not in sim.failures and len(sim.stick_two_theta[j]):
                    sticks[k] = (sim.stick_two_theta[j], sim.stick_intensity[j])
    impurities = sticks[1:] + sticks[:1] if len(sticks) > 1 else [None] * len(sticks)
    patterns, masks, _ = perturb_measured(sticks, m, rng, family="train", impurities=impurities, xrd=cfg.xrd)
    if cfg.augment.measured_fraction >= 1:
        return patterns, masks
    legacy = np.flatnonzero(rng.random(len(sticks)) >= cfg.augment.measured_fraction)
    if len(legacy):  # the rest of the batch: the legacy corruptions, fully covered
        from eacnn.physics.perturb import augment_patterns

        patterns[legacy] = augment_patterns([sticks[k] for k in legacy], cfg.augment, rng, cfg.xrd)
        masks[legacy] = True
    return patterns, masks
