"""Train Connectome-JEPA: `python train.py [--config NAME] [--set key=value ...]`.

Settings resolve in order: defaults (the reference's primary configuration), the named
config in configs/, the reference's environment variables (EMBED_DIM=512 ...), then
--set flags with lower-case names. Everything the run writes goes in runs/<run_id>/.
"""

from __future__ import annotations

import argparse
import sys

from jaxconnectome.settings import SettingsError, help_lines, resolve_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (--set name=value, or the upper-case environment variable):\n" + "\n".join(help_lines()),
    )
    parser.add_argument("--config", help="config name in configs/ (e.g. demo, primary) or a path to a .py config")
    parser.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host: address of process 0's coordinator")
    parser.add_argument("--num-processes", type=int, help="multi-host: number of processes (one per host)")
    parser.add_argument("--process-id", type=int, help="multi-host: index of this process, 0 to num-processes - 1")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting; repeatable (e.g. --set iterations=200)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after parsing so that --help prints without loading the training code.
    from jaxconnectome import distributed, trainer
    from jaxconnectome.artifact import ArtifactError
    from jaxconnectome.checkpoints import CheckpointError
    from jaxconnectome.data import DataError

    try:
        settings = resolve_settings(args.config, overrides=args.overrides)
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        trainer.run(settings)
    except (SettingsError, DataError, ArtifactError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (trainer.TrainingDiverged, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
