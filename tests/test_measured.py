"""eacnn.measured: readers of measured patterns, wavelength mapping, Kα2 stripping, SNIP, binning and coverage."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from eacnn.config import XRDConfig
from eacnn.errors import ConfigError, PatternError
from eacnn.measured import (
    KALPHA,
    MeasuredPattern,
    PreprocessConfig,
    bin_integrals,
    kalpha2_of,
    map_wavelength,
    read_pattern,
    resolve_wavelength,
    snip_background,
    strip_kalpha2,
    to_model_grid,
)
from eacnn.datasets.structures import read_cif
from eacnn.physics.xrd import XRDSimulator, bin_profile

FIXTURES = Path(__file__).parent / "fixtures"
MEASURED = FIXTURES / "measured"  # synthetic reader fixtures
from eacnn.paths import MEASURED_DIR  # noqa: E402  -- the five real measured patterns
REAL = ("MnO", "Mn2O3", "MnO2", "TiO2", "LiMnO2")  # Example__<phase>.xy.gz, Cu Kα, 10–100° in 0.01° steps
CU, MO = 1.5406, 0.70932  # Å, Kα1
ROUND_TRIP_TOL = 1e-2  # max |measured-path vector - simulated vector| for a dense noise-free Cu 'measurement'


def _synthetic_module():
    spec = importlib.util.spec_from_file_location("make_synthetic", MEASURED / "make_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SYNTHETIC = _synthetic_module()


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def rutile():
    return read_cif(FIXTURES / "cifs" / "TiO2_136.cif")


@pytest.fixture(scope="module")
def reference(rutile):
    """The simulator's 140-bin vector of rutile (Cu Kα1, 10–80°)."""
    return XRDSimulator().vector(rutile)


def _dense(structure, cfg: XRDConfig) -> tuple[np.ndarray, np.ndarray]:
    """A noise-free 'measurement': the simulated profile's mean over cfg.step-wide bins, at the bin centres."""
    # the sticks depend on λ and the window only; on a 0.5° grid the simulator's binning kernel stays small
    sticks = XRDSimulator(dataclasses.replace(cfg, step=0.5)).sticks(structure)
    return cfg.bin_centers(), bin_profile(*sticks, cfg) / cfg.step


def _write_xy(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savetxt(path, np.column_stack([x, y]), fmt="%.6f %.8e")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, fmt",
    [("synthetic_comments.txt", "xy"), ("synthetic_header.csv", "xy"), ("synthetic_sse.dat", "sse"),
     ("synthetic.xrdml", "xrdml")],
)
def test_readers_recover_the_synthetic_pattern(name, fmt):
    x, y = SYNTHETIC.pattern()
    p = read_pattern(MEASURED / name)
    assert p.metadata["format"] == fmt
    np.testing.assert_allclose(p.two_theta, x, atol=1e-9)
    np.testing.assert_array_equal(p.intensity, y)
    assert p.source == str(MEASURED / name)
    assert not p.two_theta.flags.writeable and not p.intensity.flags.writeable


def test_text_header_and_comments_are_kept():
    p = read_pattern(MEASURED / "synthetic_comments.txt")
    assert "Angle Intensity" in p.metadata["header"]
    assert any(line.startswith("!") for line in p.metadata["header"])
    assert p.wavelength == CU and p.metadata["wavelength_from"] == "default"
    assert read_pattern(MEASURED / "synthetic_sse.dat").metadata["start_step_end"] == (10.0, 0.05, 80.0)


def test_xrdml_wavelength_comes_from_the_file(caplog):
    p = read_pattern(MEASURED / "synthetic.xrdml")
    ka1, ka2, ratio = SYNTHETIC.CO_KALPHA
    assert p.wavelength == pytest.approx(ka1) and p.metadata["wavelength_from"] == "file"
    assert p.metadata["kalpha2"] == pytest.approx(ka2) and p.metadata["kalpha2_ratio"] == pytest.approx(ratio)
    with caplog.at_level(logging.WARNING, logger="eacnn.measured.io"):
        forced = read_pattern(MEASURED / "synthetic.xrdml", wavelength="Cu")
    assert forced.wavelength == CU and forced.metadata["wavelength_from"] == "argument"
    assert "the file says" in caplog.text


