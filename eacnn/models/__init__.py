"""The two towers and the contrastive model (paper §2.3–2.4).

Importing this package imports torch and mace-torch (mace first: it lets e3nn 0.4.4 load under torch >= 2.6, and
sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the process; eacnn's own checkpoint loading still passes
``weights_only=True`` explicitly).
"""

from eacnn.models.classifier import N_SPACEGROUPS, SpaceGroupClassifier
from eacnn.models.clip import EACNN, check_patterns
from eacnn.models.structure import StructureEncoder, lattice_descriptors
from eacnn.models.xrd_tower import XRDEncoder

__all__ = ["EACNN", "StructureEncoder", "XRDEncoder", "SpaceGroupClassifier", "N_SPACEGROUPS", "lattice_descriptors",
           "check_patterns", "count_parameters"]


def count_parameters(module) -> int:
    """Number of parameters (trainable or not) of a torch module."""
    return sum(p.numel() for p in module.parameters())
