"""Speed and agreement of eacnn.xrd against pymatgen's XRDCalculator, side by side in one run.

    python benchmarks/bench_xrd.py            # 500 structures, then all 18,093 with 2 workers
    python benchmarks/bench_xrd.py --n 200 --skip-all

Both codes get the same MP-20 structures (a deterministic spread over the embedded table), Cu Kα1 (1.5406 Å),
2θ from 10° to 80°, one process, BLAS limited to one thread (``--blas-threads``) so that both use one core.
pymatgen computes sticks with their hkl families; we time our sticks alone, our sticks with hkl families (the same
output as pymatgen) and our full path to the 140-bin model input. Times are wall clock: the median of ``--repeat``
rounds for our paths, and pymatgen once, in slices between our rounds (it is slow), so that a busy neighbour on a
shared machine slows both alike; CPU times are shown too. Target: the model-input path >= 50x pymatgen.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from eacnn.config import XRDConfig
from eacnn.structures import load_embedded, row_to_structure
from eacnn.xrd import XRDSimulator, simulate_batch

TWO_THETA_TOL = 0.01  # degrees
INTENSITY_TOL = 1.0  # % of the strongest peak
COMPARE_ABOVE = 1.0  # % of the strongest: peaks compared
CLUSTER_GAP = 0.005  # degrees: peaks closer than this are one observable peak (see tests/test_xrd.py)


def timed(fn):
    """(result, wall seconds, CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def agreement(ours, ref) -> tuple[float, float]:
    """Max |Δ2θ| (degrees) between matched peaks and max |ΔI| (% of strongest) of one structure.

    Peaks of both codes closer than CLUSTER_GAP are grouped (pymatgen may split one peak in two when it rounds
    2θ to multiples of 1e-5°), group intensities are compared after scaling each side to 100; every peak above
    1 % on either side must have a partner within the position tolerance.
    """
    ref_tt, ref_i = np.asarray(ref.x, dtype=float), np.asarray(ref.y, dtype=float)
    tt = np.concatenate([ref_tt, ours.two_theta])
    order = np.argsort(tt)
    label = np.empty(len(tt), dtype=int)
    label[order] = np.cumsum(np.concatenate([[True], np.diff(tt[order]) > CLUSTER_GAP])) - 1
    ref_sum = np.bincount(label[: len(ref_tt)], ref_i, label.max() + 1)
    our_sum = np.bincount(label[len(ref_tt) :], ours.intensity, label.max() + 1)
    ref_sum, our_sum = 100 * ref_sum / ref_sum.max(), 100 * our_sum / our_sum.max()
    d_i = np.abs(ref_sum - our_sum)[np.maximum(ref_sum, our_sum) > COMPARE_ABOVE].max()
    ref_big, our_big = ref_tt[100 * ref_i / ref_i.max() > COMPARE_ABOVE], ours.two_theta[ours.intensity > COMPARE_ABOVE]
    d_tt = max(
        np.abs(ours.two_theta[:, None] - ref_big[None, :]).min(axis=0).max(),
        np.abs(ref_tt[:, None] - our_big[None, :]).min(axis=0).max(),
    )
    return float(d_tt), float(d_i)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="structures timed against pymatgen (default 500)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of our paths (median reported)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for the full embedded set")
    parser.add_argument("--skip-all", action="store_true", help="skip the run over all embedded structures")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads for the single-process part")
    args = parser.parse_args()
    with threadpool_limits(limits=args.blas_threads):
        compare(args)
    if not args.skip_all:
        everything(args)


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
        f"1 process, {args.blas_threads} BLAS thread(s)"
    )

    n = len(structures)
    # warm-up: caches of hkl meshes, f tables and the profile kernel; pymatgen's lazy imports
    simulate_batch(structures[:20], cfg, progress=False)
    sim.get_patterns(structures[:20])
    calc.get_pattern(structures[0], two_theta_range=window)

    def sticks_with_hkls():
        patterns = sim.get_patterns(structures, window)
        for p in patterns:
            p.hkls  # built on first access: materialise the families, as pymatgen does
        return patterns

    paths = {
        "eacnn XRDSimulator.get_patterns (sticks)": lambda: sim.get_patterns(structures, window),
        "eacnn XRDSimulator.get_patterns (sticks + hkls)": sticks_with_hkls,
        "eacnn simulate_batch (140-bin vectors, n_jobs=1)": lambda: simulate_batch(structures, cfg, progress=False),
    }
    # rounds: a slice of the pymatgen run, then each of our paths on all structures
    times: dict = {name: [] for name in paths}
    last: dict = {}  # each path's output of the last round
    refs, pmg_wall, pmg_cpu = [], 0.0, 0.0
    for part in np.array_split(np.arange(n), args.repeat):
        out, wall, cpu = timed(lambda: [calc.get_pattern(structures[i], two_theta_range=window) for i in part])
        refs, pmg_wall, pmg_cpu = refs + out, pmg_wall + wall, pmg_cpu + cpu
        for name, fn in paths.items():
            out, wall, cpu = timed(fn)
            times[name].append((wall, cpu))
            last[name] = out
    ours, result = last["eacnn XRDSimulator.get_patterns (sticks + hkls)"], last[list(paths)[-1]]
    assert not result.failures, result.failures

    print(f"\n{'path':<52}{'patterns/s':>11}{'(CPU)':>10}{'× pymatgen':>12}{'(CPU)':>8}")
    rows_out = [("pymatgen XRDCalculator.get_pattern (sticks + hkls)", pmg_wall, pmg_cpu)]
    rows_out += [(name, *np.median(np.array(t), axis=0)) for name, t in times.items()]
    for name, wall, cpu in rows_out:
        print(f"{name:<52}{n / wall:>11.0f}{n / cpu:>10.0f}{pmg_wall / wall:>11.1f}×{pmg_cpu / cpu:>7.1f}×")

    d = np.array([agreement(o, r) for o, r in zip(ours, refs)])  # [n, 2]
    ok = (d[:, 0] <= TWO_THETA_TOL) & (d[:, 1] <= INTENSITY_TOL)
    print(
        f"\nagreement with pymatgen (B = 0, peaks > {COMPARE_ABOVE:g} %): max |Δ2θ| = {d[:, 0].max():.2g}° "
        f"(tolerance {TWO_THETA_TOL}°), max |ΔI| = {d[:, 1].max():.2g} % of the strongest (tolerance "
        f"{INTENSITY_TOL:g} %), within tolerance: {ok.sum()}/{n} ({100 * ok.mean():.1f} %)"
    )
    if not ok.all():
        print("  outside:", ", ".join(f"{m} (Δ2θ {a:.3g}°, ΔI {b:.3g} %)" for m, (a, b) in zip(rows.material_id[~ok], d[~ok])))


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
