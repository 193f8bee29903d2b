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
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting; repeatable (e.g. --set iterations=200)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported here so that --help and settings errors do not wait for JAX to load.
    from jaxconnectome.data import DataError

    try:
        settings = resolve_settings(args.config, overrides=args.overrides)
        from jaxconnectome import trainer

        trainer.run(settings)
    except (SettingsError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
