"""Copies of one crystal written down differently, and how far a model's structure embedding moves under each.

A physical description of a crystal must not depend on the frame (rotation), the origin (translation), the order
in which the atoms are listed (permutation) or the cell chosen (supercell). The tests and chapter 3 check the
towers with the same copies.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

__all__ = ["random_rotation", "symmetry_copies", "invariance_check"]


def random_rotation(rng: np.random.Generator, proper: bool = True) -> np.ndarray:
    """A random orthogonal 3×3 matrix, uniform (Haar) over SO(3), or over O(3) with ``proper=False``."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))  # unique QR: uniform over O(3)
    if proper and np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def symmetry_copies(structure, seed: int = 0, supercell=(2, 1, 1)) -> dict:
    """The same crystal written down five ways (a pymatgen ``Structure`` each):

    ``original``; ``rotated`` (Cartesian frame turned by a random rotation); ``origin shifted`` (every fractional
    coordinate moved by one random vector); ``atoms permuted`` (sites listed in a random order); and a ``supercell``
    (``2x1x1`` by default).
    """
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    s = structure
    rot = random_rotation(rng)
    shift = rng.random(3)
    order = rng.permutation(len(s))
    label = "x".join(str(n) for n in supercell)
    return {
        "original": s,
        "rotated": Structure(Lattice(s.lattice.matrix @ rot.T), s.species, s.frac_coords),
        "origin shifted": Structure(s.lattice, s.species, (s.frac_coords + shift) % 1.0),
        "atoms permuted": Structure(s.lattice, [s.species[i] for i in order], s.frac_coords[order]),
        f"{label} supercell": s * tuple(supercell),
    }


def invariance_check(models: Mapping[str, object], structure, seed: int = 0) -> pd.DataFrame:
    """Cosine similarity of each :func:`symmetry_copies` copy's structure embedding to the original's.

    Args:
        models: name -> :class:`eacnn.models.EACNN` (any weights: invariance must hold for all of them).
        structure: a pymatgen ``Structure``.
        seed: seed of the random rotation, shift and permutation.

    Returns:
        DataFrame, one row per copy, one column per model; 1 everywhere for an invariant embedding.
    """
    copies = symmetry_copies(structure, seed)
    table = {}
    for name, model in models.items():
        z = model.encode_structures(list(copies.values()), progress=False)  # [n_copies, d], unit norm
        table[name] = (z @ z[0]).cpu().numpy()
    return pd.DataFrame(table, index=list(copies))
