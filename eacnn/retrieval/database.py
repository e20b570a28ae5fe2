"""Saved databases: everything a search needs, on disk, opened in milliseconds without torch.

A database folder holds, for one model (checkpoint) and one set of sources:

==================  ==============================================================================================
``manifest.json``   format, the checkpoint's SHA-256, the sources and their content hashes, the calibrated verdict
                    threshold, the index kind and its measured recall, and the SHA-256 of every file below
``labels.csv.gz``   one row per candidate: material_id, formula, spacegroup_symbol/number, crystal_system, source,
                    elements (space-separated symbols)
``embeddings.npy``  [n, d] float32 L2-normalised structure embeddings (memory-mapped on open)
``tower.npz``       the model's XRD tower as numpy arrays (:mod:`eacnn.retrieval.pattern_tower`)
``sticks.npz``      every candidate's reflections: offsets [n + 1], two_theta [P] (degrees), area [P]
``vectors.npy``     [n, n_bins] float16 clean simulated patterns (plots)
``reflections.npz`` every candidate's reflections one by one, for the cell fit
                    (:func:`eacnn.retrieval.identify.refine_cell`): offsets [n + 1], hkl [R, 3], area [R],
                    metric [n, 6] (the reciprocal metric); a database without it refines lattice scales only
``index.faiss``     above :data:`EXACT_LIMIT` candidates: an inverted-file FAISS index (exact search below)
==================  ==============================================================================================

Writing goes to a temporary folder renamed into place, so a reader sees a whole database or none. The embedded
database of the shipped model is assembled on first use from embeddings shipped in the package
(``eacnn/data/databases``, float16, verified by SHA-256) and cached under :func:`eacnn.paths.cache_dir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from eacnn.config import MixtureConfig, SearchConfig
from eacnn.errors import EACNNError
from eacnn.integrity import sha256_of
from eacnn.paths import DATA_DIR, atomic_write_bytes, cache_dir, output_folder
from eacnn.retrieval.pattern_tower import PatternTower

log = logging.getLogger(__name__)

__all__ = ["SavedDatabase", "open_database", "write_database", "build_database", "default_database", "cached_database",
           "database_key", "file_sha256", "reflections_arrays", "EXACT_LIMIT", "SHIPPED_DIR"]

FORMAT_VERSION = 1
#: the optional files a cached database is built with (part of its cache key)
CACHED_FILES = "sticks vectors reflections"
#: Up to this many candidates a search is exact (a matrix-vector product); above, an IVF index answers.
EXACT_LIMIT = 50_000
#: Recall of the search's shortlist (the best :data:`SHORTLIST` by the exact product) the IVF index must reach on
#: perturbed queries at build time (``nprobe`` is raised until it does); stated in the manifest with recall@10.
TARGET_RECALL = 0.99
SHORTLIST = SearchConfig().rerank_depth
#: The shipped embeddings of the embedded database for the shipped checkpoint.
SHIPPED_DIR = DATA_DIR / "databases"
LABEL_COLUMNS = ["material_id", "formula", "spacegroup_symbol", "spacegroup_number", "crystal_system", "source",
                 "elements"]


file_sha256 = sha256_of  # one hash of files for the whole package (eacnn.integrity)


def _stamp_path(folder: Path) -> Path:
    """Where the digests already checked for ``folder`` are remembered (by file size and mtime): the user's cache,
    not the database folder, so a database on read-only storage is checked too."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24]
    return cache_dir() / "verified" / f"{key}.json"


def verify_database(folder: Path, manifest: dict) -> None:
    """Check every file of a saved database against the SHA-256 its manifest records.

    A file whose size and mtime match a digest checked before (:func:`_stamp_path`) is not hashed again, so a large
    database is hashed once; any edit, truncation or flipped bit changes the digest and is caught. The 90 MB
    default database hashes in about 0.06 s on one core.

    Raises:
        EACNNError: a file is missing or its digest differs (the message names the file and what to do).
    """
    try:
        stamp_file = _stamp_path(folder)
        stamps = json.loads(stamp_file.read_text()) if stamp_file.is_file() else {}
    except (OSError, ValueError):
        stamp_file, stamps = None, {}
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise EACNNError(f"{folder / 'manifest.json'} lists no file digests: the database is damaged or not eacnn's; "
                         f"build it again with `eacnn database build`")
    # a stamp is trusted only for files last changed well before it was written (as git treats a "racily clean"
    # index): file times are coarse, and an edit within the same clock tick would keep size and mtime
    trusted_before = int(stamps.get("_written_ns", 0)) - 2_000_000_000
    fresh: dict = {"_written_ns": time.time_ns()}
    hashed = False
    for name, digest in files.items():
        path = folder / name
        try:
            st = path.stat()
        except OSError as err:
            raise EACNNError(f"{path} is missing or unreadable ({err.strerror}): the database is damaged; build it "
                             f"again with `eacnn database build`") from err
        seen = [st.st_size, st.st_mtime_ns, digest]
        if stamps.get(name) != seen or st.st_mtime_ns >= trusted_before:
            hashed = True
            if sha256_of(path) != digest:
                raise EACNNError(f"{path} does not match the SHA-256 its manifest records: the database is damaged "
                                 f"or was edited; delete {folder} and build it again with `eacnn database build`")
        fresh[name] = seen
    if stamp_file is not None and hashed:
        try:
            atomic_write_bytes(stamp_file, json.dumps(fresh).encode())
        except OSError:  # a read-only cache: the files are hashed again next time, which is only slower
            pass


