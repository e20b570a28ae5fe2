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
3. **Verdict**: "match" when the final score (the score after refinement, else the similarity) reaches the
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
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from eacnn.config import SearchConfig, XRDConfig
from eacnn.datasets.structures import normalize_elements
from eacnn.errors import EACNNError
from eacnn.physics.perturb import VARIANT_GRID, binned_variants, variant_kernel
from eacnn.physics.profile import split_on_grid
from eacnn.retrieval.query import SCALE_PENALTY, SCALES, multiscale_best, rescale_many, scale_prior

log = logging.getLogger(__name__)

__all__ = ["Identification", "identify", "refine", "refine_shortlist", "calibrate", "open_set_threshold", "open_set_rule", "margin_of",
           "REFINE_OFFSETS", "RERANK", "rerank_score",
           "REFINE_SHIFTS", "REFINE_WIDTHS", "REFINE_FINE_STEPS", "refine_cell", "CELL_WIDTHS", "CELL_MAX_STRAIN",
           "ANISOTROPY_PENALTY", "CELL_MIN_GAIN", "cell_kept", "RERANK_DEPTH", "CELL_FITS"]

#: The search's settings (:class:`eacnn.config.SearchConfig`: units and where each was chosen); the names below
#: are its values, for the readers of this module
SEARCH = SearchConfig()
#: How refined candidates are re-ranked (:func:`rerank_score`): ("linear", w) or ("likelihood", b); chosen on the
#: validation split (module docstring).
RERANK = (SEARCH.rerank_rule, SEARCH.rerank_weight)
#: score per 1 % of a fitted cell's anisotropic (deviatoric) strain, and how much a cell fit must lower the residual
#: 1 − agreement² below the isotropic fit's to be kept (its six more parameters fit anything a little better);
#: both chosen on the validation split with the rule (``scripts/select_rerank.py``)
ANISOTROPY_PENALTY = SEARCH.anisotropy_penalty
CELL_MIN_GAIN = SEARCH.cell_min_gain
#: How many of the multi-scale query's best candidates are refined (lattice scale, zero shift, width), and for how
#: many of those, the best by that refinement's score, the whole cell is fitted too (about 17x the cost of the
#: rest); chosen on the validation split (``scripts/select_rerank.py --depth-grid``, ``eacnn/data/rerank_depth.csv``)
RERANK_DEPTH = SEARCH.rerank_depth
CELL_FITS = SEARCH.cell_fits
#: 1 − agreement² below this counts as this (a fit cannot be better than the pattern's float32 rounding)
FIT_FLOOR = 1e-6


def rerank_score(agreement, similarity, rule: tuple[str, float] | None = None, anisotropy=0.0):
    """The re-ranking score of refined candidates (arrays or Series of one shape), by ``rule`` (:data:`RERANK` when
    None), less :data:`ANISOTROPY_PENALTY` per 1 % of ``anisotropy`` (‖dev ε‖ of a fitted cell, :func:`refine`):

    - ``("linear", w)``: w · agreement + (1 − w) · similarity;
    - ``("likelihood", b)``: similarity − b · ln(1 − agreement²). For unit vectors, 1 − cos² is the residual of the
      best scaled fit, and −(n/2) ln(residual) the log-likelihood of the fit under Gaussian noise of unknown size:
      a near-perfect fit (an isotropic mismatch, refined away) outweighs any difference in similarity, while among
      imperfect fits (anisotropic strain, texture, impurities) a residual twice as large costs only b · ln 2.

    The anisotropy penalty is a prior against shape changes of the cell: a cell fit may follow a strained sample,
    but a look-alike that needs a large anisotropic strain to fit is less likely than one that does not.
    """
    kind, value = RERANK if rule is None else rule
    prior = ANISOTROPY_PENALTY * np.asarray(anisotropy, np.float64) / 0.01
    if kind == "linear":
        return value * agreement + (1 - value) * similarity - prior
    if kind == "likelihood":
        return (similarity - value * np.log(np.maximum(1.0 - np.asarray(agreement, np.float64) ** 2, FIT_FLOOR))
                - prior)
    raise ValueError(f"unknown re-ranking rule {kind!r}: 'linear' or 'likelihood'")


