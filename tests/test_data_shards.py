"""Shard format, training stream and validation split, checked against hand-made examples."""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest

from jaxconnectome.data import (
    BOS_ID,
    SHARD_MAGIC,
    DataError,
    TokenStream,
    TrainLoader,
    check_token_ids,
    find_shards,
    load_validation_tokens,
    read_header,
    read_shard,
    validation_sequences,
    write_shard,
)
from shared_data import shared_path


def header_ints(path):
    return np.fromfile(path, dtype="<i4", count=256)


def assert_one_line_naming(error, name):
    message = str(error.value)
    assert name in message
    assert "\n" not in message


# --- shard files ---


def test_shard_round_trip(tmp_path):
    tokens = np.array([1, 5, 0, 65535, 1024, 1, 7], dtype=np.int64)
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, tokens)

    assert path.stat().st_size == 1024 + 2 * tokens.size
    header = header_ints(path)
    assert header[0] == SHARD_MAGIC
    assert header[1] == 1
    assert header[2] == tokens.size
    assert not header[3:].any()
    assert read_header(path).token_count == tokens.size

    loaded = read_shard(path)
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, tokens)
    raw = np.fromfile(path, dtype="<u2", offset=1024)
    np.testing.assert_array_equal(raw, tokens)


def test_shard_empty_round_trip(tmp_path):
    path = tmp_path / "empty.bin"
    write_shard(path, np.array([], dtype=np.int32))
    assert path.stat().st_size == 1024
    assert read_shard(path).size == 0


@pytest.mark.parametrize("bad_value", [-1, 65536])
def test_write_shard_rejects_out_of_range(tmp_path, bad_value):
    path = tmp_path / "out.bin"
    with pytest.raises(DataError) as error:
        write_shard(path, np.array([1, bad_value, 3]))
    assert str(bad_value) in str(error.value)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_write_shard_replaces_atomically(tmp_path):
    path = tmp_path / "shard.bin"
    write_shard(path, np.arange(10))
    write_shard(path, np.arange(3))
    np.testing.assert_array_equal(read_shard(path), [0, 1, 2])
    assert [entry.name for entry in tmp_path.iterdir()] == ["shard.bin"]


def corrupt_magic(path):
    data = bytearray(path.read_bytes())
    data[0:4] = np.array([123], dtype="<i4").tobytes()
    path.write_bytes(bytes(data))


def corrupt_version(path):
    data = bytearray(path.read_bytes())
    data[4:8] = np.array([2], dtype="<i4").tobytes()
    path.write_bytes(bytes(data))


def truncate_header(path):
    path.write_bytes(path.read_bytes()[:500])


def truncate_tokens(path):
    path.write_bytes(path.read_bytes()[:-2])


def append_bytes(path):
    path.write_bytes(path.read_bytes() + b"\x00\x00")


@pytest.mark.parametrize(
    ("corrupt", "expected_words"),
    [
        (corrupt_magic, "bad magic 123"),
        (corrupt_version, "version 2"),
        (truncate_header, "truncated header"),
        (truncate_tokens, "does not match"),
        (append_bytes, "does not match"),
    ],
)
def test_corrupt_shard_raises(tmp_path, corrupt, expected_words):
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, np.arange(20))
    corrupt(path)
    with pytest.raises(DataError) as error:
        read_shard(path)
    assert_one_line_naming(error, "fineweb_val_000000.bin")
    assert expected_words in str(error.value)
    assert "prepare" in str(error.value)


def test_missing_shard_raises(tmp_path):
    with pytest.raises(DataError) as error:
        read_shard(tmp_path / "absent.bin")
    assert_one_line_naming(error, "absent.bin")


def test_find_shards_no_match(tmp_path):
    pattern = str(tmp_path / "fineweb_train_*.bin")
    with pytest.raises(DataError) as error:
        find_shards(pattern)
    assert_one_line_naming(error, pattern)
    assert "python -m jaxconnectome.data prepare" in str(error.value)


def test_find_shards_sorted(tmp_path):
    for name in ["b_000002.bin", "b_000000.bin", "b_000001.bin"]:
        write_shard(tmp_path / name, np.arange(2))
    names = [path.name for path in find_shards(tmp_path / "b_*.bin")]
    assert names == ["b_000000.bin", "b_000001.bin", "b_000002.bin"]


def test_check_token_ids(tmp_path):
    check_token_ids(np.array([0, 1023], dtype=np.uint16), 1024, "ok.bin")
    with pytest.raises(DataError) as error:
        check_token_ids(np.array([0, 1024], dtype=np.uint16), 1024, tmp_path / "big.bin")
    assert_one_line_naming(error, "big.bin")
    assert "VOCAB_SIZE=1024" in str(error.value)


