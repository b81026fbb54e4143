"""Exporting ResNet-BK: the scan as an ONNX ``Scan`` (dynamic length) and a decode step for PyTorch-free generation.

The training-time ``green_scan`` is an autograd Function whose chunked loops depend on the sequence length, so
``torch.export`` would either specialise it to the example length or unroll it. For export we run the *same*
one-position update (``green_scan_step`` of the model's own module) under ``torch``'s ``scan`` operator, which
the ONNX exporter turns into a single ``Scan`` node: one graph for every batch size and sequence length, with
the numbers of the sequential reference. TorchScript cannot record the autograd Function either; for
``torch.jit.trace`` the scan is the same recurrence as a ``torch.jit.script`` loop, which the trace keeps as a loop
over the positions of any length (:func:`traceable_green_scan`). Swapping happens only inside these context
managers; the model object itself is never modified.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import types
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor


def _make_exportable(step: Callable) -> Callable:
    """A drop-in ``green_scan`` that loops ``step`` over positions with ``torch``'s scan operator."""
    from torch._higher_order_ops.scan import scan

    def green_scan(a: Tensor, hop: Tensor, z_re: Tensor, z_im: Tensor, u_re: Tensor, u_im: Optional[Tensor] = None,
                   chunk_size: int = 16) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        del chunk_size  # only a speed knob of the chunked scan
        B, N, H = a.shape
        if u_im is None:
            u_im = torch.zeros_like(u_re)
        # hop[:, i] couples i and i+1, so position i sees t_{i-1}; position 0 sees 0, which makes the first
        # update equal to the state-less one (t^2 g and t y vanish).
        t_prev = torch.cat([torch.zeros_like(hop[:, :1]), hop[:, :-1]], dim=1)

        def body(carry, xs):
            a_i, t_i, ur_i, ui_i = xs
            new = step(a_i, t_i, z_re, z_im, ur_i, ui_i, carry)
            # scan requires carries and outputs that do not alias each other
            return tuple(x.clone() for x in new), tuple(x.clone() for x in new)

        zeros_g = a.new_zeros(B, H)
        zeros_y = u_re.new_zeros(u_re.shape[0], H, u_re.shape[-1])
        init = (zeros_g, zeros_g.clone(), zeros_y, zeros_y.clone())
        xs = tuple(x.transpose(0, 1) for x in (a, t_prev, u_re, u_im))  # ONNX Scan iterates over axis 0
        _, outs = scan(body, init, xs, dim=0)
        return tuple(o.transpose(0, 1) for o in outs)  # type: ignore[return-value]

    green_scan.__name__ = "green_scan"
    return green_scan


def _scan_modules() -> list[types.ModuleType]:
    """Modules that define or import ResNet-BK's ``green_scan`` (the package and any saved remote-code copy)."""
    found = []
    for module in list(sys.modules.values()):
        fn = getattr(module, "green_scan", None)
        if callable(fn) and getattr(fn, "__module__", "").endswith("green_scan") and not isinstance(fn, types.ModuleType):
            found.append(module)
    return found


