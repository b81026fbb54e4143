"""ResNet-BK: a causal language model whose token mixer is the resolvent of a tridiagonal Hamiltonian.

Each block is pre-norm and residual: a Green's-function mixer (section 2 of docs/resnet_bk.md), then a
mixture-of-experts feed-forward layer.  The mixer's state after a token is O(1) per layer (g, y per channel, plus
the running sums of the optional terms), which is what `ResNetBKCache` carries during generation.

This file imports only torch, transformers and its siblings (configuration, scan): `save_pretrained` copies all
three next to the weights, so `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` works in a
Python without hubtrain.
"""
from __future__ import annotations

import cmath
import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_resnet_bk import ResNetBKConfig
from .green_scan import GreenState, green_scan, green_scan_step

# ----------------------------------------------------------------------------------------------------------------
# positional potential and semiseparable term

_PRIME_BUMP_TABLES: dict[tuple[int, int], Tensor] = {}
_BUMP_RADIUS = 12  # exp(-12^2 / 2) ~ 5e-32: beyond this the Gaussians are zero even in float64


def _prime_bump_table(n: int, k_max: int) -> Tensor:
    """f[i] = sum_{p prime, k <= k_max} log(p) / p^(k/2) * exp(-(i - p^k)^2 / 2) for i = 0..n, in float64."""
    key = (n, k_max)
    if key not in _PRIME_BUMP_TABLES:
        limit = n + _BUMP_RADIUS + 1
        sieve = torch.ones(limit + 1, dtype=torch.bool)
        sieve[:2] = False
        for p in range(2, int(limit**0.5) + 1):
            if sieve[p]:
                sieve[p * p :: p] = False
        weights = torch.zeros(limit + 1, dtype=torch.float64)
        for p in torch.nonzero(sieve).flatten().tolist():
            q, k = p, 1
            while q <= limit and k <= k_max:
                weights[q] += math.log(p) / p ** (k / 2)
                q, k = q * p, k + 1
        d = torch.arange(-_BUMP_RADIUS, _BUMP_RADIUS + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * d * d)
        padded = F.pad(weights, (_BUMP_RADIUS, _BUMP_RADIUS))
        table = F.conv1d(padded.view(1, 1, -1), kernel.view(1, 1, -1)).flatten()  # symmetric kernel
        _PRIME_BUMP_TABLES[key] = table[: n + 1]
    return _PRIME_BUMP_TABLES[key]


def prime_bump_potential(positions: Tensor, k_max: int) -> Tensor:
    """The prime-bump potential at integer positions (1-based), float64, same shape as ``positions``.

    Computed for any length: the table grows to the largest position asked for (rounded up to a power of two).
    """
    n = max(int(positions.max().item()) if positions.numel() else 1, 1)
    n = 1 << (n - 1).bit_length()
    return _prime_bump_table(n, k_max).to(positions.device)[positions.long()]


