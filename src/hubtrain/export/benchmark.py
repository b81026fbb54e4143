"""Measured latency: PyTorch eager vs onnxruntime (plain, optimised) vs TensorRT, at the same inputs and threads."""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from hubtrain.export.spec import build_spec
from hubtrain.export.onnx_export import ort_session, run_onnx


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_call(fn: Callable[[], Any], *, warmup: int = 3, iters: int = 20, sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Median and p90 wall time of ``fn`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
            "min_ms": times[0]}


def benchmark_speedup(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 8),
    seq_lens: Sequence[int] | None = None,
    optimized_onnx_path: str | os.PathLike | dict[str, str | os.PathLike] | None = None,
    num_threads: int | None = None,
    warmup: int = 3,
    iters: int = 20,
    example_inputs: Any = None,
) -> list[dict[str, Any]]:
    """Time the eager model and its exports on identical inputs; one row per backend and input shape.

    Each row: ``backend`` (``eager``, ``onnxruntime``, ``onnxruntime-optimized``, ``tensorrt``), ``batch_size``,
    ``seq_len`` (language models), ``median_ms``, ``p90_ms``, ``min_ms`` and ``speedup`` (eager median divided by
    this backend's median). ``optimized_onnx_path`` may map labels to several optimised files. ``num_threads`` pins both PyTorch and onnxruntime to the same intra-op thread count so
    the comparison is fair. TensorRT runs only when ``engine_path`` is given (it needs a CUDA GPU); its eager
    baseline is then the model on the GPU as well.
    """
    spec = build_spec(model, example_inputs, what="benchmark_speedup")
    is_lm = spec.kind == "causal_lm"
    lengths: Sequence[int | None] = (seq_lens or [spec.example_inputs[0].shape[1]]) if is_lm else [None]
    sessions = {"onnxruntime": ort_session(onnx_path, num_threads=num_threads)}
    if isinstance(optimized_onnx_path, dict):  # several optimised variants, e.g. {"onnxruntime (all)": path}
        sessions |= {label: ort_session(p, num_threads=num_threads) for label, p in optimized_onnx_path.items()}
    elif optimized_onnx_path:
        sessions["onnxruntime-optimized"] = ort_session(optimized_onnx_path, num_threads=num_threads)
    runner = None
    if engine_path is not None:
        from hubtrain.export.tensorrt import TensorRTRunner

        runner = TensorRTRunner(engine_path)

    rows: list[dict[str, Any]] = []
    module = spec.module.eval()
    with torch_threads(num_threads), torch.inference_mode():
        for seq in lengths:
            for batch in batch_sizes:
                inputs = spec.make_inputs(batch, seq) if spec.make_inputs else spec.example_inputs
                shape = {"batch_size": batch, "seq_len": seq} if is_lm else {"batch_size": batch}
                eager = time_call(lambda: module(*inputs), warmup=warmup, iters=iters)
                rows.append({"backend": "eager", **shape, **eager, "speedup": 1.0})
                for name, session in sessions.items():
                    stats = time_call(lambda s=session: run_onnx(s, inputs), warmup=warmup, iters=iters)
                    rows.append({"backend": name, **shape, **stats, "speedup": eager["median_ms"] / stats["median_ms"]})
                if runner is not None:
                    gpu_module = module.to("cuda")
                    gpu_inputs = [t.to("cuda") for t in inputs]
                    sync = torch.cuda.synchronize
                    eager_gpu = time_call(lambda: gpu_module(*gpu_inputs), warmup=warmup, iters=iters, sync=sync)
                    rows.append({"backend": "eager-cuda", **shape, **eager_gpu, "speedup": 1.0})
                    stats = time_call(lambda: runner(*gpu_inputs), warmup=warmup, iters=iters, sync=sync)
                    rows.append({"backend": "tensorrt", **shape, **stats, "speedup": eager_gpu["median_ms"] / stats["median_ms"]})
                    module.to("cpu")
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], title_columns: Sequence[str] = ()) -> str:
    """Rows of :func:`benchmark_speedup` as a Markdown table (extra identifying columns first)."""
    has_seq = any(r.get("seq_len") is not None for r in rows)
    cols = [*title_columns, "backend", "batch_size", *(["seq_len"] if has_seq else []), "median_ms", "p90_ms", "speedup"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def file_size_mb(path: str | os.PathLike) -> float:
    p = Path(path)
    total = p.stat().st_size
    data = p.with_name(p.name + ".data")
    if data.exists():
        total += data.stat().st_size
    return total / 1e6
