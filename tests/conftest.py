"""Settings shared by every test.

Under pytest-xdist the workers share the machine's cores: each worker (and every process it starts: the CLI, the
book's kernels, torchrun) gets its share of threads for torch's OpenMP pool and the BLAS. Two workers each running
torch on all cores oversubscribe them, and OpenMP's spinning threads then slow both several-fold (the training
tests: 45 s side by side with all threads, 19 s with one each, on 2 cores). Set before torch is imported.
"""

from __future__ import annotations

import os

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if os.environ.get("PYTEST_XDIST_WORKER") and _workers > 1:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, (os.cpu_count() or 1) // _workers)))
