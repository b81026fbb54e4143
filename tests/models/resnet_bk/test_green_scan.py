"""The Green's-function scan against dense linear algebra, across its three implementations, and at the limits.

Independent reference: g_i and y_i are the last row of (H^(i) - z)^-1 for the prefix Hamiltonian H^(i), inverted
densely with torch.linalg.inv in complex128.
"""
from __future__ import annotations

import pytest
import torch

from checks import adversarial_scan_inputs, assert_matches_scan_reference
from hubtrain.models.resnet_bk import green_scan, green_scan_reference, green_scan_step


def make_inputs(B=2, N=37, H=3, P=4, dtype=torch.float64, seed=0, complex_values=True, eta_per_position=False):
    gen = torch.Generator().manual_seed(seed)
    a = 3 * torch.tanh(torch.randn(B, N, H, generator=gen, dtype=dtype))
    hop = torch.sigmoid(torch.randn(B, N, H, generator=gen, dtype=dtype))
    z_re = torch.linspace(-1, 1, H, dtype=dtype)
    z_im = torch.logspace(-1.2, 0, H, dtype=dtype)  # eta from 0.063 to 1: long and short memory
    if eta_per_position:  # absorption="token": each position's own eta, spread over a factor of about 50
        z_im = z_im * torch.exp(torch.randn(B, N, H, generator=gen, dtype=dtype))
    u_re = torch.randn(B, N, H, P, generator=gen, dtype=dtype)
    u_im = torch.randn(B, N, H, P, generator=gen, dtype=dtype) if complex_values else None
    return a, hop, z_re, z_im, u_re, u_im


def run_steps(a, hop, z_re, z_im, u_re, u_im):
    state, outs = None, []
    for i in range(a.shape[1]):
        hop_prev = hop[:, i - 1] if i else torch.zeros_like(a[:, 0])
        z_im_i = z_im if z_im.dim() == 1 else z_im[:, i]
        state = green_scan_step(a[:, i], hop_prev, z_re, z_im_i, u_re[:, i], None if u_im is None else u_im[:, i], state)
        outs.append(state)
    return tuple(torch.stack([o[k] for o in outs], 1) for k in range(4))


@pytest.mark.parametrize("eta_per_position", [False, True], ids=["eta-per-channel", "eta-per-position"])
def test_scan_equals_dense_inverse_of_every_prefix_hamiltonian(eta_per_position):
    """With one absorption per position, z_j = E + i eta_j on the diagonal of the prefix matrix."""
    a, hop, z_re, z_im, u_re, u_im = make_inputs(B=2, N=12, H=3, P=2, eta_per_position=eta_per_position)
    outs = {"fast": green_scan(a, hop, z_re, z_im, u_re, u_im, chunk_size=4),
            "reference": green_scan_reference(a, hop, z_re, z_im, u_re, u_im),
            "steps": run_steps(a, hop, z_re, z_im, u_re, u_im)}
    for b in range(2):
        for h in range(3):
            eta = z_im[b, :, h] if eta_per_position else z_im[h].expand(12)
            for i in range(12):
                Hm = torch.diag(a[b, : i + 1, h]) + torch.diag(hop[b, :i, h], 1) + torch.diag(hop[b, :i, h], -1)
                z = torch.diag(torch.complex(z_re[h].expand(i + 1), eta[: i + 1]))
                G = torch.linalg.inv(Hm.to(torch.complex128) - z)
                y = G[i] @ torch.complex(u_re[b, : i + 1, h], u_im[b, : i + 1, h])
                for g_re, g_im, y_re, y_im in outs.values():
                    assert abs(complex(g_re[b, i, h], g_im[b, i, h]) - G[i, i].item()) < 1e-10
                    assert (torch.complex(y_re[b, i, h], y_im[b, i, h]) - y).abs().max() < 1e-10


@pytest.mark.parametrize("N,chunk,per_position", [(1, 16, False), (5, 16, False), (100, 16, False), (257, 8, False),
                                                (300, 64, False), (5, 16, True), (257, 8, True)])
def test_fast_reference_and_step_agree_in_float64(N, chunk, per_position):
    x = make_inputs(N=N, eta_per_position=per_position)
    ref = green_scan_reference(*x)
    for out in (green_scan(*x, chunk_size=chunk), run_steps(*x)):
        for r, o in zip(ref, out):
            assert (r - o).abs().max().item() < 1e-10


@pytest.mark.parametrize("complex_values,per_position", [(True, False), (False, False), (False, True)])
def test_fast_and_step_agree_with_reference_in_float32(complex_values, per_position):
    x64 = make_inputs(B=2, N=600, H=4, P=8, complex_values=complex_values, seed=1, eta_per_position=per_position)
    ref = green_scan_reference(*x64)
    x32 = [None if t is None else t.float() for t in x64]
    scale = max(ref[2].abs().max().item(), ref[3].abs().max().item())
    g_scale = max(ref[0].abs().max().item(), ref[1].abs().max().item())
    for out in (green_scan(*x32), run_steps(*x32)):
        assert all(o.dtype == torch.float32 for o in out)
        assert (out[0].double() - ref[0]).abs().max() / g_scale < 1e-5
        assert (out[1].double() - ref[1]).abs().max() / g_scale < 1e-5
        assert (out[2].double() - ref[2]).abs().max() / scale < 1e-5
        assert (out[3].double() - ref[3]).abs().max() / scale < 1e-5


