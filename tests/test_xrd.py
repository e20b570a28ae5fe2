"""eacnn.physics.xrd: physics against pymatgen, symmetry invariances, the 140-bin grid, and clear errors."""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest
from pymatgen.analysis.diffraction.xrd import XRDCalculator
from pymatgen.core import DummySpecies, Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from eacnn.config import XRDConfig
from eacnn.errors import NoReflectionsError, StructureError, UnknownElementError
from eacnn.datasets.structures import load_embedded, row_to_structure
from eacnn.physics.reference import INTENSITY_TOL, TWO_THETA_TOL, compare_sticks
from eacnn.physics import xrd
from eacnn.physics.xrd import XRDSimulator, bin_profile, scattering_factor, simulate_batch, simulate_vectors

CU_KA1 = 1.5406  # Å
WINDOW = (10.0, 80.0)  # degrees 2θ
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
def compare_to_pymatgen(ours, ref) -> tuple[float, float]:
    """(max |Δ2θ| in degrees, max |ΔI| in %) between our pattern and pymatgen's, both directions."""
    return compare_sticks(ours.two_theta, ours.intensity, ref.x, ref.y)


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


@pytest.fixture(scope="module")
def dozens(table):
    """36 MP-20 structures, other rows than ``batch_structures``."""
    return [row_to_structure(r) for r in table.iloc[225::500].to_dict("records")]


