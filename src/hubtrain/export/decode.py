"""ResNet-BK's decode step as ONNX, and greedy generation with onnxruntime alone.

ResNet-BK's state after a token is O(1) per layer (the Green's function g and the resolvent output y of every
channel, plus the optional semiseparable and Schatten running sums), so one small graph does all of decoding:

    (input_ids (B, 1), positions (B,), last_mask (B,), state...)  ->  (logits (B, V), positions, last_mask, state...)

A zero state is exactly the state before the first token (position 0 couples to nothing), so the same graph
also consumes the prompt, one token at a time: :class:`OnnxGenerator` needs only numpy and onnxruntime.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from hubtrain.compat import output_cache
from hubtrain.export._spec import CAUSAL_LM_TOLERANCE, ExportError, ExportVerificationError, is_resnet_bk
from hubtrain.export.onnx_export import _one_line, ort_session, staged_output
from hubtrain.export.resnet_bk import exportable_green_scan

FIXED_INPUTS = ("input_ids", "positions", "last_mask")


def _cache_class(model: nn.Module) -> type:
    module = sys.modules[type(model).__module__]
    cache_cls = getattr(module, "ResNetBKCache", None)
    if cache_cls is None:
        raise ExportError(f"{type(model).__name__}'s module {module.__name__} defines no ResNetBKCache")
    return cache_cls


def state_layout(model: nn.Module) -> list[tuple[int, str, tuple[int, ...]]]:
    """(layer, key, shape without batch) of every recurrent state tensor, read from one real decoding step."""
    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True, return_dict=True)
    cache = output_cache(out)
    layout = []
    for layer, state in enumerate(cache.layers):
        for key in sorted(state):
            layout.append((layer, key, tuple(state[key].shape[1:])))
    return layout


class ResNetBKDecodeStep(nn.Module):
    """One token in, logits and the next recurrent state out, with the state as plain tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        self.layout = state_layout(model)
        self._cache_cls = _cache_class(model)

    @property
    def state_names(self) -> list[str]:
        return [f"state.{layer}.{key}" for layer, key, _ in self.layout]

    def zero_state(self, batch: int) -> list[torch.Tensor]:
        dtype = next(self.model.parameters()).dtype
        return [torch.zeros(batch, *shape, dtype=dtype) for _, _, shape in self.layout]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, last_mask: torch.Tensor, *states: torch.Tensor):
        cache = self._cache_cls(self.model.config.n_layers)
        layers: list[dict[str, torch.Tensor]] = [{} for _ in range(self.model.config.n_layers)]
        for (layer, key, _), value in zip(self.layout, states):
            layers[layer][key] = value
        cache.layers = layers
        cache.positions, cache.last_mask, cache.seen_tokens = positions, last_mask, 1
        out = self.model(input_ids=input_ids, cache=cache, use_cache=True, return_dict=True)
        new = output_cache(out)
        return (out.logits[:, -1], new.positions, new.last_mask, *[new.layers[layer][key] for layer, key, _ in self.layout])


def export_decode_step_to_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    verify: bool = True,
    tolerance: float = CAUSAL_LM_TOLERANCE,
    opset: int | None = None,
) -> tuple[Path, dict[str, Any] | None]:
    """Export ResNet-BK's decode step (dynamic batch) to ``path``; verify it against PyTorch's cached decoding.

    Verification runs a 7-token prefix through PyTorch (``use_cache=True``), feeds the resulting state and the
    next token to both runtimes at batch 3 (the export used 2), and requires logits within ``tolerance`` with
    the same argmax, and the same next state. Returns the path and the measured errors.
    """
    lm = getattr(model, "model", model) if not is_resnet_bk(model) else model
    if not is_resnet_bk(lm):
        raise TypeError(f"export_decode_step_to_onnx is for ResNet-BK models, got {type(model).__name__}; "
                        "other models export their forward pass with export_to_onnx")
    step = ResNetBKDecodeStep(lm)
    batch = 2
    example = (torch.zeros(batch, 1, dtype=torch.long), torch.zeros(batch, dtype=torch.long),
               torch.zeros(batch, dtype=lm.dtype), *step.zero_state(batch))
    input_names = [*FIXED_INPUTS, *step.state_names]
    output_names = ["logits", "new_positions", "new_last_mask", *[f"new_{n}" for n in step.state_names]]
    b = torch.export.Dim("batch", min=1)
    # the state tensors arrive as *states, so their shapes nest as one tuple after the three fixed inputs
    dynamic_shapes = ({0: b}, {0: b}, {0: b}, tuple({0: b} for _ in example[3:]))
    path = Path(path)
    report = None
    with staged_output(path) as tmp:
        try:
            with torch.no_grad(), warnings.catch_warnings(), exportable_green_scan():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(step, example, dynamo=True, dynamic_shapes=dynamic_shapes,
                                            input_names=input_names, output_names=output_names, opset_version=opset,
                                            optimize=True, verbose=False, external_data=False)
            program.save(str(tmp))
        except Exception as err:
            raise ExportError(f"ONNX export of the ResNet-BK decode step to {path} failed: {_one_line(err)}") from err
        if verify:
            report = _verify_decode(lm, step, tmp, path, tolerance)
    return path, report


