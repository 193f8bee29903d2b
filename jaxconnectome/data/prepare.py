"""Turn text documents into challenge-format shards plus a MANIFEST.json.

Every document becomes [BOS] + sp.encode(text). The first `val_documents`
documents form the validation split and the rest the training split, as in the
challenge, where the first 50,000 FineWeb documents are validation. Shards hold
`shard_tokens` tokens each (the last one fewer), so a document may continue in
the next shard.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import sentencepiece as spm

from .documents import as_path_list, iter_documents, read_documents
from .shards import BOS_ID, MAX_TOKEN_ID, DataError, write_bytes_atomic, write_shard
from .tokenizer import available_cpus, load_tokenizer, train_tokenizer

__all__ = ["DEFAULT_SHARD_TOKENS", "DEFAULT_VAL_DOCUMENTS", "prepare", "read_documents"]

logger = logging.getLogger(__name__)

DEFAULT_VAL_DOCUMENTS = 50_000
DEFAULT_SHARD_TOKENS = 100_000_000
MANIFEST_NAME = "MANIFEST.json"
TOKENIZER_NAME = "tokenizer"
# Documents per SentencePiece encode call, which encodes one batch on all cores.
ENCODE_BATCH_DOCUMENTS = 1024


class _ShardWriter:
    """Collect one split's tokens and write `{prefix}_{split}_NNNNNN.bin` files of shard_tokens each."""

    def __init__(self, output_dir: Path, prefix: str, split: str, shard_tokens: int):
        self.output_dir = output_dir
        self.prefix = prefix
        self.split = split
        self.shard_tokens = shard_tokens
        self.paths: list[Path] = []
        self.documents = 0
        self.tokens = 0
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0

    def add_document(self, tokens: np.ndarray) -> None:
        self.documents += 1
        self.tokens += tokens.size
        self._pending.append(tokens)
        self._pending_tokens += tokens.size
        while self._pending_tokens >= self.shard_tokens:
            self._write(self.shard_tokens)

    def close(self) -> list[Path]:
        if self._pending_tokens:
            self._write(self._pending_tokens)
        return self.paths

    def _write(self, count: int) -> None:
        joined = np.concatenate(self._pending)
        path = self.output_dir / f"{self.prefix}_{self.split}_{len(self.paths):06d}.bin"
        write_shard(path, joined[:count])
        logger.info("wrote %s (%d tokens)", path, count)
        self.paths.append(path)
        rest = joined[count:]
        self._pending = [rest] if rest.size else []
        self._pending_tokens = rest.size


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _document_tokens(sp: spm.SentencePieceProcessor, documents: Iterable[str], num_threads: int) -> Iterator[np.ndarray]:
    """Yield [BOS] + token ids of every document, as uint16."""
    for batch in _batched(documents, ENCODE_BATCH_DOCUMENTS):
        for ids in sp.encode(batch, out_type=int, num_threads=num_threads):
            tokens = np.empty(len(ids) + 1, dtype=np.uint16)
            tokens[0] = BOS_ID
            tokens[1:] = ids
            yield tokens


def _check_settings(val_documents: int, shard_tokens: int, prefix: str, tokenizer_path, train_tokenizer_vocab) -> None:
    if (tokenizer_path is None) == (train_tokenizer_vocab is None):
        raise DataError("give either a tokenizer (--tokenizer MODEL) or --train-tokenizer, not both or neither")
    if isinstance(val_documents, bool) or not isinstance(val_documents, int) or val_documents < 1:
        raise DataError(f"--val-documents must be a positive integer, got {val_documents!r}")
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise DataError(f"--shard-tokens must be a positive integer, got {shard_tokens!r}")
    # The prefix becomes part of file names and of the glob that finds them again.
    if not prefix or any(character in prefix for character in "/\\*?[]"):
        raise DataError(f"--prefix {prefix!r} must be a non-empty file name part without / \\ * ? [ ]")


def _count_documents(paths: list[Path], val_documents: int) -> int:
    """Count the input documents, checking every file before any expensive step."""
    count = sum(1 for _ in iter_documents(paths))
    if count <= val_documents:
        raise DataError(
            f"the inputs contain {count} documents, but --val-documents {val_documents} leaves none for training; "
            f"lower --val-documents below {count} or add documents"
        )
    return count


