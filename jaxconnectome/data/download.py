"""Download the challenge's FineWeb export from the Hugging Face Hub into the reference's folders.

The public export lives in the dataset repo willdepueoai/parameter-golf under the folder
`datasets/` (the export root): `manifest.json`, shards under
`datasets/fineweb10B_<variant>/` and tokenizers under `tokenizers/`, both relative to that
root, as the challenge's own `data/cached_challenge_fineweb.py` reads it. Files land in
`ROOT/manifest.json`, `ROOT/datasets/fineweb10B_<variant>/` and `ROOT/tokenizers/`, the
reference's default DATA_PATH and TOKENIZER_PATH when ROOT is `./data`.

huggingface_hub is an optional dependency (`pip install -e ".[download]"`); it is
imported only when a download runs. HF_ENDPOINT, HF_HUB_OFFLINE and the usual proxy
variables apply.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from .shards import DataError, read_header
from .tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
DEFAULT_REMOTE_ROOT = "datasets"
DEFAULT_TRAIN_SHARDS = 10
MANIFEST_NAME = "manifest.json"
# Without a manifest: the challenge's downloader from before manifest.json listed one
# validation shard for every sp variant.
FALLBACK_VAL_SHARDS = 1
# Partial downloads wait here (huggingface_hub resumes them) before their atomic rename.
STAGING_DIR_NAME = ".download"
VARIANT_PATTERN = re.compile(r"sp(\d+)")


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file to fetch, by its path relative to the export root (also its path under ROOT)."""

    path: str  # e.g. datasets/fineweb10B_sp1024/fineweb_val_000000.bin
    kind: str  # "val", "train", "tokenizer" or "tokenizer_vocab"


@dataclasses.dataclass(frozen=True)
class DownloadResult:
    """Outcome for one file: "downloaded", "present" (kept as it was) or "replaced" (it was invalid)."""

    path: Path
    kind: str
    status: str
    size: int


def parse_variant(variant: str) -> tuple[str, int]:
    """Return (dataset folder, vocabulary size) of a variant such as sp1024."""
    match = VARIANT_PATTERN.fullmatch(variant)
    if match is None:
        raise DataError(f"--variant {variant!r} is not supported; use sp<VOCAB_SIZE>, e.g. sp1024")
    return f"fineweb10B_{variant}", int(match.group(1))


def fallback_plan(variant: str, train_shards: int) -> list[RemoteFile]:
    """List the files by their known names, for an export without manifest.json."""
    name, vocab = parse_variant(variant)
    dataset_dir = f"datasets/{name}"
    files = [RemoteFile(f"{dataset_dir}/fineweb_val_{i:06d}.bin", "val") for i in range(FALLBACK_VAL_SHARDS)]
    files += [RemoteFile(f"{dataset_dir}/fineweb_train_{i:06d}.bin", "train") for i in range(train_shards)]
    files.append(RemoteFile(f"tokenizers/fineweb_{vocab}_bpe.model", "tokenizer"))
    return files


