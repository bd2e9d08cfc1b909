"""Differences between the supported transformers releases (>= 5.17 < 6), in one place.

transformers 5.24 renamed the decoder's ``past_key_values`` argument and output field to ``cache`` (the old
names still work there but warn, and are announced for removal in 5.40); 5.17-5.23 only know the old names.
"""

from __future__ import annotations

import functools
import inspect


@functools.cache
def _cache_argument(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` with the KV-cache argument name ``model.forward`` takes."""
    return {_cache_argument(type(model)): cache}


def output_cache(output):
    """The KV cache a decoder forward returned."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
