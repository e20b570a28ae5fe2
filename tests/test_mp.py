"""The opt-in Materials Project source: the key check, the document conversion, the resumable download (offline)."""

from __future__ import annotations

import enum
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from eacnn.datasets import mp
from eacnn.errors import MissingAPIKeyError, StructureError
from eacnn.datasets.structures import TABLE_COLUMNS, load_embedded, row_to_structure

FIXTURE = Path(__file__).parent / "fixtures" / "mp_docs.json"


@pytest.fixture(scope="module")
def fixture():
    return json.loads(FIXTURE.read_text())


def test_no_key_raises_with_instructions(monkeypatch, tmp_path):
    monkeypatch.delenv(mp.API_KEY_VAR, raising=False)
    with pytest.raises(MissingAPIKeyError) as info:
        mp.download_table(elements=["Li"], folder=tmp_path)
    message = str(info.value)
    assert "MP_API_KEY" in message and "materialsproject.org/api" in message and "api_key=" in message
    assert not any(tmp_path.iterdir())  # nothing was written before the refusal


def test_key_from_argument_or_environment(monkeypatch):
    monkeypatch.setenv(mp.API_KEY_VAR, "env-key")
    assert mp.resolve_api_key() == "env-key"
    assert mp.resolve_api_key("explicit") == "explicit"
    monkeypatch.setenv(mp.API_KEY_VAR, "   ")
    with pytest.raises(MissingAPIKeyError):
        mp.resolve_api_key()


def test_docs_to_table_from_dicts(fixture):
    docs = fixture["docs"]
    table = mp.docs_to_table(docs, split="train", database_version=fixture["database_version"])
    assert list(table.columns) == [*TABLE_COLUMNS, "database_version"]
    assert table["material_id"].tolist() == [d["material_id"] for d in docs]
    assert table["formula"].tolist() == [d["formula_pretty"] for d in docs]
    assert table["spacegroup_number"].tolist() == [d["symmetry"]["number"] for d in docs]
    assert table["spacegroup_symbol"].tolist() == [d["symmetry"]["symbol"] for d in docs]
    assert table["crystal_system"].tolist() == ["cubic", "hexagonal", "monoclinic"]
    assert set(table["split"]) == {"train"} and set(table["database_version"]) == {"2025.09.25"}
    assert table["band_gap"].tolist() == [d["band_gap"] for d in docs]

    # the structures survive the table, and are the embedded rows they were taken from
    embedded = load_embedded().set_index("material_id")
    for row in table.to_dict("records"):
        s = row_to_structure(row)
        ref = row_to_structure(embedded.loc[row["material_id"]].to_dict())
        assert np.allclose(s.lattice.matrix, ref.lattice.matrix, atol=1e-6)
        assert [x.symbol for x in s.species] == [x.symbol for x in ref.species]
        assert np.allclose(s.frac_coords, ref.frac_coords, atol=1e-6)
        assert row["n_sites"] == len(ref)
        # spglib on the stored cell agrees with the Materials Project's symmetry for these
        fine = "spacegroup_number_symprec_0p01"
        assert row[fine] == embedded.loc[row["material_id"], fine]


class _CrystalSystem(enum.Enum):  # stands in for emmet's CrystalSystem enum
    cubic = "Cubic"
    hexagonal = "Hexagonal"
    monoclinic = "Monoclinic"


def test_docs_to_table_from_objects_equals_dicts(fixture):
    from pymatgen.core import Structure

    objects = [
        SimpleNamespace(
            material_id=SimpleNamespace(value=d["material_id"]),
            formula_pretty=d["formula_pretty"],
            symmetry=SimpleNamespace(
                number=d["symmetry"]["number"],
                symbol=d["symmetry"]["symbol"],
                crystal_system=_CrystalSystem(d["symmetry"]["crystal_system"]),
            ),
            structure=Structure.from_dict(d["structure"]),
            formation_energy_per_atom=d["formation_energy_per_atom"],
            band_gap=d["band_gap"],
        )
        for d in fixture["docs"]
    ]
    from_objects = mp.docs_to_table(objects, database_version="v")
    from_dicts = mp.docs_to_table(fixture["docs"], database_version="v")
    pd.testing.assert_frame_equal(from_objects, from_dicts)


def test_docs_without_structure_are_refused(fixture):
    doc = dict(fixture["docs"][0], structure=None)
    with pytest.raises(StructureError, match="mp-569593"):
        mp.docs_to_table([doc])


class _FakeSummary:
    """The part of ``MPRester().materials.summary`` that download_table uses, answering from the fixture."""

    def __init__(self, docs):
        self.docs = docs
        self.calls: list[dict] = []

    def search(self, material_ids=None, fields=None, **filters):
        self.calls.append({"material_ids": material_ids, "fields": fields, **filters})
        picked = [d for d in self.docs if material_ids is None or d["material_id"] in material_ids]
        if fields == ["material_id"]:
            return [{"material_id": d["material_id"]} for d in picked]
        return picked


