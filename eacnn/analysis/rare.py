"""Table 2 of the paper: common and rare space groups (chapter 8)."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from eacnn.published import published
from eacnn.retrieval.embed import Embeddings

from eacnn.analysis.retrieval import PERTURBATION_LEVELS, spacegroup_predictions, spacegroup_summary

log = logging.getLogger(__name__)

__all__ = ["table2", "table2_numbers", "rare_groups", "spacegroup_summaries"]


# Table 2: common and rare space groups (chapter 8)
# ---------------------------------------------------------------------------------------------------------------
def _table2_subsets(per_sg: pd.DataFrame) -> dict:
    return {"Fm-3m (225)": per_sg[per_sg["spacegroup_number"] == 225],
            "groups with 1 test sample": per_sg[per_sg["test_samples"] == 1],
            "groups with ≤ 5 test samples": per_sg[per_sg["test_samples"] <= 5]}


def _pooled_top1(groups: pd.DataFrame) -> float:
    """Top-1 over all queries of some space groups (each group weighted by its test samples)."""
    if len(groups) == 0:
        return float("nan")
    return float(np.average(groups["top1"], weights=groups["test_samples"]))


def table2(per_sg: dict) -> pd.DataFrame:
    """The paper's Table 2 (quoted from :mod:`eacnn.published`) above ours: Top-1 (percent of queries) on Fm-3m, on
    the space groups with one test sample and on those with at most five.

    Args:
        per_sg: model name -> :func:`per_spacegroup_accuracy` table.
    """
    paper = "EACNN paper (published)"
    n_fm3m, n_single = published("eacnn.table2.fm3m.test_samples"), published("eacnn.table2.single.groups")
    rows = [{"model": paper, "subset": "Fm-3m (225)", "space groups": 1, "test samples": int(n_fm3m),
             "Top-1 (%)": published("eacnn.table2.fm3m.top1")},
            {"model": paper, "subset": "groups with 1 test sample", "space groups": int(n_single),
             "test samples": int(n_single), "Top-1 (%)": published("eacnn.table2.single.top1")}]
    for name, t in per_sg.items():
        for subset, groups in _table2_subsets(t).items():
            rows.append({"model": name, "subset": subset, "space groups": len(groups),
                         "test samples": int(groups["test_samples"].sum()), "Top-1 (%)": _pooled_top1(groups)})
    return pd.DataFrame(rows)


def table2_numbers(per_sg: pd.DataFrame) -> dict:
    """The Table 2 numbers of one model (a :func:`per_spacegroup_accuracy` table) for the prose: ``fm3m_n``
    (Fm-3m test samples), ``fm3m_top1``, ``n_single`` (groups with one test sample), ``single_top1`` and
    ``single_unseen`` (how many of those groups have no training structure)."""
    subsets = _table2_subsets(per_sg)
    fm3m, single = subsets["Fm-3m (225)"], subsets["groups with 1 test sample"]
    return {"fm3m_n": int(fm3m["test_samples"].sum()), "fm3m_top1": _pooled_top1(fm3m), "n_single": len(single),
            "single_top1": _pooled_top1(single), "single_unseen": int((single["train_samples"] == 0).sum())}


def rare_groups(per_sg: dict, max_test_samples: int = 2) -> pd.DataFrame:
    """The space groups with at most ``max_test_samples`` test queries: the first model's table, with every other
    model's Top-1 beside it as ``top1 (<name>)``, sorted by training structures."""
    (first, base), *others = per_sg.items()
    out = base[base["test_samples"] <= max_test_samples]
    for name, t in others:
        out = out.merge(t[["spacegroup_number", "top1"]].rename(columns={"top1": f"top1 ({name})"}),
                        on="spacegroup_number", how="left")
    return out.sort_values("train_samples", kind="stable").reset_index(drop=True)


def spacegroup_summaries(embeddings: Sequence[Embeddings], dataset, classifier=None, levels=(0, 2),
                         seed: int = 0) -> pd.DataFrame:
    """:func:`spacegroup_summary` of every retrieval method (and the classifier, if given) at each query level,
    stacked with a ``condition`` column ("clean", "moderate", ...)."""
    methods = [e.name for e in embeddings] + (["classifier"] if classifier is not None else [])
    parts = []
    for level in levels:
        preds = spacegroup_predictions(embeddings, dataset, classifier, level=level, seed=seed)
        parts.append(spacegroup_summary(preds, methods).assign(condition=PERTURBATION_LEVELS.get(level, str(level))))
    out = pd.concat(parts, ignore_index=True)
    return out[["condition", *out.columns.drop("condition")]]


# ---------------------------------------------------------------------------------------------------------------
