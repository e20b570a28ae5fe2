"""eacnn.xrd: physics against pymatgen, symmetry invariances, the 140-bin grid, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.diffraction.xrd import XRDCalculator
from pymatgen.core import DummySpecies, Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from eacnn.config import XRDConfig
from eacnn.errors import NoReflectionsError, StructureError, UnknownElementError
from eacnn.structures import load_embedded, row_to_structure
from eacnn.xrd import XRDSimulator, bin_profile, scattering_factor, simulate_batch, simulate_vectors

CU_KA1 = 1.5406  # Å
WINDOW = (10.0, 80.0)  # degrees 2θ
TWO_THETA_TOL = 0.01  # degrees: allowed peak-position difference to pymatgen
INTENSITY_TOL = 1.0  # allowed intensity difference, in % of the strongest peak
COMPARE_ABOVE = 1.0  # only peaks stronger than this (% of the strongest) are compared
CLUSTER_GAP = 0.005  # degrees: peaks closer than this (either code) are one observable peak
N_REFERENCE = 240  # MP-20 structures compared to pymatgen

# spglib (through SpacegroupAnalyzer) warns about its own error-handling switch; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:Set OLD_ERROR_HANDLING:DeprecationWarning")


# ---------------------------------------------------------------------------------------------------------------
# Structures
# ---------------------------------------------------------------------------------------------------------------
# Conventional cubic cells, written out (pymatgen's Structure.from_spacegroup takes ~1 s per call)
CENTRINGS = {
    "Pm-3m": [[0, 0, 0]],
    "Im-3m": [[0, 0, 0], [0.5, 0.5, 0.5]],
    "Fm-3m": [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]],
}


def _cubic(species, group: str, a: float, basis=((0, 0, 0),)) -> Structure:
    """Cubic cell of ``group``'s centring with one species per basis position (default: one atom at the origin)."""
    species = [species] if isinstance(species, (str, dict)) else species
    sites = [(sp, np.add(t, x) % 1) for sp, x in zip(species, basis) for t in CENTRINGS[group]]
    return Structure(Lattice.cubic(a), [sp for sp, _ in sites], [x for _, x in sites])


@pytest.fixture(scope="module")
def table():
    return load_embedded()


@pytest.fixture(scope="module")
def reference_rows(table):
    """A deterministic spread of MP-20 rows: the first row of every space group, then evenly spaced rows."""
    first = table.drop_duplicates("spacegroup_number").index.tolist()
    seen = set(first)
    spread = [i for i in np.linspace(0, len(table) - 1, 3 * N_REFERENCE).astype(int) if i not in seen]
    return table.loc[(first + spread)[:N_REFERENCE]].reset_index(drop=True)


@pytest.fixture(scope="module")
def few(table):
    """A handful of real structures of different crystal systems, including a monoclinic and a triclinic one."""
    rows = [table[(table.crystal_system == system) & (table.n_sites <= 12)].iloc[0] for system in
            ("monoclinic", "triclinic", "hexagonal", "orthorhombic", "cubic")]
    return {row["crystal_system"]: row_to_structure(row) for row in rows}


@pytest.fixture(scope="module")
def pymatgen_reference(reference_rows):
    """pymatgen's sticks (B = 0, Cu Kα1, 10–80°) for the reference rows: computed once, it is slow (~100 patterns/s)."""
    calc = XRDCalculator(wavelength=CU_KA1)
    structures = [row_to_structure(r) for r in reference_rows.to_dict("records")]
    return structures, [calc.get_pattern(s, scaled=False, two_theta_range=WINDOW) for s in structures]


# ---------------------------------------------------------------------------------------------------------------
# Comparison with pymatgen
# ---------------------------------------------------------------------------------------------------------------
def _clusters(two_theta: np.ndarray, gap: float) -> np.ndarray:
    """Label of each peak after single-linkage grouping of peaks closer than ``gap`` degrees."""
    order = np.argsort(two_theta)
    label = np.empty(len(two_theta), dtype=int)
    label[order] = np.cumsum(np.concatenate([[True], np.diff(two_theta[order]) > gap])) - 1
    return label


