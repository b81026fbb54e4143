"""TorchScript export (trace or script), verified at shapes other than the example before the file appears.

TorchScript is deprecated upstream in favour of ``torch.export``; it stays here because C++ (libtorch) serving
and older runtimes still load ``.pt`` archives. Prefer ONNX for new deployments.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from hubtrain.export._spec import ExportError, ExportVerificationError, build_spec
from hubtrain.export.onnx_export import VerificationResult, _one_line, _torch_outputs, compare_outputs
from hubtrain.utils import atomic_path


def export_to_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: Any = None,
    *,
    method: str = "trace",
    verify: bool = True,
    tolerance: float | None = None,
    verify_inputs: Sequence[tuple[torch.Tensor, ...]] | None = None,
) -> Path:
    """Save ``model`` as a TorchScript archive loadable with ``torch.jit.load`` (no Python class needed).

    ``method="trace"`` records the ops run on the example inputs (what works for timm and transformers models);
    ``"script"`` compiles the Python source (control flow kept, but only for scriptable code). The archive is
    reloaded and compared with the eager model on inputs of other batch sizes (and sequence lengths) than the
    example; on a mismatch nothing is written and :class:`ExportVerificationError` says by how much.
    """
    if method not in ("trace", "script"):
        raise ValueError(f"unknown TorchScript method {method!r}; use 'trace' or 'script'")
    spec = build_spec(model, example_inputs, what="export_to_torchscript")
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python values and torch.jit's deprecation notice
        try:
            with torch.no_grad():
                if method == "trace":
                    scripted = torch.jit.trace(spec.module, spec.example_inputs, strict=False, check_trace=False)
                else:
                    scripted = torch.jit.script(spec.module)
            torch.jit.save(scripted, str(tmp))
        except Exception as err:
            raise ExportError(f"TorchScript {method} of {spec.name} to {path} failed: {_one_line(err)}") from err
        if verify:
            loaded = torch.jit.load(str(tmp))
            tol = spec.tolerance if tolerance is None else float(tolerance)
            batches = list(verify_inputs) if verify_inputs is not None else spec.verification_inputs()
            worst, argmax_ok, shapes = 0.0, None, []
            for batch in batches:
                try:
                    actual = _torch_outputs(loaded, batch)
                except Exception as err:
                    raise ExportVerificationError(
                        f"TorchScript archive {path} fails at input shapes {[list(t.shape) for t in batch]}: {_one_line(err)}"
                    ) from err
                err_b, arg_b = compare_outputs(_torch_outputs(spec.module, batch), actual, check_argmax=spec.check_argmax)
                worst = max(worst, err_b)
                argmax_ok = arg_b if argmax_ok is None else (argmax_ok and bool(arg_b))
                shapes.append([list(t.shape) for t in batch])
            result = VerificationResult(worst, tol, shapes, argmax_ok)
            if not result.ok:
                raise ExportVerificationError(
                    f"verification of {path} failed: max abs error {worst:.3e} vs tolerance {tol:.1e} at input shapes {shapes}"
                )
    return path
