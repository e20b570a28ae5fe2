"""Learning and data-scaling curves of the paper's tower and our default (issue: the paper's headline answered).

    nice -n 19 python scripts/curves.py [--towers paper default] [--sizes 1000 2000 4000 0] [--epochs 100]
                                        [--patience 20] [--threads 2]
    python scripts/curves.py --collect-only      # write the CSVs from the runs so far (unfinished ones too)

Each run is the shipped tower's own configuration (``eacnn/data/checkpoints/<tower>.json``: the same data, losses,
augmentation and batch size) with ``train.epochs`` raised to ``--epochs``, early stopping after ``--patience`` epochs
without a better validation score, and ``train.train_subset`` set to the run's training-set size (nested subsets of
the training split; 0 = all of it). Validation always retrieves the 905 validation structures among the validation
and the whole training split (9,047 candidates), so every point of every curve is measured on the same pool.

Runs live in ``$EACNN_RUNS/curve-<tower>-<size>`` and resume from ``last.pt`` after any interruption (the cosine
schedule is fitted to ``--epochs``, so a resumed run continues the same schedule). After each run finishes, its best
epoch (chosen on validation) is evaluated once on the MP-20 test pool (9,046 structures, clean patterns) — the only
time this script reads the test split.

Writes ``eacnn/data/curves.csv`` (one row per epoch of every run: tower, n_train, epoch, validation Top-1 clean and
perturbed, Top-5, temperature, losses, seconds) and ``eacnn/data/curves_summary.csv`` (one row per run: epochs run,
best epoch, its validation Top-1, finished or not, and the test Top-1/Top-5 of finished runs). Chapter 4 plots them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "eacnn" / "data"
TOWERS = ("paper", "default")  # shipped checkpoint names: the paper's tower and ours


def run_name(tower: str, size: int) -> str:
    return f"curve-{tower}-{size if size else 'all'}"


def tower_config(tower: str, size: int, epochs: int, patience: int):
    """The shipped tower's config with the curve's epochs, patience and training-set size (CPU)."""
    from eacnn.config import Config

    saved = json.loads((DATA / "checkpoints" / f"{tower}.json").read_text())
    return Config.from_dict(saved).replace(**{
        "train.epochs": epochs, "train.patience": patience, "train.train_subset": size, "train.device": "cpu",
    })


def collect(runs: Path, out: Path, summary_out: Path) -> None:
    """Gather every curve run's per-epoch log and summary into the two CSVs (atomic writes)."""
    import pandas as pd

    from eacnn.paths import atomic_write_bytes

    frames, rows = [], []
    for run in sorted(runs.glob("curve-*")):
        log_path, info_path = run / "log.csv", run / "curve.json"
        if not log_path.is_file() or not info_path.is_file():
            continue
        info = json.loads(info_path.read_text())
        log = pd.read_csv(log_path)
        log.insert(0, "n_train", info["n_train"])
        log.insert(0, "tower", info["tower"])
        frames.append(log)
        best = log.loc[log["val_score"].idxmax()]
        rows.append({
            "tower": info["tower"], "n_train": info["n_train"], "epochs_run": int(log.epoch.max()),
            "max_epochs": info["epochs"], "patience": info["patience"], "finished": bool(info.get("finished")),
            "best_epoch": int(best.epoch), "val_top1": float(best.val_top1),
            "val_top1_perturbed": float(best.val_top1_perturbed), "val_pool": int(best.val_pool),
            "final_temperature": float(log.temperature.iloc[-1]), "train_hours": float(log.seconds.sum() / 3600),
            "test_top1": info.get("test_top1", float("nan")), "test_top5": info.get("test_top5", float("nan")),
            "test_pool": info.get("test_pool", 0),
        })
    if not frames:
        print("no curve runs found under", runs)
        return
    cols = ["tower", "n_train", "epoch", "val_top1", "val_top1_perturbed", "val_top5", "val_score", "temperature",
            "train_loss", "val_loss", "lr", "seconds", "val_pool"]
    table = pd.concat(frames, ignore_index=True)[cols]
    atomic_write_bytes(out, table.to_csv(index=False, float_format="%.6g").encode())
    atomic_write_bytes(summary_out, pd.DataFrame(rows).to_csv(index=False, float_format="%.6g").encode())
    print(f"wrote {out} ({len(table)} epochs) and {summary_out} ({len(rows)} runs)")


