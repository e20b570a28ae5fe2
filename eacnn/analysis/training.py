"""Training (chapter 4): the loss on known cases, the perturbations shown, training summaries, the ablation,
the validation grids of the search's settings and model sizes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from eacnn.config import AugmentConfig
from eacnn.paths import DATA_DIR
from eacnn.retrieval.embed import query_patterns

from eacnn.analysis.retrieval import PERTURBATION_LEVELS

log = logging.getLogger(__name__)

__all__ = ["loss_reference_points", "perturbation_settings", "perturbed_examples", "best_epoch", "validation_pool", "training_summary", "ablation_table", "ablation_highlights", "epoch_search_table", "grid_value", "cell_fit_table", "rerank_depth_table", "texture_fit_table", "cosine_recall_table", "model_sizes"]


# Training (chapter 4)
# ---------------------------------------------------------------------------------------------------------------
def loss_reference_points(n: int = 256, dim: int = 128, temperature: float = 0.07, seed: int = 0) -> dict:
    """The symmetric InfoNCE loss on two known cases, at a fixed ``temperature``: ``random`` (independent random
    unit vectors: close to ``log_n`` = log N, every pair equally likely) and ``aligned`` (each pattern equals its
    structure: towards 0)."""
    import torch

    from eacnn.training.losses import clip_loss

    gen = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)  # [n, dim]
    other = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)  # [n, dim]
    scale = torch.tensor(np.log(1.0 / temperature))
    return {"random": float(clip_loss(z, other, scale)), "log_n": float(np.log(n)),
            "aligned": float(clip_loss(z, z, scale))}


#: :class:`eacnn.config.AugmentConfig`'s fields as a reader wants them, with units (those not listed are dropped)
PERTURBATION_NAMES = {
    "strain": "lattice strain, max |ε|", "zero_shift": "zero shift, max (° 2θ)",
    "size_min_nm": "crystallite size, min (nm)", "size_max_nm": "crystallite size, max (nm)",
    "intensity_jitter": "peak-intensity jitter (σ of ln)", "noise": "Gaussian noise (σ / strongest bin)",
    "counts": "counts in the strongest bin", "background": "background, max (/ strongest bin)",
    "scherrer_k": "Scherrer constant K",
}


def perturbation_settings(levels=(1, 2, 3)) -> pd.DataFrame:
    """The settings of each perturbation level (:meth:`eacnn.config.AugmentConfig.level`), one column per level,
    one row per physical setting (:data:`PERTURBATION_NAMES`, with units)."""
    table = pd.DataFrame({PERTURBATION_LEVELS[k]: vars(AugmentConfig.level(k)) for k in levels})
    return table.loc[[k for k in PERTURBATION_NAMES if k in table.index]].rename(index=PERTURBATION_NAMES)


def perturbed_examples(dataset, row: int, levels=(1, 2, 3), seed: int = 0) -> dict:
    """One structure's query pattern at each perturbation level, as ``"<name> (level k)"`` -> [n_bins] vector."""
    return {f"{PERTURBATION_LEVELS[k]} (level {k})": query_patterns(dataset, np.array([row]), k, seed=seed)[0]
            for k in levels}


def best_epoch(log: pd.DataFrame) -> pd.Series:
    """The row of a training log that selection kept: the row marked ``kept`` in a shipped log (the epoch chosen
    after training, :func:`eacnn.training.checkpoint.export_checkpoint`), else the best ``val_score`` (mean of clean
    and perturbed validation Top-1) where the log has one, else the best clean ``val_top1`` (earlier logs)."""
    if "kept" in log and (log["kept"].fillna(0) == 1).sum() == 1:
        return log.loc[(log["kept"].fillna(0) == 1).idxmax()]
    score = log["val_score"] if "val_score" in log and log["val_score"].notna().any() else log["val_top1"]
    return log.loc[score.idxmax()]


