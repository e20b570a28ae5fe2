"""The whole-pattern fit at the scan's resolution (:mod:`eacnn.retrieval.scanfit`): the symmetry-allowed cell, the
counting statistics, the parameters it recovers from a scan another generator made, Kα2 only where present, the
preferred orientation, a wrong candidate's χ², and the fit's place in the search and its verdict."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from eacnn.config import XRDConfig
from eacnn.physics.scans import ScanModel, measured_scan, pymatgen_sticks, texture_sticks
from eacnn.physics.wavelengths import CU
from eacnn.physics.xrd import indexed_reflections
from eacnn.retrieval.scanfit import Scan, cell_groups, counting_gain, fit_scan, fit_shortlist, scan_margin

SPECIES = ["Sr", "Ti", "O", "O", "O"]
COORDS = [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]]
#: a mild lab scan: one width law, flat background, no zero offset unless a test sets one
MILD = dataclasses.replace(ScanModel(), caglioti_w=(0.008, 0.008), caglioti_u=(0.01, 0.01), size_fwhm=(0.05, 0.05),
                           zero_offset=(0.0, 0.0), peak_counts=(2e4, 2e4), slope=(0.0, 0.0), air=(0.0, 0.0))


def _metric(lattice: Lattice) -> np.ndarray:
    g = lattice.reciprocal_lattice_crystallographic.metric_tensor
    return np.array([g[0, 0], g[1, 1], g[2, 2], g[0, 1], g[0, 2], g[1, 2]])


def _refl(structure):
    return indexed_reflections([structure], XRDConfig())[0]


@pytest.mark.parametrize("lattice, k", [
    (Lattice.cubic(4.0), 1), (Lattice.tetragonal(4.0, 6.0), 2), (Lattice.hexagonal(3.0, 5.0), 2),
    (Lattice.orthorhombic(3.0, 4.0, 5.0), 3), (Lattice.monoclinic(3.0, 4.0, 5.0, 100.0), 4),
    (Lattice.from_parameters(3.0, 4.0, 5.0, 80.0, 95.0, 100.0), 6), (Lattice.rhombohedral(5.0, 70.0), 2)])
def test_the_cell_keeps_its_symmetry_one_parameter_per_free_component(lattice, k):
    groups = cell_groups(_metric(lattice))
    assert groups.shape == (6, k)
    metric = _metric(lattice)
    moved = metric * (1 + groups @ np.linspace(0.5, 1.5, k) / 100)
    np.testing.assert_array_equal(moved[np.abs(metric) < 1e-9], metric[np.abs(metric) < 1e-9])  # zeros stay
    if k <= 2:  # equal components stay equal (cubic, hexagonal a = b, rhombohedral)
        assert moved[0] == pytest.approx(moved[1])


def test_counting_gain_is_one_for_counts_and_follows_a_rescaling():
    rng = np.random.default_rng(0)
    x = np.linspace(10, 80, 3500)
    clean = 200 + 5000 * np.exp(-0.5 * ((x - 40) / 0.05) ** 2)
    y = rng.poisson(clean).astype(float)
    assert counting_gain(y) == pytest.approx(1.0, rel=0.15)
    assert counting_gain(7.0 * y) == pytest.approx(7.0, rel=0.15)


def test_a_right_candidate_fits_a_scan_another_generator_made_to_its_noise():
    """pymatgen's sticks of a tetragonal cell strained 1 % along a and -1.5 % along c, scanned by
    :func:`measured_scan` with Kα2 and a zero offset: the cell refined back from the search's cell fit (to 0.1 %)."""
    candidate = Structure(Lattice.tetragonal(3.9, 4.1), SPECIES, COORDS)
    sample = Structure(Lattice.tetragonal(3.9 * 1.01, 4.1 * 0.985), SPECIES, COORDS)
    tt, inten, _ = pymatgen_sticks(sample)
    model = dataclasses.replace(MILD, zero_offset=(0.03, 0.03))
    x, y, p = measured_scan(tt, inten, np.random.default_rng(1), model)
    start = _metric(sample.lattice) * np.array([1.001, 1.001, 0.999, 1, 1, 1])
    fit = fit_scan(x, y, _refl(candidate), CU.kalpha1, CU.kalpha2, metric=start)
    assert fit.chi2 < 2.0 and fit.rwp_net < 0.15
    np.testing.assert_allclose(fit.metric, _metric(sample.lattice), rtol=1e-3, atol=1e-6)
    assert fit.zero_shift + fit.displacement * np.cos(np.radians(20)) == pytest.approx(p["zero"], abs=0.01)
    assert fit.kalpha2 == pytest.approx(0.5, abs=0.05)
    assert fit.strain == pytest.approx(0.015, abs=0.002)
    assert fit.unexplained < 0.02
    iso = Structure(Lattice.tetragonal(3.9 * 0.98, 4.1 * 0.98), SPECIES, COORDS)  # a cell 2 % smaller
    x, y, _ = measured_scan(*pymatgen_sticks(iso)[:2], np.random.default_rng(6), MILD)
    fit = fit_scan(x, y, _refl(candidate), CU.kalpha1, CU.kalpha2, strain=-0.0195)  # the search's isotropic fit
    np.testing.assert_allclose(fit.metric, _metric(iso.lattice), rtol=1e-3, atol=1e-6)


