"""Image transforms that follow the backbone's timm data config (input size, mean, std, interpolation, crop).

Built with ``timm.data.create_transform``, so training and evaluation preprocess exactly as timm does for the
same model; only the training augmentation strength is ours to choose (``train_kwargs``).
"""
from __future__ import annotations

from typing import Any, Callable

DATA_FIELDS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")

# Moderate augmentation that suits small datasets; timm's defaults (scale down to 8 %, colour jitter) are tuned
# for ImageNet-scale training and slow small runs down a lot.
DEFAULT_TRAIN_KWARGS: dict[str, Any] = {"scale": (0.6, 1.0), "hflip": 0.5, "color_jitter": None}


def resolve_transform_config(transform_config: Any = None, image_size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """One preprocessing dict from a timm data config, a backbone (its ``data_config``), a task, or nothing.

    ``image_size`` (int or (H, W)) replaces the config's spatial size; without either it is 224.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    user_dict = isinstance(transform_config, dict)
    if transform_config is not None and not user_dict:
        # A task trained (or loaded) with known preprocessing says so; otherwise ask its backbone.
        if isinstance(getattr(transform_config, "preprocessing", None), dict):
            transform_config = transform_config.preprocessing
        source = getattr(transform_config, "backbone", transform_config)
        if isinstance(source, dict):
            transform_config = source
        elif not hasattr(source, "data_config"):
            raise ValueError(
                f"transform_config={transform_config!r}: give a timm data config dict, a backbone or a task."
            )
        else:
            transform_config = source.data_config
    given = dict(transform_config or {})
    unknown = sorted(set(given) - set(DATA_FIELDS) - {"test_input_size", "test_crop_pct"})
    if unknown and user_dict:  # a backbone's or task's config may carry more than we use
        raise ValueError(f"transform_config has unknown key(s) {unknown}; known keys are {list(DATA_FIELDS)}.")
    config: dict[str, Any] = {
        "input_size": (3, 224, 224),
        "mean": tuple(IMAGENET_DEFAULT_MEAN),
        "std": tuple(IMAGENET_DEFAULT_STD),
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        **{k: given[k] for k in DATA_FIELDS if given.get(k) is not None},
    }
    channels = int(config["input_size"][0])
    if image_size is not None:
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        config["input_size"] = (channels, int(h), int(w))
    config["input_size"] = tuple(int(v) for v in config["input_size"])
    config["mean"] = tuple(float(v) for v in config["mean"])
    config["std"] = tuple(float(v) for v in config["std"])
    if len(config["mean"]) != channels or len(config["std"]) != channels:
        raise ValueError(f"transform_config: mean/std have {len(config['mean'])} values for {channels} input channels.")
    return config


def build_transform(config: dict[str, Any], *, train: bool, train_kwargs: dict[str, Any] | None = None) -> Callable:
    """timm's transform for ``config``: augmentation when ``train``, resize + centre crop otherwise."""
    from timm.data import create_transform

    common = {
        "input_size": config["input_size"],
        "mean": config["mean"],
        "std": config["std"],
        "interpolation": config["interpolation"],
    }
    if train:
        return create_transform(is_training=True, **common, **{**DEFAULT_TRAIN_KWARGS, **(train_kwargs or {})})
    return create_transform(is_training=False, crop_pct=config["crop_pct"], crop_mode=config["crop_mode"], **common)
