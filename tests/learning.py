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


# ------------------------------------------------------------------------------ dense tasks against trivial predictors


@dataclass
class SegmentationScore:
    """A segmentor on labelled images, next to the predictor of background (class 0) everywhere."""

    pixel_accuracy: float
    miou: float  # mean over the classes present in the masks or the predictions
    background_pixel_accuracy: float  # the all-background predictor: the background share
    background_miou: float  # the all-background predictor: background share / classes present


def _miou(pred: torch.Tensor, masks: torch.Tensor, num_classes: int) -> float:
    ious = []
    for c in range(num_classes):
        p, t = pred == c, masks == c
        union = (p | t).sum().item()
        if union:
            ious.append((p & t).sum().item() / union)
    return sum(ious) / len(ious)


@torch.no_grad()
def score_segmentation(model: Any, loader: Any, num_classes: int, ignore_index: int = 255) -> SegmentationScore:
    """Pixel accuracy and mIoU of ``model.predict`` over ``loader``'s labelled pixels, and of background everywhere."""
    preds, masks = [], []
    for images, target in loader:
        preds.append(model.predict(images).flatten())
        masks.append(target.flatten())
    pred, mask = torch.cat(preds), torch.cat(masks)
    keep = mask != ignore_index
    pred, mask = pred[keep], mask[keep]
    background = torch.zeros_like(mask)
    return SegmentationScore((pred == mask).float().mean().item(), _miou(pred, mask, num_classes),
                             (background == mask).float().mean().item(), _miou(background, mask, num_classes))


def assert_segmentation_beats_background(score: SegmentationScore, error_ratio: float = 0.8,
                                         miou_margin: float = 0.3) -> None:
    """The segmentor makes at most ``error_ratio`` of the pixel errors of background everywhere (whose accuracy is
    the background share, 0.86 on 32-px shapes, so an absolute margin would leave little room) and its mIoU is
    ``miou_margin`` above that predictor's."""
    errors, background_errors = 1 - score.pixel_accuracy, 1 - score.background_pixel_accuracy
    assert errors <= error_ratio * background_errors, (
        f"segmentation: pixel accuracy {score.pixel_accuracy:.3f} against {score.background_pixel_accuracy:.3f} for "
        f"background everywhere: {errors / background_errors:.2f} of its errors remain (allowed {error_ratio})"
    )
    assert score.miou >= score.background_miou + miou_margin, (
        f"segmentation: mIoU {score.miou:.3f} is not {miou_margin} above background everywhere "
        f"({score.background_miou:.3f})"
    )


@dataclass
class DetectionScore:
    """A detector on labelled images; predicting no boxes scores 0 on both."""

    map_50: float  # COCO mAP at IoU 0.5 (torchmetrics)
    recall: float  # share of the objects matched by a detection of their class at IoU >= 0.5, among the image's top n


@torch.no_grad()
def score_detection(model: Any, loader: Any) -> DetectionScore:
    """mAP@0.5 and recall of ``model.predict`` over ``loader`` (top ``n`` detections per image, ``n`` = its objects)."""
    from torchmetrics.detection import MeanAveragePrecision
    from torchvision.ops import box_iou

    metric = MeanAveragePrecision(iou_thresholds=[0.5])
    found = total = 0
    for images, targets in loader:
        preds = model.predict(images)
        metric.update(preds, list(targets))
        for pred, target in zip(preds, targets):
            n = len(target["boxes"])
            total += n
            boxes, labels = pred["boxes"][:n], pred["labels"][:n]
            if n and len(boxes):
                iou = box_iou(target["boxes"], boxes) * (target["labels"][:, None] == labels[None, :])
                found += int((iou >= 0.5).any(1).sum())
    return DetectionScore(float(metric.compute()["map_50"]), found / max(total, 1))


def assert_detection_beats_no_boxes(score: DetectionScore, min_map_50: float = 0.3, min_recall: float = 0.3) -> None:
    """mAP@0.5 and recall of the objects are at least the margins above the 0 of predicting no boxes."""
    assert score.map_50 >= min_map_50, f"detection: mAP@0.5 {score.map_50:.3f} < {min_map_50} (no boxes scores 0)"
    assert score.recall >= min_recall, f"detection: recall {score.recall:.3f} < {min_recall} (no boxes scores 0)"


# The dense learning runs of tests/compat and tests/sensitivity: test_resnet backbones, tiny heads, synthetic shapes.
# Measured here (one thread): segmentation 7 s, pixel accuracy 0.91 against the background's 0.86 (0.65 of its
# errors), mIoU 0.67 against 0.21; detection 17 s, mAP@0.5 0.53, recall 0.58. With the head fed zeros (a constant
# head) segmentation predicts background everywhere and detection finds nothing.
SEGMENTATION_DATA = dict(dataset_name="synthetic_shapes", image_size=32, batch_size=16,
                         synthetic_sizes={"train": 128, "val": 32})
SEGMENTATION_MODEL = dict(num_classes=4, head_type="deeplabv3plus", aspp_channels=32, decoder_channels=32,
                          low_level_channels=16, lr=3e-3)
DETECTION_DATA = dict(dataset_name="synthetic_shapes", image_size=64, batch_size=16,
                      synthetic_sizes={"train": 128, "val": 32})
