"""The command line: real output on a real CIF, clear errors and non-zero exit codes on bad input."""

import json
import os
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


# ---------------------------------------------------------------------------------------------------------------
# Every README example of `eacnn search` / `eacnn simulate`, and every documented wavelength form, as real commands
# ---------------------------------------------------------------------------------------------------------------
import gzip  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def readme_examples(command: str) -> list[list[str]]:
    """The ``eacnn <command> ...`` lines of the README's command-line block, split like a shell, comments cut."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [re.split(r"\s+#", line)[0].strip() for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith(f"eacnn {command} ")]


def run_example(args: list[str], folder: Path) -> subprocess.CompletedProcess:
    """Run ``eacnn ARGS`` in ``folder``, where the README's placeholder files exist (repository paths made absolute)."""
    (folder / "scan.xy").write_bytes(gzip.decompress((MEASURED / "Example__MnO.xy.gz").read_bytes()))
    (folder / "scan.xrdml").write_bytes((FIXTURES / "measured" / "synthetic.xrdml").read_bytes())
    (folder / "structure.cif").write_bytes((CIFS / "TiO2_136.cif").read_bytes())
    argv = [str(REPO / a) if a.startswith("eacnn/") else a for a in args]
    if "mydb" in args and args[0] == "search" and not (folder / "mydb").is_dir():  # the README builds it first
        subprocess.run([sys.executable, "-m", "eacnn", "database", "build", str(CIFS), "--out", "mydb"], cwd=folder,
                       check=True, capture_output=True, timeout=900)
    return subprocess.run([sys.executable, "-m", "eacnn", *argv], capture_output=True, text=True, cwd=folder,
                          timeout=900)


def check_clean_run(proc: subprocess.CompletedProcess, args: list[str], folder: Path) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning:" not in proc.stderr  # library warnings filtered
    if "--json" in args:  # stdout holds the JSON alone: one document, or one per line for several patterns
        for line in proc.stdout.splitlines():
            json.loads(line)
    if "--plot" in args:
        out = folder / args[args.index("--plot") + 1]
        magic = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}[out.suffix]
        assert out.read_bytes().startswith(magic), out
        assert f"plot written to {out.name}" in proc.stderr
        assert sorted(p.name for p in folder.iterdir() if ".tmp" in p.name) == []