def test_a_monochromated_scan_fits_no_kalpha2():
    candidate = Structure(Lattice.cubic(3.905), SPECIES, COORDS)
    tt, inten, _ = pymatgen_sticks(candidate)
    x, y, _ = measured_scan(tt, inten, np.random.default_rng(2), dataclasses.replace(MILD, kalpha2_ratio=0.0))
    fit = fit_scan(x, y, _refl(candidate), CU.kalpha1, CU.kalpha2)
    assert fit.kalpha2 < 0.05 and fit.chi2 < 2.0
    one_line = fit_scan(x, y, _refl(candidate), CU.kalpha1, None)  # told there is one line: as good a fit
    assert one_line.chi2 == pytest.approx(fit.chi2, rel=0.1) and one_line.kalpha2 == 0.0


def test_a_wrong_candidate_cannot_fit_what_the_bins_could_not_tell_apart():
    """Two cubic perovskites with their lines at the same places, SrTiO3 and PbTiO3-like (Pb for Sr): different
    intensities. On the scan the wrong one's χ² is many times the right one's, and the margin says so."""
    right = Structure(Lattice.cubic(3.905), SPECIES, COORDS)
    wrong = Structure(Lattice.cubic(3.905), ["Pb"] + SPECIES[1:], COORDS)
    tt, inten, _ = pymatgen_sticks(right)
    x, y, _ = measured_scan(tt, inten, np.random.default_rng(3), MILD)
    good = fit_scan(x, y, _refl(right), CU.kalpha1, CU.kalpha2)
    bad = fit_scan(x, y, _refl(wrong), CU.kalpha1, CU.kalpha2)
    assert good.chi2 < 2.0 < 5 * good.chi2 < bad.chi2
    assert bad.rwp_net > 2 * good.rwp_net
    assert scan_margin(np.array([good.chi2, bad.chi2]), np.array(["a", "b"])) > 1.0
    assert scan_margin(np.array([bad.chi2, good.chi2]), np.array(["b", "a"])) < -1.0  # another phase fits better
    assert scan_margin(np.array([good.chi2, np.nan]), np.array(["a", "b"])) == np.inf
    assert np.isnan(scan_margin(np.array([np.nan, good.chi2]), np.array(["a", "b"])))


def test_a_preferred_orientation_is_found_and_kept_only_when_it_helps():
    structure = Structure(Lattice.tetragonal(3.9, 6.5), SPECIES, [[0, 0, 0], [.5, .5, .45], [.5, .5, 0],
                                                                  [.5, 0, .5], [0, .5, .5]])
    tt, inten, hkl = pymatgen_sticks(structure)
    rng = np.random.default_rng(4)
    textured = texture_sticks(inten, hkl, structure.lattice.matrix, np.random.default_rng(7), r=0.6)
    x, y, _ = measured_scan(tt, textured, rng, MILD)
    fit = fit_scan(x, y, _refl(structure), CU.kalpha1, CU.kalpha2)
    plain = fit_scan(x, y, _refl(structure), CU.kalpha1, CU.kalpha2, texture=False)
    assert fit.texture_hkl and fit.texture_r != 1.0
    # the generator textures each peak through one hkl of its family; the fit, each reflection: close, not exact
    assert fit.chi2 < 0.2 * plain.chi2 and fit.chi2 < 8
    x, y, _ = measured_scan(tt, inten, rng, MILD)  # untextured: none kept
    assert fit_scan(x, y, _refl(structure), CU.kalpha1, CU.kalpha2).texture_r == 1.0


def test_a_scan_outside_the_covered_range_or_without_reflections_gives_no_fit():
    candidate = Structure(Lattice.cubic(3.905), SPECIES, COORDS)
    x = np.linspace(82, 90, 400)
    assert fit_scan(x, np.ones_like(x) + np.arange(400) % 3, _refl(candidate)) is None
    assert fit_scan(np.linspace(10, 80, 3500), np.ones(3500), None) is None


def test_the_shortlist_is_fitted_in_order_and_the_columns_say_where_not():
    import pandas as pd

    right = Structure(Lattice.cubic(3.905), SPECIES, COORDS)
    wrong = Structure(Lattice.cubic(3.905), ["Pb"] + SPECIES[1:], COORDS)
    refl = {0: _refl(wrong), 1: _refl(right), 2: _refl(right)}
    tt, inten, _ = pymatgen_sticks(right)
    x, y, _ = measured_scan(tt, inten, np.random.default_rng(5), MILD)
    hits = pd.DataFrame({"row": [0, 1, 2], "strain": [0.0, 0.0, 0.0], "zero_shift": [0.0, 0.0, 0.0]})
    out, fits = fit_shortlist(hits, Scan(x, y, CU.kalpha1, CU.kalpha2), refl.get, 2)
    assert set(fits) == {0, 1} and np.isnan(out["scan_chi2"].iloc[2])
    assert out["scan_chi2"].iloc[1] < out["scan_chi2"].iloc[0]


