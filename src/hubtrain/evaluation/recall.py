"""Synthetic recall and long-context tasks that any causal LM can be put through, trained and scored the same way.

The field judges recurrent language models on recall first; these are its standard probes, generated here (seeded,
reproducible, nothing downloaded):

- :class:`MQAR`: multi-query associative recall (Zoology, Arora et al. 2023): key-value pairs, then the keys again
  in another order; the model must answer each with its value. Scored only at the answers.
- :class:`SelectiveCopying` (Mamba, Gu & Dao 2023): a few data tokens scattered among filler; after a separator the
  model must write them out in order.
- :class:`InductionHeads` (Mamba): a trigger token followed by a token somewhere in a random sequence; at the end
  the trigger comes again, and the model must say what followed it the first time.
- :class:`Passkey` (long-context retrieval): a 5-digit key hidden at a chosen depth in filler, asked for at the end.

Every example is ``(input_ids, labels)`` in the transformers convention: ``labels[i]`` is the token at position
``i`` (predicted from positions ``< i``), ``-100`` where nothing is scored. So :class:`~hubtrain.tasks.causal_lm.
CausalLMTask` trains on them as they are, and :func:`score` reads a model's logits at the scored positions.
Each task also knows its exact answer (:meth:`RecallTask.oracle`, which scores 1.0) and its chance level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from hubtrain.data.loading import resumable_loader

IGNORE = -100


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


@dataclass(frozen=True)
class RecallTask:
    """A generator of scored sequences. Subclasses define ``vocab_size``, ``chance`` and ``_fill``."""

    name: str = field(init=False, default="task")

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def chance(self) -> float:
        """Accuracy at the scored positions of a predictor that ignores the context."""
        raise NotImplementedError

    def min_length(self) -> int:
        return 1

    def sample(self, n: int, seq_len: int, seed: int) -> tuple[Tensor, Tensor]:
        """``n`` examples of length ``seq_len``: ``(input_ids, labels)``, both ``(n, seq_len)`` int64."""
        if seq_len < self.min_length():
            raise ValueError(f"{self.name}: seq_len={seq_len} is shorter than the task needs ({self.min_length()})")
        gen = _gen(seed)
        ids = torch.zeros(n, seq_len, dtype=torch.long)
        labels = torch.full((n, seq_len), IGNORE, dtype=torch.long)
        for row in range(n):
            self._fill(ids[row], labels[row], gen)
        return ids, labels

    def _fill(self, ids: Tensor, labels: Tensor, gen: torch.Generator) -> None:
        raise NotImplementedError

    @staticmethod
    def oracle(input_ids: Tensor, labels: Tensor) -> Tensor:
        """Next-token predictions of a perfect reader: the label wherever one is scored (``(n, L-1)``, aligned with
        positions ``0 .. L-2``). By construction every answer is written earlier in its sequence."""
        return labels[:, 1:].clamp_min(0)


def _log_uniform(gen: torch.Generator, low: int, high: int) -> int:
    """An integer in ``[low, high]`` drawn log-uniformly (as often within 2x of ``low`` as within 2x of ``high``)."""
    return min(high, int(low * math.exp(float(torch.rand(1, generator=gen)) * math.log((high + 1) / low))))


def _distinct(gen: torch.Generator, low: int, high: int, k: int) -> Tensor:
    return low + torch.randperm(high - low, generator=gen)[:k]


@dataclass(frozen=True)
class MQAR(RecallTask):
    """Zoology's multi-query associative recall: ``k1 v1 k2 v2 ... kD vD`` then, among filler, each key again
    followed by its value (scored). Keys come from ``[1, V/2)``, values from ``[V/2, V)``, token 0 is filler."""

    vocab: int = 512
    num_pairs: int = 8
    name: str = field(init=False, default="mqar")

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def chance(self) -> float:
        return 2.0 / self.vocab

    def min_length(self) -> int:
        return 4 * self.num_pairs

    def _fill(self, ids: Tensor, labels: Tensor, gen: torch.Generator) -> None:
        D, half, L = self.num_pairs, self.vocab // 2, ids.shape[0]
        keys = _distinct(gen, 1, half, D)
        values = torch.randint(half, self.vocab, (D,), generator=gen)
        ids[0 : 2 * D : 2], ids[1 : 2 * D : 2] = keys, values
        # query slots: D non-overlapping pairs of positions in the rest of the sequence, keys in a new order
        slots = (L - 2 * D) // 2
        where = 2 * D + 2 * torch.randperm(slots, generator=gen)[:D].sort().values
        order = torch.randperm(D, generator=gen)
        ids[where], ids[where + 1] = keys[order], values[order]
        labels[where + 1] = values[order]


@dataclass(frozen=True)
class SelectiveCopying(RecallTask):
    """Mamba's selective copying: ``num_tokens`` data tokens (from ``[1, vocab]``) at random positions among filler
    (0), then a separator and the data tokens in order (scored). ``window`` places the data among the last ``window``
    positions before the separator instead (a long row as dense as a short one, behind a run of filler). For a
    ``log_window`` share of the rows the window is drawn per row, log-uniformly from ``num_tokens`` to the whole row,
    so one training length holds data packed tight and data spread wide (uniform placement almost never packs them)."""

    vocab: int = 16
    num_tokens: int = 16
    window: int | None = None
    log_window: float = 0.0
    name: str = field(init=False, default="selective_copying")

    def __post_init__(self) -> None:
        if self.window is not None and self.window < self.num_tokens:
            raise ValueError(f"selective_copying: window={self.window} holds fewer than num_tokens={self.num_tokens} "
                             "positions; give a window of at least num_tokens")
        if not 0.0 <= self.log_window <= 1.0:
            raise ValueError(f"selective_copying: log_window={self.log_window} is outside [0, 1]; give a share of rows")

    @property
    def vocab_size(self) -> int:
        return self.vocab + 2  # filler 0, data 1..vocab, separator vocab+1

    @property
    def chance(self) -> float:
        return 1.0 / self.vocab

    def min_length(self) -> int:
        return 2 * self.num_tokens + 1

    def _fill(self, ids: Tensor, labels: Tensor, gen: torch.Generator) -> None:
        M, L = self.num_tokens, ids.shape[0]
        data = torch.randint(1, self.vocab + 1, (M,), generator=gen)
        region = L - M - 1
        span = region if self.window is None else min(region, self.window)
        if self.log_window and float(torch.rand(1, generator=gen)) < self.log_window:
            span = _log_uniform(gen, M, region)
        where = region - span + torch.randperm(span, generator=gen)[:M].sort().values
        ids[where] = data
        ids[region] = self.vocab + 1
        ids[region + 1 :] = data
        labels[region + 1 :] = data


@dataclass(frozen=True)
class InductionHeads(RecallTask):
    """Mamba's induction heads: random tokens from ``[1, vocab]``; a trigger (``vocab + 1``) followed by a token
    once in the sequence; at the end the trigger again, and the next token (scored) is the one that followed it.
    The first trigger is placed uniformly, or for a ``log_gap`` share of the rows at a log-uniform distance from
    the end, so that one training length holds triggers just behind the question as often as far ones."""

    vocab: int = 16
    log_gap: float = 0.0
    name: str = field(init=False, default="induction_heads")

    def __post_init__(self) -> None:
        if not 0.0 <= self.log_gap <= 1.0:
            raise ValueError(f"induction_heads: log_gap={self.log_gap} is outside [0, 1]; give a share of rows")

    @property
    def vocab_size(self) -> int:
        return self.vocab + 2

    @property
    def chance(self) -> float:
        return 1.0 / self.vocab

    def min_length(self) -> int:
        return 4

    def _fill(self, ids: Tensor, labels: Tensor, gen: torch.Generator) -> None:
        L, trigger = ids.shape[0], self.vocab + 1
        ids[:] = torch.randint(1, self.vocab + 1, (L,), generator=gen)
        if self.log_gap and float(torch.rand(1, generator=gen)) < self.log_gap:  # 1 .. L - 3 back from the last trigger
            first = L - 3 - _log_uniform(gen, 1, L - 3)
        else:
            first = int(torch.randint(0, L - 3, (1,), generator=gen))
        target = ids[first + 1].clone()
        ids[first] = trigger
        ids[L - 2], ids[L - 1] = trigger, target
        labels[L - 1] = target


@dataclass(frozen=True)
class Passkey(RecallTask):
    """A 5-digit pass key hidden at ``depth`` (a fraction of the sequence) in repeated filler, asked for at the end:
    ``... KEY d1..d5 ... QUERY d1..d5`` with the final digits scored. ``depth=None`` draws it per example: uniformly,
    or for a ``log_gap`` share of the examples at a log-uniform distance from the question, so that keys just before
    the question (depth 1, which a uniform depth almost never draws at long lengths) are seen as often as far ones."""

    digits: int = 5
    depth: float | None = None
    log_gap: float = 0.0
    name: str = field(init=False, default="passkey")
    FILLER = (13, 14, 15, 16, 17, 18, 19, 20, 21, 13, 22, 23)  # a fixed "sentence" of filler tokens, repeated

    def __post_init__(self) -> None:
        for knob in ("depth", "log_gap"):
            value = getattr(self, knob)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"passkey: {knob}={value} is outside [0, 1]; give a fraction of the sequence")

    @property
    def vocab_size(self) -> int:
        return 24  # digits 1..10, KEY 11, QUERY 12, filler 13..23

    @property
    def chance(self) -> float:
        return 0.1

    def min_length(self) -> int:
        return 2 * (self.digits + 1) + 2

    def _fill(self, ids: Tensor, labels: Tensor, gen: torch.Generator) -> None:
        L, n = ids.shape[0], self.digits + 1
        filler = torch.tensor(self.FILLER)
        ids[:] = filler.repeat(L // len(filler) + 1)[:L]
        key = torch.randint(1, 11, (self.digits,), generator=gen)
        room = L - 2 * n
        if self.depth is not None:
            at = min(room - 1, int(round(self.depth * room)))
        elif self.log_gap and float(torch.rand(1, generator=gen)) < self.log_gap:  # distance 1 .. room from the end, log-uniform
            at = room - _log_uniform(gen, 1, room)
        else:
            at = min(room - 1, int(round(float(torch.rand(1, generator=gen)) * room)))
        ids[at], ids[at + 1 : at + n] = 11, key
        ids[L - n], ids[L - n + 1 :] = 12, key
        labels[L - n + 1 :] = key


TASKS = {"mqar": MQAR, "selective_copying": SelectiveCopying, "induction_heads": InductionHeads, "passkey": Passkey}


def score(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Accuracy at the scored positions (``labels != -100``, predicted from the position before), and the share of
    examples whose every scored token is right."""
    pred = logits[:, :-1].argmax(-1)
    return score_predictions(pred, labels)


