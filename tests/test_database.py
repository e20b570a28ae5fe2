"""Saved databases and the numpy pattern tower: equal to the torch model, atomic, verified, large ones indexed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eacnn.errors import EACNNError
from eacnn.retrieval.database import EXACT_LIMIT, LABEL_COLUMNS, open_database, write_database
from eacnn.retrieval.pattern_tower import PatternTower, export_tower


@pytest.fixture(scope="module")
def model():
    from eacnn.training.checkpoint import load_pretrained

    return load_pretrained()


@pytest.fixture(scope="module")
def tower(model):
    return export_tower(model)


def _labels(n: int) -> pd.DataFrame:
    return pd.DataFrame({"material_id": [f"x-{i}" for i in range(n)], "formula": ["MnO"] * n,
                         "spacegroup_symbol": ["Fm-3m"] * n, "spacegroup_number": [225] * n,
                         "crystal_system": ["cubic"] * n, "source": ["test"] * n,
                         "elements": ["Mn O" if i % 2 else "Li Mn O" for i in range(n)]})


def test_numpy_tower_equals_the_torch_model(model, tower):
    from eacnn.datasets.structures import load_embedded, row_to_structure
    from eacnn.physics.xrd import XRDSimulator

    rng = np.random.default_rng(0)
    sim = XRDSimulator()
    real = np.stack([sim.vector(row_to_structure(r)) for r in load_embedded("test", limit=8).to_dict("records")])
    noisy = np.clip(real + rng.normal(0, 0.02, real.shape), 0, None)
    for x in (real, noisy, real[:1]):
        expect = model.encode_patterns(x, progress=False).numpy()
        np.testing.assert_allclose(PatternTower(tower)(x), expect, atol=2e-5)


def test_numpy_tower_refuses_bad_patterns(tower):
    from eacnn.errors import PatternError

    with pytest.raises(PatternError, match="NaN"):
        PatternTower(tower)(np.full(140, np.nan))
    with pytest.raises(PatternError, match="positive"):
        PatternTower(tower)(np.zeros(140))


def test_write_open_search_and_verify(tmp_path, tower):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 256)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sticks = {"offsets": np.arange(0, 51) * 2, "two_theta": np.tile([30.0, 40.0], 50), "area": np.ones(100)}
    folder = write_database(tmp_path / "db", _labels(50), emb, tower, {"threshold": 0.7}, "abc", ["test"], sticks,
                            np.ones((50, 140)))
    db = open_database(folder, verify=True)
    assert len(db) == 50 and db.threshold == 0.7 and db.manifest["index"]["kind"] == "exact"
    sim, rows = db.scores(emb[7], 3)
    assert rows[0] == 7 and np.isclose(sim[0], 1.0, atol=1e-5) and (np.diff(sim) <= 0).all()
    keep = np.array(["Li" not in e for e in db.elements])
    sim, rows = db.scores(emb[8], 5, keep)
    assert keep[rows].all()
    np.testing.assert_array_equal(db.sticks(3)[0], [30.0, 40.0])
    assert not db.has_reflections  # written without: searches refine lattice scales only
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary folder renamed into place
    # a changed file is caught by verification, a foreign folder is refused with what to do
    (folder / "labels.csv.gz").write_bytes(b"garbage")
    with pytest.raises(EACNNError, match="SHA-256"):
        open_database(folder, verify=True)
    with pytest.raises(EACNNError, match="eacnn database build"):
        open_database(tmp_path)


def _small_database(folder: Path, tower) -> Path:
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(20, 256)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sticks = {"offsets": np.arange(0, 21) * 2, "two_theta": np.tile([30.0, 40.0], 20), "area": np.ones(40)}
    return write_database(folder, _labels(20), emb, tower, {"threshold": 0.7}, "abc", ["test"], sticks)


@pytest.mark.parametrize("damage", ["flip a bit of the embeddings", "edit a formula", "truncate the sticks",
                                    "delete a file"])
def test_a_damaged_or_edited_database_is_refused_on_open(tmp_path, tower, damage):
    """Opened after it was verified once (so a stamp exists), then damaged within the same second: still caught."""
    import gzip

    folder = _small_database(tmp_path / "db", tower)
    open_database(folder)
    if damage.startswith("flip"):
        data = bytearray((folder / "embeddings.npy").read_bytes())
        data[-7] ^= 0x40
        (folder / "embeddings.npy").write_bytes(bytes(data))
    elif damage.startswith("edit"):
        text = gzip.decompress((folder / "labels.csv.gz").read_bytes()).replace(b"MnO", b"MgO")
        (folder / "labels.csv.gz").write_bytes(gzip.compress(text))
    elif damage.startswith("truncate"):
        (folder / "sticks.npz").write_bytes((folder / "sticks.npz").read_bytes()[:100])
    else:
        (folder / "tower.npz").unlink()
    with pytest.raises(EACNNError, match="damaged") as info:
        open_database(folder)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_verified_files_are_not_hashed_again(tmp_path, tower, monkeypatch):
    import os

    import eacnn.retrieval.database as database

    folder = _small_database(tmp_path / "db", tower)
    old = 1_000_000_000  # files last changed long before the stamp: trusted by size and mtime
    for f in folder.iterdir():
        os.utime(f, ns=(old, old))
    open_database(folder)  # hashes every file and remembers them
    calls = []
    monkeypatch.setattr(database, "sha256_of", lambda p: calls.append(p) or "x")
    open_database(folder)
    assert calls == []
    os.utime(folder / "labels.csv.gz", ns=(old + 1, old + 1))  # touched: hashed again (and refused: digest "x")
    with pytest.raises(EACNNError, match="labels.csv.gz"):
        open_database(folder)


def test_the_cache_rebuilds_after_damage_and_is_used_read_only(tmp_path, tower, monkeypatch, caplog):
    import errno

    import eacnn.retrieval.database as database

    folder = tmp_path / "cache" / "db"
    built = []

    def build():
        built.append(1)
        _small_database(folder, tower)

    database.cached_database(folder, build)
    (folder / "embeddings.npy").write_bytes(b"damaged")
    db = database.cached_database(folder, build)
    assert len(built) == 2 and len(db) == 20 and "building it again" in caplog.text

    def read_only(*args, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(args[0]))

    monkeypatch.setattr(database, "open", read_only, raising=False)  # the lock file cannot be created
    assert len(database.cached_database(folder, build)) == 20 and len(built) == 2  # used as it is
    with pytest.raises(EACNNError, match="cannot be written.*EACNN_HOME"):
        database.cached_database(tmp_path / "cache" / "other", build)


def test_write_database_never_replaces_a_folder_it_did_not_write(tmp_path, tower):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(EACNNError, match="is not an eacnn database"):
        _small_database(tmp_path / "mine", tower)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    _small_database(tmp_path / "empty", tower)  # an empty folder, then its own output, may be replaced
    assert len(open_database(_small_database(tmp_path / "empty", tower))) == 20


def test_indexed_reflections_round_trip(tmp_path, tower):
    """Each candidate's reflections one by one (for the cell fit) come back as written; a candidate without any
    reads as None."""
    from pymatgen.core import Lattice, Structure

    from eacnn.physics.xrd import indexed_reflections
    from eacnn.retrieval.database import reflections_arrays

    structures = [Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]]),
                  Structure(Lattice.hexagonal(3.2, 5.2), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]])]
    refl = indexed_reflections(structures) + [None]
    emb = np.eye(3, 256, dtype=np.float32)
    sticks = {"offsets": np.arange(0, 4) * 2, "two_theta": np.tile([30.0, 40.0], 3), "area": np.ones(6)}
    folder = write_database(tmp_path / "db", _labels(3), emb, tower, {"threshold": 0.7}, "abc", ["test"], sticks,
                            reflections=reflections_arrays(refl))
    db = open_database(folder, verify=True)
    assert db.has_reflections and db.reflections(2) is None
    for row in (0, 1):
        got = db.reflections(row)
        np.testing.assert_array_equal(got.hkl, refl[row].hkl)
        np.testing.assert_allclose(got.area, refl[row].area, rtol=1e-6)
        np.testing.assert_array_equal(got.metric, refl[row].metric)


@pytest.mark.slow
def test_large_database_gets_an_index_with_stated_recall(tmp_path, tower):
    faiss = pytest.importorskip("faiss")  # noqa: F841
    rng = np.random.default_rng(2)
    n, d = 150_000, 256
    centres = rng.normal(size=(3000, d)).astype(np.float32)  # clustered, as real structure embeddings are
    emb = centres[rng.integers(0, 3000, n)] + 0.3 * rng.normal(size=(n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert n > EXACT_LIMIT
    folder = write_database(tmp_path / "big", _labels(n), emb, tower, {"threshold": 0.7}, "abc", ["synthetic"])
    db = open_database(folder)
    info = db.manifest["index"]
    assert info["kind"] == "ivf" and info["recall_at_30"] >= 0.99 and info["recall_at_10"] >= 0.95
    hits = sum(int(db.scores(emb[i], 10)[1][0] == i) for i in range(0, n, n // 50))
    assert hits >= 48  # a candidate's own embedding finds it


def test_labels_must_have_every_column(tmp_path, tower):
    with pytest.raises(EACNNError, match="columns"):
        write_database(tmp_path / "db", _labels(3).drop(columns="elements"), np.eye(3, 256), tower, {}, "x", [])
    assert set(LABEL_COLUMNS) == set(_labels(1).columns)


@pytest.fixture(scope="module")
def small_db(tmp_path_factory, model, tower):
    """A saved database of 120 embedded test structures, embedded by the shipped model."""
    from eacnn.datasets.structures import load_embedded, row_to_structure
    from eacnn.physics.xrd import simulate_batch
    from eacnn.retrieval.database import _element_string, _sticks_arrays

    table = load_embedded("test", limit=120)
    structures = [row_to_structure(r) for r in table.to_dict("records")]
    sim = simulate_batch(structures, progress=False)
    emb = model.encode_structures(structures, progress=False).numpy()
    labels = table.assign(source="embedded", elements=table["species"].map(_element_string))
    folder = write_database(tmp_path_factory.mktemp("db") / "small", labels, emb, tower,
                            {"similarity": 0.5, "agreement": 0.9, "threshold": 0.9}, "sha", ["embedded"],
                            _sticks_arrays(sim.stick_two_theta, sim.stick_intensity), sim.vectors)
    return open_database(folder), sim


@pytest.mark.parametrize("eps", [-0.02, 0.0, 0.025])
def test_identify_undoes_a_lattice_mismatch(small_db, eps):
    from eacnn.physics.perturb import bragg_shift, profile_patterns
    from eacnn.retrieval.identify import identify

    db, sim = small_db
    hits_right = 0
    for k in range(0, 120, 12):
        tt = bragg_shift(sim.stick_two_theta[k], eps, 0.0, 1.5406)
        y = profile_patterns([(tt, sim.stick_intensity[k])])[0]
        result = identify(y / y.max(), None, db, top=5, rerank=5)
        hits_right += result.hits["row"].iloc[0] == k
        if result.hits["row"].iloc[0] == k:
            assert result.hits["strain"].iloc[0] == pytest.approx(eps, abs=0.004)  # the fitted mismatch (0.5° bins)
    assert hits_right >= 9
    assert result.score_name == "agreement" and result.threshold == 0.9
    assert list(result.hits["rank"]) == [1, 2, 3, 4, 5]


def test_identify_filters_elements_and_reads_partial_scans(small_db):
    from eacnn.retrieval.identify import identify

    db, sim = small_db
    k = 30
    allowed = sorted(db.elements[k])
    covered = np.zeros(140, bool)
    covered[20:100] = True  # 20–60° only
    y = np.where(covered, sim.vectors[k], 0.0)
    result = identify(y, covered, db, top=3, elements=allowed, rerank=3)
    assert all(db.elements[r] <= set(allowed) for r in result.hits["row"])
    assert result.hits["row"].iloc[0] == k
    with pytest.raises(EACNNError, match="made only of"):
        identify(sim.vectors[k], None, db, elements=["Xe"])


def test_cached_database_is_built_once_by_processes_asking_at_once(tmp_path):
    """Two processes asking for the same cached database at once (chapters side by side): one builds, the other
    waits for it and opens the same folder; neither fails or sees a half-written folder."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_database import _labels
        from eacnn.retrieval.database import cached_database, write_database
        folder = __import__("pathlib").Path({str(tmp_path / "db")!r})
        def build():
            time.sleep(1.0)  # long enough for the other process to arrive while this one builds
            (folder.parent / f"built-{{sys.argv[1]}}").touch()
            emb = np.eye(8, 16, dtype=np.float32)
            write_database(folder, _labels(8), emb, {{"stem.w": np.zeros((1, 1, 7), np.float32)}},
                           {{"threshold": 0.7}}, "abc", ["test"])
        print(len(cached_database(folder, build)))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    assert [o.strip() for o, _ in outs] == ["8", "8"]
    assert len(list(tmp_path.glob("built-*"))) == 1  # built once


