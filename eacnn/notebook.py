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
