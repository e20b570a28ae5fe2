"""The averaged model of chapter 4's epochs table: the element-wise mean of the weights of several epochs of one run
(stochastic weight averaging done after the fact), written as a checkpoint ``select_rerank.py`` can score.

    python scripts/average_checkpoints.py RUN/epoch_9.pt ... RUN/epoch_16.pt --out RUN/avg_9-16.pt

Every checkpoint must come from the same configuration and data (checked); floating-point tensors are averaged in
float64 and cast back; integer buffers (counters) are taken from the last checkpoint. The output carries the last
checkpoint's config, data key and history, and the list of averaged files (``averaged``). The file's stem names
the column of ``eacnn/data/epochs.csv`` (``avg_9-16``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if len(args.checkpoints) < 2:
        parser.error("give at least two checkpoints to average")
    missing = [str(p) for p in args.checkpoints if not p.is_file()]
    if missing:
        parser.error(f"no checkpoint file at {', '.join(missing)}")

    import mace  # noqa: F401  (before e3nn under torch >= 2.6)
    import torch

    from eacnn.config import Config
    from eacnn.training.checkpoint import load_checkpoint, save_checkpoint

    ckpts = [load_checkpoint(p, map_location="cpu") for p in args.checkpoints]
    first = Config.from_dict(ckpts[0]["config"])
    for path, c in zip(args.checkpoints[1:], ckpts[1:]):
        load_checkpoint(path, map_location="cpu", config=first, data_key=ckpts[0].get("data_key"))  # same run
    state = {}
    for name, tensor in ckpts[-1]["state_dict"].items():
        if torch.is_floating_point(tensor):
            mean = sum(c["state_dict"][name].double() for c in ckpts) / len(ckpts)
            state[name] = mean.to(tensor.dtype)
        else:
            state[name] = tensor
    out = {k: v for k, v in ckpts[-1].items() if k not in ("optimizer", "scheduler", "scaler")}
    out.update(state_dict=state, averaged=[str(p) for p in args.checkpoints])
    save_checkpoint(args.out, out)
    print(f"mean of {len(ckpts)} checkpoints -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
