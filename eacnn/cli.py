"""The ``eacnn`` command line, on the same dataclasses as the notebooks.

    eacnn simulate STRUCTURE.cif [--plot out.png] [--json]   the 140-bin pattern of a structure
    eacnn build [--profile P] [--set KEY=VALUE]...          build (or load) the cached data set
    eacnn train [--profile P] [--set KEY=VALUE]... [--run-dir D]   train; resumes D
    eacnn book [--profile smoke|cpu|paper]                   execute every notebook and render the book
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import EACNNError

__all__ = ["main"]


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .config import XRDConfig
    from .structures import read_cif
    from .xrd import XRDSimulator

    structure = read_cif(args.structure)
    cfg = XRDConfig(wavelength=args.wavelength, b_factor=args.b_factor)
    sim = XRDSimulator(cfg)
    pattern = sim.get_pattern(structure)
    vector = sim.vector(structure)
    if args.json:
        print(json.dumps({
            "two_theta_bin_centers": cfg.bin_centers().round(3).tolist(),
            "vector": [round(float(v), 6) for v in vector],
            "peaks": [{"two_theta": round(float(t), 4), "intensity": round(float(i), 3), "d": round(float(d), 5),
                       "hkl": [list(f["hkl"]) for f in h]}
                      for t, i, d, h in zip(pattern.two_theta, pattern.intensity, pattern.d_hkls, pattern.hkls)],
        }))
    else:
        print(f"{structure.composition.reduced_formula}: {len(pattern)} peaks in {cfg.two_theta_min}–"
              f"{cfg.two_theta_max}° 2θ at λ = {cfg.wavelength} Å")
        print(f"{'2θ (°)':>9} {'d (Å)':>8} {'I (%)':>7}  hkl")
        for t, i, d, h in zip(pattern.two_theta, pattern.intensity, pattern.d_hkls, pattern.hkls):
            if i >= 1.0:
                print(f"{t:9.3f} {d:8.4f} {i:7.1f}  {' '.join(''.join(map(str, f['hkl'])) for f in h)}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        from .plots import plot_sticks, plot_vector, save_figure

        ax = plot_vector(vector, config=cfg, color="k", label="140-bin model input")
        plot_sticks(pattern.two_theta, pattern.intensity / 100, ax=ax, color="C0", label="reflections",
                    hkls=pattern.hkls, annotate=6)
        ax.legend(fontsize=8)
        ax.set_title(structure.composition.reduced_formula)
        from pathlib import Path

        out = Path(args.plot)
        print(f"plot written to {save_figure(ax, out.stem, folder=out.parent or Path('.'))}", file=sys.stderr)
    return 0


def _parse_overrides(pairs: list[str]) -> dict:
    """``["model.kind=paper", "train.epochs=3"]`` -> {"model.kind": "paper", "train.epochs": 3} (JSON values)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise EACNNError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _cmd_build(args: argparse.Namespace) -> int:
    from .config import Config
    from .dataset import build_dataset

    cfg = Config.from_profile(args.profile).replace(**_parse_overrides(args.set))
    ds = build_dataset(cfg)
    counts = {s: len(ds.indices(s)) for s in ("train", "val", "test")}
    print(f"{len(ds):,} structures {counts}; {len(ds.skipped)} skipped; cache {ds.cache_path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import Config
    from .dataset import build_dataset
    from .train import fit

    cfg = Config.from_profile(args.profile).replace(**_parse_overrides(args.set))
    ds = build_dataset(cfg)
    if args.classifier:
        from .classifier import ClassifierConfig, fit_classifier

        out = Path(args.classifier)
        _, history = fit_classifier(cfg, ds, ClassifierConfig(epochs=cfg.train.epochs), path=out)
        best = history.loc[history["val_score"].idxmax()]
        print(f"space-group classifier: best epoch {int(best.epoch)}, validation accuracy {100 * best.val_acc:.2f} % "
              f"(perturbed {100 * best.val_acc_perturbed:.2f} %); checkpoint {out}")
        return 0
    result = fit(cfg, ds, run_dir=args.run_dir, resume=not args.fresh)
    print(f"best validation Top-1 {100 * result.best_top1:.2f} % (selection score {100 * result.best_score:.2f} %); "
          f"checkpoint {result.best_path}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, model_from_checkpoint
    from .config import Config
    from .measured import read_pattern, to_model_grid
    from .search import calibrate, load_database, rank, refine

    torch.set_flush_denormal(True)
    grid = to_model_grid(read_pattern(args.pattern, wavelength=args.wavelength))
    ckpt = load_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT)
    model = model_from_checkpoint(ckpt)
    cfg = Config.from_dict(ckpt["config"])
    db = load_database(args.database or ["embedded"], model, cfg, progress=not args.json)
    elements = args.elements.split(",") if args.elements else None
    if args.rerank < 0:
        raise EACNNError(f"--rerank must be >= 0, got {args.rerank}")
    hits = rank(grid.vector, model, db, top=max(args.top, args.rerank), elements=elements)
    cal = calibrate(model, cfg)
    # the verdict is the model's: its calibrated top-1 similarity, before any re-ranking
    confident = bool(len(hits)) and float(hits.similarity.iloc[0]) >= cal.threshold
    if args.rerank:
        hits = refine(grid.vector, hits.head(args.rerank), db, cfg, covered=grid.covered)
    hits = hits.head(args.top)
    verdict = "match" if confident else "no confident match"
    if args.json:
        print(json.dumps({
            "pattern": str(args.pattern), "coverage": round(float(grid.coverage), 4), "verdict": verdict,
            "threshold": round(cal.threshold, 4),
            "results": [{"rank": int(r.rank), "id": r.id, "formula": r.formula, "spacegroup": r.spacegroup,
                         "similarity": round(float(r.similarity), 4),
                         **({"agreement": round(float(r.agreement), 4), "strain": round(float(r.strain), 4),
                             "zero_shift": round(float(r.zero_shift), 3)} if args.rerank else {})}
                        for r in hits.itertuples()],
        }))
    else:
        print(f"{args.pattern}: coverage of 10–80° {100 * grid.coverage:.0f} %; {len(db.labels):,} candidates")
        cols = ["rank", "id", "formula", "spacegroup", "similarity"]
        if args.rerank:
            cols += ["agreement", "strain", "zero_shift"]
            print(f"top {args.rerank} re-ranked by pattern agreement after a fitted lattice scale and zero shift")
        print(hits[cols].to_string(index=False, float_format="%.4f"))
        print(f"verdict: {verdict} (top-1 similarity {hits.similarity.iloc[0]:.4f}; threshold {cal.threshold:.4f}, "
              f"fitted on {cal.n_queries} validation queries, each with its structure present and absent, for "
              f"{100 * cal.target:.0f} % precision of a match)")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .plots import plot_vector, save_figure

        n = min(3, len(hits))
        fig, axes = plt.subplots(n + 1, 1, figsize=(7, 1.6 * (n + 1)), sharex=True, layout="constrained")
        plot_vector(grid.vector, ax=axes[0], color="k", label="measured (binned)")
        axes[0].legend(fontsize=7)
        for ax, r in zip(axes[1:], hits.itertuples()):
            plot_vector(grid.vector, ax=ax, color="0.7")
            plot_vector(db.vectors[r.row], ax=ax, color="C0", label=f"#{r.rank} {r.formula} {r.spacegroup} ({r.id})")
            ax.legend(fontsize=7)
        out = Path(args.plot)
        save_figure(fig, out.stem, folder=out.parent)
    return 0


def _cmd_book(args: argparse.Namespace) -> int:
    from .book import build_book

    result = build_book(profile=args.profile, keep_going=args.keep_going)
    for nb, sec in result.timings.items():
        print(f"  {nb}: {sec:.0f} s")
    print(f"book built in {result.seconds / 60:.1f} min: {result.index_html}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eacnn", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate the powder pattern of a CIF file")
    p.add_argument("structure", help="a CIF file")
    p.add_argument("--wavelength", type=float, default=1.5406, help="Å (default Cu Kα1 1.5406)")
    p.add_argument("--b-factor", type=float, default=0.5, help="isotropic Debye–Waller B, Å² (default 0.5)")
    p.add_argument("--plot", help="write a PNG of the pattern here")
    p.add_argument("--json", action="store_true", help="print the vector and peaks as JSON")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("build", help="build (or load from cache) the data set of a profile")
    p.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. data.max_sites=32")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("train", help="train a model (checkpoints each epoch; resumes a run folder)")
    p.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. model.kind=paper")
    p.add_argument("--run-dir", help="run folder (default: under $EACNN_RUNS, named by config and data)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing last.pt instead of resuming")
    p.add_argument("--classifier", metavar="FILE",
                   help="train the space-group classifier baseline instead (train.epochs epochs) and save it to FILE")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("search", help="identify a measured pattern: rank database structures by the trained model")
    p.add_argument("pattern", help="a measured pattern (.xy, .txt, .csv, .dat, .xrdml, optionally .gz)")
    p.add_argument("--database", action="append", help="'embedded' (default) or a folder of CIF files; repeatable")
    p.add_argument("--wavelength", default=None, help="Å or a name (Cu, Mo, Co, Cr, Fe, Ag); default Cu Kα1")
    p.add_argument("--elements", help="only candidates made of these elements, e.g. Mn,O")
    p.add_argument("--top", type=int, default=10, help="how many candidates to list (default 10)")
    p.add_argument("--rerank", type=int, default=0, metavar="N",
                   help="re-rank the model's top N by pattern agreement after fitting a lattice scale (±2 %%) and "
                        "zero shift (±0.3°) per candidate (default 0: off)")
    p.add_argument("--plot", help="write a PNG of the pattern over the top hits' simulated patterns")
    p.add_argument("--json", action="store_true", help="print the ranked list as JSON")
    p.add_argument("--checkpoint", help="a trained checkpoint (default: the shipped one)")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("book", help="execute every notebook (papermill) and render the book (Jupyter Book 1)")
    p.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    p.add_argument("--keep-going", action="store_true", help="report every Sphinx warning, not just the first")
    p.set_defaults(func=_cmd_book)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.command in ("book", "train", "build") else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except EACNNError as err:
        print(f"eacnn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"eacnn {args.command}: error: {err}", file=sys.stderr)
        return 2