def score_predictions(pred: Tensor, labels: Tensor) -> dict[str, float]:
    """As :func:`score`, from next-token predictions ``(n, L-1)`` aligned with positions ``0 .. L-2``."""
    target = labels[:, 1:]
    scored = target != IGNORE
    if not scored.any():
        raise ValueError("no scored positions: every label is -100")
    right = (pred == target) & scored
    per_example = right.sum(1) == scored.sum(1)
    return {"accuracy": float(right.sum() / scored.sum()), "exact": float(per_example[scored.any(1)].float().mean()),
            "scored": int(scored.sum())}


@torch.no_grad()
def predict(model: Any, ids: Tensor, *, batch_size: int = 32) -> Tensor:
    """Next-token predictions ``(n, L-1)`` of a causal LM (anything whose call on ``input_ids`` returns ``.logits``),
    in eval mode. Long sequences are run a few rows at a time: ``batch_size`` is scaled down so that a batch holds at
    most ``batch_size * 512`` tokens."""
    was_training = getattr(model, "training", False)
    model.eval()
    per_batch = max(1, min(batch_size, batch_size * 512 // ids.shape[1]))
    preds = []
    try:
        for start in range(0, ids.shape[0], per_batch):
            logits = model(input_ids=ids[start : start + per_batch]).logits
            preds.append(logits[:, :-1].argmax(-1))
    finally:
        model.train(was_training)
    return torch.cat(preds)


def evaluate(model: Any, task: RecallTask, seq_len: int, *, examples: int = 256, batch_size: int = 32,
             seed: int = 10_000) -> dict[str, float]:
    """Score a causal LM on fresh examples of ``task`` (predicted with :func:`predict`).

    ``seed`` defaults far from the training seeds, so the examples are held out.
    """
    ids, labels = task.sample(examples, seq_len, seed)
    result = score_predictions(predict(model, ids, batch_size=batch_size), labels)
    return {**result, "chance": task.chance, "seq_len": seq_len, "examples": examples}


class _Rows(TensorDataset):
    def __getitem__(self, index: int) -> dict[str, Tensor]:
        ids, labels = super().__getitem__(index)
        return {"input_ids": ids, "labels": labels}


class RecallDataModule(pl.LightningDataModule):
    """``train_examples`` and ``val_examples`` fresh examples of a task, as batches of ``input_ids`` / ``labels``."""

    def __init__(self, task: RecallTask, seq_len: int, *, train_examples: int, val_examples: int = 256,
                 batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.seed = batch_size, seed
        self.train_rows = _Rows(*task.sample(train_examples, seq_len, seed))
        self.val_rows = _Rows(*task.sample(val_examples, seq_len, seed + 1))

    def train_dataloader(self) -> DataLoader:
        return resumable_loader(self.train_rows, batch_size=self.batch_size, shuffle=True, seed=self.seed, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_rows, batch_size=self.batch_size)


def train(model: Any, task: RecallTask, seq_len: int, *, steps: int, batch_size: int = 32, lr: float = 3e-3,
          seed: int = 0, trainer_kwargs: dict[str, Any] | None = None) -> Any:
    """Train ``model`` (anything :class:`~hubtrain.tasks.causal_lm.CausalLMTask` takes: a config, a preset, a
    model) on ``task`` for ``steps`` optimizer steps with hubtrain's own task and trainer; returns the task."""
    from hubtrain.tasks.causal_lm import CausalLMTask
    from hubtrain.training import AutoTrainer

    pl.seed_everything(seed, verbose=False)
    lm = CausalLMTask(model, lr=lr, warmup_steps=0.1, weight_decay=0.1)
    data = RecallDataModule(task, seq_len, train_examples=steps * batch_size, batch_size=batch_size, seed=seed)
    kwargs = dict(max_steps=steps, max_epochs=None, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  plot_curves=False, default_root_dir=None)
    trainer = AutoTrainer(**{**kwargs, **(trainer_kwargs or {})})
    trainer.fit(lm, datamodule=data)
    return lm


def state_bytes_per_layer(model: Any, batch: int = 1) -> int | None:
    """Bytes of recurrent state one layer carries per sequence (None for attention, whose cache grows with the
    context): read from one real decoding step's cache."""
    from hubtrain.compat import output_cache

    with torch.no_grad():
        out = model(input_ids=torch.zeros(batch, 4, dtype=torch.long), use_cache=True)
    cache = output_cache(out)
    if hasattr(cache, "to_tensors"):  # a recurrent cache that flattens itself (ResNet-BK)
        layers = getattr(cache, "layers", [None])
        total = sum(t.numel() * t.element_size() for k, t in cache.to_tensors().items() if k.startswith("layer."))
        return total // max(1, len(layers)) // batch
    if hasattr(cache, "get_recurrent_state"):  # transformers' linear-attention caches (Mamba): conv + SSM state
        try:
            tensors = [cache.get_conv_state(0), cache.get_recurrent_state(0)]
        except ValueError:  # the same cache class holding attention layers (GPT-2): keys and values grow
            return None
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor)) // batch
    return None


__all__ = ["IGNORE", "InductionHeads", "MQAR", "Passkey", "RecallDataModule", "RecallTask", "SelectiveCopying", "TASKS",
           "evaluate", "predict", "score", "score_predictions", "state_bytes_per_layer", "train"]
