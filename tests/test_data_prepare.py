"""Document reading, tokenizer training, shard preparation and the data command line."""

import json
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest

from jaxconnectome.data.documents import normalize_document
from jaxconnectome.data import (
    BOS_ID,
    DataError,
    build_byte_tables,
    build_demo_corpus,
    count_target_bytes,
    find_shards,
    load_tokenizer,
    prepare,
    prepare_demo_data,
    read_documents,
    read_shard,
    train_tokenizer,
    write_demo_corpus,
    write_shard,
)
from shared_data import shared_path

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def challenge_model():
    return shared_path("data", "tokenizers", "fineweb_1024_bpe.model")


@pytest.fixture(scope="module")
def sp(challenge_model):
    return load_tokenizer(challenge_model, 1024)


@pytest.fixture(scope="module")
def c4_texts():
    lines = shared_path("data", "corpora", "c4_sample.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"][:600] for line in lines[:8]]


@pytest.fixture(scope="module")
def demo_documents():
    return build_demo_corpus()


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, demo_documents):
    """A 1024-piece tokenizer trained once on the demo corpus (about 0.3 s on a 2-core CPU)."""
    prefix = tmp_path_factory.mktemp("tokenizer") / "demo"
    return train_tokenizer(demo_documents, prefix, 1024)


def split_documents(tokens):
    """Split a token stream at BOS tokens into per-document id lists (BOS removed)."""
    starts = np.flatnonzero(tokens == BOS_ID).tolist() + [tokens.size]
    assert starts[0] == 0
    return [tokens[start + 1 : end].tolist() for start, end in zip(starts[:-1], starts[1:])]


def run_cli(*args):
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "jaxconnectome.data", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environment,
        timeout=120,
    )


# --- reading documents ---


