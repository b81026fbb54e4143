"""ONNX export with dynamic axes, verification at other shapes, and onnxruntime graph optimisation.

The exporter is PyTorch's own (``torch.onnx.export(..., dynamo=True)``): it captures the model with
``torch.export`` so batch and sequence axes stay symbolic, and loops written with ``torch``'s scan operator become
an ONNX ``Scan`` instead of being unrolled to the example length. Nothing is written to ``path`` until the exported
graph has been checked and, by default, compared with PyTorch on inputs of *other* shapes than the example.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from hubtrain.errors import one_line
from hubtrain.export.spec import ExportError, ExportSpec, ExportVerificationError, allowed_error, build_spec
from hubtrain.utils import publish_mode

log = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = ("basic", "extended", "all")
_TWO_GB = 2 * 1024**3


@dataclass
class VerificationResult:
    """How far an export is from PyTorch, over every verification input.

    ``tolerance`` is relative to the outputs' scale (``max |PyTorch output|``, at least 1): the export passes when
    ``max_abs_error <= tolerance * max(1, scale)`` and, where checked, every argmax agrees.
    """

    max_abs_error: float
    tolerance: float
    shapes: list[list[list[int]]]
    argmax_match: bool | None = None
    scale: float = 1.0

    @property
    def allowed_error(self) -> float:
        return allowed_error(self.tolerance, self.scale)

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.allowed_error and self.argmax_match is not False

    def failure(self, shown: Any) -> str:
        """One line that says why verification of ``shown`` failed."""
        why = "argmax differs" if self.argmax_match is False and self.max_abs_error <= self.allowed_error else "max abs error"
        return (f"verification of {shown} failed: {why} {self.max_abs_error:.3e} vs allowed {self.allowed_error:.1e} "
                f"(tolerance {self.tolerance:.1e} x output scale {max(1.0, self.scale):.3g}) at input shapes {self.shapes}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"allowed_error": self.allowed_error, "ok": self.ok}


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ImportError(f"ONNX export needs onnx and onnxruntime ({err.name} is missing): pip install 'hubtrain[onnx]'") from None


@contextlib.contextmanager
def staged_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield ``tmpdir/<name>``; on success move it (and any ``<name>.data`` beside it) onto ``path``.

    A model over 2 GB is saved with external weights next to the graph, so the unit of atomicity is a folder,
    not a file. Readers never see a graph without its weights, and a failed export leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmpdir / path.name
        publish_mode(tmpdir)
        # weights first, graph last: whoever sees the graph also sees its weights
        produced = sorted(tmpdir.iterdir(), key=lambda p: p.name == path.name)
        for item in produced:
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_spec_to_onnx(
    spec: ExportSpec,
    path: str | os.PathLike,
    *,
    dynamic_axes: bool | dict[str, dict[int, str]] = True,
    opset: int | None = None,
    verify: bool = True,
    tolerance: float | None = None,
    verify_inputs: Sequence[tuple[torch.Tensor, ...]] | None = None,
) -> tuple[Path, VerificationResult | None, ExportSpec]:
    """Export an :class:`ExportSpec`; the public :func:`export_to_onnx` builds the spec from a model.

    Returns the path, the verification result and the spec as exported: a model whose eager form runs at other
    image sizes but whose export fixes them falls back to a fixed image size (logged), and the returned spec says so.
    """
    _require_onnx()
    path = Path(path)
    large = _param_bytes(spec.module) > _TWO_GB * 0.9
    result = None
    with staged_output(path) as tmp:
        try:
            _save_onnx(spec, tmp, dynamic_axes, opset, large)
            if spec.spatial_dynamic and dynamic_axes is True and any(not isinstance(d, str) for d in onnx_input_dims(tmp)[0][2:]):
                raise ExportError("the exporter fixed the image size")  # a Python branch on it, say
        except Exception as err:
            if not (spec.spatial_dynamic and dynamic_axes is True):
                raise ExportError(f"ONNX export of {spec.name} to {path} failed: {one_line(err)}") from err
            # the eager model runs at other image sizes, but its export cannot keep them symbolic: fix them
            log.info("%s does not export with a dynamic image size (%s); only the batch axis is dynamic", spec.name, one_line(err))
            spec = spec.with_static_spatial()
            try:
                _save_onnx(spec, tmp, dynamic_axes, opset, large)
            except Exception as err2:
                raise ExportError(f"ONNX export of {spec.name} to {path} failed: {one_line(err2)}") from err2
        if verify:
            result = verify_onnx_model(spec, tmp, inputs=verify_inputs, tolerance=tolerance, _display_path=path)
    log.info("exported %s to %s%s", spec.name, path, f" (max abs error {result.max_abs_error:.2e})" if result else "")
    return path, result, spec


def _save_onnx(spec: ExportSpec, path: Path, dynamic_axes: bool | dict[str, dict[int, str]], opset: int | None, large: bool) -> None:
    import onnx

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            spec.module, spec.example_inputs, dynamo=True, dynamic_shapes=spec.dynamic_shapes(dynamic_axes),
            input_names=spec.input_names, output_names=spec.output_names, opset_version=opset,
            optimize=True, verbose=False, external_data=large,
        )
    program.save(str(path), external_data=large)
    onnx.checker.check_model(str(path), full_check=True)


def export_to_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: Any = None,
    *,
    dynamic_axes: bool | dict[str, dict[int, str]] = True,
    opset: int | None = None,
    verify: bool = True,
    tolerance: float | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    verify_inputs: Sequence[tuple[torch.Tensor, ...]] | None = None,
    quantize: str | None = None,
    quantization: str = "dynamic",
    calibration: Any = None,
) -> Path:
    """Export ``model`` to ONNX at ``path`` and (by default) verify it against PyTorch.

    Args:
        model: a hubtrain task, a timm model, a ``transformers`` causal LM, or any module.
        path: the ``.onnx`` file to write. It appears only after the export has been checked and verified.
        example_inputs: tensors to trace with; by default built from the model's config (image size, vocab).
        dynamic_axes: ``True`` makes batch (and sequence for language models) dynamic; ``False`` fixes every
            shape; a dict ``{input_name: {axis: name}}`` chooses (e.g. ``{"pixel_values": {0: "batch",
            2: "height", 3: "width"}}`` for a fully convolutional model).
        opset: ONNX opset; the exporter's default when None.
        verify: compare onnxruntime with PyTorch at shapes different from the example (other batch and lengths).
        tolerance: maximum absolute error; by default 1e-6 for image classifiers, 1e-4 for language-model
            logits (whose argmax must also agree everywhere).
        quantize: ``"int8"`` writes an INT8 graph at ``path`` (``onnxruntime.quantization``), made from the verified
            float export and checked against it by argmax agreement (see ``hubtrain.export.quantize``).
        quantization: ``"dynamic"`` (INT8 weights, activations quantised at run time) or ``"static"`` (activation
            ranges calibrated on ``calibration``: the task's data module, a data loader or a list of batches; by
            default the data module of the trainer the task was fitted with).

    Returns:
        The path written.

    Raises:
        ExportVerificationError: outputs differ beyond the tolerance (the message gives both numbers); nothing
            is written.
        ExportError: the exporter or the ONNX checker failed.
    """
    spec = build_spec(model, example_inputs, input_names, output_names, what="export_to_onnx")
    if quantize is None:
        out, _, _ = export_spec_to_onnx(
            spec, path, dynamic_axes=dynamic_axes, opset=opset, verify=verify, tolerance=tolerance, verify_inputs=verify_inputs
        )
        return out
    if quantize != "int8":
        raise ValueError(f"quantize={quantize!r}: the supported quantization is 'int8' (or None for float)")
    from hubtrain.export.quantize import quantize_onnx

    if calibration is None and quantization == "static":
        trainer = getattr(model, "_trainer", None)
        calibration = getattr(trainer, "datamodule", None) if trainer is not None else None
    with tempfile.TemporaryDirectory(prefix="hubtrain-float-") as tmp:
        float_path, _, spec = export_spec_to_onnx(spec, Path(tmp) / "float.onnx", dynamic_axes=dynamic_axes, opset=opset,
                                                  verify=verify, tolerance=tolerance, verify_inputs=verify_inputs)
        report = quantize_onnx(float_path, path, spec, mode=quantization, calibration=calibration)
    log.info("INT8 (%s) %s: %.1f%% argmax agreement with the float model, %.2fx smaller", quantization, path,
             100 * report.agreement, report.size_ratio)
    return Path(path)


def ort_session(path: str | os.PathLike, *, num_threads: int | None = None, level: str | None = None) -> Any:
    """An onnxruntime CPU session; ``level`` None keeps onnxruntime's default (all optimisations, in memory)."""
    _require_onnx()
    import onnxruntime as ort

    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}; export one first with export_to_onnx(model, path)")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if num_threads:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    if level is not None:
        options.graph_optimization_level = _ort_level(level)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ExportError(f"onnxruntime cannot load {path}: {one_line(err)}") from err


