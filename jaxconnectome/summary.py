"""Start-of-run summary: parameters per component, the wiring, devices, batch and artifact size.

`run_summary_lines` reads only shapes and settings, so it works on a built model and on one
from `nnx.eval_shape` alike.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Sequence

import numpy as np
from flax import nnx

from jaxconnectome import connectome
from jaxconnectome.model import ConnectomeJEPA, count_params
from jaxconnectome.settings import Settings

# Model attributes per component, in the order of the forward pass. A parameter that is
# not listed here is counted under "other", so the counts always sum to count_params.
COMPONENTS = (
    ("embedding", ("tok_emb", "mask_emb")),
    ("sensory projection", ("sensory_proj",)),
    ("hop weights", ("hop_weight",)),
    ("hop biases and scales", ("hop_bias", "hop_scale")),
    ("skip gates", ("skip_gates",)),
    ("attention", ("attn_q", "attn_k", "attn_v", "attn_out")),
    ("motor projection", ("motor_proj",)),
    ("output residual scale", ("output_residual_scale",)),
)
OTHER_COMPONENT = "other"

# The reference's int8 export quantises floating tensors with more than this many elements.
INT8_MIN_ELEMENTS = 65_536
FLOAT16_BYTES = 2
FLOAT32_BYTES = 4
INT64_BYTES = 8

LABEL_WIDTH = 28


def parameter_counts(model: ConnectomeJEPA) -> list[tuple[str, int]]:
    """Return (component, parameter count) in forward-pass order.

    Masked-off hop weights are counted, as in count_params and the reference. An "other"
    entry appears only for parameters that COMPONENTS does not name.
    """
    sizes = {name: math.prod(param.shape) for name, param in nnx.state(model, nnx.Param).items()}
    counts = []
    for component, attributes in COMPONENTS:
        counts.append((component, sum(sizes.pop(name, 0) for name in attributes)))
    if sizes:
        counts.append((OTHER_COMPONENT, sum(sizes.values())))
    return counts


def state_dict_shapes(model: ConnectomeJEPA) -> list[tuple[str, tuple[int, ...], bool]]:
    """Return (name, shape, is_float) for every tensor of the reference's state_dict.

    Names and shapes follow jaxconnectome.state_dict.to_state_dict: per-hop and per-channel
    weights, biases and masks, per-hop scales, attention layers by the hop they follow, and
    the int64 neuron index buffers.
    """
    config = model.config
    num_hops, channels, neurons, _ = model.hop_weight.shape
    shapes = [
        ("mask_emb", tuple(model.mask_emb.shape), True),
        ("output_residual_scale", tuple(model.output_residual_scale.shape), True),
    ]
    if config.num_skip_gates:
        shapes.append(("skip_gates", tuple(model.skip_gates.shape), True))
    shapes += [
        ("sensory_idx", tuple(model.sensory_idx.shape), False),
        ("motor_idx", tuple(model.motor_idx.shape), False),
        ("tok_emb.weight", tuple(model.tok_emb.shape), True),
        ("sensory_proj.weight", tuple(model.sensory_proj.shape), True),
        ("motor_proj.weight", tuple(model.motor_proj.shape), True),
    ]
    for i in range(num_hops):
        for c in range(channels):
            shapes.append((f"hops.{i}.{c}.weight", (neurons, neurons), True))
            shapes.append((f"hops.{i}.{c}.bias", (neurons,), True))
            shapes.append((f"hops.{i}.{c}.mask", tuple(model.hop_mask.shape), True))
    for i in range(num_hops):
        shapes.append((f"hop_scales.{i}", tuple(model.hop_scale.shape[1:]), True))
    for position, hop in enumerate(config.attn_hops):
        for name in ("q", "k", "v", "out"):
            stacked = getattr(model, f"attn_{name}")
            shapes.append((f"cross_attns.{hop}.{name}_proj.weight", tuple(stacked.shape[1:]), True))
    return shapes


def estimate_int8_payload(tensors: Iterable[tuple[Sequence[int], bool]]) -> int:
    """Estimate the bytes of the reference's int8 export before zlib, from (shape, is_float) pairs.

    Floating tensors with more than 65,536 elements take one int8 byte per element plus
    their scales: a float16 per row when 2-D, else one float32. Smaller floating tensors
    pass through as float16, and the index buffers stay int64. The quantisation metadata
    (names, dtypes, the pickle framing) is not counted, just as in the reference's
    `payload:` figure.
    """
    total = 0
    for shape, is_float in tensors:
        elements = math.prod(shape)
        if not is_float:
            total += INT64_BYTES * elements
        elif elements > INT8_MIN_ELEMENTS:
            scale_bytes = FLOAT16_BYTES * shape[0] if len(shape) == 2 else FLOAT32_BYTES
            total += elements + scale_bytes
        else:
            total += FLOAT16_BYTES * elements
    return total


def _row(label: str, text: str) -> str:
    return f"  {label:<{LABEL_WIDTH}}{text}"


def _parameter_lines(model: ConnectomeJEPA, edges: int) -> list[str]:
    total = count_params(model)
    counts = parameter_counts(model)
    width = len(f"{total:,}")
    lines = [f"parameters: {total:,}"]
    for component, count in counts:
        share = 100.0 * count / total if total else 0.0
        text = f"{count:>{width},}  {share:5.1f}%"
        if component == "hop weights" and count:
            num_hops, channels = model.hop_weight.shape[:2]
            inside = num_hops * channels * edges
            text += f"  ({inside:,} inside the mask, masked-off weights counted too)"
        lines.append(_row(component, text))
    return lines


def _connectome_lines(settings: Settings) -> list[str]:
    graph = connectome.load_connectome()
    adjacency = connectome.build_topology(settings.topology, settings.seed)
    classes = collections.Counter(graph.classes)
    edges = int(adjacency.sum())
    density = 100.0 * edges / adjacency.size
    self_loops = int(np.trace(adjacency))
    if settings.signal_flow == "post_to_pre":
        direction = "post_to_pre: a neuron reads its postsynaptic partners (the reference's mask)"
    else:
        direction = "pre_to_post: a neuron reads its presynaptic partners (mask transposed)"
    neuron_text = ", ".join(f"{classes[name]} {name}" for name in ("sensory", "interneuron", "motor"))
    return [
        f"wiring: topology={settings.topology} channels={settings.num_channels}",
        _row("neurons", f"{len(graph.neurons)}: {neuron_text}"),
        _row("edges", f"{edges:,} (density {density:.2f}%, {self_loops} self-loops)"),
        _row("signal direction", direction),
    ]


def _device_lines(devices: Sequence, world_size: int) -> list[str]:
    platforms = sorted({device.platform for device in devices})
    kinds = collections.Counter(device.device_kind for device in devices)
    kind_text = ", ".join(f"{count} x {kind}" for kind, count in sorted(kinds.items()))
    return [
        f"devices: platform={','.join(platforms)} count={len(devices)}",
        _row("kinds", kind_text),
        _row("data-parallel workers", str(world_size)),
    ]


def _batch_lines(settings: Settings, world_size: int, accum: int) -> list[str]:
    seq_len = settings.train_seq_len
    step_tokens = settings.train_batch_tokens
    micro_tokens = step_tokens // accum
    worker_tokens = micro_tokens // world_size
    return [
        f"batch: {step_tokens:,} tokens per optimiser step, sequences of {seq_len:,}",
        _row("accumulation steps", str(accum)),
        _row("per micro-step", f"{micro_tokens:,} tokens = {micro_tokens // seq_len:,} sequences"),
        _row("per worker and micro-step", f"{worker_tokens:,} tokens = {worker_tokens // seq_len:,} sequences"),
    ]


def run_summary_lines(
    settings: Settings, model: ConnectomeJEPA, world_size: int, accum: int, devices: Sequence
) -> list[str]:
    """Describe the run before training: parameters, wiring, devices, batch and artifact size.

    `devices` are the jax devices of the run. `world_size` and `accum` are the data-parallel
    workers and the gradient accumulation steps that the trainer resolved.
    """
    edges = int(connectome.build_topology(settings.topology, settings.seed).sum())
    payload = estimate_int8_payload((shape, is_float) for _, shape, is_float in state_dict_shapes(model))
    return [
        *_parameter_lines(model, edges),
        *_connectome_lines(settings),
        *_device_lines(devices, world_size),
        *_batch_lines(settings, world_size, accum),
        f"artifact estimate: {payload:,} bytes int8 payload before zlib "
        "(int8 tensors over 65,536 elements with float16 row scales, float16 for the rest, int64 indices)",
    ]
