"""End-of-run export: write the artifacts, read them back, and evaluate the round trip.

This mirrors the end of the reference's training script: it saves `final_model.pt`,
writes `final_model.int8.ptz`, loads the artifact back from disk, dequantises it,
evaluates the validation set with the dequantised weights and logs its lines:

    Serialized model: N bytes
    Code size: N bytes
    Total submission size: N bytes
    Serialized model int8+zlib: N bytes (payload:N ratio:R x)
    Total submission size int8+zlib: N bytes
    final_int8_zlib_roundtrip val_loss:L val_bpb:B eval_time:Tms
    final_int8_zlib_roundtrip_exact val_loss:L val_bpb:B

The payload is the sum of nbytes of the stored tensors and the ratio is the original
state_dict's nbytes over the payload, as the reference computes them.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
from flax import nnx

import jaxconnectome
from jaxconnectome.artifact import exchange
from jaxconnectome.evaluation import ValidationSet, evaluate, make_loss_sum_fn
from jaxconnectome.model import ConnectomeJEPA

PT_NAME = "final_model.pt"
PTZ_NAME = "final_model.int8.ptz"
COMPACT_NAME = "final_model.compact.zlib"


def code_files(root: Path | None = None) -> list[Path]:
    """List the source files a training run needs, which the submission size counts as code.

    The challenge counts the bytes of the code that produces the model; the reference is
    one script. Here that is train.py, every .py file of the jaxconnectome package
    (subpackages included) and the package's connectome_data.json. configs/ is left out:
    the default (primary) run needs no config file. Without train.py beside the package
    (a non-editable install), only the package is counted.
    """
    package = Path(jaxconnectome.__file__).resolve().parent
    root = package.parent if root is None else root
    files = [root / "train.py"] if (root / "train.py").is_file() else []
    files += sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    files.append(package / "connectome_data.json")
    return files


def code_size(root: Path | None = None) -> int:
    return sum(path.stat().st_size for path in code_files(root))


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, then rename it over `path`."""
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def validation_evaluator(
    val: ValidationSet, batch_seqs: int, mesh
) -> Callable[[ConnectomeJEPA], tuple[float, float, float]]:
    """Return fn(model) -> (val_loss, val_bpb, eval_ms) over `val`, evaluated as the trainer evaluates.

    The function compiles on one batch first and times only the evaluation that follows,
    as the reference's eval_time does.
    """

    def evaluate_model(model: ConnectomeJEPA) -> tuple[float, float, float]:
        graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
        loss_sum_fn = make_loss_sum_fn(graphdef, buffers, mesh)
        warmup_seqs = min(len(val.inputs), batch_seqs)
        warmup = dataclasses.replace(val, inputs=val.inputs[:warmup_seqs], targets=val.targets[:warmup_seqs])
        evaluate(params, loss_sum_fn, warmup, batch_seqs, mesh)
        start = time.perf_counter()
        val_loss, val_bpb = evaluate(params, loss_sum_fn, val, batch_seqs, mesh)
        return val_loss, val_bpb, 1000.0 * (time.perf_counter() - start)

    return evaluate_model


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Sizes in bytes, the round trip's validation numbers, the files written and the log lines."""

    model_bytes: int  # final_model.pt
    code_bytes: int
    int8_zlib_bytes: int  # final_model.int8.ptz
    payload_bytes: int
    baseline_bytes: int
    compact_bytes: int | None
    compact_payload_bytes: int | None
    val_loss: float | None  # of the dequantised model; None without an evaluator
    val_bpb: float | None
    eval_ms: float | None
    paths: dict[str, str]
    lines: list[str]

    @property
    def ratio(self) -> float:
        return self.baseline_bytes / max(self.payload_bytes, 1)


