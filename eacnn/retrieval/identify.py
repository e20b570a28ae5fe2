"""Identify one measured pattern: a multi-scale query, physics refinement of the best candidates, and a verdict
calibrated for that final score.

1. **Multi-scale query** (:mod:`eacnn.retrieval.query`): the pattern is read at the lattice scales 0.96–1.04 and
   embedded at each; every candidate keeps its best cosine similarity, less a prior on the mismatch
   (:data:`eacnn.retrieval.query.SCALE_PENALTY` per 1 % of scale away from 1), and the scale it was found at.
2. **Refinement** (:func:`refine`): each of the best ``rerank`` (:data:`RERANK_DEPTH`) candidates' reflections is moved by a lattice scale
   around the one the query found (±0.6 % in 0.2 % steps, so ±3 % in all with the query's grid) and a zero shift
   (±0.3°) at the model's peak width, then the width (the model's or twice it) at that fit, then two finer grids
   around the best point (to 0.025 % of scale and 0.0125°), profiled onto the bins and compared with the pattern
   over the bins the scan covers (cosine: the *agreement*). Then, for the best :data:`CELL_FITS` of them by that
   refinement's score, where the database holds each candidate's reflections one by one, its whole cell is fitted (:func:`refine_cell`: the six components of the reciprocal
   metric and the zero shift, by least squares from the isotropic fit), so that a cell strained differently along
   different directions, whose symmetry-equivalent reflections split, is followed too; it is kept where it lowers
   the residual 1 − agreement² :data:`CELL_MIN_GAIN`-fold. The candidates are re-ranked by their **score**
   (:data:`RERANK`): the similarity plus 0.04 × the log-likelihood of the fit, −ln(1 − agreement²), less
   :data:`ANISOTROPY_PENALTY` per 1 % of the anisotropic strain a kept cell fit needed. A fit to within the
   pattern's noise (a cell off by a common factor or strained, refined away) then outweighs any difference in
   similarity; among imperfect fits (texture, impurities), where the fit can prefer a wrong candidate the model
   had rightly placed below, the similarity keeps its say. The rule, its weight and the mismatch prior were chosen
   on the validation split with a pool as large as the test split (``scripts/select_rerank.py``: mean Top-1 over
   seven query conditions 83.3 % against 80.3 % for the mean of agreement and similarity without the prior, the
   previous rule, and 80.4 % for the agreement alone), then the cell fit's two settings with that rule
   (``--cell-grid``, ``eacnn/data/cell_fit.csv``, chapter 5), then how many candidates are refined and how many
   cells fitted (:data:`RERANK_DEPTH`, :data:`CELL_FITS`: ``--depth-grid``, ``eacnn/data/rerank_depth.csv``; 30 and
   30 answer 88.1 % right over the seven conditions against 87.1 % for 10 and 10, at three times the cost).
3. **The scan itself** (:mod:`eacnn.retrieval.scanfit`, where the search has the measurement and the database
   holds reflections): the best :data:`SEARCH` ``.scan_fits`` refined candidates are fitted to the scan at its own
   resolution (Kα1 + Kα2, zero offset and displacement, the symmetry-allowed cell, TCH widths, preferred orientation,
   a Chebyshev background, weighted by counting statistics) and re-ranked among themselves by score −
   ``scan_weight`` × ln χ². The verdict is then the fit's: "match" when the answer's fit quality
   (``scan_statistic``: χ² or the background-subtracted Rwp') is within ``scan_limit`` and its ln χ² stands
   ``scan_margin`` above every other fitted phase's, combined with the binned verdict below as ``scan_combine``
   says (the fit's alone, both, or either).
   Those settings were chosen on validation scans with the phase present and absent
   (``scripts/select_scanfit.py``, ``eacnn/data/scan_fit.csv``).
4. **Verdict** without a scan fit: "match" when the final score (the score after refinement, else the similarity) reaches the
   threshold calibrated for it *and* the top hit stands out: its margin (its score less that of the best
   refined candidate of another phase, i.e. another formula or space group) reaches the calibrated margin. Both
   are fitted together (:func:`calibrate`, :func:`open_set_rule`) on validation structures under realistic
   measurement models, each query asked with its phase in the pool and without it: the pair that names the most
   right phases while a "match" stays right ``target`` of the time. On such queries the agreement alone cannot do
   it: with the phase absent, a look-alike of another composition fits as well as the right phase does when
   present; what differs is that the right phase stands out from the rest.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from eacnn.config import SearchConfig, XRDConfig
from eacnn.datasets.structures import normalize_elements
from eacnn.errors import EACNNError
from eacnn.retrieval.query import (SCALES, multiscale_best, multiscale_cosine, multiscale_similarity, query_embeddings,
                                   recall_scales, scale_prior)
# the refinement's and the verdict's names, read here as before (eacnn.retrieval.identify is the search's front)
from eacnn.retrieval.refine import (ANISOTROPY_PENALTY, CELL_EVALUATIONS, CELL_FITS, CELL_MAX_STRAIN, CELL_MIN_GAIN,
                                    CELL_WIDTHS, FINE, FIT_FLOOR, REFINE_FINE_STEPS, REFINE_OFFSETS, REFINE_SHIFTS,
                                    REFINE_WIDTHS, RERANK, RERANK_DEPTH, SEARCH, cell_kept, refine, refine_cell,
                                    refine_shortlist, rerank_score)
from eacnn.retrieval.scanfit import fit_shortlist, scan_margin
from eacnn.retrieval.verdict import _ambiguous_set, calibrate, margin_of, open_set_rule, open_set_threshold

log = logging.getLogger(__name__)

__all__ = ["Identification", "identify", "query_embeddings", "multiscale_similarity", "refine", "refine_shortlist",
           "refine_cell", "rerank_score", "cell_kept", "calibrate", "margin_of", "open_set_rule", "open_set_threshold",
           "SEARCH", "RERANK", "RERANK_DEPTH", "CELL_FITS", "ANISOTROPY_PENALTY", "CELL_MIN_GAIN", "CELL_MAX_STRAIN",
           "CELL_WIDTHS", "CELL_EVALUATIONS", "REFINE_OFFSETS", "REFINE_SHIFTS", "REFINE_WIDTHS", "REFINE_FINE_STEPS",
           "FINE", "FIT_FLOOR"]


@dataclass
class Identification:
    """The answer for one pattern."""

    hits: pd.DataFrame  # rank, id, formula, spacegroup, source, similarity, scale, row, [agreement, strain,
    # zero_shift, width, score] (refined candidates)
    verdict: str  # "match" or "no confident match"
    score: float  # the final score of the top hit (its score after refinement, else its similarity)
    threshold: float  # the calibrated threshold of that score
    score_name: str  # "score" (refined), "agreement" (a database calibrated before scores) or "similarity"
    margin: float = float("nan")  # top-1 score less the best refined candidate of another phase (NaN: no refinement)
    margin_threshold: float = 0.0  # the calibrated margin a "match" needs
    # verdict-relevant settings of this search that differ from those the thresholds were calibrated under
    # ("field: calibrated -> used"); empty when they agree. The verdict is then only approximate.
    settings_differ: tuple = ()
    # the phases whose refined scores lie within the calibrated margin of the best (one row each, best first): the
    # pattern cannot tell them apart; empty when the best stands out (or without refinement)
    ambiguous: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    # the whole-pattern fits at the scan's resolution (row -> eacnn.retrieval.scanfit.ScanFit; empty without a scan)
    scan_fits: dict = dataclasses.field(default_factory=dict)
    scan_margin: float = float("nan")  # ln χ² of the best fitted other phase less the best's (NaN: no scan fit)
    verdict_basis: str = "score"  # "scan" (the fit to the scan decided), "score" or "similarity"
    binned_verdict: str = ""  # the verdict of the binned score alone (its threshold and margin), scan fit or not


def identify(vector: np.ndarray, covered: np.ndarray | None, db, top: int = 10, elements: Sequence[str] | None = None,
             rerank: int = RERANK_DEPTH, scales: np.ndarray = SCALES, xrd: XRDConfig | None = None,
             exclude: np.ndarray | None = None, scan=None, scan_fits: int | None = None,
             cosine_recall: int | None = None) -> Identification:
    """Rank a saved database's candidates for one pattern (see the module docstring).

    Args:
        vector: [n_bins] the pattern on the model grid; covered: [n_bins] bool.
        db: a :class:`eacnn.retrieval.database.SavedDatabase`.
        elements: keep only candidates made of these elements (and no others).
        rerank: refine the best ``rerank`` candidates (0: rank by the model's similarity alone).
        exclude: [n] bool, candidates left out (e.g. every entry of a phase, to ask what the verdict says when
            that phase is missing from the database).
        scan: the measurement itself (:class:`eacnn.retrieval.scanfit.Scan`): the best ``scan_fits``
            (:data:`SEARCH` ``.scan_fits`` when None) refined candidates are fitted to it, re-ranked by
            score − ``scan_weight`` ln χ², and the verdict is the scan fit's (step 4 of the module docstring).
        cosine_recall: how many candidates of best binned cosine join the refined shortlist (:data:`SEARCH`
            ``.cosine_recall`` when None; step 1 of the module docstring).
    """
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise EACNNError(f"top must be a whole number >= 1, got {top!r}")
    if elements is not None:
        elements = normalize_elements(elements)
    xrd = xrd or XRDConfig()
    reads = db.tower.reads_mask
    z = query_embeddings(lambda y, m: db.tower(y, m if reads else None), vector, covered, xrd, scales)  # [S, d]
    keep = None
    if elements:
        allowed = {e for e in elements}
        keep = np.array([el <= allowed for el in db.elements])
        if not keep.any():
            raise EACNNError(f"no structure in the database is made only of {sorted(allowed)}")
    if exclude is not None:
        keep = ~np.asarray(exclude, bool) if keep is None else keep & ~np.asarray(exclude, bool)
    k = max(top, rerank)
    if db.manifest["index"]["kind"] == "exact":
        sim, scale = multiscale_similarity(db.embeddings, z, scales)
        idx = np.arange(len(sim)) if keep is None else np.flatnonzero(keep)
        best = idx[np.argsort(-sim[idx], kind="stable")[:k]]
        sims, best_scales = sim[best], scale[best]
    else:  # an indexed database: the union of each scale's nearest candidates
        found: dict[int, tuple[float, float]] = {}
        for s, zs, prior in zip(scales, z, scale_prior(scales)):
            for v, r in zip(*db.scores(zs, 4 * k, keep)):
                v = float(v) + prior
                if int(r) not in found or v > found[int(r)][0]:
                    found[int(r)] = (float(v), float(s))
        order = sorted(found, key=lambda r: -found[r][0])[:k]
        best = np.array(order, dtype=np.int64)
        sims = np.array([found[r][0] for r in order])
        best_scales = np.array([found[r][1] for r in order])
    n_recall = SEARCH.cosine_recall if cosine_recall is None else int(cosine_recall)
    cosine = cosine_scale = None
    if rerank and n_recall > 0 and len(best):  # search-match's best join the shortlist (refine_shortlist)
        cos, cos_at = multiscale_cosine(db.vectors, vector, covered, xrd, recall_scales(scales))
        if keep is not None:
            cos = np.where(keep, cos, -np.inf)
        head = np.argsort(-cos, kind="stable")[: n_recall + len(best)]
        extra = head[~np.isin(head, best)][:n_recall]
        extra = extra[np.isfinite(cos[extra])]
        if len(extra):
            e_sim, e_scale = multiscale_best(z, np.asarray(db.embeddings[np.sort(extra)]), scales)
            back = np.argsort(np.argsort(extra))  # db.embeddings read in row order, put back in recall order
            best = np.concatenate([best, extra])
            sims, best_scales = np.concatenate([sims, e_sim[back]]), np.concatenate([best_scales, e_scale[back]])
        cosine, cosine_scale = cos[best], cos_at[best]
    labels = db.labels.iloc[best]
    hits = pd.DataFrame({"id": labels["material_id"].to_numpy(), "formula": labels["formula"].to_numpy(),
                         "spacegroup": labels["spacegroup_symbol"].to_numpy(), "source": labels["source"].to_numpy(),
                         "similarity": sims, "scale": best_scales, "row": best})
    if cosine is not None:
        hits["cosine"] = cosine
    cal = db.manifest.get("calibration", {})
    score_name, threshold = "similarity", float(cal.get("similarity", cal.get("threshold", np.inf)))
    if rerank and len(hits):
        _, fits, scores = refine_shortlist(vector, covered, hits["similarity"].to_numpy(), hits["row"].to_numpy(),
                                           db.sticks, xrd, hits["scale"].to_numpy(),
                                           db.reflections if getattr(db, "has_reflections", False) else None,
                                           depth=rerank, recall=cosine, recall_scale=cosine_scale,
                                           recall_depth=n_recall)
        hits = hits.merge(fits.assign(score=scores), on="row", how="left")
        order = np.argsort(-hits["score"].fillna(-np.inf).to_numpy(), kind="stable")
        hits = hits.iloc[order].reset_index(drop=True)
        if "score" in cal:
            score_name, threshold = "score", float(cal["score"])
        elif "agreement" in cal:
            score_name, threshold = "agreement", float(cal["agreement"])
    n_scan = SEARCH.scan_fits if scan_fits is None else int(scan_fits)
    fitted: dict = {}
    if scan is not None and rerank and n_scan > 0 and len(hits) and getattr(db, "has_reflections", False):
        hits, fitted = _scan_stage(hits, scan, db, n_scan, xrd)
    margin, need = float("nan"), 0.0
    if score_name in ("score", "agreement") and len(hits):
        margin = margin_of(hits[score_name].head(rerank).fillna(-np.inf).to_numpy(),
                           (hits["formula"] + "|" + hits["spacegroup"]).head(rerank).to_numpy())
        need = float(cal.get("margin", 0.0))
    best = float(hits[score_name].max()) if len(hits) else float("nan")
    # only good fits can be ambiguous: below the threshold nothing fits, and that is another answer
    ambiguous = (_ambiguous_set(hits.head(rerank), score_name, need) if score_name != "similarity" and best >= threshold
                 else hits.iloc[0:0])
    basis, s_margin, fits_well = score_name, float("nan"), False
    if fitted:  # the scan itself decides: a good fit that stands out from every other phase's
        chi2 = hits["scan_chi2"].to_numpy()
        s_margin = scan_margin(chi2, (hits["formula"] + "|" + hits["spacegroup"]).to_numpy())
        fits_well, basis = bool(hits[f"scan_{SEARCH.scan_statistic}"].iloc[0] <= SEARCH.scan_limit), "scan"
        if fits_well:  # the phases the scan cannot tell apart
            ambiguous = _scan_ambiguous(hits, SEARCH.scan_margin)
        # else the binned score's set stands: where no candidate fits the scan within its limit (another
        # instrument's peak shapes, other intensities), look-alikes on the bins are still look-alikes
    hits = hits.head(top).reset_index(drop=True)
    hits.insert(0, "rank", np.arange(1, len(hits) + 1))
    score = float(hits[score_name].iloc[0]) if len(hits) else float("nan")
    stands_out = not (margin < need)  # NaN margin (no refinement): the score alone decides
    verdict = "match" if len(hits) and score >= threshold and stands_out else "no confident match"
    binned_verdict = verdict
    if fitted:
        scan_says = fits_well and not s_margin < SEARCH.scan_margin
        binned = verdict == "match"
        says = {"scan": scan_says, "and": scan_says and binned, "or": scan_says or binned}[SEARCH.scan_combine]
        verdict = "match" if says else "no confident match"
    differ = ()
    if cal:
        used = dataclasses.replace(SEARCH, rerank_depth=rerank, cosine_recall=n_recall if rerank else 0,
                                   cell_fits=min(CELL_FITS, rerank), scale_min=float(np.min(scales)),
                                   scale_max=float(np.max(scales)), scale_steps=len(scales))
        differ = tuple(SearchConfig.from_calibration(cal).differences(used)) if rerank else ()
    return Identification(hits, verdict, score, threshold, score_name, margin, need, differ, ambiguous, fitted,
                          s_margin, basis, binned_verdict)


def _scan_ambiguous(hits: pd.DataFrame, margin: float) -> pd.DataFrame:
    """The phases the scan cannot tell apart: :func:`_ambiguous_set` on the fitted candidates' −ln χ² (each phase
    whose best fit lies within ``margin`` in ln χ² of the best; empty when one stands out)."""
    fitted = hits[hits["scan_chi2"].notna()]
    close = _ambiguous_set(fitted.assign(_fit=-np.log(fitted["scan_chi2"].to_numpy())), "_fit", margin)
    return close.drop(columns="_fit") if len(close) else hits.iloc[0:0]


def _scan_stage(hits: pd.DataFrame, scan, db, n: int, xrd: XRDConfig) -> tuple[pd.DataFrame, dict]:
    """Step 4: the best ``n`` refined candidates fitted to the scan itself (:func:`fit_shortlist`) and re-ranked
    among themselves by score − :data:`SEARCH` ``.scan_weight`` × ln χ² (the rest keep their places below)."""
    hits, fitted = fit_shortlist(hits, scan, db.reflections, n, xrd.wavelength)
    if not fitted:
        return hits, fitted
    k = min(n, len(hits))
    head = hits.iloc[:k]
    key = head["score"].to_numpy() - SEARCH.scan_weight * np.log(head["scan_chi2"].fillna(np.inf).to_numpy())
    order = np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")
    return pd.concat([head.iloc[order], hits.iloc[k:]]).reset_index(drop=True), fitted
