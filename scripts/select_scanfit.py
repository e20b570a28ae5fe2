"""Choose the whole-pattern fit's settings (:mod:`eacnn.retrieval.scanfit`) on validation structures only.

    python scripts/select_scanfit.py --queries 150 --family train   --raw .cache/scanfit_train.csv   # ~25 min
    python scripts/select_scanfit.py --queries 150 --family heldout --raw .cache/scanfit_heldout.csv # (side by side)
    python scripts/select_scanfit.py --choose .cache/scanfit_train.csv .cache/scanfit_heldout.csv   # seconds

Each of ``--queries`` structures of the shipped model's validation carve-out becomes a scan at a laboratory step
(:func:`eacnn.physics.conditions.scan_queries`: our measurement model, the training family or the second one, on a
0.02° grid: mismatched and strained cells, texture, Kα2, impurities, counting noise, partial windows), is put on the
model's grid as ``eacnn search`` does (:func:`eacnn.measured.to_model_grid`) and searched in the embedded database
with every MP-20 test entry left out (the pool: the 9,047 structures of MP-20's validation split, our training and
validation data), twice: with its phase in the pool and with every entry of its phase left out. The best
:data:`DEPTH` refined candidates are fitted to the scan; every fit's χ², Rwp' and unexplained share is written to
``--raw``.

``--choose`` then replays every setting offline: how many candidates are fitted (:data:`FITS`), the weight of
ln χ² in the re-ranking (:data:`WEIGHTS`; Top-1 with the phase present), and for each pair the verdict's rule: the
statistic a good fit is judged by (χ² or Rwp'), its limit and the margin in ln χ² over the best fitted other phase
(:func:`eacnn.retrieval.verdict.open_set_rule` at the search's target precision), alone or together with the binned
score's calibrated verdict, beside that binned verdict's own precision and recall on the same queries. The table goes to ``eacnn/data/scan_fit.csv`` (chapter 5); the chosen values are
:class:`eacnn.config.SearchConfig`'s ``scan_*`` fields, typed there by hand from this table (a test checks them).
The MP-20 test split is never a query and never a candidate here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEPTH = 8  # candidates fitted per query (the largest of FITS)
FITS = (1, 3, 5, 8)
WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 100.0)  # 100: χ² alone orders the fitted
#: Top-1 differences smaller than this (points) count as ties: the standard error of a Top-1 near 60 % over ~240
#: queries is ~3 points, so the verdict's recall decides among them
TOP1_TIE = 2.0
MARGINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)  # ln χ²


def collect(n: int, family: str, seed: int, out: Path) -> pd.DataFrame:
    """Search ``n`` validation scans of ``family`` with their phase present and absent; one row per fitted
    candidate (and one per query without any fit)."""
    import mace  # noqa: F401  (e3nn under torch >= 2.6)
    from tqdm.auto import tqdm

    sys.path.insert(0, str(ROOT / "scripts"))
    from mixtures import split_pool

    from eacnn.config import XRDConfig
    from eacnn.datasets.structures import load_embedded, row_to_structure
    from eacnn.errors import PatternError
    from eacnn.measured import MeasuredPattern, to_model_grid
    from eacnn.paths import atomic_write_bytes
    from eacnn.physics.conditions import scan_queries
    from eacnn.physics.wavelengths import CU
    from eacnn.retrieval.database import default_database
    from eacnn.retrieval.identify import identify
    from eacnn.retrieval.scanfit import Scan

    db = default_database(["embedded"], progress=True)
    xrd = XRDConfig(**db.manifest["xrd"]) if "xrd" in db.manifest else XRDConfig()
    test = np.zeros(len(db), bool)
    test[split_pool(db, "test")] = True
    val = split_pool(db, "val")
    phase = (db.labels["formula"].astype(str) + "|" + db.labels["spacegroup_symbol"].astype(str)).to_numpy()
    rng = np.random.default_rng([seed, 1 if family == "train" else 2])
    rows = rng.choice(val, min(n, len(val)), replace=False)
    table = load_embedded().set_index("material_id")
    structures = [row_to_structure(table.loc[db.labels["material_id"].iloc[int(r)]].to_dict()) for r in rows]
    scans = scan_queries(structures, rng, family, xrd)
    records, t0 = [], time.perf_counter()
    for q, (row, (x, y)) in enumerate(tqdm(list(zip(rows, scans)), desc=f"scans ({family})")):
        try:
            grid = to_model_grid(MeasuredPattern(x, y, source=f"validation scan {q}"), xrd)
        except PatternError:  # eacnn search refuses it too (e.g. below the minimum coverage): not a query
            continue
        scan = Scan(x, y, CU.kalpha1, CU.kalpha2)
        for present in (True, False):
            exclude = test if present else test | (phase == phase[row])
            result = identify(grid.vector, grid.covered, db, top=DEPTH, xrd=xrd, exclude=exclude, scan=scan,
                              scan_fits=DEPTH)
            hits = result.hits
            base = {"family": family, "query": q, "truth": phase[row], "present": present,
                    "coverage": round(float(grid.coverage), 3), "verdict_model": result.binned_verdict}
            fitted = hits[hits["scan_chi2"].notna()] if "scan_chi2" in hits else hits.iloc[0:0]
            if not len(fitted):
                records.append(base | {"position": -1})
                continue
            # the order before the scan re-ranked them: by score
            for position, h in enumerate(fitted.sort_values("score", ascending=False, kind="stable").itertuples()):
                records.append(base | {"position": position, "phase": f"{h.formula}|{h.spacegroup}",
                                       "similarity": h.similarity, "score": h.score, "chi2": h.scan_chi2,
                                       "rwp": h.scan_rwp, "rwp_net": h.scan_rwp_net,
                                       "unexplained": h.scan_unexplained, "texture_r": h.scan_texture_r,
                                       "seconds": h.scan_seconds})
    df = pd.DataFrame(records)
    atomic_write_bytes(out, df.to_csv(index=False).encode())
    print(f"{len(rows)} scans, {len(df)} rows in {time.perf_counter() - t0:.0f} s -> {out}")
    return df


def replay(df: pd.DataFrame, fits: int, weight: float) -> pd.DataFrame:
    """One row per query: whether the answer is right, its χ², Rwp' and ln χ² margin, when the best ``fits``
    candidates (by score) are fitted and re-ranked by score − ``weight`` ln χ²."""
    from eacnn.retrieval.scanfit import scan_margin

    out = []
    for (family, q, present), g in df.groupby(["family", "query", "present"], sort=False):
        g = g[g["position"] >= 0].sort_values("position").head(fits)
        row = {"family": family, "query": q, "present": present, "verdict_model": g["verdict_model"].iloc[0]
               if len(g) else "no confident match"}
        if not len(g):
            out.append(row | {"correct": False, "model_correct": False, "chi2": np.inf, "rwp_net": np.inf,
                              "margin": np.nan})
            continue
        key = g["score"].to_numpy() - weight * np.log(g["chi2"].to_numpy())
        j = int(np.argmax(key))
        top = g.iloc[j]
        out.append(row | {"correct": bool(present and top["phase"] == top["truth"]), "chi2": float(top["chi2"]),
                          "rwp_net": float(top["rwp_net"]),
                          "model_correct": bool(present and g.iloc[0]["phase"] == g.iloc[0]["truth"]),
                          "margin": scan_margin(g["chi2"].to_numpy(), g["phase"].to_numpy(), j)})
    return pd.DataFrame(out)


def verdicts(r: pd.DataFrame, target: float) -> list[dict]:
    """For each statistic (χ², Rwp') and each way of combining with the binned score's calibrated verdict (the scan
    alone, both must say "match", either may): the (limit, margin) of best recall among the rules whose "match"
    verdicts are right at least ``target`` of the time, over one replay's queries (phase present and absent; the
    limits tried are the statistic's observed values, the margins :data:`MARGINS`)."""
    pres = r["present"].to_numpy(bool)
    right = r["correct"].to_numpy(bool) & pres
    n_right = max(int(right.sum()), 1)
    margin = np.nan_to_num(r["margin"].to_numpy(float), nan=-1.0, posinf=9.0)
    binned = (r["verdict_model"] == "match").to_numpy()
    out = []
    for statistic in ("chi2", "rwp_net"):
        value = r[statistic].to_numpy(float)
        limits = np.unique(value[np.isfinite(value)])
        for combine in ("scan", "and", "or"):
            best = {"limit": np.nan, "margin_min": np.nan, "precision": np.nan, "recall": 0.0}
            for m in MARGINS:
                good = margin >= m
                for t in limits:
                    scan = good & (value <= t)
                    match = scan if combine == "scan" else scan & binned if combine == "and" else scan | binned
                    if not match.any():
                        continue
                    precision = float(right[match].mean())
                    recall = float((match & right).sum() / n_right)
                    if precision >= target and recall > best["recall"]:
                        best = {"limit": float(t), "margin_min": m, "precision": precision, "recall": recall}
            out.append({"statistic": statistic, "combine": combine, **best})
    return out


def choose(df: pd.DataFrame, target: float) -> pd.DataFrame:
    """Every (fits, weight): Top-1 with the phase present, and each verdict rule of :func:`verdicts` with its
    precision and recall. The chosen: among the settings within :data:`TOP1_TIE` points of the best Top-1, the rule
    of best recall (then the fewest fits, the smallest weight). The binned verdict's own precision and recall on the same queries are given for comparison."""
    rows = []
    for fits in FITS:
        for weight in WEIGHTS:
            r = replay(df, fits, weight)
            pres = r["present"].to_numpy(bool)
            top1 = 100 * r.loc[pres, "correct"].mean()
            for v in verdicts(r, target):
                rows.append({"fits": fits, "weight": weight, "top1_present": top1,
                             "top1_without_scan": 100 * r.loc[pres, "model_correct"].mean(), **v,
                             "queries": int(pres.sum())})
    table = pd.DataFrame(rows)
    r = replay(df, 1, 0.0)
    match = (r["verdict_model"] == "match").to_numpy()
    right = r["model_correct"].to_numpy(bool)
    table["binned_precision"] = float(right[match].mean()) if match.any() else np.nan
    table["binned_recall"] = float((match & right).sum() / max(int(right.sum()), 1))
    best_top1 = table["top1_present"].max()
    tied = table[table["top1_present"] >= best_top1 - TOP1_TIE]
    best = tied.sort_values(["recall", "fits", "weight"], ascending=[False, True, True], kind="stable").index[0]
    table["chosen"] = table.index == best
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--family", choices=("train", "heldout"), default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", type=Path, default=ROOT / ".cache" / "scanfit_train.csv")
    parser.add_argument("--choose", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=ROOT / "eacnn" / "data" / "scan_fit.csv")
    args = parser.parse_args()
    if args.choose:
        from eacnn.config import SearchConfig
        from eacnn.paths import atomic_write_bytes

        df = pd.concat([pd.read_csv(p) for p in args.choose], ignore_index=True)
        table = choose(df, SearchConfig().target_precision)
        atomic_write_bytes(args.out, table.round(4).to_csv(index=False).encode())
        print(table.round(3).to_string(max_rows=40))
        print(table[table["chosen"]].T.to_string())
        print(f"-> {args.out}")
        return 0
    if args.queries < 1:
        parser.error("--queries must be >= 1")
    collect(args.queries, args.family, args.seed, args.raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
