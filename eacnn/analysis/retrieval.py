"""Retrieval tables of the paper (chapter 5): named pools and perturbation levels, the search-match baseline,
per-space-group accuracy, the symmetry case study (chapter 6), space-group predictions and Table 1 beside the
published values."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from eacnn.published import published_table
from eacnn.retrieval.embed import Embeddings, query_patterns
from eacnn.retrieval.index import Index, normalize, pool_accuracies

log = logging.getLogger(__name__)

__all__ = ["retrieval_table", "equivalent_hits", "per_spacegroup_accuracy", "case_study", "top_candidates", "neighbour_purity", "bravais_lattice", "neighbour_symmetry", "pattern_neighbour_symmetry", "symmetry_chance", "spacegroup_predictions", "spacegroup_summary", "accuracy_by_training_frequency", "whole_pool", "table1_layout", "pool_sizes", "table1_comparison", "chance_purity", "PERTURBATION_LEVELS", "FREQUENCY_BINS", "PUBLISHED_RETRIEVAL"]

#: The query conditions reported everywhere: 0 = clean simulated (the paper's protocol), 1–3 = perturbed.
PERTURBATION_LEVELS = {0: "clean", 1: "mild", 2: "moderate", 3: "strong"}


def retrieval_table(embeddings: Sequence[Embeddings], dataset=None, pools=("all", 1000, 256),
                    ks=(1, 3, 5, 10), seed: int = 0) -> pd.DataFrame:
    """One row per (method, condition, pool): Top-k accuracies in percent; with ``dataset``, also (whole pool only)
    the share of queries whose top-1 candidate has the right space group ("same SG top1") and whose top-1 is the
    right structure or one pymatgen's ``StructureMatcher`` calls the same crystal ("equivalent top1": a duplicate
    entry under another id is not a wrong answer)."""
    rows = []
    for emb in embeddings:
        for level, q in emb.patterns.items():
            results = pool_accuracies(q, emb.structures, ks=ks, pools=pools, name="MP-20 test", seed=seed)
            for res in results:
                row = {"method": emb.name, "condition": PERTURBATION_LEVELS.get(level, str(level)),
                       **res.as_row()}
                if dataset is not None and res.n_pool == len(emb.index):
                    _, top = Index(emb.structures).search(q, k=1)
                    sg = dataset.labels["spacegroup_number"].to_numpy()[emb.index]
                    row["same SG top1"] = float(100 * np.mean(sg[top[:, 0]] == sg))
                    row["equivalent top1"] = float(100 * np.mean(equivalent_hits(dataset, emb.index, top[:, 0])))
                rows.append(row)
    return pd.DataFrame(rows)


_MATCH_CACHE: dict = {}


def equivalent_hits(dataset, rows: np.ndarray, top1: np.ndarray) -> np.ndarray:
    """Per query: is its top-1 candidate its own structure or one ``StructureMatcher`` (pymatgen defaults) calls
    the same crystal? ``rows`` [n] are the queries' rows in ``dataset``; ``top1`` [n] positions into ``rows``.

    Only wrong answers with the query's reduced formula are matched (other formulas cannot be the same crystal),
    and verdicts are cached per (data set, pair), so the check costs little after the first call.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    rows = np.asarray(rows)
    top1 = np.asarray(top1)
    own = top1 == np.arange(len(rows))
    formula = dataset.labels["formula"].to_numpy()
    reduced = {}

    def red(i: int) -> str:
        if i not in reduced:
            from pymatgen.core import Composition

            reduced[i] = Composition(formula[i]).reduced_formula
        return reduced[i]

    matcher = StructureMatcher()
    out = own.copy()
    for q in np.flatnonzero(~own):
        a, b = int(rows[q]), int(rows[top1[q]])
        if red(a) != red(b):
            continue
        key = (dataset.key, min(a, b), max(a, b))
        if key not in _MATCH_CACHE:
            _MATCH_CACHE[key] = bool(matcher.fit(dataset.structure(a), dataset.structure(b)))
        out[q] = _MATCH_CACHE[key]
    return out


