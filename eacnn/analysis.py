"""The paper's analyses on a built data set: retrieval tables under named pools and perturbation levels, the
search-match baseline, per-space-group accuracy, the symmetry case study and embedding statistics — and every
table or number a chapter of the book shows (Table 1 and 2 beside the published values of :mod:`eacnn.published`,
training summaries, model sizes, the crystal-system separation of the embedding space).

All functions take embeddings, training logs or models (plus a :class:`eacnn.datasets.dataset.CrystalDataset`);
none trains anything. The figures drawn from them are in :mod:`eacnn.book.plots`.
"""

from __future__ import annotations

import logging

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from eacnn.config import AugmentConfig
from eacnn.paths import DATA_DIR
from eacnn.published import published, published_table
from eacnn.retrieval.embed import Embeddings, query_patterns
from eacnn.retrieval.index import Index, normalize, pool_accuracies

log = logging.getLogger(__name__)

__all__ = [
    "PERTURBATION_LEVELS",
    "retrieval_table",
    "per_spacegroup_accuracy",
    "case_study",
    "neighbour_purity",
    "top_candidates",
    "spacegroup_predictions",
    "equivalent_hits",
    "spacegroup_summary",
    "accuracy_by_training_frequency",
    "whole_pool",
    "table1_comparison",
    "table2",
    "table2_numbers",
    "rare_groups",
    "spacegroup_summaries",
    "loss_reference_points",
    "perturbation_settings",
    "perturbed_examples",
    "best_epoch",
    "validation_pool",
    "training_summary",
    "ablation_table",
    "ablation_highlights",
    "epoch_search_table",
    "model_sizes",
    "embedding_spaces",
    "crystal_system_separation",
    "tsne_maps",
    "rerank_comparison",
]

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
    from eacnn.retrieval.index import normalize

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
# Training (chapter 4)
# ---------------------------------------------------------------------------------------------------------------
def loss_reference_points(n: int = 256, dim: int = 128, temperature: float = 0.07, seed: int = 0) -> dict:
    """The symmetric InfoNCE loss on two known cases, at a fixed ``temperature``: ``random`` (independent random
    unit vectors: close to ``log_n`` = log N, every pair equally likely) and ``aligned`` (each pattern equals its
    structure: towards 0)."""
    import torch

    from eacnn.training.losses import clip_loss

    gen = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)  # [n, dim]
    other = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)  # [n, dim]
    scale = torch.tensor(np.log(1.0 / temperature))
    return {"random": float(clip_loss(z, other, scale)), "log_n": float(np.log(n)),
            "aligned": float(clip_loss(z, z, scale))}


def perturbation_settings(levels=(1, 2, 3)) -> pd.DataFrame:
    """The settings of each perturbation level (:meth:`eacnn.config.AugmentConfig.level`), one column per level."""
    return pd.DataFrame({PERTURBATION_LEVELS[k]: vars(AugmentConfig.level(k)) for k in levels})


def perturbed_examples(dataset, row: int, levels=(1, 2, 3), seed: int = 0) -> dict:
    """One structure's query pattern at each perturbation level, as ``"<name> (level k)"`` -> [n_bins] vector."""
    return {f"{PERTURBATION_LEVELS[k]} (level {k})": query_patterns(dataset, np.array([row]), k, seed=seed)[0]
            for k in levels}


def best_epoch(log: pd.DataFrame) -> pd.Series:
    """The row of a training log that selection kept: the row marked ``kept`` in a shipped log (the epoch chosen
    after training, :func:`eacnn.training.checkpoint.export_checkpoint`), else the best ``val_score`` (mean of clean
    and perturbed validation Top-1) where the log has one, else the best clean ``val_top1`` (earlier logs)."""
    if "kept" in log and (log["kept"].fillna(0) == 1).sum() == 1:
        return log.loc[(log["kept"].fillna(0) == 1).idxmax()]
    score = log["val_score"] if "val_score" in log and log["val_score"].notna().any() else log["val_top1"]
    return log.loc[score.idxmax()]


def validation_pool(log: pd.DataFrame, default: int) -> int:
    """Candidates per validation query of a training log (``val_pool``); ``default`` for logs without it."""
    if "val_pool" in log and log["val_pool"].notna().any():
        return int(log["val_pool"].dropna().iloc[-1])
    return int(default)


