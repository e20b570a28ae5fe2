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


from eacnn.paths import MEASURED_DIR as MEASURED  # noqa: E402


@pytest.mark.parametrize(
    "content, wavelength, fragment",
    [
        ("", None, "empty"),
        ("10 5\n20 5\n30 5\n40 5\n50 5\n60 5\n70 5\n80 5\n11 5\n12 5\n13 5\n", None, "flat"),
        ("10 nan\n20 nan\n30 nan\n40 nan\n50 1\n60 2\n", None, "NaN"),
    ],
)
def test_search_rejects_bad_patterns_with_exit_2(tmp_path, content, wavelength, fragment):
    bad = tmp_path / "scan.xy"
    bad.write_text(content)
    args = ["search", str(bad)] + (["--wavelength", wavelength] if wavelength else [])
    proc = subprocess.run([sys.executable, "-m", "eacnn", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "scan.xy" in proc.stderr or fragment.lower() in proc.stderr.lower()
    assert "Traceback" not in proc.stderr


def test_search_unknown_wavelength_exits_2():
    pattern = next(MEASURED.glob("*.xy.gz"))
    proc = subprocess.run([sys.executable, "-m", "eacnn", "search", str(pattern), "--wavelength", "Unobtainium"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Unobtainium" in proc.stderr and "Traceback" not in proc.stderr
