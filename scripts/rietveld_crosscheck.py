"""Cross-check the weight fractions of the joint scan fit against an established Rietveld engine (rietx, from the
package index; a script, not a dependency of eacnn).

    python scripts/rietveld_crosscheck.py --export .cache/crosscheck            # eacnn's environment
    python -m venv /tmp/rx && /tmp/rx/bin/pip install rietx                      # once, anywhere
    /tmp/rx/bin/python scripts/rietveld_crosscheck.py --refine .cache/crosscheck # rietx's environment
    python scripts/rietveld_crosscheck.py --collect .cache/crosscheck            # -> eacnn/data/rietveld_crosscheck.csv

``--export`` takes the Dara scans of ``eacnn/data/mixtures.csv`` (written by ``scripts/mixtures.py``) where the
search, with the elements given, named every weighed phase, and writes for each the scan as measured (two columns,
2θ at its Kα1 and counts), the CIF of every phase the search named (the reference CIF it came from, or the embedded
structure written by pymatgen) and what eacnn said (its weight fractions on the bins and on the scan, with their
errors). ``--refine`` runs rietx's staged Rietveld refinement (Bragg–Brentano Cu Kα1/Kα2, its default McCusker
plan) of those phases on each scan and writes its Hill–Howard weight fractions with their errors; it imports
nothing from eacnn, so it runs in rietx's own environment. ``--collect`` joins the three answers with the weighed
fractions, one row per phase.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export(folder: Path) -> None:
    import re

    import numpy as np
    import pandas as pd

    from eacnn.measured import read_pattern
    from eacnn.measured.mixtures import phase_structure
    from eacnn.measured.report import reduced_formula
    from eacnn.paths import DATA_DIR, MIXTURES_DIR, REFERENCE_CIFS_DARA_DIR, REFERENCE_CIFS_DIR, REFERENCE_CIFS_LA_ZR_LI_DIR
    from eacnn.retrieval.database import default_database

    db = default_database(["embedded", *map(str, (REFERENCE_CIFS_DIR, REFERENCE_CIFS_LA_ZR_LI_DIR,
                                                   REFERENCE_CIFS_DARA_DIR))], progress=False)
    rows = pd.read_csv(DATA_DIR / "mixtures.csv")
    rows = rows[(rows["kind"] == "dara") & (rows["elements"] != "any") & rows["all"]]
    ids = db.labels["material_id"].to_numpy()
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows.itertuples():
        case = folder / r.pattern
        case.mkdir(exist_ok=True)
        scan = read_pattern(MIXTURES_DIR / f"{r.pattern}.xrdml.gz")
        np.savetxt(case / "scan.xy", np.c_[scan.two_theta, scan.intensity], fmt="%.5f")
        truth = dict(zip(map(reduced_formula, (p.rsplit("_", 1)[0] for p in r.pattern.split("--")[0].split("-"))),
                         map(float, str(r.truth_weight_fractions).split(";"))))
        phases = []
        binned = list(map(float, str(r.found_weight_fractions).split(";")))
        scan_w = [tuple(map(float, v.split("±"))) for v in str(r.scan_weight_fractions).split(";")]
        for pid, formula, wb, (ws, es) in zip(str(r.found_ids).split(";"), str(r.found).split(";"), binned, scan_w):
            structure = phase_structure(db, int(np.flatnonzero(ids == pid)[0]))
            structure.to(filename=str(case / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', pid)}.cif"))
            phases.append({"id": pid, "formula": reduced_formula(formula), "cif": f"{re.sub(r'[^A-Za-z0-9_.-]', '_', pid)}.cif",
                           "weighed": truth.get(reduced_formula(formula)), "eacnn_binned": wb, "eacnn_scan": ws,
                           "eacnn_scan_error": es})
        (case / "case.json").write_text(json.dumps({"pattern": r.pattern, "wavelength": scan.wavelength,
                                                    "phases": phases}, indent=1))
        print(f"{r.pattern}: {len(phases)} phases")


def refine(folder: Path) -> None:
    import numpy as np
    import rietx as rx

    for case in sorted(p for p in folder.iterdir() if (p / "case.json").is_file()):
        info = json.loads((case / "case.json").read_text())
        xy = np.loadtxt(case / "scan.xy")
        keep = (xy[:, 0] >= 10) & (xy[:, 0] <= 80)
        data = rx.PatternData(two_theta=xy[keep, 0].tolist(), intensity=xy[keep, 1].tolist(),
                              sigma=np.sqrt(np.maximum(xy[keep, 1], 1.0)).tolist())
        phases = [rx.Structure.from_cif(str(case / p["cif"])).phases[0] for p in info["phases"]]
        out = {"status": "failed"}
        try:
            result = rx.refine(data, rx.Structure(phases=phases), rx.Instrument.bragg_brentano(radiation="CuKa"),
                               telemetry=False)
            fractions = [(q.weight_fraction, q.weight_fraction_stderr) for q in result.qpa.phases]
            out = {"status": str(result.status), "rwp": getattr(result.statistics, "rwp", None),
                   "weight_fractions": fractions}
        except Exception as err:  # a failed refinement is a row that says so, not a crash of the batch
            out["error"] = f"{type(err).__name__}: {err}"
        (case / "rietx.json").write_text(json.dumps(out, indent=1, default=str))
        print(case.name, out.get("status"), out.get("weight_fractions", out.get("error")))


def collect(folder: Path, out: Path) -> None:
    rows = []
    for case in sorted(p for p in folder.iterdir() if (p / "rietx.json").is_file()):
        info = json.loads((case / "case.json").read_text())
        rx_out = json.loads((case / "rietx.json").read_text())
        fractions = rx_out.get("weight_fractions") or [(None, None)] * len(info["phases"])
        for p, (w, e) in zip(info["phases"], fractions):
            rows.append({"pattern": info["pattern"], "phase": p["formula"], "id": p["id"], "weighed": p["weighed"],
                         "eacnn_binned": p["eacnn_binned"], "eacnn_scan": p["eacnn_scan"],
                         "eacnn_scan_error": p["eacnn_scan_error"], "rietx": w, "rietx_error": e,
                         "rietx_status": rx_out.get("status"), "rietx_rwp": rx_out.get("rwp")})
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)
    print(f"{len(rows)} phases -> {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--export", type=Path)
    mode.add_argument("--refine", type=Path)
    mode.add_argument("--collect", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "eacnn" / "data" / "rietveld_crosscheck.csv")
    args = parser.parse_args()
    if args.export:
        export(args.export)
    elif args.refine:
        refine(args.refine)
    else:
        collect(args.collect, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
