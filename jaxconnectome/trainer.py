"""The training run: data, model and optimiser from Settings, then the reference's loop.

The loop mirrors the reference. It validates at step 0, every VAL_LOSS_EVERY steps and at
the end, and logs training losses at steps 1-10 and every TRAIN_LOG_EVERY steps. A
wallclock cap stops the run after the step that crosses it, and validation time does not
count towards the cap.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxconnectome import connectome, sharding
from jaxconnectome.distributed import StopSignal, process_zero_run_id, process_zero_value
from jaxconnectome.artifact import export_run, import_model, validation_evaluator
from jaxconnectome.checkpoints import Checkpointer
from jaxconnectome.data import (
    DataError,
    TrainLoader,
    build_byte_tables,
    check_token_ids,
    find_shards,
    load_tokenizer,
    prepare_demo_data,
    read_shard,
)
from jaxconnectome.evaluation import ValidationSet, build_validation_set, evaluate, make_loss_sum_fn
from jaxconnectome.model import Buffer, ConnectomeJEPA, count_params
from jaxconnectome.optim import lr_multiplier, reads_clock
from jaxconnectome.run_log import RunLogger, TrainTimer, train_line, val_line, write_json_atomic
from jaxconnectome.settings import Settings, SettingsError, check_batch_layout
from jaxconnectome.summary import run_summary_lines
from jaxconnectome.train_step import TrainState, make_train_step

RUNS_DIR = Path("runs")
FINEWEB_HINT = (
    "Download the challenge's sp1024 export from the Hugging Face dataset repo willdepueoai/parameter-golf "
    "into ./data with `pip install -e \".[download]\"` and `python -m jaxconnectome.data download --variant sp1024 "
    "--train-shards 10` (or set DATA_PATH and TOKENIZER_PATH to a copy), make shards from your own text with "
    "`python -m jaxconnectome.data prepare`, or train the embedded demo with `python train.py --config demo`"
)


def train_pattern(data_path: str) -> str:
    return str(Path(data_path) / "fineweb_train_*.bin")


def val_pattern(data_path: str) -> str:
    return str(Path(data_path) / "fineweb_val_*.bin")


def build_model(settings: Settings, platform: str) -> ConnectomeJEPA:
    graph = connectome.load_connectome()
    mask = connectome.hop_mask(settings.topology, settings.signal_flow, settings.seed)
    config = settings.model_config(platform)
    return ConnectomeJEPA(config, mask, graph.sensory_idx, graph.motor_idx, rngs=nnx.Rngs(params=settings.seed))


def check_training_data(data_path: str) -> None:
    """Fail before any run output is written when the training shards are missing."""
    try:
        find_shards(train_pattern(data_path))
    except DataError:
        raise DataError(f"DATA_PATH={data_path}: no fineweb_train_*.bin shards found. {FINEWEB_HINT}") from None


def prepare_demo(settings: Settings, run_dir: Path, log: RunLogger) -> Settings:
    """Build the demo corpus, tokenizer and shards in the run folder and point the settings at them."""
    log.line("demo_data: building a corpus from Python's bundled documentation")
    data_dir, tokenizer_path = prepare_demo_data(run_dir / "data")
    return dataclasses.replace(settings, data_path=str(data_dir), tokenizer_path=str(tokenizer_path))


def header_lines(settings: Settings, model, num_train_shards: int, val: ValidationSet, world_size: int, accum: int):
    s = settings
    params = count_params(model)
    adjacency = connectome.build_topology(s.topology, s.seed)
    return [
        f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={s.tokenizer_path}",
        f"train_loader:dataset:{Path(s.data_path).name} train_shards:{num_train_shards}",
        f"val_loader:shards pattern={val_pattern(s.data_path)} tokens:{val.token_count}",
        connectome.summary_line(adjacency, s.topology),
        f"model_params:{params} trainable:{params}",
        f"architecture: embed_dim={s.embed_dim} num_hops={s.num_hops} cross_attn_every={s.cross_attn_every} "
        f"head_dim={s.head_dim} num_attn_heads={s.num_attn_heads} skip_every={s.skip_every} "
        f"num_channels={s.num_channels} lr_schedule={s.lr_schedule}",
        f"jepa: mask_ratio={s.mask_ratio} mask_span={s.mask_span_length} jepa_weight={s.jepa_weight} "
        f"sigreg_weight={s.sigreg_weight}",
        f"optimizer: AdamW lr={s.learning_rate} wd={s.weight_decay}",
        f"world_size:{world_size} grad_accum_steps:{accum}",
        f"train_batch_tokens:{s.train_batch_tokens} train_seq_len:{s.train_seq_len} iterations:{s.iterations} "
        f"warmup_steps:{s.warmup_steps} max_wallclock_seconds:{s.max_wallclock_seconds:.3f}",
        f"precision: param_dtype={s.param_dtype} compute_dtype={model.config.compute_dtype} "
        f"signal_flow={s.signal_flow} platform={jax.default_backend()} devices={jax.device_count()}",
    ]


def should_log_train(step: int, every: int) -> bool:
    return step <= 10 or (every > 0 and step % every == 0)


def run(settings: Settings) -> dict:
    """Train with `settings`; return the final validation numbers and the run folder.

    Every input is checked before the run folder is created, except with DEMO_DATA, whose
    data is built inside the run folder.
    """
    try:
        mesh = sharding.make_mesh(settings.fsdp)
    except ValueError as error:
        raise SettingsError(str(error)) from None
    world_size = mesh.devices.size
    accum = check_batch_layout(settings, world_size)
    settings = dataclasses.replace(settings, run_id=process_zero_run_id(settings.run_id))
    run_dir = RUNS_DIR / settings.run_id
    data = None
    if not settings.demo_data:
        check_training_data(settings.data_path)
        data = load_data(settings, mesh)
    initial = read_initial_model(settings) if settings.init_from else None
    log = RunLogger(run_dir, is_main=jax.process_index() == 0)
    try:
        if data is None:
            settings = prepare_demo(settings, run_dir, log)
            data = load_data(settings, mesh)
        return _run(settings, run_dir, log, mesh, accum, data, initial)
    finally:
        log.close()


@dataclasses.dataclass
class RunData:
    validation: ValidationSet
    loader: TrainLoader
    num_train_shards: int


def load_data(settings: Settings, mesh) -> RunData:
    """Load the tokenizer and validation set and check every shard against VOCAB_SIZE."""
    tokenizer = load_tokenizer(settings.tokenizer_path, settings.vocab_size)
    tables = build_byte_tables(tokenizer, settings.vocab_size)
    val = build_validation_set(val_pattern(settings.data_path), settings.train_seq_len, tables)
    check_token_ids(val.inputs, settings.vocab_size, val_pattern(settings.data_path))
    check_token_ids(val.targets, settings.vocab_size, val_pattern(settings.data_path))
    train_shards = find_shards(train_pattern(settings.data_path))
    for path in train_shards:
        check_token_ids(read_shard(path), settings.vocab_size, path)
    # Each process reads only the slices of the workers on its own devices.
    loader = TrainLoader(train_pattern(settings.data_path), mesh.devices.size, ranks=sharding.local_workers(mesh))
    return RunData(validation=val, loader=loader, num_train_shards=len(train_shards))


@dataclasses.dataclass
class Run:
    """Everything the training loop works with, built once from the settings."""

    settings: Settings
    run_dir: Path
    log: RunLogger
    mesh: Any
    accum: int
    model: ConnectomeJEPA
    loader: TrainLoader
    val: ValidationSet
    state: TrainState
    step_fn: Callable
    loss_sum_fn: Callable
    val_batch_seqs: int
    checkpointer: Checkpointer


def _run(settings: Settings, run_dir: Path, log: RunLogger, mesh, accum: int, data: RunData, initial) -> dict:
    run = setup(settings, run_dir, log, mesh, accum, data, initial)
    stop = StopSignal()
    try:
        return train_loop(run, stop)
    finally:
        stop.restore()
        run.checkpointer.close()


def setup(settings: Settings, run_dir: Path, log: RunLogger, mesh, accum: int, data: RunData, initial) -> Run:
    """Build the model, train state and checkpointer, and write the run's header."""
    platform = jax.default_backend()
    world_size = mesh.devices.size
    checkpointer = Checkpointer(run_dir / "checkpoints", settings.checkpoints_kept, warn=log.line)
    model = build_model(settings, platform)
    # Resume order: the newest checkpoint of the run folder, else INIT_FROM, else fresh.
    if initial is not None and not checkpointer.steps():
        copy_initial_model(initial, model)
        log.line(f"init_from: {settings.init_from}")
    state, step_fn = make_train_step(model, settings.optimizer(), settings.loss_config(), mesh)
    graphdef, _, buffers = nnx.split(model, nnx.Param, ...)
    val_batch_seqs = settings.val_batch_seqs(world_size)

    resolved = dataclasses.asdict(settings) | {
        "world_size": world_size,
        "grad_accum_steps_resolved": accum,
        "compute_dtype_resolved": model.config.compute_dtype,
        "platform": platform,
    }
    if log.is_main:
        write_json_atomic(run_dir / "config.json", resolved)
    for line in header_lines(settings, model, data.num_train_shards, data.validation, world_size, accum):
        log.line(line)
    for line in run_summary_lines(settings, model, world_size, accum, jax.devices()):
        log.line(line)
    return Run(
        settings=settings, run_dir=run_dir, log=log, mesh=mesh, accum=accum, model=model, loader=data.loader,
        val=data.validation,
        state=state, step_fn=step_fn, loss_sum_fn=make_loss_sum_fn(graphdef, buffers, mesh),
        val_batch_seqs=val_batch_seqs, checkpointer=checkpointer,
    )