def _verify_decode(lm: nn.Module, step: ResNetBKDecodeStep, onnx_path: Path, shown: Path, tolerance: float) -> dict:
    gen = torch.Generator().manual_seed(3)
    vocab = lm.config.vocab_size
    prefix = torch.randint(0, vocab, (3, 7), generator=gen)
    nxt = torch.randint(0, vocab, (3, 1), generator=gen)
    with torch.no_grad():
        out = lm(input_ids=prefix, use_cache=True, return_dict=True)
        cache = output_cache(out)
        states = [cache.layers[layer][key] for layer, key, _ in step.layout]
        feeds = (nxt, cache.positions, cache.last_mask, *states)
        expected = step(*feeds)
    session = ort_session(onnx_path)
    actual = session.run(None, {m.name: t.numpy() for m, t in zip(session.get_inputs(), feeds)})
    logit_err = float(np.abs(expected[0].numpy() - actual[0]).max())
    state_err = max((float(np.abs(e.numpy() - a).max()) for e, a in zip(expected[3:], actual[3:])), default=0.0)
    same_argmax = bool(np.array_equal(expected[0].numpy().argmax(-1), actual[0].argmax(-1)))
    same_positions = bool(np.array_equal(expected[1].numpy(), actual[1]))
    if logit_err > tolerance or state_err > tolerance or not same_argmax or not same_positions:
        raise ExportVerificationError(
            f"verification of decode step {shown} failed: logits max abs error {logit_err:.3e}, state {state_err:.3e} "
            f"vs tolerance {tolerance:.1e}, argmax {'same' if same_argmax else 'differs'}"
        )
    return {"max_abs_error": logit_err, "state_max_abs_error": state_err, "tolerance": tolerance,
            "argmax_match": same_argmax, "ok": True, "batch": 3, "prefix_len": 7}


class OnnxGenerator:
    """Greedy generation from a decode-step ONNX file with onnxruntime and numpy only (no PyTorch needed)."""

    def __init__(self, decode_path: str | os.PathLike, num_threads: int | None = None) -> None:
        self.session = ort_session(decode_path, num_threads=num_threads)
        self.inputs = self.session.get_inputs()
        names = [i.name for i in self.inputs]
        if tuple(names[:3]) != FIXED_INPUTS:
            raise ValueError(f"{decode_path} is not a hubtrain decode-step graph (inputs {names[:3]}, expected {list(FIXED_INPUTS)})")
        self.state_inputs = self.inputs[3:]
        self._dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}

    def zero_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, *s.shape[1:]), dtype=self._dtype[s.type]) for s in self.state_inputs]

    def step(self, tokens: np.ndarray, positions: np.ndarray, last_mask: np.ndarray, state: Sequence[np.ndarray]):
        feeds = {"input_ids": tokens.reshape(-1, 1).astype(np.int64), "positions": positions, "last_mask": last_mask}
        feeds |= {s.name: v for s, v in zip(self.state_inputs, state)}
        logits, positions, last_mask, *state = self.session.run(None, feeds)
        return logits, positions, last_mask, state

    def generate(self, input_ids: np.ndarray | Sequence[Sequence[int]], max_new_tokens: int = 20,
                 eos_token_id: int | None = None) -> np.ndarray:
        """Greedy continuation of ``input_ids`` (B, N): the prompt is consumed by the same decode graph."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, length>=1), got shape {ids.shape}")
        batch = ids.shape[0]
        positions = np.zeros(batch, dtype=np.int64)
        last_mask = np.zeros(batch, dtype=self._dtype[self.inputs[2].type])
        state = self.zero_state(batch)
        logits = None
        for i in range(ids.shape[1]):
            logits, positions, last_mask, state = self.step(ids[:, i], positions, last_mask, state)
        out = [ids]
        done = np.zeros(batch, dtype=bool)
        for _ in range(max_new_tokens):
            nxt = logits.argmax(-1).astype(np.int64)
            if eos_token_id is not None:
                nxt = np.where(done, eos_token_id, nxt)
                done |= nxt == eos_token_id
            out.append(nxt[:, None])
            if eos_token_id is not None and done.all():
                break
            logits, positions, last_mask, state = self.step(nxt, positions, last_mask, state)
        return np.concatenate(out, axis=1)


def onnx_generate(decode_path: str | os.PathLike, input_ids: Any, max_new_tokens: int = 20,
                  eos_token_id: int | None = None) -> np.ndarray:
    """``OnnxGenerator(decode_path).generate(...)`` in one call."""
    return OnnxGenerator(decode_path).generate(input_ids, max_new_tokens, eos_token_id)