REFINE_OFFSETS = np.linspace(-SEARCH.refine_offset, SEARCH.refine_offset, 7)  # lattice-scale offsets (Δd/d)
REFINE_SHIFTS = np.linspace(-SEARCH.refine_shift, SEARCH.refine_shift, 7)  # degrees 2θ, zero shift
REFINE_WIDTHS = SEARCH.refine_widths  # peak FWHM in units of the model's xrd.fwhm
#: the finer stages after the coarse grid: (lattice-scale step, zero-shift step in degrees), each searched ±2 steps
REFINE_FINE_STEPS = SEARCH.fine_steps
_FINE_GRID = np.arange(-2, 3, dtype=np.float64)  # [5] steps either side of the best point
FINE = VARIANT_GRID  # degrees; the fine grid reflections are deposited on before the bin integrals


def refine(vector: np.ndarray, covered: np.ndarray | None, rows: Sequence[int], sticks: Callable, xrd: XRDConfig,
           scales: Sequence[float] | None = None, reflections: Callable | None = None,
           centres: Sequence[float] = (0.0,), similarity: Sequence[float] | None = None,
           cells: int | None = None) -> pd.DataFrame:
    """Agreement of each candidate row with the pattern after a fitted lattice scale, zero shift and width, and,
    with ``reflections``, after a fit of the whole cell (:func:`refine_cell`) where that agrees better.

    Args:
        vector: [n_bins] the pattern on the model grid; covered: [n_bins] bool (all when None).
        rows: candidate rows; sticks: ``sticks(row) -> (2θ [p] degrees, areas [p])``.
        scales: per row, the lattice scale the multi-scale query found (1 when None).
        reflections: ``reflections(row) -> IndexedReflections | None`` (a database's or data set's
            ``reflections``); None: lattice scales only.
        centres: where the coarse lattice-scale grid (:data:`REFINE_OFFSETS`, ±0.6 %) is centred, as changes of
            d (Δd/d) from each row's scale: (0,) searches ±0.6 % around it, (−0.014, 0, 0.014) ±2 %.
        similarity, cells: with both, the cells are fitted only for the ``cells`` rows that the lattice-scale fit
            scores best (:func:`rerank_score` of its agreement and the rows' ``similarity``): the cell fit costs
            about 17 times the lattice-scale fit (``benchmarks/bench_refine.py``). Otherwise every row's cell is fitted.

    Returns:
        one row per candidate: ``row``, ``agreement`` (cosine over the covered bins), ``strain`` (the fitted
        isotropic d-spacing change of the candidate, Δd/d), ``zero_shift`` (degrees), ``width`` (degrees FWHM),
        ``anisotropy`` (‖dev ε‖ of the fitted cell's strain; 0 where the lattice scale fitted as well, i.e. the
        cell fit did not lower the residual 1 − agreement² by :data:`CELL_MIN_GAIN`).
    """
    # small products: one BLAS thread is as fast, and no spin-waiting when the other cores are busy (2.4x faster then)
    with threadpool_limits(1, "blas"):
        fits = _refine(vector, covered, rows, sticks, xrd, scales, centres)
        fits["anisotropy"] = 0.0
        if reflections is None:
            return fits
        fitted = np.ones(len(fits), bool)
        if cells is not None and similarity is not None:
            first = rerank_score(fits["agreement"].to_numpy(), np.asarray(similarity, np.float64))
            fitted[:] = False
            fitted[np.argsort(-first, kind="stable")[:cells]] = True
        for i, fit in enumerate(fits.itertuples()):
            if not fitted[i]:
                continue
            indexed = reflections(int(fit.row))
            if indexed is None:
                continue
            cell = refine_cell(vector, covered, indexed, xrd, fit.strain, fit.zero_shift, fit.width)
            if cell_kept(fit.agreement, cell[0]):
                fits.loc[i, ["agreement", "anisotropy", "zero_shift", "width"]] = cell
        return fits


