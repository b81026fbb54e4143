"""The one place where hubtrain adapts to APIs that moved between the dependency versions it supports.

Each entry names what moved and where; ``tests/test_compat_drift.py`` exercises every one against the installed
versions, so the next rename fails a test instead of a user.

- transformers 5.24 renamed the cache argument of model forwards and ``generate`` (and the cache field of model
  outputs) from ``past_key_values`` to ``cache``; earlier 5.x releases use ``past_key_values``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any


@functools.cache
def cache_kwarg() -> str:
    """The keyword under which the installed transformers passes a cache to a model's forward."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    names = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    return "cache" if "cache" in names else "past_key_values"


def output_cache(output: Any) -> Any:
    """The cache a model output carries, under whichever name the installed transformers gives it (or None)."""
    for name in ("cache", "past_key_values", "cache_params"):
        if name in output.keys():  # keys(): no deprecation shim, no warning
            return output[name]
    return None


__all__ = ["cache_kwarg", "output_cache"]
