"""Measured powder patterns from files: two-column text, start/step/end ``.dat``, Panalytical ``.xrdml``.

Every reader returns the same :class:`MeasuredPattern` (2θ in degrees, ascending; intensity; wavelength in Å),
which checks its own values on construction, so a pattern that exists is usable. :mod:`eacnn.measured.preprocess` turns it
into the model's 140-bin input.

Text layouts read by :func:`read_pattern` (``.xy``, ``.xye``, ``.txt``, ``.csv``, ``.dat``, ``.asc``, any of them
gzip-compressed, recognised by content, not only by a ``.gz`` suffix):

* **columns**: one point per line, 2θ then intensity; further columns (e.g. an uncertainty) are ignored. Values are
  separated by whitespace, commas or semicolons. A line holding a ``;`` (or a tab and a comma but no ``.``) is read
  with decimal commas (``10,5;123`` = 10.5, 123). Text after ``#`` on a line is dropped.
* **start/step/end** (``fmt="sse"``): the first numeric line holds exactly three numbers ``start step end``
  (degrees); every number after it, however many per line, is an intensity, in order. The i-th intensity
  (i = 0, 1, …) is at 2θ = start + i·step: ``end`` is only a check, and must lie within 1.5 steps of
  start + (N - 1)·step for N intensities. Found automatically when that check holds (a three-column file fails it).

Lines starting with ``#``, ``!``, ``;``, ``%``, ``'`` or ``//`` are comments; lines before the data that are not all
numbers are a header (kept in ``metadata["header"]``); such lines after the data starts are skipped with a warning
naming them.

**XRDML** (``fmt="xrdml"``, found by suffix or by an XML start): the first completed scan's ``<dataPoints>`` (a
scan whose ``status`` is "Aborted" is skipped; ``scan=N`` picks one): the
``<positions axis="2Theta">`` as ``<listPositions>``, or ``<startPosition>``/``<endPosition>`` spread evenly over
the intensities; ``<intensities>`` (or the older ``<counts>``), times ``<beamAttenuationFactors>`` when given. The
``<usedWavelength>`` ``kAlpha1``/``kAlpha2``/``ratioKAlpha2KAlpha1`` go to ``metadata`` (in Å, converted from
the ``unit`` attribute: Å, nm or pm); ``kAlpha1`` is the pattern's wavelength unless one is passed.

**Rigaku RAS** (``fmt="ras"``, ``.ras`` or a ``*RAS_DATA_START`` start): ``2θ counts attenuation`` lines between
``*RAS_INT_START`` and ``*RAS_INT_END`` (intensity = counts × attenuation), the header's
``*HW_XG_WAVE_LENGTH_ALPHA1``/``_ALPHA2`` as the file's wavelengths. Text in UTF-16 (as Windows software writes it)
is read too. Bruker ``.raw``/``.brml`` and Rigaku ``.rasx`` are refused with the conversion to make
(:data:`UNREAD_FORMATS`); files over :data:`MAX_FILE_BYTES` are refused before they are read.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import re
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eacnn.errors import PatternError
from eacnn.physics.wavelengths import ANODES

log = logging.getLogger(__name__)

__all__ = ["MeasuredPattern", "read_pattern", "resolve_wavelength", "kalpha2_of", "scan_of", "KALPHA", "FORMATS"]

# Anode -> (Kα1, Kα2) in Å, from the package's one table (eacnn.physics.wavelengths, with its sources)
KALPHA: dict[str, tuple[float, float]] = {anode: (lines.kalpha1, lines.kalpha2) for anode, lines in ANODES.items()}
FORMATS = ("xy", "sse", "xrdml", "ras")  # two columns, start/step/end + intensities, Panalytical XML, Rigaku RAS
MAX_FILE_BYTES = 256 * 2**20  # a pattern file (or its gzip content) larger than this is refused before it is read:
# a 10⁶-point two-column scan is ~25 MB, so anything this large is not a powder pattern
#: Binary or archive formats eacnn does not read, with the conversion a user needs (suffix -> instrument, advice).
UNREAD_FORMATS = {
    ".raw": ("Bruker/Siemens RAW (binary)", "export it as .xy (2θ, intensity) from DIFFRAC.EVA, or convert it with "
                                             "PowDLL or xylib (e.g. `xyconv`) to .xy"),
    ".brml": ("Bruker BRML (zip archive)", "export it as .xy from DIFFRAC.EVA or convert it with PowDLL to .xy"),
    ".rasx": ("Rigaku RASX (zip archive)", "export it as .ras or .xy from SmartLab Studio II"),
}
#: Units a wavelength may be given in by a file, and their factor to Å.
_LENGTH_UNITS = {"": 1.0, "a": 1.0, "å": 1.0, "angstrom": 1.0, "ångström": 1.0, "nm": 10.0, "pm": 0.01}
MIN_POINTS = 10  # fewer measured points than this is not a powder pattern
MAX_NONFINITE = 0.5  # NaN/inf values are dropped with a warning, unless more than this fraction of points has them
KALPHA1_MATCH = 5e-4  # Å; a wavelength this close to a tabulated Kα1 is taken to be that anode's
_TEXT_SUFFIXES = {".xy", ".xye", ".txt", ".csv", ".dat", ".asc"}
_COMMENTS = ("#", "!", ";", "%", "'", "//")


def _known_names() -> list[str]:
    return [name for el in KALPHA for name in (el, f"{el}Ka1")]


_UNIT = re.compile(r"\s*(å|a|angstroms?|ångström)\s*$", re.IGNORECASE)  # an optional unit after a number


def resolve_wavelength(wavelength: str | float | None) -> float:
    """Wavelength in Å from a number or an anode name; None gives Cu Kα1.

    Accepted forms: a number in Å (``1.5406``, ``"0.71073"``, ``"1.5406 Å"``), an anode (``"Cu"``, ``"mo"``: its
    Kα1 line, see :data:`KALPHA`) or an anode with its line (``"CuKa1"``, ``"Cu Kα1"``, ``"Mo K-alpha1"``).

    Raises:
        PatternError: an unknown name (the message lists the known ones), a Kα/Kα2 name (not one line's
            wavelength), or a number that is not finite or outside (0, 10) Å; the message shows the value.
    """
    if wavelength is None:
        return KALPHA["Cu"][0]
    if isinstance(wavelength, str):
        text = wavelength.strip()
        try:
            value = float(_UNIT.sub("", text)) if text else None
        except ValueError:
            value = None
        if value is None:
            return _named_wavelength(wavelength)
    elif isinstance(wavelength, bool) or not isinstance(wavelength, (int, float, np.integer, np.floating)):
        raise PatternError(f"wavelength must be a number in Å or an anode name such as 'Cu', got {wavelength!r} "
                           f"({type(wavelength).__name__})")
    else:
        value = float(wavelength)
    if not (math.isfinite(value) and 0 < value < 10):
        raise PatternError(f"wavelength must be a finite number of Å within (0, 10), got {wavelength!r} "
                           f"(Cu Kα1 is 1.5406 Å, Mo Kα1 0.70932 Å)")
    return value


def _named_wavelength(name: str) -> float:
    """The Kα1 wavelength (Å) of an anode name such as "Cu", "CuKa1", "Cu Kα1", "Mo K-alpha1"."""
    key = re.sub(r"[\s_\-]+", "", name).lower().replace("α", "a").replace("alpha", "a")
    for element, (ka1, _) in KALPHA.items():
        el = element.lower()
        if key in (el, f"{el}ka1"):
            return ka1
        if key in (f"{el}ka", f"{el}ka2", f"{el}ka12"):
            why = ("Kα2 is the weaker companion line" if key.endswith("ka2") else
                   f"the Kα1/Kα2 average of pymatgen's '{element}Ka' is not used")
            raise PatternError(
                f"wavelength {name!r} is not the scan's Kα1 line ({why}): give {element!r} or '{element} Kα1' "
                f"(= {ka1} Å) or a number in Å; known names: {', '.join(_known_names())}"
            )
    raise PatternError(
        f"unknown wavelength name {name!r}; give a number in Å (e.g. 1.5406) or an anode's Kα1 line: "
        f"{', '.join(_known_names())} (also written 'Cu Kα1')"
    )


def kalpha2_of(kalpha1: float) -> float | None:
    """The tabulated Kα2 (Å) of the anode whose Kα1 is within ``KALPHA1_MATCH`` of ``kalpha1``; None if none is."""
    for ka1, ka2 in KALPHA.values():
        if abs(ka1 - kalpha1) <= KALPHA1_MATCH:
            return ka2
    return None


# ---------------------------------------------------------------------------------------------------------------
# The pattern
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)  # equality is identity: arrays do not compare to one bool
class MeasuredPattern:
    """A measured powder pattern, checked on construction (sorted by 2θ, finite, not flat).

    Non-finite points are dropped with a warning (an error when they are most of the file); a descending scan is
    reversed, an unordered one sorted with a warning. The arrays are read-only.

    Raises:
        PatternError: fewer than ``MIN_POINTS`` points, 2θ outside (0, 180)°, a repeated 2θ, constant intensity,
            no positive intensity; the message names ``source`` and the value.
    """

    two_theta: np.ndarray  # [n] degrees 2θ at ``wavelength``, strictly ascending
    intensity: np.ndarray  # [n] counts or arbitrary units, as measured
    wavelength: float = KALPHA["Cu"][0]  # Å; the Kα1 line the scan was taken with (str names are resolved)
    source: str = "<arrays>"  # the file read, for messages
    metadata: dict = field(default_factory=dict)  # format, header lines, file's Kα1/Kα2/ratio, what was fixed

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: the checked arrays replace the given ones
        try:
            set_(self, "wavelength", resolve_wavelength(self.wavelength))
        except PatternError as err:
            raise PatternError(f"{self.source}: {err}") from None
        set_(self, "source", str(self.source))
        set_(self, "metadata", dict(self.metadata))  # notes below go to our copy, not the caller's dict
        two_theta, intensity = _checked(self.two_theta, self.intensity, self.source, self.metadata)
        two_theta.setflags(write=False)
        intensity.setflags(write=False)
        set_(self, "two_theta", two_theta)
        set_(self, "intensity", intensity)

    def __len__(self) -> int:
        return len(self.two_theta)

    def as_scan(self):
        """The pattern as the whole-pattern fit reads it (:class:`eacnn.retrieval.scanfit.Scan`): as measured, at
        its own wavelength, with the anode's Kα2 (the file's where it gives one; none where the file gives a Kα2
        ratio of 0 or the wavelength is no anode's Kα1, e.g. synchrotron data)."""
        return scan_of(self.two_theta, self.intensity, self.wavelength, self.metadata)

    @property
    def d_spacing(self) -> np.ndarray:
        """d = λ / (2 sin θ) of every point, Å, shape [n] (descending)."""
        return self.wavelength / (2.0 * np.sin(np.radians(self.two_theta) / 2.0))


