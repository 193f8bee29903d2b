"""Connectome-JEPA: token embeddings routed through the C. elegans wiring.

Embeddings enter the sensory neurons, cross `num_hops` hops whose 300x300 weights are
multiplied by the adjacency mask, meet residual causal attention every
`cross_attn_every` hops, and leave through the motor neurons into tied logits.

Shape letters: B batch, S sequence, E embedding, V vocabulary, C channels, N neurons per
channel (300), L hops, A attention positions, H heads, D head dim.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxconnectome.connectome import NUM_NEURONS
from jaxconnectome.layers import ATTENTION_IMPLS, causal_attention, gelu, rms_norm

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
HOP_FORMS = ("dense", "edges")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of the network; defaults are the reference's primary configuration.

    The speed switches (scan_hops to share_masked_prefix) change how the numbers are
    computed, never which: every choice gives the same results up to float rounding. Their
    defaults here are the plain path; `Settings.model_config` picks the fast one.
    """

    vocab_size: int = 1024
    embed_dim: int = 768
    num_hops: int = 6
    cross_attn_every: int = 2
    head_dim: int = 128
    num_attn_heads: int = 4
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    skip_every: int = 2
    num_channels: int = 1
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    # Run the hops in lax.scan (True) or an unrolled Python loop (False); same numbers.
    scan_hops: bool = True
    # Softmax attention: "xla", "blocked" (skips the keys after each query block) or
    # "cudnn" (GPU only); see layers.attention_core.
    attention_impl: str = "xla"
    attention_block_size: int = 128
    # Recompute the attention scores in the backward pass instead of storing them.
    remat_attention: bool = False
    # Masked hops as "dense" (W * mask) matmuls or "edges": a gather of the inputs of the
    # mask's nonzero entries and a segment sum into their outputs.
    hop_form: str = "dense"
    # Encode the unmasked and the JEPA-masked batch in one call on their concatenation.
    fuse_encoder_passes: bool = False
    # Compute the JEPA-masked pass up to the first attention layer only for the mask_emb
    # row, taking the unmasked pass's values elsewhere (see ConnectomeJEPA.encode_pair).
    share_masked_prefix: bool = False

    def __post_init__(self):
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r} is unknown; use one of {', '.join(ATTENTION_IMPLS)}")
        if self.hop_form not in HOP_FORMS:
            raise ValueError(f"hop_form={self.hop_form!r} is unknown; use one of {', '.join(HOP_FORMS)}")
        if self.attention_block_size <= 0:
            raise ValueError(f"attention_block_size={self.attention_block_size} must be positive")

    @property
    def attn_hops(self) -> tuple[int, ...]:
        """Hop indices after which an attention layer runs."""
        return tuple(i for i in range(self.num_hops) if (i + 1) % self.cross_attn_every == 0)

    @property
    def num_skip_gates(self) -> int:
        # With 6 hops and skip_every=2 this is 2: the gate after hop 6 does not exist.
        if self.skip_every <= 0:
            return 0
        return max((self.num_hops - 1) // self.skip_every, 1)

    def skip_gate_index(self, hop: int) -> int:
        """Return the gate re-injecting the sensory signal after `hop`, or -1 for none."""
        every = self.skip_every
        if every <= 0 or hop == 0 or (hop + 1) % every != 0:
            return -1
        gate = (hop + 1) // every - 1
        return gate if gate < self.num_skip_gates else -1


class Buffer(nnx.Variable):
    """A fixed array saved with the model but never trained (masks and neuron indices)."""


def _normal(key: jax.Array, shape: tuple[int, ...], std: float, dtype) -> jax.Array:
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def _torch_linear_init(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """PyTorch nn.Linear's default weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(shape[-1])
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def channel_slots(neuron_idx: np.ndarray, num_channels: int) -> np.ndarray:
    """Return the state slots of `neuron_idx` in every channel: channel c owns [300c, 300c+300)."""
    return np.concatenate([np.asarray(neuron_idx) + NUM_NEURONS * c for c in range(num_channels)])


class ConnectomeJEPA(nnx.Module):
    """The reference network; `encode` gives representations, `logits` the softcapped scores."""

    def __init__(
        self,
        config: ModelConfig,
        hop_mask: np.ndarray,
        sensory_idx: np.ndarray,
        motor_idx: np.ndarray,
        *,
        rngs: nnx.Rngs,
    ):
        self.config = config
        dtype = DTYPES[config.param_dtype]
        e, v, c, n = config.embed_dim, config.vocab_size, config.num_channels, NUM_NEURONS
        num_sensory, num_motor = len(sensory_idx), len(motor_idx)
        num_hops, num_attn = config.num_hops, len(config.attn_hops)
        qkv_dim = config.num_attn_heads * config.head_dim

        self.tok_emb = nnx.Param(_normal(rngs.params(), (v, e), 0.005, dtype))  # (V, E)
        self.mask_emb = nnx.Param(jnp.zeros((e,), dtype))
        self.sensory_proj = nnx.Param(_torch_linear_init(rngs.params(), (num_sensory * c, e), dtype))
        self.motor_proj = nnx.Param(_torch_linear_init(rngs.params(), (e, num_motor * c), dtype))
        self.output_residual_scale = nnx.Param(jnp.asarray(0.1, dtype))

        # Per-hop parameters are stacked on a leading L axis so the hops can run in a scan.
        # The dense (L, C, N, N) weights are masked in the forward pass, as in the reference.
        self.hop_weight = nnx.Param(_normal(rngs.params(), (num_hops, c, n, n), 0.02, dtype))
        self.hop_bias = nnx.Param(jnp.zeros((num_hops, c, n), dtype))
        self.hop_scale = nnx.Param(jnp.full((num_hops, c * n), 1.0 / math.sqrt(num_hops), dtype))
        if config.num_skip_gates:
            self.skip_gates = nnx.Param(jnp.full((config.num_skip_gates,), 0.1, dtype))

        # Attention weights stacked on A, one entry per hop in config.attn_hops, [out, in].
        self.attn_q = nnx.Param(_torch_linear_init(rngs.params(), (num_attn, qkv_dim, c * n), dtype))
        self.attn_k = nnx.Param(_torch_linear_init(rngs.params(), (num_attn, qkv_dim, c * n), dtype))
        self.attn_v = nnx.Param(_torch_linear_init(rngs.params(), (num_attn, qkv_dim, c * n), dtype))
        self.attn_out = nnx.Param(jnp.zeros((num_attn, c * n, qkv_dim), dtype))

        self.hop_mask = Buffer(jnp.asarray(hop_mask, jnp.float32))  # (N_out, N_in)
        self.sensory_idx = Buffer(jnp.asarray(sensory_idx, jnp.int32))
        self.motor_idx = Buffer(jnp.asarray(motor_idx, jnp.int32))
        self.sensory_slots = Buffer(jnp.asarray(channel_slots(sensory_idx, c), jnp.int32))
        self.motor_slots = Buffer(jnp.asarray(channel_slots(motor_idx, c), jnp.int32))
        if config.hop_form == "edges":
            # (out, in) of the mask's nonzero entries, sorted by output neuron.
            edge_out, edge_in = np.nonzero(np.asarray(hop_mask))
            self.hop_edge_out = Buffer(jnp.asarray(edge_out, jnp.int32))
            self.hop_edge_in = Buffer(jnp.asarray(edge_in, jnp.int32))

    def _compute(self, param: nnx.Param) -> jax.Array:
        return param[...].astype(DTYPES[self.config.compute_dtype])

    def _hop_gates(self) -> jax.Array:
        """Return (L,) re-injection gate per hop, 0 where a hop re-injects nothing."""
        config = self.config
        index = np.array([config.skip_gate_index(i) for i in range(config.num_hops)])
        if not config.num_skip_gates:
            return jnp.zeros((config.num_hops,), DTYPES[config.compute_dtype])
        gates = self._compute(self.skip_gates)[np.maximum(index, 0)]
        return jnp.where(jnp.asarray(index >= 0), gates, jnp.zeros_like(gates))

    def encode(self, ids_BS: jax.Array, jepa_mask_BS: jax.Array | None = None) -> jax.Array:
        """Return the final representation `rep` (B, S, E) after the last rms_norm.

        Positions where `jepa_mask_BS` is True read `mask_emb` instead of their token.
        """
        x_BSE = self._compute(self.tok_emb)[ids_BS]
        if jepa_mask_BS is not None:
            x_BSE = jnp.where(jepa_mask_BS[..., None], self._compute(self.mask_emb), x_BSE)
        x_BSE = rms_norm(x_BSE)
        injected_BSN = self._inject(x_BSE)
        state_BSN = self._run_hops(injected_BSN, injected_BSN)
        return self._read_out(state_BSN, x_BSE)

    def encode_pair(self, ids_BS: jax.Array, jepa_mask_BS: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Return `encode(ids)` and `encode(ids, jepa_mask)`, computing their common part once.

        Up to the first attention layer every position is computed on its own. There the
        masked pass equals the unmasked one at unmasked positions, and at every masked
        position it equals the one row that mask_emb gives, so only that row is computed.
        The results equal two `encode` calls up to float rounding.
        """
        x_BSE = rms_norm(self._compute(self.tok_emb)[ids_BS])
        x_mask_11E = rms_norm(self._compute(self.mask_emb))[None, None, :]
        injected_BSN = self._inject(x_BSE)
        injected_mask_11N = self._inject(x_mask_11E)
        state_BSN = self._run_hops(injected_BSN, injected_BSN, stage="prefix")
        state_mask_11N = self._run_hops(injected_mask_11N, injected_mask_11N, stage="prefix")

        masked_BS1 = jepa_mask_BS[..., None]
        rep_BSE = self._read_out(self._run_hops(state_BSN, injected_BSN, stage="rest"), x_BSE)
        masked_injected_BSN = jnp.where(masked_BS1, injected_mask_11N, injected_BSN)
        masked_state_BSN = jnp.where(masked_BS1, state_mask_11N, state_BSN)
        masked_state_BSN = self._run_hops(masked_state_BSN, masked_injected_BSN, stage="rest")
        rep_masked_BSE = self._read_out(masked_state_BSN, jnp.where(masked_BS1, x_mask_11E, x_BSE))
        return rep_BSE, rep_masked_BSE

    def _inject(self, x_BSE: jax.Array) -> jax.Array:
        """Return the state (B, S, C*N) with the sensory projection of x in the sensory slots, zero elsewhere.

        Because it is zero outside the sensory slots, adding gate * injected re-injects the
        sensory signal exactly where the reference adds it.
        """
        sensory_BSK = x_BSE @ self._compute(self.sensory_proj).T  # K = 88 * C sensory inputs
        state_BSN = jnp.zeros((*x_BSE.shape[:-1], self.config.num_channels * NUM_NEURONS), x_BSE.dtype)
        return state_BSN.at[..., self.sensory_slots[...]].set(sensory_BSK)

    def _read_out(self, state_BSN: jax.Array, x_BSE: jax.Array) -> jax.Array:
        """Return rep = rms_norm(motor outputs @ motor_proj.T + x * output_residual_scale)."""
        motor_BSM = state_BSN[..., self.motor_slots[...]]  # M = 123 * C motor outputs
        out_BSE = motor_BSM @ self._compute(self.motor_proj).T
        out_BSE = out_BSE + x_BSE * self._compute(self.output_residual_scale)
        return rms_norm(out_BSE)

    def logits(self, rep_BSE: jax.Array) -> jax.Array:
        """Return float32 logits (B, S, V) from tied embeddings, softcapped as cap*tanh(z/cap)."""
        logits_BSV = (rep_BSE @ self._compute(self.tok_emb).T).astype(jnp.float32)
        cap = self.config.logit_softcap
        return cap * jnp.tanh(logits_BSV / cap)

    def __call__(self, ids_BS: jax.Array) -> jax.Array:
        return self.logits(self.encode(ids_BS))

    def _run_hops(self, state_BSN: jax.Array, injected_BSN: jax.Array, stage: str = "all") -> jax.Array:
        """Apply every hop, its re-injection and the attention that follows some hops.

        Hops are grouped in runs of `cross_attn_every`, each run followed by one attention
        layer; hops left over after the last attention run without it. `stage` "prefix"
        runs only the hops before the first attention layer (all hops if there is none),
        "rest" runs what follows them, and "all" runs both.
        """
        config = self.config
        every = config.cross_attn_every
        num_groups = len(config.attn_hops)
        num_prefix = every if num_groups else config.num_hops
        masked_weight = self._compute(self.hop_weight) * self.hop_mask[...].astype(state_BSN.dtype)
        hop_fn = hop
        if config.hop_form == "edges":
            edge_out, edge_in = self.hop_edge_out[...], self.hop_edge_in[...]
            masked_weight = masked_weight[:, :, edge_out, edge_in]  # (L, C, K) for K edges
            hop_fn = functools.partial(hop_edges, edge_out_K=edge_out, edge_in_K=edge_in)

        hop_inputs = (
            masked_weight,  # (L, C, N_out, N_in), or (L, C, K) for the edges form
            self._compute(self.hop_bias),  # (L, C, N)
            self._compute(self.hop_scale),  # (L, C*N)
            self._hop_gates(),  # (L,)
        )
        attn_weights = tuple(self._compute(p) for p in (self.attn_q, self.attn_k, self.attn_v, self.attn_out))

        def run_segment(state, segment_inputs):
            return self._scan(lambda s, inputs: (hop_fn(s, injected_BSN, *inputs), None), state, segment_inputs)

        def attention(state, weights):
            wq, wk, wv, wo = weights
            return causal_attention(
                state, wq, wk, wv, wo, config.num_attn_heads, config.rope_base,
                config.attention_impl, config.attention_block_size, config.remat_attention,
            )

        def group(state, inputs):
            segment_inputs, weights = inputs
            return attention(run_segment(state, segment_inputs), weights), None

        def hops(start, stop):
            return jax.tree.map(lambda a: a[start:stop], hop_inputs)

        if stage in ("all", "prefix"):
            state_BSN = run_segment(state_BSN, hops(0, num_prefix))
        if stage == "prefix":
            return state_BSN
        if num_groups:
            # The first group's hops are the prefix, so its attention runs on its own and
            # the scan covers the groups after it.
            state_BSN = attention(state_BSN, tuple(w[0] for w in attn_weights))
            later = jax.tree.map(lambda a: a.reshape(num_groups - 1, every, *a.shape[1:]),
                                 hops(every, num_groups * every))
            state_BSN = self._scan(group, state_BSN, (later, tuple(w[1:] for w in attn_weights)))
        return run_segment(state_BSN, hops(max(num_prefix, num_groups * every), config.num_hops))

    def _scan(self, body, carry, xs):
        """lax.scan over the leading axis of `xs`, or the same loop unrolled in Python."""
        length = jax.tree.leaves(xs)[0].shape[0]
        if length == 0:
            return carry
        if self.config.scan_hops:
            carry, _ = jax.lax.scan(body, carry, xs)
            return carry
        for i in range(length):
            carry, _ = body(carry, jax.tree.map(lambda a: a[i], xs))
        return carry


def hop(
    state_BSN: jax.Array,
    injected_BSN: jax.Array,
    weight_COI: jax.Array,
    bias_CO: jax.Array,
    scale_N: jax.Array,
    gate: jax.Array,
) -> jax.Array:
    """Apply one masked hop: state += scale * gelu(per-channel masked linear of rms_norm(state)).

    weight_COI is (C, N_out, N_in), already multiplied by the mask. After the hop the
    sensory signal is re-injected with `gate` (0 on hops without a skip gate).
    """
    channels, neurons = bias_CO.shape
    h_BSN = rms_norm(state_BSN)
    # One plain matmul per channel: XLA's CPU backend ran the batched einsum over the
    # channel axis ("bsci,coi->bsco") 1.6 times slower, even with a single channel.
    out_BSN = jnp.concatenate(
        [h_BSN[..., c * neurons : (c + 1) * neurons] @ weight_COI[c].T + bias_CO[c] for c in range(channels)], axis=-1
    )
    state_BSN = state_BSN + scale_N * gelu(out_BSN)
    return state_BSN + gate * injected_BSN


def hop_edges(
    state_BSN: jax.Array,
    injected_BSN: jax.Array,
    weight_CK: jax.Array,
    bias_CO: jax.Array,
    scale_N: jax.Array,
    gate: jax.Array,
    edge_out_K: jax.Array,
    edge_in_K: jax.Array,
) -> jax.Array:
    """`hop` computed over the K mask edges only: out[o] = sum over edges (o, i) of w * h[i].

    weight_CK contains the masked weights at the edges. On a 2-core CPU this is about five
    times slower than the dense matmul (bench/README.md), so `hop` is the default.
    """
    batch, seq_len, width = state_BSN.shape
    channels, neurons = bias_CO.shape
    h_BSCI = rms_norm(state_BSN).reshape(batch, seq_len, channels, neurons)
    products_KBSC = jnp.moveaxis(h_BSCI[..., edge_in_K], -1, 0) * jnp.moveaxis(weight_CK, -1, 0)[:, None, None, :]
    out_OBSC = jax.ops.segment_sum(products_KBSC, edge_out_K, num_segments=neurons, indices_are_sorted=True)
    out_BSCO = jnp.moveaxis(out_OBSC, 0, -1) + bias_CO
    state_BSN = state_BSN + scale_N * gelu(out_BSCO.reshape(batch, seq_len, width))
    return state_BSN + gate * injected_BSN


def count_params(model: nnx.Module) -> int:
    """Count trainable parameters; the masked-off hop weights count, as in the reference."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
