"""Identify a pattern: rank the structures of a database by the trained model, with a calibrated verdict.

A database is the union of sources: ``"embedded"`` (all 18,093 shipped MP-20 structures) and/or folders of CIF
files (ids = file stems). Its structure embeddings are computed once with the model and cached.

The "no confident match" verdict: a top-1 cosine similarity below :attr:`Calibration.threshold` means the answer
is not to be trusted. The threshold is fitted on the *validation* structures (never the test pool) with
moderately perturbed queries, each asked once with its structure in the pool and once without it (a phase absent
from the database), as the similarity above which a "match" verdict is right at least :attr:`Calibration.target`
of the time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from eacnn.datasets.structures import normalize_elements
from eacnn.errors import EACNNError
from eacnn.retrieval.embed import embed_dataset
from eacnn.retrieval.identify import open_set_threshold  # the one open-set rule, re-exported

log = logging.getLogger(__name__)

__all__ = ["Database", "Calibration", "load_database", "calibrate", "rank", "refine", "phase_report", "open_set_threshold"]


@dataclass
class Database:
    """Candidate structures and their embeddings."""

    labels: pd.DataFrame  # material_id, formula, spacegroup_symbol, spacegroup_number, crystal_system, source
    embeddings: np.ndarray  # [n, d] L2-normalised structure embeddings
    vectors: np.ndarray  # [n, 140] clean simulated patterns (for plots)
    elements: list  # [n] sets of element symbols
    parts: list = field(default_factory=list, repr=False)  # (first row, CrystalDataset) of each source

    def sticks(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Reflections (2θ [p] in degrees, areas [p]) of database row ``row``, from its source's data set."""
        ds, i = self._locate(row)
        return ds.sticks(i)

    def reflections(self, row: int):
        """Row ``row``'s reflections one by one (:meth:`eacnn.datasets.dataset.CrystalDataset.reflections`)."""
        ds, i = self._locate(row)
        return ds.reflections(i)

    def _locate(self, row: int):
        """(the source data set holding database row ``row``, its row there)."""
        for start, ds in reversed(self.parts):
            if row >= start:
                return ds, row - start
        raise EACNNError(f"row {row} is not in this database")


@dataclass(frozen=True)
class Calibration:
    threshold: float  # cosine similarity; below it the top-1 answer is "no confident match"
    target: float  # the top-1 precision the threshold guarantees on validation queries (fraction)
    n_queries: int  # validation queries it was fitted on
    level: int  # perturbation level of those queries


def _elements(formula_species: str) -> set:
    import json

    species = json.loads(formula_species)
    out = set()
    for sp in species:
        out.update(sp.keys() if isinstance(sp, dict) else [sp])
    return out


def load_database(sources: Sequence[str], model, cfg, progress: bool = True) -> Database:
    """Embed the structures of every source (``"embedded"`` or a folder of CIF files) with ``model``."""
    from eacnn.datasets.dataset import build_dataset
    from eacnn.datasets.structures import read_cif_folder

    parts = []
    for source in sources or ["embedded"]:
        if source == "embedded":
            ds = build_dataset(cfg.replace(**{"data.source": "embedded", "data.max_structures": 0}), progress=progress)
            table = None
        else:
            folder = Path(source)
            if not folder.is_dir():
                raise EACNNError(f"--database {source!r} is neither 'embedded' nor a folder of CIF files")
            found = read_cif_folder(folder, progress=progress)
            for name, reason in found.skipped:
                log.warning("skipped %s: %s", name, reason)
            if len(found.table) == 0:
                raise EACNNError(f"no readable CIF file in {folder}")
            table = found.table
            # reference phases are often larger cells than MP-20's (<= 20 atoms): do not drop them for size
            big = cfg.replace(**{"data.max_sites": max(cfg.data.max_sites, 512)})
            ds = build_dataset(big, structures_table=table, progress=progress)
        rows = np.arange(len(ds))
        emb = {}
        for split in ("train", "val", "test"):
            idx = ds.indices(split)
            if len(idx):
                emb[split] = (idx, embed_dataset(model, ds, split, levels=(0,), progress=progress).structures)
        z = np.zeros((len(ds), model.model_config.embed_dim), dtype=np.float32)
        for idx, e in emb.values():
            z[idx] = e
        species = ds.labels["material_id"].map(_species_lookup(ds, table)).to_numpy()
        labels = ds.labels[["material_id", "formula", "spacegroup_symbol", "spacegroup_number", "crystal_system"]]
        labels = labels.assign(source=source)
        parts.append((labels, z[rows], ds.vectors[rows], [_elements(s) for s in species], ds))
    starts = np.cumsum([0] + [len(p[0]) for p in parts[:-1]])
    return Database(pd.concat([p[0] for p in parts], ignore_index=True), np.concatenate([p[1] for p in parts]),
                    np.concatenate([p[2] for p in parts]), [e for p in parts for e in p[3]],
                    [(int(a), p[4]) for a, p in zip(starts, parts)])


