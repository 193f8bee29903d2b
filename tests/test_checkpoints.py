"""Checkpoints: resume after SIGKILL changes no number, SIGTERM saves, damage falls back."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from shared_data import shared_path

REPO = Path(__file__).resolve().parents[1]


def command(run_id: str, **extra) -> list[str]:
    settings = {
        "data_path": shared_path("data", "datasets", "web_sp1024"),
        "tokenizer_path": shared_path("data", "tokenizers", "fineweb_1024_bpe.model"),
        "run_id": run_id, "embed_dim": 32, "num_attn_heads": 1, "head_dim": 16, "num_hops": 2,
        "cross_attn_every": 1, "skip_every": 0, "train_seq_len": 64, "train_batch_tokens": 512,
        "grad_accum_steps": 1, "iterations": 8, "val_loss_every": 4, "train_log_every": 1,
        "val_batch_size": 8192, "max_wallclock_seconds": 0, "checkpoint_every": 2, "warmup_steps": 0,
        "learning_rate": 3e-3,
    } | extra
    args = [sys.executable, str(REPO / "train.py")]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


def start(cwd: Path, run_id: str, **extra) -> subprocess.Popen:
    return subprocess.Popen(command(run_id, **extra), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for_line(process: subprocess.Popen, prefix: str, lines: list[str]) -> None:
    """Read output lines until one starts with `prefix`; fail if the process ends first."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"process ended before {prefix!r}: {''.join(lines)[-2000:]}")
        lines.append(line)
        if line.startswith(prefix):
            return
    pytest.fail(f"timed out waiting for {prefix!r}")


def records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def final_state(run_dir: Path, step: int):
    return ocp.StandardCheckpointer().restore((run_dir / "checkpoints" / str(step) / "state").absolute())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("full")
    subprocess.run(command("full"), cwd=cwd, check=True, capture_output=True, timeout=600)
    return cwd / "runs" / "full"


def test_resume_after_sigkill_changes_no_number(tmp_path, uninterrupted):
    process = start(tmp_path, "killed")
    lines: list[str] = []
    wait_for_line(process, "step:5/8 ce:", lines)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    run_dir = tmp_path / "runs" / "killed"
    assert 4 in {int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()}

    resumed = subprocess.run(command("killed"), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed: step:4 from" in resumed.stdout or "resumed: step:6 from" in resumed.stdout

    expected, got = records(uninterrupted), records(run_dir)
    assert sorted(got) == sorted(expected) == list(range(9))
    for step in range(9):
        for key in ("ce", "jepa", "sigreg", "lr", "val_loss", "val_bpb"):
            if key in expected[step]:
                assert got[step][key] == expected[step][key], (step, key)  # bitwise on CPU in float32

    for a, b in zip(jax.tree.leaves(final_state(uninterrupted, 8)), jax.tree.leaves(final_state(run_dir, 8))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    process = start(tmp_path, "term", iterations=500, checkpoint_every=0, val_loss_every=0)
    lines: list[str] = []
    wait_for_line(process, "step:3/500 ce:", lines)
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
    output = "".join(lines) + rest
    assert process.returncode == 0, output[-2000:]
    assert "Traceback" not in output
    stop_line = next(line for line in output.splitlines() if line.startswith("stopping: SIGTERM received"))
    stopped_at = int(stop_line.split("step:")[1].split("/")[0])
    assert stopped_at >= 3
    steps = sorted(int(p.name) for p in (tmp_path / "runs" / "term" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [stopped_at]


def test_damaged_latest_checkpoint_falls_back(tmp_path, uninterrupted):
    run_dir = tmp_path / "runs" / "full"
    shutil.copytree(uninterrupted, run_dir)
    data_files = [p for p in (run_dir / "checkpoints" / "8" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for path in data_files:
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])

    resumed = subprocess.run(command("full"), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "warning: checkpoint step 8" in resumed.stdout
    assert "unreadable" in resumed.stdout
    assert "resumed: step:6 from" in resumed.stdout
    # Steps 7 and 8 are trained again from step 6 and end where the first run ended.
    assert records(run_dir)[8]["val_loss"] == records(uninterrupted)[8]["val_loss"]


def test_non_finite_loss_stops_with_step(tmp_path):
    result = subprocess.run(command("nan", learning_rate=1e30, iterations=20, checkpoint_every=1, val_loss_every=0),
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: non-finite loss at step ")
    bad_step = int(message.split("at step ")[1].split()[0])
    kept = sorted(int(p.name) for p in (tmp_path / "runs" / "nan" / "checkpoints").iterdir() if p.name.isdigit())
    assert kept and kept[-1] == bad_step - 1
    assert f"the last good checkpoint is step {bad_step - 1}" in message
