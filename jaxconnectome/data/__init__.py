"""Data layer: challenge-format token shards, batches, tokenizer and bits per byte.

Importing this package does not import jax; only the jax twins in
`byte_counts` (`ByteTables.to_jax`, `target_bytes_jax`) do, when called.
"""

from .byte_counts import ByteTables, bits_per_byte, build_byte_tables, count_target_bytes, target_bytes_jax
from .demo_corpus import build_demo_corpus, prepare_demo_data, write_demo_corpus
from .documents import iter_documents, read_documents
from .prepare import prepare
from .shards import (
    BOS_ID,
    HEADER_INTS,
    SHARD_MAGIC,
    SHARD_VERSION,
    DataError,
    ShardHeader,
    check_token_ids,
    find_shards,
    read_header,
    read_shard,
    write_shard,
)
from .stream import TokenStream, TrainLoader, load_validation_tokens, validation_sequences
from .tokenizer import TRAINER_SETTINGS, load_tokenizer, train_tokenizer

__all__ = [
    "BOS_ID",
    "HEADER_INTS",
    "SHARD_MAGIC",
    "SHARD_VERSION",
    "TRAINER_SETTINGS",
    "ByteTables",
    "DataError",
    "ShardHeader",
    "TokenStream",
    "TrainLoader",
    "bits_per_byte",
    "build_byte_tables",
    "build_demo_corpus",
    "check_token_ids",
    "count_target_bytes",
    "find_shards",
    "iter_documents",
    "load_tokenizer",
    "load_validation_tokens",
    "prepare",
    "prepare_demo_data",
    "read_documents",
    "read_header",
    "read_shard",
    "target_bytes_jax",
    "train_tokenizer",
    "validation_sequences",
    "write_demo_corpus",
    "write_shard",
]