def per_spacegroup_accuracy(emb: Embeddings, dataset, level: int = 0, train_split: Sequence[str] = ("train", "val")
                            ) -> pd.DataFrame:
    """Top-1 over the whole pool, grouped by the query's space group, with the number of training structures
    of that group (so rare groups can be read against their frequency)."""
    labels = dataset.labels
    ranks = Index(emb.structures).rank_of(emb.patterns[level], np.arange(len(emb.index)))
    sg = labels["spacegroup_number"].to_numpy()[emb.index]
    symbols = labels["spacegroup_symbol"].to_numpy()[emb.index]
    in_train = labels[labels["split"].isin(train_split)].groupby("spacegroup_number").size()
    df = pd.DataFrame({"spacegroup_number": sg, "spacegroup_symbol": symbols, "top1": ranks <= 1,
                       "top5": ranks <= 5})
    out = df.groupby(["spacegroup_number", "spacegroup_symbol"]).agg(
        test_samples=("top1", "size"), top1=("top1", "mean"), top5=("top5", "mean")).reset_index()
    out[["top1", "top5"]] *= 100
    out["train_samples"] = out["spacegroup_number"].map(in_train).fillna(0).astype(int)
    return out.sort_values("test_samples", ascending=False).reset_index(drop=True)


def case_study(emb: Embeddings, dataset, spacegroup: int = 14, k: int = 3, level: int = 0) -> dict:
    """The paper's Fig. 3 by a rule: among test queries of ``spacegroup`` whose true structure ranks best
    (first, for a trained model), the one whose first and second candidates are closest in similarity.

    Returns:
        dict with ``query`` (row of the data set), ``candidates`` (DataFrame of the top-k: row, material_id,
        formula, space group, crystal system, similarity, correct) and ``rule`` (the rule in words).
    """
    labels = dataset.labels
    sg = labels["spacegroup_number"].to_numpy()[emb.index]
    index = Index(emb.structures)
    scores, top = index.search(emb.patterns[level], k=max(k, 2))
    candidates = np.flatnonzero(sg == spacegroup)
    if len(candidates) == 0:
        raise ValueError(f"no test query of space group {spacegroup}")
    # best rank of the own structure first (a weak model may retrieve none first), then the smallest margin
    ranks = index.rank_of(emb.patterns[level][candidates], candidates)
    best = candidates[ranks == ranks.min()]
    q = int(best[np.argmin(scores[best, 0] - scores[best, 1])])
    return {"query": int(emb.index[q]), "candidates": top_candidates(emb, dataset, int(emb.index[q]), k, level),
            "rule": f"among space-group-{spacegroup} test queries whose structure ranks best (rank {int(ranks.min())}), "
                    f"the smallest similarity margin between ranks 1 and 2"}


def top_candidates(emb: Embeddings, dataset, query_row: int, k: int = 3, level: int = 0) -> pd.DataFrame:
    """The ``k`` nearest candidates of one query (``query_row``: its row in the data set, one of ``emb.index``):
    rank, row (in the data set), material_id, formula, space group, crystal system, similarity and whether it is
    the query's own."""
    pos = int(np.flatnonzero(emb.index == query_row)[0])
    scores, top = Index(emb.structures).search(emb.patterns[level][pos : pos + 1], k=k)
    rows = emb.index[top[0]]
    table = dataset.labels.iloc[rows][["material_id", "formula", "spacegroup_symbol", "crystal_system"]].copy()
    table.insert(0, "rank", np.arange(1, len(rows) + 1))
    table.insert(1, "row", rows)
    table["similarity"] = scores[0]
    table["correct"] = top[0] == pos
    return table.reset_index(drop=True)


def neighbour_purity(z: np.ndarray, classes: np.ndarray, k: int = 10) -> float:
    """Mean share of each point's k nearest neighbours (cosine, itself excluded) that share its class (percent)."""
    _, idx = Index(z).search(z, k=k + 1)
    return float(100 * np.mean(classes[idx[:, 1:]] == classes[:, None]))


_SYSTEM_LETTER = {"triclinic": "a", "monoclinic": "m", "orthorhombic": "o", "tetragonal": "t", "trigonal": "h",
                  "hexagonal": "h", "cubic": "c"}


def bravais_lattice(spacegroup_symbol: str, crystal_system: str) -> str:
    """Pearson-style Bravais lattice symbol, e.g. ``P2_1/c`` + monoclinic -> ``mP``, ``R-3m`` -> ``hR``
    (A/B/C-centring written as C)."""
    centring = spacegroup_symbol.strip()[0].upper()
    centring = "C" if centring in "ABC" else centring
    return _SYSTEM_LETTER.get(crystal_system, "?") + centring


