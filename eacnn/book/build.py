"""Build the book in two steps: papermill executes every notebook of ``_toc.yml`` into a staging copy, then
Jupyter Book 1 renders the staging copy with execution off and warnings as errors.

Source notebooks stay output-free in git (so Colab opens a clean notebook); only the staging copy holds outputs.

    python -m eacnn book --profile smoke     # minutes on 2 cores (CI)
    python -m eacnn book --profile cpu       # the embedded data in full, the shipped model
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from eacnn.errors import BookError
from eacnn.paths import atomic_write_bytes, repo_root

log = logging.getLogger(__name__)

__all__ = ["notebooks_in_toc", "execute_notebooks", "build_book", "build_timings", "BookResult", "repository_url",
           "record_chapter_times",
           "colab_cell_source", "sync_colab_cells", "tidy_executed"]

#: Files and folders copied from the repository into the staging copy (besides the notebooks).
_STAGED = ("_config.yml", "_toc.yml", "book", "_static")
#: The tag of every notebook's Colab setup cell: the page shows it collapsed, under :data:`COLAB_PROMPTS`.
COLAB_TAG = "hide-cell"
#: What the collapsed Colab setup cell says on the page (myst-nb cell metadata).
COLAB_PROMPTS = {"code_prompt_show": "Running on Google Colab? Show the setup cell",
                 "code_prompt_hide": "Hide the Colab setup cell"}
#: Execution stage of each chapter (by its number): a chapter starts once every chapter of an earlier stage has
#: finished, and chapters of one stage run side by side. Chapters share work only through caches: 02 builds the
#: data set the later ones read, 04 trains the models 05–10 evaluate, and 11 reports every chapter's time.
STAGES = {"01": 0, "02": 0, "03": 1, "04": 1, "05": 2, "06": 2, "07": 2, "08": 2, "09": 2, "10": 2, "11": 3}


@dataclass
class BookResult:
    index_html: Path  # the rendered book's entry page
    timings: dict  # notebook -> seconds of execution
    seconds: float  # total wall time


def _root(root: Path | None) -> Path:
    root = Path(root) if root is not None else repo_root()
    if root is None or not (root / "_toc.yml").is_file():
        raise BookError(f"no _toc.yml under {root!r}: run `eacnn book` from a source checkout of eacnn")
    return root


def notebooks_in_toc(root: Path | None = None) -> list[Path]:
    """Notebooks listed in ``_toc.yml`` (relative paths with suffix ``.ipynb``), in reading order."""
    import yaml

    root = _root(root)
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    out = []
    for f in files:
        path = root / (f if f.endswith(".ipynb") else f + ".ipynb")
        if path.is_file():
            out.append(path.relative_to(root))
        elif not (root / (f + ".md")).is_file() and not (root / f).is_file():
            raise BookError(f"_toc.yml lists {f!r}, but neither {f}.ipynb nor {f}.md exists")
    return out


def execute_notebooks(
    profile: str = "smoke",
    root: Path | None = None,
    staging: Path | None = None,
    only: list[str] | None = None,
    timeout: int = 3600,
    jobs: int | None = None,
) -> dict:
    """Execute the notebooks of the book with papermill into ``staging`` (default ``<root>/_build/staging``).

    Args:
        profile: ``"smoke"``, ``"cpu"`` or ``"paper"``, passed to every notebook as its ``profile`` parameter (and
            ``smoke=True`` for ``"smoke"``), so that ``cpu`` runs the cpu profile on a GPU machine too.
        only: execute only notebooks whose file name contains one of these strings (others are not staged).
        timeout: seconds allowed per cell.
        jobs: notebooks executed at once within a stage (:data:`STAGES`); default: 2 where there are 2 or more
            cores (each notebook is its own kernel process).

    Returns:
        notebook path -> seconds of execution.

    Raises:
        BookError: a notebook failed; the message names it and the staged copy with its error output.
    """
    import papermill as pm

    if profile not in ("smoke", "cpu", "paper"):
        raise BookError(f"unknown book profile {profile!r}; choose smoke, cpu or paper")
    root = _root(root)
    staging = Path(staging) if staging is not None else root / "_build" / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    for name in _STAGED:
        src, dst = root / name, staging / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, dst)
    parameters = {"smoke": profile == "smoke", "profile": profile, "device": "cuda" if profile == "paper" else "auto"}
    jobs = jobs if jobs is not None else min(2, os.cpu_count() or 1)
    timings = {}
    env_before = {k: os.environ.get(k) for k in ("EACNN_BOOK_PROFILE", "TQDM_DISABLE", "EACNN_BOOK_STAGING",
                                                 "OMP_NUM_THREADS")}
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:  # kernels side by side share the cores, not each all
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    os.environ["EACNN_BOOK_PROFILE"] = profile
    os.environ["EACNN_BOOK_STAGING"] = str(staging)  # where the run-times page finds this build's timings
    stale = staging / TIMINGS_FILE
    if stale.is_file() and not only:
        stale.unlink()  # a fresh build times itself from the start
    os.environ["TQDM_DISABLE"] = "1"  # progress bars are for people at a keyboard, not for rendered pages
    lock = threading.Lock()

    def run(rel: Path) -> None:
        out = staging / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        log.info("executing %s (%s)", rel, profile)
        t0, started = time.perf_counter(), time.time()
        try:
            for attempt in range(KERNEL_START_ATTEMPTS):
                try:
                    pm.execute_notebook(str(root / rel), str(out), parameters=parameters, cwd=str(root / rel.parent),
                                        kernel_name="python3", progress_bar=False, execution_timeout=timeout)
                    break
                except RuntimeError as err:  # not a cell's error: the kernel never started
                    if not _kernel_start_failed(err) or attempt + 1 == KERNEL_START_ATTEMPTS:
                        raise
                    log.warning("%s: the kernel did not start (%s); starting it again", rel, err)
        except pm.PapermillExecutionError as err:
            raise BookError(f"notebook {rel} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                            f"(executed copy with the traceback: {out})") from err
        tidy_executed(out)
        with lock:
            timings[str(rel)] = time.perf_counter() - t0
            log.info("  %s: %.1f s", rel, timings[str(rel)])
            _record_timing(staging, str(rel), timings[str(rel)], profile, (started, time.time()))

    try:
        chosen = [rel for rel in notebooks_in_toc(root) if not only or any(s in rel.name for s in only)]
        for stage in _stages(chosen):
            with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(stage)))) as pool:
                for future in [pool.submit(run, rel) for rel in stage]:
                    future.result()  # the first failure is raised once its stage has finished
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return timings


def tidy_executed(path: Path) -> None:
    """Prepare an executed notebook for its page (in place):

    * papermill's injected parameters cell is removed from the page (the notebook's own parameters cell, with its
      comments, stays; the banner names the profile that ran);
    * progress-bar widgets are dropped with the notebook's widget state: a static page cannot animate them, and
      myst-nb would load the widget scripts from a CDN for them;
    * the image of every cell with ``metadata.eacnn.figure`` (``name``, ``caption``, ``alt``) moves to a cell of its
      own that myst-nb renders as a numbered figure with that caption and alt text. (myst-nb captions every display
      output of a cell, glued values and tables included, so the figure needs a cell to itself.)
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if _WIDGET not in o.get("data", {})]
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
        figure = cell.metadata.get("eacnn", {}).get("figure") if cell.cell_type == "code" else None
        if not figure:
            continue
        images = [o for o in cell.outputs if o.get("output_type") in ("display_data", "execute_result")
                  and any(k.startswith("image/") for k in o.get("data", {}))]
        if not images:
            continue
        cell.outputs = [o for o in cell.outputs if all(o is not i for i in images)]
        for k, image in enumerate(images):
            name = figure["name"] if k == 0 else f"{figure['name']}-{k + 1}"
            shown = nbformat.v4.new_output("display_data", data=image["data"], metadata=image.get("metadata", {}))
            cells.append(nbformat.v4.new_code_cell(
                source=f"# figure {name}: drawn by the cell above",
                metadata={"tags": ["remove-input"],
                          "mystnb": {"figure": {"name": name, "caption": figure["caption"]},
                                     "image": {"alt": figure.get("alt", figure["caption"])}}},
                outputs=[shown]))
    nb.cells = cells
    nbformat.write(nb, path)


