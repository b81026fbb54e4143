"""Every kind of folder hubtrain writes has a card whose metadata the Hub's own parser reads: ``model-index`` results
(task, dataset and split, metric and value) through ``ModelCard.load(...).data.eval_results``, and library_name,
pipeline_tag, license, datasets, tags and base_model. Checked on the parsed metadata, not on strings."""
from __future__ import annotations

import pytest
import torch
from huggingface_hub import ModelCard

from hubtrain.artifacts import describe

PREPROCESSING = {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}


def _check(folder, *, pipeline: str, library: str, metrics: dict[str, float], dataset: str,
           base_model: str | None = None, backbone_library: str | None = None) -> ModelCard:
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == library and data.pipeline_tag == pipeline and data.license == "apache-2.0"
    assert data.datasets == [dataset] and "hubtrain" in data.tags
    if backbone_library:
        assert backbone_library in data.tags
    assert data.base_model == base_model
    results = data.eval_results
    assert results, "the card has no model-index results"
    parsed = {r.metric_name: r for r in results}
    assert set(parsed) == set(metrics)
    for key, value in metrics.items():
        r = parsed[key]
        assert r.task_type == pipeline and r.dataset_name == dataset and r.dataset_type == dataset
        assert r.dataset_split == {"val": "validation", "test": "test"}[key.split("/")[0]]
        assert r.metric_type == key.split("/")[1] and r.metric_value == pytest.approx(value, abs=1e-6)
    assert "## Hyper-parameters" in card.text and "## Usage" in card.text
    return card


def test_classifier_card_with_a_hub_backbone(hf_cache, tmp_path, one_thread):
    from hubtrain.tasks.classification import ImageClassifier

    repo = hf_cache("acme/tiny-resnet", "test_resnet", seed=3)
    task = ImageClassifier(repo.hub_name, num_classes=3, class_names=["cat", "dog", "fox"])
    metrics = {"val/accuracy": 0.875, "val/loss": 0.41}
    folder = task.save_pretrained(tmp_path / "clf", metrics=metrics, datasets=["acme/pets"])
    card = _check(folder, pipeline="image-classification", library="timm", metrics=metrics, dataset="acme/pets",
                  base_model="acme/tiny-resnet", backbone_library="timm")
    assert "timm.create_model" in card.text  # the ecosystem loader's snippet


def test_segmentor_card(tmp_path, one_thread):
    from hubtrain.tasks.segmentation import SemanticSegmentor

    torch.manual_seed(0)
    task = SemanticSegmentor("test_resnet", num_classes=3, class_names=["bg", "circle", "square"], pretrained=False)
    task.preprocessing = PREPROCESSING
    metrics = {"val/iou": 0.61, "test/iou": 0.58}
    folder = task.save_pretrained(tmp_path / "seg", metrics=metrics, datasets=["shapes"])
    card = _check(folder, pipeline="image-segmentation", library="hubtrain", metrics=metrics, dataset="shapes",
                  backbone_library="timm")
    assert describe(folder).library_format is None and "hubtrain" in card.text


def test_detector_card(tmp_path, one_thread):
    from hubtrain.tasks.detection import ObjectDetector

    torch.manual_seed(0)
    task = ObjectDetector("test_resnet", num_classes=2, class_names=["circle", "square"], pretrained=False)
    task.preprocessing = PREPROCESSING
    metrics = {"val/map": 0.33, "val/map_50": 0.52}
    folder = task.save_pretrained(tmp_path / "det", metrics=metrics, datasets=["shapes"])
    _check(folder, pipeline="object-detection", library="hubtrain", metrics=metrics, dataset="shapes",
           backbone_library="timm")


def test_quickstart_cards_carry_their_runs_results(digits_folder, lm_folder):
    """The folders the two quickstarts write, with the metrics of the run that made them."""
    for folder, pipeline in ((digits_folder, "image-classification"), (lm_folder, "text-generation")):
        data = ModelCard.load(folder / "README.md").data
        assert data.pipeline_tag == pipeline and data.license and data.datasets and data.library_name
        results = data.eval_results
        assert results and all(r.task_type == pipeline and r.dataset_name and r.dataset_split for r in results)
        assert all(isinstance(r.metric_value, float) for r in results)
        assert {r.metric_type for r in results} & {"accuracy", "loss", "perplexity"}
