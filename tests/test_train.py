"""Augmentation physics, a few optimiser steps, checkpoints (safety, corruption, mismatch), fit/resume/load-or-train."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from eacnn.physics.perturb import augment_patterns, bragg_shift, profile_patterns  # noqa: E402
from eacnn.config import AugmentConfig, Config, XRDConfig  # noqa: E402
from eacnn.errors import CheckpointError, ConfigError  # noqa: E402
from eacnn.physics.xrd import XRDSimulator, bin_profile  # noqa: E402


class TinyDataset:
    """An in-memory stand-in for eacnn.datasets.dataset.CrystalDataset: real structures, graphs, sticks and vectors."""

    def __init__(self, n: int = 22, n_val: int = 6, r_max: float = 5.0):
        from eacnn.datasets.graphs import structure_graph
        from eacnn.datasets.structures import embedded_structures

        _, structs = embedded_structures("val", limit=n + 6)
        sim = XRDSimulator()
        self._graphs, self._sticks, vectors = [], [], []
        for s in structs:
            try:
                graph, sticks, vector = structure_graph(s, r_max), sim.sticks(s), sim.vector(s)
            except Exception:  # an isolated atom or no reflection: not usable
                continue
            self._graphs.append(graph)
            self._sticks.append(sticks)
            vectors.append(vector)
            if len(vectors) == n:
                break
        self.vectors = np.stack(vectors).astype(np.float32)
        self.split = np.array(["train"] * (n - n_val) + ["val"] * n_val)
        self.ids = np.array([f"tiny-{i}" for i in range(n)])
        self.key = "tiny-dataset-key"

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def graph(self, i: int) -> dict:
        return self._graphs[i]

    def sticks(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self._sticks[i]


@pytest.fixture(scope="module")
def data() -> TinyDataset:
    return TinyDataset()


def _cfg(**overrides) -> Config:
    base = {"train.batch_size": 8, "train.epochs": 2, "train.eval_batch_size": 8, "augment.noise": 0.02}
    return Config.smoke().replace(**{**base, **overrides})


# ---------------------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------------------
def test_level_zero_reproduces_the_clean_vector(data):
    sticks = [data.sticks(i) for i in range(8)]
    out = augment_patterns(sticks, AugmentConfig.level(0), rng=0)
    # the clean vectors use eacnn.physics.xrd's fine-grid kernel (linear split on a 0.005° grid), exact to ~3e-4
    np.testing.assert_allclose(out, data.vectors[:8], atol=1e-3)
    assert np.allclose(out.max(axis=1), 1.0)


def test_profile_is_the_exact_bin_integral_with_per_peak_widths(data):
    tt, inten = data.sticks(0)
    widths = np.random.default_rng(0).uniform(0.1, 1.5, len(tt))
    ref = bin_profile(tt, inten, fwhm=widths)
    got = profile_patterns([(tt, inten)], [widths])[0]
    np.testing.assert_allclose(got, ref, atol=1e-6 * ref.max())


def test_strain_and_zero_shift_move_peaks_as_braggs_law_says():
    xrd = XRDConfig(fwhm=1.0, eta=0.0)  # broad Gaussian peaks: the binned centroid locates the peak to ~0.01°
    sticks = [(np.array([40.0]), np.array([1.0]))] * 16
    centres = xrd.bin_centers()
    win = np.abs(centres - 40.0) < 5.0

    def centroid(y):
        return float((y[win] * centres[win]).sum() / y[win].sum())

    clean = centroid(profile_patterns(sticks[:1], xrd=xrd)[0])
    cfg = AugmentConfig(strain=0.01, zero_shift=0.0, size_min_nm=0, size_max_nm=0, intensity_jitter=0, noise=0,
                        counts=0, background=0)
    out, params = augment_patterns(sticks, cfg, rng=3, xrd=xrd, return_params=True)
    assert (params["strain"] > 0).any() and (params["strain"] < 0).any()
    for y, eps in zip(out, params["strain"]):
        predicted = bragg_shift(40.0, eps, 0.0, xrd.wavelength)  # 2 asin(sin 20° / (1 + ε))
        assert math.isclose(predicted, 2 * math.degrees(math.asin(math.sin(math.radians(20)) / (1 + eps))))
        assert np.sign(centroid(y) - clean) == -np.sign(eps)  # expansion -> larger d -> lower angle
        assert abs((centroid(y) - clean) - (predicted - 40.0)) < 0.01
    shifted = augment_patterns(sticks[:1], AugmentConfig(**{**cfg.__dict__, "strain": 0.0, "zero_shift": 0.3}), rng=1,
                               xrd=xrd, return_params=True)
    assert abs(centroid(shifted[0][0]) - clean - shifted[1]["zero_shift"][0]) < 0.01


def test_scherrer_broadening_grows_with_angle():
    xrd = XRDConfig(fwhm=0.3, eta=0.0)
    sticks = [(np.array([20.0, 70.0]), np.array([1.0, 1.0]))]
    cfg = AugmentConfig(strain=0, zero_shift=0, size_min_nm=10.0, size_max_nm=10.0, intensity_jitter=0, noise=0,
                        counts=0, background=0)
    centres = xrd.bin_centers()

    def spread(y, at):
        w = np.abs(centres - at) < 6.0
        m = (y[w] * centres[w]).sum() / y[w].sum()
        return math.sqrt((y[w] * (centres[w] - m) ** 2).sum() / y[w].sum())

    clean = profile_patterns(sticks, xrd=xrd)[0]
    wide = augment_patterns(sticks, cfg, rng=0, xrd=xrd)[0]
    assert spread(wide, 20) > spread(clean, 20) and spread(wide, 70) > spread(wide, 20) * 1.1


@pytest.mark.parametrize("level", [1, 2, 3])
def test_augmented_patterns_are_valid_inputs(data, level):
    sticks = [data.sticks(i) for i in range(len(data.vectors))]
    out = augment_patterns(sticks, AugmentConfig.level(level), rng=np.random.default_rng(0))
    assert out.shape == (len(sticks), 140) and out.dtype == np.float32
    assert np.isfinite(out).all() and (out >= 0).all()
    np.testing.assert_allclose(out.max(axis=1), 1.0, rtol=1e-6)
    again = augment_patterns(sticks, AugmentConfig.level(level), rng=np.random.default_rng(0))
    assert np.array_equal(out, again)  # seeded
    assert not np.array_equal(out, augment_patterns(sticks, AugmentConfig.level(level), rng=1))
    # stronger levels move the pattern further from the clean one
    assert np.abs(out - data.vectors).mean() > 1e-3


def test_augment_levels():
    assert AugmentConfig.level(0).is_identity and not AugmentConfig.level(1).is_identity
    assert AugmentConfig.level(3).strain > AugmentConfig.level(1).strain
    with pytest.raises(ConfigError, match="4"):
        AugmentConfig.level(4)
    with pytest.raises(ConfigError, match="strain"):
        AugmentConfig(strain=-0.1)


# ---------------------------------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # ~3 s on 2 idle cores, 10+ s when the machine is shared
def test_twenty_steps_lower_the_loss_deterministically(data):
    from eacnn.datasets.graphs import collate_graphs
    from eacnn.training.losses import clip_loss
    from eacnn.models import EACNN

    torch.set_flush_denormal(True)
    idx = list(range(8))
    vec = torch.from_numpy(data.vectors[idx])
    batch = {"graph": collate_graphs([data.graph(i) for i in idx]), "pattern": vec, "structure_pattern": vec}
    torch.manual_seed(0)
    model = EACNN.from_config(Config.smoke())
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def run() -> list[float]:
        model.load_state_dict(start)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        losses = []
        for _ in range(20):
            loss = clip_loss(*model(batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        return losses

    first = run()
    assert first[-1] < 0.5 * first[0], first
    assert run() == first


# ---------------------------------------------------------------------------------------------------------------
# fit, checkpoints, resume
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    from eacnn.training.loop import fit

    cfg = _cfg()
    run_dir = tmp_path_factory.mktemp("run")
    return cfg, fit(cfg, data, run_dir=run_dir, progress=False, keep_epochs=True)


def test_fit_writes_the_run_folder(trained, data):
    cfg, result = trained
    run = result.run_dir
    assert {"config.json", "log.csv", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()
    log = pd.read_csv(run / "log.csv")
    columns = ["epoch", "train_loss", "val_loss", "val_top1", "val_top5", "temperature", "lr", "seconds", "val_pool",
               "val_top1_perturbed", "val_score"]
    assert list(log.columns) == columns
    # the smoke profile validates against validation + training structures
    assert (log["val_pool"] == len(data.indices("val")) + len(data.indices("train"))).all()
    assert list(log["epoch"]) == [1, 2] and len(result.history) == 2
    assert np.isfinite(log[["train_loss", "val_loss", "temperature"]].to_numpy()).all()
    assert ((log["val_top1"] >= 0) & (log["val_top1"] <= log["val_top5"]) & (log["val_top5"] <= 1)).all()
    # the smoke profile also scores moderate-level queries; the epoch is chosen by the mean of both
    np.testing.assert_allclose(log["val_score"], (log["val_top1"] + log["val_top1_perturbed"]) / 2)
    best = log["val_score"].idxmax()
    assert result.best_score == log["val_score"].max() and result.best_top1 == log["val_top1"][best]
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())


def test_distractors_only_make_validation_harder(trained, data):
    from eacnn.training.loop import _collate, _Pairs, evaluate_retrieval

    _, result = trained
    val = _Pairs(data, data.indices("val"))
    train = _Pairs(data, data.indices("train"))
    val_b = [_collate([val[k] for k in range(len(val))])]
    train_b = [_collate([train[k] for k in range(a, min(a + 64, len(train)))]) for a in range(0, len(train), 64)]
    alone = evaluate_retrieval(result.model, val_b, 8)
    pooled = evaluate_retrieval(result.model, val_b, 8, train_b)
    assert alone["val_pool"] == len(val) and pooled["val_pool"] == len(val) + len(train)
    assert pooled["val_top1"] <= alone["val_top1"] and pooled["val_top5"] <= alone["val_top5"]
    assert pooled["val_loss"] == alone["val_loss"]  # the loss stays in-batch


def test_checkpoint_round_trip(trained, data):
    from eacnn.training.checkpoint import load_checkpoint, model_from_checkpoint

    cfg, result = trained
    ckpt = load_checkpoint(result.best_path, config=cfg, data_key=data.key)
    assert {"state_dict", "optimizer", "scheduler", "epoch", "config", "versions", "data_key"} <= set(ckpt)
    assert Config.from_dict(ckpt["config"]) == cfg
    assert set(ckpt["versions"]) == {"torch", "e3nn", "mace", "eacnn"}
    model = model_from_checkpoint(ckpt)
    for name, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    vec = data.vectors[:3]
    np.testing.assert_allclose(
        model.encode_patterns(vec, progress=False), result.model.encode_patterns(vec, progress=False)
    )


def test_checkpoint_for_another_config_or_dataset_is_refused(trained, data):
    from eacnn.training.checkpoint import load_checkpoint

    cfg, result = trained
    with pytest.raises(CheckpointError, match=r"best\.pt.*train\.lr: 0\.002 -> 0\.5"):
        load_checkpoint(result.best_path, config=cfg.replace(**{"train.lr": 0.5}))
    with pytest.raises(CheckpointError, match="not on this dataset"):
        load_checkpoint(result.best_path, data_key="another-key")
    # runtime-only settings do not matter
    load_checkpoint(result.best_path, config=cfg.replace(**{"train.device": "cpu", "train.num_workers": 2}))


class _Hostile:
    """Unpickling this would create a file: a stand-in for arbitrary code in a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_objects_are_refused_even_after_importing_mace(tmp_path):
    import mace  # noqa: F401  -- sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for the process

    from eacnn.training.checkpoint import load_checkpoint

    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == "1"
    marker = tmp_path / "code-ran"
    path = tmp_path / "hostile.pt"
    torch.save({"state_dict": {}, "config": {}, "payload": _Hostile(marker)}, path)
    with pytest.raises(CheckpointError, match=r"hostile\.pt.*pickled"):
        load_checkpoint(path)
    assert not marker.exists()


