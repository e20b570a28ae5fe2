"""The cached dataset: build, cache hit, corrupt/stale caches, skipped structures, graphs, splits, torch batches."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import DummySpecies, Lattice, Structure

from eacnn import Config
from eacnn.datasets.dataset import (
    SPLITS,
    assign_splits,
    build_dataset,
    count_cross_split_duplicates,
)
from eacnn.datasets.graphs import structure_graph
from eacnn.datasets.structures import load_embedded, row_to_structure, table_from_structures
from eacnn.physics.xrd import XRDSimulator

N_PER_SPLIT = 40


def _cfg(**overrides) -> Config:
    return Config.smoke().replace(**{"data.max_structures": N_PER_SPLIT, **overrides})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EACNN_CACHE", str(tmp_path / "datasets"))
    return tmp_path / "datasets"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EACNN_CACHE", str(tmp_path_factory.mktemp("datasets")))
        return build_dataset(_cfg(), progress=False, n_jobs=1)


def _same_content(a, b) -> None:
    assert a.key == b.key
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.split, b.split)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    pd.testing.assert_frame_equal(a.labels, b.labels)
    pd.testing.assert_frame_equal(a.skipped, b.skipped)
    for i in (0, len(a) // 2, len(a) - 1):
        for name, value in a.graph(i).items():
            np.testing.assert_array_equal(value, b.graph(i)[name])
        np.testing.assert_array_equal(a.sticks(i)[0], b.sticks(i)[0])


# ---------------------------------------------------------------------------------------------------------------
# build and cache
# ---------------------------------------------------------------------------------------------------------------
def test_build_then_cache_hit(cache, caplog):
    cfg = _cfg()
    with caplog.at_level(logging.INFO, logger="eacnn.datasets.dataset"):
        first = build_dataset(cfg, progress=False, n_jobs=1)
        assert not first.from_cache and "building dataset" in caplog.text
        caplog.clear()
        second = build_dataset(cfg, progress=False, n_jobs=1)
    assert second.from_cache and "loaded from cache" in caplog.text and "building" not in caplog.text
    _same_content(first, second)
    assert first.cache_path.parent == cache and first.cache_path.is_file()
    assert len(first) + len(first.skipped) == 2 * N_PER_SPLIT
    assert first.vectors.shape == (len(first), 140) and first.vectors.dtype == np.float32
    assert np.allclose(first.vectors.max(axis=1), 1.0)
    assert list(first.labels.columns) == ["material_id", "formula", "spacegroup_number", "spacegroup_symbol",
                                          "crystal_system", "mp20_split", "split"]  # fmt: skip
    assert second.config == cfg


def test_parallel_build_equals_serial(cache):
    serial = build_dataset(_cfg(**{"data.max_structures": 150}), progress=False, n_jobs=1)
    for f in cache.glob("dataset-*"):
        f.unlink()
    parallel = build_dataset(_cfg(**{"data.max_structures": 150}), progress=False, n_jobs=2)
    assert not parallel.from_cache
    _same_content(serial, parallel)


def _corrupt(mode: str, npz, manifest) -> None:
    if mode == "truncated":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    elif mode == "flipped byte":
        data = bytearray(npz.read_bytes())
        data[len(data) // 2] ^= 0xFF
        npz.write_bytes(bytes(data))
    elif mode == "garbage manifest":
        manifest.write_text("{ not json")
    elif mode == "missing manifest":
        manifest.unlink()
    elif mode == "stale key":
        meta = json.loads(manifest.read_text())
        meta["key"] = "0" * 64
        manifest.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "mode, reason",
    [
        ("truncated", "checksum"),
        ("flipped byte", "checksum"),
        ("garbage manifest", "Expecting"),
        ("missing manifest", "manifest missing"),
        ("stale key", "stale"),
    ],
)
def test_bad_cache_is_warned_about_and_rebuilt(cache, caplog, mode, reason):
    cfg = _cfg()
    original = build_dataset(cfg, progress=False, n_jobs=1)
    written = original.cache_path.read_bytes()
    _corrupt(mode, original.cache_path, original.cache_path.with_suffix(".json"))
    with caplog.at_level(logging.WARNING, logger="eacnn.datasets.dataset"):
        rebuilt = build_dataset(cfg, progress=False, n_jobs=1)
    assert not rebuilt.from_cache
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unusable" in r.getMessage()]
    assert len(warnings) == 1 and reason in warnings[0].getMessage()
    _same_content(original, rebuilt)
    assert rebuilt.cache_path.read_bytes() == written  # a build writes the same bytes every time
    assert build_dataset(cfg, progress=False, n_jobs=1).from_cache  # the rebuilt cache is good again


def test_changed_config_rebuilds(cache):
    cfg = _cfg()
    base = build_dataset(cfg, progress=False, n_jobs=1)
    wider = build_dataset(cfg.replace(**{"xrd.fwhm": 0.3}), progress=False, n_jobs=1)
    assert not wider.from_cache and wider.key != base.key
    np.testing.assert_array_equal(wider.ids, base.ids)
    assert not np.allclose(wider.vectors, base.vectors)
    longer = build_dataset(cfg.replace(**{"model.r_max": 6.0}), progress=False, n_jobs=1)
    assert not longer.from_cache and longer._a["edge_index"].shape[1] > base._a["edge_index"].shape[1]
    assert build_dataset(cfg, progress=False, n_jobs=1).from_cache  # the first one is still there


def test_changed_table_rebuilds(cache):
    cfg = _cfg()
    table = load_embedded(limit=N_PER_SPLIT)
    base = build_dataset(cfg, table, progress=False, n_jobs=1)
    table.loc[3, "frac_coords"] = table.loc[3, "frac_coords"].replace("0.5", "0.49", 1)
    assert not build_dataset(cfg, table, progress=False, n_jobs=1).from_cache
    assert base.key != build_dataset(cfg, table, progress=False, n_jobs=1).key


# ---------------------------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------------------------
def test_splits(smoke):
    labels = smoke.labels
    assert set(smoke.split) <= set(SPLITS)
    assert (labels["mp20_split"] == "test").equals(labels["split"] == "test")
    n_pool = int((labels["mp20_split"] == "val").sum())
    assert len(smoke.indices("val")) == round(0.1 * n_pool)
    together = np.sort(np.concatenate([smoke.indices(s) for s in SPLITS]))
    np.testing.assert_array_equal(together, np.arange(len(smoke)))
    with pytest.raises(ValueError, match="'validation'"):
        smoke.indices("validation")


def test_split_assignment_is_seeded_and_order_free():
    ids = np.array([f"mp-{i}" for i in range(200)])
    mp20 = np.array(["val"] * 150 + ["test"] * 50)
    a = assign_splits(mp20, ids, 0.2, seed=0)
    assert (a == "val").sum() == 30 and (a[150:] == "test").all()
    np.testing.assert_array_equal(a, assign_splits(mp20, ids, 0.2, seed=0))
    assert not np.array_equal(a, assign_splits(mp20, ids, 0.2, seed=1))
    order = np.random.default_rng(0).permutation(200)
    np.testing.assert_array_equal(assign_splits(mp20[order], ids[order], 0.2, seed=0), a[order])


# ---------------------------------------------------------------------------------------------------------------
# data hygiene
# ---------------------------------------------------------------------------------------------------------------
def _planted_table() -> pd.DataFrame:
    base = load_embedded(limit=4)
    planted = {
        "disordered": Structure(Lattice.cubic(3.6), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]]),
        "dummy": Structure(Lattice.cubic(3.0), [DummySpecies("X")], [[0, 0, 0]]),
        "too-big": Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]]) * (3, 3, 3),  # 27 sites
        "lonely": Structure(Lattice.cubic(6.0), ["Cs"], [[0, 0, 0]]),  # nearest neighbour 6 Å > r_max
        "tiny": Structure(Lattice.cubic(0.9), ["H"], [[0, 0, 0]]),  # d_100 = 0.9 Å: first reflection at 2θ > 117°
    }
    extra = table_from_structures(list(planted.values()), ids=list(planted), split="test", progress=False)
    broken = base.iloc[[0]].assign(material_id="broken", species='["Tm", "Mg"')  # truncated JSON
    return pd.concat([base, extra, broken], ignore_index=True)


def test_unusable_structures_are_reported(cache, caplog):
    cfg = _cfg(**{"data.disorder": "reject", "data.max_sites": 20})
    with caplog.at_level(logging.WARNING, logger="eacnn.datasets.dataset"):
        ds = build_dataset(cfg, _planted_table(), progress=False, n_jobs=1)
    reasons = ds.skipped.set_index("material_id")["reason"].to_dict()
    assert reasons == {
        "disordered": "disorder",
        "dummy": "unknown element",
        "too-big": "too many sites",
        "tiny": "no reflections",
        "broken": "parse error",
    }
    details = ds.skipped.set_index("material_id")["detail"]
    assert "27 sites > max_sites=20" in details["too-big"] and "X" in details["dummy"]
    # an atom without neighbours inside r_max is kept (its own embedding carries it), not skipped
    assert sorted(ds.ids) == sorted([*load_embedded(limit=4)["material_id"], "lonely"])
    assert "5 of 14 structures skipped" in caplog.text
    assert build_dataset(cfg, _planted_table(), progress=False, n_jobs=1).skipped.equals(ds.skipped)  # cached too

    weighted = build_dataset(cfg.replace(**{"data.disorder": "weighted"}), _planted_table(), progress=False, n_jobs=1)
    assert "disordered" in set(weighted.ids)
    i = int(np.flatnonzero(weighted.ids == "disordered")[0])
    assert not weighted.structure(i).is_ordered
    # occupancy-weighted scattering: the 50/50 Fe/Ni site gives the pattern of the same simple cubic cell
    np.testing.assert_allclose(weighted.vectors[i], XRDSimulator(cfg.xrd).vector(weighted.structure(i)), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# content
# ---------------------------------------------------------------------------------------------------------------
def _edge_lengths(graph) -> np.ndarray:
    send, recv = graph["edge_index"]
    vec = (
        graph["positions"][recv].astype(np.float64)
        - graph["positions"][send]
        + graph["unit_shifts"].astype(np.float64) @ graph["cell"].astype(np.float64)
    )
    return np.sort(np.linalg.norm(vec, axis=1))


def test_graphs_match_recomputed_and_pymatgen(smoke):
    r_max = smoke.config.model.r_max
    for i in range(0, len(smoke), 9):
        cached, structure = smoke.graph(i), smoke.structure(i)
        fresh = structure_graph(structure, r_max)
        assert {k: v.dtype for k, v in cached.items()} == {k: v.dtype for k, v in fresh.items()}
        for name in fresh:
            np.testing.assert_array_equal(cached[name], fresh[name], err_msg=name)
        # independent check of the edges: pymatgen's neighbour list at the same cutoff
        _, _, _, dist = structure.get_neighbor_list(r_max)
        lengths = _edge_lengths(cached)
        assert len(lengths) == len(dist) and lengths.max() <= r_max + 1e-5
        np.testing.assert_allclose(lengths, np.sort(dist), atol=1e-4)


def test_structures_vectors_and_sticks_match_the_source(smoke):
    table = load_embedded(limit=N_PER_SPLIT).set_index("material_id")
    sim = XRDSimulator(smoke.config.xrd)
    for i in range(0, len(smoke), 13):
        s = smoke.structure(i)
        ref = row_to_structure(table.loc[smoke.ids[i]].to_dict())
        assert np.allclose(s.lattice.matrix, ref.lattice.matrix) and np.allclose(s.frac_coords, ref.frac_coords)
        assert s.species == ref.species
        np.testing.assert_allclose(smoke.vectors[i], sim.vector(ref), atol=1e-6)
        tt, inten = smoke.sticks(i)
        tt_ref, inten_ref = sim.sticks(ref)
        np.testing.assert_allclose(tt, tt_ref, atol=1e-4)
        np.testing.assert_allclose(inten, inten_ref, atol=1e-6)
        assert smoke.labels.loc[i, "spacegroup_number"] == table.loc[smoke.ids[i], "spacegroup_number"]


def test_site_permutation_changes_nothing_physical(cache):
    table = load_embedded(limit=6)
    rng = np.random.default_rng(0)
    permuted = table.copy()
    for k, row in table.iterrows():
        species, frac = json.loads(row["species"]), json.loads(row["frac_coords"])
        order = rng.permutation(len(species))
        permuted.loc[k, "species"] = json.dumps([species[j] for j in order])
        permuted.loc[k, "frac_coords"] = json.dumps([frac[j] for j in order])
    a = build_dataset(_cfg(), table, progress=False, n_jobs=1)
    b = build_dataset(_cfg(), permuted, progress=False, n_jobs=1)
    assert a.key != b.key
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)  # XRD is blind to site order
    for i in range(len(a)):
        ga, gb = a.graph(i), b.graph(i)
        assert ga["edge_index"].shape == gb["edge_index"].shape
        np.testing.assert_allclose(_edge_lengths(ga), _edge_lengths(gb), atol=1e-4)
        np.testing.assert_array_equal(np.sort(ga["atomic_numbers"]), np.sort(gb["atomic_numbers"]))


# ---------------------------------------------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------------------------------------------
def test_torch_dataset_and_collate(smoke):
    import torch
    from torch.utils.data import DataLoader, Dataset

    from eacnn.training.loop import _collate, _Pairs  # the training loader's items and batches

    train = smoke.indices("train")
    tds = _Pairs(smoke, train)
    assert isinstance(tds, Dataset) and len(tds) == len(train)
    item = tds[2]
    assert item["index"] == train[2]
    tt, inten = item["sticks"]
    assert item["vector"].shape == (140,) and tt.shape == inten.shape
    assert item["graph"]["edge_index"].dtype == np.int64

    batch = next(iter(DataLoader(tds, batch_size=4, shuffle=False, collate_fn=_collate)))
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == train[:4].tolist()
    assert batch["vector"].shape == (4, 140) and batch["vector"].dtype == torch.float32
    graph = batch["graph"]
    n_nodes = sum(len(smoke.graph(i)["atomic_numbers"]) for i in train[:4])
    n_edges = sum(smoke.graph(i)["edge_index"].shape[1] for i in train[:4])
    assert graph["num_graphs"] == 4 and graph["positions"].shape == (n_nodes, 3)
    assert graph["edge_index"].shape == (2, n_edges) and graph["shifts"].shape == (n_edges, 3)
    send, recv = graph["edge_index"]
    length = (graph["positions"][recv] - graph["positions"][send] + graph["shifts"]).norm(dim=1)
    assert float(length.max()) <= smoke.config.model.r_max + 1e-4
    assert len(batch["sticks"]) == 4 and batch["sticks"][1][0].shape == smoke.sticks(train[1])[0].shape


def test_import_is_light():
    code = "import sys, eacnn.datasets.dataset; print('torch' in sys.modules, 'mace' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------------------------
# leakage
# ---------------------------------------------------------------------------------------------------------------
def test_cross_split_duplicates_finds_a_planted_copy(cache):
    base = load_embedded(limit=3)
    train_rows, test_rows = base[base["split"] == "val"], base[base["split"] == "test"]
    original = row_to_structure(train_rows.iloc[0])
    copy = original * (2, 1, 1)  # a supercell, shifted: the same crystal in another setting
    copy.translate_sites(list(range(len(copy))), [0.1, 0.2, 0.3])
    planted = table_from_structures([copy], ids=["copy"], split="test", progress=False)
    ds = build_dataset(_cfg(), pd.concat([train_rows, test_rows, planted], ignore_index=True), progress=False, n_jobs=1)
    pairs = count_cross_split_duplicates(ds, progress=False)
    expected = {"train_id": train_rows.iloc[0]["material_id"], "test_id": "copy"}
    assert pairs.to_dict("records") == [{**expected, "formula": original.composition.reduced_formula}]


# ---------------------------------------------------------------------------------------------------------------
# other sources
# ---------------------------------------------------------------------------------------------------------------
def test_cif_folder_source_reports_unreadable_files(cache, tmp_path):
    import shutil
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures"
    folder = tmp_path / "cifs"
    folder.mkdir()
    for f in [*(fixtures / "cifs").glob("*.cif"), fixtures / "bad_cifs" / "garbage.cif"]:
        shutil.copy(f, folder / f.name)
    ds = build_dataset(_cfg(**{"data.source": str(folder)}), progress=False, n_jobs=1)
    assert sorted(ds.ids) == ["Li2O_225", "MnO2_164", "TiO2_136"] and set(ds.split) == {"test"}
    assert ds.skipped[["material_id", "reason"]].values.tolist() == [["garbage", "read error"]]
    assert ds.labels.set_index("material_id").loc["TiO2_136", "spacegroup_number"] == 136


def test_bad_data_settings_are_config_errors(cache):
    from eacnn.errors import ConfigError

    with pytest.raises(ConfigError, match="no/such/folder"):
        build_dataset(_cfg(**{"data.source": "no/such/folder"}), progress=False)
    with pytest.raises(ConfigError, match="'sometimes'"):
        build_dataset(_cfg(**{"data.disorder": "sometimes"}), progress=False)
    with pytest.raises(ConfigError, match="val_fraction=1.0"):
        build_dataset(_cfg(**{"data.val_fraction": 1.0}), progress=False)
