"""Bad input, one row each: what a user may throw at eacnn, and the clear error it must get.

Command-line rows run the real ``eacnn`` in a subprocess and check the exit code (2), that the last line of stderr
is one ``eacnn <command>: error: ...`` line holding the fragment (the bad value, the file), and that no traceback
appears. Almost all of them fail while the arguments and named files are checked, before torch or any data set is
loaded, so the table runs in seconds. API rows call the function and check the exception and its message.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from eacnn.errors import CheckpointError, ConfigError, EACNNError, IntegrityError, PatternError, StructureError
from eacnn.paths import DATA_DIR, MEASURED_DIR
from eacnn.physics.xrd import XRDSimulator

FIXTURES = Path(__file__).parent / "fixtures"
CIFS = FIXTURES / "cifs"
MNO = MEASURED_DIR / "Example__MnO.xy.gz"

OVERLAP_CIF = """data_overlap
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_symmetry_equiv_pos_as_xyz
 'x, y, z'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Na1 Na 0 0 0 1
Cl1 Cl {x} 0 0 1
Cl2 Cl 0.5 0.5 0.5 1
"""


def _scan(two_theta, intensity) -> str:
    return "".join(f"{t:.4f} {i:.4f}\n" for t, i in zip(two_theta, intensity))


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    """Every bad file of the table, by name, in one folder."""
    d = tmp_path_factory.mktemp("bad")
    tt = np.arange(10.0, 80.0, 0.02)
    peaks = 10 + 100 * np.exp(-0.5 * ((tt - 35.0) / 0.1) ** 2)
    files = {
        "good.xy": _scan(tt, peaks),
        "empty.xy": "",
        "junk.xy": "\x00\x01\x02 binary \xff junk\n" * 20,
        "sparse.xy": _scan(np.linspace(10, 80, 12), [5, 8, 100, 7, 9, 50, 3, 20, 4, 10, 2, 6]),
        "flat.xy": _scan(tt, np.full(len(tt), 5.0)),
        "nan.xy": _scan(tt, np.where(np.arange(len(tt)) % 3, np.nan, peaks)),
        "narrow.xy": _scan(np.arange(10.0, 20.0, 0.02), 10 + np.arange(500) % 7),
        "degrees200.xy": _scan(tt + 150, peaks),
        "twice.xy": _scan(np.concatenate([tt[:100], tt[:100]]), np.concatenate([peaks[:100], peaks[:100]])),
        "broken.xrdml": "<?xml version='1.0'?><xrdMeasurements><unclosed>",
        "overlap.cif": OVERLAP_CIF.format(x=0),
        "close.cif": OVERLAP_CIF.format(x=0.05),  # 0.2 Å apart, both full: not a physical structure
        "huge.cif": OVERLAP_CIF.format(x=0.25).replace(" 4.0", " 300.0"),  # a 300 Å cube: 6.6e7 reflections
        "notes.txt": "a file, not a folder\n",
        "negocc.cif": OVERLAP_CIF.format(x=0.25).replace("Cl2 Cl 0.5 0.5 0.5 1", "Cl2 Cl 0.5 0.5 0.5 -0.3"),
        "overocc.cif": OVERLAP_CIF.format(x=0.25).replace("Cl2 Cl 0.5 0.5 0.5 1", "Cl2 Cl 0.5 0.5 0.5 1.7"),
        "nocell.cif": OVERLAP_CIF.format(x=0.25).replace("_cell_length_b 4.0\n", ""),
        "nancoord.cif": OVERLAP_CIF.format(x=0.25).replace("Cl2 Cl 0.5 0.5 0.5", "Cl2 Cl 0.5 nan 0.5"),
        "flatcell.cif": OVERLAP_CIF.format(x=0.25).replace("_cell_angle_alpha 90", "_cell_angle_alpha 120")
                                                 .replace("_cell_angle_beta 90", "_cell_angle_beta 120")
                                                 .replace("_cell_angle_gamma 90", "_cell_angle_gamma 120"),
        "fake.pt": "a text file with a checkpoint's name\n",
    }
    out = {}
    for name, text in files.items():
        (d / name).write_text(text, encoding="latin-1")
        out[name] = d / name
    (d / "scan.raw").write_bytes(b"RAW4.00" + bytes(500))  # Bruker's binary format
    out["scan.raw"] = d / "scan.raw"
    (d / "aborted.xrdml").write_text((FIXTURES / "measured" / "synthetic.xrdml").read_text().replace(
        'scanAxis="Gonio" status="Completed"', 'scanAxis="Gonio" status="Aborted"'))
    out["aborted.xrdml"] = d / "aborted.xrdml"
    out["corrupt.xy.gz"] = d / "corrupt.xy.gz"
    payload = gzip.compress(_scan(tt, peaks).encode())
    damaged = bytearray(payload)
    damaged[40:60] = b"\xff" * 20  # the deflate stream, not the header: zlib.error while decompressing
    out["corrupt.xy.gz"].write_bytes(bytes(damaged))
    out["folder"] = d / "folder"
    out["folder"].mkdir()
    out["empty_db"] = d / "empty_db"
    out["empty_db"].mkdir()
    out["one_db"] = d / "one_db"  # a database of one structure
    out["one_db"].mkdir()
    shutil.copy(CIFS / "TiO2_136.cif", out["one_db"])
    out["zeroed.pt"] = d / "zeroed.pt"
    data = bytearray((DATA_DIR / "checkpoints" / "default.pt").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)  # 4 KB zeroed inside a tensor: it would load with one tensor wrong
    out["zeroed.pt"].write_bytes(bytes(data))
    return out


def run_eacnn(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eacnn", *args], capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------------------------
# The command line: (arguments, exit code, fragment of the error line); {name} is a file of the ``bad`` fixture
# ---------------------------------------------------------------------------------------------------------------
CLI_CASES = [
    # -- search: the pattern file
    (["search", "{corrupt.xy.gz}"], 2, "corrupt gzip"),
    (["search", "{empty.xy}"], 2, "empty.xy: empty file"),
    (["search", "{folder}"], 2, "is a folder with no pattern file"),
    (["search", "{folder}/missing.xy"], 2, "missing.xy: no such file"),
    (["search", "{junk.xy}"], 2, "junk.xy: no numeric data"),
    (["search", "{sparse.xy}"], 2, "too sparse"),
    (["search", "{flat.xy}"], 2, "flat pattern"),
    (["search", "{nan.xy}"], 2, "NaN"),
    (["search", "{narrow.xy}"], 2, "covers 14%"),
    (["search", "{degrees200.xy}"], 2, "outside (0, 180)"),
    (["search", "{twice.xy}"], 2, "more than once"),
    (["search", "{broken.xrdml}"], 2, "broken.xrdml: not readable as XRDML"),
    (["search", "{scan.raw}"], 2, "scan.raw: Bruker/Siemens RAW (binary) files are not read by eacnn; export it as .xy"),
    (["search", "{aborted.xrdml}"], 2, "every scan in the file was aborted"),
    (["search", "{aborted.xrdml}", "--scan", "2"], 2, "scan 2 asked for, but the file holds 1 scan(s)"),
    (["search", "{good.xy}", "--scan", "0"], 2, "--scan: expected a whole number >= 1, got '0'"),
    # -- search: the flags
    (["search", "{good.xy}", "--wavelength", "0"], 2, "got '0'"),
    (["search", "{good.xy}", "--wavelength", "-1.5"], 2, "got '-1.5'"),
    (["search", "{good.xy}", "--wavelength", "nan"], 2, "got 'nan'"),
    (["search", "{good.xy}", "--wavelength", "12"], 2, "got '12'"),
    (["search", "{good.xy}", "--wavelength", "Unobtainium"], 2, "'Unobtainium'"),
    (["search", "{good.xy}", "--wavelength", "CuKa"], 2, "'CuKa' is not the scan's Kα1 line"),
    (["search", "{good.xy}", "--top", "0"], 2, "--top: expected a whole number >= 1, got '0'"),
    (["search", "{good.xy}", "--top", "-5"], 2, "got '-5'"),
    (["search", "{good.xy}", "--top", "three"], 2, "got 'three'"),
    (["search", "{good.xy}", "--rerank", "-1"], 2, "--rerank: expected a whole number from 0 to 1000, got '-1'"),
    (["search", "{good.xy}", "--scan-fits", "-1"], 2, "--scan-fits: expected a whole number from 0 to 50, got '-1'"),
    (["search", "{good.xy}", "--scan-fits", "three"], 2, "got 'three'"),
    (["search", "{good.xy}", "--phases", "0"], 2, "--phases: expected 'auto' or a whole number of phases from 1 to 4, got '0'"),
    (["search", "{good.xy}", "--phases", "9"], 2, "--phases: expected 'auto' or a whole number of phases from 1 to 4, got '9'"),
    (["search", "{good.xy}", "--phases", "some"], 2, "got 'some'"),
    (["search", "{good.xy}", "--rerank", "5000"], 2, "got '5000'"),
    (["search", "{good.xy}", "--elements", ""], 2, "--elements: no element symbol in ''"),
    (["search", "{good.xy}", "--elements", ","], 2, "no element symbol"),
    (["search", "{good.xy}", "--elements", "mn,Xx"], 2, "not element symbols: 'Xx'"),
    (["search", "{good.xy}", "--plot", "{folder}/hits.jpg"], 2, "not '.jpg'"),
    (["search", "{good.xy}", "--plot", "{folder}/hits"], 2, "not 'no extension'"),
    (["search", "{good.xy}", "--plot", "{notes.txt}/hits.png"], 2, "notes.txt is a file, not a folder"),
    (["search", "{good.xy}", "--plot", "{folder}"], 2, "must end in .png"),
    (["search", "{good.xy}", "--database", "{empty_db}"], 2, "empty_db': the folder holds no .cif file"),
    (["search", "{good.xy}", "--database", "{folder}/missing"], 2, "is not there"),
    (["search", "{good.xy}", "--database", "{notes.txt}"], 2, "notes.txt is a file"),
    (["search", "{good.xy}", "--checkpoint", "{zeroed.pt}"], 2, "zeroed.pt is corrupt: the zip entry"),
    (["search", "{good.xy}", "--checkpoint", "{folder}/none.pt"], 2, "no checkpoint file at"),
    (["search", "{good.xy}", "--checkpoint", "{folder}"], 2, "is a folder"),
    (["search", "{good.xy}", "--bogus"], 2, "unrecognized arguments: --bogus"),
    # -- database build: --out is new, empty or an eacnn database; nothing else is ever replaced (checked first)
    (["database", "build", "{one_db}", "--out", "{one_db}"], 2, "holds 1 file(s) or folder(s) and is not an eacnn"),
    (["database", "build", "{one_db}", "--out", "{folder}/.."], 2, "and is not an eacnn database"),
    (["database", "build", "{one_db}", "--out", "."], 2, "and is not an eacnn database"),
    (["database", "build", "{one_db}", "--out", "{notes.txt}"], 2, "is a file, not a folder"),
    (["database", "build", "{one_db}", "--out", "/proc/eacnn-db"], 2, "cannot be written"),
    (["database", "build", "{folder}/missing", "--out", "{folder}/db"], 2, "is not there"),
    (["database", "build", "{one_db}", "--out", "{folder}/db2", "--cluster", "nowhere"], 2,
     "--cluster 'nowhere': give a Dask scheduler address"),
    # -- simulate
    (["simulate", "{overlap.cif}"], 2, "overlap.cif: overlapping atoms"),
    (["simulate", "{close.cif}"], 2, "close.cif: overlapping atoms: site 0 (Na) and site 1 (Cl) are 0.200 Å apart"),
    (["simulate", str(FIXTURES / "bad_cifs" / "garbage.cif")], 2, "garbage.cif: not a CIF"),
    (["simulate", "{folder}"], 2, "is a directory, not a CIF file"),
    (["simulate", "{negocc.cif}"], 2, "negocc.cif: atom site 'Cl2' has occupancy '-0.3'; occupancies must lie in (0, 1]"),
    (["simulate", "{overocc.cif}"], 2, "atom site 'Cl2' has occupancy '1.7'"),
    (["simulate", "{nocell.cif}"], 2, "nocell.cif: _cell_length_b is missing; the cell must be given in full"),
    (["simulate", "{nancoord.cif}"], 2, "atom site 'Cl2' has _atom_site_fract_y = 'nan', not a finite number"),
    (["simulate", "{flatcell.cif}"], 2, "flatcell.cif: the cell angles 120.0, 120.0, 120.0° give no volume"),
    (["simulate", str(CIFS / "TiO2_136.cif"), "--wavelength", "0"], 2, "got '0'"),
    (["simulate", str(CIFS / "TiO2_136.cif"), "--wavelength", "nan"], 2, "got 'nan'"),
    (["simulate", str(CIFS / "TiO2_136.cif"), "--wavelength", "Xx"], 2, "unknown wavelength name 'Xx'"),
    (["simulate", str(CIFS / "TiO2_136.cif"), "--b-factor", "nan"], 2, "--b-factor: expected a finite number"),
    (["simulate", str(CIFS / "TiO2_136.cif"), "--b-factor", "-1"], 2, "got '-1'"),
    (["simulate", str(CIFS / "TiO2_136.cif"), "--plot", "{folder}/p.bmp"], 2, "not '.bmp'"),
    (["simulate", "{huge.cif}"], 2, "huge.cif: structure: a cell of 27,000,000 Å³ has about",  # grew past 13 GB
     pytest.mark.skipif(not hasattr(XRDSimulator, "MAX_REFLECTIONS"), reason="no reflection limit: would exhaust memory")),
    # -- build / train: the config is checked before any data is touched
    (["build", "--set", "xrd.step"], 2, "--set expects KEY=VALUE, got 'xrd.step'"),
    (["build", "--set", "xrd.step=0"], 2, "xrd.step must be > 0 degrees, got 0"),
    (["build", "--set", "xrd.wavelength=Mo"], 2, "xrd.wavelength='Mo' has type str"),
    (["build", "--set", "nosuch.field=1"], 2, "has no field 'nosuch'"),
    (["build", "--profile", "huge"], 2, "invalid choice: 'huge'"),
    (["train", "--run-dir", "{notes.txt}"], 2, "is a file, not a run folder"),
]


@pytest.mark.parametrize("args, code, fragment", [pytest.param(*c[:3], id=" ".join(c[0][:3]), marks=c[3:])
                                                   for c in CLI_CASES])
def test_cli_bad_input(bad, args, code, fragment):
    argv = [re.sub(r"\{([^}]+)\}", lambda m: str(bad[m.group(1)]), a) for a in args]
    proc = run_eacnn(*argv, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(rf"eacnn( {args[0]}( build)?)?: error: ", last), proc.stderr  # argparse names the top parser for unknown flags
    assert fragment in last, last
    assert sum(line.startswith("eacnn") for line in proc.stderr.splitlines()) == 1, proc.stderr


# Rows that get past the cheap checks and load torch, the model or a database (seconds each: kept few). Exit code
# 0 rows check stdout instead: a database of one structure is a legitimate, if small, search.
LOADING_CASES = [
    (["search", "{good.xy}", "--checkpoint", "{fake.pt}", "--json"], 2, "fake.pt is corrupt or truncated"),
    (["search", str(MNO), "--database", "{one_db}", "--elements", "Mn"], 2,
     "no structure in the database is made only of ['Mn']"),
    (["search", str(MNO), "--database", "{one_db}", "--top", "5"], 0, "1 candidate\n"),
]


@pytest.mark.parametrize("args, code, fragment", LOADING_CASES, ids=[" ".join(a[2:4]) for a, _, _ in LOADING_CASES])
def test_cli_bad_input_after_loading(bad, args, code, fragment):
    argv = [re.sub(r"\{([^}]+)\}", lambda m: str(bad[m.group(1)]), a) for a in args]
    proc = run_eacnn(*argv)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    if code:
        assert fragment in proc.stderr.strip().splitlines()[-1] and proc.stdout == ""
    else:
        assert fragment in proc.stdout and "TiO2_136" in proc.stdout


def test_ctrl_c_during_a_search_exits_130_in_one_line_and_leaves_no_file(bad, tmp_path):
    out_dir, home = tmp_path / "out", tmp_path / "home"
    out_dir.mkdir()
    plot = out_dir / "hits.png"
    # an empty cache: the search first builds its database (~15 s), so 2 s in it is busy loading and writing
    proc = subprocess.Popen([sys.executable, "-m", "eacnn", "search", str(MNO), "--json", "--plot", str(plot)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EACNN_HOME": str(home)})
    time.sleep(2.0)  # past the argument checks and the pattern, into loading the model and the data
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == "eacnn search: interrupted"
    assert err.count("interrupted") == 1 and out == ""
    assert list(out_dir.iterdir()) == []  # neither the plot nor a temporary file
    assert not [p for p in home.rglob("*") if ".tmp" in p.name]  # no half-written database either


# ---------------------------------------------------------------------------------------------------------------
# The API: (call, exception, fragment of its message)
# ---------------------------------------------------------------------------------------------------------------
def _xrd_config(**kw):
    from eacnn.config import XRDConfig

    return XRDConfig(**kw)


def _read(path, **kw):
    from eacnn.measured import read_pattern

    return read_pattern(path, **kw)


def _grid(path):
    from eacnn.measured import read_pattern, to_model_grid

    return to_model_grid(read_pattern(path))


def _wavelength(value):
    from eacnn.measured import resolve_wavelength

    return resolve_wavelength(value)


def _elements(value):
    from eacnn.datasets.structures import normalize_elements

    return normalize_elements(value)


def _overlapping_structure(distance: float):
    from pymatgen.core import Lattice, Structure

    from eacnn.datasets.structures import check_structure

    s = Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [distance / 4.0, 0, 0], [0.5, 0.5, 0.5]])
    check_structure(s, label="mp-x")


def _simulate_a_path(path):
    from eacnn.physics.xrd import XRDSimulator

    return XRDSimulator().get_pattern(str(path))


def _rank(**kw):
    from eacnn.retrieval.identify import identify

    return identify(np.zeros(140, np.float32), None, None, **kw)  # refused before the database is used


def _load_checkpoint(path):
    from eacnn.training.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _cif_folder(path):
    from eacnn.datasets.structures import read_cif_folder

    return read_cif_folder(path, progress=False)


def _read_cif(path):
    from eacnn.datasets.structures import read_cif

    return read_cif(path)


def _replace(**kw):
    from eacnn.config import Config

    return Config.cpu().replace(**kw)


API_CASES = [
    ("XRDConfig(wavelength='Mo')", lambda b: _xrd_config(wavelength="Mo"), ConfigError, "got 'Mo'"),
    ("XRDConfig(step=0)", lambda b: _xrd_config(step=0), ConfigError, "xrd.step must be > 0"),
    ("XRDConfig(step=-1)", lambda b: _xrd_config(step=-1.0), ConfigError, "got -1.0"),
    ("XRDConfig(b_factor=nan)", lambda b: _xrd_config(b_factor=math.nan), ConfigError, "xrd.b_factor"),
    ("XRDConfig(fwhm=nan)", lambda b: _xrd_config(fwhm=math.nan), ConfigError, "xrd.fwhm"),
    ("XRDConfig(wavelength=0)", lambda b: _xrd_config(wavelength=0.0), ConfigError, "got 0.0"),
    ("XRDConfig(wavelength=True)", lambda b: _xrd_config(wavelength=True), ConfigError, "got True"),
    ("Config.replace(xrd.step=0)", lambda b: _replace(**{"xrd.step": 0.0}), ConfigError, "xrd.step"),
    ("read_pattern(wavelength='0')", lambda b: _read(b["good.xy"], wavelength="0"), PatternError, "good.xy: wave"),
    ("read_pattern(wavelength=nan)", lambda b: _read(b["good.xy"], wavelength=math.nan), PatternError, "nan"),
    ("read_pattern(wavelength=-1)", lambda b: _read(b["good.xy"], wavelength=-1), PatternError, "got -1"),
    ("read_pattern(wavelength='CuKa2')", lambda b: _read(b["good.xy"], wavelength="CuKa2"), PatternError, "Kα2"),
    ("read_pattern(corrupt gz)", lambda b: _read(b["corrupt.xy.gz"]), PatternError, "corrupt gzip"),
    ("read_pattern(directory)", lambda b: _read(b["folder"]), PatternError, "is a directory"),
    ("resolve_wavelength([1.5])", lambda b: _wavelength([1.5]), PatternError, "got [1.5]"),
    ("resolve_wavelength('')", lambda b: _wavelength(""), PatternError, "unknown wavelength name ''"),
    ("to_model_grid(12 points)", lambda b: _grid(b["sparse.xy"]), PatternError, "12 points, median step"),
    ("to_model_grid(10-20 deg)", lambda b: _grid(b["narrow.xy"]), PatternError, "covers 14%"),
    ("normalize_elements('')", lambda b: _elements(""), StructureError, "no element symbol"),
    ("normalize_elements(['Mn', 'Qq'])", lambda b: _elements(["Mn", "Qq"]), StructureError, "'Qq'"),
    ("check_structure(same position)", lambda b: _overlapping_structure(0.0), StructureError, "mp-x: overlapping"),
    ("check_structure(0.3 A apart)", lambda b: _overlapping_structure(0.3), StructureError, "0.300 Å apart"),
    ("read_cif(overlap)", lambda b: _read_cif(b["overlap.cif"]), StructureError, "overlapping atoms"),
    ("read_cif_folder(empty)", lambda b: _cif_folder(b["empty_db"]), StructureError, "no files match"),
    ("XRDSimulator().get_pattern(path)", lambda b: _simulate_a_path(b["overlap.cif"]), (StructureError, TypeError),
     "overlap.cif"),
    ("identify(top=0)", lambda b: _rank(top=0), EACNNError, "got 0"),
    ("identify(elements='')", lambda b: _rank(elements=""), StructureError, "no element symbol"),
    ("load_checkpoint(4 KB zeroed)", lambda b: _load_checkpoint(b["zeroed.pt"]), CheckpointError, "CRC"),
    ("load_checkpoint(directory)", lambda b: _load_checkpoint(b["folder"]), CheckpointError, "is a directory"),
]


@pytest.mark.parametrize("call, error, fragment", [pytest.param(*c[1:4], id=c[0], marks=c[4:]) for c in API_CASES])
def test_api_bad_input(bad, call, error, fragment):
    with pytest.raises(error) as info:
        call(bad)
    assert fragment in str(info.value)


def test_the_table_is_large_enough():
    assert len(CLI_CASES) + len(LOADING_CASES) + len(API_CASES) + 1 >= 40  # + Ctrl-C


# ---------------------------------------------------------------------------------------------------------------
# Integrity of the shipped files, atomic writes
# ---------------------------------------------------------------------------------------------------------------
def test_shipped_files_match_their_recorded_sha256():
    """Recomputes the SHA-256 of every shipped artefact; also fails when one is not recorded."""
    from eacnn.integrity import verify_shipped

    assert verify_shipped() == {}


def test_a_damaged_shipped_checkpoint_is_named_with_what_to_do(tmp_path, monkeypatch):
    import eacnn.integrity as integrity

    data = tmp_path / "data"
    (data / "checkpoints").mkdir(parents=True)
    shutil.copy(integrity.MANIFEST, data / "sha256.json")
    damaged = bytearray((DATA_DIR / "checkpoints" / "default.pt").read_bytes())
    damaged[len(damaged) // 3:len(damaged) // 3 + 4096] = bytes(4096)
    (data / "checkpoints" / "default.pt").write_bytes(bytes(damaged))
    monkeypatch.setattr(integrity, "DATA_DIR", data)
    monkeypatch.setattr(integrity, "MANIFEST", data / "sha256.json")
    with pytest.raises(IntegrityError, match=r"default.pt is damaged or was replaced.*git checkout"):
        integrity.verify_file(data / "checkpoints" / "default.pt")
    from eacnn.training.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(data / "checkpoints" / "default.pt")
    assert set(integrity.verify_shipped()) == {"checkpoints/default.pt", "checkpoints/classifier.pt",
                                               "checkpoints/paper.pt", "mp20_valtest_structures.csv.gz"}


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from eacnn.paths import atomic_write_bytes

    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_database_build_leaves_a_folder_it_did_not_write_untouched(bad):
    before = sorted(p.name for p in bad["one_db"].parent.iterdir())
    proc = run_eacnn("database", "build", str(bad["one_db"]), "--out", str(bad["one_db"].parent), timeout=120)
    assert proc.returncode == 2 and "deletes nothing it did not write" in proc.stderr
    assert sorted(p.name for p in bad["one_db"].parent.iterdir()) == before
    assert (bad["one_db"] / "TiO2_136.cif").is_file()


def test_a_case_insensitive_cif_extension_is_a_database_source(tmp_path):
    from eacnn.datasets.structures import cif_files, read_cif_folder

    shutil.copy(CIFS / "TiO2_136.cif", tmp_path / "TiO2_136.CIF")
    shutil.copy(CIFS / "TiO2_136.cif", tmp_path / "rutile.Cif")
    (tmp_path / "notes.txt").write_text("not a CIF")
    assert [p.name for p in cif_files(tmp_path)] == ["TiO2_136.CIF", "rutile.Cif"]
    assert len(read_cif_folder(tmp_path, progress=False).table) == 2


@pytest.mark.parametrize("code, fragment", [("ENOSPC", "no space left on the device at"),
                                            ("EROFS", "read-only storage at"),
                                            ("EACCES", "permission denied at")])
def test_environment_faults_end_in_one_line_with_what_to_do(code, fragment, monkeypatch, capsys):
    """A full disk, read-only storage or a permission error anywhere in a command: exit 2, one line, no traceback."""
    import errno

    import eacnn.cli as cli

    def fault(args):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), "/data/eacnn/cache/x.npz")

    monkeypatch.setattr(cli, "_cmd_simulate", fault)
    assert cli.main(["simulate", str(CIFS / "TiO2_136.cif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "/data/eacnn/cache/x.npz" in err[0] and "EACNN_HOME" in err[0]


def test_a_missing_pattern_is_named_before_any_database_is_built(tmp_path):
    env = {**os.environ, "EACNN_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "eacnn", "search", str(tmp_path / "nonexistent.xy")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "nonexistent.xy: no such file" in proc.stderr
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("manifest.json"))


@pytest.mark.parametrize("name, fragment", [("sparse.xy", "too sparse"), ("narrow.xy", "covers 14%")])
def test_a_pattern_the_search_cannot_use_fails_before_any_database_is_built(bad, tmp_path, name, fragment):
    """On an empty cache, a pattern too sparse or too narrow for the model's grid is refused in a second: it is put
    on the grid before the database is built (which would take half a minute) and before torch is imported."""
    env = {**os.environ, "EACNN_HOME": str(tmp_path / "home")}
    probe = ("import sys; from eacnn.cli import main; code = main(['search', %r]); "
             "print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr); sys.exit(code)"
             % str(bad[name]))
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "no torch"
    assert not list((tmp_path / "home").rglob("manifest.json")) and "building" not in proc.stderr
