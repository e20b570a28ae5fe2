"""Where structures come from: the embedded MP-20 data (offline default), CIF files, lists of pymatgen Structures.

The embedded file ``eacnn/data/mp20_valtest_structures.csv.gz`` holds 18,093 real Materials Project structures
(MP-20 ``val`` and ``test`` splits; CC BY 4.0, see ``eacnn/data/README.md``).

Every source becomes the same **structure table** (one row per structure, the columns of :data:`TABLE_COLUMNS`),
which is what :func:`eacnn.datasets.dataset.build_dataset` consumes. ``species`` is a JSON list with one entry per site:
an element symbol (``"Fe"``) for an ordered site, or ``{"Fe": 0.5, "Ni": 0.5}`` for a partially occupied one.
``split`` is the source's split in MP-20 naming: ``"test"`` rows form the test set and retrieval pool; every other
row (``"val"``, ``"train"``) belongs to the training pool, from which the validation slice is carved.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import math
import re
import warnings
import zlib
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from eacnn.errors import DisorderError, StructureError
from eacnn.integrity import verify_file
from eacnn.paths import DATA_DIR

log = logging.getLogger(__name__)

EMBEDDED_FILE = DATA_DIR / "mp20_valtest_structures.csv.gz"

#: Columns of a structure table, in order (the embedded CSV's; sources may add more, e.g. ``database_version``).
TABLE_COLUMNS = (
    "material_id", "split", "formula", "n_sites", "spacegroup_number", "spacegroup_symbol", "crystal_system",
    "spacegroup_number_symprec_0p01", "a", "b", "c", "alpha", "beta", "gamma", "lattice_matrix", "species",
    "frac_coords", "formation_energy_per_atom", "band_gap",
)  # fmt: skip

SYMPREC = 0.1  # Å; spglib tolerance of the table's space group columns (as in the embedded data)
#: Å; two sites closer than this overlap (pymatgen's ``Structure.is_valid`` tolerance; the shortest bond, H–H in
#: H₂, is 0.74 Å) unless their occupancies add up to at most 1 (split positions of a disordered site)
MIN_SITE_DISTANCE = 0.5

__all__ = [
    "cif_entries",
    "cif_stem",
    "is_cif_archive",
    "parse_cif",
    "parse_structure_file",
    "EMBEDDED_FILE",
    "TABLE_COLUMNS",
    "CifFolder",
    "load_embedded",
    "row_to_structure",
    "row_arrays",
    "embedded_structures",
    "structure_to_row",
    "table_from_structures",
    "read_cif",
    "read_cif_folder",
    "check_structure",
    "closest_sites",
    "normalize_elements",
]


# ---------------------------------------------------------------------------------------------------------------
# The embedded MP-20 table
# ---------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _read_embedded() -> pd.DataFrame:
    if not EMBEDDED_FILE.is_file():
        raise StructureError(f"embedded data file missing: {EMBEDDED_FILE} (reinstall eacnn)")
    verify_file(EMBEDDED_FILE)  # against the SHA-256 recorded in the package
    return pd.read_csv(EMBEDDED_FILE)


def load_embedded(split: str | None = None, limit: int = 0) -> pd.DataFrame:
    """The embedded MP-20 table (one row per structure), optionally one split and the first ``limit`` rows.

    Args:
        split: ``"val"`` (our training data), ``"test"`` (the retrieval pool) or None for both.
        limit: keep the first N rows of each selected split (0 = all); deterministic, for smoke runs.
    """
    df = _read_embedded()
    if split is not None:
        if split not in ("val", "test"):
            raise StructureError(f"unknown MP-20 split {split!r}; the embedded data holds 'val' and 'test'")
        df = df[df["split"] == split]
    if limit:
        df = df.groupby("split", sort=False, group_keys=False).head(limit)
    return df.reset_index(drop=True).copy()


def row_to_structure(row) -> "Structure":  # noqa: F821
    """A pymatgen ``Structure`` from one row of a structure table (a dict-like with the JSON columns).

    Partially occupied sites (``{"Fe": 0.5, "Ni": 0.5}`` entries of ``species``) come back disordered.
    """
    from pymatgen.core import Lattice, Structure

    try:
        return Structure(
            Lattice(json.loads(row["lattice_matrix"])),
            json.loads(row["species"]),
            json.loads(row["frac_coords"]),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise StructureError(f"row {row.get('material_id', '?')!r} cannot be rebuilt: {err}") from err


def row_arrays(row) -> tuple[list, list, list]:
    """One row of a structure table as the plain (lattice [3, 3] Å, species [N], fractional coordinates [N, 3]) that
    the XRD simulator reads (:func:`eacnn.physics.xrd.simulate_batch`) without a pymatgen ``Structure``."""
    try:
        return json.loads(row["lattice_matrix"]), json.loads(row["species"]), json.loads(row["frac_coords"])
    except (ValueError, KeyError, TypeError) as err:
        raise StructureError(f"row {row.get('material_id', '?')!r} cannot be read: {err}") from err


def embedded_structures(split: str | None = None, limit: int = 0) -> tuple[pd.DataFrame, list]:
    """The embedded table and its rows as pymatgen ``Structure`` objects, in the same order."""
    df = load_embedded(split, limit)
    return df, [row_to_structure(r) for r in df.to_dict("records")]


# ---------------------------------------------------------------------------------------------------------------
# Structures -> table rows
# ---------------------------------------------------------------------------------------------------------------
def _site_species(site) -> str | dict[str, float]:
    """One ``species`` entry: the element symbol, or {symbol: occupancy} for a partially occupied site.

    Oxidation states are dropped: the XRD simulator uses neutral-atom scattering factors.
    """
    items = [(getattr(sp, "symbol", str(sp)), float(occ)) for sp, occ in site.species.items()]
    if len(items) == 1 and abs(items[0][1] - 1.0) < 1e-8:
        return items[0][0]
    merged: dict[str, float] = {}
    for symbol, occ in items:
        merged[symbol] = round(merged.get(symbol, 0.0) + occ, 6)
    return merged


def _symmetry(structure, symprec: float) -> tuple[int, str, str]:
    """(space group number, Hermann–Mauguin symbol, crystal system); (0, "?", "unknown") when spglib fails."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        return int(sga.get_space_group_number()), str(sga.get_space_group_symbol()), str(sga.get_crystal_system())
    except Exception as err:  # spglib gives up on some degenerate inputs; the row stays usable for XRD
        log.warning("space group analysis failed (symprec=%g): %s", symprec, err)
        return 0, "?", "unknown"


