"""End-of-run export with its round trip on real text, and the export.py command line."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxconnectome import connectome, sharding
from jaxconnectome.artifact import code_files, export_run, import_model, read_artifact, validation_evaluator
from jaxconnectome.data import build_byte_tables, load_tokenizer
from jaxconnectome.evaluation import build_validation_set
from jaxconnectome.model import ConnectomeJEPA, ModelConfig
from jaxconnectome.settings import Settings
from shared_data import shared_path

REPO = Path(__file__).resolve().parents[1]
GRAPH = connectome.load_connectome()
# vocab 1024 to match the challenge tokenizer; tok_emb (1024 x 96) is quantised.
TINY = ModelConfig(vocab_size=1024, embed_dim=96, num_hops=3, cross_attn_every=2, head_dim=16, num_attn_heads=2)
SEQ_LEN = 128
BATCH_SEQS = 64


def build(seed: int = 0) -> ConnectomeJEPA:
    mask = connectome.hop_mask("connectome", "post_to_pre", 0)
    model = ConnectomeJEPA(TINY, mask, GRAPH.sensory_idx, GRAPH.motor_idx, rngs=nnx.Rngs(params=seed))
    rng = np.random.default_rng(seed)
    for name in ("attn_out", "hop_bias"):
        param = getattr(model, name)
        param[...] = jnp.asarray(0.05 * rng.standard_normal(param[...].shape), param[...].dtype)
    return model


def data_env() -> dict[str, str]:
    return {
        "DATA_PATH": str(shared_path("data", "datasets", "web_sp1024")),
        "TOKENIZER_PATH": str(shared_path("data", "tokenizers", "fineweb_1024_bpe.model")),
        "TRAIN_SEQ_LEN": str(SEQ_LEN),
        "VAL_BATCH_SIZE": str(SEQ_LEN * BATCH_SEQS),
        "HEAD_DIM": str(TINY.head_dim),
    }


@pytest.fixture(scope="module")
def evaluator():
    env = data_env()
    tables = build_byte_tables(load_tokenizer(env["TOKENIZER_PATH"], 1024), 1024)
    val = build_validation_set(str(Path(env["DATA_PATH"]) / "fineweb_val_*.bin"), SEQ_LEN, tables)
    mesh = sharding.make_mesh(1)
    # The batch export.py derives from VAL_BATCH_SIZE with the reference's accumulation steps.
    world_size = mesh.devices.size
    batch_seqs = max(1, SEQ_LEN * BATCH_SEQS // (world_size * max(1, 8 // world_size) * SEQ_LEN))
    return validation_evaluator(val, batch_seqs, mesh)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, evaluator):
    run_dir = tmp_path_factory.mktemp("run")
    lines = []
    result = export_run(build(), run_dir, evaluate_model=evaluator, log=lines.append, compact=True,
                        topology="connectome", signal_flow="post_to_pre", seed=1337)
    return result, run_dir, lines


def test_export_run_logs_reference_lines(exported):
    result, run_dir, lines = exported
    patterns = [
        r"Serialized model: (\d+) bytes",
        r"Code size: (\d+) bytes",
        r"Total submission size: (\d+) bytes",
        r"Serialized model int8\+zlib: (\d+) bytes \(payload:(\d+) ratio:(\d+\.\d{2})x\)",
        r"Total submission size int8\+zlib: (\d+) bytes",
        r"Serialized model compact\+zlib: (\d+) bytes \(payload:(\d+)\)",
        r"Total submission size compact\+zlib: (\d+) bytes",
        r"final_int8_zlib_roundtrip val_loss:\d+\.\d{4} val_bpb:\d+\.\d{4} eval_time:\d+ms",
        r"final_int8_zlib_roundtrip_exact val_loss:\d+\.\d{8} val_bpb:\d+\.\d{8}",
    ]
    assert len(lines) == len(patterns)
    for line, pattern in zip(lines, patterns):
        assert re.fullmatch(pattern, line), line
    assert result.lines == lines
    sizes = {name: (run_dir / name).stat().st_size for name in
             ("final_model.pt", "final_model.int8.ptz", "final_model.compact.zlib")}
    assert result.model_bytes == sizes["final_model.pt"]
    assert result.int8_zlib_bytes == sizes["final_model.int8.ptz"]
    assert result.compact_bytes == sizes["final_model.compact.zlib"] < result.int8_zlib_bytes
    assert result.code_bytes == sum(path.stat().st_size for path in code_files())
    assert f"Total submission size int8+zlib: {result.int8_zlib_bytes + result.code_bytes} bytes" in lines


def test_code_files_are_what_training_needs():
    names = {path.relative_to(REPO).as_posix() for path in code_files()}
    assert {"train.py", "jaxconnectome/model.py", "jaxconnectome/data/stream.py",
            "jaxconnectome/artifact/quantize.py", "jaxconnectome/connectome_data.json"} <= names
    assert not any(name.startswith(("tests/", "configs/")) or name == "export.py" for name in names)


def test_round_trip_loss_is_the_artifacts(exported, evaluator):
    result, run_dir, _ = exported
    for name in ("final_model.int8.ptz", "final_model.compact.zlib"):
        model, _ = import_model(run_dir / name, ModelConfig(head_dim=TINY.head_dim))
        assert evaluator(model)[:2] == (result.val_loss, result.val_bpb), name
    # Quantisation moves the loss a little, but not far.
    assert abs(evaluator(build())[0] - result.val_loss) < 0.01


def test_export_run_is_deterministic_and_takes_params(exported, tmp_path):
    _, run_dir, _ = exported
    other = build(seed=5)
    params = nnx.state(build(), nnx.Param)
    export_run(other, tmp_path, params=params, log=lambda line: None)
    for name in ("final_model.pt", "final_model.int8.ptz"):
        assert (tmp_path / name).read_bytes() == (run_dir / name).read_bytes(), name


def load_cli():
    spec = importlib.util.spec_from_file_location("export_cli", REPO / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_import_prints_direct_evaluation(exported, evaluator):
    _, run_dir, _ = exported
    env = {**os.environ, **data_env()}
    result = subprocess.run([sys.executable, str(REPO / "export.py"), "--import", str(run_dir / "final_model.int8.ptz")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # The CLI resolves the speed switches for this platform; equal digits need the same ones.
    config = Settings(head_dim=TINY.head_dim).model_config(jax.default_backend())
    model, _ = import_model(run_dir / "final_model.int8.ptz", config)
    val_loss, val_bpb, _ = evaluator(model)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"import: {run_dir / 'final_model.int8.ptz'} kind=int8_zlib model_params:")
    assert re.fullmatch(rf"val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} eval_time:\d+ms", lines[1]), lines[1]
    assert lines[2] == f"exact val_loss:{val_loss:.8f} val_bpb:{val_bpb:.8f}"


def test_cli_output_reexports(exported, tmp_path, monkeypatch, capsys):
    result, run_dir, _ = exported
    for key, value in data_env().items():
        monkeypatch.setenv(key, value)
    cli = load_cli()
    assert cli.main(["--import", str(run_dir / "final_model.compact.zlib"), "--output", str(tmp_path), "--compact"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"final_int8_zlib_roundtrip_exact val_loss:(\S+) val_bpb:(\S+)", out)
    # Quantising the dequantised weights again moves them by at most a rounding of a row scale.
    assert abs(float(match.group(1)) - result.val_loss) < 1e-3
    assert abs(float(match.group(2)) - result.val_bpb) < 1e-3
    assert read_artifact(tmp_path / "final_model.int8.ptz").kind == "int8_zlib"
    assert read_artifact(tmp_path / "final_model.pt").kind == "state_dict"
    assert read_artifact(tmp_path / "final_model.compact.zlib").kind == "compact"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--import", "missing.ptz", "--no-eval"], "error: missing.ptz: cannot read"),
        (["runs/abc"], "error: runs/abc/config.json not found; give a run folder made by train.py"),
        ([], "error: give either a RUN_DIR to export or --import FILE"),
        (["--import", "x.ptz", "--compact"], "error: --compact needs --output DIR or a RUN_DIR"),
        (["--import", "x.ptz", "--set", "head_dim=seven"], "error: --set head_dim: 'seven' is not a valid int"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert load_cli().main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert err.count("\n") == 1
    assert "Traceback" not in err
