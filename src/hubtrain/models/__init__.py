"""Language models defined by hubtrain, and the one factory that turns what a user names into a causal LM.

Each subpackage is a native ``transformers`` model (a configuration file and a modeling file that import only torch
and transformers) and describes itself to the rest of hubtrain with a few module-level names, so no general room
needs to name it:

- ``MODEL_TYPE``: the ``model_type`` it registers with the Auto classes, and ``register()`` to do so;
- ``PRESETS`` (size name -> config fields) and ``create_from_preset(size, **overrides)``.

A preset is named ``"<package>:<size>"`` (``"resnet_bk:1M"``).
"""
from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from types import ModuleType
from typing import Any


@functools.cache
def model_packages() -> tuple[str, ...]:
    """The names of hubtrain's model subpackages (found on disk; nothing is imported)."""
    return tuple(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


def _package(name: str) -> ModuleType:
    if name not in model_packages():
        raise ValueError(f"unknown hubtrain model {name!r}; hubtrain defines {list(model_packages())}")
    return importlib.import_module(f"{__name__}.{name}")


def register_all() -> None:
    """Register every hubtrain model with the transformers Auto classes (idempotent)."""
    for name in model_packages():
        _package(name).register()


def native_model_types() -> set[str]:
    """``model_type`` values whose code ships with hubtrain: such folders load natively, never as remote code."""
    return {_package(name).MODEL_TYPE for name in model_packages()}


def create_from_preset(spec: str, **overrides: Any) -> Any:
    """``"<model>:<size>"`` (``"resnet_bk:1M"``) -> a freshly initialised model of that preset."""
    name, sep, size = spec.partition(":")
    if not sep or not size:
        raise ValueError(f"preset {spec!r} must look like '<model>:<size>', e.g. '{model_packages()[0]}:1M'")
    return _package(name).create_from_preset(size, **overrides)


def preset_sizes() -> set[str]:
    """Every preset size any of hubtrain's models defines ("1M", "10M", ...)."""
    return {size for name in model_packages() for size in _package(name).PRESETS}


def preset_model(size: str) -> str:
    """The hubtrain model that has a preset called ``size`` (``"1M"`` -> ``"resnet_bk"``)."""
    owners = [name for name in model_packages() if size in _package(name).PRESETS]
    if len(owners) != 1:
        known = sorted(preset_sizes())
        raise ValueError(f"model_size={size!r} is not one preset of hubtrain's models; use one of {known}")
    return owners[0]


def is_preset(spec: Any) -> bool:
    return isinstance(spec, str) and spec.partition(":")[0] in model_packages() and ":" in spec


def build_causal_lm(model: Any, vocab_size: int | None = None, **config_overrides: Any) -> Any:
    """Every accepted form of a causal LM -> a ``PreTrainedModel``.

    ``model`` is a ``PreTrainedModel`` (used as it is), a preset ``"<model>:<size>"`` (fresh weights), a config
    dict (what checkpoints store) or ``PretrainedConfig`` (fresh weights), or a local folder / Hub repo id
    (pretrained weights; the cache first, offline-safe). ``vocab_size`` (the tokenizer's) sizes fresh models.
    ``config_overrides`` change the config of fresh models, or are ``from_pretrained`` arguments for pretrained ones
    (``trust_remote_code=True`` there is the caller's explicit choice; nothing else turns it on).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

    if isinstance(model, PreTrainedModel):
        if config_overrides:
            raise ValueError(f"model_kwargs {sorted(config_overrides)} cannot change an instantiated model; pass a config.")
        return model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if is_preset(model):
        if vocab_size is not None:
            config_overrides.setdefault("vocab_size", vocab_size)
        return create_from_preset(model, **config_overrides)
    if isinstance(model, str):
        return _pretrained_causal_lm(model, **config_overrides)
    register_all()
    if isinstance(model, dict):
        if "model_type" not in model:
            raise ValueError(f"model config dict has no 'model_type' (keys: {sorted(model)[:8]}...); pass config.to_dict().")
        fields = dict(model)
        model = AutoConfig.for_model(fields.pop("model_type"), **fields)
    if isinstance(model, PretrainedConfig):
        config = model.__class__.from_dict({**model.to_dict(), **config_overrides})
        if vocab_size is not None and "vocab_size" not in config_overrides and config.vocab_size != vocab_size:
            config.vocab_size = vocab_size
        return AutoModelForCausalLM.from_config(config)
    raise TypeError(
        f"model={model!r} is not a PretrainedConfig, PreTrainedModel, config dict, preset "
        f"('{model_packages()[0]}:<size>'), folder or Hub repo id."
    )


def _pretrained_causal_lm(name_or_path: str, **kwargs: Any) -> Any:
    """A folder, or a Hub repo id resolved through the local cache first (never waiting on an unreachable Hub)."""
    from transformers import AutoModelForCausalLM

    from hubtrain.artifacts import read_config, resolve_folder

    folder = resolve_folder(name_or_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is a file; a pretrained language model is a folder with config.json")
    config = read_config(folder)
    register_all()
    if config.get("model_type") in native_model_types():
        kwargs.pop("trust_remote_code", None)  # hubtrain's own code, never the copy saved in the folder
    else:
        kwargs.setdefault("trust_remote_code", False)  # refuse (not prompt for) code the folder ships
    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except OSError as err:
        raise ValueError(f"cannot load a causal language model from {folder}: {str(err).splitlines()[0]}") from None


__all__ = ["build_causal_lm", "create_from_preset", "is_preset", "model_packages", "native_model_types",
           "preset_model", "preset_sizes", "register_all"]
