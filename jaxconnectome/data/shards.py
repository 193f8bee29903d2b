"""Read and write token shards in the Parameter Golf challenge format.

A shard is a header of 256 little-endian int32 values (magic 20240520, version 1,
token count, then zeros) followed by the tokens as little-endian uint16. Documents
inside a shard are BOS (id 1) followed by their tokens, with no EOS.
"""

from __future__ import annotations

import glob
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
BOS_ID = 1
MAX_TOKEN_ID = np.iinfo(np.uint16).max

PREPARE_HINT = "regenerate it with `python -m jaxconnectome.data prepare`"


class DataError(ValueError):
    """Invalid or missing data, tokenizer or data setting.

    The message is one line that names the file or setting and the fix.
    """


@dataclass(frozen=True)
class ShardHeader:
    """Header fields of a shard file that passed validation."""

    version: int
    token_count: int


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> None:
    """Write a file so that readers see either the old file or the complete new one.

    The bytes go to a temporary file in the same folder, which `os.replace` then
    renames over the target, so a crash never leaves a half-written file. The
    file gets the usual permissions (0o666 minus the umask), unlike mkstemp's 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    handle = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(payload)
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def encode_shard(tokens: np.ndarray) -> bytes:
    """Return the bytes of a shard file holding `tokens`.

    Raises DataError when a value does not fit in uint16, because the shard would
    otherwise store a silently wrapped id.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise DataError(f"shard tokens must be a 1-D array, got shape {tokens.shape}; flatten them first")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise DataError(f"shard tokens must be integers, got dtype {tokens.dtype}; pass token ids, not floats")
    if tokens.size:
        smallest = int(tokens.min())
        largest = int(tokens.max())
        if smallest < 0 or largest > MAX_TOKEN_ID:
            bad = smallest if smallest < 0 else largest
            raise DataError(
                f"token id {bad} does not fit in a uint16 shard (allowed 0..{MAX_TOKEN_ID}); "
                "use a tokenizer with at most 65536 pieces"
            )
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = SHARD_MAGIC
    header[1] = SHARD_VERSION
    header[2] = tokens.size
    return header.tobytes() + tokens.astype("<u2").tobytes()


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> None:
    """Write `tokens` as a shard file, atomically."""
    write_bytes_atomic(path, encode_shard(tokens))


def read_header(path: str | os.PathLike) -> ShardHeader:
    """Read and validate a shard header against the file size.

    Raises DataError naming the file when it is missing, has a wrong magic or
    version, or when its size differs from 1024 + 2 * token count bytes.
    """
    path = Path(path)
    try:
        with path.open("rb") as shard_file:
            raw = shard_file.read(HEADER_BYTES)
        file_size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: shard file not found; {PREPARE_HINT}") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read shard ({error.strerror}); check the file permissions") from None

    if len(raw) < HEADER_BYTES:
        raise DataError(
            f"{path.name}: truncated header ({len(raw)} of {HEADER_BYTES} bytes); {PREPARE_HINT}"
        )
    header = np.frombuffer(raw, dtype="<i4")
    magic, version, token_count = (int(value) for value in header[:3])
    if magic != SHARD_MAGIC:
        raise DataError(f"{path.name}: bad magic {magic} (expected {SHARD_MAGIC}); {PREPARE_HINT}")
    if version != SHARD_VERSION:
        raise DataError(f"{path.name}: unsupported version {version} (expected {SHARD_VERSION}); {PREPARE_HINT}")
    if token_count < 0:
        raise DataError(f"{path.name}: negative token count {token_count} in header; {PREPARE_HINT}")

    expected_size = HEADER_BYTES + 2 * token_count
    if file_size != expected_size:
        raise DataError(
            f"{path.name}: file size {file_size} bytes does not match the header "
            f"({token_count} tokens need {expected_size} bytes); {PREPARE_HINT}"
        )
    return ShardHeader(version=version, token_count=token_count)


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """Read all tokens of a validated shard as a uint16 array."""
    header = read_header(path)
    tokens = np.fromfile(path, dtype="<u2", count=header.token_count, offset=HEADER_BYTES)
    if tokens.size != header.token_count:
        # The size was checked a moment ago, so only a concurrent writer gets here.
        raise DataError(f"{Path(path).name}: short read ({tokens.size} of {header.token_count} tokens); {PREPARE_HINT}")
    return tokens.astype(np.uint16, copy=False)


def find_shards(pattern: str | os.PathLike) -> list[Path]:
    """Return the files matching a glob pattern, sorted by name.

    The sorted order fixes which shard the training stream reads first and how
    validation shards are concatenated.
    """
    pattern = str(pattern)
    paths = sorted(Path(name) for name in glob.glob(pattern))
    paths = [path for path in paths if path.is_file()]
    if not paths:
        raise DataError(
            f"no shard files match {pattern}; create them with `python -m jaxconnectome.data prepare` "
            "or download the challenge shards, then set DATA_PATH to their folder"
        )
    return paths


def check_token_ids(tokens: np.ndarray, vocab_size: int, path: str | os.PathLike) -> None:
    """Raise DataError when a token id is outside [0, vocab_size).

    Shards made with a larger tokenizer would otherwise index past the embedding
    table, and JAX indexing reports no error for that.
    """
    tokens = np.asarray(tokens)
    if tokens.size == 0:
        return
    largest = int(tokens.max())
    if largest >= vocab_size:
        raise DataError(
            f"{Path(path).name}: token id {largest} is not below VOCAB_SIZE={vocab_size}; "
            "set VOCAB_SIZE to the tokenizer's size or regenerate the shards with the matching tokenizer"
        )
