"""The ``eacnn`` command line, on the same dataclasses as the notebooks.

    eacnn simulate STRUCTURE.cif [--wavelength Cu|Å] [--plot out.png] [--json]   the 140-bin pattern of a structure
    eacnn build [--profile P] [--set KEY=VALUE]...          build (or load) the cached data set
    eacnn train [--profile P] [--set KEY=VALUE]... [--run-dir D] [--keep-epochs]   train; resumes D
    eacnn search PATTERN... [--database D]... [--wavelength Cu|Å] [--elements Mn,O] [--top N] [--rerank N]
                 [--phases auto|N] [--plot fit.pdf] [--json]   identify patterns and their phases (files, folders, globs)
    eacnn database build SOURCE... --out DIR [--checkpoint C]   save a search database
    eacnn book [--profile smoke|cpu|paper]                   execute every notebook and render the book

Every argument and every file named on the command line is checked before torch, mace or any data set is loaded.
Bad input exits with code 2 and one line that names the value and the file; Ctrl-C exits with 130 and one line,
leaving no partial output (outputs are written to a temporary file, then renamed). Library warnings are silenced
here, on the command path only (``-v`` shows them; ``import eacnn`` sets no filter), and with ``--json`` stdout
holds the JSON document alone (whatever a library prints while loading goes to stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import logging
import math
import os
import signal
import sys
import warnings
from pathlib import Path

from eacnn.config import SearchConfig
from eacnn.errors import EACNNError

__all__ = ["main", "build_parser"]

#: Formats ``--plot`` writes, chosen by the file name's extension.
FIGURE_FORMATS = ("png", "pdf", "svg")
#: Most candidates ``--rerank`` refines (each costs a grid of ~100 profiled patterns).
MAX_RERANK = 1000
#: ``--rerank``'s default: the search's own depth (:class:`eacnn.config.SearchConfig`, a light import)
DEFAULT_RERANK = SearchConfig().rerank_depth
#: Exit codes: bad input, interrupted by Ctrl-C (128 + SIGINT), out of memory or a broken pipe.
EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_FAILED = 2, 130, 1


# ---------------------------------------------------------------------------------------------------------------
# Argument types: each turns the text into a value or says what is wrong with it (argparse adds the flag's name)
# ---------------------------------------------------------------------------------------------------------------
def _whole(minimum: int, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"expected a whole number {bounds}, got {text!r}")
        return value

    return parse


def _phases(text: str):
    """``auto`` or a whole number of phases from 1 to 4."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= 4:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number of phases from 1 to 4, got {text!r}")
    return value


def _b_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number of Å² >= 0, got {text!r}")
    return value


def _wavelength(text: str) -> float:
    from eacnn.measured.io import resolve_wavelength  # numpy only

    try:
        return resolve_wavelength(text)
    except EACNNError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _elements(text: str) -> list[str]:
    from eacnn.datasets.structures import normalize_elements  # pandas and pymatgen's periodic table, no torch

    try:
        return normalize_elements(text)
    except EACNNError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _writable(path: Path, text: str) -> Path:
    """``path`` if a file can be created there: not a folder, and its nearest existing parent a writable folder."""
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r} cannot be created: the folder {parent} is not writable")
    return path


def _figure(text: str) -> Path:
    path = Path(text)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the file name must end in {', '.join('.' + f for f in FIGURE_FORMATS)} (the format "
            f"written), not {path.suffix or 'no extension'!r}"
        )
    return _writable(path, text)


def _output(text: str) -> Path:
    return _writable(Path(text), text)


def _database_out(text: str) -> Path:
    """--out of `database build`: a new or empty folder, or an eacnn database to replace (nothing else is ever
    replaced: :func:`eacnn.paths.output_folder`)."""
    from eacnn.paths import output_folder

    try:
        return output_folder(text)
    except EACNNError as err:
        raise argparse.ArgumentTypeError(str(err).replace(f"--out {text!r} ", f"{text!r} ")) from None


def _run_dir(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a run folder")
    return path if path.exists() else _writable(path, text)


# ---------------------------------------------------------------------------------------------------------------
# Files named on the command line, checked before anything heavy is imported
# ---------------------------------------------------------------------------------------------------------------
def _database_sources(sources: list[str] | None) -> list[str]:
    """The ``--database`` values, each 'embedded', a folder holding CIF files (searched recursively; ``.cif`` or
    ``.cif.gz``, any case) or a zip/tar archive of them (as COD distributes them); repeats dropped."""
    from eacnn.datasets.structures import cif_files, is_cif_archive

    out = []
    for source in sources or ["embedded"]:
        if source.startswith("mp-api"):  # all of Materials Project: the user's key, checked before any work
            from eacnn.datasets.mp import resolve_api_key
            from eacnn.retrieval.database import mp_hull

            mp_hull(source)
            resolve_api_key()
        elif source != "embedded":
            folder = Path(source)
            if is_cif_archive(folder):
                pass  # read streaming at build time; unreadable members are reported, never fatal
            elif not folder.is_dir():
                what = "a file, not a zip/tar archive" if folder.exists() else "not there"
                raise EACNNError(f"--database {source!r}: give 'embedded', a folder of CIF files or a zip/tar "
                                 f"archive of them ({source} is {what})")
            elif not cif_files(folder):
                raise EACNNError(f"--database {source!r}: the folder holds no .cif file (nor a pymatgen .json structure; searched recursively)")
        if source not in out:
            out.append(source)
    return out


def _checkpoint_path(given: str | None) -> Path:
    """The checkpoint to load: it exists and passes its SHA-256 (shipped) or zip CRC check."""
    from eacnn.errors import CheckpointError
    from eacnn.integrity import verify_file
    from eacnn.training.checkpoint import DEFAULT_CHECKPOINT  # torch is imported only when a checkpoint is read

    path = Path(given) if given else DEFAULT_CHECKPOINT
    if path.is_dir():
        raise CheckpointError(f"--checkpoint {given!r} is a folder; give a checkpoint file such as its best.pt")
    if not path.is_file():
        raise CheckpointError(f"--checkpoint: no checkpoint file at {path}")
    verify_file(path, error=CheckpointError)
    return path


@contextlib.contextmanager
def _about(subject):
    """Name ``subject`` (the file being processed) in any eacnn error raised inside that does not name it yet."""
    try:
        yield
    except EACNNError as err:
        if str(subject) in str(err):
            raise
        raise type(err)(f"{subject}: {err}") from err


def _save_figure(fig, path: Path) -> Path:
    """Write ``fig`` in the format of ``path``'s extension, atomically (no partial file, even on Ctrl-C)."""
    from eacnn.paths import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lower().lstrip("."), dpi=150, bbox_inches="tight")
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:
        raise EACNNError(f"--plot {str(path)!r}: cannot write it ({err.strerror or err})") from None
    return path


