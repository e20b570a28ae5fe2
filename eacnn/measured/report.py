"""How identification fares on measured patterns of known phases: the rank of the right phase, the verdict, and
the verdict when that phase is missing from the database; precision and recall of "match" over them all."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from eacnn.retrieval.identify import identify

__all__ = ["identification_report", "verdict_quality"]


def identification_report(grids: dict, db, rerank: int = 10, filters: Sequence[str] = ("none", "elements")
                          ) -> pd.DataFrame:
    """One row per (pattern, filter): the rank of the first candidate with the phase's reduced formula, the top-1
    answer, its final score and the verdict; then the same search with every candidate of that formula removed
    (``verdict if absent``: a trustworthy tool says "no confident match" there).

    Args:
        grids: phase formula (e.g. ``"MnO"``) -> :class:`eacnn.measured.preprocess.GridResult`.
        db: a :class:`eacnn.retrieval.database.SavedDatabase`.
        filters: ``"none"`` and/or ``"elements"`` (candidates made of the phase's elements only).
    """
    from pymatgen.core import Composition

    reduced = db.labels["formula"].map(lambda f: Composition(f).reduced_formula).to_numpy()
    rows = []
    for phase, grid in grids.items():
        comp = Composition(phase)
        right = reduced == comp.reduced_formula  # [n]
        for filt in filters:
            elements = sorted(el.symbol for el in comp.elements) if filt == "elements" else None
            present = identify(grid.vector, grid.covered, db, top=len(db), elements=elements, rerank=rerank)
            hits = present.hits
            is_right = right[hits["row"].to_numpy()]
            absent = identify(grid.vector, grid.covered, db, top=1, elements=elements, rerank=rerank, exclude=right)
            top, other = hits.iloc[0], absent.hits.iloc[0] if len(absent.hits) else None
            rows.append({
                "phase": phase, "filter": "+".join(elements) if elements else "none",
                "rank": int(np.flatnonzero(is_right)[0] + 1) if is_right.any() else np.nan,
                "top-1": f"{top.id} {top.formula} {top.spacegroup}", "top-1 right": bool(is_right[0]),
                present.score_name: present.score, "verdict": present.verdict,
                "verdict if absent": absent.verdict,
                "absent: top-1": f"{other.id} {other.formula}" if other is not None else "-",
            })
    return pd.DataFrame(rows)


def verdict_quality(report: pd.DataFrame) -> dict:
    """Precision and recall of "match" over a report's rows: each row asks twice, with its phase present (a match
    is right when the top-1 is the right formula) and absent (any match is wrong)."""
    present_match = report["verdict"] == "match"
    right = present_match & report["top-1 right"]
    wrong = (present_match & ~report["top-1 right"]).sum() + (report["verdict if absent"] == "match").sum()
    matches = int(right.sum() + wrong)
    return {"matches": matches, "right matches": int(right.sum()),
            "precision": float(right.sum() / matches) if matches else float("nan"),
            "recall": float(right.sum() / len(report)) if len(report) else float("nan")}
