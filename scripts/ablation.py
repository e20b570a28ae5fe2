"""The structure-tower ablation of chapter 4: the paper's tower, then each physics-informed input added, trained
with the same data, seeds, schedule and budget, and compared on the validation split only.

    python scripts/ablation.py [--epochs 5] [--out eacnn/data/ablation.csv]

Each variant is the ``cpu`` profile with ``train.epochs`` set to the budget (the cosine schedule is fitted to it)
and no early stopping, so every variant trains exactly the same number of steps. The runs live under
``$EACNN_RUNS/ablation-<name>`` and resume when interrupted. The table written to ``--out`` holds, per variant, the
validation metrics of its best epoch — clean Top-1 and moderately perturbed Top-1 of the 905 validation structures
retrieved among the validation *and* training structures (9,047 candidates) — its size and training time. The test
pool is not touched: the ablation chooses the design, so it may only look at validation data.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

#: name -> (description, config overrides)
VARIANTS = {
    "paper": ("paper tower: MACE, mean-pooled", {"model.kind": "paper"}),
    "lattice": ("+ lattice descriptors", {"model.use_sim_pattern": False}),
    "pattern-cnn": ("+ own pattern (separate CNN)", {"model.use_lattice": False, "model.share_xrd_tower": False}),
    "lattice+pattern-cnn": ("+ lattice + own pattern (separate CNN)", {"model.share_xrd_tower": False}),
    "lattice+shared": ("+ lattice + own pattern through the shared XRD tower", {"model.share_xrd_tower": True}),
}


def main() -> None:
    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.models import count_parameters
    from eacnn.paths import runs_dir
    from eacnn.training.loop import fit

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "eacnn" / "data" / "ablation.csv"))
    parser.add_argument("--only", nargs="*", help="variant names to (re)run; default all")
    args = parser.parse_args()
    base = Config.cpu().replace(**{"train.epochs": args.epochs, "train.patience": 0})
    data = build_dataset(base)
    rows = []
    for name, (label, overrides) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        cfg = base.replace(**overrides)
        t0 = time.perf_counter()
        result = fit(cfg, data, run_dir=runs_dir() / f"ablation-{name}", progress=True)
        log = result.history
        best = log.loc[log["val_score"].idxmax()]
        rows.append({
            "variant": name, "structure tower": label, "epochs": int(log.epoch.max()), "best epoch": int(best.epoch),
            "val Top-1 clean (%)": 100 * best.val_top1, "val Top-1 moderate (%)": 100 * best.val_top1_perturbed,
            "val Top-5 clean (%)": 100 * best.val_top5, "candidates": int(best.val_pool),
            "parameters": count_parameters(result.model), "training time (min)": log.seconds.sum() / 60,
        })
        print(rows[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    out = Path(args.out)
    if args.only and out.is_file():  # keep the other variants' rows
        old = pd.read_csv(out)
        rows = old[~old.variant.isin([r["variant"] for r in rows])].to_dict("records") + rows
        order = list(VARIANTS)
        rows.sort(key=lambda r: order.index(r["variant"]))
    pd.DataFrame(rows).to_csv(out, index=False, float_format="%.4f")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