def compare_to_pymatgen(ours, ref) -> tuple[float, float]:
    """Largest peak-position difference (degrees) and intensity difference (% of the strongest).

    pymatgen merges reflections by rounding 2θ to multiples of its TWO_THETA_TOL (1e-5°). The MP-20 cells are
    rounded to 1e-6 Å, which splits symmetry-equivalent reflections by up to ~1e-5°, so one observable peak can
    straddle a rounding boundary and come out as two entries, each with part of the intensity (and pymatgen then
    scales to the larger part). Both codes' peaks are therefore grouped into observable peaks (closer than
    CLUSTER_GAP), whose summed intensities are compared after scaling each side to a strongest group of 100.
    pymatgen drops peaks below SCALED_INTENSITY_TOL (0.001 %) and we below 0.1 %: both far below the tolerance.
    Positions: every pymatgen peak above 1 % has one of ours within TWO_THETA_TOL, and vice versa.
    """
    ref_tt, ref_i = np.asarray(ref.x, dtype=float), np.asarray(ref.y, dtype=float)
    tt = np.concatenate([ref_tt, ours.two_theta])
    label = _clusters(tt, CLUSTER_GAP)
    n = label.max() + 1
    ref_sum = np.bincount(label[: len(ref_tt)], ref_i, n)
    our_sum = np.bincount(label[len(ref_tt) :], ours.intensity, n)
    ref_sum, our_sum = 100 * ref_sum / ref_sum.max(), 100 * our_sum / our_sum.max()
    d_intensity = np.abs(ref_sum - our_sum)[np.maximum(ref_sum, our_sum) > COMPARE_ABOVE].max()
    ref_big = ref_tt[100 * ref_i / ref_i.max() > COMPARE_ABOVE]
    our_big = ours.two_theta[ours.intensity > COMPARE_ABOVE]
    d_tt = max(
        np.abs(ours.two_theta[:, None] - ref_big[None, :]).min(axis=0).max(),
        np.abs(ref_tt[:, None] - our_big[None, :]).min(axis=0).max(),
    )
    return float(d_tt), float(d_intensity)


@pytest.mark.slow
def test_agrees_with_pymatgen_on_mp20(reference_rows, pymatgen_reference):
    assert reference_rows.spacegroup_number.nunique() >= 150
    assert set(reference_rows.crystal_system) == {
        "cubic", "hexagonal", "trigonal", "tetragonal", "orthorhombic", "monoclinic", "triclinic"
    }
    sim = XRDSimulator(XRDConfig(b_factor=0.0))
    structures, refs = pymatgen_reference
    bad = []
    for mid, s, ref in zip(reference_rows.material_id, structures, refs):
        d_tt, d_i = compare_to_pymatgen(sim.get_pattern(s, WINDOW), ref)
        if d_tt > TWO_THETA_TOL or d_i > INTENSITY_TOL:
            bad.append((mid, round(d_tt, 4), round(d_i, 3)))
    assert not bad, f"{len(bad)} of {len(structures)} disagree with pymatgen (id, |Δ2θ|°, |ΔI|%): {bad[:10]}"


def test_partial_occupancy_matches_pymatgen():
    rocksalt = _cubic([{"Fe": 0.5, "Co": 0.5}, "O"], "Fm-3m", 4.2, basis=[(0, 0, 0), (0.5, 0.5, 0.5)])
    assert len(rocksalt) == 8
    ref = XRDCalculator(wavelength=CU_KA1).get_pattern(rocksalt, scaled=False, two_theta_range=WINDOW)
    d_tt, d_i = compare_to_pymatgen(XRDSimulator(XRDConfig(b_factor=0.0)).get_pattern(rocksalt), ref)
    assert d_tt < TWO_THETA_TOL and d_i < INTENSITY_TOL