def database_key(checkpoint_sha: str, sources: Sequence[str]) -> str:
    """Cache key of a database: the checkpoint's hash and each source's content (embedded CSV, CIF files), and the
    shipped embeddings' record (its calibrated verdict: refitting it must not leave a stale cache behind), and
    :data:`CACHED_FILES` (a cache built before a file was added is built again rather than searched without it)."""
    h = hashlib.sha256(checkpoint_sha.encode() + CACHED_FILES.encode())
    for source in sources:
        h.update(b"\x1e" + source.encode())
        if source == "embedded":
            from eacnn.datasets.structures import EMBEDDED_FILE

            h.update(file_sha256(EMBEDDED_FILE).encode())
            if (SHIPPED_DIR / "embedded.json").is_file():
                h.update(file_sha256(SHIPPED_DIR / "embedded.json").encode())
        elif source.startswith("mp-api"):
            pass  # the download itself is cached by the Materials Project's database version (datasets.mp)
        else:
            from eacnn.datasets.structures import cif_files, is_cif_archive

            for f in [Path(source)] if is_cif_archive(source) else cif_files(source):
                h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:20]


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SavedDatabase:
    """An opened database folder (see the module docstring): what :func:`eacnn.retrieval.identify.identify` and the
    mixture search read."""

    folder: Path
    manifest: dict
    labels: pd.DataFrame  # LABEL_COLUMNS
    embeddings: np.ndarray  # [n, d] float32 (memory-mapped)
    tower: PatternTower
    _sticks: dict | None = None
    _reflections: dict | None = None
    _vectors: np.ndarray | None = None
    _elements: list | None = None
    _index: object = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def threshold(self) -> float:
        """The calibrated "no confident match" similarity threshold."""
        return float(self.manifest["calibration"]["threshold"])

    @property
    def elements(self) -> list[set]:
        """[n] the element symbols of each candidate (parsed on first use)."""
        if self._elements is None:
            self._elements = [set(s.split()) for s in self.labels["elements"].fillna("")]
        return self._elements

    @property
    def vectors(self) -> np.ndarray:
        """[n, n_bins] clean simulated patterns (float32 view of the float16 file)."""
        if self._vectors is None:
            self._vectors = np.load(self.folder / "vectors.npy", mmap_mode="r")
        return self._vectors

    def sticks(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Reflections (2θ [p] in degrees, areas [p]) of candidate ``row``."""
        if self._sticks is None:
            with np.load(self.folder / "sticks.npz") as f:
                self._sticks = {k: f[k] for k in f.files}
        a, b = self._sticks["offsets"][row : row + 2]
        return self._sticks["two_theta"][a:b], self._sticks["area"][a:b]

    @property
    def has_reflections(self) -> bool:
        """Whether the database holds each candidate's reflections one by one (``reflections.npz``)."""
        return (self.folder / "reflections.npz").is_file()

    def reflections(self, row: int):
        """Candidate ``row``'s :class:`eacnn.physics.xrd.IndexedReflections` (None when it has none)."""
        from eacnn.physics.xrd import IndexedReflections

        if self._reflections is None:
            with np.load(self.folder / "reflections.npz") as f:
                self._reflections = {k: f[k] for k in f.files}
        a, b = self._reflections["offsets"][row : row + 2]
        if b == a:
            return None
        r = self._reflections
        return IndexedReflections(r["hkl"][a:b].astype(np.float64), r["area"][a:b].astype(np.float64), r["metric"][row])

    def scores(self, z: np.ndarray, k: int, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities [k], rows [k]) of the ``k`` candidates most similar to one embedding ``z`` [d], best first,
        among the rows where ``keep`` [n] is True (all when None)."""
        z = np.asarray(z, dtype=np.float32)
        if keep is None and self.manifest["index"]["kind"] == "ivf":
            index = self._faiss()
            sim, rows = index.search(z[None], k)
            ok = rows[0] >= 0
            return sim[0][ok], rows[0][ok].astype(np.int64)
        sim = np.asarray(self.embeddings @ z)  # [n]
        idx = np.arange(len(sim)) if keep is None else np.flatnonzero(keep)
        k = min(k, len(idx))
        part = idx[np.argpartition(-sim[idx], k - 1)[:k]] if 0 < k < len(idx) else idx
        best = part[np.argsort(-sim[part], kind="stable")][:k]
        return sim[best], best

    def _faiss(self):
        if self._index is None:
            import faiss  # optional dependency: only large databases need it

            self._index = faiss.read_index(str(self.folder / "index.faiss"))
            self._index.nprobe = int(self.manifest["index"]["nprobe"])
        return self._index


def open_database(folder: str | Path, verify: bool = True) -> SavedDatabase:
    """Open a database folder written by :func:`write_database`, checked against its recorded digests.

    Args:
        verify: check every file's SHA-256 against the manifest (:func:`verify_database`: hashed once, then
            remembered by size and mtime); False only for a folder this process has just written.

    Raises:
        EACNNError: not a database folder, an unknown format, a damaged or edited file.
    """
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise EACNNError(f"{folder} is not an eacnn database (no manifest.json); build one with "
                         f"`eacnn database build SOURCE --out {folder}`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise EACNNError(f"{manifest_path} is unreadable ({err}); rebuild the database") from err
    if manifest.get("format") != FORMAT_VERSION:
        raise EACNNError(f"{folder} has database format {manifest.get('format')!r}, this eacnn reads "
                         f"{FORMAT_VERSION}; rebuild it with `eacnn database build`")
    if not isinstance(manifest, dict):
        raise EACNNError(f"{manifest_path} is not a database manifest; rebuild the database")
    if verify:
        verify_database(folder, manifest)
    try:
        labels = pd.read_csv(folder / "labels.csv.gz", dtype={"material_id": str, "elements": str},
                             keep_default_na=False)
        emb = np.load(folder / "embeddings.npy", mmap_mode="r")
        with np.load(folder / "tower.npz") as f:
            tower = PatternTower({k: f[k] for k in f.files})
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise EACNNError(f"database {folder} is damaged ({type(err).__name__}: {err}); delete it and build again"
                         ) from err
    if emb.shape[0] != len(labels):
        raise EACNNError(f"database {folder}: {emb.shape[0]} embeddings for {len(labels)} labels; rebuild it")
    return SavedDatabase(folder, manifest, labels, emb, tower)


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------
def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _ivf_index(emb: np.ndarray, seed: int = 0) -> tuple[object, dict]:
    """An inner-product IVF index over ``emb`` [n, d], with ``nprobe`` raised until the recall of the shortlist
    (the best :data:`SHORTLIST`) reaches :data:`TARGET_RECALL` on 200 perturbed queries; its recall@10 and
    recall@30 go to the manifest."""
    import faiss  # optional dependency: only large databases need it

    n, d = emb.shape
    nlist = int(np.sqrt(n))  # ~390 lists of ~390 candidates at 150k
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = emb[rng.choice(n, min(n, 40 * nlist), replace=False)]  # FAISS asks for >= 39 per list
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    index.add(np.ascontiguousarray(emb, dtype=np.float32))
    # queries near real candidates (a candidate plus noise, renormalised), as a measured pattern's embedding is
    q = emb[rng.choice(n, 200, replace=False)] + rng.normal(0, 0.05, (200, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = np.argsort(-(q @ emb.T), axis=1)[:, :SHORTLIST]  # [200, k]

    def recall(got: np.ndarray, k: int) -> float:
        return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(exact, got)]))

    nprobe = 1
    while True:
        index.nprobe = min(nprobe, nlist)
        _, got = index.search(q, SHORTLIST)
        if recall(got, SHORTLIST) >= TARGET_RECALL or nprobe >= nlist:
            break
        nprobe *= 2
    return index, {"kind": "ivf", "nlist": nlist, "nprobe": int(index.nprobe), "recall_at_10": round(recall(got, 10), 4),
                   f"recall_at_{SHORTLIST}": round(recall(got, SHORTLIST), 4)}


def write_database(folder: str | Path, labels: pd.DataFrame, embeddings: np.ndarray, tower: dict,
                   calibration: dict, checkpoint_sha: str, sources: Sequence[str], sticks: dict | None = None,
                   vectors: np.ndarray | None = None, xrd: dict | None = None,
                   reflections: dict | None = None, skipped: Sequence[tuple] | None = None) -> Path:
    """Write a database folder atomically (a temporary folder renamed into place).

    Args:
        labels: one row per candidate with :data:`LABEL_COLUMNS`.
        embeddings: [n, d] L2-normalised structure embeddings.
        tower: :func:`eacnn.retrieval.pattern_tower.export_tower` arrays of the same model.
        calibration: at least ``threshold`` (cosine similarity), with how it was fitted.
        checkpoint_sha: SHA-256 of the checkpoint the embeddings come from.
        sticks: ``offsets`` [n + 1], ``two_theta`` [P], ``area`` [P] (optional; needed to refine).
        vectors: [n, n_bins] clean patterns (optional; for plots).
        reflections: :func:`reflections_arrays` of every candidate (optional; needed to fit a strained cell).
        xrd: the model's ``XRDConfig`` as a dict (grid, wavelength, profile), so a search reads patterns as the
            model was trained.
        skipped: (source, name, reason, detail) of every structure of the sources that is not in the database (an
            unreadable file, one that cannot be simulated...): written to ``skipped.csv`` and counted in the
            manifest, so nothing is dropped silently.
    """
    folder = output_folder(folder)  # never replaces a folder that is not an eacnn database
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise EACNNError(f"database labels lack the columns {missing}")
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(labels) or emb.shape[0] == 0:
        raise EACNNError(f"database needs [n, d] embeddings for its {len(labels)} labels, got {emb.shape}")
    tmp = folder.with_name(folder.name + f".{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    buf = io.BytesIO()
    labels[LABEL_COLUMNS].to_csv(buf, index=False, compression={"method": "gzip", "mtime": 0})
    files = {"labels.csv.gz": buf.getvalue(), "embeddings.npy": _npy_bytes(emb), "tower.npz": _npz_bytes(tower)}
    if sticks is not None:
        files["sticks.npz"] = _npz_bytes(sticks)
    if reflections is not None:
        files["reflections.npz"] = _npz_bytes(reflections)
    if vectors is not None:
        files["vectors.npy"] = _npy_bytes(np.asarray(vectors, dtype=np.float16))
    if skipped:
        report = pd.DataFrame(list(skipped), columns=["source", "name", "reason", "detail"])
        files["skipped.csv"] = report.to_csv(index=False).encode()
    try:
        return _write_folder(folder, tmp, files, emb, calibration, checkpoint_sha, sources, xrd,
                             len(skipped) if skipped else 0)
    except BaseException:  # Ctrl-C or an error: no half-written database is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_folder(folder: Path, tmp: Path, files: dict, emb: np.ndarray, calibration: dict, checkpoint_sha: str,
                  sources: Sequence[str], xrd: dict | None, n_skipped: int = 0) -> Path:
    index_info = {"kind": "exact"}
    if len(emb) > EXACT_LIMIT:
        import faiss  # optional dependency: only large databases need it

        index, index_info = _ivf_index(emb)
        faiss.write_index(index, str(tmp / "index.faiss"))
    for name, payload in files.items():
        (tmp / name).write_bytes(payload)
    manifest = {
        "format": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint_sha256": checkpoint_sha,
        "sources": list(sources), "n": int(len(emb)), "dim": int(emb.shape[1]), "calibration": calibration,
        "index": index_info, **({"xrd": xrd} if xrd else {}), "skipped": n_skipped,
        "mixture": MixtureConfig().to_dict(), "files": {name: file_sha256(tmp / name) for name in sorted(os.listdir(tmp))},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return _swap_in(tmp, folder)


def _swap_in(tmp: Path, folder: Path) -> Path:
    """The finished temporary folder ``tmp`` renamed to ``folder``, replacing an earlier one there (renames only:
    a reader sees the old database or the new one, never a mixture)."""
    if folder.exists():
        old = folder.with_name(folder.name + f".{os.getpid()}.old")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------
def _element_string(species_json: str) -> str:
    species = json.loads(species_json)
    out = set()
    for sp in species:
        out.update(sp.keys() if isinstance(sp, dict) else [sp])
    return " ".join(sorted(out))


def _sticks_arrays(two_theta: Sequence[np.ndarray], area: Sequence[np.ndarray]) -> dict:
    counts = np.array([len(t) for t in two_theta], dtype=np.int64)
    return {"offsets": np.concatenate([[0], np.cumsum(counts)]),
            "two_theta": np.concatenate(list(two_theta)).astype(np.float64) if len(counts) else np.zeros(0),
            "area": np.concatenate(list(area)).astype(np.float32) if len(counts) else np.zeros(0, np.float32)}


def reflections_arrays(reflections: Sequence) -> dict:
    """The ``reflections.npz`` arrays of candidates' :class:`eacnn.physics.xrd.IndexedReflections` (None: none)."""
    counts = np.array([0 if r is None else len(r.hkl) for r in reflections], dtype=np.int64)
    kept = [r for r in reflections if r is not None]
    hkl = np.concatenate([r.hkl for r in kept]) if kept else np.zeros((0, 3))
    small = not len(hkl) or np.abs(hkl).max() <= np.iinfo(np.int16).max
    return {"offsets": np.concatenate([[0], np.cumsum(counts)]),
            "hkl": hkl.astype(np.int16 if small else np.int32),
            "area": (np.concatenate([r.area for r in kept]) if kept else np.zeros(0)).astype(np.float32),
            "metric": np.array([np.full(6, np.nan) if r is None else r.metric for r in reflections]).reshape(-1, 6)}