def _ort_level(level: str) -> Any:
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if level not in levels:
        raise ValueError(f"unknown optimisation level {level!r}; use one of {list(OPTIMIZATION_LEVELS)}")
    return levels[level]


def run_onnx(session: Any, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    feeds = {meta.name: t.detach().cpu().numpy() for meta, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)


def _torch_outputs(module: nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*inputs)
    return [t.detach().cpu().numpy() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def compare_outputs(
    expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], *, check_argmax: bool
) -> tuple[float, bool | None, float]:
    """(max abs error, whether every argmax agrees (None when not checked), max |expected|) over the outputs."""
    if len(expected) != len(actual):
        raise ExportVerificationError(f"exported model returns {len(actual)} outputs, PyTorch {len(expected)}")
    max_err, scale = 0.0, 0.0
    argmax_ok: bool | None = None
    for e, a in zip(expected, actual):
        if e.shape != a.shape:
            raise ExportVerificationError(f"exported output shape {list(a.shape)} differs from PyTorch's {list(e.shape)}")
        if e.size:
            max_err = max(max_err, float(np.max(np.abs(e.astype(np.float64) - a.astype(np.float64)))))
            if e.dtype.kind == "f":
                scale = max(scale, float(np.max(np.abs(e))))
        if check_argmax and e.ndim >= 1 and e.dtype.kind == "f":
            same = bool(np.array_equal(e.argmax(-1), a.argmax(-1)))
            argmax_ok = same if argmax_ok is None else (argmax_ok and same)
    return max_err, argmax_ok, scale


def verify_against_eager(
    spec: ExportSpec, run: Callable[[tuple[torch.Tensor, ...]], list[np.ndarray]],
    batches: Sequence[tuple[torch.Tensor, ...]], tolerance: float, shown: Any, what: str,
) -> VerificationResult:
    """Run every batch through the export (``run``) and the eager model; raise one line if they disagree."""
    max_err, scale, argmax_ok, shapes = 0.0, 0.0, None, []
    for batch in batches:
        try:
            actual = run(batch)
        except Exception as err:
            raise ExportVerificationError(
                f"{what} failed on {shown} at input shapes {[list(t.shape) for t in batch]}: {one_line(err)}"
            ) from err
        err_b, arg_b, scale_b = compare_outputs(_torch_outputs(spec.module, batch), actual, check_argmax=spec.check_argmax)
        max_err, scale = max(max_err, err_b), max(scale, scale_b)
        if arg_b is not None:
            argmax_ok = arg_b if argmax_ok is None else (argmax_ok and arg_b)
        shapes.append([list(t.shape) for t in batch])
    result = VerificationResult(max_abs_error=max_err, tolerance=tolerance, shapes=shapes, argmax_match=argmax_ok, scale=scale)
    if not result.ok:
        raise ExportVerificationError(result.failure(shown))
    return result


def verify_onnx_model(
    model: nn.Module | ExportSpec,
    onnx_path: str | os.PathLike,
    inputs: Sequence[tuple[torch.Tensor, ...]] | tuple[torch.Tensor, ...] | None = None,
    *,
    tolerance: float | None = None,
    example_inputs: Any = None,
    _display_path: str | os.PathLike | None = None,
) -> VerificationResult:
    """Run ``onnx_path`` in onnxruntime and PyTorch on the same inputs; raise if they disagree.

    By default the inputs have shapes the export never saw (batch 1 and 3; another image size for a fully
    convolutional model; for language models lengths 5 and 2x the example + 3), so a dynamic axis that silently
    became static, or a loop unrolled to the example length, fails here. Returns the measured error; raises
    :class:`ExportVerificationError` (one line: error, allowed error, file) when the error exceeds ``tolerance``
    relative to the outputs' scale or, for classifiers and language models, when any argmax differs.
    """
    spec = model if isinstance(model, ExportSpec) else build_spec(model, example_inputs, what="verify_onnx_model")
    tolerance = spec.tolerance if tolerance is None else float(tolerance)
    if inputs is None:
        batches = spec.verification_inputs()
    elif isinstance(inputs, torch.Tensor):
        batches = [(inputs,)]
    elif inputs and isinstance(inputs[0], torch.Tensor):
        batches = [tuple(inputs)]  # type: ignore[arg-type]
    else:
        batches = [tuple(b) for b in inputs]  # type: ignore[union-attr]
    session = ort_session(onnx_path)
    return verify_against_eager(spec, lambda batch: run_onnx(session, batch), batches, tolerance,
                                _display_path or onnx_path, "onnxruntime")


def optimize_onnx_model(
    onnx_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    level: str = "extended",
    *,
    verify: bool = True,
    tolerance: float = 1e-5,
    verify_inputs: Sequence[tuple[torch.Tensor, ...]] | None = None,
) -> Path:
    """Let onnxruntime optimise the graph and save the result (``SessionOptions.optimized_model_filepath``).

    ``basic`` folds constants and removes redundant nodes (portable); ``extended`` adds fusions (GELU, attention,
    layer norm); ``all`` adds layout transforms tuned to *this* CPU, so an ``all`` file should run where it was
    made. With ``verify``, the optimised graph is compared with the original on random inputs of the original's
    dynamic shapes (or ``verify_inputs``); the file appears only if they agree within ``tolerance``.
    """
    _require_onnx()
    import onnxruntime as ort

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}; export one first with export_to_onnx(model, path)")
    if level not in OPTIMIZATION_LEVELS:
        raise ValueError(f"unknown optimisation level {level!r}; use one of {list(OPTIMIZATION_LEVELS)}")
    output_path = Path(output_path) if output_path else onnx_path.with_name(f"{onnx_path.stem}.{level}.onnx")
    with staged_output(output_path) as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = _ort_level(level)
        options.optimized_model_filepath = str(tmp)
        try:
            ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise ExportError(f"onnxruntime could not optimise {onnx_path} at level {level!r}: {one_line(err)}") from err
        if verify:
            batches = list(verify_inputs) if verify_inputs is not None else _random_feeds(onnx_path)
            reference, optimised = ort_session(onnx_path, level="disable"), ort_session(tmp, level="disable")
            worst = 0.0
            for batch in batches:
                err, _, scale = compare_outputs(run_onnx(reference, batch), run_onnx(optimised, batch), check_argmax=False)
                worst = max(worst, err / max(1.0, scale))
            if worst > tolerance:
                raise ExportVerificationError(
                    f"optimised model {output_path} differs from {onnx_path}: relative error {worst:.3e} vs tolerance {tolerance:.1e}"
                )
    return output_path


