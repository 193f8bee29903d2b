"""The numpy int8_clean_per_row_v1 quantiser against a plain torch version of the scheme.

The torch functions here are written from the scheme's definition with torch.quantile,
torch.round and torch.clamp. Other artifact tests import them to build and read
artifacts the way the PyTorch reference does.
"""

import numpy as np
import pytest
import torch

from jaxconnectome.artifact import quantize
from jaxconnectome.artifact.torch_format import BFLOAT16

CLIP_Q = 99.99984 / 100.0
KEEP_FLOAT_MAX_NUMEL = 65_536


def torch_quantize_tensor(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t32 = t.float()
    if t32.ndim == 2:
        clip = torch.quantile(t32.abs(), CLIP_Q, dim=1)
        clipped = torch.maximum(torch.minimum(t32, clip[:, None]), -clip[:, None])
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
        return q, scale.to(torch.float16)
    clip = float(torch.quantile(t32.abs().flatten(), CLIP_Q).item())
    scale = torch.tensor(clip / 127.0 if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(t32, -clip, clip) / scale), -127, 127).to(torch.int8)
    return q, scale


def torch_quantize_state_dict(state_dict: dict[str, torch.Tensor]) -> dict:
    """Build the reference's int8_clean_per_row_v1 object with torch only."""
    quantized, scales, dtypes, passthrough, orig_dtypes, qmeta = {}, {}, {}, {}, {}, {}
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        if not t.is_floating_point():
            passthrough[name] = t
        elif t.numel() <= KEEP_FLOAT_MAX_NUMEL:
            if t.dtype in (torch.float32, torch.bfloat16):
                orig_dtypes[name] = str(t.dtype).removeprefix("torch.")
                t = t.to(torch.float16)
            passthrough[name] = t
        else:
            q, s = torch_quantize_tensor(t)
            if s.ndim > 0:
                qmeta[name] = {"scheme": "per_row", "axis": 0}
            quantized[name] = q
            scales[name] = s
            dtypes[name] = str(t.dtype).removeprefix("torch.")
    obj = {"__quant_format__": "int8_clean_per_row_v1", "quantized": quantized, "scales": scales,
           "dtypes": dtypes, "passthrough": passthrough}
    if qmeta:
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    return obj


def torch_dequantize(obj: dict) -> dict[str, torch.Tensor]:
    out = {}
    qmeta = obj.get("qmeta", {})
    orig_dtypes = obj.get("passthrough_orig_dtypes", {})
    for name, q in obj["quantized"].items():
        dtype = getattr(torch, obj["dtypes"][name])
        s = obj["scales"][name]
        if qmeta.get(name, {}).get("scheme") == "per_row" or s.ndim > 0:
            s = s.to(torch.float32)
            out[name] = (q.float() * s.view(q.shape[0], *([1] * (q.ndim - 1)))).to(dtype)
        else:
            out[name] = (q.float() * float(s.item())).to(dtype)
    for name, t in obj["passthrough"].items():
        if name in orig_dtypes:
            t = t.to(getattr(torch, orig_dtypes[name]))
        out[name] = t
    return out


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BFLOAT16)
    return t.numpy()


