"""Predictions for people: what ``hubtrain predict`` and ``hubtrain serve`` share.

A saved folder loads through :func:`hubtrain.load`; the task turns inputs into JSON-friendly records itself
(``predict_images`` for classifiers, segmentors and detectors, ``predict_texts`` for language models). This room
expands files, folders and globs, runs them in batches, reports an unreadable input in its own record without
stopping the run, writes mask PNGs and annotated images, and writes the records as JSON Lines or CSV.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from hubtrain.utils import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TEXT_TAG = "text-generation"


def load_for_prediction(folder: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    """A saved folder (or Hub repo id) as a task that predicts: ``predict_images`` or ``predict_texts``."""
    from hubtrain.artifacts import load

    model = load(folder, trust_remote_code=trust_remote_code)
    if not (hasattr(model, "predict_texts") or type(model).predict_images is not _base_predict_images()):
        raise ValueError(f"{folder} holds a {type(model).__name__}, which hubtrain cannot predict with; give a folder "
                         "saved by an ImageClassifier, SemanticSegmentor, ObjectDetector or CausalLMTask")
    return model


def _base_predict_images() -> Callable:
    from hubtrain.tasks.base import BaseTask

    return BaseTask.predict_images


def is_text_model(model: Any) -> bool:
    return getattr(model, "pipeline_tag", None) == TEXT_TAG


def expand_images(items: Sequence[str]) -> list[str]:
    """Files as given, folders as their image files (recursively, sorted), globs as their matches (sorted).

    A glob that matches nothing and a missing file stay in the list, so that each gets its own error record."""
    out: list[str] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            out += sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif not path.exists() and glob.has_magic(item):
            matches = sorted(p for p in glob.glob(os.path.expanduser(item), recursive=True) if Path(p).is_file())
            out += matches or [item]
        else:
            out.append(str(item))
    return out


def read_image(path: str) -> Any:
    """An RGB PIL image; one-line ``ValueError`` for a missing or unreadable file."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise ValueError(f"no such file{' (the pattern matches nothing)' if glob.has_magic(path) else ''}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def batched(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def predict(model: Any, inputs: Sequence[str], *, batch_size: int = 8, top_k: int = 5,
            output_dir: str | os.PathLike | None = None, annotate: bool = False,
            progress: Callable[[int], None] | None = None, **generation: Any) -> Iterator[dict[str, Any]]:
    """One record per input, in input order: ``{"input": ..., <the task's fields>}`` or ``{"input", "error"}``.

    Images: ``inputs`` are files (expand folders and globs with :func:`expand_images` first). Segmentation masks go
    to ``output_dir`` as PNGs (pixel value = class index); with ``annotate`` a detector's boxes are drawn on a copy
    of each image there too. Language models: ``inputs`` are prompts; ``generation`` holds ``max_new_tokens``,
    ``temperature``, ``top_k``, ``top_p``. ``progress(n)`` is called after each batch with its size.
    """
    text = is_text_model(model)
    out_dir = Path(output_dir) if output_dir is not None else None
    index = 0
    for chunk in batched(list(inputs), batch_size):
        if text:
            try:
                results: list[dict[str, Any] | None] = model.predict_texts(list(chunk), **generation)
            except ValueError as err:  # a prompt the tokenizer cannot take: each gets the error
                results = [{"error": str(err).splitlines()[0]} for _ in chunk]
            for prompt, result in zip(chunk, results):
                yield {"input": prompt, **(result or {})}
        else:
            images: dict[int, Any] = {}
            errors: dict[int, str] = {}
            for i, path in enumerate(chunk):
                try:
                    images[i] = read_image(path)
                except ValueError as err:
                    errors[i] = str(err)
            found = model.predict_images(list(images.values()), top_k=top_k) if images else []
            results_by_index = dict(zip(images, found))
            for i, path in enumerate(chunk):
                if i in errors:
                    yield {"input": path, "error": errors[i]}
                    continue
                record = {"input": path, **results_by_index[i]}
                yield _write_files(record, images[i], index + i, out_dir, annotate)
        index += len(chunk)
        if progress is not None:
            progress(len(chunk))


def _write_files(record: dict[str, Any], image: Any, position: int, out_dir: Path | None, annotate: bool) -> dict[str, Any]:
    """Masks become PNG files (and the record holds their path); detections are drawn on request."""
    stem = f"{position:05d}-{Path(record['input']).stem}"
    if "mask" in record:
        mask = record.pop("mask")
        if out_dir is not None:
            record["mask"] = str(save_png(mask_image(mask), out_dir / f"{stem}.mask.png"))
    if annotate and "detections" in record and out_dir is not None:
        record["annotated"] = str(save_png(draw_detections(image, record["detections"]), out_dir / f"{stem}.boxes.png"))
    return record


def mask_image(mask: Any) -> Any:
    """A class-index mask as a palette PNG image: pixel values are class indices, colours tell them apart."""
    from PIL import Image

    image = Image.fromarray(mask)  # mode "L"; putpalette makes it "P", keeping the values
    image.putpalette(palette(256))
    return image


def palette(n: int) -> list[int]:
    """A flat RGB palette: black for class 0 (background), distinct colours after it (matplotlib's tab20)."""
    from matplotlib import colormaps

    colours = [(0, 0, 0)] + [tuple(int(255 * c) for c in colormaps["tab20"](i % 20)[:3]) for i in range(n - 1)]
    return [v for rgb in colours for v in rgb]


def overlay_mask(image: Any, mask: Any, alpha: float = 0.5) -> Any:
    """The image with each non-background class tinted in its palette colour."""
    import numpy as np
    from PIL import Image

    colours = np.array(palette(256), dtype=np.float32).reshape(-1, 3)[mask]
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    tint = np.where((mask > 0)[..., None], (1 - alpha) * base + alpha * colours, base)
    return Image.fromarray(tint.clip(0, 255).astype(np.uint8))


def draw_detections(image: Any, detections: list[dict[str, Any]], width: int = 2) -> Any:
    """The image with each box drawn and labelled with its class and score (torchvision's drawing utility)."""
    import torch
    from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
    from torchvision.utils import draw_bounding_boxes

    pixels = pil_to_tensor(image.convert("RGB"))
    if not detections:
        return to_pil_image(pixels)
    boxes = torch.tensor([d["box"] for d in detections], dtype=torch.float32)
    labels = [f"{d['label']} {d['score']:.2f}" for d in detections]
    return to_pil_image(draw_bounding_boxes(pixels, boxes, labels=labels, width=width, colors="red"))


def save_png(image: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------------- writing records


def csv_row(record: dict[str, Any]) -> dict[str, str]:
    """A record as CSV cells: scalars as they are, lists and dicts as JSON."""
    return {k: v if isinstance(v, (str, int, float)) or v is None else json.dumps(v, ensure_ascii=False)
            for k, v in record.items()}


CSV_COLUMNS = {  # per kind of record, so a file's columns never depend on which input came first
    "labels": ["input", "label", "score", "labels", "error"],
    "class_share": ["input", "mask", "class_share", "error"],
    "detections": ["input", "detections", "annotated", "error"],
    "generated": ["input", "generated", "error"],
}


def write_records(records: Iterable[dict[str, Any]], path: str | os.PathLike | None, fmt: str = "jsonl") -> dict[str, int]:
    """Write records as JSON Lines (streamed) or CSV; to ``path`` atomically, or to stdout. Returns counts."""
    counts = {"ok": 0, "errors": 0}
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"unknown output format {fmt!r}; use 'jsonl' or 'csv'")

    def emit(out: Any) -> None:
        rows: list[dict[str, Any]] = []
        for record in records:
            counts["errors" if "error" in record else "ok"] += 1
            if fmt == "jsonl":
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()
            else:
                rows.append(record)
        if fmt == "csv":
            kind = next((k for k in CSV_COLUMNS for r in rows if k in r), "labels")
            columns = CSV_COLUMNS[kind] + sorted({k for r in rows for k in r} - set(CSV_COLUMNS[kind]))
            writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(csv_row(r) for r in rows)

    if path is None:
        emit(sys.stdout)
    else:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
            emit(out)
    return counts


__all__ = ["draw_detections", "expand_images", "load_for_prediction", "mask_image", "overlay_mask", "predict",
           "read_image", "write_records"]
