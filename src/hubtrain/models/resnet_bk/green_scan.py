"""The causal Green's-function scan of ResNet-BK, in real arithmetic.

For one channel, positions i = 1..N, potential a_i, hoppings t_i > 0 (t_i couples i and i+1) and an energy
z = E + i*eta with eta > 0, the prefix Hamiltonians H^(i) are tridiagonal and

    g_i = 1 / (a_i - z - t_{i-1}^2 g_{i-1})        (g_1 = 1 / (a_1 - z))
    y_i = g_i (u_i - t_{i-1} y_{i-1})              (y_1 = g_1 u_1)

are the diagonal of (H^(i) - z)^-1 and the resolvent applied to the values, both causal.  Three implementations
compute the same numbers:

* ``green_scan_reference`` runs the recurrences one position at a time (for tests);
* ``green_scan`` is the fast default, a two-level scan over chunks of ``chunk_size`` positions.  For g: each
  chunk's 2x2 transfer-matrix product (M_i = [[0, 1], [-t_{i-1}^2, a_i - z]], renormalised, since only the ratio
  g = p/q matters) by a pairwise product tree, prefixes of those across chunks by log-depth doubling, then the
  recurrence itself inside all chunks at once from the g entering each chunk.  For y: the linear recurrence
  y_i = A_i y_{i-1} + g_i u_i (A_i = -t_{i-1} g_i) inside all chunks at once from zero, the chunks' affine maps
  scanned across chunks by doubling, and each chunk's incoming y added back.  O(N) work and memory, about
  2 * chunk_size tensor ops per call whatever N, exact gradients from autograd through plain arithmetic
  (no logarithms, so an exactly-zero coupling is differentiated correctly);
* ``green_scan_step`` advances the state (g, y) by one token, for decoding.

Complex numbers are written out as (real, imaginary) pairs of real tensors so the model exports to ONNX.
Nothing is clamped: |g| <= 1/eta and the Ward identity |y_i| <= ||u_{1..i}|| / eta keep every intermediate finite.
This file imports only torch: it is copied next to the modeling file when a model is saved.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["green_scan", "green_scan_reference", "green_scan_step"]

GreenState = tuple[Tensor, Tensor, Tensor, Tensor]


def _check_shapes(a: Tensor, hop: Tensor, z_re: Tensor, z_im: Tensor, u_re: Tensor, u_im: Optional[Tensor]) -> None:
    if a.dim() != 3 or hop.shape != a.shape:
        raise ValueError(f"green_scan: a and hop must both be (B, N, H), got {tuple(a.shape)} and {tuple(hop.shape)}")
    H = a.shape[-1]
    if z_re.shape != (H,) or z_im.shape != (H,):
        raise ValueError(f"green_scan: z_re and z_im must be ({H},), got {tuple(z_re.shape)} and {tuple(z_im.shape)}")
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

    a, hop_prev: (B, H), where hop_prev couples the previous position to this one; u_re, u_im: (B, H, P)
    (u_im=None means real values); state: (g_re, g_im, y_re, y_im) of the previous position, or None at the
    first position.  Returns the state at this position, which is also this position's output.
    """
    d_re = a - z_re
    d_im = (-z_im).expand_as(a)
    if state is not None:
        g_re, g_im, y_re, y_im = state
        t2 = hop_prev * hop_prev
        d_re = d_re - t2 * g_re
        d_im = d_im - t2 * g_im
    den = d_re * d_re + d_im * d_im  # >= eta^2 > 0 because Im(d) <= -eta
    ng_re, ng_im = d_re / den, -d_im / den
    w_re, w_im = u_re, (u_im if u_im is not None else torch.zeros_like(u_re))
    if state is not None:
        t = hop_prev.unsqueeze(-1)
        w_re = w_re - t * y_re
        w_im = w_im - t * y_im
    gr, gi = ng_re.unsqueeze(-1), ng_im.unsqueeze(-1)
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
        state = green_scan_step(a[:, i], hop_prev, z_re, z_im, u_re[:, i], None if u_im is None else u_im[:, i], state)
        outs.append(state)
    return tuple(torch.stack([o[k] for o in outs], dim=1) for k in range(4))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# fast path: two-level associative scans


