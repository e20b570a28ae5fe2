"""The structure tower: a MACE encoder of the periodic graph, pooled into one invariant vector (paper §2.3).

``kind="paper"``: MACE (2 layers) -> per-layer invariant readout -> mean over atoms -> MLP -> embedding.

``kind="eacnn"``: the same MACE features fused with two physics-informed inputs, each switchable for ablations:

* lattice descriptors (``use_lattice``), computed in torch from the cell and the atoms: log volume per atom,
  log density, and the ``lattice_n_d`` largest d-spacings 1/|G| among the *non-extinct* reciprocal-lattice vectors
  G (Z-weighted geometric structure factor |S(G)|² / (ΣZ)² above :data:`EXTINCTION_TOL`). Every G of length up to
  1 / ``lattice_d_min`` is enumerated, so the descriptors do not depend on the cell setting, and the extinction
  test removes the extra reflections of a supercell, so they do not depend on the supercell either (a 2×1×1
  supercell has S = 0 exactly at the new half-integer G).
* the structure's own clean simulated pattern (``use_sim_pattern``, batch key ``"structure_pattern"``, [B, 140])
  through a small 1D CNN fused before the head, or (``share_xrd_tower``) through the XRD tower itself, whose
  embedding the head then corrects additively (:class:`eacnn.models.EACNN` does the sum).

Every input of the tower is invariant to rotation, translation and atom order; mean and std pooling make the
embedding the same for any supercell of the same crystal.
"""

from __future__ import annotations

import contextlib
import io
import math
from functools import lru_cache

import torch

# mace prints a notice about the optional cuequivariance package to stdout on import: not for the book or the CLI
with contextlib.redirect_stdout(io.StringIO()):
    import mace  # noqa: F401  -- must precede e3nn: e3nn 0.4.4 cannot load its constants under torch >= 2.6 otherwise
    from e3nn import o3
    from mace.modules.blocks import (
        EquivariantProductBasisBlock,
        LinearNodeEmbeddingBlock,
        LinearReadoutBlock,
        RadialEmbeddingBlock,
        RealAgnosticInteractionBlock,
        RealAgnosticResidualInteractionBlock,
    )
    from mace.modules.utils import get_edge_vectors_and_lengths
    from mace.tools.scatter import scatter_sum
from torch import nn

from eacnn.config import ModelConfig
from eacnn.errors import StructureError

__all__ = ["StructureEncoder", "MACEFeatures", "PatternCNN", "lattice_descriptors", "NUM_ELEMENTS", "EXTINCTION_TOL"]

#: One-hot element table: Z = 1 .. 94 (H .. Pu).
NUM_ELEMENTS = 94
#: A reflection counts as extinct when |S(G)|² / (ΣZ)² is below this (strict extinctions give ~1e-30 in float64).
EXTINCTION_TOL = 1e-3
_AMU_PER_A3_TO_G_PER_CM3 = 1.66053907  # 1 amu / Å³ in g / cm³


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