def evaluate_test(cfg, model, dataset) -> dict:
    """Clean Top-1/Top-5 of the best epoch on the MP-20 test pool (test structures as candidates)."""
    from eacnn.training.loop import evaluate_retrieval, split_batches

    batches = split_batches(dataset, dataset.indices("test"), cfg.train.eval_batch_size)
    m = evaluate_retrieval(model, batches, cfg.train.batch_size)
    return {"test_top1": m["val_top1"], "test_top5": m["val_top5"], "test_pool": int(m["val_pool"])}


def same_arrays_rekey(run: Path, dataset) -> None:
    """A run interrupted before a code change that moved the data set's cache key (the key hashes the code that
    computes the arrays, not only the arrays) resumes only if its data are unchanged: when ``last.pt`` names another
    key whose cached data set is still here and holds exactly the same arrays as ``dataset``, the run's checkpoints
    are re-stamped with the new key (logged in ``curve.json``); otherwise nothing changes and the resume refuses."""
    import numpy as np

    from eacnn.paths import atomic_write_bytes, cache_dir
    from eacnn.training.checkpoint import load_checkpoint, save_checkpoint

    last = run / "last.pt"
    if not last.is_file():
        return
    old = load_checkpoint(last).get("data_key")
    if old is None or old == dataset.key:
        return
    cached = cache_dir() / f"dataset-{str(old)[:20]}.npz"
    if not cached.is_file():
        return
    with np.load(cached, allow_pickle=False) as a, np.load(cache_dir() / f"dataset-{dataset.key[:20]}.npz",
                                                        allow_pickle=False) as b:
        if sorted(a.files) != sorted(b.files) or any(not np.array_equal(a[k], b[k]) for k in a.files):
            return
    for name in ("last.pt", "best.pt"):
        if (run / name).is_file():
            ckpt = load_checkpoint(run / name)
            ckpt["data_key"] = dataset.key
            save_checkpoint(run / name, ckpt)
    info_path = run / "curve.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info.setdefault("rekeyed", []).append({"from": old, "to": dataset.key, "why": "same arrays, new code digest"})
    atomic_write_bytes(info_path, json.dumps(info, indent=1).encode())
    print(f"{run.name}: data key {str(old)[:12]} -> {dataset.key[:12]} (the cached arrays are identical)")


def train_one(tower: str, size: int, args, dataset, runs: Path) -> None:
    import torch

    from eacnn.paths import atomic_write_bytes
    from eacnn.training.loop import fit, training_indices

    cfg = tower_config(tower, size, args.epochs, args.patience)
    run = runs / run_name(tower, size)
    run.mkdir(parents=True, exist_ok=True)
    info_path = run / "curve.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info.get("finished"):
        print(f"{run.name}: finished before (test Top-1 {info.get('test_top1', float('nan')):.4f})")
        return
    info.update(tower=tower, n_train=int(len(training_indices(cfg, dataset))), epochs=args.epochs,
                patience=args.patience, finished=False)
    atomic_write_bytes(info_path, json.dumps(info, indent=1).encode())
    t0 = time.perf_counter()
    same_arrays_rekey(run, dataset)
    result = fit(cfg, dataset, run_dir=run, resume=True, progress=not args.quiet)
    with torch.no_grad():
        info.update(evaluate_test(cfg, result.model, dataset))
    info.update(finished=True, last_call_seconds=time.perf_counter() - t0, threads=torch.get_num_threads())
    atomic_write_bytes(info_path, json.dumps(info, indent=1).encode())
    print(f"{run.name}: {len(result.history)} epochs, best val Top-1 {result.best_top1:.4f}, "
          f"test Top-1 {info['test_top1']:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--towers", nargs="+", default=list(TOWERS), choices=TOWERS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 2000, 4000, 0],
                        help="training-set sizes (nested subsets; 0 = the whole training split)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--out", type=Path, default=DATA / "curves.csv")
    parser.add_argument("--summary", type=Path, default=DATA / "curves_summary.csv")
    parser.add_argument("--collect-only", action="store_true", help="only write the CSVs from the runs so far")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if any(s < 0 for s in args.sizes) or args.epochs < 1 or args.patience < 0:
        parser.error(f"need sizes >= 0, epochs >= 1, patience >= 0; got {args.sizes}, {args.epochs}, {args.patience}")

    from eacnn.paths import runs_dir

    runs = runs_dir()
    if args.collect_only:
        collect(runs, args.out, args.summary)
        return 0
    import mace  # noqa: F401  (before e3nn under torch >= 2.6)
    import torch

    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    from eacnn.datasets.dataset import build_dataset

    dataset = build_dataset(tower_config(args.towers[0], 0, args.epochs, args.patience))
    for tower in args.towers:
        for size in args.sizes:
            train_one(tower, size, args, dataset, runs)
            collect(runs, args.out, args.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
