"""Reference collections as users bring them: folders searched recursively, .cif.gz, any case, zip and tar archives
read streaming, messy files reported with their reason and never fatal."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from eacnn.datasets.structures import cif_entries, read_cif_folder

CIFS = Path(__file__).parent / "fixtures" / "cifs"
GOOD = sorted(CIFS.glob("*.cif"))


def _messy() -> dict[str, bytes]:
    """name -> bytes: the fixture CIFs under nested folders, one gzipped, one upper case, a disordered site, and
    broken files of three kinds."""
    texts = {p.stem: p.read_text() for p in GOOD}
    first = next(iter(texts.values()))
    out = {f"1/00/{name}.cif": text.encode() for name, text in texts.items()}
    stem = GOOD[0].stem
    out[f"2/{stem}_gz.cif.gz"] = gzip.compress(first.encode())
    out[f"2/{stem}_UPPER.CIF"] = first.encode()
    out["3/empty.cif"] = b""
    out["3/garbage.cif"] = b"\x00\x01 not a cif at all"
    out["3/no_cell.cif"] = "\n".join(l for l in first.splitlines() if "_cell_length_a" not in l).encode()
    out["README.txt"] = b"not a structure"
    from eacnn.datasets.structures import read_cif

    out[f"4/{stem}_pymatgen.json"] = json.dumps(read_cif(GOOD[0]).as_dict()).encode()  # pymatgen JSON
    out["4/not_a_structure.json"] = b'{"a": 1}'
    return out


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    files = _messy()
    folder = root / "folder"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    with zipfile.ZipFile(root / "cod.zip", "w") as z:
        for name, data in files.items():
            z.writestr(f"cif/{name}", data)
    with tarfile.open(root / "cod.tar.xz", "w:xz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cif/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return {"folder": folder, "zip": root / "cod.zip", "tar": root / "cod.tar.xz"}


@pytest.mark.parametrize("kind", ["folder", "zip", "tar"])
def test_every_cif_is_read_and_every_broken_one_reported(collections, kind):
    found = read_cif_folder(collections[kind], progress=False)
    assert len(found.table) == len(GOOD) + 3  # the good files, the gzipped, upper-case and JSON copies
    assert sorted(name for name, _ in found.skipped) == ["empty", "garbage", "no_cell", "not_a_structure"]
    reasons = dict(found.skipped)
    assert "_cell_length_a is missing" in reasons["no_cell"] and "not a CIF" in reasons["garbage"]
    assert not any(name.endswith(".txt") for name, _ in cif_entries(collections[kind]))


def test_database_build_from_an_archive_names_what_it_skipped(collections, tmp_path):
    out = tmp_path / "db"
    proc = subprocess.run([sys.executable, "-m", "eacnn", "database", "build", str(collections["zip"]), "--out",
                           str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n"] == len(GOOD) + 3 and manifest["skipped"] == 4
    report = (out / "skipped.csv").read_text()
    assert all(name in report for name in ("empty", "garbage", "no_cell", "not_a_structure"))
    assert "skipped.csv" in proc.stdout


def test_dedupe_keeps_one_entry_of_each_crystal(tmp_path):
    """Two files of one crystal (one in a supercell setting) and a different crystal: ``--dedupe`` keeps two entries
    and names the duplicate in skipped.csv."""
    from pymatgen.io.cif import CifWriter

    from eacnn.datasets.structures import read_cif

    src = tmp_path / "cifs"
    src.mkdir()
    first = GOOD[0]
    (src / first.name).write_bytes(first.read_bytes())
    bigger = read_cif(first)
    bigger.make_supercell([1, 1, 2])
    CifWriter(bigger).write_file(src / f"{first.stem}_supercell.cif")
    (src / GOOD[1].name).write_bytes(GOOD[1].read_bytes())
    out = tmp_path / "db"
    proc = subprocess.run([sys.executable, "-m", "eacnn", "database", "build", str(src), "--out", str(out), "--dedupe"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n"] == 2 and manifest["skipped"] == 1
    report = (out / "skipped.csv").read_text()
    assert "duplicate" in report and f"the same crystal as {first.stem}" in report


def test_a_build_in_blocks_gives_the_one_block_arrays(collections, tmp_path, monkeypatch):
    """Memory bounded by the block: a collection built two structures at a time (each block its own data set,
    reduced to arrays and let go) gives the labels, sticks, vectors and reflections of one block exactly, the
    embeddings to float32 rounding (the model batches them differently), and its getters rebuild each structure
    without the data sets."""
    import numpy as np

    from eacnn.config import Config
    from eacnn.retrieval.database import _from_datasets
    from eacnn.training.checkpoint import load_pretrained

    monkeypatch.setenv("EACNN_HOME", str(tmp_path / "home"))
    model = load_pretrained()
    cfg = Config.cpu()
    whole = _from_datasets([str(collections["folder"])], model, cfg, progress=False, block=10_000)
    blocks = _from_datasets([str(collections["folder"])], model, cfg, progress=False, block=2)
    assert whole[0].equals(blocks[0]) and len(whole[0]) == len(GOOD) + 3
    np.testing.assert_allclose(whole[1], blocks[1], atol=1e-6)  # float32 sums batched differently
    np.testing.assert_array_equal(whole[3], blocks[3])
    for key in ("offsets", "two_theta", "area"):
        np.testing.assert_array_equal(whole[2][key], blocks[2][key])
    for key in ("offsets", "hkl", "area", "metric"):
        np.testing.assert_array_equal(whole[4][key], blocks[4][key])
    assert sorted(r[1] for r in whole[5]) == sorted(r[1] for r in blocks[5])
    assert blocks[6][0]().composition == whole[6][0]().composition
