"""Where eacnn keeps data, caches, runs and figures — resolved here and nowhere else.

Environment overrides (all optional):

========================  ==============================================  ===========================
variable                  meaning                                         default
========================  ==============================================  ===========================
``EACNN_HOME``            root of every writable folder below              ``<repo>/.cache`` in a source
                                                                          checkout, else ``~/.cache/eacnn``
``EACNN_CACHE``           built datasets (vectors, sticks, graphs)         ``$EACNN_HOME/datasets``
``EACNN_RUNS``            training runs (checkpoints, logs)                ``$EACNN_HOME/runs``
``EACNN_FIGURES``         figures written by :func:`eacnn.book.plots.save_figure` ``$EACNN_HOME/figures``
========================  ==============================================  ===========================
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: Data shipped inside the package (embedded MP-20 structures, checkpoints, fixtures).
DATA_DIR = PACKAGE_DIR / "data"
#: Five measured single-phase patterns (XRD-AutoAnalyzer, MIT; see the README there).
MEASURED_DIR = DATA_DIR / "measured"
#: The 56 reference CIFs of those patterns (same source).
REFERENCE_CIFS_DIR = DATA_DIR / "reference_cifs"
#: Measured mixtures: four XRD-AutoAnalyzer scans and 30 Dara lab scans of 15 precursor mixtures (MIT; README there).
MIXTURES_DIR = MEASURED_DIR / "mixtures"
#: XRD-AutoAnalyzer's 28 La–Zr–Li–O reference CIFs (for ``PDF_Example__Li2CO3-ZrO2``; MIT).
REFERENCE_CIFS_LA_ZR_LI_DIR = DATA_DIR / "reference_cifs_la_zr_li"
#: The Dara precursors neither reference folder holds, entered from their structure determinations (README there).
REFERENCE_CIFS_DARA_DIR = DATA_DIR / "reference_cifs_dara"


def repo_root() -> Path | None:
    """The source checkout holding this package, or None when eacnn is installed from a wheel."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def home() -> Path:
    env = os.environ.get("EACNN_HOME")
    if env:
        return Path(env).expanduser()
    root = repo_root()
    return root / ".cache" if root is not None else Path.home() / ".cache" / "eacnn"


def _sub(var: str, name: str) -> Path:
    env = os.environ.get(var)
    path = Path(env).expanduser() if env else home() / name
    return path


def cache_dir() -> Path:
    """Built datasets. Created on first use."""
    path = _sub("EACNN_CACHE", "datasets")
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """Training runs. Created on first use."""
    path = _sub("EACNN_RUNS", "runs")
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir() -> Path:
    """Saved figures. Created on first use."""
    path = _sub("EACNN_FIGURES", "figures")
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_folder(path: str | Path, marker: str = "manifest.json", what: str = "an eacnn database") -> Path:
    """The absolute folder a command may write (replace) as a whole: new, empty, or a previous output of the same
    kind (it holds ``marker``). Anything else -- a file, a folder with other content (the source CIFs, a home
    folder), or a place that cannot be written -- is refused before any work, so nothing eacnn did not write is
    ever removed.

    Raises:
        EACNNError: the folder is not ours to replace, or its parent cannot be written.
    """
    from eacnn.errors import EACNNError

    folder = Path(path).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise EACNNError(f"--out {str(path)!r} is a file, not a folder; name a new folder")
    if folder.is_dir():
        try:
            entries = list(folder.iterdir())
        except OSError as err:
            raise EACNNError(f"--out {str(path)!r} cannot be read ({err.strerror}); name another folder") from err
        if entries and not (folder / marker).is_file():
            raise EACNNError(f"--out {str(path)!r} holds {len(entries)} file(s) or folder(s) and is not {what}: "
                             f"eacnn replaces only a new or empty folder or one of its own outputs, and deletes "
                             f"nothing it did not write; name a new folder")
        if folder == Path.cwd().resolve() or folder in Path.cwd().resolve().parents:
            raise EACNNError(f"--out {str(path)!r} is the working folder or above it; name a new folder")
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:  # a real probe: permission bits do not tell about read-only mounts, /proc, or root's rights
        os.rmdir(tempfile.mkdtemp(prefix=".eacnn-probe-", dir=parent))
    except OSError as err:
        raise EACNNError(f"--out {str(path)!r} cannot be written ({err.strerror} in {parent}); name a folder you "
                         f"can write") from err
    return folder


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or Ctrl-C mid-write leaves neither a partial file nor the temporary one
        tmp.unlink(missing_ok=True)
        raise
