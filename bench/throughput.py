"""Time the jitted train step and evaluation on every device, after compilation.

    python bench/throughput.py [--config NAME] [--set key=value ...] [--steps N] [--peak-tflops X]

Uses random tokens, so it needs no data. Prints one line with tokens per second, ms per
step, peak device memory where the backend reports it, and model FLOPs utilisation.

FLOPs per token count the matmuls of the model as it runs, two FLOPs per multiply-add:
the sensory projection (E x 88C), every hop as the dense masked 300C x 300 matmul it is,
the attention projections (4 x 300C x H*D) and, for causal attention, half of the S x S
scores and weighted sums (2 x S x H*D), the motor projection (123C x E) and the tied
logits (E x V). Training costs 3 times the forward pass (forward, then backward with
twice its FLOPs); the JEPA pass repeats the encoder without the logits. For the primary
configuration at S=1024 this gives 54.1 MFLOP per token with JEPA, the figure quoted for
the reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxconnectome import sharding, trainer  # noqa: E402
from jaxconnectome.evaluation import make_loss_sum_fn  # noqa: E402
from jaxconnectome.settings import Settings, check_batch_layout, resolve_settings  # noqa: E402
from jaxconnectome.train_step import make_train_step  # noqa: E402

# Dense bfloat16 peak of the accelerators this project targets, in TFLOP/s (vendor specs).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def forward_flops_per_token(s: Settings, with_logits: bool = True) -> float:
    channels, neurons = s.num_channels, 300 * s.num_channels
    qkv = s.num_attn_heads * s.head_dim
    attn_layers = s.num_hops // s.cross_attn_every
    flops = 2 * s.embed_dim * 88 * channels
    flops += s.num_hops * 2 * neurons * 300
    flops += attn_layers * (4 * 2 * neurons * qkv + 2 * s.train_seq_len * qkv)
    flops += 2 * 123 * channels * s.embed_dim
    if with_logits:
        flops += 2 * s.embed_dim * s.vocab_size
    return float(flops)


def train_flops_per_token(s: Settings) -> float:
    flops = 3 * forward_flops_per_token(s)
    if s.jepa_weight > 0:
        flops += 3 * forward_flops_per_token(s, with_logits=False)
    return flops


def time_calls(fn, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def peak_tflops(args_value: float | None) -> float | None:
    if args_value:
        return args_value
    kind = jax.devices()[0].device_kind
    return next((value for name, value in PEAK_TFLOPS.items() if name in kind), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config name in configs/ (default: the primary configuration)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one compiling step")
    parser.add_argument("--peak-tflops", type=float, help="device peak in TFLOP/s for MFU (known GPUs: automatic)")
    args = parser.parse_args()

    settings = resolve_settings(args.config, overrides=["demo_data=false", *args.overrides])
    mesh = sharding.make_mesh(settings.fsdp)
    workers = mesh.devices.size
    accum = check_batch_layout(settings, workers)
    model = trainer.build_model(settings, jax.default_backend())
    state, step = make_train_step(model, settings.optimizer(), settings.loss_config(), mesh)

    local = settings.train_batch_tokens // (workers * accum)
    shape = (accum, workers, local // settings.train_seq_len, settings.train_seq_len)
    rng = np.random.default_rng(0)
    inputs = jax.device_put(rng.integers(0, settings.vocab_size, shape, dtype=np.int32), sharding.batch_sharding(mesh))
    targets = jax.device_put(rng.integers(0, settings.vocab_size, shape, dtype=np.int32), sharding.batch_sharding(mesh))
    key = jax.random.PRNGKey(0)

    def train_call():
        nonlocal state
        state, metrics = step(state, inputs, targets, key, 1.0)
        return metrics

    graphdef, _, buffers = nnx.split(model, nnx.Param, ...)
    loss_sum = make_loss_sum_fn(graphdef, buffers, mesh)
    eval_batch = jax.device_put(inputs[0], sharding.batch_sharding(mesh, sharding.EVAL_BATCH_AXES))
    weights = jax.device_put(np.ones(eval_batch.shape, np.float32), sharding.batch_sharding(mesh, sharding.EVAL_BATCH_AXES))

    def eval_call():
        return loss_sum(state.params, eval_batch, eval_batch, weights)

    time_calls(train_call, 1)
    time_calls(eval_call, 1)
    train_s = statistics.median(time_calls(train_call, args.steps))
    eval_s = statistics.median(time_calls(eval_call, args.steps))

    tokens = settings.train_batch_tokens
    mflop = train_flops_per_token(settings) / 1e6
    achieved_tflops = mflop * 1e6 * tokens / train_s / 1e12
    peak = peak_tflops(args.peak_tflops)
    stats = jax.local_devices()[0].memory_stats() or {}
    fields = {
        "devices": f"{len(jax.devices())}x{jax.devices()[0].device_kind.replace(' ', '_')}",
        "tokens_per_step": tokens,
        "ms_per_step": f"{1000 * train_s:.1f}",
        "tokens_per_s": f"{tokens / train_s:.0f}",
        "eval_tokens_per_s": f"{eval_batch.size / eval_s:.0f}",
        "peak_bytes": stats.get("peak_bytes_in_use", "n/a"),
        "mflop_per_token": f"{mflop:.1f}",
        "tflops": f"{achieved_tflops:.3f}",
        "mfu": f"{achieved_tflops / (peak * len(jax.devices())):.4f}" if peak else "n/a",
    }
    print("bench_throughput " + " ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