# ---------------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------------
def _cmd_simulate(args: argparse.Namespace) -> int:
    from eacnn.config import XRDConfig
    from eacnn.datasets.structures import read_cif
    from eacnn.physics.xrd import XRDSimulator

    cfg = XRDConfig(b_factor=args.b_factor, **({"wavelength": args.wavelength} if args.wavelength else {}))
    structure = read_cif(args.structure)  # names the file in its errors; refuses overlapping atoms
    sim = XRDSimulator(cfg)
    with _about(args.structure):
        pattern = sim.get_pattern(structure)
        vector = sim.vector(structure)
    written = None
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        from eacnn.book.plots import plot_sticks, plot_vector

        ax = plot_vector(vector, config=cfg, color="k", label="140-bin model input")
        plot_sticks(pattern.two_theta, pattern.intensity / 100, ax=ax, color="C0", label="reflections",
                    hkls=pattern.hkls, annotate=6)
        ax.legend(fontsize=8)
        ax.set_title(structure.composition.reduced_formula)
        written = _save_figure(ax.figure, args.plot)
    if args.json:
        print(json.dumps({
            "structure": str(args.structure), "formula": structure.composition.reduced_formula,
            "wavelength": cfg.wavelength,
            "two_theta_bin_centers": cfg.bin_centers().round(3).tolist(),
            "vector": [round(float(v), 6) for v in vector],
            "peaks": [{"two_theta": round(float(t), 4), "intensity": round(float(i), 3), "d": round(float(d), 5),
                       "hkl": [list(f["hkl"]) for f in h]}
                      for t, i, d, h in zip(pattern.two_theta, pattern.intensity, pattern.d_hkls, pattern.hkls)],
            **({"plot": str(written)} if written else {}),
        }))
    else:
        print(f"{structure.composition.reduced_formula}: {len(pattern)} peaks in {cfg.two_theta_min}–"
              f"{cfg.two_theta_max}° 2θ at λ = {cfg.wavelength} Å")
        print(f"{'2θ (°)':>9} {'d (Å)':>8} {'I (%)':>7}  hkl")
        for t, i, d, h in zip(pattern.two_theta, pattern.intensity, pattern.d_hkls, pattern.hkls):
            if i >= 1.0:
                print(f"{t:9.3f} {d:8.4f} {i:7.1f}  {' '.join(''.join(map(str, f['hkl'])) for f in h)}")
    if written:
        print(f"plot written to {written}", file=sys.stderr)
    return 0