def _get_tokenizer(
    paths: list[Path], output_dir: Path, tokenizer_path, train_tokenizer_vocab
) -> tuple[spm.SentencePieceProcessor, Path]:
    if train_tokenizer_vocab is not None:
        model_path = train_tokenizer(paths, output_dir / TOKENIZER_NAME, train_tokenizer_vocab)
        return load_tokenizer(model_path, train_tokenizer_vocab), model_path
    sp = load_tokenizer(tokenizer_path)
    if sp.get_piece_size() > MAX_TOKEN_ID + 1:
        raise DataError(
            f"TOKENIZER_PATH={tokenizer_path} has {sp.get_piece_size()} pieces, more than uint16 shards "
            f"can store ({MAX_TOKEN_ID + 1}); use a smaller tokenizer"
        )
    if sp.bos_id() != BOS_ID:
        raise DataError(
            f"TOKENIZER_PATH={tokenizer_path} has bos_id {sp.bos_id()}, but the shard format uses {BOS_ID}; "
            "train the tokenizer with bos_id=1"
        )
    return sp, Path(tokenizer_path)


def _remove_stale_shards(output_dir: Path, prefix: str, split: str, keep: list[Path]) -> None:
    """Delete shards of an earlier run that this run did not overwrite.

    A leftover `{prefix}_train_000007.bin` would otherwise join the training
    glob and mix two datasets.
    """
    kept = {path.name for path in keep}
    for path in output_dir.glob(f"{prefix}_{split}_*.bin"):
        if path.name not in kept:
            path.unlink()
            logger.info("removed stale shard %s", path)


def _relative_or_absolute(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def prepare(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    tokenizer_path: str | os.PathLike | None = None,
    train_tokenizer_vocab: int | None = None,
    val_documents: int = DEFAULT_VAL_DOCUMENTS,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    prefix: str = "fineweb",
    num_threads: int | None = None,
) -> dict:
    """Tokenize .txt/.jsonl documents into validation and training shards.

    Give either `tokenizer_path` (an existing SentencePiece model) or
    `train_tokenizer_vocab` (train one with the challenge settings into
    output_dir/tokenizer.model). Writes `{prefix}_val_NNNNNN.bin`,
    `{prefix}_train_NNNNNN.bin` and MANIFEST.json atomically, removes older
    shards of the same prefix, and returns the manifest as a dict.
    Raises DataError for missing or empty inputs and when there are not more
    than `val_documents` documents.

    NOTE: the input files are read three times (count, train the tokenizer,
    encode) instead of being held in memory, so they must not change meanwhile.
    """
    _check_settings(val_documents, shard_tokens, prefix, tokenizer_path, train_tokenizer_vocab)
    paths = as_path_list(inputs)
    document_count = _count_documents(paths, val_documents)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    sp, model_path = _get_tokenizer(paths, output_dir, tokenizer_path, train_tokenizer_vocab)

    writers = {split: _ShardWriter(output_dir, prefix, split, shard_tokens) for split in ("val", "train")}
    val_bytes_utf8 = 0
    documents = iter_documents(paths)
    val_texts = islice(documents, val_documents)

    def counted_val_texts() -> Iterator[str]:
        nonlocal val_bytes_utf8
        for text in val_texts:
            val_bytes_utf8 += len(text.encode("utf-8"))
            yield text

    threads = num_threads or available_cpus()
    for tokens in _document_tokens(sp, counted_val_texts(), threads):
        writers["val"].add_document(tokens)
    for tokens in _document_tokens(sp, documents, threads):
        writers["train"].add_document(tokens)

    shard_paths = {split: writer.close() for split, writer in writers.items()}
    for split, written in shard_paths.items():
        _remove_stale_shards(output_dir, prefix, split, written)

    manifest = {
        "tokenizer": _relative_or_absolute(model_path, output_dir),
        "vocab_size": sp.get_piece_size(),
        "bos_id": BOS_ID,
        "documents": document_count,
        "val_docs": writers["val"].documents,
        "val_tokens": writers["val"].tokens,
        "val_shards": len(shard_paths["val"]),
        "val_bytes_utf8": val_bytes_utf8,
        "train_docs": writers["train"].documents,
        "train_tokens": writers["train"].tokens,
        "train_shards": len(shard_paths["train"]),
        "shard_tokens": shard_tokens,
        "prefix": prefix,
        "inputs": [str(path) for path in paths],
    }
    payload = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
    write_bytes_atomic(output_dir / MANIFEST_NAME, payload)
    return manifest
