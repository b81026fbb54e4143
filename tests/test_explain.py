"""``hubtrain explain``: the saliency of a classifier whose class is decided by one quadrant falls mostly in that
quadrant, for Grad-CAM and for integrated gradients (captum); the command writes an overlay per method."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("captum", reason="hubtrain explain needs captum: pip install 'hubtrain[explain]'")

from hubtrain.explain import attributions, quadrant_shares  # noqa: E402
from hubtrain.tasks.classification import ImageClassifier  # noqa: E402

SIZE, SQUARE = 128, 24


def quadrant_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1]: noise everywhere, and a square somewhere in the top-left quadrant, bright for class 1 and
    dark for class 0. Only the top-left quadrant differs between the classes."""
    gen = torch.Generator().manual_seed(seed)
    images = 0.5 + 0.15 * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    half = SIZE // 2
    for i in range(n):
        y0, x0 = (int(torch.randint(2, half - SQUARE - 2, (1,), generator=gen)) for _ in range(2))
        images[i, :, y0:y0 + SQUARE, x0:x0 + SQUARE] = 1.0 if labels[i] == 1 else 0.0
    return images.clamp(0, 1), labels


@pytest.fixture(scope="module")
def quadrant_classifier():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", num_classes=2, class_names=["elsewhere", "top-left"], pretrained=False)
    model.preprocessing = {"input_size": [3, SIZE, SIZE], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0,
                           "crop_mode": "center", "interpolation": "bilinear"}
    images, labels = quadrant_images(384, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(4):
        for start in range(0, len(images), 32):
            x, y = (images[start:start + 32] - 0.5) / 0.5, labels[start:start + 32]
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()
    test_x, test_y = quadrant_images(200, seed=1)
    with torch.no_grad():
        accuracy = float((model((test_x - 0.5) / 0.5).argmax(-1) == test_y).float().mean())
    torch.set_num_threads(threads)
    return model, accuracy


def test_saliency_mass_falls_in_the_deciding_quadrant(quadrant_classifier, one_thread):
    model, accuracy = quadrant_classifier
    assert accuracy >= 0.95, f"the classifier did not learn the quadrant rule ({accuracy:.2f}); the check would be moot"
    images, labels = quadrant_images(64, seed=2)
    positives = (images[labels == 1][:12] - 0.5) / 0.5
    maps = attributions(model, positives, target=1, steps=24)
    for method, saliency in maps.items():
        shares = torch.stack([quadrant_shares(s) for s in saliency])
        top_left = shares[:, 0]
        # "mostly": over half of the mass in the one quadrant of four, on average and for most images
        assert float(top_left.mean()) > 0.5, f"{method}: mean top-left share {float(top_left.mean()):.2f}"
        assert float((top_left > 0.4).float().mean()) >= 0.75, f"{method}: per-image shares {top_left.tolist()}"


def test_explain_command_writes_an_overlay_per_method(quadrant_classifier, tmp_path, one_thread, capsys):
    from hubtrain.cli import main

    model, _ = quadrant_classifier
    folder = model.save_pretrained(tmp_path / "quadrants")
    images, labels = quadrant_images(8, seed=3)
    index = int((labels == 1).nonzero()[0])
    path = tmp_path / "positive.png"
    Image.fromarray((images[index].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    out = tmp_path / "why"
    assert main(["explain", str(folder), str(path), "--output-dir", str(out), "--steps", "8"]) == 0
    for method in ("gradcam", "integrated_gradients"):
        overlay = Image.open(out / f"positive.{method}.png")
        assert overlay.size == (SIZE, SIZE) and overlay.mode == "RGB"
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["label"] == "top-left" and printed["files"]["gradcam"].endswith("positive.gradcam.png")
