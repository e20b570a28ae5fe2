"""Refinement of the search's shortlist: each candidate's reflections fitted to the pattern (lattice scale, zero
shift, width, then the whole cell), and the score the candidates are re-ranked by (step 2 of
:mod:`eacnn.retrieval.identify`, which tells the whole search; every setting is in :class:`eacnn.config.SearchConfig`).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from eacnn.config import SearchConfig, XRDConfig
from eacnn.physics.perturb import VARIANT_GRID, binned_variants, variant_kernel
from eacnn.physics.profile import split_on_grid

log = logging.getLogger(__name__)

__all__ = ["SEARCH", "RERANK", "ANISOTROPY_PENALTY", "CELL_MIN_GAIN", "RERANK_DEPTH", "CELL_FITS", "FIT_FLOOR",
           "TEXTURE_FITS", "TEXTURE_MIN_GAIN", "TEXTURE_PENALTY", "TEXTURE_DIRECTIONS", "TEXTURE_R", "refine_texture",
           "texture_cosines",
           "rerank_score", "REFINE_OFFSETS", "REFINE_SHIFTS", "REFINE_WIDTHS", "REFINE_FINE_STEPS", "FINE", "refine",
           "refine_shortlist", "CELL_WIDTHS", "CELL_EVALUATIONS", "CELL_MAX_STRAIN", "refine_cell", "cell_kept"]

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
#: How many of the cell-fitted candidates (the best by their score so far) also get a preferred orientation fitted
#: (:func:`refine_texture`), how much it must lower the residual to be kept, and the score it costs per unit |ln r|;
#: chosen on the validation split (``scripts/select_rerank.py --texture-grid``, ``eacnn/data/texture_fit.csv``)
TEXTURE_FITS = SEARCH.texture_fits
TEXTURE_MIN_GAIN = SEARCH.texture_min_gain
TEXTURE_PENALTY = SEARCH.texture_penalty
#: [13, 3] the low-index reciprocal directions a preferred orientation is tried along (components in {-1, 0, 1},
#: one of each ± pair): the plate or needle axes of most habits
TEXTURE_DIRECTIONS = np.array([v for v in np.ndindex(3, 3, 3) if v > (1, 1, 1)], np.float64) - 1.0
#: [n] the March–Dollase r tried (geometric; r < 1 platelets, r > 1 needles)
TEXTURE_R = np.geomspace(SEARCH.texture_r[0], SEARCH.texture_r[1], int(SEARCH.texture_r[2]))
#: 1 − agreement² below this counts as this (a fit cannot be better than the pattern's float32 rounding)
FIT_FLOOR = 1e-6


def rerank_score(agreement, similarity, rule: tuple[str, float] | None = None, anisotropy=0.0, texture=0.0):
    """The re-ranking score of refined candidates (arrays or Series of one shape), by ``rule`` (:data:`RERANK` when
    None), less :data:`ANISOTROPY_PENALTY` per 1 % of ``anisotropy`` (‖dev ε‖ of a fitted cell, :func:`refine`)
    and :data:`TEXTURE_PENALTY` per unit of ``texture`` (|ln r| of a kept March–Dollase fit):

    - ``("linear", w)``: w · agreement + (1 − w) · similarity;
    - ``("likelihood", b)``: similarity − b · ln(1 − agreement²). For unit vectors, 1 − cos² is the residual of the
      best scaled fit, and −(n/2) ln(residual) the log-likelihood of the fit under Gaussian noise of unknown size:
      a near-perfect fit (an isotropic mismatch, refined away) outweighs any difference in similarity, while among
      imperfect fits (anisotropic strain, texture, impurities) a residual twice as large costs only b · ln 2.

    The anisotropy penalty is a prior against shape changes of the cell: a cell fit may follow a strained sample,
    but a look-alike that needs a large anisotropic strain to fit is less likely than one that does not.
    """
    kind, value = RERANK if rule is None else rule
    prior = ANISOTROPY_PENALTY * np.asarray(anisotropy, np.float64) / 0.01 + TEXTURE_PENALTY * np.asarray(texture)
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
           cells: int | None = None, textures: int | None = None) -> pd.DataFrame:
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
        textures: of the cell-fitted rows, the best ``textures`` by their score so far (:data:`TEXTURE_FITS` when
            None; 0: none) get a preferred orientation fitted at their fitted cell (:func:`refine_texture`), kept
            when it lowers the residual 1 − agreement² :data:`TEXTURE_MIN_GAIN` times.

    Returns:
        one row per candidate: ``row``, ``agreement`` (cosine over the covered bins), ``strain`` (the fitted
        isotropic d-spacing change of the candidate, Δd/d), ``zero_shift`` (degrees), ``width`` (degrees FWHM),
        ``anisotropy`` (‖dev ε‖ of the fitted cell's strain; 0 where the lattice scale fitted as well, i.e. the
        cell fit did not lower the residual 1 − agreement² by :data:`CELL_MIN_GAIN`); ``untextured`` (the agreement
        before the texture fit), ``texture_agreement``, ``texture_r`` and ``texture_hkl`` (the fit's, kept or not:
        NaN, 1 and "" where none was tried), ``texture`` (|ln r| where the fit was kept, else 0).
    """
    # small products: one BLAS thread is as fast, and no spin-waiting when the other cores are busy (2.4x faster then)
    with threadpool_limits(1, "blas"):
        fits = _refine(vector, covered, rows, sticks, xrd, scales, centres)
        fits["anisotropy"] = 0.0
        fits["untextured"], fits["texture_agreement"], fits["texture_r"], fits["texture_hkl"] = np.nan, np.nan, 1.0, ""
        fits["texture"] = 0.0
        fits["metric"] = None  # [6] the fitted reciprocal metric where the reflections are known (the scan fit's start)
        if reflections is None:
            return fits
        fitted = np.ones(len(fits), bool)
        if cells is not None and similarity is not None:
            first = rerank_score(fits["agreement"].to_numpy(), np.asarray(similarity, np.float64))
            fitted[:] = False
            fitted[np.argsort(-first, kind="stable")[:cells]] = True
        metrics = {}
        for i, fit in enumerate(fits.itertuples()):
            if not fitted[i]:
                continue
            indexed = reflections(int(fit.row))
            if indexed is None:
                continue
            cell = refine_cell(vector, covered, indexed, xrd, fit.strain, fit.zero_shift, fit.width)
            metrics[i] = (indexed, np.asarray(indexed.metric, np.float64) / (1.0 + fit.strain) ** 2)
            if cell_kept(fit.agreement, cell[0]):
                fits.loc[i, ["agreement", "anisotropy", "zero_shift", "width"]] = cell[:4]
                metrics[i] = (indexed, cell[4])
        _fit_textures(fits, vector, covered, metrics, xrd, similarity,
                      TEXTURE_FITS if textures is None else textures)
        for i, (_, metric) in metrics.items():
            fits.at[i, "metric"] = metric
        return fits


