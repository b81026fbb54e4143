"""A recurrent language model's decode step as ONNX, and greedy generation with onnxruntime alone.

Any causal LM whose cache flattens itself to named tensors and back (``cache.to_tensors()`` and
``type(cache).from_tensors(...)``) exports one small graph that does all of decoding:

    (input_ids (B, 1), state.<name>...)  ->  (logits (B, V), new_state.<name>...)

A zero state must be exactly the state before the first token, so the same graph also consumes the prompt, one
token at a time: :class:`OnnxGenerator` needs only numpy and onnxruntime.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from hubtrain.compat import cache_kwarg, output_cache
from hubtrain.errors import one_line
from hubtrain.export.spec import CAUSAL_LM_TOLERANCE, ExportError, ExportVerificationError, allowed_error, unwrap_causal_lm
from hubtrain.export.onnx_export import ort_session, staged_output

STATE_PREFIX = "state."


def flat_cache(model: nn.Module, out: Any) -> dict[str, torch.Tensor]:
    """The named state tensors of the cache in ``out``; a one-line error for models whose cache cannot flatten."""
    cache = output_cache(out)
    if cache is None or not hasattr(cache, "to_tensors") or not hasattr(type(cache), "from_tensors"):
        raise TypeError(
            f"{type(model).__name__} has no recurrent cache that flattens to tensors (to_tensors / from_tensors), "
            "so it has no decode-step graph; export its forward pass with export_to_onnx"
        )
    return cache.to_tensors()


def has_flat_cache(model: nn.Module) -> bool:
    """Whether ``model`` returns a cache that flattens to tensors, i.e. has a decode-step graph."""
    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True, return_dict=True)
    cache = output_cache(out)
    return hasattr(cache, "to_tensors") and hasattr(type(cache), "from_tensors")


class DecodeStep(nn.Module):
    """One token and the state (plain tensors) in, logits and the next state out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        with torch.no_grad():
            out = model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True, return_dict=True)
        flat = flat_cache(model, out)
        self.cache_cls = type(output_cache(out))
        self.names = list(flat)
        self.shapes = {name: tuple(t.shape[1:]) for name, t in flat.items()}
        self.dtypes = {name: t.dtype for name, t in flat.items()}

    def zero_state(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(batch, *self.shapes[n], dtype=self.dtypes[n]) for n in self.names]

    def forward(self, input_ids: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = self.cache_cls.from_tensors(dict(zip(self.names, states)))
        out = self.model(input_ids=input_ids, use_cache=True, return_dict=True, **{cache_kwarg(): cache})
        new = output_cache(out).to_tensors()
        return (out.logits[:, -1], *[new[n] for n in self.names])


def export_decode_step_to_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    verify: bool = True,
    tolerance: float = CAUSAL_LM_TOLERANCE,
    opset: int | None = None,
) -> tuple[Path, dict[str, Any] | None]:
    """Export a recurrent LM's decode step (dynamic batch) to ``path``; verify it against PyTorch's cached decoding.

    Verification runs a 7-token prefix through PyTorch (``use_cache=True``), feeds the resulting state and the
    next token to both runtimes at batch 3 (the export used 2), and requires logits within ``tolerance`` (relative
    to their scale) with the same argmax, and the same next state. Returns the path and the measured errors.
    """
    lm = unwrap_causal_lm(model) if isinstance(model, nn.Module) else None
    if lm is None:
        raise TypeError(f"export_decode_step_to_onnx needs a causal language model, got {type(model).__name__}")
    step = DecodeStep(lm)
    batch = 2
    example = (torch.zeros(batch, 1, dtype=torch.long), *step.zero_state(batch))
    input_names = ["input_ids", *[STATE_PREFIX + n for n in step.names]]
    output_names = ["logits", *["new_" + STATE_PREFIX + n for n in step.names]]
    b = torch.export.Dim("batch", min=1)
    # the state tensors arrive as *states, so their shapes nest as one tuple after input_ids
    dynamic_shapes = ({0: b}, tuple({0: b} for _ in example[1:]))
    path = Path(path)
    report = None
    with staged_output(path) as tmp:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(step, example, dynamo=True, dynamic_shapes=dynamic_shapes,
                                            input_names=input_names, output_names=output_names, opset_version=opset,
                                            optimize=True, verbose=False, external_data=False)
            program.save(str(tmp))
        except Exception as err:
            raise ExportError(f"ONNX export of the {type(lm).__name__} decode step to {path} failed: {one_line(err)}") from err
        if verify:
            report = _verify_decode(lm, step, tmp, path, tolerance)
    return path, report


