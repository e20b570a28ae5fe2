"""Scans eacnn did not make (:mod:`eacnn.physics.scans`): pymatgen's sticks, a lab-scan generator of other forms,
and the rule that no selection, grid or calibration reads them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from eacnn.physics.scans import (UNSEEN_CONDITIONS, ScanModel, measured_scan, pymatgen_sticks, texture_sticks,
                                 unseen_structure, write_xy)
from eacnn.physics.wavelengths import CU

REPO = Path(__file__).resolve().parents[1]
NACL = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_pymatgen_sticks_sit_where_braggs_law_puts_them():
    tt, intensity, hkl = pymatgen_sticks(NACL)
    d = 5.64 / np.sqrt((hkl**2).sum(axis=1))
    np.testing.assert_allclose(tt, np.degrees(2 * np.arcsin(CU.kalpha1 / (2 * d))), atol=1e-6)
    assert intensity.max() == pytest.approx(100.0)


def test_conditions_change_the_cell_as_named():
    rng = np.random.default_rng(0)
    assert unseen_structure(NACL, "iso -2 %", rng).lattice.a == pytest.approx(0.98 * 5.64)
    assert unseen_structure(NACL, "unstrained", rng) is NACL
    strained = unseen_structure(NACL, "aniso 1.5 %", rng).lattice
    assert max(abs(x / 5.64 - 1) for x in strained.abc) <= 0.0151 * np.sqrt(3)
    assert len(set(np.round(strained.abc, 5))) > 1  # anisotropic: the axes no longer agree


def test_texture_of_r_one_changes_nothing_and_platelets_favour_their_normal():
    _, intensity, hkl = pymatgen_sticks(NACL)
    rng = np.random.default_rng(1)
    np.testing.assert_allclose(texture_sticks(intensity, hkl, NACL.lattice.matrix, rng, r=1.0), intensity)
    out = texture_sticks(intensity, hkl, NACL.lattice.matrix, np.random.default_rng(2), r=0.6)
    assert not np.allclose(out, intensity)


def test_a_scan_carries_the_kalpha2_doublet_background_and_counting_noise(tmp_path):
    from eacnn.measured import read_pattern, to_model_grid

    tt, intensity = np.array([80.0]), np.array([100.0])
    model = dataclasses.replace(ScanModel(), peak_counts=(1e6, 1e6), air=(0.0, 0.0), slope=(0.0, 0.0))
    x, y, p = measured_scan(tt, intensity, np.random.default_rng(3), model)
    assert x[0] == pytest.approx(5.0) and x[-1] == pytest.approx(90.0) and np.all(y == np.round(y))
    first = 80.0 + p["zero"]
    second = np.degrees(2 * np.arcsin(np.sin(np.radians(40.0)) * CU.kalpha2 / CU.kalpha1)) + p["zero"]
    window = np.abs(x - first) < 1.5
    signal = y[window] - np.median(y[~window])  # the flat background removed
    centroid = float((x[window] * signal).sum() / signal.sum())
    assert centroid == pytest.approx((first + 0.5 * second) / 1.5, abs=0.02)  # Kα1 + half as much Kα2
    assert np.median(y[~window]) == pytest.approx(1e6 * p["background"], rel=0.01)
    grid = to_model_grid(read_pattern(write_xy(tmp_path / "one.xy", x, y)))
    assert grid.coverage == 1.0 and int(np.argmax(grid.vector)) == 140 - 1  # the 79.5–80° bin (peak at 80° + zero)


def test_no_selection_grid_or_calibration_reads_the_unseen_generator():
    """The family stays unseen: only its own evaluation script (and these tests) import it."""
    readers = [p.relative_to(REPO).as_posix() for p in [*REPO.glob("eacnn/**/*.py"), *REPO.glob("scripts/*.py"),
                                                         *REPO.glob("notebooks/*.ipynb")]
               if re.search(r"physics[./]scans|physics import scans", p.read_text())
               and p.name != "scans.py"]
    assert readers == ["scripts/unseen_scans.py"], readers


def test_the_summary_counts_a_confident_wrong_answer():
    import pandas as pd

    from eacnn.measured.report import unseen_summary

    df = pd.DataFrame({"condition": ["c"] * 4, "search": ["eacnn search"] * 2 + ["search-match"] * 2,
                       "rank": [1, 3, 1, 99], "verdict": ["match", "match", "", ""]})
    s = unseen_summary(df).set_index("search")
    assert s.loc["eacnn search", "Top-1 (%)"] == 50 and s.loc["eacnn search", "confident wrong (%)"] == 50
    assert s.loc["search-match", "Top-5 (%)"] == 50 and np.isnan(s.loc["search-match", "match (%)"])
    assert len(UNSEEN_CONDITIONS) >= 6


def test_the_chapter_table_and_phrases_come_from_the_answers():
    import pandas as pd

    from eacnn.measured.report import unseen_numbers, unseen_summary, unseen_table

    rows = []
    for condition, ours, sm in (("unstrained", [1, 1], [1, 1]), ("texture r=0.6", [1, 4], [1, 1])):
        for search, ranks in (("eacnn search", ours), ("eacnn search, elements given", [1, 1]), ("search-match", sm)):
            rows += [{"condition": condition, "search": search, "rank": r, "verdict": "match" if r == 1 else ""}
                     for r in ranks]
    summary = unseen_summary(pd.DataFrame(rows))
    table = unseen_table(summary)
    assert list(table.index) == ["unstrained", "texture r=0.6"] and table.loc["texture r=0.6", "Top-1 %"] == 50
    words = unseen_numbers(summary)
    assert words["unseen_worst"] == "texture r=0.6" and "misses the ≥ 85 % target by 35.0 points" in words[
        "unseen_worst_phrase"]
    assert words["unseen_sm_beats"] == '"texture r=0.6" (100 against 50 %, within two standard errors)'  # 2 queries
    many = unseen_numbers(summary.assign(queries=400))  # the same shares over 400 queries each: beyond the noise
    assert many["unseen_sm_beats"] == '"texture r=0.6" (100 against 50 %)'


def test_the_misses_are_told_apart_as_look_alikes_polymorphs_and_others():
    import pandas as pd

    from eacnn.measured.report import unseen_misses

    def row(condition, mid, search, rank, top1, verdict="no confident match", truth="HoAs|Fm-3m"):
        return dict(condition=condition, material_id=mid, truth=truth, search=search, rank=rank, verdict=verdict,
                    top1=top1)

    df = pd.DataFrame([
        row("unstrained", "a", "eacnn search", 2, "ErSe|Fm-3m"),  # the unstrained row is left out
        row("iso -2 %", "a", "eacnn search", 3, "ErSe|Fm-3m"),  # same group, other formula
        row("iso -2 %", "b", "eacnn search", 2, "HoAs|P6_3/mmc"),  # the formula in another group
        row("iso -2 %", "c", "eacnn search", 7, "NaCl|Pm-3m", verdict="match"),  # something else, and confident
        row("iso -2 %", "d", "eacnn search", 1, "HoAs|Fm-3m"),  # right
        row("iso -2 %", "a", "eacnn search, elements given", 1, "HoAs|Fm-3m"),
        row("iso -2 %", "b", "eacnn search, elements given", 2, "HoAs|P6_3/mmc"),
    ])
    words = unseen_misses(df)
    assert words == {"miss_n": "3", "miss_queries": "4", "miss_isotype": "1", "miss_polymorph": "1",
                     "miss_other": "1", "miss_elements": "1", "miss_confident": "1", "miss_in_set": "n/a"}
    assert unseen_misses(df[df["rank"] == 1])["miss_n"] == "0"
    # answers recorded with the phases they could not tell apart: the right one named among them counts
    sets = ["", "ErSe|Fm-3m;HoAs|Fm-3m", "HoAs|P6_3/mmc;HoAs|Fm-3mX", "", "", "", ""]
    assert unseen_misses(df.assign(ambiguous=sets))["miss_in_set"] == "1"


def test_averaged_texture_is_the_mean_over_a_peaks_equivalent_reflections():
    """A textured powder's peak is the sum of its symmetry-equivalent reflections, each at its own angle to the
    preferred direction: averaged, the factor no longer depends on which member pymatgen lists first."""
    from pymatgen.core import Lattice, Structure

    from eacnn.physics.measurement import march_dollase
    from eacnn.physics.scans import point_rotations, texture_sticks

    fcc = Structure(Lattice.cubic(4.0), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    rotations = point_rotations(fcc)
    assert len(rotations) == 48
    one = np.ones(1)
    for seed in range(12):  # directions drawn alike for both listings of the {200} family
        a = texture_sticks(one, np.array([[2.0, 0, 0]]), fcc.lattice.matrix, np.random.default_rng(seed), 0.6, rotations)
        b = texture_sticks(one, np.array([[0, 0, -2.0]]), fcc.lattice.matrix, np.random.default_rng(seed), 0.6,
                           rotations)
        assert a == pytest.approx(b)
    # along [001]* (drawn by seed 0 or not, computed here directly): 4 members at 90°, 2 along it
    rng = np.random.default_rng(0)
    choices = np.array([v for v in np.ndindex(3, 3, 3) if any(c != 1 for c in v)], float) - 1.0
    direction = choices[rng.integers(len(choices))]
    cos = np.abs(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], float) @ direction) / np.linalg.norm(direction)
    want = np.mean(np.repeat(march_dollase(cos, 0.6), 2))
    got = texture_sticks(one, np.array([[2.0, 0, 0]]), fcc.lattice.matrix, np.random.default_rng(0), 0.6, rotations)
    assert got[0] == pytest.approx(want)
    unaveraged = [texture_sticks(one, np.array(h), fcc.lattice.matrix, np.random.default_rng(3), 0.6)[0]
                  for h in ([[2.0, 0, 0]], [[0, 0, 2.0]])]
    assert unaveraged[0] != pytest.approx(unaveraged[1])  # the old form: the listed member decides
