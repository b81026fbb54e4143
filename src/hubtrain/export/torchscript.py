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

from hubtrain.errors import one_line
from hubtrain.export.spec import ExportError, build_spec
from hubtrain.export.onnx_export import _torch_outputs, verify_against_eager
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
            raise ExportError(f"TorchScript {method} of {spec.name} to {path} failed: {one_line(err)}") from err
        if verify:
            loaded = torch.jit.load(str(tmp))
            tol = spec.tolerance if tolerance is None else float(tolerance)
            batches = list(verify_inputs) if verify_inputs is not None else spec.verification_inputs()
            verify_against_eager(spec, lambda batch: _torch_outputs(loaded, batch), batches, tol, path, "TorchScript archive")
    return path
