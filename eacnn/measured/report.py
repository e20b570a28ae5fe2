"""How identification fares on measured patterns of known phases: the rank of the right phase, the verdict, and
the verdict when that phase is missing from the database; precision and recall of "match" over them all; and how
the mixture search fares on the evaluation ``scripts/mixtures.py`` writes (``eacnn/data/mixtures.csv``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from eacnn.retrieval.identify import RERANK_DEPTH, identify

__all__ = ["identification_report", "verdict_quality", "mixture_summary", "mixture_numbers", "mixture_rows", "scan_name",
           "mixture_table", "shipped_mixtures_path", "SEPARATED", "AUTOANALYZER_MIXTURES", "reduced_formula", "phase_in",
           "score_phases", "unseen_summary", "shipped_unseen_path", "unseen_table", "unseen_numbers", "target_phrase"]

#: The four measured XRD-AutoAnalyzer mixtures shipped in ``eacnn/data/measured/mixtures`` and their phases (the
#: file names; polymorphs and fractions are not stated).
AUTOANALYZER_MIXTURES = {"Example__Li2MnO3+MnO+TiO2": ("Li2MnO3", "MnO", "TiO2"),
                         "Example__Mn2O3+LiF": ("Mn2O3", "LiF"), "Example__TiO2+MnO": ("TiO2", "MnO"),
                         "PDF_Example__Li2CO3-ZrO2": ("Li2CO3", "ZrO2")}

#: Two phases are well separated when the cosine of their clean patterns is below this (weight fractions are judged
#: there: overlapping patterns trade intensity between phases).
SEPARATED = 0.3


def identification_report(grids: dict, db, rerank: int = RERANK_DEPTH, filters: Sequence[str] = ("none", "elements"),
                          scan_fits: bool = True) -> pd.DataFrame:
    """One row per (pattern, filter): the rank of the first candidate with the phase's reduced formula, the top-1
    answer, its final score and the verdict; then the same search with every candidate of that formula removed
    (``verdict if absent``: a trustworthy tool says "no confident match" there).

    Args:
        grids: phase formula (e.g. ``"MnO"``) -> :class:`eacnn.measured.preprocess.GridResult`.
        db: a :class:`eacnn.retrieval.database.SavedDatabase`.
        filters: ``"none"`` and/or ``"elements"`` (candidates made of the phase's elements only).
        scan_fits: fit the best refined candidates to each scan as read (``eacnn search``'s default); False: the
            verdict of the binned score.
    """
    from pymatgen.core import Composition

    reduced = db.labels["formula"].map(lambda f: Composition(f).reduced_formula).to_numpy()
    rows = []
    for phase, grid in grids.items():
        comp = Composition(phase)
        right = reduced == comp.reduced_formula  # [n]
        for filt in filters:
            elements = sorted(el.symbol for el in comp.elements) if filt == "elements" else None
            scan = grid.as_scan() if scan_fits else None
            present = identify(grid.vector, grid.covered, db, top=len(db), elements=elements, rerank=rerank,
                               scan=scan)
            hits = present.hits
            is_right = right[hits["row"].to_numpy()]
            absent = identify(grid.vector, grid.covered, db, top=1, elements=elements, rerank=rerank, exclude=right,
                              scan=scan)
            top, other = hits.iloc[0], absent.hits.iloc[0] if len(absent.hits) else None
            rows.append({
                "phase": phase, "filter": "+".join(elements) if elements else "none",
                "rank": int(np.flatnonzero(is_right)[0] + 1) if is_right.any() else np.nan,
                "top-1": f"{top.id} {top.formula} {top.spacegroup}", "top-1 right": bool(is_right[0]),
                present.score_name: present.score,
                **({"χ² (scan)": round(float(hits["scan_chi2"].iloc[0]), 1)} if present.scan_fits else {}),
                "verdict": present.verdict,
                "verdict if absent": absent.verdict,
                "absent: top-1": f"{other.id} {other.formula}" if other is not None else "-",
            })
    return pd.DataFrame(rows)


def verdict_quality(report: pd.DataFrame) -> dict:
    """Precision and recall of "match" over a report's rows: each row asks twice, with its phase present (a match
    is right when the top-1 is the right formula) and absent (any match is wrong)."""
    present_match = report["verdict"] == "match"
    right = present_match & report["top-1 right"]
    wrong = (present_match & ~report["top-1 right"]).sum() + (report["verdict if absent"] == "match").sum()
    matches = int(right.sum() + wrong)
    return {"matches": matches, "right matches": int(right.sum()),
            "precision": float(right.sum() / matches) if matches else float("nan"),
            "recall": float(right.sum() / len(report)) if len(report) else float("nan")}


def reduced_formula(formula: str) -> str:
    """The reduced formula of a formula string (``"Li2 Mn1 O3"``, ``"LiMnO2"``...), for matching names."""
    from pymatgen.core import Composition

    return Composition(formula).reduced_formula


def score_phases(truth: Sequence[str], found: Sequence[str]) -> dict:
    """How many true phases (formulas) a mixture search named: ``named`` (count), ``all`` (every one),
    ``spurious`` (found phases matching no true formula), by reduced formula (polymorphs count as named)."""
    want = {reduced_formula(f) for f in truth}
    got = [reduced_formula(f) for f in found]
    named = want & set(got)
    return {"named": len(named), "all": named == want, "spurious": sum(g not in want for g in got)}


def phase_in(db, formula: str, spacegroup: str) -> bool:
    """Whether a database holds the phase: an entry of that reduced formula and space-group symbol."""
    want = reduced_formula(formula)
    rows = db.labels["spacegroup_symbol"].to_numpy() == spacegroup
    return any(reduced_formula(f) == want for f in db.labels["formula"].to_numpy()[rows])


def shipped_unseen_path():
    """``scripts/unseen_scans.py``'s answers shipped with the package (shipped model, MP-20 test structures)."""
    from eacnn.paths import DATA_DIR

    return DATA_DIR / "unseen_scans.csv"


def shipped_mixtures_path():
    """The mixture evaluation shipped with the package (written by ``scripts/mixtures.py``, shipped model)."""
    from eacnn.paths import DATA_DIR

    return DATA_DIR / "mixtures.csv"


def _kind_label(kind: str) -> str:
    """A set of ``scripts/mixtures.py`` as the book names it: ``synthetic 2-phase (train)`` is a mixture of MP-20 test
    structures under the measurement family training draws from."""
    import re

    m = re.fullmatch(r"synthetic (\d)-phase \((\w+)\)", kind)
    if m:
        family = {"train": "training", "heldout": "second"}.get(m.group(2), m.group(2))
        return f"synthetic {m.group(1)}-phase (test structures, {family} measurement family)"
    return {"xrd_autoanalyzer": "XRD-AutoAnalyzer scans", "dara": "Dara lab scans"}.get(kind, kind)


def _by_phase(part: pd.DataFrame) -> pd.DataFrame:
    """A synthetic set's rows scored by phase, as a materials scientist names one: ``named``, ``all`` and
    ``spurious`` by (reduced formula, space group), so a right formula in the wrong polymorph is wrong. The true
    phases' space groups are their MP-20 entries' (``truth_ids``); the found ones' are ``found_spacegroups``."""
    from eacnn.datasets.structures import load_embedded

    group = load_embedded().set_index("material_id")["spacegroup_symbol"]

    def phases(formulas, groups) -> list:
        f = [x for x in str(formulas).split(";") if x and x != "nan"]
        g = str(groups).split(";")
        return [(reduced_formula(a), b) for a, b in zip(f, g)]

    rows = []
    for r in part.itertuples():
        want = set(phases(r.truth, ";".join(str(group.get(i, "?")) for i in str(r.truth_ids).split(";"))))
        got = phases(r.found, r.found_spacegroups)
        named = want & set(got)
        rows.append({"named": len(named), "all": named == want, "spurious": sum(g not in want for g in got)})
    return part.assign(**pd.DataFrame(rows, index=part.index))


def mixture_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (set, search) of a mixture evaluation: patterns, every phase named (%), true phases named of
    all, spurious phases per pattern, and for synthetic sets every phase named by the exact entry and the
    weight-fraction error where every phase was named and the phases are well separated. A phase is named when
    its reduced formula is found, and for the synthetic sets, whose polymorphs are known, its space group too
    (:func:`_by_phase`); the measured sets' sources give formulas only."""
    out = []
    for (kind, restrict), part in df.groupby(["kind", df["elements"] != "any"], sort=False):
        if kind.startswith("synthetic"):
            part = _by_phase(part)
        n_true = int(sum(len(str(t).split(";")) for t in part["truth"]))
        row = {"set": _kind_label(kind), "search": "true elements only" if restrict else "whole database",
               "patterns": len(part), "every phase named (%)": 100 * part["all"].mean(),
               "true phases named": f"{int(part['named'].sum())} of {n_true}",
               "spurious phases per pattern": part["spurious"].mean()}
        judged = part[part["all"] & part["weight_error_max"].notna()]
        if kind.startswith("synthetic"):
            row["every phase, exact entry (%)"] = 100 * part["all_by_id"].mean()
            judged = part[part["all_by_id"] & (part["max_cosine"] < SEPARATED)]
        row["weight error, median (wt %)"] = 100 * judged["weight_error_max"].median() if len(judged) else np.nan
        row["within ±10 wt % (%)"] = 100 * (judged["weight_error_max"] <= 0.1).mean() if len(judged) else np.nan
        row["judged for weight"] = len(judged)
        out.append(row)
    return pd.DataFrame(out)


def scan_weight_table(df: pd.DataFrame) -> pd.DataFrame:
    """Weight fractions of the measured mixtures with known weighed fractions (the Dara scans), where every phase
    was named: the largest error per scan from the binned fit and after the named phases were refined together on
    the scan itself (``scan_weight_error_max``, :func:`eacnn.measured.mixtures.refine_on_scan`), per search."""
    rows = []
    if "scan_weight_error_max" not in df:
        return pd.DataFrame()
    for (kind, restrict), part in df.groupby(["kind", df["elements"] != "any"], sort=False):
        judged = part[part["all"] & part["weight_error_max"].notna() & part["scan_weight_error_max"].notna()]
        if kind.startswith("synthetic") or not len(judged):
            continue
        binned, scan = 100 * judged["weight_error_max"], 100 * judged["scan_weight_error_max"]
        rows.append({"set": _kind_label(kind), "search": "true elements only" if restrict else "whole database",
                     "scans judged": len(judged), "binned: median (wt %)": binned.median(),
                     "binned: within ±5 wt % (%)": 100 * (binned <= 5).mean(),
                     "on the scan: median (wt %)": scan.median(),
                     "on the scan: within ±5 wt % (%)": 100 * (scan <= 5).mean()})
    return pd.DataFrame(rows)


def crosscheck_table(path=None) -> tuple[pd.DataFrame, dict[str, str]]:
    """``eacnn/data/rietveld_crosscheck.csv`` (``scripts/rietveld_crosscheck.py``) as chapter 10 shows it: one row per
    phase, weighed and found weight fractions (wt %) by eacnn's binned fit, its fit on the scan and rietx; and the
    medians it quotes over the two-phase scans. Empty when the file is absent."""
    from eacnn.paths import DATA_DIR

    path = DATA_DIR / "rietveld_crosscheck.csv" if path is None else path
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        return pd.DataFrame(), {}
    table = pd.DataFrame({"scan": df["pattern"].map(scan_name_of), "phase": df["phase"],
                          "weighed": 100 * df["weighed"], "eacnn, binned": 100 * df["eacnn_binned"],
                          "eacnn, on the scan": 100 * df["eacnn_scan"], "rietx": 100 * df["rietx"]}).round(1)
    n_phases = df.groupby("pattern")["phase"].transform("size")
    two = df[n_phases == 2]
    numbers = {"cc_scans": f"{two['pattern'].nunique()}"}
    for key, col in (("cc_binned", "eacnn_binned"), ("cc_scan", "eacnn_scan"), ("cc_rietx", "rietx")):
        numbers[key] = f"{100 * (two[col] - two['weighed']).abs().median():.1f}"
    numbers["cc_between"] = f"{100 * (two['eacnn_scan'] - two['rietx']).abs().median():.1f}"
    # what the prose says of single phases: those both programs over-weigh by more than 5 wt %, those rietx zeroes
    both = df[(df["eacnn_scan"] - df["weighed"] > 0.05) & (df["rietx"] - df["weighed"] > 0.05)]
    numbers["cc_both_over"] = ", ".join(sorted(set(both["phase"]))) or "no phase"
    numbers["cc_both_over_n"] = f"{len(both)}"
    numbers["cc_rietx_zero"] = ", ".join(sorted(set(df.loc[df["rietx"] < 0.005, "phase"]))) or "no phase"
    return table, numbers


def scan_name_of(pattern: str) -> str:
    """A Dara scan's phases and counting time as a table shows them (``NiO_0p6007-Bi2O3_0p4008--8min`` ->
    "NiO + Bi2O3, 8 min")."""
    phases = " + ".join(p.rsplit("_", 1)[0] for p in pattern.split("--")[0].split("-"))
    return f"{phases}, {scan_name(pattern)}"


def mixture_rows(df: pd.DataFrame, kind: str, search: str = "any") -> pd.DataFrame:
    """The measured patterns of one set (``kind``: "xrd_autoanalyzer" or "dara"), one search (``"any"``: the whole
    database; else restricted to the true elements): truth beside what was found, weight fractions in %."""
    part = df[(df["kind"] == kind) & ((df["elements"] == "any") == (search == "any"))]

    def pct(text) -> str:
        return " / ".join(f"{100 * float(x):.0f}" for x in str(text).split(";")) if isinstance(text, str) and text else "–"

    return pd.DataFrame({
        "scan": [scan_name(p) for p in part["pattern"]], "true phases": part["truth"].str.replace(";", " + ").to_numpy(),
        "true wt %": [pct(t) for t in part["truth_weight_fractions"].fillna("")],
        "found": [" + ".join(f"{f} {g}" for f, g in zip(str(a).split(";"), str(b).split(";"))) if a == a and a else "–"
                  for a, b in zip(part["found"], part["found_spacegroups"])],
        "found wt % (approx.)": [pct(t) for t in part["found_weight_fractions"].fillna("")],
        "all named": part["all"].to_numpy(), "spurious": part["spurious"].to_numpy(),
    })


def scan_name(pattern: str) -> str:
    """A measured mixture's file stem as a table shows it beside its true phases: the Dara scans by their counting
    time (``…--8min`` -> "8 min"), the XRD-AutoAnalyzer ones without their prefix, phases spaced."""
    if "--" in pattern:
        return pattern.rsplit("--", 1)[1].replace("min", " min")
    return pattern.removeprefix("Example__").replace("+", " + ")


def mixture_numbers(df: pd.DataFrame) -> dict[str, str]:
    """The numbers the mixtures chapter and the results page quote (strings, percent with no decimals)."""
    s = mixture_summary(df)

    def get(kind_label: str, search: str, column: str, fmt: str = ".0f") -> str:
        row = s[(s["set"] == kind_label) & (s["search"] == search)]
        if not len(row) or row[column].isna().all():
            return "n/a"
        value = row[column].iloc[0]
        return value if isinstance(value, str) else format(value, fmt)

    out = {}
    for key, kind in [("s2", "synthetic 2-phase (train)"), ("s3", "synthetic 3-phase (train)"),
                      ("aa", "xrd_autoanalyzer"), ("dara", "dara")]:
        label = _kind_label(kind)
        for skey, search in [("any", "whole database"), ("el", "true elements only")]:
            out[f"mix_{key}_{skey}_all"] = get(label, search, "every phase named (%)")
            out[f"mix_{key}_{skey}_named"] = get(label, search, "true phases named")
            out[f"mix_{key}_{skey}_n"] = get(label, search, "patterns", "d")
            out[f"mix_{key}_{skey}_spurious"] = get(label, search, "spurious phases per pattern", ".2f")
            out[f"mix_{key}_{skey}_werr"] = get(label, search, "weight error, median (wt %)", ".1f")
            out[f"mix_{key}_{skey}_w10"] = get(label, search, "within ±10 wt % (%)")
            out[f"mix_{key}_{skey}_exact"] = get(label, search, "every phase, exact entry (%)")
    out["mix_targets"] = "; ".join(
        f"{where}, the 2-phase set {target_phrase(out[f'mix_s2_{skey}_all'], 90.0)} and the 3-phase set "
        f"{target_phrase(out[f'mix_s3_{skey}_all'], 75.0)}"
        for skey, where in (("any", "Without chemical hints"), ("el", "with the elements given")))
    return out


def mixture_table(grids: dict, truths: dict, db, elements: dict | None = None) -> pd.DataFrame:
    """Search each pattern for every phase (:func:`eacnn.measured.mixtures.identify_phases`, ``"auto"``) and score
    the answer against its true phases by reduced formula.

    Args:
        grids: name -> :class:`eacnn.measured.preprocess.GridResult`; truths: name -> true formulas.
        db: a saved database; elements: name -> element list to restrict the search to (none: whole database).

    Returns:
        one row per pattern: pattern, true phases, found (formula, space group, approximate wt %), named (true
        phases named), true (how many), spurious (found phases matching no true formula), explained (%), Rwp.
    """
    from eacnn.measured.mixtures import identify_phases

    rows = []
    for name, grid in grids.items():
        truth = list(truths[name])
        result = identify_phases(grid.vector, grid.covered, db, elements=(elements or {}).get(name))
        score = score_phases(truth, [p.formula for p in result.phases])
        rows.append({"pattern": name, "true phases": " + ".join(truth),
                     "found (approx. wt %)": " + ".join(f"{p.formula} {p.spacegroup} ({100 * p.weight_fraction:.0f})"
                                                        for p in result.phases) or "–",
                     "named": score["named"], "true": len(truth), "spurious": score["spurious"],
                     "explained (%)": round(100 * result.explained), "Rwp": round(result.rwp, 3)})
    return pd.DataFrame(rows)


def unseen_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per condition and search of ``scripts/unseen_scans.py``'s answers: queries, Top-1 and Top-5 (%: the query's
    phase, formula and space group, at rank 1 or within 5), "match" verdicts (%) and confident wrong answers (%:
    a "match" whose first answer is not the query's phase); search-match gives no verdict."""
    out = []
    for (condition, search), part in df.groupby(["condition", "search"], sort=False):
        match = part["verdict"] == "match"
        out.append({"condition": condition, "search": search, "queries": len(part),
                    "Top-1 (%)": 100 * (part["rank"] == 1).mean(), "Top-5 (%)": 100 * (part["rank"] <= 5).mean(),
                    "match (%)": 100 * match.mean() if search != "search-match" else np.nan,
                    "confident wrong (%)": 100 * (match & (part["rank"] != 1)).mean()
                    if search != "search-match" else np.nan})
    return pd.DataFrame(out)


def unseen_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Chapter 5's table of :func:`unseen_summary`: per condition (rows in the script's order), Top-1 and Top-5 of the
    search, Top-1 with the elements given, Top-1 of search-match, the "match" verdicts and the confident wrong
    answers (%); and, where the answers were also recorded without the whole-pattern fit (``… (binned)``), that
    search's matches and confident wrong answers (and its Top-1 where the fit changed any first answer)."""
    by = summary.set_index(["condition", "search"])

    def col(search: str, value: str) -> pd.Series:
        return by.xs(search, level="search")[value]

    table = {
        "Top-1 %": col("eacnn search", "Top-1 (%)"), "Top-5 %": col("eacnn search", "Top-5 (%)"),
        "elements given, Top-1 %": col("eacnn search, elements given", "Top-1 (%)"),
        "search-match, Top-1 %": col("search-match", "Top-1 (%)"),
        "match %": col("eacnn search", "match (%)"),
        "confident wrong %": col("eacnn search", "confident wrong (%)"),
    }
    searches = set(summary["search"])
    if "eacnn search (binned)" in searches:  # the same answers before the whole-pattern fit re-ranked them
        binned = col("eacnn search (binned)", "Top-1 (%)")
        if not binned.equals(table["Top-1 %"]):  # the fit re-ordered some answers
            table["binned only, Top-1 %"] = binned
        table["binned only, match %"] = col("eacnn search (binned)", "match (%)")
        table["binned only, confident wrong %"] = col("eacnn search (binned)", "confident wrong (%)")
    return pd.DataFrame(table).loc[list(summary["condition"].unique())].round(1)