def scan_of(two_theta: np.ndarray, intensity: np.ndarray, wavelength: float, metadata: dict | None = None):
    """A measured scan as the whole-pattern fit reads it (:class:`eacnn.retrieval.scanfit.Scan`): its Kα2 the
    file's (``metadata["kalpha2"]``, where the file's Kα1 is the scan's wavelength) or the anode's; none where the
    file gives a Kα2 ratio of 0 or the wavelength is no anode's Kα1."""
    from eacnn.retrieval.scanfit import Scan

    metadata = metadata or {}
    # the file's Kα2 and ratio describe the file's Kα1: read only when the scan is taken at that wavelength
    own = metadata.get("kalpha1") is not None and abs(metadata["kalpha1"] - wavelength) <= KALPHA1_MATCH
    ka2 = (own and metadata.get("kalpha2")) or kalpha2_of(wavelength)
    if own and float(metadata.get("kalpha2_ratio", 1.0) or 0.0) == 0.0:
        ka2 = None
    return Scan(np.asarray(two_theta), np.asarray(intensity), float(wavelength), None if ka2 is None else float(ka2))


def _checked(two_theta, intensity, source: str, notes: dict) -> tuple[np.ndarray, np.ndarray]:
    """Validated copies: float64, finite, strictly ascending 2θ; adds what was done to ``notes``."""
    try:
        tt = np.array(two_theta, dtype=np.float64).ravel()  # copies: the caller's arrays stay untouched
        y = np.array(intensity, dtype=np.float64).ravel()
    except (TypeError, ValueError) as err:
        raise PatternError(f"{source}: 2θ and intensity must be numbers ({err})") from None
    if len(tt) != len(y):
        raise PatternError(f"{source}: {len(tt)} 2θ values but {len(y)} intensities")
    if len(tt) == 0:
        raise PatternError(f"{source}: no data points")
    finite = np.isfinite(tt) & np.isfinite(y)
    n_bad = int(len(tt) - finite.sum())
    if n_bad > MAX_NONFINITE * len(tt):
        raise PatternError(f"{source}: {n_bad} of {len(tt)} points have NaN/inf 2θ or intensity")
    if n_bad:
        first = int(np.flatnonzero(~finite)[0])
        log.warning("%s: dropped %d points with NaN/inf values (first: point %d, 2θ=%r, I=%r)",
                    source, n_bad, first, float(tt[first]), float(y[first]))
        tt, y = tt[finite], y[finite]
        notes["n_nonfinite_dropped"] = n_bad
    if len(tt) < MIN_POINTS:
        raise PatternError(f"{source}: only {len(tt)} data points; a powder pattern needs at least {MIN_POINTS}")
    if tt.min() <= 0 or tt.max() >= 180:
        bad = float(tt.min() if tt.min() <= 0 else tt.max())
        raise PatternError(f"{source}: 2θ = {bad!r}° is outside (0, 180)° (is the first column 2θ in degrees?)")
    step = np.diff(tt)
    if not (step > 0).all():
        if (step < 0).all():  # a scan recorded from high to low angle
            order = np.arange(len(tt))[::-1]
        else:
            log.warning("%s: 2θ is not monotonic; the points were sorted", source)
            notes["sorted"] = True
            order = np.argsort(tt, kind="stable")
        tt, y = tt[order], y[order]
        repeated = np.flatnonzero(np.diff(tt) == 0)
        if len(repeated):
            raise PatternError(
                f"{source}: 2θ = {float(tt[repeated[0]])!r}° occurs more than once ({len(repeated)} repeated values); "
                f"are two scans concatenated?"
            )
    if y.max() == y.min():
        raise PatternError(f"{source}: flat pattern, every intensity is {float(y[0])!r}")
    if y.max() <= 0:
        raise PatternError(f"{source}: no positive intensity (largest {float(y.max())!r})")
    return tt, y


