"""How far the paper's tower and ours get with more epochs and more data (chapter 4; ``scripts/curves.py``).

The script trains both towers on nested subsets of the training split, each to convergence or its epoch budget,
and writes one row per epoch (``eacnn/data/curves.csv``) and one per run (``eacnn/data/curves_summary.csv``). Here:
reading them, fitting a power law of Top-1 against the training-set size with an interval, the reproduction
sentence the book prints, and how often a tower maps different structures to (nearly) the same embedding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eacnn.paths import DATA_DIR
from eacnn.published import published

__all__ = ["curves_table", "curves_summary", "curve_status", "scaling_fit", "reproduction_sentence", "default_sentence",
           "embedding_collisions", "collision_report", "MP20_TRAIN", "PAPER_TRAIN"]

MP20_TRAIN = 27_136  # structures in MP-20's train split (Xie et al. 2022), not shipped here
#: the paper's data set (train and test together: its training share is not stated), from eacnn.published
PAPER_TRAIN = int(published("eacnn.data.structures"))
TOWER_NAMES = {"paper": "paper's tower", "default": "our default"}
SUMMARY_COLUMNS = ["tower", "n_train", "epochs_run", "max_epochs", "patience", "finished", "best_epoch", "val_top1",
                   "val_top1_perturbed", "val_pool", "final_temperature", "train_hours", "test_top1", "test_top5",
                   "test_pool"]


def curves_table(path: str | Path | None = None) -> pd.DataFrame:
    """One row per epoch of every curve run (tower, n_train, epoch, validation Top-1 clean and perturbed, Top-5,
    temperature, losses, seconds); an empty table with those columns when the file is absent."""
    path = Path(path) if path is not None else DATA_DIR / "curves.csv"
    cols = ["tower", "n_train", "epoch", "val_top1", "val_top1_perturbed", "val_top5", "val_score", "temperature",
            "train_loss", "val_loss", "lr", "seconds", "val_pool"]
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=cols)


def curves_summary(path: str | Path | None = None) -> pd.DataFrame:
    """One row per curve run: epochs run, best epoch (by the validation score), its validation Top-1, whether it
    finished (early stopping or its budget), the final temperature, hours, and the test Top-1 of finished runs."""
    path = Path(path) if path is not None else DATA_DIR / "curves_summary.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=SUMMARY_COLUMNS)


def curve_status(run: pd.Series) -> str:
    """How a run's validation curve ends: "still rising" (unfinished, and its best epoch is among the last quarter
    of its patience), "no better epoch lately" (unfinished, best epoch further back), "flat" (stopped early: no
    better epoch for ``patience`` epochs) or "budget spent" (it ran all its epochs)."""
    if bool(run["finished"]):
        return "budget spent" if run["epochs_run"] >= run["max_epochs"] else "flat"
    since = run["epochs_run"] - run["best_epoch"]
    return "still rising" if since <= max(2, int(run["patience"]) // 4) else "no better epoch lately"


def scaling_fit(summary: pd.DataFrame, tower: str, metric: str = "val_top1",
                at: tuple[int, ...] = (MP20_TRAIN, PAPER_TRAIN)) -> dict:
    """A power law Top-1 = a · n^b fitted by least squares in log–log space over the finished runs of ``tower``
    with a non-zero ``metric`` (a run still training has not reached its Top-1), and what it predicts at each size of ``at`` with a 95 % interval (from the fit's
    parameter covariance; capped at 100 %).

    Returns:
        ``{"points": k, "a": …, "b": …, "predict": {n: (value, low, high)}, "extrapolation": {n: n / largest},
        "trust": a sentence}``; with fewer than three usable points, no fit (``b`` NaN) and a sentence saying so.
    """
    if "tower" not in summary or not len(summary):
        summary = pd.DataFrame(columns=SUMMARY_COLUMNS)
    done = summary["finished"].astype(bool) if "finished" in summary else pd.Series(True, index=summary.index)
    runs = summary[(summary["tower"] == tower) & (summary[metric] > 0) & done].sort_values("n_train")
    n, y = runs["n_train"].to_numpy(float), runs[metric].to_numpy(float)
    out = {"points": len(runs), "a": float("nan"), "b": float("nan"), "predict": {}, "extrapolation": {}}
    if len(runs) < 3:
        out["trust"] = (f"{len(runs)} training-set size(s) with a non-zero Top-1: too few to fit a power law; no "
                        f"prediction is made")
        return out
    x, ly = np.log(n), np.log(y)
    coef, cov = np.polyfit(x, ly, 1, cov=True) if len(runs) > 3 else (np.polyfit(x, ly, 1), None)
    if cov is None:  # three points: the residual variance has one degree of freedom; use it as it is
        resid = ly - np.polyval(coef, x)
        design = np.stack([x, np.ones_like(x)], axis=1)
        cov = np.linalg.inv(design.T @ design) * float(resid @ resid) / max(len(x) - 2, 1)
    b, log_a = coef
    out.update(a=float(np.exp(log_a)), b=float(b))
    from scipy.stats import t as student

    q = float(student.ppf(0.975, max(len(x) - 2, 1)))
    for size in at:
        g = np.array([np.log(size), 1.0])
        mean, sd = float(g @ coef), float(np.sqrt(max(g @ cov @ g, 0.0)))
        out["predict"][int(size)] = tuple(float(min(np.exp(v), 1.0)) for v in (mean, mean - q * sd, mean + q * sd))
        out["extrapolation"][int(size)] = float(size / n.max())
    far = max(out["extrapolation"].values())
    out["trust"] = (f"fitted on {len(runs)} sizes up to {int(n.max()):,} structures; predicting at {far:.0f}× the "
                    f"largest size is an extrapolation a power law need not survive (learning curves bend, and a "
                    f"Top-1 saturates at 100 %): read the interval, not the value")
    return out


def reproduction_sentence(summary: pd.DataFrame, published_top1: float) -> str:
    """The book's one-sentence answer to "can the paper's tower reach the paper's number?", from the curve runs:
    the largest run of the paper's tower, its epochs and training-set size, its Top-1 (test when finished, else
    validation), how its curve ends, and the published value; no stronger than the runs allow."""
    runs = (summary[summary["tower"] == "paper"].sort_values(["n_train", "epochs_run"]) if "tower" in summary
            else summary.iloc[0:0])
    if not len(runs):
        return ("No learning-curve run of the paper's tower is recorded yet (`python scripts/curves.py`), so the book "
                "cannot yet say whether more epochs or data would close the gap to the published "
                f"{published_top1:.2f} %.")
    finished = runs[runs["finished"].astype(bool)] if "finished" in runs else runs
    run = finished.iloc[-1] if len(finished) else runs.iloc[-1]  # the largest finished run is the evidence
    going = runs[(runs["n_train"] > run["n_train"]) & ~runs["finished"].astype(bool)] if "finished" in runs else \
        runs.iloc[0:0]
    status = curve_status(run)
    where = (f"{100 * run['test_top1']:.2f} % clean Top-1 on the test pool" if bool(run["finished"])
             and run["test_top1"] == run["test_top1"] else
             f"{100 * run['val_top1']:.2f} % clean validation Top-1 (test pool not yet evaluated: the run is unfinished)")
    ending = {"still rising": "its validation curve was still rising when it was last recorded",
              "no better epoch lately": f"its best epoch so far is epoch {int(run['best_epoch'])} (the run goes on)",
              "flat": "its validation curve had flattened (no better epoch for "
                      f"{int(run['patience'])} epochs)",
              "budget spent": "it used its whole epoch budget"}[status]
    fit = scaling_fit(summary, "paper")
    scale = ""
    if fit["predict"]:
        v, lo, hi = fit["predict"][PAPER_TRAIN]
        scale = (f"; a power law over {fit['points']} training-set sizes puts it at {100 * v:.1f} % "
                 f"(95 % interval {100 * lo:.1f}–{100 * hi:.1f} %) at the size of the paper's data set "
                 f"({PAPER_TRAIN:,} structures), an "
                 f"extrapolation of {fit['extrapolation'][PAPER_TRAIN]:.0f}× that cannot be trusted")
    later = ""
    if len(going):
        g = going.iloc[-1]
        later = (f" (a run on {int(g['n_train']):,} structures is still training: epoch {int(g['epochs_run'])}, "
                 f"validation Top-1 {100 * g['val_top1']:.2f} % so far)")
    return (f"With {int(run['epochs_run'])} epochs on {int(run['n_train']):,} structures the paper's tower reaches "
            f"{where}, against the published {published_top1:.2f} %; {ending}{scale}{later}.")


def default_sentence(summary: pd.DataFrame, flat_points: float = 1.0) -> str:
    """What our default tower's curve runs show, in one sentence for the book: each finished run's test Top-1 with
    its training-set size and best epoch, whether more data raised it (by more than ``flat_points`` percentage points
    from the smallest to the largest run), and what the runs stop on; a run still training is named as such."""
    runs = (summary[summary["tower"] == "default"].sort_values("n_train") if "tower" in summary
            else summary.iloc[0:0])
    done = runs[runs["finished"].astype(bool) & (runs["test_top1"] == runs["test_top1"])] if len(runs) else runs
    if not len(done):
        return "No finished learning-curve run of our default tower is recorded yet (`python scripts/curves.py`)."
    each = ", ".join(f"{100 * r.test_top1:.2f} % with {int(r.n_train):,} structures (best epoch {int(r.best_epoch)})"
                     for r in done.itertuples())
    text = (f"Our default tower, trained the same way, reaches a clean Top-1 on the test pool (queries our own "
            f"simulator made, as in the paper's protocol) of {each}")
    if len(done) > 1:
        change = 100 * (float(done["test_top1"].iloc[-1]) - float(done["test_top1"].iloc[0]))
        text += (f": from {int(done['n_train'].iloc[0]):,} to {int(done['n_train'].iloc[-1]):,} structures it moves "
                 f"by {change:+.2f} points" + (f", within {flat_points:g} point: its clean Top-1 is saturated"
                                               if abs(change) <= flat_points else ""))
    going = runs[~runs["finished"].astype(bool)]
    if len(going):
        g = going.iloc[-1]
        text += (f" (a run on {int(g['n_train']):,} structures is still training: epoch {int(g['epochs_run'])}, "
                 f"validation Top-1 {100 * g['val_top1']:.2f} % so far)")
    return (text + ". Its structure side also reads the structure's own simulated pattern; its runs stop on the mean "
            "of the clean and perturbed validation Top-1, not on the clean one alone.")


def embedding_collisions(z: np.ndarray, phase: np.ndarray, threshold: float = 0.999, block: int = 2048
                         ) -> tuple[float, pd.DataFrame]:
    """How often a tower cannot tell structures apart: the fraction of rows of ``z`` [n, d] (L2-normalised) whose
    nearest other row of a *different* phase (``phase`` [n], e.g. "formula|space group") has cosine ≥
    ``threshold``, and those closest pairs (i, j, cosine), most similar first."""
    z = np.asarray(z, np.float32)
    phase = np.asarray(phase)
    best = np.full(len(z), -np.inf)
    partner = np.zeros(len(z), np.int64)
    for a in range(0, len(z), block):
        sim = z[a : a + block] @ z.T  # [b, n]
        same = phase[a : a + block, None] == phase[None, :]
        sim[same] = -np.inf  # the row itself and other entries of its phase
        j = sim.argmax(axis=1)
        best[a : a + block] = sim[np.arange(len(j)), j]
        partner[a : a + block] = j
    hit = best >= threshold
    i, j = np.flatnonzero(hit), partner[hit]
    pairs = pd.DataFrame({"i": np.minimum(i, j), "j": np.maximum(i, j), "cosine": best[hit]})
    pairs = pairs.drop_duplicates(["i", "j"]).sort_values("cosine", ascending=False, ignore_index=True)
    return (float(hit.mean()) if len(z) else float("nan")), pairs


def collision_report(z: dict[str, np.ndarray], labels: pd.DataFrame, patterns: np.ndarray, threshold: float = 0.999,
                     top: int = 8) -> tuple[dict[str, dict], pd.DataFrame]:
    """Chapter 4's design-limit numbers for several towers at once.

    Args:
        z: tower name -> [n, d] L2-normalised structure embeddings of the same n structures.
        labels: their rows (formula, spacegroup_number, spacegroup_symbol), in the same order.
        patterns: [n, n_bins] their clean simulated patterns.

    Returns:
        per tower ``{"share": fraction colliding, "pattern_cosine": median pattern cosine of its colliding pairs}``,
        and the first tower's ``top`` closest pairs: structure, taken for, embedding cosine, pattern cosine.
    """
    labels = labels.reset_index(drop=True)
    phase = (labels["formula"].astype(str) + "|" + labels["spacegroup_number"].astype(str)).to_numpy()
    clean = np.asarray(patterns, np.float32)
    clean = clean / np.maximum(np.linalg.norm(clean, axis=1, keepdims=True), 1e-12)
    numbers, first = {}, None
    for name, emb in z.items():
        share, pairs = embedding_collisions(emb, phase, threshold)
        cos = [float(clean[i] @ clean[j]) for i, j in zip(pairs["i"], pairs["j"])]
        numbers[name] = {"share": share, "pattern_cosine": float(np.median(cos)) if cos else float("nan")}
        first = pairs if first is None else first

    def name_of(i: int) -> str:
        return f"{labels['formula'][i]} ({labels['spacegroup_symbol'][i]})"

    head = first.head(top) if first is not None else pd.DataFrame(columns=["i", "j", "cosine"])
    table = pd.DataFrame({"structure": [name_of(i) for i in head["i"]], "taken for": [name_of(j) for j in head["j"]],
                          "embedding cosine": head["cosine"].round(5).to_numpy(),
                          "pattern cosine": [round(float(clean[i] @ clean[j]), 3) for i, j in zip(head["i"], head["j"])],
                          "i": head["i"].to_numpy(), "j": head["j"].to_numpy()})
    return numbers, table
