"""Bits-per-byte byte counting with the real challenge tokenizer."""

import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest

from jaxconnectome.data import (
    BOS_ID,
    DataError,
    bits_per_byte,
    build_byte_tables,
    count_target_bytes,
    load_tokenizer,
    target_bytes_jax,
)
from shared_data import shared_path

SNOWMAN = "\u2603"  # Not in the challenge vocabulary, so it encodes to <unk>.
LIGATURE_FI = "\ufb01"  # NFKC turns this 3-byte character into the 2 bytes "fi".


@pytest.fixture(scope="module")
def sp():
    return load_tokenizer(shared_path("data", "tokenizers", "fineweb_1024_bpe.model"), 1024)


@pytest.fixture(scope="module")
def tables(sp):
    return build_byte_tables(sp, 1024)


def piece_id(sp, piece):
    token_id = sp.piece_to_id(piece)
    assert sp.id_to_piece(token_id) == piece, f"{piece!r} is not in the vocabulary"
    return token_id


def test_challenge_tokenizer_has_no_byte_pieces(sp):
    assert sp.get_piece_size() == 1024
    assert not any(sp.is_byte(token_id) for token_id in range(sp.get_piece_size()))


@pytest.mark.parametrize(
    ("piece", "base_bytes", "leading_space"),
    [
        ("\u2581the", 3, True),
        ("\u2581and", 3, True),
        ("ing", 3, False),
        (".", 1, False),
        ("\u2581", 0, True),
        ("\u2581\u201c", 3, True),  # left double quotation mark, 3 UTF-8 bytes
        ("\u2019", 3, False),  # right single quotation mark
        ("\u2014", 3, False),  # em dash
    ],
)
def test_byte_table_pieces(sp, tables, piece, base_bytes, leading_space):
    token_id = piece_id(sp, piece)
    assert tables.base_bytes[token_id] == base_bytes
    assert tables.has_leading_space[token_id] == leading_space
    assert not tables.is_boundary[token_id]


@pytest.mark.parametrize("piece", ["<pad>", "<s>", "</s>", "<unk>"])
def test_byte_table_boundaries(sp, tables, piece):
    token_id = piece_id(sp, piece)
    assert tables.is_boundary[token_id]
    assert tables.base_bytes[token_id] == 0
    assert not tables.has_leading_space[token_id]


def test_byte_table_ids_past_tokenizer(sp):
    wider = build_byte_tables(sp, 1030)
    assert wider.base_bytes.shape == (1030,)
    assert wider.is_boundary[1024:].all()
    assert not wider.base_bytes[1024:].any()
    assert wider.base_bytes.dtype == np.int32
    assert wider.has_leading_space.dtype == np.bool_


def ascii_sample(path, length=2000):
    """Return the first `length` characters of ASCII text from the corpus, with single spaces."""
    for document in path.read_text(encoding="utf-8").split("\n\n"):
        text = " ".join(document.split())
        if len(text) >= length and text[:length].isascii():
            return text[:length].rsplit(" ", 1)[0]
    pytest.fail(f"no ASCII document of {length} characters in {path}")


def bytes_by_rule(sp, input_ids, target_ids):
    """Count target bytes from the decoded pieces, independently of the library."""

    def is_boundary(token_id):
        return sp.is_control(token_id) or sp.is_unknown(token_id) or sp.is_unused(token_id)

    total = 0
    for previous, token in zip(input_ids, target_ids):
        if is_boundary(token):
            continue
        piece = sp.id_to_piece(token)
        if piece.startswith("\u2581"):
            total += len(piece[1:].encode("utf-8"))
            if not is_boundary(previous):
                total += 1
        else:
            total += len(piece.encode("utf-8"))
    return total


def test_val_bpb_real_text(sp, tables):
    sample = ascii_sample(shared_path("data", "corpora", "c4_sample.txt"))
    words = sample.split(" ")
    words[5] = SNOWMAN
    words[40] = f"{LIGATURE_FI}nd"
    words[80] = f"{SNOWMAN}{SNOWMAN}"
    text = " ".join(words)

    ids = sp.encode(text)
    unknown_count = sum(sp.is_unknown(token_id) for token_id in ids)
    # Two <unk> tokens: one per snowman group, because SentencePiece merges adjacent unknowns.
    assert unknown_count == 2
    assert "fi" in sp.decode(ids)
    assert LIGATURE_FI not in sp.decode(ids)

    tokens = np.array([BOS_ID, *ids])
    input_ids, target_ids = tokens[:-1], tokens[1:]
    expected_bytes = bytes_by_rule(sp, input_ids.tolist(), target_ids.tolist())
    counted = count_target_bytes(tables, input_ids, target_ids)
    assert counted.shape == target_ids.shape
    assert int(counted.sum()) == expected_bytes

    # <unk> counts 0 bytes and hides the space after it. NFKC shortens the ligature by one byte.
    raw_bytes = len(text.encode("utf-8"))
    lost_to_unknown = (3 + 1) + (6 + 1)
    assert expected_bytes != raw_bytes
    assert expected_bytes == raw_bytes - lost_to_unknown - 1

    loss_mean_nats = 2.345
    token_count = target_ids.size
    value = bits_per_byte(loss_mean_nats * token_count, token_count, expected_bytes)
    assert value == pytest.approx(loss_mean_nats / math.log(2) * token_count / expected_bytes, rel=1e-12)


def test_count_bytes_after_boundary(sp, tables):
    the = piece_id(sp, "\u2581the")
    dot = piece_id(sp, ".")
    unknown = piece_id(sp, "<unk>")
    inputs = np.array([[BOS_ID, dot, unknown]])
    targets = np.array([[the, the, the]])
    np.testing.assert_array_equal(count_target_bytes(tables, inputs, targets), [[3, 4, 3]])


def test_count_bytes_rejects_bad_ids(tables):
    with pytest.raises(DataError):
        count_target_bytes(tables, np.array([1, 2]), np.array([1, 1024]))
    with pytest.raises(DataError):
        count_target_bytes(tables, np.array([-1, 2]), np.array([1, 5]))
    with pytest.raises(DataError):
        count_target_bytes(tables, np.array([1, 2, 3]), np.array([1, 5]))


def test_jax_twin_matches_numpy(tables):
    import jax

    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 1024, size=(4, 64))
    targets = rng.integers(0, 1024, size=(4, 64))
    inputs[:, ::7] = BOS_ID
    expected = count_target_bytes(tables, inputs, targets)

    jax_tables = tables.to_jax()
    eager = target_bytes_jax(jax_tables, inputs, targets)
    np.testing.assert_array_equal(np.asarray(eager), expected)

    jitted = jax.jit(target_bytes_jax)(jax_tables, inputs, targets)
    np.testing.assert_array_equal(np.asarray(jitted), expected)


def test_bits_per_byte_formula():
    assert bits_per_byte(math.log(2) * 100, 100, 50) == pytest.approx(2.0)
    with pytest.raises(DataError):
        bits_per_byte(1.0, 10, 0)
