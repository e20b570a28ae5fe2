"""Speed and agreement of eacnn.physics.xrd against pymatgen's XRDCalculator, side by side in one run.

    python benchmarks/bench_xrd.py            # 500 structures, then all 18,093 with 2 workers
    python benchmarks/bench_xrd.py --n 200 --skip-all

Both codes get the same MP-20 structures (a deterministic spread over the embedded table), Cu Kα1 (1.5406 Å),
2θ from 10° to 80°, one process, BLAS limited to one thread (``--blas-threads``) so that both use one core.
pymatgen computes sticks with their hkl families, one structure per call. We time two ways of calling:

* per call: one structure at a time (``get_pattern``, ``vector``, ``simulate``), as ``eacnn simulate`` and
  ``eacnn search`` do. Target >= 20x pymatgen.
* batch: all structures in one call (``get_patterns``, ``simulate_batch``), as dataset building does. Target
  >= 50x pymatgen for the 140-bin model input.

Every time is the best of ``--repeat`` runs, the one least disturbed by other processes on a shared machine:
per structure for pymatgen and our per-call paths (each structure goes through all of them in turn, so that a busy
moment slows both alike), per whole set for the batch paths. Wall clock, CPU time beside it.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from eacnn.config import XRDConfig
from eacnn.datasets.structures import load_embedded, row_to_structure
from eacnn.physics.reference import COMPARE_ABOVE, INTENSITY_TOL, TWO_THETA_TOL, compare_sticks
from eacnn.physics.xrd import XRDSimulator, simulate_batch

PER_CALL_TARGET = 20.0  # × pymatgen, one structure per call
BATCH_TARGET = 50.0  # × pymatgen, simulate_batch


def timed(fn):
    """(result, wall seconds, CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def best(fn, repeat: int):
    """(first result, best wall seconds, best CPU seconds) of ``repeat`` calls."""
    runs = [timed(fn) for _ in range(repeat)]
    return runs[0][0], min(r[1] for r in runs), min(r[2] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="structures timed against pymatgen (default 500)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every timing (best reported)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for the full embedded set")
    parser.add_argument("--skip-all", action="store_true", help="skip the run over all embedded structures")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads for the single-process part")
    args = parser.parse_args()
    with threadpool_limits(limits=args.blas_threads):
        compare(args)
    if not args.skip_all:
        everything(args)


def with_hkls(patterns):
    """Materialise the hkl families (built on first access), as pymatgen always does."""
    for p in patterns:
        p.hkls
    return patterns


def compare(args) -> None:
    """pymatgen and our paths on the same structures, then their agreement."""

    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    table = load_embedded()
    rows = table.iloc[np.linspace(0, len(table) - 1, args.n).astype(int)]
    structures = [row_to_structure(r) for r in rows.to_dict("records")]
    cfg = XRDConfig(b_factor=0.0)  # pymatgen's default has no Debye–Waller factor either
    sim, calc = XRDSimulator(cfg), XRDCalculator(wavelength=cfg.wavelength)
    window = (cfg.two_theta_min, cfg.two_theta_max)
    print(
        f"{len(structures)} MP-20 structures ({rows.spacegroup_number.nunique()} space groups, "
        f"{rows.n_sites.mean():.1f} sites on average), λ = {cfg.wavelength} Å, 2θ {window[0]:g}–{window[1]:g}°, "
        f"1 process, {args.blas_threads} BLAS thread(s), best of {args.repeat}"
    )
    # warm-up: caches of hkl meshes, f tables and the profile kernel; pymatgen's lazy imports
    simulate_batch(structures[:20], cfg, progress=False)
    for s in structures[:20]:
        sim.simulate(s)
    calc.get_pattern(structures[0], two_theta_range=window)

    pymatgen = "pymatgen XRDCalculator.get_pattern (sticks + hkls)"
    per_call = {  # name -> function of one structure
        pymatgen: lambda s: calc.get_pattern(s, two_theta_range=window),
        "XRDSimulator.get_pattern (sticks)": lambda s: sim.get_pattern(s, window),
        "XRDSimulator.get_pattern (sticks + hkls)": lambda s: with_hkls([sim.get_pattern(s, window)]),
        "XRDSimulator.vector (140 bins)": sim.vector,
        "XRDSimulator.simulate (sticks + 140 bins)": sim.simulate,
    }
    batch = {  # name -> function of all structures
        "XRDSimulator.get_patterns (sticks)": lambda: sim.get_patterns(structures, window),
        "XRDSimulator.get_patterns (sticks + hkls)": lambda: with_hkls(sim.get_patterns(structures, window)),
        "simulate_batch (140 bins, n_jobs=1)": lambda: simulate_batch(structures, cfg, progress=False),
    }
    times = {name: np.zeros(2) for name in [*per_call, *batch]}  # name -> (wall, CPU) seconds for all structures
    refs = []
    for s in structures:  # every structure through every per-call path in turn
        for name, fn in per_call.items():
            out, wall, cpu = best(lambda: fn(s), args.repeat)
            times[name] += (wall, cpu)
            if name == pymatgen:
                refs.append(out)
    for name, fn in batch.items():
        gc.collect()  # hkl families allocate many small objects: start every batch path from a collected heap
        times[name] = np.array(best(fn, args.repeat)[1:])

    n, (pmg_wall, pmg_cpu) = len(structures), times.pop(pymatgen)
    print(f"\n{'path':<50}{'µs/pattern':>11}{'(CPU)':>8}{'× pymatgen':>12}{'(CPU)':>8}{'target':>8}")
    print(f"{pymatgen:<50}{1e6 * pmg_wall / n:>11.0f}{1e6 * pmg_cpu / n:>8.0f}{1.0:>11.1f}×{1.0:>7.1f}×")
    for kind, names in (("per call", list(per_call)[1:]), ("batch", list(batch))):
        print(f"eacnn, {kind}:")
        for name in names:
            wall, cpu = times[name]
            target = PER_CALL_TARGET if kind == "per call" else BATCH_TARGET if name.startswith("simulate") else None
            print(f"  {name:<48}{1e6 * wall / n:>11.0f}{1e6 * cpu / n:>8.0f}{pmg_wall / wall:>11.1f}×"
                  f"{pmg_cpu / cpu:>7.1f}×{f'>= {target:g}×' if target else '':>8}")

    ours, single = with_hkls(sim.get_patterns(structures, window)), [sim.get_pattern(s, window) for s in structures]
    d = np.array([compare_sticks(o.two_theta, o.intensity, r.x, r.y) for o, r in zip(ours, refs)])  # [n, 2]
    ok = (d[:, 0] <= TWO_THETA_TOL) & (d[:, 1] <= INTENSITY_TOL)
    print(
        f"\nagreement with pymatgen (B = 0, peaks > {COMPARE_ABOVE:g} %): max |Δ2θ| = {d[:, 0].max():.2g}° "
        f"(tolerance {TWO_THETA_TOL}°), max |ΔI| = {d[:, 1].max():.2g} % of the strongest (tolerance "
        f"{INTENSITY_TOL:g} %), within tolerance: {ok.sum()}/{n} ({100 * ok.mean():.1f} %)"
    )
    if not ok.all():
        outside = zip(rows.material_id[~ok], d[~ok])
        print("  outside:", ", ".join(f"{m} (Δ2θ {a:.3g}°, ΔI {b:.3g} %)" for m, (a, b) in outside))
    result = simulate_batch(structures, cfg, progress=False)
    gap = max(float(np.abs(a.intensity - b.intensity).max()) for a, b in zip(ours, single))
    vec_gap = float(np.abs(np.stack([sim.vector(s) for s in structures]) - result.vectors).max())
    print(f"per call vs batch: max |ΔI| of sticks {gap:.2g} %, max |Δ| of vectors {vec_gap:.2g}")


def everything(args) -> None:
    """All embedded structures through the model-input path, with worker processes."""
    table = load_embedded()
    t0 = time.perf_counter()
    structures = [row_to_structure(r) for r in table.to_dict("records")]
    build = time.perf_counter() - t0
    result, wall, _ = timed(lambda: simulate_batch(structures, XRDConfig(), n_jobs=args.jobs, progress=False))
    print(
        f"\nall {len(structures):,} embedded structures, simulate_batch(n_jobs={args.jobs}, paper config): "
        f"{wall:.1f} s ({len(structures) / wall:,.0f}/s; target < 60 s), {len(result.failures)} failures "
        f"(building the pymatgen Structures from the table took {build:.1f} s more)"
    )


if __name__ == "__main__":
    main()
