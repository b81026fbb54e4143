"""Load what the ``hubtrain export`` / ``generate`` commands are pointed at: a folder or a checkpoint file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_model(path: str | os.PathLike, *, model_size: str | None = None, task: str | None = None,
               trust_remote_code: bool = False) -> Any:
    """A model from a save_pretrained folder (hubtrain task, transformers, timm) or a checkpoint file.

    Folders: ``config.json`` decides (``hubtrain_task`` -> the task's ``from_pretrained``; ``model_type`` ->
    ``AutoModelForCausalLM`` / ``AutoModel``, ResNet-BK natively; ``architecture`` -> timm ``local-dir:``).
    Files (``.safetensors``, ``.ckpt``, ``.pt``) are read weights-only, see :func:`hubtrain.hub.load_checkpoint_model`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}; give a save_pretrained folder or a checkpoint file")
    if path.is_file():
        from hubtrain.hub import load_checkpoint_model

        return load_checkpoint_model(path, model_size=model_size, task=task)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} has no config.json; is it a save_pretrained folder?")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON ({err.msg} at line {err.lineno}); the folder is corrupt") from None
    if "hubtrain_task" in config:
        if config["hubtrain_task"] == "CausalLMTask" and "model_type" in config:
            pass  # a CausalLMTask folder is a plain transformers folder, handled below
        else:
            from hubtrain.tasks.base import BaseTask

            return BaseTask.from_pretrained(path)
    if "model_type" in config:
        import hubtrain.models.resnet_bk  # noqa: F401  registers ResNet-BK with the Auto classes
        from transformers import AutoModel, AutoModelForCausalLM

        architectures = config.get("architectures") or []
        auto = AutoModelForCausalLM if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) else AutoModel
        remote = trust_remote_code and config.get("model_type") != "resnet_bk"
        try:
            return auto.from_pretrained(path, trust_remote_code=remote).eval()
        except OSError as err:
            raise ValueError(f"cannot load {path}: {str(err).splitlines()[0]}") from None
    if "architecture" in config:
        import timm

        return timm.create_model(f"local-dir:{path}", pretrained=True).eval()
    raise ValueError(f"{config_path} describes neither a hubtrain task, a transformers model nor a timm model")
