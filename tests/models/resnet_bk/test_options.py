"""Every configuration option does what section 3 of docs/design/resnet_bk.md says, checked against an
independent computation (dense matrices, direct sums), and bad values are refused with the field's name."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from checks import OPTION_CONTRIBUTIONS, OPTION_TINY, check_option_contributes, option_model, random_option_weights
from hubtrain.models.resnet_bk import ResNetBKConfig
from hubtrain.models.resnet_bk.modeling_resnet_bk import prime_bump_potential, semiseparable_scan, semiseparable_step

TINY = OPTION_TINY
tiny_model = option_model  # (seed=0, dtype=torch.float64, **options): shared with tests/sensitivity


def capture_mixer(model, ids, layer=0):
    """Run the model and return what the first mixer saw and produced: its input, and the [y, g] features."""
    mixer = model.model.layers[layer].mixer
    seen = {}
    h1 = mixer.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    h2 = mixer.out_proj.register_forward_hook(lambda m, args, out: seen.update(feats=args[0]))
    with torch.no_grad():
        model(ids)
    h1.remove(), h2.remove()
    H, P = mixer.num_channels, mixer.channel_dim
    feats = seen["feats"].view(*seen["feats"].shape[:2], H, 2 * P + 2)
    return mixer, seen["x"], feats


def with_and_without_term(mixer, x):
    """The mixer's output on x (every position a real token), and that output minus the output of the same mixer
    with the semiseparable term switched off: what the term adds."""
    without = copy.deepcopy(mixer)
    without.config.use_semiseparable = False
    B, N = x.shape[:2]
    mask, positions = torch.ones(B, N, dtype=x.dtype), torch.arange(1, N + 1).expand(B, N)
    mask_prev = torch.cat([torch.zeros(B, 1, dtype=x.dtype), mask[:, 1:]], 1)
    with torch.no_grad():
        out = mixer(x, mask, mask_prev, positions)[0]
        return out, out - without(x, mask, mask_prev, positions)[0]


def dense_causal_rows(a, hop, E, eta):
    """G^(i)[i, :i+1] for every i (list of complex128 rows), by inverting every prefix Hamiltonian minus z, with
    z = E + i eta (eta a number, or a tensor of one absorption per position: z_j = E + i eta_j on the diagonal)."""
    rows = []
    for i in range(a.shape[0]):
        Hm = torch.diag(a[: i + 1]) + torch.diag(hop[:i], 1) + torch.diag(hop[:i], -1)
        absorb = eta[: i + 1].double() if torch.is_tensor(eta) else torch.full((i + 1,), float(eta), dtype=torch.float64)
        z = torch.diag(torch.complex(torch.full_like(absorb, E), absorb))
        G = torch.linalg.inv(Hm.to(torch.complex128) - z)
        rows.append(G[i])
    return rows


def mixer_inputs(mixer, x):
    """Potential, coupling, values and energies exactly as the design note defines them (no padding)."""
    H, P = mixer.num_channels, mixer.channel_dim
    a_raw, t_raw, v, _ = mixer.in_proj(x).split([H, H, H * P, x.shape[-1]], -1)
    a = 3 * torch.tanh(a_raw / 3)
    hop = torch.sigmoid(t_raw[:, 1:])  # coupling i <-> i+1 from token i+1
    E, eta = mixer.energy_eta()
    return a[0], hop[0], v[0].view(-1, H, P), E, eta


def test_birman_schwinger_sandwich_equals_the_explicit_operator():
    model = tiny_model(use_birman_schwinger=True)
    ids = torch.randint(0, 64, (1, 10))
    mixer, x, feats = capture_mixer(model, ids)
    with torch.no_grad():
        a, hop, u, E, eta = mixer_inputs(mixer, x)
        P = mixer.channel_dim
        for h in range(mixer.num_channels):
            V = a[:, h]
            rows = dense_causal_rows(V, hop[:, h], E[h].item(), eta[h].item())
            for i, row in enumerate(rows):
                # K = |V|^1/2 (H - z)^-1 V^1/2 with V^1/2 = sign(V)|V|^1/2
                K_row = V[i].abs().sqrt() * row * (torch.sign(V[: i + 1]) * V[: i + 1].abs().sqrt())
                y = K_row @ u[: i + 1, h].to(torch.complex128)
                got = torch.complex(feats[0, i, h, :P], feats[0, i, h, P : 2 * P]) / eta[h]
                assert (got - y).abs().max() < 1e-10


def test_schatten_threshold_bounds_every_causal_prefix_operator():
    thr = 0.5
    model = tiny_model(use_birman_schwinger=True, schatten_threshold=thr)
    ids = torch.randint(0, 64, (1, 12))
    mixer, x, feats = capture_mixer(model, ids)
    active = 0
    with torch.no_grad():
        a, hop, u, E, eta = mixer_inputs(mixer, x)
        P = mixer.channel_dim
        for h in range(mixer.num_channels):
            V = a[:, h]
            rows = dense_causal_rows(V, hop[:, h], E[h].item(), eta[h].item())
            K = torch.zeros(len(rows), len(rows), dtype=torch.complex128)
            for i, row in enumerate(rows):
                K[i, : i + 1] = V[i].abs().sqrt() * row * (torch.sign(V[: i + 1]) * V[: i + 1].abs().sqrt())
            for i in range(len(rows)):
                y_plain = K[i] @ u[:, h].to(torch.complex128)
                got = torch.complex(feats[0, i, h, :P], feats[0, i, h, P : 2 * P]) / eta[h]
                # the output is row i of s_i K^(i); s_i from the Ward bound; s_i K^(i) obeys the threshold
                s = (got.abs().max() / y_plain.abs().max()).item()
                assert torch.allclose(got, s * y_plain, atol=1e-10)
                # s_i = min(1, thr / B_i), B_i^2 = max_{j<=i}|V_j| sum_{j<=i} |V_j| Im g_j / eta (Ward identity)
                im_g = torch.stack([rows[j][j].imag for j in range(i + 1)])
                bound = torch.sqrt(V[: i + 1].abs().max() * (V[: i + 1].abs() * im_g).sum() / eta[h]).item()
                assert abs(s - min(1.0, thr / bound)) < 1e-9
                # the bound is a true bound on the Hilbert-Schmidt norm of the prefix operator
                assert torch.linalg.matrix_norm(K[: i + 1, : i + 1]).item() <= bound * (1 + 1e-9)
                hs = torch.linalg.matrix_norm(K[: i + 1, : i + 1]).item()
                assert s * hs <= thr * (1 + 1e-9)
                active += s < 1 - 1e-6
    assert active > 0, "the threshold never bit; the test would not show the rescaling"


def primes_upto(n):
    return [p for p in range(2, n + 1) if all(p % q for q in range(2, int(p**0.5) + 1))]


@pytest.mark.parametrize("k_max", [1, 3])
def test_prime_bump_adds_the_documented_potential_at_any_position(k_max):
    positions = torch.tensor([[1, 2, 3, 4, 5, 8, 9, 25, 27, 100, 121, 4099]])
    got = prime_bump_potential(positions, k_max)
    for i, value in zip(positions[0].tolist(), got[0].tolist()):
        expected = sum(
            math.log(p) / p ** (k / 2) * math.exp(-((i - p**k) ** 2) / 2)
            for p in primes_upto(i + 40)
            for k in range(1, k_max + 1)
            if abs(i - p**k) < 40
        )
        assert abs(value - expected) < 1e-12

    model = tiny_model(use_prime_bump=True, prime_bump_scale=0.3, k_max=k_max)
    mixer = model.model.layers[0].mixer
    a_raw = torch.randn(1, 30, mixer.num_channels, dtype=torch.float64)
    pos = torch.arange(1, 31).view(1, 30)
    added = mixer.potential(a_raw, pos) - 3 * torch.tanh(a_raw / 3)
    assert torch.allclose(added, 0.3 * prime_bump_potential(pos, k_max).unsqueeze(-1), atol=1e-14)
    assert added.abs().max() > 0.05


def test_semiseparable_term_equals_dense_masked_qk_v_and_continues_from_its_state():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 150, 5, dtype=torch.float64), torch.randn(2, 150, 5, dtype=torch.float64), torch.randn(2, 150, 3, dtype=torch.float64)
    dense = torch.tril(q @ k.transpose(1, 2)) @ v
    out, state = semiseparable_scan(q, k, v, chunk_size=16)
    assert torch.allclose(out, dense, atol=1e-10)
    first, st = semiseparable_scan(q[:, :70], k[:, :70], v[:, :70])
    second, st2 = semiseparable_scan(q[:, 70:], k[:, 70:], v[:, 70:], st)
    assert torch.allclose(torch.cat([first, second], 1), dense, atol=1e-10)
    assert torch.allclose(st2, state, atol=1e-10)
    assert st2.shape == (2, 5, 3)  # O(r) state per value dim, whatever the length

    # in the mixer: the output minus that of the same mixer without the term is the gated ss_out(tril(Q K^T) V)
    # (a wider init than the default makes the term large enough to see)
    model = tiny_model(use_semiseparable=True, low_rank=4, initializer_range=0.2)
    mixer, x, _ = capture_mixer(model, torch.randint(0, 64, (1, 9)))
    r = mixer.config.low_rank
    out, added = with_and_without_term(mixer, x)
    with torch.no_grad():
        q, k, v = mixer.ss_proj(x).split([r, r, r], -1)
        gate = mixer.in_proj(x)[..., -x.shape[-1] :]
        expected = mixer.ss_out(torch.tril(q @ k.transpose(1, 2)) @ v / r**0.5) * torch.nn.functional.silu(gate)
    assert expected.abs().max() > 0.1 * out.abs().max() and torch.allclose(added, expected, atol=1e-12)


def decayed_reference(q, k, v, gamma, state=None):
    """The decayed semiseparable term by its definition, one token at a time: S_i = gamma_i S_{i-1} + k_i v_i^T per
    head (gamma (B, N, h), each head a contiguous block of the value dims), out_i = q_i S_i."""
    B, N, r = q.shape
    h, p = gamma.shape[-1], v.shape[-1] // gamma.shape[-1]
    S = torch.zeros(B, r, v.shape[-1], dtype=q.dtype) if state is None else state.clone()
    outs = []
    for i in range(N):
        for head in range(h):
            block = slice(head * p, (head + 1) * p)
            S[:, :, block] = gamma[:, i, head, None, None] * S[:, :, block] + k[:, i, :, None] * v[:, i, None, block]
        outs.append(torch.einsum("br,brs->bs", q[:, i], S))
    return torch.stack(outs, 1), S


@pytest.mark.parametrize("h", [3, 6], ids=["heads-of-2-values", "a-decay-per-value"])
def test_decayed_semiseparable_term_equals_its_recurrence_at_every_chunk_size_and_continues_from_its_state(h):
    """semiseparable_decay_heads: head h forgets its sum of k v^T by gamma_i^h at every token.  The chunked scan
    (every chunk size, lengths that do not fill the last chunk), a continuation from its state and the one-token
    step all equal the recurrence, and the decay matters: without it the output is far from the reference.  Six
    values, rank 5: heads of two values, or one decay per value (semiseparable_value_dim = heads)."""
    from hubtrain.models.resnet_bk.modeling_resnet_bk import semiseparable_step

    torch.manual_seed(0)
    B, N, r, s = 2, 150, 5, 6
    q, k, v = torch.randn(B, N, r, dtype=torch.float64), torch.randn(B, N, r, dtype=torch.float64), torch.randn(B, N, s, dtype=torch.float64)
    rates = torch.tensor([0.01, 0.3, 3.0], dtype=torch.float64).repeat(h // 3)  # slow, middle and fast heads
    log_decay = -torch.rand(B, N, h, dtype=torch.float64) * rates
    reference, final = decayed_reference(q, k, v, log_decay.exp())
    undecayed, _ = semiseparable_scan(q, k, v)
    assert (undecayed - reference).abs().max() > 0.5 * reference.abs().max()  # the comparison can fail
    for chunk_size in (1, 16, 64, 200):
        out, state = semiseparable_scan(q, k, v, chunk_size=chunk_size, log_decay=log_decay)
        assert torch.allclose(out, reference, atol=1e-10) and torch.allclose(state, final, atol=1e-10)
    first, st = semiseparable_scan(q[:, :70], k[:, :70], v[:, :70], chunk_size=16, log_decay=log_decay[:, :70])
    second, st2 = semiseparable_scan(q[:, 70:], k[:, 70:], v[:, 70:], st, chunk_size=16, log_decay=log_decay[:, 70:])
    assert torch.allclose(torch.cat([first, second], 1), reference, atol=1e-10) and torch.allclose(st2, final, atol=1e-10)
    state, steps = torch.zeros(B, r, s, dtype=torch.float64), []
    for i in range(N):
        out, state = semiseparable_step(q[:, i], k[:, i], v[:, i], state, log_decay[:, i])
        steps.append(out)
    assert torch.allclose(torch.stack(steps, 1), reference, atol=1e-10) and torch.allclose(state, final, atol=1e-10)


def test_decayed_semiseparable_term_in_the_mixer_is_bounded_independently_of_the_length():
    """In the mixer each token sets gamma_i = exp(-softplus(W x_i + b)) per head and writes its values with
    1 - gamma_i, so each head's sum is a convex combination of k_j v_j^T and |out_i| <= |q_i| max_{j<=i} |k_j| |v_j|
    (head by head), over 20,000 tokens; the undecayed sum of the same q, k, v passes that bound many times over.
    The mixer's term equals ss_out of the recurrence on those inputs, gated."""
    model = random_option_weights(tiny_model(use_semiseparable=True, low_rank=4, semiseparable_decay_heads=2,
                                             initializer_range=0.2))
    mixer = model.model.layers[0].mixer
    r, h = 4, 2
    x = torch.randn(1, 20000, TINY["d_model"], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q, k, v = mixer.ss_proj(x).split([r, r, r], -1)
        written, log_decay = mixer.semiseparable_decay(mixer.ss_decay(x), v, None)
        gamma = torch.exp(-torch.nn.functional.softplus(mixer.ss_decay(x)))
        assert torch.allclose(log_decay.exp(), gamma, atol=1e-14)
        assert torch.allclose(written, v * (1 - gamma).repeat_interleave(r // h, -1), atol=1e-14)
        assert gamma.min() < 0.1 and gamma.max() > 0.99  # the tokens choose: from forgetting to keeping
        out, _ = semiseparable_scan(q, k, written, log_decay=log_decay)
        plain, _ = semiseparable_scan(q, k, v)
    for head in range(h):
        block = slice(head * r // h, (head + 1) * r // h)
        bound = q.norm(dim=-1) * torch.cummax(k.norm(dim=-1) * v[..., block].norm(dim=-1), dim=1).values
        assert (out[..., block].norm(dim=-1) <= bound * (1 + 1e-12)).all()
        assert (plain[..., block].norm(dim=-1) / bound).max() > 10  # the same check fails without the decay

    # the mixer's output minus that of the same mixer without the term: the gated ss_out of the recurrence
    mixer, x, _ = capture_mixer(model, torch.randint(0, 64, (1, 12)))
    out, added = with_and_without_term(mixer, x)
    with torch.no_grad():
        q, k, v = mixer.ss_proj(x).split([r, r, r], -1)
        gamma = torch.exp(-torch.nn.functional.softplus(mixer.ss_decay(x)))
        ss, _ = decayed_reference(q / r**0.5, k, v * (1 - gamma).repeat_interleave(r // h, -1), gamma)
        gate = mixer.in_proj(x)[..., -x.shape[-1] :]
        expected = mixer.ss_out(ss) * torch.nn.functional.silu(gate)
    assert expected.abs().max() > 0.01 * out.abs().max() and torch.allclose(added, expected, atol=1e-12)


def test_relu_decay_keeps_a_heads_sum_exactly_where_its_projection_is_not_positive():
    """semiseparable_decay_activation="relu": delta = relu(W x + b), started at the same deltas as softplus (the bias
    is delta itself), so a head whose projection is <= 0 at a token neither writes nor forgets there: its sum after
    that token is bit for bit the sum before, however many such tokens pass.  The mixer's term is the decayed
    recurrence with gamma = exp(-relu(W x + b)).  Under softplus no token keeps any head's sum exactly."""
    r, s = 4, 8
    options = dict(use_semiseparable=True, low_rank=r, semiseparable_value_dim=s, semiseparable_decay_heads=s)
    fresh = tiny_model(semiseparable_decay_activation="relu", **options).model.layers[0].mixer
    assert torch.allclose(fresh.ss_decay.bias, torch.logspace(-3, -1, s).double(), atol=1e-15)
    ids = torch.randint(0, TINY["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(1))
    for activation, kept_somewhere in (("relu", True), ("softplus", False)):
        model = random_option_weights(tiny_model(semiseparable_decay_activation=activation, initializer_range=0.2,
                                                 **options))
        mixer, x, _ = capture_mixer(model, ids)
        with torch.no_grad():
            q, k, v, logits, _ = mixer.semiseparable_inputs(x, None, None)
            written, log_decay = mixer.semiseparable_decay(logits, v, None)
            delta = torch.relu(logits) if activation == "relu" else torch.nn.functional.softplus(logits)
            assert torch.allclose(-log_decay, delta, atol=1e-14)
            S, kept = torch.zeros(2, r, s, dtype=x.dtype), torch.zeros(2, 40, s, dtype=torch.bool)
            for i in range(40):  # one token at a time, as decoding runs it
                _, new = semiseparable_step(q[:, i], k[:, i], written[:, i], S, log_decay[:, i])
                kept[:, i] = (new == S).all(dim=1)  # head (= value channel) by head: unchanged bit for bit
                S = new
        assert bool(kept.any()) == kept_somewhere
        if kept_somewhere:  # exactly where the projection is <= 0, and nowhere else
            assert torch.equal(kept, logits <= 0) and 0.1 < kept.double().mean() < 0.9
        # the mixer adds the gated ss_out of that recurrence
        gamma = torch.exp(-delta)
        ss, _ = decayed_reference(q / r**0.5, k, v * (1 - gamma), gamma)
        _, added = with_and_without_term(mixer, x)
        with torch.no_grad():
            expected = mixer.ss_out(ss) * torch.nn.functional.silu(mixer.in_proj(x)[..., -x.shape[-1]:])
        assert expected.abs().max() > 0.01 * added.abs().max() and torch.allclose(added, expected, atol=1e-12)


def test_semiseparable_decay_conv_takes_the_decays_from_the_last_w_tokens_and_starts_as_the_identity():
    """semiseparable_decay_conv=True: the decay heads' projections W x + b go through the term's causal convolution
    with its q, k and v, so head h's logit at i is c_h + sum_j T[h, w-1-j] (W x_{i-j} + b)_h over the last w tokens;
    at initialisation the taps are the identity, so the model equals the model without it on the same weights."""
    w, r, s = 3, 4, 8
    options = dict(use_semiseparable=True, low_rank=r, semiseparable_value_dim=s, semiseparable_decay_heads=s,
                   semiseparable_conv_width=w, initializer_range=0.2)
    model = tiny_model(semiseparable_decay_conv=True, **options)
    ids = torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))

    def without_decay_conv(m):
        other = tiny_model(**options)
        weights = {name: (t[: 2 * r + s] if "ss_conv" in name else t) for name, t in m.state_dict().items()}
        other.load_state_dict(weights)
        return other

    with torch.no_grad():
        assert torch.allclose(model(ids).logits, without_decay_conv(model)(ids).logits, rtol=0, atol=1e-12)
        random_option_weights(model)  # drawn at random, the decays' taps change the logits
        assert (model(ids).logits - without_decay_conv(model)(ids).logits).abs().max() > 1e-3
    mixer, x, _ = capture_mixer(model, ids)
    N = x.shape[1]
    with torch.no_grad():
        z = mixer.ss_decay(x)
        T, c = mixer.ss_conv.weight[-s:, 0], mixer.ss_conv.bias[-s:]
        mixed = torch.stack([c + sum(T[:, w - 1 - j] * z[:, i - j] for j in range(w) if i - j >= 0) for i in range(N)], 1)
        *_, logits, window = mixer.semiseparable_inputs(x, None, None)
        assert torch.allclose(logits, mixed, atol=1e-12) and not torch.allclose(logits, z, atol=1e-3)
        # the window carries the decays' last w - 1 projections with q, k and v's: continuing from it is one pass
        *_, first, win = mixer.semiseparable_inputs(x[:, :5], None, None)
        *_, rest, _ = mixer.semiseparable_inputs(x[:, 5:], None, win)
        assert torch.allclose(torch.cat([first, rest], 1), logits, atol=1e-12)


@pytest.mark.parametrize("chain", ["token", "lead"])
def test_conv_width_mixes_the_last_w_projections_and_starts_as_the_identity(chain):
    """conv_width=w: the chain's inputs at i come from sum_s W[:, w-1-s] z_{i-s} + b over the projections z of the
    last w tokens (not the gate; nothing before position 1), and continuing from the window equals one pass; at
    initialisation the taps are the identity, so the model equals the same model without the convolution."""
    w = 3
    model = tiny_model(conv_width=w, chain=chain, **({"key_dim": 2} if chain == "lead" else {}))
    ids = torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    without = copy.deepcopy(model)
    for layer in without.model.layers:
        del layer.mixer.conv
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, without(ids).logits, rtol=0, atol=1e-12)
        # drawn at random, the taps change the logits, and the inputs are the explicit sum
        random_option_weights(model)
        assert (model(ids).logits - without(ids).logits).abs().max() > 1e-3
        mixer, x, _ = capture_mixer(model, ids)
        N, d = x.shape[1], x.shape[-1]
        positions, couple = torch.arange(1, N + 1).expand(2, N), torch.ones(2, N, 1, dtype=x.dtype)
        z = mixer.in_proj(x)[..., :-d]
        W, b = mixer.conv.weight[:, 0], mixer.conv.bias  # (width, w)
        mixed = torch.stack([b + sum(W[:, w - 1 - s] * z[:, i - s] for s in range(w) if i - s >= 0) for i in range(N)], 1)
        (a, t, v, kq, gate), window = mixer.chain_inputs(x, positions, couple)
        (a0, t0, v0, kq0, gate0), _ = without.model.layers[0].mixer.chain_inputs(x, positions, couple)
        H, P = mixer.num_channels, mixer.channel_dim
        if chain == "token":
            a_raw, t_raw, v_raw, _ = mixed.split([H, H, H * P, 2 * H * mixer.key_dim], -1)
            assert torch.allclose(a, mixer.potential(a_raw, positions), atol=1e-12)
            assert torch.allclose(t, torch.sigmoid(t_raw), atol=1e-12)
        else:
            v_raw, kq_raw = mixed.split([H * P, 2 * H * mixer.key_dim], -1)
            assert torch.allclose(kq, kq_raw, atol=1e-12) and torch.equal(t, t0)
        assert torch.allclose(v, v_raw, atol=1e-12) and not torch.allclose(v, v0, atol=1e-3)
        assert torch.equal(gate, gate0)  # the gate is the token's own
        # the window: the last w - 1 projections; continuing from it equals the single pass
        assert torch.equal(window, z[:, -(w - 1) :])
        (_, _, v1, _, _), win1 = mixer.chain_inputs(x[:, :5], positions[:, :5], couple[:, :5])
        (_, _, v2, _, _), _ = mixer.chain_inputs(x[:, 5:], positions[:, 5:], couple[:, 5:], None, win1)
        assert torch.allclose(torch.cat([v1, v2], 1), v, atol=1e-12)


def test_semiseparable_conv_width_mixes_the_terms_last_w_projections_and_starts_as_the_identity():
    """semiseparable_conv_width=w: the semiseparable term's q, k and v at i come from sum_s W[:, w-1-s] z_{i-s} + b
    over its projections z of the last w tokens (nothing before position 1), and the mixer adds the gated decayed
    recurrence of those; at initialisation the taps are the identity, so the model equals the same model without
    the convolution. A decay per value (8 values, 8 heads), as docs section 7.10 measures it."""
    w, r, s = 3, 4, 8
    options = dict(use_semiseparable=True, low_rank=r, semiseparable_value_dim=s, semiseparable_decay_heads=s,
                   initializer_range=0.2)
    model = tiny_model(semiseparable_conv_width=w, **options)
    ids = torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))

    def without_conv(m):
        m = copy.deepcopy(m)
        for layer in m.model.layers:
            del layer.mixer.ss_conv
        return m

    with torch.no_grad():
        assert torch.allclose(model(ids).logits, without_conv(model)(ids).logits, rtol=0, atol=1e-12)
        random_option_weights(model)  # drawn at random, the taps change the logits
        assert (model(ids).logits - without_conv(model)(ids).logits).abs().max() > 1e-3
    mixer, x, _ = capture_mixer(model, ids)
    N = x.shape[1]
    mask, positions = torch.ones(2, N, dtype=x.dtype), torch.arange(1, N + 1).expand(2, N)
    mask_prev = torch.cat([torch.zeros(2, 1, dtype=x.dtype), mask[:, 1:]], 1)
    _, added = with_and_without_term(mixer, x)
    with torch.no_grad():
        z = mixer.ss_proj(x)
        W, b = mixer.ss_conv.weight[:, 0], mixer.ss_conv.bias
        mixed = torch.stack([b + sum(W[:, w - 1 - j] * z[:, i - j] for j in range(w) if i - j >= 0) for i in range(N)], 1)
        q, k, v = mixed.split([r, r, s], -1)
        gamma = torch.exp(-torch.nn.functional.softplus(mixer.ss_decay(x)))
        ss, _ = decayed_reference(q / r**0.5, k, v * (1 - gamma), gamma)
        expected = mixer.ss_out(ss) * torch.nn.functional.silu(mixer.in_proj(x)[..., -x.shape[-1] :])
        unmixed, _ = decayed_reference(z[..., :r] / r**0.5, z[..., r : 2 * r], z[..., 2 * r :] * (1 - gamma), gamma)
        # the comparison can fail: the term of the unconvolved projections is far from it
        assert (mixer.ss_out(unmixed) - mixer.ss_out(ss)).abs().max() > 0.1 * mixer.ss_out(ss).abs().max()
        assert torch.allclose(added, expected, atol=1e-12)
        # the window it hands the cache: the last w - 1 projections
        state = mixer(x, mask, mask_prev, positions, return_state=True)[2]
        assert torch.equal(state["ss_conv"], z[:, -(w - 1) :])


@pytest.mark.parametrize("option", sorted(OPTION_CONTRIBUTIONS))
def test_each_option_changes_the_output_of_the_same_model(option):
    """Against the same model (same parameters) with only the option's contribution removed."""
    check_option_contributes(option)


def test_keyed_resolvent_reads_out_q_of_the_green_function_applied_to_key_value_outer_products():
    """key_dim: out_i = q_i^T sum_j G^(i)[i, j] k_j v_j^T per channel, with unit keys and queries (dense check)."""
    model = tiny_model(key_dim=3)
    ids = torch.randint(0, 64, (1, 11))
    mixer, x, feats = capture_mixer(model, ids)
    H, P, K = mixer.num_channels, mixer.channel_dim, mixer.key_dim
    with torch.no_grad():
        a_raw, t_raw, v, kq, _ = mixer.in_proj(x).split([H, H, H * P, 2 * H * K, x.shape[-1]], -1)
        a, hop = 3 * torch.tanh(a_raw[0] / 3), torch.sigmoid(t_raw[0, 1:])
        k, q = torch.nn.functional.normalize(kq[0].view(-1, 2, H, K), dim=-1).unbind(1)
        E, eta = mixer.energy_eta()
        v = v[0].view(-1, H, P)
        for ch in range(H):
            rows = dense_causal_rows(a[:, ch], hop[:, ch], float(E[ch]), float(eta[ch]))
            for i, row in enumerate(rows):
                kv = k[: i + 1, ch, :, None] * v[: i + 1, ch, None, :]  # (i+1, K, P)
                state = (row[:, None, None] * kv.to(torch.complex128)).sum(0)
                expected = (q[i, ch, :, None].to(torch.complex128) * state).sum(0) * float(eta[ch])
                got = torch.complex(feats[0, i, ch, :P], feats[0, i, ch, P : 2 * P])
                assert torch.allclose(got, expected, atol=1e-10), (ch, i)
    # the read-out is bounded by the value norm (Ward identity with unit keys and queries): |eta y_i| <= ||v_{1..i}||
    big = tiny_model(key_dim=3, dtype=torch.float64)
    with torch.no_grad():
        big.model.embed_tokens.weight.mul_(100)
    _, xb, fb = capture_mixer(big, torch.randint(0, 64, (2, 300)))
    assert torch.isfinite(fb).all()


def test_ward_feature_norm_scales_y_by_the_energy_of_the_past_and_stays_below_the_value_norm():
    """feature_norm="ward": the features are sqrt(eta / Im g_i) * y_i with y and g from dense inverses, and
    |sqrt(eta / Im g_i) y_i| <= ||v_{1..i}|| (Ward identity + Cauchy-Schwarz) for huge inputs, nothing clamped."""
    model = tiny_model(feature_norm="ward")
    ids = torch.randint(0, 64, (1, 12))
    mixer, x, feats = capture_mixer(model, ids)
    P = mixer.channel_dim
    with torch.no_grad():
        a, hop, v, E, eta = mixer_inputs(mixer, x)
        for ch in range(mixer.num_channels):
            rows = dense_causal_rows(a[:, ch], hop[:, ch], float(E[ch]), float(eta[ch]))
            for i, row in enumerate(rows):
                y = (row[:, None] * v[: i + 1, ch].to(torch.complex128)).sum(0)
                expected = y * math.sqrt(float(eta[ch]) / row[i].imag)
                got = torch.complex(feats[0, i, ch, :P], feats[0, i, ch, P : 2 * P])
                assert torch.allclose(got, expected, atol=1e-10), (ch, i)
    # against the "eta" scaling of the same parameters, a long-memory channel's features are not shrunk by eta
    eta_model = tiny_model(feature_norm="eta")
    _, _, eta_feats = capture_mixer(eta_model, ids)
    assert feats[..., 0, : 2 * P].abs().mean() > 3 * eta_feats[..., 0, : 2 * P].abs().mean()
    big = tiny_model(feature_norm="ward")
    with torch.no_grad():
        big.model.embed_tokens.weight.mul_(100)
    ids = torch.randint(0, 64, (2, 300))
    mixer, xb, fb = capture_mixer(big, ids)
    with torch.no_grad():
        H = mixer.num_channels
        v = mixer.in_proj(xb).split([H, H, H * P, xb.shape[-1]], -1)[2].view(2, 300, H, P)
    v_norm = torch.sqrt(torch.cumsum((v**2).sum(-1), dim=1))
    y_abs = torch.sqrt(fb[..., :P] ** 2 + fb[..., P : 2 * P] ** 2).norm(dim=-1)
    assert torch.isfinite(fb).all() and (y_abs <= v_norm * (1 + 1e-9)).all()
    assert (y_abs / v_norm).max() > 0.1  # the bound is approached, not vacuous


def test_lead_chain_is_the_resolvent_of_a_chain_with_a_long_explicit_lead():
    """chain="lead": features equal q_i^T sum_j G^(i)[i, j] (k_j / sqrt(K)) v_j^T and g_i, with G^(i) the inverse of a
    dense prefix Hamiltonian that has M = 400 explicit lead sites of hopping t to the left of position 1 (no g*
    formula): |t g*|^(2M) < 1e-17 at the smallest eta here, 0.01."""
    model = tiny_model(chain="lead", key_dim=3, lead_eta_min=0.01)
    ids = torch.randint(0, 64, (1, 11))
    mixer, x, feats = capture_mixer(model, ids)
    H, P, K, M = mixer.num_channels, mixer.channel_dim, mixer.key_dim, 400
    t = model.config.lead_hopping
    assert (model.config.key_norm, model.config.feature_norm) == ("scaled", "none")
    with torch.no_grad():
        v, kq, _ = mixer.in_proj(x).split([H * P, 2 * H * K, x.shape[-1]], -1)
        k, q = kq[0].view(-1, 2, H, K).unbind(1)
        k = k / math.sqrt(K)
        v = v[0].view(-1, H, P)
        E, eta = mixer.energy_eta()
        assert torch.allclose(E, torch.full((H,), 2 * t, dtype=E.dtype))  # the top edge of the band
        for ch in range(H):
            n = x.shape[1]
            rows = dense_causal_rows(torch.zeros(M + n), torch.full((M + n,), t), float(E[ch]), float(eta[ch]))[M:]
            for i, row in enumerate(rows):
                row = row[M:]  # the chain's own sites; the lead carries no values
                kv = k[: i + 1, ch, :, None] * v[: i + 1, ch, None, :]
                expected = (q[i, ch, :, None].to(torch.complex128) * (row[:, None, None] * kv).sum(0)).sum(0)
                got = torch.complex(feats[0, i, ch, :P], feats[0, i, ch, P : 2 * P])
                assert torch.allclose(got, expected, atol=1e-10), (ch, i)
                g = complex(feats[0, i, ch, 2 * P], feats[0, i, ch, 2 * P + 1]) / float(eta[ch])
                assert abs(g - complex(row[i])) < 1e-10, (ch, i)
    # the lead matters: the same chain with an open end (nothing left of position 1) has another g_1
    open_g = 1 / complex(-float(E[0]), -float(eta[0]))
    first = complex(feats[0, 0, 0, 2 * P], feats[0, 0, 0, 2 * P + 1]) / float(eta[0])
    assert abs(first - open_g) > 0.5


def test_lead_scan_equals_the_general_scan_in_values_and_gradients():
    """The lead chain's own path (chunked powers of lam = -t g*) against green_scan continued from (g*, y0) with
    hop_in = t, both float64: the same g, y and gradients with respect to the values and the incoming y0."""
    from hubtrain.models.resnet_bk.green_scan import green_scan

    model = tiny_model(chain="lead", key_dim=2, lead_eta_min=1e-3)
    mixer = model.model.layers[0].mixer
    B, N, H, W = 2, 150, mixer.num_channels, 2 * mixer.channel_dim
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(B, N, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
    y0 = [torch.randn(B, H, W, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    probe = [torch.randn(B, N, H, *s, generator=gen, dtype=torch.float64) for s in ((), (), (W,), (W,))]
    t = model.config.lead_hopping
    energy, eta = mixer.energy_eta()
    g_re, g_im, _, _ = mixer.lead_state(None, torch.zeros(B, 1, dtype=torch.float64), B, W)
    results = []
    for run in (lambda: mixer.lead_scan(u, tuple(y0), chunk_size=16),
                lambda: green_scan(torch.zeros(B, N, H, dtype=torch.float64), torch.full((B, N, H), t, dtype=torch.float64),
                                   energy, eta, u, None, chunk_size=16, initial=(g_re, g_im, *y0),
                                   hop_in=torch.full((B, H), t, dtype=torch.float64))):
        out = run()
        grads = torch.autograd.grad(sum((o * p).sum() for o, p in zip(out, probe)), [u, *y0])
        results.append(([o.detach() for o in out], grads))
    (out0, grad0), (out1, grad1) = results
    assert out0[2].abs().max() > 1.0  # values that travelled: not a degenerate zero comparison
    for a, b in zip(out0 + list(grad0), out1 + list(grad1)):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)
    # and autograd's gradients of the chunked path are the finite differences' (across chunk ends: 19 = 3 x 6 + 1)
    small = [x[:1, :19].detach().requires_grad_() for x in (u,)] + [y[:1].detach().requires_grad_() for y in y0]
    assert torch.autograd.gradcheck(lambda uu, r, i: mixer.lead_scan(uu, (r, i), chunk_size=6)[2:], small)


def test_lead_chain_read_out_is_bounded_by_the_value_norm_through_the_ward_identity():
    """|y_i| <= ||v_{1..i}|| sqrt(Im g_i / eta) (sum_j |G[i, j]|^2 <= Im g_i / eta: the lead only adds to Im g_i),
    on 300-token inputs scaled by 100, nothing clamped, and approached."""
    big = tiny_model(chain="lead", lead_eta_min=1e-3)
    with torch.no_grad():
        big.model.embed_tokens.weight.mul_(100)
    ids = torch.randint(0, 64, (2, 300))
    mixer, xb, fb = capture_mixer(big, ids)
    H, P = mixer.num_channels, mixer.channel_dim
    with torch.no_grad():
        v = mixer.in_proj(xb).split([H * P, xb.shape[-1]], -1)[0].view(2, 300, H, P)
        _, eta = mixer.energy_eta()
    v_norm = torch.sqrt(torch.cumsum((v**2).sum(-1), dim=1))
    y_abs = torch.sqrt(fb[..., :P] ** 2 + fb[..., P : 2 * P] ** 2).norm(dim=-1)
    bound = v_norm * torch.sqrt(fb[..., 2 * P + 1] / eta / eta)  # the feature is eta Im g_i
    assert torch.isfinite(fb).all() and (y_abs <= bound * (1 + 1e-9)).all()
    assert (y_abs / bound).max() > 0.1


def test_token_absorption_is_a_diagonal_of_the_hamiltonian_and_keeps_the_read_out_below_the_value_norm():
    """absorption="token": eta_ij = epsilon + softplus(rho_j + W_eta x_i) per token and channel, the features are
    sqrt(eta_i) sum_j G^(i)[i, j] sqrt(eta_j) v_j and eta_i g_i with G^(i) the inverse of the dense prefix matrix
    H^(i) - E - i diag(eta), and |sqrt(eta_i) y_i| <= ||v_{1..i}|| (sum_j eta_j |G[i, j]|^2 = Im g_i <= 1 / eta_i)
    on huge inputs, nothing clamped. The absorption's weights are drawn wide, so eta varies from token to token."""
    model = random_option_weights(tiny_model(absorption="token"))
    ids = torch.randint(0, 64, (1, 12))
    mixer, x, feats = capture_mixer(model, ids)
    P, c = mixer.channel_dim, model.config
    with torch.no_grad():
        a, hop, v, E, _ = mixer_inputs(mixer, x)
        eta = c.epsilon + torch.nn.functional.softplus(mixer.rho + mixer.absorb_proj(x[0]))  # (N, H)
        assert (eta.max(0).values / eta.min(0).values).min() > 3  # every channel's eta moves with the token
        for ch in range(mixer.num_channels):
            rows = dense_causal_rows(a[:, ch], hop[:, ch], float(E[ch]), eta[:, ch])
            for i, row in enumerate(rows):
                w = (eta[: i + 1, ch].sqrt()[:, None] * v[: i + 1, ch]).to(torch.complex128)
                expected = (row[:, None] * w).sum(0) * eta[i, ch].sqrt()
                got = torch.complex(feats[0, i, ch, :P], feats[0, i, ch, P : 2 * P])
                assert torch.allclose(got, expected, atol=1e-10), (ch, i)
                g = torch.complex(feats[0, i, ch, 2 * P], feats[0, i, ch, 2 * P + 1])
                assert torch.allclose(g, row[i] * eta[i, ch], atol=1e-10), (ch, i)
    big = random_option_weights(tiny_model(absorption="token"))
    with torch.no_grad():
        big.model.embed_tokens.weight.mul_(100)
    ids = torch.randint(0, 64, (2, 300))
    mixer, xb, fb = capture_mixer(big, ids)
    with torch.no_grad():
        H = mixer.num_channels
        v = mixer.in_proj(xb).split([H, H, H * P, xb.shape[-1]], -1)[2].view(2, 300, H, P)
    v_norm = torch.sqrt(torch.cumsum((v**2).sum(-1), dim=1))
    y_abs = torch.sqrt(fb[..., :P] ** 2 + fb[..., P : 2 * P] ** 2).norm(dim=-1)
    assert torch.isfinite(fb).all() and (y_abs <= v_norm * (1 + 1e-9)).all()
    assert (y_abs / v_norm).max() > 0.1  # the bound is approached, not vacuous


def test_keyed_resolvent_contributes_what_the_plain_values_cannot():
    """The same model with and without keys differs only through the keyed state: zeroing keys' contribution (all
    queries orthogonal to all keys) removes the value read-out entirely."""
    model = tiny_model(key_dim=2)
    ids = torch.randint(0, 64, (1, 9))
    mixer = model.model.layers[0].mixer
    _, _, feats = capture_mixer(model, ids)
    P = mixer.channel_dim
    assert feats[..., : 2 * P].abs().max() > 1e-3
    original = mixer.read_out
    mixer.read_out = lambda y, q: original(y, torch.zeros_like(q))
    _, _, zeroed = capture_mixer(model, ids)
    mixer.read_out = original
    assert zeroed[..., : 2 * P].abs().max() == 0 and torch.equal(zeroed[..., 2 * P :], feats[..., 2 * P :])


def test_scattering_router_is_parameter_free_and_routes_by_phase():
    model = tiny_model(use_scattering_router=True, num_experts=4, top_k=2, scattering_scale=0.3)
    moe = model.model.layers[0].moe
    assert not hasattr(moe, "router") and sum(p.numel() for n, p in moe.named_parameters() if "router" in n) == 0
    phase = torch.tensor([0.1, 1.0, 2.0, 3.0], dtype=torch.float64)
    weights, idx, aux = moe.route(torch.zeros(4, 32, dtype=torch.float64), phase, torch.ones(4, dtype=torch.float64))
    centres = math.pi * (torch.arange(4, dtype=torch.float64) + 0.5) / 4
    for t in range(4):
        logits = -((phase[t] - centres) ** 2) / 0.3**2
        top = logits.topk(2)
        assert idx[t].tolist() == top.indices.tolist()
        assert torch.allclose(weights[t], torch.softmax(top.values, -1))
    assert aux.item() == 0.0

    # in the model the phase is the mean argument of g over channels, which lies in (0, pi)
    mixer = model.model.layers[0].mixer
    out = {}
    mixer.register_forward_hook(lambda m, args, o: out.update(phase=o[1]))
    with torch.no_grad():
        model(torch.randint(0, 64, (2, 16)))
    assert ((out["phase"] > 0) & (out["phase"] < math.pi)).all()


def test_learned_router_adds_the_switch_load_balancing_loss():
    model = tiny_model(num_experts=3, top_k=2, router_aux_loss_coef=0.5)
    ids = torch.randint(0, 64, (2, 12))
    inputs = []
    hooks = [block.moe.register_forward_hook(lambda m, args, out: inputs.append((m, args[0], out[1])))
             for block in model.model.layers]
    out = model(ids, labels=ids)
    for h in hooks:
        h.remove()
    expected = []
    for moe, x, aux in inputs:
        probs = torch.softmax(x.reshape(-1, 32) @ moe.router.weight.T, -1)
        chosen = torch.zeros_like(probs).scatter_(1, probs.topk(2, dim=-1).indices, 1.0)
        # E * sum_e (fraction of routing slots sent to e) * (mean router probability of e)
        expected.append(3 * (chosen.mean(0) / 2 * probs.mean(0)).sum())
        assert torch.allclose(aux, expected[-1])
    assert torch.allclose(out.aux_loss, torch.stack(expected).mean())
    assert torch.allclose(out.loss, out.lm_loss + 0.5 * out.aux_loss)
    out.aux_loss.backward()
    assert model.model.layers[0].moe.router.weight.grad.abs().sum() > 0  # the loss trains the router


def test_act_reports_fewer_layers_with_a_high_threshold_and_adds_a_ponder_cost():
    ids = torch.randint(0, 64, (2, 10))
    eager = tiny_model(use_act=True, act_halt_threshold=0.95, n_layers=3, act_ponder_weight=0.1)
    out = eager(ids, labels=ids)
    assert out.act_mean_layers < 3
    assert out.act_mean_layers >= 1
    assert torch.allclose(out.loss, out.lm_loss + 0.01 * out.aux_loss + 0.1 * out.ponder_cost)
    patient = tiny_model(use_act=True, act_halt_threshold=0.001, n_layers=3)
    assert patient(ids).act_mean_layers == 3
    # a halted token is not updated: with one layer used everywhere, ACT output == first block only
    with torch.no_grad():
        for block in eager.model.layers:
            block.halt.bias.fill_(50.0)  # p = 1 at the first layer: every token halts there
        one = eager(ids, output_hidden_states=True)
    assert one.act_mean_layers == 1
    assert torch.equal(one.hidden_states[1], one.hidden_states[2])


def test_mourre_keeps_energies_inside_the_band_and_lap_keeps_eta_above_epsilon():
    m = tiny_model(use_mourre=True, mourre_margin=0.1).model.layers[0].mixer
    with torch.no_grad():
        m.energy.copy_(torch.tensor([-1e3, 0.3, 1e3]))
    E, _ = m.energy_eta()
    assert (E.abs() < 2 * 0.9 + 1e-12).all() and E.abs().max() > 1.79
    free = tiny_model(use_mourre=False).model.layers[0].mixer
    with torch.no_grad():
        free.energy.copy_(torch.tensor([-1e3, 0.3, 1e3]))
    assert free.energy_eta()[0].abs().max() == 1e3

    lap = tiny_model(use_lap=True, epsilon=0.2).model.layers[0].mixer
    with torch.no_grad():
        lap.rho.fill_(-50.0)
    assert (lap.energy_eta()[1] >= 0.2).all()
    nolap = tiny_model(use_lap=False, epsilon=0.2).model.layers[0].mixer
    with torch.no_grad():
        nolap.rho.fill_(-5.0)
    eta = nolap.energy_eta()[1]
    assert (eta > 0).all() and (eta < 0.2).all()


def test_initial_channels_span_several_memory_lengths():
    mixer = tiny_model(num_channels=8).model.layers[0].mixer
    E, eta = mixer.energy_eta()
    assert torch.allclose(E, torch.linspace(-1, 1, 8, dtype=E.dtype), atol=1e-9)
    assert 0.05 < eta.min() < 0.07 and 0.95 < eta.max() < 1.05


def test_dropout_p_is_applied_in_training_only():
    model = tiny_model(dropout_p=0.5)
    ids = torch.randint(0, 64, (1, 8))
    assert torch.equal(model(ids).logits, model(ids).logits)
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon=-1.0), "epsilon"),
        (dict(num_experts=2, top_k=3), "top_k"),
        (dict(top_k=0), "top_k"),
        (dict(d_model=0), "d_model"),
        (dict(dropout_p=1.0), "dropout_p"),
        (dict(schatten_threshold=1.0), "use_birman_schwinger"),
        (dict(use_birman_schwinger=True, schatten_threshold=0.0), "schatten_threshold"),
        (dict(scattering_scale=0.0), "scattering_scale"),
        (dict(act_halt_threshold=1.0), "act_halt_threshold"),
        (dict(low_rank=0), "low_rank"),
        (dict(k_max=0), "k_max"),
        (dict(num_channels=0), "num_channels"),
        (dict(mourre_margin=1.5), "mourre_margin"),
        (dict(chain="ring"), "chain"),
        (dict(conv_width=-1), "conv_width"),
        (dict(conv_width=2.0), "conv_width"),
        (dict(use_semiseparable=True, semiseparable_conv_width=-1), "semiseparable_conv_width"),
        (dict(semiseparable_conv_width=4), "use_semiseparable=True"),
        (dict(key_norm="l2"), "key_norm"),
        (dict(feature_norm="sqrt"), "feature_norm"),
        (dict(chain="lead", lead_hopping=0.0), "lead_hopping"),
        (dict(chain="lead", lead_eta_min=1.0), "lead_eta_min"),
        (dict(chain="lead", use_mourre=True), "use_mourre"),
        (dict(chain="lead", use_birman_schwinger=True), "use_birman_schwinger"),
        (dict(absorption="position"), "absorption"),
        (dict(absorption="token", chain="lead"), "chain='lead'"),
        (dict(absorption="token", feature_norm="ward"), "feature_norm='ward'"),
        (dict(absorption="token", use_birman_schwinger=True), "use_birman_schwinger=True"),
        (dict(semiseparable_decay_heads=-1), "semiseparable_decay_heads=-1"),
        (dict(semiseparable_decay_heads=2), "use_semiseparable=True"),
        (dict(use_semiseparable=True, low_rank=6, semiseparable_decay_heads=4), "low_rank=6"),
        (dict(use_semiseparable=True, semiseparable_value_dim=0), "semiseparable_value_dim=0"),
        (dict(semiseparable_value_dim=8), "use_semiseparable=True"),
        (dict(use_semiseparable=True, semiseparable_value_dim=6, semiseparable_decay_heads=4), "semiseparable_value_dim=6"),
        (dict(use_semiseparable=True, semiseparable_decay_heads=4, semiseparable_decay_activation="exp"), "'exp'"),
        (dict(use_semiseparable=True, semiseparable_decay_activation="relu"), "semiseparable_decay_heads > 0"),
        (dict(use_semiseparable=True, semiseparable_decay_heads=4, semiseparable_decay_conv=True),
         "semiseparable_conv_width > 1"),
        (dict(use_semiseparable=True, semiseparable_conv_width=4, semiseparable_decay_conv=True),
         "semiseparable_decay_heads > 0"),
    ],
)
def test_bad_options_raise_errors_that_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ResNetBKConfig(**kwargs)
