"""Choose how ``eacnn search`` ranks, and which trained checkpoint ships, on the validation split only.

    python scripts/select_rerank.py [--queries 400]                       # the rule, for the shipped model
    python scripts/select_rerank.py --checkpoints A.pt B.pt ... [--out epochs.csv]  # the model, for the shipped rule
    python scripts/select_rerank.py --cell-grid [--out eacnn/data/cell_fit.csv]      # the cell fit's settings
    python scripts/select_rerank.py --depth-grid [--out eacnn/data/rerank_depth.csv] # how many candidates to refine
    python scripts/select_rerank.py --recall-grid [--out eacnn/data/cosine_recall.csv] # search-match's candidates too

For seven query conditions of :mod:`eacnn.robustness` (clean, iso −2 %, iso +1 %, anisotropic 1.5 %, texture, the
training measurement family, the held-out family), each of ``--queries`` validation structures is read at the lattice
scales of the multi-scale query and compared, by a model, with a pool as large as the test split (the validation and
training structures, 9,047 in the cpu profile: among 905 look-alikes are ten times rarer than among the 9,046 test
structures). Each candidate keeps its best similarity over the scales less ``penalty`` per 1 % of scale away from 1;
the best ones are refined (:func:`eacnn.retrieval.identify.refine`; as many as ``eacnn search`` refines) and re-ranked by a rule of
:func:`eacnn.retrieval.identify.rerank_score`: Top-1 as ``eacnn search`` answers.

Without ``--checkpoints`` the shipped model is scored under every (penalty, rule) of :data:`PENALTIES` ×
:data:`SCORES` (the re-ranking rule and the mismatch prior: :data:`eacnn.retrieval.identify.RERANK`,
:data:`eacnn.retrieval.query.SCALE_PENALTY`); about 15 minutes on 2 cores. With ``--checkpoints`` each checkpoint is
scored under the shipped rule and prior (about 5 minutes each on one core): the epoch that ships; chapter 4 shows
``eacnn/data/epochs.csv``, written this way for the epochs of a run trained without early stopping. Either way the
best mean over the conditions wins; ``--rerank N`` refines N candidates instead of
:data:`eacnn.retrieval.identify.RERANK_DEPTH`. With ``--cell-grid`` the
shipped model and rule are scored with lattice scales only and with the cell fit
(:func:`eacnn.retrieval.identify.refine_cell`) under each prior against anisotropic strain and each residual gain a
cell fit must reach (:data:`CELL_PRIORS` × :data:`CELL_GAINS`); chapter 5 shows ``eacnn/data/cell_fit.csv``, written
this way. With ``--depth-grid`` the shipped model, rule and cell fit are scored for each (candidates refined, of which
the cell is fitted) pair of :data:`DEPTHS`: every candidate refined with lattice scales, the cells fitted for those
of them the isotropic refinement scores best (the cell fit costs ~17x the isotropic one); chapter 5 shows
``eacnn/data/rerank_depth.csv``, written this way, and the cheapest depth within :data:`DEPTH_TIE` of the best mean
ships (:func:`choose_depth`). ``--conditions`` takes a subset, so that two halves can run side by side. (Search-match re-ranks by
the agreement alone: its similarity is the unrefined cosine of the same pattern, which the refined one supersedes.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

CONDITIONS = ("clean", "iso -2 %", "iso +1 %", "aniso 1.5 %", "texture", "measured", "second family")
#: the conditions of the texture and recall grids: the seven, and platelets packed flat (``strong texture``, March
#: r 0.5–0.7), the regime where the texture fit and the model's embedding are tried hardest
GRID_CONDITIONS = CONDITIONS + ("strong texture",)
PENALTIES = (0.0, 0.005, 0.01)  # similarity per 1 % of lattice scale away from 1
#: the re-ranking scores compared: ("linear", w) is w · agreement + (1 − w) · similarity; ("likelihood", b) is
#: similarity − b · ln(1 − agreement²), the similarity plus b times the log-likelihood ratio of the fit
SCORES = (("linear", 0.5), ("linear", 0.75), ("linear", 1.0), ("likelihood", 0.005), ("likelihood", 0.01),
          ("likelihood", 0.02), ("likelihood", 0.04))


def search_top1(model, ds, n_queries: int, penalties, rules, label: str = "", rerank: int | None = None,
                conditions=CONDITIONS, extra=None, cell: bool = True, textures: int | None = None,
                recall: int = 0) -> list[dict]:
    """Top-1 (percent) of ``n_queries`` seeded validation queries per condition, penalty and rule, the validation and
    training structures the pool, answered as ``eacnn search`` does with ``model`` (its best ``rerank`` refined).

    ``extra(condition, pattern, mask, rows, fits, similarity) -> {name: scores}``, when given, scores the refined
    candidates (dataset ``rows``, :func:`eacnn.retrieval.identify.refine`'s ``fits``, their multi-scale
    ``similarity``) in other ways too; each name is recorded as a rule. ``cell=False`` refines lattice scales only
    (no cell fit); ``rerank`` None: :data:`eacnn.retrieval.identify.RERANK_DEPTH`, with the cells of the best
    :data:`~eacnn.retrieval.identify.CELL_FITS` fitted. ``recall``: that many candidates of best binned cosine
    (:func:`eacnn.retrieval.query.multiscale_cosine`) join the shortlist."""
    from eacnn.retrieval.embed import embed_dataset
    from eacnn.retrieval.identify import RERANK_DEPTH, refine_shortlist, rerank_score
    from eacnn.retrieval.query import SCALES, multiscale_cosine, scale_prior
    from eacnn.physics.conditions import condition_queries
    from eacnn.robustness import scaled_similarities

    rerank = RERANK_DEPTH if rerank is None else rerank
    val = ds.indices("val")
    pool = np.concatenate([val, ds.indices("train")])  # queries are the first len(val) rows of the pool
    sel = np.random.default_rng(1).permutation(len(val))[:n_queries]
    clean = ds.vectors[pool].astype(np.float32)
    emb = np.concatenate([embed_dataset(model, ds, split, levels=(0,), progress=False).structures
                          for split in ("val", "train")])
    records = []
    for condition in conditions:
        patterns, masks = condition_queries(ds, val[sel], condition, seed=7)
        sims = np.stack([sim for _, sim in scaled_similarities(model, emb, clean, patterns, masks, ds.config.xrd)],
                        axis=1)  # [q, S, n]
        for penalty in penalties:
            at = sims + scale_prior(SCALES, penalty)[None, :, None]
            j = at.argmax(axis=1)  # [q, n] the best scale of each candidate
            best = np.take_along_axis(at, j[:, None], axis=1)[:, 0]  # [q, n]
            hits = {f"{rule[0]} {rule[1]:g}": [] for rule in rules}
            for k, q in enumerate(sel):
                mask = None if masks is None else masks[k]
                cos, cos_at = multiscale_cosine(clean, patterns[k], mask, ds.config.xrd) if recall else (None, None)
                top, fits, _ = refine_shortlist(patterns[k], mask, best[k], pool, ds.sticks, ds.config.xrd,
                                                SCALES[j[k]], ds.reflections if cell else None, depth=rerank,
                                                textures=textures, recall=cos, recall_scale=cos_at,
                                                recall_depth=recall)
                agree = fits["agreement"].to_numpy()
                aniso, tex = fits["anisotropy"].to_numpy(), fits["texture"].to_numpy()
                scores = {f"{rule[0]} {rule[1]:g}": rerank_score(agree, best[k, top], rule, aniso, tex)
                          for rule in rules}
                if extra is not None:
                    scores.update(extra(condition, patterns[k], mask, pool[top], fits, best[k, top]))
                for name, score in scores.items():
                    hits.setdefault(name, []).append(top[np.argmax(score)] == q)
            for name, h in hits.items():
                records.append({"model": label, "condition": condition, "penalty": penalty, "rule": name,
                                "top1": 100 * np.mean(h)})
            print(label, condition, penalty, {name: round(100 * np.mean(h), 1) for name, h in hits.items()},
                  flush=True)
    return records


#: the cell fit's settings compared by ``--cell-grid``: score per 1 % of anisotropic strain × the residual gain a
#: cell fit needs (:data:`eacnn.retrieval.identify.ANISOTROPY_PENALTY`, :data:`~eacnn.retrieval.identify.CELL_MIN_GAIN`)
CELL_PRIORS = (0.0, 0.02, 0.04, 0.06)
CELL_GAINS = (1.0, 2.0, 4.0)


def cell_grid(model, ds, n_queries: int, conditions=CONDITIONS) -> list[dict]:
    """Top-1 per condition for the shipped rule with lattice scales only ("isotropic") and with the cell fit under
    each (prior, gain) of :data:`CELL_PRIORS` × :data:`CELL_GAINS` (each candidate's cell fitted once)."""
    from eacnn.retrieval.identify import RERANK, cell_kept, refine_cell, rerank_score
    from eacnn.retrieval.query import SCALE_PENALTY

    def scores(condition, pattern, mask, rows, fits, similarity) -> dict:
        iso = fits["agreement"].to_numpy()
        cell = np.array([refine_cell(pattern, mask, ds.reflections(int(r)), ds.config.xrd, f.strain, f.zero_shift,
                                     f.width)[:2] if ds.reflections(int(r)) is not None else (-1.0, 0.0)
                         for r, f in zip(rows, fits.itertuples())])  # [k, 2] agreement, anisotropy
        out = {}
        for gain in CELL_GAINS:
            kept = cell_kept(iso, cell[:, 0], gain)
            agree, aniso = np.where(kept, cell[:, 0], iso), np.where(kept, cell[:, 1], 0.0)
            for prior in CELL_PRIORS:
                base = rerank_score(agree, similarity, RERANK)  # without the shipped prior, then this one
                out[f"cell prior {prior:g} gain {gain:g}"] = base - prior * aniso / 0.01
        return out

    records = search_top1(model, ds, n_queries, (SCALE_PENALTY,), (RERANK,), "default", rerank=10,
                          conditions=conditions, extra=scores, cell=False)  # the depth it was chosen at
    return [r for r in records if r["rule"].startswith("cell")] + [
        {**r, "rule": "isotropic"} for r in records if not r["rule"].startswith("cell")]


#: (candidates refined with lattice scales, of which the cells of the best by that refinement are fitted) pairs
#: compared by ``--depth-grid`` (:data:`eacnn.retrieval.identify.RERANK_DEPTH`, :data:`~eacnn.retrieval.identify.CELL_FITS`)
DEPTHS = ((10, 10), (15, 15), (20, 20), (30, 30), (20, 10), (30, 10), (30, 15), (30, 20))
#: milliseconds per candidate of the isotropic refinement and of a cell fit (``python benchmarks/bench_refine.py``,
#: one thread, 2026-12-02), and the mean Top-1 (percentage points) within which two depths count as tied: the cheaper one ships
REFINE_MS, CELL_MS, DEPTH_TIE = 1.4, 24.0, 0.1


def choose_depth(means: pd.Series) -> str:
    """The depth "refine N cell M" that ships, from each depth's mean Top-1 over the conditions: the cheapest
    (:data:`REFINE_MS` · N + :data:`CELL_MS` · M) of those within :data:`DEPTH_TIE` of the best mean."""
    tied = means[means >= means.max() - DEPTH_TIE].index
    cost = {rule: REFINE_MS * int(rule.split()[1]) + CELL_MS * int(rule.split()[3]) for rule in tied}
    return min(cost, key=cost.get)


def depth_grid(model, ds, n_queries: int, conditions=CONDITIONS) -> list[dict]:
    """Top-1 per condition for the shipped rule and cell fit under each (refined, cell-fitted) pair of
    :data:`DEPTHS` (the deepest list refined and every cell fitted once; each pair scores a prefix of it)."""
    from eacnn.retrieval.identify import RERANK, cell_kept, refine_cell, rerank_score
    from eacnn.retrieval.query import SCALE_PENALTY

    deepest = max(n for n, _ in DEPTHS)

    def scores(condition, pattern, mask, rows, fits, similarity) -> dict:
        iso = fits["agreement"].to_numpy()
        cell = np.array([refine_cell(pattern, mask, ds.reflections(int(r)), ds.config.xrd, f.strain, f.zero_shift,
                                     f.width)[:2] if ds.reflections(int(r)) is not None else (-1.0, 0.0)
                         for r, f in zip(rows, fits.itertuples())])  # [k, 2] agreement, anisotropy
        kept = cell_kept(iso, cell[:, 0])
        first = rerank_score(iso, similarity, RERANK)  # [k] the isotropic refinement's score
        out = {}
        for n, m in DEPTHS:
            fitted = np.zeros(len(rows), bool)
            fitted[np.argsort(-first[:n], kind="stable")[:m]] = True
            use = kept & fitted
            score = rerank_score(np.where(use, cell[:, 0], iso), similarity, RERANK, np.where(use, cell[:, 1], 0.0))
            out[f"refine {n} cell {m}"] = np.where(np.arange(len(rows)) < n, score, -np.inf)
        return out

    records = search_top1(model, ds, n_queries, (SCALE_PENALTY,), (RERANK,), "default", rerank=deepest,
                          conditions=conditions, extra=scores, cell=False)
    return [r for r in records if r["rule"].startswith("refine")]


#: the texture fit's settings compared by ``--texture-grid``: candidates fitted × the residual gain it needs × score
#: per unit |ln r| (:data:`eacnn.retrieval.refine.TEXTURE_FITS`, ``TEXTURE_MIN_GAIN``, ``TEXTURE_PENALTY``)
TEXTURE_COUNTS = (5, 10, 30)
TEXTURE_GAINS = (1.5, 2.0, 4.0, 8.0)
TEXTURE_PRIORS = (0.0, 0.02, 0.05)


def choose_texture(means: pd.Series) -> tuple[int, float, float]:
    """The texture fit that ships, from each setting's mean Top-1 over the conditions (``--texture-grid``): of the
    settings tied at the best mean, the one fitting the fewest candidates (the cost), then the largest gain and
    prior (the most cautious); (0, gain, prior) of the shipped values when "no texture" is strictly best."""
    from eacnn.retrieval.refine import TEXTURE_MIN_GAIN, TEXTURE_PENALTY

    best = means.max()
    tied = [r for r in means.index if r.startswith("texture ") and means[r] >= best - 1e-9]
    if not tied:
        return 0, TEXTURE_MIN_GAIN, TEXTURE_PENALTY
    parsed = [(int(r.split()[1]), -float(r.split()[3]), -float(r.split()[5])) for r in tied]
    count, gain, prior = min(parsed)
    return count, -gain, -prior


def texture_grid(model, ds, n_queries: int, conditions=GRID_CONDITIONS) -> list[dict]:
    """Top-1 per condition for the shipped rule, depth and cell fit with no texture fit ("no texture") and with it
    under each (candidates, gain, prior) of :data:`TEXTURE_COUNTS` × :data:`TEXTURE_GAINS` × :data:`TEXTURE_PRIORS`
    (every cell-fitted candidate's texture fitted once; each setting reads a prefix of them by their score before)."""
    from eacnn.retrieval.query import SCALE_PENALTY
    from eacnn.retrieval.refine import RERANK, cell_kept, rerank_score

    def scores(condition, pattern, mask, rows, fits, similarity) -> dict:
        before = fits["untextured"].to_numpy()
        tried = np.isfinite(before)
        before = np.where(tried, before, fits["agreement"].to_numpy())  # rows without a fit: their agreement
        aniso = fits["anisotropy"].to_numpy()
        first = rerank_score(before, similarity, RERANK, aniso)
        rank = np.full(len(rows), len(rows))
        order = np.flatnonzero(tried)[np.argsort(-first[tried], kind="stable")]
        rank[order] = np.arange(len(order))
        tex, lnr = fits["texture_agreement"].to_numpy(), np.abs(np.log(fits["texture_r"].to_numpy()))
        out = {"no texture": first}
        for count in TEXTURE_COUNTS:
            for gain in TEXTURE_GAINS:
                kept = (rank < count) & cell_kept(before, np.where(tried, tex, -1.0), gain)
                for prior in TEXTURE_PRIORS:
                    out[f"texture {count} gain {gain:g} prior {prior:g}"] = rerank_score(
                        np.where(kept, tex, before), similarity, RERANK, aniso) - prior * np.where(kept, lnr, 0.0)
        return out

    records = search_top1(model, ds, n_queries, (SCALE_PENALTY,), (RERANK,), "default", conditions=conditions, extra=scores,
                          textures=max(TEXTURE_COUNTS))
    return [r for r in records if r["rule"].startswith(("texture", "no texture"))]


#: how many candidates of best binned cosine join the refined shortlist, compared by ``--recall-grid``
#: (:class:`eacnn.config.SearchConfig` ``.cosine_recall``)
RECALLS = (0, 5, 10, 20)


def choose_recall(means: pd.Series) -> int:
    """The recall that ships, from each setting's mean Top-1 over the conditions: the smallest (each recalled
    candidate is refined too) within :data:`DEPTH_TIE` of the best mean."""
    tied = means[means >= means.max() - DEPTH_TIE].index
    return min(int(rule.split()[1]) for rule in tied)


def recall_grid(model, ds, n_queries: int, conditions=GRID_CONDITIONS) -> list[dict]:
    """Top-1 per condition for the shipped rule, depth, cell and texture fits with each cosine recall of
    :data:`RECALLS` (each a search of its own: the recalled candidates compete for the cell and texture fits)."""
    from eacnn.retrieval.query import SCALE_PENALTY
    from eacnn.retrieval.refine import RERANK

    records = []
    for recall in RECALLS:
        for r in search_top1(model, ds, n_queries, (SCALE_PENALTY,), (RERANK,), "default", conditions=conditions,
                             recall=recall):
            records.append({**r, "rule": f"recall {recall}"})
    return records


def main() -> None:
    import torch

    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.retrieval.identify import RERANK
    from eacnn.retrieval.query import SCALE_PENALTY
    from eacnn.training.checkpoint import DEFAULT_CHECKPOINT, load_pretrained

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--checkpoints", nargs="+", help="compare these checkpoints under the shipped rule")
    parser.add_argument("--cell-grid", action="store_true",
                        help="compare the cell fit's settings (and no cell fit) for the shipped model and rule")
    parser.add_argument("--depth-grid", action="store_true",
                        help="compare how many candidates are refined and how many cells fitted (shipped model, rule)")
    parser.add_argument("--texture-grid", action="store_true",
                        help="compare the texture fit's settings (and none) for the shipped model, rule and cell fit")
    parser.add_argument("--recall-grid", action="store_true",
                        help="compare how many candidates of best binned cosine join the shortlist (shipped model)")
    parser.add_argument("--rerank", type=int, help="candidates refined per query (eacnn search's --rerank; default: "
                                                  "the shipped RERANK_DEPTH)")
    parser.add_argument("--out", help="also write the per-condition Top-1 table here (CSV)")
    parser.add_argument("--conditions", default=None,
                        help="a comma-separated subset of the conditions (two halves can run side by side)")
    args = parser.parse_args()
    known = GRID_CONDITIONS if args.recall_grid or args.texture_grid else CONDITIONS
    conditions = known if args.conditions is None else tuple(c.strip() for c in args.conditions.split(","))
    unknown = sorted(set(conditions) - set(known))
    if unknown:
        parser.error(f"unknown condition(s) {unknown}; choose from {list(known)}")
    torch.set_flush_denormal(True)
    ds = build_dataset(Config.cpu(), progress=False)
    if args.recall_grid:
        records = recall_grid(load_pretrained(DEFAULT_CHECKPOINT), ds, args.queries, conditions)
        table = pd.DataFrame(records).pivot_table(index="condition", columns="rule", values="top1")
    elif args.texture_grid:
        records = texture_grid(load_pretrained(DEFAULT_CHECKPOINT), ds, args.queries, conditions)
        table = pd.DataFrame(records).pivot_table(index="condition", columns="rule", values="top1")
    elif args.depth_grid:
        records = depth_grid(load_pretrained(DEFAULT_CHECKPOINT), ds, args.queries, conditions)
        table = pd.DataFrame(records).pivot_table(index="condition", columns="rule", values="top1")
    elif args.cell_grid:
        records = cell_grid(load_pretrained(DEFAULT_CHECKPOINT), ds, args.queries, conditions)
        table = pd.DataFrame(records).pivot_table(index="condition", columns="rule", values="top1")
    elif args.checkpoints:
        records = []
        for path in args.checkpoints:
            records += search_top1(load_pretrained(path), ds, args.queries, (SCALE_PENALTY,), (RERANK,),
                                   Path(path).stem, args.rerank, conditions)
        table = pd.DataFrame(records).pivot_table(index="condition", columns="model", values="top1")
    else:
        records = search_top1(load_pretrained(DEFAULT_CHECKPOINT), ds, args.queries, PENALTIES, SCORES,
                              rerank=args.rerank, conditions=conditions)
        table = pd.DataFrame(records).pivot_table(index="condition", columns=["penalty", "rule"], values="top1")
    print(table.round(1).T.to_string())
    if args.out:
        pd.DataFrame(records).to_csv(args.out, index=False, float_format="%.2f")
    means = table.mean()
    print("mean over conditions:\n" + means.round(2).to_string())
    print(f"best: {means.idxmax()}")
    if args.depth_grid:
        print(f"ships (the cheapest within {DEPTH_TIE:g} of the best mean): {choose_depth(means)}")
    if args.recall_grid:
        print(f"ships (the smallest within {DEPTH_TIE:g} of the best mean): cosine_recall = {choose_recall(means)}")
    if args.texture_grid:
        print("ships (texture fits, gain, prior): {}".format(choose_texture(means)))


if __name__ == "__main__":
    main()
