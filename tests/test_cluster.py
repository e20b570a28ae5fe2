"""Building beyond one process: finished chunks survive an interruption, and a Dask cluster of two worker
processes gives the same data set as a local build."""

from __future__ import annotations

import numpy as np
import pytest

from eacnn.config import Config


@pytest.fixture(scope="module")
def table():
    from eacnn.datasets.structures import load_embedded

    return load_embedded("val", limit=300)  # three chunks of CHUNK_ROWS


def _arrays(ds) -> dict:
    return {name: np.asarray(ds._a[name]) for name in ds._a}


def _cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("EACNN_CACHE", str(tmp_path / "cache"))
    return Config.smoke()


def test_an_interrupted_build_resumes_without_redoing_finished_chunks(table, tmp_path, monkeypatch):
    import eacnn.datasets.dataset as dataset

    cfg = _cfg(tmp_path, monkeypatch)
    real, calls = dataset._build_chunk, []

    def crash_on_third(task):
        calls.append(task[0][0]["material_id"])
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return real(task)

    monkeypatch.setattr(dataset, "_build_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        dataset.build_dataset(cfg, structures_table=table, progress=False, n_jobs=1)
    calls.clear()
    monkeypatch.setattr(dataset, "_build_chunk", lambda task: calls.append(task[0][0]["material_id"]) or real(task))
    resumed = dataset.build_dataset(cfg, structures_table=table, progress=False, n_jobs=1)
    assert len(calls) == 1  # the two finished chunks were read back, only the third was built
    assert not dataset._partial_dir(resumed.key).exists()  # kept only until the data set is saved
    monkeypatch.setenv("EACNN_CACHE", str(tmp_path / "fresh"))
    fresh = dataset.build_dataset(cfg, structures_table=table, progress=False, n_jobs=1)
    a, b = _arrays(resumed), _arrays(fresh)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_local_dask_cluster_builds_the_same_data_set(table, tmp_path, monkeypatch):
    pytest.importorskip("dask.distributed")
    from eacnn.datasets.dataset import build_dataset

    cfg = _cfg(tmp_path, monkeypatch)
    local = build_dataset(cfg, structures_table=table, progress=False, n_jobs=1)
    monkeypatch.setenv("EACNN_CACHE", str(tmp_path / "cluster"))
    remote = build_dataset(cfg, structures_table=table, progress=False, cluster="local:2")
    a, b = _arrays(local), _arrays(remote)
    assert not remote.from_cache and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("address", ["local:0", "localhost:8786", "http://x:1", "local:two"])
def test_a_bad_cluster_address_is_refused_first(address):
    from eacnn.datasets.cluster import check_address
    from eacnn.errors import EACNNError

    with pytest.raises(EACNNError, match="tcp://host:8786"):
        check_address(address)


def test_database_build_on_a_local_cluster_as_users_run_it(tmp_path, monkeypatch):
    """`eacnn database build FOLDER --out DB --cluster local:2` in a real subprocess writes a database whose
    embeddings equal a local build's, byte for byte."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("dask.distributed")
    cifs = Path(__file__).parent / "fixtures" / "cifs"
    src = tmp_path / "cifs"
    shutil.copytree(cifs, src)
    from eacnn.cli import main

    # the local build in this process (the reference), the cluster build as a user runs it
    monkeypatch.setenv("EACNN_CACHE", str(tmp_path / "c-local"))
    assert main(["database", "build", str(src), "--out", str(tmp_path / "local")]) == 0
    proc = subprocess.run([sys.executable, "-m", "eacnn", "database", "build", str(src), "--out",
                           str(tmp_path / "cluster"), "--cluster", "local:2"], capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "EACNN_CACHE": str(tmp_path / "c-cluster")})
    assert proc.returncode == 0, proc.stderr
    local, remote = (json.loads((tmp_path / n / "manifest.json").read_text())["files"] for n in ("local", "cluster"))
    assert local["embeddings.npy"] == remote["embeddings.npy"] and local["sticks.npz"] == remote["sticks.npz"]