def unseen_numbers(summary: pd.DataFrame, target: float = 85.0) -> dict[str, str]:
    """The phrases chapter 5 glues about :func:`unseen_summary`: the unstrained and the weakest condition's Top-1,
    how that stands against ``target``, the least Top-1 with the elements given, search-match's range and where it
    beats the search, the most confident wrong answers."""
    table = unseen_table(summary)
    queries = summary.set_index(["condition", "search"])["queries"]
    ours = table["Top-1 %"].drop("unstrained", errors="ignore")
    sm = table["search-match, Top-1 %"].drop("unstrained", errors="ignore")
    beats = [c for c in table.index if table.loc[c, "search-match, Top-1 %"] > table.loc[c, "Top-1 %"]]
    return {
        "unseen_n": f"{int(summary['queries'].max())}",
        "unseen_clean": f"{table.loc['unstrained', 'Top-1 %']:.1f}" if "unstrained" in table.index else "n/a",
        "unseen_worst": str(ours.idxmin()), "unseen_worst_top1": f"{ours.min():.1f}",
        "unseen_worst_phrase": target_phrase(f"{ours.min():.1f}", target),
        "unseen_elements_min": f"{table['elements given, Top-1 %'].min():.1f}",
        "unseen_sm_range": f"{sm.min():.0f}–{sm.max():.0f}",
        "unseen_sm_beats": ", ".join(f'"{c}" ({table.loc[c, "search-match, Top-1 %"]:.0f} against '
                                     f'{table.loc[c, "Top-1 %"]:.0f} %{_noise(table, c, queries)})'
                                     for c in beats) or "nowhere",
        "unseen_wrong_max": f"{table['confident wrong %'].max():.1f}",
    }