def concat_reflections(parts: Sequence[dict]) -> dict:
    """One ``reflections.npz`` dict of several (:func:`reflections_arrays`), candidates in order."""
    if len(parts) == 1:
        return parts[0]
    counts = np.concatenate([np.diff(p["offsets"]) for p in parts])
    wide = any(p["hkl"].dtype == np.int32 for p in parts)
    return {"offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            "hkl": np.concatenate([p["hkl"] for p in parts]).astype(np.int32 if wide else np.int16),
            "area": np.concatenate([p["area"] for p in parts]).astype(np.float32),
            "metric": np.concatenate([p["metric"] for p in parts]).reshape(-1, 6)}


def take_reflections(arrays: dict, rows: np.ndarray) -> dict:
    """The ``reflections.npz`` dict of the candidates ``rows`` (in that order) of another."""
    o = arrays["offsets"]
    pieces = [np.arange(o[r], o[r + 1]) for r in rows]
    take = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    counts = np.array([o[r + 1] - o[r] for r in rows], dtype=np.int64)
    return {"offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), "hkl": arrays["hkl"][take],
            "area": arrays["area"][take], "metric": arrays["metric"][np.asarray(rows, np.int64)].reshape(-1, 6)}


def _split(sticks: dict) -> tuple[list, list]:
    """The per-candidate (2θ, area) lists of a sticks dict."""
    o = sticks["offsets"]
    return ([sticks["two_theta"][a:b] for a, b in zip(o[:-1], o[1:])],
            [sticks["area"][a:b] for a, b in zip(o[:-1], o[1:])])


