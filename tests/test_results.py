"""`make results` regenerates every table the book reads: each CSV under eacnn/data/ is named in its recipe."""

import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_make_results_names_every_data_table():
    text = (REPO / "Makefile").read_text()
    recipe = text.split("\nresults:", 1)[1].split("\nbench:", 1)[0]  # results and results-quick
    named = set(re.findall(r"[\w*-]+\.csv", recipe))
    tables = sorted(p.name for p in (REPO / "eacnn" / "data").glob("*.csv"))
    missing = [t for t in tables if not any(fnmatch.fnmatch(t, n) for n in named)]
    assert tables and not missing, missing