def _client(docs):
    return SimpleNamespace(db_version="2025.09.25", materials=SimpleNamespace(summary=_FakeSummary(docs)))


def test_download_is_resumable(fixture, tmp_path, caplog):
    client = _client(fixture["docs"])
    first = mp.download_table(max_sites=20, chunk_size=2, folder=tmp_path, progress=False, client=client)
    summary = client.materials.summary
    assert len(first) == 3 and len(summary.calls) == 3  # one id query + two chunks
    assert summary.calls[0]["num_sites"] == (1, 20) and summary.calls[0]["deprecated"] is False
    chunks = sorted(tmp_path.glob("*/chunk-*.csv.gz"))
    assert len(chunks) == 2

    # everything cached: no request at all
    again = mp.download_table(max_sites=20, chunk_size=2, folder=tmp_path, progress=False, client=client)
    assert len(summary.calls) == 3
    pd.testing.assert_frame_equal(again, first)

    # ids are kept in numeric order, so the chunks are [mp-2170, mp-7237] and [mp-569593]
    # an interrupted download lost the first chunk: only that one is fetched again
    chunks[0].unlink()
    resumed = mp.download_table(max_sites=20, chunk_size=2, folder=tmp_path, progress=False, client=client)
    assert [c["material_ids"] for c in summary.calls[3:]] == [["mp-2170", "mp-7237"]]
    pd.testing.assert_frame_equal(resumed, first)

    # a truncated chunk is reported and fetched again, never trusted
    chunks[1].write_bytes(chunks[1].read_bytes()[:20])
    with caplog.at_level(logging.WARNING, logger="eacnn.datasets.mp"):
        resumed = mp.download_table(max_sites=20, chunk_size=2, folder=tmp_path, progress=False, client=client)
    assert [c["material_ids"] for c in summary.calls[4:]] == [["mp-569593"]]
    assert "unreadable" in caplog.text and chunks[1].name in caplog.text
    pd.testing.assert_frame_equal(resumed, first)


def test_downloaded_table_builds_a_dataset(fixture, tmp_path, monkeypatch):
    from eacnn import Config
    from eacnn.datasets.dataset import build_dataset

    monkeypatch.setenv("EACNN_CACHE", str(tmp_path / "cache"))
    table = mp.download_table(folder=tmp_path / "mp", progress=False, client=_client(fixture["docs"]))
    ds = build_dataset(Config.smoke().replace(**{"data.val_fraction": 0.0}), table, progress=False, n_jobs=1)
    assert sorted(ds.ids) == sorted(d["material_id"] for d in fixture["docs"])
    assert set(ds.split) == {"train"} and ds.vectors.shape == (3, 140)


def test_all_of_materials_project_becomes_a_database(fixture, tmp_path, monkeypatch):
    """``eacnn database build mp-api`` as far as no live call goes: the recorded response through the same
    download (the stand-in client records the hull filter asked for) into a saved, searchable database."""
    from eacnn.retrieval import database
    from eacnn.training.checkpoint import load_pretrained

    monkeypatch.setenv("EACNN_CACHE", str(tmp_path / "cache"))
    client = _client(fixture["docs"])
    real = mp.download_table

    def recorded(**kw):
        return real(**kw, folder=tmp_path / "mp", client=client)

    monkeypatch.setattr(mp, "download_table", recorded)
    model = load_pretrained()
    from eacnn.config import Config

    cfg = Config.cpu().replace(**{"data.max_structures": 200})  # the verdict calibrated on a few structures, quickly
    folder = database.model_database(model, cfg, ["mp-api:0.1"], tmp_path / "db", calibration_queries=6,
                                     progress=False)
    db = database.open_database(folder)
    assert sorted(db.labels["material_id"]) == sorted(d["material_id"] for d in fixture["docs"])
    # a second database of the same model reuses its calibration (cached by weights, configuration and settings)
    monkeypatch.setattr(database, "_fit_calibration", lambda *a, **k: pytest.fail("calibrated again"))
    again = database.model_database(model, cfg, ["mp-api:0.1"], tmp_path / "db2", calibration_queries=6,
                                    progress=False)
    assert database.open_database(again).manifest["calibration"] == db.manifest["calibration"]
    assert set(db.labels["source"]) == {"mp-api:0.1"}
    assert client.materials.summary.calls[0]["energy_above_hull"] == (0.0, 0.1)
    assert database.mp_hull("mp-api") == 0.05 and database.mp_hull("mp-api:all") is None
    with pytest.raises(Exception, match="mp-api:E"):
        database.mp_hull("mp-api:lots")


def test_database_build_from_mp_api_without_a_key_is_refused_first(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != mp.API_KEY_VAR}
    proc = subprocess.run([sys.executable, "-m", "eacnn", "database", "build", "mp-api", "--out", str(tmp_path / "db")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "MP_API_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "db").exists()