def test_xrdml_list_positions_counts_and_no_namespace(tmp_path):
    x, y = SYNTHETIC.pattern()
    text = f"""<?xml version="1.0"?><xrdMeasurements><xrdMeasurement><scan><dataPoints>
        <positions axis="2Theta" unit="deg"><listPositions>{" ".join(f"{v:.2f}" for v in x)}</listPositions></positions>
        <beamAttenuationFactors>{" ".join(["2"] * len(x))}</beamAttenuationFactors>
        <counts unit="counts">{" ".join(f"{v:.0f}" for v in y)}</counts>
        </dataPoints></scan></xrdMeasurement></xrdMeasurements>"""
    path = tmp_path / "old.xrdml"
    path.write_text(text)
    p = read_pattern(path)
    np.testing.assert_allclose(p.two_theta, x)
    np.testing.assert_array_equal(p.intensity, 2 * y)  # attenuation factors applied
    assert p.wavelength == CU and p.metadata["wavelength_from"] == "default"


def test_gzip_is_found_by_content_and_suffix(tmp_path):
    raw = (MEASURED / "synthetic_header.csv").read_bytes()
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "b.csv").write_bytes(gzip.compress(raw))  # compressed but not named so
    expected = read_pattern(MEASURED / "synthetic_header.csv")
    for name in ("a.csv.gz", "b.csv"):
        np.testing.assert_array_equal(read_pattern(tmp_path / name).intensity, expected.intensity)


def test_semicolons_decimal_commas_descending_and_extra_columns(tmp_path):
    x, y = SYNTHETIC.pattern()
    lines = ["Winkel;Intensität"] + [f"{a:.2f};{b:.1f}".replace(".", ",") for a, b in zip(x, y)]
    (tmp_path / "de.csv").write_text("\n".join(lines[:1] + lines[:0:-1]), encoding="latin-1")  # high to low angle
    p = read_pattern(tmp_path / "de.csv")
    np.testing.assert_allclose(p.two_theta, x)
    np.testing.assert_array_equal(p.intensity, y)
    three = _write_xy(tmp_path / "three.xye", x, y)
    three.write_text("\n".join(f"{line} {np.sqrt(b):.3f}" for line, b in zip(three.read_text().splitlines(), y)))
    p = read_pattern(three)
    assert p.metadata["format"] == "xy" and p.metadata["n_columns"] == 3
    np.testing.assert_allclose(p.intensity, y)


def test_unordered_scan_is_sorted_with_a_warning(caplog):
    x, y = SYNTHETIC.pattern()
    order = np.random.default_rng(0).permutation(len(x))
    with caplog.at_level(logging.WARNING, logger="eacnn.measured.io"):
        p = MeasuredPattern(x[order], y[order], source="shuffled.xy")
    np.testing.assert_array_equal(p.two_theta, x)
    np.testing.assert_array_equal(p.intensity, y)
    assert "not monotonic" in caplog.text and p.metadata["sorted"]


def test_a_few_nan_points_are_dropped_with_a_warning(caplog):
    x, y = SYNTHETIC.pattern()
    y = y.copy()
    y[[3, 500]] = np.nan
    with caplog.at_level(logging.WARNING, logger="eacnn.measured.io"):
        p = MeasuredPattern(x, y, source="holes.xy")
    assert len(p) == len(x) - 2 and p.metadata["n_nonfinite_dropped"] == 2
    assert "holes.xy" in caplog.text and "NaN" in caplog.text


@pytest.mark.parametrize("phase", REAL)
def test_real_fixtures_read(phase):
    p = read_pattern(MEASURED_DIR / f"Example__{phase}.xy.gz")
    assert len(p) == 9001 and p.two_theta[0] == 10.0 and p.two_theta[-1] == 100.0
    assert p.wavelength == CU and (p.intensity > 0).all()


# ---------------------------------------------------------------------------------------------------------------
# Wavelengths
# ---------------------------------------------------------------------------------------------------------------
def test_wavelength_names_and_values():
    assert resolve_wavelength(None) == CU
    assert resolve_wavelength("Cu") == resolve_wavelength("CuKa1") == resolve_wavelength("cu kα1") == CU
    assert resolve_wavelength("Mo") == resolve_wavelength("MoKa1") == MO
    assert {"Co", "Cr", "Fe", "Ag"} <= set(KALPHA)
    assert resolve_wavelength(1.2345) == 1.2345
    assert kalpha2_of(CU) == 1.544427 and kalpha2_of(1.540598) == 1.544427 and kalpha2_of(1.0) is None
    for ka1, ka2 in KALPHA.values():
        assert 1.0015 < ka2 / ka1 < 1.009  # the Kα doublet is 0.17 % (Cr) to 0.8 % (Ag) apart


