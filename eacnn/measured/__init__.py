"""Measured powder patterns, end to end: read a file, put it on the model's 140-bin grid.

>>> from eacnn.measured import read_pattern, to_model_grid
>>> result = to_model_grid(read_pattern("scan.xrdml"))        # doctest: +SKIP
>>> result.vector.shape, result.coverage                       # doctest: +SKIP
((140,), 1.0)

Readers live in :mod:`eacnn.measured.io`, the preprocessing (wavelength mapping, Kα2 stripping, SNIP background,
smoothing, binning, coverage) in :mod:`eacnn.measured.preprocess`; this module gathers their public names.
"""

from __future__ import annotations

from eacnn.measured.io import FORMATS, KALPHA, MeasuredPattern, kalpha2_of, read_pattern, resolve_wavelength
from eacnn.measured.preprocess import (
    GridResult,
    PreprocessConfig,
    bin_integrals,
    map_wavelength,
    snip_background,
    strip_kalpha2,
    to_model_grid,
)

__all__ = [
    "FORMATS",
    "KALPHA",
    "MeasuredPattern",
    "read_pattern",
    "resolve_wavelength",
    "kalpha2_of",
    "GridResult",
    "PreprocessConfig",
    "to_model_grid",
    "snip_background",
    "strip_kalpha2",
    "map_wavelength",
    "bin_integrals",
]