def validation_pool(log: pd.DataFrame, default: int) -> int:
    """Candidates per validation query of a training log (``val_pool``); ``default`` for logs without it."""
    if "val_pool" in log and log["val_pool"].notna().any():
        return int(log["val_pool"].dropna().iloc[-1])
    return int(default)


def training_summary(logs: dict, n_val: int) -> pd.DataFrame:
    """One row per run (name -> per-epoch training log): epochs trained, the epoch kept, the validation pool, the
    kept epoch's clean and moderately perturbed validation Top-1 (percent), the final temperature and the
    training time (minutes). ``n_val``: validation pool of logs that do not record it."""
    rows = {}
    for name, log in logs.items():
        best = best_epoch(log)
        rows[name] = {"epochs": int(log["epoch"].max()), "best epoch": int(best["epoch"]),
                      "validation pool": validation_pool(log, n_val), "val Top-1 clean (%)": 100 * best["val_top1"],
                      "val Top-1 moderate (%)": 100 * best.get("val_top1_perturbed", np.nan),
                      "final temperature": float(log["temperature"].iloc[-1]),
                      "training time (min)": float(log["seconds"].sum() / 60)}
    return pd.DataFrame(rows).T


def ablation_table(path=None) -> pd.DataFrame:
    """The shipped ablation of the structure tower (``eacnn/data/ablation.csv``, written by
    ``scripts/ablation.py``); an empty DataFrame when the file is absent."""
    path = DATA_DIR / "ablation.csv" if path is None else path
    return pd.read_csv(path) if Path(path).is_file() else pd.DataFrame()


def ablation_highlights(ablation: pd.DataFrame) -> dict:
    """From :func:`ablation_table`: ``epochs`` per variant, the variant best on moderately perturbed validation
    queries (``best``: its structure tower; ``best_clean``, ``best_moderate``: its Top-1) and the paper tower's clean
    Top-1 (``paper_clean``). Empty for an empty table."""
    if len(ablation) == 0:
        return {}
    best = ablation.loc[ablation["val Top-1 moderate (%)"].idxmax()]
    paper = ablation[ablation["variant"] == "paper"].iloc[0]
    return {"epochs": int(ablation["epochs"].iloc[0]), "best": best["structure tower"],
            "paper_clean": float(paper["val Top-1 clean (%)"]), "best_clean": float(best["val Top-1 clean (%)"]),
            "best_moderate": float(best["val Top-1 moderate (%)"])}


def epoch_search_table(path=None) -> pd.DataFrame:
    """Top-1 (percent) as ``eacnn search`` answers, per validation condition (rows, then their ``mean``) and per
    epoch of a run trained without early stopping (columns: the epoch number, or the checkpoint's name when it is
    not ``epoch_N``): ``eacnn/data/epochs.csv``, written by ``scripts/select_rerank.py --checkpoints ... --out``.
    An empty DataFrame when the file is absent."""
    path = DATA_DIR / "epochs.csv" if path is None else path
    if not Path(path).is_file():
        return pd.DataFrame()
    records = pd.read_csv(path)
    order = list(dict.fromkeys(records["condition"]))
    names = list(dict.fromkeys(records["model"]))
    table = records.pivot_table(index="condition", columns="model", values="top1").loc[order, names]
    table.loc["mean"] = table.mean()
    table.columns = [int(c.split("_")[1]) if str(c).startswith("epoch_") and str(c).split("_")[1].isdigit()
                     else c for c in table.columns]
    table.columns.name = "epoch"
    return table


def _validation_grid(path, first: str | None = None, name: str = "rule") -> pd.DataFrame:
    """Top-1 per validation condition (rows, then their ``mean``) and rule (columns, in the file's order, ``first``
    leading) of a ``scripts/select_rerank.py`` grid CSV (columns condition, rule, top1); empty when it is absent."""
    if not Path(path).is_file():
        return pd.DataFrame()
    records = pd.read_csv(path)
    order = list(dict.fromkeys(records["condition"]))
    rules = list(dict.fromkeys(records["rule"]))
    rules = ([first] if first in rules else []) + [r for r in rules if r != first]
    table = records.pivot_table(index="condition", columns="rule", values="top1").loc[order, rules]
    table.loc["mean"] = table.mean()
    table.columns.name = name
    return table


