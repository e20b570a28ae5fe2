"""fit() under torchrun: two CPU processes on the gloo backend, a tiny model, two steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")

CHILD = """
import json, os, sys
from test_train import TinyDataset, _cfg
from eacnn.training.loop import fit

out = sys.argv[1]
cfg = _cfg(**{"train.epochs": 1, "train.max_steps_per_epoch": 2, "train.device": "cpu"})
result = fit(cfg, TinyDataset(), run_dir=os.path.join(out, "run"), progress=False)
rank = int(os.environ["RANK"])
with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
    json.dump({"world": int(os.environ["WORLD_SIZE"]), "train_loss": float(result.history["train_loss"].iloc[0]),
               "best_top1": result.best_top1}, fh)
"""


@pytest.mark.slow
def test_fit_runs_under_torchrun_with_two_gloo_processes(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    tests_dir = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_dir), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # a hang guard, not a speed test
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    # the embeddings are all-gathered, so both processes see the same global-batch loss
    assert ranks[0]["train_loss"] == pytest.approx(ranks[1]["train_loss"], rel=1e-6)
    assert ranks[0]["best_top1"] == ranks[1]["best_top1"]
    run = tmp_path / "run"
    assert {"config.json", "log.csv", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    assert len(pd.read_csv(run / "log.csv")) == 1  # one writer: rank 0