def _verify_decode(lm: nn.Module, step: DecodeStep, onnx_path: Path, shown: Path, tolerance: float) -> dict:
    gen = torch.Generator().manual_seed(3)
    vocab = lm.config.vocab_size
    prefix = torch.randint(0, vocab, (3, 7), generator=gen)
    nxt = torch.randint(0, vocab, (3, 1), generator=gen)
    with torch.no_grad():
        flat = flat_cache(lm, lm(input_ids=prefix, use_cache=True, return_dict=True))
        feeds = (nxt, *[flat[n] for n in step.names])
        expected = [t.numpy() for t in step(*feeds)]
    session = ort_session(onnx_path)
    actual = session.run(None, {m.name: t.numpy() for m, t in zip(session.get_inputs(), feeds)})
    logit_err = float(np.abs(expected[0] - actual[0]).max())
    scale = float(np.abs(expected[0]).max())
    state_err = max((float(np.abs(e.astype(np.float64) - a).max()) for e, a in zip(expected[1:], actual[1:])), default=0.0)
    same_argmax = bool(np.array_equal(expected[0].argmax(-1), actual[0].argmax(-1)))
    allowed = allowed_error(tolerance, scale)
    if logit_err > allowed or state_err > allowed or not same_argmax:
        raise ExportVerificationError(
            f"verification of decode step {shown} failed: logits max abs error {logit_err:.3e}, state {state_err:.3e} "
            f"vs allowed {allowed:.1e}, argmax {'same' if same_argmax else 'differs'}"
        )
    return {"max_abs_error": logit_err, "state_max_abs_error": state_err, "tolerance": tolerance,
            "allowed_error": allowed, "argmax_match": same_argmax, "ok": True, "batch": 3, "prefix_len": 7}


class OnnxGenerator:
    """Greedy generation from a decode-step ONNX file with onnxruntime and numpy only (no PyTorch needed)."""

    _DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}

    def __init__(self, decode_path: str | os.PathLike, num_threads: int | None = None) -> None:
        self.session = ort_session(decode_path, num_threads=num_threads)
        inputs = self.session.get_inputs()
        if not inputs or inputs[0].name != "input_ids" or not all(i.name.startswith(STATE_PREFIX) for i in inputs[1:]):
            raise ValueError(f"{decode_path} is not a hubtrain decode-step graph (inputs {[i.name for i in inputs][:4]}, "
                             f"expected input_ids then {STATE_PREFIX}*)")
        self.state_inputs = inputs[1:]

    def zero_state(self, batch: int) -> list[np.ndarray]:
        """The state before the first token: zeros of every state input's shape and type."""
        return [np.zeros((batch, *s.shape[1:]), dtype=self._DTYPES[s.type]) for s in self.state_inputs]

    def step(self, tokens: np.ndarray, state: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {"input_ids": tokens.reshape(-1, 1).astype(np.int64)} | {s.name: v for s, v in zip(self.state_inputs, state)}
        logits, *state = self.session.run(None, feeds)
        return logits, state

    def stream(self, input_ids: np.ndarray | Sequence[Sequence[int]], max_new_tokens: int = 20,
               eos_token_id: int | None = None, *, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None) -> Iterator[np.ndarray]:
        """Yield the next token of every row, (B,), as it is chosen: greedy, or sampled when ``temperature`` > 0
        (with optional top-k / top-p filtering, as ``generate`` in transformers). The prompt (B, N) is consumed by
        the same decode graph. Rows that produced ``eos_token_id`` keep producing it."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, length>=1), got shape {ids.shape}")
        batch = ids.shape[0]
        rng = np.random.default_rng(seed)
        state = self.zero_state(batch)
        logits = None
        for i in range(ids.shape[1]):
            logits, state = self.step(ids[:, i], state)
        done = np.zeros(batch, dtype=bool)
        for n in range(max_new_tokens):
            nxt = _choose(logits, temperature, top_k, top_p, rng)
            if eos_token_id is not None:
                nxt = np.where(done, eos_token_id, nxt)
                done |= nxt == eos_token_id
            yield nxt
            if (eos_token_id is not None and done.all()) or n == max_new_tokens - 1:
                return
            logits, state = self.step(nxt, state)

    def generate(self, input_ids: np.ndarray | Sequence[Sequence[int]], max_new_tokens: int = 20,
                 eos_token_id: int | None = None, **sampling: Any) -> np.ndarray:
        """The prompt followed by its continuation, (B, N + new): greedy unless ``temperature`` > 0 (see ``stream``)."""
        ids = np.asarray(input_ids, dtype=np.int64)
        new = [t[:, None] for t in self.stream(ids, max_new_tokens, eos_token_id, **sampling)]
        return np.concatenate([ids, *new], axis=1)


def _choose(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
            rng: np.random.Generator) -> np.ndarray:
    """Greedy argmax, or a sample from softmax(logits / temperature) restricted to the top-k tokens and the smallest
    set whose probability reaches top-p (the most likely token always stays)."""
    if temperature <= 0:
        return logits.argmax(-1).astype(np.int64)
    scores = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = np.sort(scores, axis=-1)[:, -top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, -1)
        drop_sorted = np.cumsum(sorted_probs, -1) - sorted_probs >= top_p  # mass before this token already enough
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(-1, keepdims=True)
    cumulative = probs.cumsum(-1)
    draws = rng.random((probs.shape[0], 1)) * cumulative[:, -1:]
    return (cumulative < draws).sum(-1).clip(max=probs.shape[-1] - 1).astype(np.int64)


def onnx_generate(decode_path: str | os.PathLike, input_ids: Any, max_new_tokens: int = 20,
                  eos_token_id: int | None = None) -> np.ndarray:
    """``OnnxGenerator(decode_path).generate(...)`` in one call."""
    return OnnxGenerator(decode_path).generate(input_ids, max_new_tokens, eos_token_id)
