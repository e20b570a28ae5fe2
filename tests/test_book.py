"""The book pipeline: papermill executes the notebooks (smoke), Jupyter Book renders them with -W.

Runs in a temporary copy of the book sources, so the repository's own ``_build`` is untouched.
"""

import re
import shutil
from pathlib import Path

import nbformat
import pytest

from eacnn.book.build import COLAB_PROMPTS, COLAB_TAG, build_book, colab_cell_source, notebooks_in_toc, repository_url

ROOT = Path(__file__).resolve().parents[1]
COLAB_MARK = "google.colab"


def test_toc_lists_existing_notebooks():
    nbs = notebooks_in_toc(ROOT)
    assert nbs and all((ROOT / nb).is_file() for nb in nbs)
    assert nbs[0].name == "01_xrd_simulation.ipynb"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_source_notebooks_are_output_free_and_parametrised(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs in git"
            assert "def " not in cell.source or "assert" in cell.source, f"{path.name}: logic belongs in eacnn"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("smoke", "profile", "device", "seed", "data_source"):
        assert re.search(rf"^{name} = ", tagged[0].source, re.M), f"{path.name}: parameter {name} missing"
    colab = [c for c in nb.cells if COLAB_MARK in c.source]
    assert len(colab) == 1 and colab[0].metadata.get("tags") == [COLAB_TAG], \
        f"{path.name}: the Colab cell is shown collapsed ({COLAB_TAG})"
    assert colab[0].metadata.get("mystnb") == COLAB_PROMPTS, f"{path.name}: the collapsed box says what it holds"
    assert colab[0].source == colab_cell_source(repository_url(ROOT)), (
        f"{path.name}: Colab cell out of date with _config.yml's repository.url: run "
        "`python -c 'from eacnn.book.build import sync_colab_cells; sync_colab_cells()'`")
    objectives = [c for c in nb.cells if c.cell_type == "markdown" and "Learning objectives" in c.source]
    exercises = [c for c in nb.cells if c.cell_type == "markdown" and "```{exercise}" in c.source]
    if not path.name.startswith("11_"):  # the run-times page reports the build; nothing to learn or practise
        assert objectives and exercises, f"{path.name}: learning objectives and exercises expected"
        for cell in exercises:
            assert "```{solution}" in cell.source and ":class: dropdown" in cell.source, \
                f"{path.name}: every exercise has a collapsed solution"


def _colab_cell() -> str:
    nb = nbformat.read(ROOT / "notebooks" / "01_xrd_simulation.ipynb", as_version=4)
    return next(c.source for c in nb.cells if COLAB_MARK in c.source)


def test_colab_setup_cell_is_a_no_op_outside_colab(monkeypatch):
    import subprocess
    import sys

    source = _colab_cell()
    pip_lines = [line for line in source.splitlines() if '"pip"' in line]
    assert pip_lines and not any("torch" in line for line in pip_lines), "the Colab cell must never install torch"
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(source, "colab-cell", "exec"), {})
    assert calls == []


@pytest.fixture
def fake_colab(monkeypatch, tmp_path):
    """A simulated Colab kernel: ``google.colab`` importable, a T4 GPU (compute capability 7.5), Google Drive
    mounted under ``tmp_path``, no EACNN_HOME."""
    import sys
    import types

    import torch

    import eacnn.book.notebook as notebook

    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    drive = tmp_path / "drive" / "MyDrive"
    drive.mkdir(parents=True)
    monkeypatch.setattr(notebook, "COLAB_DRIVE", drive)
    monkeypatch.setenv("EACNN_HOME", "")  # records the value to restore: setup() sets it on the fake Drive
    monkeypatch.delenv("EACNN_HOME")
    return drive


def test_colab_cell_on_colab_installs_the_light_extra_from_the_configured_repository(fake_colab, monkeypatch):
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a[0]))
    exec(compile(_colab_cell(), "colab-cell", "exec"), {})
    assert len(calls) == 1
    (spec,) = [arg for arg in calls[0] if arg.startswith("eacnn")]
    assert spec == f"eacnn[colab] @ git+{repository_url(ROOT)}"
    assert not any("torch" in arg for arg in calls[0])


