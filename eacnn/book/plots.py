"""Every figure of the book. The only module that imports matplotlib; each function draws on ``ax`` (or a new
one) and returns the Axes, like pymatgen's ``get_plot``. :func:`save_figure` writes stable names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from eacnn.config import XRDConfig
from eacnn.paths import figures_dir

__all__ = [
    "CRYSTAL_SYSTEMS",
    "STYLE",
    "apply_style",
    "pretty_spacegroup",
    "hkl_label",
    "pretty_spacegroups_in",
    "SYSTEM_COLORS",
    "save_figure",
    "plot_vector",
    "plot_sticks",
    "plot_pattern_comparison",
    "plot_spacegroup_frequency",
    "plot_patterns_by_system",
    "plot_training_curves",
    "plot_augmentation",
    "plot_model_input",
    "plot_case_study",
    "plot_top_hits",
    "plot_scan",
    "plot_preprocessing",
    "plot_robustness",
    "plot_accuracy_vs_frequency",
    "plot_classifier_vs_retrieval",
    "plot_embedding_map",
    "plot_tsne_panels",
    "plot_robustness_conditions",
    "plot_mixture",
]

#: The seven crystal systems, from lowest to highest symmetry.
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
#: One colour per crystal system, used in every figure (colour-blind friendly, Okabe–Ito).
SYSTEM_COLORS = dict(zip(CRYSTAL_SYSTEMS, ("#999999", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2",
                                            "#D55E00")))


#: The smallest text on any figure (points): at :data:`STYLE`'s 150 dpi it stays legible when a page scales the
#: figure down to its column.
SMALL_FONT = 9
#: The book's matplotlib defaults, set by :func:`apply_style` (from the notebook setup; importing eacnn sets none).
STYLE = {
    "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": SMALL_FONT,
    "ytick.labelsize": SMALL_FONT, "legend.fontsize": SMALL_FONT, "figure.dpi": 150, "savefig.dpi": 150,
}


def apply_style() -> None:
    """Set :data:`STYLE` in matplotlib's rcParams (called by :func:`eacnn.book.notebook.setup`)."""
    import matplotlib.pyplot as plt  # activates a notebook's inline backend first, so that it cannot undo these

    plt.rcParams.update(STYLE)


def pretty_spacegroup(symbol: str) -> str:
    """A Hermann–Mauguin symbol as printed in crystallography: ``"P2_1/c"`` -> ``"P2₁/c"``,
    ``"Fm-3m"`` -> ``"Fm3̄m"`` (screw axes as subscripts, rotoinversions overlined); anything else unchanged."""
    if not isinstance(symbol, str) or not re.fullmatch(r"[PIFCABR][0-9a-z_/ \-]*", symbol.strip()):
        return symbol
    s = re.sub(r"_(\d)", lambda m: "₀₁₂₃₄₅₆₇₈₉"[int(m.group(1))], symbol.strip())
    return re.sub(r"-(\d)", "\\1\u0305", s)


def pretty_spacegroups_in(text: str) -> str:
    """Every space-group symbol among the words of ``text`` printed as :func:`pretty_spacegroup` does
    (``"TiO2 P4_2/mnm (30)"`` -> ``"TiO2 P4₂/mnm (30)"``)."""
    return " ".join(pretty_spacegroup(w) if re.fullmatch(r"[PIFCABR][0-9a-z_/\-]+", w) else w
                    for w in str(text).split(" "))


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
                hkls: Sequence | None = None, annotate: int = 0, min_gap: float = 2.5, **kwargs):
    """Stick pattern (one vertical line per reflection); the ``annotate`` strongest that lie at least ``min_gap``
    degrees from a stronger labelled one get their (hkl), negative indices with a bar (1̄), so labels never collide."""
    ax = _ax(ax)
    inten = np.asarray(intensity, dtype=float) * scale
    ax.vlines(two_theta, 0, inten, label=label, **kwargs)
    if annotate and hkls is not None:
        placed: list[float] = []
        for i in np.argsort(inten)[::-1]:
            if len(placed) == annotate:
                break
            if any(abs(two_theta[i] - t) < min_gap for t in placed) or not hkls[i]:
                continue
            placed.append(float(two_theta[i]))
            ax.annotate(hkl_label(hkls[i][0]["hkl"]), (two_theta[i], inten[i]), textcoords="offset points",
                        xytext=(0, 2), ha="center", fontsize=SMALL_FONT)
    ax.set_xlabel("2θ (°)")
    return ax


