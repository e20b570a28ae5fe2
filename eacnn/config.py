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
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eacnn.errors import ConfigError


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
        for f in dataclasses.fields(self):  # a str or NaN would otherwise surface as a TypeError or as no reflection
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                hint = (" (an anode name is resolved by eacnn.measured.resolve_wavelength, e.g. 'Mo' -> 0.70932)"
                        if f.name == "wavelength" and isinstance(value, str) else "")
                raise ConfigError(f"xrd.{f.name} must be a finite number, got {value!r}{hint}")
        if not 0 < self.wavelength < 10:
            raise ConfigError(f"xrd.wavelength must be in Å (0, 10), got {self.wavelength!r}")
        if not 0 <= self.two_theta_min < self.two_theta_max < 180:
            raise ConfigError(
                f"need 0 <= two_theta_min < two_theta_max < 180, got {self.two_theta_min!r}, {self.two_theta_max!r}"
            )
        if not self.step > 0:
            raise ConfigError(f"xrd.step must be > 0 degrees, got {self.step!r}")
        span = (self.two_theta_max - self.two_theta_min) / self.step
        if abs(span - round(span)) > 1e-9:
            raise ConfigError(f"xrd.step={self.step!r} must divide the 2θ window into whole bins")
        if self.fwhm <= 0 or not 0 <= self.eta <= 1 or self.b_factor < 0:
            raise ConfigError(f"bad profile: fwhm={self.fwhm!r} (>0), eta={self.eta!r} (0..1), b={self.b_factor!r} (>=0)")
        if self.fine_step <= 0 or not 0 <= self.intensity_tol < 1 or self.two_theta_tol < 0:
            raise ConfigError(f"need fine_step > 0, 0 <= intensity_tol < 1, two_theta_tol >= 0; got "
                              f"{self.fine_step!r}, {self.intensity_tol!r}, {self.two_theta_tol!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which structures, and how they are split."""

    source: str = "embedded"  # "embedded" (MP-20 val+test shipped in the package), a CIF folder, or "mp-api"
    max_structures: int = 0  # 0 = all; otherwise the first N of each split (deterministic), for smoke runs
    val_fraction: float = 0.1  # fraction of the MP-20 'val' split held out for model selection
    split_seed: int = 0  # seed of the train/validation carve-out
    max_sites: int = 64  # structures with more sites are reported and skipped
    disorder: str = "weighted"  # partial occupancy: "weighted" (occupancy-weighted f) or "reject"


_POOLINGS = ("mean", "std", "sum")


@dataclass(frozen=True)
class ModelConfig:
    """The two towers and the shared embedding (paper §2.3–2.4; :mod:`eacnn.models`)."""

    kind: str = "eacnn"  # "paper" (MACE tower as published) or "eacnn" (MACE + lattice + own-pattern fusion)
    r_max: float = 5.0  # Å; neighbour cutoff of the periodic graph (also the dataset's graph cutoff)
    embed_dim: int = 256  # width of the shared contrastive space
    xrd_dim: int = 384  # width of the XRD tower's output before projection (paper: 384)
    # -- structure tower: MACE ------------------------------------------------------------------------------------
    channels: int = 32  # MACE feature channels per irrep (the "32" of 2 layers x 32 channels)
    max_L: int = 0  # highest irrep order of the hidden node features: 0 -> "Cx0e", 1 -> "Cx0e+Cx1o", 2 -> +"Cx2e"
    max_ell: int = 3  # highest order of the edge spherical harmonics Y_l(r_ij), l = 0..max_ell
    correlation: int = 3  # body order of the product basis: nu = correlation (messages of nu + 1 bodies)
    num_interactions: int = 2  # message-passing layers
    num_bessel: int = 8  # Bessel radial basis functions on [0, r_max]
    num_poly_cutoff: int = 5  # exponent p of MACE's polynomial envelope (smooth to zero at r_max)
    radial_mlp: int = 64  # width of the 3-layer MLP mapping the radial basis to tensor-product weights
    avg_num_neighbors: float = 30.0  # messages are divided by this (MP-20 at r_max = 5 Å: ~29 neighbours/atom)
    readout_dim: int = 64  # invariant (0e) features read out per layer, concatenated over layers
    pooling: str = "mean"  # graph pooling of the per-atom readout: "+"-joined "mean", "std", "sum"
    # ("sum" is not supercell-invariant; "mean" and "std" are)
    mlp_dim: int = 256  # hidden width of the projection MLPs into the shared space
    # -- structure tower: physics-informed extras (kind "eacnn" only; ignored by kind "paper") -------------------
    use_lattice: bool = True  # fuse setting-invariant lattice descriptors (volume/atom, density, first d-spacings)
    use_sim_pattern: bool = True  # fuse the structure's own clean simulated pattern, encoded by a small 1D CNN
    lattice_n_d: int = 12  # number of largest d-spacings (Å) among non-extinct reflections used as descriptors
    lattice_d_min: float = 1.0  # Å; reflections with d below this are not enumerated (the search sphere)
    sim_pattern_channels: int = 32  # channels of the own-pattern 1D CNN (last stage; first stage has half)
    # True: the own pattern goes through the XRD tower itself (shared weights) and the MACE/lattice head adds a
    # correction to that embedding; False: a separate small CNN whose features are fused before the head
    share_xrd_tower: bool = False
    # -- XRD tower: 1D ResNet -------------------------------------------------------------------------------------
    xrd_channels: int = 32  # channels of the first residual stage (the second stage has twice as many)
    xrd_blocks: int = 2  # residual blocks per stage (two stages; stride-2 downsampling between them)
    xrd_kernel: int = 5  # convolution kernel size, in 0.5° bins
    xrd_positions: int = 35  # 2θ positions kept after stage 2 (average-pooled, then flattened): 2° each
    n_bins: int = 140  # length of the pattern input (must equal xrd.n_bins)
    # a second input channel of the XRD tower: the coverage mask (1 = the bin was measured), so a partial scan's
    # zeros are not read as "no peak here"; patterns without a mask are read as fully measured
    xrd_mask_channel: bool = False
    # -- shared space ---------------------------------------------------------------------------------------------
    init_temperature: float = 0.07  # CLIP: logit_scale starts at log(1 / 0.07)
    max_logit_scale: float = 100.0  # CLIP: exp(logit_scale) is clamped to at most this

    def __post_init__(self) -> None:
        if self.kind not in ("paper", "eacnn"):
            raise ConfigError(f"model.kind must be 'paper' or 'eacnn', got {self.kind!r}")
        if not 0 <= self.max_L <= 3 or self.max_L > self.max_ell:
            raise ConfigError(
                f"need 0 <= model.max_L <= min(3, max_ell), got max_L={self.max_L!r}, max_ell={self.max_ell!r}"
            )
        if self.num_interactions < 1 or self.correlation < 1 or self.channels < 1:
            raise ConfigError(
                f"need num_interactions, correlation, channels >= 1, got "
                f"{self.num_interactions!r}, {self.correlation!r}, {self.channels!r}"
            )
        parts = self.pooling.split("+")
        if not parts or any(p not in _POOLINGS for p in parts) or len(set(parts)) != len(parts):
            raise ConfigError(f"model.pooling={self.pooling!r}: join distinct names of {_POOLINGS} with '+'")
        if not 0 < self.init_temperature < 1 or self.max_logit_scale <= 1:
            raise ConfigError(
                f"bad temperature settings: init_temperature={self.init_temperature!r} (0..1), "
                f"max_logit_scale={self.max_logit_scale!r} (>1)"
            )


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time corruption of the augmented (XRD-tower) pattern (:mod:`eacnn.physics.perturb`).

    All zero = the clean pattern. ``AugmentConfig.level(k)`` gives the presets 0 (clean) .. 3 (strong).
    """

    # "legacy": the corruptions below (levels 0-3); "measured": the model of real measurements with the ranges of
    # Config.measure (eacnn.physics.measurement), the cell strained and re-simulated for anisotropic mismatch,
    # and the coverage mask given to the XRD tower when model.xrd_mask_channel
    kind: str = "legacy"
    # with kind "measured": the fraction of each batch's queries drawn from the measurement model; the others get
    # the legacy corruptions below, so clean-looking laboratory patterns stay in the training distribution
    measured_fraction: float = 1.0
    strain: float = 0.005  # max |epsilon|; d-spacings scaled by 1 + epsilon, epsilon ~ U(-strain, strain)
    zero_shift: float = 0.05  # degrees 2θ; sample-displacement / zero error, delta ~ U(-zero_shift, zero_shift)
    size_min_nm: float = 30.0  # nm; crystallite size L ~ log-uniform in [size_min_nm, size_max_nm] (Scherrer)
    size_max_nm: float = 300.0  # nm; 0 in either bound switches size broadening off
    intensity_jitter: float = 0.2  # sigma of the log-normal factor per peak (texture / preferred orientation)
    noise: float = 0.01  # sigma of additive Gaussian noise, as a fraction of the strongest bin
    counts: float = 2000.0  # counts in the strongest bin for Poisson-like noise sqrt(I / counts); 0 = off
    background: float = 0.05  # max height of the smooth background, fraction of the strongest bin; 0 = off
    scherrer_k: float = 0.9  # Scherrer shape factor K of fwhm = K λ / (L cos θ) (radians 2θ)

    @classmethod
    def level(cls, k: int) -> "AugmentConfig":
        """Presets: 0 = clean (identity), 1 = mild, 2 = moderate (the default), 3 = strong."""
        presets = {
            0: cls(strain=0.0, zero_shift=0.0, size_min_nm=0.0, size_max_nm=0.0, intensity_jitter=0.0,
                   noise=0.0, counts=0.0, background=0.0),
            1: cls(strain=0.002, zero_shift=0.02, size_min_nm=100.0, size_max_nm=1000.0, intensity_jitter=0.1,
                   noise=0.005, counts=10000.0, background=0.02),
            2: cls(),
            3: cls(strain=0.01, zero_shift=0.1, size_min_nm=10.0, size_max_nm=100.0, intensity_jitter=0.4,
                   noise=0.02, counts=500.0, background=0.1),
        }
        if k not in presets:
            raise ConfigError(f"augmentation level must be one of {sorted(presets)}, got {k!r}")
        return presets[k]

    @property
    def is_identity(self) -> bool:
        """True when every corruption is switched off (the output is the clean vector)."""
        return self.kind == "legacy" and not (self.strain or self.zero_shift or self.size_broadening or self.intensity_jitter
                    or self.noise or self.counts or self.background)

    @property
    def size_broadening(self) -> bool:
        return self.size_min_nm > 0 and self.size_max_nm > 0

    def __post_init__(self) -> None:
        if self.kind not in ("legacy", "measured"):
            raise ConfigError(f"augment.kind must be 'legacy' or 'measured', got {self.kind!r}")
        if not 0 <= self.measured_fraction <= 1:
            raise ConfigError(f"augment.measured_fraction must be in [0, 1], got {self.measured_fraction!r}")
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "kind"}
        negative = {k: v for k, v in values.items() if v < 0}
        if negative:
            raise ConfigError(f"augmentation settings must be >= 0, got {negative}")
        if self.strain >= 0.1:
            raise ConfigError(f"augment.strain={self.strain!r} is not a small strain (use < 0.1)")
        if self.size_broadening and self.size_min_nm > self.size_max_nm:
            raise ConfigError(f"augment.size_min_nm={self.size_min_nm!r} > size_max_nm={self.size_max_nm!r}")


@dataclass(frozen=True)
class MeasurementConfig:
    """Ranges of the measurement model that training draws from (:func:`eacnn.physics.measurement.perturb_measured`;
    each effect's cause and the sources of its range are in that module's docstring).

    ``p_*`` fields are the fraction of patterns that show the effect; ``MeasurementConfig.off()`` switches every
    effect off (sticks binned with a fixed Gaussian instrument width, full coverage, no noise).
    """

    scale_mean: float = -0.005  # mean of the isotropic mismatch ε = Δd/d: PBE's ~+1 % less ~0.5 % thermal expansion
    scale_sd: float = 0.015  # sd of ε before truncation; 0 = ε is always scale_mean
    scale_max: float = 0.03  # |ε| <= this (XRD-AutoAnalyzer's ±3 %, Szymanski et al. 2021); < 0.1
    aniso_max: float = 0.015  # principal strains of the anisotropic strain E ~ U(-aniso_max, aniso_max); < 0.1
    p_aniso: float = 0.7  # fraction with anisotropic strain (only where hkl and the cell are given)
    displacement_mm: float = 0.2  # mm; sample displacement s ~ U(-, +); Δ2θ = -2 s cos θ / R
    radius_mm: float = 240.0  # mm; goniometer radius R (lab Bragg–Brentano: 185–300 mm)
    zero_shift: float = 0.05  # degrees 2θ; goniometer zero offset ~ U(-, +)
    p_texture: float = 0.5  # fraction with March–Dollase texture (only where hkl and the cell are given)
    march_r_min: float = 0.6  # March parameter r, log-uniform in [min, max]; r < 1 platelets, r > 1 needles
    march_r_max: float = 1.4  # (r = 1: random powder)
    texture_index: int = 2  # the preferred direction [uvw]* has integer components in [-index, index], not all 0
    intensity_jitter: float = 0.1  # σ of the log-normal factor per peak (particle statistics, extinction)
    b_min: float = -0.3  # Å²; extra Debye–Waller ΔB ~ U(b_min, b_max) on top of the simulator's B
    b_max: float = 1.5  # Å²
    caglioti_u: float = 0.02  # deg²; U ~ U(0, caglioti_u) of FWHM² = U tan²θ + V tanθ + W (Caglioti 1958)
    caglioti_v: float = 0.8  # V = -2 v √(U W) with v ~ U(0, caglioti_v) < 1, so FWHM² > 0 everywhere
    caglioti_w_min: float = 0.002  # deg²; W ~ U(min, max), > 0
    caglioti_w_max: float = 0.02  # deg²
    lorentz_min: float = 0.01  # degrees 2θ; instrumental Lorentzian FWHM ~ U(min, max)
    lorentz_max: float = 0.05  # degrees 2θ
    size_min_nm: float = 15.0  # nm; crystallite size, log-uniform (Scherrer); 0 in either bound = no size width
    size_max_nm: float = 1000.0  # nm
    scherrer_k: float = 0.9  # Scherrer shape factor K
    microstrain_max: float = 0.003  # microstrain e ~ U(0, max) (Δd/d); Gaussian width 4 e tan θ (radians)
    p_ka2: float = 0.5  # fraction measured with Cu Kα2 present
    ka2_ratio_min: float = 0.48  # Kα2 / Kα1 area ratio ~ U(min, max) (ideal 0.5)
    ka2_ratio_max: float = 0.52
    p_impurity: float = 0.3  # fraction with an impurity phase (where impurity sticks are given)
    impurity_min: float = 0.02  # strongest impurity stick / strongest main stick ~ U(min, max)
    impurity_max: float = 0.2
    p_amorphous: float = 0.3  # fraction with an amorphous hump
    amorphous_max: float = 0.15  # hump height ~ U(0, max), fraction of the strongest crystalline bin
    amorphous_center_min: float = 18.0  # degrees 2θ; hump centre ~ U(min, max) (silica glass: ~22° with Cu Kα)
    amorphous_center_max: float = 32.0
    amorphous_fwhm_min: float = 6.0  # degrees 2θ; hump FWHM ~ U(min, max)
    amorphous_fwhm_max: float = 14.0
    p_fluorescence: float = 0.3  # fraction with a fluorescence background
    fluorescence_max: float = 0.3  # flat level ~ U(0, max), fraction of the strongest crystalline bin
    air_max: float = 0.05  # air scatter at 10° ~ U(0, max), decaying with a length ~ U(3, 15)° of 2θ
    counts_min: float = 1e3  # counts in the strongest bin, log-uniform (Poisson); 0 in either bound = no noise
    counts_max: float = 1e5
    p_window: float = 0.25  # fraction scanned over a random window only
    window_lo_max: float = 30.0  # degrees 2θ; window start ~ U(two_theta_min, window_lo_max)
    window_hi_min: float = 50.0  # degrees 2θ; window end ~ U(window_hi_min, two_theta_max)
    min_span: float = 20.0  # degrees 2θ; shortest window
    p_low_angle: float = 0.15  # fraction with a low-angle-only scan, two_theta_min to U(low_hi_min, low_hi_max)
    low_hi_min: float = 30.0  # degrees 2θ
    low_hi_max: float = 60.0  # degrees 2θ

    @classmethod
    def off(cls) -> "MeasurementConfig":
        """Every effect off: sticks binned with a 0.15° Gaussian, full coverage, no noise."""
        return cls(scale_mean=0.0, scale_sd=0.0, scale_max=0.0, aniso_max=0.0, p_aniso=0.0, displacement_mm=0.0,
                   zero_shift=0.0, p_texture=0.0, intensity_jitter=0.0, b_min=0.0, b_max=0.0, caglioti_u=0.0,
                   caglioti_v=0.0, caglioti_w_min=0.0225, caglioti_w_max=0.0225, lorentz_min=0.0, lorentz_max=0.0,
                   size_min_nm=0.0, size_max_nm=0.0, microstrain_max=0.0, p_ka2=0.0, p_impurity=0.0,
                   p_amorphous=0.0, p_fluorescence=0.0, air_max=0.0, counts_min=0.0, counts_max=0.0,
                   p_window=0.0, p_low_angle=0.0)

    def __post_init__(self) -> None:
        bad = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "scale_mean" and f.name != "b_min" and getattr(self, f.name) < 0}
        bad.update({k: v for k, v in vars(self).items() if k.startswith("p_") and v > 1})
        if self.p_window + self.p_low_angle > 1:
            bad["p_window + p_low_angle"] = self.p_window + self.p_low_angle
        if self.scale_max >= 0.1 or self.aniso_max >= 0.1 or self.caglioti_v >= 1 or self.caglioti_w_min <= 0:
            bad.update(scale_max=self.scale_max, aniso_max=self.aniso_max, caglioti_v=self.caglioti_v,
                       caglioti_w_min=self.caglioti_w_min)
        pairs = [("march_r_min", "march_r_max"), ("b_min", "b_max"), ("caglioti_w_min", "caglioti_w_max"),
                 ("lorentz_min", "lorentz_max"), ("size_min_nm", "size_max_nm"), ("ka2_ratio_min", "ka2_ratio_max"),
                 ("impurity_min", "impurity_max"), ("amorphous_center_min", "amorphous_center_max"),
                 ("amorphous_fwhm_min", "amorphous_fwhm_max"), ("counts_min", "counts_max"),
                 ("low_hi_min", "low_hi_max")]
        bad.update({f"{lo} > {hi}": (getattr(self, lo), getattr(self, hi)) for lo, hi in pairs
                    if getattr(self, lo) > getattr(self, hi)})
        if self.march_r_min <= 0 or self.texture_index < 1:
            bad.update(march_r_min=self.march_r_min, texture_index=self.texture_index)
        if bad:
            raise ConfigError(f"MeasurementConfig: bad values {bad} (probabilities in [0, 1], scales < 0.1, "
                              "caglioti_v < 1, caglioti_w_min > 0, march_r_min > 0, min <= max)")


@dataclass(frozen=True)
class TrainConfig:
    """One training run (paper §2.5; :func:`eacnn.training.loop.fit`)."""

    epochs: int = 30  # passes over the training split (the maximum; early stopping may end sooner)
    batch_size: int = 256  # structures per optimiser step, over all processes (also the in-batch retrieval pool)
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not applied to biases, norms, logit_scale)
    warmup_epochs: float = 1.0  # epochs of linear learning-rate warm-up from 0, then cosine decay
    min_lr_ratio: float = 0.01  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    patience: int = 5  # stop after this many epochs without a better validation Top-1; 0 = never stop early
    amp: str = "bf16"  # CUDA autocast: "bf16", "fp16" (with a grad scaler) or "off"; CPU: always off; MACE stays fp32
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    num_workers: int = 0  # DataLoader worker processes (0 = load in the training process)
    eval_batch_size: int = 512  # structures per forward pass when embedding the validation set
    max_steps_per_epoch: int = 0  # 0 = full epochs; otherwise cap the steps per epoch (smoke runs, tests)
    # validation queries retrieve among the validation *and* training structures (a pool as large as the test
    # pool, so model selection sees the fine distinctions a 9k pool asks for); False: the validation pool alone
    val_distractors: bool = False
    # augmentation level (AugmentConfig.level) of a second, seeded set of validation queries; the epoch is scored
    # by the mean of the clean and this level's Top-1 (clean only when 0), so selection also rewards robustness
    val_level: int = 0
    # fraction of each batch drawn as groups of 4 structures sharing a space group (look-alikes: hard negatives)
    lookalike_fraction: float = 0.0
    # other structures of the batch with the same reduced formula and space group are not negatives (masked)
    mask_duplicates: bool = False
    # 0 = the whole train split; N = a nested subset of N training structures (the first N of a seeded order, so
    # the subset of 1,000 lies inside that of 2,000): data-scaling curves. Validation still retrieves among the
    # whole train split, so Top-1 is measured on the same pool at every size.
    train_subset: int = 0
    # 0 = no limit; otherwise this call of fit stops after the epoch that passes this many minutes (the run stays
    # resumable: a later call continues the same schedule). A budget for lent GPU time, not a training setting.
    max_minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.max_minutes < 0:
            raise ConfigError(f"train.max_minutes must be >= 0 (0 = no limit), got {self.max_minutes!r}")
        if self.train_subset < 0:
            raise ConfigError(f"train.train_subset must be >= 0 (0 = all), got {self.train_subset!r}")
        if not 0 <= self.lookalike_fraction <= 1:
            raise ConfigError(f"train.lookalike_fraction must be in [0, 1], got {self.lookalike_fraction!r}")
        if self.epochs < 1 or self.batch_size < 2 or self.eval_batch_size < 1:
            raise ConfigError(
                f"need epochs >= 1, batch_size >= 2, eval_batch_size >= 1; got {self.epochs!r}, "
                f"{self.batch_size!r}, {self.eval_batch_size!r}"
            )
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(
                f"bad optimiser settings: lr={self.lr!r}, weight_decay={self.weight_decay!r}, "
                f"warmup_epochs={self.warmup_epochs!r}, min_lr_ratio={self.min_lr_ratio!r}"
            )
        if self.val_level not in (0, 1, 2, 3):
            raise ConfigError(f"train.val_level must be an augmentation level 0..3, got {self.val_level!r}")
        if self.amp not in ("bf16", "fp16", "off"):
            raise ConfigError(f"train.amp must be 'bf16', 'fp16' or 'off', got {self.amp!r}")


@dataclass(frozen=True)
class SearchConfig:
    """Every setting of the identification of one pattern (:func:`eacnn.retrieval.identify.identify`), with its
    unit and where it was chosen. Stored in a database's calibration (``manifest.json``) beside the thresholds it was
    calibrated under, so that a search run with other settings says so instead of mixing them silently.

    Chosen on the validation split (``scripts/select_rerank.py``; never the test pool): the scale prior and the
    re-ranking rule (mean Top-1 over seven query conditions), the cell fit's prior and gain (``--cell-grid``,
    ``eacnn/data/cell_fit.csv``), the depth (``--depth-grid``, ``eacnn/data/rerank_depth.csv``), the texture fit
    (``--texture-grid``, ``eacnn/data/texture_fit.csv``: 200 validation queries per condition; the mean over the
    seven conditions 88.7 % without it, 88.9 % with it, texture 90.0 -> 92.0 %; the cheapest of the tied settings). The refinement
    grids are fixed by the physics they must cover (a measured cell is within ±3 % of its database entry; a sample
    displacement moves peaks by a few tenths of a degree).
    """

    # -- the multi-scale query (eacnn.retrieval.query) --------------------------------------------------------------
    scale_min: float = 0.96  # lowest lattice scale (d-spacings times s) the query is read at
    scale_max: float = 1.04  # highest
    scale_steps: int = 9  # scales from scale_min to scale_max, evenly (1 % apart)
    scale_penalty: float = 0.01  # similarity lost per 1 % of |s - 1| (a prior on the mismatch); validation
    # the best this many candidates by the binned pattern's own cosine (search-match's score, read at scales 4x finer
    # than the query's) join the refined shortlist beside the model's, for where texture or strain moves the model's
    # embedding away; validation (--recall-grid, eacnn/data/cosine_recall.csv: 200 queries in each of eight
    # conditions, strong texture included: 0, 5, 10 and 20 all answer 86.8 % right on average, the recalled
    # candidates do not win the re-ranking, so none are added)
    cosine_recall: int = 0
    # -- refinement of the best candidates -------------------------------------------------------------------------
    rerank_depth: int = 30  # candidates refined (lattice scale, zero shift, width); validation (--depth-grid)
    cell_fits: int = 30  # of those, the best whose whole cell is fitted too (~17x the cost); validation
    rerank_rule: str = "likelihood"  # "likelihood": similarity - w ln(1 - agreement²); "linear": w a + (1 - w) s
    rerank_weight: float = 0.04  # w of the rule; validation
    anisotropy_penalty: float = 0.04  # score lost per 1 % of a fitted cell's anisotropic strain; validation
    cell_min_gain: float = 2.0  # a cell fit is kept when it lowers 1 - agreement² this many times; validation
    cell_max_strain: float = 0.05  # a cell fit straining the cell more than this beyond the isotropic fit is refused
    refine_offset: float = 0.006  # Δd/d searched either side of the query's scale (7 points)
    refine_shift: float = 0.3  # degrees 2θ of zero shift searched either side of 0 (7 points)
    refine_widths: tuple = (1.0, 2.0)  # peak FWHM tried, in units of the model's xrd.fwhm
    fine_steps: tuple = ((0.001, 0.05), (0.00025, 0.0125))  # finer (Δd/d, degrees) grids, ±2 steps each
    cell_widths: tuple = (3.0, 1.0)  # the cell fit's profile widths, in units of the isotropic fit's
    cell_evaluations: tuple = (20, 30)  # most profile evaluations of the cell fit at each of cell_widths
    texture_fits: int = 5  # of the cell-fitted, the best whose preferred orientation is fitted too; validation
    texture_min_gain: float = 1.5  # a texture fit is kept when it lowers 1 - agreement² this many times; validation
    texture_penalty: float = 0.02  # score lost per unit |ln r| of a kept March–Dollase r; validation
    texture_r: tuple = (0.5, 2.0, 15)  # March–Dollase r tried: (lowest, highest, points, geometric)
    # -- the whole-pattern fit at the scan's own resolution (eacnn.retrieval.scanfit), where the search has a scan --
    # chosen together on 239 validation scans of our two measurement families, phase present and absent
    # (scripts/select_scanfit.py, eacnn/data/scan_fit.csv): re-ranking by the fit does not raise Top-1 beyond noise
    # (62.3 % -> at most 64.0 %), so the order stays the binned score's; the verdict "the binned score's, or a fit
    # of χ² <= 0.69 that stands out by 1.0 in ln χ²" names 60 % of the right answers at 80 % precision, against 49 %
    # at 78 % for the binned verdict alone on the same queries
    scan_fits: int = 3  # of the re-ranked candidates, the best fitted to the scan itself (0: off); validation
    scan_weight: float = 0.0  # score lost per unit ln χ² of that fit, re-ranking the fitted; validation
    scan_statistic: str = "chi2"  # the fit quality a "match" is judged by: "chi2" or "rwp_net"; validation
    scan_limit: float = 0.6894  # a "match" needs the answer's scan_statistic at most this; validation
    scan_margin: float = 1.0  # and ln χ² of the best fitted other phase at least this above the answer's; validation
    # how the fit's rule meets the binned score's calibrated verdict: "scan" (the fit's alone), "and" (both must say
    # "match"), "or" (either may); validation
    scan_combine: str = "or"
    # -- the verdict's calibration ----------------------------------------------------------------------------------
    target_precision: float = 0.8  # a "match" is right at least this often on validation queries (present/absent)
    calibration_queries: int = 450  # validation structures asked, each with its phase present and absent

    def __post_init__(self) -> None:
        for name in ("refine_widths", "fine_steps", "cell_widths", "cell_evaluations", "texture_r"):  # JSON: lists
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(tuple(v) if isinstance(v, list) else v for v in value))
        if not 0 < self.scale_min <= 1 <= self.scale_max < 2 or self.scale_steps < 1:
            raise ConfigError(f"search scales must bracket 1: scale_min={self.scale_min!r}, "
                              f"scale_max={self.scale_max!r}, scale_steps={self.scale_steps!r}")
        if (self.rerank_depth < 0 or self.cell_fits < 0 or self.texture_fits < 0 or self.scan_fits < 0
                or self.cosine_recall < 0 or self.calibration_queries < 3):
            raise ConfigError(f"need rerank_depth, cell_fits, texture_fits, scan_fits, cosine_recall >= 0, "
                              f"calibration_queries >= 3; got {self.rerank_depth!r}, {self.cell_fits!r}, "
                              f"{self.texture_fits!r}, {self.scan_fits!r}, {self.cosine_recall!r}, "
                              f"{self.calibration_queries!r}")
        if self.scan_combine not in ("scan", "and", "or"):
            raise ConfigError(f"search.scan_combine must be 'scan', 'and' or 'or', got {self.scan_combine!r}")
        if self.scan_statistic not in ("chi2", "rwp_net"):
            raise ConfigError(f"search.scan_statistic must be 'chi2' or 'rwp_net', got {self.scan_statistic!r}")
        if self.rerank_rule not in ("likelihood", "linear"):
            raise ConfigError(f"search.rerank_rule must be 'likelihood' or 'linear', got {self.rerank_rule!r}")
        if not 0 < self.target_precision < 1:
            raise ConfigError(f"search.target_precision must be in (0, 1), got {self.target_precision!r}")

    @property
    def scales(self) -> np.ndarray:
        """[S] the lattice scales the query is read at (rounded to 1e-4)."""
        return np.round(np.linspace(self.scale_min, self.scale_max, self.scale_steps), 4)

    @property
    def recall_scales(self) -> np.ndarray:
        """[4 (S - 1) + 1] the lattice scales the cosine recall reads the query at: the query's, 4x finer."""
        return np.round(np.linspace(self.scale_min, self.scale_max, 4 * (self.scale_steps - 1) + 1), 5)

    #: the settings that change what the verdict's thresholds mean: a search must use the calibrated ones
    VERDICT_FIELDS = ("scale_min", "scale_max", "scale_steps", "scale_penalty", "rerank_depth", "cell_fits",
                      "rerank_rule", "rerank_weight", "anisotropy_penalty", "cell_min_gain", "texture_fits",
                      "texture_min_gain", "texture_penalty", "cosine_recall")

    def differences(self, other: "SearchConfig") -> list[str]:
        """``"field: this -> other"`` for every verdict-relevant setting (:data:`VERDICT_FIELDS`) that differs."""
        return [f"{name}: {getattr(self, name)!r} -> {getattr(other, name)!r}" for name in self.VERDICT_FIELDS
                if getattr(self, name) != getattr(other, name)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_calibration(cls, calibration: dict) -> "SearchConfig":
        """The settings a database's calibration was fitted under: its ``search`` record, or, for a calibration
        written before settings were recorded, what it did record (depth, cells, rule, priors); the rest default."""
        if isinstance(calibration.get("search"), dict):
            names = {f.name for f in dataclasses.fields(cls)}
            record = {k: v for k, v in calibration["search"].items() if k in names}
            record.setdefault("texture_fits", 0)  # recorded before the texture fit existed: calibrated without it
            record.setdefault("cosine_recall", 0)  # recorded before the cosine recall existed: calibrated without it
            return cls(**record)
        kw: dict[str, Any] = {}
        if "rerank" in calibration:
            kw["rerank_depth"] = int(calibration["rerank"])
        cell = calibration.get("cell_fit") or {}
        for key, name in (("cells", "cell_fits"), ("anisotropy_penalty", "anisotropy_penalty"),
                          ("min_gain", "cell_min_gain")):
            if key in cell:
                kw[name] = cell[key]
        if "rerank_rule" in calibration:
            kw["rerank_rule"], kw["rerank_weight"] = calibration["rerank_rule"][0], float(calibration["rerank_rule"][1])
        if "scale_penalty" in calibration:
            kw["scale_penalty"] = float(calibration["scale_penalty"])
        if "target" in calibration:
            kw["target_precision"] = float(calibration["target"])
        if "n_queries" in calibration:
            kw["calibration_queries"] = max(3, int(calibration["n_queries"]))
        return cls(texture_fits=0, cosine_recall=0, **kw)


@dataclass(frozen=True)
class MixtureConfig:
    """Every setting of the mixture search (:func:`eacnn.measured.mixtures.identify_phases`), with its unit and where
    it was chosen. The stopping rules (``significance`` … ``min_agreement``) are chosen on mixtures of *validation*
    structures (``python scripts/mixtures.py --select-rules 60 80 60``, ``eacnn/data/mixture_rules.csv``): 60
    single-, 80 two- and 60 three-phase patterns, each searched once with rules that never stop, every rule set of a
    225-point grid replayed on those paths; the criterion is the share of patterns whose found phases (reduced
    formula and space group) are exactly the true ones, averaged over 1, 2 and 3 phases. The rules set earlier on
    test mixtures scored 43.9 % there; raising ``min_peak`` from 0.08 to 0.12 scores 48.3 % (spurious phases per
    pattern 0.79 -> 0.66), the only change. The fit's grids are fixed by the physics they cover (a measured cell
    within ±3 % of its database entry, sample displacement of tenths of a degree)."""

    max_phases: int = 4  # most phases one pattern is searched for
    shortlist: int = 50  # candidates screened at each step
    significance: float = 5.0  # a residual peak must exceed this many noise σ (stopping rule; validation)
    min_peak: float = 0.12  # … and this fraction of the strongest bin (stopping rule; validation)
    min_gain: float = 0.3  # a new phase must remove this share of the remaining weighted misfit (rule; validation)
    min_agreement: float = 0.5  # cosine of the new phase's profile with the positive residual (rule; validation)
    beam: int = 3  # first phases followed to the end; another replaces the greedy one by beam_gain
    beam_gain: float = 0.1  # relative Rwp a line of search must gain to replace the greedy one
    kalpha2_ratio: float = 0.5  # Cu Kα2 / Kα1 area ratio tried when the pattern may carry Kα2
    background_degree: int = 6  # Bernstein polynomials of this degree in 2θ make the smooth background
    strain_offset: float = 0.006  # Δd/d searched either side of a phase's strain (13 points, 0.1 % steps)
    shift: float = 0.3  # degrees 2θ of zero shift searched either side (13 points, 0.05° steps)
    widths: tuple = (1.0, 1.5, 2.5, 4.0)  # peak FWHM tried, in units of the model's xrd.fwhm
    screen_strain: float = 0.035  # Δd/d of the screen every candidate gets (29 points), beyond the ±3 % mismatch
    screen_widths: tuple = (1.0, 2.5)  # the screen's peak widths, in units of xrd.fwhm
    collinear: float = 0.95  # a candidate this collinear with a chosen phase (cosine) is the same pattern
    alternatives: int = 5  # candidates per slot tried in the final re-check
    swap_gain: float = 0.01  # relative Rwp a swap must gain to be kept
    weight_floor: float = 0.01  # Poisson-like weights 1 / max(y, floor) of the fit and of Rwp
    fit_scale: float = 0.035  # lattice scales 1 ± this of the fit screen (15 points, 0.5 % steps)

    def __post_init__(self) -> None:
        for name in ("widths", "screen_widths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not 1 <= self.max_phases <= 8 or self.shortlist < 1 or self.beam < 1 or self.alternatives < 0:
            raise ConfigError(f"mixture: need 1 <= max_phases <= 8, shortlist, beam >= 1, alternatives >= 0; got "
                              f"{self.max_phases!r}, {self.shortlist!r}, {self.beam!r}, {self.alternatives!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Extended by later sections (model, training)."""

    profile: str = "cpu"  # "smoke" (seconds, tests), "cpu" (2 cores), "paper" (GPU, paper scale)
    seed: int = 0  # global seed of training and augmentation
    xrd: XRDConfig = field(default_factory=XRDConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    measure: MeasurementConfig = field(default_factory=MeasurementConfig)  # used when augment.kind == "measured"

    # ---- presets -------------------------------------------------------------------------------------------
    @classmethod
    def smoke(cls) -> "Config":
        """Seconds on a laptop: a few hundred structures and a tiny model; for tests and the CI book."""
        return cls(
            profile="smoke",
            data=DataConfig(max_structures=300),
            model=ModelConfig(
                channels=8, max_ell=2, correlation=2, radial_mlp=16, readout_dim=16, mlp_dim=64, embed_dim=64,
                xrd_dim=64, xrd_channels=8, xrd_blocks=1, sim_pattern_channels=8, lattice_n_d=6, share_xrd_tower=True,
            ),
            train=TrainConfig(epochs=2, batch_size=32, lr=2e-3, warmup_epochs=0.5, patience=0, eval_batch_size=256,
                              val_distractors=True, val_level=2),
        )

    @classmethod
    def cpu(cls) -> "Config":
        """The embedded data in full (~8k training structures); trains on 2 CPU cores in under an hour.

        Queries as measured: half of each batch from the model of real measurements (lattice mismatch up to ±3 %,
        anisotropic strain, texture, Kα2, impurities, partial scans: :mod:`eacnn.physics.measurement`), half with
        the legacy corruptions; the XRD tower reads the coverage mask; a quarter of each batch comes in groups of
        four sharing a space group, and copies of a structure are not negatives. Chosen on the validation split
        over the purely measured variant (``augment.measured_fraction=1``) and the previous default
        (``scripts/select_default.py``).
        """
        return cls(
            profile="cpu",
            # max_ell = 2: with correlation 3 the product basis of l <= 3 harmonics costs ~3x more on a CPU
            model=ModelConfig(channels=32, max_L=0, max_ell=2, correlation=3, xrd_channels=32, share_xrd_tower=True,
                              xrd_mask_channel=True),
            train=TrainConfig(epochs=16, batch_size=128, lr=1e-3, warmup_epochs=1.0, patience=5, val_distractors=True,
                              val_level=2, lookalike_fraction=0.25, mask_duplicates=True),
            augment=AugmentConfig(kind="measured", measured_fraction=0.5),
        )

    @classmethod
    def paper(cls) -> "Config":
        """The paper's scale (one GPU): 2 layers x 128 channels with vector features, batch 256."""
        return cls(
            profile="paper",
            model=ModelConfig(
                channels=128, max_L=1, max_ell=3, correlation=3, radial_mlp=64, readout_dim=128, mlp_dim=512,
                xrd_channels=64, xrd_blocks=2, share_xrd_tower=True,
            ),
            train=TrainConfig(epochs=100, batch_size=256, lr=5e-4, warmup_epochs=2.0, patience=15, amp="bf16",
                              val_distractors=True, val_level=2),
        )

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


def _replace(obj: Any, dotted: dict[str, Any], prefix: str = "") -> Any:
    names = {f.name: f for f in dataclasses.fields(obj)}
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in dotted.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise ConfigError(f"{type(obj).__name__} has no field {head!r} (from override {prefix + key!r}); "
                              f"fields: {sorted(names)}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            current = getattr(obj, head)
            if dataclasses.is_dataclass(current):
                raise ConfigError(f"override {prefix + key!r} replaces a whole section; name a field, e.g. "
                                  f"{prefix + key}.<field>")
            if current is not None and not isinstance(value, type(current)) and not (
                isinstance(current, float) and isinstance(value, int)
            ):
                raise ConfigError(f"{prefix + key}={value!r} has type {type(value).__name__}, expected "
                                  f"{type(current).__name__}")
            direct[head] = float(value) if isinstance(current, float) else value
    for head, sub in nested.items():
        direct[head] = _replace(getattr(obj, head), sub, f"{prefix}{head}.")
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
    "AugmentConfig": AugmentConfig,
    "MeasurementConfig": MeasurementConfig,
}
