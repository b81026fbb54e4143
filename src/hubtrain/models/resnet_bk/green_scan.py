"""The causal Green's-function scan of ResNet-BK, in real arithmetic.

For one channel, positions i = 1..N, potential a_i, hoppings t_i > 0 (t_i couples i and i+1) and an energy
z = E + i*eta with eta > 0, the prefix Hamiltonians H^(i) are tridiagonal and

    g_i = 1 / (a_i - z - t_{i-1}^2 g_{i-1})        (g_1 = 1 / (a_1 - z))
    y_i = g_i (u_i - t_{i-1} y_{i-1})              (y_1 = g_1 u_1)

are the diagonal of (H^(i) - z)^-1 and the resolvent applied to the values, both causal.  Three implementations
compute the same numbers:

* ``green_scan_reference`` runs the recurrences one position at a time (for tests);
* ``green_scan`` is the fast default.  The sequence is cut into C chunks of L ~ sqrt(N) positions and every
  recurrence runs L steps inside all chunks at once, then C steps across chunk ends: for g, each chunk's 2x2
  transfer-matrix product (M_i = [[0, 1], [-t_{i-1}^2, a_i - z]], renormalised, since only the ratio g = p/q
  matters) gives the Moebius map from the g entering the chunk to the g leaving it, those maps are chained across
  chunks, and the recurrence itself is then run inside all chunks from their incoming g; y_i = A_i y_{i-1} + g_i u_i
  (A_i = -t_{i-1} g_i) is a linear recurrence, scanned the same way.  The forward builds no autograd graph; the
  backward is analytic: the adjoints of both recurrences are linear recurrences run in reverse by the same
  chunked scan (formulas in ``_GreenScan``).  Gradients are exact (gradcheck in float64), memory is the inputs
  and outputs only (linear in N), and O(L + C) small tensor ops per call;
* ``green_scan_step`` advances the state (g, y) by one token, for decoding;
* under ``torch.export`` (``torch.compiler.is_exporting()``, which ONNX export uses), ``green_scan`` runs
  ``green_scan_step`` under torch's ``scan`` operator instead: one graph for every sequence length (an ONNX
  ``Scan``), with the numbers of the sequential reference; under ``torch.jit.trace`` it runs the same recurrence as
  a ``torch.jit.script`` loop, which a TorchScript archive keeps as a loop over any length.  The model chooses
  these paths itself, as transformers' Mamba mixer chooses between its kernel and its slow path; exporters never
  patch it.

Complex numbers are written out as (real, imaginary) pairs of real tensors so the model exports to ONNX.
Nothing is clamped: |g| <= 1/eta and the Ward identity |y_i| <= ||u_{1..i}|| / eta keep every intermediate finite.
This file imports only torch: it is copied next to the modeling file when a model is saved.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["green_scan", "green_scan_reference", "green_scan_step"]

GreenState = tuple[Tensor, Tensor, Tensor, Tensor]


def _check_shapes(a: Tensor, hop: Tensor, z_re: Tensor, z_im: Tensor, u_re: Tensor, u_im: Optional[Tensor]) -> None:
    if a.dim() != 3 or hop.shape != a.shape:
        raise ValueError(f"green_scan: a and hop must both be (B, N, H), got {tuple(a.shape)} and {tuple(hop.shape)}")
    H = a.shape[-1]
    if z_re.shape != (H,) or z_im.shape not in ((H,), a.shape):
        raise ValueError(
            f"green_scan: z_re must be ({H},) and z_im ({H},) or {tuple(a.shape)}, got {tuple(z_re.shape)} and {tuple(z_im.shape)}"
        )
    if u_re.dim() != 4 or u_re.shape[:3] != a.shape:
        raise ValueError(f"green_scan: u_re must be (B, N, H, P) with (B, N, H) = {tuple(a.shape)}, got {tuple(u_re.shape)}")
    if u_im is not None and u_im.shape != u_re.shape:
        raise ValueError(f"green_scan: u_im must match u_re {tuple(u_re.shape)}, got {tuple(u_im.shape)}")


def green_scan_step(
    a: Tensor,
    hop_prev: Tensor,
    z_re: Tensor,
    z_im: Tensor,
    u_re: Tensor,
    u_im: Optional[Tensor] = None,
    state: Optional[GreenState] = None,
) -> GreenState:
    """Advance the scan by one position.

    a, hop_prev: (B, H), where hop_prev couples the previous position to this one; z_im: (H,) or this position's
    absorption (B, H); u_re, u_im: (B, H, P)
    (u_im=None means real values); state: (g_re, g_im, y_re, y_im) of the previous position, or None at the
    first position.  Returns the state at this position, which is also this position's output.
    """
    d_re = a - z_re
    if state is None:
        d_im = (-z_im).expand_as(a)
    else:
        g_re, g_im, y_re, y_im = state
        t2 = hop_prev * hop_prev
        d_re = d_re - t2 * g_re
        d_im = -z_im - t2 * g_im
    den = d_re * d_re + d_im * d_im  # >= eta^2 > 0 because Im(d) <= -eta
    ng_re, ng_im = d_re / den, -d_im / den
    gr, gi = ng_re.unsqueeze(-1), ng_im.unsqueeze(-1)
    if state is None:  # w = u
        if u_im is None:
            return ng_re, ng_im, gr * u_re, gi * u_re
        return ng_re, ng_im, gr * u_re - gi * u_im, gr * u_im + gi * u_re
    t = hop_prev.unsqueeze(-1)
    w_re = u_re - t * y_re
    w_im = -t * y_im if u_im is None else u_im - t * y_im
    return ng_re, ng_im, gr * w_re - gi * w_im, gr * w_im + gi * w_re


def green_scan_reference(
    a: Tensor, hop: Tensor, z_re: Tensor, z_im: Tensor, u_re: Tensor, u_im: Optional[Tensor] = None
) -> GreenState:
    """The recurrences of the design note, one position at a time.  Slow; the ground truth for tests."""
    _check_shapes(a, hop, z_re, z_im, u_re, u_im)
    state: Optional[GreenState] = None
    outs = []
    for i in range(a.shape[1]):
        hop_prev = hop[:, i - 1] if i > 0 else torch.zeros_like(a[:, 0])
        z_im_i = z_im if z_im.dim() == 1 else z_im[:, i]
        state = green_scan_step(a[:, i], hop_prev, z_re, z_im_i, u_re[:, i], None if u_im is None else u_im[:, i], state)
        outs.append(state)
    return tuple(torch.stack([o[k] for o in outs], dim=1) for k in range(4))  # type: ignore[return-value]


def _green_scan_traceable(
    a: Tensor, t: Tensor, z_re: Tensor, z_im: Tensor, u_re: Tensor, u_im: Optional[Tensor], initial: Optional[GreenState]
) -> GreenState:
    """The export form: ``green_scan_step`` looped by torch's ``scan`` operator over positions (t[:, i] = t_{i-1}).

    Without a state the first position sees t = 0, which makes its update the state-less one, so a zero state
    is exactly the state before a sequence.  The absorption is scanned with the other inputs, (B, N, H) always.
    """
    from torch._higher_order_ops.scan import scan

    B, N, H = a.shape
    z_im = z_im.expand_as(a)
    if u_im is None:
        u_im = torch.zeros_like(u_re)
    if initial is None:
        zeros_g, zeros_y = a.new_zeros(B, H), u_re.new_zeros(B, H, u_re.shape[-1])
        initial = (zeros_g, zeros_g.clone(), zeros_y, zeros_y.clone())

    def body(carry: GreenState, xs: tuple[Tensor, ...]) -> tuple[GreenState, GreenState]:
        a_i, t_i, zi_i, ur_i, ui_i = xs
        new = green_scan_step(a_i, t_i, z_re, zi_i, ur_i, ui_i, carry)
        # scan requires carries and outputs that do not alias each other
        return tuple(x.clone() for x in new), tuple(x.clone() for x in new)  # type: ignore[return-value]

    xs = tuple(x.transpose(0, 1) for x in (a, t, z_im, u_re, u_im))  # scan (and ONNX Scan) iterate over axis 0
    _, outs = scan(body, tuple(initial), xs, dim=0)
    return tuple(o.transpose(0, 1) for o in outs)  # type: ignore[return-value]


def _sequential_scan(a: Tensor, t: Tensor, z_re: Tensor, z_im: Tensor, u_re: Tensor, u_im: Tensor, g_re: Tensor,
                     g_im: Tensor, y_re: Tensor, y_im: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The TorchScript form: ``green_scan_step``'s update position after position, written for ``torch.jit.script``
    (t[:, i] = t_{i-1}, z_im (B, N, H); the state is the one before the first position, zeros for a new sequence)."""
    outs: List[List[Tensor]] = [[], [], [], []]
    for i in range(a.shape[1]):
        ti = t[:, i]
        t2 = ti * ti
        d_re = a[:, i] - z_re - t2 * g_re
        d_im = -z_im[:, i] - t2 * g_im
        den = d_re * d_re + d_im * d_im
        g_re, g_im = d_re / den, -d_im / den
        w_re = u_re[:, i] - ti.unsqueeze(-1) * y_re
        w_im = u_im[:, i] - ti.unsqueeze(-1) * y_im
        gr, gi = g_re.unsqueeze(-1), g_im.unsqueeze(-1)
        y_re, y_im = gr * w_re - gi * w_im, gr * w_im + gi * w_re
        for k, value in enumerate([g_re, g_im, y_re, y_im]):
            outs[k].append(value)
    return torch.stack(outs[0], 1), torch.stack(outs[1], 1), torch.stack(outs[2], 1), torch.stack(outs[3], 1)