def test_colab_uses_the_shipped_checkpoints_unless_train_is_set(fake_colab, monkeypatch):
    """On a Colab GPU, profile "auto" evaluates the shipped (cpu-profile) checkpoints on the GPU; with train=True it
    trains the paper profile, in fp16 on a T4 (no native bf16); Drive, when mounted, holds EACNN_HOME."""
    import os

    import eacnn.book.notebook as notebook
    import eacnn.training.checkpoint as checkpoint

    session = notebook.setup(profile="auto", show=False)
    assert (session.profile, session.device, session.models_source) == ("cpu", "cuda", "shipped checkpoints")
    assert os.environ["EACNN_HOME"] == str(fake_colab / "eacnn")
    loaded = []
    monkeypatch.setattr(checkpoint, "load_pretrained", lambda path, **k: loaded.append(path) or "model")
    assert notebook.trained_models(session, dataset=None) == {"eacnn": "model", "paper": "model"}
    assert loaded == [checkpoint.SHIPPED["eacnn"], checkpoint.SHIPPED["paper"]]

    trained = notebook.setup(profile="auto", train=True, show=False)
    assert (trained.profile, trained.config.train.amp, trained.models_source) == ("paper", "fp16", "trained here")
    assert notebook.setup(smoke=True, show=False).profile == "smoke"


def test_profile_parameter_wins_over_the_device():
    """`eacnn book --profile cpu` on a GPU machine runs the cpu profile (it used to run `paper` silently)."""
    from eacnn.book.notebook import resolve_profile
    from eacnn.errors import ConfigError

    assert resolve_profile("cpu", device="cuda") == "cpu"
    assert resolve_profile("auto", device="cuda") == "paper"
    assert resolve_profile("auto", device="cpu") == "cpu"
    assert resolve_profile("paper", device="cpu") == "paper"
    with pytest.raises(ConfigError):
        resolve_profile("cpu", smoke=True)
    with pytest.raises(ConfigError):
        resolve_profile("gpu")


def test_book_build_passes_its_profile_to_every_notebook(tmp_path, monkeypatch):
    import papermill

    from eacnn.book.build import execute_notebooks

    seen = []

    def fake_execute(src, out, parameters, **kwargs):
        seen.append(parameters)
        Path(out).write_text(Path(src).read_text())

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    execute_notebooks("cpu", root=ROOT, staging=tmp_path, only=["01_"])
    assert seen == [{"smoke": False, "profile": "cpu", "device": "auto"}]


def test_a_kernel_that_dies_while_starting_is_started_again_but_a_cell_error_is_not_retried(tmp_path, monkeypatch):
    """Two kernels started side by side can lose a TCP port to each other and die before replying; that start is
    tried again. A failing cell is the notebook's own error and fails the build at once."""
    import papermill

    from eacnn.book.build import execute_notebooks
    from eacnn.errors import BookError

    calls = []

    def flaky(src, out, parameters, **kwargs):
        calls.append(src)
        if len(calls) == 1:
            raise RuntimeError("Kernel died before replying to kernel_info")
        Path(out).write_text(Path(src).read_text())

    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    execute_notebooks("cpu", root=ROOT, staging=tmp_path, only=["01_"])
    assert len(calls) == 2 and (tmp_path / "notebooks" / "01_xrd_simulation.ipynb").is_file()

    def cell_fails(src, out, parameters, **kwargs):
        calls.append(src)
        raise papermill.PapermillExecutionError(0, 1, "1/0", "ZeroDivisionError", "division by zero", [])

    calls.clear()
    monkeypatch.setattr(papermill, "execute_notebook", cell_fails)
    with pytest.raises(BookError, match="ZeroDivisionError"):
        execute_notebooks("cpu", root=ROOT, staging=tmp_path / "again", only=["01_"])
    assert len(calls) == 1


