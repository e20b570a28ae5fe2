"""What one contrastive step sees: batches that hold look-alikes, which pairs are not negatives, and queries that
look measured.

* **Look-alikes** (hard negatives): a random batch of MP-20 mostly pairs structures that are easy to tell apart;
  :class:`LookalikeSampler` fills a fraction of each batch with groups of structures that share a space group, so
  the loss must separate patterns that differ in detail only.
* **Duplicates are not negatives**: MP-20 holds the same structure under several ids; :func:`duplicate_pairs`
  marks the pairs of a batch with the same reduced formula and space group, which
  :func:`eacnn.training.losses.clip_loss` leaves out of the softmax.
* **Measured-like queries** come from the one registry of query conditions, :mod:`eacnn.physics.conditions`
  (:func:`~eacnn.physics.conditions.measured_queries`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["LookalikeSampler", "duplicate_pairs"]


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