def test_corrupt_or_truncated_checkpoints_raise(trained, tmp_path):
    from eacnn.training.checkpoint import load_checkpoint, load_pretrained

    _, result = trained
    raw = result.best_path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not an eacnn checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="train"):
        load_pretrained(tmp_path / "missing.pt")


@pytest.mark.slow
def test_resume_continues_as_if_uninterrupted(trained, data, tmp_path, monkeypatch):
    import eacnn.training.loop as train

    cfg, full = trained
    real = train.evaluate_retrieval
    calls = {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate_retrieval", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg, data, run_dir=tmp_path, progress=False)
    assert len(pd.read_csv(tmp_path / "log.csv")) == 1
    monkeypatch.setattr(train, "evaluate_retrieval", real)
    resumed = train.fit(cfg, data, run_dir=tmp_path, progress=False)
    cols = ["train_loss", "val_loss", "val_top1", "temperature", "lr"]
    np.testing.assert_allclose(resumed.history[cols].to_numpy(), full.history[cols].to_numpy(), rtol=1e-5, atol=1e-6)
    a = torch.load(tmp_path / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(full.run_dir / "last.pt", weights_only=True)["state_dict"]
    for name in b:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name


def test_a_time_budget_stops_a_call_and_the_next_call_resumes(trained, data, tmp_path):
    """train.max_minutes ends this call after the epoch that passes it (not finished: no early-stopping verdict);
    the next call, without a budget, resumes and ends where an uninterrupted run ends."""
    from eacnn.training.loop import fit

    cfg, full = trained
    first = fit(cfg.replace(**{"train.max_minutes": 1e-9}), data, run_dir=tmp_path, progress=False)
    assert len(first.history) == 1
    resumed = fit(cfg, data, run_dir=tmp_path, progress=False)
    cols = ["train_loss", "val_loss", "val_top1", "temperature", "lr"]
    np.testing.assert_allclose(resumed.history[cols].to_numpy(), full.history[cols].to_numpy(), rtol=1e-5, atol=1e-6)


def test_training_subsets_are_nested_and_validation_keeps_its_pool(data):
    from eacnn.training.loop import _validation_data, _Dist, _Pairs, training_indices

    cfg = _cfg()
    train = data.indices("train")
    n = len(train) // 4
    small, larger = (training_indices(cfg.replace(**{"train.train_subset": k}), data) for k in (n, 2 * n))
    assert len(small) == n and len(larger) == 2 * n and set(small) <= set(larger) <= set(train)
    assert np.array_equal(training_indices(cfg.replace(**{"train.train_subset": 10**6}), data), train)
    d = _Dist(0, 1, 0)
    val = _validation_data(cfg, data, _Pairs(data, small), d)
    assert sum(len(b["index"]) for b in val.distractors) == len(train)  # the whole train split, whatever the subset


def test_load_or_train_loads_a_finished_run(trained, data, monkeypatch):
    import eacnn.training.loop as train

    cfg, result = trained
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    model = train.load_or_train(cfg, data, run_dir=result.run_dir, progress=False)
    for name, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_early_stopping_on_validation_top1(data, tmp_path, monkeypatch):
    import eacnn.training.loop as train

    scores = iter([0.5, 0.4, 0.6, 0.3, 0.2])
    def fake(*a, **k):
        top1 = next(scores)
        return {"val_loss": 1.0, "val_top1": top1, "val_top5": 1.0, "val_pool": 8, "val_top1_perturbed": top1,
                "val_score": top1}

    monkeypatch.setattr(train, "evaluate_retrieval", fake)
    cfg = _cfg(**{"train.epochs": 5, "train.patience": 1, "train.max_steps_per_epoch": 1})
    result = train.fit(cfg, data, run_dir=tmp_path, progress=False)
    assert list(result.history["epoch"]) == [1, 2]  # epoch 2 did not beat 0.5: stop
    assert result.best_top1 == 0.5
    assert torch.load(result.best_path, weights_only=True)["epoch"] == 0


def test_export_ships_any_epoch_with_the_whole_log_and_marks_it(trained, tmp_path):
    from eacnn.analysis import best_epoch
    from eacnn.training.checkpoint import export_checkpoint, load_checkpoint

    _, result = trained  # trained with keep_epochs: epoch_1.pt and epoch_2.pt beside last.pt
    first, second = (load_checkpoint(result.run_dir / f"epoch_{n}.pt") for n in (1, 2))
    assert (first["epoch"], second["epoch"]) == (0, 1) and len(first["history"]) == 1
    assert any(not torch.equal(first["state_dict"][k], second["state_dict"][k]) for k in first["state_dict"])
    dst = export_checkpoint(result.run_dir / "epoch_1.pt", tmp_path / "shipped.pt")
    log = pd.read_csv(tmp_path / "shipped_log.csv")
    assert list(log["epoch"]) == [1, 2] and list(log["kept"]) == [1, 0]  # the run's whole history
    assert int(best_epoch(log)["epoch"]) == 1 and int(load_checkpoint(dst)["epoch"]) == 0
    assert "optimizer" not in load_checkpoint(dst)


@pytest.mark.parametrize("kind", ["eacnn", "paper"])
def test_shipped_checkpoints_load_safely_and_match_their_logs(kind):
    """The shipped models load with weights_only=True; the default is exactly what `eacnn train --profile cpu`
    trains (same config), and each log's selected epoch is the checkpoint's."""
    from eacnn.analysis import best_epoch
    from eacnn.training.checkpoint import SHIPPED, config_mismatch, load_checkpoint, load_pretrained

    ckpt = load_checkpoint(SHIPPED[kind])
    log = pd.read_csv(SHIPPED[kind].with_name(SHIPPED[kind].stem + "_log.csv"))
    assert int(ckpt["epoch"]) + 1 in set(log["epoch"])
    if kind == "eacnn":
        assert config_mismatch(ckpt["config"], Config.cpu().to_dict()) == []
        assert int(best_epoch(log)["epoch"]) == int(ckpt["epoch"]) + 1
    model = load_pretrained(SHIPPED[kind])
    assert model.model_config.kind == kind


def test_averaging_epochs_gives_the_mean_weights(trained, tmp_path):
    """scripts/average_checkpoints.py, as users run it: the element-wise mean of two epochs' weights."""
    import subprocess
    import sys
    from pathlib import Path

    _, result = trained
    a, b = result.run_dir / "epoch_1.pt", result.run_dir / "epoch_2.pt"
    out = tmp_path / "avg_1-2.pt"
    script = Path(__file__).resolve().parents[1] / "scripts" / "average_checkpoints.py"
    proc = subprocess.run([sys.executable, str(script), str(a), str(b), "--out", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    sa, sb, so = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b, out))
    for name in so:
        if torch.is_floating_point(so[name]):
            assert torch.allclose(so[name], (sa[name] + sb[name]) / 2, atol=1e-6), name
