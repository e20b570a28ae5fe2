"""The direct baseline the paper argues against: a space-group classifier of the pattern (1D ResNet + softmax).

The network is the XRD tower's 1D ResNet (:class:`eacnn.models.xrd_tower.XRDEncoder`) with a 230-way linear head;
its training is :func:`eacnn.training.classifier.fit_classifier`.

>>> from eacnn.config import Config
>>> clf = SpaceGroupClassifier(Config.smoke().model)
>>> clf(torch.rand(2, 140)).shape
torch.Size([2, 230])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from eacnn.config import ModelConfig
from eacnn.models.clip import check_patterns
from eacnn.models.xrd_tower import XRDEncoder

__all__ = ["SpaceGroupClassifier", "N_SPACEGROUPS"]

N_SPACEGROUPS = 230


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
        x = check_patterns(patterns, self.model_config.n_bins)
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