def refine_shortlist(pattern: np.ndarray, mask: np.ndarray | None, similarity: np.ndarray, rows: np.ndarray,
                     sticks: Callable, xrd: XRDConfig, scale: np.ndarray | None = None,
                     reflections: Callable | None = None, depth: int = RERANK_DEPTH, cells: int = CELL_FITS,
                     rule: tuple[str, float] | None = None, model_prior: bool = True
                     ) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """The search's second stage for one query, the one sequence every caller runs (``identify``, ``calibrate``,
    the robustness table, the selection grids): the ``depth`` candidates of highest ``similarity`` (the multi-scale
    query's, best first, ties in order), refined (:func:`refine`, the cells of the best ``cells`` fitted), scored
    (:func:`rerank_score` by ``rule``; None: :data:`RERANK`).

    Args:
        pattern, mask: the query [n_bins] and its coverage (all when None).
        similarity: [n] each candidate's similarity (-inf: left out); scale: [n] the lattice scale it was found at.
        rows: [n] each candidate's row for ``sticks(row)`` / ``reflections(row)``.
        model_prior: False for search-match: the cells are chosen by the agreement alone and the score takes no
            anisotropy penalty.

    Returns:
        (positions [k] of the shortlisted candidates, best similarity first; their fits (:func:`refine`'s table);
        their scores [k]).
    """
    similarity = np.asarray(similarity, np.float64)
    top = np.argsort(-similarity, kind="stable")[: max(int(depth), 1)]
    top = top[np.isfinite(similarity[top])]
    fits = refine(pattern, mask, np.asarray(rows)[top], sticks, xrd, None if scale is None else np.asarray(scale)[top],
                  reflections, similarity=similarity[top] if model_prior else np.zeros(len(top)), cells=cells)
    anisotropy = fits["anisotropy"].to_numpy() if model_prior else 0.0
    return top, fits, rerank_score(fits["agreement"].to_numpy(), similarity[top], rule, anisotropy)


def _refine(vector, covered, rows, sticks, xrd, scales, centres=(0.0,)) -> pd.DataFrame:
    mask = np.ones(len(vector), bool) if covered is None else np.asarray(covered, bool)
    q = np.where(mask, np.asarray(vector, np.float64), 0.0)
    q /= max(np.linalg.norm(q), 1e-12)
    out = []
    for k, row in enumerate(rows):
        tt, area = sticks(int(row))
        tt, area = np.asarray(tt, np.float64), np.asarray(area, np.float32)

        def best_of(eps, delta, width):  # (cosine, strain, shift) of the best of the (eps [V], delta [V]) pairs
            y = np.where(mask, binned_variants(tt, area, eps, delta, width, xrd), 0.0)  # [V, n_bins]
            cos = (y @ q) / np.maximum(np.linalg.norm(y, axis=1), 1e-12)
            j = int(np.argmax(cos))
            return float(cos[j]), float(eps[j]), float(delta[j])

        centre = 1.0 / float(scales[k]) - 1.0 if scales is not None else 0.0
        # the coarse grid around the query's scale at the model's width, then the width at that fit
        coarse = (centre + np.asarray(centres, np.float64)[:, None] + REFINE_OFFSETS).ravel()  # [C * 7]
        cos, eps, delta = best_of(*_grid(coarse, REFINE_SHIFTS), REFINE_WIDTHS[0] * xrd.fwhm)
        width = REFINE_WIDTHS[0] * xrd.fwhm
        for factor in REFINE_WIDTHS[1:]:
            c = best_of(np.array([eps]), np.array([delta]), factor * xrd.fwhm)[0]
            if c > cos:
                cos, width = c, factor * xrd.fwhm
        # finer grids around the best point (a coarse step leaves the right candidate up to 0.1 % of scale off,
        # enough for an isostructural look-alike to fit as well): each stage keeps the best so far
        for d_eps, d_shift in REFINE_FINE_STEPS:
            c, e, z = best_of(*_grid(eps + d_eps * _FINE_GRID, delta + d_shift * _FINE_GRID), width)
            if c > cos:
                cos, eps, delta = c, e, z
        out.append({"row": int(row), "agreement": cos, "strain": eps, "zero_shift": delta, "width": width})
    return pd.DataFrame(out, columns=["row", "agreement", "strain", "zero_shift", "width"])


#: the cell fit's peak widths, in units of the isotropic fit's: a wider profile first widens the basin the
#: least-squares fit starts in (peaks 1° apart still overlap), then the fit is finished at the fitted width
CELL_WIDTHS = SEARCH.cell_widths
CELL_EVALUATIONS = SEARCH.cell_evaluations  # most profile evaluations at each width (more: 2x slower, no better)
CELL_MAX_STRAIN = SEARCH.cell_max_strain  # a cell fit straining the cell more than 5 % beyond the isotropic fit is refused


