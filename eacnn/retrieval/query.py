"""Queries that do not rest on augmentation alone: the pattern read at a grid of lattice scales.

A measured cell is typically 1–3 % away from the DFT-relaxed cell of its database entry (PBE overestimates lattice
constants; solid solutions; temperature): every d-spacing is off by a common factor s, and by Bragg's law every peak
sits at sin θ' = sin θ / s. A model trained with ±3 % mismatch tolerates part of that; reading the query again as if
its d-spacings were multiplied by each s of a grid (:data:`SCALES`) and keeping, per candidate, the best
similarity over the grid removes the common factor up to half a grid step.

:func:`rescale` maps a binned pattern exactly: the pattern is a piecewise-constant density over the 0.5° bins, its
cumulative sum is interpolated at the images of the new bin edges, and differences give the new bin areas (intensity
is conserved; a bin whose image leaves the measured range loses coverage).

>>> import numpy as np
>>> from eacnn.config import XRDConfig
>>> v = np.zeros(140); v[40] = 1.0                     # a peak in the bin 30.0–30.5°
>>> y, m = rescale(v, 1.0, XRDConfig())
>>> bool(np.allclose(y, v))
True
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from eacnn.config import SearchConfig, XRDConfig

__all__ = ["SCALES", "SCALE_PENALTY", "RECALL_SCALES", "scale_prior", "rescale", "rescale_many", "multiscale_best",
           "query_embeddings", "multiscale_similarity", "multiscale_cosine", "recall_scales"]

#: Lattice scales s (d-spacings times s) a query is read at: 0.96–1.04 in 1 % steps (:class:`SearchConfig`).
SCALES = SearchConfig().scales

#: The prior on the mismatch: a candidate's similarity at scale s is lowered by this much per 1 % of |s − 1|, so a
#: look-alike that needs a larger rescaling than the right phase must be that much more similar. A measured cell
#: is usually within 1–2 % of its database entry; chosen on the validation split (``scripts/select_rerank.py``).
SCALE_PENALTY = SearchConfig().scale_penalty

#: The scales the cosine recall reads the query at (:func:`multiscale_cosine`): the same range, 4x finer (0.25 %), as
#: a binned profile's cosine falls off within a bin's width of peak shift where the model's embedding does not.
RECALL_SCALES = SearchConfig().recall_scales


def recall_scales(scales: np.ndarray = SCALES) -> np.ndarray:
    """[4 (S - 1) + 1] the range of a query's ``scales`` [S], 4x finer: where the cosine recall reads the query."""
    scales = np.asarray(scales, np.float64)
    return np.round(np.linspace(scales.min(), scales.max(), 4 * (len(scales) - 1) + 1), 5)


def scale_prior(scales: np.ndarray = SCALES, penalty: float | None = None) -> np.ndarray:
    """[S] what is added to a similarity found at each lattice scale: −penalty · |s − 1| / 1 %
    (:data:`SCALE_PENALTY` when ``penalty`` is None)."""
    penalty = SCALE_PENALTY if penalty is None else penalty
    return -penalty * np.abs(np.asarray(scales, np.float64) - 1.0) / 0.01


def _source_two_theta(two_theta: np.ndarray, scale: float, wavelength: float) -> np.ndarray:
    """Where in the measured pattern (degrees 2θ) the point ``two_theta`` of the rescaled pattern comes from: the
    rescaled pattern has every d-spacing times ``scale``, so sin θ_measured = sin θ · scale."""
    s = np.sin(np.radians(np.asarray(two_theta) / 2.0)) * scale
    return np.where(s < 1.0, np.degrees(2.0 * np.arcsin(np.clip(s, 0.0, 1.0))), np.inf)


