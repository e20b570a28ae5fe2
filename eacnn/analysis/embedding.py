"""The embedding space by crystal system (chapter 7): purity of neighbours, silhouettes, t-SNE maps."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from eacnn.retrieval.embed import Embeddings
from eacnn.retrieval.index import normalize

from eacnn.analysis.retrieval import neighbour_purity

log = logging.getLogger(__name__)

__all__ = ["embedding_spaces", "crystal_system_separation", "tsne_maps"]


# The embedding space by crystal system (chapter 7)
# ---------------------------------------------------------------------------------------------------------------
def embedding_spaces(embeddings: Sequence[Embeddings], dataset, raw_patterns: bool = True) -> dict:
    """(method, space) -> [n, d] unit vectors of the same test rows: each model's structure tower and its XRD tower
    on clean patterns, and (``raw_patterns``) the raw simulated patterns as a reference."""
    spaces = {}
    for e in embeddings:
        spaces[(e.name, "structure tower")] = e.structures
        spaces[(e.name, "XRD tower (clean patterns)")] = e.patterns[0]
    if raw_patterns:
        spaces[("raw simulated patterns", "140 bins")] = normalize(dataset.vectors[embeddings[0].index])
    return spaces


def crystal_system_separation(spaces: dict, classes: np.ndarray, k: int = 10, silhouette_sample: int = 2000,
                              seed: int = 0) -> pd.DataFrame:
    """How well each space separates the classes (crystal systems): k-NN purity (:func:`neighbour_purity`, all
    points) and the cosine silhouette score (on a seeded sample of ``silhouette_sample`` points)."""
    from sklearn.metrics import silhouette_score  # sklearn: only the embedding-space analyses need it

    classes = np.asarray(classes)
    sample = np.random.default_rng(seed).choice(len(classes), size=min(silhouette_sample, len(classes)),
                                                replace=False)
    rows = {key: {f"{k}-NN crystal-system purity (%)": neighbour_purity(z, classes, k=k),
                  "silhouette by crystal system": float(silhouette_score(z[sample], classes[sample], metric="cosine"))}
            for key, z in spaces.items()}
    return pd.DataFrame(rows).T



def tsne_maps(spaces: dict, n: int = 1500, seed: int = 0) -> tuple[np.ndarray, dict]:
    """2-D t-SNE maps (cosine metric, PCA start) of the same seeded sample of ``n`` points in every space.

    Returns:
        (sample [n] positions into the spaces' rows, key -> [n, 2] map).
    """
    from sklearn.manifold import TSNE  # sklearn: only the embedding-space analyses need it

    size = len(next(iter(spaces.values())))
    pick = np.random.default_rng(seed).choice(size, size=min(n, size), replace=False)
    maps = {key: TSNE(n_components=2, metric="cosine", init="pca", random_state=seed,
                      perplexity=min(30, len(pick) // 4)).fit_transform(z[pick]) for key, z in spaces.items()}
    return pick, maps


# ---------------------------------------------------------------------------------------------------------------
