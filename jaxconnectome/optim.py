"""AdamW with the reference's two learning-rate groups, clipping and schedules.

The learning-rate multiplier is computed on the host each step because the linear
schedule's wallclock-aware form depends on elapsed training time. The optimiser reads it
as an injected hyperparameter, so changing it never recompiles the step.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "linear")
# The reference trains the tied embedding and the mask embedding at 0.3 x LR.
EMBED_LR_SCALE = 0.3
EMBED_PARAMS = ("tok_emb", "mask_emb")
# PyTorch's clip_grad_norm_ divides by (norm + 1e-6); optax's clip does not add it.
TORCH_CLIP_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    schedule: str = "cosine"
    iterations: int = 5000
    warmup_steps: int = 100
    warmdown_iters: int = 0
    max_wallclock_seconds: float = 600.0


def reads_clock(config: ScheduleConfig) -> bool:
    """Return whether `lr_multiplier` depends on the elapsed time: a linear warmdown under a cap."""
    return config.schedule == "linear" and config.warmdown_iters > 0 and config.max_wallclock_seconds > 0


def lr_multiplier(step: int, config: ScheduleConfig, elapsed_ms: float = 0.0) -> float:
    """Return the LR multiplier for the update made at `step` (0-based).

    Warmup: max(step / warmup, 0.01). cosine: max(0.5 * (1 + cos(pi * min(p, 1))), 0.01)
    with p = (step - warmup) / (iterations - warmup). linear: 1.0, then a linear warmdown
    over the last WARMDOWN_ITERS steps, or, under a wallclock cap, over the time those
    steps are expected to take at the average step time so far.
    """
    if step < config.warmup_steps:
        return max(step / config.warmup_steps, 0.01)
    if config.schedule == "cosine":
        progress = (step - config.warmup_steps) / max(config.iterations - config.warmup_steps, 1)
        return max(0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))), 0.01)
    if config.schedule == "linear":
        return _linear_warmdown(step, config, elapsed_ms)
    raise ValueError(f"LR_SCHEDULE={config.schedule!r} is unknown; use one of {', '.join(SCHEDULES)}")


def _linear_warmdown(step: int, config: ScheduleConfig, elapsed_ms: float) -> float:
    warmdown = config.warmdown_iters
    if warmdown <= 0:
        return 1.0
    if config.max_wallclock_seconds <= 0:
        start = config.iterations - warmdown
        return (config.iterations - step) / warmdown if step >= start else 1.0
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = warmdown * step_ms
    remaining_ms = max(1000.0 * config.max_wallclock_seconds - elapsed_ms, 0.0)
    return remaining_ms / warmdown_ms if remaining_ms <= warmdown_ms else 1.0


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """Scale gradients by min(max_norm / (norm + 1e-6), 1), as torch.nn.utils.clip_grad_norm_."""

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        coef = jnp.minimum(max_norm / (norm + TORCH_CLIP_EPS), 1.0)
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def param_group(path: tuple, _leaf) -> str:
    """Label a parameter 'embed' (tok_emb, mask_emb) or 'other' by its path in the state."""
    names = {getattr(key, "key", getattr(key, "name", key)) for key in path}
    return "embed" if names & set(EMBED_PARAMS) else "other"


def build_optimizer(
    learning_rate: float = 1e-3,
    weight_decay: float = 0.1,
    beta1: float = 0.9,
    beta2: float = 0.95,
    grad_clip_norm: float = 1.0,
) -> optax.GradientTransformation:
    """Return clip -> AdamW (decay on every parameter) with the LR multiplier injected.

    Set the multiplier of a step with `opt_state.hyperparams['lr_multiplier']`.
    """

    def make(lr_multiplier):
        def adamw(scale: float) -> optax.GradientTransformation:
            return optax.adamw(
                learning_rate=learning_rate * scale * lr_multiplier,
                b1=beta1,
                b2=beta2,
                eps=1e-8,
                weight_decay=weight_decay,
            )

        groups = optax.multi_transform(
            {"embed": adamw(EMBED_LR_SCALE), "other": adamw(1.0)},
            lambda params: jax.tree_util.tree_map_with_path(param_group, params),
        )
        if grad_clip_norm > 0:
            return optax.chain(clip_by_global_norm_torch(grad_clip_norm), groups)
        return groups

    return optax.inject_hyperparams(make)(lr_multiplier=1.0)