def training_summary(logs: dict, n_val: int) -> pd.DataFrame:
    """One row per run (name -> per-epoch training log): epochs trained, the epoch kept, the validation pool, the
    kept epoch's clean and moderately perturbed validation Top-1 (percent), the final temperature and the
    training time (minutes). ``n_val``: validation pool of logs that do not record it."""
    rows = {}
    for name, log in logs.items():
        best = best_epoch(log)
        rows[name] = {"epochs": int(log["epoch"].max()), "best epoch": int(best["epoch"]),
                      "validation pool": validation_pool(log, n_val), "val Top-1 clean (%)": 100 * best["val_top1"],
                      "val Top-1 moderate (%)": 100 * best.get("val_top1_perturbed", np.nan),
                      "final temperature": float(log["temperature"].iloc[-1]),
                      "training time (min)": float(log["seconds"].sum() / 60)}
    return pd.DataFrame(rows).T


def ablation_table(path=None) -> pd.DataFrame:
    """The shipped ablation of the structure tower (``eacnn/data/ablation.csv``, written by
    ``scripts/ablation.py``); an empty DataFrame when the file is absent."""
    path = DATA_DIR / "ablation.csv" if path is None else path
    return pd.read_csv(path) if Path(path).is_file() else pd.DataFrame()


def ablation_highlights(ablation: pd.DataFrame) -> dict:
    """From :func:`ablation_table`: ``epochs`` per variant, the variant best on moderately perturbed validation
    queries (``best``: its structure tower; ``best_clean``, ``best_moderate``: its Top-1) and the paper tower's clean
    Top-1 (``paper_clean``). Empty for an empty table."""
    if len(ablation) == 0:
        return {}
    best = ablation.loc[ablation["val Top-1 moderate (%)"].idxmax()]
    paper = ablation[ablation["variant"] == "paper"].iloc[0]
    return {"epochs": int(ablation["epochs"].iloc[0]), "best": best["structure tower"],
            "paper_clean": float(paper["val Top-1 clean (%)"]), "best_clean": float(best["val Top-1 clean (%)"]),
            "best_moderate": float(best["val Top-1 moderate (%)"])}


def epoch_search_table(path=None) -> pd.DataFrame:
    """Top-1 (percent) as ``eacnn search`` answers, per validation condition (rows, then their ``mean``) and per
    epoch of a run trained without early stopping (columns: the epoch number, or the checkpoint's name when it is
    not ``epoch_N``): ``eacnn/data/epochs.csv``, written by ``scripts/select_rerank.py --checkpoints ... --out``.
    An empty DataFrame when the file is absent."""
    path = DATA_DIR / "epochs.csv" if path is None else path
    if not Path(path).is_file():
        return pd.DataFrame()
    records = pd.read_csv(path)
    order = list(dict.fromkeys(records["condition"]))
    names = list(dict.fromkeys(records["model"]))
    table = records.pivot_table(index="condition", columns="model", values="top1").loc[order, names]
    table.loc["mean"] = table.mean()
    table.columns = [int(c.split("_")[1]) if str(c).startswith("epoch_") and str(c).split("_")[1].isdigit()
                     else c for c in table.columns]
    table.columns.name = "epoch"
    return table


def _validation_grid(path, first: str | None = None, name: str = "rule") -> pd.DataFrame:
    """Top-1 per validation condition (rows, then their ``mean``) and rule (columns, in the file's order, ``first``
    leading) of a ``scripts/select_rerank.py`` grid CSV (columns condition, rule, top1); empty when it is absent."""
    if not Path(path).is_file():
        return pd.DataFrame()
    records = pd.read_csv(path)
    order = list(dict.fromkeys(records["condition"]))
    rules = list(dict.fromkeys(records["rule"]))
    rules = ([first] if first in rules else []) + [r for r in rules if r != first]
    table = records.pivot_table(index="condition", columns="rule", values="top1").loc[order, rules]
    table.loc["mean"] = table.mean()
    table.columns.name = name
    return table


def grid_value(table: pd.DataFrame, condition: str, rule: str) -> str:
    """One entry of a validation grid table (:func:`cell_fit_table`, :func:`rerank_depth_table`) as the book
    quotes it: one decimal, or "n/a" where the table (or that row or column) is absent."""
    found = not table.empty and rule in table.columns and condition in table.index
    return f"{table.loc[condition, rule]:.1f}" if found else "n/a"


def cell_fit_table(path=None) -> pd.DataFrame:
    """Top-1 (percent) as ``eacnn search`` answers, per validation condition (rows, then their ``mean``), refining
    lattice scales only ("isotropic") and with each candidate's cell fitted under each (prior against anisotropic
    strain, residual gain) setting: ``eacnn/data/cell_fit.csv``, written by ``scripts/select_rerank.py --cell-grid
    --out``. Columns in the file's order; an empty DataFrame when the file is absent."""
    return _validation_grid(DATA_DIR / "cell_fit.csv" if path is None else path, "isotropic", "refinement")