def checkpoint_meta(run: Run, step: int, train_ms: float, base_key: jax.Array) -> dict:
    return {
        "step": step,
        "train_time_ms": train_ms,
        "data": run.loader.state(),
        "base_key": np.asarray(base_key).tolist(),  # a raw uint32 key from jax.random.PRNGKey
    }


def resume(run: Run, timer: TrainTimer) -> tuple[int, jax.Array | None]:
    """Load the newest readable checkpoint into `run`; return its step (0 without one) and key."""
    restored = run.checkpointer.restore_latest(run.state)
    if restored is None:
        return 0, None
    run.state, meta = restored
    step = int(meta["step"])
    run.loader.restore(meta["data"])
    timer.total_ms = float(meta["train_time_ms"])
    run.log.line(f"resumed: step:{step} from {run.checkpointer.directory} train_time:{timer.total_ms:.0f}ms")
    run.log.truncate_records(after_step=step)
    return step, jnp.asarray(meta["base_key"], jnp.uint32)


@dataclasses.dataclass
class QueuedStep:
    """A dispatched step whose losses are still on the device."""

    step: int  # the step count once it has run
    metrics: dict[str, jax.Array]
    lr: float


@dataclasses.dataclass
class LoopClock:
    """Training time read after each finished step, and the duration of the latest one."""

    train_ms: float = 0.0
    last_step_ms: float | None = None  # None until a step has been timed

    def update(self, train_ms: float) -> None:
        self.last_step_ms = train_ms - self.train_ms
        self.train_ms = train_ms

    def near(self, cap_ms: float) -> bool:
        """Return whether the step in flight, or the next, may reach `cap_ms` (within two step times)."""
        return self.last_step_ms is None or self.train_ms + 2 * self.last_step_ms >= cap_ms