_WIDGET = "application/vnd.jupyter.widget-view+json"


#: Kernel starts tried per notebook. Two kernels started side by side each pick free TCP ports first and bind them
#: later, so one can lose a port to the other ("Address already in use") and die before it replies; a second start
#: picks new ports.
KERNEL_START_ATTEMPTS = 3


def _kernel_start_failed(err: BaseException) -> bool:
    """Whether ``err`` says the kernel died while starting (not that a cell failed)."""
    return "Kernel died before replying to kernel_info" in str(err)


def repository_url(root: Path | None = None) -> str:
    """The repository's address: ``repository.url`` of ``_config.yml``, the one place it is written."""
    import yaml

    config = yaml.safe_load((_root(root) / "_config.yml").read_text())
    url = (config.get("repository") or {}).get("url")
    if not url:
        raise BookError("_config.yml has no repository.url")
    return url.rstrip("/")


def colab_cell_source(url: str) -> str:
    """The Colab setup cell of every notebook: on Colab, install eacnn (``[colab]`` extra: no book toolchain) from
    the repository at ``url``, beside Colab's own CUDA build of PyTorch (never reinstalled); elsewhere nothing."""
    return (
        "# Running this page on Google Colab: install eacnn beside Colab's own PyTorch (never reinstalled). To keep\n"
        "# data and checkpoints between sessions, mount Google Drive first (Files panel > Mount Drive): eacnn then\n"
        "# keeps them in MyDrive/eacnn. Anywhere else this cell does nothing.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        f'    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "eacnn[colab] @ git+{url}"], check=True)'
    )


