"""CLIP's symmetric InfoNCE loss as a pure function of two embedding batches (paper §2.5).

For a batch of B matched pairs (a_i, b_i) with L2-normalised embeddings, the logits are
``s_ij = exp(logit_scale) * <a_i, b_j>``; the loss is the mean of the cross-entropy of each row (a_i must pick b_i
among all b) and of each column (b_j must pick a_j among all a). The other B - 1 items of the batch are the
negatives, so the batch is also the retrieval pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clip_loss", "clip_logits"]


def clip_logits(z_a: torch.Tensor, z_b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Scaled cosine similarities [B_a, B_b] = exp(logit_scale) * z_a @ z_b.T (inputs already normalised)."""
    scale = torch.as_tensor(logit_scale, dtype=z_a.dtype, device=z_a.device).exp()
    return scale * z_a @ z_b.T


def clip_loss(z_a: torch.Tensor, z_b: torch.Tensor, logit_scale: torch.Tensor | float,
              not_negative: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of matched rows.

    Args:
        z_a: [B, d] L2-normalised embeddings (e.g. structures).
        z_b: [B, d] L2-normalised embeddings (e.g. patterns); row i is the positive of ``z_a[i]``.
        logit_scale: scalar, the *log* of the inverse temperature (CLIP's learnable ``t``: logits are
            multiplied by ``exp(logit_scale)``).
        not_negative: [B, B] bool, True where item j is another copy of item i's structure (a duplicate under
            another id): such pairs are left out of the softmax instead of being pushed apart (the diagonal is
            never masked).

    Returns:
        Scalar tensor: (CE(rows) + CE(columns)) / 2, each averaged over the batch.
    """
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(
            f"clip_loss needs two [B, d] batches of equal shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    logits = clip_logits(z_a, z_b, logit_scale)  # [B, B]
    if not_negative is not None:
        off = not_negative.to(logits.device) & ~torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(off, float("-inf"))
    labels = torch.arange(z_a.shape[0], device=z_a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
