"""Sharded training on fake CPU devices and across two processes equals one device."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from jax.sharding import PartitionSpec

from shared_data import shared_path
from jaxconnectome.data import TrainLoader, write_shard
from jaxconnectome.sharding import logical_spec

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def sharded_report():
    result = subprocess.run([sys.executable, str(REPO / "tests" / "sharding_script.py")], capture_output=True,
                            text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["device_count"] == 8
    return report["runs"]


@pytest.mark.parametrize(
    "layout",
    ["one_device_eight_workers", "eight_devices", "eight_devices_accumulating", "eight_devices_fsdp2",
     "eight_devices_fsdp4_accumulating"],
)
def test_sharded_steps_equal_one_device(sharded_report, layout):
    run = sharded_report[layout]
    assert run["losses_changed"]
    assert run["loss_difference"] < TOLERANCE
    assert run["param_difference"] < TOLERANCE


def test_batch_is_split_over_workers(sharded_report):
    run = sharded_report["eight_devices"]
    assert run["batch_spec"] == [None, ["data", "fsdp"], None, None]
    # (A, W, B, S) = (1, 8, 2, 32): each device gets one worker's two sequences.
    assert run["batch_shard_shape"] == [1, 1, 2, 32]
    assert sharded_report["eight_devices_accumulating"]["batch_shard_shape"] == [2, 1, 1, 32]


def test_parameters_replicated_without_fsdp(sharded_report):
    run = sharded_report["eight_devices"]
    assert run["tok_emb_spec"] == [None, None]
    assert run["tok_emb_shard_shape"] == [256, 32]


def test_parameters_and_adam_state_sharded_with_fsdp(sharded_report):
    for layout, parts in (("eight_devices_fsdp2", 2), ("eight_devices_fsdp4_accumulating", 4)):
        run = sharded_report[layout]
        assert run["tok_emb_spec"] == ["fsdp", None]
        assert run["adam_mu_tok_emb_spec"] == ["fsdp", None]
        assert run["tok_emb_shard_shape"] == [256 // parts, 32]
        # The 300 neurons split over 2 and 4 devices, so the hop weights shard on their rows.
        assert run["hop_weight_spec"] == [None, None, "fsdp", None]


def test_logical_spec_skips_uneven_dimensions():
    mesh = SimpleNamespace(shape={"data": 1, "fsdp": 8})
    # 300 neurons do not split over 8 devices: the hop weights stay whole.
    assert logical_spec(mesh, ("hops", "channels", "neurons", "neurons"), (6, 1, 300, 300)) == PartitionSpec(
        None, None, None, None)
    assert logical_spec(mesh, ("vocab", "embed"), (1024, 768)) == PartitionSpec("fsdp", None)
    # A mesh axis is used once per tensor: embed is the next candidate only when vocab is uneven.
    assert logical_spec(mesh, ("vocab", "embed"), (1020, 768)) == PartitionSpec(None, "fsdp")
    assert logical_spec(SimpleNamespace(shape={"data": 8, "fsdp": 1}), ("vocab", "embed"), (1024, 768)) == (
        PartitionSpec(None, None))


def test_process_slices_equal_reference_worker_slices(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(5000) % 60000)
    pattern = str(tmp_path / "fineweb_train_*.bin")
    full_inputs, full_targets = TrainLoader(pattern, world_size=8).next_batch(1024, 32, 2)
    for ranks in ([0, 1, 2, 3], [4, 5, 6, 7]):
        inputs, targets = TrainLoader(pattern, world_size=8, ranks=ranks).next_batch(1024, 32, 2)
        np.testing.assert_array_equal(inputs, full_inputs[:, ranks])
        np.testing.assert_array_equal(targets, full_targets[:, ranks])
    # Worker r of micro-step a reads tokens [(a * 8 + r) * 65, (a * 8 + r + 1) * 65) of the stream.
    assert full_inputs[1, 5, 0, 0] == (1 * 8 + 5) * 65
    assert full_targets[1, 5, -1, -1] == (1 * 8 + 5) * 65 + 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_command(run_id: str) -> list[str]:
    settings = {
        "data_path": shared_path("data", "datasets", "web_sp1024"),
        "tokenizer_path": shared_path("data", "tokenizers", "fineweb_1024_bpe.model"),
        "run_id": run_id, "embed_dim": 32, "num_attn_heads": 1, "head_dim": 16, "num_hops": 2,
        "cross_attn_every": 1, "skip_every": 0, "train_seq_len": 64, "train_batch_tokens": 1024, "iterations": 4,
        "warmup_steps": 0, "val_loss_every": 2, "train_log_every": 1, "val_batch_size": 8192,
        "max_wallclock_seconds": 0, "learning_rate": 3e-3,
    }
    command = [sys.executable, str(REPO / "train.py")]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    return command


def run_env(devices: int) -> dict:
    return os.environ | {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(got: list[dict], expected: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for a, b in zip(got, expected):
        for key in ("ce", "jepa", "sigreg", "val_loss", "val_bpb", "lr"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=TOLERANCE), (a["step"], key)


@pytest.fixture(scope="module")
def one_device_metrics(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("one_device")
    subprocess.run(train_command("single"), cwd=cwd, env=run_env(1), check=True, capture_output=True, timeout=600)
    log = (cwd / "runs" / "single" / "log.txt").read_text()
    assert "world_size:1 grad_accum_steps:8" in log
    return read_metrics(cwd / "runs" / "single")


def test_train_command_on_eight_devices_equals_one(tmp_path, one_device_metrics):
    subprocess.run(train_command("eight"), cwd=tmp_path, env=run_env(8), check=True, capture_output=True,
                   timeout=600)
    assert "world_size:8 grad_accum_steps:1" in (tmp_path / "runs" / "eight" / "log.txt").read_text()
    assert_same_metrics(read_metrics(tmp_path / "runs" / "eight"), one_device_metrics)


def test_two_processes_equal_one_device(tmp_path, one_device_metrics):
    coordinator = f"127.0.0.1:{free_port()}"
    processes = []
    for process_id in range(2):
        command = train_command("hosts") + ["--coordinator", coordinator, "--num-processes", "2",
                                            "--process-id", str(process_id)]
        processes.append(subprocess.Popen(command, cwd=tmp_path, env=run_env(4), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    log = (tmp_path / "runs" / "hosts" / "log.txt").read_text()
    assert "world_size:8 grad_accum_steps:1" in log
    # Only process 0 writes: its lines appear once, and process 1 printed no log lines.
    assert log.count("step:4/4 val_loss:") == 1
    assert "step:4/4" not in outputs[1]
    assert_same_metrics(read_metrics(tmp_path / "runs" / "hosts"), one_device_metrics)