def rerank_depth_table(path=None) -> pd.DataFrame:
    """Top-1 (percent) as ``eacnn search`` answers, per validation condition (rows, then their ``mean``), for each
    depth "refine N cell M" (N candidates refined with lattice scales, the cells of the best M of them fitted):
    ``eacnn/data/rerank_depth.csv``, written by ``scripts/select_rerank.py --depth-grid --out``. Columns in the
    file's order; an empty DataFrame when the file is absent."""
    return _validation_grid(DATA_DIR / "rerank_depth.csv" if path is None else path, name="depth")


def model_sizes(models: dict) -> pd.DataFrame:
    """Parameters of each model (name -> :class:`eacnn.models.EACNN`): MACE, the whole structure tower, the XRD
    tower and the total."""
    rows = {}
    for name, m in models.items():
        s = m.structure_encoder
        rows[name] = {"MACE": _n_params(s.mace), "structure tower": _n_params(s),
                      "XRD tower": _n_params(m.xrd_encoder), "total": _n_params(m)}
    out = pd.DataFrame(rows).T
    out.index.name = "model"
    return out


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------------
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


def chance_purity(classes: np.ndarray) -> float:
    """The k-NN purity (%) of a space with no class structure: a random neighbour shares a point's class with the
    probability of that class's share, so the expected purity is 100 · Σ share²."""
    _, counts = np.unique(np.asarray(classes), return_counts=True)
    share = counts / counts.sum()
    return float(100 * np.sum(share**2))


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
# Measured patterns (chapter 9)
# ---------------------------------------------------------------------------------------------------------------
def rerank_comparison(report: pd.DataFrame, reranked: pd.DataFrame, top: int) -> pd.DataFrame:
    """Rank of the right formula per (phase, filter): by the model, and after re-ranking its ``top`` candidates
    (both :func:`eacnn.measured.report.identification_report` tables of the same patterns)."""
    return pd.DataFrame({"model rank": report["rank"].to_numpy(),
                         f"re-ranked (top {top})": reranked["rank"].to_numpy()},
                        index=pd.MultiIndex.from_frame(report[["phase", "filter"]]))


# ---------------------------------------------------------------------------------------------------------------
# Mixtures (issue 16)
# ---------------------------------------------------------------------------------------------------------------
def synthetic_mixture(sticks: Sequence[tuple[np.ndarray, np.ndarray]], fractions: Sequence[float],
                      rng: np.random.Generator, family: str = "train", strain_mean: float = -0.005,
                      strain_sd: float = 0.015, strain_max: float = 0.03) -> tuple[np.ndarray, np.ndarray, dict]:
    """A measured-like pattern of a mixture: each phase's reflections (2θ [p] degrees, areas [p]) under its own
    lattice mismatch ε ~ N(strain_mean, strain_sd) truncated to ±strain_max, areas scaled to sum to its intensity
    fraction, then every other effect of :func:`eacnn.physics.measurement.perturb_measured` (``family``) drawn once
    for the whole pattern (one instrument: zero shift, displacement, peak shape, Kα2, background, noise, coverage).
    Without Miller indices there is no preferred orientation; there is no impurity phase.

    Returns:
        pattern [n_bins] (max 1), covered [n_bins] bool, and ``{"strains": [k], "params": drawn values}``.
    """
    import dataclasses

    from eacnn.config import MeasurementConfig
    from eacnn.physics.measurement import perturb_measured
    from eacnn.physics.perturb import bragg_shift
    from eacnn.physics.wavelengths import CU

    strains = np.clip(rng.normal(strain_mean, strain_sd, len(sticks)), -strain_max, strain_max)
    tts, areas = [], []
    for (tt, area), f, eps in zip(sticks, fractions, strains):
        tts.append(bragg_shift(np.asarray(tt, np.float64), eps, 0.0, CU.kalpha1))
        areas.append(np.asarray(area, np.float64) * f / max(float(np.sum(area)), 1e-12))
    tt, area = np.concatenate(tts), np.concatenate(areas)
    order = np.argsort(tt)
    cfg = dataclasses.replace(MeasurementConfig(), scale_mean=0.0, scale_sd=0.0, scale_max=0.0)  # per phase here
    y, mask, params = perturb_measured([(tt[order], area[order])], cfg, rng, family=family)
    return y[0], mask[0], {"strains": strains, "params": params}


# reduced_formula and score_phases live with the mixture reports (eacnn.measured.report); named here as before
from eacnn.measured.report import reduced_formula, score_phases  # noqa: E402

__all__ += ["synthetic_mixture", "reduced_formula", "score_phases"]