def test_real_shards_match_manifest():
    folder = shared_path("data", "datasets", "web_sp1024")
    manifest = json.loads((folder / "MANIFEST.json").read_text())

    train_paths = find_shards(folder / "fineweb_train_*.bin")
    val_paths = find_shards(folder / "fineweb_val_*.bin")
    assert len(train_paths) == manifest["train_shards"]

    train = [read_shard(path) for path in train_paths]
    val = [read_shard(path) for path in val_paths]
    assert sum(tokens.size for tokens in train) == manifest["train_tokens"]
    assert sum(tokens.size for tokens in val) == manifest["val_tokens"]
    assert sum(int((tokens == BOS_ID).sum()) for tokens in train) == manifest["train_docs"]
    assert sum(int((tokens == BOS_ID).sum()) for tokens in val) == manifest["val_docs"]
    assert val[0][0] == BOS_ID
    for tokens in train + val:
        check_token_ids(tokens, 1024, "real shard")


# --- training stream ---


@pytest.fixture
def two_shards(tmp_path):
    first = tmp_path / "fineweb_train_000000.bin"
    second = tmp_path / "fineweb_train_000001.bin"
    write_shard(first, np.arange(100, 113))  # 13 tokens: 100..112
    write_shard(second, np.arange(200, 208))  # 8 tokens: 200..207
    return tmp_path, [first, second]


def test_stream_crosses_and_wraps(two_shards):
    _, paths = two_shards
    stream = TokenStream(paths)

    np.testing.assert_array_equal(stream.take(10), np.arange(100, 110))
    np.testing.assert_array_equal(stream.take(5), [110, 111, 112, 200, 201])
    np.testing.assert_array_equal(stream.take(8), [202, 203, 204, 205, 206, 207, 100, 101])
    np.testing.assert_array_equal(stream.take(0), [])
    # A take longer than all shards together wraps more than once.
    expected = list(range(102, 113)) + list(range(200, 208)) + list(range(100, 113)) + [200]
    np.testing.assert_array_equal(stream.take(len(expected)), expected)


def test_stream_state_restore(two_shards):
    _, paths = two_shards
    stream = TokenStream(paths)
    stream.take(11)
    state = stream.state()
    assert state == {"shard_index": 0, "position": 11}
    expected = stream.take(9)

    resumed = TokenStream(paths)
    resumed.restore(json.loads(json.dumps(state)))
    np.testing.assert_array_equal(resumed.take(9), expected)
    assert resumed.state() == {"shard_index": 1, "position": 7}

    with pytest.raises(DataError):
        resumed.restore({"shard_index": 2, "position": 0})
    with pytest.raises(DataError):
        resumed.restore({"shard_index": 1, "position": 9})


def test_stream_skips_empty_shard(tmp_path):
    write_shard(tmp_path / "s_0.bin", np.array([1, 2]))
    write_shard(tmp_path / "s_1.bin", np.array([], dtype=np.int64))
    write_shard(tmp_path / "s_2.bin", np.array([3]))
    stream = TokenStream(find_shards(tmp_path / "s_*.bin"))
    np.testing.assert_array_equal(stream.take(7), [1, 2, 3, 1, 2, 3, 1])


def test_stream_rejects_all_empty(tmp_path):
    write_shard(tmp_path / "s_0.bin", np.array([], dtype=np.int64))
    with pytest.raises(DataError):
        TokenStream([tmp_path / "s_0.bin"])


