"""What an exporter needs to know about a model: a tensors-in/tensors-out module, example inputs, dynamic axes.

Every exporter (ONNX, TorchScript, TensorRT via ONNX, the benchmark) starts from an :class:`ExportSpec`, so they
all agree on input names, on which axes are dynamic, on the default tolerance and on the shapes used to verify.
Example inputs come from the model's own configuration: the image size of a vision model's data config, the
vocabulary of a language model. ``export_to_onnx(model, path)`` therefore needs nothing else.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from hubtrain.errors import HubtrainError

# Tolerances are relative to the outputs' scale: an export may differ from PyTorch by at most
# tolerance * max(1, max |PyTorch output|), because float32 rounding grows with the magnitude of the logits (the
# quickstart classifier's logits differ by 1.9e-6 between onnxruntime and PyTorch). 1e-5 still catches real mistakes
# (a wrong BatchNorm mode moves logits by 1e-2), and classifiers must also agree on the argmax of every row.
# Language-model logits pass through long recurrences: 1e-4, with the argmax checked at every position.
VISION_TOLERANCE = 1e-5
CAUSAL_LM_TOLERANCE = 1e-4
GENERIC_TOLERANCE = 1e-5


def allowed_error(tolerance: float, scale: float) -> float:
    """The largest absolute error a relative ``tolerance`` allows on outputs whose largest magnitude is ``scale``."""
    return tolerance * max(1.0, scale)

EXAMPLE_BATCH = 2  # torch.export specialises axes of size 0 and 1, so examples use 2
EXAMPLE_SEQ_LEN = 16


class ExportError(HubtrainError, RuntimeError):
    """An export step failed; the message names the model, the step and the output path."""


class ExportVerificationError(ExportError, ValueError):
    """The exported model disagrees with PyTorch beyond the tolerance; no output file was written."""


@dataclass
class ExportSpec:
    module: nn.Module  # eval mode, tensors in, tensor(s) out
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str] | None
    dynamic_axes: list[dict[int, str]]  # per input: axis -> symbolic name
    kind: str  # "vision" | "causal_lm" | "generic"
    tolerance: float
    check_argmax: bool = False
    make_inputs: Callable[[int, Any], tuple[torch.Tensor, ...]] | None = None
    seq_limit: int | None = None
    spatial_dynamic: bool = False  # vision: height and width are dynamic axes too (a fully convolutional model)
    source: nn.Module | None = None  # the user's model (a task, a PreTrainedModel), for messages and metadata
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return type(self.source if self.source is not None else self.module).__name__

    def verification_inputs(self) -> list[tuple[torch.Tensor, ...]]:
        """Inputs at shapes different from the export example: another batch and, for sequences, other lengths."""
        if self.make_inputs is None:
            return [self.example_inputs]
        if self.kind == "causal_lm":
            example_len = self.example_inputs[0].shape[1]
            long_len = example_len * 2 + 3
            if self.seq_limit is not None:
                long_len = min(long_len, self.seq_limit)
            return [self.make_inputs(1, 5), self.make_inputs(3, long_len)]
        batches = [self.make_inputs(1, None), self.make_inputs(3, None)]
        if self.spatial_dynamic:
            batches.append(self.make_inputs(2, other_image_size(self.example_inputs[0].shape[-2:])))
        return batches

    def with_static_spatial(self) -> "ExportSpec":
        """The same spec with only the batch axis dynamic (for models whose export fixes the image size)."""
        return dataclasses.replace(self, dynamic_axes=[{0: "batch"} for _ in self.dynamic_axes], spatial_dynamic=False)

    def dynamic_shapes(self, dynamic_axes: bool | dict[str, dict[int, str]]) -> tuple | None:
        """``torch.export`` dynamic shapes: one dict per input, ``axis -> Dim``; names shared across inputs."""
        if dynamic_axes is False:
            return None
        axes = self.dynamic_axes if dynamic_axes is True else [dict(dynamic_axes.get(n, {})) for n in self.input_names]
        if dynamic_axes is not True:
            unknown = set(dynamic_axes) - set(self.input_names)
            if unknown:
                raise ValueError(f"dynamic_axes names unknown inputs {sorted(unknown)}; the inputs are {self.input_names}")
        dims: dict[str, torch.export.Dim] = {}
        shapes = []
        for per_input in axes:
            spec = {}
            for axis, dim_name in per_input.items():
                if dim_name not in dims:
                    limit = self.seq_limit if dim_name == "sequence" else None
                    dims[dim_name] = torch.export.Dim(dim_name, min=1, max=limit) if limit else torch.export.Dim(dim_name, min=1)
                spec[int(axis)] = dims[dim_name]
            shapes.append(spec)
        return tuple(shapes)


class CausalLMLogits(nn.Module):
    """``input_ids -> logits`` without a cache: the graph an ONNX runtime runs for scoring and prefill."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        params = inspect.signature(model.forward).parameters
        self._kwargs = {"use_cache": False} if "use_cache" in params else {}
        if "return_dict" in params:
            self._kwargs["return_dict"] = True

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, **self._kwargs).logits


