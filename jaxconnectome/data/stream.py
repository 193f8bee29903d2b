"""Training and validation batches from token shards, in the reference order.

Training reads the shards as one endless stream. Every micro-step takes one
contiguous chunk for all data-parallel workers and cuts it into one slice per
worker, so a run with the same batch settings reads the same tokens as the
PyTorch reference, whatever the number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .shards import DataError, find_shards, read_header, read_shard

_PREPARE = "regenerate them with `python -m jaxconnectome.data prepare`"


def _require_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class TokenStream:
    """Endless token stream over shards, read in the given order and wrapping around.

    Only one shard is in memory at a time. `state()` and `restore()` record and
    set the read position so that a resumed run continues with the same tokens.
    """

    def __init__(self, paths: Iterable[str | os.PathLike]):
        self.paths = [Path(path) for path in paths]
        if not self.paths:
            raise DataError("TokenStream needs at least one shard path; check the shard pattern (DATA_PATH)")
        # Validating every header now reports a broken shard at start-up, not hours later.
        self.token_counts = [read_header(path).token_count for path in self.paths]
        if sum(self.token_counts) == 0:
            raise DataError(f"all {len(self.paths)} shards starting with {self.paths[0].name} are empty; {_PREPARE}")
        self._shard_index = 0
        self._tokens = self._load(0)
        self._position = 0

    def _load(self, shard_index: int) -> np.ndarray:
        tokens = read_shard(self.paths[shard_index])
        # Slices returned by take() are views into this array, so callers must not modify it.
        tokens.flags.writeable = False
        return tokens

    def _advance_shard(self) -> None:
        self._shard_index = (self._shard_index + 1) % len(self.paths)
        self._tokens = self._load(self._shard_index)
        self._position = 0

    def take(self, n: int) -> np.ndarray:
        """Return the next `n` tokens (uint16), continuing into the next shard as needed.

        The result is a read-only view when it lies inside one shard and a new array
        when it spans shards.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise DataError(f"TokenStream.take needs a non-negative token count, got {n!r}")
        chunks: list[np.ndarray] = []
        remaining = int(n)
        while remaining > 0:
            available = self._tokens.size - self._position
            if available <= 0:
                self._advance_shard()
                continue
            count = min(remaining, available)
            chunks.append(self._tokens[self._position : self._position + count])
            self._position += count
            remaining -= count
        if not chunks:
            return np.empty(0, dtype=np.uint16)
        if len(chunks) == 1:
            return chunks[0]
        return np.concatenate(chunks)

    def state(self) -> dict[str, int]:
        """Return the read position as a JSON-friendly dict for checkpoints."""
        return {"shard_index": self._shard_index, "position": self._position}

    def restore(self, state: dict[str, int]) -> None:
        """Continue reading from a position returned by `state()`."""
        try:
            shard_index = int(state["shard_index"])
            position = int(state["position"])
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"invalid stream state {state!r}; expected a dict with integer shard_index and position"
            ) from None
        if not 0 <= shard_index < len(self.paths):
            raise DataError(
                f"stream state shard_index={shard_index} is outside the {len(self.paths)} shards; "
                "the checkpoint was made with other shards, so restart the data stream or restore those shards"
            )
        if not 0 <= position <= self.token_counts[shard_index]:
            raise DataError(
                f"stream state position={position} is outside {self.paths[shard_index].name} "
                f"({self.token_counts[shard_index]} tokens); the shard changed since the checkpoint"
            )
        if shard_index != self._shard_index:
            self._tokens = self._load(shard_index)
            self._shard_index = shard_index
        self._position = position