# ---------------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------------
def _read_capped(path: Path) -> bytes:
    """The file's bytes, gunzipped when compressed; refused past :data:`MAX_FILE_BYTES` before it is read whole."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PatternError(f"{path}: {size / 2**20:,.0f} MB is not a powder pattern file (limit "
                               f"{MAX_FILE_BYTES // 2**20} MB); is it the right file?")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise PatternError(f"{path}: cannot be read ({err.strerror or err})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
                raw = gz.read(MAX_FILE_BYTES + 1)  # streamed: a small file that inflates hugely stops at the cap
        except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a damaged stream is zlib.error
            raise PatternError(f"{path}: corrupt gzip file ({err}); copy it again") from None
        if len(raw) > MAX_FILE_BYTES:
            raise PatternError(f"{path}: inflates to more than {MAX_FILE_BYTES // 2**20} MB, which is not a powder "
                               f"pattern file")
    return raw


def _refuse_unread_format(path: Path, raw: bytes, suffix: str) -> None:
    """A clear message, with the conversion to make, for binary and archive formats eacnn does not read."""
    known = UNREAD_FORMATS.get(suffix)
    if known is None and raw[:4] in (b"RAW1", b"RAW ", b"RAW4"):
        known = UNREAD_FORMATS[".raw"]
    if known is None and raw[:4] == b"PK\x03\x04" and suffix not in _TEXT_SUFFIXES:
        known = ("a zip archive", "unpack it, or export the scan as .xy, .xrdml or .ras")
    if known is not None:
        raise PatternError(f"{path}: {known[0]} files are not read by eacnn; {known[1]}")


def read_pattern(path: str | Path, wavelength: str | float | None = None, fmt: str | None = None,
                 scan: int | None = None) -> MeasuredPattern:
    """Read a measured powder pattern.

    Args:
        path: a ``.xy``/``.xye``/``.txt``/``.csv``/``.dat``/``.asc`` text file or ``.xrdml`` file, optionally gzipped.
        wavelength: Å (a number, or a string holding one) or an anode name ("Cu", "Mo Kα1", ...; see
            :func:`resolve_wavelength`). None: the file's Kα1 (``.xrdml``), else Cu Kα1.
            A value given here wins over the file's (with a warning if they differ).
        fmt: one of ``FORMATS`` to skip detection: "xy" (columns), "sse" (start/step/end), "xrdml", "ras".
        scan: for files holding several scans (``.xrdml``, ``.ras``), which one to read, counted from 1; None reads
            the first completed one (an aborted scan is skipped with a warning).

    Returns:
        The pattern; ``metadata`` holds "format", "header", and for ``.xrdml`` "kalpha1", "kalpha2",
        "kalpha2_ratio" when the file gives them, and "wavelength_from" ("argument", "file" or "default").

    Raises:
        PatternError: missing, empty or unreadable file, unknown ``fmt`` or wavelength, or bad values (see
            :class:`MeasuredPattern`); the message names the file.
    """
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise PatternError(f"unknown pattern format {fmt!r}; choose one of {FORMATS}")
    try:
        given = resolve_wavelength(wavelength) if wavelength is not None else None
    except PatternError as err:
        raise PatternError(f"{path}: {err}") from None
    if path.is_dir():
        raise PatternError(f"{path}: is a directory, not a pattern file")
    if scan is not None and (isinstance(scan, bool) or not isinstance(scan, int) or scan < 1):
        raise PatternError(f"{path}: scan must be a whole number >= 1 (the first scan is 1), got {scan!r}")
    if not path.is_file():
        raise PatternError(f"{path}: no such file")
    raw = _read_capped(path)
    if not raw.strip():
        raise PatternError(f"{path}: empty file")
    suffixes = [x.lower() for x in path.suffixes]
    suffix = suffixes[-2] if suffixes[-1:] == [".gz"] and len(suffixes) > 1 else path.suffix.lower()
    if fmt is None:
        _refuse_unread_format(path, raw, suffix)
        is_xml = suffix == ".xrdml" or (suffix not in _TEXT_SUFFIXES and raw.lstrip()[:5] in (b"<?xml", b"<xrdM"))
        is_ras = suffix == ".ras" or (not is_xml and raw.lstrip()[:15] == b"*RAS_DATA_START")
        fmt = "xrdml" if is_xml else "ras" if is_ras else None
    if fmt == "xrdml":
        tt, y, meta = _read_xrdml(raw, path, scan)
    elif fmt == "ras":
        tt, y, meta = _read_ras(_decode(raw, path), path, scan)
    else:
        if scan not in (None, 1):
            raise PatternError(f"{path}: a text file holds one scan; scan={scan} asks for another")
        tt, y, meta = _read_text(_decode(raw, path), path, fmt)

    file_wavelength = meta.get("kalpha1")
    if given is not None:
        value = given
        if file_wavelength is not None and abs(value - file_wavelength) > KALPHA1_MATCH:
            log.warning("%s: using wavelength %.5f Å, but the file says Kα1 = %.5f Å", path, value, file_wavelength)
        meta["wavelength_from"] = "argument"
    elif file_wavelength is not None:
        try:
            value = resolve_wavelength(file_wavelength)
        except PatternError as err:
            raise PatternError(f"{path}: the file's <kAlpha1>: {err}; pass the right one as wavelength=") from None
        meta["wavelength_from"] = "file"
    else:
        value = resolve_wavelength(None)
        meta["wavelength_from"] = "default"
    return MeasuredPattern(tt, y, value, str(path), meta)


def _decode(raw: bytes, path: Path | str = "<bytes>") -> str:
    """Text of a file: UTF-16 (by its byte-order mark, or by zero bytes in every other place, as Windows software
    writes it), UTF-8, else Latin-1 (instrument software often writes Latin-1 headers: "°", "Å")."""
    head = raw[:4096]
    utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(head) >= 8 and head[1::2].count(0) > 0.4 * len(head[1::2])
                                                         and head[0::2].count(0) < 0.1 * len(head[0::2]))
    utf16_be = len(head) >= 8 and head[0::2].count(0) > 0.4 * len(head[0::2]) and head[1::2].count(0) == 0
    if utf16 or utf16_be:
        try:
            return raw.decode("utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else
                              "utf-16-be" if utf16_be and not utf16 else "utf-16-le")
        except UnicodeDecodeError as err:
            raise PatternError(f"{path}: looks like UTF-16 text but does not decode ({err.reason}); save it as "
                               f"UTF-8 or ASCII") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


_SEMICOLON_OR_SPACE = re.compile(r"[;\s]+")
_COMMA_OR_SPACE = re.compile(r"[,\s]+")


def _numbers(line: str) -> list[float] | None:
    """The numbers of a line, or None if any token is not a number."""
    if ";" in line or ("\t" in line and "," in line and "." not in line):  # decimal commas
        tokens = [t.replace(",", ".") for t in _SEMICOLON_OR_SPACE.split(line) if t]
    elif "," in line:
        tokens = [t for t in _COMMA_OR_SPACE.split(line) if t]
    else:  # the common case, whitespace-separated columns: str.split is several times faster than a regex
        tokens = line.split()
    try:
        return [float(t) for t in tokens]
    except ValueError:
        return None


def _plain_columns(text: str) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """The common file, fast: comment lines at the top, then only whitespace-separated numbers, the same count on
    every line (at least two). None for anything else, which the general reader handles."""
    lines = text.splitlines()
    k = 0
    while k < len(lines) and k < 200 and (not lines[k].strip() or lines[k].lstrip().startswith(_COMMENTS)):
        k += 1
    body = lines[k:]
    while body and not body[-1].strip():
        body.pop()
    joined = " ".join(body)
    if len(body) < 2 or any(c in joined for c in ",;#"):  # decimal commas, separators, comments: general reader
        return None
    n_cols = len(body[0].split())
    if n_cols < 2:
        return None
    try:
        values = np.array(joined.split(), dtype=np.float64)
    except ValueError:
        return None
    if values.size != n_cols * len(body):
        return None
    data = values.reshape(len(body), n_cols)
    if n_cols == 3 and _start_step_end(data.tolist()) is not None:  # "start step end" + intensities, 3 a line
        return None
    header = [line.strip() for line in lines[:k] if line.strip()]
    return data[:, 0], data[:, 1], {"header": header[:50], "n_header_lines": len(header), "format": "xy",
                                    "n_columns": n_cols}


def _read_text(text: str, path: Path, fmt: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Columns or start/step/end from text; ``fmt`` None detects which."""
    if fmt in (None, "xy"):
        plain = _plain_columns(text)
        if plain is not None:
            return plain
    header: list[str] = []
    rows: list[list[float]] = []
    row_lines: list[int] = []  # 1-based line number of each row
    skipped: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(_COMMENTS):
            if line:
                header.append(line)
            continue
        values = _numbers(line.split("#", 1)[0] if "#" in line else line)
        if not values:
            (skipped if rows else header).append(number if rows else line)
            continue
        rows.append(values)
        row_lines.append(number)
    if not rows:
        raise PatternError(f"{path}: no numeric data lines ({len(text.splitlines())} lines read)")
    if skipped:
        log.warning("%s: skipped %d non-numeric lines after the data started (first: line %d)",
                    path, len(skipped), skipped[0])
    meta = {"header": header[:50], "n_header_lines": len(header)}

    sse = _start_step_end(rows)
    if fmt == "sse" and sse is None:
        n = sum(len(r) for r in rows[1:])
        raise PatternError(
            f"{path}: not a start/step/end file: the first numeric line (line {row_lines[0]}) is {rows[0]!r}, "
            f"which does not match the {n} intensities that follow (2θ_i = start + i·step must end near 'end')"
        )
    if sse is not None and fmt in (None, "sse"):
        meta["format"] = "sse"
        meta["start_step_end"] = tuple(rows[0])
        return sse[0], sse[1], meta

    # columns; leading numeric lines with a single value (e.g. a point count) belong to the header
    first = next((i for i, r in enumerate(rows) if len(r) >= 2), None)
    if first is None:
        raise PatternError(f"{path}: no line holds two numbers (2θ and intensity); for one intensity per line "
                           f"use the start/step/end layout")
    short = [row_lines[i] for i in range(first, len(rows)) if len(rows[i]) < 2]
    if short:
        log.warning("%s: skipped %d data lines with a single number (first: line %d)", path, len(short), short[0])
    table = [r[:2] for r in rows[first:] if len(r) >= 2]
    data = np.array(table, dtype=np.float64)  # [n, 2]
    meta["format"] = "xy"
    meta["n_columns"] = max(len(r) for r in rows[first:])
    return data[:, 0], data[:, 1], meta