def _noise(table: pd.DataFrame, condition: str, queries: pd.Series) -> str:
    """", within two standard errors" when search-match's Top-1 lead over the search in ``condition`` is smaller
    than twice the standard error of the difference of two proportions over that many queries (a conservative,
    unpaired one); "" when it is larger."""
    a, b = table.loc[condition, "search-match, Top-1 %"] / 100, table.loc[condition, "Top-1 %"] / 100
    n_a = float(queries.get((condition, "search-match"), np.nan))
    n_b = float(queries.get((condition, "eacnn search"), np.nan))
    se = np.sqrt(a * (1 - a) / n_a + b * (1 - b) / n_b)
    return ", within two standard errors" if a - b < 2 * se else ""


def unseen_misses(df: pd.DataFrame, search: str = "eacnn search") -> dict[str, str]:
    """What the ``search``'s wrong first answers on the unseen scans (``scripts/unseen_scans.py``) are, outside the
    unstrained condition: how many; how many name a phase of the query's space group with another formula (the
    look-alike an isotype gives: the same lines, other intensities and cell; only chemistry or intensities to within
    the noise decide), how many the query's formula in another space group (a polymorph), how many something else;
    how many of them are first when the elements are given; how many answers named the right phase among the
    look-alikes they could not tell apart (the ambiguous set, ``ambiguous``; "n/a" for answers recorded without
    it); and how many were confident ("match"). Reporting only: nothing chooses a setting from it."""
    def split(label: pd.Series) -> tuple[pd.Series, pd.Series]:
        parts = label.astype(str).str.rsplit("|", n=1, expand=True)
        return parts[0], parts[1] if parts.shape[1] > 1 else pd.Series("", index=label.index)

    ours = df[(df["search"] == search) & (df["condition"] != "unstrained")]
    miss = ours[ours["rank"] != 1]
    if not len(miss):
        return {"miss_n": "0", "miss_isotype": "0", "miss_polymorph": "0", "miss_other": "0", "miss_elements": "0",
                "miss_confident": "0", "miss_queries": str(len(ours)), "miss_in_set": "0"}
    t_formula, t_group = split(miss["truth"])
    a_formula, a_group = split(miss["top1"].fillna(""))
    isotype = (a_group == t_group) & (a_formula != t_formula)
    polymorph = (a_formula == t_formula) & (a_group != t_group)
    given = df[df["search"] == f"{search}, elements given"].set_index(["condition", "material_id"])["rank"]
    keys = list(zip(miss["condition"], miss["material_id"]))
    first_given = sum(int(given.get(k, 0) == 1) for k in keys)
    in_set = "n/a"
    if "ambiguous" in miss:
        named = miss["ambiguous"].fillna("").astype(str).str.split(";")
        in_set = str(sum(int(t in set(n)) for t, n in zip(miss["truth"], named)))
    return {"miss_in_set": in_set, "miss_n": str(len(miss)), "miss_queries": str(len(ours)), "miss_isotype": str(int(isotype.sum())),
            "miss_polymorph": str(int(polymorph.sum())), "miss_other": str(int((~isotype & ~polymorph).sum())),
            "miss_elements": str(first_given), "miss_confident": str(int((miss["verdict"] == "match").sum()))}


