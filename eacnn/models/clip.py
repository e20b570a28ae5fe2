"""The two-tower contrastive model: structure tower + XRD tower + CLIP's learnable temperature."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from eacnn.config import Config, ModelConfig, XRDConfig
from eacnn.errors import PatternError
from eacnn.models.structure import StructureEncoder
from eacnn.models.xrd_tower import XRDEncoder

__all__ = ["EACNN"]


class EACNN(nn.Module):
    """Structure tower and XRD tower mapping into one L2-normalised space.

    Args:
        model: the model section of the config (towers, widths, temperature).
        xrd: the XRD settings used to simulate the structures' own patterns in :meth:`encode_structures`
            (and the pattern length n_bins).

    ``forward(batch)`` takes a dict with ``graph`` (from :func:`eacnn.datasets.graphs.collate_graphs`), ``pattern``
    ([B, n_bins], the input of the XRD tower, possibly augmented) and, for ``kind="eacnn"`` with
    ``use_sim_pattern``, ``structure_pattern`` ([B, n_bins], the structures' own clean patterns).
    """

    def __init__(self, model: ModelConfig | None = None, xrd: XRDConfig | None = None):
        super().__init__()
        self.model_config = model or ModelConfig()
        self.xrd_config = xrd or XRDConfig()
        self.structure_encoder = StructureEncoder(self.model_config)
        self.xrd_encoder = XRDEncoder(self.model_config)
        m = self.model_config
        # shared tower: z_structure = XRD tower(own clean pattern) + head(MACE, lattice), one pattern encoder for both
        self.shares_xrd_tower = m.kind == "eacnn" and m.use_sim_pattern and m.share_xrd_tower
        # CLIP: logits = exp(logit_scale) * cosine, logit_scale initialised at log(1 / 0.07), capped at log(100)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / self.model_config.init_temperature)))
        self.max_log_scale = math.log(self.model_config.max_logit_scale)

    @classmethod
    def from_config(cls, cfg: Config) -> "EACNN":
        return cls(cfg.model, cfg.xrd)

    @property
    def needs_structure_pattern(self) -> bool:
        """Whether the structure tower reads the structure's own simulated pattern."""
        return self.structure_encoder.uses_sim_pattern or self.shares_xrd_tower

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def temperature(self) -> float:
        """1 / exp(logit_scale), the softmax temperature of the similarities."""
        return float(1.0 / self.clamped_logit_scale().exp())

    def clamped_logit_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=self.max_log_scale)

    # -- training -------------------------------------------------------------------------------------------------
    def embed_structures(self, graph: dict, structure_pattern: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised structure embeddings [B, embed_dim] of a collated graph batch."""
        h = self.structure_encoder(graph, structure_pattern)  # [B, embed_dim]
        if self.shares_xrd_tower:
            h = h + self.xrd_encoder(self._own_pattern(structure_pattern, h.shape[0]))
        return nn.functional.normalize(h, dim=-1)

    def _own_pattern(self, structure_pattern: torch.Tensor | None, num_graphs: int) -> torch.Tensor:
        if structure_pattern is None:
            raise ValueError(
                "this model reads each structure's own simulated pattern: pass structure_pattern [B, n_bins]"
            )
        if structure_pattern.shape[0] != num_graphs:
            raise ValueError(f"structure_pattern has {structure_pattern.shape[0]} rows for {num_graphs} graphs")
        return structure_pattern

    def embed_patterns(self, pattern: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised pattern embeddings [B, embed_dim] of patterns [B, n_bins] (coverage mask [B, n_bins])."""
        return nn.functional.normalize(self.xrd_encoder(pattern, mask), dim=-1)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_struct [B, d], z_xrd [B, d], logit_scale []) with z L2-normalised and logit_scale clamped."""
        if self.shares_xrd_tower:
            # one pass of the XRD tower over queries and own patterns: its batch norm sees both in training
            pattern = batch["pattern"]
            own = self._own_pattern(batch.get("structure_pattern"), int(batch["graph"]["num_graphs"]))
            mask = batch.get("mask")
            if mask is not None:  # own patterns are simulated over the whole range
                mask = torch.cat([mask.to(pattern.dtype), torch.ones_like(own, dtype=pattern.dtype)])
            x = self.xrd_encoder(torch.cat([pattern, own.to(pattern.dtype)]), mask)  # [2B, embed_dim]
            b = pattern.shape[0]
            z_s = nn.functional.normalize(self.structure_encoder(batch["graph"]) + x[b:], dim=-1)
            z_x = nn.functional.normalize(x[:b], dim=-1)
            return z_s, z_x, self.clamped_logit_scale()
        z_s = self.embed_structures(batch["graph"], batch.get("structure_pattern"))
        z_x = self.embed_patterns(batch["pattern"], batch.get("mask"))
        return z_s, z_x, self.clamped_logit_scale()

    # -- inference --------------------------------------------------------------------------------------------------
    @contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.training
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # MACE on CPU is 10-20x slower with denormals
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def encode_graph_batches(
        self, batches: Iterable[dict], progress: bool = True, total: int | None = None
    ) -> torch.Tensor:
        """Embeddings of already-collated batches (dicts with ``graph`` and, when needed, ``structure_pattern``).

        Returns:
            [n, embed_dim] float32 on the CPU, L2-normalised, in batch order.
        """
        out = []
        with self._inference():
            for batch in tqdm(batches, desc="embedding structures", unit="batch", total=total, disable=not progress):
                graph = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch["graph"].items()}
                sp = batch.get("structure_pattern")
                sp = sp.to(self.device, torch.float32) if sp is not None else None
                out.append(self.embed_structures(graph, sp).float().cpu())
        if not out:
            return torch.zeros(0, self.model_config.embed_dim)
        return torch.cat(out)

    def encode_graphs(
        self,
        graphs: Sequence[dict],
        structure_patterns: np.ndarray | None = None,
        batch_size: int = 256,
        progress: bool = True,
    ) -> torch.Tensor:
        """Embeddings [n, embed_dim] of graph dicts (:func:`eacnn.datasets.graphs.structure_graph` format), e.g. cached ones.

        Args:
            graphs: n graph dicts.
            structure_patterns: [n, n_bins] the structures' own clean patterns (needed for ``kind="eacnn"``
                with ``use_sim_pattern``; ignored otherwise).
        """
        from eacnn.datasets.graphs import collate_graphs

        if self.needs_structure_pattern:
            if structure_patterns is None:
                raise ValueError("this model reads each structure's own pattern: pass structure_patterns [n, n_bins]")
            structure_patterns = check_patterns(structure_patterns, self.xrd_config.n_bins)
            if len(structure_patterns) != len(graphs):
                raise ValueError(f"{len(structure_patterns)} structure patterns for {len(graphs)} graphs")

        def batches() -> Iterator[dict]:
            for i in range(0, len(graphs), batch_size):
                batch = {"graph": collate_graphs(list(graphs[i : i + batch_size]))}
                if self.needs_structure_pattern:
                    batch["structure_pattern"] = torch.from_numpy(structure_patterns[i : i + batch_size])
                yield batch

        return self.encode_graph_batches(batches(), progress=progress, total=math.ceil(len(graphs) / batch_size))

    def encode_structures(self, structures: Sequence, batch_size: int = 256, progress: bool = True) -> torch.Tensor:
        """Embeddings [n, embed_dim] (CPU, L2-normalised) of pymatgen ``Structure`` objects.

        Builds each periodic graph with cutoff ``model.r_max`` and, for ``kind="eacnn"``, simulates its own
        pattern with :class:`eacnn.physics.xrd.XRDSimulator`.

        Raises:
            StructureError, NoReflectionsError: a structure cannot be turned into a graph or a pattern.
        """
        from eacnn.datasets.graphs import structure_graph
        from eacnn.physics.xrd import simulate_vectors

        structures = list(structures)
        graphs = [
            structure_graph(s, self.model_config.r_max)
            for s in tqdm(structures, desc="building graphs", unit="structure", disable=not progress)
        ]
        patterns = None
        if self.needs_structure_pattern:
            patterns = simulate_vectors(structures, self.xrd_config, progress=progress)
        return self.encode_graphs(graphs, patterns, batch_size=batch_size, progress=progress)

    def encode_patterns(self, patterns, batch_size: int = 1024, progress: bool = True, masks=None) -> torch.Tensor:
        """Embeddings [n, embed_dim] (CPU, L2-normalised) of patterns [n, n_bins] (each max-normalised here).

        Args:
            masks: [n, n_bins] coverage (True = measured); unmeasured bins are zeroed. All measured when None.

        Raises:
            PatternError: wrong shape, NaN/inf, or an all-zero pattern.
        """
        patterns = check_patterns(patterns, self.xrd_config.n_bins)
        m = None
        if masks is not None:
            m = np.broadcast_to(np.asarray(masks, dtype=np.float32).reshape(-1, patterns.shape[1]), patterns.shape)
            patterns = patterns * m
            if (patterns.max(axis=1) <= 0).any():
                raise PatternError("a pattern has no positive intensity inside its coverage mask")
        patterns = patterns / patterns.max(axis=1, keepdims=True)
        out = []
        with self._inference():
            starts = range(0, len(patterns), batch_size)
            for i in tqdm(starts, desc="embedding patterns", unit="batch", disable=not progress):
                x = torch.from_numpy(patterns[i : i + batch_size]).to(self.device)
                mi = None if m is None else torch.from_numpy(np.array(m[i : i + batch_size])).to(self.device)
                out.append(self.embed_patterns(x, mi).float().cpu())
        if not out:
            return torch.zeros(0, self.model_config.embed_dim)
        return torch.cat(out)


def check_patterns(patterns, n_bins: int) -> np.ndarray:
    """Patterns as a float32 array [n, n_bins]; PatternError naming the problem otherwise."""
    if torch.is_tensor(patterns):
        patterns = patterns.detach().cpu().numpy()
    arr = np.asarray(patterns, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != n_bins:
        raise PatternError(f"patterns must have shape [n, {n_bins}], got {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise PatternError(f"patterns {np.flatnonzero(bad)[:10].tolist()} contain NaN or inf")
    flat = arr.max(axis=1) <= 0
    if flat.any():
        raise PatternError(f"patterns {np.flatnonzero(flat)[:10].tolist()} have no positive intensity")
    return np.ascontiguousarray(arr)
