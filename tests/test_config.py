"""The one typed config: presets, dotted overrides, JSON round trip, errors that name the bad value."""

import pytest

from eacnn.config import Config, XRDConfig
from eacnn.errors import ConfigError


@pytest.mark.parametrize("name", ["smoke", "cpu", "paper"])
def test_presets_round_trip_through_json(name):
    cfg = Config.from_profile(name)
    assert cfg.profile == name
    import json

    assert Config.from_dict(json.loads(cfg.to_json())) == cfg


def test_paper_grid_is_140_bins_of_half_a_degree():
    cfg = XRDConfig()
    assert cfg.n_bins == 140
    assert cfg.wavelength == 1.5406
    edges = cfg.bin_edges()
    assert edges[0] == 10.0 and edges[-1] == 80.0 and len(edges) == 141


def test_dotted_override_returns_a_new_frozen_config():
    cfg = Config.smoke()
    new = cfg.replace(**{"xrd.fwhm": 0.3, "seed": 3})
    assert new.xrd.fwhm == 0.3 and new.seed == 3
    assert cfg.xrd.fwhm != 0.3  # the original is untouched
    with pytest.raises(Exception):
        new.seed = 4  # frozen


@pytest.mark.parametrize(
    "override, fragment",
    [({"xrd.fwhmm": 0.3}, "fwhmm"), ({"nope": 1}, "nope"), ({"xrd": 1}, "whole section"), ({"seed": "a"}, "'a'")],
)
def test_bad_override_names_the_offender(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Config.smoke().replace(**override)


@pytest.mark.parametrize("kwargs", [{"step": 0.3}, {"wavelength": -1.0}, {"fwhm": 0.0}, {"two_theta_max": 5.0}])
def test_invalid_xrd_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        XRDConfig(**kwargs)


def test_unknown_profile():
    with pytest.raises(ConfigError, match="gpu"):
        Config.from_profile("gpu")


def test_import_has_no_side_effects():
    import subprocess
    import sys

    code = (
        "import sys, warnings, numpy; before = list(warnings.filters); import eacnn; "
        "assert warnings.filters == before, 'warning filters changed'; "
        "assert 'torch' not in sys.modules, 'torch imported eagerly'; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