def unseen_fit_numbers(df: pd.DataFrame) -> dict[str, str]:
    """What chapter 5 says of the whole-pattern fit on the unseen scans (``scripts/unseen_scans.py``'s answers,
    which record each search with the fit and without it, ``… (binned)``): how many verdicts the fit changed, the
    median χ² of right first answers and how many of them reach the fit's own χ² limit."""
    from eacnn.config import SearchConfig

    if "chi2" not in df or "eacnn search (binned)" not in set(df["search"]):
        return {}
    ours = df[df["search"] == "eacnn search"].reset_index(drop=True)
    binned = df[df["search"] == "eacnn search (binned)"].reset_index(drop=True)
    right_chi2 = ours.loc[ours["rank"] == 1, "chi2"].dropna()
    s = SearchConfig()
    return {"unseen_fit_changed": f"{int((ours['verdict'] != binned['verdict']).sum())}",
            "unseen_fit_n": f"{len(ours)}",
            "unseen_fit_chi2": f"{right_chi2.median():.2f}" if len(right_chi2) else "n/a",
            "unseen_fit_below": f"{100 * (right_chi2 <= s.scan_limit).mean():.0f}" if len(right_chi2) else "n/a",
            "unseen_fit_limit": f"{s.scan_limit:.2f}"}


def target_phrase(top1: str, target: float) -> str:
    """How a Top-1 (percent, as text; "n/a" when not computed) stands against a target: "meets the ≥ 95 % target"
    or "misses the ≥ 95 % target by 3.1 points"."""
    if top1 == "n/a":
        return f"was not computed against the ≥ {target:g} % target"
    gap = target - float(top1)
    return f"meets the ≥ {target:g} % target" if gap <= 0 else f"misses the ≥ {target:g} % target by {gap:.1f} points"