def test_the_embedded_structures_are_simulated_once_for_every_database_that_holds_them(tmp_path, monkeypatch):
    """The default database, the embedded set beside a user's folders and ``database build embedded ...`` share
    one simulation of the embedded structures (cached by structures, configuration and simulator code)."""
    import eacnn.physics.xrd as xrd
    from eacnn.config import Config
    from eacnn.datasets.structures import load_embedded
    from eacnn.retrieval import database

    monkeypatch.setenv("EACNN_CACHE", str(tmp_path / "cache"))
    ids = load_embedded("test", limit=12)["material_id"].to_numpy()
    emb = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    first = database._embedded_from_shipped(ids, emb, Config.cpu(), progress=False)
    assert len(list((tmp_path / "cache").glob("embedded-arrays-*.npz"))) == 1
    monkeypatch.setattr(xrd, "simulate_batch", lambda *a, **k: pytest.fail("simulated again"))
    second = database._embedded_from_shipped(ids, emb, Config.cpu(), progress=False)
    pd.testing.assert_frame_equal(first[0], second[0])
    for a, b in zip(first[1:], second[1:]):
        if isinstance(a, dict):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        else:
            assert np.array_equal(a, b)
    # another configuration of the simulator is another cache entry, not a stale hit
    monkeypatch.undo()
    monkeypatch.setenv("EACNN_CACHE", str(tmp_path / "cache"))
    database._embedded_from_shipped(ids, emb, Config.cpu().replace(**{"xrd.fwhm": 0.3}), progress=False)
    assert len(list((tmp_path / "cache").glob("embedded-arrays-*.npz"))) == 2


