"""``BackboneConfig``: the JSON-friendly description of a backbone, AutoTimm's fields in AutoTimm's order."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BackboneConfig:
    """What to build and how.

    Args:
        model_name: a timm name (``"resnet18"``, ``"resnet18.a1_in1k"``), ``"hf-hub:org/name[@revision]"``,
            ``"local-dir:/path"``, or a transformers name (``"hf:org/name"``) / folder.
        pretrained: load pretrained weights (from the local Hugging Face cache first, never a silent network wait).
        num_classes: AutoTimm's classifier size; hubtrain backbones are always headless (the task adds the head),
            so it must be 0 except in ``ImageClassifier``, which sets it to 0 as AutoTimm's does.
        drop_rate: dropout before the classifier (timm's ``drop_rate``).
        drop_path_rate: stochastic depth (timm's ``drop_path_rate``).
        extra_kwargs: passed on to ``timm.create_model`` (or the transformers builder), e.g. ``{"in_chans": 1}``.
        source: where an architecture was first resolved from (``"hf-hub:timm/resnet18.a1_in1k"``) when
            ``model_name`` has since been pinned to the bare architecture; informational (model cards).
    """

    model_name: str = "resnet50"
    pretrained: bool = True
    num_classes: int = 0
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    extra_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError(f"BackboneConfig.model_name={self.model_name!r}: give a timm name such as 'resnet18'.")
        for name in ("drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"BackboneConfig.{name}={value!r}: must lie in [0, 1).")
        if not isinstance(self.extra_kwargs, dict):
            raise ValueError(f"BackboneConfig.extra_kwargs={self.extra_kwargs!r}: must be a dict of keyword arguments.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BackboneConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"BackboneConfig.from_dict: unknown field(s) {unknown}; known fields are {sorted(known)}.")
        return cls(**data)


@dataclass
class LibraryClassifier:
    """A backbone plus a linear head in its own library's classifier format, so that the library's loader reads a
    saved folder without hubtrain: timm's Hub format (``timm.create_model("local-dir:...")``) or a transformers
    ``*ForImageClassification``.

    Args:
        library: ``"timm"`` or ``"transformers"``.
        config: the library's ``config.json`` keys for this classifier.
        keys: the backbone's and the head's state-dict keys (``"backbone.<key>"``, ``"head.<key>"``) -> the
            library model's keys.
        model: the library's classifier, built offline with random weights (to check the mapping against).
        files: more files the library reads, name -> text (``preprocessor_config.json``).
    """

    library: str
    config: dict[str, Any]
    keys: dict[str, str]
    model: Any
    files: dict[str, str] = field(default_factory=dict)
