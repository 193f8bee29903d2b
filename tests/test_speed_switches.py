"""Every speed switch against the plain path: same losses and gradients in float32."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxconnectome import connectome
from jaxconnectome.layers import attention_core
from jaxconnectome.model import ConnectomeJEPA, ModelConfig
from jaxconnectome.settings import Settings, SettingsError, resolve_settings
from jaxconnectome.train_step import LossConfig, worker_losses

GRAPH = connectome.load_connectome()
MASK = connectome.hop_mask("connectome", "post_to_pre", seed=0)
# An attention layer after hop 1 with a skip gate before it, then a leftover hop: every
# structural feature, with little to compile.
PLAIN = ModelConfig(vocab_size=128, embed_dim=64, num_hops=3, cross_attn_every=2, head_dim=16, num_attn_heads=2)
SEQ_LEN = 40  # not a multiple of the attention block size below, so the last block is short
LOSSES = LossConfig()
RTOL = 1e-5


def build(config: ModelConfig) -> ConnectomeJEPA:
    model = ConnectomeJEPA(config, MASK, GRAPH.sensory_idx, GRAPH.motor_idx, rngs=nnx.Rngs(params=0))
    # Give the zero-initialised tensors values so that every path carries a gradient; a
    # zero mask_emb would also make the masked pass's rms_norm gradient 1/sqrt(eps).
    rng = np.random.default_rng(1)
    for name in ("attn_out", "hop_bias", "mask_emb"):
        param = getattr(model, name)
        param[...] = jnp.asarray(0.05 * rng.standard_normal(param[...].shape), jnp.float32)
    return model


def losses_and_grads(config: ModelConfig):
    """Return the worker losses and the gradient of the total, on fixed tokens and key."""
    graphdef, params, buffers = nnx.split(build(config), nnx.Param, ...)
    rng = np.random.default_rng(2)
    inputs = jnp.asarray(rng.integers(0, config.vocab_size, (2, SEQ_LEN)), jnp.int32)
    targets = jnp.asarray(rng.integers(0, config.vocab_size, (2, SEQ_LEN)), jnp.int32)

    def total(p):
        metrics = worker_losses(nnx.merge(graphdef, p, buffers), inputs, targets, jax.random.PRNGKey(3), LOSSES)
        return metrics["total"], metrics

    grads, metrics = jax.jit(jax.grad(total, has_aux=True))(params)
    return jax.tree.map(np.asarray, metrics), jax.tree.map(np.asarray, grads)


@pytest.fixture(scope="module")
def plain_result():
    return losses_and_grads(PLAIN)


def assert_same_losses_and_grads(result, expected):
    metrics, grads = result
    expected_metrics, expected_grads = expected
    for name in ("total", "ce", "jepa", "sigreg"):
        np.testing.assert_allclose(metrics[name], expected_metrics[name], rtol=RTOL, err_msg=name)
    flat = nnx.to_flat_state(grads)
    expected_flat = dict(nnx.to_flat_state(expected_grads))
    for path, grad in flat:
        reference = np.asarray(expected_flat[path])
        # Relative to the leaf's largest entry, so entries that are zero up to rounding pass.
        scale = max(float(np.abs(reference).max()), 1e-30)
        error = float(np.abs(np.asarray(grad) - reference).max())
        assert error <= RTOL * scale, f"gradient of {'.'.join(map(str, path))}: max error {error:.3g}, max {scale:.3g}"


def test_plain_result_has_every_loss(plain_result):
    metrics, _ = plain_result
    assert metrics["jepa"] > 0
    assert metrics["sigreg"] > 0


@pytest.mark.parametrize(
    "switch",
    [
        {"attention_impl": "blocked", "attention_block_size": 16},
        {"attention_impl": "blocked", "attention_block_size": 16, "remat_attention": True},
        {"attention_impl": "flash", "attention_block_size": 16},
        {"hop_form": "edges"},
        {"fuse_encoder_passes": True},
        {"scan_hops": False},
        {"share_masked_prefix": True},
        {"share_masked_prefix": True, "scan_hops": False, "attention_impl": "flash", "attention_block_size": 16},
    ],
    ids=[
        "blocked_attention", "blocked_attention_remat", "flash_attention", "edge_hops", "fused_encoder_passes",
        "unrolled_hops", "shared_masked_prefix", "cpu_defaults",
    ],
)
def test_switch_equals_plain_path(switch, plain_result):
    assert_same_losses_and_grads(losses_and_grads(dataclasses.replace(PLAIN, **switch)), plain_result)


@pytest.mark.parametrize("impl", ["blocked", "flash"])
@pytest.mark.parametrize("seq_len, block_size", [(64, 16), (50, 16), (16, 16), (8, 16)])
def test_blocked_attention_core_equals_full(impl, seq_len, block_size):
    rng = np.random.default_rng(seq_len)
    q, k, v = (jnp.asarray(rng.standard_normal((2, seq_len, 3, 8)), jnp.float32) for _ in range(3))
    cotangent = jnp.asarray(rng.standard_normal((2, seq_len, 3, 8)), jnp.float32)

    def loss(impl, q, k, v):
        return jnp.sum(attention_core(q, k, v, impl, block_size) * cotangent)

    for impl_grads, full_grads in zip(
        jax.grad(lambda *a: loss(impl, *a), argnums=(0, 1, 2))(q, k, v),
        jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(q, k, v),
    ):
        np.testing.assert_allclose(impl_grads, full_grads, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(attention_core(q, k, v, impl, block_size), attention_core(q, k, v, "xla"),
                               rtol=RTOL, atol=1e-6)


def test_settings_pick_fast_paths_per_platform():
    settings = Settings()
    cpu = settings.model_config("cpu")
    assert cpu.attention_impl == "flash"
    assert not cpu.scan_hops
    assert cpu.remat_attention
    assert not cpu.fuse_encoder_passes
    assert cpu.share_masked_prefix
    assert cpu.hop_form == "dense"
    gpu = settings.model_config("gpu")
    assert gpu.attention_impl == "xla"
    assert gpu.scan_hops
    overrides = ["attention_impl=xla", "fuse_encoder_passes=true", "hop_loop=scan"]
    plain = resolve_settings(environ={}, overrides=overrides).model_config("cpu")
    assert plain.attention_impl == "xla"
    assert plain.scan_hops
    assert plain.fuse_encoder_passes


@pytest.mark.parametrize("override", ["attention_impl=splash", "hop_form=sparse", "attention_block_size=0"])
def test_settings_reject_unknown_switch_values(override):
    with pytest.raises(SettingsError):
        resolve_settings(environ={}, overrides=[override])


def test_model_config_rejects_unknown_attention():
    with pytest.raises(ValueError, match="attention_impl"):
        ModelConfig(attention_impl="splash")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention runs only on a GPU")
def test_cudnn_attention_equals_xla_in_bfloat16():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 128, 2, 64)), jnp.bfloat16) for _ in range(3))
    expected = attention_core(q, k, v, "xla").astype(jnp.float32)
    np.testing.assert_allclose(attention_core(q, k, v, "cudnn").astype(jnp.float32), expected, atol=2e-2)


@pytest.mark.parametrize(
    "layout",
    [
        {"num_hops": 5, "cross_attn_every": 2},
        {"num_hops": 2, "cross_attn_every": 3},
        {"num_hops": 2, "cross_attn_every": 1, "num_channels": 2},
        {"num_hops": 4, "cross_attn_every": 2, "scan_hops": False},
    ],
    ids=["two_groups_and_leftover", "no_attention", "two_channels", "unrolled"],
)
def test_encode_pair_equals_two_encodes(layout):
    model = build(dataclasses.replace(PLAIN, **layout))
    rng = np.random.default_rng(4)
    ids = jnp.asarray(rng.integers(0, PLAIN.vocab_size, (2, SEQ_LEN)), jnp.int32)
    mask = jnp.asarray(rng.random((2, SEQ_LEN)) < 0.3)
    rep, rep_masked = jax.jit(lambda ids, mask: model.encode_pair(ids, mask))(ids, mask)
    np.testing.assert_allclose(rep, model.encode(ids), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(rep_masked, model.encode(ids, mask), rtol=RTOL, atol=1e-6)
    # The masked pass must differ from the unmasked one, or the check above proves nothing.
    assert float(jnp.max(jnp.abs(rep_masked - rep))) > 0.1
