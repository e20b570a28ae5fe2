"""Patterns + graphs + labels + splits of a structure table, built once and cached.

>>> from eacnn import Config
>>> from eacnn.datasets.dataset import build_dataset
>>> ds = build_dataset(Config.smoke())                   # doctest: +SKIP
>>> ds.vectors.shape, ds.indices("test")[:3]             # doctest: +SKIP

What one build computes for every usable structure of the table: the 140-point XRD vector
(:func:`eacnn.physics.xrd.simulate_batch`), its stick list, and the periodic graph (:func:`eacnn.datasets.graphs.structure_graph`
with cutoff ``cfg.model.r_max``). Every unusable structure — unreadable row, disorder under ``disorder="reject"``,
more than ``max_sites`` sites, an element without scattering factor, no reflection in the window, an isolated
atom — is listed in ``dataset.skipped`` with its reason and logged.

Splits: MP-20 ``test`` rows are our test set (and retrieval pool); every other row is the training pool, of which
a seeded ``val_fraction`` becomes ``val`` and the rest ``train``.

The cache (under :func:`eacnn.paths.cache_dir`) is one compressed ``.npz`` plus a JSON manifest per key; the key
hashes the table's content, ``cfg.xrd``, ``cfg.data``, ``cfg.model.r_max``, the source of the modules that compute
the arrays and :data:`FORMAT_VERSION`. On load the manifest's key and format, the SHA-256 of the ``.npz`` and every
array's shape are checked; anything wrong is logged as a warning with the reason and the dataset is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import zipfile
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from eacnn.config import Config
from eacnn.errors import (
    CacheError,
    ConfigError,
    DisorderError,
    NoReflectionsError,
    StructureError,
    UnknownElementError,
)
from eacnn.paths import PACKAGE_DIR, atomic_write_bytes, cache_dir
from eacnn.datasets.structures import check_structure, row_to_structure

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "CrystalDataset",
    "build_dataset",
    "source_table",
    "dataset_key",
    "assign_splits",
    "count_cross_split_duplicates",
]

FORMAT_VERSION = 1  # bump when the cached arrays change meaning; old caches then miss and are rebuilt
SPLITS = ("train", "val", "test")
CHUNK_ROWS = 128  # structures per worker task
_REQUIRED = ("material_id", "split", "formula", "spacegroup_number", "spacegroup_symbol", "crystal_system",
             "lattice_matrix", "species", "frac_coords")  # fmt: skip
_LABELS = ("material_id", "formula", "spacegroup_number", "spacegroup_symbol", "crystal_system", "mp20_split", "split")


# ---------------------------------------------------------------------------------------------------------------
# Inputs: the table, its key, its splits
# ---------------------------------------------------------------------------------------------------------------
def source_table(cfg: Config) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The structure table named by ``cfg.data.source`` and the (id, reason) of inputs that could not be read.

    ``"embedded"``: the shipped MP-20 val+test table; ``"mp-api"``: :func:`eacnn.datasets.mp.download_table` with
    ``max_sites=cfg.data.max_sites`` (needs a key); a directory: its CIF files (:func:`read_cif_folder`).
    """
    source = cfg.data.source
    if source == "embedded":
        from eacnn.datasets.structures import load_embedded

        return load_embedded(limit=cfg.data.max_structures), []
    if source == "mp-api":
        from eacnn.datasets.mp import download_table

        return download_table(max_sites=cfg.data.max_sites), []
    from eacnn.datasets.structures import is_cif_archive

    if Path(source).expanduser().is_dir() or is_cif_archive(Path(source).expanduser()):
        from eacnn.datasets.structures import read_cif_folder

        found = read_cif_folder(Path(source).expanduser())
        return found.table, list(found.skipped)
    raise ConfigError(f"data.source={source!r} is neither 'embedded', 'mp-api' nor a directory of CIF files")


def _first_per_split(table: pd.DataFrame, limit: int) -> pd.DataFrame:
    missing = [c for c in _REQUIRED if c not in table.columns]
    if missing:
        raise StructureError(f"the structure table lacks columns {missing} (see eacnn.datasets.structures.TABLE_COLUMNS)")
    ids = table["material_id"].astype(str)
    if ids.duplicated().any():
        raise StructureError(f"material_id must be unique; repeated: {sorted(ids[ids.duplicated()].unique())[:5]}")
    if limit:
        table = table.groupby("split", sort=False, group_keys=False).head(limit)
    return table.reset_index(drop=True)


