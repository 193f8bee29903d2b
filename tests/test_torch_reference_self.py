"""Self-checks of the PyTorch reference model and losses in torch_reference.py."""

from __future__ import annotations

import json

import pytest
import torch

import torch_reference as ref
from shared_data import shared_path


TINY_CONFIG = {
    "vocab_size": 64,
    "embed_dim": 64,
    "num_hops": 4,
    "cross_attn_every": 2,
    "head_dim": 16,
    "num_attn_heads": 2,
    "skip_every": 2,
}


def random_wiring(seed: int = 0, density: float = 0.06):
    """Return a random 0/1 mask (300, 300) and disjoint sensory (88) and motor (123) index sets."""
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.rand(ref.NUM_NEURONS, ref.NUM_NEURONS, generator=generator) < density).float()
    order = torch.randperm(ref.NUM_NEURONS, generator=generator)
    sensory_idx = order[: ref.NUM_SENSORY].sort().values
    motor_idx = order[ref.NUM_SENSORY : ref.NUM_SENSORY + ref.NUM_MOTOR].sort().values
    return mask, sensory_idx, motor_idx


def build(config: dict, seed: int = 0) -> ref.ConnectomeJEPARef:
    mask, sensory_idx, motor_idx = random_wiring()
    return ref.build_reference_model(config, mask, sensory_idx, motor_idx, seed)


