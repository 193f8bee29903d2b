"""The Flax model against the reference's definition and an independent PyTorch version."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import torch_reference as ref
from jaxconnectome import connectome
from jaxconnectome.model import ConnectomeJEPA, ModelConfig, count_params
from jaxconnectome.state_dict import to_state_dict

GRAPH = connectome.load_connectome()
MASK = connectome.hop_mask("connectome", "post_to_pre", seed=0)
# Small enough to compile in seconds, with every structural feature present: two
# attention positions, a leftover hop after the last attention, and both skip gates.
TINY = ModelConfig(vocab_size=128, embed_dim=64, num_hops=5, cross_attn_every=2, head_dim=16, num_attn_heads=2)


def build(config: ModelConfig, seed: int = 0, mask=MASK) -> ConnectomeJEPA:
    return ConnectomeJEPA(config, mask, GRAPH.sensory_idx, GRAPH.motor_idx, rngs=nnx.Rngs(params=seed))


def random_ids(shape, vocab=128, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def perturb_zero_init(model: ConnectomeJEPA, seed: int = 1) -> None:
    """Give the zero-initialised tensors random values so that every path matters."""
    rng = np.random.default_rng(seed)
    for name in ("attn_out", "hop_bias", "mask_emb"):
        param = getattr(model, name)
        param[...] = jnp.asarray(0.05 * rng.standard_normal(param[...].shape), param[...].dtype)


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({}, 3_336_051),
        ({"embed_dim": 512, "num_attn_heads": 1}, 1_637_235),
        ({"embed_dim": 512, "num_attn_heads": 1, "num_hops": 2, "skip_every": 0}, 967_633),
        ({"embed_dim": 512, "num_attn_heads": 1, "num_hops": 16, "cross_attn_every": 8, "skip_every": 0}, 2_389_633),
        ({"num_hops": 2, "cross_attn_every": 1, "skip_every": 0}, 2_359_249),
    ],
)
def test_parameter_counts(settings, expected):
    model = nnx.eval_shape(lambda: build(ModelConfig(**settings)))
    assert count_params(model) == expected


def test_skip_gate_positions():
    config = ModelConfig()
    assert config.num_skip_gates == 2
    assert [config.skip_gate_index(i) for i in range(6)] == [-1, 0, -1, 1, -1, -1]
    assert config.attn_hops == (1, 3, 5)
    assert ModelConfig(skip_every=0).num_skip_gates == 0


def test_initialisation():
    model = build(ModelConfig())
    assert abs(float(jnp.std(model.tok_emb[...])) - 0.005) < 2e-4
    assert abs(float(jnp.std(model.hop_weight[...])) - 0.02) < 2e-4
    assert float(jnp.abs(model.sensory_proj[...]).max()) <= 1 / math.sqrt(768)
    assert float(jnp.abs(model.motor_proj[...]).max()) <= 1 / math.sqrt(123)
    assert float(jnp.abs(model.attn_q[...]).max()) <= 1 / math.sqrt(300)
    assert not jnp.any(model.mask_emb[...])
    assert not jnp.any(model.attn_out[...])
    assert not jnp.any(model.hop_bias[...])
    np.testing.assert_allclose(model.hop_scale[...], 1 / math.sqrt(6), rtol=1e-6)
    np.testing.assert_allclose(model.skip_gates[...], 0.1, rtol=1e-6)
    assert float(model.output_residual_scale[...]) == pytest.approx(0.1)
    assert model.tok_emb[...].dtype == jnp.float32


def test_bfloat16_weights():
    model = nnx.eval_shape(lambda: build(ModelConfig(param_dtype="bfloat16")))
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}


@pytest.fixture(scope="module")
def tiny_model():
    model = build(TINY)
    perturb_zero_init(model)
    return model


@pytest.fixture(scope="module")
def tiny_logits(tiny_model):
    return nnx.jit(lambda m, x: m(x))


def test_output_shape_and_softcap(tiny_model, tiny_logits):
    ids = random_ids((2, 32))
    logits = tiny_logits(tiny_model, ids)
    assert logits.shape == (2, 32, 128)
    assert logits.dtype == jnp.float32
    assert float(jnp.abs(logits).max()) < 30.0
    # A huge embedding drives logits into the cap: they approach but never pass 30.
    big = build(TINY)
    big.tok_emb[...] = big.tok_emb[...] * 4000.0
    capped = tiny_logits(big, ids)
    assert 29.0 < float(jnp.abs(capped).max()) <= 30.0


def test_causality(tiny_model, tiny_logits):
    ids = random_ids((1, 32))
    changed = ids.at[0, 20].set((ids[0, 20] + 1) % 128)
    before, after = tiny_logits(tiny_model, ids), tiny_logits(tiny_model, changed)
    np.testing.assert_array_equal(before[:, :20], after[:, :20])
    assert float(jnp.abs(before[:, 20:] - after[:, 20:]).max()) > 1e-4


def test_masked_hop_weights_get_zero_gradient(tiny_model):
    graphdef, params, rest = nnx.split(tiny_model, nnx.Param, ...)
    ids = random_ids((2, 16))

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(ids)
        return jnp.mean(logits**2)

    grad = jax.grad(loss)(params)["hop_weight"][...]
    off = np.broadcast_to(MASK == 0, grad.shape)
    assert float(jnp.abs(grad[off]).max()) == 0.0
    assert float(jnp.abs(grad[~off]).max()) > 0.0


def test_scan_equals_unrolled_loop():
    scanned = build(TINY, seed=2)
    unrolled = build(dataclasses.replace(TINY, scan_hops=False), seed=2)
    perturb_zero_init(scanned, seed=3)
    perturb_zero_init(unrolled, seed=3)
    ids = random_ids((2, 16))
    np.testing.assert_allclose(scanned(ids), unrolled(ids), rtol=1e-6, atol=1e-6)


def torch_model_from(model: ConnectomeJEPA, config: ModelConfig) -> ref.ConnectomeJEPARef:
    torch_model = ref.build_reference_model(
        {
            "vocab_size": config.vocab_size,
            "embed_dim": config.embed_dim,
            "num_hops": config.num_hops,
            "cross_attn_every": config.cross_attn_every,
            "head_dim": config.head_dim,
            "num_attn_heads": config.num_attn_heads,
            "skip_every": config.skip_every,
            "num_channels": config.num_channels,
        },
        torch.from_numpy(MASK),
        torch.from_numpy(GRAPH.sensory_idx),
        torch.from_numpy(GRAPH.motor_idx),
        seed=0,
    )
    state = {name: torch.from_numpy(np.array(value)) for name, value in to_state_dict(model).items()}
    torch_model.load_state_dict(state, strict=True)
    return torch_model


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        ModelConfig(vocab_size=128, embed_dim=48, num_hops=4, cross_attn_every=3, head_dim=8, num_attn_heads=3,
                    skip_every=3, num_channels=2),
        ModelConfig(vocab_size=128, embed_dim=32, num_hops=2, cross_attn_every=1, head_dim=16, num_attn_heads=1,
                    skip_every=0),
    ],
    ids=["tiny", "channels2", "no_skips"],
)
def test_logits_equal_torch_reference(config):
    model = build(config, seed=3)
    perturb_zero_init(model, seed=4)
    ids = random_ids((2, 24), vocab=config.vocab_size, seed=5)
    jepa_mask = np.random.default_rng(6).random((2, 24)) < 0.3
    torch_model = torch_model_from(model, config)
    torch_ids = torch.from_numpy(np.array(ids)).long()
    with torch.no_grad():
        expected = torch_model.logits(torch_model.encode(torch_ids)).numpy()
        expected_masked = torch_model.encode(torch_ids, torch.from_numpy(jepa_mask)).numpy()
    np.testing.assert_allclose(model(ids), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(model.encode(ids, jnp.asarray(jepa_mask)), expected_masked, atol=1e-4, rtol=0)


def test_primary_logits_equal_torch_reference():
    config = ModelConfig()
    model = build(config, seed=11)
    perturb_zero_init(model, seed=12)
    ids = random_ids((1, 64), vocab=1024, seed=13)
    torch_model = torch_model_from(model, config)
    with torch.no_grad():
        expected = torch_model.logits(torch_model.encode(torch.from_numpy(np.array(ids)).long())).numpy()
    np.testing.assert_allclose(jax.jit(lambda x: model(x))(ids), expected, atol=1e-4, rtol=0)


def test_initial_cross_entropy_near_log_vocab():
    model = build(ModelConfig(embed_dim=256, num_attn_heads=2, head_dim=64))
    ids = random_ids((4, 128), vocab=1024, seed=7)
    logits = jax.jit(lambda x: model(x))(ids)
    targets = random_ids((4, 128), vocab=1024, seed=8)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    ce = -float(jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1)))
    assert abs(ce - math.log(1024)) < 0.05