def _species_lookup(ds, table) -> dict:
    from eacnn.datasets.structures import load_embedded

    source = table if table is not None else load_embedded()
    return dict(zip(source["material_id"], source["species"]))


def calibrate(model, cfg, target: float = 0.8, level: int = 2, progress: bool = False) -> Calibration:
    """Fit the no-confident-match threshold on the validation split (moderately perturbed queries), open-set.

    A real query's phase may be missing from the database; then the best candidate is wrong however similar it
    looks. So each validation query is scored twice: against the whole validation pool (its structure present)
    and against the pool without its own structure (absent: every top-1 answer is wrong). The threshold is the
    lowest top-1 similarity at which, over both cases together, a "match" verdict is right at least ``target`` of
    the time.
    """
    from eacnn.datasets.dataset import build_dataset
    from eacnn.retrieval.index import Index

    ds = build_dataset(cfg.replace(**{"data.source": "embedded"}), progress=progress)
    emb = embed_dataset(model, ds, "val", levels=(level,), seed=cfg.seed, progress=progress)
    scores, top = Index(emb.structures).search(emb.patterns[level], k=2)
    own = np.arange(len(top))
    present_s, present_ok = scores[:, 0], top[:, 0] == own
    absent_s = np.where(top[:, 0] == own, scores[:, 1], scores[:, 0])  # best candidate that is not the own one
    return Calibration(open_set_threshold(present_s, present_ok, absent_s, target), target, len(present_s), level)


def rank(vector: np.ndarray, model, db: Database, top: int = 10, elements: Sequence[str] | None = None
         ) -> pd.DataFrame:
    """The ``top`` candidates for one pattern [140]: rank, id, formula, space group, similarity.

    ``elements``: keep only candidates made of these elements (and no others); symbols in any case ("mn", "O").

    Raises:
        EACNNError: ``top`` is not a whole number >= 1, ``elements`` names no element or an unknown one
            (:class:`eacnn.errors.StructureError`), or no candidate is made of those elements.
    """
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise EACNNError(f"top must be a whole number >= 1, got {top!r}")
    if elements is not None:
        elements = normalize_elements(elements)
    z = model.encode_patterns(np.asarray(vector, dtype=np.float32)[None], progress=False).numpy()[0]
    sim = db.embeddings @ z  # [n]
    keep = np.ones(len(sim), bool)
    if elements:
        allowed = set(elements)
        keep = np.array([el <= allowed for el in db.elements])
        if not keep.any():
            raise EACNNError(f"no structure in the database is made only of {sorted(allowed)}")
    idx = np.flatnonzero(keep)
    best = idx[np.argsort(-sim[idx])[:top]]
    out = db.labels.iloc[best][["material_id", "formula", "spacegroup_symbol", "source"]].copy()
    out.insert(0, "rank", np.arange(1, len(best) + 1))
    out["similarity"] = sim[best]
    out["row"] = best
    return out.rename(columns={"material_id": "id", "spacegroup_symbol": "spacegroup"}).reset_index(drop=True)


#: Where :func:`refine` centres the lattice-scale search (Δd/d; each centre searched ±0.6 %): ±2 % in all.
REFINE_CENTRES = (-0.014, 0.0, 0.014)