def semiseparable_scan(q: Tensor, k: Tensor, v: Tensor, state: Optional[Tensor] = None, chunk_size: int = 64,
                       log_decay: Optional[Tensor] = None):
    """out_i = sum_{j <= i} (q_i . k_j) w_ij v_j: the causal semiseparable term, O(N) with running sums of k_j v_j^T.

    Undecayed (log_decay None), w_ij = 1 and out = tril(Q K^T) V.  With log_decay (B, N, h) <= 0 the value dims
    split into h heads, and head h forgets its sum by gamma_l = exp(log_decay[:, l, h]) at every token:
    w_ij = prod_{j < l <= i} gamma_l, S_i = gamma_i S_{i-1} + k_i v_i^T (Mamba-2's scalar-decay form).
    q, k: (B, N, r), v: (B, N, s), state: (B, r, s) the sum S before the first token (or None).
    Returns (out (B, N, s), new state (B, r, s)).
    """
    exporting = torch.compiler.is_exporting() or torch.jit.is_tracing()
    if log_decay is not None:
        return _decayed_semiseparable_scan(q, k, v, log_decay, state, chunk_size, exporting)
    if exporting:  # chunks would fix the traced length: running sums
        states = torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=1)  # (B, N, r, s), still O(N r s)
        if state is not None:
            states = states + state.unsqueeze(1)
        return (q.unsqueeze(-2) @ states).squeeze(-2), states[:, -1]
    B, N, r = q.shape
    s = v.shape[-1]
    L = min(chunk_size, N)
    C = -(-N // L)
    pad = C * L - N
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    qc, kc, vc = q.view(B, C, L, r), k.view(B, C, L, r), v.view(B, C, L, s)
    scores = torch.tril(qc @ kc.transpose(-1, -2))
    intra = scores @ vc
    chunk_states = kc.transpose(-1, -2) @ vc  # (B, C, r, s)
    totals = torch.cumsum(chunk_states, dim=1)
    before = F.pad(totals, (0, 0, 0, 0, 1, -1))  # exclusive: state entering each chunk
    if state is not None:
        before = before + state.unsqueeze(1)
    out = (intra + qc @ before).reshape(B, C * L, s)[:, :N]
    new_state = totals[:, -1] if state is None else state + totals[:, -1]
    return out, new_state


def semiseparable_step(q: Tensor, k: Tensor, v: Tensor, state: Tensor, log_decay: Optional[Tensor] = None):
    """One token of the semiseparable term: S <- gamma S + k v^T, out = q S.  q, k: (B, r), v: (B, s),
    state: (B, r, s), log_decay: (B, h) or None (undecayed).  Returns (out (B, s), new state (B, r, s))."""
    if log_decay is not None:
        B, r, s = state.shape
        h = log_decay.shape[-1]
        state = (state.view(B, r, h, s // h) * torch.exp(log_decay).view(B, 1, h, 1)).view(B, r, s)
    state = state + k.unsqueeze(-1) * v.unsqueeze(-2)
    return (q.unsqueeze(-2) @ state).squeeze(-2), state


def _decayed_semiseparable_sequential(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor):
    """The TorchScript form of the decayed term: ``semiseparable_step`` token after token, a loop over any length."""
    outs: List[Tensor] = []
    for i in range(q.shape[1]):
        out, state = semiseparable_step(q[:, i], k[:, i], v[:, i], state, log_decay[:, i])
        outs.append(out)
    return torch.stack(outs, 1), state


@functools.cache
def _scripted_decayed_semiseparable():
    return torch.jit.script(_decayed_semiseparable_sequential)  # compiled on first trace, not at import


def _decayed_semiseparable_scan(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Optional[Tensor],
                                chunk_size: int, exporting: bool):
    """Chunks of L tokens: inside a chunk the (L, L) decay mask exp(Lambda_i - Lambda_j) (Lambda the running sum
    of log_decay, masked before the exponential so nothing overflows), across chunk ends the state one chunk at a
    time.  Exports run ``semiseparable_step`` under torch's ``scan`` operator, traces a scripted loop."""
    B, N, r = q.shape
    s, h = v.shape[-1], log_decay.shape[-1]
    p = s // h
    S0 = q.new_zeros(B, r, s) if state is None else state
    if torch.jit.is_tracing():
        return _scripted_decayed_semiseparable()(q, k, v, log_decay, S0)
    if exporting:
        from torch._higher_order_ops.scan import scan

        def body(carry: Tensor, xs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
            out, new = semiseparable_step(xs[0], xs[1], xs[2], carry, xs[3])
            return new.clone(), out.clone()  # scan requires carries and outputs that do not alias each other

        final, outs = scan(body, S0, tuple(x.transpose(0, 1) for x in (q, k, v, log_decay)), dim=0)
        return outs.transpose(0, 1), final
    L = min(chunk_size, N)
    C = -(-N // L)
    pad = C * L - N
    if pad:  # padded tokens write nothing and forget nothing (gamma = 1)
        q, k, v, log_decay = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, log_decay))
    qc, kc, vc = q.view(B, C, L, r), k.view(B, C, L, r), v.view(B, C, L, h, p)
    lam = torch.cumsum(log_decay.view(B, C, L, h), dim=2)  # (B, C, L, h)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril().unsqueeze(-1)
    w = torch.exp((lam.unsqueeze(3) - lam.unsqueeze(2)).masked_fill(~causal, -math.inf))  # (B, C, L_i, L_j, h)
    intra = torch.einsum("bcij,bcijh,bcjhp->bcihp", qc @ kc.transpose(-1, -2), w, vc)
    to_end = torch.exp(lam[:, :, -1:] - lam)  # decay from each token to its chunk's end
    chunk_states = torch.einsum("bcjr,bcjh,bcjhp->bchrp", kc, to_end, vc)
    chunk_decay = torch.exp(lam[:, :, -1])[..., None, None]  # (B, C, h, 1, 1)
    S = S0.view(B, r, h, p).transpose(1, 2)  # (B, h, r, p)
    before = []
    for c in range(C):
        before.append(S)
        S = chunk_decay[:, c] * S + chunk_states[:, c]
    inter = torch.einsum("bcir,bchrp->bcihp", qc, torch.stack(before, 1)) * torch.exp(lam).unsqueeze(-1)
    out = (intra + inter).reshape(B, C * L, s)[:, :N]
    return out, S.transpose(1, 2).reshape(B, r, s)


# ----------------------------------------------------------------------------------------------------------------
# cache


class ResNetBKCache:
    """Recurrent state for generation: O(1) per layer, whatever the context length.

    Per layer: g and y of every channel (real and imaginary parts), and when enabled the semiseparable running
    sum, the running max / sum of the Schatten bound and the causal convolutions' windows of conv_width - 1
    and semiseparable_conv_width - 1 inputs.  Per row: the number of real tokens seen (positions of the
    prime-bump potential) and whether the last position was a real token (padding cuts the coupling).
    """

    is_compileable = False

    def __init__(self, num_layers: int):
        self.layers: list[Optional[dict[str, Tensor]]] = [None] * num_layers
        self.positions: Optional[Tensor] = None  # (B,) long
        self.last_mask: Optional[Tensor] = None  # (B,) float
        self.seen_tokens = 0
        # per-layer constants of the one-token step (E, eta, eta-scaled output weights), computed once per cache:
        # a cache lives for one generation, during which the weights do not change
        self.step_constants: list[Optional[dict[str, Tensor]]] = [None] * num_layers

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def __len__(self) -> int:
        return len(self.layers)

    def _apply(self, fn) -> None:
        self.layers = [None if st is None else {k: fn(v) for k, v in st.items()} for st in self.layers]
        if self.positions is not None:
            self.positions = fn(self.positions)
            self.last_mask = fn(self.last_mask)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep the states of the selected beams."""
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._apply(lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, max_length: int) -> None:
        raise ValueError("ResNetBKCache holds a recurrent state and cannot be cropped; regenerate from the prefix")

    # flat form, for graphs that carry the state as plain tensors (the ONNX decode step): a zero tensor of each
    # name is exactly the state before the first token (position 0 couples to nothing)
    def to_tensors(self) -> dict[str, Tensor]:
        """Every state tensor by name: positions, last_mask, then layer.<i>.<key>, each with the batch first."""
        if self.positions is None or any(st is None for st in self.layers):
            raise ValueError("ResNetBKCache.to_tensors: the cache is empty; run the model on at least one token first")
        flat = {"positions": self.positions, "last_mask": self.last_mask}
        for i, st in enumerate(self.layers):
            flat.update({f"layer.{i}.{key}": st[key] for key in sorted(st)})
        return flat

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> "ResNetBKCache":
        """The cache `to_tensors` flattened (or the zero state of the same names and shapes)."""
        layers: dict[int, dict[str, Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("layer."):
                _, i, key = name.split(".", 2)
                layers.setdefault(int(i), {})[key] = value
        cache = cls(len(layers))
        cache.layers = [layers[i] for i in range(len(layers))]
        cache.positions, cache.last_mask = tensors["positions"], tensors["last_mask"]
        return cache


# transformers 5.24 renamed the cache argument of every model's forward and the cache field of every output from
# `past_key_values` to `cache` (`generate` passes and reads back `cache`); earlier 5.x releases use
# `past_key_values`.  The model accepts both names and returns its state under the field the installed
# transformers declares, so `generate` finds it on either side of the rename.
CACHE_OUTPUT_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"
# names other models use for their state: a ResNet-BK state passed under one of them would otherwise be ignored
_FOREIGN_CACHE_NAMES = ("cache_params", "past_key_value", "layer_past", "state", "mems", "past_buckets_states")


def take_cache(cache: Any, past_key_values: Any, kwargs: dict[str, Any]) -> Optional[ResNetBKCache]:
    """The recurrent state passed to a forward, under either name; anything it cannot use is an error."""
    foreign = [name for name in _FOREIGN_CACHE_NAMES if kwargs.get(name) is not None]
    if foreign:
        raise ValueError(
            f"ResNet-BK got its state as `{foreign[0]}`, which it does not read; pass the ResNetBKCache as `cache` "
            "(or `past_key_values` on transformers < 5.24)"
        )
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("ResNet-BK got both `cache` and `past_key_values`; pass the ResNetBKCache once, as `cache`")
    cache = cache if cache is not None else past_key_values
    if cache is not None and not isinstance(cache, ResNetBKCache):
        raise ValueError(
            f"ResNet-BK's cache must be a ResNetBKCache (the recurrent state it returned), got {type(cache).__name__}"
        )
    return cache


# ----------------------------------------------------------------------------------------------------------------
# modules


class ResNetBKCausalConv(nn.Conv1d):
    """Depthwise causal convolution over the last `width` positions, (B, N, C) -> (B, N, C), continuing from a
    window of the `width - 1` inputs before (None: zeros, nothing before). Returns (outputs, window after)."""

    def __init__(self, channels: int, width: int):
        super().__init__(channels, channels, width, groups=channels)

    def forward(self, z: Tensor, window: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        k = self.kernel_size[0]
        window = z.new_zeros(z.shape[0], k - 1, z.shape[-1]) if window is None else window
        z = torch.cat([window, z], 1)
        return super().forward(z.transpose(1, 2)).transpose(1, 2), z[:, -(k - 1) :]


class ResNetBKGreenMixer(nn.Module):
    """Green's-function token mixer: potential, hopping and values from the tokens, resolvent per channel."""

    def __init__(self, config: ResNetBKConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        d, H, P, K = config.d_model, config.num_channels, config.channel_dim, config.key_dim
        self.num_channels, self.channel_dim, self.key_dim = H, P, K
        # (potential, hopping,) values, (keys and queries,) output gate; the lead chain takes a and t off the tokens
        self.from_tokens = config.chain == "token"
        self.in_proj = nn.Linear(d, (2 * H if self.from_tokens else 0) + H * P + 2 * H * K + d)
        if config.conv_width > 1:  # depthwise causal convolution over the chain's inputs (all but the gate)
            width = self.in_proj.out_features - d
            self.conv = ResNetBKCausalConv(width, config.conv_width)
        if self.from_tokens:  # the lead chain's channels are fixed by the config (lead_channels)
            self.energy = nn.Parameter(torch.empty(H))
            self.rho = nn.Parameter(torch.empty(H))
        if config.absorption == "token":  # each token adds to rho: its own absorption per channel
            self.absorb_proj = nn.Linear(d, H)
        self.out_proj = nn.Linear(H * (2 * P + 2), d)
        if config.use_semiseparable:
            r, s = config.low_rank, config.semiseparable_value_dim or config.low_rank
            self.ss_proj = nn.Linear(d, 2 * r + s, bias=False)  # queries, keys (r each) and values (s)
            self.ss_out = nn.Linear(s, d, bias=False)
            if config.semiseparable_conv_width > 1:  # a key and the value next to it meet before the term writes
                h = config.semiseparable_decay_heads if config.semiseparable_decay_conv else 0  # and the decays
                self.ss_conv = ResNetBKCausalConv(2 * r + s + h, config.semiseparable_conv_width)
            if config.semiseparable_decay_heads:  # each token sets how much of every head's sum to keep
                self.ss_decay = nn.Linear(d, config.semiseparable_decay_heads)

    # E spread over [-1, 1] and eta log-spaced from ~0.06 to ~1: several memory lengths from the start
    def initial_channel_parameters(self) -> tuple[Tensor, Tensor]:
        c, H = self.config, self.num_channels
        e0 = torch.linspace(-1.0, 1.0, H) if H > 1 else torch.zeros(1)
        lo, hi = max(0.06, 1.2 * c.epsilon), max(1.0, 2.0 * c.epsilon)
        eta0 = torch.logspace(math.log10(lo), math.log10(hi), H) if H > 1 else torch.tensor([lo])
        energy = torch.atanh(e0 / self.band_edge()) if c.use_mourre else e0
        rho = torch.log(torch.expm1(eta0 - c.epsilon)) if c.use_lap else torch.log(eta0)
        return energy, rho

    def band_edge(self) -> float:
        return 2.0 * (1.0 - self.config.mourre_margin)

    def energy_eta(self, x: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """E and eta > 0 of every channel, as section 3 of the design note defines them, (H,) each; under
        absorption="token" and given the tokens x (..., d), eta of every token and channel (..., H)."""
        c = self.config
        if not self.from_tokens:
            energy, eta, _ = self.lead_channels()
            like = self.out_proj.weight
            return like.new_tensor(energy), like.new_tensor(eta)
        energy = self.band_edge() * torch.tanh(self.energy) if c.use_mourre else self.energy
        rho = self.rho if x is None or c.absorption == "channel" else self.rho + self.absorb_proj(x)
        eta = c.epsilon + F.softplus(rho) if c.use_lap else torch.exp(rho)
        return energy, eta

    def lead_channels(self) -> tuple[list[float], list[float], list[complex]]:
        """E = 2t, eta log-spaced from lead_eta_min to 1, and the lead's surface Green's function of every channel.

        g* is the fixed point of g -> 1 / (-z - t^2 g) (a clean semi-infinite chain seen from its end), the root
        of t^2 g^2 + z g + 1 = 0 with Im g* > 0, |t g*| < 1. Plain Python in double precision, from the config
        alone: at the band edge z^2 - 4t^2 = -eta^2 + 4 i t eta would cancel catastrophically in float32, and
        constants need no graph when the model is exported.
        """
        c, H = self.config, self.num_channels
        t = c.lead_hopping
        etas = [c.lead_eta_min ** (1.0 - h / (H - 1)) if H > 1 else c.lead_eta_min for h in range(H)]
        roots = []
        for eta in etas:
            z = complex(2.0 * t, eta)
            r = cmath.sqrt(z * z - 4.0 * t * t)
            g = (-z + r) / (2.0 * t * t)
            roots.append(g if g.imag > 0 else (-z - r) / (2.0 * t * t))
        return [2.0 * t] * H, etas, roots

    def lead_state(self, state: Optional[GreenState], keep: Tensor, batch: int, width: int) -> GreenState:
        """The state the first position here couples to, under chain="lead": the lead's (g*, 0) before a sequence
        or where `keep` (B, 1) is 0 (nothing real before: the zero state of a flat cache), else `state`."""
        like = self.out_proj.weight
        g = self.lead_channels()[2]
        g_re = like.new_tensor([x.real for x in g]).repeat(batch, 1)  # own memory: torch's scan wants no strides 0
        g_im = like.new_tensor([x.imag for x in g]).repeat(batch, 1)
        if state is None:
            return g_re, g_im, like.new_zeros(batch, self.num_channels, width), like.new_zeros(batch, self.num_channels, width)
        prev_re, prev_im, y_re, y_im = state
        return (torch.where(keep > 0, prev_re, g_re), torch.where(keep > 0, prev_im, g_im), y_re, y_im)

    def lead_scan(self, u: Tensor, y0: tuple[Tensor, Tensor], chunk_size: int = 64) -> GreenState:
        """The scan of the lead chain, where g_i = g* at every position: y_i = lam y_{i-1} + g* u_i, lam = -t g*.

        A linear recurrence with one constant complex factor per channel, run in chunks of L positions: inside a
        chunk one product with the Toeplitz matrix of powers lam^(i-j), across chunks C = N / L steps; O(N L) time
        and O(N) memory, autograd for the backward. The general chunked scan computes the same numbers but
        recomputes g* through products of transfer matrices that are nearly defective at the band edge, which
        loses about five digits of g in float32 (measured: 5e-6 against 2e-7 sequentially); this path keeps the
        sequential recurrence's accuracy. Exports take green_scan's sequential forms, which are exact here too.
        """
        B, N, H, W = u.shape
        L = max(1, min(chunk_size, N))
        C = -(-N // L)
        cdtype = torch.complex128 if u.dtype == torch.float64 else torch.complex64
        g = torch.tensor(self.lead_channels()[2], dtype=cdtype, device=u.device)  # (H,)
        log_lam = torch.log(-self.config.lead_hopping * g)
        x = u.to(cdtype) * g[:, None]
        x = torch.cat([x, x.new_zeros(B, C * L - N, H, W)], 1).view(B, C, L, H, W)
        steps = torch.arange(L, device=u.device)
        lags = (steps[:, None] - steps[None, :]).to(u.dtype)  # i - j
        toeplitz = torch.exp(lags.clamp(min=0) * log_lam[:, None, None]) * (lags >= 0)  # (H, L, L)
        local = torch.einsum("hij,bcjhw->bcihw", toeplitz, x)  # each chunk from a zero state
        lam_l = torch.exp(L * log_lam)[:, None]
        carry, carries = torch.complex(*y0).to(cdtype), []
        # one select, then unbind: indexing local[:, c, -1] per chunk would give local a full-size gradient per
        # chunk, O(N^2 / L) in the backward (measured: 14 s against 0.9 s at N = 4096, L = 16)
        for last in local[:, :, -1].unbind(1):
            carries.append(carry)  # y before this chunk
            carry = lam_l * carry + last
        decay = torch.exp((steps + 1).to(u.dtype)[:, None] * log_lam)  # (L, H): lam^(i + 1)
        y = (local + decay[:, :, None] * torch.stack(carries, 1)[:, :, None]).reshape(B, C * L, H, W)[:, :N]
        g_re = g.real.to(u.dtype).repeat(B, N, 1)
        return g_re, g.imag.to(u.dtype).repeat(B, N, 1), y.real.contiguous(), y.imag.contiguous()

    def chain_inputs(
        self, x: Tensor, positions: Tensor, couple: Tensor, mask: Optional[Tensor] = None, window: Optional[Tensor] = None
    ) -> tuple[tuple[Tensor, ...], Optional[Tensor]]:
        """(a, t, v, kq, gate) from the tokens x (B, N, d): the potential, the coupling into each position (cut
        where `couple` is 0: padding before it), values, keys and queries, output gate. Under chain="lead" the
        chain is clean: a = 0 and t = lead_hopping everywhere, padding included (it carries no values).

        With conv_width > 1 the projections other than the gate are first mixed by a depthwise causal convolution
        over the last conv_width positions, whose earlier inputs come from `window` (B, conv_width - 1, width;
        None or zeros: nothing before); padding (`mask` (B, N) 0) enters it as zeros, as nothing would.
        Returns the inputs and the window after the last position (or None).
        """
        H, P, K = self.num_channels, self.channel_dim, self.key_dim
        z, gate = self.in_proj(x).split([self.in_proj.out_features - x.shape[-1], x.shape[-1]], dim=-1)
        if hasattr(self, "conv"):
            z, window = self.conv(z if mask is None else z * mask.unsqueeze(-1), window)
        if not self.from_tokens:
            v, kq = z.split([H * P, 2 * H * K], dim=-1)
            a = v.new_zeros(*v.shape[:-1], H)
            return (a, a + self.config.lead_hopping, v, kq, gate), window
        a_raw, t_raw, v, kq = z.split([H, H, H * P, 2 * H * K], dim=-1)
        return (self.potential(a_raw, positions), torch.sigmoid(t_raw) * couple, v, kq, gate), window

    def potential(self, a_raw: Tensor, positions: Tensor) -> Tensor:
        """a = 3 tanh(W_a x / 3), plus the prime-bump potential at the tokens' positions when enabled."""
        a = 3.0 * torch.tanh(a_raw / 3.0)
        if self.config.use_prime_bump:
            bump = prime_bump_potential(positions, self.config.k_max).to(a.dtype)
            a = a + self.config.prime_bump_scale * bump.unsqueeze(-1)
        return a

    def scanned_values(self, v: Tensor, kq: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """What the resolvent is applied to, (..., H, scan width), and the queries that read it out (or None).

        Plain values v_j (P per channel); with keys, the outer products k_j v_j^T (K x P per channel), of unit
        keys and queries (key_norm="unit") or of keys divided by sqrt(K) and queries as projected ("scaled").
        """
        H, P, K = self.num_channels, self.channel_dim, self.key_dim
        v = v.unflatten(-1, (H, P))
        if not K:
            return v, None
        k, q = kq.unflatten(-1, (2, H, K)).unbind(-3)
        if self.config.key_norm == "unit":
            k, q = F.normalize(k, dim=-1), F.normalize(q, dim=-1)
        else:
            k = k * K**-0.5
        return (k.unsqueeze(-1) * v.unsqueeze(-2)).flatten(-2), q

    def read_out(self, y: Tensor, q: Optional[Tensor]) -> Tensor:
        """y (..., H, scan width) -> (..., H, P): the values themselves, or q^T Y of the key-value state Y."""
        if q is None:
            return y
        return (q.unsqueeze(-1) * y.unflatten(-1, (self.key_dim, self.channel_dim))).sum(-2)

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        mask_prev: Tensor,
        positions: Tensor,
        state: Optional[dict[str, Tensor]] = None,
        return_state: bool = False,
    ) -> tuple[Tensor, Tensor, Optional[dict[str, Tensor]]]:
        c = self.config
        B, N, d = x.shape
        H, P, K = self.num_channels, self.channel_dim, self.key_dim
        # coupling between i-1 and i, decided by token i; padding contributes no values and cuts the coupling
        window = None if state is None else state.get("conv")
        (a, t, v, kq, gate), window = self.chain_inputs(x, positions, mask_prev.unsqueeze(-1), mask, window)
        u, q = self.scanned_values(v, kq)
        u = u * mask[..., None, None]
        energy, eta = self.energy_eta(x)
        if c.absorption == "token":  # written with sqrt(eta_j), so that sqrt(eta_i) y_i is bounded (value_scale)
            u = u * eta.sqrt().unsqueeze(-1)
        if c.use_birman_schwinger:
            sqrt_v = a.abs().sqrt()
            u = u * (torch.sign(a) * sqrt_v).unsqueeze(-1)

        st = None if state is None else (state["g_re"], state["g_im"], state["y_re"], state["y_im"])
        if not self.from_tokens:  # the lead is to the left of the first position: start from its g*
            st = self.lead_state(st, mask_prev[:, :1], B, u.shape[-1])
        exporting = torch.compiler.is_exporting() or torch.jit.is_tracing()
        if not self.from_tokens and N > 1 and not exporting:
            g_re, g_im, y_re, y_im = self.lead_scan(u, st[2:], c.scan_chunk_size or 64)
        elif st is None:
            hop = F.pad(t[:, 1:], (0, 0, 0, 1))  # hop[:, i] couples i and i+1
            g_re, g_im, y_re, y_im = green_scan(a, hop, energy, eta, u, None, chunk_size=c.scan_chunk_size)
        else:  # continue from the cached (or the lead's) state: one step when decoding, the scan for longer inputs
            if N == 1:
                eta_1 = eta if eta.dim() == 1 else eta[:, 0]
                g_re, g_im, y_re, y_im = (o.unsqueeze(1) for o in green_scan_step(a[:, 0], t[:, 0], energy, eta_1, u[:, 0], None, st))
            else:
                hop = F.pad(t[:, 1:], (0, 0, 0, 1))
                g_re, g_im, y_re, y_im = green_scan(
                    a, hop, energy, eta, u, None, chunk_size=c.scan_chunk_size, initial=st, hop_in=t[:, 0]
                )
        new_state: Optional[dict[str, Tensor]] = None
        if return_state:
            new_state = {"g_re": g_re[:, -1], "g_im": g_im[:, -1], "y_re": y_re[:, -1], "y_im": y_im[:, -1]}
            if window is not None:
                new_state["conv"] = window

        if c.use_birman_schwinger:
            y_re, y_im = y_re * sqrt_v.unsqueeze(-1), y_im * sqrt_v.unsqueeze(-1)
            if c.schatten_threshold is not None:
                scale, run_max, run_sum = self.schatten_scale(a, g_im, eta, mask, state)
                y_re, y_im = y_re * scale.unsqueeze(-1), y_im * scale.unsqueeze(-1)
                if new_state is not None:
                    new_state["bs_max"], new_state["bs_sum"] = run_max[:, -1], run_sum[:, -1]

        y_re, y_im = self.read_out(y_re, q), self.read_out(y_im, q)
        e = self.value_scale(eta, g_im).unsqueeze(-1)
        feats = torch.cat([y_re * e, y_im * e, (g_re * eta).unsqueeze(-1), (g_im * eta).unsqueeze(-1)], dim=-1)
        out = self.out_proj(feats.reshape(B, N, H * (2 * P + 2)))
        if c.use_semiseparable:
            r = c.low_rank
            q, k, vv, logits, ss_window = self.semiseparable_inputs(
                x, mask.unsqueeze(-1), None if state is None else state.get("ss_conv")
            )
            if new_state is not None and ss_window is not None:
                new_state["ss_conv"] = ss_window
            k = k * mask.unsqueeze(-1)
            vv, log_decay = self.semiseparable_decay(logits, vv, mask.unsqueeze(-1))
            # the chunk's (L, L, heads) decay mask costs L^2 per head: shorter chunks for many heads (same sums)
            chunk = min(64, max(8, 1024 // c.semiseparable_decay_heads)) if c.semiseparable_decay_heads else 64
            ss, ss_state = semiseparable_scan(
                q * r**-0.5, k, vv, None if state is None else state["ss"], chunk, log_decay=log_decay
            )
            out = out + self.ss_out(ss)
            if new_state is not None:
                new_state["ss"] = ss_state
        out = out * F.silu(gate)
        phase = torch.atan2(g_im, g_re).mean(-1)  # mean scattering phase over channels, in (0, pi)
        return out, phase, new_state

    def semiseparable_inputs(
        self, x: Tensor, mask: Optional[Tensor], window: Optional[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        """The term's q, k, v and decay projections W x + b (None without decay heads), through its causal
        convolution when it has one (the decays too under semiseparable_decay_conv), and the window after it.
        Padding (mask 0) enters the convolution as zeros, as nothing would."""
        c = self.config
        r, s = c.low_rank, self.ss_out.in_features
        z = self.ss_proj(x)
        logits = self.ss_decay(x) if c.semiseparable_decay_heads else None
        if c.semiseparable_decay_conv:
            z = torch.cat([z, logits], dim=-1)
        if hasattr(self, "ss_conv"):
            z, window = self.ss_conv(z if mask is None else z * mask, window)
        if c.semiseparable_decay_conv:
            z, logits = z.split([2 * r + s, c.semiseparable_decay_heads], dim=-1)
        q, k, v = z.split([r, r, s], dim=-1)
        return q, k, v, logits, window

    def semiseparable_decay(self, logits: Optional[Tensor], v: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """With decay heads: the values written with 1 - gamma and log gamma = -delta (..., h), delta = softplus or
        relu of the heads' projections W x + b; padded tokens (mask 0) keep the state.  Without (logits None): v and
        None (the undecayed running sum)."""
        if logits is None:
            return v, None
        delta = F.relu(logits) if self.config.semiseparable_decay_activation == "relu" else F.softplus(logits)
        if mask is not None:
            delta = delta * mask
        write = -torch.expm1(-delta)  # 1 - gamma: every head's sum is a convex combination of k v^T
        return v * write.repeat_interleave(v.shape[-1] // delta.shape[-1], dim=-1), -delta

    def value_scale(self, eta: Tensor, g_im: Tensor) -> Tensor:
        """The factor on y before the output projection, (..., H); both bound the feature by the value norm.

        "eta": eta * |y_i| <= ||u_{1..i}|| (Ward identity with Im g <= 1/eta); under absorption="token", where the
        values were written with sqrt(eta_j), sqrt(eta_i) |y_i| <= ||u_{1..i}|| (sum_j eta_j |G[i, j]|^2 = Im g_i
        <= 1 / eta_i), which is the same factor eta when eta is constant.  "ward": sqrt(eta / Im g_i) * |y_i|
        <= ||u_{1..i}||, since sum_j |G[i, j]|^2 = Im g_i / eta (Ward identity and Cauchy-Schwarz): the weights
        of the past are normalised to unit energy, so a channel with a long memory (small eta) is not scaled
        down by its own eta.  Im g_i >= eta |g_i|^2 > 0, so the factor is finite.
        """
        if self.config.feature_norm == "ward":
            return torch.sqrt(eta / g_im)
        if self.config.feature_norm == "none":
            return torch.ones_like(g_im)
        if self.config.absorption == "token":
            return eta.sqrt()
        return eta.expand_as(g_im)

    def step_constants(self) -> dict[str, Tensor]:
        """What a decoding step needs that does not depend on the token: E, eta, and the output projection with
        the features' eta scaling folded into its columns (out_proj(eta * f) = (W diag(eta)) f; under
        feature_norm="ward" the value columns are left unscaled and the step scales y itself, and under
        absorption="token", where eta is the token's, the step scales every feature itself)."""
        energy, eta = self.energy_eta()
        P = self.channel_dim
        g_scale = eta if self.config.absorption == "channel" else torch.ones_like(eta)
        y_scale = g_scale if self.config.feature_norm == "eta" else torch.ones_like(eta)
        scale = torch.cat([y_scale.unsqueeze(-1).expand(-1, 2 * P), g_scale.unsqueeze(-1), g_scale.unsqueeze(-1)], dim=-1)
        return {"energy": energy, "eta": eta, "out_w": self.out_proj.weight * scale.reshape(1, -1)}

    def step(
        self, x: Tensor, state: dict[str, Tensor], consts: dict[str, Tensor], keep: Tensor, positions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One token of every row (x: (B, d)) from the cached state, which is updated in place: the recurrences'
        single step (green_scan_step), with nothing recomputed that does not depend on the token.

        keep (B, 1): whether the previous position was a real token (padding cuts the coupling); positions (B,).
        Returns (output (B, d), mean scattering phase (B,)).
        """
        c = self.config
        B, d = x.shape
        H, P, K = self.num_channels, self.channel_dim, self.key_dim
        inputs, window = self.chain_inputs(x.unsqueeze(1), positions.unsqueeze(1), keep.unsqueeze(1), None, state.get("conv"))
        a, t, v, kq, gate = (z.squeeze(1) for z in inputs)
        if window is not None:
            state["conv"] = window
        u, q = self.scanned_values(v, kq)
        eta = consts["eta"]
        if c.absorption == "token":
            eta = self.energy_eta(x)[1]
            u = u * eta.sqrt().unsqueeze(-1)
        if c.use_birman_schwinger:
            sqrt_v = a.abs().sqrt()
            u = u * (torch.sign(a) * sqrt_v).unsqueeze(-1)
        prev = (state["g_re"], state["g_im"], state["y_re"], state["y_im"])
        if not self.from_tokens:
            prev = self.lead_state(prev, keep, B, u.shape[-1])
        g_re, g_im, y_re, y_im = green_scan_step(a, t, consts["energy"], eta, u, None, prev)
        state.update(g_re=g_re, g_im=g_im, y_re=y_re, y_im=y_im)
        if c.use_birman_schwinger:
            y_re, y_im = y_re * sqrt_v.unsqueeze(-1), y_im * sqrt_v.unsqueeze(-1)
            if c.schatten_threshold is not None:
                v_abs = a.abs()
                state["bs_max"] = torch.maximum(state["bs_max"], v_abs)
                state["bs_sum"] = state["bs_sum"] + v_abs * g_im
                bound2 = state["bs_max"] * state["bs_sum"] / consts["eta"]
                thr2 = float(c.schatten_threshold) ** 2
                scale = torch.sqrt(thr2 / torch.maximum(bound2, bound2.new_tensor(thr2))).unsqueeze(-1)
                y_re, y_im = y_re * scale, y_im * scale
        y_re, y_im = self.read_out(y_re, q), self.read_out(y_im, q)
        if c.feature_norm == "ward" or c.absorption == "token":
            e = self.value_scale(eta, g_im).unsqueeze(-1)
            y_re, y_im = y_re * e, y_im * e
        if c.absorption == "token":
            g_re, g_im = g_re * eta, g_im * eta
        feats = torch.cat([y_re, y_im, g_re.unsqueeze(-1), g_im.unsqueeze(-1)], dim=-1).view(B, H * (2 * P + 2))
        out = F.linear(feats, consts["out_w"], self.out_proj.bias)
        if c.use_semiseparable:
            r = c.low_rank
            q, k, vv, logits, window = self.semiseparable_inputs(x.unsqueeze(1), None, state.get("ss_conv"))
            if window is not None:
                state["ss_conv"] = window
            q, k, vv = q.squeeze(1), k.squeeze(1), vv.squeeze(1)
            vv, log_decay = self.semiseparable_decay(None if logits is None else logits.squeeze(1), vv, None)
            ss, state["ss"] = semiseparable_step(q * r**-0.5, k, vv, state["ss"], log_decay)
            out = out + self.ss_out(ss)
        out = out * F.silu(gate)
        return out, torch.atan2(g_im, g_re).mean(-1)

    def schatten_scale(
        self, a: Tensor, g_im: Tensor, eta: Tensor, mask: Tensor, state: Optional[dict[str, Tensor]]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-position factor s_i <= 1 so that s_i * ||K^(i)||_HS <= schatten_threshold (causal prefix operator).

        Row j of the causal sandwich K has sum_l |K_jl|^2 <= |V_j| max_{l<=j}|V_l| Im(g_j) / eta (Ward identity),
        so ||K^(i)||_HS^2 <= max_{j<=i}|V_j| * sum_{j<=i} |V_j| Im(g_j) / eta.  Running max and sum keep it O(1).
        """
        thr2 = float(self.config.schatten_threshold) ** 2
        v_abs = a.abs() * mask.unsqueeze(-1)
        run_max = torch.cummax(v_abs, dim=1).values
        run_sum = torch.cumsum(v_abs * g_im, dim=1)
        if state is not None:
            run_max = torch.maximum(run_max, state["bs_max"].unsqueeze(1))
            run_sum = run_sum + state["bs_sum"].unsqueeze(1)
        bound2 = run_max * run_sum / eta
        scale = torch.sqrt(thr2 / torch.maximum(bound2, bound2.new_tensor(thr2)))
        return scale, run_max, run_sum


class ResNetBKMoE(nn.Module):
    """Mixture-of-experts feed-forward layer (SiLU MLP experts) with a learned or a scattering-phase router."""

    def __init__(self, config: ResNetBKConfig):
        super().__init__()
        self.config = config
        E, d, f = config.num_experts, config.d_model, config.ffn_dim
        self.w_in = nn.Parameter(torch.empty(E, d, f))
        self.w_out = nn.Parameter(torch.empty(E, f, d))
        if not config.use_scattering_router:
            self.router = nn.Linear(d, E, bias=False)

    def route(self, x: Tensor, phase: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (weights (T, k), expert indices (T, k), load-balancing loss) for the flattened tokens; the loss
        is computed only where a gradient can use it."""
        c = self.config
        E, k = c.num_experts, c.top_k
        if c.use_scattering_router:
            centres = math.pi * (torch.arange(E, device=x.device, dtype=x.dtype) + 0.5) / E
            logits = -((phase.reshape(-1, 1) - centres) ** 2) / c.scattering_scale**2
            top_logits, top_idx = logits.topk(k, dim=-1)
            return torch.softmax(top_logits, dim=-1), top_idx, x.new_zeros(())
        probs = torch.softmax(self.router(x), dim=-1)
        top_p, top_idx = probs.topk(k, dim=-1)
        if not torch.is_grad_enabled():
            return top_p, top_idx, x.new_zeros(())
        # Switch-Transformer balance loss over real tokens: E * sum_e (fraction routed to e) * (mean prob of e)
        m = mask.reshape(-1, 1)
        n_real = m.sum().clamp_min(1.0)
        routed = torch.zeros_like(probs).scatter_(1, top_idx, 1.0)
        frac = (routed * m).sum(0) / (n_real * k)
        mean_p = (probs * m).sum(0) / n_real
        return top_p, top_idx, E * (frac * mean_p).sum()

    def forward(self, x: Tensor, phase: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        B, N, d = x.shape
        flat = x.reshape(-1, d)
        weights, idx, aux = self.route(flat, phase, mask)
        if torch.compiler.is_exporting() or torch.jit.is_tracing():  # no Python branch on routed counts
            return self._dispatch_traceable(flat, weights, idx).view(B, N, d), aux
        if flat.shape[0] == 1:  # one token (decoding): run its chosen experts directly, no dispatch machinery
            return self._single_token(flat, weights, idx).view(B, N, d), aux
        return self._dispatch(flat, weights, idx).view(B, N, d), aux

    def step(self, x: Tensor, phase: Tensor) -> Tensor:
        """One token of every row (x: (B, d)), at inference: routed and mixed, no balance loss."""
        weights, idx, _ = self.route(x, phase, None)
        return self._single_token(x, weights, idx) if x.shape[0] == 1 else self._dispatch(x, weights, idx)

    def _dispatch_traceable(self, flat: Tensor, weights: Tensor, idx: Tensor) -> Tensor:
        """The export form of `_dispatch`: each expert gathers the (token, slot) pairs routed to it with `nonzero`
        (a shape the exported graph keeps symbolic) and adds its output back with `index_add`; the same sums,
        with no Python-side count per expert."""
        out = torch.zeros_like(flat)
        for e in range(self.config.num_experts):
            token, slot = torch.nonzero(idx == e, as_tuple=True)
            h = F.silu(flat[token] @ self.w_in[e]) @ self.w_out[e]
            out = out.index_add(0, token, h * weights[token, slot].unsqueeze(-1))
        return out

    def _dispatch(self, flat: Tensor, weights: Tensor, idx: Tensor) -> Tensor:
        """Every (token, slot) assignment sorted by expert: one gather, one matmul pair per expert on a contiguous
        group, one scatter back. O(T k d) memory traffic, where indexing per expert would copy [T, d] per expert
        (and build a full-size zero gradient of the stacked weights per expert in backward)."""
        T, k = idx.shape
        E = self.config.num_experts
        expert = idx.reshape(-1)
        order = torch.argsort(expert, stable=True)  # stable: within an expert, tokens stay in order
        token = torch.div(order, k, rounding_mode="floor")
        counts = torch.bincount(expert, minlength=E).tolist()
        groups = flat[token].split(counts)
        h = torch.cat([
            F.silu(g @ w_in) @ w_out for g, w_in, w_out in zip(groups, self.w_in.unbind(0), self.w_out.unbind(0))
        ])
        h = h * weights.reshape(-1)[order].unsqueeze(-1)
        return flat.new_zeros(T, flat.shape[1]).index_add_(0, token, h)

    def _single_token(self, flat: Tensor, weights: Tensor, idx: Tensor) -> Tensor:
        """The mixture for T = 1: the k chosen experts by plain indexing, summed in expert order like `_dispatch`."""
        experts = idx[0].tolist()
        out = None
        for slot in sorted(range(len(experts)), key=experts.__getitem__):
            e = experts[slot]
            h = torch.mm(F.silu(torch.mm(flat, self.w_in[e])), self.w_out[e]) * weights[:, slot : slot + 1]
            out = h if out is None else out + h
        return out


class ResNetBKHalting(nn.Linear):
    """Halting probability of adaptive computation time, p = sigmoid(w . h + b), one per token."""

    def __init__(self, d_model: int):
        super().__init__(d_model, 1)

    def forward(self, h: Tensor) -> Tensor:
        return torch.sigmoid(super().forward(h)).squeeze(-1)


class ResNetBKBlock(GradientCheckpointingLayer):
    """Pre-norm residual block: Green's-function mixer, then mixture-of-experts feed-forward.

    A `GradientCheckpointingLayer`, so `gradient_checkpointing_enable()` recomputes it in the backward pass the
    transformers way (tensors positional, the cache as a keyword that checkpointing never carries).
    """

    def __init__(self, config: ResNetBKConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.norm1 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = ResNetBKGreenMixer(config, layer_idx)
        self.norm2 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.moe = ResNetBKMoE(config)
        self.drop = nn.Dropout(config.dropout_p)
        if config.use_act:
            self.halt = ResNetBKHalting(config.d_model)

    def forward(
        self, hidden_states: Tensor, mask: Tensor, mask_prev: Tensor, positions: Tensor, cache: Optional[ResNetBKCache] = None
    ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Returns (hidden states, MoE balance loss, halting probability or None); updates this layer's cache."""
        state = cache.layers[self.layer_idx] if cache is not None else None
        m, phase, new_state = self.mixer(self.norm1(hidden_states), mask, mask_prev, positions, state, cache is not None)
        if cache is not None:
            cache.layers[self.layer_idx] = new_state
        h = hidden_states + self._drop(m)
        f, aux = self.moe(self.norm2(h), phase, mask)
        h = h + self._drop(f)
        halt_p = self.halt(h) if hasattr(self, "halt") else None
        return h, aux, halt_p

    def step(self, h: Tensor, cache: ResNetBKCache, keep: Tensor, positions: Tensor) -> Tensor:
        """One token of every row (h: (B, d)) at inference, continuing and updating this layer's cached state."""
        consts = cache.step_constants[self.layer_idx]
        if consts is None:
            consts = cache.step_constants[self.layer_idx] = self.mixer.step_constants()
        m, phase = self.mixer.step(self.norm1(h), cache.layers[self.layer_idx], consts, keep, positions)
        h = h + m
        return h + self.moe.step(self.norm2(h), phase)

    def _drop(self, x: Tensor) -> Tensor:
        return self.drop(x) if self.drop.p > 0 else x  # p = 0 (the default) keeps dropout out of the graph


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face models


@dataclass
class ResNetBKModelOutput(BaseModelOutputWithPast):
    """Adds the mixture-of-experts balance loss and the adaptive-computation statistics."""

    aux_loss: Optional[torch.FloatTensor] = None
    ponder_cost: Optional[torch.FloatTensor] = None
    act_mean_layers: Optional[torch.FloatTensor] = None


@dataclass
class ResNetBKCausalLMOutput(CausalLMOutputWithPast):
    """`loss` is what training minimises: `lm_loss` + router_aux_loss_coef * aux_loss + act_ponder_weight * ponder_cost."""

    lm_loss: Optional[torch.FloatTensor] = None
    aux_loss: Optional[torch.FloatTensor] = None
    ponder_cost: Optional[torch.FloatTensor] = None
    act_mean_layers: Optional[torch.FloatTensor] = None


if CACHE_OUTPUT_FIELD != "cache":  # transformers < 5.24: `out.cache` reads the state under its older name too
    for _output_class in (ResNetBKModelOutput, ResNetBKCausalLMOutput):
        _output_class.cache = property(lambda self: self.past_key_values)


class ResNetBKPreTrainedModel(PreTrainedModel):
    config_class = ResNetBKConfig
    config: ResNetBKConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ResNetBKBlock"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _is_stateful = True  # a recurrent state cannot be rolled back (no assisted generation)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with `auto_map` naming both the base model and the LM head, so a
        saved folder loads as remote code through `AutoModel` as well as `AutoModelForCausalLM`."""
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.setdefault("AutoModel", "modeling_resnet_bk.ResNetBKModel")
        auto_map.setdefault("AutoModelForCausalLM", "modeling_resnet_bk.ResNetBKForCausalLM")
        self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model builds its own ResNetBKCache

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, ResNetBKGreenMixer):
            if module.from_tokens:
                energy, rho = module.initial_channel_parameters()
                init.copy_(module.energy, energy)
                init.copy_(module.rho, rho)
            if hasattr(module, "ss_decay"):
                # delta log-spaced from 0.001 to 0.1 over the heads, as Mamba's dt: memories of ~10 to ~1000 tokens
                h = module.ss_decay.out_features
                delta = torch.logspace(-3, -1, h) if h > 1 else torch.tensor([0.01])
                if module.config.semiseparable_decay_activation == "relu":
                    init.copy_(module.ss_decay.bias, delta)
                else:
                    init.copy_(module.ss_decay.bias, delta + torch.log(-torch.expm1(-delta)))  # softplus^-1
        elif isinstance(module, ResNetBKCausalConv):
            # the convolution starts as the identity (last tap 1, the others 0): at initialisation the mixer sees
            # each position's own projections, as without it, and training learns what to take from before
            identity = torch.zeros_like(module.weight)
            identity[..., -1] = 1.0
            init.copy_(module.weight, identity)
            init.zeros_(module.bias)
        elif isinstance(module, ResNetBKMoE):
            init.normal_(module.w_in, mean=0.0, std=std)
            init.normal_(module.w_out, mean=0.0, std=std / math.sqrt(2 * self.config.n_layers))
        elif isinstance(module, ResNetBKHalting):
            init.constant_(module.bias, -2.0)  # halting probability starts small: tokens use several layers


class _AdaptiveHalting:
    """Adaptive computation time across layers (Graves 2016), for a (B, N) grid of tokens.

    A token is updated by each block until its cumulative halting probability reaches 1 - threshold (the last
    block halts every token still running); the ponder cost is layers used plus the remainder.
    """

    def __init__(self, h: Tensor, threshold: float, num_layers: int):
        B, N = h.shape[:2]
        self.threshold, self.num_layers = threshold, num_layers
        self.running = torch.ones(B, N, dtype=torch.bool, device=h.device)
        self.cum = h.new_zeros(B, N)
        self.layers_used = h.new_zeros(B, N)
        self.remainder = h.new_ones(B, N)

    def update(self, i: int, h: Tensor, new_h: Tensor, halt_p: Tensor) -> Tensor:
        run_f = self.running.to(h.dtype)
        h = torch.where(self.running.unsqueeze(-1), new_h, h)
        self.layers_used = self.layers_used + run_f
        new_cum = self.cum + halt_p * run_f
        halts = self.running if i == self.num_layers - 1 else self.running & (new_cum >= 1.0 - self.threshold)
        self.remainder = torch.where(halts, 1.0 - self.cum, self.remainder)
        self.cum = torch.where(halts, self.cum, new_cum)
        self.running = self.running & ~halts
        return h

    def statistics(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(ponder cost, mean number of layers used) over the real tokens."""
        n_real = mask.sum().clamp_min(1.0)
        return ((self.layers_used + self.remainder) * mask).sum() / n_real, (self.layers_used * mask).sum() / n_real


class ResNetBKModel(ResNetBKPreTrainedModel):
    def __init__(self, config: ResNetBKConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.drop = nn.Dropout(config.dropout_p)
        self.layers = nn.ModuleList(ResNetBKBlock(config, i) for i in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache: Optional[ResNetBKCache] = None,
        inputs_embeds: Optional[Tensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        past_key_values: Optional[ResNetBKCache] = None,
        **kwargs: Any,
    ) -> ResNetBKModelOutput | tuple:
        """Runs the blocks on the new tokens, continuing from `cache` when given.

        cache: the `ResNetBKCache` a previous call returned (`past_key_values` is the name transformers < 5.24
        uses for it; both are accepted).  attention_mask: (B, past + N) or (B, N), 1 for real tokens; padding
        contributes nothing and cuts the coupling, so left padding changes no output of the real tokens.
        position_ids (0-based, as `generate` makes them) place the prime-bump potential; by default positions
        count the real tokens.
        """
        c = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else c.output_hidden_states
        return_dict = return_dict if return_dict is not None else c.return_dict
        use_cache = use_cache if use_cache is not None else (c.use_cache and not self.training)
        cache = take_cache(cache, past_key_values, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("ResNetBKModel: pass exactly one of input_ids or inputs_embeds")
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False  # checkpointed blocks recompute; a cache is for generation
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if self._can_step(h, cache, attention_mask, output_hidden_states):
            h = self._step(h[:, 0], cache, position_ids)
            out = ResNetBKModelOutput(last_hidden_state=h.unsqueeze(1), aux_loss=h.new_zeros(()),
                                      **{CACHE_OUTPUT_FIELD: cache if use_cache else None})
            return out if return_dict else out.to_tuple()
        if cache is None and use_cache:
            cache = ResNetBKCache(c.n_layers)
        mask, mask_prev, positions = self._token_masks(h, attention_mask, position_ids, cache)

        h = self.drop(h)
        all_hidden = (h,) if output_hidden_states else None
        aux_total = h.new_zeros(())
        halting = _AdaptiveHalting(h, c.act_halt_threshold, len(self.layers)) if c.use_act else None
        for i, block in enumerate(self.layers):
            new_h, aux, halt_p = block(h, mask, mask_prev, positions, cache=cache)
            aux_total = aux_total + aux
            h = halting.update(i, h, new_h, halt_p) if halting is not None else new_h
            if output_hidden_states and i < len(self.layers) - 1:
                all_hidden = all_hidden + (h,)
        h = self.norm(h)
        if output_hidden_states:
            all_hidden = all_hidden + (h,)
        if cache is not None:
            cache.positions = mask.sum(1).long() + (cache.positions if cache.positions is not None else 0)
            cache.last_mask = mask[:, -1]
            cache.seen_tokens += h.shape[1]

        ponder, mean_layers = halting.statistics(mask) if halting is not None else (None, None)
        out = ResNetBKModelOutput(
            last_hidden_state=h,
            hidden_states=all_hidden,
            aux_loss=aux_total / len(self.layers),
            ponder_cost=ponder,
            act_mean_layers=mean_layers,
            **{CACHE_OUTPUT_FIELD: cache if use_cache else None},
        )
        return out if return_dict else out.to_tuple()

    def _can_step(self, h: Tensor, cache: Optional[ResNetBKCache], attention_mask: Optional[Tensor],
                  output_hidden_states: bool) -> bool:
        """Whether this call is one decoding step the fast path covers: one new real token per row, a cache that
        already holds a state, no gradient, and no per-layer outputs or adaptive computation to report."""
        return (
            cache is not None and h.shape[1] == 1 and cache.positions is not None and not torch.is_grad_enabled()
            and not output_hidden_states and not self.config.use_act and not self.training
            and (attention_mask is None or bool(attention_mask[:, -1].all()))
            and not (torch.compiler.is_exporting() or torch.jit.is_tracing())
        )

    def _step(self, h: Tensor, cache: ResNetBKCache, position_ids: Optional[Tensor]) -> Tensor:
        """One fused recurrent step per layer for one new token per row (h: (B, d)); updates the cache in place."""
        keep = cache.last_mask.to(h.dtype).unsqueeze(-1)
        positions = position_ids.reshape(-1).long() + 1 if position_ids is not None else cache.positions + 1
        for block in self.layers:
            h = block.step(h, cache, keep, positions)
        cache.positions = cache.positions + 1
        cache.last_mask = torch.ones_like(cache.last_mask)
        cache.seen_tokens += 1
        return self.norm(h)

    @staticmethod
    def _token_masks(
        h: Tensor, attention_mask: Optional[Tensor], position_ids: Optional[Tensor], cache: Optional[ResNetBKCache]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(mask, mask of the previous position, 1-based positions) of the N new tokens, each (B, N).

        The previous position of the first new token is the cache's last one (none without a cache: position 0
        couples to nothing); positions continue the cache's count of real tokens unless `position_ids` are given.
        """
        B, N = h.shape[:2]
        past = cache.seen_tokens if cache is not None else 0
        if attention_mask is None:
            mask = h.new_ones(B, N)
        elif attention_mask.dim() != 2 or attention_mask.shape[1] not in (N, past + N):
            raise ValueError(
                f"ResNetBKModel: attention_mask must be (batch, {N}) or (batch, {past + N}), "
                f"got {tuple(attention_mask.shape)}"
            )
        else:
            mask = attention_mask[:, -N:].to(h.dtype)
        last = cache.last_mask if cache is not None and cache.last_mask is not None else mask.new_zeros(B)
        mask_prev = torch.cat([last.view(B, 1).to(mask.dtype), mask[:, :-1]], dim=1)
        if position_ids is not None:
            positions = position_ids.expand(B, N).long() + 1
        else:
            positions = torch.cumsum(mask, 1).long()
            if cache is not None and cache.positions is not None:
                positions = positions + cache.positions.view(B, 1)
        return mask, mask_prev, positions


class ResNetBKForCausalLM(ResNetBKPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ResNetBKConfig):
        super().__init__(config)
        self.model = ResNetBKModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.loss_type = "ForCausalLM"
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache: Optional[ResNetBKCache] = None,
        inputs_embeds: Optional[Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: int = 0,
        past_key_values: Optional[ResNetBKCache] = None,
        **kwargs: Any,
    ) -> ResNetBKCausalLMOutput | tuple:
        """Causal LM forward.  With `labels` (-100 = ignored) the loss is transformers' causal-LM loss (labels
        shifted inside; `shift_labels` and `num_items_in_batch` honoured) plus the weighted router balance loss
        and ponder cost; the cross-entropy alone is `lm_loss`.  `cache` / `past_key_values`: see `ResNetBKModel`."""
        c = self.config
        return_dict = return_dict if return_dict is not None else c.return_dict
        cache = take_cache(cache, past_key_values, kwargs)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        h = out.last_hidden_state
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = lm_loss = None
        if labels is not None or kwargs.get("shift_labels") is not None:
            lm_loss = self.loss_function(logits=logits, labels=labels, vocab_size=c.vocab_size, **kwargs)
            loss = lm_loss
            if not c.use_scattering_router:
                loss = loss + c.router_aux_loss_coef * out.aux_loss
            if c.use_act:
                loss = loss + c.act_ponder_weight * out.ponder_cost
        result = ResNetBKCausalLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states,
            lm_loss=lm_loss,
            aux_loss=out.aux_loss,
            ponder_cost=out.ponder_cost,
            act_mean_layers=out.act_mean_layers,
            **{CACHE_OUTPUT_FIELD: getattr(out, CACHE_OUTPUT_FIELD)},
        )
        return result if return_dict else result.to_tuple()


__all__ = [
    "CACHE_OUTPUT_FIELD",
    "ResNetBKCache",
    "ResNetBKForCausalLM",
    "ResNetBKModel",
    "ResNetBKPreTrainedModel",
    "ResNetBKBlock",
    "prime_bump_potential",
    "semiseparable_scan",
]