def _start_step_end(rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray] | None:
    """(2θ, intensity) if ``rows`` hold "start step end" then intensities; None if they do not."""
    if len(rows[0]) != 3 or len(rows) < 2:
        return None
    start, step, end = rows[0]
    values = np.array([v for r in rows[1:] for v in r], dtype=np.float64)  # [N]
    if not (step > 0 and end > start and math.isfinite(start + step + end)):
        return None
    if abs(start + (len(values) - 1) * step - end) > 1.5 * step:
        return None
    return start + step * np.arange(len(values)), values


def _local(tag: str) -> str:
    """An XML tag without its namespace ('{http://www.xrdml.com/...}scan' -> 'scan')."""
    return tag.rsplit("}", 1)[-1]


def _floats(element, path: Path, what: str) -> np.ndarray:
    try:
        return np.array([float(t) for t in (element.text or "").split()], dtype=np.float64)
    except ValueError:
        raise PatternError(f"{path}: <{what}> holds a value that is not a number") from None


def _wavelength_value(child, path: Path) -> float:
    """A wavelength element's value in Å, honouring its ``unit`` attribute (Å, nm or pm)."""
    unit = (child.get("unit") or "").strip().lower()
    if unit not in _LENGTH_UNITS:
        raise PatternError(f"{path}: <{_local(child.tag)} unit={child.get('unit')!r}> is not a length unit eacnn "
                           f"knows ({', '.join(u for u in _LENGTH_UNITS if u)})")
    try:
        return float(child.text) * _LENGTH_UNITS[unit]
    except ValueError:
        raise PatternError(f"{path}: <{_local(child.tag)}> = {child.text!r} is not a number") from None


