"""Move models between Flax and the PyTorch reference's files, without torch.

Export: a ConnectomeJEPA becomes the reference's state_dict (names, shapes, parameter
dtype, hop masks and int64 indices), then `final_model.pt` bytes (a plain state_dict) or
`final_model.int8.ptz` bytes (int8_clean_per_row_v1, zlib level 9).

Import: a `.ptz`, `.pt` or compact file becomes a state_dict. The ModelConfig is inferred
from its tensor shapes, and a ConnectomeJEPA is built whose parameters equal it. What the
shapes cannot tell (head_dim, logit_softcap, rope_base, compute dtype) comes from a base
config, and so does skip_every or cross_attn_every where the shapes are ambiguous.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import zlib
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from jaxconnectome.artifact import compact, torch_format
from jaxconnectome.artifact.errors import ArtifactError
from jaxconnectome.artifact.quantize import QuantStats, check_quant_object, dequantize_state_dict, quantize_state_dict
from jaxconnectome.model import ConnectomeJEPA, ModelConfig
from jaxconnectome.state_dict import StateDictError, check_state_dict, load_state_dict, shared_hop_mask, to_state_dict

ZLIB_LEVEL = 9
HOP_KEY = re.compile(r"hops\.(\d+)\.(\d+)\.(weight|bias|mask)")
ATTENTION_KEY = re.compile(r"cross_attns\.(\d+)\.(q|k|v|out)_proj\.weight")


@dataclasses.dataclass(frozen=True)
class LoadedArtifact:
    """A model file read back: its kind and the (dequantised) reference state_dict."""

    path: str
    kind: str  # "int8_zlib" (reference artifact), "state_dict" (plain .pt) or "compact"
    state_dict: dict[str, np.ndarray]
    header: dict  # the compact file's header; empty for the other kinds


# ---------------------------------------------------------------------------- export


def _to_host(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def module_metadata(names) -> collections.OrderedDict:
    """Return the `_metadata` torch's state_dict() carries: {module prefix: {"version": 1}}.

    Prefixes are those the names imply, in first-seen order, which is the order of
    nn.Module.named_modules for the reference's module tree. Every module there has
    nn.Module's default _version of 1.
    """
    metadata = collections.OrderedDict()
    version = "version"
    for name in names:
        parts = name.split(".")[:-1]
        for depth in range(len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if prefix not in metadata:
                metadata[prefix] = {version: 1}
    return metadata


def export_state_dict(model: ConnectomeJEPA) -> collections.OrderedDict:
    """Return the model as the reference's state_dict of numpy arrays, with torch's `_metadata`.

    Arrays sharded over several processes are gathered first, so every process must call it.
    """
    graphdef, state = nnx.split(model)
    host_model = nnx.merge(graphdef, jax.tree.map(_to_host, state))
    state_dict = collections.OrderedDict(to_state_dict(host_model))
    state_dict._metadata = module_metadata(state_dict)
    return state_dict


def state_dict_bytes(state_dict: dict) -> bytes:
    """Return `final_model.pt`: the state_dict as `torch.save` writes it."""
    return torch_format.dumps(state_dict)


def quantized_artifact(state_dict: dict) -> tuple[bytes, QuantStats, dict]:
    """Return (`final_model.int8.ptz` bytes, byte counts, the quantised object)."""
    obj, stats = quantize_state_dict(state_dict)
    return zlib.compress(torch_format.dumps(obj), ZLIB_LEVEL), stats, obj


def compact_artifact(state_dict: dict, quant_obj: dict, topology: str | None = None,
                     signal_flow: str | None = None, seed: int | None = None) -> tuple[bytes, int]:
    """Return (compact artifact bytes, payload bytes) of a quantised state_dict.

    The run's topology, signal flow and seed let a random_sparse mask be rebuilt from its
    seed; see jaxconnectome.artifact.compact.
    """
    pattern = np.asarray(state_dict["hops.0.0.mask"]).astype(np.float32) != 0
    recipe = compact.mask_recipe(pattern, topology, signal_flow, seed)
    return compact.encode_compact(quant_obj, list(state_dict), pattern, recipe)


# ---------------------------------------------------------------------------- import


def _check_tensor_dict(obj, source: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict) or not obj:
        raise ArtifactError(f"{source}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise ArtifactError(f"{source}: expected a state_dict of tensors, but entry {key!r} is {type(value).__name__}")
    return dict(obj)


def _from_torch_object(obj, source: str) -> tuple[str, dict[str, np.ndarray]]:
    if isinstance(obj, dict) and "__quant_format__" in obj:
        check_quant_object(obj, source)
        return "int8_zlib", dequantize_state_dict(obj, source)
    return "state_dict", _check_tensor_dict(obj, source)


def read_artifact_bytes(data: bytes, source: str) -> LoadedArtifact:
    """Read a model file's bytes: a plain torch file, or zlib over a torch file or a compact file."""
    if torch_format.is_torch_zip(data):
        kind, state_dict = _from_torch_object(torch_format.loads(data, source), source)
        return LoadedArtifact(source, kind, state_dict, {})
    try:
        raw = zlib.decompress(data)
    except zlib.error as error:
        raise ArtifactError(f"{source}: neither a torch zip file (.pt) nor zlib-compressed (.ptz): {error}") from None
    if raw.startswith(compact.MAGIC):
        state_dict, header = compact.decode_compact(raw, source)
        return LoadedArtifact(source, "compact", state_dict, header)
    if not torch_format.is_torch_zip(raw):
        raise ArtifactError(f"{source}: zlib data is not a torch zip file or a compact artifact")
    kind, state_dict = _from_torch_object(torch_format.loads(raw, source), source)
    return LoadedArtifact(source, kind, state_dict, {})


