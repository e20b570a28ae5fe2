"""Where structures come from: the embedded MP-20 data (offline default), CIF files, lists of pymatgen Structures.

The embedded file ``eacnn/data/mp20_valtest_structures.csv.gz`` holds 18,093 real Materials Project structures
(MP-20 ``val`` and ``test`` splits; CC BY 4.0, see ``eacnn/data/README.md``).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache

import pandas as pd

from .errors import StructureError
from .paths import DATA_DIR

log = logging.getLogger(__name__)

EMBEDDED_FILE = DATA_DIR / "mp20_valtest_structures.csv.gz"

__all__ = ["EMBEDDED_FILE", "load_embedded", "row_to_structure", "embedded_structures"]


@lru_cache(maxsize=1)
def _read_embedded() -> pd.DataFrame:
    if not EMBEDDED_FILE.is_file():
        raise StructureError(f"embedded data file missing: {EMBEDDED_FILE} (reinstall eacnn)")
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
    """A pymatgen ``Structure`` from one row of the embedded table (a dict-like with the JSON columns)."""
    from pymatgen.core import Lattice, Structure

    try:
        return Structure(
            Lattice(json.loads(row["lattice_matrix"])),
            json.loads(row["species"]),
            json.loads(row["frac_coords"]),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise StructureError(f"row {row.get('material_id', '?')!r} cannot be rebuilt: {err}") from err


def embedded_structures(split: str | None = None, limit: int = 0) -> tuple[pd.DataFrame, list]:
    """The embedded table and its rows as pymatgen ``Structure`` objects, in the same order."""
    df = load_embedded(split, limit)
    return df, [row_to_structure(r) for r in df.to_dict("records")]
