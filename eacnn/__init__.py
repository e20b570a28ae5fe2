"""eacnn — contrastive learning between crystal structures and their powder XRD patterns.

Importing eacnn has no side effects: no network, no seeding, no plotting defaults, no warning filters.
Heavy submodules (torch, mace) load only when used: ``eacnn.load_pretrained`` and ``eacnn.EACNN`` import them on
first access.
"""

from __future__ import annotations

from .config import AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig, XRDConfig
from .errors import EACNNError

__version__ = "0.1.0"

__all__ = [
    "AugmentConfig", "Config", "DataConfig", "ModelConfig", "TrainConfig", "XRDConfig", "EACNNError",
    "XRDSimulator", "XRDPattern", "simulate_vectors", "load_pretrained", "EACNN", "fit", "load_or_train",
    "clip_loss", "augment_patterns", "build_dataset", "__version__",
]

# name -> submodule that defines it; imported on first attribute access (PEP 562)
_LAZY = {
    "XRDSimulator": "xrd", "XRDPattern": "xrd", "simulate_vectors": "xrd",
    "load_pretrained": "checkpoint", "EACNN": "models", "fit": "train", "load_or_train": "train",
    "clip_loss": "losses", "augment_patterns": "augment", "build_dataset": "dataset",
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'eacnn' has no attribute {name!r}")