@functools.cache
def _scripted_scan():
    return torch.jit.script(_sequential_scan)  # compiled on first trace, not at import


# ----------------------------------------------------------------------------------------------------------------
# fast path: chunked recurrences with an analytic backward


def _lay(x: Tensor, C: int, L: int) -> Tensor:
    """(B, N, ...) -> (L, B, C, ...), zero-padded to C * L positions: step l of every chunk is one contiguous slice."""
    B, N = x.shape[:2]
    if C * L != N:
        x = torch.cat([x, x.new_zeros(B, C * L - N, *x.shape[2:])], 1)
    return x.reshape(B, C, L, *x.shape[2:]).movedim(2, 0).contiguous()


def _unlay(x: Tensor, N: int) -> Tensor:
    """(L, B, C, ...) -> (B, N, ...), dropping the padding."""
    L, B, C = x.shape[:3]
    return x.movedim(0, 2).reshape(B, C * L, *x.shape[3:])[:, :N]


def _linear_scan(Ar: Tensor, Ai: Tensor, xr: Tensor, xi: Tensor, x0r: Optional[Tensor], x0i: Optional[Tensor]):
    """In place, x_k = A_k x_{k-1} + b_k along the whole (laid-out) sequence, x before the first position = x0.

    A: (L, B, C, H) complex coefficients, x: (L, B, C, H[, P]) holding b on entry and x on return.  Inside all
    chunks at once from zero (with the running products of A), across chunk ends one chunk at a time, then each
    chunk's incoming x carried through its running products.
    """
    L, B, C = xr.shape[:3]
    ex = (lambda t: t.unsqueeze(-1)) if xr.dim() > Ar.dim() else (lambda t: t)
    nAi = -Ai
    cr, ci = torch.empty_like(Ar), torch.empty_like(Ai)
    cr[0], ci[0] = Ar[0], Ai[0]
    # unbind once: views of every step without per-step indexing
    Ar_, Ai_, nAi_ = Ar.unbind(0), Ai.unbind(0), nAi.unbind(0)
    eAr, eAi, enAi = ex(Ar).unbind(0), ex(Ai).unbind(0), ex(nAi).unbind(0)
    xr_, xi_, cr_, ci_ = xr.unbind(0), xi.unbind(0), cr.unbind(0), ci.unbind(0)
    for k in range(1, L):
        xr_[k].addcmul_(eAr[k], xr_[k - 1]).addcmul_(enAi[k], xi_[k - 1])
        xi_[k].addcmul_(eAr[k], xi_[k - 1]).addcmul_(eAi[k], xr_[k - 1])
        torch.mul(Ar_[k], cr_[k - 1], out=cr_[k]).addcmul_(nAi_[k], ci_[k - 1])
        torch.mul(Ar_[k], ci_[k - 1], out=ci_[k]).addcmul_(Ai_[k], cr_[k - 1])
    if C == 1 and x0r is None:
        return xr, xi
    # x entering each chunk: chunk-major so that every step is one contiguous slice
    end_r, end_i = xr[-1].movedim(1, 0), xi[-1].movedim(1, 0)  # (C, B, ...)
    tot_r, tot_i = ex(cr[-1]).movedim(1, 0), ex(ci[-1]).movedim(1, 0)
    in_r, in_i = xr.new_zeros(xr.shape[1:]).movedim(1, 0).contiguous(), xi.new_zeros(xi.shape[1:]).movedim(1, 0).contiguous()
    if x0r is not None:
        in_r[0], in_i[0] = x0r, x0i
    er_, ei_, tr_, ti_, nti_ = end_r.unbind(0), end_i.unbind(0), tot_r.unbind(0), tot_i.unbind(0), (-tot_i).unbind(0)
    ir_, ii_ = in_r.unbind(0), in_i.unbind(0)
    for c in range(1, C):
        torch.addcmul(er_[c - 1], tr_[c - 1], ir_[c - 1], out=ir_[c]).addcmul_(nti_[c - 1], ii_[c - 1])
        torch.addcmul(ei_[c - 1], tr_[c - 1], ii_[c - 1], out=ii_[c]).addcmul_(ti_[c - 1], ir_[c - 1])
    in_r, in_i = in_r.movedim(0, 1), in_i.movedim(0, 1)  # (B, C, ...)
    cr, ci = ex(cr), ex(ci)
    xr.addcmul_(cr, in_r).addcmul_(-ci, in_i)
    xi.addcmul_(cr, in_i).addcmul_(ci, in_r)
    return xr, xi


