"""Export to and import from the PyTorch reference's files, checked with torch and the plain twin."""

import dataclasses
import io
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import torch_reference as ref
from jaxconnectome import connectome
from jaxconnectome.artifact import ArtifactError, exchange, import_model, infer_model_config, torch_format
from jaxconnectome.artifact.quantize import quantize_state_dict
from jaxconnectome.model import ConnectomeJEPA, ModelConfig, count_params
from jaxconnectome.state_dict import load_state_dict, state_dict_shapes, to_state_dict
from shared_data import shared_path
from test_artifact_torch_scheme import raw_bytes, to_numpy, to_torch, torch_dequantize, torch_quantize_state_dict

GRAPH = connectome.load_connectome()
MASK = connectome.hop_mask("connectome", "post_to_pre", seed=0)
# tok_emb (512 x 160) is above the 65,536-element threshold, so it is quantised like the
# primary's. Two attention positions, a leftover hop and both skip gates are present.
TINY = ModelConfig(vocab_size=512, embed_dim=160, num_hops=5, cross_attn_every=2, head_dim=16, num_attn_heads=2)
TINY_CHANNELS = ModelConfig(vocab_size=256, embed_dim=64, num_hops=2, cross_attn_every=1, head_dim=16,
                            num_attn_heads=1, skip_every=0, num_channels=2)


def build(config: ModelConfig, seed: int = 0) -> ConnectomeJEPA:
    model = ConnectomeJEPA(config, MASK, GRAPH.sensory_idx, GRAPH.motor_idx, rngs=nnx.Rngs(params=seed))
    rng = np.random.default_rng(seed + 1)
    for name in ("attn_out", "hop_bias", "mask_emb"):  # zero at init; random so that every path matters
        param = getattr(model, name)
        param[...] = jnp.asarray(0.05 * rng.standard_normal(param[...].shape), param[...].dtype)
    return model


def torch_twin(config: ModelConfig) -> ref.ConnectomeJEPARef:
    names = ("vocab_size", "embed_dim", "num_hops", "cross_attn_every", "head_dim", "num_attn_heads", "skip_every",
             "num_channels")
    return ref.build_reference_model({name: getattr(config, name) for name in names}, torch.from_numpy(MASK),
                                     torch.from_numpy(GRAPH.sensory_idx), torch.from_numpy(GRAPH.motor_idx), seed=0)


def jax_logits(model: ConnectomeJEPA, ids: np.ndarray) -> np.ndarray:
    return np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))


def torch_logits(model: ref.ConnectomeJEPARef, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.logits(model.encode(torch.from_numpy(ids).long())).numpy()


def random_ids(vocab: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (2, 24)).astype(np.int32)


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------- layout


@pytest.fixture(scope="module")
def layouts():
    import json

    return json.loads(shared_path("reference", "torch_state_dict_layout.json").read_text())


def layout_config(short: dict) -> ModelConfig:
    return ModelConfig(embed_dim=short["embed"], num_attn_heads=short["heads"], num_hops=short["hops"],
                       cross_attn_every=short["every"], skip_every=short["skip"], num_channels=short.get("channels", 1),
                       param_dtype="bfloat16")


def zero_model(config: ModelConfig) -> ConnectomeJEPA:
    """The model with every array zero: its layout without the cost of random initialisation."""
    abstract = nnx.eval_shape(lambda: ConnectomeJEPA(config, MASK, GRAPH.sensory_idx, GRAPH.motor_idx,
                                                     rngs=nnx.Rngs(params=0)))
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), state))