@pytest.mark.parametrize("bad, shown", [("CuKa", "Ag"), ("W", "MoKa1"), (-1.0, "-1.0"), (12.0, "12.0")])
def test_bad_wavelength_is_refused(bad, shown):
    with pytest.raises(PatternError, match="wavelength") as err:
        resolve_wavelength(bad)
    assert shown in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: every one a PatternError naming the file or the value
# ---------------------------------------------------------------------------------------------------------------
def _lines(x, y) -> str:
    return "\n".join(f"{a} {b}" for a, b in zip(x, y)) + "\n"


X20 = np.linspace(10, 80, 20)
BAD_TEXT = {
    "empty.xy": ("", "empty file"),
    "comments_only.xy": ("# nothing\n# here\n", "no numeric data"),
    "five_points.xy": (_lines(X20[:5], [1, 2, 3, 2, 1]), "only 5 data points"),
    "mostly_nan.xy": (_lines(X20, [1, 2] + ["nan"] * 18), "18 of 20 points have NaN"),
    "flat.xy": (_lines(X20, [7.0] * 20), "flat pattern, every intensity is 7.0"),
    "negative.xy": (_lines(X20, -1.0 - np.arange(20)), "no positive intensity"),
    "zero_angle.xy": (_lines(np.linspace(0, 80, 20), np.arange(20)), "2θ = 0.0° is outside"),
    "too_high.xy": (_lines(np.linspace(100, 190, 20), np.arange(20)), "2θ = 190.0° is outside"),
    "duplicate.xy": (_lines(np.r_[X20[:10], X20[9:19]], np.arange(20)), "occurs more than once"),
    "one_column.xy": ("\n".join(str(v) for v in range(30)) + "\n", "no line holds two numbers"),
    "broken.xrdml": ("<xrdMeasurements><scan>", "not readable as XRDML"),
    "no_points.xrdml": ("<xrdMeasurements><scan/></xrdMeasurements>", "without <dataPoints>"),
    "no_2theta.xrdml": (
        "<r><dataPoints><positions axis='Omega'><listPositions>1 2</listPositions></positions>"
        "<intensities>1 2</intensities></dataPoints></r>", "no <positions axis=\"2Theta\">"),
    "mismatch.xrdml": (
        "<r><dataPoints><positions axis='2Theta'><listPositions>10 11 12</listPositions></positions>"
        "<intensities>1 2</intensities></dataPoints></r>", "3 listed 2θ positions but 2 intensities"),
}


@pytest.mark.parametrize("name", sorted(BAD_TEXT))
def test_bad_files_raise_pattern_error_naming_the_file(tmp_path, name):
    text, message = BAD_TEXT[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PatternError) as err:
        read_pattern(path)
    assert name in str(err.value) and message in str(err.value)


def test_bad_calls_raise_pattern_error(tmp_path):
    with pytest.raises(PatternError, match="missing.xy: no such file"):
        read_pattern(tmp_path / "missing.xy")
    with pytest.raises(PatternError, match="unknown pattern format 'raw'"):
        read_pattern(MEASURED / "synthetic_header.csv", fmt="raw")
    with pytest.raises(PatternError, match="synthetic_header.csv: not a start/step/end file"):
        read_pattern(MEASURED / "synthetic_header.csv", fmt="sse")
    (tmp_path / "cut.xy.gz").write_bytes(gzip.compress(b"10 1\n11 2\n" * 20)[:-12])
    with pytest.raises(PatternError, match="cut.xy.gz: corrupt gzip"):
        read_pattern(tmp_path / "cut.xy.gz")
    with pytest.raises(PatternError, match="unknown wavelength name 'Xx'"):
        read_pattern(MEASURED / "synthetic_header.csv", wavelength="Xx")
    with pytest.raises(PatternError, match="5 2θ values but 4 intensities"):
        MeasuredPattern(np.arange(1, 6), np.arange(4))


# ---------------------------------------------------------------------------------------------------------------
# The model grid: binning semantics, wavelength mapping, coverage
# ---------------------------------------------------------------------------------------------------------------
def test_round_trip_equals_the_simulator(tmp_path, rutile, reference):
    """A dense noise-free Cu 'measurement' of rutile, written, read and gridded, is the simulator's own vector."""
    path = _write_xy(tmp_path / "rutile_cu.xy", *_dense(rutile, XRDConfig(step=0.01)))
    result = to_model_grid(read_pattern(path), background=False)
    assert result.vector.dtype == np.float32 and result.vector.shape == (140,)
    assert result.coverage == 1.0 and result.covered.all() and result.n_dropped == 0
    assert np.abs(result.vector - reference).max() < ROUND_TRIP_TOL


