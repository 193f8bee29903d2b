"""The challenge's `int8_clean_per_row_v1` quantisation, in numpy, matching torch bit for bit.

The scheme is that of train_gpt.py in github.com/openai/parameter-golf (the challenge's
baseline script). The Connectome-JEPA reference writes the same format, and its logged
payload for the primary configuration, 3,904,086 bytes, is reproduced here. Every
floating tensor with more than 65,536 elements is stored as int8:

- 2-D tensors get one scale per row: clip = the 99.99984th percentile of |w| in the row
  (torch.quantile, linear interpolation), scale = max(clip / 127, 1 / 127) in float32,
  q = clamp(round_half_even(clamp(w, -clip, clip) / scale), -127, 127). The scales are
  stored as float16, and qmeta records {"scheme": "per_row", "axis": 0}.
- Other ranks get one float32 scale, clip / 127 computed in float64 (1.0 when clip is 0).

Smaller floating tensors are stored as float16 ("passthrough", with the original dtype in
"passthrough_orig_dtypes" when it was float32 or bfloat16) and other tensors as they are.
Dequantisation multiplies in float32 and casts back to the recorded dtype.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxconnectome.artifact.errors import ArtifactError
from jaxconnectome.artifact.torch_format import BFLOAT16, is_float_dtype, torch_dtype_name

QUANT_FORMAT = "int8_clean_per_row_v1"
KEEP_FLOAT_MAX_NUMEL = 65_536
CLIP_Q = 99.99984 / 100.0
NUMPY_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": BFLOAT16, "float16": np.dtype(np.float16),
                "float64": np.dtype(np.float64)}


@dataclasses.dataclass(frozen=True)
class QuantStats:
    """Byte counts as the reference logs them.

    `payload_bytes` is the sum of nbytes of every stored tensor (int8 values, scales and
    passthrough tensors), and `baseline_bytes` the same sum over the original state_dict.
    """

    payload_bytes: int
    baseline_bytes: int
    num_tensors: int
    num_quantized: int

    @property
    def ratio(self) -> float:
        return self.baseline_bytes / max(self.payload_bytes, 1)


def fma_float32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Return a * b + c rounded once to float32, as a fused multiply-add does.

    a * b is exact in float64. The float64 sum is rounded to odd (its last bit set when
    the sum was inexact), which makes the final rounding to float32 correct.
    """
    a64, b64, c64 = (np.asarray(x, np.float64) for x in (a, b, c))
    product = a64 * b64
    total = product + c64
    # TwoSum: the exact rounding error of `total`.
    b_virtual = total - product
    error = (product - (total - b_virtual)) + (c64 - b_virtual)
    even = (total.view(np.uint64) & np.uint64(1)) == 0
    fix = (error != 0) & even
    total = np.where(fix, np.nextafter(total, np.where(error > 0, np.inf, -np.inf)), total)
    return total.astype(np.float32)


def torch_quantile_last_axis(values: np.ndarray, q: float) -> np.ndarray:
    """torch.quantile(values, q, dim=-1) for float32 input with linear interpolation.

    torch computes the rank q * (n - 1) in float32, takes the values below and above it
    in the sorted data, and interpolates with its CPU lerp kernel, a fused multiply-add
    from the nearer end.
    """
    values = np.asarray(values, np.float32)
    ordered = np.sort(values, axis=-1)
    n = values.shape[-1]
    rank = np.float32(q) * np.float32(n - 1)
    below_index = int(rank)
    above_index = int(np.ceil(rank))
    weight = np.float32(rank - np.float32(below_index))
    below = ordered[..., below_index]
    above = ordered[..., above_index]
    diff = above - below
    if abs(weight) < 0.5:
        return fma_float32(np.full_like(diff, weight), diff, below)
    return fma_float32(np.full_like(diff, weight - np.float32(1.0)), diff, above)