def shipped_embeddings(checkpoint_sha: str) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(material ids [n], float32 embeddings [n, d], calibration) shipped for the checkpoint with this SHA-256, or
    None when the package ships none for it.

    Raises:
        EACNNError: the shipped file exists but does not match the SHA-256 recorded beside it.
    """
    meta_path = SHIPPED_DIR / "embedded.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("checkpoint_sha256") != checkpoint_sha:
        return None
    path = SHIPPED_DIR / meta["file"]
    if not path.is_file() or file_sha256(path) != meta["sha256"]:
        raise EACNNError(f"{path} is missing or does not match its SHA-256 in {meta_path}: the installation is "
                         f"damaged; reinstall eacnn")
    with np.load(path) as f:
        return f["material_id"].astype(str), f["embeddings"].astype(np.float32), meta["calibration"]


def _ships_embeddings_for(checkpoint_sha: str) -> bool:
    """Whether the package ships embeddings of the embedded structures for this checkpoint (its record only; the
    file is checked when :func:`shipped_embeddings` reads it)."""
    try:
        return json.loads((SHIPPED_DIR / "embedded.json").read_text()).get("checkpoint_sha256") == checkpoint_sha
    except (OSError, ValueError):
        return False


def _embedded_from_shipped(ids: np.ndarray, emb: np.ndarray, cfg, progress: bool):
    """labels, embeddings, sticks, vectors and indexed reflections (arrays) of the embedded database from shipped
    embeddings (simulating the patterns and reflections, which take seconds, instead of embedding 18,093 structures,
    which takes minutes). The simulated arrays are cached by the structures, the configuration and the simulator's
    code (:func:`eacnn.datasets.dataset.dataset_key`), so every database holding the embedded structures (the
    default one, the embedded set beside a user's folders, ``database build embedded ...``) simulates them once."""
    from eacnn.datasets.dataset import dataset_key
    from eacnn.datasets.structures import load_embedded, row_arrays
    from eacnn.physics.xrd import indexed_reflections, simulate_batch

    table = load_embedded().set_index("material_id").loc[ids].reset_index()
    path = cache_dir() / f"embedded-arrays-{dataset_key(table, cfg, 'shipped embeddings')[:20]}.npz"
    arrays = None
    if path.is_file():
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile):
            log.warning("cached arrays %s unreadable; simulating again", path)
    if arrays is None:
        # plain arrays, not pymatgen objects: the same patterns, without 18,093 Structure constructions (~8 s)
        structures = [row_arrays(r) for r in table.to_dict("records")]
        sim = simulate_batch(structures, cfg.xrd, progress=progress, ids=list(ids))
        ok = np.array([i not in sim.failures for i in range(len(ids))], dtype=bool)
        sticks = _sticks_arrays([sim.stick_two_theta[i] for i in np.flatnonzero(ok)],
                                [sim.stick_intensity[i] for i in np.flatnonzero(ok)])
        reflections = reflections_arrays(indexed_reflections([structures[i] for i in np.flatnonzero(ok)], cfg.xrd,
                                                             progress=progress))
        arrays = {"ok": ok, "vectors": np.asarray(sim.vectors)[ok],
                  **{f"sticks_{k}": v for k, v in sticks.items()}, **{f"refl_{k}": v for k, v in reflections.items()}}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())
    ok = arrays["ok"].astype(bool)
    labels = table.assign(source="embedded", elements=table["species"].map(_element_string))[ok]
    sticks = {k[len("sticks_"):]: v for k, v in arrays.items() if k.startswith("sticks_")}
    reflections = {k[len("refl_"):]: v for k, v in arrays.items() if k.startswith("refl_")}
    return labels.reset_index(drop=True), emb[ok], sticks, arrays["vectors"], reflections