def test_bin_integrals_are_exact_for_piecewise_linear_data():
    x = np.array([10.0, 10.3, 11.0, 12.0])
    y = np.array([0.0, 3.0, 1.0, 1.0])
    areas, fractions = bin_integrals(x, y, np.array([10.0, 10.5, 11.0, 11.5, 12.5]), max_gap=1.0)
    y_at_10_5 = 3.0 - 2.0 * 0.2 / 0.7
    expected = [0.45 + 0.5 * (3.0 + y_at_10_5) * 0.2, 0.5 * (y_at_10_5 + 1.0) * 0.5, 0.5, 0.5]
    np.testing.assert_allclose(areas, expected)
    np.testing.assert_allclose(fractions, [1.0, 1.0, 1.0, 0.5])


def test_mo_scan_maps_onto_the_cu_grid(tmp_path, rutile, reference):
    mo = XRDConfig(wavelength=MO, two_theta_min=4.0, two_theta_max=40.0, step=0.01)
    path = _write_xy(tmp_path / "rutile_mo.xy", *_dense(rutile, mo))
    result = to_model_grid(read_pattern(path, wavelength="Mo"), background=False)
    assert result.wavelength == MO
    # Mo 4–40° reaches d = 10.2–1.04 Å, i.e. Cu 8.7–95.9°: the whole window, nothing dropped
    assert result.coverage == 1.0 and result.uncovered_ranges() == [] and result.n_dropped == 0
    assert result.two_theta[0] == pytest.approx(8.70, abs=0.01)
    assert _corr(result.vector, reference) > 0.95


def test_short_mo_scan_reports_the_uncovered_part(caplog, rutile, reference):
    mo = XRDConfig(wavelength=MO, two_theta_min=4.0, two_theta_max=30.0, step=0.01)
    with caplog.at_level(logging.WARNING, logger="eacnn.measured.preprocess"):
        result = to_model_grid(MeasuredPattern(*_dense(rutile, mo), wavelength="Mo", source="mo30.xy"),
                               background=False)
    top = 2 * np.degrees(np.arcsin(CU / MO * np.sin(np.radians(15.0))))  # Mo 30° at Cu: 68.40°
    edges = XRDConfig().bin_edges()
    np.testing.assert_array_equal(result.covered, edges[1:] - top <= 0.25)  # bins at least half reached
    assert result.uncovered_ranges() == [(68.5, 80.0)]
    assert result.coverage == pytest.approx(117 / 140)
    assert (result.vector[~result.covered] == 0).all()
    assert _corr(result.vector[result.covered], reference[result.covered]) > 0.95
    assert "mo30.xy" in caplog.text and "covers only 84%" in caplog.text


def test_unreachable_d_spacings_are_dropped_and_counted():
    x = np.linspace(5.0, 120.0, 2000)  # Ag Kα1: d down to 0.32 Å, below Cu's limit λ/2 = 0.77 Å
    pattern = MeasuredPattern(x, 1.0 + np.exp(-0.5 * ((x - 20.0) / 0.1) ** 2), wavelength="Ag")
    result = to_model_grid(pattern, background=False)
    assert result.n_dropped == int((pattern.d_spacing < CU / 2).sum()) > 0
    assert len(result.two_theta) == len(x) - result.n_dropped and result.two_theta.max() < 180


def test_map_wavelength_keeps_peak_areas():
    x = np.linspace(10.0, 40.0, 30001)
    y = np.exp(-0.5 * ((x - 20.0) / 0.05) ** 2)
    x_cu, y_cu, keep = map_wavelength(x, y, MO, CU, lp_correction=False)
    assert keep.all()
    assert np.trapezoid(y_cu, x_cu) == pytest.approx(np.trapezoid(y, x), rel=1e-4)
    d = MO / (2 * np.sin(np.radians(10.0)))
    assert x_cu[np.argmax(y_cu)] == pytest.approx(2 * np.degrees(np.arcsin(CU / (2 * d))), abs=0.01)


