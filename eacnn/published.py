"""Published numbers this book sets its own results against, each typed once here with its source.

Nothing in this module is computed. A notebook that quotes a published value reads it from :func:`published` (and
glues it for the prose), so a number from the literature appears in exactly one place: :data:`PUBLISHED`.

Example:
    >>> published("eacnn.table1.top1")
    95.96
    >>> published_table().loc["eacnn.table2.fm3m.test_samples", "value"]
    808.0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

__all__ = ["PublishedValue", "SOURCES", "PUBLISHED", "published", "published_row", "published_table"]

#: The publications quoted, by short name.
SOURCES = {
    "eacnn": "Zhang, Wang & Hu, 'Structural Fingerprinting of Crystalline Materials from XRD Patterns Using Atomic "
             "Cluster Expansion Neural Network and Atomic Cluster Expansion', Applied Sciences 15(11):5851 (2025), "
             "doi:10.3390/app15115851",
    "pxrdgen": "Li et al., 'Powder Diffraction Crystal Structure Determination Using Generative Models' (PXRDGen), "
               "arXiv:2409.04727 (2024)",
}


@dataclass(frozen=True)
class PublishedValue:
    """One published number."""

    key: str  # dotted name, "<source>.<table or section>.<quantity>", e.g. "eacnn.table1.top1"
    quantity: str  # what was measured, in words
    value: float  # the number as printed
    unit: str  # "%", "structures", "space groups", ...
    source: str  # short name in SOURCES
    where: str  # table, figure or section of the source
    note: str = ""  # protocol and pool, so the number is not read out of context


_EACNN_T1 = "clean simulated patterns of the paper's own test split (from 154,714 MP structures)"
_PXRDGEN = "contrastive PXRD encoder alone, clean simulated patterns, pool: MP-20 test split (9,046 structures)"

#: The one table of published numbers.
PUBLISHED: tuple[PublishedValue, ...] = (
    PublishedValue("eacnn.table1.top1", "Top-1 retrieval accuracy", 95.96, "%", "eacnn", "Table 1", _EACNN_T1),
    PublishedValue("eacnn.table1.top3", "Top-3 retrieval accuracy", 99.95, "%", "eacnn", "Table 1", _EACNN_T1),
    PublishedValue("eacnn.table1.top5", "Top-5 retrieval accuracy", 99.98, "%", "eacnn", "Table 1", _EACNN_T1),
    PublishedValue("eacnn.table2.fm3m.top1", "Top-1 retrieval accuracy, space group Fm-3m (225)", 95.92, "%",
                   "eacnn", "Table 2", "the most common cubic group of the paper's test split"),
    PublishedValue("eacnn.table2.fm3m.test_samples", "test structures of space group Fm-3m (225)", 808,
                   "structures", "eacnn", "Table 2"),
    PublishedValue("eacnn.table2.single.top1", "Top-1 retrieval accuracy, space groups with one test sample", 96.00,
                   "%", "eacnn", "Table 2", "one query per group; 24 of 25 retrieved first"),
    PublishedValue("eacnn.table2.single.groups", "space groups with one test sample", 25, "space groups", "eacnn",
                   "Table 2"),
    PublishedValue("eacnn.data.structures", "Materials Project structures used for training and testing", 154_714,
                   "structures", "eacnn", "§2.2"),
    PublishedValue("eacnn.data.spacegroups", "space groups covered by the data", 228, "space groups", "eacnn",
                   "§2.2, Fig. 2", "of the 230; a strongly long-tailed distribution"),
    PublishedValue("pxrdgen.mp20.top1", "Top-1 retrieval accuracy", 46.99, "%", "pxrdgen", "retrieval results",
                   _PXRDGEN),
    PublishedValue("pxrdgen.mp20.top3", "Top-3 retrieval accuracy", 75.53, "%", "pxrdgen", "retrieval results",
                   _PXRDGEN),
    PublishedValue("pxrdgen.mp20.top5", "Top-5 retrieval accuracy", 84.58, "%", "pxrdgen", "retrieval results",
                   _PXRDGEN),
    PublishedValue("pxrdgen.mp20.top10", "Top-10 retrieval accuracy", 92.42, "%", "pxrdgen", "retrieval results",
                   _PXRDGEN),
)

_BY_KEY = {row.key: row for row in PUBLISHED}


def published_row(key: str) -> PublishedValue:
    """The row of :data:`PUBLISHED` named ``key`` (e.g. ``"eacnn.table2.fm3m.top1"``)."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"no published value {key!r}; known keys: {', '.join(_BY_KEY)}") from None


def published(key: str) -> float:
    """The published value named ``key``, as printed in its source (percent for accuracies)."""
    return published_row(key).value


def published_table(prefix: str = "") -> pd.DataFrame:
    """:data:`PUBLISHED` as a DataFrame indexed by key, with the full citation in ``citation``; only keys starting
    with ``prefix`` when one is given (``"eacnn.table2"``)."""
    rows = [asdict(r) | {"citation": SOURCES[r.source]} for r in PUBLISHED if r.key.startswith(prefix)]
    table = pd.DataFrame(rows, columns=[*PublishedValue.__dataclass_fields__, "citation"]).set_index("key")
    table["value"] = table["value"].astype(float)
    return table
