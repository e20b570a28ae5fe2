"""The robustness table of chapter 5 (:mod:`eacnn.robustness`) on the smoke data set, with search-match as the
method (no model to train): what each query kind recovers under a lattice mismatch."""

import numpy as np
import pytest

from eacnn.config import Config
from eacnn.datasets.dataset import build_dataset
from eacnn.retrieval.query import SCALES
from eacnn.physics.conditions import condition_queries
from eacnn.robustness import _similarities, robustness_table, scaled_similarities


@pytest.fixture(scope="module")
def data():
    return build_dataset(Config.smoke(), progress=False)


def test_scaled_similarities_at_scale_one_are_the_plain_ones(data):
    rows = data.indices("test")[:40]
    clean = data.vectors[rows].astype(np.float32)
    patterns, masks = condition_queries(data, rows, "window 20–60°")
    cands = clean / np.linalg.norm(clean, axis=1, keepdims=True)
    scaled = dict(scaled_similarities(None, cands, clean, patterns, masks, data.config.xrd))
    assert list(scaled) == [float(s) for s in SCALES]
    np.testing.assert_allclose(scaled[1.0], _similarities(None, cands, clean, patterns, masks), atol=1e-5)
    assert not np.allclose(scaled[float(SCALES[0])], scaled[1.0], atol=1e-3)


def test_multiscale_and_refined_search_recover_a_three_percent_mismatch(data):
    table = robustness_table({"search-match": None}, data, ("clean", "iso -3 %"), split="test",
                             multiscale=("iso -3 %",), refined=("iso -3 %",), refine_queries=20, progress=False)
    top1 = table.set_index(["condition", "query"])["top1"]
    n = len(data.indices("test"))
    assert set(table["candidates"]) == {n}
    assert top1["clean", "as measured"] == 100.0
    # a 3 % smaller cell moves high-angle peaks by ~2° (four bins): read as measured the pattern is lost, read at
    # the lattice scales it is found, and refinement finds it among the refined candidates
    assert top1["iso -3 %", "as measured"] < 20.0
    assert top1["iso -3 %", "multi-scale"] > 75.0
    assert top1["iso -3 %", "search"] >= 90.0
    assert table.set_index(["condition", "query"]).loc[("iso -3 %", "search"), "queries"] == 20


def test_target_phrases_say_met_or_by_how_much_missed():
    from eacnn.robustness import target_phrase

    assert target_phrase("95.0", 95.0) == "meets the ≥ 95 % target"
    assert target_phrase("86.9", 90.0) == "misses the ≥ 90 % target by 3.1 points"
    assert "not computed" in target_phrase("n/a", 90.0)


def test_search_only_gives_the_search_rows_of_a_whole_run(data):
    """``search_only`` scores only the selected queries, yet answers each as the whole run does."""
    kwargs = dict(split="test", multiscale=("aniso 1.5 %",), refined=("aniso 1.5 %",), refine_queries=8, rerank=10,
                  progress=False)  # 10 refined a query: the two runs need only agree
    whole = robustness_table({"search-match": None}, data, ("clean", "aniso 1.5 %"), **kwargs)
    alone = robustness_table({"search-match": None}, data, ("clean", "aniso 1.5 %"), search_only=True, **kwargs)
    assert alone["query"].tolist() == ["search"]
    want = whole[whole["query"] == "search"].reset_index(drop=True)
    assert alone.reset_index(drop=True)[["top1", "top5", "queries"]].equals(want[["top1", "top5", "queries"]])
