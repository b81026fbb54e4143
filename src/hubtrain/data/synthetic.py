"""Built-in synthetic shapes for segmentation and detection demos and tests: no download, fully deterministic.

Each image holds one to ``max_shapes`` non-overlapping circles, rectangles and triangles on a noisy dark
background. Shape *and* colour carry the class (every class has its own hue, jittered per shape), so a small
network from scratch learns it in seconds, while the shapes' outlines still make the masks and boxes worth
predicting. Sample ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, s, i])``: the same
index always gives the same image, in any process, with nothing stored on disk.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPE_NAMES = ("circle", "rectangle", "triangle")
_BASE_COLOURS = np.array([[220, 60, 60], [60, 200, 80], [70, 110, 230]])
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass
class ShapeSample:
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8, 0 = background, k + 1 = shape class k
    boxes: np.ndarray  # (N, 4) float32, xyxy in pixels, exclusive right/bottom edge
    labels: np.ndarray  # (N,) int64, shape class k in [0, 3)


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], gap: int = 2) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + gap and b[0] < x2 + gap and y1 < b[3] + gap and b[1] < y2 + gap for b in others)


def make_shape_sample(split: str, index: int, image_size: int = 64, seed: int = 0, max_shapes: int = 3,
                      min_size: float = 0.2, max_size: float = 0.45) -> ShapeSample:
    """One deterministic sample; shape sides are ``min_size``-``max_size`` of the image side."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split={split!r} is not one of {tuple(_SPLIT_IDS)}.")
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    background = rng.integers(0, 60, size=3) + rng.normal(0, 8, size=(image_size, image_size, 3))
    canvas = Image.fromarray(background.clip(0, 255).astype(np.uint8))
    mask = Image.new("L", (image_size, image_size), 0)
    draw_image, draw_mask = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)

    boxes: list[tuple[int, int, int, int]] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):
            side = int(rng.uniform(min_size, max_size) * image_size)
            x1, y1 = (int(v) for v in rng.integers(0, image_size - side, size=2))
            box = (x1, y1, x1 + side, y1 + side)
            if not _overlaps(box, boxes):
                break
        else:
            continue
        label = int(rng.integers(0, len(SHAPE_NAMES)))
        colour = tuple(int(c) for c in (_BASE_COLOURS[label] + rng.integers(-35, 36, size=3)).clip(0, 255))
        x2, y2 = box[2] - 1, box[3] - 1  # PIL draws inclusive right/bottom edges
        for draw, fill in ((draw_image, colour), (draw_mask, label + 1)):
            if label == 0:
                draw.ellipse((x1, y1, x2, y2), fill=fill)
            elif label == 1:
                draw.rectangle((x1, y1, x2, y2), fill=fill)
            else:
                draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)
        boxes.append(box)
        labels.append(label)
    return ShapeSample(
        image=np.asarray(canvas),
        mask=np.asarray(mask),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
    )