@pytest.mark.parametrize("name", ["primary", "small", "two_hop", "channels2"])
def test_artifact_has_reference_layout(layouts, name):
    layout = layouts[name]
    model = zero_model(layout_config(layout["config"]))
    state_dict = exchange.export_state_dict(model)
    obj, stats = quantize_state_dict(state_dict)
    ptz = torch_format.dumps(obj)
    if name == "primary":  # compress one, as the artifact is written; the others skip the slow zlib level 9
        ptz = zlib.decompress(exchange.quantized_artifact(state_dict)[0])

    obj = torch.load(io.BytesIO(ptz), weights_only=True)
    assert obj["__quant_format__"] == "int8_clean_per_row_v1"
    dequantized = torch_dequantize(obj)
    expected = {entry[0]: (tuple(entry[1]), entry[2]) for entry in layout["state_dict"]}
    actual = {k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in dequantized.items()}
    assert actual == expected

    plain = torch.load(io.BytesIO(exchange.state_dict_bytes(state_dict)), weights_only=True)
    assert [[k, list(t.shape), str(t.dtype).removeprefix("torch.")] for k, t in plain.items()] == layout["state_dict"]
    assert count_params(model) == layout["params"]
    if name == "primary":
        assert stats.payload_bytes == 3_904_086  # the reference's logged payload
        assert f"{stats.ratio:.2f}" == "1.99"


@pytest.mark.parametrize("name", ["primary", "small", "two_hop", "channels2"])
def test_config_inferred_from_layout_shapes(layouts, name):
    layout = layouts[name]
    dtypes = {"bfloat16": torch_format.BFLOAT16, "int64": np.int64}
    shapes_only = {k: np.zeros(shape, dtypes[dtype]) for k, shape, dtype in layout["state_dict"]}
    assert infer_model_config(shapes_only) == layout_config(layout["config"])


# ---------------------------------------------------------------------------- logits