def test_database_build_needs_no_structure_tower_and_shares_the_search_cache(tmp_path, monkeypatch, tower):
    """``database build embedded`` exports the pattern tower from the checkpoint without building the model (the
    structure tower's mace import takes seconds); the database it writes is linked into the search cache, and the
    next build of the same sources is placed from there instead of built again."""
    import os

    import eacnn.training.checkpoint as checkpoint
    from eacnn.paths import cache_dir
    from eacnn.retrieval import database

    for f in cache_dir().glob("embedded-arrays-*.npz"):  # the simulated patterns only: no database is reused
        os.link(f, tmp_path / f.name)
    monkeypatch.setenv("EACNN_CACHE", str(tmp_path))
    monkeypatch.setattr(checkpoint, "model_from_checkpoint", lambda *a, **k: pytest.fail("built the whole model"))
    first = database.build_database(["embedded"], tmp_path / "first", progress=False)
    with np.load(first / "tower.npz") as f:
        assert f.files and all(np.array_equal(f[k], tower[k]) for k in tower)
    cached = list((tmp_path / "databases").iterdir())
    cached = [p for p in cached if p.is_dir()]
    assert len(cached) == 1 and os.path.samefile(cached[0] / "embeddings.npy", first / "embeddings.npy")
    monkeypatch.setattr(database, "_build_database", lambda *a, **k: pytest.fail("built again"))
    second = database.build_database(["embedded"], tmp_path / "second", progress=False)
    assert json.loads((second / "manifest.json").read_text()) == json.loads((first / "manifest.json").read_text())
    assert len(open_database(second)) == 18093
    # a damaged cache entry is not placed: the next build builds
    (cached[0] / "labels.csv.gz").write_bytes(b"damaged")
    with pytest.raises(pytest.fail.Exception, match="built again"):
        database.build_database(["embedded"], tmp_path / "third", progress=False)


