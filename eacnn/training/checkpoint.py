"""Checkpoints: ``state_dict`` + config + versions + data key, written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors and JSON-like values::

    {"state_dict", "optimizer", "scheduler", "epoch", "config" (Config.to_dict()), "versions", "data_key", ...}

It is never a pickled model: loading goes through ``torch.load(..., weights_only=True)``, which refuses any
pickled class instance or code. (Importing mace sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the process; that
variable only changes calls that leave ``weights_only`` unset, so the explicit ``True`` here still holds.)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from eacnn.config import Config
from eacnn.errors import CheckpointError
from eacnn.integrity import verify_file
from eacnn.paths import DATA_DIR, atomic_write_bytes

__all__ = [
    "DEFAULT_CHECKPOINT",
    "LOG_COLUMNS",
    "save_checkpoint",
    "load_checkpoint",
    "config_mismatch",
    "model_from_checkpoint",
    "pattern_encoder_from_checkpoint",
    "load_pretrained",
    "package_versions",
]

#: The columns of a contrastive run's ``log.csv`` and of the ``history`` inside its checkpoints (one row per epoch).
LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_top1", "val_top5", "temperature", "lr", "seconds", "val_pool",
               "val_top1_perturbed", "val_score"]
#: Where :func:`load_pretrained` looks when no path is given.
DEFAULT_CHECKPOINT = DATA_DIR / "checkpoints" / "default.pt"
#: Config fields that change how a run executes but not what it computes; ignored when matching checkpoints.
RUNTIME_FIELDS = frozenset({"train.device", "train.num_workers", "train.eval_batch_size", "train.max_minutes"})


def package_versions() -> dict[str, str]:
    """Versions of the packages a checkpoint depends on (read from metadata; nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name, dist in (("torch", "torch"), ("e3nn", "e3nn"), ("mace", "mace-torch"), ("eacnn", "eacnn")):
        try:
            out[name] = version(dist)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with ``torch.save`` so that readers see the old file or the whole new one."""
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def flat_config(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_mismatch(saved: dict, current: dict, ignore: frozenset[str] = RUNTIME_FIELDS) -> list[str]:
    """Dotted keys whose values differ between two ``Config.to_dict()`` dicts, as "key: saved -> current".

    A field the saved dict lacks (written before the field existed) counts as its default, which is what
    ``Config.from_dict`` gives it, so older checkpoints still match a config that only adds fields.
    """
    try:
        saved = Config.from_dict(saved).to_dict()
    except (TypeError, ValueError):
        pass  # compared as written; the differences are reported below
    a, b = flat_config(saved), flat_config(current)
    keys = sorted((set(a) | set(b)) - set(ignore))
    return [f"{k}: {a.get(k, '<missing>')!r} -> {b.get(k, '<missing>')!r}" for k in keys if a.get(k) != b.get(k)]


def load_checkpoint(
    path: str | Path,
    map_location: Any = "cpu",
    config: Config | None = None,
    data_key: str | None = None,
) -> dict[str, Any]:
    """Read a checkpoint dict safely and, optionally, check that it was made for ``config`` and ``data_key``.

    A shipped checkpoint must match the SHA-256 recorded in the package, any other must pass its zip CRC check
    (:func:`eacnn.integrity.verify_file`), before ``torch.load`` reads it.

    Raises:
        CheckpointError: missing, truncated or corrupt file (a failed SHA-256 or CRC check included, named with
            what to do); a file holding pickled objects (refused by
            ``weights_only=True``); not an eacnn checkpoint; or a config / data-key mismatch (the message names
            the file and every differing field).
    """
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file (give e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    verify_file(path, error=CheckpointError)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        import zipfile

        # torch refuses any unreadable pickle as "weights only"; only a well-formed torch file holds real objects
        if zipfile.is_zipfile(path) and ("weights only" in str(err).lower() or "weights_only" in str(err).lower()):
            raise CheckpointError(
                f"{path} holds pickled Python objects, not only tensors and plain data; eacnn loads checkpoints "
                f"with weights_only=True and will not unpickle it (first line of torch's reason: "
                f"{str(err).strip().splitlines()[0]})"
            ) from err
        raise CheckpointError(f"{path} is corrupt or truncated ({type(err).__name__}: {err})") from err
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError, IndexError) as err:
        raise CheckpointError(f"{path} is corrupt or truncated ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not an eacnn checkpoint (need 'state_dict' and 'config'; found {keys})")
    if config is not None:
        diff = config_mismatch(ckpt["config"], config.to_dict())
        if diff:
            raise CheckpointError(
                f"{path} was made for another config ({len(diff)} field(s) differ, checkpoint -> now): "
                + "; ".join(diff[:8])
                + ("; ..." if len(diff) > 8 else "")
            )
    if data_key is not None and ckpt.get("data_key") != data_key:
        raise CheckpointError(
            f"{path} was trained on data {str(ckpt.get('data_key'))[:16]}..., not on this dataset "
            f"{str(data_key)[:16]}...; rebuild the dataset it was made for or train a new model"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], map_location: Any = "cpu"):
    """The :class:`eacnn.models.EACNN` described by a loaded checkpoint dict, weights loaded, in eval mode."""
    from eacnn.models import EACNN

    try:
        cfg = Config.from_dict(ckpt["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the checkpoint's config cannot be read: {err}") from err
    model = EACNN.from_config(cfg)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"the checkpoint's weights do not fit its own config: {err}") from err
    return model.to(map_location).eval()


def pattern_encoder_from_checkpoint(ckpt: dict[str, Any]):
    """The trained XRD tower alone (:class:`eacnn.models.xrd_tower.XRDEncoder`, eval mode) and its model config,
    from a loaded checkpoint dict: what a database of shipped embeddings needs, without importing the structure
    tower's mace-torch (seconds)."""
    from eacnn.models.xrd_tower import XRDEncoder

    try:
        cfg = Config.from_dict(ckpt["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the checkpoint's config cannot be read: {err}") from err
    enc = XRDEncoder(cfg.model)
    prefix = "xrd_encoder."
    try:
        enc.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    except RuntimeError as err:
        raise CheckpointError(f"the checkpoint's XRD tower does not fit its own config: {err}") from err
    return enc.eval(), cfg.model


def load_pretrained(path: str | Path | None = None, map_location: Any = "cpu"):
    """A trained :class:`eacnn.models.EACNN` from a checkpoint (default: ``eacnn/data/checkpoints/default.pt``).

    Raises:
        CheckpointError: no checkpoint there (the message says how to train one), or an unreadable one.
    """
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(
            f"no pretrained checkpoint at {path}. Train one on the embedded data with `eacnn train --profile cpu` "
            f"(or `eacnn.training.loop.fit(Config.cpu(), build_dataset(Config.cpu()))`, 30–60 min on 2 CPU cores) and "
            f"copy its run folder's best.pt to {DEFAULT_CHECKPOINT}, or pass path=<your best.pt>"
        )
    return model_from_checkpoint(load_checkpoint(path, map_location="cpu"), map_location)


#: The shipped checkpoints, one per model configuration compared in the book.
SHIPPED = {"eacnn": DATA_DIR / "checkpoints" / "default.pt", "paper": DATA_DIR / "checkpoints" / "paper.pt"}


def export_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Write a slim copy of a training checkpoint for shipping: weights, config, versions, data key and the
    training history — no optimizer, scheduler or scaler state (a third of the size). Also writes
    ``<dst stem>.json`` (the resolved config) and ``<dst stem>_log.csv`` (one row per epoch of the whole run, ``kept``
    = 1 on the epoch ``src`` holds) beside it. ``src`` may be any epoch's checkpoint of a run: the history comes
    from the run's ``last.pt`` beside it when there is one."""
    import json

    import pandas as pd

    ckpt = load_checkpoint(src, map_location="cpu")
    slim = {k: ckpt[k] for k in ("state_dict", "epoch", "config", "versions", "data_key", "history", "best_top1",
                                 "best_score", "best_epoch") if k in ckpt}
    slim["finished"] = True
    last = Path(src).with_name("last.pt")  # the whole run's history (best.pt holds it up to the best epoch)
    if last.is_file() and last != Path(src):
        slim["history"] = load_checkpoint(last, map_location="cpu").get("history", slim.get("history", []))
    dst = Path(dst)
    save_checkpoint(dst, slim)
    atomic_write_bytes(dst.with_suffix(".json"), json.dumps(slim["config"], indent=2, sort_keys=True).encode())
    history = pd.DataFrame(slim.get("history", []), columns=LOG_COLUMNS)
    history["kept"] = (history["epoch"] == int(slim["epoch"]) + 1).astype(int)  # the epoch that ships
    atomic_write_bytes(dst.with_name(dst.stem + "_log.csv"), history.to_csv(index=False).encode())
    return dst
