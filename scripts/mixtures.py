"""Issue 16's evaluation: name every phase of a multi-phase pattern (:func:`eacnn.measured.mixtures.identify_phases`).

    python scripts/mixtures.py [--n2 200] [--n3 100] [--family train|heldout] [--database FOLDER]
                               [--out eacnn/data/mixtures.csv]

1. **Synthetic mixtures** of MP-20 test structures: 2 phases (each ≥ 20 % of the intensity) and 3 phases (each
   ≥ 15 %), every phase with its own lattice mismatch and the rest of the measurement model drawn once per pattern
   (:func:`eacnn.analysis.synthetic_mixture`: zero shift, displacement, peak shape, Kα2, background, counting noise,
   partial scans; no preferred orientation). Targets: both phases named ≥ 90 %, all three ≥ 75 %, weight fractions
   within ±10 wt % where the phases' patterns are well separated (cosine of their clean patterns < 0.3). The true
   weight fractions follow from the drawn intensity fractions with the same Z·M·V and cell scattering the search
   uses, so their error measures the fit, not those approximations.
2. **Measured mixtures**: the four XRD-AutoAnalyzer mixtures (and its five single-phase scans) and the 30 Dara lab
   scans of 15 precursor mixtures shipped in ``eacnn/data/measured/mixtures`` (MIT; README there), each
   searched over the whole database and restricted to the elements of its true phases (as a user who knows the
   precursors would).

The database: the shipped model's embedded database (18,093 MP-20 structures, :func:`default_database`) plus three
folders of reference structures, merged into one saved database under the cache:

* ``eacnn/data/reference_cifs`` — XRD-AutoAnalyzer's 56 Li–Mn–Ti–O–F references (MIT, Szymanski et al. 2021);
* ``eacnn/data/reference_cifs_la_zr_li`` — its 28 La–Zr–Li–O references (La(OH)₃, Li₂CO₃, monoclinic ZrO₂
  among them);
* the Dara precursors the two sets lack (α-V₂O₅, bixbyite In₂O₃, rhodochrosite MnCO₃, NiO, α-Bi₂O₃, wurtzite
  ZnO): entered by hand from the cited structure determinations (:data:`LITERATURE`), written as CIFs by pymatgen into
  ``eacnn/data/reference_cifs_dara`` (``--write-cifs``); bond lengths were checked, and their fits to the measured scans are
  in the CSV.

Writes one row per pattern (truth, found phases with space group, weight and intensity fractions, Rwp, why the
search stopped) to ``--out`` and prints a summary. About 5–10 s per pattern on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from eacnn.measured.report import AUTOANALYZER_MIXTURES, mixture_summary  # noqa: E402
from eacnn.paths import (  # noqa: E402
    MEASURED_DIR,
    MIXTURES_DIR,
    REFERENCE_CIFS_DARA_DIR,
    REFERENCE_CIFS_DIR,
    REFERENCE_CIFS_LA_ZR_LI_DIR,
)

# Structures of the Dara precursors missing from the reference folders: (space group, lattice, species, fractional
# coordinates in pymatgen's default setting, source).
LITERATURE = {
    "V2O5_59": ("Pmmn", ("orthorhombic", 11.512, 3.564, 4.368), ["V", "O", "O", "O"],
                # origin choice 2 of the paper shifted by (-1/4, -1/4, 0)
                [[-0.14882, 0, 0.89146], [-0.14570, 0, 0.53104], [-0.32316, 0, 0.00312], [0, 0, 0.00130]],
                "alpha-V2O5: R. Enjalbert, J. Galy, Acta Cryst. C42, 1467 (1986)"),
    "In2O3_206": ("Ia-3", ("cubic", 10.117), ["In", "In", "O"],
                  [[0.25, 0.25, 0.25], [0.4668, 0, 0.25], [0.3905, 0.1529, 0.3832]],
                  "bixbyite In2O3: M. Marezio, Acta Cryst. 20, 723 (1966)"),
    "MnCO3_167": ("R-3c", ("hexagonal", 4.7682, 15.6354), ["Mn", "C", "O"],
                  [[0, 0, 0], [0, 0, 0.25], [0.2723, 0, 0.25]],
                  "rhodochrosite: H. Effenberger, K. Mereiter, J. Zemann, Z. Kristallogr. 156, 233 (1981)"),
    "NiO_225": ("Fm-3m", ("cubic", 4.1771), ["Ni", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]],
                "bunsenite NiO, rock salt, a = 4.1771 A (ICDD PDF 47-1049)"),
    "Bi2O3_14": ("P2_1/c", ("monoclinic", 5.8486, 8.1661, 7.5097, 112.977), ["Bi", "Bi", "O", "O", "O"],
                 [[0.5242, 0.1843, 0.3615], [0.0409, 0.0425, 0.7763], [0.7783, 0.3037, 0.7080],
                  [0.2388, 0.0467, 0.1316], [0.2694, 0.0284, 0.5109]],
                 "alpha-Bi2O3: H. A. Harwig, Z. anorg. allg. Chem. 444, 151 (1978)"),
    "ZnO_186": ("P6_3mc", ("hexagonal", 3.2498, 5.2066), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.3819]],
                "wurtzite ZnO: H. Kihara, G. Donnay, Can. Mineral. 23, 647 (1985)"),
}
# The XRD-AutoAnalyzer mixtures (eacnn.measured.report) and its five single-phase scans, phases from the file names
AUTOANALYZER = {**AUTOANALYZER_MIXTURES, **{f"Example__{f}": (f,) for f in ("MnO", "Mn2O3", "MnO2", "TiO2", "LiMnO2")}}


def write_literature_cifs(folder: Path) -> Path:
    """The :data:`LITERATURE` structures as CIF files (``<name>.cif``, pymatgen's writer) in ``folder``."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    folder.mkdir(parents=True, exist_ok=True)
    for name, (group, (system, *cell), species, coords, source) in LITERATURE.items():
        lattice = getattr(Lattice, system)(*cell)
        structure = Structure.from_spacegroup(group, lattice, species, coords)
        text = f"# {source}\n# entered by hand from the publication; written by pymatgen\n" + str(CifWriter(structure))
        path = folder / f"{name}.cif"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    (folder / "README.md").write_text(
        "# Reference structures of the Dara precursors missing from the other reference folders\n\n"
        "Entered by hand from the structure determinations below (space group, cell, Wyckoff positions) and written "
        "as P1 CIFs by pymatgen (`python scripts/mixtures.py --write-cifs`). Used for the measured mixtures of "
        "`../measured/mixtures/` (`eacnn.paths.REFERENCE_CIFS_DARA_DIR`).\n\n"
        + "".join(f"* `{k}.cif`: {v[-1]}\n" for k, v in LITERATURE.items()))
    return folder


def _found_columns(result) -> dict:
    phases = result.phases
    return {"found": ";".join(p.formula for p in phases),
            "found_spacegroups": ";".join(p.spacegroup for p in phases),
            "found_ids": ";".join(p.id for p in phases),
            "found_weight_fractions": ";".join(f"{p.weight_fraction:.3f}" for p in phases),
            "found_intensity_fractions": ";".join(f"{p.intensity_fraction:.3f}" for p in phases),
            "found_strains": ";".join(f"{p.strain:.4f}" for p in phases),
            "n_found": len(phases), "rwp": result.rwp, "explained": result.explained, "kalpha2": result.kalpha2,
            "stop_reason": result.stop_reason}


def _weight_errors(truth_ids, truth_w, result) -> tuple[float, str]:
    """Largest |found − true| weight fraction over the true phases named by id (NaN when one is missing)."""
    found = {p.id: p.weight_fraction for p in result.phases}
    errs = [abs(found[i] - w) for i, w in zip(truth_ids, truth_w) if i in found]
    return (max(errs) if len(errs) == len(truth_ids) else float("nan")), ";".join(f"{e:.3f}" for e in errs)


def _prototype(db, row: int) -> tuple:
    """(space group number, anonymised formula) of a database row: its structure type, up to substitution."""
    from pymatgen.core import Composition

    label = db.labels.iloc[row]
    return int(label["spacegroup_number"]), Composition(label["formula"]).anonymized_formula


class Rows:
    """The CSV's rows, written (atomically) every 10 patterns so an interrupted run keeps its work; with ``resume``
    the rows already in the file are kept and their patterns skipped (the random draws are replayed)."""

    def __init__(self, path: str | Path, database: str, resume: bool):
        self.path, self.database = Path(path), database
        self.rows = pd.read_csv(self.path).to_dict("records") if resume and self.path.is_file() else []
        self.done = {(r["kind"], r["pattern"], r["elements"]) for r in self.rows}

    def has(self, kind: str, pattern: str, elements: str) -> bool:
        return (kind, pattern, elements) in self.done

    def add(self, row: dict) -> None:
        self.rows.append({"database": self.database, **row})
        if len(self.rows) % 10 == 0:
            self.write()

    def write(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows)
        tmp = self.path.with_name(self.path.name + ".tmp")
        df.to_csv(tmp, index=False, float_format="%.4f")
        os.replace(tmp, self.path)
        return df


def synthetic(db, k: int, n: int, family: str, seed: int, n_elements: int, out: Rows) -> None:
    """``n`` synthetic k-phase mixtures of MP-20 test structures (module docstring); the first ``n_elements`` are
    searched again restricted to the elements of their phases."""
    from tqdm.auto import tqdm

    from eacnn.analysis import score_phases, synthetic_mixture
    from eacnn.measured.mixtures import cell_scattering, identify_phases, phase_structure, weight_fractions

    rng = np.random.default_rng([seed, k, 16])
    pool = split_pool(db, "test")
    floor = 0.2 if k == 2 else 0.15
    kind = f"synthetic {k}-phase ({family})"
    for i in tqdm(range(n), desc=f"{k}-phase mixtures", unit="pattern"):
        picks = rng.choice(pool, k, replace=False)
        fractions = rng.dirichlet(np.ones(k))
        while fractions.min() < floor:
            fractions = rng.dirichlet(np.ones(k))
        sticks = [db.sticks(int(r)) for r in picks]
        y, covered, drawn = synthetic_mixture(sticks, fractions, rng, family=family)
        structures = [phase_structure(db, int(r)) for r in picks]
        a = [cell_scattering(s, *st) for s, st in zip(structures, sticks)]
        scales = [f / float(np.sum(st[1])) for f, st in zip(fractions, sticks)]
        truth_w = weight_fractions(scales, a, [s.composition.weight for s in structures],
                                   [s.volume for s in structures])
        v = np.asarray(db.vectors[picks], np.float64) * covered
        cos = v @ v.T / np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(v, axis=1)).clip(1e-12)
        ids = list(db.labels["material_id"].iloc[picks])
        elements = sorted(set().union(*(db.elements[r] for r in picks)))
        for restrict in [None, elements] if i < n_elements else [None]:
            if out.has(kind, f"{k}-phase #{i}", " ".join(restrict) if restrict else "any"):
                continue
            result = identify_phases(y, covered, db, elements=restrict)
            named_ids = len(set(ids) & {p.id for p in result.phases})
            score = score_phases(list(db.labels["formula"].iloc[picks]), [p.formula for p in result.phases])
            types = {_prototype(db, p.row) for p in result.phases}
            err, errs = _weight_errors(ids, truth_w, result)
            out.add({"kind": kind, "pattern": f"{k}-phase #{i}",
                     "elements": " ".join(restrict) if restrict else "any",
                     "truth": ";".join(db.labels["formula"].iloc[picks]), "truth_ids": ";".join(ids),
                     "truth_intensity_fractions": ";".join(f"{f:.3f}" for f in fractions),
                     "truth_weight_fractions": ";".join(f"{w:.3f}" for w in truth_w),
                     "coverage": float(covered.mean()), "ka2_ratio": float(drawn["params"]["ka2_ratio"][0]),
                     "max_cosine": float(np.max(cos[np.triu_indices(k, 1)])),
                     "named_by_id": named_ids, "all_by_id": named_ids == k,
                     "all_types": all(_prototype(db, int(r)) in types for r in picks), **score,
                     "weight_error_max": err, "weight_errors": errs, **_found_columns(result)})