def test_executed_notebooks_are_tidied_for_their_pages(tmp_path):
    """papermill's injected parameters cell is removed from the page; a figure moves to a captioned cell of its own,
    leaving the cell's other outputs (glued values, tables) where they were; progress-bar widgets are dropped."""
    from eacnn.book.build import tidy_executed

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("smoke = True", metadata={"tags": ["injected-parameters"]})
    plot = nbformat.v4.new_code_cell("plot()", metadata={"eacnn": {"figure": {
        "name": "fig-test", "caption": "A test figure.", "alt": "A line rising to the right."}}})
    plot.outputs = [nbformat.v4.new_output("display_data", data={"text/html": "<table></table>"}),
                    nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "fig"})]
    bar = nbformat.v4.new_code_cell("table = agreement_table(...)")
    bar.outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2, "version_minor": 0},
        "text/plain": "0%|          | 0/50"})]
    nb.cells = [params, plot, bar]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    tidy_executed(path)
    out = nbformat.read(path, as_version=4)
    assert "remove-cell" in out.cells[0].metadata["tags"]
    assert [list(o["data"]) for o in out.cells[1].outputs] == [["text/html"]]
    figure = out.cells[2]
    assert figure.metadata["mystnb"] == {"figure": {"name": "fig-test", "caption": "A test figure."},
                                         "image": {"alt": "A line rising to the right."}}
    assert figure.metadata["tags"] == ["remove-input"] and "image/png" in figure.outputs[0]["data"]
    assert out.cells[3].outputs == [] and "widgets" not in out.metadata  # no progress bar, no CDN widget scripts
    nbformat.validate(out)


def test_glued_numbers_and_tables_read_as_numbers():
    import numpy as np
    import pandas as pd

    from eacnn.book.notebook import format_table, glue_text

    assert glue_text(np.float64(31.704311)) == "31.7043"
    assert glue_text(18093) == "18,093" and glue_text(np.int64(9046)) == "9,046" and glue_text(100.0) == "100"
    assert glue_text(np.float64(95.9612), ".2f") == "95.96" and glue_text("Fm-3m") == "Fm-3m"
    html = format_table(pd.DataFrame({"queries": [9046.0, np.nan], "top1": [95.1, 95.12],
                                      "spacegroup_symbol": ["P2_1/c", "Fm-3m"]}))
    assert "9,046" in html and "9046.0" not in html and "NaN" not in html and "–" in html
    assert "95.10" in html and "P2₁/c" in html and "Fm3\u0305m" in html
    assert ">space group<" in html and "spacegroup_symbol" not in html and "<th>0</th>" not in html  # no row count
    assert "<th>a</th>" in format_table(pd.DataFrame({"n": [1]}, index=["a"]))  # a meaningful index stays


@pytest.mark.slow
def test_smoke_book_builds_with_warnings_as_errors(tmp_path, monkeypatch):
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    for name in ("book", "notebooks", "_static"):  # _static: the book's CSS, which the browser check judges too
        shutil.copytree(ROOT / name, tmp_path / name)
    monkeypatch.setenv("EACNN_HOME", str(tmp_path / "home"))
    result = build_book("smoke", root=tmp_path)
    assert result.index_html.is_file()
    html_dir = result.index_html.parent
    for rel in notebooks_in_toc(tmp_path):
        page = (html_dir / rel.with_suffix(".html")).read_text()
        text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
        assert "Profile smoke" in text, f"{rel}: no profile banner"
        assert "Traceback" not in text, f"{rel}: a traceback on the page"
        for img in re.findall(r'<img[^>]+src="([^"]+)"', page):
            assert (html_dir / rel.parent / img).resolve().is_file(), f"{rel}: broken image {img}"
        executed = nbformat.read(tmp_path / "_build" / "staging" / rel, as_version=4)
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors
    # glued numbers reached the prose of chapter 1
    page = (html_dir / "notebooks" / "01_xrd_simulation.html").read_text()
    assert re.search(r"100\.0\s*% of the\s*50 structures", re.sub(r"<[^>]+>", "", page))
    _check_in_browser(html_dir, tmp_path)