def _fit_textures(fits: pd.DataFrame, vector, covered, metrics: dict, xrd: XRDConfig, similarity, n: int) -> None:
    """:func:`refine`'s texture step, in place: the best ``n`` cell-fitted rows (``metrics``: position ->
    (reflections, fitted metric [6])) by their score so far get :func:`refine_texture`."""
    if n <= 0 or not metrics:
        return
    where = np.array(sorted(metrics))
    sim = np.zeros(len(fits)) if similarity is None else np.asarray(similarity, np.float64)
    score = rerank_score(fits["agreement"].to_numpy()[where], sim[where], anisotropy=fits["anisotropy"].to_numpy()[where])
    for i in where[np.argsort(-score, kind="stable")[:n]]:
        indexed, metric = metrics[int(i)]
        before = float(fits.at[i, "agreement"])
        agreement, r, hkl = refine_texture(vector, covered, indexed, xrd, metric, float(fits.at[i, "zero_shift"]),
                                           float(fits.at[i, "width"]))
        fits.loc[i, ["untextured", "texture_agreement", "texture_r"]] = before, agreement, r
        fits.at[i, "texture_hkl"] = " ".join(f"{int(v)}" for v in hkl)
        if cell_kept(before, agreement, TEXTURE_MIN_GAIN):
            fits.at[i, "agreement"], fits.at[i, "texture"] = agreement, abs(np.log(r))


