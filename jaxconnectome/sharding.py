"""Device mesh and shardings: data parallelism plus optional FSDP-style parameter sharding.

The mesh covers every device of every process with two axes: "data" and "fsdp". Every
device is one data-parallel worker, as every GPU is in the reference, so the worker axis
W of a batch is split over both mesh axes. Parameters and optimiser state are replicated
over "data" and, where the rules below name an axis, split over "fsdp".

All shardings come from one table, LOGICAL_RULES, which maps logical axis names to mesh
axes; PARAM_AXES gives the logical names of each parameter's dimensions.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"

# Logical axis name -> mesh axis (or axes). The first dimension of a tensor whose rule
# names "fsdp" and whose size divides evenly is split; the others stay whole.
LOGICAL_RULES: dict[str, Any] = {
    "workers": (DATA_AXIS, FSDP_AXIS),
    "vocab": FSDP_AXIS,
    "qkv": FSDP_AXIS,
    "neurons": FSDP_AXIS,
    "embed": FSDP_AXIS,
    "sensory": None,
    "motor": None,
    "hops": None,
    "attn_layers": None,
    "channels": None,
    "state": None,
    "gates": None,
    "micro_steps": None,
    "batch": None,
    "sequence": None,
}

# Logical names of every parameter's dimensions, in the model's layout.
PARAM_AXES: dict[str, tuple[str, ...]] = {
    "tok_emb": ("vocab", "embed"),
    "mask_emb": ("embed",),
    "sensory_proj": ("sensory", "embed"),
    "motor_proj": ("embed", "motor"),
    "output_residual_scale": (),
    "hop_weight": ("hops", "channels", "neurons", "neurons"),
    "hop_bias": ("hops", "channels", "neurons"),
    "hop_scale": ("hops", "state"),
    "skip_gates": ("gates",),
    "attn_q": ("attn_layers", "qkv", "state"),
    "attn_k": ("attn_layers", "qkv", "state"),
    "attn_v": ("attn_layers", "qkv", "state"),
    "attn_out": ("attn_layers", "state", "qkv"),
}

# Batches of token ids are (A, W, B, S): micro-steps, workers, sequences, positions.
BATCH_AXES = ("micro_steps", "workers", "batch", "sequence")
# Validation batches are (W, B, S).
EVAL_BATCH_AXES = ("workers", "batch", "sequence")


def make_mesh(fsdp: int = 1, devices: list | None = None) -> Mesh:
    """Build a (data, fsdp) mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"FSDP={fsdp} must be a positive divisor of the device count {len(devices)}")
    shape = (len(devices) // fsdp, fsdp)
    return jax.make_mesh(shape, (DATA_AXIS, FSDP_AXIS), (AxisType.Auto, AxisType.Auto), devices=devices)


def axis_names(axes) -> tuple[str, ...]:
    """Return a rule's mesh axes as a tuple: None maps to (), "fsdp" to ("fsdp",)."""
    if axes is None:
        return ()
    if isinstance(axes, tuple):
        return axes
    return (axes,)


def mesh_axis_size(mesh: Mesh, axes) -> int:
    return int(np.prod([mesh.shape[name] for name in axis_names(axes)]))


def logical_spec(mesh: Mesh, logical_axes: tuple[str, ...], shape: tuple[int, ...]) -> PartitionSpec:
    """Map logical names to a PartitionSpec, splitting the first dimension that divides evenly.

    A mesh axis is used at most once per tensor, and a dimension that does not divide by
    the mesh axis size (300 neurons over 8 devices, say) stays whole.
    """
    spec: list[Any] = []
    used: set[str] = set()
    for name, size in zip(logical_axes, shape):
        axes = LOGICAL_RULES[name]
        names = axis_names(axes)
        parts = mesh_axis_size(mesh, axes)
        if names and not set(names) & used and parts > 1 and size % parts == 0:
            spec.append(axes)
            used.update(names)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def param_sharding(mesh: Mesh, name: str, shape: tuple[int, ...]) -> NamedSharding:
    return NamedSharding(mesh, logical_spec(mesh, PARAM_AXES[name], shape))


def _param_name(path) -> str | None:
    for entry in path:
        key = getattr(entry, "key", getattr(entry, "name", None))
        if isinstance(key, str) and key in PARAM_AXES:
            return key
    return None


def state_shardings(mesh: Mesh, abstract_state, params_abstract) -> Any:
    """Return shardings for a pytree whose leaves mirror parameters (params, Adam moments).

    A leaf is sharded like the parameter whose name is on its path when the shapes match;
    everything else (step counters, injected hyperparameters) is replicated.
    """
    shapes = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params_abstract):
        name = _param_name(path)
        if name is not None:
            shapes[name] = leaf.shape

    def sharding_for(path, leaf):
        name = _param_name(path)
        if name is not None and tuple(leaf.shape) == tuple(shapes.get(name, ())):
            return param_sharding(mesh, name, leaf.shape)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(sharding_for, abstract_state)


def batch_sharding(mesh: Mesh, axes: tuple[str, ...] = BATCH_AXES) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(*(LOGICAL_RULES[name] for name in axes)))


def local_workers(mesh: Mesh) -> list[int]:
    """Return the worker indices (positions in the mesh's device order) of this process's devices.

    Worker w of the global batch runs on mesh.devices.flat[w]; a process loads only the
    data slices of its own workers, which must be contiguous in that order.
    """
    process = jax.process_index()
    workers = [w for w, device in enumerate(mesh.devices.flat) if device.process_index == process]
    if workers != list(range(workers[0], workers[0] + len(workers))):
        raise ValueError(f"process {process} owns non-contiguous workers {workers}; the mesh order is unsupported")
    return workers


def global_batch(mesh: Mesh, local: np.ndarray, axes: tuple[str, ...] = BATCH_AXES, worker_dim: int = 1):
    """Assemble a global array from this process's slice along the worker dimension."""
    num_workers = mesh.devices.size
    global_shape = list(local.shape)
    global_shape[worker_dim] = num_workers
    sharding = batch_sharding(mesh, axes)
    return jax.make_array_from_process_local_data(sharding, local, tuple(global_shape))
