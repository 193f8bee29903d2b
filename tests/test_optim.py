"""LR schedules at hand-computed steps, and AdamW against torch.optim.AdamW."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxconnectome.optim import ScheduleConfig, build_optimizer, lr_multiplier, reads_clock

COSINE = ScheduleConfig(schedule="cosine", iterations=5000, warmup_steps=100)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.01),  # max(0 / 100, 0.01)
        (50, 0.5),
        (100, 1.0),  # p = 0
        (101, 0.5 * (1 + math.cos(math.pi / 4900))),
        (199, 0.5 * (1 + math.cos(math.pi * 99 / 4900))),  # logged as lr:0.000999 at step 200
        (2550, 0.5),  # halfway through the cosine
        (4999, 0.01),  # the 1 % floor
        (5000, 0.01),
    ],
)
def test_cosine_schedule(step, expected):
    assert lr_multiplier(step, COSINE) == pytest.approx(expected, rel=1e-12)


def test_cosine_matches_reference_log():
    # The reference's log shows lr:0.000999 at step 200 and 0.000010 at step 5000, each the
    # LR of the update that produced that step.
    assert f"{1e-3 * lr_multiplier(199, COSINE):.6f}" == "0.000999"
    assert f"{1e-3 * lr_multiplier(4999, COSINE):.6f}" == "0.000010"


@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.01), (50, 0.5), (100, 1.0), (101, 1.0), (4000, 1.0), (4500, 0.5), (4999, 0.001), (5000, 0.0)],
)
def test_linear_schedule_by_steps(step, expected):
    config = ScheduleConfig(schedule="linear", iterations=5000, warmup_steps=100, warmdown_iters=1000,
                            max_wallclock_seconds=0)
    assert lr_multiplier(step, config) == pytest.approx(expected, abs=1e-12)


def test_linear_schedule_without_warmdown_stays_flat():
    config = ScheduleConfig(schedule="linear", warmdown_iters=0)
    assert [lr_multiplier(s, config) for s in (0, 50, 100, 101, 5000)] == [0.01, 0.5, 1.0, 1.0, 1.0]


def test_linear_schedule_under_wallclock_cap():
    config = ScheduleConfig(schedule="linear", iterations=5000, warmup_steps=100, warmdown_iters=100,
                            max_wallclock_seconds=600)
    # 1000 steps in 100 s: 100 ms a step, so the warmdown spans the last 10 s.
    assert lr_multiplier(1000, config, elapsed_ms=100_000) == 1.0
    assert lr_multiplier(5800, config, elapsed_ms=595_000) == pytest.approx(5_000 / (100 * 595_000 / 5800))
    assert lr_multiplier(6000, config, elapsed_ms=601_000) == 0.0
    assert lr_multiplier(50, config, elapsed_ms=599_000) == 0.5  # warmup comes first


@pytest.mark.parametrize(
    "config, expected",
    [
        (COSINE, False),
        (ScheduleConfig(schedule="linear", warmdown_iters=0, max_wallclock_seconds=600), False),
        (ScheduleConfig(schedule="linear", warmdown_iters=100, max_wallclock_seconds=0), False),
        (ScheduleConfig(schedule="linear", iterations=5000, warmdown_iters=100, max_wallclock_seconds=600), True),
    ],
    ids=["cosine", "linear_no_warmdown", "linear_no_cap", "linear_under_cap"],
)
def test_reads_clock_matches_schedule(config, expected):
    assert reads_clock(config) is expected
    # Independently: the multiplier at a step after warmup moves with the elapsed time only
    # where reads_clock says so (595 s of a 600 s cap after 4,000 steps is inside the warmdown).
    moved = lr_multiplier(4000, config, elapsed_ms=0.0) != lr_multiplier(4000, config, elapsed_ms=595_000.0)
    assert moved is expected


def test_unknown_schedule():
    with pytest.raises(ValueError, match="LR_SCHEDULE"):
        lr_multiplier(200, ScheduleConfig(schedule="step"))


def test_adamw_matches_torch_with_groups_and_clipping():
    rng = np.random.default_rng(0)
    shapes = {"tok_emb": (6, 4), "mask_emb": (4,), "hop_weight": (3, 5), "hop_bias": (5,)}
    params = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    grads = [{name: (5 * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}
             for _ in range(4)]
    multipliers = [0.01, 0.3, 1.0, 0.7]

    torch_params = {name: torch.nn.Parameter(torch.from_numpy(value.copy())) for name, value in params.items()}
    torch_opt = torch.optim.AdamW(
        [
            {"params": [torch_params["tok_emb"], torch_params["mask_emb"]], "lr": 0.3e-3},
            {"params": [torch_params["hop_weight"], torch_params["hop_bias"]], "lr": 1e-3},
        ],
        betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
    )
    base_lrs = [group["lr"] for group in torch_opt.param_groups]
    for grad, multiplier in zip(grads, multipliers):
        for name, p in torch_params.items():
            p.grad = torch.from_numpy(grad[name].copy())
        torch.nn.utils.clip_grad_norm_(list(torch_params.values()), 1.0)
        for group, base in zip(torch_opt.param_groups, base_lrs):
            group["lr"] = base * multiplier
        torch_opt.step()

    optimizer = build_optimizer(1e-3, 0.1, 0.9, 0.95, 1.0)
    jax_params = {name: jnp.asarray(value) for name, value in params.items()}
    state = optimizer.init(jax_params)
    for grad, multiplier in zip(grads, multipliers):
        state.hyperparams["lr_multiplier"] = jnp.asarray(multiplier)
        updates, state = optimizer.update({k: jnp.asarray(v) for k, v in grad.items()}, state, jax_params)
        jax_params = optax.apply_updates(jax_params, updates)

    for name in shapes:
        np.testing.assert_allclose(jax_params[name], torch_params[name].detach().numpy(), rtol=2e-6, atol=1e-7)


def test_no_clipping_when_disabled():
    optimizer = build_optimizer(grad_clip_norm=0.0)
    params = {"w": jnp.ones(3)}
    state = optimizer.init(params)
    updates, _ = optimizer.update({"w": jnp.full(3, 100.0)}, state, params)
    # First Adam step has magnitude lr * (1 + wd * w) per element whatever the gradient scale.
    np.testing.assert_allclose(updates["w"], -1e-3 * (1 + 0.1), rtol=1e-5)
