"""Robustness of retrieval to what real measurements do: lattice mismatch, anisotropic strain, texture, partial
scans, impurities, and two whole perturbation families (the training family and a second one that training never
draws from, but model selection and calibration read; the family no selection reads is in ``scripts/unseen_scans.py``).

Every condition turns the test structures into queries (:func:`condition_queries`), seeded, the same for every
method; every method ranks the whole test pool (:func:`robustness_table`). Methods are a trained model (its XRD
tower embeds the query, with the coverage mask when the tower reads one), or ``None`` for search-match (cosine
similarity of the query with each candidate's clean simulated pattern, over the bins the query covers). With
``multiscale`` the query is also read at the lattice scales of :data:`eacnn.retrieval.query.SCALES` and each
candidate keeps its best similarity.

Conditions (``CONDITIONS``, from the one registry :mod:`eacnn.physics.conditions`): ``clean``; ``iso ±k %`` (every d-spacing times 1 ± k %, the whole cell scaled:
``iso -2 %`` is a measured cell 2 % smaller than the database's); ``aniso 1.5 %`` (the cell strained by a random
symmetric strain with principal strains U(±1.5 %) along random axes and simulated again, so symmetry-equivalent
reflections split); ``texture`` (March–Dollase, r log-uniform 0.6–1.4 along a random reciprocal direction, through
each merged reflection's first hkl: equivalent members of a family are not averaged); ``window 20–60°`` and
``low angle 10–45°`` (only those bins measured); ``impurity 10 %`` (another test structure's reflections at 10 % of
the strongest); ``measured`` (:func:`eacnn.training.batches.measured_queries`, the family training draws from);
``second family`` (:func:`eacnn.physics.measurement.perturb_measured` with ``family="heldout"``: forms training never
sees).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from eacnn.measured.report import target_phrase
from eacnn.physics.conditions import CONDITIONS, condition_queries
from eacnn.retrieval.query import SCALES, rescale_many, scale_prior
from eacnn.training.metrics import true_rank

log = logging.getLogger(__name__)

__all__ = ["robustness_table", "method_embeddings", "scaled_similarities"]

def method_embeddings(model, dataset, rows: np.ndarray, split: str = "test") -> np.ndarray:
    """Candidate embeddings [n, d] (L2-normalised) of the rows: the model's structure embeddings, or the clean
    simulated patterns themselves for search-match (``model=None``)."""
    from eacnn.retrieval.embed import embed_dataset
    from eacnn.retrieval.index import normalize

    if model is None:
        return normalize(dataset.vectors[rows])
    emb = embed_dataset(model, dataset, split, levels=(0,), progress=False)
    assert np.array_equal(emb.index, rows), "rows must be the whole split"
    return emb.structures


def _embed_queries(model, patterns: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    from eacnn.retrieval.index import normalize

    if model is None:  # search-match: the pattern itself (masked candidates are handled by the caller)
        return normalize(patterns)
    reads = getattr(model.model_config, "xrd_mask_channel", False)
    if masks is not None and not reads:
        patterns = patterns * masks
    return model.encode_patterns(patterns, progress=False, masks=masks if reads else None).numpy()


def _similarities(model, candidates: np.ndarray, clean: np.ndarray, patterns: np.ndarray,
                  masks: np.ndarray | None, block: int = 1024) -> np.ndarray:
    """[n, n] cosine similarities of queries (rows) to candidates (columns)."""
    if model is None and masks is not None:  # search-match over the bins the query covers
        out = np.empty((len(patterns), len(clean)), np.float32)
        for a in range(0, len(patterns), block):
            q, m = patterns[a : a + block], masks[a : a + block].astype(np.float32)
            num = q @ clean.T  # [b, n] (q is 0 outside its mask)
            den = np.sqrt(m @ (clean**2).T) * np.linalg.norm(q, axis=1, keepdims=True)
            out[a : a + block] = num / np.maximum(den, 1e-12)
        return out
    return _embed_queries(model, patterns, masks) @ candidates.T


def scaled_similarities(model, candidates: np.ndarray, clean: np.ndarray, patterns: np.ndarray,
                        masks: np.ndarray | None, xrd, scales: np.ndarray = SCALES):
    """Yield (scale, similarities [q, n] of the queries read at that lattice scale to the candidates) for each scale
    of ``scales``: the multi-scale query (:func:`eacnn.retrieval.query.rescale_many`), one scale at a time so that
    a caller keeps only what it reduces (a running best, or a stack for a few queries)."""
    for s in scales:
        read = [rescale_many(p, np.array([s]), xrd, None if masks is None else m)
                for p, m in zip(patterns, masks if masks is not None else [None] * len(patterns))]
        yield float(s), _similarities(model, candidates, clean, np.concatenate([y for y, _ in read]),
                                      np.concatenate([m for _, m in read]))


def _refined_ranks(sim: np.ndarray, scale: np.ndarray | None, patterns: np.ndarray, masks: np.ndarray | None,
                   sel: np.ndarray, dataset, rows: np.ndarray, rerank: int, rule, truth: np.ndarray | None = None,
                   vectors: np.ndarray | None = None) -> np.ndarray:
    """Rank of the true candidate [len(sel)] after refining each selected query's best ``rerank`` candidates
    (:func:`eacnn.retrieval.identify.refine`, with the cells of the best :data:`~eacnn.retrieval.identify.CELL_FITS`
    fitted too) and re-ranking them by ``rule``
    (:func:`eacnn.retrieval.identify.rerank_score`; None: the default's), as ``eacnn search`` does; ``rerank + 1`` when
    it is not among them. Query q's true candidate is candidate q, or ``truth[k]`` for the k-th selected query.
    ``vectors`` [n, n_bins], the candidates' patterns: the search's cosine recall joins them to the shortlist
    (:class:`eacnn.config.SearchConfig` ``.cosine_recall``; none when None)."""
    from eacnn.retrieval.identify import SEARCH, refine_shortlist
    from eacnn.retrieval.query import multiscale_cosine

    out = np.empty(len(sel), np.int64)
    recall = vectors is not None and SEARCH.cosine_recall > 0
    for k, q in enumerate(sel):
        mask = None if masks is None else masks[q]
        cos, cos_at = multiscale_cosine(vectors, patterns[q], mask, dataset.config.xrd) if recall else (None, None)
        top, _, agree = refine_shortlist(patterns[q], mask, sim[q], rows,
                                         dataset.sticks, dataset.config.xrd, None if scale is None else scale[q],
                                         dataset.reflections, depth=rerank, rule=rule,
                                         model_prior=rule is None,  # search-match: the agreement alone
                                         recall=cos, recall_scale=cos_at)
        hit = np.flatnonzero(top == (q if truth is None else truth[k]))
        out[k] = 1 + int(np.sum(np.delete(agree, hit[0]) >= agree[hit[0]])) if len(hit) else rerank + 1
    return out


def robustness_table(methods: dict, dataset, conditions: Sequence[str] = CONDITIONS, split: str = "test",
                     multiscale: Sequence[str] = (), refined: Sequence[str] = (), refine_queries: int = 3000,
                     rerank: int | None = None, seed: int = 0, progress: bool = True,
                     as_measured_only: Sequence[str] = (), search_only: bool = False) -> pd.DataFrame:
    """Top-1 / Top-5 (percent) of every method under every condition, the whole split as the pool.

    Args:
        methods: name -> trained model, or None for search-match.
        multiscale: conditions also scored with the query read at every lattice scale of :data:`SCALES`.
        refined: conditions also scored as ``eacnn search`` answers (query "search": the multi-scale similarity
            where computed, else the one as measured, then the best ``rerank`` candidates
            (:data:`eacnn.retrieval.identify.RERANK_DEPTH` when None) refined and re-ranked by
            :data:`eacnn.retrieval.identify.RERANK` for a model, by the agreement alone for search-match, whose
            similarity is the unrefined pattern cosine) on
            ``refine_queries`` seeded queries (all when fewer), the whole split still the pool.
        as_measured_only: methods scored as measured only (a baseline kept for reference).
        search_only: only the "search" rows of the ``refined`` conditions, with the similarities of the selected
            queries alone (the same queries and answers as a whole run, in a fraction of the time: the rows that
            change when only the refinement changes).

    Returns:
        one row per (condition, method, query): ``top1``, ``top5``, ``queries``, ``candidates``.
    """
    from eacnn.retrieval.identify import RERANK_DEPTH

    rerank = RERANK_DEPTH if rerank is None else rerank
    rows = dataset.indices(split)
    clean = dataset.vectors[rows].astype(np.float32)
    cands = {name: method_embeddings(m, dataset, rows, split) for name, m in methods.items()}
    sel = np.sort(np.random.default_rng([seed, 314]).permutation(len(rows))[:refine_queries])
    records = []

    def record(condition, name, query, ranks):
        records.append({"condition": condition, "method": name, "query": query,
                        "top1": 100 * float(np.mean(ranks <= 1)), "top5": 100 * float(np.mean(ranks <= 5)),
                        "queries": len(ranks), "candidates": len(rows)})

    for condition in tqdm(conditions, desc="conditions", disable=not progress):
        if search_only and condition not in refined:
            continue
        patterns, masks = condition_queries(dataset, rows, condition, seed)
        if search_only:  # the selected queries alone: query k is the sel[k]-th row
            patterns, masks = patterns[sel], None if masks is None else masks[sel]
        for name, model in methods.items():
            if search_only and name in as_measured_only:
                continue
            sim = _similarities(model, cands[name], clean, patterns, masks)
            if not search_only:
                record(condition, name, "as measured", true_rank(sim, np.arange(len(rows))))
            if name in as_measured_only:
                continue
            scale = None
            if condition in multiscale:
                best = np.full_like(sim, -np.inf)
                scale = np.ones(sim.shape, np.float32)
                for s, at in scaled_similarities(model, cands[name], clean, patterns, masks, dataset.config.xrd):
                    at += scale_prior([s])[0]
                    scale[at > best] = s
                    np.maximum(best, at, out=best)
                sim = best
                if not search_only:
                    record(condition, name, "multi-scale", true_rank(best, np.arange(len(rows))))
            if condition in refined:
                rule = ("linear", 1.0) if model is None else None  # search-match: the agreement alone
                picked, truth = (np.arange(len(sel)), sel) if search_only else (sel, None)
                record(condition, name, "search", _refined_ranks(sim, scale, patterns, masks, picked, dataset, rows,
                                                                 rerank, rule, truth,
                                                                 None if model is None else clean))
    return pd.DataFrame(records)


#: The robustness table shipped for the ``cpu`` profile (written by ``scripts/robustness.py``).
def shipped_table_path():
    from eacnn.paths import DATA_DIR

    return DATA_DIR / "robustness.csv"


def book_table(profile: str, methods: dict, dataset, conditions: Sequence[str] = CONDITIONS,
               multiscale: Sequence[str] = (), refined: Sequence[str] = (), refine_queries: int = 200,
               rerank: int | None = None) -> pd.DataFrame:
    """The chapter's robustness table: for the ``cpu`` profile the shipped one (computed by
    ``scripts/robustness.py`` on the whole test pool with the shipped models, about 15 minutes), otherwise
    computed here for ``methods`` on ``dataset`` (smoke: seconds), ``rerank`` candidates refined per query (the
    search's own depth when None)."""
    path = shipped_table_path()
    if profile == "cpu" and path.is_file():
        return pd.read_csv(path)
    return robustness_table(methods, dataset, conditions, multiscale=multiscale, refined=refined,
                            refine_queries=refine_queries, rerank=rerank, progress=False)


def pivot(table: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """Conditions (rows, in :data:`CONDITIONS` order) by (method, query) columns."""
    out = table.pivot_table(index="condition", columns=["method", "query"], values=metric)
    order = [c for c in CONDITIONS if c in out.index]
    return out.loc[order]


def best_query(table: pd.DataFrame) -> pd.DataFrame:
    """Per condition and method, the Top-1 of the query as measured, of the multi-scale query and of the search as
    ``eacnn search`` answers (NaN where not computed): the columns side by side."""
    p = table.pivot_table(index=["condition", "method"], columns="query", values="top1").reset_index()
    p["condition"] = pd.Categorical(p["condition"], [c for c in CONDITIONS if c in set(p["condition"])], ordered=True)
    return p.sort_values(["condition", "method"]).reset_index(drop=True)


def book_numbers(table: pd.DataFrame) -> dict[str, str]:
    """The numbers chapter 5's prose quotes (Top-1, percent, one decimal; "n/a" where not computed): the current
    model (``rob_*``, multi-scale where computed; ``srch_*`` as ``eacnn search`` answers), search-match (``sm_*``;
    ``sm_srch_*`` with the same refinement)."""
    methods = list(dict.fromkeys(table["method"]))
    current = next((m for m in methods if m != "search-match"), None)

    def top1(method, condition, query):
        rows = table[(table["method"] == method) & (table["condition"] == condition) & (table["query"] == query)]
        return f"{rows['top1'].iloc[0]:.1f}" if len(rows) else "n/a"

    def best(method, condition):
        ms = top1(method, condition, "multi-scale")
        return ms if ms != "n/a" else top1(method, condition, "as measured")

    def queries(method, condition, query):
        rows = table[(table["method"] == method) & (table["condition"] == condition) & (table["query"] == query)]
        return f"{int(rows['queries'].iloc[0]):,}" if len(rows) else "n/a"

    out = {}
    for key, condition in [("iso_m2", "iso -2 %"), ("iso_p2", "iso +2 %"), ("aniso", "aniso 1.5 %"),
                           ("clean", "clean"), ("measured", "measured"), ("heldout", "second family"),
                           ("window", "window 20–60°")]:
        out[f"rob_{key}"] = best(current, condition)
        out[f"sm_{key}"] = best("search-match", condition)
        out[f"rob_{key}_raw"] = top1(current, condition, "as measured")
        out[f"srch_{key}"] = top1(current, condition, "search")
        out[f"sm_srch_{key}"] = top1("search-match", condition, "search")
    out["srch_queries"] = queries(current, "iso -2 %", "search")
    worst_iso = min((out["srch_iso_m2"], out["srch_iso_p2"]), key=lambda v: float(v) if v != "n/a" else np.inf)
    out["iso_target"] = target_phrase(worst_iso, 95.0)
    out["aniso_target"] = target_phrase(out["srch_aniso"], 90.0)
    out["vs_sm"] = versus_search_match(table)
    out["vs_sm_short"] = versus_search_match(table, short=True)
    return out


def versus_search_match(table: pd.DataFrame, z: float = 2.0, short: bool = False) -> str:
    """Where the current model beats plain search-match, where it is on a par and where it loses, from the numbers
    themselves: per condition the two methods' Top-1 for the same query (as ``eacnn search`` answers, with the same
    refinement, where both were computed; else the multi-scale query; else as measured), called different only when
    they differ by more than ``z`` standard errors of the difference (binomial, the two counted as independent).
    ``short``: counts of conditions, naming only those on a par or worse."""
    methods = list(dict.fromkeys(table["method"]))
    current = next((m for m in methods if m != "search-match"), None)
    if current is None or "search-match" not in methods:
        return "was not compared with search-match in this build"
    groups: dict[str, list[str]] = {"better": [], "par": [], "worse": []}
    for condition in [c for c in CONDITIONS if c in set(table["condition"])]:
        for query in ("search", "multi-scale", "as measured"):
            rows = table[(table["condition"] == condition) & (table["query"] == query)].set_index("method")
            if current in rows.index and "search-match" in rows.index:
                break
        else:
            continue
        (p1, n1), (p2, n2) = [(rows.loc[m, "top1"] / 100, rows.loc[m, "queries"]) for m in (current, "search-match")]
        se = np.sqrt(p1 * (1 - p1) / max(n1, 1) + p2 * (1 - p2) / max(n2, 1))
        kind = "par" if abs(p1 - p2) <= z * max(se, 1e-12) else "better" if p1 > p2 else "worse"
        where = "" if query == "search" else f", {query}"
        groups[kind].append(f"{condition} ({100 * p1:.1f} against {100 * p2:.1f} %{where})")
    if short:
        n = sum(map(len, groups.values()))
        names = {k: [g.split(" (")[0] for g in v] for k, v in groups.items()}
        text = f"better than search-match in {len(names['better'])} of {n} query conditions"
        for kind, word in (("par", "on a par"), ("worse", "worse")):
            if names[kind]:
                text += f", {word} in {len(names[kind])} ({', '.join(names[kind])})"
        return text
    parts = []
    if groups["better"]:
        parts.append("better than search-match under " + "; ".join(groups["better"]))
    if groups["par"]:
        parts.append(f"on a par (within {z:g} standard errors) under " + "; ".join(groups["par"]))
    if groups["worse"]:
        parts.append("worse under " + "; ".join(groups["worse"]))
    return ", ".join(parts) if parts else "was not compared with search-match in this build"