@pytest.mark.slow
@pytest.mark.parametrize("args", readme_examples("database"), ids=" ".join)
def test_readme_database_examples_run(args, tmp_path):
    """`eacnn database build ... --out mydb` writes a database that `eacnn search --database mydb` opens."""
    proc = run_example(args, tmp_path)
    check_clean_run(proc, args, tmp_path)
    out = tmp_path / args[args.index("--out") + 1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n"] > 0 and "threshold" in manifest["calibration"] and "written to" in proc.stdout
    search = run_example(["search", "scan.xy", "--database", str(out), "--top", "3", "--json"], tmp_path)
    check_clean_run(search, ["--json"], tmp_path)
    assert json.loads(search.stdout)["candidates"] == manifest["n"]


def test_the_readme_documents_search_and_simulate():
    assert len(readme_examples("search")) >= 4 and len(readme_examples("simulate")) >= 4


@pytest.mark.parametrize("args", readme_examples("simulate"), ids=" ".join)
def test_readme_simulate_examples_run(args, tmp_path):
    proc = run_example(args, tmp_path)
    check_clean_run(proc, args, tmp_path)
    assert "TiO2" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args", readme_examples("search"), ids=" ".join)
def test_readme_search_examples_run(args, tmp_path):
    proc = run_example(args, tmp_path)
    check_clean_run(proc, args, tmp_path)
    if "--json" in args:
        payloads = [json.loads(line) for line in proc.stdout.splitlines()]
        assert payloads and all(p["results"] and p["verdict"] in ("match", "no confident match") for p in payloads)
        for p in payloads:  # an ambiguous set (phases within the margin) never comes with a "match"
            if p.get("ambiguous_set"):
                assert p["verdict"] != "match" and p["what_would_decide"], p["pattern"]
                assert len({(c["formula"], c["spacegroup"]) for c in p["ambiguous_set"]}) == len(p["ambiguous_set"])
        for p in payloads:  # one answer: no phase is confident without a "match" verdict, the first is the verdict's
            confident = [ph["confident"] for ph in p.get("phases", [])]
            if p["verdict"] != "match":
                assert not any(confident), p["pattern"]
            elif confident and confident[0]:
                assert p["phases"][0]["id"] == p["results"][0]["id"], p["pattern"]
        # the best refined candidates are fitted to the scan itself unless --scan-fits 0; the verdict is then the fit's
        for p in payloads:
            if "--scan-fits" in args and args[args.index("--scan-fits") + 1] == "0":
                assert p["verdict_basis"] != "scan" and "scan_fit" not in p and "scan_fit" not in p["results"][0]
            else:
                assert p["verdict_basis"] == "scan" and p["scan_fit"]["fitted"] >= 1, p["pattern"]
                fit = p["results"][0]["scan_fit"]
                assert fit["chi2"] > 0 and 0 <= fit["rwp_net"] and 0 <= fit["kalpha2_ratio"] <= 0.6
        # refined candidates report their cell fit's anisotropic strain (0 where the lattice scale fitted as well)
        assert all(r["anisotropy"] >= 0 for p in payloads for r in p["results"] if "agreement" in r)
        assert any("agreement" in r for p in payloads for r in p["results"])
        if "--elements" in args:  # Mn,O: every candidate is made of Mn and O only
            assert all(set(re.findall(r"[A-Z][a-z]?", r["formula"])) <= {"Mn", "O"}
                       for p in payloads for r in p["results"])
        if Path(args[1]).name == "measured":  # a folder: one line per pattern file in it, in order
            assert [Path(p["pattern"]).name for p in payloads] == sorted(
                f.name for f in (REPO / args[1]).iterdir() if f.name.endswith((".xy.gz", ".xy")))
    else:
        assert "verdict:" in proc.stdout


# name, "Cu Kα1"-style and number forms, as documented in the README and `--help`
WAVELENGTH_FORMS = [("Cu", 1.5406), ("cu", 1.5406), ("Cu Kα1", 1.5406), ("CuKa1", 1.5406), ("1.5406", 1.5406),
                    ("Mo", 0.70932), ("Mo Kα1", 0.70932), ("MoKa1", 0.70932), ("0.71073", 0.71073), ("Co", 1.78896)]


@pytest.mark.parametrize("form, angstrom", WAVELENGTH_FORMS, ids=[f for f, _ in WAVELENGTH_FORMS])
def test_simulate_accepts_every_wavelength_form(form, angstrom, tmp_path):
    proc = run_example(["simulate", "structure.cif", "--wavelength", form], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"at λ = {angstrom} Å" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("form, angstrom", [("1.5406", 1.5406), ("Cu Kα1", 1.5406), ("Cu", 1.5406)],
                         ids=["number", "Cu Kα1", "name"])
def test_search_accepts_every_wavelength_form(form, angstrom, tmp_path):
    """Issue 12's crash: a numeric --wavelength exited 2 with 'unknown wavelength name'. (The ranking alone: how a
    wavelength is named is read before the search, whose whole path the README examples run.)"""
    proc = run_example(["search", "scan.xy", "--wavelength", form, "--top", "3", "--json", "--rerank", "0",
                        "--phases", "1", "--scan-fits", "0"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["wavelength"] == angstrom and len(payload["results"]) == 3


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_simulate_plot_writes_the_format_of_its_extension(suffix, magic, tmp_path, capsys):
    out = tmp_path / f"p{suffix}"
    assert main(["simulate", str(CIFS / "TiO2_136.cif"), "--plot", str(out)]) == 0
    assert out.read_bytes().startswith(magic)
    assert f"plot written to {out}" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_importing_eacnn_sets_no_warning_filter():
    code = ("import numpy, warnings; before = list(warnings.filters); import eacnn, eacnn.cli, eacnn.measured, "
            "eacnn.integrity; assert warnings.filters == before, 'import eacnn changed the warning filters'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_cli_restores_the_warning_filters(tmp_path):
    import warnings

    before = list(warnings.filters)
    assert main(["simulate", str(CIFS / "TiO2_136.cif"), "--json"]) == 0
    assert warnings.filters == before


def test_bad_arguments_return_2_in_process(capsys):
    assert main(["search", "scan.xy", "--top", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("eacnn search: error: argument --top: expected a whole number >= 1, "
                                               "got '0' (see eacnn search --help)")


@pytest.mark.slow
def test_first_search_on_an_empty_cache_then_a_warm_one_without_torch(tmp_path):
    """Issue 13: the first search builds the database from the shipped embeddings (seconds), later ones open it
    memory-mapped and import neither torch nor mace."""
    env = {**os.environ, "EACNN_HOME": str(tmp_path / "home")}
    pattern = str(MEASURED / "Example__MnO.xy.gz")
    quick = ["--phases", "1", "--scan-fits", "0"]  # the cache is what is tested; the README runs the whole search
    first = subprocess.run([sys.executable, "-m", "eacnn", "search", pattern, "--json", "--top", "3", *quick], env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "building the search database once" in first.stderr
    assert list((tmp_path / "home").rglob("manifest.json"))
    probe = ("import sys; from eacnn.cli import main; code = main(['search', %r, '--json', '--top', '3', %s]); "
             "print('torch loaded' if 'torch' in sys.modules or 'mace' in sys.modules else 'no torch', "
             "file=sys.stderr); sys.exit(code)" % (pattern, ", ".join(repr(a) for a in quick)))
    warm = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=600)
    assert warm.returncode == 0, warm.stderr
    assert warm.stderr.strip().splitlines()[-1] == "no torch" and "building" not in warm.stderr
    assert json.loads(warm.stdout)["results"] == json.loads(first.stdout)["results"]


@pytest.mark.slow
def test_train_keeps_each_epoch_when_asked(tmp_path):
    """`eacnn train --keep-epochs`: every epoch's checkpoint beside last.pt and best.pt, to score afterwards."""
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "eacnn", "train", "--profile", "smoke", "--set", "train.epochs=2",
                           "--set", "train.max_steps_per_epoch=2", "--run-dir", str(run), "--keep-epochs"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "best validation Top-1" in proc.stdout and "Traceback" not in proc.stderr
    assert {"epoch_1.pt", "epoch_2.pt", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}


def test_phase_confidence_follows_the_verdict():
    from types import SimpleNamespace as NS

    from eacnn.cli import phase_confident

    results = [{"id": "mp-1"}, {"id": "mp-2"}]
    phases = [NS(id="mp-1", confident=True), NS(id="mp-3", confident=True), NS(id="mp-4", confident=False),
              NS(id="mp-5", confident=True)]
    assert [phase_confident("match", results, phases, i) for i in range(4)] == [True, True, False, False]
    assert not any(phase_confident("no confident match", results, phases, i) for i in range(4))
    other_first = [NS(id="mp-2", confident=True)] + phases[1:]  # the mixture's first phase is not the verdict's
    assert not phase_confident("match", results, other_first, 0)


def test_what_would_decide_between_look_alikes():
    from eacnn.cli import ambiguity_note

    chem = ambiguity_note([{"formula": "NbH2", "spacegroup": "Fm-3m"}, {"formula": "Hf", "spacegroup": "Fm-3m"}], 1.0)
    assert "--elements" in chem and "H, Hf, Nb" in chem
    poly = ambiguity_note([{"formula": "ZnS", "spacegroup": "F-43m"}, {"formula": "ZnS", "spacegroup": "P6_3mc"}], 0.6)
    assert "polymorphs" in poly and "60 %" in poly and "--elements" not in poly
