"""What every notebook of the book does first: turn papermill's scalar parameters into a Config, say which
profile and data produced the page (the banner), set the figure and table style, and glue numbers for the prose.

Notebook parameters (papermill passes scalars only):

* ``smoke`` (bool): a small run for tests and CI (the same as ``profile = "smoke"``).
* ``profile`` (str): ``"auto"``, ``"smoke"``, ``"cpu"`` or ``"paper"``; ``eacnn book --profile P`` passes ``P``.
  ``"auto"`` picks ``paper`` on a GPU and ``cpu`` on a CPU, except on Colab, where it picks ``cpu`` (the shipped
  checkpoints, evaluated on the GPU) unless ``train`` is set (:func:`resolve_profile`).
* ``train`` (bool): train the models here instead of loading the checkpoints shipped in the package.
* ``device`` (str): ``"auto"``, ``"cpu"`` or ``"cuda"``.
* ``seed`` (int): seed of everything random.
* ``data_source`` (str): ``"embedded"`` (offline default) or ``"mp-api"`` (needs ``MP_API_KEY``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from eacnn.config import Config
from eacnn.errors import ConfigError
from eacnn.paths import repo_root

log = logging.getLogger(__name__)

__all__ = ["setup", "Session", "glue", "in_colab", "resolve_profile", "colab_home", "native_amp",
           "format_table", "PROFILES"]

#: What ``profile`` may be: ``"auto"`` resolves to one of the others (:func:`resolve_profile`).
PROFILES = ("auto", "smoke", "cpu", "paper")
#: Where Colab mounts Google Drive (``google.colab.drive.mount("/content/drive")``).
COLAB_DRIVE = Path("/content/drive/MyDrive")


def in_colab() -> bool:
    """True inside a Google Colab kernel."""
    import sys

    return "google.colab" in sys.modules


def _resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # the simulation chapters do not need torch
        return "cpu"


def resolve_profile(profile: str = "auto", smoke: bool = False, device: str = "cpu", train: bool = False,
                    colab: bool = False) -> str:
    """The profile a notebook runs: ``smoke`` when asked for; an explicit ``cpu`` or ``paper`` as given (so that
    ``eacnn book --profile cpu`` on a GPU machine runs ``cpu``); ``"auto"`` → ``paper`` on a GPU (``device`` is the
    resolved device), ``cpu`` on a CPU — and ``cpu`` on a Colab GPU too, unless ``train`` is set: Colab readers
    evaluate the shipped checkpoints in minutes instead of training the paper-size models for hours.

    Raises:
        ConfigError: an unknown profile, or ``smoke=True`` with another explicit profile.
    """
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {PROFILES}, got {profile!r}")
    if smoke and profile not in ("auto", "smoke"):
        raise ConfigError(f"smoke=True contradicts profile={profile!r}: set one of them")
    if smoke or profile == "smoke":
        return "smoke"
    if profile != "auto":
        return profile
    return "paper" if device == "cuda" and (train or not colab) else "cpu"


def colab_home(drive: Path | None = None) -> Path | None:
    """On Colab with Google Drive mounted at ``drive``, make ``<drive>/eacnn`` the home of caches, runs and
    checkpoints (``EACNN_HOME``), so that a training run outlives the Colab session and resumes in the next one.

    Returns the folder, or None (Drive not mounted, or ``EACNN_HOME`` already set by the reader).
    """
    drive = Path(drive) if drive is not None else COLAB_DRIVE
    if os.environ.get("EACNN_HOME") or not drive.is_dir():
        return None
    home = drive / "eacnn"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["EACNN_HOME"] = str(home)
    log.info("EACNN_HOME=%s (Google Drive)", home)
    return home


def native_amp() -> str:
    """The autocast precision the current GPU computes natively: ``"bf16"`` from compute capability 8 (A100, L4,
    H100), ``"fp16"`` (with a grad scaler) below it (T4, V100), where bfloat16 is emulated and slow."""
    import torch

    major, _ = torch.cuda.get_device_capability()
    return "bf16" if major >= 8 else "fp16"


def _git_commit() -> str:
    root = repo_root()
    if root is None:
        return "installed package"
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class Session:
    """The resolved settings of one executed notebook."""

    config: Config
    device: str
    train: bool = False  # train here even where the package ships checkpoints (the cpu profile)

    @property
    def profile(self) -> str:
        return self.config.profile

    @property
    def models_source(self) -> str:
        """Where this page's trained models come from, in words."""
        return "shipped checkpoints" if self.config.profile == "cpu" and not self.train else "trained here"

    def summary(self) -> str:
        """The profile in one line of plain text, with what its numbers are worth (glued as ``profile_summary``)."""
        data = ("all embedded MP-20 structures" if self.config.data.source == "embedded"
                else f"structures from {self.config.data.source}")
        what = {
            "smoke": "a test run on a few hundred structures with tiny models; its numbers check that the code runs "
                     "and are not results",
            "cpu": data,
            "paper": f"{data}, paper-size models",
        }[self.config.profile]
        return f"{self.config.profile} ({what}; models: {self.models_source})"

    def banner(self) -> str:
        """Markdown naming the profile and data that produced this page."""
        cfg = self.config
        n = "all structures" if not cfg.data.max_structures else (
            f"the first {cfg.data.max_structures} structures of each MP-20 split")
        warn = (
            "**This is a smoke run** — a few hundred structures and tiny models, to check that the code runs. "
            "Its numbers are *not* the paper's results; build the book with `make book` for those."
            if cfg.profile == "smoke"
            else ""
        )
        from eacnn import __version__

        return (
            f"> **Profile `{cfg.profile}`** · data: `{cfg.data.source}` ({n}) · device: `{self.device}` · "
            f"models: {self.models_source} · seed {cfg.seed} · eacnn {__version__} (`{_git_commit()}`) · executed "
            f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n>\n> {warn}"
        ).rstrip("> \n")

    def show_banner(self) -> None:
        from IPython.display import Markdown, display

        display(Markdown(self.banner()))


