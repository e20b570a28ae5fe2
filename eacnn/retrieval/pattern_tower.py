"""The trained XRD tower as plain numpy: a search embeds a measured pattern without importing torch.

Importing torch and mace costs seconds; embedding one 140-bin pattern with the 1D ResNet costs a millisecond. A
search therefore runs the pattern tower from arrays exported once from the checkpoint (:func:`export_tower`,
stored in the saved database beside the embeddings), with each batch norm folded into the convolution before it
(eval mode: y = γ (x − μ) / √(σ² + ε) + β is an affine map per channel). :class:`PatternTower` reproduces
``EACNN.encode_patterns`` to float32 rounding; ``tests/test_database.py`` checks it on real patterns.
"""

from __future__ import annotations

import numpy as np

from eacnn.errors import PatternError

__all__ = ["export_tower", "export_encoder", "PatternTower"]


def _fold(sd: dict, conv: str, bn: str, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """(weight [c_out, c_in, k], bias [c_out]) of a bias-free conv followed by an eval-mode batch norm."""
    w = sd[f"{conv}.weight"].astype(np.float64)
    scale = sd[f"{bn}.weight"] / np.sqrt(sd[f"{bn}.running_var"] + eps)  # [c_out]
    return (w * scale[:, None, None]).astype(np.float32), (sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale
                                                          ).astype(np.float32)


def export_tower(model) -> dict[str, np.ndarray]:
    """The arrays of :class:`PatternTower` from an ``EACNN`` model (its ``xrd_encoder``), batch norms folded."""
    return export_encoder(model.xrd_encoder, model.model_config.xrd_positions)


def export_encoder(enc, positions: int) -> dict[str, np.ndarray]:
    """The arrays of :class:`PatternTower` from an ``XRDEncoder`` (``positions``: its ``model.xrd_positions``).

    Keys: ``stem.w/b``, ``{stage}.{i}.conv1.w/b``, ``.conv2.w/b``, ``.skip.w/b`` (when the block has one),
    ``.stride``, ``fc.w/b``, ``proj.w/b``, ``positions`` (the average-pooled 2θ positions).
    """
    sd = {k: v.detach().cpu().double().numpy() for k, v in enc.state_dict().items()}
    out = {}
    out["stem.w"], out["stem.b"] = _fold(sd, "stem.0", "stem.1")
    for stage in ("stage1", "stage2"):
        for i, block in enumerate(getattr(enc, stage)):
            p = f"{stage}.{i}"
            out[f"{p}.conv1.w"], out[f"{p}.conv1.b"] = _fold(sd, f"{p}.conv1", f"{p}.bn1")
            out[f"{p}.conv2.w"], out[f"{p}.conv2.b"] = _fold(sd, f"{p}.conv2", f"{p}.bn2")
            out[f"{p}.stride"] = np.array(block.conv1.stride[0])
            if f"{p}.skip.0.weight" in sd:
                out[f"{p}.skip.w"], out[f"{p}.skip.b"] = _fold(sd, f"{p}.skip.0", f"{p}.skip.1")
    for name in ("fc", "proj"):
        out[f"{name}.w"] = sd[f"{name}.weight"].astype(np.float32)
        out[f"{name}.b"] = sd[f"{name}.bias"].astype(np.float32)
    out["positions"] = np.array(positions)
    return out


def _conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1) -> np.ndarray:
    """[B, c_in, L] -> [B, c_out, L'] with zero padding k // 2 (PyTorch's Conv1d with padding=k//2)."""
    k = w.shape[2]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, k, axis=2)[:, :, ::stride]  # [B, c_in, L', k]
    cols = win.transpose(0, 2, 1, 3).reshape(x.shape[0], win.shape[2], -1)  # [B, L', c_in * k] (im2col)
    out = cols @ w.reshape(w.shape[0], -1).T  # [B, L', c_out]
    return out.transpose(0, 2, 1) + b[None, :, None]


def _adaptive_avg_pool(x: np.ndarray, n: int) -> np.ndarray:
    """PyTorch's AdaptiveAvgPool1d: window i spans [floor(i L / n), ceil((i + 1) L / n))."""
    length = x.shape[2]
    starts = (np.arange(n) * length) // n
    ends = -((-(np.arange(n) + 1) * length) // n)
    csum = np.concatenate([np.zeros(x.shape[:2] + (1,), x.dtype), np.cumsum(x, axis=2)], axis=2)
    return (csum[:, :, ends] - csum[:, :, starts]) / (ends - starts)


class PatternTower:
    """Patterns [B, n_bins] -> L2-normalised embeddings [B, d], numpy only.

    Args:
        arrays: what :func:`export_tower` returns (or the same arrays loaded from an ``.npz``).
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.a = {k: np.asarray(v) for k, v in arrays.items()}
        self.stages = [sorted({k.split(".")[1] for k in self.a if k.startswith(f"{s}.")}, key=int)
                       for s in ("stage1", "stage2")]

    def _block(self, x: np.ndarray, p: str) -> np.ndarray:
        a = self.a
        stride = int(a[f"{p}.stride"])
        h = np.maximum(_conv1d(x, a[f"{p}.conv1.w"], a[f"{p}.conv1.b"], stride), 0.0)
        h = _conv1d(h, a[f"{p}.conv2.w"], a[f"{p}.conv2.b"])
        skip = _conv1d(x, a[f"{p}.skip.w"], a[f"{p}.skip.b"], stride) if f"{p}.skip.w" in a else x
        return np.maximum(h + skip, 0.0)

    @property
    def reads_mask(self) -> bool:
        """Whether the tower takes the coverage mask as a second input channel."""
        return self.a["stem.w"].shape[1] == 2

    def __call__(self, patterns: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Embeddings [B, d] of patterns [B, n_bins] (or one [n_bins]); ``masks`` [B, n_bins]: coverage (True =
        measured; unmeasured bins are zeroed), all measured when None."""
        x = np.asarray(patterns, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if not np.isfinite(x).all():
            raise PatternError("patterns contain NaN or inf")
        m = np.ones_like(x) if masks is None else np.broadcast_to(np.asarray(masks, np.float32).reshape(-1, x.shape[1]),
                                                                   x.shape)
        x = x * m
        peak = x.max(axis=1, keepdims=True)
        if (peak <= 0).any():
            raise PatternError("a pattern has no positive intensity")
        x = (x / peak)[:, None, :]  # [B, 1, n_bins], max-normalised as EACNN.encode_patterns does
        if self.reads_mask:
            x = np.concatenate([x, m[:, None, :]], axis=1)  # [B, 2, n_bins]
        h = np.maximum(_conv1d(x, self.a["stem.w"], self.a["stem.b"]), 0.0)  # [B, C, n_bins]
        for stage, blocks in zip(("stage1", "stage2"), self.stages):
            for i in blocks:
                h = self._block(h, f"{stage}.{i}")
        h = _adaptive_avg_pool(h, int(self.a["positions"])).reshape(len(h), -1)  # [B, 2C * positions]
        f = h @ self.a["fc.w"].T + self.a["fc.b"]  # [B, xrd_dim]
        f = f / (1.0 + np.exp(-f))  # SiLU
        z = f @ self.a["proj.w"].T + self.a["proj.b"]  # [B, d]
        return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)