def validates_at(settings: Settings, step: int) -> bool:
    return settings.val_loss_every > 0 and step % settings.val_loss_every == 0


def checkpoints_at(settings: Settings, step: int) -> bool:
    return settings.checkpoint_every > 0 and step > 0 and step % settings.checkpoint_every == 0


def must_wait(run: Run, step: int, stop: StopSignal, clock: LoopClock, stop_after: int | None) -> bool:
    """Return whether the queued step has to finish before the loop goes on from `step`.

    It has to where the step is validated, checkpointed or the last, on a signal, and where
    the LR reads the clock. It also has to near a wallclock cap, because there a step queued
    too early would run past the step that crosses the cap (see LoopClock.near).
    """
    settings = run.settings
    cap_ms = 1000.0 * settings.max_wallclock_seconds
    return (
        not settings.overlap_steps
        or step == settings.iterations
        or stop.received()
        or stop_after is not None
        or validates_at(settings, step)
        or checkpoints_at(settings, step)
        or reads_clock(settings.schedule_config())
        or (cap_ms > 0 and clock.near(cap_ms))
    )


def finish_step(run: Run, queued: QueuedStep, timer: TrainTimer, clock: LoopClock) -> dict:
    """Read, check and log a step's losses, and return its metrics.jsonl fields."""
    settings, log = run.settings, run.log
    metrics = {k: float(v) for k, v in jax.device_get(queued.metrics).items()}
    clock.update(process_zero_value(timer.elapsed_ms()))
    if not all(math.isfinite(v) for v in metrics.values()):
        kept = run.checkpointer.steps()
        raise TrainingDiverged(
            f"non-finite loss at step {queued.step} (ce={metrics['ce']} jepa={metrics['jepa']} "
            f"sigreg={metrics['sigreg']}); the last good checkpoint is step {kept[-1] if kept else 'none'} in "
            f"{run.checkpointer.directory}; lower LEARNING_RATE or check the data"
        )
    record = {}
    if should_log_train(queued.step, settings.train_log_every):
        log.line(train_line(queued.step, settings.iterations, metrics, queued.lr, clock.train_ms))
        losses = {name: metrics[name] for name in ("ce", "jepa", "sigreg")}
        record = {"step": queued.step, "lr": queued.lr, "train_time_ms": clock.train_ms} | losses
    log.progress(queued.step, settings.iterations, clock.train_ms, metrics["ce"])
    return record