def setup(smoke: bool = False, device: str = "auto", seed: int = 0, data_source: str = "embedded",
          profile: str = "auto", train: bool = False, show: bool = True) -> Session:
    """Resolve papermill's parameters into a :class:`Session`, set the book's figure and table style, glue the
    profile (``profile``, and ``profile_summary`` in words for the results page) and display the profile banner.

    The profile is :func:`resolve_profile`'s; on Colab, a mounted Google Drive becomes ``EACNN_HOME``
    (:func:`colab_home`) and the ``paper`` profile trains in the precision the GPU computes natively
    (:func:`native_amp`).
    """
    colab = in_colab()
    if colab:
        colab_home()
    dev = _resolve_device(device)
    name = resolve_profile(profile, smoke=bool(smoke), device=dev, train=bool(train), colab=colab)
    cfg = Config.from_profile(name).replace(**{"seed": int(seed), "data.source": str(data_source)})
    if name == "paper" and dev == "cuda" and cfg.train.amp == "bf16":
        cfg = cfg.replace(**{"train.amp": native_amp()})
    session = Session(cfg, dev, train=bool(train))
    if show:
        _apply_book_style()
        glue("profile", cfg.profile)
        glue("profile_summary", session.summary())
        session.show_banner()
    return session


def chapter_time(chapter: str) -> str:
    """The "Time to run" of a chapter (``"05"``), measured, not guessed: its execution time in the last full ``cpu``
    build of the book (``eacnn/data/book_timings.json``, written by ``eacnn book --profile cpu``), with that
    build's date and cores; the ``smoke`` profile takes seconds to a minute a chapter."""
    import json

    from eacnn.paths import DATA_DIR

    path = DATA_DIR / "book_timings.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    seconds = next((v for k, v in data.get("chapters", {}).items() if Path(k).name.startswith(chapter)), None)
    if seconds is None:
        return "not yet measured in a full build (the `smoke` profile takes seconds to a minute)"
    amount = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
    return (f"{amount} on a {data.get('cores', '?')}-core CPU in the full `cpu` build of {data.get('date', '?')}, "
            f"beside another chapter (the run-times page has the whole build; the `smoke` profile takes seconds "
            f"to a minute)")


