"""The FLOP count behind the benchmark's MFU."""

import importlib.util
from pathlib import Path

import pytest

from jaxconnectome.settings import Settings

SPEC = importlib.util.spec_from_file_location("throughput", Path(__file__).resolve().parents[1] / "bench" / "throughput.py")
throughput = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(throughput)


def test_primary_flops_match_the_quoted_54_mflop():
    assert throughput.train_flops_per_token(Settings()) / 1e6 == pytest.approx(54.1, abs=0.05)


def test_flops_by_hand_for_a_small_model():
    s = Settings(embed_dim=64, num_hops=2, cross_attn_every=1, num_attn_heads=1, head_dim=16, train_seq_len=32,
                 vocab_size=100, jepa_weight=0.0)
    forward = (2 * 64 * 88) + 2 * (2 * 300 * 300) + 2 * (8 * 300 * 16 + 2 * 32 * 16) + 2 * 123 * 64 + 2 * 64 * 100
    assert throughput.train_flops_per_token(s) == 3 * forward