def refine(vector: np.ndarray, hits: pd.DataFrame, db: Database, cfg, covered: np.ndarray | None = None
           ) -> pd.DataFrame:
    """Re-rank candidates by how well their pattern fits the query after refinement: a lattice scale (±2 %), zero
    shift and peak width, then the whole cell where the database holds each candidate's reflections one by one
    (:func:`eacnn.retrieval.identify.refine`, the refinement ``eacnn search`` does; here without the multi-scale
    query, so the lattice scale is searched around 1).

    Args:
        vector: [n_bins] the query on the model grid (e.g. :attr:`eacnn.measured.preprocess.GridResult.vector`).
        hits: candidates with a ``row`` column (database rows), as :func:`rank` returns them.
        db: the database the rows belong to.
        cfg: the model's config (its ``xrd`` grid and profile).
        covered: [n_bins] bool, the bins the measurement reaches (all when None).

    Returns:
        ``hits`` sorted by ``agreement`` (cosine over the covered bins, 0..1), with the fit's ``strain`` (Δd/d),
        ``zero_shift`` (degrees), ``width`` (degrees FWHM) and ``anisotropy``, and ``rank`` renumbered; the
        model's ``similarity`` is kept.
    """
    from eacnn.retrieval.identify import refine as refine_rows

    indexed = all(hasattr(ds, "reflections") for _, ds in db.parts)  # data sets index reflections on first use
    fits = refine_rows(vector, covered, hits["row"].to_numpy(), db.sticks, cfg.xrd,
                       reflections=db.reflections if indexed else None, centres=REFINE_CENTRES)
    out = hits.drop(columns=[c for c in fits.columns if c != "row" and c in hits]).merge(fits, on="row", how="left")
    out = out.sort_values("agreement", ascending=False, kind="stable").reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out


def phase_report(patterns: dict, model, db: Database, calibration: Calibration, cfg=None, rerank: int = 0
                 ) -> pd.DataFrame:
    """Where the right phase ranks for patterns of known phases, with and without an element filter, and what the
    verdict would be if that phase were absent from the database.

    Args:
        patterns: phase formula (e.g. ``"MnO2"``) -> :class:`eacnn.measured.preprocess.GridResult` of its measured pattern.
        model, db, calibration: as for :func:`rank` and :func:`calibrate`.
        cfg: the model's config (needed with ``rerank``).
        rerank: re-rank the model's top ``rerank`` with :func:`refine` (0: off).

    Returns:
        one row per (phase, filter): ``rank`` of the first candidate with the phase's reduced formula (NaN when
        none), that candidate, the top-1 candidate and its similarity, the ``verdict``, and ``verdict if absent``
        (the verdict for the best candidate of another formula, i.e. when the phase is missing from the database).
    """
    from pymatgen.core import Composition

    reduced = dict(zip(db.labels.formula.unique(), (Composition(f).reduced_formula for f in db.labels.formula.unique())))
    rows = []
    for phase, grid in patterns.items():
        target = Composition(phase).reduced_formula
        for filt in (None, sorted(el.symbol for el in Composition(phase).elements)):
            hits = rank(grid.vector, model, db, top=len(db.labels), elements=filt)
            right = (hits.formula.map(reduced) == target).to_numpy()
            verdict = "match" if hits.similarity.iloc[0] >= calibration.threshold else "no confident match"
            other = hits[~right].iloc[0] if (~right).any() else None
            absent = ("no candidate left" if other is None else
                      "match" if other.similarity >= calibration.threshold else "no confident match")
            if rerank:
                hits = refine(grid.vector, hits.head(rerank), db, cfg, covered=grid.covered)
                right = (hits.formula.map(reduced) == target).to_numpy()
            first = hits[right].iloc[0] if right.any() else None
            top = hits.iloc[0]
            rows.append({
                "phase": phase, "filter": "+".join(filt) if filt else "none",
                "rank": int(first["rank"]) if first is not None else np.nan,
                "right candidate": f"{first.id} {first.formula} {first.spacegroup}" if first is not None else "-",
                "top-1": f"{top.id} {top.formula} {top.spacegroup}", "similarity": float(top.similarity),
                "verdict": verdict, "verdict if absent": absent,
                "absent: top-1": f"{other.id} {other.formula}" if other is not None else "-",
                "absent: similarity": float(other.similarity) if other is not None else np.nan,
            })
    return pd.DataFrame(rows)
