"""Losses: hand computations, distributions of the JEPA mask, and the PyTorch twin."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_reference as ref
from jaxconnectome import losses


def run_lengths(mask_row: np.ndarray) -> list[int]:
    """Lengths of the contiguous runs of True in one row."""
    padded = np.concatenate([[False], mask_row, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(edges[1::2] - edges[0::2])


@pytest.fixture(scope="module")
def reference_sized_mask():
    draw = jax.jit(lambda key: losses.jepa_span_mask(key, 256, 1024, 0.3, 4.0))
    return np.asarray(draw(jax.random.PRNGKey(0)))


def test_jepa_mask_fraction(reference_sized_mask):
    # The reference's sampler at S=1024 over 256 sequences masks 0.302 of positions.
    assert reference_sized_mask.shape == (256, 1024)
    assert abs(reference_sized_mask.mean() - 0.302) < 0.005
    assert (reference_sized_mask.sum(axis=1) >= int(0.3 * 1024)).all()


def test_jepa_mask_run_length(reference_sized_mask):
    # Mean length of contiguous masked runs measured on the reference's sampler: 4.74.
    lengths = [n for row in reference_sized_mask for n in run_lengths(row)]
    assert abs(np.mean(lengths) - 4.74) < 0.15


def test_jepa_mask_stops_at_target():
    # Each sequence stops as soon as the target is reached, so the last span added can
    # overshoot it by at most its own length. A loop that ran on would mask far more.
    mask = np.asarray(losses.jepa_span_mask(jax.random.PRNGKey(3), 64, 100, 0.3, 4.0))
    assert (mask.sum(axis=1) >= 30).all()
    assert mask.sum(axis=1).mean() < 36
    assert not losses.jepa_span_mask(jax.random.PRNGKey(3), 4, 100, 0.0, 4.0).any()


def test_jepa_mask_depends_on_key():
    first = losses.jepa_span_mask(jax.random.PRNGKey(1), 4, 64)
    again = losses.jepa_span_mask(jax.random.PRNGKey(1), 4, 64)
    other = losses.jepa_span_mask(jax.random.PRNGKey(2), 4, 64)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_jepa_loss_equals_hand_masked_mse():
    rng = np.random.default_rng(0)
    predicted = rng.standard_normal((2, 5, 3)).astype(np.float32)
    target = rng.standard_normal((2, 5, 3)).astype(np.float32)
    mask = np.array([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0]], bool)
    expected = np.mean([(predicted[b, s] - target[b, s]) ** 2 for b, s in zip(*np.nonzero(mask))])
    got = losses.jepa_loss(jnp.asarray(predicted), jnp.asarray(target), jnp.asarray(mask))
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_jepa_loss_stops_target_gradient():
    predicted = jnp.ones((1, 4, 2))
    target = jnp.zeros((1, 4, 2))
    mask = jnp.array([[True, False, True, False]])
    grad_predicted, grad_target = jax.grad(losses.jepa_loss, argnums=(0, 1))(predicted, target, mask)
    assert not jnp.any(grad_target)
    # d/dp mean((p - t)^2) over 4 masked values = 2 (p - t) / 4 on masked rows, 0 elsewhere.
    np.testing.assert_allclose(grad_predicted[0, :, 0], [0.5, 0.0, 0.5, 0.0])


def test_cross_entropy_by_hand():
    logits = jnp.array([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]]])
    targets = jnp.array([[0, 2]])
    first = -(2.0 - math.log(math.exp(2.0) + 1.0 + math.exp(-1.0)))
    second = math.log(3.0)
    assert float(losses.cross_entropy(logits, targets)) == pytest.approx((first + second) / 2, rel=1e-6)


def test_sigreg_small_on_gaussian_large_on_collapse():
    key = jax.random.PRNGKey(0)
    gaussian = jax.random.normal(jax.random.PRNGKey(1), (20000, 64))
    collapsed = jnp.ones((20000, 64)) * 0.3
    assert float(losses.sigreg(key, gaussian)) < 1e-3
    assert float(losses.sigreg(key, collapsed)) > 0.1


def test_sigreg_equals_torch_twin():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((512, 32)) * 1.7 + 0.2).astype(np.float32)
    projections = rng.standard_normal((32, 64)).astype(np.float32)
    projections /= np.linalg.norm(projections, axis=0, keepdims=True)
    expected = float(ref.sigreg(torch.from_numpy(x), projections=torch.from_numpy(projections)))
    got = float(losses.sigreg_with_projections(jnp.asarray(x), jnp.asarray(projections)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_sigreg_hand_value_for_constant_input():
    # All points at 0: cos mean is 1 and sin mean is 0, so err(t) = (1 - exp(-t^2/2))^2,
    # whatever the projections; integrate it with the reference's weights by hand.
    t = np.linspace(0, 3, 17)
    dt = 3 / 16
    weights = np.full(17, 2 * dt)
    weights[[0, -1]] = dt
    expected = np.sum((1 - np.exp(-(t**2) / 2)) ** 2 * weights * np.exp(-(t**2) / 2))
    got = losses.sigreg(jax.random.PRNGKey(0), jnp.zeros((10, 8)))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_losses_are_jittable_and_differentiable():
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (64, 16))
    grad = jax.jit(jax.grad(lambda v: losses.sigreg(key, v)))(x)
    assert grad.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(grad)))
    logits = jax.random.normal(key, (2, 8, 10))
    targets = jnp.zeros((2, 8), jnp.int32)
    grad_ce = jax.jit(jax.grad(losses.cross_entropy))(logits, targets)
    # The gradient of mean CE sums to zero over the vocabulary at every position.
    np.testing.assert_allclose(jnp.sum(grad_ce, axis=-1), 0.0, atol=1e-7)
    mask = jax.jit(losses.jepa_span_mask, static_argnums=(1, 2))(key, 2, 16)
    assert mask.dtype == jnp.bool_
