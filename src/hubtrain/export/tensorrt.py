"""ONNX -> TensorRT engine on the TensorRT 10 API, and a small runner for benchmarking and verification.

TensorRT 10 removed the implicit-batch builder, ``build_engine``, ``max_workspace_size`` and the binding-index API
that older export scripts use. This module uses what replaced them: explicit-batch networks from the ONNX parser,
one optimisation profile covering the dynamic axes, ``set_memory_pool_limit``, ``build_serialized_network``, and
name-based I/O (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``) at run time. ``tensorrt`` is
imported only when called, so the rest of hubtrain works without it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from hubtrain.export.spec import ExportError
from hubtrain.utils import atomic_path

log = logging.getLogger(__name__)

NEEDS = 'TensorRT export needs a CUDA GPU and the tensorrt package (pip install "hubtrain[tensorrt]")'


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here (None when it can): used by tests and the demo to skip with a reason."""
    if not torch.cuda.is_available():
        return f"{NEEDS}: no CUDA device is visible to torch"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return f"{NEEDS}: the tensorrt package is not installed"
    return None


def _import_tensorrt() -> Any:
    reason = tensorrt_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    import tensorrt as trt

    if int(trt.__version__.split(".")[0]) < 10:
        raise RuntimeError(f"TensorRT {trt.__version__} is too old; hubtrain uses the TensorRT 10 API (pip install -U tensorrt)")
    return trt


def _calibrator(trt: Any, batches: Sequence[Sequence[torch.Tensor]], cache_path: Path | None) -> Any:
    """Entropy calibration (INT8) fed from device copies of user batches, one batch per ``get_batch`` call."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._batches = [[t.detach().to("cuda").contiguous() for t in b] for b in batches]
            self._index = 0

        def get_batch_size(self) -> int:
            return int(self._batches[0][0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._index >= len(self._batches):
                return None
            batch = self._batches[self._index]
            self._index += 1
            return [t.data_ptr() for t in batch[: len(names)]]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path and cache_path.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            if cache_path:
                with atomic_path(cache_path) as tmp:
                    tmp.write_bytes(bytes(cache))

    return Calibrator()


def _profile_shapes(shape: Sequence[int], name: str, max_batch_size: int, max_seq_len: int, opt_seq_len: int | None):
    """min/opt/max for one input: axis 0 is batch; a second dynamic axis is the sequence."""
    mins, opts, maxs = [], [], []
    for axis, dim in enumerate(shape):
        if dim >= 0:
            mins.append(dim), opts.append(dim), maxs.append(dim)
        elif axis == 0:
            mins.append(1), opts.append(max(1, max_batch_size // 2)), maxs.append(max_batch_size)
        elif axis == 1:
            mins.append(1), opts.append(opt_seq_len or max(1, max_seq_len // 2)), maxs.append(max_seq_len)
        else:
            raise ValueError(
                f"input {name!r} has a dynamic axis {axis} that TensorRT needs bounds for; export with fixed "
                "spatial sizes (the default) or only batch/sequence dynamic"
            )
    return tuple(mins), tuple(opts), tuple(maxs)


def export_to_tensorrt(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    fp16: bool = False,
    int8: bool = False,
    calibration_data: Iterable[Sequence[torch.Tensor] | torch.Tensor] | None = None,
    calibration_cache: str | os.PathLike | None = None,
    max_batch_size: int = 8,
    max_seq_len: int = 512,
    opt_seq_len: int | None = None,
    workspace_gb: float = 4.0,
) -> Path:
    """Build a serialized TensorRT engine from an ONNX file (TensorRT 10 API).

    Dynamic axes of the ONNX graph get one optimisation profile: batch in ``[1, max_batch_size]`` and, for
    language models, sequence in ``[1, max_seq_len]``. ``fp16`` lets TensorRT choose half-precision kernels;
    ``int8`` needs ``calibration_data`` (a few representative input batches) for entropy calibration, or an
    ONNX graph with explicit Q/DQ nodes. The engine file is written atomically; without a CUDA GPU or the
    ``tensorrt`` package this raises ``RuntimeError`` saying which is missing.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}; export one first with export_to_onnx(model, path)")
    if onnx_path.suffix != ".onnx":
        raise ValueError(f"export_to_tensorrt expects an .onnx file, got {onnx_path}; export the model with export_to_onnx first")
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors.splitlines()[0] if errors else 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 1024**3))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        profile.set_shape(tensor.name, *_profile_shapes(tuple(tensor.shape), tensor.name, max_batch_size, max_seq_len, opt_seq_len))
    config.add_optimization_profile(profile)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        if calibration_data is not None:
            batches = [(b,) if isinstance(b, torch.Tensor) else tuple(b) for b in calibration_data]
            if not batches:
                raise ValueError("calibration_data is empty; pass a few representative input batches for INT8")
            config.int8_calibrator = _calibrator(trt, batches, Path(calibration_cache) if calibration_cache else None)
            config.set_calibration_profile(profile)
        else:
            log.warning("int8=True without calibration_data: only explicit Q/DQ nodes in %s set INT8 scales", onnx_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return engine_path


class TensorRTRunner:
    """Runs a serialized engine on torch CUDA tensors (name-based I/O of TensorRT 10)."""

    def __init__(self, engine_path: str | os.PathLike) -> None:
        trt = _import_tensorrt()
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {engine_path}; build one with export_to_tensorrt")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT could not load {engine_path}: built by another TensorRT version or GPU?")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream()

    def _torch_dtype(self, name: str) -> torch.dtype:
        trt = self._trt
        return {
            trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
            trt.int64: torch.int64, trt.bool: torch.bool, trt.int8: torch.int8, trt.bfloat16: torch.bfloat16,
        }[self.engine.get_tensor_dtype(name)]

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        feeds = []
        for name, t in zip(self.inputs, inputs):
            t = t.to("cuda", self._torch_dtype(name)).contiguous()
            feeds.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._torch_dtype(name), device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError("TensorRT execution failed (see the TensorRT log above)")
        self.stream.synchronize()
        return outs
