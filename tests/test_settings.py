"""Settings: precedence, strictness and the help text."""

import subprocess
import sys
from pathlib import Path

import pytest

from jaxconnectome.settings import (
    FIELDS,
    Settings,
    SettingsError,
    check_batch_layout,
    resolve_settings,
)

REPO = Path(__file__).resolve().parents[1]
REFERENCE_VARIABLES = (
    "DATA_PATH TOKENIZER_PATH RUN_ID SEED VAL_BATCH_SIZE VAL_LOSS_EVERY TRAIN_LOG_EVERY ITERATIONS "
    "WARMDOWN_ITERS WARMUP_STEPS TRAIN_BATCH_TOKENS TRAIN_SEQ_LEN MAX_WALLCLOCK_SECONDS VOCAB_SIZE "
    "EMBED_DIM NUM_HOPS CROSS_ATTN_EVERY HEAD_DIM NUM_ATTN_HEADS LOGIT_SOFTCAP ROPE_BASE SKIP_EVERY "
    "NUM_CHANNELS TOPOLOGY MASK_RATIO MASK_SPAN_LENGTH JEPA_WEIGHT SIGREG_WEIGHT SIGREG_SLICES "
    "SIGREG_KNOTS LEARNING_RATE WEIGHT_DECAY BETA1 BETA2 GRAD_CLIP_NORM LR_SCHEDULE GRAD_ACCUM_STEPS"
).split()


def test_every_reference_variable_is_a_setting():
    assert {name.lower() for name in REFERENCE_VARIABLES} <= set(FIELDS)


def test_defaults_are_the_reference():
    s = resolve_settings(environ={})
    assert (s.embed_dim, s.num_hops, s.num_attn_heads, s.head_dim, s.seed) == (768, 6, 4, 128, 1337)
    assert (s.train_batch_tokens, s.train_seq_len, s.iterations, s.max_wallclock_seconds) == (524288, 1024, 5000, 600.0)
    assert (s.jepa_weight, s.sigreg_weight, s.learning_rate, s.lr_schedule) == (0.5, 1e-4, 1e-3, "cosine")
    assert s.param_dtype == "float32"
    assert s.signal_flow == "post_to_pre"
    assert s.accumulation_steps(1) == 8
    assert s.accumulation_steps(8) == 1
    assert s.accumulation_steps(16) == 1
    assert len(s.run_id) == 36  # a random UUID


def test_precedence_config_then_environment_then_flags(tmp_path):
    config = tmp_path / "mine.py"
    config.write_text('"""Test config."""\nSETTINGS = {"embed_dim": 256, "num_hops": 4, "seed": 7}\n')
    s = resolve_settings(str(config), environ={"NUM_HOPS": "3", "SEED": "9"}, overrides=["seed=11"])
    assert (s.embed_dim, s.num_hops, s.seed) == (256, 3, 11)


def test_bool_and_float_parsing():
    s = resolve_settings(environ={"OVERLAP_STEPS": "0", "SIGREG_WEIGHT": "0"}, overrides=["max_wallclock_seconds=0"])
    assert s.overlap_steps is False
    assert s.sigreg_weight == 0.0
    assert s.max_wallclock_seconds == 0.0


@pytest.mark.parametrize(
    "overrides, environ, words",
    [
        (["embed=512"], {}, ["--set", "embed=512", "unknown setting 'embed'"]),
        (["embed_dim"], {}, ["--set", "expected key=value"]),
        (["embed_dim=big"], {}, ["embed_dim", "'big'", "int"]),
        ([], {"EMBED_DIM": "5.5"}, ["EMBED_DIM", "int"]),
        (["topology=ring"], {}, ["TOPOLOGY", "ring", "connectome"]),
        (["lr_schedule=step"], {}, ["LR_SCHEDULE", "cosine"]),
        (["num_hops=0"], {}, ["NUM_HOPS", "positive"]),
        (["head_dim=7"], {}, ["HEAD_DIM", "even"]),
        (["signal_flow=up"], {}, ["SIGNAL_FLOW", "pre_to_post"]),
        (["overlap_steps=maybe"], {}, ["overlap_steps", "bool"]),
        (["hop_loop=while"], {}, ["HOP_LOOP", "while", "unrolled"]),
    ],
)
def test_bad_settings_are_rejected(overrides, environ, words):
    with pytest.raises(SettingsError) as error:
        resolve_settings(environ=environ, overrides=overrides)
    for word in words:
        assert word in str(error.value)


def test_config_with_unknown_key(tmp_path):
    config = tmp_path / "typo.py"
    config.write_text('SETTINGS = {"embed_dims": 256}\n')
    with pytest.raises(SettingsError, match="typo.py: unknown setting 'embed_dims'"):
        resolve_settings(str(config), environ={})


def test_missing_config_lists_the_available_ones():
    with pytest.raises(SettingsError, match="demo"):
        resolve_settings("no_such_config", environ={})


def test_batch_layout_must_divide():
    s = Settings(train_batch_tokens=1000, train_seq_len=64)
    with pytest.raises(SettingsError, match="TRAIN_BATCH_TOKENS=1000 .* multiple of 512"):
        check_batch_layout(s, world_size=1)
    assert check_batch_layout(Settings(train_batch_tokens=4096, train_seq_len=256, grad_accum_steps=2), 1) == 2


def test_shipped_configs_load():
    for path in sorted((REPO / "configs").glob("*.py")):
        settings = resolve_settings(str(path), environ={})
        assert isinstance(settings, Settings), path.name


def test_help_lists_every_setting_with_default():
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True,
                            check=True, cwd=REPO)
    for name, field in FIELDS.items():
        assert f"{name} ({name.upper()}, default" in result.stdout, name
    assert "embed_dim (EMBED_DIM, default 768): embedding width E" in result.stdout