def _chosen_scan(scans: list, path: Path, scan: int | None, status_of) -> int:
    """Index of the scan to read: ``scan`` (1-based) when given, else the first whose status is not aborted."""
    if scan is not None:
        if scan > len(scans):
            raise PatternError(f"{path}: scan {scan} asked for, but the file holds {len(scans)} scan(s)")
        return scan - 1
    statuses = [status_of(s) for s in scans]
    done = [i for i, st in enumerate(statuses) if st not in ("aborted", "interrupted", "cancelled", "canceled")]
    if not done:
        raise PatternError(f"{path}: every scan in the file was aborted ({statuses}); name one with --scan N to "
                           f"read it anyway")
    if done[0] > 0 or len(scans) > 1:
        log.warning("%s: %d scans in the file (status %s); reading scan %d%s", path, len(scans), statuses,
                    done[0] + 1, " (the first completed one)" if done[0] > 0 else "")
    return done[0]


def _read_xrdml(raw: bytes, path: Path, scan: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """One scan of a Panalytical XRDML file (the first completed one, or ``scan``): its 2θ axis, intensities (or
    counts), and usedWavelength (in Å, whatever unit the file states)."""
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as err:
        raise PatternError(f"{path}: not readable as XRDML/XML ({err})") from None
    meta: dict = {"format": "xrdml", "header": []}
    for el in root.iter():
        if _local(el.tag) == "usedWavelength":
            names = {"kAlpha1": "kalpha1", "kAlpha2": "kalpha2", "kBeta": "kbeta",
                     "ratioKAlpha2KAlpha1": "kalpha2_ratio"}
            for child in el:
                key = names.get(_local(child.tag))
                if key and (child.text or "").strip():
                    if key != "kalpha2_ratio":
                        meta[key] = _wavelength_value(child, path)
                        continue
                    try:
                        meta[key] = float(child.text)
                    except ValueError:
                        raise PatternError(f"{path}: <{_local(child.tag)}> = {child.text!r} is not a number") from None
            break
    scans = [el for el in root.iter() if _local(el.tag) == "scan"]
    scans = [s for s in scans if any(_local(c.tag) == "dataPoints" for c in s.iter())]
    if scans:
        index = _chosen_scan(scans, path, scan, lambda s: (s.get("status") or "").strip().lower())
        points = [next(c for c in scans[index].iter() if _local(c.tag) == "dataPoints")]
        meta["scan"], meta["n_scans"] = index + 1, len(scans)
    else:
        points = [el for el in root.iter() if _local(el.tag) == "dataPoints"]
        if not points:
            raise PatternError(f"{path}: XRDML file without <dataPoints>")
        points = [points[_chosen_scan(points, path, scan, lambda s: "")]]
    children = {_local(c.tag): c for c in points[0] if _local(c.tag) != "positions"}
    counts = children.get("intensities", children.get("counts"))
    if counts is None:
        raise PatternError(f"{path}: <dataPoints> has neither <intensities> nor <counts>")
    y = _floats(counts, path, _local(counts.tag))
    if "beamAttenuationFactors" in children:
        factors = _floats(children["beamAttenuationFactors"], path, "beamAttenuationFactors")
        if len(factors) == len(y):
            y = y * factors
    axis = [c for c in points[0] if _local(c.tag) == "positions" and c.get("axis", "").lower() == "2theta"]
    if not axis:
        found = [c.get("axis") for c in points[0] if _local(c.tag) == "positions"]
        raise PatternError(f"{path}: no <positions axis=\"2Theta\"> in <dataPoints> (axes: {found})")
    parts = {_local(c.tag): c for c in axis[0]}
    if "listPositions" in parts:
        tt = _floats(parts["listPositions"], path, "listPositions")
        if len(tt) != len(y):
            raise PatternError(f"{path}: {len(tt)} listed 2θ positions but {len(y)} intensities")
    elif "startPosition" in parts and "endPosition" in parts:
        start = _floats(parts["startPosition"], path, "startPosition")
        end = _floats(parts["endPosition"], path, "endPosition")
        if len(start) != 1 or len(end) != 1:
            raise PatternError(f"{path}: <startPosition>/<endPosition> must hold one number each")
        tt = np.linspace(start[0], end[0], len(y)) if len(y) > 1 else start
    else:
        raise PatternError(f"{path}: the 2Theta axis has neither <listPositions> nor <startPosition>/<endPosition>")
    return tt, y, meta


# Rigaku RAS: "*KEY value" header lines and "2θ counts attenuation" data lines, between *RAS_INT_START/_END, one
# block per scan (*RAS_DATA_START ... *RAS_DATA_END)
_RAS_WAVELENGTH = {"*HW_XG_WAVE_LENGTH_ALPHA1": "kalpha1", "*HW_XG_WAVE_LENGTH_ALPHA2": "kalpha2"}


def _read_ras(text: str, path: Path, scan: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """One scan of a Rigaku ``.ras`` file: 2θ, counts × attenuation factor (the third column, when given), and the
    header's Kα1/Kα2 wavelengths (``*HW_XG_WAVE_LENGTH_ALPHA1``, in the unit of ``*HW_XG_WAVE_LENGTH_UNIT``)."""
    blocks: list[dict] = []
    current: dict | None = None
    in_data = False
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("*"):
            key, _, value = line.partition(" ")
            value = value.strip().strip('"')
            if key == "*RAS_DATA_START":
                current = {"header": {}, "rows": []}
                blocks.append(current)
            elif key == "*RAS_INT_START":
                in_data = True
            elif key == "*RAS_INT_END":
                in_data = False
            elif current is not None and not in_data:
                current["header"][key] = value
            continue
        if in_data and current is not None:
            values = _numbers(line)
            if not values or len(values) < 2:
                raise PatternError(f"{path}: line {number} of the RAS data is not '2θ counts [attenuation]': "
                                   f"{line[:60]!r}")
            current["rows"].append(values[:3])
    blocks = [b for b in blocks if b["rows"]]
    if not blocks:
        raise PatternError(f"{path}: no *RAS_INT_START data block with numbers: not a readable Rigaku RAS file")
    index = _chosen_scan(blocks, path, scan, lambda b: "")
    block = blocks[index]
    data = np.array([r + [1.0] * (3 - len(r)) for r in block["rows"]], dtype=np.float64)  # [n, 3]
    header = block["header"]
    meta: dict = {"format": "ras", "header": [f"{k} {v}" for k, v in list(header.items())[:50]],
                  "scan": index + 1, "n_scans": len(blocks)}
    unit = header.get("*HW_XG_WAVE_LENGTH_UNIT", "").strip().lower()
    factor = _LENGTH_UNITS.get(unit)
    if factor is None:
        raise PatternError(f"{path}: *HW_XG_WAVE_LENGTH_UNIT {unit!r} is not a length unit eacnn knows")
    for key, name in _RAS_WAVELENGTH.items():
        if header.get(key):
            try:
                meta[name] = float(header[key]) * factor
            except ValueError:
                raise PatternError(f"{path}: {key} {header[key]!r} is not a number") from None
    attenuation = data[:, 2]
    return data[:, 0], data[:, 1] * np.where(attenuation > 0, attenuation, 1.0), meta