def test_partial_scan_covers_57_percent(caplog, rutile):
    x, y = _dense(rutile, XRDConfig(step=0.01))
    inside = (x >= 20.0) & (x <= 60.0)
    with caplog.at_level(logging.WARNING, logger="eacnn.measured.preprocess"):
        result = to_model_grid(MeasuredPattern(x[inside], y[inside], source="part.xy"))
    centres = XRDConfig().bin_centers()
    np.testing.assert_array_equal(result.covered, (centres > 20.0) & (centres < 60.0))
    assert result.coverage == pytest.approx(80 / 140) and round(result.coverage, 2) == 0.57
    assert result.uncovered_ranges() == [(10.0, 20.0), (60.0, 80.0)]
    assert (result.vector[~result.covered] == 0).all() and result.vector.max() == 1.0
    assert "part.xy" in caplog.text and "57%" in caplog.text


def test_too_little_coverage_is_an_error(rutile):
    x, y = _dense(rutile, XRDConfig(step=0.01))
    inside = (x >= 20.0) & (x <= 35.0)
    with pytest.raises(PatternError, match=r"short.xy: the scan 20.0\d–35.00° .* covers 21%"):
        to_model_grid(MeasuredPattern(x[inside], y[inside], source="short.xy"))


def test_gaps_in_the_scan_are_not_covered(rutile):
    x, y = _dense(rutile, XRDConfig(step=0.01))
    keep = (x < 40.0) | (x > 45.0)
    result = to_model_grid(MeasuredPattern(x[keep], y[keep], source="gap.xy"), background=False)
    assert result.uncovered_ranges() == [(40.0, 45.0)] and result.coverage == pytest.approx(130 / 140)


def test_steps_are_kept_for_plotting(rutile):
    x, y = _dense(rutile, XRDConfig(step=0.01))
    result = to_model_grid(MeasuredPattern(x, y + 50.0))
    steps = result.steps
    assert set(steps) == {"two_theta_raw", "raw", "stripped", "two_theta", "mapped", "background", "corrected",
                          "smoothed"}
    np.testing.assert_array_equal(steps["background"], result.background)
    np.testing.assert_allclose(steps["corrected"], steps["mapped"] - steps["background"])
    assert len(steps["raw"]) == len(steps["two_theta_raw"]) and len(steps["smoothed"]) == len(result.two_theta)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="unknown options \\['snip_widow'\\]"):
        to_model_grid(MeasuredPattern(X20, np.arange(20.0)), snip_widow=2.0)
    with pytest.raises(ConfigError, match="snip_order must be 2 or 4, got 3"):
        PreprocessConfig(snip_order=3)
    with pytest.raises(ConfigError, match="min_coverage"):
        PreprocessConfig(min_coverage=0.95)


# ---------------------------------------------------------------------------------------------------------------
# Background, Kα2, smoothing
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [2, 4])
def test_snip_removes_a_smooth_background(rutile, reference, order):
    x, y = _dense(rutile, XRDConfig(step=0.01))
    y = y / y.max()
    background = 0.6 * np.exp(-(x - 10.0) / 8.0) + 0.15 + 0.002 * (x - 10.0)  # exponential + linear
    pattern = MeasuredPattern(x, 5000.0 * (y + background), source="background.xy")
    assert _corr(to_model_grid(pattern, background=False).vector, reference) < 0.5
    result = to_model_grid(pattern, snip_order=order)
    assert _corr(result.vector, reference) > 0.95
    assert (result.background <= pattern.intensity + 1e-9).all()
    between = (x > 12.0) & (x < 26.0)  # no rutile peak below 27°: the background is all there is
    np.testing.assert_allclose(result.background[between], 5000.0 * (y + background)[between], rtol=0.02)


def test_fourth_order_snip_follows_an_amorphous_hump(rutile, reference):
    x, y = _dense(rutile, XRDConfig(step=0.01))
    hump = 0.25 * np.exp(-0.5 * ((x - 18.0) / 4.0) ** 2) + 0.1
    pattern = MeasuredPattern(x, 5000.0 * (y / y.max() + hump))
    assert _corr(to_model_grid(pattern).vector, reference) > 0.99
    assert _corr(to_model_grid(pattern, snip_order=2, snip_window=2.0).vector, reference) < 0.9  # order 2 erodes it


def test_snip_is_unit_free():
    x, y = SYNTHETIC.pattern()
    np.testing.assert_allclose(snip_background(x, 1e-3 * y), 1e-3 * snip_background(x, y), rtol=1e-9)


