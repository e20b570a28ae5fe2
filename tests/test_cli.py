"""The command line: real output on a real CIF, clear errors and non-zero exit codes on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eacnn.cli import main

CIFS = Path(__file__).parent / "fixtures" / "cifs"


def test_simulate_prints_peaks(capsys):
    assert main(["simulate", str(CIFS / "TiO2_136.cif")]) == 0
    out = capsys.readouterr().out
    assert "TiO2" in out and "110" in out  # rutile's strongest reflection is (110) near 27.4°


def test_simulate_json_has_140_values(capsys):
    assert main(["simulate", str(CIFS / "Li2O_225.cif"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["vector"]) == 140 and max(payload["vector"]) == pytest.approx(1.0)
    assert all("hkl" in p for p in payload["peaks"])


def test_simulate_plot(tmp_path):
    out = tmp_path / "rutile.png"
    assert main(["simulate", str(CIFS / "TiO2_136.cif"), "--plot", str(out)]) == 0
    assert out.stat().st_size > 1000


@pytest.mark.parametrize("content", ["this is not a CIF\n", "data_x\n_cell_length_a 3\n"])
def test_simulate_bad_cif_exits_2_with_a_message(tmp_path, content):
    bad = tmp_path / "bad.cif"
    bad.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "eacnn", "simulate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "bad.cif" in proc.stderr and "Traceback" not in proc.stderr


def test_simulate_missing_file_exits_2(tmp_path):
    assert main(["simulate", str(tmp_path / "missing.cif")]) == 2
