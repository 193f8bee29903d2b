"""Stateless building blocks of the model: normalisation, RoPE and causal attention.

Shape letters: B batch, S sequence, E embedding, N neurons (300 per channel, times C
channels), H attention heads, D head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's F.rms_norm with eps=None uses torch.finfo(float32).eps for float32 and, as
# measured with torch 2.13, also for bfloat16 inputs, which it normalises in float32.
RMS_NORM_EPS = float(np.finfo(np.float32).eps)


def rms_norm(x: jax.Array) -> jax.Array:
    """Normalise the last axis to unit root mean square, with no learned weight.

    The statistics are computed in float32 whatever the input dtype, and the result is
    cast back, as PyTorch does for bfloat16.
    """
    x32 = x.astype(jnp.float32)
    inv_rms = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + RMS_NORM_EPS)
    return (x32 * inv_rms).astype(x.dtype)


def gelu(x: jax.Array) -> jax.Array:
    """Exact erf GELU, as PyTorch's default; jax.nn.gelu defaults to the tanh form."""
    return jax.nn.gelu(x, approximate=False)


def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
    """Return cos and sin tables (S, D/2) for positions 0..S-1, computed in float32."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_BSHD: jax.Array, cos_SD: jax.Array, sin_SD: jax.Array) -> jax.Array:
    """Rotate halves: [x1*cos + x2*sin, -x1*sin + x2*cos] with x1, x2 the two halves of D."""
    half = x_BSHD.shape[-1] // 2
    x1, x2 = x_BSHD[..., :half], x_BSHD[..., half:]
    cos = cos_SD[None, :, None, :].astype(x_BSHD.dtype)
    sin = sin_SD[None, :, None, :].astype(x_BSHD.dtype)
    return jnp.concatenate([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], axis=-1)


def causal_attention(
    state_BSN: jax.Array,
    wq: jax.Array,
    wk: jax.Array,
    wv: jax.Array,
    wo: jax.Array,
    num_heads: int,
    rope_base: float,
) -> jax.Array:
    """Residual causal self-attention over positions, with RoPE then QK-norm.

    wq, wk, wv are (H*D, N) and wo is (N, H*D), laid out [out, in] as in PyTorch.
    """
    batch, seq_len, _ = state_BSN.shape
    head_dim = wq.shape[0] // num_heads
    h_BSN = rms_norm(state_BSN)

    def project(w: jax.Array) -> jax.Array:
        return (h_BSN @ w.T).reshape(batch, seq_len, num_heads, head_dim)

    cos_SD, sin_SD = rope_tables(seq_len, head_dim, rope_base)
    q_BSHD = rms_norm(apply_rope(project(wq), cos_SD, sin_SD))
    k_BSHD = rms_norm(apply_rope(project(wk), cos_SD, sin_SD))
    v_BSHD = project(wv)
    out_BSHD = jax.nn.dot_product_attention(
        q_BSHD, k_BSHD, v_BSHD, scale=1.0 / float(np.sqrt(head_dim)), is_causal=True
    )
    return state_BSN + out_BSHD.reshape(batch, seq_len, num_heads * head_dim) @ wo.T