def manifest_plan(manifest: dict, variant: str, train_shards: int) -> list[RemoteFile]:
    """List the files that manifest.json names for `variant`: all val shards, N train shards, the tokenizer."""
    name, _ = parse_variant(variant)
    if not isinstance(manifest, dict):
        raise DataError(f"manifest.json must contain a JSON object, got {type(manifest).__name__}")
    datasets = manifest.get("datasets") or []
    entry = next((item for item in datasets if item.get("name") == name), None)
    if entry is None:
        available = ", ".join(str(item.get("name")) for item in datasets) or "none"
        raise DataError(f"manifest.json lists no dataset {name}; it lists: {available}")
    stats = entry.get("stats") or {}
    try:
        files_train = int(stats["files_train"])
        files_val = int(stats["files_val"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"manifest.json: dataset {name} has no valid stats.files_train and stats.files_val") from None
    if train_shards > files_train:
        raise DataError(f"--train-shards {train_shards} is more than the {files_train} training shards of {name}")

    files = [RemoteFile(f"datasets/{name}/fineweb_val_{i:06d}.bin", "val") for i in range(files_val)]
    files += [RemoteFile(f"datasets/{name}/fineweb_train_{i:06d}.bin", "train") for i in range(train_shards)]
    tokenizer_name = entry.get("tokenizer_name")
    tokenizer = next((t for t in manifest.get("tokenizers") or [] if t.get("name") == tokenizer_name), None)
    if tokenizer is None or not tokenizer.get("model_path"):
        raise DataError(f"manifest.json: no tokenizer model_path for {name} (tokenizer_name {tokenizer_name!r})")
    files.append(RemoteFile(str(tokenizer["model_path"]), "tokenizer"))
    if tokenizer.get("vocab_path"):
        files.append(RemoteFile(str(tokenizer["vocab_path"]), "tokenizer_vocab"))
    return files


def check_file(path: Path, kind: str, vocab_size: int) -> None:
    """Raise DataError unless `path` is a complete file of its kind.

    Shards must pass read_header, which checks the magic, the version and a size of
    1024 + 2 x tokens bytes. The tokenizer must load with `vocab_size` pieces, and other
    files must be non-empty.
    """
    if kind in ("val", "train"):
        read_header(path)
    elif kind == "tokenizer":
        load_tokenizer(path, vocab_size)
    elif not path.is_file() or path.stat().st_size == 0:
        raise DataError(f"{path}: missing or empty")


def _import_hub():
    try:
        return importlib.import_module("huggingface_hub")
    except ImportError:
        raise DataError(
            'downloading needs huggingface_hub, which is not installed; run pip install -e ".[download]"'
        ) from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Return the network exception classes of whichever HTTP client huggingface_hub uses.

    huggingface_hub 0.x sends its requests with requests, 1.x with httpx and 2.x with
    httpx2. A failed connection raises that library's own exception, and those of httpx
    and httpx2 do not derive from OSError.
    """
    classes: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, class_name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        try:
            classes.append(getattr(importlib.import_module(module_name), class_name))
        except (ImportError, AttributeError):
            continue
    return tuple(classes)


class HubClient:
    """Downloader of one dataset repo's files into a staging folder, from which the caller renames them."""

    def __init__(self, repo_id: str, remote_root: str, output: Path, dataset_dir: str, endpoint: str | None):
        self.hub = _import_hub()
        self.hub_errors = importlib.import_module("huggingface_hub.errors")
        self.hub_constants = importlib.import_module("huggingface_hub.constants")
        # Exceptions of a failed request. HTTP status errors and OfflineModeIsEnabled are
        # OSErrors, and network errors come from the HTTP client.
        self.request_errors = (OSError, self.hub_errors.EntryNotFoundError, *_transport_errors())
        self.repo_id = repo_id
        self.remote_root = remote_root.strip("/")
        self.output = output
        self.dataset_dir = dataset_dir
        self.staging = output / STAGING_DIR_NAME
        # Read at call time: huggingface_hub reads HF_ENDPOINT once, at import.
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        self.reached = False

    def repo_path(self, path: str) -> str:
        return f"{self.remote_root}/{path}" if self.remote_root else path

    def exists(self, path: str) -> bool:
        """Ask the Hub with one HEAD request, without retries, whether a file exists.

        This fails fast on a machine without network, where hf_hub_download itself
        retries the connection for about 23 s (huggingface_hub 2.4) before it gives up.
        """
        url = self.hub.hf_hub_url(self.repo_id, self.repo_path(path), repo_type="dataset", endpoint=self.endpoint)
        try:
            self.hub.get_hf_file_metadata(url)
        except self.request_errors as error:
            if self._is_remote_missing(error):
                return False
            raise self._describe(error, path) from None
        self.reached = True
        return True

    def fetch(self, path: str) -> Path:
        """Download one file into the staging folder and return its staged path."""
        if not self.reached and not self.exists(path):
            raise DataError(self._not_found_message(path))
        try:
            staged = self.hub.hf_hub_download(
                repo_id=self.repo_id,
                filename=self.repo_path(path),
                repo_type="dataset",
                local_dir=self.staging,
                endpoint=self.endpoint,
            )
        except self.request_errors as error:
            if self._is_remote_missing(error):
                raise DataError(self._not_found_message(path)) from None
            raise self._describe(error, path) from None
        return Path(staged)

    def _is_remote_missing(self, error: BaseException) -> bool:
        missing = isinstance(error, self.hub_errors.EntryNotFoundError)
        return missing and not isinstance(error, self.hub_errors.LocalEntryNotFoundError)

    def _not_found_message(self, path: str) -> str:
        return (
            f"{self.repo_path(path)} not found in the dataset repo {self.repo_id} at {self.endpoint}; "
            "check --variant, --repo-id and --remote-root"
        )

    def _describe(self, error: BaseException, path: str) -> DataError:
        """Convert a failed request into a one-line DataError that names the next step."""
        hub_errors = self.hub_errors
        if isinstance(error, hub_errors.RepositoryNotFoundError):
            return DataError(f"dataset repo {self.repo_id} not found at {self.endpoint}, or it is private; check --repo-id")
        if isinstance(error, hub_errors.OfflineModeIsEnabled) or self.hub_constants.HF_HUB_OFFLINE:
            return DataError(
                f"cannot download {path}: HF_HUB_OFFLINE is set, so huggingface_hub sends no requests; "
                f"unset it, or {self._manual_hint()}"
            )
        if isinstance(error, hub_errors.HfHubHTTPError):
            status = getattr(getattr(error, "response", None), "status_code", "error")
            return DataError(
                f"request for {self.repo_path(path)} in {self.repo_id} failed with HTTP {status}; try again later"
            )
        # LocalEntryNotFoundError is how hf_hub_download reports a failed connection.
        if isinstance(error, (hub_errors.LocalEntryNotFoundError, *_transport_errors())):
            reason = error.__cause__ or error
            return DataError(
                f"cannot reach {self.endpoint} to download {path} ({type(reason).__name__}: {reason}); "
                f"check the network connection and proxy settings (HTTPS_PROXY, HF_ENDPOINT), or {self._manual_hint()}"
            )
        return DataError(f"cannot download {path} into {self.staging}: {error}")

    def _manual_hint(self) -> str:
        return (
            f"copy the shards by hand into {self.output}/datasets/{self.dataset_dir}/ and the tokenizer into "
            f"{self.output}/tokenizers/, or make shards from your own text with `python -m jaxconnectome.data prepare`"
        )


def load_local_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.info("ignoring unreadable %s (%s); fetching it again", path, error)
        return None


def _missing_files(plan: list[RemoteFile], output: Path, vocab_size: int) -> list[RemoteFile]:
    missing = []
    for item in plan:
        try:
            check_file(output / item.path, item.kind, vocab_size)
        except DataError:
            missing.append(item)
    return missing


def resolve_plan(client: HubClient, output: Path, variant: str, train_shards: int) -> list[RemoteFile]:
    """List the files to have, from the local manifest, the remote one, or the known names.

    When the manifest is neither local nor reachable but every file of the known names is
    already present, the download succeeds offline.
    """
    manifest_path = output / MANIFEST_NAME
    manifest = load_local_manifest(manifest_path)
    if manifest is not None:
        return manifest_plan(manifest, variant, train_shards)

    fallback = fallback_plan(variant, train_shards)
    try:
        remote_has_manifest = client.exists(MANIFEST_NAME)
    except DataError:
        if not _missing_files(fallback, output, parse_variant(variant)[1]):
            logger.info("cannot reach the Hub for %s; every file is already present", MANIFEST_NAME)
            return fallback
        raise
    if not remote_has_manifest:
        logger.info("%s not in %s; using the known file names", client.repo_path(MANIFEST_NAME), client.repo_id)
        return fallback

    staged = client.fetch(MANIFEST_NAME)
    try:
        manifest = json.loads(staged.read_text(encoding="utf-8"))
    except ValueError as error:
        raise DataError(f"{client.repo_path(MANIFEST_NAME)} from {client.repo_id} is not valid JSON ({error})") from None
    plan = manifest_plan(manifest, variant, train_shards)
    os.replace(staged, manifest_path)
    return plan


def download(
    variant: str = "sp1024",
    train_shards: int = DEFAULT_TRAIN_SHARDS,
    output: str | os.PathLike = "data",
    repo_id: str = DEFAULT_REPO_ID,
    remote_root: str = DEFAULT_REMOTE_ROOT,
    endpoint: str | None = None,
) -> list[DownloadResult]:
    """Fetch all validation shards, the first `train_shards` training shards and the tokenizer.

    Files already present and valid (see check_file) are kept without any request. Each
    new file is downloaded into OUTPUT/.download/, validated, then renamed into place, so
    an interrupted run leaves no partial file at a destination. `endpoint` defaults to
    HF_ENDPOINT, else https://huggingface.co. Raises DataError with a one-line message on
    network, Hub and data errors.
    """
    if train_shards < 0:
        raise DataError(f"--train-shards {train_shards} must not be negative")
    dataset_dir, vocab_size = parse_variant(variant)
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the output folder {output} ({error.strerror})") from None
    client = HubClient(repo_id, remote_root, output, dataset_dir, endpoint)

    plan = resolve_plan(client, output, variant, train_shards)
    results = []
    for item in plan:
        destination = output / item.path
        status = "downloaded"
        if destination.exists():
            try:
                check_file(destination, item.kind, vocab_size)
                results.append(DownloadResult(destination, item.kind, "present", destination.stat().st_size))
                logger.info("present    %s", destination)
                continue
            except DataError as error:
                logger.info("replacing  %s: %s", destination, error)
                status = "replaced"
        staged = client.fetch(item.path)
        try:
            check_file(staged, item.kind, vocab_size)
        except DataError as error:
            raise DataError(f"downloaded {item.path} is invalid ({error}); run the command again") from None
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, destination)
        results.append(DownloadResult(destination, item.kind, status, destination.stat().st_size))
        logger.info("%-10s %s (%d bytes)", status, destination, destination.stat().st_size)

    # Only metadata of finished files remains in the staging folder after a full run.
    shutil.rmtree(client.staging, ignore_errors=True)
    return results