DETECTION_MODEL = dict(num_classes=3, fpn_channels=32, head_num_convs=2, lr=3e-3)
SEGMENTATION_EPOCHS, DETECTION_EPOCHS = 4, 4


def _fit(model: Any, data: Any, epochs: int, trainer_kwargs: dict) -> None:
    from hubtrain import AutoTrainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a loaded 2-core machine spin against each other
    try:
        kwargs = {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", "devices": 1,
                  "num_sanity_val_steps": 0, **trainer_kwargs, "max_epochs": epochs}
        AutoTrainer(**kwargs).fit(model, datamodule=data)
    finally:
        torch.set_num_threads(threads)


def _build_and_fit(model_cls: Any, model_kwargs: dict, data_cls: Any, data_kwargs: dict, epochs: int, breakage: Any,
                   trainer_kwargs: dict) -> tuple[Any, Any]:
    """Seed, build the data module and the model, apply ``breakage(model)`` if given, train."""
    torch.manual_seed(0)
    data = data_cls(**data_kwargs)
    model = model_cls(**model_kwargs)
    if breakage is not None:
        breakage(model)
    _fit(model, data, epochs, trainer_kwargs)
    return model, data


def fit_segmentation(backbone: str, breakage: Any = None, **trainer_kwargs: Any) -> tuple[Any, Any, SegmentationScore]:
    """Train a DeepLabV3+ on ``backbone`` on synthetic shapes and score it on the validation split.

    ``breakage(model)``, if given, runs after the model is built (``tests/sensitivity`` breaks it there).
    Returns (model, data module, score).
    """
    from hubtrain import SegmentationDataModule, SemanticSegmentor

    model, data = _build_and_fit(SemanticSegmentor, dict(backbone=backbone, **SEGMENTATION_MODEL), SegmentationDataModule,
                                 SEGMENTATION_DATA, SEGMENTATION_EPOCHS, breakage, trainer_kwargs)
    return model, data, score_segmentation(model, data.val_dataloader(), SEGMENTATION_MODEL["num_classes"])


def fit_detection(backbone: str, breakage: Any = None, **trainer_kwargs: Any) -> tuple[Any, Any, DetectionScore]:
    """Train an FCOS detector on ``backbone`` on synthetic shapes and score it on the validation split (as above)."""
    from hubtrain import DetectionDataModule, ObjectDetector

    model, data = _build_and_fit(ObjectDetector, dict(backbone=backbone, **DETECTION_MODEL), DetectionDataModule,
                                 DETECTION_DATA, DETECTION_EPOCHS, breakage, trainer_kwargs)
    return model, data, score_detection(model, data.val_dataloader())


# ------------------------------------------------------------------------------- ResNet-BK on Python sources vs bigram

PYTHON_VOCAB, PYTHON_BLOCK = 384, 64
RESNET_BK_PYTHON = {"d_model": 64, "n_layers": 2, "num_channels": 4, "channel_dim": 16, "ffn_dim": 128, "num_experts": 2}


def python_sources_data(tokenizer_cache_dir: Any) -> Any:
    """The text data module of the language-model tests: 40 Python source files, a 384-token BPE, 64-token blocks."""
    from hubtrain.data.text import TextDataModule

    dm = TextDataModule(max_files=40, vocab_size=PYTHON_VOCAB, block_size=PYTHON_BLOCK, batch_size=16,
                        val_fraction=0.15, test_fraction=0.05, tokenizer_cache_dir=tokenizer_cache_dir)
    dm.setup()
    return dm


def train_resnet_bk_on_python(dm: Any, root: Any) -> tuple[Any, Any, float]:
    """A tiny ResNet-BK (CausalLMTask), validated once untrained, then trained 300 steps (validating every 100 on six
    batches). Returns (task, the fitting trainer, the untrained validation loss)."""
    import pytorch_lightning as pl

    from hubtrain.tasks.causal_lm import CausalLMTask
    from hubtrain.training import AutoTrainer

    def trainer() -> Any:
        return AutoTrainer(max_epochs=None, max_steps=300, val_check_interval=100, limit_val_batches=6,
                           enable_progress_bar=False, enable_model_summary=False, default_root_dir=root / "runs")

    pl.seed_everything(0)
    task = CausalLMTask("resnet_bk:1M", tokenizer=dm.tokenizer, model_kwargs=RESNET_BK_PYTHON, lr=5e-3, warmup_steps=6)
    before = trainer().validate(task, datamodule=dm, verbose=False)[0]["val/loss"]
    fit = trainer()
    fit.fit(task, datamodule=dm)
    return task, fit, before


def assert_beats_bigram_on_python(task: Any, dm: Any, margin: float = 0.1) -> None:
    """The task's last validation loss is ``margin`` nats below the bigram count model of the training blocks, scored
    on the validation blocks it was measured on (the first six batches)."""
    train, val = dm.datasets["train"].blocks, dm.datasets["val"].blocks[: 6 * dm.batch_size]
    assert_beats_baseline(task.val_metrics["val/loss"], ngram_loss(train, val, PYTHON_VOCAB, order=2), margin,
                          "ResNet-BK vs bigram")