def sync_colab_cells(root: Path | None = None) -> list[Path]:
    """Rewrite the Colab setup cell of every notebook in ``_toc.yml`` from :func:`colab_cell_source` with
    :func:`repository_url` (run after changing ``repository.url``); returns the notebooks changed."""
    import nbformat

    root = _root(root)
    source = colab_cell_source(repository_url(root))
    changed = []
    for rel in notebooks_in_toc(root):
        nb = nbformat.read(root / rel, as_version=4)
        cell = next((c for c in nb.cells if c.cell_type == "code" and "google.colab" in c.source), None)
        if cell is None:
            raise BookError(f"{rel} has no Colab setup cell (a code cell mentioning google.colab)")
        tags = [t for t in cell.metadata.get("tags", []) if t not in ("remove-cell", "hide-input", COLAB_TAG)]
        if (cell.source, cell.metadata.get("tags"), cell.metadata.get("mystnb")) != (source, [*tags, COLAB_TAG],
                                                                                   COLAB_PROMPTS):
            cell.source = source
            cell.metadata["tags"] = [*tags, COLAB_TAG]
            cell.metadata["mystnb"] = dict(COLAB_PROMPTS)
            nbformat.write(nb, root / rel)
            changed.append(rel)
    return changed


def _stages(notebooks: list[Path]) -> list[list[Path]]:
    """The notebooks grouped by :data:`STAGES`, in stage order; a chapter missing from it runs alone, in its
    reading-order place after the stages before it."""
    groups: dict[float, list[Path]] = {}
    last = -1.0
    for rel in notebooks:
        stage = STAGES.get(rel.name[:2])
        stage = float(stage) if stage is not None else last + 0.5
        groups.setdefault(stage, []).append(rel)
        last = stage
    return [groups[k] for k in sorted(groups)]


