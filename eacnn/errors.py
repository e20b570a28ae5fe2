"""Every error eacnn raises on purpose. Messages name the offending value and say what to do."""

from __future__ import annotations


class EACNNError(Exception):
    """Base class: catch this to handle any eacnn input problem."""


class StructureError(EACNNError, ValueError):
    """A structure cannot be used (empty, malformed CIF, overlapping atoms, too many sites...)."""


class UnknownElementError(StructureError):
    """An element (or dummy species) has no tabulated atomic scattering factor."""


class DisorderError(StructureError):
    """Partial occupancy where the chosen disorder policy refuses it."""


class NoReflectionsError(EACNNError, ValueError):
    """No Bragg reflection falls inside the 2θ window (e.g. a tiny cell with a short wavelength window)."""


class PatternError(EACNNError, ValueError):
    """A measured or given pattern is empty, flat, NaN or of the wrong shape."""


class CacheError(EACNNError, RuntimeError):
    """A cache file is corrupt or stale; it is reported and rebuilt, never trusted silently."""


class CheckpointError(EACNNError, RuntimeError):
    """A checkpoint is unreadable, corrupt, or was made for another config or data set."""


class IntegrityError(EACNNError, RuntimeError):
    """A file fails its check: a shipped file differs from the SHA-256 recorded in the package, or a zip archive
    (a checkpoint) fails its CRC. The message names the file and says how to get a good copy."""


class ConfigError(EACNNError, ValueError):
    """A config override names a field that does not exist, or gives a value of the wrong type."""


class MissingAPIKeyError(EACNNError, RuntimeError):
    """The Materials Project API was asked for without an API key."""


class BookError(EACNNError, RuntimeError):
    """The book cannot be built: a bad table of contents, a notebook that fails, or a Sphinx warning under -W."""
