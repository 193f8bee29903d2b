"""Compare training runs: curves of validation bits per byte and training losses, and final results.

    python -m jaxconnectome.report RUN [RUN ...] [--output FILE.png]

A RUN is a run folder (runs/<run_id>/ with metrics.jsonl, log.txt and config.json) or a
log file in the reference's format, such as the reference's own training logs. The
table gives each run's last step, training time, last validation bits per byte, and the
int8+zlib round trip and artifact size where log.txt reports them ("-" otherwise).
The figure needs matplotlib (`pip install -e ".[report]"`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path

EXIT_REPORT_ERROR = 2
MISSING = "-"

TRAIN_LINE = re.compile(
    r"^step:(\d+)/\d+ ce:(\S+) jepa:(\S+) sigreg:(\S+) lr:(\S+) train_time:(\d+(?:\.\d+)?)ms"
)
VAL_LINE = re.compile(r"^step:(\d+)/\d+ val_loss:(\S+) val_bpb:(\S+) train_time:(\d+(?:\.\d+)?)ms")
ROUNDTRIP_LINE = re.compile(r"^final_int8_zlib_roundtrip val_loss:(\S+) val_bpb:(\S+)")
ARTIFACT_LINE = re.compile(r"^Serialized model int8\+zlib: (\d+) bytes")

# (metric key, y-axis label). The JEPA and SigREG rows appear only when some run has them nonzero.
CURVES = (
    ("val_bpb", "validation bits per byte"),
    ("ce", "training CE (nats)"),
    ("jepa", "training JEPA loss"),
    ("sigreg", "training SigREG"),
)
OPTIONAL_CURVES = ("jepa", "sigreg")
X_AXES = (("step", "step"), ("train_time_s", "training time (s, validation excluded)"))


class ReportError(ValueError):
    """A run that cannot be read, or a missing optional dependency, named in the message."""


@dataclasses.dataclass
class Run:
    """One run's logged steps and final results."""

    run_id: str
    records: list[dict]  # one per logged step, with train and/or validation metrics
    roundtrip_val_loss: str | None = None  # as printed in log.txt
    roundtrip_val_bpb: str | None = None
    artifact_bytes: int | None = None

    def series(self, key: str) -> list[dict]:
        """Return the records that contain `key`, in step order."""
        return [record for record in self.records if key in record]


def latest_segment(records: list[dict]) -> list[dict]:
    """Keep the records of the last run when several were appended to the same file.

    RunLogger appends, so rerunning a run id adds a second series whose steps start again.
    """
    start = 0
    for i in range(1, len(records)):
        if records[i]["step"] < records[i - 1]["step"]:
            start = i
    return records[start:]


