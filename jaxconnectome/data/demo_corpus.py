"""A demo corpus of real English text that ships with every Python installation.

The corpus needs no download: it is the documentation bundled with the standard
library. Each entry of `pydoc_data.topics.topics` (the language reference
topics shown by `help()`) is one document, and so is each docstring of the
modules in DEMO_MODULES, their classes and functions, and the methods and
properties of those classes.

The text differs between Python versions, so the corpus, the tokenizer trained
on it and the shard contents are reproducible only on the same Python version.
"""

from __future__ import annotations

import importlib
import inspect
import os
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from .documents import normalize_document
from .prepare import DEFAULT_SHARD_TOKENS, prepare
from .shards import write_bytes_atomic

# Standard-library modules whose import has no side effects beyond defining names.
# Excluded on purpose: `this` prints, `antigravity` opens a browser, `readline` can
# write terminal control codes, `rlcompleter` installs a readline completer, and
# idlelib, tkinter and turtle need a GUI.
# Modules that fail to import (ctypes or sqlite3 missing from a build) are skipped.
DEMO_MODULES = (
    "__future__", "abc", "argparse", "array", "ast",
    "asyncio.base_events", "asyncio.events", "asyncio.futures", "asyncio.locks",
    "asyncio.protocols", "asyncio.queues", "asyncio.runners", "asyncio.streams",
    "asyncio.tasks", "asyncio.timeouts", "asyncio.transports",
    "atexit", "base64", "bdb", "binascii", "builtins", "bz2",
    "cProfile", "calendar", "cmath", "cmd", "code", "codecs", "codeop", "collections",
    "collections.abc", "colorsys", "compileall", "concurrent.futures.process",
    "concurrent.futures.thread", "configparser", "contextlib", "contextvars", "copy",
    "copyreg", "csv", "ctypes", "dataclasses", "datetime", "dbm", "dbm.dumb", "decimal",
    "difflib", "dis", "doctest", "email.base64mime", "email.charset", "email.feedparser",
    "email.generator", "email.header", "email.headerregistry", "email.iterators",
    "email.message", "email.mime.application", "email.mime.audio", "email.mime.base",
    "email.mime.image", "email.mime.message", "email.mime.multipart", "email.mime.text",
    "email.parser", "email.policy", "email.quoprimime", "email.utils", "encodings",
    "encodings.punycode", "enum", "errno", "faulthandler", "filecmp", "fileinput",
    "fnmatch", "fractions", "ftplib", "functools", "gc", "getopt", "getpass", "gettext",
    "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http",
    "http.client", "http.cookiejar", "http.cookies", "http.server", "imaplib", "importlib",
    "importlib.abc", "importlib.machinery", "importlib.metadata", "importlib.resources.abc",
    "importlib.util", "inspect", "io", "ipaddress", "itertools", "json", "json.decoder",
    "json.encoder", "json.tool", "keyword", "linecache", "locale", "logging",
    "logging.config", "logging.handlers", "lzma", "marshal", "math", "mimetypes", "mmap",
    "modulefinder", "multiprocessing.managers", "multiprocessing.pool",
    "multiprocessing.shared_memory", "netrc", "ntpath", "numbers", "operator", "optparse",
    "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib",
    "poplib", "posixpath", "pprint", "profile", "pstats", "py_compile", "pyclbr",
    "pydoc", "pyexpat", "queue", "quopri", "random", "re", "reprlib", "runpy", "sched",
    "secrets", "select", "selectors", "shelve", "shutil", "signal", "smtplib", "socket",
    "socketserver", "sqlite3", "ssl", "statistics", "string", "stringprep", "struct",
    "subprocess", "symtable", "sys", "sysconfig", "tabnanny", "tarfile", "tempfile",
    "textwrap", "threading", "time", "timeit", "tokenize", "trace", "traceback",
    "tracemalloc", "types", "typing", "unicodedata", "unittest", "unittest.case",
    "unittest.loader", "unittest.mock", "unittest.result", "urllib.error",
    "urllib.request", "urllib.response", "urllib.robotparser", "uuid", "venv", "warnings",
    "wave", "weakref", "wsgiref.handlers", "wsgiref.headers", "wsgiref.simple_server",
    "wsgiref.util", "wsgiref.validate", "xml.dom", "xml.dom.domreg", "xml.dom.expatbuilder",
    "xml.dom.minidom", "xml.dom.pulldom", "xml.etree.ElementTree", "xml.sax",
    "xml.sax.handler", "xml.sax.saxutils", "xml.sax.xmlreader", "xmlrpc.client",
    "xmlrpc.server", "zipapp", "zipfile", "zipimport", "zlib",
)

