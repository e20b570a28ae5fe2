"""Optimiser and learning-rate schedule shared by contrastive training and the classifier baseline.

AdamW with weight decay on weights only (not on biases, normalisation layers or the temperature), and a linear
warm-up followed by a cosine decay to ``min_ratio`` of the peak rate.
"""

from __future__ import annotations

import math

import torch

__all__ = ["param_groups", "lr_factor", "make_optimizer"]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights, and biases / normalisation / temperature without decay."""
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in no_decay_ids or name.endswith("bias") or name.endswith("logit_scale"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(warmup_steps: int, total_steps: int, min_ratio: float):
    """Multiplier of the peak rate at each step: linear warm-up from 0 to 1 over ``warmup_steps``, then cosine from
    1 to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, warmup_steps: int, total_steps: int,
                   min_ratio: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """(AdamW over :func:`param_groups`, its per-step :func:`lr_factor` schedule)."""
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(warmup_steps, total_steps, min_ratio))
    return optimizer, scheduler