def grid_value(table: pd.DataFrame, condition: str, rule: str) -> str:
    """One entry of a validation grid table (:func:`cell_fit_table`, :func:`rerank_depth_table`) as the book
    quotes it: one decimal, or "n/a" where the table (or that row or column) is absent."""
    found = not table.empty and rule in table.columns and condition in table.index
    return f"{table.loc[condition, rule]:.1f}" if found else "n/a"


def cell_fit_table(path=None) -> pd.DataFrame:
    """Top-1 (percent) as ``eacnn search`` answers, per validation condition (rows, then their ``mean``), refining
    lattice scales only ("isotropic") and with each candidate's cell fitted under each (prior against anisotropic
    strain, residual gain) setting: ``eacnn/data/cell_fit.csv``, written by ``scripts/select_rerank.py --cell-grid
    --out``. Columns in the file's order; an empty DataFrame when the file is absent."""
    return _validation_grid(DATA_DIR / "cell_fit.csv" if path is None else path, "isotropic", "refinement")


def texture_fit_table(path=None) -> pd.DataFrame:
    """Top-1 (percent) as ``eacnn search`` answers, per validation condition (rows, then their ``mean``), without
    the texture fit ("no texture") and with it under each (candidates fitted, residual gain, prior per |ln r|)
    setting: ``eacnn/data/texture_fit.csv``, written by ``scripts/select_rerank.py --texture-grid --out``. Columns
    in the file's order; an empty DataFrame when the file is absent."""
    table = _validation_grid(DATA_DIR / "texture_fit.csv" if path is None else path, "no texture", "texture fit")
    return table.drop(columns=[c for c in table.columns if not str(c).startswith(("texture", "no texture"))])


def rerank_depth_table(path=None) -> pd.DataFrame:
    """Top-1 (percent) as ``eacnn search`` answers, per validation condition (rows, then their ``mean``), for each
    depth "refine N cell M" (N candidates refined with lattice scales, the cells of the best M of them fitted):
    ``eacnn/data/rerank_depth.csv``, written by ``scripts/select_rerank.py --depth-grid --out``. Columns in the
    file's order; an empty DataFrame when the file is absent."""
    return _validation_grid(DATA_DIR / "rerank_depth.csv" if path is None else path, name="depth")


def cosine_recall_table(path=None) -> pd.DataFrame:
    """Top-1 (percent) as ``eacnn search`` answers, per validation condition (rows, then their ``mean``), with
    "recall N": the N candidates of best binned cosine (search-match's) joining the refined shortlist beside the
    model's: ``eacnn/data/cosine_recall.csv``, written by ``scripts/select_rerank.py --recall-grid --out``. Columns
    by N; an empty DataFrame when the file is absent."""
    table = _validation_grid(DATA_DIR / "cosine_recall.csv" if path is None else path, name="cosine recall")
    return table[sorted(table.columns, key=lambda c: int(str(c).split()[-1]))] if not table.empty else table


def model_sizes(models: dict) -> pd.DataFrame:
    """Parameters of each model (name -> :class:`eacnn.models.EACNN`): MACE, the whole structure tower, the XRD
    tower and the total."""
    rows = {}
    for name, m in models.items():
        s = m.structure_encoder
        rows[name] = {"MACE": _n_params(s.mace), "structure tower": _n_params(s),
                      "XRD tower": _n_params(m.xrd_encoder), "total": _n_params(m)}
    out = pd.DataFrame(rows).T
    out.index.name = "model"
    return out


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------------