def _g_scan(dr: Tensor, eta: Tensor, t2: Tensor, g0r: Optional[Tensor], g0i: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """g_k = 1 / (d_k - t2_k g_{k-1}) with d = dr - i eta, on laid-out (L, B, C, H) tensors; g before = g0.

    eta: (H,) per channel, or laid out like dr: per position."""
    L, B, C, H = dr.shape
    eta_ = eta.unbind(0) if eta.dim() == 4 else [eta] * L
    # each chunk's Moebius map g_in -> g_out: the transfer-matrix product Q = M_L ... M_1, M = [[0, 1], [-t2, d]],
    # rows stacked as (re, im of column 0, re, im of column 1) and renormalised every step (g is a ratio)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=dr.dtype, device=dr.device).view(4, 1, 1, 1)
    swap = torch.tensor([1, 0, 3, 2], device=dr.device)
    row0 = dr.new_zeros(4, B, C, H)
    row0[2] = 1.0
    row1 = torch.stack([-t2[0], torch.zeros_like(dr[0]), dr[0], (-eta_[0]).expand(B, C, H)])
    dr_, t2_ = dr.unbind(0), t2.unbind(0)
    for k in range(1, L):
        new = (row1 * dr_[k]).addcmul_(row1.index_select(0, swap), sign * eta_[k]).addcmul_(row0, t2_[k], value=-1.0)
        s = new.abs().amax(0)
        row0, row1 = row1.div_(s), new.div_(s)
    # g entering each chunk, one chunk at a time: g_in[c] = Q[c-1](g_in[c-1])
    q0, q1 = row0.permute(2, 0, 1, 3), row1.permute(2, 0, 1, 3)  # (C, 4, B, H)
    gin_r, gin_i = dr.new_zeros(C, B, H), dr.new_zeros(C, B, H)
    if g0r is not None:
        gin_r[0], gin_i[0] = g0r, g0i
    for c in range(1, C):
        a, b, gr, gi = q0[c - 1], q1[c - 1], gin_r[c - 1], gin_i[c - 1]
        nr = a[0] * gr - a[1] * gi + a[2]
        ni = a[0] * gi + a[1] * gr + a[3]
        er = b[0] * gr - b[1] * gi + b[2]
        ei = b[0] * gi + b[1] * gr + b[3]
        den = er * er + ei * ei
        torch.div(nr * er + ni * ei, den, out=gin_r[c])
        torch.div(ni * er - nr * ei, den, out=gin_i[c])
    # inside every chunk at once, the recurrence itself from the incoming g (contractive: stable in float32)
    g_re, g_im = torch.empty_like(dr), torch.empty_like(dr)
    gr, gi = gin_r.movedim(0, 1), gin_i.movedim(0, 1)
    gre_, gim_ = g_re.unbind(0), g_im.unbind(0)
    for k in range(L):
        d_re = dr_[k] - t2_[k] * gr
        d_im = -eta_[k] - t2_[k] * gi
        den = d_re * d_re + d_im * d_im  # >= eta^2
        gr = torch.div(d_re, den, out=gre_[k])
        gi = torch.div(d_im, den, out=gim_[k]).neg_()
    return g_re, g_im


class _GreenScan(torch.autograd.Function):
    """Forward: the recurrences evaluated chunk-wise with no graph.  Backward: their adjoints, two reverse linear scans.

    With G_w = dL/dRe w + i dL/dIm w (holomorphic chain rule) and A_i = -t_{i-1} g_i, k_i = t_{i-1}^2 g_i^2,
    w_i = u_i - t_{i-1} y_{i-1}:
        lambda_i = Gy_i + conj(A_{i+1}) lambda_{i+1}                          (adjoint of y)
        mu_i     = Gg_i + sum_P conj(w_i) lambda_i + conj(k_{i+1}) mu_{i+1}     (adjoint of g)
    and dL/du_i = conj(g_i) lambda_i, dL/da_i = Re(conj(-g_i^2) mu_i), dL/dz = sum conj(g_i^2) mu_i (the summand
    itself for an absorption per position),
    dL/dt_{i-1} = Re sum_P conj(-g_i y_{i-1}) lambda_i + 2 t_{i-1} Re(conj(g_i^2 g_{i-1}) mu_i),
    dL/dy_0 = conj(A_1) lambda_1, dL/dg_0 = conj(k_1) mu_1 for a continued state.
    """

    @staticmethod
    def forward(ctx, a, t, z_re, z_im, u_re, u_im, g0_re, g0_im, y0_re, y0_im, L):
        B, N, H = a.shape
        C = -(-N // L)
        dr, tl = _lay(a - z_re, C, L), _lay(t, C, L)
        # absorption per position is laid out too, padded with 1 (not 0) so the padding's g stays finite
        eta = z_im if z_im.dim() == 1 else _lay(z_im - 1.0, C, L) + 1.0
        gl_re, gl_im = _g_scan(dr, eta, tl * tl, g0_re, g0_im)
        ur = _lay(u_re, C, L)
        gr, gi = gl_re.unsqueeze(-1), gl_im.unsqueeze(-1)
        if u_im is None:
            br, bi = gr * ur, gi * ur
        else:
            ui = _lay(u_im, C, L)
            br, bi = (gr * ur).addcmul_(gi, ui, value=-1.0), (gr * ui).addcmul_(gi, ur)
        yl_re, yl_im = _linear_scan(-tl * gl_re, -tl * gl_im, br, bi, y0_re, y0_im)
        g_re, g_im, y_re, y_im = (_unlay(x, N) for x in (gl_re, gl_im, yl_re, yl_im))
        ctx.save_for_backward(t, u_re, u_im, g_re, g_im, y_re, y_im, g0_re, g0_im, y0_re, y0_im)
        ctx.L, ctx.eta_per_position = L, z_im.dim() == 3
        return g_re, g_im, y_re, y_im

    @staticmethod
    @once_differentiable
    def backward(ctx, Gg_re, Gg_im, Gy_re, Gy_im):
        t, u_re, u_im, g_re, g_im, y_re, y_im, g0_re, g0_im, y0_re, y0_im = ctx.saved_tensors
        B, N, H = g_re.shape
        L = ctx.L
        C = -(-N // L)

        def rscan(kr: Tensor, ki: Tensor, sr: Tensor, si: Tensor) -> tuple[Tensor, Tensor]:
            """x_i = s_i + conj(k_{i+1}) x_{i+1}: the forward scan on the reversed sequence."""
            kr, ki = kr.flip(1)[:, :-1], ki.flip(1)[:, :-1].neg()
            kr, ki = (torch.cat([x.new_zeros(B, 1, H), x], 1) for x in (kr, ki))
            xr, xi = _linear_scan(_lay(kr, C, L), _lay(ki, C, L), _lay(sr.flip(1), C, L), _lay(si.flip(1), C, L),
                                  None, None)
            return _unlay(xr, N).flip(1), _unlay(xi, N).flip(1)

        zeros = torch.zeros_like
        Gg_re = zeros(g_re) if Gg_re is None else Gg_re
        Gg_im = zeros(g_im) if Gg_im is None else Gg_im
        Gy_re = zeros(y_re) if Gy_re is None else Gy_re
        Gy_im = zeros(y_im) if Gy_im is None else Gy_im
        gr, gi = g_re.unsqueeze(-1), g_im.unsqueeze(-1)
        lr, li = rscan(-t * g_re, -t * g_im, Gy_re, Gy_im)  # adjoint of y
        grad_u_re = gr * lr + gi * li
        grad_u_im = None if u_im is None else gr * li - gi * lr
        # values before each position: y_{i-1} and g_{i-1} (the continued state, or zero, before the first)
        y0r = y_re.new_zeros(B, 1, *y_re.shape[2:]) if y0_re is None else y0_re.unsqueeze(1)
        y0i = y_im.new_zeros(B, 1, *y_im.shape[2:]) if y0_im is None else y0_im.unsqueeze(1)
        yp_re, yp_im = torch.cat([y0r, y_re[:, :-1]], 1), torch.cat([y0i, y_im[:, :-1]], 1)
        g0r = g_re.new_zeros(B, 1, H) if g0_re is None else g0_re.unsqueeze(1)
        g0i = g_im.new_zeros(B, 1, H) if g0_im is None else g0_im.unsqueeze(1)
        gp_re, gp_im = torch.cat([g0r, g_re[:, :-1]], 1), torch.cat([g0i, g_im[:, :-1]], 1)
        tt = t.unsqueeze(-1)
        w_re = u_re - tt * yp_re
        w_im = -tt * yp_im if u_im is None else u_im - tt * yp_im
        e_re = Gg_re + (w_re * lr + w_im * li).sum(-1)
        e_im = Gg_im + (w_re * li - w_im * lr).sum(-1)
        py_re, py_im = gr * yp_re - gi * yp_im, gr * yp_im + gi * yp_re  # g_i y_{i-1}
        grad_t = -(py_re * lr + py_im * li).sum(-1)
        g2_re, g2_im = g_re * g_re - g_im * g_im, 2 * g_re * g_im
        t2 = t * t
        mr, mi = rscan(t2 * g2_re, t2 * g2_im, e_re, e_im)  # adjoint of g
        gd_re = -(g2_re * mr + g2_im * mi)  # conj(-g^2) mu
        gd_im = -(g2_re * mi - g2_im * mr)
        h_re, h_im = g2_re * gp_re - g2_im * gp_im, g2_re * gp_im + g2_im * gp_re  # g_i^2 g_{i-1}
        grad_t = grad_t + 2 * t * (h_re * mr + h_im * mi)
        grad_z_re = -gd_re.sum((0, 1))
        grad_z_im = -gd_im if ctx.eta_per_position else -gd_im.sum((0, 1))
        grad_g0 = grad_y0 = (None, None)
        if y0_re is not None:  # conj(A_1) lambda_1 and conj(k_1) mu_1
            a1r, a1i = (-t[:, 0] * g_re[:, 0]).unsqueeze(-1), (-t[:, 0] * g_im[:, 0]).unsqueeze(-1)
            l1r, l1i = lr[:, 0], li[:, 0]
            grad_y0 = (a1r * l1r + a1i * l1i, a1r * l1i - a1i * l1r)
            k1r, k1i = t2[:, 0] * g2_re[:, 0], t2[:, 0] * g2_im[:, 0]
            grad_g0 = (k1r * mr[:, 0] + k1i * mi[:, 0], k1r * mi[:, 0] - k1i * mr[:, 0])
        return (gd_re, grad_t, grad_z_re, grad_z_im, grad_u_re, grad_u_im, *grad_g0, *grad_y0, None)


def green_scan(
    a: Tensor,
    hop: Tensor,
    z_re: Tensor,
    z_im: Tensor,
    u_re: Tensor,
    u_im: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
    *,
    initial: Optional[GreenState] = None,
    hop_in: Optional[Tensor] = None,
) -> GreenState:
    """Green's-function scan for all positions at once.

    Args:
        a: (B, N, H) potential.  hop: (B, N, H) hopping, hop[:, i] couples positions i and i+1 (hop[:, N-1] unused).
        z_re, z_im: (H,) energy of each channel, z_im > 0; z_im may also be (B, N, H), an absorption per position
            (a non-Hermitian diagonal -i eta_i: |g_i| <= 1 / eta_i and sum_j eta_j |G[i, j]|^2 = Im g_i).
        u_re, u_im: (B, N, H, P) values (u_im=None for real values).
        chunk_size: positions per chunk (a speed knob; results do not depend on it).  None: about sqrt(N), which
            balances the steps inside chunks against the steps across them.
        initial, hop_in: continue a sequence instead of starting one: `initial` is the state (g_re, g_im, y_re,
            y_im) of the position before the first one here ((B, H) and (B, H, P)), `hop_in` (B, H) its coupling
            to the first position here.  The result equals the tail of one scan over the whole sequence, and
            gradients flow into the state and the coupling.
    Returns:
        g_re, g_im: (B, N, H) and y_re, y_im: (B, N, H, P), as defined in section 2 of docs/resnet_bk.md.
    """
    _check_shapes(a, hop, z_re, z_im, u_re, u_im)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"green_scan: chunk_size must be >= 1 or None (automatic), got {chunk_size}")
    if (initial is None) != (hop_in is None):
        raise ValueError("green_scan: pass both initial and hop_in to continue a sequence, or neither")
    B, N, H = a.shape
    # t[:, i] = t_{i-1}, the coupling into position i (zero before the first position of a new sequence)
    t_first = hop.new_zeros(B, 1, H) if hop_in is None else hop_in.unsqueeze(1)
    t = torch.cat([t_first, hop[:, :-1]], 1)
    if torch.compiler.is_exporting():
        return _green_scan_traceable(a, t, z_re, z_im, u_re, u_im, initial)
    if torch.jit.is_tracing():
        zeros_g, zeros_y = a.new_zeros(B, H), u_re.new_zeros(B, H, u_re.shape[-1])
        g0_re, g0_im, y0_re, y0_im = initial if initial is not None else (zeros_g, zeros_g, zeros_y, zeros_y)
        return _scripted_scan()(a, t, z_re, z_im.expand_as(a), u_re, torch.zeros_like(u_re) if u_im is None else u_im,
                                g0_re, g0_im, y0_re, y0_im)
    L = max(1, min(chunk_size if chunk_size is not None else max(8, math.isqrt(N)), N))
    g0, y0 = (None, None), (None, None)
    if initial is not None:
        g0, y0 = (initial[0], initial[1]), (initial[2], initial[3])
    return _GreenScan.apply(a, t, z_re, z_im, u_re, u_im, *g0, *y0, L)