def refine_cell(vector: np.ndarray, covered: np.ndarray | None, reflections, xrd: XRDConfig, strain: float = 0.0,
                zero_shift: float = 0.0, width: float | None = None) -> tuple[float, float, float, float]:
    """Agreement of one candidate with the pattern after a least-squares fit of its whole cell and the zero shift.

    An isotropic lattice scale (:func:`refine`) cannot follow a cell strained differently along different
    directions, where symmetry-equivalent reflections split. Here the six components of the reciprocal metric
    G* (1/d² = (h², k², l², 2hk, 2hl, 2kl) @ G*, any symmetric strain of the cell) and the zero shift are fitted
    by Levenberg–Marquardt (``scipy.optimize.least_squares``) to the normalised pattern over the covered bins,
    with the exact Jacobian of the binned profile. The fit starts from the isotropic one (``strain``, ``zero_shift``,
    ``width``: :func:`refine`'s), is run at three times the width first (:data:`CELL_WIDTHS`: a wider basin), and
    is finished at each width of :data:`REFINE_WIDTHS` (the isotropic fit may have widened the peaks to cover a
    splitting that the cell fit resolves).

    Args:
        vector: [n_bins] the pattern; covered: [n_bins] bool (all when None).
        reflections: the candidate's :class:`eacnn.physics.xrd.IndexedReflections`.

    Returns:
        (agreement, the cosine at the fitted cell; anisotropy, the deviatoric part of the fitted strain relative to
        the candidate's cell, ‖dev ε‖ (0 for a pure scale); zero shift, degrees; width, degrees FWHM). Agreement −1
        when the fit moves the cell more than :data:`CELL_MAX_STRAIN` beyond the isotropic fit.
    """
    from scipy.optimize import least_squares

    from eacnn.physics.xrd import metric_monomials

    width = width or xrd.fwhm
    mask = np.ones(len(vector), bool) if covered is None else np.asarray(covered, bool)
    q = np.where(mask, np.asarray(vector, np.float64), 0.0)
    q /= max(np.linalg.norm(q), 1e-12)
    mono = metric_monomials(reflections.hkl)  # [R, 6]
    base = np.asarray(reflections.metric, np.float64) / (1.0 + strain) ** 2  # [6] the isotropic fit's metric
    d = np.sqrt(np.abs(base[:3]))
    unit = 0.01 * np.array([d[0] ** 2, d[1] ** 2, d[2] ** 2, d[0] * d[1], d[0] * d[2], d[1] * d[2]])  # 1 = 1 %
    x = np.array([0, 0, 0, 0, 0, 0, zero_shift / 0.1])  # [7] metric change in `unit`s, zero shift in 0.1°
    area = np.asarray(reflections.area, np.float64)
    for factor, evaluations in zip(CELL_WIDTHS, CELL_EVALUATIONS):
        fun = _CellProfile(q, mask, mono, area, base, unit, xrd, factor * width)
        x = least_squares(fun.residual, x, jac=fun.jacobian, method="lm", x_scale=1.0, max_nfev=evaluations).x
    agreement, best_width = float(_CellProfile(q, mask, mono, area, base, unit, xrd, width).normalised(x) @ q), width
    # the isotropic fit may have widened the peaks to cover a splitting the cell fit resolves: finish at the
    # other widths of REFINE_WIDTHS too and keep the best
    for other in {f * xrd.fwhm for f in REFINE_WIDTHS} - {width}:
        fun = _CellProfile(q, mask, mono, area, base, unit, xrd, other)
        y = least_squares(fun.residual, x, jac=fun.jacobian, method="lm", x_scale=1.0,
                          max_nfev=CELL_EVALUATIONS[-1]).x
        c = float(fun.normalised(y) @ q)
        if c > agreement:
            agreement, x, best_width = c, y, other
    anisotropy, largest = _anisotropy(base, base + unit * x[:6])
    if not np.isfinite(agreement) or largest > CELL_MAX_STRAIN:
        return -1.0, 0.0, float(0.1 * x[6]), best_width
    return agreement, anisotropy, float(0.1 * x[6]), best_width


