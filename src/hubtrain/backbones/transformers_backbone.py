"""Hugging Face ``transformers`` vision models as hubtrain backbones.

Three ways in, one module out:

* **direct**: an instantiated model (``ViTModel(ViTConfig(...))``, ``ConvNextModel``, ``SwinModel``, ...); its own
  weights are used as they are;
* **config**: a ``PretrainedConfig``, built with ``AutoModel.from_config`` (random weights);
* **auto**: ``"hf:org/name"`` or a local folder holding a transformers ``config.json``, loaded with
  ``AutoModel`` / ``AutoBackbone.from_pretrained`` from local files only. Files are found the offline-safe way
  (``hubtrain.network``): the local cache first, no network with ``HF_HUB_OFFLINE``, one short request
  otherwise, and an ``OfflineModelError`` naming the model and the ways out when nothing answers.

The module speaks the backbone contract of ``docs/architecture.md``: pooled features ``(B, num_features)`` or,
with ``features_only=True``, a list of feature maps finest first with ``feature_channels`` / ``feature_strides``.
Hierarchical models (ConvNeXt, Swin, ResNet, ...) give their stage outputs through ``AutoBackbone``; plain ViTs
(ViT, DeiT, BEiT, DINOv2, ...) have one stride only, so their last tokens are reshaped to a map and resampled to
strides patch/4 .. patch*2 with deconvolutions and pooling, the "simple feature pyramid" of ViTDet.

``backbone_spec`` stores the full transformers config (and the preprocessing), so a trained task rebuilds the same
architecture offline with ``pretrained=False`` and takes its weights from its own safetensors.
"""
from __future__ import annotations

import copy
import inspect
import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

# Keys of BackboneConfig.extra_kwargs that describe the backbone rather than override config fields.
_SPEC_KEYS = ("hf_config", "data_config", "layers")
# ImageNet statistics: what timm and most transformers CNN processors use when nothing else is known.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


# --------------------------------------------------------------------------------------------------------------
# Resolving a spec to (config, model)
# --------------------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def config_to_dict(config: Any) -> dict[str, Any]:
    """The full config as plain JSON, ``model_type`` included (what ``backbone_spec`` stores)."""
    data = json.loads(config.to_json_string(use_diff=False))
    data["model_type"] = config.model_type
    return data


def config_from_dict(data: dict[str, Any]) -> Any:
    from transformers import CONFIG_MAPPING

    model_type = data.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"hf_config model_type={model_type!r} is not a transformers architecture; "
            "store the output of config.to_dict() (it carries model_type)."
        )
    return CONFIG_MAPPING[model_type].from_dict({k: v for k, v in data.items() if k != "model_type"})


def _is_transformers_model(obj: Any) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # transformers is a hard dependency; this only keeps the check cheap to call
        return False
    return isinstance(obj, PreTrainedModel)


def _is_transformers_config(obj: Any) -> bool:
    from transformers import PreTrainedConfig

    return isinstance(obj, PreTrainedConfig)


def _resolve_repo(repo: str, *, pretrained: bool) -> Path:
    """Local snapshot folder of a transformers repo (config.json, weights when ``pretrained``), offline-safe."""
    from ..network import hub_file
    from .resolve import split_revision

    repo_id, revision = split_revision(repo)
    model = f"hf:{repo}"
    config = hub_file(repo_id, ["config.json"], revision=revision, model=model)
    if config is None:
        raise FileNotFoundError(f"{model!r} has no config.json, so it is not a transformers model repo; check the id.")
    if pretrained:
        weights = hub_file(repo_id, list(_WEIGHT_FILES), revision=revision, model=model)
        if weights is None:
            raise FileNotFoundError(
                f"{model!r} has none of {list(_WEIGHT_FILES)}; use pretrained=False for a randomly initialised model."
            )
        if weights.name.endswith(".index.json"):
            shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
            for shard in shards:
                hub_file(repo_id, [shard], revision=revision, model=model)
        if weights.parent != config.parent:
            raise ValueError(
                f"{model!r}: cached config.json and weights come from different snapshots; "
                f"pin a revision with 'hf:{repo_id}@<commit>' or clear the cached repo."
            )
    # The processor config is optional: fetch it when the Hub has it, use the architecture's defaults otherwise.
    from ..errors import OfflineModelError

    try:
        hub_file(repo_id, ["preprocessor_config.json"], revision=revision, model=model)
    except OfflineModelError:
        log.warning("%s: preprocessor_config.json is not cached; using the architecture's default preprocessing.", model)
    return config.parent