def make_attention_active(model: ref.ConnectomeJEPARef, seed: int = 1) -> None:
    """Give every out_proj random weights, because at init they are zero and attention is a no-op."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for attention in model.cross_attns.values():
            weight = attention.out_proj.weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.05)


def load_layout() -> dict:
    return json.loads(shared_path("reference", "torch_state_dict_layout.json").read_text())


@pytest.mark.parametrize("name", ["primary", "small", "two_hop", "channels2"])
def test_state_dict_matches_layout(name):
    entry = load_layout()[name]
    model = build(entry["config"]).bfloat16()

    actual = [
        [key, list(tensor.shape), str(tensor.dtype).removeprefix("torch.")]
        for key, tensor in model.state_dict().items()
    ]
    expected = [list(row) for row in entry["state_dict"]]

    assert [row[0] for row in actual] == [row[0] for row in expected]
    assert actual == expected
    assert sum(p.numel() for p in model.parameters()) == entry["params"]


@pytest.mark.parametrize(
    "config, expected_count",
    [
        ({}, 3_336_051),
        ({"embed_dim": 512, "num_attn_heads": 1}, 1_637_235),
        ({"embed_dim": 512, "num_attn_heads": 1, "num_hops": 2, "cross_attn_every": 2, "skip_every": 0}, 967_633),
        ({"embed_dim": 512, "num_attn_heads": 1, "num_hops": 16, "cross_attn_every": 8, "skip_every": 0}, 2_389_633),
    ],
)
def test_parameter_count(config, expected_count):
    model = build(config)

    assert sum(p.numel() for p in model.parameters()) == expected_count


def test_initial_values():
    model = build(TINY_CONFIG)

    assert torch.all(model.mask_emb == 0)
    assert model.output_residual_scale.item() == pytest.approx(0.1)
    assert torch.allclose(model.skip_gates, torch.full((1,), 0.1))
    for scale in model.hop_scales:
        assert torch.allclose(scale, torch.full_like(scale, 0.5))
    for attention in model.cross_attns.values():
        assert torch.all(attention.out_proj.weight == 0)
    assert list(model.cross_attns.keys()) == ["1", "3"]


def test_build_is_deterministic():
    first = build(TINY_CONFIG, seed=3).state_dict()
    second = build(TINY_CONFIG, seed=3).state_dict()

    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_encode_is_causal():
    torch.manual_seed(0)
    model = build(TINY_CONFIG)
    make_attention_active(model)
    ids = torch.randint(0, TINY_CONFIG["vocab_size"], (2, 16))
    changed = ids.clone()
    t = 9
    changed[:, t] = (ids[:, t] + 1) % TINY_CONFIG["vocab_size"]

    with torch.no_grad():
        before = model.encode(ids)
        after = model.encode(changed)

    assert torch.equal(before[:, :t], after[:, :t])
    assert not torch.allclose(before[:, t], after[:, t])
    # Positions after t see token t only through attention.
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])


def test_masked_hop_weights_get_zero_gradient():
    torch.manual_seed(0)
    model = build(TINY_CONFIG)
    make_attention_active(model)
    ids = torch.randint(0, TINY_CONFIG["vocab_size"], (2, 16))
    targets = torch.randint(0, TINY_CONFIG["vocab_size"], (2, 16))

    model(ids, targets).backward()

    for hop in model.hops:
        for layer in hop:
            grad = layer.weight.grad
            assert torch.all(grad[layer.mask == 0] == 0)
            assert torch.any(grad[layer.mask == 1] != 0)


def test_logits_within_softcap():
    torch.manual_seed(0)
    model = build(TINY_CONFIG)
    with torch.no_grad():
        model.tok_emb.weight.mul_(2000.0)
    ids = torch.randint(0, TINY_CONFIG["vocab_size"], (2, 16))

    with torch.no_grad():
        logits = model.logits(model.encode(ids))

    softcap = model.logit_softcap
    assert logits.abs().max() <= softcap
    # The scaled embedding pushes raw logits far past the cap, so some must sit near it.
    assert logits.abs().max() > 0.9 * softcap


def test_channels_use_own_slots():
    model = build({**TINY_CONFIG, "num_channels": 2})
    ids = torch.randint(0, TINY_CONFIG["vocab_size"], (2, 16))

    assert model.sensory_slots().tolist() == model.sensory_idx.tolist() + (model.sensory_idx + 300).tolist()
    assert model.motor_slots().tolist() == model.motor_idx.tolist() + (model.motor_idx + 300).tolist()
    with torch.no_grad():
        assert model.encode(ids).shape == (2, 16, TINY_CONFIG["embed_dim"])


def test_jepa_mask_statistics():
    generator = torch.Generator().manual_seed(1337)
    mask = ref.jepa_span_mask(256, 1024, generator=generator)

    fraction = mask.float().mean().item()
    run_starts = mask[:, 0].sum() + (mask[:, 1:] & ~mask[:, :-1]).sum()
    mean_run = mask.sum().item() / run_starts.item()

    assert mask.dtype == torch.bool
    assert mask.sum(dim=1).min().item() >= int(0.3 * 1024)
    assert fraction == pytest.approx(0.30, abs=0.01)
    assert mean_run == pytest.approx(4.74, abs=0.15)


def test_jepa_loss_uses_masked_positions_only():
    rep_target = torch.zeros(1, 4, 3)
    rep_masked = torch.tensor([[[1.0] * 3, [2.0] * 3, [100.0] * 3, [100.0] * 3]], requires_grad=True)
    mask = torch.tensor([[True, True, False, False]])

    loss = ref.jepa_loss(rep_masked, rep_target, mask)

    assert loss.item() == pytest.approx(2.5)


def test_sigreg_small_on_gaussian():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 64, generator=generator)

    assert ref.sigreg(x, generator=generator).item() < 1e-3


def test_sigreg_large_on_collapsed_sample():
    generator = torch.Generator().manual_seed(0)
    row = torch.randn(1, 64, generator=generator)
    x = row.expand(1000, 64)

    assert ref.sigreg(x, generator=generator).item() > 0.1


def test_sigreg_accepts_fixed_projections():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 64, generator=generator)
    projections = torch.randn(64, 64, generator=generator)

    first = ref.sigreg(x, projections=projections)
    second = ref.sigreg(x, projections=projections * 3.0)

    assert torch.allclose(first, second)


def test_total_loss_combines_terms():
    torch.manual_seed(0)
    model = build(TINY_CONFIG)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TINY_CONFIG["vocab_size"], (2, 16), generator=generator)
    targets = torch.randint(0, TINY_CONFIG["vocab_size"], (2, 16), generator=generator)

    losses = ref.total_loss(model, ids, targets, generator=generator)

    expected = losses["ce"] + 0.5 * losses["jepa"] + 1e-4 * losses["sigreg"]
    assert torch.allclose(losses["total"], expected)
    assert torch.allclose(losses["ce"], model(ids, targets))
    losses["total"].backward()
    assert model.mask_emb.grad is not None
