"""Structure sources: the embedded MP-20 table, pymatgen Structures, CIF files; validation errors."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from eacnn.errors import DisorderError, StructureError
from eacnn.datasets.structures import (
    TABLE_COLUMNS,
    check_structure,
    embedded_structures,
    load_embedded,
    read_cif,
    read_cif_folder,
    row_to_structure,
    structure_to_row,
    table_from_structures,
)

FIXTURES = Path(__file__).parent / "fixtures"
GOOD_CIFS = {"Li2O_225": 225, "MnO2_164": 164, "TiO2_136": 136}  # file stem -> space group in its name
BAD_CIFS = ["garbage", "truncated", "no_atoms"]


def test_embedded_splits_and_schema():
    table = load_embedded()
    assert tuple(table.columns) == TABLE_COLUMNS
    assert table["split"].value_counts().to_dict() == {"val": 9047, "test": 9046}
    assert table["material_id"].is_unique
    smoke = load_embedded(limit=5)
    assert smoke["split"].value_counts().to_dict() == {"val": 5, "test": 5}
    with pytest.raises(StructureError, match="'train'"):
        load_embedded("train")


def test_structure_to_row_round_trip_and_symmetry():
    table, structures = embedded_structures(limit=15)
    rebuilt = table_from_structures(structures, ids=table["material_id"], split="val", progress=False)
    assert tuple(rebuilt.columns) == TABLE_COLUMNS
    # spglib at symprec 0.1 on the same cells gives the embedded space groups and crystal systems
    for col in ("formula", "n_sites", "spacegroup_number", "spacegroup_symbol", "crystal_system",
                "spacegroup_number_symprec_0p01"):  # fmt: skip
        assert rebuilt[col].tolist() == table[col].tolist(), col
    cell = ["a", "b", "c", "alpha", "beta", "gamma"]
    assert np.allclose(rebuilt[cell], table[cell])
    for row, s in zip(rebuilt.to_dict("records"), structures):
        back = row_to_structure(row)
        assert np.allclose(back.lattice.matrix, s.lattice.matrix)
        shift = back.frac_coords - s.frac_coords  # rows are wrapped into [0, 1): equal up to whole cells
        assert np.allclose(shift, np.round(shift), atol=1e-9)
        assert back.species == s.species


def test_partial_occupancy_survives_the_table():
    s = Structure(Lattice.cubic(3.6), [{"Fe": 0.5, "Ni": 0.5}, {"Li": 0.25}], [[0, 0, 0], [0.5, 0.5, 0.5]])
    row = structure_to_row(s, "alloy")
    assert json.loads(row["species"]) == [{"Fe": 0.5, "Ni": 0.5}, {"Li": 0.25}]
    back = row_to_structure(row)
    assert not back.is_ordered and back[0].species == s[0].species and back[1].species == s[1].species


def test_table_from_structures_refuses_bad_ids():
    s = Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]])
    with pytest.raises(StructureError, match="unique"):
        table_from_structures([s, s], ids=["a", "a"], progress=False)
    with pytest.raises(StructureError, match="2 ids for 1"):
        table_from_structures([s], ids=["a", "b"], progress=False)
    assert table_from_structures([s, s], progress=False)["material_id"].tolist() == ["s0", "s1"]


@pytest.mark.parametrize("stem", sorted(GOOD_CIFS))
def test_read_cif_good(stem):
    s = read_cif(FIXTURES / "cifs" / f"{stem}.cif")
    row = structure_to_row(s, stem)
    assert row["spacegroup_number"] == GOOD_CIFS[stem]
    assert row["formula"] == stem.split("_")[0]


@pytest.mark.parametrize("stem", BAD_CIFS)
def test_read_cif_bad_names_the_file(stem):
    path = FIXTURES / "bad_cifs" / f"{stem}.cif"
    with pytest.raises(StructureError) as info:
        read_cif(path)
    assert str(path) in str(info.value)


def test_read_cif_missing_file(tmp_path):
    with pytest.raises(StructureError, match="no such CIF"):
        read_cif(tmp_path / "absent.cif")


def test_read_cif_folder_lists_bad_files(tmp_path, caplog):
    for f in list((FIXTURES / "cifs").glob("*.cif")) + list((FIXTURES / "bad_cifs").glob("*.cif")):
        shutil.copy(f, tmp_path / f.name)
    with caplog.at_level(logging.WARNING, logger="eacnn.datasets.structures"):
        found = read_cif_folder(tmp_path, progress=False)
    table, structures, skipped = found
    assert sorted(table["material_id"]) == sorted(GOOD_CIFS)
    assert len(structures) == len(table) and set(table["split"]) == {"test"}
    assert table.set_index("material_id")["spacegroup_number"].to_dict() == GOOD_CIFS
    assert sorted(i for i, _ in skipped) == sorted(BAD_CIFS)
    for stem, reason in skipped:
        assert f"{stem}.cif" in reason
        assert f"skipping {stem}" in caplog.text


def test_read_cif_folder_refuses_empty_or_missing(tmp_path):
    with pytest.raises(StructureError, match="no files"):
        read_cif_folder(tmp_path)
    with pytest.raises(StructureError, match="neither a directory"):
        read_cif_folder(tmp_path / "nope")


def test_check_structure_policies():
    disordered = Structure(Lattice.cubic(3.6), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    check_structure(disordered, disorder="weighted")
    with pytest.raises(DisorderError, match=r"site 0 .*Fe"):
        check_structure(disordered, disorder="reject", label="alloy")
    big = Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]]) * (2, 2, 2)
    with pytest.raises(StructureError, match="8 sites > max_sites=4"):
        check_structure(big, max_sites=4)
    with pytest.raises(StructureError, match="'sometimes'"):
        check_structure(big, disorder="sometimes")


def test_the_overlap_check_scales_to_thousands_of_atoms_and_still_finds_a_planted_pair():
    """The neighbour-list check (not every pair): a 10,648-atom cell is checked, and one atom planted 0.3 Å from
    another is caught by index."""
    from pymatgen.core import Lattice, Structure

    from eacnn.datasets.structures import check_structure

    s = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
                  [[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])
    s.make_supercell([11, 11, 11])
    check_structure(s, label="big")
    s.append("Na", s[5000].coords + [0.3, 0, 0], coords_are_cartesian=True)
    with pytest.raises(StructureError, match=r"big: overlapping atoms: site 5000 \(.*\) and site 10648"):
        check_structure(s, label="big")
