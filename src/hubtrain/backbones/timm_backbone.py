"""timm backbones: registry names, ``hf-hub:org/name`` and ``local-dir:/path``, behind one small interface.

Whatever the name, the module we return knows how to rebuild itself offline: ``backbone_spec`` pins the bare
timm architecture, its saved model arguments and its preprocessing, so a trained task never needs the Hub again.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .config import BackboneConfig, LibraryClassifier
from .resolve import resolve_hub_folder, resolve_timm_weights

# Preprocessing fields of a timm pretrained_cfg that a rebuilt backbone must report identically.
_DATA_FIELDS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


class TimmBackbone(nn.Module):
    """A timm model without its classifier.

    ``forward(images)`` returns pooled features ``(B, num_features)``, or with ``features_only=True`` the list of
    feature maps, finest first (``feature_channels`` / ``feature_strides`` describe them).
    """

    def __init__(
        self, model: nn.Module, *, features_only: bool, backbone_spec: dict[str, Any], in_chans: int | None = None
    ) -> None:
        super().__init__()
        import timm.data

        self.model = model
        self.features_only = features_only
        self.backbone_spec = backbone_spec
        if features_only:
            self.feature_channels: list[int] = list(model.feature_info.channels())
            self.feature_strides: list[int] = list(model.feature_info.reduction())
            self.num_features = self.feature_channels[-1]
        else:
            self.num_features = int(model.num_features)
        self.data_config: dict[str, Any] = dict(timm.data.resolve_data_config({}, model=model))
        if in_chans is not None:  # timm reports the pretrained cfg's channels even when the stem was changed
            self.data_config["input_size"] = (int(in_chans), *self.data_config["input_size"][1:])

    def forward(self, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.model(images)
        return list(out) if self.features_only else out

    def library_classifier(self, head: nn.Linear, labels: Sequence[str], preprocessing: dict[str, Any] | None) -> LibraryClassifier | None:
        """This backbone with ``head`` as timm's own classifier: the architecture built with ``num_classes`` (its
        classifier is the linear head timm puts after the pooled features) and timm's Hub ``config.json``."""
        import timm

        if self.features_only:
            return None
        spec = self.backbone_spec
        args = {k: v for k, v in spec.get("extra_kwargs", {}).items() if k not in ("pretrained_cfg_overlay", "num_classes", "features_only")}
        data = {k: v for k, v in {**self.data_config, **(preprocessing or {})}.items() if k in _DATA_FIELDS}
        model = timm.create_model(spec["model_name"], pretrained=False, num_classes=head.out_features,
                                  pretrained_cfg_overlay={**spec.get("extra_kwargs", {}).get("pretrained_cfg_overlay", {}), **data}, **args)
        classifier = model.pretrained_cfg.get("classifier")
        if not classifier or not isinstance(model.get_classifier(), nn.Linear):
            return None
        keys = {f"backbone.model.{k}": k for k in self.model.state_dict()}
        keys.update({"head.weight": f"{classifier}.weight", "head.bias": f"{classifier}.bias"})
        cfg = {k: v for k, v in model.pretrained_cfg.items()
               if k not in ("hf_hub_id", "hf_hub_filename", "url", "file", "source", "state_dict", "label_names",
                            "label_descriptions", "tag") and v is not None}
        cfg.update(data, num_classes=head.out_features)
        config = {"architecture": cfg.pop("architecture", spec["model_name"]), "num_classes": head.out_features,
                  "num_features": int(model.num_features), "label_names": list(labels),
                  **({"global_pool": model.global_pool} if isinstance(getattr(model, "global_pool", None), str) else {}),
                  **({"model_args": args} if args else {}), "pretrained_cfg": _jsonable(cfg)}
        return LibraryClassifier("timm", config, keys, model)


def _local_dir_config(folder: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(architecture, model_args, preprocessing) as timm reads them from a saved folder's config.json."""
    from timm.models._hub import load_model_config_from_path

    pretrained_cfg, architecture, model_args = load_model_config_from_path(folder)
    data = {k: pretrained_cfg[k] for k in _DATA_FIELDS if pretrained_cfg.get(k) is not None}
    # The head is ours; the saved number of classes describes the checkpoint's head, not the backbone.
    model_args = {k: v for k, v in model_args.items() if k not in {"num_classes", "global_pool"}}
    return architecture, model_args, data


def create_timm_backbone(
    config: BackboneConfig,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> TimmBackbone:
    import timm
    import timm.models

    source, ident = timm.models.parse_model_name(config.model_name)
    kwargs = {**config.extra_kwargs, **kwargs}
    if config.drop_rate:
        kwargs["drop_rate"] = config.drop_rate
    if config.drop_path_rate:
        kwargs["drop_path_rate"] = config.drop_path_rate
    if features_only:
        kwargs["features_only"] = True
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
    else:
        kwargs["num_classes"] = 0

    # User arguments, minus what only this build needs, become the spec's extra_kwargs.
    spec_kwargs = dict(config.extra_kwargs)
    spec_source = config.source
    if source in ("hf-hub", "local-dir"):
        if source == "hf-hub":
            folder = resolve_hub_folder(ident, pretrained=config.pretrained)
        else:
            folder = Path(ident).expanduser()
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(
                    f"{config.model_name!r}: {folder / 'config.json'} not found; a local-dir: folder needs timm's "
                    "config.json (and model.safetensors for pretrained=True), as written by timm's save_for_hf."
                )
        architecture, model_args, data = _local_dir_config(folder)
        spec_kwargs = {**model_args, **spec_kwargs}
        overlay = {**data, **spec_kwargs.get("pretrained_cfg_overlay", {})}
        spec_kwargs["pretrained_cfg_overlay"] = overlay
        spec_name, spec_source = architecture, config.model_name
        model = timm.create_model(f"local-dir:{folder}", pretrained=config.pretrained, **kwargs)
    else:
        if not timm.is_model(ident):
            close = difflib.get_close_matches(ident, timm.list_models(), n=3)
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            raise ValueError(
                f"backbone {ident!r} is not a timm model; {hint}list_backbones('pattern*') lists the names, and "
                "Hub repos or folders need the 'hf-hub:' or 'local-dir:' prefix."
            )
        if config.pretrained:
            weights = resolve_timm_weights(ident)
            if weights is not None:
                kwargs["pretrained_cfg_overlay"] = {**kwargs.get("pretrained_cfg_overlay", {}), **weights}
                spec_source = spec_source or config.model_name
        spec_name = config.model_name
        model = timm.create_model(ident, pretrained=config.pretrained, **kwargs)

    spec = replace(config, model_name=spec_name, pretrained=False, extra_kwargs=spec_kwargs, source=spec_source)
    return TimmBackbone(
        model, features_only=features_only, backbone_spec=_jsonable(spec.to_dict()), in_chans=kwargs.get("in_chans")
    )