def cell_kept(isotropic, cell, gain: float | None = None):
    """Whether a cell fit's agreement ``cell`` replaces the isotropic fit's ``isotropic`` (scalars or arrays): it
    must lower the residual 1 − agreement² by the factor ``gain`` (:data:`CELL_MIN_GAIN` when None)."""
    gain = CELL_MIN_GAIN if gain is None else gain
    isotropic, cell = np.asarray(isotropic, np.float64), np.asarray(cell, np.float64)
    return (cell > isotropic) & (1 - isotropic**2 >= gain * (1 - cell**2))


def _anisotropy(metric: np.ndarray, fitted: np.ndarray) -> tuple[float, float]:
    """(‖dev ε‖, largest |principal ε|) of the strain ε that takes reciprocal metric ``metric`` [6] to ``fitted``
    [6], in G*'s own frame: with λ the eigenvalues of G*^-½ G*' G*^-½ (the squared ratios d/d' of the principal
    directions), the principal strains are λ^-½ − 1."""
    def full(m):
        return np.array([[m[0], m[3], m[4]], [m[3], m[1], m[5]], [m[4], m[5], m[2]]])

    w, v = np.linalg.eigh(full(metric))
    root = v @ np.diag(1.0 / np.sqrt(np.maximum(w, 1e-12))) @ v.T
    eps = np.linalg.eigvalsh(root @ full(fitted) @ root)  # [3] principal (1 + ε)⁻²
    eps = 1.0 / np.sqrt(np.maximum(eps, 1e-12)) - 1.0
    return float(np.linalg.norm(eps - eps.mean())), float(np.abs(eps).max())


class _CellProfile:
    """The normalised binned profile [n_bins] of indexed reflections under a change of the reciprocal metric and a
    zero shift x [7], and its exact Jacobian [n_bins, 7] (the stick deposit is linear between fine-grid points)."""

    def __init__(self, q, mask, mono, area, base, unit, xrd: XRDConfig, width: float):
        self.q, self.mask, self.mono, self.area, self.base, self.unit = q, mask, mono, area, base, unit
        self.wavelength = xrd.wavelength
        self.lo, self.kernel = variant_kernel(xrd, width)  # [n_fine, n_bins]
        self._at = None

    def _profile(self, x: np.ndarray):
        """(normalised profile [n_bins], its norm, and what the Jacobian needs) at x, kept for the Jacobian."""
        if self._at is not None and np.array_equal(self._at[0], x):
            return self._at[1]
        g2 = np.maximum(self.mono @ (self.base + self.unit * x[:6]), 1e-12)  # [R] 1/d², Å⁻²
        s = np.minimum(self.wavelength / 2 * np.sqrt(g2), 1.0 - 1e-9)  # [R] sin θ
        u = (np.degrees(2 * np.arcsin(s)) + 0.1 * x[6] - self.lo) / FINE  # [R] fine-grid steps
        i0, w1 = split_on_grid(u, self.kernel.shape[0])  # [R] each
        lower, upper = self.kernel[i0], self.kernel[i0 + 1]  # [R, n_bins] each
        y = np.where(self.mask, (self.area * (1 - w1)) @ lower + (self.area * w1) @ upper, 0.0)  # [n_bins]
        norm = max(float(np.linalg.norm(y)), 1e-12)
        self._at = (x.copy(), (y / norm, norm, (g2, s, u, lower, upper)))
        return self._at[1]

    def normalised(self, x: np.ndarray) -> np.ndarray:
        return self._profile(x)[0]

    def residual(self, x: np.ndarray) -> np.ndarray:
        return self._profile(x)[0] - self.q

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        yhat, norm, (g2, s, u, lower, upper) = self._profile(x)
        inside = (u >= 0) & (u <= self.kernel.shape[0] - 1)  # off the grid a stick does not move
        dy_dpos = (self.area * inside / FINE)[:, None] * (upper - lower)  # [R, n_bins] per degree
        dpos_dg2 = np.degrees(self.wavelength / (2 * np.sqrt(g2) * np.sqrt(1 - s * s)))  # [R] degrees per Å⁻²
        dpos = np.concatenate([dpos_dg2[:, None] * self.mono * self.unit, np.full((len(g2), 1), 0.1)], axis=1)
        jy = np.where(self.mask[:, None], dy_dpos.T.astype(np.float64) @ dpos, 0.0)  # [n_bins, 7]
        return (jy - np.outer(yhat, yhat @ jy)) / norm  # d(y/|y|)/dx