def test_train_loader_reference_slices(two_shards):
    folder, _ = two_shards
    loader = TrainLoader(folder / "fineweb_train_*.bin", world_size=2)
    # 16 tokens per step over 2 workers and 2 micro-steps: 4 tokens each, so every
    # micro-step takes (4 + 1) * 2 = 10 stream tokens.
    inputs, targets = loader.next_batch(global_tokens=16, seq_len=2, grad_accum_steps=2)

    assert inputs.shape == (2, 2, 2, 2)
    assert inputs.dtype == np.int32
    assert targets.dtype == np.int32
    # Micro-step 0 takes 100..109: worker 0 gets 100..104 and worker 1 gets 105..109.
    np.testing.assert_array_equal(inputs[0, 0], [[100, 101], [102, 103]])
    np.testing.assert_array_equal(targets[0, 0], [[101, 102], [103, 104]])
    np.testing.assert_array_equal(inputs[0, 1], [[105, 106], [107, 108]])
    np.testing.assert_array_equal(targets[0, 1], [[106, 107], [108, 109]])
    # Micro-step 1 takes 110, 111, 112, 200..206, crossing into the second shard.
    np.testing.assert_array_equal(inputs[1, 0], [[110, 111], [112, 200]])
    np.testing.assert_array_equal(targets[1, 0], [[111, 112], [200, 201]])
    np.testing.assert_array_equal(inputs[1, 1], [[202, 203], [204, 205]])
    np.testing.assert_array_equal(targets[1, 1], [[203, 204], [205, 206]])

    # The next step starts at 207 and wraps to the first shard.
    inputs, targets = loader.next_batch(16, 2, 2)
    np.testing.assert_array_equal(inputs[0, 0], [[207, 100], [101, 102]])
    np.testing.assert_array_equal(targets[0, 0], [[100, 101], [102, 103]])


def test_train_loader_selected_ranks(two_shards):
    folder, _ = two_shards
    full = TrainLoader(folder / "fineweb_train_*.bin", world_size=2)
    only_second = TrainLoader(folder / "fineweb_train_*.bin", world_size=2, ranks=[1])
    full_inputs, full_targets = full.next_batch(16, 2, 2)
    inputs, targets = only_second.next_batch(16, 2, 2)
    assert inputs.shape == (2, 1, 2, 2)
    np.testing.assert_array_equal(inputs[:, 0], full_inputs[:, 1])
    np.testing.assert_array_equal(targets[:, 0], full_targets[:, 1])


def test_train_loader_rejects_indivisible_batch(two_shards):
    folder, _ = two_shards
    loader = TrainLoader(folder / "fineweb_train_*.bin", world_size=2)
    with pytest.raises(DataError) as error:
        loader.next_batch(global_tokens=12, seq_len=2, grad_accum_steps=2)
    assert_one_line_naming(error, "TRAIN_BATCH_TOKENS=12")
    assert "8" in str(error.value)
    with pytest.raises(DataError):
        TrainLoader(folder / "fineweb_train_*.bin", world_size=2, ranks=[2])


# --- validation ---


def test_validation_trim_and_split(tmp_path):
    # Shards are concatenated in sorted name order, whatever order they were written in.
    write_shard(tmp_path / "fineweb_val_000001.bin", np.arange(16, 21))
    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(10, 16))
    tokens = load_validation_tokens(tmp_path / "fineweb_val_*.bin", seq_len=3)
    # N = 11 tokens: floor((11 - 1) / 3) * 3 + 1 = 10.
    np.testing.assert_array_equal(tokens, np.arange(10, 20))

    # 3 sequences over 2 workers: worker 0 gets [0, 1), worker 1 gets [1, 3).
    inputs, targets = validation_sequences(tokens, 3, rank=0, world_size=2)
    np.testing.assert_array_equal(inputs, [[10, 11, 12]])
    np.testing.assert_array_equal(targets, [[11, 12, 13]])
    inputs, targets = validation_sequences(tokens, 3, rank=1, world_size=2)
    np.testing.assert_array_equal(inputs, [[13, 14, 15], [16, 17, 18]])
    np.testing.assert_array_equal(targets, [[14, 15, 16], [17, 18, 19]])
    assert inputs.dtype == np.int32


def test_validation_split_covers_all(tmp_path):
    tokens = np.arange(3 * 7 + 1)
    shares = [validation_sequences(tokens, 3, rank, 4)[0] for rank in range(4)]
    # 7 sequences over 4 workers: 7*r//4 gives boundaries 0, 1, 3, 5, 7.
    assert [share.shape[0] for share in shares] == [1, 2, 2, 2]
    np.testing.assert_array_equal(np.concatenate(shares).reshape(-1), tokens[:-1])

    # 2 sequences over 4 workers: 2*r//4 gives boundaries 0, 0, 1, 1, 2.
    more_workers = [validation_sequences(np.arange(7), 3, rank, 4)[0] for rank in range(4)]
    assert [share.shape for share in more_workers] == [(0, 3), (1, 3), (0, 3), (1, 3)]


def test_validation_too_short(tmp_path):
    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(4))
    pattern = str(tmp_path / "fineweb_val_*.bin")
    with pytest.raises(DataError) as error:
        load_validation_tokens(pattern, seq_len=4)
    assert_one_line_naming(error, pattern)
    assert "TRAIN_SEQ_LEN" in str(error.value)
    assert load_validation_tokens(pattern, seq_len=3).size == 4
