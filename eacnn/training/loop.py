"""One explicit contrastive training loop, checkpoints, resume, load-or-train (paper §2.5).

Each step pairs a structure (its periodic graph, and for ``kind="eacnn"`` its own clean pattern) with an
*augmented* pattern simulated from the same structure's sticks (:mod:`eacnn.physics.perturb`), and minimises CLIP's
symmetric InfoNCE over the batch. After each epoch the validation structures are retrieved from their clean
validation patterns among the whole validation pool (Top-1 / Top-5); the best epoch by Top-1 is kept and training
stops after ``train.patience`` epochs without improvement.

Run folder (only rank 0 writes): ``config.json`` (the resolved config), ``log.csv`` (one row per epoch),
``last.pt`` (every epoch; resume point) and ``best.pt`` (best validation Top-1).

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains on its shard
(``DistributedSampler``) of ``train.batch_size / WORLD_SIZE`` pairs; embeddings are all-gathered with gradients
so the loss is the loss of the whole global batch, as in a single process. gloo on CPU, NCCL on CUDA.

The dataset is duck-typed (an :class:`eacnn.datasets.dataset.CrystalDataset` or anything with ``key``, ``vectors``,
``indices(split)``, ``graph(i)`` and ``sticks(i)``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from eacnn.config import AugmentConfig, Config
from eacnn.datasets.graphs import collate_graphs
from eacnn.errors import CheckpointError
from eacnn.models import EACNN
from eacnn.paths import atomic_write_bytes, runs_dir
from eacnn.physics.perturb import augment_patterns
from eacnn.physics.conditions import measured_queries
from eacnn.training.batches import LookalikeSampler, duplicate_pairs
from eacnn.training.checkpoint import (
    LOG_COLUMNS,
    RUNTIME_FIELDS,
    flat_config,
    load_checkpoint,
    model_from_checkpoint,
    package_versions,
    save_checkpoint,
)
from eacnn.training.losses import clip_loss
from eacnn.training.metrics import topk_from_ranks, true_rank
from eacnn.training.optim import make_optimizer

log = logging.getLogger(__name__)

__all__ = ["FitResult", "fit", "load_or_train", "default_run_dir", "evaluate_retrieval", "run_epoch", "Selection",
           "resolve_device", "training_indices", "split_batches"]

@dataclass
class FitResult:
    """What :func:`fit` returns."""

    history: pd.DataFrame  # one row per epoch, columns LOG_COLUMNS
    best_path: Path  # best.pt (best validation Top-1)
    best_top1: float  # clean validation Top-1 of the best epoch (NaN without a validation split)
    best_score: float  # the selection score of the best epoch (mean of clean and perturbed validation Top-1)
    run_dir: Path
    model: EACNN  # best weights, eval mode, on the training device


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
class _Pairs(Dataset):
    """Items of a CrystalDataset-like object: graph, clean vector, sticks."""

    def __init__(self, data, indices: np.ndarray):
        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        i = int(self.indices[k])
        return {"index": i, "graph": self.data.graph(i), "vector": self.data.vectors[i], "sticks": self.data.sticks(i)}


def _collate(items: list[dict]) -> dict:
    return {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "graph": collate_graphs([it["graph"] for it in items]),
        "vector": torch.from_numpy(np.stack([it["vector"] for it in items]).astype(np.float32)),  # [B, n_bins]
        "sticks": [it["sticks"] for it in items],
    }


def split_batches(dataset, indices: np.ndarray, batch_size: int) -> list[dict]:
    """Collated batches (graph, clean vector, sticks) of the given rows, in order, ``batch_size`` rows each."""
    items = _Pairs(dataset, indices)
    return [_collate([items[k] for k in range(a, min(a + batch_size, len(items)))])
            for a in range(0, len(items), batch_size)]


def _to_device(batch: dict, device: torch.device) -> dict:
    graph = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch["graph"].items()}
    out = {"graph": graph, "pattern": batch["pattern"].to(device, non_blocking=True)}
    for key in ("structure_pattern", "mask"):
        if key in batch:
            out[key] = batch[key].to(device, non_blocking=True)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when fit() initialised the process group (and so destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_hint: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    owns = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_hint != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def _gather(z: torch.Tensor, d: _Dist) -> torch.Tensor:
    """All ranks' rows of z, in rank order, with gradients flowing back to each rank's own rows."""
    if d.world == 1:
        return z
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z), dim=0)


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------
def _topk(sim: torch.Tensor, ks: tuple[int, ...]) -> dict[int, float]:
    """Fraction of rows whose own column (the diagonal) is among the k most similar (:func:`true_rank`'s ties)."""
    return topk_from_ranks(true_rank(sim, np.arange(len(sim))).cpu().numpy(), ks)


@torch.no_grad()
def evaluate_retrieval(
    model: EACNN,
    batches: list[dict],
    batch_size: int,
    distractors: list[dict] | None = None,
    perturbed: np.ndarray | None = None,
    perturbed_masks: np.ndarray | None = None,
) -> dict[str, float]:
    """Validation loss and Top-1/5 of retrieving each structure from its clean pattern among all of them.

    Args:
        model: the (unwrapped) two-tower model.
        batches: collated batches of the validation structures (``graph``, ``vector``).
        batch_size: the training batch size; the validation loss is the mean InfoNCE over consecutive chunks of
            this size (the same in-batch pool as in training).
        distractors: collated batches of further candidate structures (e.g. the training split) added to the
            pool the validation patterns are retrieved from; only the validation structures are queried.
        perturbed: [n, n_bins] a second set of query patterns of the validation structures (augmented, seeded).
        perturbed_masks: [n, n_bins] their coverage (measured-like queries), or None.

    Returns:
        ``val_loss``, ``val_top1``, ``val_top5`` (clean queries), ``val_pool`` (the number of candidates),
        ``val_top1_perturbed`` (NaN without ``perturbed``) and ``val_score``, the selection score: the mean of the
        clean and perturbed Top-1 (the clean Top-1 alone without ``perturbed``).
    """
    model_batches = [{"graph": b["graph"], "structure_pattern": b["vector"]} for b in batches]
    z_s = model.encode_graph_batches(model_batches, progress=False)  # [n, d]
    z_pool = z_s
    if distractors:
        extra = [{"graph": b["graph"], "structure_pattern": b["vector"]} for b in distractors]
        z_pool = torch.cat([z_s, model.encode_graph_batches(extra, progress=False)])  # [n + m, d]
    patterns = np.concatenate([b["vector"].numpy() for b in batches]) if batches else np.zeros((0, 1))
    z_x = model.encode_patterns(patterns, progress=False) if len(patterns) else z_s  # [n, d]
    n = len(z_s)
    if n < 2:
        nan = float("nan")
        return {"val_loss": nan, "val_top1": nan, "val_top5": nan, "val_pool": n, "val_top1_perturbed": nan,
                "val_score": nan}
    scale = model.clamped_logit_scale().detach().cpu()
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 2:
        starts.pop()  # a last chunk of one item has no negatives: merge it into the previous one
    bounds = starts + [n]
    losses = [float(clip_loss(z_s[a:b], z_x[a:b], scale)) for a, b in zip(bounds[:-1], bounds[1:])]
    top = _topk(z_x @ z_pool.T, (1, 5))  # patterns query the structure pool; the true one is column i of row i
    out = {"val_loss": float(np.mean(losses)), "val_top1": top[1], "val_top5": top[5], "val_pool": len(z_pool),
           "val_top1_perturbed": float("nan"), "val_score": top[1]}
    if perturbed is not None:
        masks = perturbed_masks if model.model_config.xrd_mask_channel else None
        if masks is None and perturbed_masks is not None:  # a model without the mask channel sees zeros there
            perturbed = perturbed * perturbed_masks
        z_p = model.encode_patterns(perturbed, progress=False, masks=masks)  # [n, d]
        out["val_top1_perturbed"] = _topk(z_p @ z_pool.T, (1,))[1]
        out["val_score"] = 0.5 * (top[1] + out["val_top1_perturbed"])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------------------------
def default_run_dir(cfg: Config, data_key: str) -> Path:
    """``$EACNN_RUNS/<profile>-<hash of config and data key>``: one folder per distinct run."""
    flat = {k: v for k, v in flat_config(cfg.to_dict()).items() if k not in RUNTIME_FIELDS}
    digest = hashlib.sha256((repr(sorted(flat.items())) + str(data_key)).encode()).hexdigest()[:12]
    return runs_dir() / f"{cfg.profile}-{digest}"


def _write_log(run_dir: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    pd.DataFrame(history, columns=LOG_COLUMNS).to_csv(buf, index=False)
    atomic_write_bytes(run_dir / "log.csv", buf.getvalue().encode())


# ---------------------------------------------------------------------------------------------------------------
# Generic pieces: device, one epoch, best-epoch selection (shared with the classifier baseline)
# ---------------------------------------------------------------------------------------------------------------
def resolve_device(name: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; on CPU, denormal floats are flushed (MACE is 10–20× slower
    with them)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world > 1:
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    return device


def run_epoch(
    batches,
    step_loss,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    n_steps: int,
    grad_clip: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
    after_step=None,
    desc: str = "epoch",
    progress: bool = True,
) -> float:
    """One pass of optimisation steps; returns the mean loss.

    Args:
        batches: an iterable of batches (a DataLoader, a list of index arrays, ...); at most ``n_steps`` are used.
        step_loss: ``step_loss(batch, step) -> scalar loss tensor`` (forward pass included).
        model: the parameters clipped by ``grad_clip`` (> 0).
        scaler: a ``GradScaler`` for fp16 autocast (disabled when None).
        after_step: called after each optimiser step (e.g. clamping the temperature).
    """
    scaler = scaler or torch.amp.GradScaler("cuda", enabled=False)
    total, count = torch.zeros((), dtype=torch.float64), 0
    bar = tqdm(total=n_steps, desc=desc, unit="step", disable=not progress, leave=False)
    for step, batch in enumerate(batches):
        if step >= n_steps:
            break
        loss = step_loss(batch, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if after_step is not None:
            after_step()
        total += loss.detach().double().cpu()
        count += 1
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss):.3f}")
    bar.close()
    return float(total) / max(count, 1)


@dataclass
class Selection:
    """Best-epoch bookkeeping and early stopping on a validation score (higher is better; NaN: no validation
    split, so the latest epoch is the best)."""

    patience: int = 0  # epochs without improvement before stopping (0: never stop early)
    best_score: float = -math.inf
    best_top1: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    finished: bool = False

    def update(self, epoch: int, score: float, last_epoch: int, top1: float = float("nan")) -> bool:
        """Record ``epoch``'s score; True when it is the best so far. Sets ``finished`` at the last epoch or when
        patience runs out."""
        improved = math.isnan(score) or score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs, self.best_top1 = score, epoch, 0, top1
        else:
            self.bad_epochs += 1
        self.finished = epoch == last_epoch or (self.patience > 0 and self.bad_epochs >= self.patience)
        return improved

    def state(self) -> dict:
        return {"best_top1": self.best_top1, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "finished": self.finished}

    def load(self, state: dict) -> None:
        for k, v in state.items():
            if hasattr(self, k) and k != "patience":
                setattr(self, k, v)


# ---------------------------------------------------------------------------------------------------------------
# Contrastive training
# ---------------------------------------------------------------------------------------------------------------
def fit(
    cfg: Config, dataset, run_dir: str | Path | None = None, resume: bool = True, progress: bool = True,
    keep_epochs: bool = False,
) -> FitResult:
    """Train the two-tower model on ``dataset``'s train split, selecting on its val split.

    Args:
        cfg: the run's config (model, train, augment, xrd, seed).
        dataset: a CrystalDataset-like object (see the module docstring).
        run_dir: where config.json, log.csv, last.pt and best.pt go; :func:`default_run_dir` when None.
        resume: continue from ``run_dir/last.pt`` when it exists (it must match config and data); False starts
            over and overwrites.
        progress: tqdm bars (rank 0 only).
        keep_epochs: also keep every epoch's checkpoint as ``run_dir/epoch_N.pt`` (N from 1), to score the epochs
            afterwards (``scripts/select_rerank.py --checkpoints``; chapter 4).

    Raises:
        CheckpointError: resuming from a corrupt ``last.pt`` or one made for another config or dataset.
    """
    d = _init_distributed(cfg.train.device)
    try:
        return _fit(cfg, dataset, run_dir, resume, progress, d, keep_epochs)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def training_indices(cfg: Config, dataset) -> np.ndarray:
    """Rows the run trains on: the train split, or its nested subset of ``train.train_subset`` rows (ascending)."""
    train_idx = np.asarray(dataset.indices("train"))
    n = cfg.train.train_subset
    if not n or n >= len(train_idx):
        return train_idx
    order = np.random.default_rng([cfg.data.split_seed, 104729]).permutation(len(train_idx))  # one order, nested cuts
    return np.sort(train_idx[order[:n]])


def _train_loader(cfg: Config, dataset, d: _Dist) -> tuple[_Pairs, object, DataLoader, int]:
    """(training pairs, their sampler, the loader, steps per epoch)."""
    tc = cfg.train
    train_idx = training_indices(cfg, dataset)
    per_rank = max(2, tc.batch_size // d.world)
    if len(train_idx) < per_rank * d.world:
        raise ValueError(
            f"the train split has {len(train_idx)} structures, fewer than one batch of {per_rank * d.world} "
            f"(train.batch_size={tc.batch_size}); lower the batch size"
        )
    pairs = _Pairs(dataset, train_idx)
    if tc.lookalike_fraction > 0 and d.world == 1 and hasattr(dataset, "labels"):
        keys = dataset.labels["spacegroup_number"].to_numpy()[train_idx]
        sampler = LookalikeSampler(keys, per_rank, tc.lookalike_fraction, seed=cfg.seed)
    else:
        sampler = DistributedSampler(pairs, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed,
                                     drop_last=True)
    loader = DataLoader(
        pairs, batch_size=per_rank, sampler=sampler, drop_last=True, collate_fn=_collate, num_workers=tc.num_workers
    )
    steps = len(loader) if not tc.max_steps_per_epoch else min(len(loader), tc.max_steps_per_epoch)
    return pairs, sampler, loader, steps


@dataclass
class _Validation:
    """What every epoch's validation reuses: collated validation batches, distractors, fixed perturbed queries."""

    batches: list  # collated validation structures
    distractors: list  # collated further candidates (the training split) or []
    perturbed: np.ndarray | None  # [n_val, n_bins] seeded perturbed queries, or None
    masks: np.ndarray | None = None  # [n_val, n_bins] their coverage (measured queries), or None


def _validation_data(cfg: Config, dataset, pairs: _Pairs, d: _Dist) -> _Validation:
    tc = cfg.train
    val_idx = np.asarray(dataset.indices("val"))
    if not d.main:
        return _Validation([], [], None)

    def collated(items: _Pairs) -> list:
        return split_batches(dataset, items.indices, tc.eval_batch_size)

    perturbed, masks = None, None
    if tc.val_level and len(val_idx):
        # fixed queries: the same corrupted patterns every epoch (seeded apart from the training draws)
        rng = np.random.default_rng([cfg.seed, 7919])
        sticks = [dataset.sticks(int(i)) for i in val_idx]
        if cfg.augment.kind == "measured":
            perturbed, masks = measured_queries(cfg, dataset, val_idx, sticks, rng)
        else:
            perturbed = augment_patterns(sticks, AugmentConfig.level(tc.val_level), rng, cfg.xrd)
    # distractors: the whole train split even when training on a subset (the same pool at every subset size)
    pool = pairs if len(pairs) == len(dataset.indices("train")) else _Pairs(dataset, dataset.indices("train"))
    distractors = collated(pool) if tc.val_distractors and len(val_idx) else []
    return _Validation(collated(_Pairs(dataset, val_idx)), distractors, perturbed, masks)


def _duplicate_keys(dataset) -> np.ndarray | None:
    """Per data-set row, reduced formula + space group: rows sharing one are copies of a structure."""
    if not hasattr(dataset, "labels"):
        return None
    labels = dataset.labels
    return (labels["formula"].astype(str) + "|" + labels["spacegroup_number"].astype(str)).to_numpy()


def _contrastive_step(cfg: Config, net, model: EACNN, device: torch.device, d: _Dist, epoch: int, amp_dtype,
                      dataset=None):
    """``step_loss(batch, step)`` for :func:`run_epoch`: augment, embed both towers, global-batch InfoNCE."""
    use_amp = amp_dtype is not None

    keys = _duplicate_keys(dataset) if cfg.train.mask_duplicates and d.world == 1 else None

    def step_loss(batch: dict, step: int) -> torch.Tensor:
        # augmentation seeded by (seed, epoch, step, rank): a resumed run draws the same patterns
        rng = np.random.default_rng([cfg.seed, epoch, step, d.rank])
        inputs = {"graph": batch["graph"], "structure_pattern": batch["vector"]}
        if cfg.augment.kind == "measured":
            pattern, mask = measured_queries(cfg, dataset, batch["index"].numpy(), batch["sticks"], rng)
            inputs["pattern"] = torch.from_numpy(pattern)  # [B, n_bins]
            if cfg.model.xrd_mask_channel:
                inputs["mask"] = torch.from_numpy(mask)
        elif cfg.augment.is_identity:
            inputs["pattern"] = batch["vector"]
        else:
            inputs["pattern"] = torch.from_numpy(augment_patterns(batch["sticks"], cfg.augment, rng, cfg.xrd))
        with torch.autocast("cuda", dtype=amp_dtype) if use_amp else nullcontext():
            z_s, z_x, scale = net(_to_device(inputs, device))
        exclude = duplicate_pairs(keys[batch["index"].numpy()]) if keys is not None else None
        return clip_loss(_gather(z_s.float(), d), _gather(z_x.float(), d), scale.float(), exclude)

    return step_loss


def _fit(cfg: Config, dataset, run_dir, resume: bool, progress: bool, d: _Dist, keep_epochs: bool = False
         ) -> FitResult:
    tc = cfg.train
    device = resolve_device(tc.device, d.local_rank, d.world)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg, dataset.key)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.json", cfg.to_json().encode())
    pairs, sampler, loader, steps_per_epoch = _train_loader(cfg, dataset, d)
    val = _validation_data(cfg, dataset, pairs, d)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = EACNN.from_config(cfg).to(device)
    net = model
    if d.world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    warmup = int(round(tc.warmup_epochs * steps_per_epoch))
    optimizer, scheduler = make_optimizer(model, tc.lr, tc.weight_decay, warmup, steps_per_epoch * tc.epochs,
                                          tc.min_lr_ratio)
    use_amp = device.type == "cuda" and tc.amp != "off"
    amp_dtype = (torch.bfloat16 if tc.amp == "bf16" else torch.float16) if use_amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    sel, history, start_epoch = Selection(tc.patience), [], 0
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path, map_location=device, config=cfg, data_key=dataset.key)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        sel.load(ckpt)
        history = list(ckpt.get("history", []))
        start_epoch = int(ckpt["epoch"]) + 1
        log.info("resuming %s from epoch %d", last_path, start_epoch)

    def clamp_temperature() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(max=model.max_log_scale)  # CLIP: keep exp(logit_scale) <= 100

    started = time.perf_counter()
    for epoch in range(start_epoch, tc.epochs):
        if sel.finished:
            break
        t0 = time.perf_counter()
        net.train()
        sampler.set_epoch(epoch)
        train_loss = run_epoch(  # identical on every rank: the loss is the global-batch loss
            loader, _contrastive_step(cfg, net, model, device, d, epoch, amp_dtype, dataset), model, optimizer, scheduler,
            steps_per_epoch, tc.grad_clip, scaler, clamp_temperature, f"epoch {epoch + 1}/{tc.epochs}",
            progress and d.main,
        )
        stop = torch.zeros(2)  # [finished, out of this call's time budget]
        if d.main:  # validation, bookkeeping and checkpoints on rank 0; the stop decision is broadcast
            _validate_and_checkpoint(cfg, dataset, model, optimizer, scheduler, scaler, val, sel, history, epoch,
                                     train_loss, time.perf_counter() - t0, run_dir, keep_epochs)
            stop[0] = float(sel.finished)
            stop[1] = float(bool(tc.max_minutes) and time.perf_counter() - started > 60 * tc.max_minutes)
        if d.world > 1:
            dist.broadcast(stop, src=0)
        if stop[0].item():
            sel.finished = True
        elif stop[1].item():  # not finished: a later call resumes from last.pt on the same schedule
            log.info("stopping after %.1f min (train.max_minutes); the run resumes from %s", tc.max_minutes,
                     last_path)
            break

    if d.world > 1:
        dist.barrier()
    best = load_checkpoint(best_path, map_location="cpu")
    model.load_state_dict(best["state_dict"])
    model.eval()
    history = pd.DataFrame(load_checkpoint(last_path, map_location="cpu")["history"], columns=LOG_COLUMNS)
    return FitResult(history, best_path, float(best["best_top1"]), float(best["best_score"]), run_dir, model)


def _validate_and_checkpoint(cfg: Config, dataset, model: EACNN, optimizer, scheduler, scaler, val: _Validation,
                             sel: Selection, history: list, epoch: int, train_loss: float, seconds: float,
                             run_dir: Path, keep_epochs: bool = False) -> None:
    """Validate, log the epoch, write ``last.pt`` (and ``best.pt`` when it improved, ``epoch_N.pt`` with
    ``keep_epochs``) and ``log.csv``."""
    t0 = time.perf_counter()
    metrics = evaluate_retrieval(model, val.batches, cfg.train.batch_size, val.distractors, val.perturbed, val.masks)
    improved = sel.update(epoch, metrics["val_score"], cfg.train.epochs - 1, metrics["val_top1"])
    row = {"epoch": epoch + 1, "train_loss": train_loss, **metrics, "temperature": model.temperature,
           "lr": optimizer.param_groups[0]["lr"], "seconds": seconds + time.perf_counter() - t0}
    history.append(row)
    payload = {
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "epoch": epoch,
        "config": cfg.to_dict(),
        "versions": package_versions(),
        "data_key": dataset.key,
        "history": history,
        **sel.state(),
    }
    if improved:
        save_checkpoint(run_dir / "best.pt", payload)
    save_checkpoint(run_dir / "last.pt", payload)
    if keep_epochs:
        save_checkpoint(run_dir / f"epoch_{epoch + 1}.pt", payload)
    _write_log(run_dir, history)
    log.info("epoch %d: train %.4f, val %.4f, top-1 %.3f (perturbed %.3f), top-5 %.3f, T %.4f (%.1f s)",
             epoch + 1, train_loss, metrics["val_loss"], metrics["val_top1"], metrics["val_top1_perturbed"],
             metrics["val_top5"], model.temperature, row["seconds"])


def load_or_train(cfg: Config, dataset, run_dir: str | Path | None = None, progress: bool = True) -> EACNN:
    """The trained model for ``cfg`` and ``dataset``: loaded when a finished matching run exists, else trained.

    An unfinished run in ``run_dir`` is resumed; a corrupt or mismatched one is reported and trained again.
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg, dataset.key)
    last, best = run_dir / "last.pt", run_dir / "best.pt"
    resume = True
    if last.is_file() and best.is_file():
        try:
            ckpt = load_checkpoint(last, config=cfg, data_key=dataset.key)
            if ckpt.get("finished"):
                model = model_from_checkpoint(load_checkpoint(best, config=cfg, data_key=dataset.key))
                log.info("loaded the trained model from %s", best)
                return model
        except CheckpointError as err:
            log.warning("%s; training again", err)
            resume = False
    return fit(cfg, dataset, run_dir=run_dir, resume=resume, progress=progress).model
