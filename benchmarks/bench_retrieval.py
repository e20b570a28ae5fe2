"""Query latency of retrieval: the MP-20 test pool (9,046 real embeddings) and a synthetic 150,000 pool,
the exact torch backend against FAISS (``IndexFlatIP``, also exact), measured side by side in one run.

    python benchmarks/bench_retrieval.py [--checkpoint PATH] [--pool 150000]

Prints milliseconds per query for single queries (interactive use: `eacnn search`) and for batches of 1,000
(evaluation), the FAISS / torch ratio, and whether both backends return the same top-10 candidates.
The 9,046 pool holds the shipped model's structure embeddings of the MP-20 test split (cached after the first run);
the 150k pool is random unit vectors of the same width — the paper's 154,714 structures would need a GPU day to
embed on this machine, and latency does not depend on what the vectors hold.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    import torch

    from eacnn.analysis import embed_dataset
    from eacnn.training.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, model_from_checkpoint
    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.retrieval.index import Index, have_faiss, query_latency

    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--pool", type=int, default=150_000, help="size of the synthetic pool")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    ckpt = load_checkpoint(args.checkpoint)
    model, cfg = model_from_checkpoint(ckpt), Config.from_dict(ckpt["config"])
    data = build_dataset(cfg, progress=False)
    emb = embed_dataset(model, data, "test", levels=(0,), progress=False)
    rng = np.random.default_rng(0)
    d = emb.structures.shape[1]
    pools = {
        f"MP-20 test ({len(emb.structures):,}, real)": (emb.structures, emb.patterns[0][:1000]),
        f"synthetic ({args.pool:,})": (rng.standard_normal((args.pool, d)).astype(np.float32),
                                        rng.standard_normal((1000, d)).astype(np.float32)),
    }
    backends = ["torch"] + (["faiss"] if have_faiss() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; FAISS {'yes' if have_faiss() else 'not installed'}")
    print(f"{'pool':28} {'backend':8} {'single (ms/query)':>18} {'batch of 1,000 (ms/query)':>26}")
    for name, (pool, queries) in pools.items():
        times, tops = {}, {}
        for backend in backends:
            index = Index(pool, backend=backend)
            single = query_latency(index, queries[:100], batch=1)
            batched = query_latency(index, queries, batch=1000)
            times[backend] = (single, batched)
            tops[backend] = index.search(queries, k=10)[1]
            print(f"{name:28} {backend:8} {single:18.3f} {batched:26.4f}")
        if "faiss" in times:
            (s_t, b_t), (s_f, b_f) = times["torch"], times["faiss"]
            same = float(np.mean(tops["torch"] == tops["faiss"]))
            print(f"{'':28} {'ratio':8} {s_f / s_t:17.2f}x {b_f / b_t:25.2f}x  (faiss / torch; top-10 agree on "
                  f"{100 * same:.2f} % of entries)")


if __name__ == "__main__":
    main()
