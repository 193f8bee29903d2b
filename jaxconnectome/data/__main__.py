"""Command line for the data layer: `python -m jaxconnectome.data {prepare,inspect,download}`.

A DataError ends the program with `error: <message>` on stderr and exit code 2,
without a traceback, because it reports bad input rather than a bug.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from .demo_corpus import DEMO_VAL_DOCUMENTS, prepare_demo_data
from .download import DEFAULT_REMOTE_ROOT, DEFAULT_REPO_ID, DEFAULT_TRAIN_SHARDS, download, parse_variant
from .prepare import DEFAULT_SHARD_TOKENS, DEFAULT_VAL_DOCUMENTS, prepare
from .shards import BOS_ID, DataError, check_token_ids, find_shards, read_shard
from .tokenizer import load_tokenizer

SAMPLE_CHARS = 200
EXIT_DATA_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jaxconnectome.data",
        description="Make and check token shards in the Parameter Golf challenge format.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    prepare_parser = commands.add_parser(
        "prepare",
        help="tokenize text documents into validation and training shards",
        description=(
            "Tokenize .txt files (documents separated by blank lines) or .jsonl files (one object with a "
            "`text` field per line) into {prefix}_val_NNNNNN.bin and {prefix}_train_NNNNNN.bin shards plus "
            "MANIFEST.json. The first --val-documents documents become validation."
        ),
    )
    source = prepare_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", type=Path, metavar="FILE", help="input .txt or .jsonl files, read in order")
    source.add_argument(
        "--demo",
        action="store_true",
        help="use the demo corpus (standard-library documentation, about 1.4 MB with Python 3.11) instead of --input; "
        "trains a tokenizer unless --tokenizer is given",
    )
    prepare_parser.add_argument("--output", required=True, type=Path, metavar="DIR", help="folder for the shards and MANIFEST.json")
    tokenizer = prepare_parser.add_mutually_exclusive_group()
    tokenizer.add_argument("--tokenizer", type=Path, metavar="MODEL", help="existing SentencePiece .model file to encode with")
    tokenizer.add_argument(
        "--train-tokenizer",
        action="store_true",
        help="train a BPE tokenizer with the challenge settings on the inputs, saved as DIR/tokenizer.model",
    )
    prepare_parser.add_argument(
        "--vocab-size", type=int, default=1024, metavar="N", help="pieces of the trained tokenizer (default: 1024)"
    )
    prepare_parser.add_argument(
        "--val-documents",
        type=int,
        metavar="N",
        help=f"number of leading documents for validation (default: {DEFAULT_VAL_DOCUMENTS:,}, "
        f"or {DEMO_VAL_DOCUMENTS} with --demo); the inputs need more documents than this",
    )
    prepare_parser.add_argument(
        "--shard-tokens",
        type=int,
        default=DEFAULT_SHARD_TOKENS,
        metavar="N",
        help=f"tokens per shard file (default: {DEFAULT_SHARD_TOKENS:,})",
    )
    prepare_parser.add_argument("--prefix", default="fineweb", help="shard file name prefix (default: fineweb)")

    inspect_parser = commands.add_parser(
        "inspect",
        help="print shard, token and document counts",
        description="Validate shards and print their count, tokens and documents (BOS tokens).",
    )
    inspect_parser.add_argument(
        "target",
        metavar="DIR_OR_PATTERN",
        help="a folder (its *_val_*.bin and *_train_*.bin shards are reported separately) or a glob pattern",
    )
    inspect_parser.add_argument(
        "--tokenizer",
        type=Path,
        metavar="MODEL",
        help="SentencePiece .model file; checks the token ids against it and prints a decoded sample",
    )

    download_parser = commands.add_parser(
        "download",
        help="download the challenge's FineWeb shards and tokenizer from the Hugging Face Hub",
        description=(
            "Download every validation shard, the first N training shards and the tokenizer of the challenge's "
            "FineWeb export into ROOT/datasets/fineweb10B_<variant>/ and ROOT/tokenizers/, the reference's default "
            "DATA_PATH and TOKENIZER_PATH for ROOT=./data. Valid files already there are kept without a request. "
            'Needs huggingface_hub (pip install -e ".[download]"); HF_ENDPOINT, HF_HUB_OFFLINE and the usual '
            "proxy variables apply."
        ),
    )
    download_parser.add_argument(
        "--variant", default="sp1024", help="tokenizer variant sp<VOCAB_SIZE> (default: sp1024, the reference's)"
    )
    download_parser.add_argument(
        "--train-shards",
        type=int,
        default=DEFAULT_TRAIN_SHARDS,
        metavar="N",
        help=f"training shards of 100M tokens to fetch, from the first (default: {DEFAULT_TRAIN_SHARDS}, "
        "as in the reference's published runs)",
    )
    download_parser.add_argument(
        "--output", type=Path, default=Path("data"), metavar="ROOT", help="folder to download into (default: ./data)"
    )
    download_parser.add_argument(
        "--repo-id", default=DEFAULT_REPO_ID, help=f"Hugging Face dataset repo (default: {DEFAULT_REPO_ID})"
    )
    download_parser.add_argument(
        "--remote-root",
        default=DEFAULT_REMOTE_ROOT,
        metavar="FOLDER",
        help=f"folder of the export inside the repo, holding manifest.json (default: {DEFAULT_REMOTE_ROOT})",
    )
    return parser


def run_download(args: argparse.Namespace) -> None:
    results = download(
        variant=args.variant,
        train_shards=args.train_shards,
        output=args.output,
        repo_id=args.repo_id,
        remote_root=args.remote_root,
    )
    fetched = [result for result in results if result.status != "present"]
    fetched_bytes = sum(result.size for result in fetched)
    print(f"{len(fetched)} files downloaded ({fetched_bytes:,} bytes), {len(results) - len(fetched)} already present")
    dataset_dir, _ = parse_variant(args.variant)
    tokenizer = next(result.path for result in results if result.kind == "tokenizer")
    print(f"DATA_PATH={args.output / 'datasets' / dataset_dir} TOKENIZER_PATH={tokenizer}")


def run_prepare(args: argparse.Namespace) -> None:
    if args.demo:
        val_documents = DEMO_VAL_DOCUMENTS if args.val_documents is None else args.val_documents
        output_dir, model_path = prepare_demo_data(
            args.output,
            val_documents=val_documents,
            tokenizer_path=args.tokenizer,
            vocab_size=args.vocab_size,
            shard_tokens=args.shard_tokens,
            prefix=args.prefix,
        )
        print(f"demo data in {output_dir}, tokenizer {model_path}")
        manifest_path = output_dir / "MANIFEST.json"
        print(manifest_path.read_text(encoding="utf-8"), end="")
        return
    if args.tokenizer is None and not args.train_tokenizer:
        raise DataError("prepare needs --tokenizer MODEL or --train-tokenizer")
    manifest = prepare(
        args.input,
        args.output,
        tokenizer_path=args.tokenizer,
        train_tokenizer_vocab=args.vocab_size if args.train_tokenizer else None,
        val_documents=DEFAULT_VAL_DOCUMENTS if args.val_documents is None else args.val_documents,
        shard_tokens=args.shard_tokens,
        prefix=args.prefix,
    )
    for split in ("val", "train"):
        print(
            f"{split}: {manifest[f'{split}_docs']:,} documents, {manifest[f'{split}_tokens']:,} tokens, "
            f"{manifest[f'{split}_shards']} shard files"
        )
    print(f"tokenizer: {manifest['tokenizer']} ({manifest['vocab_size']} pieces); wrote {args.output / 'MANIFEST.json'}")


def _shard_groups(target: str) -> dict[str, list[Path]]:
    folder = Path(target)
    if not folder.is_dir():
        return {"shards": find_shards(target)}
    groups = {}
    for split in ("val", "train"):
        try:
            groups[split] = find_shards(folder / f"*_{split}_*.bin")
        except DataError:
            continue
    if not groups:
        groups["shards"] = find_shards(folder / "*.bin")
    return groups


def _first_document(tokens: np.ndarray) -> np.ndarray:
    """Return the tokens after the first BOS, up to the next BOS."""
    starts = np.flatnonzero(tokens == BOS_ID)
    if starts.size == 0:
        return tokens
    end = starts[1] if starts.size > 1 else tokens.size
    return tokens[starts[0] + 1 : end]


def run_inspect(args: argparse.Namespace) -> None:
    sp = load_tokenizer(args.tokenizer) if args.tokenizer is not None else None
    for name, paths in _shard_groups(args.target).items():
        token_total = 0
        document_total = 0
        sample = None
        for path in paths:
            tokens = read_shard(path)
            if sp is not None:
                check_token_ids(tokens, sp.get_piece_size(), path)
            token_total += tokens.size
            document_total += int(np.count_nonzero(tokens == BOS_ID))
            if sample is None and sp is not None and tokens.size:
                sample = sp.decode(_first_document(tokens)[: 4 * SAMPLE_CHARS].tolist())[:SAMPLE_CHARS]
        shard_word = "shard" if len(paths) == 1 else "shards"
        print(f"{name}: {len(paths)} {shard_word}, {token_total:,} tokens, {document_total:,} documents (BOS id {BOS_ID})")
        if sample is not None:
            print(f"  sample: {sample!r}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "prepare":
            run_prepare(args)
        elif args.command == "download":
            run_download(args)
        else:
            run_inspect(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_DATA_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