def build_book(profile: str = "smoke", root: Path | None = None, keep_going: bool = False) -> BookResult:
    """Execute every notebook (papermill) and render the book (Jupyter Book 1, ``-W``) into ``<root>/_build/html``.

    Raises:
        BookError: a notebook failed, or Sphinx reported a warning (treated as an error).
    """
    t0 = time.perf_counter()
    root = _root(root)
    staging = root / "_build" / "staging"
    if staging.exists():
        shutil.rmtree(staging)
    timings = execute_notebooks(profile, root=root, staging=staging)
    exe = Path(sys.executable).with_name("jupyter-book")
    if not exe.is_file():
        found = shutil.which("jupyter-book")
        if found is None:
            raise BookError("jupyter-book is not installed: pip install -e '.[book]' (Jupyter Book 1, <2)")
        exe = Path(found)
    cmd = render_command(exe, staging, root, keep_going)
    log.info("rendering: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise BookError(f"jupyter-book build failed (exit {proc.returncode}):\n{tail}")
    index = root / "_build" / "html" / "index.html"
    if not index.is_file():
        raise BookError(f"jupyter-book reported success but {index} is missing")
    if profile == "cpu" and repo_root() is not None and root.resolve() == Path(repo_root()).resolve():
        record_chapter_times(timings)  # the chapters' "Time to run" lines read the last full build
    return BookResult(index, timings, time.perf_counter() - t0)


def render_command(exe: Path, staging: Path, root: Path, keep_going: bool = False) -> list[str]:
    """The Jupyter Book command that renders the staged notebooks: warnings as errors, and every page rebuilt
    (``--all``): a page such as the results page takes its numbers from other pages' glue, which Sphinx's
    incremental build does not track, so an unchanged page would keep the numbers of an earlier build."""
    cmd = [str(exe), "build", str(staging), "--path-output", str(root), "-W", "--all"]
    return cmd + ["--keep-going"] if keep_going else cmd


def record_chapter_times(timings: dict[str, float]) -> Path:
    """Write a full build's chapter times to ``eacnn/data/book_timings.json`` (what each chapter's "Time to run"
    quotes, :func:`eacnn.book.notebook.chapter_time`): seconds per notebook, the date and the cores."""
    import datetime
    import json

    from eacnn.paths import DATA_DIR

    path = DATA_DIR / "book_timings.json"
    data = {"date": datetime.date.today().isoformat(), "cores": os.cpu_count(), "profile": "cpu",
            "chapters": {Path(k).stem: round(float(v), 1) for k, v in sorted(timings.items())}}
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())
    return path


TIMINGS_FILE = "_timings.json"


def _machine() -> dict:
    import platform

    info = {"cpu cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
    try:
        import torch

        info["torch threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        pass
    return info


def _record_timing(staging: Path, notebook: str, seconds: float, profile: str,
                   span: tuple[float, float] | None = None) -> None:
    """Append one notebook's execution time (and its (start, end) wall-clock span, Unix seconds) to the staging
    folder's timing file (read by the run-times page)."""
    import json

    path = staging / TIMINGS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {"machine": _machine(), "notebooks": {}}
    data["profile"] = profile
    data["notebooks"][notebook] = round(seconds, 1)
    if span is not None:
        data.setdefault("spans", {})[notebook] = [round(span[0], 1), round(span[1], 1)]
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())


def build_timings(root: Path | None = None):
    """(DataFrame of notebook execution times in this build so far, machine and profile dict) from the staging
    folder's timing file; an empty DataFrame when no build has run. Chapters of one stage run side by side, so
    their seconds add up to more than the build took: the dict's ``"wall clock (s)"`` is the time from the first
    chapter's start to the last one's end (where the spans were recorded), and the frame's ``started (min)`` says
    when each began after the first."""
    import json

    import pandas as pd

    env = os.environ.get("EACNN_BOOK_STAGING")
    staging = Path(env) if env and root is None else _root(root) / "_build" / "staging"
    path = staging / TIMINGS_FILE
    if not path.is_file():
        return pd.DataFrame(columns=["notebook", "seconds"]), {}
    data = json.loads(path.read_text())
    names = sorted(data["notebooks"])  # chapters of one stage finish in any order
    df = pd.DataFrame({"notebook": names, "seconds": [data["notebooks"][n] for n in names]})
    info = {"profile": data.get("profile"), **data.get("machine", {})}
    spans = data.get("spans", {})
    if names and all(n in spans for n in names):
        first = min(spans[n][0] for n in names)
        df["started (min)"] = [(spans[n][0] - first) / 60 for n in names]
        info["wall clock (s)"] = round(max(spans[n][1] for n in names) - first, 1)
    return df, info
