"""Training throughput of each profile's model on this CPU: structures per second, forward + backward.

    python benchmarks/bench_train.py                    # smoke, cpu (both kinds) and paper models
    python benchmarks/bench_train.py --profiles cpu --batch 128 --repeat 3

Batches are built from real embedded MP-20 structures (graphs with the profile's cutoff, clean patterns as the
structures' own patterns, augmented patterns for the XRD tower), so the number of edges per structure is the
real one (~30 neighbours per atom at 5 Å). One step = forward of both towers + symmetric InfoNCE + backward +
AdamW step, timed as the median of ``--repeat`` steps after one warm-up step. The augmentation of the batch
(numpy + torch, done by the training loop before each step) is timed separately. The machine may be shared: CPU
time is printed too.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def _batch(structures, vectors, sticks, r_max: float, n: int, cfg):
    import torch

    from eacnn.physics.perturb import augment_patterns
    from eacnn.datasets.graphs import collate_graphs, structure_graph

    graphs = [structure_graph(s, r_max) for s in structures[:n]]
    pattern = augment_patterns(sticks[:n], cfg.augment, rng=0, xrd=cfg.xrd)
    vec = torch.from_numpy(vectors[:n])
    return {"graph": collate_graphs(graphs), "pattern": torch.from_numpy(pattern), "structure_pattern": vec}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["smoke", "cpu", "paper"])
    parser.add_argument("--batch", type=int, default=64, help="structures per step (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="timed steps per model (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()

    warnings.filterwarnings("ignore", category=UserWarning)  # TorchScript notes from e3nn/mace at model build
    import torch

    from eacnn.physics.perturb import augment_patterns
    from eacnn.config import Config
    from eacnn.datasets.graphs import structure_graph
    from eacnn.training.losses import clip_loss
    from eacnn.models import EACNN
    from eacnn.datasets.structures import embedded_structures
    from eacnn.physics.xrd import XRDSimulator

    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    # a deterministic spread of real structures: every 8th row of the embedded 'val' split, usable ones only
    _, structs = embedded_structures("val", limit=8 * max(args.batch, 256) + 64)
    sim = XRDSimulator()
    usable, vectors, sticks = [], [], []
    for s in structs[::8]:
        try:
            structure_graph(s, 5.0)
            sticks.append(sim.sticks(s))
            vectors.append(sim.vector(s))
        except Exception:
            continue
        usable.append(s)
    vectors = np.stack(vectors).astype(np.float32)
    n_atoms = np.mean([len(s) for s in usable[: args.batch]])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch} real MP-20 structures "
          f"({n_atoms:.1f} atoms on average)\n")

    # augmentation of a batch of 256 (what the loop does before each step)
    aug_rows = []
    base = Config.cpu()
    s256 = [sticks[i % len(sticks)] for i in range(256)]
    for level in (1, 2, 3):
        from eacnn.config import AugmentConfig

        acfg = AugmentConfig.level(level)
        augment_patterns(s256, acfg, rng=0, xrd=base.xrd)
        times = []
        for seed in range(5):
            t0 = time.perf_counter()
            augment_patterns(s256, acfg, rng=seed, xrd=base.xrd)
            times.append(time.perf_counter() - t0)
        aug_rows.append((level, 1e3 * float(np.median(times))))

    runs = []
    for profile in args.profiles:
        kinds = ["eacnn", "paper"] if profile == "cpu" else ["eacnn"]
        for kind in kinds:
            cfg = Config.from_profile(profile).replace(**{"model.kind": kind})
            mc = cfg.model
            t0 = time.perf_counter()
            torch.manual_seed(0)
            model = EACNN.from_config(cfg)
            build = time.perf_counter() - t0
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            batch = _batch(usable, vectors, sticks, mc.r_max, args.batch, cfg)
            walls, cpus = [], []
            for step in range(args.repeat + 1):
                w0, c0 = time.perf_counter(), time.process_time()
                loss = clip_loss(*model(batch))
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step:  # the first step is warm-up
                    walls.append(time.perf_counter() - w0)
                    cpus.append(time.process_time() - c0)
            wall, cpu = float(np.median(walls)), float(np.median(cpus))
            rate = args.batch / wall
            n_params = sum(p.numel() for p in model.parameters())
            arch = f"{mc.num_interactions}x{mc.channels} L={mc.max_L} ell={mc.max_ell} nu={mc.correlation}"
            runs.append((profile, kind, arch, n_params, build, wall, cpu, rate, 8000 / rate / 60))
            print(f"  {profile}/{kind}: {rate:.1f} structures/s", flush=True)

    print()
    print(f"{'profile':8} {'kind':6} {'MACE':26} {'params':>9} {'build s':>8} {'step s':>7} {'cpu s':>7} "
          f"{'struct/s':>9} {'min/8k':>7}")
    for profile, kind, arch, n_params, build, wall, cpu, rate, epoch_min in runs:
        print(f"{profile:8} {kind:6} {arch:26} {n_params:9d} {build:8.1f} {wall:7.2f} {cpu:7.2f} {rate:9.1f} "
              f"{epoch_min:7.1f}")
    print("\nmin/8k: minutes per epoch of ~8,000 training structures at this rate (validation not included)")
    print("\naugmentation of 256 patterns (median of 5):")
    for level, ms in aug_rows:
        print(f"  level {level}: {ms:.1f} ms")


if __name__ == "__main__":
    main()
