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
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import BookError
from .paths import atomic_write_bytes, repo_root

log = logging.getLogger(__name__)

__all__ = ["notebooks_in_toc", "execute_notebooks", "build_book", "build_timings", "BookResult"]

#: Files and folders copied from the repository into the staging copy (besides the notebooks).
_STAGED = ("_config.yml", "_toc.yml", "book")


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
) -> dict:
    """Execute the notebooks of the book with papermill into ``staging`` (default ``<root>/_build/staging``).

    Args:
        profile: ``"smoke"`` (parameter ``smoke=True``) or ``"cpu"``/``"paper"`` (``smoke=False``).
        only: execute only notebooks whose file name contains one of these strings (others are not staged).
        timeout: seconds allowed per cell.

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
    parameters = {"smoke": profile == "smoke", "device": "cuda" if profile == "paper" else "auto"}
    timings = {}
    env_before = {k: os.environ.get(k) for k in ("EACNN_BOOK_PROFILE", "TQDM_DISABLE", "EACNN_BOOK_STAGING")}
    os.environ["EACNN_BOOK_PROFILE"] = profile
    os.environ["EACNN_BOOK_STAGING"] = str(staging)  # where the run-times page finds this build's timings
    stale = staging / TIMINGS_FILE
    if stale.is_file() and not only:
        stale.unlink()  # a fresh build times itself from the start
    os.environ["TQDM_DISABLE"] = "1"  # progress bars are for people at a keyboard, not for rendered pages
    try:
        for rel in notebooks_in_toc(root):
            if only and not any(s in rel.name for s in only):
                continue
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            log.info("executing %s (%s)", rel, profile)
            t0 = time.perf_counter()
            try:
                pm.execute_notebook(
                    str(root / rel),
                    str(out),
                    parameters=parameters,
                    cwd=str(root / rel.parent),
                    kernel_name="python3",
                    progress_bar=False,
                    execution_timeout=timeout,
                )
            except pm.PapermillExecutionError as err:
                raise BookError(f"notebook {rel} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                                f"(executed copy with the traceback: {out})") from err
            timings[str(rel)] = time.perf_counter() - t0
            log.info("  %s: %.1f s", rel, timings[str(rel)])
            _record_timing(staging, str(rel), timings[str(rel)], profile)
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return timings


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
    cmd = [str(exe), "build", str(staging), "--path-output", str(root), "-W"]
    if keep_going:
        cmd.append("--keep-going")
    log.info("rendering: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise BookError(f"jupyter-book build failed (exit {proc.returncode}):\n{tail}")
    index = root / "_build" / "html" / "index.html"
    if not index.is_file():
        raise BookError(f"jupyter-book reported success but {index} is missing")
    return BookResult(index, timings, time.perf_counter() - t0)


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


def _record_timing(staging: Path, notebook: str, seconds: float, profile: str) -> None:
    """Append one notebook's execution time to the staging folder's timing file (read by the run-times page)."""
    import json

    path = staging / TIMINGS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {"machine": _machine(), "notebooks": {}}
    data["profile"] = profile
    data["notebooks"][notebook] = round(seconds, 1)
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())


def build_timings(root: Path | None = None):
    """(DataFrame of notebook execution times in this build so far, machine and profile dict) from the staging
    folder's timing file; an empty DataFrame when no build has run."""
    import json

    import pandas as pd

    env = os.environ.get("EACNN_BOOK_STAGING")
    staging = Path(env) if env and root is None else _root(root) / "_build" / "staging"
    path = staging / TIMINGS_FILE
    if not path.is_file():
        return pd.DataFrame(columns=["notebook", "seconds"]), {}
    data = json.loads(path.read_text())
    df = pd.DataFrame({"notebook": list(data["notebooks"]), "seconds": list(data["notebooks"].values())})
    return df, {"profile": data.get("profile"), **data.get("machine", {})}