def _source_folder(name: str, *, pretrained: bool) -> tuple[Path, str]:
    """(local folder, canonical name) for ``hf:org/name``, ``hf:/path`` or a folder path."""
    ident = name[3:] if name.startswith("hf:") else name
    folder = Path(ident).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{name!r}: {folder / 'config.json'} not found; a transformers folder is what save_pretrained writes."
            )
        return folder.resolve(), name
    if ident.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"{name!r}: folder {folder} does not exist; give an existing save_pretrained folder.")
    if ident.count("/") != 1:
        raise ValueError(f"{name!r}: expected 'hf:org/name' (a Hub repo id) or a local folder path.")
    return _resolve_repo(ident, pretrained=pretrained), f"hf:{ident}"


def _load_pretrained(folder: Path, name: str, config: Any, *, backbone: bool) -> tuple[nn.Module, list[str]]:
    """Weights from a local folder through transformers itself (prefix handling, sharding, dtype)."""
    from transformers import AutoModel
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    # files are data: a folder that ships its own modeling code is refused, never run
    kwargs: dict[str, Any] = {"config": config, "output_loading_info": True, "local_files_only": True, "trust_remote_code": False}
    if backbone:
        # The concrete class, not AutoBackbone.from_pretrained: that one asks the Hub whether the repo exists.
        model, info = MODEL_FOR_BACKBONE_MAPPING[type(config)].from_pretrained(str(folder), **kwargs)
    else:
        model, info = AutoModel.from_pretrained(str(folder), **kwargs)
    missing = list(info.get("missing_keys", []))
    if missing:
        log.info("%s: newly initialised (not in the checkpoint): %s", name, missing)
    return model, missing


# --------------------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------------------


def _image_size(config: Any) -> tuple[int, int] | None:
    size = getattr(config, "image_size", None)
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _resample_name(resample: Any) -> str:
    from PIL import Image

    if resample is None:
        return "bilinear"
    if hasattr(resample, "value"):  # torchvision InterpolationMode / PIL Resampling enum
        value = resample.value
        if isinstance(value, str):
            return value.lower()
        resample = value
    return Image.Resampling(int(resample)).name.lower()


def _processor_data_config(processor: Any) -> dict[str, Any]:
    """timm-style data config (input_size, mean, std, interpolation, crop_pct) from an image processor."""
    size = dict(getattr(processor, "size", None) or {})
    crop = dict(getattr(processor, "crop_size", None) or {})
    do_crop = bool(getattr(processor, "do_center_crop", False)) and crop
    if "height" in size:
        resize_hw = (size["height"], size["width"])
    elif "shortest_edge" in size:
        resize_hw = (size["shortest_edge"], size["shortest_edge"])
    else:
        resize_hw = (224, 224)
    if do_crop:
        input_hw = (crop["height"], crop["width"])
        crop_pct = input_hw[0] / resize_hw[0]
    else:
        input_hw = resize_hw
        crop_pct = float(getattr(processor, "crop_pct", None) or 1.0)
    mean = getattr(processor, "image_mean", None) or _IMAGENET_MEAN
    std = getattr(processor, "image_std", None) or _IMAGENET_STD
    return {
        "input_size": [3, int(input_hw[0]), int(input_hw[1])],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "interpolation": _resample_name(getattr(processor, "resample", None)),
        "crop_pct": float(min(crop_pct, 1.0)),
        "crop_mode": "center",
    }


def _default_processor(config: Any) -> Any | None:
    """The architecture's own image processor class with its default settings (no files needed)."""
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(config.model_type)
    if not names:
        return None
    name = names.get("torchvision") or names.get("pil") if isinstance(names, dict) else names
    if isinstance(name, (tuple, list)):
        name = next((n for n in name if n), None)
    cls = getattr(transformers, name, None) if name else None
    return cls() if cls is not None else None


def resolve_data_config(config: Any, folder: Path | None = None) -> dict[str, Any]:
    """Preprocessing for a transformers model.

    A folder's ``preprocessor_config.json`` wins (it is what the checkpoint was trained with); otherwise the
    architecture's processor defaults, resized to the config's own ``image_size`` (position embeddings are tied to it).
    """
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor

        return _processor_data_config(AutoImageProcessor.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False))
    processor = _default_processor(config)
    data = (
        _processor_data_config(processor)
        if processor is not None
        else {
            "input_size": [3, 224, 224],
            "mean": list(_IMAGENET_MEAN),
            "std": list(_IMAGENET_STD),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
        }
    )
    size = _image_size(config)
    channels = int(getattr(config, "num_channels", 3))
    if size is not None:  # ViT-style: position embeddings are tied to this size, use it as is
        data["input_size"] = [channels, *size]
        data["crop_pct"] = 1.0
    else:  # CNNs take any size: the ImageNet convention rather than a processor's 384 px default
        data["input_size"] = [channels, 224, 224]
    return data