@pytest.mark.parametrize("config", [TINY, TINY_CHANNELS], ids=["tiny", "channels2_no_skips"])
def test_torch_twin_loads_artifact_and_matches_jax(tmp_path, config):
    model = build(config, seed=3)
    ptz, _, _ = exchange.quantized_artifact(exchange.export_state_dict(model))
    imported, artifact = import_model(write(tmp_path, "final_model.int8.ptz", ptz), dataclasses.replace(config))
    assert artifact.kind == "int8_zlib"
    assert imported.config == config

    dequantized = torch_dequantize(torch.load(io.BytesIO(zlib.decompress(ptz)), weights_only=True))
    twin = torch_twin(config)
    twin.load_state_dict(dequantized, strict=True)
    for name, tensor in dequantized.items():
        np.testing.assert_array_equal(raw_bytes(artifact.state_dict[name]), raw_bytes(to_numpy(tensor)), err_msg=name)
    ids = random_ids(config.vocab_size)
    np.testing.assert_allclose(jax_logits(imported, ids), torch_logits(twin, ids), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def torch_trained_like():
    """A twin with every tensor random (zero-initialised ones perturbed), as after training."""
    twin = torch_twin(TINY)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(7)
        for name, param in twin.named_parameters():
            if name.endswith("out_proj.weight") or name.endswith(".bias") or name == "mask_emb":
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    return twin


def test_torch_saved_state_dict_imports(tmp_path, torch_trained_like):
    buffer = io.BytesIO()
    torch.save(torch_trained_like.state_dict(), buffer)
    imported, artifact = import_model(write(tmp_path, "final_model.pt", buffer.getvalue()), ModelConfig(head_dim=16))
    assert artifact.kind == "state_dict"
    assert imported.config == TINY
    ids = random_ids(TINY.vocab_size)
    np.testing.assert_allclose(jax_logits(imported, ids), torch_logits(torch_trained_like, ids),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_torch_made_int8_artifact_imports(tmp_path, torch_trained_like, dtype):
    state_dict = {k: t.to(dtype) if t.is_floating_point() else t for k, t in torch_trained_like.state_dict().items()}
    obj = torch_quantize_state_dict(state_dict)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path = write(tmp_path, "final_model.int8.ptz", zlib.compress(buffer.getvalue(), 9))
    imported, artifact = import_model(path, ModelConfig(head_dim=16))
    dequantized = torch_dequantize(obj)
    assert imported.config == dataclasses.replace(TINY, param_dtype="float32" if dtype == torch.float32 else "bfloat16")
    exported = to_state_dict(imported)
    for name, tensor in dequantized.items():
        np.testing.assert_array_equal(raw_bytes(exported[name]), raw_bytes(to_numpy(tensor)), err_msg=name)
    if dtype == torch.float32:
        twin = torch_twin(TINY)
        twin.load_state_dict(dequantized, strict=True)
        ids = random_ids(TINY.vocab_size)
        np.testing.assert_allclose(jax_logits(imported, ids), torch_logits(twin, ids), atol=1e-4, rtol=0)


def test_final_model_pt_matches_torch_save(torch_trained_like):
    model = build(TINY)
    state_dict = exchange.export_state_dict(model)
    twin = torch_twin(TINY)
    twin.load_state_dict({k: to_torch(v) for k, v in state_dict.items()}, strict=True)
    buffer = io.BytesIO()
    torch.save(twin.state_dict(), buffer)
    expected = buffer.getvalue()
    actual = exchange.state_dict_bytes(state_dict)
    id_header = expected.index(b"archive/.data/serialization_id") - 30
    assert len(actual) == len(expected)
    assert actual[:id_header] == expected[:id_header]


# ---------------------------------------------------------------------------- round trip


def test_dequantized_within_one_step():
    model = build(TINY)
    state_dict = exchange.export_state_dict(model)
    _, _, obj = exchange.quantized_artifact(state_dict)
    restored = exchange.read_artifact_bytes(exchange.quantized_artifact(state_dict)[0], "final_model.int8.ptz").state_dict
    assert set(obj["quantized"]) == {"tok_emb.weight"} | {f"hops.{i}.0.{k}" for i in range(5) for k in ("weight", "mask")}
    for name, original in state_dict.items():
        if name in obj["quantized"]:
            step = obj["scales"][name].astype(np.float32)[:, None]
            assert np.all(np.abs(restored[name] - original) <= step), name
        elif original.dtype == np.float32:
            np.testing.assert_array_equal(restored[name], original.astype(np.float16).astype(np.float32), err_msg=name)
        else:
            np.testing.assert_array_equal(restored[name], original, err_msg=name)


def test_same_model_gives_same_bytes():
    first = exchange.export_state_dict(build(TINY, seed=4))
    second = exchange.export_state_dict(build(TINY, seed=4))
    assert exchange.quantized_artifact(first)[0] == exchange.quantized_artifact(second)[0]
    assert exchange.state_dict_bytes(first) == exchange.state_dict_bytes(second)


def test_load_state_dict_inverts_to_state_dict():
    for config in (TINY, TINY_CHANNELS):
        source = build(config, seed=1)
        target = build(config, seed=2)
        state_dict = to_state_dict(source)
        assert {k: v.shape for k, v in state_dict.items()} == state_dict_shapes(config)
        load_state_dict(target, state_dict)
        for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(source)), nnx.to_flat_state(nnx.state(target))):
            np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(path))


# ---------------------------------------------------------------------------- inference and errors


def test_skip_every_inference():
    assert exchange.infer_skip_every(6, 2, None, "f") == 2
    assert exchange.infer_skip_every(6, 0, None, "f") == 0
    # One gate with 6 hops fits skip_every 3 to 7. The smallest is taken unless SKIP_EVERY sets another.
    assert exchange.infer_skip_every(6, 1, None, "f") == 3
    assert exchange.infer_skip_every(6, 1, 4, "f") == 4
    assert exchange.infer_skip_every(2, 1, None, "f") == 2
    with pytest.raises(ArtifactError, match="f: skip_every=2 gives a different number"):
        exchange.infer_skip_every(6, 1, 2, "f")
    with pytest.raises(ArtifactError, match="no skip_gates tensor"):
        exchange.infer_skip_every(6, 0, 2, "f")