def _doublet(x: np.ndarray, centre: float, ratio: float = 0.5, fwhm: float = 0.04) -> tuple[np.ndarray, float]:
    """A Cu Kα1 Gaussian at ``centre`` plus its Kα2 copy (``ratio`` as tall) at the same d; the Kα2 position."""
    ka1, ka2 = KALPHA["Cu"]
    second = 2 * np.degrees(np.arcsin(ka2 / ka1 * np.sin(np.radians(centre / 2))))
    sigma = fwhm / 2.3548
    gauss = lambda c: np.exp(-0.5 * ((x - c) / sigma) ** 2)  # noqa: E731
    return gauss(centre) + ratio * gauss(second), second


def test_kalpha2_stripping_removes_the_shoulder():
    x = np.arange(30.0, 90.0, 0.005)
    clean = np.zeros_like(x)
    doublet = np.zeros_like(x)
    shoulders = []
    for centre in (40.0, 60.0, 80.0):
        d, second = _doublet(x, centre)
        doublet += d
        clean += _doublet(x, centre, ratio=0.0)[0]
        shoulders.append(np.argmin(np.abs(x - second)))
    stripped = strip_kalpha2(x, doublet, *KALPHA["Cu"], ratio=0.5)
    assert (doublet[shoulders] > 0.4).all()  # the Kα2 peaks are there before
    assert np.abs(stripped[shoulders]).max() < 0.02  # and gone after
    assert np.abs(stripped - clean).max() < 0.02
    assert np.trapezoid(stripped, x) == pytest.approx(np.trapezoid(doublet, x) / 1.5, rel=3e-3)  # α2 is a touch wider


def test_kalpha2_stripping_in_the_pipeline(tmp_path):
    x = np.arange(20.0, 80.0, 0.005)
    doublet, second = _doublet(x, 50.0, fwhm=0.05)
    pattern = MeasuredPattern(x, 1000.0 * doublet + 10.0, source="doublet.xy")
    plain = to_model_grid(pattern)
    stripped = to_model_grid(pattern, strip_kalpha2=True)  # Cu Kα2 and the 0.5 ratio from the tables
    i = int(np.argmin(np.abs(x - second)))
    assert stripped.steps["stripped"][i] < 0.1 * plain.steps["stripped"][i]
    with pytest.raises(PatternError, match="no Kα2 wavelength known for Kα1 = 1.1 Å"):
        to_model_grid(MeasuredPattern(x, doublet + 1.0, wavelength=1.1), strip_kalpha2=True)
    # the same doublet read as a 1.1 Å scan, with its Kα2 given: the same λ2/λ1, so the same stripping
    explicit = to_model_grid(MeasuredPattern(x, 1000.0 * doublet + 10.0, wavelength=1.1), strip_kalpha2=True,
                             kalpha2=1.1 * KALPHA["Cu"][1] / KALPHA["Cu"][0], min_coverage=0.0)
    np.testing.assert_allclose(explicit.steps["stripped"], stripped.steps["stripped"], rtol=1e-3, atol=1e-3)


def test_smoothing_keeps_the_pattern(rutile, reference):
    x, y = _dense(rutile, XRDConfig(step=0.01))
    noisy = y + np.random.default_rng(0).normal(0.0, 0.01 * y.max(), len(y))
    result = to_model_grid(MeasuredPattern(x, noisy), background=False, smooth=True)
    assert np.std(result.steps["smoothed"] - y) < 0.5 * np.std(noisy - y)
    assert _corr(result.vector, reference) > 0.99


# ---------------------------------------------------------------------------------------------------------------
# The five measured patterns
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", REAL)
def test_real_fixtures_grid(phase):
    result = to_model_grid(MEASURED_DIR / f"Example__{phase}.xy.gz")
    assert result.vector.shape == (140,) and np.isfinite(result.vector).all()
    assert result.vector.max() == 1.0 and result.vector.min() >= 0.0
    assert result.coverage == 1.0 and result.n_dropped == 0


def test_measured_mno_is_recognised_as_rock_salt_mno():
    """The measured MnO scan matches simulated rock-salt MnO (a = 4.444 Å) better than any other fixture does."""
    fcc = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    mno = Structure(Lattice.cubic(4.444), ["Mn"] * 4 + ["O"] * 4, fcc + [np.add(t, 0.5) % 1 for t in fcc])
    simulated = XRDSimulator().vector(mno)
    scores = {p: _corr(to_model_grid(MEASURED_DIR / f"Example__{p}.xy.gz").vector, simulated) for p in REAL}
    assert scores["MnO"] > 0.95 and max(scores, key=scores.get) == "MnO"


