"""Training end to end: the step's accumulation, and short runs on real text."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared_data import shared_path
from jaxconnectome import trainer
from jaxconnectome.optim import build_optimizer
from jaxconnectome.settings import resolve_settings
from jaxconnectome.train_step import LossConfig, make_train_step

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "vocab_size": "1024", "embed_dim": "64", "num_attn_heads": "2", "head_dim": "16", "num_hops": "4",
    "train_seq_len": "64", "max_wallclock_seconds": "0", "grad_accum_steps": "1",
}


def tiny_model(settings):
    return trainer.build_model(settings, "cpu")


def test_accumulation_equals_one_big_micro_step():
    # With CE only the loss of two micro-steps of 2 sequences averages to that of one
    # micro-step of 4, so one optimiser step must give the same parameters.
    settings = resolve_settings(environ={}, overrides=[f"{k}={v}" for k, v in TINY.items()])
    config = LossConfig(jepa_weight=0.0, sigreg_weight=0.0)
    tokens = np.random.default_rng(0).integers(0, 1024, (4, 65))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    key = jax.random.PRNGKey(0)
    results = []
    for shape in [(1, 1, 4, 64), (2, 1, 2, 64)]:
        state, step = make_train_step(tiny_model(settings), build_optimizer(), config)
        state, metrics = step(state, jnp.asarray(inputs.reshape(shape)), jnp.asarray(targets.reshape(shape)), key, 1.0)
        results.append((jax.tree.map(np.asarray, state.params), float(metrics["ce"])))
    (params_one, ce_one), (params_two, ce_two) = results
    assert ce_one == pytest.approx(ce_two, rel=1e-6)
    # The first Adam update is about lr * sign(gradient), so parameters whose gradient is
    # near zero can differ by float rounding; 1e-6 is 0.1 % of that update.
    for a, b in zip(jax.tree.leaves(params_one), jax.tree.leaves(params_two)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_moves_only_unmasked_hop_weights():
    settings = resolve_settings(environ={}, overrides=[f"{k}={v}" for k, v in TINY.items()])
    model = tiny_model(settings)
    before = np.array(model.hop_weight[...])
    mask = np.asarray(model.hop_mask[...]) > 0
    # CE only: on the first step the JEPA pass reads the zero mask_emb, whose rms_norm
    # gradient is 1/sqrt(eps), and clipping then shrinks every other gradient to nothing.
    config = LossConfig(jepa_weight=0.0, sigreg_weight=0.0)
    state, step = make_train_step(model, build_optimizer(weight_decay=0.0), config)
    x = jnp.asarray(np.random.default_rng(1).integers(0, 1024, (1, 1, 2, 64)), jnp.int32)
    state, _ = step(state, x, x, jax.random.PRNGKey(0), 1.0)
    after = np.array(state.params["hop_weight"][...])
    changed = after != before
    assert not changed[:, :, ~mask].any()
    # Hop 0 reads only the sensory slots and the last hop feeds only the motor readout.
    # Part of the unmasked weights therefore have no gradient yet, and the rest move.
    assert changed[:, :, mask].mean() > 0.4


def run_training(tmp_path, monkeypatch, **extra):
    monkeypatch.chdir(tmp_path)
    values = TINY | {
        "data_path": str(shared_path("data", "datasets", "web_sp1024")),
        "tokenizer_path": str(shared_path("data", "tokenizers", "fineweb_1024_bpe.model")),
        "run_id": "real_text", "train_batch_tokens": "2048", "embed_dim": "128", "num_hops": "6",
        "head_dim": "32", "train_seq_len": "128", "iterations": "60", "warmup_steps": "5", "learning_rate": "3e-3",
        "val_loss_every": "30", "train_log_every": "20", "val_batch_size": "16384",
    } | {k: str(v) for k, v in extra.items()}
    settings = resolve_settings(environ={}, overrides=[f"{k}={v}" for k, v in values.items()])
    return trainer.run(settings), tmp_path / "runs" / "real_text"


@pytest.fixture(scope="module")
def real_text_run(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        yield run_training(tmp_path_factory.mktemp("run"), monkeypatch)
    finally:
        monkeypatch.undo()


def test_validation_loss_falls_on_real_text(real_text_run):
    result, run_dir = real_text_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r for r in records if "val_loss" in r}
    assert sorted(val) == [0, 30, 60]
    # At initialisation the loss is ln(1024); 60 steps on web text take it well below.
    assert abs(val[0]["val_loss"] - math.log(1024)) < 0.05
    assert val[60]["val_loss"] < val[0]["val_loss"] - 0.5
    assert val[60]["val_bpb"] < val[30]["val_bpb"] < val[0]["val_bpb"]
    assert result["val_bpb"] == pytest.approx(val[60]["val_bpb"])
    # bits per byte is the loss in bits scaled by tokens per byte, the same at every step.
    ratios = {r["val_bpb"] / (r["val_loss"] / math.log(2)) for r in val.values()}
    assert max(ratios) - min(ratios) < 1e-9


def test_log_lines_have_the_reference_shape(real_text_run):
    _, run_dir = real_text_run
    lines = (run_dir / "log.txt").read_text().splitlines()
    assert "connectome: neurons=300 edges=5084 sensory=88 motor=123 density=5.65% topology=connectome" in lines
    assert any(re.fullmatch(r"model_params:\d+ trainable:\d+", line) for line in lines)
    assert "world_size:1 grad_accum_steps:1" in lines
    train = [line for line in lines if " ce:" in line]
    assert [int(re.match(r"step:(\d+)/60", line).group(1)) for line in train] == [*range(1, 11), 20, 40, 60]
    pattern = (r"step:\d+/60 ce:\d+\.\d{4} jepa:\d+\.\d{4} sigreg:\d+\.\d{6} lr:\d\.\d{6} "
               r"train_time:\d+ms step_avg:\d+\.\d{2}ms")
    assert all(re.fullmatch(pattern, line) for line in train), train[0]
    # The line for step s shows the LR of the update that produced it: step index s - 1.
    assert "lr:0.000030 " in train[0]
    assert "lr:0.000600 " in train[1]
    assert re.fullmatch(r"step:0/60 val_loss:\d\.\d{4} val_bpb:\d\.\d{4} train_time:0ms step_avg:\d+\.\d{2}ms",
                        next(line for line in lines if line.startswith("step:0/60")))


def test_metrics_and_config_files(real_text_run):
    _, run_dir = real_text_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), "one object per logged step"
    both = next(r for r in records if r["step"] == 60)
    assert {"ce", "jepa", "sigreg", "lr", "val_loss", "val_bpb", "train_time_ms"} <= set(both)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["embed_dim"] == 128
    assert config["compute_dtype_resolved"] == "float32"


def test_wallclock_cap_stops_early(tmp_path, monkeypatch):
    result, run_dir = run_training(tmp_path, monkeypatch, max_wallclock_seconds=0.001, iterations=50,
                                   val_loss_every=0, embed_dim=64, num_hops=2, cross_attn_every=1,
                                   skip_every=0, train_seq_len=64, jepa_weight=0)
    lines = (run_dir / "log.txt").read_text().splitlines()
    assert result["step"] == 1
    stop = next(i for i, line in enumerate(lines) if line.startswith("stopping_early:"))
    assert re.fullmatch(r"stopping_early: wallclock_cap train_time:\d+ms step:1/50", lines[stop])
    assert lines[stop - 1].startswith("step:1/50 val_loss:")
    assert not any(line.startswith("step:2/50") for line in lines)


def test_missing_fineweb_says_how_to_get_it(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "train.py")], cwd=tmp_path, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "DATA_PATH=./data/datasets/fineweb10B_sp1024" in result.stderr
    assert "willdepueoai/parameter-golf" in result.stderr
    assert "--config demo" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_bfloat16_weights_train(tmp_path):
    overrides = [f"{k}={v}" for k, v in TINY.items()] + ["param_dtype=bfloat16", "compute_dtype=bfloat16"]
    settings = resolve_settings(environ={}, overrides=overrides)
    state, step = make_train_step(tiny_model(settings), build_optimizer(), LossConfig())
    x, y = jnp.asarray(np.random.default_rng(2).integers(0, 1024, (2, 2, 1, 2, 64)), jnp.int32)
    state, first = step(state, x, y, jax.random.PRNGKey(0), 1.0)
    state, second = step(state, x, y, jax.random.PRNGKey(0), 1.0)
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}
    assert abs(float(first["ce"]) - math.log(1024)) < 0.1
    assert all(np.isfinite(float(v)) for v in second.values())


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    from jaxconnectome.run_log import RunLogger

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    log = RunLogger(tmp_path / "tty")
    log.progress(25, 100, 2500.0, 5.1234)
    log.line("step:25/100 hello")
    log.close()
    err = capsys.readouterr().err
    assert "[#######-----------------------] 25/100 100 ms/step ce 5.1234" in err
    assert err.endswith("\r\033[K")  # cleared before the log line was printed

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    quiet = RunLogger(tmp_path / "pipe")
    quiet.progress(25, 100, 2500.0, 5.1234)
    quiet.close()
    assert capsys.readouterr().err == ""


def strip_times(text: str) -> str:
    return re.sub(r"(train_time|step_avg):\d+(\.\d+)?ms", r"\1:-", text)


def test_overlapped_loop_matches_waiting_loop(tmp_path, monkeypatch):
    # Validation at 6 and 12 and checkpoints every 4 make the overlapped loop wait at those
    # steps and queue ahead at the others. Every line and number must still match.
    small = {"iterations": 12, "val_loss_every": 6, "checkpoint_every": 4, "train_log_every": 1, "embed_dim": 64,
             "num_hops": 2, "cross_attn_every": 1, "skip_every": 0, "train_seq_len": 64, "val_batch_size": 4096}
    runs = {}
    for overlap in (True, False):
        folder = tmp_path / str(overlap)
        folder.mkdir()
        result, run_dir = run_training(folder, monkeypatch, overlap_steps=overlap, **small)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        for record in records:
            record.pop("train_time_ms", None)
        lines = [strip_times(line) for line in (run_dir / "log.txt").read_text().splitlines()
                 if line.startswith("step:")]
        runs[overlap] = (records, lines, result)
    (records_on, lines_on, result_on), (records_off, lines_off, result_off) = runs[True], runs[False]
    assert records_on == records_off
    assert lines_on == lines_off
    assert [r["step"] for r in records_on] == list(range(13))
    for a, b in zip(jax.tree.leaves(result_on["params"]), jax.tree.leaves(result_off["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    checkpoints = sorted(int(p.name) for p in (tmp_path / "True" / "runs" / "real_text" / "checkpoints").iterdir()
                         if p.name.isdigit())
    assert checkpoints == [4, 8, 12]