def cap_crossed(settings: Settings, clock: LoopClock) -> bool:
    return settings.max_wallclock_seconds > 0 and clock.train_ms >= 1000.0 * settings.max_wallclock_seconds


def queue_step(run: Run, step: int, base_key: jax.Array, timer: TrainTimer) -> QueuedStep:
    """Load the next batch and dispatch the step that follows `step` without waiting for it."""
    settings = run.settings
    multiplier = lr_multiplier(step, settings.schedule_config(), process_zero_value(timer.elapsed_ms()))
    inputs, targets = run.loader.next_batch(settings.train_batch_tokens, settings.train_seq_len, run.accum)
    inputs, targets = sharding.global_batch(run.mesh, inputs), sharding.global_batch(run.mesh, targets)
    run.state, metrics = run.step_fn(run.state, inputs, targets, base_key, multiplier)
    return QueuedStep(step=step + 1, metrics=metrics, lr=settings.learning_rate * multiplier)


def train_loop(run: Run, stop: StopSignal) -> dict:
    """Run the reference's loop from step 0 or the latest checkpoint; return the final numbers.

    With `overlap_steps` the loop queues step k+1 before it reads step k's losses, so the
    host loads the next batch and writes the logs while the device computes. Where a step
    needs the state or its losses at once (validation, checkpoints, the end, signals, a
    near wallclock cap) the loop waits for it first, so the logs, checkpoints and numbers
    are those of the waiting loop.
    """
    settings, log = run.settings, run.log
    iterations = settings.iterations
    timer = TrainTimer()
    clock = LoopClock()
    step, saved_key = resume(run, timer)
    clock.train_ms = timer.total_ms
    base_key = saved_key if saved_key is not None else jax.random.fold_in(jax.random.PRNGKey(settings.seed), 1)
    resumed_step = step if step > 0 else None
    stop_after = None
    result = {"run_dir": str(run.run_dir)}
    record = {}  # metrics.jsonl gets one object per logged step, train and val merged
    queued = None
    timer.resume()  # training time starts here, after the resume work
    while True:
        if queued is not None and must_wait(run, step, stop, clock, stop_after):
            record = finish_step(run, queued, timer, clock)
            queued = None
            if stop_after is None and cap_crossed(settings, clock):
                stop_after = step
        if queued is None:
            cap_reached = stop_after is not None and step >= stop_after
            last_step = step == iterations or cap_reached
            # A resumed run validated this step before its checkpoint was written.
            validate_now = validates_at(settings, step) and step != resumed_step
            if last_step or validate_now:
                timer.pause()
                val_loss, val_bpb = evaluate(run.state.params, run.loss_sum_fn, run.val, run.val_batch_seqs, run.mesh)
                train_ms = timer.elapsed_ms()
                log.line(val_line(step, iterations, val_loss, val_bpb, train_ms))
                record |= {"step": step, "val_loss": val_loss, "val_bpb": val_bpb, "train_time_ms": train_ms}
                result |= {"step": step, "val_loss": val_loss, "val_bpb": val_bpb, "train_time_ms": train_ms}
                timer.resume()
            # The checkpoint of a resumed step was saved after that step's record was written.
            if record and step != resumed_step:
                log.record(record)
            record = {}

            if last_step or stop.received() or checkpoints_at(settings, step):
                run.checkpointer.save(step, run.state, checkpoint_meta(run, step, timer.elapsed_ms(), base_key))
            if last_step:
                if cap_reached and step < iterations:
                    log.line(f"stopping_early: wallclock_cap train_time:{timer.elapsed_ms():.0f}ms step:{step}/{iterations}")
                break
            if stop.received():
                log.line(f"stopping: {stop.name} received, checkpoint saved at step:{step}/{iterations}")
                result["interrupted"] = True
                return result

        previous, queued = queued, queue_step(run, step, base_key, timer)
        step += 1
        if previous is not None:
            # The step before the one just queued: no validation or checkpoint falls on it,
            # or the loop would have waited for it above.
            previous_record = finish_step(run, previous, timer, clock)
            if previous_record:
                log.record(previous_record)
            if stop_after is None and cap_crossed(settings, clock):
                # Reached only if a step ran over twice the latest step time: the queued
                # step runs too, one past the reference's stopping point.
                stop_after = step

    log_peak_memory(log)
    result["params"] = run.state.params
    export = export_run(
        run.model, run.run_dir, params=run.state.params,
        evaluate_model=validation_evaluator(run.val, run.val_batch_seqs, run.mesh), log=log.line,
        compact=settings.export_compact, topology=settings.topology, signal_flow=settings.signal_flow,
        seed=settings.seed,
    )
    result |= {"int8_zlib_bytes": export.int8_zlib_bytes, "roundtrip_val_loss": export.val_loss,
               "roundtrip_val_bpb": export.val_bpb}
    return result


