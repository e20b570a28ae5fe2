"""Every figure of the book. The only module that imports matplotlib; each function draws on ``ax`` (or a new
one) and returns the Axes, like pymatgen's ``get_plot``. :func:`save_figure` writes stable names."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .config import XRDConfig
from .paths import figures_dir

__all__ = [
    "CRYSTAL_SYSTEMS",
    "SYSTEM_COLORS",
    "save_figure",
    "plot_vector",
    "plot_sticks",
    "plot_pattern_comparison",
    "plot_spacegroup_frequency",
    "plot_patterns_by_system",
]

#: The seven crystal systems, from lowest to highest symmetry.
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
#: One colour per crystal system, used in every figure (colour-blind friendly, Okabe–Ito).
SYSTEM_COLORS = dict(zip(CRYSTAL_SYSTEMS, ("#999999", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2",
                                            "#D55E00")))


def _ax(ax=None, figsize=(7, 3)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def save_figure(fig_or_ax, name: str, folder: Path | None = None, dpi: int = 150) -> Path:
    """Save a figure as ``<folder>/<name>.png`` (default :func:`eacnn.paths.figures_dir`); returns the path."""
    fig = getattr(fig_or_ax, "figure", fig_or_ax)
    path = Path(folder or figures_dir()) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def plot_vector(vector: np.ndarray, ax=None, config: XRDConfig | None = None, label: str | None = None,
                offset: float = 0.0, **kwargs):
    """The 140-bin model input as a step curve over 2θ (degrees)."""
    cfg = config or XRDConfig()
    ax = _ax(ax)
    edges = cfg.bin_edges()
    ax.stairs(np.asarray(vector) + offset, edges, baseline=offset, label=label, **kwargs)
    ax.set_xlabel("2θ (°)")
    ax.set_ylabel("intensity (bin integral, max 1)")
    ax.set_xlim(edges[0], edges[-1])
    return ax


def plot_sticks(two_theta: np.ndarray, intensity: np.ndarray, ax=None, scale: float = 1.0, label: str | None = None,
                hkls: Sequence | None = None, annotate: int = 0, **kwargs):
    """Stick pattern (one vertical line per reflection); the ``annotate`` strongest get their (hkl)."""
    ax = _ax(ax)
    inten = np.asarray(intensity, dtype=float) * scale
    ax.vlines(two_theta, 0, inten, label=label, **kwargs)
    if annotate and hkls is not None:
        for i in np.argsort(inten)[::-1][:annotate]:
            fam = hkls[i][0]["hkl"] if hkls[i] else ()
            ax.annotate("".join(str(v) for v in fam), (two_theta[i], inten[i]), textcoords="offset points",
                        xytext=(0, 2), ha="center", fontsize=7)
    ax.set_xlabel("2θ (°)")
    return ax


def plot_pattern_comparison(ours, reference, vector: np.ndarray | None = None, ax=None, title: str | None = None,
                            config: XRDConfig | None = None):
    """Our sticks (up) against pymatgen's (down, mirrored), optionally with the binned vector on top."""
    ax = _ax(ax, figsize=(8, 3.5))
    plot_sticks(ours.two_theta, ours.intensity / 100, ax=ax, color="C0", label="eacnn", lw=1.2,
                hkls=ours.hkls, annotate=5)
    plot_sticks(reference.x, -np.asarray(reference.y) / 100, ax=ax, color="C3", label="pymatgen XRDCalculator",
                lw=1.2)
    if vector is not None:
        plot_vector(vector, ax=ax, config=config, color="k", lw=0.8, label="140-bin model input")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("relative intensity")
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title)
    return ax


def plot_spacegroup_frequency(spacegroup_numbers: np.ndarray, crystal_systems: np.ndarray, ax=None,
                              title: str | None = None):
    """Structures per space group (log scale), bars coloured by crystal system (the paper's Fig. 2)."""
    import pandas as pd

    ax = _ax(ax, figsize=(9, 3.5))
    df = pd.DataFrame({"sg": np.asarray(spacegroup_numbers), "cs": np.asarray(crystal_systems)})
    counts = df.groupby("sg").agg(n=("sg", "size"), cs=("cs", "first")).reset_index()
    ax.bar(counts["sg"], counts["n"], width=1.0, color=[SYSTEM_COLORS.get(c, "k") for c in counts["cs"]])
    ax.set_yscale("log")
    ax.set_xlim(0.5, 230.5)
    ax.set_xlabel("space group number")
    ax.set_ylabel("structures")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=SYSTEM_COLORS[c], label=c) for c in CRYSTAL_SYSTEMS], fontsize=7, ncol=4)
    if title:
        ax.set_title(title)
    return ax


def plot_patterns_by_system(vectors: np.ndarray, crystal_systems: Sequence[str], titles: Sequence[str], axes=None,
                            config: XRDConfig | None = None):
    """One example pattern per crystal system, stacked, coloured like every other figure."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(len(vectors), 1, figsize=(7, 1.1 * len(vectors) + 0.6), sharex=True,
                               layout="constrained")
    for ax, vec, cs, title in zip(np.atleast_1d(axes), vectors, crystal_systems, titles):
        plot_vector(vec, ax=ax, config=config, color=SYSTEM_COLORS.get(cs, "k"), fill=True)
        ax.set_ylabel("")
        ax.set_yticks([])
        ax.text(0.99, 0.85, title, transform=ax.transAxes, ha="right", va="top", fontsize=8)
    return axes


def plot_training_curves(logs: dict, axes=None):
    """Training loss, validation Top-1 and learned temperature per epoch, one line per model (name -> log)."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(11, 3), layout="constrained")
    for (name, log), color in zip(logs.items(), ("C0", "C3", "C2", "C1")):
        axes[0].plot(log["epoch"], log["train_loss"], color=color, label=f"{name} (train)")
        axes[0].plot(log["epoch"], log["val_loss"], color=color, ls="--", label=f"{name} (validation)")
        axes[1].plot(log["epoch"], 100 * log["val_top1"], color=color, marker="o", ms=3, label=name)
        axes[2].plot(log["epoch"], log["temperature"], color=color, label=name)
    axes[0].set(xlabel="epoch", ylabel="InfoNCE loss", title="loss")
    axes[1].set(xlabel="epoch", ylabel="Top-1 (%)", title="validation retrieval (clean patterns)")
    axes[2].set(xlabel="epoch", ylabel="temperature", title="learned temperature")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    return axes


def plot_augmentation(clean: np.ndarray, perturbed: dict, ax=None, config: XRDConfig | None = None):
    """A clean pattern and its perturbed versions (level name -> vector), stacked."""
    ax = _ax(ax, figsize=(8, 3.5))
    plot_vector(clean, ax=ax, config=config, color="k", label="clean")
    for k, (name, vec) in enumerate(perturbed.items(), start=1):
        plot_vector(vec, ax=ax, config=config, offset=1.1 * k, color=f"C{k}", label=name)
    ax.set_ylabel("intensity (offset)")
    ax.legend(fontsize=7, loc="upper right")
    return ax
