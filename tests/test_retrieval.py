"""Retrieval on planted embeddings: known answers, both backends agree, pools are named."""

import numpy as np
import pytest

from eacnn.errors import EACNNError
from eacnn.retrieval.index import Index, have_faiss, pool_accuracies, topk_accuracy


def planted(n=500, d=32, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    cand = rng.normal(size=(n, d)).astype(np.float32)
    queries = cand + noise * rng.normal(size=(n, d)).astype(np.float32)
    return queries, cand


def test_identical_queries_are_all_found_first():
    q, c = planted()
    res = topk_accuracy(q, c, pool="planted")
    assert res.topk[1] == 100.0 and res.n_pool == 500 and res.pool == "planted"


def test_a_known_rank_is_reported():
    # candidate 0 is the true one; two others are placed closer to the query -> rank 3
    c = np.eye(4, dtype=np.float32)
    q = np.array([[0.6, 0.8, 0.75, 0.0]], dtype=np.float32)
    res = topk_accuracy(q, c, true_index=[0], ks=(1, 2, 3))
    assert res.ranks.tolist() == [3]
    assert res.topk == {1: 0.0, 2: 0.0, 3: 100.0}


def test_noise_lowers_accuracy_monotonically():
    accs = [topk_accuracy(*planted(noise=s)).topk[1] for s in (0.0, 0.8, 1.5, 3.0)]
    assert accs[0] == 100 and all(a >= b for a, b in zip(accs, accs[1:])) and accs[-1] < 50


def test_smaller_pools_are_easier():
    q, c = planted(n=1024, noise=1.5)
    full, p256 = pool_accuracies(q, c, pools=("all", 256))
    assert p256.n_pool == 256 and full.n_pool == 1024
    assert p256.topk[1] > full.topk[1]


@pytest.mark.skipif(not have_faiss(), reason="faiss not installed")
def test_faiss_and_torch_give_the_same_answers():
    q, c = planted(n=800, noise=1.0)
    s_t, i_t = Index(c, backend="torch").search(q, k=5)
    s_f, i_f = Index(c, backend="faiss").search(q, k=5)
    np.testing.assert_allclose(s_t, s_f, atol=1e-5)
    assert (i_t[:, 0] == i_f[:, 0]).mean() > 0.999
    a_t = topk_accuracy(q, c, backend="torch").topk
    a_f = topk_accuracy(q, c, backend="faiss").topk
    assert a_t == pytest.approx(a_f)


def test_bad_inputs_are_refused():
    with pytest.raises(EACNNError, match="NaN"):
        Index(np.full((3, 2), np.nan))
    with pytest.raises(EACNNError, match="width"):
        Index(np.ones((3, 2))).search(np.ones((1, 3)))
    with pytest.raises(EACNNError, match="zero"):
        Index(np.zeros((0, 4)))


def test_equivalent_hits_accept_duplicates_under_another_id():
    """A top-1 answer that is the same crystal under another id counts as equivalent, a different one does not."""
    from eacnn.analysis import equivalent_hits
    from eacnn.config import Config
    from eacnn.datasets.dataset import build_dataset
    from eacnn.datasets.structures import table_from_structures

    data = build_dataset(Config.smoke(), progress=False)
    rows = np.asarray(data.indices("test"))
    formula = data.labels["formula"].to_numpy()
    s = data.structure(int(rows[0]))
    shifted = s.copy()
    shifted.translate_sites(range(len(s)), [0.1, 0.2, 0.3])  # the same crystal, another origin and id
    other = data.structure(int(next(r for r in rows if formula[r] != formula[rows[0]])))
    table = table_from_structures([s, shifted, other], ids=["a", "a-dup", "other"], progress=False)
    dup = build_dataset(Config.smoke(), structures_table=table, progress=False)
    order = {mid: i for i, mid in enumerate(dup.labels["material_id"])}
    r = np.array([order["a"], order["a-dup"], order["other"]])
    # a -> a-dup, a-dup -> a (equivalent), other -> a (another formula: wrong)
    assert equivalent_hits(dup, r, np.array([1, 0, 0])).tolist() == [True, True, False]
    assert equivalent_hits(dup, r, np.array([0, 1, 2])).tolist() == [True, True, True]  # own structures


def test_accuracy_by_training_frequency_is_the_per_query_mean_per_bin():
    import pandas as pd

    from eacnn.analysis import accuracy_by_training_frequency

    preds = pd.DataFrame({"spacegroup_number": [1, 1, 2, 3, 3], "train_samples": [0, 0, 5, 500, 500],
                          "m": [True, False, True, True, True]})
    out = accuracy_by_training_frequency(preds, ["m"])
    assert out.loc["0", "m"] == 50.0 and out.loc["1–10", "m"] == 100.0 and out.loc["101–1,000", "queries"] == 2
    assert out.loc["0", "groups"] == 1 and np.isnan(out.loc["11–100", "m"])


def test_recall_joins_the_shortlist_after_the_models_own():
    from eacnn.retrieval.refine import _with_recall

    top = np.array([4, 1, 7])
    start = np.array([1.0, 0.99, 1.01])
    recall = np.array([0.9, 0.8, 0.95, -np.inf, 0.7, 0.1, 0.99, 0.2])
    scale = np.linspace(0.96, 1.03, 8)
    got, at = _with_recall(top, start, recall, scale, 2)
    np.testing.assert_array_equal(got, [4, 1, 7, 6, 2])  # 6 and 2: the best two by recall not already in
    np.testing.assert_allclose(at, [1.0, 0.99, 1.01, scale[6], scale[2]])
    got, at = _with_recall(top, None, recall, scale, 10)
    assert list(got) == [4, 1, 7, 6, 2, 0, 5] and at is None  # never a left-out (-inf) candidate
    got, _ = _with_recall(top, start, None, None, 5)
    np.testing.assert_array_equal(got, top)
