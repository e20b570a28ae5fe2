"""Choose the default model on the validation split: every candidate checkpoint retrieves the 905 validation
structures among themselves under clean queries, the measurement family training draws from and the held-out
family it never draws from (each also read at every lattice scale), plus lattice mismatch and anisotropic strain.

    python scripts/select_default.py CHECKPOINT... [--out selection.csv]

The selection score, fixed before looking: the mean of clean Top-1, measured Top-1 (multi-scale) and held-out
Top-1 (multi-scale). The test pool is not touched.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CONDITIONS = ("clean", "iso -2 %", "iso +2 %", "aniso 1.5 %", "window 20–60°", "measured", "second family")
MULTISCALE = ("iso -2 %", "iso +2 %", "aniso 1.5 %", "measured", "second family")


def main() -> None:
    import torch

    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.robustness import robustness_table
    from eacnn.training.checkpoint import load_pretrained

    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--out", default="selection.csv")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    methods = {Path(p).parent.name if Path(p).name == "best.pt" else Path(p).stem: load_pretrained(p)
               for p in args.checkpoints}
    methods["search-match"] = None
    ds = build_dataset(Config.cpu(), progress=False)
    table = robustness_table(methods, ds, CONDITIONS, split="val", multiscale=MULTISCALE)
    table.to_csv(args.out, index=False, float_format="%.2f")
    pivot = table.pivot_table(index=["condition", "query"], columns="method", values="top1")
    print(pivot.round(1).to_string())
    score = (pivot.loc[("clean", "as measured")] + pivot.loc[("measured", "multi-scale")]
             + pivot.loc[("second family", "multi-scale")]) / 3
    print("\nselection score (mean of clean, measured multi-scale, held-out multi-scale Top-1):")
    print(score.round(2).sort_values(ascending=False).to_string())


if __name__ == "__main__":
    main()