def _as_module(model: Any, what: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{what} expects a torch.nn.Module (a hubtrain task, a timm or transformers model), "
            f"got {type(model).__name__}; load the model first, e.g. ImageClassifier.from_pretrained(folder)"
        )
    return model


def unwrap_causal_lm(model: nn.Module) -> nn.Module | None:
    """The transformers causal LM inside ``model`` (itself, or a task's ``.model``), or None."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # transformers is a hard dependency; this only guards odd environments
        return None
    for candidate in (model, getattr(model, "model", None)):
        if (
            isinstance(candidate, PreTrainedModel)
            and candidate.can_generate()
            and candidate.get_output_embeddings() is not None
        ):
            return candidate
    return None


def image_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """(C, H, W) the model is fed: a task's saved preprocessing first (what its own data pipeline produces), then
    its backbone's data config, timm's ``pretrained_cfg``, or the hyperparameters."""
    preprocessing = getattr(model, "preprocessing", None)
    if isinstance(preprocessing, dict) and preprocessing.get("input_size"):
        return tuple(int(v) for v in preprocessing["input_size"])  # type: ignore[return-value]
    seen = [model]
    for attr in ("backbone", "model", "encoder"):
        child = getattr(model, attr, None)
        if isinstance(child, nn.Module):
            seen.append(child)
    for obj in seen:
        for attr in ("data_config", "pretrained_cfg", "default_cfg"):
            cfg = getattr(obj, attr, None)
            if isinstance(cfg, dict) and cfg.get("input_size"):
                return tuple(int(v) for v in cfg["input_size"])  # type: ignore[return-value]
    hparams = getattr(model, "hparams", None)
    if hparams is not None:
        size = hparams.get("image_size") if hasattr(hparams, "get") else None
        if size:
            size = (size, size) if isinstance(size, int) else tuple(size)
            channels = int(hparams.get("in_chans", 3))
            return (channels, int(size[0]), int(size[1]))
    return None


def other_image_size(hw: Sequence[int]) -> tuple[int, int]:
    """A second image size to verify a spatially dynamic export at: one stride-32 step larger."""
    return (int(hw[0]) + 32, int(hw[1]) + 32)


def runs_at_other_sizes(model: nn.Module, size: tuple[int, int, int]) -> bool:
    """Whether the eager model accepts another image size (a CNN does; a ViT with fixed position embeddings not)."""
    c, h, w = size
    try:
        with torch.no_grad():
            model(torch.zeros(1, c, *other_image_size((h, w))))
    except Exception:  # any failure means: keep the image size fixed in the export
        return False
    return True


def _vision_checks(model: nn.Module) -> tuple[float, bool]:
    """(relative tolerance, whether argmax must agree) as the model declares them (hubtrain tasks do, as class
    data); a plain image model is treated as a classifier."""
    tolerance = getattr(model, "export_tolerance", None)
    return (VISION_TOLERANCE if tolerance is None else tolerance), bool(getattr(model, "export_check_argmax", True))


def build_spec(
    model: Any,
    example_inputs: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    *,
    what: str = "export",
) -> ExportSpec:
    """Describe ``model`` for the exporters; ``example_inputs`` overrides what the config would give."""
    model = _as_module(model, what)
    lm = unwrap_causal_lm(model)
    if lm is not None:
        return _causal_lm_spec(model, lm, example_inputs, input_names)

    model = model.eval()
    if example_inputs is not None:
        inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        names = list(input_names) if input_names else (
            ["pixel_values"] if len(inputs) == 1 and inputs[0].dim() == 4 else [f"input_{i}" for i in range(len(inputs))]
        )
        vision = len(inputs) == 1 and inputs[0].dim() == 4 and inputs[0].is_floating_point()

        def make_inputs(batch: int, _seq: int | None) -> tuple[torch.Tensor, ...]:
            gen = torch.Generator().manual_seed(batch)
            out = []
            for t in inputs:
                shape = (batch, *t.shape[1:])
                if t.is_floating_point():
                    out.append(torch.randn(shape, generator=gen, dtype=t.dtype))
                else:
                    hi = int(t.max().item()) + 1 if t.numel() else 2
                    out.append(torch.randint(0, max(hi, 2), shape, generator=gen, dtype=t.dtype))
            return tuple(out)

        tol = _vision_checks(model)[0] if vision else GENERIC_TOLERANCE
        return ExportSpec(
            module=model, example_inputs=inputs, input_names=names,
            output_names=list(output_names) if output_names else None,
            dynamic_axes=[{0: "batch"} for _ in inputs], kind="vision" if vision else "generic",
            tolerance=tol, make_inputs=make_inputs, source=model,
        )

    size = image_input_size(model)
    if size is None:
        raise ValueError(
            f"cannot infer example inputs for {type(model).__name__}: it has no data_config/pretrained_cfg "
            "input_size and is not a causal LM; pass example_inputs=torch.randn(2, 3, H, W) (or your model's inputs)"
        )

    def make_images(batch: int, hw: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(1000 + batch)
        return (torch.randn((batch, size[0], *(hw or size[1:])), generator=gen),)

    tolerance, check_argmax = _vision_checks(model)
    spatial = runs_at_other_sizes(model, size)
    return ExportSpec(
        module=model, example_inputs=make_images(EXAMPLE_BATCH), input_names=list(input_names or ["pixel_values"]),
        output_names=list(output_names) if output_names else None,
        dynamic_axes=[{0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"}], kind="vision",
        tolerance=tolerance, check_argmax=check_argmax,
        make_inputs=make_images, source=model, spatial_dynamic=spatial, extra={"input_size": list(size)},
    )


def _causal_lm_spec(source: nn.Module, lm: nn.Module, example_inputs: Any, input_names: Sequence[str] | None) -> ExportSpec:
    lm = lm.eval()
    config = lm.config
    vocab = int(config.vocab_size)
    limit = None
    for attr in ("max_position_embeddings", "n_positions"):  # a positional table caps the sequence axis
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            limit = value
            break

    def make_ids(batch: int, seq: int | None) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(7 * batch + (seq or 0))
        return (torch.randint(0, vocab, (batch, seq or EXAMPLE_SEQ_LEN), generator=gen),)

    if example_inputs is not None:
        ids = example_inputs if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)[0]
        example = (ids,)
    else:
        example = make_ids(EXAMPLE_BATCH, EXAMPLE_SEQ_LEN)
    return ExportSpec(
        module=CausalLMLogits(lm).eval(), example_inputs=example, input_names=list(input_names or ["input_ids"]),
        output_names=["logits"], dynamic_axes=[{0: "batch", 1: "sequence"}], kind="causal_lm",
        tolerance=CAUSAL_LM_TOLERANCE, check_argmax=True, make_inputs=make_ids, seq_limit=limit, source=source,
        extra={"vocab_size": vocab, "model_type": getattr(config, "model_type", None)},
    )
