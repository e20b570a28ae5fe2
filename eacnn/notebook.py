"""What every notebook of the book does first: turn papermill's scalar parameters into a Config, say which
profile and data produced the page (the banner), and glue numbers for the prose.

Notebook parameters (papermill passes scalars only):

* ``smoke`` (bool): a small run for tests and CI; False selects ``cpu`` on a CPU and ``paper`` on a GPU.
* ``device`` (str): ``"auto"``, ``"cpu"`` or ``"cuda"``.
* ``seed`` (int): seed of everything random.
* ``data_source`` (str): ``"embedded"`` (offline default) or ``"mp-api"`` (needs ``MP_API_KEY``).
"""

from __future__ import annotations

import datetime as _dt
import subprocess
from dataclasses import dataclass

from .config import Config
from .errors import ConfigError
from .paths import repo_root

__all__ = ["setup", "Session", "glue", "in_colab"]


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

    @property
    def profile(self) -> str:
        return self.config.profile

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
        from . import __version__

        return (
            f"> **Profile `{cfg.profile}`** · data: `{cfg.data.source}` ({n}) · device: `{self.device}` · "
            f"seed {cfg.seed} · eacnn {__version__} (`{_git_commit()}`) · executed "
            f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n>\n> {warn}"
        ).rstrip("> \n")

    def show_banner(self) -> None:
        from IPython.display import Markdown, display

        display(Markdown(self.banner()))


def setup(smoke: bool = False, device: str = "auto", seed: int = 0, data_source: str = "embedded",
          show: bool = True) -> Session:
    """Resolve papermill's parameters into a :class:`Session` and display the profile banner.

    ``smoke=True`` → ``Config.smoke()``; otherwise ``Config.paper()`` on a GPU and ``Config.cpu()`` on a CPU.
    """
    dev = _resolve_device(device)
    cfg = Config.smoke() if smoke else (Config.paper() if dev == "cuda" else Config.cpu())
    cfg = cfg.replace(**{"seed": int(seed), "data.source": str(data_source)})
    session = Session(cfg, dev)
    if show:
        session.show_banner()
    return session


def glue(name: str, value, fmt: str | None = None):
    """Glue a value for ``{glue:text}`` in the book's prose (formatted with ``fmt`` if given) and return it.

    Numbers are glued as strings when ``fmt`` is given, so the page shows exactly the printed precision.
    """
    from myst_nb import glue as _glue

    shown = format(value, fmt) if fmt else value
    _glue(name, shown, display=False)
    return value


def trained_models(session: Session, dataset, kinds: tuple[str, ...] = ("eacnn", "paper"), progress: bool = False
                   ) -> dict:
    """The trained models a chapter evaluates, by model kind, as each profile provides them:

    * ``smoke``: tiny models trained here in seconds on the smoke data (cached in the runs folder);
    * ``cpu``: the checkpoints shipped in the package (``eacnn/data/checkpoints``), trained on the embedded data;
    * ``paper`` (GPU): trained here with :func:`eacnn.train.load_or_train` (resumed or loaded when a run exists).

    Returns:
        kind -> :class:`eacnn.models.EACNN` in eval mode.
    """
    import torch

    from .checkpoint import SHIPPED, load_pretrained
    from .train import load_or_train

    torch.set_flush_denormal(True)  # CPU: MACE steps slow down 10-20x on denormal floats without it
    cfg = session.config
    models = {}
    for kind in kinds:
        if cfg.profile == "cpu":
            models[kind] = load_pretrained(SHIPPED[kind], map_location=session.device)
        else:
            models[kind] = load_or_train(cfg.replace(**{"model.kind": kind}), dataset, progress=progress)
    return models


def trained_classifier(session: Session, dataset):
    """The space-group classifier baseline as each profile provides it: shipped for ``cpu``
    (``eacnn/data/checkpoints/classifier.pt``), trained here (and cached) for ``smoke`` and ``paper``.

    Returns:
        (:class:`eacnn.classifier.SpaceGroupClassifier` in eval mode, its per-epoch history DataFrame).
    """
    from .classifier import SHIPPED_CLASSIFIER, ClassifierConfig, load_classifier, load_or_train_classifier

    cfg = session.config
    if cfg.profile == "cpu":
        return load_classifier(SHIPPED_CLASSIFIER)
    settings = ClassifierConfig(epochs=8, batch_size=32, lr=3e-3) if cfg.profile == "smoke" else ClassifierConfig(
        epochs=cfg.train.epochs, batch_size=cfg.train.batch_size)
    return load_or_train_classifier(cfg, dataset, settings, progress=False)


def best_epoch(log):
    """The row of a training log that selection kept: the best ``val_score`` (mean of clean and perturbed
    validation Top-1) where the log has one, else the best clean ``val_top1`` (logs of the earlier protocol)."""
    score = log["val_score"] if "val_score" in log and log["val_score"].notna().any() else log["val_top1"]
    return log.loc[score.idxmax()]


def validation_pool(log, default: int) -> int:
    """Candidates per validation query of a training log (``val_pool``); ``default`` for logs without it."""
    if "val_pool" in log and log["val_pool"].notna().any():
        return int(log["val_pool"].dropna().iloc[-1])
    return int(default)


#: How the book names the two model configurations.
MODEL_NAMES = {"eacnn": "ours (eacnn)", "paper": "paper tower"}


def training_log(session: Session, dataset, kind: str):
    """The per-epoch training log (DataFrame) of the model :func:`trained_models` gives for ``kind``: the shipped
    ``<checkpoint>_log.csv`` for the ``cpu`` profile, else the run folder's ``log.csv``."""
    import pandas as pd

    from .checkpoint import SHIPPED
    from .train import default_run_dir

    cfg = session.config
    if cfg.profile == "cpu":
        path = SHIPPED[kind].with_name(SHIPPED[kind].stem + "_log.csv")
    else:
        path = default_run_dir(cfg.replace(**{"model.kind": kind}), dataset.key) / "log.csv"
    return pd.read_csv(path)
