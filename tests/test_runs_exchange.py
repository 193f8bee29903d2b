"""A trained run exports at its end, re-exports from its checkpoint, evaluates, and seeds new runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared_data import shared_path
from jaxconnectome import evaluate

REPO = Path(__file__).resolve().parents[1]
DATA = {
    "data_path": shared_path("data", "datasets", "web_sp1024"),
    "tokenizer_path": shared_path("data", "tokenizers", "fineweb_1024_bpe.model"),
    "train_seq_len": 64, "val_batch_size": 8192,
}
TINY = DATA | {
    "embed_dim": 32, "num_attn_heads": 1, "head_dim": 16, "num_hops": 2, "cross_attn_every": 1, "skip_every": 0,
    "train_batch_tokens": 512, "grad_accum_steps": 1, "val_loss_every": 0, "max_wallclock_seconds": 0,
    "warmup_steps": 0, "learning_rate": 3e-3,
}


def set_flags(settings: dict) -> list[str]:
    flags = []
    for key, value in settings.items():
        flags += ["--set", f"{key}={value}"]
    return flags


def train(cwd: Path, run_id: str, **extra) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "train.py")] + set_flags(TINY | {"run_id": run_id, "iterations": 6} | extra)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def line_value(text: str, prefix: str, key: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return float(line.split(f"{key}:")[1].split()[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("trained")
    result = train(cwd, "source", export_compact="true")
    assert result.returncode == 0, result.stderr[-2000:]
    return cwd, cwd / "runs" / "source", result.stdout


def test_run_ends_with_export_lines(trained):
    _, run_dir, stdout = trained
    for name in ("final_model.pt", "final_model.int8.ptz", "final_model.compact.zlib"):
        assert (run_dir / name).stat().st_size > 0
    assert f"Serialized model int8+zlib: {(run_dir / 'final_model.int8.ptz').stat().st_size} bytes" in stdout
    compact = line_value(stdout, "Serialized model compact+zlib:", "compact+zlib")
    assert compact < (run_dir / "final_model.int8.ptz").stat().st_size
    assert line_value(stdout, "final_int8_zlib_roundtrip ", "val_loss") == pytest.approx(
        line_value(stdout, "step:6/6 val_loss", "val_loss"), abs=2e-3)


def test_export_run_dir_reproduces_artifact(trained, tmp_path):
    cwd, run_dir, stdout = trained
    before = (run_dir / "final_model.int8.ptz").read_bytes()
    result = subprocess.run([sys.executable, str(REPO / "export.py"), str(run_dir)], cwd=cwd, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    # The final checkpoint contains the trained parameters, so the artifact is the same bytes.
    assert (run_dir / "final_model.int8.ptz").read_bytes() == before
    exact = "final_int8_zlib_roundtrip_exact "
    assert line_value(result.stdout, exact, "val_loss") == pytest.approx(line_value(stdout, exact, "val_loss"), rel=1e-6)


def test_evaluate_run_dir_and_artifact(trained, capsys, monkeypatch):
    cwd, run_dir, stdout = trained
    monkeypatch.chdir(cwd)
    assert evaluate.main([str(run_dir)]) == 0
    from_checkpoint = capsys.readouterr().out
    final_loss = line_value(stdout, "step:6/6 val_loss", "val_loss")
    assert line_value(from_checkpoint, "val_loss", "val_loss") == pytest.approx(final_loss, abs=1e-4)

    # Inside its run folder the artifact is evaluated with the run's settings, as at export.
    roundtrip = line_value(stdout, "final_int8_zlib_roundtrip_exact ", "val_loss")
    assert evaluate.main([str(run_dir / "final_model.int8.ptz")]) == 0
    in_run = capsys.readouterr().out
    assert f"settings from {run_dir / 'config.json'}" in in_run
    assert line_value(in_run, "exact val_loss", "val_loss") == roundtrip

    # Elsewhere the settings come from the environment and --set alone.
    loose = cwd / "loose.ptz"
    loose.write_bytes((run_dir / "final_model.int8.ptz").read_bytes())
    flags = [f"{key}={value}" for key, value in (DATA | {"head_dim": 16, "grad_accum_steps": 1}).items()]
    args = [str(loose)]
    for flag in flags:
        args += ["--set", flag]
    assert evaluate.main(args) == 0
    from_artifact = capsys.readouterr().out
    assert "kind=int8_zlib" in from_artifact
    assert "settings from" not in from_artifact
    assert line_value(from_artifact, "exact val_loss", "val_loss") == pytest.approx(roundtrip, rel=1e-6)


def test_init_from_artifact_starts_at_its_loss(trained):
    cwd, run_dir, stdout = trained
    result = train(cwd, "continued", init_from=run_dir / "final_model.int8.ptz", iterations=2, val_loss_every=2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"init_from: {run_dir / 'final_model.int8.ptz'}" in result.stdout
    start = line_value(result.stdout, "step:0/2 val_loss", "val_loss")
    assert start == pytest.approx(line_value(stdout, "final_int8_zlib_roundtrip ", "val_loss"), abs=1e-4)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"not zlib at all", ["bad.ptz", "zlib"]),
        (b"PK\x03\x04 broken zip", ["bad.ptz"]),
    ],
)
def test_init_from_bad_artifact_is_rejected(trained, tmp_path, content, words):
    bad = tmp_path / "bad.ptz"
    bad.write_bytes(content)
    result = train(tmp_path, "never", init_from=bad)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ")
    for word in words:
        assert word in message
    assert not (tmp_path / "runs").exists()


def test_init_from_wrong_shape_is_rejected(trained, tmp_path):
    _, run_dir, _ = trained
    result = train(tmp_path, "never", init_from=run_dir / "final_model.int8.ptz", embed_dim=64)
    assert result.returncode == 2
    assert "embed_dim=32 but EMBED_DIM=64" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_config_json_records_the_export_settings(trained):
    _, run_dir, _ = trained
    config = json.loads((run_dir / "config.json").read_text())
    assert config["export_compact"] is True
    assert config["init_from"] == ""
