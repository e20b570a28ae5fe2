"""Building data sets beyond one machine, on an existing engine: Dask's distributed scheduler.

Why Dask and not Ray, for this job: a build is a map of independent CPU tasks (:func:`eacnn.datasets.dataset.
_build_chunk`, a chunk of structures each) whose results are modest numpy arrays gathered in order. Dask's
``distributed`` does exactly that with a pure-Python install (``pip install "eacnn[cluster]"``), runs on a laptop
(``local:N``), on SLURM/PBS/Kubernetes through its deployment packages, or on any scheduler one starts with
``dask scheduler`` / ``dask worker``; a worker needs only eacnn installed. Ray brings its own object store and a
larger binary install, made for actors and shared-memory workloads this job does not have.

``ADDRESS`` is a scheduler address (``tcp://host:8786``) or ``local:N`` (a local cluster of N worker processes,
one thread each, started for the build and stopped after it).
"""

from __future__ import annotations

import logging
import uuid
from typing import Callable, Iterator, Sequence

from eacnn.errors import EACNNError

log = logging.getLogger(__name__)

__all__ = ["map_on_cluster", "check_address"]


def check_address(address: str) -> str:
    """The address as given, when it names a scheduler (``tcp://``, ``tls://``, ``ucx://``, ``inproc://``) or a
    local cluster (``local:N``, N >= 1); checked before any work.

    Raises:
        EACNNError: another form (the message shows the value and the accepted forms).
    """
    text = str(address).strip()
    if text.startswith("local:"):
        n = text.split(":", 1)[1]
        if n.isdigit() and int(n) >= 1:
            return text
    elif text.split("://", 1)[0] in ("tcp", "tls", "ucx", "inproc") and "://" in text:
        return text
    raise EACNNError(f"--cluster {address!r}: give a Dask scheduler address such as 'tcp://host:8786', or 'local:N' "
                     f"for N local worker processes")


def map_on_cluster(address: str, fn: Callable, tasks: Sequence, keys: Sequence[int]) -> Iterator[tuple[int, object]]:
    """``(key, fn(task))`` for every task, as the cluster finishes them (any order).

    Raises:
        EACNNError: Dask is not installed, or the scheduler cannot be reached.
    """
    address = check_address(address)
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as err:
        raise EACNNError('--cluster needs Dask\'s distributed scheduler: pip install "eacnn[cluster]"') from err
    cluster = None
    if address.startswith("local:"):
        cluster = LocalCluster(n_workers=int(address.split(":")[1]), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        target = cluster
    else:
        target = address
    try:
        try:
            client = Client(target, timeout="30s")
        except OSError as err:
            raise EACNNError(f"--cluster {address!r}: no Dask scheduler answers there ({err})") from err
        with client:
            token = uuid.uuid4().hex[:8]
            futures = {client.submit(fn, task, key=f"eacnn-chunk-{token}-{k}", pure=False): k
                       for task, k in zip(tasks, keys)}
            log.info("building %d chunks on %d Dask workers", len(futures), len(client.scheduler_info()["workers"]))
            for future in as_completed(futures):
                yield futures[future], future.result()
    finally:
        if cluster is not None:
            cluster.close()
