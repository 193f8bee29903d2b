"""Run train steps on meshes of fake CPU devices and print a JSON report; used by test_sharding.

Run as a subprocess: the device count is fixed when JAX starts, so this script sets
--xla_force_host_platform_device_count=8 before importing JAX.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxconnectome import connectome, sharding  # noqa: E402
from jaxconnectome.model import ConnectomeJEPA, ModelConfig  # noqa: E402
from jaxconnectome.optim import build_optimizer  # noqa: E402
from jaxconnectome.train_step import LossConfig, make_train_step  # noqa: E402

CONFIG = ModelConfig(vocab_size=256, embed_dim=32, num_hops=3, cross_attn_every=1, head_dim=16, num_attn_heads=2)
STEPS = 3
SEQ_LEN = 32


def build_model() -> ConnectomeJEPA:
    graph = connectome.load_connectome()
    mask = connectome.hop_mask("connectome", "post_to_pre", seed=0)
    return ConnectomeJEPA(CONFIG, mask, graph.sensory_idx, graph.motor_idx, rngs=nnx.Rngs(params=0))


def batches(num_micro: int, num_workers: int):
    """Yield the same 16 sequences per step, laid out as (A, W, B, S) in micro-batch order."""
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        tokens = rng.integers(0, 256, (16, SEQ_LEN + 1))
        shape = (num_micro, num_workers, 16 // (num_micro * num_workers), SEQ_LEN)
        yield tokens[:, :-1].reshape(shape), tokens[:, 1:].reshape(shape)


def run(devices: int, fsdp: int, num_micro: int, num_workers: int):
    mesh = sharding.make_mesh(fsdp, devices=jax.devices()[:devices])
    state, step = make_train_step(build_model(), build_optimizer(learning_rate=1e-3), LossConfig(), mesh)
    key = jax.random.PRNGKey(7)
    history = []
    for inputs, targets in batches(num_micro, num_workers):
        inputs = jax.device_put(inputs, sharding.batch_sharding(mesh))
        targets = jax.device_put(targets, sharding.batch_sharding(mesh))
        state, metrics = step(state, inputs, targets, key, 1.0)
        history.append({k: float(v) for k, v in metrics.items()})
    return state, history, inputs


def max_relative_difference(a, b) -> float:
    """Return the largest ||x - y|| / ||y|| over the parameter tensors.

    Per tensor rather than per element: Adam moves a weight whose gradient is nearly zero by
    about lr * sign(gradient), so summation order alone can flip single elements.
    """
    diffs = []
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        diffs.append(float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12)))
    return max(diffs)


def spec_of(array) -> list:
    return [list(p) if isinstance(p, tuple) else p for p in array.sharding.spec]


def main() -> None:
    baseline_state, baseline_history, _ = run(devices=1, fsdp=1, num_micro=8, num_workers=1)
    report = {"device_count": jax.device_count(), "runs": {}}
    layouts = {
        "one_device_eight_workers": (1, 1, 1, 8),
        "eight_devices": (8, 1, 1, 8),
        "eight_devices_accumulating": (8, 1, 2, 8),
        "eight_devices_fsdp2": (8, 2, 1, 8),
        "eight_devices_fsdp4_accumulating": (8, 4, 2, 8),
    }
    for name, (devices, fsdp, num_micro, num_workers) in layouts.items():
        if num_micro * num_workers != 8:
            # Accumulating layouts compare against a one-device run with the same A * W.
            base_state, base_history, _ = run(1, 1, num_micro * num_workers, 1)
        else:
            base_state, base_history = baseline_state, baseline_history
        state, history, last_inputs = run(devices, fsdp, num_micro, num_workers)
        report["runs"][name] = {
            "param_difference": max_relative_difference(state.params, base_state.params),
            "loss_difference": max(abs(h[k] - b[k]) / abs(b[k]) for h, b in zip(history, base_history)
                                   for k in ("ce", "jepa", "sigreg")),
            "tok_emb_spec": spec_of(state.params["tok_emb"][...]),
            "hop_weight_spec": spec_of(state.params["hop_weight"][...]),
            "adam_mu_tok_emb_spec": spec_of(state.opt_state.inner_state[1].inner_states["embed"]
                                             .inner_state[0].mu["tok_emb"][...]),
            "batch_spec": spec_of(last_inputs),
            "batch_shard_shape": list(last_inputs.addressable_shards[0].data.shape),
            "tok_emb_shard_shape": list(state.params["tok_emb"][...].addressable_shards[0].data.shape),
            "losses_changed": baseline_history[0]["ce"] != baseline_history[-1]["ce"],
        }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
