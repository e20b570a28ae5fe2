"""eacnn — contrastive learning between crystal structures and their powder XRD patterns.

Importing eacnn has no side effects: no network, no seeding, no plotting defaults, no warning filters.
Heavy submodules (torch, mace) load only when used: ``eacnn.load_pretrained`` and ``eacnn.EACNN`` import them on
first access.
"""

from __future__ import annotations

from eacnn.config import AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig, XRDConfig
from eacnn.errors import EACNNError

__version__ = "0.1.0"

__all__ = [
    "AugmentConfig", "Config", "DataConfig", "ModelConfig", "TrainConfig", "XRDConfig", "EACNNError",
    "XRDSimulator", "XRDPattern", "simulate_vectors", "load_pretrained", "EACNN", "fit", "load_or_train",
    "clip_loss", "augment_patterns", "build_dataset", "read_pattern", "to_model_grid", "read_cif", "identify",
    "identify_phases", "default_database", "open_database", "__version__",
]

# name -> submodule that defines it; imported on first attribute access (PEP 562)
_LAZY = {
    "XRDSimulator": "physics.xrd", "XRDPattern": "physics.xrd", "simulate_vectors": "physics.xrd",
    "load_pretrained": "training.checkpoint", "EACNN": "models", "fit": "training.loop",
    "load_or_train": "training.loop", "clip_loss": "training.losses", "augment_patterns": "physics.perturb",
    "build_dataset": "datasets.dataset", "read_pattern": "measured", "to_model_grid": "measured",
    "read_cif": "datasets.structures", "identify": "retrieval.identify", "identify_phases": "measured.mixtures",
    "default_database": "retrieval.database", "open_database": "retrieval.database",
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'eacnn' has no attribute {name!r}")
