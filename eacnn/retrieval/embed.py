"""Embeddings of a data set: every structure of a split and its query patterns at each perturbation level.

Used by retrieval (:mod:`eacnn.retrieval.database` embeds its candidates with it) and by the book's analyses
(:mod:`eacnn.analysis`). ``model=None`` is the search-match baseline: the embeddings are the simulated patterns.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from eacnn.config import AugmentConfig
from eacnn.paths import atomic_write_bytes, cache_dir
from eacnn.physics.perturb import augment_patterns
from eacnn.retrieval.index import normalize

log = logging.getLogger(__name__)

__all__ = ["Embeddings", "embed_dataset", "query_patterns", "model_digest"]


@dataclass
class Embeddings:
    """Structure embeddings of some rows of a data set and the pattern embeddings of their queries."""

    index: np.ndarray  # [n] rows of the data set
    structures: np.ndarray  # [n, d] L2-normalised
    patterns: dict  # level -> [n, d] L2-normalised query embeddings
    name: str  # e.g. "eacnn (ours)" or "search-match"


def query_patterns(dataset, rows: np.ndarray, level: int, seed: int = 0) -> np.ndarray:
    """Query patterns [n, n_bins] of the given rows: clean (level 0, the cached vectors) or perturbed from the
    cached sticks with ``AugmentConfig.level(level)`` and a fixed seed (the same queries for every model)."""
    rows = np.asarray(rows)
    if level == 0:
        return dataset.vectors[rows]
    sticks = [dataset.sticks(int(i)) for i in rows]
    out = []
    rng = np.random.default_rng(seed + 1000 * level)
    for start in range(0, len(sticks), 1024):
        out.append(augment_patterns(sticks[start : start + 1024], AugmentConfig.level(level), rng, dataset.config.xrd))
    return np.concatenate(out)


def model_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def embed_dataset(model, dataset, split: str = "test", levels: Sequence[int] = (0, 1, 2, 3), seed: int = 0,
                  name: str = "model", progress: bool = True, cache: bool = True) -> Embeddings:
    """Embed every structure of ``split`` and its query patterns at each perturbation level.

    ``model=None`` gives the search-match baseline: the "embeddings" are the clean simulated patterns themselves
    (cosine similarity of the query against every candidate's simulated pattern).

    With ``cache``, model embeddings are stored under :func:`eacnn.paths.cache_dir`, keyed by the model's weights,
    the data set's key, the split, the levels and the seed, so later chapters reuse them.
    """
    rows = dataset.indices(split)
    path = None
    if cache and model is not None:
        key = hashlib.sha256(repr((model_digest(model), dataset.key, split, tuple(levels), seed)).encode())
        path = cache_dir() / f"embeddings-{key.hexdigest()[:20]}.npz"
        if path.is_file():
            try:
                with np.load(path) as f:
                    if f["index"].shape == rows.shape and np.array_equal(f["index"], rows):
                        return Embeddings(rows, f["structures"], {lvl: f[f"q{lvl}"] for lvl in levels}, name)
            except Exception as err:  # a corrupt cache file is reported and recomputed
                log.warning("embedding cache %s unreadable (%s); recomputing", path, err)
    queries = {lvl: query_patterns(dataset, rows, lvl, seed) for lvl in levels}
    if model is None:
        return Embeddings(rows, normalize(dataset.vectors[rows]), {k: normalize(v) for k, v in queries.items()},
                          name)
    graphs = [dataset.graph(int(i)) for i in rows]
    z_s = model.encode_graphs(graphs, dataset.vectors[rows], progress=progress).numpy()
    z_q = {lvl: normalize(model.encode_patterns(q, progress=False).numpy()) for lvl, q in queries.items()}
    emb = Embeddings(rows, normalize(z_s), z_q, name)
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, index=rows, structures=emb.structures, **{f"q{lvl}": v for lvl, v in z_q.items()})
        atomic_write_bytes(path, buf.getvalue())
    return emb