def _table_digest(table: pd.DataFrame) -> str:
    """SHA-256 of a table's column names and values (independent of pandas' hashing and string dtypes)."""
    h = hashlib.sha256(json.dumps([str(c) for c in table.columns]).encode())
    for col in table.columns:
        values = table[col].to_numpy()
        if values.dtype.kind in "biuf":
            h.update(values.dtype.str.encode() + np.ascontiguousarray(values).tobytes())
        else:
            h.update("\x1f".join(map(str, values)).encode())
        h.update(b"\x1e")
    return h.hexdigest()


@lru_cache(maxsize=1)
def _code_digest() -> str:
    """Hash of the code and libraries computing the arrays: a changed simulator or neighbour list misses the cache."""
    from importlib import metadata

    h = hashlib.sha256()
    for name in ("physics/xrd.py", "physics/profile.py", "datasets/graphs.py", "datasets/structures.py",
                 "datasets/dataset.py"):
        h.update((PACKAGE_DIR / name).read_bytes())
    for dist in ("pymatgen", "mace-torch", "matscipy", "numpy"):
        try:
            h.update(f"{dist}={metadata.version(dist)};".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=?;".encode())
    return h.hexdigest()


def dataset_key(table: pd.DataFrame, cfg: Config, extra: object = ()) -> str:
    """The cache key: a hash of the table's content, the config that shapes the arrays, the code that computes
    them (:mod:`eacnn.physics.xrd`, :mod:`eacnn.physics.profile`, :mod:`eacnn.datasets.graphs`, this module;
    pymatgen, mace-torch, matscipy, numpy versions)
    and the format version."""
    recipe = {
        "format_version": FORMAT_VERSION,
        "code": _code_digest(),
        "table": _table_digest(table),
        "xrd": dataclasses.asdict(cfg.xrd),
        "data": dataclasses.asdict(cfg.data),
        "r_max": cfg.model.r_max,
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def assign_splits(mp20_split: np.ndarray, ids: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Our split of each row: MP-20 ``test`` -> "test"; of the rest, ``round(val_fraction * n)`` -> "val", else "train".

    The validation rows are those with the smallest hash of (seed, material id): exact in count, reproducible,
    and independent of row order.
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction!r}")
    out = np.where(np.asarray(mp20_split) == "test", "test", "train").astype("<U5")
    pool = np.flatnonzero(out == "train")
    rank = [hashlib.blake2b(f"{seed}:{ids[i]}".encode(), digest_size=8).digest() for i in pool]
    n_val = int(round(val_fraction * len(pool)))
    out[pool[np.argsort(np.array(rank, dtype="S8"), kind="stable")[:n_val]]] = "val"
    return out


# ---------------------------------------------------------------------------------------------------------------
# The build (one worker task = one chunk of rows)
# ---------------------------------------------------------------------------------------------------------------
def _xrd_reason(err: Exception) -> str:
    if isinstance(err, UnknownElementError):
        return "unknown element"
    if isinstance(err, NoReflectionsError):
        return "no reflections"
    return "invalid structure"


def _build_chunk(task: tuple) -> dict:
    """Structures, checks, XRD and graphs of one chunk of rows; skipped rows come back with their reasons."""
    from eacnn.datasets.graphs import structure_graph
    from eacnn.physics.xrd import simulate_batch

    rows, xrd_cfg, max_sites, disorder, r_max = task
    skipped: list[tuple[int, str, str]] = []  # (row in chunk, reason, detail)
    keep, structures = [], []
    for k, row in enumerate(rows):
        mid = row["material_id"]
        try:
            s = row_to_structure(row)
        except Exception as err:  # any unreadable row is reported, whatever pymatgen raised
            skipped.append((k, "parse error", str(err)))
            continue
        if max_sites and len(s) > max_sites:
            skipped.append((k, "too many sites", f"{mid}: {len(s)} sites > max_sites={max_sites}"))
            continue
        try:
            check_structure(s, 0, disorder, label=mid)
        except DisorderError as err:
            skipped.append((k, "disorder", str(err)))
            continue
        except StructureError as err:
            skipped.append((k, "invalid structure", str(err)))
            continue
        keep.append(k)
        structures.append(s)

    sim = simulate_batch(structures, xrd_cfg, n_jobs=1, progress=False, ids=[rows[k]["material_id"] for k in keep])
    out = {"rows": [], "vectors": [], "tt": [], "inten": [], "graphs": [], "structures": []}
    for j, (k, s) in enumerate(zip(keep, structures)):
        if j in sim.failures:
            skipped.append((k, _xrd_reason(sim.failures[j]), str(sim.failures[j])))
            continue
        if not np.all(np.isfinite(sim.vectors[j])) or sim.vectors[j].max() <= 0:
            skipped.append((k, "no reflections", f"{rows[k]['material_id']}: no intensity inside the 2θ window"))
            continue
        try:
            graph = structure_graph(s, r_max)
        except StructureError as err:
            skipped.append((k, "isolated atom", f"{rows[k]['material_id']}: {err}"))
            continue
        except Exception as err:  # a neighbour-list failure is reported like any other unusable structure
            skipped.append((k, "graph error", f"{rows[k]['material_id']}: {type(err).__name__}: {err}"))
            continue
        out["rows"].append(k)
        out["vectors"].append(sim.vectors[j])
        out["tt"].append(np.asarray(sim.stick_two_theta[j], dtype=np.float32))
        out["inten"].append(np.asarray(sim.stick_intensity[j], dtype=np.float32))
        out["graphs"].append({
            "z": graph["atomic_numbers"].astype(np.uint8),
            "pos": graph["positions"],
            "cell": graph["cell"],
            "edge_index": graph["edge_index"].astype(np.int32),
            "unit_shifts": graph["unit_shifts"],
        })  # fmt: skip
        out["structures"].append((np.asarray(s.lattice.matrix), np.asarray(s.frac_coords), rows[k]["species"]))
    out["skipped"] = sorted(skipped)
    return out


def _strings(column: pd.Series) -> np.ndarray:
    """A fixed-width unicode array (object arrays would need pickle to load)."""
    return np.asarray(column.astype(str).to_numpy(), dtype=str)


def _offsets(counts: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)


def _assemble(table: pd.DataFrame, parts: list[dict], cfg: Config, pre_skipped: list) -> dict[str, np.ndarray]:
    """Concatenate the chunks into the cached arrays (graph arrays concatenated, with offsets)."""
    rows = np.array([start + k for start, part in parts for k in part["rows"]], dtype=np.int64)
    if len(rows) == 0:
        reasons = _skip_summary(parts, pre_skipped)
        raise StructureError(f"no usable structure among {len(table)} rows; reasons: {reasons}")
    done = [p for _, p in parts]
    graphs = [g for p in done for g in p["graphs"]]
    sites = [s for p in done for s in p["structures"]]
    tt = [t for p in done for t in p["tt"]]
    ids, mp20 = _strings(table["material_id"]), _strings(table["split"])
    ours = assign_splits(mp20, ids, cfg.data.val_fraction, cfg.data.split_seed)
    skipped = [(ids[start + k], reason, detail) for start, part in parts for k, reason, detail in part["skipped"]]
    skipped = [(str(i), "read error", str(d)) for i, d in pre_skipped] + skipped
    return {
        "ids": ids[rows],
        "split": ours[rows],
        "mp20_split": mp20[rows],
        "formula": _strings(table["formula"])[rows],
        "spacegroup_number": table["spacegroup_number"].to_numpy().astype(np.int16)[rows],
        "spacegroup_symbol": _strings(table["spacegroup_symbol"])[rows],
        "crystal_system": _strings(table["crystal_system"])[rows],
        "vectors": np.stack([v for p in done for v in p["vectors"]]).astype(np.float32),  # [n, n_bins]
        "stick_offsets": _offsets([len(t) for t in tt]),  # [n + 1]
        "stick_two_theta": np.concatenate(tt).astype(np.float32),  # [P] degrees
        "stick_intensity": np.concatenate([i for p in done for i in p["inten"]]).astype(np.float32),  # [P]
        "node_offsets": _offsets([len(g["z"]) for g in graphs]),  # [n + 1]
        "atomic_numbers": np.concatenate([g["z"] for g in graphs]),  # [N] uint8
        "positions": np.concatenate([g["pos"] for g in graphs]).astype(np.float32),  # [N, 3] Å
        "cell": np.stack([g["cell"] for g in graphs]).astype(np.float32),  # [n, 3, 3] Å
        "edge_offsets": _offsets([g["edge_index"].shape[1] for g in graphs]),  # [n + 1]
        "edge_index": np.concatenate([g["edge_index"] for g in graphs], axis=1),  # [2, E] int32, within graph
        "unit_shifts": np.concatenate([g["unit_shifts"] for g in graphs]).astype(np.int8),  # [E, 3]
        "lattice": np.stack([s[0] for s in sites]).astype(np.float64),  # [n, 3, 3] Å, exact cell
        "frac_coords": np.concatenate([s[1] for s in sites]).astype(np.float64),  # [N, 3]
        "species_json": np.array([s[2].encode() for s in sites], dtype=np.bytes_),  # [n] the table's species
        "skipped_id": np.array([s[0] for s in skipped], dtype=str),
        "skipped_reason": np.array([s[1] for s in skipped], dtype=str),
        "skipped_detail": np.array([s[2] for s in skipped], dtype=str),
    }


def _skip_summary(parts: list, pre_skipped: list) -> dict[str, int]:
    counts: dict[str, int] = {"read error": len(pre_skipped)} if pre_skipped else {}
    for _, part in parts:
        for _, reason, _ in part["skipped"]:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def _n_workers(n_jobs: int) -> int:
    if n_jobs == -1:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if n_jobs < 1:
        raise ConfigError(f"n_jobs must be -1 (all cores) or >= 1, got {n_jobs!r}")
    return n_jobs


def _part_arrays(part: dict) -> dict[str, np.ndarray]:
    """One chunk's result as plain arrays (no pickle), for :func:`_save_part`."""
    g = part["graphs"]
    lat = [s[0] for s in part["structures"]]
    return {
        "rows": np.asarray(part["rows"], np.int64),
        "vectors": np.asarray(part["vectors"], np.float32).reshape(len(part["rows"]), -1),
        "tt": np.concatenate(part["tt"]) if part["tt"] else np.zeros(0, np.float32),
        "inten": np.concatenate(part["inten"]) if part["inten"] else np.zeros(0, np.float32),
        "stick_offsets": _offsets([len(t) for t in part["tt"]]),
        "z": np.concatenate([x["z"] for x in g]) if g else np.zeros(0, np.uint8),
        "pos": np.concatenate([x["pos"] for x in g]) if g else np.zeros((0, 3)),
        "atom_offsets": _offsets([len(x["z"]) for x in g]),
        "cell": np.asarray([x["cell"] for x in g]).reshape(-1, 3, 3),
        "edge_index": np.concatenate([x["edge_index"] for x in g], axis=1) if g else np.zeros((2, 0), np.int32),
        "unit_shifts": np.concatenate([x["unit_shifts"] for x in g]) if g else np.zeros((0, 3)),
        "edge_offsets": _offsets([x["edge_index"].shape[1] for x in g]),
        "lattice": np.asarray(lat).reshape(-1, 3, 3),
        "frac": np.concatenate([s[1] for s in part["structures"]]) if lat else np.zeros((0, 3)),
        "species": np.asarray([s[2] for s in part["structures"]], dtype=str),
        "skip_row": np.asarray([k for k, _, _ in part["skipped"]], np.int64),
        "skip_reason": np.asarray([r for _, r, _ in part["skipped"]], dtype=str),
        "skip_detail": np.asarray([d for _, _, d in part["skipped"]], dtype=str),
    }


def _part_from_arrays(a: dict) -> dict:
    """The chunk result :func:`_build_chunk` returned, from :func:`_part_arrays`."""
    so, ao, eo = a["stick_offsets"], a["atom_offsets"], a["edge_offsets"]
    n = len(a["rows"])
    return {
        "rows": a["rows"].tolist(), "vectors": list(a["vectors"]),
        "tt": [a["tt"][so[i]:so[i + 1]] for i in range(n)], "inten": [a["inten"][so[i]:so[i + 1]] for i in range(n)],
        "graphs": [{"z": a["z"][ao[i]:ao[i + 1]], "pos": a["pos"][ao[i]:ao[i + 1]], "cell": a["cell"][i],
                    "edge_index": a["edge_index"][:, eo[i]:eo[i + 1]], "unit_shifts": a["unit_shifts"][eo[i]:eo[i + 1]]}
                   for i in range(n)],
        "structures": [(a["lattice"][i], a["frac"][ao[i]:ao[i + 1]], str(a["species"][i])) for i in range(n)],
        "skipped": [(int(k), str(r), str(d)) for k, r, d in zip(a["skip_row"], a["skip_reason"], a["skip_detail"])],
    }


def _partial_dir(key: str) -> Path:
    """Where a build keeps its finished chunks until the whole data set is saved (resume after an interruption)."""
    return cache_dir() / f"partial-{key[:20]}"


def _save_part(folder: Path, index: int, part: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, **_part_arrays(part))
    atomic_write_bytes(folder / f"chunk-{index:06d}.npz", buf.getvalue())


def _load_part(folder: Path, index: int) -> dict | None:
    path = folder / f"chunk-{index:06d}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return _part_from_arrays({k: z[k] for k in z.files})
    except Exception as err:  # a damaged chunk (killed mid-write, full disk) is computed again
        log.warning("finished chunk %s unreadable (%s); computing it again", path.name, err)
        return None


def _compute(table: pd.DataFrame, cfg: Config, pre_skipped: list, progress: bool, n_jobs: int, key: str = "",
             cluster: str | None = None) -> dict:
    """Every chunk of rows (:data:`CHUNK_ROWS`) through :func:`_build_chunk`: on this machine's cores, or on the
    workers of a Dask cluster (``cluster``: its scheduler address). Each finished chunk is kept under
    :func:`_partial_dir` as it arrives, so an interrupted build resumes without redoing it; the results are
    assembled in row order, so every engine gives the same arrays."""
    records = table[["material_id", "lattice_matrix", "species", "frac_coords"]].astype(str).to_dict("records")
    starts = list(range(0, len(records), CHUNK_ROWS))
    tasks = [
        (records[i : i + CHUNK_ROWS], cfg.xrd, cfg.data.max_sites, cfg.data.disorder, cfg.model.r_max) for i in starts
    ]
    partial = _partial_dir(key) if key else None
    done: dict[int, dict] = {}
    if partial is not None and partial.is_dir():
        done = {i: p for i in range(len(tasks)) if (p := _load_part(partial, i)) is not None}
        if done:
            log.info("resuming the build: %d of %d chunks were finished before", len(done), len(tasks))
    todo = [i for i in range(len(tasks)) if i not in done]
    bar = tqdm(total=len(records), desc="building dataset", unit="structure", disable=not progress)
    bar.update(sum(len(tasks[i][0]) for i in done))

    def finished(i: int, part: dict) -> None:
        done[i] = part
        if partial is not None:
            try:
                _save_part(partial, i, part)
            except OSError as err:  # no room to keep it: the build goes on, only resuming is lost
                log.warning("could not keep finished chunk %d (%s)", i, err)
        bar.update(len(tasks[i][0]))

    workers = min(_n_workers(n_jobs), len(todo)) if todo else 0
    if todo and cluster:
        from eacnn.datasets.cluster import map_on_cluster

        for i, part in map_on_cluster(cluster, _build_chunk, [tasks[i] for i in todo], todo):
            finished(i, part)
    elif workers > 1:
        from eacnn.datasets.graphs import mace_neighborhood

        mace_neighborhood()  # imported once here (quietly), inherited by forked workers

        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, part in zip(todo, pool.map(_build_chunk, [tasks[i] for i in todo])):
                finished(i, part)
    else:
        for i in todo:
            finished(i, _build_chunk(tasks[i]))
    bar.close()
    return _assemble(table, [(starts[i], done[i]) for i in range(len(tasks))], cfg, pre_skipped)


# ---------------------------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------------------------
def _cache_files(key: str) -> tuple[Path, Path]:
    base = cache_dir() / f"dataset-{key[:20]}"
    return base.with_suffix(".npz"), base.with_suffix(".json")


def _check_arrays(a: dict[str, np.ndarray], n_bins: int) -> None:
    """Raise CacheError unless the arrays are mutually consistent (shapes, offsets, in-graph edge indices)."""
    n = len(a["ids"])

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CacheError(f"inconsistent arrays: {what}")

    for name in ("split", "mp20_split", "formula", "spacegroup_number", "spacegroup_symbol", "crystal_system",
                 "species_json"):  # fmt: skip
        need(a[name].shape == (n,), f"{name} has shape {a[name].shape}, expected ({n},)")
    need(a["vectors"].shape == (n, n_bins), f"vectors {a['vectors'].shape} != ({n}, {n_bins})")
    need(bool(np.all(np.isfinite(a["vectors"]))), "vectors hold NaN/inf")
    need(set(np.unique(a["split"])) <= set(SPLITS), f"unknown split labels {np.unique(a['split'])}")
    for off, members in (("stick_offsets", ("stick_two_theta", "stick_intensity")),
                         ("node_offsets", ("atomic_numbers", "positions", "frac_coords")),
                         ("edge_offsets", ("unit_shifts",))):  # fmt: skip
        o = a[off]
        need(o.shape == (n + 1,) and o[0] == 0 and bool(np.all(np.diff(o) >= 0)), f"{off} malformed")
        for m in members:
            need(len(a[m]) == o[-1], f"{m} has {len(a[m])} rows, {off} ends at {o[-1]}")
    need(a["edge_index"].shape == (2, a["edge_offsets"][-1]), f"edge_index shape {a['edge_index'].shape}")
    need(a["cell"].shape == (n, 3, 3) and a["lattice"].shape == (n, 3, 3), "cell/lattice shapes")
    n_nodes = np.repeat(np.diff(a["node_offsets"]), np.diff(a["edge_offsets"]))  # [E] nodes of each edge's graph
    need(bool(np.all((a["edge_index"] >= 0) & (a["edge_index"] < n_nodes))), "edge_index points outside its graph")


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` (readable by ``np.load``) whose bytes depend only on the arrays: fixed member
    timestamps, so two builds of one key write identical files, and fast deflate (level 1; level 6 is ~10 % smaller
    and ~2.5x slower)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    return buf.getvalue()


def _save(arrays: dict[str, np.ndarray], key: str, cfg: Config) -> tuple[Path, dict]:
    npz_path, manifest_path = _cache_files(key)
    payload = _npz_bytes(arrays)
    manifest = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "n": int(len(arrays["ids"])),
        "shapes": {k: list(v.shape) for k, v in arrays.items()},
        "config": cfg.to_dict(),
    }
    atomic_write_bytes(npz_path, payload)
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return npz_path, manifest


def _load(key: str, cfg: Config) -> dict[str, np.ndarray] | None:
    """The cached arrays of ``key``, or None (a warning says why, unless the cache simply does not exist)."""
    npz_path, manifest_path = _cache_files(key)
    if not npz_path.exists() and not manifest_path.exists():
        return None
    try:
        if not manifest_path.is_file():
            raise CacheError("manifest missing (interrupted write?)")
        if not npz_path.is_file():
            raise CacheError("array file missing")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"format version {manifest.get('format_version')!r} != {FORMAT_VERSION}")
        if manifest.get("key") != key:
            raise CacheError(f"stale: made for key {str(manifest.get('key'))[:20]}…, expected {key[:20]}…")
        payload = npz_path.read_bytes()
        digest = hashlib.sha256(payload).hexdigest()
        if digest != manifest.get("sha256"):
            raise CacheError(
                f"checksum mismatch ({len(payload)} bytes on disk, {manifest.get('bytes')} written): "
                "corrupt or truncated"
            )
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        if {k: list(v.shape) for k, v in arrays.items()} != manifest.get("shapes"):
            raise CacheError("array names or shapes differ from the manifest")
        _check_arrays(arrays, cfg.xrd.n_bins)
    except Exception as err:  # whatever is wrong with the files, the cache is rebuilt rather than trusted
        log.warning("dataset cache %s is unusable and will be rebuilt: %s", npz_path.name, err)
        return None
    return arrays


def build_dataset(
    cfg: Config, structures_table: pd.DataFrame | None = None, progress: bool = True, n_jobs: int = -1,
    cluster: str | None = None,
) -> "CrystalDataset":
    """Vectors, sticks, graphs and labels of every usable structure; built once, then loaded from the cache.

    Args:
        cfg: the run's config (``cfg.xrd``, ``cfg.data``, ``cfg.model.r_max`` shape the result).
        structures_table: a structure table (:mod:`eacnn.datasets.structures` schema); ``cfg.data.source`` when None.
        progress: show progress bars.
        n_jobs: worker processes for the build (-1 = all cores, 1 = this process).
        cluster: the address of a Dask scheduler (``tcp://host:8786``) whose workers build the chunks instead
            (``pip install "eacnn[cluster]"``); the data set is identical to a local build.

    Returns:
        The dataset; ``dataset.from_cache`` says whether it was loaded rather than built.
    """
    data = cfg.data
    if data.disorder not in ("weighted", "reject") or not 0 <= data.val_fraction < 1 or data.max_structures < 0:
        raise ConfigError(
            f"bad data settings: disorder={data.disorder!r} ('weighted' or 'reject'), "
            f"val_fraction={data.val_fraction!r} ([0, 1)), max_structures={data.max_structures!r} (>= 0)"
        )
    if structures_table is None:
        table, pre_skipped = source_table(cfg)
    else:
        table, pre_skipped = structures_table, []
    table = _first_per_split(table, cfg.data.max_structures)
    key = dataset_key(table, cfg, extra=pre_skipped)
    arrays = _load(key, cfg)
    if arrays is not None:
        log.info(
            "dataset %s… loaded from cache (%d structures, %d skipped when built)",
            key[:12], len(arrays["ids"]), len(arrays["skipped_id"]),
        )  # fmt: skip
        return CrystalDataset(arrays, key, cfg, from_cache=True, cache_path=_cache_files(key)[0])
    log.info("building dataset %s… from %d structures", key[:12], len(table))
    arrays = _compute(table, cfg, pre_skipped, progress, n_jobs, key, cluster)
    path, _ = _save(arrays, key, cfg)
    shutil.rmtree(_partial_dir(key), ignore_errors=True)  # the whole data set is saved: its chunks are not needed
    ds = CrystalDataset(arrays, key, cfg, from_cache=False, cache_path=path)
    for row in ds.skipped.itertuples():
        log.info("skipped %s (%s): %s", row.material_id, row.reason, row.detail)
    if len(ds.skipped):
        counts = ds.skipped["reason"].value_counts().to_dict()
        log.warning(
            "%d of %d structures skipped %s; first: %s",
            len(ds.skipped), len(table), counts, ds.skipped.head(3).to_dict("records"),
        )  # fmt: skip
    return ds


# ---------------------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------------------
class CrystalDataset:
    """Everything the two towers consume, indexed 0..n-1 in table order.

    Attributes:
        ids: [n] material ids (str).
        split: [n] "train", "val" or "test".
        vectors: [n, n_bins] float32 XRD model inputs (each row max 1).
        labels: DataFrame with material_id, formula, spacegroup_number, spacegroup_symbol, crystal_system,
            mp20_split, split.
        skipped: DataFrame (material_id, reason, detail) of every input structure left out.
        key: the cache key (hex SHA-256).
        config: the Config it was built with.
        from_cache: True when loaded from the cache rather than built.
        cache_path: the ``.npz`` holding the arrays.
    """

    def __init__(self, arrays: dict[str, np.ndarray], key: str, config: Config, from_cache: bool, cache_path: Path):
        self._a = arrays
        self.key = key
        self.config = config
        self.from_cache = from_cache
        self.cache_path = Path(cache_path)
        self.ids = arrays["ids"]
        self.split = arrays["split"]
        self.vectors = arrays["vectors"]
        self.labels = pd.DataFrame({name: arrays["ids" if name == "material_id" else name] for name in _LABELS})
        self.labels["spacegroup_number"] = self.labels["spacegroup_number"].astype(np.int64)
        self.skipped = pd.DataFrame({
            "material_id": arrays["skipped_id"],
            "reason": arrays["skipped_reason"],
            "detail": arrays["skipped_detail"],
        })  # fmt: skip
        self._reflections: dict = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        counts = {s: int((self.split == s).sum()) for s in SPLITS}
        return f"CrystalDataset(n={len(self)}, {counts}, skipped={len(self.skipped)}, key={self.key[:12]}…)"

    def indices(self, split: str) -> np.ndarray:
        """Positions of one split ("train", "val" or "test"), ascending, int64."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        return np.flatnonzero(self.split == split)

    def sticks(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Peak positions [p] (degrees 2θ) and areas [p] (strongest = 1) of structure ``i``."""
        a, b = self._a["stick_offsets"][i : i + 2]
        return self._a["stick_two_theta"][a:b].astype(np.float64), self._a["stick_intensity"][a:b].astype(np.float64)

    def reflections(self, i: int):
        """Structure ``i``'s reflections one by one (:func:`eacnn.physics.xrd.indexed_reflections`: Miller indices,
        areas, reciprocal metric), for fits that strain its cell; computed on first use (about 1 ms) and kept."""
        if i not in self._reflections:
            from eacnn.physics.xrd import indexed_reflections

            self._reflections[i] = indexed_reflections([self.structure(int(i))], self.config.xrd)[0]
        return self._reflections[i]

    def graph(self, i: int) -> dict[str, np.ndarray]:
        """The periodic graph of structure ``i`` in :func:`eacnn.datasets.graphs.structure_graph`'s format."""
        a, b = self._a["node_offsets"][i : i + 2]
        e0, e1 = self._a["edge_offsets"][i : i + 2]
        return {
            "atomic_numbers": self._a["atomic_numbers"][a:b].astype(np.int64),  # [n]
            "positions": self._a["positions"][a:b].copy(),  # [n, 3] Å
            "cell": self._a["cell"][i].copy(),  # [3, 3] Å
            "edge_index": self._a["edge_index"][:, e0:e1].astype(np.int64),  # [2, E]
            "unit_shifts": self._a["unit_shifts"][e0:e1].copy(),  # [E, 3] int8
        }

    def structure(self, i: int):
        """The pymatgen ``Structure`` of row ``i`` (exact cell and coordinates of the source table)."""
        from pymatgen.core import Lattice, Structure

        a, b = self._a["node_offsets"][i : i + 2]
        species = json.loads(self._a["species_json"][i].decode())
        return Structure(Lattice(self._a["lattice"][i]), species, self._a["frac_coords"][a:b])


# ---------------------------------------------------------------------------------------------------------------
# Leakage check
# ---------------------------------------------------------------------------------------------------------------
def count_cross_split_duplicates(
    dataset: CrystalDataset,
    train_splits: tuple[str, ...] = ("train", "val"),
    test_splits: tuple[str, ...] = ("test",),
    matcher=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Pairs of (training, test) structures that pymatgen's ``StructureMatcher`` calls the same crystal.

    Only structures sharing a reduced formula are compared, so the cost is a few matches per formula.

    Args:
        dataset: the dataset to check.
        train_splits, test_splits: the two sides.
        matcher: a ``StructureMatcher``; pymatgen's defaults (ltol 0.2, stol 0.3, angle_tol 5°) when None.
        progress: show a progress bar.

    Returns:
        DataFrame with columns train_id, test_id, formula; one row per matching pair (its length is the count).
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = matcher or StructureMatcher()
    formula = dataset.labels["formula"].to_numpy()
    side_a = np.isin(dataset.split, train_splits)
    side_b = np.isin(dataset.split, test_splits)
    shared = sorted(set(formula[side_a]) & set(formula[side_b]))
    pairs = []
    for f in tqdm(shared, desc="matching formulas", unit="formula", disable=not progress):
        same = formula == f
        train_idx, test_idx = np.flatnonzero(same & side_a), np.flatnonzero(same & side_b)
        train_s = {i: dataset.structure(i) for i in train_idx}
        for j in test_idx:
            sj = dataset.structure(j)
            pairs.extend((dataset.ids[i], dataset.ids[j], f) for i in train_idx if matcher.fit(train_s[i], sj))
    return pd.DataFrame(pairs, columns=["train_id", "test_id", "formula"])
