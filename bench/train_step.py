"""Time the full training step in JAX against the PyTorch reference's step, in one process.

    python bench/train_step.py [--configs primary,small] [--steps 5] [--torch-precision auto|float32|bfloat16]
                               [--set key=value ...]

Both frameworks run the same step on the same weights and random tokens. The step is the
unmasked and the span-masked encoder passes, CE + 0.5 JEPA + 1e-4 SigREG, backward,
gradient clipping to norm 1.0 and AdamW with the reference's two learning-rate groups
(tok_emb and mask_emb at 0.3 x LR). The PyTorch side is tests/torch_reference.py's model and losses,
the plain reimplementation the test suite checks the JAX model against, with torch.optim.AdamW
and clip_grad_norm_. Its span mask is drawn on the host in a Python loop, as the reference
does, and that time is part of its step.

After compiling (JAX) and warming up (both), the steps alternate JAX, PyTorch, JAX, ...
and each framework's median over `--steps` steps is reported, one line per configuration:

    bench config=NAME device=... tokens=N jax_tokens_per_s=... torch_tokens_per_s=... ratio=... jax_peak_bytes=... torch_peak_bytes=...

followed by `ratio_of_fastest` (the ratio of each framework's fastest step), the PyTorch
precision and the batch shape. `ratio` is PyTorch's step time over JAX's, so above 1 means
JAX is faster. PyTorch's OpenMP threads slow down several-fold whenever another process
takes a core, so on a shared machine its median can mislead; compare `ratio_of_fastest`.

Peak memory: on GPU, JAX's `peak_bytes_in_use` and torch.cuda.max_memory_allocated. On CPU
neither framework reports allocations, so the script measures the growth of the process's
resident set during one step of each framework: it returns freed heap memory to the OS with
glibc's malloc_trim, resets the peak with /proc/self/clear_refs, runs the step and reports
VmHWM minus the resident size before the step. The figure covers activations, gradients
and temporaries, not the weights and optimiser state that persist between steps.
It is `n/a` where /proc or glibc are missing.

PyTorch runs with torch.set_num_threads(os.cpu_count()) on CPU. Its precision is float32,
or bfloat16 as the reference runs (the model cast to bfloat16, under bfloat16 autocast),
whichever `--torch-precision auto` measures faster on this device
(the line says which); JAX computes in the settings' compute dtype (float32 on CPU).
Where a bfloat16 matmul is more than twice as slow as a float32 one, `auto` takes float32
without timing bfloat16 steps, which on such CPUs take minutes each.

A comment line per configuration gives the step's FLOP count (bench/throughput.py's) and
each framework's FLOP rate over the step beside its rate on one (4096 x 768) @ (768 x 1024)
matmul, which bounds how far the step can go on this device.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import jax
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch_reference as ref  # noqa: E402
from throughput import train_flops_per_token  # noqa: E402
from jaxconnectome import trainer  # noqa: E402
from jaxconnectome.optim import EMBED_LR_SCALE  # noqa: E402
from jaxconnectome.settings import resolve_settings  # noqa: E402
from jaxconnectome.state_dict import to_state_dict  # noqa: E402
from jaxconnectome.train_step import make_train_step  # noqa: E402

# Per configuration: settings overrides and the (sequences, sequence length) of one step,
# sized so that a step takes seconds on a 2-core CPU.
CONFIGS = {
    "primary": ({}, (4, 1024)),
    "small": ({"embed_dim": 256, "num_attn_heads": 2, "head_dim": 64}, (16, 256)),
}


class PeakMemory:
    """Measure the resident-set growth of the process during a call (Linux with glibc only)."""

    def __init__(self):
        try:
            self.libc = ctypes.CDLL("libc.so.6")
            self.available = Path("/proc/self/clear_refs").exists()
        except OSError:
            self.available = False

    @staticmethod
    def _status_kib(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def growth_bytes(self, fn) -> int | None:
        """Run fn() and return its peak resident-set growth in bytes, or None where unsupported."""
        if not self.available:
            fn()
            return None
        self.libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
        before = self._status_kib("VmRSS")
        fn()
        return 1024 * (self._status_kib("VmHWM") - before)


def build_jax(settings, shape):
    model = trainer.build_model(settings, jax.default_backend())
    state, step = make_train_step(model, settings.optimizer(), settings.loss_config())
    batch, seq_len = shape
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, settings.vocab_size, (batch, seq_len + 1), dtype=np.int32)
    inputs = jax.device_put(tokens[None, None, :, :-1])
    targets = jax.device_put(tokens[None, None, :, 1:])
    key = jax.random.PRNGKey(0)
    holder = {"state": state}

    def call():
        holder["state"], metrics = step(holder["state"], inputs, targets, key, 1.0)
        jax.block_until_ready(metrics)

    return model, tokens, call


def build_torch(model, settings, tokens, precision: str, device: str):
    config = model.config
    torch_model = ref.build_reference_model(
        {
            "vocab_size": config.vocab_size, "embed_dim": config.embed_dim, "num_hops": config.num_hops,
            "cross_attn_every": config.cross_attn_every, "head_dim": config.head_dim,
            "num_attn_heads": config.num_attn_heads, "logit_softcap": config.logit_softcap,
            "rope_base": config.rope_base, "skip_every": config.skip_every, "num_channels": config.num_channels,
        },
        torch.from_numpy(np.array(model.hop_mask[...])),
        torch.from_numpy(np.asarray(model.sensory_idx[...]).astype(np.int64)),
        torch.from_numpy(np.asarray(model.motor_idx[...]).astype(np.int64)),
        seed=0,
    )
    state = {name: torch.from_numpy(np.array(value, np.float32 if value.dtype.kind == "f" else None))
             for name, value in to_state_dict(model).items()}
    torch_model.load_state_dict(state, strict=True)
    torch_model.to(device)
    if precision == "bfloat16":
        # As the reference: the whole model in bfloat16 (no float32 master weights), under autocast.
        torch_model.bfloat16()
    embed = [p for n, p in torch_model.named_parameters() if n in ("tok_emb.weight", "mask_emb")]
    other = [p for n, p in torch_model.named_parameters() if n not in ("tok_emb.weight", "mask_emb")]
    optimizer = torch.optim.AdamW(
        [{"params": embed, "lr": settings.learning_rate * EMBED_LR_SCALE}, {"params": other, "lr": settings.learning_rate}],
        betas=(settings.beta1, settings.beta2), eps=1e-8, weight_decay=settings.weight_decay,
    )
    ids = torch.from_numpy(tokens[:, :-1].astype(np.int64)).to(device)
    targets = torch.from_numpy(tokens[:, 1:].astype(np.int64)).to(device)
    generator = torch.Generator().manual_seed(0)
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if precision == "bfloat16" else nullcontext

    def call():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            losses = ref.total_loss(
                torch_model, ids, targets, settings.jepa_weight, settings.sigreg_weight, settings.mask_ratio,
                settings.mask_span_length, settings.sigreg_slices, settings.sigreg_knots, generator=generator,
            )
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(torch_model.parameters(), settings.grad_clip_norm)
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return call


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


MATMUL_SIZE = (4096, 768, 1024)  # (M, K, N): the logits matmul of a primary step, tokens x E x V


def fastest_of_three(call) -> float:
    """Return the fastest of three timed calls, after one warm-up call."""
    call()
    return min(timed(call) for _ in range(3))


def matmul_seconds(dtype: torch.dtype, device: str) -> float:
    """Return the fastest time of one (M, K) @ (K, N) PyTorch matmul in `dtype`."""
    m, k, n = MATMUL_SIZE
    a, b = torch.ones(m, k, dtype=dtype, device=device), torch.ones(k, n, dtype=dtype, device=device)

    def call():
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()

    return fastest_of_three(call)


def jax_matmul_seconds(dtype) -> float:
    """Return the fastest time of one (M, K) @ (K, N) jitted JAX matmul in `dtype`."""
    m, k, n = MATMUL_SIZE
    a, b = jax.numpy.ones((m, k), dtype), jax.numpy.ones((k, n), dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    return fastest_of_three(lambda: matmul(a, b).block_until_ready())


def rate_line(name: str, settings, tokens: int, jax_s: float, torch_s: float, precision: str, device: str) -> str:
    """Compare each framework's FLOP rate over the step with its rate on one large matmul.

    The step's FLOP count is bench/throughput.py's (causal attention counted at half). A
    framework cannot run its step much faster than its own matmul rate allows, which
    bounds the ratio that any change to the JAX side can reach on this device.
    """
    step_flop = train_flops_per_token(settings) * tokens
    m, k, n = MATMUL_SIZE
    matmul_flop = 2 * m * k * n
    jax_dtype = jax.numpy.float32 if settings.model_config(jax.default_backend()).compute_dtype == "float32" \
        else jax.numpy.bfloat16
    torch_dtype = torch.float32 if precision == "float32" else torch.bfloat16
    jax_matmul = matmul_flop / jax_matmul_seconds(jax_dtype) / 1e9
    torch_matmul = matmul_flop / matmul_seconds(torch_dtype, device) / 1e9
    return (f"# {name}: step GFLOP={step_flop / 1e9:.1f} jax_step_gflops={step_flop / jax_s / 1e9:.0f} "
            f"torch_step_gflops={step_flop / torch_s / 1e9:.0f} jax_matmul_gflops={jax_matmul:.0f} "
            f"torch_matmul_gflops={torch_matmul:.0f}")


def pick_torch_precision(model, settings, tokens, device: str, steps: int) -> tuple[str, dict]:
    """Time float32 and bfloat16 steps alternately (after one warm-up each) and return the faster.

    Where a bfloat16 matmul is more than twice as slow as a float32 one, float32 is chosen
    without timing steps. That happens on CPUs without native bfloat16 arithmetic, where
    PyTorch runs bfloat16 at a small fraction of the float32 speed and a primary step would
    take minutes.
    """
    matmul = {
        "float32": matmul_seconds(torch.float32, device),
        "bfloat16": matmul_seconds(torch.bfloat16, device),
    }
    if matmul["bfloat16"] > 2 * matmul["float32"]:
        return "float32", {f"matmul_{precision}": seconds for precision, seconds in matmul.items()}
    calls = {precision: build_torch(model, settings, tokens, precision, device) for precision in ("float32", "bfloat16")}
    times = {precision: [] for precision in calls}
    for call in calls.values():
        call()
    for _ in range(steps):
        for precision, call in calls.items():
            times[precision].append(timed(call))
    medians = {precision: statistics.median(t) for precision, t in times.items()}
    return min(medians, key=medians.get), medians


def bench_config(name: str, args, memory: PeakMemory) -> str:
    overrides, shape = CONFIGS[name]
    batch, seq_len = shape
    values = {**overrides, "train_seq_len": seq_len, "train_batch_tokens": batch * seq_len, "grad_accum_steps": 1,
              "max_wallclock_seconds": 0, "demo_data": False}
    settings = resolve_settings(environ={}, overrides=[f"{k}={v}" for k, v in values.items()] + args.overrides)
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"

    model, tokens, jax_call = build_jax(settings, shape)
    precision = args.torch_precision
    if precision == "auto":
        precision, medians = pick_torch_precision(model, settings, tokens, device, max(2, args.steps // 2))
        print(f"# {name}: torch precision probe, seconds " + " ".join(f"{k}={v:.3f}" for k, v in medians.items()), flush=True)
    torch_call = build_torch(model, settings, tokens, precision, device)

    jax_call()  # compiles
    jax_call()
    torch_call()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    jax_peak = memory.growth_bytes(jax_call) if device == "cpu" else None
    torch_peak = memory.growth_bytes(torch_call) if device == "cpu" else None

    jax_times, torch_times = [], []
    for _ in range(args.steps):
        jax_times.append(timed(jax_call))
        torch_times.append(timed(torch_call))
    jax_s, torch_s = statistics.median(jax_times), statistics.median(torch_times)
    print(f"# {name}: step seconds jax={[round(t, 3) for t in jax_times]} torch={[round(t, 3) for t in torch_times]}",
          flush=True)
    print(rate_line(name, settings, batch * seq_len, jax_s, torch_s, precision, device), flush=True)

    if device == "cuda":
        jax_peak = (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
        torch_peak = torch.cuda.max_memory_allocated()
    tokens_per_step = batch * seq_len
    fields = {
        "config": name,
        "device": jax.devices()[0].device_kind.replace(" ", "_"),
        "tokens": tokens_per_step,
        "jax_tokens_per_s": f"{tokens_per_step / jax_s:.0f}",
        "torch_tokens_per_s": f"{tokens_per_step / torch_s:.0f}",
        "ratio": f"{torch_s / jax_s:.2f}",
        "ratio_of_fastest": f"{min(torch_times) / min(jax_times):.2f}",
        "jax_peak_bytes": jax_peak if jax_peak is not None else "n/a",
        "torch_peak_bytes": torch_peak if torch_peak is not None else "n/a",
        "torch_precision": precision,
        "shape": f"{batch}x{seq_len}",
    }
    return "bench " + " ".join(f"{k}={v}" for k, v in fields.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="primary,small", help="comma-separated names from: " + ", ".join(CONFIGS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per framework, after warm-up")
    parser.add_argument("--torch-precision", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="PyTorch's precision (auto: time both and use the faster)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="JAX settings override, e.g. a speed switch")
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    memory = PeakMemory()
    for name in args.configs.split(","):
        print(bench_config(name, args, memory), flush=True)


if __name__ == "__main__":
    main()