def structure_to_row(
    structure, material_id: str, split: str = "test", symmetry: tuple[int, str, str] | None = None
) -> dict:
    """One table row (the columns of :data:`TABLE_COLUMNS`) describing a pymatgen ``Structure``.

    Args:
        structure: the crystal; its cell is kept as given.
        material_id: the row's id.
        split: MP-20 split name of the row: ``"test"`` (test set / retrieval pool) or ``"val"``/``"train"``
            (training pool).
        symmetry: (number, symbol, crystal system) from the source, e.g. the Materials Project; spglib at
            ``symprec=0.1`` when None.
    """
    if structure is None or len(structure) == 0:
        raise StructureError(f"{material_id}: the structure has no sites")
    number, symbol, system = symmetry if symmetry is not None else _symmetry(structure, SYMPREC)
    number_fine, _, _ = _symmetry(structure, 0.01)
    lat = structure.lattice
    frac = np.mod(np.asarray(structure.frac_coords, dtype=np.float64), 1.0)
    return {
        "material_id": str(material_id),
        "split": split,
        "formula": structure.composition.reduced_formula,
        "n_sites": len(structure),
        "spacegroup_number": int(number),
        "spacegroup_symbol": str(symbol),
        "crystal_system": str(system).lower(),
        "spacegroup_number_symprec_0p01": int(number_fine),
        "a": lat.a,
        "b": lat.b,
        "c": lat.c,
        "alpha": lat.alpha,
        "beta": lat.beta,
        "gamma": lat.gamma,
        "lattice_matrix": json.dumps(np.asarray(lat.matrix, dtype=np.float64).tolist()),
        "species": json.dumps([_site_species(site) for site in structure]),
        "frac_coords": json.dumps(frac.tolist()),
        "formation_energy_per_atom": np.nan,
        "band_gap": np.nan,
    }