def _check_in_browser(html_dir, tmp_path):
    """Every page in headless Chromium: figures load, no error cells, no missing glue, no dead internal links.

    Skipped where Chromium is absent, except under CI (EACNN_REQUIRE_BROWSER=1, set by .ci/run), where it fails.
    """
    import os

    from eacnn.book.browser import check_book, find_chromium

    if find_chromium() is None:
        if os.environ.get("EACNN_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required under CI (apt-get install chromium)")
        pytest.skip("no Chromium on this machine")
    pages = ["index.html"] + [str(p.relative_to(html_dir)) for p in sorted(html_dir.glob("*/*.html"))
                              if not p.parent.name.startswith("_")]
    shots = Path(os.environ.get("EACNN_SCREENSHOTS", tmp_path / "screenshots"))
    report = check_book(html_dir, pages, screenshot_dir=shots, screenshot_pages=("01_xrd", "05_retrieval", "results"))
    assert report.ok, "\n".join(report.problems)
    assert sum(n for _, n in report.pages) >= 3, f"too few figures rendered: {report.pages}"
    assert report.screenshots and all(p.stat().st_size > 10_000 for p in report.screenshots)


def _png() -> bytes:
    """A tiny valid PNG (one white pixel)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"\x00\xff\xff\xff")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_browser_check_catches_broken_pages(tmp_path):
    """The checker itself must fail on what it is meant to catch (a check that cannot fail proves nothing)."""
    from eacnn.book.browser import check_book, find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium on this machine")
    (tmp_path / "good.html").write_text("<html><body><main><p id='x'>fine</p><a href='#x'>ok</a></main></body></html>")
    (tmp_path / "bad.html").write_text(
        "<html><body><main><img src='missing.png'><a href='nowhere.html'>dead</a>"
        "<div class='output error'>ValueError: boom</div></main></body></html>"
    )
    # what a clean page may hold: TeX inside code, a parameters cell of its own, a printed number
    (tmp_path / "fine.html").write_text(
        "<html><body><main><p>The loss is small.</p>"
        "<div class='cell tag_parameters'><div class='cell_input'><pre>smoke = False</pre></div></div>"
        "<div class='cell'><div class='cell_input'><pre>re.compile(r'\\(x\\)')  # np.float64(1)</pre></div>"
        "<div class='cell_output'><div class='output stream'><pre>by hand: d(200) = 2.8200 A</pre></div></div>"
        "</div></main></body></html>")
    # one page per new failure kind
    (tmp_path / "math.html").write_text("<html><body><main><p>Bragg: \\(2 d \\sin\\theta = \\lambda\\)</p>"
                                        "</main></body></html>")
    (tmp_path / "junk.html").write_text(
        "<html><body><main><div class='cell_output'><div class='output stream'><pre>cuequivariance or "
        "cuequivariance_torch is not available. Cuequivariance acceleration will be disabled.</pre></div></div>"
        "</main></body></html>")
    (tmp_path / "echo.html").write_text(
        "<html><body><main><div class='cell_output'><div class='output text_plain'><pre>np.float64(31.70431117400193)"
        "</pre></div></div></main></body></html>")
    (tmp_path / "params.html").write_text(
        "<html><body><main>"
        "<div class='cell tag_parameters'><div class='cell_input'><pre>smoke = False</pre></div></div>"
        "<div class='cell tag_injected-parameters'><div class='cell_input'><pre>smoke = True</pre></div></div>"
        "</main></body></html>")
    (tmp_path / "cdn.html").write_text(
        "<html><head><script src='https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js'></script></head>"
        "<body><main><p>x</p></main></body></html>")
    # a 20-column table in a 690 px column; a repr, a pandas footer, a raw role and raw LaTeX; a '/./' launch URL
    cells = "".join(f"<td>column number {i}</td>" for i in range(20))
    (tmp_path / "wide.html").write_text(
        "<html><body><div class='bd-article' style='width:690px'><main><div class='cell_output'>"
        f"<table><tr>{cells}</tr></table></div></main></div></body></html>")
    (tmp_path / "stray.html").write_text(
        "<html><body><main><div class='cell_output'><pre>XRDConfig(wavelength=1.5406, step=0.5)</pre></div>"
        "<div class='cell_output'><pre>a    1\nName: this build, dtype: object</pre></div>"
        "<p>See :mod:`eacnn.physics` for Al$_2$O$_3$.</p></main></body></html>")
    (tmp_path / "launch.html").write_text(
        "<html><body><main><a href='https://colab.research.google.com/github/eacnn/eacnn/blob/main/./notebooks/"
        "01.ipynb'>Colab</a></main></body></html>")
    (tmp_path / "plot.png").write_bytes(_png())
    (tmp_path / "figure.html").write_text(
        "<html><body><main><div class='cell_output'><img src='plot.png' alt='a bare plot'></div>"
        "<div class='cell_output'><figure><img src='plot.png'><figcaption>Figure 1: fine</figcaption></figure></div>"
        "</main></body></html>")
    # a path that does not break, wider than a phone
    (tmp_path / "phone.html").write_text(
        "<html><body><main><p><code>eacnn/data/measured/mixtures/" + "V2O5_0p3015_TiO2_0p6998" * 3
        + ".xrdml.gz</code></p></main></body></html>")
    pages = ["good.html", "bad.html", "fine.html", "math.html", "junk.html", "echo.html", "params.html", "cdn.html",
             "wide.html", "stray.html", "launch.html", "figure.html", "phone.html"]
    report = check_book(tmp_path, pages)
    problems = "\n".join(report.problems)
    assert "good.html" not in problems and "fine.html" not in problems, problems
    assert "broken image missing.png" in problems and "dead link nowhere.html" in problems
    assert "ValueError" in problems
    assert "math.html: raw math" in problems
    assert "junk.html: library output on the page" in problems
    assert "echo.html: NumPy scalar echoed" in problems
    assert "params.html: duplicate parameters cells" in problems
    assert "cdn.html: script from another host" in problems
    assert "wide.html: wide table" in problems
    for what in ("an object's repr", "a pandas dtype footer", "a pandas Series name footer", "a raw Sphinx role",
                 "raw LaTeX outside math"):
        assert f"stray.html: stray output, {what}" in problems, what
    assert "launch.html: launch link with '/./'" in problems
    assert "figure.html: figure without a caption a bare plot" in problems
    assert sum("figure.html" in p for p in report.problems) == 1  # the captioned one passes
    assert "phone.html: wider than a 400 px screen" in problems


def test_run_times_page_reads_this_builds_timings(tmp_path, monkeypatch):
    from eacnn.book.build import _record_timing, build_timings

    monkeypatch.setenv("EACNN_BOOK_STAGING", str(tmp_path))
    assert build_timings()[0].empty
    _record_timing(tmp_path, "notebooks/01.ipynb", 12.34, "smoke", (1000.0, 1012.3))
    _record_timing(tmp_path, "notebooks/02.ipynb", 5.0, "smoke", (1002.0, 1007.0))  # side by side with 01
    df, machine = build_timings()
    assert df.notebook.tolist() == ["notebooks/01.ipynb", "notebooks/02.ipynb"]
    assert df.seconds.tolist() == [12.3, 5.0]
    assert machine["profile"] == "smoke" and machine["cpu cores"] >= 1
    assert machine["wall clock (s)"] == 12.3 < df.seconds.sum()  # the chapters overlapped: not their sum
    assert df["started (min)"].tolist() == [0.0, 2.0 / 60]


def test_stages_keep_dependencies_in_order():
    """Chapters run side by side only within a stage: the data set (02) before its readers, training (04) before
    the chapters that evaluate the trained models, the run-times page (11) last."""
    from eacnn.book.build import _stages

    nbs = notebooks_in_toc(ROOT)
    stages = _stages(nbs)
    assert sorted(p for s in stages for p in s) == sorted(nbs)
    where = {p.name[:2]: i for i, s in enumerate(stages) for p in s}
    for reader in ("03", "04", "05", "06", "07", "08", "09", "10"):
        assert where["02"] < where[reader]
    for evaluator in ("05", "06", "07", "08", "09", "10"):
        assert where["04"] < where[evaluator]
    assert where["11"] == len(stages) - 1 and len(stages[-1]) == 1
    extra = _stages([Path("notebooks/01_a.ipynb"), Path("notebooks/xx_new.ipynb"), Path("notebooks/05_b.ipynb")])
    assert [len(s) for s in extra] == [1, 1, 1]  # an unknown chapter runs alone, in reading order


def test_bibliography_labels_are_author_year_and_tell_preprint_from_journal():
    """The bibliography lists each entry under the label its citations show; the preprint and the journal article
    of the paper (same authors, same year) get 2025a and 2025b, in that order; TeX accents read as letters."""
    from pybtex.database import parse_file
    from pybtex.plugin import find_plugin

    from eacnn.book.sphinxext import _register_bibliography_styles

    _register_bibliography_styles()
    style = find_plugin("pybtex.style.formatting", "eacnn")()
    entries = parse_file(str(ROOT / "book" / "references.bib")).entries
    labels = {e.key: e.label for e in style.format_entries(entries.values())}
    assert labels["eacnn_preprint"] == "Zhang et al., 2025a" and labels["eacnn_applsci"] == "Zhang et al., 2025b"
    assert labels["dollase1986"] == "Dollase, 1986" and labels["morhac2008clipping"] == "Morháč and Matoušek, 2008"
    assert entries["eacnn_preprint"].fields["doi"] == "10.20944/preprints202504.1913.v1"
    for key in ("li2024pxrdgen", "szymanski2021xrdautoanalyzer", "ryan1988snip", "caglioti1958", "thompson1987tch",
                "jain2013materials", "xie2022cdvae", "batatia2022mace", "radford2021clip"):
        assert key in labels


def test_each_chapter_quotes_its_time_from_the_last_full_build(tmp_path, monkeypatch):
    """"Time to run" is measured: a full build's chapter times (record_chapter_times), read back per chapter."""
    import eacnn.paths
    from eacnn.book.build import record_chapter_times
    from eacnn.book.notebook import chapter_time

    monkeypatch.setattr(eacnn.paths, "DATA_DIR", tmp_path)
    assert chapter_time("05").startswith("not yet measured")
    record_chapter_times({"notebooks/05_retrieval.ipynb": 204.4, "notebooks/01_xrd_simulation.ipynb": 31.0})
    assert chapter_time("05").startswith("3.4 min on a ") and "full `cpu` build of 20" in chapter_time("05")
    assert chapter_time("01").startswith("31 s") and chapter_time("02").startswith("not yet measured")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb"))[:10]:  # every chapter but the run-times page
        text = path.read_text()
        assert "{glue:text}`time_to_run`" in text and f'chapter_time(\\"{path.name[:2]}\\")' in text, path.name


def test_every_page_is_rendered_again_so_glued_numbers_are_never_stale(tmp_path):
    """The results page quotes other pages' glue, which Sphinx's incremental build does not track: a full cpu build
    over an earlier one left it with an earlier build's numbers (a curve run's epoch 5 beside chapter 4's epoch 25)."""
    from eacnn.book.build import render_command

    cmd = render_command(Path("jupyter-book"), tmp_path / "staging", tmp_path)
    assert cmd[1] == "build" and "--all" in cmd and "-W" in cmd
    assert render_command(Path("jupyter-book"), tmp_path, tmp_path, keep_going=True)[-1] == "--keep-going"
