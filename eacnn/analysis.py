"""The paper's analyses on a built data set: retrieval tables under named pools and perturbation levels, the
search-match baseline, per-space-group accuracy, the symmetry case study and embedding statistics.

All functions take embeddings or a model plus a :class:`eacnn.dataset.CrystalDataset`; none trains anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .config import AugmentConfig
from .retrieval import Index, normalize, pool_accuracies

log = logging.getLogger(__name__)

__all__ = [
    "PERTURBATION_LEVELS",
    "Embeddings",
    "embed_dataset",
    "query_patterns",
    "retrieval_table",
    "per_spacegroup_accuracy",
    "case_study",
    "neighbour_purity",
    "top_candidates",
    "spacegroup_predictions",
    "equivalent_hits",
    "spacegroup_summary",
    "accuracy_by_training_frequency",
]

#: The query conditions reported everywhere: 0 = clean simulated (the paper's protocol), 1–3 = perturbed.
PERTURBATION_LEVELS = {0: "clean", 1: "mild", 2: "moderate", 3: "strong"}


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
    from .augment import augment_patterns

    rows = np.asarray(rows)
    if level == 0:
        return dataset.vectors[rows]
    sticks = [dataset.sticks(int(i)) for i in rows]
    out = []
    rng = np.random.default_rng(seed + 1000 * level)
    for start in range(0, len(sticks), 1024):
        out.append(augment_patterns(sticks[start : start + 1024], AugmentConfig.level(level), rng, dataset.config.xrd))
    return np.concatenate(out)


def _model_digest(model) -> str:
    import hashlib

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
        import hashlib

        from .paths import atomic_write_bytes, cache_dir

        key = hashlib.sha256(repr((_model_digest(model), dataset.key, split, tuple(levels), seed)).encode())
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
        import io

        buf = io.BytesIO()
        np.savez(buf, index=rows, structures=emb.structures, **{f"q{lvl}": v for lvl, v in z_q.items()})
        atomic_write_bytes(path, buf.getvalue())
    return emb


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
    rank, material_id, formula, space group, crystal system, similarity and whether it is the query's own."""
    pos = int(np.flatnonzero(emb.index == query_row)[0])
    scores, top = Index(emb.structures).search(emb.patterns[level][pos : pos + 1], k=k)
    rows = emb.index[top[0]]
    table = dataset.labels.iloc[rows][["material_id", "formula", "spacegroup_symbol", "crystal_system"]].copy()
    table.insert(0, "rank", np.arange(1, len(rows) + 1))
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


def neighbour_symmetry(emb: Embeddings, dataset, level: int = 0) -> pd.DataFrame:
    """How symmetric the nearest wrong candidates are: for every query, the best-ranked candidate that is *not*
    its own structure, and whether it shares the query's crystal system, Bravais lattice and space group
    (percent of queries). Also the same for the wrong top-1 candidates alone."""
    labels = dataset.labels.iloc[emb.index]
    cs = labels["crystal_system"].to_numpy()
    sg = labels["spacegroup_number"].to_numpy()
    bl = np.array([bravais_lattice(s, c) for s, c in zip(labels["spacegroup_symbol"], cs)])
    _, top = Index(emb.structures).search(emb.patterns[level], k=2)
    own = np.arange(len(emb.index))
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


def spacegroup_predictions(embeddings: Sequence[Embeddings], dataset, classifier=None, level: int = 0,
                           seed: int = 0, train_split: Sequence[str] = ("train", "val")) -> pd.DataFrame:
    """Per test query: is its space group named right — by the top-1 structure each retrieval method returns, and
    by a direct space-group classifier (:class:`eacnn.classifier.SpaceGroupClassifier`) of the same query pattern?

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
