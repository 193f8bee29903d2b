"""`python -m jaxconnectome.report`: the table of final results and the figure of curves.

Two real 4-step demo trainings with different seeds and learning rates provide runs "a"
and "b"; each ends with the int8+zlib export lines that the table reads.
"""

import json
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib  # noqa: F401  (the report extra is part of the test extra)
import pytest

from shared_data import shared_path
from jaxconnectome.report import Run, main, plot_runs, read_run

REPO = Path(__file__).resolve().parents[1]
TINY_DEMO = {
    "iterations": 4, "val_loss_every": 2, "embed_dim": 32, "num_hops": 2, "cross_attn_every": 1,
    "skip_every": 0, "train_seq_len": 64, "train_batch_tokens": 512, "val_batch_size": 4096,
}
RUN_SETTINGS = {"a": {"seed": 1, "learning_rate": 2e-3}, "b": {"seed": 2, "learning_rate": 5e-3}}


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> tuple[Path, Path]:
    workdir = tmp_path_factory.mktemp("report_runs")
    for run_id, extra in RUN_SETTINGS.items():
        settings = TINY_DEMO | extra | {"run_id": run_id}
        overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
        command = [sys.executable, str(REPO / "train.py"), "--config", "demo", *overrides]
        result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "runs" / "a", workdir / "runs" / "b"


def last_log_value(run_dir: Path, prefix: str, field: str) -> str:
    """Return `field` of the last log.txt line starting with `prefix`, as printed."""
    lines = [line for line in (run_dir / "log.txt").read_text().splitlines() if line.startswith(prefix)]
    token = next(part for part in lines[-1].split() if part.startswith(f"{field}:"))
    return token.split(":", 1)[1]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def table_rows(output: str) -> dict[str, list[str]]:
    lines = [line for line in output.splitlines() if line and not line.startswith("wrote ")]
    assert lines[0].split()[:3] == ["run", "steps", "train"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def test_cli_writes_png_and_table(run_dirs, tmp_path, capsys):
    run_a, run_b = run_dirs
    output = tmp_path / "figures" / "report.png"
    assert main([str(run_a), str(run_b), "--output", str(output)]) == 0
    width, height = png_size(output)
    assert width == 1200
    assert 600 <= height <= 1400

    rows = table_rows(capsys.readouterr().out)
    assert set(rows) == {"a", "b"}
    for run_dir in run_dirs:
        steps, time_value, time_unit, val_bpb, roundtrip_bpb, artifact = rows[run_dir.name]
        assert steps == last_log_value(run_dir, "step:", "step").split("/")[0]
        assert val_bpb == last_log_value(run_dir, "step:", "val_bpb")
        last_ms = last_log_value(run_dir, "step:", "train_time").removesuffix("ms")
        assert float(time_value) == pytest.approx(float(last_ms) / 1000, abs=0.051)
        assert time_unit == "s"
        assert roundtrip_bpb == last_log_value(run_dir, "final_int8_zlib_roundtrip ", "val_bpb")
        assert artifact == f"{(run_dir / 'final_model.int8.ptz').stat().st_size:,}"


def test_plot_has_one_line_per_run(run_dirs):
    runs = [read_run(run_dir) for run_dir in run_dirs]
    figure = plot_runs(runs)
    axes = figure.axes
    # Rows val_bpb, ce, jepa and sigreg, because the demo trains with JEPA and SigREG.
    # Columns: step, then training time.
    assert len(axes) == 8
    for ax in axes:
        assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]

    records = read_records(run_dirs[0])
    val_steps = [record["step"] for record in records if "val_bpb" in record]
    train_steps = [record["step"] for record in records if "ce" in record]
    assert val_steps == [0, 2, 4]
    assert train_steps == [1, 2, 3, 4]
    step_axes = axes[0::2]
    expected_steps = [val_steps, train_steps, train_steps, train_steps]
    for ax, steps in zip(step_axes, expected_steps):
        for line in ax.get_lines():
            assert list(line.get_xdata()) == steps

    val_bpb_b = [record["val_bpb"] for record in read_records(run_dirs[1]) if "val_bpb" in record]
    assert list(axes[0].get_lines()[1].get_ydata()) == val_bpb_b
    time_ax = axes[1]
    times_a = [record["train_time_ms"] / 1000 for record in records if "val_bpb" in record]
    assert list(time_ax.get_lines()[0].get_xdata()) == pytest.approx(times_a)


def synthetic_run(run_id: str, jepa: float, sigreg: float) -> Run:
    records = [{"step": 0, "val_bpb": 4.0, "val_loss": 6.9, "train_time_ms": 0.0}]
    records += [
        {"step": step, "ce": 6.0 - step, "jepa": jepa, "sigreg": sigreg, "lr": 1e-3, "train_time_ms": 100.0 * step}
        for step in (1, 2, 3)
    ]
    return Run(run_id=run_id, records=records)


def test_plot_omits_zero_jepa_and_sigreg():
    figure = plot_runs([synthetic_run("ce_only", 0.0, 0.0), synthetic_run("also_ce_only", 0.0, 0.0)])
    labels = [ax.get_ylabel() for ax in figure.axes]
    assert labels == ["validation bits per byte"] * 2 + ["training CE (nats)"] * 2


def test_plot_keeps_jepa_if_any_run_has_it():
    figure = plot_runs([synthetic_run("ce_only", 0.0, 0.0), synthetic_run("jepa", 1.0, 0.0)])
    assert len(figure.axes) == 6


def test_appended_rerun_keeps_latest(tmp_path):
    run_dir = tmp_path / "rerun"
    run_dir.mkdir()
    first = [{"step": 0, "val_bpb": 4.0}, {"step": 5, "ce": 5.0}, {"step": 9, "val_bpb": 3.0}]
    second = [{"step": 0, "val_bpb": 4.1}, {"step": 5, "ce": 4.5}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first + second))
    run = read_run(run_dir)
    assert run.run_id == "rerun"
    assert run.records == second


def test_reference_log_reads_final_results(capsys, tmp_path):
    log_path = shared_path("seed", "reference_train_600s.log")
    assert main([str(log_path), "--output", str(tmp_path / "reference.png")]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["reference_train_600s"] == ["4175", "600.1", "s", "1.7856", "1.7978", "1,917,705"]


def test_missing_run_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such run folder or log file" in capsys.readouterr().err


def test_missing_matplotlib_names_extra(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 0, "val_bpb": 4.0}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main([str(run_dir), "--output", str(tmp_path / "x.png")]) == 2
    assert 'pip install -e ".[report]"' in capsys.readouterr().err