def test_disordered_site_is_the_average_scatterer():
    """B2 cell with {Fe: ½, Co: ½} at 000 and Al at ½½½: F = ½(f_Fe + f_Co) + (-1)^(h+k+l) f_Al, by hand."""
    a = 2.87
    b2 = Structure(Lattice.cubic(a), [{"Fe": 0.5, "Co": 0.5}, "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    pattern = XRDSimulator(XRDConfig(b_factor=0.0)).get_pattern(b2)
    r = np.arange(-6, 7)
    hkl = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    d = a / np.sqrt((hkl**2).sum(1).clip(1))
    hkl, d = hkl[(np.abs(hkl).sum(1) > 0) & (CU_KA1 / (2 * d) < 1)], d[(np.abs(hkl).sum(1) > 0) & (CU_KA1 / (2 * d) < 1)]
    theta = np.arcsin(CU_KA1 / (2 * d))
    s = np.sin(theta) / CU_KA1
    f_site = 0.5 * scattering_factor("Fe", s) + 0.5 * scattering_factor("Co", s)
    structure_factor = f_site + (-1.0) ** hkl.sum(1) * scattering_factor("Al", s)
    lp = (1 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))
    two_theta = np.degrees(2 * theta)
    expected = []
    for tt in pattern.two_theta:
        same = np.abs(two_theta - tt) < 1e-6  # all equivalent reflections of this peak
        expected.append(np.sum(structure_factor[same] ** 2 * lp[same]))
    expected = 100 * np.array(expected) / max(expected)
    np.testing.assert_allclose(pattern.intensity, expected, rtol=1e-3)
    assert len(pattern) == np.unique(np.round(two_theta[two_theta <= 80], 6)).size  # no peak missing


# ---------------------------------------------------------------------------------------------------------------
# Grid, pattern object, physics
# ---------------------------------------------------------------------------------------------------------------
def test_grid_has_140_bins_from_10_to_80():
    cfg = XRDConfig()
    assert cfg.n_bins == 140
    np.testing.assert_allclose(cfg.bin_edges(), 10.0 + 0.5 * np.arange(141))
    assert cfg.bin_edges()[0] == 10.0 and cfg.bin_edges()[-1] == 80.0
    assert XRDSimulator().vector(_cubic("Cu", "Fm-3m", 3.615)).shape == (140,)


def test_pattern_object(few):
    cfg = XRDConfig()
    for s in few.values():
        p = XRDSimulator(cfg).get_pattern(s)
        assert p.intensity.max() == 100.0
        assert len(p.two_theta) == len(p.intensity) == len(p.hkls) == len(p.d_hkls) > 0
        assert np.all(np.diff(p.two_theta) > 0) and p.two_theta.min() >= 10 and p.two_theta.max() <= 80
        np.testing.assert_allclose(2 * p.d_hkls * np.sin(np.radians(p.two_theta / 2)), cfg.wavelength, rtol=1e-12)
        assert all(fam["multiplicity"] % 2 == 0 for fams in p.hkls for fam in fams)  # Friedel pairs
        assert p.to_pymatgen().x.shape == p.two_theta.shape


def test_get_patterns_batch_equals_one_by_one(few):
    sim = XRDSimulator()
    structures = list(few.values())
    for batched, s in zip(sim.get_patterns(structures), structures):
        single = sim.get_pattern(s)
        np.testing.assert_allclose(batched.two_theta, single.two_theta, atol=1e-9)
        np.testing.assert_allclose(batched.intensity, single.intensity, atol=1e-6)
        assert batched.hkls == single.hkls


def test_scattering_factor_counts_electrons_forward_and_decays():
    s = np.linspace(0.0, 0.6, 61)
    for symbol, z in (("H", 1), ("O", 8), ("Fe", 26), ("W", 74)):
        f = scattering_factor(symbol, s)
        assert f.shape == s.shape and f[0] == z  # forward scattering: all Z electrons
        assert np.all(np.diff(f) < 0)


def _families(pattern) -> set:
    return {tuple(sorted(abs(v) for v in fam["hkl"])) for fams in pattern.hkls for fam in fams}


def test_systematic_absences_fcc_and_bcc():
    fcc = _families(XRDSimulator().get_pattern(_cubic("Cu", "Fm-3m", 3.615)))
    assert {(1, 1, 1), (0, 0, 2), (0, 2, 2)} <= fcc
    assert not {(0, 0, 1), (0, 1, 1), (0, 1, 2)} & fcc
    bcc = _families(XRDSimulator().get_pattern(_cubic("W", "Im-3m", 3.165)))
    assert {(0, 1, 1), (0, 0, 2)} <= bcc
    assert not {(0, 0, 1), (1, 1, 1)} & bcc


def test_debye_waller_damps_as_exp_minus_2bs2():
    cu = _cubic("Cu", "Fm-3m", 3.615)
    cold = XRDSimulator(XRDConfig(b_factor=0.0)).get_pattern(cu)
    warm = XRDSimulator(XRDConfig(b_factor=0.8)).get_pattern(cu)
    s2 = (np.sin(np.radians(cold.two_theta / 2)) / CU_KA1) ** 2
    ratio = warm.intensity / cold.intensity
    np.testing.assert_allclose(ratio / ratio[0], np.exp(-2 * 0.8 * (s2 - s2[0])), rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Invariances of the 140-vector
# ---------------------------------------------------------------------------------------------------------------
def _shifted(s: Structure, shift) -> Structure:
    return Structure(s.lattice, s.species_and_occu, s.frac_coords + np.asarray(shift))


def _permuted(s: Structure, seed: int = 0) -> Structure:
    perm = np.random.default_rng(seed).permutation(len(s))
    return Structure(s.lattice, [s.species_and_occu[i] for i in perm], s.frac_coords[perm])


def _supercell(s: Structure, matrix) -> Structure:
    out = s.copy()
    out.make_supercell(matrix)
    return out


@pytest.mark.parametrize(
    "transform",
    [
        lambda s: _shifted(s, [0.123, -0.456, 0.789]),
        lambda s: _permuted(s),
        lambda s: _supercell(s, [2, 1, 1]),
        lambda s: _supercell(s, [[1, 1, 0], [0, 1, 0], [0, 0, 2]]),
    ],
    ids=["origin-shift", "site-order", "supercell-211", "supercell-skew"],
)
def test_vector_invariant(few, transform):
    sim = XRDSimulator()
    for system, s in few.items():
        np.testing.assert_allclose(sim.vector(transform(s)), sim.vector(s), atol=1e-5, err_msg=system)


def test_vector_invariant_to_cell_setting(few):
    sim = XRDSimulator()
    sizes = []
    for system, s in few.items():
        sga = SpacegroupAnalyzer(s)
        primitive, conventional = sga.get_primitive_standard_structure(), sga.get_conventional_standard_structure()
        sizes.append((len(primitive), len(conventional)))
        np.testing.assert_allclose(sim.vector(primitive), sim.vector(conventional), atol=1e-5, err_msg=system)
    assert any(p < c for p, c in sizes), sizes  # at least one centred lattice among them


def test_conventional_fcc_equals_primitive():
    conventional = _cubic("Cu", "Fm-3m", 3.615)
    primitive = conventional.get_primitive_structure()
    assert len(primitive) == 1 and len(conventional) == 4
    np.testing.assert_allclose(XRDSimulator().vector(primitive), XRDSimulator().vector(conventional), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Profile and binning
# ---------------------------------------------------------------------------------------------------------------
def test_bin_profile_of_one_peak_integrates_to_one():
    binned = bin_profile(np.array([45.2]), np.array([1.0]))
    assert binned.shape == (140,)
    # the Lorentzian half (eta = 0.5) has ~7e-4 of its area beyond 35° from the peak, outside the window
    assert abs(binned.sum() - 1.0) < 2e-3
    assert np.argmax(binned) == int((45.2 - 10) / 0.5)


def test_fast_binning_matches_exact_reference(few, table):
    sim = XRDSimulator()
    structures = list(few.values()) + [row_to_structure(r) for r in table.iloc[::1500].to_dict("records")]
    for s in structures:
        tt, inten = sim.sticks(s)
        exact = bin_profile(tt, inten, sim.config)
        np.testing.assert_allclose(sim.vector(s), exact / exact.max(), atol=1e-3)


def test_sharp_peak_is_not_missed():
    """A peak much narrower than a bin still lands in its bin (point sampling at bin centres would miss it)."""
    cfg = XRDConfig(fwhm=0.01)
    cu = _cubic("Cu", "Fm-3m", 3.615)
    vec = XRDSimulator(cfg).vector(cu)
    pattern = XRDSimulator(cfg).get_pattern(cu)
    for tt, inten in zip(pattern.two_theta, pattern.intensity):
        assert vec[int((tt - 10) / 0.5)] > 0.5 * inten / 100
    tt, inten = XRDSimulator(cfg).sticks(cu)
    exact = bin_profile(tt, inten, cfg)
    np.testing.assert_allclose(vec, exact / exact.max(), atol=0.05)


# ---------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch_structures(table):
    return [row_to_structure(r) for r in table.iloc[::450].to_dict("records")]  # 41 structures


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_batch_equals_one_by_one(batch_structures, n_jobs):
    sim = XRDSimulator()
    one_by_one = np.stack([sim.vector(s) for s in batch_structures])
    result = simulate_batch(batch_structures, n_jobs=n_jobs, chunk_size=8, progress=False)
    assert not result.failures
    np.testing.assert_allclose(result.vectors, one_by_one, atol=1e-6)
    np.testing.assert_allclose(simulate_vectors(batch_structures, n_jobs=n_jobs, progress=False), one_by_one, atol=1e-6)
    tt, inten = sim.sticks(batch_structures[3])
    np.testing.assert_allclose(result.stick_two_theta[3], tt, atol=1e-9)
    np.testing.assert_allclose(result.stick_intensity[3], inten, atol=1e-6)


def test_batch_collects_failures_by_index(batch_structures):
    bad = {
        1: Structure(Lattice.cubic(3.0), [DummySpecies("X")], [[0, 0, 0]]),
        3: Structure(Lattice.cubic(3.0), [], []),
        4: _cubic("Cu", "Pm-3m", 1.0),  # first reflection at 2θ ≈ 101°
    }
    structures = [bad.get(i, s) for i, s in enumerate(batch_structures[:6])]
    result = simulate_batch(structures, progress=False, ids=[f"id{i}" for i in range(6)])
    assert sorted(result.failures) == [1, 3, 4]
    assert isinstance(result.failures[1], UnknownElementError) and "id1" in str(result.failures[1])
    assert isinstance(result.failures[4], NoReflectionsError)
    assert result.vectors.shape == (6, 140) and len(result.stick_two_theta) == 6
    assert np.isnan(result.vectors[[1, 3, 4]]).all() and np.isfinite(result.vectors[[0, 2, 5]]).all()
    with pytest.raises(UnknownElementError, match="id1|structure 1"):
        simulate_vectors(structures, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------
def test_unknown_element_is_named():
    dummy = Structure(Lattice.cubic(3.0), ["Fe", DummySpecies("X")], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(UnknownElementError, match="X"):
        XRDSimulator().vector(dummy)
    with pytest.raises(UnknownElementError, match="X"):
        scattering_factor("X", 0.1)


def test_empty_structure():
    with pytest.raises(StructureError, match="no sites"):
        XRDSimulator().get_pattern(Structure(Lattice.cubic(3.0), [], []))


def test_nan_coordinates_are_named():
    s = Structure(Lattice.cubic(3.0), ["Fe", "Fe"], [[0, 0, 0], [np.nan, 0.5, 0.5]])
    with pytest.raises(StructureError, match="site 1.*nan"):
        XRDSimulator().vector(s)


def test_no_reflection_in_range():
    tiny = _cubic("Cu", "Pm-3m", 1.0)
    with pytest.raises(NoReflectionsError, match="20"):
        XRDSimulator().get_pattern(tiny, two_theta_range=(10, 20))
    with pytest.raises(NoReflectionsError):
        XRDSimulator(XRDConfig(two_theta_max=20.0)).vector(tiny)
    with pytest.raises(NoReflectionsError, match="9.9"):
        XRDSimulator(XRDConfig(wavelength=9.9)).vector(_cubic("Cu", "Fm-3m", 3.615))