def rescale(vector: np.ndarray, scale: float, xrd: XRDConfig | None = None, mask: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """A binned pattern [n_bins] read as if its d-spacings were multiplied by ``scale``.

    Returns:
        (pattern [n_bins] float32, max 1 unless empty; coverage mask [n_bins] bool: bins whose whole source interval
        lies inside the measured (masked) range).
    """
    cfg = xrd or XRDConfig()
    y = np.asarray(vector, dtype=np.float64)
    covered = np.ones(len(y), bool) if mask is None else np.asarray(mask, bool)
    edges = cfg.bin_edges()  # [n_bins + 1]
    cum = np.concatenate([[0.0], np.cumsum(np.where(covered, y, 0.0))])  # [n_bins + 1] at the edges
    src = _source_two_theta(edges, scale, cfg.wavelength)  # [n_bins + 1]
    inside = np.isfinite(src) & (src >= edges[0]) & (src <= edges[-1])
    c = np.interp(np.where(inside, src, edges[0]), edges, cum)
    out = np.where(inside[1:] & inside[:-1], np.diff(c), 0.0)  # [n_bins]
    # coverage: the measured fraction of each source interval, from the cumulative coverage
    cov = np.concatenate([[0.0], np.cumsum(covered.astype(float))])
    frac = np.diff(np.interp(np.where(inside, src, edges[0]), edges, cov)) / np.maximum(np.diff(src) / cfg.step,
                                                                                        1e-12)
    new_mask = inside[1:] & inside[:-1] & (frac > 0.999)
    out = np.where(new_mask, np.clip(out, 0.0, None), 0.0)
    top = out.max()
    return (out / top if top > 0 else out).astype(np.float32), new_mask


def rescale_many(vector: np.ndarray, scales: np.ndarray = SCALES, xrd: XRDConfig | None = None,
                 mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(patterns [S, n_bins], masks [S, n_bins]) of one pattern at each scale of ``scales``; a scale that leaves
    no intensity inside the window gives the unscaled pattern instead (it never wins)."""
    ys, ms, base = [], [], None
    for s in scales:
        y, m = rescale(vector, float(s), xrd, mask)
        if not y.max() > 0:  # the unscaled read, computed only when a scale needs it
            base = base if base is not None else rescale(vector, 1.0, xrd, mask)
            y, m = base
        ys.append(y)
        ms.append(m)
    return np.stack(ys), np.stack(ms)


def multiscale_best(z_scales: np.ndarray, candidates: np.ndarray, scales: np.ndarray = SCALES
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(best cosine similarity [n] plus the :func:`scale_prior` of its scale, that scale [n]) of every candidate
    [n, d] against a query embedded at each scale, ``z_scales`` [S, d] (all L2-normalised)."""
    sim = np.asarray(candidates) @ np.asarray(z_scales, dtype=np.float32).T + scale_prior(scales)[None]  # [n, S]
    best = sim.argmax(axis=1)
    return sim[np.arange(len(sim)), best], np.asarray(scales)[best]


def query_embeddings(encode: Callable, vector: np.ndarray, covered: np.ndarray | None, xrd: XRDConfig,
                     scales: np.ndarray = SCALES) -> np.ndarray:
    """[S, d] embeddings of the pattern read at each scale; ``encode(patterns, masks) -> [S, d]``."""
    ys, ms = rescale_many(vector, scales, xrd, covered)
    return encode(ys, ms)


def multiscale_similarity(embeddings: np.ndarray, z: np.ndarray, scales: np.ndarray = SCALES
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(best similarity [n], its scale [n]) of each candidate embedding [n, d] over the query's scales z [S, d], each
    scale's similarity with its :func:`eacnn.retrieval.query.scale_prior`."""
    return multiscale_best(z, embeddings, scales)


def multiscale_cosine(vectors: np.ndarray, vector: np.ndarray, covered: np.ndarray | None, xrd: XRDConfig,
                      scales: np.ndarray = RECALL_SCALES, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Search-match's score at every lattice scale: (best cosine [n] of each candidate's binned pattern with the
    query read at each of ``scales`` over the bins that read covers, plus the :func:`scale_prior` of its scale; that
    scale [n]). ``vectors`` [n, n_bins] (a database's simulated patterns, memory-mapped ones read ``chunk`` rows at
    a time)."""
    ys, ms = rescale_many(vector, scales, xrd, covered)  # [S, n_bins] each
    q = np.where(ms, ys, 0.0).astype(np.float32)
    qn = np.maximum(np.linalg.norm(q, axis=1), 1e-12)  # [S]
    m = ms.astype(np.float32).T  # [n_bins, S]
    prior = scale_prior(scales).astype(np.float32)  # [S]
    best = np.empty(len(vectors), np.float32)
    at = np.empty(len(vectors), np.int64)
    for lo in range(0, len(vectors), chunk):
        v = np.asarray(vectors[lo: lo + chunk], np.float32)  # [c, n_bins]
        cos = (v @ q.T) / (np.sqrt(np.maximum((v * v) @ m, 1e-12)) * qn[None]) + prior[None]  # [c, S]
        j = cos.argmax(axis=1)
        best[lo: lo + len(v)], at[lo: lo + len(v)] = cos[np.arange(len(v)), j], j
    return best, np.asarray(scales)[at]
