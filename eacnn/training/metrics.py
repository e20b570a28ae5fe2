"""The rank of the right answer: one function and one tie rule for training validation and retrieval.

A candidate scored *equal* to the true one counts against the query (a pessimistic rank), so a model that maps
every structure to the same point scores Top-1 = 1/n, never 100 %.

>>> import numpy as np
>>> true_rank(np.array([[0.9, 0.9, 0.1]]), np.array([1]))   # a tie with candidate 0: rank 2, not 1
array([2])
"""

from __future__ import annotations

import numpy as np

__all__ = ["true_rank", "topk_from_ranks"]


def true_rank(sim, true_index):
    """1-based rank [m] of each query's true candidate among the columns of ``sim`` [m, n] (numpy or torch);
    ties count against the query."""
    rows = np.arange(len(true_index))
    true = sim[rows, true_index]  # [m]
    return (sim >= true[:, None]).sum(1)


def topk_from_ranks(ranks, ks) -> dict[int, float]:
    """Fraction (0–1) of queries whose true candidate ranks within the first k, for each k."""
    ranks = np.asarray(ranks)
    return {int(k): float(np.mean(ranks <= k)) if len(ranks) else float("nan") for k in ks}
