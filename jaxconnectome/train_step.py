"""The jitted training step: losses per worker and micro-step, accumulation, AdamW.

The reference's losses are per data-parallel worker and micro-step: each worker computes
CE, JEPA and SigREG on its own micro-batch (SigREG's N is that micro-batch's token count)
and DDP averages the gradients of total / accumulation_steps. Here a batch carries an
explicit worker axis W, the per-worker loss is vmapped over it, and the step scans over
the A micro-steps, so the numbers equal a W-worker reference run on any device count.

Shape letters: A micro-steps, W workers, B sequences per worker, S sequence, E embedding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxconnectome import losses, sharding
from jaxconnectome.model import ConnectomeJEPA


@dataclasses.dataclass(frozen=True)
class LossConfig:
    jepa_weight: float = 0.5
    sigreg_weight: float = 1e-4
    mask_ratio: float = 0.3
    mask_span_length: float = 4.0
    sigreg_slices: int = 64
    sigreg_knots: int = 17


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    params: Any  # nnx.State of the nnx.Param variables
    opt_state: Any
    step: jax.Array


def worker_losses(
    model: ConnectomeJEPA, inputs_BS: jax.Array, targets_BS: jax.Array, key: jax.Array, config: LossConfig
) -> dict[str, jax.Array]:
    """Compute CE, JEPA and SigREG on one worker's micro-batch, and their weighted total."""
    mask_key, sigreg_key = jax.random.split(key)
    batch, seq_len = inputs_BS.shape
    use_jepa = config.jepa_weight > 0
    if use_jepa:
        mask_BS = losses.jepa_span_mask(mask_key, batch, seq_len, config.mask_ratio, config.mask_span_length)
    if use_jepa and model.config.fuse_encoder_passes:
        # One encode of [unmasked; masked]: an all-False mask row reads the token embeddings
        # unchanged, and every position's result depends only on its own sequence.
        both_inputs = jnp.concatenate([inputs_BS, inputs_BS])
        both_masks = jnp.concatenate([jnp.zeros_like(mask_BS), mask_BS])
        rep_BSE, rep_masked_BSE = jnp.split(model.encode(both_inputs, both_masks), 2)
    elif use_jepa and model.config.share_masked_prefix:
        rep_BSE, rep_masked_BSE = model.encode_pair(inputs_BS, mask_BS)
    else:
        rep_BSE = model.encode(inputs_BS)
        rep_masked_BSE = model.encode(inputs_BS, mask_BS) if use_jepa else None
    ce = losses.cross_entropy(model.logits(rep_BSE), targets_BS)
    total = ce
    jepa = jnp.zeros((), jnp.float32)
    sigreg = jnp.zeros((), jnp.float32)
    if use_jepa:
        jepa = losses.jepa_loss(rep_masked_BSE, rep_BSE, mask_BS)
        total = total + config.jepa_weight * jepa
    if config.sigreg_weight > 0:
        rep_NE = rep_BSE.reshape(-1, rep_BSE.shape[-1])
        sigreg = losses.sigreg(sigreg_key, rep_NE, config.sigreg_slices, config.sigreg_knots)
        total = total + config.sigreg_weight * sigreg
    return {"total": total, "ce": ce, "jepa": jepa, "sigreg": sigreg}


def micro_step_loss(params, graphdef, buffers, inputs_WBS, targets_WBS, keys_W, config: LossConfig):
    """Return the workers' mean total loss for one micro-step, and the mean of each loss."""
    model = nnx.merge(graphdef, params, buffers)
    per_worker = jax.vmap(lambda x, y, k: worker_losses(model, x, y, k, config))(inputs_WBS, targets_WBS, keys_W)
    means = jax.tree.map(jnp.mean, per_worker)
    return means["total"], means


def worker_keys(base_key: jax.Array, step: jax.Array, num_micro: int, num_workers: int) -> jax.Array:
    """Return (A, W) keys: fold_in(fold_in(base_key, step), a * W + w).

    The keys are indexed by the global micro-batch number a * W + w. A run with A
    micro-steps on W devices therefore draws the same masks and projections as one with
    A * W micro-steps on one device, and the two give the same numbers.
    """
    step_key = jax.random.fold_in(base_key, step)
    index = jnp.arange(num_micro * num_workers).reshape(num_micro, num_workers)
    return jax.vmap(jax.vmap(lambda i: jax.random.fold_in(step_key, i)))(index)


def train_step(
    state: TrainState,
    inputs_AWBS: jax.Array,
    targets_AWBS: jax.Array,
    base_key: jax.Array,
    lr_multiplier: jax.Array,
    *,
    graphdef,
    buffers,
    optimizer: optax.GradientTransformation,
    config: LossConfig,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Accumulate gradients of total / A over the A micro-steps, then apply one AdamW update.

    The gradient of the mean over workers equals DDP's average of per-worker gradients.
    """
    num_micro, num_workers = inputs_AWBS.shape[:2]
    keys_AW = worker_keys(base_key, state.step, num_micro, num_workers)
    grad_fn = jax.grad(micro_step_loss, has_aux=True)

    def accumulate(grads_sum, xs):
        inputs, targets, keys = xs
        grads, metrics = grad_fn(state.params, graphdef, buffers, inputs, targets, keys, config)
        grads_sum = jax.tree.map(lambda acc, g: acc + g.astype(acc.dtype) / num_micro, grads_sum, grads)
        return grads_sum, metrics

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    grads, metrics = jax.lax.scan(accumulate, zeros, (inputs_AWBS, targets_AWBS, keys_AW))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)

    hyperparams = {**state.opt_state.hyperparams, "lr_multiplier": jnp.asarray(lr_multiplier, jnp.float32)}
    opt_state = state.opt_state._replace(hyperparams=hyperparams)
    updates, opt_state = optimizer.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(params=params, opt_state=opt_state, step=state.step + 1)
    return new_state, jax.tree.map(jnp.mean, metrics)


def make_train_step(
    model: ConnectomeJEPA,
    optimizer: optax.GradientTransformation,
    config: LossConfig,
    mesh: Mesh | None = None,
):
    """Place the train state on `mesh` and return (state, jitted step(state, x, y, key, lr_multiplier)).

    Without a mesh the state lives on one device. The step donates the state, so the state
    gets its own copy of the parameters and `model` stays usable.
    """
    mesh = mesh if mesh is not None else sharding.make_mesh(devices=jax.devices()[:1])
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)

    def init(params):
        return TrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))

    abstract_state = jax.eval_shape(init, params)
    state_shardings = sharding.state_shardings(mesh, abstract_state, params)
    state = jax.jit(init, out_shardings=state_shardings)(jax.tree.map(jnp.copy, params))

    batch = sharding.batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    step = functools.partial(train_step, graphdef=graphdef, buffers=buffers, optimizer=optimizer, config=config)
    jitted = jax.jit(
        step,
        in_shardings=(state_shardings, batch, batch, replicated, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    return state, jitted
