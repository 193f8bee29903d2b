"""The compact artifact: fewer bytes, the same weights in the forward pass."""

import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxconnectome import connectome
from jaxconnectome.artifact import ArtifactError, compact, exchange, read_artifact_bytes
from jaxconnectome.model import ConnectomeJEPA, ModelConfig
from test_artifact_torch_scheme import raw_bytes

GRAPH = connectome.load_connectome()
TINY = ModelConfig(vocab_size=512, embed_dim=160, num_hops=3, cross_attn_every=2, head_dim=16, num_attn_heads=2,
                   num_channels=2)


def build(mask: np.ndarray, param_dtype: str = "float32") -> ConnectomeJEPA:
    config = ModelConfig(**{**TINY.__dict__, "param_dtype": param_dtype})
    model = ConnectomeJEPA(config, mask, GRAPH.sensory_idx, GRAPH.motor_idx, rngs=nnx.Rngs(params=0))
    rng = np.random.default_rng(1)
    # Trained-like hop weights: heavy tails, so that the row scales vary.
    model.hop_weight[...] = jnp.asarray(0.02 * rng.standard_t(3, model.hop_weight[...].shape), model.hop_weight[...].dtype)
    model.hop_bias[...] = jnp.asarray(0.05 * rng.standard_normal(model.hop_bias[...].shape), model.hop_bias[...].dtype)
    return model


def both_artifacts(model: ConnectomeJEPA, **mask_source):
    state_dict = exchange.export_state_dict(model)
    ptz, stats, obj = exchange.quantized_artifact(state_dict)
    packed, payload = exchange.compact_artifact(state_dict, obj, **mask_source)
    return ptz, stats, packed, payload


def forward_weights(state_dict: dict) -> dict:
    """What the forward pass reads: hop weights times their masks, every other tensor as stored."""
    out = {}
    for name, value in state_dict.items():
        if name.startswith("hops.") and name.endswith(".weight"):
            value = value.astype(np.float32) * state_dict[name.replace(".weight", ".mask")].astype(np.float32)
        out[name] = value
    return out


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_compact_gives_same_forward_weights_and_loss(param_dtype):
    model = build(connectome.hop_mask("connectome", "post_to_pre", 0), param_dtype)
    ptz, stats, packed, payload = both_artifacts(model, topology="connectome", signal_flow="post_to_pre", seed=0)
    reference = read_artifact_bytes(ptz, "final_model.int8.ptz")
    small = read_artifact_bytes(packed, "final_model.compact.zlib")
    assert small.kind == "compact"
    assert small.header["mask_recipe"] == {"topology": "connectome", "signal_flow": "post_to_pre"}
    assert sorted(small.state_dict) == sorted(reference.state_dict)
    expected, actual = forward_weights(reference.state_dict), forward_weights(small.state_dict)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        np.testing.assert_array_equal(actual[name], value, err_msg=name)
        if not name.endswith(".weight") or not name.startswith("hops."):
            np.testing.assert_array_equal(raw_bytes(actual[name]), raw_bytes(value), err_msg=name)
    assert len(packed) < len(ptz)
    assert payload < stats.payload_bytes

    ids = jnp.asarray(np.random.default_rng(2).integers(0, 512, (2, 16)), jnp.int32)
    logits = []
    for artifact in (reference, small):
        restored = exchange.model_from_state_dict(artifact.state_dict, model.config, artifact.path)
        logits.append(np.asarray(nnx.jit(lambda m, x: m(x))(restored, ids)))
    np.testing.assert_array_equal(logits[0], logits[1])


def test_random_sparse_mask_is_rebuilt_from_its_seed():
    mask = connectome.hop_mask("random_sparse", "pre_to_post", 99)
    _, _, packed, _ = both_artifacts(build(mask), topology="random_sparse", signal_flow="pre_to_post", seed=99)
    header = read_artifact_bytes(packed, "sparse.zlib").header
    assert header["mask_recipe"] == {"topology": "random_sparse", "signal_flow": "pre_to_post", "seed": 99}


def test_unknown_mask_is_stored_as_bits():
    mask = connectome.hop_mask("connectome", "post_to_pre", 0)
    mask[5, :40] = 1.0
    ptz, _, packed, _ = both_artifacts(build(mask))
    small = read_artifact_bytes(packed, "bits.zlib")
    assert small.header["mask_recipe"] is None
    np.testing.assert_array_equal(small.state_dict["hops.0.1.mask"] != 0, mask != 0)
    reference = read_artifact_bytes(ptz, "bits.ptz")
    np.testing.assert_array_equal(small.state_dict["hops.2.0.mask"], reference.state_dict["hops.2.0.mask"])


def test_recipe_mismatch_is_detected():
    mask = connectome.hop_mask("connectome", "post_to_pre", 0)
    _, _, packed, _ = both_artifacts(build(mask))
    raw = zlib.decompress(packed)
    tampered = raw.replace(b'"signal_flow":"post_to_pre"', b'"signal_flow":"pre_to_post"')
    assert tampered != raw
    with pytest.raises(ArtifactError, match=r"tampered\.zlib: the rebuilt hop mask .* differs"):
        read_artifact_bytes(zlib.compress(tampered), "tampered.zlib")


def test_truncated_compact_file_is_rejected():
    _, _, packed, _ = both_artifacts(build(connectome.hop_mask("connectome", "post_to_pre", 0)))
    raw = zlib.decompress(packed)
    with pytest.raises(ArtifactError, match=r"cut\.zlib: compact file is truncated"):
        read_artifact_bytes(zlib.compress(raw[:-100]), "cut.zlib")
    assert compact.MAGIC in raw