#: the largest cell a Materials Project database keeps (sites); MP's largest entries are a few hundred sites
MP_MAX_SITES = 500


def mp_hull(source: str) -> float | None:
    """The hull distance (eV/atom) of an ``mp-api`` source: ``mp-api`` 0.05 (stable and near-stable), ``mp-api:E``
    E, ``mp-api:all`` no filter.

    Raises:
        EACNNError: another form (the message shows the value)."""
    _, _, tail = source.partition(":")
    if not tail:
        return 0.05
    if tail == "all":
        return None
    try:
        value = float(tail)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 10:
        raise EACNNError(f"--database {source!r}: give mp-api, mp-api:E (E eV/atom above the hull, 0..10) or "
                         f"mp-api:all")
    return value


#: structures a database build simulates, embeds and reduces to compact arrays at a time: its memory is bounded by
#: one block's data set (graphs, sticks, reflections as objects), not by the collection; each block is its own cached
#: data set, so an interrupted build also resumes block by block
BUILD_BLOCK = 20_000


def _source_table(source: str, cfg, progress: bool):
    """(structures table or None for the embedded MP-20 set, the config to build it with, the (name, reason) of its
    unreadable files) of one source: the embedded structures, all or part of Materials Project, or a folder or
    archive of CIF files (unreadable files are logged and skipped; cells larger than MP-20's 20 atoms are kept)."""
    from eacnn.datasets.structures import is_cif_archive, read_cif_folder

    if source == "embedded":
        return None, cfg.replace(**{"data.source": "embedded", "data.max_structures": 0}), []
    if source.startswith("mp-api"):  # all of Materials Project, or its entries within E eV/atom of the hull
        from eacnn.datasets.mp import download_table

        table = download_table(energy_above_hull_max=mp_hull(source), max_sites=MP_MAX_SITES, split="test",
                               progress=progress)
        return table, cfg.replace(**{"data.max_sites": MP_MAX_SITES}), []
    folder = Path(source)
    if not folder.is_dir() and not is_cif_archive(folder):
        raise EACNNError(f"--database {source!r} is neither 'embedded', a folder of CIF files nor an archive of them")
    found = read_cif_folder(folder, progress=progress)
    if len(found.table) == 0:
        raise EACNNError(f"no readable CIF file in {folder} ({len(found.skipped)} unreadable)")
    return found.table, cfg.replace(**{"data.max_sites": max(cfg.data.max_sites, 512)}), list(found.skipped)