def refine_texture(vector: np.ndarray, covered: np.ndarray | None, reflections, xrd: XRDConfig, metric: np.ndarray,
                   zero_shift: float = 0.0, width: float | None = None,
                   directions: np.ndarray = TEXTURE_DIRECTIONS, r: np.ndarray = TEXTURE_R
                   ) -> tuple[float, float, np.ndarray]:
    """Agreement of one candidate with the pattern under the best March–Dollase preferred orientation along one
    of its low-index reciprocal directions, its cell, zero shift and width held at a fit's.

    Platelets or needles lying along one direction in the holder scale each reflection by
    (r² cos²α + sin²α / r)^(−3/2) (:func:`eacnn.physics.measurement.march_dollase`), α its angle to the
    preferred direction. With the peak positions fixed, the pattern is linear in the reflections' areas: the binned
    profile of every reflection [R, n_bins] is built once and every (direction, r) of the grid costs one product.
    The reflections are unmerged (:class:`eacnn.physics.xrd.IndexedReflections`), so symmetry-equivalent ones get
    their own factors, as in a real textured sample.

    Args:
        vector: [n_bins] the pattern; covered: [n_bins] bool (all when None).
        reflections: the candidate's indexed reflections; metric: [6] its fitted reciprocal metric (Å⁻²).
        zero_shift, width: degrees, the fit's; directions: [D, 3] reciprocal directions; r: [n] values tried.

    Returns:
        (agreement, the cosine at the best (direction, r); r; the direction [3]).
    """
    from eacnn.physics.measurement import march_dollase
    from eacnn.physics.xrd import metric_monomials

    width = width or xrd.fwhm
    mask = np.ones(len(vector), bool) if covered is None else np.asarray(covered, bool)
    q = np.where(mask, np.asarray(vector, np.float64), 0.0)
    q /= max(np.linalg.norm(q), 1e-12)
    hkl = np.asarray(reflections.hkl, np.float64)  # [R, 3]
    g = np.asarray(metric, np.float64)
    g2 = np.maximum(metric_monomials(hkl) @ g, 1e-12)  # [R] 1/d²
    s = np.minimum(xrd.wavelength / 2 * np.sqrt(g2), 1.0 - 1e-9)
    lo, kernel = variant_kernel(xrd, width)  # [n_fine, n_bins]
    i0, w1 = split_on_grid((np.degrees(2 * np.arcsin(s)) + zero_shift - lo) / FINE, kernel.shape[0])
    each = kernel[i0] * (1 - w1)[:, None] + kernel[i0 + 1] * w1[:, None]  # [R, n_bins] one reflection each
    each = np.where(mask, each, 0.0)
    cos = texture_cosines(hkl, g, directions)  # [R, D]
    area = np.asarray(reflections.area, np.float64)
    factors = march_dollase(cos.T[:, None, :], np.asarray(r, np.float64)[None, :, None])  # [D, n, R]
    y = (area * factors).reshape(-1, len(area)) @ each  # [D · n, n_bins]
    agreement = (y @ q) / np.maximum(np.linalg.norm(y, axis=1), 1e-12)
    j = int(np.argmax(agreement))
    return float(agreement[j]), float(np.asarray(r)[j % len(r)]), directions[j // len(r)]


def texture_cosines(hkl: np.ndarray, metric: np.ndarray, directions: np.ndarray = TEXTURE_DIRECTIONS) -> np.ndarray:
    """[R, D] cos α between each reflection's reciprocal vector (``hkl`` [R, 3]) and each preferred reciprocal
    direction (``directions`` [D, 3]), in the reciprocal metric ``metric`` [6] (Å⁻²): the angle March–Dollase reads."""
    from eacnn.physics.xrd import metric_monomials

    hkl, g = np.asarray(hkl, np.float64), np.asarray(metric, np.float64)
    gmat = np.array([[g[0], g[3], g[4]], [g[3], g[1], g[5]], [g[4], g[5], g[2]]])  # [3, 3] G*, Å⁻²
    g2 = np.maximum(metric_monomials(hkl) @ g, 1e-12)  # [R] 1/d²
    norms = np.sqrt(g2)[:, None] * np.sqrt(np.einsum("di,ij,dj->d", directions, gmat, directions))[None, :]
    return (hkl @ gmat @ directions.T) / np.maximum(norms, 1e-12)


def refine_shortlist(pattern: np.ndarray, mask: np.ndarray | None, similarity: np.ndarray, rows: np.ndarray,
                     sticks: Callable, xrd: XRDConfig, scale: np.ndarray | None = None,
                     reflections: Callable | None = None, depth: int = RERANK_DEPTH, cells: int = CELL_FITS,
                     rule: tuple[str, float] | None = None, model_prior: bool = True, textures: int | None = None,
                     recall: np.ndarray | None = None, recall_scale: np.ndarray | None = None,
                     recall_depth: int | None = None) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """The search's second stage for one query, the one sequence every caller runs (``identify``, ``calibrate``,
    the robustness table, the selection grids): the ``depth`` candidates of highest ``similarity`` (the multi-scale
    query's, best first, ties in order), refined (:func:`refine`, the cells of the best ``cells`` fitted), scored
    (:func:`rerank_score` by ``rule``; None: :data:`RERANK`).

    Args:
        pattern, mask: the query [n_bins] and its coverage (all when None).
        similarity: [n] each candidate's similarity (-inf: left out); scale: [n] the lattice scale it was found at.
        rows: [n] each candidate's row for ``sticks(row)`` / ``reflections(row)``.
        model_prior: False for search-match: the cells are chosen by the agreement alone and the score takes no
            anisotropy or texture penalty.
        textures: candidates whose preferred orientation is fitted (:func:`refine`; :data:`TEXTURE_FITS` when None).
        recall, recall_scale: [n] each candidate's binned cosine with the query and its scale
            (:func:`eacnn.retrieval.query.multiscale_cosine`; -inf: left out): the best ``recall_depth``
            (:data:`SEARCH` ``.cosine_recall`` when None) of them not already shortlisted join it, after the others,
            refined from the scale their cosine was found at.

    Returns:
        (positions [k] of the shortlisted candidates, best similarity first; their fits (:func:`refine`'s table);
        their scores [k]).
    """
    similarity = np.asarray(similarity, np.float64)
    top = np.argsort(-similarity, kind="stable")[: max(int(depth), 1)]
    top = top[np.isfinite(similarity[top])]
    start = None if scale is None else np.asarray(scale, np.float64)[top]
    top, start = _with_recall(top, start, recall, recall_scale,
                              SEARCH.cosine_recall if recall_depth is None else recall_depth)
    fits = refine(pattern, mask, np.asarray(rows)[top], sticks, xrd, start,
                  reflections, similarity=similarity[top] if model_prior else np.zeros(len(top)), cells=cells,
                  textures=textures)
    anisotropy = fits["anisotropy"].to_numpy() if model_prior else 0.0
    texture = fits["texture"].to_numpy() if model_prior else 0.0
    return top, fits, rerank_score(fits["agreement"].to_numpy(), similarity[top], rule, anisotropy, texture)


def _with_recall(top: np.ndarray, start: np.ndarray | None, recall: np.ndarray | None, recall_scale,
                 depth: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(positions [k'], start scales [k'] or None): ``top`` and, after it, the best ``depth`` positions by ``recall``
    that are not in it (finite only), each starting from its ``recall_scale``."""
    if recall is None or depth <= 0:
        return top, start
    recall = np.asarray(recall, np.float64)
    order = np.argsort(-recall, kind="stable")
    head = order[: depth + len(top)]
    extra = head[~np.isin(head, top)][:depth]
    extra = extra[np.isfinite(recall[extra])]
    if not len(extra):
        return top, start
    if start is not None:
        at = np.ones(len(extra)) if recall_scale is None else np.asarray(recall_scale, np.float64)[extra]
        start = np.concatenate([start, at])
    return np.concatenate([top, extra]), start


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
                zero_shift: float = 0.0, width: float | None = None
                ) -> tuple[float, float, float, float, np.ndarray]:
    """Agreement of one candidate with the pattern after a least-squares fit of its whole cell and the zero shift.

    An isotropic lattice scale (:func:`refine`) cannot follow a cell strained differently along different
    directions, where symmetry-equivalent reflections split. Here the six components of the reciprocal metric
    G* (1/d² = (h², k², l², 2hk, 2hl, 2kl) @ G*, any symmetric strain of the cell) and the zero shift are fitted
    by Levenberg–Marquardt (:func:`eacnn.retrieval.lsq.levenberg_marquardt`) to the normalised pattern over the
    covered bins, with the exact Jacobian of the binned profile. The fit starts from the isotropic one (``strain``, ``zero_shift``,
    ``width``: :func:`refine`'s), is run at three times the width first (:data:`CELL_WIDTHS`: a wider basin), and
    is finished at each width of :data:`REFINE_WIDTHS` (the isotropic fit may have widened the peaks to cover a
    splitting that the cell fit resolves).

    Args:
        vector: [n_bins] the pattern; covered: [n_bins] bool (all when None).
        reflections: the candidate's :class:`eacnn.physics.xrd.IndexedReflections`.

    Returns:
        (agreement, the cosine at the fitted cell; anisotropy, the deviatoric part of the fitted strain relative to
        the candidate's cell, ‖dev ε‖ (0 for a pure scale); zero shift, degrees; width, degrees FWHM; the fitted
        reciprocal metric [6], Å⁻²). Agreement −1 when the fit moves the cell more than :data:`CELL_MAX_STRAIN`
        beyond the isotropic fit.
    """
    from eacnn.physics.xrd import metric_monomials
    from eacnn.retrieval.lsq import levenberg_marquardt

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
        x = levenberg_marquardt(fun.residual, fun.jacobian, x, evaluations)[0]
    agreement, best_width = float(_CellProfile(q, mask, mono, area, base, unit, xrd, width).normalised(x) @ q), width
    # the isotropic fit may have widened the peaks to cover a splitting the cell fit resolves: finish at the
    # other widths of REFINE_WIDTHS too and keep the best
    for other in {f * xrd.fwhm for f in REFINE_WIDTHS} - {width}:
        fun = _CellProfile(q, mask, mono, area, base, unit, xrd, other)
        y = levenberg_marquardt(fun.residual, fun.jacobian, x, CELL_EVALUATIONS[-1])[0]
        c = float(fun.normalised(y) @ q)
        if c > agreement:
            agreement, x, best_width = c, y, other
    fitted = base + unit * x[:6]
    anisotropy, largest = _anisotropy(base, fitted)
    if not np.isfinite(agreement) or largest > CELL_MAX_STRAIN:
        return -1.0, 0.0, float(0.1 * x[6]), best_width, fitted
    return agreement, anisotropy, float(0.1 * x[6]), best_width, fitted


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


@lru_cache(maxsize=16)
def _cell_kernel(xrd: XRDConfig, width: float) -> tuple[float, np.ndarray, np.ndarray]:
    """(origin in degrees, the bin kernel [n_fine, n_bins] of :func:`variant_kernel` in float64, and its differences
    between neighbouring fine-grid points [n_fine - 1, n_bins]): a stick between points i and i + 1 at share w of
    the way deposits kernel[i] + w · diff[i], and moves the bins by diff[i] / FINE per degree."""
    lo, kernel = variant_kernel(xrd, width)
    kernel = kernel.astype(np.float64)
    return lo, kernel, np.diff(kernel, axis=0)


class _CellProfile:
    """The normalised binned profile [n_bins] of indexed reflections under a change of the reciprocal metric and a
    zero shift x [7], and its exact Jacobian [n_bins, 7] (the stick deposit is linear between fine-grid points)."""

    def __init__(self, q, mask, mono, area, base, unit, xrd: XRDConfig, width: float):
        self.q, self.mask, self.mono, self.area, self.base, self.unit = q, mask, mono, area, base, unit
        self.wavelength = xrd.wavelength
        self.lo, self.kernel, self.diff = _cell_kernel(xrd, float(width))  # [n_fine, n_bins], [n_fine - 1, n_bins]
        self._at = None

    def _profile(self, x: np.ndarray):
        """(normalised profile [n_bins], its norm, and what the Jacobian needs) at x, kept for the Jacobian."""
        if self._at is not None and np.array_equal(self._at[0], x):
            return self._at[1]
        g2 = np.maximum(self.mono @ (self.base + self.unit * x[:6]), 1e-12)  # [R] 1/d², Å⁻²
        s = np.minimum(self.wavelength / 2 * np.sqrt(g2), 1.0 - 1e-9)  # [R] sin θ
        u = (np.degrees(2 * np.arcsin(s)) + 0.1 * x[6] - self.lo) / FINE  # [R] fine-grid steps
        i0, w1 = split_on_grid(u, self.kernel.shape[0])  # [R] each
        step = self.diff[i0]  # [R, n_bins] the change of each stick's bins from its lower grid point to the next
        y = self.area @ self.kernel[i0] + (self.area * w1) @ step  # [n_bins]
        y = np.where(self.mask, y, 0.0)
        norm = max(float(np.linalg.norm(y)), 1e-12)
        self._at = (x.copy(), (y / norm, norm, (g2, s, u, step)))
        return self._at[1]

    def normalised(self, x: np.ndarray) -> np.ndarray:
        return self._profile(x)[0]

    def residual(self, x: np.ndarray) -> np.ndarray:
        return self._profile(x)[0] - self.q

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        yhat, norm, (g2, s, u, step) = self._profile(x)
        inside = (u >= 0) & (u <= self.kernel.shape[0] - 1)  # off the grid a stick does not move
        dpos_dg2 = np.degrees(self.wavelength / (2 * np.sqrt(g2) * np.sqrt(1 - s * s)))  # [R] degrees per Å⁻²
        dpos = np.concatenate([dpos_dg2[:, None] * self.mono * self.unit, np.full((len(g2), 1), 0.1)], axis=1)
        jy = step.T @ ((self.area * inside / FINE)[:, None] * dpos)  # [n_bins, 7]
        jy[~self.mask] = 0.0
        return (jy - np.outer(yhat, yhat @ jy)) / norm  # d(y/|y|)/dx


def _grid(eps: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (strain, shift) pair of two 1-D grids, flattened: ([len(eps) · len(delta)], same)."""
    e, d = np.meshgrid(eps, delta, indexing="ij")
    return e.ravel(), d.ravel()
