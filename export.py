"""Import, evaluate and re-export Connectome-JEPA models in the PyTorch reference's formats.

    python export.py runs/RUN_ID
    python export.py --import final_model.int8.ptz
    python export.py --import final_model.pt --output converted/ --compact

RUN_DIR exports a run's newest checkpoint into the run folder (final_model.pt and
final_model.int8.ptz), with the settings saved in its config.json, and evaluates the
int8 round trip.

--import reads a reference artifact (final_model.int8.ptz: int8+zlib), a plain state_dict
(final_model.pt), or this project's compact artifact, without torch. The model's shape is
inferred from its tensors; HEAD_DIM, LOGIT_SOFTCAP, ROPE_BASE and COMPUTE_DTYPE come from
the settings, read from the environment as train.py reads them, or from --set. It then
evaluates the validation shards of DATA_PATH with TOKENIZER_PATH, TRAIN_SEQ_LEN and
VAL_BATCH_SIZE, and prints `val_loss:L val_bpb:B eval_time:Tms` and an exact line.

--output DIR writes the imported model back out (final_model.pt, final_model.int8.ptz and,
with --compact, final_model.compact.zlib) and evaluates the artifact's round trip.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
settings (the upper-case environment variable, or --set name=value):
  data_path (DATA_PATH), tokenizer_path (TOKENIZER_PATH), train_seq_len (TRAIN_SEQ_LEN),
  val_batch_size (VAL_BATCH_SIZE): the validation data and its batching, as in train.py;
  head_dim (HEAD_DIM, default 128): attention head size, which the tensor shapes cannot tell;
  skip_every (SKIP_EVERY) and cross_attn_every (CROSS_ATTN_EVERY): used only when set and
  only to resolve or check what the shapes imply; logit_softcap, rope_base, compute_dtype,
  hop_loop: taken as given; topology, signal_flow, seed: let --compact record a
  random_sparse mask by its seed. `python train.py --help` lists every setting.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="a run folder: export its newest checkpoint into it, with its saved settings")
    parser.add_argument("--import", dest="import_path", metavar="FILE",
                        help="model file to read: .ptz (int8+zlib), .pt (state_dict) or a compact artifact")
    parser.add_argument("--output", metavar="DIR", help="write the imported model to DIR as final_model.pt and "
                        "final_model.int8.ptz, then evaluate the int8 round trip")
    parser.add_argument("--compact", action="store_true",
                        help="with --output, also write final_model.compact.zlib (only the kept hop weights)")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the validation evaluation, so DATA_PATH and TOKENIZER_PATH are not needed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting; repeatable (e.g. --set head_dim=64)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (args.run_dir is None) == (args.import_path is None):
        print("error: give either a RUN_DIR to export or --import FILE (see --help)", file=sys.stderr)
        return 2
    if args.run_dir is not None and args.output is not None:
        print("error: a RUN_DIR is exported into itself; --output applies to --import", file=sys.stderr)
        return 2
    if args.compact and args.output is None and args.run_dir is None:
        print("error: --compact needs --output DIR or a RUN_DIR", file=sys.stderr)
        return 2

    # Imported here so that --help and argument errors do not wait for JAX to load.
    from jaxconnectome.artifact import ArtifactError
    from jaxconnectome.checkpoints import CheckpointError
    from jaxconnectome.data import DataError
    from jaxconnectome.settings import SettingsError

    try:
        return run(args)
    except (ArtifactError, CheckpointError, SettingsError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jaxconnectome.artifact import export_run
    from jaxconnectome.evaluate import load_artifact, load_run, print_evaluation, validation_for
    from jaxconnectome.model import count_params

    if args.run_dir is not None:
        model, settings, label = load_run(args.run_dir, args.overrides)
    else:
        model, settings, label = load_artifact(args.import_path, args.overrides)
    config = model.config
    print(
        f"import: {label} model_params:{count_params(model)} "
        f"vocab_size={config.vocab_size} embed_dim={config.embed_dim} num_hops={config.num_hops} "
        f"cross_attn_every={config.cross_attn_every} head_dim={config.head_dim} num_attn_heads={config.num_attn_heads} "
        f"skip_every={config.skip_every} num_channels={config.num_channels} param_dtype={config.param_dtype}"
    )
    evaluate_model = None if args.no_eval else validation_for(settings, config.vocab_size)
    output = Path(args.run_dir) if args.run_dir is not None else args.output
    if output is not None:
        export_run(model, output, evaluate_model=evaluate_model, compact=args.compact,
                   topology=settings.topology, signal_flow=settings.signal_flow, seed=settings.seed)
    elif evaluate_model is not None:
        print_evaluation(model, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
