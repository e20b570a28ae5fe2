"""Diagnostic (validation structures only): would the scan at its own resolution correct the mixture search?

    python scripts/probe_scan_mixtures.py --n2 30 --n3 20 --out .cache/probe_scan_mixtures.csv   # ~20 min, 1 core
    python scripts/probe_scan_mixtures.py --analyse .cache/probe_scan_mixtures.csv

Synthetic mixtures of validation structures (our measurement model, training family) are made as 0.02° scans
(:func:`eacnn.analysis.synthetic_mixture` with a fine grid), put on the model's grid, searched with the default
rules (:func:`eacnn.measured.mixtures.identify_phases`), and the phases found are refined together on the scan
(:func:`eacnn.retrieval.scanmix.fit_phases_scan`). Three scan-level corrections are then measured, each against the
truth, to see whether any separates right from wrong before building it into the search:

* **drop**: each phase's removal, χ²ᵣ without it / χ²ᵣ with it (a spurious phase should explain little);
* **swap**: each phase replaced by each of the five best candidates for the scan residual of the others (binned and
  searched as in the mixture search), the gain 1 − χ²ᵣ(swapped) / χ²ᵣ;
* **add**: the five best candidates for the residual of all phases, each added, with its gain.

Nothing here is read by the search, its selection or the book; the MP-20 test split is never used.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _residual_candidates(fit, grid, db, xrd, k: int = 5) -> pd.DataFrame:
    """The mixture search's shortlist for the positive scan residual of ``fit``, binned on the model's grid."""
    from eacnn.measured.mixtures import _shortlist

    edges = xrd.bin_edges()
    calc = fit.curves.sum(axis=0) + fit.background
    r = np.histogram(fit.two_theta, edges, weights=fit.observed - calc)[0]  # [n_bins]
    y = np.histogram(fit.two_theta, edges, weights=fit.observed - fit.background)[0]
    h = max(float(y.max()), 1e-12)
    r, y = r / h, np.clip(y / h, 0, None)
    return _shortlist(y, grid.covered, r, max(float(np.clip(r, 0, None).max()), 1e-6), [], db, None, k, xrd)


def collect(n2: int, n3: int, out: Path) -> pd.DataFrame:
    from mixtures import _phase, split_pool

    from eacnn.analysis import synthetic_mixture
    from eacnn.config import XRDConfig
    from eacnn.errors import PatternError
    from eacnn.measured import MeasuredPattern, to_model_grid
    from eacnn.measured.mixtures import identify_phases
    from eacnn.paths import REFERENCE_CIFS_DARA_DIR, REFERENCE_CIFS_DIR, REFERENCE_CIFS_LA_ZR_LI_DIR
    from eacnn.physics.conditions import SCAN_STEP
    from eacnn.physics.wavelengths import CU
    from eacnn.retrieval.database import default_database
    from eacnn.retrieval.scanmix import fit_phases_scan

    db = default_database(["embedded", *map(str, (REFERENCE_CIFS_DIR, REFERENCE_CIFS_LA_ZR_LI_DIR,
                                                  REFERENCE_CIFS_DARA_DIR))], progress=False)
    xrd = XRDConfig(**db.manifest["xrd"])
    fine = dataclasses.replace(xrd, step=SCAN_STEP)
    pool, rows, t0 = split_pool(db, "val"), [], time.perf_counter()
    for k, n in ((2, n2), (3, n3)):
        rng = np.random.default_rng([7, k, 99])
        for i in range(n):
            picks = rng.choice(pool, k, replace=False)
            fr = rng.dirichlet(np.ones(k))
            while fr.min() < (0.2 if k == 2 else 0.15):
                fr = rng.dirichlet(np.ones(k))
            y, m, _ = synthetic_mixture([db.sticks(int(r)) for r in picks], fr, rng, family="train", xrd=fine)
            x, y = fine.bin_centers()[m], y[m].astype(np.float64)
            try:
                grid = to_model_grid(MeasuredPattern(x, y, source=f"validation mixture {k}-{i}"), xrd)
            except PatternError:
                continue
            truth = {_phase(db, r) for r in picks}
            res = identify_phases(grid.vector, grid.covered, db)
            found = [_phase(db, p.row) for p in res.phases]
            base = {"k": k, "i": i, "truth": ";".join(sorted(truth)), "found": ";".join(found)}
            refl = [db.reflections(p.row) for p in res.phases]
            strains, scales = [p.strain for p in res.phases], [p.scale for p in res.phases]

            def fit(idx, extra=None, curves=False):
                r = [refl[q] for q in idx] + ([db.reflections(int(extra.row))] if extra is not None else [])
                e = [strains[q] for q in idx] + ([1.0 / float(extra.scale) - 1.0] if extra is not None else [])
                s = [scales[q] for q in idx] + ([0.1] if extra is not None else [])
                return fit_phases_scan(x, y, r, CU.kalpha1, CU.kalpha2, strains=e, scales=s, keep_curves=curves)

            every = list(range(len(found)))
            full = fit(every, curves=True) if found else None
            if full is None:
                rows.append(base)
                continue
            for j in every:
                others = [q for q in every if q != j]
                without = fit(others, curves=True) if others else None
                rows.append(base | {"kind": "drop", "phase": found[j], "true": found[j] in truth, "chi2": full.chi2,
                                    "chi2_with": without.chi2 if without else np.nan})
                if without is None:
                    continue
                for c in _residual_candidates(without, grid, db, xrd).itertuples():
                    ph = _phase(db, c.row)
                    swapped = None if ph in found else fit(others, c)
                    if swapped is not None:
                        rows.append(base | {"kind": "swap", "replaced": found[j], "replaced_true": found[j] in truth,
                                            "phase": ph, "true": ph in truth, "chi2": full.chi2,
                                            "chi2_with": swapped.chi2})
            for c in _residual_candidates(full, grid, db, xrd).itertuples():
                ph = _phase(db, c.row)
                added = None if ph in found else fit(every, c)
                if added is not None:
                    rows.append(base | {"kind": "add", "phase": ph, "true": ph in truth, "chi2": full.chi2,
                                        "chi2_with": added.chi2})
            pd.DataFrame(rows).to_csv(out, index=False)
            print(f"{k}-phase #{i} {time.perf_counter() - t0:.0f} s: {base['truth']} -> {base['found']}", flush=True)
    return pd.DataFrame(rows)


def analyse(d: pd.DataFrame) -> None:
    pats = d.groupby(["k", "i"]).first().reset_index()
    exact = [set(str(r.found).split(";")) == set(str(r.truth).split(";")) for r in pats.itertuples()]
    print("found phases exactly the true ones:", pats.assign(exact=exact).groupby("k")["exact"].agg(["mean", "size"]))
    true = d["true"].astype(bool)
    drop = d[d["kind"] == "drop"]
    ratio = drop["chi2_with"] / drop["chi2"]
    for t in (1.05, 1.2, 1.5):
        print(f"drop where χ² without / with < {t}: {int(((ratio < t) & true[drop.index]).sum())} true and "
              f"{int(((ratio < t) & ~true[drop.index]).sum())} of {int((~true[drop.index]).sum())} spurious phases")
    swap = d[d["kind"] == "swap"].assign(gain=lambda t: 1 - t["chi2_with"] / t["chi2"])
    best = swap.sort_values("gain", ascending=False).groupby(["k", "i", "replaced"]).head(1)
    for t in (0.02, 0.1, 0.2):
        a = best[best["gain"] > t]
        rt, nt = a["replaced_true"].astype(bool), a["true"].astype(bool)
        print(f"best swap where gain > {t}: fixes {int((~rt & nt).sum())}, replaces a true phase "
              f"{int(rt.sum())}, spurious for spurious {int((~rt & ~nt).sum())}")
    add = d[d["kind"] == "add"].assign(gain=lambda t: 1 - t["chi2_with"] / t["chi2"])
    print(f"add: {int(add['true'].astype(bool).sum())} true of {len(add)} candidates; gains of the false ones: "
          f"median {add.loc[~add['true'].astype(bool), 'gain'].median():.3f}, max {add['gain'].max():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n2", type=int, default=30)
    parser.add_argument("--n3", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(".cache/probe_scan_mixtures.csv"))
    parser.add_argument("--analyse", type=Path, default=None, help="summarise a CSV written before")
    args = parser.parse_args()
    if args.analyse:
        analyse(pd.read_csv(args.analyse))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    analyse(collect(args.n2, args.n3, args.out))


if __name__ == "__main__":
    main()
