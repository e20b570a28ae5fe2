"""Opt-in download of structures from the Materials Project (needs ``pip install 'eacnn[mp]'`` and an API key).

Nothing here runs unless called; ``mp_api`` is imported inside the functions. The result is a structure table with
the embedded data's columns (see :mod:`eacnn.datasets.structures`) plus ``database_version``, so it flows through
:func:`eacnn.datasets.dataset.build_dataset` like the embedded data:

>>> from eacnn.datasets.mp import download_table                          # doctest: +SKIP
>>> table = download_table(elements=["Li", "O"], max_sites=20)   # doctest: +SKIP
>>> dataset = build_dataset(cfg, structures_table=table)         # doctest: +SKIP

Downloads are resumable: the ids of a query and then its structures, chunk by chunk, are written under
``eacnn.paths.cache_dir() / "mp_api"``; an interrupted download picks up at the first missing chunk.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from eacnn.errors import MissingAPIKeyError, StructureError
from eacnn.paths import atomic_write_bytes, cache_dir
from eacnn.datasets.structures import TABLE_COLUMNS, structure_to_row

log = logging.getLogger(__name__)

__all__ = ["API_KEY_VAR", "FIELDS", "resolve_api_key", "docs_to_table", "download_table"]

API_KEY_VAR = "MP_API_KEY"
#: SummaryDoc fields requested from the API (all that the table needs).
FIELDS = ["material_id", "formula_pretty", "symmetry", "structure", "formation_energy_per_atom", "band_gap"]


def resolve_api_key(api_key: str | None = None) -> str:
    """The key to use: ``api_key`` if given, else the ``MP_API_KEY`` environment variable.

    Raises:
        MissingAPIKeyError: neither is set; the message says how to get and set a key.
    """
    key = api_key or os.environ.get(API_KEY_VAR, "").strip()
    if not key:
        raise MissingAPIKeyError(
            "the Materials Project download needs an API key, and none was given. Get a free key by logging in at "
            "https://next-gen.materialsproject.org/api (the 'API Key' box), then either set it in the environment, "
            f"`export {API_KEY_VAR}=<your key>` (in Colab: os.environ['{API_KEY_VAR}'] = '<your key>'), or pass "
            "api_key='<your key>'. The embedded MP-20 data need no key (DataConfig.source='embedded')."
        )
    return key


# ---------------------------------------------------------------------------------------------------------------
# SummaryDoc -> table (pure)
# ---------------------------------------------------------------------------------------------------------------
def _field(doc: Any, name: str, default: Any = None) -> Any:
    """A field of a SummaryDoc given as a dict or as an object."""
    if isinstance(doc, dict):
        return doc.get(name, default)
    return getattr(doc, name, default)


def _text(value: Any) -> str:
    """Enum members (CrystalSystem.cubic) and MPIDs as plain strings."""
    return str(getattr(value, "value", value))


def docs_to_table(
    docs: Iterable, split: str = "train", database_version: str | None = None
) -> pd.DataFrame:
    """A structure table from Materials Project summary documents.

    Args:
        docs: SummaryDocs as objects (``.material_id``, ``.structure``, ``.symmetry``, ``.formula_pretty``) or
            dicts with the same fields; ``structure`` may be a pymatgen Structure or its ``as_dict()``.
        split: MP-20 split name given to every row; the default ``"train"`` puts the rows into the training pool
            (``"test"`` makes them the test set / retrieval pool).
        database_version: the Materials Project release the documents come from, stored in every row.

    Returns:
        The embedded table's columns plus ``database_version``. Space group number and symbol and crystal system
        are the Materials Project's (``symmetry``); ``formula`` is ``formula_pretty``.

    Raises:
        StructureError: a document lacks its id or structure (the message names the document).
    """
    from pymatgen.core import Structure

    rows = []
    for k, doc in enumerate(docs):
        material_id = _field(doc, "material_id")
        structure = _field(doc, "structure")
        if material_id is None or structure is None:
            raise StructureError(f"summary document {k} ({material_id!r}) lacks material_id or structure")
        if isinstance(structure, dict):
            structure = Structure.from_dict(structure)
        sym = _field(doc, "symmetry")
        symmetry = None
        if sym is not None and _field(sym, "number") is not None:
            symmetry = (int(_field(sym, "number")), _text(_field(sym, "symbol")), _text(_field(sym, "crystal_system")))
        row = structure_to_row(structure, _text(material_id), split=split, symmetry=symmetry)
        if _field(doc, "formula_pretty"):
            row["formula"] = str(_field(doc, "formula_pretty"))
        for name in ("formation_energy_per_atom", "band_gap"):
            value = _field(doc, name)
            row[name] = float(value) if value is not None else np.nan
        row["database_version"] = database_version or ""
        rows.append(row)
    return pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "database_version"])


# ---------------------------------------------------------------------------------------------------------------
# The download (network)
# ---------------------------------------------------------------------------------------------------------------
_TEXT_COLUMNS = ("material_id", "split", "formula", "spacegroup_symbol", "crystal_system", "lattice_matrix", "species",
                 "frac_coords", "database_version")  # fmt: skip


def _query_key(query: dict) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]


def _read_chunk(path: Path) -> pd.DataFrame | None:
    """A finished chunk, or None (with a warning) when it is unreadable and must be fetched again."""
    try:
        text = {c: str for c in _TEXT_COLUMNS}
        return pd.read_csv(path, compression="gzip", dtype=text, keep_default_na=False, na_values={"band_gap": [""],
                           "formation_energy_per_atom": [""]})
    except Exception as err:  # a truncated gzip raises EOFError/OSError, a bad CSV ParserError
        log.warning("cached chunk %s is unreadable (%s); fetching it again", path, err)
        return None


def download_table(
    api_key: str | None = None,
    *,
    elements: Sequence[str] | None = None,
    exclude_elements: Sequence[str] | None = None,
    max_sites: int = 20,
    spacegroups: Sequence[int] | None = None,
    material_ids: Sequence[str] | None = None,
    energy_above_hull_max: float | None = None,
    split: str = "train",
    chunk_size: int = 1000,
    folder: str | Path | None = None,
    progress: bool = True,
    client: Any = None,
) -> pd.DataFrame:
    """Download structures from the Materials Project as a structure table (resumable, cached).

    Args:
        api_key: Materials Project API key; the ``MP_API_KEY`` environment variable when None.
        elements: keep materials containing all of these elements (mp-api semantics), e.g. ``["Li", "O"]``.
        exclude_elements: drop materials containing any of these.
        max_sites: at most this many sites in the cell (1..max_sites; MP-20 uses 20).
        spacegroups: keep only these space group numbers (1–230).
        material_ids: fetch exactly these ids (e.g. the MP-20 train split, which ships without coordinates).
        energy_above_hull_max: keep only entries at most this far above the convex hull (eV/atom): 0 the stable
            ones, 0.05 the stable and near-stable ones a sample may hold; None: no filter.
        split: MP-20 split name given to every row (``"train"``: training pool; ``"test"``: retrieval pool).
        chunk_size: structures per request and per cached chunk file.
        folder: where chunks are kept; ``cache_dir() / "mp_api"`` when None.
        progress: show a progress bar.
        client: an open ``MPRester`` (or a stand-in with ``materials.summary.search`` and ``db_version``);
            one is opened with ``api_key`` when None.

    Raises:
        MissingAPIKeyError: no key given and ``MP_API_KEY`` unset.
        ImportError: ``mp-api`` is not installed.
    """
    if client is None:
        key = resolve_api_key(api_key)
        try:
            from mp_api.client import MPRester
        except ImportError as err:
            raise ImportError("the Materials Project download needs mp-api: pip install 'eacnn[mp]'") from err
        with MPRester(key, use_document_model=False, mute_progress_bars=True) as rester:
            return download_table(
                elements=elements, exclude_elements=exclude_elements, max_sites=max_sites, spacegroups=spacegroups,
                material_ids=material_ids, energy_above_hull_max=energy_above_hull_max, split=split,
                chunk_size=chunk_size, folder=folder, progress=progress, client=rester,
            )  # fmt: skip
    if max_sites < 1 or chunk_size < 1:
        raise ValueError(f"max_sites and chunk_size must be >= 1, got {max_sites!r}, {chunk_size!r}")
    version = str(getattr(client, "db_version", None) or "unknown")
    query = {
        "elements": sorted(elements) if elements else None,
        "exclude_elements": sorted(exclude_elements) if exclude_elements else None,
        "num_sites": [1, int(max_sites)],
        "spacegroup_number": sorted(int(n) for n in spacegroups) if spacegroups else None,
        "material_ids": sorted(material_ids) if material_ids else None,
        "energy_above_hull": [0.0, float(energy_above_hull_max)] if energy_above_hull_max is not None else None,
        "deprecated": False,
    }
    filters = {k: (tuple(v) if k in ("num_sites", "energy_above_hull") else v) for k, v in query.items()
               if v is not None}
    root = Path(folder) if folder is not None else cache_dir() / "mp_api"
    where = root / f"{version}-{_query_key({**query, 'split': split, 'chunk_size': chunk_size})}"

    ids_file = where / "ids.json"
    if ids_file.is_file():
        ids = json.loads(ids_file.read_text())["material_ids"]
    else:
        log.info("querying Materials Project %s for ids matching %s", version, filters)
        found = client.materials.summary.search(**filters, fields=["material_id"])
        ids = sorted({_text(_field(d, "material_id")) for d in found}, key=_id_order)
        atomic_write_bytes(ids_file, json.dumps({"query": query, "version": version, "material_ids": ids}).encode())
    log.info("%d materials match; chunks under %s", len(ids), where)

    parts = []
    bar = tqdm(total=len(ids), desc="Materials Project", unit="structure", disable=not progress)
    for k, start in enumerate(range(0, len(ids), chunk_size)):
        batch = ids[start : start + chunk_size]
        path = where / f"chunk-{k:05d}.csv.gz"
        part = _read_chunk(path) if path.is_file() else None
        if part is None:
            docs = client.materials.summary.search(material_ids=batch, fields=FIELDS)
            part = docs_to_table(docs, split=split, database_version=version)
            atomic_write_bytes(path, gzip.compress(part.to_csv(index=False).encode(), mtime=0))
        parts.append(part)
        bar.update(len(batch))
    bar.close()
    table = pd.concat(parts, ignore_index=True) if parts else docs_to_table([], split, version)
    missing = sorted(set(ids) - set(table["material_id"]), key=_id_order)
    if missing:
        log.warning("%d matching ids returned no structure (first: %s)", len(missing), missing[:5])
    return table


def _id_order(material_id: str) -> tuple:
    """Sort ids numerically where they are ``prefix-number`` (mp-2 before mp-10)."""
    prefix, _, number = material_id.rpartition("-")
    return (prefix, int(number)) if number.isdigit() else (material_id, -1)

