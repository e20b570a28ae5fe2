"""Train the paper's tower at the ``paper`` profile on one GPU with the shipped code, evaluate it, and record the
device, the time and the result (issue: the paper's headline, answered with evidence).

    python scripts/train_gpu.py --minutes 9            # a first point of the curve: fits 10 minutes of an H100
    python scripts/train_gpu.py                        # the full schedule (Colab: hours on a T4; resumable)

The ``paper`` profile (:meth:`eacnn.config.Config.paper`: 2 layers x 128 channels with vector features, batch 256,
bf16 autocast where the GPU computes it natively, fp16 with a grad scaler otherwise) with ``model.kind = "paper"``
(the paper's tower: MACE, mean-pooled, no lattice or own-pattern inputs), trained on the same embedded data as the
CPU curves (``scripts/curves.py``). A checkpoint is written every epoch; run the same command again to resume
(the epoch budget and schedule are those of the first call). ``--minutes`` stops after the epoch that passes the
budget (the run stays resumable). Then its best epoch (chosen on validation) is evaluated once on the MP-20 test
pool, and one row is appended to ``eacnn/data/gpu_runs.csv``: date, device, minutes, epochs, validation and test
Top-1. No test depends on this script: it needs a CUDA device.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=100, help="the schedule's epochs (default: the profile's 100)")
    parser.add_argument("--minutes", type=float, default=0.0, help="stop after the epoch passing this many minutes")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: $EACNN_RUNS/gpu-paper-<epochs>")
    parser.add_argument("--out", type=Path, default=ROOT / "eacnn" / "data" / "gpu_runs.csv")
    parser.add_argument("--train-subset", type=int, default=0, help="train on this many structures (0: all)")
    parser.add_argument("--max-structures", type=int, default=0,
                        help="the first N structures of each split only (0: all): a quick check of the script")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (a check of the script only)")
    args = parser.parse_args()
    if args.epochs < 1 or args.minutes < 0:
        parser.error(f"need --epochs >= 1 and --minutes >= 0, got {args.epochs}, {args.minutes}")

    import mace  # noqa: F401  (before e3nn under torch >= 2.6)
    import pandas as pd
    import torch

    from curves import evaluate_test
    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.paths import atomic_write_bytes, runs_dir
    from eacnn.training.loop import fit

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA device: this script trains the paper profile on a GPU (use --allow-cpu to check it on a CPU)",
              file=sys.stderr)
        return 2
    torch.set_flush_denormal(True)
    cfg = Config.paper().replace(**{"model.kind": "paper", "train.epochs": args.epochs,
                                    "train.max_minutes": args.minutes, "train.train_subset": args.train_subset,
                                    "data.max_structures": args.max_structures,
                                    "train.device": "cuda" if torch.cuda.is_available() else "cpu"})
    data = build_dataset(cfg)
    run = args.run_dir or runs_dir() / f"gpu-paper-{args.epochs}"
    t0 = time.perf_counter()
    result = fit(cfg, data, run_dir=run, resume=True, progress=True)
    minutes = (time.perf_counter() - t0) / 60
    with torch.no_grad():
        test = evaluate_test(cfg, result.model, data)
    log = result.history
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    from eacnn.training.loop import training_indices

    row = {"date": time.strftime("%Y-%m-%d"), "device": device, "profile": "paper", "tower": "paper",
           "n_train": int(len(training_indices(cfg, data))), "epochs_run": int(log.epoch.max()),
           "epochs_budget": args.epochs, "minutes_this_call": round(minutes, 2),
           "minutes_training": round(float(log.seconds.sum()) / 60, 2), "best_epoch": int(log.loc[log.val_score.idxmax(),
                                                                                                   "epoch"]),
           "val_top1": result.best_top1, **test}
    old = pd.read_csv(args.out) if args.out.is_file() else pd.DataFrame()
    table = pd.concat([old, pd.DataFrame([row])], ignore_index=True)
    atomic_write_bytes(args.out, table.to_csv(index=False, float_format="%.6g").encode())
    print(pd.DataFrame([row]).T.to_string(header=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
