"""Folders hubtrain writes load with the ecosystem's own loaders in a Python that cannot import hubtrain:
timm (``local-dir:`` and ``hf-hub:`` from a cache), transformers' ``*ForImageClassification`` and both pipelines,
with identical outputs; where no library class fits, the folder says so and still loads with hubtrain."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from checks import run_without_hubtrain
from hubtrain.artifacts import describe, load
from hubtrain.tasks.classification import ImageClassifier

TIMM_SCRIPT = """
import sys, timm, torch
from safetensors.torch import save_file
name, out = sys.argv[1], sys.argv[2]
model = timm.create_model(name, pretrained=True).eval()
images = torch.randn(3, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    logits = model(images)
assert model.pretrained_cfg["label_names"] == ["cat", "dog", "fox"], model.pretrained_cfg.get("label_names")
save_file({"images": images, "logits": logits}, out)
"""

TRANSFORMERS_SCRIPT = """
import sys, torch
from transformers import AutoModelForImageClassification
from safetensors.torch import save_file
folder, out = sys.argv[1], sys.argv[2]
model = AutoModelForImageClassification.from_pretrained(folder).eval()
assert type(model).__name__ == sys.argv[3], type(model).__name__
assert model.config.id2label == {0: "cat", 1: "dog", 2: "fox"}, model.config.id2label
images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    logits = model(pixel_values=images).logits
save_file({"images": images, "logits": logits}, out)
"""

IMAGE_PIPELINE_SCRIPT = """
import json, sys, numpy as np, torch
from PIL import Image
from transformers import pipeline
from safetensors.torch import save_file
folder, out = sys.argv[1], sys.argv[2]
classify = pipeline("image-classification", model=folder)
image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
result = classify(image, top_k=3)
pixels = classify.image_processor(image, return_tensors="pt")["pixel_values"]
save_file({"pixels": pixels.contiguous()}, out)
print(json.dumps(result))
"""

TEXT_PIPELINE_SCRIPT = """
import json, sys
from transformers import pipeline
folder = sys.argv[1]
generate = pipeline("text-generation", model=folder, trust_remote_code=True)
out = generate(["def main(", "import "], max_new_tokens=8, do_sample=False, return_full_text=False)
print(json.dumps([o[0]["generated_text"] for o in out]))
"""


@pytest.fixture
def timm_classifier(one_thread):
    torch.manual_seed(0)
    return ImageClassifier("test_resnet", num_classes=3, class_names=["cat", "dog", "fox"], pretrained=False).eval()


def _hubtrain_logits(folder, images: torch.Tensor) -> torch.Tensor:
    # the same memory order as the library's model, so the same kernels run: identical, not merely close
    model = load(folder, channels_last=False)
    with torch.no_grad():
        return model(images)


def test_timm_classifier_loads_with_timm_local_dir_and_hf_hub_without_hubtrain(timm_classifier, tmp_path, hf_cache):
    folder = timm_classifier.save_pretrained(tmp_path / "digits")
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3
    assert config["num_features"] == timm_classifier.backbone.num_features and config["label_names"] == ["cat", "dog", "fox"]
    assert {"input_size", "mean", "std"} <= set(config["pretrained_cfg"])
    repo = hf_cache.add_folder("alice/digits", folder)

    env = {"HF_HOME": str(hf_cache.home), "HF_HUB_CACHE": str(hf_cache.hub_dir)}
    for name in (f"local-dir:{folder}", f"hf-hub:{repo.repo_id}"):
        run_without_hubtrain(TIMM_SCRIPT, name, tmp_path / "out.safetensors", env=env)
        got = load_file(tmp_path / "out.safetensors")
        assert torch.equal(got["logits"], _hubtrain_logits(folder, got["images"])), name
    # and hubtrain reads its own folder back as the task, weights and all
    again = load(folder)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert isinstance(again, ImageClassifier) and torch.equal(again(x), timm_classifier(x))


@pytest.mark.parametrize("architecture", ["ConvNext", "ResNet"])
def test_transformers_classifier_loads_with_auto_model_for_image_classification_without_hubtrain(architecture, tmp_path, one_thread):
    import transformers

    config = {"ConvNext": lambda: transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
              "ResNet": lambda: transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1])}[architecture]()
    torch.manual_seed(0)
    task = ImageClassifier(config, num_classes=3, class_names=["cat", "dog", "fox"]).eval()
    folder = task.save_pretrained(tmp_path / "model")
    assert describe(folder).library_format == "transformers"
    run_without_hubtrain(TRANSFORMERS_SCRIPT, folder, tmp_path / "out.safetensors", f"{architecture}ForImageClassification")
    got = load_file(tmp_path / "out.safetensors")
    assert torch.equal(got["logits"], _hubtrain_logits(folder, got["images"]))


def test_image_classification_pipeline_without_hubtrain(timm_classifier, tmp_path):
    import transformers

    torch.manual_seed(1)
    convnext = ImageClassifier(transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
                               num_classes=3, class_names=["cat", "dog", "fox"]).eval()
    for name, task in (("timm", timm_classifier), ("transformers", convnext)):
        folder = task.save_pretrained(tmp_path / name)
        result = json.loads(run_without_hubtrain(IMAGE_PIPELINE_SCRIPT, folder, tmp_path / "px.safetensors").stdout.splitlines()[-1])
        pixels = load_file(tmp_path / "px.safetensors")["pixels"]
        with torch.no_grad():
            probs = _hubtrain_logits(folder, pixels).softmax(-1)[0]
        expected = sorted(((task.class_names[i], float(p)) for i, p in enumerate(probs)), key=lambda x: -x[1])
        assert [r["label"] for r in result] == [label for label, _ in expected], name
        assert [r["score"] for r in result] == pytest.approx([s for _, s in expected], abs=1e-6), name


def test_text_generation_pipeline_without_hubtrain(lm_folder):
    got = json.loads(run_without_hubtrain(TEXT_PIPELINE_SCRIPT, lm_folder).stdout.splitlines()[-1])
    task = load(lm_folder)
    expected = [r["generated"] for r in task.predict_texts(["def main(", "import "], max_new_tokens=8)]
    assert got == expected and all(got), got


def test_vit_classifier_whose_pooling_has_no_transformers_class_says_so_and_loads_with_hubtrain(tmp_path, one_thread):
    import transformers
    from huggingface_hub import ModelCard

    vit = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                 image_size=32, patch_size=8)
    task = ImageClassifier(vit, num_classes=3).eval()  # pools through ViT's tanh pooler: not ViTForImageClassification
    folder = task.save_pretrained(tmp_path / "vit")
    assert describe(folder).library_format is None and "architectures" not in json.loads((folder / "config.json").read_text())
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "hubtrain" and "loads with hubtrain only" in card.text
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load(folder)(x), task(x))