def _random_feeds(onnx_path: Path, batch: int = 3, seq: int = 11) -> list[tuple[torch.Tensor, ...]]:
    """Random inputs for a graph, reading shapes from it; symbolic axes get ``batch`` then ``seq``."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    gen = torch.Generator().manual_seed(0)
    tensors = []
    for value in graph.input:
        if value.name in initializers:
            continue
        ttype = value.type.tensor_type
        dims = []
        for i, d in enumerate(ttype.shape.dim):
            dims.append(d.dim_value if d.HasField("dim_value") else (batch if i == 0 else seq))
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        if np.issubdtype(dtype, np.floating):
            tensors.append(torch.randn(dims, generator=gen).to(torch.from_numpy(np.zeros(0, dtype)).dtype))
        else:
            tensors.append(torch.randint(0, 8, dims, generator=gen).to(torch.from_numpy(np.zeros(0, dtype)).dtype))
    return [tuple(tensors)]


def onnx_input_dims(onnx_path: str | os.PathLike) -> list[list[int | str]]:
    """Each graph input's dimensions: an int where fixed, the symbol's name where dynamic."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [[d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in v.type.tensor_type.shape.dim]
            for v in graph.input if v.name not in initializers]


def onnx_node_count(onnx_path: str | os.PathLike) -> int:
    """Top-level node count: a loop unrolled to the example length makes it grow with that length."""
    import onnx

    return len(onnx.load(str(onnx_path), load_external_data=False).graph.node)


def onnx_op_types(onnx_path: str | os.PathLike) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}


__all__ = [
    "ExportError",
    "ExportVerificationError",
    "VerificationResult",
    "export_to_onnx",
    "verify_onnx_model",
    "optimize_onnx_model",
    "onnx_node_count",
    "onnx_op_types",
    "ort_session",
]