def quantize_per_row(w32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (int8 q, float16 row scales) for a float32 matrix."""
    if w32.size == 0:
        clip = np.zeros((w32.shape[0],), np.float32)
    else:
        clip = torch_quantile_last_axis(np.abs(w32), CLIP_Q)
    clipped = np.maximum(np.minimum(w32, clip[:, None]), -clip[:, None])
    scale = np.maximum(clip / np.float32(127.0), np.float32(1.0 / 127.0))
    q = np.clip(np.rint(clipped / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float16)


def quantize_per_tensor(w32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (int8 q, float32 scalar scale) for a float32 tensor of any rank but 2."""
    clip = float(torch_quantile_last_axis(np.abs(w32).reshape(-1), CLIP_Q)) if w32.size else 0.0
    scale = np.float32(clip / 127.0 if clip > 0 else 1.0)
    clip32 = np.float32(clip)
    q = np.clip(np.rint(np.clip(w32, -clip32, clip32) / scale), -127, 127).astype(np.int8)
    return q, np.asarray(scale, np.float32)


def quantize_state_dict(state_dict: dict[str, np.ndarray]) -> tuple[dict, QuantStats]:
    """Quantise a state_dict into the reference's artifact object; return it with its byte counts.

    Raises ArtifactError for a floating tensor with NaN or infinite values, which the
    percentile would turn into a meaningless scale.
    """
    quantized, scales, dtypes, passthrough, orig_dtypes, qmeta = {}, {}, {}, {}, {}, {}
    payload = baseline = num_quantized = 0
    for name, tensor in state_dict.items():
        tensor = np.asarray(tensor)
        baseline += tensor.nbytes
        if not is_float_dtype(tensor.dtype):
            passthrough[name] = tensor
            payload += tensor.nbytes
            continue
        w32 = tensor.astype(np.float32)
        if not np.isfinite(w32).all():
            raise ArtifactError(f"cannot quantise {name}: it contains NaN or infinite values")
        if tensor.size <= KEEP_FLOAT_MAX_NUMEL:
            if tensor.dtype in (np.dtype(np.float32), BFLOAT16):
                orig_dtypes[name] = torch_dtype_name(tensor.dtype)
                tensor = tensor.astype(np.float16)
            passthrough[name] = tensor
            payload += tensor.nbytes
            continue
        if tensor.ndim == 2:
            q, scale = quantize_per_row(w32)
            qmeta[name] = {"scheme": "per_row", "axis": 0}
        else:
            q, scale = quantize_per_tensor(w32)
        quantized[name] = q
        scales[name] = scale
        dtypes[name] = torch_dtype_name(tensor.dtype)
        payload += q.nbytes + scale.nbytes
        num_quantized += 1

    obj = {"__quant_format__": QUANT_FORMAT, "quantized": quantized, "scales": scales, "dtypes": dtypes,
           "passthrough": passthrough}
    if qmeta:
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    stats = QuantStats(payload_bytes=payload, baseline_bytes=baseline, num_tensors=len(state_dict),
                       num_quantized=num_quantized)
    return obj, stats


def numpy_dtype(name: str, source: str) -> np.dtype:
    if name not in NUMPY_DTYPES:
        raise ArtifactError(f"{source}: unsupported dtype {name!r}; expected one of {', '.join(NUMPY_DTYPES)}")
    return NUMPY_DTYPES[name]


def dequantize_state_dict(obj: dict, source: str) -> dict[str, np.ndarray]:
    """Rebuild the state_dict from an `int8_clean_per_row_v1` object, as the reference does.

    Tensors come back in the recorded dtypes; `source` names the file in error messages.
    Order: quantised tensors first, then passthrough ones, as the reference builds it.
    """
    check_quant_object(obj, source)
    qmeta = obj.get("qmeta", {})
    orig_dtypes = obj.get("passthrough_orig_dtypes", {})
    out: dict[str, np.ndarray] = {}
    for name, q in obj["quantized"].items():
        if name not in obj["scales"] or name not in obj["dtypes"]:
            raise ArtifactError(f"{source}: quantised tensor {name} has no scale or dtype entry")
        dtype = numpy_dtype(obj["dtypes"][name], source)
        scale = np.asarray(obj["scales"][name])
        q32 = np.asarray(q).astype(np.float32)
        if qmeta.get(name, {}).get("scheme") == "per_row" or scale.ndim > 0:
            if scale.size != q32.shape[0]:
                raise ArtifactError(f"{source}: {name} has {q32.shape[0]} rows but {scale.size} row scales")
            row_scale = scale.astype(np.float32).reshape(q32.shape[0], *([1] * (q32.ndim - 1)))
            out[name] = (q32 * row_scale).astype(dtype)
        else:
            out[name] = (q32 * np.float32(float(scale))).astype(dtype)
    for name, tensor in obj["passthrough"].items():
        tensor = np.asarray(tensor)
        if name in orig_dtypes:
            tensor = tensor.astype(numpy_dtype(orig_dtypes[name], source))
        out[name] = tensor
    return out


def check_quant_object(obj, source: str) -> None:
    """Raise ArtifactError unless `obj` has the shape of an int8_clean_per_row_v1 object."""
    if not isinstance(obj, dict) or "__quant_format__" not in obj:
        raise ArtifactError(f"{source}: no __quant_format__ entry; not a quantised artifact")
    if obj["__quant_format__"] != QUANT_FORMAT:
        raise ArtifactError(f"{source}: unsupported __quant_format__ {obj['__quant_format__']!r}; expected {QUANT_FORMAT!r}")
    for key in ("quantized", "scales", "dtypes", "passthrough"):
        if not isinstance(obj.get(key), dict):
            raise ArtifactError(f"{source}: quantised artifact has no {key!r} dict")