def _blocks(table: pd.DataFrame | None, block: int) -> list:
    """The table in consecutive row blocks of at most ``block`` rows ([None] for the embedded set)."""
    if table is None:
        return [None]
    return [table.iloc[i : i + block].reset_index(drop=True) for i in range(0, len(table), block)] or [table]


def _from_datasets(sources: Sequence[str], model, cfg, progress: bool, cluster: str | None = None,
                   block: int | None = None):
    """labels, embeddings, sticks, vectors, reflections (arrays), skipped rows and structure getters of any sources,
    every structure embedded with the model, :data:`BUILD_BLOCK` structures at a time (each block built as its own
    data set, reduced to compact arrays, and let go)."""
    from eacnn.datasets.dataset import build_dataset
    from eacnn.datasets.structures import load_embedded, row_to_structure
    from eacnn.retrieval.embed import embed_dataset

    block = block or BUILD_BLOCK
    labels, emb, two_theta, area, vectors, reflections, skipped, getters = [], [], [], [], [], [], [], []
    for source in sources:
        table, build_cfg, unreadable = _source_table(source, cfg, progress)
        skipped += [(source, name, "unreadable", reason) for name, reason in unreadable]
        source_rows = table if table is not None else load_embedded()
        species = dict(zip(source_rows["material_id"], source_rows["species"]))  # material id -> JSON species
        rows = source_rows.set_index("material_id")
        rows = rows[~rows.index.duplicated()]
        for part in _blocks(table, block):
            if part is None:
                ds = build_dataset(build_cfg, progress=progress, cluster=cluster)
            else:
                ds = build_dataset(build_cfg, structures_table=part, progress=progress, cluster=cluster)
            skipped += [(source, r.material_id, r.reason, r.detail) for r in ds.skipped.itertuples()]
            z = np.zeros((len(ds), model.model_config.embed_dim), dtype=np.float32)  # [n, d]
            for split in ("train", "val", "test"):
                idx = ds.indices(split)
                if len(idx):
                    z[idx] = embed_dataset(model, ds, split, levels=(0,), progress=progress).structures
            ids = ds.labels["material_id"].to_numpy()
            labels.append(ds.labels[["material_id", "formula", "spacegroup_symbol", "spacegroup_number",
                                     "crystal_system"]].assign(source=source, elements=[
                                         _element_string(species[m]) for m in ids]))
            emb.append(z)
            for i in range(len(ds)):
                tt, a = ds.sticks(i)
                two_theta.append(tt)
                area.append(a)
            reflections.append(reflections_arrays([ds.reflections(i) for i in range(len(ds))]))
            vectors.append(np.asarray(ds.vectors))
            # a duplicate check rebuilds a structure from its table row, not from the (released) data set
            getters += [lambda m=m, rows=rows: row_to_structure({"material_id": m, **rows.loc[m].to_dict()})
                        for m in ids]
            del ds
    return (pd.concat(labels, ignore_index=True), np.concatenate(emb), _sticks_arrays(two_theta, area),
            np.concatenate(vectors), concat_reflections(reflections), skipped, getters)


def model_calibration(model, cfg, checkpoint_sha: str, progress: bool = True) -> dict:
    """The calibrated verdict thresholds of a model: shipped for the shipped model, else fitted once on the
    validation split (:func:`eacnn.retrieval.identify.calibrate`) and cached by the checkpoint's hash."""
    shipped = shipped_embeddings(checkpoint_sha)
    if shipped is not None:
        return shipped[2]
    return _cached_calibration(cache_dir() / f"calibration-{checkpoint_sha[:20]}.json",
                               lambda: _fit_calibration(model, cfg, progress, full_data=True))


def _model_calibration_in_memory(model, cfg, progress: bool, n_queries: int | None, rerank: int | None = None
                                 ) -> dict:
    """The verdict thresholds of a model without a checkpoint file, fitted on ``cfg``'s validation split and cached
    by the model's weights, the configuration, the query count, the search's settings and the code that calibrates
    (the verdict, refinement and query modules): databases of other sources built with one model (a chapter's
    search and mixture databases) share one calibration."""
    from eacnn.retrieval.embed import model_digest

    code = [(Path(__file__).parent / f"{name}.py").read_bytes() for name in ("verdict", "refine", "query")]
    key = hashlib.sha256(repr((model_digest(model), sorted(cfg.to_dict().items()), n_queries, rerank,
                               dataclasses.asdict(SearchConfig()), code)).encode()).hexdigest()[:20]
    return _cached_calibration(cache_dir() / f"calibration-model-{key}.json",
                               lambda: _fit_calibration(model, cfg, progress, n_queries=n_queries, rerank=rerank))


def _cached_calibration(path: Path, fit: Callable[[], dict]) -> dict:
    """The calibration cached at ``path`` (JSON), else ``fit()``'s, written there atomically."""
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            log.warning("calibration cache %s unreadable; fitting again", path)
    out = fit()
    atomic_write_bytes(path, json.dumps(out).encode())
    return out


def _fit_calibration(model, cfg, progress: bool, full_data: bool = False, n_queries: int | None = None,
                     rerank: int | None = None) -> dict:
    """:func:`eacnn.retrieval.identify.calibrate` on the validation split of ``cfg``'s data (all embedded data
    with ``full_data``)."""
    from eacnn.datasets.dataset import build_dataset
    from eacnn.retrieval.identify import calibrate

    data_cfg = cfg.replace(**{"data.source": "embedded", "data.max_structures": 0}) if full_data else cfg
    return calibrate(model, build_dataset(data_cfg, progress=progress), n_queries=n_queries, progress=progress,
                     **({} if rerank is None else {"rerank": rerank}))


