"""Training losses as pure functions of arrays (and a PRNG key where they sample).

total = CE + jepa_weight * JEPA + sigreg_weight * SigREG, with the reference's weights
0.5 and 1e-4. Every function here is jittable and differentiable, and returns a scalar.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits_BSV: jax.Array, targets_BS: jax.Array) -> jax.Array:
    """Return the mean next-token cross-entropy in nats, computed in float32."""
    return jnp.mean(token_cross_entropy(logits_BSV, targets_BS))


def token_cross_entropy(logits_BSV: jax.Array, targets_BS: jax.Array) -> jax.Array:
    """Return the per-token cross-entropy (B, S) in float32, for exact sums in evaluation."""
    logits = logits_BSV.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets_BS[..., None], axis=-1)[..., 0]
    return log_z - target_logit


def jepa_span_mask(
    key: jax.Array, batch: int, seq_len: int, mask_ratio: float = 0.3, mean_span: float = 4.0
) -> jax.Array:
    """Draw the reference's span mask (B, S) on device.

    Per sequence, spans are added until at least floor(mask_ratio * S) positions are
    masked: each span has length max(1, floor(Exp(mean_span))) and a start uniform in
    [0, S-1], and is clipped at S. Spans may overlap, so the loop runs until the count of
    distinct masked positions reaches the target.
    """
    target = int(mask_ratio * seq_len)
    positions = jnp.arange(seq_len)

    def mask_one(seq_key: jax.Array) -> jax.Array:
        def not_done(carry):
            mask, _ = carry
            return jnp.sum(mask) < target

        def add_span(carry):
            mask, k = carry
            k, length_key, start_key = jax.random.split(k, 3)
            drawn = jnp.floor(jax.random.exponential(length_key) * mean_span)
            length = jnp.clip(drawn, 1, seq_len).astype(jnp.int32)
            start = jax.random.randint(start_key, (), 0, seq_len)
            span = (positions >= start) & (positions < start + length)
            return mask | span, k

        mask, _ = jax.lax.while_loop(not_done, add_span, (jnp.zeros((seq_len,), bool), seq_key))
        return mask

    return jax.vmap(mask_one)(jax.random.split(key, batch))


def jepa_loss(rep_masked_BSE: jax.Array, rep_target_BSE: jax.Array, mask_BS: jax.Array) -> jax.Array:
    """Return the MSE over masked positions and all E dims, with the target's gradient stopped.

    The target is the unmasked encoder's `rep`; the prediction is the same network's
    output on the masked input. A mask with no positions gives 0.
    """
    target = jax.lax.stop_gradient(rep_target_BSE).astype(jnp.float32)
    diff = rep_masked_BSE.astype(jnp.float32) - target
    weight = mask_BS.astype(jnp.float32)[..., None]
    count = jnp.sum(mask_BS) * rep_masked_BSE.shape[-1]
    return jnp.sum(jnp.square(diff) * weight) / jnp.maximum(count, 1)


def sigreg_projections(key: jax.Array, embed_dim: int, num_slices: int = 64) -> jax.Array:
    """Draw (E, slices) Gaussian directions normalised to unit columns."""
    a = jax.random.normal(key, (embed_dim, num_slices), jnp.float32)
    return a / jnp.linalg.norm(a, axis=0, keepdims=True)


def sigreg(key: jax.Array, x_NE: jax.Array, num_slices: int = 64, num_knots: int = 17) -> jax.Array:
    """SigREG (LeJEPA, Balestriero and LeCun 2025): Epps-Pulley test of x against N(0, I).

    Projects x (N, E) on random unit directions and compares the empirical characteristic
    function at t in [0, 3] with exp(-t^2/2). The quadrature weights follow the reference:
    2*dt for inner knots and dt at both ends, times the Gaussian window exp(-t^2/2).
    """
    projections = sigreg_projections(key, x_NE.shape[-1], num_slices)
    return sigreg_with_projections(x_NE, projections, num_knots)


def sigreg_with_projections(x_NE: jax.Array, projections_EP: jax.Array, num_knots: int = 17) -> jax.Array:
    """SigREG with given directions (E, P), for tests that share them with another implementation."""
    p_NP = x_NE.astype(jnp.float32) @ jax.lax.stop_gradient(projections_EP)
    t_T = jnp.linspace(0.0, 3.0, num_knots, dtype=jnp.float32)
    pt_NPT = p_NP[..., None] * t_T
    cos_mean_PT = jnp.mean(jnp.cos(pt_NPT), axis=0)
    sin_mean_PT = jnp.mean(jnp.sin(pt_NPT), axis=0)
    gaussian_T = jnp.exp(-0.5 * jnp.square(t_T))
    err_PT = jnp.square(cos_mean_PT - gaussian_T) + jnp.square(sin_mean_PT)
    dt = 3.0 / (num_knots - 1)
    trapezoid_T = jnp.full((num_knots,), 2.0 * dt).at[0].set(dt).at[-1].set(dt)
    return jnp.mean(err_PT @ (trapezoid_T * gaussian_T))