def table_from_structures(
    structures: Sequence, ids: Sequence[str] | None = None, split: str = "test", progress: bool = True
) -> pd.DataFrame:
    """A structure table (same schema as the embedded one) from pymatgen ``Structure`` objects.

    Space group and crystal system come from spglib (``SpacegroupAnalyzer``, ``symprec=0.1``; the 0.01 column too).

    Args:
        structures: pymatgen Structures, kept in their given cells.
        ids: one id per structure (default ``"s0"``, ``"s1"``, ...); must be unique.
        split: MP-20 split name given to every row (``"test"``: test set / retrieval pool).
        progress: show a progress bar.
    """
    structures = list(structures)
    ids = [f"s{i}" for i in range(len(structures))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(structures):
        raise StructureError(f"got {len(ids)} ids for {len(structures)} structures")
    if len(set(ids)) != len(ids):
        dupes = sorted(pd.Series(ids)[pd.Series(ids).duplicated()].unique())[:5]
        raise StructureError(f"ids must be unique; repeated: {dupes}")
    rows = [
        structure_to_row(s, i, split)
        for s, i in tqdm(zip(structures, ids), total=len(ids), desc="tabulating", disable=not progress)
    ]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


# ---------------------------------------------------------------------------------------------------------------
# CIF files
# ---------------------------------------------------------------------------------------------------------------
def read_cif(path: str | Path) -> "Structure":  # noqa: F821
    """The first structure of a CIF file (``.cif``, or gzip-compressed ``.cif.gz``), in the cell the file gives.

    Raises:
        StructureError: the file is missing, unreadable or malformed, or holds no atoms; the message names it.
    """
    path = Path(path)
    if path.is_dir():
        raise StructureError(f"{path}: is a directory, not a CIF file")
    if not path.is_file():
        raise StructureError(f"{path}: no such CIF file")
    if path.stat().st_size > LARGE_CIF_BYTES:
        log.warning("%s: %.1f MB; pymatgen reads a CIF of thousands of atoms in tens of seconds", path,
                    path.stat().st_size / 2**20)
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8", errors="replace")
    except (OSError, EOFError, zlib.error) as err:
        raise StructureError(f"{path}: cannot be read ({err})") from None
    return parse_cif(text, str(path))


def parse_cif(text: str, name: str) -> "Structure":  # noqa: F821
    """The first structure of a CIF held in ``text`` (``name``: the file or archive member, for messages); the
    checks of :func:`read_cif`.

    Raises:
        StructureError: malformed, no atoms, a bad value (:func:`_check_cif_values`) or overlapping atoms.
    """
    from pymatgen.io.cif import CifParser

    _check_cif_values(text, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structures = CifParser.from_str(text).parse_structures(primitive=False, on_error="raise")
        except Exception as err:  # pymatgen raises ValueError, KeyError, ZeroDivisionError... on broken input
            low = text.lower()
            if "data_" not in low:
                raise StructureError(f"{name}: not a CIF (no data_ block)") from err
            if "_atom_site_fract" not in low and "_atom_site_cartn" not in low:
                raise StructureError(f"{name}: the CIF holds no atoms (no _atom_site_ coordinates)") from err
            notes = "; ".join(dict.fromkeys(str(w.message) for w in caught))
            if "occupancy" in str(err).lower() and "exceed" in str(err).lower():
                raise StructureError(
                    f"{name}: overlapping atoms: sites on the same position hold more than one atom in total "
                    f"({str(err).strip().splitlines()[-1]}); remove the duplicate atom or give partial occupancies"
                ) from err
            raise StructureError(
                f"{name}: malformed CIF ({type(err).__name__}: {err})" + (f" [parser notes: {notes}]" if notes else "")
            ) from err
    if not structures or len(structures[0]) == 0:
        raise StructureError(f"{name}: the CIF holds no atoms")
    for w in dict.fromkeys(str(w.message) for w in caught):
        log.warning("%s: %s", name, w)
    if len(structures) > 1:
        log.warning("%s holds %d structures; using the first", name, len(structures))
    _check_overlap(structures[0], name)
    return structures[0]


LARGE_CIF_BYTES = 500_000  # a CIF larger than this (thousands of atom sites) gets a notice before the slow parse
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\(\d+\))?\s*$")  # 5.431(2) -> 5.431


def _cif_number(text: str) -> float | None:
    """A CIF numeric value (its standard uncertainty in brackets dropped), or None for '?', '.', 'nan' or text."""
    match = _NUMBER.match(str(text))
    return float(match.group(1)) if match else None


def _check_cif_values(text: str, path) -> None:
    """Refuse, in one line each, what pymatgen would drop silently or report cryptically: a missing or non-numeric
    cell length or angle, a singular cell, a coordinate that is not a finite number, an occupancy outside (0, 1].
    A file the CIF reader cannot even split into blocks is left to the parser's own message."""
    from pymatgen.io.cif import CifFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = [b for b in CifFile.from_str(text).data.values() if "_atom_site_label" in b.data
                      or "_atom_site_type_symbol" in b.data]
    except Exception:  # noqa: BLE001 -- not a CIF at all: read_cif says so below
        return
    if not blocks:
        return
    data = blocks[0].data
    cell = {}
    for key in ("a", "b", "c", "alpha", "beta", "gamma"):
        tag = f"_cell_{'length' if len(key) == 1 else 'angle'}_{key}"
        value = data.get(tag)
        number = _cif_number(value) if value is not None else None
        if number is None or not math.isfinite(number):
            what = "is missing" if value is None else f"is {value!r}, not a number"
            raise StructureError(f"{path}: {tag} {what}; the cell must be given in full")
        if number <= 0 or (len(key) > 1 and number >= 180):
            raise StructureError(f"{path}: {tag} = {value!r} is not a {'positive length' if len(key) == 1 else 'valid angle'}")
        cell[key] = number
    cos = [math.cos(math.radians(cell[k])) for k in ("alpha", "beta", "gamma")]
    volume_factor = 1 - sum(c * c for c in cos) + 2 * cos[0] * cos[1] * cos[2]
    if volume_factor <= 1e-8:
        raise StructureError(f"{path}: the cell angles {cell['alpha']}, {cell['beta']}, {cell['gamma']}° give no volume "
                             f"(a singular cell)")
    labels = data.get("_atom_site_label") or data.get("_atom_site_type_symbol")
    labels = labels if isinstance(labels, list) else [labels]
    for axis in ("x", "y", "z"):
        for prefix in ("_atom_site_fract_", "_atom_site_Cartn_"):
            values = data.get(prefix + axis)
            if values is None:
                continue
            for label, value in zip(labels, values if isinstance(values, list) else [values]):
                number = _cif_number(value)
                if number is None or not math.isfinite(number):
                    raise StructureError(f"{path}: atom site {label!r} has {prefix}{axis} = {value!r}, not a finite "
                                         f"number")
    occupancies = data.get("_atom_site_occupancy")
    if occupancies is not None:
        for label, value in zip(labels, occupancies if isinstance(occupancies, list) else [occupancies]):
            number = _cif_number(value)
            if value in ("?", "."):
                continue  # unknown: the CIF convention reads it as fully occupied
            if number is None or not (0 < number <= 1 + 1e-3):
                raise StructureError(f"{path}: atom site {label!r} has occupancy {value!r}; occupancies must lie in "
                                     f"(0, 1]")


class CifFolder(NamedTuple):
    """What :func:`read_cif_folder` found: the table, its structures (same order) and the files it skipped."""

    table: pd.DataFrame
    structures: list
    skipped: list  # (id, reason) for every file that could not be read


CIF_SUFFIXES = (".cif", ".cif.gz", ".json", ".json.gz")  # any case; .json: a pymatgen Structure (Structure.as_dict)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")  # any case


def _is_cif_name(name: str) -> bool:
    return name.lower().endswith(CIF_SUFFIXES) and not name.rsplit("/", 1)[-1].startswith(".")


def cif_stem(name: str) -> str:
    """The id of a structure file: its name without the directory and the .cif/.json(.gz) ending."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".cif.gz", ".json.gz", ".cif", ".json"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def parse_structure_file(text: str, name: str) -> "Structure":  # noqa: F821
    """A structure from a file's text: pymatgen JSON (``Structure.as_dict()``, as MP and pymatgen write it) when
    the name ends in ``.json``/``.json.gz``, else CIF (:func:`parse_cif`).

    Raises:
        StructureError: unreadable JSON, not a structure, or the CIF checks; the message names the file.
    """
    if not name.lower().endswith((".json", ".json.gz")):
        return parse_cif(text, name)
    from pymatgen.core import Structure

    try:
        structure = Structure.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise StructureError(f"{name}: not a pymatgen Structure in JSON ({type(err).__name__}: {err})") from None
    if len(structure) == 0:
        raise StructureError(f"{name}: the structure has no sites")
    _check_overlap(structure, name)
    return structure


def is_cif_archive(path: str | Path) -> bool:
    """Whether ``path`` is a file named as an archive of CIFs (zip or tar, optionally compressed), any case."""
    return Path(path).is_file() and str(path).lower().endswith(ARCHIVE_SUFFIXES)


def cif_files(folder: str | Path) -> list[Path]:
    """The CIF files below a folder (recursive; ``.cif`` or ``.cif.gz``, any case of the extension), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if _is_cif_name(p.name) and p.is_file())


