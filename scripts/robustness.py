"""The robustness table of chapter 5: Top-1/Top-5 among the 9,046 MP-20 test structures under lattice mismatch,
anisotropic strain, texture, partial scans, impurities, the measurement family training draws from and a held-out
family it never draws from (a second family, which selection reads), for search-match and the shipped default.

    python scripts/robustness.py [--out eacnn/data/robustness.csv] [--conditions A,B,...]
    python scripts/robustness.py --search-only --refine-queries 400 [--conditions A,B,...] --out PART.csv
    python scripts/robustness.py --merge PART1.csv PART2.csv --out eacnn/data/robustness.csv

The test pool is only read here, to report: every setting of the models was chosen on the validation split. Each
condition's queries are seeded (:func:`eacnn.robustness.condition_queries`) and the same for every method; the
"multi-scale" rows read each query at the lattice scales 0.96–1.04 (:data:`eacnn.retrieval.query.SCALES`); the
"search" rows answer as ``eacnn search`` does (multi-scale, then the best candidates refined and
re-ranked: :data:`eacnn.retrieval.identify.RERANK_DEPTH`, the cells of :data:`~eacnn.retrieval.identify.CELL_FITS`) for 400 seeded
queries of each condition, the whole test split still the pool. (A "previous default" column, from a checkpoint
that is not shipped, was dropped: every row here can be regenerated from the repository.) Before the cell fit a whole run took about an hour on one core once the
data set was cached. The search rows, refining 30 candidates and fitting all 30 cells for each method, take about
12 minutes per condition on one core at 400 queries (5,016 and 5,113 s for two halves of seven conditions side by
side, 2026-12-02). On two cores, run two halves of the conditions side by side (``--conditions``, each to its own
``--out``) and join them with ``--merge`` (rows in the order of the condition registry; a condition in two parts
is refused).
When only the refinement changed, ``--search-only`` recomputes the "search" rows alone (the same queries and
answers as a whole run; the other rows do not depend on the refinement) and writes them with the other rows of
``eacnn/data/robustness.csv`` for its conditions. The shipped table's search rows were computed that way with
400 queries per condition (``--refine-queries 400``).
"""

from __future__ import annotations

import argparse
import time

MULTISCALE = ("clean", "iso -3 %", "iso -2 %", "iso -1 %", "iso +1 %", "iso +2 %", "iso +3 %", "aniso 1.5 %",
              "measured", "second family")


def merge(parts: list[str], out: str, conditions: tuple) -> None:
    """Join tables of disjoint condition sets into one, rows in the registry's order of conditions."""
    import pandas as pd

    tables = [pd.read_csv(p) for p in parts]
    seen: dict[str, str] = {}
    for path, table in zip(parts, tables):
        for condition in table["condition"].unique():
            if condition in seen:
                raise SystemExit(f"condition {condition!r} is in both {seen[condition]} and {path}")
            seen[condition] = path
    table = pd.concat(tables, ignore_index=True)
    order = {c: i for i, c in enumerate(conditions)}
    table = table.sort_values("condition", kind="stable", key=lambda col: col.map(order)).reset_index(drop=True)
    table.to_csv(out, index=False, float_format="%.2f")
    print(f"{len(table)} rows of {len(seen)} conditions from {len(parts)} parts -> {out}")


def main() -> None:
    import torch

    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.paths import DATA_DIR
    from eacnn.physics.conditions import CONDITIONS
    from eacnn.robustness import robustness_table
    from eacnn.training.checkpoint import DEFAULT_CHECKPOINT, load_pretrained

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(DATA_DIR / "robustness.csv"))
    parser.add_argument("--merge", nargs="+", metavar="PART", help="join parts written with --conditions and exit")
    parser.add_argument("--refine-queries", type=int, default=400, help="queries per condition of the search rows")
    parser.add_argument("--conditions", help="a comma-separated subset of the conditions (default: all)")
    parser.add_argument("--search-only", action="store_true",
                        help="recompute the search rows only; the other rows are copied from the shipped table")
    args = parser.parse_args()
    conditions = CONDITIONS if not args.conditions else tuple(c.strip() for c in args.conditions.split(","))
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        parser.error(f"unknown condition(s) {unknown}; choose from {list(CONDITIONS)}")
    if args.merge:
        return merge(args.merge, args.out, CONDITIONS)
    torch.set_flush_denormal(True)
    t0 = time.perf_counter()
    methods = {"search-match": None, "eacnn (current default)": load_pretrained(DEFAULT_CHECKPOINT)}
    ds = build_dataset(Config.cpu(), progress=True)
    table = robustness_table(methods, ds, conditions, multiscale=MULTISCALE, refined=conditions,
                             refine_queries=args.refine_queries, search_only=args.search_only)
    if args.search_only:  # the shipped rows of these conditions, their search rows replaced
        import pandas as pd

        old = pd.read_csv(DATA_DIR / "robustness.csv")
        old = old[old["condition"].isin(conditions) & (old["query"] != "search")]
        table = pd.concat([old, table], ignore_index=True)
        methods_order = list(dict.fromkeys(old["method"]))
        table = table.sort_values(["condition", "method", "query"], kind="stable", key=lambda col: col.map(
            {"condition": list(CONDITIONS), "method": methods_order, "query": ["as measured", "multi-scale", "search"]}
            [col.name].index))
    table.to_csv(args.out, index=False, float_format="%.2f")
    print(table.pivot_table(index=["condition", "query"], columns="method", values="top1").round(2).to_string())
    print(f"{time.perf_counter() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
