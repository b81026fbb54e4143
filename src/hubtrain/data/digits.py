"""scikit-learn's bundled handwritten digits as an image dataset: real data that needs no download.

1,797 grey 8x8 scans (UCI optdigits, values 0-16) become RGB PIL images; the transforms upscale them to the
model's input size. The train / val / test split is stratified and fixed by ``seed``.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

CLASS_NAMES = [str(d) for d in range(10)]


def load_digits_images(mode: str = "RGB") -> tuple[list[Image.Image], np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return [Image.fromarray(p, mode="L").convert(mode) for p in pixels], digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15) -> dict[str, np.ndarray]:
    """Stratified train / val / test indices, the same for the same seed on every machine."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1.0 - test_fraction), stratify=labels[rest], random_state=seed
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