def read_artifact(path: str | Path) -> LoadedArtifact:
    """Read `final_model.int8.ptz`, a `.pt` state_dict or a compact artifact from disk."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ArtifactError(f"{path}: cannot read: {error.strerror or error}") from None
    return read_artifact_bytes(data, str(path))


def infer_skip_every(num_hops: int, num_gates: int, requested: int | None, source: str) -> int:
    """Return the skip_every that gives `num_gates` gates with `num_hops` hops.

    With no gates it is 0. Several values can give the same count (with 6 hops, one gate
    comes from 3, 4, 5, 6 or 7), and they re-inject after different hops. The shapes
    cannot tell these apart, so the reference's default 2 is taken if it fits, else the
    smallest. `requested` (SKIP_EVERY, when set) overrides the choice if consistent.
    """
    if num_gates == 0:
        if requested is not None and requested != 0:
            raise ArtifactError(f"{source}: no skip_gates tensor, so skip_every must be 0, not {requested}")
        return 0
    # skip_every above num_hops + 1 behaves as num_hops + 1: no hop re-injects.
    candidates = [s for s in range(1, num_hops + 2) if max((num_hops - 1) // s, 1) == num_gates]
    if requested is not None:
        if requested not in candidates and not (requested > num_hops and num_hops + 1 in candidates):
            raise ArtifactError(f"{source}: skip_every={requested} gives a different number of skip gates than {num_gates}")
        return requested
    if not candidates:
        raise ArtifactError(f"{source}: skip_gates has {num_gates} entries, which no skip_every gives with {num_hops} hops")
    return 2 if 2 in candidates else candidates[0]


def infer_cross_attn_every(num_hops: int, positions: list[int], requested: int | None, source: str) -> int:
    """Return the cross_attn_every that places attention after exactly the hops `positions`."""

    def placed(every: int) -> list[int]:
        return [i for i in range(num_hops) if (i + 1) % every == 0]

    if requested is not None:
        if requested < 1:
            raise ArtifactError(f"{source}: cross_attn_every must be positive, got {requested}")
        if placed(requested) != positions:
            raise ArtifactError(f"{source}: cross_attn_every={requested} puts attention after hops {placed(requested)}, "
                                f"but the file has it after hops {positions}")
        return requested
    if not positions:
        return num_hops + 1  # no attention layer at all
    every = positions[0] + 1
    if placed(every) != positions:
        raise ArtifactError(f"{source}: attention layers after hops {positions} do not follow one cross_attn_every "
                            f"(every {every} would place them after hops {placed(every)})")
    return every


def infer_model_config(state_dict: dict, base: ModelConfig = ModelConfig(), source: str = "state_dict",
                       skip_every: int | None = None, cross_attn_every: int | None = None) -> ModelConfig:
    """Infer the ModelConfig from tensor shapes; `base` supplies what shapes cannot tell.

    vocab and embed come from tok_emb.weight, hops and channels from the hops.{i}.{c}.*
    names, attention positions from the cross_attns.{i}.* names, heads from the q_proj
    rows divided by base.head_dim, and skip_every from the skip_gates length (see
    infer_skip_every). param_dtype is bfloat16 for a bfloat16 tok_emb, else float32.
    """
    if "tok_emb.weight" not in state_dict or np.ndim(state_dict["tok_emb.weight"]) != 2:
        raise ArtifactError(f"{source}: missing tensor tok_emb.weight (a 2-D embedding); not a Connectome-JEPA state_dict")
    vocab_size, embed_dim = np.shape(state_dict["tok_emb.weight"])
    hop_keys = [tuple(int(g) for g in m.groups()[:2]) for m in map(HOP_KEY.fullmatch, state_dict) if m]
    if not hop_keys:
        raise ArtifactError(f"{source}: missing tensors hops.{{i}}.{{c}}.weight; not a Connectome-JEPA state_dict")
    num_hops = max(i for i, _ in hop_keys) + 1
    num_channels = max(c for _, c in hop_keys) + 1
    positions = sorted({int(m.group(1)) for m in map(ATTENTION_KEY.fullmatch, state_dict) if m})
    every = infer_cross_attn_every(num_hops, positions, cross_attn_every, source)

    num_heads = base.num_attn_heads
    if positions:
        q_name = f"cross_attns.{positions[0]}.q_proj.weight"
        if q_name not in state_dict:
            raise ArtifactError(f"{source}: missing tensor {q_name}")
        rows = np.shape(state_dict[q_name])[0]
        if rows % base.head_dim:
            raise ArtifactError(f"{source}: {q_name} has {rows} rows, not a multiple of head_dim {base.head_dim}; "
                                "set HEAD_DIM to the model's head size")
        num_heads = rows // base.head_dim

    num_gates = int(np.size(state_dict["skip_gates"])) if "skip_gates" in state_dict else 0
    skip = infer_skip_every(num_hops, num_gates, skip_every, source)
    dtype = "bfloat16" if np.asarray(state_dict["tok_emb.weight"]).dtype == torch_format.BFLOAT16 else "float32"
    return dataclasses.replace(
        base, vocab_size=int(vocab_size), embed_dim=int(embed_dim), num_hops=num_hops, num_channels=num_channels,
        cross_attn_every=every, num_attn_heads=num_heads, skip_every=skip, param_dtype=dtype,
    )


def model_from_state_dict(state_dict: dict, config: ModelConfig, source: str = "state_dict") -> ConnectomeJEPA:
    """Build a ConnectomeJEPA whose parameters and buffers equal `state_dict`."""
    num_sensory = int(np.size(state_dict["sensory_idx"])) if "sensory_idx" in state_dict else 88
    num_motor = int(np.size(state_dict["motor_idx"])) if "motor_idx" in state_dict else 123
    try:
        check_state_dict(state_dict, config, num_sensory, num_motor)
        mask = shared_hop_mask(state_dict, config)
        model = ConnectomeJEPA(config, mask, np.asarray(state_dict["sensory_idx"]), np.asarray(state_dict["motor_idx"]),
                               rngs=nnx.Rngs(params=0))
        load_state_dict(model, state_dict)
    except StateDictError as error:
        raise ArtifactError(f"{source}: {error}") from None
    return model


def import_model(path: str | Path, base: ModelConfig = ModelConfig(), skip_every: int | None = None,
                 cross_attn_every: int | None = None) -> tuple[ConnectomeJEPA, LoadedArtifact]:
    """Read a model file and return the Flax model with what was read."""
    artifact = read_artifact(path)
    config = infer_model_config(artifact.state_dict, base, artifact.path, skip_every, cross_attn_every)
    return model_from_state_dict(artifact.state_dict, config, artifact.path), artifact