def cif_entries(source: str | Path):
    """(name, text) of every CIF of a source, one at a time: a folder (recursive) or an archive as COD distributes
    them (zip, or tar with gzip/bzip2/xz), read streaming without unpacking. ``.cif.gz`` members are gunzipped;
    text is decoded as UTF-8 with replacement (a broken byte is the parser's to report)."""
    import tarfile
    import zipfile

    source = Path(source)

    def text_of(name: str, raw: bytes) -> str:
        if name.lower().endswith(".gz") or raw[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                return ""  # parse_cif then reports "not a CIF"
        return raw.decode("utf-8", errors="replace")

    if source.is_dir():
        for path in cif_files(source):
            yield path.relative_to(source).as_posix(), text_of(path.name, path.read_bytes())
    elif str(source).lower().endswith(".zip"):
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                if not info.is_dir() and _is_cif_name(info.filename):
                    yield info.filename, text_of(info.filename, archive.read(info))
    else:
        with tarfile.open(source, mode="r|*") as archive:  # a stream: members in the order stored
            for member in archive:
                if member.isfile() and _is_cif_name(member.name):
                    handle = archive.extractfile(member)
                    yield member.name, text_of(member.name, handle.read() if handle else b"")


def read_cif_folder(
    folder: str | Path, split: str = "test", pattern: str | None = None, progress: bool = True
) -> CifFolder:
    """Every structure file (CIF, or pymatgen JSON: :func:`parse_structure_file`) of a folder (recursive) or an
    archive as a structure table; ids are the file stems (the relative path, ``/`` as ``__``, where two files share
    a stem).

    Unreadable files are logged with their name and reason and listed in ``skipped``, never dropped silently.

    Args:
        folder: the directory (searched recursively) or zip/tar archive to read.
        split: MP-20 split name given to every row (``"test"``: test set / retrieval pool).
        pattern: glob of the files of a folder to read (None: every ``.cif``/``.cif.gz`` file, any case).
        progress: show a progress bar.
    """
    folder = Path(folder)
    if not folder.is_dir() and not is_cif_archive(folder):
        raise StructureError(f"{folder}: neither a directory of CIF files nor a zip/tar archive of them")
    if pattern is not None:
        entries = [(p.relative_to(folder).as_posix(), p.read_text(errors="replace"))
                   for p in sorted(folder.glob(pattern)) if p.is_file()]
    else:
        entries = cif_entries(folder)
    names, structures, skipped = [], [], []
    for name, text in tqdm(entries, desc="reading CIFs", unit="file", disable=not progress):
        try:
            structures.append(parse_structure_file(text, f"{folder}/{name}" if folder.is_dir() else f"{folder}:{name}"))
            names.append(name)
        except StructureError as err:
            log.warning("skipping %s: %s", name, err)
            skipped.append((cif_stem(name), str(err)))
    if not names and not skipped:
        raise StructureError(f"{folder}: no files match {pattern or '*.cif'!r}")
    stems = [cif_stem(n) for n in names]
    repeated = {s for s in stems if stems.count(s) > 1}
    ids = [n.rsplit(".", 2 if n.lower().endswith(".gz") else 1)[0].replace("/", "__") if s in repeated else s
           for n, s in zip(names, stems)]
    table = table_from_structures(structures, ids, split=split, progress=False)
    return CifFolder(table, structures, skipped)


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------
def check_structure(structure, max_sites: int = 0, disorder: str = "weighted", label: str = "structure") -> None:
    """Refuse a structure the dataset cannot use; errors name it and the bad value.

    Args:
        structure: pymatgen Structure.
        max_sites: more sites than this is refused (0 = no limit).
        disorder: ``"weighted"`` keeps partial occupancies (the simulator weights f by occupancy);
            ``"reject"`` refuses them.
        label: the name used in messages (e.g. the material id).

    Raises:
        StructureError: empty, more than ``max_sites`` sites, or overlapping atoms (two sites closer than
            :data:`MIN_SITE_DISTANCE` whose occupancies add up to more than 1).
        DisorderError: partial occupancy under ``disorder="reject"``.
    """
    if disorder not in ("weighted", "reject"):
        raise StructureError(f"unknown disorder policy {disorder!r}; choose 'weighted' or 'reject'")
    if structure is None or len(structure) == 0:
        raise StructureError(f"{label}: the structure has no sites")
    if max_sites and len(structure) > max_sites:
        raise StructureError(f"{label}: {len(structure)} sites > max_sites={max_sites}")
    if disorder == "reject" and not structure.is_ordered:
        site = next(i for i, s in enumerate(structure) if not s.is_ordered)
        raise DisorderError(
            f"{label}: site {site} is partially occupied ({structure[site].species_string}) and disorder='reject'"
        )
    _check_overlap(structure, label)


_SHIFTS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.float64)  # [27, 3] neighbouring cells