def test_the_search_uses_the_scan_fit_settings_chosen_on_validation():
    """SearchConfig's scan_* fields are the row ``scripts/select_scanfit.py --choose`` marked chosen."""
    import pandas as pd

    from eacnn.config import SearchConfig
    from eacnn.paths import DATA_DIR

    table = pd.read_csv(DATA_DIR / "scan_fit.csv")
    chosen = table[table["chosen"]].iloc[0]
    s = SearchConfig()
    assert (s.scan_fits, s.scan_weight, s.scan_statistic, s.scan_combine) == (
        int(chosen["fits"]), float(chosen["weight"]), chosen["statistic"], chosen["combine"])
    assert s.scan_limit == pytest.approx(chosen["limit"], abs=5e-4) and s.scan_margin == chosen["margin_min"]
    assert chosen["precision"] >= s.target_precision  # the rule keeps the search's precision on validation


def test_two_phases_refined_together_share_the_intensity_as_they_were_mixed():
    """A 70 : 30 (by summed stick intensity) scan of two cubic phases made by another generator: the joint fit's
    curves share the intensity within 2 points, to within the noise."""
    from eacnn.retrieval.scanmix import fit_phases_scan

    a = Structure(Lattice.cubic(3.905), SPECIES, COORDS)
    b = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
                  [[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5], [.5, .5, .5], [0, 0, .5], [0, .5, 0], [.5, 0, 0]])
    (ta, ia, _), (tb, ib, _) = pymatgen_sticks(a), pymatgen_sticks(b)
    x, y, _ = measured_scan(np.r_[ta, tb], np.r_[0.7 * ia, 0.3 * ib], np.random.default_rng(0), MILD)
    fit = fit_phases_scan(x, y, [_refl(a), _refl(b)], CU.kalpha1, CU.kalpha2, strains=[0.002, -0.003],
                          keep_curves=True)
    share = fit.curves.sum(axis=1) / fit.curves.sum()
    assert share[0] == pytest.approx((0.7 * ia).sum() / ((0.7 * ia).sum() + (0.3 * ib).sum()), abs=0.02)
    assert fit.chi2 < 2.0 and np.all(fit.scale_errors > 0) and np.all(fit.scale_errors < 0.05 * fit.scales)
    np.testing.assert_allclose(fit.metrics[1][:3], 1 / 5.64**2, rtol=2e-3)


def test_a_diverged_joint_fit_reports_unknown_errors_without_calling_lapack(monkeypatch):
    """A fit whose Jacobian overflowed (a phase's parameters ran away) gives NaN scale errors without handing the
    infinite normal matrix to LAPACK: its SVD then prints "On entry to DLASCL ... illegal value" on the user's
    terminal, or, with one infinite entry, does not return (seen in a probe of validation mixtures)."""
    from eacnn.retrieval import scanmix

    a = Structure(Lattice.cubic(3.905), SPECIES, COORDS)
    ta, ia, _ = pymatgen_sticks(a)
    x, y, _ = measured_scan(ta, ia, np.random.default_rng(0), MILD)
    real_jacobian, real_pinv = scanmix._Phases.jacobian, np.linalg.pinv

    def runaway(self, p):  # the first scale's column overflows in JᵀJ
        j = real_jacobian(self, p)
        j[:, 0] *= 1e200
        return j

    def finite_only(m, *args, **kwargs):
        assert np.all(np.isfinite(m)), "LAPACK handed a non-finite matrix"
        return real_pinv(m, *args, **kwargs)

    monkeypatch.setattr(scanmix._Phases, "jacobian", runaway)
    monkeypatch.setattr("eacnn.retrieval.lsq.levenberg_marquardt", lambda f, j, p, *a, **k: (p, f(p)))
    monkeypatch.setattr(np.linalg, "pinv", finite_only)
    fit = scanmix.fit_phases_scan(x, y, [_refl(a)], CU.kalpha1, CU.kalpha2)
    assert np.all(np.isnan(fit.scale_errors)) and np.all(np.isnan(fit.covariance))


def test_weight_fraction_errors_follow_the_scales_covariance():
    from eacnn.retrieval.scanmix import fraction_errors

    s, c = np.array([2.0, 1.0, 0.5]), np.array([1.0, 3.0, 2.0])
    cov = np.diag([0.01, 0.04, 0.0025])
    w, err = fraction_errors(s, cov, c)
    assert w.sum() == pytest.approx(1.0) and w[1] == pytest.approx(3.0 / 6.0)
    rng = np.random.default_rng(0)  # the first-order errors agree with sampling the scales
    draws = rng.multivariate_normal(s, cov, 20000)
    sampled = (draws * c) / (draws * c).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(err, sampled.std(axis=0), rtol=0.1)
    assert np.isnan(fraction_errors(s, cov, np.array([1.0, np.nan, 1.0]))[0]).all()
