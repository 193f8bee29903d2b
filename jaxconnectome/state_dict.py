"""Map the Flax parameters to the PyTorch reference's state_dict names and shapes.

The reference names per-hop tensors `hops.{i}.{c}.weight|bias|mask`, per-hop scales
`hop_scales.{i}`, and attention layers `cross_attns.{i}.{q,k,v,out}_proj.weight` by the hop
index i after which they run. Here those tensors are stacked on a leading hop or
attention axis, so export slices them apart and import stacks them back.
"""

from __future__ import annotations

import numpy as np

from jaxconnectome.model import ConnectomeJEPA


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