def _apply_book_style() -> None:
    """Figures at 150 dpi with text of 9 pt or more; tables with thousands separators, integers without ".0",
    space-group symbols as printed (P2₁/c) and no NaN. Set here, in the kernel, never on import."""
    from eacnn.book.plots import apply_style

    apply_style()
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    import pandas as pd

    shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, format_table)


#: Columns whose strings are Hermann–Mauguin symbols (printed as P2₁/c by :func:`format_table`).
_SYMBOL_COLUMNS = ("spacegroup", "space group", "spacegroup_symbol", "symbol")


#: column names of the package's tables as a reader wants them (the rest: underscores become spaces)
HEADERS = {"material_id": "id", "spacegroup_symbol": "space group", "spacegroup_number": "SG no.",
           "crystal_system": "system", "spacegroup": "space group", "test_samples": "test structures",
           "weight_fraction": "wt fraction", "intensity_fraction": "intensity fraction", "zero_shift": "zero shift (°)",
           "n_sites": "sites", "top1": "Top-1", "top3": "Top-3", "top5": "Top-5", "top10": "Top-10"}


def format_table(df, index: bool | None = None, headers: dict | None = None) -> str:
    """HTML of a DataFrame as the book shows it: integers (and float columns holding only whole numbers) with
    thousands separators and no ".0", other floats with the decimals the column needs (at most 6), missing values
    as "–", space-group symbols as printed (P2₁/c, Fm3̄m), headers readable (:data:`HEADERS`, then ``headers``;
    underscores as spaces), and no index where it only counts rows (``index`` None: hidden when it is a plain
    0, 1, 2, …; True/False: shown/hidden)."""
    import numpy as np
    import pandas as pd

    from eacnn.book.plots import pretty_spacegroup

    plain = isinstance(df.index, pd.RangeIndex) and df.index.name is None
    show_index = (not plain) if index is None else index

    formatters = []
    for position in range(df.shape[1]):
        col = df.iloc[:, position]
        name = " ".join(map(str, df.columns[position])) if isinstance(df.columns[position], tuple) else str(
            df.columns[position])
        fmt = None
        if pd.api.types.is_bool_dtype(col):
            fmt = None
        elif pd.api.types.is_integer_dtype(col):
            fmt = _int_text
        elif pd.api.types.is_float_dtype(col):
            values = col.to_numpy(dtype=float)
            finite = values[np.isfinite(values)]
            if finite.size and np.all(finite == np.round(finite)) and np.abs(finite).max() < 1e15:
                fmt = _int_text
            elif finite.size:
                decimals = max(len(f"{v:.6f}".rstrip("0").split(".")[1]) for v in finite)
                fmt = _float_text(decimals)
        elif name.lower() in _SYMBOL_COLUMNS:
            fmt = pretty_spacegroup
        elif pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col):
            fmt = _pretty_text
        formatters.append(fmt)
    names = {**HEADERS, **(headers or {})}

    def header(name):
        if isinstance(name, tuple):
            return tuple(header(n) for n in name)
        return names.get(name, str(name).replace("_", " ")) if isinstance(name, str) else name

    shown = df.copy()
    shown.columns = pd.Index([header(c) for c in df.columns]) if not isinstance(df.columns, pd.MultiIndex) else \
        pd.MultiIndex.from_tuples([header(c) for c in df.columns])
    return shown.to_html(formatters=formatters, na_rep="–", notebook=True, border=0, index=show_index,
                         max_rows=pd.get_option("display.max_rows"), max_cols=pd.get_option("display.max_columns"))


def _pretty_text(value) -> str:
    """Text cells: space-group symbols among the words printed as in crystallography (``P4_2/mnm`` -> P4₂/mnm)."""
    from eacnn.book.plots import pretty_spacegroups_in

    return pretty_spacegroups_in(value) if isinstance(value, str) else str(value)


def _int_text(value) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError, OverflowError):  # NaN in an integer-valued float column
        return "–"


def _float_text(decimals: int):
    def fmt(value) -> str:
        try:
            return f"{float(value):,.{decimals}f}" if value == value else "–"
        except (TypeError, ValueError):
            return str(value)

    return fmt