def _dara_truth(name: str) -> tuple[list[str], list[float]]:
    """Components and weight fractions from a Dara file name (``V2O5_0p3015-TiO2_0p6998--8min``)."""
    parts = name.split("--")[0].split("-")
    formulas = [p.rsplit("_", 1)[0] for p in parts]
    weights = [float(p.rsplit("_", 1)[1].replace("p", ".")) for p in parts]
    return formulas, weights


def measured(db, out: Rows) -> None:
    """The XRD-AutoAnalyzer and Dara scans, each over the whole database and restricted to its true elements."""
    from tqdm.auto import tqdm

    from eacnn.analysis import reduced_formula, score_phases
    from eacnn.measured import read_pattern, to_model_grid
    from eacnn.measured.mixtures import identify_phases, refine_on_scan

    jobs = [("xrd_autoanalyzer", name, formulas, None, (MIXTURES_DIR if "+" in name or "-" in name else MEASURED_DIR)
             / f"{name}.xy.gz") for name, formulas in AUTOANALYZER.items()]
    for path in sorted(MIXTURES_DIR.glob("*.xrdml.gz")):
        name = path.name.replace(".xrdml.gz", "")
        formulas, weights = _dara_truth(name)
        jobs.append(("dara", name, formulas, weights, path))
    for kind, name, formulas, weights, path in tqdm(jobs, desc="measured mixtures", unit="pattern"):
        grid = to_model_grid(read_pattern(path, wavelength=None if kind == "dara" else "Cu"))
        elements = sorted({el for f in formulas for el in re.findall(r"[A-Z][a-z]?", f)})
        for restrict in (None, elements):
            if out.has(kind, name, " ".join(restrict) if restrict else "any"):
                continue
            result = identify_phases(grid.vector, grid.covered, db, elements=restrict)
            found = {reduced_formula(p.formula): p for p in result.phases}
            errs = [abs(found[reduced_formula(f)].weight_fraction - w)
                    for f, w in zip(formulas, weights or []) if reduced_formula(f) in found]
            # the same phases refined together on the scan as measured (retrieval.scanmix)
            scan = refine_on_scan(result, grid.as_scan(), db)
            scan_w = ({reduced_formula(p.formula): (w, e) for p, w, e in
                       zip(result.phases, scan.weight_fractions, scan.weight_errors)} if scan else {})
            scan_errs = [abs(scan_w[reduced_formula(f)][0] - w)
                         for f, w in zip(formulas, weights or []) if reduced_formula(f) in scan_w]
            out.add({"kind": kind, "pattern": name, "elements": " ".join(restrict) if restrict else "any",
                     "truth": ";".join(formulas),
                     "truth_weight_fractions": ";".join(f"{w:.3f}" for w in weights) if weights else "",
                     "coverage": grid.coverage, **score_phases(formulas, [p.formula for p in result.phases]),
                     "weight_error_max": max(errs) if weights and len(errs) == len(formulas) else float("nan"),
                     "weight_errors": ";".join(f"{e:.3f}" for e in errs), **_found_columns(result),
                     "scan_weight_fractions": ";".join(f"{w:.3f}±{e:.3f}" for w, e in scan_w.values()),
                     "scan_weight_error_max": max(scan_errs) if weights and len(scan_errs) == len(formulas)
                     else float("nan"),
                     "scan_weight_errors": ";".join(f"{e:.3f}" for e in scan_errs),
                     "scan_rwp_net": scan.fit.rwp_net if scan else float("nan"),
                     "scan_chi2": scan.fit.chi2 if scan else float("nan")})