def _cmatmul(ar: Tensor, ai: Tensor, br: Tensor, bi: Tensor) -> tuple[Tensor, Tensor]:
    """Complex 2x2 matrix product A @ B on (..., 2, 2) real/imag parts, renormalised to max-abs entry 1.

    Only ratios of the matrix entries are ever used (g = p/q), so dividing by a positive number changes nothing;
    the normaliser is detached because the result is invariant to it (its exact derivative contribution is zero).
    """
    a_r, a_i = ar.unsqueeze(-1), ai.unsqueeze(-1)  # (..., i, j, 1)
    b_r, b_i = br.unsqueeze(-3), bi.unsqueeze(-3)  # (..., 1, j, k)
    cr = (a_r * b_r - a_i * b_i).sum(-2)
    ci = (a_r * b_i + a_i * b_r).sum(-2)
    scale = torch.maximum(cr.abs(), ci.abs()).amax(dim=(-2, -1), keepdim=True).detach()
    return cr / scale, ci / scale


def _shift(x: Tensor, d: int, dim: int, value: float) -> Tensor:
    """x moved d steps forward along ``dim``, the first d entries filled with ``value`` (one pad op each way)."""
    pads = [0, 0] * (x.dim() - 1 - dim) + [d, -d]
    return F.pad(x, pads, value=value)