# --------------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------------


def _patch_size(config: Any) -> int:
    patch = getattr(config, "patch_size", None)
    if isinstance(patch, (tuple, list)):
        patch = patch[0]
    if not isinstance(patch, int):
        raise ValueError(f"{config.model_type}: config has no integer patch_size, so it is not a plain ViT.")
    return patch


def is_plain_vit(config: Any) -> bool:
    """One stride throughout (ViT, DeiT, BEiT, DINOv2): patch tokens, no stages."""
    return (
        isinstance(getattr(config, "hidden_size", None), int)
        and getattr(config, "num_hidden_layers", None) is not None
        and getattr(config, "patch_size", None) is not None
        and getattr(config, "depths", None) is None
        and getattr(config, "hidden_sizes", None) is None
    )


def has_auto_backbone(config: Any) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING_NAMES

    return config.model_type in MODEL_FOR_BACKBONE_MAPPING_NAMES


class _HFBackbone(nn.Module):
    """Shared plumbing: the wrapped model, the contract's attributes, position-embedding interpolation."""

    features_only: bool = False

    def __init__(self, model: nn.Module, *, data_config: dict[str, Any], backbone_spec: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.data_config = data_config
        self.backbone_spec = backbone_spec
        config = model.config
        self._image_size = _image_size(config)
        self._can_interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def _run(self, images: torch.Tensor, **kwargs: Any) -> Any:
        # ViT-style models tie position embeddings to config.image_size; other sizes need interpolation.
        if self._can_interpolate and self._image_size is not None and tuple(images.shape[-2:]) != self._image_size:
            kwargs["interpolate_pos_encoding"] = True
        return self.model(pixel_values=images, **kwargs)

    @torch.no_grad()
    def _probe(self) -> Any:
        """One forward pass at the model's own input size, to read widths and strides off real outputs."""
        was_training = self.training
        self.eval()
        _, h, w = self.data_config["input_size"]
        channels = int(getattr(self.model.config, "num_channels", 3))
        param = next(self.model.parameters())
        out = self(torch.zeros(1, channels, h, w, dtype=param.dtype, device=param.device))
        self.train(was_training)
        return out


class TransformersPooledBackbone(_HFBackbone):
    """Pooled features for classification.

    The model's own ``pooler_output`` where it has one (ConvNeXt/Swin/ResNet average pooling, DINOv2's CLS, the
    ViT pooler of a direct model), else the CLS token of the (already layer-normed) last hidden state for models
    with a CLS token, else the mean of all tokens / all positions.
    """

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.pooling = "raw"
        out = self._probe()
        if getattr(out, "pooler_output", None) is not None:
            self.pooling = "pooler"
        elif hasattr(getattr(model, "embeddings", None), "cls_token"):
            self.pooling = "cls"
        else:
            self.pooling = "mean"
        hidden = out.last_hidden_state
        if self.pooling == "pooler":
            self.num_features = int(out.pooler_output.flatten(1).shape[-1])
        else:
            self.num_features = int(hidden.shape[1] if hidden.ndim == 4 else hidden.shape[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self._run(images)
        if self.pooling == "raw":  # only while probing which pooling this model supports
            return out
        if self.pooling == "pooler":
            return out.pooler_output.flatten(1)
        hidden = out.last_hidden_state
        if hidden.ndim == 4:  # (B, C, H, W) from convolutional models
            return hidden.mean(dim=(2, 3))
        return hidden[:, 0] if self.pooling == "cls" else hidden.mean(dim=1)

    def library_classifier(self, head: nn.Linear, labels: Sequence[str], preprocessing: dict[str, Any] | None) -> Any:
        """This backbone with ``head`` as the architecture's ``*ForImageClassification``, where transformers has one
        whose weights are this model's under its base-model prefix plus one linear layer (whether it also pools the
        same way is for the caller to check on real outputs)."""
        from transformers import AutoModelForImageClassification
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

        from .config import LibraryClassifier

        config = copy.deepcopy(self.model.config)
        if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
            return None
        config.id2label = {i: str(name) for i, name in enumerate(labels)}
        config.label2id = {str(name): i for i, name in enumerate(labels)}
        model = AutoModelForImageClassification.from_config(config)
        model.config.architectures = [type(model).__name__]
        library = model.state_dict()
        prefix = model.base_model_prefix
        keys = {f"backbone.model.{k}": f"{prefix}.{k}" for k in self.model.state_dict()}
        if not set(keys.values()) <= set(library):
            return None
        rest = sorted(set(library) - set(keys.values()))
        by_shape = {tuple(library[k].shape): k for k in rest}
        if len(rest) != 2 or set(by_shape) != {tuple(head.weight.shape), tuple(head.bias.shape)}:
            return None
        keys.update({"head.weight": by_shape[tuple(head.weight.shape)], "head.bias": by_shape[tuple(head.bias.shape)]})
        return LibraryClassifier("transformers", json.loads(model.config.to_json_string(use_diff=True)), keys, model,
                                 files={"preprocessor_config.json": _processor_json({**self.data_config, **(preprocessing or {})})})


class TransformersStageBackbone(_HFBackbone):
    """Multi-scale maps of a hierarchical model from its ``AutoBackbone`` (stage outputs, normed per stage)."""

    features_only = True

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        maps = self._probe()
        _, h, _ = self.data_config["input_size"]
        self.feature_channels = [int(m.shape[1]) for m in maps]
        self.feature_strides = [int(round(h / m.shape[-2])) for m in maps]
        self.num_features = self.feature_channels[-1]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self._run(images).feature_maps)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple pyramid, lite: one stride-``patch`` map to strides patch * 2**(level-3).

    Level 3 is the token map itself; each level below it adds a 2x deconvolution (halving channels), level 4 is a
    2x max-pool. With 16-pixel patches, levels 1..4 are strides 4, 8, 16, 32, like a ResNet's stages 1..4.
    """

    def __init__(self, dim: int, levels: Sequence[int]) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d

        self.levels = list(levels)
        self.channels: list[int] = []
        branches = []
        for level in self.levels:
            if not 0 <= level <= 4:
                raise ValueError(f"out_indices contains {level}: plain-ViT pyramid levels are 0..4 (strides p/8..2p).")
            layers: list[nn.Module] = []
            width = dim
            for step in range(3 - level):  # upsampling steps
                if step:
                    layers += [LayerNorm2d(width), nn.GELU()]
                layers.append(nn.ConvTranspose2d(width, max(width // 2, 1), kernel_size=2, stride=2))
                width = max(width // 2, 1)
            if level == 4:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            branches.append(nn.Sequential(*layers))
            self.channels.append(width)
        self.branches = nn.ModuleList(branches)

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # One source map for all levels (ViTDet), or one per level.
        if len(maps) == 1:
            maps = list(maps) * len(self.branches)
        return [branch(m) for branch, m in zip(self.branches, maps)]


class TransformersViTPyramidBackbone(_HFBackbone):
    """Multi-scale maps for plain ViTs: patch tokens reshaped to a grid, then a simple feature pyramid."""

    features_only = True

    def __init__(self, model: nn.Module, *, levels: Sequence[int], layers: Sequence[int] | None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        config = model.config
        self.patch_size = _patch_size(config)
        self.layers = list(layers) if layers is not None else None
        if self.layers is not None:
            bad = [i for i in self.layers if not 1 <= i <= config.num_hidden_layers]
            if bad or len(self.layers) not in (1, len(levels)):
                raise ValueError(
                    f"layers={self.layers}: give 1 or {len(levels)} encoder layer numbers in 1..{config.num_hidden_layers}."
                )
        self.pyramid = SimpleFeaturePyramid(config.hidden_size, levels)
        maps = self._probe()
        _, h, _ = self.data_config["input_size"]
        self.feature_channels = [int(m.shape[1]) for m in maps]
        self.feature_strides = [int(round(h / m.shape[-2])) for m in maps]
        self.num_features = self.feature_channels[-1]

    def _grid(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        gh, gw = height // self.patch_size, width // self.patch_size
        prefix = tokens.shape[1] - gh * gw  # CLS, distillation and register tokens come first
        if prefix < 0:
            raise ValueError(f"{tokens.shape[1]} tokens cannot form a {gh}x{gw} patch grid; check image size.")
        return tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        height, width = images.shape[-2:]
        if self.layers is None:
            sources = [self._run(images).last_hidden_state]
        else:
            hidden = self._run(images, output_hidden_states=True).hidden_states
            sources = [hidden[i] for i in self.layers]
        return self.pyramid([self._grid(t, height, width) for t in sources])


# --------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------


def _base_model(model: nn.Module) -> nn.Module:
    """``ViTForImageClassification`` -> its ``ViTModel``: the head is the task's business."""
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


def _copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy a base model's weights into its AutoBackbone twin (which may nest them under its own prefix)."""
    src = source.state_dict()
    prefix = getattr(target, "base_model_prefix", "") or ""
    mapped = {}
    for key in target.state_dict():
        for candidate in (key, key[len(prefix) + 1 :] if prefix and key.startswith(prefix + ".") else None):
            if candidate is not None and candidate in src:
                mapped[key] = src[candidate]
                break
    missing, _ = target.load_state_dict(mapped, strict=False)
    encoder_missing = [k for k in missing if "norm" not in k]
    if encoder_missing:
        raise ValueError(
            f"{type(source).__name__} -> {type(target).__name__}: weights {encoder_missing[:3]} have no counterpart; "
            "pass features_only=False or the model's name/folder instead of the instance."
        )


def _drop_untrained_pooler(model: nn.Module, missing: Sequence[str]) -> None:
    """A pooler whose weights were not in the checkpoint is noise: drop it and pool the CLS token instead.

    ViT checkpoints saved from ``ViTForImageClassification`` have no pooler; HF's own head uses the CLS token.
    """
    if isinstance(getattr(model, "pooler", None), nn.Module) and any(k.startswith("pooler.") for k in missing):
        model.pooler = None  # ViT/DeiT/BEiT forwards skip a None pooler


def create_transformers_backbone(
    spec: Any,
    *,
    pretrained: bool = True,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a hubtrain backbone from a transformers model, config, ``hf:`` name, folder or saved spec.

    Args:
        spec: a ``PreTrainedModel`` (used as is, weights included), a ``PretrainedConfig`` (random weights),
            ``"hf:org/name[@revision]"`` / a local ``save_pretrained`` folder (loaded with AutoModel/AutoBackbone),
            or a ``BackboneConfig`` / dict as stored in ``backbone_spec`` (architecture rebuilt offline from the
            stored config; with a name and ``pretrained=True`` the weights are loaded from it again).
        pretrained: load the named model's weights (ignored for instances and configs).
        features_only: return multi-scale feature maps instead of pooled features.
        out_indices: which maps. Hierarchical models: ``AutoBackbone`` stage indices (``stage_names``, 0 is the
            stem; default all stages). Plain ViTs: pyramid levels 0..4 with stride patch*2**(level-3)
            (default ``(1, 2, 3, 4)``, i.e. strides 4..32 for 16-pixel patches).
        **kwargs: ``layers`` (plain ViTs with ``features_only``: encoder layers that feed the pyramid, default the
            final normed output), ``drop_rate`` / ``drop_path_rate`` (mapped onto the config's dropout fields), and
            any other config field to override (``num_channels=1``, ...).
    """
    from .config import BackboneConfig

    pretrained = True if pretrained is None else bool(pretrained)
    layers = kwargs.pop("layers", None)
    data_config: dict[str, Any] | None = None
    source: str | None = None
    name: str | None = None
    instance: nn.Module | None = None
    folder: Path | None = None
    overrides = dict(kwargs)

    if isinstance(spec, dict):
        spec = BackboneConfig.from_dict(spec)
    if isinstance(spec, BackboneConfig):
        extra = dict(spec.extra_kwargs)
        stored = extra.pop("hf_config", None)
        data_config = extra.pop("data_config", None)
        layers = extra.pop("layers", layers)
        overrides = {**extra, **overrides}
        if spec.drop_rate:
            overrides.setdefault("drop_rate", spec.drop_rate)
        if spec.drop_path_rate:
            overrides.setdefault("drop_path_rate", spec.drop_path_rate)
        pretrained = pretrained and spec.pretrained
        source = spec.source
        if stored is not None and not pretrained:
            spec = config_from_dict(stored)
            name = source
        else:
            spec = spec.model_name

    if _is_transformers_model(spec):
        instance = _base_model(spec)
        config = copy.deepcopy(instance.config)
        name = name or getattr(config, "_name_or_path", None) or None
        if overrides:
            raise ValueError(
                f"config overrides {sorted(overrides)} cannot apply to an already built {type(spec).__name__}; "
                "set them on its config before building it, or pass the config instead."
            )
    elif _is_transformers_config(spec):
        config = copy.deepcopy(spec)
    elif isinstance(spec, str):
        from transformers import AutoConfig

        folder, name = _source_folder(spec, pretrained=pretrained)
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        source = source or name
    else:
        raise ValueError(
            f"backbone={spec!r}: expected a transformers model or config, 'hf:org/name', or a save_pretrained folder."
        )
    _apply_overrides(config, overrides)

    if data_config is None:
        data_config = resolve_data_config(config, folder)

    # Build the module that carries the weights.
    hierarchical = features_only and not is_plain_vit(config)
    if hierarchical and not has_auto_backbone(config):
        raise ValueError(
            f"{config.model_type!r} has neither an AutoBackbone nor a plain-ViT layout, so it gives no feature maps; "
            "use features_only=False or a timm / AutoBackbone architecture (ConvNeXt, Swin, ResNet, DINOv2, ...)."
        )
    missing: list[str] = []
    if hierarchical:
        from transformers import AutoBackbone

        bconfig = copy.deepcopy(config)
        stages = len(bconfig.stage_names)
        # The setter re-aligns out_features with the indices and rejects bad ones with transformers' own message.
        bconfig.out_indices = list(out_indices) if out_indices is not None else list(range(1, stages))
        if folder is not None and pretrained and instance is None:
            model, missing = _load_pretrained(folder, name or str(folder), bconfig, backbone=True)
        else:
            model = AutoBackbone.from_config(bconfig)
            if instance is not None:
                _copy_weights(instance, model)
    elif instance is not None:
        model = instance
    elif folder is not None and pretrained:
        model, missing = _load_pretrained(folder, name or str(folder), config, backbone=False)
        _drop_untrained_pooler(model, missing)
    else:
        from transformers import AutoModel

        model = AutoModel.from_config(config)

    hf_config = config_to_dict(config)
    spec_out = BackboneConfig(
        model_name=name if (name and name.startswith("hf:")) else f"hf:{config.model_type}",
        pretrained=False,
        extra_kwargs={"hf_config": hf_config, "data_config": data_config, **({"layers": list(layers)} if layers else {})},
        source=source if source is not None else name,
    )
    common = {"data_config": _jsonable(data_config), "backbone_spec": _jsonable(spec_out.to_dict())}
    if not features_only:
        return TransformersPooledBackbone(model, **common)
    if hierarchical:
        return TransformersStageBackbone(model, **common)
    levels = list(out_indices) if out_indices is not None else [1, 2, 3, 4]
    return TransformersViTPyramidBackbone(model, levels=levels, layers=layers, **common)


def _processor_json(data: dict[str, Any]) -> str:
    """An image processor that preprocesses as hubtrain evaluates (timm's eval transform): resize the short side to
    size / crop_pct, centre-crop, scale to [0, 1], normalise. ``BitImageProcessor`` does exactly these steps."""
    from PIL import Image
    from transformers import BitImageProcessor

    _, h, w = data["input_size"]
    crop_pct = float(data.get("crop_pct") or 1.0)
    resample = {"nearest": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC}.get(
        str(data.get("interpolation", "bilinear")), Image.Resampling.BILINEAR)
    processor = BitImageProcessor(size={"shortest_edge": int(math.floor(min(h, w) / crop_pct))}, crop_size={"height": h, "width": w},
                                  do_center_crop=True, image_mean=list(data["mean"]), image_std=list(data["std"]), resample=resample)
    return processor.to_json_string()


def _apply_overrides(config: Any, overrides: dict[str, Any]) -> None:
    """``drop_rate``/``drop_path_rate`` in timm's words, mapped onto this config's own field names."""
    overrides = dict(overrides)
    drop = overrides.pop("drop_rate", None)
    if drop:
        for field in ("hidden_dropout_prob", "hidden_dropout", "dropout"):
            if hasattr(config, field):
                setattr(config, field, drop)
                break
    drop_path = overrides.pop("drop_path_rate", None)
    if drop_path:
        if not hasattr(config, "drop_path_rate"):
            raise ValueError(f"drop_path_rate={drop_path}: {config.model_type!r} has no stochastic depth; leave it 0.")
        config.drop_path_rate = drop_path
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"{key}={value!r} is not a field of {type(config).__name__}; check the spelling.")
        setattr(config, key, value)


__all__ = [
    "create_transformers_backbone",
    "resolve_data_config",
    "SimpleFeaturePyramid",
    "TransformersPooledBackbone",
    "TransformersStageBackbone",
    "TransformersViTPyramidBackbone",
]
