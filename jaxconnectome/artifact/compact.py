"""A smaller artifact with the same dequantised model: only the hop weights the mask keeps.

The reference format stores every hop weight as a dense 300x300 int8 matrix and every hop
mask as another. The forward pass multiplies each weight by the mask, so the masked-off
entries never matter, and the masks are the same for every hop. This format
keeps the int8 values of the kept entries only (5,084 per hop and channel for the
connectome) with the float16 row scales, and rebuilds the masks from their topology.
Every other tensor is stored exactly as in the reference format.

File layout, all zlib-compressed at level 9: MAGIC, a little-endian uint32 header length,
a JSON header (arrays in order with dtype and shape, the state_dict key order, the
quantisation metadata, the mask recipe), then the raw little-endian arrays back to back.

The mask recipe is a topology name, signal flow and (for random_sparse) seed when
`jaxconnectome.connectome.hop_mask` rebuilds the mask, or else the mask's packed bits; its
sha256 is stored either way and checked on load.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

from jaxconnectome import connectome
from jaxconnectome.artifact.errors import ArtifactError
from jaxconnectome.artifact.quantize import QUANT_FORMAT, dequantize_state_dict, quantize_per_row
from jaxconnectome.artifact.torch_format import BFLOAT16

MAGIC = b"jaxconnectome-compact-v1\n"
FORMAT = "jaxconnectome_compact_v1"
ARRAY_DTYPES = {
    "float64": np.dtype(np.float64), "float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
    "bfloat16": BFLOAT16, "int64": np.dtype(np.int64), "int32": np.dtype(np.int32), "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8), "bool": np.dtype(np.bool_),
}
DTYPE_NAMES = {dtype: name for name, dtype in ARRAY_DTYPES.items()}
HOP_WEIGHT_Q = "hop_weights/q"
HOP_WEIGHT_SCALES = "hop_weights/scales"
MASK_BITS = "mask/packed_bits"


def mask_sha256(pattern: np.ndarray) -> str:
    return connectome.adjacency_sha256(pattern)


def mask_recipe(pattern: np.ndarray, topology: str | None = None, signal_flow: str | None = None,
                seed: int | None = None) -> dict | None:
    """Return how `hop_mask` rebuilds the bool mask `pattern`, or None when no recipe does.

    The run's own (topology, signal_flow, seed) is tried first, then the connectome in
    both signal flows and the dense mask.
    """
    candidates = []
    if topology is not None:
        candidates.append((topology, signal_flow or "post_to_pre", seed))
    candidates += [("connectome", flow, None) for flow in connectome.SIGNAL_FLOWS] + [("dense", "post_to_pre", None)]
    for topo, flow, topo_seed in candidates:
        if topo == "random_sparse" and topo_seed is None:
            continue
        rebuilt = connectome.hop_mask(topo, flow, topo_seed or 0) != 0
        if np.array_equal(rebuilt, pattern):
            recipe = {"topology": topo, "signal_flow": flow}
            if topo == "random_sparse":
                recipe["seed"] = int(topo_seed)
            return recipe
    return None


def hop_names(num_hops: int, num_channels: int, kind: str) -> list[tuple[int, int, str]]:
    return [(i, c, f"hops.{i}.{c}.{kind}") for i in range(num_hops) for c in range(num_channels)]


def count_hops(names) -> tuple[int, int]:
    """Return (hops, channels) from names hops.{i}.{c}.weight."""
    pairs = [tuple(int(x) for x in name.split(".")[1:3]) for name in names
             if name.startswith("hops.") and name.endswith(".weight")]
    if not pairs:
        raise ArtifactError("the state_dict has no hops.{i}.{c}.weight tensors to store compactly")
    return max(i for i, _ in pairs) + 1, max(c for _, c in pairs) + 1


def encode_compact(quant_obj: dict, keys: list[str], pattern: np.ndarray, recipe: dict | None) -> tuple[bytes, int]:
    """Return (compact file bytes, payload bytes) for a quantised object and the masks' bool `pattern`.

    `keys` is the state_dict key order; the payload is the sum of nbytes of the stored
    arrays, counted as the reference counts its own. Raises ArtifactError when the result would not
    dequantise to exactly what the reference-format object gives (checked by decoding).
    """
    num_hops, num_channels = count_hops(keys)
    quantized, scales, dtypes = quant_obj["quantized"], quant_obj["scales"], quant_obj["dtypes"]
    weight_names = [name for _, _, name in hop_names(num_hops, num_channels, "weight")]
    mask_names = [name for _, _, name in hop_names(num_hops, num_channels, "mask")]
    for name in weight_names + mask_names:
        if name not in quantized or quant_obj.get("qmeta", {}).get(name, {}).get("scheme") != "per_row":
            raise ArtifactError(f"compact format needs {name} quantised per row; it is missing or stored otherwise")
    skipped = set(weight_names) | set(mask_names)

    arrays: list[tuple[str, np.ndarray]] = [
        (HOP_WEIGHT_Q, np.stack([np.asarray(quantized[name])[pattern] for name in weight_names])),
        (HOP_WEIGHT_SCALES, np.stack([np.asarray(scales[name]) for name in weight_names])),
    ]
    if recipe is None:
        arrays.append((MASK_BITS, np.packbits(pattern.astype(np.uint8).reshape(-1))))
    for section in ("quantized", "scales", "passthrough"):
        for name, array in quant_obj[section].items():
            if name not in skipped:
                arrays.append((f"{section}/{name}", np.asarray(array)))

    header = {
        "format": FORMAT,
        "quant_format": QUANT_FORMAT,
        "keys": list(keys),
        "num_hops": num_hops,
        "num_channels": num_channels,
        "hop_weight_dtype": dtypes[weight_names[0]],
        "mask_dtype": dtypes[mask_names[0]],
        "mask_recipe": recipe,
        "mask_sha256": mask_sha256(pattern),
        "dtypes": {k: v for k, v in dtypes.items() if k not in skipped},
        "qmeta": {k: v for k, v in quant_obj.get("qmeta", {}).items() if k not in skipped},
        "passthrough_orig_dtypes": quant_obj.get("passthrough_orig_dtypes", {}),
        "arrays": [[name, DTYPE_NAMES[array.dtype], list(array.shape)] for name, array in arrays],
    }
    if len({dtypes[name] for name in weight_names}) != 1 or len({dtypes[name] for name in mask_names}) != 1:
        raise ArtifactError("compact format needs one dtype for all hop weights and one for all hop masks")
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    blob = b"".join(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes() for _, array in arrays)
    data = zlib.compress(MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + blob, 9)

    check_compact_equivalent(data, quant_obj, pattern, weight_names)
    return data, sum(array.nbytes for _, array in arrays)


def check_compact_equivalent(data: bytes, quant_obj: dict, pattern: np.ndarray, weight_names: list[str]) -> None:
    """Raise ArtifactError unless the compact bytes dequantise to the forward pass's weights.

    Hop weights are compared after masking (the masked-off entries are not stored); every
    other tensor must be bitwise equal.
    """
    expected = dequantize_state_dict(quant_obj, "reference-format object")
    actual = decode_compact(zlib.decompress(data), "compact encoding")[0]
    for name, value in expected.items():
        got = actual[name]
        if name in weight_names:
            value = np.where(pattern, value.astype(np.float32), 0)
            got = np.where(pattern, got.astype(np.float32), 0)
        if got.dtype != value.dtype or got.shape != value.shape or not np.array_equal(got, value):
            raise ArtifactError(f"compact encoding changes {name}; export the reference format instead")


def rebuild_pattern(header: dict, arrays: dict, source: str) -> np.ndarray:
    recipe = header["mask_recipe"]
    if recipe is None:
        bits = np.unpackbits(arrays[MASK_BITS])[: connectome.NUM_NEURONS**2]
        pattern = bits.reshape(connectome.NUM_NEURONS, connectome.NUM_NEURONS).astype(bool)
    else:
        seed = recipe.get("seed", 0)
        pattern = connectome.hop_mask(recipe["topology"], recipe["signal_flow"], seed) != 0
    if mask_sha256(pattern) != header["mask_sha256"]:
        raise ArtifactError(f"{source}: the rebuilt hop mask ({recipe}) differs from the exported one")
    return pattern


def read_arrays(header: dict, blob: bytes, source: str) -> dict[str, np.ndarray]:
    arrays = {}
    offset = 0
    for name, dtype_name, shape in header["arrays"]:
        dtype = ARRAY_DTYPES[dtype_name].newbyteorder("<")
        count = int(np.prod(shape, dtype=np.int64))
        end = offset + count * dtype.itemsize
        if end > len(blob):
            raise ArtifactError(f"{source}: compact file is truncated at array {name}")
        arrays[name] = np.frombuffer(blob, dtype, count, offset).astype(ARRAY_DTYPES[dtype_name]).reshape(shape)
        offset = end
    if offset != len(blob):
        raise ArtifactError(f"{source}: compact file has {len(blob) - offset} bytes after its last array")
    return arrays


def decode_compact(data: bytes, source: str) -> tuple[dict[str, np.ndarray], dict]:
    """Return (dequantised state_dict in the original key order, header) from decompressed bytes."""
    if not data.startswith(MAGIC):
        raise ArtifactError(f"{source}: not a compact artifact (magic bytes missing)")
    try:
        (header_len,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        header = json.loads(data[start : start + header_len].decode("utf-8"))
        if header.get("format") != FORMAT or header.get("quant_format") != QUANT_FORMAT:
            raise ArtifactError(f"{source}: unsupported compact format {header.get('format')!r}")
        arrays = read_arrays(header, data[start + header_len :], source)
        quant_obj = rebuild_quant_object(header, arrays, source)
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        if isinstance(error, ArtifactError):
            raise
        raise ArtifactError(f"{source}: invalid compact artifact: {error!r}") from None
    state_dict = dequantize_state_dict(quant_obj, source)
    return {name: state_dict[name] for name in header["keys"]}, header


def rebuild_quant_object(header: dict, arrays: dict, source: str) -> dict:
    """Rebuild the reference-format quantised object: dense hop weights and the hop masks."""
    obj = {"__quant_format__": QUANT_FORMAT, "quantized": {}, "scales": {}, "passthrough": {},
           "dtypes": dict(header["dtypes"]), "qmeta": dict(header["qmeta"]),
           "passthrough_orig_dtypes": dict(header["passthrough_orig_dtypes"])}
    for name, array in arrays.items():
        section, _, key = name.partition("/")
        if section in ("quantized", "scales", "passthrough"):
            obj[section][key] = array

    pattern = rebuild_pattern(header, arrays, source)
    num_hops, num_channels = header["num_hops"], header["num_channels"]
    kept_q, row_scales = arrays[HOP_WEIGHT_Q], arrays[HOP_WEIGHT_SCALES]
    if kept_q.shape[-1] != pattern.sum():
        raise ArtifactError(f"{source}: {kept_q.shape[-1]} kept hop weights per hop, but the mask keeps {pattern.sum()}")
    # The masks are quantised as the reference quantises them, from the 0/1 mask in their dtype.
    mask_values = pattern.astype(np.float32).astype(ARRAY_DTYPES[header["mask_dtype"]]).astype(np.float32)
    mask_q, mask_scale = quantize_per_row(mask_values)
    for index, (i, c, name) in enumerate(hop_names(num_hops, num_channels, "weight")):
        dense = np.zeros(pattern.shape, np.int8)
        dense[pattern] = kept_q[index]
        obj["quantized"][name] = dense
        obj["scales"][name] = row_scales[index]
        obj["dtypes"][name] = header["hop_weight_dtype"]
        obj["qmeta"][name] = {"scheme": "per_row", "axis": 0}
        mask_name = f"hops.{i}.{c}.mask"
        obj["quantized"][mask_name] = mask_q
        obj["scales"][mask_name] = mask_scale
        obj["dtypes"][mask_name] = header["mask_dtype"]
        obj["qmeta"][mask_name] = {"scheme": "per_row", "axis": 0}
    return obj