def read_initial_model(settings: Settings) -> ConnectomeJEPA:
    """Import the INIT_FROM artifact and check that its shape matches the model settings."""
    config = settings.model_config(jax.default_backend())
    imported, _ = import_model(settings.init_from, config, config.skip_every, config.cross_attn_every)
    fields = ("vocab_size", "embed_dim", "num_hops", "cross_attn_every", "head_dim", "num_attn_heads",
              "skip_every", "num_channels")
    for name in fields:
        if getattr(imported.config, name) != getattr(config, name):
            raise SettingsError(
                f"INIT_FROM={settings.init_from}: the artifact has {name}={getattr(imported.config, name)} but "
                f"{name.upper()}={getattr(config, name)}; set the model settings to the artifact's"
            )
    return imported


def copy_initial_model(imported: ConnectomeJEPA, model: ConnectomeJEPA) -> None:
    """Copy parameters (cast to the model's PARAM_DTYPE) and hop masks from `imported` into `model`.

    The masks are taken as the artifact stores them, dequantised, as the reference's own
    round trip evaluates them.
    """
    dtype = model.tok_emb[...].dtype
    nnx.update(model, jax.tree.map(lambda x: x.astype(dtype), nnx.state(imported, nnx.Param)))
    nnx.update(model, nnx.state(imported, Buffer))


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the step and the last good checkpoint."""


def log_peak_memory(log: RunLogger) -> None:
    """Print the reference's peak memory line where the backend reports memory statistics."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        peak = stats["peak_bytes_in_use"] // 2**20
        reserved = stats.get("bytes_reserved", stats.get("bytes_limit", 0)) // 2**20
        log.line(f"peak memory allocated: {peak} MiB reserved: {reserved} MiB")