def _moe_forward_without_guard(self, x: Tensor, phase: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """ResNet-BK's sparse MoE forward without the ``if no token chose this expert: continue`` branch.

    That Python branch on a data-dependent count is what ``torch.export`` cannot trace; dropping it changes
    nothing numerically (an expert nobody chose adds an empty ``index_add``), and each expert still runs only
    on the tokens routed to it.
    """
    import torch.nn.functional as F

    B, N, d = x.shape
    flat = x.reshape(-1, d)
    weights, idx, aux = self.route(flat, phase, mask)
    out = torch.zeros_like(flat)
    for e in range(self.config.num_experts):
        token, slot = torch.nonzero(idx == e, as_tuple=True)
        h = F.silu(flat[token] @ self.w_in[e]) @ self.w_out[e]
        out = out.index_add(0, token, h * weights[token, slot].unsqueeze(-1))
    return out.view(B, N, d), aux


def _sequential_green_scan(a: Tensor, hop: Tensor, z_re: Tensor, z_im: Tensor, u_re: Tensor,
                           u_im: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``green_scan_step`` applied position after position, written for ``torch.jit.script``."""
    B, N, H = a.shape[0], a.shape[1], a.shape[2]
    ui = torch.zeros_like(u_re) if u_im is None else u_im
    g_re = a.new_zeros(B, H)
    g_im = a.new_zeros(B, H)
    y_re = u_re.new_zeros(B, H, u_re.shape[-1])
    y_im = u_re.new_zeros(B, H, u_re.shape[-1])
    outs: List[List[Tensor]] = [[], [], [], []]
    for i in range(N):
        t = hop[:, i - 1] if i > 0 else torch.zeros_like(a[:, 0])  # position 0 has no coupling to the past
        t2 = t * t
        d_re = a[:, i] - z_re - t2 * g_re
        d_im = (-z_im).expand_as(g_re) - t2 * g_im
        den = d_re * d_re + d_im * d_im
        g_re, g_im = d_re / den, -d_im / den
        w_re = u_re[:, i] - t.unsqueeze(-1) * y_re
        w_im = ui[:, i] - t.unsqueeze(-1) * y_im
        gr, gi = g_re.unsqueeze(-1), g_im.unsqueeze(-1)
        y_re, y_im = gr * w_re - gi * w_im, gr * w_im + gi * w_re
        for k, value in enumerate([g_re, g_im, y_re, y_im]):
            outs[k].append(value)
    return torch.stack(outs[0], 1), torch.stack(outs[1], 1), torch.stack(outs[2], 1), torch.stack(outs[3], 1)


@functools.lru_cache(maxsize=None)
def _scripted_green_scan() -> Callable:
    return torch.jit.script(_sequential_green_scan)  # compiled on first use, not when hubtrain.export is imported


def _make_traceable(step: Callable) -> Callable:
    """A drop-in ``green_scan`` for ``torch.jit.trace``: the scripted loop above (``step`` is its eager twin)."""
    del step
    scripted = _scripted_green_scan()

    def green_scan(a: Tensor, hop: Tensor, z_re: Tensor, z_im: Tensor, u_re: Tensor, u_im: Optional[Tensor] = None,
                   chunk_size: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        del chunk_size  # only a speed knob of the chunked scan
        return scripted(a, hop, z_re, z_im, u_re, u_im)

    green_scan.__name__ = "green_scan"
    return green_scan


@contextlib.contextmanager
def exportable_green_scan() -> Iterator[None]:
    """Within the block, ResNet-BK runs in its export form: the scan-operator ``green_scan`` everywhere it is
    referenced, and the MoE layer without its data-dependent branch. Nothing is changed outside the block."""
    with _export_form(_make_exportable):
        yield


@contextlib.contextmanager
def traceable_green_scan() -> Iterator[None]:
    """Like :func:`exportable_green_scan`, for ``torch.jit.trace``: the scan is a scripted loop over positions, so
    a traced ResNet-BK runs at every sequence length, and the MoE layer has no data-dependent branch to freeze."""
    with _export_form(_make_traceable):
        yield


@contextlib.contextmanager
def _export_form(make_scan: Callable[[Callable], Callable]) -> Iterator[None]:
    patched: list[tuple[object, str, Callable]] = []
    try:
        for module in _scan_modules():
            original = module.green_scan
            defining = sys.modules.get(original.__module__)
            step = getattr(defining, "green_scan_step", None)
            if step is None:
                continue
            patched.append((module, "green_scan", original))
            module.green_scan = make_scan(step)
        for module in list(sys.modules.values()):
            moe = getattr(module, "ResNetBKMoE", None)
            if isinstance(moe, type) and "forward" in vars(moe) and all(moe is not p[0] for p in patched):
                patched.append((moe, "forward", vars(moe)["forward"]))
                moe.forward = _moe_forward_without_guard
        yield
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
