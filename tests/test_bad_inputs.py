"""Every bad input gets a one-line message naming the file or setting, and a non-zero exit."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import train
from shared_data import shared_path
from jaxconnectome.data import write_shard
from jaxconnectome.data.shards import HEADER_INTS, SHARD_MAGIC

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    """A valid shard set: one train and one validation shard of in-vocabulary tokens."""
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_shard(folder / "fineweb_train_000000.bin", rng.integers(0, 1024, 5000))
    write_shard(folder / "fineweb_val_000000.bin", rng.integers(0, 1024, 600))
    return folder


def run_train(monkeypatch, tmp_path, capsys, data: Path, *overrides: str, tokenizer: Path | None = None):
    """Call train.main in-process from tmp_path; return (exit code, stderr)."""
    monkeypatch.chdir(tmp_path)
    tokenizer = tokenizer or shared_path("data", "tokenizers", "fineweb_1024_bpe.model")
    args = ["--set", f"data_path={data}", "--set", f"tokenizer_path={tokenizer}", "--set", "train_seq_len=64",
            "--set", "train_batch_tokens=512", "--set", "grad_accum_steps=1", "--set", "run_id=bad"]
    for item in overrides:
        args += ["--set", item]
    code = train.main(args)
    err = capsys.readouterr().err
    return code, err


def assert_rejected(code: int, err: str, *words: str, tmp_path: Path | None = None) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    if tmp_path is not None:
        assert not (tmp_path / "runs").exists(), "no run folder before the inputs are checked"


def rewrite_header(path: Path, index: int, value: int) -> None:
    raw = bytearray(path.read_bytes())
    header = np.frombuffer(bytes(raw[: 4 * HEADER_INTS]), "<i4").copy()
    header[index] = value
    raw[: 4 * HEADER_INTS] = header.tobytes()
    path.write_bytes(bytes(raw))


def test_bad_magic(monkeypatch, tmp_path, capsys, data_dir):
    rewrite_header(data_dir / "fineweb_train_000000.bin", 0, 12345)
    assert_rejected(*run_train(monkeypatch, tmp_path, capsys, data_dir), "fineweb_train_000000.bin", "bad magic 12345",
                    str(SHARD_MAGIC), tmp_path=tmp_path)


def test_bad_version(monkeypatch, tmp_path, capsys, data_dir):
    rewrite_header(data_dir / "fineweb_val_000000.bin", 1, 7)
    assert_rejected(*run_train(monkeypatch, tmp_path, capsys, data_dir), "fineweb_val_000000.bin", "version 7",
                    tmp_path=tmp_path)


def test_size_disagrees_with_token_count(monkeypatch, tmp_path, capsys, data_dir):
    rewrite_header(data_dir / "fineweb_train_000000.bin", 2, 4000)
    assert_rejected(*run_train(monkeypatch, tmp_path, capsys, data_dir), "fineweb_train_000000.bin", "file size",
                    "4000 tokens", tmp_path=tmp_path)


def test_truncated_shard(monkeypatch, tmp_path, capsys, data_dir):
    path = data_dir / "fineweb_train_000000.bin"
    path.write_bytes(path.read_bytes()[:-100])
    assert_rejected(*run_train(monkeypatch, tmp_path, capsys, data_dir), "fineweb_train_000000.bin", "does not match",
                    tmp_path=tmp_path)


def test_token_id_above_vocabulary(monkeypatch, tmp_path, capsys, data_dir):
    tokens = np.full(5000, 5, np.int64)
    tokens[1234] = 2000
    write_shard(data_dir / "fineweb_train_000000.bin", tokens)
    assert_rejected(*run_train(monkeypatch, tmp_path, capsys, data_dir), "fineweb_train_000000.bin", "2000",
                    "VOCAB_SIZE=1024", tmp_path=tmp_path)


def test_missing_shards(monkeypatch, tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert_rejected(*run_train(monkeypatch, tmp_path, capsys, empty), f"DATA_PATH={empty}", "no fineweb_train_*.bin",
                    tmp_path=tmp_path)


def test_empty_shard_set(monkeypatch, tmp_path, capsys, data_dir):
    write_shard(data_dir / "fineweb_train_000000.bin", np.zeros(0, np.int64))
    assert_rejected(*run_train(monkeypatch, tmp_path, capsys, data_dir), "empty", tmp_path=tmp_path)


def test_validation_shorter_than_a_sequence(monkeypatch, tmp_path, capsys, data_dir):
    write_shard(data_dir / "fineweb_val_000000.bin", np.arange(40))
    assert_rejected(*run_train(monkeypatch, tmp_path, capsys, data_dir), "fineweb_val_*.bin", "TRAIN_SEQ_LEN",
                    tmp_path=tmp_path)


def test_tokenizer_not_sentencepiece(monkeypatch, tmp_path, capsys, data_dir):
    fake = tmp_path / "tokenizer.model"
    fake.write_text("this is not a model")
    code, err = run_train(monkeypatch, tmp_path, capsys, data_dir, tokenizer=fake)
    assert_rejected(code, err, "TOKENIZER_PATH", str(fake), tmp_path=tmp_path)


def test_tokenizer_size_differs_from_vocab(monkeypatch, tmp_path, capsys, data_dir):
    code, err = run_train(monkeypatch, tmp_path, capsys, data_dir, "vocab_size=2048")
    assert_rejected(code, err, "VOCAB_SIZE=2048", "1024", tmp_path=tmp_path)


@pytest.mark.parametrize(
    "override, words",
    [
        ("train_batch_tokens=1000", ["TRAIN_BATCH_TOKENS=1000", "divisible"]),
        ("embed_dim=0", ["EMBED_DIM=0", "positive"]),
        ("iterations=-5", ["ITERATIONS=-5", "positive"]),
        ("topology=ring", ["TOPOLOGY='ring'", "random_sparse"]),
        ("lr_schedule=step", ["LR_SCHEDULE='step'", "cosine"]),
        ("embed_dims=512", ["embed_dims=512", "unknown setting 'embed_dims'"]),
        ("fsdp=3", ["FSDP=3", "divisor"]),
    ],
)
def test_impossible_settings(monkeypatch, tmp_path, capsys, data_dir, override, words):
    assert_rejected(*run_train(monkeypatch, tmp_path, capsys, data_dir, override), *words, tmp_path=tmp_path)


def test_unknown_environment_value(monkeypatch, tmp_path, capsys, data_dir):
    monkeypatch.setenv("NUM_HOPS", "six")
    assert_rejected(*run_train(monkeypatch, tmp_path, capsys, data_dir), "NUM_HOPS", "'six'", tmp_path=tmp_path)


def test_command_line_error_has_no_traceback(tmp_path, data_dir):
    rewrite_header(data_dir / "fineweb_train_000000.bin", 0, 1)
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--set", f"data_path={data_dir}", "--set",
         f"tokenizer_path={shared_path('data', 'tokenizers', 'fineweb_1024_bpe.model')}", "--set", "train_seq_len=64"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: fineweb_train_000000.bin: bad magic 1")
