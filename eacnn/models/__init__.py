"""The two towers and the contrastive model (paper §2.3–2.4).

The names below are imported on first use (PEP 562), so that the pattern tower (:mod:`eacnn.models.xrd_tower`,
torch only) loads without the structure tower's mace-torch, whose import takes seconds. Importing
:mod:`eacnn.models.structure` (which :class:`EACNN` and :class:`SpaceGroupClassifier` do) imports mace first: it
lets e3nn 0.4.4 load under torch >= 2.6, and sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the process; eacnn's
own checkpoint loading still passes ``weights_only=True`` explicitly.
"""

from __future__ import annotations

import importlib

__all__ = ["EACNN", "StructureEncoder", "XRDEncoder", "SpaceGroupClassifier", "N_SPACEGROUPS", "lattice_descriptors",
           "check_patterns", "count_parameters"]

#: public name -> the module defining it
_WHERE = {"EACNN": "clip", "check_patterns": "clip", "StructureEncoder": "structure",
          "lattice_descriptors": "structure", "XRDEncoder": "xrd_tower", "SpaceGroupClassifier": "classifier",
          "N_SPACEGROUPS": "classifier"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"eacnn.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'eacnn.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def count_parameters(module) -> int:
    """Number of parameters (trainable or not) of a torch module."""
    return sum(p.numel() for p in module.parameters())