def test_cosine_recall_joins_search_matchs_best_to_the_shortlist(small_db):
    """With ``cosine_recall`` the refined shortlist holds the candidates of best binned cosine even where the
    model's similarity ranks them last (here: a query whose embedding is pointed away from the right entry by
    leaving that entry's embedding out of the model's top)."""
    from eacnn.retrieval.identify import identify
    from eacnn.retrieval.query import multiscale_best, query_embeddings

    db, sim = small_db
    k = 42
    y = sim.vectors[k] / sim.vectors[k].max()
    z = query_embeddings(lambda a, m: db.tower(a, None), y, None, db.manifest and __import__(
        "eacnn.config", fromlist=["XRDConfig"]).XRDConfig())
    sims, _ = multiscale_best(z, np.asarray(db.embeddings))
    worst = np.argsort(sims)[:60]  # the model's 60 least similar entries, plus the right one
    exclude = np.ones(len(db), bool)
    exclude[worst] = False
    exclude[k] = False
    # rerank 2 from 61 candidates: the right one is refined only if the model ranks it in its top 2 or the cosine
    # recall brings it in (its cosine with its own pattern is 1)
    with_recall = identify(y, None, db, top=3, rerank=2, exclude=exclude, cosine_recall=1)
    assert with_recall.hits["row"].iloc[0] == k
    assert with_recall.hits["cosine"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    without = identify(y, None, db, top=3, rerank=2, exclude=exclude, cosine_recall=0)
    assert "cosine" not in without.hits
    model_top2 = set(np.flatnonzero(~exclude)[np.argsort(-sims[~exclude], kind="stable")[:2]])
    assert (k in model_top2) == (without.hits["row"].iloc[0] == k)


def test_multiscale_cosine_finds_a_rescaled_pattern_and_reads_in_chunks():
    from eacnn.config import XRDConfig
    from eacnn.physics.perturb import bragg_shift, profile_patterns
    from eacnn.retrieval.query import RECALL_SCALES, multiscale_cosine, recall_scales

    rng = np.random.default_rng(0)
    tt = rng.uniform(15, 75, 12)
    area = rng.uniform(0.1, 1.0, 12)
    ref = profile_patterns([(tt, area)])[0]
    query = profile_patterns([(bragg_shift(tt, -0.02, 0.0, 1.5406), area)])[0]  # a cell 2 % smaller
    others = rng.uniform(0, 1, (7, len(ref))).astype(np.float32)
    vectors = np.vstack([others[:3], ref[None], others[3:]]).astype(np.float32)
    best, scale = multiscale_cosine(vectors, query, None, XRDConfig())
    assert int(np.argmax(best)) == 3
    assert scale[3] == pytest.approx(1 / 0.98, abs=0.0026)  # read with d-spacings x 1.02: the 0.25 % grid holds it
    again, scale2 = multiscale_cosine(vectors, query, None, XRDConfig(), chunk=3)
    np.testing.assert_allclose(again, best, rtol=1e-5)
    np.testing.assert_array_equal(scale2, scale)
    assert len(RECALL_SCALES) == 33 and RECALL_SCALES[0] == 0.96 and RECALL_SCALES[-1] == 1.04
    np.testing.assert_allclose(recall_scales(np.array([0.98, 1.0, 1.02])), np.linspace(0.98, 1.02, 9))
