"""The direct baseline the paper argues against: a space-group classifier of the pattern (1D ResNet + softmax).

The classifier reads the same 140-bin patterns with the same 1D ResNet as the XRD tower
(:class:`eacnn.models.XRDEncoder`), trained with cross-entropy over the 230 space groups on the training split,
with the same augmentation as contrastive training. Its epoch is chosen on the validation split (mean accuracy of
clean and moderately perturbed queries), as the contrastive model's is.

The comparison it supports (notebook 08): a classifier can only name a space group it has seen often enough,
while retrieval names a *structure* — and so a space group — even for groups with one or no training sample.

>>> from eacnn.config import Config
>>> clf = SpaceGroupClassifier(Config.smoke().model)
>>> clf(torch.rand(2, 140)).shape
torch.Size([2, 230])
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import augment_patterns
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import AugmentConfig, Config, ModelConfig
from .models.xrd_tower import XRDEncoder
from .paths import DATA_DIR

log = logging.getLogger(__name__)

__all__ = [
    "SpaceGroupClassifier", "ClassifierConfig", "fit_classifier", "load_classifier", "load_or_train_classifier",
    "N_SPACEGROUPS", "SHIPPED_CLASSIFIER",
]

N_SPACEGROUPS = 230
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


class SpaceGroupClassifier(nn.Module):
    """Pattern [B, n_bins] -> logits [B, 230] (index = space-group number - 1)."""

    def __init__(self, model: ModelConfig):
        super().__init__()
        self.model_config = model
        self.backbone = XRDEncoder(model)
        self.head = nn.Linear(model.xrd_dim, N_SPACEGROUPS)

    def forward(self, pattern: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.silu(self.backbone.features(pattern)))

    @torch.no_grad()
    def predict(self, patterns: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(predicted space-group numbers [n], their softmax probabilities [n]) of patterns [n, n_bins]."""
        from .models.clip import _check_patterns

        x = _check_patterns(patterns, self.model_config.n_bins)
        x = x / x.max(axis=1, keepdims=True)
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        labels, probs = [], []
        for i in range(0, len(x), batch_size):
            p = torch.softmax(self(torch.from_numpy(x[i : i + batch_size]).to(device)).float(), dim=1)
            conf, idx = p.max(dim=1)
            labels.append(idx.cpu().numpy() + 1)
            probs.append(conf.cpu().numpy())
        self.train(was)
        if not labels:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return np.concatenate(labels), np.concatenate(probs)


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
        dataset: a :class:`eacnn.dataset.CrystalDataset`.
        settings: epochs, batch size, learning rate.
        path: where the best checkpoint goes (written atomically after every better epoch); none when None.

    Returns:
        (the best model in eval mode on the CPU, the per-epoch history).
    """
    from .train import _lr_lambda, _param_groups  # the same optimiser set-up as contrastive training

    s = settings or ClassifierConfig()
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        device = torch.device("cpu")
        torch.set_flush_denormal(True)
    else:
        device = torch.device("cuda" if cfg.train.device == "auto" else cfg.train.device)
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
    opt = torch.optim.AdamW(_param_groups(model, s.weight_decay), lr=s.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, steps * s.epochs, 0.01))
    history, best, best_state = [], -math.inf, None
    order_rng = np.random.default_rng(cfg.seed)
    for epoch in range(s.epochs):
        t0 = time.perf_counter()
        model.train()
        order = order_rng.permutation(train_idx)
        total = 0.0
        for step in tqdm(range(steps), desc=f"classifier epoch {epoch + 1}/{s.epochs}", unit="step",
                         disable=not progress, leave=False):
            rows = order[step * batch : (step + 1) * batch]
            rng = np.random.default_rng([cfg.seed, epoch, step, 31])
            x = augment_patterns([dataset.sticks(int(i)) for i in rows], cfg.augment, rng, cfg.xrd)
            y = torch.from_numpy(sg[rows] - 1).to(device)
            loss = nn.functional.cross_entropy(model(torch.from_numpy(x).to(device)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss)
        acc = _accuracy(model, val_clean, sg[val_idx])
        acc_p = _accuracy(model, val_pert, sg[val_idx]) if val_pert is not None else float("nan")
        score = acc if val_pert is None else 0.5 * (acc + acc_p)
        history.append({"epoch": epoch + 1, "train_loss": total / max(steps, 1), "val_acc": acc,
                        "val_acc_perturbed": acc_p, "val_score": score, "seconds": time.perf_counter() - t0})
        if math.isnan(score) or score > best:
            best = score
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if path is not None:
                save_checkpoint(path, _payload(best_state, cfg, s, dataset.key, history))
        log.info("classifier epoch %d: loss %.3f, val acc %.3f (perturbed %.3f)", epoch + 1,
                 history[-1]["train_loss"], acc, acc_p)
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
    import hashlib

    from .paths import runs_dir

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
