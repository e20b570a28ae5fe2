"""Ship the embedded database's embeddings for the shipped model (``eacnn/data/databases``), so a first search
on a fresh install takes seconds instead of embedding 18,093 structures (minutes).

Writes ``embedded.npz`` (material ids and float16 L2-normalised structure embeddings, in the embedded table's
order) and ``embedded.json`` (the checkpoint's SHA-256, the file's SHA-256, and the calibrated verdict threshold
fitted on the validation split with :func:`eacnn.retrieval.identify.calibrate`). Rerun after retraining the
default model:

    python scripts/ship_database.py            # about 10-15 min on 2 cores with a cold data-set cache
    python scripts/ship_database.py --calibrate-only   # the same model: refit only the verdict (a few minutes)
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np

from eacnn.config import Config
from eacnn.paths import atomic_write_bytes
from eacnn.retrieval.database import SHIPPED_DIR, _from_datasets, file_sha256
from eacnn.datasets.dataset import build_dataset
from eacnn.retrieval.identify import calibrate
from eacnn.training.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, model_from_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibrate-only", action="store_true",
                        help="keep the shipped embeddings (same checkpoint) and refit only the verdict's calibration")
    args = parser.parse_args()
    t0 = time.perf_counter()
    ckpt = load_checkpoint(DEFAULT_CHECKPOINT)
    model, cfg = model_from_checkpoint(ckpt), Config.from_dict(ckpt["config"])
    cal = calibrate(model, build_dataset(cfg.replace(**{"data.source": "embedded", "data.max_structures": 0})),
                    progress=True)
    if args.calibrate_only:
        meta = json.loads((SHIPPED_DIR / "embedded.json").read_text())
        if meta["checkpoint_sha256"] != file_sha256(DEFAULT_CHECKPOINT):
            raise SystemExit("the shipped embeddings belong to another checkpoint: run without --calibrate-only")
        meta.update(calibration=cal, calibrated=time.strftime("%Y-%m-%d"))
        atomic_write_bytes(SHIPPED_DIR / "embedded.json", json.dumps(meta, indent=1).encode())
        print(json.dumps(meta, indent=1), f"\n{time.perf_counter() - t0:.0f} s")
        return
    labels, embeddings = _from_datasets(["embedded"], model, cfg, progress=True)[:2]
    buf = io.BytesIO()
    np.savez_compressed(buf, material_id=labels["material_id"].to_numpy().astype(str),
                        embeddings=embeddings.astype(np.float16))
    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(SHIPPED_DIR / "embedded.npz", buf.getvalue())
    meta = {"checkpoint_sha256": file_sha256(DEFAULT_CHECKPOINT), "file": "embedded.npz",
            "sha256": file_sha256(SHIPPED_DIR / "embedded.npz"), "n": int(len(labels)),
            "dtype": "float16", "created": time.strftime("%Y-%m-%d"),
            "calibration": cal}
    atomic_write_bytes(SHIPPED_DIR / "embedded.json", json.dumps(meta, indent=1).encode())
    print(json.dumps(meta, indent=1), f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
