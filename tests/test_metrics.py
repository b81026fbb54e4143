"""MetricConfig / MetricManager: probabilities in, correct values out (checked against scikit-learn / numpy)."""
from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

from hubtrain.metrics import MetricConfig, MetricManager, default_classification_metrics


def noisy_probs(n: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (n,), generator=g)
    logits = torch.randn(n, num_classes, generator=g) + 1.5 * torch.nn.functional.one_hot(target, num_classes)
    return logits.softmax(-1), target


def test_auroc_and_top5_through_the_manager():
    configs = [
        MetricConfig("auroc", metric_class="torchmetrics.classification.MulticlassAUROC", stages=["val"]),
        MetricConfig("top5", metric_class="Accuracy", params={"task": "multiclass", "top_k": 5}, stages=["val"]),
        MetricConfig("accuracy", metric_class="Accuracy", params={"task": "multiclass"}),
    ]
    manager = MetricManager(configs, num_classes=10)  # num_classes fills the params that leave it out
    probs, target = noisy_probs(300, 10)
    for chunk in range(3):  # accumulated over batches
        sl = slice(100 * chunk, 100 * (chunk + 1))
        manager.update("val", probs[sl], target[sl])
    values = manager.log_dict("val")
    assert set(values) == {"val/auroc", "val/top5", "val/accuracy"}

    p, t = probs.numpy(), target.numpy()
    expected_auroc = roc_auc_score(t, p, multi_class="ovr", average="macro")
    expected_top5 = np.mean([t[i] in np.argsort(-p[i])[:5] for i in range(len(t))])
    expected_acc = np.mean(p.argmax(1) == t)
    assert float(values["val/auroc"]) == pytest.approx(expected_auroc, abs=1e-5)
    assert float(values["val/top5"]) == pytest.approx(expected_top5, abs=1e-6)
    assert float(values["val/accuracy"]) == pytest.approx(expected_acc, abs=1e-6)
    assert expected_top5 > expected_acc  # top-5 really looks past the argmax

    # stages never share state
    assert manager.metrics("train")["train/accuracy"].update_count == 0
    assert "train/auroc" not in manager.metrics("train")
    manager.reset("val")
    assert manager.metrics("val")["val/accuracy"].update_count == 0


class _Probe(pl.LightningModule):
    def __init__(self, manager: MetricManager) -> None:
        super().__init__()
        self.metrics = manager
        self.layer = torch.nn.Identity()

    def validation_step(self, batch, batch_idx):
        probs, target = batch
        self.metrics.update("val", probs, target)
        self.metrics.log(self, "val", batch_size=len(target))


def test_lightning_logs_epoch_values_over_all_batches():
    """Batches of uneven size: the logged value is the metric over the epoch, not a mean of batch values."""
    probs, target = noisy_probs(103, 4, seed=3)
    manager = MetricManager(
        [
            MetricConfig("accuracy", metric_class="Accuracy", params={"task": "multiclass"}, prog_bar=True),
            MetricConfig("auroc", metric_class="AUROC", params={"task": "multiclass"}),
        ],
        num_classes=4,
    )
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.validate(_Probe(manager), DataLoader(TensorDataset(probs, target), batch_size=10), verbose=False)[0]
    p, t = probs.numpy(), target.numpy()
    assert out["val/accuracy"] == pytest.approx(np.mean(p.argmax(1) == t), abs=1e-6)
    assert out["val/auroc"] == pytest.approx(roc_auc_score(t, p, multi_class="ovr"), abs=1e-5)
    assert manager.prog_bar_keys("val") == ["val/accuracy"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="acc", metric_class="Acuracy"), r"unknown torchmetrics metric_class='Acuracy'; did you mean 'Accuracy'"),
        (dict(name="acc", metric_class="Accuracy", backend="sklearn"), r"unknown backend='sklearn'"),
        (dict(name="acc", metric_class="Accuracy", stages=["valid"]), r"unknown stage 'valid' in stages"),
        (dict(name="acc", metric_class="Accuracy", stages=[]), r"stages=\[\] logs nowhere"),
        (dict(name="acc"), r"metric_class is required"),
        (dict(name="val/acc", metric_class="Accuracy"), r"name='val/acc' must be"),
        (dict(name="acc", backend="custom", metric_class="mypkg.MyMetric"), r"custom metric_class='mypkg.MyMetric' cannot be imported"),
        (dict(name="acc", backend="custom", metric_class="collections.OrderedDict"), r"is not a torchmetrics.Metric subclass"),
    ],
)
def test_bad_configs_raise_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetricConfig(**kwargs)


def test_bad_manager_inputs():
    acc = MetricConfig("acc", metric_class="Accuracy", params={"task": "multiclass", "num_classes": 3})
    with pytest.raises(ValueError, match=r"metrics=\[\] is empty"):
        MetricManager([])
    with pytest.raises(ValueError, match=r"duplicate metric name\(s\) \['acc'\]"):
        MetricManager([acc, acc])
    with pytest.raises(ValueError, match=r"MetricConfig\(name='f1'\): F1Score\(\*\*\{'task': 'multiclas'\}\) failed"):
        MetricManager([MetricConfig("f1", metric_class="F1Score", params={"task": "multiclas"})])
    with pytest.raises(ValueError, match="unknown stage 'predict'"):
        MetricManager([acc]).update("predict", torch.rand(2, 3), torch.tensor([0, 1]))


def test_custom_backend_and_dict_configs():
    manager = MetricManager(
        [{"name": "acc", "backend": "custom", "metric_class": "torchmetrics.classification.MulticlassAccuracy",
          "params": {"average": "micro"}, "stages": ["test"]}],
        num_classes=3,
    )
    manager.update("test", torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]), torch.tensor([0, 1]))
    assert float(manager.log_dict("test")["test/acc"]) == pytest.approx(0.5)  # one of two right


def test_default_classification_metrics():
    names = {c.name: c for c in default_classification_metrics(10)}
    assert set(names) == {"accuracy", "f1", "top5_accuracy"} and names["accuracy"].prog_bar
    manager = MetricManager(default_classification_metrics(4, multi_label=True), num_classes=4)
    probs = torch.tensor([[0.9, 0.2, 0.7, 0.1], [0.1, 0.8, 0.3, 0.6]])
    manager.update("val", probs, torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]]))
    assert float(manager.log_dict("val")["val/accuracy"]) == pytest.approx(7 / 8)