def test_cross_attn_every_inference():
    assert exchange.infer_cross_attn_every(6, [1, 3, 5], None, "f") == 2
    assert exchange.infer_cross_attn_every(16, [7, 15], None, "f") == 8
    assert exchange.infer_cross_attn_every(3, [], None, "f") == 4
    with pytest.raises(ArtifactError, match=r"f: attention layers after hops \[1, 2\] do not follow"):
        exchange.infer_cross_attn_every(4, [1, 2], None, "f")
    with pytest.raises(ArtifactError, match="cross_attn_every=3 puts attention after hops"):
        exchange.infer_cross_attn_every(6, [1, 3, 5], 3, "f")


@pytest.fixture(scope="module")
def tiny_state_dict():
    return exchange.export_state_dict(build(TINY))


def test_import_rejects_non_zlib(tmp_path):
    path = write(tmp_path, "random.ptz", np.random.default_rng(0).bytes(1000))
    with pytest.raises(ArtifactError, match=r"random\.ptz: .*zlib"):
        import_model(path)


def test_import_rejects_garbage_zip(tmp_path):
    path = write(tmp_path, "garbage.ptz", zlib.compress(b"PK\x03\x04" + bytes(200)))
    with pytest.raises(ArtifactError, match=r"garbage\.ptz: not a torch zip file"):
        import_model(path)


def test_import_rejects_wrong_quant_format(tmp_path, tiny_state_dict):
    _, _, obj = exchange.quantized_artifact(tiny_state_dict)
    obj["__quant_format__"] = "int4_grouped_v2"
    path = write(tmp_path, "wrong.ptz", zlib.compress(torch_format.dumps(obj)))
    with pytest.raises(ArtifactError, match=r"wrong\.ptz: unsupported __quant_format__ 'int4_grouped_v2'"):
        import_model(path)


def test_import_rejects_missing_tensor(tmp_path, tiny_state_dict):
    partial = {k: v for k, v in tiny_state_dict.items() if k != "motor_proj.weight"}
    path = write(tmp_path, "partial.pt", torch_format.dumps(partial))
    with pytest.raises(ArtifactError, match=r"partial\.pt: missing tensors: motor_proj\.weight"):
        import_model(path, ModelConfig(head_dim=16))


def test_import_rejects_wrong_shape(tmp_path, tiny_state_dict):
    bad = dict(tiny_state_dict) | {"hops.2.0.bias": np.zeros(299, np.float32)}
    path = write(tmp_path, "shape.pt", torch_format.dumps(bad))
    with pytest.raises(ArtifactError, match=r"shape\.pt: wrong shape for hops\.2\.0\.bias: \(299,\), expected \(300,\)"):
        import_model(path, ModelConfig(head_dim=16))


def test_import_rejects_wrong_head_dim(tmp_path, tiny_state_dict):
    path = write(tmp_path, "heads.pt", torch_format.dumps(tiny_state_dict))
    with pytest.raises(ArtifactError, match=r"heads\.pt: .*q_proj\.weight has 32 rows, not a multiple of head_dim 128"):
        import_model(path)


def test_import_rejects_masks_that_differ(tmp_path, tiny_state_dict):
    mask = tiny_state_dict["hops.3.0.mask"].copy()
    mask[0, 0] = 1.0 - mask[0, 0]
    path = write(tmp_path, "masks.pt", torch_format.dumps(dict(tiny_state_dict) | {"hops.3.0.mask": mask}))
    with pytest.raises(ArtifactError, match=r"masks\.pt: hops\.3\.0\.mask differs from hops\.0\.0\.mask"):
        import_model(path, ModelConfig(head_dim=16))


def test_import_rejects_unreadable_file(tmp_path):
    with pytest.raises(ArtifactError, match=r"absent\.ptz: cannot read"):
        import_model(tmp_path / "absent.ptz")


def test_import_rejects_non_state_dict(tmp_path):
    path = write(tmp_path, "list.pt", torch_format.dumps([np.zeros(3, np.float32)]))
    with pytest.raises(ArtifactError, match=r"list\.pt: expected a state_dict"):
        import_model(path)
    assert zipfile.is_zipfile(path)
