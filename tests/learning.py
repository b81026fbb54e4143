"""Does it learn? Checks judged against baselines computed from the same data, shared by the learning tests and by
``tests/sensitivity`` (which runs them on deliberately broken models to prove that each one can fail).

Importable from any test as ``from learning import ...`` (``tests/conftest.py`` puts this folder on ``sys.path``).

- ``ngram_loss``: what a unigram or bigram count model scores on a split, in nats per predicted token.
- The context task: random tokens repeated with period 3 (``a b c a b c ...``, fresh ``a b c`` per sequence). Past
  the first period the next token is the one two back, so a model that uses context predicts it, while a bigram
  model (or any model of the current token alone) stays at chance, ln 16 = 2.77 nats.
- Segmentation and detection against the trivial predictors: background everywhere, no boxes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------- n-gram baselines


def ngram_loss(train: torch.Tensor, evaluate: torch.Tensor, vocab_size: int, order: int, *, start: int = 1) -> float:
    """Cross-entropy (nats per token) of a count model fitted on ``train`` and scored on ``evaluate``.

    Both are ``(rows, length)`` token tensors; the targets are ``evaluate[:, start:]``, each predicted from the token
    before it (``order=2``) or from nothing (``order=1``). The unigram is add-one smoothed; the bigram is smoothed
    towards the unigram, p(b | a) = (c(a, b) + k p(b)) / (c(a) + k), with the k that scores best on ``evaluate``:
    the strongest bigram the counts allow, so a model that beats it used more than the previous token.
    """
    counts = torch.bincount(train.flatten(), minlength=vocab_size).double()
    unigram = (counts + 1) / (counts.sum() + vocab_size)
    targets = evaluate[:, start:].flatten()
    if order == 1:
        return -unigram[targets].log().mean().item()
    if order != 2:
        raise ValueError(f"order={order}: only unigram (1) and bigram (2) baselines")
    pairs = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    pairs.index_put_((train[:, :-1].flatten(), train[:, 1:].flatten()), torch.ones(1, dtype=torch.float64), accumulate=True)
    previous = evaluate[:, start - 1 : -1].flatten()
    seen, totals = pairs[previous, targets], pairs.sum(1)[previous]
    return min(-((seen + k * unigram[targets]) / (totals + k)).log().mean().item() for k in (1, 3, 10, 30, 100, 300, 1000))


def assert_beats_baseline(loss: float, baseline: float, margin: float, what: str) -> None:
    """``loss`` is at least ``margin`` nats below ``baseline``."""
    assert loss <= baseline - margin, (
        f"{what}: loss {loss:.3f} nats/token is not {margin} below the baseline's {baseline:.3f}"
    )


# ---------------------------------------------------------------------------------------------------- the context task

CONTEXT_VOCAB, CONTEXT_PERIOD, CONTEXT_LENGTH = 16, 3, 24


def periodic_sequences(n: int, seed: int) -> torch.Tensor:
    """``n`` context-task sequences: random tokens repeated with period 3, fresh tokens per sequence."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(0, CONTEXT_VOCAB, (n, CONTEXT_PERIOD), generator=gen)
    return base.repeat(1, -(-CONTEXT_LENGTH // CONTEXT_PERIOD))[:, :CONTEXT_LENGTH]


def context_task_model(seed: int = 0, **overrides: Any):
    """A tiny ResNet-BK for the context task (width 32, 2 layers, 4 channels of 8)."""
    from hubtrain.models.resnet_bk import ResNetBKConfig, ResNetBKForCausalLM

    torch.manual_seed(seed)
    config = dict(vocab_size=CONTEXT_VOCAB, d_model=32, n_layers=2, num_channels=4, channel_dim=8, ffn_dim=64,
                  num_experts=2, top_k=1, n_seq=CONTEXT_LENGTH)
    return ResNetBKForCausalLM(ResNetBKConfig(**{**config, **overrides}))


@dataclass
class ContextScore:
    """A model on held-out context-task sequences, past the first period (where context decides the next token)."""

    loss: float  # nats per token
    accuracy: float  # greedy next-token accuracy
    bigram_loss: float  # the bigram count model of the training sequences, on the same targets


@torch.no_grad()
def score_context_task(model: Any, train: torch.Tensor) -> ContextScore:
    held_out = periodic_sequences(512, seed=12345)
    was_training = model.training
    model.eval()
    logits = model(held_out).logits[:, CONTEXT_PERIOD - 1 : -1]
    model.train(was_training)
    targets = held_out[:, CONTEXT_PERIOD:]
    loss = F.cross_entropy(logits.reshape(-1, CONTEXT_VOCAB), targets.reshape(-1)).item()
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    return ContextScore(loss, accuracy, ngram_loss(train, held_out, CONTEXT_VOCAB, 2, start=CONTEXT_PERIOD))


# AdamW at a constant lr 1e-2, 150 steps of 32 fresh sequences: see train_context_task
CONTEXT_STEPS, CONTEXT_BATCH, CONTEXT_LR = 150, 32, 1e-2


def train_context_task(model: Any, steps: int = CONTEXT_STEPS, seed: int = 0) -> ContextScore:
    """Train ``model`` on the context task with a plain AdamW loop and score it.

    Measured here (150 steps, 5-7 s on one core): loss 0.05 nats and accuracy 0.99 at seed 0, 0.16-0.29 nats and
    0.90-0.96 at seeds 1-3, against the bigram's 2.78 nats; with the mixer's output zeroed, or every scan position
    computed as if it were the first, the same run stays at 2.77 nats and accuracy 0.06.
    """
    train = periodic_sequences(steps * CONTEXT_BATCH, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=CONTEXT_LR, weight_decay=0.0)
    model.train()
    for batch in train.split(CONTEXT_BATCH):
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return score_context_task(model, train)


def assert_solves_context_task(score: ContextScore, margin: float = 2.0, min_accuracy: float = 0.8) -> None:
    """The model beats the bigram baseline by ``margin`` nats and predicts ``min_accuracy`` of the tokens that only
    context determines; the baseline itself is at chance (the task needs context)."""
    assert score.bigram_loss >= math.log(CONTEXT_VOCAB) - 0.1, f"the bigram baseline {score.bigram_loss:.3f} is not at chance"
    assert_beats_baseline(score.loss, score.bigram_loss, margin, "context task")
    assert score.accuracy >= min_accuracy, f"context task: accuracy {score.accuracy:.3f} < {min_accuracy}"
