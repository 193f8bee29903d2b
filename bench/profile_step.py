"""Split the training step's time into its parts by jitting each part on its own.

    python bench/profile_step.py [--configs primary,small] [--steps 3] [--set key=value ...]

Each part runs forward and backward (value and gradient of a scalar made from its
output) on inputs of the shapes it has in the step, after one compiling call, and the
median of `--steps` calls is printed with the share of the whole step. The parts:
masked hops (all L of one encoder pass), attention (all layers of one pass), the rest of
one encoder pass (embedding, sensory and motor projections, final rms_norm), logits and
CE, SigREG, the JEPA span mask, and the optimiser update (clipping and AdamW). An encoder
pass runs twice per step (unmasked and masked input). The parts do not add up to the
step exactly, because XLA fuses across their boundaries inside the step; `other` is the
difference, and includes host dispatch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from train_step import CONFIGS  # noqa: E402
from jaxconnectome import losses, trainer  # noqa: E402
from jaxconnectome.settings import resolve_settings  # noqa: E402
from jaxconnectome.train_step import make_train_step  # noqa: E402


def median_seconds(fn, *args, steps: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def grad_of_sum(fn, num_differentiated: int):
    """Return jit(grad) of sum(fn(...) * cotangent), the cotangent being the last argument,
    with respect to the first `num_differentiated` arguments."""

    def scalar(*args):
        *inputs, cotangent = args
        return jnp.sum(fn(*inputs) * cotangent)

    return jax.jit(jax.grad(scalar, argnums=tuple(range(num_differentiated))))


def profile_config(name: str, args) -> None:
    overrides, (batch, seq_len) = CONFIGS[name]
    values = {**overrides, "train_seq_len": seq_len, "train_batch_tokens": batch * seq_len, "grad_accum_steps": 1,
              "max_wallclock_seconds": 0, "demo_data": False}
    settings = resolve_settings(environ={}, overrides=[f"{k}={v}" for k, v in values.items()] + args.overrides)
    model = trainer.build_model(settings, "cpu")
    config = model.config
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, settings.vocab_size, (batch, seq_len)), jnp.int32)
    parts: dict[str, float] = {}

    optimizer = settings.optimizer()
    state, step = make_train_step(model, optimizer, settings.loss_config())
    holder = {"state": state}

    def train_call(x):
        holder["state"], metrics = step(holder["state"], x, x, jax.random.PRNGKey(0), 1.0)
        return metrics

    whole = median_seconds(train_call, ids[None, None], steps=args.steps)

    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)

    def encode(p, x):
        return nnx.merge(graphdef, p, buffers).encode(x)

    rep = jax.jit(encode)(params, ids)
    parts["encoder pass (fwd+bwd)"] = median_seconds(grad_of_sum(encode, 1), params, ids, rep, steps=args.steps)

    width = config.num_channels * 300
    state_BSN = jnp.asarray(rng.standard_normal((batch, seq_len, width)), jnp.float32)
    hop_parts = _hop_and_attention_parts(model, state_BSN, args.steps)
    parts.update(hop_parts)
    parts["encoder rest (embed, projections)"] = parts["encoder pass (fwd+bwd)"] - sum(hop_parts.values())

    def logits_ce(p, r):
        return losses.cross_entropy(nnx.merge(graphdef, p, buffers).logits(r), ids)

    parts["logits + CE"] = median_seconds(jax.jit(jax.grad(logits_ce, argnums=(0, 1))), params, rep, steps=args.steps)
    sigreg = jax.jit(jax.grad(lambda r: losses.sigreg(jax.random.PRNGKey(1), r.reshape(-1, r.shape[-1]))))
    parts["SigREG"] = median_seconds(sigreg, rep, steps=args.steps)
    mask = jax.jit(lambda k: losses.jepa_span_mask(k, batch, seq_len))
    parts["JEPA span mask"] = median_seconds(mask, jax.random.PRNGKey(2), steps=args.steps)
    opt_state = optimizer.init(params)
    update = jax.jit(lambda g, s, p: optimizer.update(g, s, p))
    parts["optimiser"] = median_seconds(update, params, opt_state, params, steps=args.steps)

    print(f"profile config={name} shape={batch}x{seq_len} step_s={whole:.3f}")
    accounted = 2 * parts["encoder pass (fwd+bwd)"]
    for part, seconds in parts.items():
        per_pass = part.startswith(("encoder", "hops", "attention"))
        if not per_pass:
            accounted += seconds
        note = "  per encoder pass, 2 per step" if per_pass else ""
        print(f"  {part:38s} {seconds:7.3f} s{note}")
    print(f"  {'other (fusion differences, host)':38s} {whole - accounted:7.3f} s")


def _hop_and_attention_parts(model, state_BSN, steps: int) -> dict[str, float]:
    """Time all hops of one pass and all attention layers of one pass, forward and backward."""
    from jaxconnectome.layers import causal_attention
    from jaxconnectome.model import hop

    config = model.config
    weight = model.hop_weight[...] * model.hop_mask[...]
    bias, scale = model.hop_bias[...], model.hop_scale[...]
    gate = jnp.zeros(())

    def hops(w, b, s, x):
        for i in range(config.num_hops):
            x = hop(x, x, w[i], b[i], s[i], gate)
        return x

    attn = tuple(getattr(model, f"attn_{n}")[...] for n in ("q", "k", "v", "out"))

    def attention(wq, wk, wv, wo, x):
        for i in range(len(config.attn_hops)):
            x = causal_attention(x, wq[i], wk[i], wv[i], wo[i], config.num_attn_heads, config.rope_base,
                                 config.attention_impl, config.attention_block_size, config.remat_attention)
        return x

    out = {}
    out[f"hops ({config.num_hops}, fwd+bwd)"] = median_seconds(grad_of_sum(hops, 4), weight, bias, scale, state_BSN,
                                                                 state_BSN, steps=steps)
    out[f"attention ({len(config.attn_hops)} layers, fwd+bwd)"] = median_seconds(
        grad_of_sum(attention, 5), *attn, state_BSN, state_BSN, steps=steps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="primary,small")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    for name in args.configs.split(","):
        profile_config(name, args)


if __name__ == "__main__":
    main()
