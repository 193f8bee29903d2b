"""Validation loss and bits per byte, with exact sums over tokens and bytes.

val_loss is the mean next-token cross-entropy over every validation target, and
val_bpb = (val_loss / ln 2) * (tokens / bytes), with bytes counted by the SentencePiece
rule in jaxconnectome.data.byte_counts. Bytes and tokens do not depend on the model, so
they are counted once per validation set; each evaluation only sums the loss.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxconnectome import losses
from jaxconnectome.data import ByteTables, count_target_bytes, load_validation_tokens, validation_sequences


@dataclasses.dataclass(frozen=True)
class ValidationSet:
    inputs: np.ndarray  # (num_seqs, S) int32
    targets: np.ndarray  # (num_seqs, S) int32
    token_count: int
    byte_count: int


def build_validation_set(pattern: str, seq_len: int, tables: ByteTables) -> ValidationSet:
    """Load every validation shard, cut to whole sequences, and count target bytes."""
    tokens = load_validation_tokens(pattern, seq_len)
    inputs, targets = validation_sequences(tokens, seq_len, rank=0, world_size=1)
    byte_count = int(count_target_bytes(tables, inputs, targets).sum())
    return ValidationSet(
        inputs=inputs.astype(np.int32),
        targets=targets.astype(np.int32),
        token_count=int(targets.size),
        byte_count=byte_count,
    )


def make_loss_sum_fn(graphdef, buffers):
    """Return a jitted fn(params, inputs, targets, weights) -> float32 sum of weighted CE."""

    def loss_sum(params, inputs_BS, targets_BS, weights_BS):
        model = nnx.merge(graphdef, params, buffers)
        per_token = losses.token_cross_entropy(model(inputs_BS), targets_BS)
        return jnp.sum(per_token * weights_BS)

    return jax.jit(loss_sum)


def evaluate(params, loss_sum_fn, val: ValidationSet, batch_seqs: int) -> tuple[float, float]:
    """Return (val_loss, val_bpb) over the whole validation set.

    The last batch is padded to `batch_seqs` with zero-weight rows so that every call has
    the same shape and the evaluation compiles once. Batch sums are added in float64.
    """
    num_seqs, seq_len = val.inputs.shape
    total = 0.0
    for start in range(0, num_seqs, batch_seqs):
        inputs = val.inputs[start : start + batch_seqs]
        targets = val.targets[start : start + batch_seqs]
        weights = np.ones(inputs.shape, np.float32)
        pad = batch_seqs - inputs.shape[0]
        if pad:
            inputs = np.pad(inputs, ((0, pad), (0, 0)))
            targets = np.pad(targets, ((0, pad), (0, 0)))
            weights = np.pad(weights, ((0, pad), (0, 0)))
        total += float(loss_sum_fn(params, inputs, targets, weights))
    val_loss = total / val.token_count
    val_bpb = val_loss / math.log(2.0) * val.token_count / val.byte_count
    return val_loss, val_bpb
