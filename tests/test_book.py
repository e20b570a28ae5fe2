"""The book pipeline: papermill executes the notebooks (smoke), Jupyter Book renders them with -W.

Runs in a temporary copy of the book sources, so the repository's own ``_build`` is untouched.
"""

import re
import shutil
from pathlib import Path

import nbformat
import pytest

from eacnn.book import build_book, notebooks_in_toc

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
    for name in ("smoke", "device", "seed", "data_source"):
        assert re.search(rf"^{name} = ", tagged[0].source, re.M), f"{path.name}: parameter {name} missing"
    colab = [c for c in nb.cells if COLAB_MARK in c.source]
    assert colab and "remove-cell" in colab[0].metadata.get("tags", []), f"{path.name}: Colab cell must be hidden"


def test_colab_setup_cell_is_a_no_op_outside_colab(monkeypatch):
    import subprocess
    import sys

    nb = nbformat.read(ROOT / "notebooks" / "01_xrd_simulation.ipynb", as_version=4)
    source = next(c.source for c in nb.cells if COLAB_MARK in c.source)
    pip_lines = [line for line in source.splitlines() if '"pip"' in line]
    assert pip_lines and not any("torch" in line for line in pip_lines), "the Colab cell must never install torch"
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(source, "colab-cell", "exec"), {})
    assert calls == []


@pytest.mark.slow
def test_smoke_book_builds_with_warnings_as_errors(tmp_path, monkeypatch):
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    for name in ("book", "notebooks"):
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

    from eacnn.browser import check_book, find_chromium

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


def test_browser_check_catches_broken_figures_and_dead_links(tmp_path):
    """The checker itself must fail on what it is meant to catch (a check that cannot fail proves nothing)."""
    from eacnn.browser import check_book, find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium on this machine")
    (tmp_path / "good.html").write_text("<html><body><main><p id='x'>fine</p><a href='#x'>ok</a></main></body></html>")
    (tmp_path / "bad.html").write_text(
        "<html><body><main><img src='missing.png'><a href='nowhere.html'>dead</a>"
        "<div class='output error'>ValueError: boom</div></main></body></html>"
    )
    report = check_book(tmp_path, ["good.html", "bad.html"])
    problems = "\n".join(report.problems)
    assert "good.html" not in problems
    assert "broken image missing.png" in problems and "dead link nowhere.html" in problems
    assert "ValueError" in problems


def test_run_times_page_reads_this_builds_timings(tmp_path, monkeypatch):
    from eacnn.book import _record_timing, build_timings

    monkeypatch.setenv("EACNN_BOOK_STAGING", str(tmp_path))
    assert build_timings()[0].empty
    _record_timing(tmp_path, "notebooks/01.ipynb", 12.34, "smoke")
    _record_timing(tmp_path, "notebooks/02.ipynb", 5.0, "smoke")
    df, machine = build_timings()
    assert df.notebook.tolist() == ["notebooks/01.ipynb", "notebooks/02.ipynb"]
    assert df.seconds.tolist() == [12.3, 5.0]
    assert machine["profile"] == "smoke" and machine["cpu cores"] >= 1