def build_database(sources: Sequence[str], out: str | Path, checkpoint: str | Path | None = None,
                   progress: bool = True, cluster: str | None = None, dedupe: bool = False) -> Path:
    """Embed every structure of ``sources`` (``"embedded"``, folders of CIF files) with a checkpoint's model and
    write the database folder ``out``.

    The content-keyed cache of searches (:func:`default_database`) and ``out`` share their files: a database the
    cache already holds for this model and these sources is linked (or copied) to ``out`` instead of built again,
    and one built here is linked into the cache (never copied: a large database is not stored twice), so a search
    of the same sources (``--database embedded --database DIR``) does not build it again. Not with ``dedupe``,
    which the cache does not do. Linked files are one file: an edit of either is refused on opening both, as any
    edit of a database is."""
    from eacnn.training.checkpoint import DEFAULT_CHECKPOINT

    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    sha = file_sha256(path)
    out = Path(out)
    key = None if dedupe else cache_dir() / "databases" / database_key(sha, [str(s) for s in sources])
    if key is None or out.resolve() == key.resolve():
        return _build_database(sources, out, path, sha, progress, cluster, dedupe)
    if _intact(key):
        log.warning("the same database (this model, these sources' content) is in the search cache: placing %s at "
                    "%s instead of building it again", key, out)
        return _place_folder(key, out, copy=True)
    folder = _build_database(sources, out, path, sha, progress, cluster, dedupe)
    _share_with_cache(folder, key)
    return folder


def _intact(folder: Path) -> bool:
    """Whether ``folder`` is a complete database whose files match its manifest."""
    if not (folder / "manifest.json").is_file():
        return False
    try:
        open_database(folder)
    except EACNNError:
        return False
    return True