@pytest.mark.parametrize("eta_per_position", [False, True], ids=["eta-per-channel", "eta-per-position"])
def test_fast_scan_gradients_pass_gradcheck(eta_per_position):
    a, hop, z_re, z_im, u_re, u_im = make_inputs(B=1, N=11, H=2, P=2, seed=3, eta_per_position=eta_per_position)
    inputs = tuple(t.clone().requires_grad_(True) for t in (a, hop, z_re, z_im, u_re, u_im))
    # chunk_size=4 exercises both levels of the scan (inside chunks and across chunk totals) and the ragged tail
    assert torch.autograd.gradcheck(lambda *t: green_scan(*t, chunk_size=4), inputs, eps=1e-6, atol=1e-7)


def test_gradient_is_exact_where_the_coupling_is_exactly_zero():
    """Padding sets a hopping to exactly 0; the derivative there must still be the true one (no log of 0)."""
    a, hop, z_re, z_im, u_re, u_im = make_inputs(B=1, N=9, H=2, P=2, seed=4)
    hop = hop.clone()
    hop[:, 3] = 0.0
    inputs = tuple(t.clone().requires_grad_(True) for t in (a, hop, z_re, z_im, u_re, u_im))
    assert torch.autograd.gradcheck(lambda *t: green_scan(*t, chunk_size=4), inputs, eps=1e-6, atol=1e-7)


def test_ward_identity_bounds_hold_for_adversarial_inputs_at_16k_tokens():
    """Huge potentials, hoppings at both ends of (0, 1), huge values, long sequence, nothing clamped: the float32 scan
    equals the float64 reference (measured: 2e-7 of each channel's scale; 2.5 s for the reference), |g| <= 1/eta,
    Im g >= 0 (to rounding), and |y_i| <= ||u_{1..i}|| / eta."""
    inputs = a, hop, z_re, z_im, u_re = adversarial_scan_inputs(16384)
    g_re, g_im, y_re, y_im = outputs = green_scan(a, hop, z_re, z_im, u_re, None)
    for t in outputs:
        assert torch.isfinite(t).all()
    assert_matches_scan_reference(inputs, outputs)
    g_abs = torch.sqrt(g_re.double() ** 2 + g_im.double() ** 2)
    assert (g_abs <= (1 / z_im.double()) * (1 + 1e-5)).all()
    # Im g > 0 exactly; in float32 it is known to rounding relative to |g| (here |a| ~ 1e4 puts Im g at 1e-11)
    assert (g_im.double() >= -1e-6 * g_abs).all()
    y_abs = torch.sqrt(y_re.double() ** 2 + y_im.double() ** 2)
    u_norm = torch.sqrt(torch.cumsum(u_re.double() ** 2, dim=1))
    assert (y_abs <= u_norm / z_im.double()[:, None] * (1 + 1e-4)).all()


def test_continuing_from_a_state_equals_the_tail_of_one_scan():
    a, hop, z_re, z_im, u_re, u_im = make_inputs(N=150, seed=6)
    full = green_scan(a, hop, z_re, z_im, u_re, u_im, chunk_size=8)
    for k in (1, 9, 149):
        state = tuple(o[:, k - 1] for o in full)
        tail = green_scan(a[:, k:], hop[:, k:], z_re, z_im, u_re[:, k:], u_im[:, k:], chunk_size=4,
                          initial=state, hop_in=hop[:, k - 1])
        for f, t in zip(full, tail):
            assert (f[:, k:] - t).abs().max() < 1e-12
    # and the gradient flows into the state exactly
    small = [t[:1, :7, :2, :2].clone() if t.dim() == 4 else t[:1, :7, :2].clone() for t in (a, hop, u_re, u_im)]
    state = tuple(t.clone().requires_grad_(True) for t in (full[0][:1, 0, :2], full[1][:1, 0, :2], full[2][:1, 0, :2, :2], full[3][:1, 0, :2, :2]))
    hop_in = hop[:1, 0, :2].clone().requires_grad_(True)
    fn = lambda *s: green_scan(small[0], small[1], z_re[:2], z_im[:2], small[2], small[3], chunk_size=2,
                               initial=s[:4], hop_in=s[4])
    assert torch.autograd.gradcheck(fn, (*state, hop_in), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("eta_per_position", [False, True], ids=["eta-per-channel", "eta-per-position"])
def test_results_do_not_depend_on_the_chunk_size(eta_per_position):
    x = make_inputs(N=200, dtype=torch.float64, seed=5, eta_per_position=eta_per_position)
    base = green_scan(*x, chunk_size=1)
    for chunk in (2, 16, 256):
        for r, o in zip(base, green_scan(*x, chunk_size=chunk)):
            assert (r - o).abs().max() < 1e-11


def test_bad_shapes_are_named():
    a, hop, z_re, z_im, u_re, u_im = make_inputs(N=5)
    with pytest.raises(ValueError, match="u_re"):
        green_scan(a, hop, z_re, z_im, u_re[:, :4], u_im)
    with pytest.raises(ValueError, match="z_re"):
        green_scan(a, hop, z_re[:2], z_im, u_re, u_im)
