"""Contrastive batches: look-alike groups, duplicates left out of the loss, measured-like queries, the mask input."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pymatgen.core import Lattice, Structure  # noqa: E402

from eacnn.config import Config  # noqa: E402
from eacnn.physics.xrd import XRDSimulator  # noqa: E402
from eacnn.physics.conditions import measured_queries, strain_cell  # noqa: E402
from eacnn.training.batches import LookalikeSampler, duplicate_pairs  # noqa: E402
from eacnn.training.losses import clip_loss  # noqa: E402


def test_lookalike_sampler_groups_share_a_key_and_cover_each_position_once():
    keys = np.repeat(np.arange(40), 10)  # 40 space groups of 10 structures
    sampler = LookalikeSampler(keys, batch_size=32, fraction=0.5, seed=3)
    order = list(sampler)
    assert len(order) == len(sampler) == (400 // 32) * 32 and len(set(order)) == len(order)
    for b in range(len(order) // 32):
        batch = np.array(order[b * 32 : (b + 1) * 32])
        counts = np.bincount(keys[batch], minlength=40)
        assert (counts >= 4).sum() >= 4  # the 4 groups of 4 planted in each batch
    sampler.set_epoch(1)
    assert list(sampler) != order
    sampler.set_epoch(0)
    assert list(sampler) == order  # seeded by (seed, epoch): a resumed run sees the same batches


def test_duplicates_are_left_out_of_the_softmax():
    g = torch.Generator().manual_seed(0)
    z_a = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    z_b = z_a.clone()
    z_b[1] = z_a[0]  # item 1's pattern looks exactly like item 0's: a duplicate structure under another id
    keys = np.array(["MnO|225", "MnO|225", "TiO2|136", "LiF|225"])
    mask = duplicate_pairs(keys)
    assert mask.tolist() == [[False, True, False, False], [True, False, False, False],
                             [False] * 4, [False] * 4]
    plain, masked = clip_loss(z_a, z_b, 2.0), clip_loss(z_a, z_b, 2.0, mask)
    assert masked < plain  # the copy no longer counts as a wrong answer
    # masking only removes those logits: the same as computing without the duplicate column and row pairings
    assert torch.isfinite(masked)


def test_strain_cell_moves_peaks_as_the_metric_says():
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    iso = strain_cell(s.lattice.matrix, 0.01 * np.eye(3))
    np.testing.assert_allclose(np.abs(np.linalg.det(iso)), 4.0**3 * 1.01**3)
    e = np.diag([0.01, -0.01, 0.0])  # tetragonal-like distortion: (100), (010), (001) no longer coincide
    strained = Structure(Lattice(strain_cell(s.lattice.matrix, e)), s.species, s.frac_coords)
    sim = XRDSimulator()
    before, after = sim.get_pattern(s), sim.get_pattern(strained)
    d = 4.0 * np.array([1.01, 0.99, 1.0])  # d(100), d(010), d(001) after the strain
    expect = np.degrees(2 * np.arcsin(1.5406 / (2 * d)))
    near = after.two_theta[np.abs(after.two_theta - 22.2) < 0.5]
    assert len(before.two_theta[np.abs(before.two_theta - 22.2) < 0.5]) == 1 and len(near) == 3
    np.testing.assert_allclose(np.sort(near), np.sort(expect), atol=2e-3)


class _Tiny:
    """A data set of two structures with ``sticks`` and ``structure`` (what measured_queries uses)."""

    def __init__(self):
        self.s = [Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
                  Structure(Lattice.cubic(3.0), ["Fe"], [[0, 0, 0]])]
        self.sim = XRDSimulator()

    def structure(self, i):
        return self.s[i]

    def sticks(self, i):
        p = self.sim.get_pattern(self.s[i])
        return p.two_theta, p.intensity / p.intensity.max()


def test_measured_queries_are_finite_normalised_and_masked():
    data = _Tiny()
    cfg = Config.smoke()
    rows = np.array([0, 1, 0, 1])
    patterns, masks = measured_queries(cfg, data, rows, [data.sticks(int(i)) for i in rows],
                                       np.random.default_rng(0))
    assert patterns.shape == masks.shape == (4, 140) and np.isfinite(patterns).all()
    np.testing.assert_allclose(patterns.max(axis=1), 1.0, atol=1e-6)
    assert (patterns[~masks] == 0).all()
    again, _ = measured_queries(cfg, data, rows, [data.sticks(int(i)) for i in rows], np.random.default_rng(0))
    np.testing.assert_array_equal(patterns, again)


def test_mask_channel_is_read_and_exported_to_numpy():
    from eacnn.models import EACNN
    from eacnn.retrieval.pattern_tower import PatternTower, export_tower

    torch.manual_seed(0)
    model = EACNN.from_config(Config.smoke().replace(**{"model.xrd_mask_channel": True})).eval()
    x = np.random.default_rng(0).random((3, 140)).astype(np.float32) ** 6
    full = np.ones_like(x, dtype=bool)
    half = full.copy()
    half[:, 70:] = False
    a = model.encode_patterns(x, progress=False, masks=full).numpy()
    b = model.encode_patterns(x, progress=False, masks=half).numpy()
    assert np.abs(a - b).max() > 1e-3  # the mask changes what the tower sees
    np.testing.assert_allclose(model.encode_patterns(x, progress=False).numpy(), a, atol=1e-6)  # None = measured
    tower = PatternTower(export_tower(model))
    assert tower.reads_mask
    np.testing.assert_allclose(tower(x, half), b, atol=2e-5)
    np.testing.assert_allclose(tower(x), a, atol=2e-5)
