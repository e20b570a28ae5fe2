"""A model of real measurements: :func:`perturb_measured` turns the sticks of simulated patterns into what a
diffractometer records (:class:`MeasurementConfig`), drawn per pattern from a numpy ``Generator``. Each effect, its cause,
and what the training family draws per pattern (ranges without a source are this module's choice):

* **lattice mismatch**: the measured cell is not the PBE-relaxed one. PBE overestimates lattice constants by ~1 %
  (Haas, Tran & Blaha, Phys. Rev. B 79, 085104 (2009)); solid solutions and temperature move them either way.
  Isotropic ε (d → d (1 + ε)) from a normal of mean −0.5 % (PBE's ~+1 % less ~0.5 % of thermal expansion from 0 K
  to room temperature, linear expansion ~1–2·10⁻⁵ K⁻¹) and sd 1.5 %, truncated to ±3 % (XRD-AutoAnalyzer's ±3 % per
  lattice parameter: Szymanski et al., Chem. Mater. 33, 4204 (2021)): the measured cell is the smaller in ~2 of 3
  patterns, and 1 in 20 still reaches +2 %. For 70 % of patterns also a random symmetric strain E (principal strains
  U(±1.5 %) along random axes) through the metric: the cell L (rows a, b, c in Å) becomes L F with
  F = (1 + ε)(I + E), a reflection's reciprocal vector g = h L⁻ᵀ becomes g F⁻¹ and d = 1 / |g|, so
  symmetry-equivalent reflections given as separate sticks split. Needs each stick's hkl and the cell
  (:func:`strain_peaks`); without them only ε is applied.
* **sample displacement** s (the powder surface off the focusing circle): Δ2θ = −2 s cos θ / R (radians; Klug &
  Alexander, X-ray Diffraction Procedures, 2nd ed., Wiley (1974)), s ~ U(±0.2 mm), R = 240 mm; and a goniometer
  **zero offset** U(±0.05°).
* **preferred orientation** (platelets or needles lie along one direction in the holder): March–Dollase factor
  (r² cos²α + sin²α / r)^(−3/2) (Dollase, J. Appl. Cryst. 19, 267 (1986)), α the angle between g and a random
  reciprocal-lattice direction [uvw]* (|u|, |v|, |w| ≤ 2), r log-uniform in 0.6–1.4, for half the patterns: one
  direction for all peaks, so the changes are correlated. Without hkl: no texture. Every peak also gets a log-normal
  factor exp(0.1 N(0, 1)) (particle statistics, extinction, micro-absorption).
* **Debye–Waller**: the simulator's B = 0.5 Å² is rarely the sample's: an extra envelope exp(−2 ΔB sin²θ / λ²),
  ΔB ~ U(−0.3, 1.5) Å², so B = 0.2–2 Å² (elemental crystals at 293 K: Peng et al., Acta Cryst. A52, 456 (1996)).
* **peak shape**: instrumental Gaussian FWHM² = U tan²θ + V tan θ + W (Caglioti, Paoletti & Ricci, Nucl. Instrum.
  3, 223 (1958)), U ~ U(0, 0.02), W ~ U(0.002, 0.02) deg², V = −2 v √(U W), v ~ U(0, 0.8) (so FWHM² > 0 at every
  angle; 0.045–0.15° at 30°, up to 0.19° at 80°: laboratory diffractometers), with an instrumental Lorentzian of
  0.01–0.05°; crystallite size L (Scherrer, Nachr. Ges. Wiss. Göttingen 26, 98 (1918)): Lorentzian K λ / (L cos θ),
  K = 0.9, L log-uniform 15–1000 nm; microstrain e (Stokes & Wilson, Proc. Phys. Soc. 56, 174 (1944)): Gaussian
  4 e tan θ, e ~ U(0, 0.3 %). Gaussian and Lorentzian widths make one pseudo-Voigt width and η (Thompson, Cox &
  Hastings, J. Appl. Cryst. 20, 79 (1987); :func:`tch_pseudo_voigt`).
* **Cu Kα2** (no monochromator, no stripping; half the patterns): each reflection again at sin θ₂ = sin θ λ₂ / λ₁,
  λ₂ = 1.544427 Å (Hölzer et al., Phys. Rev. A 56, 4554 (1997)), area ratio U(0.48, 0.52) (the 2 : 1 weight of the
  2p₃/₂ and 2p₁/₂ vacancies).
* **impurity phase**: another structure's sticks (given), strongest at 2–20 % of the main phase's, 30 % of patterns.
* **amorphous hump** (glass holder, amorphous content): a Gaussian at 18–32°, FWHM 6–14°, up to 15 % of the strongest
  peak (30 % of patterns); **fluorescence** (Fe, Co, Mn under Cu radiation): a flat level up to 30 % (30 %); air
  scatter decaying from low angle, up to 5 %.
* **counting noise**: Poisson at N counts in the strongest bin, N log-uniform 10³–10⁵.
* **partial coverage**: a random window (25 %: from 10–30° to 50–80°, at least 20° wide) or a low-angle-only scan
  (15 %: 10° to 30–60°, as Mo Kα or synchrotron data put on the Cu Kα1 scale); unmeasured bins are 0 and the
  coverage mask [B, n_bins] comes back with the patterns.

``family="heldout"`` (:class:`HeldOutConfig`) is for evaluation only and training must never draw it: the same
causes through other functional forms. Isotropic ε ~ U(±3 %) (symmetric) and a uniaxial strain e n nᵀ; specimen
transparency Δ2θ = −sin 2θ / (2 μ R) (μ 10–500 cm⁻¹; Klug & Alexander) instead of displacement; axially symmetric
harmonic texture 1 + c₂ P₂(cos α) + c₄ P₄(cos α) (Järvinen, J. Appl. Cryst. 26, 525 (1993)) instead of
March–Dollase; a smooth Gaussian-process-like log-intensity distortion in 2θ (random Fourier features: Rahimi &
Recht, NIPS 2007) instead of per-peak jitter; FWHM H₀ + H₁ tan θ with one η per pattern instead of Caglioti + TCH;
Kα2 at a ratio 0.30–0.45 (imperfect stripping) and a Kβ leak (1.392218 Å, 0.5–3 %: a worn Ni filter); a Chebyshev
background and a Lorentzian hump at 20–40°; Poisson at 3·10²–3·10⁴ counts plus Gaussian read noise; windows that
may hold a 1–4° detector gap.

Bins are the exact integrals of the pseudo-Voigt (:func:`eacnn.physics.profile.pv_cdf` at the bin edges); in
:func:`perturb_measured` each peak is integrated over the bins within ±5° of it (±10° when its FWHM exceeds 0.35°;
:data:`WINDOW_HALF`): the Lorentzian tails beyond hold η FWHM / (π × 5°) of the area (< 2.3 % of a narrow peak's,
< 3.2 % of a 1° one's), and the integrals cost a quarter of those over every bin.

>>> import numpy as np
>>> y, mask, params = perturb_measured([(np.array([30.0, 45.0]), np.array([1.0, 0.5]))], rng=0)
>>> y.shape, mask.shape, float(y.max())
((1, 140), (1, 140), 1.0)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from eacnn.config import MeasurementConfig, XRDConfig
from eacnn.errors import ConfigError, PatternError
from eacnn.physics.perturb import _concat, _max_normalise
from eacnn.physics.profile import FWHM_TO_SIGMA, pv_cdf
from eacnn.physics.wavelengths import CU

__all__ = ["MeasurementConfig", "HeldOutConfig", "perturb_measured", "strain_peaks", "displacement_shift",
           "transparency_shift", "march_dollase", "harmonic_texture", "caglioti_fwhm", "tch_pseudo_voigt",
           "satellite_positions", "debye_waller", "coverage_mask", "CU_KALPHA2", "CU_KBETA", "WINDOW_HALF",
           "WINDOW_NARROW_FWHM"]

CU_KALPHA2 = CU.kalpha2  # Å, Cu Kα2 (eacnn.physics.wavelengths: Hölzer et al. 1997)
CU_KBETA = CU.kbeta  # Å, Cu Kβ1
WINDOW_HALF = 5.0  # degrees 2θ: perturb_measured integrates a peak over the bins this close (twice as far when broad)
WINDOW_NARROW_FWHM = 0.35  # degrees 2θ: peaks up to this FWHM are narrow


# ---------------------------------------------------------------------------------------------------------------
# A model of real measurements (issue 12)
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOutConfig:
    """Ranges of the held-out family of :func:`perturb_measured` (evaluation only; never used in training).

    Shared ranges (lattice magnitude, zero offset, Debye–Waller, impurity fraction, hump and coverage probabilities)
    come from the :class:`MeasurementConfig` passed alongside; these are the other functional forms' own ranges.
    """

    p_uniaxial: float = 0.7  # fraction with a uniaxial strain e n nᵀ, e ~ U(±MeasurementConfig.aniso_max)
    mu_min_cm: float = 10.0  # cm⁻¹; linear attenuation μ, log-uniform; transparency Δ2θ = -sin 2θ / (2 μ R)
    mu_max_cm: float = 500.0  # cm⁻¹ (organics ~10, oxides of heavy elements ~1000)
    harmonic_c2: float = 0.5  # |c₂| max of the texture 1 + c₂ P₂(cos α) + c₄ P₄(cos α), floored at 0.05
    harmonic_c4: float = 0.3  # |c₄| max
    gp_sigma_max: float = 0.25  # σ of the log-intensity distortion ~ U(0, max)
    gp_length_min: float = 5.0  # degrees 2θ; its length scale ~ U(min, max)
    gp_length_max: float = 20.0
    gp_features: int = 16  # random Fourier features per pattern
    width0_min: float = 0.05  # degrees 2θ; FWHM = H₀ + H₁ tan θ, H₀ ~ U(min, max)
    width0_max: float = 0.2
    width1_max: float = 0.3  # degrees 2θ; H₁ ~ U(0, max)
    eta_min: float = 0.1  # pseudo-Voigt η per pattern ~ U(min, max)
    eta_max: float = 0.9
    ka2_ratio_min: float = 0.30  # Kα2 / Kα1 area ratio ~ U(min, max), with MeasurementConfig.p_ka2
    ka2_ratio_max: float = 0.45
    p_kbeta: float = 0.3  # fraction with a Cu Kβ leak
    kbeta_max: float = 0.03  # Kβ / Kα1 area ratio ~ U(0.005, max)
    chebyshev_degree: int = 4  # degree of the Chebyshev background
    chebyshev_max: float = 0.2  # its height ~ U(0, max), fraction of the strongest crystalline bin
    hump_center_min: float = 20.0  # degrees 2θ; Lorentzian hump centre ~ U(min, max), height as amorphous_max
    hump_center_max: float = 40.0
    counts_min: float = 3e2  # counts in the strongest bin, log-uniform (Poisson)
    counts_max: float = 3e4
    read_noise_max: float = 0.005  # σ of Gaussian read noise ~ U(0, max), fraction of the strongest bin
    p_gap: float = 0.3  # fraction with an unmeasured band (detector gap) inside the scan
    gap_min: float = 1.0  # degrees 2θ; gap width ~ U(min, max)
    gap_max: float = 4.0

    def __post_init__(self) -> None:
        bad = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) < 0}
        bad.update({k: v for k, v in vars(self).items() if k.startswith("p_") and v > 1})
        if self.mu_min_cm <= 0 or self.width0_min <= 0 or self.gp_length_min <= 0 or self.eta_max > 1:
            bad.update(mu_min_cm=self.mu_min_cm, width0_min=self.width0_min, gp_length_min=self.gp_length_min,
                       eta_max=self.eta_max)
        if bad:
            raise ConfigError(f"HeldOutConfig: bad values {bad} (>= 0, probabilities and eta <= 1, "
                              "mu_min_cm, width0_min, gp_length_min > 0)")


# Single effects: pure functions of peak positions (degrees 2θ) and per-peak parameters, broadcasting like numpy.
def strain_peaks(two_theta: np.ndarray, scale: float = 0.0, strain: np.ndarray | None = None,
                 hkl: np.ndarray | None = None, lattice: np.ndarray | None = None) -> np.ndarray:
    """Peak positions (degrees 2θ) of one pattern after its cell L becomes L F, F = (1 + scale)(I + strain).

    With ``hkl`` and ``lattice`` each reflection moves as the strained metric says: g = h L⁻ᵀ becomes g F⁻¹ and
    sin θ' = sin θ |g F⁻¹| / |g|, so symmetry-equivalent reflections given as separate sticks split under an
    anisotropic strain. Without them (both or neither) the strain tensor is ignored and sin θ' = sin θ / (1 + scale).

    Args:
        two_theta: [p] degrees, peak positions of the unstrained cell.
        scale: isotropic mismatch ε, every d-spacing × (1 + ε).
        strain: [3, 3] symmetric strain E in the Cartesian frame of ``lattice``; None = 0.
        hkl: [p, 3] Miller indices of each stick.
        lattice: [3, 3] Å, rows a, b, c (pymatgen's ``Lattice.matrix``).

    Returns:
        [p] degrees; NaN where the reflection leaves the sphere (sin θ' > 1).
    """
    tt = np.asarray(two_theta, dtype=np.float64)
    g, recip, has = _reciprocal_vectors(None if hkl is None else [hkl], None if lattice is None else [lattice],
                                        np.array([len(tt)]))
    e = np.zeros((1, 3, 3)) if strain is None else np.asarray(strain, dtype=np.float64).reshape(1, 3, 3)
    return _strain_batch(tt, np.zeros(len(tt), dtype=np.int64), np.array([scale], dtype=np.float64), e, g, has)


def displacement_shift(two_theta: np.ndarray, displacement_mm: float | np.ndarray, radius_mm: float) -> np.ndarray:
    """Δ2θ (degrees) of a specimen surface displaced by s (mm) from the focusing circle: −2 s cos θ / R (radians).

    s > 0 moves peaks to lower 2θ, most at low angle (Klug & Alexander 1974).
    """
    theta = np.radians(np.asarray(two_theta, dtype=np.float64) / 2.0)
    return np.degrees(-2.0 * np.asarray(displacement_mm) * np.cos(theta) / radius_mm)


def transparency_shift(two_theta: np.ndarray, mu_per_cm: float | np.ndarray, radius_mm: float) -> np.ndarray:
    """Δ2θ (degrees) of X-rays diffracted inside a thick specimen of linear attenuation μ (cm⁻¹): −sin 2θ / (2 μ R)."""
    mu_per_mm = np.asarray(mu_per_cm, dtype=np.float64) / 10.0
    return np.degrees(-np.sin(np.radians(np.asarray(two_theta, dtype=np.float64))) / (2.0 * mu_per_mm * radius_mm))


def march_dollase(cos_alpha: np.ndarray, r: float | np.ndarray) -> np.ndarray:
    """March–Dollase factor (r² cos²α + sin²α / r)^(−3/2) of a reflection at angle α to the preferred direction.

    r = 1: random powder (factor 1); r < 1 (platelets): reflections along the direction strengthen by r⁻³;
    r > 1 (needles): they weaken. Dollase, J. Appl. Cryst. 19, 267 (1986).
    """
    c2 = np.asarray(cos_alpha, dtype=np.float64) ** 2
    r = np.asarray(r, dtype=np.float64)
    return (r * r * c2 + (1.0 - c2) / r) ** -1.5


def harmonic_texture(cos_alpha: np.ndarray, c2: float | np.ndarray, c4: float | np.ndarray) -> np.ndarray:
    """Axially symmetric harmonic texture 1 + c₂ P₂(cos α) + c₄ P₄(cos α), floored at 0.05 (Järvinen 1993)."""
    x2 = np.asarray(cos_alpha, dtype=np.float64) ** 2
    p2 = 0.5 * (3.0 * x2 - 1.0)
    p4 = (35.0 * x2 * x2 - 30.0 * x2 + 3.0) / 8.0
    return np.maximum(1.0 + np.asarray(c2) * p2 + np.asarray(c4) * p4, 0.05)


def caglioti_fwhm(two_theta: np.ndarray, u: float | np.ndarray, v: float | np.ndarray,
                  w: float | np.ndarray) -> np.ndarray:
    """Instrumental FWHM (degrees) √(U tan²θ + V tan θ + W), U, V, W in deg² (Caglioti, Paoletti & Ricci 1958)."""
    t = np.tan(np.radians(np.asarray(two_theta, dtype=np.float64) / 2.0))
    return np.sqrt(np.maximum(u * t * t + v * t + w, 1e-8))


def tch_pseudo_voigt(fwhm_g: np.ndarray, fwhm_l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FWHM and η of the pseudo-Voigt that stands for a Voigt of Gaussian and Lorentzian FWHMs (same units).

    Thompson, Cox & Hastings, J. Appl. Cryst. 20, 79 (1987).
    """
    g, lo = np.asarray(fwhm_g, dtype=np.float64), np.asarray(fwhm_l, dtype=np.float64)
    f = (g**5 + 2.69269 * g**4 * lo + 2.42843 * g**3 * lo**2 + 4.47163 * g**2 * lo**3 + 0.07842 * g * lo**4
         + lo**5) ** 0.2
    q = lo / np.where(f > 0, f, 1.0)
    return f, np.clip(1.36603 * q - 0.47719 * q * q + 0.11116 * q**3, 0.0, 1.0)


def satellite_positions(two_theta: np.ndarray, wavelength_ratio: float) -> np.ndarray:
    """2θ (degrees) of the same reflections at a second wavelength λ' = ratio × λ: sin θ' = ratio sin θ; NaN past 180°.

    Cu Kα2: ``ratio = CU_KALPHA2 / 1.5406``.
    """
    s = wavelength_ratio * np.sin(np.radians(np.asarray(two_theta, dtype=np.float64) / 2.0))
    return np.where(s < 1.0, np.degrees(2.0 * np.arcsin(np.minimum(s, 1.0))), np.nan)


def debye_waller(two_theta: np.ndarray, b: float | np.ndarray, wavelength: float) -> np.ndarray:
    """Intensity factor exp(−2 B sin²θ / λ²) of an isotropic B (Å²); B < 0 undoes part of the simulator's B."""
    s = np.sin(np.radians(np.asarray(two_theta, dtype=np.float64) / 2.0)) / wavelength
    return np.exp(-2.0 * np.asarray(b) * s * s)


def coverage_mask(lo: np.ndarray, hi: np.ndarray, xrd: XRDConfig | None = None,
                  gap: np.ndarray | None = None) -> np.ndarray:
    """[B, n_bins] bool: bins lying wholly inside [lo, hi] (degrees 2θ, [B] each) and, given ``gap`` [B, 2]
    (start, end; NaN = none), not overlapping the gap."""
    edges = (xrd or XRDConfig()).bin_edges()
    left, right = edges[None, :-1], edges[None, 1:]
    mask = (left >= np.asarray(lo)[:, None] - 1e-9) & (right <= np.asarray(hi)[:, None] + 1e-9)
    if gap is not None:
        mask &= ~((right > gap[:, :1]) & (left < gap[:, 1:]))  # NaN compares False: no gap
    return mask


def perturb_measured(
    sticks: Sequence[tuple[np.ndarray, np.ndarray]],
    cfg: MeasurementConfig | None = None,
    rng: np.random.Generator | int | None = None,
    family: str = "train",
    hkl: Sequence[np.ndarray | None] | None = None,
    lattice: Sequence[np.ndarray | None] | None = None,
    impurities: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
    xrd: XRDConfig | None = None,
    heldout: HeldOutConfig | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """B stick patterns as measured: each effect of the module docstring drawn per pattern.

    Args:
        sticks: B pairs (2θ [p] in degrees, area [p]) of the clean simulated patterns.
        cfg: the training family's ranges (and those both families share); ``MeasurementConfig()`` when None.
        rng: a numpy ``Generator`` or a seed.
        family: ``"train"`` or ``"heldout"`` (other functional forms, for evaluation only).
        hkl: B Miller-index arrays [p, 3] matching ``sticks`` (or None each): anisotropic strain and texture.
        lattice: B cells [3, 3] in Å, rows a, b, c (or None each); needed with ``hkl``.
        impurities: B stick pairs (2θ [q], area [q]) of another phase each (or None): the impurity candidates.
        xrd: grid and wavelength; the paper's settings when None.
        heldout: the held-out family's own ranges; ``HeldOutConfig()`` when None.

    Returns:
        patterns [B, n_bins] float32, max 1 per pattern (0 where unmeasured); mask [B, n_bins] bool (True = measured);
        params: the drawn per-pattern values as [B] (or [B, k]) arrays, and ``"family"``.
    """
    if family not in ("train", "heldout"):
        raise ConfigError(f"family must be 'train' or 'heldout', got {family!r}")
    cfg, xcfg, hcfg = cfg or MeasurementConfig(), xrd or XRDConfig(), heldout or HeldOutConfig()
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    train = family == "train"
    n = len(sticks)
    pos, area, owner = _concat(sticks)  # [P] each
    g, recip, has = _reciprocal_vectors(hkl, lattice, np.bincount(owner, minlength=n))  # [P, 3], [B, 3, 3], [B]
    p = _draw_train(rng, n, cfg, xcfg) if train else _draw_heldout(rng, n, cfg, hcfg, xcfg)
    p["strain"] *= has[:, None, None]  # the anisotropic strain needs the metric; without it only the scale acts
    p["metric"] = has

    # lattice mismatch, then texture and intensity errors of the main phase
    pos = _strain_batch(pos, owner, p["scale"], p["strain"], g, has)
    direction = np.einsum("bi,bij->bj", p["texture_hkl"].astype(np.float64), recip)  # [B, 3] 1/Å
    cos_a = _cosines(g, direction[owner])  # [P]
    if train:
        p["texture_r"] = np.where(has, p["texture_r"], 1.0)
        area = area * march_dollase(cos_a, p["texture_r"][owner])
        area = area * np.exp(cfg.intensity_jitter * rng.standard_normal(len(area)))
    else:
        p["harmonic"] = np.where(has[:, None], p["harmonic"], 0.0)
        area = area * harmonic_texture(cos_a, p["harmonic"][owner, 0], p["harmonic"][owner, 1])
        area = area * np.exp(_smooth_log_distortion(pos, owner, p))

    # impurity phase, Debye–Waller, satellites (Kα2, Kβ), then position errors of every stick
    if impurities is None:
        p["impurity_fraction"][:] = 0.0
    else:
        if len(impurities) != n:
            raise PatternError(f"need one impurity stick pair (or None) per pattern ({n}), got {len(impurities)}")
        p["impurity_fraction"] *= np.array([s is not None and len(s[0]) > 0 for s in impurities], dtype=bool)
    pos, area, owner = _add_impurity(pos, area, owner, impurities, p["impurity_fraction"], n)
    area = area * debye_waller(pos, p["b_extra"][owner], xcfg.wavelength)
    parts = [(pos, area, owner), (satellite_positions(pos, CU_KALPHA2 / xcfg.wavelength), area * p["ka2_ratio"][owner],
                                  owner)]
    if not train:
        parts.append((satellite_positions(pos, CU_KBETA / xcfg.wavelength), area * p["kbeta_ratio"][owner], owner))
    pos, area, owner = (np.concatenate(a) for a in zip(*parts))
    if train:
        pos = pos + p["zero_shift"][owner] + displacement_shift(pos, p["displacement_mm"][owner], cfg.radius_mm)
    else:
        pos = pos + p["zero_shift"][owner] + transparency_shift(pos, p["mu_per_cm"][owner], cfg.radius_mm)

    # peak shape and the bin integrals
    width, eta = _train_widths(pos, owner, p, cfg, xcfg) if train else _heldout_widths(pos, owner, p)
    y = _max_normalise(_bin_window(pos, area, width, eta, owner, n, xcfg))  # [B, n_bins]

    # background, counting noise, coverage
    y = y + (_train_background(p, xcfg) if train else _heldout_background(p, xcfg))
    if p["peak_counts"].max() > 0:
        scale = p["peak_counts"][:, None] / np.maximum(y.max(axis=1, keepdims=True), 1e-12)  # counts per unit
        y = np.where(scale > 0, rng.poisson(y * scale) / np.where(scale > 0, scale, 1.0), y)
    if not train:
        y = y + p["read_noise"][:, None] * rng.standard_normal(y.shape)
    mask = coverage_mask(p["window"][:, 0], p["window"][:, 1], xcfg, None if train else p["gap"])
    y = _max_normalise(np.where(mask, np.clip(y, 0.0, None), 0.0)).astype(np.float32)
    p["family"] = family
    return y, mask, p


# Internals of perturb_measured
def _uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return rng.uniform(lo, hi, n) if hi > lo else np.full(n, float(lo))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    """exp(U(log lo, log hi)) [n]; 0 everywhere when either bound is 0 (the effect is off). Draws n either way."""
    u = rng.uniform(0.0, 1.0, n)
    if lo <= 0 or hi <= 0:
        return np.zeros(n)
    return np.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 3, 3] rotation matrices, uniform on SO(3) (normalised Gaussian quaternions)."""
    q = rng.standard_normal((n, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                     2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                     2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=1).reshape(n, 3, 3)


def _directions(rng: np.random.Generator, n: int, index: int) -> np.ndarray:
    """[n, 3] integer reciprocal-lattice directions [uvw]* with components in [-index, index], never [000]."""
    u = rng.integers(-index, index + 1, (n, 3))
    u[~u.any(axis=1)] = (0, 0, 1)
    return u


def _coverage(rng: np.random.Generator, n: int, cfg: MeasurementConfig, xcfg: XRDConfig) -> np.ndarray:
    """[n, 2] measured range (lo, hi) in degrees 2θ: the full scan, a random window, or a low-angle scan."""
    t0, t1 = xcfg.two_theta_min, xcfg.two_theta_max
    mode, u_lo, u_hi, u_low = rng.uniform(0.0, 1.0, (4, n))
    lo = t0 + u_lo * max(min(cfg.window_lo_max, t1) - t0, 0.0)
    hi_from = np.minimum(np.maximum(cfg.window_hi_min, lo + cfg.min_span), t1)
    hi = hi_from + u_hi * (t1 - hi_from)
    low_hi = np.clip(cfg.low_hi_min + u_low * (cfg.low_hi_max - cfg.low_hi_min), t0 + xcfg.step, t1)
    window = mode < cfg.p_window
    low = ~window & (mode < cfg.p_window + cfg.p_low_angle)
    return np.stack([np.where(window, lo, t0), np.where(window, hi, np.where(low, low_hi, t1))], axis=1)


def _draw_train(rng: np.random.Generator, n: int, cfg: MeasurementConfig, xcfg: XRDConfig) -> dict:
    """Every parameter of the training family, [n] (or [n, k]) each; drawn in a fixed order whatever is off."""
    on = rng.uniform(0.0, 1.0, (7, n)) < np.array([cfg.p_aniso, cfg.p_texture, cfg.p_ka2, cfg.p_impurity,
                                                    cfg.p_amorphous, cfg.p_fluorescence, 1.0])[:, None]
    p = {"scale": _truncated_normal(rng, cfg.scale_mean, cfg.scale_sd, cfg.scale_max, n)}
    rot, principal = _random_rotations(rng, n), rng.uniform(-1.0, 1.0, (n, 3)) * cfg.aniso_max * on[0][:, None]
    p["strain"] = np.einsum("bij,bj,bkj->bik", rot, principal, rot)  # R diag(e) Rᵀ, [n, 3, 3]
    p["displacement_mm"] = _uniform(rng, -cfg.displacement_mm, cfg.displacement_mm, n)
    p["zero_shift"] = _uniform(rng, -cfg.zero_shift, cfg.zero_shift, n)
    p["texture_hkl"] = _directions(rng, n, cfg.texture_index)
    p["texture_r"] = np.where(on[1], np.exp(_uniform(rng, math.log(cfg.march_r_min), math.log(cfg.march_r_max), n)),
                              1.0)
    p["b_extra"] = _uniform(rng, cfg.b_min, cfg.b_max, n)
    u, v = _uniform(rng, 0.0, cfg.caglioti_u, n), _uniform(rng, 0.0, cfg.caglioti_v, n)
    w = _uniform(rng, cfg.caglioti_w_min, cfg.caglioti_w_max, n)
    p["caglioti"] = np.stack([u, -2.0 * v * np.sqrt(u * w), w], axis=1)  # [n, 3] U, V, W in deg²
    p["lorentz_inst"] = _uniform(rng, cfg.lorentz_min, cfg.lorentz_max, n)
    size = _log_uniform(rng, cfg.size_min_nm, cfg.size_max_nm, n)
    p["size_nm"] = np.where(size > 0, size, np.inf)
    p["microstrain"] = _uniform(rng, 0.0, cfg.microstrain_max, n)
    p["ka2_ratio"] = np.where(on[2], _uniform(rng, cfg.ka2_ratio_min, cfg.ka2_ratio_max, n), 0.0)
    p["impurity_fraction"] = np.where(on[3], _uniform(rng, cfg.impurity_min, cfg.impurity_max, n), 0.0)
    p["amorphous"] = np.stack([np.where(on[4], _uniform(rng, 0.0, cfg.amorphous_max, n), 0.0),
                               _uniform(rng, cfg.amorphous_center_min, cfg.amorphous_center_max, n),
                               _uniform(rng, cfg.amorphous_fwhm_min, cfg.amorphous_fwhm_max, n)], axis=1)
    p["fluorescence"] = np.where(on[5], _uniform(rng, 0.0, cfg.fluorescence_max, n), 0.0)
    p["air"] = np.stack([_uniform(rng, 0.0, cfg.air_max, n), _uniform(rng, 3.0, 15.0, n)], axis=1)
    p["peak_counts"] = _log_uniform(rng, cfg.counts_min, cfg.counts_max, n)
    p["window"] = _coverage(rng, n, cfg, xcfg)
    return p


def _draw_heldout(rng: np.random.Generator, n: int, cfg: MeasurementConfig, hcfg: HeldOutConfig,
                  xcfg: XRDConfig) -> dict:
    """Every parameter of the held-out family (other functional forms), [n] (or [n, k]) each."""
    on = rng.uniform(0.0, 1.0, (7, n)) < np.array([hcfg.p_uniaxial, cfg.p_texture, cfg.p_ka2, cfg.p_impurity,
                                                    cfg.p_amorphous, hcfg.p_kbeta, hcfg.p_gap])[:, None]
    p = {"scale": _uniform(rng, -cfg.scale_max, cfg.scale_max, n)}
    axis = rng.standard_normal((n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    e = _uniform(rng, -cfg.aniso_max, cfg.aniso_max, n) * on[0]
    p["strain"] = e[:, None, None] * axis[:, :, None] * axis[:, None, :]  # uniaxial e n nᵀ, [n, 3, 3]
    p["mu_per_cm"] = _log_uniform(rng, hcfg.mu_min_cm, hcfg.mu_max_cm, n)
    p["zero_shift"] = _uniform(rng, -cfg.zero_shift, cfg.zero_shift, n)
    p["texture_hkl"] = _directions(rng, n, cfg.texture_index)
    c = rng.uniform(-1.0, 1.0, (n, 2)) * np.array([hcfg.harmonic_c2, hcfg.harmonic_c4])
    p["harmonic"] = c * on[1][:, None]  # [n, 2] c₂, c₄
    p["gp_sigma"] = _uniform(rng, 0.0, hcfg.gp_sigma_max, n)
    p["gp_length"] = _uniform(rng, hcfg.gp_length_min, hcfg.gp_length_max, n)
    p["gp_omega"] = rng.standard_normal((n, hcfg.gp_features)) / p["gp_length"][:, None]  # rad per degree
    p["gp_phase"] = rng.uniform(0.0, 2.0 * math.pi, (n, hcfg.gp_features))
    p["b_extra"] = _uniform(rng, cfg.b_min, cfg.b_max, n)
    p["width"] = np.stack([_uniform(rng, hcfg.width0_min, hcfg.width0_max, n),
                           _uniform(rng, 0.0, hcfg.width1_max, n)], axis=1)  # [n, 2] H₀, H₁ in degrees
    p["eta"] = _uniform(rng, hcfg.eta_min, hcfg.eta_max, n)
    p["ka2_ratio"] = np.where(on[2], _uniform(rng, hcfg.ka2_ratio_min, hcfg.ka2_ratio_max, n), 0.0)
    p["kbeta_ratio"] = np.where(on[5], _uniform(rng, min(0.005, hcfg.kbeta_max), hcfg.kbeta_max, n), 0.0)
    p["impurity_fraction"] = np.where(on[3], _uniform(rng, cfg.impurity_min, cfg.impurity_max, n), 0.0)
    p["chebyshev"] = rng.standard_normal((n, hcfg.chebyshev_degree + 1)) / (1.0 + np.arange(hcfg.chebyshev_degree + 1))
    p["chebyshev_height"] = _uniform(rng, 0.0, hcfg.chebyshev_max, n)
    p["hump"] = np.stack([np.where(on[4], _uniform(rng, 0.0, cfg.amorphous_max, n), 0.0),
                          _uniform(rng, hcfg.hump_center_min, hcfg.hump_center_max, n),
                          _uniform(rng, cfg.amorphous_fwhm_min, cfg.amorphous_fwhm_max, n)], axis=1)
    p["peak_counts"] = _log_uniform(rng, hcfg.counts_min, hcfg.counts_max, n)
    p["read_noise"] = _uniform(rng, 0.0, hcfg.read_noise_max, n)
    p["window"] = _coverage(rng, n, cfg, xcfg)
    width = _uniform(rng, hcfg.gap_min, hcfg.gap_max, n)
    start = p["window"][:, 0] + rng.uniform(0.0, 1.0, n) * np.maximum(np.diff(p["window"], axis=1)[:, 0] - width, 0)
    p["gap"] = np.where(on[6][:, None], np.stack([start, start + width], axis=1), np.nan)  # [n, 2] degrees
    return p


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, bound: float, n: int) -> np.ndarray:
    """[n] draws of N(mean, sd) truncated to [-bound, bound] (inverse CDF: one uniform per draw)."""
    from scipy.special import ndtr, ndtri  # scipy is a dependency of the profile already

    u = rng.uniform(0.0, 1.0, n)
    if sd <= 0 or bound <= 0:
        return np.full(n, float(np.clip(mean, -bound, bound)))
    a, b = ndtr((-bound - mean) / sd), ndtr((bound - mean) / sd)
    return np.clip(mean + sd * ndtri(a + u * (b - a)), -bound, bound)


def _reciprocal_vectors(hkl, lattice, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cartesian reciprocal vectors g = h L⁻ᵀ of every stick [P, 3] (1/Å, 0 where unknown), each pattern's
    reciprocal basis L⁻ᵀ [B, 3, 3] (rows a*, b*, c*; I where unknown), and which patterns have both [B]."""
    n = len(counts)
    recip, has = np.tile(np.eye(3), (n, 1, 1)), np.zeros(n, dtype=bool)
    h = np.zeros((int(counts.sum()), 3))
    if hkl is None and lattice is None:
        return h, recip, has
    if hkl is None or lattice is None:
        raise PatternError(f"hkl and lattice go together, got hkl={'None' if hkl is None else 'given'} and "
                           f"lattice={'None' if lattice is None else 'given'}")
    if len(hkl) != n or len(lattice) != n:
        raise PatternError(f"need one hkl array and one lattice per pattern ({n}), got {len(hkl)} and {len(lattice)}")
    starts = np.concatenate([[0], np.cumsum(counts)])
    cells = {}
    for i, (m, cell) in enumerate(zip(hkl, lattice)):
        if m is None or cell is None:
            continue
        m, cell = np.asarray(m, dtype=np.float64), np.asarray(cell, dtype=np.float64)
        if m.shape != (counts[i], 3) or cell.shape != (3, 3):
            raise PatternError(f"pattern {i}: hkl must be [{counts[i]}, 3] and the lattice [3, 3], "
                               f"got {m.shape} and {cell.shape}")
        h[starts[i]:starts[i + 1]] = m
        cells[i] = cell
    if cells:
        has[list(cells)] = True
        recip[has] = np.linalg.inv(np.stack(list(cells.values()))).transpose(0, 2, 1)
    owner = np.repeat(np.arange(n), counts)
    return np.einsum("pi,pij->pj", h, recip[owner]), recip, has


def _strain_batch(pos: np.ndarray, owner: np.ndarray, scale: np.ndarray, strain: np.ndarray, g: np.ndarray,
                  has: np.ndarray) -> np.ndarray:
    """Positions [P] (degrees) after F = (1 + scale)(I + strain) per pattern; through g where ``has``."""
    inv_f = np.linalg.inv((1.0 + scale)[:, None, None] * (np.eye(3) + strain))  # [B, 3, 3], F symmetric
    norm = np.linalg.norm(g, axis=1)  # [P] 1/d
    use = has[owner] & (norm > 0)
    new = np.linalg.norm(np.einsum("pi,pij->pj", g, inv_f[owner]), axis=1)  # [P] 1/d'
    ratio = np.where(use, new / np.where(use, norm, 1.0), 1.0 / (1.0 + scale[owner]))  # d / d'
    return satellite_positions(pos, ratio)


def _cosines(g: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """|cos| of the angle between each g [P, 3] and its pattern's direction [P, 3]; 1 where g = 0 (no texture)."""
    dot = np.abs(np.einsum("pi,pi->p", g, direction))
    norm = np.linalg.norm(g, axis=1) * np.linalg.norm(direction, axis=1)
    return np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 1.0)


def _smooth_log_distortion(pos: np.ndarray, owner: np.ndarray, p: dict) -> np.ndarray:
    """GP-like log-intensity factor at each stick [P]: σ √(2/K) Σ_k cos(ω_k 2θ + φ_k) (random Fourier features)."""
    k = p["gp_omega"].shape[1]
    feats = np.cos(p["gp_omega"][owner] * np.nan_to_num(pos)[:, None] + p["gp_phase"][owner])  # [P, K]
    return p["gp_sigma"][owner] * math.sqrt(2.0 / k) * feats.sum(axis=1)


def _add_impurity(pos, area, owner, impurities, fraction: np.ndarray, n: int):
    """The main sticks plus each pattern's impurity sticks scaled to ``fraction`` of the strongest main stick."""
    if impurities is None or not fraction.any():
        return pos, area, owner
    chosen = [s if s is not None and f > 0 else (np.zeros(0), np.zeros(0)) for s, f in zip(impurities, fraction)]
    ipos, iarea, iowner = _concat(chosen)
    main_max, imp_max = np.zeros(n), np.zeros(n)
    np.maximum.at(main_max, owner, np.where(np.isfinite(pos), area, 0.0))
    np.maximum.at(imp_max, iowner, iarea)
    gain = fraction * main_max / np.where(imp_max > 0, imp_max, 1.0)  # [B]
    return (np.concatenate([pos, ipos]), np.concatenate([area, iarea * gain[iowner]]),
            np.concatenate([owner, iowner]))


def _train_widths(pos, owner, p, cfg: MeasurementConfig, xcfg: XRDConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-peak FWHM (degrees) and η: Caglioti + microstrain (Gaussian), instrument + Scherrer (Lorentzian), TCH."""
    theta = np.radians(np.nan_to_num(pos, nan=90.0) / 2.0)
    u, v, w = p["caglioti"][owner].T
    strain = np.degrees(4.0 * p["microstrain"][owner] * np.tan(theta))  # Stokes–Wilson, degrees 2θ
    gauss = np.sqrt(caglioti_fwhm(np.degrees(2 * theta), u, v, w) ** 2 + strain**2)
    size = np.degrees(cfg.scherrer_k * xcfg.wavelength / (p["size_nm"][owner] * 10.0 * np.cos(theta)))
    return tch_pseudo_voigt(gauss, p["lorentz_inst"][owner] + size)


def _heldout_widths(pos, owner, p) -> tuple[np.ndarray, np.ndarray]:
    """Per-peak FWHM H₀ + H₁ tan θ (degrees) and the pattern's η."""
    tan = np.tan(np.radians(np.nan_to_num(pos) / 2.0))
    return p["width"][owner, 0] + p["width"][owner, 1] * tan, p["eta"][owner]


def _train_background(p: dict, xcfg: XRDConfig) -> np.ndarray:
    """[B, n_bins]: Gaussian amorphous hump + flat fluorescence + air scatter decaying from low angle."""
    x = xcfg.bin_centers()[None, :]
    height, centre, fwhm = p["amorphous"].T[:, :, None]
    hump = height * np.exp(-0.5 * ((x - centre) / (fwhm * FWHM_TO_SIGMA)) ** 2)
    air = p["air"][:, :1] * np.exp(-(x - xcfg.two_theta_min) / p["air"][:, 1:])
    return hump + p["fluorescence"][:, None] + air


def _heldout_background(p: dict, xcfg: XRDConfig) -> np.ndarray:
    """[B, n_bins]: a non-negative Chebyshev polynomial over the window + a Lorentzian hump."""
    x = xcfg.bin_centers()
    t = 2.0 * (x - xcfg.two_theta_min) / (xcfg.two_theta_max - xcfg.two_theta_min) - 1.0
    poly = p["chebyshev"] @ np.polynomial.chebyshev.chebvander(t, p["chebyshev"].shape[1] - 1).T  # [B, n_bins]
    poly -= poly.min(axis=1, keepdims=True)
    poly *= (p["chebyshev_height"] / np.maximum(poly.max(axis=1), 1e-12))[:, None]
    height, centre, fwhm = p["hump"].T[:, :, None]
    return poly + height / (1.0 + ((x[None, :] - centre) / (fwhm / 2.0)) ** 2)


def _bin_window(pos, area, width, eta, owner, n: int, xcfg: XRDConfig) -> np.ndarray:
    """[n, n_bins] float64: pv_cdf bin integrals of each peak over the bins near it (:data:`WINDOW_HALF`)."""
    out = np.zeros((n, xcfg.n_bins))
    inside = (pos > xcfg.two_theta_min - 2 * WINDOW_HALF) & (pos < xcfg.two_theta_max + 2 * WINDOW_HALF) & (area != 0)
    narrow = width <= WINDOW_NARROW_FWHM
    for half, sel in ((WINDOW_HALF, inside & narrow), (2 * WINDOW_HALF, inside & ~narrow)):  # NaN: in neither
        if sel.any():
            out += _bin_segment(pos[sel], area[sel], width[sel], eta[sel], owner[sel], n, xcfg, half)
    return out


def _bin_segment(pos, area, width, eta, owner, n: int, xcfg: XRDConfig, half: float) -> np.ndarray:
    """[n, n_bins]: bin integrals of each peak over the bins within ``half`` degrees of it (a segment sum)."""
    t0, step, nb = xcfg.two_theta_min, xcfg.step, xcfg.n_bins
    k = int(math.ceil(2.0 * half / step)) + 1  # bins per peak
    first = np.floor((pos - half - t0) / step).astype(np.int64)  # [P] first bin, in [-(k + 2), nb + k]
    x = (t0 + step * first - pos).astype(np.float32)[:, None] + np.float32(step) * np.arange(k + 1, dtype=np.float32)
    cdf = pv_cdf(x, width[:, None], eta[:, None].astype(np.float32))  # [P, k + 1], x in degrees from the centre
    per_peak = np.diff(cdf, axis=1)
    per_peak *= area.astype(np.float32)[:, None]  # [P, k]
    row = nb + 2 * (k + 2)  # each pattern's bins padded by k + 2 spare bins on both sides, dropped afterwards
    col = (owner * row + first + k + 2)[:, None] + np.arange(k)  # [P, k]
    out = np.bincount(col.ravel(), weights=per_peak.ravel(), minlength=n * row)
    return out.reshape(n, row)[:, k + 2:k + 2 + nb]