def test_one_structure_per_call_equals_batch(dozens):
    """vector / sticks / get_pattern / simulate of one structure (dense, no batch machinery) give the batch's
    numbers."""
    sim = XRDSimulator()
    batch = simulate_batch(dozens, progress=False)
    patterns = sim.get_patterns(dozens)
    assert len(dozens) == 36 and not batch.failures
    for i, s in enumerate(dozens):
        pattern, vector = sim.simulate(s)
        assert vector.dtype == np.float32 and vector.max() == 1.0
        np.testing.assert_allclose(vector, batch.vectors[i], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(vector, sim.vector(s))
        tt, area = sim.sticks(s)
        assert len(tt) == len(batch.stick_two_theta[i])
        np.testing.assert_allclose(tt, batch.stick_two_theta[i], rtol=0, atol=1e-9)
        np.testing.assert_allclose(area, batch.stick_intensity[i], rtol=1e-5, atol=1e-12)
        single = sim.get_pattern(s)
        for other in (pattern, patterns[i]):
            assert len(other) == len(single) and other.hkls == single.hkls
            np.testing.assert_allclose(other.two_theta, single.two_theta, rtol=0, atol=1e-9)
            np.testing.assert_allclose(other.intensity, single.intensity, rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(other.d_hkls, single.d_hkls, rtol=1e-9)


def test_phases_in_blocks_give_the_same_result(few, monkeypatch):
    """Phases are computed in blocks of WORK_PER_CHUNK (reflection, site) pairs to bound memory: blocks change
    nothing."""
    sim, structures = XRDSimulator(), list(few.values())
    expected = [sim.vector(s) for s in structures]
    monkeypatch.setattr(xrd, "WORK_PER_CHUNK", 50)  # a few reflections per block
    for s, e in zip(structures, expected):
        np.testing.assert_allclose(sim.vector(s), e, rtol=0, atol=1e-6)
    np.testing.assert_allclose(simulate_batch(structures, progress=False).vectors, expected, rtol=0, atol=1e-6)


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
def test_huge_cell_is_refused_before_allocating():
    """A 300 Å cubic cell has ~7e7 reflections below 81.5° (it used to take > 13 GB): a clear error, at once."""
    huge = _cubic("Cu", "Pm-3m", 300.0)
    sim = XRDSimulator()
    limit = f"MAX_REFLECTIONS = {XRDSimulator.MAX_REFLECTIONS:,}"
    tracemalloc.start()
    try:
        for call in (sim.vector, sim.get_pattern, sim.simulate, sim.sticks):
            with pytest.raises(StructureError, match=limit) as err:
                call(huge)
            assert re.search(r"27,000,000 Å³ has about 6\d,\d{3},\d{3} reflections", str(err.value))  # V, estimate
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"{peak / 1e6:.0f} MB allocated before refusing"
    result = simulate_batch([huge, _cubic("Cu", "Fm-3m", 3.615)], progress=False, ids=["huge", "cu"])
    assert list(result.failures) == [0] and "huge" in str(result.failures[0]) and limit in str(result.failures[0])
    with pytest.raises(StructureError, match=limit):
        sim.get_patterns([huge])


def test_oblique_cell_is_refused():
    """Three nearly parallel 300 Å vectors: few reflections (7,500 Å³) but a hkl search box of ~1e8 points."""
    needle = Structure(Lattice([[300, 0, 0], [299.9, 5, 0], [299.9, 0, 5]]), ["Cu"], [[0, 0, 0]])
    with pytest.raises(StructureError, match="oblique.*get_reduced_structure"):
        XRDSimulator().vector(needle)


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


def test_plain_array_structures_simulate_exactly_like_pymatgen_ones():
    """The (lattice, species, fractional coordinates) form the database uses for 18,093 table rows: the same
    vectors and sticks as the pymatgen Structure, for an ordered and a partially occupied cell; bad input is named."""
    from pymatgen.core import Lattice, Structure

    from eacnn.errors import StructureError
    from eacnn.physics.xrd import simulate_batch

    lattice = [[4.2, 0.0, 0.0], [0.0, 4.2, 0.0], [0.0, 0.0, 4.2]]
    species = [["Mn", "Mn", "Mn", "Mn", "O", "O", "O", "O"], [{"Fe": 0.5, "Ni": 0.5}, "O"]]
    coords = [[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5],
               [0.5, 0.5, 0.5]], [[0, 0, 0], [0.5, 0.5, 0.5]]]
    plain = [(lattice, sp, xyz) for sp, xyz in zip(species, coords)]
    pmg = [Structure(Lattice(lattice), sp, xyz) for sp, xyz in zip(species, coords)]
    a, b = simulate_batch(pmg, progress=False), simulate_batch(plain, progress=False)
    assert not a.failures and not b.failures
    np.testing.assert_array_equal(a.vectors, b.vectors)
    for i in range(2):
        np.testing.assert_array_equal(a.stick_two_theta[i], b.stick_two_theta[i])
        np.testing.assert_array_equal(a.stick_intensity[i], b.stick_intensity[i])
    bad = simulate_batch([(lattice, ["Mn", "O"], [[0, 0, 0]]), (lattice, ["Qq"], [[0, 0, 0]])], progress=False,
                         ids=["short", "unknown"])
    assert isinstance(bad.failures[0], StructureError) and "2 species for 1 sites" in str(bad.failures[0])
    assert "Qq" in str(bad.failures[1])


def test_sticks_are_split_linearly_between_two_grid_points_and_kept_on_the_grid():
    """The one deposit the simulator, refinement and the mixture fit share (eacnn.physics.profile)."""
    from eacnn.physics.profile import deposit_matrix, split_on_grid

    i0, w1 = split_on_grid(np.array([2.25, 0.0, -3.0, 9.5, 42.0]), 10)
    assert i0.tolist() == [2, 0, 0, 8, 8] and w1.tolist() == [0.25, 0.0, 0.0, 1.0, 1.0]
    # two variants of two sticks (areas 1 and 2) on a grid from 10° in 0.1° steps
    dep = deposit_matrix(np.array([[10.05, 10.3], [10.3, 10.3]]), np.array([1.0, 2.0]), 10.0, 0.1, 8).toarray()
    np.testing.assert_allclose(dep[0], [0.5, 0.5, 0, 2.0, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(dep[1], [0, 0, 0, 3.0, 0, 0, 0, 0], atol=1e-6)  # coinciding sticks add up
    np.testing.assert_allclose(dep.sum(axis=1), [3.0, 3.0], rtol=1e-6)  # the area is kept
