"""Map the Flax parameters to the PyTorch reference's state_dict names and shapes.

The reference names per-hop tensors `hops.{i}.{c}.weight|bias|mask`, per-hop scales
`hop_scales.{i}`, and attention layers `cross_attns.{i}.{q,k,v,out}_proj.weight` by the hop
index i after which they run. Here those tensors are stacked on a leading hop or
attention axis, so export slices them apart and import stacks them back.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxconnectome.connectome import NUM_NEURONS
from jaxconnectome.model import DTYPES, ConnectomeJEPA, ModelConfig, channel_slots


class StateDictError(ValueError):
    """A state_dict whose names or shapes do not fit the model; the message lists them."""


def to_state_dict(model: ConnectomeJEPA) -> dict[str, np.ndarray]:
    """Return the reference's state_dict as numpy arrays, in its key order.

    Floating tensors keep the model's parameter dtype (bfloat16 arrays use ml_dtypes);
    the hop masks take it too, as the reference casts its buffers with the model. Index
    buffers are int64.
    """
    config = model.config
    dtype = model.tok_emb[...].dtype

    def array(x) -> np.ndarray:
        return np.asarray(x).astype(dtype)

    out: dict[str, np.ndarray] = {
        "mask_emb": array(model.mask_emb[...]),
        "output_residual_scale": array(model.output_residual_scale[...]),
    }
    if config.num_skip_gates:
        out["skip_gates"] = array(model.skip_gates[...])
    out["sensory_idx"] = np.asarray(model.sensory_idx[...], np.int64)
    out["motor_idx"] = np.asarray(model.motor_idx[...], np.int64)
    out["tok_emb.weight"] = array(model.tok_emb[...])
    out["sensory_proj.weight"] = array(model.sensory_proj[...])
    out["motor_proj.weight"] = array(model.motor_proj[...])

    weight = np.asarray(model.hop_weight[...])
    bias = np.asarray(model.hop_bias[...])
    mask = np.asarray(model.hop_mask[...])
    for i in range(config.num_hops):
        for c in range(config.num_channels):
            out[f"hops.{i}.{c}.weight"] = array(weight[i, c])
            out[f"hops.{i}.{c}.bias"] = array(bias[i, c])
            out[f"hops.{i}.{c}.mask"] = array(mask)
    scales = np.asarray(model.hop_scale[...])
    for i in range(config.num_hops):
        out[f"hop_scales.{i}"] = array(scales[i])

    attention = {name: np.asarray(getattr(model, f"attn_{name}")[...]) for name in ("q", "k", "v", "out")}
    for position, hop in enumerate(config.attn_hops):
        for name, stacked in attention.items():
            out[f"cross_attns.{hop}.{name}_proj.weight"] = array(stacked[position])
    return out


def state_dict_shapes(config: ModelConfig, num_sensory: int = 88, num_motor: int = 123) -> dict[str, tuple[int, ...]]:
    """Return the reference's state_dict names and shapes for `config`, in its key order."""
    e, v, c, n = config.embed_dim, config.vocab_size, config.num_channels, NUM_NEURONS
    qkv = config.num_attn_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"mask_emb": (e,), "output_residual_scale": ()}
    if config.num_skip_gates:
        shapes["skip_gates"] = (config.num_skip_gates,)
    shapes |= {
        "sensory_idx": (num_sensory,),
        "motor_idx": (num_motor,),
        "tok_emb.weight": (v, e),
        "sensory_proj.weight": (num_sensory * c, e),
        "motor_proj.weight": (e, num_motor * c),
    }
    for i in range(config.num_hops):
        for ch in range(c):
            shapes |= {f"hops.{i}.{ch}.weight": (n, n), f"hops.{i}.{ch}.bias": (n,), f"hops.{i}.{ch}.mask": (n, n)}
    for i in range(config.num_hops):
        shapes[f"hop_scales.{i}"] = (c * n,)
    for hop in config.attn_hops:
        for name in ("q", "k", "v"):
            shapes[f"cross_attns.{hop}.{name}_proj.weight"] = (qkv, c * n)
        shapes[f"cross_attns.{hop}.out_proj.weight"] = (c * n, qkv)
    return shapes