def test_kalpha2_of_the_file_is_used_only_at_the_file_wavelength():
    x, y = SYNTHETIC.pattern()
    ka1, ka2, ratio = SYNTHETIC.CO_KALPHA
    as_file = to_model_grid(read_pattern(MEASURED / "synthetic.xrdml"), strip_kalpha2=True, min_coverage=0.0)
    np.testing.assert_allclose(as_file.steps["stripped"], strip_kalpha2(x, y, ka1, ka2, ratio))
    as_cu = to_model_grid(read_pattern(MEASURED / "synthetic.xrdml", wavelength="Cu"), strip_kalpha2=True)
    np.testing.assert_allclose(as_cu.steps["stripped"], strip_kalpha2(x, y, *KALPHA["Cu"], 0.5))


# ---------------------------------------------------------------------------------------------------------------
# Formats as instruments write them: several scans, units, headers, encodings, and formats eacnn does not read
# ---------------------------------------------------------------------------------------------------------------
XRDML_FIXTURE = Path(__file__).parent / "fixtures" / "measured" / "synthetic.xrdml"


def _two_scan_xrdml(first_status: str = "Aborted", unit: str = "Angstrom", ka1: str = "1.78896") -> bytes:
    """The synthetic XRDML with an aborted (short) scan before the completed one, and the wavelength's unit set."""
    import re

    text = XRDML_FIXTURE.read_text()
    scan = re.search(r"<scan .*?</scan>", text, re.S).group(0)
    aborted = scan.replace('status="Completed"', f'status="{first_status}"').replace(
        "<endPosition>80.0000</endPosition>", "<endPosition>30.0000</endPosition>", 1)
    short = re.search(r"<intensities unit=\"counts\">(.*?)</intensities>", aborted, re.S)
    aborted = aborted.replace(short.group(1), " ".join(short.group(1).split()[:50]))
    text = text.replace(scan, aborted + "\n" + scan.replace('appendNumber="0"', 'appendNumber="1"'))
    text = text.replace('<kAlpha1 unit="Angstrom">1.78896</kAlpha1>', f'<kAlpha1 unit="{unit}">{ka1}</kAlpha1>')
    return text.encode()


def test_xrdml_reads_the_completed_scan_or_the_one_named(tmp_path):
    path = tmp_path / "two.xrdml"
    path.write_bytes(_two_scan_xrdml())
    full = read_pattern(XRDML_FIXTURE)
    got = read_pattern(path)
    assert got.metadata["scan"] == 2 and got.metadata["n_scans"] == 2
    np.testing.assert_array_equal(got.intensity, full.intensity)
    first = read_pattern(path, scan=1)
    assert len(first) == 50 and first.two_theta[-1] == pytest.approx(30.0)
    with pytest.raises(PatternError, match="scan 3 asked for, but the file holds 2"):
        read_pattern(path, scan=3)
    path.write_bytes(_two_scan_xrdml().replace(b'status="Completed"', b'status="Aborted"'))
    with pytest.raises(PatternError, match="every scan in the file was aborted"):
        read_pattern(path)


@pytest.mark.parametrize("unit, value", [("nm", "0.178896"), ("pm", "178.896"), ("Angstrom", "1.78896"), ("Å", "1.78896")])
def test_xrdml_wavelength_units_are_honoured(tmp_path, unit, value):
    path = tmp_path / "unit.xrdml"
    path.write_bytes(_two_scan_xrdml(unit=unit, ka1=value))
    assert read_pattern(path).wavelength == pytest.approx(1.78896)


def test_xrdml_unknown_wavelength_unit_is_refused(tmp_path):
    path = tmp_path / "unit.xrdml"
    path.write_bytes(_two_scan_xrdml(unit="furlong"))
    with pytest.raises(PatternError, match="furlong"):
        read_pattern(path)