def export_run(
    model: ConnectomeJEPA,
    run_dir: str | Path,
    *,
    params: nnx.State | None = None,
    evaluate_model: Callable[[ConnectomeJEPA], tuple[float, float, float]] | None = None,
    log: Callable[[str], None] = print,
    compact: bool = False,
    topology: str | None = None,
    signal_flow: str | None = None,
    seed: int | None = None,
    code_root: Path | None = None,
) -> ExportResult:
    """Write final_model.pt and final_model.int8.ptz (and the compact file) and check the round trip.

    `params` (e.g. a train state's parameters) replaces the model's own when given.
    `evaluate_model` is called with the model rebuilt from the artifact read back from
    disk, e.g. `validation_evaluator(val, batch_seqs, mesh)`; without it the round trip
    stops at rebuilding the model. topology, signal_flow and seed let the compact file
    record a random_sparse mask by its seed. Every process must call this function, but
    only process 0 writes files.
    """
    run_dir = Path(run_dir)
    is_main = jax.process_index() == 0
    if params is not None:
        graphdef, _, rest = nnx.split(model, nnx.Param, ...)
        model = nnx.merge(graphdef, params, rest)

    state_dict = exchange.export_state_dict(model)
    pt_blob = exchange.state_dict_bytes(state_dict)
    ptz_blob, stats, quant_obj = exchange.quantized_artifact(state_dict)
    paths = {"pt": str(run_dir / PT_NAME), "int8_zlib": str(run_dir / PTZ_NAME)}
    compact_blob = compact_payload = None
    if compact:
        compact_blob, compact_payload = exchange.compact_artifact(state_dict, quant_obj, topology, signal_flow, seed)
        paths["compact"] = str(run_dir / COMPACT_NAME)

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / PT_NAME, pt_blob)
        write_atomic(run_dir / PTZ_NAME, ptz_blob)
        if compact_blob is not None:
            write_atomic(run_dir / COMPACT_NAME, compact_blob)

    code_bytes = code_size(code_root)
    lines = [
        f"Serialized model: {len(pt_blob)} bytes",
        f"Code size: {code_bytes} bytes",
        f"Total submission size: {len(pt_blob) + code_bytes} bytes",
        f"Serialized model int8+zlib: {len(ptz_blob)} bytes (payload:{stats.payload_bytes} ratio:{stats.ratio:.2f}x)",
        f"Total submission size int8+zlib: {len(ptz_blob) + code_bytes} bytes",
    ]
    if compact_blob is not None:
        lines += [
            f"Serialized model compact+zlib: {len(compact_blob)} bytes (payload:{compact_payload})",
            f"Total submission size compact+zlib: {len(compact_blob) + code_bytes} bytes",
        ]
    for line in lines:
        log(line)

    # Read the artifact back as the reference does; processes other than 0 may not see
    # its disk, and use the identical bytes they computed.
    blob = (run_dir / PTZ_NAME).read_bytes() if is_main else ptz_blob
    artifact = exchange.read_artifact_bytes(blob, paths["int8_zlib"])
    restored = exchange.model_from_state_dict(artifact.state_dict, model.config, paths["int8_zlib"])

    val_loss = val_bpb = eval_ms = None
    if evaluate_model is not None:
        val_loss, val_bpb, eval_ms = evaluate_model(restored)
        roundtrip = [
            f"final_int8_zlib_roundtrip val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} eval_time:{eval_ms:.0f}ms",
            f"final_int8_zlib_roundtrip_exact val_loss:{val_loss:.8f} val_bpb:{val_bpb:.8f}",
        ]
        for line in roundtrip:
            log(line)
        lines += roundtrip

    return ExportResult(
        model_bytes=len(pt_blob), code_bytes=code_bytes, int8_zlib_bytes=len(ptz_blob),
        payload_bytes=stats.payload_bytes, baseline_bytes=stats.baseline_bytes,
        compact_bytes=None if compact_blob is None else len(compact_blob), compact_payload_bytes=compact_payload,
        val_loss=val_loss, val_bpb=val_bpb, eval_ms=eval_ms, paths=paths, lines=lines,
    )
