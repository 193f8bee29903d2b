"""Locate the read-only shared data folder that sits beside the repository.

The folder contains the challenge tokenizer, real challenge shards and English text
corpora. Tests that need it skip on a developer machine without it, but fail
under CI (the CI environment variable is set), where a skip would hide a
missing fixture.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_ROOT = Path(__file__).resolve().parents[2] / "shared"


def shared_path(*parts: str) -> Path:
    """Return SHARED_ROOT joined with `parts`, skipping or failing the test when it is missing."""
    path = SHARED_ROOT.joinpath(*parts)
    if path.exists():
        return path
    message = f"shared test data {path} not found; place the shared folder beside the repository"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