# ---------------------------------------------------------------------------------------------------------------
# Choosing the stopping rules on validation structures (--select-rules)
# ---------------------------------------------------------------------------------------------------------------
LAX = {"significance": 0.0, "min_peak": 0.0, "min_gain": -np.inf, "min_agreement": -1.0}  # rules that never stop
RULE_GRID = {"significance": (3.0, 4.0, 5.0, 6.0, 8.0), "min_peak": (0.04, 0.08, 0.12),
             "min_gain": (0.1, 0.2, 0.3, 0.4, 0.5), "min_agreement": (0.3, 0.5, 0.7)}


def split_pool(db, split: str) -> np.ndarray:
    """Rows of the database's embedded MP-20 entries in one of our splits: ``"val"`` (the shipped model's
    validation carve-out of MP-20's val split, :func:`eacnn.datasets.dataset.assign_splits` with its data config)
    or ``"test"`` (MP-20's test split, the retrieval pool: reported on, never chosen on)."""
    import json

    from eacnn.datasets.dataset import assign_splits
    from eacnn.datasets.structures import load_embedded
    from eacnn.paths import DATA_DIR

    table = load_embedded()
    data = json.loads((DATA_DIR / "checkpoints" / "default.json").read_text())["data"]
    ours = assign_splits(table["split"].to_numpy(), table["material_id"].to_numpy(), data["val_fraction"],
                         data["split_seed"])
    ids = set(table["material_id"].to_numpy()[ours == split])
    embedded = (db.labels["source"] == "embedded").to_numpy()
    return np.flatnonzero(db.labels["material_id"].isin(ids).to_numpy() & embedded)