def _parse_overrides(pairs: list[str]) -> dict:
    """``["model.kind=paper", "train.epochs=3"]`` -> {"model.kind": "paper", "train.epochs": 3} (JSON values)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EACNNError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _config(args: argparse.Namespace):
    from eacnn.config import Config

    return Config.from_profile(args.profile).replace(**_parse_overrides(args.set))


def _cmd_build(args: argparse.Namespace) -> int:
    cfg = _config(args)  # overrides checked before the data set code is imported
    from eacnn.datasets.dataset import build_dataset

    ds = build_dataset(cfg)
    counts = {s: len(ds.indices(s)) for s in ("train", "val", "test")}
    print(f"{len(ds):,} structures {counts}; {len(ds.skipped)} skipped; cache {ds.cache_path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from eacnn.datasets.dataset import build_dataset
    from eacnn.training.loop import fit

    ds = build_dataset(cfg)
    if args.classifier:
        from eacnn.training.classifier import ClassifierConfig, fit_classifier

        out = Path(args.classifier)
        _, history = fit_classifier(cfg, ds, ClassifierConfig(epochs=cfg.train.epochs), path=out)
        best = history.loc[history["val_score"].idxmax()]
        print(f"space-group classifier: best epoch {int(best.epoch)}, validation accuracy {100 * best.val_acc:.2f} % "
              f"(perturbed {100 * best.val_acc_perturbed:.2f} %); checkpoint {out}")
        return 0
    result = fit(cfg, ds, run_dir=args.run_dir, resume=not args.fresh, keep_epochs=args.keep_epochs)
    print(f"best validation Top-1 {100 * result.best_top1:.2f} % (selection score {100 * result.best_score:.2f} %); "
          f"checkpoint {result.best_path}")
    return 0


#: File endings ``eacnn search FOLDER`` reads (each optionally followed by .gz).
PATTERN_SUFFIXES = (".xy", ".xye", ".txt", ".csv", ".dat", ".asc", ".sse", ".xrdml", ".ras")


def _is_pattern_file(path: Path) -> bool:
    """A file a folder search reads: a pattern ending, not a README or LICENSE beside the data."""
    name = path.name.lower()
    if name.startswith(("readme", "license", "licence")):
        return False
    name = name[:-3] if name.endswith(".gz") else name
    return name.endswith(PATTERN_SUFFIXES)


def _pattern_files(items: list[str]) -> list[Path]:
    """The patterns named on the command line: files, folders (every pattern file inside, sorted) and glob
    patterns, in the order given, each once."""
    import glob

    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and _is_pattern_file(p))
            if not found:
                raise EACNNError(f"{item!r} is a folder with no pattern file (.xy, .xye, .txt, .csv, .dat, .asc, "
                                 f".sse, .xrdml, optionally .gz)")
        elif any(ch in item for ch in "*?[") and not path.exists():
            found = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not found:
                raise EACNNError(f"{item!r} matches no file")
        else:
            found = [path]  # read_pattern names a missing or unreadable file itself
        out += [p for p in found if p not in out]
    return out


def _saved_databases(given: list) -> list:
    """The --database values that are saved database folders (they hold a manifest), as given."""
    return [s for s in given if (Path(s) / "manifest.json").is_file()]


def _early_grid(args: argparse.Namespace):
    """The grid the search will read patterns on, where it is known without loading anything heavy: a saved
    database's (its manifest), or the shipped model's (:class:`eacnn.config.XRDConfig`'s defaults) when no other
    checkpoint is given; None otherwise (the grid is then read from the model, and patterns are checked after)."""
    from eacnn.config import XRDConfig

    saved = _saved_databases(args.database or [])
    if saved:
        try:
            manifest = json.loads((Path(saved[0]) / "manifest.json").read_text())
        except (OSError, ValueError):
            return None  # opening the database reports it
        return XRDConfig(**manifest["xrd"]) if isinstance(manifest.get("xrd"), dict) else None
    return None if args.checkpoint else XRDConfig()


def _open_database(args: argparse.Namespace, checkpoint: Path):
    """A saved database folder given with --database, or the (cached) database of the sources for the model."""
    from eacnn.retrieval.database import default_database, file_sha256, open_database

    given = args.database or ["embedded"]
    saved = _saved_databases(given)
    if saved:
        if len(given) > 1:
            raise EACNNError(f"--database {saved[0]!r} is a saved database; it cannot be combined with other "
                             f"sources (build one database of them all with `eacnn database build`)")
        db = open_database(saved[0])
        if args.checkpoint and db.manifest["checkpoint_sha256"] != file_sha256(checkpoint):
            raise EACNNError(f"--database {saved[0]!r} was built with another model than --checkpoint "
                             f"{args.checkpoint!r}; drop --checkpoint or build the database with it")
        return db
    return default_database(_database_sources(given), checkpoint, progress=not args.json)


DATABASE_NOTE = ("the embedded set is MP-20's 18,093 structures of at most 20 atoms per cell; a phase outside it "
                 "(most minerals, large cells, other polymorphs) is found only in a database that holds it: "
                 "`eacnn database build SOURCE --out DIR` from CIF folders or COD archives")
VERDICT_MEANS = ("'match': the best candidate's score clears the calibrated threshold and stands out from the best "
                 "candidate of another phase by the calibrated margin (verdict_basis 'score'), or, where the best "
                 "candidates were fitted to the scan itself (verdict_basis 'scan'), as scan_fit.means says; 'no "
                 "confident match': it does not, and no name in this answer is asserted")
SCAN_FIT_MEANS = ("the best refined candidates fitted to the scan itself at its own resolution (Kα1 + Kα2, zero offset "
                  "and displacement, the symmetry-allowed cell, TCH widths, preferred orientation, a Chebyshev "
                  "background, weighted by counting statistics): chi2 is the reduced χ² (about 1 for a fit to within "
                  "the noise), rwp_net the background-subtracted weighted profile R, unexplained the share of the "
                  "net intensity left in significant positive residuals; margin is ln χ² of the best fitted other "
                  "phase less the answer's. With a scan fit the verdict reads it: the fit's rule says 'match' when the answer's "
                  "statistic is at most limit and its margin at least margin_min, combined with the binned score's "
                  "calibrated verdict as combined_with_binned_verdict says ('scan': the fit's rule alone; 'and': both; "
                  "'or': either); chosen on validation scans")


SCAN_PHASES_MEANS = ("the named phases refined together on the scan itself at its own resolution (per phase a scale, the "
                     "symmetry-allowed cell and a size width; shared zero offset, displacement, Caglioti widths, Kα2 "
                     "ratio and background); weight_fraction_scan is Hill & Howard's from those scales, "
                     "weight_fraction_scan_error its statistical standard error (counting statistics and misfit only: "
                     "absorption contrast, texture and amorphous content are not in it)")


def _rounded(value: float, digits: int = 4):
    """A float for JSON: rounded, or None where it is not finite."""
    return round(float(value), digits) if math.isfinite(float(value)) else None


#: the scan fit's verdict: (statistic, its limit, the ln χ² margin, how it meets the binned verdict); chosen
#: on validation scans (scripts/select_scanfit.py)
SCAN_RULE = (SearchConfig().scan_statistic, SearchConfig().scan_limit, SearchConfig().scan_margin,
             SearchConfig().scan_combine)


CONFIDENT_MEANS = ("a phase is confident only when the verdict is 'match', the first phase is the verdict's best "
                   "candidate, and the phase passed the mixture's stopping rules; otherwise it is a suggestion")


def ambiguity_note(candidates: list[dict], coverage: float) -> str:
    """What would separate phases the pattern cannot tell apart (``candidates``: formula, spacegroup each): their
    chemistry when their compositions differ (``--elements``), a wider or finer scan when they are polymorphs."""
    from pymatgen.core import Composition  # the database is open by now: pymatgen is loaded

    sets = [{el.symbol for el in Composition(c["formula"]).elements} for c in candidates]
    notes = []
    if len({frozenset(e) for e in sets}) > 1:
        common = set.intersection(*sets)
        differ = sorted(set.union(*sets) - common)
        notes.append(f"they differ in composition ({', '.join(differ)}): only the sample's chemistry decides; give "
                     f"the elements you know are present with --elements")
    formulas = [c["formula"] for c in candidates]
    if len(set(formulas)) < len(formulas) or len({frozenset(e) for e in sets}) == 1:
        notes.append("some are polymorphs or variants of one composition: a scan over a wider 2θ range, or slower "
                     "for weak superstructure peaks, would decide")
    if coverage < 0.95:
        notes.append(f"the scan covers {100 * coverage:.0f} % of 10–80°: a wider scan would add the peaks that "
                     f"tell them apart")
    return "; ".join(notes) if notes else "a scan with more counts or a wider 2θ range"


def phase_confident(verdict: str, results: list[dict], phases: list, i: int) -> bool:
    """One calibrated test for the whole answer: no phase is confident without a "match" verdict, the first phase
    only when it is the verdict's own best candidate, and every phase only when it and the phases before it passed
    the mixture's stopping rules."""
    if verdict != "match" or not results or not phases or phases[0].id != results[0]["id"]:
        return False
    return all(bool(ph.confident) for ph in phases[: i + 1])


def _identify(path: Path, args: argparse.Namespace, db, scan) -> dict:
    """Preprocess and identify one pattern (``scan``, read from ``path``); the answer as a JSON-ready dict."""
    from eacnn.config import XRDConfig
    from eacnn.measured import to_model_grid
    from eacnn.retrieval.identify import identify

    xrd = XRDConfig(**db.manifest["xrd"]) if "xrd" in db.manifest else XRDConfig()
    with _about(path):
        grid = to_model_grid(scan, xrd)
        result = identify(grid.vector, grid.covered, db, top=args.top, elements=args.elements, rerank=args.rerank,
                          xrd=xrd, scan=scan.as_scan() if args.scan_fits else None, scan_fits=args.scan_fits)
    hits = result.hits
    answer = {
        "pattern": str(path), "wavelength": grid.wavelength, "coverage": round(float(grid.coverage), 4),
        "verdict": result.verdict, "verdict_basis": result.verdict_basis,
        "score": round(result.score, 4), "score_name": result.score_name, "threshold": round(result.threshold, 4),
        **({"margin": round(result.margin, 4), "margin_threshold": round(result.margin_threshold, 4)}
           if result.margin == result.margin else {}),
        "candidates": len(db),
        "database": {"sources": [str(x) for x in db.manifest.get("sources", [])], "folder": str(db.folder),
                     "note": DATABASE_NOTE},
        **({"settings_differ": list(result.settings_differ),
            "settings_note": "the verdict's thresholds were calibrated with other search settings (calibrated -> "
                             "used); the verdict is approximate"} if result.settings_differ else {}),
        "results": [{"rank": int(r.rank), "id": r.id, "formula": r.formula, "spacegroup": r.spacegroup,
                     "similarity": round(float(r.similarity), 4), "scale": round(float(r.scale), 3),
                     **({"agreement": round(float(r.agreement), 4), "strain": round(float(r.strain), 4),
                         "zero_shift": round(float(r.zero_shift), 3), "width": round(float(r.width), 3),
                         "anisotropy": round(float(getattr(r, "anisotropy", 0.0)), 4),
                         "score": round(float(r.score), 4)}
                        if "agreement" in hits and r.agreement == r.agreement else {}),
                     **({"scan_fit": result.scan_fits[int(r.row)].to_dict()} if int(r.row) in result.scan_fits else {})}
                    for r in hits.itertuples()],
    }
    if result.scan_fits:
        answer["scan_fit"] = {"fitted": len(result.scan_fits),
                              "margin": (round(result.scan_margin, 4) if math.isfinite(result.scan_margin)
                                         else None if math.isnan(result.scan_margin) else "inf"),
                              "statistic": SCAN_RULE[0], "limit": SCAN_RULE[1], "margin_min": SCAN_RULE[2],
                              "combined_with_binned_verdict": SCAN_RULE[3],
                              "means": SCAN_FIT_MEANS}
    answer["verdict_means"] = VERDICT_MEANS
    if len(result.ambiguous):
        answer["ambiguous_set"] = [{"id": r.id, "formula": r.formula, "spacegroup": r.spacegroup,
                                    "score": round(float(getattr(r, result.score_name)), 4)}
                                   for r in result.ambiguous.itertuples()]
        answer["what_would_decide"] = ambiguity_note(answer["ambiguous_set"], grid.coverage)
    if args.phases == 1:  # a single-phase answer: the top candidate, confident when the verdict is a match
        answer["phases"] = [{k: answer["results"][0][k] for k in ("id", "formula", "spacegroup")}
                            | {"weight_fraction": 1.0, "confident": result.verdict == "match"}] if len(hits) else []
        return answer | {"_grid": grid, "_hits": hits, "_mixture": None}
    from eacnn.measured.mixtures import identify_phases, refine_on_scan

    with _about(path):
        mix = identify_phases(grid.vector, grid.covered, db, phases=args.phases, elements=args.elements, xrd=xrd)
        refined = refine_on_scan(mix, scan.as_scan(), db, xrd=xrd) if args.scan_fits and len(mix.phases) else None
    answer["phases"] = [{"id": ph.id, "formula": ph.formula, "spacegroup": ph.spacegroup,
                         "weight_fraction": round(float(ph.weight_fraction), 4),
                         "weight_fraction_note": "approximate (RIR-style from fitted scales and Z·M·V)",
                         "intensity_fraction": round(float(ph.intensity_fraction), 4),
                         "strain": round(float(ph.strain), 4), "zero_shift": round(float(ph.zero_shift), 3),
                         **({"weight_fraction_scan": _rounded(refined.weight_fractions[i]),
                             "weight_fraction_scan_error": _rounded(refined.weight_errors[i])} if refined else {}),
                         "confident": phase_confident(result.verdict, answer["results"], mix.phases, i)}
                        for i, ph in enumerate(mix.phases)]
    if refined:
        answer["scan_phases"] = refined.to_dict() | {"means": SCAN_PHASES_MEANS}
    answer["confident_means"] = CONFIDENT_MEANS
    answer["explained"] = round(float(mix.explained), 4)
    answer["rwp"] = round(float(mix.rwp), 4)
    answer["stop_reason"] = mix.stop_reason
    return answer | {"_grid": grid, "_hits": hits, "_mixture": mix}


def _rule_text() -> str:
    """The re-ranking rule in words (:data:`eacnn.retrieval.identify.RERANK`)."""
    from eacnn.retrieval.identify import RERANK

    from eacnn.retrieval.identify import ANISOTROPY_PENALTY

    kind, value = RERANK
    prior = f", less {ANISOTROPY_PENALTY:g} per 1 % of anisotropic strain"
    if kind == "linear":
        return f"{value:g} × refined agreement + {1 - value:g} × the model's similarity{prior}"
    return f"the model's similarity − {value:g} × ln(1 − agreement²), the log-likelihood of the refined fit{prior}"


def _print_answer(answer: dict, rerank: int) -> None:
    hits = answer["_hits"]
    n = answer["candidates"]
    print(f"{answer['pattern']}: coverage of 10–80° {100 * answer['coverage']:.0f} %; {n:,} "
          f"candidate{'s' if n != 1 else ''}")
    print(f"database: {' + '.join(answer['database']['sources']) or '?'} ({answer['database']['folder']})")
    cols = ["rank", "id", "formula", "spacegroup", "similarity", "scale"]
    if "agreement" in hits:
        cols += ["agreement", "strain", "zero_shift"] + (["anisotropy"] if "anisotropy" in hits else []) + ["score"]
        from eacnn.retrieval.identify import CELL_FITS

        print(f"read at lattice scales 0.96–1.04; top {rerank} refined (lattice scale, zero shift, width, then the "
              f"whole cell of the best {min(CELL_FITS, rerank)}, where the database holds their reflections) and "
              f"re-ranked by score ({_rule_text()})")
    if "scan_chi2" in hits and hits["scan_chi2"].notna().any():
        hits = hits.assign(chi2=hits["scan_chi2"].map(lambda v: f"{v:.2f}" if v == v else "-"),
                           rwp_net=hits["scan_rwp_net"].map(lambda v: f"{v:.3f}" if v == v else "-"))
        cols += ["chi2", "rwp_net"]
        reranked = " and re-ranked by that fit" if SearchConfig().scan_weight else ""
        print(f"the best {answer['scan_fit']['fitted']} also fitted to the scan itself at its own resolution"
              f"{reranked} (chi2: reduced χ², ~1 within the noise; rwp_net: background-subtracted Rwp)")
    print(hits[cols].to_string(index=False, float_format="%.4f"))
    margin = (f", margin over the best other phase {answer['margin']:.4f} (needs {answer['margin_threshold']:.4f})"
              if "margin" in answer else "")
    if answer.get("ambiguous_set"):
        names = ", ".join(f"{c['formula']} ({c['spacegroup']})" for c in answer["ambiguous_set"])
        print(f"the pattern cannot tell these apart (refined scores within the calibrated margin): {names}; "
              f"{answer['what_would_decide']}")
    if answer.get("settings_differ"):
        print(f"note: the verdict's thresholds were calibrated with other settings ("
              f"{'; '.join(answer['settings_differ'])}, calibrated -> used): the verdict is approximate")
    scope = "single-phase verdict" if answer.get("_mixture") is not None else "verdict"
    if answer.get("verdict_basis") == "scan":
        fit, top = answer["scan_fit"], answer["results"][0].get("scan_fit", {})
        value = f"{top[fit['statistic']]:.3f}" if top else "no fit"
        m = fit["margin"]
        m_text = "no other phase fitted" if m == "inf" else "n/a" if m is None else f"{m:.2f}"
        also = {"scan": "", "and": "; and the binned score's verdict too",
                "or": "; or the binned score's calibrated verdict"}[fit["combined_with_binned_verdict"]]
        print(f"{scope}: {answer['verdict']} from the fit to the scan (top-1 {fit['statistic']} {value}, needs at "
              f"most {fit['limit']:g}; ln χ² margin over the best other fitted phase {m_text}, needs "
              f"{fit['margin_min']:g}{also}; chosen on validation scans with the phase present and absent)")
    else:
        print(f"{scope}: {answer['verdict']} (top-1 {answer['score_name']} {answer['score']:.4f}, needs "
              f"{answer['threshold']:.4f}{margin}; calibrated on validation structures asked with their phase "
              f"present and absent)")
    if answer.get("_mixture") is not None:
        print(f"phases of the pattern ({len(answer['phases'])}; {100 * answer['explained']:.0f} % of the intensity "
              f"explained, Rwp {answer['rwp']:.3f}; stopped: {answer['stop_reason']}); each found by a profile fit to "
              f"what the phases before it leave ({CONFIDENT_MEANS}):")
        if answer["verdict"] != "match":
            print("  no phase is confident: the single-phase verdict is 'no confident match', so these are suggestions")
        if answer.get("scan_phases"):
            sp = answer["scan_phases"]
            print(f"  refined together on the scan itself: Rwp′ {sp['rwp_net']:.3f}, χ² {sp['chi2']:.2f} (weight "
                  f"fractions on the scan ± their statistical errors below)")
        for ph in answer["phases"]:
            flag = "" if ph["confident"] else "  (not confident)"
            scan = (f"; on the scan {100 * ph['weight_fraction_scan']:.1f} ± {100 * ph['weight_fraction_scan_error']:.1f}"
                    if ph.get("weight_fraction_scan") is not None and ph.get("weight_fraction_scan_error") is not None
                    else "")
            print(f"  {ph['id']:<14} {ph['formula']:<12} {ph['spacegroup']:<10} ~{100 * ph['weight_fraction']:.0f} wt % "
                  f"(approximate{scan}), strain {ph['strain']:+.4f}, zero shift {ph['zero_shift']:+.2f}°{flag}")


def _cmd_search(args: argparse.Namespace) -> int:
    # 1. everything named on the command line, before anything heavy is read (flags were checked by the parser)
    files = _pattern_files(args.pattern)
    checkpoint = _checkpoint_path(args.checkpoint)
    if args.plot and len(files) > 1:
        raise EACNNError("--plot draws one pattern: give a single pattern file with it")
    from eacnn.measured import read_pattern  # light: numpy only; every file is read before any database is built

    scans: dict[Path, object] = {}
    for path in files:
        try:
            with _about(path):
                scans[path] = read_pattern(path, wavelength=args.wavelength, scan=args.scan)
        except EACNNError as err:
            if len(files) == 1:
                raise
            scans[path] = err  # reported in its turn below; the other patterns are still answered

    # each pattern onto the search's grid too, where the grid is known before loading (a pattern the search cannot
    # use, too sparse or covering too little of the grid, fails in a second, not after a database build)
    xrd = _early_grid(args)
    if xrd is not None:
        from eacnn.measured import to_model_grid

        for path in files:
            if not isinstance(scans[path], EACNNError):
                try:
                    with _about(path):
                        to_model_grid(scans[path], xrd)
                except EACNNError as err:
                    if len(files) == 1:
                        raise
                    scans[path] = err

    # 2. the database: opened memory-mapped when it was built before (no torch), else built once and cached
    with contextlib.redirect_stdout(sys.stderr):
        db = _open_database(args, checkpoint)

    # 3. each pattern: one JSON object (a line each for several patterns), or a table
    failed = 0
    for path in files:
        try:
            if isinstance(scans[path], EACNNError):
                raise scans[path]
            answer = _identify(path, args, db, scans[path])
        except EACNNError as err:
            if len(files) == 1:
                raise
            failed += 1
            print(f"eacnn search: error: {err}", file=sys.stderr)
            if args.json:
                print(json.dumps({"pattern": str(path), "error": str(err)}), flush=True)
            continue
        written = None
        if args.plot:
            with contextlib.redirect_stdout(sys.stderr):
                written = _search_plot(answer["_grid"], answer["_hits"], db, args.plot, answer["_mixture"])
        if args.json:
            public = {k: v for k, v in answer.items() if not k.startswith("_")}
            print(json.dumps(public | ({"plot": str(written)} if written else {})), flush=True)
        else:
            _print_answer(answer, args.rerank)
        if written:
            print(f"plot written to {written}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0


def _cmd_database(args: argparse.Namespace) -> int:
    out = args.out  # checked by the parser: new, empty or an eacnn database (nothing else is replaced)
    sources = _database_sources(args.source)
    for source in sources:
        if source != "embedded" and out in (Path(source).resolve(), *Path(source).resolve().parents):
            raise EACNNError(f"--out {args.out!r} is the source folder {source!r} or holds it; name a new folder")
    checkpoint = _checkpoint_path(args.checkpoint)
    if args.cluster:
        from eacnn.datasets.cluster import check_address

        check_address(args.cluster)
    with contextlib.redirect_stdout(sys.stderr):
        from eacnn.retrieval.database import build_database, open_database

        folder = build_database(sources, out, checkpoint, progress=True, cluster=args.cluster, dedupe=args.dedupe)
        db = open_database(folder)
    index = db.manifest["index"]
    extra = (f", IVF index (nprobe {index['nprobe']} of {index['nlist']} lists, recall@10 "
             f"{index['recall_at_10']:.3f}" + (f", recall@30 of the shortlist {index['recall_at_30']:.3f}"
             if "recall_at_30" in index else "") + ")" if index["kind"] == "ivf" else ", exact search")
    skipped = db.manifest.get("skipped", 0)
    note = (f"; {skipped:,} structure(s) of the sources could not be used, each named with its reason in "
            f"{folder / 'skipped.csv'}" if skipped else "")
    print(f"database of {len(db):,} structures from {', '.join(sources)} written to {folder}{extra}; "
          f"verdict threshold {db.threshold:.4f}{note}")
    return 0


def _search_plot(grid, hits, db, path: Path, mixture=None) -> Path:
    """The measured pattern over the top hits' simulated patterns, written to ``path`` (its extension's format);
    with a mixture (``--phases``), the measured pattern, the sum of the fits, each phase and the residual."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eacnn.book.plots import plot_mixture, plot_vector

    if mixture is not None:
        axes = plot_mixture(mixture, title=Path(grid.source).name if grid.source else None)
        fig = axes[0].figure
        try:
            return _save_figure(fig, path)
        finally:
            plt.close(fig)

    n = min(3, len(hits))
    fig, axes = plt.subplots(n + 1, 1, figsize=(7, 1.6 * (n + 1)), sharex=True, layout="constrained", squeeze=False)
    axes = axes[:, 0]
    plot_vector(grid.vector, ax=axes[0], color="k", label="measured (binned)")
    axes[0].legend(fontsize=7)
    for ax, r in zip(axes[1:], hits.itertuples()):
        plot_vector(grid.vector, ax=ax, color="0.7")
        plot_vector(db.vectors[r.row], ax=ax, color="C0", label=f"#{r.rank} {r.formula} {r.spacegroup} ({r.id})")
        ax.legend(fontsize=7)
    try:
        return _save_figure(fig, path)
    finally:
        plt.close(fig)


def _cmd_book(args: argparse.Namespace) -> int:
    from eacnn.book.build import build_book

    result = build_book(profile=args.profile, keep_going=args.keep_going)
    for nb, sec in result.timings.items():
        print(f"  {nb}: {sec:.0f} s")
    print(f"book built in {result.seconds / 60:.1f} min: {result.index_html}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------------------------------
class _Interrupt(KeyboardInterrupt):
    """Ctrl-C on the command path. A subclass on purpose: when a plain KeyboardInterrupt once leaves code that
    CPython evaluates from a string (as some extensions do while they are imported), the interpreter kills itself
    with SIGINT at exit even though the exception was caught, and the exit code is lost."""


def _interrupt(signum, frame):
    raise _Interrupt


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``eacnn search: error: argument --top: ...``, with exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_WAVELENGTH_HELP = "Å (e.g. 1.5406, 0.71073) or an anode's Kα1 line: Cu, Mo, Co, Cr, Fe, Ag, also as 'Cu Kα1' or CuKa1"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="eacnn", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) and show library warnings")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate the powder pattern of a CIF file")
    p.add_argument("structure", help="a CIF file")
    p.add_argument("--wavelength", type=_wavelength, default=None, help=_WAVELENGTH_HELP + " (default Cu Kα1)")
    p.add_argument("--b-factor", type=_b_factor, default=0.5, help="isotropic Debye–Waller B, Å² (default 0.5)")
    p.add_argument("--plot", type=_figure, help="write the pattern as a figure here (.png, .pdf or .svg)")
    p.add_argument("--json", action="store_true", help="print the vector and peaks as JSON")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("build", help="build (or load from cache) the data set of a profile")
    p.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. data.max_sites=32")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("train", help="train a model (checkpoints each epoch; resumes a run folder)")
    p.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. model.kind=paper")
    p.add_argument("--run-dir", type=_run_dir, help="run folder (default: under $EACNN_RUNS, named by config and data)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing last.pt instead of resuming")
    p.add_argument("--keep-epochs", action="store_true",
                   help="also keep each epoch's checkpoint as epoch_N.pt in the run folder (to score them afterwards)")
    p.add_argument("--classifier", metavar="FILE", type=_output,
                   help="train the space-group classifier baseline instead (train.epochs epochs) and save it to FILE")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("search", help="identify measured patterns: rank database structures by the trained model")
    p.add_argument("pattern", nargs="+",
                   help="measured patterns (.xy, .xye, .txt, .csv, .dat, .asc, .sse, .xrdml, .ras, optionally .gz), folders "
                        "of them or glob patterns; several are searched in one process (--json: one line each)")
    p.add_argument("--database", action="append",
                   help="'embedded' (default), a folder of CIF files (repeatable), or a folder written by "
                        "`eacnn database build`")
    p.add_argument("--wavelength", type=_wavelength, default=None,
                   help=_WAVELENGTH_HELP + " (default: the file's Kα1 for .xrdml, else Cu Kα1)")
    p.add_argument("--elements", type=_elements, help="only candidates made of these elements, e.g. Mn,O (any case)")
    p.add_argument("--scan", type=_whole(1), default=None, metavar="N",
                   help="for files holding several scans (.xrdml, .ras): read scan N (from 1); default: the first "
                        "completed one (aborted scans are skipped)")
    p.add_argument("--top", type=_whole(1), default=10, help="how many candidates to list (default 10)")
    p.add_argument("--rerank", type=_whole(0, MAX_RERANK), default=DEFAULT_RERANK, metavar="N",
                   help="refine the model's top N (lattice scale ±3 %%, zero shift ±0.3°, peak width, then the whole "
                        "cell of the best of them) and re-rank them by score (the model's similarity and the refined "
                        "pattern agreement, combined); the verdict is then taken from that score and its margin over "
                        f"the best other phase (default {DEFAULT_RERANK}; 0: the model's similarity alone)")
    p.add_argument("--scan-fits", type=_whole(0, 50), default=SearchConfig().scan_fits, metavar="N",
                   help="fit the best N refined candidates to the scan itself at its own resolution (Kα1 + Kα2, the "
                        "symmetry-allowed cell, widths, texture, background), re-rank them by that fit and take the "
                        f"verdict from it (default {SearchConfig().scan_fits}; 0: the verdict of the binned score)")
    p.add_argument("--phases", type=_phases, default="auto", metavar="auto|N",
                   help="name every phase of a mixture: 'auto' (default) stops when the residual holds no "
                        "significant peak or no candidate explains it (at most 4); N (2-4) goes on to N phases, "
                        "marking those past the stopping rules not confident; each phase with an approximate "
                        "weight fraction. 1: the single best phase only (about 2.5 s faster per pattern). The "
                        "ranking and verdict printed first are the single-phase answer")
    p.add_argument("--plot", type=_figure,
                   help="write a figure here (.png, .pdf or .svg): the measured pattern, the sum of the fitted "
                        "phases, each phase and the residual (with --phases 1: the top hits' simulated patterns)")
    p.add_argument("--json", action="store_true", help="print the ranked list as JSON (stdout holds only the JSON)")
    p.add_argument("--checkpoint", help="a trained checkpoint (default: the shipped one)")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("database", help="build a saved search database (embeddings, reflections, index, verdict)")
    dsub = p.add_subparsers(dest="action", required=True)
    b = dsub.add_parser("build", help="embed every structure of the sources with a model and save them")
    b.add_argument("source", nargs="+", help="'embedded', a folder of CIF files (searched recursively; .cif or .cif.gz) "
                                             "or a zip/tar archive of them, as COD distributes them; several are "
                                             "merged")
    b.add_argument("--out", type=_database_out, required=True,
                   help="the database folder to write: a new or empty folder, or an eacnn database to replace")
    b.add_argument("--checkpoint", help="a trained checkpoint (default: the shipped one)")
    b.add_argument("--cluster", metavar="ADDRESS",
                   help="build the structures' patterns and graphs on a Dask cluster: a scheduler address "
                        "(tcp://host:8786) or local:N for N local worker processes (pip install \"eacnn[cluster]\"); "
                        "the database is identical to a local build")
    b.add_argument("--dedupe", action="store_true",
                   help="keep one entry of each crystal: among entries of equal reduced formula and space group, those "
                        "pymatgen's StructureMatcher calls the same are listed in skipped.csv as duplicates")
    b.set_defaults(func=_cmd_database)

    p = sub.add_parser("book", help="execute every notebook (papermill) and render the book (Jupyter Book 1)")
    p.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    p.add_argument("--keep-going", action="store_true", help="report every Sphinx warning, not just the first")
    p.set_defaults(func=_cmd_book)
    return parser


_FAULT_ADVICE = {
    errno.ENOSPC: ("no space left on the device", "free some space or set EACNN_HOME to a larger disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or set EACNN_HOME to another disk"),
    errno.EROFS: ("read-only storage", "set EACNN_HOME to a folder you can write"),
    errno.EACCES: ("permission denied", "set EACNN_HOME to a folder you can write, or fix the permissions"),
    errno.EPERM: ("operation not permitted", "set EACNN_HOME to a folder you can write, or fix the permissions"),
}


def environment_fault(err: OSError) -> str:
    """One line for an OS error: what happened, where, and what to do."""
    what, advice = _FAULT_ADVICE.get(err.errno, (err.strerror or type(err).__name__, "check the file and retry"))
    where = f" at {err.filename}" if err.filename else ""
    return f"{what}{where}; {advice}"


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0, 2 for bad input, 130 when interrupted, 1 otherwise)."""
    name = "eacnn"
    interrupted = False
    previous = None
    with contextlib.suppress(ValueError):  # ValueError: not the main thread, where only the default handler runs
        previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help, or a bad argument (already reported in one line)
            return done.code if isinstance(done.code, int) else EXIT_BAD_INPUT
        name = f"eacnn {args.command}"
        logging.basicConfig(level=logging.INFO if args.verbose or args.command in ("book", "train", "build")
                            else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        with warnings.catch_warnings():
            if not args.verbose:  # torch, e3nn and mace warn about their own internals on every run
                warnings.simplefilter("ignore")
            return args.func(args)
    except (EACNNError, FileNotFoundError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        interrupted = True  # reported below, once the unwound frames (and their progress bars) are closed
    except BrokenPipeError:  # e.g. `eacnn simulate x.cif | head`
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except MemoryError:
        print(f"{name}: error: out of memory", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:  # the environment, not eacnn: a full disk, read-only storage, a permission
        print(f"{name}: error: {environment_fault(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        print(f"{name}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