def closest_sites(structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of distinct sites and its shortest periodic distance: (i [p], j [p], distance [p] in Å), i < j.

    Differences of fractional coordinates are wrapped into [-0.5, 0.5) and the 27 neighbouring cells searched,
    which is exact for reduced cells and for any distance shorter than half the shortest cell width.
    """
    frac = np.asarray(structure.frac_coords, dtype=np.float64)  # [n, 3]
    lattice = np.asarray(structure.lattice.matrix, dtype=np.float64)  # [3, 3]
    i, j = np.triu_indices(len(frac), 1)  # [p]
    dist = np.empty(len(i))
    for start in range(0, len(i), 20_000):  # [chunk, 27, 3] stays below ~13 MB for large cells
        d = frac[i[start:start + 20_000]] - frac[j[start:start + 20_000]]
        d -= np.round(d)
        cart = (d[:, None, :] + _SHIFTS) @ lattice
        dist[start:start + 20_000] = np.sqrt((cart * cart).sum(-1).min(-1))
    return i, j, dist


def _check_overlap(structure, label: str) -> None:
    """StructureError when two sites closer than MIN_SITE_DISTANCE hold more than one atom between them."""
    if len(structure) < 2:
        return
    # pymatgen's cell-list neighbour search: linear in the sites (a 10,648-atom cell in 0.1 s, where comparing
    # every pair took 53 s); each close pair is found from both ends, kept once
    centre, other, _, dist = structure.get_neighbor_list(MIN_SITE_DISTANCE)
    keep = centre < other
    i, j, dist = centre[keep], other[keep], dist[keep]
    if not len(i):
        return
    close = np.arange(len(i))
    occupancy = np.array([site.species.num_atoms for site in structure])  # [n] atoms per site (1 when ordered)
    bad = close[occupancy[i] + occupancy[j] > 1.0 + 1e-3]
    if len(bad):
        a, b, d = int(i[bad[0]]), int(j[bad[0]]), float(dist[bad[0]])
        raise StructureError(
            f"{label}: overlapping atoms: site {a} ({structure[a].species_string}) and site {b} "
            f"({structure[b].species_string}) are {d:.3f} Å apart (less than {MIN_SITE_DISTANCE} Å) and together hold "
            f"more than one atom ({len(bad)} such pair(s)); remove the duplicate or give partial occupancies"
        )


_SYMBOL = re.compile(r"^[A-Za-z]{1,3}$")


def normalize_elements(elements: str | Sequence[str]) -> list[str]:
    """Element symbols as the periodic table writes them, in the given order, without repeats.

    Accepts ``"Mn,O"``, ``"mn o"``, ``["MN", "o"]``; symbols are case-insensitive.

    Raises:
        StructureError: no symbol at all (``""``), or symbols that are not elements (all of them named).
    """
    from pymatgen.core.periodic_table import Element

    given = elements
    if isinstance(elements, str):
        elements = re.split(r"[,;\s]+", elements)
    tokens = [str(e).strip() for e in elements if str(e).strip()]
    if not tokens:
        raise StructureError(f"no element symbol in {given!r}; give symbols such as 'Mn,O'")
    out, unknown = [], []
    for token in tokens:
        symbol = token[:1].upper() + token[1:].lower()
        if _SYMBOL.match(token) and Element.is_valid_symbol(symbol):
            if symbol not in out:
                out.append(symbol)
        else:
            unknown.append(token)
    if unknown:
        raise StructureError(f"not element symbols: {', '.join(repr(u) for u in unknown)} (in {given!r})")
    return out
