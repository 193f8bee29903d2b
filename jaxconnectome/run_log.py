"""Run outputs: the reference's log lines, metrics.jsonl, config.json and a progress bar.

Log lines go to the console and to runs/<run_id>/log.txt; each logged step also gets one
JSON object in metrics.jsonl. The progress bar is drawn on stderr only on a terminal.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file in the same folder, then rename it into place."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        json.dump(data, tmp, indent=2, sort_keys=True)
        tmp.write("\n")
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def train_line(step: int, iterations: int, metrics: dict, lr: float, train_ms: float) -> str:
    return (
        f"step:{step}/{iterations} ce:{metrics['ce']:.4f} jepa:{metrics['jepa']:.4f} "
        f"sigreg:{metrics['sigreg']:.6f} lr:{lr:.6f} train_time:{train_ms:.0f}ms "
        f"step_avg:{train_ms / max(step, 1):.2f}ms"
    )


def val_line(step: int, iterations: int, val_loss: float, val_bpb: float, train_ms: float) -> str:
    return (
        f"step:{step}/{iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} "
        f"train_time:{train_ms:.0f}ms step_avg:{train_ms / max(step, 1):.2f}ms"
    )


class RunLogger:
    """Writes log.txt and metrics.jsonl in the run folder; only the main process writes."""

    def __init__(self, run_dir: Path, is_main: bool = True, stream=None):
        self.run_dir = run_dir
        self.is_main = is_main
        self.stream = stream or sys.stdout
        self._progress_shown = False
        self._show_progress = is_main and sys.stderr.isatty()
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._log = open(run_dir / "log.txt", "a", encoding="utf-8")
            self._metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")

    def line(self, text: str) -> None:
        if not self.is_main:
            return
        self._clear_progress()
        print(text, file=self.stream, flush=True)
        self._log.write(text + "\n")
        self._log.flush()

    def record(self, record: dict) -> None:
        """Append one JSON object as a single write, so a crash cannot split a line."""
        if not self.is_main:
            return
        self._metrics.write(json.dumps(record, sort_keys=True) + "\n")
        self._metrics.flush()

    def truncate_records(self, after_step: int) -> None:
        """Drop metrics.jsonl records past `after_step`, written by a run that was then interrupted.

        The file is rewritten through a temporary file, so a crash keeps the old one.
        """
        if not self.is_main:
            return
        self._metrics.close()
        path = self.run_dir / "metrics.jsonl"
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("step", 0) <= after_step:
                kept.append(line + "\n")
        with tempfile.NamedTemporaryFile("w", dir=self.run_dir, prefix=".metrics.", delete=False) as tmp:
            tmp.writelines(kept)
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, path)
        self._metrics = open(path, "a", encoding="utf-8")

    def progress(self, step: int, total: int, train_ms: float, ce: float | None) -> None:
        if not self._show_progress:
            return
        width = 30
        filled = int(width * step / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        ce_text = f" ce {ce:.4f}" if ce is not None else ""
        step_ms = train_ms / max(step, 1)
        sys.stderr.write(f"\r[{bar}] {step}/{total} {step_ms:.0f} ms/step{ce_text}")
        sys.stderr.flush()
        self._progress_shown = True

    def _clear_progress(self) -> None:
        if self._progress_shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._progress_shown = False

    def close(self) -> None:
        if self.is_main:
            self._clear_progress()
            self._log.close()
            self._metrics.close()


class TrainTimer:
    """Training time in ms, excluding the pauses (validation) between `pause` and `resume`."""

    def __init__(self):
        self.total_ms = 0.0
        self._start = time.perf_counter()
        self._running = True

    def elapsed_ms(self) -> float:
        if not self._running:
            return self.total_ms
        return self.total_ms + 1000.0 * (time.perf_counter() - self._start)

    def pause(self) -> None:
        self.total_ms = self.elapsed_ms()
        self._running = False

    def resume(self) -> None:
        self._start = time.perf_counter()
        self._running = True
