"""One typed config for everything: frozen dataclasses, named presets, dotted overrides.

>>> cfg = Config.smoke()
>>> cfg.xrd.n_bins
140
>>> cfg.replace(**{"xrd.fwhm": 0.3}).xrd.fwhm
0.3

The resolved config is saved as JSON beside every artefact (:meth:`Config.to_json`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class XRDConfig:
    """How a structure becomes a powder pattern (paper, Methods §2.1)."""

    wavelength: float = 1.5406  # Å; Cu Kα1 (pymatgen's "CuKa" is the Kα1/Kα2 average 1.54184 Å — not used)
    two_theta_min: float = 10.0  # degrees; lower edge of the first bin
    two_theta_max: float = 80.0  # degrees; upper edge of the last bin
    step: float = 0.5  # degrees; bin width -> (80 - 10) / 0.5 = 140 bins
    b_factor: float = 0.5  # Å²; isotropic Debye–Waller B, exp(-B (sinθ/λ)²); 0.5 Å² ≈ inorganic solid at room T
    fwhm: float = 0.15  # degrees 2θ; pseudo-Voigt full width at half maximum (constant over 2θ)
    eta: float = 0.5  # pseudo-Voigt Lorentzian fraction, 0 = Gaussian, 1 = Lorentzian
    fine_step: float = 0.005  # degrees; sticks are deposited on this grid before the exact bin integral
    intensity_tol: float = 1e-3  # peaks weaker than this fraction of the strongest are dropped from sticks
    two_theta_tol: float = 1e-3  # degrees; reflections closer than this merge into one peak (the MP-20 cells
    # are rounded to 1e-6 Å, which splits symmetry-equivalent reflections by up to ~1e-5°)

    @property
    def n_bins(self) -> int:
        """Number of bins of the model input (140 for the paper's settings)."""
        return int(round((self.two_theta_max - self.two_theta_min) / self.step))

    def bin_edges(self) -> np.ndarray:
        """Bin edges in degrees 2θ, shape [n_bins + 1]."""
        return self.two_theta_min + self.step * np.arange(self.n_bins + 1)

    def bin_centers(self) -> np.ndarray:
        """Bin centres in degrees 2θ, shape [n_bins]."""
        return self.two_theta_min + self.step * (np.arange(self.n_bins) + 0.5)

    def __post_init__(self) -> None:
        if not 0 < self.wavelength < 10:
            raise ConfigError(f"xrd.wavelength must be in Å (0, 10), got {self.wavelength!r}")
        if not 0 <= self.two_theta_min < self.two_theta_max < 180:
            raise ConfigError(
                f"need 0 <= two_theta_min < two_theta_max < 180, got {self.two_theta_min!r}, {self.two_theta_max!r}"
            )
        span = (self.two_theta_max - self.two_theta_min) / self.step
        if self.step <= 0 or abs(span - round(span)) > 1e-9:
            raise ConfigError(f"xrd.step={self.step!r} must divide the 2θ window into whole bins")
        if self.fwhm <= 0 or not 0 <= self.eta <= 1 or self.b_factor < 0:
            raise ConfigError(f"bad profile: fwhm={self.fwhm!r} (>0), eta={self.eta!r} (0..1), b={self.b_factor!r} (>=0)")


@dataclass(frozen=True)
class DataConfig:
    """Which structures, and how they are split."""

    source: str = "embedded"  # "embedded" (MP-20 val+test shipped in the package), a CIF folder, or "mp-api"
    max_structures: int = 0  # 0 = all; otherwise the first N of each split (deterministic), for smoke runs
    val_fraction: float = 0.1  # fraction of the MP-20 'val' split held out for model selection
    split_seed: int = 0  # seed of the train/validation carve-out
    max_sites: int = 64  # structures with more sites are reported and skipped
    disorder: str = "weighted"  # partial occupancy: "weighted" (occupancy-weighted f) or "reject"


@dataclass(frozen=True)
class ModelConfig:
    """The two towers and the shared embedding (paper §2.3–2.4). Filled in by the model issue."""

    kind: str = "eacnn"  # "paper" (MACE tower as published) or "eacnn" (MACE + lattice + own-pattern fusion)
    r_max: float = 5.0  # Å; neighbour cutoff of the periodic graph (also the dataset's graph cutoff)
    embed_dim: int = 256  # width of the shared contrastive space
    xrd_dim: int = 384  # width of the XRD tower's output before projection (paper: 384)


@dataclass(frozen=True)
class TrainConfig:
    """One training run (paper §2.5). Filled in by the model issue."""

    epochs: int = 30  # passes over the training split
    batch_size: int = 256  # structures per step (also the in-batch retrieval pool)
    lr: float = 1e-3  # AdamW peak learning rate


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Extended by later sections (model, training)."""

    profile: str = "cpu"  # "smoke" (seconds, tests), "cpu" (2 cores), "paper" (GPU, paper scale)
    seed: int = 0  # global seed of training and augmentation
    xrd: XRDConfig = field(default_factory=XRDConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ---- presets -------------------------------------------------------------------------------------------
    @classmethod
    def smoke(cls) -> "Config":
        """Seconds on a laptop: a few hundred structures; for tests and the CI book."""
        return cls(profile="smoke", data=DataConfig(max_structures=300))

    @classmethod
    def cpu(cls) -> "Config":
        """The embedded data in full; trainable on 2 CPU cores."""
        return cls(profile="cpu")

    @classmethod
    def paper(cls) -> "Config":
        """The paper's scale (GPU)."""
        return cls(profile="paper")

    @classmethod
    def from_profile(cls, name: str) -> "Config":
        presets = {"smoke": cls.smoke, "cpu": cls.cpu, "paper": cls.paper}
        if name not in presets:
            raise ConfigError(f"unknown profile {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    # ---- overrides and serialisation -----------------------------------------------------------------------
    def replace(self, **dotted: Any) -> "Config":
        """A copy with fields replaced, e.g. ``cfg.replace(**{"xrd.fwhm": 0.2, "seed": 1})``."""
        return _replace(self, dotted)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return _from_dict(cls, d)


def _replace(obj: Any, dotted: dict[str, Any]) -> Any:
    names = {f.name: f for f in dataclasses.fields(obj)}
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in dotted.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise ConfigError(f"{type(obj).__name__} has no field {head!r} (from override {key!r}); fields: {sorted(names)}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            current = getattr(obj, head)
            if dataclasses.is_dataclass(current):
                raise ConfigError(f"override {key!r} replaces a whole section; name a field, e.g. {key}.<field>")
            if current is not None and not isinstance(value, type(current)) and not (
                isinstance(current, float) and isinstance(value, int)
            ):
                raise ConfigError(f"{key}={value!r} has type {type(value).__name__}, expected {type(current).__name__}")
            direct[head] = float(value) if isinstance(current, float) else value
    for head, sub in nested.items():
        direct[head] = _replace(getattr(obj, head), sub)
    return dataclasses.replace(obj, **direct)


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        ftype = f.type if not isinstance(f.type, str) else _TYPES.get(f.type)
        if ftype is not None and dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            value = _from_dict(ftype, value)
        kwargs[f.name] = value
    return cls(**kwargs)


_TYPES: dict[str, type] = {
    "XRDConfig": XRDConfig,
    "DataConfig": DataConfig,
    "ModelConfig": ModelConfig,
    "TrainConfig": TrainConfig,
}