def check_state_dict(state_dict: dict, config: ModelConfig, num_sensory: int = 88, num_motor: int = 123) -> None:
    """Raise StateDictError unless `state_dict` has exactly the names and shapes of `config`."""
    expected = state_dict_shapes(config, num_sensory, num_motor)
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    if missing:
        raise StateDictError(f"missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        raise StateDictError(f"unexpected tensors: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    for name, shape in expected.items():
        actual = tuple(np.shape(state_dict[name]))
        if actual != shape:
            raise StateDictError(f"wrong shape for {name}: {actual}, expected {shape}")


def shared_hop_mask(state_dict: dict, config: ModelConfig) -> np.ndarray:
    """Return the hop mask as float32, after checking every hop and channel stores the same one."""
    first = np.asarray(state_dict["hops.0.0.mask"])
    for i in range(config.num_hops):
        for c in range(config.num_channels):
            name = f"hops.{i}.{c}.mask"
            if not np.array_equal(np.asarray(state_dict[name]), first):
                raise StateDictError(f"{name} differs from hops.0.0.mask; this model needs one mask for every hop and channel")
    return first.astype(np.float32)


def load_state_dict(model: ConnectomeJEPA, state_dict: dict) -> None:
    """Copy a reference state_dict into `model`, in place: the inverse of to_state_dict.

    Names and shapes must match the model's config exactly. Floating tensors are cast to
    the model's parameter dtype. The hop mask and the sensory and motor indices replace
    the model's buffers, so the masks' stored values (after int8 round trip, 127 times
    the float16 scale 1/127 rather than 1) are what the forward pass multiplies by.
    """
    config = model.config
    check_state_dict(state_dict, config, len(model.sensory_idx[...]), len(model.motor_idx[...]))
    dtype = DTYPES[config.param_dtype]

    def param(name: str) -> jnp.ndarray:
        return jnp.asarray(np.asarray(state_dict[name]).astype(np.float32), dtype)

    def stacked(names: list[list[str]]) -> jnp.ndarray:
        array = np.stack([np.stack([np.asarray(state_dict[n]).astype(np.float32) for n in row]) for row in names])
        return jnp.asarray(array, dtype)

    hops, channels = range(config.num_hops), range(config.num_channels)
    model.tok_emb[...] = param("tok_emb.weight")
    model.mask_emb[...] = param("mask_emb")
    model.sensory_proj[...] = param("sensory_proj.weight")
    model.motor_proj[...] = param("motor_proj.weight")
    model.output_residual_scale[...] = param("output_residual_scale")
    model.hop_weight[...] = stacked([[f"hops.{i}.{c}.weight" for c in channels] for i in hops])
    model.hop_bias[...] = stacked([[f"hops.{i}.{c}.bias" for c in channels] for i in hops])
    model.hop_scale[...] = stacked([[f"hop_scales.{i}"] for i in hops])[:, 0]
    if config.num_skip_gates:
        model.skip_gates[...] = param("skip_gates")
    if config.attn_hops:
        for name in ("q", "k", "v", "out"):
            getattr(model, f"attn_{name}")[...] = stacked([[f"cross_attns.{hop}.{name}_proj.weight"] for hop in config.attn_hops])[:, 0]

    model.hop_mask[...] = jnp.asarray(shared_hop_mask(state_dict, config))
    sensory_idx = np.asarray(state_dict["sensory_idx"], np.int64)
    motor_idx = np.asarray(state_dict["motor_idx"], np.int64)
    for name, idx in (("sensory_idx", sensory_idx), ("motor_idx", motor_idx)):
        if idx.size and (idx.min() < 0 or idx.max() >= NUM_NEURONS):
            raise StateDictError(f"{name} must index neurons 0..{NUM_NEURONS - 1}, got {idx.min()}..{idx.max()}")
    model.sensory_idx[...] = jnp.asarray(sensory_idx, jnp.int32)
    model.motor_idx[...] = jnp.asarray(motor_idx, jnp.int32)
    model.sensory_slots[...] = jnp.asarray(channel_slots(sensory_idx, config.num_channels), jnp.int32)
    model.motor_slots[...] = jnp.asarray(channel_slots(motor_idx, config.num_channels), jnp.int32)
