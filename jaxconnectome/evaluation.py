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
from jax.sharding import NamedSharding, PartitionSpec

from jaxconnectome import losses, sharding
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


def make_loss_sum_fn(graphdef, buffers, mesh):
    """Return a jitted fn(params, inputs, targets, weights) -> float32 sum of weighted CE.

    Batches are (W, B, S) with the worker axis split over the mesh like training batches.
    """
    batch = sharding.batch_sharding(mesh, sharding.EVAL_BATCH_AXES)
    replicated = NamedSharding(mesh, PartitionSpec())

    def loss_sum(params, inputs_WBS, targets_WBS, weights_WBS):
        model = nnx.merge(graphdef, params, buffers)
        per_token = jax.vmap(lambda x, y: losses.token_cross_entropy(model(x), y))(inputs_WBS, targets_WBS)
        return jnp.sum(per_token * weights_WBS)

    return jax.jit(loss_sum, in_shardings=(None, batch, batch, batch), out_shardings=replicated)


def evaluate(params, loss_sum_fn, val: ValidationSet, batch_seqs: int, mesh) -> tuple[float, float]:
    """Return (val_loss, val_bpb) over the whole validation set.

    Each call takes W * batch_seqs sequences shaped (W, batch_seqs, S). The last batch is
    padded with zero-weight rows so that every call has the same shape and the
    evaluation compiles once. Batch sums are added in float64; token and byte counts are
    exact integers counted on the host.
    """
    num_workers = mesh.devices.size
    per_call = num_workers * batch_seqs
    num_seqs, seq_len = val.inputs.shape
    sharded = sharding.batch_sharding(mesh, sharding.EVAL_BATCH_AXES)
    total = 0.0
    for start in range(0, num_seqs, per_call):
        valid = min(per_call, num_seqs - start)
        weights = np.zeros((per_call, seq_len), np.float32)
        weights[:valid] = 1.0
        arrays = []
        for source in (val.inputs[start : start + valid], val.targets[start : start + valid], weights):
            chunk = np.pad(source, ((0, per_call - source.shape[0]), (0, 0)))
            chunk = chunk.reshape(num_workers, batch_seqs, seq_len)
            # Every process reads the whole validation set and passes on the slices of its own devices.
            arrays.append(jax.make_array_from_callback(chunk.shape, sharded, lambda index, c=chunk: c[index]))
        total += float(loss_sum_fn(params, *arrays))
    val_loss = total / val.token_count
    val_bpb = val_loss / math.log(2.0) * val.token_count / val.byte_count
    return val_loss, val_bpb
