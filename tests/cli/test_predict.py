"""``hubtrain predict``: image files, folders and globs (or prompts) in, JSON Lines or CSV out, one record per input,
unreadable inputs reported in their own record; checked against the model run by hand for each kind of task."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hubtrain.artifacts import load
from hubtrain.cli import main


def _images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _digits(folder: Path, n: int) -> list[Path]:
    from hubtrain.data.digits import load_digits_images

    images, labels = load_digits_images()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"digit{i}_label{labels[i]}.png"
        images[i].save(path)
        paths.append(path)
    return paths


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_classifier_top_k_from_files_folders_and_globs_with_unreadable_inputs_reported(digits_folder, tmp_path, one_thread, capsys):
    digits = _digits(tmp_path / "digits", 5)
    (tmp_path / "digits" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "preds.jsonl"
    code = main(["predict", str(digits_folder), str(tmp_path / "digits"), str(tmp_path / "more" / "*.png"),
                 str(digits[0]), "--output", str(out), "--batch-size", "2", "--top-k", "3", "--no-progress"])
    assert code == 1  # some inputs could not be read
    records = _records(out)
    folder_files = sorted(str(p) for p in (tmp_path / "digits").iterdir())
    assert [r["input"] for r in records] == [*folder_files, str(tmp_path / "more" / "*.png"), str(digits[0])]
    errors = {r["input"]: r["error"] for r in records if "error" in r}
    assert set(errors) == {str(tmp_path / "digits" / "broken.png"), str(tmp_path / "more" / "*.png")}
    assert "cannot read image" in errors[str(tmp_path / "digits" / "broken.png")] and "matches nothing" in errors[str(tmp_path / "more" / "*.png")]
    assert "broken.png: cannot read image" in capsys.readouterr().err

    model = load(digits_folder)
    transform = model.eval_transform()
    for record in (r for r in records if "error" not in r):
        image = Image.open(record["input"]).convert("RGB")
        with torch.no_grad():
            probs = model(transform(image).unsqueeze(0)).softmax(-1)[0]
        top = probs.topk(3)
        assert [x["label"] for x in record["labels"]] == [model.class_names[i] for i in top.indices]
        assert [x["score"] for x in record["labels"]] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert record["label"] == record["labels"][0]["label"]

    as_csv = tmp_path / "preds.csv"
    assert main(["predict", str(digits_folder), *map(str, digits), "--output", str(as_csv), "--no-progress"]) == 0
    rows = list(csv.DictReader(as_csv.open()))
    assert [r["input"] for r in rows] == [str(p) for p in digits]
    by_input = {r["input"]: r for r in records if "error" not in r}
    assert [r["label"] for r in rows] == [by_input[str(p)]["label"] for p in digits]
    assert len(json.loads(rows[0]["labels"])) == 5


def test_segmentor_writes_mask_pngs_and_pixel_shares(tmp_path, one_thread):
    from hubtrain.tasks.segmentation import SemanticSegmentor

    torch.manual_seed(0)
    task = SemanticSegmentor("test_resnet", num_classes=3, class_names=["bg", "circle", "square"], pretrained=False).eval()
    task.preprocessing = {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
    folder = task.save_pretrained(tmp_path / "seg")
    images = _images(tmp_path / "in", 3, (80, 48))
    out = tmp_path / "seg.jsonl"
    assert main(["predict", str(folder), str(tmp_path / "in" / "*.png"), "--output", str(out), "--output-dir",
                 str(tmp_path / "masks"), "--no-progress"]) == 0
    records = _records(out)
    model = load(folder)
    assert [r["input"] for r in records] == [str(p) for p in images]
    for record in records:
        image = Image.open(record["input"]).convert("RGB")
        resized = torch.from_numpy(np.asarray(image.resize((64, 64), Image.BILINEAR), dtype=np.float32) / 255).permute(2, 0, 1)
        with torch.no_grad():
            logits = model(((resized - 0.5) / 0.25).unsqueeze(0))
        expected = F.interpolate(logits, size=(48, 80), mode="bilinear", align_corners=False).argmax(1)[0]
        mask = np.asarray(Image.open(record["mask"]))
        assert mask.shape == (48, 80)
        agree = (torch.from_numpy(mask.astype(np.int64)) == expected).float().mean()
        assert agree > 0.99, agree  # resampling of the input differs only at a few boundary pixels
        shares = {name: float((mask == i).mean()) for i, name in enumerate(model.class_names) if (mask == i).any()}
        assert record["class_share"] == pytest.approx(shares, abs=1e-6) and sum(shares.values()) == pytest.approx(1.0)


def test_detector_boxes_in_image_pixels_and_annotated_images(tmp_path, one_thread):
    from hubtrain.tasks.detection import ObjectDetector

    torch.manual_seed(0)
    task = ObjectDetector("test_resnet", num_classes=2, class_names=["circle", "square"], pretrained=False,
                          score_thresh=0.0, max_detections=5).eval()
    task.preprocessing = {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
    folder = task.save_pretrained(tmp_path / "det")
    (image_path,) = _images(tmp_path / "in", 1, (128, 96))
    out = tmp_path / "det.jsonl"
    assert main(["predict", str(folder), str(image_path), "--output", str(out), "--annotate", "--output-dir",
                 str(tmp_path / "boxes"), "--no-progress"]) == 0
    (record,) = _records(out)
    model = load(folder)
    image = Image.open(image_path).convert("RGB")
    (found,) = model.predict(model.eval_transform()(image).unsqueeze(0))
    assert 0 < len(record["detections"]) <= 5
    order = found["scores"].argsort(descending=True)
    scale = torch.tensor([128 / 64, 96 / 64, 128 / 64, 96 / 64])
    got = torch.tensor([d["box"] for d in record["detections"]])
    assert torch.allclose(got, found["boxes"][order] * scale, atol=0.01)
    assert [d["label"] for d in record["detections"]] == [model.class_names[int(i)] for i in found["labels"][order]]
    scores = [d["score"] for d in record["detections"]]
    assert scores == sorted(scores, reverse=True)
    drawn = Image.open(record["annotated"])
    assert drawn.size == (128, 96) and np.abs(np.asarray(drawn, dtype=int) - np.asarray(image, dtype=int)).sum() > 0


def test_language_model_prompts_generate_like_transformers(lm_folder, tmp_path, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("class Foo:\nreturn \n")
    out = tmp_path / "lm.jsonl"
    assert main(["predict", str(lm_folder), "def main(", "import ", "--prompts-file", str(prompts), "--max-new-tokens", "8",
                 "--output", str(out), "--batch-size", "3", "--no-progress"]) == 0
    records = _records(out)
    assert [r["input"] for r in records] == ["def main(", "import ", "class Foo:", "return "]
    model = AutoModelForCausalLM.from_pretrained(lm_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(lm_folder)
    for record in records:
        ids = tokenizer(record["input"], return_tensors="pt").input_ids
        with torch.no_grad():
            reference = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        assert record["generated"] == tokenizer.decode(reference[0, ids.shape[1]:], skip_special_tokens=True)
        assert record["generated"]


def test_predict_routes_by_its_arguments(tmp_path, capsys):
    from hubtrain.cli import is_tool_predict

    assert is_tool_predict(["predict", "folder", "x.png"]) and is_tool_predict(["predict", "--help"])
    assert not is_tool_predict(["predict", "--config", "x.yaml"]) and not is_tool_predict(["predict"])
    assert main(["predict", str(tmp_path / "missing"), "x.png"]) == 2
    assert "missing" in capsys.readouterr().err