def _phase(db, row: int) -> str:
    from eacnn.measured.report import reduced_formula

    label = db.labels.iloc[int(row)]
    return f"{reduced_formula(label['formula'])} {label['spacegroup_number']}"


def lax_paths(db, pool: np.ndarray, counts: dict[int, int], seed: int, path: Path) -> pd.DataFrame:
    """Each validation mixture searched once with rules that never stop (greedy line only, up to the most phases):
    one row per step with the quantities every stopping rule reads (residual height and its σ ratio, the new phase's
    agreement and gain) and whether its phase is one of the pattern's. Resumable (rows kept in ``path``)."""
    from tqdm.auto import tqdm

    from eacnn.analysis import synthetic_mixture
    from eacnn.measured.mixtures import identify_phases

    done = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["pattern"])
    rows = done.to_dict("records")
    for k, n in counts.items():
        rng = np.random.default_rng([seed, k, 61])
        floor = {1: 1.0, 2: 0.2, 3: 0.15}[k]
        for i in tqdm(range(n), desc=f"validation {k}-phase (lax rules)", unit="pattern"):
            picks = rng.choice(pool, k, replace=False)
            fractions = rng.dirichlet(np.ones(k))
            while fractions.min() < floor - 1e-9:
                fractions = rng.dirichlet(np.ones(k))
            y, covered, _ = synthetic_mixture([db.sticks(int(r)) for r in picks], fractions, rng, family="train")
            name = f"{k}-phase #{i}"
            if name in set(done["pattern"]):
                continue
            truth = {_phase(db, r) for r in picks}
            result = identify_phases(y, covered, db, beam=1, **LAX)
            steps = result.steps[result.steps["branch"] == 1]
            for s in steps.itertuples():
                rows.append({"pattern": name, "k": k, "truth": ";".join(sorted(truth)), "step": s.step,
                             "phase": _phase(db, s.row), "true": _phase(db, s.row) in truth, "snr": s.snr,
                             "height": s.height, "agreement": s.agreement, "gain": s.gain})
            if not len(steps):
                rows.append({"pattern": name, "k": k, "truth": ";".join(sorted(truth)), "step": 0})
            pd.DataFrame(rows).to_csv(path.with_suffix(".tmp"), index=False, float_format="%.5g")
            os.replace(path.with_suffix(".tmp"), path)
    return pd.DataFrame(rows)


