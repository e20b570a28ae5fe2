"""The X-ray lines of laboratory anodes: the one wavelength table of the package (Å).

Cu Kα1 is the project's 1.5406 Å (:class:`eacnn.config.XRDConfig`, the paper's value); the other Cu lines are Hölzer
et al., *Phys. Rev. A* 56, 4554 (1997): Kα2 1.544427 Å, Kβ1 1.392218 Å. Mo Kα1 is 0.70932 Å (International Tables
Vol. C (2006), Table 4.2.2.6: 0.70931713 Å). The other anodes' Kα1/Kα2 are Bearden (1967), *Rev. Mod. Phys.* 39, 78,
as pymatgen tabulates them (its ``"CoKa1"``, ``"CoKa2"``, ...). The sources differ by about 20 ppm, a shift below
0.002° 2θ at 80°: nothing against 0.5° bins, but one table keeps every module on the same values.
"""

from __future__ import annotations

from typing import NamedTuple

from eacnn.config import XRDConfig

__all__ = ["Lines", "ANODES", "CU"]


class Lines(NamedTuple):
    """One anode's emission lines (Å)."""

    kalpha1: float
    kalpha2: float
    kbeta: float | None = None  # Kβ1, where a module models it


#: anode -> its lines (Å)
ANODES: dict[str, Lines] = {
    "Cu": Lines(XRDConfig().wavelength, 1.544427, 1.392218),
    "Mo": Lines(0.70932, 0.71359),
    "Co": Lines(1.78896, 1.79285),
    "Cr": Lines(2.28970, 2.29361),
    "Fe": Lines(1.93604, 1.93998),
    "Ag": Lines(0.559421, 0.563813),
}
CU = ANODES["Cu"]
