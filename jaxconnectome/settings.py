"""Run settings: the reference's environment variables plus this project's own.

Settings resolve in order: the dataclass defaults (the reference's), a named config in
configs/, the environment variables (upper-case names, as the reference reads them), then
`--set key=value` flags (lower-case names). Unknown keys and wrong types are errors.
"""

from __future__ import annotations

import dataclasses
import os
import runpy
import uuid
from collections.abc import Mapping
from pathlib import Path

import optax

from jaxconnectome.connectome import SIGNAL_FLOWS, TOPOLOGIES
from jaxconnectome.layers import ATTENTION_IMPLS
from jaxconnectome.model import DTYPES, HOP_FORMS, ModelConfig
from jaxconnectome.optim import SCHEDULES, ScheduleConfig, build_optimizer
from jaxconnectome.train_step import LossConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class SettingsError(ValueError):
    """A setting or config that cannot be used; the message names it and the fix."""


def _field(default, help_text: str):
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class Settings:
    # Data and run bookkeeping.
    data_path: str = _field("./data/datasets/fineweb10B_sp1024", "folder of fineweb_{train,val}_*.bin shards")
    tokenizer_path: str = _field("./data/tokenizers/fineweb_1024_bpe.model", "SentencePiece model for bits per byte")
    run_id: str = _field("", "name of the run folder runs/<run_id>/ (empty: a random UUID)")
    seed: int = _field(1337, "seed of initialisation, data masks and random_sparse topology")
    demo_data: bool = _field(False, "build a corpus from Python's bundled docs, a tokenizer and shards in the run folder")
    # Evaluation and logging.
    val_batch_size: int = _field(524288, "validation tokens per evaluation batch, over all workers and micro-steps")
    val_loss_every: int = _field(1000, "validate every N steps (0: only at the end)")
    train_log_every: int = _field(200, "log training losses every N steps (and at steps 1-10)")
    # Schedule.
    iterations: int = _field(5000, "training steps")
    warmdown_iters: int = _field(0, "linear schedule: steps of linear decay at the end (0: none)")
    warmup_steps: int = _field(100, "steps of linear LR warmup")
    train_batch_tokens: int = _field(524288, "tokens per optimiser step over all workers")
    train_seq_len: int = _field(1024, "sequence length in tokens")
    max_wallclock_seconds: float = _field(600.0, "stop after the step that crosses this training time (<= 0: no cap)")
    grad_accum_steps: int = _field(0, "micro-steps per optimiser step (0: max(1, 8 // devices), as the reference)")
    checkpoint_every: int = _field(1000, "save an orbax checkpoint every N steps (0: only on SIGTERM/SIGINT and at the end)")
    checkpoints_kept: int = _field(3, "number of newest checkpoints kept in runs/<run_id>/checkpoints/")
    init_from: str = _field("", "start from this .pt/.ptz/compact artifact (the reference's or ours) when no checkpoint exists")
    export_compact: bool = _field(False, "also write final_model.compact.zlib, storing only the hop weights the mask keeps")
    fsdp: int = _field(1, "devices per parameter-sharding group; parameters and Adam state split over them (1: none)")
    # Model.
    vocab_size: int = _field(1024, "vocabulary size; must equal the tokenizer's")
    embed_dim: int = _field(768, "embedding width E")
    num_hops: int = _field(6, "masked hops through the connectome")
    cross_attn_every: int = _field(2, "causal attention after every N-th hop")
    head_dim: int = _field(128, "attention head size")
    num_attn_heads: int = _field(4, "attention heads")
    logit_softcap: float = _field(30.0, "logits become cap * tanh(logits / cap)")
    rope_base: float = _field(10000.0, "RoPE frequency base")
    skip_every: int = _field(2, "re-inject the sensory signal after every N-th hop (0: never)")
    num_channels: int = _field(1, "parallel channels, each with its own hop weights and the same mask")
    topology: str = _field("connectome", f"hop mask: {' | '.join(TOPOLOGIES)}")
    signal_flow: str = _field(
        "post_to_pre", "post_to_pre: the reference's mask, a neuron reads its postsynaptic partners; pre_to_post: transposed"
    )
    param_dtype: str = _field("float32", "dtype of the master weights (bfloat16 reproduces the reference)")
    compute_dtype: str = _field("auto", "dtype of matmuls: auto (bfloat16 on GPU/TPU, float32 on CPU), float32, bfloat16")
    # Speed switches: each computes the same numbers as its plain alternative, up to float rounding.
    hop_loop: str = _field(
        "auto", "how the hops run: auto (unrolled on CPU, scan elsewhere), scan (lax.scan), unrolled (a Python loop)"
    )
    attention_impl: str = _field(
        "auto", "softmax attention: auto (flash on CPU, xla elsewhere), xla (full masked scores), "
        "blocked (only keys up to each query block), flash (blocked, with a backward pass that keeps no scores), "
        "cudnn (GPU with bfloat16 compute only)"
    )
    attention_block_size: int = _field(128, "blocked and flash attention: queries per block")
    remat_attention: bool = _field(
        True, "xla and blocked attention: recompute the scores in the backward pass instead of storing them (false: store)"
    )
    hop_form: str = _field("dense", "masked hops as dense W*mask matmuls, or edges (gather and segment sum; slower on CPU)")
    fuse_encoder_passes: bool = _field(
        False, "encode the unmasked and the JEPA-masked batch in one call on their concatenation (false: two calls)"
    )
    share_masked_prefix: bool = _field(
        True, "compute the JEPA-masked pass up to the first attention layer only for the mask_emb row, "
        "reusing the unmasked pass elsewhere (false: encode the masked input in full)"
    )
    overlap_steps: bool = _field(
        True, "queue the next step before reading the last one's losses, so batches load while the device computes "
        "(false: wait for every step)"
    )
    # Losses.
    mask_ratio: float = _field(0.3, "JEPA: fraction of positions masked per sequence")
    mask_span_length: float = _field(4.0, "JEPA: mean span length of the exponential draw")
    jepa_weight: float = _field(0.5, "weight of the JEPA loss (0: no masked pass)")
    sigreg_weight: float = _field(1e-4, "weight of SigREG (0: off)")
    sigreg_slices: int = _field(64, "SigREG random projections")
    sigreg_knots: int = _field(17, "SigREG quadrature knots on [0, 3]")
    # Optimiser.
    learning_rate: float = _field(1e-3, "AdamW LR (tok_emb and mask_emb train at 0.3 x LR)")
    weight_decay: float = _field(0.1, "AdamW decoupled weight decay on every parameter")
    beta1: float = _field(0.9, "AdamW beta1")
    beta2: float = _field(0.95, "AdamW beta2")
    grad_clip_norm: float = _field(1.0, "clip gradients to this global norm (0: no clipping)")
    lr_schedule: str = _field("cosine", f"LR schedule after warmup: {' | '.join(SCHEDULES)}")

    def model_config(self, platform: str) -> ModelConfig:
        return ModelConfig(
            vocab_size=self.vocab_size,
            embed_dim=self.embed_dim,
            num_hops=self.num_hops,
            cross_attn_every=self.cross_attn_every,
            head_dim=self.head_dim,
            num_attn_heads=self.num_attn_heads,
            logit_softcap=self.logit_softcap,
            rope_base=self.rope_base,
            skip_every=self.skip_every,
            num_channels=self.num_channels,
            param_dtype=self.param_dtype,
            compute_dtype=resolve_compute_dtype(self.compute_dtype, platform),
            scan_hops=resolve_hop_loop(self.hop_loop, platform) == "scan",
            attention_impl=resolve_attention_impl(self.attention_impl, platform),
            attention_block_size=self.attention_block_size,
            remat_attention=self.remat_attention,
            hop_form=self.hop_form,
            fuse_encoder_passes=self.fuse_encoder_passes,
            share_masked_prefix=self.share_masked_prefix,
        )

    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig(
            schedule=self.lr_schedule,
            iterations=self.iterations,
            warmup_steps=self.warmup_steps,
            warmdown_iters=self.warmdown_iters,
            max_wallclock_seconds=self.max_wallclock_seconds,
        )

    def accumulation_steps(self, world_size: int) -> int:
        return self.grad_accum_steps if self.grad_accum_steps > 0 else max(1, 8 // world_size)

    def val_batch_seqs(self, world_size: int) -> int:
        """Return sequences per worker in an evaluation batch: VAL_BATCH_SIZE / (W * A) tokens, as the reference."""
        tokens = self.val_batch_size // (world_size * self.accumulation_steps(world_size))
        return max(1, tokens // self.train_seq_len)

    def loss_config(self) -> LossConfig:
        return LossConfig(
            jepa_weight=self.jepa_weight,
            sigreg_weight=self.sigreg_weight,
            mask_ratio=self.mask_ratio,
            mask_span_length=self.mask_span_length,
            sigreg_slices=self.sigreg_slices,
            sigreg_knots=self.sigreg_knots,
        )

    def optimizer(self) -> optax.GradientTransformation:
        return build_optimizer(self.learning_rate, self.weight_decay, self.beta1, self.beta2, self.grad_clip_norm)


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def resolve_compute_dtype(compute_dtype: str, platform: str) -> str:
    """Pick bfloat16 on accelerators and float32 on CPUs, where bfloat16 matmuls are slow."""
    if compute_dtype == "auto":
        return "float32" if platform == "cpu" else "bfloat16"
    return compute_dtype


def resolve_attention_impl(attention_impl: str, platform: str) -> str:
    """Pick flash attention on CPUs, where it measured fastest, and XLA's elsewhere.

    NOTE: flash and cudnn are never picked on a GPU because neither has run on one yet.
    """
    if attention_impl == "auto":
        return "flash" if platform == "cpu" else "xla"
    return attention_impl


HOP_LOOPS = ("scan", "unrolled")


def resolve_hop_loop(hop_loop: str, platform: str) -> str:
    """Unroll the hops on CPUs, where a step with the hops in lax.scan measured 1.3-1.5 times slower.

    NOTE: on GPU the choice has not been measured. Scan keeps the compiled program small.
    """
    if hop_loop == "auto":
        return "unrolled" if platform == "cpu" else "scan"
    return hop_loop


def parse_value(name: str, text: str, source: str):
    """Convert `text` to the type of setting `name`; `source` names where it came from."""
    kind = type(FIELDS[name].default)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return lowered in ("1", "true", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise SettingsError(f"{source}: {text!r} is not a valid {kind.__name__} for {name}") from None
    return text


def config_path(name: str) -> Path:
    """Find a config by name in configs/ or as a path to a .py file."""
    path = Path(name)
    if path.suffix != ".py":
        path = CONFIG_DIR / f"{name}.py"
    if not path.is_file():
        available = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
        raise SettingsError(f"config {name!r} not found; use a file path or one of: {', '.join(available)}")
    return path


def load_config(name: str) -> dict:
    """Read SETTINGS (a dict of lower-case setting names) from a config file."""
    path = config_path(name)
    values = runpy.run_path(str(path)).get("SETTINGS")
    if not isinstance(values, Mapping):
        raise SettingsError(f"{path}: define SETTINGS = {{...}} with lower-case setting names")
    for key, value in values.items():
        if key not in FIELDS:
            raise SettingsError(f"{path}: unknown setting {key!r}; see `python train.py --help`")
        expected = type(FIELDS[key].default)
        if not isinstance(value, expected) and not (expected is float and type(value) is int):
            raise SettingsError(f"{path}: {key} must be {expected.__name__}, got {value!r}")
    return dict(values)


def resolve_settings(
    config: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: list[str] | None = None,
) -> Settings:
    """Merge defaults, a config, environment variables and key=value overrides, then check."""
    values = load_config(config) if config else {}
    environ = os.environ if environ is None else environ
    for name in FIELDS:
        if name.upper() in environ:
            values[name] = parse_value(name, environ[name.upper()], f"environment variable {name.upper()}")
    for item in overrides or []:
        key, sep, text = item.partition("=")
        key = key.strip().lower()
        if not sep:
            raise SettingsError(f"--set {item!r}: expected key=value; see `python train.py --help`")
        if key not in FIELDS:
            raise SettingsError(f"--set {item!r}: unknown setting {key!r}; see `python train.py --help` for the list")
        values[key] = parse_value(key, text, f"--set {key}")
    if not values.get("run_id"):
        values["run_id"] = str(uuid.uuid4())
    settings = Settings(**{k: float(v) if type(FIELDS[k].default) is float else v for k, v in values.items()})
    check_settings(settings)
    return settings


def check_settings(s: Settings) -> None:
    """Reject values no run could use; the device-dependent divisibility is checked later."""
    positive = (
        "val_batch_size", "iterations", "train_batch_tokens", "train_seq_len", "vocab_size", "embed_dim", "fsdp", "checkpoints_kept",
        "num_hops", "cross_attn_every", "head_dim", "num_attn_heads", "num_channels", "sigreg_slices",
        "learning_rate", "logit_softcap", "rope_base", "attention_block_size",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name.upper()}={getattr(s, name)} must be positive")
    for name in ("val_loss_every", "train_log_every", "checkpoint_every", "warmup_steps", "warmdown_iters", "skip_every",
                 "grad_accum_steps", "weight_decay", "grad_clip_norm", "jepa_weight", "sigreg_weight"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{name.upper()}={getattr(s, name)} must not be negative")
    choices = {
        "topology": TOPOLOGIES,
        "signal_flow": SIGNAL_FLOWS,
        "lr_schedule": SCHEDULES,
        "param_dtype": tuple(DTYPES),
        "compute_dtype": ("auto", *DTYPES),
        "attention_impl": ("auto", *ATTENTION_IMPLS),
        "hop_form": HOP_FORMS,
        "hop_loop": ("auto", *HOP_LOOPS),
    }
    for name, allowed in choices.items():
        if getattr(s, name) not in allowed:
            raise SettingsError(f"{name.upper()}={getattr(s, name)!r} is unknown; use one of {', '.join(allowed)}")
    if s.head_dim % 2:
        raise SettingsError(f"HEAD_DIM={s.head_dim} must be even for RoPE's half-split rotation")
    if s.sigreg_knots < 2:
        raise SettingsError(f"SIGREG_KNOTS={s.sigreg_knots} must be at least 2")
    if not 0.0 <= s.mask_ratio < 1.0:
        raise SettingsError(f"MASK_RATIO={s.mask_ratio} must be in [0, 1)")
    if s.mask_span_length <= 0:
        raise SettingsError(f"MASK_SPAN_LENGTH={s.mask_span_length} must be positive")


def check_batch_layout(s: Settings, world_size: int) -> int:
    """Return the accumulation steps, or raise if the batch cannot be split evenly."""
    accum = s.accumulation_steps(world_size)
    unit = s.train_seq_len * world_size * accum
    if s.train_batch_tokens % unit:
        raise SettingsError(
            f"TRAIN_BATCH_TOKENS={s.train_batch_tokens} is not divisible by TRAIN_SEQ_LEN x devices x "
            f"GRAD_ACCUM_STEPS = {s.train_seq_len} x {world_size} x {accum}; use a multiple of {unit}"
        )
    return accum


def help_lines() -> list[str]:
    """Describe every setting with its default, for --help."""
    lines = []
    for f in dataclasses.fields(Settings):
        default = "random UUID" if f.name == "run_id" else repr(f.default)
        lines.append(f"  {f.name} ({f.name.upper()}, default {default}): {f.metadata['help']}")
    return lines
