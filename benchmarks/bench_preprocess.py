"""Reading and preprocessing a measured scan as its number of points grows, side by side in one run: the SNIP
background as shipped (linear in the points: clipped on a block-averaged copy past
:data:`~eacnn.measured.preprocess.MAX_SNIP_ITER` half-widths) against the exact clipping on every point (points ×
half-widths), and the whole path from a file to the 140-bin input (``read_pattern`` + ``to_model_grid``).

    python benchmarks/bench_preprocess.py [--sizes 10000 100000 1000000]

A synthetic scan from 5 to 90° 2θ (six peaks of 0.05° FWHM on a sloped, humped background, counting noise) is
written as a two-column text file. The exact SNIP runs only up to 10⁵ points (at 10⁶ it takes minutes).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def scan(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tt = np.linspace(5.0, 90.0, n)  # [n] degrees
    y = 100 + 0.5 * (90 - tt) + 50 * np.exp(-((tt - 25) ** 2) / 50)
    for c in (20.0, 31.7, 45.5, 56.6, 66.4, 75.5):
        y = y + 1000 * np.exp(-0.5 * ((tt - c) / 0.021) ** 2)
    return tt, rng.poisson(y).astype(np.float64)


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    import eacnn.measured.preprocess as pp
    from eacnn.measured import read_pattern, to_model_grid

    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()}, MAX_SNIP_ITER "
          f"{pp.MAX_SNIP_ITER}")
    print(f"{'points':>9} {'SNIP shipped (s)':>17} {'SNIP exact (s)':>15} {'ratio':>6} {'max diff / max':>15} "
          f"{'file -> 140 bins (s)':>21}")
    shipped = pp.MAX_SNIP_ITER
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            tt, y = scan(n)
            fast = pp.snip_background(tt, y)
            t_fast = best_of(lambda: pp.snip_background(tt, y))
            t_exact, diff = float("nan"), float("nan")
            if n <= 100_000:
                pp.MAX_SNIP_ITER = 10**12
                try:
                    exact = pp.snip_background(tt, y)
                    t_exact = best_of(lambda: pp.snip_background(tt, y), repeat=1)
                finally:
                    pp.MAX_SNIP_ITER = shipped
                diff = float(np.max(np.abs(fast - exact)) / y.max())
            path = Path(tmp) / f"scan_{n}.xy"
            np.savetxt(path, np.column_stack([tt, y]), fmt="%.5f %.0f")
            t_file = best_of(lambda: to_model_grid(read_pattern(path)), repeat=2)
            print(f"{n:>9,} {t_fast:>17.3f} {t_exact:>15.3f} {t_exact / t_fast:>6.1f} {diff:>15.4f} {t_file:>21.2f}")


if __name__ == "__main__":
    main()
