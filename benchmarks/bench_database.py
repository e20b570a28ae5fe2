"""Building and searching databases at the size real samples need, side by side in one run (issue: bring the
database the sample needs).

    python benchmarks/bench_database.py [--structures 256] [--million 1000000] [--queries 50] [--no-dask]

1. **Throughput per core** of each stage of a build, one process and one thread each: reading CIFs (the embedded
   structures written as CIF text, parsed by :func:`eacnn.datasets.structures.parse_cif`), simulating and building
   graphs (:func:`eacnn.datasets.dataset.build_dataset`, one worker), and embedding with the default model.
2. **A 10⁶-entry database**: perturbed copies of the shipped embeddings of the 18,093 embedded structures (each
   copy moved by Gaussian noise of 0.05 and renormalised, as a collection of near-duplicates and look-alikes is),
   written with its IVF index by :func:`eacnn.retrieval.database.write_database`; the time to write it (index
   training included), its size on disk, the peak memory of this process, the warm latency of a whole multi-scale
   query (nine scales, :func:`eacnn.retrieval.identify.identify` without refinement: a synthetic database holds no
   reflections), and the shortlist's recall@30 against the exact product on ``--queries`` perturbed queries. The
   build time of a real 10⁶ collection is extrapolated from the measured throughput of stage 1.
3. **A COD-like archive** of ``--cod`` messy CIFs made from the embedded structures (disordered sites, odd
   settings, missing atoms, broken files), read streaming and built: every unreadable file is reported, none is
   fatal.
4. **Dask against local**: the same data-set build on two local worker processes, with ``n_jobs=2`` and on a
   local Dask cluster of two workers (``cluster="local:2"``).

Prints one line per figure with the date and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def per_second(n: int, seconds: float) -> str:
    return f"{n / max(seconds, 1e-9):,.1f} structures/s"


def stage_throughput(n: int, tmp: Path) -> dict:
    """Seconds to read, simulate + graph and embed ``n`` embedded structures on one core."""
    import mace  # noqa: F401  (before e3nn under torch >= 2.6)
    import torch
    from pymatgen.io.cif import CifWriter

    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.datasets.structures import load_embedded, parse_cif, row_to_structure
    from eacnn.retrieval.embed import embed_dataset
    from eacnn.training.checkpoint import load_pretrained

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    table = load_embedded("val", limit=n)
    texts = [str(CifWriter(row_to_structure(r))) for r in table.to_dict("records")]
    t0 = time.perf_counter()
    for k, text in enumerate(texts):
        parse_cif(text, f"bench-{k}")
    read = time.perf_counter() - t0
    os.environ["EACNN_CACHE"] = str(tmp / "cache")
    cfg = Config.cpu()
    model = load_pretrained()
    warm = build_dataset(cfg, structures_table=load_embedded("test", limit=8), progress=False, n_jobs=1)
    embed_dataset(model, warm, "test", levels=(0,), progress=False, cache=False)  # imports and first calls, untimed
    t0 = time.perf_counter()
    ds = build_dataset(cfg, structures_table=table.assign(split="test"), progress=False, n_jobs=1)
    simulate = time.perf_counter() - t0
    t0 = time.perf_counter()
    embed_dataset(model, ds, "test", levels=(0,), progress=False, cache=False)
    embed = time.perf_counter() - t0
    return {"read": read, "simulate": simulate, "embed": embed, "n": len(ds)}


def million(n: int, queries: int, tmp: Path) -> dict:
    from eacnn.config import XRDConfig
    from eacnn.datasets.structures import load_embedded
    from eacnn.retrieval.database import SHIPPED_DIR, open_database, write_database
    from eacnn.retrieval.identify import identify
    from eacnn.retrieval.pattern_tower import PatternTower

    with np.load(SHIPPED_DIR / "embedded.npz") as f:
        base = f["embeddings"].astype(np.float32)  # [18093, d]
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(base), n)
    emb = base[rows] + rng.normal(0, 0.05, (n, base.shape[1])).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    table = load_embedded()
    labels = table.iloc[rows % len(table)][["material_id", "formula", "spacegroup_symbol", "spacegroup_number",
                                            "crystal_system"]].reset_index(drop=True)
    labels["material_id"] = [f"syn-{i}" for i in range(n)]
    labels = labels.assign(source="synthetic", elements="")
    import json

    shipped = json.loads((SHIPPED_DIR / "embedded.json").read_text())
    from eacnn.training.checkpoint import load_pretrained
    from eacnn.retrieval.pattern_tower import export_tower

    tower = export_tower(load_pretrained())
    t0 = time.perf_counter()
    folder = write_database(tmp / "million", labels, emb, tower, shipped["calibration"], "synthetic", ["synthetic"])
    built = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    t0 = time.perf_counter()
    db = open_database(folder)
    opened = time.perf_counter() - t0
    # queries: clean patterns of embedded structures, as a measured scan would be read
    from eacnn.physics.xrd import XRDSimulator
    from eacnn.datasets.structures import row_to_structure

    sim = XRDSimulator(XRDConfig())
    patterns = [sim.vector(row_to_structure(r)) for r in table.sample(queries, random_state=1).to_dict("records")]
    identify(patterns[0], None, db, top=10, rerank=0)  # warm: the index and the memory map are read once
    t0 = time.perf_counter()
    for p in patterns:
        identify(p, None, db, top=10, rerank=0)
    latency = (time.perf_counter() - t0) / len(patterns)
    tower_np = PatternTower(tower)
    z = tower_np(np.asarray(patterns, np.float32), np.ones((len(patterns), 140), bool) if tower_np.reads_mask else None)
    exact = np.argsort(-(np.asarray(db.embeddings) @ z.T).T, axis=1)[:, :30]
    got = [db.scores(q, 30)[1] for q in z]
    recall = float(np.mean([len(set(a) & set(b)) / 30 for a, b in zip(exact, got)]))
    return {"built": built, "size_mb": size, "opened": opened, "latency": latency, "recall30": recall,
            "manifest_recall30": db.manifest["index"].get("recall_at_30"), "nprobe": db.manifest["index"]["nprobe"]}


def cod_like_archive(n: int, tmp: Path) -> dict:
    """A COD-like zip of ``n`` messy CIFs made from embedded structures (a fifth each: as they are, a disordered
    site, a non-reduced supercell setting, a site removed as if H were missing, and broken files of three kinds),
    read streaming and built; returns counts and times."""
    import zipfile
    from collections import Counter

    from pymatgen.io.cif import CifWriter

    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.datasets.structures import load_embedded, read_cif_folder, row_to_structure

    rows = load_embedded("test", limit=n).to_dict("records")
    path = tmp / "cod-like.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for k, row in enumerate(rows):
            s = row_to_structure(row)
            kind = k % 5
            if kind == 1 and len(s) > 1:
                s.replace(0, {s[0].specie.symbol: 0.5, s[1].specie.symbol: 0.5} if s[0].specie != s[1].specie
                          else {s[0].specie.symbol: 0.7})
            elif kind == 2:
                s.make_supercell([[1, 1, 0], [0, 1, 0], [0, 0, 1]])  # a valid, non-reduced setting
            elif kind == 3 and len(s) > 1:
                s.remove_sites([len(s) - 1])
            text = str(CifWriter(s))
            if kind == 4:  # broken: truncated, a missing cell length, or not a CIF at all
                text = [text[: len(text) // 3], text.replace("_cell_length_a", "_cell_length_x"), "garbage"][k % 3]
            z.writestr(f"cif/{k // 1000}/{row['material_id']}.cif", text)
    t0 = time.perf_counter()
    found = read_cif_folder(path, progress=False)
    read = time.perf_counter() - t0
    os.environ["EACNN_CACHE"] = str(tmp / "cod-cache")
    t0 = time.perf_counter()
    ds = build_dataset(Config.cpu().replace(**{"data.max_sites": 512}), structures_table=found.table,
                       progress=False, n_jobs=-1)
    built = time.perf_counter() - t0
    reasons = Counter(reason.split(".cif: ", 1)[-1].split(";")[0].split(" (")[0].strip()[:40]
                      for _, reason in found.skipped)
    return {"files": n, "read": read, "unreadable": len(found.skipped), "built": built, "in_dataset": len(ds),
            "not_simulated": len(ds.skipped), "reasons": dict(reasons.most_common(4))}


def dask_against_local(n: int, tmp: Path) -> dict:
    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.datasets.structures import load_embedded

    table = load_embedded("val", limit=n).assign(split="test")
    out = {}
    for name, kw in (("local n_jobs=2", {"n_jobs": 2}), ("dask local:2", {"cluster": "local:2"})):
        os.environ["EACNN_CACHE"] = str(tmp / name.replace(" ", "_").replace(":", ""))
        t0 = time.perf_counter()
        build_dataset(Config.cpu(), structures_table=table, progress=False, **kw)
        out[name] = time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--structures", type=int, default=256)
    parser.add_argument("--million", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--cod", type=int, default=5000, help="messy CIFs in the COD-like archive")
    parser.add_argument("--no-dask", action="store_true")
    args = parser.parse_args()
    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        s = stage_throughput(args.structures, tmp)
        print(f"per core ({s['n']} structures): reading {per_second(s['n'], s['read'])}, simulating + graphs "
              f"{per_second(s['n'], s['simulate'])}, embedding {per_second(s['n'], s['embed'])}; the three together "
              f"{per_second(s['n'], s['read'] + s['simulate'] + s['embed'])}")
        total = s["read"] + s["simulate"] + s["embed"]
        print(f"a 10^6-structure collection, extrapolated: {1e6 * total / s['n'] / 3600:,.1f} core-hours "
              f"({1e6 * total / s['n'] / 3600 / (os.cpu_count() or 1):,.1f} h on this machine's cores)")
        m = million(args.million, args.queries, tmp)
        print(f"{args.million:,}-entry database: written with its IVF index in {m['built']:.0f} s, "
              f"{m['size_mb']:,.0f} MB on disk, opened (digests checked) in {m['opened']:.2f} s; warm multi-scale "
              f"query {1000 * m['latency']:.0f} ms; shortlist recall@30 {m['recall30']:.3f} on {args.queries} "
              f"queries (manifest: {m['manifest_recall30']}, nprobe {m['nprobe']}); peak memory "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
        shutil.rmtree(tmp / "million", ignore_errors=True)
        c = cod_like_archive(args.cod, tmp)
        print(f"COD-like zip of {c['files']:,} messy CIFs: read streaming in {c['read']:.0f} s, {c['unreadable']:,} "
              f"unreadable, each reported ({c['reasons']}); {c['in_dataset']:,} simulated and built in "
              f"{c['built']:.0f} s ({c['not_simulated']} more reported), none fatal")
        if not args.no_dask:
            d = dask_against_local(args.structures, tmp)
            print("data-set build of", args.structures, "structures:",
                  ", ".join(f"{k} {v:.1f} s" for k, v in d.items()),
                  f"(ratio {d['dask local:2'] / d['local n_jobs=2']:.2f})")


if __name__ == "__main__":
    main()
