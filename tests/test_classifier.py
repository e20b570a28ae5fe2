"""The space-group classifier baseline: shapes, that training learns, checkpoint safety."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eacnn.training.checkpoint import save_checkpoint  # noqa: E402
from eacnn.training.classifier import ClassifierConfig, fit_classifier, load_classifier, load_or_train_classifier  # noqa: E402
from eacnn.config import Config  # noqa: E402
from eacnn.errors import CheckpointError, PatternError  # noqa: E402


@pytest.fixture(scope="module")
def data():
    from eacnn.datasets.dataset import build_dataset

    return build_dataset(Config.smoke(), progress=False)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("clf") / "clf.pt"
    model, history = fit_classifier(Config.smoke(), data, ClassifierConfig(epochs=6, batch_size=32, lr=3e-3),
                                    path=path,
                                    progress=False)
    return path, model, history


def test_training_learns_and_keeps_the_best_epoch(trained, data):
    path, model, history = trained
    assert list(history["epoch"]) == list(range(1, 7))
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    # better than always answering the most common training group, on the training patterns themselves
    sg = data.labels["spacegroup_number"].to_numpy()
    train = np.asarray(data.indices("train"))
    majority = np.bincount(sg[train]).max() / len(train)
    pred, conf = model.predict(data.vectors[train])
    assert np.mean(pred == sg[train]) > majority
    assert ((pred >= 1) & (pred <= 230)).all() and ((conf > 0) & (conf <= 1)).all()
    loaded, hist2 = load_classifier(path)
    assert len(hist2) == 6
    np.testing.assert_array_equal(loaded.predict(data.vectors[:20])[0], model.predict(data.vectors[:20])[0])
    best = history["val_score"].idxmax()
    val = np.asarray(data.indices("val"))
    assert np.isclose(np.mean(model.predict(data.vectors[val])[0] == sg[val]), history["val_acc"][best])


def test_bad_inputs_and_files(trained, tmp_path):
    _, model, _ = trained
    with pytest.raises(PatternError, match="NaN"):
        model.predict(np.full((1, 140), np.nan))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_classifier(bad)
    other = tmp_path / "other.pt"
    save_checkpoint(other, {"state_dict": {}, "config": Config.smoke().to_dict()})
    with pytest.raises(CheckpointError, match="not a space-group classifier"):
        load_classifier(other)


def test_load_or_train_reuses_a_finished_run(data, tmp_path, monkeypatch):
    monkeypatch.setenv("EACNN_RUNS", str(tmp_path))
    settings = ClassifierConfig(epochs=1, batch_size=32)
    first, _ = load_or_train_classifier(Config.smoke(), data, settings, progress=False)
    import eacnn.training.classifier as clf

    monkeypatch.setattr(clf, "fit_classifier", lambda *a, **k: pytest.fail("trained again"))
    again, _ = load_or_train_classifier(Config.smoke(), data, settings, progress=False)
    for name, value in first.state_dict().items():
        assert torch.equal(again.state_dict()[name], value)