def replay(paths: pd.DataFrame, significance: float, min_peak: float, min_gain: float, min_agreement: float
           ) -> pd.DataFrame:
    """What each pattern's greedy search would have named under these rules: its lax path cut at the first step
    that fails one (one row per pattern: exact = the found phases are the true ones, named, spurious)."""
    out = []
    for name, steps in paths.groupby("pattern", sort=False):
        steps = steps.sort_values("step")
        truth = set(str(steps["truth"].iloc[0]).split(";"))
        found = []
        for s in steps[steps["step"] > 0].itertuples():
            if s.height < max(significance * s.height / max(s.snr, 1e-12), min_peak) or \
                    s.agreement < min_agreement or s.gain < min_gain:
                break
            found.append(s.phase)
        out.append({"pattern": name, "k": int(steps["k"].iloc[0]), "exact": set(found) == truth,
                    "named": len(truth & set(found)), "spurious": sum(f not in truth for f in found)})
    return pd.DataFrame(out)


def select_rules(paths: pd.DataFrame) -> pd.DataFrame:
    """Every rule set of :data:`RULE_GRID` replayed on the validation paths: the share of 1-, 2- and 3-phase patterns
    whose found phases are exactly the true ones (and their mean, the criterion), spurious phases per pattern.
    Sorted best first; ties go to the rule set nearest the previous defaults (fewest changed settings)."""
    import itertools

    from eacnn.config import MixtureConfig

    before = MixtureConfig()
    out = []
    for values in itertools.product(*RULE_GRID.values()):
        rules = dict(zip(RULE_GRID, values))
        r = replay(paths, **rules)
        by_k = r.groupby("k")["exact"].mean()
        out.append({**rules, **{f"exact {k}-phase (%)": 100 * v for k, v in by_k.items()},
                    "exact, mean (%)": 100 * by_k.mean(), "spurious per pattern": r["spurious"].mean(),
                    "changed": sum(rules[key] != getattr(before, key) for key in rules)})
    return pd.DataFrame(out).sort_values(["exact, mean (%)", "changed"], ascending=[False, True],
                                         kind="stable").reset_index(drop=True)