# Shorter docstrings are mostly one-line summaries that add little text.
MIN_DOCSTRING_CHARS = 200
# After the shuffle, the first 150 documents make a validation split of about 39,000
# tokens with Python 3.11, 8 % of the corpus.
DEMO_VAL_DOCUMENTS = 150
DEMO_SHUFFLE_SEED = 0
DEMO_CORPUS_NAME = "demo_corpus.txt"


def _topic_documents() -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]


def _import_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception:  # A missing optional C extension raises more than ImportError on some builds.
        return None


def _is_own_member(module: ModuleType, value: object) -> bool:
    """Return whether `value` is documented as part of `module`.

    Members re-exported from another public module are left to that module. A
    member of a private or C module (`_io`, `posix`) counts, because that is how
    `io` and `os` expose their C implementations.
    """
    owner = getattr(value, "__module__", None)
    if not isinstance(owner, str):
        return False
    return owner == module.__name__ or owner.startswith("_") or owner in ("posix", "nt")


def _class_members(cls: type) -> Iterator[object]:
    for _, member in sorted(vars(cls).items()):
        if isinstance(member, (classmethod, staticmethod)):
            yield member.__func__
        elif isinstance(member, property) or inspect.isfunction(member) or inspect.ismethoddescriptor(member):
            yield member


def _documented_objects(module: ModuleType) -> Iterator[object]:
    """Yield the module, then its classes (each followed by its members) and functions, by name."""
    yield module
    for _, value in sorted(vars(module).items()):
        if not _is_own_member(module, value):
            continue
        if inspect.isclass(value):
            yield value
            yield from _class_members(value)
        elif inspect.isfunction(value) or inspect.isbuiltin(value):
            yield value


def _docstring(value: object) -> str | None:
    try:
        return inspect.getdoc(value)
    except Exception:  # Some objects (lazy or deprecated proxies) raise on attribute access.
        return None


def _module_documents() -> Iterator[str]:
    for name in DEMO_MODULES:
        module = _import_module(name)
        if module is None:
            continue
        for value in _documented_objects(module):
            text = _docstring(value)
            if text:
                yield text


def build_demo_corpus() -> list[str]:
    """Return the demo corpus as a list of documents, in a fixed shuffled order.

    Documents are collected from the language reference topics sorted by key,
    then module docstrings in DEMO_MODULES order with members sorted by name,
    and shuffled with a fixed seed so that the leading validation documents
    are a sample of both kinds. Every document is normalized (no blank lines
    inside), docstrings shorter than MIN_DOCSTRING_CHARS are skipped, and
    repeated texts are kept once.
    """
    documents: list[str] = []
    seen: set[str] = set()
    with warnings.catch_warnings():
        # Deprecated modules and attributes warn when imported or read.
        warnings.simplefilter("ignore")
        for document in _topic_documents():
            text = normalize_document(document)
            if text and text not in seen:
                seen.add(text)
                documents.append(text)
        for document in _module_documents():
            text = normalize_document(document)
            if len(text) >= MIN_DOCSTRING_CHARS and text not in seen:
                seen.add(text)
                documents.append(text)
    random.Random(DEMO_SHUFFLE_SEED).shuffle(documents)
    return documents


def write_demo_corpus(path: str | os.PathLike) -> list[str]:
    """Write the demo corpus as a .txt file (documents separated by a blank line), atomically.

    Returns the documents, which `read_documents(path)` reads back unchanged.
    """
    documents = build_demo_corpus()
    write_bytes_atomic(path, ("\n\n".join(documents) + "\n").encode("utf-8"))
    return documents


def prepare_demo_data(
    output_dir: str | os.PathLike,
    val_documents: int = DEMO_VAL_DOCUMENTS,
    tokenizer_path: str | os.PathLike | None = None,
    vocab_size: int = 1024,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    prefix: str = "fineweb",
) -> tuple[Path, Path]:
    """Write the demo corpus, train a tokenizer on it and write shards into `output_dir`.

    Trains a `vocab_size`-piece tokenizer unless `tokenizer_path` is given.
    Returns (output_dir, tokenizer path). The shards match
    `output_dir/{prefix}_train_*.bin` and `output_dir/{prefix}_val_*.bin`.
    """
    output_dir = Path(output_dir)
    corpus_path = output_dir / DEMO_CORPUS_NAME
    write_demo_corpus(corpus_path)
    manifest = prepare(
        [corpus_path],
        output_dir,
        tokenizer_path=tokenizer_path,
        train_tokenizer_vocab=None if tokenizer_path is not None else vocab_size,
        val_documents=val_documents,
        shard_tokens=shard_tokens,
        prefix=prefix,
    )
    model_path = Path(manifest["tokenizer"])
    if not model_path.is_absolute():
        model_path = output_dir / model_path
    return output_dir, model_path
