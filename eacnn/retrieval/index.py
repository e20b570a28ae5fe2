"""Retrieval: find the structures whose embeddings lie nearest a query pattern's embedding.

Similarity is the inner product of L2-normalised embeddings (cosine). Two interchangeable backends answer the
same question: an exact torch matrix product (default; GPU when the embeddings live there) and FAISS
(``IndexFlatIP``, exact, when ``faiss`` is installed) — tested to give the same answers.

Every accuracy names its pool: a Top-1 over 9,046 candidates and one over the 256 structures of a batch are
different numbers, and published figures use different pools.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from eacnn.errors import EACNNError
from eacnn.training.metrics import true_rank

log = logging.getLogger(__name__)

__all__ = ["Index", "RetrievalResult", "topk_accuracy", "pool_accuracies", "normalize", "have_faiss", "query_latency"]

DEFAULT_KS = (1, 3, 5, 10)


def have_faiss() -> bool:
    """True when the optional FAISS backend can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def normalize(x) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 numpy (torch tensors are moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise EACNNError(f"embeddings must be a 2-D array [n, d], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise EACNNError("embeddings contain NaN or inf")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


class Index:
    """Exact cosine-similarity index over ``embeddings`` [n, d].

    Args:
        embeddings: candidate embeddings (normalised here).
        ids: names of the candidates (default: their row numbers).
        backend: ``"torch"``, ``"faiss"`` or ``"auto"`` (FAISS when installed, else torch).
    """

    def __init__(self, embeddings, ids: Sequence[str] | None = None, backend: str = "torch"):
        if backend not in ("torch", "faiss", "auto"):
            raise EACNNError(f"backend must be 'torch', 'faiss' or 'auto', got {backend!r}")
        if backend == "auto":
            backend = "faiss" if have_faiss() else "torch"
        if backend == "faiss" and not have_faiss():
            raise EACNNError("backend='faiss' needs the faiss package: pip install faiss-cpu")
        self.backend = backend
        self.embeddings = normalize(embeddings)  # [n, d]
        n = len(self.embeddings)
        if n == 0:
            raise EACNNError("cannot build an index over zero candidates")
        self.ids = np.asarray(ids if ids is not None else np.arange(n)).astype(str)
        if len(self.ids) != n:
            raise EACNNError(f"{len(self.ids)} ids for {n} embeddings")
        self._faiss = None
        if backend == "faiss":
            import faiss

            self._faiss = faiss.IndexFlatIP(self.embeddings.shape[1])
            self._faiss.add(self.embeddings)

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries, k: int = 10, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar candidates of each query.

        Returns:
            scores [m, k] (cosine similarity, descending) and indices [m, k] into the candidates.
        """
        q = normalize(queries)
        if q.shape[1] != self.embeddings.shape[1]:
            raise EACNNError(f"query width {q.shape[1]} != index width {self.embeddings.shape[1]}")
        k = min(int(k), len(self))
        if self._faiss is not None:
            scores, idx = self._faiss.search(q, k)
            return scores, idx.astype(np.int64)
        import torch

        cand = torch.from_numpy(self.embeddings)
        out_s, out_i = [], []
        for start in range(0, len(q), batch_size):
            sim = torch.from_numpy(q[start : start + batch_size]) @ cand.T  # [b, n]
            s, i = torch.topk(sim, k, dim=1)
            out_s.append(s.numpy())
            out_i.append(i.numpy())
        return np.concatenate(out_s), np.concatenate(out_i).astype(np.int64)

    def rank_of(self, queries, true_index: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """1-based rank of each query's true candidate (:func:`eacnn.training.metrics.true_rank`: ties count against
        the query, as in training validation)."""
        q = normalize(queries)
        true_index = np.asarray(true_index, dtype=np.int64)
        ranks = np.empty(len(q), dtype=np.int64)
        for start in range(0, len(q), batch_size):
            sim = q[start : start + batch_size] @ self.embeddings.T  # [b, n]
            ranks[start : start + batch_size] = true_rank(sim, true_index[start : start + batch_size])
        return ranks


def query_latency(index: "Index", queries, k: int = 10, batch: int = 1, repeat: int = 3) -> float:
    """Milliseconds per query of ``index.search`` on ``queries`` [m, d], sent ``batch`` at a time (best of
    ``repeat`` passes after one warm-up call)."""
    import time

    q = normalize(queries)
    index.search(q[:batch], k=k)  # warm-up: thread pools, first allocation
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for start in range(0, len(q), batch):
            index.search(q[start : start + batch], k=k)
        best = min(best, time.perf_counter() - t)
    return 1000.0 * best / len(q)


@dataclass
class RetrievalResult:
    """Top-k accuracies (percent) of one set of queries against one named pool."""

    pool: str  # e.g. "MP-20 test (9,046)"
    n_pool: int  # candidates per query
    n_queries: int
    topk: dict = field(default_factory=dict)  # k -> accuracy in percent
    ranks: np.ndarray | None = None  # [n_queries] 1-based rank of the true candidate

    def as_row(self) -> dict:
        return {"pool": self.pool, "candidates": self.n_pool, "queries": self.n_queries,
                **{f"top{k}": v for k, v in self.topk.items()}}


def topk_accuracy(query_emb, pool_emb, true_index: Sequence[int] | None = None, ks: Sequence[int] = DEFAULT_KS,
                  pool: str = "pool", backend: str = "torch") -> RetrievalResult:
    """Top-k retrieval accuracy: a hit when the true candidate ranks within the first k.

    Args:
        query_emb: [m, d] query embeddings (e.g. patterns).
        pool_emb: [n, d] candidate embeddings (e.g. structures).
        true_index: [m] row of each query's true candidate (default: query i ↔ candidate i).
        pool: a name for the pool, reported with the numbers.
    """
    q = normalize(query_emb)
    if true_index is None:
        if len(q) != len(normalize(pool_emb)):
            raise EACNNError("true_index is needed when queries and candidates differ in number")
        true_index = np.arange(len(q))
    index = Index(pool_emb, backend=backend)
    if backend == "torch":
        ranks = index.rank_of(q, np.asarray(true_index))
    else:  # FAISS answers top-k lists; a query missing from its top-max(k) list has rank > max(k)
        kmax = max(ks)
        _, idx = index.search(q, kmax)
        hit = idx == np.asarray(true_index)[:, None]
        ranks = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, kmax + 1)
    acc = {int(k): float(100.0 * np.mean(ranks <= k)) for k in ks}
    return RetrievalResult(pool, len(index), len(q), acc, ranks)


def pool_accuracies(query_emb, pool_emb, ks: Sequence[int] = DEFAULT_KS, pools: Sequence[int | str] = ("all", 1000, 256),
                    name: str = "test", seed: int = 0) -> list[RetrievalResult]:
    """Top-k for paired queries/candidates (query i ↔ candidate i) over pools of several sizes.

    ``"all"``: every candidate; an integer n: disjoint random pools of n (seeded), each query searched only in its
    own pool, accuracies averaged over all queries (in-batch retrieval is n = 256).
    """
    q, c = normalize(query_emb), normalize(pool_emb)
    if len(q) != len(c):
        raise EACNNError(f"paired retrieval needs as many queries as candidates, got {len(q)} and {len(c)}")
    results = []
    rng = np.random.default_rng(seed)
    for size in pools:
        if size == "all":
            results.append(topk_accuracy(q, c, ks=ks, pool=f"{name} ({len(q):,})"))
            continue
        size = int(size)
        if size >= len(q):  # no smaller pool to draw: the whole-pool row already says it
            continue
        order = rng.permutation(len(q))
        groups = [order[i : i + size] for i in range(0, len(q) - size + 1, size)]  # drop the ragged tail
        ranks = np.concatenate([topk_accuracy(q[g], c[g], ks=ks).ranks for g in groups])
        acc = {int(k): float(100.0 * np.mean(ranks <= k)) for k in ks}
        results.append(RetrievalResult(f"{name}, pools of {size:,}", size, len(ranks), acc, ranks))
    return results
