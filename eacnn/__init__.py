"""eacnn — contrastive learning between crystal structures and their powder XRD patterns.

Importing eacnn has no side effects: no network, no seeding, no plotting defaults, no warning filters.
Heavy submodules (torch, mace) load only when used.
"""

from __future__ import annotations

from .config import Config, DataConfig, XRDConfig
from .errors import EACNNError

__version__ = "0.1.0"

__all__ = ["Config", "DataConfig", "XRDConfig", "EACNNError", "XRDSimulator", "__version__"]


def __getattr__(name: str):
    # Lazy re-exports keep `import eacnn` cheap.
    if name in {"XRDSimulator", "XRDPattern", "simulate_vectors"}:
        from . import xrd

        return getattr(xrd, name)
    raise AttributeError(f"module 'eacnn' has no attribute {name!r}")
