"""Ranking a pattern against a database: element filter, ordering, clear errors (with a stand-in model)."""

import numpy as np
import pandas as pd
import pytest
import torch

from eacnn.errors import EACNNError
from eacnn.search import Database, rank


class _IdentityModel:
    """Embeds a pattern as itself (normalised): ranking then equals search-match."""

    def encode_patterns(self, patterns, progress=False):
        x = torch.as_tensor(np.asarray(patterns, dtype=np.float32))
        return torch.nn.functional.normalize(x, dim=1)


def _db():
    rng = np.random.default_rng(0)
    vectors = rng.random((4, 140)).astype(np.float32)
    emb = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = pd.DataFrame({"material_id": ["a", "b", "c", "d"], "formula": ["MnO", "TiO2", "Mn2O3", "LiF"],
                           "spacegroup_symbol": ["Fm-3m", "P4_2/mnm", "Ia-3", "Fm-3m"],
                           "spacegroup_number": [225, 136, 206, 225], "crystal_system": ["cubic"] * 4,
                           "source": "test"})
    return Database(labels, emb, vectors, [{"Mn", "O"}, {"Ti", "O"}, {"Mn", "O"}, {"Li", "F"}])


def test_the_own_pattern_ranks_first_and_similarities_descend():
    db = _db()
    hits = rank(db.vectors[2], _IdentityModel(), db, top=4)
    assert hits.id.tolist()[0] == "c" and hits.similarity.iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diff(hits.similarity) <= 0) and hits["rank"].tolist() == [1, 2, 3, 4]


def test_element_filter_keeps_only_allowed_chemistry():
    db = _db()
    hits = rank(db.vectors[1], _IdentityModel(), db, top=4, elements=["Mn", "O"])
    assert set(hits.id) == {"a", "c"}


def test_element_filter_with_no_candidate_is_a_clear_error():
    with pytest.raises(EACNNError, match="Xe"):
        rank(_db().vectors[0], _IdentityModel(), _db(), elements=["Xe"])