def hkl_label(hkl: Sequence[int]) -> str:
    """Miller indices as crystallographers write them: ``(11̄1)`` for (1, −1, 1), spaces between indices ≥ 10."""
    digits = [f"{abs(int(v))}" + ("\u0305" if v < 0 else "") for v in hkl]
    sep = " " if any(abs(int(v)) >= 10 for v in hkl) else ""
    return "(" + sep.join(digits) + ")"


def plot_pattern_comparison(ours, reference, vector: np.ndarray | None = None, ax=None, title: str | None = None,
                            config: XRDConfig | None = None):
    """Our sticks (up) against pymatgen's (down, mirrored), each scaled to its strongest = 1, optionally with the
    binned vector (max 1) on top: one normalised scale, so that agreement shows as mirror symmetry."""
    ax = _ax(ax, figsize=(8, 3.5))
    ours_i = np.asarray(ours.intensity, dtype=float)
    ref_i = np.asarray(reference.y, dtype=float)
    plot_sticks(ours.two_theta, ours_i / max(ours_i.max(initial=0.0), 1e-300), ax=ax, color="C0", label="eacnn",
                lw=1.2, hkls=ours.hkls, annotate=5)
    plot_sticks(reference.x, -ref_i / max(ref_i.max(initial=0.0), 1e-300), ax=ax, color="C3",
                label="pymatgen XRDCalculator (mirrored)", lw=1.2)
    if vector is not None:
        plot_vector(vector, ax=ax, config=config, color="k", lw=0.8, label="140-bin model input")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(-1.1, 1.25)
    ax.set_ylabel("intensity / strongest")
    ax.legend(fontsize=SMALL_FONT, loc="lower right")
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

    # the legend sits above the bars: headroom on the log axis (×30 the tallest bar) keeps it off the data
    ax.set_ylim(0.7, float(counts["n"].max()) * 30)
    ax.legend(handles=[Patch(color=SYSTEM_COLORS[c], label=c) for c in CRYSTAL_SYSTEMS], fontsize=SMALL_FONT, ncol=7,
              loc="upper center", columnspacing=1.0, handlelength=1.2, frameon=False)
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
        ax.text(0.99, 0.85, _pretty_title(title), transform=ax.transAxes, ha="right", va="top", fontsize=SMALL_FONT,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    _tidy_stack(list(np.atleast_1d(axes)))
    return axes


def _pretty_title(text: str) -> str:
    """Space-group symbols in a "formula · symbol · system" title printed as in the tables (P6₃/mmc)."""
    return " · ".join(pretty_spacegroup(part) if k == 1 else part for k, part in enumerate(text.split(" · ")))


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
    axes[0].legend(fontsize=SMALL_FONT)
    axes[1].legend(fontsize=SMALL_FONT)
    return axes


def plot_learning_curves(curves, axes=None):
    """Validation Top-1 (clean, solid; perturbed, dotted) against the epoch on a log axis and the learned
    temperature, one colour per tower and one shade per training-set size (``eacnn/data/curves.csv``)."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    names = {"paper": "paper's tower", "default": "our default"}
    for tower, cmap in (("paper", plt.cm.Reds), ("default", plt.cm.Blues)):
        part = curves[curves["tower"] == tower]
        sizes = sorted(part["n_train"].unique())
        for k, n in enumerate(sizes):
            run = part[part["n_train"] == n].sort_values("epoch")
            color = cmap(0.45 + 0.55 * (k + 1) / max(len(sizes), 1))
            label = f"{names.get(tower, tower)}, {int(n):,} structures"
            axes[0].plot(run["epoch"], 100 * run["val_top1"], color=color, label=label)
            axes[0].plot(run["epoch"], 100 * run["val_top1_perturbed"], color=color, ls=":")
            axes[1].plot(run["epoch"], run["temperature"], color=color, label=label)
    axes[0].set(xscale="log", xlabel="epoch", ylabel="validation Top-1 (%)",
                title="retrieval among 9,047 (solid: clean, dotted: perturbed)")
    axes[1].set(xscale="log", xlabel="epoch", ylabel="temperature", title="learned temperature")
    axes[0].legend(fontsize=SMALL_FONT)
    return axes


def plot_data_scaling(summary, fits: dict | None = None, ax=None):
    """Best validation Top-1 against the training-set size (log-log), one marker per tower (hollow: the run had not
    finished), with each fitted power law drawn over the measured sizes and dashed beyond them to the sizes it is
    asked about (``fits``: tower -> :func:`eacnn.analysis.curves.scaling_fit`)."""
    ax = _ax(ax, figsize=(5.5, 3.6))
    names = {"paper": "paper's tower", "default": "our default"}
    for (tower, part), color in zip(summary.groupby("tower", sort=False), ("C3", "C0")):
        part = part.sort_values("n_train")
        done = part["finished"].astype(bool).to_numpy()
        y = 100 * part["val_top1"].clip(lower=1e-4)
        ax.scatter(part["n_train"][done], y[done], color=color, label=names.get(tower, tower), zorder=3)
        ax.scatter(part["n_train"][~done], y[~done], facecolors="none", edgecolors=color, zorder=3,
                   label=f"{names.get(tower, tower)} (unfinished)" if (~done).any() else None)
        fit = (fits or {}).get(tower)
        if fit and fit["b"] == fit["b"]:
            n = np.geomspace(part["n_train"].min(), part["n_train"].max(), 50)
            ax.plot(n, 100 * np.minimum(fit["a"] * n ** fit["b"], 1.0), color=color)
            far = np.geomspace(part["n_train"].max(), max(fit["predict"]), 50)
            ax.plot(far, 100 * np.minimum(fit["a"] * far ** fit["b"], 1.0), color=color, ls="--")
            for size, (v, lo, hi) in fit["predict"].items():
                ax.errorbar(size, 100 * v, yerr=[[100 * (v - lo)], [100 * (hi - v)]], color=color, fmt="x", capsize=3)
    ax.set(xscale="log", yscale="log", xlabel="training structures", ylabel="best validation Top-1 (%)",
           title="data scaling")
    ax.legend(fontsize=SMALL_FONT)
    return ax


def plot_augmentation(clean: np.ndarray, perturbed: dict, ax=None, config: XRDConfig | None = None):
    """A clean pattern and its perturbed versions (level name -> vector), stacked."""
    ax = _ax(ax, figsize=(8, 3.5))
    plot_vector(clean, ax=ax, config=config, color="k", label="clean")
    for k, (name, vec) in enumerate(perturbed.items(), start=1):
        plot_vector(vec, ax=ax, config=config, offset=1.1 * k, color=f"C{k}", label=name)
    ax.set_ylabel("intensity (offset)")
    ax.legend(fontsize=SMALL_FONT, loc="upper right")
    return ax


def plot_model_input(two_theta: np.ndarray, intensity: np.ndarray, vector: np.ndarray, ax=None,
                     config: XRDConfig | None = None, fine_step: float = 0.01, title: str | None = None):
    """The pseudo-Voigt profile of the sticks (``two_theta`` degrees, ``intensity``) drawn on ``fine_step``° bins,
    under the binned model input ``vector`` [n_bins] (the paper's 0.5° bins); both scaled to a maximum of 1."""
    from dataclasses import replace

    from eacnn.physics.profile import bin_profile

    cfg = config or XRDConfig()
    ax = _ax(ax, figsize=(8, 3))
    fine = replace(cfg, step=fine_step)
    dense = bin_profile(two_theta, intensity, fine)  # [n_fine_bins]
    ax.plot(fine.bin_centers(), dense / dense.max(), lw=0.8, color="C1",
            label=f"pseudo-Voigt profile ({fine_step:g}° bins)")
    plot_vector(vector, ax=ax, config=cfg, color="k", label=f"{cfg.n_bins}-bin model input")
    ax.legend(fontsize=SMALL_FONT)
    if title:
        ax.set_title(title)
    return ax


def _stacked(n: int, axes=None, height: float = 1.6):
    """``n`` panels above each other sharing the 2θ axis."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(n, 1, figsize=(7, height * n), sharex=True, layout="constrained")
    return np.atleast_1d(axes)


def plot_case_study(vectors: np.ndarray, labels, query_row: int, candidates, axes=None,
                    config: XRDConfig | None = None):
    """The paper's Fig. 3: a query's clean pattern (top, black), then each candidate's pattern coloured by its
    crystal system over the query's (grey).

    Args:
        vectors: [n, n_bins] patterns of the data set; ``labels`` its label table (formula, spacegroup_symbol).
        query_row: row of the query in the data set.
        candidates: :func:`eacnn.analysis.top_candidates` table (rank, row, formula, spacegroup_symbol,
            crystal_system, similarity, correct).
    """
    axes = _stacked(len(candidates) + 1, axes, height=1.5)
    plot_vector(vectors[query_row], ax=axes[0], config=config, color="k", fill=True)
    symbol = pretty_spacegroup(labels["spacegroup_symbol"].iloc[query_row])
    axes[0].set_title(f"query: {labels['formula'].iloc[query_row]}, {symbol} (clean pattern)", fontsize=SMALL_FONT)
    for ax, c in zip(axes[1:], candidates.itertuples()):
        plot_vector(vectors[query_row], ax=ax, config=config, color="0.7")
        plot_vector(vectors[c.row], ax=ax, config=config, color=SYSTEM_COLORS.get(c.crystal_system, "C0"))
        ax.set_title(f"#{c.rank}: {c.formula}, {pretty_spacegroup(c.spacegroup_symbol)} ({c.crystal_system}), "
                     f"cosine {c.similarity:.3f}{' ✓' if c.correct else ''}", fontsize=9)
    _tidy_stack(axes)
    return axes


def _tidy_stack(axes) -> None:
    """Stacked patterns share the 2θ axis (named once, under the last panel) and need no intensity label each."""
    for ax in axes:
        ax.set_ylabel("")
    for ax in axes[:-1]:
        ax.set_xlabel("")


def plot_top_hits(query: np.ndarray, hits, vectors: np.ndarray, query_label: str = "query", axes=None,
                  config: XRDConfig | None = None):
    """A measured pattern on the model grid (top) and the simulated pattern of each hit over it (grey: the query).

    Args:
        query: [n_bins] the measured pattern on the model's grid.
        hits: :func:`eacnn.retrieval.identify.identify` hits (rank, row, id, formula, spacegroup, similarity).
        vectors: [n, n_bins] simulated patterns of the database, indexed by ``hits.row``.
    """
    axes = _stacked(len(hits) + 1, axes)
    plot_vector(query, ax=axes[0], config=config, color="k", label=query_label)
    for ax, h in zip(axes[1:], hits.itertuples()):
        plot_vector(query, ax=ax, config=config, color="0.75")
        name = f"#{h.rank} {h.formula} {pretty_spacegroup(h.spacegroup)} ({h.id})"
        plot_vector(vectors[h.row], ax=ax, config=config, color="C0", label=f"{name}, similarity {h.similarity:.3f}")
    for ax in axes:  # headroom above the tallest bin (max 1) holds the legend clear of the data
        ax.set_ylim(0, 1.45)
        ax.legend(fontsize=SMALL_FONT, loc="upper left", frameon=False)
    _tidy_stack(axes)
    return axes


def plot_scan(two_theta: np.ndarray, intensity: np.ndarray, ax=None, title: str | None = None):
    """A measured scan as recorded: counts against 2θ (degrees)."""
    ax = _ax(ax, figsize=(7, 2.6))
    ax.plot(two_theta, intensity, lw=0.6, color="k")
    ax.set(xlabel="2θ (°)", ylabel="counts")
    if title:
        ax.set_title(title)
    return ax


def plot_preprocessing(grid, axes=None, config: XRDConfig | None = None):
    """The steps of :func:`eacnn.measured.to_model_grid` on one scan (a ``GridResult``): the mapped scan and its
    SNIP background (log scale), the scan after background removal, and the binned model input."""
    cfg = config or XRDConfig()
    st = grid.steps
    axes = _stacked(3, axes, height=2.0)
    axes[0].plot(st["two_theta"], st["mapped"], lw=0.6, color="k", label="measured")
    axes[0].plot(st["two_theta"], st["background"], lw=1.2, color="C3", label="SNIP background")
    axes[0].set_yscale("log")
    axes[1].plot(st["two_theta"], st["corrected"], lw=0.6, color="k", label="background removed")
    plot_vector(grid.vector, ax=axes[2], config=cfg, color="C0", label=f"{cfg.n_bins}-bin model input")
    for ax in axes:
        ax.legend(fontsize=SMALL_FONT)
    axes[2].set_xlim(cfg.two_theta_min, cfg.two_theta_max)
    axes[0].set_ylabel("counts")
    return axes


def plot_robustness(whole_pool, ax=None):
    """Top-1 over the whole pool against the query condition, one line per method (``whole_pool``: the output of
    :func:`eacnn.analysis.whole_pool`, indexed by method and condition)."""
    ax = _ax(ax, figsize=(6, 3.5))
    flat = whole_pool.reset_index()
    for (name, group), marker in zip(flat.groupby("method", sort=False), "osv^D"):
        ax.plot(group["condition"], group["top1"], marker=marker, label=name)
    ax.set(ylabel=f"Top-1 over {int(flat['candidates'].max()):,} candidates (%)", xlabel="query condition",
           ylim=(0, 102))
    ax.legend(fontsize=SMALL_FONT)
    return ax


def plot_accuracy_vs_frequency(per_sg: dict, ax=None):
    """Top-1 of each space group against its training structures (log scale; marker area grows with the test
    queries), one marker style per model (name -> :func:`eacnn.analysis.per_spacegroup_accuracy` table)."""
    ax = _ax(ax, figsize=(7, 3.5))
    for (name, t), marker in zip(per_sg.items(), "os^D"):
        ax.scatter(t["train_samples"] + 0.5, t["top1"], s=12 + 2 * np.sqrt(t["test_samples"]), marker=marker,
                   alpha=0.6, label=name)
    ax.set_xscale("log")
    ax.set(xlabel="training structures of the space group (+0.5)", ylabel="Top-1 over the test pool (%)")
    ax.legend(fontsize=SMALL_FONT)
    return ax


def plot_classifier_vs_retrieval(binned, retrieval: str, classifier: str = "classifier", ax=None):
    """Space group right (%) by how often the query's group occurs in training: retrieval (column ``retrieval``:
    the space group of its top-1 structure) beside the classifier (``binned``: the output of
    :func:`eacnn.analysis.accuracy_by_training_frequency`)."""
    ax = _ax(ax, figsize=(6, 3.2))
    x = np.arange(len(binned))
    ax.bar(x - 0.2, binned[retrieval], 0.4, label=f"retrieval, {retrieval}: top-1's space group")
    ax.bar(x + 0.2, binned[classifier], 0.4, label="space-group classifier")
    ax.set_xticks(x, [f"{n}\n({int(q):,} queries)" for n, q in zip(binned.index, binned["queries"])],
                  fontsize=SMALL_FONT)
    # the legend above the axes, so it covers no bar
    ax.set(xlabel="training structures of the query's space group", ylabel="space group right (%)", ylim=(0, 102))
    ax.legend(fontsize=SMALL_FONT, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncols=2, frameon=False)
    return ax


def plot_embedding_map(xy: np.ndarray, systems: Sequence[str], ax=None, title: str | None = None,
                       legend: bool = False):
    """A 2-D map of embeddings ([n, 2], e.g. t-SNE) coloured by crystal system ([n] names)."""
    ax = _ax(ax, figsize=(4.5, 4))
    systems = np.asarray(systems)
    for cs in CRYSTAL_SYSTEMS:
        m = systems == cs
        ax.scatter(xy[m, 0], xy[m, 1], s=4, color=SYSTEM_COLORS[cs], label=cs)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=SMALL_FONT)
    if legend:
        ax.legend(fontsize=SMALL_FONT, markerscale=3)
    return ax


def plot_tsne_panels(maps: dict, systems: Sequence[str], axes=None, ncols: int = 2):
    """One :func:`plot_embedding_map` per map (key -> [n, 2]; a (method, space) key is titled on two lines), the
    legend on the first panel."""
    import matplotlib.pyplot as plt

    if axes is None:
        nrows = -(-len(maps) // ncols)
        _, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 4 * nrows), layout="constrained", squeeze=False)
    flat = np.ravel(axes)
    for i, (ax, (key, xy)) in enumerate(zip(flat, maps.items())):
        title = "\n".join(key) if isinstance(key, tuple) else str(key)
        plot_embedding_map(xy, systems, ax=ax, title=title, legend=i == 0)
    for ax in flat[len(maps):]:
        ax.set_visible(False)
    return axes


def plot_robustness_conditions(best: "pd.DataFrame", ax=None):  # noqa: F821
    """Top-1 per query condition: a bar per method for the query as measured, a black tick for the same query
    read at every lattice scale and a red dot for the answer of ``eacnn search`` (multi-scale, the best candidates
    refined and re-ranked), where computed; ``best``: :func:`eacnn.robustness.best_query`."""
    ax = _ax(ax, figsize=(9, 3.8))
    conditions = list(dict.fromkeys(best["condition"].astype(str)))
    methods = list(dict.fromkeys(best["method"]))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(conditions))
    for k, method in enumerate(methods):
        mine = best[best["method"] == method]
        rows = mine.set_index(mine["condition"].astype(str)).reindex(conditions)
        pos = x - 0.4 + width * (k + 0.5)
        ax.bar(pos, rows["as measured"], width, label=method)
        if "multi-scale" in rows:
            ms = rows["multi-scale"].to_numpy(dtype=float)
            ax.scatter(pos[np.isfinite(ms)], ms[np.isfinite(ms)], marker="_", s=120, color="k", zorder=3,
                       label="read at lattice scales 0.96–1.04" if k == 0 else None)
        if "search" in rows:
            sr = rows["search"].to_numpy(dtype=float)
            ax.scatter(pos[np.isfinite(sr)], sr[np.isfinite(sr)], marker="o", s=18, color="C3", zorder=4,
                       label="as eacnn search answers (multi-scale, refined)" if k == 0 else None)
    ax.set_xticks(x, conditions, rotation=35, ha="right")
    ax.set(ylabel="Top-1 (%)", ylim=(0, 102))
    ax.legend(fontsize=SMALL_FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def plot_mixture(result, title: str | None = None, axes=None):
    """The phases of a mixture (:class:`eacnn.measured.mixtures.MixtureResult`): top, the measured pattern with the
    sum of the fits (background included) and each phase's fitted contribution; bottom, the residual (measured −
    fit) over the covered bins. Bins the scan does not cover are shaded."""
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(2, 1, figsize=(7, 4.2), sharex=True, layout="constrained",
                               gridspec_kw={"height_ratios": (3, 1)})
    top, bottom = axes
    x, step = result.two_theta, float(result.two_theta[1] - result.two_theta[0])
    for ax in axes:
        for lo in x[~np.asarray(result.covered, bool)]:
            ax.axvspan(lo - step / 2, lo + step / 2, color="0.93", lw=0)
    top.plot(x, result.measured, color="k", lw=1.2, label="measured (binned)")
    top.plot(x, result.total, color="C3", lw=1.0, ls="--", label="sum of the fits")
    for k, (ph, curve) in enumerate(zip(result.phases, result.curves)):
        top.plot(x, curve, lw=0.9, color=f"C{k}",
                 label=f"{ph.formula} {pretty_spacegroup(ph.spacegroup)}, ~{100 * ph.weight_fraction:.0f} wt %")
    # headroom above the strongest bin (max 1) holds the legend clear of the peaks
    top.set(ylabel="intensity (max 1)", ylim=(min(0.0, float(result.total.min())), 1.7))
    top.legend(fontsize=SMALL_FONT, loc="upper left", ncols=2, frameon=False)
    if title:
        top.set_title(title)
    bottom.plot(x, result.residual, color="0.3", lw=0.9)
    bottom.axhline(0.0, color="0.6", lw=0.6)
    bottom.set(xlabel="2θ (°)", ylabel="residual")
    return axes


def plot_scan_fits(fits: Sequence, labels: Sequence[str], window: tuple[float, float] | None = None, axes=None):
    """Whole-pattern fits of candidates to one scan (:class:`eacnn.retrieval.scanfit.ScanFit` kept with their
    curves), one panel each: the scan as measured (counts), the fit (background included) and the difference
    below it, with the fit's χ² and Rwp' in the panel's title; ``window``: the 2θ range shown (all when None)."""
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(len(fits), 1, figsize=(7, 2.3 * len(fits)), sharex=True, layout="constrained",
                               squeeze=False)
        axes = axes[:, 0]
    for ax, fit, label in zip(axes, fits, labels):
        x = fit.two_theta
        keep = np.ones(len(x), bool) if window is None else (x >= window[0]) & (x <= window[1])
        obs, calc = fit.observed[keep], fit.calculated[keep]
        drop = 0.15 * float(obs.max()) + float(np.max(np.abs(obs - calc)))  # the difference curve sits below
        ax.plot(x[keep], obs, color="k", lw=0.8, label="measured")
        ax.plot(x[keep], calc, color="C3", lw=0.8, ls="--", label="fit")
        ax.plot(x[keep], obs - calc - drop, color="0.4", lw=0.7, label="measured − fit")
        ax.set_title(f"{pretty_spacegroups_in(label)}: χ² {fit.chi2:.1f}, Rwp′ {fit.rwp_net:.3f}", fontsize=SMALL_FONT + 1)
        ax.set_ylabel("counts")
        ax.set_yticks([])
    axes[0].legend(fontsize=SMALL_FONT, loc="upper right", ncols=3, frameon=False)
    axes[-1].set_xlabel("2θ (°)")
    return axes