def _grid(eps: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (strain, shift) pair of two 1-D grids, flattened: ([len(eps) · len(delta)], same)."""
    e, d = np.meshgrid(eps, delta, indexing="ij")
    return e.ravel(), d.ravel()


def query_embeddings(encode: Callable, vector: np.ndarray, covered: np.ndarray | None, xrd: XRDConfig,
                     scales: np.ndarray = SCALES) -> np.ndarray:
    """[S, d] embeddings of the pattern read at each scale; ``encode(patterns, masks) -> [S, d]``."""
    ys, ms = rescale_many(vector, scales, xrd, covered)
    return encode(ys, ms)


def multiscale_similarity(embeddings: np.ndarray, z: np.ndarray, scales: np.ndarray = SCALES
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(best similarity [n], its scale [n]) of each candidate embedding [n, d] over the query's scales z [S, d], each
    scale's similarity with its :func:`eacnn.retrieval.query.scale_prior`."""
    return multiscale_best(z, embeddings, scales)


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


def identify(vector: np.ndarray, covered: np.ndarray | None, db, top: int = 10, elements: Sequence[str] | None = None,
             rerank: int = RERANK_DEPTH, scales: np.ndarray = SCALES, xrd: XRDConfig | None = None,
             exclude: np.ndarray | None = None) -> Identification:
    """Rank a saved database's candidates for one pattern (see the module docstring).

    Args:
        vector: [n_bins] the pattern on the model grid; covered: [n_bins] bool.
        db: a :class:`eacnn.retrieval.database.SavedDatabase`.
        elements: keep only candidates made of these elements (and no others).
        rerank: refine the best ``rerank`` candidates (0: rank by the model's similarity alone).
        exclude: [n] bool, candidates left out (e.g. every entry of a phase, to ask what the verdict says when
            that phase is missing from the database).
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
    labels = db.labels.iloc[best]
    hits = pd.DataFrame({"id": labels["material_id"].to_numpy(), "formula": labels["formula"].to_numpy(),
                         "spacegroup": labels["spacegroup_symbol"].to_numpy(), "source": labels["source"].to_numpy(),
                         "similarity": sims, "scale": best_scales, "row": best})
    cal = db.manifest.get("calibration", {})
    score_name, threshold = "similarity", float(cal.get("similarity", cal.get("threshold", np.inf)))
    if rerank and len(hits):
        _, fits, scores = refine_shortlist(vector, covered, hits["similarity"].to_numpy(), hits["row"].to_numpy(),
                                           db.sticks, xrd, hits["scale"].to_numpy(),
                                           db.reflections if getattr(db, "has_reflections", False) else None,
                                           depth=rerank)
        hits = hits.merge(fits.assign(score=scores), on="row", how="left")
        order = np.argsort(-hits["score"].fillna(-np.inf).to_numpy(), kind="stable")
        hits = hits.iloc[order].reset_index(drop=True)
        if "score" in cal:
            score_name, threshold = "score", float(cal["score"])
        elif "agreement" in cal:
            score_name, threshold = "agreement", float(cal["agreement"])
    margin, need = float("nan"), 0.0
    if score_name in ("score", "agreement") and len(hits):
        margin = margin_of(hits[score_name].head(rerank).fillna(-np.inf).to_numpy(),
                           (hits["formula"] + "|" + hits["spacegroup"]).head(rerank).to_numpy())
        need = float(cal.get("margin", 0.0))
    best = float(hits[score_name].max()) if len(hits) else float("nan")
    # only good fits can be ambiguous: below the threshold nothing fits, and that is another answer
    ambiguous = (_ambiguous_set(hits.head(rerank), score_name, need) if score_name != "similarity" and best >= threshold
                 else hits.iloc[0:0])
    hits = hits.head(top).reset_index(drop=True)
    hits.insert(0, "rank", np.arange(1, len(hits) + 1))
    score = float(hits[score_name].iloc[0]) if len(hits) else float("nan")
    stands_out = not (margin < need)  # NaN margin (no refinement): the score alone decides
    verdict = "match" if len(hits) and score >= threshold and stands_out else "no confident match"
    differ = ()
    if cal:
        used = dataclasses.replace(SearchConfig.from_calibration(cal), rerank_depth=rerank,
                                   cell_fits=min(CELL_FITS, rerank), scale_min=float(np.min(scales)),
                                   scale_max=float(np.max(scales)), scale_steps=len(scales))
        differ = tuple(SearchConfig.from_calibration(cal).differences(used)) if rerank else ()
    return Identification(hits, verdict, score, threshold, score_name, margin, need, differ, ambiguous)


def _ambiguous_set(refined: pd.DataFrame, score_name: str, need: float, most: int = 5) -> pd.DataFrame:
    """The best refined candidate of each phase (formula and space group) that scores within the calibrated margin
    ``need`` of the best: the phases the pattern cannot tell apart (empty when one phase stands out)."""
    if not len(refined) or need <= 0:
        return refined.iloc[0:0]
    scores = refined[score_name].fillna(-np.inf)
    close = refined[scores >= scores.max() - need]
    close = close.assign(_phase=close["formula"] + "|" + close["spacegroup"]).drop_duplicates("_phase")
    return close.drop(columns="_phase").head(most).reset_index(drop=True) if len(close) > 1 else refined.iloc[0:0]


def margin_of(score: np.ndarray, phase: np.ndarray) -> float:
    """How far the best candidate stands out: its score less the best score of a candidate of another phase
    (``phase`` [k] labels, e.g. "formula|space group"; ``score`` [k], best first or not). The whole score when every
    candidate is the same phase."""
    score, phase = np.asarray(score, float), np.asarray(phase)
    j = int(np.argmax(score))
    others = score[phase != phase[j]]
    return float(score[j] - (others.max() if len(others) else 0.0))


def open_set_rule(score: np.ndarray, margin: np.ndarray, correct: np.ndarray, present: np.ndarray, target: float,
                  margins: Sequence[float] = (0.0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1)
                  ) -> tuple[float, float, float, float]:
    """The (score threshold, margin threshold) under which "match" verdicts (score >= t and margin >= m) are right at
    least ``target`` of the time and name the most right answers, over queries with their phase present (``present``
    True; right or not: ``correct``) and absent (always wrong). Returns (t, m, precision, recall); recall is over the
    right answers among the present queries. Where no pair reaches the target: (above every score, 0, nan, 0)."""
    score, margin = np.asarray(score, float), np.asarray(margin, float)
    correct, present = np.asarray(correct, bool) & np.asarray(present, bool), np.asarray(present, bool)
    n_right = max(int(correct.sum()), 1)
    best = (float(score.max()) + 1e-6, 0.0, float("nan"), 0.0)
    for m in margins:
        ok = margin >= m
        if not ok.any():
            continue
        t = open_set_threshold(score[ok & present], correct[ok & present], score[ok & ~present], target)
        chosen = ok & (score >= t)
        if not chosen.any():
            continue
        recall = float(correct[chosen].sum() / n_right)
        if recall > best[3]:
            best = (float(t), float(m), float(correct[chosen].mean()), recall)
    return best


def open_set_threshold(present: np.ndarray, present_correct: np.ndarray, absent: np.ndarray, target: float) -> float:
    """The lowest score t such that "match" verdicts (score >= t) are right at least ``target`` of the time, over
    queries whose structure is in the pool (scores ``present`` [n], right or not: ``present_correct`` [n]) and
    queries whose structure is absent (scores ``absent`` [m], always wrong). Above the highest score when no
    threshold reaches the target."""
    s = np.concatenate([np.asarray(present, float), np.asarray(absent, float)])
    correct = np.concatenate([np.asarray(present_correct, bool), np.zeros(len(absent), bool)])
    order = np.argsort(-s, kind="stable")
    precision = np.cumsum(correct[order]) / np.arange(1, len(s) + 1)
    ok = np.flatnonzero(precision >= target)
    return float(s[order][ok[-1]]) if len(ok) else float(s.max()) + 1e-6


def calibrate(model, dataset, n_queries: int | None = None, rerank: int = RERANK_DEPTH,
              target: float = SEARCH.target_precision, seed: int = 0, progress: bool = True) -> dict:
    """The verdict's thresholds, open-set, on validation structures: of the similarity (used without refinement),
    and of the refined score with its margin (:func:`open_set_rule`).

    ``n_queries`` validation structures become realistic queries, a third each from the measurement family training
    draws from (:func:`eacnn.physics.conditions.calibration_queries`), the held-out family it never sees
    (:func:`eacnn.physics.measurement.perturb_measured`, ``family="heldout"``) and a clean lab scan of a cell up to
    ±2 % off the database's (isotropic); each is identified among the validation and training structures twice:
    with its phase in the pool and without it (a phase absent from the database). A phase is a (reduced formula,
    space group) pair, as a materials scientist names it: an answer with the query's formula and space group is right
    (MP-20 holds duplicate entries of some phases), and "absent" removes every entry of that phase.
    """
    from tqdm.auto import tqdm

    from eacnn.physics.conditions import calibration_queries
    from eacnn.retrieval.embed import embed_dataset

    n_queries = SEARCH.calibration_queries if n_queries is None else n_queries
    rng = np.random.default_rng([seed, 271828])
    xrd = dataset.config.xrd
    val = np.asarray(dataset.indices("val"))
    pool_rows = np.concatenate([val, np.asarray(dataset.indices("train"))])
    phase = (dataset.labels["formula"] + "|" + dataset.labels["spacegroup_number"].astype(str)).to_numpy()[pool_rows]
    pool = np.concatenate([embed_dataset(model, dataset, split, levels=(0,), progress=progress).structures
                           for split in ("val", "train")])  # [n_pool, d]
    chosen = rng.choice(len(val), min(n_queries, len(val)), replace=False)  # positions in val = rows of the pool
    patterns, masks = calibration_queries(dataset, val[chosen], rng)
    reads = model.model_config.xrd_mask_channel

    def encode(y, m):
        return model.encode_patterns(y * m, progress=False, masks=m if reads else None).numpy()

    rec = {key: [] for key in ("present", "similarity", "sim_correct", "score", "margin", "correct")}
    for q, m, own in tqdm(list(zip(patterns, masks, chosen)), desc="calibrating the verdict", disable=not progress):
        z = query_embeddings(encode, q, m, xrd)
        sim, scale = multiscale_similarity(pool, z)
        for present in (True, False):  # absent: every entry of the query's phase left out of the pool
            shown = sim if present else np.where(phase == phase[own], -np.inf, sim)
            top, _, score = refine_shortlist(q, m, shown, pool_rows, dataset.sticks, xrd, scale, dataset.reflections,
                                             depth=rerank)
            j = int(score.argmax())
            for key, value in (("present", present), ("similarity", sim[top[0]]),
                               ("sim_correct", present and phase[top[0]] == phase[own]), ("score", score[j]),
                               ("margin", margin_of(score, phase[top])), ("correct", present and phase[top[j]] ==
                                                                         phase[own])):
                rec[key].append(value)
    r = {key: np.asarray(v) for key, v in rec.items()}
    pres = r["present"].astype(bool)
    sim_t = open_set_threshold(r["similarity"][pres], r["sim_correct"][pres], r["similarity"][~pres], target)
    score_t, margin_t, precision, recall = open_set_rule(r["score"], r["margin"], r["correct"], pres, target)
    out = {"similarity": sim_t, "score": score_t, "margin": margin_t, "rerank_rule": list(RERANK),
           "scale_penalty": SCALE_PENALTY, "cell_fit": {"anisotropy_penalty": ANISOTROPY_PENALTY,
                                                        "min_gain": CELL_MIN_GAIN, "cells": CELL_FITS},
           "target": target,
           "n_queries": int(len(chosen)),
           "queries": "validation split: a third each measured (training family), measured (held-out family), "
                      "clean with an isotropic lattice mismatch up to ±2 %",
           "right": "same reduced formula and space group", "pool": int(len(pool_rows)), "rerank": rerank,
           "precision_score": precision, "recall_score": recall,
           "recall_similarity": float(np.mean(r["similarity"][pres & r["sim_correct"].astype(bool)] >= sim_t))
           if r["sim_correct"].any() else 0.0,
           "top1_present": float(np.mean(r["correct"][pres]))}
    out["threshold"] = out["score"] if rerank else out["similarity"]
    out["search"] = dataclasses.replace(SEARCH, rerank_depth=rerank, cell_fits=min(CELL_FITS, rerank),
                                        target_precision=target, calibration_queries=int(len(chosen))).to_dict()
    return out
