"""Evaluate a model made here or by the PyTorch reference on the validation shards.

    python -m jaxconnectome.evaluate final_model.int8.ptz
    python -m jaxconnectome.evaluate runs/RUN_ID

An artifact (.ptz int8+zlib, .pt state_dict, or this project's compact file) is read
without torch and its shape inferred from its tensors; HEAD_DIM, which shapes cannot tell,
comes from the settings. An artifact inside a run folder takes that run's settings from
its config.json. A run folder is evaluated at its newest checkpoint, with the
settings in its config.json. Both print the reference's `val_loss:… val_bpb:…` values on
the validation shards of DATA_PATH with TOKENIZER_PATH, TRAIN_SEQ_LEN and VAL_BATCH_SIZE
(from the environment or --set, as train.py reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax
from flax import nnx

from jaxconnectome import sharding
from jaxconnectome.artifact import ArtifactError, import_model, validation_evaluator
from jaxconnectome.checkpoints import CheckpointError, Checkpointer
from jaxconnectome.data import DataError, build_byte_tables, load_tokenizer
from jaxconnectome.evaluation import build_validation_set
from jaxconnectome.model import ConnectomeJEPA
from jaxconnectome.settings import FIELDS, Settings, SettingsError, resolve_settings


def explicit_setting(name: str, overrides: list[str]) -> bool:
    """Tell whether the user set `name` through the environment or --set."""
    keys = {item.partition("=")[0].strip().lower() for item in overrides}
    return name in keys or name.upper() in os.environ


def model_from_artifact(path: str, settings: Settings, overrides: list[str], from_run: bool = False):
    """Import an artifact; SKIP_EVERY and CROSS_ATTN_EVERY count when set or known from a run."""
    base = settings.model_config(jax.default_backend())
    known_skip = from_run or explicit_setting("skip_every", overrides)
    known_every = from_run or explicit_setting("cross_attn_every", overrides)
    skip_every = settings.skip_every if known_skip else None
    cross_attn_every = settings.cross_attn_every if known_every else None
    return import_model(path, base, skip_every, cross_attn_every)


def run_settings(run_dir: Path, overrides: list[str]) -> Settings:
    """Return the settings saved in a run folder's config.json, then the environment and --set."""
    path = run_dir / "config.json"
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found; give a run folder made by train.py") from None
    # Saved values come first, then the environment, then --set, as for a config file.
    from_environment = {name for name in FIELDS if name.upper() in os.environ}
    saved_items = [f"{key}={value}" for key, value in saved.items() if key in FIELDS and key not in from_environment]
    return resolve_settings(overrides=saved_items + list(overrides))


def model_from_run(run_dir: Path, settings: Settings) -> tuple[ConnectomeJEPA, int]:
    """Build the run's model and load the parameters of its newest readable checkpoint."""
    from jaxconnectome import trainer
    from jaxconnectome.train_step import make_train_step

    model = trainer.build_model(settings, jax.default_backend())
    state, _ = make_train_step(model, settings.optimizer(), settings.loss_config())
    checkpointer = Checkpointer(run_dir / "checkpoints", settings.checkpoints_kept)
    try:
        restored = checkpointer.restore_latest(state)
    finally:
        checkpointer.close()
    if restored is None:
        raise CheckpointError(f"no checkpoint found in {run_dir / 'checkpoints'}; train the run first")
    state, meta = restored
    nnx.update(model, state.params)
    return model, int(meta["step"])


def validation_for(settings: Settings, vocab_size: int):
    """Return fn(model) -> (val_loss, val_bpb, eval_ms) on the validation shards of DATA_PATH."""
    from jaxconnectome.trainer import val_pattern

    tokenizer = load_tokenizer(settings.tokenizer_path, vocab_size)
    tables = build_byte_tables(tokenizer, vocab_size)
    val = build_validation_set(val_pattern(settings.data_path), settings.train_seq_len, tables)
    mesh = sharding.make_mesh(1)
    return validation_evaluator(val, settings.val_batch_seqs(mesh.devices.size), mesh)


def load_run(run_dir: str, overrides: list[str]) -> tuple[ConnectomeJEPA, Settings, str]:
    """Load a run folder's newest checkpoint; return the model, the run's settings and a label."""
    path = Path(run_dir)
    settings = run_settings(path, overrides)
    model, step = model_from_run(path, settings)
    return model, settings, f"{path} checkpoint step {step}"


def load_artifact(path: str, overrides: list[str]) -> tuple[ConnectomeJEPA, Settings, str]:
    """Import an artifact file; return the model, the settings and a label.

    An artifact inside a run folder (next to its config.json) is evaluated with that run's
    settings (head size, sequence length, data), then the environment and --set.
    """
    run_dir = Path(path).parent
    from_run = (run_dir / "config.json").is_file()
    settings = run_settings(run_dir, overrides) if from_run else resolve_settings(overrides=overrides)
    model, artifact = model_from_artifact(path, settings, overrides, from_run)
    source = f" settings from {run_dir / 'config.json'}" if from_run else ""
    return model, settings, f"{artifact.path} kind={artifact.kind}{source}"


def print_evaluation(model: ConnectomeJEPA, settings: Settings) -> None:
    val_loss, val_bpb, eval_ms = validation_for(settings, model.config.vocab_size)(model)
    print(f"val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} eval_time:{eval_ms:.0f}ms")
    print(f"exact val_loss:{val_loss:.8f} val_bpb:{val_bpb:.8f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxconnectome.evaluate", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2],
    )
    parser.add_argument("target", metavar="ARTIFACT_OR_RUN_DIR",
                        help="a .ptz, .pt or compact artifact, or a run folder with checkpoints")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting; repeatable (e.g. --set data_path=data/mine)")
    args = parser.parse_args(argv)
    try:
        load = load_run if Path(args.target).is_dir() else load_artifact
        model, settings, label = load(args.target, args.overrides)
        print(f"evaluate: {label}")
        print_evaluation(model, settings)
    except (ArtifactError, CheckpointError, DataError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
