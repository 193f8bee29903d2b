"""`python -m jaxconnectome.data download` against a fake Hugging Face Hub on 127.0.0.1.

The fake serves the HEAD and GET requests of hf_hub_download
(/datasets/{repo}/resolve/{revision}/{path}) from a dict of files. No test contacts any
other host: every call gets the fake's endpoint explicitly, and subprocesses also get a
proxy on a closed local port, so a request to any other host would fail at once.
"""

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

pytest.importorskip("huggingface_hub")

from shared_data import shared_path
from jaxconnectome.data import DataError
from jaxconnectome.data.download import download
from jaxconnectome.data.shards import encode_shard

REPO_ID = "willdepueoai/parameter-golf"
REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DATASET = "datasets/datasets/fineweb10B_sp1024"
MANIFEST = {
    "datasets": [
        {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024", "stats": {"files_train": 3, "files_val": 1}},
    ],
    "tokenizers": [
        {
            "name": "sp_bpe_1024",
            "model_path": "tokenizers/fineweb_1024_bpe.model",
            "vocab_path": "tokenizers/fineweb_1024_bpe.vocab",
        },
    ],
}


def shard_bytes(seed: int, count: int) -> bytes:
    tokens = np.random.default_rng(seed).integers(2, 1024, count)
    tokens[0] = 1  # BOS
    return encode_shard(tokens)


def repo_files(with_manifest: bool = True) -> dict[str, bytes]:
    """Return the fake repo's files by their path in the repo."""
    files = {
        f"{DATASET}/fineweb_val_000000.bin": shard_bytes(0, 500),
        f"{DATASET}/fineweb_train_000000.bin": shard_bytes(1, 700),
        f"{DATASET}/fineweb_train_000001.bin": shard_bytes(2, 900),
        f"{DATASET}/fineweb_train_000002.bin": shard_bytes(3, 300),
        "datasets/tokenizers/fineweb_1024_bpe.model": shared_path("data", "tokenizers", "fineweb_1024_bpe.model").read_bytes(),
        "datasets/tokenizers/fineweb_1024_bpe.vocab": shared_path("data", "tokenizers", "fineweb_1024_bpe.vocab").read_bytes(),
    }
    if with_manifest:
        files["datasets/manifest.json"] = json.dumps(MANIFEST).encode()
    return files


class FakeHub:
    """A threaded HTTP server on 127.0.0.1 that responds like the Hub's resolve endpoint."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                hub.answer(self, send_body=False)

            def do_GET(self):
                hub.answer(self, send_body=True)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def answer(self, handler, send_body: bool) -> None:
        path = unquote(handler.path)
        self.requests.append((handler.command, path))
        prefix = f"/datasets/{REPO_ID}/resolve/main/"
        if not path.startswith(prefix):
            self.send_error(handler, "RepoNotFound")
            return
        data = self.files.get(path[len(prefix):])
        if data is None:
            self.send_error(handler, "EntryNotFound")
            return
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.end_headers()
        if send_body:
            handler.wfile.write(data)

    @staticmethod
    def send_error(handler, code: str) -> None:
        handler.send_response(404)
        handler.send_header("X-Error-Code", code)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def gets(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET"]


@pytest.fixture
def hub_home(tmp_path, monkeypatch):
    """Keep huggingface_hub's cache and settings inside tmp_path, with telemetry off."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return home


def start_hub(files: dict[str, bytes]) -> FakeHub:
    hub = FakeHub(files)
    hub.thread.start()
    return hub


@pytest.fixture
def fake_hub(hub_home):
    hub = start_hub(repo_files())
    yield hub
    hub.server.shutdown()
    hub.server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(args: list[str], env_overrides: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the download command in a subprocess whose proxies point at a closed local port."""
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env |= {
        "HF_HOME": str(tmp_path / "hf_home_cli"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HTTP_PROXY": dead_proxy,
        "HTTPS_PROXY": dead_proxy,
        "ALL_PROXY": dead_proxy,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    env |= env_overrides
    return subprocess.run(
        [sys.executable, "-m", "jaxconnectome.data", "download", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def test_download_writes_challenge_layout(fake_hub, tmp_path):
    root = tmp_path / "data"
    results = download(train_shards=2, output=root, endpoint=fake_hub.endpoint)

    expected = {
        "manifest.json": "datasets/manifest.json",
        "datasets/fineweb10B_sp1024/fineweb_val_000000.bin": f"{DATASET}/fineweb_val_000000.bin",
        "datasets/fineweb10B_sp1024/fineweb_train_000000.bin": f"{DATASET}/fineweb_train_000000.bin",
        "datasets/fineweb10B_sp1024/fineweb_train_000001.bin": f"{DATASET}/fineweb_train_000001.bin",
        "tokenizers/fineweb_1024_bpe.model": "datasets/tokenizers/fineweb_1024_bpe.model",
        "tokenizers/fineweb_1024_bpe.vocab": "datasets/tokenizers/fineweb_1024_bpe.vocab",
    }
    for local, remote in expected.items():
        assert (root / local).read_bytes() == fake_hub.files[remote], local
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert written == sorted(expected)
    assert not (root / "datasets/fineweb10B_sp1024/fineweb_train_000002.bin").exists()
    assert [result.status for result in results] == ["downloaded"] * 5


def test_second_run_sends_no_requests(fake_hub, tmp_path):
    root = tmp_path / "data"
    download(train_shards=2, output=root, endpoint=fake_hub.endpoint)
    assert len(fake_hub.gets()) == 6
    fake_hub.requests.clear()

    results = download(train_shards=2, output=root, endpoint=fake_hub.endpoint)
    assert fake_hub.requests == []
    assert [result.status for result in results] == ["present"] * 5


def test_more_train_shards_fetches_only_new(fake_hub, tmp_path):
    root = tmp_path / "data"
    download(train_shards=1, output=root, endpoint=fake_hub.endpoint)
    fake_hub.requests.clear()

    download(train_shards=3, output=root, endpoint=fake_hub.endpoint)
    assert fake_hub.gets() == [
        f"/datasets/{REPO_ID}/resolve/main/{DATASET}/fineweb_train_000001.bin",
        f"/datasets/{REPO_ID}/resolve/main/{DATASET}/fineweb_train_000002.bin",
    ]


def test_invalid_shard_is_replaced(fake_hub, tmp_path):
    root = tmp_path / "data"
    download(train_shards=1, output=root, endpoint=fake_hub.endpoint)
    shard = root / "datasets/fineweb10B_sp1024/fineweb_train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])

    results = download(train_shards=1, output=root, endpoint=fake_hub.endpoint)
    statuses = {result.path.name: result.status for result in results}
    assert statuses["fineweb_train_000000.bin"] == "replaced"
    assert statuses["fineweb_val_000000.bin"] == "present"
    assert shard.read_bytes() == fake_hub.files[f"{DATASET}/fineweb_train_000000.bin"]


def test_missing_manifest_uses_known_names(hub_home, tmp_path):
    hub = start_hub(repo_files(with_manifest=False))
    try:
        root = tmp_path / "data"
        download(train_shards=2, output=root, endpoint=hub.endpoint)
    finally:
        hub.server.shutdown()
        hub.server.server_close()
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert written == [
        "datasets/fineweb10B_sp1024/fineweb_train_000000.bin",
        "datasets/fineweb10B_sp1024/fineweb_train_000001.bin",
        "datasets/fineweb10B_sp1024/fineweb_val_000000.bin",
        "tokenizers/fineweb_1024_bpe.model",
    ]


def test_too_many_train_shards_rejected(fake_hub, tmp_path):
    with pytest.raises(DataError, match="more than the 3 training shards"):
        download(train_shards=4, output=tmp_path / "data", endpoint=fake_hub.endpoint)


def test_unknown_repo_rejected(fake_hub, tmp_path):
    with pytest.raises(DataError, match="dataset repo someone/else not found"):
        download(train_shards=1, output=tmp_path / "data", repo_id="someone/else", endpoint=fake_hub.endpoint)


def test_missing_huggingface_hub_names_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(DataError, match=r'pip install -e "\.\[download\]"'):
        download(train_shards=1, output=tmp_path / "data", endpoint="http://127.0.0.1:9")


def test_cli_downloads_through_hf_endpoint(fake_hub, tmp_path):
    root = tmp_path / "data"
    env = {"HF_ENDPOINT": fake_hub.endpoint}
    result = run_cli(["--train-shards", "1", "--output", str(root)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 files downloaded" in result.stdout
    assert f"DATA_PATH={root}/datasets/fineweb10B_sp1024" in result.stdout
    assert (root / "datasets/fineweb10B_sp1024/fineweb_train_000000.bin").is_file()


def test_cli_unreachable_hub_exits_2(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {"HF_ENDPOINT": endpoint}
    result = run_cli(["--train-shards", "1", "--output", str(tmp_path / "data")], env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot reach {endpoint}")
    assert "check the network connection and proxy settings" in lines[0]
    assert "copy the shards by hand into" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_offline_mode_exits_2(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "1"}
    result = run_cli(["--train-shards", "1", "--output", str(tmp_path / "data")], env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "HF_HUB_OFFLINE is set" in lines[0]