def _matrix_total(mr: Tensor, mi: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """The product M_{n-1} ... M_0 along ``dim`` (length a power of two) by a pairwise tree: O(n) products."""
    while mr.shape[dim] > 1:
        pr, pi = mr.unflatten(dim, (-1, 2)), mi.unflatten(dim, (-1, 2))
        mr, mi = _cmatmul(pr.select(dim + 1, 1), pi.select(dim + 1, 1), pr.select(dim + 1, 0), pi.select(dim + 1, 0))
    return mr.squeeze(dim), mi.squeeze(dim)


def _matrix_prefix(mr: Tensor, mi: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Inclusive prefix products P_k = M_k ... M_0 along ``dim`` by log-depth doubling (Hillis-Steele).

    Shifted-in entries are the identity matrix, so the first d entries are left as they are.
    """
    n = mr.shape[dim]
    eye = torch.eye(2, dtype=mr.dtype, device=mr.device)
    d = 1
    while d < n:
        first = (torch.arange(n, device=mr.device) < d).to(mr.dtype).view(n, *([1] * (mr.dim() - 1 - dim)))
        sr = _shift(mr, d, dim, 0.0) + first * eye
        si = _shift(mi, d, dim, 0.0)
        mr, mi = _cmatmul(mr, mi, sr, si)
        d *= 2
    return mr, mi


def _affine_prefix(ar: Tensor, ai: Tensor, br: Tensor, bi: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inclusive scan of x_k = A_k x_{k-1} + b_k (x_{-1} = 0) along ``dim`` by doubling.

    A: (..., n, H) complex scalars, b: (..., n, H, P) complex vectors.  Returns (cumulative A products, x).
    Each A-product covers a contiguous run of positions, so it is a ratio of two Green's-function entries and
    stays bounded (see the module docstring).
    """
    n = ar.shape[dim]
    d = 1
    while d < n:
        qr, qi = _shift(br, d, dim, 0.0), _shift(bi, d, dim, 0.0)
        xr, xi = ar.unsqueeze(-1), ai.unsqueeze(-1)
        br, bi = (
            torch.addcmul(torch.addcmul(br, xr, qr), xi, qi, value=-1.0),
            torch.addcmul(torch.addcmul(bi, xr, qi), xi, qr),
        )
        pr, pi = _shift(ar, d, dim, 1.0), _shift(ai, d, dim, 0.0)
        ar, ai = ar * pr - ai * pi, ar * pi + ai * pr
        d *= 2
    return ar, ai, br, bi


def _shift_right(x: Tensor, dim: int) -> Tensor:
    """x shifted one step along ``dim`` (position 0 gets zeros): the exclusive predecessor of every element."""
    return _shift(x, 1, dim, 0.0)


def green_scan(
    a: Tensor,
    hop: Tensor,
    z_re: Tensor,
    z_im: Tensor,
    u_re: Tensor,
    u_im: Optional[Tensor] = None,
    chunk_size: int = 32,
    *,
    initial: Optional[GreenState] = None,
    hop_in: Optional[Tensor] = None,
) -> GreenState:
    """Green's-function scan for all positions at once.

    Args:
        a: (B, N, H) potential.  hop: (B, N, H) hopping, hop[:, i] couples positions i and i+1 (hop[:, N-1] unused).
        z_re, z_im: (H,) energy of each channel, z_im > 0.
        u_re, u_im: (B, N, H, P) values (u_im=None for real values).
        chunk_size: positions per chunk of the two-level scan (a speed knob; results do not depend on it).
        initial, hop_in: continue a sequence instead of starting one: `initial` is the state (g_re, g_im, y_re,
            y_im) of the position before the first one here ((B, H) and (B, H, P)), `hop_in` (B, H) its coupling
            to the first position here.  The result equals the tail of one scan over the whole sequence.
    Returns:
        g_re, g_im: (B, N, H) and y_re, y_im: (B, N, H, P), as defined in section 1 of docs/design/resnet_bk.md.
    """
    _check_shapes(a, hop, z_re, z_im, u_re, u_im)
    if chunk_size < 1:
        raise ValueError(f"green_scan: chunk_size must be >= 1, got {chunk_size}")
    B, N, H = a.shape
    P = u_re.shape[-1]
    # chunk length: a power of two (the product tree pairs neighbours), no longer than needed
    L = min(1 << (chunk_size.bit_length() - 1), 1 << (N - 1).bit_length())
    C = -(-N // L)
    pad = C * L - N
    if (initial is None) != (hop_in is None):
        raise ValueError("green_scan: pass both initial and hop_in to continue a sequence, or neither")
    if initial is None:
        t_prev = _shift_right(hop, 1)  # t_prev[:, i] = t_{i-1}, 0 at the first position
    else:
        t_prev = torch.cat([hop_in.unsqueeze(1), hop[:, :-1]], 1)
    if pad:  # trailing positions never influence earlier ones (causality), so any padding will do
        a = torch.cat([a, a.new_zeros(B, pad, H)], 1)
        t_prev = torch.cat([t_prev, t_prev.new_zeros(B, pad, H)], 1)
        u_re = torch.cat([u_re, u_re.new_zeros(B, pad, H, P)], 1)
        if u_im is not None:
            u_im = torch.cat([u_im, u_im.new_zeros(B, pad, H, P)], 1)

    # --- g: [p_i, q_i] = M_i [p_{i-1}, q_{i-1}], M_i = [[0, 1], [-t_{i-1}^2, a_i - z]], g_i = p_i / q_i.
    # Chunk totals by a pairwise product tree (O(N) work), prefixes across chunks by doubling (O(C log C)),
    # then inside each chunk the recurrence itself, all chunks at once, from the g entering the chunk.
    t2 = t_prev * t_prev
    c_re = a - z_re
    zero = torch.zeros_like(a)
    m_re = torch.stack([torch.stack([zero, torch.ones_like(a)], -1), torch.stack([-t2, c_re], -1)], -2)
    m_im = torch.stack([torch.stack([zero, zero], -1), torch.stack([zero, (-z_im).expand_as(a)], -1)], -2)
    tot_re, tot_im = _matrix_total(m_re.view(B, C, L, H, 2, 2), m_im.view(B, C, L, H, 2, 2), dim=2)
    pre_re, pre_im = _matrix_prefix(tot_re, tot_im, dim=1)  # (B, C, H, 2, 2): chunks 0..c
    # [p, q] entering chunk c is (product of chunks < c) @ [g_0, 1], with g_0 = 0 before the first position
    # (or the given state's g); the product of no chunks is the identity.  g = p / q.
    first = F.pad(a.new_ones(B, 1, H), (0, 0, 0, C - 1))  # 1 for chunk 0, 0 elsewhere
    pr, pi = _shift_right(pre_re[..., 0, 1], 1), _shift_right(pre_im[..., 0, 1], 1)
    qr, qi = _shift_right(pre_re[..., 1, 1], 1) + first, _shift_right(pre_im[..., 1, 1], 1)
    if initial is not None:
        g0r, g0i = initial[0].unsqueeze(1), initial[1].unsqueeze(1)
        p0r, p0i = _shift_right(pre_re[..., 0, 0], 1) + first, _shift_right(pre_im[..., 0, 0], 1)
        q0r, q0i = _shift_right(pre_re[..., 1, 0], 1), _shift_right(pre_im[..., 1, 0], 1)
        pr, pi = pr + p0r * g0r - p0i * g0i, pi + p0r * g0i + p0i * g0r
        qr, qi = qr + q0r * g0r - q0i * g0i, qi + q0r * g0i + q0i * g0r
    qq = qr * qr + qi * qi
    g_r, g_i = (pr * qr + pi * qi) / qq, (pi * qr - pr * qi) / qq  # (B, C, H)
    gs_re, gs_im = [], []
    neg_eta = -z_im
    for c_i, t2_i in zip(c_re.view(B, C, L, H).unbind(2), t2.view(B, C, L, H).unbind(2)):
        d_re = c_i - t2_i * g_r
        d_im = neg_eta - t2_i * g_i
        den = d_re * d_re + d_im * d_im  # >= eta^2
        g_r, g_i = d_re / den, -d_im / den
        gs_re.append(g_r)
        gs_im.append(g_i)
    g_re, g_im = torch.stack(gs_re, 2), torch.stack(gs_im, 2)  # (B, C, L, H)

    # --- y: y_i = g_i (u_i - t_{i-1} y_{i-1}) = A_i y_{i-1} + g_i u_i with A_i = -t_{i-1} g_i.
    # Inside chunks the recurrence from y = 0 (all chunks at once), with the running products of A;
    # across chunks the affine maps (A-product, local end) by doubling; then add each chunk's incoming y.
    t_l = t_prev.view(B, C, L, H).unbind(2)
    gr_l, gi_l = g_re.unbind(2), g_im.unbind(2)
    ur_l = u_re.view(B, C, L, H, P).unbind(2)
    ui_l = u_im.view(B, C, L, H, P).unbind(2) if u_im is not None else None
    loc_re, loc_im, cA_re, cA_im = [], [], [], []
    for k in range(L):
        gr, gi = gr_l[k].unsqueeze(-1), gi_l[k].unsqueeze(-1)
        if k == 0:  # the chunk's own first position: no incoming state (that is added below)
            w_re, w_im = ur_l[0], (ui_l[0] if ui_l is not None else None)
            a_re, a_im = -t_l[0] * gr_l[0], -t_l[0] * gi_l[0]
        else:
            tk = t_l[k].unsqueeze(-1)
            w_re = ur_l[k] - tk * y_r
            w_im = -tk * y_i if ui_l is None else ui_l[k] - tk * y_i
            A_re, A_im = -t_l[k] * gr_l[k], -t_l[k] * gi_l[k]
            a_re, a_im = A_re * a_re - A_im * a_im, A_re * a_im + A_im * a_re
        if w_im is None:
            y_r, y_i = gr * w_re, gi * w_re
        else:
            y_r, y_i = gr * w_re - gi * w_im, gr * w_im + gi * w_re
        loc_re.append(y_r)
        loc_im.append(y_i)
        cA_re.append(a_re)
        cA_im.append(a_im)
    # chunk ends: y_end_c = (A-product of chunk c) y_end_{c-1} + (local end of chunk c), scanned across chunks
    acc_re, acc_im, end_re, end_im = _affine_prefix(cA_re[-1], cA_im[-1], loc_re[-1], loc_im[-1], dim=1)
    yin_re = _shift_right(end_re, 1)  # y entering each chunk: (B, C, H, P)
    yin_im = _shift_right(end_im, 1)
    if initial is not None:  # plus the given state carried through all earlier chunks
        y0r, y0i = initial[2].unsqueeze(1), initial[3].unsqueeze(1)
        ar_, ai_ = (_shift(acc_re, 1, 1, 1.0).unsqueeze(-1), _shift(acc_im, 1, 1, 0.0).unsqueeze(-1))
        yin_re = yin_re + ar_ * y0r - ai_ * y0i
        yin_im = yin_im + ar_ * y0i + ai_ * y0r
    yin_re, yin_im = yin_re.unsqueeze(2), yin_im.unsqueeze(2)  # (B, C, 1, H, P)
    cr, ci = torch.stack(cA_re, 2).unsqueeze(-1), torch.stack(cA_im, 2).unsqueeze(-1)
    y_re = torch.stack(loc_re, 2) + cr * yin_re - ci * yin_im
    y_im = torch.stack(loc_im, 2) + cr * yin_im + ci * yin_re

    g_re, g_im = g_re.reshape(B, C * L, H)[:, :N], g_im.reshape(B, C * L, H)[:, :N]
    y_re, y_im = y_re.reshape(B, C * L, H, P)[:, :N], y_im.reshape(B, C * L, H, P)[:, :N]
    return g_re, g_im, y_re, y_im
