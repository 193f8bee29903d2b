"""Stateless building blocks of the model: normalisation, RoPE and causal attention.

Shape letters: B batch, S sequence, E embedding, N neurons (300 per channel, times C
channels), H attention heads, D head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxconnectome.flash_attention import flash_causal_attention

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


ATTENTION_IMPLS = ("xla", "blocked", "flash", "cudnn")


def causal_attention(
    state_BSN: jax.Array,
    wq: jax.Array,
    wk: jax.Array,
    wv: jax.Array,
    wo: jax.Array,
    num_heads: int,
    rope_base: float,
    implementation: str = "xla",
    block_size: int = 128,
    remat: bool = False,
) -> jax.Array:
    """Residual causal self-attention over positions, with RoPE then QK-norm.

    wq, wk, wv are (H*D, N) and wo is (N, H*D), laid out [out, in] as in PyTorch.
    `implementation` selects the softmax attention: see `attention_core`. With `remat` the
    backward pass recomputes the (S, S) scores instead of keeping them from the forward.
    Flash attention keeps no scores in any case, so `remat` does not apply to it.
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
    use_remat = remat and implementation != "flash"
    core = jax.checkpoint(attention_core, static_argnums=(3, 4)) if use_remat else attention_core
    out_BSHD = core(q_BSHD, k_BSHD, v_BSHD, implementation, block_size)
    return state_BSN + out_BSHD.reshape(batch, seq_len, num_heads * head_dim) @ wo.T


def attention_core(
    q_BSHD: jax.Array, k_BSHD: jax.Array, v_BSHD: jax.Array, implementation: str = "xla", block_size: int = 128
) -> jax.Array:
    """Causal softmax attention with scale 1/sqrt(D).

    xla: jax.nn.dot_product_attention's XLA path, which scores every query against every
    key and masks the upper triangle. blocked: the same arithmetic per block of
    `block_size` queries, scoring only the keys up to the block's end, so close to half
    of the score and weighted-sum work is skipped; only summation order differs from xla.
    flash: the blocked form with a hand-written backward pass that recomputes each block's
    probabilities from the saved log-sum-exp (see flash_attention.py).
    cudnn: jax.nn.dot_product_attention's cuDNN kernel, GPU only and bfloat16 or float16 inputs.
    """
    scale = 1.0 / float(np.sqrt(q_BSHD.shape[-1]))
    seq_len = q_BSHD.shape[1]
    if implementation == "flash":
        return flash_causal_attention(q_BSHD, k_BSHD, v_BSHD, scale, block_size)
    if implementation == "blocked" and seq_len > block_size:
        return _blocked_causal_attention(q_BSHD, k_BSHD, v_BSHD, scale, block_size)
    if implementation in ("xla", "blocked"):
        return jax.nn.dot_product_attention(q_BSHD, k_BSHD, v_BSHD, scale=scale, is_causal=True, implementation="xla")
    if implementation == "cudnn":
        return jax.nn.dot_product_attention(q_BSHD, k_BSHD, v_BSHD, scale=scale, is_causal=True, implementation="cudnn")
    raise ValueError(f"attention implementation {implementation!r} is unknown; use one of {', '.join(ATTENTION_IMPLS)}")


def _blocked_causal_attention(q_BSHD, k_BSHD, v_BSHD, scale: float, block_size: int) -> jax.Array:
    """Attend each block of queries to the keys up to its last position only.

    The last block may be shorter than `block_size`. The mask inside each block is the
    causal one, so every query attends to exactly the keys of the full computation.
    """
    seq_len = q_BSHD.shape[1]
    outputs = []
    for start in range(0, seq_len, block_size):
        end = min(start + block_size, seq_len)
        query_pos = np.arange(start, end)[:, None]
        key_pos = np.arange(end)[None, :]
        mask_11QK = jnp.asarray(key_pos <= query_pos)[None, None]
        outputs.append(
            jax.nn.dot_product_attention(
                q_BSHD[:, start:end], k_BSHD[:, :end], v_BSHD[:, :end], scale=scale, mask=mask_11QK,
                implementation="xla",
            )
        )
    return jnp.concatenate(outputs, axis=1)