def _place_folder(src: Path, dst: Path, copy: bool) -> Path:
    """``src``'s files at ``dst`` as one atomic step (a temporary folder renamed into place, replacing an earlier
    database there): hard links where the file system allows, else copies when ``copy``; OSError otherwise."""
    dst = output_folder(dst)
    tmp = dst.with_name(dst.name + f".{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in sorted(src.iterdir()):
            if not f.is_file():
                continue
            try:
                os.link(f, tmp / f.name)
            except OSError:
                if not copy:
                    raise
                shutil.copy2(f, tmp / f.name)
        return _swap_in(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _share_with_cache(folder: Path, key: Path) -> None:
    """Link a just-built database into the search cache at ``key`` when no other process is building it there (the
    cache's lock, not waited for) and the file system allows hard links; otherwise leave the cache alone."""
    try:
        key.parent.mkdir(parents=True, exist_ok=True)
        with open(key.with_name(key.name + ".lock"), "a") as handle:
            try:
                import fcntl

                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:
                return
            if not (key / "manifest.json").is_file():
                _place_folder(folder, key, copy=False)
    except OSError:  # another process holds the lock, a read-only cache, or no hard links across file systems
        pass


def _build_database(sources: Sequence[str], out: Path, path: Path, sha: str, progress: bool, cluster: str | None,
                    dedupe: bool) -> Path:
    """:func:`build_database` without the cache: embed and write ``out``."""
    from eacnn.config import Config
    from eacnn.training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(path)
    if set(sources) == {"embedded"} and _ships_embeddings_for(sha):
        # nothing to embed: the pattern tower alone is exported (the structure tower's mace import takes seconds)
        from eacnn.retrieval.pattern_tower import export_encoder
        from eacnn.training.checkpoint import pattern_encoder_from_checkpoint

        encoder, model_cfg = pattern_encoder_from_checkpoint(ckpt)
        return model_database(None, Config.from_dict(ckpt["config"]), sources, out, sha, progress, dedupe=dedupe,
                              tower=export_encoder(encoder, model_cfg.xrd_positions))
    return model_database(model_from_checkpoint(ckpt), Config.from_dict(ckpt["config"]), sources, out, sha, progress,
                          cluster=cluster, dedupe=dedupe)


def model_database(model, cfg, sources: Sequence[str], out: str | Path, model_sha: str | None = None,
                   progress: bool = True, calibration_queries: int | None = None,
                   calibration_rerank: int | None = None, cluster: str | None = None,
                   dedupe: bool = False, tower: dict | None = None) -> Path:
    """:func:`build_database` for a model in memory (``model_sha``: its checkpoint's SHA-256, which selects shipped
    embeddings and caches the calibration; None for a model without a checkpoint file). ``model`` may be None when
    the shipped embeddings and calibration cover every source and ``tower`` (the exported pattern tower) is given."""
    from eacnn.retrieval.pattern_tower import export_tower

    sha = model_sha or "in-memory-" + hashlib.sha256(repr(sorted(cfg.to_dict().items())).encode()).hexdigest()[:12]
    shipped = shipped_embeddings(sha) if "embedded" in sources else None
    parts = []
    if shipped is not None:  # the embedded structures from the shipped embeddings, the others embedded here
        parts.append(_embedded_from_shipped(shipped[0], shipped[1], cfg, progress))
    rest = [s for s in sources if s != "embedded" or shipped is None]
    if rest:
        parts.append(_from_datasets(rest, model, cfg, progress, cluster))
    labels = pd.concat([p[0] for p in parts], ignore_index=True)
    emb = np.concatenate([p[1] for p in parts])
    sticks = _sticks_arrays([tt for p in parts for tt in _split(p[2])[0]], [a for p in parts for a in _split(p[2])[1]])
    vectors = np.concatenate([p[3] for p in parts])
    calibration = (model_calibration(model, cfg, sha, progress) if model_sha else
                   _model_calibration_in_memory(model, cfg, progress, calibration_queries, calibration_rerank))
    reflections = concat_reflections([p[4] if isinstance(p[4], dict) else reflections_arrays(p[4]) for p in parts])
    skipped = [row for p in parts if len(p) > 5 for row in p[5]]
    if dedupe:
        getters = [g for p in parts for g in (p[6] if len(p) > 6 else _embedded_getters(p[0]))]
        drop, notes = duplicate_rows(labels, getters, progress)
        skipped += [(labels["source"].iloc[i], labels["material_id"].iloc[i], "duplicate", note)
                    for i, note in zip(drop, notes)]
        keep = np.setdiff1d(np.arange(len(labels)), drop)
        tt, ar = _split(sticks)
        labels, emb, vectors = labels.iloc[keep].reset_index(drop=True), emb[keep], vectors[keep]
        sticks = _sticks_arrays([tt[i] for i in keep], [ar[i] for i in keep])
        reflections = take_reflections(reflections, keep)
    tower = export_tower(model) if tower is None else tower
    return write_database(out, labels, emb, tower, calibration, sha, sources, sticks, vectors,
                          dataclasses.asdict(cfg.xrd), reflections, skipped)


def _embedded_getters(labels: pd.DataFrame) -> list:
    """A structure getter per row of the embedded part (its material ids looked up in the shipped table)."""
    from eacnn.datasets.structures import load_embedded, row_to_structure

    table = load_embedded().set_index("material_id")
    return [lambda m=m: row_to_structure({"material_id": m, **table.loc[m].to_dict()}) for m in labels["material_id"]]


def duplicate_rows(labels: pd.DataFrame, structures: Sequence, progress: bool = False) -> tuple[list[int], list[str]]:
    """Rows that are the same crystal as an earlier row: among rows of equal reduced formula and space group only,
    pymatgen's ``StructureMatcher`` (default tolerances) groups the structures (``structures[i]()`` builds row i's);
    every member of a group but the first is returned with a note naming the one kept."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Composition

    key = [f"{Composition(f).reduced_formula}|{sg}" for f, sg in zip(labels["formula"], labels["spacegroup_number"])]
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(key):
        groups.setdefault(k, []).append(i)
    matcher = StructureMatcher()
    drop, notes = [], []
    for rows in tqdm(groups.values(), desc="finding duplicates", disable=not progress):
        if len(rows) < 2:
            continue
        built = [structures[i]() for i in rows]
        for group in matcher.group_structures(built):
            members = sorted(rows[next(j for j, s in enumerate(built) if s is g)] for g in group)
            for i in members[1:]:
                drop.append(i)
                notes.append(f"the same crystal as {labels['material_id'].iloc[members[0]]} (StructureMatcher)")
    order = np.argsort(drop, kind="stable")
    return [drop[j] for j in order], [notes[j] for j in order]


def default_database(sources: Sequence[str] = ("embedded",), checkpoint: str | Path | None = None,
                     progress: bool = True) -> SavedDatabase:
    """The database of ``sources`` for a checkpoint (default: the shipped model), built once and cached under
    :func:`eacnn.paths.cache_dir` by the checkpoint's and the sources' content."""
    path = Path(checkpoint) if checkpoint is not None else DATA_DIR / "checkpoints" / "default.pt"
    if not path.is_file():
        raise EACNNError(f"no checkpoint at {path}")
    sources = [str(s) for s in sources]
    folder = cache_dir() / "databases" / database_key(file_sha256(path), sources)

    def build() -> None:
        shipped = "embedded" in sources and _ships_embeddings_for(file_sha256(path))
        others = [s for s in sources if s != "embedded"]
        log.warning("building the search database once for this model and these sources (%s); later searches reuse "
                    "it", ("about 30 s: the embedded structures' embeddings are shipped" if shipped else
                           "minutes: every embedded structure is embedded") + (f", plus embedding {', '.join(others)}"
                                                                              if others else ""))
        build_database(sources, folder, path, progress=progress)

    return cached_database(folder, build)


def cached_database(folder: Path, build: Callable[[], object]) -> SavedDatabase:
    """The saved database at ``folder`` (a content-keyed cache), built by ``build()`` when it is missing or
    unreadable. Processes that ask for the same folder at once (chapters executing side by side) wait for each other
    (an exclusive lock on ``<folder>.lock``) instead of building it twice or swapping it under a reader."""
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        handle = open(folder.with_name(folder.name + ".lock"), "a")
    except OSError as err:  # a shared cache on read-only storage: used as it is when complete and intact
        if (folder / "manifest.json").is_file():
            return open_database(folder)
        raise EACNNError(f"the search database cache {folder} cannot be written ({err.strerror}); set EACNN_HOME "
                         f"to a folder you can write, or build a database with `eacnn database build ... --out "
                         f"DIR` and search it with --database DIR") from err
    with handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # no POSIX locks (Windows): one process at a time is the caller's business
            pass
        if (folder / "manifest.json").is_file():
            try:
                return open_database(folder)
            except EACNNError as err:
                log.warning("%s; building it again", err)
        build()
        return open_database(folder)

