"""eacnn.physics.perturb: the model of real measurements moves, weights and shapes peaks as the physics says.

Each effect is checked on its own (every other effect switched off through ``MeasurementConfig.off()``), against
Bragg's law, the strained metric, March–Dollase, the displacement and transparency laws, the Kα2 wavelength; then
the whole model for coverage, reproducibility, the held-out family, finiteness and speed.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from eacnn.config import AugmentConfig, XRDConfig
from eacnn.errors import ConfigError, PatternError
from eacnn.physics import measurement, perturb
from eacnn.physics.measurement import (CU_KALPHA2, HeldOutConfig, MeasurementConfig, caglioti_fwhm, coverage_mask,
                                       debye_waller, displacement_shift, harmonic_texture, march_dollase,
                                       perturb_measured, satellite_positions, strain_peaks, tch_pseudo_voigt,
                                       transparency_shift)
from eacnn.physics.perturb import augment_patterns, bragg_shift, profile_patterns

LAMBDA = 1.5406  # Å, Cu Kα1
XRD = XRDConfig()
CENTERS = XRD.bin_centers()
BROAD = dict(caglioti_w_min=1.0, caglioti_w_max=1.0)  # a 1° Gaussian: bin centroids find a peak to ~1e-4°


def only(**changes) -> MeasurementConfig:
    """Every effect off except ``changes``."""
    return dataclasses.replace(MeasurementConfig.off(), **changes)


def bragg(d: np.ndarray, wavelength: float = LAMBDA) -> np.ndarray:
    """2θ (degrees) of d-spacings d (Å)."""
    return np.degrees(2 * np.arcsin(wavelength / (2 * np.asarray(d))))


def centroid(y: np.ndarray, near: float, half: float = 4.0) -> float:
    """Centre of mass (degrees 2θ) of the binned pattern within ``half`` of ``near``."""
    sel = np.abs(CENTERS - near) < half
    return float((y[sel] * CENTERS[sel]).sum() / y[sel].sum())


def random_batch(n: int, seed: int = 0, p: int = 90):
    """n random stick patterns with hkl, orthorhombic cells and impurity sticks (a roll of the batch)."""
    rng = np.random.default_rng(seed)
    sticks = [(np.sort(rng.uniform(8, 82, p)), rng.random(p)) for _ in range(n)]
    hkl = [rng.integers(-4, 5, (p, 3)) for _ in range(n)]
    cells = [np.diag(rng.uniform(3, 10, 3)) for _ in range(n)]
    return sticks, hkl, cells, sticks[1:] + sticks[:1]


# ---------------------------------------------------------------------------------------------------------------
# Lattice mismatch
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [-0.03, -0.01, 0.02])
def test_isotropic_scale_follows_bragg(eps):
    d = np.array([4.0, 2.5, 1.3])  # Å
    moved = bragg(d * (1 + eps))
    np.testing.assert_allclose(strain_peaks(bragg(d), eps), moved, atol=1e-10)
    np.testing.assert_allclose(bragg_shift(bragg(d), eps, 0.0, LAMBDA), moved, atol=1e-10)
    # through the metric of a hexagonal cell, for any hkl: the same
    cell = np.array([[3.0, 0, 0], [-1.5, 1.5 * np.sqrt(3), 0], [0, 0, 5.0]])
    hkl = np.array([[1, 0, 0], [1, 1, 2], [2, -1, 3]])
    tt = bragg(1 / np.linalg.norm(hkl @ np.linalg.inv(cell).T, axis=1))
    np.testing.assert_allclose(strain_peaks(tt, eps, hkl=hkl, lattice=cell), bragg_shift(tt, eps, 0.0, LAMBDA),
                               atol=1e-10)
    # and the whole model puts the binned peak there
    y, _, params = perturb_measured([(np.array([40.0]), np.array([1.0]))],
                                    only(scale_mean=eps, scale_max=0.03, **BROAD), rng=0)
    assert params["scale"][0] == pytest.approx(eps)
    assert centroid(y[0], 40.0) == pytest.approx(float(bragg_shift(40.0, eps, 0.0, LAMBDA)), abs=2e-3)


def test_anisotropic_strain_splits_cubic_h00_and_isotropic_keeps_it():
    a = 4.0
    hkl = np.eye(3)  # (100), (010), (001) as three sticks
    tt = bragg(np.full(3, a))
    e = np.diag([0.01, 0.0, -0.01])
    np.testing.assert_allclose(strain_peaks(tt, 0.0, e, hkl, a * np.eye(3)), bragg(a * (1 + np.diag(e))), atol=1e-10)
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    e_rot = q @ np.diag([0.015, -0.01, 0.004]) @ q.T  # principal axes off the cube axes
    split = strain_peaks(tt, 0.0, e_rot, hkl, a * np.eye(3))
    assert np.ptp(split) > 0.02  # degrees: the family splits
    exact = bragg(a / np.linalg.norm(np.linalg.inv(np.eye(3) + e_rot), axis=0))  # d' = 1 / |g F⁻¹|, g = e_i / a
    np.testing.assert_allclose(split, exact, atol=1e-10)
    np.testing.assert_allclose(split, bragg(a * (1 + np.diag(e_rot))), atol=1e-2)  # first order: d' = d (1 + n·E n)
    together = strain_peaks(tt, 0.0, 0.01 * np.eye(3), hkl, a * np.eye(3))
    assert np.ptp(together) < 1e-10
    np.testing.assert_allclose(together, bragg(np.full(3, a * 1.01)), atol=1e-10)
    # without hkl the tensor is ignored: isotropic fallback
    np.testing.assert_allclose(strain_peaks(tt, 0.01, e_rot), bragg(np.full(3, a * 1.01)), atol=1e-10)


def test_model_applies_its_drawn_strain_through_the_metric():
    a, hkl = 4.0, np.eye(3)
    sticks = [(bragg(np.full(3, a)), np.ones(3))] * 8
    cfg = only(scale_mean=0.0, scale_sd=0.0, aniso_max=0.015, p_aniso=1.0, **BROAD)
    y, _, params = perturb_measured(sticks, cfg, rng=1, hkl=[hkl] * 8, lattice=[a * np.eye(3)] * 8)
    assert params["metric"].all() and np.abs(params["strain"]).max() > 0
    for i in range(8):
        expected = strain_peaks(sticks[i][0], 0.0, params["strain"][i], hkl, a * np.eye(3))
        assert centroid(y[i], 22.0) == pytest.approx(expected.mean(), abs=3e-3)
    # the same draws without hkl: no anisotropic strain, every pattern identical
    y_iso, _, p_iso = perturb_measured(sticks, cfg, rng=1)
    assert not p_iso["metric"].any() and not p_iso["strain"].any()
    np.testing.assert_array_equal(y_iso, y_iso[:1].repeat(8, axis=0))


def test_training_mismatch_is_asymmetric_and_bounded():
    p = perturb_measured([(np.array([30.0]), np.array([1.0]))] * 4000, rng=0)[2]
    assert np.abs(p["scale"]).max() <= 0.03
    assert 0.55 < (p["scale"] < 0).mean() < 0.75  # measured smaller than PBE more often
    assert (p["scale"] > 0.02).mean() > 0.02  # yet +2 % is still seen


# ---------------------------------------------------------------------------------------------------------------
# Positions: displacement, transparency, zero offset, Kα2
# ---------------------------------------------------------------------------------------------------------------
def test_displacement_shift_follows_cos_theta():
    tt = np.array([15.0, 40.0, 75.0])
    shift = displacement_shift(tt, 0.2, 240.0)
    np.testing.assert_allclose(shift / np.cos(np.radians(tt / 2)), np.degrees(-2 * 0.2 / 240.0), rtol=1e-12)
    cfg = only(displacement_mm=0.2, **BROAD)
    sticks = [(np.array([20.0]), np.array([1.0])), (np.array([70.0]), np.array([1.0]))]
    y, _, params = perturb_measured(sticks, cfg, rng=5)
    s = params["displacement_mm"]
    for i, t in enumerate((20.0, 70.0)):
        assert centroid(y[i], t) - t == pytest.approx(float(displacement_shift(t, s[i], 240.0)), abs=2e-3)


def test_zero_offset_is_constant_and_transparency_follows_sin_2theta():
    tt = np.array([15.0, 40.0, 75.0])
    shift = transparency_shift(tt, 50.0, 240.0)
    np.testing.assert_allclose(shift / np.sin(np.radians(tt)), np.degrees(-1 / (2 * 5.0 * 240.0)), rtol=1e-12)
    y, _, params = perturb_measured([(np.array([30.0]), np.array([1.0]))], only(zero_shift=0.05, **BROAD), rng=2)
    assert centroid(y[0], 30.0) - 30.0 == pytest.approx(params["zero_shift"][0], abs=2e-3)


def test_kalpha2_sits_at_its_wavelength():
    tt = np.array([20.0, 50.0, 78.0])
    d = LAMBDA / (2 * np.sin(np.radians(tt / 2)))
    np.testing.assert_allclose(satellite_positions(tt, CU_KALPHA2 / LAMBDA), bragg(d, CU_KALPHA2), atol=1e-10)
    # the binned doublet's centroid is the 1 : 0.5 weighted mean of the two lines
    cfg = only(p_ka2=1.0, ka2_ratio_min=0.5, ka2_ratio_max=0.5, **BROAD)
    y, _, params = perturb_measured([(np.array([75.0]), np.array([1.0]))], cfg, rng=0)
    assert params["ka2_ratio"][0] == 0.5
    ka2 = float(bragg(LAMBDA / (2 * np.sin(np.radians(37.5))), CU_KALPHA2))
    assert ka2 - 75.0 == pytest.approx(0.21, abs=0.01)  # a well-known 0.2° split at high angle
    assert centroid(y[0], 75.0) == pytest.approx((75.0 + 0.5 * ka2) / 1.5, abs=2e-3)


# ---------------------------------------------------------------------------------------------------------------
# Intensities: texture, Debye–Waller, impurity
# ---------------------------------------------------------------------------------------------------------------
def test_march_dollase_identity_and_platelets():
    cos = np.linspace(0, 1, 11)
    np.testing.assert_allclose(march_dollase(cos, 1.0), 1.0, rtol=1e-12)
    f = march_dollase(cos, 0.7)
    assert f[-1] == pytest.approx(0.7**-3) and f[0] == pytest.approx(0.7**1.5)
    assert np.all(np.diff(f) > 0)  # platelets: the closer to the direction, the stronger
    assert np.all(np.diff(march_dollase(cos, 1.3)) < 0)  # needles: the opposite
    np.testing.assert_allclose(harmonic_texture(cos, 0.0, 0.0), 1.0)


def _three_axes():
    """An orthorhombic cell whose (100), (010), (001) lie apart in 2θ, one stick each of area 1."""
    cell = np.diag([3.0, 4.0, 5.0])
    hkl = np.eye(3)
    return cell, hkl, [(bragg(np.array([3.0, 4.0, 5.0])), np.ones(3))]


def _areas(y: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.array([y[np.abs(CENTERS - t) < 1.5].sum() for t in positions])


def test_march_dollase_in_the_model_strengthens_reflections_along_the_direction():
    cell, hkl, sticks = _three_axes()
    clean = perturb_measured(sticks, only(), rng=0, hkl=[hkl], lattice=[cell])[0]
    same = perturb_measured(sticks, only(p_texture=1.0, march_r_min=1.0, march_r_max=1.0), rng=0, hkl=[hkl],
                            lattice=[cell])[0]
    np.testing.assert_allclose(same, clean, atol=1e-7)  # r = 1 changes nothing
    for seed in range(6):
        cfg = only(p_texture=1.0, march_r_min=0.6, march_r_max=0.6, texture_index=1)
        y, _, p = perturb_measured(sticks, cfg, rng=seed, hkl=[hkl], lattice=[cell])
        n = p["texture_hkl"][0] @ np.linalg.inv(cell).T
        cos = np.abs(hkl @ np.linalg.inv(cell).T @ n) / (np.linalg.norm(n) / np.array([3.0, 4.0, 5.0]))
        got = _areas(y[0], sticks[0][0])
        np.testing.assert_allclose(got / got.max(), march_dollase(cos, 0.6) / march_dollase(cos, 0.6).max(),
                                   rtol=2e-3)
        assert got[np.argmax(cos)] == got.max()  # the reflection most parallel to the direction is strongest


def test_debye_waller_and_impurity_weights():
    tt = np.array([20.0, 60.0])
    s2 = (np.sin(np.radians(tt / 2)) / LAMBDA) ** 2
    np.testing.assert_allclose(debye_waller(tt, 1.0, LAMBDA), np.exp(-2 * s2))
    cfg = only(p_impurity=1.0, impurity_min=0.1, impurity_max=0.1)
    main, other = (np.array([30.0]), np.array([2.0])), (np.array([55.0, 65.0]), np.array([5.0, 1.0]))
    y, _, p = perturb_measured([main], cfg, rng=0, impurities=[other])
    assert p["impurity_fraction"][0] == pytest.approx(0.1)
    assert _areas(y[0], [55.0])[0] / _areas(y[0], [30.0])[0] == pytest.approx(0.1, rel=1e-3)
    assert perturb_measured([main], cfg, rng=0, impurities=[None])[2]["impurity_fraction"][0] == 0


# ---------------------------------------------------------------------------------------------------------------
# Peak shape
# ---------------------------------------------------------------------------------------------------------------
def test_widths_caglioti_tch_and_size_broadening():
    np.testing.assert_allclose(caglioti_fwhm([20.0, 70.0], 0.0, 0.0, 0.01), 0.1)
    assert caglioti_fwhm(70.0, 0.02, 0.0, 0.01) > caglioti_fwhm(20.0, 0.02, 0.0, 0.01)
    f, eta = tch_pseudo_voigt(np.array([0.1, 0.0, 0.1]), np.array([0.0, 0.1, 0.1]))
    np.testing.assert_allclose(f[:2], 0.1, rtol=1e-9)
    np.testing.assert_allclose(eta[:2], [0.0, 1.0], atol=1e-4)
    assert 0.1 < f[2] < 0.2 and 0 < eta[2] < 1
    # small crystallites broaden the high-angle peak more (Scherrer: 1 / cos θ)
    cfg = only(size_min_nm=10.0, size_max_nm=10.0)
    y = perturb_measured([(np.array([20.0, 75.0]), np.array([1.0, 1.0]))], cfg, rng=0)[0][0]
    y0 = perturb_measured([(np.array([20.0, 75.0]), np.array([1.0, 1.0]))], only(), rng=0)[0][0]
    peak = lambda v, t: v[np.abs(CENTERS - t) < 0.5].max() / _areas(v, [t])[0]  # noqa: E731 (height / area)
    assert peak(y, 75.0) < peak(y, 20.0) < peak(y0, 20.0)


def test_window_integration_matches_the_full_bin_integral():
    """The windowed bin integrals equal profile.bin_peaks (every bin) up to the far Lorentzian tails."""
    rng = np.random.default_rng(0)
    sticks = [(np.sort(rng.uniform(5, 85, 40)), rng.random(40)) for _ in range(6)]
    gauss = perturb_measured(sticks, only(), rng=0)[0]
    ref = profile_patterns(sticks, xrd=XRDConfig(eta=0.0))
    np.testing.assert_allclose(gauss, ref / ref.max(axis=1, keepdims=True), atol=1e-5)
    pos, area, owner = perturb._concat(sticks)
    width, eta = np.full(len(pos), 0.3), np.full(len(pos), 0.5)
    win = measurement._bin_window(pos, area, width, eta, owner, 6, XRD)
    full = profile_patterns(sticks, [0.3] * 6, XRD).astype(np.float64)
    assert np.abs(win - full).max() < 3e-3 * full.max()


# ---------------------------------------------------------------------------------------------------------------
# Coverage, reproducibility, the held-out family, the whole model
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["train", "heldout"])
def test_coverage_mask_zeroes_unmeasured_bins(family):
    sticks, hkl, cells, imp = random_batch(64)
    cfg = dataclasses.replace(MeasurementConfig(), p_window=0.5, p_low_angle=0.5)
    y, mask, p = perturb_measured(sticks, cfg, rng=3, family=family, hkl=hkl, lattice=cells, impurities=imp)
    assert mask.dtype == bool and mask.shape == y.shape
    assert not y[~mask].any()
    assert (~mask).any(axis=1).all()  # every pattern is partial
    np.testing.assert_array_equal(mask.any(axis=1), True)
    np.testing.assert_array_equal(y.max(axis=1), 1.0)
    lo, hi = p["window"].T
    assert (hi - lo >= cfg.min_span / 2).all()
    low = lo == XRD.two_theta_min
    assert low.any() and (hi[low] <= cfg.low_hi_max).all()
    edges = XRD.bin_edges()
    for i in range(len(y)):
        assert edges[:-1][mask[i]].min() >= lo[i] - 1e-9 and edges[1:][mask[i]].max() <= hi[i] + 1e-9
    if family == "train":
        np.testing.assert_array_equal(mask, coverage_mask(lo, hi, XRD))


def test_full_coverage_without_windows():
    mask = coverage_mask(np.array([10.0]), np.array([80.0]), XRD)
    assert mask.all()
    gap = coverage_mask(np.array([10.0]), np.array([80.0]), XRD, np.array([[30.2, 31.0]]))
    assert (~gap).sum() == 2 and not gap[0, 40] and not gap[0, 41]


@pytest.mark.parametrize("family", ["train", "heldout"])
def test_seeded_draws_are_reproducible(family):
    sticks, hkl, cells, imp = random_batch(16)
    a = perturb_measured(sticks, rng=7, family=family, hkl=hkl, lattice=cells, impurities=imp)
    b = perturb_measured(sticks, rng=np.random.default_rng(7), family=family, hkl=hkl, lattice=cells, impurities=imp)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2].keys() == b[2].keys()
    for key in a[2]:
        np.testing.assert_array_equal(a[2][key], b[2][key])
    c = perturb_measured(sticks, rng=8, family=family, hkl=hkl, lattice=cells, impurities=imp)
    assert not np.array_equal(a[0], c[0])


def test_heldout_family_differs_from_training():
    sticks, hkl, cells, imp = random_batch(256)
    train = perturb_measured(sticks, rng=0, hkl=hkl, lattice=cells, impurities=imp)
    held = perturb_measured(sticks, rng=0, family="heldout", hkl=hkl, lattice=cells, impurities=imp)
    assert np.abs(train[0] - held[0]).mean() > 0.01
    pt, ph = train[2], held[2]
    assert pt["family"] == "train" and ph["family"] == "heldout"
    # other functional forms: transparency instead of displacement, harmonics instead of March–Dollase, ...
    assert {"displacement_mm", "texture_r", "caglioti"} <= pt.keys() and not pt.keys() & {"mu_per_cm", "harmonic"}
    assert {"mu_per_cm", "harmonic", "gp_sigma", "kbeta_ratio", "chebyshev", "gap"} <= ph.keys()
    assert not ph.keys() & {"displacement_mm", "texture_r", "caglioti"}
    # ranges that training never reaches: the Kα2 ratio, and counts below 10³
    ka2_t, ka2_h = pt["ka2_ratio"][pt["ka2_ratio"] > 0], ph["ka2_ratio"][ph["ka2_ratio"] > 0]
    assert ka2_t.min() >= 0.48 and ka2_h.max() <= 0.45
    assert pt["peak_counts"].min() >= 1e3 and (ph["peak_counts"] < 1e3).any()
    # the held-out lattice mismatch is symmetric, the training one is not
    scale = perturb_measured([(np.array([30.0]), np.array([1.0]))] * 4000, rng=0, family="heldout")[2]["scale"]
    assert abs(np.mean(scale < 0) - 0.5) < 0.03 and np.abs(scale).max() <= 0.03


@pytest.mark.parametrize("family", ["train", "heldout"])
def test_finite_and_max_normalised_under_every_effect(family):
    sticks, hkl, cells, imp = random_batch(48, seed=1)
    sticks[3] = (np.zeros(0), np.zeros(0))  # no reflection at all
    hkl[3], hkl[5], cells[7] = np.zeros((0, 3)), None, None
    strong = dataclasses.replace(MeasurementConfig(), p_aniso=1.0, p_texture=1.0, p_ka2=1.0, p_impurity=1.0,
                                 p_amorphous=1.0, p_fluorescence=1.0, size_min_nm=5.0, size_max_nm=5.0)
    y, mask, p = perturb_measured(sticks, strong, rng=0, family=family, hkl=hkl, lattice=cells, impurities=imp)
    assert y.dtype == np.float32 and y.shape == (48, XRD.n_bins)
    assert np.isfinite(y).all() and y.min() >= 0
    np.testing.assert_allclose(y.max(axis=1), 1.0, rtol=1e-6)
    assert list(p["metric"][[3, 5, 7]]) == [True, False, False] and p["metric"].sum() == 46


def test_errors_name_the_bad_value():
    with pytest.raises(ConfigError, match="'both'"):
        perturb_measured([(np.array([30.0]), np.array([1.0]))], family="both")
    with pytest.raises(ConfigError, match="p_ka2"):
        MeasurementConfig(p_ka2=1.5)
    with pytest.raises(ConfigError, match="mu_min_cm"):
        HeldOutConfig(mu_min_cm=0.0)
    with pytest.raises(PatternError, match=r"\[1, 3\]"):
        perturb_measured([(np.array([30.0]), np.array([1.0]))], hkl=[np.eye(3)], lattice=[np.eye(3)])
    with pytest.raises(PatternError, match="lattice=None"):
        perturb_measured([(np.array([30.0]), np.array([1.0]))], hkl=[np.ones((1, 3))])
    with pytest.raises(PatternError, match="per pattern"):
        perturb_measured([(np.array([30.0]), np.array([1.0]))], impurities=[None, None])


def test_augmentation_of_today_still_reproduces_the_clean_vector():
    sticks = [(np.array([30.0, 45.0]), np.array([1.0, 0.5]))]
    clean = profile_patterns(sticks)
    np.testing.assert_allclose(augment_patterns(sticks, AugmentConfig.level(0)), clean / clean.max(), atol=1e-6)


def test_speed_of_256_patterns():
    sticks, hkl, cells, imp = random_batch(256)
    perturb_measured(sticks[:8], rng=0, hkl=hkl[:8], lattice=cells[:8], impurities=imp[:8])  # warm up
    best = {}
    for family in ("train", "heldout"):
        times = []
        for seed in range(3):
            start = time.perf_counter()
            perturb_measured(sticks, rng=seed, family=family, hkl=hkl, lattice=cells, impurities=imp)
            times.append(time.perf_counter() - start)
        best[family] = min(times)
    print(f"perturb_measured, 256 patterns x 90 sticks: {1e3 * best['train']:.0f} ms (train), "
          f"{1e3 * best['heldout']:.0f} ms (heldout)")
    assert max(best.values()) < 1.0  # seconds; ~0.05-0.1 s on 2 cores (loose: shared CI machines)
