"""CLIP's symmetric InfoNCE against a hand-written reference."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from eacnn.training.losses import clip_logits, clip_loss  # noqa: E402


def _reference(a: list[list[float]], b: list[list[float]], t: float) -> float:
    """The loss with explicit loops: mean over rows and columns of -log softmax at the matching item."""
    n = len(a)
    s = [[math.exp(t) * sum(x * y for x, y in zip(a[i], b[j])) for j in range(n)] for i in range(n)]
    rows = 0.0
    for i in range(n):
        log_norm = math.log(sum(math.exp(s[i][j]) for j in range(n)))
        rows += -(s[i][i] - log_norm)
    cols = 0.0
    for j in range(n):
        log_norm = math.log(sum(math.exp(s[i][j]) for i in range(n)))
        cols += -(s[j][j] - log_norm)
    return 0.5 * (rows / n + cols / n)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def test_matches_the_hand_computed_reference():
    g = torch.Generator().manual_seed(0)
    a = _unit(torch.randn(5, 3, generator=g, dtype=torch.float64))
    b = _unit(torch.randn(5, 3, generator=g, dtype=torch.float64))
    for t in (0.0, math.log(1 / 0.07), 1.3):
        got = float(clip_loss(a, b, torch.tensor(t, dtype=torch.float64)))
        assert math.isclose(got, _reference(a.tolist(), b.tolist(), t), rel_tol=1e-12)


def test_a_three_item_example_by_hand():
    # orthonormal embeddings with exp(t) = 1: every row and column has logits (1, 0, 0), so the loss is
    # -log(e / (e + 2)) exactly
    eye = torch.eye(3, dtype=torch.float64)
    assert math.isclose(float(clip_loss(eye, eye, 0.0)), -math.log(math.e / (math.e + 2)), rel_tol=1e-12)


def test_symmetric_and_bounded():
    g = torch.Generator().manual_seed(1)
    a, b = _unit(torch.randn(8, 4, generator=g)), _unit(torch.randn(8, 4, generator=g))
    assert torch.allclose(clip_loss(a, b, 2.0), clip_loss(b, a, 2.0))
    # perfectly aligned, well-separated pairs at a high scale: the loss goes to zero
    eye = torch.eye(8)
    assert float(clip_loss(eye, eye, math.log(100))) < 1e-6
    # all embeddings equal: every item is as likely as the right one, loss = log B
    same = torch.ones(8, 4) / 2
    assert math.isclose(float(clip_loss(same, same, 2.0)), math.log(8), rel_tol=1e-6)


def test_logits_and_gradient_of_the_temperature():
    a = _unit(torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    t = torch.tensor(math.log(10.0), requires_grad=True)
    assert torch.allclose(clip_logits(a, a, t), 10.0 * a @ a.T)
    clip_loss(a, a, t).backward()
    assert t.grad is not None and float(t.grad) < 0  # matched pairs: sharpening lowers the loss


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)"):
        clip_loss(torch.zeros(3, 4), torch.zeros(2, 4), 0.0)
