"""The direct baseline the paper argues against: a space-group classifier of the pattern (1D ResNet + softmax).

The classifier reads the same 140-bin patterns with the same 1D ResNet as the XRD tower
(:class:`eacnn.models.XRDEncoder`), trained with cross-entropy over the 230 space groups on the training split,
with the same augmentation as contrastive training. Its epoch is chosen on the validation split (mean accuracy of
clean and moderately perturbed queries), as the contrastive model's is.

The comparison it supports (notebook 08): a classifier can only name a space group it has seen often enough,
while retrieval names a *structure* — and so a space group — even for groups with one or no training sample.

The network is :class:`eacnn.models.SpaceGroupClassifier`; it is trained through the same epoch loop, optimiser
and best-epoch selection as the contrastive model (:func:`eacnn.training.loop.run_epoch`, :class:`Selection`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from eacnn.config import AugmentConfig, Config
from eacnn.models.classifier import N_SPACEGROUPS, SpaceGroupClassifier
from eacnn.paths import DATA_DIR, runs_dir
from eacnn.physics.perturb import augment_patterns
from eacnn.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from eacnn.training.loop import Selection, resolve_device, run_epoch
from eacnn.training.optim import make_optimizer

log = logging.getLogger(__name__)

__all__ = [
    "SpaceGroupClassifier", "ClassifierConfig", "fit_classifier", "load_classifier", "load_or_train_classifier",
    "N_SPACEGROUPS", "SHIPPED_CLASSIFIER",
]

#: The classifier trained on the embedded data with the ``cpu`` profile's XRD tower (``eacnn train-classifier``).
SHIPPED_CLASSIFIER = DATA_DIR / "checkpoints" / "classifier.pt"
HISTORY_COLUMNS = ["epoch", "train_loss", "val_acc", "val_acc_perturbed", "val_score", "seconds"]


@dataclass(frozen=True)
class ClassifierConfig:
    """Training of the space-group classifier (its network is the config's XRD tower)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    val_level: int = 2  # augmentation level of the second set of validation queries (0: clean only)


def _accuracy(model: SpaceGroupClassifier, patterns: np.ndarray, sg: np.ndarray) -> float:
    pred, _ = model.predict(patterns)
    return float(np.mean(pred == sg)) if len(sg) else float("nan")


def fit_classifier(
    cfg: Config,
    dataset,
    settings: ClassifierConfig | None = None,
    path: str | Path | None = None,
    progress: bool = True,
) -> tuple[SpaceGroupClassifier, pd.DataFrame]:
    """Train the classifier on ``dataset``'s train split, keep the best validation epoch, save it to ``path``.

    Args:
        cfg: model (the XRD tower's shape), augment, xrd and seed come from here.
        dataset: a :class:`eacnn.datasets.dataset.CrystalDataset`.
        settings: epochs, batch size, learning rate.
        path: where the best checkpoint goes (written atomically after every better epoch); none when None.

    Returns:
        (the best model in eval mode on the CPU, the per-epoch history).
    """
    s = settings or ClassifierConfig()
    device = resolve_device("cpu" if not torch.cuda.is_available() else cfg.train.device)
    sg = dataset.labels["spacegroup_number"].to_numpy()
    train_idx, val_idx = np.asarray(dataset.indices("train")), np.asarray(dataset.indices("val"))
    if len(train_idx) < 2:
        raise ValueError(f"the train split has {len(train_idx)} structures; the classifier needs at least 2")
    batch = min(s.batch_size, len(train_idx))
    steps = len(train_idx) // batch
    val_clean = dataset.vectors[val_idx]
    val_pert = None
    if s.val_level and len(val_idx):
        val_pert = augment_patterns([dataset.sticks(int(i)) for i in val_idx], AugmentConfig.level(s.val_level),
                                    np.random.default_rng([cfg.seed, 7919]), cfg.xrd)

    torch.manual_seed(cfg.seed)
    model = SpaceGroupClassifier(cfg.model).to(device)
    opt, sched = make_optimizer(model, s.lr, s.weight_decay, steps, steps * s.epochs, 0.01)
    sel, history, best_state = Selection(), [], None
    order_rng = np.random.default_rng(cfg.seed)
    for epoch in range(s.epochs):
        t0 = time.perf_counter()
        model.train()
        order = order_rng.permutation(train_idx)

        def step_loss(rows: np.ndarray, step: int, epoch: int = epoch) -> torch.Tensor:
            rng = np.random.default_rng([cfg.seed, epoch, step, 31])
            x = augment_patterns([dataset.sticks(int(i)) for i in rows], cfg.augment, rng, cfg.xrd)  # [B, n_bins]
            y = torch.from_numpy(sg[rows] - 1).to(device)
            return nn.functional.cross_entropy(model(torch.from_numpy(x).to(device)), y)

        batches = (order[k * batch : (k + 1) * batch] for k in range(steps))
        loss = run_epoch(batches, step_loss, model, opt, sched, steps, grad_clip=1.0,
                         desc=f"classifier epoch {epoch + 1}/{s.epochs}", progress=progress)
        acc = _accuracy(model, val_clean, sg[val_idx])
        acc_p = _accuracy(model, val_pert, sg[val_idx]) if val_pert is not None else float("nan")
        score = acc if val_pert is None else 0.5 * (acc + acc_p)
        history.append({"epoch": epoch + 1, "train_loss": loss, "val_acc": acc, "val_acc_perturbed": acc_p,
                        "val_score": score, "seconds": time.perf_counter() - t0})
        if sel.update(epoch, score, s.epochs - 1):
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if path is not None:
                save_checkpoint(path, _payload(best_state, cfg, s, dataset.key, history))
        log.info("classifier epoch %d: loss %.3f, val acc %.3f (perturbed %.3f)", epoch + 1, loss, acc, acc_p)
    if path is not None:  # the whole history beside the best weights
        save_checkpoint(path, _payload(best_state, cfg, s, dataset.key, history))
    model.load_state_dict(best_state)
    return model.cpu().eval(), pd.DataFrame(history, columns=HISTORY_COLUMNS)


def _payload(state: dict, cfg: Config, s: ClassifierConfig, data_key: str, history: list[dict]) -> dict:
    return {"state_dict": state, "config": cfg.to_dict(), "classifier": asdict(s), "data_key": data_key,
            "history": history, "kind": "spacegroup-classifier"}


def load_classifier(path: str | Path, map_location="cpu") -> tuple[SpaceGroupClassifier, pd.DataFrame]:
    """(classifier in eval mode, its training history) from a checkpoint written by :func:`fit_classifier`.

    Raises:
        CheckpointError: missing, corrupt, pickled or not a classifier checkpoint.
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    if ckpt.get("kind") != "spacegroup-classifier":
        raise CheckpointError(f"{path} is not a space-group classifier checkpoint (kind {ckpt.get('kind')!r})")
    model = SpaceGroupClassifier(Config.from_dict(ckpt["config"]).model)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit the classifier its config describes: {err}") from err
    return model.eval(), pd.DataFrame(ckpt.get("history", []), columns=HISTORY_COLUMNS)


def load_or_train_classifier(cfg: Config, dataset, settings: ClassifierConfig | None = None, progress: bool = True
                             ) -> tuple[SpaceGroupClassifier, pd.DataFrame]:
    """The classifier for ``cfg`` and ``dataset``: loaded from the runs folder when a finished run for the same
    config, settings and data exists, else trained there (a corrupt file is reported and replaced)."""
    s = settings or ClassifierConfig()
    digest = hashlib.sha256((cfg.to_json() + repr(asdict(s)) + str(dataset.key)).encode()).hexdigest()[:12]
    path = runs_dir() / f"classifier-{cfg.profile}-{digest}.pt"
    if path.is_file():
        try:
            model, history = load_classifier(path)
            if len(history) == s.epochs:
                return model, history
        except CheckpointError as err:
            log.warning("%s; training the classifier again", err)
    return fit_classifier(cfg, dataset, s, path=path, progress=progress)
