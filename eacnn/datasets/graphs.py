"""Periodic graphs of crystals for the structure tower, in MACE's conventions.

A graph is a dict of numpy arrays (what the dataset caches):

=================  =============  ============================================================================
key                shape, dtype   meaning
=================  =============  ============================================================================
``atomic_numbers`` [n] int64      Z of each site (the majority species of a disordered site)
``positions``      [n, 3] f32     Cartesian coordinates, Å
``cell``           [3, 3] f32     lattice vectors as rows, Å
``edge_index``     [2, E] int64   row 0 = sender j, row 1 = receiver i
``unit_shifts``    [E, 3] int8    lattice translations of the sender image, in cell units
=================  =============  ============================================================================

The edge vector is ``positions[receiver] - positions[sender] + unit_shifts @ cell`` (MACE's ``shifts``).
Neighbour lists come from mace-torch (``mace.data.neighborhood.get_neighborhood``, matscipy underneath).
"""

from __future__ import annotations

import contextlib
import io
from functools import lru_cache

import numpy as np

from eacnn.errors import StructureError

__all__ = ["structure_graph", "collate_graphs", "GRAPH_KEYS", "mace_neighborhood"]

GRAPH_KEYS = ("atomic_numbers", "positions", "cell", "edge_index", "unit_shifts")


@lru_cache(maxsize=1)
def mace_neighborhood():
    """mace-torch's ``get_neighborhood``, imported on first use. Importing mace prints a notice about the optional
    cuequivariance package to stdout; it is kept off the book's pages and the CLI's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        from mace.data.neighborhood import get_neighborhood
    return get_neighborhood


def structure_graph(structure, r_max: float, allow_isolated: bool = True) -> dict[str, np.ndarray]:
    """The periodic radius graph of a pymatgen ``Structure`` with cutoff ``r_max`` (Å).

    An atom with no neighbour within ``r_max`` (e.g. in bcc Cs, nearest neighbour 5.3 Å) receives no message; its
    features are its own embedding. It is kept by default, so that every MP-20 test structure stays in the pool.

    Raises:
        StructureError: empty structure, or (``allow_isolated=False``) an atom with no neighbour within ``r_max``.
    """
    get_neighborhood = mace_neighborhood()
    if structure is None or len(structure) == 0:
        raise StructureError("cannot build a graph of an empty structure")
    if not r_max > 0:
        raise StructureError(f"r_max must be positive, got {r_max!r}")
    z = np.array([max(site.species.items(), key=lambda kv: kv[1])[0].Z for site in structure], dtype=np.int64)
    cell = np.array(structure.lattice.matrix, dtype=np.float64)
    pos = np.array(structure.cart_coords, dtype=np.float64)
    edge_index, _shifts, unit_shifts, _cell = get_neighborhood(
        positions=pos, cutoff=float(r_max), pbc=(True, True, True), cell=cell
    )
    receivers_seen = np.bincount(edge_index[1], minlength=len(z))
    if not allow_isolated and np.any(receivers_seen == 0):
        lonely = int(np.argmin(receivers_seen))
        raise StructureError(f"site {lonely} ({structure[lonely].species_string}) has no neighbour within {r_max} Å")
    return {
        "atomic_numbers": z,
        "positions": pos.astype(np.float32),
        "cell": cell.astype(np.float32),
        "edge_index": edge_index.astype(np.int64),
        "unit_shifts": np.rint(unit_shifts).astype(np.int8),
    }


def collate_graphs(graphs: list[dict[str, np.ndarray]]) -> dict:
    """Concatenate graphs into one disjoint batch of torch tensors.

    Returns:
        dict with ``atomic_numbers`` [N] long, ``positions`` [N, 3] float32, ``edge_index`` [2, E] long (offset),
        ``shifts`` [E, 3] float32 (Cartesian, Å), ``unit_shifts`` [E, 3] float32, ``batch`` [N] long (graph of
        each node), ``ptr`` [B + 1] long, ``cell`` [B, 3, 3] float32, ``num_graphs`` int.
    """
    import torch

    if not graphs:
        raise StructureError("collate_graphs got an empty list")
    n_nodes = np.array([len(g["atomic_numbers"]) for g in graphs])
    ptr = np.concatenate([[0], np.cumsum(n_nodes)])
    edge_index = np.concatenate([g["edge_index"] + ptr[i] for i, g in enumerate(graphs)], axis=1)
    unit_shifts = np.concatenate([g["unit_shifts"].astype(np.float32) for g in graphs])
    cells = np.stack([g["cell"] for g in graphs]).astype(np.float32)  # [B, 3, 3]
    edge_graph = np.repeat(np.arange(len(graphs)), [g["edge_index"].shape[1] for g in graphs])
    shifts = np.einsum("ei,eij->ej", unit_shifts, cells[edge_graph])  # [E, 3]
    return {
        "atomic_numbers": torch.from_numpy(np.concatenate([g["atomic_numbers"] for g in graphs])).long(),
        "positions": torch.from_numpy(np.concatenate([g["positions"] for g in graphs]).astype(np.float32)),
        "edge_index": torch.from_numpy(edge_index).long(),
        "shifts": torch.from_numpy(shifts.astype(np.float32)),
        "unit_shifts": torch.from_numpy(unit_shifts),
        "batch": torch.from_numpy(np.repeat(np.arange(len(graphs)), n_nodes)).long(),
        "ptr": torch.from_numpy(ptr).long(),
        "cell": torch.from_numpy(cells),
        "num_graphs": len(graphs),
    }