def main() -> None:
    from eacnn.paths import DATA_DIR
    from eacnn.retrieval.database import default_database, open_database

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n2", type=int, default=200, help="synthetic 2-phase mixtures")
    parser.add_argument("--n3", type=int, default=100, help="synthetic 3-phase mixtures")
    parser.add_argument("--family", default="train", choices=["train", "heldout"],
                        help="perturbation family of the synthetic mixtures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database", default=None, help="a saved database to search (default: the embedded "
                        "database of the shipped model plus the reference folders, built once)")
    parser.add_argument("--skip-measured", action="store_true")
    parser.add_argument("--measured-only", action="store_true", help="search the measured scans again and keep "
                        "the synthetic rows already in --out")
    parser.add_argument("--write-cifs", action="store_true", help=f"write the LITERATURE structures' CIFs to "
                        f"eacnn/data/{REFERENCE_CIFS_DARA_DIR.name} first")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out, skip their patterns")
    parser.add_argument("--select-rules", type=int, nargs=3, metavar=("N1", "N2", "N3"), default=None,
                        help="choose the stopping rules instead: N1 single-phase, N2 2-phase and N3 3-phase mixtures "
                        "of validation structures searched with lax rules, every rule set of RULE_GRID replayed on "
                        "them; writes eacnn/data/mixture_rules.csv and prints the best")
    parser.add_argument("--out", default=str(DATA_DIR / "mixtures.csv"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    if args.write_cifs:
        print(f"wrote {write_literature_cifs(REFERENCE_CIFS_DARA_DIR)}")
    folders = [REFERENCE_CIFS_DIR, REFERENCE_CIFS_LA_ZR_LI_DIR, REFERENCE_CIFS_DARA_DIR]
    # the shipped model's embedded database (its shipped embeddings and verdict) plus the folders, built once
    db = open_database(args.database) if args.database else default_database(["embedded", *map(str, folders)])
    print(f"database {db.folder}: {len(db)} candidates from {db.manifest['sources']}")
    if args.select_rules:
        paths = lax_paths(db, split_pool(db, "val"), dict(zip((1, 2, 3), args.select_rules)), args.seed,
                          Path(os.environ.get("EACNN_RUNS", ".")) / "mixture_rule_paths.csv")
        grid = select_rules(paths)
        tmp = DATA_DIR / "mixture_rules.csv.tmp"
        grid.to_csv(tmp, index=False, float_format="%.4g")
        os.replace(tmp, DATA_DIR / "mixture_rules.csv")
        print(grid.head(10).to_string())
        print(f"{time.perf_counter() - t0:.0f} s -> {DATA_DIR / 'mixture_rules.csv'}")
        return
    out = Rows(args.out, f"{len(db)} candidates: " + " + ".join(Path(s).name for s in db.manifest["sources"]),
               args.resume or args.measured_only)
    if args.measured_only:  # the synthetic rows stay as they are; the measured ones are searched again
        out.rows = [r for r in out.rows if not str(r["kind"]).startswith(("xrd_autoanalyzer", "dara"))]
        out.done = {(r["kind"], r["pattern"], r["elements"]) for r in out.rows}
    if not args.skip_measured:
        measured(db, out)
    if args.measured_only:
        print(mixture_summary(out.write()).round(2).to_string())
        print(f"{time.perf_counter() - t0:.0f} s -> {args.out}")
        return
    synthetic(db, 2, args.n2, args.family, args.seed, args.n2 // 2, out)
    synthetic(db, 3, args.n3, args.family, args.seed, args.n3 // 2, out)
    print(mixture_summary(out.write()).round(2).to_string())
    print(f"{time.perf_counter() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
