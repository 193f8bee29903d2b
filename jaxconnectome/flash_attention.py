"""Causal softmax attention by query blocks with a hand-written backward pass.

The forward pass scores each block of queries against the keys up to the block's end
only, and keeps one log-sum-exp per query instead of the (S, S) probabilities. The
backward pass recomputes a block's probabilities from it, as FlashAttention does: with
`lse` saved, P = exp(QK^T * scale - lse) needs no max or sum, and the softmax gradient
uses delta = rowsum(dO * O) instead of rowsum(dP * P). Autodiff of the blocked forward,
remat or not, stores or recomputes the whole softmax. This does less work in the backward
pass and keeps no scores from the forward pass for it.

Blocks are a Python loop, unrolled at trace time: the block shapes grow with the block
index (the keys up to the block's end), which lax.scan cannot express without padding
the skipped half back in.

Shape letters: B batch, S sequence (Q queries of a block, K keys), H heads, D head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _query_blocks(seq_len: int, block_size: int) -> list[tuple[int, int]]:
    """Return the (start, end) of each query block. The last block may be shorter."""
    return [(start, min(start + block_size, seq_len)) for start in range(0, seq_len, block_size)]


def _block_scores(q_BHQD: jax.Array, k_BHKD: jax.Array, start: int, scale: float) -> jax.Array:
    """Return the scaled float32 scores of queries [start, start+Q) against keys [0, K), -inf above the diagonal."""
    scores_BHQK = jnp.einsum("bhqd,bhkd->bhqk", q_BHQD, k_BHKD, preferred_element_type=jnp.float32) * scale
    queries, keys = q_BHQD.shape[2], k_BHKD.shape[2]
    causal_QK = np.arange(keys)[None, :] <= np.arange(start, start + queries)[:, None]
    return jnp.where(causal_QK, scores_BHQK, -jnp.inf)


def _heads_first(*arrays_BSHD: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(jnp.swapaxes(a, 1, 2) for a in arrays_BSHD)


def _forward(q_BSHD, k_BSHD, v_BSHD, scale: float, block_size: int):
    """Return the attention output (B, S, H, D) and the float32 log-sum-exp (B, H, S)."""
    q_BHSD, k_BHSD, v_BHSD = _heads_first(q_BSHD, k_BSHD, v_BSHD)
    outputs, lses = [], []
    for start, end in _query_blocks(q_BSHD.shape[1], block_size):
        scores_BHQK = _block_scores(q_BHSD[:, :, start:end], k_BHSD[:, :, :end], start, scale)
        max_BHQ1 = jnp.max(scores_BHQK, axis=-1, keepdims=True)
        weights_BHQK = jnp.exp(scores_BHQK - max_BHQ1)
        total_BHQ1 = jnp.sum(weights_BHQK, axis=-1, keepdims=True)
        out_BHQD = jnp.einsum("bhqk,bhkd->bhqd", weights_BHQK.astype(v_BSHD.dtype), v_BHSD[:, :, :end],
                              preferred_element_type=jnp.float32) / total_BHQ1
        outputs.append(out_BHQD.astype(q_BSHD.dtype))
        lses.append((max_BHQ1 + jnp.log(total_BHQ1))[..., 0])
    out_BHSD = jnp.concatenate(outputs, axis=2)
    return jnp.swapaxes(out_BHSD, 1, 2), jnp.concatenate(lses, axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def flash_causal_attention(q_BSHD, k_BSHD, v_BSHD, scale: float, block_size: int) -> jax.Array:
    """Return softmax(QK^T * scale, causal) V for (B, S, H, D) inputs, by blocks of `block_size` queries."""
    return _forward(q_BSHD, k_BSHD, v_BSHD, scale, block_size)[0]


def _flash_forward(q_BSHD, k_BSHD, v_BSHD, scale, block_size):
    out_BSHD, lse_BHS = _forward(q_BSHD, k_BSHD, v_BSHD, scale, block_size)
    return out_BSHD, (q_BSHD, k_BSHD, v_BSHD, out_BSHD, lse_BHS)


def _flash_backward(scale, block_size, residuals, dout_BSHD):
    q_BSHD, k_BSHD, v_BSHD, out_BSHD, lse_BHS = residuals
    q_BHSD, k_BHSD, v_BHSD, dout_BHSD = _heads_first(q_BSHD, k_BSHD, v_BSHD, dout_BSHD)
    f32 = jnp.float32
    # rowsum(dP * P) of the softmax gradient equals rowsum(dO * O), which needs no scores.
    delta_BHS = jnp.sum(dout_BHSD.astype(f32) * jnp.swapaxes(out_BSHD, 1, 2).astype(f32), axis=-1)
    dq_blocks = []
    dk_BHSD = jnp.zeros(k_BHSD.shape, f32)
    dv_BHSD = jnp.zeros(v_BHSD.shape, f32)
    for start, end in _query_blocks(q_BSHD.shape[1], block_size):
        q_BHQD, dout_BHQD = q_BHSD[:, :, start:end], dout_BHSD[:, :, start:end]
        k_BHKD, v_BHKD = k_BHSD[:, :, :end], v_BHSD[:, :, :end]
        # exp(-inf) = 0 above the diagonal, so the mask carries over from the scores.
        probs_BHQK = jnp.exp(_block_scores(q_BHQD, k_BHKD, start, scale) - lse_BHS[:, :, start:end, None])
        dv_BHSD = dv_BHSD.at[:, :, :end].add(
            jnp.einsum("bhqk,bhqd->bhkd", probs_BHQK.astype(dout_BHQD.dtype), dout_BHQD, preferred_element_type=f32)
        )
        dprobs_BHQK = jnp.einsum("bhqd,bhkd->bhqk", dout_BHQD, v_BHKD, preferred_element_type=f32)
        dscores_BHQK = (probs_BHQK * (dprobs_BHQK - delta_BHS[:, :, start:end, None]) * scale).astype(q_BSHD.dtype)
        dq_blocks.append(jnp.einsum("bhqk,bhkd->bhqd", dscores_BHQK, k_BHKD, preferred_element_type=f32))
        dk_BHSD = dk_BHSD.at[:, :, :end].add(
            jnp.einsum("bhqk,bhqd->bhkd", dscores_BHQK, q_BHQD, preferred_element_type=f32)
        )
    dq_BHSD = jnp.concatenate(dq_blocks, axis=2)
    return tuple(
        jnp.swapaxes(grad, 1, 2).astype(like.dtype)
        for grad, like in ((dq_BHSD, q_BSHD), (dk_BHSD, k_BSHD), (dv_BHSD, v_BSHD))
    )


flash_causal_attention.defvjp(_flash_forward, _flash_backward)
