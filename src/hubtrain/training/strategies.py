"""Scaling out: Lightning strategies built from what a model declares about itself."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch import nn


def fsdp_strategy(model: nn.Module, **kwargs: Any) -> pl.strategies.FSDPStrategy:
    """Lightning's ``FSDPStrategy`` wrapping each of the model's ``_no_split_modules`` blocks as one FSDP unit.

    ``model`` is a ``transformers`` model or a task around one (its ``.model``). Parameters, gradients and optimiser
    state are then sharded block by block, and each block is gathered only while it runs. Works for any
    transformers model that sets ``_no_split_modules`` (GPT-2, Llama, hubtrain's own models, ...).
    """
    hf_model = model.model if isinstance(getattr(model, "model", None), nn.Module) else model
    names = set(getattr(hf_model, "_no_split_modules", None) or [])
    block_classes = {type(m) for m in hf_model.modules() if type(m).__name__ in names}
    if not block_classes:
        raise ValueError(
            f"{type(hf_model).__name__} declares no _no_split_modules found in the model; pass "
            "auto_wrap_policy={YourBlockClass} to FSDPStrategy yourself."
        )
    kwargs.setdefault("auto_wrap_policy", block_classes)
    return pl.strategies.FSDPStrategy(**kwargs)


__all__ = ["fsdp_strategy"]
