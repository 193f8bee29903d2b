"""Read text documents from .txt and .jsonl files.

A .txt file contains documents separated by one or more blank lines (lines with only
whitespace count as blank). A .jsonl file contains one JSON object per line with the
document in its `text` field, as in the challenge's docs_selected.jsonl.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .shards import DataError

SUPPORTED_SUFFIXES = (".txt", ".jsonl")


def as_path_list(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Return one path or an iterable of paths as a list of Paths."""
    if isinstance(inputs, (str, os.PathLike)):
        return [Path(inputs)]
    return [Path(item) for item in inputs]


def _check_input_file(path: Path) -> None:
    if path.suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; give a .txt or .jsonl file")
    if not path.is_file():
        raise DataError(f"{path}: input file not found; check the --input path")


def _iter_txt_documents(path: Path) -> Iterator[str]:
    lines: list[str] = []
    with path.open("r", encoding="utf-8") as text_file:
        for line in text_file:
            line = line.rstrip("\n")
            if line.strip():
                lines.append(line)
            elif lines:
                yield "\n".join(lines)
                lines = []
    if lines:
        yield "\n".join(lines)


def _iter_jsonl_documents(path: Path) -> Iterator[str]:
    with path.open("r", encoding="utf-8") as jsonl_file:
        for line_number, line in enumerate(jsonl_file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: invalid JSON ({error.msg}); fix or remove that line") from None
            if not isinstance(record, dict) or "text" not in record:
                raise DataError(f"{path}:{line_number}: JSON object has no `text` field; every line needs one")
            text = record["text"]
            if not isinstance(text, str):
                raise DataError(
                    f"{path}:{line_number}: `text` is a {type(text).__name__}, not a string; fix that line"
                )
            yield text


def iter_documents(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[str]:
    """Yield the documents of one or more .txt / .jsonl files, in file order.

    Raises DataError for a missing or unsupported file, a file without documents,
    or a .jsonl line that is not an object with a string `text` field (the
    message gives file:line).
    """
    paths = as_path_list(inputs)
    if not paths:
        raise DataError("no input files given; pass at least one .txt or .jsonl file")
    for path in paths:
        _check_input_file(path)
    for path in paths:
        reader = _iter_jsonl_documents if path.suffix == ".jsonl" else _iter_txt_documents
        count = 0
        try:
            for document in reader(path):
                count += 1
                yield document
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not valid UTF-8 ({error.reason}); convert the file to UTF-8") from None
        if count == 0:
            raise DataError(f"{path}: contains no documents; remove it from the inputs or add text")


def read_documents(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Return all documents of one or more .txt / .jsonl files, see `iter_documents`."""
    return list(iter_documents(inputs))


def normalize_document(text: str) -> str:
    """Return `text` in a form that survives a round trip through a .txt corpus.

    Line endings become "\\n", trailing whitespace is cut from every line, and
    blank lines are dropped, so in a .txt corpus a blank line can only mean the
    boundary between two documents.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(line for line in lines if line.strip())