def to_torch(a: np.ndarray) -> torch.Tensor:
    if a.dtype == BFLOAT16:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def raw_bytes(a: np.ndarray) -> np.ndarray:
    """View any array (0-d included) as bytes, so comparisons are bitwise."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def weights_like_training(rng, shape, scale):
    """Heavy-tailed values with a few outliers per row, like trained weights."""
    w = rng.standard_t(3, shape) * scale
    w.reshape(-1)[rng.integers(0, w.size, max(1, w.size // 5000))] *= 40
    return w.astype(np.float32)


SHAPES = [(1024, 768), (300, 300), (88, 768), (768, 123), (512, 300), (300, 512), (70_000,), (3, 200, 150), (7, 9)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_int8_and_scales_equal_torch_scheme(dtype):
    rng = np.random.default_rng(0)
    for index, shape in enumerate(SHAPES):
        scale = [0.02, 0.005, 1.0, 30.0][index % 4]
        t = torch.from_numpy(weights_like_training(rng, shape, scale)).to(dtype)
        q_ref, s_ref = torch_quantize_tensor(t)
        w32 = to_numpy(t).astype(np.float32)
        q, s = (quantize.quantize_per_row if t.ndim == 2 else quantize.quantize_per_tensor)(w32)
        np.testing.assert_array_equal(q, q_ref.numpy(), err_msg=f"int8 values of {shape}")
        assert s.dtype == to_numpy(s_ref).dtype, shape
        np.testing.assert_array_equal(raw_bytes(s), raw_bytes(to_numpy(s_ref)), err_msg=f"scales of {shape}")


def test_rows_of_zeros_and_masks_equal_torch_scheme():
    rng = np.random.default_rng(1)
    w = weights_like_training(rng, (300, 300), 0.02)
    w[:5] = 0.0  # all-zero rows take the floor scale 1/127
    mask = (rng.random((300, 300)) < 0.06).astype(np.float32)
    mask[7] = 0.0
    mask[8, :] = 0.0
    mask[8, 3] = 1.0  # a row with a single kept entry
    for array in (w, mask):
        q_ref, s_ref = torch_quantize_tensor(torch.from_numpy(array))
        q, s = quantize.quantize_per_row(array)
        np.testing.assert_array_equal(q, q_ref.numpy())
        np.testing.assert_array_equal(s, s_ref.numpy())


def test_dequantized_state_dict_equals_torch_scheme():
    rng = np.random.default_rng(2)
    tensors = {
        "big_bf16": torch.from_numpy(weights_like_training(rng, (300, 300), 0.02)).bfloat16(),
        "big_f32": torch.from_numpy(weights_like_training(rng, (1024, 96), 0.005)),
        "flat": torch.from_numpy(weights_like_training(rng, (70_000,), 0.1)),
        "small_bf16": torch.from_numpy(weights_like_training(rng, (300,), 0.1)).bfloat16(),
        "small_f32": torch.from_numpy(weights_like_training(rng, (64, 64), 0.1)),
        "scalar": torch.tensor(0.1),
        "half": torch.from_numpy(weights_like_training(rng, (10,), 1.0)).half(),
        "index": torch.arange(88, dtype=torch.int64),
    }
    expected = torch_dequantize(torch_quantize_state_dict(tensors))
    obj, stats = quantize.quantize_state_dict({k: to_numpy(v) for k, v in tensors.items()})
    actual = quantize.dequantize_state_dict(obj, "test")
    assert sorted(obj["quantized"]) == ["big_bf16", "big_f32", "flat"]
    assert obj["qmeta"] == {"big_bf16": {"scheme": "per_row", "axis": 0}, "big_f32": {"scheme": "per_row", "axis": 0}}
    assert obj["passthrough_orig_dtypes"] == {"small_bf16": "bfloat16", "small_f32": "float32", "scalar": "float32"}
    assert obj["dtypes"] == {"big_bf16": "bfloat16", "big_f32": "float32", "flat": "float32"}
    assert obj["passthrough"]["half"].dtype == np.float16
    assert obj["passthrough"]["index"].dtype == np.int64
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name].dtype == to_numpy(value).dtype, name
        np.testing.assert_array_equal(raw_bytes(actual[name]), raw_bytes(to_numpy(value)), err_msg=name)
    payload = sum(t.numel() * t.element_size() for section in ("quantized", "scales", "passthrough")
                  for t in torch_quantize_state_dict(tensors)[section].values())
    assert stats.payload_bytes == payload


def test_non_finite_weights_are_rejected():
    w = np.zeros((300, 300), np.float32)
    w[3, 4] = np.nan
    with pytest.raises(quantize.ArtifactError, match="hops.0.0.weight.*NaN"):
        quantize.quantize_state_dict({"hops.0.0.weight": w})
