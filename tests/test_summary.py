"""The start-of-run summary: component counts, wiring statistics and the artifact estimate."""

import json

import jax
import pytest
from flax import nnx

from shared_data import shared_path
from jaxconnectome import trainer
from jaxconnectome.model import count_params
from jaxconnectome.settings import resolve_settings
from jaxconnectome.summary import estimate_int8_payload, parameter_counts, run_summary_lines, state_dict_shapes

# The reference's primary run logged `Serialized model int8+zlib: ... (payload:3904086 ...)`.
PRIMARY_PAYLOAD = 3_904_086


def abstract_model(config_name: str | None = None, overrides: list[str] | None = None):
    settings = resolve_settings(config_name, environ={}, overrides=overrides)
    return settings, nnx.eval_shape(lambda: trainer.build_model(settings, "cpu"))


def summary_text(settings, model) -> str:
    return "\n".join(run_summary_lines(settings, model, world_size=1, accum=8, devices=jax.devices()))


def test_primary_payload_matches_reference():
    _, model = abstract_model("primary")
    shapes = [(shape, is_float) for _, shape, is_float in state_dict_shapes(model)]
    assert estimate_int8_payload(shapes) == PRIMARY_PAYLOAD


def test_primary_summary_states_payload():
    settings, model = abstract_model("primary")
    assert f"{PRIMARY_PAYLOAD:,} bytes int8 payload before zlib" in summary_text(settings, model)


@pytest.mark.parametrize("config_name", ["primary", "small", "two_hop_no_skips", "sixteen_hop_no_skips"])
def test_component_counts_sum_to_total(config_name):
    _, model = abstract_model(config_name)
    counts = dict(parameter_counts(model))
    assert "other" not in counts
    assert sum(counts.values()) == count_params(model)


def test_component_counts_primary():
    _, model = abstract_model("primary")
    counts = dict(parameter_counts(model))
    assert counts["embedding"] == 1024 * 768 + 768
    assert counts["hop weights"] == 6 * 300 * 300
    assert counts["skip gates"] == 2
    assert counts["attention"] == 3 * 4 * 512 * 300


def test_summary_lists_neuron_classes():
    settings, model = abstract_model("primary")
    text = summary_text(settings, model)
    assert "88 sensory, 89 interneuron, 123 motor" in text
    assert "5,084 (density 5.65%, 45 self-loops)" in text
    assert "post_to_pre" in text


def test_summary_batch_layout():
    settings, model = abstract_model("primary")
    text = summary_text(settings, model)
    assert "524,288 tokens per optimiser step" in text
    assert "65,536 tokens = 64 sequences" in text


def test_summary_on_built_model():
    # The summary must work on concrete arrays as well as on eval_shape's abstract ones.
    overrides = ["embed_dim=32", "num_attn_heads=1", "head_dim=16", "num_hops=2", "cross_attn_every=1"]
    settings = resolve_settings(environ={}, overrides=overrides)
    model = trainer.build_model(settings, "cpu")
    lines = run_summary_lines(settings, model, world_size=1, accum=1, devices=jax.devices())
    assert lines[0] == f"parameters: {count_params(model):,}"


@pytest.mark.parametrize("layout_name", ["primary", "small", "two_hop", "channels2"])
def test_state_dict_shapes_match_reference_layout(layout_name):
    layout = json.loads(shared_path("reference", "torch_state_dict_layout.json").read_text())[layout_name]
    config = layout["config"]
    overrides = [
        f"embed_dim={config['embed']}", f"num_attn_heads={config['heads']}", f"num_hops={config['hops']}",
        f"cross_attn_every={config['every']}", f"skip_every={config['skip']}",
        f"num_channels={config.get('channels', 1)}",
    ]
    _, model = abstract_model(overrides=overrides)
    ours = sorted((name, tuple(shape)) for name, shape, _ in state_dict_shapes(model))
    reference = sorted((name, tuple(shape)) for name, shape, _ in layout["state_dict"])
    assert ours == reference
    reference_payload = estimate_int8_payload((shape, dtype != "int64") for _, shape, dtype in layout["state_dict"])
    shapes = [(shape, is_float) for _, shape, is_float in state_dict_shapes(model)]
    assert estimate_int8_payload(shapes) == reference_payload