class TrainLoader:
    """Training batches for a set of data-parallel workers.

    `world_size` is the number of workers W that split each micro-step's chunk.
    `ranks` selects which workers' slices this process keeps (all by default), so
    one process can feed several local devices while the token order stays that
    of W separate reference workers.
    """

    def __init__(self, pattern: str | os.PathLike, world_size: int, ranks: Sequence[int] | None = None):
        self.world_size = _require_positive("WORLD_SIZE", world_size)
        if ranks is None:
            ranks = range(self.world_size)
        self.ranks = tuple(int(rank) for rank in ranks)
        if not self.ranks:
            raise DataError("TrainLoader ranks is empty; pass at least one worker rank")
        for rank in self.ranks:
            if not 0 <= rank < self.world_size:
                raise DataError(f"rank {rank} is outside WORLD_SIZE={self.world_size}; ranks must be in 0..{self.world_size - 1}")
        self.stream = TokenStream(find_shards(pattern))

    def local_tokens(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> int:
        """Return the tokens per worker and micro-step, after checking divisibility."""
        global_tokens = _require_positive("TRAIN_BATCH_TOKENS", global_tokens)
        seq_len = _require_positive("TRAIN_SEQ_LEN", seq_len)
        grad_accum_steps = _require_positive("GRAD_ACCUM_STEPS", grad_accum_steps)
        divisor = self.world_size * grad_accum_steps * seq_len
        if global_tokens % divisor:
            raise DataError(
                f"TRAIN_BATCH_TOKENS={global_tokens} is not divisible by WORLD_SIZE*GRAD_ACCUM_STEPS*TRAIN_SEQ_LEN="
                f"{self.world_size}*{grad_accum_steps}*{seq_len}={divisor}; set it to a multiple of {divisor}"
            )
        return global_tokens // (self.world_size * grad_accum_steps)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (inputs, targets) for one optimizer step.

        Both are int32 arrays of shape (grad_accum_steps, len(ranks),
        local_tokens // seq_len, seq_len), where local_tokens = global_tokens /
        (world_size * grad_accum_steps). Micro-step g and worker r get
        chunk[r * (local_tokens + 1) : (r + 1) * (local_tokens + 1)] of the g-th chunk
        taken from the stream. Targets are inputs shifted by one token.
        """
        local_tokens = self.local_tokens(global_tokens, seq_len, grad_accum_steps)
        span = local_tokens + 1
        shape = (grad_accum_steps, len(self.ranks), local_tokens // seq_len, seq_len)
        inputs = np.empty(shape, dtype=np.int32)
        targets = np.empty(shape, dtype=np.int32)
        for step in range(grad_accum_steps):
            chunk = self.stream.take(span * self.world_size)
            for slot, rank in enumerate(self.ranks):
                worker_slice = chunk[rank * span : (rank + 1) * span]
                inputs[step, slot] = worker_slice[:-1].reshape(-1, seq_len)
                targets[step, slot] = worker_slice[1:].reshape(-1, seq_len)
        return inputs, targets

    def state(self) -> dict[str, int]:
        """Return the stream position, see `TokenStream.state`."""
        return self.stream.state()

    def restore(self, state: dict[str, int]) -> None:
        """Set the stream position, see `TokenStream.restore`."""
        self.stream.restore(state)


def load_validation_tokens(pattern: str | os.PathLike, seq_len: int) -> np.ndarray:
    """Concatenate the validation shards and cut them to whole sequences plus one token.

    The result has floor((N - 1) / seq_len) * seq_len + 1 tokens, where N is the
    total, so every input position has a target. Raises DataError when fewer
    than seq_len + 1 tokens are available.
    """
    seq_len = _require_positive("TRAIN_SEQ_LEN", seq_len)
    paths = find_shards(pattern)
    tokens = np.concatenate([read_shard(path) for path in paths])
    usable = ((tokens.size - 1) // seq_len) * seq_len
    if usable <= 0:
        raise DataError(
            f"validation shards {pattern} contain {tokens.size} tokens, fewer than TRAIN_SEQ_LEN+1={seq_len + 1}; "
            "lower TRAIN_SEQ_LEN or prepare more validation documents"
        )
    return tokens[: usable + 1]


def validation_sequences(
    tokens: np.ndarray, seq_len: int, rank: int, world_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return this worker's validation (inputs, targets), int32 of shape (n_seqs, seq_len).

    Sequence i has inputs tokens[i*S:(i+1)*S] and targets shifted by one. Worker
    `rank` of `world_size` gets sequences [total*rank//W, total*(rank+1)//W), so
    the shares differ by at most one sequence and together cover every sequence.
    """
    seq_len = _require_positive("TRAIN_SEQ_LEN", seq_len)
    world_size = _require_positive("WORLD_SIZE", world_size)
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside WORLD_SIZE={world_size}; ranks must be in 0..{world_size - 1}")
    tokens = np.asarray(tokens)
    total = (tokens.size - 1) // seq_len
    if total <= 0:
        raise DataError(
            f"validation has {tokens.size} tokens, fewer than TRAIN_SEQ_LEN+1={seq_len + 1}; lower TRAIN_SEQ_LEN"
        )
    first = total * rank // world_size
    end = total * (rank + 1) // world_size
    local = tokens[first * seq_len : end * seq_len + 1].astype(np.int32)
    if end == first:
        empty = np.empty((0, seq_len), dtype=np.int32)
        return empty, empty.copy()
    return local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)
