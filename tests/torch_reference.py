"""A plain PyTorch Connectome-JEPA, used only by tests as the reference for the JAX model.

It follows the original PyTorch script (the Connectome-JEPA submission to the OpenAI
Parameter Golf challenge) step by step. It uses the same PyTorch ops (F.linear,
exact-erf F.gelu, F.rms_norm with eps=None, F.scaled_dot_product_attention with
is_causal=True) and the same state_dict names, so a checkpoint can be loaded into it or
compared against it. It favours readability over speed, so channels and the rows of the
JEPA mask are handled in Python loops.

Unlike the original it applies no bfloat16 autocast. It computes in the dtype of its
parameters, so `.bfloat16()` gives bfloat16 weights and activations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_NEURONS = 300
NUM_SENSORY = 88
NUM_MOTOR = 123

# Short setting names, as in the state_dict layout file, mapped to constructor arguments.
CONFIG_ALIASES = {
    "vocab": "vocab_size",
    "embed": "embed_dim",
    "hops": "num_hops",
    "every": "cross_attn_every",
    "heads": "num_attn_heads",
    "skip": "skip_every",
    "channels": "num_channels",
}


def rms_norm(v: torch.Tensor) -> torch.Tensor:
    """Normalise over the last dimension with no weight and eps=None.

    With torch 2.13, eps=None means the float32 machine epsilon (about 1.19e-7) for both
    float32 and bfloat16 input.
    """
    return F.rms_norm(v, (v.shape[-1],), eps=None)


def rotate_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE with the half-split layout to x of shape (..., S, D).

    cos and sin have shape (S, D/2). The first half of the last dimension pairs with the
    second half: [x1·cos + x2·sin, −x1·sin + x2·cos].
    """
    half = x.shape[-1] // 2
    x1 = x[..., :half]
    x2 = x[..., half:]
    first = x1 * cos + x2 * sin
    second = -x1 * sin + x2 * cos
    return torch.cat([first, second], dim=-1)