def _ras(wavelength: str = "0.709317", unit: str = "") -> str:
    tt = np.arange(10.0, 80.0, 0.02)
    y = 50 + 1000 * np.exp(-0.5 * ((tt - 35.0) / 0.05) ** 2)
    rows = "".join(f"{t:.4f} {v:.1f} {2.0 if t > 60 else 1.0:.1f}\n" for t, v in zip(tt, y))
    return ("*RAS_DATA_START\n*RAS_HEADER_START\n*FILE_SAMPLE \"test\"\n"
            f"*HW_XG_WAVE_LENGTH_ALPHA1 \"{wavelength}\"\n*HW_XG_WAVE_LENGTH_ALPHA2 \"0.713607\"\n"
            + (f"*HW_XG_WAVE_LENGTH_UNIT \"{unit}\"\n" if unit else "")
            + "*RAS_HEADER_END\n*RAS_INT_START\n" + rows + "*RAS_INT_END\n*RAS_DATA_END\n")


def test_rigaku_ras_header_wavelength_and_attenuation(tmp_path):
    path = tmp_path / "scan.ras"
    path.write_text(_ras())
    got = read_pattern(path)
    assert got.metadata["format"] == "ras" and got.metadata["wavelength_from"] == "file"
    assert got.wavelength == pytest.approx(0.709317) and got.metadata["kalpha2"] == pytest.approx(0.713607)
    assert got.intensity[got.two_theta > 60][0] == pytest.approx(100.0, rel=1e-3)  # counts x attenuation 2
    path.write_text(_ras("0.0709317", unit="nm"))
    assert read_pattern(path).wavelength == pytest.approx(0.709317)
    assert read_pattern(path, wavelength="Cu").wavelength == pytest.approx(1.5406)  # an argument wins


def test_utf16_text_is_read(tmp_path):
    tt = np.arange(10.0, 80.0, 0.05)
    text = "# 2theta intensity\n" + "".join(f"{t:.3f}\t{5 + 100 * np.exp(-((t - 40) / 0.2) ** 2):.3f}\n" for t in tt)
    for encoding in ("utf-16", "utf-16-le"):
        path = tmp_path / f"{encoding}.xy"
        path.write_bytes(text.encode(encoding))
        got = read_pattern(path)
        assert len(got) == len(tt) and got.two_theta[np.argmax(got.intensity)] == pytest.approx(40.0)


@pytest.mark.parametrize("name, payload, fragment", [
    ("scan.raw", b"RAW4.00" + bytes(200), "Bruker/Siemens RAW (binary) files are not read by eacnn; export it as .xy"),
    ("renamed.dat", b"RAW1.01" + bytes(200), "Bruker/Siemens RAW"),
    ("scan.brml", b"PK\x03\x04" + bytes(200), "Bruker BRML (zip archive)"),
    ("scan.rasx", b"PK\x03\x04" + bytes(200), "Rigaku RASX (zip archive)"),
])
def test_binary_formats_name_the_conversion_to_make(tmp_path, name, payload, fragment):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(PatternError, match=re.escape(fragment)):
        read_pattern(path)


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    from eacnn.measured.io import MAX_FILE_BYTES

    path = tmp_path / "huge.xy"
    with open(path, "wb") as fh:  # sparse: no disk used, and nothing may read it whole
        fh.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(PatternError, match="is not a powder pattern file"):
        read_pattern(path)
    bomb = tmp_path / "bomb.xy.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as gz:
        for _ in range(MAX_FILE_BYTES // 2**24 + 1):
            gz.write(b"1 " * 2**23)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(PatternError, match="inflates to more than"):
        read_pattern(bomb)


def test_snip_on_a_very_fine_scan_follows_the_exact_clipping():
    """Past MAX_SNIP_ITER half-widths the background is clipped on a block-averaged copy (linear in the points);
    it stays under the pattern and within a few per cent of the exact clipping of every point."""
    import eacnn.measured.preprocess as pp

    rng = np.random.default_rng(0)
    tt = np.linspace(5.0, 90.0, 60_000)
    bg = 100 + 0.5 * (90 - tt) + 50 * np.exp(-((tt - 25) ** 2) / 50)
    y = bg.copy()
    for c in (20.0, 31.7, 45.5, 56.6, 66.4, 75.5):
        y += 1000 * np.exp(-0.5 * ((tt - c) / 0.021) ** 2)
    y = rng.poisson(y).astype(float)
    fast = pp.snip_background(tt, y)
    old = pp.MAX_SNIP_ITER
    try:
        pp.MAX_SNIP_ITER = 10**12
        exact = pp.snip_background(tt, y)
    finally:
        pp.MAX_SNIP_ITER = old
    assert (fast <= y).all()
    assert np.max(np.abs(fast - exact)) < 0.03 * y.max()
    assert np.median(np.abs(fast - bg)) < 1.2 * np.median(np.abs(exact - bg))  # as close to the true background