def test_read_txt_documents(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("first line\nsecond line\n\n\n  \nsecond doc\n \t\nthird doc\n", encoding="utf-8")
    assert read_documents(path) == ["first line\nsecond line", "second doc", "third doc"]


def test_read_jsonl_documents(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a\\n\\nb"}\n\n{"text": "c", "id": 2}\n', encoding="utf-8")
    assert read_documents([path]) == ["a\n\nb", "c"]


def test_jsonl_missing_text_names_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"body": "c"}\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_documents(path)
    assert f"{path}:3" in str(error.value)
    assert "text" in str(error.value)


def test_jsonl_invalid_json_names_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_documents(path)
    assert f"{path}:2" in str(error.value)


@pytest.mark.parametrize(("name", "content"), [("empty.txt", "\n\n  \n"), ("empty.jsonl", ""), ("data.csv", "a,b")])
def test_read_rejects_unusable_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_documents(path)
    assert name in str(error.value)


def test_read_rejects_missing_file(tmp_path):
    with pytest.raises(DataError) as error:
        read_documents(tmp_path / "absent.txt")
    assert "absent.txt" in str(error.value)


# --- prepare with the challenge tokenizer ---


def test_prepare_jsonl(tmp_path, challenge_model, sp, c4_texts):
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in c4_texts), encoding="utf-8")
    output = tmp_path / "out"
    manifest = prepare(source, output, tokenizer_path=challenge_model, val_documents=3, shard_tokens=300)

    encoded = [sp.encode(text) for text in c4_texts]
    val_tokens = np.concatenate([read_shard(path) for path in find_shards(output / "fineweb_val_*.bin")])
    train_tokens = np.concatenate([read_shard(path) for path in find_shards(output / "fineweb_train_*.bin")])
    assert split_documents(val_tokens) == encoded[:3]
    assert split_documents(train_tokens) == encoded[3:]
    for text, ids in zip(c4_texts[:3], split_documents(val_tokens)):
        assert sp.decode(ids)[:100] == " ".join(text.split())[:100]

    # Every shard but the last of a split contains exactly shard_tokens tokens.
    val_paths = find_shards(output / "fineweb_val_*.bin")
    assert [read_shard(path).size for path in val_paths[:-1]] == [300] * (len(val_paths) - 1)
    assert 0 < read_shard(val_paths[-1]).size <= 300

    on_disk = json.loads((output / "MANIFEST.json").read_text())
    assert on_disk == manifest
    assert manifest["documents"] == 8
    assert manifest["val_docs"] == 3
    assert manifest["train_docs"] == 5
    assert manifest["val_tokens"] == val_tokens.size == sum(len(ids) + 1 for ids in encoded[:3])
    assert manifest["train_tokens"] == train_tokens.size
    assert manifest["val_shards"] == len(val_paths) == -(-val_tokens.size // 300)
    assert manifest["vocab_size"] == 1024
    assert manifest["tokenizer"] == str(challenge_model.resolve())
    assert manifest["val_bytes_utf8"] == sum(len(text.encode("utf-8")) for text in c4_texts[:3])


def test_prepare_txt_removes_stale_shards(tmp_path, challenge_model, sp):
    source = tmp_path / "docs.txt"
    source.write_text("One document.\n\nAnother one,\nwith two lines.\n\n\nA third.\n\nA fourth.\n", encoding="utf-8")
    output = tmp_path / "out"
    write_shard(output / "fineweb_train_000007.bin", np.arange(5))

    manifest = prepare([source], output, tokenizer_path=challenge_model, val_documents=1)

    assert not (output / "fineweb_train_000007.bin").exists()
    assert manifest["val_docs"] == 1
    assert manifest["train_docs"] == 3
    val = read_shard(output / "fineweb_val_000000.bin")
    assert split_documents(val) == [sp.encode("One document.")]
    train = read_shard(output / "fineweb_train_000000.bin")
    assert split_documents(train)[0] == sp.encode("Another one,\nwith two lines.")


def test_prepare_needs_more_documents_than_validation(tmp_path, challenge_model):
    source = tmp_path / "docs.txt"
    source.write_text("a\n\nb\n\nc\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        prepare(source, tmp_path / "out", tokenizer_path=challenge_model, val_documents=3)
    assert "3 documents" in str(error.value)
    assert "--val-documents" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_prepare_rejects_missing_input(tmp_path, challenge_model):
    with pytest.raises(DataError) as error:
        prepare(tmp_path / "absent.jsonl", tmp_path / "out", tokenizer_path=challenge_model, val_documents=1)
    assert "absent.jsonl" in str(error.value)


def test_prepare_needs_one_tokenizer_choice(tmp_path, challenge_model):
    source = tmp_path / "docs.txt"
    source.write_text("a\n\nb\n", encoding="utf-8")
    with pytest.raises(DataError):
        prepare(source, tmp_path / "out", val_documents=1)
    with pytest.raises(DataError):
        prepare(source, tmp_path / "out", tokenizer_path=challenge_model, train_tokenizer_vocab=1024, val_documents=1)


# --- tokenizer training and loading ---


def test_trained_tokenizer_behaviour(trained_model):
    sp = load_tokenizer(trained_model, 1024)
    assert sp.get_piece_size() == 1024
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sum(sp.is_byte(i) for i in range(1024)) == 256

    assert sp.encode("2024", out_type=str) == ["2", "0", "2", "4"]
    # No dummy prefix: a leading word has no "▁".
    assert not sp.encode("return", out_type=str)[0].startswith("\u2581")
    # Byte fallback: a character outside the vocabulary becomes its UTF-8 bytes.
    assert sp.encode("\u2603", out_type=str) == ["<0xE2>", "<0x98>", "<0x83>"]
    # nmt_nfkc normalization: the ligature encodes like "fi".
    assert sp.encode("\ufb01le") == sp.encode("file")
    assert trained_model.with_suffix(".vocab").is_file()


def test_trained_tokenizer_spec(trained_model):
    pytest.importorskip("google.protobuf")
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(trained_model.read_bytes())
    spec = model.trainer_spec
    assert spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
    assert spec.vocab_size == 1024
    assert spec.character_coverage == pytest.approx(0.999)
    assert spec.byte_fallback
    assert spec.split_digits
    assert not spec.hard_vocab_limit
    assert (spec.pad_id, spec.bos_id, spec.eos_id, spec.unk_id) == (0, 1, 2, 3)
    assert model.normalizer_spec.name == "nmt_nfkc"
    assert not model.normalizer_spec.add_dummy_prefix


def test_byte_tables_byte_pieces(trained_model):
    sp = load_tokenizer(trained_model, 1024)
    tables = build_byte_tables(sp, 1024)
    byte_ids = [i for i in range(1024) if sp.is_byte(i)]
    assert (tables.base_bytes[byte_ids] == 1).all()
    assert not tables.has_leading_space[byte_ids].any()
    assert not tables.is_boundary[byte_ids].any()

    # "a ☃" is "a", "▁" and the snowman's three byte pieces: 1 + 1 + 3 bytes.
    tokens = np.array([BOS_ID, *sp.encode("a \u2603")])
    assert int(count_target_bytes(tables, tokens[:-1], tokens[1:]).sum()) == len("a \u2603".encode("utf-8"))


def test_train_tokenizer_deterministic(tmp_path, trained_model, demo_documents):
    again = train_tokenizer(demo_documents, tmp_path / "again", 1024)
    assert again.read_bytes() == trained_model.read_bytes()


def test_train_tokenizer_too_little_text(tmp_path):
    with pytest.raises(DataError) as error:
        train_tokenizer(["a tiny corpus", "with few words"], tmp_path / "tiny", 1024)
    assert "1024" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_train_tokenizer_reports_input_error(tmp_path):
    source = tmp_path / "docs.jsonl"
    source.write_text('{"text": "a b c"}\n{"text": "d e"}\n{"body": "f"}\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        train_tokenizer([source], tmp_path / "tokenizer", 300)
    assert str(error.value).startswith(f"{source}:3:")
    assert not (tmp_path / "tokenizer.model").exists()


def test_load_tokenizer_errors(tmp_path, challenge_model):
    with pytest.raises(DataError) as error:
        load_tokenizer(tmp_path / "absent.model", 1024)
    assert "TOKENIZER_PATH" in str(error.value)

    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model")
    with pytest.raises(DataError) as error:
        load_tokenizer(garbage, 1024)
    assert "not a SentencePiece model" in str(error.value)

    with pytest.raises(DataError) as error:
        load_tokenizer(challenge_model, 2048)
    assert "VOCAB_SIZE=2048" in str(error.value)
    assert "1024 pieces" in str(error.value)


# --- demo corpus ---


def test_demo_corpus_round_trip(tmp_path, demo_documents):
    path = tmp_path / "demo.txt"
    written = write_demo_corpus(path)
    assert written == demo_documents
    assert read_documents(path) == demo_documents
    assert path.stat().st_size > 1_000_000
    assert len(set(demo_documents)) == len(demo_documents)
    from pydoc_data.topics import topics

    topic_texts = {normalize_document(text) for text in topics.values()}
    assert all(len(document) >= 200 for document in demo_documents if document not in topic_texts)
    assert any(document.startswith("The \"assert\" statement") for document in demo_documents)
    # The fixed shuffle puts both topics and docstrings among the validation documents.
    leading = demo_documents[:150]
    assert 0 < sum(document in topic_texts for document in leading) < 150


def test_prepare_demo_data(tmp_path):
    output, model_path = prepare_demo_data(tmp_path / "demo", val_documents=30)
    manifest = json.loads((output / "MANIFEST.json").read_text())
    assert model_path == output / "tokenizer.model"
    assert manifest["val_docs"] == 30
    assert manifest["vocab_size"] == 1024
    assert manifest["train_tokens"] > 300_000
    train = read_shard(output / "fineweb_train_000000.bin")
    assert int(train.max()) < 1024
    assert int((train == BOS_ID).sum()) == manifest["train_docs"]


# --- command line ---


def test_cli_missing_input_exits_2(tmp_path):
    result = run_cli("prepare", "--input", tmp_path / "absent.txt", "--output", tmp_path / "out", "--train-tokenizer")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1
    assert error_lines[0].startswith("error: ")
    assert "absent.txt" in error_lines[0]


def test_cli_prepare_and_inspect(tmp_path, challenge_model, c4_texts):
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in c4_texts), encoding="utf-8")
    output = tmp_path / "out"
    result = run_cli(
        "prepare", "--input", source, "--output", output, "--tokenizer", challenge_model, "--val-documents", 2
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((output / "MANIFEST.json").read_text())
    assert manifest["val_docs"] == 2

    result = run_cli("inspect", output, "--tokenizer", challenge_model)
    assert result.returncode == 0, result.stderr
    assert f"{manifest['train_tokens']:,} tokens" in result.stdout
    assert f"{manifest['val_tokens']:,} tokens, 2 documents" in result.stdout
    assert c4_texts[0][:40] in result.stdout


def test_cli_too_few_documents_exits_2(tmp_path, challenge_model):
    source = tmp_path / "docs.txt"
    source.write_text("a\n\nb\n", encoding="utf-8")
    result = run_cli("prepare", "--input", source, "--output", tmp_path / "out", "--tokenizer", challenge_model)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "50000" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_help_lists_options():
    result = run_cli("prepare", "--help")
    assert result.returncode == 0
    for option in ["--input", "--output", "--tokenizer", "--train-tokenizer", "--vocab-size", "--val-documents", "--demo"]:
        assert option in result.stdout
    assert "50,000" in result.stdout