def rope_cos_sin(seq_len: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return cos and sin of position · inv_freq, each (seq_len, head_dim/2), in float32."""
    j = torch.arange(head_dim // 2, dtype=torch.float32, device=device)
    inv_freq = 1.0 / (base ** (2.0 * j / head_dim))
    positions = torch.arange(seq_len, dtype=torch.float32, device=device)
    angles = positions[:, None] * inv_freq[None, :]
    return torch.cos(angles), torch.sin(angles)


class MaskedLinear(nn.Module):
    """A 300×300 linear layer whose weight is multiplied by a fixed 0/1 mask in the forward.

    The mask is a persistent buffer, so it is saved in the state_dict as `mask`. The weight
    stays dense: masked-off entries are kept but receive zero gradient.
    """

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(NUM_NEURONS, NUM_NEURONS))
        self.bias = nn.Parameter(torch.zeros(NUM_NEURONS))
        self.register_buffer("mask", mask.detach().clone().to(torch.get_default_dtype()))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight * self.mask, self.bias)


class HopAttention(nn.Module):
    """Residual causal self-attention over the sequence, applied to the neuron state.

    The state is rms-normalised and projected to q, k and v, which are split into heads.
    q and k get half-split RoPE and then rms_norm over head_dim. Causal softmax attention
    uses the scale 1/sqrt(head_dim), and the merged heads go through out_proj and are added
    to the state. out_proj starts at zero, so at initialisation the block is the identity.
    """

    def __init__(self, state_dim: int, num_heads: int, head_dim: int, rope_base: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.rope_base = rope_base
        inner_dim = num_heads * head_dim
        self.q_proj = nn.Linear(state_dim, inner_dim, bias=False)
        self.k_proj = nn.Linear(state_dim, inner_dim, bias=False)
        self.v_proj = nn.Linear(state_dim, inner_dim, bias=False)
        self.out_proj = nn.Linear(inner_dim, state_dim, bias=False)
        nn.init.zeros_(self.out_proj.weight)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Reshape (B, S, heads·D) to (B, heads, S, D)."""
        batch, seq_len, _ = x.shape
        x = x.view(batch, seq_len, self.num_heads, self.head_dim)
        return x.transpose(1, 2)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = state.shape
        h = rms_norm(state)

        q = self.split_heads(F.linear(h, self.q_proj.weight))
        k = self.split_heads(F.linear(h, self.k_proj.weight))
        v = self.split_heads(F.linear(h, self.v_proj.weight))

        cos, sin = rope_cos_sin(seq_len, self.head_dim, self.rope_base, device=state.device)
        cos = cos.to(q.dtype)
        sin = sin.to(q.dtype)
        q = rotate_half_split(q, cos, sin)
        k = rotate_half_split(k, cos, sin)

        # QK-norm comes after RoPE.
        q = rms_norm(q)
        k = rms_norm(k)

        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        merged = attended.transpose(1, 2).reshape(batch, seq_len, self.num_heads * self.head_dim)
        return state + F.linear(merged, self.out_proj.weight)


class ConnectomeJEPARef(nn.Module):
    """Connectome-JEPA language model: token embedding → 300-neuron hops → tied logits.

    The embedding is projected onto the sensory neurons, propagated for num_hops steps
    through linear layers masked by the connectome (one per hop and channel), with
    sensory re-injection every skip_every hops and causal attention after every
    cross_attn_every-th hop. The motor neurons are read out and projected back to
    embed_dim. Channel c owns state slots [300c, 300c + 300).
    """

    def __init__(
        self,
        vocab_size: int = 1024,
        embed_dim: int = 768,
        num_hops: int = 6,
        cross_attn_every: int = 2,
        head_dim: int = 128,
        num_attn_heads: int = 4,
        logit_softcap: float = 30.0,
        rope_base: float = 10000.0,
        skip_every: int = 2,
        num_channels: int = 1,
        mask: torch.Tensor | None = None,
        sensory_idx: torch.Tensor | None = None,
        motor_idx: torch.Tensor | None = None,
    ):
        super().__init__()
        check_inputs(mask, sensory_idx, motor_idx, num_hops, cross_attn_every, head_dim, skip_every, num_channels)

        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.num_hops = num_hops
        self.cross_attn_every = cross_attn_every
        self.head_dim = head_dim
        self.num_attn_heads = num_attn_heads
        self.logit_softcap = logit_softcap
        self.rope_base = rope_base
        self.skip_every = skip_every
        self.num_channels = num_channels
        state_dim = NUM_NEURONS * num_channels

        # Registration order fixes the state_dict order: this module's own parameters,
        # then its own buffers, then the submodules in the order they are assigned.
        self.mask_emb = nn.Parameter(torch.zeros(embed_dim))
        self.output_residual_scale = nn.Parameter(torch.tensor(0.1))
        if skip_every > 0:
            num_gates = max((num_hops - 1) // skip_every, 1)
            self.skip_gates = nn.Parameter(torch.full((num_gates,), 0.1))
        else:
            self.skip_gates = None
        self.register_buffer("sensory_idx", sensory_idx.detach().clone().to(torch.int64))
        self.register_buffer("motor_idx", motor_idx.detach().clone().to(torch.int64))

        self.tok_emb = nn.Embedding(vocab_size, embed_dim)
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=0.005)
        self.sensory_proj = nn.Linear(embed_dim, NUM_SENSORY * num_channels, bias=False)
        self.motor_proj = nn.Linear(NUM_MOTOR * num_channels, embed_dim, bias=False)

        self.hops = nn.ModuleList(
            nn.ModuleList(MaskedLinear(mask) for _ in range(num_channels)) for _ in range(num_hops)
        )
        self.hop_scales = nn.ParameterList(
            nn.Parameter(torch.full((state_dim,), 1.0 / math.sqrt(num_hops))) for _ in range(num_hops)
        )
        self.cross_attns = nn.ModuleDict()
        for i in range(num_hops):
            if (i + 1) % cross_attn_every == 0:
                self.cross_attns[str(i)] = HopAttention(state_dim, num_attn_heads, head_dim, rope_base)

    def sensory_slots(self) -> torch.Tensor:
        """Return the state indices of the sensory neurons, channel 0 first: (88·C,)."""
        return torch.cat([self.sensory_idx + NUM_NEURONS * c for c in range(self.num_channels)])

    def motor_slots(self) -> torch.Tensor:
        """Return the state indices of the motor neurons, channel 0 first: (123·C,)."""
        return torch.cat([self.motor_idx + NUM_NEURONS * c for c in range(self.num_channels)])

    def apply_hop(self, i: int, state: torch.Tensor) -> torch.Tensor:
        """Add hop_scales[i] · gelu(masked linear of rms_norm(state)) to the state."""
        h = rms_norm(state)
        outputs = []
        for c in range(self.num_channels):
            h_c = h[..., NUM_NEURONS * c : NUM_NEURONS * (c + 1)]
            outputs.append(self.hops[i][c](h_c))
        update = F.gelu(torch.cat(outputs, dim=-1), approximate="none")
        return state + self.hop_scales[i] * update

    def inject_sensory(self, i: int, state: torch.Tensor, sensory: torch.Tensor) -> torch.Tensor:
        """Add skip_gates[k] · sensory to the sensory slots after hop i, where a gate exists.

        Gate k = (i+1)//skip_every − 1 follows every skip_every-th hop, except hop 0. Gates
        past the end of skip_gates are skipped, so with 6 hops and skip_every 2 there is
        no injection after the last hop.
        """
        if self.skip_gates is None:
            return state
        if (i + 1) % self.skip_every != 0 or i == 0:
            return state
        k = (i + 1) // self.skip_every - 1
        if k >= len(self.skip_gates):
            return state
        return state.index_add(state.dim() - 1, self.sensory_slots(), self.skip_gates[k] * sensory)

    def encode(self, ids: torch.Tensor, jepa_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Map token ids (B, S) to representations (B, S, E) after the final rms_norm.

        Where jepa_mask (bool, B×S) is True, the token embedding is replaced by mask_emb.
        """
        x = self.tok_emb(ids)
        if jepa_mask is not None:
            x = torch.where(jepa_mask[..., None], self.mask_emb.to(x.dtype), x)
        x = rms_norm(x)

        sensory = F.linear(x, self.sensory_proj.weight)
        batch, seq_len, _ = x.shape
        state = torch.zeros(batch, seq_len, NUM_NEURONS * self.num_channels, dtype=x.dtype, device=x.device)
        state = state.index_copy(state.dim() - 1, self.sensory_slots(), sensory)

        for i in range(self.num_hops):
            state = self.apply_hop(i, state)
            state = self.inject_sensory(i, state, sensory)
            if (i + 1) % self.cross_attn_every == 0:
                state = self.cross_attns[str(i)](state)

        motor = state[..., self.motor_slots()]
        out = F.linear(motor, self.motor_proj.weight) + x * self.output_residual_scale
        return rms_norm(out)

    def logits(self, rep: torch.Tensor) -> torch.Tensor:
        """Return tied-embedding logits softly capped to (−logit_softcap, logit_softcap)."""
        raw = F.linear(rep, self.tok_emb.weight)
        return self.logit_softcap * torch.tanh(raw / self.logit_softcap)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the mean next-token cross-entropy, computed in float32."""
        logits = self.logits(self.encode(ids))
        return F.cross_entropy(logits.float().reshape(-1, self.vocab_size), targets.reshape(-1))


def check_inputs(mask, sensory_idx, motor_idx, num_hops, cross_attn_every, head_dim, skip_every, num_channels):
    """Raise ValueError when a constructor argument cannot build a model."""
    if mask is None or tuple(mask.shape) != (NUM_NEURONS, NUM_NEURONS):
        shape = None if mask is None else tuple(mask.shape)
        raise ValueError(f"mask must be a ({NUM_NEURONS}, {NUM_NEURONS}) tensor, got shape {shape}")
    if sensory_idx is None or tuple(sensory_idx.shape) != (NUM_SENSORY,):
        shape = None if sensory_idx is None else tuple(sensory_idx.shape)
        raise ValueError(f"sensory_idx must have shape ({NUM_SENSORY},), got {shape}")
    if motor_idx is None or tuple(motor_idx.shape) != (NUM_MOTOR,):
        shape = None if motor_idx is None else tuple(motor_idx.shape)
        raise ValueError(f"motor_idx must have shape ({NUM_MOTOR},), got {shape}")
    for name, idx in (("sensory_idx", sensory_idx), ("motor_idx", motor_idx)):
        if idx.min() < 0 or idx.max() >= NUM_NEURONS:
            raise ValueError(f"{name} must index neurons 0..{NUM_NEURONS - 1}, got range {int(idx.min())}..{int(idx.max())}")
    if num_hops < 1:
        raise ValueError(f"num_hops must be at least 1, got {num_hops}")
    if cross_attn_every < 1:
        raise ValueError(f"cross_attn_every must be at least 1, got {cross_attn_every}")
    if head_dim % 2 != 0:
        raise ValueError(f"head_dim must be even for the half-split RoPE, got {head_dim}")
    if skip_every < 0:
        raise ValueError(f"skip_every must be 0 (no skips) or positive, got {skip_every}")
    if num_channels < 1:
        raise ValueError(f"num_channels must be at least 1, got {num_channels}")


def build_reference_model(
    config: dict,
    mask: torch.Tensor,
    sensory_idx: torch.Tensor,
    motor_idx: torch.Tensor,
    seed: int,
) -> ConnectomeJEPARef:
    """Construct a ConnectomeJEPARef with initial weights drawn from torch.manual_seed(seed).

    config contains constructor arguments by name (embed_dim, num_hops, ...) or by the short
    names of CONFIG_ALIASES (embed, hops, every, heads, skip, channels, vocab). The global
    RNG state is restored afterwards.
    """
    settings = {}
    for key, value in config.items():
        name = CONFIG_ALIASES.get(key, key)
        if name in settings:
            raise ValueError(f"config sets {name!r} twice, through {key!r} and another name")
        settings[name] = value

    allowed = {
        "vocab_size", "embed_dim", "num_hops", "cross_attn_every", "head_dim", "num_attn_heads",
        "logit_softcap", "rope_base", "skip_every", "num_channels",
    }
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; expected some of {sorted(allowed)} or {sorted(CONFIG_ALIASES)}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConnectomeJEPARef(mask=mask, sensory_idx=sensory_idx, motor_idx=motor_idx, **settings)


def jepa_span_mask(
    batch: int,
    seq_len: int,
    mask_ratio: float = 0.3,
    mean_span: float = 4.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw a bool (batch, seq_len) mask of random spans covering at least mask_ratio of each row.

    Per row, spans are added until floor(mask_ratio · seq_len) positions are masked. Each
    span draws its length max(1, floor(Exp(mean mean_span))) first, then a start uniform in
    [0, seq_len − 1]; spans are clipped at the end of the row and may overlap.
    """
    mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    target = int(math.floor(mask_ratio * seq_len))
    for b in range(batch):
        while int(mask[b].sum()) < target:
            draw = torch.empty(1).exponential_(1.0 / mean_span, generator=generator)
            length = max(1, int(math.floor(draw.item())))
            start = int(torch.randint(0, seq_len, (1,), generator=generator).item())
            mask[b, start : min(start + length, seq_len)] = True
    return mask


def jepa_loss(rep_masked: torch.Tensor, rep_target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the MSE over masked positions and all E dims, with the target's gradient stopped."""
    predicted = rep_masked[mask]
    target = rep_target.detach()[mask]
    return F.mse_loss(predicted.float(), target.float())


def sigreg(
    x: torch.Tensor,
    slices: int = 64,
    knots: int = 17,
    generator: torch.Generator | None = None,
    projections: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the Epps–Pulley statistic of x (N, E) against N(0, 1), averaged over random slices.

    The projections are an (E, slices) matrix of N(0, 1) draws with unit-norm columns, drawn
    from generator unless passed in (they are normalised either way). The computation is in
    float32.
    """
    x = x.float()
    if projections is None:
        with torch.no_grad():
            projections = torch.randn(x.shape[-1], slices, generator=generator, dtype=torch.float32)
    projections = projections.detach().to(device=x.device, dtype=torch.float32)
    projections = projections / projections.norm(dim=0, keepdim=True)

    p = x @ projections
    t = torch.linspace(0.0, 3.0, knots, device=x.device)
    target_cf = torch.exp(-t**2 / 2)

    angles = p[..., None] * t
    cos_mean = torch.cos(angles).mean(dim=0)
    sin_mean = torch.sin(angles).mean(dim=0)
    err = (cos_mean - target_cf) ** 2 + sin_mean**2

    # NOTE: this is the original's weighting, twice the usual trapezoid rule: 2·dt for the
    # inner knots and dt at the two ends, times the Gaussian window exp(−t²/2).
    dt = 3.0 / (knots - 1)
    weights = torch.full((knots,), 2.0 * dt, device=x.device)
    weights[0] = dt
    weights[-1] = dt
    weights = weights * target_cf

    per_slice = err @ weights
    return per_slice.mean()


def total_loss(
    model: ConnectomeJEPARef,
    ids: torch.Tensor,
    targets: torch.Tensor,
    jepa_weight: float = 0.5,
    sigreg_weight: float = 1e-4,
    mask_ratio: float = 0.3,
    mean_span: float = 4.0,
    sigreg_slices: int = 64,
    sigreg_knots: int = 17,
    generator: torch.Generator | None = None,
    jepa_mask: torch.Tensor | None = None,
    projections: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Compute CE + jepa_weight · JEPA + sigreg_weight · SigREG on one batch.

    All three losses use the same unmasked encoding `rep`. JEPA compares it with the
    encoding of the span-masked input, and SigREG is computed on rep flattened to (B·S, E). Pass
    jepa_mask and projections to fix the random draws, otherwise they come from generator.
    Returns a dict with keys "total", "ce", "jepa" and "sigreg".
    """
    rep = model.encode(ids)
    logits = model.logits(rep)
    ce = F.cross_entropy(logits.float().reshape(-1, model.vocab_size), targets.reshape(-1))

    if jepa_mask is None:
        jepa_mask = jepa_span_mask(ids.shape[0], ids.shape[1], mask_ratio, mean_span, generator)
    jepa_mask = jepa_mask.to(ids.device)
    rep_masked = model.encode(ids, jepa_mask)
    jepa = jepa_loss(rep_masked, rep, jepa_mask)

    flat = rep.reshape(-1, rep.shape[-1])
    sig = sigreg(flat, sigreg_slices, sigreg_knots, generator=generator, projections=projections)

    total = ce + jepa_weight * jepa + sigreg_weight * sig
    return {"total": total, "ce": ce, "jepa": jepa, "sigreg": sig}