def read_metrics(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            print(f"{path}:{number}: skipping a line that is not JSON", file=sys.stderr)
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def records_from_log(lines: list[str]) -> list[dict]:
    """Rebuild metrics.jsonl records from the reference's step lines."""
    records: list[dict] = []
    for line in lines:
        train = TRAIN_LINE.match(line)
        val = VAL_LINE.match(line)
        if train:
            step, ce, jepa, sigreg, lr, train_ms = train.groups()
            values = {"ce": float(ce), "jepa": float(jepa), "sigreg": float(sigreg), "lr": float(lr)}
        elif val:
            step, val_loss, val_bpb, train_ms = val.groups()
            values = {"val_loss": float(val_loss), "val_bpb": float(val_bpb)}
        else:
            continue
        values |= {"step": int(step), "train_time_ms": float(train_ms)}
        if records and records[-1]["step"] == values["step"]:
            records[-1] |= values
        else:
            records.append(values)
    return records


def read_run(path: Path) -> Run:
    """Read a run folder, or a log file in the reference's format."""
    if path.is_file():
        log_lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        run_id = path.stem
        records = records_from_log(log_lines)
    elif path.is_dir():
        log_path = path / "log.txt"
        log_lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines() if log_path.is_file() else []
        run_id = read_run_id(path)
        metrics_path = path / "metrics.jsonl"
        records = read_metrics(metrics_path) if metrics_path.is_file() else records_from_log(log_lines)
    else:
        raise ReportError(f"{path}: no such run folder or log file")
    if not records:
        raise ReportError(f"{path}: no logged steps found (expected metrics.jsonl or step:N/M lines in log.txt)")

    run = Run(run_id=run_id, records=latest_segment(records))
    for line in log_lines:
        roundtrip = ROUNDTRIP_LINE.match(line)
        artifact = ARTIFACT_LINE.match(line)
        if roundtrip:
            run.roundtrip_val_loss, run.roundtrip_val_bpb = roundtrip.groups()
        elif artifact:
            run.artifact_bytes = int(artifact.group(1))
    return run


def read_run_id(run_dir: Path) -> str:
    config_path = run_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return run_dir.name
    return str(config.get("run_id") or run_dir.name)


def format_table(runs: list[Run]) -> list[str]:
    """Return aligned lines: run, steps, training time, val_bpb before and after int8+zlib, artifact bytes."""
    header = ("run", "steps", "train time", "val_bpb", "val_bpb int8+zlib", "artifact bytes")
    rows = [header]
    for run in runs:
        last = run.records[-1]
        validations = run.series("val_bpb")
        train_ms = max((record["train_time_ms"] for record in run.series("train_time_ms")), default=None)
        rows.append((
            run.run_id,
            str(last["step"]),
            MISSING if train_ms is None else f"{train_ms / 1000:.1f} s",
            f"{validations[-1]['val_bpb']:.4f}" if validations else MISSING,
            run.roundtrip_val_bpb or MISSING,
            MISSING if run.artifact_bytes is None else f"{run.artifact_bytes:,}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return lines


def curve_keys(runs: list[Run]) -> list[str]:
    """Return the metrics to draw: val_bpb and ce always, jepa and sigreg where some run has them nonzero."""
    keys = []
    for key, _ in CURVES:
        values = [record[key] for run in runs for record in run.series(key)]
        if key in OPTIONAL_CURVES and not any(value != 0 for value in values):
            continue
        keys.append(key)
    return keys


def plot_runs(runs: list[Run]):
    """Draw one row per metric and one column per x axis (step, training time); return the Figure.

    Every axis has one line per run, labelled with its run id, in the same colour throughout.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ReportError('drawing the figure needs matplotlib, which is not installed; run pip install -e ".[report]"') from None

    keys = curve_keys(runs)
    labels = dict(CURVES)
    figure = Figure(figsize=(12, 2.8 * len(keys) + 0.6), layout="constrained")
    axes = figure.subplots(len(keys), len(X_AXES), squeeze=False, sharex="col")
    for row, key in enumerate(keys):
        for column, (x_key, x_label) in enumerate(X_AXES):
            ax = axes[row][column]
            for index, run in enumerate(runs):
                records = run.series(key)
                if x_key == "step":
                    xs = [record["step"] for record in records]
                else:
                    xs = [record.get("train_time_ms", math.nan) / 1000 for record in records]
                marker = "o" if key == "val_bpb" else None
                ax.plot(xs, [record[key] for record in records], color=f"C{index}", marker=marker,
                        markersize=3, linewidth=1.2, label=run.run_id)
            ax.set_ylabel(labels[key])
            ax.grid(True, alpha=0.3)
            if x_key == "step":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if row == len(keys) - 1:
                ax.set_xlabel(x_label)
    axes[0][0].legend(loc="upper right", fontsize="small")
    return figure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jaxconnectome.report",
        description="Plot validation bits per byte and training losses of runs against steps and training time, "
        "and print a table of their final results.",
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folder (runs/<run_id>) or log file")
    parser.add_argument(
        "--output", type=Path, default=Path("report.png"), metavar="FILE.png", help="figure path (default: report.png)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = [read_run(path) for path in args.runs]
        for line in format_table(runs):
            print(line)
        figure = plot_runs(runs)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.output, dpi=100)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_REPORT_ERROR
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