def _hidden_irreps(channels: int, max_L: int) -> o3.Irreps:
    # "32x0e" for max_L = 0, "32x0e+32x1o" for max_L = 1: the natural-parity irreps MACE uses
    return o3.Irreps("+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_L + 1)))


class MACEFeatures(nn.Module):
    """MACE message passing on a batch of periodic graphs -> invariant per-atom features [n_nodes, layers * R].

    Built from mace-torch blocks: linear node embedding of the one-hot element, Bessel radial basis with
    polynomial cutoff, spherical harmonics of the edge directions, interaction blocks (the first plain, the rest
    residual) and the symmetric-contraction product basis of correlation order ν. Each layer's scalars (0e) are
    read out linearly to ``readout_dim`` channels and concatenated, as MACE sums its per-layer energy readouts.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.r_max = cfg.r_max
        node_attr_irreps = o3.Irreps(f"{NUM_ELEMENTS}x0e")
        scalars = o3.Irreps(f"{cfg.channels}x0e")
        hidden = _hidden_irreps(cfg.channels, cfg.max_L)
        sh_irreps = o3.Irreps.spherical_harmonics(cfg.max_ell)
        interaction_irreps = (sh_irreps * cfg.channels).sort()[0].simplify()
        edge_feats_irreps = o3.Irreps(f"{cfg.num_bessel}x0e")

        self.node_embedding = LinearNodeEmbeddingBlock(node_attr_irreps, scalars)
        self.radial_embedding = RadialEmbeddingBlock(
            r_max=cfg.r_max, num_bessel=cfg.num_bessel, num_polynomial_cutoff=cfg.num_poly_cutoff, radial_type="bessel"
        )
        self.spherical_harmonics = o3.SphericalHarmonics(sh_irreps, normalize=True, normalization="component")
        self.interactions = nn.ModuleList()
        self.products = nn.ModuleList()
        self.readouts = nn.ModuleList()
        node_irreps = scalars
        for i in range(cfg.num_interactions):
            last = i == cfg.num_interactions - 1
            out_irreps = scalars if last else hidden  # as in MACE, the last layer keeps only scalars
            block = RealAgnosticInteractionBlock if i == 0 else RealAgnosticResidualInteractionBlock
            self.interactions.append(
                block(
                    node_attrs_irreps=node_attr_irreps,
                    node_feats_irreps=node_irreps,
                    edge_attrs_irreps=sh_irreps,
                    edge_feats_irreps=edge_feats_irreps,
                    target_irreps=interaction_irreps,
                    hidden_irreps=out_irreps,
                    avg_num_neighbors=cfg.avg_num_neighbors,
                    radial_MLP=[cfg.radial_mlp] * 3,
                )
            )
            self.products.append(
                EquivariantProductBasisBlock(
                    node_feats_irreps=interaction_irreps,
                    target_irreps=out_irreps,
                    correlation=cfg.correlation,
                    num_elements=NUM_ELEMENTS,
                    use_sc=i > 0,
                )
            )
            self.readouts.append(LinearReadoutBlock(out_irreps, o3.Irreps(f"{cfg.readout_dim}x0e")))
            node_irreps = out_irreps
        self.out_dim = cfg.readout_dim * cfg.num_interactions

    def forward(self, graph: dict) -> torch.Tensor:
        # float32 even under autocast: bf16/fp16 spherical harmonics and tensor products break the symmetry
        # (errors ~1e-2); the towers' plain convolutions and MLPs may still run in reduced precision
        with torch.autocast(device_type=graph["positions"].device.type, enabled=False):
            return self._forward(graph)

    def _forward(self, graph: dict) -> torch.Tensor:
        z = graph["atomic_numbers"]  # [n_nodes]
        if z.numel() and (int(z.min()) < 1 or int(z.max()) > NUM_ELEMENTS):
            bad = z[(z < 1) | (z > NUM_ELEMENTS)].unique().tolist()
            raise StructureError(f"atomic numbers {bad} are outside the element table Z = 1..{NUM_ELEMENTS}")
        dtype = self.node_embedding.linear.weight.dtype
        node_attrs = nn.functional.one_hot(z - 1, NUM_ELEMENTS).to(dtype)  # [n_nodes, 94]
        vectors, lengths = get_edge_vectors_and_lengths(
            graph["positions"].to(dtype), graph["edge_index"], graph["shifts"].to(dtype)
        )  # [n_edges, 3], [n_edges, 1]
        edge_attrs = self.spherical_harmonics(vectors)  # [n_edges, (max_ell + 1)²]
        edge_feats, cutoff = self.radial_embedding(lengths, node_attrs, graph["edge_index"], z)  # [n_edges, n_bessel]
        node_feats = self.node_embedding(node_attrs)  # [n_nodes, C]
        readouts = []
        for interaction, product, readout in zip(self.interactions, self.products, self.readouts):
            node_feats, sc = interaction(
                node_attrs=node_attrs,
                node_feats=node_feats,
                edge_attrs=edge_attrs,
                edge_feats=edge_feats,
                edge_index=graph["edge_index"],
                cutoff=cutoff,
            )
            node_feats = product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)  # [n_nodes, hidden]
            readouts.append(readout(node_feats))  # [n_nodes, R]
        return torch.cat(readouts, dim=-1)  # [n_nodes, layers * R]


def _pool(x: torch.Tensor, batch: torch.Tensor, num_graphs: int, modes: list[str]) -> torch.Tensor:
    """Pool per-atom features [n, F] over each graph -> [B, F * len(modes)]."""
    ones = torch.ones_like(batch, dtype=x.dtype)
    count = scatter_sum(ones, batch, dim=0, dim_size=num_graphs).clamp(min=1.0)[:, None]  # [B, 1]
    total = scatter_sum(x, batch, dim=0, dim_size=num_graphs)  # [B, F]
    mean = total / count
    out = []
    for mode in modes:
        if mode == "mean":
            out.append(mean)
        elif mode == "sum":
            out.append(total)
        elif mode == "std":
            var = scatter_sum((x - mean[batch]) ** 2, batch, dim=0, dim_size=num_graphs) / count
            out.append(torch.sqrt(var + 1e-8))
    return torch.cat(out, dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# Lattice descriptors
# ---------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _atomic_masses() -> torch.Tensor:
    """Atomic masses (amu) of Z = 1..94, index Z - 1, float64."""
    from pymatgen.core.periodic_table import Element

    return torch.tensor([float(Element.from_Z(z).atomic_mass) for z in range(1, NUM_ELEMENTS + 1)], dtype=torch.float64)


def _half_box(hmax: list[int]) -> torch.Tensor:
    """Miller indices of one Friedel half of the box |h_i| <= hmax_i (000 excluded), [M, 3] float64."""
    h = torch.arange(0, hmax[0] + 1, dtype=torch.float64)
    k = torch.arange(-hmax[1], hmax[1] + 1, dtype=torch.float64)
    l = torch.arange(-hmax[2], hmax[2] + 1, dtype=torch.float64)
    hkl = torch.cartesian_prod(h, k, l)  # [M, 3]
    half = (hkl[:, 0] > 0) | ((hkl[:, 0] == 0) & ((hkl[:, 1] > 0) | ((hkl[:, 1] == 0) & (hkl[:, 2] > 0))))
    return hkl[half]


@torch.no_grad()
def lattice_descriptors(graph: dict, n_d: int = 12, d_min: float = 1.0) -> torch.Tensor:
    """Setting- and supercell-invariant lattice descriptors of each graph, [B, 2 + n_d] float32.

    Columns: log(V / N) (Å³ per atom, minus 3), log(ρ) (g/cm³, minus 1.5), then 1/d (Å⁻¹) of the ``n_d`` largest
    d-spacings among non-extinct reflections with d >= ``d_min``, ascending 1/d, padded with 1/d_min.

    Computed on the CPU in float64 (a short loop over structures: each has its own Miller-index box), then moved
    to the device of ``graph["positions"]``.
    """
    device = graph["positions"].device
    pos = graph["positions"].detach().cpu().double()
    cell = graph["cell"].detach().cpu().double()  # [B, 3, 3], rows are lattice vectors
    z = graph["atomic_numbers"].detach().cpu()
    ptr = graph["ptr"].detach().cpu().tolist() if "ptr" in graph else None
    if ptr is None:
        counts = torch.bincount(graph["batch"].detach().cpu(), minlength=int(graph["num_graphs"]))
        ptr = [0] + torch.cumsum(counts, 0).tolist()
    masses = _atomic_masses()
    g_max = 1.0 / d_min
    out = torch.full((len(ptr) - 1, 2 + n_d), g_max, dtype=torch.float64)
    for b in range(len(ptr) - 1):
        zb = z[ptr[b] : ptr[b + 1]]
        volume = torch.linalg.det(cell[b]).abs()
        n = max(len(zb), 1)
        out[b, 0] = torch.log(volume / n) - 3.0
        out[b, 1] = torch.log(masses[zb - 1].sum() * _AMU_PER_A3_TO_G_PER_CM3 / volume) - 1.5
        inv = torch.linalg.inv(cell[b])  # columns are a*, b*, c* (crystallographic, no 2π)
        frac = pos[ptr[b] : ptr[b + 1]] @ inv  # [n, 3]
        # |h| <= g_max |a| because h = G · a for any reciprocal vector G of length <= g_max
        hmax = torch.floor(g_max * torch.linalg.norm(cell[b], dim=1) + 1e-9).long().tolist()
        hkl = _half_box(hmax)  # [M, 3]
        g = torch.linalg.norm(hkl @ inv.T, dim=1)  # [M] 1/d
        keep = g <= g_max + 1e-12
        hkl, g = hkl[keep], g[keep]
        weight = zb.double() / zb.double().sum()  # [n]
        phase = 2.0 * math.pi * (hkl @ frac.T)  # [M, n]
        s_re = torch.cos(phase) @ weight
        s_im = torch.sin(phase) @ weight
        allowed = g[(s_re * s_re + s_im * s_im) > EXTINCTION_TOL]
        first = torch.sort(allowed).values[:n_d]
        out[b, 2 : 2 + len(first)] = first
    return out.to(device=device, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# The structure's own pattern
# ---------------------------------------------------------------------------------------------------------------
class PatternCNN(nn.Module):
    """A small 1D CNN of a 140-bin pattern -> [B, out_dim], keeping the 2θ axis (flattened, not pooled away)."""

    def __init__(self, channels: int = 32, n_bins: int = 140, out_dim: int = 128):
        super().__init__()
        half = max(channels // 2, 1)
        self.net = nn.Sequential(
            nn.Conv1d(1, half, 7, padding=3),
            nn.SiLU(),
            nn.MaxPool1d(2),  # 140 -> 70 bins
            nn.Conv1d(half, channels, 5, padding=2),
            nn.SiLU(),
            nn.MaxPool1d(2),  # 70 -> 35 bins
            nn.Conv1d(channels, channels, 5, padding=2),
            nn.SiLU(),
        )
        self.fc = nn.Linear(channels * (n_bins // 4), out_dim)  # every (channel, position): where peaks are
        self.out_dim = out_dim

    def forward(self, pattern: torch.Tensor) -> torch.Tensor:
        h = self.net(pattern[:, None, :])  # [B, channels, n_bins / 4]
        return nn.functional.silu(self.fc(h.flatten(1)))  # [B, out_dim]


# ---------------------------------------------------------------------------------------------------------------
# The tower
# ---------------------------------------------------------------------------------------------------------------
class StructureEncoder(nn.Module):
    """Periodic graph (+ lattice descriptors + own pattern for ``kind="eacnn"``) -> [B, embed_dim], not normalised.

    Args:
        cfg: the model section of the config.

    Forward inputs:
        graph: a batch from :func:`eacnn.datasets.graphs.collate_graphs` (``atomic_numbers``, ``positions``, ``edge_index``,
            ``shifts``, ``batch``, ``ptr``, ``cell``, ``num_graphs``).
        structure_pattern: [B, n_bins] clean simulated patterns of the same structures; required when
            ``uses_sim_pattern``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.pool_modes = cfg.pooling.split("+")
        self.mace = MACEFeatures(cfg)
        mace_dim = self.mace.out_dim * len(self.pool_modes)
        # MACE's features start tiny (~1e-5: Bessel radial inputs ~0.04, messages / avg_num_neighbors) and would
        # vanish next to the head's biases; a LayerNorm of the pooled vector puts them on an O(1) scale. Its eps is
        # far below their variance (~1e-9 at initialisation) so that it does not wash them out.
        self.mace_norm = nn.LayerNorm(mace_dim, eps=1e-12)
        self.uses_lattice = cfg.kind == "eacnn" and cfg.use_lattice
        # with a shared XRD tower the own pattern is encoded by EACNN's XRD tower, not here
        self.uses_sim_pattern = cfg.kind == "eacnn" and cfg.use_sim_pattern and not cfg.share_xrd_tower
        fused = mace_dim
        if self.uses_lattice:
            self.lattice_mlp = _mlp(2 + cfg.lattice_n_d, 64, 64)
            fused += 64
        if self.uses_sim_pattern:
            self.pattern_cnn = PatternCNN(cfg.sim_pattern_channels, n_bins=cfg.n_bins)
            fused += self.pattern_cnn.out_dim
        self.head = _mlp(fused, cfg.mlp_dim, cfg.embed_dim)

    def forward(self, graph: dict, structure_pattern: torch.Tensor | None = None) -> torch.Tensor:
        num_graphs = int(graph["num_graphs"])
        node = self.mace(graph)  # [n_nodes, layers * R]
        parts = [self.mace_norm(_pool(node, graph["batch"], num_graphs, self.pool_modes))]  # [B, F]
        if self.uses_lattice:
            desc = lattice_descriptors(graph, self.cfg.lattice_n_d, self.cfg.lattice_d_min)  # [B, 2 + n_d]
            parts.append(self.lattice_mlp(desc.to(node.dtype)))
        if self.uses_sim_pattern:
            if structure_pattern is None:
                raise ValueError(
                    "model.kind='eacnn' with use_sim_pattern=True needs batch['structure_pattern'] "
                    "([B, n_bins] clean simulated patterns of the structures)"
                )
            if structure_pattern.shape[0] != num_graphs:
                raise ValueError(f"structure_pattern has {structure_pattern.shape[0]} rows for {num_graphs} graphs")
            parts.append(self.pattern_cnn(structure_pattern.to(node.dtype)))
        return self.head(torch.cat(parts, dim=-1))  # [B, embed_dim]