def glue(name: str, value, fmt: str | None = None) -> None:
    """Glue a value for ``{glue:text}`` in the book's prose, as text: formatted with ``fmt`` when given, else
    integers with thousands separators (``18,093``), whole floats without ".0", NumPy scalars as plain numbers
    (never ``np.float64(...)``). Returns None, so that a glue ending a cell echoes nothing on the page."""
    _glue_object(name, glue_text(value, fmt))


def glue_text(value, fmt: str | None = None) -> str:
    """The text :func:`glue` shows for ``value``."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()  # NumPy scalar -> Python number
    if fmt:
        return format(value, fmt)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.6g}"


#: MIME prefix of a glued value that is stored but not displayed (myst-nb's ``GLUE_PREFIX``).
_GLUE_PREFIX = "application/papermill.record/"


def _glue_object(name: str, obj) -> None:
    """Store ``obj``'s display data in the notebook for myst-nb's glue roles, without displaying it. Uses myst-nb
    where it is installed; on Colab (``eacnn[colab]`` has no book toolchain) writes the same output itself."""
    try:
        from myst_nb import glue as _glue
    except ImportError:
        from IPython.core.formatters import format_display_data
        from IPython.display import display

        bundle, metadata = format_display_data(obj)
        metadata["scrapbook"] = {"name": name, "mime_prefix": _GLUE_PREFIX}
        display({_GLUE_PREFIX + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)
        return
    _glue(name, obj, display=False)


def trained_models(session: Session, dataset, kinds: tuple[str, ...] = ("eacnn", "paper"),
                   progress: bool | None = None) -> dict:
    """The trained models a chapter evaluates, by model kind, as each profile provides them:

    * ``smoke``: tiny models trained here in seconds on the smoke data (cached in the runs folder);
    * ``cpu``: the checkpoints shipped in the package (``eacnn/data/checkpoints``), trained on the embedded data
      (trained here instead when the session's ``train`` is set);
    * ``paper`` (GPU): trained here with :func:`eacnn.training.loop.load_or_train` (resumed or loaded when a run exists).

    ``progress`` (default: when training here on Colab or by request) shows a progress bar with the time left.

    Returns:
        kind -> :class:`eacnn.models.EACNN` in eval mode.
    """
    import torch

    from eacnn.training.checkpoint import SHIPPED, load_pretrained
    from eacnn.training.loop import load_or_train

    torch.set_flush_denormal(True)  # CPU: MACE steps slow down 10-20x on denormal floats without it
    cfg = session.config
    progress = (session.train or in_colab()) if progress is None else progress
    models = {}
    for kind in kinds:
        if _shipped(session):
            models[kind] = load_pretrained(SHIPPED[kind], map_location=session.device)
        else:
            models[kind] = load_or_train(cfg.replace(**{"model.kind": kind}), dataset, progress=progress)
    return models


def trained_classifier(session: Session, dataset):
    """The space-group classifier baseline as each profile provides it: shipped for ``cpu``
    (``eacnn/data/checkpoints/classifier.pt``), trained here (and cached) for ``smoke`` and ``paper``.

    Returns:
        (:class:`eacnn.training.classifier.SpaceGroupClassifier` in eval mode, its per-epoch history DataFrame).
    """
    from eacnn.training.classifier import SHIPPED_CLASSIFIER, ClassifierConfig, load_classifier, load_or_train_classifier

    cfg = session.config
    if _shipped(session):
        return load_classifier(SHIPPED_CLASSIFIER)
    settings = ClassifierConfig(epochs=8, batch_size=32, lr=3e-3) if cfg.profile == "smoke" else ClassifierConfig(
        epochs=cfg.train.epochs, batch_size=cfg.train.batch_size)
    return load_or_train_classifier(cfg, dataset, settings, progress=False)


def _shipped(session: Session) -> bool:
    """Whether the session evaluates the checkpoints shipped in the package rather than models trained here."""
    return session.config.profile == "cpu" and not session.train


#: How the book names the two model configurations.
MODEL_NAMES = {"eacnn": "ours (eacnn)", "paper": "paper tower"}


def training_log(session: Session, dataset, kind: str):
    """The per-epoch training log (DataFrame) of the model :func:`trained_models` gives for ``kind``: the shipped
    ``<checkpoint>_log.csv`` for the ``cpu`` profile, else the run folder's ``log.csv``."""
    import pandas as pd

    from eacnn.training.checkpoint import SHIPPED
    from eacnn.training.loop import default_run_dir

    cfg = session.config
    if _shipped(session):
        path = SHIPPED[kind].with_name(SHIPPED[kind].stem + "_log.csv")
    else:
        path = default_run_dir(cfg.replace(**{"model.kind": kind}), dataset.key) / "log.csv"
    return pd.read_csv(path)


#: validation queries the smoke profile calibrates a database's verdict on (each asked present and absent, every
#: candidate refined): enough to run the calibration, not to trust it
SMOKE_CALIBRATION = 12
#: candidates the smoke profile refines per query, in its calibration and chapter 9's searches (the search's own
#: depth, ``SearchConfig.rerank_depth``, otherwise): enough to run the path
SMOKE_DEPTH = 10


def mixture_database(session: Session, model, dataset):
    """The database the mixtures chapter searches: the search database of :func:`search_database` plus the reference
    folders of the measured mixtures (XRD-AutoAnalyzer's Li–Mn–Ti–O–F and La–Zr–Li–O references, the Dara
    precursors from the literature), as a user holding reference files would search. ``cpu``: the shipped model's
    embedded structures plus the folders (built once, cached); ``smoke``/``paper``: the folders (smoke) or the
    embedded structures and the folders (paper), embedded by the model trained here."""
    from eacnn.paths import REFERENCE_CIFS_DARA_DIR, REFERENCE_CIFS_DIR, REFERENCE_CIFS_LA_ZR_LI_DIR

    folders = [str(REFERENCE_CIFS_DIR), str(REFERENCE_CIFS_LA_ZR_LI_DIR), str(REFERENCE_CIFS_DARA_DIR)]
    return _profile_database(session, model, dataset, ["embedded", *folders],
                             folders if session.config.profile == "smoke" else ["embedded", *folders], "mixtures-")


def search_database(session: Session, model, dataset):
    """The saved search database a chapter identifies measured patterns in, as each profile provides it:

    * ``cpu``: the embedded structures with the shipped model (assembled from the shipped embeddings, cached);
    * ``smoke`` and ``paper``: the reference CIFs of the measured phases (smoke) or the embedded structures
      (paper), embedded by the model trained here, with its verdict calibrated on ``dataset``'s validation split;
      cached in the runs folder by the model's weights.

    Returns:
        a :class:`eacnn.retrieval.database.SavedDatabase`.
    """
    from eacnn.paths import REFERENCE_CIFS_DIR

    return _profile_database(session, model, dataset, ["embedded"],
                             [str(REFERENCE_CIFS_DIR)] if session.config.profile == "smoke" else ["embedded"], "")


def _profile_database(session: Session, model, dataset, cpu_sources: list, trained_sources: list, tag: str):
    """``cpu``: the shipped model's database of ``cpu_sources`` (:func:`default_database`); otherwise
    ``trained_sources`` embedded by ``model`` with its verdict calibrated on ``dataset`` (smoke: on
    :data:`SMOKE_CALIBRATION` validation queries refined :data:`SMOKE_DEPTH` deep, which exercise the path in seconds and
    calibrate nothing; else
    the search's own count, ``SearchConfig.calibration_queries``), cached in the runs folder by the model's weights,
    the sources and the data set."""
    import hashlib

    from eacnn.paths import runs_dir
    from eacnn.retrieval.database import cached_database, default_database, model_database
    from eacnn.retrieval.embed import model_digest

    cfg = session.config
    if cfg.profile == "cpu":
        return default_database(cpu_sources, progress=False)
    key = hashlib.sha256((model_digest(model) + repr(trained_sources) + str(dataset.key)).encode()).hexdigest()[:16]
    folder = runs_dir() / "databases" / f"{cfg.profile}-{tag}{key}"
    smoke = cfg.profile == "smoke"
    return cached_database(folder, lambda: model_database(
        model, cfg, trained_sources, folder, progress=False, calibration_queries=SMOKE_CALIBRATION if smoke else None,
        calibration_rerank=SMOKE_DEPTH if smoke else None))