def _symmetry_labels(labels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cs = labels["crystal_system"].to_numpy()
    bl = np.array([bravais_lattice(s, c) for s, c in zip(labels["spacegroup_symbol"], cs)])
    return cs, bl, labels["spacegroup_number"].to_numpy()


def _neighbour_table(queries: np.ndarray, candidates: np.ndarray, labels: pd.DataFrame) -> pd.DataFrame:
    cs, bl, sg = _symmetry_labels(labels)
    _, top = Index(candidates).search(queries, k=2)
    own = np.arange(len(labels))
    other = np.where(top[:, 0] == own, top[:, 1], top[:, 0])  # nearest candidate that is not the query's own
    wrong = top[:, 0] != own
    rows = {}
    for name, mask in (("nearest other candidate (all queries)", np.ones(len(own), bool)),
                       ("wrong top-1 candidates", wrong)):
        if mask.sum() == 0:
            continue
        o, q = other[mask], own[mask]
        rows[name] = {"queries": int(mask.sum()), "same crystal system (%)": 100 * np.mean(cs[o] == cs[q]),
                      "same Bravais lattice (%)": 100 * np.mean(bl[o] == bl[q]),
                      "same space group (%)": 100 * np.mean(sg[o] == sg[q])}
    return pd.DataFrame(rows).T


def neighbour_symmetry(emb: Embeddings, dataset, level: int = 0) -> pd.DataFrame:
    """How symmetric the nearest wrong candidates are: for every query, the best-ranked candidate that is *not*
    its own structure, and whether it shares the query's crystal system, Bravais lattice and space group
    (percent of queries). Also the same for the wrong top-1 candidates alone."""
    return _neighbour_table(emb.patterns[level], emb.structures, dataset.labels.iloc[emb.index])


def pattern_neighbour_symmetry(dataset, rows: np.ndarray) -> pd.DataFrame:
    """:func:`neighbour_symmetry` for search-match: the clean simulated patterns of ``rows`` as queries and
    candidates (cosine), so the nearest other candidate is the most similar other pattern."""
    z = normalize(dataset.vectors[np.asarray(rows)].astype(np.float32))
    return _neighbour_table(z, z, dataset.labels.iloc[np.asarray(rows)])


def symmetry_chance(dataset, rows: np.ndarray) -> pd.Series:
    """The chance level of :func:`neighbour_symmetry`'s columns: the percent of random pairs of ``rows`` sharing a
    crystal system, a Bravais lattice, a space group (100 · Σ share² of each label)."""
    out = {}
    for name, values in zip(("same crystal system (%)", "same Bravais lattice (%)", "same space group (%)"),
                            _symmetry_labels(dataset.labels.iloc[np.asarray(rows)])):
        out[name] = chance_purity(values)
    return pd.Series(out)


def spacegroup_predictions(embeddings: Sequence[Embeddings], dataset, classifier=None, level: int = 0,
                           seed: int = 0, train_split: Sequence[str] = ("train", "val")) -> pd.DataFrame:
    """Per test query: is its space group named right — by the top-1 structure each retrieval method returns, and
    by a direct space-group classifier (:class:`eacnn.training.classifier.SpaceGroupClassifier`) of the same query pattern?

    Returns:
        one row per query with ``spacegroup_number``, ``spacegroup_symbol``, ``train_samples`` (structures of that
        group in ``train_split``), and per method a boolean column ``<name>`` (space group of the top-1 correct)
        plus ``classifier`` when one is given. All methods see the same queries (``query_patterns`` at ``level``).
    """
    first = embeddings[0]
    labels = dataset.labels
    sg = labels["spacegroup_number"].to_numpy()[first.index]
    in_train = labels[labels["split"].isin(train_split)].groupby("spacegroup_number").size()
    out = pd.DataFrame({"spacegroup_number": sg,
                        "spacegroup_symbol": labels["spacegroup_symbol"].to_numpy()[first.index]})
    out["train_samples"] = out["spacegroup_number"].map(in_train).fillna(0).astype(int)
    for emb in embeddings:
        if not np.array_equal(emb.index, first.index):
            raise ValueError(f"{emb.name} was embedded on other rows than {first.name}")
        _, top = Index(emb.structures).search(emb.patterns[level], k=1)
        out[emb.name] = sg[top[:, 0]] == sg
    if classifier is not None:
        pred, _ = classifier.predict(query_patterns(dataset, first.index, level, seed=seed))
        out["classifier"] = pred == sg
    return out


def spacegroup_summary(predictions: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Space-group accuracy (percent of queries) of each method on the subsets of Table 2 and beyond: all queries,
    Fm-3m, groups with one test sample, groups with at most 5 test samples, and groups never seen in training."""
    per_group = predictions.groupby("spacegroup_number")["spacegroup_number"].transform("size")
    subsets = {
        "all test queries": np.ones(len(predictions), bool),
        "Fm-3m (225)": predictions["spacegroup_number"].to_numpy() == 225,
        "groups with 1 test sample": per_group.to_numpy() == 1,
        "groups with ≤ 5 test samples": per_group.to_numpy() <= 5,
        "groups absent from training": predictions["train_samples"].to_numpy() == 0,
    }
    rows = []
    for name, mask in subsets.items():
        row = {"subset": name, "queries": int(mask.sum()),
               "space groups": int(predictions.loc[mask, "spacegroup_number"].nunique())}
        for m in methods:
            row[m] = float(100 * predictions.loc[mask, m].mean()) if mask.any() else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


#: Bins of "training structures of the query's space group" used by :func:`accuracy_by_training_frequency`.
FREQUENCY_BINS = ([-1, 0, 10, 100, 1000, np.inf], ["0", "1–10", "11–100", "101–1,000", "> 1,000"])


def accuracy_by_training_frequency(predictions: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Space-group accuracy (percent of queries) of each method, by how many training structures the query's space
    group has (:data:`FREQUENCY_BINS`); ``predictions`` from :func:`spacegroup_predictions`."""
    edges, names = FREQUENCY_BINS
    bins = pd.cut(predictions["train_samples"], edges, labels=names)
    grouped = predictions.groupby(bins, observed=False)
    out = pd.DataFrame({"groups": grouped["spacegroup_number"].nunique(), "queries": grouped.size()})
    for m in methods:
        out[m] = 100 * grouped[m].mean()
    out.index.name = "training structures"
    return out


# ---------------------------------------------------------------------------------------------------------------
# Table 1 beside the published numbers (chapter 5)
# ---------------------------------------------------------------------------------------------------------------
#: Published Table-1-style rows: label, pool in words, key prefix in :mod:`eacnn.published`.
PUBLISHED_RETRIEVAL = (("EACNN paper (Zhang et al. 2025)", "the paper's own test split", "eacnn.table1"),
                       ("PXRDGen contrastive encoder (Li et al. 2024)", "MP-20 test split", "pxrdgen.mp20"))


def whole_pool(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`retrieval_table` scored over each method's whole pool, indexed by (method, condition)."""
    largest = table.groupby("method")["candidates"].transform("max")
    return table[table["candidates"] == largest].set_index(["method", "condition"])


def table1_layout(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 layout of a :func:`retrieval_table`: one row per method and query condition over each
    method's whole pool, columns Top-1 / 3 / 5 / 10 (%) and, where computed, the right space group and a crystal
    ``StructureMatcher`` calls the same at rank 1 (%)."""
    full = whole_pool(table).reset_index()
    cols = {"method": "method", "condition": "condition", "top1": "Top-1 (%)", "top3": "Top-3 (%)",
            "top5": "Top-5 (%)", "top10": "Top-10 (%)", "equivalent top1": "same crystal at 1 (%)",
            "same SG top1": "right SG at 1 (%)"}
    return full[[c for c in cols if c in full]].rename(columns=cols)


def pool_sizes(table: pd.DataFrame, condition: str = "clean") -> pd.DataFrame:
    """Top-1 (%) of each method at ``condition`` against the number of candidates it is ranked among (one column
    per pool of the :func:`retrieval_table`, largest first): the same model scores higher among fewer."""
    part = table[table["condition"] == condition]
    wide = part.pivot_table(index="method", columns="candidates", values="top1", sort=False)
    wide = wide[sorted(wide.columns, reverse=True)]
    wide.columns = [f"Top-1 among {int(c):,} (%)" for c in wide.columns]
    return wide.reset_index()


def table1_comparison(table: pd.DataFrame, condition: str = "clean", ks=(1, 3, 5, 10)) -> pd.DataFrame:
    """The published retrieval numbers (quoted from :mod:`eacnn.published`, NaN where not published) above this
    book's methods over the whole pool at ``condition``; ``table`` from :func:`retrieval_table`."""
    rows = []
    for label, pool, prefix in PUBLISHED_RETRIEVAL:
        quoted = published_table(prefix)
        rows.append({"method": f"{label}, clean", "pool": pool, "source": "published",
                     **{f"top{k}": quoted["value"].get(f"{prefix}.top{k}", np.nan) for k in ks}})
    ours = whole_pool(table).xs(condition, level="condition")
    for method, row in ours.iterrows():
        rows.append({"method": f"{method}, {condition}", "pool": f"{row['pool']} ({int(row['candidates']):,})",
                     "source": "this book", **{f"top{k}": row.get(f"top{k}", np.nan) for k in ks}})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------

def chance_purity(classes: np.ndarray) -> float:
    """The k-NN purity (%) of a space with no class structure: a random neighbour shares a point's class with the
    probability of that class's share, so the expected purity is 100 · Σ share²."""
    _, counts = np.unique(np.asarray(classes), return_counts=True)
    share = counts / counts.sum()
    return float(100 * np.sum(share**2))
